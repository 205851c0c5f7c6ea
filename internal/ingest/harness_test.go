package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/testenv"
)

// harness is one integration test's world: its own topics, group and
// Redis key prefix on the real local services, and a fake classifier.
type harness struct {
	t          testing.TB
	brokers    string
	redisAddr  string
	prefix     string
	input      string
	events     string
	deadLetter string
	group      string
	partitions int
	fake       *fakeClassifier
	admin      *kafka.Client
}

func newHarness(t testing.TB, partitions int) *harness {
	t.Helper()
	h := &harness{
		t:          t,
		brokers:    testenv.Kafka(t),
		redisAddr:  testenv.Redis(t),
		prefix:     testenv.Name(t, "ingest") + ":",
		input:      testenv.Name(t, "chat"),
		events:     testenv.Name(t, "events"),
		deadLetter: testenv.Name(t, "dlq"),
		group:      testenv.Name(t, "group"),
		partitions: partitions,
		fake:       newFakeClassifier(t),
	}
	h.admin = &kafka.Client{Addr: kafka.TCP(strings.Split(h.brokers, ",")...), Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := h.admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: h.input, NumPartitions: partitions, ReplicationFactor: 1},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range resp.Errors {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = h.admin.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{h.input, h.events, h.deadLetter}})
	})
	return h
}

// args are the flags of an ingest instance of this harness.
func (h *harness) args(extra ...string) []string {
	return append([]string{
		"-http-addr", "127.0.0.1:0",
		"-log-format", "text",
		"-kafka-brokers", h.brokers,
		"-input-topic", h.input,
		"-events-topic", h.events,
		"-dead-letter-topic", h.deadLetter,
		"-group-id", h.group,
		"-topic-partitions", "3",
		"-session-timeout", "6s",
		"-rebalance-timeout", "15s",
		"-drain-timeout", "5s",
		"-classifier-urls", h.fake.URL,
		"-redis-addr", h.redisAddr,
		"-redis-key-prefix", h.prefix,
		"-cache-ttl", "10m",
		"-batch-wait", "5ms",
		"-commit-interval", "100ms",
		"-adapters-refresh", "1h",
	}, extra...)
}

// instance is an ingest running in-process.
type instance struct {
	rt     *service.Runtime
	cancel context.CancelFunc
	done   chan error
	logs   *testenv.LogBuffer
}

// start runs ingest in-process until stop (or the test's end).
func (h *harness) start(extra ...string) *instance {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{cancel: cancel, done: make(chan error, 1), logs: &testenv.LogBuffer{}}
	started := make(chan *service.Runtime, 1)
	go func() {
		in.done <- service.Run(ctx, "ingest", &Component{}, ":0", h.args(extra...), noEnv, in.logs,
			func(rt *service.Runtime) { started <- rt })
	}()
	select {
	case in.rt = <-started:
	case err := <-in.done:
		h.t.Fatalf("ingest did not start: %v\n%s", err, in.logs)
	case <-time.After(30 * time.Second):
		h.t.Fatal("ingest did not start")
	}
	h.t.Cleanup(func() {
		in.stopQuietly()
		if h.t.Failed() {
			h.t.Logf("ingest log:\n%s", in.logs.Tail(150))
		}
	})
	return in
}

func noEnv(string) (string, bool) { return "", false }

// stop shuts ingest down gracefully and returns Run's error.
func (in *instance) stop(t testing.TB) error {
	t.Helper()
	in.cancel()
	select {
	case err := <-in.done:
		in.done <- err // for stopQuietly
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("ingest did not stop within 60s")
		return nil
	}
}

func (in *instance) stopQuietly() {
	in.cancel()
	select {
	case err := <-in.done:
		in.done <- err
	case <-time.After(60 * time.Second):
	}
}

// metric sums the values of the metric family name whose labels include
// labels (name=value pairs).
func (in *instance) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return gatherMetric(t, in.rt.Metrics, name, labels...)
}

func gatherMetric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// chat is a valid chat message.
func chat(id, text, adapter string) contract.ChatMessage {
	return contract.ChatMessage{ID: id, ConversationID: "conv-" + id, Tenant: "acme", SpeakerRole: "customer",
		Text: text, SentAt: time.Now().UTC(), Language: "en", Adapter: adapter}
}

// produce writes values to the input topic; message i goes to partition
// i % partitions unless partitionOf says otherwise, with header trace=i.
func (h *harness) produce(values [][]byte, partitionOf func(i int) int) {
	h.t.Helper()
	w := &kafka.Writer{
		Addr:         kafka.TCP(strings.Split(h.brokers, ",")...),
		Topic:        h.input,
		RequiredAcks: kafka.RequireAll,
		BatchSize:    1000,
		BatchTimeout: 5 * time.Millisecond,
		// The partition chosen by the test rides in Message.Partition,
		// which the writer ignores but the balancer sees.
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return m.Partition }),
	}
	defer w.Close()
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		p := i % h.partitions
		if partitionOf != nil {
			p = partitionOf(i)
		}
		msgs[i] = kafka.Message{Partition: p, Key: fmt.Appendf(nil, "key-%d", i), Value: v,
			Headers: []kafka.Header{{Key: "trace", Value: fmt.Appendf(nil, "%d", i)}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		h.t.Fatalf("produce: %v", err)
	}
}

func (h *harness) produceChats(msgs []contract.ChatMessage) {
	h.t.Helper()
	values := make([][]byte, len(msgs))
	for i, m := range msgs {
		v, err := json.Marshal(m)
		if err != nil {
			h.t.Fatal(err)
		}
		values[i] = v
	}
	h.produce(values, nil)
}

// endOffsets returns the end offset of every partition of topic (none for
// a topic that does not exist yet). It retries the errors of a topic that
// was just created (no leader yet).
func (h *harness) endOffsets(topic string) map[int]int64 {
	h.t.Helper()
	var out map[int]int64
	var err error
	for range 60 {
		if out, err = h.tryEndOffsets(topic); err == nil {
			return out
		}
		time.Sleep(500 * time.Millisecond)
	}
	h.t.Fatalf("end offsets of %s: %v", topic, err)
	return nil
}

func (h *harness) tryEndOffsets(topic string) (map[int]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	meta, err := h.admin.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, err
	}
	out := map[int]int64{}
	if len(meta.Topics) != 1 || meta.Topics[0].Error != nil {
		return out, nil
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
	}
	resp, err := h.admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, err
	}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("partition %d: %w", p.Partition, p.Error)
		}
		out[p.Partition] = p.LastOffset
	}
	return out, nil
}

func (h *harness) count(topic string) int64 {
	var n int64
	for _, o := range h.endOffsets(topic) {
		n += o
	}
	return n
}

// committed returns the group's committed offset per input partition (-1
// where none).
func (h *harness) committed() map[int]int64 {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := make([]int, h.partitions)
	for i := range ids {
		ids[i] = i
	}
	resp, err := h.admin.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: h.group, Topics: map[string][]int{h.input: ids}})
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[h.input] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// readAll returns every message of topic, partition by partition.
func (h *harness) readAll(topic string) []kafka.Message {
	h.t.Helper()
	var out []kafka.Message
	for p, end := range h.endOffsets(topic) {
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: strings.Split(h.brokers, ","), Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				cancel()
				r.Close()
				h.t.Fatalf("read %s/%d: %v", topic, p, err)
			}
			out = append(out, m)
			if m.Offset >= end-1 {
				break
			}
		}
		cancel()
		r.Close()
	}
	return out
}

func (h *harness) readEvents() []contract.EmotionEvent {
	h.t.Helper()
	var out []contract.EmotionEvent
	for _, m := range h.readAll(h.events) {
		var ev contract.EmotionEvent
		if err := json.Unmarshal(m.Value, &ev); err != nil {
			h.t.Fatalf("event %s: %v", m.Value, err)
		}
		if string(m.Key) != ev.ConversationID {
			h.t.Errorf("event key %q, want the conversation id %q", m.Key, ev.ConversationID)
		}
		out = append(out, ev)
	}
	return out
}

// waitCount waits until topic holds at least n messages.
func (h *harness) waitCount(topic string, n int64, timeout time.Duration) {
	h.t.Helper()
	waitUntil(h.t, timeout, fmt.Sprintf("%s holds %d messages", topic, n), func() bool { return h.count(topic) >= n })
}
