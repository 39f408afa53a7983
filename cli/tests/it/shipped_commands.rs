//! Every `shoal` server command line shoal ships in deploy/ (the Kubernetes base and
//! both overlays rendered with `kubectl kustomize`, `deploy/kubernetes/examples/**`,
//! `deploy/compose.yaml`, and the FUSE sidecar of the Pods the Kubernetes executor
//! renders)
//! is run through the built binary with `--check`, in the environment and with the
//! files its container would have, so a flag the binary does not know or a value it
//! refuses fails here instead of crash-looping a Pod. The deliberately broken command
//! lines in `deploy/kubernetes/tests/broken/command-line/` must fail the same check.
//!
//! How a container becomes a local run (documented so a failure can be reproduced):
//! - argv: `command` when it runs `shoal`, else `args` when the image is shoal's
//!   (its entrypoint is `shoal`); only server subcommands are checked;
//! - every path under a `volumeMount` is moved under a temp root (in argv, env values
//!   and the mounted config files); ConfigMap volumes get the rendered ConfigMap's data,
//!   Secret items a stand-in of their kind (a real token file for `*token`, a real PEM
//!   certificate or key for `*.crt`/`*.pem`/`*.key`), other volumes an empty dir;
//! - `env` literal values as written, `valueFrom` a dummy of the right kind
//!   (namespace `shoal`, Pod IP `10.0.0.7`, node `node-1`, a Secret's key `dummy`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const SERVERS: &[&str] = &["master", "worker", "runner", "mount", "up", "csi"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The YAML documents of `text`, as JSON values (empty documents skipped).
fn documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            if cur
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            {
                let v: Value = serde_saphyr::from_str(&cur)
                    .unwrap_or_else(|e| panic!("parse a YAML document: {e}\n{cur}"));
                docs.push(v);
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    docs
}

fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (kubectl kustomize renders the shipped overlays)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    documents(&String::from_utf8(out.stdout).unwrap())
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
}

/// The Pod spec of a workload document, if it has one.
fn pod_spec(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => doc.get("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.pointer("/spec/template/spec")
        }
        "CronJob" => doc.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    }
}

/// One container's shoal server command line, checked locally.
struct Invocation {
    what: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// Keeps the stand-in files alive until the check ran.
    _root: tempfile::TempDir,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `v` with a leading mount path moved under `root`.
fn relocate(v: &str, mounts: &[String], root: &Path) -> String {
    for m in mounts {
        if v == m || v.starts_with(&format!("{m}/")) {
            return format!("{}{v}", root.display());
        }
    }
    v.to_owned()
}

fn relocate_arg(a: &str, mounts: &[String], root: &Path) -> String {
    match a.split_once('=') {
        Some((flag, v)) if flag.starts_with("--") => {
            format!("{flag}={}", relocate(v, mounts, root))
        }
        _ => relocate(a, mounts, root),
    }
}

/// A file's content with every quoted mount path moved under `root` (the TOML config).
fn relocate_text(text: &str, mounts: &[String], root: &Path) -> String {
    let mut t = text.to_owned();
    for m in mounts {
        t = t.replace(&format!("\"{m}"), &format!("\"{}{m}", root.display()));
    }
    t
}

fn stand_in(path: &Path, key: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if key.ends_with("token") {
        shoal_wire::auth::load_or_create_token_file(path).unwrap();
    } else if key.ends_with(".key") {
        let k = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path, k.serialize_pem()).unwrap();
    } else if key.ends_with(".crt") || key.ends_with(".pem") {
        let c = rcgen::generate_simple_self_signed(vec!["shoal".into()]).unwrap();
        std::fs::write(path, c.cert.pem()).unwrap();
    } else {
        std::fs::write(path, "dummy").unwrap();
    }
}

/// The server command lines of `docs`; ConfigMaps are looked up in `docs`, then in
/// `shared` (the examples mount the base's `shoal-config`).
fn invocations(source: &str, docs: &[Value], shared: &[Value]) -> Vec<Invocation> {
    let config_maps: BTreeMap<&str, &Value> = shared
        .iter()
        .chain(docs)
        .filter(|d| d["kind"] == "ConfigMap")
        .filter_map(|d| Some((d["metadata"]["name"].as_str()?, &d["data"])))
        .collect();
    let mut out = Vec::new();
    for doc in docs {
        let Some(spec) = pod_spec(doc) else { continue };
        let name = doc["metadata"]["name"].as_str().unwrap_or("?");
        let containers = strings_of(spec, "initContainers")
            .into_iter()
            .chain(strings_of(spec, "containers"));
        for c in containers {
            let command = strings(&c["command"]);
            let args = strings(&c["args"]);
            let image = c["image"].as_str().unwrap_or_default();
            let argv: Vec<String> = if command.first().is_some_and(|p| p.ends_with("shoal")) {
                command[1..].iter().chain(&args).cloned().collect()
            } else if command.is_empty() && image.contains("shoal") {
                args
            } else {
                continue;
            };
            if !argv.first().is_some_and(|s| SERVERS.contains(&s.as_str())) {
                continue;
            }
            let root = tempfile::tempdir().unwrap();
            let r = root.path();
            let volume_mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
            let mut mounts: Vec<String> = volume_mounts
                .iter()
                .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
                .collect();
            // Longest first, so /var/lib/shoal/cache wins over /var/lib/shoal.
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
            for m in &volume_mounts {
                let path = m["mountPath"].as_str().unwrap();
                let dir = PathBuf::from(format!("{}{path}", r.display()));
                std::fs::create_dir_all(&dir).unwrap();
                let Some(v) = volumes.iter().find(|v| v["name"] == m["name"]) else {
                    continue;
                };
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    let data = config_maps
                        .get(cm)
                        .and_then(|d| d.as_object())
                        .unwrap_or_else(|| panic!("{source}: ConfigMap {cm} is not rendered"));
                    for (k, text) in data {
                        let text = relocate_text(text.as_str().unwrap(), &mounts, r);
                        std::fs::write(dir.join(k), text).unwrap();
                    }
                } else if v.get("secret").is_some() {
                    for item in v["secret"]["items"].as_array().into_iter().flatten() {
                        let p = item["path"].as_str().unwrap();
                        stand_in(&dir.join(p), p);
                    }
                }
            }
            let mut env = Vec::new();
            for e in c["env"].as_array().into_iter().flatten() {
                let n = e["name"].as_str().unwrap().to_owned();
                let v = if let Some(v) = e["value"].as_str() {
                    relocate(v, &mounts, r)
                } else if let Some(f) = e.pointer("/valueFrom/fieldRef/fieldPath") {
                    match f.as_str().unwrap() {
                        "metadata.namespace" => "shoal",
                        "status.podIP" | "status.hostIP" => "10.0.0.7",
                        "spec.nodeName" => "node-1",
                        _ => "pod-0",
                    }
                    .to_owned()
                } else if e.pointer("/valueFrom/resourceFieldRef").is_some() {
                    "1".to_owned()
                } else {
                    "dummy".to_owned()
                };
                env.push((n, v));
            }
            let argv = argv.iter().map(|a| relocate_arg(a, &mounts, r)).collect();
            out.push(Invocation {
                what: format!("{source}: {name}/{}", c["name"].as_str().unwrap_or("?")),
                argv,
                env,
                _root: root,
            });
        }
    }
    out
}

fn strings_of<'a>(spec: &'a Value, key: &str) -> Vec<&'a Value> {
    spec[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Runs `shoal ARGV --check` as the container would; `Err` with its output on failure.
fn check(inv: &Invocation) -> Result<String, String> {
    let home = inv._root.path().join("home");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(&inv.argv)
        .arg("--check")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) if stdout.starts_with("ok: ") => Ok(stdout),
        code => Err(format!("exit {code:?}: {stdout}{stderr}")),
    }
}

/// `${VAR:-default}` as Compose expands it with VAR unset.
fn compose_default(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').map_or(rest.len(), |e| i + e);
        let inner = &rest[i + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = rest.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// The server command lines of deploy/compose.yaml: each service's `command`, its
/// `environment` (defaults of `${VAR:-default}`), its volume and tmpfs targets moved
/// under a temp root, and a stand-in token for every `*_TOKEN_FILE` (the master
/// writes the real one into the shared volume on first start).
fn compose_invocations() -> Vec<Invocation> {
    let text = std::fs::read_to_string(repo().join("deploy/compose.yaml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    let mut out = Vec::new();
    for (name, svc) in doc["services"].as_object().unwrap() {
        let argv = strings(&svc["command"]);
        if !argv.first().is_some_and(|s| SERVERS.contains(&s.as_str())) {
            continue;
        }
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut mounts: Vec<String> = Vec::new();
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let target = match v.as_str() {
                Some(s) => s.split(':').nth(1).map(str::to_owned),
                None => v["target"].as_str().map(str::to_owned),
            };
            mounts.extend(target);
        }
        for t in svc["tmpfs"].as_array().into_iter().flatten() {
            mounts.extend(
                t.as_str()
                    .and_then(|t| t.split(':').next())
                    .map(str::to_owned),
            );
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            std::fs::create_dir_all(format!("{}{m}", r.display())).unwrap();
        }
        let mut env = Vec::new();
        for (k, v) in svc["environment"].as_object().into_iter().flatten() {
            let v = relocate(&compose_default(v.as_str().unwrap_or_default()), &mounts, r);
            if k.ends_with("_TOKEN_FILE") {
                stand_in(Path::new(&v), "token");
            }
            env.push((k.clone(), v));
        }
        let argv = argv.iter().map(|a| relocate_arg(a, &mounts, r)).collect();
        out.push(Invocation {
            what: format!("deploy/compose.yaml: {name}"),
            argv,
            env,
            _root: root,
        });
    }
    out
}

/// The Pod the Kubernetes executor renders for one attempt (the settings of the shipped
/// runner: mount root `/shoal`; with and without TLS), as a manifest document: its
/// FUSE sidecar runs `shoal mount ...`.
fn rendered_pods() -> Vec<Value> {
    use shoal_job_runner::executor::kubernetes::render::{PodSettings, render_pod};
    use shoal_job_runner::executor::{AttemptFiles, DatasetView, Launch};
    let f = |n: &str| PathBuf::from(format!("/var/lib/shoal/runner/{n}"));
    let launch = Launch {
        job_id: "job-1".into(),
        owner: "team-a".into(),
        task: "train".into(),
        index: 0,
        count: 1,
        attempt: 1,
        node: "node-1".into(),
        command: vec!["python3".into(), "fit.py".into()],
        env: Vec::new(),
        work_dir: f("work"),
        files: AttemptFiles {
            stdout: f("out"),
            stderr: f("err"),
            pid_file: f("pid"),
            exit_file: f("exit"),
            launch_lock: f("lock"),
        },
        links: Vec::new(),
        input_list: None,
        resources: Default::default(),
        pod: Default::default(),
        datasets: vec![DatasetView {
            name: "images".into(),
            path: PathBuf::from("/shoal/images"),
            write: false,
        }],
    };
    [false, true]
        .into_iter()
        .map(|tls_ca| {
            let settings = PodSettings {
                namespace: "shoal".into(),
                runner: "runner".into(),
                sidecar_image: "registry.example.com/shoal:0.1.0".into(),
                job_image: "registry.example.com/etl:7".into(),
                service_account: Some("shoal-job".into()),
                master: "shoal-master:7700".into(),
                mount_root: PathBuf::from("/shoal"),
                node_label: "kubernetes.io/hostname".into(),
                affinity_weight: 100,
                worker_cache_path: Some(PathBuf::from("/var/lib/shoal/cache")),
                tls_ca,
                image_pull_policy: None,
                sidecar_cpu_millis: 250,
                sidecar_memory_bytes: 512 << 20,
                grace: std::time::Duration::from_secs(10),
                csi_driver: None,
            };
            serde_json::to_value(render_pod(&settings, &launch).unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn shipped_command_lines_pass_check() {
    let k8s = repo().join("deploy/kubernetes");
    let mut all = Vec::new();
    let base = kustomize(&k8s.join("base"));
    for dir in ["base", "overlays/dev", "overlays/prod"] {
        let found = invocations(dir, &kustomize(&k8s.join(dir)), &[]);
        let servers: Vec<&str> = found.iter().map(|i| i.argv[0].as_str()).collect();
        for s in ["master", "worker", "runner", "csi"] {
            assert!(
                servers.contains(&s),
                "{dir} renders no `shoal {s}`: {servers:?}"
            );
        }
        all.extend(found);
    }
    let mut examples = Vec::new();
    yaml_files(&k8s.join("examples"), &mut examples);
    for f in examples {
        let docs = documents(&std::fs::read_to_string(&f).unwrap());
        all.extend(invocations(&f.display().to_string(), &docs, &base));
    }
    let pods = invocations("render.rs", &rendered_pods(), &[]);
    assert_eq!(pods.len(), 2, "one `shoal mount` sidecar per rendered Pod");
    assert!(
        pods[1].argv.iter().any(|a| a == "--ca"),
        "the TLS Pod's sidecar gets --ca: {:?}",
        pods[1].argv
    );
    all.extend(pods);
    let compose = compose_invocations();
    assert!(
        compose.len() >= 5,
        "compose: master, 2 workers, client, runner"
    );
    all.extend(compose);
    assert!(
        all.iter().any(|i| i.argv[0] == "mount"),
        "the job-pod example's FUSE sidecar (`shoal mount`) was not found"
    );
    // Four servers in each of base, dev, prod, the examples' sidecar and workers, and
    // compose's five, and the two rendered sidecars.
    assert!(all.len() >= 21, "{} command lines found", all.len());
    let failures: Vec<String> = all
        .iter()
        .filter_map(|i| {
            check(i)
                .err()
                .map(|e| format!("{} ({:?}): {e}", i.what, i.argv))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn broken_command_lines_fail_check() {
    let dir = repo().join("deploy/kubernetes/tests/broken/command-line");
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    assert!(
        files.len() >= 2,
        "an unknown flag and a bad value: {files:?}"
    );
    for f in files {
        let docs = documents(&std::fs::read_to_string(&f).unwrap());
        let inv = invocations(&f.display().to_string(), &docs, &[]);
        assert_eq!(inv.len(), 1, "{}: one shoal command line", f.display());
        let e = check(&inv[0]).expect_err(&format!("{} passed --check", f.display()));
        // Refused for its own mistake, not for a missing stand-in.
        assert!(
            e.contains("exectuor") || e.contains("affinity weight 500"),
            "{}: {e}",
            f.display()
        );
        assert!(e.starts_with("exit Some(2)"), "{}: {e}", f.display());
    }
}

/// The server command lines in the docs' code blocks (README.md, docs/*.md), one per
/// block line after joining `\` continuations, with these documented substitutions:
/// a leading `…/shoal` is the binary, `# …` comments and a trailing `&` are dropped,
/// `MASTER` is `127.0.0.1`, `"$(hostname)"` is `node-1`, every absolute path moves under
/// a temp root, `...` after a flag is a stand-in of that flag's file, and files named by
/// `--tls-cert`/`--tls-key` (one matching pair), `--ca`, `--cluster-token-file` and by
/// `export SHOAL_*_TOKEN_FILE=`/`SHOAL_CA=` earlier in the block are created, as are
/// the mountpoint of `shoal mount` and the local master's cluster token at its default
/// place (examples that leave the token out run next to a master).
fn doc_invocations() -> Vec<Invocation> {
    let mut files = vec![repo().join("README.md")];
    for e in std::fs::read_dir(repo().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_block = false;
        let mut exports: Vec<(String, String)> = Vec::new();
        let mut pending = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                exports.clear();
                pending.clear();
                continue;
            }
            if !in_block {
                continue;
            }
            let line = line.split(" #").next().unwrap_or_default().trim();
            if let Some(l) = line.strip_suffix('\\') {
                pending.push_str(l);
                pending.push(' ');
                continue;
            }
            let full = std::mem::take(&mut pending) + line;
            if let Some(kv) = full.strip_prefix("export ") {
                if let Some((k, v)) = kv.split_once('=')
                    && !v.contains("$(")
                {
                    exports.push((k.to_owned(), v.to_owned()));
                }
                continue;
            }
            let words: Vec<String> = full
                .replace("\"$(hostname)\"", "node-1")
                .split_whitespace()
                .filter(|w| *w != "&")
                .map(|w| w.replace("MASTER:", "127.0.0.1:"))
                .collect();
            let is_shoal = words
                .first()
                .is_some_and(|w| w == "shoal" || w.ends_with("/shoal"));
            let sub = words.get(1).map(String::as_str).unwrap_or_default();
            if !is_shoal || !SERVERS.contains(&sub) || words.get(2).is_some_and(|w| w == "list") {
                continue;
            }
            out.push(doc_invocation(&f, &words[1..], &exports));
        }
    }
    out
}

fn doc_invocation(f: &Path, words: &[String], exports: &[(String, String)]) -> Invocation {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_owned();
    let moved = |p: &str| {
        if p.starts_with('/') {
            format!("{}{p}", r.display())
        } else {
            p.to_owned()
        }
    };
    let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    stand_in(
        &r.join("home/.local/share/shoal/master/cluster.token"),
        "token",
    );
    let write = |p: &str, body: &str| {
        std::fs::create_dir_all(Path::new(p).parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    let mut argv = Vec::new();
    let mut prev = String::new();
    for w in words {
        let v = if w == "..." {
            moved(&format!("/stand-in/{}", prev.trim_start_matches('-')))
        } else {
            moved(w)
        };
        match prev.as_str() {
            "--tls-cert" => write(&v, &pair.cert.pem()),
            "--tls-key" => write(&v, &pair.signing_key.serialize_pem()),
            "--ca" => write(&v, &pair.cert.pem()),
            "--cluster-token-file" => stand_in(Path::new(&v), "token"),
            _ => {}
        }
        prev = w.clone();
        argv.push(v);
    }
    if argv[0] == "mount"
        && let Some(mp) = argv
            .iter()
            .skip(1)
            .rev()
            .find(|a| a.starts_with(&*r.to_string_lossy()))
    {
        std::fs::create_dir_all(mp).unwrap();
    }
    let env = exports
        .iter()
        .map(|(k, v)| {
            let v = moved(v);
            if k.ends_with("_TOKEN_FILE") {
                stand_in(Path::new(&v), "token");
            } else if k == "SHOAL_CA" {
                write(&v, &pair.cert.pem());
            }
            (k.clone(), v)
        })
        .collect();
    Invocation {
        what: format!("{}: shoal {}", f.display(), words.join(" ")),
        argv,
        env,
        _root: root,
    }
}

#[test]
fn documented_command_lines_pass_check() {
    let all = doc_invocations();
    let servers: Vec<&str> = all.iter().map(|i| i.argv[0].as_str()).collect();
    for s in SERVERS {
        assert!(
            servers.contains(s),
            "no documented `shoal {s}`: {servers:?}"
        );
    }
    let failures: Vec<String> = all
        .iter()
        .filter_map(|i| {
            check(i)
                .err()
                .map(|e| format!("{} ({:?}): {e}", i.what, i.argv))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
