//! SQLite implementation of [`CatalogStore`]: one file (`catalog.db`) in the master's
//! data dir, WAL mode, created with 0600 permissions because it holds credentials.
//!
//! One writer connection and a small pool of readers; every call runs on the blocking
//! thread pool so the async runtime never waits on disk. Sync generations and the
//! namespace changes made while a sync runs are in `sync.rs`.

mod access;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};

use super::{
    CatalogStore, Consistency, DatasetRecord, DatasetUpdate, Dropped, FileRecord, GrantRecord,
    LoadRecord, MemberRecord, NewDataset, Phase, TokenRecord,
};

/// Columns added after the first release, created on older catalogues at open:
/// (table, column, declaration).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("datasets", "sync_interval_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("datasets", "consistency", "INTEGER NOT NULL DEFAULT 0"),
    // The last generation handed out; see `sync.rs`.
    ("datasets", "next_gen", "INTEGER NOT NULL DEFAULT 0"),
    // The generation of the sync in progress, 0 when none.
    ("datasets", "running_gen", "INTEGER NOT NULL DEFAULT 0"),
    // The running generation when a namespace change last wrote the row.
    ("files", "touched_gen", "INTEGER NOT NULL DEFAULT 0"),
    // Job credentials (issue 14): their job, datasets (JSON) and expiry; see `access.rs`.
    ("tokens", "job", "TEXT NOT NULL DEFAULT ''"),
    ("tokens", "scope", "TEXT NOT NULL DEFAULT ''"),
    ("tokens", "expires_at_ms", "INTEGER NOT NULL DEFAULT 0"),
];

/// Adds the columns of [`ADDED_COLUMNS`] a catalogue does not have yet.
fn migrate(conn: &Connection) -> Result<()> {
    for (table, column, decl) in ADDED_COLUMNS {
        let present: bool = conn
            .query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"
                ),
                [column],
                |r| r.get(0),
            )
            .map_err(db_err("read schema"))?;
        if !present {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                .map_err(db_err("upgrade schema"))?;
        }
    }
    Ok(())
}

const READERS: usize = 4;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL UNIQUE,
    uri             TEXT NOT NULL,
    options         TEXT NOT NULL,
    read_write      INTEGER NOT NULL,
    phase           INTEGER NOT NULL,
    message         TEXT NOT NULL DEFAULT '',
    file_count      INTEGER NOT NULL DEFAULT 0,
    total_bytes     INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    refreshed_at_ms INTEGER NOT NULL DEFAULT 0,
    sync_gen        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sync_tombstones (
    dataset_id INTEGER NOT NULL,
    path       TEXT NOT NULL,
    gen        INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    dataset_id INTEGER NOT NULL,
    path       TEXT NOT NULL,
    parent     TEXT NOT NULL,
    name       TEXT NOT NULL,
    is_dir     INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ms   INTEGER NOT NULL,
    etag       TEXT NOT NULL,
    gen        INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_parent ON files (dataset_id, parent, name);
CREATE TABLE IF NOT EXISTS load_jobs (
    id            TEXT PRIMARY KEY,
    dataset       TEXT NOT NULL,
    state         INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    request       BLOB NOT NULL,
    job           BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS load_jobs_by_dataset ON load_jobs (dataset, created_at_ms);
CREATE TABLE IF NOT EXISTS tokens (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    admin         INTEGER NOT NULL,
    secret_hash   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS grants (
    dataset_id INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    write      INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, owner)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_by_owner ON grants (owner);
-- Worker membership (issue 15): written on join, leave, expiry and change, never per
-- heartbeat; catalogues from before it get the table empty.
CREATE TABLE IF NOT EXISTS members (
    id    TEXT PRIMARY KEY,
    state INTEGER NOT NULL,
    info  BLOB NOT NULL
);
"#;

/// The embedded catalogue store.
pub struct SqliteCatalog {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

fn db_err(step: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    shoal_db::failed("catalog", step)
}

impl SqliteCatalog {
    /// Opens (or creates) `catalog.db` under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let (writer, path) = shoal_db::open_in(data_dir, "catalog.db", "catalog")?;
        writer
            .execute_batch(SCHEMA)
            .map_err(db_err("create schema"))?;
        migrate(&writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_conn(&path, true)?);
        }
        Ok(SqliteCatalog {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(Mutex::new(readers)),
            path,
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let w = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = w
                .lock()
                .map_err(|_| Error::internal("catalog writer lock poisoned"))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::internal(format!("catalog task failed: {e}")))?
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .lock()
                .map_err(|_| Error::internal("catalog reader pool poisoned"))?
                .pop();
            let conn = match conn {
                Some(c) => c,
                // Pool exhausted under load: open a short-lived extra reader.
                None => open_conn(&path, true)?,
            };
            let r = f(&conn);
            if let Ok(mut p) = pool.lock()
                && p.len() < READERS
            {
                p.push(conn);
            }
            r
        })
        .await
        .map_err(|e| Error::internal(format!("catalog task failed: {e}")))?
    }
}

/// Creates the database file with mode 0600 before SQLite opens it, so credentials are
/// never readable by other users even for an instant.
fn open_conn(path: &Path, read_only: bool) -> Result<Connection> {
    let access = if read_only {
        shoal_db::Access::ReadOnly
    } else {
        shoal_db::Access::ReadWrite
    };
    shoal_db::open(path, "catalog", access)
}

const DATASET_COLS: &str = "id, name, uri, options, read_write, phase, message, file_count, total_bytes, created_at_ms, refreshed_at_ms, sync_gen, sync_interval_ms, consistency";

fn row_to_dataset(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRecord> {
    let options: String = r.get(3)?;
    let options: BTreeMap<String, String> = serde_json::from_str(&options).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(DatasetRecord {
        id: DatasetId(r.get::<_, i64>(0)? as u64),
        name: r.get(1)?,
        uri: r.get(2)?,
        options,
        read_write: r.get::<_, i64>(4)? != 0,
        phase: Phase::from_i64(r.get(5)?),
        message: r.get(6)?,
        file_count: r.get::<_, i64>(7)? as u64,
        total_bytes: r.get::<_, i64>(8)? as u64,
        created_at_ms: r.get(9)?,
        refreshed_at_ms: r.get(10)?,
        sync_gen: r.get(11)?,
        sync_interval_ms: r.get::<_, i64>(12)?.max(0) as u64,
        consistency: Consistency::from_i64(r.get(13)?),
    })
}

fn row_to_file(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        path: r.get(0)?,
        is_dir: r.get::<_, i64>(1)? != 0,
        size: r.get::<_, i64>(2)? as u64,
        mtime_ms: r.get(3)?,
        etag: r.get(4)?,
    })
}

fn row_to_load(r: &rusqlite::Row<'_>) -> rusqlite::Result<LoadRecord> {
    Ok(LoadRecord {
        id: r.get(0)?,
        dataset: r.get(1)?,
        state: r.get(2)?,
        created_at_ms: r.get(3)?,
        request: r.get(4)?,
        job: r.get(5)?,
    })
}

const FILE_COLS: &str = "path, is_dir, size, mtime_ms, etag";

fn get_dataset_where(
    conn: &Connection,
    clause: &str,
    p: &dyn rusqlite::ToSql,
) -> Result<Option<DatasetRecord>> {
    conn.query_row(
        &format!("SELECT {DATASET_COLS} FROM datasets WHERE {clause}"),
        [p],
        row_to_dataset,
    )
    .optional()
    .map_err(db_err("read dataset"))
}

fn read_epoch(conn: &Connection) -> Result<u64> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db_err("read epoch"))?;
    Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
}

fn write_epoch(conn: &Connection, epoch: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('epoch', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [epoch.to_string()],
    )
    .map_err(db_err("store epoch"))?;
    Ok(())
}

/// The smallest string greater than every path under `prefix/`: `/` + 1 is `0`.
fn prefix_upper_bound(prefix: &str) -> String {
    format!("{prefix}0")
}

#[async_trait]
impl CatalogStore for SqliteCatalog {
    async fn create_dataset(&self, d: NewDataset, now_ms: i64) -> Result<DatasetRecord> {
        self.write(move |conn| {
            let options = serde_json::to_string(&d.options)
                .map_err(|e| Error::internal(format!("encode options: {e}")))?;
            let r = conn.execute(
                "INSERT INTO datasets (name, uri, options, read_write, phase, created_at_ms, sync_interval_ms, consistency)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    d.name,
                    d.uri,
                    options,
                    d.read_write as i64,
                    Phase::Syncing.as_i64(),
                    now_ms,
                    i64::try_from(d.sync_interval_ms).unwrap_or(i64::MAX),
                    d.consistency.as_i64()
                ],
            );
            match r {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(Error::already_exists(format!(
                        "dataset `{}` already exists; pick another name or delete it first",
                        d.name
                    )));
                }
                Err(e) => return Err(db_err("insert dataset")(e)),
            }
            let id = conn.last_insert_rowid();
            get_dataset_where(conn, "id = ?1", &id)?
                .ok_or_else(|| Error::internal("dataset vanished right after insert"))
        })
        .await
    }

    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetRecord>> {
        let name = name.to_owned();
        self.read(move |conn| get_dataset_where(conn, "name = ?1", &name))
            .await
    }

    async fn get_dataset_by_id(&self, id: DatasetId) -> Result<Option<DatasetRecord>> {
        self.read(move |conn| get_dataset_where(conn, "id = ?1", &(id.0 as i64)))
            .await
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetRecord>> {
        self.read(|conn| {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {DATASET_COLS} FROM datasets ORDER BY name"
                ))
                .map_err(db_err("list datasets"))?;
            let rows = st
                .query_map([], row_to_dataset)
                .map_err(db_err("list datasets"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("list datasets"))
        })
        .await
    }

    async fn delete_dataset(&self, id: DatasetId) -> Result<bool> {
        self.write(move |conn| {
            let tx = conn.transaction().map_err(db_err("begin delete"))?;
            tx.execute("DELETE FROM files WHERE dataset_id = ?1", [id.0 as i64])
                .map_err(db_err("delete files"))?;
            tx.execute("DELETE FROM grants WHERE dataset_id = ?1", [id.0 as i64])
                .map_err(db_err("delete grants"))?;
            tx.execute(
                "DELETE FROM sync_tombstones WHERE dataset_id = ?1",
                [id.0 as i64],
            )
            .map_err(db_err("delete tombstones"))?;
            let n = tx
                .execute("DELETE FROM datasets WHERE id = ?1", [id.0 as i64])
                .map_err(db_err("delete dataset"))?;
            tx.commit().map_err(db_err("commit delete"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_phase(&self, id: DatasetId, phase: Phase, message: &str) -> Result<()> {
        let message = message.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE datasets SET phase = ?1, message = ?2 WHERE id = ?3",
                params![phase.as_i64(), message, id.0 as i64],
            )
            .map_err(db_err("update phase"))?;
            Ok(())
        })
        .await
    }

    async fn update_dataset(&self, id: DatasetId, u: DatasetUpdate) -> Result<DatasetRecord> {
        self.write(move |conn| {
            let interval = u
                .sync_interval_ms
                .map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            conn.execute(
                "UPDATE datasets SET sync_interval_ms = COALESCE(?1, sync_interval_ms),
                   consistency = COALESCE(?2, consistency) WHERE id = ?3",
                params![
                    interval,
                    u.consistency.map(Consistency::as_i64),
                    id.0 as i64
                ],
            )
            .map_err(db_err("update dataset"))?;
            get_dataset_where(conn, "id = ?1", &(id.0 as i64))?
                .ok_or_else(|| Error::not_found(format!("dataset #{id} not found")))
        })
        .await
    }

    // Sync generations and namespace changes: see `sync.rs`.
    async fn begin_sync(&self, id: DatasetId) -> Result<i64> {
        self.write(move |conn| sync::begin(conn, id)).await
    }

    async fn apply_sync_batch(
        &self,
        id: DatasetId,
        sync_gen: i64,
        batch: Vec<FileRecord>,
    ) -> Result<Vec<String>> {
        self.write(move |conn| sync::apply_batch(conn, id, sync_gen, batch))
            .await
    }

    async fn finish_sync(
        &self,
        id: DatasetId,
        sync_gen: i64,
        now_ms: i64,
        max_dropped: usize,
    ) -> Result<(DatasetRecord, Dropped)> {
        self.write(move |conn| sync::finish(conn, id, sync_gen, now_ms, max_dropped))
            .await
    }

    async fn abort_sync(&self, id: DatasetId, message: &str) -> Result<()> {
        let message = message.to_owned();
        self.write(move |conn| sync::abort(conn, id, &message))
            .await
    }

    async fn upsert_entry(&self, id: DatasetId, rec: FileRecord) -> Result<()> {
        self.write(move |conn| sync::upsert_entry(conn, id, rec))
            .await
    }

    async fn remove_entry(&self, id: DatasetId, path: &str) -> Result<bool> {
        let path = path.to_owned();
        self.write(move |conn| sync::remove_entry(conn, id, &path))
            .await
    }

    async fn lookup(&self, id: DatasetId, path: &str) -> Result<Option<FileRecord>> {
        let path = path.to_owned();
        self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {FILE_COLS} FROM files WHERE dataset_id = ?1 AND path = ?2"),
                params![id.0 as i64, path],
                row_to_file,
            )
            .optional()
            .map_err(db_err("lookup file"))
        })
        .await
    }

    async fn list_dir(
        &self,
        id: DatasetId,
        dir: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>> {
        let (dir, start_after) = (dir.to_owned(), start_after.to_owned());
        self.read(move |conn| {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {FILE_COLS} FROM files WHERE dataset_id = ?1 AND parent = ?2 AND name > ?3
                     AND path != '' ORDER BY name LIMIT ?4"
                ))
                .map_err(db_err("list dir"))?;
            let rows = st
                .query_map(params![id.0 as i64, dir, start_after, limit as i64], row_to_file)
                .map_err(db_err("list dir"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err("list dir"))
        })
        .await
    }

    async fn list_files_under(
        &self,
        id: DatasetId,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>> {
        let (prefix, start_after) = (prefix.to_owned(), start_after.to_owned());
        self.read(move |conn| {
            let mut st;
            let rows = if prefix.is_empty() {
                st = conn
                    .prepare_cached(&format!(
                        "SELECT {FILE_COLS} FROM files WHERE dataset_id = ?1 AND is_dir = 0 AND path > ?2
                         ORDER BY path LIMIT ?3"
                    ))
                    .map_err(db_err("list files"))?;
                st.query_map(params![id.0 as i64, start_after, limit as i64], row_to_file)
            } else {
                // The prefix itself (a file) or anything below `prefix/`.
                let lo = format!("{prefix}/");
                let lo = if start_after.as_str() > lo.as_str() { start_after.clone() } else { lo };
                st = conn
                    .prepare_cached(&format!(
                        "SELECT {FILE_COLS} FROM files WHERE dataset_id = ?1 AND is_dir = 0
                         AND ((path = ?2 AND ?2 > ?5) OR (path > ?3 AND path < ?4))
                         ORDER BY path LIMIT ?6"
                    ))
                    .map_err(db_err("list files"))?;
                st.query_map(
                    params![id.0 as i64, prefix, lo, prefix_upper_bound(&prefix), start_after, limit as i64],
                    row_to_file,
                )
            }
            .map_err(db_err("list files"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err("list files"))
        })
        .await
    }

    // Tokens and grants: see `access.rs`.
    async fn create_token(&self, t: TokenRecord) -> Result<()> {
        self.write(move |conn| access::create_token(conn, t)).await
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let id = id.to_owned();
        self.read(move |conn| access::get_token(conn, &id)).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(access::list_tokens).await
    }

    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |conn| access::revoke_token(conn, &id, now_ms))
            .await
    }

    async fn renew_token(&self, id: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |conn| access::renew_token(conn, &id, expires_at_ms, now_ms))
            .await
    }

    async fn delete_expired_tokens(&self, now_ms: i64) -> Result<u64> {
        self.write(move |conn| access::delete_expired_tokens(conn, now_ms))
            .await
    }

    async fn set_grant(&self, g: GrantRecord) -> Result<()> {
        self.write(move |conn| access::set_grant(conn, g)).await
    }

    async fn remove_grant(&self, dataset: DatasetId, owner: &str) -> Result<bool> {
        let owner = owner.to_owned();
        self.write(move |conn| access::remove_grant(conn, dataset, &owner))
            .await
    }

    async fn list_grants(
        &self,
        dataset: Option<DatasetId>,
        owner: Option<&str>,
    ) -> Result<Vec<GrantRecord>> {
        let owner = owner.map(str::to_owned);
        self.read(move |conn| access::list_grants(conn, dataset, owner.as_deref()))
            .await
    }

    async fn save_load(&self, l: LoadRecord) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO load_jobs (id, dataset, state, created_at_ms, request, job)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, job = excluded.job",
                params![l.id, l.dataset, l.state, l.created_at_ms, l.request, l.job],
            )
            .map_err(db_err("save load job"))?;
            Ok(())
        })
        .await
    }

    async fn get_load(&self, id: &str) -> Result<Option<LoadRecord>> {
        let id = id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT id, dataset, state, created_at_ms, request, job FROM load_jobs WHERE id = ?1",
                [id],
                row_to_load,
            )
            .optional()
            .map_err(db_err("read load job"))
        })
        .await
    }

    async fn list_loads(&self, dataset: Option<&str>) -> Result<Vec<LoadRecord>> {
        let dataset = dataset.map(str::to_owned);
        self.read(move |conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT id, dataset, state, created_at_ms, request, job FROM load_jobs
                     WHERE ?1 IS NULL OR dataset = ?1 ORDER BY created_at_ms DESC, id DESC",
                )
                .map_err(db_err("list load jobs"))?;
            let rows = st
                .query_map([dataset], row_to_load)
                .map_err(db_err("list load jobs"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("list load jobs"))
        })
        .await
    }

    async fn delete_load(&self, id: &str, state: i32) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM load_jobs WHERE id = ?1 AND state = ?2",
                    params![id, state],
                )
                .map_err(db_err("delete load job"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn load_epoch(&self) -> Result<u64> {
        self.read(read_epoch).await
    }

    async fn store_epoch(&self, epoch: u64) -> Result<()> {
        self.write(move |conn| write_epoch(conn, epoch)).await
    }

    async fn load_members(&self) -> Result<(u64, Vec<MemberRecord>)> {
        self.read(|conn| {
            let epoch = read_epoch(conn)?;
            let mut st = conn
                .prepare("SELECT id, state, info FROM members ORDER BY id")
                .map_err(db_err("list members"))?;
            let rows = st
                .query_map([], |r| {
                    Ok(MemberRecord {
                        id: r.get(0)?,
                        state: r.get(1)?,
                        info: r.get(2)?,
                    })
                })
                .map_err(db_err("list members"))?;
            let members = rows
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err("list members"))?;
            Ok((epoch, members))
        })
        .await
    }

    async fn save_members(&self, epoch: u64, changed: Vec<MemberRecord>) -> Result<()> {
        self.write(move |conn| {
            let tx = conn.transaction().map_err(db_err("begin member write"))?;
            for m in &changed {
                tx.execute(
                    "INSERT INTO members (id, state, info) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, info = excluded.info",
                    params![m.id, m.state, m.info],
                )
                .map_err(db_err("store member"))?;
            }
            write_epoch(&tx, epoch)?;
            tx.commit().map_err(db_err("commit member write"))
        })
        .await
    }
}
