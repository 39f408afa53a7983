//! The shoal TOML shipped in deploy/kubernetes's ConfigMaps (base and every overlay)
//! is read by the real config parser (unknown keys are errors) and the worker's own
//! config validation, with the per-Pod values the manifests set by environment (node
//! name, Pod IP listeners), so a typo or an invalid tier fails here, not in a cluster.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use shoal_client::config::ClientToml;
use shoal_fuse::config::MountToml;
use shoal_job_runner::config::RunnerToml;
use shoal_master::config::MasterToml;
use shoal_wire::tls::TlsToml;
use shoal_worker::config::WorkerToml;
use shoal_worker::{WorkerArgs, WorkerConfig};

/// The configuration file's sections, each the owning crate's type (what `shoal`
/// reads with `--config`; unknown sections and keys are errors there too).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    master: MasterToml,
    #[serde(default)]
    worker: WorkerToml,
    #[serde(default)]
    #[allow(dead_code)]
    client: ClientToml,
    #[serde(default)]
    runner: RunnerToml,
    #[serde(default)]
    #[allow(dead_code)]
    mount: MountToml,
    #[serde(default)]
    #[allow(dead_code)]
    tls: TlsToml,
}

#[derive(Deserialize)]
struct ConfigMap {
    kind: String,
    data: std::collections::BTreeMap<String, String>,
}

fn config_maps() -> Vec<PathBuf> {
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files = vec![k8s.join("base/config.yaml")];
    for overlay in std::fs::read_dir(k8s.join("overlays")).unwrap() {
        let p = overlay.unwrap().path().join("config.yaml");
        if p.exists() {
            files.push(p);
        }
    }
    files
}

#[test]
fn deploy_config_maps_hold_valid_shoal_config() {
    let files = config_maps();
    assert!(
        files.len() >= 3,
        "base and the dev/prod overlays: {files:?}"
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let cm: ConfigMap =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_eq!(cm.kind, "ConfigMap");
        let toml = cm
            .data
            .get("shoal.toml")
            .unwrap_or_else(|| panic!("{} has no shoal.toml", f.display()));
        let file: ConfigFile =
            toml::from_str(toml).unwrap_or_else(|e| panic!("{}: {e}", f.display()));

        // The worker as the DaemonSet starts it: node and listeners from env.
        let args = WorkerArgs {
            node: Some("node-1".into()),
            listen: Some("10.0.0.7:7710".into()),
            data_listen: Some("10.0.0.7:7711".into()),
            ..Default::default()
        };
        let w = WorkerConfig::resolve(args, &file.worker)
            .unwrap_or_else(|e| panic!("{}: worker config: {e}", f.display()));
        let names: Vec<&str> = w.tiers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mem", "ssd"], "{}", f.display());
        // On the node, where the CSI plugin's mounts read them (worker.yaml).
        assert_eq!(w.tiers[0].path, Path::new("/dev/shm/shoal"));
        assert!(w.tiers[1].path.starts_with("/var/cache/shoal"));
        assert_eq!(w.master.as_deref(), Some("shoal-master:7700"));
        assert_eq!(w.metrics_listen, "0.0.0.0:7712");

        assert_eq!(file.master.listen.as_deref(), Some("0.0.0.0:7700"));
        assert_eq!(
            file.master.data_dir.as_deref(),
            Some("/var/lib/shoal/master")
        );
        assert_eq!(file.runner.listen.as_deref(), Some("0.0.0.0:7701"));
        assert_eq!(
            file.runner.data_dir.as_deref(),
            Some("/var/lib/shoal/runner")
        );
        assert_eq!(file.runner.master.as_deref(), Some("shoal-master:7700"));
    }
}
