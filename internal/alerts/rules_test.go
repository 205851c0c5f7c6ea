package alerts

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/testenv"
)

// testRules: a share rule over the customer's last 4 messages (alert at 3
// of 4 with at least 3 messages, clear below 1 of 4) and a run rule (3
// negatives after a neutral or positive message).
const testRules = `{
  "rules": [
    {"name": "customer-negative-share", "kind": "share", "role": "customer",
     "labels": ["anger", "disgust", "sadness"], "window": 4, "min_messages": 3,
     "threshold": 0.75, "clear_below": 0.25},
    {"name": "turned-negative", "kind": "run", "role": "customer",
     "negative": ["anger", "disgust", "sadness"], "start": ["neutral", "joy", "surprise"], "length": 3}
  ]
}`

func mustRules(t *testing.T, raw string) *Rules {
	t.Helper()
	r, err := ParseRules([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// conversation makes events of one conversation, one per label, customer
// messages at offsets 0, 2, 4... (other conversations' messages between).
func conversation(conv string, labels ...string) []contract.EmotionEvent {
	start := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	evs := make([]contract.EmotionEvent, len(labels))
	for i, l := range labels {
		evs[i] = contract.EmotionEvent{
			MessageID: fmt.Sprintf("%s-m%d", conv, i), ConversationID: conv, Tenant: "acme",
			SpeakerRole: "customer", Label: l, RunID: contract.LiveRun, Adapter: "support@1",
			SentAt: start.Add(time.Duration(i) * time.Second),
			Source: contract.Source{Topic: "chat.messages", Partition: 1, Offset: int64(2 * i)},
		}
	}
	return evs
}

// fold applies evs to a fresh state and returns the alerts, by rule.
func fold(t *testing.T, r *Rules, evs []contract.EmotionEvent) (map[string][]Alert, *convState) {
	t.Helper()
	st := &convState{}
	out := map[string][]Alert{}
	for i := range evs {
		_, as := r.apply(st, &evs[i])
		for _, a := range as {
			out[a.Rule] = append(out[a.Rule], a)
		}
	}
	return out, st
}

func TestTurningAngryAlertsOnce(t *testing.T) {
	r := mustRules(t, testRules)
	evs := conversation("c1", "neutral", "joy", "anger", "anger", "disgust", "anger", "sadness", "anger")
	got, _ := fold(t, r, evs)
	share := got["customer-negative-share"]
	if len(share) != 1 {
		t.Fatalf("share rule: %d alerts, want 1: %+v", len(share), share)
	}
	// Window after m4: joy, anger, anger, disgust = 3 of 4.
	if a := share[0]; a.MessageID != "c1-m4" || a.MatchingMessages != 3 || a.WindowMessages != 4 || a.Share != 0.75 {
		t.Errorf("share alert = %+v, want message c1-m4 with 3 of 4", a)
	}
	run := got["turned-negative"]
	if len(run) != 1 || run[0].MessageID != "c1-m4" || run[0].RunLength != 3 {
		t.Fatalf("run rule alerts = %+v, want one at c1-m4 with a run of 3", run)
	}
	a := run[0]
	if a.AlertID != ID("acme", "c1", "turned-negative", "c1-m4") || len(a.AlertID) != 32 {
		t.Errorf("alert id %q is not the deterministic id", a.AlertID)
	}
	if a.Source.Offset != 8 || !a.SentAt.Equal(evs[4].SentAt) || a.Tenant != "acme" || a.ConversationID != "c1" || a.ConversationMessages != 5 {
		t.Errorf("alert fields = %+v", a)
	}
}

func TestStayingCalmNeverAlerts(t *testing.T) {
	r := mustRules(t, testRules)
	labels := make([]string, 200)
	for i := range labels {
		labels[i] = []string{"neutral", "joy", "neutral", "anger", "surprise"}[i%5]
	}
	if got, _ := fold(t, r, conversation("calm", labels...)); len(got) != 0 {
		t.Fatalf("calm conversation alerted: %+v", got)
	}
}

func TestAngryCalmAngryAlertsTwice(t *testing.T) {
	r := mustRules(t, testRules)
	evs := conversation("c2",
		"neutral", "anger", "anger", "anger", // both rules fire at m3
		"anger", "neutral", "joy", "neutral", "neutral", // share falls to 0: closed; neutral ended the run
		"anger", "disgust", "sadness", // both fire again at m11 (share 3/4, run 3)
		"anger", "neutral", "anger") // share stays >= 0.25: the episode stays open
	got, _ := fold(t, r, evs)
	for rule, wantAt := range map[string][]string{
		"customer-negative-share": {"c2-m3", "c2-m11"},
		"turned-negative":         {"c2-m3", "c2-m11"},
	} {
		var at []string
		for _, a := range got[rule] {
			at = append(at, a.MessageID)
		}
		if strings.Join(at, ",") != strings.Join(wantAt, ",") {
			t.Errorf("%s alerted at %v, want %v", rule, at, wantAt)
		}
	}
	if a, b := got["turned-negative"][0].AlertID, got["turned-negative"][1].AlertID; a == b {
		t.Error("two episodes share an alert id")
	}
}

func TestHysteresisKeepsOneEpisodeOpen(t *testing.T) {
	r := mustRules(t, testRules)
	// Share oscillates around the threshold (3/4, 2/4, 3/4...) but never
	// falls below clear_below: one episode, one alert.
	evs := conversation("c3", "anger", "anger", "anger", "joy", "anger", "joy", "anger", "joy", "anger", "anger")
	got, _ := fold(t, r, evs)
	if n := len(got["customer-negative-share"]); n != 1 {
		t.Fatalf("share rule alerted %d times, want 1", n)
	}
	// A conversation that is negative from its first message never
	// "turned": the run rule needs a start label first.
	if n := len(got["turned-negative"]); n != 0 {
		t.Fatalf("run rule alerted %d times without a neutral or positive start", n)
	}
}

func TestDuplicateAndLateEventsChangeNothing(t *testing.T) {
	r := mustRules(t, testRules)
	evs := conversation("c4", "neutral", "anger", "anger", "anger", "anger")
	want, wantState := fold(t, r, evs)

	// Every event twice (at-least-once), and a second adapter's event of
	// each message: applied once each.
	var doubled []contract.EmotionEvent
	for _, ev := range evs {
		other := ev
		other.Adapter = "candidate@2"
		doubled = append(doubled, ev, ev, other)
	}
	got, st := fold(t, r, doubled)
	if fmt.Sprint(got) != fmt.Sprint(want) || st.Messages != wantState.Messages {
		t.Fatalf("with duplicates: alerts %v, %d messages; want %v, %d", got, st.Messages, want, wantState.Messages)
	}

	// An event that arrives after a later message of its conversation is
	// late: skipped, so the rule sees m0, m2, m3, m4 (no alert at m3, which
	// it would have with m1).
	st = &convState{}
	var outcomes []Outcome
	var alertsAt []string
	for _, i := range []int{0, 2, 1, 3, 4, 4} {
		o, as := r.apply(st, &evs[i])
		outcomes = append(outcomes, o)
		for _, a := range as {
			alertsAt = append(alertsAt, a.Rule+"@"+a.MessageID)
		}
	}
	if want := "[applied applied late applied applied duplicate]"; fmt.Sprint(outcomes) != want {
		t.Errorf("outcomes = %v, want %s", outcomes, want)
	}
	if want := "customer-negative-share@c4-m4,turned-negative@c4-m4"; strings.Join(alertsAt, ",") != want {
		t.Errorf("alerts at %v, want %s", alertsAt, want)
	}
	if st.Messages != 4 || st.Offset != 8 {
		t.Errorf("state: %d messages, offset %d; want 4 and 8", st.Messages, st.Offset)
	}
}

func TestOtherRolesDoNotCount(t *testing.T) {
	r := mustRules(t, testRules)
	evs := conversation("c5", "neutral", "anger", "anger", "anger", "anger")
	for i := range evs {
		evs[i].SpeakerRole = "agent"
	}
	got, st := fold(t, r, evs)
	if len(got) != 0 {
		t.Fatalf("agent messages alerted a customer rule: %v", got)
	}
	if st.Messages != 5 {
		t.Fatalf("state applied %d messages, want 5 (the position advances)", st.Messages)
	}
}

func TestStateStaysBoundedInALongConversation(t *testing.T) {
	r := mustRules(t, testRules)
	labels := make([]string, 5000)
	for i := range labels {
		labels[i] = []string{"anger", "neutral", "sadness", "joy", "anger", "anger", "anger"}[i%7]
	}
	_, st := fold(t, r, conversation("long", labels...))
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 5000 || len(st.Rules["customer-negative-share"].Window) != 4 || len(raw) > 512 {
		t.Fatalf("after 5000 messages: %d applied, window %d, state %d bytes: %s",
			st.Messages, len(st.Rules["customer-negative-share"].Window), len(raw), raw)
	}
}

func TestRulesFileErrorsNameTheProblem(t *testing.T) {
	for _, tc := range []struct{ name, raw, want string }{
		{"unknown label", `{"rules": [{"name": "a", "kind": "share", "labels": ["anger", "rage"], "window": 3, "threshold": 0.5}]}`, `unknown label "rage"`},
		{"unknown run label", `{"rules": [{"name": "a", "kind": "run", "negative": ["anger"], "start": ["calm"], "length": 2}]}`, `start: unknown label "calm"`},
		{"label outside a custom set", `{"labels": ["pos", "neg"], "rules": [{"name": "a", "kind": "share", "labels": ["anger"], "window": 3, "threshold": 0.5}]}`, `unknown label "anger"`},
		{"unknown role", `{"rules": [{"name": "a", "kind": "share", "role": "client", "labels": ["anger"], "window": 3, "threshold": 0.5}]}`, `unknown role "client"`},
		{"threshold above 1", `{"rules": [{"name": "a", "kind": "share", "labels": ["anger"], "window": 3, "threshold": 1.5}]}`, `threshold 1.5`},
		{"threshold 0", `{"rules": [{"name": "a", "kind": "share", "labels": ["anger"], "window": 3}]}`, `threshold 0`},
		{"clear above threshold", `{"rules": [{"name": "a", "kind": "share", "labels": ["anger"], "window": 3, "threshold": 0.5, "clear_below": 0.6}]}`, `clear_below 0.6`},
		{"window too big", `{"rules": [{"name": "a", "kind": "share", "labels": ["anger"], "window": 100000, "threshold": 0.5}]}`, `window 100000`},
		{"min above window", `{"rules": [{"name": "a", "kind": "share", "labels": ["anger"], "window": 3, "min_messages": 4, "threshold": 0.5}]}`, `min_messages 4`},
		{"unknown kind", `{"rules": [{"name": "a", "kind": "streak"}]}`, `kind "streak"`},
		{"unknown field", `{"rules": [{"name": "a", "kind": "run", "negative": ["anger"], "start": ["joy"], "length": 2, "lenght": 3}]}`, `unknown field "lenght"`},
		{"mixed fields", `{"rules": [{"name": "a", "kind": "run", "negative": ["anger"], "start": ["joy"], "length": 2, "window": 3}]}`, `belong to share rules`},
		{"overlapping sets", `{"rules": [{"name": "a", "kind": "run", "negative": ["anger"], "start": ["anger"], "length": 2}]}`, `both negative and start`},
		{"repeated name", `{"rules": [{"name": "a", "kind": "run", "negative": ["anger"], "start": ["joy"], "length": 2}, {"name": "a", "kind": "run", "negative": ["anger"], "start": ["joy"], "length": 3}]}`, `"a" is used twice`},
		{"bad name", `{"rules": [{"name": "a b", "kind": "run", "negative": ["anger"], "start": ["joy"], "length": 2}]}`, `name must be`},
		{"no rules", `{"rules": []}`, `no rules`},
		{"not JSON", `rules: []`, `decode`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRules([]byte(tc.raw))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestShippedRulesFileIsValid(t *testing.T) {
	r, err := LoadRules(filepath.Join(testenv.RepoRoot(t), "deploy", "alerts", "rules.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Names(), ","); got != "customer-negative-share,customer-turned-negative" {
		t.Fatalf("rules %s", got)
	}
}

func TestFoldIsTheAlerterOffline(t *testing.T) {
	r := mustRules(t, testRules)
	a, b := conversation("a", angryTwice.labels...), conversation("b", turningAngry.labels...)
	// Interleaved, with a duplicate: the alerts of each conversation alone.
	var mixed []contract.EmotionEvent
	for i := range max(len(a), len(b)) {
		if i < len(a) {
			mixed = append(mixed, a[i], a[i])
		}
		if i < len(b) {
			mixed = append(mixed, b[i])
		}
	}
	var got []string
	for _, al := range r.Fold(mixed) {
		got = append(got, al.ConversationID+":"+al.Rule+"@"+al.MessageID)
	}
	want := "a:customer-negative-share@a-m3,a:turned-negative@a-m3,b:customer-negative-share@b-m4,b:turned-negative@b-m4," +
		"a:customer-negative-share@a-m11,a:turned-negative@a-m11"
	if strings.Join(got, ",") != want {
		t.Fatalf("Fold = %v, want %s", got, want)
	}
}
