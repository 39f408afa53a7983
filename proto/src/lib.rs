//! shoal's wire contract: the control-plane services generated from `proto/shoal/v1`.
//!
//! - [`v1::master_service_client`]/[`v1::master_service_server`]: the dataset catalogue,
//!   file metadata, worker membership with its placement epoch, and prewarm (load) jobs.
//! - [`v1::worker_service_client`]/[`v1::worker_service_server`]: segment loads driven by
//!   the master, and the gRPC variant of the block read path.
//! - [`v1::runner_service_client`]/[`v1::runner_service_server`]: jobs, tasks and instances.
//! - [`csi::v1`]: the subset of the Container Storage Interface (Identity and Node
//!   services) that `shoal csi` serves to the kubelet; wire-compatible with CSI spec v1.
//!
//! Beside the generated code it holds only the names and finality of its state enums
//! ([`states`]: `LoadState::label`, `InstanceState::is_final`, …), so that every crate
//! shows and waits on them alike; no logic. Field numbers are never renumbered or
//! reused; a removed field becomes `reserved`.

/// Version 1 of the shoal API (`package shoal.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("shoal.v1");
}

/// The Container Storage Interface, as much of it as `shoal csi` serves (`package csi.v1`).
pub mod csi {
    /// CSI spec v1 (`package csi.v1`): field numbers are the spec's.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("csi.v1");
    }
}

pub mod states;

/// The encoded `FileDescriptorSet` of every `.proto` file: lets tools and tests list
/// every service and method (for example, to check that each one enforces access).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shoal_descriptor.bin"));
