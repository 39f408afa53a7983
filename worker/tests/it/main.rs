//! Integration tests of the worker: real tier directories, real UFS (file://), real
//! TCP and gRPC on 127.0.0.1:0, metrics read back from the Prometheus registry.
// Test helpers unwrap: a panic is a test failure with a backtrace.
#![allow(clippy::unwrap_used)]

mod data_plane;
mod disks;
mod hot_path;
mod master_down;
mod scrub;
mod silent_store;
mod store;
mod support;
