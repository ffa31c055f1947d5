//! `/metrics` end to end: the exposition is well-formed Prometheus text, and every series the
//! operator relies on moves when its cause happens: requests by route and status with their
//! latency histogram, hub connections and subscriptions, events dispatched and delivered,
//! slow-consumer closes, refused connections, writer batch sizes and commit latency, database
//! size and order count.

mod common;
use common::hub::*;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

type Samples = HashMap<String, f64>;

/// Scrapes and checks the format: every sample belongs to a `# TYPE`d family, histogram buckets
/// are cumulative and end with `+Inf` equal to `_count`.
fn scrape(server: &Server) -> Samples {
    let r = blocking(|| send(client().get(server.url("/metrics"))));
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Samples::new();
    for line in r.text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without # TYPE: {line}");
        assert!(
            samples.insert(key.to_string(), value).is_none(),
            "duplicate {key}"
        );
    }
    // Buckets are cumulative and +Inf equals _count.
    let mut histograms: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for (k, v) in &samples {
        // The `le` label itself (a label such as `role="…"` also ends in `le="`).
        let at = ["{le=\"", ",le=\""]
            .iter()
            .find_map(|p| k.find(p).map(|i| i + 1));
        if let Some((series, le)) = at.map(|i| (&k[..i], &k[i + "le=\"".len()..])) {
            let le = le.trim_end_matches("\"}");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let base = series.trim_end_matches(',').replace("_bucket{", "{");
            histograms.entry(base).or_default().push((le, *v));
        }
    }
    for (base, mut buckets) in histograms {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{base}: {buckets:?}"
        );
        let count_key = match base.strip_suffix('{') {
            Some(name) => format!("{name}_count"),
            None => base.replacen('{', "_count{", 1) + "}",
        };
        let count_key = count_key.replace("{}", "");
        assert_eq!(
            Some(&buckets.last().unwrap().1),
            samples.get(&count_key),
            "{base} +Inf vs {count_key}"
        );
    }
    samples
}

fn get(s: &Samples, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

/// Asserts `key` grew by at least `by` between two scrapes.
fn grew(before: &Samples, after: &Samples, key: &str, by: f64) {
    let (b, a) = (get(before, key), get(after, key));
    assert!(a - b >= by, "{key}: {b} → {a}, expected +{by}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_series_moves() {
    let server =
        blocking(|| Server::start_with(&["--hub-queue-frames", "2", "--max-hub-connections", "3"]));
    let cast = blocking(Cast::new);
    let port = server.port;
    let s0 = scrape(&server);

    // Requests, latency, the writer, the database.
    let id = blocking(|| place(&server, &cast, "CashOnDelivery"));
    blocking(|| {
        get_json(
            &server,
            &cast.stranger_token,
            &format!("/api/v1/orders/{id}/status"),
        )
    });
    let s1 = scrape(&server);
    grew(
        &s0,
        &s1,
        r#"ordertrack_http_requests_total{route="place_order",status="201"}"#,
        1.0,
    );
    grew(
        &s0,
        &s1,
        r#"ordertrack_http_requests_total{route="order_status",status="404"}"#,
        1.0,
    );
    grew(
        &s0,
        &s1,
        r#"ordertrack_http_request_duration_seconds_count{route="place_order"}"#,
        1.0,
    );
    assert!(
        get(
            &s1,
            r#"ordertrack_http_request_duration_seconds_sum{route="place_order"}"#
        ) > 0.0
    );
    grew(
        &s0,
        &s1,
        r#"ordertrack_http_request_duration_seconds_bucket{route="place_order",le="+Inf"}"#,
        1.0,
    );
    grew(&s0, &s1, "ordertrack_writer_batch_size_count", 1.0);
    grew(&s0, &s1, "ordertrack_writer_batch_size_sum", 1.0);
    grew(&s0, &s1, "ordertrack_writer_commit_seconds_count", 1.0);
    assert!(get(&s1, "ordertrack_writer_commit_seconds_sum") > 0.0);
    grew(&s0, &s1, "ordertrack_orders", 1.0);
    assert!(get(&s1, "ordertrack_db_size_bytes") > 0.0);
    // The scrape itself is counted under its route.
    grew(
        &s0,
        &s1,
        r#"ordertrack_http_requests_total{route="metrics",status="200"}"#,
        1.0,
    );

    // Hub connections and subscriptions; events dispatched and delivered.
    let mut customer = JsonHub::connect(port, "customer-orders", &cast.customer_token).await;
    customer.subscribe(id).await;
    let s2 = scrape(&server);
    grew(&s1, &s2, "ordertrack_hub_connections", 1.0);
    grew(&s1, &s2, "ordertrack_hub_subscriptions", 1.0);
    grew(
        &s1,
        &s2,
        r#"ordertrack_http_requests_total{route="hub_negotiate",status="200"}"#,
        1.0,
    );
    grew(
        &s1,
        &s2,
        r#"ordertrack_http_requests_total{route="hub_connect",status="101"}"#,
        1.0,
    );
    blocking(|| act(&server, &cast.staff_token, id, "accept", Some(eta())));
    let (target, dto) = customer.event().await;
    assert_eq!(
        (target.as_str(), dto["status"].as_str()),
        ("ReceiveOrderStatusChanged", Some("Accepted"))
    );
    let s3 = scrape(&server);
    grew(&s2, &s3, "ordertrack_events_dispatched_total", 1.0);
    grew(&s2, &s3, "ordertrack_event_deliveries_total", 1.0);

    // A slow consumer: a narrow client on the restaurant hub that stops reading.
    let token = negotiate_token(port, "restaurant-orders", &cast.staff_token).await;
    let ws = ws_connect_with(
        port,
        &format!("/hubs/restaurant-orders?id={token}"),
        Some(&cast.staff_token),
        true,
    )
    .await
    .expect("upgrade");
    let mut slow = JsonHub::handshake(ws).await;
    slow.subscribe_restaurant(cast.restaurant).await;
    // A third hub connection is allowed, a fourth is refused.
    let third = JsonHub::connect(port, "customer-orders", &cast.customer_token).await;
    let token = negotiate_token(port, "customer-orders", &cast.customer_token).await;
    let refused = ws_connect(
        port,
        &format!("/hubs/customer-orders?id={token}"),
        Some(&cast.customer_token),
    )
    .await;
    assert_eq!(refused_status(refused), 503);
    let s4 = scrape(&server);
    grew(&s3, &s4, "ordertrack_refused_connections_total", 1.0);
    assert_eq!(get(&s4, "ordertrack_hub_connections"), 3.0);
    drop(third);

    let mut placed = 0;
    while get(&scrape(&server), "ordertrack_slow_consumer_closes_total") < 1.0 {
        assert!(
            placed < 6000,
            "no slow-consumer close after {placed} events"
        );
        blocking(|| {
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..50 {
                            place(&server, &cast, "CashOnDelivery");
                        }
                    });
                }
            })
        });
        placed += 200;
    }
    drop(slow);

    // Connections and subscriptions go back down when clients leave.
    drop(customer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(&server);
        if get(&s, "ordertrack_hub_connections") == 0.0
            && get(&s, "ordertrack_hub_subscriptions") == 0.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections {} subscriptions {} after every client left",
            get(&s, "ordertrack_hub_connections"),
            get(&s, "ordertrack_hub_subscriptions")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s5 = scrape(&server);
    assert!(get(&s5, "ordertrack_writer_batch_size_count") >= placed as f64 / 512.0);
    grew(&s1, &s5, "ordertrack_db_size_bytes", 1.0);
}

#[test]
fn commit_log_checkpoints_are_counted_and_timed() {
    // A 1 MiB commit log checkpoints once half of it is used (a few hundred orders).
    let server = Server::start_with(&["--commit-log-mb", "1"]);
    let cast = Cast::new();
    let s0 = scrape(&server);
    assert_eq!(get(&s0, "ordertrack_writer_checkpoint_seconds_count"), 0.0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..150 {
                    place(&server, &cast, "CashOnDelivery");
                }
            });
        }
    });
    let s1 = scrape(&server);
    grew(&s0, &s1, "ordertrack_writer_checkpoint_seconds_count", 1.0);
    assert!(get(&s1, "ordertrack_writer_checkpoint_seconds_sum") > 0.0);
    // Far fewer checkpoints than batches: most batches only went through the log.
    assert!(
        get(&s1, "ordertrack_writer_checkpoint_seconds_count") * 10.0
            < get(&s1, "ordertrack_writer_batch_size_count"),
        "checkpoints {} batches {}",
        get(&s1, "ordertrack_writer_checkpoint_seconds_count"),
        get(&s1, "ordertrack_writer_batch_size_count")
    );
}
