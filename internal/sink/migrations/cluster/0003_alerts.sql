-- The clustered form of ../0003_alerts.sql (same version, same columns), in
-- the layout of cluster/0001_events.sql: alerts_local replicated within each
-- shard, Distributed tables under the single-node names in front.
--
-- Rows go to a shard by cityHash64(alert_id), so every copy of an alert (a
-- redelivery after an alerter crash) lands on one shard, and there in one
-- partition (same sent_at), where ReplacingMergeTree and FINAL deduplicate.
CREATE TABLE IF NOT EXISTS ${database}.alerts_local ON CLUSTER ${cluster}
(
    alert_id              String,
    tenant                String,
    conversation_id       String,
    rule                  String,
    kind                  String,
    message_id            String,
    speaker_role          String,
    label                 String,
    share                 Float32,
    window_messages       UInt32,
    matching_messages     UInt32,
    threshold             Float32,
    run_length            UInt32,
    conversation_messages UInt64,
    adapter               String,
    sent_at               DateTime('UTC'),
    source_topic          String,
    source_partition      Int32,
    source_offset         Int64,
    inserted_at           DateTime('UTC'),
    version               UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/emoflow/${cluster}/${database}/alerts_local/{shard}', '{replica}', version)
PARTITION BY toYYYYMM(sent_at)
ORDER BY (tenant, alert_id);

-- What the alerter inserts into: every shard.
CREATE TABLE IF NOT EXISTS ${database}.alerts ON CLUSTER ${cluster}
AS ${database}.alerts_local
ENGINE = Distributed(${cluster}, ${database}, alerts_local, cityHash64(alert_id));

-- One row per alert of a shard: all copies of an alert are on one shard.
CREATE VIEW IF NOT EXISTS ${database}.alerts_dedup_local ON CLUSTER ${cluster} AS
SELECT * FROM ${database}.alerts_local FINAL;

-- One row per alert over the whole cluster: what the escalation panel reads.
CREATE TABLE IF NOT EXISTS ${database}.alerts_dedup ON CLUSTER ${cluster}
AS ${database}.alerts_local
ENGINE = Distributed(${cluster}, ${database}, alerts_dedup_local);
