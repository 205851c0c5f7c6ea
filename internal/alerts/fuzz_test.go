package alerts

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/emoflow/emoflow/internal/contract"
)

// FuzzDecodeAndApply feeds arbitrary values of the events topic to the
// alerter. A refusal is a *contract.InvalidError with a known reason and a
// detail (what the dead letter carries); an accepted event applies to a
// state, a second delivery of it changes nothing, the state survives its
// JSON round trip (what Redis stores) unchanged, and every alert has the
// deterministic id and a storable time.
func FuzzDecodeAndApply(f *testing.F) {
	for _, ev := range conversation("f", "neutral", "anger", "anger", "anger") {
		raw, err := json.Marshal(ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{"message_id":"m","conversation_id":"c","run_id":"live","tenant":"t","label":"anger","sent_at":"2105-12-31T23:59:59Z","source":{"partition":2147483647,"offset":9223372036854775807}}`))
	f.Add([]byte(`{"message_id":"m","conversation_id":"c","run_id":"live","tenant":"t","label":"anger","sent_at":"1969-12-31T23:59:59Z"}`))
	f.Add([]byte(`{"message_id":5}`))
	rules, err := ParseRules([]byte(`{"rules": [
		{"name": "share", "kind": "share", "labels": ["anger"], "window": 1, "threshold": 1},
		{"name": "run", "kind": "run", "negative": ["anger", "sadness"], "start": ["neutral"], "length": 1}]}`))
	if err != nil {
		f.Fatal(err)
	}
	reasons := []contract.Reason{contract.ReasonTooLarge, contract.ReasonInvalidUTF8, contract.ReasonMalformedJSON, contract.ReasonSchema}
	const maxBytes = 4096
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw, maxBytes)
		if err != nil {
			var inv *contract.InvalidError
			if !errors.As(err, &inv) || !slices.Contains(reasons, inv.Reason) || inv.Detail == "" {
				t.Fatalf("error %v (%T) is not an InvalidError with a known reason and a detail", err, err)
			}
			return
		}
		start := &convState{Messages: 1, Topic: ev.Source.Topic, Partition: ev.Source.Partition, Offset: -1,
			Rules: map[string]*ruleState{"run": {Started: true}}}
		st := *start
		outcome, alerts := rules.apply(&st, &ev)
		if outcome != Applied {
			t.Fatalf("first delivery: %s", outcome)
		}
		for _, a := range alerts {
			if a.AlertID != ID(ev.Tenant, ev.ConversationID, a.Rule, ev.MessageID) || a.SentAt.Before(minStorableTime) || a.SentAt.After(maxStorableTime) {
				t.Fatalf("alert %+v", a)
			}
		}
		saved, err := json.Marshal(&st)
		if err != nil {
			t.Fatal(err)
		}
		var loaded convState
		if err := json.Unmarshal(saved, &loaded); err != nil {
			t.Fatal(err)
		}
		again, err := json.Marshal(&loaded)
		if err != nil || string(again) != string(saved) {
			t.Fatalf("state changed in its JSON round trip:\n%s\n%s", saved, again)
		}
		if outcome, alerts := rules.apply(&loaded, &ev); outcome != Duplicate || len(alerts) != 0 {
			t.Fatalf("second delivery: %s with %d alerts", outcome, len(alerts))
		}
	})
}

// FuzzParseRules feeds arbitrary rules files to the parser: it refuses
// them with an error or returns rules that apply to any label.
func FuzzParseRules(f *testing.F) {
	f.Add([]byte(testRules))
	f.Add([]byte(`{"labels": ["a", "b"], "rules": [{"name": "x", "kind": "run", "negative": ["a"], "start": ["b"], "length": 1000}]}`))
	f.Add([]byte(`{"rules": [{"name": "x", "kind": "share", "labels": ["anger"], "window": 1000, "threshold": 1e-300, "clear_below": 0}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ParseRules(raw)
		if err != nil {
			return
		}
		if len(r.rules) == 0 {
			t.Fatal("accepted a file without rules")
		}
		st := &convState{}
		for i, label := range []string{"anger", "neutral", "", "a", "b", "anger"} {
			ev := contract.EmotionEvent{MessageID: "m", Tenant: "t", ConversationID: "c", Label: label, SpeakerRole: "customer",
				Source: contract.Source{Offset: int64(i)}}
			if outcome, _ := r.apply(st, &ev); outcome != Applied {
				t.Fatalf("message %d: %s", i, outcome)
			}
		}
		for name, rs := range st.Rules {
			if len(rs.Window) > MaxWindow {
				t.Fatalf("rule %s keeps %d labels", name, len(rs.Window))
			}
		}
	})
}
