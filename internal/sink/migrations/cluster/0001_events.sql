-- The clustered form of ../0001_events.sql (same version, same columns):
-- run ON CLUSTER ${cluster}, replicated within each shard through
-- ZooKeeper, with Distributed tables under the single-node names in front,
-- so that the sink and every query use the same names on both layouts.
--
-- events_local holds each shard's rows. Rows are sent to a shard by
-- cityHash64(message_id): the event's dedup key is (message_id, adapter,
-- run_id), so every copy of one event (a redelivery, a retried batch) goes
-- to the same shard, and there to the same partition (same sent_at), which
-- is where ReplacingMergeTree and FINAL deduplicate. Replicas of a shard
-- hold the same rows (internal_replication: a Distributed insert writes one
-- replica, replication copies the part).
CREATE TABLE IF NOT EXISTS ${database}.events_local ON CLUSTER ${cluster}
(
    message_id       String,
    adapter          String,
    run_id           String,
    conversation_id  String,
    tenant           String,
    speaker_role     String,
    language         String,
    text_fingerprint String,
    text             String,
    label            String,
    prob_labels      Array(String),
    prob_values      Array(Float32),
    true_label       String,
    truncated        UInt8,
    model            String,
    label_set        String,
    cache_hit        UInt8,
    sent_at          DateTime('UTC'),
    received_at      DateTime('UTC'),
    classified_at    DateTime('UTC'),
    cache_ms         Float32,
    classify_ms      Float32,
    pipeline_ms      Float32,
    source_topic     String,
    source_partition Int32,
    source_offset    Int64,
    event_partition  Int32,
    event_offset     Int64,
    inserted_at      DateTime('UTC'),
    version          UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/emoflow/${cluster}/${database}/events_local/{shard}', '{replica}', version)
PARTITION BY toYYYYMM(sent_at)
ORDER BY (message_id, adapter, run_id);

-- What the sink inserts into and what ad-hoc queries read: every shard.
CREATE TABLE IF NOT EXISTS ${database}.events ON CLUSTER ${cluster}
AS ${database}.events_local
ENGINE = Distributed(${cluster}, ${database}, events_local, cityHash64(message_id));

-- One row per (message_id, adapter, run_id) of a shard: FINAL runs on each
-- shard, which is enough because all copies of an event are on one shard.
CREATE VIEW IF NOT EXISTS ${database}.events_dedup_local ON CLUSTER ${cluster} AS
SELECT * FROM ${database}.events_local FINAL;

-- One row per event over the whole cluster: what dashboards read.
CREATE TABLE IF NOT EXISTS ${database}.events_dedup ON CLUSTER ${cluster}
AS ${database}.events_local
ENGINE = Distributed(${cluster}, ${database}, events_dedup_local);
