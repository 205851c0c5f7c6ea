// Package dashboards owns the Grafana dashboards of deploy/grafana as they
// run: it reads the dashboard JSON, lists every ClickHouse query in it (the
// panels' and the template variables'), expands the Grafana and
// grafana-clickhouse-datasource macros in them the way Grafana does before
// the SQL reaches ClickHouse (Expand), and renders panels' results as a
// self-contained HTML preview (Preview). Its tests run every expanded query
// on ClickHouse 18.16 and on a current release, and check that the
// Prometheus dashboard names only metrics the binaries export.
package dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
)

// The data sources the dashboards use, as provisioned by
// deploy/grafana/provisioning/datasources.
const (
	ClickHouseType = "grafana-clickhouse-datasource"
	ClickHouseUID  = "emoflow-clickhouse"
	PrometheusType = "prometheus"
	PrometheusUID  = "emoflow-prometheus"
)

// Dashboard is the part of a Grafana dashboard's JSON model the tests and
// the preview use; Grafana reads the rest (layout, field options).
type Dashboard struct {
	UID         string `json:"uid"`
	Title       string `json:"title"`
	Description string `json:"description"`
	Templating  struct {
		List []Variable `json:"list"`
	} `json:"templating"`
	Panels []Panel `json:"panels"`
}

// Datasource names a provisioned data source.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Variable is a template variable.
type Variable struct {
	Name       string      `json:"name"`
	Type       string      `json:"type"` // query, custom
	Datasource *Datasource `json:"datasource"`
	Query      string      `json:"query"`
	Multi      bool        `json:"multi"`
	IncludeAll bool        `json:"includeAll"`
	Current    struct {
		Value any `json:"value"`
	} `json:"current"`
}

// Panel is one panel.
type Panel struct {
	ID          int        `json:"id"`
	Type        string     `json:"type"` // timeseries, table
	Title       string     `json:"title"`
	Description string     `json:"description"`
	Interval    string     `json:"interval"` // the panel's minimum interval
	Datasource  Datasource `json:"datasource"`
	Targets     []Target   `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit string   `json:"unit"`
			Min  *float64 `json:"min"`
			Max  *float64 `json:"max"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

// Target is one query of a panel: SQL for ClickHouse (RawSQL, Format,
// QueryType of the plugin's v4 query model), PromQL for Prometheus (Expr).
type Target struct {
	RefID      string     `json:"refId"`
	Datasource Datasource `json:"datasource"`
	EditorType string     `json:"editorType"`
	Format     *int       `json:"format"`
	QueryType  string     `json:"queryType"`
	RawSQL     string     `json:"rawSql"`
	Expr       string     `json:"expr"`
	Legend     string     `json:"legendFormat"`
}

// The grafana-clickhouse-datasource plugin's result formats (Target.Format).
const (
	FormatTimeSeries = 0
	FormatTable      = 1
)

// Load reads a dashboard's JSON file.
func Load(path string) (Dashboard, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Dashboard{}, fmt.Errorf("dashboard: %w", err)
	}
	d, err := Parse(raw)
	if err != nil {
		return Dashboard{}, fmt.Errorf("dashboard %s: %w", path, err)
	}
	return d, nil
}

// Parse decodes a dashboard's JSON and checks what Grafana and the plugins
// need of it: a uid and title, unique panel ids, every target on the
// panel's data source, SQL with a format that matches its query type, PromQL
// where the data source is Prometheus.
func Parse(raw []byte) (Dashboard, error) {
	var d Dashboard
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		return Dashboard{}, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return Dashboard{}, fmt.Errorf("decode: data after the dashboard object")
	}
	if d.UID == "" || d.Title == "" {
		return Dashboard{}, fmt.Errorf("no uid or title")
	}
	if len(d.Panels) == 0 {
		return Dashboard{}, fmt.Errorf("no panels")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if p.ID <= 0 || ids[p.ID] {
			return Dashboard{}, fmt.Errorf("panel %q: id %d is not positive or not unique", p.Title, p.ID)
		}
		ids[p.ID] = true
		if err := p.check(); err != nil {
			return Dashboard{}, fmt.Errorf("panel %d %q: %w", p.ID, p.Title, err)
		}
	}
	names := map[string]bool{}
	for _, v := range d.Templating.List {
		if v.Name == "" || names[v.Name] {
			return Dashboard{}, fmt.Errorf("template variable %q: no name or not unique", v.Name)
		}
		names[v.Name] = true
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID == "" || v.Query == "") {
			return Dashboard{}, fmt.Errorf("template variable %q: a query variable without data source or query", v.Name)
		}
	}
	return d, nil
}

func (p Panel) check() error {
	if p.Title == "" || p.Type == "" {
		return fmt.Errorf("no title or type")
	}
	if len(p.Targets) == 0 {
		return fmt.Errorf("no targets")
	}
	refs := map[string]bool{}
	for _, t := range p.Targets {
		if t.RefID == "" || refs[t.RefID] {
			return fmt.Errorf("target %q: no refId or not unique", t.RefID)
		}
		refs[t.RefID] = true
		if t.Datasource != p.Datasource {
			return fmt.Errorf("target %s: data source %+v, the panel's is %+v", t.RefID, t.Datasource, p.Datasource)
		}
		switch p.Datasource {
		case Datasource{ClickHouseType, ClickHouseUID}:
			if t.RawSQL == "" || t.EditorType != "sql" || t.Format == nil {
				return fmt.Errorf("target %s: a ClickHouse target needs rawSql, editorType sql and a format", t.RefID)
			}
			if want := map[string]int{"timeseries": FormatTimeSeries, "table": FormatTable}[t.QueryType]; *t.Format != want || (t.QueryType != "timeseries" && t.QueryType != "table") {
				return fmt.Errorf("target %s: queryType %q with format %d", t.RefID, t.QueryType, *t.Format)
			}
		case Datasource{PrometheusType, PrometheusUID}:
			if t.Expr == "" || t.RawSQL != "" {
				return fmt.Errorf("target %s: a Prometheus target needs expr and no rawSql", t.RefID)
			}
		default:
			return fmt.Errorf("data source %+v: not one that deploy/grafana provisions", p.Datasource)
		}
	}
	return nil
}

// Query is one ClickHouse query of a dashboard, before expansion.
type Query struct {
	// Name says where it is: "panel 3 A" or "variable tenant".
	Name string
	// Panel is the panel the query belongs to, nil for a variable's.
	Panel *Panel
	SQL   string
}

// ClickHouseQueries returns every ClickHouse query of the dashboard: the
// template variables' queries, then the panels' targets in panel order.
func (d Dashboard) ClickHouseQueries() []Query {
	var out []Query
	for _, v := range d.Templating.List {
		if v.Type == "query" && v.Datasource != nil && v.Datasource.UID == ClickHouseUID {
			out = append(out, Query{Name: "variable " + v.Name, SQL: v.Query})
		}
	}
	for i := range d.Panels {
		p := &d.Panels[i]
		for _, t := range p.Targets {
			if t.RawSQL != "" {
				out = append(out, Query{Name: fmt.Sprintf("panel %d %s", p.ID, t.RefID), Panel: p, SQL: t.RawSQL})
			}
		}
	}
	return out
}
