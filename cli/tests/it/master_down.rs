//! Issue 15 (part 2): a real `shoal worker` started while no master listens on the
//! address it is given stays up, serves its metrics, and joins the worker set once a
//! real `shoal master` starts there.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, temp_dir, wait_for, wait_until};
use shoal_wire::auth::{Token, write_token_file};

use crate::support::{SHOAL, auth_env, register, shoal};

/// A port nothing listens on: bound by the OS, then released.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_started_before_its_master_joins_it() {
    let addr = format!("127.0.0.1:{}", free_port());
    let data = temp_dir("master-down-master");
    let wdir = temp_dir("master-down-worker");
    // The master's own token file, made before it first starts so the worker has it.
    let token_file = data.path().join("cluster.token");
    write_token_file(&token_file, &Token::generate()).unwrap();

    let tier = format!("mem:{}:64MiB", wdir.path().join("mem").display());
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "worker",
        "--master",
        &addr,
        "--node",
        "master-down-w0",
        "--listen",
        "127.0.0.1:0",
        "--data-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--tier",
        &tier,
        "--heartbeat-interval",
        "200ms",
    ])
    .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, &addr);
    cmd.env("SHOAL_CLUSTER_TOKEN_FILE", &token_file);
    let mut worker = TestProcess::spawn("shoal worker", cmd).unwrap();
    let metrics: SocketAddr = wait_for(Duration::from_secs(30), "shoal worker to serve", || {
        let running = worker.is_running();
        let log = worker.log_contents();
        async move {
            assert!(running, "shoal worker exited with no master up:\n{log}");
            log.lines()
                .find(|l| l.contains("serving data on"))
                .and_then(|l| l.rsplit("metrics ").next())
                .and_then(|a| a.trim_end_matches(')').parse().ok())
        }
    })
    .await;
    let page = shoal_testkit::scrape(metrics).await;
    assert!(page.starts_with("HTTP/1.1 200"), "metrics: {page}");
    assert!(worker.is_running(), "{}", worker.log_contents());

    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "master",
        "--listen",
        &addr,
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(data.path())
    .env_remove("SHOAL_CONFIG");
    let mut master = TestProcess::spawn("shoal master", cmd).unwrap();
    wait_until(Duration::from_secs(30), "shoal master to listen", || {
        let running = master.is_running();
        let log = master.log_contents();
        async move {
            assert!(running, "shoal master exited early:\n{log}");
            log.contains("shoal master listening on")
        }
    })
    .await;
    let admin = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    register(&addr, &admin, &token_file);
    wait_until(Duration::from_secs(30), "the worker in the set", || {
        let out = shoal(&addr, &["-o", "json", "worker", "list"]);
        async move {
            out.code == 0
                && out.json()["workers"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|w| w["id"] == "master-down-w0"))
        }
    })
    .await;
    assert!(worker.is_running(), "{}", worker.log_contents());
}
