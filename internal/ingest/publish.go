package ingest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// publisher writes events and dead letters to Kafka, acknowledged by all
// in-sync replicas. Concurrent calls share the producer's batches.
type publisher struct {
	w    *kafka.Writer
	log  *slog.Logger
	warn *logLimiter
	m    *metrics
}

func newPublisher(cfg *Config, log *slog.Logger, warn *logLimiter, m *metrics) *publisher {
	return &publisher{
		w: &kafka.Writer{
			Addr:      kafka.TCP(cfg.Brokers...),
			Transport: cfg.kafka.Transport(),
			// The Java clients' partitioner, so that events of a
			// conversation land where other producers would put them.
			Balancer:     &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll,
			BatchSize:    max(cfg.BatchSize*cfg.Workers, 100),
			BatchTimeout: cfg.PublishLinger,
			// The producer's own retries; publish retries beyond them.
			MaxAttempts:            3,
			AllowAutoTopicCreation: false,
		},
		log: log, warn: warn, m: m,
	}
}

// publish writes msgs (each names its topic) and returns once all are
// acknowledged, retrying what failed with back-off; it returns an error
// only when ctx ends first (some messages may then be written anyway,
// which at-least-once delivery allows).
func (p *publisher) publish(ctx context.Context, msgs []kafka.Message) error {
	b := newRetryBackoff()
	pending := msgs
	for {
		err := p.w.WriteMessages(ctx, pending...)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		p.m.publishErrors.Inc()
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) && len(werrs) == len(pending) {
			var failed []kafka.Message
			for i, e := range werrs {
				if e != nil {
					failed = append(failed, pending[i])
				}
			}
			pending = failed
		}
		p.warn.log(p.log, "publish", "publishing to Kafka failed; retrying", "messages", len(pending), "err", err)
		if err := sleepCtx(ctx, b.NextBackOff()); err != nil {
			return err
		}
	}
}

func (p *publisher) close() error { return p.w.Close() }

// logLimiter logs a warning of each kind at most once per interval, saying
// how many it held back, so that an outage does not become a log line per
// message or batch.
type logLimiter struct {
	every time.Duration

	mu         sync.Mutex
	last       map[string]time.Time
	suppressed map[string]int
}

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, last: map[string]time.Time{}, suppressed: map[string]int{}}
}

// log writes msg at warning level unless a warning of kind was written
// within the interval.
func (l *logLimiter) log(log *slog.Logger, kind, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if last, ok := l.last[kind]; ok && now.Sub(last) < l.every {
		l.suppressed[kind]++
		l.mu.Unlock()
		return
	}
	n := l.suppressed[kind]
	l.last[kind], l.suppressed[kind] = now, 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	log.Warn(msg, args...)
}
