-- The clustered form of ../0004_event_context.sql (same columns, for the
-- same reasons). The columns are added to events_local (the ALTER of a
-- replicated table runs on one replica of each shard and reaches the others
-- through ZooKeeper). The objects in front fixed their columns when they
-- were created, so they are created again from events_local:
-- events_dedup_local (its SELECT * was expanded then) and the Distributed
-- tables events and events_dedup. ClickHouse 18.16 refuses ALTER ON CLUSTER
-- of a Distributed table on a cluster whose shards replicate ("isn't
-- replicated, but shard #1 is replicated"), hence DROP and CREATE. A
-- Distributed table holds no rows of its own (the sink inserts with
-- insert_distributed_sync, so none wait in it); inserts and reads through
-- it fail for the moment in between, and sinks retry.
--
-- No ADD COLUMN IF NOT EXISTS on 18.16: on a rerun, "column with this name
-- already exists" from the hosts is taken as done (columnAlreadyAdded in
-- migrate.go), so each ALTER adds exactly one column.
ALTER TABLE ${database}.events_local ON CLUSTER ${cluster} ADD COLUMN context_messages Int64;
ALTER TABLE ${database}.events_local ON CLUSTER ${cluster} ADD COLUMN context_source String;

DROP TABLE IF EXISTS ${database}.events ON CLUSTER ${cluster};
CREATE TABLE IF NOT EXISTS ${database}.events ON CLUSTER ${cluster}
AS ${database}.events_local
ENGINE = Distributed(${cluster}, ${database}, events_local, cityHash64(message_id));

DROP TABLE IF EXISTS ${database}.events_dedup ON CLUSTER ${cluster};
DROP TABLE IF EXISTS ${database}.events_dedup_local ON CLUSTER ${cluster};
CREATE VIEW IF NOT EXISTS ${database}.events_dedup_local ON CLUSTER ${cluster} AS
SELECT * FROM ${database}.events_local FINAL;
CREATE TABLE IF NOT EXISTS ${database}.events_dedup ON CLUSTER ${cluster}
AS ${database}.events_local
ENGINE = Distributed(${cluster}, ${database}, events_dedup_local);
