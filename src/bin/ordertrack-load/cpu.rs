//! The `cpu` scenario: server CPU per operation, measured from outside. For each HTTP path
//! (status 200, status 304 on `If-None-Match`, details, history page 1 of 10, a durable
//! placement) `wrk` drives the running ordertrack server and then a bare hyper server (a child
//! process answering the same status and body size), in alternating rounds of the same run.
//! Each window reads the server's utime+stime from `/proc/PID/stat` before and after and
//! divides by the operations wrk completed; wrk's own CPU (this process's reaped-children
//! time) is reported as its share of one core, so a reader can see it was not the limit.
//! The table gives the median of the rounds for each figure.

use super::{minter, place_orders, Cli, Http, R};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use uuid::Uuid;

pub struct Plan {
    pub connections: usize,
    pub seconds: u64,
    pub rounds: usize,
    /// Comma-separated path names (see `PATHS`), or `all`.
    pub only: String,
    /// The wrk binary.
    pub wrk: String,
    /// Connections for the write path (durable placements).
    pub writers: usize,
}

/// Path names, in table order.
const PATHS: [&str; 5] = ["status", "status304", "details", "history", "place"];

/// One request shape as wrk sends it.
struct Target {
    name: &'static str,
    label: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    /// What the bare server answers: status and body size.
    status: u16,
    size: usize,
}

/// One wrk window against one server.
#[derive(Clone, Copy, Default)]
pub(super) struct Window {
    pub(super) ops: u64,
    pub(super) secs: f64,
    pub(super) server_cpu: f64,
    pub(super) client_cpu: f64,
    pub(super) p99_ms: f64,
}

impl Window {
    pub(super) fn us_per_op(&self) -> f64 {
        self.server_cpu * 1e6 / self.ops.max(1) as f64
    }
    pub(super) fn rate(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    pub(super) fn client_share(&self) -> f64 {
        self.client_cpu / self.secs.max(1e-9)
    }
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Fields 14+15 (utime, stime) of `/proc/PID/stat`, or 16+17 (cutime, cstime) with `children`,
/// in seconds.
pub(super) fn cpu_seconds(pid: &str, children: bool) -> R<f64> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("{pid}: {e}"))?;
    // The command name may hold spaces: count fields after its closing parenthesis.
    let rest = text.rsplit_once(')').ok_or("stat: no )")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (a, b) = if children { (13, 14) } else { (11, 12) };
    let n = |i: usize| {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or("stat field")
    };
    Ok((n(a)? + n(b)?) / ticks_per_sec())
}

/// Runs wrk once and parses completed operations and p99.
fn wrk(plan: &Plan, t: &Target, addr: SocketAddr, conns: usize, script: &str) -> R<(u64, f64)> {
    let mut cmd = Command::new(&plan.wrk);
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{}s", plan.seconds),
    ])
    .args(["--latency", "-s", script])
    .arg(format!("http://{addr}{}", t.path))
    .env("WRK_METHOD", t.method)
    .env("WRK_BODY", t.body.as_deref().unwrap_or(""))
    .stdin(Stdio::null());
    for (k, v) in &t.headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd.output().map_err(|e| format!("{}: {e}", plan.wrk))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wrk failed: {text}"));
    }
    let mut total = None;
    let mut bad = 0u64;
    let mut p99 = f64::NAN;
    for line in text.lines() {
        let l = line.trim();
        if let Some(n) = l
            .split(" requests in ")
            .next()
            .filter(|_| l.contains(" requests in "))
        {
            total = n.trim().parse::<u64>().ok();
        } else if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
            bad += n.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = wrk_ms(v.trim());
        } else if l.starts_with("Socket errors:") {
            return Err(format!("wrk: {l}"));
        }
    }
    if bad > 0 {
        return Err(format!("{}: {bad} answers were not 2xx/3xx", t.name));
    }
    Ok((
        total.ok_or_else(|| format!("no request count in wrk output: {text}"))?,
        p99,
    ))
}

/// wrk's latency text (`512.00us`, `1.23ms`, `2.00s`) in milliseconds.
fn wrk_ms(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map(|x| x * scale).unwrap_or(f64::NAN)
}

/// One measured window: server CPU and wrk's CPU around one wrk run.
fn window(
    plan: &Plan,
    t: &Target,
    addr: SocketAddr,
    pid: &str,
    conns: usize,
    script: &str,
) -> R<Window> {
    let s0 = cpu_seconds(pid, false)?;
    let c0 = cpu_seconds("self", true)?;
    let t0 = Instant::now();
    let (ops, p99_ms) = wrk(plan, t, addr, conns, script)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Window {
        ops,
        secs,
        server_cpu: cpu_seconds(pid, false)? - s0,
        client_cpu: cpu_seconds("self", true)? - c0,
        p99_ms,
    })
}

/// A baseline server: this binary re-run as a hidden subcommand, in its own process.
pub(super) struct Bare {
    pub(super) child: Child,
    pub(super) addr: SocketAddr,
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bare {
    /// Starts `subcommand` with `args` and `--port`, and waits until it accepts connections.
    pub(super) async fn start(subcommand: &str, args: &[String]) -> R<Bare> {
        let port = super::free_port()?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args([subcommand, "--port", &port.to_string()])
            .args(args)
            .spawn()
            .map_err(|e| e.to_string())?;
        let bare = Bare {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        for _ in 0..100 {
            if TcpStream::connect(bare.addr).await.is_ok() {
                return Ok(bare);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("{subcommand} did not start"))
    }

    pub(super) fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

async fn start_bare(status: u16, size: usize) -> R<Bare> {
    let args = [
        "--body-size".to_string(),
        size.to_string(),
        "--status".into(),
        status.to_string(),
    ];
    Bare::start("bare-server", &args).await
}

/// Sends one request as wrk would and returns (status, body length, etag).
async fn probe(addr: SocketAddr, t: &Target) -> R<(u16, usize, Option<String>)> {
    let mut http = Http::connect(addr).await?;
    let mut b = Request::builder()
        .method(t.method)
        .uri(t.path.as_str())
        .header("host", "load");
    for (k, v) in &t.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = Bytes::from(t.body.clone().unwrap_or_default());
    let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
    http.sender.ready().await.map_err(|e| e.to_string())?;
    let resp = http
        .sender
        .send_request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = super::body_of(resp).await?;
    Ok((status, body.len(), etag))
}

/// The cells both CPU tables share: the median µs per operation of each side and the median of
/// the per-round ratios (a round under one clock tick of CPU on either side gives no ratio).
pub(super) fn cpu_cells(ot: &[Window], base: &[Window]) -> String {
    let ratios: Vec<f64> = ot
        .iter()
        .zip(base)
        .filter(|(a, b)| a.server_cpu > 0.0 && b.server_cpu > 0.0)
        .map(|(a, b)| a.us_per_op() / b.us_per_op())
        .collect();
    let med = |v: &[Window]| median(v.iter().map(Window::us_per_op).collect());
    let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!(
        "{:.2} | {:.2} | **{:.2}×** ({})",
        med(ot),
        med(base),
        median(ratios),
        list.join(", ")
    )
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    super::percentile(&v, 0.5)
}

/// The request shapes, probed against the server so the bare server can mirror them.
async fn targets(cli: &Cli, only: &[&str]) -> R<Vec<Target>> {
    let m = minter(&cli.secret)?;
    let restaurant = Uuid::new_v4();
    let service = m
        .mint(Uuid::new_v4(), &["OrderService".into()], &[], 3600)
        .map_err(|e| e.to_string())?;
    let customer = Uuid::new_v4();
    // 100 orders: the history page is page 1 of 10 (page size 10).
    let orders = place_orders(cli.addr, &service, restaurant, &[customer; 100]).await?;
    let token = m
        .mint(customer, &[], &[], 3600)
        .map_err(|e| e.to_string())?;
    let bearer = ("Authorization".to_string(), format!("Bearer {token}"));
    let get = |name, label, path: String| Target {
        name,
        label,
        method: "GET",
        path,
        headers: vec![bearer.clone()],
        body: None,
        status: 200,
        size: 0,
    };
    let status_path = format!("/api/v1/orders/{}/status", orders[0]);
    let mut all = vec![
        get("status", "GET /status, 200", status_path.clone()),
        get(
            "status304",
            "GET /status, 304 on If-None-Match",
            status_path,
        ),
        get(
            "details",
            "GET /orders/{id} details",
            format!("/api/v1/orders/{}", orders[0]),
        ),
        get(
            "history",
            "GET /orders/my, page 1 of 10",
            "/api/v1/orders/my?pageNumber=1&pageSize=10".into(),
        ),
        Target {
            name: "place",
            label: "POST /orders, durable placement",
            method: "POST",
            path: "/api/v1/orders".into(),
            headers: vec![
                ("Authorization".into(), format!("Bearer {service}")),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: Some(super::order_body(customer, restaurant)),
            status: 201,
            size: 0,
        },
    ];
    all.retain(|t| only.contains(&t.name));
    for t in &mut all {
        let (st, len, etag) = probe(cli.addr, t).await?;
        if t.name == "status304" {
            let etag = etag.ok_or("no ETag on GET /status")?;
            t.headers.push(("If-None-Match".into(), etag));
            let (st, len, _) = probe(cli.addr, t).await?;
            if st != 304 {
                return Err(format!("If-None-Match answered {st}"));
            }
            t.status = 304;
            t.size = len;
            continue;
        }
        if st != t.status {
            return Err(format!("{} answered {st}", t.label));
        }
        t.size = len;
    }
    Ok(all)
}

pub async fn run(cli: &Cli, plan: Plan) -> R<String> {
    let pid = cli
        .server_pid
        .ok_or("cpu needs --server-pid (the server's CPU time is the measure)")?
        .to_string();
    let only: Vec<&str> = if plan.only == "all" {
        PATHS.to_vec()
    } else {
        plan.only.split(',').map(str::trim).collect()
    };
    if let Some(bad) = only.iter().find(|p| !PATHS.contains(p)) {
        return Err(format!(
            "unknown path '{bad}' (known: {})",
            PATHS.join(", ")
        ));
    }
    let script_file = tempfile_script()?;
    let script = script_file.0.to_string_lossy().to_string();
    let rounds = plan.rounds.max(1);
    let mut out = format!(
        "Server CPU per operation (utime+stime from /proc/PID/stat ÷ completed requests), wrk -t1, \
         {} s windows, {rounds} alternating rounds (ordertrack, then the bare hyper baseline \
         answering the same status and body size); medians of the rounds. `wrk CPU` is the load \
         generator's share of one core (100 % would make it the limit).\n\n\
         | path | conns | ordertrack µs/op | bare hyper µs/op | CPU ratio | ordertrack req/s | bare req/s | p99 ordertrack / bare | wrk CPU (ot / bare) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        plan.seconds
    );
    for t in targets(cli, &only).await? {
        let bare = start_bare(t.status, t.size).await?;
        let conns = if t.method == "POST" {
            plan.writers
        } else {
            plan.connections
        };
        let mut ot = Vec::new();
        let mut base = Vec::new();
        for _ in 0..rounds {
            ot.push(window(&plan, &t, cli.addr, &pid, conns, &script)?);
            base.push(window(&plan, &t, bare.addr, &bare.pid(), conns, &script)?);
        }
        let med = |v: &[Window], f: fn(&Window) -> f64| median(v.iter().map(f).collect());
        out.push_str(&format!(
            "| {} ({} B) | {conns} | {} | {:.0} | {:.0} | {:.2} / {:.2} ms | {:.0} % / {:.0} % |\n",
            t.label,
            t.size,
            cpu_cells(&ot, &base),
            med(&ot, Window::rate),
            med(&base, Window::rate),
            med(&ot, |w| w.p99_ms),
            med(&base, |w| w.p99_ms),
            med(&ot, Window::client_share) * 100.0,
            med(&base, Window::client_share) * 100.0,
        ));
    }
    Ok(out)
}

/// The wrk script (`scripts/wrk/request.lua`) written next to a temp file, so the binary
/// works from any directory: method and body come from the environment.
struct Script(std::path::PathBuf);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_script() -> R<Script> {
    let p = std::env::temp_dir().join(format!("ordertrack-wrk-{}.lua", std::process::id()));
    std::fs::write(&p, include_str!("../../../scripts/wrk/request.lua"))
        .map_err(|e| e.to_string())?;
    Ok(Script(p))
}
