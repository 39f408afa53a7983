//! Starting an in-process master for a test.

use std::path::Path;
use std::time::Duration;

use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::{AuthChannel, Token, with_token};

pub async fn start_master(data_dir: &Path, expiry: Duration) -> RunningMaster {
    let mut cfg = MasterConfig::new(data_dir.to_path_buf());
    cfg.listen = "127.0.0.1:0".into();
    cfg.metrics_listen = Some("127.0.0.1:0".into());
    cfg.worker_expiry = expiry;
    cfg.heartbeat_interval = expiry / 4;
    MasterServer::start(cfg).await.unwrap()
}

/// A client with a freshly issued admin token.
pub async fn client(m: &RunningMaster) -> MasterServiceClient<AuthChannel> {
    let (_, t) = m.state.access.issue("test-admin", true).await.unwrap();
    client_as(m, Some(&t)).await
}

/// A client presenting `token` (`None`: no token).
pub async fn client_as(
    m: &RunningMaster,
    token: Option<&Token>,
) -> MasterServiceClient<AuthChannel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", m.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    MasterServiceClient::new(with_token(ch, token))
}

/// Polls `check` until it holds, for at most `timeout`; panics naming `what` if not.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The master's `/metrics` text.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}
