package ingest

import (
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/emoflow/emoflow/internal/classifyclient"
)

// metrics are ingest's Prometheus metrics.
type metrics struct {
	messages          *prometheus.CounterVec
	lag               *prometheus.GaugeVec
	inFlight          prometheus.Gauge
	batchSize         prometheus.Histogram
	classifyTexts     prometheus.Histogram
	classifierSeconds *prometheus.HistogramVec
	classifyFailures  prometheus.Counter
	targetMismatches  prometheus.Counter
	cacheLookups      *prometheus.CounterVec
	cacheErrors       prometheus.Counter
	redisUp           prometheus.Gauge
	endToEnd          prometheus.Histogram
	publishErrors     prometheus.Counter
	commits           *prometheus.CounterVec
	generations       prometheus.Counter
	fetchPaused       prometheus.Counter
	contextAssigned   *prometheus.CounterVec
	contextErrors     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "emoflow", "ingest"
	latency := prometheus.ExponentialBuckets(0.001, 2, 16) // 1ms .. 33s
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "messages_total",
			Help: "Messages finished, by outcome (classified, cache_hit, dead_letter) and dead-letter reason."}, []string{"outcome", "reason"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "consumer_lag",
			Help: "Messages between the committed offset and the high watermark, per owned input partition."}, []string{"partition"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "in_flight_messages",
			Help: "Messages fetched and not yet finished."}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "batch_size",
			Help: "Messages per processed batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		classifyTexts: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "classify_request_texts",
			Help: "Texts per classifier request.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		classifierSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "classifier_request_seconds",
			Help: "Duration of HTTP requests to classifier endpoints, by operation and outcome.", Buckets: latency}, []string{"op", "endpoint", "outcome"}),
		classifyFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "classify_failures_total",
			Help: "Classifier calls that failed after the client's retries; the batch backs off and tries again."}),
		targetMismatches: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "classify_target_mismatches_total",
			Help: "Classifier answers naming another model, adapter or label set than expected (results are cached under the answer's)."}),
		cacheLookups: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_lookups_total",
			Help: "Cache lookups by result: hit, miss, or skipped (Redis unavailable)."}, []string{"result"}),
		cacheErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_errors_total",
			Help: "Failed Redis calls and unreadable cache entries."}),
		redisUp: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "redis_up",
			Help: "1 while the Redis cache is in use, 0 while ingest runs without it."}),
		endToEnd: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "end_to_end_seconds",
			Help: "From a message's sent_at to its event being acknowledged by Kafka.", Buckets: latency}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "publish_errors_total",
			Help: "Failed writes of events or dead letters (retried)."}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "offset_commits_total",
			Help: "Offset commits by result (ok, error)."}, []string{"result"}),
		generations: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "group_generations_total",
			Help: "Consumer group generations joined (one per rebalance)."}),
		fetchPaused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "fetch_paused_seconds_total",
			Help: "Time fetching was paused because every classifier endpoint was overloaded."}),
		contextAssigned: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "context_messages_total",
			Help: "Messages given a conversation context, by the window it came from: redis, or memory (Redis unavailable)."}, []string{"source"}),
		contextErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "context_window_errors_total",
			Help: "Conversation windows in Redis that could not be read (the batch used the in-memory windows)."}),
	}
	reg.MustRegister(m.messages, m.lag, m.inFlight, m.batchSize, m.classifyTexts, m.classifierSeconds, m.classifyFailures,
		m.targetMismatches, m.cacheLookups, m.cacheErrors, m.redisUp, m.endToEnd, m.publishErrors, m.commits,
		m.generations, m.fetchPaused, m.contextAssigned, m.contextErrors)
	return m
}

// observeAttempt records one classifier HTTP request.
func (m *metrics) observeAttempt(a classifyclient.Attempt) {
	var tErr *classifyclient.TransportError
	var outcome string
	switch {
	case a.Err == nil:
		outcome = "ok"
	case errors.Is(a.Err, classifyclient.ErrBadResponse):
		outcome = "bad_response"
	case a.Status != 0:
		outcome = strconv.Itoa(a.Status)
	case errors.As(a.Err, &tErr):
		outcome = "transport_error"
	default:
		outcome = "canceled"
	}
	m.classifierSeconds.WithLabelValues(a.Op, a.Endpoint, outcome).Observe(a.Duration.Seconds())
}
