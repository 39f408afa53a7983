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
