//! Who may approve, through the real `tollgate serve` process: a signed `push` webhook starts a
//! release on a three-account moto world, the GitHub API is the stateful fake (pull requests
//! included), the approval email is read from what moto's approval topic received, and the
//! approver answers on the real approval pages over HTTP.
//!
//! - A merge commit whose pull request alice opened: alice may not approve it, and the page
//!   says she opened its pull request.
//! - A push by alice of carol's commit: alice may not approve it ("you pushed this change").
//! - Prod approved, then its post-deploy test fails; `tollgate retry` asks again with a new
//!   email, and the first approval does not count.
//! - An unfiltered subscription on the approval topic: nothing is sent, and `tollgate status`
//!   names the subscription.
//!
//! Nothing leaves 127.0.0.1: moto, the CloudWatch stub, the GitHub fake and the controller
//! listen on loopback.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate::domain::{ReleaseId, RunStatus, StageRun};
use tollgate::github::webhook::sign;
use tollgate::secret::Secret;
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::cloudwatch::CloudWatchStub;
use tollgate_testkit::github_fake::GithubFake;
use tollgate_testkit::moto::MotoServer;
use tollgate_testkit::serve::{ServeProcess, ServeSpec, free_port};
use tollgate_testkit::world::{APPROVER, World, WorldBuilder};

pub(crate) const SECRET: &str = "webhook-secret-for-approvals-through-serve";
pub(crate) const TOKEN: &str = "ghp_approvalsServeTestToken0123456789";
const REPO: &str = "acme/backend";
/// The longest one wait may take.
const LIMIT: Duration = Duration::from_secs(90);

pub(crate) struct Serve {
    pub(crate) moto: MotoServer,
    pub(crate) world: World,
    pub(crate) stub: CloudWatchStub,
    pub(crate) github: GithubFake,
    pub(crate) serve: ServeProcess,
    pub(crate) url: String,
    pub(crate) state: String,
    /// How `serve` was started (for a second controller on the same world and state).
    pub(crate) spec: ServeSpec,
    pub(crate) store: Store,
    pub(crate) http: reqwest::Client,
    /// The admin key [`Serve::cli`] uses, made at its first call.
    cli_key: std::sync::OnceLock<String>,
    _dir: tempfile::TempDir,
}

/// The approver's own email subscription, filtered to them, made before the controller starts
/// (as the approver would have confirmed it long before). One the controller made itself would
/// be confirmed at once by moto and then hold the links back for 15 minutes while SNS may not
/// have applied its filter policy (`approvals_moto` shows that).
async fn subscribe_approver(sns: &aws_sdk_sns::Client, topic: &str) {
    sns.subscribe()
        .topic_arn(topic)
        .protocol("email")
        .endpoint(format!("{APPROVER}@example.com"))
        .attributes("FilterPolicy", format!(r#"{{"approver":["{APPROVER}"]}}"#))
        .send()
        .await
        .expect("subscribed the approver");
}

impl Serve {
    /// The world, `before` (say, an extra subscription) run on moto, then `tollgate serve`.
    async fn start<F, Fut>(builder: WorldBuilder, before: F) -> Serve
    where
        F: FnOnce(aws_sdk_sns::Client, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        Serve::start_with(builder, before, |_| Vec::new()).await
    }

    /// [`Serve::start`], with more arguments for `tollgate serve` made from the world; stderr
    /// goes to `serve.log`, stdout to `serve.out`.
    pub(crate) async fn start_with<F, Fut>(
        builder: WorldBuilder,
        before: F,
        args: impl FnOnce(&World) -> Vec<String>,
    ) -> Serve
    where
        F: FnOnce(aws_sdk_sns::Client, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        Serve::start_on(builder, before, args, None, |_, _| Vec::new()).await
    }

    /// [`Serve::start_with`] on `state` (`None`: a SQLite file of its own), with `env` made
    /// from the started world and moto added to `serve`'s environment.
    pub(crate) async fn start_on<F, Fut>(
        builder: WorldBuilder,
        before: F,
        args: impl FnOnce(&World) -> Vec<String>,
        state: Option<String>,
        env: impl FnOnce(&World, &MotoServer) -> Vec<(String, String)>,
    ) -> Serve
    where
        F: FnOnce(aws_sdk_sns::Client, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let extra_env = env;
        let moto = tokio::task::spawn_blocking(MotoServer::start)
            .await
            .unwrap()
            .expect("moto_server starts");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let world = builder
            .source(REPO)
            .public_url(url.clone())
            .dir(dir.path().join("world"))
            .build(&moto)
            .await
            .expect("world set up");
        let stub = world
            .start_cloudwatch_stub()
            .await
            .expect("CloudWatch stub");
        let sns = aws_sdk_sns::Client::new(&moto.sdk_config());
        subscribe_approver(&sns, &world.topics().approvals).await;
        before(sns, world.topics().approvals.clone()).await;
        let github = GithubFake::start(TOKEN).await.unwrap();
        let state =
            state.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("state.db").display()));
        let mut env = world.serve_env(&moto, &stub);
        env.extend(
            [
                ("TOLLGATE_GITHUB_WEBHOOK_SECRET", SECRET),
                ("TOLLGATE_GITHUB_TOKEN", TOKEN),
                ("TOLLGATE_GITHUB_API_URL", github.url()),
                ("RUST_LOG", "info"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        env.extend(extra_env(&world, &moto));
        let spec = ServeSpec {
            binary: env!("CARGO_BIN_EXE_tollgate").into(),
            config: world.stages_path(),
            state: state.clone(),
            port,
            certs: None,
            env,
            args: args(&world),
            log: dir.path().join("serve.log"),
            stdout: Some(dir.path().join("serve.out")),
        };
        let serve = ServeProcess::start(&spec).await.expect("tollgate serve");
        let http = reqwest::Client::new();
        // Opened once the controller migrated it.
        let store = Store::open(&state).await.expect("state database");
        Serve {
            moto,
            world,
            stub,
            github,
            serve,
            url,
            state,
            spec,
            store,
            http,
            cli_key: std::sync::OnceLock::new(),
            _dir: dir,
        }
    }

    pub(crate) fn log(&self) -> String {
        self.serve.log()
    }

    /// What the controller printed on stdout.
    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("serve.out")).unwrap_or_default()
    }

    /// Pushes the image of `sha` and delivers a signed `push` of it: `author` wrote the head
    /// commit, `pusher` pushed it.
    pub(crate) async fn push(&self, sha: &str, author: &str, pusher: &str) {
        self.world.push_image(sha).await.expect("image pushed");
        let person = |login: &str| json!({ "name": login, "email": format!("{login}@example.com"), "username": login });
        let body = json!({
            "ref": "refs/heads/main",
            "before": "0".repeat(40),
            "after": sha,
            "created": false,
            "deleted": false,
            "compare": format!("https://github.com/{REPO}/compare/x...y"),
            "repository": { "full_name": REPO, "name": "backend", "owner": { "login": "acme" } },
            "pusher": { "name": pusher, "email": format!("{pusher}@example.com") },
            "sender": { "login": pusher },
            "head_commit": {
                "id": sha,
                "message": "Merge the orders change",
                "url": format!("https://github.com/{REPO}/commit/{sha}"),
                "author": person(author),
                "committer": person(author),
                "added": [], "removed": [], "modified": ["src/orders.py"]
            },
            "commits": []
        })
        .to_string();
        let r = self
            .http
            .post(format!("{}/webhooks/github", self.url))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("push-{sha}"))
            .header(
                "x-hub-signature-256",
                sign(&Secret::new(SECRET), body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "push refused: {}", r.status());
    }

    async fn run(&self, sha: &str, stage: &str) -> Option<(ReleaseId, StageRun)> {
        let runs = self
            .store
            .reads()
            .recent_runs(self.world.pipeline(), 20)
            .await
            .ok()?;
        let (r, runs) = runs.into_iter().find(|(r, _)| r.sha == sha)?;
        Some((r.id, runs.into_iter().find(|x| x.stage == stage)?))
    }

    /// Waits until `sha`'s run in `stage` satisfies `done`.
    pub(crate) async fn wait(
        &self,
        sha: &str,
        stage: &str,
        what: &str,
        done: impl Fn(&StageRun) -> bool,
    ) -> (ReleaseId, StageRun) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let found = self.run(sha, stage).await;
            if let Some((id, run)) = found.clone().filter(|(_, r)| done(r)) {
                return (id, run);
            }
            assert!(
                Instant::now() < deadline,
                "{stage}: no {what}; last {found:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Approval messages on the approval topic: (approver attribute, body), oldest first.
    pub(crate) async fn approval_mail(&self) -> Vec<(Option<String>, String)> {
        let data = self.moto.data().await.unwrap();
        let topic = &self.world.topics().approvals;
        let topics = data["sns"]["Topic"].as_array().cloned().unwrap_or_default();
        let Some(t) = topics.into_iter().find(|t| t["arn"] == topic.as_str()) else {
            return Vec::new();
        };
        let sent = t["sent_notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        sent.iter()
            .map(|n| {
                let who = n[3]["approver"]["Value"].as_str().map(str::to_owned);
                (who, n[1].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    /// Messages on the notification topic (subject, body).
    async fn notifications(&self) -> Vec<(String, String)> {
        let data = self.moto.data().await.unwrap();
        let topic = &self.world.topics().notifications;
        let topics = data["sns"]["Topic"].as_array().cloned().unwrap_or_default();
        let Some(t) = topics.into_iter().find(|t| t["arn"] == topic.as_str()) else {
            return Vec::new();
        };
        let sent = t["sent_notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        sent.iter()
            .map(|n| {
                let text = |i: usize| n[i].as_str().unwrap_or_default().to_owned();
                (text(2), text(1))
            })
            .collect()
    }

    /// Waits for the `n`th approval email to alice and returns its link's token.
    pub(crate) async fn nth_link(&self, n: usize) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let mail: Vec<String> = self
                .approval_mail()
                .await
                .into_iter()
                .filter(|(who, _)| who.as_deref() == Some(APPROVER))
                .map(|(_, body)| body)
                .collect();
            if let Some(body) = mail.get(n - 1) {
                return token_in(body, &self.url);
            }
            assert!(
                Instant::now() < deadline,
                "no email {n} to {APPROVER}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens the link, then answers `decision` with the page's form: (status, page).
    pub(crate) async fn decide(&self, token: &str, decision: &str) -> (u16, String, String) {
        let link = format!("{}/approvals/{token}", self.url);
        let page = self
            .http
            .get(&link)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = field(&page, "csrf");
        let r = self
            .http
            .post(&link)
            .form(&[("csrf", csrf.as_str()), ("decision", decision)])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, page, r.text().await.unwrap())
    }

    /// `tollgate <args> --server …` through the real binary, with an admin key named `dana`
    /// (made with `tollgate keys create` at the first call).
    pub(crate) fn cli(&self, args: &[&str]) -> (bool, String) {
        let key = self.cli_key.get_or_init(|| {
            let made = Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .args([
                    "keys", "create", "--name", "dana", "--role", "admin", "--config",
                ])
                .arg(self.world.stages_path())
                .args(["--state", &self.state])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&made.stderr);
            assert!(made.status.success(), "keys create: {err}");
            String::from_utf8_lossy(&made.stdout).trim().to_owned()
        });
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .args(["--server", &self.url])
            .env("TOLLGATE_API_KEY", key)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

pub(crate) fn sha(n: u32) -> String {
    format!("{n:08x}{}", "a11ce".repeat(7))
        .chars()
        .take(40)
        .collect()
}

fn token_in(body: &str, url: &str) -> String {
    let prefix = format!("{url}/approvals/");
    let at = body.find(&prefix).expect("a link in the email") + prefix.len();
    body[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// The value of the hidden input `name` on a page (empty when there is none).
fn field(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    page.find(&marker)
        .map(|at| {
            page[at + marker.len()..]
                .chars()
                .take_while(|c| *c != '"')
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn quick() -> WorldBuilder {
    WorldBuilder::new()
        .stage_tests(false)
        .bake_all(Duration::ZERO)
}

pub(crate) async fn nothing_more(_: aws_sdk_sns::Client, _: String) {}

#[tokio::test]
async fn the_author_of_the_merged_pull_request_cannot_approve_the_merge_commit() {
    let s = Serve::start(quick(), nothing_more).await;
    let (work, merge) = (sha(1), sha(2));
    let pr = s.github.open_pull(REPO, APPROVER, &[&work]);
    s.github.merge_pull(REPO, pr, "bob", &merge);
    // bob merged alice's pull request: the merge commit is bob's, pushed by bob.
    s.push(&merge, "bob", "bob").await;
    s.wait(&merge, "prod", "approval", |r| {
        r.status == RunStatus::AwaitingApproval
    })
    .await;
    let token = s.nth_link(1).await;

    let (status, page, answer) = s.decide(&token, "approve").await;
    assert!(
        page.contains("you opened the pull request of this change"),
        "{page}"
    );
    assert!(
        !page.contains("value=\"approve\""),
        "no approve button: {page}"
    );
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.contains("you opened the pull request of this change"),
        "{answer}"
    );
    assert!(answer.contains("Nothing was recorded"), "{answer}");
    let (id, run) = s.run(&merge, "prod").await.unwrap();
    assert_eq!(run.status, RunStatus::AwaitingApproval);
    assert!(
        s.store
            .reads()
            .approvals_of(id, "prod")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.github
            .requests()
            .iter()
            .any(|r| r.contains(&format!("/commits/{merge}/pulls"))),
        "the pull requests of the commit were looked up"
    );
}

#[tokio::test]
async fn a_pusher_who_is_not_the_commits_author_cannot_approve_it() {
    let s = Serve::start(quick(), nothing_more).await;
    let commit = sha(3);
    s.push(&commit, "carol", APPROVER).await;
    s.wait(&commit, "prod", "approval", |r| {
        r.status == RunStatus::AwaitingApproval
    })
    .await;
    let token = s.nth_link(1).await;
    let (status, page, answer) = s.decide(&token, "approve").await;
    assert!(page.contains("you pushed this change"), "{page}");
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("you pushed this change"), "{answer}");
    let (_, run) = s.run(&commit, "prod").await.unwrap();
    assert_eq!(run.status, RunStatus::AwaitingApproval);
}

#[tokio::test]
async fn a_retry_after_an_approved_prod_failed_asks_again_and_the_old_approval_does_not_count() {
    let builder = quick().after_test("prod", "smoke", vec!["false".into()]);
    let s = Serve::start(builder, nothing_more).await;
    let commit = sha(0);
    s.push(&commit, "carol", "carol").await;
    s.wait(&commit, "prod", "approval", |r| {
        r.status == RunStatus::AwaitingApproval
    })
    .await;
    let first = s.nth_link(1).await;
    let (status, _, answer) = s.decide(&first, "approve").await;
    assert_eq!(status, 200, "{answer}");
    let (id, failed) = s
        .wait(&commit, "prod", "failure", |r| {
            r.status == RunStatus::Failed
        })
        .await;
    assert_eq!(failed.attempt, 1);

    let (ok, out) = s.cli(&["retry", s.world.pipeline(), &id.to_string()]);
    assert!(ok, "{out}");
    let (_, again) = s
        .wait(&commit, "prod", "a new approval request", |r| {
            r.status == RunStatus::AwaitingApproval && r.attempt == 2
        })
        .await;
    // A new email with a new link; the first approval is kept but does not count.
    let second = s.nth_link(2).await;
    assert_ne!(second, first);
    let recorded = s.store.reads().approvals_of(id, "prod").await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].attempt, 1);
    let (ok, status_text) = s.cli(&["status"]);
    assert!(ok, "{status_text}");
    assert!(
        status_text.contains("awaiting approval: 0 of 1"),
        "{status_text}"
    );
    assert_eq!(again.attempt, 2);
    // The first link belongs to attempt 1: it decides nothing now.
    let (status, _, answer) = s.decide(&first, "approve").await;
    assert!(status >= 400, "{answer}");
    assert_eq!(
        s.run(&commit, "prod").await.unwrap().1.status,
        RunStatus::AwaitingApproval
    );
}

#[tokio::test]
async fn an_unfiltered_subscription_on_the_approval_topic_withholds_every_link() {
    let list = |sns: aws_sdk_sns::Client, topic: String| async move {
        sns.subscribe()
            .topic_arn(topic)
            .protocol("email")
            .endpoint("release-team@example.com")
            .send()
            .await
            .expect("subscribed a mailing list without a filter policy");
    };
    let s = Serve::start(quick(), list).await;
    let commit = sha(4);
    s.push(&commit, "carol", "carol").await;
    let (_, run) = s
        .wait(&commit, "prod", "a withheld request", |r| {
            format!("{:?}", r.reason).contains("Withheld")
        })
        .await;
    assert_eq!(run.status, RunStatus::AwaitingApproval);
    assert!(
        s.approval_mail().await.is_empty(),
        "nothing was published to the approval topic"
    );

    let (ok, status_text) = s.cli(&["status"]);
    assert!(ok, "{status_text}");
    assert!(
        status_text.contains("release-team@example.com"),
        "{status_text}"
    );
    assert!(
        status_text.contains("has no filter policy"),
        "{status_text}"
    );
    let (ok, history) = s.cli(&["history", s.world.pipeline()]);
    assert!(ok, "{history}");
    assert!(
        history.contains("personal approval links withheld"),
        "{history}"
    );
    let deadline = Instant::now() + LIMIT;
    loop {
        let sent = s.notifications().await;
        if sent.iter().any(|(subject, body)| {
            subject.contains("NOT SENT") && body.contains("release-team@example.com")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no notification: {sent:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /api/v1/pipelines/{p}/promote` on the moto world: a commit whose image is in ECR
/// becomes a release that goes through the stages like a pushed one; a commit without an image
/// is refused (422) and records nothing; viewers may not promote (403).
#[tokio::test]
async fn api_promote_starts_a_release_only_for_a_commit_whose_image_exists() {
    let s = Serve::start(quick(), nothing_more).await;
    let make_key = |name: &str, role: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["keys", "create", "--name", name, "--role", role, "--config"])
            .arg(s.world.stages_path())
            .args(["--state", &s.state])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (ops, viewer) = (make_key("ops", "operator"), make_key("dash", "viewer"));
    let url = format!("{}/api/v1/pipelines/{}/promote", s.url, s.world.pipeline());
    let promote = |key: String, sha: String| {
        let (http, url) = (s.http.clone(), url.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({ "sha": sha }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (missing, built) = (sha(7), sha(8));
    let (status, body) = promote(ops.clone(), missing.clone()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["type"], "urn:tollgate:problem:image-not-found");
    assert!(s.run(&missing, "beta").await.is_none(), "nothing recorded");

    s.world.push_image(&built).await.expect("image pushed");
    let (status, body) = promote(viewer, built.clone()).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (403, Some("urn:tollgate:problem:forbidden"))
    );
    let (status, body) = promote(ops.clone(), built.clone()).await;
    assert_eq!(status, 200, "{body}\n{}", s.log());
    let id = body["release"].as_str().unwrap().to_owned();
    let (_, beta) = s
        .wait(&built, "beta", "success", |r| {
            r.status == RunStatus::Succeeded
        })
        .await;
    assert_eq!(beta.attempt, 1);
    // Asked again while the controller is promoting it (its reconciler writing): the same
    // commit changes nothing.
    let (status, body) = promote(ops, built.clone()).await;
    assert_eq!(status, 200, "{body}\n{}", s.log());
    assert_eq!(
        body["release"],
        serde_json::Value::Null,
        "the same commit again: {body}"
    );
    let r = s
        .store
        .reads()
        .release(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.sha, built);
    assert!(r.digest.is_some(), "the image was resolved to its digest");
}
