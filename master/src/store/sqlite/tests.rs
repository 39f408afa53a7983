//! Tests of the SQLite catalogue: sync generations, paging, tokens and grants, reopen.

use super::*;

fn file(path: &str, size: u64) -> FileRecord {
    FileRecord {
        path: path.into(),
        is_dir: false,
        size,
        mtime_ms: 1,
        etag: "e".into(),
    }
}

fn dir(path: &str) -> FileRecord {
    FileRecord {
        path: path.into(),
        is_dir: true,
        size: 0,
        mtime_ms: 0,
        etag: String::new(),
    }
}

fn new_ds(name: &str) -> NewDataset {
    let mut options = BTreeMap::new();
    options.insert("secret_access_key".into(), "s".into());
    NewDataset {
        name: name.into(),
        uri: "memory://".into(),
        options,
        read_write: false,
        sync_interval_ms: 0,
        consistency: Consistency::Cached,
    }
}

#[tokio::test]
async fn sync_generations_replace_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.create_dataset(new_ds("a"), 1).await.unwrap();
    assert_eq!(s.begin_sync(d.id).await.unwrap(), 1);
    s.apply_sync_batch(
        d.id,
        1,
        vec![
            dir(""),
            dir("x"),
            file("x/1", 10),
            file("x/2", 5),
            file("y", 1),
        ],
    )
    .await
    .unwrap();
    let (d1, _) = s.finish_sync(d.id, 1, 2, 10).await.unwrap();
    assert_eq!(
        (d1.file_count, d1.total_bytes, d1.phase),
        (3, 16, Phase::Ready)
    );
    // Second sync: x/2 vanished, z appeared; only z is reported as changed.
    assert_eq!(s.begin_sync(d.id).await.unwrap(), 2);
    let changed = s
        .apply_sync_batch(
            d.id,
            2,
            vec![dir(""), dir("x"), file("x/1", 10), file("z", 7)],
        )
        .await
        .unwrap();
    assert_eq!(changed, ["z"]);
    let (d2, dropped) = s.finish_sync(d.id, 2, 3, 10).await.unwrap();
    assert_eq!(dropped.paths, ["x/2", "y"]);
    assert!(!dropped.more);
    assert_eq!((d2.file_count, d2.total_bytes), (2, 17));
    assert!(s.lookup(d.id, "x/2").await.unwrap().is_none());
    let names: Vec<_> = s
        .list_dir(d.id, "", "", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(names, ["x", "z"]);
    let page: Vec<_> = s
        .list_dir(d.id, "", "x", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    assert_eq!(page, ["z"]);
}

#[tokio::test]
async fn files_under_prefix_page_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.create_dataset(new_ds("a"), 1).await.unwrap();
    s.apply_sync_batch(
        d.id,
        1,
        vec![
            file("a", 1),
            file("a/b", 1),
            file("a/c/d", 1),
            file("a-b", 1),
            file("a0", 1),
            file("b", 1),
        ],
    )
    .await
    .unwrap();
    let under = |p: &'static str, after: &'static str| {
        let s = &s;
        async move {
            s.list_files_under(d.id, p, after, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|f| f.path)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(under("a", "").await, ["a", "a/b", "a/c/d"]);
    assert_eq!(under("a", "a").await, ["a/b", "a/c/d"]);
    assert_eq!(under("a", "a/b").await, ["a/c/d"]);
    assert_eq!(under("", "a0").await, ["b"]);
}

#[tokio::test]
async fn duplicate_names_and_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    s.create_dataset(new_ds("a"), 1).await.unwrap();
    let e = s.create_dataset(new_ds("a"), 1).await.unwrap_err();
    assert!(e.kind() == shoal_common::ErrorKind::AlreadyExists, "{e}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("catalog.db"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn tokens_and_grants_persist_and_die_with_their_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let t = TokenRecord {
        id: "0123456789abcdef".into(),
        owner: "team-a".into(),
        admin: false,
        secret_hash: "h".repeat(64),
        created_at_ms: 5,
        revoked_at_ms: 0,
        job: String::new(),
        scope: Vec::new(),
        expires_at_ms: 0,
    };
    let d = {
        let s = SqliteCatalog::open(tmp.path()).unwrap();
        s.create_token(t.clone()).await.unwrap();
        let e = s.create_token(t.clone()).await.unwrap_err();
        assert!(e.kind() == shoal_common::ErrorKind::AlreadyExists, "{e}");
        let d = s.create_dataset(new_ds("g"), 1).await.unwrap();
        for (owner, write) in [("team-a", false), ("team-b", true), ("team-a", true)] {
            s.set_grant(GrantRecord {
                dataset: d.id,
                owner: owner.into(),
                write,
            })
            .await
            .unwrap();
        }
        d.id
    };
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    assert_eq!(s.get_token(&t.id).await.unwrap(), Some(t.clone()));
    assert!(s.revoke_token(&t.id, 9).await.unwrap());
    assert!(
        s.revoke_token(&t.id, 10).await.unwrap(),
        "revoking twice is fine"
    );
    assert_eq!(s.get_token(&t.id).await.unwrap().unwrap().revoked_at_ms, 9);
    assert!(!s.revoke_token("ffffffffffffffff", 9).await.unwrap());
    assert_eq!(s.list_tokens().await.unwrap().len(), 1);
    let g = s.list_grants(Some(d), None).await.unwrap();
    assert_eq!(
        g.iter()
            .map(|g| (g.owner.as_str(), g.write))
            .collect::<Vec<_>>(),
        [("team-a", true), ("team-b", true)]
    );
    assert!(s.remove_grant(d, "team-b").await.unwrap());
    assert!(!s.remove_grant(d, "team-b").await.unwrap());
    assert_eq!(s.list_grants(None, Some("team-a")).await.unwrap().len(), 1);
    assert!(s.delete_dataset(d).await.unwrap());
    assert!(s.list_grants(None, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn state_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let id = {
        let s = SqliteCatalog::open(tmp.path()).unwrap();
        let d = s.create_dataset(new_ds("keep"), 1).await.unwrap();
        s.apply_sync_batch(d.id, 1, vec![file("f", 3)])
            .await
            .unwrap();
        s.finish_sync(d.id, 1, 2, 10).await.unwrap();
        s.store_epoch(9).await.unwrap();
        d.id
    };
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.get_dataset("keep").await.unwrap().unwrap();
    assert_eq!((d.id, d.file_count, d.options.len()), (id, 1, 1));
    assert_eq!(s.load_epoch().await.unwrap(), 9);
    assert!(s.delete_dataset(id).await.unwrap());
    assert!(s.lookup(id, "f").await.unwrap().is_none());
}

/// The member set is written with its epoch in one step and read back as written; a
/// later write of one member replaces only that member.
#[tokio::test]
async fn members_survive_reopen_with_their_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = |id: &str, state: i32, info: &[u8]| MemberRecord {
        id: id.into(),
        state,
        info: info.to_vec(),
    };
    {
        let s = SqliteCatalog::open(tmp.path()).unwrap();
        assert_eq!(s.load_members().await.unwrap(), (0, vec![]));
        s.save_members(4, vec![rec("b", 1, b"b1"), rec("a", 1, b"a1")])
            .await
            .unwrap();
        s.save_members(5, vec![rec("b", 2, b"b2")]).await.unwrap();
    }
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    assert_eq!(
        s.load_members().await.unwrap(),
        (5, vec![rec("a", 1, b"a1"), rec("b", 2, b"b2")])
    );
    assert_eq!(s.load_epoch().await.unwrap(), 5);
}

/// Commits, mkdirs, renames and removals made while a sync runs survive it, whatever
/// order the sync's pages and the changes arrive in (see `sync.rs`).
#[tokio::test]
async fn namespace_changes_during_a_sync_survive_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.create_dataset(new_ds("a"), 1).await.unwrap();
    let g = s.begin_sync(d.id).await.unwrap();
    s.apply_sync_batch(d.id, g, vec![file("old", 1), file("gone", 2)])
        .await
        .unwrap();
    s.finish_sync(d.id, g, 2, 10).await.unwrap();

    let g = s.begin_sync(d.id).await.unwrap();
    // The lister has passed `a…` already: this commit is never listed.
    s.upsert_entry(d.id, file("a/new", 5)).await.unwrap();
    // A page listed before these changes arrives after them: the old `old` and the
    // removed `gone` must not come back.
    s.upsert_entry(d.id, file("old", 9)).await.unwrap();
    assert!(s.remove_entry(d.id, "gone").await.unwrap());
    let changed = s
        .apply_sync_batch(d.id, g, vec![file("old", 1), file("gone", 2)])
        .await
        .unwrap();
    assert!(changed.is_empty(), "{changed:?}");
    let (d2, dropped) = s.finish_sync(d.id, g, 3, 10).await.unwrap();
    assert!(dropped.paths.is_empty(), "{dropped:?}");
    assert_eq!(s.lookup(d.id, "a/new").await.unwrap().unwrap().size, 5);
    assert!(s.lookup(d.id, "a").await.unwrap().unwrap().is_dir);
    assert_eq!(s.lookup(d.id, "old").await.unwrap().unwrap().size, 9);
    assert!(s.lookup(d.id, "gone").await.unwrap().is_none());
    assert_eq!((d2.file_count, d2.total_bytes), (2, 14));

    // The next sync is a plain one again: what it does not list goes.
    let g = s.begin_sync(d.id).await.unwrap();
    s.apply_sync_batch(d.id, g, vec![file("old", 9), file("gone", 2)])
        .await
        .unwrap();
    let (_, dropped) = s.finish_sync(d.id, g, 4, 10).await.unwrap();
    assert_eq!(dropped.paths, ["a", "a/new"]);
    assert_eq!(s.lookup(d.id, "gone").await.unwrap().unwrap().size, 2);
}

/// A failed sync never lends its generation to the next one: what it tagged before
/// failing is swept by the next sync unless listed again.
#[tokio::test]
async fn a_failed_sync_does_not_keep_what_it_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.create_dataset(new_ds("a"), 1).await.unwrap();
    let g = s.begin_sync(d.id).await.unwrap();
    s.apply_sync_batch(d.id, g, vec![file("keep", 1)])
        .await
        .unwrap();
    s.finish_sync(d.id, g, 2, 10).await.unwrap();
    let failed = s.begin_sync(d.id).await.unwrap();
    s.apply_sync_batch(d.id, failed, vec![file("keep", 1), file("brief", 1)])
        .await
        .unwrap();
    s.abort_sync(d.id, "listing failed").await.unwrap();
    let ds = s.get_dataset("a").await.unwrap().unwrap();
    assert_eq!(
        (ds.phase, ds.message.as_str()),
        (Phase::Failed, "listing failed")
    );
    // After the failure a removal is not a sync's business any more.
    let next = s.begin_sync(d.id).await.unwrap();
    assert!(next > failed);
    s.apply_sync_batch(d.id, next, vec![file("keep", 1)])
        .await
        .unwrap();
    let (_, dropped) = s.finish_sync(d.id, next, 3, 10).await.unwrap();
    assert_eq!(dropped.paths, ["brief"]);
}

/// Dropped paths are reported up to the limit, with `more` beyond it.
#[tokio::test]
async fn dropped_paths_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.create_dataset(new_ds("a"), 1).await.unwrap();
    let g = s.begin_sync(d.id).await.unwrap();
    let many: Vec<_> = (0..5).map(|i| file(&format!("f{i}"), 1)).collect();
    s.apply_sync_batch(d.id, g, many).await.unwrap();
    s.finish_sync(d.id, g, 2, 10).await.unwrap();
    let g = s.begin_sync(d.id).await.unwrap();
    let (d2, dropped) = s.finish_sync(d.id, g, 3, 3).await.unwrap();
    assert_eq!(dropped.paths, ["f0", "f1", "f2"]);
    assert!(dropped.more);
    assert_eq!(d2.file_count, 0);
}

/// Settings survive a reopen, and an update changes only what it names.
#[tokio::test]
async fn sync_interval_and_consistency_are_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let id = {
        let s = SqliteCatalog::open(tmp.path()).unwrap();
        let mut n = new_ds("a");
        n.sync_interval_ms = 30_000;
        n.consistency = Consistency::Strict;
        s.create_dataset(n, 1).await.unwrap().id
    };
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.get_dataset("a").await.unwrap().unwrap();
    assert_eq!(
        (d.sync_interval_ms, d.consistency),
        (30_000, Consistency::Strict)
    );
    let d = s
        .update_dataset(
            id,
            DatasetUpdate {
                sync_interval_ms: Some(0),
                consistency: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (d.sync_interval_ms, d.consistency),
        (0, Consistency::Strict)
    );
}

/// A catalogue written before sync intervals and tracked generations existed opens,
/// and its datasets get the defaults.
#[tokio::test]
async fn an_older_catalogue_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(tmp.path().join("catalog.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE datasets (
                id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, uri TEXT NOT NULL,
                options TEXT NOT NULL, read_write INTEGER NOT NULL, phase INTEGER NOT NULL,
                message TEXT NOT NULL DEFAULT '', file_count INTEGER NOT NULL DEFAULT 0,
                total_bytes INTEGER NOT NULL DEFAULT 0, created_at_ms INTEGER NOT NULL,
                refreshed_at_ms INTEGER NOT NULL DEFAULT 0, sync_gen INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE files (
                dataset_id INTEGER NOT NULL, path TEXT NOT NULL, parent TEXT NOT NULL,
                name TEXT NOT NULL, is_dir INTEGER NOT NULL, size INTEGER NOT NULL,
                mtime_ms INTEGER NOT NULL, etag TEXT NOT NULL, gen INTEGER NOT NULL,
                PRIMARY KEY (dataset_id, path)) WITHOUT ROWID;
             INSERT INTO datasets (name, uri, options, read_write, phase, created_at_ms, refreshed_at_ms, sync_gen)
                VALUES ('old', 'memory://', '{}', 0, 2, 1, 2, 3);
             INSERT INTO files VALUES (1, 'f', '', 'f', 0, 4, 1, 'e', 3);",
        )
        .unwrap();
    }
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let d = s.get_dataset("old").await.unwrap().unwrap();
    assert_eq!(
        (d.sync_interval_ms, d.consistency, d.sync_gen),
        (0, Consistency::Cached, 3)
    );
    // The next sync's generation follows the stored one; what it lists stays.
    let g = s.begin_sync(d.id).await.unwrap();
    assert_eq!(g, 4);
    s.apply_sync_batch(d.id, g, vec![file("f", 4)])
        .await
        .unwrap();
    let (d, dropped) = s.finish_sync(d.id, g, 3, 10).await.unwrap();
    assert!(dropped.paths.is_empty());
    assert_eq!(d.file_count, 1);
}

#[tokio::test]
async fn job_credentials_keep_their_scope_renew_and_are_swept_when_expired() {
    use shoal_common::auth::JobGrant;
    let tmp = tempfile::tempdir().unwrap();
    // A catalogue from before job credentials: the tokens table lacks their columns.
    {
        let c = rusqlite::Connection::open(tmp.path().join("catalog.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE tokens (id TEXT PRIMARY KEY, owner TEXT NOT NULL, admin INTEGER NOT NULL,
             secret_hash TEXT NOT NULL, created_at_ms INTEGER NOT NULL,
             revoked_at_ms INTEGER NOT NULL DEFAULT 0);
             INSERT INTO tokens VALUES ('00000000000000aa', 'team-a', 0, 'h', 1, 0);",
        )
        .unwrap();
    }
    let s = SqliteCatalog::open(tmp.path()).unwrap();
    let old = s.get_token("00000000000000aa").await.unwrap().unwrap();
    assert_eq!((old.job.as_str(), old.expires_at_ms), ("", 0));
    let job = TokenRecord {
        id: "00000000000000bb".into(),
        owner: "team-a".into(),
        admin: false,
        secret_hash: "h".repeat(64),
        created_at_ms: 5,
        revoked_at_ms: 0,
        job: "j-1".into(),
        scope: vec![JobGrant {
            dataset: "d".into(),
            id: DatasetId(3),
            write: true,
        }],
        expires_at_ms: 100,
    };
    s.create_token(job.clone()).await.unwrap();
    assert_eq!(s.get_token(&job.id).await.unwrap(), Some(job.clone()));
    assert!(s.renew_token(&job.id, 200, 50).await.unwrap());
    assert!(
        !s.renew_token(&job.id, 900, 250).await.unwrap(),
        "an expired credential is not renewed"
    );
    assert!(
        !s.renew_token(&old.id, 900, 50).await.unwrap(),
        "an owner token has no expiry to renew"
    );
    assert_eq!(s.delete_expired_tokens(150).await.unwrap(), 0);
    assert_eq!(s.delete_expired_tokens(200).await.unwrap(), 1);
    assert!(s.get_token(&job.id).await.unwrap().is_none());
    assert!(
        s.get_token(&old.id).await.unwrap().is_some(),
        "owner tokens stay"
    );
}
