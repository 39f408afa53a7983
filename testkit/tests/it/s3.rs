//! The S3 endpoint: credentials enforced, concurrent fixtures, stop and drop.

use std::time::Duration;

use shoal_common::ErrorKind;
use shoal_testkit::{S3Fixture, S3FixtureConfig};
use shoal_ufs::{UfsTuning, build_operator, check_reachable};

/// Whether `pid` is a live process; a zombie waiting for a reaper counts as dead.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn fixture_exposes_a_working_dataset_config() {
    let s3 = S3Fixture::start().await;
    assert!(
        s3.endpoint().starts_with("http://127.0.0.1:"),
        "{}",
        s3.endpoint()
    );
    assert_eq!(s3.uri("a/b/"), format!("s3://{}/a/b", s3.bucket()));
    assert_eq!(s3.uri(""), format!("s3://{}", s3.bucket()));
    let opts = s3.options();
    assert_eq!(
        opts.keys().map(String::as_str).collect::<Vec<_>>(),
        ["access_key_id", "endpoint", "region", "secret_access_key"]
    );
    // The options are exactly what a dataset over this bucket would use.
    let op = build_operator(&s3.uri("ds"), &opts, &UfsTuning::default()).unwrap();
    op.write("hello.txt", b"hi".to_vec()).await.unwrap();
    let via_root = s3.operator().read("ds/hello.txt").await.unwrap().to_vec();
    assert_eq!(via_root, b"hi");
    check_reachable(&op, &s3.uri("ds"), &opts).await.unwrap();
}

#[tokio::test]
async fn wrong_secret_is_rejected() {
    let s3 = S3Fixture::start().await;
    s3.operator().write("x", b"1".to_vec()).await.unwrap();

    let mut bad = s3.options();
    bad.insert("secret_access_key".into(), "not-the-secret-key".into());
    let op = build_operator(&s3.uri(""), &bad, &UfsTuning::default()).unwrap();
    let err = check_reachable(&op, &s3.uri(""), &bad).await.unwrap_err();
    assert!(err.kind() == ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    assert!(op.read("x").await.is_err());

    let mut unknown = s3.options();
    unknown.insert("access_key_id".into(), "AKIAUNKNOWNKEY000000".into());
    let op = build_operator(&s3.uri(""), &unknown, &UfsTuning::default()).unwrap();
    let err = check_reachable(&op, &s3.uri(""), &unknown)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("InvalidAccessKeyId"), "{err}");

    // Raw requests are checked as well, and the right key still works afterwards.
    let r = s3
        .signed_request(
            "GET",
            &format!("/{}", s3.bucket()),
            &[("list-type", "2")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<Key>x</Key>"), "{}", r.text());
}

#[tokio::test]
async fn two_fixtures_run_at_once() {
    let (a, b) = tokio::join!(S3Fixture::start(), S3Fixture::start());
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.access_key_id(), b.access_key_id());
    a.operator()
        .write("only-in-a", b"a".to_vec())
        .await
        .unwrap();
    b.operator()
        .write("only-in-b", b"b".to_vec())
        .await
        .unwrap();
    assert!(a.operator().exists("only-in-a").await.unwrap());
    assert!(!a.operator().exists("only-in-b").await.unwrap());
    assert!(!b.operator().exists("only-in-a").await.unwrap());
    // Each fixture's key is its own.
    let mut cross = b.options();
    cross.insert("endpoint".into(), a.endpoint().to_owned());
    let op = build_operator(&a.uri(""), &cross, &UfsTuning::default()).unwrap();
    assert!(check_reachable(&op, &a.uri(""), &cross).await.is_err());
}

#[tokio::test]
async fn stopped_fixture_is_unreachable_and_drop_reaps() {
    let mut s3 = S3Fixture::start().await;
    let pid = s3.process().pid();
    assert!(s3.is_running());
    let opts = s3.options();
    let tuning = UfsTuning {
        op_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(5),
        max_retries: 0,
        deadline: Duration::from_secs(10),
    };
    let op = build_operator(&s3.uri(""), &opts, &tuning).unwrap();
    check_reachable(&op, &s3.uri(""), &opts).await.unwrap();

    s3.stop();
    assert!(!s3.is_running());
    assert!(
        !pid_alive(pid),
        "moto_server pid {pid} still exists after stop"
    );
    let err = check_reachable(&op, &s3.uri(""), &opts).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Unavailable, "{err}");
    s3.stop(); // idempotent

    let s3 = S3Fixture::start().await;
    let pid = s3.process().pid();
    assert!(pid_alive(pid));
    drop(s3);
    assert!(
        !pid_alive(pid),
        "moto_server pid {pid} still exists after drop"
    );
}

#[tokio::test]
async fn missing_moto_server_fails_with_a_fix() {
    let err = S3Fixture::try_start(S3FixtureConfig {
        moto_server: Some("/nonexistent/moto_server".into()),
        ..S3FixtureConfig::default()
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/moto_server"), "{msg}");
    assert!(
        msg.contains("scripts/test") && msg.contains("pip install 'moto[server]'"),
        "{msg}"
    );

    let err = S3Fixture::try_start(S3FixtureConfig {
        bucket: "ab".into(),
        ..S3FixtureConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("at least 3 characters"), "{err}");
}

/// A fake `moto_server` console script whose "interpreter" is the shell script `body`.
fn fake_moto(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let python = dir.join("python3");
    std::fs::write(&python, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let moto = dir.join("moto_server");
    std::fs::write(&moto, format!("#!{}\n", python.display())).unwrap();
    std::fs::set_permissions(&moto, std::fs::Permissions::from_mode(0o755)).unwrap();
    moto
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_loudly() {
    let dir = shoal_testkit::temp_dir("fake-moto");
    let fake = fake_moto(dir.path(), "echo starting up; exec sleep 1000");
    let started = std::time::Instant::now();
    let err = S3Fixture::try_start(S3FixtureConfig {
        moto_server: Some(fake),
        startup_timeout: Duration::from_millis(500),
        ..S3FixtureConfig::default()
    })
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = err.to_string();
    assert!(
        msg.contains("timed out waiting for moto_server to report its port"),
        "{msg}"
    );
    assert!(
        msg.contains("starting up"),
        "the log tail is in the message: {msg}"
    );
}

#[tokio::test]
async fn a_server_that_dies_at_start_is_reported_with_its_log() {
    let dir = shoal_testkit::temp_dir("fake-moto");
    let fake = fake_moto(dir.path(), "echo 'No module named moto' >&2; exit 1");
    let err = S3Fixture::try_start(S3FixtureConfig {
        moto_server: Some(fake),
        ..S3FixtureConfig::default()
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("moto_server exited"), "{msg}");
    assert!(msg.contains("exit status: 1"), "{msg}");
    assert!(msg.contains("No module named moto"), "{msg}");
}
