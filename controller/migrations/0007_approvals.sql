-- Approvals belong to one attempt, and a release knows everyone who brought it.
-- 1. `releases.contributors`: the people who brought the change, as a typed JSON array of
--    `{"role": "...", "login": "...", "email": "..."}` (roles: author, committer, pusher,
--    sender, commit_author, commit_committer, workflow_actor, triggering_actor,
--    pull_request_author, pull_request_merger). `pulls_checked` is 1 once the commit's pull
--    requests were looked up on GitHub.
-- 2. `approvals.attempt`: the run's attempt a decision was given in; one decision per approver
--    per attempt. `approval_tokens.attempt`: the attempt a link was issued for.
--
-- Rows written before this version: a release's contributors start as its head commit's
-- author; approvals and links are taken to belong to attempt 1 (so a run that was retried
-- asks again rather than reuse an earlier attempt's approvals).

ALTER TABLE releases ADD COLUMN contributors TEXT NOT NULL DEFAULT '[]'
    CHECK (json_valid(contributors) AND json_type(contributors) = 'array');
ALTER TABLE releases ADD COLUMN pulls_checked INTEGER NOT NULL DEFAULT 0
    CHECK (pulls_checked IN (0, 1));
UPDATE releases SET contributors = json_array(json_patch(json_object('role', 'author'),
    json_object('login', NULLIF(TRIM(COALESCE(author_login, '')), ''),
                'email', NULLIF(TRIM(author_email), ''))))
WHERE NULLIF(TRIM(COALESCE(author_login, '')), '') IS NOT NULL
   OR NULLIF(TRIM(author_email), '') IS NOT NULL;

CREATE TABLE approvals_by_attempt (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline   TEXT    NOT NULL,
    release_id INTEGER NOT NULL REFERENCES releases (id),
    stage      TEXT    NOT NULL,
    attempt    INTEGER NOT NULL CHECK (attempt >= 1),
    approver   TEXT    NOT NULL,
    decision   TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    verified   INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    UNIQUE (release_id, stage, attempt, approver)
);
INSERT INTO approvals_by_attempt (id, pipeline, release_id, stage, attempt, approver, decision,
                                  verified, at, actor)
SELECT id, pipeline, release_id, stage, 1, approver, decision, verified, at, actor FROM approvals;
DROP TABLE approvals;
ALTER TABLE approvals_by_attempt RENAME TO approvals;

ALTER TABLE approval_tokens ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1);

-- The people a `push` names, kept for a pipeline that releases on its build workflow instead:
-- the release made later from the `workflow_run` of the same commit adds them to its
-- contributors (and a push arriving after that release adds them at once).
CREATE TABLE push_contributors (
    sha          TEXT    NOT NULL PRIMARY KEY,
    contributors TEXT    NOT NULL CHECK (json_valid(contributors) AND json_type(contributors) = 'array'),
    at           INTEGER NOT NULL
);
