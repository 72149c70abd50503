-- Known-good restore is exact: every successful CloudFormation deploy records the template
-- body it applied, once, under its sha256 (lower-case hex). The deploy effect's typed output
-- (`{"kind":"deployed", …, "applied":{"kind":"cloud_formation","template_sha256":…}}`) names
-- it; a rollback to that release reads the body back from here. Deploys recorded before this
-- version have no `applied` and roll back with the stage's current configuration.

CREATE TABLE templates (
    sha256     TEXT PRIMARY KEY CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    body       TEXT    NOT NULL,
    -- When the body was first stored (ms since the epoch).
    stored_at  INTEGER NOT NULL
);
