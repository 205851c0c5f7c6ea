package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/stage"
	"github.com/emoflow/emoflow/internal/testenv"
)

// integration is one test's Kafka topics, consumer group and ClickHouse
// database on the real local services, removed when the test ends.
type integration struct {
	brokers    string
	clickhouse string
	topic      string
	deadLetter string
	group      string
	database   string
	conn       driver.Conn
}

const eventsTopicPartitions = 4

func newIntegration(t testing.TB) *integration {
	t.Helper()
	name := testenv.Name(t, "sink")
	in := &integration{
		brokers:    testenv.Kafka(t),
		clickhouse: testenv.ClickHouse(t),
		topic:      name + "_events",
		deadLetter: name + "_dlq",
		group:      name + "_group",
		database:   name,
	}
	conn, err := openClickHouse(clickhouseOptions{Addrs: stage.SplitList(in.clickhouse), User: "default", Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	in.conn = conn
	client := in.kafkaClient()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stage.EnsureTopics(ctx, client, []string{in.topic}, eventsTopicPartitions, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{in.topic, in.deadLetter}}); err != nil {
			t.Logf("delete topics: %v", err)
		}
		if err := in.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+in.database); err != nil {
			t.Logf("drop database: %v", err)
		}
		in.conn.Close()
	})
	return in
}

func (in *integration) kafkaClient() *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(stage.SplitList(in.brokers)...), Timeout: 30 * time.Second}
}

// args are the sink's flags for this test's topics, group and database.
func (in *integration) args(extra ...string) []string {
	return append([]string{
		"-http-addr=127.0.0.1:0",
		"-log-format=text",
		"-kafka-brokers=" + in.brokers,
		"-events-topic=" + in.topic,
		"-dead-letter-topic=" + in.deadLetter,
		"-group-id=" + in.group,
		"-topic-partitions=1",
		"-kafka-session-timeout=6s",
		"-clickhouse-addr=" + in.clickhouse,
		"-clickhouse-database=" + in.database,
		"-batch-size=100",
		"-flush-interval=100ms",
		"-insert-timeout=10s",
		"-drain-timeout=10s",
		"-health-interval=100ms",
	}, extra...)
}

// runningSink is a sink run in-process by service.Run.
type runningSink struct {
	rt     *service.Runtime
	cancel context.CancelFunc
	done   chan error
}

func startSink(t testing.TB, args []string) *runningSink {
	t.Helper()
	logs := &testenv.LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sink log:\n%s", logs.String())
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	s := &runningSink{cancel: cancel, done: make(chan error, 1)}
	started := make(chan *service.Runtime, 1)
	noEnv := func(string) (string, bool) { return "", false }
	go func() {
		s.done <- service.Run(ctx, "sink", &Component{}, ":0", args, noEnv, logs, func(rt *service.Runtime) { started <- rt })
	}()
	select {
	case s.rt = <-started:
	case err := <-s.done:
		t.Fatalf("sink did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("sink did not start within 30s")
	}
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop cancels the sink and returns what service.Run returned; it is safe
// to call more than once.
func (s *runningSink) stop(t testing.TB) error {
	t.Helper()
	s.cancel()
	select {
	case err, ok := <-s.done:
		if ok {
			close(s.done)
		}
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("sink did not stop within 60s")
		return nil
	}
}

func (s *runningSink) readyz(t *testing.T) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + s.rt.Addr + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric returns the value of a counter or gauge of the sink's registry
// (summed over labels).
func (s *runningSink) metric(t testing.TB, name string) float64 {
	t.Helper()
	families, err := s.rt.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// testEvents are n events spread over tenants, adapters, runs, labels and
// minutes, across a month boundary; a third of them classified with two
// messages of context from Redis, a third with one from memory, the rest
// alone (no context fields).
func testEvents(n int) []contract.EmotionEvent {
	labels := []string{"joy", "anger", "sadness", "neutral", "surprise"}
	tenants := []string{"acme", "globex", "initech"}
	adapters := []string{"", "support@v1"}
	runs := []string{contract.LiveRun, "replay-7"}
	events := make([]contract.EmotionEvent, n)
	for i := range events {
		sent := baseTime.Add(time.Duration(i) * 2300 * time.Millisecond)
		label := labels[i%len(labels)]
		probs := map[string]float64{}
		for j, l := range labels {
			probs[l] = float64(j+1) / 100
		}
		probs[label] = 0.9
		events[i] = contract.EmotionEvent{
			MessageID:       fmt.Sprintf("msg-%06d", i),
			ConversationID:  fmt.Sprintf("conv-%d", i%23),
			Tenant:          tenants[i%len(tenants)],
			SpeakerRole:     "customer",
			Language:        "en",
			TextFingerprint: contract.Fingerprint(fmt.Sprint(i)),
			Label:           label,
			Probabilities:   probs,
			TrueLabel:       labels[(i+1)%len(labels)],
			Truncated:       i%11 == 0,
			Model:           "chatglm-tiny@abc",
			Adapter:         adapters[i%len(adapters)],
			LabelSet:        "ls-1",
			RunID:           runs[(i/7)%len(runs)],
			CacheHit:        i%3 == 0,
			SentAt:          sent,
			ReceivedAt:      sent.Add(40 * time.Millisecond),
			ClassifiedAt:    sent.Add(900 * time.Millisecond),
			Timings:         contract.Timings{CacheMs: 1.5, ClassifyMs: float64(i % 50), PipelineMs: 60},
			Source:          contract.Source{Topic: "chat", Partition: i % 4, Offset: int64(i)},
		}
		switch i % 3 {
		case 1:
			events[i].ContextMessages, events[i].ContextSource = 2, "redis"
		case 2:
			events[i].ContextMessages, events[i].ContextSource = 1, "memory"
		}
	}
	return events
}

func (in *integration) newWriter() *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(stage.SplitList(in.brokers)...),
		Topic:        in.topic,
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond,
		BatchSize:    1000,
	}
}

// produce writes events keyed by conversation, like ingest.
func (in *integration) produce(t testing.TB, events []contract.EmotionEvent) {
	t.Helper()
	w := in.newWriter()
	defer w.Close()
	msgs := make([]kafka.Message, len(events))
	for i, ev := range events {
		raw, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		msgs[i] = kafka.Message{Key: []byte(ev.ConversationID), Value: raw}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("produce %d events: %v", len(events), err)
	}
}

// produceSlowly writes events in chunks with a pause between them, so that
// a sink is still consuming while a test breaks something. It returns a
// channel that receives the result when all are written.
func (in *integration) produceSlowly(t *testing.T, events []contract.EmotionEvent, chunk int, pause time.Duration) <-chan error {
	t.Helper()
	w := in.newWriter()
	done := make(chan error, 1)
	go func() {
		defer w.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		for start := 0; start < len(events); start += chunk {
			var msgs []kafka.Message
			for _, ev := range events[start:min(start+chunk, len(events))] {
				raw, _ := json.Marshal(ev)
				msgs = append(msgs, kafka.Message{Key: []byte(ev.ConversationID), Value: raw})
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				done <- fmt.Errorf("produce events %d..: %w", start, err)
				return
			}
			time.Sleep(pause)
		}
		done <- nil
	}()
	return done
}

func (in *integration) queryUint64(t *testing.T, query string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n uint64
	if err := in.conn.QueryRow(ctx, strings.ReplaceAll(query, "${database}", in.database)).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// dedupCount is the number of rows dashboards see; it is 0 while the
// database does not exist yet and -1 while ClickHouse does not answer.
func (in *integration) dedupCount(t *testing.T) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n uint64
	err := in.conn.QueryRow(ctx, "SELECT count() FROM "+in.database+".events_dedup").Scan(&n)
	if err != nil {
		if strings.Contains(err.Error(), "doesn't exist") {
			return 0
		}
		return -1
	}
	return int64(n)
}

func (in *integration) waitForDedupCount(t *testing.T, want int64, timeout time.Duration) {
	t.Helper()
	testenv.WaitUntil(t, timeout, fmt.Sprintf("%d rows in events_dedup", want), func() (bool, string) {
		n := in.dedupCount(t)
		return n == want, fmt.Sprintf("events_dedup has %d rows", n)
	})
}

type minuteKey struct {
	minute                        time.Time
	tenant, adapter, runID, label string
}

// checkPerMinuteCounts compares label_counts_per_minute with the counts of
// the distinct events.
func (in *integration) checkPerMinuteCounts(t *testing.T, events []contract.EmotionEvent) {
	t.Helper()
	want := map[minuteKey]uint64{}
	for _, ev := range events {
		want[minuteKey{ev.SentAt.UTC().Truncate(time.Minute), ev.Tenant, ev.Adapter, ev.RunID, ev.Label}]++
	}
	// ClickHouse makes an insert's rows visible in the events table a
	// moment before the materialized view's rows of the same insert, so
	// the counts may lag the deduplicated view briefly: wait for them.
	var problems []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		problems = in.perMinuteMismatches(t, want)
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// perMinuteMismatches compares label_counts_per_minute with want and
// describes up to six differences.
func (in *integration) perMinuteMismatches(t *testing.T, want map[minuteKey]uint64) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := in.conn.Query(ctx, "SELECT minute, tenant, adapter, run_id, label, messages FROM "+in.database+".label_counts_per_minute")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[minuteKey]uint64{}
	for rows.Next() {
		var k minuteKey
		var n uint64
		if err := rows.Scan(&k.minute, &k.tenant, &k.adapter, &k.runID, &k.label, &n); err != nil {
			t.Fatal(err)
		}
		got[minuteKey{k.minute.UTC(), k.tenant, k.adapter, k.runID, k.label}] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var problems []string
	if len(got) != len(want) {
		problems = append(problems, fmt.Sprintf("label_counts_per_minute has %d groups, want %d", len(got), len(want)))
	}
	for k, n := range want {
		if got[k] != n && len(problems) < 6 {
			problems = append(problems, fmt.Sprintf("label_counts_per_minute %v = %d, want %d", k, got[k], n))
		}
	}
	return problems
}

// checkEachEventOnce checks that events_dedup holds every event exactly
// once, with its fields.
func (in *integration) checkEachEventOnce(t *testing.T, events []contract.EmotionEvent) {
	t.Helper()
	byID := map[string]contract.EmotionEvent{}
	for _, ev := range events {
		byID[ev.MessageID] = ev
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := in.conn.Query(ctx, `SELECT message_id, adapter, run_id, conversation_id, tenant, label, prob_labels, prob_values,
		true_label, truncated, cache_hit, model, sent_at, classified_at, classify_ms, source_topic, source_partition, source_offset,
		event_partition, event_offset, context_messages, context_source FROM `+in.database+`.events_dedup`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	bad := 0
	for rows.Next() {
		var (
			id, adapter, run, conv, tenant, label, trueLabel, model, srcTopic string
			probLabels                                                        []string
			probValues                                                        []float32
			truncated, cacheHit                                               uint8
			sentAt, classifiedAt                                              time.Time
			classifyMs                                                        float32
			srcPartition, eventPartition                                      int32
			srcOffset, eventOffset, contextMessages                           int64
			contextSource                                                     string
		)
		if err := rows.Scan(&id, &adapter, &run, &conv, &tenant, &label, &probLabels, &probValues, &trueLabel, &truncated, &cacheHit,
			&model, &sentAt, &classifiedAt, &classifyMs, &srcTopic, &srcPartition, &srcOffset, &eventPartition, &eventOffset,
			&contextMessages, &contextSource); err != nil {
			t.Fatal(err)
		}
		if seen[id] {
			t.Errorf("events_dedup holds %s twice", id)
		}
		seen[id] = true
		ev, ok := byID[id]
		if !ok {
			t.Errorf("events_dedup holds %s, which was not produced", id)
			continue
		}
		var problems []string
		check := func(what string, ok bool) {
			if !ok {
				problems = append(problems, what)
			}
		}
		check("adapter", adapter == ev.Adapter)
		check("run_id", run == ev.RunID)
		check("conversation_id", conv == ev.ConversationID)
		check("tenant", tenant == ev.Tenant)
		check("label", label == ev.Label)
		check("true_label", trueLabel == ev.TrueLabel)
		check("model", model == ev.Model)
		check("truncated", (truncated == 1) == ev.Truncated)
		check("cache_hit", (cacheHit == 1) == ev.CacheHit)
		check("sent_at", sentAt.Equal(ev.SentAt.Truncate(time.Second)))
		check("classified_at", classifiedAt.Equal(ev.ClassifiedAt.Truncate(time.Second)))
		check("classify_ms", classifyMs == float32(ev.Timings.ClassifyMs))
		check("source", srcTopic == ev.Source.Topic && int(srcPartition) == ev.Source.Partition && srcOffset == ev.Source.Offset)
		check("event position", eventPartition >= 0 && eventPartition < eventsTopicPartitions && eventOffset >= 0)
		check("context", contextMessages == int64(ev.ContextMessages) && contextSource == ev.ContextSource)
		check("probabilities", len(probLabels) == len(ev.Probabilities) && len(probValues) == len(probLabels))
		for i, l := range probLabels {
			if i < len(probValues) {
				check("probability of "+l, probValues[i] == float32(ev.Probabilities[l]))
			}
		}
		if len(problems) > 0 {
			bad++
			if bad <= 5 {
				t.Errorf("row %s differs from the event in: %s", id, strings.Join(problems, ", "))
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(byID) {
		t.Errorf("events_dedup holds %d of the %d events", len(seen), len(byID))
	}
}

// committedToTheEnd reports whether the group's committed offsets reached
// the end of every partition of the topic.
func (in *integration) committedToTheEnd(t *testing.T) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := in.kafkaClient()
	var parts []kafka.OffsetRequest
	var ids []int
	for p := range eventsTopicPartitions {
		parts = append(parts, kafka.LastOffsetOf(p))
		ids = append(ids, p)
	}
	ends, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{in.topic: parts}})
	if err != nil {
		t.Fatal(err)
	}
	committed, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: in.group, Topics: map[string][]int{in.topic: ids}})
	if err != nil {
		t.Fatal(err)
	}
	end := map[int]int64{}
	for _, p := range ends.Topics[in.topic] {
		end[p.Partition] = p.LastOffset
	}
	ok := true
	var state []string
	for _, p := range committed.Topics[in.topic] {
		state = append(state, fmt.Sprintf("p%d committed %d end %d", p.Partition, p.CommittedOffset, end[p.Partition]))
		if p.CommittedOffset != end[p.Partition] && end[p.Partition] > 0 {
			ok = false
		}
	}
	return ok && len(committed.Topics[in.topic]) == eventsTopicPartitions, strings.Join(state, "; ")
}

func TestSinkStoresEachEventOnceEvenWhenDeliveredTwice(t *testing.T) {
	in := newIntegration(t)
	events := testEvents(600)
	in.produce(t, events)
	s := startSink(t, in.args())

	in.waitForDedupCount(t, int64(len(events)), 90*time.Second)
	in.checkEachEventOnce(t, events)
	in.checkPerMinuteCounts(t, events)
	if code, body := s.readyz(t); code != http.StatusOK {
		t.Errorf("/readyz = %d %q, want 200", code, body)
	}

	// A redelivery: the same events once more, as after a crash between an
	// insert and its commit.
	in.produce(t, events)
	testenv.WaitUntil(t, 90*time.Second, "the sink to insert the redelivered events", func() (bool, string) {
		n := s.metric(t, "emoflow_sink_rows_inserted_total")
		return n >= float64(2*len(events)), fmt.Sprintf("rows inserted: %v", n)
	})
	if raw := in.queryUint64(t, "SELECT count() FROM ${database}.events"); raw < uint64(len(events)) {
		t.Errorf("events holds %d rows, want at least %d", raw, len(events))
	}
	if n := in.dedupCount(t); n != int64(len(events)) {
		t.Errorf("events_dedup has %d rows after the redelivery, want %d", n, len(events))
	}
	in.checkEachEventOnce(t, events)
	in.checkPerMinuteCounts(t, events)
	if lag := s.metric(t, "emoflow_sink_consumer_lag"); lag != 0 {
		t.Errorf("consumer lag %v after everything was stored, want 0", lag)
	}

	if err := s.stop(t); err != nil {
		t.Errorf("sink stopped with %v", err)
	}
	if ok, state := in.committedToTheEnd(t); !ok {
		t.Errorf("offsets not committed to the end after shutdown: %s", state)
	}
}

func TestSinkDeadLettersMalformedEventsAndKeepsGoing(t *testing.T) {
	in := newIntegration(t)
	events := testEvents(30)
	noLabel := events[0]
	noLabel.Label = ""
	noLabelRaw, _ := json.Marshal(noLabel)
	type bad struct {
		value  []byte
		reason contract.Reason
	}
	bads := []bad{
		{[]byte("{\"message_id\": "), contract.ReasonMalformedJSON},
		{[]byte{0xc3, 0x28}, contract.ReasonInvalidUTF8},
		{noLabelRaw, contract.ReasonSchema},
		{bytes.Repeat([]byte("x"), 3000), contract.ReasonTooLarge},
	}
	// All with one key, so on one partition, between valid events of that
	// partition: the valid ones after them must be stored too.
	key := []byte("conv-1")
	var msgs []kafka.Message
	for i, b := range bads {
		msgs = append(msgs, kafka.Message{Key: key, Value: b.value, Headers: []kafka.Header{{Key: "trace-id", Value: fmt.Appendf(nil, "t%d", i)}}})
		raw, _ := json.Marshal(events[i])
		msgs = append(msgs, kafka.Message{Key: key, Value: raw})
	}
	for _, ev := range events[len(bads):] {
		raw, _ := json.Marshal(ev)
		msgs = append(msgs, kafka.Message{Key: key, Value: raw})
	}
	w := in.newWriter()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	w.Close()

	// The sink creates the dead-letter topic (with one partition).
	s := startSink(t, in.args("-max-event-bytes=2048"))
	in.waitForDedupCount(t, int64(len(events)), 90*time.Second)
	in.checkEachEventOnce(t, events)

	dlq := kafka.NewReader(kafka.ReaderConfig{Brokers: stage.SplitList(in.brokers), Topic: in.deadLetter, Partition: 0, MaxWait: 200 * time.Millisecond})
	defer dlq.Close()
	for i, b := range bads {
		m, err := dlq.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read dead letter %d: %v", i, err)
		}
		h := headerMap(m.Headers)
		if !bytes.Equal(m.Value, b.value) || !bytes.Equal(m.Key, key) {
			t.Errorf("dead letter %d: key %q value %.30q, want the original %q %.30q", i, m.Key, m.Value, key, b.value)
		}
		if h["trace-id"] != fmt.Sprintf("t%d", i) {
			t.Errorf("dead letter %d: original header lost: %v", i, h)
		}
		if h[contract.HeaderReason] != string(b.reason) || h[contract.HeaderDetail] == "" {
			t.Errorf("dead letter %d: reason %q detail %q, want reason %q", i, h[contract.HeaderReason], h[contract.HeaderDetail], b.reason)
		}
		if h[contract.HeaderSourceTopic] != in.topic {
			t.Errorf("dead letter %d: source topic %q, want %q", i, h[contract.HeaderSourceTopic], in.topic)
		}
	}
	if n := s.metric(t, "emoflow_sink_dead_letters_total"); n != float64(len(bads)) {
		t.Errorf("dead letters metric = %v, want %d", n, len(bads))
	}
	testenv.WaitUntil(t, 30*time.Second, "offsets committed past the dead letters", func() (bool, string) {
		return in.committedToTheEnd(t)
	})
}

func TestSinkIsNotReadyWhileClickHouseIsUnreachable(t *testing.T) {
	// Nothing listens on port 1; migrations cannot run.
	s := startSink(t, []string{"-http-addr=127.0.0.1:0", "-clickhouse-addr=127.0.0.1:1", "-insert-timeout=1s"})
	testenv.WaitUntil(t, 30*time.Second, "/readyz to explain the wait for ClickHouse", func() (bool, string) {
		code, body := s.readyz(t)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "clickhouse migrations"), fmt.Sprintf("%d %q", code, body)
	})
	if err := s.stop(t); err != nil {
		t.Errorf("stopping a sink still waiting for ClickHouse: %v", err)
	}
}

func TestSinkLosesAndDuplicatesNothingWhenClickHouseRestarts(t *testing.T) {
	in := newIntegration(t)
	events := testEvents(4000)
	s := startSink(t, in.args())
	produced := in.produceSlowly(t, events, 100, 50*time.Millisecond)

	testenv.WaitUntil(t, 90*time.Second, "the first rows", func() (bool, string) {
		n := in.dedupCount(t)
		return n > 200, fmt.Sprintf("events_dedup has %d rows", n)
	})
	var sawNotReady sync.WaitGroup
	notReady := make(chan string, 1)
	stopPolling := make(chan struct{})
	sawNotReady.Go(func() {
		for {
			select {
			case <-stopPolling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if code, body := s.readyz(t); code == http.StatusServiceUnavailable && strings.Contains(body, "clickhouse") {
				notReady <- body
				return
			}
		}
	})
	testenv.Services(t, "restart", "clickhouse")
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	in.waitForDedupCount(t, int64(len(events)), 120*time.Second)
	close(stopPolling)
	sawNotReady.Wait()
	select {
	case body := <-notReady:
		t.Logf("while ClickHouse restarted, /readyz said %q", strings.TrimSpace(body))
	default:
		t.Error("/readyz never said the sink was not ready while ClickHouse restarted")
	}
	in.checkEachEventOnce(t, events)
	in.checkPerMinuteCounts(t, events)
	testenv.WaitUntil(t, 30*time.Second, "/readyz to recover", func() (bool, string) {
		code, body := s.readyz(t)
		return code == http.StatusOK, body
	})
	t.Logf("insert errors during the restart: %v; rows inserted: %v (of %d events)",
		s.metric(t, "emoflow_sink_insert_errors_total"), s.metric(t, "emoflow_sink_rows_inserted_total"), len(events))
	if err := s.stop(t); err != nil {
		t.Errorf("sink stopped with %v", err)
	}
}
