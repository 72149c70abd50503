//! A commit of the configuration repository on disk: its files written where only this
//! process's user can change them, and the configuration loaded from there ([`load_applied`]).
//! Deploys and smoke tests read the templates and suites from that place for as long as the
//! configuration is in force.
//!
//! # Guarantees
//! - Every commit's files go under one directory of this process, made once, when the first
//!   commit is written, in the system's temporary directory (`TMPDIR`): a random name
//!   (`tollgate-config-<pid>-<random>`), mode 0700, made with `mkdir`, which never takes a path
//!   that exists (a directory, a file or a symbolic link put there by someone else: another
//!   name is drawn). No other user can add, replace or link a file in it, so what a deploy
//!   reads is what the commit holds.
//! - Inside it, one directory per commit and content (`<owner>_<name>-<sha>-<digest>`). Two
//!   controllers on one host, or a controller and the one before its restart, never share one.
//! - A commit loaded again is written again (over the same files, each in one step): a file a
//!   temporary-files cleaner removed is back at the next load.
//! - What loading each commit gave (its warnings, or why it was refused) is kept for the
//!   process's life and answered by [`validation`], which writes nothing for a commit this
//!   process loaded: a read (`GET /api/v1/config`) never writes the files again.
//!
//! # Caveats
//! - Nothing here removes a directory: a configuration in force, or one kept or put back in
//!   force later, is read from its directory while the process runs. The process's directory
//!   is left behind when it exits (the system's clean-up of `TMPDIR` takes it; a restart makes
//!   a new one).
//! - Unix only (the mode bits).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::Digest as _;

use crate::config;
use crate::store::AppliedConfig;

/// Validates an applied configuration from its own files: they are written under the
/// directory of their commit in this process's private directory (see the module's doc;
/// templates and suites are read from there when deploying and testing), and loaded from
/// there. Its warnings name the files by their path in the repository; they are the caller's
/// to show (nothing is logged here).
pub fn load_applied(applied: &AppliedConfig) -> Result<config::Loaded, String> {
    let name = commit_dir(applied);
    let loaded = write_and_load(applied, &name);
    let found = loaded.as_ref().map(shown).map_err(Clone::clone);
    LOADED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name, found);
    loaded
}

/// What loading `applied` gave when this process last loaded it, without writing anything:
/// its warnings, as shown, or why it was refused. A commit this process has not loaded (one
/// another controller recorded, which this one follows at its next lease claim) is loaded
/// now, once.
pub fn validation(applied: &AppliedConfig) -> Result<Vec<String>, String> {
    let name = commit_dir(applied);
    let found = LOADED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .cloned();
    found.unwrap_or_else(|| {
        load_applied(applied)
            .as_ref()
            .map(shown)
            .map_err(Clone::clone)
    })
}

/// What loading each commit gave this process ([`validation`]), by its directory's name.
static LOADED: Mutex<BTreeMap<String, Result<Vec<String>, String>>> = Mutex::new(BTreeMap::new());

/// A loaded configuration's warnings, as shown.
fn shown(loaded: &config::Loaded) -> Vec<String> {
    loaded.warnings.iter().map(ToString::to_string).collect()
}

/// Writes `applied`'s files under `name` in the private directory and loads them.
fn write_and_load(applied: &AppliedConfig, name: &str) -> Result<config::Loaded, String> {
    let root = private_root()?.join(name);
    for (path, text) in &applied.files {
        let name = Path::new(path);
        let inside = name
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(format!("`{path}` is not a path inside the repository"));
        }
        let file = root.join(name);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot write {}: {e}", parent.display()))?;
        }
        write_whole(&file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    // Located by their path in the repository, not the directory written here.
    let in_repository = |diags: &mut [config::diag::Diagnostic]| {
        for d in diags {
            if let Ok(inside) = d.file.strip_prefix(&root) {
                d.file = inside.to_path_buf();
            }
        }
    };
    match config::load(&root.join(&applied.path)) {
        Ok(mut loaded) => {
            in_repository(&mut loaded.warnings);
            loaded.config.applied_from = Some(applied.commit());
            Ok(loaded)
        }
        Err(config::ConfigError::Invalid(mut diags)) => {
            in_repository(&mut diags);
            Err(config::ConfigError::Invalid(diags).to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// This process's directory for the commits' files: made at the first call (see the module's
/// doc), the same afterwards. A failure to make it is tried again at the next call.
fn private_root() -> Result<PathBuf, String> {
    static ROOT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut root = ROOT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = root.as_ref() {
        return Ok(dir.clone());
    }
    let parent = std::env::temp_dir();
    let names = std::iter::repeat_with(|| {
        format!(
            "tollgate-config-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        )
    });
    let dir = private_dir_in(&parent, names.take(16)).map_err(|e| {
        format!(
            "cannot make a private directory for the configuration's files in {}: {e}",
            parent.display()
        )
    })?;
    *root = Some(dir.clone());
    Ok(dir)
}

/// Makes a directory of mode 0700 in `parent` under the first of `names` that names nothing
/// yet: `mkdir` refuses a path that exists, whatever is there (a symbolic link included, which
/// it never follows), so the directory made is new and this process's user's.
fn private_dir_in(
    parent: &Path,
    names: impl IntoIterator<Item = String>,
) -> std::io::Result<PathBuf> {
    for name in names {
        let dir = parent.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "every name tried is taken",
    ))
}

/// The directory of `applied` inside the private one: its repository and commit, and a digest
/// of its files (two configurations given as the same commit with other files never share it).
fn commit_dir(applied: &AppliedConfig) -> String {
    let digest = files_digest(&applied.path, &applied.files);
    format!(
        "{}-{}-{}",
        applied.repository.replace('/', "_"),
        applied.sha,
        &digest[..16]
    )
}

/// SHA-256 of the configuration's path and files, each length-prefixed.
fn files_digest(path: &str, files: &BTreeMap<String, String>) -> String {
    let mut h = sha2::Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    };
    field(path);
    for (name, text) in files {
        field(name);
        field(text);
    }
    hex::encode(h.finalize())
}

/// Writes `text` to `file` in one step (a file of its own renamed over it): a reader sees the
/// old text or the new, never a part. A commit applied while it is followed (two controllers
/// of one process, in tests), or loaded again while a deploy reads it, is written at once.
fn write_whole(file: &Path, text: &str) -> std::io::Result<()> {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(
        ".{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let part = PathBuf::from(name);
    std::fs::write(&part, text)?;
    std::fs::rename(&part, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::domain::CommitSha;

    fn applied(sha: &str, template: &str) -> AppliedConfig {
        let files = BTreeMap::from([
            (
                "stages.toml".to_string(),
                tollgate_testkit::engine_world::STAGES.to_string(),
            ),
            (
                "accounts/accounts.toml".to_string(),
                tollgate_testkit::engine_world::ACCOUNTS.to_string(),
            ),
            ("service.yaml".to_string(), template.to_string()),
        ]);
        AppliedConfig {
            repository: "acme/deploy-config".into(),
            sha: CommitSha::from(sha),
            path: "stages.toml".into(),
            files,
            applied_at: chrono::Utc::now(),
        }
    }

    fn template_of(loaded: &config::Loaded) -> PathBuf {
        match &loaded.config.pipeline("backend").unwrap().stages[0].deploy {
            config::Deploy::CloudFormation { template, .. } => template.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// The uid of this process's user: the owner of a file it just made.
    fn my_uid() -> u32 {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().metadata().unwrap().uid()
    }

    /// Someone else made a directory at a name that could be guessed from the commit
    /// (`$TMPDIR/tollgate-config-<repo>-<sha>`), with their own template in it, and a symbolic
    /// link beside it: the commit's files go elsewhere, to a directory of mode 0700 this
    /// process's user owns, and the template the configuration names (the one deploys read) is
    /// the commit's, inside it.
    #[test]
    fn a_commits_files_go_where_only_this_process_can_change_them() {
        let sha = format!("{:040x}", rand::random::<u128>());
        let planted =
            std::env::temp_dir().join(format!("tollgate-config-acme_deploy-config-{sha}"));
        std::fs::create_dir_all(&planted).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(planted.join("service.yaml"), "Resources: {Evil: {}}\n").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let link =
            std::env::temp_dir().join(format!("tollgate-config-acme_deploy-config-{sha}-link"));
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();

        let ours = "Resources: {}\n# the commit's own\n";
        let loaded = load_applied(&applied(&sha, ours)).unwrap();
        let template = template_of(&loaded);
        assert!(!template.starts_with(&planted), "{}", template.display());
        assert_eq!(std::fs::read_to_string(&template).unwrap(), ours);
        assert_eq!(
            std::fs::read_to_string(planted.join("service.yaml")).unwrap(),
            "Resources: {Evil: {}}\n",
            "the directory someone else made is left alone"
        );
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

        let root = private_root().unwrap();
        assert!(template.starts_with(&root), "{}", template.display());
        assert!(loaded.config.source_file.starts_with(&root));
        let meta = std::fs::symlink_metadata(&root).unwrap();
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        assert_eq!(meta.mode() & 0o777, 0o700, "{:o}", meta.mode());
        assert_eq!(meta.uid(), my_uid());
        assert_eq!(root.parent(), Some(std::env::temp_dir().as_path()));

        std::fs::remove_dir_all(&planted).unwrap();
        std::fs::remove_file(&link).unwrap();
    }

    /// Once a commit was loaded, what loading it gave is answered without writing: its
    /// directory removed stays removed. One never loaded is loaded at the first question only.
    #[test]
    fn the_validation_of_a_commit_loaded_writes_nothing() {
        let loaded = applied(
            &format!("{:040x}", rand::random::<u128>()),
            "Resources: {}\n",
        );
        let warnings = shown(&load_applied(&loaded).unwrap());
        let dir = private_root().unwrap().join(commit_dir(&loaded));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(validation(&loaded), Ok(warnings.clone()));
        assert!(!dir.exists(), "written again: {}", dir.display());

        let unseen = applied(
            &format!("{:040x}", rand::random::<u128>()),
            "Resources: {}\n",
        );
        assert_eq!(validation(&unseen), Ok(warnings));
        let dir = private_root().unwrap().join(commit_dir(&unseen));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(validation(&unseen).is_ok());
        assert!(!dir.exists(), "written again: {}", dir.display());

        let mut invalid = applied(&format!("{:040x}", rand::random::<u128>()), "");
        invalid.files.remove("accounts/accounts.toml");
        let why = load_applied(&invalid).unwrap_err();
        assert_eq!(validation(&invalid), Err(why));
    }

    /// The private directory never takes a path that exists: a symbolic link to a directory,
    /// a directory, a file; the first free name is made, mode 0700.
    #[test]
    fn the_private_directory_is_always_a_new_one() {
        let parent = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), parent.path().join("a")).unwrap();
        std::fs::create_dir(parent.path().join("b")).unwrap();
        std::fs::write(parent.path().join("c"), "").unwrap();
        let names = ["a", "b", "c", "d"].map(String::from);
        let made = private_dir_in(parent.path(), names).unwrap();
        assert_eq!(made, parent.path().join("d"));
        let meta = std::fs::symlink_metadata(&made).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);

        let taken = ["a", "b"].map(String::from);
        let err = private_dir_in(parent.path(), taken).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    }

    /// Two configurations given as one commit with other files (tests of one process do) are
    /// written to directories of their own.
    #[test]
    fn one_commit_with_other_files_gets_a_directory_of_its_own() {
        let sha = format!("{:040x}", rand::random::<u128>());
        let one = load_applied(&applied(&sha, "Resources: {}\n# one\n")).unwrap();
        let two = load_applied(&applied(&sha, "Resources: {}\n# two\n")).unwrap();
        assert_ne!(template_of(&one).parent(), template_of(&two).parent());
        let read = |l: &config::Loaded| std::fs::read_to_string(template_of(l)).unwrap();
        assert_eq!(read(&one), "Resources: {}\n# one\n");
        assert_eq!(read(&two), "Resources: {}\n# two\n");
    }
}
