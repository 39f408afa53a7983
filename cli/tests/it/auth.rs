//! Issue 9 through the real binary: tokens are issued, listed and revoked by an admin;
//! an owner sees only datasets shared with it; missing, revoked or world-readable
//! credentials fail with one line saying how to fix them.

use std::os::unix::fs::PermissionsExt;

use shoal_testkit::temp_dir;

use crate::support::{MasterProcess, shoal, shoal_as};

#[tokio::test(flavor = "multi_thread")]
async fn tokens_grants_and_credential_errors_through_the_cli() {
    let data_dir = temp_dir("auth-master");
    let master = MasterProcess::start(data_dir.path()).await;
    let m = master.addr.clone();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir.path().join("admin.token")), 0o600);
    assert_eq!(mode(&data_dir.path().join("cluster.token")), 0o600);

    // No token: refused, with the fix.
    let out = shoal_as(&m, None, &[], &["dataset", "list"]);
    out.assert_clean_failure("SHOAL_TOKEN");
    assert!(out.stderr.contains("not authenticated"), "{out:#?}");

    // The admin (registered for this master) issues an owner token.
    let created = shoal(&m, &["-o", "json", "token", "create", "--owner", "team-a"])
        .ok()
        .json();
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("shoal_{id}_")));
    let secret = token.rsplit('_').next().unwrap().to_owned();
    let list = shoal(&m, &["token", "list"]).ok().stdout.clone();
    assert!(list.contains(&id) && list.contains("team-a"), "{list}");
    assert!(!list.contains(&secret), "token list shows a secret");

    // The owner sees nothing until a dataset is shared with it, and cannot create one.
    shoal(&m, &["dataset", "create", "shared", "memory://"]).ok();
    let l = shoal_as(&m, Some(&token), &[], &["-o", "json", "dataset", "list"])
        .ok()
        .json();
    assert_eq!(l.as_array().unwrap().len(), 0, "{l}");
    shoal_as(&m, Some(&token), &[], &["dataset", "show", "shared"])
        .assert_clean_failure("shoal dataset grant shared --owner team-a");
    shoal_as(
        &m,
        Some(&token),
        &[],
        &["dataset", "create", "mine", "memory://"],
    )
    .assert_clean_failure("permission denied");
    shoal_as(
        &m,
        Some(&token),
        &[],
        &["token", "create", "--owner", "team-a", "--admin"],
    )
    .assert_clean_failure("admin");
    shoal(&m, &["dataset", "grant", "shared", "--owner", "team-a"]).ok();
    shoal_as(&m, Some(&token), &[], &["dataset", "show", "shared"]).ok();
    shoal(&m, &["dataset", "revoke", "shared", "--owner", "team-a"]).ok();
    shoal_as(&m, Some(&token), &[], &["dataset", "show", "shared"])
        .assert_clean_failure("no read access");

    // A token file or config file others can read is refused with the chmod that fixes it.
    let home = temp_dir("auth-home");
    let tfile = home.path().join("shoal").join("token");
    std::fs::create_dir_all(tfile.parent().unwrap()).unwrap();
    std::fs::write(&tfile, &token).unwrap();
    std::fs::set_permissions(&tfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let xdg = home.path().to_str().unwrap();
    shoal_as(&m, None, &[("XDG_CONFIG_HOME", xdg)], &["dataset", "list"])
        .assert_clean_failure(&format!("chmod 600 {}", tfile.display()));
    std::fs::set_permissions(&tfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    shoal_as(&m, None, &[("XDG_CONFIG_HOME", xdg)], &["dataset", "list"]).ok();
    let cfg = home.path().join("shoal.toml");
    std::fs::write(&cfg, format!("[client]\ntoken = \"{token}\"\n")).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    shoal_as(&m, None, &[("SHOAL_CONFIG", cfg_s)], &["dataset", "list"])
        .assert_clean_failure(&format!("chmod 600 {cfg_s}"));

    // A revoked token stops working at once.
    shoal(&m, &["token", "revoke", &id]).ok();
    shoal_as(&m, Some(&token), &[], &["dataset", "list"]).assert_clean_failure("revoked");
    drop(master);
}

/// A runner without a master cannot ask one about owner tokens: it issues its own admin
/// token on first start (0600, in its data dir), accepts it, and refuses anything else.
#[tokio::test(flavor = "multi_thread")]
async fn a_standalone_runner_issues_its_own_admin_token() {
    use std::process::Command;
    use std::time::Duration;

    let dir = temp_dir("standalone-runner");
    let data = dir.path().join("runner");
    let mut cmd = Command::new(crate::support::SHOAL);
    cmd.args([
        "runner",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--no-mount",
        "--data-dir",
    ])
    .arg(&data)
    .env_remove("SHOAL_CONFIG")
    .env_remove("SHOAL_MASTER");
    let mut runner = shoal_testkit::TestProcess::spawn("shoal runner", cmd).unwrap();
    let addr = shoal_testkit::wait_for(Duration::from_secs(30), "shoal runner to listen", || {
        let log = runner.log_contents();
        let running = runner.is_running();
        async move {
            assert!(running, "shoal runner exited early:\n{log}");
            log.lines()
                .find_map(|l| l.strip_prefix("shoal runner listening on "))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        }
    })
    .await;
    let token_file = data.join("admin.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(runner.log_contents().contains("export SHOAL_TOKEN"));
    let token = std::fs::read_to_string(&token_file).unwrap();
    let env = [("SHOAL_RUNNER", addr.as_str())];
    // The master address is never used by `job list`; the runner's token is.
    shoal_as("127.0.0.1:1", Some(token.trim()), &env, &["job", "list"]).ok();
    let other = shoal_wire::auth::Token::generate();
    shoal_as("127.0.0.1:1", Some(&other.reveal()), &env, &["job", "list"])
        .assert_clean_failure("not authenticated");
    shoal_as("127.0.0.1:1", None, &env, &["job", "list"]).assert_clean_failure("SHOAL_TOKEN");
}
