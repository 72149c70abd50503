//! The stage test runner against real processes, a real HTTP server on 127.0.0.1 and a fake
//! [`GithubTests`]. Every test is bounded by [`LIMIT`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use tollgate::config::{TestDef, TestKind};
use tollgate::domain::ReleaseId;
use tollgate::engine::ports::{PortError, TestContext, TestResult, TestRunner};
use tollgate::gates::GithubTests;
use tollgate::gates::runner::StageTestRunner;

/// The longest any test here may take.
const LIMIT: Duration = Duration::from_secs(30);

fn context(outputs: &[(&str, &str)]) -> TestContext {
    TestContext {
        key: "k1".into(),
        pipeline: "backend".into(),
        stage: "gamma".into(),
        release: ReleaseId(12),
        repository: "acme/backend".into(),
        branch: "main".into(),
        sha: "abc".into(),
        digest: "sha256:feed".into(),
        image_uri: "123.dkr.ecr/backend@sha256:feed".into(),
        account_id: "111122223333".into(),
        region: "eu-west-1".into(),
        outputs: outputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn def(kind: TestKind, timeout: Duration) -> TestDef {
    TestDef {
        name: "probe".into(),
        timeout,
        kind,
    }
}

fn command(argv: &[&str], workdir: &Path, timeout: Duration) -> TestDef {
    let kind = TestKind::Command {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::from([("MY_VAR".to_string(), "mine".to_string())]),
        workdir: workdir.to_path_buf(),
        stage_credentials: false,
    };
    def(kind, timeout)
}

async fn run_with(runner: &StageTestRunner, test: &TestDef, ctx: &TestContext) -> TestResult {
    tokio::time::timeout(LIMIT, runner.run(test, ctx))
        .await
        .expect("the runner finished within the limit")
        .expect("the runner returned a result")
}

async fn run(test: &TestDef, ctx: &TestContext) -> TestResult {
    run_with(&StageTestRunner::new(None), test, ctx).await
}

fn assert_bounded(result: &TestResult) {
    assert!(result.output_tail.len() <= 4 * 1024, "{result:?}");
    assert!(result.output_tail.lines().count() <= 20, "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// command
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn command_sees_the_stage_environment() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
        test "$COMMIT_SHA" = abc &&
        test "$STAGE_URL" = http://127.0.0.1:9/ &&
        test "$STACK_SERVICE_URL" = http://127.0.0.1:9/ &&
        test "$STACK_DB_HOST" = db.internal &&
        test "$TOLLGATE_PIPELINE" = backend &&
        test "$TOLLGATE_STAGE" = gamma &&
        test "$TOLLGATE_RELEASE" = r12 &&
        test "$IMAGE_DIGEST" = sha256:feed &&
        test "$IMAGE_URI" = 123.dkr.ecr/backend@sha256:feed &&
        test "$AWS_ACCOUNT_ID" = 111122223333 &&
        test "$AWS_REGION" = eu-west-1 &&
        test "$MY_VAR" = mine &&
        test "$(pwd -P)" = "$EXPECTED_DIR" &&
        ! read -r line &&
        echo all-good
    "#;
    let mut test = command(&["sh", "-c", script], dir.path(), Duration::from_secs(20));
    if let TestKind::Command { env, .. } = &mut test.kind {
        let real = dir.path().canonicalize().unwrap();
        env.insert("EXPECTED_DIR".into(), real.display().to_string());
    }
    let ctx = context(&[
        ("ServiceUrl", "http://127.0.0.1:9/"),
        ("DBHost", "db.internal"),
    ]);
    let result = run(&test, &ctx).await;
    assert!(result.passed, "{result:?}");
    assert!(result.summary.contains("`probe` passed"), "{result:?}");
    assert_eq!(result.output_tail, "all-good");
}

#[tokio::test]
async fn command_failing_reports_its_status_and_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let script = "for i in $(seq 1 50); do echo line $i; done; echo oops >&2; exit 3";
    let test = command(&["sh", "-c", script], dir.path(), Duration::from_secs(20));
    let result = run(&test, &context(&[])).await;
    assert!(!result.passed);
    assert!(result.summary.contains("`probe` failed"), "{result:?}");
    assert!(
        result.summary.contains("exited with status 3"),
        "{result:?}"
    );
    assert!(result.output_tail.ends_with("line 50\noops"), "{result:?}");
    assert!(!result.output_tail.contains("line 30\n"), "{result:?}");
    assert_bounded(&result);
}

#[tokio::test]
async fn command_output_is_drained_and_only_its_tail_kept() {
    let dir = tempfile::tempdir().unwrap();
    // 200 KiB on each pipe: far beyond a pipe's buffer, so this finishes only if both are read.
    let script = "yes out-line | head -c 204800; yes err-line | head -c 204800 >&2; echo END";
    let test = command(&["sh", "-c", script], dir.path(), Duration::from_secs(20));
    let result = run(&test, &context(&[])).await;
    assert!(result.passed, "{result:?}");
    assert!(result.output_tail.ends_with("END"), "{result:?}");
    assert!(result.output_tail.contains("err-line"), "{result:?}");
    assert_bounded(&result);
}

#[tokio::test]
async fn command_timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 100 & echo $! > bg.pid; echo started; sleep 100";
    let test = command(&["sh", "-c", script], dir.path(), Duration::from_secs(1));
    let started = Instant::now();
    let result = run(&test, &context(&[])).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!result.passed);
    assert!(result.summary.contains("timed out after 1s"), "{result:?}");
    assert_eq!(result.output_tail, "started");
    let pid = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
    assert!(gone(pid.trim()).await, "background sleep {pid} survived");
}

/// Whether `pid` is gone (`kill -0` fails) or dead and waiting to be reaped by its new parent,
/// checked for up to 2 s.
async fn gone(pid: &str) -> bool {
    for _ in 0..20 {
        let alive = std::process::Command::new("kill")
            .args(["-0", pid])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if !alive || zombie {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn command_that_cannot_start_names_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let test = command(
        &["tollgate-no-such-program", "x"],
        dir.path(),
        Duration::from_secs(5),
    );
    let result = run(&test, &context(&[])).await;
    assert!(!result.passed);
    assert!(
        result
            .summary
            .contains("cannot start `tollgate-no-such-program`"),
        "{result:?}"
    );

    let empty = command(&[], dir.path(), Duration::from_secs(5));
    let result = run(&empty, &context(&[])).await;
    assert!(!result.passed);
    assert!(result.summary.contains("empty argv"), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// http
// ---------------------------------------------------------------------------------------------

/// A stage on 127.0.0.1: `/health` answers with the commit, `/slow` takes 10 s.
async fn stage_server() -> String {
    let app = Router::new()
        .route("/health", get(|| async { "healthy at abc" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn suite(dir: &Path, path: &str) -> TestDef {
    let file = dir.join("suite.toml");
    let text = format!(
        "name = \"stage\"\n\n[defaults]\ntimeout = \"20s\"\n\n\
         [[check]]\nname = \"health\"\npath = \"{path}\"\nbody_contains = [\"${{COMMIT_SHA}}\"]\n"
    );
    std::fs::write(&file, text).unwrap();
    let kind = TestKind::Http {
        suite: file,
        base_url_output: "ServiceUrl".into(),
    };
    def(kind, Duration::from_secs(20))
}

#[tokio::test]
async fn http_suite_passes_against_the_stage_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = stage_server().await;
    let result = run(
        &suite(dir.path(), "/health"),
        &context(&[("ServiceUrl", &url)]),
    )
    .await;
    assert!(result.passed, "{result:?}");
    assert!(result.summary.contains("`probe` passed"), "{result:?}");
    assert!(result.summary.contains(&url), "{result:?}");
}

#[tokio::test]
async fn http_suite_failing_reports_the_failed_checks() {
    let dir = tempfile::tempdir().unwrap();
    let url = stage_server().await;
    let result = run(
        &suite(dir.path(), "/missing"),
        &context(&[("ServiceUrl", &url)]),
    )
    .await;
    assert!(!result.passed);
    assert!(
        result.summary.contains("1 of 1 checks failed"),
        "{result:?}"
    );
    assert!(result.output_tail.contains("FAILED"), "{result:?}");
    assert!(result.output_tail.contains("health"), "{result:?}");
    assert_bounded(&result);
}

#[tokio::test]
async fn http_suite_is_bounded_by_the_test_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let url = stage_server().await;
    let mut test = suite(dir.path(), "/slow");
    test.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let result = run(&test, &context(&[("ServiceUrl", &url)])).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!result.passed);
    assert!(
        result.summary.contains("timed out after 500ms"),
        "{result:?}"
    );
}

#[tokio::test]
async fn http_without_the_output_names_it_and_lists_the_present_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(&[("ApiUrl", "http://127.0.0.1:9"), ("Queue", "q")]);
    let result = run(&suite(dir.path(), "/health"), &ctx).await;
    assert!(!result.passed);
    assert!(
        result.summary.contains("no output `ServiceUrl`"),
        "{result:?}"
    );
    assert!(result.summary.contains("ApiUrl, Queue"), "{result:?}");
}

#[tokio::test]
async fn http_with_a_missing_suite_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut test = suite(dir.path(), "/health");
    test.kind = TestKind::Http {
        suite: dir.path().join("nope.toml"),
        base_url_output: "ServiceUrl".into(),
    };
    let result = run(&test, &context(&[("ServiceUrl", "http://127.0.0.1:9")])).await;
    assert!(!result.passed);
    assert!(result.summary.contains("nope.toml"), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------------------------

/// What the fake was asked: (kind, repo, sha or workflow, ref, names or inputs).
type Call = (String, String, String, String, BTreeMap<String, String>);

#[derive(Default)]
struct FakeGithub {
    calls: Mutex<Vec<Call>>,
}

#[async_trait]
impl GithubTests for FakeGithub {
    async fn checks_gate(
        &self,
        repo: &str,
        sha: &str,
        names: &[String],
        timeout: Duration,
    ) -> Result<TestResult, PortError> {
        let names = names.iter().map(|n| (n.clone(), String::new())).collect();
        let call = (
            "checks".into(),
            repo.into(),
            sha.into(),
            human(timeout),
            names,
        );
        self.calls.lock().unwrap().push(call);
        Ok(TestResult {
            passed: true,
            summary: "checks passed: build".into(),
            output_tail: "build: completed success".into(),
        })
    }

    async fn run_workflow(
        &self,
        repo: &str,
        workflow: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
        _timeout: Duration,
    ) -> Result<TestResult, PortError> {
        let call = (
            "workflow".into(),
            repo.into(),
            workflow.into(),
            git_ref.into(),
            inputs.clone(),
        );
        self.calls.lock().unwrap().push(call);
        Err(PortError::Retryable("GitHub answered 502".into()))
    }
}

fn human(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn workflow(git_ref: Option<&str>, inputs: &[(&str, &str)]) -> TestDef {
    let kind = TestKind::GithubWorkflow {
        workflow: "integration.yml".into(),
        git_ref: git_ref.map(str::to_string),
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    def(kind, Duration::from_secs(60))
}

#[tokio::test]
async fn github_checks_are_delegated_with_the_commit() {
    let fake = Arc::new(FakeGithub::default());
    let runner = StageTestRunner::new(Some(fake.clone()));
    let kind = TestKind::GithubChecks {
        checks: vec!["build".into()],
    };
    let result = run_with(&runner, &def(kind, Duration::from_secs(90)), &context(&[])).await;
    assert!(result.passed);
    assert_eq!(result.summary, "test `probe` passed: checks passed: build");
    let calls = fake.calls.lock().unwrap().clone();
    let names = BTreeMap::from([("build".to_string(), String::new())]);
    let want = (
        "checks".into(),
        "acme/backend".into(),
        "abc".into(),
        "90s".into(),
        names,
    );
    assert_eq!(calls, vec![want]);
}

#[tokio::test]
async fn github_workflow_gets_the_ref_and_substituted_inputs() {
    let fake = Arc::new(FakeGithub::default());
    let runner = StageTestRunner::new(Some(fake.clone()));
    let ctx = context(&[("ServiceUrl", "https://gamma.example.com")]);
    let inputs = [
        ("url", "${STAGE_URL}/api"),
        ("release", "${TOLLGATE_RELEASE}-${COMMIT_SHA}"),
        ("literal", "a$$b $c"),
    ];
    let on_branch = runner.run(&workflow(None, &inputs), &ctx).await;
    assert_eq!(
        on_branch,
        Err(PortError::Retryable("GitHub answered 502".into()))
    );
    let on_tag = runner.run(&workflow(Some("refs/tags/v1"), &[]), &ctx).await;
    assert!(on_tag.is_err());

    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let (_, repo, file, git_ref, sent) = &calls[0];
    assert_eq!(
        (repo.as_str(), file.as_str()),
        ("acme/backend", "integration.yml")
    );
    assert_eq!(git_ref, "main");
    let want = BTreeMap::from([
        (
            "url".to_string(),
            "https://gamma.example.com/api".to_string(),
        ),
        ("release".to_string(), "r12-abc".to_string()),
        ("literal".to_string(), "a$b $c".to_string()),
    ]);
    assert_eq!(sent, &want);
    assert_eq!(calls[1].3, "refs/tags/v1");
}

#[tokio::test]
async fn github_workflow_with_an_unknown_variable_is_not_dispatched() {
    let fake = Arc::new(FakeGithub::default());
    let runner = StageTestRunner::new(Some(fake.clone()));
    let test = workflow(None, &[("url", "${NOPE}")]);
    let result = run_with(&runner, &test, &context(&[])).await;
    assert!(!result.passed);
    assert!(result.summary.contains("input `url`"), "{result:?}");
    assert!(result.summary.contains("${NOPE}"), "{result:?}");
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn github_kinds_without_a_token_fail_clearly() {
    let checks = def(
        TestKind::GithubChecks {
            checks: vec!["build".into()],
        },
        Duration::from_secs(5),
    );
    for test in [checks, workflow(None, &[])] {
        let result = run(&test, &context(&[])).await;
        assert!(!result.passed);
        assert!(
            result.summary.contains("no GitHub token configured"),
            "{result:?}"
        );
        assert!(result.summary.contains(test.kind.label()), "{result:?}");
    }
}

// ----- stage credentials -------------------------------------------------------------------

fn with_stage_credentials(mut test: TestDef) -> TestDef {
    if let TestKind::Command {
        stage_credentials, ..
    } = &mut test.kind
    {
        *stage_credentials = true;
    }
    test
}

/// On moto: the command gets the session tollgate assumes in the stage's account (moto's
/// AssumeRole keys start `ASIA`), with a session token and the region — and the keys appear
/// nowhere in the result.
#[tokio::test]
async fn a_command_with_stage_credentials_gets_the_stage_accounts_session() {
    use tollgate_testkit::world::{BETA_ACCOUNT, REGION, World};
    let moto = tollgate_testkit::moto::MotoServer::shared();
    let world = World::builder().build(moto).await.unwrap();
    let config = tollgate::engine::shared_config(world.config().unwrap());
    let creds = Arc::new(tollgate::aws::sts::Credentials::new(
        moto.sdk_config(),
        Arc::new(tollgate::aws::retry::Limiter::default()),
    ));
    let runner = StageTestRunner::new(None).with_stage_credentials(creds, config);
    let dir = tempfile::tempdir().unwrap();
    let script = r#"case "$AWS_ACCESS_KEY_ID" in ASIA*) ;; *) echo "not a session key"; exit 1 ;; esac
test -n "$AWS_SECRET_ACCESS_KEY" && test -n "$AWS_SESSION_TOKEN" || exit 2
echo "session for $AWS_ACCOUNT_ID in $AWS_REGION/$AWS_DEFAULT_REGION"
printf %s "$AWS_SECRET_ACCESS_KEY" > secret.txt"#;
    let test = with_stage_credentials(command(&["sh", "-c", script], dir.path(), LIMIT));
    let mut ctx = context(&[]);
    ctx.account_id = BETA_ACCOUNT.into();
    ctx.region = REGION.into();
    let result = run_with(&runner, &test, &ctx).await;
    assert!(result.passed, "{result:?}");
    assert!(
        result
            .output_tail
            .contains(&format!("session for {BETA_ACCOUNT} in {REGION}/{REGION}")),
        "{result:?}"
    );
    let secret = std::fs::read_to_string(dir.path().join("secret.txt")).unwrap();
    assert!(secret.len() > 10);
    assert!(
        !format!("{result:?}").contains(&secret),
        "the key stays out of the result"
    );

    // Without the flag, nothing of AWS is passed on.
    let plain = command(
        &[
            "sh",
            "-c",
            "test -z \"$AWS_ACCESS_KEY_ID$AWS_SESSION_TOKEN\"",
        ],
        dir.path(),
        LIMIT,
    );
    assert!(run_with(&runner, &plain, &ctx).await.passed);
}

#[tokio::test]
async fn stage_credentials_without_aws_or_for_an_unknown_account_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let test = with_stage_credentials(command(&["true"], dir.path(), LIMIT));
    let result = run(&test, &context(&[])).await;
    assert!(!result.passed);
    assert!(
        result
            .summary
            .contains("`stage_credentials` needs the controller's AWS credentials"),
        "{result:?}"
    );

    let moto = tollgate_testkit::moto::MotoServer::shared();
    let world = tollgate_testkit::world::World::builder()
        .build(moto)
        .await
        .unwrap();
    let creds = Arc::new(tollgate::aws::sts::Credentials::new(
        moto.sdk_config(),
        Arc::new(tollgate::aws::retry::Limiter::default()),
    ));
    let runner = StageTestRunner::new(None).with_stage_credentials(
        creds,
        tollgate::engine::shared_config(world.config().unwrap()),
    );
    let mut ctx = context(&[]);
    ctx.account_id = "999999999999".into();
    let unknown = run_with(&runner, &test, &ctx).await;
    assert!(!unknown.passed);
    assert!(
        unknown
            .summary
            .contains("account 999999999999 is not configured"),
        "{unknown:?}"
    );
}
