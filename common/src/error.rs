//! The error every shoal library returns: a small [`ErrorKind`] a caller branches on,
//! a message that says what went wrong (and, where there is one, how to fix it), and
//! the underlying cause when there is one.
//!
//! Each kind is mapped once, here, to everything it becomes at a boundary: a gRPC
//! status code ([`ErrorKind::grpc_code`]), a number carried on the data plane and in
//! gRPC metadata so the exact kind survives a hop ([`ErrorKind::id`]), an errno for the
//! FUSE mount ([`ErrorKind::errno`]) and the CLI's exit code
//! ([`ErrorKind::exit_code`]). So a `file://` store that says "read-only file system"
//! reaches a process reading through the mount as `EROFS`, through the worker and the
//! master.

use std::fmt;
use std::sync::Arc;

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by what a caller does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller's input is wrong (bad URI, bad option, bad path).
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The request is valid but the system is not in a state to honour it.
    FailedPrecondition,
    /// A write to something read-only (a read-only dataset or store).
    ReadOnly,
    IsADirectory,
    NotADirectory,
    DirectoryNotEmpty,
    /// The version of a file this reader holds is gone from the store and not cached:
    /// reopening sees the current one.
    Stale,
    /// A dependency (store, master, worker) cannot be reached; retrying may help.
    Unavailable,
    /// A dependency did not answer within its deadline.
    DeadlineExceeded,
    /// A quota, a limit or the disk is full.
    ResourceExhausted,
    PermissionDenied,
    Unauthenticated,
    /// The request was cancelled by its caller.
    Cancelled,
    /// A bug or a broken invariant: the message is for an operator, not a user.
    Internal,
}

impl ErrorKind {
    /// Every kind, for tests and tables.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
        ErrorKind::ReadOnly,
        ErrorKind::IsADirectory,
        ErrorKind::NotADirectory,
        ErrorKind::DirectoryNotEmpty,
        ErrorKind::Stale,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
        ErrorKind::ResourceExhausted,
        ErrorKind::PermissionDenied,
        ErrorKind::Unauthenticated,
        ErrorKind::Cancelled,
        ErrorKind::Internal,
    ];

    /// The kind's stable number on the data plane and in the `shoal-error-kind` gRPC
    /// metadata. Never renumber: old peers decode these.
    pub fn id(self) -> u8 {
        match self {
            ErrorKind::InvalidArgument => 1,
            ErrorKind::NotFound => 2,
            ErrorKind::AlreadyExists => 3,
            ErrorKind::FailedPrecondition => 4,
            ErrorKind::Unavailable => 5,
            ErrorKind::PermissionDenied => 6,
            ErrorKind::Unauthenticated => 7,
            ErrorKind::Cancelled => 8,
            ErrorKind::Internal => 9,
            ErrorKind::ReadOnly => 10,
            ErrorKind::IsADirectory => 11,
            ErrorKind::NotADirectory => 12,
            ErrorKind::DirectoryNotEmpty => 13,
            ErrorKind::Stale => 14,
            ErrorKind::DeadlineExceeded => 15,
            ErrorKind::ResourceExhausted => 16,
        }
    }

    /// The kind for [`ErrorKind::id`]; an unknown number (a newer peer) is `Internal`.
    pub fn from_id(id: u8) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.id() == id)
            .unwrap_or(ErrorKind::Internal)
    }

    /// The gRPC status code.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition
            | ErrorKind::ReadOnly
            | ErrorKind::IsADirectory
            | ErrorKind::NotADirectory
            | ErrorKind::DirectoryNotEmpty => Code::FailedPrecondition,
            ErrorKind::Stale => Code::Aborted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Cancelled => Code::Cancelled,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// The kind a gRPC code means when the peer did not say the exact kind (a
    /// transport failure, or a server that is not shoal's).
    pub fn from_grpc_code(code: tonic::Code) -> ErrorKind {
        use tonic::Code;
        match code {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::Aborted => ErrorKind::Stale,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::Cancelled => ErrorKind::Cancelled,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            _ => ErrorKind::Internal,
        }
    }

    /// The errno a process reading or writing through the mount gets. A reader never
    /// gets one because a worker died (the client fails over first); what remains is
    /// the file's own state or a store that cannot be reached.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::InvalidArgument => libc::EINVAL,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::AlreadyExists => libc::EEXIST,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::IsADirectory => libc::EISDIR,
            ErrorKind::NotADirectory => libc::ENOTDIR,
            ErrorKind::DirectoryNotEmpty => libc::ENOTEMPTY,
            ErrorKind::Stale => libc::ESTALE,
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated => libc::EACCES,
            ErrorKind::FailedPrecondition
            | ErrorKind::Unavailable
            | ErrorKind::DeadlineExceeded
            | ErrorKind::ResourceExhausted
            | ErrorKind::Cancelled
            | ErrorKind::Internal => libc::EIO,
        }
    }

    /// The `shoal` command's exit status for a failure of this kind (documented in
    /// docs/configuration.md): 2 the input, 3 missing, 4 conflicts with the current
    /// state, 5 access, 6 a dependency (retrying may help), 1 anything else.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::InvalidArgument => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::AlreadyExists
            | ErrorKind::FailedPrecondition
            | ErrorKind::ReadOnly
            | ErrorKind::IsADirectory
            | ErrorKind::NotADirectory
            | ErrorKind::DirectoryNotEmpty
            | ErrorKind::Stale => 4,
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated => 5,
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded | ErrorKind::ResourceExhausted => {
                6
            }
            ErrorKind::Cancelled | ErrorKind::Internal => 1,
        }
    }

    /// Whether the error is the caller's own doing or a normal outcome (not worth a
    /// warning in a server's log).
    pub fn is_expected(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidArgument
                | ErrorKind::NotFound
                | ErrorKind::AlreadyExists
                | ErrorKind::IsADirectory
                | ErrorKind::NotADirectory
                | ErrorKind::DirectoryNotEmpty
                | ErrorKind::ReadOnly
        )
    }

    /// Whether another attempt (another worker, later) may succeed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded | ErrorKind::ResourceExhausted
        )
    }
}

/// A shoal error: kind, message, and the cause when there is one. Cheap to clone (the
/// cause is shared), so one failure can answer every reader that waited on it.
#[derive(Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// The gRPC metadata key that carries [`ErrorKind::id`], so kinds that share a status
/// code (read-only, is-a-directory, ...) stay apart across a hop.
pub const KIND_METADATA: &str = "shoal-error-kind";

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause ([`std::error::Error::source`]).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Arc::new(source));
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what we were doing, keeping the kind and the cause.
    pub fn context(mut self, ctx: impl fmt::Display) -> Error {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    pub fn invalid(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::InvalidArgument, msg.to_string())
    }
    pub fn not_found(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::NotFound, msg.to_string())
    }
    pub fn already_exists(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::AlreadyExists, msg.to_string())
    }
    pub fn failed_precondition(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::FailedPrecondition, msg.to_string())
    }
    pub fn read_only(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::ReadOnly, msg.to_string())
    }
    pub fn stale(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Stale, msg.to_string())
    }
    pub fn unavailable(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Unavailable, msg.to_string())
    }
    pub fn deadline_exceeded(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::DeadlineExceeded, msg.to_string())
    }
    pub fn resource_exhausted(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::ResourceExhausted, msg.to_string())
    }
    pub fn permission_denied(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::PermissionDenied, msg.to_string())
    }
    pub fn unauthenticated(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Unauthenticated, msg.to_string())
    }
    pub fn cancelled(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Cancelled, msg.to_string())
    }
    pub fn internal(msg: impl fmt::Display) -> Error {
        Error::new(ErrorKind::Internal, msg.to_string())
    }

    /// Wraps a disk error with what we were doing; the kind follows the OS error.
    pub fn io(context: impl fmt::Display, e: std::io::Error) -> Error {
        use std::io::ErrorKind as Io;
        let kind = match e.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::ReadOnlyFilesystem => ErrorKind::ReadOnly,
            Io::IsADirectory => ErrorKind::IsADirectory,
            Io::NotADirectory => ErrorKind::NotADirectory,
            Io::DirectoryNotEmpty => ErrorKind::DirectoryNotEmpty,
            Io::StorageFull | Io::QuotaExceeded => ErrorKind::ResourceExhausted,
            Io::TimedOut => ErrorKind::DeadlineExceeded,
            Io::InvalidInput => ErrorKind::InvalidArgument,
            _ if e.raw_os_error() == Some(libc::ESTALE) => ErrorKind::Stale,
            // Out of descriptors is transient: never taken for a broken file.
            _ if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                ErrorKind::ResourceExhausted
            }
            _ => ErrorKind::Internal,
        };
        Error::new(kind, format!("{context}: {e}")).with_source(e)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut s = tonic::Status::new(e.kind.grpc_code(), e.message);
        s.metadata_mut().insert(
            KIND_METADATA,
            tonic::metadata::MetadataValue::from(u32::from(e.kind.id())),
        );
        s
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let kind = s
            .metadata()
            .get(KIND_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u8>().ok())
            .map(ErrorKind::from_id)
            .unwrap_or_else(|| ErrorKind::from_grpc_code(s.code()));
        let message = if s.message().is_empty() && kind == ErrorKind::Unavailable {
            // tonic reports transport failures as Unavailable with a terse message.
            "service unavailable".to_owned()
        } else {
            s.message().to_owned()
        };
        // The status itself is not kept as the cause: its text repeats the message
        // with gRPC framing that a user should never see.
        Error::new(kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_a_grpc_round_trip() {
        for kind in ErrorKind::ALL {
            let e = Error::new(kind, "dataset `x`: something");
            let back = Error::from(tonic::Status::from(e));
            assert_eq!(back.kind(), kind);
            assert_eq!(back.message(), "dataset `x`: something");
        }
    }

    #[test]
    fn ids_are_unique_and_decode() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_id(kind.id()), kind);
        }
        assert_eq!(ErrorKind::from_id(200), ErrorKind::Internal);
    }

    #[test]
    fn a_status_without_the_kind_falls_back_to_its_code() {
        let back = Error::from(tonic::Status::not_found("gone"));
        assert_eq!(back.kind(), ErrorKind::NotFound);
        let back = Error::from(tonic::Status::unavailable(""));
        assert_eq!(back.kind(), ErrorKind::Unavailable);
        assert_eq!(back.message(), "service unavailable");
    }

    #[test]
    fn context_keeps_kind_and_source() {
        let io = std::io::Error::from_raw_os_error(libc::EROFS);
        let e = Error::io("write block", io).context("load segment 3");
        assert_eq!(e.kind(), ErrorKind::ReadOnly);
        assert_eq!(e.kind().errno(), libc::EROFS);
        assert!(e.message().starts_with("load segment 3: write block: "));
        assert!(std::error::Error::source(&e).is_some());
        let copy = e.clone();
        assert_eq!(copy.to_string(), e.to_string());
    }
}
