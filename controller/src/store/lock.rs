//! One controller per SQLite state file.
//!
//! Two `tollgate serve` processes on one SQLite file would both reconcile every pipeline and
//! perform every effect twice. Before it opens the state, `serve` takes an exclusive lock on a
//! file beside it (`<state file>.serve-lock`) and keeps it for as long as it runs; a second
//! `serve` finds it taken and exits at once, naming the one that holds it. The lock is the
//! operating system's (`flock`), so it is released when its holder ends however it ends
//! (`kill -9` included) and a stale file left behind never blocks the next start.
//!
//! Control commands (`pause`, `retry`, …) and `status` do not take it: they only record facts
//! or read, as they are meant to while the controller runs.
//!
//! The lock is only as good as the file system's `flock`: keep the state on a local disk (a
//! network file system may not carry locks between hosts, see `docs/operations.md`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqliteConnectOptions;

/// Who holds a state file: written into the lock file by its holder, read by whoever is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub started_at: DateTime<Utc>,
    /// Set once the holder listens.
    pub listen: Option<SocketAddr>,
}

impl Holder {
    /// This process, now.
    pub fn this_process() -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "an unknown host".to_string());
        Holder {
            pid: std::process::id(),
            host,
            started_at: Utc::now(),
            listen: None,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {}, started {}",
            self.pid,
            self.host,
            self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        )?;
        if let Some(addr) = self.listen {
            write!(f, ", listening on {addr}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another tollgate serve is running on the state {state}: {holder}. Only one controller \
         may act on a SQLite state; stop that one first (several controllers need PostgreSQL)"
    )]
    Held { state: String, holder: String },
    #[error("cannot lock the state {state} ({path}): {source}")]
    Io {
        state: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a SQLite state URL: {0}")]
    Url(String),
}

/// The exclusive lock of one state file, held until dropped.
#[derive(Debug)]
pub struct ServeLock {
    file: Flock<File>,
    holder: Holder,
    path: PathBuf,
}

impl ServeLock {
    /// Takes the lock of the SQLite state at `url` for `holder`. `Ok(None)` for an in-memory
    /// state, which no other process can open.
    pub fn acquire(url: &str, holder: Holder) -> Result<Option<ServeLock>, LockError> {
        let Some(db) = database_file(url)? else {
            return Ok(None);
        };
        let path = lock_path(&db);
        let io = |source| LockError::Io {
            state: url.to_string(),
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = serde_json::from_str::<Holder>(&text)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "a process that has not said who it is yet".to_string());
                return Err(LockError::Held {
                    state: url.to_string(),
                    holder,
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        let mut lock = ServeLock {
            file,
            holder,
            path: path.clone(),
        };
        lock.write().map_err(io)?;
        Ok(Some(lock))
    }

    /// Records the address the holder listens on, for the message a refused start prints.
    pub fn listening(&mut self, addr: SocketAddr) -> std::io::Result<()> {
        self.holder.listen = Some(addr);
        self.write()
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self) -> std::io::Result<()> {
        let text = serde_json::to_string(&self.holder).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }
}

/// The file of a SQLite state URL; `None` for an in-memory one, and for a PostgreSQL state
/// (where several controllers share the state, one leading: [`super::lease`]).
pub(crate) fn database_file(url: &str) -> Result<Option<PathBuf>, LockError> {
    if matches!(super::Backend::of_url(url), Ok(super::Backend::Postgres)) {
        return Ok(None);
    }
    if !url.starts_with("sqlite:") {
        return Err(LockError::Url(url.to_string()));
    }
    let opts = SqliteConnectOptions::from_str(url).map_err(|_| LockError::Url(url.to_string()))?;
    let file = opts.get_filename();
    if url.contains(":memory:") || file.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(file.to_path_buf()))
}

/// `<state file>.serve-lock`, beside the state.
fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".serve-lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(dir: &Path) -> String {
        format!("sqlite://{}", dir.join("state.db").display())
    }

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = ServeLock::acquire(&url(dir.path()), Holder::this_process())
            .unwrap()
            .unwrap();
        first.listening("127.0.0.1:8080".parse().unwrap()).unwrap();
        let err = ServeLock::acquire(&url(dir.path()), Holder::this_process()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("listening on 127.0.0.1:8080"), "{text}");
    }

    #[test]
    fn the_lock_is_free_again_once_its_holder_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServeLock::acquire(&url(dir.path()), Holder::this_process()).unwrap();
        assert!(first.is_some());
        drop(first);
        let again = ServeLock::acquire(&url(dir.path()), Holder::this_process()).unwrap();
        assert!(
            again.is_some(),
            "a released lock (or its stale file) blocks nothing"
        );
    }

    #[test]
    fn other_state_files_and_memory_states_are_not_affected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let _held = ServeLock::acquire(&url(a.path()), Holder::this_process()).unwrap();
        assert!(
            ServeLock::acquire(&url(b.path()), Holder::this_process())
                .unwrap()
                .is_some()
        );
        assert!(
            ServeLock::acquire("sqlite::memory:", Holder::this_process())
                .unwrap()
                .is_none()
        );
        assert!(
            ServeLock::acquire("postgres://x", Holder::this_process())
                .unwrap()
                .is_none(),
            "a PostgreSQL state is shared under the leader lease, not a file lock"
        );
        assert!(matches!(
            ServeLock::acquire("mysql://x", Holder::this_process()),
            Err(LockError::Url(_))
        ));
    }
}
