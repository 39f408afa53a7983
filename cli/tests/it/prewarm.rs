//! Issue 5 acceptance: prewarm through `shoal prewarm` against a real S3 endpoint and an
//! in-process cluster, asserting on the workers' own metrics.

use std::time::{Duration, Instant};

use shoal_testkit::{
    GeneratedDataset, LinkProfile, LinkProxy, S3Fixture, sha256_hex, wait_for, wait_until,
};

use shoal_testkit::Cluster;

const MIB: u64 = 1 << 20;
use crate::support::shoal;

async fn dataset_status(c: &Cluster, name: &str) -> serde_json::Value {
    shoal(&c.master_addr, &["-o", "json", "dataset", "show", name])
        .ok()
        .json()["status"]
        .clone()
}

/// Waits for the workers' reports to say `bytes` are cached (reports come every 200 ms).
async fn wait_cached(c: &Cluster, name: &str, bytes: u64) {
    wait_until(
        Duration::from_secs(10),
        &format!("{name} to report {bytes} cached bytes"),
        || async { dataset_status(c, name).await["cached_bytes"] == bytes },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prewarm_caches_everything_then_reads_and_reruns_cost_no_ufs_requests() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "pw").await.unwrap();
    let c = Cluster::builder().start().await;
    crate::support::register_cluster(&c);
    c.create_dataset("pw", &s3.uri("pw"), s3.options()).await;

    let out = shoal(&c.master_addr, &["-o", "json", "prewarm", "pw", "--wait"]);
    let r = out.ok().json();
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["done_files"], ds.file_count() as u64);
    assert_eq!(r["total_bytes"], ds.total_bytes());
    assert_eq!(
        r["ufs_read_bytes"],
        ds.total_bytes(),
        "each byte read from the store exactly once"
    );

    wait_cached(&c, "pw", ds.total_bytes()).await;
    assert_eq!(dataset_status(&c, "pw").await["cached_percent"], 100.0);

    let ufs_requests = c
        .worker_metric("shoal_worker_ufs_read_requests_total")
        .await;
    assert!(ufs_requests > 0.0);
    for f in ds.files() {
        let mut cmd = std::process::Command::new(crate::support::SHOAL);
        cmd.args(["cat", &format!("pw/{}", f.path())])
            .env("SHOAL_MASTER", &c.master_addr)
            .env("SHOAL_NODE", "elsewhere"); // force the network path, not short-circuit
        crate::support::auth_env(&mut cmd, &c.master_addr);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256_hex(&out.stdout), f.sha256(), "{}", f.path());
    }
    assert_eq!(
        c.worker_metric("shoal_worker_ufs_read_requests_total")
            .await,
        ufs_requests,
        "reading prewarmed files went to the store"
    );

    let t = Instant::now();
    let again = shoal(&c.master_addr, &["-o", "json", "prewarm", "pw"])
        .ok()
        .json();
    assert_eq!(again["state"], "succeeded");
    assert_eq!(
        again["ufs_read_bytes"], 0,
        "a warm prewarm read from the store: {again}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "second prewarm took {:?}",
        t.elapsed()
    );
    assert_eq!(
        c.worker_metric("shoal_worker_ufs_read_requests_total")
            .await,
        ufs_requests
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prewarm_of_a_prefix_caches_only_that_prefix() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "pp").await.unwrap();
    let c = Cluster::builder().start().await;
    crate::support::register_cluster(&c);
    c.create_dataset("pp", &s3.uri("pp"), s3.options()).await;
    let dir = ds
        .dirs()
        .into_iter()
        .next()
        .expect("the dataset has directories");
    let prefix = dir.trim_end_matches('/').to_owned();
    let under: u64 = ds
        .files()
        .iter()
        .filter(|f| f.path().starts_with(&dir))
        .map(|f| f.size())
        .sum();
    assert!(under > 0 && under < ds.total_bytes());

    let r = shoal(
        &c.master_addr,
        &[
            "-o",
            "json",
            "prewarm",
            "pp",
            "--path",
            &format!("{prefix}/"),
        ],
    )
    .ok()
    .json();
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["total_bytes"], under);
    assert_eq!(r["ufs_read_bytes"], under);
    wait_cached(&c, "pp", under).await;
    // Stays at exactly the prefix's bytes: nothing else was loaded.
    assert_eq!(dataset_status(&c, "pp").await["cached_bytes"], under);
    assert_eq!(
        c.worker_metric("shoal_worker_ufs_read_bytes_total").await as u64,
        under
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_object_fails_alone_and_the_exit_code_says_so() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "pd").await.unwrap();
    let c = Cluster::builder().start().await;
    crate::support::register_cluster(&c);
    c.create_dataset("pd", &s3.uri("pd"), s3.options()).await;
    let victim = ds.files().iter().find(|f| f.size() > 0).unwrap();
    s3.operator()
        .delete(&format!("pd/{}", victim.path()))
        .await
        .unwrap();

    let out = shoal(&c.master_addr, &["-o", "json", "prewarm", "pd", "--wait"]);
    assert_eq!(out.code, 1, "{out:#?}");
    let r = out.json();
    assert_eq!(r["state"], "failed");
    let failed = r["failed_files"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{r}");
    assert_eq!(failed[0]["path"], victim.path());
    assert!(
        failed[0]["error"].as_str().unwrap().contains("not found"),
        "{r}"
    );
    wait_cached(&c, "pd", ds.total_bytes() - victim.size()).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_store_traffic_and_the_job_says_cancelled() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::builder(11)
        .small_files(4, 1, 1024)
        .large_file(96 * MIB + 3)
        .large_file(64 * MIB)
        .build();
    ds.upload(s3.operator(), "pc").await.unwrap();
    // 8 MiB/s: the 160 MiB load would take 20 s, so it is surely mid-way when cancelled.
    let upstream = s3.endpoint().trim_start_matches("http://").parse().unwrap();
    let link = LinkProxy::start(
        upstream,
        LinkProfile {
            first_byte: Duration::from_millis(5),
            bandwidth: 8 * MIB,
        },
    )
    .await
    .unwrap();
    let mut opts = s3.options();
    opts.insert("endpoint".into(), link.endpoint());
    let c = Cluster::builder().start().await;
    crate::support::register_cluster(&c);
    c.create_dataset("pc", &s3.uri("pc"), opts).await;

    let id = shoal(&c.master_addr, &["prewarm", "pc", "--detach"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    wait_until(
        Duration::from_secs(20),
        "the load to start reading",
        || async { link.bytes_down() > 4 * MIB },
    )
    .await;
    let r = shoal(&c.master_addr, &["-o", "json", "prewarm", "cancel", &id])
        .ok()
        .json();
    assert_eq!(r["state"], "cancelled", "{r}");
    // Traffic stops within a few seconds: two samples a second apart agree.
    let stopped_at = wait_for(
        Duration::from_secs(5),
        "store traffic to stop after cancel",
        || async {
            let a = link.bytes_down();
            tokio::time::sleep(Duration::from_secs(1)).await;
            (link.bytes_down() == a).then_some(a)
        },
    )
    .await;
    assert!(
        stopped_at < ds.total_bytes() * 3 / 4,
        "the load ran to (near) completion before the cancel: {stopped_at}"
    );
    let st = shoal(&c.master_addr, &["-o", "json", "prewarm", "status", &id])
        .ok()
        .json();
    assert_eq!(st["state"], "cancelled");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_added_mid_load_leaves_no_segment_uncached() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::builder(12)
        .small_files(30, 1, 256 * 1024)
        .large_file(130 * MIB + 17)
        .build();
    ds.upload(s3.operator(), "pa").await.unwrap();
    let upstream = s3.endpoint().trim_start_matches("http://").parse().unwrap();
    let link = LinkProxy::start(
        upstream,
        LinkProfile {
            first_byte: Duration::from_millis(5),
            bandwidth: 40 * MIB,
        },
    )
    .await
    .unwrap();
    let mut opts = s3.options();
    opts.insert("endpoint".into(), link.endpoint());
    let mut c = Cluster::builder()
        .workers(1)
        .tiers(&[("mem", 64 * MIB), ("disk", 512 * MIB)])
        .start()
        .await;
    crate::support::register_cluster(&c);
    c.create_dataset("pa", &s3.uri("pa"), opts).await;

    let id = shoal(&c.master_addr, &["prewarm", "pa", "--detach"])
        .ok()
        .stdout
        .trim()
        .to_owned();
    wait_until(
        Duration::from_secs(20),
        "the load to be under way",
        || async { link.bytes_down() > 8 * MIB },
    )
    .await;
    c.add_worker().await;
    let r = wait_for(Duration::from_secs(120), "the load to finish", || async {
        let j = shoal(&c.master_addr, &["-o", "json", "prewarm", "status", &id])
            .ok()
            .json();
        (j["state"] != "running" && j["state"] != "pending").then_some(j)
    })
    .await;
    assert_eq!(r["state"], "succeeded", "{r}");

    // Every segment is on its current owner: reading everything touches the store no more.
    let before = c
        .worker_metric("shoal_worker_ufs_read_requests_total")
        .await;
    for f in ds.files() {
        let mut cmd = std::process::Command::new(crate::support::SHOAL);
        cmd.args(["cat", &format!("pa/{}", f.path())])
            .env("SHOAL_MASTER", &c.master_addr)
            .env("SHOAL_NODE", "elsewhere");
        crate::support::auth_env(&mut cmd, &c.master_addr);
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        assert_eq!(sha256_hex(&out.stdout), f.sha256());
    }
    assert_eq!(
        c.worker_metric("shoal_worker_ufs_read_requests_total")
            .await,
        before,
        "a segment was left uncached"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_without_a_terminal_detaches_and_prints_the_job_id() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::builder(13)
        .small_files(2, 1, 1024)
        .large_file(48 * MIB)
        .build();
    ds.upload(s3.operator(), "pi").await.unwrap();
    let upstream = s3.endpoint().trim_start_matches("http://").parse().unwrap();
    let link = LinkProxy::start(
        upstream,
        LinkProfile {
            first_byte: Duration::from_millis(5),
            bandwidth: 8 * MIB,
        },
    )
    .await
    .unwrap();
    let mut opts = s3.options();
    opts.insert("endpoint".into(), link.endpoint());
    let c = Cluster::builder().start().await;
    crate::support::register_cluster(&c);
    c.create_dataset("pi", &s3.uri("pi"), opts).await;

    let mut cmd = std::process::Command::new(crate::support::SHOAL);
    crate::support::auth_env(&mut cmd, &c.master_addr);
    let child = cmd
        .args(["prewarm", "pi", "--wait"])
        .env("SHOAL_MASTER", &c.master_addr)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the prewarm to be under way",
        || async { link.bytes_down() > 2 * MIB },
    )
    .await;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with("ld-"),
        "expected the job id on stdout: {out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("detached"));
    // The job goes on without the client and finishes.
    let r = wait_for(
        Duration::from_secs(60),
        "the detached job to finish",
        || async {
            let j = shoal(
                &c.master_addr,
                &["-o", "json", "prewarm", "status", &stdout],
            )
            .ok()
            .json();
            (j["state"] != "running" && j["state"] != "pending").then_some(j)
        },
    )
    .await;
    assert_eq!(r["state"], "succeeded", "{r}");
    c.shutdown().await;
}
