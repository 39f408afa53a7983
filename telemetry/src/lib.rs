//! Tracing and Prometheus setup shared by every server: [`init_tracing`] (logs on
//! stderr with every registered credential scrubbed, see [`secret`]),
//! [`metrics_handle`] (the process-wide registry) and [`serve_metrics`] (the `/metrics`
//! endpoint, over HTTPS with a `shoal_wire::tls` acceptor).
//!
//! Metrics go through the `metrics` facade into one process-wide Prometheus recorder.
//! When several servers share a process (`shoal up`, in-process test clusters) they
//! share that registry; per-instance series carry a label (`worker="node-1"`) so they
//! stay apart. Every server serves the registry on its own `--metrics-listen` address.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use shoal_common::Result;

pub mod secret;

/// Installs the tracing subscriber once per process. The filter comes from `SHOAL_LOG`
/// (then `RUST_LOG`), defaulting to `info` for shoal crates and `warn` for the rest.
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let filter = std::env::var("SHOAL_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .unwrap_or_else(|_| "warn,shoal=info,shoal_master=info,shoal_worker=info,shoal_client=info,shoal_fuse=info,shoal_job_runner=info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(filter))
            // Dataset credentials are scrubbed from every line, whoever logged it.
            .with_writer(secret::RedactingStderr)
            .with_target(false)
            .try_init();
    });
}

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if someone else installed a recorder first; then our handle renders
        // an empty registry, which the metrics tests would catch.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A running `/metrics` HTTP endpoint.
pub struct MetricsServer {
    pub local_addr: SocketAddr,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Serves `GET /metrics` on `addr` (use port 0 for an ephemeral port).
pub async fn serve_metrics(addr: &str) -> Result<MetricsServer> {
    serve_metrics_with(addr, None).await
}

/// [`serve_metrics`], over HTTPS when `tls` is given (see `crate::tls`).
pub async fn serve_metrics_with(
    addr: &str,
    tls: Option<shoal_wire::tls::TlsAcceptor>,
) -> Result<MetricsServer> {
    let handle = metrics_handle();
    let (listener, local_addr) =
        shoal_wire::listen::bind("metrics", addr, "--metrics-listen").await?;
    let cancel = CancellationToken::new();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { handle.render() }),
    );
    let c = cancel.clone();
    let task = match tls {
        None => tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        }),
        Some(acceptor) => tokio::spawn(async move {
            let listener = TlsListener {
                inner: listener,
                acceptor,
            };
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        }),
    };
    Ok(MetricsServer {
        local_addr,
        cancel,
        task,
    })
}

/// The `/metrics` listener over TLS. Handshakes run in `accept`, one at a time and
/// bounded by [`shoal_wire::tls::HANDSHAKE_TIMEOUT`]: scrapes are few.
struct TlsListener {
    inner: TcpListener,
    acceptor: shoal_wire::tls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (sock, peer) = match self.inner.accept().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handshake = self.acceptor.accept(sock);
            match tokio::time::timeout(shoal_wire::tls::HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => return (stream, peer),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "metrics TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Reads one sample from Prometheus text: the value of `name` whose labels include all
/// of `labels`, summed over matching series. Used by tests and benches that assert on
/// what a server exported.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue;
        };
        let ok = labels
            .iter()
            .all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if ok {
            total += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples() {
        let t = "# TYPE x counter\nx{worker=\"a\",tier=\"mem\"} 3\nx{worker=\"b\",tier=\"mem\"} 4\nx_total 1\ny 9\n";
        assert_eq!(sample(t, "x", &[("worker", "a")]), 3.0);
        assert_eq!(sample(t, "x", &[("tier", "mem")]), 7.0);
        assert_eq!(sample(t, "y", &[]), 9.0);
        assert_eq!(sample(t, "x", &[("worker", "c")]), 0.0);
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let srv = serve_metrics("127.0.0.1:0").await.unwrap();
        metrics::counter!("shoal_test_pings_total").increment(2);
        let mut s = tokio::net::TcpStream::connect(srv.local_addr)
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.contains("shoal_test_pings_total 2"), "{body}");
        srv.shutdown().await;
    }
}
