//! The job runner's integration tests: one binary, one module per concern. Instances
//! are real child processes; runners listen on 127.0.0.1:0.
// Test helpers unwrap freely: a failure there is a test failure with a backtrace.
#![allow(clippy::unwrap_used)]

mod auth;
mod cancel;
mod cluster;
mod dag;
mod hardening;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod locality;
mod prewarm;
mod prewarm_cache;
mod recovery;
mod retention;
mod retry;
mod sandbox;
mod scheduling;
mod spec_validation;
mod submit;
mod support;
