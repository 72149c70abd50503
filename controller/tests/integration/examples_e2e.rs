//! The example pipelines of `docs/examples/`, promoted end to end by the real `tollgate serve`
//! on moto: one harness ([`Harness`]) takes an example's directory and runs every pipeline in
//! it the way a platform engineer adopting it would see it run.
//!
//! For each pipeline: its build workflow's signed `workflow_run` webhook (from
//! `@octokit/webhooks-examples`) → Beta → Gamma → Prod with its configured tests (GitHub checks
//! and workflows answered by the GitHub fake; `command` tests and smoke suites run for real, the
//! suites against a loopback HTTP server that plays the service and reports the commit the
//! stage's stack runs), Prod approved through the link of the approval email (the message
//! tollgate published to the approval topic for that approver, read from moto's request
//! recording), then a second release, rolled back by a signed SNS alarm during its Prod bake
//! where the pipeline's Prod stage has alarms. moto's request recording shows exactly one
//! `ExecuteChangeSet` per stage per release. The controller runs with its production settings
//! (no test-speed poll schedules); only the examples' set-up (`examples.rs`) deploys with
//! `PollSettings::fast`, as it did before.
//!
//! # What the copy of the example changes, and why
//! The example is copied to a temporary directory; its `stages.toml` and `accounts.toml` are
//! edited with `toml_edit` in these places only:
//! - `[controller] public_url` → the loopback address of `tollgate serve` (the approval links).
//! - each stage's `template` → a copy for moto ([`moto_template`]): the resources moto cannot
//!   run left out (as `examples.rs` deploys them) and the `Outputs` replaced by what moto can
//!   report: `ServiceUrl` → the loopback service at `/<stack>`, `DistributionId` → a CloudFront
//!   distribution the test made through moto's CloudFront API (moto creates none through
//!   CloudFormation). The stacks are created once with these copies before the pipeline runs,
//!   as each README's set-up does, because moto reports Outputs only for stacks made by
//!   `CreateStack` (and keeps them; change sets do not recompute them).
//! - `HostedZoneId` → `""` and a regional `CertificateArn` → a certificate of moto's ACM (see
//!   `examples.rs`: moto has no `CanonicalHostedZoneID`; an ELBv2 listener needs the certificate).
//! - each stage's `parameters` → also every parameter its template declares with a `Default`,
//!   set to it (see `examples.rs`: moto mishandles the `UsePreviousValue` tollgate sends for a
//!   parameter the stack has and the stage does not set).
//! - `bake` → 500 ms (5 s in Prod), `min_datapoints` → 0, `alarm_delay` → `0s` (the stub's
//!   alarms are one-minute alarms), and `bake_max_wait` / `windows` removed: the examples bake
//!   for up to an hour, want data points from a service with traffic
//!   (3 per alarm by default, 30 in serverless-api's Prod) and deploy Prod only in office hours;
//!   the test runs in seconds at any hour, and nothing sends the emulated alarms data. Windows
//!   and data points have their own tests (`engine_bake_data.rs`, the window unit tests).
//! - an ExternalId `file` → a file in the copy (`/run/secrets/…` does not exist here); those
//!   read from the environment are set in `tollgate serve`'s environment.
//!
//! `command` tests run the examples' scripts unchanged with the real AWS CLI
//! (`TOLLGATE_AWS_CLI`, or `.cache/awscli/bin/aws` as `scripts/test` installs it) pointed at
//! moto by `AWS_ENDPOINT_URL` (through [`moto_front`], which corrects one status word moto
//! gets wrong), with a `~/.aws/config` holding the profiles the READMEs describe: each assumes
//! a role in its stage's account (moto's STS) from the controller's credentials.
//!
//! The controller runs with credentials of the example's controller account (an `AssumeRole`
//! into it on moto), so "the controller's own account" means what it means in the example.
//!
//! Bounded in time; loopback only (moto, the CloudWatch stub, the GitHub fake, the service, the
//! controller).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tollgate::config::{Config, Deploy, Pipeline, Stage, TestKind};
use tollgate::domain::{ReleaseId, RunStatus, StageRun};
use tollgate::github::webhook::sign;
use tollgate::http::sns_verify::AlarmState;
use tollgate::secret::Secret;
use tollgate::store::Store;
use tollgate_testkit::aws_stubs::cloudwatch::CloudWatchStub;
use tollgate_testkit::github_fake::{GithubFake, RunScript};
use tollgate_testkit::moto::{MotoServer, RecordedRequest};
use tollgate_testkit::serve::{ServeProcess, ServeSpec, free_port, tail};
use tollgate_testkit::sns::TestSigner;
use tollgate_testkit::world::{create_topic, put_image};

use crate::examples::{Emulated, MOTO_LEFT_OUT, examples_dir, prerequisites, read};

const SECRET: &str = "webhook-secret-for-the-example-pipelines-0123";
const TOKEN: &str = "ghp_examplePipelinesTestToken0123456789";
/// The longest one wait may take.
const LIMIT: Duration = Duration::from_secs(45);
/// The author of every commit the tests release: nobody's approver.
const AUTHOR: &str = "Codertocat";

// ---------------------------------------------------------------------------------------------
// The loopback service: what every stage's `ServiceUrl` points at
// ---------------------------------------------------------------------------------------------

/// Plays every stack's service under `/<stack>/…`. Version and health routes report the commit
/// whose image the stack's `ImageUri` parameter names in moto, so a smoke suite passes only when
/// the deploy landed in that stage's account. Orders are kept (serverless-api's suite writes
/// and reads one).
#[derive(Clone, Default)]
struct ServiceState {
    /// stack → (its account's config, region).
    stacks: Arc<Mutex<BTreeMap<String, (SdkConfig, String)>>>,
    /// digest (`sha256:…`) → commit.
    commits: Arc<Mutex<BTreeMap<String, String>>>,
    orders: Arc<Mutex<BTreeMap<String, Value>>>,
}

struct Service {
    url: String,
    state: ServiceState,
}

impl Service {
    async fn start() -> Service {
        let state = ServiceState::default();
        let app = Router::new()
            .route("/{stack}/{*rest}", axum::routing::any(serve_path))
            .route("/{stack}/", axum::routing::any(serve_root))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Service { url, state }
    }
}

async fn serve_root(
    State(state): State<ServiceState>,
    method: Method,
    UrlPath(stack): UrlPath<String>,
) -> Response {
    answer(state, method, stack, String::new(), None).await
}

async fn serve_path(
    State(state): State<ServiceState>,
    method: Method,
    UrlPath((stack, rest)): UrlPath<(String, String)>,
    body: Option<axum::Json<Value>>,
) -> Response {
    answer(state, method, stack, rest, body.map(|b| b.0)).await
}

/// The commit the stack runs now, from its `ImageUri` parameter in its own account.
async fn running(state: &ServiceState, stack: &str) -> Option<String> {
    let (config, region) = state.stacks.lock().unwrap().get(stack).cloned()?;
    let image = stack_parameter(&config, &region, stack, "ImageUri").await?;
    let digest = image.split('@').nth(1)?.to_owned();
    state.commits.lock().unwrap().get(&digest).cloned()
}

async fn answer(
    state: ServiceState,
    method: Method,
    stack: String,
    path: String,
    body: Option<Value>,
) -> Response {
    let Some(commit) = running(&state, &stack).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no release deployed").into_response();
    };
    let service = stack.rsplit_once('-').map_or(stack.as_str(), |(s, _)| s);
    let last = path.rsplit('/').next().unwrap_or_default().to_owned();
    if matches!(last.as_str(), "healthz" | "health") {
        return axum::Json(json!({ "status": "ok", "commit": commit })).into_response();
    }
    if matches!(last.as_str(), "version" | "version.json") {
        return axum::Json(json!({ "commit": commit, "service": service })).into_response();
    }
    if last == "openapi.json" {
        return axum::Json(json!({ "info": { "title": service } })).into_response();
    }
    if last.contains("does-not-exist") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    if path.starts_with("orders/") {
        return order(&state, method, &last, body);
    }
    if path.starts_with("api/") {
        return axum::Json(json!({ "items": [] })).into_response();
    }
    let page =
        r#"<html><body><div id="root"></div><script id="__NEXT_DATA__"></script></body></html>"#;
    axum::response::Html(page).into_response()
}

/// `PUT /orders/{id}` keeps an order (400 without items), `GET` reads it back.
fn order(state: &ServiceState, method: Method, id: &str, body: Option<Value>) -> Response {
    let mut orders = state.orders.lock().unwrap();
    if method == Method::PUT {
        let body = body.unwrap_or_default();
        let items = body["items"].as_array().map_or(0, Vec::len);
        if items == 0 {
            return (StatusCode::BAD_REQUEST, "an order needs items").into_response();
        }
        let stored = json!({ "id": id, "status": "pending", "customer": body["customer"] });
        orders.insert(id.to_owned(), stored.clone());
        return axum::Json(stored).into_response();
    }
    match orders.get(id) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such order").into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// The endpoint `tollgate serve` and its command tests call: moto, one status word corrected
// ---------------------------------------------------------------------------------------------

/// Forwards every request to moto unchanged, and corrects one moto 5.2.5 gap in the answers:
/// a finished CloudFront invalidation's `Status` is `COMPLETED` there, where CloudFront says
/// `Completed` ("When the invalidation batch is finished, the status is Completed":
/// <https://docs.aws.amazon.com/cloudfront/latest/APIReference/API_Invalidation.html>). The AWS
/// CLI's `wait invalidation-completed`, which invalidate-cdn.sh runs, waits for `Completed`
/// and would otherwise poll for ten minutes. moto still records every request.
async fn moto_front(moto: String) -> String {
    let app = Router::new().fallback(forward).with_state(moto);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn forward(State(moto): State<String>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut forwarded = http.request(parts.method, format!("{moto}{path}"));
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            forwarded = forwarded.header(name, value);
        }
    }
    let Ok(answer) = forwarded.body(body).send().await else {
        return (StatusCode::BAD_GATEWAY, "moto did not answer").into_response();
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let text = answer.bytes().await.unwrap_or_default();
    let moto_status = "<Status>COMPLETED</Status>";
    let original = String::from_utf8_lossy(&text);
    let body = if original.contains(moto_status) {
        let fixed = original.replace(moto_status, "<Status>Completed</Status>");
        axum::body::Body::from(fixed)
    } else {
        axum::body::Body::from(text)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != axum::http::header::CONTENT_LENGTH
            && name != axum::http::header::TRANSFER_ENCODING
        {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

// ---------------------------------------------------------------------------------------------
// AWS helpers
// ---------------------------------------------------------------------------------------------

fn in_region(config: &SdkConfig, region: &str) -> SdkConfig {
    config
        .to_builder()
        .region(Region::new(region.to_owned()))
        .build()
}

async fn stack_parameter(
    config: &SdkConfig,
    region: &str,
    stack: &str,
    name: &str,
) -> Option<String> {
    let cfn = aws_sdk_cloudformation::Client::new(&in_region(config, region));
    let described = cfn.describe_stacks().stack_name(stack).send().await.ok()?;
    let parameters = described.stacks().first()?.parameters();
    let found = parameters
        .iter()
        .find(|p| p.parameter_key() == Some(name))?;
    found.parameter_value().map(str::to_owned)
}

/// (access key id, secret, session token) of `config`'s credentials.
async fn keys(config: &SdkConfig) -> (String, String, String) {
    let provider = config.credentials_provider().unwrap();
    let c = provider.provide_credentials().await.unwrap();
    let token = c.session_token().unwrap_or_default().to_owned();
    (
        c.access_key_id().to_owned(),
        c.secret_access_key().to_owned(),
        token,
    )
}

/// The AWS CLI: `TOLLGATE_AWS_CLI`, else the one `scripts/test` installs; never skipped.
fn aws_cli() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = std::env::var_os("TOLLGATE_AWS_CLI")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/awscli/bin/aws"));
    assert!(
        path.is_file(),
        "the AWS CLI is not at {} (scripts/test installs it; or set TOLLGATE_AWS_CLI)",
        path.display()
    );
    path
}

/// Runs the AWS CLI as the account of `config` against `moto`; returns its JSON output.
async fn cli(moto: &MotoServer, config: &SdkConfig, region: &str, args: &[&str]) -> Value {
    let (key, secret, token) = keys(config).await;
    let out = Command::new(aws_cli())
        .args(args)
        .args(["--output", "json", "--region", region])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_SESSION_TOKEN", token)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("running the AWS CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aws {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or(Value::Null)
}

/// A form field of a recorded query-protocol request.
fn form_field(r: &RecordedRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(&r.body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The string value of the message attribute `name` of a recorded `Publish`.
fn attribute<'f>(fields: &'f BTreeMap<String, String>, name: &str) -> Option<&'f str> {
    let key = fields
        .iter()
        .find(|(k, v)| k.ends_with(".Name") && v.as_str() == name)?
        .0;
    let value = key.replace(".Name", ".Value.StringValue");
    fields.get(&value).map(String::as_str)
}

fn topic_parts(arn: &str) -> (String, String, String) {
    let parts: Vec<&str> = arn.split(':').collect();
    (parts[3].into(), parts[4].into(), parts[5].into())
}

// ---------------------------------------------------------------------------------------------
// The copy of the example
// ---------------------------------------------------------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Resources left out of the copy a stage stack is created from, beyond [`MOTO_LEFT_OUT`]:
/// - web.yaml's SiteContent (`Custom::SiteContent`): `CreateStack` waits for the custom
///   resource's response, which moto never sends (running the publisher function would need
///   Docker), so the stack would stay `CREATE_IN_PROGRESS`. The site's files are therefore
///   never published here; the loopback service answers for the site instead.
const CREATE_STACK_LEFT_OUT: &[(&str, &[&str])] = &[("web.yaml", &["SiteContent"])];

/// The stage's template as moto can run it, with the outputs it can report (module docs).
fn moto_template(template: &Path, outputs: &[(&str, String)]) -> String {
    let file = template.file_name().unwrap().to_string_lossy().into_owned();
    let mut text = read(template);
    for (name, drop) in MOTO_LEFT_OUT.iter().chain(CREATE_STACK_LEFT_OUT) {
        if *name == file {
            text = crate::examples::without_resources(&text, drop);
        }
    }
    crate::examples::with_outputs(&text, outputs)
}

/// Short bakes, no windows, no data-point minimum (module docs).
fn fast_stage(stage: &mut toml_edit::Table) {
    let prod = stage["name"].as_str() == Some("prod");
    stage["bake"] = toml_edit::value(if prod { "5s" } else { "500ms" });
    stage["min_datapoints"] = toml_edit::value(0);
    // The stub's alarms are one-minute alarms: `auto` would hold each bake a minute longer.
    if stage.contains_key("alarms") {
        stage["alarm_delay"] = toml_edit::value("0s");
    }
    for key in ["windows", "bake_max_wait"] {
        stage.remove(key);
    }
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// One example, set up on its own moto and promoted by its own `tollgate serve`.
pub(crate) struct Harness {
    name: &'static str,
    moto: &'static MotoServer,
    /// The copy `tollgate serve` runs, loaded.
    config: Config,
    github: GithubFake,
    stub: CloudWatchStub,
    service: Service,
    serve: ServeProcess,
    signer: TestSigner,
    store: Store,
    http: reqwest::Client,
    /// The controller's access key id (its own account's credentials).
    controller_key: String,
    /// account name → config signed in to it.
    configs: BTreeMap<String, SdkConfig>,
    /// stack → the CloudFront distribution its `DistributionId` output names.
    distributions: BTreeMap<String, String>,
    /// The copy, the state database, the log: removed with the harness.
    _dir: tempfile::TempDir,
}

/// A release as the test made it.
#[derive(Debug, Clone)]
struct Made {
    sha: String,
    digest: String,
    image: String,
}

impl Harness {
    pub(crate) async fn start(name: &'static str) -> Harness {
        // A moto of its own, so that its recording holds this example's calls only. Leaked: the
        // server stops when the test process ends (its wrapper reads end of file on stdin).
        let moto = tokio::task::spawn_blocking(MotoServer::start)
            .await
            .unwrap()
            .expect("moto_server starts");
        let moto: &'static MotoServer = Box::leak(Box::new(moto));
        let ex = Emulated::start_on(moto, name).await;
        prerequisites(&ex).await;
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(name);
        copy_dir(&examples_dir().join(name), &copy);
        let service = Service::start().await;
        let port = free_port().unwrap();
        let public_url = format!("http://127.0.0.1:{port}");

        let mut configs = BTreeMap::new();
        for account in ex.accounts.values() {
            let config = moto.sdk_config_for_account(account.id.as_ref()).await;
            configs.insert(account.name.clone(), config.unwrap());
        }
        let distributions = distributions(moto, &ex.config, &configs).await;
        let mut stages_doc: toml_edit::DocumentMut =
            read(&copy.join("stages.toml")).parse().unwrap();
        stages_doc["controller"]["public_url"] = toml_edit::value(&public_url);
        std::fs::create_dir_all(copy.join("templates/moto")).unwrap();
        let pipelines = stages_doc["pipelines"].as_array_of_tables_mut().unwrap();
        for (p, doc) in ex.config.pipelines.iter().zip(pipelines.iter_mut()) {
            let stages = doc["stages"].as_array_of_tables_mut().unwrap();
            for (stage, table) in p.stages.iter().zip(stages.iter_mut()) {
                fast_stage(table);
                let target = &stage.targets[0];
                let deploy = ex.for_moto(stage, target).await;
                let Deploy::CloudFormation {
                    stack, parameters, ..
                } = &deploy
                else {
                    panic!("{name}: {} deploys with CloudFormation", stage.name)
                };
                let config = in_region(&configs[&target.account], &target.region);
                let mut outputs = vec![("ServiceUrl", format!("{}/{stack}", service.url))];
                let original = &stage_template(stage);
                if let Some(id) = distributions.get(stack) {
                    outputs.push(("DistributionId", id.clone()));
                }
                let file = format!("templates/moto/{stack}.yaml");
                let text = moto_template(original, &outputs);
                std::fs::write(copy.join(&file), text).unwrap();
                table["deploy"]["template"] = toml_edit::value(&file);
                for (k, v) in parameters {
                    table["deploy"]["parameters"][k.as_str()] = toml_edit::value(v);
                }
                let placeholder = placeholder_image(&ex.config, p);
                create_stack(&config, stack, &copy.join(&file), parameters, &placeholder).await;
                let mut stacks = service.state.stacks.lock().unwrap();
                stacks.insert(stack.clone(), (config.clone(), target.region.clone()));
            }
        }
        std::fs::write(copy.join("stages.toml"), stages_doc.to_string()).unwrap();
        let secrets_env = write_external_ids(&copy, dir.path());

        let controller = ex.accounts.values().find(|a| a.controller).unwrap();
        let own = &configs[&controller.name];
        let (key, secret, token) = keys(own).await;
        let home = dir.path().join("home");
        write_cli_profiles(&home, &ex.config, &ex, (&key, &secret, &token));

        let loaded = tollgate::config::load(&copy.join("stages.toml"))
            .unwrap_or_else(|e| panic!("the copy of {name}: {e}"));
        let config = loaded.config;
        for p in &config.pipelines {
            set_up_pipeline(&configs, &config, p).await;
        }
        let stub = CloudWatchStub::start().await.expect("CloudWatch stub");
        for alarm in config
            .pipelines
            .iter()
            .flat_map(|p| &p.stages)
            .flat_map(|s| &s.alarms)
        {
            stub.set_alarm(alarm, "OK");
        }
        let github = GithubFake::start(TOKEN).await.unwrap();
        for p in &config.pipelines {
            for test in p.tests.values() {
                if let TestKind::GithubWorkflow {
                    workflow, inputs, ..
                } = &test.kind
                {
                    let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
                    let script = RunScript::concludes("success", 1);
                    github.add_workflow(&p.source.repository, workflow, &names, script);
                }
            }
        }
        let signer = TestSigner::new();
        let certs = dir.path().join("sns-certs");
        std::fs::create_dir_all(&certs).unwrap();
        signer.seed_cache_dir(&certs).unwrap();
        let cli_dir = aws_cli().parent().unwrap().to_owned();
        let path = format!(
            "{}:{}",
            cli_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut env: Vec<(String, String)> = vec![
            ("AWS_ENDPOINT_URL".into(), moto_front(moto.endpoint()).await),
            ("AWS_ENDPOINT_URL_CLOUDWATCH".into(), stub.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), secret),
            ("AWS_SESSION_TOKEN".into(), token),
            ("AWS_REGION".into(), controller.region.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("HOME".into(), home.display().to_string()),
            ("PATH".into(), path),
            ("TOLLGATE_GITHUB_WEBHOOK_SECRET".into(), SECRET.into()),
            ("TOLLGATE_GITHUB_TOKEN".into(), TOKEN.into()),
            ("TOLLGATE_GITHUB_API_URL".into(), github.url().to_owned()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(secrets_env);
        let state = format!("sqlite://{}", dir.path().join("state.db").display());
        let spec = ServeSpec {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_tollgate")),
            config: copy.join("stages.toml"),
            state: state.clone(),
            port,
            certs: Some(certs),
            env,
            args: Vec::new(),
            log: dir.path().join("serve.log"),
            stdout: None,
        };
        moto.recorder_start().await.unwrap();
        let serve = ServeProcess::start(&spec).await.expect("tollgate serve");
        let store = Store::open(&state).await.expect("state database");
        Harness {
            name,
            moto,
            config,
            github,
            stub,
            service,
            serve,
            signer,
            store,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            controller_key: key,
            configs,
            distributions,
            _dir: dir,
        }
    }

    fn pipeline(&self, name: &str) -> &Pipeline {
        self.config.pipeline(name).expect("pipeline")
    }

    /// A line of the story (`scripts/demo --example NAME` shows it; a test run captures it).
    fn say(&self, p: &Pipeline, text: impl AsRef<str>) {
        println!("   {:<11} {}", p.name.to_string(), text.as_ref());
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "{}: {what}\n--- serve log (tail)\n{}",
            self.name,
            tail(&self.serve.log(), 60)
        )
    }

    // ----- GitHub ---------------------------------------------------------------------------

    /// CI built `sha` of `p` on `branch`: its image pushed, its checks passed, and the build
    /// workflow's `workflow_run` (or a `push`, without one) delivered, signed.
    async fn build(&self, p: &Pipeline, n: u32, branch: &str) -> Made {
        self.build_failing(p, n, branch, None).await
    }

    /// [`Harness::build`], with the check `failing` (if any) concluded `failure`.
    async fn build_failing(
        &self,
        p: &Pipeline,
        n: u32,
        branch: &str,
        failing: Option<&str>,
    ) -> Made {
        let sha = sha_of(p, n);
        let a = &p.artifact;
        let config = in_region(&self.configs[&a.account], &a.region);
        let digest = put_image(&config, &a.repository, &sha)
            .await
            .expect("PutImage");
        let account = &self.config.accounts[&a.account].id;
        let image = format!(
            "{account}.dkr.ecr.{}.amazonaws.com/{}@{digest}",
            a.region, a.repository
        );
        let commits = &self.service.state.commits;
        commits.lock().unwrap().insert(digest.clone(), sha.clone());
        for test in p.tests.values() {
            if let TestKind::GithubChecks { checks } = &test.kind {
                for check in checks {
                    let repo = &p.source.repository;
                    let conclusion = if failing == Some(check.as_str()) {
                        "failure"
                    } else {
                        "success"
                    };
                    self.github
                        .set_check_run(repo, &sha, check, "completed", Some(conclusion));
                }
            }
        }
        let parent = (n > 1).then(|| sha_of(p, n - 1));
        let parents: Vec<&str> = parent.iter().map(String::as_str).collect();
        self.github.add_commit(&p.source.repository, &sha, &parents);
        self.deliver(p, &sha, branch).await;
        Made { sha, digest, image }
    }

    async fn deliver(&self, p: &Pipeline, sha: &str, branch: &str) {
        let (event, body) = match &p.source.build_workflow {
            Some(file) => (
                "workflow_run",
                build_run(&p.source.repository, file, branch, sha),
            ),
            None => panic!("{}: every example builds with a workflow", p.name),
        };
        let body = serde_json::to_vec(&body).unwrap();
        let r = self
            .http
            .post(format!("{}/webhooks/github", self.serve.url()))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", format!("{event}-{sha}"))
            .header("x-hub-signature-256", sign(&Secret::new(SECRET), &body))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        if !status.is_success() {
            self.fail(format!("{event} of {sha} refused: {status} {text}"));
        }
        let short = &sha[..12];
        self.say(
            p,
            format!("GitHub: {event} of {short} on {branch} (signed) → {status} {text}"),
        );
    }

    // ----- the store ------------------------------------------------------------------------

    async fn release_of(&self, p: &Pipeline, sha: &str) -> Option<ReleaseId> {
        let runs = self.store.recent_runs(p.name.as_ref(), 50).await.ok()?;
        runs.into_iter()
            .find(|(r, _)| r.sha == sha)
            .map(|(r, _)| r.id)
    }

    /// Waits until `sha`'s run in `stage` satisfies `done`; fails early on a terminal status
    /// `done` does not accept.
    async fn wait(
        &self,
        p: &Pipeline,
        sha: &str,
        stage: &str,
        what: &str,
        done: impl Fn(&StageRun) -> bool,
    ) -> (ReleaseId, StageRun) {
        let deadline = Instant::now() + LIMIT;
        let mut last = None;
        loop {
            if let Some(id) = self.release_of(p, sha).await {
                let run = self.store.stage_run(id, stage).await.unwrap();
                if let Some(run) = run {
                    if done(&run) {
                        return (id, run);
                    }
                    if run.status.is_terminal() {
                        let why = run.reason.describe(chrono::Utc::now());
                        self.fail(format!(
                            "{} {stage}: {:?} ({why}), not {what}",
                            p.name, run.status
                        ));
                    }
                    last = Some(run);
                }
            }
            if Instant::now() > deadline {
                let events = self.store.events(p.name.as_ref(), 30).await.unwrap();
                let events: Vec<String> = (events.iter())
                    .map(|e| format!("{} {:?} {}: {}", e.kind, e.stage, e.actor, e.detail))
                    .collect();
                let events = events.join("\n");
                self.fail(format!(
                    "{} {stage}: no {what}; last {last:?}\n{events}",
                    p.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_status(&self, p: &Pipeline, sha: &str, stage: &str, status: RunStatus) {
        self.wait(p, sha, stage, status.as_str(), |r| r.status == status)
            .await;
    }

    // ----- approval -------------------------------------------------------------------------

    /// Reads the approval email of `release` to Prod's first approver, opens its link and
    /// approves with the page's form, as the approver would.
    async fn approve(&self, p: &Pipeline, release: ReleaseId) {
        let prod = p.stages.last().unwrap();
        let approval = prod.approval.as_ref().expect("prod approval");
        let approver = &approval.approvers[0].name;
        let topic = approval.topic.to_string();
        let body = self.approval_email(p, &topic, approver, release).await;
        let prefix = format!("{}/approvals/", self.serve.url());
        let at = body.find(&prefix).expect("a link in the email") + prefix.len();
        let token: String = (body[at..].chars())
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let link = format!("{prefix}{token}");
        let page = self.http.get(&link).send().await.unwrap();
        let page = page.text().await.unwrap();
        let csrf = hidden(&page, "csrf");
        let form = [("csrf", csrf.as_str()), ("decision", "approve")];
        self.say(p, format!("approval email to {approver}: {link}"));
        let r = self.http.post(&link).form(&form).send().await.unwrap();
        let status = r.status();
        self.say(
            p,
            format!("{approver} opens the link and approves → {status}"),
        );
        assert!(
            status.is_success(),
            "{}: approving {release}: {status}",
            p.name
        );
    }

    /// The body of the approval message tollgate published to `topic` for `approver` about
    /// `release` (the email SNS sends that approver's subscription).
    ///
    /// Read from moto's request recording: moto's `/moto-api/data.json` (where approvals_serve
    /// reads what a topic sent) fails once an account holds a Lambda function (it tries to reach
    /// Docker), and serverless-api and shop-web deploy one.
    async fn approval_email(
        &self,
        p: &Pipeline,
        topic: &str,
        approver: &str,
        release: ReleaseId,
    ) -> String {
        let deadline = Instant::now() + LIMIT;
        // The body's own sentence (gates::approval): names exactly this release of this
        // pipeline, whatever a random link token may spell.
        let sentence = format!("Release {release} of pipeline {} is ready", p.name);
        let names = |body: &str| body.contains(&sentence);
        loop {
            let published = self.published(topic).await;
            let mine = (published.iter().rev())
                .filter(|m| attribute(m, "approver") == Some(approver))
                .filter_map(|m| m.get("Message"))
                .find(|body| names(body));
            if let Some(body) = mine {
                return body.clone();
            }
            if Instant::now() > deadline {
                self.fail(format!("no approval email to {approver} for {release}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `Publish` requests to `topic` moto recorded, oldest first: their form fields.
    async fn published(&self, topic: &str) -> Vec<BTreeMap<String, String>> {
        let publishes = self.recorded().await.into_iter();
        let publishes = publishes.filter(|r| r.action.as_deref() == Some("Publish"));
        let fields = publishes.map(|r| {
            let form = url::form_urlencoded::parse(&r.body).into_owned();
            form.collect::<BTreeMap<String, String>>()
        });
        fields
            .filter(|f| f.get("TopicArn").map(String::as_str) == Some(topic))
            .collect()
    }

    // ----- alarms ---------------------------------------------------------------------------

    /// `stage`'s first alarm goes to ALARM: the stub's state (the bake's pull) and the signed
    /// SNS notification CloudWatch publishes to the stage account's alarm topic (the push).
    async fn alarm(&self, p: &Pipeline, stage: &Stage) {
        let alarm = &stage.alarms[0];
        self.stub.set_alarm(alarm, "ALARM");
        let target = &stage.targets[0];
        let account = self.config.accounts[&target.account].id.to_string();
        let topic = (p.alarm_topics.iter().map(ToString::to_string))
            .find(|t| topic_parts(t).1 == account)
            .expect("an alarm topic in the stage's account");
        let body = self.signer.alarm_notification(
            &topic,
            alarm,
            &account,
            &target.region,
            AlarmState::Alarm,
        );
        let r = self
            .http
            .post(format!("{}/webhooks/sns", self.serve.url()))
            .header("content-type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", "Notification")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, reqwest::StatusCode::OK, "{text}");
    }

    // ----- what moto saw --------------------------------------------------------------------

    async fn recorded(&self) -> Vec<RecordedRequest> {
        self.moto.recorded_requests().await.expect("moto recording")
    }

    /// `ExecuteChangeSet` calls per stack name.
    async fn executions(&self) -> BTreeMap<String, usize> {
        let mut per_stack = BTreeMap::new();
        for r in self.recorded().await {
            if r.action.as_deref() == Some("ExecuteChangeSet") {
                let stack = form_field(&r, "StackName").unwrap_or_default();
                *per_stack.entry(stack).or_default() += 1;
            }
        }
        per_stack
    }

    /// The image the stage's stack runs now.
    async fn deployed(&self, stage: &Stage) -> Option<String> {
        let Deploy::CloudFormation { stack, .. } = &stage.deploy else {
            unreachable!()
        };
        let target = &stage.targets[0];
        let config = &self.configs[&target.account];
        stack_parameter(config, &target.region, stack, "ImageUri").await
    }

    // ----- the promotion --------------------------------------------------------------------

    /// Release `made` of `p` goes Beta → Gamma → Prod (Prod approved by email): each stage runs
    /// its image, deployed once.
    /// `before`: the change sets executed before the release's webhook.
    async fn promote(&self, p: &Pipeline, made: &Made, before: &BTreeMap<String, usize>) {
        let prod = p.stages.last().unwrap();
        let (id, _) = self
            .wait(p, &made.sha, prod.name.as_ref(), "approval request", |r| {
                r.status == RunStatus::AwaitingApproval
            })
            .await;
        self.approve(p, id).await;
        self.wait_status(p, &made.sha, prod.name.as_ref(), RunStatus::Succeeded)
            .await;
        for stage in &p.stages {
            let image = self.deployed(stage).await;
            assert_eq!(
                image.as_deref(),
                Some(made.image.as_str()),
                "{}/{}",
                p.name,
                stage.name
            );
            assert!(made.image.contains("@sha256:"), "{}", made.image);
        }
        self.assert_one_deploy_each(p, before, &p.stages).await;
        for stage in &p.stages {
            let account = &self.config.accounts[&stage.targets[0].account].id;
            self.say(
                p,
                format!(
                    "{:<5} ({account}) runs {}",
                    stage.name.to_string(),
                    made.image
                ),
            );
        }
    }

    /// Release `made` reaches Prod, approved; an alarm during Prod's bake rolls Prod back to
    /// `good`; Beta and Gamma keep `made`.
    async fn rolled_back_in_prod(
        &self,
        p: &Pipeline,
        made: &Made,
        good: &Made,
        before: &BTreeMap<String, usize>,
    ) {
        let prod = p.stages.last().unwrap();
        let prod_name = prod.name.to_string();
        let (id, _) = self
            .wait(p, &made.sha, &prod_name, "approval request", |r| {
                r.status == RunStatus::AwaitingApproval
            })
            .await;
        self.approve(p, id).await;
        // Inside Prod's watch window: from its deploy's start to the end of its bake.
        let watched = [RunStatus::Verifying, RunStatus::Baking];
        self.wait(p, &made.sha, &prod_name, "post-deploy tests or bake", |r| {
            r.deploy_started.is_some() && watched.contains(&r.status)
        })
        .await;
        self.say(
            p,
            format!(
                "prod: alarm {} goes to ALARM; SNS delivers it, signed",
                prod.alarms[0]
            ),
        );
        self.alarm(p, prod).await;
        let (_, run) = self
            .wait(p, &made.sha, &prod_name, "rollback", |r| {
                r.status == RunStatus::RolledBack
            })
            .await;
        self.stub.set_alarm(&prod.alarms[0], "OK");
        let why = run.reason.describe(chrono::Utc::now());
        self.say(p, format!("prod rolled back: {why}"));
        let prod_image = self.deployed(prod).await;
        assert_eq!(
            prod_image.as_deref(),
            Some(good.image.as_str()),
            "prod runs the last good release"
        );
        for stage in &p.stages[..p.stages.len() - 1] {
            let image = self.deployed(stage).await;
            assert_eq!(
                image.as_deref(),
                Some(made.image.as_str()),
                "{}",
                stage.name
            );
        }
        let release = self.store.release(id).await.unwrap().unwrap();
        let bad = release.bad.expect("the release is marked bad");
        assert_eq!(bad.stage.to_string(), prod_name);
        // One deploy per stage, and Prod's rollback: one more change set executed there.
        let after = self.executions().await;
        for stage in &p.stages {
            let stack = stack_of(stage);
            let n = after.get(&stack).unwrap_or(&0) - before.get(&stack).unwrap_or(&0);
            let want = if stage.name == prod.name { 2 } else { 1 };
            assert_eq!(
                n, want,
                "{}: ExecuteChangeSet on {stack} (deploy + rollback in prod)",
                p.name
            );
        }
    }

    async fn assert_one_deploy_each(
        &self,
        p: &Pipeline,
        before: &BTreeMap<String, usize>,
        stages: &[Stage],
    ) {
        let after = self.executions().await;
        for stage in stages {
            let stack = stack_of(stage);
            let n = after.get(&stack).unwrap_or(&0) - before.get(&stack).unwrap_or(&0);
            assert_eq!(
                n, 1,
                "{}: ExecuteChangeSet on {stack} for one release",
                p.name
            );
        }
    }

    /// Two releases of `p`: the first promoted to Prod; the second rolled back by an alarm in
    /// Prod, or promoted too where Prod has no alarms. Returns both.
    async fn two_releases(&self, p: &Pipeline) -> (Made, Made) {
        let before = self.executions().await;
        let first = self.build(p, 1, &p.source.branch).await;
        self.promote(p, &first, &before).await;
        let before = self.executions().await;
        let second = self.build(p, 2, &p.source.branch).await;
        if p.stages.last().unwrap().alarms.is_empty() {
            self.promote(p, &second, &before).await;
        } else {
            self.rolled_back_in_prod(p, &second, &first, &before).await;
        }
        (first, second)
    }

    /// Every pipeline of the example (one or two), at the same time.
    async fn run_every_pipeline(&self) -> BTreeMap<String, (Made, Made)> {
        let named = |p: &Pipeline, made| (p.name.to_string(), made);
        match self.config.pipelines.as_slice() {
            [a] => BTreeMap::from([named(a, self.two_releases(a).await)]),
            [a, b] => {
                let (x, y) = tokio::join!(self.two_releases(a), self.two_releases(b));
                BTreeMap::from([named(a, x), named(b, y)])
            }
            other => panic!("{}: {} pipelines", self.name, other.len()),
        }
    }
}

fn stack_of(stage: &Stage) -> String {
    match &stage.deploy {
        Deploy::CloudFormation { stack, .. } => stack.clone(),
        _ => unreachable!(),
    }
}

/// The template the example's stage names (in the example itself).
fn stage_template(stage: &Stage) -> PathBuf {
    match &stage.deploy {
        Deploy::CloudFormation { template, .. } => template.clone(),
        _ => unreachable!(),
    }
}

/// The `n`th commit of `p`: 40 hex digits, different per pipeline.
fn sha_of(p: &Pipeline, n: u32) -> String {
    let seed = p
        .name
        .to_string()
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31) ^ u32::from(b));
    format!("{n:04x}{seed:08x}{}", "c0ffee".repeat(5))[..40].to_owned()
}

/// The image the stacks are created with, before any release.
fn placeholder_image(config: &Config, p: &Pipeline) -> String {
    let a = &p.artifact;
    let account = &config.accounts[&a.account].id;
    let zeros = "0".repeat(64);
    format!(
        "{account}.dkr.ecr.{}.amazonaws.com/{}@sha256:{zeros}",
        a.region, a.repository
    )
}

/// A real completed, successful run from GitHub's examples, moved to `repo`, the workflow
/// `file`, `branch` and commit `sha` (authored by [`AUTHOR`]).
fn build_run(repo: &str, file: &str, branch: &str, sha: &str) -> Value {
    let mut p = webhook_example("workflow_run", |e| {
        e["action"] == "completed" && e["workflow_run"]["conclusion"] == "success"
    });
    let path = format!(".github/workflows/{file}");
    let run = &mut p["workflow_run"];
    run["head_repository"]["full_name"] = repo.into();
    run["head_branch"] = branch.into();
    run["head_sha"] = sha.into();
    run["path"] = path.clone().into();
    if run["head_commit"].is_object() {
        run["head_commit"]["id"] = sha.into();
        run["head_commit"]["author"]["name"] = AUTHOR.into();
    }
    p["repository"]["full_name"] = repo.into();
    p["workflow"]["path"] = path.into();
    p
}

/// An example payload of `event` from `@octokit/webhooks-examples`.
fn webhook_example(event: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let dir = std::env::var_os("TOLLGATE_WEBHOOK_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/npm/node_modules/@octokit/webhooks-examples")
        });
    let index: Vec<Value> =
        serde_json::from_str(&read(&dir.join("api.github.com/index.json"))).unwrap();
    let examples = index.iter().find(|e| e["name"] == event).unwrap();
    let found = examples["examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| pred(e));
    found.expect("an example payload").clone()
}

fn hidden(page: &str, name: &str) -> String {
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

/// A CloudFront distribution in the stage's account, through moto's CloudFront API (moto
/// creates none through CloudFormation); returns its id.
async fn create_distribution(
    moto: &MotoServer,
    config: &SdkConfig,
    region: &str,
    stack: &str,
) -> String {
    let origin = format!("{stack}-site.s3.{region}.amazonaws.com");
    let made = cli(
        moto,
        config,
        region,
        &[
            "cloudfront",
            "create-distribution",
            "--origin-domain-name",
            &origin,
        ],
    )
    .await;
    made["Distribution"]["Id"]
        .as_str()
        .expect("a distribution id")
        .to_owned()
}

/// One CloudFront distribution (through moto's CloudFront API) per stack whose template has a
/// `DistributionId` output, made at the same time: stack → distribution id.
async fn distributions(
    moto: &'static MotoServer,
    config: &Config,
    configs: &BTreeMap<String, SdkConfig>,
) -> BTreeMap<String, String> {
    let mut made = tokio::task::JoinSet::new();
    for stage in config.pipelines.iter().flat_map(|p| &p.stages) {
        let outputs = crate::examples::outputs(&read(&stage_template(stage)));
        if !outputs.iter().any(|o| o == "DistributionId") {
            continue;
        }
        let target = &stage.targets[0];
        let (stack, region) = (stack_of(stage), target.region.clone());
        let account = in_region(&configs[&target.account], &region);
        made.spawn(async move {
            let id = create_distribution(moto, &account, &region, &stack).await;
            (stack, id)
        });
    }
    made.join_all().await.into_iter().collect()
}

/// Creates the stage's stack once from its moto template, with the stage's parameters and
/// `placeholder` as its image, as each README's set-up does before the pipeline runs.
async fn create_stack(
    config: &SdkConfig,
    stack: &str,
    template: &Path,
    parameters: &BTreeMap<String, String>,
    placeholder: &str,
) {
    use aws_sdk_cloudformation::types::{Capability, Parameter};
    let param = |k: &str, v: &str| {
        Parameter::builder()
            .parameter_key(k)
            .parameter_value(v)
            .build()
    };
    let mut all: Vec<Parameter> = parameters.iter().map(|(k, v)| param(k, v)).collect();
    all.push(param("ImageUri", placeholder));
    let cfn = aws_sdk_cloudformation::Client::new(config);
    cfn.create_stack()
        .stack_name(stack)
        .template_body(read(template))
        .set_parameters(Some(all))
        .capabilities(Capability::CapabilityIam)
        .capabilities(Capability::CapabilityNamedIam)
        .send()
        .await
        .unwrap_or_else(|e| {
            let e = aws_smithy_types::error::display::DisplayErrorContext(e);
            panic!("CreateStack {stack}: {e}")
        });
    let described = cfn
        .describe_stacks()
        .stack_name(stack)
        .send()
        .await
        .unwrap();
    let s = &described.stacks()[0];
    let status = s.stack_status().map(|s| s.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("CREATE_COMPLETE"), "{stack}");
    let outputs: Vec<&str> = s.outputs().iter().filter_map(|o| o.output_key()).collect();
    assert!(
        outputs.contains(&"ServiceUrl"),
        "{stack} reports {outputs:?}"
    );
}

/// Rewrites every ExternalId `file` of the copy's `accounts.toml` to a file in `dir`; returns
/// the environment variables the others are read from, with values.
fn write_external_ids(copy: &Path, dir: &Path) -> Vec<(String, String)> {
    let path = copy.join("accounts.toml");
    let mut doc: toml_edit::DocumentMut = read(&path).parse().unwrap();
    let mut env = Vec::new();
    for (name, account) in doc["accounts"].as_table_mut().unwrap().iter_mut() {
        let Some(external) = account.get_mut("external_id") else {
            continue;
        };
        let value = format!("{name}-external-id");
        if let Some(var) = external.get("env").and_then(|v| v.as_str()) {
            env.push((var.to_owned(), value));
        } else if external.get("file").is_some() {
            let file = dir.join(format!("external-id-{name}"));
            std::fs::write(&file, format!("{value}\n")).unwrap();
            external["file"] = toml_edit::value(file.display().to_string());
        }
    }
    std::fs::write(&path, doc.to_string()).unwrap();
    env
}

/// `~/.aws/config` and `~/.aws/credentials` under `home`: the controller's own credentials as
/// the profile `controller`, and every profile a `command` test names (`AWS_PROFILE`, or
/// `AWS_PROFILE_PREFIX` + the stage) assuming a role in the account of the stage running it.
fn write_cli_profiles(
    home: &Path,
    config: &Config,
    ex: &Emulated,
    (key, secret, token): (&str, &str, &str),
) {
    let mut profiles = BTreeMap::new();
    for p in &config.pipelines {
        for stage in &p.stages {
            for name in stage.before.iter().chain(&stage.after) {
                let TestKind::Command { env, .. } = &p.tests[name].kind else {
                    continue;
                };
                let profile = match (env.get("AWS_PROFILE"), env.get("AWS_PROFILE_PREFIX")) {
                    (Some(profile), _) => profile.clone(),
                    (None, Some(prefix)) => format!("{prefix}{}", stage.name),
                    (None, None) => continue,
                };
                let target = &stage.targets[0];
                profiles.insert(
                    profile,
                    (ex.id(&target.account).to_owned(), target.region.clone()),
                );
            }
        }
    }
    let mut text = String::new();
    for (profile, (account, region)) in &profiles {
        text.push_str(&format!(
            "[profile {profile}]\nrole_arn = arn:aws:iam::{account}:role/tollgate-test-commands\n\
             source_profile = controller\nregion = {region}\n\n"
        ));
    }
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(home.join(".aws/config"), text).unwrap();
    let credentials = format!(
        "[controller]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n\
         aws_session_token = {token}\n"
    );
    std::fs::write(home.join(".aws/credentials"), credentials).unwrap();
}

/// The pipeline's topics and its artifact repository, in their own accounts and regions.
async fn set_up_pipeline(configs: &BTreeMap<String, SdkConfig>, config: &Config, p: &Pipeline) {
    let approvals = p
        .stages
        .iter()
        .filter_map(|s| s.approval.as_ref())
        .map(|a| a.topic.to_string());
    let topics = (p.notifications.topic.iter().map(ToString::to_string))
        .chain(p.alarm_topics.iter().map(ToString::to_string))
        .chain(approvals);
    for topic in topics {
        let (region, account, name) = topic_parts(&topic);
        let account = config.accounts.values().find(|a| a.id == account);
        let account = account.unwrap_or_else(|| panic!("{topic}: no account of the example"));
        let made = create_topic(&in_region(&configs[&account.name], &region), &name).await;
        assert_eq!(made.unwrap(), topic);
    }
    // Each approver's own email subscription, filtered to them, made ahead of time as the
    // example's operator would (moto confirms it at once): one the controller made itself
    // would hold the links back the 15 minutes SNS may take to apply its filter policy.
    for approval in p.stages.iter().filter_map(|s| s.approval.as_ref()) {
        let topic = approval.topic.to_string();
        let (region, account, _) = topic_parts(&topic);
        let account = config.accounts.values().find(|a| a.id == account).unwrap();
        let sns = aws_sdk_sns::Client::new(&in_region(&configs[&account.name], &region));
        for a in &approval.approvers {
            sns.subscribe()
                .topic_arn(&topic)
                .protocol("email")
                .endpoint(&a.email)
                .attributes("FilterPolicy", format!(r#"{{"approver":["{}"]}}"#, a.name))
                .send()
                .await
                .unwrap_or_else(|e| panic!("subscribing {} to {topic}: {e:?}", a.name));
        }
    }
    let a = &p.artifact;
    let ecr = aws_sdk_ecr::Client::new(&in_region(&configs[&a.account], &a.region));
    let created = ecr
        .create_repository()
        .repository_name(&a.repository)
        .send()
        .await;
    if let Err(e) = created {
        let e = aws_smithy_types::error::display::DisplayErrorContext(e).to_string();
        assert!(
            e.contains("AlreadyExists"),
            "CreateRepository {}: {e}",
            a.repository
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The examples, and what each promises
// ---------------------------------------------------------------------------------------------

/// Indexes (in moto's recording) of the requests `which` picks, oldest first.
fn positions(recorded: &[RecordedRequest], which: impl Fn(&RecordedRequest) -> bool) -> Vec<usize> {
    (recorded.iter().enumerate())
        .filter(|(_, r)| which(r))
        .map(|(i, _)| i)
        .collect()
}

fn executes(stack: &str) -> impl Fn(&RecordedRequest) -> bool + '_ {
    move |r| {
        r.action.as_deref() == Some("ExecuteChangeSet")
            && form_field(r, "StackName").as_deref() == Some(stack)
    }
}

/// Runs a story on a runtime of four workers, driven from a thread with a 16 MiB stack. The
/// stories deploy through tollgate's CloudFormation deployer in this thread (the examples'
/// prerequisites): in a debug build, that call's poll chain under the AWS SDK and hyper uses
/// nearly all of a test thread's default 2 MiB. A panic in the story fails the test.
fn on_a_large_stack<F: std::future::Future<Output = ()> + 'static>(story: fn() -> F) {
    let thread = std::thread::Builder::new()
        .stack_size(16 * 1024 * 1024)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(story());
        })
        .expect("a thread for the story");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn ecs_fastapi_react_is_promoted_end_to_end_by_tollgate_serve() {
    on_a_large_stack(ecs_fastapi_react_story);
}

async fn ecs_fastapi_react_story() {
    let h = Harness::start("ecs-fastapi-react").await;
    // The configured branch: a build of another branch starts nothing.
    let api = h.pipeline("shop-api");
    let elsewhere = sha_of(api, 99);
    h.deliver(api, &elsewhere, "feature/checkout").await;

    h.run_every_pipeline().await;
    assert_eq!(
        h.release_of(api, &elsewhere).await,
        None,
        "a build of feature/checkout"
    );

    let recorded = h.recorded().await;
    controller_runs_in_beta(&h, &recorded);
    invalidation_after_each_web_deploy(&h, &recorded);
    failed_test_halts_and_notifies(&h).await;
}

/// No separate tools account: Beta is deployed with the controller's own credentials (no role
/// assumed there); the deploy role is assumed in Gamma and Prod only.
fn controller_runs_in_beta(h: &Harness, recorded: &[RecordedRequest]) {
    let assumed: BTreeSet<String> = (recorded.iter())
        .filter(|r| r.action.as_deref() == Some("AssumeRole"))
        .filter_map(|r| form_field(r, "RoleArn"))
        .filter(|arn| arn.ends_with(":role/tollgate-deploy"))
        .map(|arn| arn.split(':').nth(4).unwrap_or_default().to_owned())
        .collect();
    let ids = |names: &[&str]| -> BTreeSet<String> {
        names
            .iter()
            .map(|n| h.config.accounts[*n].id.to_string())
            .collect()
    };
    assert_eq!(
        assumed,
        ids(&["gamma", "prod"]),
        "accounts whose deploy role was assumed"
    );
    for p in &h.config.pipelines {
        for stage in &p.stages {
            let stack = stack_of(stage);
            let keys: BTreeSet<Option<String>> = (recorded.iter())
                .filter(|r| executes(&stack)(r))
                .map(|r| r.access_key_id.clone())
                .collect();
            let own = keys.contains(&Some(h.controller_key.clone()));
            assert_eq!(
                own,
                stage.name == "beta",
                "{stack} deployed with the controller's own key: {keys:?}"
            );
            assert_eq!(keys.len(), 1, "{stack}: {keys:?}");
        }
    }
}

/// shop-web: after every deploy of a stage, invalidate-cdn (the example's script, through the
/// AWS CLI) invalidated that stage's distribution.
fn invalidation_after_each_web_deploy(h: &Harness, recorded: &[RecordedRequest]) {
    let web = h.pipeline("shop-web");
    for stage in &web.stages {
        let stack = stack_of(stage);
        let distribution = &h.distributions[&stack];
        let path = format!("/distribution/{distribution}/invalidation");
        let deploys = positions(recorded, executes(&stack));
        let invalidations = positions(recorded, |r| r.method == "POST" && r.path.ends_with(&path));
        assert_eq!(deploys.len(), 2, "{stack}: two releases deployed");
        assert_eq!(
            invalidations.len(),
            deploys.len(),
            "{stack}: one invalidation per deploy"
        );
        for (deploy, invalidation) in deploys.iter().zip(&invalidations) {
            assert!(
                deploy < invalidation,
                "{stack}: invalidated after its deploy"
            );
        }
        // ... and before the next deploy.
        assert!(invalidations[0] < deploys[1], "{stack}");
    }
}

/// A third shop-api release fails a test in Beta (its `pytest` check): the release halts there
/// (nothing is deployed) and the release topic says why.
///
/// (A failing smoke suite halts the same way, but its checks retry with backoff for about a
/// minute first; `approvals_serve.rs` covers a failing post-deploy test through serve.)
async fn failed_test_halts_and_notifies(h: &Harness) {
    let api = h.pipeline("shop-api");
    let before = h.executions().await;
    let made = h
        .build_failing(api, 3, &api.source.branch, Some("pytest"))
        .await;
    let (id, beta) = h
        .wait(api, &made.sha, "beta", "a failed test", |r| {
            r.status.is_terminal()
        })
        .await;
    assert_eq!(
        beta.status,
        RunStatus::Failed,
        "{}",
        beta.reason.describe(chrono::Utc::now())
    );
    let topic = api.notifications.topic.as_ref().unwrap().to_string();
    let deadline = Instant::now() + LIMIT;
    let notice = loop {
        let published = h.published(&topic).await;
        let found = published.into_iter().find(|m| {
            m.get("Message")
                .is_some_and(|b| b.contains(&id.to_string()) && b.contains("pytest"))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no notification of the halt on {topic}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "halt notification: {:?}\n{}",
        notice.get("Subject"),
        notice["Message"]
    );
    assert_eq!(h.executions().await, before, "nothing was deployed");
}

#[test]
fn serverless_api_is_promoted_end_to_end_by_tollgate_serve() {
    on_a_large_stack(serverless_api_story);
}

async fn serverless_api_story() {
    let h = Harness::start("serverless-api").await;
    let releases = h.run_every_pipeline().await;
    let (first, _) = &releases["orders-api"];
    let p = h.pipeline("orders-api");
    let prod = p.stages.last().unwrap();
    // The backup-orders script, before each Prod deploy: release 1's before its deploy,
    // release 2's after release 1's deploy and before its own (the third change set executed
    // there is release 2's rollback).
    let recorded = h.recorded().await;
    let backups = positions(&recorded, |r| {
        r.action.as_deref() == Some("CreateBackup") && r.body_text().contains("orders-prod")
    });
    let deploys = positions(&recorded, executes("orders-api-prod"));
    assert_eq!(
        (backups.len(), deploys.len()),
        (2, 3),
        "backups, prod change sets"
    );
    assert!(backups[0] < deploys[0] && deploys[0] < backups[1] && backups[1] < deploys[1]);
    let target = &prod.targets[0];
    let config = &h.configs[&target.account];
    let listed = cli(
        h.moto,
        config,
        &target.region,
        &["dynamodb", "list-backups", "--table-name", "orders-prod"],
    )
    .await;
    let names: Vec<&str> = (listed["BackupSummaries"].as_array().unwrap().iter())
        .filter_map(|b| b["BackupName"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("tollgate-r")),
        "{names:?}"
    );
    // The rollback restored release 1's image: the version the `live` alias is shifted to is
    // published from it (moto runs neither the alias nor CodeDeploy: see the README).
    let image = h.deployed(prod).await;
    assert_eq!(image.as_deref(), Some(first.image.as_str()));
}

#[test]
fn nextjs_fastapi_is_promoted_end_to_end_by_tollgate_serve() {
    on_a_large_stack(nextjs_fastapi_story);
}

async fn nextjs_fastapi_story() {
    let h = Harness::start("nextjs-fastapi").await;
    let releases = h.run_every_pipeline().await;
    for (name, (first, second)) in &releases {
        let p = h.pipeline(name);
        // Both images, promoted by digest: every stage's ImageUri is the pushed digest.
        for made in [first, second] {
            assert!(
                made.image.ends_with(&format!("@{}", made.digest)),
                "{}",
                made.image
            );
            assert!(made.digest.starts_with("sha256:"), "{}", made.digest);
        }
        for stage in &p.stages[..2] {
            assert_eq!(
                h.deployed(stage).await.as_deref(),
                Some(second.image.as_str())
            );
        }
        // The integration workflow, dispatched after Beta and Gamma for each release, with the
        // stage's URL, the commit and the stage.
        let dispatched: Vec<(String, String, String)> = (h.github.dispatches().into_iter())
            .filter(|d| d.repository == p.source.repository && d.workflow == "integration.yml")
            .map(|d| {
                (
                    d.inputs["commit"].clone(),
                    d.inputs["stage"].clone(),
                    d.inputs["base_url"].clone(),
                )
            })
            .collect();
        let mut want = Vec::new();
        for made in [first, second] {
            for stage in &p.stages[..2] {
                let url = format!("{}/{}", h.service.url, stack_of(stage));
                want.push((made.sha.clone(), stage.name.to_string(), url));
            }
        }
        assert_eq!(dispatched, want, "{name}: integration.yml dispatches");
    }
    let images: BTreeSet<&str> = releases.values().map(|(f, _)| f.image.as_str()).collect();
    assert_eq!(images.len(), 2, "two services, two images");
}
