package ingest

import (
	"fmt"
	"sort"
	"sync"
)

// OffsetTracker follows the messages of the partitions that one consumer
// group generation owns, from fetch to completion (event or dead letter
// acknowledged), and says which offsets may be committed: for each
// partition, the commit position is the offset of the first fetched message
// that is not complete, or the offset after the last fetched message when
// all are complete. Messages complete in any order (cache hits overtake
// misses); the position only moves over a contiguous prefix of complete
// messages, so a commit never skips an unfinished message.
//
// A tracker belongs to one generation: partitions are fixed when it is made
// and completions for any other partition are ignored, so nothing is ever
// committed for a partition this member no longer owns. It is safe for
// concurrent use.
type OffsetTracker struct {
	mu    sync.Mutex
	parts map[int]*partitionProgress
}

// partitionProgress is the state of one partition.
type partitionProgress struct {
	// pending are the fetched messages not yet retired (ascending offsets);
	// the head is always incomplete.
	pending []pendingOffset
	// next is the offset after the last fetched message, -1 before the first
	// fetch. Offsets can have gaps (compaction, transaction markers), so the
	// position after a fully complete prefix is next, not last+1 of pending.
	next int64
	// committed is the last position committed, -1 when none.
	committed int64
}

type pendingOffset struct {
	offset int64
	done   bool
}

// NewOffsetTracker returns a tracker for the partitions that are the keys
// of committed; the values are the positions already committed (negative
// when the group has none yet: then the first fetched offset is committable
// at once, which pins where a new group started).
func NewOffsetTracker(committed map[int]int64) *OffsetTracker {
	t := &OffsetTracker{parts: make(map[int]*partitionProgress, len(committed))}
	for p, pos := range committed {
		t.parts[p] = &partitionProgress{next: -1, committed: max(pos, -1)}
	}
	return t
}

// Fetched records that the message at offset of partition was handed out
// for processing. Offsets of a partition must be fetched in increasing
// order; Fetched must be called before the message can complete.
func (t *OffsetTracker) Fetched(partition int, offset int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.parts[partition]
	if !ok {
		return fmt.Errorf("partition %d is not assigned to this generation", partition)
	}
	if offset < 0 || offset < p.next {
		return fmt.Errorf("partition %d: offset %d fetched after offset %d", partition, offset, p.next-1)
	}
	p.pending = append(p.pending, pendingOffset{offset: offset})
	p.next = offset + 1
	return nil
}

// Done records that the message at offset of partition is complete. It
// returns false, and changes nothing, when the message is not one this
// tracker handed out and has not completed yet (a stale completion from an
// earlier generation, or a repeated one).
func (t *OffsetTracker) Done(partition int, offset int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.parts[partition]
	if !ok {
		return false
	}
	i := sort.Search(len(p.pending), func(i int) bool { return p.pending[i].offset >= offset })
	if i == len(p.pending) || p.pending[i].offset != offset || p.pending[i].done {
		return false
	}
	p.pending[i].done = true
	// Retire the complete prefix.
	n := 0
	for n < len(p.pending) && p.pending[n].done {
		n++
	}
	if n == len(p.pending) {
		p.pending = p.pending[:0]
	} else if n > 0 {
		p.pending = p.pending[n:]
	}
	return true
}

// position is the commit position of p, or -1 before the first fetch.
func (p *partitionProgress) position() int64 {
	if len(p.pending) > 0 {
		return p.pending[0].offset
	}
	return p.next
}

// Committable returns, for every partition whose position moved past its
// last committed position, the position to commit (Kafka's committed
// offset is the next message to consume).
func (t *OffsetTracker) Committable() map[int]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[int]int64{}
	for id, p := range t.parts {
		if pos := p.position(); pos > p.committed {
			out[id] = pos
		}
	}
	return out
}

// Committed records that positions (as returned by Committable) were
// committed.
func (t *OffsetTracker) Committed(positions map[int]int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, pos := range positions {
		if p, ok := t.parts[id]; ok && pos > p.committed {
			p.committed = pos
		}
	}
}

// CommittedPosition returns the last position committed for partition, or
// -1 when none is known.
func (t *OffsetTracker) CommittedPosition(partition int) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.parts[partition]; ok {
		return p.committed
	}
	return -1
}
