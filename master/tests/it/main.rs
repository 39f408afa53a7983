//! Master integration tests: an in-process master on 127.0.0.1:0 driven over gRPC.
// Tests unwrap: a panic is the failure report we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod job_credential;
mod large_sync;
mod membership;
mod namespace;
mod periodic;
mod support;
