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
	p0 := TopicPartition{Topic: "events", Partition: 0}
	for _, step := range []struct {
		what string
		do   func()
		want float64
	}{
		// Before any commit, the first offset fetched stands for the
		// committed one.
		{"the first fetch", func() { lag.Fetched(kafka.Message{Topic: "events", Offset: 10, HighWaterMark: 100}) }, 90},
		{"committing up to 50", func() { lag.Committed(p0, 50) }, 50},
		{"an older commit (a retried batch)", func() { lag.Committed(p0, 20) }, 50},
		{"committing past the high-water mark", func() { lag.Committed(p0, 120) }, 0},
	} {
		step.do()
		if got := testutil.ToFloat64(gauge.WithLabelValues("events", "0")); got != step.want {
			t.Fatalf("lag after %s = %v, want %v", step.what, got, step.want)
		}
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
