//! Integration tests of the test fixtures themselves, against a real moto endpoint:
//! if these pass, every other crate's S3 tests stand on something faithful.

// Test helpers may unwrap: a panic is a test failure with a backtrace.
#![allow(clippy::unwrap_used)]

mod dataset;
mod link;
mod process;
mod s3;
