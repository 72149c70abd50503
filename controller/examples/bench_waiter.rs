//! Benchmark: how soon does a deploy see a slow stack finish, and how many looks does it cost?
//!
//! Runs the real `tollgate serve` **as shipped** (no poll setting is passed: the production
//! schedule and retry settings) over pipelines of one CloudFormation stage each (`bake =
//! "0ms"`, no tests, no approval; the artifact `wait = "30s"` never applies, the image is
//! pushed first).
//! Every AWS call of the controller goes through a loopback proxy of this program: the
//! CloudFormation calls (SigV4 credential scope `cloudformation`) go to a scripted stub per
//! stack, picked by the call's `StackName`, whose change set is ready 20 s after
//! `CreateChangeSet` and whose update completes 180 s after `ExecuteChangeSet` (moto 5.2.5
//! gap: its operations are instant); everything else (STS, ECR) goes to moto. Half of the
//! stacks are in an account that names a stack-events topic (`stack_events_topic`): their
//! stub posts the stack's events, signed as SNS signs them, to the controller's
//! `POST /webhooks/sns`, verified against the pre-seeded certificate cache
//! (`--sns-cert-cache`).
//!
//! Two rounds, each one signed GitHub `push` that every pipeline follows (one release each):
//! the first deploy of every stack, without history; then the second, with the history the
//! controller kept from the first (`stack_timings` in its own store).
//!
//! How each figure is taken:
//! - **completion seen after**: from the moment the stub switched the stack to
//!   `UPDATE_COMPLETE` to the moment this program, reading the controller's store every
//!   10 ms, saw the stage `Succeeded` (so at most about 10 ms late, and including the step
//!   from the deploy's end to the stage's).
//! - **describe calls per stage**: `DescribeChangeSet` + `DescribeStacks` +
//!   `DescribeStackEvents` the stub answered for that deploy (every look the controller made
//!   at that stack in the round: before the change set, the waits, and the one read of the
//!   stack's events that measures an update seen on a long back-off step).
//! - **DescribeStacks in the update wait**: those after `ExecuteChangeSet`.
//!
//! Each round also checks that every stack executed exactly one change set and completed
//! before its stage was seen `Succeeded`; a CloudFormation call naming no known stack is sent
//! to a closed port, so it fails the deploy instead of reaching moto uncounted.
//!
//! ```text
//! cargo build --release -p tollgate --bin tollgate --example bench_waiter
//! TOLLGATE_MOTO_SERVER=$PWD/.venv/bin/moto_server \
//!     target/release/examples/bench_waiter --tollgate target/release/tollgate       # about 7 min
//! … --scale 0.05   # a quick check (targets do not apply)
//! ```
//! Bounded: each round ends within twice its scripted time plus a minute; loopback only.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use support::measure::{pick, verdict};
use support::proxy::{Divert, Proxy, form_value, service_of};
use support::{Controller, REPO, deliver_push, free_port};
use tollgate::domain::{RunStatus, StackKey};
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::cloudformation::{CloudFormationStub, Notifications, Script};
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::sns::TestSigner;
use tollgate_testkit::world::{GAMMA_ACCOUNT, IMAGE_PARAMETER, PROD_ACCOUNT, REGION, World};

const CHANGE_SET_TAKES: Duration = Duration::from_secs(20);
const UPDATE_TAKES: Duration = Duration::from_secs(180);

/// Targets (issue table: "a stub CloudFormation whose change set is ready after 20 s and whose
/// update completes after 3 min").
const SEEN_P99_TARGET: Duration = Duration::from_secs(2);
const DESCRIBES_TARGET: usize = 15;
/// With stack notifications: the look at once after the execute and the one the wake-up
/// brings.
const NOTIFIED_WAIT_TARGET: usize = 2;

/// The account whose stacks publish their events (`stack_events_topic`), and the one whose
/// stacks do not.
const NOTIFIED: &str = "prod";
const POLLED: &str = "gamma";

struct Args {
    tollgate: PathBuf,
    scale: f64,
    stacks: usize,
}

fn args() -> Result<Args> {
    let mut out = Args {
        tollgate: PathBuf::new(),
        scale: 1.0,
        stacks: 6,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tollgate" => out.tollgate = PathBuf::from(value),
            "--scale" => out.scale = value.parse().context("--scale")?,
            "--stacks" => out.stacks = value.parse().context("--stacks")?,
            other => bail!("unknown flag {other} (use --tollgate PATH, --scale F, --stacks N)"),
        }
    }
    ensure!(
        !out.tollgate.as_os_str().is_empty(),
        "usage: bench_waiter --tollgate PATH [--scale F] [--stacks N]"
    );
    out.tollgate = std::fs::canonicalize(&out.tollgate)
        .with_context(|| format!("--tollgate {}", out.tollgate.display()))?;
    ensure!(out.scale > 0.0 && out.scale <= 1.0, "--scale is in (0, 1]");
    ensure!(
        (2..=20).contains(&out.stacks) && out.stacks % 2 == 0,
        "--stacks is an even number between 2 and 20"
    );
    Ok(out)
}

/// `s` as a TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn topic() -> String {
    format!("arn:aws:sns:{REGION}:{PROD_ACCOUNT}:bench-stack-events")
}

/// One pipeline per stack, each following the same branch, with one stage deploying its
/// stack: no tests, no bake, no approval.
fn stages_toml(public_url: &str, stacks: usize) -> String {
    let mut out = format!(
        "accounts = \"accounts/accounts.toml\"\n\n[controller]\npublic_url = {}\n",
        q(public_url)
    );
    for i in 0..stacks {
        out.push_str(&format!(
            "\n[[pipelines]]\nname = \"bench-{i}\"\n\n\
             [pipelines.source]\nrepository = {}\nbranch = \"main\"\n\n\
             [pipelines.artifact]\nrepository = \"bench\"\naccount = \"build\"\nregion = {}\n\
             tag = \"{{sha}}\"\nwait = \"30s\"\n\n\
             [[pipelines.stages]]\nname = \"prod\"\ntargets = [{{ account = {}, region = {} }}]\n\
             bake = \"0ms\"\n\n\
             [pipelines.stages.deploy]\nkind = \"cloudformation\"\nstack = \"bench-{i}\"\n\
             template = \"service.json\"\nimage_parameter = {}\n",
            q(REPO),
            q(REGION),
            q(account_of(i)),
            q(REGION),
            q(IMAGE_PARAMETER),
        ));
    }
    out
}

fn account_of(i: usize) -> &'static str {
    if notified(i) { NOTIFIED } else { POLLED }
}

fn notified(i: usize) -> bool {
    i % 2 == 1
}

/// One stack: its pipeline and its stub.
struct Stack {
    index: usize,
    stub: CloudFormationStub,
    account_id: &'static str,
}

impl Stack {
    fn name(&self) -> String {
        format!("bench-{}", self.index)
    }

    fn notified(&self) -> bool {
        notified(self.index)
    }

    fn key(&self) -> StackKey {
        StackKey {
            account: self.account_id.into(),
            region: REGION.into(),
            stack: self.name(),
        }
    }
}

async fn stack(index: usize, scale: f64, sns_url: &str, signer: &Arc<TestSigner>) -> Result<Stack> {
    let name = format!("bench-{index}");
    let account_id = if notified(index) {
        PROD_ACCOUNT
    } else {
        GAMMA_ACCOUNT
    };
    let script = Script {
        statuses: vec!["UPDATE_COMPLETE".into()],
        parameters: vec![(IMAGE_PARAMETER.into(), "bench@sha256:0".into())],
        change_set_takes: Some(CHANGE_SET_TAKES.mul_f64(scale)),
        update_takes: Some(UPDATE_TAKES.mul_f64(scale)),
        notifications: notified(index).then(|| Notifications {
            endpoint: sns_url.to_owned(),
            signer: signer.clone(),
        }),
        stack_id: Some(format!(
            "arn:aws:cloudformation:{REGION}:{account_id}:stack/{name}/b3f1e2d0"
        )),
        ..Script::default()
    };
    Ok(Stack {
        index,
        stub: CloudFormationStub::start(script).await?,
        account_id,
    })
}

/// CloudFormation calls go to the stub of the stack they name; the rest to moto. One naming
/// no known stack goes to `closed` (nothing listens there), so it fails loudly.
fn divert(stacks: &[Arc<Stack>], closed: String) -> Divert {
    let stubs: BTreeMap<String, String> = stacks
        .iter()
        .map(|s| (s.name(), s.stub.endpoint()))
        .collect();
    Arc::new(move |uri, headers, body| {
        if service_of(headers).as_deref() != Some("cloudformation") {
            return None;
        }
        let stub = form_value(uri, body, "StackName").and_then(|name| stubs.get(&name).cloned());
        Some(stub.unwrap_or_else(|| closed.clone()))
    })
}

/// What one deploy of one stack showed.
#[derive(Debug, Clone)]
struct Sample {
    notified: bool,
    seen_after: Duration,
    describes: usize,
    update_wait_describes: usize,
}

fn describes(calls: &[String]) -> usize {
    let count = |a: &str| calls.iter().filter(|c| *c == a).count();
    count("DescribeChangeSet") + count("DescribeStacks") + count("DescribeStackEvents")
}

struct Bench {
    world: World,
    stacks: Vec<Arc<Stack>>,
    controller: Controller,
    store: Store,
    http: reqwest::Client,
    url: String,
    secret: String,
}

impl Bench {
    /// One release of every pipeline, deployed at once; each stack's figures.
    async fn round(&mut self, number: usize, limit: Duration) -> Result<Vec<Sample>> {
        let started = Instant::now();
        let deadline = started + limit;
        let sha = format!("{number:040x}");
        self.world.push_image(&sha).await?;
        let before: Vec<usize> = self
            .stacks
            .iter()
            .map(|s| s.stub.accepted().len())
            .collect();
        let delivery = format!("bench-waiter-{number}");
        deliver_push(
            &self.http,
            &self.url,
            &self.secret,
            &sha,
            "bench",
            &delivery,
        )
        .await?;
        let mut releases = Vec::new();
        for s in &self.stacks {
            releases.push(support::release_of(&self.store, &s.name(), &sha, deadline).await?);
        }
        let mut seen: Vec<Option<Instant>> = vec![None; self.stacks.len()];
        while seen.iter().any(Option::is_none) {
            self.controller.check_alive()?;
            for (i, release) in releases.iter().enumerate() {
                if seen[i].is_some() {
                    continue;
                }
                let Some(run) = self.store.stage_run(*release, "prod").await? else {
                    continue;
                };
                if run.status == RunStatus::Succeeded {
                    seen[i] = Some(Instant::now());
                } else if run.status.is_terminal() {
                    bail!("{release} of bench-{i} ended {:?}", run.status);
                }
            }
            ensure!(
                Instant::now() < deadline,
                "round {number} took longer than {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut samples = Vec::new();
        for ((s, seen), before) in self.stacks.iter().zip(seen).zip(before) {
            let seen = seen.ok_or_else(|| anyhow!("{} not seen", s.name()))?;
            let completed = s
                .stub
                .completed_at()
                .filter(|at| *at >= started)
                .ok_or_else(|| anyhow!("{} did not complete in round {number}", s.name()))?;
            ensure!(
                seen >= completed,
                "{} was seen Succeeded before its update completed",
                s.name()
            );
            let calls: Vec<String> = s.stub.accepted().split_off(before);
            let executes: Vec<usize> = (0..calls.len())
                .filter(|&i| calls[i] == "ExecuteChangeSet")
                .collect();
            let [execute] = executes[..] else {
                bail!(
                    "{} executed {} change sets in round {number}",
                    s.name(),
                    executes.len()
                );
            };
            let update_wait_describes = calls[execute..]
                .iter()
                .filter(|c| *c == "DescribeStacks")
                .count();
            samples.push(Sample {
                notified: s.notified(),
                seen_after: seen.duration_since(completed),
                describes: describes(&calls),
                update_wait_describes,
            });
        }
        Ok(samples)
    }
}

/// Prints the rows of one (history, notifications) group.
fn rows(label: &str, samples: &[&Sample], targets: bool) {
    if samples.is_empty() {
        return;
    }
    let seen: Vec<f64> = samples.iter().map(|s| s.seen_after.as_secs_f64()).collect();
    let (p50, p99) = (pick(&seen, 0.5), pick(&seen, 0.99));
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
        "| completion seen after, {label} | p50 {p50:.2} s, p99 {p99:.2} s | {} |",
        check(p99 <= SEEN_P99_TARGET.as_secs_f64(), "p99 ≤ 2 s")
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
async fn main() {
    if let Err(e) = run().await {
        eprintln!("benchmark failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> Result<()> {
    let args = args()?;
    let moto = tokio::task::spawn_blocking(MotoServer::start).await??;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let world = World::builder()
        .source(REPO)
        .repository("bench")
        .public_url(&url)
        .prod_approval(false)
        .stage_tests(false)
        .bake_all(Duration::ZERO)
        .stack_events_topic(NOTIFIED, topic())
        .build(&moto)
        .await?;
    std::fs::write(world.stages_path(), stages_toml(&url, args.stacks))?;
    let signer = Arc::new(TestSigner::new());
    let certs = world.seed_sns_certificates(&signer)?;
    let sns_url = format!("{url}/webhooks/sns");
    let mut stacks = Vec::new();
    for i in 0..args.stacks {
        stacks.push(Arc::new(stack(i, args.scale, &sns_url, &signer).await?));
    }
    // Port 1: privileged and unused, so nothing a test or benchmark starts can listen there.
    let closed = "http://127.0.0.1:1".to_owned();
    let (_proxy, proxy_url) =
        Proxy::start_diverting(moto.endpoint(), divert(&stacks, closed)).await?;
    let cloudwatch = world.start_cloudwatch_stub().await?;
    let env: Vec<(String, String)> = world
        .serve_env(&moto, &cloudwatch)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_ENDPOINT_URL" => (k, proxy_url.clone()),
            _ => (k, v),
        })
        .collect();
    let served = support::serve_world(&args.tollgate, &world, port, &certs, &env).await?;
    let mut bench = Bench {
        world,
        stacks,
        controller: served.controller,
        store: served.store,
        http: served.http,
        url,
        secret: served.secret,
    };
    let scripted = (CHANGE_SET_TAKES + UPDATE_TAKES).mul_f64(args.scale);
    let limit = scripted * 2 + Duration::from_secs(60);
    let started = Instant::now();
    println!(
        "tollgate serve over {} pipelines of one CloudFormation stage ({} stacks with stack notifications); change set ready after {:.1} s, update complete after {:.1} s",
        args.stacks,
        args.stacks / 2,
        CHANGE_SET_TAKES.mul_f64(args.scale).as_secs_f64(),
        UPDATE_TAKES.mul_f64(args.scale).as_secs_f64(),
    );
    let first = bench.round(1, limit).await?;
    let second = bench.round(2, limit).await?;
    let log = bench.world.dir().join("tollgate.log");
    if let Err(e) = bench.controller.stop() {
        support::print_log_errors(&log, 20);
        return Err(e);
    }
    for s in &bench.stacks {
        let history = bench.store.stack_history(&s.key()).await?;
        let secs = |d: &[Duration]| {
            let v: Vec<String> = d
                .iter()
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .collect();
            v.join(", ")
        };
        println!(
            "  {} (notifications: {}): the controller kept change set {}, update {}",
            s.name(),
            s.notified(),
            secs(&history.change_set),
            secs(&history.update)
        );
    }
    let targets = args.scale >= 1.0;
    println!();
    println!("| figure | measured | target | result |");
    println!("|---|---|---|---|");
    let pick_group = |samples: &[Sample], notified: bool| -> Vec<Sample> {
        samples
            .iter()
            .filter(|s| s.notified == notified)
            .cloned()
            .collect()
    };
    let groups = [
        ("no history, polling only", pick_group(&first, false), false),
        (
            "with history, polling only",
            pick_group(&second, false),
            targets,
        ),
        (
            "no history, stack notifications",
            pick_group(&first, true),
            targets,
        ),
        (
            "with history, stack notifications",
            pick_group(&second, true),
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
