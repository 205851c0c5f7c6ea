package evaluate

import (
	"fmt"
	"html/template"
	"io"
	"math"
)

// The HTML reports are single files: inline CSS and SVG, no scripts, fonts
// or images from elsewhere, so they can be mailed and archived as they are.

// heatMap is an SVG matrix whose cells are shaded by their share of the
// row.
type heatMap struct {
	Width, Height int
	Cells         []heatCell
	RowLabels     []axisLabel
	ColLabels     []axisLabel
	RowTitle      string
	ColTitle      string
}

type heatCell struct {
	X, Y, Size     int
	TextX, TextY   int
	Fill, TextFill string
	Count          int
	Title          string
}

type axisLabel struct {
	X, Y int
	Text string
}

// Geometry of the heat maps.
const (
	cellSize    = 46
	heatMargin  = 120
	heatTopRoom = 110
)

func newHeatMap(labels []string, m [][]int, rowTitle, colTitle string) heatMap {
	n := len(labels)
	h := heatMap{Width: heatMargin + n*cellSize + 10, Height: heatTopRoom + n*cellSize + 10, RowTitle: rowTitle, ColTitle: colTitle}
	for i, row := range m {
		total := 0
		for _, c := range row {
			total += c
		}
		for j, c := range row {
			share := ratio(c, total)
			x, y := heatMargin+j*cellSize, heatTopRoom+i*cellSize
			cell := heatCell{X: x, Y: y, Size: cellSize - 2, TextX: x + cellSize/2 - 1, TextY: y + cellSize/2 + 3,
				Fill: shade(share), TextFill: "#1b1b1b", Count: c,
				Title: fmt.Sprintf("%s → %s: %d (%.1f%% of the row)", labels[i], labels[j], c, 100*share)}
			if share > 0.55 {
				cell.TextFill = "#ffffff"
			}
			h.Cells = append(h.Cells, cell)
		}
	}
	for i, l := range labels {
		h.RowLabels = append(h.RowLabels, axisLabel{X: heatMargin - 8, Y: heatTopRoom + i*cellSize + cellSize/2 + 4, Text: l})
		h.ColLabels = append(h.ColLabels, axisLabel{X: heatMargin + i*cellSize + cellSize/2, Y: heatTopRoom - 8, Text: l})
	}
	return h
}

// shade goes from white (0) to a deep blue (1).
func shade(v float64) string {
	v = min(max(v, 0), 1)
	mix := func(from, to int) int { return from + int(math.Round(v*float64(to-from))) }
	return fmt.Sprintf("#%02x%02x%02x", mix(255, 24), mix(255, 78), mix(255, 160))
}

// barChart is an SVG of horizontal bars in groups, one group per label.
type barChart struct {
	Width, Height int
	Bars          []bar
	Labels        []axisLabel
	Legend        []legendItem
}

type bar struct {
	X, Y, W, H int
	Fill       string
	Title      string
	// Value is written right of the bar.
	Value string
}

type legendItem struct {
	X, Y int
	Fill string
	Text string
}

// Geometry of the bar charts.
const (
	barHeight   = 12
	barLabelW   = 120
	barMaxWidth = 420
	barLegendH  = 24
)

// series is one kind of bar in every group.
type series struct {
	Name   string
	Fill   string
	Values []float64 // in [0, 1], one per label
}

func newBarChart(labels []string, ss []series) barChart {
	group := len(ss)*barHeight + 10
	c := barChart{Width: barLabelW + barMaxWidth + 70, Height: barLegendH + len(labels)*group + 4}
	for k, s := range ss {
		c.Legend = append(c.Legend, legendItem{X: barLabelW + k*130, Y: 4, Fill: s.Fill, Text: s.Name})
	}
	for i, l := range labels {
		top := barLegendH + i*group
		c.Labels = append(c.Labels, axisLabel{X: barLabelW - 8, Y: top + len(ss)*barHeight/2 + 4, Text: l})
		for k, s := range ss {
			v := min(max(s.Values[i], 0), 1)
			c.Bars = append(c.Bars, bar{X: barLabelW, Y: top + k*barHeight, W: max(int(v*barMaxWidth+0.5), 1), H: barHeight - 2,
				Fill: s.Fill, Title: fmt.Sprintf("%s %s: %.4f", l, s.Name, s.Values[i]), Value: fmt.Sprintf("%.3f", s.Values[i])})
		}
	}
	return c
}

// Colours of the bar series.
const (
	colourA = "#2f6db5"
	colourB = "#d9822b"
	colourC = "#3c9a5f"
)

// WriteHTML writes the report as a self-contained HTML page.
func (r RunReport) WriteHTML(w io.Writer) error {
	s := r.Scores
	var precision, recall, f1 []float64
	for _, c := range s.Classes {
		precision, recall, f1 = append(precision, c.Precision), append(recall, c.Recall), append(f1, c.F1)
	}
	return pages.ExecuteTemplate(w, "run", struct {
		RunReport
		Heat heatMap
		Bars barChart
	}{r, newHeatMap(s.Labels, s.Matrix, "true label", "predicted label"),
		newBarChart(s.Labels, []series{{"precision", colourA, precision}, {"recall", colourB, recall}, {"F1", colourC, f1}})})
}

// WriteHTML writes the report as a self-contained HTML page.
func (r ComparisonReport) WriteHTML(w io.Writer) error {
	a := r.Agreement
	var shareA, shareB []float64
	for _, d := range a.Distribution {
		shareA, shareB = append(shareA, d.ShareA), append(shareB, d.ShareB)
	}
	return pages.ExecuteTemplate(w, "compare", struct {
		ComparisonReport
		Heat heatMap
		Bars barChart
	}{r, newHeatMap(a.Labels, a.Matrix, "label in a", "label in b"),
		newBarChart(a.Labels, []series{{"share in a", colourA, shareA}, {"share in b", colourB, shareB}})})
}

// Page writes a self-contained HTML page in the reports' style around
// body (other reports, such as emoctl train's, share the look).
func Page(w io.Writer, title string, body template.HTML) error {
	return pages.ExecuteTemplate(w, "page", struct {
		Title string
		Body  template.HTML
	}{title, body})
}

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"f4":    func(v float64) string { return fmt.Sprintf("%.4f", v) },
	"pct":   func(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) },
	"sign":  func(v float64) string { return fmt.Sprintf("%+.4f", v) },
	"short": shortFingerprint,
	"none":  orNone,
}).Parse(`
{{define "head"}}<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.}}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1b1b1b;margin:2em auto;max-width:980px;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
.kpi{display:flex;flex-wrap:wrap;gap:1em}.kpi div{background:#f4f7fb;border-radius:6px;padding:.6em 1em;min-width:9em}
.kpi b{display:block;font-size:1.4em}.muted{color:#666}code{font-size:.92em}
svg text{font:12px system-ui,sans-serif}
</style></head><body>{{end}}

{{define "page"}}{{template "head" .Title}}
{{.Body}}
</body></html>
{{end}}

{{define "heat"}}<svg width="{{.Width}}" height="{{.Height}}" role="img">
<text x="{{.Width}}" y="14" text-anchor="end" fill="#666">columns: {{.ColTitle}}; rows: {{.RowTitle}}; shade: share of the row</text>
{{range .ColLabels}}<text x="{{.X}}" y="{{.Y}}" transform="rotate(-45 {{.X}} {{.Y}})">{{.Text}}</text>
{{end}}{{range .RowLabels}}<text x="{{.X}}" y="{{.Y}}" text-anchor="end">{{.Text}}</text>
{{end}}{{range .Cells}}<g><title>{{.Title}}</title><rect x="{{.X}}" y="{{.Y}}" width="{{.Size}}" height="{{.Size}}" fill="{{.Fill}}" stroke="#ddd"></rect><text x="{{.TextX}}" y="{{.TextY}}" text-anchor="middle" fill="{{.TextFill}}">{{.Count}}</text></g>
{{end}}</svg>{{end}}

{{define "bars"}}<svg width="{{.Width}}" height="{{.Height}}" role="img">
{{range .Legend}}<rect x="{{.X}}" y="{{.Y}}" width="12" height="12" fill="{{.Fill}}"></rect><text x="{{.X}}" y="{{.Y}}" dx="16" dy="11">{{.Text}}</text>
{{end}}{{range .Labels}}<text x="{{.X}}" y="{{.Y}}" text-anchor="end">{{.Text}}</text>
{{end}}{{range .Bars}}<g><title>{{.Title}}</title><rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="{{.Fill}}"></rect><text x="{{.X}}" y="{{.Y}}" dx="{{.W}}" dy="9" transform="translate(4 0)">{{.Value}}</text></g>
{{end}}</svg>{{end}}

{{define "run"}}{{template "head" (printf "emoflow evaluation of run %s" .Run.RunID)}}
<h1>Evaluation of run <code>{{.Run.RunID}}</code></h1>
<p class="muted">adapter <code>{{none .Run.Adapter}}</code>, from <code>{{.Database}}.events_dedup</code> (one row per message, adapter and run).
{{.Scores.Messages}} of {{.Events}} messages scored; {{.WithoutTruth}} without ground truth, {{.NoCounterpart}} whose true label has no counterpart{{if .LabelMap}} under the label map <code>{{.LabelMap}}</code>{{end}}.</p>
<div class="kpi"><div>accuracy (WA)<b>{{f4 .Scores.Accuracy}}</b></div><div>UA<b>{{f4 .Scores.UA}}</b></div>
<div>macro F1<b>{{f4 .Scores.MacroF1}}</b></div><div>weighted F1<b>{{f4 .Scores.WeightedF1}}</b></div></div>
<h2>Per class</h2>
<table><tr><th>label</th><th>support</th><th>predicted</th><th>correct</th><th>precision</th><th>recall</th><th>F1</th></tr>
{{range .Scores.Classes}}<tr><td>{{.Label}}</td><td>{{.Support}}</td><td>{{.Predicted}}</td><td>{{.Correct}}</td><td>{{f4 .Precision}}</td><td>{{f4 .Recall}}</td><td>{{f4 .F1}}</td></tr>
{{end}}</table>
{{template "bars" .Bars}}
<h2>Confusion matrix</h2>
{{template "heat" .Heat}}
</body></html>
{{end}}

{{define "compare"}}{{template "head" (printf "emoflow comparison of runs %s and %s" .A.RunID .B.RunID)}}
<h1>Run <code>{{.A.RunID}}</code> (a) against run <code>{{.B.RunID}}</code> (b)</h1>
<p class="muted">a: adapter <code>{{none .A.Adapter}}</code>; b: adapter <code>{{none .B.Adapter}}</code>; from <code>{{.Database}}.events_dedup</code>.
{{.Agreement.Messages}} messages in both runs; {{.OnlyA}} only in a, {{.OnlyB}} only in b.</p>
<div class="kpi"><div>agreement<b>{{f4 .Agreement.Rate}}</b></div><div>Cohen's kappa<b>{{f4 .Agreement.Kappa}}</b></div>
<div>total variation distance<b>{{f4 .Agreement.TotalVariation}}</b></div><div>label changed<b>{{.Changed}}</b></div></div>
<h2>Label distribution</h2>
<table><tr><th>label</th><th>count a</th><th>share a</th><th>count b</th><th>share b</th><th>share b − a</th></tr>
{{range .Agreement.Distribution}}<tr><td>{{.Label}}</td><td>{{.CountA}}</td><td>{{pct .ShareA}}</td><td>{{.CountB}}</td><td>{{pct .ShareB}}</td><td>{{sign .Diff}}</td></tr>
{{end}}</table>
{{template "bars" .Bars}}
<h2>Label pairs</h2>
{{template "heat" .Heat}}
<h2>Messages whose label changed</h2>
<p class="muted">{{.Changed}} changed{{if lt (len .ChangedMessages) .Changed}}; the first {{len .ChangedMessages}} by message id{{end}}.</p>
{{if .ChangedMessages}}<table><tr><th>message id</th><th>text fingerprint</th><th>a</th><th>b</th></tr>
{{range .ChangedMessages}}<tr><td><code>{{.MessageID}}</code></td><td><code title="{{.Fingerprint}}">{{short .Fingerprint}}</code></td><td>{{.A}}</td><td>{{.B}}</td></tr>
{{end}}</table>{{end}}
</body></html>
{{end}}
`))
