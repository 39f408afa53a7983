//! Integration tests of `shoal mount` with real FUSE mounts over an in-process
//! cluster (master, workers on 127.0.0.1:0, S3 via moto or a local directory). Every
//! mount is unmounted on every exit path (`cluster::MountGuard`).
// Test helpers unwrap: a panic is a test failure with a backtrace.
#![allow(clippy::unwrap_used)]

mod cluster;
mod failover;
mod lifecycle;
mod read;
mod scrub;
mod write;
