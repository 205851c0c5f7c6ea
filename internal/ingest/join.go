package ingest

import (
	"errors"
	"sync"

	"github.com/emoflow/emoflow/internal/contract"
)

// joiner makes concurrent batches that miss the cache on the same key share
// one classification: the first batch to claim a key classifies it (the
// leader), later ones wait for its result (followers). Unlike
// singleflight.Group it works on whole batches of keys, so a batch can lead
// some keys, follow others, and send all it leads in one request.
type joiner struct {
	mu      sync.Mutex
	flights map[string]*flight
}

// flight is one key being classified.
type flight struct {
	done chan struct{}
	// Set before done is closed: a result, or a rejection (the classifier
	// refused the text), or err when the leader gave up (the follower then
	// classifies the key itself).
	res    *classification
	reject *contract.InvalidError
	err    error
}

// errLeaderGaveUp is a flight whose leader stopped before a result.
var errLeaderGaveUp = errors.New("the batch classifying this text gave up")

func newJoiner() *joiner { return &joiner{flights: map[string]*flight{}} }

// claim returns the flight of key and whether the caller leads it. A leader
// must call finish exactly once.
func (j *joiner) claim(key string) (*flight, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if f, ok := j.flights[key]; ok {
		return f, false
	}
	f := &flight{done: make(chan struct{})}
	j.flights[key] = f
	return f, true
}

// finish publishes the outcome of a flight the caller leads and forgets it:
// later claims of key start a new flight (by then the cache has the result).
func (j *joiner) finish(key string, f *flight, res *classification, reject *contract.InvalidError, err error) {
	j.mu.Lock()
	delete(j.flights, key)
	j.mu.Unlock()
	f.res, f.reject, f.err = res, reject, err
	close(f.done)
}
