package stage

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

func TestConsumerLagIsHighWaterMarkMinusNextCommit(t *testing.T) {
	gauge := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lag"}, []string{"topic", "partition"})
	lag := NewConsumerLag(gauge)
	p0 := gauge.WithLabelValues("events", "0")

	// Before any commit, the first offset fetched stands for the committed one.
	lag.Fetched(kafka.Message{Topic: "events", Partition: 0, Offset: 10, HighWaterMark: 100})
	if got := testutil.ToFloat64(p0); got != 90 {
		t.Fatalf("lag after the first fetch = %v, want 90", got)
	}
	lag.Committed(TopicPartition{Topic: "events", Partition: 0}, 50)
	if got := testutil.ToFloat64(p0); got != 50 {
		t.Fatalf("lag after committing up to 50 = %v, want 50", got)
	}
	// An older commit (a retried batch) does not move it back.
	lag.Committed(TopicPartition{Topic: "events", Partition: 0}, 20)
	if got := testutil.ToFloat64(p0); got != 50 {
		t.Fatalf("lag after an older commit = %v, want 50", got)
	}
	lag.Committed(TopicPartition{Topic: "events", Partition: 0}, 120)
	if got := testutil.ToFloat64(p0); got != 0 {
		t.Fatalf("lag after committing past the high-water mark = %v, want 0 (never negative)", got)
	}
	// A partition never fetched has no gauge to move.
	lag.Committed(TopicPartition{Topic: "events", Partition: 1}, 5)
	if n := testutil.CollectAndCount(gauge); n != 1 {
		t.Fatalf("%d series, want 1 (partition 0 only)", n)
	}
}

func TestUnmarshalEventReasons(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		want contract.Reason // empty: any reason, as long as the error is an InvalidError
	}{
		{"too large", `{"message_id":"m-000000000000"}`, contract.ReasonTooLarge},
		{"invalid UTF-8", "{\"text\":\"\xff\"}", contract.ReasonInvalidUTF8},
		{"trailing data", `{} {}`, ""},
	} {
		_, err := UnmarshalEvent([]byte(tc.raw), 20)
		var inv *contract.InvalidError
		if !errors.As(err, &inv) {
			t.Errorf("%s: err = %v, want a *contract.InvalidError", tc.name, err)
			continue
		}
		if tc.want != "" && inv.Reason != tc.want {
			t.Errorf("%s: reason %q, want %q", tc.name, inv.Reason, tc.want)
		}
	}
	ev, err := UnmarshalEvent([]byte(`{"message_id":"m1"}`), 0)
	if err != nil || ev.MessageID != "m1" {
		t.Errorf("UnmarshalEvent = %+v, %v; want message m1 (0: no size limit)", ev, err)
	}
}
