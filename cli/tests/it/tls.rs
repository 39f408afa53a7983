//! Issue 9 (item 3): TLS on every listener, with a CA generated here (rcgen). A real
//! master, worker and runner serve TLS; the CLI reaches the master and the runner, the
//! worker registers with the master, the master prewarms through the worker's gRPC and
//! `shoal cat` reads through the worker's TLS data plane, and `/metrics` answers over
//! HTTPS only. A client without the CA, or with another one, fails with one line that
//! says how to fix it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, temp_dir, wait_for};
use shoal_wire::tls::TlsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{SHOAL, shoal_env};

/// PEM files of a fresh CA and of a server certificate it signed for 127.0.0.1 and
/// localhost; plus an unrelated CA.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_ca: PathBuf,
}

fn ca(dir: &Path, name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("shoal test {name}"));
    let ca = rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).unwrap();
    ca
}

fn pki(dir: &Path) -> Pki {
    let issuer = ca(dir, "ca");
    ca(dir, "other-ca");
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
    Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        other_ca: dir.join("other-ca.pem"),
    }
}

/// Starts `shoal ARGS` and waits for the line starting with `ready`; returns the
/// process and the first word after `ready`.
/// Starts `shoal ARGS`; with `master`, carrying that master's registered credentials.
async fn server(
    name: &str,
    args: &[&str],
    ready: &'static str,
    master: Option<&str>,
) -> (TestProcess, String) {
    let mut cmd = Command::new(SHOAL);
    cmd.args(args).env_remove("SHOAL_CONFIG");
    if let Some(m) = master {
        crate::support::auth_env(&mut cmd, m);
    }
    let mut p = TestProcess::spawn(name, cmd).unwrap();
    let addr = wait_for(Duration::from_secs(30), &format!("{name} to serve"), || {
        let log = p.log_contents();
        let running = p.is_running();
        let name = name.to_owned();
        async move {
            assert!(running, "{name} exited early:\n{log}");
            log.lines()
                .find_map(|l| l.split_once(ready).map(|(_, rest)| rest))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        }
    })
    .await;
    (p, addr)
}

/// Lets commands against the master at `addr` use the tokens it wrote to `data_dir`.
fn register_master(addr: &str, data_dir: &Path) {
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    crate::support::register(addr, &token, &data_dir.join("cluster.token"));
}

/// The master's metrics address, from its start line `... (metrics on ADDR)`.
fn metrics_addr(log: &str) -> String {
    log.split_once("(metrics on ")
        .and_then(|(_, rest)| rest.split(')').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no metrics address in:\n{log}"))
}

/// `GET /metrics` over TLS trusting `ca`; the whole response.
async fn scrape_tls(addr: &str, ca: &Path) -> std::io::Result<String> {
    let tls = TlsConfig {
        ca: Some(ca.to_path_buf()),
        ..TlsConfig::default()
    };
    let connector = tls.connector().unwrap().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = shoal_wire::tls::server_name(addr).unwrap();
    let mut s = connector.connect(name, tcp).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    // A TLS peer may close without close_notify once the body is sent.
    let _ = s.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_round_trip_on_every_listener_and_clear_errors_without_the_ca() {
    let dir = temp_dir("tls");
    let pki = pki(dir.path());
    let (ca, cert, key) = (
        pki.ca.to_str().unwrap(),
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
    );
    let tls = ["--tls-cert", cert, "--tls-key", key, "--ca", ca];
    let data = dir.path().join("ufs");
    std::fs::create_dir_all(data.join("d")).unwrap();
    let body = b"over tls\n".repeat(1000);
    std::fs::write(data.join("d/file.txt"), &body).unwrap();

    let master_dir = dir.path().join("master");
    let mut args = vec![
        "master",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        master_dir.to_str().unwrap(),
    ];
    args.extend(tls);
    let (master, m) = server("shoal master", &args, "shoal master listening on ", None).await;
    register_master(&m, &master_dir);
    let metrics = metrics_addr(&master.log_contents());

    let tier = format!("mem:{}:64MiB", dir.path().join("tier").display());
    let mut args = vec![
        "worker",
        "--master",
        &m,
        "--node",
        "tls-w0",
        // Another host: `shoal cat` must take the TLS data plane, not the tier.
        "--host-id",
        "tls-host",
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
    ];
    args.extend(tls);
    let (_worker, _) = server("shoal worker", &args, "serving data on ", Some(&m)).await;

    // With the CA: create, list, prewarm (master -> worker gRPC), read (data plane).
    let with_ca = [("SHOAL_CA", ca), ("SHOAL_NODE", "elsewhere")];
    let uri = format!("file://{}", data.display());
    shoal_env(&m, &["dataset", "create", "ds", &uri], &with_ca).ok();
    let listed = shoal_env(&m, &["-o", "json", "worker", "list"], &with_ca);
    assert!(listed.ok().stdout.contains("tls-w0"), "{listed:?}");
    let pw = shoal_env(&m, &["-o", "json", "prewarm", "ds", "--wait"], &with_ca);
    assert_eq!(pw.ok().json()["state"], "succeeded", "{pw:?}");
    let mut cat = Command::new(SHOAL);
    cat.args(["cat", "ds/d/file.txt"]).env("SHOAL_MASTER", &m);
    crate::support::auth_env(&mut cat, &m);
    let cat = cat.envs(with_ca).output().unwrap();
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(cat.stdout, body);

    // The runner, also behind TLS, talking to the master with the CA.
    let runner_dir = dir.path().join("runner");
    let mut args = vec![
        "runner",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        runner_dir.to_str().unwrap(),
        "--master",
        &m,
        "--no-mount",
    ];
    args.extend(tls);
    let (_runner, r) = server(
        "shoal runner",
        &args,
        "shoal runner listening on ",
        Some(&m),
    )
    .await;
    let jobs = shoal_env(&m, &["-o", "json", "job", "list", "--runner", &r], &with_ca);
    jobs.ok();

    // /metrics answers over HTTPS, and not in plain text.
    let page = scrape_tls(&metrics, &pki.ca).await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("shoal_"), "{page}");
    assert!(scrape_tls(&metrics, &pki.other_ca).await.is_err());
    let mut plain = tokio::net::TcpStream::connect(&metrics).await.unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("shoal_"),
        "metrics served in plain text"
    );

    // No CA: a plain-text client against a TLS server.
    let out = shoal_env(&m, &["dataset", "list"], &[]);
    out.assert_clean_failure("--ca");
    let out = shoal_env(&m, &["job", "list", "--runner", &r], &[]);
    out.assert_clean_failure("--ca");
    // Another CA: the server's certificate is not trusted.
    let other = [("SHOAL_CA", pki.other_ca.to_str().unwrap())];
    let out = shoal_env(&m, &["dataset", "list"], &other);
    out.assert_clean_failure("not signed by the CA given with --ca");
    // A TLS client against a plain-text server says so too.
    let plain_dir = dir.path().join("plain");
    let (_plain, p) = server(
        "shoal master (plain)",
        &[
            "master",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            plain_dir.to_str().unwrap(),
        ],
        "shoal master listening on ",
        None,
    )
    .await;
    register_master(&p, &plain_dir);
    let out = shoal_env(&p, &["dataset", "list"], &[("SHOAL_CA", ca)]);
    out.assert_clean_failure("does not speak TLS");
    // A key without its certificate is refused before anything starts.
    let out = shoal_env(&p, &["master", "--tls-key", key], &[]);
    out.assert_clean_failure("go together");
}
