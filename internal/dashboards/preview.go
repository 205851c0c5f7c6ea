package dashboards

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/evaluate"
)

// Table is a query's result, every cell in ClickHouse's text form.
type Table struct {
	Columns []string
	Types   []string
	Rows    [][]string
}

// PanelResult is what a panel's query returned, for the preview.
type PanelResult struct {
	Panel Panel
	// SQL is the query as it ran (expanded).
	SQL    string
	Result Table
	// Error is the engine's error, if the query failed.
	Error string
}

// Preview writes a self-contained HTML page (inline CSS and SVG, in the
// look of emoctl's evaluation reports) with one section per panel: a line
// chart for a time series, a table otherwise, over env's time range. It
// shows what the panels' queries return, not how Grafana draws them
// (stacking, units and colours are Grafana's).
func Preview(w io.Writer, d Dashboard, env Env, intro string, results []PanelResult) error {
	var body bytes.Buffer
	sections := make([]previewSection, 0, len(results))
	for _, r := range results {
		// Grafana fills in the variables of a description too.
		description, err := expandVariables(r.Panel.Description, env)
		if err != nil {
			description = r.Panel.Description
		}
		s := previewSection{Title: r.Panel.Title, Description: description, SQL: r.SQL, Error: r.Error, Rows: len(r.Result.Rows)}
		if r.Error == "" {
			if r.Panel.Type == "timeseries" {
				chart, err := newLineChart(r.Result, env, r.Panel.FieldConfig.Defaults.Unit)
				if err != nil {
					s.Error = err.Error()
				} else {
					s.Chart = &chart
				}
			} else {
				s.Table = newPreviewTable(r.Result)
			}
		}
		sections = append(sections, s)
	}
	if err := previewTemplate.Execute(&body, struct {
		Dashboard Dashboard
		Intro     string
		From, To  string
		Interval  int
		Sections  []previewSection
	}{d, intro, env.From.UTC().Format("2006-01-02 15:04"), env.To.UTC().Format("2006-01-02 15:04"), env.IntervalSeconds, sections}); err != nil {
		return fmt.Errorf("dashboard preview: %w", err)
	}
	if err := evaluate.Page(w, d.Title+" (preview)", template.HTML(body.String())); err != nil {
		return fmt.Errorf("dashboard preview: %w", err)
	}
	return nil
}

type previewSection struct {
	Title, Description, SQL, Error string
	Rows                           int
	Chart                          *lineChart
	Table                          *previewTable
}

type previewTable struct {
	Columns []string
	Rows    [][]string
}

func newPreviewTable(t Table) *previewTable {
	out := &previewTable{Columns: t.Columns}
	for _, row := range t.Rows {
		cells := make([]string, len(row))
		for i, c := range row {
			cells[i] = c
			if i < len(t.Types) && strings.HasPrefix(t.Types[i], "Float") {
				if f, err := strconv.ParseFloat(c, 64); err == nil {
					cells[i] = strconv.FormatFloat(f, 'f', 3, 64)
				}
			}
			if c == "" {
				cells[i] = "(empty)"
			}
		}
		out.Rows = append(out.Rows, cells)
	}
	return out
}

// lineChart is an SVG line chart of time series.
type lineChart struct {
	Width, Height int
	Lines         []chartLine
	XTicks        []chartTick
	YTicks        []chartTick
	Left, Right   int
	Top, Bottom   int
}

type chartLine struct {
	Name, Colour string
	Points       string // SVG polyline points
	Dots         []chartDot
}

type chartDot struct {
	X, Y  float64
	Title string
}

type chartTick struct {
	Pos  float64
	Text string
}

// Geometry and colours of the line charts.
const (
	chartWidth   = 940
	chartHeight  = 240
	chartLeft    = 64
	chartRight   = 28
	chartTop     = 10
	chartBottom  = 26
	maxDotPoints = 40 // series with fewer points get a dot per point
)

// seriesColour keeps an emotion's colour the same in every chart; other
// series take the palette's colours in turn.
func seriesColour(name string, i int) string {
	switch name {
	case "anger":
		return "#c0392b"
	case "disgust":
		return "#7d8b2a"
	case "fear":
		return "#8e44ad"
	case "joy":
		return "#e0a800"
	case "neutral":
		return "#95a5a6"
	case "sadness":
		return "#2f6db5"
	case "surprise":
		return "#16a085"
	}
	palette := [...]string{"#2f6db5", "#d9822b", "#3c9a5f", "#c0392b", "#8e44ad", "#16a085", "#7f8c8d", "#b7950b", "#e84393", "#34495e"}
	return palette[i%len(palette)]
}

// newLineChart reads a time series result in Grafana's long or wide
// form: a DateTime column, string columns that name the series, and
// numeric columns of values (one series per numeric column and name).
func newLineChart(t Table, env Env, unit string) (lineChart, error) {
	timeCol := -1
	var keyCols, valueCols []int
	for i, typ := range t.Types {
		switch {
		case timeCol < 0 && strings.HasPrefix(typ, "DateTime"):
			timeCol = i
		case strings.Contains(typ, "String"):
			keyCols = append(keyCols, i)
		case strings.Contains(typ, "Int") || strings.Contains(typ, "Float") || strings.Contains(typ, "Decimal"):
			valueCols = append(valueCols, i)
		}
	}
	if timeCol < 0 || len(valueCols) == 0 {
		return lineChart{}, fmt.Errorf("not a time series: columns %v of types %v", t.Columns, t.Types)
	}
	type point struct {
		at time.Time
		v  float64
	}
	series := map[string][]point{}
	var names []string
	order := map[string][2]string{} // series sort by name, then by value column
	maxV := 0.0
	for _, row := range t.Rows {
		at, err := time.ParseInLocation("2006-01-02 15:04:05", row[timeCol], time.UTC)
		if err != nil {
			return lineChart{}, fmt.Errorf("time %q: %w", row[timeCol], err)
		}
		var key []string
		for _, k := range keyCols {
			v := row[k]
			if v == "" {
				v = "(empty)"
			}
			key = append(key, v)
		}
		for _, c := range valueCols {
			v, err := strconv.ParseFloat(row[c], 64)
			if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
				continue // Grafana leaves a gap
			}
			name := strings.Join(key, " / ")
			if len(valueCols) > 1 || name == "" {
				name = strings.TrimPrefix(name+" "+t.Columns[c], " ")
			}
			if _, ok := series[name]; !ok {
				names = append(names, name)
				order[name] = [2]string{strings.Join(key, "\x00"), fmt.Sprintf("%04d", c)}
			}
			series[name] = append(series[name], point{at, v})
			maxV = max(maxV, v)
		}
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := order[names[i]], order[names[j]]
		return a[0] < b[0] || a[0] == b[0] && a[1] < b[1]
	})
	top := niceCeiling(maxV)
	if unit == "percentunit" && maxV <= 1 {
		top = 1
	}
	c := lineChart{Width: chartWidth, Height: chartHeight, Left: chartLeft, Right: chartWidth - chartRight, Top: chartTop, Bottom: chartHeight - chartBottom}
	span := env.To.Sub(env.From).Seconds()
	if span <= 0 {
		return lineChart{}, fmt.Errorf("empty time range")
	}
	x := func(at time.Time) float64 {
		return float64(c.Left) + at.Sub(env.From).Seconds()/span*float64(c.Right-c.Left)
	}
	y := func(v float64) float64 { return float64(c.Bottom) - v/top*float64(c.Bottom-c.Top) }
	for i := 0; i <= 4; i++ {
		v := top * float64(i) / 4
		c.YTicks = append(c.YTicks, chartTick{Pos: y(v), Text: formatValue(v, unit)})
	}
	step := tickStep(env.To.Sub(env.From))
	layout := "15:04"
	if env.To.Sub(env.From) > 24*time.Hour {
		layout = "Jan 2 15:04"
	}
	for at := env.From.Truncate(step).Add(step); !at.After(env.To); at = at.Add(step) {
		c.XTicks = append(c.XTicks, chartTick{Pos: x(at), Text: at.UTC().Format(layout)})
	}
	for i, name := range names {
		ps := series[name]
		sort.Slice(ps, func(a, b int) bool { return ps[a].at.Before(ps[b].at) })
		l := chartLine{Name: name, Colour: seriesColour(name, i)}
		var pts []string
		for _, p := range ps {
			px, py := x(p.at), y(p.v)
			pts = append(pts, strconv.FormatFloat(px, 'f', 1, 64)+","+strconv.FormatFloat(py, 'f', 1, 64))
			if len(ps) <= maxDotPoints {
				l.Dots = append(l.Dots, chartDot{X: px, Y: py, Title: fmt.Sprintf("%s %s: %s", name, p.at.UTC().Format("15:04"), formatValue(p.v, unit))})
			}
		}
		l.Points = strings.Join(pts, " ")
		c.Lines = append(c.Lines, l)
	}
	return c, nil
}

// niceCeiling is the smallest of 1, 2, 3, 4, 5, 6 or 8 times a power of ten at
// or above v (1 for v <= 0).
func niceCeiling(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 3, 4, 5, 6, 8, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// tickStep is a round step that gives 4 to 12 ticks over span.
func tickStep(span time.Duration) time.Duration {
	for _, s := range []time.Duration{time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if span/s <= 12 {
			return s
		}
	}
	return 7 * 24 * time.Hour
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "percentunit":
		return strconv.FormatFloat(100*v, 'f', -1, 64) + "%"
	case "ms":
		return strconv.FormatFloat(v, 'f', -1, 64) + " ms"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

var previewTemplate = template.Must(template.New("preview").Parse(`
<h1>{{.Dashboard.Title}} <span class="muted">(preview)</span></h1>
<p class="muted">{{.Intro}} Time range {{.From}} to {{.To}} UTC, interval {{.Interval}} s.</p>
{{range .Sections}}<h2>{{.Title}}</h2>
<p class="muted">{{.Description}}</p>
{{if .Error}}<p><b>Query failed:</b> <code>{{.Error}}</code></p>
{{else if .Chart}}{{with .Chart}}{{$ch := .}}<svg width="{{.Width}}" height="{{.Height}}" role="img">
{{range .YTicks}}<line x1="{{$ch.Left}}" x2="{{$ch.Right}}" y1="{{.Pos}}" y2="{{.Pos}}" stroke="#eee"></line><text x="{{$ch.Left}}" y="{{.Pos}}" dx="-6" dy="4" text-anchor="end" fill="#666">{{.Text}}</text>
{{end}}{{range .XTicks}}<line x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$ch.Top}}" y2="{{$ch.Bottom}}" stroke="#f3f3f3"></line><text x="{{.Pos}}" y="{{$ch.Bottom}}" dy="16" text-anchor="middle" fill="#666">{{.Text}}</text>
{{end}}<line x1="{{.Left}}" x2="{{.Right}}" y1="{{.Bottom}}" y2="{{.Bottom}}" stroke="#999"></line>
{{range .Lines}}<g><title>{{.Name}}</title><polyline points="{{.Points}}" fill="none" stroke="{{.Colour}}" stroke-width="1.6"></polyline>{{$c := .Colour}}{{range .Dots}}<circle cx="{{.X}}" cy="{{.Y}}" r="2.5" fill="{{$c}}"><title>{{.Title}}</title></circle>{{end}}</g>
{{end}}</svg>
<p>{{range .Lines}}<span style="display:inline-block;margin-right:1.2em"><span style="display:inline-block;width:10px;height:10px;background:{{.Colour}};margin-right:4px"></span>{{.Name}}</span>{{else}}<span class="muted">No data in the range.</span>{{end}}</p>{{end}}
{{else if .Table}}{{with .Table}}{{if .Rows}}<table><tr>{{range .Columns}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr>{{range .}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table>{{else}}<p class="muted">No rows.</p>{{end}}{{end}}{{end}}
<details><summary class="muted">SQL as it ran ({{.Rows}} rows)</summary><pre>{{.SQL}}</pre></details>
{{end}}`))
