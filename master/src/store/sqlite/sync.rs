//! Sync generations, and namespace changes that happen while a sync runs.
//!
//! A sync tags every entry it lists with a new generation and, once the listing is
//! complete, deletes the entries of older generations (mark and sweep): that is how an
//! object deleted from the store leaves the catalogue. A namespace change (commit,
//! mkdir, rename, remove) made through shoal while a sync runs must survive it, yet the
//! sync cannot see it in time:
//!
//! - a file committed after the lister passed its name is never listed, so a row tagged
//!   with the *previous* generation would be swept;
//! - a page listed before a commit or a removal can be applied after it, putting back
//!   the old metadata, or a removed entry.
//!
//! So the dataset row records the generation of the sync in progress (`running_gen`,
//! 0 when none), and while it is set:
//!
//! - rows a namespace change writes are tagged with the running generation, so the
//!   sweep keeps them, and marked `touched_gen = running_gen`, so the sync's own pages
//!   leave them as the change wrote them (the change is newer than any listing);
//! - a removal leaves a tombstone (`sync_tombstones`) that the sync's pages respect.
//!
//! Tombstones live only for one sync: `begin_sync` and the end of the sync clear them.
//! Generations come from `next_gen`, which only grows, so a sync that failed never
//! shares its generation with the next one (rows it tagged before failing would
//! otherwise look listed by the next sync, and a deleted object could survive it).

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use shoal_common::ids::{DatasetId, split_parent};
use shoal_common::{Error, Result};

use super::{db_err, get_dataset_where};
use crate::store::{DatasetRecord, Dropped, FileRecord, Phase};

/// (last completed generation, running generation or 0) of a dataset.
fn generations(tx: &Transaction<'_>, id: DatasetId) -> Result<(i64, i64)> {
    tx.query_row(
        "SELECT sync_gen, running_gen FROM datasets WHERE id = ?1",
        [id.0 as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(db_err("read dataset generation"))?
    .ok_or_else(|| Error::not_found(format!("dataset #{id} not found")))
}

pub fn begin(conn: &mut Connection, id: DatasetId) -> Result<i64> {
    let tx = conn.transaction().map_err(db_err("begin sync"))?;
    let n = tx
        .execute(
            "UPDATE datasets SET next_gen = MAX(next_gen, sync_gen) + 1,
               running_gen = MAX(next_gen, sync_gen) + 1, phase = ?1, message = ''
             WHERE id = ?2",
            params![Phase::Syncing.as_i64(), id.0 as i64],
        )
        .map_err(db_err("start sync"))?;
    if n == 0 {
        return Err(Error::not_found(format!("dataset #{id} not found")));
    }
    tx.execute(
        "DELETE FROM sync_tombstones WHERE dataset_id = ?1",
        [id.0 as i64],
    )
    .map_err(db_err("clear tombstones"))?;
    let (_, running) = generations(&tx, id)?;
    tx.commit().map_err(db_err("commit sync start"))?;
    Ok(running)
}

pub fn abort(conn: &mut Connection, id: DatasetId, message: &str) -> Result<()> {
    let tx = conn.transaction().map_err(db_err("begin abort sync"))?;
    tx.execute(
        "UPDATE datasets SET phase = ?1, message = ?2, running_gen = 0 WHERE id = ?3",
        params![Phase::Failed.as_i64(), message, id.0 as i64],
    )
    .map_err(db_err("mark sync failed"))?;
    tx.execute(
        "DELETE FROM sync_tombstones WHERE dataset_id = ?1",
        [id.0 as i64],
    )
    .map_err(db_err("clear tombstones"))?;
    tx.commit().map_err(db_err("commit abort sync"))
}

/// What a listed entry is compared on to decide whether it changed.
type Shape = (bool, i64, i64, String, i64);

pub fn apply_batch(
    conn: &mut Connection,
    id: DatasetId,
    sync_gen: i64,
    batch: Vec<FileRecord>,
) -> Result<Vec<String>> {
    let tx = conn.transaction().map_err(db_err("begin sync batch"))?;
    let mut changed = Vec::new();
    {
        let any_tombstone: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sync_tombstones WHERE dataset_id = ?1)",
                [id.0 as i64],
                |r| r.get(0),
            )
            .map_err(db_err("read tombstones"))?;
        let mut tomb = tx
            .prepare_cached("SELECT 1 FROM sync_tombstones WHERE dataset_id = ?1 AND path = ?2")
            .map_err(db_err("prepare tombstone probe"))?;
        let mut old = tx
            .prepare_cached(
                "SELECT is_dir, size, mtime_ms, etag, touched_gen FROM files
                 WHERE dataset_id = ?1 AND path = ?2",
            )
            .map_err(db_err("prepare old entry"))?;
        let mut retag = tx
            .prepare_cached("UPDATE files SET gen = ?3 WHERE dataset_id = ?1 AND path = ?2")
            .map_err(db_err("prepare retag"))?;
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO files (dataset_id, path, parent, name, is_dir, size, mtime_ms, etag, gen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (dataset_id, path) DO UPDATE SET
                   is_dir = excluded.is_dir, size = excluded.size, mtime_ms = excluded.mtime_ms,
                   etag = excluded.etag, gen = excluded.gen",
            )
            .map_err(db_err("prepare upsert"))?;
        for f in batch {
            let key = params![id.0 as i64, f.path];
            if any_tombstone && tomb.exists(key).map_err(db_err("probe tombstone"))? {
                continue;
            }
            let before: Option<Shape> = old
                .query_row(key, |r| {
                    Ok((
                        r.get::<_, i64>(0)? != 0,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })
                .optional()
                .map_err(db_err("read old entry"))?;
            match before {
                // Changed through shoal since this sync began: the change is newer.
                Some((.., touched)) if touched >= sync_gen => continue,
                Some((is_dir, size, mtime, etag, _))
                    if is_dir == f.is_dir
                        && size == f.size as i64
                        && mtime == f.mtime_ms
                        && etag == f.etag =>
                {
                    retag
                        .execute(params![id.0 as i64, f.path, sync_gen])
                        .map_err(db_err("retag entry"))?;
                }
                _ => {
                    let (parent, name) = split_parent(&f.path);
                    upsert
                        .execute(params![
                            id.0 as i64,
                            f.path,
                            parent,
                            name,
                            f.is_dir as i64,
                            f.size as i64,
                            f.mtime_ms,
                            f.etag,
                            sync_gen
                        ])
                        .map_err(db_err("upsert file"))?;
                    changed.push(f.path);
                }
            }
        }
    }
    tx.commit().map_err(db_err("commit sync batch"))?;
    Ok(changed)
}

pub fn finish(
    conn: &mut Connection,
    id: DatasetId,
    sync_gen: i64,
    now_ms: i64,
    max_dropped: usize,
) -> Result<(DatasetRecord, Dropped)> {
    let tx = conn.transaction().map_err(db_err("begin finish sync"))?;
    let mut paths: Vec<String> = {
        let mut st = tx
            .prepare_cached(
                "SELECT path FROM files WHERE dataset_id = ?1 AND gen < ?2 ORDER BY path LIMIT ?3",
            )
            .map_err(db_err("list vanished files"))?;
        let rows = st
            .query_map(
                params![id.0 as i64, sync_gen, max_dropped as i64 + 1],
                |r| r.get(0),
            )
            .map_err(db_err("list vanished files"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db_err("list vanished files"))?
    };
    let more = paths.len() > max_dropped;
    paths.truncate(max_dropped);
    tx.execute(
        "DELETE FROM files WHERE dataset_id = ?1 AND gen < ?2",
        params![id.0 as i64, sync_gen],
    )
    .map_err(db_err("drop vanished files"))?;
    tx.execute(
        "DELETE FROM sync_tombstones WHERE dataset_id = ?1",
        [id.0 as i64],
    )
    .map_err(db_err("clear tombstones"))?;
    let (count, bytes): (i64, i64) = tx
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE dataset_id = ?1 AND is_dir = 0",
            [id.0 as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db_err("count files"))?;
    tx.execute(
        "UPDATE datasets SET phase = ?1, message = '', file_count = ?2, total_bytes = ?3,
         refreshed_at_ms = ?4, sync_gen = ?5, running_gen = 0 WHERE id = ?6",
        params![
            Phase::Ready.as_i64(),
            count,
            bytes,
            now_ms,
            sync_gen,
            id.0 as i64
        ],
    )
    .map_err(db_err("update dataset after sync"))?;
    let d = get_dataset_where(&tx, "id = ?1", &(id.0 as i64))?
        .ok_or_else(|| Error::not_found("dataset was deleted during its sync"))?;
    tx.commit().map_err(db_err("commit finish sync"))?;
    Ok((d, Dropped { paths, more }))
}

/// Every proper ancestor of `path` (`a`, `a/b` for `a/b/c`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

pub fn upsert_entry(conn: &mut Connection, id: DatasetId, rec: FileRecord) -> Result<()> {
    let tx = conn.transaction().map_err(db_err("begin upsert"))?;
    let (done, running) = generations(&tx, id)?;
    let gen_ = if running > 0 { running } else { done };
    let old: Option<(i64, i64)> = tx
        .query_row(
            "SELECT is_dir, size FROM files WHERE dataset_id = ?1 AND path = ?2",
            params![id.0 as i64, rec.path],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err("read old entry"))?;
    for anc in ancestors(&rec.path).chain(std::iter::once(rec.path.as_str())) {
        tx.execute(
            "DELETE FROM sync_tombstones WHERE dataset_id = ?1 AND path = ?2",
            params![id.0 as i64, anc],
        )
        .map_err(db_err("clear tombstone"))?;
    }
    for anc in ancestors(&rec.path) {
        let (parent, name) = split_parent(anc);
        // An existing directory is kept, but tagged like the change: a sync running
        // now may have passed it, and must not sweep the parent of the new entry.
        tx.execute(
            "INSERT INTO files (dataset_id, path, parent, name, is_dir, size, mtime_ms, etag, gen, touched_gen)
             VALUES (?1, ?2, ?3, ?4, 1, 0, 0, '', ?5, ?6)
             ON CONFLICT (dataset_id, path) DO UPDATE SET
               gen = MAX(files.gen, excluded.gen), touched_gen = MAX(files.touched_gen, excluded.touched_gen)
             WHERE files.is_dir = 1",
            params![id.0 as i64, anc, parent, name, gen_, running],
        )
        .map_err(db_err("insert ancestor"))?;
    }
    let (parent, name) = split_parent(&rec.path);
    tx.execute(
        "INSERT INTO files (dataset_id, path, parent, name, is_dir, size, mtime_ms, etag, gen, touched_gen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (dataset_id, path) DO UPDATE SET
           is_dir = excluded.is_dir, size = excluded.size, mtime_ms = excluded.mtime_ms,
           etag = excluded.etag, gen = excluded.gen,
           touched_gen = MAX(files.touched_gen, excluded.touched_gen)",
        params![
            id.0 as i64,
            rec.path,
            parent,
            name,
            rec.is_dir as i64,
            rec.size as i64,
            rec.mtime_ms,
            rec.etag,
            gen_,
            running
        ],
    )
    .map_err(db_err("upsert entry"))?;
    let (old_files, old_bytes) = match old {
        Some((0, size)) => (1, size),
        _ => (0, 0),
    };
    let (new_files, new_bytes) = if rec.is_dir {
        (0, 0)
    } else {
        (1, rec.size as i64)
    };
    tx.execute(
        "UPDATE datasets SET file_count = file_count + ?1, total_bytes = total_bytes + ?2 WHERE id = ?3",
        params![new_files - old_files, new_bytes - old_bytes, id.0 as i64],
    )
    .map_err(db_err("adjust counts"))?;
    tx.commit().map_err(db_err("commit upsert"))
}

pub fn remove_entry(conn: &mut Connection, id: DatasetId, path: &str) -> Result<bool> {
    let tx = conn.transaction().map_err(db_err("begin remove"))?;
    let (_, running) = generations(&tx, id)?;
    if running > 0 {
        // A page listed before the removal must not put the entry back.
        tx.execute(
            "INSERT OR REPLACE INTO sync_tombstones (dataset_id, path, gen) VALUES (?1, ?2, ?3)",
            params![id.0 as i64, path, running],
        )
        .map_err(db_err("record tombstone"))?;
    }
    let old: Option<(i64, i64)> = tx
        .query_row(
            "SELECT is_dir, size FROM files WHERE dataset_id = ?1 AND path = ?2",
            params![id.0 as i64, path],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err("read entry"))?;
    let Some((is_dir, size)) = old else {
        tx.commit().map_err(db_err("commit remove"))?;
        return Ok(false);
    };
    tx.execute(
        "DELETE FROM files WHERE dataset_id = ?1 AND path = ?2",
        params![id.0 as i64, path],
    )
    .map_err(db_err("delete entry"))?;
    if is_dir == 0 {
        tx.execute(
            "UPDATE datasets SET file_count = file_count - 1, total_bytes = total_bytes - ?1 WHERE id = ?2",
            params![size, id.0 as i64],
        )
        .map_err(db_err("adjust counts"))?;
    }
    tx.commit().map_err(db_err("commit remove"))?;
    Ok(true)
}
