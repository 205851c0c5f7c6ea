package sink

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/stage"
)

// The range a ClickHouse DateTime can hold (and clickhouse-go accepts); an
// event time outside it could never be inserted and would block its batch.
var (
	minStorableTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	maxStorableTime = time.Date(2105, 12, 31, 23, 59, 59, 0, time.UTC)
)

// eventRow is one row of the events table, as decoded from one Kafka message
// of the events topic. The insert adds inserted_at and version.
type eventRow struct {
	MessageID       string
	Adapter         string
	RunID           string
	ConversationID  string
	Tenant          string
	SpeakerRole     string
	Language        string
	TextFingerprint string
	Text            string
	Label           string
	ProbLabels      []string
	ProbValues      []float32
	TrueLabel       string
	Truncated       bool
	ContextMessages int64
	ContextSource   string
	Model           string
	LabelSet        string
	CacheHit        bool
	SentAt          time.Time
	ReceivedAt      time.Time
	ClassifiedAt    time.Time
	CacheMs         float32
	ClassifyMs      float32
	PipelineMs      float32
	SourceTopic     string
	SourcePartition int32
	SourceOffset    int64
	EventPartition  int32
	EventOffset     int64
}

// decodeEvent parses and validates one value of the events topic. Every
// error is a *contract.InvalidError whose reason goes into the dead-letter
// headers and metrics. An event it accepts always makes an insertable row:
// a value ClickHouse or the driver would refuse would block its batch
// forever.
func decodeEvent(raw []byte, maxBytes int) (contract.EmotionEvent, error) {
	ev, err := stage.UnmarshalEvent(raw, maxBytes)
	if err != nil {
		return ev, err
	}
	return ev, validateEvent(&ev)
}

func validateEvent(ev *contract.EmotionEvent) error {
	required := []struct{ name, value string }{
		{"message_id", ev.MessageID},
		{"run_id", ev.RunID},
		{"tenant", ev.Tenant},
		{"label", ev.Label},
	}
	for _, f := range required {
		if f.value == "" {
			return invalid(contract.ReasonSchema, "%s is required", f.name)
		}
	}
	times := []struct {
		name string
		t    time.Time
	}{
		{"sent_at", ev.SentAt},
		{"received_at", ev.ReceivedAt},
		{"classified_at", ev.ClassifiedAt},
	}
	for _, f := range times {
		if f.t.Before(minStorableTime) || f.t.After(maxStorableTime) {
			return invalid(contract.ReasonSchema, "%s %s is missing or outside %s..%s", f.name,
				f.t.Format(time.RFC3339), minStorableTime.Format(time.RFC3339), maxStorableTime.Format(time.RFC3339))
		}
	}
	if ev.Source.Partition < 0 || ev.Source.Partition > math.MaxInt32 {
		return invalid(contract.ReasonSchema, "source.partition %d is out of range", ev.Source.Partition)
	}
	return nil
}

func invalid(r contract.Reason, format string, args ...any) error {
	return &contract.InvalidError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// newEventRow flattens a valid event and the position it was read from.
func newEventRow(ev *contract.EmotionEvent, partition int, offset int64) eventRow {
	labels := make([]string, 0, len(ev.Probabilities))
	for l := range ev.Probabilities {
		labels = append(labels, l)
	}
	// Sorted so that the arrays of one event are the same on every insert.
	sort.Strings(labels)
	probs := make([]float32, len(labels))
	for i, l := range labels {
		probs[i] = float32(ev.Probabilities[l])
	}
	return eventRow{
		MessageID:       ev.MessageID,
		Adapter:         ev.Adapter,
		RunID:           ev.RunID,
		ConversationID:  ev.ConversationID,
		Tenant:          ev.Tenant,
		SpeakerRole:     ev.SpeakerRole,
		Language:        ev.Language,
		TextFingerprint: ev.TextFingerprint,
		Text:            ev.Text,
		Label:           ev.Label,
		ProbLabels:      labels,
		ProbValues:      probs,
		TrueLabel:       ev.TrueLabel,
		Truncated:       ev.Truncated,
		ContextMessages: int64(ev.ContextMessages),
		ContextSource:   ev.ContextSource,
		Model:           ev.Model,
		LabelSet:        ev.LabelSet,
		CacheHit:        ev.CacheHit,
		SentAt:          ev.SentAt.UTC(),
		ReceivedAt:      ev.ReceivedAt.UTC(),
		ClassifiedAt:    ev.ClassifiedAt.UTC(),
		CacheMs:         float32(ev.Timings.CacheMs),
		ClassifyMs:      float32(ev.Timings.ClassifyMs),
		PipelineMs:      float32(ev.Timings.PipelineMs),
		SourceTopic:     ev.Source.Topic,
		SourcePartition: int32(ev.Source.Partition),
		SourceOffset:    ev.Source.Offset,
		EventPartition:  int32(partition),
		EventOffset:     offset,
	}
}
