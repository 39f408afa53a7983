//! The Kubernetes executor (`--executor kubernetes`, docs/deploy.md): each attempt of a
//! TaskInstance runs as a Pod with a FUSE sidecar that mounts the datasets.
//!
//! - [`KubernetesConfig`]: its options and their `SHOAL_K8S_*` variables (always
//!   compiled, so a runner config can carry it);
//! - with the `kubernetes` cargo feature:
//!   - `render`: the Pod of one attempt, as a pure function;
//!   - `status`: an attempt's end from its Pod's status;
//!   - `KubernetesExecutor` (in `attempts`): creates, watches (`watch`), follows
//!     the logs of (`logs`) and deletes those Pods;
//!   - `secrets`: each job's credential, in a per-job Secret its Pods' sidecars
//!     mount (the cluster token never reaches a Pod);
//!   - `nodes`: [`NodeWatch`], the cluster's Nodes as the runner's executor nodes
//!     (capacity from `status.allocatable`, cordoned and not-Ready nodes left out),
//!     used when the runner has no `--node` list;
//!   - [`connect`]: builds both from the runner's config, in-cluster or from a
//!     kubeconfig.
//!
//! Without the feature, [`connect`] explains how to get it. deploy/kubernetes holds the
//! manifests (RBAC for this executor included) and docs/deploy.md the walkthrough.

mod config;

pub use config::{ENV_VARS, KubernetesConfig};

#[cfg(feature = "kubernetes")]
mod attempts;
#[cfg(feature = "kubernetes")]
pub mod csi;
#[cfg(feature = "kubernetes")]
mod logs;
#[cfg(feature = "kubernetes")]
pub mod nodes;
#[cfg(feature = "kubernetes")]
pub mod render;
#[cfg(feature = "kubernetes")]
pub mod secrets;
#[cfg(feature = "kubernetes")]
pub mod status;
#[cfg(feature = "kubernetes")]
mod watch;

#[cfg(feature = "kubernetes")]
pub use attempts::KubernetesExecutor;
#[cfg(feature = "kubernetes")]
pub use nodes::NodeWatch;

use std::sync::Arc;

use shoal_common::Result;

use tokio_util::sync::CancellationToken;

use super::{DatasetMounts, Executor};
use crate::config::RunnerConfig;
use crate::nodes::NodeSource;

/// What [`connect`] builds.
pub struct Connected {
    pub executor: Arc<dyn Executor>,
    /// Gives job Pods their job's credential ([`secrets::JobSecrets`]).
    pub mounts: Arc<dyn DatasetMounts>,
    /// The Node watch, when the runner has no `--node` list.
    pub nodes: Option<Arc<dyn NodeSource>>,
}

/// The Kubernetes executor for `cfg` (its `kubernetes` options, name, master, mount
/// root and kill grace), connected to the cluster the runner runs in, or to the
/// current kubeconfig context outside one, the [`secrets::JobSecrets`] that give
/// its job Pods their job's credential (renewals stop with `shutdown`), and, without
/// a `--node` list, the [`NodeWatch`] that tells the runner its nodes.
#[cfg(feature = "kubernetes")]
pub async fn connect(cfg: &RunnerConfig, shutdown: CancellationToken) -> Result<Connected> {
    use k8s_openapi::api::core::v1::{Node, Pod, Secret};
    use shoal_common::Error;

    let k = &cfg.kubernetes;
    k.validate()?;
    let client = tokio::time::timeout(k.api_timeout, kube::Client::try_default())
        .await
        .map_err(|_| Error::unavailable("connecting to the Kubernetes API timed out"))?
        .map_err(|e| {
            Error::unavailable(format!(
                "cannot reach the Kubernetes API ({e}): run the runner in a Pod with a \
                 service account (deploy/kubernetes/base/runner-rbac.yaml) or with a \
                 working KUBECONFIG"
            ))
        })?;
    let namespace = k
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &namespace);
    let secret_api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &namespace);
    let csi_driver = match &k.csi_driver {
        Some(name) if csi::driver_installed(client.clone(), name, k.api_timeout).await => {
            Some(name.clone())
        }
        _ => None,
    };
    let nodes = cfg.discovers_nodes().then(|| {
        Arc::new(NodeWatch::new(
            kube::Api::<Node>::all(client),
            k.node_selector.clone(),
            k.api_timeout,
            tokio::runtime::Handle::current(),
        )) as Arc<dyn NodeSource>
    });
    let sidecar_image = match &k.sidecar_image {
        Some(i) => i.clone(),
        None => own_image(&api, k.api_timeout).await?,
    };
    let master = k
        .master
        .clone()
        .or_else(|| cfg.master.clone())
        .ok_or_else(|| {
            Error::invalid(
                "the kubernetes executor needs the master's address for the job Pods' FUSE \
             sidecars: pass --master (or set SHOAL_K8S_MASTER)",
            )
        })?;
    let settings = render::PodSettings {
        namespace,
        runner: cfg.name.clone(),
        job_image: k.job_image.clone().unwrap_or_else(|| sidecar_image.clone()),
        sidecar_image,
        service_account: k.service_account.clone(),
        master,
        mount_root: cfg.mount_root.clone(),
        node_label: k.node_label.clone(),
        affinity_weight: k.affinity_weight,
        worker_cache_path: k.worker_cache_path.clone(),
        tls_ca: cfg.tls.ca.is_some(),
        image_pull_policy: k.image_pull_policy.clone(),
        sidecar_cpu_millis: k.sidecar_cpu_millis,
        sidecar_memory_bytes: k.sidecar_memory_bytes,
        grace: cfg.kill_grace,
        csi_driver,
    };
    // The runner's own link to the master (with the cluster token) issues the jobs'
    // credentials; only those reach the Pods.
    let runner_master = cfg.master.as_deref().unwrap_or(&settings.master);
    let link = crate::locality::master::ClusterLink::new(
        runner_master,
        cfg.master_timeout,
        &cfg.cluster_token,
        &cfg.tls,
    )?;
    let ca = match &cfg.tls.ca {
        Some(p) => Some(std::fs::read(p).map_err(|e| {
            Error::io(
                format!(
                    "read the CA bundle {} for the job Pods' sidecars",
                    p.display()
                ),
                e,
            )
        })?),
        None => None,
    };
    let secrets = secrets::JobSecrets::new(
        secrets::JobSecretConfig {
            runner: cfg.name.clone(),
            mount_root: cfg.mount_root.clone(),
            ttl: cfg.job_credential_ttl,
            api_timeout: k.api_timeout,
            ca,
        },
        secret_api,
        link.master(),
        tokio::runtime::Handle::current(),
        shutdown,
    );
    tracing::info!(namespace = %settings.namespace, sidecar = %settings.sidecar_image, job_image = %settings.job_image, "kubernetes executor connected");
    let executor = Arc::new(KubernetesExecutor::new(
        api,
        settings,
        k.clone(),
        tokio::runtime::Handle::current(),
    ));
    Ok(Connected {
        executor,
        mounts: Arc::new(secrets),
        nodes,
    })
}

/// The image of the runner's own Pod (its name is the host name), so that the
/// sidecar runs the same shoal as the runner by default.
#[cfg(feature = "kubernetes")]
async fn own_image(
    api: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    timeout: std::time::Duration,
) -> Result<String> {
    use shoal_common::Error;
    let hint = "set SHOAL_K8S_SIDECAR_IMAGE to the shoal image the job Pods' FUSE sidecar runs";
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .map_err(|e| {
            Error::invalid(format!(
                "cannot tell which Pod the runner runs in ({e}): {hint}"
            ))
        })?;
    let pod = tokio::time::timeout(timeout, api.get_opt(&host))
        .await
        .map_err(|_| {
            Error::unavailable(format!(
                "get the runner's own Pod {host}: no answer; {hint}"
            ))
        })?
        .map_err(|e| Error::unavailable(format!("get the runner's own Pod {host}: {e}; {hint}")))?
        .ok_or_else(|| {
            Error::invalid(format!(
                "the runner is not in a Pod named {host} in this namespace: {hint}"
            ))
        })?;
    let spec = pod.spec.unwrap_or_default();
    spec.containers
        .iter()
        .find(|c| c.name == "runner")
        .or(spec.containers.first())
        .and_then(|c| c.image.clone())
        .ok_or_else(|| Error::invalid(format!("the runner's Pod {host} names no image: {hint}")))
}

/// Without the `kubernetes` feature: a clear error.
#[cfg(not(feature = "kubernetes"))]
pub async fn connect(_cfg: &RunnerConfig, _shutdown: CancellationToken) -> Result<Connected> {
    Err(shoal_common::Error::invalid(
        "this shoal was built without the kubernetes executor: build it with \
         `--features shoal-job-runner/kubernetes` (the container image in \
         deploy/Containerfile has it)",
    ))
}
