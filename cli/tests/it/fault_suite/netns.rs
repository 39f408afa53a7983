//! Network namespaces of one scenario: a hub namespace holding a bridge, and one
//! namespace per node (master, workers, mount, store) joined to the bridge by a veth
//! pair, on 10.237.0.0/24. Every address lives inside the test's own namespaces; the
//! host's network is never touched.
//!
//! Namespaces are named `shoalfs-<pid>-<seq>-<node>`: unique per test process, deleted
//! when the [`Net`] drops (a panic included), and swept at start when the process that
//! made them is gone. Interface names only need to be unique inside a namespace, so the
//! hub's veth ends are `v<host>` and every node's end is `eth0`.
//!
//! Processes enter a node's namespace through `setns(2)` before `exec` (not `ip netns
//! exec`, which also makes a mount namespace of its own and would hide a FUSE mount
//! from the test).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "shoalfs-";
const NETNS_DIR: &str = "/run/netns";

/// The namespaces of one scenario; deletes them all when dropped.
pub struct Net {
    base: String,
    hub: String,
    nodes: Vec<String>,
}

/// One node's namespace and its address on the bridge.
#[derive(Clone)]
pub struct Node {
    pub ns: String,
    pub addr: Ipv4Addr,
    fd: Arc<File>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (the fault suite needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Deletes namespaces left by test processes that are gone (a `kill -9`ed run).
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

impl Net {
    /// A fresh hub namespace with a bridge.
    pub fn new() -> Net {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{base}-hub");
        let net = Net {
            base,
            hub: hub.clone(),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        net
    }

    /// A namespace for node `name` at 10.237.0.`host`, joined to the bridge.
    pub fn node(&mut self, name: &str, host: u8) -> Node {
        let ns = format!("{}-{name}", self.base);
        ip(&["netns", "add", &ns]);
        self.nodes.push(ns.clone());
        let hub_end = format!("v{host}");
        ip(&[
            "-n", &self.hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        ip(&["-n", &self.hub, "link", "set", &hub_end, "master", "br0"]);
        ip(&["-n", &self.hub, "link", "set", &hub_end, "up"]);
        let addr = Ipv4Addr::new(10, 237, 0, host);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let fd = File::open(format!("{NETNS_DIR}/{ns}")).expect("open the namespace");
        Node {
            ns,
            addr,
            fd: Arc::new(fd),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn enter(fd: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace file; only the calling thread changes.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Node {
    /// `HOST:PORT` of this node.
    pub fn at(&self, port: u16) -> String {
        format!("{}:{port}", self.addr)
    }

    /// Makes `cmd` run in this node's network namespace (and only that: the mount
    /// namespace stays the test's).
    pub fn enter(&self, cmd: &mut Command) {
        let fd = self.fd.clone();
        // SAFETY: runs in the forked child before exec and only calls setns(2).
        unsafe {
            cmd.pre_exec(move || enter(&fd));
        }
    }

    /// Runs `f` on a thread inside this node's namespace: sockets it opens belong to
    /// the namespace wherever they are used later.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let fd = self.fd.clone();
        std::thread::spawn(move || {
            enter(&fd).expect("enter the namespace");
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// Drops, inside this namespace, every packet arriving from `from` until the guard
    /// drops. Dropped on arrival, so the sender sees silence, not an error.
    pub fn drop_from(&self, from: Ipv4Addr) -> Dropping {
        let table = format!("shoalfs_from_{}", from.octets()[3]);
        let rules = format!(
            "table inet {table} {{\n chain in {{\n  type filter hook input priority 0;\n  ip saddr {from} drop\n }}\n}}\n"
        );
        nft(&self.ns, &rules);
        Dropping {
            ns: self.ns.clone(),
            table,
        }
    }
}

fn nft(ns: &str, rules: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft (the fault suite needs nftables: apt-get install nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// An nftables drop rule in one namespace; deleted when dropped.
pub struct Dropping {
    ns: String,
    table: String,
}

impl Drop for Dropping {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "delete", "table", "inet"])
            .arg(&self.table)
            .output();
    }
}

/// A partition between two nodes: each drops what arrives from the other.
pub struct Partition {
    _a: Dropping,
    _b: Dropping,
}

impl Partition {
    pub fn between(a: &Node, b: &Node) -> Partition {
        Partition {
            _a: a.drop_from(b.addr),
            _b: b.drop_from(a.addr),
        }
    }
}
