//! Tokens and dataset grants in the SQLite catalogue: who may call the master, and
//! which owner may read or change which dataset.
//!
//! Job credentials live in the same table as owner tokens (so `verify` has one place to
//! look), with their job, their scope as JSON (`[{"dataset","id","write"}]`) and an
//! expiry; owner tokens have an empty job and scope and expiry 0.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use shoal_common::auth::JobGrant;
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};

use super::db_err;
use crate::store::{GrantRecord, TokenRecord};

const TOKEN_COLUMNS: &str =
    "id, owner, admin, secret_hash, created_at_ms, revoked_at_ms, job, scope, expires_at_ms";

#[derive(Serialize, Deserialize)]
struct StoredGrant {
    dataset: String,
    id: u64,
    write: bool,
}

fn scope_to_text(scope: &[JobGrant]) -> String {
    if scope.is_empty() {
        return String::new();
    }
    let v: Vec<StoredGrant> = scope
        .iter()
        .map(|g| StoredGrant {
            dataset: g.dataset.clone(),
            id: g.id.0,
            write: g.write,
        })
        .collect();
    serde_json::to_string(&v).unwrap_or_default()
}

fn scope_from_text(s: &str) -> rusqlite::Result<Vec<JobGrant>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let v: Vec<StoredGrant> = serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(v.into_iter()
        .map(|g| JobGrant {
            dataset: g.dataset,
            id: DatasetId(g.id),
            write: g.write,
        })
        .collect())
}

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        owner: r.get(1)?,
        admin: r.get(2)?,
        secret_hash: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked_at_ms: r.get(5)?,
        job: r.get(6)?,
        scope: scope_from_text(&r.get::<_, String>(7)?)?,
        expires_at_ms: r.get(8)?,
    })
}

pub fn create_token(conn: &Connection, t: TokenRecord) -> Result<()> {
    let r = conn.execute(
        &format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            t.id,
            t.owner,
            t.admin,
            t.secret_hash,
            t.created_at_ms,
            t.revoked_at_ms,
            t.job,
            scope_to_text(&t.scope),
            t.expires_at_ms,
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
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
        [id],
        row_to_token,
    )
    .optional()
    .map_err(db_err("read token"))
}

pub fn list_tokens(conn: &Connection) -> Result<Vec<TokenRecord>> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at_ms, id"
        ))
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

pub fn renew_token(conn: &Connection, id: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool> {
    let n = conn
        .execute(
            "UPDATE tokens SET expires_at_ms = ?1
             WHERE id = ?2 AND job != '' AND revoked_at_ms = 0 AND expires_at_ms > ?3",
            params![expires_at_ms, id, now_ms],
        )
        .map_err(db_err("renew token"))?;
    Ok(n > 0)
}

pub fn delete_expired_tokens(conn: &Connection, now_ms: i64) -> Result<u64> {
    // Owner tokens have expiry 0 and are never swept; revoked ones stay listed.
    let n = conn
        .execute(
            "DELETE FROM tokens WHERE job != '' AND expires_at_ms != 0 AND expires_at_ms <= ?1",
            [now_ms],
        )
        .map_err(db_err("delete expired tokens"))?;
    Ok(n as u64)
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
