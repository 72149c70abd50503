//! The command line against a running controller, and the API's own metrics, through the real
//! `tollgate serve` binary (as `api_serve` launches it) and the real `tollgate` commands.
//!
//! - `status`, `status --json`, `history`, `history --json` print exactly what the state
//!   database holds (rendered in-process from it by the library's own views); `pause`,
//!   `resume`, `rollback`, `retry` and `override` act through the API with the key's name in
//!   the event log, and exit 1 on a refusal with the problem's title and detail, 2 with no
//!   key, no server or an unreachable one. None of them opens the state database: given
//!   `--state`, or no server, they refuse to run (2) and nothing changes. The key never appears
//!   in any output.
//! - `status --watch` with stdout not a terminal: a plain block at start,
//!   one more only when the state changed, no escape code, exit 0 on Ctrl-C (SIGINT); and on
//!   a pseudo-terminal (`script`): redrawn in place every second, the approval's countdown
//!   moving, exit 0 on Ctrl-C typed into the terminal.
//! - Refused calls (401, 403, 429) to mutating routes are counted in
//!   `tollgate_api_refused_total{route,status}`, read with the Prometheus project's parser from
//!   `GET /metrics` on the API port, which needs a valid key (401 without).
//!
//! AWS is never reached (a closed loopback port); every wait is bounded.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::store::Store;

use crate::api_serve::{ROOMY, call, key, outcome, remote, stages, two_releases_at_prod_approval};
use crate::edge_serve::Served;
use crate::observability_serve::Samples;

/// The longest any one wait here may take.
const BOUND: Duration = Duration::from_secs(30);

/// What the state database says for `args` (`status [--json]`, `history P [--limit N]
/// [--json]`), rendered in-process by the library from the store, as the API builds its views.
async fn from_store(served: &Served, args: &[&str]) -> String {
    let store = Store::open(&served.state()).await.unwrap();
    let mut out = Vec::new();
    match args {
        ["status", rest @ ..] => {
            let path = served.dir.path().join("stages.toml");
            let config = tollgate::config::load(&path).unwrap().config;
            let now = chrono::Utc::now();
            let rows = tollgate::cli::status::collect(store.reads(), &config, now)
                .await
                .unwrap();
            tollgate::cli::status::render(&rows, rest == ["--json"], &mut out).unwrap();
        }
        ["history", pipeline, rest @ ..] => {
            let limit = match rest {
                ["--limit", n] => n.parse().unwrap(),
                _ => 200,
            };
            let json = rest == ["--json"];
            tollgate::cli::status::history(store.reads(), pipeline, limit, json, &mut out)
                .await
                .unwrap();
        }
        _ => panic!("no rendering of {args:?}"),
    }
    String::from_utf8(out).unwrap()
}

/// Runs `args` through the API (as `key`) until it prints what the store holds (a reason's
/// "expires in" may cross a minute between the two; three tries), and returns what it
/// printed. `status`'s table comes after the line saying where the configuration comes from.
async fn as_the_store_says(served: &Served, key: &str, args: &[&str]) -> String {
    let mut last = None;
    for _ in 0..3 {
        let (code, shown, err) = remote(served, Some(key), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let expected = from_store(served, args).await;
        let body = match shown.split_once("\n\n") {
            Some((source, table)) if args == ["status"] => {
                assert!(source.starts_with("configuration file "), "{shown}");
                table
            }
            _ => shown.as_str(),
        };
        if body == expected {
            return shown;
        }
        last = Some((expected, shown));
    }
    let (expected, shown) = last.unwrap();
    panic!("{args:?} differs:\n--- the store\n{expected}\n--- the API\n{shown}");
}

/// `tollgate ARGS` as an operator on the controller's host would try it without the API:
/// with the state database named and no server.
fn on_the_database(served: &Served, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args)
        .args(["--state", &served.state()])
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_API_KEY");
    outcome(cmd)
}

#[tokio::test]
async fn api_remote_every_command_prints_what_the_state_holds_and_exits_as_documented() {
    let dir = two_releases_at_prod_approval().await;
    let served = Served::launch(dir, &stages(ROOMY));
    let view = key(&served, "dash", "viewer", &[]);
    let ops = key(&served, "ops", "operator", &[]);
    let boss = key(&served, "boss", "admin", &[]);
    let mut said = String::new();

    // Reads: the same table, the same JSON.
    let table = as_the_store_says(&served, &view, &["status"]).await;
    assert!(
        table.starts_with("configuration file ") && table.contains("awaiting_approval"),
        "{table}"
    );
    let json = as_the_store_says(&served, &view, &["status", "--json"]).await;
    let rows: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{json}");
    assert_eq!(rows[2]["wait"]["kind"], "awaiting_approval");
    let log = as_the_store_says(&served, &view, &["history", "backend", "--limit", "5"]).await;
    assert_eq!(log.lines().count(), 5, "{log}");
    let log_json = as_the_store_says(&served, &view, &["history", "backend", "--json"]).await;
    let events: Value = serde_json::from_str(&log_json).unwrap();
    assert!(events.as_array().unwrap().len() > 5);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["pipeline"] == "backend")
    );
    said += &table;
    said += &log_json;

    // Acts, with the key's name as the actor.
    let (code, out, err) = remote(
        &served,
        Some(&ops),
        &["pause", "backend", "--stage", "gamma", "--reason", "audit"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "stage backend/gamma paused: nothing new starts there until `tollgate resume`"
    );
    let paused = served
        .count("SELECT COUNT(*) FROM events WHERE actor = 'api-key:ops' AND detail = 'stage gamma paused: audit'")
        .await;
    assert_eq!(paused, 1);
    let table = as_the_store_says(&served, &view, &["status"]).await;
    assert!(table.contains("paused (stage: audit)"), "{table}");
    let (code, _, err) = remote(
        &served,
        Some(&ops),
        &["resume", "backend", "--stage", "gamma"],
    );
    assert_eq!(code, 2, "a resume needs a reason: {err}");
    assert!(err.contains("--reason <REASON>"), "{err}");
    let args = [
        "resume",
        "backend",
        "--stage",
        "gamma",
        "--reason",
        "audit done",
    ];
    let (code, out, err) = remote(&served, Some(&ops), &args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "stage backend/gamma resumed (reason: audit done)"
    );
    said += &out;

    // A refusal by the state, with the problem's title and detail.
    let (code, out, err) = remote(&served, Some(&ops), &["retry", "backend", "r1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.trim(),
        "error: Refused by the pipeline's state: r1 was superseded in prod: that is not retried; push a new commit"
    );

    // Roles: an operator may not override; an admin may.
    let args = ["override", "backend", "r2", "--alarms", "--reason", "fix"];
    let (code, _, err) = remote(&served, Some(&ops), &args);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: Not allowed for this key: a operator key may not override"),
        "{err}"
    );
    let (code, out, err) = remote(&served, Some(&boss), &args);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("r2 of backend ") && out.contains("(logged: fix)"),
        "{out}"
    );
    let lifted = served
        .count("SELECT COUNT(*) FROM releases WHERE id = 2 AND alarm_override IS NOT NULL")
        .await;
    assert_eq!(lifted, 1);
    said += &out;

    // Rollback is requested, as the key.
    let (code, out, err) = remote(&served, Some(&ops), &["rollback", "backend", "beta"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("rollback of backend/beta requested"),
        "{out}"
    );
    said += &out;

    // Unknown names are refused (1); no key or no server cannot run (2).
    let (code, _, err) = remote(&served, Some(&ops), &["pause", "nope", "--reason", "x"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: Not found: there is no pipeline `nope`");
    let (code, _, err) = remote(&served, Some(&ops), &["rollback", "backend", "qa"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: Not found: pipeline `backend` has no stage `qa` (stages: beta, gamma, prod)"
    );
    // An override the state refuses changes nothing.
    for (args, says) in [
        (
            ["override", "backend", "r7", "--window", "--reason", "x"],
            "has no release r7",
        ),
        (
            ["override", "backend", "seven", "--window", "--reason", "x"],
            "is not a release",
        ),
        (
            ["override", "backend", "r2", "--window", "--reason", " "],
            "reason",
        ),
    ] {
        let (code, out, err) = remote(&served, Some(&boss), &args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.starts_with("error: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let windows = served
        .count("SELECT COUNT(*) FROM releases WHERE window_override IS NOT NULL")
        .await;
    assert_eq!(windows, 0, "refused overrides change nothing");
    let (code, _, err) = remote(&served, None, &["status"]);
    assert_eq!(code, 2);
    assert!(err.contains("TOLLGATE_API_KEY"), "{err}");
    let (code, _, err) = remote(&served, Some("tg_not-a-key"), &["history", "backend"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: Authentication required: the API key is not known"
    );
    let closed = tollgate_testkit::serve::free_port().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["rollback", "backend", "beta", "--server"])
        .arg(format!("http://127.0.0.1:{closed}"))
        .env("TOLLGATE_API_KEY", &ops)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot reach http://127.0.0.1:"),
        "{err}"
    );
    said += &err;

    // The state database is no way around the API: without a server nothing runs (2), with
    // or without the database named, and nothing changes.
    let before = served.count("SELECT COUNT(*) FROM events").await;
    for args in [
        vec!["status"],
        vec!["history", "backend"],
        vec!["pause", "backend", "--reason", "on the host"],
        vec!["resume", "backend", "--reason", "on the host"],
        vec!["rollback", "backend", "prod"],
        vec!["retry", "backend", "r2"],
        vec![
            "override",
            "backend",
            "r2",
            "--window",
            "--reason",
            "on the host",
        ],
    ] {
        let (code, _, err) = on_the_database(&served, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("--state"), "{args:?}: {err}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(&args)
            .env_remove("TOLLGATE_SERVER")
            .env("TOLLGATE_API_KEY", &boss);
        let (code, _, err) = outcome(cmd);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("--server <SERVER>"), "{args:?}: {err}");
    }
    assert_eq!(served.count("SELECT COUNT(*) FROM events").await, before);

    for k in [&view, &ops, &boss] {
        assert!(!said.contains(k.as_str()), "a key was printed");
    }
}

/// A `tollgate status --watch` child whose stdout lines arrive on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watcher {
    /// `tollgate status --watch ARGS` with `env` added.
    fn start(args: &[String], env: &[(&str, &str)]) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["status", "--watch"])
            .args(args)
            .env_remove("TOLLGATE_SERVER")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until `done` holds for what was seen (bounded).
    fn until(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + BOUND;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("{what}: not seen in\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Takes whatever arrived without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    fn blocks(&self) -> usize {
        self.seen.iter().filter(|l| l.starts_with("--- ")).count()
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit code.
    fn interrupt(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + BOUND;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "still running after SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(100));
        self.drain();
        (status.code(), self.seen.join("\n"))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn every_stage(seen: &[String], text: &str) -> bool {
    seen.iter().filter(|l| l.contains(text)).count() >= 3
}

#[tokio::test]
async fn api_remote_status_watch_prints_a_plain_block_per_change_and_stops_on_ctrl_c() {
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(ROOMY));
    let view = key(&served, "dash", "viewer", &[]);
    let ops = key(&served, "ops", "operator", &[]);
    let server = served.url("");
    let remote_env = [
        ("TOLLGATE_SERVER", server.as_str()),
        ("TOLLGATE_API_KEY", view.as_str()),
    ];
    let mut watchers = [Watcher::start(&[], &remote_env)];
    for w in &mut watchers {
        w.until("the first block", |seen| every_stage(seen, "idle"));
    }
    let (code, _, err) = remote(
        &served,
        Some(&ops),
        &["pause", "backend", "--reason", "watch me"],
    );
    assert_eq!(code, 0, "{err}");
    for w in &mut watchers {
        w.until("the paused block", |seen| {
            every_stage(seen, "paused (pipeline: watch me)")
        });
        assert_eq!(w.blocks(), 2, "{}", w.seen.join("\n"));
    }
    // Several ticks with nothing changed print nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for w in watchers {
        let (code, all) = w.interrupt();
        assert_eq!(code, Some(0), "Ctrl-C ends the watch with 0:\n{all}");
        assert_eq!(
            all.matches("--- ").count(),
            2,
            "one block per change:\n{all}"
        );
        assert!(!all.contains('\x1b'), "no escape code on a pipe: {all:?}");
        assert!(!all.contains(&view));
    }
}

#[tokio::test]
async fn api_remote_refused_calls_are_counted_and_metrics_on_the_api_port_need_a_key() {
    let limits = "per_key_burst = 3\nper_key_per_minute = 1\nper_address_burst = 1000\nper_address_per_minute = 100000";
    let served = Served::launch(tempfile::tempdir().unwrap(), &stages(limits));
    let scraper = key(&served, "prometheus", "viewer", &[]);
    let viewer = key(&served, "dash", "viewer", &[]);
    let ops = key(&served, "ops", "operator", &[]);
    let rollback = "/api/v1/pipelines/backend/stages/beta/rollback";
    let pause = "/api/v1/pipelines/backend/pause";
    let override_path = "/api/v1/pipelines/backend/releases/r1/override";
    let freeze = json!({"reason": "freeze"});
    for _ in 0..2 {
        let c = call(&served, "POST", rollback, None, None, None).await;
        c.is_problem(401, "unauthorized");
    }
    let c = call(&served, "GET", "/api/v1/pipelines", None, None, None).await;
    c.is_problem(401, "unauthorized");
    for _ in 0..3 {
        let c = call(
            &served,
            "POST",
            pause,
            Some(&viewer),
            Some(freeze.clone()),
            None,
        )
        .await;
        c.is_problem(403, "forbidden");
    }
    let c = call(
        &served,
        "POST",
        pause,
        Some(&viewer),
        Some(freeze.clone()),
        None,
    )
    .await;
    c.is_problem(429, "rate-limited");
    let lift = json!({"which": "alarms", "reason": "x"});
    let c = call(&served, "POST", override_path, Some(&ops), Some(lift), None).await;
    c.is_problem(403, "forbidden");

    // /metrics on the API port: a key is needed.
    let c = call(&served, "GET", "/metrics", None, None, None).await;
    c.is_problem(401, "unauthorized");
    let c = call(&served, "GET", "/metrics", Some("tg_unknown"), None, None).await;
    c.is_problem(401, "unauthorized");
    let r = reqwest::Client::new()
        .get(served.url("/metrics"))
        .bearer_auth(&scraper)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let m = Samples::parse(&r.text().await.unwrap());
    let refused = |route: &str, status: &str| {
        m.get(
            "tollgate_api_refused_total",
            &[("route", route), ("status", status)],
        )
    };
    let template = "/api/v1/pipelines/{pipeline}";
    assert_eq!(
        refused(&format!("{template}/stages/{{stage}}/rollback"), "401"),
        2.0
    );
    assert_eq!(refused(&format!("{template}/pause"), "403"), 3.0);
    assert_eq!(refused(&format!("{template}/pause"), "429"), 1.0);
    assert_eq!(
        refused(&format!("{template}/releases/{{release}}/override"), "403"),
        1.0
    );
    assert_eq!(
        m.get("tollgate_api_refused_total", &[]),
        7.0,
        "reads are not counted"
    );
}

/// `tollgate status --watch` on a terminal: run under `script` (util-linux), which gives it a
/// pseudo-terminal; Ctrl-C is the byte 0x03 typed into that terminal.
#[tokio::test]
async fn api_remote_status_watch_on_a_terminal_redraws_in_place_with_a_live_countdown() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let dir = two_releases_at_prod_approval().await;
    let served = Served::launch(dir, &stages(ROOMY));
    let view = key(&served, "dash", "viewer", &[]);
    // `script` runs the command through $SHELL; `exec` makes the watch itself the terminal's
    // foreground process, so Ctrl-C reaches it and its exit code is the one seen (a shell
    // left waiting in between would be interrupted too and exit 130).
    let watch = format!("exec '{}' status --watch", env!("CARGO_BIN_EXE_tollgate"));
    let mut child = Command::new("script")
        .args(["-qfec", &watch, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("TOLLGATE_SERVER", served.url(""))
        .env("TOLLGATE_API_KEY", &view)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) runs");
    let screen = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let into = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    const CLEAR: &str = "\x1b[H\x1b[2J";
    let deadline = Instant::now() + BOUND;
    // Four frames: three whole ones, each between two clears.
    while screen.lock().unwrap().matches(CLEAR).count() < 4 {
        assert!(Instant::now() < deadline, "{:?}", screen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch with 0");
    let screen = screen.lock().unwrap().clone();
    assert!(screen.starts_with(CLEAR), "{screen:?}");
    let frames: Vec<&str> = screen.split(CLEAR).skip(1).take(3).collect();
    let countdowns: BTreeSet<&str> = frames
        .iter()
        .map(|f| {
            let prod = f
                .lines()
                .find(|l| l.starts_with("backend      prod"))
                .unwrap();
            assert!(
                prod.contains("awaiting approval: 0 of 1, expires in "),
                "{prod}"
            );
            let at = prod.rfind('(').unwrap();
            assert!(prod.ends_with("left)"), "{prod}");
            &prod[at..]
        })
        .collect();
    assert!(countdowns.len() >= 2, "the countdown moves: {countdowns:?}");
    assert!(!screen.contains(&view));
}
