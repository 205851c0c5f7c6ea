package stage

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

func TestNewDeadLetterKeepsTheMessageAndAddsTheContractHeaders(t *testing.T) {
	m := kafka.Message{Topic: "events", Partition: 3, Offset: 42, Key: []byte("k"), Value: []byte("{bad"),
		Headers: []kafka.Header{{Key: "trace", Value: []byte("t1")}}}
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	dl := NewDeadLetter(m, &contract.InvalidError{Reason: contract.ReasonSchema, Detail: "label is required"}, at)

	if string(dl.Key) != "k" || string(dl.Value) != "{bad" || dl.Topic != "" {
		t.Fatalf("dead letter = key %q value %q topic %q; want the source key and value, no topic (the writer's)", dl.Key, dl.Value, dl.Topic)
	}
	got := map[string]string{}
	var keys []string
	for _, h := range dl.Headers {
		got[h.Key] = string(h.Value)
		keys = append(keys, h.Key)
	}
	want := map[string]string{
		"trace":                        "t1",
		contract.HeaderReason:          string(contract.ReasonSchema),
		contract.HeaderDetail:          "label is required",
		contract.HeaderSourceTopic:     "events",
		contract.HeaderSourcePartition: "3",
		contract.HeaderSourceOffset:    "42",
		contract.HeaderRejectedAt:      "2026-01-02T02:04:05.000000006Z",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("header %s = %q, want %q", k, got[k], v)
		}
	}
	if len(keys) != len(want) || keys[0] != "trace" {
		t.Errorf("headers %v: want the source's first, then the six of the contract", keys)
	}
}

func TestSplitListDropsEmptyItems(t *testing.T) {
	for in, want := range map[string][]string{
		"":               nil,
		" , ,":           nil,
		"a":              {"a"},
		" a:1 ,, b:2 , ": {"a:1", "b:2"},
	} {
		if got := SplitList(in); !slices.Equal(got, want) {
			t.Errorf("SplitList(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStartupErrorIsNilOnlyAfterShutdown(t *testing.T) {
	failed := errors.New("broker down")
	if err := StartupError(context.Background(), failed); !errors.Is(err, failed) {
		t.Errorf("live context: got %v, want %v", err, failed)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := StartupError(ctx, failed); err != nil {
		t.Errorf("ended context: got %v, want nil", err)
	}
}

func TestRetryStartupRetriesAndSaysWhy(t *testing.T) {
	var why []string
	attempts := 0
	err := RetryStartup(context.Background(), discardLogger(), func(s string) { why = append(why, s) }, "kafka topics",
		func(context.Context) error {
			if attempts++; attempts < 2 {
				return errors.New("not yet")
			}
			return nil
		})
	if err != nil || attempts != 2 {
		t.Fatalf("RetryStartup = %v after %d attempts; want success on the second", err, attempts)
	}
	if want := []string{"starting: kafka topics", "starting: kafka topics: not yet"}; !slices.Equal(why, want) {
		t.Errorf("not-ready reasons %q, want %q", why, want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = RetryStartup(ctx, discardLogger(), func(string) {}, "redis", func(context.Context) error { return errors.New("down") })
	if err == nil {
		t.Fatal("RetryStartup returned nil although every attempt failed and ctx ended")
	}
}

func TestSleepStopsWhenTheContextEnds(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Error("Sleep on a live context reported that d did not pass")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep on an ended context reported that d passed")
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Sleep on an ended context took %v", took)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
