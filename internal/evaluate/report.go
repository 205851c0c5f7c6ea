package evaluate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/emoflow/emoflow/labelmaps"
)

// RunReport is the evaluation of one run against ground truth.
type RunReport struct {
	Run      RunSelector `json:"run"`
	Database string      `json:"database"`
	// LabelMap names the map applied to the true labels, if any.
	LabelMap string `json:"label_map,omitempty"`
	// Events counts the run's messages; the scores cover those with ground
	// truth that has a counterpart under the label map.
	Events        int    `json:"events"`
	WithoutTruth  int    `json:"without_ground_truth"`
	NoCounterpart int    `json:"no_counterpart"`
	Scores        Scores `json:"scores"`
}

// ComparisonReport compares two runs over the messages both labelled.
type ComparisonReport struct {
	A        RunSelector `json:"a"`
	B        RunSelector `json:"b"`
	Database string      `json:"database"`
	// OnlyA and OnlyB count messages only one run labelled.
	OnlyA     int       `json:"only_a"`
	OnlyB     int       `json:"only_b"`
	Agreement Agreement `json:"agreement"`
	// Changed counts the messages whose label changed; ChangedMessages
	// lists the first of them by message id, at most Limit.
	Changed         int              `json:"changed"`
	Limit           int              `json:"limit"`
	ChangedMessages []ChangedMessage `json:"changed_messages"`
}

// ApplyMap maps the true labels of c with m. It returns the outcomes of
// messages with ground truth that has a counterpart, and counts those
// without ground truth and those whose true label has no counterpart. A
// true label that is not in the map's source label set is an error: the
// map does not fit the run.
func ApplyMap(c Confusion, m *labelmaps.Map) (mapped Confusion, withoutTruth, noCounterpart int, err error) {
	mapped = Confusion{}
	for o, n := range c {
		switch {
		case n <= 0:
			continue
		case o.True == "":
			withoutTruth += n
			continue
		case m == nil:
			mapped[o] += n
			continue
		}
		to, err := m.Apply(o.True)
		switch {
		case errors.Is(err, labelmaps.ErrNoCounterpart):
			noCounterpart += n
		case err != nil:
			return nil, 0, 0, fmt.Errorf("label map %s does not fit the run: %w", m.Name, err)
		default:
			mapped[Outcome{True: to, Predicted: o.Predicted}] += n
		}
	}
	return mapped, withoutTruth, noCounterpart, nil
}

// EvaluateRun scores the run sel against its ground truth, mapped with m
// when m is not nil.
func EvaluateRun(ctx context.Context, s *Store, sel RunSelector, m *labelmaps.Map) (RunReport, error) {
	sel, err := s.Resolve(ctx, sel)
	if err != nil {
		return RunReport{}, err
	}
	c, err := s.Confusion(ctx, sel)
	if err != nil {
		return RunReport{}, err
	}
	r := RunReport{Run: sel, Database: s.db}
	for _, n := range c {
		r.Events += n
	}
	if m != nil {
		r.LabelMap = m.Name
	}
	mapped, withoutTruth, noCounterpart, err := ApplyMap(c, m)
	if err != nil {
		return RunReport{}, err
	}
	r.WithoutTruth, r.NoCounterpart = withoutTruth, noCounterpart
	if r.Scores, err = Score(mapped); errors.Is(err, ErrNoMessages) {
		return RunReport{}, fmt.Errorf("run %q: none of its %d messages has a ground-truth label to score against (%d without, %d without counterpart): evaluate a replay of a labelled data set (emoctl load-dataset), or compare runs", sel.RunID, r.Events, withoutTruth, noCounterpart)
	}
	return r, err
}

// CompareRuns compares runs a and b, listing at most limit changed
// messages.
func CompareRuns(ctx context.Context, s *Store, a, b RunSelector, limit int) (ComparisonReport, error) {
	a, err := s.Resolve(ctx, a)
	if err != nil {
		return ComparisonReport{}, err
	}
	if b, err = s.Resolve(ctx, b); err != nil {
		return ComparisonReport{}, err
	}
	t, onlyA, onlyB, err := s.Transitions(ctx, a, b)
	if err != nil {
		return ComparisonReport{}, err
	}
	r := ComparisonReport{A: a, B: b, Database: s.db, OnlyA: onlyA, OnlyB: onlyB, Limit: limit}
	if r.Agreement, err = Agree(t); errors.Is(err, ErrNoMessages) {
		return ComparisonReport{}, fmt.Errorf("runs %q and %q have no message in common (%d and %d messages)", a.RunID, b.RunID, onlyA, onlyB)
	}
	r.Changed = r.Agreement.Messages - r.Agreement.Agreed
	if r.ChangedMessages, err = s.Changed(ctx, a, b, limit); err != nil {
		return ComparisonReport{}, err
	}
	return r, nil
}

// WriteJSON writes v (a report) as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteText writes the report as terminal tables.
func (r RunReport) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	s := r.Scores
	fmt.Fprintf(tw, "run %s (adapter %s) from %s.events_dedup\n", r.Run.RunID, orNone(r.Run.Adapter), r.Database)
	fmt.Fprintf(tw, "messages scored %d of %d (without ground truth %d, no counterpart %d)", s.Messages, r.Events, r.WithoutTruth, r.NoCounterpart)
	if r.LabelMap != "" {
		fmt.Fprintf(tw, "; true labels mapped with %s", r.LabelMap)
	}
	fmt.Fprintf(tw, "\n\naccuracy (WA)\t%.4f\nUA\t%.4f\nmacro F1\t%.4f\nweighted F1\t%.4f\n\n", s.Accuracy, s.UA, s.MacroF1, s.WeightedF1)
	fmt.Fprintln(tw, "label\tsupport\tpredicted\tcorrect\tprecision\trecall\tF1")
	for _, c := range s.Classes {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.4f\t%.4f\t%.4f\n", c.Label, c.Support, c.Predicted, c.Correct, c.Precision, c.Recall, c.F1)
	}
	fmt.Fprintln(tw, "\nconfusion matrix (rows: true label, columns: predicted label)")
	writeMatrix(tw, "true \\ predicted", s.Labels, s.Matrix)
	return tw.Flush()
}

// WriteText writes the report as terminal tables.
func (r ComparisonReport) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	a := r.Agreement
	fmt.Fprintf(tw, "a: run %s (adapter %s)\nb: run %s (adapter %s)\nfrom %s.events_dedup\n", r.A.RunID, orNone(r.A.Adapter), r.B.RunID, orNone(r.B.Adapter), r.Database)
	fmt.Fprintf(tw, "messages in both %d; only in a %d; only in b %d\n\n", a.Messages, r.OnlyA, r.OnlyB)
	fmt.Fprintf(tw, "agreement\t%.4f\nCohen's kappa\t%.4f\ntotal variation distance\t%.4f\nlabel changed\t%d\n\n", a.Rate, a.Kappa, a.TotalVariation, r.Changed)
	fmt.Fprintln(tw, "label\tcount a\tshare a\tcount b\tshare b\tshare b - a")
	for _, d := range a.Distribution {
		fmt.Fprintf(tw, "%s\t%d\t%.4f\t%d\t%.4f\t%+.4f\n", d.Label, d.CountA, d.ShareA, d.CountB, d.ShareB, d.Diff)
	}
	fmt.Fprintln(tw, "\nlabel pairs (rows: label in a, columns: label in b)")
	writeMatrix(tw, "a \\ b", a.Labels, a.Matrix)
	fmt.Fprintf(tw, "\nmessages whose label changed: %d", r.Changed)
	if r.Changed > len(r.ChangedMessages) {
		fmt.Fprintf(tw, " (the first %d by message id; -limit shows more)", len(r.ChangedMessages))
	}
	fmt.Fprintln(tw)
	if len(r.ChangedMessages) > 0 {
		fmt.Fprintln(tw, "message id\ttext fingerprint\ta -> b")
		for _, m := range r.ChangedMessages {
			fmt.Fprintf(tw, "%s\t%s\t%s -> %s\n", m.MessageID, shortFingerprint(m.Fingerprint), m.A, m.B)
		}
	}
	return tw.Flush()
}

func writeMatrix(tw *tabwriter.Writer, corner string, labels []string, m [][]int) {
	fmt.Fprintf(tw, "%s\t%s\n", corner, strings.Join(labels, "\t"))
	for i, row := range m {
		cells := make([]string, len(row))
		for j, n := range row {
			cells[j] = fmt.Sprint(n)
		}
		fmt.Fprintf(tw, "%s\t%s\n", labels[i], strings.Join(cells, "\t"))
	}
}

// shortFingerprint is enough of a SHA-256 to tell texts apart in a table.
func shortFingerprint(f string) string {
	if len(f) > 12 {
		return f[:12]
	}
	return f
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
