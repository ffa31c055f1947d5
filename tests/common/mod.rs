//! Test harness shared by the integration tests: starts the real `ordertrack` binary on a free
//! loopback port with its own data directory and secret, mints tokens, and stops it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// The server binary: this build's, or `OT_SERVER_BIN` (to run a test against another build,
/// e.g. the one before a fix, to show the test fails there).
pub fn bin() -> PathBuf {
    std::env::var_os("OT_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ordertrack")))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running server; killed (SIGKILL) on drop unless stopped first.
pub struct Server {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub base: String,
    pub extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
    pub log: PathBuf,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts with extra `serve` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Server::spawn_on(free_port(), &dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on `port` over an existing data directory.
    pub fn spawn_on(port: u16, dir: &Path, extra: &[&str]) -> Server {
        let log = dir.with_extension(format!("{port}.log"));
        std::fs::create_dir_all(dir).expect("data dir");
        let logfile = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--jwt-secret")
            .arg(SECRET)
            .args(extra)
            .env("ORDERTRACK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logfile);
        let child = cmd.spawn().expect("spawn ordertrack");
        let s = Server {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
            base: format!("http://127.0.0.1:{port}"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: None,
            log,
        };
        s.wait_ready();
        s
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::blocking::get(format!("{}/readyz", self.base)) {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("server did not become ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts on the same port and data directory (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        let extra: Vec<String> = self.extra.clone();
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut next = Server::spawn_on(self.port, &self.dir, &refs);
        self.child = next.child.take();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Mints a token through the binary's own `token` command.
pub fn token(sub: Uuid, roles: &[&str], permissions: &[&str]) -> String {
    token_ttl(sub, roles, permissions, "1h")
}

pub fn token_ttl(sub: Uuid, roles: &[&str], permissions: &[&str], ttl: &str) -> String {
    token_with(
        &["--jwt-secret", SECRET, "--ttl", ttl],
        sub,
        roles,
        permissions,
    )
}

/// Mints a token through the binary's `token` command with the key options in `auth` (a
/// secret, or a data directory holding a development secret).
pub fn token_with(auth: &[&str], sub: Uuid, roles: &[&str], permissions: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    cmd.arg("token")
        .args(auth)
        .args(["--sub", &sub.to_string()]);
    for r in roles {
        cmd.args(["--role", r]);
    }
    for p in permissions {
        cmd.args(["--permission", p]);
    }
    let out = cmd.output().expect("token command");
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// The cast of a typical scenario: a customer, a restaurant with staff, the order service.
pub struct Cast {
    pub customer: Uuid,
    pub restaurant: Uuid,
    pub customer_token: String,
    pub staff_token: String,
    pub owner_token: String,
    pub service_token: String,
    pub admin_token: String,
    pub stranger_token: String,
}

impl Cast {
    pub fn new() -> Cast {
        let customer = Uuid::new_v4();
        let restaurant = Uuid::new_v4();
        Cast {
            customer,
            restaurant,
            customer_token: token(customer, &[], &[]),
            staff_token: token(
                Uuid::new_v4(),
                &[],
                &[&format!("RestaurantStaff:{restaurant}")],
            ),
            owner_token: token(
                Uuid::new_v4(),
                &[],
                &[&format!("RestaurantOwner:{restaurant}")],
            ),
            service_token: token(Uuid::new_v4(), &["OrderService"], &[]),
            admin_token: token(Uuid::new_v4(), &["Administrator"], &[]),
            stranger_token: token(Uuid::new_v4(), &[], &[]),
        }
    }

    /// A valid order body for this cast.
    pub fn order_body(&self, payment: &str) -> serde_json::Value {
        serde_json::json!({
            "customerId": self.customer,
            "restaurantId": self.restaurant,
            "restaurantName": "Luigi's",
            "currency": "USD",
            "items": [
                {"menuItemId": Uuid::new_v4(), "name": "Margherita Pizza", "quantity": 1, "unitPrice": 12.00, "customizations": []},
                {"menuItemId": Uuid::new_v4(), "name": "Calzone", "quantity": 1, "unitPrice": 15.00,
                 "customizations": [{"groupName": "Extras", "choiceName": "Olives", "priceAdjustment": 1.50}]}
            ],
            "deliveryFee": 2.99, "tip": 4.00, "tax": 0, "discount": 0,
            "paymentMethod": payment
        })
    }
}

/// Places `n` cash orders from `threads` parallel clients.
pub fn place_many(server: &Server, cast: &Cast, n: usize, threads: usize) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let c = client();
                let body = cast.order_body("CashOnDelivery");
                for _ in (t..n).step_by(threads) {
                    let r = c
                        .post(server.url("/api/v1/orders"))
                        .bearer_auth(&cast.service_token)
                        .json(&body)
                        .send()
                        .expect("place");
                    assert_eq!(r.status(), 201);
                }
            });
        }
    });
}

/// One unlabelled series from the server's `/metrics` (NaN when absent or unreachable).
pub fn metric(server: &Server, name: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(f64::NAN)
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Places an order as the order service and returns its id.
pub fn place(server: &Server, cast: &Cast, payment: &str) -> Uuid {
    let r = client()
        .post(server.url("/api/v1/orders"))
        .bearer_auth(&cast.service_token)
        .json(&cast.order_body(payment))
        .send()
        .expect("place");
    assert_eq!(r.status(), 201, "place failed: {:?}", r.text());
    let v: serde_json::Value = r.json().expect("json");
    v["order"]["orderId"]
        .as_str()
        .expect("orderId")
        .parse()
        .expect("uuid")
}

/// POSTs an action with an optional JSON body; returns (status, body json or Null).
pub fn act(
    server: &Server,
    token: &str,
    id: Uuid,
    action: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .post(server.url(&format!("/api/v1/orders/{id}/{action}")))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().expect("act");
    let status = r.status().as_u16();
    let v = r.json().unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// An ETA 30 minutes ahead, RFC 3339.
pub fn eta() -> serde_json::Value {
    let t = chrono::Utc::now() + chrono::Duration::minutes(30);
    serde_json::json!({ "estimatedDeliveryTime": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) })
}

pub fn get_json(server: &Server, token: &str, path: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .expect("get");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(serde_json::Value::Null))
}

// ---------------------------------------------------------------------------------------------
// Helpers for the API tests (api_*.rs, durability.rs): whole answers, problems, raw HTTP.
// ---------------------------------------------------------------------------------------------

/// A whole HTTP answer: status, headers and the raw body text.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.text)
    }
}

/// Sends a request and keeps everything of the answer.
pub fn send(req: reqwest::blocking::RequestBuilder) -> Reply {
    let r = req.send().expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().expect("body");
    Reply {
        status,
        headers,
        text,
    }
}

/// `GET path` with a bearer token and extra headers.
pub fn get_with(server: &Server, token: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = client().get(server.url(path)).bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req)
}

/// `POST path` with raw bytes, an optional content type and extra headers.
pub fn post_raw(
    server: &Server,
    token: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client()
        .post(server.url(path))
        .bearer_auth(token)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req)
}

/// `POST path` with a JSON body and extra headers.
pub fn post_json(
    server: &Server,
    token: &str,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> Reply {
    post_raw(
        server,
        token,
        path,
        Some("application/json"),
        serde_json::to_vec(body).expect("json"),
        headers,
    )
}

/// Places `body` as the order service; the whole answer.
pub fn place_body(server: &Server, cast: &Cast, body: &serde_json::Value) -> Reply {
    post_json(server, &cast.service_token, "/api/v1/orders", body, &[])
}

/// Checks that `r` is an RFC 7807 problem with its status mirrored in the body; returns
/// `(status, title, detail)`.
pub fn problem(r: &Reply) -> (u16, String, String) {
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/problem+json"),
        "not a problem answer: {r:?}"
    );
    let v = r.json();
    assert_eq!(
        v["status"], r.status,
        "problem status mirrors HTTP status: {r:?}"
    );
    assert!(v["type"].is_string(), "problem has a type: {r:?}");
    assert!(v["traceId"].is_string(), "problem has a traceId: {r:?}");
    (
        r.status,
        v["title"].as_str().expect("title").to_string(),
        v["detail"].as_str().expect("detail").to_string(),
    )
}

/// The problem body without its `traceId`, for comparing masked answers.
pub fn problem_sans_trace(r: &Reply) -> serde_json::Value {
    problem(r);
    let mut v = r.json();
    v.as_object_mut().expect("object").remove("traceId");
    v
}

/// An RFC 3339 time `minutes` from now (negative: in the past).
pub fn in_minutes(minutes: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::minutes(minutes))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 timestamp of an answer, insisting on UTC with `Z`.
pub fn utc(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp expected, got {v}"));
    assert!(s.ends_with('Z'), "timestamp must be UTC with Z: {s}");
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad RFC 3339 '{s}': {e}"))
        .with_timezone(&chrono::Utc)
}

/// Places an order (`Card` for `AwaitingPayment`, cash otherwise) and drives it to `status`
/// with the cast's staff and service tokens; returns its id.
pub fn order_in(server: &Server, cast: &Cast, status: &str) -> Uuid {
    let payment = if status == "AwaitingPayment" {
        "Card"
    } else {
        "CashOnDelivery"
    };
    let id = place(server, cast, payment);
    let steps: &[(&str, Option<serde_json::Value>)] = match status {
        "AwaitingPayment" | "Placed" => &[],
        "Accepted" => &[("accept", Some(eta()))],
        "Preparing" => &[("accept", Some(eta())), ("preparing", None)],
        "ReadyForDelivery" => &[
            ("accept", Some(eta())),
            ("preparing", None),
            ("ready", None),
        ],
        "Delivered" => &[
            ("accept", Some(eta())),
            ("preparing", None),
            ("ready", None),
            ("delivered", None),
        ],
        "Cancelled" => &[("cancel", None)],
        "Rejected" => &[("reject", None)],
        other => panic!("unknown status {other}"),
    };
    for (action, body) in steps {
        let (st, v) = act(server, &cast.staff_token, id, action, body.clone());
        assert_eq!(st, 200, "{action} while driving to {status}: {v}");
    }
    let (_, v) = get_json(
        server,
        &cast.staff_token,
        &format!("/api/v1/orders/{id}/status"),
    );
    assert_eq!(v["status"], status, "driving to {status}");
    id
}

/// Writes `request` on a fresh connection and reads the status line and headers of the answer
/// (and any body bytes that arrive before `timeout`). `None` when the server closed the
/// connection without answering.
pub fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    let _ = s.write_all(request);
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let end = line == "\r\n";
                head.push_str(&line);
                if end {
                    break;
                }
            }
        }
    }
    if head.is_empty() {
        return None;
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    head.push_str(&String::from_utf8_lossy(&body));
    Some(head)
}

/// Runs `ordertrack token --jwt-secret SECRET <args>`; the whole process output.
pub fn token_command(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["token", "--jwt-secret", SECRET])
        .args(args)
        .output()
        .expect("token command")
}

pub mod cluster;
pub mod hub;
pub mod nats;
