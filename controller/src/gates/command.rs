//! The `command` test: one local process (and whatever it starts), bounded in time and output.
//!
//! # Guarantees
//! - The command runs in its own process group, with stdin closed, in the test's `workdir`.
//! - Its environment is a small pass-through of the controller's (`PATH`, `HOME`, locale,
//!   `TMPDIR`, …), then the stage's variables ([`super::test_variables`]), then the test's own
//!   `env`, which wins. Tokens and secrets in the controller's environment are not passed on.
//! - stdout and stderr go into one buffer that keeps the last [`KEEP_BYTES`]; both pipes are
//!   read while the command runs, so it never blocks on a full pipe.
//! - No process of the test outlives it: on timeout, on exit and when the run is dropped, the
//!   whole group is sent `SIGKILL`. Every wait after that is bounded by [`REAP_GRACE`].
//!
//! # Caveats
//! - A process that leaves the group (`setsid`) escapes the kill; its output stops being read
//!   after [`REAP_GRACE`].

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{failed, human, output_tail, passed};
use crate::engine::ports::TestResult;

/// Bytes of combined output kept while the command runs.
pub const KEEP_BYTES: usize = 64 * 1024;
/// How long to wait, after the group was killed, for the command to be reaped and its pipes
/// to close.
pub const REAP_GRACE: Duration = Duration::from_secs(5);
/// Variables of the controller's own environment a command inherits.
/// (`AWS_ENDPOINT_URL` too: a controller pointed at an emulator points its tests there.)
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "AWS_ENDPOINT_URL",
];

/// One command test, ready to run.
#[derive(Debug, Clone, Copy)]
pub struct CommandTest<'a> {
    /// The test's name, for the summary.
    pub name: &'a str,
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub workdir: &'a Path,
    pub timeout: Duration,
}

/// Runs the command with the stage's `vars` in its environment and reports the outcome.
pub async fn run(test: CommandTest<'_>, vars: &BTreeMap<String, String>) -> TestResult {
    let Some((program, args)) = test.argv.split_first() else {
        return failed(
            format!("test `{}` has an empty argv", test.name),
            String::new(),
        );
    };
    let started = Instant::now();
    let mut cmd = command(program, args, &test, vars);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => return failed(cannot_start(&test, program, &err), String::new()),
    };
    let mut group = Group::of(&child);
    let tail = Arc::new(Mutex::new(Tail::default()));
    let pumps = [
        child.stdout.take().map(|out| pump(out, Arc::clone(&tail))),
        child.stderr.take().map(|err| pump(err, Arc::clone(&tail))),
    ];
    let ended = tokio::time::timeout(test.timeout, child.wait()).await;
    group.kill();
    let ended = match ended {
        Ok(status) => Ended::Exited(status),
        Err(_) => {
            reap(&mut child).await;
            Ended::TimedOut
        }
    };
    finish_pumps(pumps).await;
    let text = tail.lock().map(|t| t.text()).unwrap_or_default();
    verdict(&test, program, ended, started.elapsed(), &text)
}

fn command(
    program: &str,
    args: &[String],
    test: &CommandTest<'_>,
    vars: &BTreeMap<String, String>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(test.workdir)
        .env_clear()
        .envs(inherited())
        .envs(vars)
        .envs(test.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

fn inherited() -> Vec<(String, String)> {
    PASS_THROUGH
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

fn cannot_start(test: &CommandTest<'_>, program: &str, err: &std::io::Error) -> String {
    format!(
        "test `{}` failed: cannot start `{program}` in {}: {err}",
        test.name,
        test.workdir.display()
    )
}

/// How the command ended.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    /// Killed at the timeout.
    TimedOut,
}

/// Reaps a command whose group was just killed, waiting at most [`REAP_GRACE`].
async fn reap(child: &mut Child) {
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
}

fn verdict(
    test: &CommandTest<'_>,
    program: &str,
    ended: Ended,
    took: Duration,
    text: &str,
) -> TestResult {
    let name = test.name;
    let tail = output_tail(text);
    let status = match ended {
        Ended::TimedOut => {
            let summary = format!(
                "test `{name}` failed: timed out after {}",
                human(test.timeout)
            );
            return failed(summary, tail);
        }
        Ended::Exited(Err(err)) => {
            return failed(
                format!("test `{name}` failed: waiting for `{program}`: {err}"),
                tail,
            );
        }
        Ended::Exited(Ok(status)) => status,
    };
    if status.success() {
        let summary = format!(
            "test `{name}` passed: `{program}` exited with status 0 in {}",
            human(took)
        );
        return passed(summary, tail);
    }
    failed(
        format!("test `{name}` failed: `{program}` {}", describe(status)),
        tail,
    )
}

/// `exited with status 3`, `was killed by signal 9 (SIGKILL)`.
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = Signal::try_from(sig).map_or("unknown", Signal::as_str);
            format!("was killed by signal {sig} ({name})")
        }
        None => format!("ended with {status}"),
    }
}

/// The command's process group; killed (once) by [`Group::kill`] or when dropped.
struct Group(Option<Pid>);

impl Group {
    fn of(child: &Child) -> Self {
        let pid = child.id().and_then(|id| i32::try_from(id).ok());
        Group(pid.map(Pid::from_raw))
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH only means every process of the group is already gone.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last [`KEEP_BYTES`] of the command's combined output.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        // Trim only when twice the size, so trimming costs O(1) per byte overall.
        if self.bytes.len() > 2 * KEEP_BYTES {
            let cut = self.bytes.len() - KEEP_BYTES;
            self.bytes.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(KEEP_BYTES);
        String::from_utf8_lossy(&self.bytes[start..]).into_owned()
    }
}

/// Copies one pipe into `tail` until it closes (every writer gone) or fails.
fn pump<R>(mut pipe: R, tail: Arc<Mutex<Tail>>) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 8 * 1024];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            if let Ok(mut tail) = tail.lock() {
                tail.push(&chunk[..n]);
            }
        }
    })
}

/// Waits for both pumps, at most [`REAP_GRACE`] in all; a pump still running after that (a
/// process that escaped the group holds its pipe) is stopped.
async fn finish_pumps(pumps: [Option<JoinHandle<()>>; 2]) {
    let deadline = tokio::time::Instant::now() + REAP_GRACE;
    for mut pump in pumps.into_iter().flatten() {
        if tokio::time::timeout_at(deadline, &mut pump).await.is_err() {
            pump.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_and_stays_bounded() {
        let mut tail = Tail::default();
        for i in 0..20_000u32 {
            tail.push(format!("{i:07}\n").as_bytes());
            assert!(tail.bytes.len() <= 2 * KEEP_BYTES + 8);
        }
        let text = tail.text();
        assert_eq!(text.len(), KEEP_BYTES);
        assert!(text.starts_with(&format!("{:07}\n", 20_000 - KEEP_BYTES / 8)));
        assert!(text.ends_with("0019999\n"));
    }

    #[test]
    fn describes_exit_codes_and_signals() {
        assert_eq!(
            describe(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
    }
}
