package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/testenv"
)

// component is a service (classifier, ingest, sink) running in this process
// under service.Run, as its binary would, with its HTTP server on a free
// loopback port.
type component struct {
	name   string
	rt     *service.Runtime
	cancel context.CancelFunc
	done   chan error
	logs   *testenv.LogBuffer
}

// startComponent runs c as name with args and waits until /readyz would
// answer 200. The environment is not read: only args configure it, so that
// EMOFLOW_* variables of the shell cannot change what is measured.
func startComponent(ctx context.Context, name string, c service.Component, args ...string) (*component, error) {
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	comp := &component{name: name, cancel: cancel, done: make(chan error, 1), logs: &testenv.LogBuffer{}}
	started := make(chan *service.Runtime, 1)
	args = append([]string{"-http-addr=127.0.0.1:0", "-log-level=warn", "-shutdown-timeout=60s"}, args...)
	noEnv := func(string) (string, bool) { return "", false }
	go func() {
		comp.done <- service.Run(runCtx, name, c, "127.0.0.1:0", args, noEnv, comp.logs, func(rt *service.Runtime) { started <- rt })
	}()
	select {
	case comp.rt = <-started:
	case err := <-comp.done:
		cancel()
		return nil, fmt.Errorf("%s exited at start: %w\n%s", name, err, comp.logs)
	case <-ctx.Done():
		comp.stop()
		return nil, ctx.Err()
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		ok, why := comp.rt.Ready()
		if ok {
			return comp, nil
		}
		select {
		case err := <-comp.done:
			cancel()
			return nil, fmt.Errorf("%s exited before it was ready: %w\n%s", name, err, comp.logs)
		case <-ctx.Done():
			comp.stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			comp.stop()
			return nil, fmt.Errorf("%s not ready after 5 minutes: %s", name, why)
		}
	}
}

// stop shuts the component down as SIGTERM would and returns what
// service.Run returned.
func (c *component) stop() error {
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			return fmt.Errorf("%s stopped with an error: %w\n%s", c.name, err, c.logs)
		}
		return nil
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("%s did not stop within 2 minutes", c.name)
	}
}

// metricSnapshot is a component's Prometheus series at one moment:
// counters and gauges by name{labels}; a histogram as name_sum,
// name_count and its cumulative name_bucket{le=...}.
type metricSnapshot map[string]float64

// snapshot gathers the component's metrics.
func (c *component) snapshot() (metricSnapshot, error) {
	fams, err := c.rt.Metrics.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather the metrics of %s: %w", c.name, err)
	}
	out := metricSnapshot{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			// The series key: its labels sorted, as name=value pairs.
			parts := make([]string, 0, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				parts = append(parts, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(parts)
			key := ""
			if len(parts) > 0 {
				key = "{" + strings.Join(parts, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[f.GetName()+key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[f.GetName()+key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[f.GetName()+"_sum"+key] = m.Histogram.GetSampleSum()
				out[f.GetName()+"_count"+key] = float64(m.Histogram.GetSampleCount())
				for _, bk := range m.Histogram.GetBucket() {
					le := "le=" + strconv.FormatFloat(bk.GetUpperBound(), 'g', -1, 64)
					out[f.GetName()+"_bucket{"+strings.Join(append(slices.Clone(parts), le), ",")+"}"] = float64(bk.GetCumulativeCount())
				}
			}
		}
	}
	return out, nil
}

// sum adds up the series of name whose labels include every name=value
// pair of match.
func (s metricSnapshot) sum(name string, match ...string) float64 {
	total := 0.0
	for key, v := range s {
		series, labels, _ := strings.Cut(key, "{")
		if series != name {
			continue
		}
		ok := true
		for _, m := range match {
			if !strings.Contains(","+strings.TrimSuffix(labels, "}")+",", ","+m+",") {
				ok = false
				break
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// delta is what a series grew by between two snapshots.
func delta(before, after metricSnapshot, name string, match ...string) float64 {
	return after.sum(name, match...) - before.sum(name, match...)
}

// quantileDelta estimates the q-th quantile (0..1) of what histogram name
// (without labels) observed between two snapshots, interpolating linearly
// within a bucket as Prometheus's histogram_quantile does; NaN when it
// observed nothing.
func quantileDelta(before, after metricSnapshot, name string, q float64) float64 {
	type bucket struct{ le, count float64 }
	var buckets []bucket
	prefix := name + "_bucket{le="
	for key, v := range after {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		le, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(key, prefix), "}"), 64)
		if err != nil {
			continue
		}
		buckets = append(buckets, bucket{le, v - before[key]})
	}
	slices.SortFunc(buckets, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	total := delta(before, after, name+"_count")
	if total <= 0 || len(buckets) == 0 {
		return math.NaN()
	}
	rank, lower, below := q*total, 0.0, 0.0
	for _, b := range buckets {
		if b.count >= rank {
			if b.count == below {
				return b.le
			}
			return lower + (b.le-lower)*(rank-below)/(b.count-below)
		}
		lower, below = b.le, b.count
	}
	return buckets[len(buckets)-1].le // in the +Inf bucket: the largest finite bound
}
