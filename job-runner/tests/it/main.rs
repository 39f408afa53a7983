//! The job runner's integration tests: one binary, one module per concern.
// Test helpers unwrap freely: a failure there is a test failure with a backtrace.
#![allow(clippy::unwrap_used)]

mod spec_validation;
