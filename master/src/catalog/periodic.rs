//! Periodic syncs: every dataset with a sync interval is re-listed that often, by the
//! same paged sync as `shoal dataset refresh` (so it costs no more memory), one sync
//! per dataset at a time.
//!
//! A dataset is due when its interval has passed since the later of its last completed
//! sync and the last periodic attempt, so a failed sync keeps the previous metadata and
//! is tried again one interval later, a master that restarts syncs overdue datasets at
//! once, and a freshly created dataset waits one interval. A sync that outlasts its
//! interval is followed by the next one as soon as it ends, never overlapped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_common::ids::DatasetId;
use shoal_common::time::now_ms;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{Catalog, Trigger};

/// How often the schedule is looked at: the lateness a due sync may have.
const TICK: Duration = Duration::from_millis(250);

/// Runs until `cancel`; syncs still running then are dropped (the dataset keeps its
/// previous metadata, and a restarted master marks the interrupted sync failed).
pub async fn run(catalog: Arc<Catalog>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut attempted: HashMap<DatasetId, i64> = HashMap::new();
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            _ = tick.tick() => {}
        }
        let datasets = match catalog.list().await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot read the dataset list for periodic syncs");
                continue;
            }
        };
        attempted.retain(|id, _| datasets.iter().any(|d| d.id == *id));
        let now = now_ms();
        for d in datasets {
            let Ok(interval) = i64::try_from(d.sync_interval_ms) else {
                continue;
            };
            if interval == 0 || catalog.is_syncing(d.id) {
                continue;
            }
            let last = attempted
                .get(&d.id)
                .copied()
                .unwrap_or(0)
                .max(d.refreshed_at_ms);
            if now.saturating_sub(last) < interval {
                continue;
            }
            attempted.insert(d.id, now);
            debug!(dataset = %d.name, "periodic sync due");
            let c = catalog.clone();
            let span = info_span!("periodic_sync", dataset = %d.name);
            running.spawn(
                async move {
                    // Errors are counted and logged by `sync`; the next interval retries.
                    let _ = c.sync(&d, Trigger::Periodic).await;
                }
                .instrument(span),
            );
        }
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
}
