//! The simulated far-away link in front of the embedded S3 endpoint: a delay before
//! every response (the store's time to first byte) and one bandwidth cap shared by all
//! object bodies in flight, like one network link, with a count of the bytes that
//! crossed it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The link's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    /// Delay before each response, whatever the request.
    pub first_byte: Duration,
    /// Bytes per second of object data, over all reads together. 0 = unlimited.
    pub bandwidth: u64,
}

#[cfg(test)]
impl LinkProfile {
    /// No delay and no cap: a plain local endpoint.
    pub const LOCAL: LinkProfile = LinkProfile {
        first_byte: Duration::ZERO,
        bandwidth: 0,
    };
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A running link: its profile, its token bucket and its byte count.
pub struct Link {
    profile: LinkProfile,
    bucket: Mutex<Bucket>,
    bytes: AtomicU64,
    responses: AtomicU64,
}

impl Link {
    pub fn new(profile: LinkProfile) -> Link {
        Link {
            profile,
            // Start empty: a burst at start would make short cold runs look faster
            // than the link allows.
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
            bytes: AtomicU64::new(0),
            responses: AtomicU64::new(0),
        }
    }

    /// Waits out the time to first byte of one response (and counts the response).
    pub async fn first_byte(&self) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        if !self.profile.first_byte.is_zero() {
            tokio::time::sleep(self.profile.first_byte).await;
        }
    }

    /// Waits until `n` more bytes may pass the shared cap.
    pub async fn take(&self, n: u64) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `n` bytes' worth of tokens at `now` and says how long the caller must wait
    /// for the bucket to have paid for them.
    fn reserve(&self, n: u64, now: Instant) -> Duration {
        let rate = self.profile.bandwidth as f64;
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        // The state is two numbers; a panic elsewhere cannot leave them inconsistent.
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate;
        // Idle time earns at most 50 ms worth of burst.
        b.tokens = (b.tokens + refill).min(rate * 0.05);
        b.last = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }

    /// Records `n` bytes delivered to a client.
    pub fn delivered(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Object bytes sent to clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Responses that crossed the link so far (every request the backend answered).
    pub fn responses(&self) -> u64 {
        self.responses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_shared_and_paid_for_in_time() {
        let link = Link::new(LinkProfile {
            first_byte: Duration::ZERO,
            bandwidth: 1_000_000,
        });
        let t0 = Instant::now();
        link.bucket.lock().unwrap().last = t0;
        // Two readers taking 100 kB each at once: the second waits for both.
        assert_eq!(link.reserve(100_000, t0), Duration::from_millis(100));
        assert_eq!(link.reserve(100_000, t0), Duration::from_millis(200));
        // A second later the debt is paid and only 50 ms of burst was earned.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(link.reserve(50_000, t1), Duration::ZERO);
        assert!(link.reserve(1_000, t1) > Duration::ZERO);
    }

    #[test]
    fn unlimited_never_waits() {
        let link = Link::new(LinkProfile::LOCAL);
        assert_eq!(link.reserve(u64::MAX, Instant::now()), Duration::ZERO);
    }
}
