package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/semaphore"
)

// consumer runs ingest's membership in the consumer group. Every generation
// (a rebalance starts a new one) gets its own partition readers, pipeline
// and offset tracker, made from the generation's assignment and thrown away
// when it ends: after in-flight work is finished (or abandoned at the drain
// timeout) and what is done is committed, under that generation's id. So
// nothing is ever committed for a partition this member lost, and no
// message buffered for a lost partition is processed in the next
// generation (kafka-go's group Reader can do both, see issue 1398).
type consumer struct {
	cfg  *Config
	proc *processor
	// overloadedUntil says until when every classifier endpoint refuses
	// work (zero when one takes it).
	overloadedUntil func() time.Time
	admin           *kafka.Client
	log             *slog.Logger
	warn            *logLimiter
	m               *metrics
	// ends are the input topic's offsets at start-up, with -stop-at-end;
	// nil otherwise.
	ends map[int]partitionEnds
}

// partitionEnds are the first and end (next to be written) offsets of a
// partition.
type partitionEnds struct{ first, end int64 }

// run consumes until ctx ends (or, with -stop-at-end, until the group has
// committed everything up to the end offsets).
func (c *consumer) run(ctx context.Context) error {
	start := kafka.FirstOffset
	if c.cfg.StartOffset == "latest" {
		start = kafka.LastOffset
	}
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                    c.cfg.GroupID,
		Brokers:               c.cfg.Brokers,
		Topics:                []string{c.cfg.InputTopic},
		StartOffset:           start,
		SessionTimeout:        c.cfg.SessionTimeout,
		HeartbeatInterval:     c.cfg.SessionTimeout / 3,
		RebalanceTimeout:      c.cfg.RebalanceTimeout,
		JoinGroupBackoff:      2 * time.Second,
		WatchPartitionChanges: true,
		ErrorLogger:           kafkaLogger(c.log, "kafka consumer group"),
		Dialer:                c.cfg.kafka.Dialer(0),
	})
	if err != nil {
		return fmt.Errorf("consumer group %s: %w", c.cfg.GroupID, err)
	}
	// Closing the group ends the current generation and leaves the group.
	// It must start as soon as ctx ends: the generation then drains and
	// commits while the group waits for it, and the group does not rejoin
	// in between.
	runCtx, stop := context.WithCancel(ctx)
	closed := make(chan struct{})
	go func() {
		<-runCtx.Done()
		_ = cg.Close()
		close(closed)
	}()
	defer func() {
		stop()
		<-closed
	}()

	for {
		gen, err := cg.Next(runCtx)
		if err != nil {
			if runCtx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				return nil
			}
			c.warn.log(c.log, "group", "consumer group error; rejoining", "group", c.cfg.GroupID, "err", err)
			continue
		}
		c.m.generations.Inc()
		parts := gen.Assignments[c.cfg.InputTopic]
		ids := make([]int, len(parts))
		for i, pa := range parts {
			ids[i] = pa.ID
		}
		c.log.Info("joined consumer group generation", "group", c.cfg.GroupID, "generation", gen.ID, "member", gen.MemberID, "partitions", ids)
		finished := make(chan bool, 1)
		gen.Start(func(genCtx context.Context) {
			finished <- c.runGeneration(runCtx, genCtx, gen, parts)
		})
		if <-finished {
			c.log.Info("input consumed up to its end offsets at start-up; stopping")
			return nil
		}
	}
}

// generation is one generation's work: fetchers per owned partition, the
// batcher, the workers and the committer.
type generation struct {
	c       *consumer
	gen     *kafka.Generation
	tracker *OffsetTracker
	sem     *semaphore.Weighted
	items   chan *work
	// highWater is the last high watermark seen per partition (read-only
	// map; the values change).
	highWater map[int]*atomic.Int64
	inFlight  atomic.Int64
}

// runGeneration runs one generation until it ends (rebalance, ctx) and
// returns whether ingest is finished (-stop-at-end reached).
func (c *consumer) runGeneration(ctx, genCtx context.Context, gen *kafka.Generation, parts []kafka.PartitionAssignment) bool {
	committed := map[int]int64{}
	g := &generation{
		c: c, gen: gen,
		sem:       semaphore.NewWeighted(int64(c.cfg.MaxInFlight)),
		items:     make(chan *work, c.cfg.BatchSize),
		highWater: map[int]*atomic.Int64{},
	}
	for _, pa := range parts {
		// Negative offsets are kafka-go's "first"/"last" markers: the group
		// has committed nothing for the partition.
		committed[pa.ID] = max(pa.Offset, -1)
		g.highWater[pa.ID] = new(atomic.Int64)
	}
	g.tracker = NewOffsetTracker(committed)
	defer func() {
		for _, pa := range parts {
			c.m.lag.DeleteLabelValues(strconv.Itoa(pa.ID))
		}
		// Abandoned messages never finish; they leave the gauge here.
		c.m.inFlight.Sub(float64(g.inFlight.Load()))
	}()

	// stopCtx ends fetching: at a rebalance or shutdown.
	stopCtx, stopFetching := context.WithCancel(ctx)
	defer stopFetching()
	context.AfterFunc(genCtx, stopFetching)
	// workCtx outlives shutdown so that in-flight work can finish; it is
	// cancelled at the drain timeout.
	workCtx, abandon := context.WithCancel(context.WithoutCancel(ctx))
	defer abandon()

	var fetchers sync.WaitGroup
	for _, pa := range parts {
		fetchers.Go(func() { g.fetch(stopCtx, pa) })
	}
	batches := make(chan []*work)
	go batch(workCtx, g.items, batches, c.cfg.BatchSize, c.cfg.BatchWait)
	// One goroutine prepares the batches in order (conversation contexts
	// follow partition order), many process them.
	prepared := make(chan []*work)
	go func() {
		defer close(prepared)
		for b := range batches {
			c.proc.prepare(workCtx, b)
			select {
			case prepared <- b:
			case <-workCtx.Done():
				return
			}
		}
	}()
	var workers sync.WaitGroup
	for range c.cfg.Workers {
		workers.Go(func() {
			for b := range prepared {
				c.proc.process(workCtx, b)
			}
		})
	}
	commitStop := make(chan struct{})
	var committer sync.WaitGroup
	committer.Go(func() {
		t := time.NewTicker(c.cfg.CommitInterval)
		defer t.Stop()
		for {
			select {
			case <-commitStop:
				return
			case <-t.C:
				g.commit()
			}
		}
	})

	fetchers.Wait()
	close(g.items)
	drained := make(chan struct{})
	go func() {
		workers.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-stopCtx.Done():
		timer := time.NewTimer(c.cfg.DrainTimeout)
		select {
		case <-drained:
		case <-timer.C:
			c.log.Warn("in-flight work not finished within the drain timeout; abandoning it uncommitted",
				"generation", gen.ID, "messages", g.inFlight.Load(), "drain_timeout", c.cfg.DrainTimeout)
			abandon()
			<-drained
		}
		timer.Stop()
	}
	close(commitStop)
	committer.Wait()
	g.commit()
	if stopCtx.Err() == nil && c.ends != nil {
		return c.waitForGroupEnd(stopCtx)
	}
	// A member without partitions gets here at once; returning would end
	// the generation and make the whole group rebalance again, for ever.
	<-stopCtx.Done()
	return false
}

// fetch reads one partition and hands its messages to the batcher, taking
// an in-flight slot for each, until ctx ends (or the end offset is reached
// with -stop-at-end). A reader per partition and generation means no
// message of a partition this member lost is ever handed out.
func (g *generation) fetch(ctx context.Context, pa kafka.PartitionAssignment) {
	c := g.c
	end := int64(-1)
	if c.ends != nil {
		e := c.ends[pa.ID]
		if e.end <= e.first || pa.Offset >= e.end || pa.Offset == kafka.LastOffset {
			return
		}
		end = e.end
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:   c.cfg.Brokers,
		Topic:     c.cfg.InputTopic,
		Partition: pa.ID,
		MinBytes:  1,
		// Larger than any accepted message, so that an oversized one is
		// fetched (and dead-lettered) rather than stuck.
		MaxBytes:      16 << 20,
		MaxWait:       250 * time.Millisecond,
		QueueCapacity: min(100, c.cfg.MaxInFlight),
		ErrorLogger:   kafkaLogger(c.log, "kafka reader"),
		Dialer:        c.cfg.kafka.Dialer(0),
	})
	defer r.Close()
	if err := r.SetOffset(pa.Offset); err != nil {
		c.log.Error("cannot position the partition reader", "partition", pa.ID, "offset", pa.Offset, "err", err)
		return
	}
	hw := g.highWater[pa.ID]
	for {
		if err := g.sem.Acquire(ctx, 1); err != nil {
			return
		}
		g.waitForClassifier(ctx)
		m, err := r.FetchMessage(ctx)
		if err != nil {
			g.sem.Release(1)
			if ctx.Err() != nil {
				return
			}
			c.warn.log(c.log, "fetch", "fetching from Kafka failed; retrying", "partition", pa.ID, "err", err)
			if sleepCtx(ctx, time.Second) != nil {
				return
			}
			continue
		}
		if end >= 0 && m.Offset >= end {
			g.sem.Release(1)
			return
		}
		hw.Store(m.HighWaterMark)
		if err := g.tracker.Fetched(pa.ID, m.Offset); err != nil {
			// A reader never goes backwards; if it did, processing the
			// message again is harmless but tracking it is not.
			g.sem.Release(1)
			c.log.Error("offset tracking", "err", err)
			continue
		}
		g.inFlight.Add(1)
		c.m.inFlight.Inc()
		w := &work{msg: m, receivedAt: time.Now(), done: g.doneFunc(m.Partition, m.Offset)}
		select {
		case g.items <- w:
		case <-ctx.Done():
			return // fetched but never processed: stays uncommitted
		}
		if end >= 0 && m.Offset+1 >= end {
			return
		}
	}
}

func (g *generation) doneFunc(partition int, offset int64) func() {
	return func() {
		g.tracker.Done(partition, offset)
		g.sem.Release(1)
		g.inFlight.Add(-1)
		g.c.m.inFlight.Dec()
	}
}

// waitForClassifier pauses fetching while every classifier endpoint has
// asked to be left alone (429 with Retry-After): more messages would only
// wait in memory.
func (g *generation) waitForClassifier(ctx context.Context) {
	for {
		until := g.c.overloadedUntil()
		wait := time.Until(until)
		if until.IsZero() || wait <= 0 {
			return
		}
		start := time.Now()
		err := sleepCtx(ctx, min(wait, time.Second))
		g.c.m.fetchPaused.Add(time.Since(start).Seconds())
		if err != nil {
			return
		}
	}
}

// commit commits the contiguous finished prefix of every partition under
// this generation, and updates the lag gauges.
func (g *generation) commit() {
	c := g.c
	if pos := g.tracker.Committable(); len(pos) > 0 {
		if err := g.gen.CommitOffsets(map[string]map[int]int64{c.cfg.InputTopic: pos}); err != nil {
			c.m.commits.WithLabelValues("error").Inc()
			c.warn.log(c.log, "commit", "committing offsets failed", "generation", g.gen.ID, "err", err)
		} else {
			c.m.commits.WithLabelValues("ok").Inc()
			g.tracker.Committed(pos)
		}
	}
	for p, hw := range g.highWater {
		if h, pos := hw.Load(), g.tracker.CommittedPosition(p); h > 0 && pos >= 0 {
			c.m.lag.WithLabelValues(strconv.Itoa(p)).Set(float64(max(h-pos, 0)))
		}
	}
}

// waitForGroupEnd waits until the group has committed every partition of
// the input topic up to its end offset (other members may still be
// working), returning true then, or false when ctx ends first.
func (c *consumer) waitForGroupEnd(ctx context.Context) bool {
	for {
		done, err := c.groupAtEnd(ctx)
		if err != nil && ctx.Err() == nil {
			c.warn.log(c.log, "group-end", "cannot read the group's committed offsets", "err", err)
		}
		if done {
			return true
		}
		if sleepCtx(ctx, time.Second) != nil {
			return false
		}
	}
}

func (c *consumer) groupAtEnd(ctx context.Context) (bool, error) {
	var ids []int
	for p := range c.ends {
		ids = append(ids, p)
	}
	resp, err := c.admin.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: c.cfg.GroupID, Topics: map[string][]int{c.cfg.InputTopic: ids}})
	if err != nil {
		return false, fmt.Errorf("fetch committed offsets: %w", err)
	}
	if resp.Error != nil {
		return false, fmt.Errorf("fetch committed offsets: %w", resp.Error)
	}
	committed := map[int]int64{}
	for _, p := range resp.Topics[c.cfg.InputTopic] {
		if p.Error == nil {
			committed[p.Partition] = p.CommittedOffset
		}
	}
	for p, e := range c.ends {
		if e.end > e.first && committed[p] < e.end {
			return false, nil
		}
	}
	return true, nil
}

// kafkaLogger sends kafka-go's error log to slog at debug level: kafka-go
// logs every retry, and ingest reports what matters (failed fetches,
// commits, publishes) itself.
func kafkaLogger(log *slog.Logger, what string) kafka.LoggerFunc {
	return func(format string, args ...any) {
		log.Debug(what, "msg", fmt.Sprintf(format, args...))
	}
}
