//! A three-account world for one pipeline, set up in a running `moto_server`: what the
//! end-to-end tests, the benchmarks and the demo promote releases through.
//!
//! Owns, for one pipeline (default `backend`):
//! - the accounts: the controller/build account [`BUILD_ACCOUNT`] (moto's default) and one
//!   account per stage — beta [`BETA_ACCOUNT`], gamma [`GAMMA_ACCOUNT`], prod [`PROD_ACCOUNT`] —
//!   each with a deploy role ARN and an ExternalId kept in a file (mode 0600) in the world's
//!   directory, written to `accounts/accounts.toml` as `{ file = "…" }`;
//! - an ECR repository in the build account, with images pushed per commit sha by `PutImage`
//!   (a valid Docker v2 manifest; [`World::push_image`] returns moto's digest);
//! - SNS topics: notifications and approvals in the build account, one alarm topic per stage
//!   account;
//! - a small CloudFormation template (one SSM parameter `/<stack>/image` holding the image URI),
//!   and `stages.toml`: beta → gamma → prod, short bakes, one CloudWatch alarm per stage, local
//!   `command` tests, and an optional approval on prod;
//! - starting the CloudWatch CBOR stub with every stage alarm defined and `OK`
//!   ([`World::start_cloudwatch_stub`]).
//!
//! The files are real (`stages.toml`, `accounts/accounts.toml`, the template), so the same
//! world serves `tollgate serve --config <World::stages_path>` as well as an in-process engine.
//!
//! Must never: point at anything but the moto server it was built on, hold real credentials,
//! or be used by the controller at run time.
//!
//! # Guarantees
//! - Every resource is created in the account that owns it, through that account's own
//!   credentials (an STS `AssumeRole` on moto), so moto's account isolation applies.
//! - [`World::push_image`] is idempotent per sha: pushing the same sha again returns the same
//!   digest.
//! - Normal paths return errors (with context) instead of panicking.
//!
//! # Caveats
//! - moto 5.2.5 gaps this world works around: stacks made through change sets report no
//!   Outputs, so a stage's deployed image is read from its SSM parameter
//!   ([`World::deployed_image`]); CloudWatch is served over RPCv2 CBOR, which moto does not
//!   speak, hence the stub; ECR digests are moto's own, not the sha256 of the manifest.
//! - moto 5.2.5 keeps a stack's parameters as they were at its creation when an UPDATE change
//!   set is executed, so a change set back to exactly those parameters is refused as "No updates
//!   are to be performed.": a rollback to the release that created a stack changes nothing on
//!   moto. Scenarios that roll back create the stacks first with [`World::bootstrap_stacks`].
//! - A [`World`] keeps an [`SdkConfig`] for the build account; like every config from
//!   [`MotoServer`], use it from one tokio runtime.
//! - The directory is removed when the world is dropped, unless it was given with
//!   [`WorldBuilder::dir`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aws_config::SdkConfig;
use aws_sdk_ecr::types::ImageIdentifier;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::aws_stubs::cloudwatch::{CloudWatchStub, MetricSpec, Watches};
use crate::moto::{DEFAULT_ACCOUNT_ID, MotoServer};
use crate::sns::TestSigner;
use tollgate::config::{self, Config};
use tollgate::engine::NewRelease;
use tollgate::http::sns_verify::AlarmState;

/// The controller's own account, where images are built: moto's default account.
pub const BUILD_ACCOUNT: &str = DEFAULT_ACCOUNT_ID;
/// The beta stage's account.
pub const BETA_ACCOUNT: &str = "222222222222";
/// The gamma stage's account.
pub const GAMMA_ACCOUNT: &str = "333333333333";
/// The prod stage's account.
pub const PROD_ACCOUNT: &str = "444444444444";
/// The region of every account and target (the region moto's configs use).
pub const REGION: &str = crate::moto::REGION;
/// The role tollgate assumes in each stage account.
pub const DEPLOY_ROLE: &str = "tollgate-deploy";
/// The image parameter of the template.
pub const IMAGE_PARAMETER: &str = "ImageUri";
/// The approver named on prod when approval is on.
pub const APPROVER: &str = "alice";

/// The stages, in order, with their accounts.
const STAGES: [(&str, &str); 3] = [
    ("beta", BETA_ACCOUNT),
    ("gamma", GAMMA_ACCOUNT),
    ("prod", PROD_ACCOUNT),
];

/// One SSM parameter named after the stack, holding the image it runs.
const TEMPLATE: &str = r#"{
  "AWSTemplateFormatVersion": "2010-09-09",
  "Description": "tollgate world: the image a stage runs, kept in an SSM parameter",
  "Parameters": {
    "ImageUri": {"Type": "String", "Description": "repository@sha256:digest"}
  },
  "Resources": {
    "Image": {
      "Type": "AWS::SSM::Parameter",
      "Properties": {
        "Name": {"Fn::Sub": "/${AWS::StackName}/image"},
        "Type": "String",
        "Value": {"Ref": "ImageUri"}
      }
    }
  },
  "Outputs": {
    "ImageUri": {"Value": {"Ref": "ImageUri"}}
  }
}
"#;

/// Checked before the deploy: the release names its commit.
const UNIT_SCRIPT: &str = r#"test -n "$COMMIT_SHA" && echo "unit checks passed for $COMMIT_SHA""#;
/// Checked after each deploy: the stage runs the image pinned by digest.
const VERIFY_SCRIPT: &str = r#"case "$IMAGE_URI" in
  *@sha256:*) echo "$TOLLGATE_STAGE in $AWS_ACCOUNT_ID runs $IMAGE_URI" ;;
  *) echo "image is not pinned by digest: '$IMAGE_URI'" >&2; exit 1 ;;
esac"#;

/// How the world is set up; [`WorldBuilder::build`] makes it.
#[derive(Debug, Clone)]
pub struct WorldBuilder {
    pipeline: String,
    repository: String,
    source: String,
    public_url: String,
    bakes: BTreeMap<String, Duration>,
    prod_approval: bool,
    /// How long prod's approval request stays open.
    approval_timeout: Duration,
    stage_tests: bool,
    /// Extra `command` tests run after a stage's deploy: (stage, test name, argv).
    after_tests: Vec<(String, String, Vec<String>)>,
    /// Stages deployed through CodePipeline instead: stage → (pipeline, rollback stage).
    codepipelines: BTreeMap<String, (String, String)>,
    /// Every stage's `min_datapoints`.
    min_datapoints: u32,
    /// Every stage's `alarm_delay`.
    alarm_delay: String,
    /// Stage accounts that name a `stack_events_topic`: stage → topic ARN.
    stack_events_topics: BTreeMap<String, String>,
    dir: Option<PathBuf>,
}

impl Default for WorldBuilder {
    fn default() -> Self {
        let bakes = STAGES
            .iter()
            .map(|(s, _)| (s.to_string(), Duration::from_secs(1)))
            .collect();
        WorldBuilder {
            pipeline: "backend".into(),
            repository: "backend".into(),
            source: "acme/backend".into(),
            public_url: "http://127.0.0.1:8080".into(),
            bakes,
            prod_approval: true,
            approval_timeout: Duration::from_secs(3600),
            stage_tests: true,
            after_tests: Vec::new(),
            codepipelines: BTreeMap::new(),
            min_datapoints: 0,
            alarm_delay: "0s".into(),
            stack_events_topics: BTreeMap::new(),
            dir: None,
        }
    }
}

impl WorldBuilder {
    /// Pipeline `backend`, repository `backend`, 1 s bakes, approval on prod, command tests on.
    pub fn new() -> WorldBuilder {
        WorldBuilder::default()
    }

    /// The pipeline's name (also the prefix of stacks, alarms and topics).
    pub fn pipeline(mut self, name: impl Into<String>) -> WorldBuilder {
        self.pipeline = name.into();
        self
    }

    /// The ECR repository in the build account.
    pub fn repository(mut self, name: impl Into<String>) -> WorldBuilder {
        self.repository = name.into();
        self
    }

    /// The GitHub repository (`owner/name`) the pipeline follows.
    pub fn source(mut self, repository: impl Into<String>) -> WorldBuilder {
        self.source = repository.into();
        self
    }

    /// `[controller] public_url`.
    pub fn public_url(mut self, url: impl Into<String>) -> WorldBuilder {
        self.public_url = url.into();
        self
    }

    /// The bake time of `stage` (`beta`, `gamma` or `prod`); other names are ignored.
    pub fn bake(mut self, stage: &str, bake: Duration) -> WorldBuilder {
        if let Some(b) = self.bakes.get_mut(stage) {
            *b = bake;
        }
        self
    }

    /// The same bake time for every stage.
    pub fn bake_all(mut self, bake: Duration) -> WorldBuilder {
        self.bakes.values_mut().for_each(|b| *b = bake);
        self
    }

    /// Every stage's `min_datapoints`. Default 0: the emulated services get no traffic, so
    /// their alarms' metrics have no data points unless a test puts samples on them
    /// ([`World::alarm_metric`]).
    pub fn min_datapoints(mut self, n: u32) -> WorldBuilder {
        self.min_datapoints = n;
        self
    }

    /// Every stage's `alarm_delay`. Default `0s`: the stub's alarms are one-minute alarms, so
    /// `auto` would hold every bake a minute past its time.
    pub fn alarm_delay(mut self, delay: &str) -> WorldBuilder {
        self.alarm_delay = delay.into();
        self
    }

    /// Gives `stage`'s account a `stack_events_topic` (the topic its stacks' events are
    /// published to).
    pub fn stack_events_topic(mut self, stage: &str, topic: impl Into<String>) -> WorldBuilder {
        self.stack_events_topics
            .insert(stage.to_owned(), topic.into());
        self
    }

    /// Whether prod asks [`APPROVER`] for approval.
    pub fn prod_approval(mut self, on: bool) -> WorldBuilder {
        self.prod_approval = on;
        self
    }

    /// How long prod's approval request stays open (1 h unless set).
    pub fn approval_timeout(mut self, timeout: Duration) -> WorldBuilder {
        self.approval_timeout = timeout;
        self
    }

    /// Whether stages run local `command` tests (`unit` before beta, `verify` after each deploy).
    pub fn stage_tests(mut self, on: bool) -> WorldBuilder {
        self.stage_tests = on;
        self
    }

    /// Adds a `command` test `name` running `argv` after `stage`'s deploy (after `verify`).
    pub fn after_test(mut self, stage: &str, name: &str, argv: Vec<String>) -> WorldBuilder {
        self.after_tests
            .push((stage.to_owned(), name.to_owned(), argv));
        self
    }

    /// Deploys `stage` through the CodePipeline `pipeline` in its account (variable
    /// [`IMAGE_PARAMETER`], `RollbackStage` on `rollback_stage`) instead of CloudFormation.
    /// moto 5.2.5 does not serve what the deployer needs (`GetPipelineState`, `RollbackStage`,
    /// executions that take time): point the deployer at
    /// [`crate::aws_stubs::codepipeline::CodePipelineStub`] and create the pipeline there.
    pub fn codepipeline(
        mut self,
        stage: &str,
        pipeline: &str,
        rollback_stage: &str,
    ) -> WorldBuilder {
        let deploy = (pipeline.to_owned(), rollback_stage.to_owned());
        self.codepipelines.insert(stage.to_owned(), deploy);
        self
    }

    /// Writes the files into `dir` (created if missing, kept afterwards) instead of a fresh
    /// temporary directory that is removed with the world.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> WorldBuilder {
        self.dir = Some(dir.into());
        self
    }

    /// Creates the resources in `moto` and writes the configuration files.
    pub async fn build(self, moto: &MotoServer) -> Result<World> {
        let (dir, owned) = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                (d.clone(), false)
            }
            None => (fresh_dir()?, true),
        };
        let mut world = World {
            dir: WorldDir { path: dir, owned },
            pipeline: self.pipeline.clone(),
            repository: self.repository.clone(),
            source: self.source.clone(),
            build_config: moto.sdk_config(),
            topics: Topics::default(),
            stages: Vec::new(),
        };
        world.write_external_ids(&self)?;
        world.create_repository().await?;
        world.create_topics(moto).await?;
        world.write_files(&self)?;
        Ok(world)
    }
}

/// One stage of the world: its account and what it owns there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldStage {
    /// `beta`, `gamma` or `prod`; also the account's name in `accounts.toml`.
    pub name: String,
    pub account_id: String,
    /// `arn:aws:iam::<id>:role/tollgate-deploy`.
    pub role_arn: String,
    /// The file holding the account's ExternalId.
    pub external_id_file: PathBuf,
    /// `<pipeline>-<stage>`.
    pub stack: String,
    /// The SSM parameter the template writes: `/<stack>/image`.
    pub parameter: String,
    /// The stage's CloudWatch alarm: `<pipeline>-<stage>-5xx`.
    pub alarm: String,
    /// The SNS topic the alarm notifies, in the stage's account.
    pub alarm_topic: String,
    pub bake: Duration,
}

/// The SNS topics of the world.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topics {
    /// Halts and rollbacks, in the build account.
    pub notifications: String,
    /// Approval requests, in the build account.
    pub approvals: String,
}

/// The world's directory; removed on drop when the world made it.
#[derive(Debug)]
struct WorldDir {
    path: PathBuf,
    owned: bool,
}

impl Drop for WorldDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A three-account world in moto, with its configuration files.
#[derive(Debug)]
pub struct World {
    dir: WorldDir,
    pipeline: String,
    repository: String,
    source: String,
    build_config: SdkConfig,
    topics: Topics,
    stages: Vec<WorldStage>,
}

impl World {
    /// A builder with the defaults of [`WorldBuilder::new`].
    pub fn builder() -> WorldBuilder {
        WorldBuilder::new()
    }

    /// The directory holding `stages.toml`, `accounts/`, the template and the ExternalIds.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// `stages.toml`: what `tollgate serve --config` and `tollgate validate` take.
    pub fn stages_path(&self) -> PathBuf {
        self.dir().join("stages.toml")
    }

    /// `accounts/accounts.toml`.
    pub fn accounts_path(&self) -> PathBuf {
        self.dir().join("accounts").join("accounts.toml")
    }

    /// The CloudFormation template every stage deploys.
    pub fn template_path(&self) -> PathBuf {
        self.dir().join("service.json")
    }

    /// The pipeline's name.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// The SNS topics in the build account.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Subscribes [`APPROVER`]'s email address to the approval topic, filtered to them, as an
    /// operator does ahead of time (moto confirms it at once). A subscription the controller
    /// made itself would hold the links back for 15 minutes, the time SNS may take to apply
    /// a new filter policy.
    pub async fn subscribe_approver(&self) -> Result<()> {
        aws_sdk_sns::Client::new(&self.build_config)
            .subscribe()
            .topic_arn(&self.topics.approvals)
            .protocol("email")
            .endpoint(format!("{APPROVER}@example.com"))
            .attributes("FilterPolicy", format!(r#"{{"approver":["{APPROVER}"]}}"#))
            .send()
            .await
            .context("subscribing the approver to the approval topic")?;
        Ok(())
    }

    /// The stages in order: beta, gamma, prod.
    pub fn stages(&self) -> &[WorldStage] {
        &self.stages
    }

    /// One stage by name.
    pub fn stage(&self, name: &str) -> Result<&WorldStage> {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("the world has no stage `{name}`"))
    }

    /// Loads and validates the written `stages.toml` and `accounts.toml`.
    pub fn config(&self) -> Result<Config> {
        let loaded = config::load(&self.stages_path()).map_err(|e| anyhow!("{e}"))?;
        Ok(loaded.config)
    }

    /// `123456789012.dkr.ecr.<region>.amazonaws.com/<repository>@<digest>`: the URI every stage
    /// deploys for `digest` (promotion retags in the build repository).
    pub fn image_uri(&self, digest: &str) -> String {
        format!(
            "{BUILD_ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{}@{digest}",
            self.repository
        )
    }

    /// Pushes an image for commit `sha`, tagged with the sha (as CI would), and returns its
    /// digest (`sha256:…`). Pushing the same sha again returns the same digest.
    pub async fn push_image(&self, sha: &str) -> Result<String> {
        put_image(&self.build_config, &self.repository, sha).await
    }

    /// The digest the tag `sha` points at in the build repository.
    pub async fn digest_of(&self, sha: &str) -> Result<String> {
        image_digest(&self.build_config, &self.repository, sha).await
    }

    /// The image a stage runs now, read from its SSM parameter in its account (`None`: not
    /// deployed). moto 5.2.5 reports no Outputs for stacks made through change sets.
    pub async fn deployed_image(&self, moto: &MotoServer, stage: &str) -> Result<Option<String>> {
        let s = self.stage(stage)?;
        moto.ssm_parameter(&s.account_id, &s.parameter).await
    }

    /// Creates every stage's stack once, as a platform team does before handing a service to
    /// the pipeline, with the image parameter set to `placeholder`.
    ///
    /// Also covers a moto 5.2.5 gap: executing an UPDATE change set leaves the stack's recorded
    /// parameters as they were at creation, so a later change set back to the creating
    /// release's image is judged empty ("No updates are to be performed") and changes
    /// nothing. With the stacks created here, every release's deploy and every rollback is an
    /// update moto carries out.
    pub async fn bootstrap_stacks(&self, moto: &MotoServer, placeholder: &str) -> Result<()> {
        for s in &self.stages {
            let config = moto.sdk_config_for_account(&s.account_id).await?;
            aws_sdk_cloudformation::Client::new(&config)
                .create_stack()
                .stack_name(&s.stack)
                .template_body(TEMPLATE)
                .parameters(
                    aws_sdk_cloudformation::types::Parameter::builder()
                        .parameter_key(IMAGE_PARAMETER)
                        .parameter_value(placeholder)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| {
                    let e = aws_smithy_types::error::display::DisplayErrorContext(e);
                    anyhow!("CreateStack {} in {}: {e}", s.stack, s.account_id)
                })?;
        }
        Ok(())
    }

    /// Starts the CloudWatch CBOR stub (the moto gap: the SDK speaks RPCv2 CBOR to CloudWatch)
    /// in the current tokio runtime, with every stage's alarm defined and `OK`. Its
    /// [`CloudWatchStub::endpoint`] goes to `CloudWatchAlarms::with_endpoint_url`, or to a
    /// `tollgate serve` process through [`World::serve_env`].
    pub async fn start_cloudwatch_stub(&self) -> Result<CloudWatchStub> {
        let stub = CloudWatchStub::start().await?;
        for s in &self.stages {
            stub.set_alarm_watching(&s.alarm, "OK", Watches::Metric(Self::alarm_metric(s)));
        }
        Ok(stub)
    }

    /// What `stage`'s alarm watches in the CloudWatch stub: the `Sum` of a high-resolution
    /// metric named after the alarm over 10 s, the shortest period an alarm may have (so a
    /// data point counts soon after a deploy). Put samples on it to make the service busy.
    pub fn alarm_metric(stage: &WorldStage) -> MetricSpec {
        MetricSpec {
            period: 10,
            ..MetricSpec::sum(&stage.alarm)
        }
    }

    /// The environment of a `tollgate serve` process over this world: every AWS call goes to
    /// `moto` (`AWS_ENDPOINT_URL`) except CloudWatch's, which go to the CBOR stub
    /// (`AWS_ENDPOINT_URL_CLOUDWATCH`: the AWS SDK prefers a service's own endpoint variable to
    /// the global one), with static test credentials and the world's region.
    pub fn serve_env(
        &self,
        moto: &MotoServer,
        cloudwatch: &CloudWatchStub,
    ) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", moto.endpoint()),
            ("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .to_vec()
    }

    /// A signed SNS notification body, in AWS's format, saying that `stage`'s alarm changed to
    /// `state`, as CloudWatch would publish it to the stage's alarm topic.
    pub fn alarm_notification(
        &self,
        signer: &TestSigner,
        stage: &str,
        state: AlarmState,
    ) -> Result<String> {
        let s = self.stage(stage)?;
        Ok(signer.alarm_notification(&s.alarm_topic, &s.alarm, &s.account_id, REGION, state))
    }

    /// Writes `signer`'s certificate into `<dir>/sns-certs` for every region and returns that
    /// directory: the pre-seeded SNS certificate cache (`tollgate serve --sns-cert-cache`).
    pub fn seed_sns_certificates(&self, signer: &TestSigner) -> Result<PathBuf> {
        let dir = self.dir().join("sns-certs");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        signer.seed_cache_dir(&dir)?;
        Ok(dir)
    }

    /// A release of commit `sha` on `main` for this world's pipeline, by an author who is not
    /// the approver.
    pub fn release(&self, sha: &str, message: &str) -> NewRelease {
        NewRelease {
            pipeline: self.pipeline.clone(),
            sha: sha.to_owned(),
            branch: "main".into(),
            author_name: "Carol".into(),
            author_email: "carol@example.com".into(),
            author_login: Some("carol".into()),
            message: message.to_owned(),
            url: Some(format!("https://github.com/{}/commit/{sha}", self.source)),
            ..NewRelease::default()
        }
    }

    // ----- set-up ------------------------------------------------------------------------

    fn write_external_ids(&mut self, spec: &WorldBuilder) -> Result<()> {
        let secrets = self.dir().join("secrets");
        std::fs::create_dir_all(&secrets)
            .with_context(|| format!("creating {}", secrets.display()))?;
        for (name, id) in STAGES {
            let file = secrets.join(format!("{name}.external-id"));
            write_private(&file, &format!("tollgate-{name}-{}\n", random_hex(12)))?;
            let stack = format!("{}-{name}", self.pipeline);
            self.stages.push(WorldStage {
                name: name.to_owned(),
                account_id: id.to_owned(),
                role_arn: format!("arn:aws:iam::{id}:role/{DEPLOY_ROLE}"),
                external_id_file: file,
                parameter: format!("/{stack}/image"),
                stack,
                alarm: format!("{}-{name}-5xx", self.pipeline),
                alarm_topic: String::new(),
                bake: spec.bakes.get(name).copied().unwrap_or_default(),
            });
        }
        Ok(())
    }

    async fn create_repository(&self) -> Result<()> {
        let created = aws_sdk_ecr::Client::new(&self.build_config)
            .create_repository()
            .repository_name(&self.repository)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("RepositoryAlreadyExistsException") => Ok(()),
            Err(e) => Err(anyhow!(
                "CreateRepository {}: {}",
                self.repository,
                aws_smithy_types::error::display::DisplayErrorContext(e)
            )),
        }
    }

    async fn create_topics(&mut self, moto: &MotoServer) -> Result<()> {
        let p = self.pipeline.clone();
        self.topics = Topics {
            notifications: create_topic(&self.build_config, &format!("tollgate-{p}")).await?,
            approvals: create_topic(&self.build_config, &format!("tollgate-{p}-approvals")).await?,
        };
        for stage in &mut self.stages {
            let config = moto.sdk_config_for_account(&stage.account_id).await?;
            stage.alarm_topic = create_topic(&config, &format!("{p}-alarms")).await?;
        }
        Ok(())
    }

    fn write_files(&self, spec: &WorldBuilder) -> Result<()> {
        std::fs::create_dir_all(self.dir().join("accounts"))
            .with_context(|| format!("creating {}/accounts", self.dir().display()))?;
        write(&self.template_path(), TEMPLATE)?;
        write(&self.accounts_path(), &self.accounts_toml(spec))?;
        write(&self.stages_path(), &self.stages_toml(spec))
    }

    fn accounts_toml(&self, spec: &WorldBuilder) -> String {
        let mut out = String::from(
            "# Accounts of an emulated world (moto): the controller builds in `build` and\n\
             # assumes the deploy role in each stage account with the ExternalId in its file.\n",
        );
        out.push_str(&format!(
            "\n[accounts.build]\nid = {}\nregion = {}\ncontroller = true\n",
            q(BUILD_ACCOUNT),
            q(REGION)
        ));
        for s in &self.stages {
            let file = s.external_id_file.display().to_string();
            out.push_str(&format!(
                "\n[accounts.{}]\nid = {}\nrole_arn = {}\nexternal_id = {{ file = {} }}\nregion = {}\n",
                s.name,
                q(&s.account_id),
                q(&s.role_arn),
                q(&file),
                q(REGION)
            ));
            if let Some(topic) = spec.stack_events_topics.get(&s.name) {
                out.push_str(&format!("stack_events_topic = {}\n", q(topic)));
            }
        }
        out
    }

    fn stages_toml(&self, spec: &WorldBuilder) -> String {
        let alarm_topics: Vec<String> = self.stages.iter().map(|s| q(&s.alarm_topic)).collect();
        let mut out = format!(
            "# One pipeline through an emulated three-account world (moto): beta -> gamma -> prod.\n\
             accounts = \"accounts/accounts.toml\"\n\n\
             [controller]\npublic_url = {}\n\n\
             [[pipelines]]\nname = {}\n\n\
             [pipelines.source]\nrepository = {}\nbranch = \"main\"\n\n\
             [pipelines.artifact]\nrepository = {}\naccount = \"build\"\nregion = {}\n\
             tag = \"{{sha}}\"\nwait = \"30s\"\n\n\
             [pipelines.notifications]\ntopic = {}\nalarm_topics = [{}]\n",
            q(&spec.public_url),
            q(&self.pipeline),
            q(&spec.source),
            q(&self.repository),
            q(REGION),
            q(&self.topics.notifications),
            alarm_topics.join(", "),
        );
        if spec.stage_tests {
            out.push_str(&test_toml("unit", UNIT_SCRIPT));
            out.push_str(&test_toml("verify", VERIFY_SCRIPT));
        }
        for (_, name, argv) in &spec.after_tests {
            let argv: Vec<String> = argv.iter().map(|a| q(a)).collect();
            out.push_str(&format!(
                "\n[pipelines.tests.{name}]\nkind = \"command\"\nargv = [{}]\ntimeout = \"30s\"\n",
                argv.join(", ")
            ));
        }
        for (i, s) in self.stages.iter().enumerate() {
            out.push_str(&self.stage_toml(spec, i, s));
        }
        out
    }

    fn stage_toml(&self, spec: &WorldBuilder, index: usize, s: &WorldStage) -> String {
        let mut after: Vec<String> = Vec::new();
        let before = match (spec.stage_tests, index) {
            (true, 0) => "before = [\"unit\"]\n",
            _ => "",
        };
        if spec.stage_tests {
            after.push(q("verify"));
        }
        for (stage, name, _) in &spec.after_tests {
            if stage == &s.name {
                after.push(q(name));
            }
        }
        let after = if after.is_empty() {
            String::new()
        } else {
            format!("after = [{}]\n", after.join(", "))
        };
        let mut out = format!(
            "\n[[pipelines.stages]]\nname = {}\ntargets = [{{ account = {}, region = {} }}]\n\
             {before}{after}bake = \"{}ms\"\nalarms = [{}]\nmin_datapoints = {}\n\
             alarm_delay = {}\n\n[pipelines.stages.deploy]\n",
            q(&s.name),
            q(&s.name),
            q(REGION),
            s.bake.as_millis(),
            q(&s.alarm),
            spec.min_datapoints,
            q(&spec.alarm_delay),
        );
        match spec.codepipelines.get(&s.name) {
            Some((pipeline, rollback_stage)) => out.push_str(&format!(
                "kind = \"codepipeline\"\npipeline = {}\nvariable = {}\nrollback_stage = {}\n",
                q(pipeline),
                q(IMAGE_PARAMETER),
                q(rollback_stage),
            )),
            None => out.push_str(&format!(
                "kind = \"cloudformation\"\nstack = {}\ntemplate = \"service.json\"\n\
                 image_parameter = {}\n",
                q(&s.stack),
                q(IMAGE_PARAMETER),
            )),
        }
        if spec.prod_approval && s.name == "prod" {
            out.push_str(&format!(
                "\n[pipelines.stages.approval]\ntopic = {}\ntimeout = \"{}s\"\n\
                 approvers = [{{ name = {}, email = \"{APPROVER}@example.com\", github = {} }}]\n",
                q(&self.topics.approvals),
                spec.approval_timeout.as_secs(),
                q(APPROVER),
                q(APPROVER),
            ));
        }
        out
    }
}

const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A Docker v2 image manifest whose config and layer digests are derived from `sha`, so each
/// commit has its own image (moto derives the image digest from them).
fn manifest(sha: &str) -> String {
    let digest = |what: &str| hex::encode(Sha256::digest(format!("{what}:{sha}").as_bytes()));
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1469,
            "digest": format!("sha256:{}", digest("config")),
        },
        "layers": [{
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 2_811_478,
            "digest": format!("sha256:{}", digest("layer")),
        }],
    })
    .to_string()
}

/// Pushes an image for commit `sha` into `repository` of the account `config` signs in to,
/// tagged with the sha (as CI would), and returns its digest (`sha256:…`). Pushing the same sha
/// again returns the same digest.
pub async fn put_image(config: &SdkConfig, repository: &str, sha: &str) -> Result<String> {
    let pushed = aws_sdk_ecr::Client::new(config)
        .put_image()
        .repository_name(repository)
        .image_manifest(manifest(sha))
        .image_manifest_media_type(MANIFEST_TYPE)
        .image_tag(sha)
        .send()
        .await;
    match pushed {
        Ok(out) => out
            .image()
            .and_then(|i| i.image_id())
            .and_then(|id| id.image_digest())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("PutImage for {sha} returned no digest")),
        Err(e) if e.code() == Some("ImageAlreadyExistsException") => {
            image_digest(config, repository, sha).await
        }
        Err(e) => Err(anyhow!(
            "PutImage {repository}:{sha}: {}",
            aws_smithy_types::error::display::DisplayErrorContext(e)
        )),
    }
}

/// The digest the tag `sha` points at in `repository`.
pub async fn image_digest(config: &SdkConfig, repository: &str, sha: &str) -> Result<String> {
    let id = ImageIdentifier::builder().image_tag(sha).build();
    let out = aws_sdk_ecr::Client::new(config)
        .describe_images()
        .repository_name(repository)
        .image_ids(id)
        .send()
        .await
        .map_err(|e| {
            let e = aws_smithy_types::error::display::DisplayErrorContext(e);
            anyhow!("DescribeImages {repository}:{sha}: {e}")
        })?;
    let digest = out.image_details().first().and_then(|d| d.image_digest());
    digest
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no image {repository}:{sha}"))
}

/// Creates (or finds) the SNS topic `name` in the account and region of `config`; returns its ARN.
pub async fn create_topic(config: &SdkConfig, name: &str) -> Result<String> {
    let out = aws_sdk_sns::Client::new(config)
        .create_topic()
        .name(name)
        .send()
        .await
        .map_err(|e| {
            let e = aws_smithy_types::error::display::DisplayErrorContext(e);
            anyhow!("CreateTopic {name}: {e}")
        })?;
    out.topic_arn()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("CreateTopic {name} returned no ARN"))
}

fn test_toml(name: &str, script: &str) -> String {
    format!(
        "\n[pipelines.tests.{name}]\nkind = \"command\"\nargv = [\"sh\", \"-c\", {}]\ntimeout = \"30s\"\n",
        q(script)
    )
}

/// `s` as a TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.r#gen::<u8>()))
        .collect()
}

/// A new, empty directory under the system's temporary directory.
fn fresh_dir() -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for _ in 0..8 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "tollgate-world-{}-{n}-{}",
            std::process::id(),
            random_hex(4)
        );
        let dir = std::env::temp_dir().join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("could not create a fresh directory for the world")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_differ_per_commit_and_are_json() {
        let a: serde_json::Value = serde_json::from_str(&manifest("a")).unwrap();
        let b: serde_json::Value = serde_json::from_str(&manifest("b")).unwrap();
        assert_eq!(a["schemaVersion"], 2);
        assert_ne!(a["layers"][0]["digest"], b["layers"][0]["digest"]);
    }

    #[test]
    fn toml_strings_are_quoted_and_escaped() {
        assert_eq!(q("plain"), "\"plain\"");
        let parsed: toml::Value = toml::from_str(&format!("x = {}", q("a \"b\"\n$c"))).unwrap();
        assert_eq!(parsed["x"].as_str(), Some("a \"b\"\n$c"));
    }
}
