//! Start-up through the real binary: each misconfiguration is one clear line on stderr and a
//! non-zero exit; `--help` is complete for every command; configuration precedence is flag >
//! environment > file > default; the example configuration documents every key.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A secret long enough not to draw the short-secret warning (these tests count lines).
const LONG_SECRET: &str = "ops-startup-test-secret-0123456789abcdef";

/// `ordertrack <args>` with a clean environment (only `env` set), in `cwd`, given `within` to
/// exit on its own.
fn run_clean(args: &[&str], env: &[(&str, &str)], cwd: &Path, within: Duration) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{args:?} did not exit within {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Asserts a failed start: exit 1 (2 for a usage error), nothing on stdout, exactly one stderr line containing each
/// of `needles`.
fn one_line_failure(args: &[&str], env: &[(&str, &str)], cwd: &Path, needles: &[&str]) {
    let out = run_clean(args, env, cwd, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    let usage = err.contains("(see --help)");
    assert_eq!(
        out.status.code(),
        Some(if usage { 2 } else { 1 }),
        "{args:?}: {err}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", out.stdout);
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected, got:\n{err}");
    assert!(lines[0].starts_with("ordertrack: "), "{}", lines[0]);
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{args:?}: '{n}' missing from: {}",
            lines[0]
        );
    }
}

#[test]
fn misconfigurations_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let d = data.to_str().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    // Port in use, with a configured secret and with the development secret (whose warning
    // must not come first).
    one_line_failure(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            d,
            "--jwt-secret",
            "s3cret-s3cret",
        ],
        &[],
        t,
        &["cannot listen on", &addr, "in use"],
    );
    one_line_failure(
        &["serve", "--listen", &addr, "--data-dir", d],
        &[],
        t,
        &["cannot listen on"],
    );
    // The secret never appears in an error.
    let out = run_clean(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            d,
            "--jwt-secret",
            "s3cret-s3cret",
        ],
        &[],
        t,
        Duration::from_secs(10),
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));

    // Key files: missing, unreadable as a key.
    let missing = t.join("missing.pem");
    one_line_failure(
        &[
            "serve",
            "--data-dir",
            d,
            "--jwt-algorithm",
            "RS256",
            "--jwt-public-key",
            missing.to_str().unwrap(),
        ],
        &[],
        t,
        &["cannot read the JWT public key", "missing.pem"],
    );
    let garbage = t.join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    one_line_failure(
        &[
            "serve",
            "--data-dir",
            d,
            "--jwt-algorithm",
            "ES256",
            "--jwt-public-key",
            garbage.to_str().unwrap(),
        ],
        &[],
        t,
        &["public key"],
    );
    one_line_failure(
        &["serve", "--data-dir", d, "--jwt-algorithm", "HS512"],
        &[],
        t,
        &["HS512"],
    );

    // A data directory that cannot be used: below a regular file, or with orders.redb a folder.
    // (Both are found once the port is bound: give each a free one.)
    let file = t.join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let below = file.join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    one_line_failure(
        &[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            below.to_str().unwrap(),
            "--jwt-secret",
            LONG_SECRET,
        ],
        &[],
        t,
        &["data directory", "plain-file"],
    );
    let odd = t.join("odd");
    std::fs::create_dir_all(odd.join("orders.redb")).unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    one_line_failure(
        &[
            "serve",
            "--listen",
            &listen,
            "--data-dir",
            odd.to_str().unwrap(),
            "--jwt-secret",
            LONG_SECRET,
        ],
        &[],
        t,
        &["cannot open the database"],
    );

    // Config files: unknown key (with its line), bad value, missing file; bad log format.
    let cfg = t.join("bad.toml");
    std::fs::write(
        &cfg,
        "# ok\nlisten = \"127.0.0.1:1\"\nlisen = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    one_line_failure(
        &["serve", "--config", c],
        &[],
        t,
        &["bad config file", "line 3", "unknown field `lisen`"],
    );
    std::fs::write(&cfg, "max_connections = \"many\"\n").unwrap();
    one_line_failure(
        &["serve", "--config", c],
        &[],
        t,
        &["bad config file", "line 1"],
    );
    one_line_failure(
        &["serve", "--config", "/nonexistent/ordertrack.toml"],
        &[],
        t,
        &["cannot read config file"],
    );
    one_line_failure(
        &["serve", "--data-dir", d, "--log-format", "xml"],
        &[],
        t,
        &["log format", "xml"],
    );
    one_line_failure(
        &["serve", "--data-dir", d],
        &[("ORDERTRACK_LISTEN", "not-an-address")],
        t,
        &["not-an-address", "--listen"],
    );
    one_line_failure(&["serve", "--no-such-flag"], &[], t, &["--no-such-flag"]);
    one_line_failure(&["watch"], &[], t, &["required"]);

    // The database held by a running server.
    let server = Server::start();
    one_line_failure(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            server.dir.to_str().unwrap(),
            "--jwt-secret",
            LONG_SECRET,
        ],
        &[],
        t,
        &["cannot open the database"],
    );
}

#[test]
fn help_is_complete() {
    use clap::CommandFactory;
    let root = ordertrack::Cli::command();
    let mut stack = vec![(String::new(), root)];
    let mut commands = 0;
    while let Some((prefix, cmd)) = stack.pop() {
        let path = format!("{prefix} {}", cmd.get_name()).trim().to_string();
        assert!(cmd.get_about().is_some(), "`{path}` has no description");
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help().is_some(),
                "`{path}`: argument `{id}` has no help text"
            );
        }
        // Through the binary, too: --help works and lists every option.
        let words: Vec<&str> = path.split_whitespace().skip(1).collect();
        let out = Command::new(bin())
            .args(&words)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "`{path} --help` failed");
        let text = String::from_utf8_lossy(&out.stdout);
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    text.contains(&format!("--{long}")),
                    "`{path} --help` misses --{long}"
                );
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() != "help" {
                stack.push((path.clone(), sub.clone()));
            }
        }
        commands += 1;
    }
    // ordertrack, serve, token, demo, watch, db and its four commands.
    assert!(commands >= 10, "{commands}");
}

#[test]
fn the_example_config_documents_every_key_and_every_flag_has_one() {
    use clap::CommandFactory;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/ordertrack.example.toml"
    ))
    .unwrap();
    // Keys set or shown commented out, each with a comment right above it.
    let lines: Vec<&str> = text.lines().collect();
    let mut keys = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let l2 = l.trim_start_matches("# ");
        let Some((k, _)) = l2.split_once(" = ") else {
            continue;
        };
        if !k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let mut j = i;
        while j > 0
            && lines[j - 1]
                .trim_start_matches("# ")
                .split_once(" = ")
                .is_some()
        {
            j -= 1;
        }
        assert!(
            j > 0 && lines[j - 1].starts_with('#'),
            "key {k} has no comment above it"
        );
        keys.push(k.to_string());
    }
    let serve = ordertrack::Cli::command()
        .find_subcommand("serve")
        .unwrap()
        .clone();
    let flags: Vec<String> = serve
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "config" && *l != "help")
        .map(|l| l.replace('-', "_"))
        .collect();
    for f in &flags {
        assert!(
            keys.contains(f),
            "flag --{} has no key in the example config",
            f.replace('_', "-")
        );
    }
    for k in &keys {
        assert!(flags.contains(k), "example key {k} is not a serve flag");
    }
    // And the file is accepted as it is.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("example.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        text.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut server = spawn_clean(
        &["serve", "--config", cfg.to_str().unwrap()],
        &[],
        tmp.path(),
    );
    wait_port(&mut server, port);
    assert!(tmp.path().join("data/orders.redb").is_file());
}

struct Running(std::process::Child, std::path::PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_clean(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Running {
    let log = cwd.join(format!("serve-{}.log", free_port()));
    let child = Command::new(bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn");
    Running(child, log)
}

fn wait_port(r: &mut Running, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(resp) = reqwest::blocking::get(format!("http://127.0.0.1:{port}/readyz")) {
            if resp.status().is_success() {
                return;
            }
        }
        if let Ok(Some(st)) = r.0.try_wait() {
            panic!(
                "exited with {st}: {}",
                std::fs::read_to_string(&r.1).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not ready on {port}: {}",
            std::fs::read_to_string(&r.1).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn log_of(r: &Running) -> String {
    std::fs::read_to_string(&r.1).unwrap_or_default()
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (p_file, p_env, p_flag) = (free_port(), free_port(), free_port());
    let cfg = t.join("ordertrack.toml");
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:{p_file}\"\ndata_dir = \"from-file\"\nlog_format = \"json\"\njwt_secret = \"file-secret-0123456789\"\n"),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();

    // File only (the config path itself from the environment).
    let mut s = spawn_clean(&["serve"], &[("ORDERTRACK_CONFIG", c)], t);
    wait_port(&mut s, p_file);
    assert!(t.join("from-file/orders.redb").is_file());
    assert!(
        !t.join("from-file/dev-jwt-secret").exists(),
        "the file's secret is used"
    );
    assert!(
        log_of(&s)
            .lines()
            .next()
            .is_some_and(|l| l.starts_with('{')),
        "json logs: {}",
        log_of(&s)
    );
    drop(s);

    // The environment beats the file.
    let env = [
        ("ORDERTRACK_CONFIG", c),
        ("ORDERTRACK_LISTEN", &*format!("127.0.0.1:{p_env}")),
        ("ORDERTRACK_DATA_DIR", "from-env"),
        ("ORDERTRACK_LOG_FORMAT", "text"),
    ];
    let mut s = spawn_clean(&["serve"], &env, t);
    wait_port(&mut s, p_env);
    assert!(t.join("from-env/orders.redb").is_file());
    assert!(!log_of(&s).starts_with('{'), "text logs: {}", log_of(&s));
    drop(s);

    // Flags beat both.
    let flag_listen = format!("127.0.0.1:{p_flag}");
    let mut s = spawn_clean(
        &[
            "serve",
            "--listen",
            &flag_listen,
            "--data-dir",
            "from-flag",
            "--log-format",
            "json",
        ],
        &env,
        t,
    );
    wait_port(&mut s, p_flag);
    assert!(t.join("from-flag/orders.redb").is_file());
    assert!(log_of(&s).starts_with('{'), "json logs: {}", log_of(&s));
    // The file's secret still applies (nothing overrode it): its tokens are accepted.
    let out = Command::new(bin())
        .args([
            "token",
            "--config",
            c,
            "--sub",
            &uuid::Uuid::new_v4().to_string(),
        ])
        .env_clear()
        .current_dir(t)
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = client()
        .get(format!("http://{flag_listen}/api/v1/orders/my"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(s);

    // Defaults: ./data, a development secret, text logs, 127.0.0.1:8080 (taken or not, the log
    // names it).
    let mut s = spawn_clean(&["serve"], &[], t);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_of(&s).contains("127.0.0.1:8080") {
        assert!(
            Instant::now() < deadline,
            "default listen not seen: {}",
            log_of(&s)
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = s.0.kill();
    let _ = s.0.wait();
    // The development secret is created once the port is bound, and only then.
    let bound = !log_of(&s).contains("cannot listen on");
    assert_eq!(
        t.join("data/dev-jwt-secret").is_file(),
        bound,
        "{}",
        log_of(&s)
    );
}

#[test]
fn the_systemd_unit_verifies_and_its_command_serves() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/ordertrack.service"
    ))
    .unwrap();
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    let nofile: u64 = value("LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 100_000, "LimitNOFILE {nofile}");
    assert_eq!(value("Restart"), ["on-failure"]);
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "CapabilityBoundingSet",
        "SystemCallFilter",
    ] {
        assert!(!value(key).is_empty(), "{key} missing");
    }
    assert_eq!(value("ProtectSystem"), ["strict"]);

    let tmp = tempfile::tempdir().unwrap();
    let local = unit.replace("/usr/local/bin/ordertrack", bin().to_str().unwrap());
    let path = tmp.path().join("ordertrack.service");
    std::fs::write(&path, &local).unwrap();
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && err.trim().is_empty(),
                "systemd-analyze verify: {err}"
            );
        }
        Err(e) => eprintln!("systemd-analyze not available ({e}); checked the directives only"),
    }

    // ExecStart as written, with the paths moved into a temporary directory.
    let port = free_port();
    let cfg = tmp.path().join("ordertrack.toml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/ordertrack.example.toml"
    ))
    .unwrap();
    std::fs::write(
        &cfg,
        example.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let state = tmp.path().join("state");
    let exec = value("ExecStart")[0]
        .replace("/etc/ordertrack/ordertrack.toml", cfg.to_str().unwrap())
        .replace("/var/lib/ordertrack", state.to_str().unwrap());
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[0], "/usr/local/bin/ordertrack");
    let mut s = spawn_clean(
        &words[1..],
        &[("ORDERTRACK_JWT_SECRET", "unit-test-secret-0123456789")],
        tmp.path(),
    );
    wait_port(&mut s, port);
    assert!(state.join("orders.redb").is_file());
    assert!(
        !state.join("dev-jwt-secret").exists(),
        "the EnvironmentFile secret is used"
    );
    assert!(
        log_of(&s).starts_with('{'),
        "journal-friendly JSON logs: {}",
        log_of(&s)
    );
    // SIGTERM (the unit's KillSignal) stops it cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &s.0.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Ok(Some(st)) = s.0.try_wait() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

// ---- issue 10, section 3: errors that say what went wrong ------------------------------------

/// clap's own detail survives the one-line wrapper: the missing argument is named, a misspelt
/// flag gets clap's suggestion, a bad value says why; the bare command shows the usage.
#[test]
fn usage_errors_keep_clap_detail_on_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    one_line_failure(
        &["token", "--jwt-secret", "s"],
        &[],
        t,
        &["required", "--sub <SUB>", "(see --help)"],
    );
    one_line_failure(
        &["serve", "--lisen", "127.0.0.1:1"],
        &[],
        t,
        &["'--lisen'", "similar argument exists: '--listen'"],
    );
    one_line_failure(
        &["serve", "--listen", "nowhere"],
        &[],
        t,
        &[
            "'nowhere'",
            "--listen",
            "use IP:PORT, such as 127.0.0.1:8080",
        ],
    );
    one_line_failure(
        &["token", "--jwt-secret", "s", "--sub", "alice"],
        &[],
        t,
        &["'alice'", "--sub", "must be a UUID in its standard form"],
    );
    // A limit of 0 would refuse everything while the server looks healthy: refused at start,
    // from a flag, the environment or the file alike.
    for flag in [
        "--max-connections",
        "--writer-max-batch",
        "--hub-queue-frames",
    ] {
        one_line_failure(
            &["serve", "--listen", "127.0.0.1:0", flag, "0"],
            &[],
            t,
            &[flag, "must be at least 1"],
        );
    }
    one_line_failure(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("ORDERTRACK_HUB_MAX_CONNECTIONS_PER_USER", "0")],
        t,
        &["--hub-max-connections-per-user", "must be at least 1"],
    );
    // No command at all: the usage, not the program's description passed off as an error.
    let out = run_clean(&[], &[], t, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Usage: ordertrack"), "{err}");
    assert!(err.contains("serve"), "{err}");
}

/// Each default is shown once; `serve -h` is a short grouped summary and `serve --help` the long
/// one; everyday settings come before the tuning heading.
#[test]
fn help_shows_defaults_once_and_groups_serve_options() {
    let help = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for args in [["token", "--help"], ["token", "-h"]] {
        let text = help(&args);
        assert_eq!(
            text.matches("[default: 1h]").count(),
            1,
            "{args:?}:\n{text}"
        );
    }
    let short = help(&["serve", "-h"]);
    let long = help(&["serve", "--help"]);
    assert!(short.len() < long.len(), "-h is not shorter:\n{short}");
    for text in [&short, &long] {
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("'{needle}' missing from:\n{text}"))
        };
        let tuning = at("Tuning:");
        for everyday in ["--listen", "--data-dir", "--config", "--log-format"] {
            assert!(at(everyday) < tuning, "{everyday} after the tuning heading");
        }
        for tuning_flag in ["--max-connections", "--cache-mb", "--hub-queue-frames"] {
            assert!(
                at(tuning_flag) > tuning,
                "{tuning_flag} not under the tuning heading"
            );
        }
        assert!(at("JWT:") < tuning, "JWT settings come before tuning");
    }
    // The long help carries the detail the short one leaves out.
    assert!(long.contains("0 turns the log off"), "{long}");
    assert!(!short.contains("0 turns the log off"), "{short}");
}

/// `token` refuses what the server would silently ignore, naming the accepted forms.
#[test]
fn token_refuses_unknown_roles_and_malformed_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let sub = uuid::Uuid::new_v4().to_string();
    let base = ["token", "--jwt-secret", "s", "--sub", &sub];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    for bad in ["Admin", "administrator", ""] {
        let args = with(&["--role", bad]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        one_line_failure(&args, &[], t, &["Administrator", "OrderService"]);
    }
    let restaurant = uuid::Uuid::new_v4();
    for bad in [
        "Foo".to_string(),
        "RestaurantStaff".to_string(),
        "RestaurantStaff:".to_string(),
        "RestaurantStaff:not-a-uuid".to_string(),
        format!("RestaurantManager:{restaurant}"),
        format!("restaurantstaff:{restaurant}"),
    ] {
        let args = with(&["--permission", &bad]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        one_line_failure(
            &args,
            &[],
            t,
            &[
                &format!("'{bad}'"),
                "RestaurantStaff:<restaurantId>",
                "RestaurantOwner:<restaurantId>",
            ],
        );
    }
    // The accepted forms still mint.
    let staff = format!("RestaurantStaff:{restaurant}");
    let owner = format!("RestaurantOwner:{restaurant}");
    let args = with(&[
        "--role",
        "Administrator",
        "--role",
        "OrderService",
        "--permission",
        &staff,
        "--permission",
        &owner,
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_clean(&args, &[], t, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches('.').count(), 2);
}

/// A start that fails on a taken port is one line and leaves nothing behind: no development
/// secret, not even the data directory.
#[test]
fn a_start_on_a_taken_port_leaves_no_development_secret_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for command in ["serve", "demo"] {
        let data = t.join(format!("fresh-{command}")).join("data");
        one_line_failure(
            &[
                command,
                "--listen",
                &addr,
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &[],
            t,
            &["cannot listen on", &addr],
        );
        assert!(
            !data.join("dev-jwt-secret").exists(),
            "{command}: a development secret was left behind"
        );
        assert!(!data.exists(), "{command}: the data directory was created");
    }
    // The same data directory then starts normally, and the secret is created then.
    let port = free_port();
    let data = t.join("fresh-serve").join("data");
    let mut s = spawn_clean(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        t,
    );
    wait_port(&mut s, port);
    assert!(data.join("dev-jwt-secret").is_file(), "{}", log_of(&s));
}

/// Text logs written to a file (or a pipe) carry no ANSI colour codes.
#[test]
fn text_logs_in_a_file_have_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let port = free_port();
    let mut s = spawn_clean(
        &[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            "data",
            "--log-format",
            "text",
        ],
        &[("ORDERTRACK_LOG", "debug"), ("TERM", "xterm-256color")],
        t,
    );
    wait_port(&mut s, port);
    let _ = Command::new("kill")
        .args(["-TERM", &s.0.id().to_string()])
        .status();
    let _ = s.0.wait();
    let log = log_of(&s);
    assert!(log.contains("ordertrack serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log:?}"
    );
}
