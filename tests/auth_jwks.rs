//! Keys from the identity provider, end to end: the real binary with `--jwks-url` against a JWK
//! set served by this test (a small HTTP server that counts its requests and can be stopped),
//! tokens signed here with RSA, P-256 and Ed25519 keys made by the openssl CLI. Also
//! `--jwt-secret-file` and the start-up errors of both.

mod common;
use common::{bin, client, free_port};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

// ------------------------------------------------------------------ the identity provider

/// A JWK set served over plain HTTP/1.1 on a loopback port, one request per connection.
struct Provider {
    port: u16,
    body: Arc<Mutex<String>>,
    cache_control: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Provider {
    fn start(port: u16, keys: &[serde_json::Value]) -> Provider {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the JWKS port");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut p = Provider {
            port: listener.local_addr().expect("addr").port(),
            body: Arc::new(Mutex::new(String::new())),
            cache_control: Arc::new(Mutex::new("max-age=600".into())),
            requests: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        p.publish(keys);
        let (body, cc, requests, stop) = (
            p.body.clone(),
            p.cache_control.clone(),
            p.requests.clone(),
            p.stop.clone(),
        );
        p.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        let body = body.lock().unwrap().clone();
                        let cc = cc.lock().unwrap().clone();
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: {cc}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        p
    }

    fn publish(&self, keys: &[serde_json::Value]) {
        *self.body.lock().unwrap() = serde_json::json!({ "keys": keys }).to_string();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Closes the port: fetches now fail to connect.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------ keys and tokens

/// A private key made by the openssl CLI, its algorithm and the `kid` it is published under.
struct Key {
    alg: Algorithm,
    kid: String,
    enc: EncodingKey,
    /// The public key as PEM (for the alg-confusion attempt).
    public_pem: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_key(dir: &Path, alg: Algorithm, kid: &str) -> Key {
    let file = format!("{kid}.pem");
    let pub_file = format!("{kid}.pub.pem");
    let spec: &[&str] = match alg {
        Algorithm::RS256 => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Algorithm::ES256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-algorithm", "ED25519"],
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(spec);
    args.extend_from_slice(&["-out", &file]);
    openssl(dir, &args);
    openssl(dir, &["pkey", "-in", &file, "-pubout", "-out", &pub_file]);
    let pem = std::fs::read(dir.join(&file)).unwrap();
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .expect("private key");
    Key {
        alg,
        kid: kid.into(),
        enc,
        public_pem: std::fs::read(dir.join(&pub_file)).unwrap(),
    }
}

impl Key {
    /// The public JWK as a provider publishes it, with `kid` and `alg`.
    fn jwk(&self) -> serde_json::Value {
        let mut jwk = Jwk::from_encoding_key(&self.enc, self.alg).expect("jwk");
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).unwrap()
    }

    /// The JWK without `alg`: the server must infer it from `kty`/`crv`.
    fn jwk_without_alg(&self) -> serde_json::Value {
        let mut v = self.jwk();
        v.as_object_mut().unwrap().remove("alg");
        v
    }

    fn token(&self, sub: Uuid) -> String {
        self.token_with(self.alg, Some(&self.kid), sub)
    }

    fn token_with(&self, alg: Algorithm, kid: Option<&str>, sub: Uuid) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, &claims(sub), &self.enc).expect("sign")
    }
}

fn claims(sub: Uuid) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({ "sub": sub.to_string(), "iat": now, "exp": now + 600 })
}

/// An HS256 token whose "secret" is the given bytes (alg-confusion and forged-kid attempts).
fn hs256_token(secret: &[u8], kid: Option<&str>, sub: Uuid) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, &claims(sub), &EncodingKey::from_secret(secret)).expect("sign")
}

// ------------------------------------------------------------------ the server

/// `ordertrack serve` with `args` and a clean environment; killed on drop.
struct Ordertrack {
    child: Child,
    base: String,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Ordertrack {
    fn spawn(args: &[&str]) -> Ordertrack {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = tmp.path().join("server.log");
        let child = Command::new(bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(args)
            .env_clear()
            .env("ORDERTRACK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ordertrack");
        Ordertrack {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _tmp: tmp,
        }
    }

    /// Waits until `/readyz` says 200.
    fn ready(self) -> Ordertrack {
        assert!(
            self.readyz_within(Duration::from_secs(20)) == Some(200),
            "not ready; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        self
    }

    /// The `/readyz` status, polled until 200 or `within` passes (`None`: no answer at all).
    fn readyz_within(&self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Ok(r) = client().get(format!("{}/readyz", self.base)).send() {
                last = Some(r.status().as_u16());
            }
            if last == Some(200) || Instant::now() > deadline {
                return last;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The status of an authenticated read with `token`.
    fn status_with(&self, token: &str) -> u16 {
        client()
            .get(format!("{}/api/v1/orders/my", self.base))
            .bearer_auth(token)
            .send()
            .expect("request")
            .status()
            .as_u16()
    }

    fn metric(&self, series: &str) -> f64 {
        let text = client()
            .get(format!("{}/metrics", self.base))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ordertrack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ the tests

#[test]
fn rs256_es256_and_eddsa_tokens_are_accepted_with_the_algorithm_pinned_by_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let rsa = make_key(tmp.path(), Algorithm::RS256, "rsa-1");
    let ec = make_key(tmp.path(), Algorithm::ES256, "ec-1");
    let ed = make_key(tmp.path(), Algorithm::EdDSA, "ed-1");
    // The EC key is published without `alg`: its curve pins ES256.
    let provider = Provider::start(0, &[rsa.jwk(), ec.jwk_without_alg(), ed.jwk()]);
    let url = provider.url();
    let server = Ordertrack::spawn(&["--jwks-url", &url]).ready();
    let sub = Uuid::new_v4();

    for key in [&rsa, &ec, &ed] {
        assert_eq!(server.status_with(&key.token(sub)), 200, "{:?}", key.alg);
    }
    // Alg confusion: HS256 "signed" with the RSA public key (PEM) under the RSA key's kid.
    let confused = hs256_token(&rsa.public_pem, Some("rsa-1"), sub);
    assert_eq!(server.status_with(&confused), 401);
    // A header alg that is not the key's: an RS256-pinned kid named in an ES256 token.
    let mismatch = ec.token_with(Algorithm::ES256, Some("rsa-1"), sub);
    assert_eq!(server.status_with(&mismatch), 401);
    // Another key's signature under a published kid.
    let wrong_key = ed.token_with(Algorithm::EdDSA, Some("ec-1"), sub);
    assert_eq!(server.status_with(&wrong_key), 401);
    // No kid while the set holds several keys.
    let no_kid = rsa.token_with(Algorithm::RS256, None, sub);
    assert_eq!(server.status_with(&no_kid), 401);
    // `alg: none`.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64(claims(sub).to_string().as_bytes())
    );
    assert_eq!(server.status_with(&none), 401);

    assert_eq!(server.metric("ordertrack_jwks_keys"), 3.0);
    assert!(server.metric("ordertrack_jwks_fetches_total{result=\"ok\"}") >= 1.0);
    assert!(server.metric("ordertrack_jwks_last_success_age_seconds") >= 0.0);
    let log = server.log();
    assert!(
        !log.contains(&rsa.token(sub)[..40]),
        "a token reached the log"
    );
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn a_rotated_key_set_is_picked_up_without_a_restart_and_the_withdrawn_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let old = make_key(tmp.path(), Algorithm::RS256, "2026-old");
    let new = make_key(tmp.path(), Algorithm::ES256, "2026-new");
    let provider = Provider::start(0, &[old.jwk()]);
    let url = provider.url();
    let server = Ordertrack::spawn(&["--jwks-url", &url, "--jwks-min-refresh", "1s"]).ready();
    let old_token = old.token(Uuid::new_v4());
    assert_eq!(server.status_with(&old_token), 200);

    // The provider rotates: the new key signs, the old one is withdrawn.
    provider.publish(&[new.jwk()]);
    std::thread::sleep(Duration::from_millis(1100));
    let before = provider.requests();
    assert_eq!(server.status_with(&new.token(Uuid::new_v4())), 200);
    assert_eq!(
        provider.requests(),
        before + 1,
        "the unknown kid fetched the set"
    );
    // The old token was verified (and cached) before: it is refused now.
    assert_eq!(server.status_with(&old_token), 401);
    assert_eq!(server.status_with(&old.token(Uuid::new_v4())), 401);
    assert_eq!(server.metric("ordertrack_jwks_keys"), 1.0);
}

#[test]
fn a_burst_of_forged_kids_causes_at_most_one_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let key = make_key(tmp.path(), Algorithm::EdDSA, "only");
    let provider = Provider::start(0, &[key.jwk()]);
    let url = provider.url();
    let server = Ordertrack::spawn(&["--jwks-url", &url, "--jwks-min-refresh", "2s"]).ready();
    // Past the rate limit of the start-up fetch, so the first forged kid may fetch once.
    std::thread::sleep(Duration::from_millis(2200));
    let before = provider.requests();
    let base = server.base.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                let c = client();
                for i in 0..25 {
                    let forged =
                        hs256_token(b"guess", Some(&format!("forged-{t}-{i}")), Uuid::new_v4());
                    let s = c
                        .get(format!("{base}/api/v1/orders/my"))
                        .bearer_auth(forged)
                        .send()
                        .expect("request")
                        .status();
                    assert_eq!(s, 401);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let fetched = provider.requests() - before;
    assert_eq!(
        fetched, 1,
        "200 forged kids: one fetch (the first), not {fetched}"
    );
    assert_eq!(
        server.metric("ordertrack_jwks_unknown_kid_refusals_total"),
        200.0
    );
    // The real key still works.
    assert_eq!(server.status_with(&key.token(Uuid::new_v4())), 200);
}

#[test]
fn readyz_waits_for_a_first_set_and_a_provider_outage_keeps_the_last_one() {
    let tmp = tempfile::tempdir().unwrap();
    let key = make_key(tmp.path(), Algorithm::RS256, "k1");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    // The provider is down at start: the server runs but is not ready, and refuses tokens.
    let server = Ordertrack::spawn(&["--jwks-url", &url, "--jwks-min-refresh", "1s"]);
    assert_eq!(server.readyz_within(Duration::from_millis(1500)), Some(503));
    assert_eq!(server.status_with(&key.token(Uuid::new_v4())), 401);
    assert!(server.metric("ordertrack_jwks_fetches_total{result=\"failed\"}") >= 1.0);
    assert!(server
        .metric("ordertrack_jwks_last_success_age_seconds")
        .is_nan());

    // It comes up: ready within the start-up retry back-off, tokens verify.
    let mut provider = Provider::start(port, &[key.jwk()]);
    assert_eq!(server.readyz_within(Duration::from_secs(15)), Some(200));
    assert_eq!(server.status_with(&key.token(Uuid::new_v4())), 200);

    // It goes down again: a forced refresh fails, the last set keeps serving.
    provider.stop();
    std::thread::sleep(Duration::from_millis(1100));
    let failed = server.metric("ordertrack_jwks_fetches_total{result=\"failed\"}");
    let forged = key.token_with(Algorithm::RS256, Some("k2"), Uuid::new_v4());
    assert_eq!(server.status_with(&forged), 401);
    assert!(server.metric("ordertrack_jwks_fetches_total{result=\"failed\"}") > failed);
    assert_eq!(server.status_with(&key.token(Uuid::new_v4())), 200);
    assert_eq!(server.readyz_within(Duration::ZERO), Some(200));
    assert!(server.log().contains("JWKS fetch failed"));
}

#[test]
fn the_set_is_refetched_on_its_max_age_within_the_floor() {
    let tmp = tempfile::tempdir().unwrap();
    let key = make_key(tmp.path(), Algorithm::EdDSA, "k");
    let provider = Provider::start(0, &[key.jwk()]);
    *provider.cache_control.lock().unwrap() = "public, max-age=1".into();
    let url = provider.url();
    // max-age 1 s with a floor of 1 s: about one fetch a second.
    let fast = Ordertrack::spawn(&["--jwks-url", &url, "--jwks-min-refresh", "1s"]).ready();
    // max-age 1 s under the default floor of 30 s: no second fetch.
    let slow = Ordertrack::spawn(&["--jwks-url", &url]).ready();
    std::thread::sleep(Duration::from_millis(3500));
    let fast_fetches = fast.metric("ordertrack_jwks_fetches_total{result=\"ok\"}");
    let slow_fetches = slow.metric("ordertrack_jwks_fetches_total{result=\"ok\"}");
    assert!(fast_fetches >= 3.0, "fast: {fast_fetches}");
    assert_eq!(slow_fetches, 1.0);
}

// ------------------------------------------------------------------ start-up settings

/// Runs `ordertrack serve` expecting it to fail at once with one stderr line holding `needle`.
fn fails_with_one_line(args: &[&str], needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    assert!(lines[0].contains(needle), "{args:?}: {err}");
}

#[test]
fn jwt_secret_file_works_and_bad_settings_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "file-secret-0123456789abcdef-0123456789";
    let path = tmp.path().join("jwt-secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let p = path.to_str().unwrap();
    let server = Ordertrack::spawn(&["--jwt-secret-file", p]).ready();
    let sub = Uuid::new_v4();
    assert_eq!(
        server.status_with(&hs256_token(secret.as_bytes(), None, sub)),
        200
    );
    let with_newline = format!("{secret}\n");
    assert_eq!(
        server.status_with(&hs256_token(with_newline.as_bytes(), None, sub)),
        401
    );
    assert!(!server.log().contains(secret), "the secret reached the log");
    drop(server);

    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = tmp.path().join("missing");
    fails_with_one_line(&["--jwt-secret-file", empty.to_str().unwrap()], "is empty");
    fails_with_one_line(
        &["--jwt-secret-file", missing.to_str().unwrap()],
        "cannot read the JWT secret file",
    );
    fails_with_one_line(
        &["--jwt-secret-file", p, "--jwt-secret", secret],
        "cannot be combined",
    );
    let url = "http://127.0.0.1:9/jwks";
    for other in [
        ["--jwt-secret", secret],
        ["--jwt-secret-file", p],
        ["--jwt-algorithm", "RS256"],
        ["--jwt-public-key", p],
    ] {
        let mut args = vec!["--jwks-url", url];
        args.extend_from_slice(&other);
        fails_with_one_line(&args, "--jwks-url and --");
    }
    fails_with_one_line(&["--jwks-url", "ftp://idp/jwks"], "--jwks-url must be");
    fails_with_one_line(
        &["--jwks-url", url, "--jwks-min-refresh", "0s"],
        "--jwks-min-refresh",
    );
    fails_with_one_line(&["--jwks-cacert", p], "needs --jwks-url");
    fails_with_one_line(
        &["--jwks-url", "https://127.0.0.1:9/jwks", "--jwks-cacert", p],
        "--jwks-cacert",
    );
}

// ------------------------------------------------------------------ https

/// `openssl s_server -WWW` serving `dir`'s files over TLS with a certificate for 127.0.0.1
/// signed by a CA made here; killed on drop.
struct TlsProvider {
    child: Child,
    port: u16,
}

impl TlsProvider {
    /// Makes `ca.pem` in `dir` and serves `dir` over https.
    fn start(dir: &Path) -> TlsProvider {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
        ca.extend_from_slice(&["-subj", "/CN=ordertrack test CA"]);
        openssl(dir, &ca);
        let mut csr = vec!["req"];
        csr.extend_from_slice(&ec);
        csr.extend_from_slice(&["-keyout", "srv.key", "-out", "srv.csr"]);
        csr.extend_from_slice(&["-subj", "/CN=127.0.0.1"]);
        openssl(dir, &csr);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "srv.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "srv.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        let port = free_port();
        let child = Command::new("openssl")
            .args([
                "s_server", "-quiet", "-WWW", "-cert", "srv.pem", "-key", "srv.key",
            ])
            .args(["-accept", &port.to_string()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsProvider { child, port }
    }
}

impl Drop for TlsProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_https_key_set_is_trusted_through_jwks_cacert_and_not_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let key = make_key(tmp.path(), Algorithm::ES256, "tls-k");
    std::fs::write(
        tmp.path().join("jwks.json"),
        serde_json::json!({ "keys": [key.jwk()] }).to_string(),
    )
    .unwrap();
    let provider = TlsProvider::start(tmp.path());
    let url = format!("https://127.0.0.1:{}/jwks.json", provider.port);
    let ca = tmp.path().join("ca.pem");
    let trusted =
        Ordertrack::spawn(&["--jwks-url", &url, "--jwks-cacert", ca.to_str().unwrap()]).ready();
    assert_eq!(trusted.status_with(&key.token(Uuid::new_v4())), 200);
    drop(trusted);

    // The system's roots do not include the test CA: the handshake fails, nothing loads.
    let untrusted = Ordertrack::spawn(&["--jwks-url", &url]);
    assert_eq!(untrusted.readyz_within(Duration::from_secs(2)), Some(503));
    assert!(untrusted.metric("ordertrack_jwks_fetches_total{result=\"failed\"}") >= 1.0);
    assert!(
        untrusted.log().contains("TLS handshake failed"),
        "{}",
        untrusted.log()
    );
}
