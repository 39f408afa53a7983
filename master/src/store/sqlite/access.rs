//! Tokens and dataset grants in the SQLite catalogue: who may call the master, and
//! which owner may read or change which dataset.

use rusqlite::{Connection, OptionalExtension, params};
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};

use super::db_err;
use crate::store::{GrantRecord, TokenRecord};

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        owner: r.get(1)?,
        admin: r.get(2)?,
        secret_hash: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
    })
}

pub fn create_token(conn: &Connection, t: TokenRecord) -> Result<()> {
    let r = conn.execute(
        "INSERT INTO tokens (id, owner, admin, secret_hash, created_at_ms, revoked_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            t.id,
            t.owner,
            t.admin,
            t.secret_hash,
            t.created_at_ms,
            t.revoked_at_ms
        ],
    );
    match r {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(Error::already_exists(format!(
                "token {} already exists",
                t.id
            )))
        }
        Err(e) => Err(db_err("insert token")(e)),
    }
}

pub fn get_token(conn: &Connection, id: &str) -> Result<Option<TokenRecord>> {
    conn.query_row(
        "SELECT id, owner, admin, secret_hash, created_at_ms, revoked_at_ms
         FROM tokens WHERE id = ?1",
        [id],
        row_to_token,
    )
    .optional()
    .map_err(db_err("read token"))
}

pub fn list_tokens(conn: &Connection) -> Result<Vec<TokenRecord>> {
    let mut st = conn
        .prepare_cached(
            "SELECT id, owner, admin, secret_hash, created_at_ms, revoked_at_ms
             FROM tokens ORDER BY created_at_ms, id",
        )
        .map_err(db_err("list tokens"))?;
    let rows = st
        .query_map([], row_to_token)
        .map_err(db_err("list tokens"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err("list tokens"))
}

pub fn revoke_token(conn: &Connection, id: &str, now_ms: i64) -> Result<bool> {
    let n = conn
        .execute(
            "UPDATE tokens SET revoked_at_ms = ?1 WHERE id = ?2 AND revoked_at_ms = 0",
            params![now_ms, id],
        )
        .map_err(db_err("revoke token"))?;
    if n > 0 {
        return Ok(true);
    }
    let exists: Option<i64> = conn
        .query_row("SELECT 1 FROM tokens WHERE id = ?1", [id], |r| r.get(0))
        .optional()
        .map_err(db_err("read token"))?;
    Ok(exists.is_some())
}

pub fn set_grant(conn: &Connection, g: GrantRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO grants (dataset_id, owner, write) VALUES (?1, ?2, ?3)
         ON CONFLICT (dataset_id, owner) DO UPDATE SET write = excluded.write",
        params![g.dataset.0 as i64, g.owner, g.write],
    )
    .map_err(db_err("save grant"))?;
    Ok(())
}

pub fn remove_grant(conn: &Connection, dataset: DatasetId, owner: &str) -> Result<bool> {
    let n = conn
        .execute(
            "DELETE FROM grants WHERE dataset_id = ?1 AND owner = ?2",
            params![dataset.0 as i64, owner],
        )
        .map_err(db_err("remove grant"))?;
    Ok(n > 0)
}

pub fn list_grants(
    conn: &Connection,
    dataset: Option<DatasetId>,
    owner: Option<&str>,
) -> Result<Vec<GrantRecord>> {
    let mut st = conn
        .prepare_cached(
            "SELECT dataset_id, owner, write FROM grants
             WHERE (?1 IS NULL OR dataset_id = ?1) AND (?2 IS NULL OR owner = ?2)
             ORDER BY dataset_id, owner",
        )
        .map_err(db_err("list grants"))?;
    let rows = st
        .query_map(params![dataset.map(|d| d.0 as i64), owner], |r| {
            Ok(GrantRecord {
                dataset: DatasetId(r.get::<_, i64>(0)? as u64),
                owner: r.get(1)?,
                write: r.get(2)?,
            })
        })
        .map_err(db_err("list grants"))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err("list grants"))
}
