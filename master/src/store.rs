//! The master's durable state behind one small trait, [`CatalogStore`].
//!
//! The embedded default is SQLite in WAL mode ([`sqlite::SqliteCatalog`]). The trait
//! speaks in whole operations (create a dataset, apply a batch of listed files, finish
//! a sync) rather than SQL, so a PostgreSQL implementation for HA masters can be added
//! without touching callers.

pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use shoal_common::Result;
use shoal_common::auth::JobGrant;
use shoal_common::ids::DatasetId;
use shoal_ufs::secret::DebugOptions;

/// Where a dataset's metadata sync stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Syncing,
    Ready,
    Failed,
}

impl Phase {
    pub fn as_i64(self) -> i64 {
        match self {
            Phase::Syncing => 1,
            Phase::Ready => 2,
            Phase::Failed => 3,
        }
    }

    pub fn from_i64(v: i64) -> Phase {
        match v {
            2 => Phase::Ready,
            3 => Phase::Failed,
            _ => Phase::Syncing,
        }
    }
}

/// What an open of a dataset's file checks against the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The catalogue as last synced: no store call per open.
    #[default]
    Cached,
    /// Every open stats the object in the store (close-to-open).
    Strict,
}

impl Consistency {
    pub fn as_i64(self) -> i64 {
        match self {
            Consistency::Cached => 0,
            Consistency::Strict => 1,
        }
    }

    pub fn from_i64(v: i64) -> Consistency {
        if v == 1 {
            Consistency::Strict
        } else {
            Consistency::Cached
        }
    }
}

/// A dataset as stored, credentials included. Never sent to users as is: see
/// `handler::dataset::to_proto`, which drops secret options. Its `Debug` hides them.
#[derive(Clone)]
pub struct DatasetRecord {
    pub id: DatasetId,
    pub name: String,
    pub uri: String,
    pub options: BTreeMap<String, String>,
    pub read_write: bool,
    pub phase: Phase,
    pub message: String,
    pub file_count: u64,
    pub total_bytes: u64,
    pub created_at_ms: i64,
    /// 0 until the first sync completes.
    pub refreshed_at_ms: i64,
    /// Generation of the last completed sync; file rows of older generations are gone.
    pub sync_gen: i64,
    /// Periodic re-listing every this many milliseconds; 0 is off.
    pub sync_interval_ms: u64,
    pub consistency: Consistency,
}

impl std::fmt::Debug for DatasetRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("options", &DebugOptions(&self.options))
            .field("read_write", &self.read_write)
            .field("phase", &self.phase)
            .field("message", &self.message)
            .field("file_count", &self.file_count)
            .field("total_bytes", &self.total_bytes)
            .field("created_at_ms", &self.created_at_ms)
            .field("refreshed_at_ms", &self.refreshed_at_ms)
            .field("sync_gen", &self.sync_gen)
            .field("sync_interval_ms", &self.sync_interval_ms)
            .field("consistency", &self.consistency)
            .finish()
    }
}

/// What a new dataset is created from. Its `Debug` hides credentials.
#[derive(Clone)]
pub struct NewDataset {
    pub name: String,
    pub uri: String,
    pub options: BTreeMap<String, String>,
    pub read_write: bool,
    pub sync_interval_ms: u64,
    pub consistency: Consistency,
}

impl std::fmt::Debug for NewDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDataset")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("options", &DebugOptions(&self.options))
            .field("read_write", &self.read_write)
            .field("sync_interval_ms", &self.sync_interval_ms)
            .field("consistency", &self.consistency)
            .finish()
    }
}

/// What an update of a dataset changes; `None` keeps the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct DatasetUpdate {
    pub sync_interval_ms: Option<u64>,
    pub consistency: Option<Consistency>,
}

/// The paths a finished sync dropped (they were not listed), up to the limit it was
/// given; `more` when there were others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub paths: Vec<String>,
    pub more: bool,
}

/// One entry of a dataset's namespace: a file, or a directory (explicit in the UFS or
/// implied by a file's path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    /// Normalised path relative to the dataset root ("" is the root).
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime_ms: i64,
    pub etag: String,
}

impl FileRecord {
    /// The record of `path` as the store describes it. Every record built from a store
    /// listing or stat goes through here, so the etag (which the file's version hashes)
    /// is normalised one way: without the quotes S3 puts around it.
    pub fn from_ufs(path: String, meta: &opendal::Metadata) -> FileRecord {
        FileRecord {
            path,
            is_dir: meta.is_dir(),
            size: if meta.is_dir() {
                0
            } else {
                meta.content_length()
            },
            mtime_ms: meta
                .last_modified()
                .map(|t| t.into_inner().as_millisecond())
                .unwrap_or(0),
            etag: meta.etag().unwrap_or("").trim_matches('"').to_owned(),
        }
    }
}

/// A prewarm (load) job as persisted: what was asked and how far it got. Both are kept
/// as their protobuf encodings (`StartLoadRequest`, `LoadJob`), so the stored form and
/// the wire form cannot drift apart.
#[derive(Clone, Debug)]
pub struct LoadRecord {
    pub id: String,
    pub dataset: String,
    /// `LoadState` as its protobuf number; indexed so unfinished jobs are found at start.
    pub state: i32,
    pub created_at_ms: i64,
    pub request: Vec<u8>,
    pub job: Vec<u8>,
}

/// One worker as the membership last wrote it. The description is kept as its
/// protobuf encoding (`WorkerInfo`: addresses, tiers and their quotas, state), so the
/// stored form and the wire form cannot drift apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: String,
    /// `WorkerState` as its protobuf number (also inside `info`; kept apart to query).
    pub state: i32,
    pub info: Vec<u8>,
}

/// An issued access token as stored: never the secret, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub owner: String,
    pub admin: bool,
    pub secret_hash: String,
    pub created_at_ms: i64,
    /// 0 while the token is valid.
    pub revoked_at_ms: i64,
    /// A job credential's job; empty for an owner's token.
    pub job: String,
    /// A job credential's datasets as issued (the owner's grants are checked again at
    /// every use); empty for an owner's token.
    pub scope: Vec<JobGrant>,
    /// When a job credential lapses unless renewed; 0 never (owner tokens).
    pub expires_at_ms: i64,
}

/// One owner's access to one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRecord {
    pub dataset: DatasetId,
    pub owner: String,
    /// Namespace changes too, not only reads.
    pub write: bool,
}

#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Inserts a dataset in phase `Syncing`. Fails with `AlreadyExists` on a duplicate name.
    async fn create_dataset(&self, d: NewDataset, now_ms: i64) -> Result<DatasetRecord>;
    async fn get_dataset(&self, name: &str) -> Result<Option<DatasetRecord>>;
    async fn get_dataset_by_id(&self, id: DatasetId) -> Result<Option<DatasetRecord>>;
    async fn list_datasets(&self) -> Result<Vec<DatasetRecord>>;
    /// Removes the dataset, all its file metadata and its grants. Returns false if it did not exist.
    async fn delete_dataset(&self, id: DatasetId) -> Result<bool>;
    async fn set_phase(&self, id: DatasetId, phase: Phase, message: &str) -> Result<()>;
    /// Changes the sync interval and/or consistency mode; returns the updated record.
    async fn update_dataset(&self, id: DatasetId, u: DatasetUpdate) -> Result<DatasetRecord>;

    /// Starts a sync: allocates its generation (never one used before, even by a sync
    /// that failed) and marks the dataset syncing. Namespace changes made until
    /// [`Self::finish_sync`] or [`Self::abort_sync`] are protected from it.
    async fn begin_sync(&self, id: DatasetId) -> Result<i64>;
    /// Upserts one page of listed entries, tagged with sync generation `gen`. Entries a
    /// namespace change wrote or removed since the sync began are left as that change
    /// made them. Returns the paths that are new or whose metadata changed.
    async fn apply_sync_batch(
        &self,
        id: DatasetId,
        sync_gen: i64,
        batch: Vec<FileRecord>,
    ) -> Result<Vec<String>>;
    /// Ends a sync: drops entries not seen in generation `gen` (reporting up to
    /// `max_dropped` of their paths), recomputes the counts and marks the dataset ready.
    /// Returns the updated record.
    async fn finish_sync(
        &self,
        id: DatasetId,
        sync_gen: i64,
        now_ms: i64,
        max_dropped: usize,
    ) -> Result<(DatasetRecord, Dropped)>;
    /// Ends a sync that failed: the previous metadata stays, the dataset is marked
    /// failed with `message`.
    async fn abort_sync(&self, id: DatasetId, message: &str) -> Result<()>;

    /// Inserts or replaces one entry (with its missing ancestor directories) outside a
    /// sync, adjusting the dataset's file count and byte total in the same transaction.
    async fn upsert_entry(&self, id: DatasetId, rec: FileRecord) -> Result<()>;
    /// Removes one entry, adjusting the counts. Returns false if it did not exist.
    async fn remove_entry(&self, id: DatasetId, path: &str) -> Result<bool>;

    async fn lookup(&self, id: DatasetId, path: &str) -> Result<Option<FileRecord>>;
    /// Entries directly under `dir`, sorted by name, strictly after `start_after`.
    async fn list_dir(
        &self,
        id: DatasetId,
        dir: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>>;
    /// Files (not directories) under a path prefix, in path order, after `start_after`.
    /// Used to page through a dataset without holding it in memory.
    async fn list_files_under(
        &self,
        id: DatasetId,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<FileRecord>>;

    /// Inserts or replaces a load job (its request and its latest progress).
    async fn save_load(&self, load: LoadRecord) -> Result<()>;
    async fn get_load(&self, id: &str) -> Result<Option<LoadRecord>>;
    /// Load jobs, newest first, optionally only those of one dataset.
    async fn list_loads(&self, dataset: Option<&str>) -> Result<Vec<LoadRecord>>;
    /// Removes a load job if it is still in `state` (a `LoadState` number); true if
    /// it was removed.
    async fn delete_load(&self, id: &str, state: i32) -> Result<bool>;

    /// Stores a new token. Fails with `AlreadyExists` on a duplicate id.
    async fn create_token(&self, t: TokenRecord) -> Result<()>;
    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>>;
    /// Every token, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Marks a token revoked. Returns false if there is no such token.
    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool>;
    /// Moves a live job credential's expiry to `expires_at_ms`. Returns false if there
    /// is no such job credential, or it is revoked or expired at `now_ms`.
    async fn renew_token(&self, id: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool>;
    /// Deletes job credentials that expired before `now_ms`; returns how many.
    async fn delete_expired_tokens(&self, now_ms: i64) -> Result<u64>;

    /// Inserts or replaces one owner's grant on a dataset.
    async fn set_grant(&self, g: GrantRecord) -> Result<()>;
    /// Returns false if the owner had no grant.
    async fn remove_grant(&self, dataset: DatasetId, owner: &str) -> Result<bool>;
    /// Grants on one dataset (`Some`), or every grant of one owner (`owner`), or both.
    async fn list_grants(
        &self,
        dataset: Option<DatasetId>,
        owner: Option<&str>,
    ) -> Result<Vec<GrantRecord>>;

    /// The placement epoch, persisted so it only ever grows across restarts.
    async fn load_epoch(&self) -> Result<u64>;
    async fn store_epoch(&self, epoch: u64) -> Result<()>;

    /// The persisted worker set: every member ever registered (live, expired or left),
    /// in id order, with the epoch it was last written at.
    async fn load_members(&self) -> Result<(u64, Vec<MemberRecord>)>;
    /// Writes `epoch` and upserts `changed` members in one transaction, so the stored
    /// set and the stored epoch never disagree.
    async fn save_members(&self, epoch: u64, changed: Vec<MemberRecord>) -> Result<()>;
}
