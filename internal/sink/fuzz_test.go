package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
)

// FuzzDecodeEvent feeds arbitrary values of the events topic to the sink's
// decoder. A refusal is a *contract.InvalidError with a known reason and a
// detail; an accepted event fits the limit, makes an insertable row (times
// in DateTime's range, a partition that fits Int32, probability labels
// sorted), re-encodes to a value that decodes to the same event, and cut
// short by its last byte is refused.
func FuzzDecodeEvent(f *testing.F) {
	good, err := json.Marshal(validEvent(3))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"message_id":"m","run_id":"live","tenant":"t","label":"joy","sent_at":"1970-01-01T00:00:00Z",` +
		`"received_at":"2105-12-31T23:59:59Z","classified_at":"2000-01-01T00:00:00+14:00","source":{"partition":2147483647}}`))
	f.Add([]byte(`{"message_id":5}`))
	const maxBytes = 4096
	reasons := []contract.Reason{contract.ReasonTooLarge, contract.ReasonInvalidUTF8, contract.ReasonMalformedJSON, contract.ReasonSchema}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw, maxBytes)
		if err != nil {
			var inv *contract.InvalidError
			if !errors.As(err, &inv) || !slices.Contains(reasons, inv.Reason) || inv.Detail == "" {
				t.Fatalf("error %v (%T) is not an InvalidError with a known reason and a detail", err, err)
			}
			if len(raw) > maxBytes && inv.Reason != contract.ReasonTooLarge {
				t.Fatalf("%d bytes refused as %s, want %s", len(raw), inv.Reason, contract.ReasonTooLarge)
			}
			return
		}
		if len(raw) > maxBytes {
			t.Fatalf("accepted %d bytes, limit %d", len(raw), maxBytes)
		}
		row := newEventRow(&ev, 1, 2)
		for name, tm := range map[string][2]time.Time{
			"sent_at":       {row.SentAt, ev.SentAt},
			"received_at":   {row.ReceivedAt, ev.ReceivedAt},
			"classified_at": {row.ClassifiedAt, ev.ClassifiedAt},
		} {
			if got := tm[0]; !got.Equal(tm[1]) || got.Location() != time.UTC || got.Before(minStorableTime) || got.After(maxStorableTime) {
				t.Fatalf("%s %v stored as %v, outside %v..%v or not in UTC", name, tm[1], got, minStorableTime, maxStorableTime)
			}
		}
		if int(row.SourcePartition) != ev.Source.Partition || row.SourcePartition < 0 {
			t.Fatalf("source partition %d stored as %d", ev.Source.Partition, row.SourcePartition)
		}
		if !slices.IsSorted(row.ProbLabels) || len(row.ProbLabels) != len(ev.Probabilities) || len(row.ProbValues) != len(row.ProbLabels) {
			t.Fatalf("probabilities %v flattened to %v %v", ev.Probabilities, row.ProbLabels, row.ProbValues)
		}
		for _, v := range row.ProbValues {
			if math.IsNaN(float64(v)) {
				t.Fatalf("probability NaN from %v", ev.Probabilities)
			}
		}
		if ev.MessageID == "" || ev.RunID == "" || ev.Tenant == "" || ev.Label == "" {
			t.Fatalf("accepted an event without its key fields: %+v", ev)
		}
		again, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		ev2, err := decodeEvent(again, 0)
		if err != nil {
			t.Fatalf("re-encoded event %s: %v", again, err)
		}
		if again2, _ := json.Marshal(ev2); !bytes.Equal(again2, again) {
			t.Fatalf("re-encoded event decodes to another:\n%s\n%s", again, again2)
		}
		trimmed := bytes.TrimSpace(raw)
		if _, err := decodeEvent(trimmed[:len(trimmed)-1], maxBytes); err == nil {
			t.Fatalf("accepted %q cut by its last byte", trimmed)
		}
	})
}
