//! The CSI Identity service: the driver's name and version, no plugin capabilities
//! (no controller service), and a probe that says ready once the volumes of a previous
//! run are mounted again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

pub struct IdentityService {
    name: String,
    ready: Arc<AtomicBool>,
}

impl IdentityService {
    pub fn new(name: &str, ready: Arc<AtomicBool>) -> IdentityService {
        IdentityService {
            name: name.to_owned(),
            ready,
        }
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse {
            ready: Some(self.ready.load(Ordering::Acquire)),
        }))
    }
}
