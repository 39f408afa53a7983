//! A scenario's cluster: a real `shoal master`, workers and `shoal mount` as child
//! processes, each in its own network namespace ([`super::netns`]), and dataset `d` of
//! files of random bytes, either in a directory (`file://`) or in the S3 fixture behind
//! a [`LinkProxy`] that answers in a namespace of its own (the store node).
//!
//! The mount reads every byte through the workers (no block cache, no page cache, no
//! readahead, not on a worker's node), so each read of the fan-out crosses the network.
//! Everything stops in all exit paths: the mount is detached, processes are killed,
//! namespaces deleted (field order of [`Cluster`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use shoal_testkit::{
    LinkProfile, LinkProxy, S3Fixture, TestProcess, temp_dir, wait_for, wait_until,
};

use super::netns::{Net, Node};
use crate::mount::{MountedProcess, mountpoint, wait_mounted};
use crate::support::{Outcome, SHOAL, auth_env, register};

const MASTER_PORT: u16 = 7700;
const STORE_PORT: u16 = 9000;

/// Where dataset `d` lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A local directory (`file://`): every node reads it directly.
    Dir,
    /// The S3 fixture behind a proxy on the store node.
    S3,
}

/// What a scenario changes about the cluster.
pub struct Options {
    pub workers: usize,
    pub files: usize,
    pub file_size: usize,
    pub store: Store,
    /// Read every file once through the mount before the scenario starts.
    pub warm: bool,
    /// Worker `i`'s `--tier` (default: a 256 MiB tier in a temp directory).
    pub tier: Option<Box<dyn Fn(usize) -> String>>,
    /// The workers' soft and hard RLIMIT_NOFILE.
    pub worker_nofile: Option<u64>,
    pub worker_args: Vec<String>,
    pub mount_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 3,
            files: 4,
            file_size: 12 << 20,
            store: Store::Dir,
            warm: true,
            tier: None,
            worker_nofile: None,
            worker_args: Vec::new(),
            mount_args: Vec::new(),
        }
    }
}

pub struct Cluster {
    // Dropped first: detaches the mount, so no reader stays blocked on it.
    _mounted: MountedProcess,
    pub mount: TestProcess,
    pub workers: Vec<TestProcess>,
    pub master: TestProcess,
    pub proxy: Option<LinkProxy>,
    _s3: Option<S3Fixture>,
    pub mp: PathBuf,
    pub files: Arc<Vec<Vec<u8>>>,
    pub master_node: Node,
    pub worker_nodes: Vec<Node>,
    pub mount_node: Node,
    pub master_dir: tempfile::TempDir,
    _dirs: Vec<tempfile::TempDir>,
    _net: Net,
}

impl Cluster {
    pub async fn start(tag: &str, o: Options) -> Cluster {
        let mut net = Net::new();
        let master_node = net.node("master", 1);
        let worker_nodes: Vec<Node> = (0..o.workers)
            .map(|i| net.node(&format!("w{i}"), 11 + i as u8))
            .collect();
        let mount_node = net.node("mount", 20);
        let master_addr = master_node.at(MASTER_PORT);

        let mut dirs = Vec::new();
        let files: Vec<Vec<u8>> = (0..o.files)
            .map(|_| (0..o.file_size).map(|_| rand::random::<u8>()).collect())
            .collect();
        let (mut s3, mut proxy) = (None, None);
        let (uri, options) = match o.store {
            Store::Dir => {
                let ufs = temp_dir(&format!("fs-{tag}-ufs"));
                for (i, bytes) in files.iter().enumerate() {
                    std::fs::write(ufs.path().join(format!("f{i}")), bytes).unwrap();
                }
                let uri = format!("file://{}", ufs.path().display());
                dirs.push(ufs);
                (uri, Vec::new())
            }
            Store::S3 => {
                let fixture = S3Fixture::start().await;
                for (i, bytes) in files.iter().enumerate() {
                    fixture
                        .operator()
                        .write(&format!("d/f{i}"), bytes.clone())
                        .await
                        .unwrap();
                }
                let store_node = net.node("store", 30);
                let listener = store_node
                    .run(|| std::net::TcpListener::bind(("0.0.0.0", STORE_PORT)))
                    .expect("bind the store proxy in its namespace");
                let upstream = fixture
                    .endpoint()
                    .trim_start_matches("http://")
                    .parse()
                    .expect("the S3 fixture's address");
                let p = LinkProxy::start_on(
                    listener,
                    upstream,
                    LinkProfile {
                        first_byte: Duration::ZERO,
                        bandwidth: 0,
                    },
                )
                .unwrap();
                let mut options: Vec<String> = fixture
                    .options()
                    .into_iter()
                    .filter(|(k, _)| k != "endpoint")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                options.push(format!("endpoint=http://{}", store_node.at(STORE_PORT)));
                let uri = fixture.uri("d");
                (s3, proxy) = (Some(fixture), Some(p));
                (uri, options)
            }
        };

        let master_dir = temp_dir(&format!("fs-{tag}-master"));
        let master = start_master(&master_node, master_dir.path()).await;
        let mut workers = Vec::new();
        for (i, node) in worker_nodes.iter().enumerate() {
            let dir = temp_dir(&format!("fs-{tag}-w{i}"));
            let tier = match &o.tier {
                Some(f) => f(i),
                None => format!("mem:{}:256MiB", dir.path().join("mem").display()),
            };
            workers
                .push(start_worker(node, &master_addr, &format!("fs-{tag}-w{i}"), &tier, &o).await);
            dirs.push(dir);
        }
        let mut create = vec!["dataset", "create", "d", &uri];
        for opt in &options {
            create.extend(["--option", opt]);
        }
        ctl(&mount_node, &master_addr, &create).ok();
        let n = o.workers;
        let (mn, ma) = (mount_node.clone(), master_addr.clone());
        wait_until(Duration::from_secs(30), "every worker in the set", || {
            let out = ctl(&mn, &ma, &["-o", "json", "worker", "list"]);
            async move {
                out.code == 0
                    && out.json()["workers"]
                        .as_array()
                        .is_some_and(|a| a.len() == n)
            }
        })
        .await;

        let (mdir, mp) = mountpoint();
        dirs.push(mdir);
        let mounted = MountedProcess {
            path: mp.clone(),
            pid: None,
        };
        let mut cmd = Command::new(SHOAL);
        cmd.arg("mount")
            .arg(&mp)
            .args([
                "--dataset",
                "d",
                "--node",
                &format!("fs-{tag}-mount"),
                "--block-cache",
                "0",
                "--readahead-blocks",
                "0",
                "--direct-io",
                "--no-passthrough",
                "--metrics-listen",
                &mount_node.at(7713),
            ])
            .args(&o.mount_args)
            .env("SHOAL_MASTER", &master_addr)
            .env_remove("SHOAL_CONFIG");
        auth_env(&mut cmd, &master_addr);
        mount_node.enter(&mut cmd);
        let mut mount = TestProcess::spawn("shoal mount", cmd).unwrap();
        wait_mounted(&mut mount, &mp).await;
        if o.warm {
            // Every block lands in its owner's tier.
            for (i, want) in files.iter().enumerate() {
                let got = std::fs::read(mp.join(format!("f{i}"))).unwrap();
                assert!(got == *want, "warm read of f{i} returned other bytes");
            }
        }
        Cluster {
            _mounted: mounted,
            mount,
            workers,
            master,
            proxy,
            _s3: s3,
            mp,
            files: Arc::new(files),
            master_node,
            worker_nodes,
            mount_node,
            master_dir,
            _dirs: dirs,
            _net: net,
        }
    }

    /// Starts the master again on its data directory and address (after a kill).
    pub async fn restart_master(&mut self) {
        self.master = start_master(&self.master_node, self.master_dir.path()).await;
    }

    /// The worker caching the most bytes: the one whose fault readers are sure to meet
    /// (placement may give another worker no block of a small dataset at all).
    pub fn busiest_worker(&self) -> usize {
        (0..self.workers.len())
            .max_by_key(|&i| {
                metric(&self.worker_metrics(i), "shoal_worker_tier_used_bytes", "") as u64
            })
            .expect("a worker")
    }

    /// Worker `i`'s Prometheus metrics.
    pub fn worker_metrics(&self, i: usize) -> String {
        scrape(&self.worker_nodes[i], &self.worker_nodes[i].at(7712))
    }
}

/// Runs `shoal ARGS` in `node`'s namespace against the master at `master`.
pub fn ctl(node: &Node, master: &str, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(SHOAL);
    cmd.args(args)
        .env("SHOAL_MASTER", master)
        .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, master);
    node.enter(&mut cmd);
    let out = cmd.output().expect("run shoal");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// GET /metrics at `addr`, from inside `node`'s namespace.
pub fn scrape(node: &Node, addr: &str) -> String {
    use std::io::{Read, Write};
    let addr = addr.to_owned();
    node.run(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect to /metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read /metrics");
        body
    })
}

/// The value of the first sample of `name` whose labels contain `label` (0 if none).
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn start_master(node: &Node, data_dir: &Path) -> TestProcess {
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "master",
        "--listen",
        &node.at(MASTER_PORT),
        "--metrics-listen",
        &node.at(7701),
        "--data-dir",
    ])
    .arg(data_dir)
    .env_remove("SHOAL_CONFIG");
    node.enter(&mut cmd);
    let mut proc = TestProcess::spawn("shoal master", cmd).unwrap();
    wait_for(Duration::from_secs(30), "shoal master to listen", || {
        let log = proc.log_contents();
        let running = proc.is_running();
        async move {
            assert!(running, "shoal master exited early:\n{log}");
            log.contains("shoal master listening on ").then_some(())
        }
    })
    .await;
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    register(
        &node.at(MASTER_PORT),
        &token,
        &data_dir.join("cluster.token"),
    );
    proc
}

async fn start_worker(
    node: &Node,
    master: &str,
    name: &str,
    tier: &str,
    o: &Options,
) -> TestProcess {
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "worker",
        "--master",
        master,
        "--node",
        name,
        // A node of its own: the mount reads it over the (faulty) network.
        "--host-id",
        name,
        "--listen",
        &node.at(7710),
        "--data-listen",
        &node.at(7711),
        "--metrics-listen",
        &node.at(7712),
        "--tier",
        tier,
        "--heartbeat-interval",
        "200ms",
    ])
    .args(&o.worker_args)
    .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, master);
    node.enter(&mut cmd);
    if let Some(n) = o.worker_nofile {
        // SAFETY: runs in the forked child before exec and only calls setrlimit(2).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut p = TestProcess::spawn("shoal worker", cmd).unwrap();
    wait_for(Duration::from_secs(30), "shoal worker to serve", || {
        let running = p.is_running();
        let log = p.log_contents();
        async move {
            assert!(running, "shoal worker exited early:\n{log}");
            log.contains("serving data on").then_some(())
        }
    })
    .await;
    p
}
