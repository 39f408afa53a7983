//! [`BlockCache`]: a small in-process cache of whole blocks, with in-flight fetches
//! shared, so the kernel's concurrent readahead requests and our own block prefetch
//! ask `shoal-client` for each block once.
//!
//! Keyed by (dataset id, file version, block index): a changed file has a new version
//! and never hits an old block.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use shoal_common::Error;

pub type BlockKey = (u64, u64, u64);
pub type Fetched = Result<Bytes, Arc<Error>>;

type Inflight = Shared<BoxFuture<'static, Fetched>>;

#[derive(Clone)]
pub struct BlockCache {
    done: Option<moka::sync::Cache<BlockKey, Bytes>>,
    inflight: Arc<Mutex<HashMap<BlockKey, Inflight>>>,
}

impl BlockCache {
    /// `capacity_bytes == 0` keeps no finished blocks (fetches are still shared).
    pub fn new(capacity_bytes: u64) -> BlockCache {
        let done = (capacity_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|_k: &BlockKey, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .build()
        });
        BlockCache {
            done,
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.done.as_ref()?.get(key)
    }

    pub fn is_cached_or_inflight(&self, key: &BlockKey) -> bool {
        self.done.as_ref().is_some_and(|d| d.contains_key(key))
            || self.inflight.lock().contains_key(key)
    }

    /// The block, from the cache, from a fetch already running, or from `fetch`.
    pub fn fetch<F>(&self, key: BlockKey, fetch: F) -> impl Future<Output = Fetched> + use<F>
    where
        F: Future<Output = Result<Bytes, Error>> + Send + 'static,
    {
        let cached = self.get(&key);
        let shared = match cached {
            Some(_) => None,
            None => Some(self.shared(key, fetch)),
        };
        async move {
            match (cached, shared) {
                (Some(b), _) => Ok(b),
                (None, Some(s)) => s.await,
                (None, None) => Err(Arc::new(Error::internal("block cache lost a fetch"))),
            }
        }
    }

    fn shared<F>(&self, key: BlockKey, fetch: F) -> Inflight
    where
        F: Future<Output = Result<Bytes, Error>> + Send + 'static,
    {
        let mut inflight = self.inflight.lock();
        if let Some(s) = inflight.get(&key) {
            return s.clone();
        }
        let done = self.done.clone();
        let map = self.inflight.clone();
        let fut: BoxFuture<'static, Fetched> = async move {
            let r = fetch.await.map_err(Arc::new);
            if let (Ok(b), Some(d)) = (&r, &done) {
                d.insert(key, b.clone());
            }
            map.lock().remove(&key);
            r
        }
        .boxed();
        let s = fut.shared();
        inflight.insert(key, s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_fetches_of_one_block_run_once() {
        let c = BlockCache::new(1 << 20);
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = rx.shared();
        let mk = || {
            let (calls, rx) = (calls.clone(), rx.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let _ = rx.await;
                Ok(Bytes::from_static(b"block"))
            }
        };
        let a = c.fetch((1, 2, 3), mk());
        let b = c.fetch((1, 2, 3), mk());
        assert!(c.is_cached_or_inflight(&(1, 2, 3)));
        tx.send(()).unwrap();
        let (a, b) = tokio::join!(a, b);
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(c.get(&(1, 2, 3)).unwrap(), Bytes::from_static(b"block"));
        // A failed fetch is not cached.
        let e = c
            .fetch((9, 9, 9), async { Err(Error::unavailable("down")) })
            .await;
        assert!(e.is_err());
        assert!(!c.is_cached_or_inflight(&(9, 9, 9)));
    }
}
