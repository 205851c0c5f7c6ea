// Package stage owns the plumbing shared by the Kafka consumer-group stages
// (the sink and the alerter): the group reader and the writers built from
// the shared options, topic creation, the retry policy and start-up
// retries, the fetch loop's error pause, and dead-letter messages. Each
// stage keeps its own batching, outputs and commit rules.
package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

// FetchErrorPause is the wait after a fetch error: the reader retries by
// itself, and the pause keeps a lasting error from spinning the loop.
const FetchErrorPause = 500 * time.Millisecond

// MessageSource is the consumer group's reader (a *kafka.Reader).
type MessageSource interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	// CommitMessages commits, per partition, the highest offset given.
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// MessageWriter writes to a topic (a *kafka.Writer).
type MessageWriter interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

// ReaderOptions is what differs between the stages' consumer-group readers.
type ReaderOptions struct {
	Brokers []string
	GroupID string
	Topic   string
	// MaxWait is the longest a fetch waits for the broker to fill it.
	MaxWait time.Duration
	// SessionTimeout is how soon the partitions of a member that died are
	// handed to the others; heartbeats go every quarter of it.
	SessionTimeout time.Duration
	// Dialer carries the brokers' TLS and SASL (internal/secure).
	Dialer *kafka.Dialer
	Log    *slog.Logger
}

// NewReader is a consumer-group reader that starts at the first offset of
// a new group, follows partition changes and commits only when asked
// (CommitInterval 0: CommitMessages commits before it returns).
func NewReader(o ReaderOptions) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:               o.Brokers,
		GroupID:               o.GroupID,
		Topic:                 o.Topic,
		MinBytes:              1,
		MaxBytes:              8 << 20,
		MaxWait:               o.MaxWait,
		QueueCapacity:         1000,
		StartOffset:           kafka.FirstOffset,
		SessionTimeout:        o.SessionTimeout,
		HeartbeatInterval:     o.SessionTimeout / 4,
		WatchPartitionChanges: true,
		ErrorLogger:           KafkaErrorLogger(o.Log),
		Dialer:                o.Dialer,
	})
}

// WriterOptions is what differs between the stages' writers.
type WriterOptions struct {
	Brokers   []string
	Transport kafka.RoundTripper
	Topic     string
	Balancer  kafka.Balancer
	// BatchTimeout is short: the stages write one call per batch and need
	// not wait for more.
	BatchTimeout time.Duration
	WriteTimeout time.Duration
	Log          *slog.Logger
}

// NewWriter is a writer that waits for all in-sync replicas.
func NewWriter(o WriterOptions) *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(o.Brokers...),
		Transport:    o.Transport,
		Topic:        o.Topic,
		Balancer:     o.Balancer,
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: o.BatchTimeout,
		WriteTimeout: o.WriteTimeout,
		ErrorLogger:  KafkaErrorLogger(o.Log),
	}
}

// KafkaErrorLogger logs kafka-go's errors as warnings.
func KafkaErrorLogger(log *slog.Logger) kafka.Logger {
	return kafka.LoggerFunc(func(msg string, args ...any) {
		log.Warn("kafka: " + fmt.Sprintf(msg, args...))
	})
}

// EnsureTopics creates those of topics that do not exist. ctx bounds the
// request.
func EnsureTopics(ctx context.Context, client *kafka.Client, topics []string, partitions, replicationFactor int) error {
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: replicationFactor})
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("create topics %s: %w", strings.Join(topics, ", "), err)
	}
	var errs []error
	for _, t := range topics {
		if err := resp.Errors[t]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("create topic %s: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

// NewRetryBackoff is the stages' retry policy of batch and start-up steps:
// exponential up to 5s between attempts, forever.
func NewRetryBackoff() backoff.BackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second),
		backoff.WithMaxElapsedTime(0),
	)
}

// RetryStartup runs a start-up step with NewRetryBackoff until it succeeds
// or ctx ends; notReady hears which step waits and why, for /readyz.
func RetryStartup(ctx context.Context, log *slog.Logger, notReady func(why string), step string, op func(context.Context) error) error {
	notReady("starting: " + step)
	return backoff.RetryNotify(func() error { return op(ctx) }, backoff.WithContext(NewRetryBackoff(), ctx),
		func(err error, wait time.Duration) {
			notReady(fmt.Sprintf("starting: %s: %v", step, err))
			log.Warn("start-up step failed; retrying", "step", step, "retry_in", wait, "err", err)
		})
}

// StartupError is nil when start-up ended because ctx did (a shutdown
// before the stage was ready is not a failure).
func StartupError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// NewDeadLetter is m with its key, value and headers, followed by the
// contract's dead-letter headers: why it was rejected, when, and where it
// came from.
func NewDeadLetter(m kafka.Message, inv *contract.InvalidError, rejectedAt time.Time) kafka.Message {
	headers := make([]kafka.Header, 0, len(m.Headers)+6)
	headers = append(headers, m.Headers...)
	headers = append(headers,
		kafka.Header{Key: contract.HeaderReason, Value: []byte(inv.Reason)},
		kafka.Header{Key: contract.HeaderDetail, Value: []byte(inv.Detail)},
		kafka.Header{Key: contract.HeaderSourceTopic, Value: []byte(m.Topic)},
		kafka.Header{Key: contract.HeaderSourcePartition, Value: []byte(strconv.Itoa(m.Partition))},
		kafka.Header{Key: contract.HeaderSourceOffset, Value: []byte(strconv.FormatInt(m.Offset, 10))},
		kafka.Header{Key: contract.HeaderRejectedAt, Value: []byte(rejectedAt.UTC().Format(time.RFC3339Nano))},
	)
	return kafka.Message{Key: m.Key, Value: m.Value, Headers: headers}
}

// Sleep waits for d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// CloseLogged closes something at shutdown, logging a failure as a
// warning ("closing the <what>").
func CloseLogged(log *slog.Logger, what string, closeFn func() error) {
	if err := closeFn(); err != nil {
		log.Warn("closing the "+what, "err", err)
	}
}

// SplitList splits a comma-separated list, dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
