//! An executor that runs nothing: every attempt ends with exit code 0 at once. It
//! isolates the scheduler and state machine for benchmarks.

use std::path::Path;
use std::time::Duration;

use shoal_common::Result;

use super::{Adoption, AttemptExit, AttemptRef, Executor, ExitSink, Launch, Started};

#[derive(Default)]
pub struct NoopExecutor;

impl Executor for NoopExecutor {
    fn name(&self) -> &'static str {
        "noop"
    }
    fn start(&self, _launch: Launch, on_exit: ExitSink) -> Result<Started> {
        on_exit(AttemptExit::Exited(0));
        Ok(Started::default())
    }
    fn stop(&self, _attempt: &AttemptRef, _grace: Duration) {}
    fn adopt(&self, _attempt: &AttemptRef, _on_exit: ExitSink) -> Adoption {
        Adoption::Ended(AttemptExit::Exited(0))
    }
    fn remove_work_dir(&self, _work_dir: &Path) {}
    fn shutdown(&self) {}
}
