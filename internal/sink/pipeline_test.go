package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/testenv"
)

// journal is the order in which the fakes were called, shared by them.
type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, fmt.Sprintf(format, args...))
}

func (j *journal) snapshot() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

// fakeSource hands out msgs in order, then blocks until the context ends.
type fakeSource struct {
	j    *journal
	mu   sync.Mutex
	msgs []kafka.Message
	next int
}

func (f *fakeSource) FetchMessage(ctx context.Context) (kafka.Message, error) {
	f.mu.Lock()
	if f.next < len(f.msgs) {
		m := f.msgs[f.next]
		f.next++
		f.mu.Unlock()
		f.j.add("fetch %d/%d", m.Partition, m.Offset)
		return m, nil
	}
	f.mu.Unlock()
	<-ctx.Done()
	return kafka.Message{}, ctx.Err()
}

func (f *fakeSource) fetched() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.next
}

func (f *fakeSource) CommitMessages(_ context.Context, msgs ...kafka.Message) error {
	var parts []string
	for _, m := range msgs {
		parts = append(parts, fmt.Sprintf("%s/%d@%d", m.Topic, m.Partition, m.Offset))
	}
	slices.Sort(parts)
	f.j.add("commit %s", strings.Join(parts, " "))
	return nil
}

// fakeStore fails its first failures inserts, or all when failures < 0.
type fakeStore struct {
	j        *journal
	mu       sync.Mutex
	failures int
	attempts int
}

func (f *fakeStore) Insert(_ context.Context, rows []eventRow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.MessageID
	}
	if f.failures < 0 || f.attempts <= f.failures {
		f.j.add("insert failed %s", strings.Join(ids, ","))
		return errors.New("connection refused")
	}
	f.j.add("insert %s", strings.Join(ids, ","))
	return nil
}

func (f *fakeStore) insertAttempts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts
}

// fakeWriter records the messages of successful writes; it fails its first
// failures writes.
type fakeWriter struct {
	j        *journal
	mu       sync.Mutex
	failures int
	attempts int
	written  []kafka.Message
}

func (f *fakeWriter) WriteMessages(_ context.Context, msgs ...kafka.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.attempts <= f.failures {
		f.j.add("dead letters failed %d", len(msgs))
		return errors.New("broker not available")
	}
	f.j.add("dead letters %d", len(msgs))
	f.written = append(f.written, msgs...)
	return nil
}

// readiness records what the health made of /readyz.
type readiness struct {
	mu      sync.Mutex
	reasons []string
}

func (r *readiness) set(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons = append(r.reasons, reason)
}

func (r *readiness) history() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reasons)
}

type pipelineHarness struct {
	j       *journal
	src     *fakeSource
	store   *fakeStore
	dlq     *fakeWriter
	ready   *readiness
	metrics *metrics
	p       *pipeline
}

func newHarness(t *testing.T, cfg pipelineConfig, msgs []kafka.Message) *pipelineHarness {
	t.Helper()
	j := &journal{}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ready := &readiness{}
	h := newHealth(ready.set, m.clickhouseHealthy)
	h.pinged(nil) // as after the migrations
	h.started()
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 100
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 20 * time.Millisecond
	}
	cfg.InsertTimeout = time.Second
	cfg.KafkaTimeout = time.Second
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = time.Second
	}
	cfg.MaxEventBytes = 4096
	cfg.Backoff = func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }
	ph := &pipelineHarness{
		j: j, src: &fakeSource{j: j, msgs: msgs}, store: &fakeStore{j: j}, dlq: &fakeWriter{j: j},
		ready: ready, metrics: m,
	}
	ph.p = newPipeline(cfg, ph.src, ph.store, ph.dlq, m, h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return ph
}

// runUntil runs the pipeline until done reports true, then cancels it and
// returns what run returned. It fails the test if done never holds.
func (ph *pipelineHarness) runUntil(t *testing.T, done func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	go func() { result <- ph.p.run(ctx) }()
	testenv.WaitUntil(t, 10*time.Second, "the pipeline to reach the expected state", func() (bool, string) {
		return done(), fmt.Sprintf("journal: %q", ph.j.snapshot())
	})
	cancel()
	select {
	case err := <-result:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the pipeline did not return after its context was cancelled")
		return nil
	}
}

func (ph *pipelineHarness) journalHas(entry string) func() bool {
	return func() bool { return slices.Contains(ph.j.snapshot(), entry) }
}

var baseTime = time.Date(2025, 3, 31, 23, 58, 0, 0, time.UTC)

func validEvent(i int) contract.EmotionEvent {
	sent := baseTime.Add(time.Duration(i) * 1500 * time.Millisecond)
	return contract.EmotionEvent{
		MessageID:       fmt.Sprintf("m%d", i),
		ConversationID:  fmt.Sprintf("c%d", i%5),
		Tenant:          "acme",
		SpeakerRole:     "customer",
		Language:        "en",
		TextFingerprint: contract.Fingerprint(fmt.Sprintf("text %d", i)),
		Label:           "joy",
		Probabilities:   map[string]float64{"joy": 0.75, "anger": 0.25},
		Model:           "chatglm-tiny",
		Adapter:         "support@v1",
		LabelSet:        "ls1",
		RunID:           contract.LiveRun,
		SentAt:          sent,
		ReceivedAt:      sent.Add(10 * time.Millisecond),
		ClassifiedAt:    sent.Add(30 * time.Millisecond),
		Timings:         contract.Timings{CacheMs: 0.5, ClassifyMs: 12.25, PipelineMs: 20},
		Source:          contract.Source{Topic: "chat", Partition: i % 3, Offset: int64(1000 + i)},
	}
}

func eventMessage(t *testing.T, partition int, offset int64, ev contract.EmotionEvent) kafka.Message {
	t.Helper()
	raw, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return kafka.Message{Topic: "events", Partition: partition, Offset: offset, Value: raw, HighWaterMark: 100}
}

func TestPipelineBatchesBySizeThenTimeAndCommitsAfterInsert(t *testing.T) {
	var msgs []kafka.Message
	for i := range 7 {
		msgs = append(msgs, eventMessage(t, 0, int64(i), validEvent(i)))
	}
	ph := newHarness(t, pipelineConfig{BatchSize: 3}, msgs)
	if err := ph.runUntil(t, ph.journalHas("commit events/0@6")); err != nil {
		t.Fatalf("run: %v", err)
	}
	want := []string{
		"fetch 0/0", "fetch 0/1", "fetch 0/2", "insert m0,m1,m2", "commit events/0@2",
		"fetch 0/3", "fetch 0/4", "fetch 0/5", "insert m3,m4,m5", "commit events/0@5",
		// The last batch is flushed by the flush interval, not by its size.
		"fetch 0/6", "insert m6", "commit events/0@6",
	}
	if got := ph.j.snapshot(); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
	if got := testutil.ToFloat64(ph.metrics.rowsInserted); got != 7 {
		t.Errorf("rows inserted metric = %v, want 7", got)
	}
	if got := testutil.CollectAndCount(ph.metrics.batchRows); got != 1 {
		t.Errorf("batch size histogram series = %d, want 1", got)
	}
}

func TestPipelineCommitsHighestOffsetOfEachPartition(t *testing.T) {
	msgs := []kafka.Message{
		eventMessage(t, 0, 10, validEvent(0)),
		eventMessage(t, 1, 4, validEvent(1)),
		eventMessage(t, 0, 11, validEvent(2)),
		eventMessage(t, 2, 7, validEvent(3)),
		eventMessage(t, 1, 5, validEvent(4)),
	}
	ph := newHarness(t, pipelineConfig{BatchSize: 5}, msgs)
	want := "commit events/0@11 events/1@5 events/2@7"
	if err := ph.runUntil(t, ph.journalHas(want)); err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := ph.j.snapshot(); got[len(got)-1] != want || got[len(got)-2] != "insert m0,m1,m2,m3,m4" {
		t.Errorf("calls = %q, want one insert of all five, then %q", got, want)
	}
	// High-water mark 100 on partition 0, next offset to commit 12.
	if got := testutil.ToFloat64(ph.metrics.consumerLag.WithLabelValues("events", "0")); got != 88 {
		t.Errorf("consumer lag of partition 0 = %v, want 88", got)
	}
}

func TestPipelineRetriesTheSameBatchWithoutFetchingWhileTheStoreFails(t *testing.T) {
	var msgs []kafka.Message
	for i := range 4 {
		msgs = append(msgs, eventMessage(t, 0, int64(i), validEvent(i)))
	}
	ph := newHarness(t, pipelineConfig{BatchSize: 2}, msgs)
	ph.store.failures = 3
	if err := ph.runUntil(t, ph.journalHas("commit events/0@3")); err != nil {
		t.Fatalf("run: %v", err)
	}
	want := []string{
		"fetch 0/0", "fetch 0/1",
		"insert failed m0,m1", "insert failed m0,m1", "insert failed m0,m1", "insert m0,m1",
		"commit events/0@1",
		"fetch 0/2", "fetch 0/3", "insert m2,m3", "commit events/0@3",
	}
	if got := ph.j.snapshot(); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
	if got := testutil.ToFloat64(ph.metrics.insertErrors); got != 3 {
		t.Errorf("insert errors metric = %v, want 3", got)
	}
	history := ph.ready.history()
	sawNotReady := slices.ContainsFunc(history, func(r string) bool {
		return strings.HasPrefix(r, "clickhouse inserts failing")
	})
	if !sawNotReady || history[len(history)-1] != "" {
		t.Errorf("readiness history %q: want not ready while inserts fail, ready at the end", history)
	}
	if got := testutil.ToFloat64(ph.metrics.clickhouseHealthy); got != 1 {
		t.Errorf("clickhouse up gauge = %v after recovery, want 1", got)
	}
}

func TestPipelineSendsMalformedEventsToTheDeadLetterTopicAndMovesOn(t *testing.T) {
	noID := validEvent(2)
	noID.MessageID = ""
	noIDRaw, _ := json.Marshal(noID)
	header := kafka.Header{Key: "trace", Value: []byte("t-1")}
	msgs := []kafka.Message{
		eventMessage(t, 0, 0, validEvent(0)),
		{Topic: "events", Partition: 0, Offset: 1, Key: []byte("k1"), Value: []byte("{not json"), Headers: []kafka.Header{header}},
		eventMessage(t, 0, 2, validEvent(1)),
		{Topic: "events", Partition: 0, Offset: 3, Value: []byte{0xff, 0xfe}},
		{Topic: "events", Partition: 0, Offset: 4, Value: noIDRaw},
		{Topic: "events", Partition: 0, Offset: 5, Value: []byte(`"` + strings.Repeat("x", 5000) + `"`)},
		eventMessage(t, 0, 6, validEvent(3)),
	}
	ph := newHarness(t, pipelineConfig{BatchSize: 7}, msgs)
	// Both the dead-letter write and the insert fail at first: the retry of
	// the insert must not write the dead letters again.
	ph.dlq.failures = 2
	ph.store.failures = 1
	if err := ph.runUntil(t, ph.journalHas("commit events/0@6")); err != nil {
		t.Fatalf("run: %v", err)
	}
	want := []string{
		"fetch 0/0", "fetch 0/1", "fetch 0/2", "fetch 0/3", "fetch 0/4", "fetch 0/5", "fetch 0/6",
		"dead letters failed 4", "dead letters failed 4", "dead letters 4",
		"insert failed m0,m1,m3", "insert m0,m1,m3",
		"commit events/0@6",
	}
	if got := ph.j.snapshot(); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}

	wantReasons := []contract.Reason{contract.ReasonMalformedJSON, contract.ReasonInvalidUTF8, contract.ReasonSchema, contract.ReasonTooLarge}
	if len(ph.dlq.written) != len(wantReasons) {
		t.Fatalf("dead letters written: %d, want %d", len(ph.dlq.written), len(wantReasons))
	}
	for i, dl := range ph.dlq.written {
		src := msgs[[]int{1, 3, 4, 5}[i]]
		if string(dl.Value) != string(src.Value) || string(dl.Key) != string(src.Key) {
			t.Errorf("dead letter %d: key %q value %.20q, want the original %q %.20q", i, dl.Key, dl.Value, src.Key, src.Value)
		}
		h := headerMap(dl.Headers)
		if got := h[contract.HeaderReason]; got != string(wantReasons[i]) {
			t.Errorf("dead letter %d: reason %q, want %q", i, got, wantReasons[i])
		}
		if h[contract.HeaderDetail] == "" {
			t.Errorf("dead letter %d: no %s header", i, contract.HeaderDetail)
		}
		if h[contract.HeaderSourceTopic] != "events" || h[contract.HeaderSourcePartition] != "0" ||
			h[contract.HeaderSourceOffset] != fmt.Sprint(src.Offset) {
			t.Errorf("dead letter %d: source headers %v, want events/0@%d", i, h, src.Offset)
		}
		if _, err := time.Parse(time.RFC3339Nano, h[contract.HeaderRejectedAt]); err != nil {
			t.Errorf("dead letter %d: %s header: %v", i, contract.HeaderRejectedAt, err)
		}
	}
	if h := ph.dlq.written[0].Headers; len(h) == 0 || h[0].Key != header.Key || string(h[0].Value) != string(header.Value) {
		t.Errorf("dead letter 0 headers %v: want the original header first", h)
	}
	for _, r := range wantReasons {
		if got := testutil.ToFloat64(ph.metrics.deadLetters.WithLabelValues(string(r))); got != 1 {
			t.Errorf("dead letters metric for %s = %v, want 1", r, got)
		}
	}
}

func TestPipelineStoresAndCommitsTheBatchInHandOnShutdown(t *testing.T) {
	var msgs []kafka.Message
	for i := range 5 {
		msgs = append(msgs, eventMessage(t, 1, int64(20+i), validEvent(i)))
	}
	// Neither the size nor the time trigger fires before the shutdown.
	ph := newHarness(t, pipelineConfig{BatchSize: 100, FlushInterval: time.Hour}, msgs)
	err := ph.runUntil(t, func() bool { return ph.src.fetched() == 5 })
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	want := []string{"insert m0,m1,m2,m3,m4", "commit events/1@24"}
	if got := ph.j.snapshot(); !slices.Equal(got[5:], want) {
		t.Errorf("calls after the fetches: %q, want %q", got[5:], want)
	}
}

func TestPipelineShutdownWithTheStoreDownCommitsNothing(t *testing.T) {
	msgs := []kafka.Message{eventMessage(t, 0, 0, validEvent(0)), eventMessage(t, 0, 1, validEvent(1))}
	ph := newHarness(t, pipelineConfig{BatchSize: 2, DrainTimeout: 50 * time.Millisecond}, msgs)
	ph.store.failures = -1
	err := ph.runUntil(t, func() bool { return ph.store.insertAttempts() >= 2 })
	if err == nil || !strings.Contains(err.Error(), "delivered again") {
		t.Errorf("run returned %v, want an error saying the batch will be delivered again", err)
	}
	for _, e := range ph.j.snapshot() {
		if strings.HasPrefix(e, "commit") {
			t.Errorf("committed %q although nothing was stored", e)
		}
	}
	history := ph.ready.history()
	if history[len(history)-1] != "shutting down" {
		t.Errorf("readiness history %q: want not ready while shutting down", history)
	}
}

func headerMap(hs []kafka.Header) map[string]string {
	m := map[string]string{}
	for _, h := range hs {
		m[h.Key] = string(h.Value)
	}
	return m
}

// TestPipelineStoresACaughtUpBatchAfterIdleFlush: once the newest message
// is its partition's last and nothing more arrives for IdleFlush, the batch
// is stored without waiting out FlushInterval (an hour here).
func TestPipelineStoresACaughtUpBatchAfterIdleFlush(t *testing.T) {
	var msgs []kafka.Message
	for i := range 3 {
		m := eventMessage(t, 0, int64(i), validEvent(i))
		m.HighWaterMark = 3
		msgs = append(msgs, m)
	}
	ph := newHarness(t, pipelineConfig{FlushInterval: time.Hour, IdleFlush: 20 * time.Millisecond}, msgs)
	if err := ph.runUntil(t, ph.journalHas("commit events/0@2")); err != nil {
		t.Fatalf("run: %v", err)
	}
	want := []string{"fetch 0/0", "fetch 0/1", "fetch 0/2", "insert m0,m1,m2", "commit events/0@2"}
	if got := ph.j.snapshot(); !slices.Equal(got, want) {
		t.Errorf("calls:\n got %q\nwant %q", got, want)
	}
	if got := testutil.ToFloat64(ph.metrics.idleFlushes); got != 1 {
		t.Errorf("idle flushes = %v, want 1", got)
	}
}

// TestPipelineWhileLaggingWaitsForTheFlushInterval: a batch whose newest
// message is behind its partition's high-water mark (or whose mark is
// unknown) is not cut short by IdleFlush, however long the fetch waits.
func TestPipelineWhileLaggingWaitsForTheFlushInterval(t *testing.T) {
	for _, hwm := range []int64{100, 0} {
		var msgs []kafka.Message
		for i := range 3 {
			m := eventMessage(t, 0, int64(i), validEvent(i))
			m.HighWaterMark = hwm
			msgs = append(msgs, m)
		}
		ph := newHarness(t, pipelineConfig{FlushInterval: 300 * time.Millisecond, IdleFlush: time.Millisecond}, msgs)
		if err := ph.runUntil(t, ph.journalHas("commit events/0@2")); err != nil {
			t.Fatalf("run: %v", err)
		}
		if got := testutil.ToFloat64(ph.metrics.idleFlushes); got != 0 {
			t.Errorf("high-water mark %d: idle flushes = %v, want 0 (the batch waits for its flush interval)", hwm, got)
		}
	}
}
