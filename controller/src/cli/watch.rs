//! `tollgate status --watch`: the status table kept up to date, from a controller's API.
//!
//! Every [`TICK`] it reads the state again. On a terminal it clears the screen and redraws
//! ([`frame`]): each stage's wait reason with a live countdown to the wait's deadline (the
//! typed reason's [`crate::domain::Reason::deadline`], counted from the local clock). When
//! stdout is not a terminal it prints a plain block ([`block`]) only when something changed
//! (the typed state, not the countdown's text), and never an escape code. Ctrl-C ends it
//! with exit code 0.
//!
//! A server that does not answer, or answers 5xx, is reported and asked again at the next
//! tick (a controller restarting does not end the watch); a refusal (4xx: a revoked key, say)
//! ends it with exit code 1. Stdout closed (`| head`) ends it with 0.
//!
//! Must never: write anything but to stdout and stderr.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cli::remote::Failure;
use crate::cli::status::{Snapshot, Source, StageStatus, table};

/// How often the state is read and the screen redrawn.
pub const TICK: Duration = Duration::from_secs(1);

/// Moves the cursor home and clears the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Watches `source` until Ctrl-C; `tty` says whether `out` is a terminal.
pub async fn run(source: &Source, tty: bool, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latest: Option<Snapshot> = None;
    let mut shown: Option<Snapshot> = None;
    let mut trouble: Option<String> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut interrupted => return 0,
            _ = ticks.tick() => {}
        }
        let now = Utc::now();
        let problem = match source.snapshot(now).await {
            Ok(s) => {
                latest = Some(s);
                None
            }
            Err(f @ Failure::Refused(_)) => return f.report(err),
            Err(Failure::CannotRun(m)) => Some(m),
        };
        let written = if tty {
            frame(latest.as_ref(), problem.as_deref(), now, out)
        } else {
            if problem.is_some() && problem != trouble {
                let _ = writeln!(
                    err,
                    "{} (trying again)",
                    problem.as_deref().unwrap_or_default()
                );
            }
            match latest.as_ref().filter(|s| changed(shown.as_ref(), s)) {
                Some(s) => {
                    let w = block(s, now, out);
                    shown = latest.clone();
                    w
                }
                None => Ok(()),
            }
        };
        trouble = problem;
        if let Err(e) = written.and_then(|()| out.flush()) {
            return stopped_writing(&e, err);
        }
    }
}

/// Stdout closed (`| head`): done (0). Another write failure: could not run (2).
fn stopped_writing(e: &std::io::Error, err: &mut dyn Write) -> i32 {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return 0;
    }
    let _ = writeln!(err, "error: cannot write the status: {e}");
    2
}

/// Whether `next` differs from what was `shown` in what it says (the typed state), not in
/// the time left.
pub fn changed(shown: Option<&Snapshot>, next: &Snapshot) -> bool {
    let typed = |rows: &[StageStatus]| -> Vec<StageStatus> {
        rows.iter()
            .cloned()
            .map(|mut r| {
                r.reason = None;
                r
            })
            .collect()
    };
    shown.is_none_or(|s| s.source != next.source || typed(&s.rows) != typed(&next.rows))
}

/// One screen for a terminal: clear, a title with the time, the source, the table with
/// countdowns, and what went wrong at the last read (the table then is the last one read).
pub fn frame(
    snapshot: Option<&Snapshot>,
    problem: Option<&str>,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    write!(out, "{CLEAR}")?;
    writeln!(
        out,
        "tollgate status --watch  {}  (Ctrl-C to stop)\n",
        now.format("%Y-%m-%d %H:%M:%S UTC")
    )?;
    if let Some(s) = snapshot {
        writeln!(out, "{}\n", s.source)?;
        table(&s.rows, Some(now), out)?;
    }
    if let Some(p) = problem {
        writeln!(out, "\n{p} (trying again)")?;
    }
    Ok(())
}

/// One plain block for a pipe or a file: a line with the time, the source, the table with
/// the time left as of `now`, and an empty line.
pub fn block(s: &Snapshot, now: DateTime<Utc>, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "--- {} ---", now.format("%Y-%m-%d %H:%M:%S UTC"))?;
    writeln!(out, "{}\n", s.source)?;
    table(&s.rows, Some(now), out)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Reason, RequestState};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn snapshot(paused: Option<&str>) -> Snapshot {
        let describe_at = at("2026-01-02T09:00:00Z");
        let wait = Reason::AwaitingApproval {
            approved: 0,
            needed: 1,
            expires_at: at("2026-01-02T10:00:00Z"),
            request: RequestState::Sending,
        };
        Snapshot {
            source: "configuration file stages.toml".into(),
            rows: vec![StageStatus {
                pipeline: "backend".into(),
                stage: "prod".into(),
                known_good: Some("r1 (aaaaaaaaaaaa)".into()),
                in_flight: Some("r2 (bbbbbbbbbbbb)".into()),
                status: Some("awaiting_approval".into()),
                reason: Some(wait.describe(describe_at)),
                wait: Some(wait),
                paused: paused.map(|p| format!("pipeline: {p}")),
            }],
        }
    }

    #[test]
    fn a_terminal_frame_clears_and_counts_down_from_the_clock() {
        let s = snapshot(None);
        let mut out = Vec::new();
        frame(Some(&s), None, at("2026-01-02T09:58:55Z"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(CLEAR), "{text:?}");
        assert!(text.contains("2026-01-02 09:58:55 UTC"), "{text}");
        assert!(text.contains("(1m 05s left)"), "{text}");
        let mut out = Vec::new();
        let trouble = "error: cannot reach http://x: refused";
        frame(
            Some(&s),
            Some(trouble),
            at("2026-01-02T09:59:58Z"),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("(2s left)") && text.contains(trouble),
            "{text}"
        );
    }

    #[test]
    fn a_plain_block_has_no_escape_code_and_only_a_change_of_state_is_a_change() {
        let s = snapshot(None);
        let mut out = Vec::new();
        block(&s, at("2026-01-02T09:00:00Z"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(
            text.starts_with("--- 2026-01-02 09:00:00 UTC ---\n"),
            "{text}"
        );
        assert!(text.contains("(1h 00m 00s left)"), "{text}");
        assert!(changed(None, &s));
        let mut later = s.clone();
        later.rows[0].reason = Some("awaiting approval: 0 of 1, expires in 1m".into());
        assert!(!changed(Some(&s), &later), "the time left is not a change");
        assert!(changed(Some(&s), &snapshot(Some("freeze"))));
    }
}
