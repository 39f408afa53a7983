//! The link proxy forwards S3 traffic faithfully and holds reads to its bandwidth cap.

use std::time::{Duration, Instant};

use shoal_testkit::{LinkProfile, LinkProxy, S3Fixture, sha256_hex};

#[tokio::test(flavor = "multi_thread")]
async fn proxy_caps_bandwidth_and_keeps_bytes_intact() {
    let s3 = S3Fixture::start().await;
    let data: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    s3.operator().write("big.bin", data.clone()).await.unwrap();
    let upstream: std::net::SocketAddr =
        s3.endpoint().trim_start_matches("http://").parse().unwrap();
    let cap = 16u64 << 20; // 16 MiB/s: 8 MiB should take about 0.5 s
    let proxy = LinkProxy::start(
        upstream,
        LinkProfile {
            first_byte: Duration::from_millis(20),
            bandwidth: cap,
        },
    )
    .await
    .unwrap();
    let mut opts = s3.options();
    opts.insert("endpoint".into(), proxy.endpoint());
    let op = shoal_ufs::build_operator(&s3.uri(""), &opts, &Default::default()).unwrap();
    let t = Instant::now();
    let got = op.read("big.bin").await.unwrap().to_vec();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(sha256_hex(&got), sha256_hex(&data));
    let rate = data.len() as f64 / secs;
    assert!(
        rate <= cap as f64 * 1.15,
        "read at {rate:.0} B/s through a {cap} B/s link"
    );
    assert!(proxy.bytes_down() >= data.len() as u64);
}

/// A raw TCP upstream that answers every request line with `ok\n`, so the test
/// sees the proxy's hanging faults without a store's own retries in the way.
async fn answering_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(b"ok\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn ask(s: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping\n").await?;
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await?;
    Ok(buf.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn blackhole_holds_open_and_new_connections_until_lifted() {
    let proxy = LinkProxy::start(
        answering_upstream().await,
        LinkProfile {
            first_byte: Duration::ZERO,
            bandwidth: 0,
        },
    )
    .await
    .unwrap();
    let mut open = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ask(&mut open).await.unwrap(), b"ok\n");

    proxy.blackhole(true);
    // New connections are still accepted (a silent store, not a refusing one).
    let mut new = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    for s in [&mut open, &mut new] {
        let r = tokio::time::timeout(Duration::from_millis(500), ask(s)).await;
        assert!(r.is_err(), "an answer came through the blackhole: {r:?}");
    }

    proxy.blackhole(false);
    // The held request goes through once lifted; a fresh request on the same
    // connection is answered too.
    let mut new = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), ask(&mut new)).await;
    assert_eq!(r.unwrap().unwrap(), b"ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn response_delay_holds_every_response() {
    let proxy = LinkProxy::start(
        answering_upstream().await,
        LinkProfile {
            first_byte: Duration::ZERO,
            bandwidth: 0,
        },
    )
    .await
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ask(&mut s).await.unwrap(), b"ok\n");
    proxy.set_response_delay(Duration::from_millis(300));
    for _ in 0..2 {
        let t = Instant::now();
        assert_eq!(ask(&mut s).await.unwrap(), b"ok\n");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "a response came back after {:?}",
            t.elapsed()
        );
    }
    proxy.set_response_delay(Duration::ZERO);
    let t = Instant::now();
    assert_eq!(ask(&mut s).await.unwrap(), b"ok\n");
    assert!(t.elapsed() < Duration::from_millis(300));
}
