//! Issue 14: each job's datasets are mounted with the job's own short-lived
//! credential. Real processes (`shoal up`, the per-job `shoal mount` daemons) and real
//! FUSE mounts, as root: an instance sees and reads only its job's datasets, writes
//! only where its owner's grant is `--write`, and once the job ends its credential is
//! refused by the master and its mount is gone.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, temp_dir, wait_for, wait_until};

use crate::support::SHOAL;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(SHOAL)
        .args(args)
        .env_remove("SHOAL_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent/shoal-test")
        .env("XDG_DATA_HOME", "/nonexistent/shoal-test")
        .env_remove("SHOAL_CLUSTER_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn job_state(runner: &str, token: &str, id: &str) -> String {
    let (_, out, _) = run(
        &["-o", "json", "job", "show", id],
        &[("SHOAL_RUNNER", runner), ("SHOAL_TOKEN", token)],
    );
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn submit(runner: &str, token: &str, spec: &Path) -> String {
    let (ok, out, err) = {
        let o = Command::new(SHOAL)
            .args(["-o", "json", "job", "submit"])
            .arg(spec)
            .env_remove("SHOAL_CONFIG")
            .env("SHOAL_RUNNER", runner)
            .env("SHOAL_TOKEN", token)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(ok, "submit failed: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn wait_state(runner: &str, token: &str, id: &str, want: &[&str]) -> String {
    wait_for(Duration::from_secs(60), "the job to reach a state", || {
        let s = job_state(runner, token, id);
        let hit = want.contains(&s.as_str());
        async move { hit.then_some(s) }
    })
    .await
}

fn stdout(runner: &str, token: &str, id: &str) -> String {
    run(
        &["job", "logs", id, "--stream", "stdout"],
        &[("SHOAL_RUNNER", runner), ("SHOAL_TOKEN", token)],
    )
    .1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_sees_only_its_datasets_through_its_own_mount_and_credential() {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let dir = temp_dir("job-creds");
    for name in ["a", "w", "b"] {
        let d = dir.path().join("ufs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f.txt"), format!("content of {name}\n")).unwrap();
    }
    let state = dir.path().join("state");
    let mut cmd = Command::new(SHOAL);
    cmd.args(["up", "--workers", "1", "--mem", "64MiB", "--disk", "256MiB"])
        .args([
            "--master-listen",
            "127.0.0.1:0",
            "--runner-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&state)
        .env_remove("SHOAL_CONFIG");
    let mut up = TestProcess::spawn("shoal up", cmd).unwrap();
    let (master, runner) = crate::support::wait_for_up(&mut up).await;
    let admin = std::fs::read_to_string(state.join("master/admin.token")).unwrap();
    let admin = admin.trim().to_owned();
    let as_admin = |args: &[&str]| {
        let (ok, out, err) = run(args, &[("SHOAL_MASTER", &master), ("SHOAL_TOKEN", &admin)]);
        assert!(ok, "shoal {args:?}: {out}\n{err}");
        out
    };
    for (name, rw) in [("a", false), ("w", true), ("b", false)] {
        let uri = format!("file://{}", dir.path().join("ufs").join(name).display());
        let mut args = vec!["dataset", "create", name, uri.as_str()];
        if rw {
            args.push("--read-write");
        }
        as_admin(&args);
    }
    as_admin(&["dataset", "grant", "a", "--owner", "alice"]);
    as_admin(&["dataset", "grant", "w", "--owner", "alice", "--write"]);
    as_admin(&["dataset", "grant", "b", "--owner", "bob"]);
    let created = as_admin(&["-o", "json", "token", "create", "--owner", "alice"]);
    let v: serde_json::Value = serde_json::from_str(&created).unwrap();
    let alice = v["token"].as_str().unwrap().to_owned();

    // A job of alice's over `a` (read-only grant) that waits for the test to look at
    // its mount and credential while it runs.
    let go = dir.path().join("go");
    let spec = dir.path().join("a.yaml");
    let script = format!(
        "ls \"$(dirname \"$SHOAL_DATA_A\")\"; echo ---; cat \"$SHOAL_DATA_A/f.txt\"; \
         cat \"$(dirname \"$SHOAL_DATA_A\")/b/f.txt\" && echo LEAKED-B; \
         ls \"$(dirname \"$SHOAL_DATA_A\")/b\" && echo LISTED-B; \
         touch \"$SHOAL_DATA_A/new.txt\" 2>/dev/null && echo WROTE-A; \
         echo uid=$(id -u); \
         cat {state}/master/admin.token && echo READ-ADMIN-TOKEN; \
         cat {state}/master/cluster.token && echo READ-CLUSTER-TOKEN; \
         ls {state} && echo LISTED-STATE; \
         while [ ! -e {go} ]; do sleep 0.1; done; true",
        go = go.display(),
        state = state.display(),
    );
    std::fs::write(
        &spec,
        format!(
            "name: scoped\nowner: alice\ndatasets: [{{name: a}}]\ntasks:\n  - name: t\n    instances: 1\n    command: [\"sh\", \"-c\", {}]\n",
            serde_json::to_string(&script).unwrap()
        ),
    )
    .unwrap();
    let id = submit(&runner, &alice, &spec);
    wait_state(&runner, &alice, &id, &["RUNNING"]).await;
    let job_dir = state.join("runner/jobs").join(&id);
    let mnt = job_dir.join("mnt");
    assert!(
        shoal_fuse::mount_is_live(&mnt),
        "the job's own mount at {}",
        mnt.display()
    );
    {
        use std::os::unix::fs::MetadataExt;
        let t = std::fs::metadata(job_dir.join("token")).unwrap();
        assert_eq!(
            (t.mode() & 0o777, t.uid()),
            (0o600, 0),
            "token file 0600 root"
        );
        let d = std::fs::metadata(&job_dir).unwrap();
        assert_eq!(
            d.mode() & 0o077 & !0o011,
            0,
            "job dir not readable by others"
        );
    }
    let job_token = std::fs::read_to_string(job_dir.join("token")).unwrap();
    let job_token = job_token.trim().to_owned();
    let as_job = |args: &[&str]| {
        run(
            args,
            &[("SHOAL_MASTER", &master), ("SHOAL_TOKEN", &job_token)],
        )
    };
    let (ok, out, err) = as_job(&["-o", "json", "dataset", "list"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("\"a\"") && !out.contains("\"b\"") && !out.contains("\"w\""),
        "{out}"
    );
    let (ok, _, err) = as_job(&["token", "create", "--owner", "alice"]);
    assert!(!ok, "a job credential minted a token: {err}");
    // The job's mount itself (seen from outside any sandbox) holds only `a`.
    let mut names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a"], "the job's mount shows only its own datasets");
    std::fs::write(&go, b"").unwrap();
    let end = wait_state(&runner, &alice, &id, &["SUCCEEDED", "FAILED"]).await;
    let out = stdout(&runner, &alice, &id);
    assert_eq!(end, "SUCCEEDED", "{out}");
    let (listing, rest) = out.split_once("---").unwrap();
    // Inside the sandbox the parent of `$SHOAL_DATA_A` is a search-only skeleton, so
    // the listing may fail; whatever it shows, it is never another dataset.
    let listing: Vec<&str> = listing.split_whitespace().collect();
    assert!(listing.is_empty() || listing == ["a"], "{out}");
    assert!(rest.contains("content of a"), "{out}");
    assert!(
        !out.contains("LEAKED-B") && !out.contains("LISTED-B"),
        "{out}"
    );
    // The attack of issue 14 under the default `shoal up`: the instance is not root
    // and cannot read the master's token files (so cannot mint an admin token).
    let uid: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("uid="))
        .and_then(|u| u.trim().parse().ok())
        .unwrap_or_else(|| panic!("no uid line: {out}"));
    assert_ne!(uid, 0, "the instance ran as root: {out}");
    for leak in ["READ-ADMIN-TOKEN", "READ-CLUSTER-TOKEN", "LISTED-STATE"] {
        assert!(!out.contains(leak), "{leak}: {out}");
    }
    assert!(
        !out.contains("WROTE-A"),
        "read-only grant but the job wrote: {out}"
    );
    assert!(!dir.path().join("ufs/a/new.txt").exists());

    // After the end: the mount and its directory go, the credential is refused.
    wait_until(
        Duration::from_secs(30),
        "the job's mount to be removed",
        || {
            let gone = !job_dir.exists();
            async move { gone }
        },
    )
    .await;
    assert!(
        shoal_mounts::mountinfo::find(&mnt).is_none(),
        "mount left at {}",
        mnt.display()
    );
    let (ok, out, err) = as_job(&["dataset", "list"]);
    assert!(!ok, "an ended job's credential still works: {out}");
    assert!(
        err.contains("unknown or revoked") || err.contains("expired"),
        "{err}"
    );

    // With a write grant the job's writes reach the store.
    let spec = dir.path().join("w.yaml");
    std::fs::write(
        &spec,
        "name: writer\nowner: alice\ndatasets: [{name: w}]\ntasks:\n  - name: t\n    instances: 1\n    command: [\"sh\", \"-c\", \"echo hi > \\\"$SHOAL_DATA_W/out.txt\\\" && echo WROTE-W\"]\n",
    )
    .unwrap();
    let id = submit(&runner, &alice, &spec);
    let end = wait_state(&runner, &alice, &id, &["SUCCEEDED", "FAILED"]).await;
    let out = stdout(&runner, &alice, &id);
    assert_eq!(end, "SUCCEEDED", "{out}");
    assert!(out.contains("WROTE-W"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ufs/w/out.txt")).unwrap(),
        "hi\n"
    );

    up.terminate(Duration::from_secs(20)).await;
}
