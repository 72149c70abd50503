-- Approval links. One row per token issued; only the token's SHA-256 (hex) is stored, the token
-- itself exists only in the message that carried it. A token is used once its hash is recorded
-- as a delivery (`deliveries.source = 'approval-link'`), which happens in the same transaction
-- that records the approval or rejection.

CREATE TABLE approval_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash   TEXT    NOT NULL UNIQUE CHECK (length(token_hash) = 64),
    -- The approval request's idempotency key (`backend/r12/prod/a1/approval-request`).
    request_key  TEXT    NOT NULL,
    pipeline     TEXT    NOT NULL,
    release_id   INTEGER NOT NULL REFERENCES releases (id),
    stage        TEXT    NOT NULL,
    -- The approver the link is bound to; NULL for a shared link (the page asks for a name).
    approver     TEXT,
    -- The anti-CSRF value the confirmation page's form must send back.
    csrf         TEXT    NOT NULL CHECK (length(csrf) >= 22),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    -- When the message carrying the link was published.
    published_at INTEGER,
    -- When a later send for the same request and approver replaced this link.
    replaced_at  INTEGER
);

-- At most one live (not replaced) link per request and approver.
CREATE UNIQUE INDEX approval_tokens_live
    ON approval_tokens (request_key, IFNULL(approver, '')) WHERE replaced_at IS NULL;
CREATE INDEX approval_tokens_run ON approval_tokens (release_id, stage);
