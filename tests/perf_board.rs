//! Numbers for the kitchen board, measured on the real binary (ignored by default; run by hand
//! against a release build, see docs/performance.md): the server CPU of a `ResumeRestaurant`
//! from a cursor 1,000 events back, and the cost of the board's page 1 for a restaurant with 100
//! orders against one with 100,000. Server CPU is utime+stime from /proc/PID/stat over each
//! round, divided by the operations; the baseline runs in the same process, rounds alternate,
//! and the median of the rounds is printed. Nothing here asserts a speed.

mod common;
use common::hub::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // Linux reports clock ticks; USER_HZ is 100 on every platform we run on.
    ticks as f64 / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand with OT_SERVER_BIN=target/release/ordertrack"]
async fn resume_cost_for_a_cursor_1000_events_back() {
    const BACK: u64 = 1_000;
    const PER_ROUND: usize = 40;
    let (server, cast) = setup();
    blocking(|| place_many(&server, &cast, BACK as usize + 10, 4));
    let (_, board) = blocking(|| {
        get_json(
            &server,
            &cast.staff_token,
            &format!("/api/v1/restaurants/{}/orders?pageSize=1", cast.restaurant),
        )
    });
    let newest = board["cursor"].as_u64().expect("cursor");
    let mut hub = JsonHub::connect(server.port, "restaurant-orders", &cast.staff_token).await;
    let mut per = (Vec::new(), Vec::new());
    for round in 0..6 {
        let (cursor, expect) = if round % 2 == 0 {
            (newest - BACK, BACK as usize)
        } else {
            (newest, 0)
        };
        let cpu0 = cpu_seconds(server.pid());
        let t0 = Instant::now();
        for _ in 0..PER_ROUND {
            let c = hub
                .invoke("ResumeRestaurant", json!([cast.restaurant, cursor]))
                .await;
            assert!(c.get("error").is_none(), "{c}");
            for _ in 0..expect {
                hub.event().await;
            }
        }
        let cpu = (cpu_seconds(server.pid()) - cpu0) / PER_ROUND as f64;
        let wall = t0.elapsed().as_secs_f64() / PER_ROUND as f64;
        println!("round {round}: cursor {cursor} → {expect} events: server CPU {:.2} ms, wall {:.2} ms per resume", cpu * 1e3, wall * 1e3);
        if round % 2 == 0 {
            per.0.push(cpu);
        } else {
            per.1.push(cpu);
        }
    }
    let (back, base) = (median(per.0), median(per.1));
    println!(
        "resume {BACK} events back: server CPU {:.2} ms per resume (median); nothing to replay: {:.2} ms; difference {:.2} ms ({:.1} µs per replayed event)",
        back * 1e3,
        base * 1e3,
        (back - base) * 1e3,
        (back - base) * 1e6 / BACK as f64
    );
}

#[test]
#[ignore = "a measurement: run by hand with OT_SERVER_BIN=target/release/ordertrack"]
fn board_page_one_costs_the_same_at_100_and_100_000_orders() {
    const BIG: usize = 100_000;
    const PER_ROUND: usize = 400;
    let server = Server::start();
    let small = Cast::new();
    let big = Cast::new();
    let t0 = Instant::now();
    place_many(&server, &small, 100, 2);
    place_many(&server, &big, BIG, 8);
    println!(
        "placed {} orders in {:.1} s",
        BIG + 100,
        t0.elapsed().as_secs_f64()
    );
    let c = client();
    let get = |cast: &Cast| {
        let r = c
            .get(server.url(&format!("/api/v1/restaurants/{}/orders", cast.restaurant)))
            .bearer_auth(&cast.staff_token)
            .send()
            .expect("get");
        assert_eq!(r.status(), 200);
        r.bytes().expect("body");
    };
    let mut rounds: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..6 {
        let (cast, which) = if round % 2 == 0 {
            (&small, 0)
        } else {
            (&big, 1)
        };
        let cpu0 = cpu_seconds(server.pid());
        let mut lat = Vec::with_capacity(PER_ROUND);
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            get(cast);
            lat.push(t.elapsed().as_secs_f64());
        }
        let cpu = (cpu_seconds(server.pid()) - cpu0) / PER_ROUND as f64;
        rounds[which].push((cpu, median(lat)));
    }
    for (which, name) in [(0, "100 orders"), (1, "100,000 orders")] {
        let cpu = median(rounds[which].iter().map(|r| r.0).collect());
        let lat = median(rounds[which].iter().map(|r| r.1).collect());
        println!(
            "board page 1 (pageSize 10), restaurant with {name}: server CPU {:.1} µs per request, median latency {:.2} ms",
            cpu * 1e6,
            lat * 1e3
        );
    }
    std::thread::sleep(Duration::from_millis(10));
}
