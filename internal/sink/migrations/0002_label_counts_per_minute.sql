-- Messages per minute (of sent_at), tenant, adapter, run and label, kept as
-- the exact set of message ids rather than a count, so that a re-inserted
-- event adds nothing: the set already holds its id.
CREATE TABLE IF NOT EXISTS ${database}.label_counts_per_minute_state
(
    minute   DateTime('UTC'),
    tenant   String,
    adapter  String,
    run_id   String,
    label    String,
    messages AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, adapter, run_id, label, minute);

-- Fills label_counts_per_minute_state from every block inserted into events.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.label_counts_per_minute_mv
TO ${database}.label_counts_per_minute_state
AS SELECT
    toStartOfMinute(sent_at) AS minute,
    tenant,
    adapter,
    run_id,
    label,
    uniqExactState(message_id) AS messages
FROM ${database}.events
GROUP BY minute, tenant, adapter, run_id, label;

-- The counts dashboards read: one row per minute, tenant, adapter, run and label.
CREATE VIEW IF NOT EXISTS ${database}.label_counts_per_minute AS
SELECT
    minute,
    tenant,
    adapter,
    run_id,
    label,
    uniqExactMerge(messages) AS messages
FROM ${database}.label_counts_per_minute_state
GROUP BY minute, tenant, adapter, run_id, label;
