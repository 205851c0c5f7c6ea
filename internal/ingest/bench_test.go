package ingest

import (
	"fmt"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
)

// BenchmarkIntegrationCachedPath measures ingest's throughput when every
// message is a cache hit: real Kafka and Redis, the classifier never
// called. Each iteration consumes a fresh topic of 20000 messages with
// -stop-at-end. It reports msgs/s over the whole run (start-up, group join
// and shutdown included) and steady-msgs/s from the first message received
// to the last event handed to the producer. Run it without -race:
//
//	go test -run '^$' -bench CachedPath -benchtime 3x ./internal/ingest
func BenchmarkIntegrationCachedPath(b *testing.B) {
	const n, distinct = 20000, 1000
	texts := make([]string, distinct)
	for i := range texts {
		texts[i] = fmt.Sprintf("a cached text, number %d", i)
	}
	// One classification of every text fills the cache (the Redis key
	// prefix is shared by the iterations).
	warm := newHarness(b, 8)
	msgs := make([]contract.ChatMessage, distinct)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("w%d", i), texts[i], "")
	}
	warm.produceChats(msgs)
	in := warm.start("-stop-at-end")
	if err := <-in.done; err != nil {
		b.Fatal(err)
	}
	in.done <- nil

	var elapsed, steady time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		h := newHarness(b, 8)
		h.prefix = warm.prefix
		msgs := make([]contract.ChatMessage, n)
		for j := range msgs {
			msgs[j] = chat(fmt.Sprintf("m%d-%d", i, j), texts[j%distinct], "")
		}
		h.produceChats(msgs)
		b.StartTimer()
		start := time.Now()
		in := h.start("-stop-at-end", "-batch-size", "256", "-max-in-flight", "8192", "-log-level", "warn")
		if err := <-in.done; err != nil {
			b.Fatal(err)
		}
		in.done <- nil
		elapsed += time.Since(start)
		b.StopTimer()
		if got := in.metric(b, "emoflow_ingest_messages_total", "outcome", "cache_hit"); got != n {
			b.Fatalf("%v cache hits, want %d", got, n)
		}
		if got := h.fake.requests.Load(); got != 0 {
			b.Fatalf("the classifier got %d requests", got)
		}
		var first, last time.Time
		for _, ev := range h.readEvents() {
			if first.IsZero() || ev.ReceivedAt.Before(first) {
				first = ev.ReceivedAt
			}
			if handed := ev.ReceivedAt.Add(time.Duration(ev.Timings.PipelineMs * float64(time.Millisecond))); handed.After(last) {
				last = handed
			}
		}
		steady += last.Sub(first)
	}
	b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(n*b.N)/steady.Seconds(), "steady-msgs/s")
}
