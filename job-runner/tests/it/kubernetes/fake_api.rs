//! A stand-in for the slice of the Kubernetes API the executor uses, served over real
//! HTTP on 127.0.0.1:0 to a real kube-rs client: Pod create/get/list/delete, watch
//! (with resource versions, from an event log, so nothing between a list and a watch is
//! lost), container logs (followed until the container ends), and Node list/watch. No
//! cluster can run here; the test drives the kubelet's part by hand: [`FakeApi::run`],
//! [`FakeApi::log`], [`FakeApi::exit`], [`FakeApi::wait_for_reason`], and the node
//! controller's with [`FakeApi::put_node`] and [`FakeApi::remove_node`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Node, Pod, PodStatus, Secret,
};
use tokio::sync::Notify;

#[derive(Default)]
struct PodEntry {
    pod: Pod,
    log: String,
    job_started: bool,
    job_ended: bool,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    pods: BTreeMap<String, PodEntry>,
    /// (resource version, event type, object) for watches.
    events: Vec<(u64, &'static str, Pod)>,
    /// (name, grace seconds) of every DELETE.
    deletes: Vec<(String, Option<u64>)>,
    creates: Vec<String>,
    secrets: BTreeMap<String, Secret>,
    /// Names of every Secret DELETE.
    secret_deletes: Vec<String>,
    nodes: BTreeMap<String, Node>,
    /// (resource version, event type, object) for Node watches.
    node_events: Vec<(u64, &'static str, Node)>,
    /// Names of the CSIDriver objects the cluster has.
    csi_drivers: std::collections::BTreeSet<String>,
    /// Answer every CSIDriver read with 403, as without the runner's RBAC rule.
    csi_forbidden: bool,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

pub struct Served {
    pub api: FakeApi,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json(code: StatusCode, v: &impl serde::Serialize) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    json(
        StatusCode::from_u16(code).unwrap(),
        &serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn query(raw: Option<String>) -> BTreeMap<String, String> {
    raw.unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// `k=v,k2=v2` (equality only, as the executor writes them).
fn matches(selector: Option<&String>, pod: &Pod) -> bool {
    labels_match(selector, &pod.metadata)
}

fn labels_match(
    selector: Option<&String>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = meta.labels.clone().unwrap_or_default();
    sel.split(',').all(|kv| {
        let (k, v) = kv.split_once('=').unwrap();
        labels.get(k).map(String::as_str) == Some(v)
    })
}

fn job_status(state: ContainerState) -> ContainerStatus {
    ContainerStatus {
        name: "job".into(),
        state: Some(state),
        ..Default::default()
    }
}

impl FakeApi {
    pub async fn serve() -> Served {
        let api = FakeApi::default();
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(list_or_watch).post(create),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_pod).delete(delete_pod),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(logs))
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                get(list_secrets).post(create_secret),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                get(get_secret).delete(delete_secret),
            )
            .route("/api/v1/nodes", get(list_or_watch_nodes))
            .route(
                "/apis/storage.k8s.io/v1/csidrivers/{name}",
                get(get_csi_driver),
            )
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Served { api, addr, task }
    }

    /// Records a change of `name` (already in `inner`) as a watch event.
    fn bump(inner: &mut Inner, name: &str, kind: &'static str) {
        inner.rv += 1;
        let rv = inner.rv;
        let e = inner.pods.get_mut(name).unwrap();
        e.pod.metadata.resource_version = Some(rv.to_string());
        let pod = e.pod.clone();
        inner.events.push((rv, kind, pod));
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut PodEntry)) {
        {
            let mut inner = self.inner.lock().unwrap();
            f(inner
                .pods
                .get_mut(name)
                .unwrap_or_else(|| panic!("no Pod {name}")));
            Self::bump(&mut inner, name, "MODIFIED");
        }
        self.changed.notify_waiters();
    }

    pub fn pod(&self, name: &str) -> Option<Pod> {
        self.inner
            .lock()
            .unwrap()
            .pods
            .get(name)
            .map(|e| e.pod.clone())
    }

    pub fn names(&self) -> Vec<String> {
        self.inner.lock().unwrap().pods.keys().cloned().collect()
    }

    pub fn deletes(&self) -> Vec<(String, Option<u64>)> {
        self.inner.lock().unwrap().deletes.clone()
    }

    pub fn creates(&self) -> Vec<String> {
        self.inner.lock().unwrap().creates.clone()
    }

    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.inner.lock().unwrap().secrets.get(name).cloned()
    }

    pub fn secret_deletes(&self) -> Vec<String> {
        self.inner.lock().unwrap().secret_deletes.clone()
    }

    /// Puts a Pod in place as if an earlier runner had created it.
    pub fn insert(&self, pod: Pod) {
        let name = pod.metadata.name.clone().unwrap();
        {
            let mut inner = self.inner.lock().unwrap();
            inner.pods.insert(
                name.clone(),
                PodEntry {
                    pod,
                    ..Default::default()
                },
            );
            Self::bump(&mut inner, &name, "ADDED");
        }
        self.changed.notify_waiters();
    }

    /// The kubelet started the job container.
    pub fn run(&self, name: &str) {
        self.update(name, |e| {
            e.job_started = true;
            e.pod.status = Some(PodStatus {
                phase: Some("Running".into()),
                container_statuses: Some(vec![job_status(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                })]),
                ..Default::default()
            });
        });
    }

    /// The job container wrote `text`.
    pub fn log(&self, name: &str, text: &str) {
        self.inner
            .lock()
            .unwrap()
            .pods
            .get_mut(name)
            .unwrap()
            .log
            .push_str(text);
        self.changed.notify_waiters();
    }

    /// The job container exited with `code`: the Pod ends Succeeded or Failed.
    pub fn exit(&self, name: &str, code: i32) {
        self.update(name, |e| {
            e.job_started = true;
            e.job_ended = true;
            e.pod.status = Some(PodStatus {
                phase: Some(if code == 0 { "Succeeded" } else { "Failed" }.into()),
                container_statuses: Some(vec![job_status(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: code,
                        ..Default::default()
                    }),
                    ..Default::default()
                })]),
                ..Default::default()
            });
        });
    }

    /// The job container cannot start, for `reason`.
    pub fn wait_for_reason(&self, name: &str, reason: &str) {
        self.update(name, |e| {
            e.pod.status = Some(PodStatus {
                phase: Some("Pending".into()),
                container_statuses: Some(vec![job_status(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some(format!("{reason} for the test")),
                    }),
                    ..Default::default()
                })]),
                ..Default::default()
            });
        });
    }

    /// Adds the Node, or replaces the one of the same name (a change of its labels,
    /// capacity, conditions, cordon), as the node controller would.
    pub fn put_node(&self, mut node: Node) {
        {
            let mut inner = self.inner.lock().unwrap();
            let name = node.metadata.name.clone().unwrap();
            inner.rv += 1;
            node.metadata.resource_version = Some(inner.rv.to_string());
            let kind = if inner.nodes.contains_key(&name) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let rv = inner.rv;
            inner.node_events.push((rv, kind, node.clone()));
            inner.nodes.insert(name, node);
        }
        self.changed.notify_waiters();
    }

    /// Deletes the Node (`kubectl delete node`).
    /// Installs (or, with `false`, removes) the CSIDriver `name`.
    pub fn set_csi_driver(&self, name: &str, installed: bool) {
        let mut inner = self.inner.lock().unwrap();
        if installed {
            inner.csi_drivers.insert(name.to_owned());
        } else {
            inner.csi_drivers.remove(name);
        }
    }

    /// Makes CSIDriver reads fail with 403 Forbidden.
    pub fn forbid_csi_drivers(&self) {
        self.inner.lock().unwrap().csi_forbidden = true;
    }

    pub fn remove_node(&self, name: &str) {
        {
            let mut inner = self.inner.lock().unwrap();
            let mut node = inner.nodes.remove(name).unwrap();
            inner.rv += 1;
            node.metadata.resource_version = Some(inner.rv.to_string());
            let rv = inner.rv;
            inner.node_events.push((rv, "DELETED", node));
        }
        self.changed.notify_waiters();
    }

    /// Removes the Pod as a `kubectl delete --force` would, without the runner asking.
    pub fn remove(&self, name: &str) {
        {
            let mut inner = self.inner.lock().unwrap();
            Self::bump(&mut inner, name, "DELETED");
            inner.pods.remove(name);
        }
        self.changed.notify_waiters();
    }
}

async fn create(State(api): State<FakeApi>, Path(ns): Path<String>, body: Bytes) -> Response {
    let mut pod: Pod = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return status(400, "BadRequest", &e.to_string()),
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.namespace.as_deref().is_some_and(|n| n != ns) {
        return status(400, "BadRequest", "namespace mismatch");
    }
    let out = {
        let mut inner = api.inner.lock().unwrap();
        if inner.pods.contains_key(&name) {
            return status(
                409,
                "AlreadyExists",
                &format!("pods \"{name}\" already exists"),
            );
        }
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
        inner.creates.push(name.clone());
        inner.pods.insert(
            name.clone(),
            PodEntry {
                pod,
                ..Default::default()
            },
        );
        FakeApi::bump(&mut inner, &name, "ADDED");
        inner.pods[&name].pod.clone()
    };
    api.changed.notify_waiters();
    json(StatusCode::CREATED, &out)
}

async fn get_pod(
    State(api): State<FakeApi>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match api.pod(&name) {
        Some(p) => json(StatusCode::OK, &p),
        None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
    }
}

async fn delete_pod(
    State(api): State<FakeApi>,
    Path((_ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let grace = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("gracePeriodSeconds").and_then(|g| g.as_u64()));
    let out = {
        let mut inner = api.inner.lock().unwrap();
        inner.deletes.push((name.clone(), grace));
        let Some(e) = inner.pods.get_mut(&name) else {
            return status(404, "NotFound", &format!("pods \"{name}\" not found"));
        };
        // The kubelet's part: a running job container gets SIGTERM and dies of it.
        if e.job_started && !e.job_ended {
            e.job_ended = true;
            e.pod.status = Some(PodStatus {
                phase: Some("Running".into()),
                container_statuses: Some(vec![job_status(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 143,
                        ..Default::default()
                    }),
                    ..Default::default()
                })]),
                ..Default::default()
            });
        }
        FakeApi::bump(&mut inner, &name, "DELETED");
        inner.pods.remove(&name).unwrap().pod
    };
    api.changed.notify_waiters();
    json(StatusCode::OK, &out)
}

async fn list_or_watch(
    State(api): State<FakeApi>,
    Path(_ns): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = query(raw);
    let selector = q.get("labelSelector").cloned();
    if q.get("watch").map(String::as_str) != Some("true") {
        let inner = api.inner.lock().unwrap();
        let items: Vec<&Pod> = inner
            .pods
            .values()
            .map(|e| &e.pod)
            .filter(|p| matches(selector.as_ref(), p))
            .collect();
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": inner.rv.to_string()},
                "items": items,
            }),
        );
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = futures::stream::unfold(from, move |from| {
        let api = api.clone();
        let selector = selector.clone();
        async move {
            loop {
                let notified = api.changed.notified();
                let next = {
                    let inner = api.inner.lock().unwrap();
                    inner
                        .events
                        .iter()
                        .find(|(rv, _, p)| *rv > from && matches(selector.as_ref(), p))
                        .map(|(rv, kind, p)| (*rv, *kind, p.clone()))
                };
                if let Some((rv, kind, pod)) = next {
                    let mut line = serde_json::to_vec(&serde_json::json!({
                        "type": kind, "object": pod,
                    }))
                    .unwrap();
                    line.push(b'\n');
                    return Some((Ok::<_, std::io::Error>(Bytes::from(line)), rv));
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn list_or_watch_nodes(State(api): State<FakeApi>, RawQuery(raw): RawQuery) -> Response {
    let q = query(raw);
    let selector = q.get("labelSelector").cloned();
    if q.get("watch").map(String::as_str) != Some("true") {
        let inner = api.inner.lock().unwrap();
        let items: Vec<&Node> = inner
            .nodes
            .values()
            .filter(|n| labels_match(selector.as_ref(), &n.metadata))
            .collect();
        return json(
            StatusCode::OK,
            &serde_json::json!({
                "kind": "NodeList", "apiVersion": "v1",
                "metadata": {"resourceVersion": inner.rv.to_string()},
                "items": items,
            }),
        );
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = futures::stream::unfold(from, move |from| {
        let api = api.clone();
        let selector = selector.clone();
        async move {
            loop {
                let notified = api.changed.notified();
                let next = {
                    let inner = api.inner.lock().unwrap();
                    inner
                        .node_events
                        .iter()
                        .find(|(rv, _, n)| {
                            *rv > from && labels_match(selector.as_ref(), &n.metadata)
                        })
                        .map(|(rv, kind, n)| (*rv, *kind, n.clone()))
                };
                if let Some((rv, kind, node)) = next {
                    let mut line = serde_json::to_vec(&serde_json::json!({
                        "type": kind, "object": node,
                    }))
                    .unwrap();
                    line.push(b'\n');
                    return Some((Ok::<_, std::io::Error>(Bytes::from(line)), rv));
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn logs(
    State(api): State<FakeApi>,
    Path((_ns, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = query(raw);
    let follow = q.get("follow").map(String::as_str) == Some("true");
    {
        let inner = api.inner.lock().unwrap();
        match inner.pods.get(&name) {
            None => return status(404, "NotFound", &format!("pods \"{name}\" not found")),
            Some(e) if !e.job_started => {
                return status(
                    400,
                    "BadRequest",
                    &format!("container \"job\" in pod \"{name}\" is waiting to start"),
                );
            }
            Some(_) => {}
        }
    }
    let stream = futures::stream::unfold(0usize, move |off| {
        let api = api.clone();
        let name = name.clone();
        async move {
            loop {
                let notified = api.changed.notified();
                let (chunk, ended) = {
                    let inner = api.inner.lock().unwrap();
                    match inner.pods.get(&name) {
                        Some(e) => (e.log[off.min(e.log.len())..].to_owned(), e.job_ended),
                        None => (String::new(), true),
                    }
                };
                if !chunk.is_empty() {
                    let next = off + chunk.len();
                    return Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), next));
                }
                if ended || !follow {
                    return None;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn create_secret(State(api): State<FakeApi>, body: Bytes) -> Response {
    let s: Secret = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return status(400, "BadRequest", &e.to_string()),
    };
    let name = s.metadata.name.clone().unwrap_or_default();
    let mut inner = api.inner.lock().unwrap();
    if inner.secrets.contains_key(&name) {
        return status(
            409,
            "AlreadyExists",
            &format!("secrets \"{name}\" already exists"),
        );
    }
    inner.secrets.insert(name, s.clone());
    json(StatusCode::CREATED, &s)
}

async fn get_csi_driver(State(api): State<FakeApi>, Path(name): Path<String>) -> Response {
    let inner = api.inner.lock().unwrap();
    if inner.csi_forbidden {
        return status(
            403,
            "Forbidden",
            &format!("csidrivers.storage.k8s.io \"{name}\" is forbidden"),
        );
    }
    if !inner.csi_drivers.contains(&name) {
        return status(
            404,
            "NotFound",
            &format!("csidrivers.storage.k8s.io \"{name}\" not found"),
        );
    }
    let d = k8s_openapi::api::storage::v1::CSIDriver {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        spec: Default::default(),
    };
    json(StatusCode::OK, &d)
}

async fn get_secret(
    State(api): State<FakeApi>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match api.secret(&name) {
        Some(s) => json(StatusCode::OK, &s),
        None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
    }
}

async fn delete_secret(
    State(api): State<FakeApi>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    let mut inner = api.inner.lock().unwrap();
    inner.secret_deletes.push(name.clone());
    match inner.secrets.remove(&name) {
        Some(s) => json(StatusCode::OK, &s),
        None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
    }
}

async fn list_secrets(State(api): State<FakeApi>, RawQuery(q): RawQuery) -> Response {
    let q = query(q);
    let sel = q.get("labelSelector");
    let items: Vec<Secret> = api
        .inner
        .lock()
        .unwrap()
        .secrets
        .values()
        .filter(|s| {
            let Some(sel) = sel.filter(|s| !s.is_empty()) else {
                return true;
            };
            let labels = s.metadata.labels.clone().unwrap_or_default();
            sel.split(',').all(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                labels.get(k).map(String::as_str) == Some(v)
            })
        })
        .cloned()
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "kind": "SecretList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"}, "items": items,
        }),
    )
}
