-- Every stored emotion event. A re-delivered event (the sink crashed after the
-- insert but before the Kafka commit, or a rebalance handed a batch to another
-- sink) is a second row with the same key until a background merge keeps the
-- one with the highest version; dashboards read events_dedup instead.
-- Duplicates share sent_at, so they land in the same partition, which is where
-- ReplacingMergeTree and FINAL deduplicate.
CREATE TABLE IF NOT EXISTS ${database}.events
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
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(sent_at)
ORDER BY (message_id, adapter, run_id);

-- One row per (message_id, adapter, run_id): what dashboards read.
CREATE VIEW IF NOT EXISTS ${database}.events_dedup AS
SELECT * FROM ${database}.events FINAL;
