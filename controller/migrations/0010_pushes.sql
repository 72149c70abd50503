-- The pushes received for each branch: (before, after) links of its history, so that without
-- GitHub access the controller can still tell whether one pushed commit descends from another.
CREATE TABLE pushes (
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    before TEXT NOT NULL CHECK (length(before) IN (40, 64)),
    after TEXT NOT NULL CHECK (length(after) IN (40, 64)),
    forced INTEGER NOT NULL CHECK (forced IN (0, 1)),
    received_at INTEGER NOT NULL,
    PRIMARY KEY (repository, branch, after)
);
