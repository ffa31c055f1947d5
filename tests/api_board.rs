//! The kitchen board, end to end on the real binary: `GET /api/v1/restaurants/{id}/orders`
//! (who may read it, order, paging, filters, cursor, 400s), `ResumeRestaurant` on a raw hub
//! connection (replay then live, no gap and no duplicate while writes race the resume,
//! `CursorExpired`, also once the retention sweeper removed the events), and the `/board`
//! page's headers. Contract section 8.

mod common;
use common::hub::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

const RESTAURANT_HUB: &str = "restaurant-orders";

fn board_path(r: Uuid, query: &str) -> String {
    format!("/api/v1/restaurants/{r}/orders{query}")
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["orderId"].as_str().expect("orderId").to_string())
        .collect()
}

#[test]
fn the_board_is_for_the_restaurant_oldest_first_paged_with_a_cursor() {
    let server = Server::start();
    let cast = Cast::new();
    let placed: Vec<Uuid> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(3));
            place(&server, &cast, "CashOnDelivery")
        })
        .collect();
    let card = place(&server, &cast, "Card"); // AwaitingPayment: not on the default board
    let (st, _) = act(&server, &cast.staff_token, placed[1], "accept", Some(eta()));
    assert_eq!(st, 200);
    let (st, _) = act(&server, &cast.staff_token, placed[2], "reject", None);
    assert_eq!(st, 200);

    // Staff, owner and administrator see the same board: oldest first, default statuses.
    let want: Vec<String> = [0, 1, 3, 4]
        .iter()
        .map(|i| placed[*i].to_string())
        .collect();
    let mut cursors = Vec::new();
    for token in [&cast.staff_token, &cast.owner_token, &cast.admin_token] {
        let (st, v) = get_json(&server, token, &board_path(cast.restaurant, ""));
        assert_eq!(st, 200, "{v}");
        assert_eq!(ids(&v), want, "{v}");
        assert_eq!(v["totalCount"], 4);
        assert_eq!(v["totalPages"], 1);
        assert_eq!(v["pageNumber"], 1);
        assert_eq!(v["hasNextPage"], false);
        assert_eq!(v["items"][1]["status"], "Accepted");
        assert_eq!(v["items"][0]["restaurantId"], cast.restaurant.to_string());
        cursors.push(v["cursor"].as_u64().expect("cursor"));
    }
    // 5 placed + 1 accepted + 1 rejected events.
    assert_eq!(cursors, vec![7, 7, 7]);

    // Anyone else: the masked 404, identical for a stranger, a customer of the restaurant,
    // another restaurant's staff, an unknown restaurant and a malformed id.
    let other_staff = token(
        Uuid::new_v4(),
        &[],
        &[&format!("RestaurantStaff:{}", Uuid::new_v4())],
    );
    let mut answers = Vec::new();
    for (token, path) in [
        (&cast.stranger_token, board_path(cast.restaurant, "")),
        (&cast.customer_token, board_path(cast.restaurant, "")),
        (&cast.service_token, board_path(cast.restaurant, "")),
        (&other_staff, board_path(cast.restaurant, "?status=Nope")),
        (&cast.staff_token, board_path(Uuid::new_v4(), "")),
        (
            &cast.staff_token,
            "/api/v1/restaurants/not-a-uuid/orders".to_string(),
        ),
    ] {
        let r = get_with(&server, token, &path, &[]);
        let (st, title, _) = problem(&r);
        assert_eq!((st, title.as_str()), (404, "GetRestaurantOrders.NotFound"));
        answers.push(problem_sans_trace(&r));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");

    // Paging: oldest first across statuses.
    let (_, p2) = get_json(
        &server,
        &cast.staff_token,
        &board_path(cast.restaurant, "?pageSize=3&pageNumber=2"),
    );
    assert_eq!(ids(&p2), vec![placed[4].to_string()]);
    assert_eq!(
        (&p2["totalPages"], &p2["hasPreviousPage"]),
        (&json!(2), &json!(true))
    );
    let (_, past) = get_json(
        &server,
        &cast.staff_token,
        &board_path(cast.restaurant, "?pageSize=3&pageNumber=9"),
    );
    assert_eq!(ids(&past), Vec::<String>::new());
    assert_eq!(past["totalCount"], 4);

    // Filters: a comma list and repeated keys are the same; names as in the contract.
    for q in [
        "?status=Accepted,Rejected,AwaitingPayment",
        "?status=Accepted&status=Rejected&status=AwaitingPayment",
    ] {
        let (st, v) = get_json(&server, &cast.staff_token, &board_path(cast.restaurant, q));
        assert_eq!(st, 200, "{q}: {v}");
        assert_eq!(
            ids(&v),
            vec![
                placed[1].to_string(),
                placed[2].to_string(),
                card.to_string()
            ],
            "{q}"
        );
        assert_eq!(v["totalCount"], 3);
    }
    for (q, field) in [
        ("?status=Cooking", "status"),
        ("?status=", "status"),
        ("?pageSize=0", "pageSize"),
        ("?pageSize=101", "pageSize"),
        ("?pageNumber=x", "pageNumber"),
    ] {
        let r = get_with(
            &server,
            &cast.staff_token,
            &board_path(cast.restaurant, q),
            &[],
        );
        let (st, title, _) = problem(&r);
        assert_eq!(
            (st, title.as_str()),
            (400, "GetRestaurantOrders.Validation"),
            "{q}"
        );
        assert!(r.json()["errors"][field].is_array(), "{q}: {:?}", r.json());
    }

    // The cursor moves with every event; a delivered order leaves the default board.
    for action in ["preparing", "ready"] {
        let (st, _) = act(&server, &cast.staff_token, placed[1], action, None);
        assert_eq!(st, 200);
    }
    let (st, _) = act(
        &server,
        &cast.staff_token,
        placed[1],
        "delivered",
        Some(json!({})),
    );
    assert_eq!(st, 200);
    let (_, v) = get_json(&server, &cast.staff_token, &board_path(cast.restaurant, ""));
    assert_eq!(v["cursor"], 10);
    assert_eq!(v["totalCount"], 3);
    assert!(!ids(&v).contains(&placed[1].to_string()));
}

/// Reads restaurant events until `n` arrived; returns their DTOs.
async fn read_events(hub: &mut JsonHub, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (target, dto) = hub.event().await;
        assert_eq!(target, "ReceiveOrderPlaced");
        out.push(dto);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_then_goes_live_without_gap_or_duplicate_while_writes_race() {
    let (server, cast) = setup();
    let other = Cast::new();
    for _ in 0..5 {
        blocking(|| place(&server, &cast, "CashOnDelivery"));
    }
    let (_, board) =
        blocking(|| get_json(&server, &cast.staff_token, &board_path(cast.restaurant, "")));
    let cursor = board["cursor"].as_u64().expect("cursor");
    assert_eq!(cursor, 5);

    // Writes for this restaurant and another race the resume.
    const N: usize = 120;
    let writer = {
        let url = server.url("/api/v1/orders");
        let (mine, theirs) = (
            cast.order_body("CashOnDelivery"),
            other.order_body("CashOnDelivery"),
        );
        let service = cast.service_token.clone();
        std::thread::spawn(move || {
            let c = client();
            let mut placed = Vec::new();
            for i in 0..N {
                for (body, keep) in [(&mine, true), (&theirs, false)] {
                    let r = c
                        .post(&url)
                        .bearer_auth(&service)
                        .json(body)
                        .send()
                        .expect("place");
                    assert_eq!(r.status(), 201);
                    let v: Value = r.json().expect("json");
                    if keep {
                        placed.push(v["order"]["orderId"].as_str().expect("id").to_string());
                    }
                }
                if i == N / 3 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            placed
        })
    };
    // Resume once a third of the writes went through.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) =
            blocking(|| get_json(&server, &cast.staff_token, &board_path(cast.restaurant, "")));
        if v["totalCount"].as_u64().unwrap_or(0) >= 5 + N as u64 / 3 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut hub = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.staff_token).await;
    let c = hub
        .invoke("ResumeRestaurant", json!([cast.restaurant, cursor]))
        .await;
    assert!(c.get("error").is_none(), "{c}");
    let placed = blocking(|| writer.join().expect("writer"));
    let got = read_events(&mut hub, N).await;
    let seqs: Vec<u64> = got
        .iter()
        .map(|d| d["sequence"].as_u64().expect("sequence"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {seqs:?}"
    );
    assert!(seqs[0] > cursor);
    let got_ids: Vec<String> = got
        .iter()
        .map(|d| d["orderId"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(got_ids, placed, "every order, once, in commit order");
    for d in &got {
        assert_eq!(d["restaurantId"], cast.restaurant.to_string());
    }
    hub.quiet(Duration::from_millis(300)).await;

    // A resume with a cursor past the newest event (another database's) is refused.
    let c = hub
        .invoke("ResumeRestaurant", json!([cast.restaurant, 1_000_000]))
        .await;
    let e = c["error"].as_str().unwrap_or("");
    assert!(e.starts_with("CursorExpired:"), "{c}");
    // The cursor as a string of digits binds too; replays nothing new here.
    let last = seqs[seqs.len() - 1];
    let c = hub
        .invoke(
            "ResumeRestaurant",
            json!([cast.restaurant, last.to_string()]),
        )
        .await;
    assert!(c.get("error").is_none(), "{c}");
    hub.quiet(Duration::from_millis(200)).await;
}

/// With a short `--outbox-retention`, the sweeper removes the events a cursor points into:
/// a resume from before them completes with `CursorExpired:`, while a resume from the board's
/// current cursor still gets the next event live, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_sweeper_overtook_is_expired_and_a_fresh_one_goes_on() {
    let server =
        blocking(|| Server::start_with(&["--outbox-retention", "1s", "--sweep-interval", "1s"]));
    let cast = Cast::new();
    for _ in 0..3 {
        blocking(|| place(&server, &cast, "CashOnDelivery"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while blocking(|| metric(&server, "ordertrack_swept_total{kind=\"outbox_events\"}")) < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the sweeper never removed the events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, board) =
        blocking(|| get_json(&server, &cast.staff_token, &board_path(cast.restaurant, "")));
    assert_eq!(
        board["totalCount"], 3,
        "orders stay; only their events went"
    );
    let cursor = board["cursor"].as_u64().expect("cursor");
    assert_eq!(cursor, 3);

    let mut hub = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.staff_token).await;
    let c = hub
        .invoke("ResumeRestaurant", json!([cast.restaurant, 0]))
        .await;
    let e = c["error"].as_str().unwrap_or("");
    assert!(e.starts_with("CursorExpired:"), "{c}");

    let c = hub
        .invoke("ResumeRestaurant", json!([cast.restaurant, cursor]))
        .await;
    assert!(c.get("error").is_none(), "{c}");
    let id = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let got = read_events(&mut hub, 1).await;
    assert_eq!(got[0]["orderId"], id.to_string());
    assert_eq!(got[0]["sequence"], 4);
    hub.quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_for_the_restaurant_people_and_needs_a_cursor() {
    let (server, cast) = setup();
    for token in [
        &cast.customer_token,
        &cast.stranger_token,
        &cast.service_token,
    ] {
        let mut hub = JsonHub::connect(server.port, RESTAURANT_HUB, token).await;
        let c = hub
            .invoke("ResumeRestaurant", json!([cast.restaurant, 0]))
            .await;
        let e = c["error"].as_str().unwrap_or("");
        assert!(
            e.ends_with("HubException: The restaurant was not found."),
            "{c}"
        );
    }
    let mut hub = JsonHub::connect(server.port, RESTAURANT_HUB, &cast.owner_token).await;
    for args in [
        json!([cast.restaurant]),
        json!([cast.restaurant, -1]),
        json!([cast.restaurant, null]),
    ] {
        let c = hub.invoke("ResumeRestaurant", args.clone()).await;
        assert!(c["error"].is_string(), "{args}: {c}");
    }
    // A refused resume leaves no subscription: nothing arrives.
    blocking(|| place(&server, &cast, "CashOnDelivery"));
    hub.quiet(Duration::from_millis(300)).await;
    // An empty outbox and cursor 0: nothing to replay, then live.
    let c = hub
        .invoke("ResumeRestaurant", json!([cast.restaurant, 1]))
        .await;
    assert!(c.get("error").is_none(), "{c}");
    let id = blocking(|| place(&server, &cast, "CashOnDelivery"));
    let (_, dto) = hub.event().await;
    assert_eq!(dto["orderId"], id.to_string());
    assert_eq!(dto["sequence"], 2);
}

#[test]
fn the_board_page_and_its_assets_are_served_with_a_strict_policy() {
    let server = Server::start();
    let c = client();
    for (path, kind) in [
        ("/board", "text/html"),
        ("/board/board.js", "text/javascript"),
        ("/board/board.css", "text/css"),
        ("/board/signalr.min.js", "text/javascript"),
        ("/board/signalr.LICENSE.txt", "text/plain"),
    ] {
        let r = c.get(server.url(path)).send().expect("get");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap_or("");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(
            h["content-type"].to_str().unwrap_or("").starts_with(kind),
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = r.text().expect("body");
        if path == "/board" {
            assert!(
                body.contains("/board/signalr.min.js") && !body.contains("http"),
                "{body}"
            );
        }
    }
    let r = c.get(server.url("/board/nope.js")).send().expect("get");
    assert_eq!(r.status(), 404);
    let r = c.post(server.url("/board")).send().expect("post");
    assert_eq!(r.status(), 405);
}
