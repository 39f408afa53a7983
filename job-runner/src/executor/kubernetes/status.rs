//! Reads an attempt's end from its Pod: the phase, the job container's exit code, and
//! the few waiting states that never resolve by themselves. A pure function of the
//! Pod, so each mapping is tested on hand-made Pod statuses.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;

use super::render::{JOB_CONTAINER, LINKS_CONTAINER, SIDECAR_CONTAINER};
use crate::executor::AttemptExit;

/// What a Pod says about its attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Pending or running: wait.
    Live,
    /// Over: report this.
    Ended(AttemptExit),
    /// It will never run (bad image, broken config, a sidecar that keeps failing): the
    /// Pod is deleted and the attempt reported lost with this reason.
    Stuck(String),
}

/// Waiting reasons that retrying cannot fix.
const HOPELESS: &[&str] = &[
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
];
/// Waiting reasons that may be transient (a registry hiccup) but mean a typo when they
/// last: stuck after the image pull deadline.
const PULLING: &[&str] = &["ErrImagePull", "ImagePullBackOff"];
/// The sidecar is restarted by Kubernetes forever; this many failures means the mount
/// cannot come up (the master is unreachable, FUSE is not available on the node...).
const SIDECAR_MAX_RESTARTS: i32 = 5;

pub fn pod_state(pod: &Pod, now: Timestamp, pull_deadline: Duration) -> PodState {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let containers = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or(&[]);
    let inits = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or(&[]);
    let job = containers.iter().find(|c| c.name == JOB_CONTAINER);
    let job_exit = job.and_then(terminated_code);
    match phase {
        "Succeeded" => return PodState::Ended(AttemptExit::Exited(job_exit.unwrap_or(0))),
        "Failed" => {
            if let Some(code) = job_exit {
                return PodState::Ended(AttemptExit::Exited(code));
            }
            if let Some(code) = inits
                .iter()
                .find(|c| c.name == LINKS_CONTAINER)
                .and_then(terminated_code)
                .filter(|c| *c != 0)
            {
                return PodState::Ended(AttemptExit::Lost(format!(
                    "linking the datasets into its working dir failed (exit code {code})"
                )));
            }
            let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
            let message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
            return PodState::Ended(AttemptExit::Lost(describe(
                "its Pod failed",
                reason,
                message,
            )));
        }
        _ => {}
    }
    let old_enough = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| now.duration_since(t.0).try_into().ok())
        .is_some_and(|age: Duration| age >= pull_deadline);
    for c in job.into_iter().chain(inits.iter()) {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.as_deref().unwrap_or("");
        let message = w.message.as_deref().unwrap_or("");
        let what = format!("container `{}` cannot start", c.name);
        if HOPELESS.contains(&reason) || (PULLING.contains(&reason) && old_enough) {
            return PodState::Stuck(describe(&what, reason, message));
        }
        if c.name == SIDECAR_CONTAINER
            && c.restart_count >= SIDECAR_MAX_RESTARTS
            && reason == "CrashLoopBackOff"
        {
            return PodState::Stuck(format!(
                "the FUSE sidecar failed {} times (is the master reachable from the Pod, \
                 and /dev/fuse available on the node?); see `kubectl logs {} -c {SIDECAR_CONTAINER}`",
                c.restart_count,
                pod.metadata.name.as_deref().unwrap_or("POD"),
            ));
        }
    }
    PodState::Live
}

/// The state a deleted Pod was last seen in: its end if it had one, lost otherwise.
pub fn deleted_exit(pod: &Pod) -> AttemptExit {
    // A Pod deleted while its containers stop may still say Running after the job
    // container ended (e.g. with 143 after the SIGTERM of a cancel).
    let job_exit = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .and_then(|cs| cs.iter().find(|c| c.name == JOB_CONTAINER))
        .and_then(terminated_code);
    if let Some(code) = job_exit {
        return AttemptExit::Exited(code);
    }
    match pod_state(pod, Timestamp::UNIX_EPOCH, Duration::MAX) {
        PodState::Ended(e) => e,
        _ => AttemptExit::Lost(format!(
            "its Pod {} was deleted before it finished",
            pod.metadata.name.as_deref().unwrap_or("")
        )),
    }
}

fn terminated_code(c: &ContainerStatus) -> Option<i32> {
    c.state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code)
}

fn describe(what: &str, reason: &str, message: &str) -> String {
    match (reason.is_empty(), message.is_empty()) {
        (true, true) => what.to_owned(),
        (false, true) => format!("{what}: {reason}"),
        (true, false) => format!("{what}: {message}"),
        (false, false) => format!("{what}: {reason}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(300);

    fn terminated(name: &str, code: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn waiting(name: &str, reason: &str, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            restart_count: restarts,
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some("details".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(phase: &str, containers: Vec<ContainerStatus>, inits: Vec<ContainerStatus>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_000).unwrap()));
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(containers),
            init_container_statuses: Some(inits),
            ..Default::default()
        });
        p
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn phases_map_to_exits() {
        let ok = pod("Succeeded", vec![terminated("job", 0)], vec![]);
        assert_eq!(
            pod_state(&ok, at(1_001), DEADLINE),
            PodState::Ended(AttemptExit::Exited(0))
        );
        let failed = pod(
            "Failed",
            vec![terminated("job", 3)],
            vec![terminated("shoal-fuse", 143)],
        );
        assert_eq!(
            pod_state(&failed, at(1_001), DEADLINE),
            PodState::Ended(AttemptExit::Exited(3))
        );
        let running = pod("Running", vec![], vec![]);
        assert_eq!(pod_state(&running, at(1_001), DEADLINE), PodState::Live);
        assert_eq!(
            pod_state(&Pod::default(), at(1_001), DEADLINE),
            PodState::Live
        );

        let mut evicted = pod("Failed", vec![], vec![]);
        if let Some(s) = evicted.status.as_mut() {
            s.reason = Some("Evicted".into());
            s.message = Some("node low on memory".into());
        }
        assert_eq!(
            pod_state(&evicted, at(1_001), DEADLINE),
            PodState::Ended(AttemptExit::Lost(
                "its Pod failed: Evicted: node low on memory".into()
            ))
        );
        let links = pod("Failed", vec![], vec![terminated("links", 1)]);
        let PodState::Ended(AttemptExit::Lost(why)) = pod_state(&links, at(1_001), DEADLINE) else {
            panic!("a failed links container is a lost attempt");
        };
        assert!(why.contains("linking the datasets"), "{why}");
    }

    #[test]
    fn hopeless_waits_are_stuck_and_pulls_after_the_deadline() {
        let bad = pod(
            "Pending",
            vec![waiting("job", "InvalidImageName", 0)],
            vec![],
        );
        assert_eq!(
            pod_state(&bad, at(1_001), DEADLINE),
            PodState::Stuck("container `job` cannot start: InvalidImageName: details".into())
        );
        let pulling = pod(
            "Pending",
            vec![waiting("job", "ImagePullBackOff", 0)],
            vec![],
        );
        assert_eq!(pod_state(&pulling, at(1_299), DEADLINE), PodState::Live);
        assert!(matches!(
            pod_state(&pulling, at(1_300), DEADLINE),
            PodState::Stuck(_)
        ));
        let sidecar = pod(
            "Pending",
            vec![],
            vec![waiting("shoal-fuse", "CrashLoopBackOff", 4)],
        );
        assert_eq!(pod_state(&sidecar, at(1_001), DEADLINE), PodState::Live);
        let sidecar = pod(
            "Pending",
            vec![],
            vec![waiting("shoal-fuse", "CrashLoopBackOff", 5)],
        );
        let PodState::Stuck(why) = pod_state(&sidecar, at(1_001), DEADLINE) else {
            panic!("a crash-looping sidecar is stuck");
        };
        assert!(why.contains("FUSE sidecar failed 5 times"), "{why}");
    }

    #[test]
    fn a_deleted_pod_keeps_its_exit_code_if_it_had_one() {
        // Still "Running" (deleted mid-termination) but the job container had ended.
        let stopping = pod("Running", vec![terminated("job", 143)], vec![]);
        assert_eq!(deleted_exit(&stopping), AttemptExit::Exited(143));
        let pending = pod("Pending", vec![], vec![]);
        assert_eq!(
            deleted_exit(&pending),
            AttemptExit::Lost("its Pod p was deleted before it finished".into())
        );
        let evicted = pod("Failed", vec![], vec![]);
        assert_eq!(
            deleted_exit(&evicted),
            AttemptExit::Lost("its Pod failed".into())
        );
    }
}
