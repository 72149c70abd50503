//! A `tollgate serve` child process on loopback, for end-to-end tests: started with a
//! configuration, a state database and an environment, ready once `/readyz` answers, killed
//! when dropped.
//!
//! Owns the process and its log file (stdout and stderr together). The caller picks the port
//! ([`free_port`]) so that the configuration's `public_url` (the approval links) can name it
//! before the process starts.
//!
//! Must never: inherit the GitHub secrets of the environment it runs in (the caller passes
//! every `TOLLGATE_*` it means), or listen on anything but 127.0.0.1.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// How long the process may take to answer `/readyz`.
pub const READY_LIMIT: Duration = Duration::from_secs(60);

/// What to start: `tollgate serve --config <config> --state <state> --listen 127.0.0.1:<port>`
/// (and `--sns-cert-cache <certs>` when given, then `args`), with `env` added to the
/// environment.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// The `tollgate` binary (`env!("CARGO_BIN_EXE_tollgate")` in the controller's tests).
    pub binary: PathBuf,
    pub config: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub state: String,
    pub port: u16,
    /// The pre-seeded SNS certificate cache.
    pub certs: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// More arguments for `serve`.
    pub args: Vec<String>,
    /// Where stderr (the log) goes, and stdout unless `stdout` is given.
    pub log: PathBuf,
    /// Where stdout goes, kept apart from the log.
    pub stdout: Option<PathBuf>,
}

/// A running `tollgate serve`; killed on drop.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl ServeProcess {
    /// Starts the process and waits until `/readyz` answers 2xx (or fails with its log).
    pub async fn start(spec: &ServeSpec) -> Result<ServeProcess> {
        let file = std::fs::File::create(&spec.log)
            .with_context(|| format!("creating {}", spec.log.display()))?;
        let mut command = Command::new(&spec.binary);
        command
            .args(["serve", "--config"])
            .arg(&spec.config)
            .args(["--state", &spec.state])
            .args(["--listen", &format!("127.0.0.1:{}", spec.port)]);
        if let Some(certs) = &spec.certs {
            command.arg("--sns-cert-cache").arg(certs);
        }
        command.args(&spec.args);
        let out = match &spec.stdout {
            Some(path) => std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?,
            None => file.try_clone()?,
        };
        for name in [
            "TOLLGATE_GITHUB_WEBHOOK_SECRET_FILE",
            "TOLLGATE_GITHUB_TOKEN",
            "TOLLGATE_GITHUB_TOKEN_FILE",
        ] {
            command.env_remove(name);
        }
        let child = command
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        let mut serve = ServeProcess {
            child,
            url: format!("http://127.0.0.1:{}", spec.port),
            log: spec.log.clone(),
        };
        serve.wait_ready().await?;
        Ok(serve)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL: no shutdown, as a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fails with the log if the process exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("tollgate serve exited ({status}):\n{}", self.log());
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            self.check_alive()?;
            let ready = http.get(format!("{}/readyz", self.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "tollgate serve was not ready within {READY_LIMIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The log's last `n` lines, for a failure message.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
