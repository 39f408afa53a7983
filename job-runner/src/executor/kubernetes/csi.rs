//! Whether job Pods can mount their datasets through the `shoal csi` driver: the
//! runner looks for the driver's CSIDriver object once at start. Present, job Pods get
//! an inline CSI volume and nothing in them is privileged; absent (or not readable with
//! the runner's RBAC), they keep the privileged FUSE sidecar, the fallback that works
//! on any cluster. A driver installed later takes effect at the runner's next start.

use std::time::Duration;

use k8s_openapi::api::storage::v1::CSIDriver;

/// Whether the cluster has the CSIDriver `name`. Every failure to tell counts as "no"
/// (with a warning saying what to fix), so the runner still starts.
pub async fn driver_installed(client: kube::Client, name: &str, timeout: Duration) -> bool {
    let api: kube::Api<CSIDriver> = kube::Api::all(client);
    match tokio::time::timeout(timeout, api.get_opt(name)).await {
        Ok(Ok(Some(_))) => {
            tracing::info!(
                driver = name,
                "CSI driver found: job Pods mount datasets as CSI volumes, without the privileged sidecar"
            );
            true
        }
        Ok(Ok(None)) => {
            tracing::info!(
                driver = name,
                "no CSIDriver of this name: job Pods mount datasets with the privileged FUSE sidecar (install deploy/kubernetes/base/csi-*.yaml to change that)"
            );
            false
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 403 => {
            tracing::warn!(
                driver = name,
                "the runner may not read CSIDriver objects, so job Pods use the privileged FUSE sidecar; grant `get` on `csidrivers` (storage.k8s.io) as deploy/kubernetes/base/runner-rbac.yaml does, or set SHOAL_K8S_CSI_DRIVER=none to stop looking"
            );
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(driver = name, error = %e, "could not look up the CSI driver: job Pods use the privileged FUSE sidecar");
            false
        }
        Err(_) => {
            tracing::warn!(
                driver = name,
                "looking up the CSI driver timed out: job Pods use the privileged FUSE sidecar"
            );
            false
        }
    }
}
