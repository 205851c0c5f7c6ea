// Package batcher gathers single requests into batches for a model worker:
// under a token budget and a row limit, within a maximum queueing delay,
// grouped so that one batch needs one adapter mode, sorted into length
// windows so that little compute goes to padding (at most 1 - MinFill of a
// batch), live traffic before replays, requests near their deadline before
// the others, and never more queued work than configured (a full queue
// rejects at once).
package batcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// Priority classes, served in this order.
type Priority int

const (
	// Live is interactive traffic (moderation).
	Live Priority = iota
	// Replay is bulk re-evaluation; it runs when no live work waits.
	Replay
	numPriorities
)

func (p Priority) String() string {
	switch p {
	case Live:
		return "live"
	case Replay:
		return "replay"
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

// Errors returned by Submit.
var (
	// ErrOverloaded: the queue of the request's priority is full.
	ErrOverloaded = errors.New("batcher: queue full")
	// ErrDeadline: the request's deadline passed before its batch ran; it
	// was not computed.
	ErrDeadline = errors.New("batcher: deadline passed before the request was computed")
	// ErrClosed: the batcher no longer accepts work.
	ErrClosed = errors.New("batcher: closed")
)

// Config bounds batches and the queue.
type Config struct {
	// MaxRows is the most requests in one batch.
	MaxRows int
	// MaxTokens bounds rows × (longest row cost + RowOverhead): the padded
	// size of a batch.
	MaxTokens int
	// RowOverhead is added to every row's cost (tokens every row carries
	// whatever its text, such as a label block).
	RowOverhead int
	// Window, when positive, is how many of the oldest queued requests of
	// each class a batch's rows are chosen from. Requests are then computed
	// about in the order they came, so a caller's texts finish together
	// and early, rather than all callers' late; within the window, rows
	// are still grouped by length.
	Window int
	// MinFill, when positive, is the least share of a batch's padded size
	// (rows × (longest cost + RowOverhead)) that its rows fill (the sum of
	// cost + RowOverhead): a request that would pad the batch below it is
	// left for a later batch of lengths nearer its own, when more than
	// MaxRows requests are queued (at light load padding costs nothing but
	// a request held back waits a batch more). The batch's first request is
	// always taken, so every request is computed in the end.
	MinFill float64
	// MaxDelay is the longest a request waits for others to fill its batch.
	MaxDelay time.Duration
	// QueueSize is the most queued requests per priority.
	QueueSize [2]int
	// Workers is the number of batches computed at once.
	Workers int
	// PaddedTokens, when set, is how many tokens the runner computes for a
	// batch of rows of these costs (a runner that splits a batch pads each
	// part to its own longest row); nil: rows × the longest cost. It only
	// feeds Batch.PaddedTokens, which the observer reports.
	PaddedTokens func(costs []int) int
}

func (c *Config) validate() error {
	switch {
	case c.MaxRows <= 0:
		return fmt.Errorf("batcher: MaxRows must be positive")
	case c.MaxTokens <= 0:
		return fmt.Errorf("batcher: MaxTokens must be positive")
	case c.QueueSize[Live] <= 0 || c.QueueSize[Replay] <= 0:
		return fmt.Errorf("batcher: queue sizes must be positive")
	case c.Workers <= 0:
		return fmt.Errorf("batcher: Workers must be positive")
	case c.MaxDelay < 0:
		return fmt.Errorf("batcher: MaxDelay must not be negative")
	case c.MinFill < 0 || c.MinFill > 1:
		return fmt.Errorf("batcher: MinFill must be between 0 and 1")
	case c.Window < 0:
		return fmt.Errorf("batcher: Window must not be negative")
	}
	return nil
}

// Request is one unit of work.
type Request[P any] struct {
	// Group keys requests that may share a batch (the adapter mode).
	Group string
	// Cost is the row's length in tokens.
	Cost     int
	Priority Priority
	// Deadline, if not zero, is when the caller stops waiting; a request
	// not started by then is dropped.
	Deadline time.Time
	Payload  P
	// Release, if not nil, is called exactly once when the batcher no
	// longer needs the payload: after its batch ran, or when it was
	// dropped or rejected. A caller that stops waiting early may still see
	// its payload computed, so resources the payload holds (an adapter)
	// must be let go here, not when Submit returns.
	Release func()
}

// Batch is what a RunFunc computes.
type Batch[P any] struct {
	Group    string
	Payloads []P
	// Priorities of the rows (a live batch may carry replay rows in spare
	// room).
	Priorities []Priority
	// PaddedTokens is the tokens computed (Config.PaddedTokens; by default
	// rows × the longest row cost); RealTokens the sum of costs.
	PaddedTokens, RealTokens int
	// Waits is how long each row queued.
	Waits []time.Duration
}

// RunFunc computes a batch: one result per payload, in order, or an error
// for the whole batch.
type RunFunc[P, R any] func(ctx context.Context, b *Batch[P]) ([]R, error)

// Observer hears about the batcher's work (metrics). Its methods must not
// block.
type Observer interface {
	QueueDepth(p Priority, depth int)
	BatchDone(rows, realTokens, paddedTokens int, compute time.Duration, err error)
	Waited(p Priority, wait time.Duration)
	Dropped(p Priority, reason error)
}

type item[P, R any] struct {
	req      Request[P]
	seq      uint64
	enqueued time.Time
	done     chan outcome[R]
	// abandoned is set (under the batcher's lock) when the caller stopped
	// waiting; the item is then dropped instead of computed.
	abandoned bool
}

type outcome[R any] struct {
	res R
	err error
}

// Batcher is the queue and its workers.
type Batcher[P, R any] struct {
	cfg  Config
	run  RunFunc[P, R]
	obs  Observer
	now  func() time.Time
	wake chan struct{}
	// closed is closed by Close, waking every idle worker at once.
	closed    chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	queues  [numPriorities][]*item[P, R]
	seq     uint64
	closing bool
	workers sync.WaitGroup
	// paceRows and paceTime are the rows and compute time of the batches
	// run so far, each batch weighing a fifth less than the next: their
	// ratio is the recent time per row. paceBatch is the recent compute
	// time of one batch, weighted alike.
	paceRows, paceTime, paceBatch float64
	// running is the batches being computed; lastDone when the last one
	// ended.
	running  int
	lastDone time.Time
}

// paceStale is how long the workers must have been idle for the pace to be
// measured afresh: Backlog admits anything on idle workers then, and the
// next batch's pace replaces the old one instead of blending with it. A
// pace measured in a slow spell (the machine busy with something else)
// would otherwise refuse every request for good: with nothing admitted, no
// batch would ever run to correct it.
const paceStale = 2 * time.Second

// New returns a batcher; call Start to run its workers.
func New[P, R any](cfg Config, run RunFunc[P, R], obs Observer) (*Batcher[P, R], error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Batcher[P, R]{cfg: cfg, run: run, obs: obs, now: time.Now, wake: make(chan struct{}, 1), closed: make(chan struct{})}, nil
}

// Start runs the workers. ctx bounds every batch's computation; use Close
// for a graceful stop.
func (b *Batcher[P, R]) Start(ctx context.Context) {
	for i := 0; i < b.cfg.Workers; i++ {
		b.workers.Add(1)
		go func() {
			defer b.workers.Done()
			b.work(ctx)
		}()
	}
}

// Close stops accepting requests, lets the workers finish everything
// queued, and waits for them (or for ctx).
func (b *Batcher[P, R]) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closing = true
	b.mu.Unlock()
	b.closeOnce.Do(func() { close(b.closed) })
	done := make(chan struct{})
	go func() { b.workers.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("batcher: draining: %w", ctx.Err())
	}
}

// Depth is the number of queued requests of priority p.
func (b *Batcher[P, R]) Depth(p Priority) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queues[p])
}

// Backlog estimates how long the workers need for the queued requests of
// priority p and the more urgent ones, plus rows more, at the pace of the
// recent batches (their compute time over their rows): how long until rows
// queued now are computed. ok is false until a batch has run.
//
// Only rows actually queued count: an estimate that added rows which may
// come later would, after a spell of small (slow per row) batches, refuse
// every request on an idle worker, and with nothing run the pace would
// never recover. For the same reason, once the workers have been idle for
// paceStale with nothing queued, the estimate is 0: the pace is stale and
// the next batch measures it again.
func (b *Batcher[P, R]) Backlog(p Priority, rows int) (d time.Duration, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.paceRows == 0 || p < 0 || p >= numPriorities {
		return 0, false
	}
	queued := 0
	for q := Live; q <= p; q++ {
		queued += len(b.queues[q])
	}
	if b.idleStaleLocked() && b.queuedLocked() == 0 {
		return 0, true
	}
	perRow := b.paceTime / b.paceRows
	return time.Duration(float64(queued+rows) * perRow / float64(b.cfg.Workers)), true
}

// idleStaleLocked reports whether no batch has run for paceStale.
func (b *Batcher[P, R]) idleStaleLocked() bool {
	return b.running == 0 && !b.lastDone.IsZero() && b.now().Sub(b.lastDone) >= paceStale
}

func (b *Batcher[P, R]) queuedLocked() int {
	n := 0
	for _, q := range b.queues {
		n += len(q)
	}
	return n
}

func (b *Batcher[P, R]) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Submit queues req and waits for its result. It returns ErrOverloaded at
// once when the queue is full, ErrDeadline when the request's deadline or
// ctx's passes first, ErrClosed after Close.
func (b *Batcher[P, R]) Submit(ctx context.Context, req Request[P]) (R, error) {
	wait, err := b.Enqueue(ctx, req)
	if err != nil {
		var zero R
		return zero, err
	}
	return wait()
}

// Enqueue is Submit in two steps: it queues req, or fails as Submit does,
// and returns at once with a function that waits for the result. Call the
// function, once: waiting is also how a request whose ctx ended leaves the
// queue. Callers that must queue several requests with nothing queued in
// between (checking the Backlog first) enqueue them under their own lock
// and wait outside it.
func (b *Batcher[P, R]) Enqueue(ctx context.Context, req Request[P]) (wait func() (R, error), err error) {
	if req.Priority < 0 || req.Priority >= numPriorities {
		return nil, fmt.Errorf("batcher: unknown priority %d", req.Priority)
	}
	if d, ok := ctx.Deadline(); ok && (req.Deadline.IsZero() || d.Before(req.Deadline)) {
		req.Deadline = d
	}
	it := &item[P, R]{req: req, done: make(chan outcome[R], 1), enqueued: b.now()}
	b.mu.Lock()
	switch {
	case b.closing:
		b.mu.Unlock()
		release(req)
		return nil, ErrClosed
	case len(b.queues[req.Priority]) >= b.cfg.QueueSize[req.Priority]:
		b.mu.Unlock()
		release(req)
		b.observeDrop(req.Priority, ErrOverloaded)
		return nil, ErrOverloaded
	}
	b.seq++
	it.seq = b.seq
	b.queues[req.Priority] = append(b.queues[req.Priority], it)
	b.observeDepth(req.Priority)
	b.mu.Unlock()
	b.signal()
	return func() (R, error) { return b.wait(ctx, it) }, nil
}

// wait waits for the result of it, or marks it abandoned when its deadline or
// ctx's passes first.
func (b *Batcher[P, R]) wait(ctx context.Context, it *item[P, R]) (R, error) {
	var zero R
	var timeout <-chan time.Time
	if !it.req.Deadline.IsZero() {
		t := time.NewTimer(it.req.Deadline.Sub(b.now()))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case o := <-it.done:
		return o.res, o.err
	case <-ctx.Done():
	case <-timeout:
	}
	b.mu.Lock()
	it.abandoned = true
	b.mu.Unlock()
	// The worker may have answered meanwhile; prefer its answer.
	select {
	case o := <-it.done:
		return o.res, o.err
	default:
	}
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return zero, ctx.Err()
	}
	return zero, ErrDeadline
}

func (b *Batcher[P, R]) observeDepth(p Priority) {
	if b.obs != nil {
		b.obs.QueueDepth(p, len(b.queues[p]))
	}
}

func (b *Batcher[P, R]) observeDrop(p Priority, err error) {
	if b.obs != nil {
		b.obs.Dropped(p, err)
	}
}

func (b *Batcher[P, R]) work(ctx context.Context) {
	for {
		items := b.next(ctx)
		if items == nil {
			return
		}
		b.compute(ctx, items)
	}
}

// compute runs one batch and answers its items.
func (b *Batcher[P, R]) compute(ctx context.Context, items []*item[P, R]) {
	batch := &Batch[P]{Group: items[0].req.Group}
	costs := make([]int, 0, len(items))
	now := b.now()
	for _, it := range items {
		batch.Payloads = append(batch.Payloads, it.req.Payload)
		batch.Priorities = append(batch.Priorities, it.req.Priority)
		batch.RealTokens += it.req.Cost
		costs = append(costs, it.req.Cost)
		wait := now.Sub(it.enqueued)
		batch.Waits = append(batch.Waits, wait)
		if b.obs != nil {
			b.obs.Waited(it.req.Priority, wait)
		}
	}
	if b.cfg.PaddedTokens != nil {
		batch.PaddedTokens = b.cfg.PaddedTokens(costs)
	} else {
		batch.PaddedTokens = slices.Max(costs) * len(items)
	}
	b.mu.Lock()
	fresh := b.idleStaleLocked()
	b.running++
	b.mu.Unlock()
	start := b.now()
	results, err := b.safeRun(ctx, batch)
	if err == nil && len(results) != len(items) {
		err = fmt.Errorf("batcher: run returned %d results for %d requests", len(results), len(items))
	}
	took := b.now().Sub(start)
	b.mu.Lock()
	b.running--
	b.lastDone = b.now()
	b.mu.Unlock()
	if err == nil {
		// Weighted by rows, the pace is what the queue drains at: large
		// batches of short texts and small ones of long texts alike.
		b.mu.Lock()
		if fresh {
			b.paceRows, b.paceTime, b.paceBatch = 0, 0, 0
		}
		b.paceRows = 0.8*b.paceRows + float64(len(items))
		b.paceTime = 0.8*b.paceTime + float64(took)
		if b.paceBatch == 0 {
			b.paceBatch = float64(took)
		}
		b.paceBatch = 0.8*b.paceBatch + 0.2*float64(took)
		b.mu.Unlock()
	}
	if b.obs != nil {
		b.obs.BatchDone(len(items), batch.RealTokens, batch.PaddedTokens, took, err)
	}
	for i, it := range items {
		release(it.req)
		if err != nil {
			it.done <- outcome[R]{err: err}
		} else {
			it.done <- outcome[R]{res: results[i]}
		}
	}
}

func release[P any](req Request[P]) {
	if req.Release != nil {
		req.Release()
	}
}

// safeRun turns a panic in run into an error for the batch, so that one bad
// batch never takes the worker down.
func (b *Batcher[P, R]) safeRun(ctx context.Context, batch *Batch[P]) (res []R, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("batcher: batch computation panicked: %v", r)
		}
	}()
	return b.run(ctx, batch)
}

// next waits for and removes the next batch, or returns nil when the
// batcher is closed and drained, or ctx is done.
func (b *Batcher[P, R]) next(ctx context.Context) []*item[P, R] {
	for {
		b.mu.Lock()
		b.dropDead()
		head, class := b.head()
		if head == nil {
			closing := b.closing
			b.mu.Unlock()
			if closing {
				return nil
			}
			select {
			case <-b.wake:
			case <-b.closed:
			case <-ctx.Done():
				return nil
			}
			continue
		}
		rows, tokens := b.groupSize(head.req.Group, class)
		now := b.now()
		waited := now.Sub(head.enqueued)
		full := rows >= b.cfg.MaxRows || tokens >= b.cfg.MaxTokens
		if full || waited >= b.cfg.MaxDelay || b.closing || b.urgent(head, now) {
			items := b.take(head, class)
			b.mu.Unlock()
			// More may be ready: let another idle worker look.
			b.signal()
			return items
		}
		b.mu.Unlock()
		t := time.NewTimer(b.cfg.MaxDelay - waited)
		select {
		case <-b.wake:
		case <-t.C:
		case <-b.closed:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
		t.Stop()
	}
}

// dropDead answers and removes items whose caller left or whose deadline
// passed: they are never computed.
func (b *Batcher[P, R]) dropDead() {
	now := b.now()
	for p := range b.queues {
		q := b.queues[p][:0]
		for _, it := range b.queues[p] {
			if it.abandoned || (!it.req.Deadline.IsZero() && !now.Before(it.req.Deadline)) {
				release(it.req)
				it.done <- outcome[R]{err: ErrDeadline}
				b.observeDrop(Priority(p), ErrDeadline)
				continue
			}
			q = append(q, it)
		}
		clear(b.queues[p][len(q):])
		b.queues[p] = q
		b.observeDepth(Priority(p))
	}
}

// head is the request the next batch is built around: in the most urgent
// non-empty class, the one nearest its deadline if that is near (see
// urgent), otherwise the oldest. Length grouping and MinFill may hold a
// request back behind younger ones; deadlines bound how long.
func (b *Batcher[P, R]) head() (*item[P, R], Priority) {
	now := b.now()
	for p := Live; p < numPriorities; p++ {
		if len(b.queues[p]) == 0 {
			continue
		}
		var nearest *item[P, R]
		for _, it := range b.queues[p] {
			if b.urgent(it, now) && (nearest == nil || it.req.Deadline.Before(nearest.req.Deadline)) {
				nearest = it
			}
		}
		if nearest != nil {
			return nearest, p
		}
		return b.queues[p][0], p
	}
	return nil, 0
}

// urgent reports whether it must be in the next batch to make its
// deadline: less than two batches' compute time (at the recent pace) is
// left. Urgent requests lead batches, are never held back by Window or
// MinFill, and do not wait for MaxDelay.
func (b *Batcher[P, R]) urgent(it *item[P, R], now time.Time) bool {
	return !it.req.Deadline.IsZero() && b.paceBatch > 0 && float64(it.req.Deadline.Sub(now)) <= 2*b.paceBatch
}

// groupSize counts the requests of group in class and below, and their
// padded token cost if batched together (bounded by MaxRows).
func (b *Batcher[P, R]) groupSize(group string, class Priority) (rows, tokens int) {
	longest := 0
	for p := class; p < numPriorities; p++ {
		for _, it := range b.queues[p] {
			if it.req.Group == group {
				rows++
				longest = max(longest, it.req.Cost)
				if rows >= b.cfg.MaxRows {
					return rows, rows * (longest + b.cfg.RowOverhead)
				}
			}
		}
	}
	return rows, rows * (longest + b.cfg.RowOverhead)
}

// take removes and returns the batch around head: requests of head's group,
// the head's class first, then lower classes, chosen among the oldest
// Window of each in a window of similar lengths around the head's, within
// MaxRows, MaxTokens and MinFill.
func (b *Batcher[P, R]) take(head *item[P, R], class Priority) []*item[P, R] {
	chosen := []*item[P, R]{head}
	longest := head.req.Cost
	filled := head.req.Cost + b.cfg.RowOverhead
	var cands [numPriorities][]*item[P, R]
	queued := 1
	now := b.now()
	isUrgent := map[*item[P, R]]bool{}
	for p := class; p < numPriorities; p++ {
		for i, it := range b.queues[p] {
			if it == head || it.req.Group != head.req.Group {
				continue
			}
			u := b.urgent(it, now)
			if b.cfg.Window > 0 && i >= b.cfg.Window && !u {
				continue
			}
			if u {
				isUrgent[it] = true
			}
			cands[p] = append(cands[p], it)
		}
		queued += len(cands[p])
	}
	// MinFill only holds a request back when there are more than a batch's
	// rows to choose from: otherwise the worker would have no other work for
	// the time the padding costs, and holding it back adds a batch to its
	// latency for nothing.
	minFill := b.cfg.MinFill
	if queued <= b.cfg.MaxRows {
		minFill = 0
	}
	fits := func(cost int, urgent bool) bool {
		padded := (len(chosen) + 1) * (max(longest, cost) + b.cfg.RowOverhead)
		return len(chosen) < b.cfg.MaxRows && padded <= b.cfg.MaxTokens &&
			(urgent || float64(filled+cost+b.cfg.RowOverhead) >= minFill*float64(padded))
	}
	for p := class; p < numPriorities && len(chosen) < b.cfg.MaxRows; p++ {
		// Urgent requests first, nearest deadline first; then the closest
		// lengths to the head's; among equals, the oldest.
		sort.SliceStable(cands[p], func(i, j int) bool {
			a, c := cands[p][i], cands[p][j]
			if isUrgent[a] != isUrgent[c] {
				return isUrgent[a]
			}
			if isUrgent[a] && !a.req.Deadline.Equal(c.req.Deadline) {
				return a.req.Deadline.Before(c.req.Deadline)
			}
			di, dj := abs(a.req.Cost-head.req.Cost), abs(c.req.Cost-head.req.Cost)
			if di != dj {
				return di < dj
			}
			return a.seq < c.seq
		})
		for _, it := range cands[p] {
			if !fits(it.req.Cost, isUrgent[it]) {
				continue
			}
			chosen = append(chosen, it)
			longest = max(longest, it.req.Cost)
			filled += it.req.Cost + b.cfg.RowOverhead
		}
	}
	taken := make(map[*item[P, R]]bool, len(chosen))
	for _, it := range chosen {
		taken[it] = true
	}
	for p := range b.queues {
		b.queues[p] = slices.DeleteFunc(b.queues[p], func(it *item[P, R]) bool { return taken[it] })
		b.observeDepth(Priority(p))
	}
	return chosen
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
