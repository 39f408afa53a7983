//! The error vocabulary shared by every shoal part, aligned with gRPC status codes so
//! an error keeps its kind when it crosses a process boundary.

use std::fmt;

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by the kind a caller branches on. The message says what happened
/// and, where there is one, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's input is wrong (bad URI, bad option, bad path).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the system is not in a state to honour it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (UFS, master, worker) cannot be reached; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// The request was stopped because its deadline passed or it was cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// A bug or a broken invariant: the message is for an operator, not a user.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidArgument(msg.to_string())
    }
    pub fn not_found(msg: impl fmt::Display) -> Self {
        Error::NotFound(msg.to_string())
    }
    pub fn internal(msg: impl fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
    pub fn unavailable(msg: impl fmt::Display) -> Self {
        Error::Unavailable(msg.to_string())
    }

    /// Wraps a disk error with what we were doing.
    pub fn io(context: impl fmt::Display, e: std::io::Error) -> Self {
        let msg = format!("{context}: {e}");
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(msg),
            std::io::ErrorKind::PermissionDenied => Error::PermissionDenied(msg),
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists(msg),
            _ => Error::Internal(msg),
        }
    }

    /// Prefixes the message with what we were doing, keeping the kind.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        let wrap = |m: String| format!("{ctx}: {m}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
            Error::NotFound(m) => Error::NotFound(wrap(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(wrap(m)),
            Error::FailedPrecondition(m) => Error::FailedPrecondition(wrap(m)),
            Error::Unavailable(m) => Error::Unavailable(wrap(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(wrap(m)),
            Error::Unauthenticated(m) => Error::Unauthenticated(wrap(m)),
            Error::Cancelled(m) => Error::Cancelled(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::AlreadyExists(m)
            | Error::FailedPrecondition(m)
            | Error::Unavailable(m)
            | Error::PermissionDenied(m)
            | Error::Unauthenticated(m)
            | Error::Cancelled(m)
            | Error::Internal(m) => m,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, e.message().to_owned())
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let m = s.message().to_owned();
        match s.code() {
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m),
            Code::NotFound => Error::NotFound(m),
            Code::AlreadyExists => Error::AlreadyExists(m),
            Code::FailedPrecondition | Code::Aborted => Error::FailedPrecondition(m),
            Code::Unavailable | Code::ResourceExhausted => {
                // tonic reports transport failures as Unavailable with a terse message.
                if m.is_empty() {
                    Error::Unavailable("service unavailable".into())
                } else {
                    Error::Unavailable(m)
                }
            }
            Code::DeadlineExceeded | Code::Cancelled => Error::Cancelled(m),
            Code::PermissionDenied => Error::PermissionDenied(m),
            Code::Unauthenticated => Error::Unauthenticated(m),
            _ => Error::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_survives_a_grpc_round_trip() {
        let e = Error::AlreadyExists("dataset `x` already exists".into());
        let back = Error::from(tonic::Status::from(e));
        assert!(matches!(back, Error::AlreadyExists(m) if m == "dataset `x` already exists"));
    }

    #[test]
    fn context_keeps_kind() {
        let e = Error::not_found("no such file").context("read block 3");
        assert!(matches!(e, Error::NotFound(m) if m == "read block 3: no such file"));
    }
}
