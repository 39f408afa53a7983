//! [`DataPlaneClient`]: the client side of the framed-TCP data plane
//! (`shoal_wire::frame`), with a small pool of reusable connections per worker and a
//! deadline on every request. With a TLS connector (a client `--ca`) every connection
//! is TLS, checked against the worker's address.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use shoal_common::{Error, Result};
use shoal_wire::auth::Token;
use shoal_wire::frame::{self, ReadRequest};
use shoal_wire::tls::TlsConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::TcpStream;

/// Idle connections kept per worker address. Each one holds a descriptor on the
/// worker, which serves every mount of the cluster: 32 made a worker with a low open
/// file limit refuse connections under a 16-reader fan-out (the fault suite's
/// `workers_with_a_low_open_file_limit...`), for no measurable gain in `remote_read`.
const POOL_PER_WORKER: usize = 8;

/// A plain or TLS connection to a worker.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Conn = BufReader<Box<dyn Stream>>;

pub struct DataPlaneClient {
    pool: Mutex<HashMap<String, Vec<Conn>>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Sent in the opening frame of every connection.
    token: Option<Token>,
    tls: Option<TlsConnector>,
}

impl DataPlaneClient {
    /// `token` opens every connection (workers accept the cluster token and admins').
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        token: Option<Token>,
    ) -> DataPlaneClient {
        DataPlaneClient {
            pool: Mutex::new(HashMap::new()),
            connect_timeout,
            request_timeout,
            token,
            tls: None,
        }
    }

    /// Connects over TLS with `tls` (see `shoal_wire::tls::TlsConfig::connector`).
    pub fn with_tls(mut self, tls: Option<TlsConnector>) -> DataPlaneClient {
        self.tls = tls;
        self
    }

    /// Reads `req` from the worker at `addr`. Transport failures are `Unavailable`;
    /// the worker's own errors keep their kind.
    pub async fn read(&self, addr: &str, req: &ReadRequest) -> Result<Bytes> {
        // A pooled connection may have been closed by a restarted worker: one retry on
        // a fresh connection tells that apart from a dead worker.
        if let Some(conn) = self.take(addr) {
            match self.exchange(conn, req).await {
                Ok((bytes, conn)) => {
                    self.put(addr, conn);
                    return bytes;
                }
                // A hung worker, not a restarted one: a new connection would hang too.
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(Error::unavailable(format!("data plane {addr}: {e}")));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "pooled connection failed; reconnecting")
                }
            }
        }
        let conn = self.connect(addr).await?;
        let (bytes, conn) = self
            .exchange(conn, req)
            .await
            .map_err(|e| Error::unavailable(format!("data plane {addr}: {e}")))?;
        self.put(addr, conn);
        bytes
    }

    /// Drops the idle connections to `addr` (after it failed).
    pub fn forget(&self, addr: &str) {
        self.pool.lock().remove(addr);
    }

    async fn connect(&self, addr: &str) -> Result<Conn> {
        let sock = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::unavailable(format!("connect to worker {addr} timed out")))?
            .map_err(|e| Error::unavailable(format!("connect to worker {addr}: {e}")))?;
        sock.set_nodelay(true)
            .map_err(|e| Error::unavailable(format!("configure socket to {addr}: {e}")))?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(sock),
            Some(tls) => {
                let name = shoal_wire::tls::server_name(addr)?;
                let s = tokio::time::timeout(self.connect_timeout, tls.connect(name, sock))
                    .await
                    .map_err(|_| {
                        Error::unavailable(format!("TLS handshake with worker {addr} timed out"))
                    })?
                    .map_err(|e| {
                        let hint = shoal_wire::tls::hint(
                            &e.to_string(),
                            &shoal_wire::tls::TlsConfig::default(),
                        )
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default();
                        Error::unavailable(format!("TLS handshake with worker {addr}: {e}{hint}"))
                    })?;
                Box::new(s)
            }
        };
        let mut conn = BufReader::with_capacity(64 << 10, stream);
        self.hello(&mut conn)
            .await
            .map_err(|e| e.context(format!("data plane {addr}")))?;
        Ok(conn)
    }

    /// The opening frame: the worker answers length 0 when it accepts the token.
    async fn hello(&self, conn: &mut Conn) -> Result<()> {
        let token = self.token.as_ref().ok_or_else(|| {
            Error::unauthenticated("no token to open a data-plane connection with")
        })?;
        let fut = async {
            frame::write_hello(conn.get_mut(), token).await?;
            frame::read_response_head(conn).await
        };
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(Error::unavailable(format!("opening frame: {e}"))),
            Err(_) => Err(Error::unavailable("opening frame timed out")),
        }
    }

    /// One request/response under the deadline. The outer error means the connection
    /// is unusable; the inner result is the worker's answer.
    async fn exchange(
        &self,
        mut conn: Conn,
        req: &ReadRequest,
    ) -> std::io::Result<(Result<Bytes>, Conn)> {
        let fut = async {
            frame::write_request(conn.get_mut(), req).await?;
            match frame::read_response_head(&mut conn).await? {
                Ok(n) => {
                    if n > req.length {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("worker sent {n} bytes for a {}-byte read", req.length),
                        ));
                    }
                    Ok(Ok(read_payload(&mut conn, n as usize).await?))
                }
                Err(e) => Ok(Err(e)),
            }
        };
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(r)) => Ok((r, conn)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "data-plane request timed out",
            )),
        }
    }

    fn take(&self, addr: &str) -> Option<Conn> {
        self.pool.lock().get_mut(addr).and_then(|v| v.pop())
    }

    fn put(&self, addr: &str, conn: Conn) {
        let mut pool = self.pool.lock();
        let v = pool.entry(addr.to_owned()).or_default();
        if v.len() < POOL_PER_WORKER {
            v.push(conn);
        }
    }
}

/// Reads exactly `n` payload bytes into a fresh, unzeroed buffer: zeroing a block-sized
/// buffer only for the socket to overwrite it cost about a tenth of a remote read's CPU
/// (memset and page clearing). A payload cut short is `UnexpectedEof`.
async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(n);
    while buf.len() < n {
        // `take` keeps the read inside this payload: the next response follows it.
        let want = (n - buf.len()) as u64;
        if (&mut *r).take(want).read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "worker closed the connection after {} of {n} bytes",
                    buf.len()
                ),
            ));
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_payload_is_read_whole_and_not_past_its_end() {
        // Two payloads back to back, as two pipelined responses would leave them.
        let mut r = &b"abcdefgXYZ"[..];
        assert_eq!(read_payload(&mut r, 7).await.unwrap(), &b"abcdefg"[..]);
        assert_eq!(read_payload(&mut r, 3).await.unwrap(), &b"XYZ"[..]);
        assert_eq!(read_payload(&mut r, 0).await.unwrap(), &b""[..]);
    }

    #[tokio::test]
    async fn a_payload_cut_short_is_an_error_not_fewer_bytes() {
        let mut r = &b"abc"[..];
        let e = read_payload(&mut r, 8).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }
}
