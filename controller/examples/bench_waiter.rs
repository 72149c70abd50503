//! Benchmark: how soon does a deploy see a slow stack finish, and how many looks does it cost?
//!
//! Drives the real CloudFormation deployer (`CloudFormationDeployer`, **with the production
//! schedule `PollSettings::default()`** and the production retry settings) against scripted
//! CloudFormation stubs on 127.0.0.1 whose change set is ready 20 s after `CreateChangeSet`
//! and whose update completes 180 s after `ExecuteChangeSet` (moto 5.2.5 gap: its operations
//! are instant). Several stacks deploy at once; half of them name a stack-events topic
//! (`NotificationARNs`), and their stub posts the stack's events, signed as SNS signs them,
//! to the real `POST /webhooks/sns` route served here in front of a real engine (SQLite file,
//! fake ports), which wakes the deployer's waiter through the shared registry.
//!
//! Two rounds: the first deploy of every stack, without history; then the second, with the
//! history the first one measured, written to and read back from a real store
//! (`stack_timings`) as the engine does.
//!
//! How each figure is taken:
//! - **completion seen after**: from the moment the stub switched the stack to
//!   `UPDATE_COMPLETE` to the moment the deployer returned (the read-back included).
//! - **describe calls per stage**: `DescribeChangeSet` + `DescribeStacks` +
//!   `DescribeStackEvents` the stub answered for that deploy (the look before the change set,
//!   the waits, the read-back, and the one read of the stack's events that measures an update
//!   seen on a long back-off step).
//! - **DescribeStacks in the update wait**: those after `ExecuteChangeSet`.
//!
//! ```text
//! cargo build --release -p tollgate --example bench_waiter
//! target/release/examples/bench_waiter            # full scale, about 7 minutes
//! target/release/examples/bench_waiter --scale 0.05   # a quick check (targets do not apply)
//! ```
//! Bounded: each round ends within twice its scripted time plus a minute; loopback only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use chrono::Utc;
use tollgate::aws::cloudformation::CloudFormationDeployer;
use tollgate::aws::retry::{Limiter, PollSettings};
use tollgate::aws::stack_waiters::StackWaiters;
use tollgate::aws::sts::Credentials;
use tollgate::config::{self, Account, Deploy, Target};
use tollgate::domain::{
    Effect, EffectKind, EffectOutput, ReleaseId, StackHistory, StackKey, StackTiming,
};
use tollgate::engine::{DeployRequest, Engine, SystemClock};
use tollgate::http::sns::{PATH, SnsState, routes};
use tollgate::http::sns_verify::CertCache;
use tollgate::store::{EffectOutcome, Store};
use tollgate_testkit::aws_stubs::cloudformation::{CloudFormationStub, Notifications, Script};
use tollgate_testkit::fakes::Fakes;
use tollgate_testkit::sns::TestSigner;

const CHANGE_SET_TAKES: Duration = Duration::from_secs(20);
const UPDATE_TAKES: Duration = Duration::from_secs(180);

/// Targets (issue table: "a stub CloudFormation whose change set is ready after 20 s and whose
/// update completes after 3 min").
const SEEN_P99_TARGET: Duration = Duration::from_secs(2);
const DESCRIBES_TARGET: usize = 15;
/// With stack notifications: the look at once after the execute and the one the wake-up
/// brings.
const NOTIFIED_WAIT_TARGET: usize = 2;

const ACCOUNT: &str = "444444444444";
const REGION: &str = "eu-west-1";
const TOPIC: &str = "arn:aws:sns:eu-west-1:444444444444:bench-stack-events";

const STAGES_TOML: &str = r#"
[controller]
public_url = "https://tollgate.bench"

[[pipelines]]
name = "bench"
[pipelines.source]
repository = "acme/bench"
[pipelines.artifact]
repository = "bench"
account = "build"
region = "eu-west-1"

[[pipelines.stages]]
name = "prod"
targets = [{ account = "prod" }]
[pipelines.stages.deploy]
kind = "cloudformation"
stack = "bench-0"
template = "service.json"
image_parameter = "ImageUri"
"#;

struct Args {
    scale: f64,
    stacks: usize,
}

fn args() -> Result<Args> {
    let mut out = Args {
        scale: 1.0,
        stacks: 6,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--scale" => out.scale = value.parse().context("--scale")?,
            "--stacks" => out.stacks = value.parse().context("--stacks")?,
            other => bail!("unknown flag {other} (use --scale F, --stacks N)"),
        }
    }
    ensure!(out.scale > 0.0 && out.scale <= 1.0, "--scale is in (0, 1]");
    ensure!(
        (2..=20).contains(&out.stacks),
        "--stacks is between 2 and 20"
    );
    Ok(out)
}

/// The SNS route on a loopback port in front of a real engine, with the waiters' registry.
struct Intake {
    _dir: tempfile::TempDir,
    _certs: tempfile::TempDir,
    waiters: Arc<StackWaiters>,
    signer: Arc<TestSigner>,
    url: String,
    store: Store,
    template: std::path::PathBuf,
}

impl Intake {
    async fn start() -> Result<Intake> {
        let dir = tempfile::tempdir()?;
        write_config(dir.path())?;
        let config = config::load(&dir.path().join("stages.toml"))
            .map_err(|e| anyhow!("{e}"))?
            .config;
        let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        let engine_store = Store::open(&db("engine.db")).await?;
        let engine = Engine::new(
            engine_store,
            config,
            Fakes::new().ports(),
            Arc::new(SystemClock),
        );
        let signer = Arc::new(TestSigner::new());
        let certs = tempfile::tempdir()?;
        signer.seed_cache_dir(certs.path())?;
        let cache = CertCache::new(Some(certs.path().into())).map_err(|e| anyhow!("{e}"))?;
        let waiters = StackWaiters::new();
        let state = SnsState::new(engine, Arc::new(cache))?.with_waiters(waiters.clone());
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let url = format!("http://{}{PATH}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, routes(state)).await;
        });
        let store = Store::open(&db("history.db")).await?;
        sqlx::query("INSERT INTO releases (id, pipeline, sha, branch, author_name, author_email, message, created_at) VALUES (1, 'bench', 'abc', 'main', 'A', 'a@x', 'm', 0)")
            .execute(store.pool())
            .await?;
        Ok(Intake {
            template: dir.path().join("service.json"),
            _dir: dir,
            _certs: certs,
            waiters,
            signer,
            url,
            store,
        })
    }

    /// Keeps what a deploy measured, as the engine does with the deploy's outcome.
    async fn keep(&self, attempt: u32, timing: StackTiming) -> Result<()> {
        let kind = EffectKind::Deploy { wave: 0 };
        let e = Effect::new("bench", ReleaseId(1), "prod", attempt, kind);
        self.store.begin_effect(&e, Utc::now()).await?;
        let output = EffectOutput::Deployed {
            image_uri: String::new(),
            outputs: BTreeMap::new(),
            applied: None,
            timing: Some(timing),
        };
        let outcome = EffectOutcome::success("deployed").with(output);
        self.store.finish_effect(&e, &outcome, Utc::now()).await?;
        Ok(())
    }
}

fn write_config(dir: &Path) -> Result<()> {
    let accounts = format!(
        "[accounts.build]\nid = \"111111111111\"\nregion = \"{REGION}\"\ncontroller = true\n\
         [accounts.prod]\nid = \"{ACCOUNT}\"\nrole_arn = \"arn:aws:iam::{ACCOUNT}:role/deploy\"\n\
         external_id = {{ env = \"BENCH_UNUSED_EXTERNAL_ID\" }}\nregion = \"{REGION}\"\n\
         stack_events_topic = \"{TOPIC}\"\n"
    );
    std::fs::create_dir_all(dir.join("accounts"))?;
    std::fs::write(dir.join("accounts/accounts.toml"), accounts)?;
    std::fs::write(dir.join("service.json"), r#"{"Resources": {}}"#)?;
    std::fs::write(dir.join("stages.toml"), STAGES_TOML)?;
    Ok(())
}

/// One stack: its stub and a deployer pointed at it (the stack-events topic or not).
struct Stack {
    index: usize,
    stub: CloudFormationStub,
    deployer: CloudFormationDeployer,
    notified: bool,
}

impl Stack {
    fn name(&self) -> String {
        format!("bench-{}", self.index)
    }

    fn key(&self) -> StackKey {
        StackKey {
            account: ACCOUNT.into(),
            region: REGION.into(),
            stack: self.name(),
        }
    }

    fn account(&self) -> Account {
        Account {
            name: "prod".into(),
            id: ACCOUNT.into(),
            role_arn: None,
            external_id: None,
            region: REGION.into(),
            controller: true,
            session_duration: Duration::from_secs(3600),
            stack_events_topic: self.notified.then(|| TOPIC.into()),
        }
    }
}

async fn stack(intake: &Intake, index: usize, scale: f64) -> Result<Stack> {
    let notified = index % 2 == 1;
    let name = format!("bench-{index}");
    let script = Script {
        statuses: vec!["UPDATE_COMPLETE".into()],
        parameters: vec![("ImageUri".into(), "bench@sha256:0".into())],
        change_set_takes: Some(CHANGE_SET_TAKES.mul_f64(scale)),
        update_takes: Some(UPDATE_TAKES.mul_f64(scale)),
        notifications: notified.then(|| Notifications {
            endpoint: intake.url.clone(),
            signer: intake.signer.clone(),
        }),
        stack_id: Some(format!(
            "arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{name}/b3f1e2d0"
        )),
        ..Script::default()
    };
    let stub = CloudFormationStub::start(script).await?;
    let credentials = aws_credential_types::Credentials::new("stub", "stub", None, None, "stub");
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(stub.endpoint())
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    let creds = Credentials::new(sdk, Arc::new(Limiter::default()));
    let deployer = CloudFormationDeployer::new(Arc::new(creds), PollSettings::default())
        .with_waiters(intake.waiters.clone());
    Ok(Stack {
        index,
        stub,
        deployer,
        notified,
    })
}

/// What one deploy of one stack showed.
#[derive(Debug, Clone)]
struct Sample {
    notified: bool,
    seen_after: Duration,
    describes: usize,
    update_wait_describes: usize,
    timing: Option<StackTiming>,
}

fn describes(calls: &[String]) -> usize {
    let count = |a: &str| calls.iter().filter(|c| *c == a).count();
    count("DescribeChangeSet") + count("DescribeStacks") + count("DescribeStackEvents")
}

async fn deploy(
    s: Arc<Stack>,
    template: std::path::PathBuf,
    round: usize,
    history: StackHistory,
) -> Result<Sample> {
    let before = s.stub.accepted().len();
    let req = DeployRequest {
        key: format!("bench/r{round}/prod/1/deploy-0"),
        pipeline: "bench".into(),
        stage: "prod".into(),
        release: ReleaseId(round as i64),
        target: Target {
            account: "prod".into(),
            region: REGION.into(),
        },
        account: s.account(),
        deploy: Deploy::CloudFormation {
            stack: s.name(),
            template,
            parameters: BTreeMap::new(),
            image_parameter: "ImageUri".into(),
            capabilities: vec![],
            execution_role: None,
        },
        image_uri: format!("bench@sha256:{round}"),
        session_name: format!("tollgate-bench-{round}-prod"),
        alarm_override: false,
        restore: None,
        history,
    };
    let result = s.deployer.deploy_stack(&req, &[]).await?;
    let returned = Instant::now();
    let completed = s
        .stub
        .completed_at()
        .ok_or_else(|| anyhow!("{} never completed", s.name()))?;
    let calls: Vec<String> = s.stub.accepted().split_off(before);
    let execute = calls
        .iter()
        .position(|c| c == "ExecuteChangeSet")
        .ok_or_else(|| anyhow!("{} executed nothing", s.name()))?;
    let update_wait_describes = calls[execute..]
        .iter()
        .filter(|c| *c == "DescribeStacks")
        .count();
    Ok(Sample {
        notified: s.notified,
        seen_after: returned.saturating_duration_since(completed),
        describes: describes(&calls),
        update_wait_describes,
        timing: result.timing,
    })
}

async fn round(
    intake: &Intake,
    stacks: &[Arc<Stack>],
    number: usize,
    limit: Duration,
) -> Result<Vec<Sample>> {
    let mut set = tokio::task::JoinSet::new();
    for s in stacks {
        let history = if number == 1 {
            StackHistory::default()
        } else {
            intake.store.stack_history(&s.key()).await?
        };
        let s = s.clone();
        let template = intake.template.clone();
        set.spawn(async move { deploy(s, template, number, history).await });
    }
    let all = tokio::time::timeout(limit, set.join_all())
        .await
        .map_err(|_| anyhow!("round {number} took longer than {limit:?}"))?;
    all.into_iter().collect()
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Prints the rows of one (history, notifications) group.
fn rows(label: &str, samples: &[&Sample], targets: bool) {
    if samples.is_empty() {
        return;
    }
    let seen: Vec<Duration> = samples.iter().map(|s| s.seen_after).collect();
    let (p50, p99) = (percentile(&seen, 50.0), percentile(&seen, 99.0));
    let most = samples.iter().map(|s| s.describes).max().unwrap_or(0);
    let mean = samples.iter().map(|s| s.describes).sum::<usize>() as f64 / samples.len() as f64;
    let wait = samples
        .iter()
        .map(|s| s.update_wait_describes)
        .max()
        .unwrap_or(0);
    let notified = samples[0].notified;
    let check = |ok: bool, target: &str| {
        if targets {
            format!("{target} | {}", verdict(ok))
        } else {
            "(reference) | -".to_string()
        }
    };
    println!(
        "| completion seen after, {label} | p50 {:.2} s, p99 {:.2} s | {} |",
        p50.as_secs_f64(),
        p99.as_secs_f64(),
        check(p99 <= SEEN_P99_TARGET, "p99 ≤ 2 s")
    );
    println!(
        "| describe calls per stage, {label} | mean {mean:.1}, max {most} | {} |",
        check(most <= DESCRIBES_TARGET, "≤ 15")
    );
    if notified {
        println!(
            "| DescribeStacks in the update wait, {label} | max {wait} | {} |",
            check(wait <= NOTIFIED_WAIT_TARGET, "≤ 2 (~1 after the wake-up)")
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let intake = Intake::start().await?;
    let mut stacks = Vec::new();
    for i in 0..args.stacks {
        stacks.push(Arc::new(stack(&intake, i, args.scale).await?));
    }
    let scripted = (CHANGE_SET_TAKES + UPDATE_TAKES).mul_f64(args.scale);
    let limit = scripted * 2 + Duration::from_secs(60);
    let started = Instant::now();
    println!(
        "{} stacks ({} with stack notifications); change set ready after {:.1} s, update complete after {:.1} s",
        args.stacks,
        args.stacks / 2,
        CHANGE_SET_TAKES.mul_f64(args.scale).as_secs_f64(),
        UPDATE_TAKES.mul_f64(args.scale).as_secs_f64(),
    );
    let first = round(&intake, &stacks, 1, limit).await?;
    for (s, sample) in stacks.iter().zip(&first) {
        let timing = sample
            .timing
            .clone()
            .ok_or_else(|| anyhow!("nothing measured"))?;
        intake.keep(s.index as u32 + 1, timing).await?;
    }
    let second = round(&intake, &stacks, 2, limit).await?;
    for (s, sample) in stacks.iter().zip(&second) {
        let t = sample.timing.as_ref();
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} s", v as f64 / 1e3));
        println!(
            "  {}: measured change set {}, update {} (notifications: {})",
            s.name(),
            ms(t.and_then(|t| t.change_set_ms)),
            ms(t.and_then(|t| t.update_ms)),
            s.notified
        );
    }
    let targets = args.scale >= 1.0;
    println!();
    println!("| figure | measured | target | result |");
    println!("|---|---|---|---|");
    let pick = |samples: &[Sample], notified: bool| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.notified == notified)
            .cloned()
            .collect()
    };
    let groups = [
        ("no history, polling only", pick(&first, false), false),
        ("with history, polling only", pick(&second, false), targets),
        (
            "no history, stack notifications",
            pick(&first, true),
            targets,
        ),
        (
            "with history, stack notifications",
            pick(&second, true),
            targets,
        ),
    ];
    for (label, samples, with_targets) in &groups {
        let refs: Vec<&Sample> = samples.iter().collect();
        rows(label, &refs, *with_targets);
    }
    println!();
    println!(
        "{} deploys in {:.0} s (scale {}); targets apply at scale 1",
        args.stacks * 2,
        started.elapsed().as_secs_f64(),
        args.scale
    );
    Ok(())
}
