-- When the filter policy of a subscription on an approval topic last changed, as far as the
-- controller knows. Same table as ../migrations/0015.
CREATE TABLE subscription_policies (
    subscription_arn TEXT PRIMARY KEY CHECK (length(subscription_arn) > 0),
    topic            TEXT   NOT NULL CHECK (length(topic) > 0),
    policy_set_at    BIGINT,
    exposed_seen_at  BIGINT,
    CHECK (policy_set_at IS NOT NULL OR exposed_seen_at IS NOT NULL)
);
CREATE INDEX subscription_policies_by_topic ON subscription_policies (topic);
