//! [`KubernetesConfig`]: the Kubernetes executor's options, with their defaults and the
//! `SHOAL_K8S_*` environment variables that set them. Compiled with or without the
//! `kubernetes` feature, so a runner config can always carry it.

use std::path::PathBuf;
use std::time::Duration;

use shoal_common::size::ByteSize;
use shoal_common::{Error, Result};

/// Where job Pods run and what they are made of. `None` fields are resolved when the
/// executor connects (see each field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Namespace of the job Pods. Default: the runner's own namespace (in-cluster) or
    /// the kubeconfig context's.
    pub namespace: Option<String>,
    /// Image of the FUSE sidecar (it runs `shoal mount`). Default: the image of the
    /// runner's own Pod, so one image tag runs everything.
    pub sidecar_image: Option<String>,
    /// Image of the job container, which runs the task's command. Default: the
    /// sidecar image.
    pub job_image: Option<String>,
    /// Service account of job Pods. Default: the namespace's `default`. Job Pods never
    /// get an API token mounted.
    pub service_account: Option<String>,
    /// The master's address as job Pods reach it. Default: the runner's `--master`.
    pub master: Option<String>,
    /// Node label whose value is a runner node name (`--node NAME=...`).
    pub node_label: String,
    /// Label selector of the Nodes the runner discovers and places instances on
    /// (without a `--node` list); `None` is every Node.
    pub node_selector: Option<String>,
    /// Weight (1-100) of the preferred node affinity toward the node locality chose.
    pub affinity_weight: i32,
    /// The workers' hostPath cache, mounted read-only at the same path in the sidecar
    /// so it reads blocks cached on its node directly. `None` turns that off.
    pub worker_cache_path: Option<PathBuf>,
    /// `imagePullPolicy` of every container; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// What the sidecar asks for (it holds the mount's block cache).
    pub sidecar_cpu_millis: u64,
    pub sidecar_memory_bytes: u64,
    /// Deadline of every Kubernetes API call.
    pub api_timeout: Duration,
    /// A job container that cannot pull its image for this long fails its attempt.
    pub image_pull_deadline: Duration,
    /// Pod creations in flight at once (a fan-out of hundreds is created in waves).
    pub create_parallelism: usize,
    /// The CSI driver job Pods mount datasets through instead of the privileged
    /// sidecar, when the cluster has it (looked up at start, [`super::csi`]); `None`
    /// (`SHOAL_K8S_CSI_DRIVER=none`) keeps the sidecar without looking.
    pub csi_driver: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: None,
            sidecar_image: None,
            job_image: None,
            service_account: None,
            master: None,
            node_label: "kubernetes.io/hostname".into(),
            node_selector: None,
            affinity_weight: 100,
            worker_cache_path: Some(PathBuf::from("/var/lib/shoal/cache")),
            image_pull_policy: None,
            sidecar_cpu_millis: 250,
            sidecar_memory_bytes: 512 << 20,
            api_timeout: Duration::from_secs(30),
            image_pull_deadline: Duration::from_secs(300),
            create_parallelism: 16,
            csi_driver: Some(DEFAULT_CSI_DRIVER.into()),
        }
    }
}

/// The driver name `shoal csi` registers by default (deploy/kubernetes/base/csi-driver.yaml).
pub const DEFAULT_CSI_DRIVER: &str = "csi.shoal.dev";

/// The variables [`KubernetesConfig::from_env`] reads, for docs and error messages.
pub const ENV_VARS: &[&str] = &[
    "SHOAL_K8S_NAMESPACE",
    "SHOAL_K8S_SIDECAR_IMAGE",
    "SHOAL_K8S_JOB_IMAGE",
    "SHOAL_K8S_SERVICE_ACCOUNT",
    "SHOAL_K8S_MASTER",
    "SHOAL_K8S_NODE_LABEL",
    "SHOAL_K8S_NODE_SELECTOR",
    "SHOAL_K8S_AFFINITY_WEIGHT",
    "SHOAL_K8S_WORKER_CACHE_PATH",
    "SHOAL_K8S_IMAGE_PULL_POLICY",
    "SHOAL_K8S_SIDECAR_CPU",
    "SHOAL_K8S_SIDECAR_MEMORY",
    "SHOAL_K8S_API_TIMEOUT",
    "SHOAL_K8S_IMAGE_PULL_DEADLINE",
    "SHOAL_K8S_CREATE_PARALLELISM",
    "SHOAL_K8S_CSI_DRIVER",
];

impl KubernetesConfig {
    /// The defaults overridden by the `SHOAL_K8S_*` variables of this process.
    pub fn from_env() -> Result<KubernetesConfig> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// The defaults overridden by `get(NAME)` for each of [`ENV_VARS`]. An empty value
    /// counts as unset, except `SHOAL_K8S_WORKER_CACHE_PATH`, where it turns the
    /// worker cache mount off.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<KubernetesConfig> {
        let mut c = KubernetesConfig::default();
        let var = |k: &str| get(k).map(|v| v.trim().to_owned());
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        let bad = |k: &str, v: &str, want: &str| {
            Error::invalid(format!("invalid {k}=`{v}`: expected {want}"))
        };
        c.namespace = set("SHOAL_K8S_NAMESPACE");
        c.sidecar_image = set("SHOAL_K8S_SIDECAR_IMAGE");
        c.job_image = set("SHOAL_K8S_JOB_IMAGE");
        c.service_account = set("SHOAL_K8S_SERVICE_ACCOUNT");
        c.master = set("SHOAL_K8S_MASTER");
        if let Some(v) = set("SHOAL_K8S_NODE_LABEL") {
            c.node_label = v;
        }
        c.node_selector = set("SHOAL_K8S_NODE_SELECTOR");
        if let Some(v) = set("SHOAL_K8S_AFFINITY_WEIGHT") {
            c.affinity_weight = v
                .parse()
                .map_err(|_| bad("SHOAL_K8S_AFFINITY_WEIGHT", &v, "a number from 1 to 100"))?;
        }
        if let Some(v) = var("SHOAL_K8S_WORKER_CACHE_PATH") {
            c.worker_cache_path = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        c.image_pull_policy = set("SHOAL_K8S_IMAGE_PULL_POLICY");
        if let Some(v) = set("SHOAL_K8S_CSI_DRIVER") {
            c.csi_driver = (v != "none").then_some(v);
        }
        if let Some(v) = set("SHOAL_K8S_SIDECAR_CPU") {
            c.sidecar_cpu_millis = crate::config::parse_cpu(&v).ok_or_else(|| {
                bad(
                    "SHOAL_K8S_SIDECAR_CPU",
                    &v,
                    "cores (0.25) or millicores (250m)",
                )
            })?;
        }
        if let Some(v) = set("SHOAL_K8S_SIDECAR_MEMORY") {
            c.sidecar_memory_bytes = v
                .parse::<ByteSize>()
                .map_err(|_| bad("SHOAL_K8S_SIDECAR_MEMORY", &v, "a size such as 512MiB"))?
                .0;
        }
        let duration = |k: &str, v: &str| {
            shoal_common::time::parse_duration(v).map_err(|_| bad(k, v, "a duration such as 30s"))
        };
        if let Some(v) = set("SHOAL_K8S_API_TIMEOUT") {
            c.api_timeout = duration("SHOAL_K8S_API_TIMEOUT", &v)?;
        }
        if let Some(v) = set("SHOAL_K8S_IMAGE_PULL_DEADLINE") {
            c.image_pull_deadline = duration("SHOAL_K8S_IMAGE_PULL_DEADLINE", &v)?;
        }
        if let Some(v) = set("SHOAL_K8S_CREATE_PARALLELISM") {
            c.create_parallelism = v
                .parse()
                .map_err(|_| bad("SHOAL_K8S_CREATE_PARALLELISM", &v, "a positive number"))?;
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=100).contains(&self.affinity_weight) {
            return Err(Error::invalid(format!(
                "node affinity weight {} is out of range: Kubernetes takes 1 to 100",
                self.affinity_weight
            )));
        }
        if self.node_label.is_empty() {
            return Err(Error::invalid(
                "the node label is empty: set it to the label holding node names (kubernetes.io/hostname)",
            ));
        }
        if let Some(sel) = &self.node_selector
            && sel.chars().any(|c| c.is_whitespace() && c != ' ')
        {
            return Err(Error::invalid(format!(
                "node selector `{sel}` is not a label selector: write KEY=VALUE[,KEY2=VALUE2], e.g. shoal.io/jobs=true"
            )));
        }
        if let Some(p) = &self.worker_cache_path
            && !p.is_absolute()
        {
            return Err(Error::invalid(format!(
                "worker cache path {} must be absolute (it is a hostPath)",
                p.display()
            )));
        }
        if let Some(p) = &self.image_pull_policy
            && !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return Err(Error::invalid(format!(
                "image pull policy `{p}` is not one of Always, IfNotPresent, Never"
            )));
        }
        if self.api_timeout.is_zero() {
            return Err(Error::invalid(
                "the Kubernetes API timeout must be more than 0",
            ));
        }
        if self.create_parallelism == 0 {
            return Err(Error::invalid(
                "Pod creation parallelism must be at least 1",
            ));
        }
        if self.sidecar_memory_bytes == 0 {
            return Err(Error::invalid("the FUSE sidecar needs some memory"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let list: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| list.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn env_overrides_defaults() {
        let c = KubernetesConfig::from_vars(vars(&[
            ("SHOAL_K8S_NAMESPACE", "jobs"),
            ("SHOAL_K8S_SIDECAR_IMAGE", "reg/shoal:1"),
            ("SHOAL_K8S_AFFINITY_WEIGHT", "40"),
            ("SHOAL_K8S_WORKER_CACHE_PATH", ""),
            ("SHOAL_K8S_SIDECAR_CPU", "500m"),
            ("SHOAL_K8S_SIDECAR_MEMORY", "1GiB"),
            ("SHOAL_K8S_API_TIMEOUT", "5s"),
            ("SHOAL_K8S_JOB_IMAGE", "  "),
            ("SHOAL_K8S_NODE_SELECTOR", "shoal.io/jobs=true"),
        ]))
        .unwrap();
        assert_eq!(c.node_selector.as_deref(), Some("shoal.io/jobs=true"));
        assert_eq!(c.namespace.as_deref(), Some("jobs"));
        assert_eq!(c.sidecar_image.as_deref(), Some("reg/shoal:1"));
        assert_eq!(c.job_image, None);
        assert_eq!(c.affinity_weight, 40);
        assert_eq!(c.worker_cache_path, None);
        assert_eq!(c.sidecar_cpu_millis, 500);
        assert_eq!(c.sidecar_memory_bytes, 1 << 30);
        assert_eq!(c.api_timeout, Duration::from_secs(5));
        assert_eq!(c.node_label, "kubernetes.io/hostname");
        assert_eq!(c.csi_driver.as_deref(), Some(DEFAULT_CSI_DRIVER));
        assert_eq!(
            KubernetesConfig::from_vars(vars(&[])).unwrap(),
            KubernetesConfig::default()
        );
        let off = KubernetesConfig::from_vars(vars(&[("SHOAL_K8S_CSI_DRIVER", "none")]));
        assert_eq!(off.unwrap().csi_driver, None);
        let other =
            KubernetesConfig::from_vars(vars(&[("SHOAL_K8S_CSI_DRIVER", "csi.example.com")]));
        assert_eq!(
            other.unwrap().csi_driver.as_deref(),
            Some("csi.example.com")
        );
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let e =
            KubernetesConfig::from_vars(vars(&[("SHOAL_K8S_AFFINITY_WEIGHT", "500")])).unwrap_err();
        assert!(e.message().contains("1 to 100"), "{e}");
        let e =
            KubernetesConfig::from_vars(vars(&[("SHOAL_K8S_SIDECAR_MEMORY", "lots")])).unwrap_err();
        assert!(e.message().contains("SHOAL_K8S_SIDECAR_MEMORY"), "{e}");
        let e = KubernetesConfig::from_vars(vars(&[("SHOAL_K8S_IMAGE_PULL_POLICY", "Sometimes")]))
            .unwrap_err();
        assert!(e.message().contains("Always"), "{e}");
        let e = KubernetesConfig::from_vars(vars(&[("SHOAL_K8S_WORKER_CACHE_PATH", "cache")]))
            .unwrap_err();
        assert!(e.message().contains("absolute"), "{e}");
    }
}
