//! How shoal errors become errnos. Reads never get here because a worker died (the
//! client fails over to replicas and the UFS first); what does get here is logged once
//! by the caller with the dataset and path.

use fuser::Errno;
use shoal_common::Error;

/// The errno for an error: its kind's, mapped once in `shoal_common::ErrorKind::errno`.
pub fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.kind().errno())
}

/// Whether the error is the caller's fault or a normal outcome (not worth a warning).
pub fn is_expected(e: &Error) -> bool {
    e.kind().is_expected()
}
