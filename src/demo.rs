//! `ordertrack demo`: serves exactly like `serve` and runs a simulator against the server's own
//! REST API: restaurants, customers and orders that go through realistic lives (card payments
//! that succeed or fail, accepts, rejects, customer and staff cancellations, deliveries) at a
//! configurable rate. It prints a "featured" order with its customer's token and the exact
//! `watch` command; each featured order waits a little (time to start `watch`), then walks the
//! whole happy path, and the next featured order is announced when it is delivered.

use crate::auth::TokenMinter;
use crate::cli::DemoArgs;
use crate::client::{Endpoint, Http};
use crate::config::{ConfigError, Settings};
use crate::run::RunError;
use rand::Rng;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum DemoError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("the demo mints its own tokens and needs an HS256 secret: {0}")]
    Minter(String),
    #[error("--rate must be a positive number of orders per second")]
    Rate,
    #[error("the demo serves plain HTTP on loopback: run it without --tls-cert/--tls-key (and `serve` with them)")]
    Tls,
}

pub fn demo(args: DemoArgs) -> Result<(), DemoError> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(DemoError::Rate);
    }
    let settings = Settings::resolve(&args.serve)?;
    if settings.tls.is_some() {
        return Err(DemoError::Tls);
    }
    let minter = TokenMinter::new(&settings.auth).map_err(|e| DemoError::Minter(e.to_string()))?;
    crate::run::init_logging(settings.log_format);
    let data_dir = settings.data_dir.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(crate::run::serve_with(settings, move |addr, stop| {
        let world = World::new(&args, &minter, addr, data_dir);
        match world {
            Ok(w) => {
                tokio::spawn(w.run(args, stop));
            }
            Err(e) => tracing::error!(error = %e, "the simulator could not start"),
        }
    }))?;
    Ok(())
}

const RESTAURANTS: &[(&str, &[(&str, &str)])] = &[
    (
        "Luigi's Trattoria",
        &[
            ("Margherita Pizza", "12.00"),
            ("Calzone", "15.00"),
            ("Tiramisu", "6.50"),
        ],
    ),
    (
        "Sakura Sushi",
        &[
            ("Salmon Nigiri", "7.80"),
            ("Dragon Roll", "14.20"),
            ("Miso Soup", "3.90"),
        ],
    ),
    (
        "Taco Loco",
        &[
            ("Al Pastor Tacos", "9.50"),
            ("Burrito Bowl", "11.25"),
            ("Churros", "4.75"),
        ],
    ),
    (
        "Green Bowl",
        &[
            ("Falafel Bowl", "10.90"),
            ("Quinoa Salad", "9.40"),
            ("Lemonade", "3.20"),
        ],
    ),
    (
        "Curry House",
        &[
            ("Chicken Tikka Masala", "13.60"),
            ("Dal Makhani", "10.10"),
            ("Garlic Naan", "2.80"),
        ],
    ),
    (
        "Burger Barn",
        &[
            ("Double Cheeseburger", "11.90"),
            ("Sweet Potato Fries", "4.60"),
            ("Milkshake", "5.30"),
        ],
    ),
];

/// What happened so far, for the summary line.
#[derive(Default)]
struct Tally {
    placed: AtomicU64,
    delivered: AtomicU64,
    rejected: AtomicU64,
    cancelled: AtomicU64,
    payment_failed: AtomicU64,
    changes: AtomicU64,
    errors: AtomicU64,
}

struct Restaurant {
    id: Uuid,
    name: &'static str,
    menu: &'static [(&'static str, &'static str)],
    staff_token: String,
}

struct Customer {
    id: Uuid,
    token: String,
}

struct World {
    ep: Endpoint,
    data_dir: std::path::PathBuf,
    service_token: String,
    restaurants: Vec<Restaurant>,
    customers: Vec<Customer>,
    tally: Tally,
    step: Duration,
    verbose: bool,
}

/// How one simulated order's life goes.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Delivered,
    PaymentFails,
    Rejected,
    CustomerCancels,
    StaffCancels,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Tokens last a day: enough for a long demo.
const TOKEN_TTL: i64 = 24 * 3600;

impl World {
    fn new(
        args: &DemoArgs,
        minter: &TokenMinter,
        addr: SocketAddr,
        data_dir: std::path::PathBuf,
    ) -> Result<Arc<World>, String> {
        let mint = |sub: Uuid, roles: &[String], perms: &[String]| {
            minter
                .mint(sub, roles, perms, TOKEN_TTL)
                .map_err(|e| e.to_string())
        };
        let ep = Endpoint::local(addr);
        let mut restaurants = Vec::new();
        for i in 0..args.restaurants.max(1) {
            let (name, menu) = RESTAURANTS[i % RESTAURANTS.len()];
            let id = Uuid::new_v4();
            restaurants.push(Restaurant {
                id,
                name,
                menu,
                staff_token: mint(Uuid::new_v4(), &[], &[format!("RestaurantStaff:{id}")])?,
            });
        }
        let mut customers = Vec::new();
        for _ in 0..args.customers.max(1) {
            let id = Uuid::new_v4();
            customers.push(Customer {
                id,
                token: mint(id, &[], &[])?,
            });
        }
        Ok(Arc::new(World {
            ep,
            data_dir,
            service_token: mint(Uuid::new_v4(), &["OrderService".into()], &[])?,
            restaurants,
            customers,
            tally: Tally::default(),
            step: Duration::from_millis(args.step_ms.max(1)),
            verbose: args.verbose,
        }))
    }

    async fn run(self: Arc<Self>, args: DemoArgs, stop: CancellationToken) {
        say(&format!(
            "ordertrack demo: serving on {} (data in {}) with {} simulated restaurants and {} customers, {} new orders/s",
            self.ep.base(),
            self.data_dir.display(),
            self.restaurants.len(),
            self.customers.len(),
            args.rate
        ));
        let r = &self.restaurants[0];
        say(&format!(
            "kitchen board of {} (open in a browser; the token stays in the #fragment): {}/board#token={}&restaurant={}",
            r.name,
            self.ep.base(),
            r.staff_token,
            r.id
        ));
        tokio::spawn(
            self.clone()
                .featured(Duration::from_millis(args.lead_ms), stop.clone()),
        );
        tokio::spawn(self.clone().summaries(stop.clone()));
        let every = Duration::from_secs_f64(1.0 / args.rate);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let fate = random_fate();
            let world = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = world.live_one(fate, None) => {}
                }
            });
        }
    }

    /// One featured order after another: announced, a pause, then the happy path.
    async fn featured(self: Arc<Self>, lead: Duration, stop: CancellationToken) {
        let exe = std::env::args()
            .next()
            .unwrap_or_else(|| "ordertrack".into());
        loop {
            let c = &self.customers[rand::rng().random_range(0..self.customers.len())];
            let r = &self.restaurants[rand::rng().random_range(0..self.restaurants.len())];
            let mut http = Http::new(&self.ep);
            let Some(id) = self.place(&mut http, c, r, true).await else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            say("");
            say(&format!(
                "Featured order at {} (it starts moving in {} s):",
                r.name,
                lead.as_secs_f64()
            ));
            say(&format!("order to watch: {id}"));
            say(&format!("customer token: {}", c.token));
            say(&format!(
                "watch it live:  {exe} watch {id} --url {} --token {}",
                self.ep.base(),
                c.token
            ));
            say("");
            let life = async {
                tokio::time::sleep(lead).await;
                self.follow(&mut http, id, c, r, Fate::Delivered).await;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = life => {}
            }
        }
    }

    async fn summaries(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let t = &self.tally;
            let placed = t.placed.load(Relaxed);
            let ended =
                t.delivered.load(Relaxed) + t.rejected.load(Relaxed) + t.cancelled.load(Relaxed);
            say(&format!(
                "world: {placed} orders placed, {} in progress; {} delivered, {} rejected, {} cancelled ({} after a failed payment); {} status changes, {} errors",
                placed.saturating_sub(ended),
                t.delivered.load(Relaxed),
                t.rejected.load(Relaxed),
                t.cancelled.load(Relaxed),
                t.payment_failed.load(Relaxed),
                t.changes.load(Relaxed),
                t.errors.load(Relaxed),
            ));
        }
    }

    /// A whole simulated life: place, then follow the fate.
    async fn live_one(self: Arc<Self>, fate: Fate, card: Option<bool>) {
        let (c, r, card) = {
            let mut rng = rand::rng();
            let c = rng.random_range(0..self.customers.len());
            let r = rng.random_range(0..self.restaurants.len());
            let card = card.unwrap_or(matches!(fate, Fate::PaymentFails) || rng.random_bool(0.7));
            (c, r, card)
        };
        let (c, r) = (&self.customers[c], &self.restaurants[r]);
        let mut http = Http::new(&self.ep);
        if let Some(id) = self.place(&mut http, c, r, card).await {
            self.pause().await;
            self.follow(&mut http, id, c, r, fate).await;
        }
    }

    async fn pause(&self) {
        let factor = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(self.step.mul_f64(factor)).await;
    }

    async fn place(
        &self,
        http: &mut Http,
        c: &Customer,
        r: &Restaurant,
        card: bool,
    ) -> Option<Uuid> {
        let body = {
            let mut rng = rand::rng();
            let n = rng.random_range(1..=3);
            let items: Vec<serde_json::Value> = (0..n)
                .map(|_| {
                    let (name, price) = r.menu[rng.random_range(0..r.menu.len())];
                    serde_json::json!({
                        "menuItemId": Uuid::new_v4(), "name": name,
                        "quantity": rng.random_range(1..=2), "unitPrice": price
                    })
                })
                .collect();
            serde_json::json!({
                "customerId": c.id, "restaurantId": r.id, "restaurantName": r.name,
                "currency": "USD", "items": items,
                "deliveryFee": "2.99", "tip": format!("{}.00", rng.random_range(0..6)),
                "tax": "0", "discount": "0",
                "paymentMethod": if card { "Card" } else { "CashOnDelivery" },
                "deliveryAddress": {"street": "1 Demo Street", "city": "Springfield"}
            })
        };
        let reply = http
            .post_json("/api/v1/orders", &self.service_token, &body, &[])
            .await;
        match reply {
            Ok(r) if r.status == 201 => {
                self.tally.placed.fetch_add(1, Relaxed);
                let v = r.json();
                let id = v["order"]["orderId"].as_str()?.parse().ok()?;
                if self.verbose {
                    say(&format!(
                        "{} placed at {} ({})",
                        v["order"]["orderNumber"].as_str().unwrap_or("?"),
                        v["order"]["restaurantName"].as_str().unwrap_or("?"),
                        v["order"]["status"].as_str().unwrap_or("?")
                    ));
                }
                Some(id)
            }
            other => {
                self.failed("place", other);
                None
            }
        }
    }

    fn failed(&self, what: &str, r: Result<crate::client::Reply, crate::client::ClientError>) {
        self.tally.errors.fetch_add(1, Relaxed);
        match r {
            Ok(r) => {
                tracing::warn!(action = what, answer = %r.describe(), "simulated request refused")
            }
            Err(e) => tracing::warn!(action = what, error = %e, "simulated request failed"),
        }
    }

    /// One status change; false when it was refused (the life then ends).
    async fn act(
        &self,
        http: &mut Http,
        id: Uuid,
        token: &str,
        action: &str,
        body: serde_json::Value,
    ) -> bool {
        let r = http
            .post_json(&format!("/api/v1/orders/{id}/{action}"), token, &body, &[])
            .await;
        match r {
            Ok(r) if r.status == 200 => {
                self.tally.changes.fetch_add(1, Relaxed);
                if self.verbose {
                    let v = r.json();
                    say(&format!(
                        "{} {action} → {}",
                        v["orderNumber"].as_str().unwrap_or("?"),
                        v["status"].as_str().unwrap_or("?")
                    ));
                }
                true
            }
            other => {
                self.failed(action, other);
                false
            }
        }
    }

    /// Drives a placed order to its fate, pausing between steps.
    async fn follow(&self, http: &mut Http, id: Uuid, c: &Customer, r: &Restaurant, fate: Fate) {
        let svc = self.service_token.as_str();
        let staff = r.staff_token.as_str();
        let none = serde_json::json!({});
        // A card order waits for its payment outcome first.
        let status = match http
            .get(&format!("/api/v1/orders/{id}/status"), Some(svc), &[])
            .await
        {
            Ok(r) if r.status == 200 => r.json()["status"].as_str().unwrap_or("").to_string(),
            other => return self.failed("status", other),
        };
        if status == "AwaitingPayment" {
            if let Fate::PaymentFails = fate {
                let body = serde_json::json!({"reason": "Card declined"});
                if self.act(http, id, svc, "payment-failed", body).await {
                    self.tally.payment_failed.fetch_add(1, Relaxed);
                    self.tally.cancelled.fetch_add(1, Relaxed);
                }
                return;
            }
            if !self
                .act(http, id, svc, "payment-succeeded", none.clone())
                .await
            {
                return;
            }
            self.pause().await;
        }
        match fate {
            Fate::Rejected => {
                let body = serde_json::json!({"reason": "Kitchen closing early"});
                if self.act(http, id, staff, "reject", body).await {
                    self.tally.rejected.fetch_add(1, Relaxed);
                }
                return;
            }
            Fate::CustomerCancels => {
                let body = serde_json::json!({"reason": "Changed my mind"});
                if self.act(http, id, &c.token, "cancel", body).await {
                    self.tally.cancelled.fetch_add(1, Relaxed);
                }
                return;
            }
            _ => {}
        }
        let minutes = rand::rng().random_range(20..45);
        let eta = (chrono::Utc::now() + chrono::Duration::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let accept = serde_json::json!({ "estimatedDeliveryTime": eta });
        if !self.act(http, id, staff, "accept", accept).await {
            return;
        }
        self.pause().await;
        if !self.act(http, id, staff, "preparing", none.clone()).await {
            return;
        }
        self.pause().await;
        if let Fate::StaffCancels = fate {
            let body = serde_json::json!({"reason": "Ran out of ingredients"});
            if self.act(http, id, staff, "cancel", body).await {
                self.tally.cancelled.fetch_add(1, Relaxed);
            }
            return;
        }
        if !self.act(http, id, staff, "ready", none.clone()).await {
            return;
        }
        self.pause().await;
        if self.act(http, id, staff, "delivered", none).await {
            self.tally.delivered.fetch_add(1, Relaxed);
        }
    }
}

/// Mostly deliveries, with the other endings at plausible rates.
fn random_fate() -> Fate {
    match rand::rng().random_range(0..100) {
        0..=5 => Fate::PaymentFails,
        6..=12 => Fate::Rejected,
        13..=17 => Fate::CustomerCancels,
        18..=20 => Fate::StaffCancels,
        _ => Fate::Delivered,
    }
}
