//! In-memory fakes of every port, for engine tests and benchmarks.
//!
//! Each fake behaves like an idempotent real system: a call repeated under the same
//! idempotency key returns the first result and applies nothing again. Each counts calls
//! and applications per key, so tests can prove "exactly once" after crashes.
//! Outcomes can be scripted: fail a test, fail a deploy, put an alarm in ALARM, delay a deploy,
//! hang a deploy.
//!
//! Must never: be used by the controller's binary (this crate is a dev-dependency only), or
//! succeed where the real system it stands for would refuse without saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use tollgate::config::{Account, Artifact, Deploy, TestDef};
use tollgate::domain::{AlarmReading, AlarmState, StackHistory, StackKey, StackTiming};
use tollgate::engine::Ports;
use tollgate::engine::ports::*;

/// Data points a busy service's metric has, for an alarm a test did not script.
pub const BUSY_DATAPOINTS: u32 = 1000;

/// Calls and applications per idempotency key.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    pub calls: BTreeMap<String, u32>,
    pub applied: BTreeMap<String, u32>,
    /// Keys in the order they were first applied.
    pub order: Vec<String>,
}

impl Ledger {
    /// Counts a call; true if it is the first for this key (the effect applies).
    fn call(&mut self, key: &str) -> bool {
        *self.calls.entry(key.to_string()).or_default() += 1;
        if self.applied.contains_key(key) {
            return false;
        }
        self.applied.insert(key.to_string(), 1);
        self.order.push(key.to_string());
        true
    }
}

/// Shared state of all fakes, for scripting and assertions.
#[derive(Debug, Default)]
pub struct FakeWorld {
    pub ledger: Ledger,
    /// Deploys applied: (stage, account/region, image URI).
    pub deployed: Vec<(String, String, String)>,
    pub rolled_back: Vec<(String, String, String)>,
    pub published: Vec<Message>,
    pub reports: Vec<DeploymentReport>,
    pub approval_requests: Vec<ApprovalRequest>,
    /// Tests named here fail (by test name, or `stage:test`).
    pub failing_tests: BTreeSet<String>,
    /// Deploys to these stages fail.
    pub failing_deploys: BTreeSet<String>,
    /// Stage → the image someone else left there: a deploy to it reads back that image
    /// (`PortError::Drift`), as the CloudFormation deployer does after an update it did not make.
    pub drifting_deploys: BTreeMap<String, String>,
    /// Messages to these approvers (the message's `approver` attribute) are refused.
    pub refused_approvers: BTreeSet<String>,
    /// Approvers whose email subscription to the approval topic is pending confirmation: a
    /// request sends them nothing and says so ([`SendOutcome::Unconfirmed`]), as the real
    /// sender does.
    pub unconfirmed_approvers: BTreeSet<String>,
    /// Alarms in ALARM now, by name.
    pub firing: BTreeSet<String>,
    /// Alarms in INSUFFICIENT_DATA now, by name (an alarm in `firing` is in ALARM instead).
    pub insufficient: BTreeSet<String>,
    /// Composite alarms, by name (any other is a metric alarm).
    pub composite: BTreeSet<String>,
    /// Data points each alarm's metric has had since the time a bake read asks from; an alarm
    /// not listed belongs to a busy service and has [`BUSY_DATAPOINTS`].
    pub datapoints: BTreeMap<String, u32>,
    /// How long each alarm takes to report a breach, in seconds, as a bake read gives it
    /// (`AlarmReading::reports_within_secs`); an alarm not listed gives none.
    pub reports_within: BTreeMap<String, u64>,
    /// Every bake read: (alarm names, the time data points were counted from).
    pub bake_reads: Vec<(Vec<String>, Option<DateTime<Utc>>)>,
    /// Images that exist: tag → digest. A tag not here resolves to a digest made from it.
    pub images: BTreeMap<String, String>,
    /// Tags whose resolution fails (the image never appeared).
    pub missing_images: BTreeSet<String>,
    /// Make each deploy take this long.
    pub deploy_delay: Duration,
    /// The next this many deploy calls never answer, as over a connection that hangs; they
    /// are counted in `hung_deploys` and apply nothing.
    pub hanging_deploys: u32,
    pub hung_deploys: u32,
    /// Per-stage results of the runs' tests, for assertions.
    pub test_runs: Vec<(String, String)>,
    /// Each CloudFormation deploy reports that its stack's change set took this long to be
    /// ready and its update this long, as the real deployer measures them (`None`: nothing).
    pub deploy_timings: Option<(Duration, Duration)>,
    /// The stack history each deploy request carried: (stage, history).
    pub histories: Vec<(String, StackHistory)>,
}

/// All fakes share one world.
#[derive(Clone, Default)]
pub struct Fakes {
    pub world: Arc<Mutex<FakeWorld>>,
}

impl Fakes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ports, all backed by this world.
    pub fn ports(&self) -> Ports {
        let me = Arc::new(self.clone());
        Ports {
            deployer: me.clone(),
            artifacts: me.clone(),
            notifier: me.clone(),
            alarms: me.clone(),
            forge: me.clone(),
            tests: me.clone(),
            approvals: me,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeWorld) -> R) -> R {
        let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut w)
    }

    /// A copy of the ledger.
    pub fn ledger(&self) -> Ledger {
        self.with(|w| w.ledger.clone())
    }
}

/// A stable fake digest for a tag.
pub fn fake_digest(tag: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(tag.as_bytes())))
}

#[async_trait]
impl Deployer for Fakes {
    async fn deploy(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        let hang = self.with(|w| {
            let hang = w.hanging_deploys > 0;
            if hang {
                w.hanging_deploys -= 1;
                w.hung_deploys += 1;
            }
            hang
        });
        if hang {
            std::future::pending::<()>().await;
        }
        let delay = self.with(|w| w.deploy_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.with(|w| {
            let first = w.ledger.call(&req.key);
            w.histories.push((req.stage.clone(), req.history.clone()));
            if w.failing_deploys.contains(&req.stage) {
                return Err(PortError::Failed(format!(
                    "resource Service failed to stabilize in {}",
                    req.stage
                )));
            }
            if let Some(found) = w.drifting_deploys.get(&req.stage) {
                return Err(PortError::Drift {
                    expected: req.image_uri.clone(),
                    found: found.clone(),
                });
            }
            if first {
                let at = format!("{}/{}", req.target.account, req.target.region);
                w.deployed
                    .push((req.stage.clone(), at, req.image_uri.clone()));
            }
            let mut outputs = BTreeMap::new();
            outputs.insert(
                "ServiceUrl".to_string(),
                format!("https://{}.example.test", req.stage),
            );
            Ok(DeployResult {
                outputs,
                summary: format!("stack updated to {}", req.image_uri),
                applied: None,
                timing: timing(req, w.deploy_timings),
            })
        })
    }

    async fn rollback(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        self.with(|w| {
            if w.ledger.call(&req.key) {
                let at = format!("{}/{}", req.target.account, req.target.region);
                w.rolled_back
                    .push((req.stage.clone(), at, req.image_uri.clone()));
            }
            Ok(DeployResult {
                outputs: BTreeMap::new(),
                summary: format!("stack returned to {}", req.image_uri),
                applied: None,
                timing: None,
            })
        })
    }
}

#[async_trait]
impl Artifacts for Fakes {
    async fn resolve(
        &self,
        _artifact: &Artifact,
        _account: &Account,
        tag: &str,
    ) -> PortResult<String> {
        self.with(|w| {
            if w.missing_images.contains(tag) {
                return Err(PortError::NotFound(format!(
                    "image tag {tag} did not appear"
                )));
            }
            Ok(w.images
                .get(tag)
                .cloned()
                .unwrap_or_else(|| fake_digest(tag)))
        })
    }

    async fn promote(&self, req: &PromoteRequest) -> PortResult<String> {
        Ok(format!(
            "{}.dkr.ecr.{}.amazonaws.com/{}@{}",
            req.build_account.id, req.artifact.region, req.artifact.repository, req.digest
        ))
    }
}

#[async_trait]
impl Notifier for Fakes {
    async fn publish(&self, msg: &Message) -> PortResult<String> {
        self.with(|w| {
            if let Some(who) = msg.attributes.get("approver")
                && w.refused_approvers.contains(who)
            {
                return Err(PortError::Denied(format!(
                    "AuthorizationError: the topic refused the message to {who}"
                )));
            }
            if w.ledger.call(&msg.key) {
                w.published.push(msg.clone());
            }
            Ok(format!("msg-{}", w.published.len()))
        })
    }
}

/// The names of `names` in `set`, in the order asked.
fn among(names: &[String], set: &BTreeSet<String>) -> Vec<String> {
    names.iter().filter(|n| set.contains(*n)).cloned().collect()
}

#[async_trait]
impl Alarms for Fakes {
    async fn in_alarm(
        &self,
        _account: &Account,
        _region: &str,
        names: &[String],
    ) -> PortResult<Vec<String>> {
        self.with(|w| Ok(among(names, &w.firing)))
    }

    async fn composite(
        &self,
        _account: &Account,
        _region: &str,
        names: &[String],
    ) -> PortResult<Vec<String>> {
        self.with(|w| Ok(among(names, &w.composite)))
    }

    async fn read(
        &self,
        _account: &Account,
        _region: &str,
        names: &[String],
        asked: BakeRead,
    ) -> PortResult<Vec<AlarmReading>> {
        let since = asked.window.map(|w| w.from);
        self.with(|w| {
            w.bake_reads.push((names.to_vec(), since));
            let reading = |name: &String| AlarmReading {
                alarm: name.clone(),
                state: if w.firing.contains(name) {
                    AlarmState::Alarm
                } else if w.insufficient.contains(name) {
                    AlarmState::InsufficientData
                } else {
                    AlarmState::Ok
                },
                datapoints: since.map(|_| *w.datapoints.get(name).unwrap_or(&BUSY_DATAPOINTS)),
                reports_within_secs: w.reports_within.get(name).copied(),
            };
            Ok(names.iter().map(reading).collect())
        })
    }
}

#[async_trait]
impl Forge for Fakes {
    async fn report(&self, r: &DeploymentReport) -> PortResult<()> {
        self.with(|w| {
            if w.ledger.call(&r.key) {
                w.reports.push(r.clone());
            }
            Ok(())
        })
    }
}

#[async_trait]
impl TestRunner for Fakes {
    async fn run(&self, test: &TestDef, ctx: &TestContext) -> PortResult<TestResult> {
        self.with(|w| {
            w.ledger.call(&ctx.key);
            w.test_runs.push((ctx.stage.clone(), test.name.clone()));
            let scoped = format!("{}:{}", ctx.stage, test.name);
            let fails = w.failing_tests.contains(&test.name) || w.failing_tests.contains(&scoped);
            Ok(TestResult {
                passed: !fails,
                summary: if fails {
                    format!("{} failed: 1 of 12 checks failed", test.name)
                } else {
                    format!("{} passed", test.name)
                },
                output_tail: if fails {
                    "assertion failed: GET /healthz returned 503".into()
                } else {
                    String::new()
                },
            })
        })
    }
}

#[async_trait]
impl ApprovalSender for Fakes {
    async fn send(&self, req: &ApprovalRequest) -> PortResult<SendOutcome> {
        self.with(|w| {
            if w.ledger.call(&req.key) {
                w.approval_requests.push(req.clone());
            }
            let waiting = |name: &String| w.unconfirmed_approvers.contains(name);
            if !req.approvers.iter().any(|a| waiting(&a.name)) {
                return Ok(SendOutcome::Sent(req.approvers.len().max(1)));
            }
            let links = req.approvers.iter().map(|a| ApproverLink {
                approver: a.name.clone(),
                delivery: if waiting(&a.name) {
                    LinkDelivery::AwaitingConfirmation
                } else {
                    LinkDelivery::Sent
                },
            });
            Ok(SendOutcome::Unconfirmed(links.collect()))
        })
    }
}

/// What the real CloudFormation deployer would report for `req`, given how long its change
/// set and update took.
fn timing(req: &DeployRequest, took: Option<(Duration, Duration)>) -> Option<StackTiming> {
    let Deploy::CloudFormation { stack, .. } = &req.deploy else {
        return None;
    };
    let (change_set, update) = took?;
    let key = StackKey {
        account: req.account.id.to_string(),
        region: req.target.region.clone(),
        stack: stack.clone(),
    };
    Some(StackTiming::new(key, Some(change_set), Some(update)))
}
