package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

// fetchErrorPause is the wait after a fetch error: the reader retries by
// itself, and the pause keeps a lasting error from spinning the loop.
const fetchErrorPause = 500 * time.Millisecond

// messageSource is the consumer group's reader (a *kafka.Reader).
type messageSource interface {
	FetchMessage(ctx context.Context) (kafka.Message, error)
	CommitMessages(ctx context.Context, msgs ...kafka.Message) error
}

// messageWriter writes to a topic (a *kafka.Writer).
type messageWriter interface {
	WriteMessages(ctx context.Context, msgs ...kafka.Message) error
}

type pipelineConfig struct {
	BatchSize     int
	FlushInterval time.Duration
	// StepTimeout bounds each attempt of a step (Redis, Kafka, ClickHouse).
	StepTimeout   time.Duration
	DrainTimeout  time.Duration
	MaxEventBytes int
	// Adapter, when set, keeps only the events of this adapter ("id" for
	// any version, or "id@version").
	Adapter string
	Backoff func() backoff.BackOff
}

// pipeline turns the events topic into alerts, one batch at a time: fetch,
// load the batch's conversation states, apply the events in topic order,
// write the dead letters, publish the alerts, insert them into ClickHouse,
// save the states, commit the offsets. Each step is retried until it
// succeeds, and nothing more is fetched meanwhile, so an offset is committed
// only after every alert its events produced is on the topic and in
// ClickHouse and the state is saved.
//
// Why a redelivery never alerts twice: the fold over a partition's events is
// deterministic (the events topic's order, the stored state), so events
// delivered again after a crash before the save produce the same alerts
// with the same ids (duplicates on the topic, one row in alerts_dedup), and
// events delivered again after the save are at or below the saved offset
// and change nothing.
type pipeline struct {
	cfg         pipelineConfig
	rules       *Rules
	src         messageSource
	states      stateStore
	store       alertStore
	alerts      messageWriter
	deadLetters messageWriter
	m           *metrics
	health      func(step string, err error)
	log         *slog.Logger
	// lag is per partition of the events topic; only the pipeline's
	// goroutine uses it.
	lag map[topicPartition]*partitionLag
}

type topicPartition struct {
	topic     string
	partition int
}

// partitionLag is what the consumer-lag gauge is computed from.
type partitionLag struct {
	highWaterMark int64 // of the newest fetch
	next          int64 // the next offset to commit
}

// run works until ctx ends, then finishes the batch in hand (bounded by
// DrainTimeout) and returns.
func (p *pipeline) run(ctx context.Context) error {
	for {
		msgs, fetchErr := p.fill(ctx)
		if len(msgs) > 0 {
			if err := p.processBatch(ctx, msgs); err != nil {
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

// fill fetches up to BatchSize messages, waiting at most FlushInterval after
// the first.
func (p *pipeline) fill(ctx context.Context) ([]kafka.Message, error) {
	var msgs []kafka.Message
	var deadline time.Time
	for len(msgs) < p.cfg.BatchSize {
		fetchCtx, cancel := ctx, context.CancelFunc(func() {})
		if len(msgs) > 0 {
			fetchCtx, cancel = context.WithDeadline(ctx, deadline)
		}
		m, err := p.src.FetchMessage(fetchCtx)
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return msgs, nil
			case len(msgs) > 0 && !time.Now().Before(deadline):
				return msgs, nil
			case errors.Is(err, io.EOF):
				return msgs, fmt.Errorf("events reader closed: %w", err)
			}
			p.log.Warn("fetching from the events topic failed; the reader retries", "err", err)
			if !sleep(ctx, fetchErrorPause) {
				return msgs, nil
			}
			continue
		}
		if len(msgs) == 0 {
			deadline = time.Now().Add(p.cfg.FlushInterval)
		}
		tp := topicPartition{m.Topic, m.Partition}
		l := p.lag[tp]
		if l == nil {
			// Until the first commit, the first offset fetched is the best
			// guess of the committed one.
			l = &partitionLag{next: m.Offset}
			p.lag[tp] = l
		}
		l.highWaterMark = m.HighWaterMark
		p.setLag(tp, l)
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// processBatch runs the steps; if ctx ends first, it tries again bounded by
// DrainTimeout, so that a shutdown keeps the work already fetched.
func (p *pipeline) processBatch(ctx context.Context, msgs []kafka.Message) error {
	start := time.Now()
	b := p.prepare(msgs)
	if ctx.Err() == nil {
		err := p.steps(ctx, b)
		if err == nil || ctx.Err() == nil {
			p.m.batchSecs.Observe(time.Since(start).Seconds())
			return err
		}
	}
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.DrainTimeout)
	defer cancel()
	if err := p.steps(drainCtx, b); err != nil {
		return fmt.Errorf("shutting down: %d fetched events not processed or not committed (they will be delivered again): %w", len(msgs), err)
	}
	p.log.Info("processed and committed the last batch", "events", len(msgs))
	return nil
}

// batch is one fetch's work; the done flags let a drain skip the steps a
// cancelled attempt finished.
type batch struct {
	msgs        []kafka.Message
	events      []keyedEvent
	deadLetters []kafka.Message
	keys        []convKey

	applied    bool
	alerts     []Alert
	dirty      map[convKey]*convState
	dlqWritten bool
	published  bool
	stored     bool
	stateSaved bool
}

type keyedEvent struct {
	key convKey
	ev  contract.EmotionEvent
}

// prepare decodes and filters msgs.
func (p *pipeline) prepare(msgs []kafka.Message) *batch {
	b := &batch{msgs: msgs}
	seen := map[convKey]bool{}
	for _, m := range msgs {
		ev, err := decodeEvent(m.Value, p.cfg.MaxEventBytes)
		if err != nil {
			var inv *contract.InvalidError
			if !errors.As(err, &inv) {
				inv = &contract.InvalidError{Reason: contract.ReasonSchema, Detail: err.Error()}
			}
			p.log.Warn("malformed event; sending it to the dead-letter topic",
				"topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "reason", inv.Reason, "detail", inv.Detail)
			b.deadLetters = append(b.deadLetters, newDeadLetter(m, inv, time.Now()))
			p.m.events.WithLabelValues(outcomeDeadLetter).Inc()
			continue
		}
		if ev.RunID != contract.LiveRun {
			p.m.events.WithLabelValues(outcomeNotLive).Inc()
			continue
		}
		if !adapterMatches(p.cfg.Adapter, ev.Adapter) {
			p.m.events.WithLabelValues(outcomeOtherAdapter).Inc()
			continue
		}
		k := convKey{ev.Tenant, ev.ConversationID}
		if !seen[k] {
			seen[k] = true
			b.keys = append(b.keys, k)
		}
		b.events = append(b.events, keyedEvent{key: k, ev: ev})
	}
	return b
}

// adapterMatches: an empty filter keeps every adapter; "id" keeps every
// version of id; "id@version" keeps that version.
func adapterMatches(filter, adapter string) bool {
	if filter == "" || adapter == filter {
		return true
	}
	return !strings.Contains(filter, "@") && strings.HasPrefix(adapter, filter+"@")
}

func (p *pipeline) steps(ctx context.Context, b *batch) error {
	if !b.applied && len(b.events) > 0 {
		var states map[convKey]*convState
		err := p.retry(ctx, "load_state", func(ctx context.Context) (err error) {
			states, err = p.states.Load(ctx, b.keys)
			return err
		})
		if err != nil {
			return err
		}
		b.dirty = map[convKey]*convState{}
		for i := range b.events {
			ke := &b.events[i]
			st := states[ke.key]
			outcome, alerts := p.rules.apply(st, &ke.ev)
			p.m.events.WithLabelValues(string(outcome)).Inc()
			if outcome == Applied {
				b.dirty[ke.key] = st
			}
			b.alerts = append(b.alerts, alerts...)
		}
		b.applied = true
	}
	if len(b.deadLetters) > 0 && !b.dlqWritten {
		if err := p.retry(ctx, "dead_letters", func(ctx context.Context) error {
			return p.deadLetters.WriteMessages(ctx, b.deadLetters...)
		}); err != nil {
			return err
		}
		b.dlqWritten = true
	}
	if len(b.alerts) > 0 && !b.published {
		msgs := make([]kafka.Message, len(b.alerts))
		for i := range b.alerts {
			raw, err := json.Marshal(&b.alerts[i])
			if err != nil {
				return fmt.Errorf("encode alert %s: %w", b.alerts[i].AlertID, err)
			}
			msgs[i] = kafka.Message{Key: []byte(b.alerts[i].ConversationID), Value: raw}
		}
		if err := p.retry(ctx, "publish", func(ctx context.Context) error {
			return p.alerts.WriteMessages(ctx, msgs...)
		}); err != nil {
			return err
		}
		b.published = true
		for i := range b.alerts {
			a := &b.alerts[i]
			p.m.alerts.WithLabelValues(a.Rule).Inc()
			p.log.Info("alert", "alert_id", a.AlertID, "tenant", a.Tenant, "conversation_id", a.ConversationID,
				"rule", a.Rule, "message_id", a.MessageID)
		}
	}
	if len(b.alerts) > 0 && !b.stored {
		if err := p.retry(ctx, "clickhouse", func(ctx context.Context) error {
			return p.store.Insert(ctx, b.alerts)
		}); err != nil {
			return err
		}
		b.stored = true
	}
	if len(b.dirty) > 0 && !b.stateSaved {
		var stale int
		if err := p.retry(ctx, "save_state", func(ctx context.Context) (err error) {
			stale, err = p.states.Save(ctx, b.dirty)
			return err
		}); err != nil {
			return err
		}
		b.stateSaved = true
		if stale > 0 {
			p.m.staleSaves.Add(float64(stale))
			p.log.Warn("conversation states already further on in Redis were kept (a rebalance moved their partition)", "conversations", stale)
		}
	}
	return p.commit(ctx, b)
}

// commit commits the highest offset of each partition in b. A failed commit
// is not retried: the next batch's commit covers the same partitions, and
// until then the events are merely delivered again (and change nothing).
// It fails only if ctx ended, so that a shutdown retries it.
func (p *pipeline) commit(ctx context.Context, b *batch) error {
	last := map[topicPartition]int64{}
	for _, m := range b.msgs {
		k := topicPartition{m.Topic, m.Partition}
		if off, ok := last[k]; !ok || m.Offset > off {
			last[k] = m.Offset
		}
	}
	msgs := make([]kafka.Message, 0, len(last))
	for k, off := range last {
		msgs = append(msgs, kafka.Message{Topic: k.topic, Partition: k.partition, Offset: off})
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.StepTimeout)
	defer cancel()
	if err := p.src.CommitMessages(cctx, msgs...); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("commit offsets: %w", err)
		}
		p.m.stepErrors.WithLabelValues("commit").Inc()
		p.log.Warn("committing offsets failed; the events may be delivered again", "err", err)
		return nil
	}
	for tp, off := range last {
		if l := p.lag[tp]; l != nil && off+1 > l.next {
			l.next = off + 1
			p.setLag(tp, l)
		}
	}
	return nil
}

func (p *pipeline) setLag(tp topicPartition, l *partitionLag) {
	p.m.consumerLag.WithLabelValues(tp.topic, strconv.Itoa(tp.partition)).Set(float64(max(l.highWaterMark-l.next, 0)))
}

// retry runs op, each attempt bounded by StepTimeout, until it succeeds or
// ctx ends; failures are counted, logged and make /readyz say which step
// fails.
func (p *pipeline) retry(ctx context.Context, step string, op func(context.Context) error) error {
	err := backoff.RetryNotify(func() error {
		actx, cancel := context.WithTimeout(ctx, p.cfg.StepTimeout)
		defer cancel()
		return op(actx)
	}, backoff.WithContext(p.cfg.Backoff(), ctx), func(err error, wait time.Duration) {
		p.m.stepErrors.WithLabelValues(step).Inc()
		p.health(step, err)
		p.log.Warn("batch step failed; retrying", "step", step, "retry_in", wait, "err", err)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", step, err)
	}
	p.health(step, nil)
	return nil
}

// decodeEvent parses and checks one value of the events topic: what the
// rules and the alert need must be there. Every error is a
// *contract.InvalidError.
func decodeEvent(raw []byte, maxBytes int) (contract.EmotionEvent, error) {
	var ev contract.EmotionEvent
	if maxBytes > 0 && len(raw) > maxBytes {
		return ev, invalid(contract.ReasonTooLarge, "event is %d bytes, limit %d", len(raw), maxBytes)
	}
	if !utf8.Valid(raw) {
		return ev, invalid(contract.ReasonInvalidUTF8, "event is not valid UTF-8")
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		return ev, invalid(contract.UnmarshalReason(err), "%v", err)
	}
	for _, f := range []struct{ name, value string }{
		{"message_id", ev.MessageID},
		{"conversation_id", ev.ConversationID},
		{"tenant", ev.Tenant},
		{"run_id", ev.RunID},
		{"label", ev.Label},
	} {
		if f.value == "" {
			return ev, invalid(contract.ReasonSchema, "%s is required", f.name)
		}
	}
	// The alert stores sent_at as a ClickHouse DateTime: a value it cannot
	// hold would block its batch forever.
	if ev.SentAt.Before(minStorableTime) || ev.SentAt.After(maxStorableTime) {
		return ev, invalid(contract.ReasonSchema, "sent_at %s is missing or outside %s..%s", ev.SentAt.Format(time.RFC3339),
			minStorableTime.Format(time.RFC3339), maxStorableTime.Format(time.RFC3339))
	}
	if ev.Source.Partition < 0 || ev.Source.Partition > math.MaxInt32 || ev.Source.Offset < 0 {
		return ev, invalid(contract.ReasonSchema, "source position %d/%d is out of range", ev.Source.Partition, ev.Source.Offset)
	}
	return ev, nil
}

// The range a ClickHouse DateTime can hold.
var (
	minStorableTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	maxStorableTime = time.Date(2105, 12, 31, 23, 59, 59, 0, time.UTC)
)

func invalid(r contract.Reason, format string, args ...any) error {
	return &contract.InvalidError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// newDeadLetter is m with its key, value and headers, followed by the
// contract's dead-letter headers.
func newDeadLetter(m kafka.Message, inv *contract.InvalidError, rejectedAt time.Time) kafka.Message {
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

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
