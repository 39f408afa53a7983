//! [`ResidentCheck`]: what the prewarm gate opens on. A load job's `done_bytes` counts
//! blocks that were loaded at some point; blocks loaded early may be gone by the time
//! the load ends (a cache smaller than the input, another owner's prewarm). So once
//! the load has reached a gate's threshold, the gate asks the workers what they hold
//! of the input now (`locality::residency`) and opens only when that is enough.
//!
//! Bounded cost: the input is listed once per load; a measurement asks every owner at
//! once, in batches; at most one measurement per input is in flight, and a new one
//! starts at most every [`MIN_INTERVAL`], and only while some task is gated on it (the
//! engine consults the gate on its scheduling passes, at least once a second).
//!
//! A gate that opened stays open for its task: its instances may already run, and a
//! resident share that drops later closes nothing. A measurement opens a gate only
//! while it is [`FRESH`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::locality::InputFile;
use crate::locality::residency::Residency;

/// Least time between the starts of two measurements of one input.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a measurement may open a gate after it ended: counted from the end, so a
/// slow one (many workers, a loaded machine) still opens gates.
pub const FRESH: Duration = Duration::from_secs(3);

/// The input's files, listed once.
pub struct Listing {
    pub dataset_id: u64,
    pub files: Vec<InputFile>,
}

#[derive(Clone, Copy)]
struct Measured {
    residency: Residency,
    /// When the measurement ended.
    at: Instant,
}

#[derive(Default)]
struct State {
    listing: Option<Arc<Listing>>,
    last: Option<Measured>,
    in_flight: bool,
    started: Option<Instant>,
    /// Tasks whose gate opened.
    opened: HashSet<String>,
    /// A shortfall after a finished load was logged.
    warned: bool,
}

/// What a gate decides on the measurements so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    Open,
    /// Resident percent of the last measurement, if any and below the threshold;
    /// `measure`: the caller must
    /// start a measurement now (and call [`ResidentCheck::record`] when it ends).
    Waiting {
        resident_percent: Option<f64>,
        measure: bool,
    },
}

/// The residency measurements of one prewarmed input.
#[derive(Default)]
pub struct ResidentCheck {
    state: Mutex<State>,
}

impl ResidentCheck {
    /// The state; a panic elsewhere while it was held leaves nothing half-done in it
    /// (every update is a few plain assignments), so a poisoned lock is taken as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Task `task`'s gate, needing `min` percent resident, once the load has reached
    /// `min` percent.
    pub fn verdict(&self, task: &str, min: f64) -> Verdict {
        let now = Instant::now();
        let mut st = self.lock();
        if st.opened.contains(task) {
            return Verdict::Open;
        }
        if let Some(m) = st.last
            && now.saturating_duration_since(m.at) < FRESH
            && m.residency.percent() >= min
        {
            st.opened.insert(task.to_owned());
            return Verdict::Open;
        }
        let measure = !st.in_flight
            && st
                .started
                .is_none_or(|t| now.saturating_duration_since(t) >= MIN_INTERVAL);
        if measure {
            st.in_flight = true;
            st.started = Some(now);
        }
        // A stale measurement at or above `min` says nothing about now: not shown.
        Verdict::Waiting {
            resident_percent: st.last.map(|m| m.residency.percent()).filter(|&p| p < min),
            measure,
        }
    }

    /// The listing, if the input was listed already.
    pub fn listing(&self) -> Option<Arc<Listing>> {
        self.lock().listing.clone()
    }

    pub fn set_listing(&self, listing: Arc<Listing>) {
        self.lock().listing = Some(listing);
    }

    /// Ends the measurement [`ResidentCheck::verdict`] asked for (`None`: it failed).
    /// Returns whether this is the first measurement of a finished load below `min`
    /// (the caller says so once, loudly).
    pub fn record(&self, residency: Option<Residency>, load_finished: bool, min: f64) -> bool {
        let mut st = self.lock();
        st.in_flight = false;
        let Some(residency) = residency else {
            return false;
        };
        st.last = Some(Measured {
            residency,
            at: Instant::now(),
        });
        let shortfall = load_finished && residency.percent() < min && !st.warned;
        st.warned |= shortfall;
        shortfall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident(percent: u64) -> Residency {
        Residency {
            total_bytes: 100,
            resident_bytes: percent,
            epoch: 1,
        }
    }

    #[test]
    fn opens_only_on_a_fresh_measurement_at_the_threshold_and_stays_open() {
        let c = ResidentCheck::default();
        // Nothing measured yet: measure, and only one measurement at a time.
        assert_eq!(
            c.verdict("t", 80.0),
            Verdict::Waiting {
                resident_percent: None,
                measure: true
            }
        );
        assert_eq!(
            c.verdict("t", 80.0),
            Verdict::Waiting {
                resident_percent: None,
                measure: false
            }
        );
        // The load said 100% but early blocks were evicted: 40% resident.
        assert!(c.record(Some(resident(40)), true, 80.0));
        assert_eq!(
            c.verdict("t", 80.0),
            Verdict::Waiting {
                resident_percent: Some(40.0),
                measure: false
            },
            "no new measurement within MIN_INTERVAL"
        );
        // A gate with a lower bar opens on the same fresh measurement.
        assert_eq!(c.verdict("low", 30.0), Verdict::Open);
        // A later measurement at 85% opens `t`, and a shortfall is reported once.
        assert!(!c.record(Some(resident(85)), true, 80.0));
        assert_eq!(c.verdict("t", 80.0), Verdict::Open);
        // Evicted again: opened gates stay open, a new task's does not.
        assert!(!c.record(Some(resident(10)), true, 80.0));
        assert_eq!(c.verdict("t", 80.0), Verdict::Open);
        assert_eq!(c.verdict("low", 30.0), Verdict::Open);
        assert!(matches!(c.verdict("new", 80.0), Verdict::Waiting { .. }));
    }

    #[test]
    fn a_stale_measurement_opens_nothing() {
        let c = ResidentCheck::default();
        let _ = c.verdict("t", 50.0);
        c.record(Some(resident(100)), false, 50.0);
        // Pretend the measurement ended long ago.
        {
            let mut st = c.lock();
            let long_ago = Instant::now() - FRESH - Duration::from_millis(1);
            if let Some(m) = st.last.as_mut() {
                m.at = long_ago;
            }
            st.started = Some(long_ago);
        }
        assert_eq!(
            c.verdict("t", 50.0),
            Verdict::Waiting {
                resident_percent: None,
                measure: true
            },
            "a stale 100% is not shown, and is measured again"
        );
        // A failed measurement leaves the last figure and allows the next one.
        assert!(!c.record(None, false, 50.0));
    }
}
