package sink

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the sink's Prometheus metrics.
type metrics struct {
	consumerLag       *prometheus.GaugeVec
	rowsInserted      prometheus.Counter
	insertErrors      prometheus.Counter
	batchRows         prometheus.Histogram
	idleFlushes       prometheus.Counter
	insertSeconds     prometheus.Histogram
	deadLetters       *prometheus.CounterVec
	deadLetterErrors  prometheus.Counter
	commitErrors      prometheus.Counter
	fetchErrors       prometheus.Counter
	endToEndSeconds   prometheus.Histogram
	clickhouseHealthy prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		consumerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "emoflow_sink_consumer_lag",
			Help: "Messages of the events topic not yet committed by this sink, per partition: the high-water mark of the newest fetch minus the next offset to commit.",
		}, []string{"topic", "partition"}),
		rowsInserted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_sink_rows_inserted_total",
			Help: "Event rows inserted into ClickHouse (a retried batch counts once, when it succeeds).",
		}),
		insertErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_sink_insert_errors_total",
			Help: "Failed attempts to insert a batch into ClickHouse (each is retried).",
		}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "emoflow_sink_batch_rows",
			Help:    "Rows per inserted batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		idleFlushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_sink_idle_flushes_total",
			Help: "Batches stored before -flush-interval because the sink had caught up and nothing arrived for -idle-flush.",
		}),
		insertSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "emoflow_sink_insert_duration_seconds",
			Help:    "Duration of successful batch inserts into ClickHouse.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emoflow_sink_dead_letters_total",
			Help: "Malformed events written to the dead-letter topic, by reason.",
		}, []string{"reason"}),
		deadLetterErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_sink_dead_letter_errors_total",
			Help: "Failed attempts to write dead letters (each is retried).",
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_sink_commit_errors_total",
			Help: "Failed Kafka offset commits (the next batch's commit covers them; the events may be delivered again).",
		}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_sink_fetch_errors_total",
			Help: "Errors fetching from the events topic (the reader retries).",
		}),
		endToEndSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "emoflow_sink_end_to_end_latency_seconds",
			Help:    "From an event's sent_at (the chat message's time) to the end of the insert that stored it.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}),
		clickhouseHealthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "emoflow_sink_clickhouse_up",
			Help: "1 while the last ClickHouse ping and insert succeeded, else 0.",
		}),
	}
	for _, c := range []prometheus.Collector{
		m.consumerLag, m.rowsInserted, m.insertErrors, m.batchRows, m.idleFlushes, m.insertSeconds, m.deadLetters,
		m.deadLetterErrors, m.commitErrors, m.fetchErrors, m.endToEndSeconds, m.clickhouseHealthy,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register sink metrics: %w", err)
		}
	}
	return m, nil
}
