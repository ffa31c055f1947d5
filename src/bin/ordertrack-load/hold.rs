//! `hold`: C subscribed hub connections, opened by P worker processes (this binary re-run as the
//! hidden `hold-worker` scenario) over S 127.0.0.x source addresses, so no process nears its
//! open-file limit and no source address runs out of ports. The parent places the orders, gives
//! each worker its share on stdin, waits for every worker's one-line report on stdout, then reads
//! the server's RSS: RSS per subscribed connection and the aggregate connect + handshake +
//! subscribe rate. Workers hold their connections until their stdin closes.

use super::{minter, open_subscriber, place_orders, rss_kib, Arrival, Cast, Cli, Subscriber, R};
use std::io::{BufRead, BufReader, Lines, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the parent runs.
pub struct Plan {
    pub connections: usize,
    pub processes: usize,
    pub sources: u8,
    /// Connections being opened at once, over all workers.
    pub in_flight: usize,
    /// After all are subscribed, hold this long and read the RSS again (0: skip).
    pub hold_secs: u64,
}

/// Ends a worker's share on its stdin.
const END: &str = "end";
/// First word of a worker's report: `subscribed <ok> <failed> <seconds>`.
const REPORT: &str = "subscribed";

/// The source address of connection `i` (of the whole run, so every worker spreads too).
fn source(i: usize, sources: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + (i % sources.max(1) as usize) as u8,
    ))
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// One worker's report.
struct Report {
    ok: usize,
    failed: usize,
    secs: f64,
}

fn parse_report(line: &str) -> Option<Report> {
    let mut w = line.split_whitespace();
    if w.next()? != REPORT {
        return None;
    }
    Some(Report {
        ok: w.next()?.parse().ok()?,
        failed: w.next()?.parse().ok()?,
        secs: w.next()?.parse().ok()?,
    })
}

fn spawn_worker(cli: &Cli, sources: u8, in_flight: usize) -> R<Worker> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env("ORDERTRACK_JWT_SECRET", &cli.secret)
        .args([
            "--addr",
            &cli.addr.to_string(),
            "hold-worker",
            "--sources",
            &sources.to_string(),
            "--in-flight",
            &in_flight.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting a hold worker: {e}"))?;
    let stdin = child.stdin.take().ok_or("worker stdin")?;
    let stdout = child.stdout.take().ok_or("worker stdout")?;
    Ok(Worker {
        child,
        stdin: Some(stdin),
        stdout: BufReader::new(stdout).lines(),
    })
}

/// Sends each worker its share, then waits for every report. Blocking: run off the runtime.
fn start_all(
    workers: &mut [Worker],
    shares: Vec<Vec<(usize, Uuid, Uuid)>>,
) -> R<(Vec<Report>, f64)> {
    let start = Instant::now();
    for (k, (w, share)) in workers.iter_mut().zip(shares).enumerate() {
        let mut text = String::with_capacity(share.len() * 80 + 4);
        for (i, customer, order) in share {
            text.push_str(&format!("{i} {customer} {order}\n"));
        }
        text.push_str(END);
        text.push('\n');
        let stdin = w.stdin.as_mut().ok_or("worker stdin closed")?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("hold worker {k}: {e}"))?;
    }
    let mut reports = Vec::with_capacity(workers.len());
    for (k, w) in workers.iter_mut().enumerate() {
        let report = loop {
            match w.stdout.next() {
                Some(Ok(line)) => {
                    if let Some(r) = parse_report(&line) {
                        break r;
                    }
                }
                _ => return Err(format!("hold worker {k} ended before reporting")),
            }
        };
        reports.push(report);
    }
    Ok((reports, start.elapsed().as_secs_f64()))
}

/// Closes every worker's stdin (they exit, dropping their sockets) and waits for them.
fn stop_all(workers: Vec<Worker>) {
    for mut w in workers {
        w.stdin = None;
        for _ in w.stdout.by_ref() {}
        let _ = w.child.wait();
    }
}

pub async fn run(cli: &Cli, plan: Plan) -> R<String> {
    let Plan {
        connections: c,
        processes,
        sources,
        in_flight,
        hold_secs,
    } = plan;
    let processes = processes.clamp(1, c.max(1));
    let cast = Cast::new(&cli.secret)?;
    let customers: Vec<Uuid> = (0..c).map(|_| Uuid::new_v4()).collect();
    let orders = place_orders(cli.addr, &cast.service, cast.restaurant, &customers).await?;
    // Worker k takes connections k, k + P, k + 2P, …
    let mut shares: Vec<Vec<(usize, Uuid, Uuid)>> = vec![Vec::new(); processes];
    for (i, (cu, o)) in customers.iter().zip(&orders).enumerate() {
        shares[i % processes].push((i, *cu, *o));
    }
    let per_worker = (in_flight / processes).max(1);
    let mut workers = Vec::with_capacity(processes);
    for _ in 0..processes {
        match spawn_worker(cli, sources, per_worker) {
            Ok(w) => workers.push(w),
            Err(e) => {
                stop_all(workers);
                return Err(e);
            }
        }
    }
    let rss_before = rss_kib(cli.server_pid);
    let (mut workers, started) = tokio::task::spawn_blocking(move || {
        let r = start_all(&mut workers, shares);
        (workers, r)
    })
    .await
    .map_err(|e| e.to_string())?;
    let (reports, secs) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || stop_all(workers)).await;
            return Err(e);
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(cli.server_pid);
    let rss_held = if hold_secs > 0 {
        tokio::time::sleep(Duration::from_secs(hold_secs)).await;
        rss_kib(cli.server_pid)
    } else {
        None
    };
    let ok: usize = reports.iter().map(|r| r.ok).sum();
    let failed: usize = reports.iter().map(|r| r.failed).sum();
    workers.iter_mut().for_each(|w| w.stdin = None);
    let _ = tokio::task::spawn_blocking(move || stop_all(workers)).await;

    let kib = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
    let per_conn = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(a)) if ok > 0 => format!("{:.1} KiB", (a as f64 - b as f64) / ok as f64),
        _ => "n/a (pass --server-pid)".into(),
    };
    let mut t = String::from("| metric | value |\n|---|---|\n");
    t.push_str(&format!(
        "| hub connections (subscribed) | {ok} ok, {failed} failed |\n"
    ));
    t.push_str(&format!(
        "| client processes × source addresses | {processes} × {} (127.0.0.2 …) |\n",
        sources.max(1)
    ));
    t.push_str(&format!(
        "| connect+handshake+subscribe rate | {:.0}/s (all processes, {secs:.2} s) |\n",
        ok as f64 / secs
    ));
    let each: Vec<String> = reports
        .iter()
        .map(|r| format!("{} in {:.2} s", r.ok, r.secs))
        .collect();
    t.push_str(&format!("| per process | {} |\n", each.join("; ")));
    t.push_str(&format!(
        "| server RSS before / after connections | {} / {} KiB |\n",
        kib(rss_before),
        kib(rss_after)
    ));
    t.push_str(&format!(
        "| server RSS per subscribed connection | {} |\n",
        per_conn(rss_after)
    ));
    if hold_secs > 0 {
        t.push_str(&format!(
            "| server RSS after holding {hold_secs} s (keep-alive pings both ways) | {} KiB ({} per connection) |\n",
            kib(rss_held),
            per_conn(rss_held)
        ));
    }
    Ok(t)
}

/// Reads stdin lines until `stop` says so (or stdin ends). Blocking.
fn read_lines(stop: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if stop(&line) {
            break;
        }
        out.push(line);
    }
    out
}

/// The worker: opens its share (`index customer order` lines on stdin, then `end`), prints its
/// report, holds until stdin closes, then exits the process without closing the sockets one
/// by one.
pub async fn worker(cli: &Cli, sources: u8, in_flight: usize) -> R<String> {
    let lines = tokio::task::spawn_blocking(|| read_lines(|l| l == END))
        .await
        .map_err(|e| e.to_string())?;
    let m = minter(&cli.secret)?;
    let mut share = Vec::with_capacity(lines.len());
    for line in &lines {
        let mut w = line.split_whitespace();
        let (Some(i), Some(cu), Some(o)) = (w.next(), w.next(), w.next()) else {
            return Err(format!("bad share line: {line}"));
        };
        let i: usize = i.parse().map_err(|_| format!("bad index: {line}"))?;
        let cu: Uuid = cu.parse().map_err(|_| format!("bad customer: {line}"))?;
        let o: Uuid = o.parse().map_err(|_| format!("bad order: {line}"))?;
        share.push((i, cu, o));
    }
    // Nothing is driven in this scenario: arrivals are not collected.
    let (atx, _arx) = mpsc::unbounded_channel::<Arrival>();
    let stop = CancellationToken::new();
    let sem = Arc::new(Semaphore::new(in_flight.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(share.len());
    for (i, cu, o) in share {
        let token = m.mint(cu, &[], &[], 3600).map_err(|e| e.to_string())?;
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let sub = Subscriber {
            addr: cli.addr,
            source: source(i, sources),
            token,
            order: o,
            idx: i,
            msgpack: false,
        };
        let (atx, stop) = (atx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let r = open_subscriber(sub, atx, stop).await;
            drop(permit);
            r
        }));
    }
    let mut ok = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        eprintln!("hold worker: {failed} connections failed, first: {e}");
    }
    println!("{REPORT} {ok} {failed} {secs:.3}");
    let _ = std::io::stdout().flush();
    let _ = tokio::task::spawn_blocking(|| read_lines(|_| false)).await;
    std::process::exit(0)
}
