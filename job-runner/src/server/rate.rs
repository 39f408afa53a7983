//! The per-owner submission rate limit (`--max-submits-per-minute`): a job spec is
//! parsed and checked on every submit, so one owner's flood of submissions (valid or
//! not) must not take the runner from everyone else.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};

const WINDOW: Duration = Duration::from_secs(60);

/// Submissions per owner over the last minute.
pub struct SubmitRate {
    per_minute: u32,
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SubmitRate {
    /// `per_minute` of 0 admits everything.
    pub fn new(per_minute: u32) -> SubmitRate {
        SubmitRate {
            per_minute,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a submission by `owner` at `now`, or refuses it (RESOURCE_EXHAUSTED) with
    /// the limit and how long until the next one is admitted.
    pub fn admit(&self, owner: &str, now: Instant) -> Result<()> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| Error::internal("submission rate table poisoned"))?;
        // Forget owners idle for a whole window, so the table holds active ones only.
        seen.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        let q = seen.entry(owner.to_owned()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() >= self.per_minute as usize {
            let wait = q
                .front()
                .map(|t| WINDOW.saturating_sub(now.duration_since(*t)))
                .unwrap_or(WINDOW);
            return Err(Error::resource_exhausted(format!(
                "owner `{owner}` submitted {} jobs in the last minute, this runner's limit (--max-submits-per-minute {}); submit again in {}s, or ask the operator to raise the limit",
                q.len(),
                self.per_minute,
                wait.as_secs().max(1)
            )));
        }
        q.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_owner_gets_its_own_minute() {
        let r = SubmitRate::new(2);
        let t0 = Instant::now();
        r.admit("a", t0).unwrap();
        r.admit("a", t0 + Duration::from_secs(10)).unwrap();
        let e = r.admit("a", t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(e.kind(), shoal_common::ErrorKind::ResourceExhausted);
        assert!(e.message().contains("--max-submits-per-minute 2"), "{e}");
        assert!(e.message().contains("again in 40s"), "{e}");
        r.admit("b", t0 + Duration::from_secs(20)).unwrap();
        r.admit("a", t0 + Duration::from_secs(61)).unwrap();
        SubmitRate::new(0).admit("a", t0).unwrap();
    }
}
