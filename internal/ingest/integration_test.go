package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/testenv"
)

// resolvedAdapter is what the fake classifier's catalog makes of a hint.
func resolvedAdapter(hint string) string {
	switch hint {
	case "", "emo":
		return fakeDefaultAdapter
	}
	return hint
}

func labelSetOf(adapter string) string {
	for _, a := range fakeAdapters {
		if a.Ref() == adapter {
			return a.LabelSet
		}
	}
	return ""
}

// checkEvent compares an event with the message it answers.
func checkEvent(t *testing.T, ev contract.EmotionEvent, m contract.ChatMessage, runID string) {
	t.Helper()
	text := contract.NormalizeText(m.Text)
	adapter := resolvedAdapter(m.Adapter)
	switch {
	case ev.Label != fakeLabel(adapter, text):
		t.Errorf("%s: label %q, want %q", m.ID, ev.Label, fakeLabel(adapter, text))
	case ev.Adapter != adapter || ev.Model != fakeModel || ev.LabelSet != labelSetOf(adapter):
		t.Errorf("%s: classified by %s/%s/%s, want %s/%s/%s", m.ID, ev.Model, ev.Adapter, ev.LabelSet, fakeModel, adapter, labelSetOf(adapter))
	case ev.TextFingerprint != contract.Fingerprint(text):
		t.Errorf("%s: fingerprint of another text", m.ID)
	case ev.RunID != runID:
		t.Errorf("%s: run id %q, want %q", m.ID, ev.RunID, runID)
	case ev.ConversationID != m.ConversationID || ev.Tenant != m.Tenant || ev.SpeakerRole != m.SpeakerRole || ev.Language != m.Language:
		t.Errorf("%s: event does not carry the message's fields: %+v", m.ID, ev)
	case !ev.SentAt.Equal(m.SentAt) || ev.ReceivedAt.IsZero() || ev.ClassifiedAt.IsZero():
		t.Errorf("%s: times sent %v received %v classified %v", m.ID, ev.SentAt, ev.ReceivedAt, ev.ClassifiedAt)
	case ev.Probabilities[ev.Label] != 0.7:
		t.Errorf("%s: probabilities %v", m.ID, ev.Probabilities)
	}
}

func TestIntegrationEventsThenCacheHits(t *testing.T) {
	h := newHarness(t, 4)
	const n = 300
	hints := []string{"", "emo", "emo@1", "other@1"}
	first := make([]contract.ChatMessage, n)
	for i := range first {
		// 200 distinct texts, some repeated; spaces and a zero-width space
		// that normalisation removes.
		first[i] = chat(fmt.Sprintf("a%d", i), fmt.Sprintf("  how do I feel, take %d?\u200b ", i%200), hints[i%len(hints)])
	}
	h.produceChats(first)
	in := h.start()
	h.waitCount(h.events, n, 2*time.Minute)
	waitUntil(t, 30*time.Second, "all offsets committed", func() bool { return equalOffsets(h.committed(), h.endOffsets(h.input)) })
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}
	evs := h.readEvents()
	if len(evs) != n {
		t.Fatalf("%d events for %d messages, want exactly one each", len(evs), n)
	}
	byID := map[string]contract.EmotionEvent{}
	for _, ev := range evs {
		if _, dup := byID[ev.MessageID]; dup {
			t.Errorf("duplicate event for %s", ev.MessageID)
		}
		byID[ev.MessageID] = ev
	}
	for _, m := range first {
		ev, ok := byID[m.ID]
		if !ok {
			t.Errorf("no event for %s", m.ID)
			continue
		}
		checkEvent(t, ev, m, contract.LiveRun)
		if ev.Text != "" {
			t.Errorf("%s: text included without -events-include-text", m.ID)
		}
		if ev.Source.Topic != h.input {
			t.Errorf("%s: source %+v", m.ID, ev.Source)
		}
	}
	if got := in.metric(t, "emoflow_ingest_messages_total"); got != n {
		t.Errorf("messages_total = %v, want %d", got, n)
	}
	if got := h.count(h.deadLetter); got != 0 {
		t.Errorf("%d dead letters, want none", got)
	}

	// Second pass: the same texts again, as new messages. Everything comes
	// from the cache; the classifier is not called.
	requests := h.fake.requests.Load()
	second := make([]contract.ChatMessage, n)
	for i := range second {
		second[i] = first[i]
		second[i].ID = fmt.Sprintf("b%d", i)
	}
	h.produceChats(second)
	in = h.start()
	h.waitCount(h.events, 2*n, 2*time.Minute)
	waitUntil(t, 30*time.Second, "all offsets committed", func() bool { return equalOffsets(h.committed(), h.endOffsets(h.input)) })
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}
	if got := h.fake.requests.Load(); got != requests {
		t.Errorf("the classifier got %d requests in the second pass, want 0", got-requests)
	}
	evs = h.readEvents()
	hits := 0
	for _, ev := range evs {
		if !strings.HasPrefix(ev.MessageID, "b") {
			continue
		}
		hits++
		i, _ := strconv.Atoi(ev.MessageID[1:])
		checkEvent(t, ev, second[i], contract.LiveRun)
		if !ev.CacheHit {
			t.Errorf("%s: cache_hit = false in the second pass", ev.MessageID)
		}
	}
	if hits != n {
		t.Errorf("%d second-pass events, want %d", hits, n)
	}
	if got := in.metric(t, "emoflow_ingest_messages_total", "outcome", "cache_hit"); got != n {
		t.Errorf("cache_hit messages = %v, want %d", got, n)
	}
}

func equalOffsets(a, b map[int]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for p, o := range b {
		if a[p] != o {
			return false
		}
	}
	return true
}

func TestIntegrationDeadLetters(t *testing.T) {
	h := newHarness(t, 2)
	mustJSON := func(m contract.ChatMessage) []byte {
		v, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	noTenant := chat("bad-schema", "hello", "")
	noTenant.Tenant = ""
	bad := map[contract.Reason][]byte{
		contract.ReasonMalformedJSON:      []byte(`{"id": "x", `),
		contract.ReasonTooLarge:           mustJSON(chat("big", strings.Repeat("big ", 1000), "")),
		contract.ReasonInvalidUTF8:        {0xff, 0xfe, '{', '}'},
		contract.ReasonEmptyText:          mustJSON(chat("empty", " \t\u200b\n ", "")),
		contract.ReasonSchema:             mustJSON(noTenant),
		contract.ReasonTextTooLong:        mustJSON(chat("long", strings.Repeat("x", 150), "")),
		contract.ReasonUnknownAdapter:     mustJSON(chat("unknown", "hello", "nosuch@9")),
		contract.ReasonClassifierRejected: mustJSON(chat("rejected", "please REJECT me", "")),
	}
	// Bad messages between valid ones, on both partitions.
	var values [][]byte
	wantReason := map[int]contract.Reason{}
	var valid []contract.ChatMessage
	for reason, v := range bad {
		for range 5 {
			m := chat(fmt.Sprintf("ok%d", len(valid)), fmt.Sprintf("valid text %d", len(valid)), "")
			valid = append(valid, m)
			values = append(values, mustJSON(m))
		}
		wantReason[len(values)] = reason
		values = append(values, v)
	}
	h.produce(values, nil)
	in := h.start("-max-message-bytes", "2048", "-max-text-bytes", "100")
	h.waitCount(h.events, int64(len(valid)), 2*time.Minute)
	h.waitCount(h.deadLetter, int64(len(bad)), time.Minute)
	waitUntil(t, 30*time.Second, "all offsets committed", func() bool { return equalOffsets(h.committed(), h.endOffsets(h.input)) })
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}

	// Where every input message is, by its trace header.
	inputs := map[string]kafka.Message{}
	for _, m := range h.readAll(h.input) {
		inputs[header(m, "trace")] = m
	}
	dls := h.readAll(h.deadLetter)
	if len(dls) != len(bad) {
		t.Fatalf("%d dead letters, want %d", len(dls), len(bad))
	}
	for _, dl := range dls {
		trace := header(dl, "trace")
		i, err := strconv.Atoi(trace)
		if err != nil {
			t.Errorf("dead letter without the original trace header: %v", dl.Headers)
			continue
		}
		orig := inputs[trace]
		want := wantReason[i]
		if got := contract.Reason(header(dl, contract.HeaderReason)); got != want {
			t.Errorf("message %d: reason %q, want %q (detail %q)", i, got, want, header(dl, contract.HeaderDetail))
		}
		if header(dl, contract.HeaderDetail) == "" {
			t.Errorf("message %d: no detail", i)
		}
		if string(dl.Value) != string(orig.Value) || string(dl.Key) != string(orig.Key) {
			t.Errorf("message %d: dead letter does not carry the original key and bytes", i)
		}
		if header(dl, contract.HeaderSourceTopic) != h.input ||
			header(dl, contract.HeaderSourcePartition) != strconv.Itoa(orig.Partition) ||
			header(dl, contract.HeaderSourceOffset) != strconv.FormatInt(orig.Offset, 10) {
			t.Errorf("message %d: source headers %v, want %s/%d/%d", i, dl.Headers, h.input, orig.Partition, orig.Offset)
		}
		if got := in.metric(t, "emoflow_ingest_messages_total", "outcome", "dead_letter", "reason", string(want)); got != 1 {
			t.Errorf("dead_letter metric for %s = %v, want 1", want, got)
		}
	}
	evs := h.readEvents()
	if len(evs) != len(valid) {
		t.Fatalf("%d events, want %d", len(evs), len(valid))
	}
	byID := map[string]contract.EmotionEvent{}
	for _, ev := range evs {
		byID[ev.MessageID] = ev
	}
	for _, m := range valid {
		if ev, ok := byID[m.ID]; !ok {
			t.Errorf("no event for valid message %s", m.ID)
		} else {
			checkEvent(t, ev, m, contract.LiveRun)
		}
	}
}

func header(m kafka.Message, key string) string {
	// The last one wins, as ingest appends its headers after the original's.
	v := ""
	for _, h := range m.Headers {
		if h.Key == key {
			v = string(h.Value)
		}
	}
	return v
}

func TestIntegrationRedisOutage(t *testing.T) {
	h := newHarness(t, 2)
	// Whatever happens, leave Redis running for everyone else.
	t.Cleanup(func() { testenv.Services(t, "start", "redis") })
	in := h.start()
	rdb := redis.NewClient(&redis.Options{Addr: h.redisAddr})
	defer rdb.Close()

	batchNo := 0
	sendBatch := func(n int) []contract.ChatMessage {
		batchNo++
		msgs := make([]contract.ChatMessage, n)
		for i := range msgs {
			msgs[i] = chat(fmt.Sprintf("r%d-%d", batchNo, i), fmt.Sprintf("text %d of batch %d", i, batchNo), "")
		}
		h.produceChats(msgs)
		return msgs
	}
	cachedCount := func(msgs []contract.ChatMessage) int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n := 0
		for _, m := range msgs {
			key := cacheKey(h.prefix, target{Model: fakeModel, Adapter: fakeDefaultAdapter, LabelSet: "ls-a"}, contract.NormalizeText(m.Text), nil)
			if c, err := rdb.Exists(ctx, key).Result(); err == nil {
				n += int(c)
			}
		}
		return n
	}

	var sent []contract.ChatMessage
	before := sendBatch(50)
	sent = append(sent, before...)
	h.waitCount(h.events, int64(len(sent)), time.Minute)
	if got := cachedCount(before); got != len(before) {
		t.Fatalf("%d of %d results cached while Redis is up", got, len(before))
	}

	testenv.Services(t, "stop", "redis")
	during := sendBatch(50)
	sent = append(sent, during...)
	h.waitCount(h.events, int64(len(sent)), time.Minute)
	if got := in.metric(t, "emoflow_ingest_redis_up"); got != 0 {
		t.Errorf("redis_up = %v while Redis is down", got)
	}
	if in.metric(t, "emoflow_ingest_cache_errors_total") == 0 {
		t.Error("no cache error counted while Redis is down")
	}
	testenv.Services(t, "start", "redis")

	// Once Redis is back, results are cached again: keep sending until a
	// batch is cached (the cache probes Redis about once a second).
	var after []contract.ChatMessage
	waitUntil(t, time.Minute, "results are cached again after Redis returned", func() bool {
		after = sendBatch(20)
		sent = append(sent, after...)
		h.waitCount(h.events, int64(len(sent)), time.Minute)
		return cachedCount(after) == len(after)
	})
	if got := in.metric(t, "emoflow_ingest_redis_up"); got != 1 {
		t.Errorf("redis_up = %v after Redis returned", got)
	}
	waitUntil(t, 30*time.Second, "all offsets committed", func() bool { return equalOffsets(h.committed(), h.endOffsets(h.input)) })
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}

	// Nothing lost: one event per message.
	evs := h.readEvents()
	got := map[string]int{}
	for _, ev := range evs {
		got[ev.MessageID]++
	}
	for _, m := range sent {
		if got[m.ID] != 1 {
			t.Errorf("message %s has %d events, want 1", m.ID, got[m.ID])
		}
	}
	// The outage is logged once, not per message or batch.
	if n := in.logs.Count("redis cache unavailable"); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	if n := in.logs.Count("redis cache is available again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
}

func TestIntegrationCommitsOnlyTheCompletedPrefix(t *testing.T) {
	h := newHarness(t, 2)
	const n, held = 200, 10 // message 10: partition 0, offset 5
	msgs := make([]contract.ChatMessage, n)
	for i := range msgs {
		text := fmt.Sprintf("prefix text %d", i)
		if i == held {
			text = "HOLD until released"
		}
		msgs[i] = chat(fmt.Sprintf("p%d", i), text, "")
	}
	h.produceChats(msgs)
	in := h.start("-batch-size", "8", "-workers", "4", "-max-in-flight", "100")
	select {
	case <-h.fake.arrived:
	case <-time.After(time.Minute):
		t.Fatal("the held message never reached the classifier")
	}
	// Everything but the held batch (at most 8 messages) completes.
	h.waitCount(h.events, n-8, 2*time.Minute)

	// The commit position of each partition must be the first offset
	// without an event: never beyond (that would skip the held message),
	// and it must get there.
	heldOffset := int64(held / 2)
	var last map[int]int64
	waitUntil(t, 30*time.Second, "committed offsets equal the completed prefix", func() bool {
		committed := h.committed() // read before the events: events only grow
		prefix, beyond := completedPrefix(h.readEvents(), h.input, 2)
		for p, c := range committed {
			if c > prefix[p] {
				t.Fatalf("partition %d committed at %d, beyond the first incomplete offset %d", p, c, prefix[p])
			}
		}
		last = committed
		return equalOffsets(committed, prefix) && beyond[0] > heldOffset
	})
	if last[0] > heldOffset {
		t.Fatalf("partition 0 committed at %d past the held message at %d", last[0], heldOffset)
	}

	h.fake.release()
	h.waitCount(h.events, n, 2*time.Minute)
	waitUntil(t, 30*time.Second, "all offsets committed after the release", func() bool {
		return equalOffsets(h.committed(), h.endOffsets(h.input))
	})
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}
	if evs := h.readEvents(); len(evs) != n {
		t.Fatalf("%d events, want %d", len(evs), n)
	}
}

// completedPrefix returns, per input partition, the first offset that has
// no event, and the highest offset that has one.
func completedPrefix(evs []contract.EmotionEvent, topic string, partitions int) (prefix, highest map[int]int64) {
	done := map[int]map[int64]bool{}
	prefix, highest = map[int]int64{}, map[int]int64{}
	for p := range partitions {
		done[p] = map[int64]bool{}
		highest[p] = -1
	}
	for _, ev := range evs {
		if ev.Source.Topic != topic {
			continue
		}
		done[ev.Source.Partition][ev.Source.Offset] = true
		highest[ev.Source.Partition] = max(highest[ev.Source.Partition], ev.Source.Offset)
	}
	for p := range partitions {
		o := int64(0)
		for done[p][o] {
			o++
		}
		prefix[p] = o
	}
	return prefix, highest
}

func TestIntegrationReplayStopsAtEnd(t *testing.T) {
	h := newHarness(t, 3)
	const n = 60
	msgs := make([]contract.ChatMessage, n)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("rp%d", i), fmt.Sprintf("replayed   text %d", i), "")
	}
	h.produceChats(msgs)
	in := h.start("-stop-at-end", "-run-id", "replay-7", "-priority", "replay", "-events-include-text")
	select {
	case err := <-in.done:
		in.done <- err
		if err != nil {
			t.Fatalf("ingest stopped with %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("ingest did not stop at the end of the input")
	}
	if c, e := h.committed(), h.endOffsets(h.input); !equalOffsets(c, e) {
		t.Fatalf("committed %v, want the end offsets %v", c, e)
	}
	evs := h.readEvents()
	if len(evs) != n {
		t.Fatalf("%d events, want %d", len(evs), n)
	}
	byID := map[string]contract.EmotionEvent{}
	for _, ev := range evs {
		byID[ev.MessageID] = ev
	}
	for _, m := range msgs {
		ev := byID[m.ID]
		checkEvent(t, ev, m, "replay-7")
		if ev.Text != contract.NormalizeText(m.Text) {
			t.Errorf("%s: text %q, want the normalised text", m.ID, ev.Text)
		}
	}
	if got := h.fake.priority("replay"); got != n {
		t.Errorf("the classifier got %d texts with priority replay, want %d", got, n)
	}
}

func TestIntegrationRebalanceLosesNothing(t *testing.T) {
	h := newHarness(t, 4)
	// About 400 messages/s per member, so that the rebalances happen
	// mid-stream.
	h.fake.delay.Store(int64(20 * time.Millisecond))
	const n = 2000
	msgs := make([]contract.ChatMessage, n)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("rb%d", i), fmt.Sprintf("rebalance text %d", i), "")
	}
	h.produceChats(msgs)
	slow := []string{"-batch-size", "8", "-workers", "1", "-max-in-flight", "32"}
	a := h.start(slow...)
	h.waitCount(h.events, 200, 2*time.Minute)
	b := h.start(slow...) // joins: both rebalance
	waitUntil(t, time.Minute, "the second member got partitions", func() bool {
		return b.metric(t, "emoflow_ingest_messages_total") > 0
	})
	if err := a.stop(t); err != nil { // leaves: b takes everything
		t.Fatalf("first ingest stopped with %v", err)
	}
	h.waitCount(h.events, n, 3*time.Minute)
	waitUntil(t, time.Minute, "all offsets committed", func() bool { return equalOffsets(h.committed(), h.endOffsets(h.input)) })
	if err := b.stop(t); err != nil {
		t.Fatalf("second ingest stopped with %v", err)
	}
	got := map[string]int{}
	for _, ev := range h.readEvents() {
		got[ev.MessageID]++
	}
	dups := 0
	for _, m := range msgs {
		if got[m.ID] == 0 {
			t.Errorf("no event for %s", m.ID)
		}
		dups += max(got[m.ID]-1, 0)
	}
	if b.metric(t, "emoflow_ingest_group_generations_total") < 2 {
		t.Errorf("the second member saw %v generations, want at least 2", b.metric(t, "emoflow_ingest_group_generations_total"))
	}
	t.Logf("%d duplicate events around the rebalances (at-least-once)", dups)
}

func TestIntegrationInFlightIsBounded(t *testing.T) {
	h := newHarness(t, 2)
	const n, limit = 100, 16
	msgs := make([]contract.ChatMessage, n)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("f%d", i), fmt.Sprintf("HOLD bounded %d", i), "") // every request is held
	}
	h.produceChats(msgs)
	in := h.start("-batch-size", "8", "-workers", "4", "-max-in-flight", strconv.Itoa(limit))
	waitUntil(t, time.Minute, "the in-flight limit is reached", func() bool {
		return in.metric(t, "emoflow_ingest_in_flight_messages") == limit
	})
	// Fetching has stopped: the number stays at the limit while the
	// classifier holds everything.
	for range 10 {
		if got := in.metric(t, "emoflow_ingest_in_flight_messages"); got != limit {
			t.Fatalf("in flight = %v, want %d", got, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := h.count(h.events); got != 0 {
		t.Fatalf("%d events while the classifier holds everything", got)
	}
	h.fake.release()
	h.waitCount(h.events, n, 2*time.Minute)
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}
	if got := in.metric(t, "emoflow_ingest_in_flight_messages"); got != 0 {
		t.Errorf("in flight = %v after the end, want 0", got)
	}
}

func TestIntegrationShutdownAbandonsUnfinishedWork(t *testing.T) {
	h := newHarness(t, 2)
	const n = 40
	msgs := make([]contract.ChatMessage, n)
	for i := range msgs {
		text := fmt.Sprintf("shutdown text %d", i)
		if i == 21 { // partition 1, offset 10
			text = "HOLD during shutdown"
		}
		msgs[i] = chat(fmt.Sprintf("s%d", i), text, "")
	}
	h.produceChats(msgs)
	in := h.start("-batch-size", "4", "-drain-timeout", "1s")
	select {
	case <-h.fake.arrived:
	case <-time.After(time.Minute):
		t.Fatal("the held message never reached the classifier")
	}
	h.waitCount(h.events, n-4, time.Minute)
	// Shutdown cannot finish the held batch: it is abandoned, Run still
	// returns cleanly, and what was finished is committed.
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}
	committed := h.committed()
	prefix, _ := completedPrefix(h.readEvents(), h.input, 2)
	if !equalOffsets(committed, prefix) || committed[1] > 10 {
		t.Fatalf("committed %v after shutdown, want the completed prefix %v (partition 1 before offset 10)", committed, prefix)
	}
	// The next run picks the abandoned messages up.
	h.fake.release()
	in = h.start("-batch-size", "4")
	waitUntil(t, time.Minute, "every message has an event", func() bool {
		seen := map[string]bool{}
		for _, ev := range h.readEvents() {
			seen[ev.MessageID] = true
		}
		return len(seen) == n
	})
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}
}

func TestIntegrationIdleMemberKeepsTheGroupStable(t *testing.T) {
	h := newHarness(t, 1)
	a := h.start()
	b := h.start()
	// One partition, two members: one of them owns nothing and must simply
	// wait, not leave and rejoin (which would rebalance the group again and
	// again).
	msgs := make([]contract.ChatMessage, 50)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("i%d", i), fmt.Sprintf("idle member text %d", i), "")
	}
	h.produceChats(msgs)
	h.waitCount(h.events, int64(len(msgs)), time.Minute)
	generations := func() float64 {
		return a.metric(t, "emoflow_ingest_group_generations_total") + b.metric(t, "emoflow_ingest_group_generations_total")
	}
	waitUntil(t, 30*time.Second, "both members joined", func() bool {
		return a.metric(t, "emoflow_ingest_group_generations_total") > 0 && b.metric(t, "emoflow_ingest_group_generations_total") > 0
	})
	before := generations()
	time.Sleep(3 * time.Second) // more than one heartbeat interval (2s)
	if after := generations(); after != before {
		t.Fatalf("the group rebalanced %v times while nothing changed", after-before)
	}
	for _, in := range []*instance{a, b} {
		if err := in.stop(t); err != nil {
			t.Fatalf("ingest stopped with %v", err)
		}
	}
	if got := h.count(h.events); got != int64(len(msgs)) {
		t.Fatalf("%d events for %d messages", got, len(msgs))
	}
}

func TestIntegrationOverloadPausesFetching(t *testing.T) {
	h := newHarness(t, 2)
	h.fake.overload.Store(1)
	msgs := make([]contract.ChatMessage, 100)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("o%d", i), fmt.Sprintf("overload text %d", i), "")
	}
	h.produceChats(msgs[:8])
	in := h.start()
	waitUntil(t, time.Minute, "the classifier refused a request", func() bool { return h.fake.overloaded.Load() == 1 })
	// Every endpoint (the only one) asked for 3s of peace: messages that
	// arrive now are fetched one by one at most, then fetching waits.
	h.produceChats(msgs[8:])
	h.waitCount(h.events, int64(len(msgs)), time.Minute)
	if err := in.stop(t); err != nil {
		t.Fatalf("ingest stopped with %v", err)
	}
	if got := in.metric(t, "emoflow_ingest_fetch_paused_seconds_total"); got <= 0 {
		t.Errorf("fetching never paused during the overload")
	}
	if got := in.metric(t, "emoflow_ingest_classifier_request_seconds", "outcome", "429"); got != 1 {
		t.Errorf("%v requests answered 429 in the metrics, want 1", got)
	}
	if evs := h.readEvents(); len(evs) != len(msgs) {
		t.Errorf("%d events for %d messages", len(evs), len(msgs))
	}
}
