package evaluate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/testenv"
)

// event is a row inserted straight into the sink's raw events table.
type event struct {
	id, adapter, run, label, trueLabel string
	version                            uint64
}

// newStoreWithEvents makes the sink's schema in a new database (by running
// the sink until it is ready: it migrates at start-up), inserts events into
// the raw table, duplicates included, and opens a Store on it.
func newStoreWithEvents(t *testing.T, events []event) *Store {
	t.Helper()
	chAddr, brokers := testenv.ClickHouse(t), testenv.Kafka(t)
	db := testenv.Name(t, "eval")
	snk := testenv.Start(t, "sink", &sink.Component{}, "-kafka-brokers="+brokers, "-events-topic="+db+"_events",
		"-dead-letter-topic="+db+"_dlq", "-group-id="+db, "-clickhouse-addr="+chAddr, "-clickhouse-database="+db)
	if err := snk.Stop(); err != nil {
		t.Fatal(err)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}, DialTimeout: 10 * time.Second, ReadTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
		conn.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Separate inserts, so that duplicates sit in separate parts, as
	// re-delivered events do until a merge.
	sent := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, e := range events {
		b, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".events (message_id, adapter, run_id, text_fingerprint, label, true_label, sent_at, received_at, classified_at, inserted_at, version)")
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Append(e.id, e.adapter, e.run, "fp-"+e.id, e.label, e.trueLabel, sent, sent, sent, sent, e.version); err != nil {
			t.Fatal(err)
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	s, err := OpenStore(ctx, StoreOptions{Addrs: []string{chAddr}, Database: db, User: "default", Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestIntegrationStoreReadsDeduplicatedRuns: events delivered twice count
// once, with the label of the latest insert; runs are told apart by run id
// and adapter.
func TestIntegrationStoreReadsDeduplicatedRuns(t *testing.T) {
	s := newStoreWithEvents(t, []event{
		{"m1", "emo@1", "old", "joy", "joy", 1},
		{"m2", "emo@1", "old", "anger", "joy", 1},
		{"m3", "emo@1", "old", "fear", "fear", 1},
		{"m4", "emo@1", "old", "joy", "", 1},
		// m1 again: re-delivered with another label; the later wins.
		{"m1", "emo@1", "old", "sadness", "joy", 2},
		{"m1", "emo@1", "old", "sadness", "joy", 2},
		{"m1", "emo@2", "new", "joy", "joy", 1},
		{"m2", "emo@2", "new", "joy", "joy", 1},
		{"m2", "emo@2", "new", "joy", "joy", 1},
		{"m5", "emo@2", "new", "neutral", "neutral", 1},
		{"x", "emo@1", "live", "joy", "", 1},
		{"x", "emo@2", "live", "joy", "", 1},
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	rep, err := EvaluateRun(ctx, s, RunSelector{RunID: "old"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// m1 joy→sadness, m2 joy→anger, m3 fear→fear; m4 has no ground truth.
	if rep.Events != 4 || rep.WithoutTruth != 1 || rep.Scores.Messages != 3 || rep.Scores.Correct != 1 || rep.Run.Adapter != "emo@1" {
		t.Fatalf("report %+v", rep)
	}
	if got := rep.Scores.Labels; strings.Join(got, ",") != "anger,fear,joy,sadness" {
		t.Errorf("labels %v", got)
	}

	cmp, err := CompareRuns(ctx, s, RunSelector{RunID: "old"}, RunSelector{RunID: "new"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	// Both runs have m1 (sadness / joy) and m2 (anger / joy).
	if cmp.Agreement.Messages != 2 || cmp.Agreement.Agreed != 0 || cmp.OnlyA != 2 || cmp.OnlyB != 1 || cmp.Changed != 2 {
		t.Fatalf("comparison %+v", cmp)
	}
	want := []ChangedMessage{{"m1", "fp-m1", "sadness", "joy"}, {"m2", "fp-m2", "anger", "joy"}}
	if len(cmp.ChangedMessages) != 2 || cmp.ChangedMessages[0] != want[0] || cmp.ChangedMessages[1] != want[1] {
		t.Errorf("changed %+v, want %+v", cmp.ChangedMessages, want)
	}
	if limited, err := CompareRuns(ctx, s, RunSelector{RunID: "old"}, RunSelector{RunID: "new"}, 1); err != nil || len(limited.ChangedMessages) != 1 || limited.Changed != 2 {
		t.Errorf("limit 1: %+v %v", limited, err)
	}

	if _, err := EvaluateRun(ctx, s, RunSelector{RunID: "nope"}, nil); !errors.Is(err, ErrUnknownRun) {
		t.Errorf("unknown run: %v", err)
	}
	if _, err := EvaluateRun(ctx, s, RunSelector{RunID: "old", Adapter: "emo@9"}, nil); !errors.Is(err, ErrUnknownRun) {
		t.Errorf("unknown adapter: %v", err)
	}
	if _, err := EvaluateRun(ctx, s, RunSelector{RunID: "live"}, nil); err == nil || !strings.Contains(err.Error(), "several adapters (emo@1, emo@2)") {
		t.Errorf("a run of several adapters: %v", err)
	}
	if _, err := EvaluateRun(ctx, s, RunSelector{RunID: "live", Adapter: "emo@1"}, nil); err == nil || !strings.Contains(err.Error(), "has a ground-truth label to score against") {
		t.Errorf("a run without ground truth: %v", err)
	}
	if _, err := CompareRuns(ctx, s, RunSelector{RunID: "new"}, RunSelector{RunID: "live", Adapter: "emo@1"}, 5); err == nil || !strings.Contains(err.Error(), "no message in common") {
		t.Errorf("runs without common messages: %v", err)
	}
}

func TestIntegrationOpenStoreRefusesAnotherDatabase(t *testing.T) {
	chAddr := testenv.ClickHouse(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := OpenStore(ctx, StoreOptions{Addrs: []string{chAddr}, Database: testenv.Name(t, "absent"), User: "default", Timeout: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "no events_dedup view") {
		t.Errorf("a database without the sink's tables: %v", err)
	}
	_, err = OpenStore(ctx, StoreOptions{Addrs: []string{"127.0.0.1:1"}, Database: "emoflow", User: "default", Timeout: 2 * time.Second})
	if err == nil {
		t.Error("an address nobody listens on")
	}
}
