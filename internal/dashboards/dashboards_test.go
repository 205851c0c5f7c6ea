package dashboards

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/testenv"
)

func TestDashboardsDecode(t *testing.T) {
	emotions := loadDashboard(t, "emoflow-emotions.json")
	ops := loadDashboard(t, "emoflow-operations.json")
	if emotions.UID == ops.UID {
		t.Errorf("both dashboards have uid %q", ops.UID)
	}
	for _, p := range emotions.Panels {
		if p.Datasource.UID != ClickHouseUID {
			t.Errorf("emotions panel %d %q: data source %q, want %q", p.ID, p.Title, p.Datasource.UID, ClickHouseUID)
		}
		for _, tg := range p.Targets {
			// Bucketed by $__interval_s over data kept per minute: the
			// panel's minimum interval must be a minute.
			if strings.Contains(tg.RawSQL, "$__interval_s") && p.Interval != "1m" {
				t.Errorf("panel %d %q: buckets by $__interval_s but its minimum interval is %q, want 1m", p.ID, p.Title, p.Interval)
			}
			if (p.Type == "timeseries") != (tg.QueryType == "timeseries") {
				t.Errorf("panel %d %q: a %s panel with a %s query", p.ID, p.Title, p.Type, tg.QueryType)
			}
		}
	}
	for _, p := range ops.Panels {
		if p.Datasource.UID != PrometheusUID {
			t.Errorf("operations panel %d %q: data source %q, want %q", p.ID, p.Title, p.Datasource.UID, PrometheusUID)
		}
	}
	if got := len(emotions.ClickHouseQueries()); got != len(emotions.Templating.List)-1+len(emotions.Panels) {
		t.Errorf("%d ClickHouse queries: want one per panel and per query variable", got)
	}
}

func TestParseRefuses(t *testing.T) {
	for name, raw := range map[string]string{
		"not json":        `{"uid":`,
		"no uid":          `{"title":"x","panels":[]}`,
		"no panels":       `{"uid":"u","title":"x"}`,
		"duplicate ids":   `{"uid":"u","title":"x","panels":[` + promPanel(1) + `,` + promPanel(1) + `]}`,
		"other source":    `{"uid":"u","title":"x","panels":[{"id":1,"type":"timeseries","title":"p","datasource":{"type":"prometheus","uid":"other"},"targets":[{"refId":"A","datasource":{"type":"prometheus","uid":"other"},"expr":"up"}]}]}`,
		"format mismatch": `{"uid":"u","title":"x","panels":[{"id":1,"type":"table","title":"p","datasource":{"type":"grafana-clickhouse-datasource","uid":"emoflow-clickhouse"},"targets":[{"refId":"A","datasource":{"type":"grafana-clickhouse-datasource","uid":"emoflow-clickhouse"},"editorType":"sql","format":0,"queryType":"table","rawSql":"SELECT 1"}]}]}`,
	} {
		if _, err := Parse([]byte(raw)); err == nil {
			t.Errorf("%s: Parse accepted it", name)
		}
	}
	if _, err := Parse([]byte(`{"uid":"u","title":"x","panels":[` + promPanel(1) + `,` + promPanel(2) + `]}`)); err != nil {
		t.Errorf("a valid dashboard: %v", err)
	}
}

func promPanel(id int) string {
	return `{"id":` + strconv.Itoa(id) + `,"type":"timeseries","title":"p","datasource":{"type":"prometheus","uid":"emoflow-prometheus"},"targets":[{"refId":"A","datasource":{"type":"prometheus","uid":"emoflow-prometheus"},"expr":"up"}]}`
}

func TestExpand(t *testing.T) {
	env := Env{
		From: time.Unix(1000, 0), To: time.Unix(2000, 0), IntervalSeconds: 300,
		Vars: map[string]Value{
			"tenant": {Values: []string{"a'b", "c"}},
			"all":    {All: true, Values: []string{"x", "y"}},
			"n":      {Values: []string{"3"}},
		},
	}
	for _, c := range []struct{ in, want string }{
		{"WHERE $__timeFilter(sent_at)", "WHERE sent_at >= toDateTime(1000) AND sent_at <= toDateTime(2000)"},
		{"$__fromTime, $__toTime, $__interval_s", "toDateTime(1000), toDateTime(2000), 300"},
		{"$__conditionalAll(tenant IN (${tenant:singlequote}), $tenant)", `tenant IN ('a\'b','c')`},
		{"$__conditionalAll(t IN (${all:singlequote}), ${all}) AND a IN (${all:singlequote})", "1=1 AND a IN ('x','y')"},
		{"arraySlice(l, -${n}) / $n", "arraySlice(l, -3) / 3"},
		{"f(g(x), [1, 2]) AND $__timeFilter(toDateTime(minute))", "f(g(x), [1, 2]) AND toDateTime(minute) >= toDateTime(1000) AND toDateTime(minute) <= toDateTime(2000)"},
	} {
		got, err := Expand(c.in, env)
		if err != nil || got != c.want {
			t.Errorf("Expand(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{
		"$__timeInterval(sent_at)",     // toStartOfInterval: not in 18.16
		"$__fromTime_ms",               // DateTime64: not in 18.16
		"$tenant",                      // several values without a format
		"${n:csv}",                     // a format this package does not know
		"$missing",                     // no such variable
		"$__conditionalAll(a, b, $n)",  // three arguments
		"$__conditionalAll(a, 'b')",    // not a variable
		"$__timeFilter(sent_at",        // unclosed
		"x = '$'",                      // anything left with a $
		"$__conditionalAll(a, $other)", // no such variable
	} {
		if got, err := Expand(in, env); err == nil {
			t.Errorf("Expand(%q) = %q, want an error", in, got)
		}
	}
}

// TestDashboardSQLForOldAndNewClickHouse keeps out of the dashboard SQL what
// ClickHouse 18.16 lacks, for runs without the 18.16 server (the
// current-engine test runs the queries there when it is up).
func TestDashboardSQLForOldAndNewClickHouse(t *testing.T) {
	refused := regexp.MustCompile(`(?i)toStartOfInterval|DateTime64|\bMap\(|[^$]\{\w+:\w+\}|\bWITH\s+\w+\s+AS\s*\(|\bOVER\s*\(|\bFROM\s+events\b`)
	for _, q := range loadDashboard(t, "emoflow-emotions.json").ClickHouseQueries() {
		if m := refused.FindString(q.SQL); m != "" {
			t.Errorf("%s: %q (not in ClickHouse 18.16, or the events table with its duplicates)\n%s", q.Name, m, q.SQL)
		}
	}
}

// metricDef is a Prometheus metric the binaries register.
type metricDef struct {
	kind   string // Counter, Gauge, Histogram, Summary
	labels []string
}

// registeredMetrics finds every prometheus.New* call in the non-test Go
// sources of internal/ and cmd/ and returns the metrics they define:
// Namespace, Subsystem and Name of the options joined by _, where each is a
// string literal or a constant.
func registeredMetrics(t *testing.T) map[string]metricDef {
	t.Helper()
	root := testenv.RepoRoot(t)
	out := map[string]metricDef{}
	for _, dir := range []string{"internal", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) == 0 {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || !isIdent(sel.X, "prometheus") || !strings.HasPrefix(sel.Sel.Name, "New") {
					return true
				}
				kind := strings.TrimSuffix(strings.TrimPrefix(sel.Sel.Name, "New"), "Vec")
				opts, ok := call.Args[0].(*ast.CompositeLit)
				if !ok || !map[string]bool{"Counter": true, "Gauge": true, "Histogram": true, "Summary": true}[kind] {
					return true
				}
				var parts []string
				for _, field := range []string{"Namespace", "Subsystem", "Name"} {
					if v := stringField(opts, field); v != "" {
						parts = append(parts, v)
					}
				}
				def := metricDef{kind: kind}
				if len(call.Args) > 1 {
					if lit, ok := call.Args[1].(*ast.CompositeLit); ok {
						for _, e := range lit.Elts {
							def.labels = append(def.labels, stringValue(e))
						}
					}
				}
				if len(parts) > 0 {
					out[strings.Join(parts, "_")] = def
				}
				return true
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

func stringField(lit *ast.CompositeLit, field string) string {
	for _, e := range lit.Elts {
		if kv, ok := e.(*ast.KeyValueExpr); ok && isIdent(kv.Key, field) {
			return stringValue(kv.Value)
		}
	}
	return ""
}

// stringValue is a string literal's value, or a string constant's declared
// in the same file; "" for anything else.
func stringValue(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.BasicLit:
		if s, err := strconv.Unquote(x.Value); err == nil {
			return s
		}
	case *ast.Ident:
		if x.Obj == nil {
			return ""
		}
		if spec, ok := x.Obj.Decl.(*ast.ValueSpec); ok {
			for i, n := range spec.Names {
				if n.Name == x.Name && i < len(spec.Values) {
					return stringValue(spec.Values[i])
				}
			}
		}
	}
	return ""
}

var (
	promMetric   = regexp.MustCompile(`\b(emoflow_\w+)(\{[^}]*\})?`)
	promMatcher  = regexp.MustCompile(`(\w+)\s*(?:=~|!~|!=|=)`)
	promGrouping = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	promAnyName  = regexp.MustCompile(`\b[a-z_]+_(?:total|seconds|bucket|count|sum)\b`)
)

// TestOperationsDashboardMetricsExist checks every PromQL expression of the
// operations dashboard against the metrics the code registers: each metric
// name exists (a histogram only with _bucket, _sum or _count), and each
// label in a matcher or a by clause is one of the metric's (or le of a
// histogram's buckets).
func TestOperationsDashboardMetricsExist(t *testing.T) {
	defs := registeredMetrics(t)
	for _, want := range []string{"emoflow_sink_consumer_lag", "emoflow_ingest_consumer_lag", "emoflow_classifier_queue_depth"} {
		if _, ok := defs[want]; !ok {
			t.Fatalf("found %d metrics in the sources, not %s: the parse of the metric definitions is broken", len(defs), want)
		}
	}
	for name, ok := range map[string]bool{
		"emoflow_sink_batch_rows_bucket": true, "emoflow_sink_batch_rows_count": true, "emoflow_sink_consumer_lag": true,
		"emoflow_sink_batch_rows": false, "emoflow_sink_consumer_lag_sum": false, "emoflow_sink_lag": false,
	} {
		if _, _, _, problem := resolveMetric(defs, name); (problem == "") != ok {
			t.Errorf("resolveMetric(%s): %q", name, problem)
		}
	}
	used := map[string]bool{}
	for _, p := range loadDashboard(t, "emoflow-operations.json").Panels {
		for _, tg := range p.Targets {
			where := "panel " + strconv.Itoa(p.ID) + " " + tg.RefID + " (" + tg.Expr + ")"
			labels := map[string]bool{}
			found := promMetric.FindAllStringSubmatch(tg.Expr, -1)
			if len(found) == 0 {
				t.Errorf("%s: no emoflow metric", where)
			}
			for _, m := range found {
				name, base, def, err := resolveMetric(defs, m[1])
				if err != "" {
					t.Errorf("%s: %s", where, err)
					continue
				}
				used[base] = true
				metricLabels := map[string]bool{}
				for _, l := range def.labels {
					metricLabels[l] = true
				}
				if strings.HasSuffix(name, "_bucket") {
					metricLabels["le"] = true
				}
				for l := range metricLabels {
					labels[l] = true
				}
				for _, mm := range promMatcher.FindAllStringSubmatch(m[2], -1) {
					if !metricLabels[mm[1]] {
						t.Errorf("%s: %s has no label %q (it has %v)", where, base, mm[1], def.labels)
					}
				}
			}
			for _, g := range promGrouping.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(g[1], ",") {
					if l = strings.TrimSpace(l); l != "" && !labels[l] {
						t.Errorf("%s: groups by %q, which none of its metrics has", where, l)
					}
				}
			}
			// Any other metric-like name must be an emoflow one.
			for _, n := range promAnyName.FindAllString(tg.Expr, -1) {
				if !strings.HasPrefix(n, "emoflow_") && !strings.Contains(tg.Expr, "emoflow_"+n) {
					t.Errorf("%s: %q is not an emoflow metric", where, n)
				}
			}
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("%d of the %d registered metrics used: %s", len(used), len(defs), strings.Join(names, " "))
}

// resolveMetric maps a series name in PromQL to its registered metric.
func resolveMetric(defs map[string]metricDef, name string) (series, base string, def metricDef, problem string) {
	if d, ok := defs[name]; ok {
		if d.kind == "Histogram" {
			return name, name, d, "histogram " + name + " used without _bucket, _sum or _count"
		}
		return name, name, d, ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		b := strings.TrimSuffix(name, suffix)
		if d, ok := defs[b]; ok && b != name && (d.kind == "Histogram" || d.kind == "Summary" && suffix != "_bucket") {
			return name, b, d, ""
		}
	}
	return name, name, metricDef{}, "no metric " + name + " is registered in internal/ or cmd/"
}
