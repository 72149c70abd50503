//! What the example programs share: the `tollgate serve` child process, signed GitHub
//! deliveries, and the story told from the controller's event log.
//!
//! Each program uses part of it.
#![allow(dead_code)]

pub mod fleet;
pub mod measure;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tollgate::domain::{ReleaseId, RunStatus};
use tollgate::github::webhook::sign;
use tollgate::secret::Secret;
use tollgate::store::Store;
use tollgate_testkit::world::World;

/// The longest any one wait may take before a program gives up.
pub const STEP_LIMIT: Duration = Duration::from_secs(60);
/// The GitHub repository the example pipeline follows.
pub const REPO: &str = "acme/backend";

/// Prints an indented line of the story.
pub fn say(text: impl AsRef<str>) {
    println!("   {}", text.as_ref());
}

// ----- the controller process ---------------------------------------------------------------

pub struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    /// `env`: where the AWS calls go and with what credentials ([`World::serve_env`]).
    pub fn start(
        binary: &Path,
        args: &[String],
        env: &[(String, String)],
        webhook_secret: &str,
        log: &Path,
    ) -> Result<Controller> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("TOLLGATE_GITHUB_WEBHOOK_SECRET", webhook_secret)
            .env("RUST_LOG", "info")
            .env_remove("TOLLGATE_GITHUB_TOKEN")
            .env_remove("TOLLGATE_GITHUB_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Controller {
            child,
            log: log.to_path_buf(),
        })
    }

    /// The controller's process id (to read its CPU time from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the controller exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the controller exited ({status}):\n{}", tail.join("\n"));
        }
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "the controller exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        bail!("the controller did not stop within 10 s of SIGTERM")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A ready `tollgate serve` over a world, with what a program needs to talk to it.
pub struct Served {
    pub controller: Controller,
    /// The controller's state database, read from this process.
    pub store: Store,
    pub http: reqwest::Client,
    /// The GitHub webhook secret it was started with.
    pub secret: String,
}

/// Starts `tollgate serve` over `world` on `127.0.0.1:port` (SQLite state and log in the
/// world's directory, a fresh webhook secret, the SNS certificates in `certs`, AWS as `env`
/// says) and waits until it is ready.
pub async fn serve_world(
    tollgate: &Path,
    world: &World,
    port: u16,
    certs: &Path,
    env: &[(String, String)],
) -> Result<Served> {
    let state = format!("sqlite://{}", world.dir().join("tollgate.db").display());
    let secret = random_secret();
    let mut controller = Controller::start(
        tollgate,
        &serve_args(world, &state, port, certs),
        env,
        &secret,
        &world.dir().join("tollgate.log"),
    )?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    wait_ready(&http, &format!("http://127.0.0.1:{port}"), &mut controller).await?;
    let store = Store::open(&state).await?;
    Ok(Served {
        controller,
        store,
        http,
        secret,
    })
}

/// The release of `sha` in `pipeline` once the controller recorded it (the store read every
/// 10 ms), or an error at `deadline`.
pub async fn release_of(
    store: &Store,
    pipeline: &str,
    sha: &str,
    deadline: Instant,
) -> Result<ReleaseId> {
    loop {
        if let Some(id) = recorded_release(store, pipeline, sha).await? {
            return Ok(id);
        }
        ensure!(
            Instant::now() < deadline,
            "no release of {sha} in {pipeline} in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The release of `sha` among `pipeline`'s 20 newest, if the controller recorded it.
pub async fn recorded_release(
    store: &Store,
    pipeline: &str,
    sha: &str,
) -> Result<Option<ReleaseId>> {
    let runs = store.recent_runs(pipeline, 20).await?;
    Ok(runs
        .into_iter()
        .find(|(r, _)| r.sha == sha)
        .map(|(r, _)| r.id))
}

/// `tollgate serve` over `world` on `127.0.0.1:port`, with the pre-seeded SNS certificates.
/// The emulators' endpoints go in the environment ([`World::serve_env`]).
pub fn serve_args(world: &World, state: &str, port: u16, certs: &Path) -> Vec<String> {
    serve_config_args(&world.stages_path(), state, port, Some(certs))
}

/// `tollgate serve --config <stages>` on `127.0.0.1:port`.
pub fn serve_config_args(
    stages: &Path,
    state: &str,
    port: u16,
    certs: Option<&Path>,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--config",
        &stages.display().to_string(),
        "--state",
        state,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(certs) = certs {
        args.push("--sns-cert-cache".into());
        args.push(certs.display().to_string());
    }
    args
}

/// The environment of a `tollgate serve` whose AWS calls all go to `endpoint` (moto, or a
/// proxy in front of it), with static test credentials and moto's default region.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

pub async fn wait_ready(http: &reqwest::Client, url: &str, c: &mut Controller) -> Result<()> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        c.check_alive()?;
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the controller was not ready within {STEP_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ----- GitHub -------------------------------------------------------------------------------

/// Sends a `push` webhook as GitHub does: the JSON body, its HMAC-SHA256 signature, the event
/// name and the delivery id. Returns the controller's answer (status and body).
pub async fn deliver_push(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    sha: &str,
    message: &str,
    delivery: &str,
) -> Result<String> {
    let body = push_body(REPO, sha, message);
    let (status, text) = deliver(http, url, secret, "push", delivery, body).await?;
    ensure!(
        status.is_success(),
        "the push webhook was refused: {status} {text}"
    );
    Ok(format!("{status} {}", text.trim()))
}

/// Sends one signed GitHub delivery of `event` to `POST /webhooks/github`; returns the
/// answer's status and body.
pub async fn deliver(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    event: &str,
    delivery: &str,
    body: String,
) -> Result<(reqwest::StatusCode, String)> {
    let signature = sign(&Secret::new(secret), body.as_bytes());
    let r = http
        .post(format!("{url}/webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await?;
    let status = r.status();
    Ok((status, r.text().await?))
}

/// The body of a `push` of commit `sha` to `main` of `repo` (`owner/name`), in GitHub's shape.
pub fn push_body(repo: &str, sha: &str, message: &str) -> String {
    push_body_after(repo, &"0".repeat(40), sha, message)
}

/// [`push_body`] of a push that moved `main` from `before` to `sha`.
pub fn push_body_after(repo: &str, before: &str, sha: &str, message: &str) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo);
    let owner = repo.split('/').next().unwrap_or(repo);
    serde_json::json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": sha,
        "created": false,
        "deleted": false,
        "forced": false,
        "compare": format!("https://github.com/{repo}/compare/{}...{}", &before[..12], &sha[..12]),
        "repository": {
            "id": 1296269,
            "name": name,
            "full_name": repo,
            "private": true,
            "owner": { "login": owner, "id": 1 },
            "html_url": format!("https://github.com/{repo}"),
            "default_branch": "main"
        },
        "pusher": { "name": "carol", "email": "carol@example.com" },
        "sender": { "login": "carol", "id": 3 },
        "head_commit": {
            "id": sha,
            "tree_id": "0".repeat(40),
            "distinct": true,
            "message": message,
            "timestamp": "2026-11-23T10:00:00Z",
            "url": format!("https://github.com/{repo}/commit/{sha}"),
            "author": { "name": "Carol", "email": "carol@example.com", "username": "carol" },
            "committer": { "name": "Carol", "email": "carol@example.com", "username": "carol" },
            "added": [], "removed": [], "modified": ["src/orders.py"]
        },
        "commits": []
    })
    .to_string()
}

// ----- the story, from the event log --------------------------------------------------------

/// Follows the controller's event log (the same SQLite file, read while it runs) and prints
/// each new entry as a line of the story.
pub struct Story {
    store: Store,
    pipeline: String,
    seen: i64,
    /// Follow without printing (a benchmark's output is its figures).
    quiet: bool,
}

impl Story {
    pub fn new(store: Store, pipeline: String) -> Story {
        Story {
            store,
            pipeline,
            seen: 0,
            quiet: false,
        }
    }

    /// A story that only follows: nothing is printed.
    pub fn quiet(store: Store, pipeline: String) -> Story {
        Story {
            quiet: true,
            ..Story::new(store, pipeline)
        }
    }

    pub async fn print_new(&mut self) -> Result<()> {
        if self.quiet {
            return Ok(());
        }
        for e in self.store.events(&self.pipeline, 10_000).await? {
            if e.id <= self.seen {
                continue;
            }
            self.seen = e.id;
            let place = match (&e.release, &e.stage) {
                (Some(r), Some(s)) => format!("r{r} {s}"),
                (Some(r), None) => format!("r{r}"),
                _ => String::new(),
            };
            say(format!(
                "{}  {:<10} {:<16} {}",
                e.at.format("%H:%M:%S%.3f"),
                place,
                e.kind,
                one_line(&e.detail)
            ));
        }
        Ok(())
    }

    pub async fn release_of(&mut self, sha: &str) -> Result<ReleaseId> {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            self.print_new().await?;
            if let Some(id) = recorded_release(&self.store, &self.pipeline, sha).await? {
                return Ok(id);
            }
            ensure!(
                Instant::now() < deadline,
                "no release for {sha} within {STEP_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn until(
        &mut self,
        release: ReleaseId,
        stage: &str,
        done: impl Fn(RunStatus) -> bool,
        controller: &mut Controller,
    ) -> Result<()> {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            controller.check_alive()?;
            self.print_new().await?;
            let run = self.store.stage_run(release, stage).await?;
            if let Some(run) = &run {
                if done(run.status) {
                    return Ok(());
                }
                if run.status.is_terminal() && !done(run.status) {
                    bail!(
                        "{release} in {stage} ended {:?}: {}",
                        run.status,
                        run.reason.describe(chrono::Utc::now())
                    );
                }
            }
            ensure!(
                Instant::now() < deadline,
                "{release} in {stage} did not get there within {STEP_LIMIT:?} (now {:?})",
                run.map(|r| (r.status, r.reason))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn one_line(text: &str) -> String {
    let line = text.replace('\n', " ⏎ ");
    if line.chars().count() > 140 {
        let cut: String = line.chars().take(139).collect();
        format!("{cut}…")
    } else {
        line
    }
}

/// Prints up to `n` distinct ERROR lines of a controller's log (timestamps left out).
pub fn print_log_errors(log: &Path, n: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.contains("ERROR")) {
        let plain = strip_ansi(line);
        // What went wrong, without the timestamp and the ids that differ line to line.
        let what = plain
            .split_once("error=")
            .map_or(plain.as_str(), |(_, e)| e)
            .to_owned();
        if seen.len() < n && seen.insert(what.clone()) {
            say(what);
        }
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

// ----- small things -------------------------------------------------------------------------

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `--tollgate PATH [--rounds N]` from the command line: the binary (made absolute) and the
/// number of rounds (`default` when not given, at most `max`). `program` names the usage.
pub fn binary_and_rounds(program: &str, default: usize, max: usize) -> Result<(PathBuf, usize)> {
    let (mut tollgate, mut rounds) = (None, default);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tollgate" => tollgate = it.next().map(PathBuf::from),
            "--rounds" => {
                let n = it.next().context("--rounds N")?;
                rounds = n.parse().with_context(|| format!("--rounds {n}"))?;
            }
            other => {
                bail!("unknown argument {other}; usage: {program} --tollgate PATH [--rounds N]")
            }
        }
    }
    ensure!((1..=max).contains(&rounds), "--rounds must be 1..={max}");
    let tollgate = tollgate.ok_or_else(|| anyhow::anyhow!("--tollgate PATH is required"))?;
    ensure!(
        tollgate.is_file(),
        "no tollgate binary at {}",
        tollgate.display()
    );
    Ok((std::fs::canonicalize(tollgate)?, rounds))
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.r#gen::<u8>()))
        .collect()
}

pub fn short(sha: &str) -> &str {
    tollgate::domain::short_sha(sha)
}
