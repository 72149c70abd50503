//! A configuration of many pipelines, for the benchmarks that measure the controller at scale:
//! `n` pipelines `svc-0` … `svc-<n-1>`, each following `acme/svc-<i>` with three CloudFormation
//! stages (beta → gamma → prod) in the controller's own account, written into a directory with
//! its `accounts/accounts.toml` and template.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The GitHub repository pipeline `i` follows.
pub fn repository(i: usize) -> String {
    format!("acme/svc-{i}")
}

/// Writes `stages.toml` (with `[controller.http]` set to `http`, TOML lines) for `n` pipelines
/// into `dir`; returns its path.
pub fn write(dir: &Path, n: usize, public_url: &str, http: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("accounts"))?;
    std::fs::write(
        dir.join("accounts/accounts.toml"),
        "[accounts.build]\nid = \"123456789012\"\nregion = \"us-east-1\"\ncontroller = true\n",
    )?;
    std::fs::write(
        dir.join("service.yaml"),
        "Parameters:\n  ImageUri:\n    Type: String\nResources:\n  Image:\n    Type: AWS::SSM::Parameter\n    Properties:\n      Type: String\n      Value: !Ref ImageUri\n",
    )?;
    let mut out = format!(
        "accounts = \"accounts/accounts.toml\"\n\n[controller]\npublic_url = \"{public_url}\"\n\n[controller.http]\n{http}\n"
    );
    for i in 0..n {
        out.push_str(&pipeline(i));
    }
    let path = dir.join("stages.toml");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn pipeline(i: usize) -> String {
    let mut out = format!(
        "\n[[pipelines]]\nname = \"svc-{i}\"\n[pipelines.source]\nrepository = \"{}\"\nbranch = \"main\"\n\
         [pipelines.artifact]\nrepository = \"svc-{i}\"\naccount = \"build\"\nregion = \"us-east-1\"\ntag = \"{{sha}}\"\n",
        repository(i)
    );
    for stage in ["beta", "gamma", "prod"] {
        out.push_str(&format!(
            "\n[[pipelines.stages]]\nname = \"{stage}\"\ntargets = [{{ account = \"build\" }}]\n\
             [pipelines.stages.deploy]\nkind = \"cloudformation\"\nstack = \"svc-{i}-{stage}\"\n\
             template = \"service.yaml\"\nimage_parameter = \"ImageUri\"\n"
        ));
    }
    out
}
