package ingest

import (
	"context"
	"time"
)

// batch reads items from in and sends them to out in batches of at most
// size items: a batch leaves when it is full or when wait has passed since
// its first item, whichever comes first, so a lone message is not held
// longer than wait. When in is closed the last partial batch is sent and out
// is closed. When ctx ends, batch returns at once and closes out; what it
// held is dropped (its messages stay uncommitted).
func batch[T any](ctx context.Context, in <-chan T, out chan<- []T, size int, wait time.Duration) {
	defer close(out)
	timer := time.NewTimer(wait)
	timer.Stop()
	defer timer.Stop()
	var cur []T
	flush := func() bool {
		timer.Stop()
		if len(cur) == 0 {
			return true
		}
		select {
		case out <- cur:
			cur = nil
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case it, ok := <-in:
			if !ok {
				flush()
				return
			}
			cur = append(cur, it)
			if len(cur) == 1 {
				timer.Reset(wait)
			}
			if len(cur) >= size && !flush() {
				return
			}
		case <-timer.C:
			if !flush() {
				return
			}
		}
	}
}
