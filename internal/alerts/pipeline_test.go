package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/stage"
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

// fakeStates keeps states as JSON, like Redis. While failClear, a save
// that would empty a stored outbox fails.
type fakeStates struct {
	mu        sync.Mutex
	saved     map[convKey][]byte
	failClear bool
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
	if f.failClear {
		for k, st := range states {
			var stored convState
			_ = json.Unmarshal(f.saved[k], &stored)
			if len(stored.Outbox) > 0 && len(st.Outbox) == 0 {
				return 0, errors.New("redis is down")
			}
		}
	}
	for k, st := range states {
		raw, _ := json.Marshal(st)
		f.saved[k] = raw
	}
	return 0, nil
}

// recordingWriter records what it writes; while failing, it fails.
type recordingWriter struct {
	msgs    []kafka.Message
	failing bool
}

func (w *recordingWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	if w.failing {
		return errors.New("kafka is down")
	}
	w.msgs = append(w.msgs, msgs...)
	return nil
}

// published returns the alerts written, decoded, and their raw values.
func (w *recordingWriter) published(t *testing.T) ([]Alert, []string) {
	t.Helper()
	var out []Alert
	var raw []string
	for _, m := range w.msgs {
		var a Alert
		if err := json.Unmarshal(m.Value, &a); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
		raw = append(raw, string(m.Value))
	}
	return out, raw
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

func (h *harness) pipeline(src stage.MessageSource, adapter string, window time.Duration) *pipeline {
	return newPipeline(pipelineConfig{BatchSize: 4, FlushInterval: time.Second, StepTimeout: time.Second,
		DrainTimeout: 50 * time.Millisecond, MaxEventBytes: 4096, Adapter: adapter, ReorderWindow: window,
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }},
		h.rules, src, h.states, h.store, h.alerts, h.deadLetters, h.m, func(string, error) {}, slog.New(slog.DiscardHandler))
}

// run processes src until it is exhausted or ctx ends, without a reorder
// window.
func (h *harness) run(ctx context.Context, src *fakeSource, adapter string) error {
	return h.pipeline(src, adapter, 0).run(ctx)
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

func TestCrashBetweenTheSaveAndThePublishPublishesTheSavedAlerts(t *testing.T) {
	h := newHarness(t)
	msgs := topicOf(append(conversation("a", angryTwice.labels...), conversation("b", turningAngry.labels...)...))

	// First run: the first batch (a-m0..a-m3) opens two episodes at a-m3;
	// the state is saved with them, then publishing fails until the
	// alerter stops: nothing published, nothing committed.
	h.alerts.failing = true
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	src := &fakeSource{msgs: msgs, commits: true}
	if err := h.run(ctx, src, ""); err == nil {
		t.Fatal("a run that could not publish returned no error")
	}
	var st convState
	_ = json.Unmarshal(h.states.saved[convKey{"acme", "a"}], &st)
	if src.committed != 0 || len(h.alerts.msgs) != 0 || len(st.Outbox) != 2 || st.Offset != 6 {
		t.Fatalf("first run: committed %d, published %d, saved state at %d with %d alerts in its outbox; want 0, 0, 6, 2",
			src.committed, len(h.alerts.msgs), st.Offset, len(st.Outbox))
	}
	lag := h.m.consumerLag.WithLabelValues("events", "0")
	if got := testutil.ToFloat64(lag); got == 0 {
		t.Error("consumer lag is 0 while nothing was committed")
	}

	// The restart gets everything again: the first batch's events change
	// nothing, but the saved alerts are published; then the rest.
	h.alerts.failing = false
	src = &fakeSource{msgs: msgs, commits: true}
	if err := h.run(context.Background(), src, ""); !errors.Is(err, io.EOF) {
		t.Fatalf("second run = %v, want the end of the source", err)
	}
	alerts, _ := h.alerts.published(t)
	var at []string
	for _, a := range alerts {
		at = append(at, a.Rule+"@"+a.MessageID)
	}
	want := "customer-negative-share@a-m3,turned-negative@a-m3,customer-negative-share@a-m11,turned-negative@a-m11," +
		"customer-negative-share@b-m4,turned-negative@b-m4"
	if strings.Join(at, ",") != want {
		t.Fatalf("published %v, want each alert once: %s", at, want)
	}
	if src.committed != int64(len(msgs)) {
		t.Fatalf("committed %d of %d", src.committed, len(msgs))
	}
	if got := testutil.ToFloat64(lag); got != 0 {
		t.Errorf("consumer lag %v after everything was committed, want 0", got)
	}
	for k, raw := range h.states.saved {
		var st convState
		if err := json.Unmarshal(raw, &st); err != nil || len(st.Outbox) != 0 {
			t.Errorf("state of %v keeps an outbox after its alerts were published: %s", k, raw)
		}
	}

	// A crash after the commit failed: everything comes again, and nothing
	// alerts.
	before := len(h.alerts.msgs)
	src = &fakeSource{msgs: msgs}
	if err := h.run(context.Background(), src, ""); !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if n := len(h.alerts.msgs) - before; n != 0 {
		t.Fatalf("redelivered events after the save published %d alerts", n)
	}
}

func TestCrashBetweenThePublishAndTheClearRepublishesTheSameAlerts(t *testing.T) {
	h := newHarness(t)
	msgs := topicOf(append(conversation("a", angryTwice.labels...), conversation("b", turningAngry.labels...)...))
	h.states.failClear = true
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	src := &fakeSource{msgs: msgs, commits: true}
	if err := h.run(ctx, src, ""); err == nil {
		t.Fatal("a run that could not clear its outbox returned no error")
	}
	_, first := h.alerts.published(t)
	if len(first) != 2 || src.committed != 0 {
		t.Fatalf("first run published %d alerts and committed %d; want 2 and nothing", len(first), src.committed)
	}
	h.states.failClear = false
	src = &fakeSource{msgs: msgs, commits: true}
	if err := h.run(context.Background(), src, ""); !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	alerts, raw := h.alerts.published(t)
	ids := map[string]bool{}
	for _, a := range alerts {
		ids[a.AlertID] = true
	}
	// The two alerts again, byte for byte, then the four others.
	if len(raw) != 8 || raw[2] != first[0] || raw[3] != first[1] || len(ids) != 6 {
		t.Fatalf("published %d alerts (%d distinct); want the first two again, then the other four", len(raw), len(ids))
	}
	if len(h.store.alerts) != 8 {
		t.Errorf("%d alert rows inserted, want 8 (two twice; alerts_dedup shows 6)", len(h.store.alerts))
	}
}

// clockSource serves messages and moves a fake clock on at each fetch.
type clockSource struct {
	fakeSource
	now  *time.Time
	step time.Duration
}

func (s *clockSource) FetchMessage(ctx context.Context) (kafka.Message, error) {
	*s.now = s.now.Add(s.step)
	return s.fakeSource.FetchMessage(ctx)
}

func TestReorderWindowAppliesLateEventsInMessageOrder(t *testing.T) {
	evs := conversation("t", turningAngry.labels...)
	// m4's event is published before m3's: in message order the run rule
	// alerts at m4; with m3 skipped as late, at m5 instead.
	evs[3], evs[4] = evs[4], evs[3]
	var filler []contract.EmotionEvent
	for _, c := range []string{"x", "y", "z"} {
		filler = append(filler, conversation(c, stayingCalm.labels...)...)
	}
	// t-m4's event ends a fetch of 4, t-m3's starts the next.
	all := append(append(filler[:8:8], evs...), filler[8:]...)
	run := func(window time.Duration) ([]string, *harness) {
		h := newHarness(t)
		now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
		src := &clockSource{fakeSource: fakeSource{msgs: topicOf(all), commits: true}, now: &now, step: 10 * time.Millisecond}
		p := h.pipeline(src, "", window)
		p.now = func() time.Time { return now }
		if err := p.run(context.Background()); !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if src.committed != int64(len(all)) {
			t.Fatalf("committed %d of %d", src.committed, len(all))
		}
		alerts, _ := h.alerts.published(t)
		var at []string
		for _, a := range alerts {
			at = append(at, a.Rule+"@"+a.MessageID)
		}
		return at, h
	}
	// 50ms is five fetches: m3's event (fetched one after m4's) is pulled
	// in with it.
	at, h := run(50 * time.Millisecond)
	if want := "customer-negative-share@t-m4,turned-negative@t-m4"; strings.Join(at, ",") != want {
		t.Errorf("with a window: alerts %v, want %s", at, want)
	}
	if got := testutil.ToFloat64(h.m.reordered); got != 1 {
		t.Errorf("reordered events %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.m.events.WithLabelValues(string(Late))); got != 0 {
		t.Errorf("late events %v with a window, want 0", got)
	}
	at, h = run(0)
	if want := "customer-negative-share@t-m5,turned-negative@t-m5"; strings.Join(at, ",") != want {
		t.Errorf("without a window: alerts %v, want %s", at, want)
	}
	if got := testutil.ToFloat64(h.m.events.WithLabelValues(string(Late))); got != 1 {
		t.Errorf("late events %v without a window, want 1", got)
	}
}

func TestTakeReadyPullsInLateEventsAndCommitsBelowThePending(t *testing.T) {
	h := newHarness(t)
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	p := h.pipeline(&fakeSource{}, "", time.Second)
	p.now = func() time.Time { return now }
	evs := conversation("c", "neutral", "joy", "anger", "anger")
	other := conversation("o", "neutral", "joy")
	// Fetched: c-m1 at 0s, o-m0 at 0.5s, c-m0 (late) at 0.6s, o-m1 and c-m3 at 0.9s.
	fetch := []struct {
		at time.Duration
		ev contract.EmotionEvent
	}{{0, evs[1]}, {500 * time.Millisecond, other[0]}, {600 * time.Millisecond, evs[0]}, {900 * time.Millisecond, other[1]}, {900 * time.Millisecond, evs[3]}}
	start := now
	for i, f := range fetch {
		now = start.Add(f.at)
		raw, _ := json.Marshal(f.ev)
		p.add(kafka.Message{Topic: "events", Partition: 0, Offset: int64(10 + i), Value: raw})
	}
	now = start.Add(time.Second)
	ready := p.takeReady(false)
	var got []string
	for _, e := range ready {
		got = append(got, e.ev.MessageID)
	}
	// c-m1's wait is over; c-m0 comes with it; o-m0 and the others wait.
	if strings.Join(got, ",") != "c-m1,c-m0" || len(p.pending) != 3 {
		t.Fatalf("ready %v with %d pending; want c-m1,c-m0 and 3", got, len(p.pending))
	}
	b := p.prepare(ready)
	if b.events[0].ev.MessageID != "c-m0" || b.commit[topicPartition{Topic: "events", Partition: 0}] != 11 {
		t.Fatalf("applies %s first and commits up to %d; want c-m0 and 11 (o-m0 at offset 11 is pending)",
			b.events[0].ev.MessageID, b.commit[topicPartition{Topic: "events", Partition: 0}])
	}
	if len(p.takeReady(true)) != 3 || len(p.pending) != 0 {
		t.Fatal("a final round does not take everything")
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

func TestAFullPendingListAppliesItsOldest(t *testing.T) {
	h := newHarness(t)
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	p := h.pipeline(&fakeSource{}, "", time.Hour)
	p.cfg.MaxPending = 10
	p.now = func() time.Time { return now }
	for i, ev := range conversation("c", stayingCalm.labels[:10]...) {
		raw, _ := json.Marshal(ev)
		p.add(kafka.Message{Topic: "events", Partition: 0, Offset: int64(i), Value: raw})
	}
	if err := p.fetch(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Nothing waited an hour, but the list is full: the oldest batch goes.
	if ready := p.takeReady(false); len(ready) != 4 || ready[0].msg.Offset != 0 || len(p.pending) != 6 {
		t.Fatalf("%d ready (first at %d), %d pending; want the oldest 4 and 6", len(ready), ready[0].msg.Offset, len(p.pending))
	}
}
