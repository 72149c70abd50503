-- The configuration applied from the configuration repository (self-update): its commit and
-- every file it read at that commit, so that a restart or SIGHUP keeps it instead of going
-- back to the file on disk, and an older commit can be refused. One row at most.
CREATE TABLE applied_config (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    repository TEXT NOT NULL,
    sha TEXT NOT NULL CHECK (length(sha) IN (40, 64)),
    path TEXT NOT NULL,
    -- JSON object: repository path -> text, every file the configuration read
    files TEXT NOT NULL CHECK (json_valid(files) AND json_type(files) = 'object'),
    applied_at INTEGER NOT NULL
);
