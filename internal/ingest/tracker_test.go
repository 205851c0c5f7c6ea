package ingest

import (
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
)

func mustFetch(t *testing.T, tr *OffsetTracker, partition int, offsets ...int64) {
	t.Helper()
	for _, o := range offsets {
		if err := tr.Fetched(partition, o); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTrackerNothingFetchedNothingToCommit(t *testing.T) {
	tr := NewOffsetTracker(map[int]int64{0: -1, 1: -1})
	if got := tr.Committable(); len(got) != 0 {
		t.Fatalf("Committable() = %v before any fetch", got)
	}
}

func TestTrackerNewGroupPinsItsStart(t *testing.T) {
	// Without a committed offset the first fetched offset is committable
	// before it completes: a group that started at "latest" must restart
	// there, not at a later "latest", after a crash.
	tr := NewOffsetTracker(map[int]int64{0: -1})
	mustFetch(t, tr, 0, 42, 43)
	if got, want := tr.Committable(), map[int]int64{0: 42}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Committable() = %v, want %v", got, want)
	}
}

func TestTrackerOutOfOrderCompletion(t *testing.T) {
	tr := NewOffsetTracker(map[int]int64{0: 10})
	mustFetch(t, tr, 0, 10, 11, 12, 13, 14)
	steps := []struct {
		done int64
		want map[int]int64
	}{
		{12, map[int]int64{}},      // 10 and 11 still pending
		{14, map[int]int64{}},      // still blocked by 10
		{10, map[int]int64{0: 11}}, // 10 done: position is the first incomplete, 11
		{11, map[int]int64{0: 13}}, // 11 done: 12 was done, 13 is next
		{13, map[int]int64{0: 15}}, // all done: after the last fetched
	}
	for _, s := range steps {
		if !tr.Done(0, s.done) {
			t.Fatalf("Done(0, %d) = false", s.done)
		}
		if got := tr.Committable(); !reflect.DeepEqual(got, s.want) {
			t.Fatalf("after Done(%d): Committable() = %v, want %v", s.done, got, s.want)
		}
	}
}

func TestTrackerCommittedPositionsAreNotRepeated(t *testing.T) {
	tr := NewOffsetTracker(map[int]int64{0: -1, 1: 5})
	mustFetch(t, tr, 0, 0, 1)
	mustFetch(t, tr, 1, 5)
	tr.Done(0, 0)
	tr.Done(1, 5)
	got := tr.Committable()
	if want := map[int]int64{0: 1, 1: 6}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Committable() = %v, want %v", got, want)
	}
	tr.Committed(got)
	if got := tr.Committable(); len(got) != 0 {
		t.Fatalf("Committable() after commit = %v, want nothing new", got)
	}
	tr.Done(0, 1)
	if got, want := tr.Committable(), map[int]int64{0: 2}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Committable() = %v, want %v", got, want)
	}
}

func TestTrackerGapsInOffsets(t *testing.T) {
	// Compacted topics and transaction markers leave holes in offsets: the
	// position after a complete prefix is after the last fetched message,
	// and a hole never blocks the position.
	tr := NewOffsetTracker(map[int]int64{3: 100})
	mustFetch(t, tr, 3, 100, 105, 106, 200)
	tr.Done(3, 105)
	if got := tr.Committable(); len(got) != 0 {
		t.Fatalf("Committable() = %v, want nothing (100 pending)", got)
	}
	tr.Done(3, 100)
	if got, want := tr.Committable(), map[int]int64{3: 106}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Committable() = %v, want %v", got, want)
	}
	tr.Done(3, 106)
	if got, want := tr.Committable(), map[int]int64{3: 200}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Committable() = %v, want %v", got, want)
	}
	tr.Done(3, 200)
	if got, want := tr.Committable(), map[int]int64{3: 201}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Committable() = %v, want %v", got, want)
	}
}

func TestTrackerRejectsWhatItDidNotHandOut(t *testing.T) {
	tr := NewOffsetTracker(map[int]int64{0: 7})
	mustFetch(t, tr, 0, 7)
	if tr.Done(0, 6) || tr.Done(0, 8) {
		t.Fatal("Done accepted an offset that was never fetched")
	}
	if !tr.Done(0, 7) || tr.Done(0, 7) {
		t.Fatal("Done must accept a fetched offset exactly once")
	}
	if err := tr.Fetched(0, 7); err == nil {
		t.Fatal("Fetched accepted an offset that does not move forward")
	}
	if err := tr.Fetched(0, 3); err == nil {
		t.Fatal("Fetched accepted an offset behind the last one")
	}
}

func TestTrackerRebalanceLostPartitionsAreNeverCommitted(t *testing.T) {
	// Generation 1 owns partitions 0 and 1; a rebalance gives generation 2
	// only partition 1. Completions of generation 1's work on partition 0
	// that arrive late must not reach generation 2's commits, and
	// generation 2 starts from its own fetches.
	gen1 := NewOffsetTracker(map[int]int64{0: 0, 1: 0})
	mustFetch(t, gen1, 0, 0, 1, 2)
	mustFetch(t, gen1, 1, 0, 1)
	gen1.Done(0, 0)
	gen1.Done(1, 0)
	final := gen1.Committable()
	if want := map[int]int64{0: 1, 1: 1}; !reflect.DeepEqual(final, want) {
		t.Fatalf("generation 1 final commit = %v, want %v", final, want)
	}

	gen2 := NewOffsetTracker(map[int]int64{1: 1})
	if gen2.Done(0, 1) || gen2.Done(0, 2) {
		t.Fatal("generation 2 accepted a completion of a partition it does not own")
	}
	if err := gen2.Fetched(0, 3); err == nil {
		t.Fatal("generation 2 accepted a fetch of a partition it does not own")
	}
	// Generation 2 refetches partition 1 from the committed offset 1; a
	// late completion of generation 1's message at offset 1 goes to
	// generation 1's tracker, not this one.
	mustFetch(t, gen2, 1, 1, 2)
	gen1.Done(1, 1)
	if got := gen2.Committable(); len(got) != 0 {
		t.Fatalf("generation 2 Committable() = %v, want nothing", got)
	}
	gen2.Done(1, 2)
	gen2.Done(1, 1)
	if got, want := gen2.Committable(), map[int]int64{1: 3}; !reflect.DeepEqual(got, want) {
		t.Fatalf("generation 2 Committable() = %v, want %v", got, want)
	}
}

func TestTrackerConcurrentRandomCompletion(t *testing.T) {
	// Messages complete in random order from many goroutines; at every
	// moment the committable position must be the length of the complete
	// prefix, checked against a model after all are done, and never ahead
	// of an incomplete message while they run.
	const partitions, perPartition = 4, 2000
	start := map[int]int64{}
	for p := range partitions {
		start[p] = 0
	}
	tr := NewOffsetTracker(start)
	type msg struct {
		p   int
		off int64
	}
	var all []msg
	for p := range partitions {
		for o := range perPartition {
			mustFetch(t, tr, p, int64(o))
			all = append(all, msg{p, int64(o)})
		}
	}
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })

	var mu sync.Mutex
	done := make([][]bool, partitions)
	for p := range done {
		done[p] = make([]bool, perPartition)
	}
	work := make(chan msg)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for m := range work {
				mu.Lock()
				done[m.p][m.off] = true
				mu.Unlock()
				if !tr.Done(m.p, m.off) {
					t.Errorf("Done(%d, %d) = false", m.p, m.off)
				}
			}
		})
	}
	checks := 0
	for i, m := range all {
		work <- m
		if i%97 == 0 {
			// Read positions first, then the model: messages only ever
			// become complete, so a position ahead of the model's prefix
			// would be a skipped message.
			pos := tr.Committable()
			mu.Lock()
			for p, at := range pos {
				for o := range at {
					if !done[p][o] {
						t.Fatalf("position %d of partition %d skips incomplete offset %d", at, p, o)
					}
				}
			}
			mu.Unlock()
			tr.Committed(pos)
			checks++
		}
	}
	close(work)
	wg.Wait()
	tr.Committed(tr.Committable())
	for p := range partitions {
		tr.mu.Lock()
		committed := tr.parts[p].committed
		tr.mu.Unlock()
		if committed != perPartition {
			t.Errorf("partition %d committed %d, want %d", p, committed, perPartition)
		}
	}
	if checks == 0 {
		t.Fatal("no intermediate checks ran")
	}
}
