//! Polling a real condition until it holds or a deadline passes: the only way tests
//! wait for readiness (never a fixed sleep).

use std::future::Future;
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};

const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(200);

/// Polls `check` until it returns `Some(value)`, backing off from 5 ms to 200 ms
/// between polls. Fails with `Unavailable("timed out after … waiting for {what}")`.
pub async fn try_wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::unavailable(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 3 / 2).min(MAX_POLL);
    }
}

/// Like [`try_wait_for`], but a timeout fails the test with a panic naming `what`.
///
/// # Panics
/// When `timeout` passes before `check` yields a value.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_for(timeout, what, check).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Polls `check` until it returns `true`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::{Duration, Instant};
/// let start = Instant::now();
/// shoal_testkit::wait_until(Duration::from_secs(5), "10 ms to pass", || async {
///     start.elapsed() >= Duration::from_millis(10)
/// })
/// .await;
/// # }
/// ```
///
/// # Panics
/// When `timeout` passes first; the message names `what`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}
