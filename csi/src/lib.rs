//! `shoal csi`: a CSI node plugin that publishes datasets as Kubernetes volumes, so any
//! Pod (a Deployment, a notebook) can read a dataset without a privileged sidecar of
//! its own.
//!
//! [`CsiServer::start`] serves the CSI Identity service ([`identity`]) and the node side
//! of the Node service ([`node`]) on a unix socket, the one the kubelet and
//! node-driver-registrar dial. The wire types are `shoal_proto::csi::v1`, a
//! wire-compatible subset of CSI spec v1. No controller service: inline ephemeral
//! volumes and static PersistentVolumes need none.
//!
//! Each `NodePublishVolume` runs one `shoal mount` process (the same binary, started
//! detached through `shoal_fuse::daemon`) for the dataset the volume's attributes name,
//! with the credential from the volume's own Secret, never a token of the plugin.
//! What a published volume is ([`volume::VolumeRecord`]) is written under the state
//! directory before it is mounted, so that a restarted plugin still unpublishes it and
//! mounts again what its previous self had mounted ([`CsiServer::start`] starts that
//! at once; calls wait for it, and `Probe` says not-ready until it is done).
//!
//! ```no_run
//! # async fn f() -> shoal_common::Result<()> {
//! let cfg = shoal_csi::CsiConfig::new("/csi/csi.sock", "node-1", "shoal-master:7700");
//! let running = shoal_csi::CsiServer::start(cfg).await?;
//! running.shutdown().await;
//! # Ok(()) }
//! ```

pub mod identity;
pub mod node;
pub mod volume;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_common::{Error, Result};
use shoal_proto::csi::v1::identity_server::IdentityServer;
use shoal_proto::csi::v1::node_server::NodeServer;

/// The driver name CSIDriver objects and volumes use unless `--driver-name` says
/// otherwise.
pub const DEFAULT_DRIVER_NAME: &str = "csi.shoal.dev";

/// The validated configuration of a node plugin.
#[derive(Clone, Debug)]
pub struct CsiConfig {
    /// The unix socket to serve on (from `unix:///csi/csi.sock`).
    pub socket: PathBuf,
    pub driver_name: String,
    /// `NodeGetInfo`'s node id: the Kubernetes node name.
    pub node_id: String,
    /// Volume records, their token files and mount logs (made 0700).
    pub state_dir: PathBuf,
    /// The master each volume's mount reads through.
    pub master: String,
    /// The `shoal` binary that runs each volume's `shoal mount`.
    pub shoal_exe: PathBuf,
    /// The CA the mounts verify the master with (`--ca`); the plugin serves no TLS
    /// (the kubelet speaks plain gRPC on the unix socket).
    pub tls: shoal_wire::tls::TlsConfig,
    /// How long a publish waits for its mount to answer.
    pub mount_timeout: std::time::Duration,
}

impl CsiConfig {
    pub fn new(socket: impl Into<PathBuf>, node_id: &str, master: &str) -> CsiConfig {
        CsiConfig {
            socket: socket.into(),
            driver_name: DEFAULT_DRIVER_NAME.to_owned(),
            node_id: node_id.to_owned(),
            state_dir: PathBuf::from("/var/lib/shoal/csi"),
            master: master.to_owned(),
            shoal_exe: PathBuf::from("shoal"),
            tls: shoal_wire::tls::TlsConfig::default(),
            mount_timeout: std::time::Duration::from_secs(60),
        }
    }

    /// Checks what a start needs without touching anything: names, absolute paths,
    /// the master's address and the CA file.
    pub fn validate(&self) -> Result<()> {
        let CsiConfig {
            socket,
            driver_name,
            node_id,
            state_dir,
            master,
            shoal_exe: _,
            tls,
            mount_timeout: _,
        } = self;
        if !socket.is_absolute() {
            return Err(Error::invalid(format!(
                "endpoint socket {} is not absolute: write unix:///PATH (e.g. unix:///csi/csi.sock)",
                socket.display()
            )));
        }
        if !valid_driver_name(driver_name) {
            return Err(Error::invalid(format!(
                "driver name `{driver_name}` is not a DNS name of at most 63 characters (e.g. csi.shoal.dev)"
            )));
        }
        if node_id.trim().is_empty() {
            return Err(Error::invalid(
                "no node id: pass --node or set SHOAL_NODE (the Kubernetes node name, spec.nodeName)",
            ));
        }
        if !state_dir.is_absolute() {
            return Err(Error::invalid(format!(
                "state dir {} is not absolute: pass --state-dir /var/lib/shoal/csi",
                state_dir.display()
            )));
        }
        tls.validate()?;
        tls.connector()?;
        tls.endpoint(master)
            .map_err(|e| e.context("--master (HOST:PORT of the shoal master)"))?;
        Ok(())
    }
}

/// Parses a CSI endpoint: `unix:///csi/csi.sock`, `unix:/csi/csi.sock` or a plain
/// absolute path.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if endpoint.contains("://") && !endpoint.starts_with("unix://") {
        return Err(Error::invalid(format!(
            "endpoint `{endpoint}` is not a unix socket: write unix:///PATH (e.g. unix:///csi/csi.sock)"
        )));
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(Error::invalid(format!(
            "endpoint `{endpoint}` has no absolute socket path: write unix:///PATH (e.g. unix:///csi/csi.sock)"
        )));
    }
    Ok(p)
}

fn valid_driver_name(n: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    !n.is_empty()
        && n.len() <= 63
        && n.chars().all(ok_char)
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The plugin's gRPC server.
pub struct CsiServer;

/// A serving plugin; [`RunningCsi::shutdown`] stops serving and leaves every published
/// volume mounted (the mounts are processes of their own).
pub struct RunningCsi {
    socket: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    restore: tokio::task::JoinHandle<()>,
}

impl CsiServer {
    /// Binds the socket (replacing a stale one) and serves; meanwhile mounts again the
    /// volumes a previous run published whose mounts are gone.
    pub async fn start(cfg: CsiConfig) -> Result<RunningCsi> {
        cfg.validate()?;
        let node = Arc::new(node::NodeService::open(cfg.clone())?);
        let listener = bind(&cfg.socket)?;
        let restoring = node.clone();
        // Holds the node's lock until done, so no call sees a half-restored state; the
        // task ends on its own (each mount has a deadline).
        let restore = tokio::spawn(async move { restoring.restore().await });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let identity = identity::IdentityService::new(&cfg.driver_name, node.restored());
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IdentityServer::new(identity))
                .add_service(NodeServer::from_arc(node))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        Ok(RunningCsi {
            socket: cfg.socket,
            stop,
            task,
            restore,
        })
    }
}

impl RunningCsi {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Ends when the server stops on its own (an error), for a caller that also waits
    /// for a signal.
    pub async fn stopped(&mut self) -> Result<()> {
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::internal(format!("CSI server failed: {e}"))),
            Err(e) => Err(Error::internal(format!("CSI server task failed: {e}"))),
        }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.restore.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds the socket, creating its directory and removing a socket a previous run left.
fn bind(socket: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create the socket directory {}", dir.display()), e))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(socket)
            .map_err(|e| Error::io(format!("remove the old socket {}", socket.display()), e))?,
        Ok(_) => {
            return Err(Error::already_exists(format!(
                "{} exists and is not a socket: remove it or pick another --endpoint",
                socket.display()
            )));
        }
        Err(_) => {}
    }
    tokio::net::UnixListener::bind(socket)
        .map_err(|e| Error::io(format!("listen on {}", socket.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_driver_names() {
        assert_eq!(
            parse_endpoint("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            parse_endpoint("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert!(parse_endpoint("tcp://0.0.0.0:1").is_err());
        assert!(parse_endpoint("unix://csi.sock").is_err());
        assert!(valid_driver_name("csi.shoal.dev"));
        assert!(!valid_driver_name("CSI.shoal"));
        assert!(!valid_driver_name("-x"));
    }
}
