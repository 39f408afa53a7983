//! [`LinkProxy`]: a TCP proxy that makes a loopback endpoint behave like a far-away one,
//! with a first-byte latency on every connection and one shared bandwidth cap on the
//! bytes flowing back to clients. Put it in front of the S3 fixture to measure what
//! shoal does against a "remote" store (prewarm at a fraction of the cap, cold vs warm
//! reads) and to make long operations slow enough to interrupt.
//!
//! The cap is a token bucket shared by all connections, like one network link. Uploads
//! (client to store) are not limited: the tests and benchmarks measure reads. To make
//! a store fail mid-upload, [`LinkProxy::cut_uploads_over`] drops every connection
//! that carries more than a given number of bytes towards the store from then on (the
//! large bodies of part uploads) while small requests still pass.
//!
//! Two faults of a store that hangs rather than fails: [`LinkProxy::blackhole`] keeps
//! every connection open (new ones are still accepted) but forwards nothing in either
//! direction until it is lifted, and [`LinkProxy::set_response_delay`] holds every
//! response back for a while, as an overloaded store does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The link's shape.
#[derive(Clone, Copy, Debug)]
pub struct LinkProfile {
    /// Delay before the first byte of each connection's response.
    pub first_byte: Duration,
    /// Bytes per second back to clients, over all connections. 0 = unlimited.
    pub bandwidth: u64,
}

impl LinkProfile {
    /// A far-away store, as the remote-store benchmarks model it: 20 ms to first byte,
    /// 400 Mbit/s.
    pub fn remote() -> Self {
        LinkProfile {
            first_byte: Duration::from_millis(20),
            bandwidth: 400_000_000 / 8,
        }
    }
}

struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// A running proxy; stops when dropped.
pub struct LinkProxy {
    addr: SocketAddr,
    profile: LinkProfile,
    down_bytes: Arc<AtomicU64>,
    /// Connections that send more than this many bytes upstream are dropped (`u64::MAX`:
    /// never).
    cut: Arc<AtomicU64>,
    /// Bumped by every `cut_uploads_over`, so connections count from that moment.
    cut_epoch: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    hang: Arc<Hang>,
    cancel: CancellationToken,
}

/// The hanging faults, shared by every connection of one proxy.
#[derive(Default)]
struct Hang {
    blackhole: AtomicBool,
    /// Wakes connections held by the blackhole when it is lifted.
    lifted: tokio::sync::Notify,
    /// Milliseconds each response waits before its first byte is forwarded.
    response_delay_ms: AtomicU64,
}

impl Hang {
    /// Returns once the blackhole is off (at once when it is).
    async fn pass(&self) {
        loop {
            let lifted = self.lifted.notified();
            if !self.blackhole.load(Ordering::Acquire) {
                return;
            }
            lifted.await;
        }
    }
}

impl LinkProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, profile: LinkProfile) -> Result<LinkProxy> {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), upstream, profile).await
    }

    /// Listens on `bind` and forwards to `upstream`. The sockets belong to the network
    /// namespace of the thread that creates them: run this on a runtime whose thread
    /// entered a namespace to put the proxy there.
    pub async fn start_at(
        bind: SocketAddr,
        upstream: SocketAddr,
        profile: LinkProfile,
    ) -> Result<LinkProxy> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| Error::io("bind link proxy", e))?;
        Self::serve(listener, upstream, profile)
    }

    /// Serves on a listener bound elsewhere, e.g. on a thread that entered another
    /// network namespace: the proxy then answers inside that namespace while its
    /// upstream connections are made from the namespace of the runtime's threads.
    pub fn start_on(
        listener: std::net::TcpListener,
        upstream: SocketAddr,
        profile: LinkProfile,
    ) -> Result<LinkProxy> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("make link proxy listener non-blocking", e))?;
        let listener = TcpListener::from_std(listener)
            .map_err(|e| Error::io("adopt link proxy listener", e))?;
        Self::serve(listener, upstream, profile)
    }

    fn serve(
        listener: TcpListener,
        upstream: SocketAddr,
        profile: LinkProfile,
    ) -> Result<LinkProxy> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("link proxy address", e))?;
        let bucket = Arc::new(Mutex::new(Bucket {
            rate: profile.bandwidth as f64,
            // A small burst allowance keeps short transfers from paying a full tick.
            tokens: 0.0,
            last: Instant::now(),
        }));
        let cancel = CancellationToken::new();
        let down_bytes = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(u64::MAX));
        let cut_epoch = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let hang = Arc::new(Hang::default());
        let hang2 = hang.clone();
        let (c, counter, cut2, epoch2, cuts2) = (
            cancel.clone(),
            down_bytes.clone(),
            cut.clone(),
            cut_epoch.clone(),
            cuts.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = c.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "link proxy accept failed");
                            continue;
                        }
                    },
                };
                let (bucket, c2, counter) = (bucket.clone(), c.clone(), counter.clone());
                let cut = Cut {
                    over: cut2.clone(),
                    epoch: epoch2.clone(),
                    count: cuts2.clone(),
                };
                let hang = hang2.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = c2.cancelled() => {}
                        r = relay(client, upstream, profile, bucket, counter, cut, hang) => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "link proxy connection ended");
                            }
                        }
                    }
                });
            }
        });
        Ok(LinkProxy {
            addr,
            profile,
            down_bytes,
            cut,
            cut_epoch,
            cuts,
            hang,
            cancel,
        })
    }

    /// `true`: from now on nothing passes in either direction, on open connections
    /// and new ones alike (which are still accepted), so callers see a store that
    /// accepts and never answers. `false` lets the held bytes through.
    pub fn blackhole(&self, on: bool) {
        self.hang.blackhole.store(on, Ordering::Release);
        if !on {
            self.hang.lifted.notify_waiters();
        }
    }

    /// Every response from now on waits `delay` before its first byte is forwarded
    /// (`Duration::ZERO`: no delay), on top of the profile's first-byte latency.
    pub fn set_response_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.hang.response_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// From now on, drops every connection once it has sent more than `bytes` towards
    /// the store (counted from this call, so pooled connections start afresh); `None`
    /// stops cutting.
    pub fn cut_uploads_over(&self, bytes: Option<u64>) {
        self.cut.store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.cut_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections dropped by [`Self::cut_uploads_over`] so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, to use as an S3 `endpoint` option.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn profile(&self) -> LinkProfile {
        self.profile
    }

    /// Bytes sent back to clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.down_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The upload cut of one proxy: the threshold and how many connections it dropped.
struct Cut {
    over: Arc<AtomicU64>,
    epoch: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    profile: LinkProfile,
    bucket: Arc<Mutex<Bucket>>,
    counter: Arc<AtomicU64>,
    cut: Cut,
    hang: Arc<Hang>,
) -> std::io::Result<()> {
    hang.pass().await;
    let _ = client.set_nodelay(true);
    let server = TcpStream::connect(upstream).await?;
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when a request goes up, taken by the first bytes of its response.
    let awaiting = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        // Bytes sent since the cut setting last changed.
        let (mut sent, mut epoch) = (0u64, cut.epoch.load(Ordering::Relaxed));
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                let _ = sw.shutdown().await;
                return Ok::<u64, std::io::Error>(sent);
            }
            let now = cut.epoch.load(Ordering::Relaxed);
            if now != epoch {
                (sent, epoch) = (0, now);
            }
            sent += n as u64;
            if sent > cut.over.load(Ordering::Relaxed) {
                cut.count.fetch_add(1, Ordering::Relaxed);
                // Dropping both halves (by failing the join) resets the connection.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "upload cut by the link proxy",
                ));
            }
            hang.pass().await;
            awaiting.store(true, Ordering::Relaxed);
            sw.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut first = true;
        loop {
            let n = sr.read(&mut buf).await?;
            if n == 0 {
                let _ = cw.shutdown().await;
                return Ok::<u64, std::io::Error>(0);
            }
            if first {
                first = false;
                tokio::time::sleep(profile.first_byte).await;
            }
            if awaiting.swap(false, Ordering::Relaxed) {
                let delay = hang.response_delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
            }
            hang.pass().await;
            if profile.bandwidth > 0 {
                take(&bucket, n as f64).await;
            }
            cw.write_all(&buf[..n]).await?;
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    tokio::try_join!(up, down)?;
    Ok(())
}

/// Waits until `n` bytes may pass the shared cap.
async fn take(bucket: &Mutex<Bucket>, n: f64) {
    let wait = {
        let mut b = bucket.lock().await;
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * b.rate;
        // Idle time earns at most 50 ms worth of burst.
        b.tokens = (b.tokens + refill).min(b.rate * 0.05);
        b.last = now;
        b.tokens -= n;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / b.rate)
        }
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}
