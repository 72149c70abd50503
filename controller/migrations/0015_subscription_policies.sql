-- When the filter policy of a subscription on an approval topic last changed, as far as the
-- controller knows: when it set the policy itself (made the subscription with it, or corrected
-- it) and when an audit last saw the subscription exposed (its policy changed after that). SNS
-- takes up to 15 minutes to apply a changed filter policy, so personal approval links are
-- withheld until both times are 15 minutes old. Times in milliseconds; a row whose times are
-- all older than that is settled and may be deleted.
CREATE TABLE subscription_policies (
    subscription_arn TEXT PRIMARY KEY CHECK (length(subscription_arn) > 0),
    topic            TEXT NOT NULL CHECK (length(topic) > 0),
    policy_set_at    INTEGER,
    exposed_seen_at  INTEGER,
    CHECK (policy_set_at IS NOT NULL OR exposed_seen_at IS NOT NULL)
);
CREATE INDEX subscription_policies_by_topic ON subscription_policies (topic);
