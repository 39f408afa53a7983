//! [`OwnerUids`]: the uid (and gid, the same number) each owner's instances run as,
//! allocated once from the configured range and kept in the runner's SQLite store
//! (`runner.db`, table `sandbox_uids`) so it survives restarts: files an instance left
//! in a kept working dir stay its owner's, and two owners never share a uid.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use shoal_common::{Error, Result};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sandbox_uids (
    owner TEXT PRIMARY KEY,
    uid   INTEGER NOT NULL UNIQUE
);";

/// Owner → uid, persisted.
pub struct OwnerUids {
    range: (u32, u32),
    conn: Mutex<Connection>,
    cache: Mutex<HashMap<String, u32>>,
}

fn db_err(step: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    shoal_db::failed("sandbox uid table", step)
}

impl OwnerUids {
    /// Opens the table in `data_dir/runner.db` after checking that no user or group
    /// of this machine has an id in `range` (an instance must never be someone).
    pub fn open(data_dir: &Path, range: (u32, u32)) -> Result<OwnerUids> {
        check_free(Path::new("/etc/passwd"), "user", range)?;
        check_free(Path::new("/etc/group"), "group", range)?;
        let (conn, _) = shoal_db::open_in(data_dir, "runner.db", "job store")?;
        conn.execute_batch(SCHEMA)
            .map_err(db_err("create schema"))?;
        Ok(OwnerUids {
            range,
            conn: Mutex::new(conn),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The uid of `owner`'s instances, allocating the next free one on first use.
    pub fn uid_for(&self, owner: &str) -> Result<u32> {
        if let Some(u) = self.cache.lock().ok().and_then(|c| c.get(owner).copied()) {
            return Ok(u);
        }
        let conn = self
            .conn
            .lock()
            .map_err(|_| Error::internal("sandbox uid table lock poisoned"))?;
        let found: Option<u32> = conn
            .query_row(
                "SELECT uid FROM sandbox_uids WHERE owner = ?1",
                params![owner],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err("look an owner up"))?;
        let uid = match found {
            Some(u) => u,
            None => {
                let (first, last) = self.range;
                let top: Option<u32> = conn
                    .query_row(
                        "SELECT MAX(uid) FROM sandbox_uids WHERE uid BETWEEN ?1 AND ?2",
                        params![first, last],
                        |r| r.get(0),
                    )
                    .map_err(db_err("find the highest uid"))?;
                let next = match top {
                    None => first,
                    Some(t) if t < last => t + 1,
                    Some(_) => {
                        return Err(Error::resource_exhausted(format!(
                            "every sandbox uid in {first}-{last} is taken by an owner; widen --sandbox-uids"
                        )));
                    }
                };
                conn.execute(
                    "INSERT INTO sandbox_uids (owner, uid) VALUES (?1, ?2)",
                    params![owner, next],
                )
                .map_err(db_err("record an owner's uid"))?;
                next
            }
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(owner.to_owned(), uid);
        }
        Ok(uid)
    }
}

/// Refuses a range holding the id of an entry of `db` (`/etc/passwd`, `/etc/group`:
/// the third field).
fn check_free(db: &Path, what: &str, (first, last): (u32, u32)) -> Result<()> {
    let text = match std::fs::read_to_string(db) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("read {}", db.display()), e)),
    };
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(id)) = (f.next(), f.nth(1)) else {
            continue;
        };
        if let Ok(id) = id.parse::<u32>()
            && (first..=last).contains(&id)
        {
            return Err(Error::invalid(format!(
                "the sandbox uid range {first}-{last} holds {what} `{name}` (id {id}) of {}; instances would run as it: pick a free range with --sandbox-uids",
                db.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_keep_their_uid_across_reopens_and_never_share_one() {
        let d = tempfile::tempdir().unwrap();
        let u = OwnerUids::open(d.path(), (300_000, 300_001)).unwrap();
        let a = u.uid_for("team-a").unwrap();
        let b = u.uid_for("team-b").unwrap();
        assert_ne!(a, b);
        assert_eq!(u.uid_for("team-a").unwrap(), a);
        let e = u.uid_for("team-c").unwrap_err().to_string();
        assert!(e.contains("--sandbox-uids"), "{e}");
        drop(u);
        let u = OwnerUids::open(d.path(), (300_000, 300_001)).unwrap();
        assert_eq!(u.uid_for("team-b").unwrap(), b);
    }

    #[test]
    fn a_range_holding_a_real_user_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = OwnerUids::open(d.path(), (0, 10))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`root` (id 0)"), "{e}");
    }
}
