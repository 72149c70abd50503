-- Facts as typed data.
-- 1. An effect's kind is stored beside its key: `kind` is the variant (a closed set, checked),
--    `spec` the whole kind as JSON (`{"kind":"deploy","wave":0}`), `attempt` the run's attempt
--    it belongs to. `output` becomes a typed JSON outcome
--    (`{"kind":"deployed","image_uri":"…","outputs":{…}}`).
-- 2. A run's reason is a typed JSON value; a rollback records the alarm event that caused it.
-- 3. `tollgate retry` records a request that the planner acts on, like a manual rollback.
--
-- Rows written before this version are converted once, here: their kind and outcome from the
-- key and the string map that version wrote, their reasons kept as recorded text.

CREATE TABLE effects_typed (
    key         TEXT PRIMARY KEY,
    pipeline    TEXT    NOT NULL,
    release_id  INTEGER NOT NULL REFERENCES releases (id),
    stage       TEXT    NOT NULL,
    -- The run's attempt the effect belongs to (0 for release-level effects).
    attempt     INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('resolve_artifact', 'check_alarms', 'run_test',
        'request_approval', 'deploy', 'rollback', 'poll_alarms', 'notify', 'report')),
    spec        TEXT    NOT NULL CHECK (json_valid(spec) AND json_extract(spec, '$.kind') = kind),
    status      TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    detail      TEXT    NOT NULL DEFAULT '',
    output      TEXT    NOT NULL DEFAULT '{"kind":"none"}' CHECK (json_valid(output)),
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
);

WITH split AS (
    SELECT e.*,
           substr(e.key, length(e.pipeline || '/r' || e.release_id || '/'
               || CASE e.stage WHEN '' THEN '-' ELSE e.stage END || '/a') + 1) AS rest
    FROM effects e
), parts AS (
    SELECT s.*, substr(s.rest, instr(s.rest, '/') + 1) AS part FROM split s
), kinds AS (
    SELECT p.*,
        CASE
            WHEN part = 'resolve' THEN json_object('kind', 'resolve_artifact')
            WHEN part LIKE 'check-alarms-%' THEN
                json_object('kind', 'check_alarms', 'round', CAST(substr(part, 14) AS INTEGER))
            WHEN part LIKE 'test-before-%' THEN
                json_object('kind', 'run_test', 'test', substr(part, 13), 'phase', 'before')
            WHEN part LIKE 'test-after-%' THEN
                json_object('kind', 'run_test', 'test', substr(part, 12), 'phase', 'after')
            WHEN part = 'approval-request' THEN json_object('kind', 'request_approval', 'round', 0)
            WHEN part LIKE 'approval-request-%' THEN
                json_object('kind', 'request_approval', 'round', CAST(substr(part, 18) AS INTEGER))
            WHEN part LIKE 'deploy-%' THEN
                json_object('kind', 'deploy', 'wave', CAST(substr(part, 8) AS INTEGER))
            WHEN part LIKE 'rollback-%-to-%' THEN
                json_object('kind', 'rollback',
                    'wave', CAST(substr(part, 10, instr(part, '-to-') - 10) AS INTEGER),
                    'target', CAST(substr(part, instr(part, '-to-') + 4) AS INTEGER))
            WHEN part LIKE 'poll-alarms-%' THEN
                json_object('kind', 'poll_alarms', 'round', CAST(substr(part, 13) AS INTEGER))
            WHEN part = 'notify-halted' THEN json_object('kind', 'notify', 'event', 'halted')
            WHEN part = 'notify-rolled-back' THEN json_object('kind', 'notify', 'event', 'rolled_back')
            WHEN part LIKE 'report-%' THEN json_object('kind', 'report', 'state', substr(part, 8))
        END AS spec
    FROM parts p
)
INSERT INTO effects_typed (key, pipeline, release_id, stage, attempt, kind, spec, status, detail,
                           output, started_at, finished_at)
SELECT key, pipeline, release_id, stage, CAST(substr(rest, 1, instr(rest, '/') - 1) AS INTEGER),
    json_extract(spec, '$.kind'), spec, status, detail,
    CASE
        WHEN status <> 'succeeded' THEN '{"kind":"none"}'
        WHEN json_extract(spec, '$.kind') = 'resolve_artifact'
             AND json_extract(output, '$.digest') IS NOT NULL THEN
            json_object('kind', 'resolved', 'digest', json_extract(output, '$.digest'))
        WHEN json_extract(spec, '$.kind') IN ('check_alarms', 'poll_alarms') THEN
            json_object('kind', 'alarms', 'in_alarm', json(
                CASE WHEN coalesce(json_extract(output, '$.in_alarm'), '') = '' THEN '[]'
                     WHEN json_valid('["' || replace(json_extract(output, '$.in_alarm'), ',', '","') || '"]')
                     THEN '["' || replace(json_extract(output, '$.in_alarm'), ',', '","') || '"]'
                     ELSE json_array(json_extract(output, '$.in_alarm')) END))
        WHEN json_extract(spec, '$.kind') = 'deploy' THEN
            json_object('kind', 'deployed',
                'image_uri', coalesce(json_extract(output, '$.image_uri'), ''),
                'outputs', json(json_remove(output, '$.image_uri')))
        WHEN json_extract(spec, '$.kind') = 'rollback' THEN
            json_object('kind', 'rolled_back',
                'image_uri', coalesce(json_extract(output, '$.image_uri'), ''),
                'latency_ms', CAST(json_extract(output, '$.rollback_latency_ms') AS INTEGER))
        ELSE '{"kind":"none"}'
    END,
    started_at, finished_at
FROM kinds;

DROP TABLE effects;
ALTER TABLE effects_typed RENAME TO effects;
CREATE INDEX effects_release ON effects (release_id);

-- Reasons: typed JSON from now on; what earlier versions wrote stays readable as its text.
UPDATE stage_runs SET reason = json_object('kind', 'recorded', 'text', reason)
    WHERE NOT json_valid(reason);
UPDATE releases SET bad_reason = json_object('kind', 'recorded', 'text', bad_reason)
    WHERE bad_reason IS NOT NULL AND NOT json_valid(bad_reason);
ALTER TABLE stage_runs ADD COLUMN rollback_alarm INTEGER REFERENCES alarm_events (id);
-- When the run started deploying: its alarm watch window runs from here to the end of its bake.
ALTER TABLE stage_runs ADD COLUMN deploy_started INTEGER;
-- When the alarm's state changed (CloudWatch's StateChangeTime), as opposed to when the
-- notification arrived (`at`); NULL for rows from before this version (read as `at`).
ALTER TABLE alarm_events ADD COLUMN changed_at INTEGER;

CREATE TABLE retry_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline   TEXT    NOT NULL,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    actor      TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    handled_at INTEGER
);
CREATE INDEX retry_requests_open ON retry_requests (pipeline, handled_at);
