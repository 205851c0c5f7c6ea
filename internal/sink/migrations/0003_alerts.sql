-- Escalation alerts (cmd/alerter, internal/alerts), beside the events. The
-- alerter inserts each alert before it saves the conversation state that
-- produced it and commits the events' offsets, so after a crash the same
-- alert (same alert_id, same sent_at, so the same partition) can be inserted
-- again; ReplacingMergeTree keeps one row per alert_id after a merge, and
-- alerts_dedup shows one at once. alert_id determines tenant, so ordering by
-- (tenant, alert_id) deduplicates exactly as alert_id alone and keeps a
-- tenant's alerts together.
CREATE TABLE IF NOT EXISTS ${database}.alerts
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
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(sent_at)
ORDER BY (tenant, alert_id);

-- One row per alert: what the escalation panel reads.
CREATE VIEW IF NOT EXISTS ${database}.alerts_dedup AS
SELECT * FROM ${database}.alerts FINAL;
