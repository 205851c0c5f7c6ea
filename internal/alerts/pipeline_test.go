package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

// fakeSource serves one partition's messages from an offset, then io.EOF.
type fakeSource struct {
	msgs      []kafka.Message
	next      int
	commits   bool // whether CommitMessages records
	committed int64
}

func (s *fakeSource) FetchMessage(ctx context.Context) (kafka.Message, error) {
	if s.next >= len(s.msgs) {
		return kafka.Message{}, io.EOF
	}
	m := s.msgs[s.next]
	s.next++
	return m, nil
}

func (s *fakeSource) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	if s.commits {
		for _, m := range msgs {
			s.committed = max(s.committed, m.Offset+1)
		}
	}
	return nil
}

// fakeStates keeps states as JSON, like Redis; Save fails while failSave.
type fakeStates struct {
	mu       sync.Mutex
	saved    map[convKey][]byte
	failSave bool
}

func (f *fakeStates) Load(_ context.Context, keys []convKey) (map[convKey]*convState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[convKey]*convState{}
	for _, k := range keys {
		st := &convState{}
		if raw, ok := f.saved[k]; ok {
			if err := json.Unmarshal(raw, st); err != nil {
				return nil, err
			}
		}
		out[k] = st
	}
	return out, nil
}

func (f *fakeStates) Save(_ context.Context, states map[convKey]*convState) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failSave {
		return 0, errors.New("redis is down")
	}
	for k, st := range states {
		raw, _ := json.Marshal(st)
		f.saved[k] = raw
	}
	return 0, nil
}

type recordingWriter struct{ msgs []kafka.Message }

func (w *recordingWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	w.msgs = append(w.msgs, msgs...)
	return nil
}

type recordingStore struct{ alerts []Alert }

func (s *recordingStore) Insert(_ context.Context, alerts []Alert) error {
	s.alerts = append(s.alerts, alerts...)
	return nil
}

type harness struct {
	rules       *Rules
	states      *fakeStates
	alerts      *recordingWriter
	deadLetters *recordingWriter
	store       *recordingStore
	m           *metrics
}

func newHarness(t *testing.T) *harness {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &harness{rules: mustRules(t, testRules), states: &fakeStates{saved: map[convKey][]byte{}},
		alerts: &recordingWriter{}, deadLetters: &recordingWriter{}, store: &recordingStore{}, m: m}
}

// run processes src until it is exhausted or ctx ends.
func (h *harness) run(ctx context.Context, src *fakeSource, adapter string) error {
	p := &pipeline{
		cfg: pipelineConfig{BatchSize: 4, FlushInterval: time.Second, StepTimeout: time.Second,
			DrainTimeout: 50 * time.Millisecond, MaxEventBytes: 4096, Adapter: adapter,
			Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }},
		rules: h.rules, src: src, states: h.states, store: h.store, alerts: h.alerts, deadLetters: h.deadLetters,
		m: h.m, health: func(string, error) {}, log: slog.New(slog.DiscardHandler),
		lag: map[topicPartition]*partitionLag{},
	}
	return p.run(ctx)
}

// topicOf turns events into the messages of one events partition.
func topicOf(evs []contract.EmotionEvent) []kafka.Message {
	msgs := make([]kafka.Message, len(evs))
	for i, ev := range evs {
		raw, _ := json.Marshal(ev)
		msgs[i] = kafka.Message{Topic: "events", Partition: 0, Offset: int64(i), HighWaterMark: int64(len(evs)),
			Key: []byte(ev.ConversationID), Value: raw}
	}
	return msgs
}

func TestCrashBeforeTheStateIsSavedRepublishesTheSameAlerts(t *testing.T) {
	h := newHarness(t)
	msgs := topicOf(append(conversation("a", angryTwice.labels...), conversation("b", turningAngry.labels...)...))

	// First run: the state cannot be saved, so nothing is committed; the
	// alerts of the first batches were published and stored already.
	h.states.failSave = true
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	src := &fakeSource{msgs: msgs, commits: true}
	if err := h.run(ctx, src, ""); err == nil {
		t.Fatal("a run that could not save its state returned no error")
	}
	if src.committed != 0 || len(h.alerts.msgs) == 0 {
		t.Fatalf("first run committed %d, published %d alerts; want nothing committed and some alerts", src.committed, len(h.alerts.msgs))
	}
	first := append([]kafka.Message(nil), h.alerts.msgs...)
	lag := h.m.consumerLag.WithLabelValues("events", "0")
	if got := testutil.ToFloat64(lag); got == 0 {
		t.Error("consumer lag is 0 while nothing was committed")
	}

	// The restart gets everything again and must publish the same alerts,
	// byte for byte, then the rest.
	h.states.failSave = false
	src = &fakeSource{msgs: msgs, commits: true}
	if err := h.run(context.Background(), src, ""); !errors.Is(err, io.EOF) {
		t.Fatalf("second run = %v, want the end of the source", err)
	}
	again := h.alerts.msgs[len(first):]
	for i := range first {
		if string(first[i].Value) != string(again[i].Value) {
			t.Fatalf("alert %d after the restart differs:\n%s\n%s", i, first[i].Value, again[i].Value)
		}
	}
	ids := map[string]bool{}
	for _, m := range h.alerts.msgs {
		var a Alert
		_ = json.Unmarshal(m.Value, &a)
		ids[a.AlertID] = true
	}
	// a: both rules twice; b: both rules once.
	if len(ids) != 6 || len(again) != 6 {
		t.Fatalf("%d distinct alerts, %d published by the second run; want 6 and 6", len(ids), len(again))
	}
	if src.committed != int64(len(msgs)) {
		t.Fatalf("committed %d of %d", src.committed, len(msgs))
	}
	if got := testutil.ToFloat64(lag); got != 0 {
		t.Errorf("consumer lag %v after everything was committed, want 0", got)
	}

	// A crash after the save but before the commit: everything comes
	// again, and nothing alerts.
	before := len(h.alerts.msgs)
	src = &fakeSource{msgs: msgs}
	if err := h.run(context.Background(), src, ""); !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if n := len(h.alerts.msgs) - before; n != 0 {
		t.Fatalf("redelivered events after the save published %d alerts", n)
	}
	// The last event of each conversation is at its saved offset
	// (duplicate), the others below it (late).
	dup, late := testutil.ToFloat64(h.m.events.WithLabelValues(string(Duplicate))), testutil.ToFloat64(h.m.events.WithLabelValues(string(Late)))
	if dup != 2 || late != float64(len(msgs)-2) {
		t.Errorf("third run: %v duplicate and %v late events, want 2 and %d", dup, late, len(msgs)-2)
	}
	if want := len(first) + 6; len(h.store.alerts) != want {
		t.Errorf("%d alert rows inserted, want %d (the first run's again; alerts_dedup shows 6)", len(h.store.alerts), want)
	}
}

func TestMalformedReplayAndOtherAdapterEventsDoNotStallOrCount(t *testing.T) {
	h := newHarness(t)
	evs := conversation("c", turningAngry.labels...)
	var msgs []kafka.Message
	for i, m := range topicOf(evs) {
		if i == 3 {
			// Malformed events between the conversation's messages.
			msgs = append(msgs, kafka.Message{Value: []byte(`{"message_id": `)},
				kafka.Message{Value: []byte(`{"message_id": "x", "tenant": "acme", "label": "anger", "run_id": "live", "sent_at": "2026-12-06T10:00:00Z"}`)})
		}
		// A replay's event and another adapter's event of each message:
		// both angry, both filtered out.
		replay, other := evs[i], evs[i]
		replay.RunID, replay.Label = "replay-7", "anger"
		other.Adapter, other.Label = "candidate@3", "anger"
		for _, ev := range []contract.EmotionEvent{replay, other} {
			raw, _ := json.Marshal(ev)
			msgs = append(msgs, kafka.Message{Value: raw})
		}
		msgs = append(msgs, m)
	}
	for i := range msgs {
		msgs[i].Topic, msgs[i].Partition, msgs[i].Offset = "events", 0, int64(i)
	}
	src := &fakeSource{msgs: msgs, commits: true}
	if err := h.run(context.Background(), src, "support"); !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if len(h.alerts.msgs) != 2 {
		t.Fatalf("%d alerts, want 2 (both rules at c-m4)", len(h.alerts.msgs))
	}
	if len(h.deadLetters.msgs) != 2 || src.committed != int64(len(msgs)) {
		t.Fatalf("%d dead letters, committed %d of %d; want 2 and everything", len(h.deadLetters.msgs), src.committed, len(msgs))
	}
	reasons := map[string]bool{}
	for _, m := range h.deadLetters.msgs {
		for _, hd := range m.Headers {
			if hd.Key == contract.HeaderReason {
				reasons[string(hd.Value)] = true
			}
		}
	}
	if !reasons[string(contract.ReasonMalformedJSON)] || !reasons[string(contract.ReasonSchema)] {
		t.Errorf("dead-letter reasons %v, want malformed_json and schema_violation", reasons)
	}
	for outcome, want := range map[string]float64{outcomeNotLive: 8, outcomeOtherAdapter: 8, outcomeDeadLetter: 2, string(Applied): 8} {
		if got := testutil.ToFloat64(h.m.events.WithLabelValues(outcome)); got != want {
			t.Errorf("events{outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
}

func TestAdapterFilter(t *testing.T) {
	for _, tc := range []struct {
		filter, adapter string
		want            bool
	}{
		{"", "anything@1", true},
		{"support", "support@3", true},
		{"support", "support-v2@3", false},
		{"support@3", "support@3", true},
		{"support@3", "support@4", false},
		{"support@3", "support", false},
	} {
		if got := adapterMatches(tc.filter, tc.adapter); got != tc.want {
			t.Errorf("adapterMatches(%q, %q) = %v, want %v", tc.filter, tc.adapter, got, tc.want)
		}
	}
}
