package sink

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// health decides /readyz: not ready while starting or stopping, and not
// ready while ClickHouse fails, as seen both by a periodic ping (so an idle sink notices)
// and by inserts (so a failing insert is not hidden by a good ping).
type health struct {
	// setNotReady is service.Runtime.SetNotReady: "" means ready.
	setNotReady func(reason string)
	up          prometheus.Gauge

	mu sync.Mutex
	// phase says why the sink is not ready regardless of ClickHouse (starting
	// or stopping); "" once started.
	phase     string
	pingErr   error
	insertErr error
}

// errNotChecked is ClickHouse's state before anything reached it.
var errNotChecked = errors.New("not reached yet")

func newHealth(setNotReady func(string), up prometheus.Gauge) *health {
	h := &health{setNotReady: setNotReady, up: up, phase: "starting", pingErr: errNotChecked}
	h.update()
	return h
}

// notReadyBecause makes the sink not ready, whatever ClickHouse's state,
// until started is called.
func (h *health) notReadyBecause(reason string) { h.set(func() { h.phase = reason }) }

// started records that start-up finished.
func (h *health) started() { h.set(func() { h.phase = "" }) }

// pinged records the result of a ClickHouse ping.
func (h *health) pinged(err error) { h.set(func() { h.pingErr = err }) }

// inserted records the result of an insert attempt.
func (h *health) inserted(err error) { h.set(func() { h.insertErr = err }) }

func (h *health) set(change func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	change()
	h.update()
}

func (h *health) update() {
	if h.pingErr == nil && h.insertErr == nil {
		h.up.Set(1)
	} else {
		h.up.Set(0)
	}
	switch {
	case h.phase != "":
		h.setNotReady(h.phase)
	case h.insertErr != nil:
		h.setNotReady("clickhouse inserts failing: " + h.insertErr.Error())
	case h.pingErr != nil:
		h.setNotReady("clickhouse unreachable: " + h.pingErr.Error())
	default:
		h.setNotReady("")
	}
}

// watch pings every interval, each ping bounded by timeout, until ctx ends.
func (h *health) watch(ctx context.Context, interval, timeout time.Duration, ping func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		h.pinged(err)
	}
}
