package batcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type echo struct {
	mu      sync.Mutex
	batches []*Batch[int]
	gate    chan struct{} // when not nil, each batch waits for a receive
	entered chan struct{} // receives once per batch that started
	panicOn int
}

func (e *echo) run(ctx context.Context, b *Batch[int]) ([]string, error) {
	if e.entered != nil {
		e.entered <- struct{}{}
	}
	if e.gate != nil {
		<-e.gate
	}
	e.mu.Lock()
	e.batches = append(e.batches, b)
	e.mu.Unlock()
	out := make([]string, len(b.Payloads))
	for i, p := range b.Payloads {
		if p == e.panicOn && p != 0 {
			panic("boom")
		}
		out[i] = fmt.Sprintf("%s/%d", b.Group, p)
	}
	return out, nil
}

func (e *echo) computed() map[int]bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := map[int]bool{}
	for _, b := range e.batches {
		for _, p := range b.Payloads {
			m[p] = true
		}
	}
	return m
}

func newTest(t *testing.T, cfg Config, e *echo) *Batcher[int, string] {
	t.Helper()
	b, err := New(cfg, e.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	t.Cleanup(func() {
		if e.gate != nil {
			close(e.gate) // release blocked batches
		}
		_ = b.Close(context.Background())
		cancel()
	})
	return b
}

func baseConfig() Config {
	return Config{MaxRows: 8, MaxTokens: 1000, MaxDelay: 5 * time.Millisecond, QueueSize: [2]int{1000, 1000}, Workers: 2}
}

func TestManyConcurrentClientsGetTheirOwnAnswers(t *testing.T) {
	e := &echo{}
	b := newTest(t, baseConfig(), e)
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i := 1; i <= 500; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			group := fmt.Sprintf("g%d", i%3)
			res, err := b.Submit(context.Background(), Request[int]{Group: group, Cost: i%17 + 1, Payload: i, Priority: Priority(i % 2)})
			if err != nil || res != fmt.Sprintf("%s/%d", group, i) {
				bad.Add(1)
				t.Errorf("request %d: %q, %v", i, res, err)
			}
		}(i)
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d wrong answers", bad.Load())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, batch := range e.batches {
		if len(batch.Payloads) > 8 {
			t.Errorf("batch of %d rows > MaxRows 8", len(batch.Payloads))
		}
		for _, p := range batch.Payloads {
			if fmt.Sprintf("g%d", p%3) != batch.Group {
				t.Errorf("payload %d in a batch of group %s", p, batch.Group)
			}
		}
	}
}

func TestTokenBudgetAndLengthWindows(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxRows, cfg.MaxTokens, cfg.RowOverhead = 1, 4, 4*(10+2), 2
	b := newTest(t, cfg, e)
	// Occupy the worker so everything below queues up first.
	occupy(t, b, e)
	costs := map[int]int{}
	for i := 1; i <= 8; i++ {
		costs[i] = 2
		if i%2 == 0 {
			costs[i] = 10
		}
	}
	batches := runQueued(t, b, e, costs)
	// The occupying batch, then two batches of four.
	if len(batches) != 2 {
		t.Fatalf("%d batches after the occupying one, want two of four", len(batches))
	}
	for _, batch := range batches {
		longest := 0
		for _, p := range batch.Payloads {
			longest = max(longest, costs[p])
		}
		if len(batch.Payloads)*(longest+2) > cfg.MaxTokens {
			t.Errorf("batch %v exceeds the token budget", batch.Payloads)
		}
		for _, p := range batch.Payloads {
			if costs[p] != costs[batch.Payloads[0]] {
				t.Errorf("batch %v mixes lengths although a window of equal lengths was available", batch.Payloads)
			}
		}
		if batch.RealTokens != batch.PaddedTokens {
			t.Errorf("batch %v has padding %d/%d", batch.Payloads, batch.RealTokens, batch.PaddedTokens)
		}
	}
}

// TestMinFillKeepsPaddingDown queues short and long requests that the row
// limit and the token budget would let share batches: with MinFill, every
// batch stays at least that full, and the long requests still run (in a
// batch of their own).
func TestMinFillKeepsPaddingDown(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxRows, cfg.MaxTokens, cfg.RowOverhead, cfg.MinFill = 1, 8, 1000, 2, 0.8
	b := newTest(t, cfg, e)
	occupy(t, b, e)
	// Payloads 1-3 cost 4, 4-6 cost 6, 7-9 cost 40: 4 and 6 may share a
	// batch (fill (3·6 + 3·8)/(6·8) = 0.875), 40 joins neither. Nine
	// requests are more than a batch's rows, so MinFill holds.
	costs := map[int]int{1: 4, 2: 4, 3: 4, 4: 6, 5: 6, 6: 6, 7: 40, 8: 40, 9: 40}
	batches := runQueued(t, b, e, costs)
	if len(batches) != 2 {
		t.Fatalf("%d batches after the occupying one, want one of the short requests and one of the long", len(batches))
	}
	for _, batch := range batches {
		rows := len(batch.Payloads)
		fill := float64(batch.RealTokens+rows*cfg.RowOverhead) / float64(batch.PaddedTokens+rows*cfg.RowOverhead)
		if fill < cfg.MinFill {
			t.Errorf("batch %v is %.2f full, below MinFill %.2f", batch.Payloads, fill, cfg.MinFill)
		}
		if got := fmt.Sprint(slices.Sorted(slices.Values(batch.Payloads))); got != "[1 2 3 4 5 6]" && got != "[7 8 9]" {
			t.Errorf("batch %v: want the six short requests together and the long ones together", batch.Payloads)
		}
	}
}

// TestMinFillWaivedAtLightLoad: when every queued request fits one batch,
// a long one joins the short ones rather than wait for a batch of its own
// (the worker has nothing else to do meanwhile).
func TestMinFillWaivedAtLightLoad(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxRows, cfg.MaxTokens, cfg.RowOverhead, cfg.MinFill = 1, 8, 1000, 2, 0.8
	b := newTest(t, cfg, e)
	occupy(t, b, e)
	batches := runQueued(t, b, e, map[int]int{1: 4, 2: 4, 3: 40})
	if len(batches) != 1 {
		var got [][]int
		for _, b := range batches {
			got = append(got, b.Payloads)
		}
		t.Fatalf("batches %v after the occupying one, want one of all three", got)
	}
}

// TestWindowKeepsArrivalOrder: with a window of two, the oldest request
// shares its batch with the next oldest, not with a later one of its own
// length.
func TestWindowKeepsArrivalOrder(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxRows, cfg.Window = 1, 2, 2
	b := newTest(t, cfg, e)
	occupy(t, b, e)
	var wg sync.WaitGroup
	for i, cost := range []int{10, 2, 10} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.Submit(context.Background(), Request[int]{Group: "g", Cost: cost, Payload: i + 1})
		}()
		waitDepth(t, b, Live, i+1) // queued in this order
	}
	for i := 0; i < 3; i++ {
		e.gate <- struct{}{}
	}
	wg.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	if got := fmt.Sprint(e.batches[1].Payloads); got != "[1 2]" {
		t.Fatalf("first batch after the occupying one: %s, want [1 2] (the two oldest)", got)
	}
}

// TestBacklogFollowsThePace runs on a fake clock that every batch
// advances by 20ms plus 5ms a row: the estimate counts the queued requests
// of the priority and above at the recent time per row, batches weighted
// by their rows.
func TestBacklogFollowsThePace(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxRows, cfg.MaxDelay, cfg.Window = 1, 4, 0, 4
	b := newClockedTest(t, cfg, e, func(rows int) time.Duration { return 20*time.Millisecond + time.Duration(rows)*5*time.Millisecond })

	var answered sync.WaitGroup
	submitN := func(p Priority, n, from int) {
		for i := 0; i < n; i++ {
			answered.Go(func() {
				b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: from + i, Priority: p})
			})
		}
		waitDepth(t, b, p, n)
	}
	occupy(t, b, e)
	if _, ok := b.Backlog(Live, 1); ok {
		t.Fatal("an estimate before any batch ran")
	}
	submitN(Live, 4, 1)
	e.gate <- struct{}{} // the occupying batch ends (1 row, 25ms); the four rows run (40ms)
	<-e.entered
	e.gate <- struct{}{}
	answered.Wait()
	occupy(t, b, e)
	submitN(Live, 3, 10)
	submitN(Replay, 2, 20)
	// (0.8·25ms + 40ms) / (0.8·1 + 4) = 12.5ms a row.
	near := func(d, want time.Duration) bool { return d > want-time.Microsecond && d < want+time.Microsecond }
	if d, ok := b.Backlog(Live, 2); !ok || !near(d, 5*12500*time.Microsecond) {
		t.Errorf("live backlog = %v, %v; want 62.5ms (3 queued + 2 new rows at 12.5ms)", d, ok)
	}
	if d, ok := b.Backlog(Replay, 1); !ok || !near(d, 6*12500*time.Microsecond) {
		t.Errorf("replay backlog = %v, %v; want 75ms (3 live + 2 replay queued + 1 new)", d, ok)
	}
}

// newClockedTest starts a batcher whose clock stands still but for its
// batches, each of which advances it by took(rows).
func newClockedTest(t *testing.T, cfg Config, e *echo, took func(rows int) time.Duration) *Batcher[int, string] {
	t.Helper()
	var clock atomic.Int64
	b, err := New(cfg, func(ctx context.Context, batch *Batch[int]) ([]string, error) {
		clock.Add(int64(took(len(batch.Payloads))))
		return e.run(ctx, batch)
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.now = func() time.Time { return time.Unix(0, clock.Load()) }
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	t.Cleanup(func() {
		close(e.gate)
		_ = b.Close(context.Background())
		cancel()
	})
	return b
}

// runQueued submits one request per payload with its cost while occupy
// holds the worker, waits until all are queued, then lets every batch run
// until all are answered; it returns the batches after the occupying one.
func runQueued(t *testing.T, b *Batcher[int, string], e *echo, costs map[int]int) []*Batch[int] {
	t.Helper()
	var wg sync.WaitGroup
	for p, cost := range costs {
		wg.Go(func() {
			if _, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: cost, Payload: p}); err != nil {
				t.Errorf("request %d: %v", p, err)
			}
		})
	}
	waitDepth(t, b, Live, len(costs))
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case e.gate <- struct{}{}:
			case <-done:
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	<-stopped
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.batches[1:])
}

// occupy keeps the single worker busy with one batch until the test
// releases it through the gate.
func occupy(t *testing.T, b *Batcher[int, string], e *echo) {
	t.Helper()
	go b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 1000})
	select {
	case <-e.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not start the occupying batch")
	}
}

func waitDepth(t *testing.T, b *Batcher[int, string], p Priority, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.Depth(p) != n {
		if time.Now().After(deadline) {
			t.Fatalf("queue %s depth %d, want %d", p, b.Depth(p), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLiveBeforeReplay(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxRows = 1, 2
	b := newTest(t, cfg, e)
	occupy(t, b, e)
	var wg sync.WaitGroup
	submit := func(p Priority, n int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: n, Priority: p})
		}()
	}
	for i := 1; i <= 4; i++ {
		submit(Replay, i)
	}
	waitDepth(t, b, Replay, 4)
	for i := 11; i <= 14; i++ {
		submit(Live, i)
	}
	waitDepth(t, b, Live, 4)
	for i := 0; i < 5; i++ {
		e.gate <- struct{}{}
	}
	wg.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	// After the occupying batch: two live batches, then the replays.
	for i, batch := range e.batches[1:3] {
		for _, p := range batch.Payloads {
			if p < 10 {
				t.Errorf("batch %d ran replay request %d while live requests waited", i+1, p)
			}
		}
	}
}

func TestDeadlinePassedIsNeverComputed(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers = 1
	b := newTest(t, cfg, e)
	occupy(t, b, e)
	errc := make(chan error, 1)
	go func() {
		_, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 7, Deadline: time.Now().Add(20 * time.Millisecond)})
		errc <- err
	}()
	if err := <-errc; !errors.Is(err, ErrDeadline) {
		t.Fatalf("Submit = %v, want ErrDeadline", err)
	}
	e.gate <- struct{}{}
	// A later request still runs, and the expired one did not.
	done := make(chan struct{})
	go func() { b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 8}); close(done) }()
	e.gate <- struct{}{}
	<-done
	if c := e.computed(); c[7] || !c[8] {
		t.Fatalf("computed %v: the expired request ran or the next did not", c)
	}
}

func TestFullQueueRejectsAtOnce(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.QueueSize = 1, [2]int{2, 1}
	b := newTest(t, cfg, e)
	occupy(t, b, e)
	for i := 1; i <= 2; i++ {
		go b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: i})
	}
	waitDepth(t, b, Live, 2)
	if _, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 3}); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("live into a full queue: %v", err)
	}
	go b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 4, Priority: Replay})
	waitDepth(t, b, Replay, 1)
	if _, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 5, Priority: Replay}); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("replay into a full queue: %v", err)
	}
}

func TestCloseDrainsQueuedWork(t *testing.T) {
	e := &echo{}
	cfg := baseConfig()
	cfg.MaxDelay = time.Hour // only Close can release the partial batches
	b, err := New(cfg, e.run, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Start(context.Background())
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := 1; i <= 5; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: i}); err == nil {
				ok.Add(1)
			}
		}(i)
	}
	waitDepth(t, b, Live, 5)
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if ok.Load() != 5 {
		t.Fatalf("%d of 5 queued requests answered after Close", ok.Load())
	}
	if _, err := b.Submit(context.Background(), Request[int]{Group: "g", Payload: 9}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close = %v", err)
	}
}

func TestPanicFailsTheBatchNotTheWorker(t *testing.T) {
	e := &echo{panicOn: 3}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxDelay = 1, 0
	b := newTest(t, cfg, e)
	if _, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 3}); err == nil {
		t.Fatal("panicking batch returned no error")
	}
	if res, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 4}); err != nil || res != "g/4" {
		t.Fatalf("after a panic: %q %v", res, err)
	}
}

// TestReleaseIsCalledOnceWhateverHappens covers the paths a request can
// take: computed, rejected on a full queue, dropped at its deadline.
func TestReleaseIsCalledOnceWhateverHappens(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.QueueSize = 1, [2]int{1, 1}
	b := newTest(t, cfg, e)
	var mu sync.Mutex
	released := map[int]int{}
	req := func(p int, deadline time.Time) Request[int] {
		return Request[int]{Group: "g", Cost: 1, Payload: p, Deadline: deadline, Release: func() {
			mu.Lock()
			released[p]++
			mu.Unlock()
		}}
	}
	done := make(chan struct{})
	go func() { b.Submit(context.Background(), req(1, time.Time{})); close(done) }()
	<-e.entered // 1 is computing
	expired := make(chan error, 1)
	go func() {
		_, err := b.Submit(context.Background(), req(2, time.Now().Add(30*time.Millisecond)))
		expired <- err
	}()
	waitDepth(t, b, Live, 1)
	if _, err := b.Submit(context.Background(), req(3, time.Time{})); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("3: %v", err)
	}
	<-expired
	e.gate <- struct{}{}
	<-done
	// 2 is released when the worker drops it from the queue; until then it
	// fills the queue of one and 4 would be refused.
	waitDepth(t, b, Live, 0)
	next := make(chan struct{})
	go func() { b.Submit(context.Background(), req(4, time.Time{})); close(next) }()
	<-e.entered
	e.gate <- struct{}{}
	<-next
	mu.Lock()
	defer mu.Unlock()
	for p := 1; p <= 4; p++ {
		if released[p] != 1 {
			t.Errorf("request %d released %d times", p, released[p])
		}
	}
}

// TestUrgentRequestLeadsTheNextBatch runs on a fake clock that every batch
// advances by 10s: a request queued behind older ones, whose deadline falls
// before their batches would end, leads the next batch (beyond the window
// and despite MinFill) instead of expiring in the queue.
func TestUrgentRequestLeadsTheNextBatch(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers, cfg.MaxRows, cfg.MaxDelay, cfg.Window, cfg.MinFill = 1, 2, 0, 2, 0.9
	b := newClockedTest(t, cfg, e, func(int) time.Duration { return 10 * time.Second })
	occupy(t, b, e)
	var wg sync.WaitGroup
	results := make(map[int]error)
	var mu sync.Mutex
	submit := func(payload, cost int, deadline time.Time) {
		wg.Go(func() {
			_, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: cost, Payload: payload, Deadline: deadline})
			mu.Lock()
			results[payload] = err
			mu.Unlock()
		})
	}
	for i := 1; i <= 4; i++ {
		submit(i, 10, time.Time{})
		waitDepth(t, b, Live, i)
	}
	// Due 15s after the start: the occupying batch ends at 10s, and in
	// arrival order it would run in the third batch, ending at 40s. Its
	// length (40) would also fail MinFill beside the others.
	submit(5, 40, time.Unix(0, int64(15*time.Second)))
	waitDepth(t, b, Live, 5)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for open := true; open; {
		select {
		case e.gate <- struct{}{}:
		case <-done:
			open = false
		}
	}
	if err := results[5]; err != nil {
		t.Fatalf("the urgent request: %v, want it computed", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if first := e.batches[1].Payloads; !slices.Contains(first, 5) {
		t.Fatalf("first batch after the occupying one: %v, want it led by the urgent request 5", first)
	}
}

// TestStalePaceIsMeasuredAgain: a pace measured in a slow spell makes the
// estimate refuse-worthy; once the workers have been idle for paceStale,
// the estimate admits again, and the next batch's pace replaces the slow
// one rather than blending with it. Without that, a classifier refusing
// every request would never run the batch that corrects its pace.
func TestStalePaceIsMeasuredAgain(t *testing.T) {
	var clock atomic.Int64
	var perRow atomic.Int64
	perRow.Store(int64(time.Second)) // the slow spell
	cfg := baseConfig()
	cfg.Workers, cfg.MaxDelay = 1, 0
	b, err := New(cfg, func(ctx context.Context, batch *Batch[int]) ([]string, error) {
		clock.Add(perRow.Load() * int64(len(batch.Payloads)))
		return make([]string, len(batch.Payloads)), nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.now = func() time.Time { return time.Unix(0, clock.Load()) }
	ctx, cancel := context.WithCancel(context.Background())
	b.Start(ctx)
	defer func() {
		_ = b.Close(context.Background())
		cancel()
	}()
	submit := func() {
		if _, err := b.Submit(context.Background(), Request[int]{Group: "g", Cost: 1, Payload: 1}); err != nil {
			t.Fatal(err)
		}
	}
	submit()
	if d, ok := b.Backlog(Live, 10); !ok || d != 10*time.Second {
		t.Fatalf("backlog after a slow batch = %v, %v; want 10s (10 rows at 1s)", d, ok)
	}
	clock.Add(int64(2 * time.Second)) // idle since
	if d, ok := b.Backlog(Live, 10); !ok || d != 0 {
		t.Fatalf("backlog after %s idle = %v, %v; want 0 (admit, measure again)", 2*time.Second, d, ok)
	}
	perRow.Store(int64(time.Millisecond)) // the spell is over
	submit()
	if d, ok := b.Backlog(Live, 10); !ok || d != 10*time.Millisecond {
		t.Fatalf("backlog after a fast batch = %v, %v; want 10ms (the new pace alone)", d, ok)
	}
}

// TestPaddedTokensAsTheRunnerLaysOut: a batch's PaddedTokens come from
// Config.PaddedTokens (a runner that computes a batch in parts pads each to
// its own longest row), not from rows × the longest cost.
func TestPaddedTokensAsTheRunnerLaysOut(t *testing.T) {
	e := &echo{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	cfg := baseConfig()
	cfg.Workers = 1
	halves := func(costs []int) int { // two halves in order of cost, each padded to its longest
		s := slices.Sorted(slices.Values(costs))
		h := len(s) / 2
		if h == 0 {
			return s[0]
		}
		return h*s[h-1] + (len(s)-h)*s[len(s)-1]
	}
	cfg.PaddedTokens = halves
	b := newTest(t, cfg, e)
	occupy(t, b, e)
	costs := map[int]int{}
	for i := 1; i <= 8; i++ {
		costs[i] = 3 + 6*(i%2)
	}
	batches := runQueued(t, b, e, costs)
	if len(batches) != 1 || len(batches[0].Payloads) != 8 {
		t.Fatalf("batches %v, want one of all eight", batches)
	}
	var got []int
	for _, p := range batches[0].Payloads {
		got = append(got, costs[p])
	}
	if want := halves(got); batches[0].PaddedTokens != want || want == 8*9 {
		t.Errorf("PaddedTokens %d, want the runner's %d (not rows × longest, 72)", batches[0].PaddedTokens, want)
	}
}
