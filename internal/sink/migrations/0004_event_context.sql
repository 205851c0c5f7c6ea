-- The conversation context of each event (contract.EmotionEvent's
-- context_messages and context_source). Rows stored before this migration,
-- and the inserts of older sinks that do not name these columns, read as the
-- types' defaults: 0 and ''. context_messages is an Int64, the range of the
-- event's JSON integer as decoded, so no event the sink accepts holds a
-- value the column cannot.
--
-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS. When this migration runs
-- again (interrupted half-way, or sinks migrating at once), an ADD COLUMN of a
-- column that is already there fails with "column with this name already
-- exists", which the sink takes as done (columnAlreadyAdded in migrate.go):
-- that is why each ALTER adds exactly one column.
ALTER TABLE ${database}.events ADD COLUMN context_messages Int64;
ALTER TABLE ${database}.events ADD COLUMN context_source String;

-- events_dedup fixed its columns when it was created (its SELECT * was
-- expanded then): create it again to show the new ones. 18.16 has neither
-- CREATE OR REPLACE VIEW nor DROP VIEW, so it is dropped and created; reads
-- of it fail for the moment in between.
DROP TABLE IF EXISTS ${database}.events_dedup;
CREATE VIEW IF NOT EXISTS ${database}.events_dedup AS
SELECT * FROM ${database}.events FINAL;
