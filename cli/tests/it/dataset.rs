//! Issue 2 acceptance: datasets over S3 and a local directory, restart persistence,
//! and clean errors for bad input.

use std::time::Duration;

use shoal_testkit::{GeneratedDataset, S3Fixture, temp_dir};

use crate::support::{MasterProcess, shoal};

fn s3_args<'a>(s3: &'a S3Fixture, opts: &'a mut Vec<String>) -> Vec<&'a str> {
    *opts = s3
        .options()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    opts.iter().flat_map(|o| ["--option", o.as_str()]).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_and_local_datasets_report_exact_counts_and_survive_restart() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "data/set1").await.unwrap();
    let local = temp_dir("local-ds");
    ds.write_to_dir(local.path()).unwrap();
    let data_dir = temp_dir("master");

    let mut master = MasterProcess::start(data_dir.path()).await;
    let m = master.addr.clone();

    let mut opts = vec![];
    let uri = s3.uri("data/set1");
    let mut args = vec!["-o", "json", "dataset", "create", "s3set", uri.as_str()];
    args.extend(s3_args(&s3, &mut opts));
    let created = shoal(&m, &args).ok().json();
    assert_eq!(created["status"]["file_count"], ds.file_count() as u64);
    assert_eq!(created["status"]["ufs_total_bytes"], ds.total_bytes());
    assert_eq!(created["status"]["phase"], "ready");
    assert_eq!(created["status"]["cached_bytes"], 0);

    let local_uri = format!("file://{}", local.path().display());
    let l = shoal(
        &m,
        &["-o", "json", "dataset", "create", "localset", &local_uri],
    )
    .ok()
    .json();
    assert_eq!(l["status"]["file_count"], ds.file_count() as u64);
    assert_eq!(l["status"]["ufs_total_bytes"], ds.total_bytes());

    // Credentials are stored but never shown.
    let shown = shoal(&m, &["-o", "json", "dataset", "show", "s3set"])
        .ok()
        .stdout
        .clone();
    assert!(
        !shown.contains(s3.secret_access_key()),
        "secret leaked: {shown}"
    );
    assert!(
        !shown.contains(s3.access_key_id()),
        "access key leaked: {shown}"
    );
    let table = shoal(&m, &["dataset", "show", "s3set"]).ok().stdout.clone();
    assert!(table.contains("secret_access_key=<hidden>"), "{table}");
    assert!(!table.contains(s3.secret_access_key()));

    // Restart: a new process on the same data dir keeps every dataset and its metadata.
    master.proc.terminate(Duration::from_secs(10)).await;
    let master2 = MasterProcess::start(data_dir.path()).await;
    let m2 = master2.addr.clone();
    let list = shoal(&m2, &["-o", "json", "dataset", "list"]).ok().json();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["localset", "s3set"]);
    for d in list.as_array().unwrap() {
        assert_eq!(d["status"]["file_count"], ds.file_count() as u64);
        assert_eq!(d["status"]["ufs_total_bytes"], ds.total_bytes());
    }
    // File metadata survived too: every file's size is served by the restarted master.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{m2}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let admin = shoal_wire::auth::read_token_file(&data_dir.path().join("admin.token")).unwrap();
    let mut client = shoal_proto::v1::master_service_client::MasterServiceClient::new(
        shoal_wire::auth::with_token(ch, Some(&admin)),
    );
    for f in ds.files() {
        let e = client
            .lookup_file(shoal_proto::v1::LookupFileRequest {
                dataset: "s3set".into(),
                path: f.path().into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((e.size, e.is_dir), (f.size(), false), "{}", f.path());
        assert!(!e.etag.is_empty(), "S3 objects carry an etag");
    }
    // Directory listings match the generated tree, root included.
    let mut dirs: Vec<String> = ds.dirs().into_iter().collect();
    dirs.push(String::new());
    for dir in dirs {
        let want = ds.list_dir(&dir);
        let got = client
            .list_directory(shoal_proto::v1::ListDirectoryRequest {
                dataset: "localset".into(),
                path: dir.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut got_paths: Vec<String> = got.entries.iter().map(|e| e.path.clone()).collect();
        got_paths.sort();
        let mut want_paths: Vec<String> = want
            .files
            .iter()
            .cloned()
            .chain(want.dirs.iter().map(|d| d.trim_end_matches('/').to_owned()))
            .collect();
        want_paths.sort();
        assert_eq!(got_paths, want_paths, "listing of `{dir}`");
    }
    // The master never logged the secret.
    assert!(!master.proc.log_contents().contains(s3.secret_access_key()));
    assert!(!master2.proc.log_contents().contains(s3.secret_access_key()));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_one_line_errors_and_leaves_nothing_behind() {
    let mut s3 = S3Fixture::start().await;
    GeneratedDataset::small()
        .upload(s3.operator(), "p")
        .await
        .unwrap();
    let data_dir = temp_dir("master-bad");
    let master = MasterProcess::start(data_dir.path()).await;
    let m = master.addr.clone();

    // Each failure exits with its kind's status: 2 input, 3 not found, 4 conflict with
    // the current state, 5 access, 6 a dependency that cannot be reached.
    shoal(&m, &["dataset", "create", "x", "foo://x"])
        .exit(2)
        .assert_clean_failure("unsupported URI scheme `foo://`");

    // Wrong credentials: a real signature check by the store.
    let mut opts = s3.options();
    opts.insert("secret_access_key".into(), "not-the-right-secret".into());
    let flat: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let uri = s3.uri("p");
    let mut args = vec!["dataset", "create", "wrongcreds", uri.as_str()];
    args.extend(flat.iter().flat_map(|o| ["--option", o.as_str()]));
    let out = shoal(&m, &args);
    out.exit(5)
        .assert_clean_failure("access denied by the store");
    assert!(
        !out.stderr.contains("not-the-right-secret"),
        "secret echoed: {out:#?}"
    );

    // A good dataset, then a duplicate name.
    let mut o2 = vec![];
    let mut args = vec!["dataset", "create", "good", uri.as_str()];
    args.extend(s3_args(&s3, &mut o2));
    shoal(&m, &args).ok();
    shoal(&m, &args)
        .exit(4)
        .assert_clean_failure("already exists");

    shoal(&m, &["dataset", "delete", "nosuch"])
        .exit(3)
        .assert_clean_failure("dataset `nosuch` not found");
    shoal(&m, &["dataset", "create", "bad name", "memory://"])
        .exit(2)
        .assert_clean_failure("invalid dataset name");
    shoal(
        &m,
        &[
            "dataset",
            "create",
            "opt",
            "memory://",
            "--option",
            "noequals",
        ],
    )
    .assert_clean_failure("key=value");

    // Unreachable endpoint: the store is gone.
    s3.stop();
    let mut o3 = vec![];
    let mut args = vec!["dataset", "create", "unreachable", uri.as_str()];
    args.extend(s3_args(&s3, &mut o3));
    shoal(&m, &args)
        .exit(6)
        .assert_clean_failure("cannot reach the store");

    // No partial dataset was left by any failure: only `good` exists.
    let list = shoal(&m, &["-o", "json", "dataset", "list"]).ok().json();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["good"]);

    // No master either: a clear hint.
    shoal("127.0.0.1:1", &["dataset", "list"])
        .exit(6)
        .assert_clean_failure("cannot reach the master");
}

#[test]
fn help_lists_every_planned_command_and_unbuilt_ones_say_so() {
    let out = shoal("127.0.0.1:1", &["--help"]);
    out.ok();
    for c in [
        "master", "worker", "runner", "mount", "up", "dataset", "prewarm", "job", "cat", "cp",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(c)),
            "`{c}` missing from --help:\n{}",
            out.stdout
        );
    }
    let t = shoal("127.0.0.1:1", &["token"]);
    assert_eq!(t.code, 2, "{t:#?}");
    assert!(t.stderr.contains("create"), "{t:#?}");
}
