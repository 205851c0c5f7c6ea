package evaluate

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9 {
		t.Errorf("%s = %.12f, want %.12f", what, got, want)
	}
}

// TestScoreHandComputed: three labels, one of them ("c") never predicted.
//
//	true\pred  a  b  c
//	a          3  1  0    support 4
//	b          1  2  0    support 3
//	c          1  0  0    support 1
//	predicted  5  3  0
//
// precision a 3/5, b 2/3, c 0 (never predicted); recall a 3/4, b 2/3, c 0;
// F1 a 2·0.6·0.75/1.35 = 2/3, b 2/3, c 0; macro F1 (2/3+2/3+0)/3 = 4/9;
// weighted F1 (4·2/3 + 3·2/3 + 1·0)/8 = 7/12; accuracy 5/8; UA (3/4 + 2/3
// + 0)/3 = 17/36.
func TestScoreHandComputed(t *testing.T) {
	s, err := Score(Confusion{
		{"a", "a"}: 3, {"a", "b"}: 1,
		{"b", "b"}: 2, {"b", "a"}: 1,
		{"c", "a"}: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Labels, []string{"a", "b", "c"}) || s.Messages != 8 || s.Correct != 5 {
		t.Fatalf("labels %v messages %d correct %d", s.Labels, s.Messages, s.Correct)
	}
	near(t, "accuracy", s.Accuracy, 5.0/8)
	near(t, "WA", s.WA, 5.0/8)
	near(t, "UA", s.UA, 17.0/36)
	near(t, "macro F1", s.MacroF1, 4.0/9)
	near(t, "weighted F1", s.WeightedF1, 7.0/12)
	want := []ClassScores{
		{Label: "a", Support: 4, Predicted: 5, Correct: 3, Precision: 0.6, Recall: 0.75, F1: 2.0 / 3},
		{Label: "b", Support: 3, Predicted: 3, Correct: 2, Precision: 2.0 / 3, Recall: 2.0 / 3, F1: 2.0 / 3},
		{Label: "c", Support: 1, Predicted: 0, Correct: 0},
	}
	for i, w := range want {
		g := s.Classes[i]
		if g.Label != w.Label || g.Support != w.Support || g.Predicted != w.Predicted || g.Correct != w.Correct {
			t.Errorf("class %d: %+v, want %+v", i, g, w)
		}
		near(t, w.Label+" precision", g.Precision, w.Precision)
		near(t, w.Label+" recall", g.Recall, w.Recall)
		near(t, w.Label+" F1", g.F1, w.F1)
	}
	if wantM := [][]int{{3, 1, 0}, {1, 2, 0}, {1, 0, 0}}; !reflect.DeepEqual(s.Matrix, wantM) {
		t.Errorf("matrix %v, want %v", s.Matrix, wantM)
	}
}

// TestScoreLabelOnlyPredicted: "d" is predicted but never true (an empty
// class). It counts in macro F1 (F1 0) but not in UA (no recall without
// support): a: P 2/2, R 2/3, F1 0.8; macro F1 (0.8+0)/2 = 0.4; weighted F1
// (3·0.8 + 0·0)/3 = 0.8; UA = 2/3; accuracy 2/3.
func TestScoreLabelOnlyPredicted(t *testing.T) {
	s, err := Score(Confusion{{"a", "a"}: 2, {"a", "d"}: 1, {"zero", "zero"}: 0})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Labels, []string{"a", "d"}) {
		t.Fatalf("labels %v: a zero count must not add a label", s.Labels)
	}
	near(t, "accuracy", s.Accuracy, 2.0/3)
	near(t, "UA", s.UA, 2.0/3)
	near(t, "macro F1", s.MacroF1, 0.4)
	near(t, "weighted F1", s.WeightedF1, 0.8)
	near(t, "d precision", s.Classes[1].Precision, 0)
	near(t, "d recall", s.Classes[1].Recall, 0)
}

// TestScoreTiesAndPerfection: two labels with the same counts (a tie)
// score the same, and a perfect run scores 1 everywhere.
func TestScoreTiesAndPerfection(t *testing.T) {
	s, err := Score(Confusion{{"x", "x"}: 2, {"x", "y"}: 1, {"y", "y"}: 2, {"y", "x"}: 1})
	if err != nil {
		t.Fatal(err)
	}
	// x: P 2/3, R 2/3, F1 2/3; y the same.
	for _, c := range s.Classes {
		near(t, c.Label+" F1", c.F1, 2.0/3)
	}
	near(t, "macro F1", s.MacroF1, 2.0/3)
	near(t, "weighted F1", s.WeightedF1, 2.0/3)
	near(t, "UA", s.UA, 2.0/3)
	p, err := Score(Confusion{{"x", "x"}: 5, {"y", "y"}: 1})
	if err != nil {
		t.Fatal(err)
	}
	for what, v := range map[string]float64{"accuracy": p.Accuracy, "UA": p.UA, "macro F1": p.MacroF1, "weighted F1": p.WeightedF1} {
		near(t, what, v, 1)
	}
}

func TestScoreAndAgreeOfNothing(t *testing.T) {
	if _, err := Score(Confusion{}); !errors.Is(err, ErrNoMessages) {
		t.Errorf("Score of nothing: %v", err)
	}
	if _, err := Score(Confusion{{"a", "b"}: 0}); !errors.Is(err, ErrNoMessages) {
		t.Errorf("Score of zero counts: %v", err)
	}
	if _, err := Agree(Transitions{}); !errors.Is(err, ErrNoMessages) {
		t.Errorf("Agree of nothing: %v", err)
	}
}

// TestAgreeHandComputed:
//
//	a\b  x  y  z
//	x    4  2  0    a: x 6, y 3, z 1
//	y    0  3  0    b: x 4, y 6, z 0
//	z    0  1  0
//
// po = 7/10; pe = .6·.4 + .3·.6 + .1·0 = .42; kappa = .28/.58;
// shares differ by x -.2, y +.3, z -.1: total variation .3.
func TestAgreeHandComputed(t *testing.T) {
	a, err := Agree(Transitions{{"x", "x"}: 4, {"x", "y"}: 2, {"y", "y"}: 3, {"z", "y"}: 1})
	if err != nil {
		t.Fatal(err)
	}
	if a.Messages != 10 || a.Agreed != 7 || !reflect.DeepEqual(a.Labels, []string{"x", "y", "z"}) {
		t.Fatalf("messages %d agreed %d labels %v", a.Messages, a.Agreed, a.Labels)
	}
	near(t, "agreement", a.Rate, 0.7)
	near(t, "kappa", a.Kappa, 0.28/0.58)
	near(t, "total variation", a.TotalVariation, 0.3)
	want := []LabelShift{
		{Label: "x", CountA: 6, CountB: 4, ShareA: .6, ShareB: .4, Diff: -.2},
		{Label: "y", CountA: 3, CountB: 6, ShareA: .3, ShareB: .6, Diff: .3},
		{Label: "z", CountA: 1, CountB: 0, ShareA: .1, ShareB: 0, Diff: -.1},
	}
	for i, w := range want {
		g := a.Distribution[i]
		if g.Label != w.Label || g.CountA != w.CountA || g.CountB != w.CountB {
			t.Errorf("label %d: %+v, want %+v", i, g, w)
		}
		near(t, w.Label+" share a", g.ShareA, w.ShareA)
		near(t, w.Label+" share b", g.ShareB, w.ShareB)
		near(t, w.Label+" diff", g.Diff, w.Diff)
	}
	if wantM := [][]int{{4, 2, 0}, {0, 3, 0}, {0, 1, 0}}; !reflect.DeepEqual(a.Matrix, wantM) {
		t.Errorf("matrix %v, want %v", a.Matrix, wantM)
	}
}

// TestAgreeEdgeCases: a 50/50 tie in both runs with chance agreement
// (kappa 0), total disagreement (kappa -1), and one label everywhere in
// both runs (kappa taken as 1).
func TestAgreeEdgeCases(t *testing.T) {
	cases := []struct {
		name                  string
		t                     Transitions
		rate, kappa, variance float64
	}{
		{"tie at chance", Transitions{{"x", "x"}: 1, {"x", "y"}: 1, {"y", "x"}: 1, {"y", "y"}: 1}, 0.5, 0, 0},
		{"total disagreement", Transitions{{"x", "y"}: 3, {"y", "x"}: 3}, 0, -1, 0},
		{"one label everywhere", Transitions{{"x", "x"}: 5}, 1, 1, 0},
		{"all moved to another label", Transitions{{"x", "y"}: 4}, 0, 0, 1},
	}
	for _, c := range cases {
		a, err := Agree(c.t)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		near(t, c.name+" agreement", a.Rate, c.rate)
		near(t, c.name+" kappa", a.Kappa, c.kappa)
		near(t, c.name+" total variation", a.TotalVariation, c.variance)
	}
}

// TestAgreeInvariants: on random transitions, the total variation never
// exceeds the share of changed labels, kappa never exceeds 1, and the
// shares of each run add up to 1.
func TestAgreeInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	labels := []string{"anger", "joy", "neutral", "sadness"}
	for range 200 {
		tr := Transitions{}
		for range 1 + rng.IntN(30) {
			tr[Change{labels[rng.IntN(4)], labels[rng.IntN(4)]}] += 1 + rng.IntN(5)
		}
		a, err := Agree(tr)
		if err != nil {
			t.Fatal(err)
		}
		if a.TotalVariation > 1-a.Rate+1e-12 || a.Kappa > 1+1e-12 {
			t.Fatalf("%v: total variation %v, agreement %v, kappa %v", tr, a.TotalVariation, a.Rate, a.Kappa)
		}
		sa, sb := 0.0, 0.0
		for _, d := range a.Distribution {
			sa, sb = sa+d.ShareA, sb+d.ShareB
		}
		near(t, "shares of a", sa, 1)
		near(t, "shares of b", sb, 1)
	}
}
