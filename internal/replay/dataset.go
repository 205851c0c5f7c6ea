package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/labelmaps"
)

// DatasetOptions say how a data set split becomes chat messages.
type DatasetOptions struct {
	Set   datasets.Set
	Split string
	// Map, when not nil, maps the ground-truth labels; examples whose
	// label has no counterpart are skipped unless KeepUnmapped, which
	// keeps them with their own label.
	Map          *labelmaps.Map
	KeepUnmapped bool
	Tenant       string
	// SentAt is the sent_at of the split's first example; example i is
	// sent i seconds later, so that reloading gives the same messages.
	SentAt time.Time
	// Limit is the most messages; 0 means all.
	Limit int
}

// DatasetStats count what became of a split's examples.
type DatasetStats struct {
	Examples int `json:"examples"`
	Messages int `json:"messages"`
	// NoSingleLabel are examples without one ground-truth label
	// (GoEmotions' multi-label rows).
	NoSingleLabel int `json:"no_single_label"`
	// NoCounterpart are examples whose label the map has no counterpart
	// for.
	NoCounterpart int `json:"no_counterpart"`
	// Invalid are examples that would not be valid chat messages (an
	// empty text, mostly).
	Invalid int `json:"invalid"`
	// Labels counts the messages per (mapped) label.
	Labels map[string]int `json:"labels"`
}

// DatasetMessages turns examples of a split into chat messages with their
// ground truth as label. The message id is "<set>-<split>-<example id>"
// and the conversation id "<set>-<split>-<conversation>", so that loading
// the split again gives the same identities (and the sink's deduplication
// recognises them).
func DatasetMessages(examples []datasets.Example, o DatasetOptions) ([]contract.ChatMessage, DatasetStats, error) {
	st := DatasetStats{Examples: len(examples), Labels: map[string]int{}}
	if o.Map != nil && o.Map.From != string(o.Set) {
		return nil, st, fmt.Errorf("label map %s maps %s labels, not %s", o.Map.Name, o.Map.From, o.Set)
	}
	prefix := string(o.Set) + "-" + o.Split + "-"
	var out []contract.ChatMessage
	for i, e := range examples {
		if o.Limit > 0 && len(out) >= o.Limit {
			break
		}
		label := e.Label
		if label == "" {
			st.NoSingleLabel++
			continue
		}
		if o.Map != nil {
			to, err := o.Map.Apply(label)
			switch {
			case errors.Is(err, labelmaps.ErrNoCounterpart) && o.KeepUnmapped:
			case errors.Is(err, labelmaps.ErrNoCounterpart):
				st.NoCounterpart++
				continue
			case err != nil:
				return nil, st, fmt.Errorf("example %s: %w", e.ID, err)
			default:
				label = to
			}
		}
		m := contract.ChatMessage{
			ID: prefix + e.ID, ConversationID: prefix + e.Conversation, Tenant: o.Tenant,
			// The data sets' speakers are characters or users, none of
			// them an agent or a bot.
			SpeakerRole: "user", Text: e.Text, SentAt: o.SentAt.Add(time.Duration(i) * time.Second).UTC(),
			Language: "en", Label: label,
		}
		raw, err := json.Marshal(m)
		if err != nil {
			return nil, st, fmt.Errorf("example %s: %w", e.ID, err)
		}
		if _, err := contract.DecodeChatMessage(raw, contract.DefaultLimits); err != nil {
			st.Invalid++
			continue
		}
		out = append(out, m)
		st.Labels[label]++
	}
	st.Messages = len(out)
	return out, st, nil
}

// TopicOptions say how a topic that does not exist is created.
type TopicOptions struct {
	Partitions, ReplicationFactor int
}

// Publish writes msgs to topic (key: the conversation id), creating the
// topic when it does not exist, and returns once all are acknowledged.
// conn carries the brokers' TLS and SASL (nil: plain).
func Publish(ctx context.Context, brokers []string, conn *secure.KafkaConn, topic string, t TopicOptions, msgs []contract.ChatMessage) error {
	admin := conn.Client(brokers, 30*time.Second)
	resp, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: topic, NumPartitions: t.Partitions, ReplicationFactor: t.ReplicationFactor}}})
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if err := resp.Errors[topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	w := &kafka.Writer{
		Addr: kafka.TCP(brokers...), Topic: topic, Transport: conn.Transport(),
		// As ingest's: a conversation lands where other producers put it.
		Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchSize: 1000, BatchTimeout: 5 * time.Millisecond, Compression: kafka.Lz4,
		// A just-created topic can lack a leader for a moment.
		MaxAttempts: 10,
	}
	defer w.Close()
	const chunk = 5000
	for start := 0; start < len(msgs); start += chunk {
		batch := make([]kafka.Message, 0, chunk)
		for _, m := range msgs[start:min(start+chunk, len(msgs))] {
			v, err := json.Marshal(m)
			if err != nil {
				return fmt.Errorf("message %s: %w", m.ID, err)
			}
			batch = append(batch, kafka.Message{Key: []byte(m.ConversationID), Value: v})
		}
		if err := w.WriteMessages(ctx, batch...); err != nil {
			return fmt.Errorf("write to topic %s: %w", topic, err)
		}
	}
	return nil
}
