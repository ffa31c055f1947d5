//! Real NATS JetStream servers for the cluster tests: starts one `nats-server -js` or a 3-node
//! JetStream cluster on free loopback ports (client, route and monitoring ports), each node with
//! its own storage directory under one temp dir; waits until JetStream answers (a meta leader is
//! elected and `$JS.API.INFO` replies on every running node); kills, stops, pauses and restarts
//! single nodes; and kills every node on drop. No mock: the Debian `nats-server` that
//! `scripts/install-test-deps.sh` installs. `request` speaks the NATS text protocol over a plain
//! TCP socket, so the harness needs no NATS client crate.
//!
//! The servers run with `--no_advertise`: a client is never told about the other nodes, so an
//! ordertrack node given one URL stays on that node (killing it partitions the client).

use super::free_port;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect its JetStream meta leader (about 1 s on an idle box).
pub const READY_WAIT: Duration = Duration::from_secs(30);

/// The `nats-server` binary: `NATS_SERVER_BIN`, else the first of PATH, /usr/sbin, /usr/bin
/// (Debian installs it in /usr/sbin, which a normal user's PATH may lack).
pub fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server is not installed: run scripts/install-test-deps.sh")
}

/// One `nats-server` process and everything needed to start it again with the same identity,
/// ports and storage.
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    pub http_port: u16,
    pub store: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl NatsNode {
    /// `nats://127.0.0.1:PORT`, what a client is given.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats node {} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log file");
        let child = Command::new(server_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            send_signal(pid, sig);
        }
    }

    /// SIGKILL: no chance to flush or say goodbye to its routes.
    pub fn kill9(&mut self) {
        if self.paused {
            self.signal("CONT");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGTERM and wait (up to 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        if self.paused {
            self.signal("CONT");
        }
        let Some(mut c) = self.child.take() else {
            return;
        };
        send_signal(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                self.paused = false;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        self.paused = false;
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    /// The monitoring endpoint's JSON (`/jsz`, `/varz`, ...), `None` when it does not answer.
    pub fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        c.get(format!("http://127.0.0.1:{}{path}", self.http_port))
            .send()
            .ok()?
            .json()
            .ok()
    }

    /// A JetStream API or plain request through this node (see [`request`]).
    pub fn request(&self, subject: &str, body: &str) -> Result<String, String> {
        request(self.port, subject, body, Duration::from_secs(3))
    }

    /// True when this node knows a JetStream meta leader (clustered) and `$JS.API.INFO` answers
    /// without an error.
    fn jetstream_ready(&self, clustered: bool) -> bool {
        if clustered {
            let leader = self
                .monitor("/jsz")
                .and_then(|j| j["meta_cluster"]["leader"].as_str().map(str::to_owned));
            if leader.is_none_or(|l| l.is_empty()) {
                return false;
            }
        }
        match self.request("$JS.API.INFO", "") {
            Ok(reply) => serde_json::from_str::<serde_json::Value>(&reply)
                .map(|v| v.get("error").is_none())
                .unwrap_or(false),
            Err(_) => false,
        }
    }
}

/// A JetStream deployment of 1 or 3 (or any n) nodes; every node is killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    pub name: String,
    _tmp: tempfile::TempDir,
}

impl NatsCluster {
    /// One standalone JetStream server (no routes): for tests that need NATS, not its cluster.
    pub fn single() -> NatsCluster {
        NatsCluster::start(1)
    }

    /// `n` JetStream servers; for n > 1 they form one cluster (full mesh of routes). Returns when
    /// JetStream answers on every node.
    pub fn start(n: usize) -> NatsCluster {
        assert!(n >= 1);
        let tmp = tempfile::tempdir().expect("nats tempdir");
        let name = format!("otc{}", std::process::id());
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, c, _)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster_port, http_port))| {
                let node_name = format!("n{i}");
                let store = tmp.path().join(&node_name);
                std::fs::create_dir_all(&store).expect("nats store dir");
                let mut args = vec![
                    "-js".to_string(),
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-m".into(),
                    http_port.to_string(),
                    "-sd".into(),
                    store.display().to_string(),
                    "-n".into(),
                    node_name.clone(),
                ];
                if n > 1 {
                    args.extend([
                        "--cluster_name".to_string(),
                        name.clone(),
                        "-cluster".into(),
                        format!("nats://127.0.0.1:{cluster_port}"),
                        "-routes".into(),
                        routes.clone(),
                        "--no_advertise=true".into(),
                    ]);
                }
                NatsNode {
                    name: node_name,
                    port,
                    cluster_port,
                    http_port,
                    log: tmp.path().join(format!("n{i}.log")),
                    store,
                    args,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let mut cluster = NatsCluster {
            nodes,
            name,
            _tmp: tmp,
        };
        for node in &mut cluster.nodes {
            node.spawn();
        }
        cluster.wait_ready();
        cluster
    }

    /// The client URLs of the running nodes, comma separated (what `--nats` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Waits until JetStream answers on every running node (panics with the logs after
    /// [`READY_WAIT`]).
    pub fn wait_ready(&self) {
        let clustered = self.nodes.len() > 1;
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let ready = self
                .nodes
                .iter()
                .filter(|n| n.is_running() && !n.paused)
                .all(|n| n.jetstream_ready(clustered));
            if ready {
                return;
            }
            if Instant::now() > deadline {
                panic!("JetStream did not become ready; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL node `i`.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// SIGTERM node `i` and wait for it.
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again (same name, ports and storage) and waits until JetStream answers
    /// everywhere.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_ready();
    }

    /// Sends a request through the first running node.
    pub fn request(&self, subject: &str, body: &str) -> Result<String, String> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.is_running() && !n.paused)
            .ok_or("no running nats node")?;
        node.request(subject, body)
    }

    /// The index of the node leading stream `stream`'s replicas (0 when it cannot be told).
    pub fn stream_leader(&self, stream: &str) -> usize {
        let info = self
            .request(&format!("$JS.API.STREAM.INFO.{stream}"), "")
            .unwrap_or_default();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        let leader = info["cluster"]["leader"].as_str().unwrap_or_default();
        self.nodes
            .iter()
            .position(|n| n.name == leader)
            .unwrap_or(0)
    }

    /// Every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("---- {} ----\n{}", n.name, tail(&n.log_text(), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn dir(&self) -> &Path {
        self._tmp.path()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
    }
}

/// `kill -SIG pid` (SIGSTOP, SIGCONT, SIGTERM: std's `Child` only sends SIGKILL).
pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One request/reply over the NATS text protocol on a fresh connection to 127.0.0.1:`port`:
/// `CONNECT`, `SUB` an inbox, `PUB subject inbox body`, and the first `MSG` on the inbox is the
/// answer. JetStream's API (`$JS.API.*`) and a JetStream publish (whose reply is the
/// `{"stream":..,"seq":..}` ack) both work this way. `Err` on a timeout, `-ERR`, or I/O error.
pub fn request(port: u16, subject: &str, body: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let inbox = "_INBOX.ordertrack_test";
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1}}\r\n\
         SUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n{body}\r\nPING\r\n",
        body.len()
    );
    writer
        .write_all(hello.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!("no reply to {subject} within {timeout:?}"));
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        let l = line.trim_end();
        if l.starts_with("-ERR") {
            return Err(l.to_string());
        }
        if l == "PING" {
            let _ = writer.write_all(b"PONG\r\n");
            continue;
        }
        if let Some(rest) = l.strip_prefix("MSG ") {
            let len: usize = rest
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad MSG line: {l}"))?;
            let mut payload = vec![0u8; len + 2];
            reader
                .get_mut()
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            reader
                .read_exact(&mut payload)
                .map_err(|e| format!("read payload: {e}"))?;
            payload.truncate(len);
            return String::from_utf8(payload).map_err(|e| e.to_string());
        }
        // INFO, PONG, +OK: keep reading.
    }
}
