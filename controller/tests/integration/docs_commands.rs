//! The shell commands `README.md` and `docs/getting-started.md` show, run as a reader would run
//! them, so the documents cannot drift from what the code does.
//!
//! Every fenced `sh` and `console` block is read; each command in it (continued lines joined,
//! `# comments` dropped, `target/release/tollgate` run as the `tollgate` this test was built
//! with) either runs here — in a copy of the repository's `stages.toml`, `accounts/` and the
//! files they name, with `tollgate serve` running there on a fresh state database and the
//! commands given its URL (`TOLLGATE_SERVER`) and an admin key made with `tollgate keys create`
//! (`TOLLGATE_API_KEY`), as the documents' `export` lines set them — and must succeed,
//! printing exactly the output the document shows where it shows one; or it is listed in
//! [`NOT_HERE`] with the reason it cannot run here. A command that is neither fails the test,
//! and so does a rule in [`NOT_HERE`] that no documented command uses any more.
//!
//! AWS is never called: `AWS_ENDPOINT_URL` is a closed loopback port.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The documents whose commands are run.
const DOCS: [&str; 2] = ["README.md", "docs/getting-started.md"];

/// Commands (by how they start, after `target/release/tollgate` became `tollgate`) that cannot
/// run here, and why.
const NOT_HERE: &[(&str, &str)] = &[
    (
        "scripts/demo",
        "runs for a minute; scripts/test runs it after the tests",
    ),
    ("scripts/test", "the test suite itself"),
    (
        "cargo build",
        "builds take minutes; the commands run the test's own build of the same binary",
    ),
    (
        "TOLLGATE_MOTO_SERVER=",
        "a benchmark: it measures for minutes rather than checks",
    ),
    (
        "tollgate serve",
        "long-running; examples_e2e.rs and approvals_serve.rs start it and use it",
    ),
    (
        "curl -s http://127.0.0.1:8080/",
        "needs the long-running serve above",
    ),
    ("aws ", "calls real AWS accounts"),
    ("openssl rand", "writes into /run/secrets"),
    (
        "export ",
        "sets the environment; this test starts its serve with its own and gives every command the serve's URL and a key",
    ),
    (
        "url=https://sns.",
        "fetches SNS's signing certificate from AWS",
    ),
    ("curl -fsS", "fetches SNS's signing certificate from AWS"),
    (
        "tollgate rollback",
        "needs a known-good release in the state",
    ),
    ("tollgate override", "needs release r14 in the state"),
    (
        "tollgate retry",
        "needs a failed or expired release r15 in the state",
    ),
    (
        "tollgate status --server https://tollgate.example.com",
        "shows a release in flight in an installed controller; `tollgate status` runs above",
    ),
];

/// One documented command and the output shown for it (console blocks only).
#[derive(Debug)]
struct Documented {
    at: String,
    command: String,
    output: Vec<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fenced blocks of `text` in `langs`: (line of the fence, language, body lines).
fn blocks<'t>(text: &'t str, langs: &[&str]) -> Vec<(usize, String, Vec<&'t str>)> {
    let mut found = Vec::new();
    let mut open: Option<(usize, String, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, open.take()) {
            (Some(_), Some(block)) => found.push(block),
            (Some(lang), None) => open = Some((i + 1, lang.trim().to_owned(), Vec::new())),
            (None, Some(mut block)) => {
                block.2.push(line);
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    found.retain(|(_, lang, _)| langs.contains(&lang.as_str()));
    found
}

/// `line` without a trailing `# comment` (one after whitespace, outside quotes).
fn without_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return line[..at].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
}

/// The commands of one block: `console` blocks prefix them with `$ ` and show output after.
fn commands(file: &str, fence: usize, lang: &str, lines: &[&str]) -> Vec<Documented> {
    let mut found: Vec<Documented> = Vec::new();
    let mut continued = false;
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim();
        let at = format!("{file}:{}", fence + 1 + i);
        if continued {
            let last = found.last_mut().unwrap();
            let part = without_comment(line);
            continued = part.ends_with('\\');
            last.command.push(' ');
            last.command.push_str(part.trim_end_matches('\\').trim());
            continue;
        }
        let command = match (lang, line.strip_prefix("$ ")) {
            ("console", Some(command)) => command,
            ("console", None) => {
                if let Some(last) = found.last_mut().filter(|_| !line.is_empty()) {
                    last.output.push(line.to_owned());
                }
                continue;
            }
            _ if line.is_empty() => continue,
            _ => line,
        };
        let command = without_comment(command);
        if command.is_empty() {
            // A line that is only a comment.
            continue;
        }
        continued = command.ends_with('\\');
        let command = command.trim_end_matches('\\').trim();
        found.push(Documented {
            at,
            command: command.replace("target/release/tollgate", "tollgate"),
            output: Vec::new(),
        });
    }
    found
}

fn documented() -> Vec<Documented> {
    let mut all = Vec::new();
    for file in DOCS {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for (fence, lang, lines) in blocks(&text, &["sh", "console"]) {
            all.extend(commands(file, fence, &lang, &lines));
        }
    }
    all
}

/// The repository's pipeline and what it names, copied into `dir`.
fn pipeline_copy(dir: &Path) {
    let copy = |from: &str| {
        let to = dir.join(from);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(from), &to).unwrap();
    };
    for file in [
        "stages.toml",
        "accounts/accounts.toml",
        "smoke-tests/backend-gamma.toml",
        "smoke-tests/backend-prod.toml",
        "docs/examples/backend-ecs/service.yaml",
    ] {
        copy(file);
    }
}

/// Runs `command` with `sh` in `dir`, `tollgate` on the path and `env` set: (success,
/// stdout, stderr).
fn run(dir: &Path, command: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tollgate = bin.join("tollgate");
    if !tollgate.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tollgate"), &tollgate).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir)
        .env("PATH", path)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_STATE")
        .env_remove("TOLLGATE_SERVER")
        .env_remove("TOLLGATE_API_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn every_documented_command_that_can_run_here_runs_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    pipeline_copy(dir.path());
    // The controller the commands talk to, as README.md starts it, and the key its `export`
    // line makes.
    let port = tollgate_testkit::serve::free_port().unwrap();
    let closed = [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        (
            "TOLLGATE_GITHUB_WEBHOOK_SECRET",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
    ];
    let serve = tollgate_testkit::serve::ServeProcess::start(&tollgate_testkit::serve::ServeSpec {
        binary: env!("CARGO_BIN_EXE_tollgate").into(),
        config: dir.path().join("stages.toml"),
        state: format!("sqlite://{}", dir.path().join("tollgate.db").display()),
        port,
        certs: None,
        env: closed.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec(),
        args: Vec::new(),
        log: dir.path().join("serve.log"),
        stdout: None,
    })
    .await
    .expect("tollgate serve starts on the repository's stages.toml");
    let made = "tollgate keys create --name docs-reader --role admin --state sqlite://tollgate.db";
    let (ok, key, err) = run(dir.path(), made, &[]);
    assert!(ok, "{made}: {err}");
    let key = key.trim().to_owned();
    let env = [
        ("TOLLGATE_SERVER", serve.url()),
        ("TOLLGATE_API_KEY", key.as_str()),
    ];
    let mut used = BTreeSet::new();
    let mut ran = 0;
    for doc in documented() {
        if let Some((prefix, why)) = NOT_HERE.iter().find(|(p, _)| doc.command.starts_with(p)) {
            println!("not run  {}: {}  ({why})", doc.at, doc.command);
            used.insert(*prefix);
            continue;
        }
        let (ok, stdout, stderr) = run(dir.path(), &doc.command, &env);
        println!("ran      {}: {}", doc.at, doc.command);
        assert!(
            ok,
            "{}: `{}` failed:\n{stdout}{stderr}",
            doc.at, doc.command
        );
        if !doc.output.is_empty() {
            let shown: Vec<&str> = stdout.lines().map(str::trim_end).collect();
            assert_eq!(shown, doc.output, "{}: output of `{}`", doc.at, doc.command);
        }
        ran += 1;
    }
    let unused: Vec<&str> = (NOT_HERE.iter().map(|(p, _)| *p))
        .filter(|p| !used.contains(p))
        .collect();
    assert!(
        unused.is_empty(),
        "rules no documented command uses: {unused:?}"
    );
    assert!(ran >= 5, "only {ran} documented commands ran");
}

#[test]
fn documented_commands_are_read_with_continuations_comments_and_output() {
    let text = "\
```console
$ tollgate validate stages.toml
stages.toml is valid
```
```sh
aws sns subscribe \\
  --topic-arn arn   # the topic
# only a comment
tollgate status     # each stage
echo '# not a comment'
```
";
    let mut found = Vec::new();
    for (fence, lang, lines) in blocks(text, &["sh", "console"]) {
        found.extend(commands("x.md", fence, &lang, &lines));
    }
    let read: Vec<(&str, Vec<String>)> = (found.iter())
        .map(|d| (d.command.as_str(), d.output.clone()))
        .collect();
    assert_eq!(
        read,
        [
            (
                "tollgate validate stages.toml",
                vec!["stages.toml is valid".to_string()]
            ),
            ("aws sns subscribe --topic-arn arn", vec![]),
            ("tollgate status", vec![]),
            ("echo '# not a comment'", vec![]),
        ]
    );
    assert_eq!(found[0].at, "x.md:2");
}
