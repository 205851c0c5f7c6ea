package alerts

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/stage"
)

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
	// ReorderWindow is how long a fetched event waits before it is
	// applied, so that the events of earlier messages of its conversation
	// that arrive after it (ingest publishes batches concurrently) are
	// applied first. 0 applies at once.
	ReorderWindow time.Duration
	// MaxPending bounds the events waiting; past it the oldest are applied
	// early.
	MaxPending int
	Backoff    func() backoff.BackOff
}

// pipeline turns the events topic into alerts. It fetches events into a
// pending list, where each waits ReorderWindow; then, per round, it applies
// the events whose wait is over (with any later-fetched events of earlier
// messages of the same conversations), each conversation in source order:
// load the conversations' states, apply, save the states with the new
// alerts in them (an outbox), write the dead letters, publish the alerts,
// insert them into ClickHouse, clear the outboxes, commit the offsets below
// the oldest event still pending. Each step is retried until it succeeds,
// and nothing more is fetched meanwhile, so an offset is committed only
// after every alert its events produced is on the topic and in ClickHouse.
//
// Why a redelivery never alerts twice: the decisions (which messages were
// applied, which alerts they opened) are saved before any alert is
// published. Events delivered again after the save are at or below the
// saved offset and change nothing; alerts saved but perhaps not published
// (a crash between the save and the clearing of the outbox) are published
// again, with the same ids and bytes, when their conversation's state is
// next loaded, which the redelivered events make happen.
type pipeline struct {
	cfg         pipelineConfig
	rules       *Rules
	src         stage.MessageSource
	states      stateStore
	store       alertStore
	alerts      stage.MessageWriter
	deadLetters stage.MessageWriter
	m           *metrics
	health      func(step string, err error)
	log         *slog.Logger
	now         func() time.Time

	// Only the pipeline's goroutine uses what follows.
	// pending are the fetched events not yet applied, in fetch order.
	pending []*entry
	seq     int64
	// fetched is the highest offset fetched per partition; committed the
	// next offset committed.
	fetched   map[topicPartition]int64
	committed map[topicPartition]int64
	lag       *stage.ConsumerLag
}

// topicPartition names one partition of a topic.
type topicPartition = stage.TopicPartition

// entry is one fetched message: a dead letter, an event to apply, or
// neither (an event that does not count).
type entry struct {
	msg       kafka.Message
	fetchedAt time.Time
	seq       int64
	dead      *kafka.Message
	ev        *contract.EmotionEvent
	key       convKey
}

func newPipeline(cfg pipelineConfig, rules *Rules, src stage.MessageSource, states stateStore, store alertStore,
	alerts, deadLetters stage.MessageWriter, m *metrics, health func(string, error), log *slog.Logger) *pipeline {
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 100 * cfg.BatchSize
	}
	return &pipeline{
		cfg: cfg, rules: rules, src: src, states: states, store: store, alerts: alerts, deadLetters: deadLetters,
		m: m, health: health, log: log, now: time.Now,
		fetched: map[topicPartition]int64{}, committed: map[topicPartition]int64{}, lag: stage.NewConsumerLag(m.consumerLag),
	}
}

// run works until ctx ends, then applies and commits what it fetched
// (bounded by DrainTimeout) and returns.
func (p *pipeline) run(ctx context.Context) error {
	for {
		fetchErr := p.fetch(ctx)
		final := fetchErr != nil || ctx.Err() != nil
		if ready := p.takeReady(final); len(ready) > 0 {
			if err := p.processBatch(ctx, ready); err != nil {
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

// fetch adds up to BatchSize messages to the pending list; it returns
// FlushInterval after the first, when the oldest pending event's wait is
// over, or when the pending list is full.
func (p *pipeline) fetch(ctx context.Context) error {
	var deadline time.Time
	if len(p.pending) > 0 {
		deadline = p.pending[0].fetchedAt.Add(p.cfg.ReorderWindow)
	}
	for n := 0; n < p.cfg.BatchSize && len(p.pending) < p.cfg.MaxPending; {
		fetchCtx, cancel := ctx, context.CancelFunc(func() {})
		if !deadline.IsZero() {
			fetchCtx, cancel = context.WithDeadline(ctx, deadline)
		}
		m, err := p.src.FetchMessage(fetchCtx)
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil
			case !deadline.IsZero() && !p.now().Before(deadline):
				return nil
			case errors.Is(err, io.EOF):
				return fmt.Errorf("events reader closed: %w", err)
			}
			p.log.Warn("fetching from the events topic failed; the reader retries", "err", err)
			if !stage.Sleep(ctx, stage.FetchErrorPause) {
				return nil
			}
			continue
		}
		if n == 0 {
			if d := p.now().Add(p.cfg.FlushInterval); deadline.IsZero() || d.Before(deadline) {
				deadline = d
			}
		}
		n++
		p.add(m)
	}
	return nil
}

// add decodes m into a pending entry.
func (p *pipeline) add(m kafka.Message) {
	tp := topicPartition{Topic: m.Topic, Partition: m.Partition}
	if off, ok := p.fetched[tp]; !ok || m.Offset > off {
		p.fetched[tp] = m.Offset
	}
	p.lag.Fetched(m)

	p.seq++
	e := &entry{msg: m, fetchedAt: p.now(), seq: p.seq}
	p.pending = append(p.pending, e)
	ev, err := decodeEvent(m.Value, p.cfg.MaxEventBytes)
	if err != nil {
		var inv *contract.InvalidError
		if !errors.As(err, &inv) {
			inv = &contract.InvalidError{Reason: contract.ReasonSchema, Detail: err.Error()}
		}
		p.log.Warn("malformed event; sending it to the dead-letter topic",
			"topic", m.Topic, "partition", m.Partition, "offset", m.Offset, "reason", inv.Reason, "detail", inv.Detail)
		dl := stage.NewDeadLetter(m, inv, time.Now())
		e.dead = &dl
		p.m.events.WithLabelValues(outcomeDeadLetter).Inc()
		return
	}
	if ev.RunID != contract.LiveRun {
		p.m.events.WithLabelValues(outcomeNotLive).Inc()
		return
	}
	if !adapterMatches(p.cfg.Adapter, ev.Adapter) {
		p.m.events.WithLabelValues(outcomeOtherAdapter).Inc()
		return
	}
	e.ev, e.key = &ev, convKey{ev.Tenant, ev.ConversationID}
}

// sourceKey is a conversation on one source partition: where source
// offsets compare.
type sourceKey struct {
	conv      convKey
	topic     string
	partition int
}

func (e *entry) sourceKey() sourceKey {
	return sourceKey{e.key, e.ev.Source.Topic, e.ev.Source.Partition}
}

// takeReady removes from the pending list the entries whose wait is over
// (all of them when final), the oldest BatchSize when the list is full,
// and the pending events of earlier messages of the conversations those
// hold.
func (p *pipeline) takeReady(final bool) []*entry {
	now := p.now()
	forced := 0
	if len(p.pending) >= p.cfg.MaxPending {
		forced = len(p.pending) - p.cfg.MaxPending + p.cfg.BatchSize
	}
	k := 0
	for k < len(p.pending) {
		e := p.pending[k]
		if !final && p.cfg.ReorderWindow > 0 && e.fetchedAt.Add(p.cfg.ReorderWindow).After(now) && k >= forced {
			break
		}
		k++
	}
	if k == 0 {
		return nil
	}
	ready := p.pending[:k:k]
	upTo := map[sourceKey]int64{}
	for _, e := range ready {
		if e.ev != nil {
			sk := e.sourceKey()
			if off, ok := upTo[sk]; !ok || e.ev.Source.Offset > off {
				upTo[sk] = e.ev.Source.Offset
			}
		}
	}
	var rest []*entry
	for _, e := range p.pending[k:] {
		if e.ev != nil {
			if off, ok := upTo[e.sourceKey()]; ok && e.ev.Source.Offset <= off {
				ready = append(ready, e)
				continue
			}
		}
		rest = append(rest, e)
	}
	p.pending = rest
	return ready
}

// processBatch runs the steps; if ctx ends first, it tries again bounded by
// DrainTimeout, so that a shutdown keeps the work already fetched.
func (p *pipeline) processBatch(ctx context.Context, ready []*entry) error {
	start := time.Now()
	b := p.prepare(ready)
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
		return fmt.Errorf("shutting down: %d fetched events not processed or not committed (they will be delivered again): %w", len(ready), err)
	}
	p.log.Info("processed and committed the last events", "events", len(ready))
	return nil
}

// batch is one round's work; the done flags let a drain skip the steps a
// cancelled attempt finished.
type batch struct {
	events      []*entry // to apply, each conversation in source order
	deadLetters []kafka.Message
	keys        []convKey
	// commit is the next offset to commit per partition.
	commit map[topicPartition]int64

	applied bool
	alerts  []Alert
	dirty   map[convKey]*convState
	// withOutbox are the conversations whose saved state holds alerts.
	withOutbox    []convKey
	stateSaved    bool
	dlqWritten    bool
	published     bool
	stored        bool
	outboxCleared bool
}

// prepare orders the ready entries and works out the commit: per
// partition, up to the oldest entry still pending, or past the newest
// fetched.
func (p *pipeline) prepare(ready []*entry) *batch {
	b := &batch{commit: map[topicPartition]int64{}}
	seen := map[convKey]bool{}
	for _, e := range ready {
		switch {
		case e.dead != nil:
			b.deadLetters = append(b.deadLetters, *e.dead)
		case e.ev != nil:
			b.events = append(b.events, e)
			if !seen[e.key] {
				seen[e.key] = true
				b.keys = append(b.keys, e.key)
			}
		}
	}
	slices.SortStableFunc(b.events, func(x, y *entry) int {
		a, c := x.ev, y.ev
		return cmp.Or(cmp.Compare(a.Tenant, c.Tenant), cmp.Compare(a.ConversationID, c.ConversationID),
			cmp.Compare(a.Source.Topic, c.Source.Topic), cmp.Compare(a.Source.Partition, c.Source.Partition),
			cmp.Compare(a.Source.Offset, c.Source.Offset))
	})
	// An event fetched after one of its conversation's events that it now
	// precedes would have been late without the window.
	var minSeq int64 = math.MaxInt64
	for i := len(b.events) - 1; i >= 0; i-- {
		if i+1 < len(b.events) && b.events[i+1].key != b.events[i].key {
			minSeq = math.MaxInt64
		}
		if b.events[i].seq > minSeq {
			p.m.reordered.Inc()
		}
		minSeq = min(minSeq, b.events[i].seq)
	}
	oldest := map[topicPartition]int64{}
	for _, e := range p.pending {
		tp := topicPartition{Topic: e.msg.Topic, Partition: e.msg.Partition}
		if off, ok := oldest[tp]; !ok || e.msg.Offset < off {
			oldest[tp] = e.msg.Offset
		}
	}
	for tp, last := range p.fetched {
		next := last + 1
		if off, ok := oldest[tp]; ok {
			next = off
		}
		if next > p.committed[tp] {
			b.commit[tp] = next
		}
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
		b.alerts = nil
		for _, k := range b.keys {
			// Alerts saved by an alerter that stopped before it cleared
			// them: publish them again.
			if st := states[k]; len(st.Outbox) > 0 {
				b.alerts = append(b.alerts, st.Outbox...)
				b.dirty[k] = st
			}
		}
		for _, e := range b.events {
			st := states[e.key]
			outcome, alerts := p.rules.apply(st, e.ev)
			p.m.events.WithLabelValues(string(outcome)).Inc()
			if outcome == Applied {
				b.dirty[e.key] = st
			}
			st.Outbox = append(st.Outbox, alerts...)
			b.alerts = append(b.alerts, alerts...)
		}
		for k, st := range b.dirty {
			if len(st.Outbox) > 0 {
				b.withOutbox = append(b.withOutbox, k)
			}
		}
		b.applied = true
	}
	if len(b.dirty) > 0 && !b.stateSaved {
		if err := p.save(ctx, "save_state", b.dirty); err != nil {
			return err
		}
		b.stateSaved = true
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
	if len(b.withOutbox) > 0 && !b.outboxCleared {
		cleared := map[convKey]*convState{}
		for _, k := range b.withOutbox {
			st := b.dirty[k]
			st.Outbox = nil
			cleared[k] = st
		}
		if err := p.save(ctx, "clear_outbox", cleared); err != nil {
			return err
		}
		b.outboxCleared = true
	}
	return p.commit(ctx, b)
}

// save stores states, retrying.
func (p *pipeline) save(ctx context.Context, step string, states map[convKey]*convState) error {
	if len(states) == 0 {
		return nil
	}
	var stale int
	if err := p.retry(ctx, step, func(ctx context.Context) (err error) {
		stale, err = p.states.Save(ctx, states)
		return err
	}); err != nil {
		return err
	}
	if stale > 0 {
		p.m.staleSaves.Add(float64(stale))
		p.log.Warn("conversation states already further on in Redis were kept (a rebalance moved their partition)", "conversations", stale)
	}
	return nil
}

// commit commits b's offsets. A failed commit is not retried: the next
// round's commit covers the same partitions, and until then the events are
// merely delivered again (and change nothing). It fails only if ctx ended,
// so that a shutdown retries it.
func (p *pipeline) commit(ctx context.Context, b *batch) error {
	if len(b.commit) == 0 {
		return nil
	}
	msgs := make([]kafka.Message, 0, len(b.commit))
	for tp, next := range b.commit {
		// CommitMessages commits the offset after the message's.
		msgs = append(msgs, kafka.Message{Topic: tp.Topic, Partition: tp.Partition, Offset: next - 1})
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
	for tp, next := range b.commit {
		p.committed[tp] = next
		p.lag.Committed(tp, next)
	}
	return nil
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
	ev, err := stage.UnmarshalEvent(raw, maxBytes)
	if err != nil {
		return ev, err
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
