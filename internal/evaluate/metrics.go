// Package evaluate owns the evaluation of replay runs: the scores of a run
// against ground truth (accuracy, macro and weighted F1, unweighted and
// weighted accuracy, per-class precision and recall, confusion matrix), the
// comparison of two runs (agreement, Cohen's kappa, label-distribution
// shift, the messages whose label changed), reading both from the sink's
// deduplicated ClickHouse view, and the reports (terminal table, JSON,
// self-contained HTML).
//
// The metrics are computed from counts, so that ClickHouse aggregates and
// only the counts travel. Definitions (as scikit-learn computes them, with
// zero_division=0):
//
//   - the labels are those that occur as true or predicted label, sorted;
//   - precision of a label = correct / predicted, 0 when never predicted;
//     recall = correct / support (true occurrences), 0 without support;
//     F1 = 2PR/(P+R), 0 when P+R = 0;
//   - macro F1 = mean F1 over the labels; weighted F1 = mean F1 weighted by
//     support;
//   - WA (weighted accuracy) = accuracy = correct / messages; UA
//     (unweighted accuracy) = mean recall over the labels with support, as
//     emotion-recognition papers report them;
//   - Cohen's kappa = (po - pe) / (1 - pe), po the observed agreement, pe
//     the agreement expected from the two label distributions; 1 when both
//     runs give every message the same single label (pe = po = 1, where the
//     formula is 0/0).
package evaluate

import (
	"errors"
	"sort"
)

// Outcome is a ground-truth label and the label a run predicted.
type Outcome struct{ True, Predicted string }

// Confusion counts messages per outcome.
type Confusion map[Outcome]int

// ClassScores are the scores of one label.
type ClassScores struct {
	Label string `json:"label"`
	// Support is how many messages have the label as ground truth.
	Support int `json:"support"`
	// Predicted is how many messages were given the label.
	Predicted int `json:"predicted"`
	// Correct is how many messages with the label as ground truth were
	// given it.
	Correct   int     `json:"correct"`
	Precision float64 `json:"precision"`
	Recall    float64 `json:"recall"`
	F1        float64 `json:"f1"`
}

// Scores are a run's scores against ground truth.
type Scores struct {
	Messages int `json:"messages"`
	Correct  int `json:"correct"`
	// Accuracy equals WA; both are reported because papers use both names.
	Accuracy   float64 `json:"accuracy"`
	MacroF1    float64 `json:"macro_f1"`
	WeightedF1 float64 `json:"weighted_f1"`
	// UA is the unweighted accuracy: mean recall over labels with support.
	UA float64 `json:"ua"`
	// WA is the weighted accuracy: overall accuracy.
	WA float64 `json:"wa"`
	// Labels orders Classes and both axes of Matrix.
	Labels  []string      `json:"labels"`
	Classes []ClassScores `json:"classes"`
	// Matrix[i][j] counts messages with true label Labels[i] predicted as
	// Labels[j].
	Matrix [][]int `json:"confusion_matrix"`
}

// ErrNoMessages is an evaluation or comparison of nothing.
var ErrNoMessages = errors.New("no messages to evaluate")

// Score computes the scores of the outcomes counted in c.
func Score(c Confusion) (Scores, error) {
	labels := labelsOf(c, func(o Outcome) (string, string) { return o.True, o.Predicted })
	idx := indexOf(labels)
	s := Scores{Labels: labels, Matrix: square(len(labels)), Classes: make([]ClassScores, len(labels))}
	for o, n := range c {
		if n <= 0 {
			continue
		}
		i, j := idx[o.True], idx[o.Predicted]
		s.Matrix[i][j] += n
		s.Messages += n
		s.Classes[i].Support += n
		s.Classes[j].Predicted += n
		if i == j {
			s.Classes[i].Correct += n
			s.Correct += n
		}
	}
	if s.Messages == 0 {
		return Scores{}, ErrNoMessages
	}
	withSupport := 0
	for i := range s.Classes {
		cs := &s.Classes[i]
		cs.Label = labels[i]
		cs.Precision = ratio(cs.Correct, cs.Predicted)
		cs.Recall = ratio(cs.Correct, cs.Support)
		if cs.Precision+cs.Recall > 0 {
			cs.F1 = 2 * cs.Precision * cs.Recall / (cs.Precision + cs.Recall)
		}
		s.MacroF1 += cs.F1
		s.WeightedF1 += cs.F1 * float64(cs.Support)
		if cs.Support > 0 {
			s.UA += cs.Recall
			withSupport++
		}
	}
	s.MacroF1 /= float64(len(labels))
	s.WeightedF1 /= float64(s.Messages)
	s.UA /= float64(withSupport)
	s.Accuracy = ratio(s.Correct, s.Messages)
	s.WA = s.Accuracy
	return s, nil
}

// Change is the label a message got in run A and in run B.
type Change struct{ A, B string }

// Transitions counts messages per pair of labels in two runs.
type Transitions map[Change]int

// LabelShift is one label's share of the messages in two runs.
type LabelShift struct {
	Label  string  `json:"label"`
	CountA int     `json:"count_a"`
	CountB int     `json:"count_b"`
	ShareA float64 `json:"share_a"`
	ShareB float64 `json:"share_b"`
	// Diff is ShareB - ShareA.
	Diff float64 `json:"diff"`
}

// Agreement is how two runs labelled the messages both labelled.
type Agreement struct {
	Messages int `json:"messages"`
	Agreed   int `json:"agreed"`
	// Rate is Agreed / Messages.
	Rate  float64 `json:"agreement"`
	Kappa float64 `json:"kappa"`
	// Distribution is every label's share in each run, over the same
	// messages, in label order.
	Distribution []LabelShift `json:"distribution"`
	// TotalVariation is half the sum of the absolute share differences: the
	// share of messages that would have to change label to turn one
	// distribution into the other (at most 1 - Rate).
	TotalVariation float64 `json:"total_variation"`
	// Labels orders both axes of Matrix.
	Labels []string `json:"labels"`
	// Matrix[i][j] counts messages labelled Labels[i] in A and Labels[j]
	// in B.
	Matrix [][]int `json:"transitions"`
}

// Agree computes the agreement of two runs from the transitions counted
// in t.
func Agree(t Transitions) (Agreement, error) {
	labels := labelsOf(t, func(c Change) (string, string) { return c.A, c.B })
	idx := indexOf(labels)
	a := Agreement{Labels: labels, Matrix: square(len(labels)), Distribution: make([]LabelShift, len(labels))}
	for c, n := range t {
		if n <= 0 {
			continue
		}
		i, j := idx[c.A], idx[c.B]
		a.Matrix[i][j] += n
		a.Messages += n
		a.Distribution[i].CountA += n
		a.Distribution[j].CountB += n
		if i == j {
			a.Agreed += n
		}
	}
	if a.Messages == 0 {
		return Agreement{}, ErrNoMessages
	}
	a.Rate = ratio(a.Agreed, a.Messages)
	expected := 0.0
	for i := range a.Distribution {
		d := &a.Distribution[i]
		d.Label = labels[i]
		d.ShareA = ratio(d.CountA, a.Messages)
		d.ShareB = ratio(d.CountB, a.Messages)
		d.Diff = d.ShareB - d.ShareA
		expected += d.ShareA * d.ShareB
		a.TotalVariation += abs(d.Diff) / 2
	}
	if expected >= 1 {
		// One label everywhere in both runs: agreement is perfect, and
		// kappa's 0/0 is taken as 1.
		a.Kappa = 1
	} else {
		a.Kappa = (a.Rate - expected) / (1 - expected)
	}
	return a, nil
}

// labelsOf returns the labels occurring in the keys of counts with a
// positive count, sorted.
func labelsOf[K comparable](counts map[K]int, pair func(K) (string, string)) []string {
	set := map[string]bool{}
	for k, n := range counts {
		if n > 0 {
			x, y := pair(k)
			set[x], set[y] = true, true
		}
	}
	labels := make([]string, 0, len(set))
	for l := range set {
		labels = append(labels, l)
	}
	sort.Strings(labels)
	return labels
}

func indexOf(labels []string) map[string]int {
	idx := make(map[string]int, len(labels))
	for i, l := range labels {
		idx[l] = i
	}
	return idx
}

func square(n int) [][]int {
	m := make([][]int, n)
	for i := range m {
		m[i] = make([]int, n)
	}
	return m
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
