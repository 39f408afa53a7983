//! Deleting finished jobs: `DeleteJob` (`shoal job delete`) and `--retain-finished`
//! remove a job's rows, its logs and its working dirs, never follow a link an
//! instance planted, refuse running jobs and other owners, and never hand a deleted
//! job's id to a new one; the master forgets finished load jobs the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;
use shoal_testkit::Cluster;
use shoal_wire::auth::{Identity, Token};
use tonic::Code;

use crate::support::{Client, Harness, connect_as, count, get, state, wait_final};

/// Rows about job `seq` in each of the runner's tables: (jobs, instances, transitions).
fn rows(data_dir: &Path, seq: i64) -> (i64, i64, i64) {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("runner.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let n = |sql: &str| -> i64 { db.query_row(sql, [seq], |r| r.get(0)).unwrap() };
    (
        n("SELECT COUNT(*) FROM jobs WHERE seq = ?1"),
        n("SELECT COUNT(*) FROM instances WHERE job_seq = ?1"),
        n("SELECT COUNT(*) FROM transitions WHERE job_seq = ?1"),
    )
}

fn seq_of(id: &str) -> i64 {
    id.trim_start_matches("job-").parse().unwrap()
}

async fn get_code(c: &mut Client, id: &str) -> Code {
    match c
        .get_job(pb::GetJobRequest {
            id: id.to_owned(),
            include_instances: false,
        })
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

async fn listed(c: &mut Client, id: &str) -> bool {
    c.list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
        .iter()
        .any(|j| j.id == id)
}

async fn delete(c: &mut Client, id: &str, force: bool) -> Result<pb::Job, tonic::Status> {
    c.delete_job(pb::DeleteJobRequest {
        id: id.to_owned(),
        force,
    })
    .await
    .map(|r| r.into_inner())
}

fn data_dir(h: &Harness) -> PathBuf {
    h.dir.path().join("runner")
}

/// A job of `team-a` whose one instance plants links to `victim` (a dir and a file
/// the runner can write) in its working dir and fails, its working dir kept.
fn linking_job(victim: &Path) -> String {
    format!(
        r#"
name: plants-links
owner: team-a
tasks:
  - name: t
    instances: 2
    command: [sh, -c, 'ln -s {v} dir-link; ln -s {v}/precious file-link; mkdir -p sub; ln -s {v} sub/deeper; echo to-the-log; exit 3']
debug:
  keep_failed: true
"#,
        v = victim.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_rows_logs_and_work_dirs_but_nothing_a_link_points_at() {
    let a = Token::generate();
    let b = Token::generate();
    let (ta, tb) = (a.clone(), b.clone());
    let mut h = Harness::start("delete", move |c| {
        c.retain_finished = None;
        c.local_tokens.push((
            ta,
            Identity::Owner {
                name: "team-a".into(),
                admin: false,
            },
        ));
        c.local_tokens.push((
            tb,
            Identity::Owner {
                name: "team-b".into(),
                admin: false,
            },
        ));
    })
    .await;
    let addr = h.runner.as_ref().unwrap().grpc_addr.to_string();
    let mut ca = connect_as(&addr, Some(&a)).await;
    let mut cb = connect_as(&addr, Some(&b)).await;
    let victim = h.out().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), "keep me").unwrap();

    let job = crate::support::submit(&mut ca, &linking_job(&victim)).await;
    let j = wait_final(&mut ca, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(j.state), S::Failed);
    let dir = data_dir(&h);
    let work = dir.join("work").join(&job.id);
    let logs = dir.join("logs").join(&job.id);
    for i in 0..2 {
        assert!(work.join(format!("t/{i}/dir-link")).is_symlink());
        assert!(logs.join(format!("t/{i}/attempt-1.stdout")).is_file());
    }
    let seq = seq_of(&job.id);
    let (jobs, insts, trans) = rows(&dir, seq);
    assert!(jobs == 1 && insts == 2 && trans > 0);

    // Another owner may not delete it, and learns nothing about it.
    let e = delete(&mut cb, &job.id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert_eq!(get_code(&mut ca, &job.id).await, Code::Ok);

    let gone = delete(&mut ca, &job.id, false).await.unwrap();
    assert_eq!(gone.id, job.id);
    assert_eq!(state(gone.state), S::Failed);
    assert_eq!(get_code(&mut ca, &job.id).await, Code::NotFound);
    assert!(!listed(&mut h.client, &job.id).await);
    assert_eq!(rows(&dir, seq), (0, 0, 0));
    assert!(
        !work.exists() && !work.is_symlink(),
        "{} left",
        work.display()
    );
    assert!(!logs.exists(), "{} left", logs.display());
    // The links were removed, not followed.
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "keep me"
    );
    // Deleting it again: not found.
    let e = delete(&mut ca, &job.id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());

    // Its id is never given to another job, even after a restart (it was the last).
    h.runner.take().unwrap().shutdown().await;
    let cfg = {
        let mut c = crate::support::config(h.dir.path());
        c.retain_finished = None;
        c
    };
    h.runner = Some(shoal_job_runner::RunnerServer::start(cfg).await.unwrap());
    h.client = crate::support::connect(&h.runner.as_ref().unwrap().grpc_addr.to_string()).await;
    let next = h
        .submit("name: after\ntasks:\n  - name: t\n    command: [\"true\"]\n")
        .await;
    assert!(
        seq_of(&next.id) > seq,
        "{} reuses the deleted {}",
        next.id,
        job.id
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_a_running_job_and_force_cancels_it_first() {
    let mut h = Harness::start("delete-running", |c| {
        c.retain_finished = None;
        c.kill_grace = Duration::from_millis(500);
    })
    .await;
    let job = h
        .submit("name: long\ntasks:\n  - name: t\n    command: [sleep, \"1000\"]\n")
        .await;
    let mut c = h.client.clone();
    shoal_testkit::wait_until(Duration::from_secs(20), "the instance to run", || {
        let mut c = c.clone();
        let id = job.id.clone();
        async move { count(&get(&mut c, &id).await, S::Running) == 1 }
    })
    .await;
    let e = delete(&mut c, &job.id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(
        e.message().contains("shoal job cancel"),
        "the refusal says how to proceed: {}",
        e.message()
    );
    assert_eq!(count(&get(&mut c, &job.id).await, S::Running), 1);
    let work = data_dir(&h).join("work").join(&job.id);
    assert!(work.exists());

    let gone = delete(&mut c, &job.id, true).await.unwrap();
    assert_eq!(state(gone.state), S::Cancelled);
    assert_eq!(get_code(&mut c, &job.id).await, Code::NotFound);
    assert_eq!(rows(&data_dir(&h), seq_of(&job.id)), (0, 0, 0));
    assert!(!work.exists());
    assert!(!data_dir(&h).join("logs").join(&job.id).exists());
    h.stop().await;
}

const QUICK: &str = "name: quick\ntasks:\n  - name: t\n    command: [sh, -c, 'echo done']\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_finished_jobs_even_from_before_a_restart_and_keeps_the_rest() {
    let deleted = || {
        shoal_testkit::registry_metric(
            "shoal_runner_jobs_deleted_total",
            &[("reason", "retention")],
        )
    };
    // Reading it installs the process's recorder before anything is counted.
    let deleted_before = deleted();
    // First without retention: one job finishes, one keeps running.
    let mut h = Harness::start("retention", |c| c.retain_finished = None).await;
    let old = h.submit(QUICK).await;
    assert_eq!(
        state(h.wait_final(&old.id, Duration::from_secs(30)).await.state),
        S::Succeeded
    );
    let running = h
        .submit("name: long\ntasks:\n  - name: t\n    command: [sleep, \"1000\"]\n")
        .await;
    let mut c = h.client.clone();
    shoal_testkit::wait_until(Duration::from_secs(20), "the long instance to run", || {
        let mut c = c.clone();
        let id = running.id.clone();
        async move { count(&get(&mut c, &id).await, S::Running) == 1 }
    })
    .await;
    let dir = data_dir(&h);
    assert!(dir.join("logs").join(&old.id).exists());

    // Restarted with a 3 s retention: the job recovered from the store is swept once
    // it has been final that long.
    let retain = Duration::from_secs(3);
    h.runner.take().unwrap().shutdown().await;
    let mut cfg = crate::support::config(h.dir.path());
    cfg.retain_finished = Some(retain);
    h.runner = Some(shoal_job_runner::RunnerServer::start(cfg).await.unwrap());
    h.client = crate::support::connect(&h.runner.as_ref().unwrap().grpc_addr.to_string()).await;
    c = h.client.clone();

    let recent = h.submit(QUICK).await;
    h.wait_final(&recent.id, Duration::from_secs(30)).await;
    // Just finished: kept.
    assert_eq!(get_code(&mut c, &recent.id).await, Code::Ok);

    shoal_testkit::wait_until(
        Duration::from_secs(30),
        "the job finished before the restart to be swept",
        || {
            let mut c = c.clone();
            let id = old.id.clone();
            async move { get_code(&mut c, &id).await == Code::NotFound }
        },
    )
    .await;
    assert_eq!(rows(&dir, seq_of(&old.id)), (0, 0, 0));
    assert!(!dir.join("logs").join(&old.id).exists());
    shoal_testkit::wait_until(
        Duration::from_secs(30),
        "the recent job to be swept once it is old",
        || {
            let mut c = c.clone();
            let id = recent.id.clone();
            async move { get_code(&mut c, &id).await == Code::NotFound }
        },
    )
    .await;
    assert!(!dir.join("logs").join(&recent.id).exists());
    // Running all along (and past several sweeps): kept.
    assert_eq!(count(&get(&mut c, &running.id).await, S::Running), 1);
    let counted = deleted() - deleted_before;
    assert!(counted >= 2.0, "deleted-jobs counter went up by {counted}");

    c.cancel_job(pb::CancelJobRequest {
        id: running.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    h.wait_final(&running.id, Duration::from_secs(30)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_master_forgets_finished_load_jobs_after_its_retention() {
    let c = Cluster::builder()
        .workers(1)
        .layout(BlockLayout::new(1 << 20, 2).unwrap())
        .retain_finished(Duration::from_secs(3))
        .start()
        .await;
    let src = shoal_testkit::temp_dir("load-retention");
    std::fs::write(src.path().join("a.bin"), vec![7u8; 3 << 20]).unwrap();
    c.create_dir_dataset("retained", src.path(), false).await;
    let mut m = c.master_client().await;
    let load = m
        .start_load(pb::StartLoadRequest {
            dataset: "retained".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let get_load = |m: &mut shoal_proto::v1::master_service_client::MasterServiceClient<_>| {
        let mut m = m.clone();
        let id = load.id.clone();
        async move {
            m.get_load(pb::GetLoadRequest { id })
                .await
                .map(|r| r.into_inner())
        }
    };
    let done = shoal_testkit::wait_for(Duration::from_secs(30), "the load to finish", || {
        let f = get_load(&mut m);
        async move { f.await.ok().filter(|j| j.state().is_final()) }
    })
    .await;
    assert_eq!(done.state(), pb::LoadState::Succeeded, "{done:?}");
    // Just finished: still there.
    assert!(get_load(&mut m).await.is_ok());
    shoal_testkit::wait_until(
        Duration::from_secs(30),
        "the load job to be forgotten",
        || {
            let f = get_load(&mut m);
            async move { f.await.is_err_and(|e| e.code() == Code::NotFound) }
        },
    )
    .await;
    let listed = m
        .list_loads(pb::ListLoadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(listed.iter().all(|j| j.id != load.id));
    c.shutdown().await;
}
