//! Shared setup for engine tests: a three-stage pipeline, a store in a temp dir, fakes, and
//! helpers that drive the engine until it settles.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tollgate::config::{self, Config};
use tollgate::domain::{Decision, ReleaseId, RunStatus, StageRun};
use tollgate::engine::{Delivery, NewAlarm, NewApproval, NewRelease};
use tollgate::engine::{Engine, ManualClock};
use tollgate::store::Store;
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::fuse::Fuse;

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

pub fn start_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub fakes: Fakes,
    pub clock: Arc<ManualClock>,
    /// SQLite in `dir`, or a PostgreSQL database of its own (TOLLGATE_TEST_POSTGRES).
    state: String,
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state = tollgate_testkit::state::url(dir.path());
        Harness {
            dir,
            fakes: Fakes::new(),
            clock: Arc::new(ManualClock::new(start_time())),
            state,
        }
    }

    /// A harness on a SQLite file in `dir` (`dir/state.db`) whatever the engine under test,
    /// its clock at `start`: for tests that hand that file to a `tollgate` process.
    pub fn sqlite_at(start: DateTime<Utc>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state = format!("sqlite://{}", dir.path().join("state.db").display());
        Harness {
            dir,
            fakes: Fakes::new(),
            clock: Arc::new(ManualClock::new(start)),
            state,
        }
    }

    pub fn db_url(&self) -> String {
        self.state.clone()
    }

    pub async fn engine(&self, fuse: Option<Arc<Fuse>>) -> Engine {
        let store = Store::open(&self.db_url()).await.unwrap();
        let cfg = config_in(self.dir.path());
        match fuse {
            Some(f) => Engine::with_fuse(store, cfg, self.fakes.ports(), self.clock.clone(), f),
            None => Engine::new(store, cfg, self.fakes.ports(), self.clock.clone()),
        }
    }
}

pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

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

pub fn delivery(id: &str) -> Delivery {
    Delivery {
        source: "test".into(),
        id: id.into(),
    }
}

/// Reconciles until nothing changes and no effect is running (bounded).
pub async fn settle(engine: &Engine) -> Result<(), tollgate::engine::EngineError> {
    for _ in 0..400 {
        engine.reconcile("backend").await?;
        let mut waited = 0;
        while engine.in_flight() > 0 && waited < 2000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
        engine.reconcile("backend").await?;
        if engine.in_flight() == 0 {
            let a = engine.reads().events("backend", 1).await.unwrap();
            engine.reconcile("backend").await?;
            let b = engine.reads().events("backend", 1).await.unwrap();
            if a == b && engine.in_flight() == 0 {
                return Ok(());
            }
        }
    }
    panic!("the engine did not settle");
}

/// The run of release `id` in `stage`.
pub async fn run(engine: &Engine, id: ReleaseId, stage: &str) -> StageRun {
    let runs = engine.reads().recent_runs("backend", 50).await.unwrap();
    runs.into_iter()
        .find(|(r, _)| r.id == id)
        .and_then(|(_, runs)| runs.into_iter().find(|r| r.stage == stage))
        .unwrap_or_else(|| panic!("no run of {id} in {stage}"))
}

pub async fn status(engine: &Engine, id: ReleaseId, stage: &str) -> RunStatus {
    run(engine, id, stage).await.status
}

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

pub fn alarm(stage: &str, name: &str) -> NewAlarm {
    NewAlarm {
        pipeline: "backend".into(),
        stage: stage.into(),
        alarm: name.into(),
        firing: true,
        reason: "Threshold Crossed".into(),
        changed_at: None,
    }
}
