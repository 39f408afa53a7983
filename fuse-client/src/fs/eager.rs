//! [`poll_once`]: starting a task's work on the thread that creates it.
//!
//! A FUSE thread that hands a data-plane fetch to the runtime must first wake a
//! runtime thread, and only then does the request go out: on a busy two-core host that
//! wake-up was a fixed part of every small file's round trip. Polled once here, the
//! request is written at once and the woken thread's work overlaps the worker's answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};

/// Polls `fut` once on this thread, inside `rt`'s context (for its timers and
/// sockets); the future if it is not done yet, to be spawned. Polling with a waker
/// that is then dropped is sound: a future must wake the waker of its latest poll, and
/// the spawned task polls it again before anything else.
pub fn poll_once<F: Future<Output = ()>>(
    rt: &tokio::runtime::Handle,
    fut: F,
) -> Option<Pin<Box<F>>> {
    let mut fut = Box::pin(fut);
    let _rt = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    fut.as_mut().poll(&mut cx).is_pending().then_some(fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_starts_on_the_calling_thread_and_a_later_wake_finishes_it() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let caller = std::thread::current().id();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let fut = async move {
            first_tx.send(std::thread::current().id()).unwrap();
            go_rx.await.unwrap();
            done_tx.send(()).unwrap();
        };
        let rest = poll_once(rt.handle(), fut).expect("waits for `go`");
        assert_eq!(
            first_rx.try_recv().ok(),
            Some(caller),
            "first polled here, before any task"
        );
        rt.spawn(rest);
        go_tx.send(()).unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), done_rx)
                .await
                .expect("the spawned task was woken")
                .unwrap()
        });
        // Done at the first poll: nothing left to spawn.
        assert!(poll_once(rt.handle(), async {}).is_none());
    }
}
