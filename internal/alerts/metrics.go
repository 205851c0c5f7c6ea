package alerts

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the alerter's Prometheus metrics.
type metrics struct {
	events      *prometheus.CounterVec
	alerts      *prometheus.CounterVec
	stepErrors  *prometheus.CounterVec
	staleSaves  prometheus.Counter
	reordered   prometheus.Counter
	consumerLag *prometheus.GaugeVec
	batchSecs   prometheus.Histogram
}

// Event outcomes besides those of apply.
const (
	outcomeNotLive      = "not_live"
	outcomeOtherAdapter = "other_adapter"
	outcomeDeadLetter   = "dead_letter"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emoflow_alerter_events_total",
			Help: "Events consumed, by outcome: applied, duplicate (the message was applied already), late (a later message of the conversation was applied already: a redelivery after the state was saved, or an event published out of order; not applied), not_live (a replay's), other_adapter (filtered out by -adapter), dead_letter (malformed).",
		}, []string{"outcome"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emoflow_alerter_alerts_total",
			Help: "Alerts published, by rule (an alert published again after a crash counts again; its id is the same).",
		}, []string{"rule"}),
		stepErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "emoflow_alerter_step_errors_total",
			Help: "Failed attempts of a batch's steps (each is retried): load_state, save_state, dead_letters, publish, clickhouse, clear_outbox, commit.",
		}, []string{"step"}),
		staleSaves: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_alerter_stale_state_saves_total",
			Help: "Conversation states not saved because the stored one was further on (another alerter took the partition in a rebalance).",
		}),
		reordered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "emoflow_alerter_events_reordered_total",
			Help: "Events that arrived after an event of a later message of their conversation but within -reorder-window, and were applied in message order (without the window they would have been late).",
		}),
		consumerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "emoflow_alerter_consumer_lag",
			Help: "Events of the events topic not yet committed by this alerter, per partition: the high-water mark of the newest fetch minus the next offset to commit.",
		}, []string{"topic", "partition"}),
		batchSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "emoflow_alerter_batch_duration_seconds",
			Help:    "From the start of a round's processing to its commit: state load, rules, state save, dead letters, alerts published and stored, outbox cleared.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	for _, c := range []prometheus.Collector{m.events, m.alerts, m.stepErrors, m.staleSaves, m.reordered, m.consumerLag, m.batchSecs} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register alerter metrics: %w", err)
		}
	}
	return m, nil
}
