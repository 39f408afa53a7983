//! Integration tests of `shoal mount` with real FUSE mounts over an in-process
//! cluster (master, workers on 127.0.0.1:0, S3 via moto or a local directory). Every
//! mount is unmounted on every exit path (`cluster::MountGuard`).
// Test helpers unwrap: a panic is a test failure with a backtrace.
#![allow(clippy::unwrap_used)]

mod cluster;
mod failed_upload;
mod failover;
mod freshness;
mod lifecycle;
mod lookups;
mod pending;
mod read;
mod scrub;
mod stress;
mod write;
