//! The framed-TCP data-plane server ([`shoal_wire::frame`] protocol): one task per
//! connection, requests served one after another. On a plain TCP connection a range
//! held whole by a verified top-tier data file goes to the socket with `sendfile(2)`
//! (`BlockStore::sendable_range`): no pread, no checksum, no userspace copy; anything
//! else is read (and checked) by the store and its slices written from memory. With a
//! TLS acceptor (`--tls-cert`/`--tls-key`) every connection is TLS and always takes
//! the memory path (the bytes must be encrypted); the handshake runs in the
//! connection's task, bounded by [`HANDSHAKE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use shoal_common::{Error, Result};
use shoal_wire::auth::Verifier;
use shoal_wire::tls::{HANDSHAKE_TIMEOUT, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::store::{BlockStore, TierSlice};
use shoal_wire::frame::{self, MAX_READ_LEN};

/// How long a new connection may take to send its opening frame.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `cancel` fires, then drops every connection. Each one must
/// open with a token `verifier` accepts for a cluster member or an admin, or a job
/// credential (whose every request is then checked against its scope).
pub async fn serve(
    listener: TcpListener,
    store: BlockStore,
    verifier: Arc<dyn Verifier>,
    cancel: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let store = store.clone();
                    let c = cancel.clone();
                    let v = verifier.clone();
                    let tls = tls.clone();
                    conns.spawn(async move {
                        tokio::select! {
                            _ = c.cancelled() => {}
                            r = serve_connection(sock, &store, v.as_ref(), tls.as_ref()) => {
                                if let Err(e) = r {
                                    tracing::debug!(%peer, error = %e, "data-plane connection closed");
                                }
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "data-plane accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn serve_connection(
    sock: TcpStream,
    store: &BlockStore,
    verifier: &dyn Verifier,
    tls: Option<&TlsAcceptor>,
) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    match tls {
        None => {
            let (rd, wr) = sock.into_split();
            serve_stream(rd, wr, store, verifier).await
        }
        Some(acceptor) => {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            let (rd, wr) = tokio::io::split(stream);
            serve_stream(rd, wr, store, verifier).await
        }
    }
}

/// The write side of a connection: plain TCP may also send tier bytes with
/// `sendfile(2)`; TLS must encrypt them, so it writes from memory.
trait Sink: AsyncWrite + Unpin {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl Sink for OwnedWriteHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<S: AsyncRead + AsyncWrite> Sink for tokio::io::WriteHalf<S> {}

async fn serve_stream<R, W>(
    rd: R,
    mut wr: W,
    store: &BlockStore,
    verifier: &dyn Verifier,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: Sink,
{
    let mut rd = BufReader::new(rd);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, frame::read_hello(&mut rd))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no opening frame"))??;
    let admitted = match hello {
        Ok(token) => verifier.verify(token).await.and_then(|who| {
            crate::auth::require_connect(&who)?;
            Ok(who)
        }),
        Err(e) => Err(e),
    };
    let who = match admitted {
        Ok(who) => {
            frame::write_ok_header(&mut wr, 0).await?;
            who
        }
        Err(e) => {
            frame::write_error(&mut wr, &e).await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("connection refused: {e}"),
            ));
        }
    };
    wr.flush().await?;
    let mut readahead = Readahead::default();
    let mut prev_end = None;
    while let Some(req) = frame::read_request(&mut rd).await? {
        let req = req.and_then(|r| admit(r, &who));
        if let Ok(r) = &req
            && wr.tcp().is_some()
            && let Some(slices) = store.sendable_range(&r.file, r.offset, r.length)
        {
            let total: u64 = slices.iter().map(TierSlice::len).sum();
            if let Some(tcp) = wr.tcp() {
                send_head(tcp, total).await?;
                for s in &slices {
                    send_slice(tcp, s).await?;
                }
            }
            // A cold next block is fetched ahead; a resident one will be sent from
            // its file, so reading it into memory now would be wasted.
            let end = r.offset + total;
            if prev_end == Some(r.offset) {
                readahead.start(store, &r.file, r.offset, end, true);
            }
            prev_end = Some(end);
            store.metrics().served_bytes_tcp.increment(total);
            store.metrics().sent_file_bytes.increment(total);
            continue;
        }
        let next = req
            .as_ref()
            .ok()
            .map(|r| (r.file.clone(), r.offset, r.length));
        match serve_one(req, store).await {
            Ok(slices) => {
                let total: u64 = slices.iter().map(|b| b.len() as u64).sum();
                // Sequential reader: verify the next block while this one is on the wire.
                if let Some((file, offset, _)) = &next {
                    let end = offset + total;
                    if prev_end == Some(*offset) {
                        readahead.start(store, file, *offset, end, false);
                    }
                    prev_end = Some(end);
                }
                frame::write_ok_header(&mut wr, total).await?;
                for s in &slices {
                    wr.write_all(s).await?;
                }
                wr.flush().await?;
                store.metrics().served_bytes_tcp.increment(total);
            }
            Err(e) => frame::write_error(&mut wr, &e).await?,
        }
    }
    Ok(())
}

/// At most one block read ahead per connection, into the store's buffer of verified
/// blocks; aborted when the connection ends.
#[derive(Default)]
struct Readahead(Option<tokio::task::JoinHandle<()>>);

impl Readahead {
    /// After serving `offset..end` of `file`, reads the following block if it belongs to
    /// the same segment (another segment may have another owner); with `cold_only`,
    /// only when no tier holds it.
    fn start(
        &mut self,
        store: &BlockStore,
        file: &shoal_wire::FileRef,
        offset: u64,
        end: u64,
        cold_only: bool,
    ) {
        if !store.has_verified_buffer() || self.0.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let layout = store.layout();
        let next = end.div_ceil(layout.block_size());
        let last = end.saturating_sub(1).max(offset) / layout.block_size();
        if next >= layout.block_count(file.size)
            || layout.segment_of_block(next) != layout.segment_of_block(last)
        {
            return;
        }
        if cold_only && store.is_resident(&file.block(next)) {
            return;
        }
        let (store, file) = (store.clone(), file.clone());
        self.0 = Some(tokio::spawn(async move {
            if let Err(e) = store.read_block(&file, next).await {
                tracing::debug!(block = next, error = %e, "readahead failed");
            }
        }));
    }
}

impl Drop for Readahead {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Checks a request against the caller's rights and the size limit.
fn admit(req: frame::ReadRequest, who: &shoal_wire::auth::Identity) -> Result<frame::ReadRequest> {
    crate::auth::require_reader(who, &req.file, "data-plane read")?;
    if req.length > MAX_READ_LEN {
        return Err(Error::invalid(format!(
            "read of {} bytes is larger than the data-plane limit of {MAX_READ_LEN}; split it",
            req.length
        )));
    }
    Ok(req)
}

async fn serve_one(
    req: std::result::Result<frame::ReadRequest, Error>,
    store: &BlockStore,
) -> Result<Vec<bytes::Bytes>> {
    let req = req?;
    store.read_range(&req.file, req.offset, req.length).await
}

/// Sends the response head of a `total`-byte payload that `send_slice` sends next,
/// held back (`MSG_MORE`) so that head and payload leave together: sent alone, the
/// 9-byte head woke the client, which found no payload yet and slept again until it
/// came. An empty payload's head is sent at once (nothing would follow to release it).
async fn send_head(tcp: &TcpStream, total: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut head = Vec::with_capacity(9);
    frame::write_ok_header(&mut head, total).await?;
    let flags = libc::MSG_NOSIGNAL | if total > 0 { libc::MSG_MORE } else { 0 };
    let mut sent = 0;
    while sent < head.len() {
        tcp.writable().await?;
        let rest = &head[sent..];
        match tcp.try_io(Interest::WRITABLE, || {
            // SAFETY: `send` reads `rest.len()` bytes from `rest`, which outlives the
            // call, on the descriptor `tcp` keeps open.
            let rc =
                unsafe { libc::send(tcp.as_raw_fd(), rest.as_ptr().cast(), rest.len(), flags) };
            usize::try_from(rc).map_err(|_| std::io::Error::last_os_error())
        }) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends one pinned tier slice to the socket. The response header is already out, so
/// a failure here (or a data file that ends early) must end the connection: the
/// client then sees a short payload, never other bytes.
async fn send_slice(tcp: &TcpStream, s: &TierSlice) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let (mut off, end) = (s.offset(), s.offset() + s.len());
    while off < end {
        tcp.writable().await?;
        let left = usize::try_from(end - off).unwrap_or(usize::MAX);
        match tcp.try_io(Interest::WRITABLE, || {
            s.file().send_to(tcp.as_fd(), &mut off, left)
        }) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "tier data file ended before the block",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
