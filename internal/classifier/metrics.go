package classifier

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/emoflow/emoflow/internal/batcher"
)

// metrics are the classifier's Prometheus series; they implement
// batcher.Observer.
type metrics struct {
	queueDepth   *prometheus.GaugeVec
	batchRows    prometheus.Histogram
	batchTokens  prometheus.Histogram
	paddingRatio prometheus.Histogram
	queueWait    *prometheus.HistogramVec
	compute      prometheus.Histogram
	batchErrors  prometheus.Counter
	dropped      *prometheus.CounterVec
	requests     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "emoflow_classifier_queue_depth", Help: "Texts waiting for a batch, by priority.",
		}, []string{"priority"}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "emoflow_classifier_batch_rows", Help: "Texts per computed batch.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		batchTokens: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "emoflow_classifier_batch_tokens", Help: "Padded tokens per computed batch (rows × longest row).",
			Buckets: prometheus.ExponentialBuckets(16, 2, 12),
		}),
		paddingRatio: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "emoflow_classifier_batch_padding_ratio", Help: "Share of a batch's computed tokens that are padding.",
			Buckets: []float64{0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75},
		}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "emoflow_classifier_queue_wait_seconds", Help: "Time a text waited in the queue, by priority.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"priority"}),
		compute: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "emoflow_classifier_batch_compute_seconds", Help: "Model time per batch.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		batchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_classifier_batch_errors_total", Help: "Batches whose computation failed.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emoflow_classifier_dropped_texts_total", Help: "Texts not computed, by priority and reason (overloaded, deadline).",
		}, []string{"priority", "reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emoflow_classifier_requests_total", Help: "Classify requests by adapter and outcome.",
		}, []string{"adapter", "outcome"}),
	}
	reg.MustRegister(m.queueDepth, m.batchRows, m.batchTokens, m.paddingRatio, m.queueWait, m.compute, m.batchErrors, m.dropped, m.requests)
	return m
}

func (m *metrics) QueueDepth(p batcher.Priority, depth int) {
	m.queueDepth.WithLabelValues(p.String()).Set(float64(depth))
}

func (m *metrics) BatchDone(rows, real, padded int, compute time.Duration, err error) {
	if err != nil {
		m.batchErrors.Inc()
		return
	}
	m.batchRows.Observe(float64(rows))
	m.batchTokens.Observe(float64(padded))
	if padded > 0 {
		m.paddingRatio.Observe(1 - float64(real)/float64(padded))
	}
	m.compute.Observe(compute.Seconds())
}

func (m *metrics) Waited(p batcher.Priority, wait time.Duration) {
	m.queueWait.WithLabelValues(p.String()).Observe(wait.Seconds())
}

func (m *metrics) Dropped(p batcher.Priority, reason error) {
	r := "deadline"
	if errors.Is(reason, batcher.ErrOverloaded) {
		r = "overloaded"
	}
	m.dropped.WithLabelValues(p.String(), r).Inc()
}
