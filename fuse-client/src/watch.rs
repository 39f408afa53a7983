//! Following the master's change feed (`WatchChanges`), so that a new `open` sees a
//! file's new version within moments of a sync or another client's change, without a
//! remount and without waiting for a TTL.
//!
//! For every batch the mount drops its cached attributes of the changed paths
//! (`Catalog::invalidate`) and tells the kernel with FUSE notifications:
//! `inval_entry` for each name under a parent inode the kernel knows (this also drops
//! negative entries, so a new object appears) and `inval_inode` for each known inode
//! (its attributes and cached pages). A batch about a whole dataset (created again,
//! settings changed, too many changes to list) drops everything the mount and the
//! kernel know of it.
//!
//! The subscription never blocks reads: it runs in its own task, and reconnects with
//! backoff when the master goes away. After a reconnection anything may have changed
//! in between, so everything is dropped once. Kernel notifications are sent from the
//! blocking pool: the kernel may hold one until a request on the same directory is
//! answered, and that answer may need a runtime thread.

use std::sync::Arc;
use std::time::Duration;

use fuser::INodeNo;
use shoal_common::Result;
use shoal_proto::v1::{ChangeBatch, WatchChangesRequest};
use tonic::Streaming;

use crate::fs::Fs;
use crate::inode::NodeKey;
use crate::meta::Metadata;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Subscribes to the change feed.
pub async fn subscribe(meta: &Metadata) -> Result<Streaming<ChangeBatch>> {
    meta.rpc(
        "WatchChanges",
        meta.master().watch_changes(WatchChangesRequest {}),
    )
    .await
}

/// Follows the feed until the mount shuts down, starting with `first` when the mount
/// could subscribe before it answered its first request.
pub fn spawn(fs: &Arc<Fs>, first: Option<Streaming<ChangeBatch>>) {
    let fs2 = fs.clone();
    fs.spawn(async move { follow(fs2, first).await });
}

async fn follow(fs: Arc<Fs>, mut stream: Option<Streaming<ChangeBatch>>) {
    let mut backoff = FIRST_BACKOFF;
    let mut reconnected = false;
    loop {
        if let Some(mut s) = stream.take() {
            fs.m.change_feed_connected.set(1.0);
            if reconnected {
                // Changes made while we were away were not seen.
                apply(&fs, everything()).await;
            }
            backoff = FIRST_BACKOFF;
            loop {
                match s.message().await {
                    Ok(Some(b)) => apply(&fs, b).await,
                    Ok(None) => {
                        tracing::info!("the master ended the change feed; subscribing again");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed interrupted; subscribing again");
                        break;
                    }
                }
            }
            fs.m.change_feed_connected.set(0.0);
        }
        // Jitter keeps many mounts from reconnecting to a restarted master at once.
        let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        match subscribe(&fs.meta).await {
            Ok(s) => {
                stream = Some(s);
                reconnected = true;
                tracing::info!("subscribed to the change feed again");
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot subscribe to the change feed yet");
            }
        }
    }
}

/// A batch that says "anything of any dataset may have changed".
fn everything() -> ChangeBatch {
    ChangeBatch {
        everything: true,
        ..Default::default()
    }
}

/// Drops what the mount and the kernel know of the batch's paths.
async fn apply(fs: &Arc<Fs>, b: ChangeBatch) {
    fs.m.change_batches.increment(1);
    if b.dataset_id != 0 && !fs.meta.shows(&b.dataset) {
        return;
    }
    let targets = if b.dataset_id == 0 {
        fs.meta.forget_all();
        Targets::All(None)
    } else {
        let known = fs.meta.dataset_cached(&b.dataset);
        match known {
            // About a dataset of this name that was deleted before the one we know.
            Some(d) if d.id.0 > b.dataset_id => return,
            // Ours is gone (deleted, or created again as the dataset of this batch),
            // or may have changed as a whole.
            Some(d) if b.everything || d.id.0 < b.dataset_id => {
                fs.meta.forget_dataset(&b.dataset);
                Targets::All(Some(b.dataset.clone()))
            }
            None if b.everything => Targets::All(Some(b.dataset.clone())),
            _ => {
                for p in &b.paths {
                    fs.meta.invalidate(&Arc::from(b.dataset.as_str()), p);
                }
                Targets::Paths(b.dataset.clone(), b.paths)
            }
        }
    };
    let fs2 = fs.clone();
    let sent = tokio::task::spawn_blocking(move || tell_kernel(&fs2, targets)).await;
    if let Ok(n) = sent {
        fs.m.kernel_invalidations.increment(n);
    }
}

enum Targets {
    /// Every node of one dataset, or of all with `None`.
    All(Option<String>),
    Paths(String, Vec<String>),
}

/// Sends the kernel's notifications; returns how many were sent.
fn tell_kernel(fs: &Fs, targets: Targets) -> u64 {
    let Some(kernel) = fs.kernel.get() else {
        return 0;
    };
    let keys: Vec<NodeKey> = match targets {
        Targets::All(ds) => fs
            .inodes
            .nodes_of(ds.as_deref())
            .into_iter()
            .map(|(_, k)| k)
            .chain(ds.map(|d| NodeKey::dataset_root(&d)))
            .collect(),
        Targets::Paths(ds, paths) => {
            let ds: Arc<str> = Arc::from(ds.as_str());
            paths
                .into_iter()
                .map(|path| NodeKey {
                    dataset: Some(ds.clone()),
                    path,
                })
                .collect()
        }
    };
    let mut sent = 0;
    for key in keys {
        if let Some(ino) = fs.inodes.peek(&key) {
            // Attributes and every cached page: the next open and read ask again.
            note(kernel.inval_inode(INodeNo(ino), 0, 0), &key);
            sent += 1;
        }
        if let Some((parent, name)) = key.parent()
            && let Some(pino) = fs.inodes.peek(&parent)
        {
            note(
                kernel.inval_entry(INodeNo(pino), std::ffi::OsStr::new(name)),
                &key,
            );
            sent += 1;
        }
    }
    sent
}

fn note(r: std::io::Result<()>, key: &NodeKey) {
    if let Err(e) = r {
        // ENOENT (the kernel had already dropped it) is not reported by fuser; what is
        // left is a mount going away.
        tracing::debug!(dataset = key.dataset.as_deref().unwrap_or(""), path = %key.path, error = %e,
            "kernel invalidation failed");
    }
}
