//! The engine tests' world, shared with the state-growth benchmark: one pipeline `backend`,
//! beta → gamma → prod over three accounts (prod in two regions), a test before beta and after
//! each deploy, a 10-minute bake and an approval in prod; and the facts those tests record.
//!
//! The accounts' roles are never assumed: the engine runs over the in-memory fakes
//! ([`crate::fakes`]).

use std::path::Path;

use chrono::{TimeZone, Utc};
use tollgate::config::{self, Config};
use tollgate::domain::{Decision, ReleaseId};
use tollgate::engine::{Delivery, NewApproval, NewRelease};

/// `stages.toml`: the pipeline `backend`.
pub const STAGES: &str = r#"
[controller]
public_url = "https://tollgate.test"

[[pipelines]]
name = "backend"
[pipelines.source]
repository = "acme/backend"
[pipelines.artifact]
repository = "backend"
account = "build"
region = "eu-west-1"
[pipelines.notifications]
topic = "arn:aws:sns:eu-west-1:111111111111:tollgate"

[pipelines.tests.unit]
kind = "command"
argv = ["true"]
[pipelines.tests.integration]
kind = "command"
argv = ["true"]
[pipelines.tests.smoke]
kind = "command"
argv = ["true"]

[[pipelines.stages]]
name = "beta"
targets = [{ account = "beta" }]
before = ["unit"]
after = ["integration"]
alarms = ["beta-5xx"]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-beta"
template = "service.yaml"
image_parameter = "ImageUri"

[[pipelines.stages]]
name = "gamma"
targets = [{ account = "gamma" }]
after = ["smoke"]
alarms = ["gamma-5xx"]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-gamma"
template = "service.yaml"
image_parameter = "ImageUri"

[[pipelines.stages]]
name = "prod"
targets = [{ account = "prod" }, { account = "prod", region = "us-east-1" }]
after = ["smoke"]
bake = "10m"
alarms = ["prod-5xx"]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "backend-prod"
template = "service.yaml"
image_parameter = "ImageUri"
[pipelines.stages.approval]
topic = "arn:aws:sns:eu-west-1:111111111111:approvals"
approvers = [
  { name = "alice", email = "alice@example.com", github = "alice" },
  { name = "bob", email = "bob@example.com" },
]
"#;

/// `accounts/accounts.toml`: build (the controller's), beta, gamma and prod.
pub const ACCOUNTS: &str = r#"
[accounts.build]
id = "111111111111"
region = "eu-west-1"
controller = true
[accounts.beta]
id = "222222222222"
role_arn = "arn:aws:iam::222222222222:role/deploy"
external_id = { env = "X_BETA" }
region = "eu-west-1"
[accounts.gamma]
id = "333333333333"
role_arn = "arn:aws:iam::333333333333:role/deploy"
external_id = { env = "X_GAMMA" }
region = "eu-west-1"
[accounts.prod]
id = "444444444444"
role_arn = "arn:aws:iam::444444444444:role/deploy"
external_id = { env = "X_PROD" }
region = "eu-west-1"
"#;

/// Writes the config files into `dir` and loads them.
pub fn config_in(dir: &Path) -> Config {
    std::fs::create_dir_all(dir.join("accounts")).unwrap();
    std::fs::write(dir.join("accounts/accounts.toml"), ACCOUNTS).unwrap();
    std::fs::write(dir.join("service.yaml"), "Resources: {}\n").unwrap();
    std::fs::write(dir.join("stages.toml"), STAGES).unwrap();
    config::load(&dir.join("stages.toml")).unwrap().config
}

/// When the engine tests' manual clock starts.
pub fn start_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
}

/// The commit of release `n`.
pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

/// Release `n` of `backend`, by Carol.
pub fn release(n: u32) -> NewRelease {
    NewRelease {
        pipeline: "backend".into(),
        sha: sha(n),
        branch: "main".into(),
        author_name: "Carol".into(),
        author_email: "carol@example.com".into(),
        author_login: Some("carol".into()),
        message: format!("change {n}"),
        ..NewRelease::default()
    }
}

/// A delivery id of the tests' own source.
pub fn delivery(id: &str) -> Delivery {
    Delivery {
        source: "test".into(),
        id: id.into(),
    }
}

/// `who`'s decision on release `id` in prod, attempt 1.
pub fn approval(id: ReleaseId, who: &str, decision: Decision) -> NewApproval {
    NewApproval {
        pipeline: "backend".into(),
        release: id,
        stage: "prod".into(),
        attempt: 1,
        approver: who.into(),
        decision,
        verified: true,
        actor: format!("approver:{who}"),
        context: "test".into(),
    }
}
