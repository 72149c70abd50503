-- API keys of /api/v1: only the SHA-256 of each key is kept, never the key. A key's name stays
-- taken after it is revoked (the event log names keys by name).
CREATE TABLE api_keys (
    name       TEXT    PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    key_hash   TEXT    NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    role       TEXT    NOT NULL CHECK (role IN ('viewer', 'operator', 'approver', 'admin')),
    -- The approver (a name listed in stages.toml) an approver key decides as; only those have one.
    approver   TEXT    CHECK ((role = 'approver') = (approver IS NOT NULL)),
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);

-- The first answer to each POST carrying an `Idempotency-Key`, per API key: a repeat gets the
-- same answer and changes nothing. `status` and `body` are NULL while the first is in progress.
CREATE TABLE api_idempotency (
    key_name        TEXT    NOT NULL REFERENCES api_keys (name),
    idempotency_key TEXT    NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    request_sha256  TEXT    NOT NULL CHECK (length(request_sha256) = 64),
    status          INTEGER CHECK (status IS NULL OR status BETWEEN 100 AND 599),
    body            TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (key_name, idempotency_key)
);
