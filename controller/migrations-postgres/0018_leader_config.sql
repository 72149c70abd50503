-- The configuration the leader acts with. Same table as ../migrations/0018.
CREATE TABLE leader_config (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    holder      TEXT   NOT NULL CHECK (length(holder) > 0),
    epoch       BIGINT NOT NULL CHECK (epoch >= 1),
    acts_with   TEXT   NOT NULL CHECK (acts_with IN ('applied', 'file')),
    repository  TEXT,
    sha         TEXT,
    recorded_at BIGINT NOT NULL,
    CHECK ((acts_with = 'applied' AND repository IS NOT NULL AND sha IS NOT NULL
            AND length(sha) IN (40, 64))
        OR (acts_with = 'file' AND repository IS NULL AND sha IS NULL))
);
