//! `--retain-finished`: a background task that asks the engine, at start and then
//! periodically, to delete every job final for longer than the retention period. The
//! engine deletes them exactly as `shoal job delete` does ([`crate::engine::delete`]);
//! jobs recovered from the store after a restart are swept like any other, since
//! their end time is persisted.
//!
//! Dependencies are between tasks of one job, never between jobs, so a finished job
//! is never needed by another one.

use std::time::Duration;

use shoal_common::time::now_ms;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{Command, EngineHandle};

/// How often a period of `retain` is checked: every minute, more often for a period
/// shorter than a few minutes, so a job outlives it by at most a quarter of it.
pub fn sweep_interval(retain: Duration) -> Duration {
    (retain / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Starts the sweep; it ends when `cancel` fires.
pub fn spawn(engine: EngineHandle, retain: Duration, cancel: CancellationToken) -> JoinHandle<()> {
    let every = sweep_interval(retain);
    tokio::spawn(async move {
        loop {
            let ended_before_ms = now_ms().saturating_sub(retain.as_millis() as i64);
            match engine
                .call(|reply| Command::Sweep {
                    ended_before_ms,
                    reply,
                })
                .await
            {
                Ok(gone) if !gone.is_empty() => {
                    info!(jobs = gone.len(), retain = ?retain, "deleted jobs finished longer ago than --retain-finished");
                }
                Ok(_) => {}
                Err(e) => warn!("retention sweep: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_follows_the_period_within_bounds() {
        assert_eq!(
            sweep_interval(Duration::from_secs(7 * 86400)),
            Duration::from_secs(60)
        );
        assert_eq!(
            sweep_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            sweep_interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }
}
