-- The leader lease: which controller reconciles and performs effects (the others only record
-- facts). One row at most. `epoch` grows by one at every change of holder; every write of the
-- reconciler checks it in its own transaction, so a controller that lost the lease (paused,
-- partitioned) can record nothing after its successor took over. `expires_at` is the holder's
-- wall clock (ms) plus the lease's length; another controller takes over once it has passed.
CREATE TABLE leader_lease (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT    NOT NULL CHECK (length(holder) > 0),
    epoch       INTEGER NOT NULL CHECK (epoch >= 1),
    acquired_at INTEGER NOT NULL,
    renewed_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
