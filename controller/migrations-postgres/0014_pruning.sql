-- Retention: the event log stays append-only, except for the pruner. A delete from `events`
-- is allowed only while a row exists in `pruning`; the pruner writes that marker, deletes the
-- events older than the retention horizon and removes the marker in one transaction, so the
-- marker is never committed (nor seen by another transaction) and any other DELETE (or any
-- UPDATE) is still refused. Same effect as ../migrations/0014.
CREATE TABLE pruning (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    started_at BIGINT NOT NULL
);
CREATE FUNCTION events_delete_only_when_pruning() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pruning) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the event log is append-only';
END;
$$;
DROP TRIGGER events_append_only_delete ON events;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_delete_only_when_pruning();
