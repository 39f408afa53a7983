//! Issue 15's fault suite, data plane: real `shoal` processes (a master, three workers,
//! a mount), each in its own network namespace on a bridge the test makes, and real
//! faults around a warm 16-reader fan-out through the mount (every byte checked):
//!
//! - [`master`]: `kill -9` (then a restart) and a 30 s SIGSTOP of the master: no read
//!   fails, none stalls more than 1 s, `statfs` keeps answering;
//! - [`worker`]: `kill -9` and SIGSTOP of a worker, a partition between the mount and
//!   one worker only (packets dropped on arrival in both namespaces), the master and
//!   every worker stopped: no read fails, none stalls longer than the documented bound
//!   (docs/posix.md) plus slack;
//! - [`mount`]: `kill -9` and SIGSTOP of the mount daemon itself: reads fail cleanly
//!   (ENOTCONN) or resume, never hang;
//! - [`store`]: an S3 store behind a proxy that accepts and never answers (EIO after
//!   the configured deadline, memory flat) or answers slowly (right bytes);
//! - [`disk`]: a worker tier on a small tmpfs that fills, and workers with a low
//!   open-file limit: no read fails, accounting stays exact, no block is dropped.
//!
//! Each scenario prints one row of the suite's table to stdout and appends it to the
//! file `$SHOAL_FAULT_REPORT` names, if set:
//! `| scenario | reads attempted | reads failed | wrong bytes | longest stall | instances lost | instances started twice | false timeouts |`.
//!
//! Needs root, iproute2 and nftables (`scripts/test` installs nftables); namespaces are
//! named `shoalfs-<pid>-…` and removed in every exit path ([`netns`]).

mod cluster;
mod disk;
mod master;
mod mount;
mod netns;
mod readers;
mod store;
mod worker;

use std::io::Write;

use readers::Seen;
pub(crate) use readers::Stopped;

/// Prints `scenario`'s row of the suite's table and appends it to `$SHOAL_FAULT_REPORT`.
fn report(scenario: &str, s: &Seen) {
    append_row(&format!(
        "| {scenario} | {} | {} | {} | {:.2} s | - | - | - |",
        s.reads,
        s.failed,
        s.wrong_bytes,
        s.longest.as_secs_f64()
    ));
}

/// Prints a row of the fault table and appends it to `$SHOAL_FAULT_REPORT` if set
/// (the runner's fault tests write theirs here too).
pub(crate) fn append_row(row: &str) {
    println!("{row}");
    if let Some(path) = std::env::var_os("SHOAL_FAULT_REPORT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open SHOAL_FAULT_REPORT {path:?}: {e}"));
        // One write of the whole line: rows of tests running in parallel do not mix.
        f.write_all(format!("{row}\n").as_bytes()).unwrap();
    }
}

/// Asserts what every scenario that must not disturb readers asserts.
fn assert_clean(what: &str, s: &Seen, max_stall: std::time::Duration) {
    assert_eq!(
        s.failed, 0,
        "{what}: {} of {} reads failed",
        s.failed, s.reads
    );
    assert_eq!(s.wrong_bytes, 0, "{what}: reads returned wrong bytes");
    assert!(
        s.longest <= max_stall,
        "{what}: a read stalled {:?} (bound {max_stall:?})",
        s.longest
    );
}
