-- The clustered form of ../0002_label_counts_per_minute.sql: per shard, the
-- exact set of message ids per minute, tenant, adapter, run and label,
-- replicated within the shard; merged over the shards when read. Sets of
-- different shards are disjoint (an event lives on one shard), and merging
-- sets is exact anyway.
CREATE TABLE IF NOT EXISTS ${database}.label_counts_per_minute_state_local ON CLUSTER ${cluster}
(
    minute   DateTime('UTC'),
    tenant   String,
    adapter  String,
    run_id   String,
    label    String,
    messages AggregateFunction(uniqExact, String)
)
ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/emoflow/${cluster}/${database}/label_counts_per_minute_state_local/{shard}', '{replica}')
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant, adapter, run_id, label, minute);

-- Fills the shard's state from every block inserted into events_local on
-- this replica. A replica that receives the part by replication does not
-- run the view again: the state table is replicated itself.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${database}.label_counts_per_minute_mv ON CLUSTER ${cluster}
TO ${database}.label_counts_per_minute_state_local
AS SELECT
    toStartOfMinute(sent_at) AS minute,
    tenant,
    adapter,
    run_id,
    label,
    uniqExactState(message_id) AS messages
FROM ${database}.events_local
GROUP BY minute, tenant, adapter, run_id, label;

-- The states of every shard, for queries that merge them.
CREATE TABLE IF NOT EXISTS ${database}.label_counts_per_minute_state ON CLUSTER ${cluster}
AS ${database}.label_counts_per_minute_state_local
ENGINE = Distributed(${cluster}, ${database}, label_counts_per_minute_state_local);

-- The counts dashboards read: one row per minute, tenant, adapter, run and label.
CREATE VIEW IF NOT EXISTS ${database}.label_counts_per_minute ON CLUSTER ${cluster} AS
SELECT
    minute,
    tenant,
    adapter,
    run_id,
    label,
    uniqExactMerge(messages) AS messages
FROM ${database}.label_counts_per_minute_state
GROUP BY minute, tenant, adapter, run_id, label;
