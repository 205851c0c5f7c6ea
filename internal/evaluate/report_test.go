package evaluate

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/labelmaps"
)

func TestApplyMap(t *testing.T) {
	em, err := labelmaps.Load("emorynlp-ekman")
	if err != nil {
		t.Fatal(err)
	}
	c := Confusion{
		{"Joyful", "joy"}: 3, {"Mad", "joy"}: 1, {"Peaceful", "neutral"}: 2, {"", "fear"}: 4, {"Sad", "sadness"}: 0,
	}
	mapped, without, none, err := ApplyMap(c, em)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Confusion{{"joy", "joy"}: 3, {"anger", "joy"}: 1}); !reflect.DeepEqual(mapped, want) {
		t.Errorf("mapped %v, want %v", mapped, want)
	}
	if without != 4 || none != 2 {
		t.Errorf("without ground truth %d (want 4), no counterpart %d (want 2)", without, none)
	}
	unmapped, without, none, err := ApplyMap(c, nil)
	if err != nil || without != 4 || none != 0 || unmapped[Outcome{"Peaceful", "neutral"}] != 2 || len(unmapped) != 3 {
		t.Errorf("without a map: %v %d %d %v", unmapped, without, none, err)
	}
	if _, _, _, err := ApplyMap(Confusion{{"joy", "joy"}: 1}, em); !errors.Is(err, labelmaps.ErrUnknownLabel) {
		t.Errorf("a label outside the map's source set: %v", err)
	}
}

func sampleRunReport(t *testing.T) RunReport {
	t.Helper()
	s, err := Score(Confusion{{"anger", "anger"}: 3, {"anger", "joy"}: 1, {"joy", "joy"}: 2, {"fear", "joy"}: 1})
	if err != nil {
		t.Fatal(err)
	}
	return RunReport{Run: RunSelector{RunID: "r<1>", Adapter: "emo@2"}, Database: "emoflow", Events: 9, WithoutTruth: 2, Scores: s}
}

func sampleComparison(t *testing.T) ComparisonReport {
	t.Helper()
	a, err := Agree(Transitions{{"anger", "anger"}: 3, {"anger", "joy"}: 2, {"joy", "joy"}: 4})
	if err != nil {
		t.Fatal(err)
	}
	return ComparisonReport{A: RunSelector{RunID: "old", Adapter: "emo@1"}, B: RunSelector{RunID: "new", Adapter: "emo@2"},
		Database: "emoflow", OnlyA: 1, Agreement: a, Changed: 2, Limit: 1,
		ChangedMessages: []ChangedMessage{{MessageID: "m1", Fingerprint: strings.Repeat("ab", 32), A: "anger", B: "joy"}}}
}

func TestTextReports(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleRunReport(t).WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"run r<1> (adapter emo@2)", "messages scored 7 of 9", "accuracy (WA)  0.7143",
		"anger  4        3          3", "true \\ predicted  anger  fear  joy"} {
		if !strings.Contains(out, want) {
			t.Errorf("eval table lacks %q:\n%s", want, out)
		}
	}
	buf.Reset()
	if err := sampleComparison(t).WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	out = buf.String()
	for _, want := range []string{"messages in both 9; only in a 1; only in b 0", "agreement                 0.7778",
		"label changed             2", "(the first 1 by message id; -limit shows more)", "m1          abababababab      anger -> joy"} {
		if !strings.Contains(out, want) {
			t.Errorf("compare table lacks %q:\n%s", want, out)
		}
	}
}

func TestJSONReportsRoundTrip(t *testing.T) {
	r := sampleRunReport(t)
	var buf bytes.Buffer
	if err := WriteJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	var back RunReport
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("round trip changed the report:\n%+v\n%+v", back, r)
	}
	for _, key := range []string{`"macro_f1"`, `"weighted_f1"`, `"ua"`, `"wa"`, `"confusion_matrix"`, `"precision"`, `"recall"`} {
		if !bytes.Contains(buf.Bytes(), []byte(key)) {
			t.Errorf("JSON lacks %s", key)
		}
	}
	c := sampleComparison(t)
	buf.Reset()
	if err := WriteJSON(&buf, c); err != nil {
		t.Fatal(err)
	}
	var backC ComparisonReport
	if err := json.Unmarshal(buf.Bytes(), &backC); err != nil || !reflect.DeepEqual(backC, c) {
		t.Errorf("comparison round trip: %v\n%+v\n%+v", err, backC, c)
	}
}

// externalRef finds anything that would load from elsewhere.
var externalRef = regexp.MustCompile(`(?i)(src\s*=|href\s*=|url\(|@import|<link|<script|https?:)`)

func TestHTMLReportsAreSelfContained(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleRunReport(t).WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	if m := externalRef.FindString(page); m != "" {
		t.Errorf("the eval page refers outside itself: %q", m)
	}
	// One heat-map cell per matrix entry, one bar per label and metric.
	if got := strings.Count(page, "of the row)"); got != 9 {
		t.Errorf("%d heat-map cells, want 9", got)
	}
	if got := strings.Count(page, "<rect"); got != 9+3*3+3 {
		t.Errorf("%d rects, want 9 cells + 9 bars + 3 legend keys", got)
	}
	for _, want := range []string{"<style>", "<svg", "r&lt;1&gt;", "anger → joy: 1 (25.0% of the row)", ">0.7143<"} {
		if !strings.Contains(page, want) {
			t.Errorf("the eval page lacks %q", want)
		}
	}
	if strings.Contains(page, "r<1>") {
		t.Error("the run id is not escaped")
	}
	buf.Reset()
	if err := sampleComparison(t).WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	page = buf.String()
	if m := externalRef.FindString(page); m != "" {
		t.Errorf("the compare page refers outside itself: %q", m)
	}
	for _, want := range []string{"<svg", "Cohen's kappa", "anger → joy: 2 (40.0% of the row)", "<code>m1</code>", "the first 1 by message id"} {
		if !strings.Contains(page, want) {
			t.Errorf("the compare page lacks %q", want)
		}
	}
}

func TestShade(t *testing.T) {
	if got := shade(0); got != "#ffffff" {
		t.Errorf("shade(0) = %s", got)
	}
	if got := shade(1); got != "#184ea0" {
		t.Errorf("shade(1) = %s", got)
	}
	if shade(2) != shade(1) || shade(-1) != shade(0) {
		t.Error("shade does not clamp")
	}
}
