package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/stage"
	"github.com/emoflow/emoflow/internal/testenv"
)

const testPartitions = 4

// integration is one test's topics, group, Redis key prefix and ClickHouse
// database (with the sink's schema) on the real local services.
type integration struct {
	brokers, redisAddr, clickhouse string
	events, alerts, deadLetter     string
	group, database, prefix        string
	rulesPath                      string
	conn                           driver.Conn
	rdb                            *redis.Client
}

func newIntegration(t *testing.T) *integration {
	t.Helper()
	name := testenv.Name(t, "alerts")
	in := &integration{
		brokers: testenv.Kafka(t), redisAddr: testenv.Redis(t), clickhouse: testenv.ClickHouse(t),
		events: name + "_events", alerts: name + "_alerts", deadLetter: name + "_dlq",
		group: name + "_group", database: name, prefix: name + ":",
		rulesPath: filepath.Join(t.TempDir(), "rules.json"),
	}
	if err := os.WriteFile(in.rulesPath, []byte(testRules), 0o644); err != nil {
		t.Fatal(err)
	}
	conn, err := openClickHouse(stage.SplitList(in.clickhouse), "default", "", nil, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	in.conn = conn
	in.rdb = redis.NewClient(redisOptions(in.redisAddr, 10*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The schema as the sink's migrations make it (the alerter only waits
	// for it).
	stmts, err := sink.SchemaStatements(in.database)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := stage.EnsureTopics(ctx, in.kafkaClient(), []string{in.events, in.alerts}, testPartitions, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := in.kafkaClient().DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{in.events, in.alerts, in.deadLetter}}); err != nil {
			t.Logf("delete topics: %v", err)
		}
		if err := in.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+in.database); err != nil {
			t.Logf("drop database: %v", err)
		}
		keys, _ := in.rdb.Keys(ctx, in.prefix+"*").Result()
		if len(keys) > 0 {
			in.rdb.Del(ctx, keys...)
		}
		in.conn.Close()
		in.rdb.Close()
	})
	return in
}

func (in *integration) kafkaClient() *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(stage.SplitList(in.brokers)...), Timeout: 30 * time.Second}
}

func (in *integration) args(extra ...string) []string {
	return append([]string{
		"-http-addr=127.0.0.1:0",
		"-kafka-brokers=" + in.brokers,
		"-events-topic=" + in.events,
		"-alerts-topic=" + in.alerts,
		"-dead-letter-topic=" + in.deadLetter,
		"-group-id=" + in.group,
		"-topic-partitions=" + fmt.Sprint(testPartitions),
		"-kafka-session-timeout=6s",
		"-redis-addr=" + in.redisAddr,
		"-redis-key-prefix=" + in.prefix,
		"-clickhouse-addr=" + in.clickhouse,
		"-clickhouse-database=" + in.database,
		"-rules=" + in.rulesPath,
	}, extra...)
}

// script is a scripted conversation: its labels and the messages at which
// each rule of testRules must alert.
type script struct {
	name   string
	labels []string
	// alertsAt are message indexes; both rules alert there.
	alertsAt []int
}

var (
	turningAngry = script{"turning", []string{"neutral", "joy", "anger", "anger", "disgust", "anger", "sadness", "anger"}, []int{4}}
	stayingCalm  = script{"calm", []string{"neutral", "joy", "neutral", "surprise", "anger", "neutral", "joy", "neutral", "fear", "neutral", "joy", "neutral"}, nil}
	angryTwice   = script{"twice", []string{"neutral", "anger", "anger", "anger", "anger", "neutral", "joy", "neutral", "neutral",
		"anger", "disgust", "sadness", "anger", "neutral", "anger"}, []int{3, 11}}
)

// longConversation is calm for 1995 messages, then turns angry: alerts at
// message 1997.
func longConversation() script {
	labels := make([]string, 2000)
	for i := range labels {
		labels[i] = []string{"neutral", "joy"}[i%2]
		if i >= 1995 {
			labels[i] = "anger"
		}
	}
	return script{"long", labels, []int{1997}}
}

// traffic is the scripted conversations as the events topic receives them:
// interleaved across conversations, with source offsets per source
// partition, and noise that must change nothing: duplicates (some after a
// later message of the conversation), replay events, and malformed values.
type traffic struct {
	msgs      []kafka.Message
	expected  map[string]Alert // by alert id: rule, conversation, message id, source offset
	malformed int
	longConv  string
}

func buildTraffic(perScript int) traffic {
	type conv struct {
		id string
		s  script
	}
	var convs []conv
	for i := range perScript {
		for _, s := range []script{turningAngry, stayingCalm, angryTwice} {
			convs = append(convs, conv{fmt.Sprintf("%s-%03d", s.name, i), s})
		}
	}
	long := longConversation()
	convs = append(convs, conv{"long-000", long})

	tr := traffic{expected: map[string]Alert{}, longConv: "long-000"}
	nextOffset := make([]int64, testPartitions)
	start := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	var pendingDups []kafka.Message
	value := func(ev contract.EmotionEvent) []byte {
		raw, err := json.Marshal(ev)
		if err != nil {
			panic(err)
		}
		return raw
	}
	n := 0
	for round := 0; ; round++ {
		more := false
		for _, c := range convs {
			if round >= len(c.s.labels) {
				continue
			}
			more = true
			h := fnv.New32a()
			h.Write([]byte(c.id))
			part := int(h.Sum32() % testPartitions)
			ev := contract.EmotionEvent{
				MessageID: fmt.Sprintf("%s-m%d", c.id, round), ConversationID: c.id, Tenant: "acme",
				SpeakerRole: "customer", Label: c.s.labels[round], RunID: contract.LiveRun, Adapter: "support@1",
				Model: "m@1", LabelSet: "ekman", SentAt: start.Add(time.Duration(round) * time.Second),
				ReceivedAt: start, ClassifiedAt: start,
				Source: contract.Source{Topic: "chat.messages", Partition: part, Offset: nextOffset[part]},
			}
			nextOffset[part]++
			key := []byte(c.id)
			tr.msgs = append(tr.msgs, kafka.Message{Key: key, Value: value(ev)})
			if slices.Contains(c.s.alertsAt, round) {
				for _, rule := range []string{"customer-negative-share", "turned-negative"} {
					id := ID(ev.Tenant, ev.ConversationID, rule, ev.MessageID)
					tr.expected[id] = Alert{Rule: rule, ConversationID: c.id, MessageID: ev.MessageID, Source: ev.Source}
				}
			}
			n++
			switch {
			case n%7 == 0:
				// Delivered again, a while later (often after the
				// conversation's next message: then it is late).
				pendingDups = append(pendingDups, kafka.Message{Key: key, Value: value(ev)})
			case n%5 == 0:
				// At once.
				tr.msgs = append(tr.msgs, kafka.Message{Key: key, Value: value(ev)})
			}
			if c.s.name == stayingCalm.name {
				// A replay that would alert if replays counted.
				replay := ev
				replay.RunID, replay.Label = "replay-x", "anger"
				tr.msgs = append(tr.msgs, kafka.Message{Key: key, Value: value(replay)})
			}
			if n%900 == 0 {
				tr.msgs = append(tr.msgs, kafka.Message{Key: key, Value: []byte(`{"message_id": "broken`)})
				tr.malformed++
			}
			if len(pendingDups) >= 40 {
				tr.msgs = append(tr.msgs, pendingDups...)
				pendingDups = nil
			}
		}
		if !more {
			break
		}
	}
	tr.msgs = append(tr.msgs, pendingDups...)
	return tr
}

// produceSlowly writes msgs in chunks with pauses, so that the alerter is
// busy while it is killed.
func (in *integration) produceSlowly(t *testing.T, msgs []kafka.Message, chunk int, pause time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		w := &kafka.Writer{Addr: kafka.TCP(stage.SplitList(in.brokers)...), Topic: in.events, Balancer: &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll, BatchSize: chunk, BatchTimeout: 5 * time.Millisecond}
		defer w.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for i := 0; i < len(msgs); i += chunk {
			if err := w.WriteMessages(ctx, msgs[i:min(i+chunk, len(msgs))]...); err != nil {
				done <- fmt.Errorf("produce: %w", err)
				return
			}
			time.Sleep(pause)
		}
		done <- nil
	}()
	return done
}

// watchTopic reads topic from its start in a consumer group of its own and
// signals each message it reads.
func (in *integration) watchTopic(t *testing.T, topic string) <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: stage.SplitList(in.brokers), Topic: topic, GroupID: in.group + "_watch",
		StartOffset: kafka.FirstOffset, MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 10 * time.Millisecond, WatchPartitionChanges: true,
		PartitionWatchInterval: 100 * time.Millisecond, HeartbeatInterval: time.Second, SessionTimeout: 6 * time.Second})
	seen := make(chan struct{}, 100000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := r.ReadMessage(ctx); err != nil {
				return
			}
			seen <- struct{}{}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		r.Close()
	})
	return seen
}

// dedupIDs returns the alert ids of alerts_dedup with their row counts.
func (in *integration) dedupIDs(t *testing.T) map[string]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := in.conn.Query(ctx, "SELECT alert_id, count() FROM "+in.database+".alerts_dedup GROUP BY alert_id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var id string
		var n uint64
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// longConvState is the stored state of a conversation of tenant acme, and
// its JSON.
func (in *integration) longConvState(t *testing.T, conv string) (convState, string) {
	t.Helper()
	s := &redisStates{rdb: in.rdb, prefix: in.prefix}
	raw, err := in.rdb.HGet(context.Background(), s.key(convKey{"acme", conv}), "s").Result()
	if err == redis.Nil {
		return convState{}, ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var st convState
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatal(err)
	}
	return st, raw
}

// readTopic reads every message of topic, partition by partition.
func (in *integration) readTopic(t *testing.T, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	meta, err := in.kafkaClient().Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(meta.Topics) != 1 || meta.Topics[0].Error != nil {
		t.Fatalf("metadata of %s: %v %+v", topic, err, meta)
	}
	var out []kafka.Message
	for _, p := range meta.Topics[0].Partitions {
		ends, err := in.kafkaClient().ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(p.ID)}}})
		if err != nil {
			t.Fatal(err)
		}
		end := ends.Topics[topic][0].LastOffset
		if end == 0 {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: stage.SplitList(in.brokers), Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("read %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
			if m.Offset >= end-1 {
				break
			}
		}
		r.Close()
	}
	return out
}

// committedToTheEnd reports whether the group committed every partition of
// the events topic to its end.
func (in *integration) committedToTheEnd(t *testing.T) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var reqs []kafka.OffsetRequest
	var ids []int
	for p := range testPartitions {
		reqs = append(reqs, kafka.LastOffsetOf(p))
		ids = append(ids, p)
	}
	ends, err := in.kafkaClient().ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{in.events: reqs}})
	if err != nil {
		t.Fatal(err)
	}
	committed, err := in.kafkaClient().OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: in.group, Topics: map[string][]int{in.events: ids}})
	if err != nil {
		t.Fatal(err)
	}
	end := map[int]int64{}
	for _, p := range ends.Topics[in.events] {
		end[p.Partition] = p.LastOffset
	}
	ok := len(committed.Topics[in.events]) == testPartitions
	var state []string
	for _, p := range committed.Topics[in.events] {
		state = append(state, fmt.Sprintf("p%d committed %d of %d", p.Partition, p.CommittedOffset, end[p.Partition]))
		if p.CommittedOffset != end[p.Partition] && end[p.Partition] > 0 {
			ok = false
		}
	}
	return ok, strings.Join(state, "; ")
}

func TestAlerterKilledMidRunAlertsExactlyOnce(t *testing.T) {
	in := newIntegration(t)
	bin := testenv.BuildCommand(t, "./cmd/alerter")
	tr := buildTraffic(100)
	t.Logf("%d messages on the events topic, %d alerts expected, %d malformed", len(tr.msgs), len(tr.expected), tr.malformed)
	args := in.args("-batch-size=50", "-flush-interval=20ms")
	produced := in.produceSlowly(t, tr.msgs, 50, 150*time.Millisecond)

	alerter := testenv.StartProcess(t, bin, args, "alerter 1")
	// The first two kills come the moment the 150th and the 450th alert
	// appear on the topic: often after the publish and before the state is
	// saved, the window in which an alert can be published twice.
	onTopic := in.watchTopic(t, in.alerts)
	seen := 0
	alertsOnTopic := func(n int) func() (bool, string) {
		return func() (bool, string) {
			for seen < n {
				select {
				case <-onTopic:
					seen++
				case <-time.After(50 * time.Millisecond):
					return false, fmt.Sprintf("%d alerts on the topic", seen)
				}
			}
			return true, ""
		}
	}
	kills := []struct {
		what string
		cond func() (bool, string)
	}{
		{"the 150th alert on the topic", alertsOnTopic(150)},
		{"the 450th alert on the topic", alertsOnTopic(450)},
		{"the long conversation half applied", func() (bool, string) {
			st, _ := in.longConvState(t, tr.longConv)
			return st.Messages >= 1000, fmt.Sprintf("long conversation at %d messages", st.Messages)
		}},
	}
	for i, k := range kills {
		testenv.WaitUntil(t, 3*time.Minute, k.what, k.cond)
		if err := alerter.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = alerter.Wait(t, 30*time.Second)
		if st, _ := in.longConvState(t, tr.longConv); st.Messages >= 2000 {
			t.Fatalf("kill %d came after the alerter had applied every message; the test proves nothing", i+1)
		}
		t.Logf("kill %d at %s: %d alerts stored", i+1, k.what, len(in.dedupIDs(t)))
		alerter = testenv.StartProcess(t, bin, args, fmt.Sprintf("alerter %d", i+2))
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	testenv.WaitUntil(t, 3*time.Minute, "every event consumed and committed", func() (bool, string) {
		return in.committedToTheEnd(t)
	})

	in.checkEachAlertOnce(t, tr)

	// Malformed events went to the dead-letter topic with their reason.
	dlq := in.readTopic(t, in.deadLetter)
	reasons := map[string]int{}
	for _, m := range dlq {
		for _, h := range m.Headers {
			if h.Key == contract.HeaderReason {
				reasons[string(h.Value)]++
			}
		}
	}
	// A kill can repeat a dead letter; each malformed event is there.
	if len(dlq) < tr.malformed || reasons[string(contract.ReasonMalformedJSON)] != len(dlq) {
		t.Errorf("dead letters: %d with reasons %v, want %d malformed_json", len(dlq), reasons, tr.malformed)
	}

	// The long conversation's state is bounded and expires.
	st, raw := in.longConvState(t, tr.longConv)
	ttl := in.rdb.TTL(context.Background(), (&redisStates{prefix: in.prefix}).key(convKey{"acme", tr.longConv})).Val()
	if st.Messages != 2000 || len(raw) > 512 || ttl <= 0 {
		t.Errorf("long conversation state: %d messages, %d bytes, ttl %s; want 2000 messages in at most 512 bytes with a TTL: %s",
			st.Messages, len(raw), ttl, raw)
	}

	if err := alerter.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := alerter.Wait(t, 60*time.Second); err != nil {
		t.Errorf("the last alerter exited with %v after SIGTERM, want 0", err)
	}
}

// checkEachAlertOnce checks that alerts_dedup holds exactly the expected
// alerts, each once, and that the alerts topic holds exactly their ids,
// every copy of an alert the same bytes and as the script expects.
func (in *integration) checkEachAlertOnce(t *testing.T, tr traffic) {
	t.Helper()
	// ClickHouse: exactly the expected alerts, each once in alerts_dedup.
	ids := in.dedupIDs(t)
	for id, n := range ids {
		if _, ok := tr.expected[id]; !ok {
			t.Errorf("alerts_dedup holds unexpected alert %s", id)
		}
		if n != 1 {
			t.Errorf("alerts_dedup holds alert %s %d times", id, n)
		}
	}
	for id, a := range tr.expected {
		if _, ok := ids[id]; !ok {
			t.Errorf("alert %s (%s at %s) missing from alerts_dedup", id, a.Rule, a.MessageID)
		}
	}

	// The topic: at least once, with stable ids; every copy of an alert is
	// the same bytes, and it says what the script expects.
	byID := map[string][]byte{}
	copies := 0
	for _, m := range in.readTopic(t, in.alerts) {
		var a Alert
		if err := json.Unmarshal(m.Value, &a); err != nil {
			t.Fatalf("alert on the topic is not JSON: %v: %s", err, m.Value)
		}
		want, ok := tr.expected[a.AlertID]
		switch {
		case !ok:
			t.Errorf("unexpected alert on the topic: %s", m.Value)
		case a.Rule != want.Rule || a.MessageID != want.MessageID || a.ConversationID != want.ConversationID ||
			a.Source != want.Source || string(m.Key) != want.ConversationID:
			t.Errorf("alert %s on the topic = %s (key %s), want rule %s at %s %+v", a.AlertID, m.Value, m.Key, want.Rule, want.MessageID, want.Source)
		}
		if prev, ok := byID[a.AlertID]; ok {
			copies++
			if string(prev) != string(m.Value) {
				t.Errorf("two copies of alert %s differ:\n%s\n%s", a.AlertID, prev, m.Value)
			}
		}
		byID[a.AlertID] = m.Value
	}
	if len(byID) != len(tr.expected) {
		t.Errorf("the alerts topic holds %d distinct alerts, want %d", len(byID), len(tr.expected))
	}
	t.Logf("alerts topic: %d distinct alerts, %d redelivered copies; alerts table: %d rows",
		len(byID), copies, in.queryCount(t, "SELECT count() FROM "+in.database+".alerts"))

}

func (in *integration) queryCount(t *testing.T, query string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n uint64
	if err := in.conn.QueryRow(ctx, query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestAlerterWaitsForTheAlertsTableAndIsReadyOnceItExists(t *testing.T) {
	in := newIntegration(t)
	// A database without the schema: the alerter must wait, saying why.
	missing := in.database + "_later"
	args := in.args("-clickhouse-database=" + missing)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan *service.Runtime, 1)
	done := make(chan error, 1)
	var logs strings.Builder
	var logsMu sync.Mutex
	go func() {
		done <- service.Run(ctx, "alerter", &Component{}, "127.0.0.1:0", args, func(string) (string, bool) { return "", false },
			writerFunc(func(p []byte) (int, error) { logsMu.Lock(); defer logsMu.Unlock(); return logs.Write(p) }),
			func(rt *service.Runtime) { started <- rt })
	}()
	rt := <-started
	testenv.WaitUntil(t, 30*time.Second, "/readyz naming the missing table", func() (bool, string) {
		_, why := rt.Ready()
		return strings.Contains(why, "starting: clickhouse alerts table") && strings.Contains(why, missing+".alerts does not exist"), why
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = in.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+missing)
	})
	stmts, err := sink.SchemaStatements(missing)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if err := in.conn.Exec(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitUntil(t, 60*time.Second, "ready once the table exists", func() (bool, string) {
		ok, why := rt.Ready()
		return ok, why
	})
	cancel()
	if err := <-done; err != nil {
		logsMu.Lock()
		defer logsMu.Unlock()
		t.Fatalf("alerter stopped with %v\n%s", err, logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestBadRulesFileStopsTheAlerterWithAConfigurationError(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "rules.json")
	if err := os.WriteFile(rules, []byte(`{"rules": [{"name": "r", "kind": "share", "labels": ["fury"], "window": 3, "threshold": 0.5}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	err := service.Run(context.Background(), "alerter", &Component{}, "127.0.0.1:0", []string{"-http-addr=127.0.0.1:0", "-rules=" + rules},
		func(string) (string, bool) { return "", false }, &logs, nil)
	var ce *service.ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `unknown label "fury"`) {
		t.Fatalf("Run = %v, want a configuration error naming the label", err)
	}
	err = service.Run(context.Background(), "alerter", &Component{}, "127.0.0.1:0", []string{"-http-addr=127.0.0.1:0"},
		func(string) (string, bool) { return "", false }, &logs, nil)
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "-rules is required") {
		t.Fatalf("Run without -rules = %v, want a configuration error", err)
	}
}

func TestTwoAlertersShareThePartitionsAndOneIsKilled(t *testing.T) {
	in := newIntegration(t)
	bin := testenv.BuildCommand(t, "./cmd/alerter")
	tr := buildTraffic(40)
	args := in.args("-batch-size=50", "-flush-interval=20ms")
	produced := in.produceSlowly(t, tr.msgs, 50, 100*time.Millisecond)
	onTopic := in.watchTopic(t, in.alerts)
	a := testenv.StartProcess(t, bin, args, "alerter a")
	b := testenv.StartProcess(t, bin, args, "alerter b")
	// Once both members own partitions, kill one of them the moment the
	// 100th alert appears (or the next one after that): its partitions (and
	// their conversations' states in Redis) move to the other.
	testenv.WaitUntil(t, 2*time.Minute, "both alerters owning partitions", func() (bool, string) {
		return in.groupShared(t)
	})
	seen := 0
	for len(onTopic) > 0 {
		<-onTopic
		seen++
	}
	for next := true; next || seen < 100; next = false {
		select {
		case <-onTopic:
			seen++
		case <-time.After(time.Minute):
			t.Fatalf("%d alerts on the topic and none for a minute", seen)
		}
	}
	if err := a.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait(t, 30*time.Second)
	st, _ := in.longConvState(t, tr.longConv)
	if st.Messages >= 2000 {
		t.Fatal("the kill came after every message was applied; the test proves nothing")
	}
	t.Logf("killed one of two alerters with %d alerts stored and the long conversation at %d messages", len(in.dedupIDs(t)), st.Messages)
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	testenv.WaitUntil(t, 3*time.Minute, "every event consumed and committed by the survivor", func() (bool, string) {
		return in.committedToTheEnd(t)
	})
	in.checkEachAlertOnce(t, tr)
	if err := b.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.Wait(t, 60*time.Second); err != nil {
		t.Errorf("the surviving alerter exited with %v after SIGTERM, want 0", err)
	}
}

// groupShared reports whether the alerters' group has two members that
// both own partitions of the events topic.
func (in *integration) groupShared(t *testing.T) (bool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := in.kafkaClient().DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{in.group}})
	if err != nil || len(resp.Groups) != 1 {
		return false, fmt.Sprintf("describe group: %v", err)
	}
	owners := 0
	var state []string
	for _, m := range resp.Groups[0].Members {
		n := 0
		for _, tp := range m.MemberAssignments.Topics {
			n += len(tp.Partitions)
		}
		if n > 0 {
			owners++
		}
		state = append(state, fmt.Sprintf("%s: %d partitions", m.ClientHost, n))
	}
	return owners == 2, fmt.Sprintf("group %s: %v", resp.Groups[0].GroupState, state)
}
