//! `ordertrack watch` and `ordertrack demo` end to end: the watch client follows an order live
//! over the hub, falls back to ETag polling when the socket is refused, refuses foreign orders
//! and bad tokens; the demo serves, simulates every kind of ending, and the `watch` command it
//! prints shows its featured order's whole life.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process whose stdout lines arrive on a channel.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(cmd: &mut Command) -> Lines {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with '{needle}' within {within:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit; returns (code, every stdout line, stderr).
    fn finish(mut self, within: Duration) -> (Option<i32>, Vec<String>, String) {
        let deadline = Instant::now() + within;
        let code = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "did not exit within {within:?}; stdout so far:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.rx.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (code, std::mem::take(&mut self.seen), err)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn watch_cmd(server: &Server, token: &str, id: uuid::Uuid, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "watch",
        &id.to_string(),
        "--url",
        &server.base,
        "--token",
        token,
    ])
    .args(extra)
    .env_remove("ORDERTRACK_TOKEN")
    .env_remove("ORDERTRACK_URL");
    c
}

/// The statuses printed, in order, one per shown line.
fn statuses(lines: &[String]) -> Vec<String> {
    const ALL: [&str; 8] = [
        "AwaitingPayment",
        "Placed",
        "Accepted",
        "Preparing",
        "ReadyForDelivery",
        "Delivered",
        "Cancelled",
        "Rejected",
    ];
    lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| ALL.contains(w))
                .map(str::to_string)
        })
        .collect()
}

fn metric(server: &Server, series: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn watch_follows_an_order_live_and_stops_at_the_end() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "Card");
    let mut w = Lines::spawn(&mut watch_cmd(&server, &cast.customer_token, id, &[]));
    w.wait_for("subscribed", Duration::from_secs(10));
    let (st, _) = act(&server, &cast.service_token, id, "payment-succeeded", None);
    assert_eq!(st, 200);
    w.wait_for("ReceiveOrderPlaced", Duration::from_secs(5));
    for (action, body) in [
        ("accept", Some(eta())),
        ("preparing", None),
        ("ready", None),
        ("delivered", None),
    ] {
        assert_eq!(act(&server, &cast.staff_token, id, action, body).0, 200);
    }
    let (code, lines, err) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{lines:?} {err}");
    assert_eq!(
        statuses(&lines),
        [
            "AwaitingPayment",
            "Placed",
            "Placed",
            "Accepted",
            "Preparing",
            "ReadyForDelivery",
            "Delivered"
        ],
        "{lines:#?}"
    );
    let events: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("ReceiveOrder"))
        .collect();
    assert_eq!(events.len(), 6, "each event once: {lines:#?}");
    assert!(
        events[0].contains("ReceiveOrderPaymentSucceeded"),
        "{lines:#?}"
    );
    assert!(lines.last().unwrap().contains(" v6 "), "{lines:#?}");

    // An order already delivered: its state, then straight out.
    let (code, lines, _) = Lines::spawn(&mut watch_cmd(&server, &cast.customer_token, id, &[]))
        .finish(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert_eq!(statuses(&lines), ["Delivered"], "{lines:#?}");
}

#[test]
fn watch_polls_with_etags_when_the_socket_is_refused() {
    // No hub connections allowed: the socket is unavailable.
    let server = Server::start_with(&["--max-hub-connections", "0"]);
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    let mut w = Lines::spawn(&mut watch_cmd(
        &server,
        &cast.customer_token,
        id,
        &["--poll-interval", "1s"],
    ));
    w.wait_for("live updates unavailable", Duration::from_secs(10));
    w.wait_for("polled /status", Duration::from_secs(5));
    // Unchanged polls are answered 304 without a body.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &server,
        "ordertrack_http_requests_total{route=\"order_status\",status=\"304\"}",
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "no 304 poll");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        act(&server, &cast.staff_token, id, "accept", Some(eta())).0,
        200
    );
    w.wait_for("Accepted", Duration::from_secs(5));
    assert_eq!(
        act(&server, &cast.customer_token, id, "cancel", None).0,
        200
    );
    let (code, lines, err) = w.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{lines:?} {err}");
    assert_eq!(
        statuses(&lines),
        ["Placed", "Accepted", "Cancelled"],
        "{lines:#?}"
    );

    // Only the socket, and it is refused: an error, not a silent poll.
    let (code, _, err) = Lines::spawn(&mut watch_cmd(
        &server,
        &cast.customer_token,
        id,
        &["--transport", "websocket"],
    ))
    .finish(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn watch_refuses_foreign_orders_and_bad_tokens() {
    let server = Server::start();
    let cast = Cast::new();
    let id = place(&server, &cast, "CashOnDelivery");
    for transport in ["auto", "poll"] {
        let (code, _, err) = Lines::spawn(&mut watch_cmd(
            &server,
            &cast.stranger_token,
            id,
            &["--transport", transport],
        ))
        .finish(Duration::from_secs(10));
        assert_eq!(code, Some(1), "{transport}: {err}");
        assert!(err.contains("was not found"), "{transport}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains(&cast.stranger_token), "no token in output");
        let (code, _, err) = Lines::spawn(&mut watch_cmd(
            &server,
            "not-a-token",
            id,
            &["--transport", transport],
        ))
        .finish(Duration::from_secs(10));
        assert_eq!(code, Some(1), "{transport}: {err}");
        assert!(err.contains("refused the token"), "{transport}: {err}");
    }
}

#[test]
fn demo_simulates_every_ending_and_prints_a_working_watch_command() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut demo = Lines::spawn(
        Command::new(bin())
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--rate",
                "25",
                "--step-ms",
                "120",
                "--lead-ms",
                "1500",
                "--verbose",
            ])
            .env_remove("ORDERTRACK_JWT_SECRET")
            .env_remove("ORDERTRACK_DATA_DIR")
            .current_dir(tmp.path()),
    );
    let banner = demo.wait_for("ordertrack demo: serving on", Duration::from_secs(20));
    assert!(banner.contains(&format!("127.0.0.1:{port}")), "{banner}");
    let id = demo.wait_for("order to watch:", Duration::from_secs(10));
    let id = id.rsplit(' ').next().unwrap().to_string();
    let token = demo.wait_for("customer token:", Duration::from_secs(5));
    let token = token.rsplit(' ').next().unwrap().to_string();
    let line = demo.wait_for("watch it live:", Duration::from_secs(5));
    let command = line.trim_start_matches("watch it live:").trim().to_string();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&words[1..4], ["watch", id.as_str(), "--url"], "{command}");
    assert!(command.ends_with(&format!("--token {token}")), "{command}");

    // Run the printed command as it is (the demo's own binary path first).
    let watch = Lines::spawn(
        Command::new(words[0])
            .args(&words[1..])
            .current_dir(tmp.path()),
    );
    let (code, lines, err) = watch.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{lines:?} {err}");
    let st = statuses(&lines);
    assert_eq!(
        st.first().map(String::as_str),
        Some("AwaitingPayment"),
        "{lines:#?}"
    );
    assert_eq!(
        st.last().map(String::as_str),
        Some("Delivered"),
        "{lines:#?}"
    );
    for s in ["Accepted", "Preparing", "ReadyForDelivery"] {
        assert!(st.iter().any(|x| x == s), "{s} missing: {lines:#?}");
    }
    assert!(
        lines.iter().filter(|l| l.contains("ReceiveOrder")).count() >= 5,
        "seen live: {lines:#?}"
    );

    // The simulated world reaches every kind of ending.
    for ending in [
        "delivered → Delivered",
        "reject → Rejected",
        "cancel → Cancelled",
        "payment-failed → Cancelled",
        "payment-succeeded → Placed",
    ] {
        demo.wait_for(ending, Duration::from_secs(20));
    }
    // The demo uses the embedded defaults for everything else: data in ./data.
    assert!(tmp.path().join("data/orders.redb").is_file());
    assert!(tmp.path().join("data/dev-jwt-secret").is_file());
    let pid = demo.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let (code, _, err) = demo.finish(Duration::from_secs(15));
    assert_eq!(code, Some(0), "clean stop: {err}");
}
