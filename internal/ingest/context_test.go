package ingest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/testenv"
)

// convMessage is a test message at a partition offset.
func convMessage(topic string, partition int, offset int64, conv, role, text string) *work {
	return &work{msg: kafka.Message{Topic: topic, Partition: partition, Offset: offset},
		chat: contract.ChatMessage{ID: fmt.Sprintf("%s-%d", conv, offset), ConversationID: conv, Tenant: "acme", SpeakerRole: role, Text: text}}
}

func turnTexts(ts []classifyapi.Turn) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Role+":"+t.Text)
	}
	return out
}

func newTestWindows(t *testing.T, redisAddr, prefix string, k, size int) *contextWindows {
	t.Helper()
	m := newMetrics(prometheus.NewRegistry())
	cache := newResultCache(redisAddr, time.Hour, 300*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)), m)
	t.Cleanup(func() { cache.close() })
	cfg := &Config{ContextMessages: k, ContextWindow: size, ContextTTL: time.Hour, ContextKeyPrefix: prefix, ContextLocalConversations: 100}
	w, err := newContextWindows(cfg, cache, m)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestContextWindows: contexts follow offsets, not batches; a restarted
// ingest (no memory) redelivered a range gets the same contexts from
// Redis; windows are capped; an evicted window restarts the context; with
// Redis down the process's own windows stand in.
func TestContextWindows(t *testing.T) {
	redisAddr := testenv.Redis(t)
	prefix := testenv.Name(t, "ctx") + ":"
	topic := "chat"
	// Two conversations interleaved on partition 0, one on partition 1.
	var all []*work
	for i := range 12 {
		conv, role := "a", "customer"
		if i%3 == 1 {
			conv, role = "b", "agent"
		}
		all = append(all, convMessage(topic, 0, int64(100+i), conv, role, fmt.Sprintf("text %d", i)))
	}
	all = append(all, convMessage(topic, 1, 5, "a", "customer", "same conversation id, other partition"))
	want := map[int64][]string{}
	for i, w := range all[:12] {
		var prev []string
		for _, p := range all[:i] {
			if p.chat.ConversationID == w.chat.ConversationID {
				prev = append(prev, p.chat.SpeakerRole+":"+p.chat.Text)
			}
		}
		want[w.msg.Offset] = prev[max(0, len(prev)-2):]
	}

	// Exactness after a redelivery needs cap >= k + the messages of the
	// conversation past the redelivery point: a has 4 past offset 106.
	first := newTestWindows(t, redisAddr, prefix, 2, 6)
	for _, batch := range [][]*work{all[:5], all[5:6], all[6:13]} {
		first.assign(t.Context(), batch)
	}
	for _, w := range all[:12] {
		if got := turnTexts(w.context); !slices.Equal(got, want[w.msg.Offset]) || w.contextSource != contextFromRedis {
			t.Errorf("offset %d: context %q from %s, want %q from redis", w.msg.Offset, got, w.contextSource, want[w.msg.Offset])
		}
	}
	if got := all[12].context; len(got) != 0 {
		t.Errorf("a conversation on another partition continued the context: %q", turnTexts(got))
	}

	// A restarted ingest redelivered offsets 106-111 in other batches.
	again := newTestWindows(t, redisAddr, prefix, 2, 6)
	var redelivered []*work
	for _, w := range all[6:12] {
		redelivered = append(redelivered, convMessage(topic, 0, w.msg.Offset, w.chat.ConversationID, w.chat.SpeakerRole, w.chat.Text))
	}
	again.assign(t.Context(), redelivered[:1])
	again.assign(t.Context(), redelivered[1:])
	for _, w := range redelivered {
		if got := turnTexts(w.context); !slices.Equal(got, want[w.msg.Offset]) {
			t.Errorf("redelivered offset %d: context %q, want %q", w.msg.Offset, got, want[w.msg.Offset])
		}
	}

	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	keyA := prefix + topic + ":0:acme:a"
	if n, err := rdb.ZCard(t.Context(), keyA).Result(); err != nil || n != 6 {
		t.Fatalf("window a holds %d entries (%v), want the cap of 6 (of its 8 messages)", n, err)
	}
	if ttl, err := rdb.TTL(t.Context(), keyA).Result(); err != nil || ttl <= 0 || ttl > time.Hour {
		t.Fatalf("window a TTL %v (%v)", ttl, err)
	}

	// An evicted window: the next message has no context from Redis, but
	// the messages of its own batch still see each other.
	if err := rdb.Del(t.Context(), keyA).Err(); err != nil {
		t.Fatal(err)
	}
	fresh := newTestWindows(t, redisAddr, prefix, 2, 4)
	next := []*work{convMessage(topic, 0, 200, "a", "customer", "after eviction"), convMessage(topic, 0, 201, "a", "agent", "reply")}
	fresh.assign(t.Context(), next)
	if len(next[0].context) != 0 || !slices.Equal(turnTexts(next[1].context), []string{"customer:after eviction"}) {
		t.Fatalf("after eviction: %q then %q", turnTexts(next[0].context), turnTexts(next[1].context))
	}

	// Redis down: the windows this process holds stand in.
	down := newTestWindows(t, "127.0.0.1:1", prefix, 2, 4)
	held := []*work{convMessage(topic, 0, 300, "c", "customer", "one"), convMessage(topic, 0, 301, "c", "agent", "two")}
	down.assign(t.Context(), held)
	later := []*work{convMessage(topic, 0, 302, "c", "customer", "three")}
	down.assign(t.Context(), later)
	if got := turnTexts(later[0].context); !slices.Equal(got, []string{"customer:one", "agent:two"}) || later[0].contextSource != contextFromMemory {
		t.Fatalf("with Redis down: %q from %s, want the held window from memory", got, later[0].contextSource)
	}
}

// TestIntegrationContextThroughACrash: interleaved conversations over
// several partitions, batches processed concurrently, ingest killed (-9)
// mid-stream and restarted: every event of every message, redelivered
// ones included, carries the label and context count of the message's k
// previous messages in partition order.
func TestIntegrationContextThroughACrash(t *testing.T) {
	const partitions, convs, perConv, k = 4, 40, 15, 2
	h := newHarness(t, partitions)
	bin := buildIngest(t)
	h.fake.delay.Store(int64(15 * time.Millisecond))
	rng := rand.New(rand.NewPCG(3, 4))
	left := make([]int, convs)
	for c := range left {
		left[c] = perConv
	}
	var msgs []contract.ChatMessage
	var partitionOf []int
	for len(msgs) < convs*perConv {
		c := rng.IntN(convs)
		if left[c] == 0 {
			continue
		}
		left[c]--
		role := []string{"customer", "agent"}[rng.IntN(2)]
		m := contract.ChatMessage{ID: fmt.Sprintf("c%d-m%d", c, perConv-left[c]), ConversationID: fmt.Sprintf("conv-%d", c),
			Tenant: "acme", SpeakerRole: role, Text: fmt.Sprintf("message %d of conversation %d", perConv-left[c], c),
			SentAt: time.Now().UTC(), Language: "en"}
		msgs = append(msgs, m)
		partitionOf = append(partitionOf, c%partitions)
	}
	values := make([][]byte, len(msgs))
	for i, m := range msgs {
		values[i] = mustJSON(t, m)
	}
	h.produce(values, func(i int) int { return partitionOf[i] })

	// The expected context of each message, from the topic as stored.
	type expectation struct {
		label   string
		context int
	}
	want := map[string]expectation{}
	byPartition := map[int][]contract.ChatMessage{}
	for _, km := range h.readAll(h.input) {
		var m contract.ChatMessage
		if err := json.Unmarshal(km.Value, &m); err != nil {
			t.Fatal(err)
		}
		byPartition[km.Partition] = append(byPartition[km.Partition], m)
	}
	for _, ms := range byPartition {
		windows := map[string][]classifyapi.Turn{}
		for _, m := range ms {
			label, used := fakeContextLabel("ctx@1", m.Text, windows[m.ConversationID], k)
			want[m.ID] = expectation{label, used}
			windows[m.ConversationID] = append(windows[m.ConversationID], classifyapi.Turn{Role: m.SpeakerRole, Text: m.Text})
		}
	}
	if len(want) != len(msgs) {
		t.Fatalf("read %d messages back, produced %d", len(want), len(msgs))
	}

	args := []string{"-adapter", "ctx", "-context-messages", "2", "-context-key-prefix", h.prefix + "ctx:",
		"-batch-size", "8", "-workers", "4", "-max-in-flight", "64"}
	p := h.startProcess(bin, args...)
	h.waitCount(h.events, int64(len(msgs)/3), 2*time.Minute)
	var exitErr *exec.ExitError
	if err := p.signal(t, syscall.SIGKILL); !errors.As(err, &exitErr) {
		t.Fatalf("want a killed process, got %v", err)
	}
	p = h.startProcess(bin, args...)
	waitUntil(t, 3*time.Minute, "every message has an event", func() bool {
		seen := map[string]bool{}
		for _, ev := range h.readEvents() {
			seen[ev.MessageID] = true
		}
		return len(seen) == len(msgs)
	})
	if err := p.signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("ingest did not exit cleanly: %v", err)
	}
	events, withContext := 0, 0
	for _, ev := range h.readEvents() {
		events++
		w := want[ev.MessageID]
		if ev.Label != w.label || ev.ContextMessages != w.context || ev.ContextSource != contextFromRedis {
			t.Errorf("%s: label %s with %d context messages from %q, want %s with %d from redis",
				ev.MessageID, ev.Label, ev.ContextMessages, ev.ContextSource, w.label, w.context)
		}
		if ev.ContextMessages > 0 {
			withContext++
		}
	}
	if withContext < len(msgs)/2 {
		t.Fatalf("only %d of %d events had context", withContext, events)
	}
	t.Logf("%d events for %d messages (%d redelivered after the kill), %d with context, all as offline", events, len(msgs), events-len(msgs), withContext)
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
