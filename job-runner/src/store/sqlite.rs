//! SQLite implementation of [`JobStore`]: `runner.db` in the runner's data dir, WAL
//! mode, created 0600 (specs may carry secrets in `env`). One connection, used only by
//! the engine thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use shoal_common::{Error, Result};

pub use shoal_db::Synchronous;

use super::{InstanceRecord, JobRecord, JobStore, StoredJob, Write};
use crate::model::{InstanceState, Transition};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    spec_json       TEXT NOT NULL,
    spec_text       TEXT NOT NULL,
    submitted_at_ms INTEGER NOT NULL,
    ended_at_ms     INTEGER NOT NULL DEFAULT 0,
    state           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    job_seq       INTEGER NOT NULL,
    task          INTEGER NOT NULL,
    idx           INTEGER NOT NULL,
    state         INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    round_start   INTEGER NOT NULL,
    exit_code     INTEGER,
    node          TEXT NOT NULL,
    local_bytes   INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms   INTEGER NOT NULL,
    pid           INTEGER,
    pid_start     INTEGER,
    PRIMARY KEY (job_seq, task, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transitions (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_seq INTEGER NOT NULL,
    task    INTEGER NOT NULL,
    idx     INTEGER NOT NULL,
    state   INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL,
    reason  TEXT NOT NULL,
    attempt INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_instance ON transitions (job_seq, task, idx, id);
-- The highest sequence number of a deleted job: ids are never reused, so a deleted
-- job's id never names another job (nor its leftover files, were a removal to fail).
CREATE TABLE IF NOT EXISTS seq_floor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL
);
"#;

pub struct SqliteJobStore {
    conn: Connection,
    path: PathBuf,
}

fn db_err(step: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    shoal_db::failed("job store", step)
}

impl SqliteJobStore {
    /// Opens (or creates) `runner.db` under `data_dir`, with `synchronous=FULL`: a
    /// submit is answered, and an attempt started, only after its batch is on disk.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, Synchronous::Full)
    }

    /// [`SqliteJobStore::open`] with another `synchronous` setting (the durability
    /// benchmark compares them).
    pub fn open_with(data_dir: &Path, sync: Synchronous) -> Result<Self> {
        let (conn, path) = shoal_db::open_in_with(data_dir, "runner.db", "job store", sync)?;
        conn.execute_batch(SCHEMA)
            .map_err(db_err("create schema"))?;
        Ok(SqliteJobStore { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Every write in one transaction.
    fn apply_batch(&mut self, writes: &[Write]) -> Result<()> {
        let tx = self
            .conn
            .transaction()
            .map_err(db_err("begin transaction"))?;
        {
            let mut new_job = tx
                .prepare_cached(
                    "INSERT INTO jobs (seq, id, name, owner, priority, spec_json, spec_text, submitted_at_ms, ended_at_ms, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(db_err("prepare job insert"))?;
            let mut job_state = tx
                .prepare_cached("UPDATE jobs SET state = ?2, ended_at_ms = ?3 WHERE seq = ?1")
                .map_err(db_err("prepare job update"))?;
            let mut inst = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO instances (job_seq, task, idx, state, reason, attempt, round_start, exit_code, node, local_bytes, started_at_ms, ended_at_ms, pid, pid_start)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(db_err("prepare instance upsert"))?;
            let mut trans = tx
                .prepare_cached(
                    "INSERT INTO transitions (job_seq, task, idx, state, at_ms, reason, attempt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(db_err("prepare transition insert"))?;
            let mut delete = [
                "DELETE FROM transitions WHERE job_seq = ?1",
                "DELETE FROM instances WHERE job_seq = ?1",
                "DELETE FROM jobs WHERE seq = ?1",
                "INSERT INTO seq_floor (one, seq) VALUES (1, ?1)
                 ON CONFLICT (one) DO UPDATE SET seq = MAX(seq, excluded.seq)",
            ]
            .into_iter()
            .map(|sql| tx.prepare_cached(sql))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err("prepare job delete"))?;
            for w in writes {
                match w {
                    Write::NewJob(j) => {
                        new_job
                            .execute(params![
                                j.seq as i64,
                                j.id,
                                j.name,
                                j.owner,
                                j.priority,
                                j.spec_json,
                                j.spec_text,
                                j.submitted_at_ms,
                                j.ended_at_ms,
                                j.state.code()
                            ])
                            .map_err(db_err("insert job"))?;
                    }
                    Write::JobState {
                        seq,
                        state,
                        ended_at_ms,
                    } => {
                        job_state
                            .execute(params![*seq as i64, state.code(), ended_at_ms])
                            .map_err(db_err("update job"))?;
                    }
                    Write::Instance { job_seq, rec } => {
                        inst.execute(params![
                            *job_seq as i64,
                            rec.task,
                            rec.index,
                            rec.state.code(),
                            rec.reason,
                            rec.attempt,
                            rec.round_start,
                            rec.exit_code,
                            rec.node,
                            rec.local_bytes as i64,
                            rec.started_at_ms,
                            rec.ended_at_ms,
                            rec.pid,
                            rec.pid_start.map(|v| v as i64),
                        ])
                        .map_err(db_err("upsert instance"))?;
                    }
                    Write::Transition {
                        job_seq,
                        task,
                        index,
                        t,
                    } => {
                        trans
                            .execute(params![
                                *job_seq as i64,
                                task,
                                index,
                                t.state.code(),
                                t.at_ms,
                                t.reason,
                                t.attempt
                            ])
                            .map_err(db_err("insert transition"))?;
                    }
                    Write::DeleteJob { seq } => {
                        for st in &mut delete {
                            st.execute(params![*seq as i64])
                                .map_err(db_err("delete job"))?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(db_err("commit"))
    }

    /// Names the file and, from its file system, the likely cause and what to do.
    fn explain(&self, e: Error) -> Error {
        let dir = self.path.parent().unwrap_or(&self.path);
        let hint = match fs_state(dir) {
            Some(FsState::ReadOnly) => {
                "its file system is read-only: remount it read-write (or move --data-dir to a writable disk)"
            }
            Some(FsState::Full) => "its disk is full: free space on it",
            None => "check the disk, its free space and the file's permissions",
        };
        Error::new(
            e.kind(),
            format!(
                "the job store {} cannot be written ({}); {hint}, then restart the runner",
                self.path.display(),
                e.message()
            ),
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FsState {
    ReadOnly,
    Full,
}

/// What is wrong with the file system holding `dir`, if `statvfs` or a probe create
/// can tell.
fn fs_state(dir: &Path) -> Option<FsState> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct we own from a NUL-terminated path.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        st
    };
    if st.f_flag & libc::ST_RDONLY != 0 {
        return Some(FsState::ReadOnly);
    }
    if st.f_bavail == 0 {
        return Some(FsState::Full);
    }
    // A file system that turned itself read-only after an error (ext4's
    // `errors=remount-ro`) may still say read-write in statvfs: ask it with a create.
    let probe = dir.join(format!(".shoal-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Some(FsState::ReadOnly),
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Some(FsState::Full),
        Err(_) => None,
    }
}

fn state_of(v: i64) -> rusqlite::Result<InstanceState> {
    InstanceState::from_code(v).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Integer,
            format!("unknown instance state code {v}").into(),
        )
    })
}

impl JobStore for SqliteJobStore {
    fn next_job_seq(&mut self) -> Result<u64> {
        let max: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(s) FROM (SELECT MAX(seq) AS s FROM jobs UNION ALL SELECT seq FROM seq_floor)",
                [],
                |r| r.get(0),
            )
            .map_err(db_err("read job sequence"))?;
        Ok(max.unwrap_or(0) as u64 + 1)
    }

    fn apply(&mut self, writes: &[Write]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.apply_batch(writes).map_err(|e| self.explain(e))
    }

    fn load_all(&mut self) -> Result<Vec<StoredJob>> {
        let mut jobs: BTreeMap<u64, StoredJob> = BTreeMap::new();
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT seq, id, name, owner, priority, spec_json, spec_text, submitted_at_ms, ended_at_ms, state FROM jobs ORDER BY seq",
                )
                .map_err(db_err("prepare job load"))?;
            let rows = st
                .query_map([], |r| {
                    Ok(JobRecord {
                        seq: r.get::<_, i64>(0)? as u64,
                        id: r.get(1)?,
                        name: r.get(2)?,
                        owner: r.get(3)?,
                        priority: r.get(4)?,
                        spec_json: r.get(5)?,
                        spec_text: r.get(6)?,
                        submitted_at_ms: r.get(7)?,
                        ended_at_ms: r.get(8)?,
                        state: state_of(r.get(9)?)?,
                    })
                })
                .map_err(db_err("load jobs"))?;
            for j in rows {
                let j = j.map_err(db_err("read job row"))?;
                jobs.insert(
                    j.seq,
                    StoredJob {
                        job: j,
                        instances: Vec::new(),
                        history: Vec::new(),
                    },
                );
            }
        }
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT job_seq, task, idx, state, reason, attempt, round_start, exit_code, node, local_bytes, started_at_ms, ended_at_ms, pid, pid_start
                     FROM instances ORDER BY job_seq, task, idx",
                )
                .map_err(db_err("prepare instance load"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        InstanceRecord {
                            task: r.get(1)?,
                            index: r.get(2)?,
                            state: state_of(r.get(3)?)?,
                            reason: r.get(4)?,
                            attempt: r.get(5)?,
                            round_start: r.get(6)?,
                            exit_code: r.get(7)?,
                            node: r.get(8)?,
                            local_bytes: r.get::<_, i64>(9)? as u64,
                            started_at_ms: r.get(10)?,
                            ended_at_ms: r.get(11)?,
                            pid: r.get(12)?,
                            pid_start: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
                        },
                    ))
                })
                .map_err(db_err("load instances"))?;
            for row in rows {
                let (seq, rec) = row.map_err(db_err("read instance row"))?;
                if let Some(j) = jobs.get_mut(&seq) {
                    j.instances.push(rec);
                }
            }
        }
        {
            let mut st = self
                .conn
                .prepare(
                    "SELECT job_seq, task, idx, state, at_ms, reason, attempt FROM transitions ORDER BY id",
                )
                .map_err(db_err("prepare history load"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, u32>(1)?,
                        r.get::<_, u32>(2)?,
                        Transition {
                            state: state_of(r.get(3)?)?,
                            at_ms: r.get(4)?,
                            reason: r.get(5)?,
                            attempt: r.get(6)?,
                        },
                    ))
                })
                .map_err(db_err("load history"))?;
            for row in rows {
                let (seq, task, idx, t) = row.map_err(db_err("read history row"))?;
                if let Some(j) = jobs.get_mut(&seq) {
                    j.history.push((task, idx, t));
                }
            }
        }
        Ok(jobs.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tmpfs at `dir`, unmounted when dropped (also on a failed assertion).
    struct Tmpfs<'a>(&'a Path);

    impl Drop for Tmpfs<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }

    fn mount(args: &[&str], dir: &Path) {
        let ok = std::process::Command::new("mount")
            .args(args)
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount {args:?} {} (needs root)", dir.display());
    }

    #[test]
    fn a_full_or_read_only_file_system_is_named() {
        use std::io::Write as _;
        let d = tempfile::tempdir().unwrap();
        mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], d.path());
        let _fs = Tmpfs(d.path());
        assert_eq!(fs_state(d.path()), None);
        {
            let mut f = std::fs::File::create(d.path().join("fill")).unwrap();
            while f.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
        }
        assert_eq!(fs_state(d.path()), Some(FsState::Full));
        std::fs::remove_file(d.path().join("fill")).unwrap();
        mount(&["-o", "remount,ro"], d.path());
        assert_eq!(fs_state(d.path()), Some(FsState::ReadOnly));
    }

    fn job(seq: u64) -> JobRecord {
        JobRecord {
            seq,
            id: format!("job-{seq}"),
            name: "n".into(),
            owner: "o".into(),
            priority: 0,
            spec_json: "{}".into(),
            spec_text: "name: n".into(),
            submitted_at_ms: 1,
            ended_at_ms: 0,
            state: InstanceState::Submitted,
        }
    }

    fn inst(state: InstanceState) -> InstanceRecord {
        InstanceRecord {
            task: 0,
            index: 3,
            state,
            reason: "r".into(),
            attempt: 1,
            round_start: 1,
            exit_code: None,
            node: String::new(),
            local_bytes: 0,
            started_at_ms: 0,
            ended_at_ms: 0,
            pid: Some(42),
            pid_start: Some(7),
        }
    }

    #[test]
    fn round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteJobStore::open(dir.path()).unwrap();
        assert_eq!(s.next_job_seq().unwrap(), 1);
        let t = |state| Write::Transition {
            job_seq: 1,
            task: 0,
            index: 3,
            t: Transition {
                state,
                at_ms: 5,
                reason: String::new(),
                attempt: 1,
            },
        };
        s.apply(&[
            Write::NewJob(job(1)),
            Write::Instance {
                job_seq: 1,
                rec: inst(InstanceState::Submitted),
            },
            t(InstanceState::Submitted),
        ])
        .unwrap();
        s.apply(&[
            Write::Instance {
                job_seq: 1,
                rec: inst(InstanceState::Running),
            },
            t(InstanceState::Running),
            Write::JobState {
                seq: 1,
                state: InstanceState::Running,
                ended_at_ms: 0,
            },
        ])
        .unwrap();
        drop(s);
        let mut s = SqliteJobStore::open(dir.path()).unwrap();
        assert_eq!(s.next_job_seq().unwrap(), 2);
        let all = s.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].job.state, InstanceState::Running);
        assert_eq!(all[0].instances, vec![inst(InstanceState::Running)]);
        let states: Vec<_> = all[0].history.iter().map(|h| h.2.state).collect();
        assert_eq!(states, [InstanceState::Submitted, InstanceState::Running]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn delete_removes_every_row_and_never_reuses_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteJobStore::open(dir.path()).unwrap();
        let t = |seq| Write::Transition {
            job_seq: seq,
            task: 0,
            index: 3,
            t: Transition {
                state: InstanceState::Submitted,
                at_ms: 5,
                reason: String::new(),
                attempt: 1,
            },
        };
        for seq in [1, 2] {
            s.apply(&[
                Write::NewJob(job(seq)),
                Write::Instance {
                    job_seq: seq,
                    rec: inst(InstanceState::Submitted),
                },
                t(seq),
            ])
            .unwrap();
        }
        s.apply(&[Write::DeleteJob { seq: 2 }]).unwrap();
        let n = |s: &SqliteJobStore, sql: &str| -> i64 {
            s.conn.query_row(sql, [2], |r| r.get(0)).unwrap()
        };
        for sql in [
            "SELECT COUNT(*) FROM jobs WHERE seq = ?1",
            "SELECT COUNT(*) FROM instances WHERE job_seq = ?1",
            "SELECT COUNT(*) FROM transitions WHERE job_seq = ?1",
        ] {
            assert_eq!(n(&s, sql), 0, "{sql}");
        }
        drop(s);
        let mut s = SqliteJobStore::open(dir.path()).unwrap();
        let all = s.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].job.seq, 1);
        assert_eq!(all[0].history.len(), 1);
        // Job 2 was the newest: its number stays used.
        assert_eq!(s.next_job_seq().unwrap(), 3);
        s.apply(&[Write::DeleteJob { seq: 1 }]).unwrap();
        assert_eq!(s.next_job_seq().unwrap(), 3);
    }
}
