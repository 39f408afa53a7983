//! [`Breakers`]: a circuit breaker per worker on the client's read path.
//!
//! A worker that hangs (stopped, partitioned from this client but still heartbeating
//! to the master) costs every read it owns one worker deadline before the replica or
//! the store serves it. After `failures` failed or timed-out requests in a row the
//! worker is skipped outright (**open**) for `cooldown`; then one request is let
//! through as a probe (**half-open**): its success closes the breaker, its failure
//! opens it for another cool-down. Transitions are counted in
//! `shoal_client_breaker_transitions_total{client,worker,state}`.
//!
//! Breakers are keyed by worker id; a worker the client never failed against has no
//! entry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics::counter;
use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Requests flow; this many failed in a row.
    Closed(u32),
    /// Skipped until then.
    Open(Instant),
    /// One probe is in flight since then; others are skipped. A probe whose caller
    /// went away never reports: after a cool-down another probe is let through.
    HalfOpen(Instant),
}

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    /// Consecutive failures that open a worker's breaker (0 disables breakers).
    pub failures: u32,
    /// How long an open breaker skips its worker before a probe.
    pub cooldown: Duration,
}

pub struct Breakers {
    cfg: BreakerConfig,
    client: String,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(cfg: BreakerConfig, client: &str) -> Breakers {
        Breakers {
            cfg,
            client: client.to_owned(),
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a request may go to `worker` now. When the cool-down of an open breaker
    /// is over, the caller that gets `true` is the probe.
    pub fn admit(&self, worker: &str) -> bool {
        if self.cfg.failures == 0 {
            return true;
        }
        let mut states = self.states.lock();
        let Some(s) = states.get_mut(worker) else {
            return true;
        };
        let now = Instant::now();
        match *s {
            State::Closed(_) => true,
            State::Open(until) if now < until => false,
            State::HalfOpen(since) if now < since + self.cfg.cooldown => false,
            State::Open(_) | State::HalfOpen(_) => {
                *s = State::HalfOpen(now);
                drop(states);
                self.transition(worker, "half_open");
                true
            }
        }
    }

    /// `worker` answered (even with an error of its own about the request).
    pub fn success(&self, worker: &str) {
        let was = self.states.lock().remove(worker);
        if matches!(was, Some(State::Open(_) | State::HalfOpen(_))) {
            tracing::info!(worker, "worker answers again; reading from it");
            self.transition(worker, "closed");
        }
    }

    /// A request to `worker` failed or timed out.
    pub fn failure(&self, worker: &str) {
        if self.cfg.failures == 0 {
            return;
        }
        let until = Instant::now() + self.cfg.cooldown;
        let mut states = self.states.lock();
        let s = states.entry(worker.to_owned()).or_insert(State::Closed(0));
        let opened = match *s {
            State::Closed(n) if n + 1 >= self.cfg.failures => {
                *s = State::Open(until);
                true
            }
            State::Closed(n) => {
                *s = State::Closed(n + 1);
                false
            }
            State::HalfOpen(_) => {
                *s = State::Open(until);
                true
            }
            // Requests admitted before the breaker opened report late: already open.
            State::Open(_) => false,
        };
        drop(states);
        if opened {
            tracing::warn!(worker, cooldown = ?self.cfg.cooldown,
                "worker keeps failing; skipping it (replicas and the store serve its reads) until a probe succeeds");
            self.transition(worker, "open");
        }
    }

    /// Whether `worker` is skipped now (for tests and status).
    pub fn is_open(&self, worker: &str) -> bool {
        matches!(
            self.states.lock().get(worker),
            Some(State::Open(_) | State::HalfOpen(_))
        )
    }

    fn transition(&self, worker: &str, state: &'static str) {
        counter!(
            "shoal_client_breaker_transitions_total",
            &[
                ("client", self.client.clone()),
                ("worker", worker.to_owned()),
                ("state", state.to_owned()),
            ]
        )
        .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(cooldown: Duration) -> Breakers {
        Breakers::new(
            BreakerConfig {
                failures: 3,
                cooldown,
            },
            "test",
        )
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breakers(Duration::from_secs(60));
        b.failure("w");
        b.failure("w");
        b.success("w");
        b.failure("w");
        b.failure("w");
        assert!(b.admit("w"), "a success in between resets the count");
        b.failure("w");
        assert!(!b.admit("w"));
        assert!(b.admit("other"));
    }

    #[test]
    fn one_probe_after_the_cooldown_then_closed_or_open_again() {
        let b = breakers(Duration::from_millis(50));
        for _ in 0..3 {
            b.failure("w");
        }
        assert!(!b.admit("w"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit("w"), "the probe");
        assert!(!b.admit("w"), "only one probe at a time");
        b.failure("w");
        assert!(!b.admit("w"), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit("w"));
        b.success("w");
        assert!(b.admit("w") && b.admit("w"), "a good probe closes it");
        assert!(!b.is_open("w"));
    }
}
