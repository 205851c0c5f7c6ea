package train

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/evaluate"
)

// Report is a training run's record, written beside the adapter as
// training-report.json and training-report.html.
type Report struct {
	Config        Config  `json:"config"`
	Recipe        string  `json:"recipe"`
	Method        string  `json:"method"`
	Base          string  `json:"base_model"`
	DType         string  `json:"dtype"`
	Params        int     `json:"trainable_parameters"`
	TrainExamples int     `json:"train_examples"`
	DevExamples   int     `json:"dev_examples"`
	Truncated     int     `json:"truncated_texts"`
	Updates       int     `json:"updates"`
	Seconds       float64 `json:"seconds"`
	// Resumed lists the updates a killed run was resumed from.
	Resumed      []int            `json:"resumed,omitempty"`
	StoppedEarly int              `json:"stopped_early_at,omitempty"`
	History      []Point          `json:"history"`
	Evals        []Eval           `json:"evals"`
	Best         *Eval            `json:"best,omitempty"`
	BestScores   *evaluate.Scores `json:"best_scores,omitempty"`

	resumedAt   int
	lastPrinted time.Time
}

// Point is one optimizer update.
type Point struct {
	Step       int     `json:"step"`
	Loss       float64 `json:"loss"`
	LR         float64 `json:"lr"`
	GradNorm   float64 `json:"grad_norm"`
	TokensPerS float64 `json:"tokens_per_s"`
}

// Eval is one dev evaluation.
type Eval struct {
	Step       int     `json:"step"`
	Accuracy   float64 `json:"accuracy"`
	MacroF1    float64 `json:"macro_f1"`
	WeightedF1 float64 `json:"weighted_f1"`
}

// write saves the report as JSON and HTML into dir.
func (r Report) write(dir string) error {
	if err := writeJSON(filepath.Join(dir, "training-report.json"), r); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := r.WriteHTML(&buf); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "training-report.html"), buf.Bytes(), 0o644)
}

// WriteHTML writes the report as a self-contained page with the loss and
// dev curves as inline SVG.
func (r Report) WriteHTML(w io.Writer) error {
	var losses, evals []xy
	for _, p := range r.History {
		losses = append(losses, xy{float64(p.Step), p.Loss})
	}
	// Per-update losses of small batches are noisy: the trend is drawn
	// over them as a moving mean of 5% of the updates.
	smooth := movingMean(losses, max(1, len(losses)/20))
	for _, e := range r.Evals {
		evals = append(evals, xy{float64(e.Step), e.MacroF1})
	}
	var body bytes.Buffer
	err := reportBody.Execute(&body, struct {
		Report
		LossChart, EvalChart template.HTML
	}{r, lineChart("training loss (mean over the answer tokens; dark: moving mean)", losses, smooth), lineChart("dev macro-F1", evals, nil)})
	if err != nil {
		return err
	}
	return evaluate.Page(w, fmt.Sprintf("emoflow training of %s@%s", r.Config.ID, r.Config.Version), template.HTML(body.String()))
}

type xy struct{ X, Y float64 }

// movingMean is the mean of each point's window of n points ending at it.
func movingMean(pts []xy, n int) []xy {
	out := make([]xy, len(pts))
	sum := 0.0
	for i, p := range pts {
		sum += p.Y
		if i >= n {
			sum -= pts[i-n].Y
		}
		out[i] = xy{p.X, sum / float64(min(i+1, n))}
	}
	return out
}

// lineChart draws points as an SVG polyline with its axes' ranges, and
// trend (when not nil) as a darker line over it.
func lineChart(title string, pts, trend []xy) template.HTML {
	if len(pts) == 0 {
		return ""
	}
	const W, H, left, bottom = 720.0, 220.0, 56.0, 24.0
	minX, maxX, minY, maxY := pts[0].X, pts[0].X, pts[0].Y, pts[0].Y
	for _, p := range pts {
		minX, maxX = math.Min(minX, p.X), math.Max(maxX, p.X)
		minY, maxY = math.Min(minY, p.Y), math.Max(maxY, p.Y)
	}
	if maxX == minX {
		maxX = minX + 1
	}
	if maxY == minY {
		maxY = minY + 1
	}
	points := func(ps []xy) string {
		var b strings.Builder
		for _, p := range ps {
			x := left + (p.X-minX)/(maxX-minX)*(W-left-8)
			y := 20 + (1-(p.Y-minY)/(maxY-minY))*(H-bottom-28)
			fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
		}
		return b.String()
	}
	line := points(pts)
	colour, over := "#1f77b4", ""
	if trend != nil {
		colour = "#9ecae1"
		over = fmt.Sprintf(`<polyline fill="none" stroke="#08519c" stroke-width="2" points="%s"></polyline>`, points(trend))
	}
	if len(pts) < 40 {
		for _, f := range strings.Fields(line) {
			xy := strings.Split(f, ",")
			over += fmt.Sprintf(`<circle cx="%s" cy="%s" r="3" fill="%s"></circle>`, xy[0], xy[1], colour)
		}
	}
	svg := fmt.Sprintf(`<svg width="%.0f" height="%.0f" role="img"><text x="%.0f" y="14">%s</text>`+
		`<line x1="%.0f" y1="20" x2="%.0f" y2="%.0f" stroke="#999"></line><line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#999"></line>`+
		`<text x="%.0f" y="26" text-anchor="end">%.3g</text><text x="%.0f" y="%.0f" text-anchor="end">%.3g</text>`+
		`<text x="%.0f" y="%.0f">%.0f</text><text x="%.0f" y="%.0f" text-anchor="end">update %.0f</text>`+
		`<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"></polyline>%s</svg>`,
		W, H, left, template.HTMLEscapeString(title),
		left, left, H-bottom, left, H-bottom, W-8, H-bottom,
		left-4, maxY, left-4, H-bottom, minY,
		left, H-6, minX, W-8, H-6, maxX,
		colour, line, over)
	return template.HTML(svg)
}

var reportBody = template.Must(template.New("train").Funcs(template.FuncMap{
	"f4": func(v float64) string { return fmt.Sprintf("%.4f", v) },
	"secs": func(v float64) string {
		return (time.Duration(v * float64(time.Second))).Round(time.Second).String()
	},
}).Parse(`<h1>Training of <code>{{.Config.ID}}@{{.Config.Version}}</code></h1>
<p class="muted">{{.Method}} on <code>{{.Base}}</code> ({{.DType}}), {{.Params}} trainable parameters;
{{.TrainExamples}} training examples ({{.Truncated}} texts truncated to {{.Config.MaxTextTokens}} tokens), {{.DevExamples}} dev examples;
{{.Updates}} updates of {{.Config.BatchSize}}×{{.Config.GradAccum}} examples, peak learning rate {{.Config.LR}}, in {{secs .Seconds}}.
{{if .StoppedEarly}}Stopped early at update {{.StoppedEarly}}.{{end}}{{if .Resumed}} Resumed at updates {{.Resumed}}.{{end}}
Recipe <code>{{.Recipe}}</code>.</p>
{{with .Best}}<div class="kpi"><div>best update<b>{{.Step}}</b></div><div>dev accuracy<b>{{f4 .Accuracy}}</b></div>
<div>dev macro F1<b>{{f4 .MacroF1}}</b></div><div>dev weighted F1<b>{{f4 .WeightedF1}}</b></div></div>{{end}}
<h2>Loss</h2>
{{.LossChart}}
{{if .Evals}}<h2>Dev evaluations</h2>
{{.EvalChart}}
<table><tr><th>update</th><th>accuracy</th><th>macro F1</th><th>weighted F1</th></tr>
{{range .Evals}}<tr><td>{{.Step}}</td><td>{{f4 .Accuracy}}</td><td>{{f4 .MacroF1}}</td><td>{{f4 .WeightedF1}}</td></tr>
{{end}}</table>{{end}}
{{with .BestScores}}<h2>Best adapter per class (dev)</h2>
<table><tr><th>label</th><th>support</th><th>predicted</th><th>precision</th><th>recall</th><th>F1</th></tr>
{{range .Classes}}<tr><td>{{.Label}}</td><td>{{.Support}}</td><td>{{.Predicted}}</td><td>{{f4 .Precision}}</td><td>{{f4 .Recall}}</td><td>{{f4 .F1}}</td></tr>
{{end}}</table>{{end}}
`))
