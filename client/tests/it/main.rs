//! Integration tests of the read path: an in-process cluster (master, workers) on
//! 127.0.0.1:0 over a real S3 endpoint (moto), read through `ShoalClient`.
// Test helpers unwrap: a panic is a test failure with a backtrace.
#![allow(clippy::unwrap_used)]

mod cluster;
mod hung_worker;
mod identity;
mod master_away;
mod read;
mod same_host;
mod silent_store;
