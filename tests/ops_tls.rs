//! TLS in the binary, end to end: a private CA and two server certificates made with the
//! `openssl` CLI, the real binary serving HTTPS, curl (HTTP/1.1 and h2, TLS 1.1 refused),
//! `openssl s_client` to see which certificate is served, the binary's own `watch` and `db stats`
//! over https:// and wss://, a reload on SIGHUP and on a file change while old connections keep
//! working, a bad replacement that keeps the old pair, plain HTTP on the TLS port, and the
//! one-line start errors.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A private CA and two certificates (A and B) for 127.0.0.1 and localhost, in a temp dir.
struct Pki {
    tmp: tempfile::TempDir,
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Pki {
    fn new() -> Pki {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        let p = |n: &str| d.join(n);
        run_ok(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec"])
                .args([
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=ordertrack test CA",
                    "-keyout",
                ])
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.pem")),
        );
        std::fs::write(p("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext");
        for n in ["a", "b"] {
            run_ok(
                Command::new("openssl")
                    .args([
                        "req",
                        "-newkey",
                        "ec",
                        "-pkeyopt",
                        "ec_paramgen_curve:P-256",
                    ])
                    .args(["-nodes", "-subj", "/CN=localhost", "-keyout"])
                    .arg(p(&format!("{n}.key")))
                    .arg("-out")
                    .arg(p(&format!("{n}.csr"))),
            );
            run_ok(
                Command::new("openssl")
                    .args(["x509", "-req", "-days", "2", "-in"])
                    .arg(p(&format!("{n}.csr")))
                    .arg("-CA")
                    .arg(p("ca.pem"))
                    .arg("-CAkey")
                    .arg(p("ca.key"))
                    .arg("-CAcreateserial")
                    .arg("-extfile")
                    .arg(p("san.ext"))
                    .arg("-out")
                    .arg(p(&format!("{n}.pem"))),
            );
        }
        Pki { tmp }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    /// The SHA-256 fingerprint of certificate `name` (`a` or `b`).
    fn fingerprint(&self, name: &str) -> String {
        fingerprint_of_pem(&std::fs::read(self.path(&format!("{name}.pem"))).expect("pem"))
    }

    /// Makes `cert.pem`/`key.pem` (the files the server is started with) hold pair `name`.
    fn install(&self, name: &str) {
        self.install_files(&format!("{name}.pem"), &format!("{name}.key"));
    }

    /// Replaces the served files by renaming new copies over them (as renewal tools do).
    fn install_files(&self, cert: &str, key: &str) {
        for (from, to) in [(cert, "cert.pem"), (key, "key.pem")] {
            let tmp = self.path(&format!("{to}.new"));
            std::fs::copy(self.path(from), &tmp).expect("copy");
            std::fs::rename(&tmp, self.path(to)).expect("rename");
        }
    }
}

fn fingerprint_of_pem(pem: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem)
        .expect("write");
    let out = child.wait_with_output().expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The fingerprint of the certificate a new connection to `port` is served.
fn served_fingerprint(port: u16, ca: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-CAfile", ca, "-verify_return_error"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    fingerprint_of_pem(&out.stdout)
}

/// A server started with `--tls-cert`/`--tls-key` pointing at the Pki's `cert.pem`/`key.pem`.
struct TlsServer {
    child: Child,
    port: u16,
    ca: String,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl TlsServer {
    fn start(pki: &Pki) -> TlsServer {
        TlsServer::start_with(pki, &[])
    }

    fn start_with(pki: &Pki, extra: &[&str]) -> TlsServer {
        let data = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = data.path().join("server.log");
        let child = Command::new(bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args(["--jwt-secret", SECRET, "--tls-cert"])
            .arg(pki.path("cert.pem"))
            .arg("--tls-key")
            .arg(pki.path("key.pem"))
            .args(extra)
            .env("ORDERTRACK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn ordertrack");
        let s = TlsServer {
            child,
            port,
            ca: pki.ca(),
            log,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.curl(&["/readyz"]).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "not ready over TLS; log:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self._data.path().join("data")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// curl with the CA; `args` ends with the path. Returns (HTTP status, body); status 0 when
    /// curl itself failed.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let (path, opts) = args.split_last().expect("a path");
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", &self.ca])
            .args(["-w", "\n%{http_code}"])
            .args(opts)
            .arg(self.url(path))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn json(&self, method: &str, token: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let auth = format!("Authorization: Bearer {token}");
        let mut args = vec!["-X", method, "-H", &auth];
        if !body.is_empty() {
            args.extend(["-H", "Content-Type: application/json", "--data", body]);
        }
        args.push(path);
        let (code, text) = self.curl(&args);
        (code, serde_json::from_str(&text).unwrap_or_default())
    }

    fn tls_events(&self, event: &str) -> f64 {
        let (_, text) = self.curl(&["/metrics"]);
        let series = format!("ordertrack_tls_events_total{{event=\"{event}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// Waits until the `event` counter reaches `n`.
    fn wait_tls_events(&self, event: &str, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.tls_events(event) < n {
            assert!(
                Instant::now() < deadline,
                "no {event} #{n}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        run_ok(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(self.child.id().to_string()),
        );
    }

    /// SIGTERM; the exit code and the whole log.
    fn terminate(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return (st.code(), self.log_text());
            }
            assert!(Instant::now() < deadline, "did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Places a cash order over HTTPS; its id.
fn place_tls(server: &TlsServer, cast: &Cast) -> String {
    let body = cast.order_body("CashOnDelivery").to_string();
    let (code, v) = server.json("POST", &cast.service_token, "/api/v1/orders", &body);
    assert_eq!(code, 201, "{v}");
    v["order"]["orderId"].as_str().expect("orderId").to_string()
}

/// A keep-alive HTTPS connection held by `openssl s_client`: requests are written on its
/// stdin, answers read line by line from its stdout.
struct KeptConnection {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl KeptConnection {
    fn open(port: u16, ca: &str) -> KeptConnection {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["-CAfile", ca, "-verify_return_error", "-alpn", "http/1.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        KeptConnection { child, lines }
    }

    /// Sends `GET /healthz` on the same connection; the status line of the answer.
    fn health(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("write on the kept connection");
        stdin.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("an answer on the kept connection");
            if line.starts_with("HTTP/") {
                return line.trim().to_string();
            }
        }
    }
}

impl Drop for KeptConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_serves_health_status_h2_metrics_and_refuses_tls_1_1() {
    let pki = Pki::new();
    pki.install("a");
    let server = TlsServer::start(&pki);
    let (code, body) = server.curl(&["/healthz"]);
    assert_eq!((code, body.trim()), (200, "ok"));
    // h2 through ALPN.
    let out = run_ok(
        Command::new("curl")
            .args(["-sS", "--http2", "--cacert", &server.ca, "-o", "/dev/null"])
            .args(["-w", "%{http_version}"])
            .arg(server.url("/healthz")),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2");
    // A status poll over TLS.
    let cast = Cast::new();
    let id = place_tls(&server, &cast);
    let (code, v) = server.json(
        "GET",
        &cast.customer_token,
        &format!("/api/v1/orders/{id}/status"),
        "",
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "Placed");
    // TLS 1.1 and older: no handshake.
    let old = Command::new("curl")
        .args(["-sS", "--tls-max", "1.1", "--cacert", &server.ca])
        .arg(server.url("/healthz"))
        .output()
        .expect("curl");
    assert!(!old.status.success(), "TLS 1.1 was accepted");
    // Readiness and metrics keep working over TLS, and counted that failed handshake.
    assert_eq!(server.curl(&["/readyz"]).0, 200);
    server.wait_tls_events("handshake_failure", 1.0);
    // Untrusted: without the CA curl refuses the certificate (the server really is TLS).
    let untrusted = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(server.url("/healthz"))
        .output()
        .expect("curl");
    assert!(!untrusted.status.success());
    // Graceful shutdown.
    let (code, log) = server.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
}

#[test]
fn plain_http_on_the_tls_port_is_answered_400_and_the_server_goes_on() {
    let pki = Pki::new();
    pki.install("a");
    let server = TlsServer::start(&pki);
    let answer = raw_exchange(
        server.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .expect("an answer to plain HTTP");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Server.TlsRequired"), "{answer}");
    assert_eq!(server.curl(&["/healthz"]).0, 200);
    assert_eq!(server.tls_events("plain_http"), 1.0);

    // A handshake that starts and stalls is cut after the handshake timeout (10 s), not held.
    use std::io::Read;
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01]).expect("write");
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = stalled.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(15), "held for {waited:?}");
    server.wait_tls_events("handshake_failure", 1.0);
    assert_eq!(server.curl(&["/healthz"]).0, 200);
}

#[test]
fn sighup_serves_the_renewed_certificate_while_an_old_connection_keeps_working() {
    let pki = Pki::new();
    pki.install("a");
    let server = TlsServer::start(&pki);
    let (a, b) = (pki.fingerprint("a"), pki.fingerprint("b"));
    assert_ne!(a, b);
    assert_eq!(served_fingerprint(server.port, &server.ca), a);
    let mut kept = KeptConnection::open(server.port, &server.ca);
    assert_eq!(kept.health(), "HTTP/1.1 200 OK");

    pki.install("b");
    server.signal("HUP");
    server.wait_tls_events("reload", 1.0);
    assert_eq!(served_fingerprint(server.port, &server.ca), b);
    assert_eq!(kept.health(), "HTTP/1.1 200 OK", "the old connection");
    assert!(server.log_text().contains("trigger=\"SIGHUP\""));

    // A bad replacement (B's certificate with A's key) is refused and B stays.
    pki.install_files("b.pem", "a.key");
    server.signal("HUP");
    server.wait_tls_events("reload_failure", 1.0);
    assert_eq!(served_fingerprint(server.port, &server.ca), b);
    assert_eq!(server.curl(&["/healthz"]).0, 200);
    let log = server.log_text();
    let failure: Vec<&str> = log.lines().filter(|l| l.contains("not reloaded")).collect();
    assert!(!failure.is_empty(), "{log}");
    assert!(
        failure.iter().all(|l| l.contains("does not match")),
        "{failure:?}"
    );
    // No key material in the log.
    let key = std::fs::read_to_string(pki.path("a.key")).expect("key");
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!log.contains(line), "key material in the log");
    }
    assert!(!log.contains("PRIVATE KEY"));
    // Still the old connection.
    assert_eq!(kept.health(), "HTTP/1.1 200 OK");
}

#[test]
fn watch_follows_an_order_over_wss_across_a_certificate_change_on_disk() {
    let pki = Pki::new();
    pki.install("a");
    let server = TlsServer::start(&pki);
    let cast = Cast::new();
    let id = place_tls(&server, &cast);
    let mut watch = Command::new(bin())
        .args([
            "watch",
            &id,
            "--url",
            &server.url(""),
            "--cacert",
            &server.ca,
        ])
        .args(["--token", &cast.customer_token, "--transport", "websocket"])
        .env_remove("ORDERTRACK_URL")
        .env_remove("ORDERTRACK_TOKEN")
        .env_remove("ORDERTRACK_CACERT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    let out = watch.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no '{needle}' from watch; got {seen:?}"));
        seen.push(line.clone());
        if line.contains(needle) {
            return;
        }
    };
    wait_for("subscribed");

    // Renewal on disk, no signal: the file check picks it up.
    pki.install("b");
    server.wait_tls_events("reload", 1.0);
    assert_eq!(
        served_fingerprint(server.port, &server.ca),
        pki.fingerprint("b")
    );
    assert!(server.log_text().contains("trigger=\"files changed\""));

    // The hub socket opened under A still carries every event.
    let eta = common::eta();
    for (action, body) in [
        ("accept", eta.to_string()),
        ("preparing", String::new()),
        ("ready", String::new()),
        ("delivered", String::new()),
    ] {
        let path = format!("/api/v1/orders/{id}/{action}");
        let (code, v) = server.json("POST", &cast.staff_token, &path, &body);
        assert_eq!(code, 200, "{action}: {v}");
    }
    wait_for("Delivered");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = watch.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "watch did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut watch.stderr.take().expect("stderr"), &mut err);
    assert!(status.success(), "{seen:?} {err}");
    assert!(
        seen.iter().any(|l| l.contains("ReceiveOrderStatusChanged")),
        "live events over wss: {seen:?}"
    );

    // `db stats` against the running TLS server over https:// with the CA.
    let admin = token(uuid::Uuid::new_v4(), &["Administrator"], &[]);
    let stats = run_ok(
        Command::new(bin())
            .args(["db", "stats", "--json", "--url", &server.url("")])
            .arg("--data-dir")
            .arg(server.data_dir())
            .args(["--cacert", &server.ca, "--token", &admin])
            .env_remove("ORDERTRACK_URL"),
    );
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats json");
    assert_eq!(v["orders"], 1, "{v}");
    // Without the CA (and no such CA in the system store) the certificate is refused.
    let refused = Command::new(bin())
        .args(["db", "stats", "--url", &server.url(""), "--token", &admin])
        .arg("--data-dir")
        .arg(server.data_dir())
        .env_remove("ORDERTRACK_URL")
        .env_remove("ORDERTRACK_CACERT")
        .output()
        .expect("db stats");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Runs `serve` with `args` on a free port; (exit code, stderr).
fn start_failure(args: &[&Path]) -> (Option<i32>, String) {
    let data = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .args(["--jwt-secret", SECRET])
        .env_remove("ORDERTRACK_TLS_CERT")
        .env_remove("ORDERTRACK_TLS_KEY");
    for (flag, path) in ["--tls-cert", "--tls-key"].iter().zip(args) {
        cmd.arg(flag).arg(path);
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve with a bad TLS setting did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
    assert!(!data.path().join("data").exists(), "nothing is created");
    (code, err)
}

#[test]
fn bad_tls_settings_are_one_line_at_start() {
    let pki = Pki::new();
    let p = |n: &str| pki.path(n);
    let missing = p("missing.pem");
    let cases: [(&[&Path], &str); 5] = [
        (&[&p("a.pem")], "--tls-cert and --tls-key go together"),
        (&[&missing, &p("a.key")], "cannot read"),
        (&[&p("a.key"), &p("a.key")], "no certificate in"),
        (&[&p("a.pem"), &p("a.pem")], "no private key in"),
        (
            &[&p("a.pem"), &p("b.key")],
            "does not match the certificate",
        ),
    ];
    for (args, needle) in cases {
        let (code, err) = start_failure(args);
        assert_ne!(code, Some(0), "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn over_the_connection_cap_a_tls_client_is_closed_and_the_held_one_goes_on() {
    let pki = Pki::new();
    pki.install("a");
    let server = TlsServer::start_with(&pki, &["--max-connections-per-ip", "1"]);
    let mut kept = KeptConnection::open(server.port, &server.ca);
    assert_eq!(kept.health(), "HTTP/1.1 200 OK");
    let started = Instant::now();
    assert_eq!(
        server.curl(&["/healthz"]).0,
        0,
        "the second connection is refused"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    assert_eq!(kept.health(), "HTTP/1.1 200 OK");
    drop(kept);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.curl(&["/healthz"]).0 != 200 {
        assert!(Instant::now() < deadline, "the slot was not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
