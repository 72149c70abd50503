//! `tollgate validate` and `tollgate schema` from the outside.
//!
//! The shipped `stages.toml` is valid; a small valid pipeline
//! (`tests/fixtures/config/stages.toml` and `accounts.toml`) is broken one way at a time, and
//! each break must give one error at the exact `line:col`, quoting the offending text. The
//! line and column numbers below refer to those fixture files. The binary's exit codes, the
//! JSON Schemas, and a property test (no input makes the loader panic) complete the picture.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proptest::prelude::*;
use tollgate::config::{self, ConfigError, Diagnostic, Loaded, Severity};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");
const STAGES: &str = include_str!("../fixtures/config/stages.toml");
const ACCOUNTS: &str = include_str!("../fixtures/config/accounts.toml");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const EXAMPLE: &str = include_str!("../../../stages.toml");
const EXAMPLE_ACCOUNTS: &str = include_str!("../../../accounts/accounts.toml");

// ---------------------------------------------------------------------------------------------
// Helpers

/// Loads `stages` as `stages.toml` in `base`; any accounts file read gets `accounts`.
fn load_at(base: &Path, stages: &str, accounts: &str) -> Result<Loaded, ConfigError> {
    let accounts = accounts.to_string();
    let read = move |_: &Path| -> Result<String, ConfigError> { Ok(accounts.clone()) };
    config::load_str(&base.join("stages.toml"), stages, base, &read)
}

/// Loads against the fixtures directory (which holds `service.yaml` and `smoke.toml`).
fn load(stages: &str, accounts: &str) -> Result<Loaded, ConfigError> {
    load_at(Path::new(FIXTURES), stages, accounts)
}

/// The errors (not warnings) of an invalid configuration.
fn errors(stages: &str, accounts: &str) -> Vec<Diagnostic> {
    match load(stages, accounts) {
        Err(ConfigError::Invalid(diags)) => diags
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
        Err(e) => panic!("expected an invalid configuration, got: {e}"),
        Ok(_) => panic!("expected an invalid configuration, but it loaded"),
    }
}

/// The single error of an invalid configuration.
#[track_caller]
fn one_error(stages: &str, accounts: &str) -> Diagnostic {
    let mut errs = errors(stages, accounts);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs.remove(0)
}

/// `text` with `from` (which must occur exactly once) replaced by `to`.
#[track_caller]
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once");
    text.replacen(from, to, 1)
}

fn stages_with(from: &str, to: &str) -> String {
    edit(STAGES, from, to)
}

fn accounts_with(from: &str, to: &str) -> String {
    edit(ACCOUNTS, from, to)
}

/// Asserts where a diagnostic points, what it quotes and what it says.
#[track_caller]
fn assert_at(d: &Diagnostic, file: &str, line: usize, col: usize, snippet: &str, says: &str) {
    assert!(d.file.ends_with(file), "wrong file in {d}");
    assert_eq!(
        (d.line, d.col, d.snippet.as_str()),
        (line, col, snippet),
        "wrong place in {d}"
    );
    assert!(d.message.contains(says), "expected `{says}` in {d}");
    assert!(!d.help.is_empty(), "no help in {d}");
    let rendered = d.to_string();
    let head = format!("{}:{line}:{col}: ", d.file.display());
    assert!(rendered.contains(&head), "{rendered}");
}

fn tollgate(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tollgate")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory holding the fixtures, with `stages.toml` and `accounts.toml` replaced.
fn scratch(stages: &str, accounts: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["service.yaml", "smoke.toml"] {
        std::fs::copy(Path::new(FIXTURES).join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("stages.toml"), stages).unwrap();
    std::fs::write(dir.path().join("accounts.toml"), accounts).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// Valid configurations

#[test]
fn shipped_example_is_valid() {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../stages.toml"));
    let loaded = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.pipelines.len(), 1);
    let p = &c.pipelines[0];
    let stages: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["beta", "gamma", "prod"]);
    assert_eq!(p.stages[2].targets.len(), 2);
    assert_eq!(c.accounts.len(), 4);
    assert_eq!(
        c.account("prod").unwrap().external_id,
        Some(config::SecretRef::File(
            "/run/secrets/tollgate-external-id-prod".into()
        ))
    );
}

#[test]
fn shipped_example_passes_the_binary() {
    let out = tollgate(&["validate", "stages.toml"], Path::new(REPO));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stages.toml is valid"), "{stdout}");
    assert!(
        stdout.contains("3 stage(s), 4 account(s), 0 warning(s)"),
        "{stdout}"
    );
}

#[test]
fn fixture_is_valid_and_defaults_apply() {
    let loaded = load(STAGES, ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let p = &loaded.config.pipelines[0];
    assert_eq!(p.source.branch, "main");
    assert_eq!(p.artifact.tag, "{sha}");
    // A target without a region deploys to the account's default region.
    assert_eq!(p.stages[1].targets[0].region, "us-east-1");
    let approval = p.stages[1].approval.as_ref().unwrap();
    assert_eq!(approval.timeout, std::time::Duration::from_secs(24 * 3600));
    assert!(!approval.allow_author);
    assert_eq!(loaded.config.controller.public_url, "http://127.0.0.1:8080");
}

// ---------------------------------------------------------------------------------------------
// Unknown keys

#[test]
fn unknown_top_level_key() {
    let s = stages_with(
        "accounts = \"accounts.toml\"",
        "acounts = \"accounts.toml\"",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(&d, "stages.toml", 3, 1, "acounts", "unknown key `acounts`");
    assert!(d.help.contains("docs/configuration.md"), "{d}");
}

#[test]
fn unknown_key_in_a_stage() {
    let d = one_error(&stages_with("bake = \"10m\"", "baek = \"10m\""), ACCOUNTS);
    assert_at(&d, "stages.toml", 30, 1, "baek", "unknown key `baek`");
}

#[test]
fn unknown_key_in_a_deploy_table() {
    let d = one_error(
        &stages_with("stack = \"svc-beta\"", "stack = \"svc-beta\"\nstak = \"x\""),
        ACCOUNTS,
    );
    assert_at(&d, "stages.toml", 35, 1, "stak", "unknown key `stak`");
}

#[test]
fn unknown_key_in_an_inline_target() {
    let s = stages_with(
        "{ account = \"prod\" }",
        "{ account = \"prod\", regoin = \"x\" }",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(&d, "stages.toml", 40, 32, "regoin", "unknown key `regoin`");
}

#[test]
fn unknown_key_in_accounts_file() {
    let a = accounts_with("controller = true", "controller = true\nrole = \"x\"");
    let d = one_error(STAGES, &a);
    assert_at(&d, "accounts.toml", 6, 1, "role", "unknown key `role`");
}

#[test]
fn unknown_key_in_external_id_table() {
    let a = accounts_with(
        "{ env = \"TOLLGATE_EXTERNAL_ID_BETA\" }",
        "{ env = \"TOLLGATE_EXTERNAL_ID_BETA\", fil = \"/x\" }",
    );
    let d = one_error(STAGES, &a);
    assert_at(&d, "accounts.toml", 10, 52, "fil", "unknown key `fil`");
}

// ---------------------------------------------------------------------------------------------
// References

#[test]
fn unknown_account_in_a_target() {
    let d = one_error(
        &stages_with("{ account = \"prod\" }", "{ account = \"prd\" }"),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        40,
        24,
        "\"prd\"",
        "unknown account `prd`",
    );
    assert!(d.help.contains("beta, build, prod"), "{d}");
}

#[test]
fn unknown_account_in_artifact() {
    let d = one_error(
        &stages_with("account = \"build\"", "account = \"builds\""),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        13,
        11,
        "\"builds\"",
        "unknown account `builds`",
    );
}

#[test]
fn unknown_test_in_before() {
    let d = one_error(
        &stages_with("before = [\"unit\"]", "before = [\"unit\", \"lint\"]"),
        ACCOUNTS,
    );
    assert_at(&d, "stages.toml", 28, 19, "\"lint\"", "unknown test `lint`");
    assert!(d.help.contains("smoke, unit"), "{d}");
}

#[test]
fn unknown_test_in_after() {
    let s = stages_with(
        "{ account = \"prod\" }]\nafter = [\"smoke\"]",
        "{ account = \"prod\" }]\nafter = [\"smok\"]",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(&d, "stages.toml", 41, 10, "\"smok\"", "unknown test `smok`");
}

// ---------------------------------------------------------------------------------------------
// Duplicates and empty lists

#[test]
fn duplicate_pipeline_name() {
    let second = r#"
[[pipelines]]
name = "svc"
source = { repository = "acme/other" }
artifact = { repository = "other", account = "build", region = "eu-west-1" }
stages = [{ name = "one", targets = [{ account = "beta" }], deploy = { kind = "codepipeline", pipeline = "p", variable = "v", rollback_stage = "Deploy" } }]
"#;
    let d = one_error(&format!("{STAGES}{second}"), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        67,
        8,
        "\"svc\"",
        "pipeline `svc` is defined twice",
    );
}

#[test]
fn duplicate_stage_name() {
    let d = one_error(&stages_with("name = \"prod\"", "name = \"beta\""), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        39,
        8,
        "\"beta\"",
        "stage `beta` appears twice",
    );
}

#[test]
fn duplicate_test_name_is_a_located_toml_error() {
    let s = stages_with("[pipelines.tests.smoke]", "[pipelines.tests.unit]");
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        20,
        1,
        "[pipelines.tests.unit]",
        "duplicate key `unit` in table `pipelines.tests`",
    );
    assert!(!d.message.contains('\n'), "{d}");
}

#[test]
fn pipeline_without_stages() {
    let cut = STAGES.find("[[pipelines.stages]]").unwrap();
    let d = one_error(&STAGES[..cut], ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        6,
        8,
        "\"svc\"",
        "pipeline `svc` has no stages",
    );
}

#[test]
fn stage_without_targets() {
    let d = one_error(
        &stages_with("targets = [{ account = \"prod\" }]", "targets = []"),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        39,
        8,
        "\"prod\"",
        "stage `prod` has no targets",
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed values

#[test]
fn malformed_account_id() {
    let a = accounts_with("id = \"222222222222\"", "id = \"22222222222\"");
    let d = one_error(STAGES, &a);
    assert_at(
        &d,
        "accounts.toml",
        8,
        6,
        "\"22222222222\"",
        "is not an AWS account id (exactly 12 digits)",
    );
}

#[test]
fn role_arn_of_the_wrong_kind() {
    let a = accounts_with(
        "222222222222:role/tollgate-deploy",
        "222222222222:user/tollgate-deploy",
    );
    let d = one_error(STAGES, &a);
    assert_at(
        &d,
        "accounts.toml",
        9,
        12,
        "\"arn:aws:iam::222222222222:user/tollgate-deploy\"",
        "is not an IAM role ARN",
    );
}

#[test]
fn role_arn_in_another_account() {
    let a = accounts_with(
        "222222222222:role/tollgate-deploy",
        "999999999999:role/tollgate-deploy",
    );
    let d = one_error(STAGES, &a);
    assert_at(
        &d,
        "accounts.toml",
        9,
        12,
        "\"arn:aws:iam::999999999999:role/tollgate-deploy\"",
        "role ARN is in account 999999999999 but the account id is 222222222222",
    );
}

#[test]
fn external_id_written_literally_is_never_quoted() {
    let secret = "s3cr3t-Xq7-external";
    for literal in [format!("\"{secret}\""), format!("'{secret}'")] {
        let a = accounts_with("{ env = \"TOLLGATE_EXTERNAL_ID_BETA\" }", &literal);
        let d = one_error(STAGES, &a);
        assert_at(
            &d,
            "accounts.toml",
            10,
            1,
            "external_id",
            "external id is written literally",
        );
        let rendered = match load(STAGES, &a) {
            Err(e) => format!("{e}\n{e:?}"),
            Ok(_) => unreachable!(),
        };
        assert!(!rendered.contains(secret), "{rendered}");
        assert!(!rendered.contains("Xq7"), "{rendered}");
    }
}

#[test]
fn external_id_of_another_type_is_a_literal_too() {
    for literal in [
        "918273645",
        "[\"s3cr3t\", 918273645]",
        "1979-05-27T07:32:00Z",
    ] {
        let a = accounts_with("{ env = \"TOLLGATE_EXTERNAL_ID_BETA\" }", literal);
        let d = one_error(STAGES, &a);
        assert_at(
            &d,
            "accounts.toml",
            10,
            1,
            "external_id",
            "written literally",
        );
        let rendered = match load(STAGES, &a) {
            Err(e) => format!("{e}\n{e:?}"),
            Ok(_) => unreachable!(),
        };
        assert!(!rendered.contains("918273645"), "{rendered}");
        assert!(!rendered.contains("s3cr3t"), "{rendered}");
        assert!(!rendered.contains("07:32"), "{rendered}");
    }
}

#[test]
fn bad_region() {
    let d = one_error(
        &stages_with("region = \"eu-west-1\" }", "region = \"eu-wset\" }"),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        27,
        41,
        "\"eu-wset\"",
        "is not an AWS region",
    );
}

#[test]
fn bad_duration() {
    let d = one_error(&stages_with("bake = \"10m\"", "bake = \"10x\""), ACCOUNTS);
    assert_at(&d, "stages.toml", 30, 8, "\"10x\"", "`x` is not a unit");
}

#[test]
fn duration_of_the_wrong_type() {
    let d = one_error(&stages_with("bake = \"10m\"", "bake = 10"), ACCOUNTS);
    assert_at(&d, "stages.toml", 30, 8, "10", "invalid type: integer `10`");
}

#[test]
fn unknown_time_zone() {
    let d = one_error(&stages_with("Europe/Berlin", "Europe/Berlim"), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        58,
        12,
        "\"Europe/Berlim\"",
        "is not an IANA time zone",
    );
}

#[test]
fn window_ending_before_it_starts() {
    let d = one_error(&stages_with("end = \"16:00\"", "end = \"08:00\""), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        64,
        7,
        "\"08:00\"",
        "window ends (08:00) before it starts (09:00)",
    );
}

#[test]
fn bad_clock_time() {
    let d = one_error(
        &stages_with("start = \"09:00\"", "start = \"9am\""),
        ACCOUNTS,
    );
    assert_at(&d, "stages.toml", 63, 9, "\"9am\"", "is not a time of day");
}

#[test]
fn bad_weekday() {
    let d = one_error(
        &stages_with("\"tue\", \"wed\"", "\"thur\", \"wed\""),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        62,
        16,
        "\"thur\"",
        "`thur` is not a weekday",
    );
}

#[test]
fn bad_blackout_date() {
    let d = one_error(&stages_with("2026-12-24", "2026-12-32"), ACCOUNTS);
    assert_at(&d, "stages.toml", 59, 14, "\"2026-12-32\"", "is not a date");
}

#[test]
fn approval_topic_of_another_service() {
    let d = one_error(&stages_with("arn:aws:sns:", "arn:aws:sqs:"), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        50,
        9,
        "\"arn:aws:sqs:eu-west-1:111111111111:approvals\"",
        "is not a valid sns ARN",
    );
}

#[test]
fn approval_topic_that_is_fifo() {
    let d = one_error(
        &stages_with("111111111111:approvals\"", "111111111111:approvals.fifo\""),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        50,
        9,
        "\"arn:aws:sns:eu-west-1:111111111111:approvals.fifo\"",
        "is a FIFO topic: SNS delivers its messages only to SQS queues (no email, no HTTPS)",
    );
}

// ---------------------------------------------------------------------------------------------
// Approvals

/// Two approvers at one address would each receive the other's links.
#[test]
fn two_approvers_at_one_address_on_a_topic() {
    let d = one_error(
        &stages_with(
            r#"{ name = "bob", email = "bob@example.com" }"#,
            r#"{ name = "bob", email = "Alice@example.com" }"#,
        ),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        54,
        27,
        "\"Alice@example.com\"",
        "`Alice@example.com` is approver `alice`'s address too on this approval topic",
    );
}

/// Two stages of one approval topic must agree on an approver's address: the controller keeps
/// one subscription per approver on the topic and removes one at another address, so they
/// would undo each other's subscriptions.
#[test]
fn an_approver_with_two_addresses_on_one_topic() {
    let beta_deploy =
        "stack = \"svc-beta\"\ntemplate = \"service.yaml\"\nimage_parameter = \"ImageUri\"\n";
    let approval = "\n[pipelines.stages.approval]\ntopic = \"arn:aws:sns:eu-west-1:111111111111:approvals\"\napprovers = [{ name = \"alice\", email = \"alice@old.example.com\" }]\n";
    let d = one_error(
        &stages_with(beta_deploy, &format!("{beta_deploy}{approval}")),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        57,
        29,
        "\"alice@example.com\"",
        "approver `alice` is `alice@example.com` here and `alice@old.example.com` on another stage with the same approval topic",
    );
}

#[test]
fn min_approvals_above_the_approvers() {
    let d = one_error(
        &stages_with("min_approvals = 1", "min_approvals = 3"),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        51,
        17,
        "3",
        "min_approvals is 3 but only 2 approvers are listed",
    );
}

#[test]
fn min_approvals_zero() {
    let d = one_error(
        &stages_with("min_approvals = 1", "min_approvals = 0"),
        ACCOUNTS,
    );
    assert_at(&d, "stages.toml", 51, 17, "0", "min_approvals is 0");
}

/// No approvers listed: valid (one shared link, names unverified), with a warning saying so.
#[test]
fn approval_without_approvers_is_a_shared_link_warning() {
    let cut = STAGES.find("approvers = [").unwrap();
    let end = STAGES.find("]\n\n[pipelines.stages.windows]").unwrap() + 2;
    let s = format!("{}{}", &STAGES[..cut], &STAGES[end..]);
    let loaded = load(&s, ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_at(
        w,
        "stages.toml",
        49,
        1,
        "[pipelines.stages.approval]",
        "lists no approvers: everyone subscribed to the topic gets one shared link",
    );
    let prod = loaded
        .config
        .pipeline("svc")
        .unwrap()
        .stage("prod")
        .unwrap();
    assert!(prod.approval.as_ref().unwrap().approvers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Files, kinds

#[test]
fn missing_template_file() {
    let s = stages_with(
        "svc-prod\"\ntemplate = \"service.yaml\"",
        "svc-prod\"\ntemplate = \"missing.yaml\"",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        46,
        12,
        "\"missing.yaml\"",
        "does not exist",
    );
    assert!(d.message.contains("missing.yaml"), "{d}");
}

#[test]
fn missing_suite_file() {
    let s = stages_with("suite = \"smoke.toml\"", "suite = \"smoke/missing.toml\"");
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        22,
        9,
        "\"smoke/missing.toml\"",
        "smoke suite",
    );
    assert!(d.message.ends_with("does not exist"), "{d}");
}

#[test]
fn unknown_test_kind() {
    let s = stages_with("kind = \"github-checks\"", "kind = \"shell\"");
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        17,
        8,
        "\"shell\"",
        "unknown test kind `shell`",
    );
}

#[test]
fn key_that_does_not_apply_to_the_test_kind() {
    let s = stages_with(
        "suite = \"smoke.toml\"",
        "suite = \"smoke.toml\"\nargv = [\"make\"]",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        23,
        1,
        "argv",
        "`argv` does not apply to a `http` test",
    );
    assert!(d.help.contains("suite, base_url_output"), "{d}");
}

#[test]
fn key_that_does_not_apply_to_the_deploy_kind() {
    let s = stages_with(
        "stack = \"svc-beta\"",
        "stack = \"svc-beta\"\npipeline = \"p\"",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        35,
        1,
        "pipeline",
        "`pipeline` does not apply to a `cloudformation` deploy",
    );
}

/// The fixture with beta deployed through CodePipeline; `rollback` is the line after
/// `variable` (line 36), or nothing.
fn codepipeline_beta(rollback: &str) -> String {
    stages_with(
        "kind = \"cloudformation\"\nstack = \"svc-beta\"\ntemplate = \"service.yaml\"\nimage_parameter = \"ImageUri\"\n\n[[pipelines.stages]]\nname = \"prod\"",
        &format!(
            "kind = \"codepipeline\"\npipeline = \"svc-beta\"\nvariable = \"ImageUri\"\n{rollback}\n[[pipelines.stages]]\nname = \"prod\""
        ),
    )
}

#[test]
fn codepipeline_deploy_names_its_rollback_stage() {
    let s = codepipeline_beta("rollback_stage = \"Deploy-Beta.eu@1_x\"\n");
    let loaded = load(&s, ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    let beta = &loaded.config.pipelines[0].stages[0];
    match &beta.deploy {
        tollgate::config::Deploy::CodePipeline {
            pipeline,
            variable,
            rollback_stage,
        } => {
            assert_eq!(
                (
                    pipeline.as_str(),
                    variable.as_str(),
                    rollback_stage.as_str()
                ),
                ("svc-beta", "ImageUri", "Deploy-Beta.eu@1_x")
            );
        }
        other => panic!("expected a CodePipeline deploy, got {other:?}"),
    }
}

#[test]
fn codepipeline_deploy_without_rollback_stage() {
    let d = one_error(&codepipeline_beta(""), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        33,
        8,
        "\"codepipeline\"",
        "a `codepipeline` deploy needs `rollback_stage`",
    );
    assert!(d.help.contains("rollback_stage = "), "{d}");
}

#[test]
fn codepipeline_rollback_stage_empty_or_not_a_stage_name() {
    let long = "D".repeat(101);
    for bad in [
        "",
        "Deploy Beta",
        "Deploy/Beta",
        "Déploiement",
        long.as_str(),
    ] {
        let s = codepipeline_beta(&format!("rollback_stage = \"{bad}\"\n"));
        let d = one_error(&s, ACCOUNTS);
        assert_at(
            &d,
            "stages.toml",
            36,
            18,
            &format!("\"{bad}\""),
            "is not a valid CodePipeline stage name",
        );
        assert!(d.help.contains("stage of the pipeline"), "{d}");
    }
}

#[test]
fn codepipeline_rollback_stage_of_the_wrong_type() {
    let d = one_error(&codepipeline_beta("rollback_stage = 1\n"), ACCOUNTS);
    assert_eq!((d.line, d.col), (36, 18), "{d}");
    assert!(d.message.contains("invalid type"), "{d}");
}

#[test]
fn rollback_stage_does_not_apply_to_cloudformation() {
    let s = stages_with(
        "stack = \"svc-beta\"",
        "stack = \"svc-beta\"\nrollback_stage = \"Deploy\"",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        35,
        1,
        "rollback_stage",
        "`rollback_stage` does not apply to a `cloudformation` deploy",
    );
}

#[test]
fn missing_required_key() {
    let s = stages_with(
        "[pipelines.stages.deploy]\nkind = \"cloudformation\"\nstack = \"svc-beta\"",
        "[pipelines.stages.deploy]\nstack = \"svc-beta\"",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        32,
        1,
        "[pipelines.stages.deploy]",
        "missing field `kind`",
    );
}

#[test]
fn toml_syntax_error() {
    let d = one_error(&stages_with("bake = \"10m\"", "bake = \"10m"), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        30,
        12,
        "bake = \"10m",
        "invalid basic string",
    );
}

#[test]
fn toml_syntax_error_in_accounts_file() {
    let a = accounts_with("[accounts.prod]", "[accounts.prod");
    let d = one_error(STAGES, &a);
    assert_at(
        &d,
        "accounts.toml",
        13,
        15,
        "[accounts.prod",
        "invalid table header",
    );
}

#[test]
fn control_character_in_a_comment() {
    let s = stages_with(
        "# A small valid pipeline.",
        "# A small\u{7} valid pipeline.",
    );
    let d = one_error(&s, ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        1,
        10,
        "\\u{7}",
        "character U+0007 is not allowed here",
    );
}

#[test]
fn syntax_error_is_reported_even_if_the_accounts_file_cannot_be_found() {
    let s = stages_with(
        "accounts = \"accounts.toml\"",
        "accounts = \"elsewhere.toml",
    );
    let read = |p: &Path| -> Result<String, ConfigError> {
        Err(ConfigError::Unreadable {
            path: p.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    };
    match config::load_str(Path::new("stages.toml"), &s, Path::new(FIXTURES), &read) {
        Err(ConfigError::Invalid(d)) => {
            assert_eq!(d.len(), 1, "{d:#?}");
            assert_at(
                &d[0],
                "stages.toml",
                3,
                27,
                "accounts = \"elsewhere.toml",
                "string",
            );
        }
        other => panic!("expected the syntax error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Many errors, warnings

#[test]
fn five_errors_in_one_run() {
    let mut s = stages_with("bake = \"10m\"", "baek = \"10m\"");
    s = edit(&s, "account = \"build\"", "account = \"builds\"");
    s = edit(&s, "suite = \"smoke.toml\"", "suite = \"nowhere.toml\"");
    s = edit(&s, "min_approvals = 1", "min_approvals = 3");
    s = edit(&s, "Europe/Berlin", "Europe/Berlim");
    let mut errs = errors(&s, ACCOUNTS);
    errs.sort_by_key(|d| (d.line, d.col));
    let found: Vec<(usize, usize)> = errs.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(
        found,
        [(13, 11), (22, 9), (30, 1), (51, 17), (58, 12)],
        "{errs:#?}"
    );
    let says = [
        "unknown account `builds`",
        "does not exist",
        "unknown key `baek`",
        "min_approvals is 3",
        "not an IANA time zone",
    ];
    for (d, says) in errs.iter().zip(says) {
        assert!(d.message.contains(says), "expected `{says}` in {d}");
    }
}

#[test]
fn errors_in_both_files_come_out_together() {
    let s = stages_with("bake = \"10m\"", "bake = \"10x\"");
    let a = accounts_with("region = \"us-east-1\"", "region = \"us-east\"");
    let errs = errors(&s, &a);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter()
            .any(|d| d.file.ends_with("accounts.toml") && d.line == 17)
    );
    assert!(
        errs.iter()
            .any(|d| d.file.ends_with("stages.toml") && d.line == 30)
    );
}

/// Beta runs no tests, so prod's approvers would decide without any results.
fn approval_without_tests() -> String {
    stages_with("before = [\"unit\"]\nafter = [\"smoke\"]\nbake", "bake")
}

#[test]
fn approval_without_tests_before_it_is_a_warning() {
    let loaded = load(&approval_without_tests(), ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_at(
        w,
        "stages.toml",
        47,
        1,
        "[pipelines.stages.approval]",
        "stage `prod` asks for approval but no tests run before it",
    );
}

/// A Lambda function packaged as an image, running `uri`.
fn image_function(id: &str, uri: &str) -> String {
    format!(
        "  {id}:\n    Type: AWS::Lambda::Function\n    Properties:\n      PackageType: Image\n      \
         Role: arn:aws:iam::222222222222:role/api\n      Code:\n        ImageUri: {uri}\n"
    )
}

/// A template with a sidecar function running a fixed image and, with `runs_image`, a
/// function `Api` running the stage's image (parameter `ImageUri`).
fn lambda_template(runs_image: bool) -> String {
    let sidecar = "111111111111.dkr.ecr.eu-west-1.amazonaws.com/sidecar:1";
    let mut body =
        "Parameters:\n  ImageUri:\n    Type: String\n  Other:\n    Type: String\nResources:\n"
            .to_string();
    body += &image_function("Sidecar", sidecar);
    body += &image_function("Worker", "!Ref Other");
    if runs_image {
        body += &image_function("Api", "!Sub \"${ImageUri}\"");
    }
    body
}

/// Beta's template is `template` and beta deploys to `region`, with the artifact in
/// eu-west-1; the template and the suite are written to a scratch directory.
fn lambda_beta_in(region: &str, promote: &str, template: &str) -> Result<Loaded, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lambda.yaml"), template).unwrap();
    for f in ["service.yaml", "smoke.toml"] {
        std::fs::copy(Path::new(FIXTURES).join(f), dir.path().join(f)).unwrap();
    }
    let stages = edit(
        STAGES,
        "targets = [{ account = \"beta\", region = \"eu-west-1\" }]",
        &format!("targets = [{{ account = \"beta\", region = \"{region}\" }}]{promote}"),
    );
    let stages = edit(
        &stages,
        "stack = \"svc-beta\"\ntemplate = \"service.yaml\"",
        "stack = \"svc-beta\"\ntemplate = \"lambda.yaml\"",
    );
    load_at(dir.path(), &stages, ACCOUNTS)
}

/// The warning points at the target in another region and names the function that runs the
/// stage's image parameter, not the ones before it that run a fixed image or another
/// parameter's.
#[test]
fn a_lambda_image_in_another_region_than_a_retagged_artifact_is_a_warning() {
    let loaded =
        lambda_beta_in("us-east-1", "", &lambda_template(true)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_at(
        w,
        "stages.toml",
        27,
        12,
        "{ account = \"beta\", region = \"us-east-1\" }",
        "stage `beta` deploys to us-east-1, and its template runs the image in a Lambda function (`Api`, from parameter `ImageUri`); with `promote = \"retag\"` the image stays in `svc` in eu-west-1",
    );
    assert!(w.help.contains("promote = \"copy\""), "{w}");
    // The artifact's own region, or the image copied into the stage's region: no warning.
    for (region, promote) in [("eu-west-1", ""), ("us-east-1", "\npromote = \"copy\"")] {
        let loaded = lambda_beta_in(region, promote, &lambda_template(true))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            loaded.warnings.is_empty(),
            "{region}{promote}: {:?}",
            loaded.warnings
        );
    }
}

/// Image functions that run a fixed image or another parameter's are not warned about: the
/// stage's image does not go to them.
#[test]
fn a_lambda_image_function_not_running_the_stages_image_is_no_warning() {
    let loaded =
        lambda_beta_in("us-east-1", "", &lambda_template(false)).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

// ---------------------------------------------------------------------------------------------
// The binary: exit codes

#[test]
fn binary_exits_0_on_a_valid_file_and_prints_warnings() {
    let dir = scratch(&approval_without_tests(), ACCOUNTS);
    let out = tollgate(&["validate", "--config", "stages.toml"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: stages.toml:47:1: stage `prod` asks for approval"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 warning(s)"));
}

#[test]
fn binary_exits_1_on_an_invalid_file_with_every_error() {
    let s = stages_with("bake = \"10m\"", "bake = \"10x\"");
    let a = accounts_with("id = \"444444444444\"", "id = \"4444\"");
    let dir = scratch(&s, &a);
    let out = tollgate(&["validate", "stages.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: stages.toml:30:8: `x` is not a unit"),
        "{err}"
    );
    assert!(err.contains("    | \"10x\"\n"), "{err}");
    assert!(
        err.contains("error: accounts.toml:14:6: `4444` is not an AWS account id"),
        "{err}"
    );
    assert!(err.contains("= help: "), "{err}");
    assert!(err.contains("2 error(s) in the configuration"), "{err}");
}

#[test]
fn binary_exits_2_when_the_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate(&["validate", "nowhere.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read nowhere.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn binary_exits_2_when_the_accounts_file_is_missing() {
    let dir = scratch(STAGES, ACCOUNTS);
    std::fs::remove_file(dir.path().join("accounts.toml")).unwrap();
    let out = tollgate(&["validate", "stages.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read accounts.toml"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// The binary: schemas

fn schema(args: &[&str]) -> serde_json::Value {
    let out = tollgate(args, Path::new(REPO));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

#[test]
fn schema_of_stages_toml() {
    let s = schema(&["schema"]);
    assert!(s["properties"]["pipelines"].is_object(), "{s:#}");
    assert!(s["properties"]["accounts"].is_object(), "{s:#}");
    assert_eq!(s["additionalProperties"], serde_json::json!(false));
    let deploy = &s["$defs"]["RawDeploy"]["properties"]["rollback_stage"];
    assert_eq!(deploy["maxLength"], 100, "{deploy:#}");
    assert_eq!(deploy["pattern"], "^[A-Za-z0-9.@\\-_]+$", "{deploy:#}");
    let text = s.to_string();
    for key in [
        "min_approvals",
        "blackouts",
        "base_url_output",
        "image_parameter",
        "rollback_stage",
    ] {
        assert!(text.contains(key), "{key} missing from the schema");
    }
}

#[test]
fn schema_of_accounts_toml() {
    let s = schema(&["schema", "--accounts"]);
    assert!(s["properties"]["accounts"].is_object(), "{s:#}");
    assert!(s["properties"].get("pipelines").is_none(), "{s:#}");
    let text = s.to_string();
    for key in ["role_arn", "external_id", "session_duration", "env", "file"] {
        assert!(text.contains(key), "{key} missing from the schema");
    }
}

/// Every property name anywhere in a JSON Schema.
fn property_names(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            map.values().for_each(|x| property_names(x, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|x| property_names(x, out)),
        _ => {}
    }
}

#[test]
fn every_key_is_documented() {
    let docs = include_str!("../../../docs/configuration.md");
    let mut keys = Vec::new();
    property_names(&config::stages_schema(), &mut keys);
    property_names(&config::accounts_schema(), &mut keys);
    assert!(keys.len() > 50, "{keys:?}");
    for key in keys {
        assert!(
            docs.contains(&format!("| `{key}` |")),
            "`{key}` has no row in docs/configuration.md"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// No input makes the loader panic

/// Loads arbitrary text; checks the outcome is well formed.
fn load_anything(stages: &str, accounts: &str) {
    match load_at(Path::new(REPO), stages, accounts) {
        Ok(_) => {}
        Err(ConfigError::Invalid(diags)) => {
            assert!(diags.iter().any(|d| d.severity == Severity::Error));
            let lines = |t: &str| t.matches('\n').count() + 1;
            let most = lines(stages).max(lines(accounts));
            for d in &diags {
                assert!(d.line >= 1 && d.col >= 1, "{d}");
                assert!(d.line <= most, "{d}");
                assert!(!d.message.is_empty(), "{d}");
                let _ = d.to_string();
            }
        }
        Err(e) => panic!("the accounts text was served, yet: {e}"),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(usize, u8),
    Truncate(usize),
    DuplicateLine(usize),
    DeleteLine(usize),
    SwapLines(usize, usize),
    Insert(usize, &'static str),
}

const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    "\"",
    "'",
    "\n",
    ",",
    ".",
    "#",
    "é",
    "\u{0}",
    "\u{1F600}",
    "\"\"\"",
    "1979-05-27",
    "-1",
    "99999999999999999999",
    "[[pipelines.stages]]",
    "[pipelines.stages.deploy]",
    "kind = \"command\"",
    "targets = []",
    "external_id = \"x\"",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::DeleteLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), prop::sample::select(FRAGMENTS)).prop_map(|(i, f)| Mutation::Insert(i, f)),
    ]
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    match *m {
        Mutation::FlipByte(i, b) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] ^= b;
        }
        Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
        Mutation::Insert(i, f) => {
            let i = i % (bytes.len() + 1);
            bytes.splice(i..i, f.bytes());
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let i = i % lines.len();
            lines.insert(i, lines[i]);
            return lines.concat();
        }
        Mutation::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i % lines.len());
            return lines.concat();
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let n = lines.len();
            lines.swap(a % n, b % n);
            return lines.concat();
        }
        _ => {}
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(stages in any::<String>(), accounts in any::<String>()) {
        load_anything(&stages, &accounts);
        load_anything(&stages, EXAMPLE_ACCOUNTS);
    }

    #[test]
    fn toml_like_text_never_panics(
        parts in prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40),
        keys in prop::collection::vec("[a-z_]{1,12}", 0..10),
    ) {
        let mut text = parts.concat();
        for k in &keys {
            text.push_str(&format!("\n{k} = \"{k}\"\n[{k}]\n"));
        }
        load_anything(&text, EXAMPLE_ACCOUNTS);
        load_anything(EXAMPLE, &text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn mutated_example_never_panics(
        stage_edits in prop::collection::vec(mutation(), 1..6),
        account_edits in prop::collection::vec(mutation(), 0..3),
    ) {
        let stages = stage_edits.iter().fold(EXAMPLE.to_string(), |t, m| mutate(&t, m));
        let accounts = account_edits
            .iter()
            .fold(EXAMPLE_ACCOUNTS.to_string(), |t, m| mutate(&t, m));
        load_anything(&stages, &accounts);
    }

    #[test]
    fn a_literal_external_id_is_never_shown(secret in "[A-Za-z0-9+/=_-]{12,40}") {
        let accounts = EXAMPLE_ACCOUNTS.replace(
            "{ env = \"TOLLGATE_EXTERNAL_ID_GAMMA\" }",
            &format!("\"{secret}\""),
        );
        let err = load_at(Path::new(REPO), EXAMPLE, &accounts).expect_err("a literal is invalid");
        let rendered = format!("{err}\n{err:?}");
        prop_assert!(rendered.contains("written literally"), "{}", rendered);
        prop_assert!(!rendered.contains(&secret), "{}", rendered);
    }
}

// ---------------------------------------------------------------------------------------------
// Bake data points

/// The fixture with beta watching `beta-5xx` and `extra` (lines from 32 on) after its bake.
fn beta_with_alarm(extra: &str) -> String {
    stages_with(
        "bake = \"10m\"",
        &format!("bake = \"10m\"\nalarms = [\"beta-5xx\"]\n{extra}"),
    )
}

#[test]
fn bake_data_defaults_depend_on_alarms() {
    let loaded = load(&beta_with_alarm(""), ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    let stages = &loaded.config.pipelines[0].stages;
    assert_eq!(stages[0].min_datapoints, 3, "a stage with alarms");
    assert_eq!(stages[0].insufficient_data, config::InsufficientData::Wait);
    assert_eq!(
        stages[0].bake_max_wait,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(stages[1].min_datapoints, 0, "a stage without alarms");

    let set = "min_datapoints = 10\ninsufficient_data = \"pass\"\nbake_max_wait = \"20m\"";
    let loaded = load(&beta_with_alarm(set), ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    let beta = &loaded.config.pipelines[0].stages[0];
    assert_eq!(beta.min_datapoints, 10);
    assert_eq!(beta.insufficient_data, config::InsufficientData::Pass);
    assert_eq!(beta.bake_max_wait, std::time::Duration::from_secs(1200));
}

#[test]
fn alarm_delay_is_auto_a_duration_up_to_a_day_and_only_with_alarms() {
    let loaded = load(&beta_with_alarm(""), ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    let stages = &loaded.config.pipelines[0].stages;
    assert_eq!(stages[0].alarm_delay, config::AlarmDelay::Auto);
    let loaded = load(&beta_with_alarm("alarm_delay = \"auto\""), ACCOUNTS)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.config.pipelines[0].stages[0].alarm_delay,
        config::AlarmDelay::Auto
    );
    let loaded =
        load(&beta_with_alarm("alarm_delay = \"5m\""), ACCOUNTS).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.config.pipelines[0].stages[0].alarm_delay,
        config::AlarmDelay::Fixed(std::time::Duration::from_secs(300))
    );

    let d = one_error(&beta_with_alarm("alarm_delay = \"soon\""), ACCOUNTS);
    assert_at(&d, "stages.toml", 32, 15, "\"soon\"", "soon");
    assert!(d.help.contains("`auto`"), "{d}");
    let d = one_error(&beta_with_alarm("alarm_delay = \"8d\""), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        32,
        15,
        "\"8d\"",
        "alarm_delay is 192h, more than 7d",
    );
    let d = one_error(
        &stages_with("bake = \"10m\"", "bake = \"10m\"\nalarm_delay = \"1m\""),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        31,
        15,
        "\"1m\"",
        "alarm_delay is `1m` but the stage has no alarms",
    );
}

#[test]
fn unknown_insufficient_data_policy() {
    let d = one_error(&beta_with_alarm("insufficient_data = \"ignore\""), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        32,
        21,
        "\"ignore\"",
        "unknown insufficient_data `ignore`",
    );
    assert!(
        d.help.contains("`wait`, `fail`, `pass` or `roll_back`"),
        "{d}"
    );
}

#[test]
fn min_datapoints_without_alarms() {
    let d = one_error(
        &stages_with("bake = \"10m\"", "bake = \"10m\"\nmin_datapoints = 5"),
        ACCOUNTS,
    );
    assert_at(
        &d,
        "stages.toml",
        31,
        18,
        "5",
        "min_datapoints is 5 but the stage has no alarms",
    );
}

#[test]
fn min_datapoints_out_of_bounds() {
    let d = one_error(&beta_with_alarm("min_datapoints = 20000"), ACCOUNTS);
    assert_at(&d, "stages.toml", 32, 18, "20000", "more than 10080");
    let d = one_error(&beta_with_alarm("min_datapoints = -1"), ACCOUNTS);
    assert_at(&d, "stages.toml", 32, 18, "-1", "invalid value");
}

#[test]
fn bake_max_wait_bad_or_too_long() {
    let d = one_error(&beta_with_alarm("bake_max_wait = \"soon\""), ACCOUNTS);
    assert_at(&d, "stages.toml", 32, 17, "\"soon\"", "is not a duration");
    let d = one_error(&beta_with_alarm("bake_max_wait = \"8d\""), ACCOUNTS);
    assert_at(&d, "stages.toml", 32, 17, "\"8d\"", "more than 7d");
}

#[test]
fn min_alarm_evaluations_is_refused_and_points_to_min_datapoints() {
    let d = one_error(&beta_with_alarm("min_alarm_evaluations = 2"), ACCOUNTS);
    assert_at(
        &d,
        "stages.toml",
        32,
        1,
        "min_alarm_evaluations",
        "no longer read",
    );
    assert!(d.help.contains("min_datapoints"), "{d}");
}
