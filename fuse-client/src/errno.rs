//! How shoal errors become errnos. Reads never get here because a worker died (the
//! client fails over to replicas and the UFS first); what does get here is logged once
//! by the caller with the dataset and path.

use fuser::Errno;
use shoal_common::Error;

/// The errno for an error kind. Callers that know better (e.g. `rmdir` of a non-empty
/// directory) map `FailedPrecondition` themselves.
pub fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound(_) => Errno::ENOENT,
        Error::InvalidArgument(_) => Errno::EINVAL,
        Error::AlreadyExists(_) => Errno::EEXIST,
        Error::PermissionDenied(_) | Error::Unauthenticated(_) => Errno::EACCES,
        Error::FailedPrecondition(m) if m.contains("read-only") => Errno::EROFS,
        Error::FailedPrecondition(_)
        | Error::Unavailable(_)
        | Error::Cancelled(_)
        | Error::Internal(_) => Errno::EIO,
    }
}

/// Whether the error is the caller's fault or a normal outcome (not worth a warning).
pub fn is_expected(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound(_) | Error::AlreadyExists(_) | Error::InvalidArgument(_)
    )
}
