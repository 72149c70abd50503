use std::path::{Path, PathBuf};
use tollgate::config::{self, ConfigError, Diagnostic};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");
const STAGES: &str = include_str!("fixtures/config/stages.toml");
const ACCOUNTS: &str = include_str!("fixtures/config/accounts.toml");

fn load(stages: &str, accounts: &str) -> Result<config::Loaded, ConfigError> {
    let base = PathBuf::from(FIXTURES);
    let accounts_path = base.join("accounts.toml");
    let accounts = accounts.to_string();
    config::load_str(Path::new("stages.toml"), stages, &base, &move |p: &Path| {
        if p == accounts_path { Ok(accounts.clone()) } else {
            Err(ConfigError::Unreadable { path: p.to_path_buf(), source: std::io::ErrorKind::NotFound.into() })
        }
    })
}
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from}");
    text.replacen(from, to, 1)
}
fn dump(name: &str, s: &str, a: &str) {
    println!("=== {name}");
    match load(s, a) {
        Ok(l) => { println!("OK warnings={}", l.warnings.len()); for w in l.warnings { println!("{w:?}"); } }
        Err(ConfigError::Invalid(d)) => for x in d { println!("{:?} {}:{}:{} snippet={:?} msg={:?}", x.severity, x.file.display(), x.line, x.col, x.snippet, x.message); },
        Err(e) => println!("ERR {e}"),
    }
}
#[test]
fn probe() {
    let s = STAGES; let a = ACCOUNTS;
    dump("valid", s, a);
    dump("unknown top", &edit(s, "accounts = \"accounts.toml\"\n", "accounts = \"accounts.toml\"\nfoo = 1\n"), a);
    dump("unknown stage", &edit(s, "bake = \"10m\"\n", "bake = \"10m\"\nbaek = \"1m\"\n"), a);
    dump("unknown deploy", &edit(s, "stack = \"svc-beta\"\n", "stack = \"svc-beta\"\nstak = \"x\"\n"), a);
    dump("unknown target", &edit(s, "{ account = \"prod\" }", "{ account = \"prod\", regoin = \"x\" }"), a);
    dump("unknown accounts", s, &edit(a, "controller = true\n", "controller = true\nrole = \"x\"\n"));
    dump("unknown secret key", s, &edit(a, "{ env = \"TOLLGATE_EXTERNAL_ID_BETA\" }", "{ env = \"TOLLGATE_EXTERNAL_ID_BETA\", fil = \"x\" }"));
    dump("unk acct target", &edit(s, "{ account = \"prod\" }", "{ account = \"prd\" }"), a);
    dump("unk acct artifact", &edit(s, "account = \"build\"", "account = \"builds\""), a);
    dump("unk test before", &edit(s, "before = [\"unit\"]", "before = [\"unit\", \"lint\"]"), a);
    dump("dup pipeline", &format!("{s}\n[[pipelines]]\nname = \"svc\"\nsource = {{ repository = \"acme/svc\" }}\nartifact = {{ repository = \"svc\", account = \"build\", region = \"eu-west-1\" }}\nstages = [{{ name = \"one\", targets = [{{ account = \"beta\" }}], deploy = {{ kind = \"codepipeline\", pipeline = \"p\", variable = \"v\" }} }}]\n"), a);
    dump("dup stage", &edit(s, "name = \"prod\"", "name = \"beta\""), a);
    dump("dup test", &edit(s, "[pipelines.tests.smoke]", "[pipelines.tests.unit]"), a);
    dump("empty stages", &s[..s.find("[[pipelines.stages]]").unwrap()], a);
    dump("no targets", &edit(s, "targets = [{ account = \"prod\" }]\n", ""), a);
    dump("bad id", s, &edit(a, "id = \"222222222222\"", "id = \"22222222222\""));
    dump("role kind", s, &edit(a, "222222222222:role/tollgate-deploy", "222222222222:user/tollgate-deploy"));
    dump("role acct", s, &edit(a, "222222222222:role/tollgate-deploy", "999999999999:role/tollgate-deploy"));
    dump("literal", s, &edit(a, "{ env = \"TOLLGATE_EXTERNAL_ID_BETA\" }", "\"s3cr3t-value\""));
    dump("literal int", s, &edit(a, "{ env = \"TOLLGATE_EXTERNAL_ID_BETA\" }", "918273645"));
    dump("region", &edit(s, "region = \"eu-west-1\" }", "region = \"eu-wset\" }"), a);
    dump("duration", &edit(s, "bake = \"10m\"", "bake = \"10 minutes\""), a);
    dump("tz", &edit(s, "Europe/Berlin", "Europe/Berlim"), a);
    dump("window", &edit(s, "end = \"16:00\"", "end = \"08:00\""), a);
    dump("weekday", &edit(s, "\"tue\", \"wed\"", "\"tue\", \"wednesday\", \"thur\""), a);
    dump("blackout", &edit(s, "2026-12-24", "2026-12-32"), a);
    dump("min>n", &edit(s, "min_approvals = 1", "min_approvals = 3"), a);
    dump("min0", &edit(s, "min_approvals = 1", "min_approvals = 0"), a);
    dump("template", &edit(s, "template = \"service.yaml\"\nimage_parameter = \"ImageUri\"\n\n[pipelines.stages.approval]", "template = \"missing.yaml\"\nimage_parameter = \"ImageUri\"\n\n[pipelines.stages.approval]"), a);
    dump("suite", &edit(s, "suite = \"smoke.toml\"", "suite = \"smoke/missing.toml\""), a);
    dump("kind", &edit(s, "kind = \"github-checks\"", "kind = \"shell\""), a);
    dump("argv http", &edit(s, "suite = \"smoke.toml\"\n", "suite = \"smoke.toml\"\nargv = [\"make\", \"smoke\"]\n"), a);
    dump("syntax", &edit(s, "bake = \"10m\"", "bake = \"10m"), a);
    dump("syntax utf8", &edit(s, "bake = \"10m\"", "bäke = 1"), a);
    dump("warn", &edit(s, "before = [\"unit\"]\n", ""), a);
    dump("type", &edit(s, "bake = \"10m\"", "bake = 10"), a);
    dump("missing field", &edit(s, "stack = \"svc-beta\"\ntemplate = \"service.yaml\"\nimage_parameter = \"ImageUri\"\n", "stack = \"svc-beta\"\ntemplate = \"service.yaml\"\nimage_parameter = \"ImageUri\"\n").replace("[pipelines.stages.deploy]\nkind = \"cloudformation\"\nstack = \"svc-beta\"", "[pipelines.stages.deploy]\nstack = \"svc-beta\""), a);
}
