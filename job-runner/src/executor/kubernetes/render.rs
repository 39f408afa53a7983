//! Renders one attempt of a TaskInstance ([`Launch`]) as a Pod: a pure function, so
//! the Pod can be checked field by field and validated offline without a cluster.
//!
//! The Pod (deploy/kubernetes/examples/job-pod.yaml is the annotated hand-written
//! version of the same shape):
//! - `job`: the task's command (argv, never through a shell) in the task's `image` (or
//!   the runner's job image) with the instance's env, its resource requests (and a
//!   memory limit of the same size; extended resources such as GPUs requested and
//!   limited alike), working dir `/work`;
//! - `shoal-fuse`: a native sidecar (init container with `restartPolicy: Always`)
//!   running `shoal mount` at the mount root on an emptyDir shared with `job`, with
//!   Bidirectional propagation (so privileged) on its side and HostToContainer on the
//!   job's; a startup probe holds `job` back until the FUSE mount is there;
//! - `links` (only when datasets have a `mount` path): symlinks under `/work` to the
//!   datasets, like the local executor's;
//! - with a CSI driver ([`PodSettings::csi_driver`]) instead of the sidecar: `mnt` is an
//!   inline volume of that driver (`shoal csi`), published by the node plugin with the
//!   job's Secret; no container of the Pod is privileged;
//! - the `by_file` input list, from a Pod annotation through a downwardAPI file;
//! - preferred (never required) node affinity toward the node locality chose; the
//!   task's `node_selector` and `tolerations` as they are, its `labels` and
//!   `annotations` under shoal's own, its `service_account` (or the runner's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, CSIVolumeSource, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, HostPathVolumeSource, KeyToPath,
    LocalObjectReference, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, Pod, PodSpec, PreferredSchedulingTerm, Probe, ResourceRequirements,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use shoal_common::{Error, Result};

use crate::executor::Launch;

pub const JOB_CONTAINER: &str = "job";
pub const SIDECAR_CONTAINER: &str = "shoal-fuse";
pub const LINKS_CONTAINER: &str = "links";
/// The job container's working dir (an emptyDir, kept for the Pod's life).
pub const WORK_DIR: &str = "/work";
/// Where the downwardAPI volume with the input list is mounted.
pub const META_DIR: &str = "/var/run/shoal";
pub const INPUT_LIST_FILE: &str = "/var/run/shoal/input-list";

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "shoal-runner";
pub const LABEL_RUNNER: &str = "shoal.io/runner";
pub const LABEL_JOB: &str = "shoal.io/job";
pub const LABEL_TASK: &str = "shoal.io/task";
pub const LABEL_INDEX: &str = "shoal.io/instance-index";
pub const LABEL_ATTEMPT: &str = "shoal.io/attempt";
pub const ANNOTATION_INPUT_LIST: &str = "shoal.io/input-list";

/// Kubernetes caps all of an object's annotations at 256 KiB together; the input list
/// gets most of it.
pub const MAX_INPUT_LIST_BYTES: usize = 200 << 10;

const LINK_SCRIPT: &str = r#"while [ "$#" -gt 1 ]; do mkdir -p "$(dirname "$2")" && ln -sfn "$1" "$2" || exit 1; shift 2; done"#;
/// The FUSE mount is up once /proc/mounts lists a fuse filesystem at the mount root
/// (the emptyDir underneath is a mount too, of another type).
const MOUNTED_PROBE: &str = r#"grep -qs " $0 fuse" /proc/mounts"#;

/// Everything about job Pods that does not depend on the instance, resolved once when
/// the executor connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSettings {
    pub namespace: String,
    /// The runner's name: part of Pod names and the `shoal.io/runner` label, so
    /// runners sharing a namespace never see each other's Pods.
    pub runner: String,
    pub sidecar_image: String,
    pub job_image: String,
    pub service_account: Option<String>,
    /// The master, as the sidecar reaches it.
    pub master: String,
    /// Where datasets are mounted in the Pod: the runner's `--mount-root`, so the
    /// `SHOAL_DATA_<NAME>` paths the engine computed are right inside the Pod.
    pub mount_root: PathBuf,
    pub node_label: String,
    pub affinity_weight: i32,
    pub worker_cache_path: Option<PathBuf>,
    /// TLS is on: the job's Secret also carries the runner's CA bundle (key
    /// [`CA_KEY`]), which the sidecar verifies the master with (`--ca`).
    pub tls_ca: bool,
    pub image_pull_policy: Option<String>,
    pub sidecar_cpu_millis: u64,
    pub sidecar_memory_bytes: u64,
    /// Pod termination grace period (the runner's kill grace).
    pub grace: Duration,
    /// The CSI driver of `shoal csi` on the cluster's nodes: job Pods get their mount
    /// as an inline volume of it instead of the privileged sidecar. `None`: sidecar.
    pub csi_driver: Option<String>,
}

/// The volume attribute of the CSI plugin naming the key of the Secret that holds the
/// volume's token (the job's Secret keeps it under [`JOB_TOKEN_KEY`]).
pub const CSI_SECRET_KEY_ATTR: &str = "secretKey";

/// Where the sidecar finds its job's credential (the job's Secret, key [`JOB_TOKEN_KEY`]).
pub const JOB_TOKEN_DIR: &str = "/var/run/shoal/job-token";
/// The key of the job's credential in its Secret.
pub const JOB_TOKEN_KEY: &str = "job.token";
/// The key of the CA bundle in a job's Secret when TLS is on.
pub const CA_KEY: &str = "ca.crt";

/// The Pod of one attempt.
pub fn render_pod(s: &PodSettings, l: &Launch) -> Result<Pod> {
    let mount_root = mount_root_str(&s.mount_root)?;
    let name = pod_name(&s.runner, &l.job_id, &l.task, l.index, l.attempt);

    // The task's own labels and annotations first, so shoal's (which its watch, clean-up
    // and adoption select on) always win; submit refuses `shoal.io/*` keys anyway.
    let mut labels = l.pod.labels.clone();
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    labels.insert(LABEL_RUNNER.to_owned(), label_value(&s.runner));
    labels.insert(LABEL_JOB.to_owned(), label_value(&l.job_id));
    labels.insert(LABEL_TASK.to_owned(), label_value(&l.task));
    labels.insert(LABEL_INDEX.to_owned(), l.index.to_string());
    labels.insert(LABEL_ATTEMPT.to_owned(), l.attempt.to_string());
    // Label values may be shortened or hashed; the annotations keep the exact names.
    let mut annotations = l.pod.annotations.clone();
    annotations.insert(LABEL_JOB.to_owned(), l.job_id.clone());
    annotations.insert(LABEL_TASK.to_owned(), l.task.clone());

    let mut env = Vec::with_capacity(l.env.len());
    for (k, v) in &l.env {
        let value = if k == "SHOAL_INPUT_LIST" && l.input_list.is_some() {
            INPUT_LIST_FILE.to_owned()
        } else {
            if k.starts_with("SHOAL_DATA_") && !Path::new(v).starts_with(&s.mount_root) {
                return Err(Error::invalid(format!(
                    "{k}={v} is outside the mount root {mount_root} that job Pods mount; \
                     the runner's --mount-root must be the path datasets have inside Pods"
                )));
            }
            v.clone()
        };
        env.push(plain_env(k, &value));
    }

    let mut volumes = vec![empty_dir("mnt"), empty_dir("work")];
    let mut job_mounts = vec![
        VolumeMount {
            name: "mnt".into(),
            mount_path: mount_root.to_owned(),
            mount_propagation: Some("HostToContainer".into()),
            ..Default::default()
        },
        VolumeMount {
            name: "work".into(),
            mount_path: WORK_DIR.into(),
            ..Default::default()
        },
    ];
    if let Some(list) = &l.input_list {
        if list.text.len() > MAX_INPUT_LIST_BYTES {
            return Err(Error::invalid(format!(
                "the instance's input list is {} KiB; the kubernetes executor passes it in a \
                 Pod annotation, which holds at most {} KiB: run more instances so each gets \
                 fewer files",
                list.text.len() >> 10,
                MAX_INPUT_LIST_BYTES >> 10
            )));
        }
        annotations.insert(ANNOTATION_INPUT_LIST.to_owned(), list.text.clone());
        volumes.push(Volume {
            name: "meta".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "input-list".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{ANNOTATION_INPUT_LIST}']"),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        job_mounts.push(VolumeMount {
            name: "meta".into(),
            mount_path: META_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }

    let mut init_containers = Vec::new();
    if !l.links.is_empty() {
        let mut command = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            LINK_SCRIPT.to_owned(),
            LINKS_CONTAINER.to_owned(),
        ];
        for (rel, target) in &l.links {
            command.push(target.to_string_lossy().into_owned());
            command.push(format!("{WORK_DIR}/{rel}"));
        }
        init_containers.push(Container {
            name: LINKS_CONTAINER.into(),
            image: Some(s.sidecar_image.clone()),
            image_pull_policy: s.image_pull_policy.clone(),
            command: Some(command),
            security_context: Some(unprivileged()),
            resources: Some(resources(10, 16 << 20, Some(64 << 20))),
            volume_mounts: Some(vec![VolumeMount {
                name: "work".into(),
                mount_path: WORK_DIR.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
    }

    if let Some(driver) = &s.csi_driver {
        // The plugin on the node mounts every dataset the job's credential reaches
        // (no `dataset` attribute), as the sidecar would, before `job` starts.
        volumes[0] = Volume {
            name: "mnt".into(),
            csi: Some(CSIVolumeSource {
                driver: driver.clone(),
                read_only: Some(false),
                volume_attributes: Some(BTreeMap::from([(
                    CSI_SECRET_KEY_ATTR.to_owned(),
                    JOB_TOKEN_KEY.to_owned(),
                )])),
                node_publish_secret_ref: Some(LocalObjectReference {
                    name: job_secret_name(&s.runner, &l.job_id),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        job_mounts[0].mount_propagation = None;
        return Ok(pod(
            s,
            l,
            name,
            labels,
            annotations,
            env,
            volumes,
            job_mounts,
            init_containers,
        ));
    }

    let mut sidecar_mounts = vec![VolumeMount {
        name: "mnt".into(),
        mount_path: mount_root.to_owned(),
        mount_propagation: Some("Bidirectional".into()),
        ..Default::default()
    }];
    if let Some(cache) = &s.worker_cache_path {
        let path = cache.to_string_lossy().into_owned();
        volumes.push(Volume {
            name: "worker-cache".into(),
            host_path: Some(HostPathVolumeSource {
                path: path.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        });
        sidecar_mounts.push(VolumeMount {
            name: "worker-cache".into(),
            mount_path: path,
            read_only: Some(true),
            ..Default::default()
        });
    }
    let mut sidecar_command = vec!["shoal".to_owned(), "mount".to_owned()];
    // The job's own credential (issue 14), never the cluster token: a Pod that
    // escapes its job reaches only the datasets the job was granted.
    volumes.push(Volume {
        name: "job-token".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(job_secret_name(&s.runner, &l.job_id)),
            default_mode: Some(0o400),
            items: Some(
                std::iter::once(JOB_TOKEN_KEY)
                    .chain(s.tls_ca.then_some(CA_KEY))
                    .map(|k| KeyToPath {
                        key: k.into(),
                        path: k.into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    });
    sidecar_mounts.push(VolumeMount {
        name: "job-token".into(),
        mount_path: JOB_TOKEN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    sidecar_command.push("--cluster-token-file".into());
    sidecar_command.push(format!("{JOB_TOKEN_DIR}/{JOB_TOKEN_KEY}"));
    if s.tls_ca {
        sidecar_command.push("--ca".into());
        sidecar_command.push(format!("{JOB_TOKEN_DIR}/{CA_KEY}"));
    }
    sidecar_command.push("--allow-other".into());
    sidecar_command.push(mount_root.to_owned());
    init_containers.push(Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(s.sidecar_image.clone()),
        image_pull_policy: s.image_pull_policy.clone(),
        // A native sidecar: started before `job`, stopped after it, and not counted
        // when the Pod's phase is decided.
        restart_policy: Some("Always".into()),
        command: Some(sidecar_command),
        env: Some(vec![
            plain_env("SHOAL_MASTER", &s.master),
            EnvVar {
                name: "SHOAL_NODE".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        // mount(2) of FUSE needs CAP_SYS_ADMIN and /dev/fuse, and Kubernetes allows
        // Bidirectional propagation only in privileged containers.
        security_context: Some(SecurityContext {
            privileged: Some(true),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        }),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    MOUNTED_PROBE.into(),
                    mount_root.to_owned(),
                ]),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(120),
            ..Default::default()
        }),
        resources: Some(resources(
            s.sidecar_cpu_millis,
            s.sidecar_memory_bytes,
            Some(s.sidecar_memory_bytes.saturating_mul(2)),
        )),
        volume_mounts: Some(sidecar_mounts),
        ..Default::default()
    });

    Ok(pod(
        s,
        l,
        name,
        labels,
        annotations,
        env,
        volumes,
        job_mounts,
        init_containers,
    ))
}

/// The Pod around the `job` container, whichever way its mount comes.
#[allow(clippy::too_many_arguments)]
fn pod(
    s: &PodSettings,
    l: &Launch,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    env: Vec<EnvVar>,
    volumes: Vec<Volume>,
    job_mounts: Vec<VolumeMount>,
    init_containers: Vec<Container>,
) -> Pod {
    let mut job_resources = resources(
        l.resources.cpu_millis,
        l.resources.memory_bytes,
        Some(l.resources.memory_bytes),
    );
    // Kubernetes takes extended resources (GPUs) only as whole units with the limit
    // equal to the request.
    for (k, n) in &l.resources.extended {
        let q = Quantity(n.to_string());
        job_resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert(k.clone(), q.clone());
        job_resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(k.clone(), q);
    }
    let job = Container {
        name: JOB_CONTAINER.into(),
        image: Some(l.pod.image.clone().unwrap_or_else(|| s.job_image.clone())),
        image_pull_policy: s.image_pull_policy.clone(),
        command: Some(l.command.clone()),
        env: Some(env),
        working_dir: Some(WORK_DIR.into()),
        resources: Some(job_resources),
        volume_mounts: Some(job_mounts),
        ..Default::default()
    };

    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(s.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            // The runner retries attempts itself, each in a new Pod.
            restart_policy: Some("Never".into()),
            service_account_name: l
                .pod
                .service_account
                .clone()
                .or_else(|| s.service_account.clone()),
            // Even with the task's own service account: a job container that could
            // talk to the API could reach other jobs' Pods and Secrets.
            automount_service_account_token: Some(false),
            // Required placement (the task's); the runner's choice is only preferred
            // (`affinity`), and locality picked a node that matches it.
            node_selector: (!l.pod.node_selector.is_empty()).then(|| l.pod.node_selector.clone()),
            tolerations: (!l.pod.tolerations.is_empty())
                .then(|| l.pod.tolerations.iter().map(toleration).collect()),
            // The env is exactly the instance's: no Service variables.
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(s.grace.as_secs().max(1) as i64),
            affinity: (!l.node.is_empty()).then(|| node_affinity(s, &l.node)),
            init_containers: Some(init_containers),
            containers: vec![job],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

fn toleration(t: &crate::spec::Toleration) -> k8s_openapi::api::core::v1::Toleration {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    k8s_openapi::api::core::v1::Toleration {
        key: some(&t.key),
        operator: Some(t.operator.as_str().to_owned()),
        value: some(&t.value),
        effect: some(&t.effect),
        toleration_seconds: t.toleration_seconds,
    }
}

fn mount_root_str(p: &Path) -> Result<&str> {
    let s = p
        .to_str()
        .filter(|s| p.is_absolute() && !s.chars().any(|c| c.is_whitespace() || c == '\\'));
    s.ok_or_else(|| {
        Error::invalid(format!(
            "mount root {} cannot be used in Pods: it must be an absolute path without \
             spaces (e.g. --mount-root /shoal)",
            p.display()
        ))
    })
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// The shoal image's own user (deploy/Containerfile), whatever the image's default.
const SHOAL_UID: i64 = 10001;

fn unprivileged() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        run_as_user: Some(SHOAL_UID),
        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests of `cpu_millis` and `memory`, and a memory limit: the runner places
/// instances by their requests, and a limit keeps one that overruns from pushing out
/// its node's cache worker.
pub fn resources(cpu_millis: u64, memory: u64, memory_limit: Option<u64>) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    if cpu_millis > 0 {
        requests.insert("cpu".to_owned(), Quantity(format!("{cpu_millis}m")));
    }
    if memory > 0 {
        requests.insert("memory".to_owned(), Quantity(memory.to_string()));
    }
    let limits = memory_limit.filter(|m| *m > 0).map(|m| {
        let mut l = BTreeMap::new();
        l.insert("memory".to_owned(), Quantity(m.to_string()));
        l
    });
    ResourceRequirements {
        requests: Some(requests),
        limits,
        ..Default::default()
    }
}

fn node_affinity(s: &PodSettings, node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                PreferredSchedulingTerm {
                    weight: s.affinity_weight,
                    preference: NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: s.node_label.clone(),
                            operator: "In".into(),
                            values: Some(vec![node.to_owned()]),
                        }]),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Pod name of an attempt: readable, a valid DNS label (at most 63 characters),
/// and the same every time, so a restarted runner finds the Pod again. The hash of
/// the exact names keeps two attempts apart even when cleaning their names collides.
/// The name of the Secret holding job `job_id`'s credential: per runner and job,
/// stable, so a restarted runner finds it and its Pods mount it by name.
pub fn job_secret_name(runner: &str, job_id: &str) -> String {
    let base = format!("shoal-{}-{}", dns_label(runner), dns_label(job_id));
    let h = fnv1a(format!("{runner}\0{job_id}").as_bytes());
    let mut base = base;
    base.truncate(63 - 1 - 8 - 6);
    format!("{}-{:08x}-token", base.trim_end_matches('-'), h as u32)
}

pub fn pod_name(runner: &str, job_id: &str, task: &str, index: u32, attempt: u32) -> String {
    let exact = format!("{runner}\u{0}{job_id}\u{0}{task}\u{0}{index}\u{0}{attempt}");
    let hash = format!("{:08x}", fnv1a(exact.as_bytes()) as u32);
    let mut readable = dns_label(&format!("{runner}-{job_id}-{task}-{index}-{attempt}"));
    readable.truncate(63 - 1 - hash.len());
    let readable = readable.trim_end_matches('-');
    if readable.is_empty() {
        format!("shoal-{hash}")
    } else {
        format!("{readable}-{hash}")
    }
}

/// `s` as a label value: itself when valid, otherwise a cleaned prefix plus a hash.
pub fn label_value(s: &str) -> String {
    let valid = s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        return s.to_owned();
    }
    let hash = format!("{:08x}", fnv1a(s.as_bytes()) as u32);
    let mut clean = dns_label(s);
    clean.truncate(63 - 1 - hash.len());
    let clean = clean.trim_end_matches('-');
    if clean.is_empty() {
        hash
    } else {
        format!("{clean}-{hash}")
    }
}

/// Lower-case letters, digits and single `-`, starting and ending with an
/// alphanumeric.
fn dns_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// FNV-1a, 64 bits: stable across Rust releases and runner builds (Pod names are
/// looked up again after an upgrade), unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_dns_labels_and_stable() {
        let n = pod_name("runner", "job-12", "train", 3, 1);
        assert!(n.starts_with("runner-job-12-train-3-1-"), "{n}");
        assert_eq!(n, pod_name("runner", "job-12", "train", 3, 1));
        assert_ne!(n, pod_name("runner", "job-12", "train", 3, 2));
        // Names that clean to the same text still differ.
        assert_ne!(
            pod_name("runner", "job-1", "a_b", 0, 1),
            pod_name("runner", "job-1", "a.b", 0, 1)
        );
        let long = pod_name(&"R".repeat(80), "job-999999", &"t".repeat(63), 4000, 9);
        assert!(long.len() <= 63, "{long}");
        for n in [&n, &long] {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            assert!(!n.starts_with('-') && !n.ends_with('-'));
        }
        // Pod names must not change across runner builds (a restarted runner looks
        // its Pods up by name): FNV-1a's published test vectors pin the hash.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("job-12"), "job-12");
        assert_eq!(label_value("train.v2"), "train.v2");
        let v = label_value("ends-with-");
        assert!(
            v.starts_with("ends-with-") && v.len() == "ends-with-".len() + 8,
            "{v}"
        );
        assert_ne!(label_value("a_"), label_value("a."));
        assert!(label_value(&"x".repeat(100)).len() <= 63);
        assert_eq!(label_value(""), "");
    }
}
