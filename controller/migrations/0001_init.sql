-- tollgate state. Times are milliseconds since the Unix epoch (UTC).
-- Status columns are closed sets, checked by the database as well as by the code.

CREATE TABLE releases (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline       TEXT    NOT NULL,
    sha            TEXT    NOT NULL,
    branch         TEXT    NOT NULL,
    author_name    TEXT    NOT NULL,
    author_email   TEXT    NOT NULL,
    author_login   TEXT,
    message        TEXT    NOT NULL,
    url            TEXT,
    digest         TEXT,
    created_at     INTEGER NOT NULL,
    bad_stage      TEXT,
    bad_reason     TEXT,
    alarm_override TEXT,
    window_override TEXT,
    failed         TEXT,
    active         INTEGER NOT NULL DEFAULT 1,
    UNIQUE (pipeline, sha)
);
CREATE INDEX releases_active ON releases (pipeline, active);

CREATE TABLE stage_runs (
    release_id INTEGER NOT NULL REFERENCES releases (id),
    stage      TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('waiting', 'queued', 'checking',
        'awaiting_approval', 'deploying', 'verifying', 'baking', 'succeeded', 'failed',
        'rejected', 'expired', 'superseded', 'rolling_back', 'rolled_back')),
    reason     TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    since      INTEGER NOT NULL,
    PRIMARY KEY (release_id, stage)
);

CREATE TABLE pipelines (
    pipeline TEXT PRIMARY KEY,
    paused   TEXT
);

CREATE TABLE stages (
    pipeline TEXT NOT NULL,
    stage    TEXT NOT NULL,
    paused   TEXT,
    PRIMARY KEY (pipeline, stage)
);

CREATE TABLE stage_history (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline   TEXT    NOT NULL,
    stage      TEXT    NOT NULL,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    at         INTEGER NOT NULL
);
CREATE INDEX stage_history_stage ON stage_history (pipeline, stage, id);

CREATE TABLE effects (
    key         TEXT PRIMARY KEY,
    pipeline    TEXT    NOT NULL,
    release_id  INTEGER NOT NULL REFERENCES releases (id),
    stage       TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    detail      TEXT    NOT NULL DEFAULT '',
    output      TEXT    NOT NULL DEFAULT '{}',
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX effects_release ON effects (release_id);

CREATE TABLE approvals (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline   TEXT    NOT NULL,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    stage      TEXT    NOT NULL,
    approver   TEXT    NOT NULL,
    decision   TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    verified   INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    UNIQUE (release_id, stage, approver)
);

CREATE TABLE alarm_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT    NOT NULL,
    stage    TEXT    NOT NULL,
    alarm    TEXT    NOT NULL,
    firing   INTEGER NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX alarm_events_stage ON alarm_events (pipeline, at);

CREATE TABLE rollback_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline   TEXT    NOT NULL,
    stage      TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    handled_at INTEGER
);

-- Deduplication of incoming deliveries (GitHub delivery id, SNS message id, API request id).
CREATE TABLE deliveries (
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (source, id)
);

-- Append-only audit log of every fact and action.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline   TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    release_id INTEGER,
    stage      TEXT,
    detail     TEXT    NOT NULL
);
CREATE INDEX events_pipeline ON events (pipeline, id);
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
