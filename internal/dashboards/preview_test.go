package dashboards

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/testenv"
)

// previewEvents are six hours of made-up traffic before end: three tenants
// on emo@1, acme also on emo@2, conversations of 6 to 20 customer messages;
// gamma's negative share rises through the afternoon and some of its
// conversations turn angry at their end.
func previewEvents(end time.Time) []sampleEvent {
	rng := rand.New(rand.NewPCG(13, 4))
	labels := []string{"joy", "neutral", "surprise", "anger", "sadness", "fear", "disgust"}
	calm := []float64{0.35, 0.35, 0.1, 0.07, 0.07, 0.03, 0.03}
	pick := func(w []float64) string {
		r := rng.Float64()
		for i, p := range w {
			if r < p {
				return labels[i]
			}
			r -= p
		}
		return labels[0]
	}
	start := end.Add(-6 * time.Hour)
	var out []sampleEvent
	n := 0
	for ti, tenant := range []string{"acme", "beta", "gamma"} {
		for at := start.Add(time.Duration(ti) * 7 * time.Second); at.Before(end); {
			conv := fmt.Sprintf("%s-%04d", tenant, n)
			n++
			length := 6 + rng.IntN(15)
			angry := tenant == "gamma" && rng.Float64() < at.Sub(start).Hours()/12
			for i := 0; i < length && at.Before(end); i++ {
				w := calm
				if tenant == "gamma" {
					// More negative through the afternoon.
					f := at.Sub(start).Hours() / 6
					w = []float64{0.35 - 0.2*f, 0.3 - 0.1*f, 0.1, 0.07 + 0.15*f, 0.07 + 0.1*f, 0.06, 0.05 + 0.05*f}
				}
				if angry && i >= length-4 {
					w = []float64{0.05, 0.05, 0, 0.5, 0.4, 0, 0}
				}
				e := sampleEvent{id: fmt.Sprintf("%s-%d", conv, i), adapter: "emo@1", run: "live", conversation: conv,
					tenant: tenant, role: "customer", label: pick(w), sent: at, cacheHit: rng.Float64() < 0.3,
					pipelineMs: float32(15 + rng.ExpFloat64()*20), classifyMs: float32(8 + rng.ExpFloat64()*10)}
				if e.cacheHit {
					e.classifyMs = 0
				}
				out = append(out, e)
				if tenant == "acme" {
					b := e
					b.adapter, b.label, b.pipelineMs = "emo@2", pick(calm), e.pipelineMs*1.4
					out = append(out, b)
				}
				at = at.Add(time.Duration(20+rng.IntN(40)) * time.Second)
			}
		}
	}
	return out
}

// TestPreview runs the ClickHouse panels of the emotions dashboard on six
// hours of made-up events in a current ClickHouse (chDB) and writes the
// HTML preview: to $EMOFLOW_DASHBOARD_PREVIEW when set (look at it in a
// browser), else to a temporary folder.
func TestPreview(t *testing.T) {
	d := loadDashboard(t, "emoflow-emotions.json")
	end := time.Date(2025, 3, 1, 18, 0, 0, 0, time.UTC)
	events := previewEvents(end)
	db := testenv.Name(t, "dash_preview")
	statements := schemaStatements(t, db)
	statements = append(statements, insertStatement(db, events, 1), insertStatement(db, events[:200], 2),
		testenv.Statement{Kind: testenv.Exec, SQL: "USE " + db})
	env := Env{From: end.Add(-6 * time.Hour), To: end, IntervalSeconds: 300, Vars: map[string]Value{
		"run":     {Values: []string{"live"}},
		"recent":  {Values: []string{"5"}},
		"tenant":  {All: true, Values: []string{"acme", "beta", "gamma"}},
		"adapter": {All: true, Values: []string{"emo@1", "emo@2"}},
	}}
	var results []PanelResult
	first := len(statements)
	for _, q := range d.ClickHouseQueries() {
		if q.Panel == nil {
			continue
		}
		sql, err := Expand(q.SQL, env)
		if err != nil {
			t.Fatalf("%s: %v", q.Name, err)
		}
		results = append(results, PanelResult{Panel: *q.Panel, SQL: sql})
		statements = append(statements, testenv.Statement{Kind: testenv.Query, SQL: sql})
	}
	run := testenv.RunCurrentClickHouse(t, statements)
	for i := range results {
		r := run.Results[first+i]
		if r.Error != "" {
			t.Errorf("%s: %s", results[i].Panel.Title, r.Error)
		}
		if len(r.Data) == 0 {
			t.Errorf("%s: no rows", results[i].Panel.Title)
		}
		results[i].Error = r.Error
		results[i].Result = Table{Columns: r.Columns, Types: r.Types, Rows: r.Data}
	}
	var page bytes.Buffer
	intro := fmt.Sprintf("Every ClickHouse panel's query, expanded as Grafana expands it (all tenants and adapters, run live), run on ClickHouse %s (chDB) over %d made-up events.", run.Version, len(events))
	if err := Preview(&page, d, env, intro, results); err != nil {
		t.Fatal(err)
	}
	html := page.String()
	for _, r := range results {
		if !strings.Contains(html, ">"+r.Panel.Title+"<") {
			t.Errorf("the preview has no section %q", r.Panel.Title)
		}
	}
	if n, want := strings.Count(html, "<polyline"), 0; n == want || strings.Contains(html, "Query failed") || strings.Contains(html, "not a time series") {
		t.Errorf("the preview has %d lines, or a failure", n)
	}
	out := os.Getenv("EMOFLOW_DASHBOARD_PREVIEW")
	if out == "" {
		out = filepath.Join(t.TempDir(), "preview.html")
	}
	if err := os.WriteFile(out, page.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events, %d panels: %s (%d bytes)", len(events), len(results), out, page.Len())
}
