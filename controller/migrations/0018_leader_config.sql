-- The configuration the leader acts with, as it records it for the controllers standing by:
-- one applied from the configuration repository (`repository`, `sha`), or its file. Written by
-- the holder of `leader_lease` at `epoch` (when it takes the lead, follows a commit or keeps
-- its configuration over one); a row of another epoch than the lease's says nothing about the
-- leader now. A controller standing by follows an applied commit only once the live leader
-- acts with it. One row at most.
CREATE TABLE leader_config (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT    NOT NULL CHECK (length(holder) > 0),
    epoch       INTEGER NOT NULL CHECK (epoch >= 1),
    acts_with   TEXT    NOT NULL CHECK (acts_with IN ('applied', 'file')),
    repository  TEXT,
    sha         TEXT,
    recorded_at INTEGER NOT NULL,
    CHECK ((acts_with = 'applied' AND repository IS NOT NULL AND sha IS NOT NULL
            AND length(sha) IN (40, 64))
        OR (acts_with = 'file' AND repository IS NULL AND sha IS NULL))
);
