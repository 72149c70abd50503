//! GitHub webhook intake against GitHub's own material: the HMAC test vector from GitHub's
//! documentation, and every `ping`, `push` and `workflow_run` example payload published in the
//! npm package `@octokit/webhooks-examples` (installed by `scripts/test`).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::Value;
use tollgate::github::webhook::{
    GithubEvent, Malformed, ParseError, PushEvent, SignatureError, WebhookSecrets,
    WorkflowRunEvent, parse_event, sign, verify_signature,
};
use tollgate::secret::Secret;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const EXAMPLES_ENV: &str = "TOLLGATE_WEBHOOK_EXAMPLES";
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Every example of one event, with where it came from (`api.github.com`, `ghes-35`, …).
struct Example {
    source: String,
    payload: Value,
}

impl Example {
    fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.payload).unwrap()
    }

    fn str(&self, pointer: &str) -> Option<&str> {
        self.payload.pointer(pointer).and_then(Value::as_str)
    }
}

struct Fixtures {
    ping: Vec<Example>,
    push: Vec<Example>,
    workflow_run: Vec<Example>,
}

static FIXTURES: LazyLock<Fixtures> = LazyLock::new(load_fixtures);

fn examples_dir() -> PathBuf {
    match std::env::var_os(EXAMPLES_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(WORKSPACE).join(".cache/npm/node_modules/@octokit/webhooks-examples"),
    }
}

/// The package's `<target>/index.json` files: `api.github.com` and one per GHES version.
fn index_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "GitHub webhook examples not found at {} ({e}): run scripts/test, which installs \
             @octokit/webhooks-examples into .cache/npm and sets {EXAMPLES_ENV}",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path().join("index.json"))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no */index.json in {}", dir.display());
    files
}

fn load_fixtures() -> Fixtures {
    let mut fixtures = Fixtures {
        ping: Vec::new(),
        push: Vec::new(),
        workflow_run: Vec::new(),
    };
    for file in index_files(&examples_dir()) {
        let source = file.parent().unwrap().file_name().unwrap();
        let source = source.to_string_lossy().into_owned();
        let index: Vec<Value> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for event in index {
            let bucket = match event["name"].as_str() {
                Some("ping") => &mut fixtures.ping,
                Some("push") => &mut fixtures.push,
                Some("workflow_run") => &mut fixtures.workflow_run,
                _ => continue,
            };
            for payload in event["examples"].as_array().unwrap() {
                let source = source.clone();
                bucket.push(Example {
                    source,
                    payload: payload.clone(),
                });
            }
        }
    }
    fixtures
}

fn parse_push(example: &Example) -> PushEvent {
    match parse_event("push", &example.body()) {
        Ok(GithubEvent::Push(push)) => push,
        other => panic!("push example from {}: {other:?}", example.source),
    }
}

fn parse_run(example: &Example) -> WorkflowRunEvent {
    match parse_event("workflow_run", &example.body()) {
        Ok(GithubEvent::WorkflowRun(run)) => run,
        other => panic!("workflow_run example from {}: {other:?}", example.source),
    }
}

fn find<'a>(examples: &'a [Example], what: &str, pred: impl Fn(&Example) -> bool) -> &'a Example {
    examples
        .iter()
        .find(|e| pred(e))
        .unwrap_or_else(|| panic!("no example {what} in the package"))
}

// ---------------------------------------------------------------------------------------------
// Real payloads: every example parses, and agrees with its JSON
// ---------------------------------------------------------------------------------------------

#[test]
fn every_ping_example_parses() {
    assert!(!FIXTURES.ping.is_empty());
    for example in &FIXTURES.ping {
        let event = parse_event("ping", &example.body());
        assert_eq!(event, Ok(GithubEvent::Ping), "from {}", example.source);
    }
}

#[test]
fn every_push_example_parses_and_agrees_with_its_json() {
    assert!(!FIXTURES.push.is_empty());
    for example in &FIXTURES.push {
        let push = parse_push(example);
        let json = &example.payload;
        let git_ref = json["ref"].as_str().unwrap();
        assert_eq!(
            push.repository, json["repository"]["full_name"],
            "{}",
            example.source
        );
        assert_eq!(push.git_ref, git_ref);
        assert_eq!(push.branch.as_deref(), git_ref.strip_prefix("refs/heads/"));
        assert_eq!(push.after, json["after"]);
        assert_eq!(push.deleted, json["deleted"]);
        assert_eq!(push.created, json["created"]);
        assert_eq!(push.pusher, json["pusher"]["name"]);
        assert_eq!(push.compare_url.as_deref(), example.str("/compare"));
        let head_sha = push.head_commit.as_ref().map(|c| c.sha.as_str());
        assert_eq!(head_sha, example.str("/head_commit/id"));
    }
}

#[test]
fn every_workflow_run_example_parses_and_agrees_with_its_json() {
    assert!(!FIXTURES.workflow_run.is_empty());
    for example in &FIXTURES.workflow_run {
        let run = parse_run(example);
        let json = &example.payload;
        let wr = &json["workflow_run"];
        assert_eq!(run.action, json["action"], "{}", example.source);
        assert_eq!(run.repository, json["repository"]["full_name"]);
        assert_eq!(run.head_repository, wr["head_repository"]["full_name"]);
        assert_eq!(run.from_fork, run.repository != run.head_repository);
        assert_eq!(run.run_id, wr["id"].as_u64().unwrap());
        assert_eq!(run.run_url, wr["html_url"]);
        assert_eq!(run.status, wr["status"]);
        assert_eq!(run.head_sha, wr["head_sha"]);
        assert_eq!(run.conclusion.as_deref(), wr["conclusion"].as_str());
        assert_eq!(run.head_branch.as_deref(), wr["head_branch"].as_str());
        assert!(
            run.workflow_path.starts_with(".github/workflows/"),
            "{}",
            run.workflow_path
        );
        assert!(!run.workflow_name.is_empty());
        let head_sha = run.head_commit.as_ref().map(|c| c.sha.as_str());
        assert_eq!(head_sha, example.str("/workflow_run/head_commit/id"));
    }
}

#[test]
fn branch_push_gives_branch_sha_author_and_changed_files() {
    let example = find(&FIXTURES.push, "pushing a branch", |e| {
        e.str("/ref").is_some_and(|r| r.starts_with("refs/heads/"))
    });
    let push = parse_push(example);
    assert_eq!(push.repository, "Codertocat/Hello-World");
    assert_eq!(push.branch.as_deref(), Some("master"));
    assert_eq!(push.after, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert!(!push.deleted);
    assert_eq!(push.changed_files, ["README.md"]);
    let commit = push.head_commit.unwrap();
    assert_eq!(commit.sha, push.after);
    assert_eq!(commit.author_login.as_deref(), Some("Codertocat"));
    assert_eq!(commit.author_name, "Codertocat");
    assert_eq!(Some(commit.url.as_str()), example.str("/head_commit/url"));
}

#[test]
fn tag_push_has_no_branch() {
    let example = find(&FIXTURES.push, "creating a tag", |e| {
        e.str("/ref").is_some_and(|r| r.starts_with("refs/tags/")) && e.payload["created"] == true
    });
    let push = parse_push(example);
    assert_eq!(push.git_ref, "refs/tags/simple-tag");
    assert_eq!(push.branch, None);
    assert!(push.created && !push.deleted);
}

#[test]
fn deletions_are_marked_deleted() {
    let example = find(&FIXTURES.push, "deleting a ref", |e| {
        e.payload["deleted"] == true
    });
    let push = parse_push(example);
    assert!(push.deleted);
    assert_eq!(push.after, "0".repeat(40));
    assert_eq!(push.head_commit, None);

    // The package has tag deletions only; the same payload for a branch.
    let mut payload = example.payload.clone();
    payload["ref"] = "refs/heads/feature/old".into();
    let branch = Example {
        source: example.source.clone(),
        payload,
    };
    let push = parse_push(&branch);
    assert!(push.deleted);
    assert_eq!(push.branch.as_deref(), Some("feature/old"));
}

#[test]
fn completed_run_gives_conclusion_branch_and_workflow_file() {
    let example = find(&FIXTURES.workflow_run, "of a successful run", |e| {
        e.str("/workflow_run/conclusion") == Some("success")
    });
    let run = parse_run(example);
    assert_eq!(run.action, "completed");
    assert_eq!(run.repository, "octo-org/octo-repo");
    assert_eq!(run.conclusion.as_deref(), Some("success"));
    assert_eq!(run.head_branch.as_deref(), Some("master"));
    assert_eq!(run.head_sha, "3484a3fb816e0859fd6e1cea078d76385ff50625");
    assert_eq!(run.workflow_path, ".github/workflows/test.yml");
    assert_eq!(run.run_id, 289782451);
    assert!(!run.from_fork);
    let commit = run.head_commit.unwrap();
    assert_eq!(commit.sha, run.head_sha);
    assert_eq!(commit.author_login, None);
    assert!(
        commit.url.ends_with(&format!("/commit/{}", run.head_sha)),
        "{}",
        commit.url
    );
}

#[test]
fn run_from_another_repository_is_a_fork() {
    let example = find(&FIXTURES.workflow_run, "from another repository", |e| {
        e.str("/repository/full_name") != e.str("/workflow_run/head_repository/full_name")
    });
    let run = parse_run(example);
    assert!(run.from_fork);
    assert_eq!(run.repository, "Codertocat/Hello-World");
    assert_eq!(run.head_repository, "octo-org/octo-repo");
    assert_eq!(run.conclusion, None);
    // This payload has no `workflow_run.path`; the top-level `workflow` names the file.
    assert_eq!(run.workflow_path, ".github/workflows/syntax.yml");
    assert_eq!(run.workflow_name, "Manually triggered workflow");
}

// ---------------------------------------------------------------------------------------------
// Bad payloads: a clear error naming the field
// ---------------------------------------------------------------------------------------------

fn error_for(event: &str, example: &Example, edit: impl FnOnce(&mut Value)) -> ParseError {
    let mut payload = example.payload.clone();
    edit(&mut payload);
    parse_event(event, &serde_json::to_vec(&payload).unwrap()).unwrap_err()
}

#[test]
fn missing_or_mistyped_fields_are_named() {
    let push = &FIXTURES.push[0];
    let err = error_for("push", push, |p| {
        drop(p.as_object_mut().unwrap().remove("after"))
    });
    assert_eq!(err.to_string(), "`push` payload is missing `after`");
    let err = error_for("push", push, |p| {
        p["repository"]["full_name"] = "no-slash".into()
    });
    assert!(
        err.to_string()
            .contains("`repository.full_name` must be `owner/name`"),
        "{err}"
    );

    let run = &FIXTURES.workflow_run[0];
    let err = error_for("workflow_run", run, |p| {
        p["workflow_run"]["id"] = "12".into()
    });
    assert_eq!(
        err.to_string(),
        "`workflow_run` payload field `workflow_run.id` must be a non-negative integer"
    );
    let err = error_for("workflow_run", run, |p| {
        p["workflow_run"]["head_sha"] = "main".into()
    });
    assert!(
        err.to_string()
            .contains("`workflow_run.head_sha` must be a commit sha"),
        "{err}"
    );
}

#[test]
fn malformed_json_is_an_error_for_known_events() {
    for event in ["ping", "push", "workflow_run"] {
        let err = parse_event(event, b"{\"ref\": ").unwrap_err();
        assert!(matches!(err, ParseError::Json { .. }), "{event}: {err}");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

fn secrets(list: &[&str]) -> WebhookSecrets {
    WebhookSecrets::from_env_value(&list.join(",")).unwrap()
}

#[test]
fn github_documented_test_vector() {
    // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let documented = "It's a Secret to Everybody";
    assert_eq!(sign(&Secret::new(documented), b"Hello, World!"), header);
    // The documented secret is 26 bytes: tollgate refuses to run with a secret that short.
    let refused = WebhookSecrets::from_env_value(documented).unwrap_err();
    assert!(refused.to_string().contains("at least 32"), "{refused}");
}

#[test]
fn rotation_accepts_either_secret_and_nothing_else() {
    let body = FIXTURES.push[0].body();
    let accepted = secrets(&[
        "old-secret-0123456789abcdef0123456789",
        "new-secret-0123456789abcdef0123456789",
    ]);
    for key in [
        "old-secret-0123456789abcdef0123456789",
        "new-secret-0123456789abcdef0123456789",
    ] {
        let header = sign(&Secret::new(key), &body);
        assert_eq!(
            verify_signature(&accepted, Some(&header), &body),
            Ok(()),
            "{key}"
        );
    }
    let header = sign(
        &Secret::new("another-secret-0123456789abcdef01234567"),
        &body,
    );
    let result = verify_signature(&accepted, Some(&header), &body);
    assert_eq!(result, Err(SignatureError::Mismatch));
}

#[test]
fn each_bad_signature_gets_its_own_error() {
    let accepted = secrets(&["s3cret-s3cret-s3cret-s3cret-s3cret-s3cret"]);
    let body = FIXTURES.workflow_run[0].body();
    let good = sign(
        &Secret::new("s3cret-s3cret-s3cret-s3cret-s3cret-s3cret"),
        &body,
    );
    let digest = &good["sha256=".len()..];
    let check = |header: Option<&str>, body: &[u8]| verify_signature(&accepted, header, body);

    assert_eq!(check(None, &body), Err(SignatureError::Missing));
    let sha1 = format!("sha1={}", &digest[..40]);
    assert_eq!(
        check(Some(&sha1), &body),
        Err(SignatureError::Malformed(Malformed::Prefix))
    );
    let odd = &good[..good.len() - 1];
    assert_eq!(
        check(Some(odd), &body),
        Err(SignatureError::Malformed(Malformed::Length))
    );
    let not_hex = format!("sha256={}xy", &digest[2..]);
    let result = check(Some(&not_hex), &body);
    assert_eq!(result, Err(SignatureError::Malformed(Malformed::NotHex)));
    let wrong = format!("sha256={}", "ab".repeat(32));
    assert_eq!(check(Some(&wrong), &body), Err(SignatureError::Mismatch));

    let mut changed = body.clone();
    changed[body.len() / 2] ^= 0x01;
    assert_eq!(check(Some(&good), &changed), Err(SignatureError::Mismatch));
    assert_eq!(check(Some(&good), &body), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Properties: nothing panics, whatever arrives
// ---------------------------------------------------------------------------------------------

const EVENTS: [&str; 5] = ["ping", "push", "workflow_run", "issues", ""];

/// Fields (JSON pointers) that a hostile or broken sender might get wrong.
const PUSH_FIELDS: &[&str] = &[
    "/ref",
    "/after",
    "/deleted",
    "/created",
    "/compare",
    "/pusher",
    "/pusher/name",
    "/repository",
    "/repository/full_name",
    "/head_commit",
    "/head_commit/id",
    "/head_commit/author",
    "/head_commit/author/username",
    "/commits",
    "/commits/0",
    "/commits/0/added",
    "/commits/0/added/0",
];
const RUN_FIELDS: &[&str] = &[
    "/action",
    "/repository/full_name",
    "/workflow_run",
    "/workflow_run/id",
    "/workflow_run/html_url",
    "/workflow_run/status",
    "/workflow_run/conclusion",
    "/workflow_run/head_branch",
    "/workflow_run/head_sha",
    "/workflow_run/head_repository",
    "/workflow_run/head_repository/full_name",
    "/workflow_run/head_commit",
    "/workflow_run/head_commit/author/email",
];

fn any_json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

fn dotted(pointer: &str) -> String {
    let mut path = String::new();
    for part in pointer.trim_start_matches('/').split('/') {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{part}]"));
        } else if path.is_empty() {
            path.push_str(part);
        } else {
            path.push_str(&format!(".{part}"));
        }
    }
    path
}

fn error_field(err: &ParseError) -> &str {
    match err {
        ParseError::Json { .. } => "",
        ParseError::MissingField { field, .. } | ParseError::InvalidField { field, .. } => field,
    }
}

proptest! {
    #[test]
    fn parse_event_never_panics_on_arbitrary_bytes(
        event in proptest::sample::select(&EVENTS[..]),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = parse_event(event, &body);
    }

    #[test]
    fn verify_signature_never_panics(
        header in proptest::option::of(".{0,80}"),
        hex_digest in "[0-9a-fA-F]{0,70}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let accepted = secrets(&[&"a".repeat(32), &"b".repeat(32)]);
        let _ = verify_signature(&accepted, header.as_deref(), &body);
        let header = format!("sha256={hex_digest}");
        prop_assert!(verify_signature(&accepted, Some(&header), &body).is_err());
    }

    #[test]
    fn a_broken_field_is_an_error_naming_it_or_is_accepted(
        run in any::<bool>(),
        pick in any::<prop::sample::Index>(),
        example in any::<prop::sample::Index>(),
        leaf in any_json_leaf(),
    ) {
        let (event, fields, examples) = if run {
            ("workflow_run", RUN_FIELDS, &FIXTURES.workflow_run)
        } else {
            ("push", PUSH_FIELDS, &FIXTURES.push)
        };
        let pointer = fields[pick.index(fields.len())];
        let mut payload = examples[example.index(examples.len())].payload.clone();
        if let Some(slot) = payload.pointer_mut(pointer) {
            *slot = leaf;
            if let Err(err) = parse_event(event, &serde_json::to_vec(&payload).unwrap()) {
                let field = error_field(&err);
                prop_assert!(field.starts_with(&dotted(pointer)), "{pointer}: {err}");
            }
        }
    }
}

/// The payload's people in each role, as (role, login, email) read from the example itself.
fn people(c: &[tollgate::domain::Contributor]) -> Vec<(String, Option<String>, Option<String>)> {
    c.iter()
        .map(|c| (c.role.to_string(), c.login.clone(), c.email.clone()))
        .collect()
}

#[test]
fn a_push_names_everyone_who_brought_it() {
    let example = find(&FIXTURES.push, "pushing a branch", |e| {
        e.str("/ref").is_some_and(|r| r.starts_with("refs/heads/"))
    });
    let push = parse_push(example);
    let found = people(&push.contributors);
    let s = |p: &str| example.str(p).map(str::to_owned);
    for (role, login, email) in [
        ("pusher", s("/pusher/name"), s("/pusher/email")),
        ("sender", s("/sender/login"), None),
        (
            "committer",
            s("/head_commit/committer/username"),
            s("/head_commit/committer/email"),
        ),
        (
            "commit author",
            s("/commits/0/author/username"),
            s("/commits/0/author/email"),
        ),
    ] {
        assert!(
            found.contains(&(role.to_owned(), login.clone(), email.clone())),
            "{role} {login:?} {email:?} in {found:?}"
        );
    }
}

#[test]
fn a_build_run_names_its_actor_and_triggering_actor() {
    let example = find(&FIXTURES.workflow_run, "of a successful run", |e| {
        e.str("/workflow_run/conclusion") == Some("success")
    });
    let run = parse_run(example);
    let found = people(&run.contributors);
    let s = |p: &str| example.str(p).map(str::to_owned);
    let actor = (
        "workflow actor".to_owned(),
        s("/workflow_run/actor/login"),
        None,
    );
    assert!(actor.1.is_some() && found.contains(&actor), "{found:?}");
    if let Some(t) = s("/workflow_run/triggering_actor/login") {
        let triggering = ("triggering actor".to_owned(), Some(t), None);
        assert!(found.contains(&triggering), "{found:?}");
    }
    let sender = ("sender".to_owned(), s("/sender/login"), None);
    assert!(found.contains(&sender), "{found:?}");
}
