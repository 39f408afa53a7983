//! [`UfsGate`]: the overall deadline and the in-flight bound of the store calls a
//! reader waits for (a worker's block fetch, a mount's direct read of the store).
//!
//! opendal's timeout and retry layers bound one attempt each; a silent store can still
//! hold a caller for attempts × timeouts plus backoff. The gate puts one deadline around
//! the whole call, retries and the wait for a slot included, and lets at most
//! `max_inflight` calls of the process talk to stores at once. A caller that does not
//! get a slot queues, its deadline still counting, so a blackholed store costs a
//! bounded number of sockets and buffers, and every reader an error after the
//! deadline, never a hang. When the deadline passes the call's future is dropped,
//! which closes its connection and frees its slot.
//!
//! [`within`] is the deadline alone, for callers without a gate (the master).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge};
use opendal::Operator;
use shoal_common::{Error, Result};
use tokio::sync::Semaphore;

/// Default overall deadline of one store call (see [`crate::UfsTuning::deadline`]).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);
/// Default bound on store calls in flight per process.
pub const DEFAULT_MAX_INFLIGHT: usize = 64;

/// The series a gate keeps up to date: calls holding a slot, and calls that ran out of
/// time (queued or in flight).
#[derive(Clone)]
pub struct GateMetrics {
    pub inflight: Gauge,
    pub timeouts: Counter,
}

impl GateMetrics {
    /// Handles that record nothing (tests, tools without metrics).
    pub fn none() -> GateMetrics {
        GateMetrics {
            inflight: Gauge::noop(),
            timeouts: Counter::noop(),
        }
    }
}

/// Deadline and in-flight bound shared by every store call of a process. Cheap to
/// clone.
#[derive(Clone)]
pub struct UfsGate {
    inner: Arc<Inner>,
}

struct Inner {
    deadline: Duration,
    max_inflight: usize,
    slots: Semaphore,
    m: GateMetrics,
}

impl UfsGate {
    /// `max_inflight` 0 is taken as 1: a gate that admits nothing would hang every read.
    pub fn new(deadline: Duration, max_inflight: usize, m: GateMetrics) -> UfsGate {
        let max_inflight = max_inflight.max(1);
        UfsGate {
            inner: Arc::new(Inner {
                deadline,
                max_inflight,
                slots: Semaphore::new(max_inflight),
                m,
            }),
        }
    }

    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    pub fn max_inflight(&self) -> usize {
        self.inner.max_inflight
    }

    /// Calls holding a slot now.
    pub fn inflight(&self) -> usize {
        self.inner.max_inflight - self.inner.slots.available_permits()
    }

    /// Runs `call` against `store` (see [`store_name`]) once a slot is free, all of it
    /// within the deadline. `what` names the operation in the error and the log line
    /// ("read ds/path bytes 0..4096"). On timeout the error is `DeadlineExceeded`
    /// (EIO in a mount) and one warning names the store and the operation.
    pub async fn run<T>(
        &self,
        store: &str,
        what: &str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let i = &self.inner;
        let admitted = AtomicBool::new(false);
        let work = async {
            // The semaphore lives as long as `i` and is never closed.
            let _slot = i
                .slots
                .acquire()
                .await
                .map_err(|_| Error::internal("the store call gate was closed"))?;
            admitted.store(true, Ordering::Relaxed);
            i.m.inflight.increment(1.0);
            let _held = Held(&i.m.inflight);
            call.await
        };
        let expired = tokio::time::sleep(i.deadline);
        // The deadline is looked at first: a caller whose time is up must not take a
        // slot that another caller's timeout just gave back.
        tokio::select! {
            biased;
            () = expired => {
                i.m.timeouts.increment(1);
                let stage = if admitted.load(Ordering::Relaxed) {
                    "in flight"
                } else {
                    "queued behind other store calls"
                };
                Err(timed_out(store, what, i.deadline, stage))
            }
            r = work => r,
        }
    }
}

/// Lowers the in-flight gauge when a call ends, finished or dropped at its deadline.
struct Held<'a>(&'a Gauge);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// `call` within `deadline`, with the same error and log line as [`UfsGate::run`], for
/// callers that bound their store calls some other way (the master's catalogue).
pub async fn within<T>(
    deadline: Duration,
    store: &str,
    what: &str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(deadline, call).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(store, what, deadline, "in flight")),
    }
}

fn timed_out(store: &str, what: &str, deadline: Duration, stage: &str) -> Error {
    // Logged here, once: the caller turns the error into an errno or a status and has
    // no better place to say which store went silent.
    tracing::warn!(%store, op = %what, ?deadline, %stage,
        "the store did not answer within the deadline; the read fails");
    Error::deadline_exceeded(format!(
        "{what}: the store {store} did not answer within {deadline:?} ({stage}); check that the store is reachable, or raise --ufs-timeout"
    ))
}

/// How logs and errors name the store behind `op`: `s3://bucket/prefix`,
/// `file:///dir` or `memory://`. Made from the operator's bucket and root only, which
/// hold no credentials.
pub fn store_name(op: &Operator) -> String {
    let info = op.info();
    let root = info.root();
    match info.scheme() {
        "s3" => format!("s3://{}{}", info.name(), root.trim_end_matches('/')),
        "fs" => format!("file://{}", root.trim_end_matches('/')),
        other => format!("{other}://{}", root.trim_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_common::ErrorKind;
    use std::time::Instant;

    #[tokio::test]
    async fn queued_calls_time_out_and_slots_come_back() {
        let gate = UfsGate::new(Duration::from_millis(300), 2, GateMetrics::none());
        let start = Instant::now();
        let silent = || gate.run("s3://b/p", "read x", std::future::pending::<Result<()>>());
        let (a, b, c, d) = tokio::join!(silent(), silent(), silent(), silent());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let mut queued = 0;
        for r in [a, b, c, d] {
            let e = r.unwrap_err();
            assert!(e.is(ErrorKind::DeadlineExceeded), "{e}");
            assert!(e.to_string().contains("s3://b/p"), "{e}");
            queued += usize::from(e.to_string().contains("queued"));
        }
        // Two held the slots; the other two never got one.
        assert_eq!(queued, 2);
        assert_eq!(gate.inflight(), 0);
        let ok = gate.run("s3://b/p", "read y", async { Ok(7) }).await;
        assert_eq!(ok.unwrap(), 7);
    }

    #[test]
    fn names_stores_without_secrets() {
        let mut o = std::collections::BTreeMap::new();
        o.insert("secret_access_key".to_string(), "s3cr3tvalue".to_string());
        o.insert("access_key_id".to_string(), "AKIDVALUE".to_string());
        let op = crate::build_operator("s3://bkt/some/prefix", &o, &Default::default()).unwrap();
        assert_eq!(store_name(&op), "s3://bkt/some/prefix");
        let op =
            crate::build_operator("memory://", &Default::default(), &Default::default()).unwrap();
        assert_eq!(store_name(&op), "memory://");
    }
}
