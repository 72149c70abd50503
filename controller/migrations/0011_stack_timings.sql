-- How long each stack's recent deploys took (the last few per stack; older rows are deleted
-- when a new one is written): how long the change set took to become ready and how long the
-- executed change set took to complete, in milliseconds, each at least what the step took.
-- NULL: that step did not run (nothing to change). Read back to shape the next deploy's waits.
CREATE TABLE stack_timings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL CHECK (length(account) > 0),
    region TEXT NOT NULL CHECK (length(region) > 0),
    stack TEXT NOT NULL CHECK (length(stack) > 0),
    change_set_ms INTEGER CHECK (change_set_ms IS NULL OR change_set_ms >= 0),
    update_ms INTEGER CHECK (update_ms IS NULL OR update_ms >= 0),
    effect_key TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX stack_timings_by_stack ON stack_timings (account, region, stack, id);
