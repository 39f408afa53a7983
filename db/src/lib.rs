//! The SQLite files that hold shoal's durable state: the master's catalogue and the
//! runner's job store. Both open them through [`open`], so the rules live in one place:
//!
//! - the file is created with mode 0600 before SQLite touches it (it holds token
//!   hashes, dataset credentials and job specs), and narrowed to 0600 if it was wider;
//! - writers use WAL, so readers never block the writer;
//! - writers use `synchronous=FULL` ([`Synchronous::Full`]): every commit is on disk
//!   before it returns, so an answer sent after a commit (a submitted job, a created
//!   token, a committed file) survives a power loss. Both stores hold such acknowledged
//!   state: the runner's jobs and their state changes, the master's datasets, grants,
//!   tokens and file commits. `NORMAL` in WAL mode may lose the last commits on a
//!   power loss (never on a process crash), so it is kept only for measuring the cost
//!   (`benches/benches/durability.rs`);
//! - every connection waits up to [`BUSY_TIMEOUT`] for a lock instead of failing.
//!
//! ```no_run
//! use shoal_db::{Access, open};
//! let conn = open(std::path::Path::new("/var/lib/shoal/master/catalog.db"), "catalog", Access::ReadWrite)?;
//! # Ok::<(), shoal_common::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use shoal_common::{Error, Result};

/// How long a connection waits for another one's lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite's `synchronous` setting for a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// The WAL is synced at every commit: a returned commit survives a power loss.
    Full,
    /// The WAL is synced at checkpoints only: a power loss may drop the last commits.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Creates the file (0600) if needed; WAL journal.
    ReadWrite,
    ReadOnly,
}

/// Opens the database at `path`; `what` names it in errors ("catalog", "job store").
/// Writers get [`Synchronous::Full`].
pub fn open(path: &Path, what: &str, access: Access) -> Result<Connection> {
    open_with(path, what, access, Synchronous::Full)
}

/// [`open`] with an explicit `synchronous` setting for a writer.
pub fn open_with(path: &Path, what: &str, access: Access, sync: Synchronous) -> Result<Connection> {
    let flags = match access {
        Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        Access::ReadWrite => {
            create_private(path)?;
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        }
    };
    let err = |step: &str, e: rusqlite::Error| {
        Error::internal(format!("{what} {}: {step}: {e}", path.display()))
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| err("open", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| err("set busy timeout", e))?;
    if access == Access::ReadWrite {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err("enable WAL", e))?;
        conn.pragma_update(None, "synchronous", sync.pragma())
            .map_err(|e| err("set synchronous", e))?;
    }
    Ok(conn)
}

/// Creates `data_dir` if needed and opens `data_dir/file` for writing (see [`open`]).
pub fn open_in(data_dir: &Path, file: &str, what: &str) -> Result<(Connection, PathBuf)> {
    open_in_with(data_dir, file, what, Synchronous::Full)
}

/// [`open_in`] with an explicit `synchronous` setting.
pub fn open_in_with(
    data_dir: &Path,
    file: &str,
    what: &str,
    sync: Synchronous,
) -> Result<(Connection, PathBuf)> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io(format!("create data dir {}", data_dir.display()), e))?;
    let path = data_dir.join(file);
    let conn = open_with(&path, what, Access::ReadWrite, sync)?;
    Ok((conn, path))
}

/// Turns a failed statement into an internal error naming the database and the step.
pub fn failed<'a>(what: &'a str, step: &'a str) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |e| Error::internal(format!("{what}: {step}: {e}"))
}

/// Creates `path` with mode 0600 (or narrows an existing file to it).
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_are_private_and_in_wal_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        std::fs::write(&p, b"").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = open(&p, "test db", Access::ReadWrite).unwrap();
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // 2 is FULL: an acknowledged commit survives a power loss.
        let sync: i64 = c
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
        let perm = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(perm, 0o600);
        let e = open(&dir.path().join("missing.db"), "test db", Access::ReadOnly).unwrap_err();
        assert!(e.to_string().contains("test db"), "{e}");
    }
}
