//! What shoal's clients and servers share on the wire.
//!
//! - [`frame`]: the framed-TCP data plane (opening frame with the caller's token, read
//!   requests, responses with the error kind's stable number).
//! - [`FileRef`]: one file version of a dataset, as a read or a segment load names it,
//!   validated where it comes off the network.
//! - [`connect::Dial`]: lazily connected gRPC clients of the master, workers and the
//!   runner, with deadlines, the caller's token and TLS when a CA is configured.
//! - [`listen::bind`]: a server's listener, with the error that says what to change.
//! - [`auth`]: tokens in gRPC metadata, the layer every server sits behind, the
//!   verifiers (cluster token locally, owner tokens through the master's `VerifyToken`,
//!   [`auth::ask_master`]), and private token files.
//! - [`tls`]: [`tls::TlsConfig`], optional TLS on every listener and connection.
//!
//! ```no_run
//! # fn demo() -> shoal_common::Result<()> {
//! use std::time::Duration;
//! use shoal_wire::connect::Dial;
//! use shoal_wire::tls::TlsConfig;
//! let dial = Dial::new(&TlsConfig::default(), None, Duration::from_secs(5));
//! let master = dial.master("127.0.0.1:7700")?; // connects on the first call
//! # let _ = master; Ok(()) }
//! ```
//!
//! Invariant: this crate moves bytes and checks credentials; it never decides placement
//! and never touches a tier or the UFS.

pub mod auth;
pub mod connect;
mod file_ref;
pub mod frame;
pub mod listen;
pub mod tls;

pub use file_ref::FileRef;
