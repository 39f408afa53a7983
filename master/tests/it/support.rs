//! Starting an in-process master for a test.

use std::path::Path;
use std::time::Duration;

use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1::master_service_client::MasterServiceClient;
use tonic::transport::Channel;

pub async fn start_master(data_dir: &Path, expiry: Duration) -> RunningMaster {
    let mut cfg = MasterConfig::new(data_dir.to_path_buf());
    cfg.listen = "127.0.0.1:0".into();
    cfg.metrics_listen = Some("127.0.0.1:0".into());
    cfg.worker_expiry = expiry;
    cfg.heartbeat_interval = expiry / 4;
    MasterServer::start(cfg).await.unwrap()
}

pub async fn client(m: &RunningMaster) -> MasterServiceClient<Channel> {
    MasterServiceClient::connect(format!("http://{}", m.grpc_addr))
        .await
        .unwrap()
}
