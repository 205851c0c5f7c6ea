package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
)

// stream is one class of open-loop traffic: requests of one priority and
// deadline arriving as a Poisson process.
type stream struct {
	name     string
	priority string
	rate     float64 // requests per second
	deadline time.Duration
	// texts is how many texts each request carries.
	texts int
}

// outcome is what became of one request.
type outcome struct {
	stream string
	// arrival is when the request was due (the Poisson schedule), end when
	// its answer was read: latency counts any delay in sending it too.
	arrival, end time.Time
	status       int // 0 when no answer came
	code         string
	texts        []string
	err          error
}

func (o outcome) ok() bool { return o.status == http.StatusOK && o.err == nil }

func (o outcome) latency() time.Duration { return o.end.Sub(o.arrival) }

// loadGenerator sends classify requests to one classifier.
type loadGenerator struct {
	url    string
	client *http.Client
	texts  []string
}

func newLoadGenerator(baseURL string, texts []string) *loadGenerator {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Open-loop load keeps many requests open at once; reuse their
	// connections instead of opening new ones all the time.
	tr.MaxIdleConns = 4096
	tr.MaxIdleConnsPerHost = 4096
	return &loadGenerator{url: baseURL + "/v1/classify", client: &http.Client{Transport: tr}, texts: texts}
}

// run offers streams for d (arrivals stop then) and returns when it
// started and every request's outcome, once all are answered. Each stream
// draws its texts at random, with its own generator seeded from seed.
func (g *loadGenerator) run(ctx context.Context, d time.Duration, seed uint64, streams ...stream) (time.Time, []outcome) {
	var (
		mu  sync.Mutex
		out []outcome
		wg  sync.WaitGroup
	)
	start := time.Now()
	for i, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			var sends sync.WaitGroup
			defer sends.Wait()
			at := start
			for {
				at = at.Add(time.Duration(rng.ExpFloat64() / s.rate * float64(time.Second)))
				if at.Sub(start) >= d {
					return
				}
				if wait := time.Until(at); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						return
					}
				}
				texts := make([]string, s.texts)
				for k := range texts {
					texts[k] = g.texts[rng.IntN(len(g.texts))]
				}
				sends.Add(1)
				go func(arrival time.Time) {
					defer sends.Done()
					o := g.send(ctx, s, texts)
					o.arrival = arrival
					mu.Lock()
					out = append(out, o)
					mu.Unlock()
				}(at)
			}
		}()
	}
	wg.Wait()
	return start, out
}

// send posts one request and waits for its answer (at most its deadline
// and a margin for the answer's way back).
func (g *loadGenerator) send(ctx context.Context, s stream, texts []string) outcome {
	o := outcome{stream: s.name, texts: texts}
	body, err := json.Marshal(classifyapi.ClassifyRequest{Texts: texts, Priority: s.priority, DeadlineMs: s.deadline.Milliseconds()})
	if err != nil {
		o.err, o.end = err, time.Now()
		return o
	}
	ctx, cancel := context.WithTimeout(ctx, s.deadline+10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.url, bytes.NewReader(body))
	if err != nil {
		o.err, o.end = err, time.Now()
		return o
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		o.err, o.end = err, time.Now()
		return o
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	o.end, o.status = time.Now(), resp.StatusCode
	if err != nil {
		o.err = err
		return o
	}
	if resp.StatusCode != http.StatusOK {
		var e classifyapi.ErrorResponse
		if json.Unmarshal(raw, &e) == nil {
			o.code = e.Error.Code
		}
		return o
	}
	var r classifyapi.ClassifyResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		o.err = fmt.Errorf("decode the answer: %w", err)
	} else if len(r.Results) != len(texts) {
		o.err = fmt.Errorf("%d results for %d texts", len(r.Results), len(texts))
	}
	return o
}

// tally counts a stream's outcomes among those that arrived in [from, to).
type tally struct {
	requests, ok, rejected, deadline, other int
	texts                                   int // texts answered
	latencies                               []float64
	// errors holds one example per kind of failure other than 429 and 504.
	errors map[string]int
}

func count(outs []outcome, streamName string, from, to time.Time) tally {
	t := tally{errors: map[string]int{}}
	for _, o := range outs {
		if o.stream != streamName || o.arrival.Before(from) || !o.arrival.Before(to) {
			continue
		}
		t.requests++
		switch {
		case o.ok():
			t.ok++
			t.texts += len(o.texts)
			t.latencies = append(t.latencies, float64(o.latency())/float64(time.Millisecond))
		case o.status == http.StatusTooManyRequests:
			t.rejected++
		case o.status == http.StatusGatewayTimeout:
			t.deadline++
		default:
			t.other++
			key := fmt.Sprintf("status %d %s", o.status, o.code)
			if o.err != nil {
				key = o.err.Error()
			}
			t.errors[key]++
		}
	}
	return t
}

// lastAnswer is when the last answer of outs came.
func lastAnswer(outs []outcome) time.Time {
	var last time.Time
	for _, o := range outs {
		if o.end.After(last) {
			last = o.end
		}
	}
	return last
}
