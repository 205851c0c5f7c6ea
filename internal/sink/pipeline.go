package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/stage"
)

// eventStore stores event rows (ClickHouse).
type eventStore interface {
	Insert(ctx context.Context, rows []eventRow) error
}

// pipelineConfig is how the pipeline batches and retries.
type pipelineConfig struct {
	// BatchSize is the most messages in a batch.
	BatchSize int
	// FlushInterval is the longest a batch waits for more messages after its
	// first one.
	FlushInterval time.Duration
	// IdleFlush, when positive, ends a batch early once it holds the last
	// message of its newest message's partition (the partition's high-water
	// mark as fetched) and nothing more has arrived for this long: a sink
	// that has caught up stores events within IdleFlush instead of waiting
	// out FlushInterval, and one that lags still batches fully.
	IdleFlush time.Duration
	// InsertTimeout bounds each insert attempt.
	InsertTimeout time.Duration
	// KafkaTimeout bounds each dead-letter write and offset commit.
	KafkaTimeout time.Duration
	// DrainTimeout bounds storing and committing the batch in hand after the
	// context ends.
	DrainTimeout time.Duration
	// MaxEventBytes is the largest event accepted; larger ones are dead
	// letters.
	MaxEventBytes int
	// Backoff makes the policy for retrying a failed insert or dead-letter
	// write; retries go on until they succeed or the context ends.
	Backoff func() backoff.BackOff
}

// pipeline moves events from the events topic to ClickHouse, one batch at a
// time: fetch a batch, write its malformed messages to the dead-letter topic,
// insert its events, then commit its offsets. Each step is retried until it
// succeeds, and nothing more is fetched meanwhile, so an offset is committed
// only after everything before it on its partition is stored or dead-lettered.
type pipeline struct {
	cfg         pipelineConfig
	src         stage.MessageSource
	store       eventStore
	deadLetters stage.MessageWriter
	metrics     *metrics
	health      *health
	log         *slog.Logger
	// lag is per partition; only the pipeline's goroutine uses it.
	lag *stage.ConsumerLag
}

// topicPartition names one partition of a topic.
type topicPartition = stage.TopicPartition

// batch is messages fetched and not yet committed.
type batch struct {
	messages    int
	rows        []eventRow
	deadLetters []kafka.Message
	reasons     []contract.Reason // of deadLetters, for the metrics
	// last is the highest offset fetched per partition: what the commit
	// sends.
	last map[topicPartition]int64

	// Steps done, so that a retried flush does not repeat them.
	deadLettersWritten bool
	inserted           bool
}

func newPipeline(cfg pipelineConfig, src stage.MessageSource, store eventStore, deadLetters stage.MessageWriter,
	m *metrics, h *health, log *slog.Logger) *pipeline {
	return &pipeline{
		cfg: cfg, src: src, store: store, deadLetters: deadLetters,
		metrics: m, health: h, log: log,
		lag: stage.NewConsumerLag(m.consumerLag),
	}
}

// run works until ctx ends, then stores and commits the batch in hand
// (bounded by DrainTimeout) and returns. It returns an error only if that
// last batch could not be stored, or the reader failed for good.
func (p *pipeline) run(ctx context.Context) error {
	for {
		b, fetchErr := p.fill(ctx)
		if b.messages > 0 {
			if err := p.storeBatch(ctx, b); err != nil {
				return errors.Join(err, fetchErr)
			}
		}
		if fetchErr != nil {
			return fetchErr
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// fill fetches messages into a new batch until it holds BatchSize messages,
// FlushInterval has passed since its first message, the sink has caught up
// and been idle for IdleFlush, or ctx ends.
func (p *pipeline) fill(ctx context.Context) (*batch, error) {
	b := &batch{last: map[topicPartition]int64{}}
	var deadline time.Time
	caughtUp := false // the newest message was its partition's last
	for b.messages < p.cfg.BatchSize {
		fetchCtx, cancel := ctx, context.CancelFunc(func() {})
		idleWait := caughtUp && p.cfg.IdleFlush > 0 && time.Until(deadline) > p.cfg.IdleFlush
		switch {
		case idleWait:
			fetchCtx, cancel = context.WithTimeout(ctx, p.cfg.IdleFlush)
		case b.messages > 0:
			fetchCtx, cancel = context.WithDeadline(ctx, deadline)
		}
		m, err := p.src.FetchMessage(fetchCtx)
		idle := idleWait && errors.Is(fetchCtx.Err(), context.DeadlineExceeded)
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return b, nil
			case b.messages > 0 && !time.Now().Before(deadline):
				return b, nil
			case idle:
				p.metrics.idleFlushes.Inc()
				return b, nil
			case errors.Is(err, io.EOF):
				return b, fmt.Errorf("events reader closed: %w", err)
			}
			p.metrics.fetchErrors.Inc()
			p.log.Warn("fetching from the events topic failed; the reader retries", "err", err)
			if !stage.Sleep(ctx, stage.FetchErrorPause) {
				return b, nil
			}
			continue
		}
		if b.messages == 0 {
			deadline = time.Now().Add(p.cfg.FlushInterval)
		}
		p.add(b, m)
		caughtUp = m.HighWaterMark > 0 && m.Offset+1 >= m.HighWaterMark
	}
	return b, nil
}

// add decodes m into b: a row, or a dead letter if m is malformed.
func (p *pipeline) add(b *batch, m kafka.Message) {
	b.messages++
	tp := topicPartition{Topic: m.Topic, Partition: m.Partition}
	if off, ok := b.last[tp]; !ok || m.Offset > off {
		b.last[tp] = m.Offset
	}
	p.lag.Fetched(m)

	ev, err := decodeEvent(m.Value, p.cfg.MaxEventBytes)
	if err != nil {
		var inv *contract.InvalidError
		if !errors.As(err, &inv) {
			inv = &contract.InvalidError{Reason: contract.ReasonSchema, Detail: err.Error()}
		}
		p.log.Warn("malformed event; sending it to the dead-letter topic",
			"topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "reason", inv.Reason, "detail", inv.Detail)
		b.deadLetters = append(b.deadLetters, stage.NewDeadLetter(m, inv, time.Now()))
		b.reasons = append(b.reasons, inv.Reason)
		return
	}
	b.rows = append(b.rows, newEventRow(&ev, m.Partition, m.Offset))
}

// storeBatch flushes b; if ctx ends first, it tries once more, bounded by
// DrainTimeout, so that a shutdown keeps the work already fetched.
func (p *pipeline) storeBatch(ctx context.Context, b *batch) error {
	if ctx.Err() == nil {
		err := p.flush(ctx, b)
		if err == nil || ctx.Err() == nil {
			return err
		}
	}
	p.health.notReadyBecause("shutting down")
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.DrainTimeout)
	defer cancel()
	if err := p.flush(drainCtx, b); err != nil {
		return fmt.Errorf("shutting down: %d fetched messages not stored or not committed (they will be delivered again): %w", b.messages, err)
	}
	p.log.Info("stored and committed the last batch", "messages", b.messages)
	return nil
}

// flush writes b's dead letters, inserts its rows and commits its offsets.
// It fails only if ctx ends first.
func (p *pipeline) flush(ctx context.Context, b *batch) error {
	if len(b.deadLetters) > 0 && !b.deadLettersWritten {
		err := p.retry(ctx, p.cfg.KafkaTimeout, func(ctx context.Context) error {
			return p.deadLetters.WriteMessages(ctx, b.deadLetters...)
		}, func(err error, wait time.Duration) {
			p.metrics.deadLetterErrors.Inc()
			p.log.Warn("writing dead letters failed; retrying", "count", len(b.deadLetters), "retry_in", wait, "err", err)
		})
		if err != nil {
			return fmt.Errorf("write %d dead letters: %w", len(b.deadLetters), err)
		}
		b.deadLettersWritten = true
		for _, r := range b.reasons {
			p.metrics.deadLetters.WithLabelValues(string(r)).Inc()
		}
	}
	if len(b.rows) > 0 && !b.inserted {
		var took time.Duration
		err := p.retry(ctx, p.cfg.InsertTimeout, func(ctx context.Context) error {
			start := time.Now()
			err := p.store.Insert(ctx, b.rows)
			took = time.Since(start)
			if errors.Is(ctx.Err(), context.Canceled) {
				// Shutting down, not a ClickHouse failure.
				return err
			}
			p.health.inserted(err)
			return err
		}, func(err error, wait time.Duration) {
			p.metrics.insertErrors.Inc()
			p.log.Warn("inserting into clickhouse failed; retrying the same batch", "rows", len(b.rows), "retry_in", wait, "err", err)
		})
		if err != nil {
			return fmt.Errorf("insert %d events: %w", len(b.rows), err)
		}
		b.inserted = true
		now := time.Now()
		p.metrics.rowsInserted.Add(float64(len(b.rows)))
		p.metrics.batchRows.Observe(float64(len(b.rows)))
		p.metrics.insertSeconds.Observe(took.Seconds())
		for i := range b.rows {
			p.metrics.endToEndSeconds.Observe(now.Sub(b.rows[i].SentAt).Seconds())
		}
	}
	return p.commit(ctx, b)
}

// commit commits the highest offset of each partition in b. A failed commit
// is not retried: the next batch's commit covers the same partitions, and
// until then the events are merely delivered again. It fails only if ctx
// ended, so that a shutdown retries it.
func (p *pipeline) commit(ctx context.Context, b *batch) error {
	msgs := make([]kafka.Message, 0, len(b.last))
	for tp, off := range b.last {
		msgs = append(msgs, kafka.Message{Topic: tp.Topic, Partition: tp.Partition, Offset: off})
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.KafkaTimeout)
	defer cancel()
	if err := p.src.CommitMessages(cctx, msgs...); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("commit offsets: %w", err)
		}
		p.metrics.commitErrors.Inc()
		p.log.Warn("committing offsets failed; the events may be delivered again", "err", err)
		return nil
	}
	for tp, off := range b.last {
		p.lag.Committed(tp, off+1)
	}
	return nil
}

// retry runs op, each attempt bounded by timeout, until it succeeds or ctx
// ends; failed hears of each failure and the wait before the next attempt.
func (p *pipeline) retry(ctx context.Context, timeout time.Duration, op func(context.Context) error, failed backoff.Notify) error {
	return backoff.RetryNotify(func() error {
		actx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return op(actx)
	}, backoff.WithContext(p.cfg.Backoff(), ctx), failed)
}
