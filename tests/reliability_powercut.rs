//! Power cuts (issue 10, item 4): kill -9 keeps the page cache, so `reliability_crash` cannot see
//! a missing fsync. Here the real server runs under an `LD_PRELOAD` shim (`tests/powercut/shim.c`,
//! compiled by the test with the machine's C compiler) that keeps, beside the data, only what was
//! made durable: a file's bytes once the file is synced, a name once its directory is synced.
//! After acknowledged writes over HTTP the server is killed at a random moment, the durable image
//! is built from the shadow, a server starts on that image, and every acknowledged write must
//! read back; tokens minted before the cut must still be accepted (the development secret is
//! durable too), and an online backup answered before the cut must still be there.
//!
//! Scenarios: the commit log off (`--commit-log-mb 0`, every batch a durable redb commit), the
//! default log, and a new `orders.redb` created beside a full-size `orders.wal` left from before.
//! Each runs one short cycle here; `OT_POWERCUT_CYCLES=20 OT_POWERCUT_MS=3000 cargo test
//! --release --test reliability_powercut -- --nocapture` (or `scripts/reliability-long.sh`) runs
//! many cuts in a row, each restarting on the previous cut's image.

mod common;
use common::{bin, client, eta, free_port, token_with, Cast, SECRET};
use rand::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Compiles the shim into `dir`; `None` (the test is skipped) only when there is no C compiler.
fn build_shim(dir: &Path) -> Option<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powercut/shim.c");
    let out = dir.join("libpowercut.so");
    let compiler = ["cc", "gcc"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let built = Command::new(compiler)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("run the C compiler");
    assert!(
        built.status.success(),
        "the shim does not compile:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    Some(out)
}

/// Where a server runs under the shim: the watched root and the shadow of its durable state.
struct Watch<'a> {
    shim: &'a Path,
    root: &'a Path,
    shadow: &'a Path,
}

/// A server process; SIGKILLed on drop.
struct Proc {
    child: Option<Child>,
    base: String,
    log: PathBuf,
}

impl Proc {
    fn start(
        data: &Path,
        log: PathBuf,
        auth: &[&str],
        extra: &[&str],
        watch: Option<Watch>,
    ) -> Proc {
        let port = free_port();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data)
            .args(auth)
            .args(extra)
            .env("ORDERTRACK_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(w) = watch {
            std::fs::create_dir_all(w.shadow).expect("shadow dir");
            cmd.env("LD_PRELOAD", w.shim)
                .env("POWERCUT_ROOT", w.root)
                .env("POWERCUT_SHADOW", w.shadow);
        }
        let p = Proc {
            child: Some(cmd.spawn().expect("spawn ordertrack")),
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::blocking::get(format!("{}/readyz", p.base)) {
                if r.status().is_success() {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server did not become ready; log:\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The power cut: SIGKILL, nothing more reaches the shadow.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the clean exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn cast_with(auth: &[&str]) -> Cast {
    let (customer, restaurant) = (Uuid::new_v4(), Uuid::new_v4());
    let staff = format!("RestaurantStaff:{restaurant}");
    let owner = format!("RestaurantOwner:{restaurant}");
    Cast {
        customer,
        restaurant,
        customer_token: token_with(auth, customer, &[], &[]),
        staff_token: token_with(auth, Uuid::new_v4(), &[], &[&staff]),
        owner_token: token_with(auth, Uuid::new_v4(), &[], &[&owner]),
        service_token: token_with(auth, Uuid::new_v4(), &["OrderService"], &[]),
        admin_token: token_with(auth, Uuid::new_v4(), &["Administrator"], &[]),
        stranger_token: token_with(auth, Uuid::new_v4(), &[], &[]),
    }
}

/// Acknowledged writes: order id → highest version answered with a 2xx.
type Acked = Mutex<HashMap<Uuid, u64>>;

/// One writer: places cash orders and drives each to Delivered, recording every 2xx answer,
/// until `stop` or the first failed exchange (the cut).
fn writer(base: &str, cast: &Cast, acked: &Acked, stop: &AtomicBool) {
    let c = client();
    let body = cast.order_body("CashOnDelivery");
    while !stop.load(Ordering::Relaxed) {
        let Ok(r) = c
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(&cast.service_token)
            .json(&body)
            .send()
        else {
            return;
        };
        if r.status().as_u16() != 201 {
            assert!(r.status().is_server_error(), "refused: {:?}", r.text());
            return;
        }
        let Ok(v) = r.json::<serde_json::Value>() else {
            return;
        };
        let id: Uuid = v["order"]["orderId"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("201 with an order id");
        acked.lock().unwrap().insert(id, 1);
        for action in ["accept", "preparing", "ready", "delivered"] {
            let mut req = c
                .post(format!("{base}/api/v1/orders/{id}/{action}"))
                .bearer_auth(&cast.staff_token);
            if action == "accept" {
                req = req.json(&eta());
            }
            let Ok(r) = req.send() else { return };
            if r.status().as_u16() != 200 {
                assert!(r.status().is_server_error(), "refused: {:?}", r.text());
                return;
            }
            let Ok(v) = r.json::<serde_json::Value>() else {
                return;
            };
            let version = v["version"].as_u64().expect("an answer with a version");
            acked.lock().unwrap().insert(id, version);
        }
    }
}

/// `POST /admin/db/backup`: the new file's name and size once the server answered 200.
fn take_backup(base: &str, admin: &str) -> Option<(String, u64)> {
    let r = client()
        .post(format!("{base}/admin/db/backup"))
        .bearer_auth(admin)
        .send()
        .ok()?;
    if r.status().as_u16() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().ok()?;
    Some((v["file"].as_str()?.to_string(), v["bytes"].as_u64()?))
}

/// Builds the image of the durable state: the directory `key` of the shadow, at `dest`.
fn build_image(shadow: &Path, key: &str, dest: &Path) {
    std::fs::create_dir(dest).expect("image dir");
    let listing = std::fs::read_to_string(shadow.join("dirs").join(key)).unwrap_or_default();
    for line in listing.lines() {
        let mut parts = line.splitn(3, ' ');
        let (kind, child, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(c), Some(n)) => (k, c, n),
            _ => panic!("bad shadow listing line {line:?}"),
        };
        let to = dest.join(name);
        match kind {
            "d" => build_image(shadow, child, &to),
            _ => {
                let from = shadow.join("files").join(child);
                if from.exists() {
                    std::fs::copy(&from, &to).expect("copy durable bytes");
                } else {
                    // The name is durable, the bytes never were.
                    std::fs::File::create(&to).expect("empty file");
                }
            }
        }
    }
}

/// What one restart on an image found.
struct Check {
    acknowledged: u64,
    lost: u64,
    missing_orders: usize,
    behind_orders: usize,
    secret_kept: bool,
    files: Vec<String>,
}

/// Reads every acknowledged order back from the server at `base`.
fn check(base: &str, old_admin: &str, new_admin: &str, acked: &HashMap<Uuid, u64>) -> Check {
    let c = client();
    let status = |token: &str, id: Uuid| {
        let r = c
            .get(format!("{base}/api/v1/orders/{id}/status"))
            .bearer_auth(token)
            .send()
            .expect("read back");
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().unwrap_or_default())
    };
    let secret_kept = acked
        .keys()
        .next()
        .is_none_or(|id| status(old_admin, *id).0 != 401);
    let mut out = Check {
        acknowledged: acked.values().sum(),
        lost: 0,
        missing_orders: 0,
        behind_orders: 0,
        secret_kept,
        files: Vec::new(),
    };
    for (id, version) in acked {
        let (code, v) = status(new_admin, *id);
        match code {
            404 => {
                out.missing_orders += 1;
                out.lost += version;
            }
            200 => {
                let have = v["version"].as_u64().expect("version");
                if have < *version {
                    out.behind_orders += 1;
                    out.lost += version - have;
                }
            }
            other => panic!("reading {id} back answered {other}: {v}"),
        }
    }
    out
}

/// The names and sizes in `dir`, for the report.
fn listing(dir: &Path) -> Vec<String> {
    if !dir.is_dir() {
        return vec!["(no data directory)".into()];
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    format!("{} ({len} bytes)", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// `--commit-log-mb 0`, the development secret in the data directory.
    LogOff,
    /// The default commit log, a secret on the command line.
    LogOn,
    /// A data directory holding a full-size `orders.wal` from before but no `orders.redb`.
    FreshDbBesideOldLog,
}

fn run(scenario: Scenario, name: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(shim) = build_shim(tmp.path()) else {
        println!("SKIPPED powercut {name}: no C compiler (cc or gcc) to build the shim");
        return;
    };
    let cycles = env_usize("OT_POWERCUT_CYCLES", 1).max(1);
    let writers = env_usize("OT_POWERCUT_WRITERS", 4).max(1);
    let max_ms = env_usize("OT_POWERCUT_MS", 1500).max(200) as u64;
    let extra: &[&str] = match scenario {
        Scenario::LogOff => &["--commit-log-mb", "0"],
        _ => &[],
    };
    let mut root = tmp.path().join("root0");
    std::fs::create_dir(&root).expect("root");
    let secret_auth = ["--jwt-secret", SECRET];
    if scenario == Scenario::FreshDbBesideOldLog {
        // An earlier server's data directory, stopped cleanly, its database then removed.
        let data = root.join("data");
        let mut before = Proc::start(
            &data,
            tmp.path().join("before.log"),
            &secret_auth,
            &[],
            None,
        );
        before.stop();
        std::fs::remove_file(data.join("orders.redb")).expect("remove the old database");
        assert!(data.join("orders.wal").is_file());
    }
    let auth: &[&str] = match scenario {
        Scenario::LogOff => &[],
        _ => &secret_auth,
    };
    let mut acked: HashMap<Uuid, u64> = HashMap::new();
    let mut checks: Vec<Check> = Vec::new();
    // The Administrator token of the cycle before the last cut, minted against its secret.
    let mut old_admin: Option<String> = None;
    let mut cut_ms = 0;
    let (mut backups_taken, mut backups_lost) = (0, Vec::new());
    for cycle in 0..=cycles {
        let data = root.join("data");
        let data_str = data.to_string_lossy().to_string();
        let dev_auth = ["--data-dir", data_str.as_str()];
        let mint_auth: &[&str] = if auth.is_empty() { &dev_auth } else { auth };
        let shadow = tmp.path().join(format!("shadow{cycle}"));
        // Every cycle but the last runs under the shim; the last only reads back.
        let watch = (cycle < cycles).then_some(Watch {
            shim: &shim,
            root: &root,
            shadow: &shadow,
        });
        let log = tmp.path().join(format!("cycle{cycle}.log"));
        let files = listing(&data);
        let mut server = Proc::start(&data, log, auth, extra, watch);
        let cast = cast_with(mint_auth);
        if let Some(old) = &old_admin {
            let mut got = check(&server.base, old, &cast.admin_token, &acked);
            got.files = files;
            println!(
                "powercut {name} cut {cycle}/{cycles} after {cut_ms} ms: {} acknowledged writes \
                 ({} orders), {} lost ({} orders missing, {} behind), secret kept: {}; data dir \
                 after the cut: {:?}",
                got.acknowledged,
                acked.len(),
                got.lost,
                got.missing_orders,
                got.behind_orders,
                got.secret_kept,
                got.files
            );
            let failed = got.lost > 0 || !got.secret_kept || !backups_lost.is_empty();
            checks.push(got);
            if failed || cycle == cycles {
                break;
            }
        }
        let shared: Acked = Mutex::new(HashMap::new());
        let stop = AtomicBool::new(false);
        let cut_after = Duration::from_millis(rand::rng().random_range(max_ms / 3..=max_ms));
        let base = server.base.clone();
        let backup: Mutex<Option<(String, u64)>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..writers {
                s.spawn(|| writer(&base, &cast, &shared, &stop));
            }
            // An online backup among the writes, answered before the cut: its file must survive.
            let backing_up = s.spawn(|| {
                std::thread::sleep(cut_after / 3);
                *backup.lock().unwrap() = take_backup(&base, &cast.admin_token);
            });
            std::thread::sleep(cut_after);
            let _ = backing_up.join();
            server.kill9();
            stop.store(true, Ordering::Relaxed);
        });
        cut_ms = cut_after.as_millis();
        let this_cycle = shared.into_inner().unwrap();
        assert!(
            !this_cycle.is_empty(),
            "no write was acknowledged before the cut; log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        acked.extend(this_cycle);
        old_admin = Some(cast.admin_token.clone());
        // The image of what the cut left becomes the next cycle's root.
        let key = std::fs::read_to_string(shadow.join("root")).expect("the shadow's root key");
        let next = tmp.path().join(format!("root{}", cycle + 1));
        build_image(&shadow, key.trim(), &next);
        if let Some((file, bytes)) = backup.into_inner().unwrap() {
            let kept = std::fs::metadata(next.join("data/backups").join(&file)).map(|m| m.len());
            backups_taken += 1;
            if kept.as_ref().ok() != Some(&bytes) {
                backups_lost.push(format!("{file} ({bytes} bytes): after the cut {kept:?}"));
            }
        }
        std::fs::remove_dir_all(&shadow).expect("remove the shadow");
        let _ = std::fs::remove_dir_all(&root);
        root = next;
    }
    let last = checks.last().expect("one cut at least");
    println!(
        "RESULT powercut {name}: {} cuts, {} acknowledged writes, {} lost, secret kept: {}, \
         {} of {backups_taken} acknowledged backups lost",
        checks.len(),
        last.acknowledged,
        last.lost,
        last.secret_kept,
        backups_lost.len()
    );
    assert!(
        last.lost == 0 && last.secret_kept && backups_lost.is_empty(),
        "a power cut lost {} of {} acknowledged writes ({} orders missing, {} behind); tokens \
         minted before the cut still accepted: {}; data dir after the cut: {:?}; acknowledged \
         backups lost: {backups_lost:?}",
        last.lost,
        last.acknowledged,
        last.missing_orders,
        last.behind_orders,
        last.secret_kept,
        last.files
    );
}

#[test]
fn power_cut_with_the_commit_log_off_keeps_every_acknowledged_write() {
    run(Scenario::LogOff, "log off");
}

#[test]
fn power_cut_with_the_commit_log_keeps_every_acknowledged_write() {
    run(Scenario::LogOn, "log on");
}

#[test]
fn power_cut_after_a_new_database_beside_an_old_log_keeps_every_acknowledged_write() {
    run(Scenario::FreshDbBesideOldLog, "new db beside old log");
}
