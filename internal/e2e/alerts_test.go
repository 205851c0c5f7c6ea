package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/alerts"
	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/testenv"
)

// e2eRules fire often on a random model's labels (four of the seven
// labels are negative).
const e2eRules = `{"rules": [
  {"name": "negative-share", "kind": "share", "role": "customer", "labels": ["anger", "disgust", "fear", "sadness"],
   "window": 3, "min_messages": 2, "threshold": 0.66, "clear_below": 0.34},
  {"name": "turned-negative", "kind": "run", "role": "customer", "negative": ["anger", "disgust", "fear", "sadness"],
   "start": ["joy", "neutral", "surprise"], "length": 2}
]}`

// TestAlertsEndToEnd sends MELD test dialogues, all at once, through ingest
// and the real classifier, with the sink and the alerter on the events: the
// alerts in ClickHouse are exactly those the rules give offline over the
// stored events, each conversation in its source order, although ingest
// publishes the events of concurrent batches out of order (the alerter's
// reorder window puts them back in order; without it some are skipped as
// late and alerts are missed). It logs the alerter's events by outcome.
func TestAlertsEndToEnd(t *testing.T) {
	brokers, redisAddr, chAddr := testenv.Kafka(t), testenv.Redis(t), testenv.ClickHouse(t)
	examples, err := datasets.Read(testenv.Shared(t, "data"), datasets.MELD, "test")
	if err != nil {
		t.Fatal(err)
	}
	// Whole dialogues, about 400 utterances.
	var picked []datasets.Example
	dialogues := map[string]bool{}
	for _, e := range examples {
		if !dialogues[e.Conversation] && len(picked) >= 400 {
			break
		}
		dialogues[e.Conversation] = true
		picked = append(picked, e)
	}
	var texts []string
	for _, e := range picked {
		texts = append(texts, e.Text)
	}
	dir := tinyModel(t, texts)
	rulesPath := filepath.Join(t.TempDir(), "rules.json")
	if err := os.WriteFile(rulesPath, []byte(e2eRules), 0o644); err != nil {
		t.Fatal(err)
	}
	rules, err := alerts.ParseRules([]byte(e2eRules))
	if err != nil {
		t.Fatal(err)
	}

	name := testenv.Name(t, "e2ealerts")
	in, events := name+"_in", name+"_events"
	cls := testenv.Start(t, "classifier", &classifier.Component{}, "-dtype=float32", "-model-dir="+dir, "-max-queue-delay=5ms")
	snk := testenv.Start(t, "sink", &sink.Component{}, "-kafka-brokers="+brokers, "-events-topic="+events,
		"-dead-letter-topic="+events+"_dlq", "-group-id="+name+"_sink", "-clickhouse-addr="+chAddr,
		"-clickhouse-database="+name, "-flush-interval=200ms")
	alr := testenv.Start(t, "alerter", &alerts.Component{}, "-kafka-brokers="+brokers, "-events-topic="+events,
		"-alerts-topic="+name+"_alerts", "-dead-letter-topic="+events+"_alerter_dlq", "-group-id="+name+"_alerter",
		"-redis-addr="+redisAddr, "-redis-key-prefix="+name+":alerts:", "-clickhouse-addr="+chAddr,
		"-clickhouse-database="+name, "-rules="+rulesPath, "-flush-interval=50ms")
	ing := testenv.Start(t, "ingest", &ingest.Component{}, "-kafka-brokers="+brokers, "-input-topic="+in,
		"-events-topic="+events, "-dead-letter-topic="+in+"_dlq", "-group-id="+name+"_ingest",
		"-redis-addr="+redisAddr, "-redis-key-prefix="+name+":", "-classifier-urls=http://"+cls.RT.Addr, "-topic-partitions=4")

	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}, DialTimeout: 10 * time.Second, ReadTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	client := &kafka.Client{Addr: kafka.TCP(brokers), Timeout: 30 * time.Second}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name)
		conn.Close()
		_, _ = client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{in, events, name + "_alerts", in + "_dlq", events + "_dlq", events + "_alerter_dlq"}})
	})

	// Every utterance is the customer's, so every message counts.
	w := &kafka.Writer{Addr: kafka.TCP(brokers), Topic: in, Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	var msgs []kafka.Message
	for i, e := range picked {
		m := contract.ChatMessage{ID: fmt.Sprintf("%s-%d", name, i), ConversationID: "d" + e.Conversation, Tenant: "acme",
			SpeakerRole: "customer", Text: e.Text, SentAt: time.Now().UTC().Truncate(time.Second), Language: "en"}
		v, _ := json.Marshal(m)
		msgs = append(msgs, kafka.Message{Key: []byte(m.ConversationID), Value: v})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	n := uint64(len(msgs))

	// Every event stored, and the alerter's group committed to the end of
	// the events topic.
	deadline := time.Now().Add(4 * time.Minute)
	for {
		var got uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM "+name+".events_dedup").Scan(&got)
		if err == nil && got >= n && committedToTheEnd(t, client, events, name+"_alerter") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events stored, or the alerter did not commit every event", got, n)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Offline: the stored events, each conversation in source order.
	rows, err := conn.Query(ctx, "SELECT message_id, conversation_id, tenant, speaker_role, label, adapter, sent_at, source_topic, source_partition, source_offset FROM "+
		name+".events_dedup WHERE run_id = 'live' ORDER BY conversation_id, source_partition, source_offset")
	if err != nil {
		t.Fatal(err)
	}
	var stored []contract.EmotionEvent
	labels := map[string]int{}
	for rows.Next() {
		var ev contract.EmotionEvent
		var part int32
		if err := rows.Scan(&ev.MessageID, &ev.ConversationID, &ev.Tenant, &ev.SpeakerRole, &ev.Label, &ev.Adapter, &ev.SentAt,
			&ev.Source.Topic, &part, &ev.Source.Offset); err != nil {
			t.Fatal(err)
		}
		ev.Source.Partition = int(part)
		stored = append(stored, ev)
		labels[ev.Label]++
	}
	rows.Close()
	want := map[string]string{}
	for _, a := range rules.Fold(stored) {
		want[a.AlertID] = a.Rule + "@" + a.MessageID
	}
	if len(want) == 0 {
		t.Fatalf("the rules give no alert over these labels (%v): the test proves nothing", labels)
	}

	rows, err = conn.Query(ctx, "SELECT alert_id, rule, message_id FROM "+name+".alerts_dedup")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for rows.Next() {
		var id, rule, msg string
		if err := rows.Scan(&id, &rule, &msg); err != nil {
			t.Fatal(err)
		}
		got[id] = rule + "@" + msg
	}
	rows.Close()
	var missing, extra []string
	for id, what := range want {
		if _, ok := got[id]; !ok {
			missing = append(missing, what)
		}
	}
	for id, what := range got {
		if _, ok := want[id]; !ok {
			extra = append(extra, what)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	outcomes := alerterOutcomes(t, alr)
	t.Logf("%d events (%d dialogues; labels %v): %d alerts offline, %d stored; alerter events by outcome %v",
		len(stored), len(dialogues), labels, len(want), len(got), outcomes)
	if len(missing) > 0 || len(extra) > 0 {
		t.Errorf("alerts differ from the offline fold over the stored events in source order: missing %v, extra %v", missing, extra)
	}
	for _, r := range []*testenv.Running{ing, alr, snk, cls} {
		if err := r.Stop(); err != nil {
			t.Errorf("%s stopped with an error: %v", r.Name, err)
		}
	}
}

// alerterOutcomes reads emoflow_alerter_events_total by outcome, and
// emoflow_alerter_events_reordered_total.
func alerterOutcomes(t *testing.T, r *testenv.Running) map[string]float64 {
	t.Helper()
	mfs, err := r.RT.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "emoflow_alerter_events_reordered_total" {
			out["reordered (applied in message order thanks to the window)"] = mf.GetMetric()[0].GetCounter().GetValue()
		}
		if mf.GetName() != "emoflow_alerter_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// committedToTheEnd reports whether group committed every partition of
// topic to its end.
func committedToTheEnd(t *testing.T, client *kafka.Client, topic, group string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(meta.Topics) != 1 {
		return false
	}
	var reqs []kafka.OffsetRequest
	var ids []int
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p.ID))
		ids = append(ids, p.ID)
	}
	ends, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return false
	}
	committed, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err != nil {
		return false
	}
	end := map[int]int64{}
	for _, p := range ends.Topics[topic] {
		end[p.Partition] = p.LastOffset
	}
	for _, p := range committed.Topics[topic] {
		if end[p.Partition] > 0 && p.CommittedOffset != end[p.Partition] {
			return false
		}
	}
	return len(ids) > 0 && !strings.Contains(fmt.Sprint(committed.Topics[topic]), "error")
}
