//! Checks the meaning of the raw configuration and builds the typed model.
//!
//! Every problem becomes a located [`Diagnostic`]; all of them are collected in one pass, so
//! a user fixes a file in one round. A model is returned only when there is no error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diag::{Diagnostic, Locator, Seg, Severity};
use super::model::*;
use super::raw::*;
use super::values;
use crate::aws::cloudformation::template;
use crate::cfg_path;
use crate::domain::names::Arn;

const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Data points each alarm's metric needs since the deploy finished, when a stage has alarms
/// and does not say: three, the evaluation periods of a typical CloudWatch alarm.
pub const DEFAULT_MIN_DATAPOINTS: u32 = 3;
/// The most data points a stage may ask for (a week of one-minute data points).
pub const MAX_MIN_DATAPOINTS: u32 = 7 * 24 * 60;
/// How long past the bake time a stage waits for missing data, by default and at most.
pub const DEFAULT_BAKE_MAX_WAIT: Duration = Duration::from_secs(3600);
pub const MAX_BAKE_MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Collects diagnostics for one file.
pub(crate) struct Ctx<'a> {
    pub loc: &'a Locator,
    pub diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub fn error(&mut self, path: Vec<Seg>, message: String, help: &str) {
        let d = self.loc.at(&path, Severity::Error, message, help);
        self.diags.push(d);
    }

    /// An error located at the key that ends `path` rather than at its value.
    pub fn error_at_key(&mut self, path: Vec<Seg>, message: String, help: &str) {
        let d = self.loc.at_key(&path, message, help);
        self.diags.push(d);
    }

    pub fn warn(&mut self, path: Vec<Seg>, message: String, help: &str) {
        let d = self.loc.at(&path, Severity::Warning, message, help);
        self.diags.push(d);
    }

    /// Runs a value parser; on failure records an error at `path`.
    fn check<T>(&mut self, path: Vec<Seg>, r: Result<T, String>, help: &str) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(msg) => {
                self.error(path, msg, help);
                None
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        path: Vec<Seg>,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        match text {
            None => default,
            Some(t) => self
                .check(
                    path,
                    values::duration(t),
                    "write it like `30s`, `10m` or `1h30m`",
                )
                .unwrap_or(default),
        }
    }
}

/// Validates the accounts file.
pub(crate) fn accounts(raw: RawAccountsFile, cx: &mut Ctx) -> BTreeMap<String, Account> {
    let mut out = BTreeMap::new();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for (name, a) in raw.accounts {
        let p = |k: &str| cfg_path!["accounts", name.clone(), k];
        if let Err(m) = values::name(&name) {
            cx.error(cfg_path!["accounts", name.clone()], m, "rename the account");
        }
        cx.check(
            p("id"),
            values::account_id(&a.id),
            "use the 12-digit account id, quoted",
        );
        if let Some(other) = ids.insert(a.id.clone(), name.clone()) {
            cx.error(
                p("id"),
                format!("account id {} is also used by account `{other}`", a.id),
                "each account name must have its own id",
            );
        }
        cx.check(
            p("region"),
            values::region(&a.region),
            "use a region like `eu-west-1`",
        );
        check_account_role(&name, &a, cx);
        let session_duration = cx.duration(
            p("session_duration"),
            a.session_duration.as_deref(),
            Duration::from_secs(3600),
        );
        if !(Duration::from_secs(900)..=Duration::from_secs(12 * 3600)).contains(&session_duration)
        {
            cx.error(
                p("session_duration"),
                "session_duration must be between 15m and 12h".into(),
                "AWS accepts 900 s to 12 h (1 h when roles are chained)",
            );
        }
        check_stack_events_topic(&name, &a, cx);
        let external_id = secret_ref(&name, a.external_id.as_ref(), cx);
        out.insert(
            name.clone(),
            Account {
                name,
                id: a.id.into(),
                role_arn: a.role_arn.map(Arn::from),
                external_id,
                region: a.region,
                controller: a.controller,
                session_duration,
                stack_events_topic: a.stack_events_topic.map(Arn::from),
            },
        );
    }
    if out.values().filter(|a| a.controller).count() > 1 {
        cx.error(
            cfg_path!["accounts"],
            "more than one account has `controller = true`".into(),
            "the controller runs in exactly one account",
        );
    }
    out
}

/// A topic ARN in the account itself: CloudFormation publishes the stack events of an account
/// to a topic the stack names, and tollgate names only the account's own.
fn check_stack_events_topic(name: &str, a: &RawAccount, cx: &mut Ctx) {
    let Some(topic) = &a.stack_events_topic else {
        return;
    };
    let p = cfg_path!["accounts", name.to_string(), "stack_events_topic"];
    let Some(arn) = cx.check(
        p.clone(),
        values::topic_arn(topic),
        "use arn:aws:sns:REGION:ACCOUNT:NAME",
    ) else {
        return;
    };
    if arn.account != a.id {
        cx.error(
            p,
            format!(
                "the stack events topic is in account {}, not in account `{name}` ({})",
                arn.account, a.id
            ),
            "name a topic in this account (the bootstrap template makes one)",
        );
    }
}

fn check_account_role(name: &str, a: &RawAccount, cx: &mut Ctx) {
    let p = |k: &str| cfg_path!["accounts", name.to_string(), k];
    match (&a.role_arn, a.controller) {
        (None, false) => cx.error(
            cfg_path!["accounts", name.to_string()],
            format!("account `{name}` has no `role_arn`"),
            "add the deploy role created by accounts/bootstrap/deploy-role.yaml, or set `controller = true` for the controller's own account",
        ),
        (Some(_), true) => cx.error(
            p("role_arn"),
            format!("account `{name}` is the controller's own account and also has a `role_arn`"),
            "the controller uses its own credentials there; remove `role_arn`",
        ),
        (Some(arn), false) => {
            if let Some(parsed) = cx.check(p("role_arn"), values::role_arn(arn), "use arn:aws:iam::ACCOUNT:role/NAME") {
                if parsed.account != a.id && values::account_id(&a.id).is_ok() {
                    cx.error(
                        p("role_arn"),
                        format!("role ARN is in account {} but the account id is {}", parsed.account, a.id),
                        "the deploy role must live in the account it deploys to",
                    );
                }
            }
            if a.external_id.is_none() {
                cx.error(
                    cfg_path!["accounts", name.to_string()],
                    format!("account `{name}` has a role but no `external_id`"),
                    "add `external_id = { env = \"VAR\" }` or `{ file = \"/path\" }`",
                );
            }
        }
        (None, true) => {}
    }
}

fn secret_ref(name: &str, r: Option<&RawSecretRef>, cx: &mut Ctx) -> Option<SecretRef> {
    let path = cfg_path!["accounts", name.to_string(), "external_id"];
    match r? {
        // Located at the key: the value is the secret and must not be quoted.
        RawSecretRef::Literal(_) => {
            cx.error_at_key(
                path,
                "the external id is written literally in the file".into(),
                "never put the secret itself here: use `{ env = \"VAR\" }` or `{ file = \"/path\" }`",
            );
            None
        }
        RawSecretRef::Ref(RawSecretTable {
            env: Some(v),
            file: None,
        }) => Some(SecretRef::Env(v.clone())),
        RawSecretRef::Ref(RawSecretTable {
            env: None,
            file: Some(f),
        }) => Some(SecretRef::File(PathBuf::from(f))),
        RawSecretRef::Ref(_) => {
            cx.error(
                path,
                "external_id needs exactly one of `env` or `file`".into(),
                "write `{ env = \"VAR\" }` or `{ file = \"/path\" }`",
            );
            None
        }
    }
}

/// Validates stages.toml against the accounts and builds the pipelines.
pub(crate) fn pipelines(
    raw: Vec<RawPipeline>,
    accounts: &BTreeMap<String, Account>,
    base: &Path,
    cx: &mut Ctx,
) -> Vec<Pipeline> {
    if raw.is_empty() {
        cx.error(
            cfg_path![],
            "no pipelines are defined".into(),
            "add a `[[pipelines]]` table",
        );
    }
    approvers_agree_per_topic(&raw, cx);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        if !seen.insert(p.name.clone()) {
            cx.error(
                cfg_path!["pipelines", i, "name"],
                format!("pipeline `{}` is defined twice", p.name),
                "pipeline names must be unique",
            );
        }
        out.push(pipeline(i, p, accounts, base, cx));
    }
    out
}

/// On one approval topic an approver's name is one address, and an address one approver's,
/// across every stage that uses the topic: the controller keeps one email subscription per
/// approver on it, filtered to their name at their address, and removes one filtered to them
/// at another address, so two stages that disagree would undo each other's subscriptions (and
/// two approvers at one address would each receive the other's links).
fn approvers_agree_per_topic(raw: &[RawPipeline], cx: &mut Ctx) {
    // (topic, name) → address; (topic, address) → name. Addresses compared ignoring case.
    let mut address_of: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut name_at: BTreeMap<(&str, String), &str> = BTreeMap::new();
    for (i, p) in raw.iter().enumerate() {
        for (j, s) in p.stages.iter().enumerate() {
            let Some(a) = &s.approval else {
                continue;
            };
            for (k, ap) in a.approvers.iter().enumerate() {
                let at = cfg_path![
                    "pipelines",
                    i,
                    "stages",
                    j,
                    "approval",
                    "approvers",
                    k,
                    "email"
                ];
                let topic = a.topic.as_str();
                let known = *address_of.entry((topic, &ap.name)).or_insert(&ap.email);
                if !known.eq_ignore_ascii_case(&ap.email) {
                    cx.error(
                        at.clone(),
                        format!(
                            "approver `{}` is `{}` here and `{known}` on another stage with the \
                             same approval topic",
                            ap.name, ap.email
                        ),
                        "give an approver the same address on every stage of a topic",
                    );
                    continue;
                }
                let other = *name_at
                    .entry((topic, ap.email.to_ascii_lowercase()))
                    .or_insert(&ap.name);
                if other != ap.name {
                    cx.error(
                        at,
                        format!(
                            "`{}` is approver `{other}`'s address too on this approval topic",
                            ap.email
                        ),
                        "give each approver an address of their own: each would receive the \
                         other's links",
                    );
                }
            }
        }
    }
}

fn pipeline(
    i: usize,
    p: RawPipeline,
    accounts: &BTreeMap<String, Account>,
    base: &Path,
    cx: &mut Ctx,
) -> Pipeline {
    let at = |rest: &[&str]| {
        let mut v = cfg_path!["pipelines", i];
        v.extend(rest.iter().map(|s| Seg::from(*s)));
        v
    };
    cx.check(
        at(&["name"]),
        values::name(&p.name),
        "use letters, digits, `-` or `_`",
    );
    cx.check(
        at(&["source", "repository"]),
        values::repository(&p.source.repository),
        "write `owner/name`",
    );
    let artifact = artifact(i, &p.artifact, accounts, cx);
    let tests: BTreeMap<String, TestDef> = p
        .tests
        .iter()
        .filter_map(|(name, t)| test(i, name, t, base, cx).map(|d| (name.clone(), d)))
        .collect();
    let notifications = Notifications {
        topic: p.notifications.topic.clone().map(Arn::from),
    };
    if let Some(t) = &p.notifications.topic {
        cx.check(
            at(&["notifications", "topic"]),
            values::topic_arn(t).map(|_| ()),
            "use arn:aws:sns:REGION:ACCOUNT:NAME",
        );
    }
    for (k, t) in p.notifications.alarm_topics.iter().enumerate() {
        let mut path = at(&["notifications", "alarm_topics"]);
        path.push(Seg::Index(k));
        cx.check(
            path,
            values::topic_arn(t).map(|_| ()),
            "use arn:aws:sns:REGION:ACCOUNT:NAME",
        );
    }
    if p.stages.is_empty() {
        cx.error(
            at(&["name"]),
            format!("pipeline `{}` has no stages", p.name),
            "add at least one `[[pipelines.stages]]`",
        );
    }
    let mut names = BTreeSet::new();
    let mut stages = Vec::new();
    for (j, s) in p.stages.iter().enumerate() {
        if !names.insert(s.name.clone()) {
            cx.error(
                cfg_path!["pipelines", i, "stages", j, "name"],
                format!("stage `{}` appears twice in pipeline `{}`", s.name, p.name),
                "stage names must be unique within a pipeline",
            );
        }
        stages.push(stage(i, j, s, &tests, &p.tests, accounts, base, cx));
    }
    warn_unguarded_approvals(i, &stages, cx);
    warn_image_functions_away_from_the_image(i, &artifact, &stages, cx);
    Pipeline {
        name: p.name.into(),
        source: Source {
            repository: p.source.repository,
            branch: p.source.branch.unwrap_or_else(|| "main".into()),
            build_workflow: p.source.build_workflow,
        },
        artifact,
        tests,
        notifications,
        alarm_topics: p
            .notifications
            .alarm_topics
            .into_iter()
            .map(Arn::from)
            .collect(),
        stages,
    }
}

fn artifact(
    i: usize,
    a: &RawArtifact,
    accounts: &BTreeMap<String, Account>,
    cx: &mut Ctx,
) -> Artifact {
    let p = |k: &str| cfg_path!["pipelines", i, "artifact", k];
    account_ref(p("account"), &a.account, accounts, cx);
    cx.check(
        p("region"),
        values::region(&a.region),
        "use a region like `eu-west-1`",
    );
    let tag = a.tag.clone().unwrap_or_else(|| "{sha}".into());
    if !tag.contains("{sha}") && !tag.contains("{short_sha}") {
        cx.error(
            p("tag"),
            format!("tag `{tag}` does not contain `{{sha}}` or `{{short_sha}}`"),
            "a tag must identify the commit, e.g. `{sha}`",
        );
    }
    Artifact {
        repository: a.repository.clone(),
        account: a.account.clone(),
        region: a.region.clone(),
        tag,
        wait: cx.duration(p("wait"), a.wait.as_deref(), Duration::from_secs(15 * 60)),
    }
}

fn account_ref(path: Vec<Seg>, name: &str, accounts: &BTreeMap<String, Account>, cx: &mut Ctx) {
    if !accounts.contains_key(name) {
        let known: Vec<&str> = accounts.keys().map(String::as_str).collect();
        cx.error(
            path,
            format!("unknown account `{name}`"),
            &format!(
                "define it in accounts.toml, or use one of: {}",
                known.join(", ")
            ),
        );
    }
}

fn test(i: usize, name: &str, t: &RawTest, base: &Path, cx: &mut Ctx) -> Option<TestDef> {
    let p = |k: &str| cfg_path!["pipelines", i, "tests", name.to_string(), k];
    cx.check(
        cfg_path!["pipelines", i, "tests", name.to_string()],
        values::name(name),
        "rename the test",
    );
    let timeout = cx.duration(p("timeout"), t.timeout.as_deref(), DEFAULT_TEST_TIMEOUT);
    let allowed: &[&str] = match t.kind.as_str() {
        "command" => &["argv", "env", "workdir", "stage_credentials"],
        "http" => &["suite", "base_url_output"],
        "github-checks" => &["checks"],
        "github-workflow" => &["workflow", "ref", "inputs"],
        other => {
            cx.error(
                p("kind"),
                format!("unknown test kind `{other}`"),
                "use `command`, `http`, `github-checks` or `github-workflow`",
            );
            return None;
        }
    };
    for key in present_test_keys(t) {
        if !allowed.contains(&key) {
            cx.error_at_key(
                p(key),
                format!("`{key}` does not apply to a `{}` test", t.kind),
                &format!("a `{}` test takes: {}", t.kind, allowed.join(", ")),
            );
        }
    }
    let kind = test_kind(t, base, &p, cx)?;
    Some(TestDef {
        name: name.to_string(),
        timeout,
        kind,
    })
}

fn present_test_keys(t: &RawTest) -> Vec<&'static str> {
    let pairs = [
        ("argv", t.argv.is_some()),
        ("env", t.env.is_some()),
        ("workdir", t.workdir.is_some()),
        ("stage_credentials", t.stage_credentials.is_some()),
        ("suite", t.suite.is_some()),
        ("base_url_output", t.base_url_output.is_some()),
        ("checks", t.checks.is_some()),
        ("workflow", t.workflow.is_some()),
        ("ref", t.git_ref.is_some()),
        ("inputs", t.inputs.is_some()),
    ];
    pairs
        .iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| *k)
        .collect()
}

fn test_kind(
    t: &RawTest,
    base: &Path,
    p: &dyn Fn(&str) -> Vec<Seg>,
    cx: &mut Ctx,
) -> Option<TestKind> {
    let kind = match t.kind.as_str() {
        "command" => {
            let argv = t.argv.clone().unwrap_or_default();
            if argv.is_empty() {
                cx.error(
                    p("kind"),
                    "a `command` test needs a non-empty `argv`".into(),
                    "add `argv = [\"make\", \"test\"]`",
                );
            }
            let workdir = base.join(t.workdir.as_deref().unwrap_or("."));
            if t.workdir.is_some() && !workdir.is_dir() {
                cx.error(
                    p("workdir"),
                    format!("directory {} does not exist", workdir.display()),
                    "the path is relative to stages.toml",
                );
            }
            TestKind::Command {
                argv,
                env: t.env.clone().unwrap_or_default(),
                workdir,
                stage_credentials: t.stage_credentials.unwrap_or(false),
            }
        }
        "http" => {
            let Some(suite) = &t.suite else {
                cx.error(
                    p("kind"),
                    "an `http` test needs `suite`".into(),
                    "add `suite = \"smoke-tests/NAME.toml\"`",
                );
                return None;
            };
            let path = base.join(suite);
            if !path.is_file() {
                cx.error(
                    p("suite"),
                    format!("smoke suite {} does not exist", path.display()),
                    "the path is relative to stages.toml",
                );
            }
            TestKind::Http {
                suite: path,
                base_url_output: t
                    .base_url_output
                    .clone()
                    .unwrap_or_else(|| "ServiceUrl".into()),
            }
        }
        "github-checks" => {
            let checks = t.checks.clone().unwrap_or_default();
            if checks.is_empty() {
                cx.error(
                    p("kind"),
                    "a `github-checks` test needs `checks`".into(),
                    "list the check run names, e.g. `checks = [\"build\", \"lint\"]`",
                );
            }
            TestKind::GithubChecks { checks }
        }
        _ => {
            let Some(workflow) = t.workflow.clone() else {
                cx.error(
                    p("kind"),
                    "a `github-workflow` test needs `workflow`".into(),
                    "add `workflow = \"integration.yml\"`",
                );
                return None;
            };
            TestKind::GithubWorkflow {
                workflow,
                git_ref: t.git_ref.clone(),
                inputs: t.inputs.clone().unwrap_or_default(),
            }
        }
    };
    Some(kind)
}

#[allow(clippy::too_many_arguments)]
fn stage(
    i: usize,
    j: usize,
    s: &RawStage,
    tests: &BTreeMap<String, TestDef>,
    raw_tests: &BTreeMap<String, RawTest>,
    accounts: &BTreeMap<String, Account>,
    base: &Path,
    cx: &mut Ctx,
) -> Stage {
    let p = |k: &str| cfg_path!["pipelines", i, "stages", j, k];
    cx.check(
        p("name"),
        values::name(&s.name),
        "use letters, digits, `-` or `_`",
    );
    let targets = targets(i, j, s, accounts, cx);
    for (list, key) in [(&s.before, "before"), (&s.after, "after")] {
        for (k, t) in list.iter().enumerate() {
            if !raw_tests.contains_key(t) {
                let known: Vec<&str> = raw_tests.keys().map(String::as_str).collect();
                cx.error(
                    cfg_path!["pipelines", i, "stages", j, key, k],
                    format!("unknown test `{t}`"),
                    &format!(
                        "define it under [pipelines.tests.{t}], or use one of: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    let _ = tests;
    let bake = cx.duration(p("bake"), s.bake.as_deref(), Duration::ZERO);
    let promote = match s.promote.as_deref() {
        None | Some("retag") => Promote::Retag,
        Some("copy") => Promote::Copy,
        Some(other) => {
            cx.error(
                p("promote"),
                format!("unknown promotion `{other}`"),
                "use `retag` or `copy`",
            );
            Promote::Retag
        }
    };
    Stage {
        name: s.name.clone().into(),
        targets,
        deploy: deploy(i, j, &s.deploy, base, cx),
        before: s.before.clone(),
        after: s.after.clone(),
        bake,
        alarms: s.alarms.clone(),
        min_datapoints: min_datapoints(s, &p, cx),
        insufficient_data: insufficient_data(s, &p, cx),
        bake_max_wait: bake_max_wait(s, &p, cx),
        alarm_delay: alarm_delay(s, &p, cx),
        promote,
        approval: s.approval.as_ref().map(|a| approval(i, j, a, cx)),
        windows: s.windows.as_ref().and_then(|w| windows(i, j, w, cx)),
    }
}

/// `min_datapoints`: a count only a stage with alarms can ask for, within bounds.
fn min_datapoints(s: &RawStage, p: &dyn Fn(&str) -> Vec<Seg>, cx: &mut Ctx) -> u32 {
    if s.min_alarm_evaluations.is_some() {
        cx.error_at_key(
            p("min_alarm_evaluations"),
            "`min_alarm_evaluations` is no longer read: the bake counts the alarms' data points, \
             not the controller's polls"
                .into(),
            "write `min_datapoints = N`: the data points each alarm's metric must have had since \
             the deploy finished",
        );
    }
    let default = if s.alarms.is_empty() {
        0
    } else {
        DEFAULT_MIN_DATAPOINTS
    };
    let Some(n) = s.min_datapoints else {
        return default;
    };
    if n > 0 && s.alarms.is_empty() {
        cx.error(
            p("min_datapoints"),
            format!("min_datapoints is {n} but the stage has no alarms"),
            "data points are counted on the metrics of the stage's `alarms`; add alarms or \
             remove min_datapoints",
        );
        return 0;
    }
    if n > MAX_MIN_DATAPOINTS {
        cx.error(
            p("min_datapoints"),
            format!("min_datapoints is {n}, more than {MAX_MIN_DATAPOINTS}"),
            "a week of one-minute data points is the most a bake may ask for",
        );
        return default;
    }
    n
}

/// `insufficient_data`: `wait`, `fail`, `pass` or `roll_back`.
fn insufficient_data(s: &RawStage, p: &dyn Fn(&str) -> Vec<Seg>, cx: &mut Ctx) -> InsufficientData {
    let Some(text) = s.insufficient_data.as_deref() else {
        return InsufficientData::default();
    };
    cx.check(
        p("insufficient_data"),
        InsufficientData::parse(text).ok_or_else(|| format!("unknown insufficient_data `{text}`")),
        "use `wait`, `fail`, `pass` or `roll_back`",
    )
    .unwrap_or_default()
}

/// `alarm_delay`: `auto`, or a duration up to a week, on a stage with alarms.
fn alarm_delay(s: &RawStage, p: &dyn Fn(&str) -> Vec<Seg>, cx: &mut Ctx) -> AlarmDelay {
    let Some(text) = s.alarm_delay.as_deref() else {
        return AlarmDelay::Auto;
    };
    if s.alarms.is_empty() {
        cx.error(
            p("alarm_delay"),
            format!("alarm_delay is `{text}` but the stage has no alarms"),
            "the bake holds for the stage's `alarms` to report; add alarms or remove alarm_delay",
        );
        return AlarmDelay::Auto;
    }
    if text == "auto" {
        return AlarmDelay::Auto;
    }
    let Some(delay) = cx.check(
        p("alarm_delay"),
        values::duration(text),
        "write `auto`, or a duration like `0s`, `5m` or `1h`",
    ) else {
        return AlarmDelay::Auto;
    };
    if delay > MAX_ALARM_DELAY {
        cx.error(
            p("alarm_delay"),
            format!(
                "alarm_delay is {}, more than 7d",
                values::format_duration(delay)
            ),
            "CloudWatch evaluates an alarm over at most a week of data; use `auto` or at most `7d`",
        );
        return AlarmDelay::Auto;
    }
    AlarmDelay::Fixed(delay)
}

/// `bake_max_wait`: a duration up to a week.
fn bake_max_wait(s: &RawStage, p: &dyn Fn(&str) -> Vec<Seg>, cx: &mut Ctx) -> Duration {
    let wait = cx.duration(
        p("bake_max_wait"),
        s.bake_max_wait.as_deref(),
        DEFAULT_BAKE_MAX_WAIT,
    );
    if wait > MAX_BAKE_MAX_WAIT {
        cx.error(
            p("bake_max_wait"),
            format!(
                "bake_max_wait is {}, more than 7d",
                values::format_duration(wait)
            ),
            "a stage waiting longer for data holds every later release; use at most `7d`",
        );
        return DEFAULT_BAKE_MAX_WAIT;
    }
    wait
}

fn targets(
    i: usize,
    j: usize,
    s: &RawStage,
    accounts: &BTreeMap<String, Account>,
    cx: &mut Ctx,
) -> Vec<Target> {
    if s.targets.is_empty() {
        cx.error(
            cfg_path!["pipelines", i, "stages", j, "name"],
            format!("stage `{}` has no targets", s.name),
            "add `targets = [{ account = \"beta\", region = \"eu-west-1\" }]`",
        );
    }
    let mut out = Vec::new();
    for (k, t) in s.targets.iter().enumerate() {
        let p = |key: &str| cfg_path!["pipelines", i, "stages", j, "targets", k, key];
        account_ref(p("account"), &t.account, accounts, cx);
        let region = match (&t.region, accounts.get(&t.account)) {
            (Some(r), _) => {
                cx.check(
                    p("region"),
                    values::region(r),
                    "use a region like `eu-west-1`",
                );
                r.clone()
            }
            (None, Some(a)) => a.region.clone(),
            (None, None) => String::new(),
        };
        let target = Target {
            account: t.account.clone(),
            region,
        };
        if out.contains(&target) {
            cx.error(
                p("account"),
                format!(
                    "target {}/{} is listed twice",
                    target.account, target.region
                ),
                "each wave must be a different account or region",
            );
        }
        out.push(target);
    }
    out
}

fn deploy(i: usize, j: usize, d: &RawDeploy, base: &Path, cx: &mut Ctx) -> Deploy {
    let p = |k: &str| cfg_path!["pipelines", i, "stages", j, "deploy", k];
    let need = |cx: &mut Ctx, v: &Option<String>, key: &str, kind: &str| -> String {
        if v.is_none() {
            cx.error(
                p("kind"),
                format!("a `{kind}` deploy needs `{key}`"),
                &format!("add `{key} = \"…\"` to this deploy table"),
            );
        }
        v.clone().unwrap_or_default()
    };
    match d.kind.as_str() {
        "cloudformation" => {
            reject_keys(
                cx,
                &p,
                "cloudformation",
                &[
                    ("pipeline", d.pipeline.is_some()),
                    ("variable", d.variable.is_some()),
                    ("rollback_stage", d.rollback_stage.is_some()),
                ],
            );
            let template = need(cx, &d.template, "template", "cloudformation");
            let template = base.join(template);
            if d.template.is_some() && !template.is_file() {
                cx.error(
                    p("template"),
                    format!("template {} does not exist", template.display()),
                    "the path is relative to stages.toml",
                );
            }
            let image_parameter = need(cx, &d.image_parameter, "image_parameter", "cloudformation");
            let parameters = d.parameters.clone().unwrap_or_default();
            if parameters.contains_key(&image_parameter) {
                cx.error(p("parameters"), format!("`{image_parameter}` is set in `parameters` but is the image parameter"), "tollgate sets the image parameter to the image digest; remove it from `parameters`");
            }
            if let Some(r) = &d.execution_role {
                cx.check(
                    p("execution_role"),
                    values::role_arn(r).map(|_| ()),
                    "use arn:aws:iam::ACCOUNT:role/NAME",
                );
            }
            Deploy::CloudFormation {
                stack: need(cx, &d.stack, "stack", "cloudformation"),
                template,
                parameters,
                image_parameter,
                capabilities: d.capabilities.clone().unwrap_or_default(),
                execution_role: d.execution_role.clone().map(Arn::from),
            }
        }
        "codepipeline" => {
            let cfn_keys = [
                ("stack", d.stack.is_some()),
                ("template", d.template.is_some()),
                ("parameters", d.parameters.is_some()),
                ("image_parameter", d.image_parameter.is_some()),
                ("capabilities", d.capabilities.is_some()),
                ("execution_role", d.execution_role.is_some()),
            ];
            reject_keys(cx, &p, "codepipeline", &cfn_keys);
            // Required, with no default: a guessed stage name would only be found wrong by the
            // `RollbackStage` of a live incident (`StageNotFoundException`).
            let rollback_stage = need(cx, &d.rollback_stage, "rollback_stage", "codepipeline");
            if d.rollback_stage.is_some() {
                cx.check(
                    p("rollback_stage"),
                    values::pipeline_stage(&rollback_stage),
                    "name the stage of the pipeline that deploys the image, as in its definition",
                );
            }
            Deploy::CodePipeline {
                pipeline: need(cx, &d.pipeline, "pipeline", "codepipeline"),
                variable: need(cx, &d.variable, "variable", "codepipeline"),
                rollback_stage,
            }
        }
        other => {
            cx.error(
                p("kind"),
                format!("unknown deploy kind `{other}`"),
                "use `cloudformation` or `codepipeline`",
            );
            Deploy::CodePipeline {
                pipeline: String::new(),
                variable: String::new(),
                rollback_stage: String::new(),
            }
        }
    }
}

fn reject_keys(cx: &mut Ctx, p: &dyn Fn(&str) -> Vec<Seg>, kind: &str, keys: &[(&str, bool)]) {
    for (key, present) in keys {
        if *present {
            cx.error_at_key(
                p(key),
                format!("`{key}` does not apply to a `{kind}` deploy"),
                "remove it, or change `kind`",
            );
        }
    }
}

fn approval(i: usize, j: usize, a: &RawApproval, cx: &mut Ctx) -> Approval {
    let p = |k: &str| cfg_path!["pipelines", i, "stages", j, "approval", k];
    cx.check(
        p("topic"),
        values::topic_arn(&a.topic).map(|_| ()),
        "use arn:aws:sns:REGION:ACCOUNT:NAME",
    );
    let min = a.min_approvals.unwrap_or(1);
    if min == 0 {
        cx.error(
            p("min_approvals"),
            "min_approvals is 0".into(),
            "at least one approval is needed; remove the approval table to deploy without one",
        );
    } else if a.approvers.is_empty() {
        cx.warn(
            p("approvers"),
            "the approval lists no approvers: everyone subscribed to the topic gets one shared \
             link, and the names typed on its page are recorded as unverified"
                .into(),
            "list the approvers (`approvers = [{ name = \"alice\", email = \"alice@example.com\" }]`) \
             for personal links",
        );
    } else if min as usize > a.approvers.len() {
        cx.error(
            p("min_approvals"),
            format!(
                "min_approvals is {min} but only {} approvers are listed",
                a.approvers.len()
            ),
            "lower min_approvals or list more approvers",
        );
    }
    let mut names = BTreeSet::new();
    for (k, ap) in a.approvers.iter().enumerate() {
        let ap_path =
            |key: &str| cfg_path!["pipelines", i, "stages", j, "approval", "approvers", k, key];
        if !names.insert(ap.name.clone()) {
            cx.error(
                ap_path("name"),
                format!("approver `{}` is listed twice", ap.name),
                "each approver once",
            );
        }
        cx.check(
            ap_path("name"),
            values::name(&ap.name),
            "use letters, digits, `-` or `_`",
        );
        if !valid_email(&ap.email) {
            cx.error(
                ap_path("email"),
                format!("`{}` is not an email address", ap.email),
                "write it like `name@example.com`",
            );
        }
    }
    Approval {
        topic: a.topic.clone().into(),
        approvers: a
            .approvers
            .iter()
            .map(|ap| Approver {
                name: ap.name.clone(),
                email: ap.email.clone(),
                github: ap.github.clone(),
            })
            .collect(),
        min_approvals: min.max(1),
        timeout: cx.duration(
            p("timeout"),
            a.timeout.as_deref(),
            Duration::from_secs(24 * 3600),
        ),
        allow_author: a.allow_author.unwrap_or(false),
    }
}

fn valid_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((user, host)) => {
            !user.is_empty()
                && host.contains('.')
                && !host.starts_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn windows(i: usize, j: usize, w: &RawWindows, cx: &mut Ctx) -> Option<Windows> {
    let p = |k: &str| cfg_path!["pipelines", i, "stages", j, "windows", k];
    let tz = cx.check(
        p("timezone"),
        w.timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| format!("`{}` is not an IANA time zone", w.timezone)),
        "use a name like `Europe/Berlin` or `America/New_York`",
    );
    if w.allow.is_empty() {
        cx.error(
            p("timezone"),
            "windows has no `allow` ranges, so the stage could never deploy".into(),
            "add `[[pipelines.stages.windows.allow]]` with days, start and end",
        );
    }
    let mut allow = Vec::new();
    for (k, r) in w.allow.iter().enumerate() {
        let rp = |key: &str| cfg_path!["pipelines", i, "stages", j, "windows", "allow", k, key];
        let days: Vec<_> = r
            .days
            .iter()
            .enumerate()
            .filter_map(|(d, day)| {
                cx.check(
                    cfg_path![
                        "pipelines",
                        i,
                        "stages",
                        j,
                        "windows",
                        "allow",
                        k,
                        "days",
                        d
                    ],
                    values::weekday(day),
                    "use mon, tue, wed, thu, fri, sat or sun",
                )
            })
            .collect();
        if r.days.is_empty() {
            cx.error(
                rp("days"),
                "no days in this window".into(),
                "list the days, e.g. `days = [\"mon\", \"tue\"]`",
            );
        }
        let start = cx.check(rp("start"), values::clock(&r.start), "write `HH:MM`");
        let end = cx.check(rp("end"), values::clock(&r.end), "write `HH:MM`");
        if let (Some(s), Some(e)) = (start, end) {
            if s >= e {
                cx.error(rp("end"), format!("window ends ({}) before it starts ({})", r.end, r.start), "a window must end after it starts on the same day; split overnight windows in two");
            }
            allow.push(Window {
                days,
                start: s,
                end: e,
            });
        }
    }
    let blackouts = w
        .blackouts
        .iter()
        .enumerate()
        .filter_map(|(k, d)| {
            cx.check(
                cfg_path!["pipelines", i, "stages", j, "windows", "blackouts", k],
                values::date(d),
                "write `YYYY-MM-DD`",
            )
        })
        .collect();
    Some(Windows {
        timezone: tz?,
        allow,
        blackouts,
    })
}

/// A stage promoting by `retag` deploys the image from the artifact's repository, in the
/// artifact's region, and a Lambda function takes an image only from a repository in its own
/// region ("The Amazon ECR repository must be in the same AWS Region as the Lambda function",
/// AWS Lambda Developer Guide, container images): a wave in another region whose template has a
/// function running the stage's image would fail every deploy there. Only a function whose
/// image refers to the stage's `image_parameter` counts (`!Ref`, `!Sub`, `!Join`, `!If`: see
/// [`template::image_functions`]); one with a literal image, or another parameter's, runs some
/// other image. A template that cannot be read is left to the deploy (and `cfn-lint`) to
/// report.
fn warn_image_functions_away_from_the_image(
    i: usize,
    artifact: &Artifact,
    stages: &[Stage],
    cx: &mut Ctx,
) {
    for (j, s) in stages.iter().enumerate() {
        let Deploy::CloudFormation {
            template,
            image_parameter,
            ..
        } = &s.deploy
        else {
            continue;
        };
        // A target whose account is unknown has no region (an error of its own).
        let away = s
            .targets
            .iter()
            .position(|t| !t.region.is_empty() && t.region != artifact.region);
        let (Promote::Retag, Some(k)) = (s.promote, away) else {
            continue;
        };
        let Ok(body) = std::fs::read_to_string(template) else {
            continue;
        };
        let functions = template::image_functions(&body, image_parameter);
        let Some(function) = functions.ok().and_then(|f| f.into_iter().next()) else {
            continue;
        };
        let region = &s.targets[k].region;
        cx.warn(
            cfg_path!["pipelines", i, "stages", j, "targets", k],
            format!(
                "stage `{}` deploys to {region}, and its template runs the image in a Lambda \
                 function (`{function}`, from parameter `{image_parameter}`); with \
                 `promote = \"retag\"` the image stays in `{}` in {}, and Lambda takes an \
                 image only from a repository in its own region",
                s.name, artifact.repository, artifact.region
            ),
            &format!(
                "set `promote = \"copy\"` on the stage and replicate the repository to {region} \
                 (ECR replication), or deploy the function in {}",
                artifact.region
            ),
        );
    }
}

fn warn_unguarded_approvals(i: usize, stages: &[Stage], cx: &mut Ctx) {
    let mut tested = false;
    for (j, s) in stages.iter().enumerate() {
        tested |= !s.before.is_empty();
        if s.approval.is_some() && !tested {
            cx.warn(
                cfg_path!["pipelines", i, "stages", j, "approval"],
                format!("stage `{}` asks for approval but no tests run before it", s.name),
                "approvers would decide without test results; add `before` tests to this or an earlier stage",
            );
        }
        tested |= !s.after.is_empty();
    }
}
