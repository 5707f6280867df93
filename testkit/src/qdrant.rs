//! Real Qdrant servers for tests: one node, or a cluster of nodes talking
//! P2P on loopback, each with temporary storage and free ports. The binary is
//! the test tool in `shared/tools/qdrant/` (Qdrant's own server, built from
//! its source; its README says how), unpacked once into the cache and
//! checked against its SHA-256. Every process a [`QdrantNode`] starts is
//! killed when the node is dropped, which a panicking test does too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The version of the server in `shared/tools/qdrant/`: the Qdrant pulse's
/// remote-store tests run against.
pub const QDRANT_VERSION: &str = "1.18.3";

/// How long a node may take to answer `/readyz`, and a cluster to agree on
/// its peers and leader.
const READY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HarnessError(String);

type Result<T> = std::result::Result<T, HarnessError>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(HarnessError(message.into()))
}

/// The server binary: `PULSE_QDRANT_BIN` if set, else the shared tool
/// unpacked into `~/.cache/pulse/qdrant-<version>` (once; the unpacked file
/// is checked against `qdrant.sha256` before it is used).
pub fn binary() -> Result<PathBuf> {
    // Once per process: tests starting nodes at once must not unpack twice.
    static BINARY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_or_unpack().map_err(|e| e.0))
        .clone()
        .map_err(HarnessError)
}

fn find_or_unpack() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PULSE_QDRANT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .ok_or_else(|| HarnessError("neither XDG_CACHE_HOME nor HOME is set".into()))?
        .join("pulse");
    let target = cache.join(format!("qdrant-{QDRANT_VERSION}"));
    if target.is_file() {
        return Ok(target);
    }
    let tool = std::env::var_os("PULSE_QDRANT_TOOL").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/qdrant"),
        PathBuf::from,
    );
    let packed = tool.join("qdrant.xz");
    let expected = std::fs::read_to_string(tool.join("qdrant.sha256"))
        .map_err(|e| HarnessError(format!("cannot read {}/qdrant.sha256: {e}", tool.display())))?;
    let expected = expected
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    std::fs::create_dir_all(&cache)
        .map_err(|e| HarnessError(format!("cannot create {}: {e}", cache.display())))?;
    // Unpacked under a name of this process's own, then renamed into place,
    // so test processes unpacking at once never see half a file.
    let partial = cache.join(format!(
        "qdrant-{QDRANT_VERSION}.{}.partial",
        std::process::id()
    ));
    let out = std::fs::File::create(&partial)
        .map_err(|e| HarnessError(format!("cannot create {}: {e}", partial.display())))?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(&packed)
        .stdout(out)
        .status()
        .map_err(|e| HarnessError(format!("cannot run xz on {}: {e}", packed.display())))?;
    if !status.success() {
        return fail(format!(
            "xz could not unpack {} ({status})",
            packed.display()
        ));
    }
    let sum = Command::new("sha256sum")
        .arg(&partial)
        .output()
        .map_err(|e| HarnessError(format!("cannot run sha256sum: {e}")))?;
    let actual = String::from_utf8_lossy(&sum.stdout);
    if actual.split_whitespace().next() != Some(expected.as_str()) {
        let _ = std::fs::remove_file(&partial);
        return fail(format!(
            "{} unpacks to SHA-256 {actual}, not {expected}",
            packed.display()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .and_then(|()| std::fs::rename(&partial, &target))
        .map_err(|e| HarnessError(format!("cannot install {}: {e}", target.display())))?;
    Ok(target)
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| HarnessError(format!("no free loopback port: {e}")))
}

/// `GET path` on loopback: the status code and the body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    Ok((status, body))
}

/// One Qdrant process with its ports and storage; killed when dropped.
pub struct QdrantNode {
    binary: PathBuf,
    dir: PathBuf,
    http: u16,
    grpc: u16,
    /// Set in a cluster: this node's P2P port, and the first node's.
    p2p: Option<(u16, Option<u16>)>,
    child: Option<Child>,
    /// Kept for a node alone; a cluster keeps its nodes' directory.
    _owned: Option<tempfile::TempDir>,
}

impl QdrantNode {
    /// A single node (cluster mode off) with temporary storage, ready.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()
            .map_err(|e| HarnessError(format!("no temporary directory: {e}")))?;
        let mut node = QdrantNode::new(dir.path().to_path_buf(), None)?;
        node._owned = Some(dir);
        node.spawn()?;
        node.wait_ready()?;
        Ok(node)
    }

    fn new(dir: PathBuf, p2p: Option<(u16, Option<u16>)>) -> Result<Self> {
        Ok(QdrantNode {
            binary: binary()?,
            dir,
            http: free_port()?,
            grpc: free_port()?,
            p2p,
            child: None,
            _owned: None,
        })
    }

    /// The gRPC address pulse connects to (`--qdrant-url`).
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// The REST address, for checks the tests make themselves.
    pub fn http_port(&self) -> u16 {
        self.http
    }

    /// Where the node writes collection snapshots (one folder per
    /// collection), as `file://` recovery locations name them.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn spawn(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| HarnessError(format!("cannot create {}: {e}", self.dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .map_err(|e| HarnessError(format!("cannot open the node's log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError(format!("cannot open the node's log: {e}")))?;
        let mut command = Command::new(&self.binary);
        command
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", self.http.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc.to_string())
            .env("QDRANT__STORAGE__STORAGE_PATH", self.dir.join("storage"))
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.dir.join("snapshots"),
            )
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN")
            .arg("--disable-telemetry")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some((p2p, bootstrap)) = self.p2p {
            command
                .env("QDRANT__CLUSTER__ENABLED", "true")
                .env("QDRANT__CLUSTER__P2P__PORT", p2p.to_string())
                .arg("--uri")
                .arg(format!("http://127.0.0.1:{p2p}"));
            if let Some(first) = bootstrap {
                command
                    .arg("--bootstrap")
                    .arg(format!("http://127.0.0.1:{first}"));
            }
        }
        let child = command
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// The last lines the node wrote, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until the node answers `/readyz`.
    pub fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if !self.is_running() {
                return fail(format!(
                    "qdrant on port {} exited:\n{}",
                    self.http,
                    self.log_tail()
                ));
            }
            if matches!(http_get(self.http, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                return fail(format!(
                    "qdrant on port {} was not ready within {READY_WITHIN:?}:\n{}",
                    self.http,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or an out-of-memory kill would end it; its
    /// storage stays for [`QdrantNode::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a child this node started and has not
                // yet reaped, so the pid is still that process's.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on its ports and storage, and waits until it
    /// is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready()
    }
}

impl Drop for QdrantNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes in cluster mode on loopback, the first one bootstrapping the rest.
pub struct QdrantCluster {
    nodes: Vec<QdrantNode>,
    _dir: tempfile::TempDir,
}

impl QdrantCluster {
    /// `size` nodes, ready, every one seeing all peers and one leader.
    pub fn start(size: usize) -> Result<Self> {
        if size == 0 {
            return fail("a cluster needs a node");
        }
        let dir = tempfile::tempdir()
            .map_err(|e| HarnessError(format!("no temporary directory: {e}")))?;
        let first_p2p = free_port()?;
        let mut nodes = Vec::with_capacity(size);
        for i in 0..size {
            let p2p = if i == 0 { first_p2p } else { free_port()? };
            let bootstrap = (i > 0).then_some(first_p2p);
            let mut node =
                QdrantNode::new(dir.path().join(format!("node{i}")), Some((p2p, bootstrap)))?;
            node.spawn()?;
            // The first node must be up before the others join it.
            if i == 0 {
                node.wait_ready()?;
            }
            nodes.push(node);
        }
        let mut cluster = QdrantCluster { nodes, _dir: dir };
        cluster.wait_formed()?;
        Ok(cluster)
    }

    /// Waits until every running node is ready and lists every node as a
    /// peer, with a leader elected.
    pub fn wait_formed(&mut self) -> Result<()> {
        let size = self.nodes.len();
        let started = Instant::now();
        loop {
            let mut formed = true;
            for node in &mut self.nodes {
                if !node.is_running() {
                    continue;
                }
                node.wait_ready()?;
                formed &= match http_get(node.http, "/cluster") {
                    Ok((200, body)) => {
                        let info: serde_json::Value =
                            serde_json::from_str(&body).unwrap_or_default();
                        let result = &info["result"];
                        let peers = result["peers"].as_object().map_or(0, |p| p.len());
                        peers == size && !result["raft_info"]["leader"].is_null()
                    }
                    _ => false,
                };
            }
            if formed {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                return fail(format!(
                    "the {size} Qdrant nodes did not form a cluster within {READY_WITHIN:?}:\n{}",
                    self.nodes[0].log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&mut self, index: usize) -> &mut QdrantNode {
        &mut self.nodes[index]
    }

    /// The gRPC address of the first node, the one clients are given.
    pub fn grpc_url(&self) -> String {
        self.nodes[0].grpc_url()
    }

    /// Stops every node (SIGTERM), as an operator stopping the cluster would.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Starts every stopped node again and waits until the cluster has
    /// formed anew.
    pub fn start_all(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if !node.is_running() {
                node.spawn()?;
            }
        }
        self.wait_formed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_starts_answers_and_is_gone_when_dropped() {
        let mut node = QdrantNode::start().unwrap();
        let (status, body) = http_get(node.http_port(), "/").unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(QDRANT_VERSION), "{body}");
        let port = node.http_port();
        node.kill();
        assert!(!node.is_running());
        node.restart().unwrap();
        drop(node);
        assert!(http_get(port, "/readyz").is_err());
    }

    #[test]
    fn three_nodes_form_a_cluster() {
        let mut cluster = QdrantCluster::start(3).unwrap();
        let port = cluster.node(2).http_port();
        let (status, body) = http_get(port, "/cluster").unwrap();
        assert_eq!(status, 200, "{body}");
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(info["result"]["peers"].as_object().unwrap().len(), 3);
    }
}
