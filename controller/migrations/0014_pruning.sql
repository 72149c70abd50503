-- Retention: the event log stays append-only, except for the pruner. A delete from `events`
-- is allowed only while a row exists in `pruning`; the pruner writes that marker, deletes the
-- events older than the retention horizon and removes the marker in one transaction, so the
-- marker is never committed and any other DELETE (or any UPDATE) is still refused.
CREATE TABLE pruning (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    started_at INTEGER NOT NULL
);
DROP TRIGGER events_append_only_delete;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM pruning)
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
