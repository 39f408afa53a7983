//! Integration tests of the `shoal` binary against real servers and a real S3 endpoint.
// Tests unwrap: a panic is the failure report we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod csi;
mod dataset;
mod demo;
mod deploy_config;
mod fast_path;
mod fault_suite;
mod fresh;
mod job_credentials;
mod job_spec;
mod master_down;
mod mount;
mod paths;
mod prewarm;
mod runner_faults;
mod runner_mount;
mod secrets;
mod shipped_commands;
mod support;
mod tls;
mod torn;
