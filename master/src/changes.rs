//! [`Changes`]: the feed of catalogue changes behind the `WatchChanges` stream.
//!
//! Whatever changes file metadata publishes the paths it changed: a sync (new,
//! changed and dropped paths, or the whole dataset when there are too many), a
//! namespace change (commit, mkdir, rename, remove), a revalidating lookup that found
//! the object changed, and a dataset created, updated or deleted (the whole dataset).
//! Mounts subscribe and drop what they cached about those paths, so a new `open` sees
//! the new version within moments instead of after a TTL.
//!
//! The feed is a bounded broadcast channel: publishing never waits for subscribers. A
//! subscriber that falls behind by more than the channel holds gets one batch that says
//! "everything" for every dataset (`dataset_id` 0), which is always correct, only
//! costlier for it.

use std::collections::BTreeSet;
use std::pin::Pin;

use futures::Stream;
use shoal_common::ids::DatasetId;
use shoal_proto::v1::ChangeBatch;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Batches a subscriber may fall behind by before it is told to drop everything.
const BACKLOG: usize = 1024;
/// Paths a sync reports one by one; beyond that it reports the whole dataset (a mount
/// would spend longer dropping entries one at a time than re-fetching what it needs).
pub const MAX_SYNC_PATHS: usize = 1000;
/// Paths per published batch, so no message grows past a few tens of kilobytes.
const PATHS_PER_BATCH: usize = 256;

pub struct Changes {
    tx: broadcast::Sender<ChangeBatch>,
    /// Ends every stream when the master stops (a server waits for open streams).
    closed: CancellationToken,
}

impl Changes {
    pub fn new(closed: CancellationToken) -> Changes {
        let (tx, _) = broadcast::channel(BACKLOG);
        Changes { tx, closed }
    }

    /// `paths` of `dataset` changed.
    pub fn paths(&self, id: DatasetId, dataset: &str, paths: impl IntoIterator<Item = String>) {
        let paths: Vec<String> = paths.into_iter().collect();
        for chunk in paths.chunks(PATHS_PER_BATCH) {
            self.send(ChangeBatch {
                dataset_id: id.0,
                dataset: dataset.to_owned(),
                paths: chunk.to_vec(),
                everything: false,
            });
        }
    }

    /// Anything of `dataset` may have changed (or the dataset itself was created,
    /// deleted or changed its settings).
    pub fn everything(&self, id: DatasetId, dataset: &str) {
        self.send(ChangeBatch {
            dataset_id: id.0,
            dataset: dataset.to_owned(),
            paths: vec![],
            everything: true,
        });
    }

    fn send(&self, b: ChangeBatch) {
        metrics::counter!("shoal_master_change_batches_total").increment(1);
        // No subscriber is not an error: nobody caches anything then.
        let _ = self.tx.send(b);
    }

    /// A subscriber's stream: every batch published from now on.
    pub fn subscribe(&self) -> Pin<Box<dyn Stream<Item = ChangeBatch> + Send + 'static>> {
        let rx = self.tx.subscribe();
        let closed = self.closed.clone();
        Box::pin(futures::stream::unfold(
            (rx, closed),
            |(mut rx, closed)| async move {
                let next = tokio::select! {
                    _ = closed.cancelled() => return None,
                    r = rx.recv() => r,
                };
                let batch = match next {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "a change subscriber fell behind; telling it to drop everything"
                        );
                        ChangeBatch {
                            everything: true,
                            ..Default::default()
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((batch, (rx, closed)))
            },
        ))
    }
}

/// The paths a sync changed, held up to [`MAX_SYNC_PATHS`]; past that only the fact
/// that there were more, so a sync of any size holds a bounded set.
#[derive(Default)]
pub struct SyncChanges {
    paths: BTreeSet<String>,
    overflow: bool,
}

impl SyncChanges {
    pub fn add(&mut self, paths: impl IntoIterator<Item = String>) {
        for p in paths {
            if self.overflow {
                return;
            }
            self.paths.insert(p);
            if self.paths.len() > MAX_SYNC_PATHS {
                self.overflow = true;
                self.paths.clear();
            }
        }
    }

    /// Marks the set as too large to list.
    pub fn overflow(&mut self) {
        self.overflow = true;
        self.paths.clear();
    }

    /// Room left before the set overflows.
    pub fn room(&self) -> usize {
        if self.overflow {
            0
        } else {
            MAX_SYNC_PATHS - self.paths.len()
        }
    }

    /// Publishes the set on `changes`.
    pub fn publish(self, changes: &Changes, id: DatasetId, dataset: &str) {
        if self.overflow {
            changes.everything(id, dataset);
        } else if !self.paths.is_empty() {
            changes.paths(id, dataset, self.paths);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn subscribers_get_batches_and_a_lagging_one_gets_everything() {
        let c = Changes::new(CancellationToken::new());
        let mut s = c.subscribe();
        c.paths(DatasetId(3), "ds", ["a".to_owned(), "b/c".to_owned()]);
        let b = s.next().await.unwrap();
        assert_eq!((b.dataset_id, b.paths.len(), b.everything), (3, 2, false));
        for _ in 0..BACKLOG + 5 {
            c.everything(DatasetId(3), "ds");
        }
        let b = s.next().await.unwrap();
        assert_eq!((b.dataset_id, b.everything), (0, true));
    }

    #[tokio::test]
    async fn streams_end_when_the_master_stops() {
        let closed = CancellationToken::new();
        let c = Changes::new(closed.clone());
        let mut s = c.subscribe();
        closed.cancel();
        assert!(s.next().await.is_none());
    }

    #[test]
    fn sync_changes_overflow_to_everything() {
        let mut s = SyncChanges::default();
        s.add((0..MAX_SYNC_PATHS).map(|i| i.to_string()));
        assert_eq!(s.room(), 0);
        assert!(!s.overflow);
        s.add(["x".to_owned()]);
        assert!(s.overflow && s.paths.is_empty());
        assert_eq!(s.room(), 0);
    }
}
