//! The `write` scenario: W concurrent writers walk orders through accept → preparing → ready →
//! delivered over the REST API; every 200 is a durable transition. With `--baseline` a second
//! server gets the same workload in alternating rounds of the same run, so the ratio between
//! the two is measured under the same machine load.

use super::{percentile, place_orders, Cast, Cli, Http, R};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

pub struct Plan {
    pub writers: usize,
    pub transitions: u64,
    pub baseline: Option<SocketAddr>,
    pub baseline_label: String,
    pub rounds: u64,
}

/// What one server did over all rounds.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    seconds: f64,
}

impl Tally {
    fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.seconds.max(1e-9)
    }
}

const ACTIONS: [&str; 4] = ["accept", "preparing", "ready", "delivered"];

/// Places `transitions / 4` orders on `addr` and walks them all with `writers` connections.
async fn round(cast: &Cast, addr: SocketAddr, writers: usize, transitions: u64) -> R<Tally> {
    let n_orders = (transitions / ACTIONS.len() as u64).max(1) as usize;
    let customers: Vec<Uuid> = (0..n_orders).map(|_| Uuid::new_v4()).collect();
    let orders = Arc::new(place_orders(addr, &cast.service, cast.restaurant, &customers).await?);
    let eta = (chrono::Utc::now() + chrono::Duration::minutes(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (orders, staff, eta) = (orders.clone(), cast.staff.clone(), eta.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(addr).await?;
            let mut lat = Vec::new();
            // Each writer owns the orders i ≡ w (mod writers) and walks each through its life.
            let mut i = w;
            while i < orders.len() {
                for (step, a) in ACTIONS.iter().enumerate() {
                    let body = if step == 0 {
                        format!("{{\"estimatedDeliveryTime\":\"{eta}\"}}")
                    } else {
                        "{}".into()
                    };
                    let s = Instant::now();
                    let (st, _) = http
                        .post(&format!("/api/v1/orders/{}/{a}", orders[i]), &staff, body)
                        .await?;
                    if st != 200 {
                        return Err(format!("{a} answered {st}"));
                    }
                    lat.push(s.elapsed().as_secs_f64() * 1000.0);
                }
                i += writers;
            }
            Ok::<Vec<f64>, String>(lat)
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        tally
            .latencies_ms
            .extend(t.await.map_err(|e| e.to_string())??);
    }
    tally.seconds = t0.elapsed().as_secs_f64();
    Ok(tally)
}

fn merge(into: &mut Tally, t: Tally) {
    into.latencies_ms.extend(t.latencies_ms);
    into.seconds += t.seconds;
}

fn row(label: &str, t: &mut Tally) -> String {
    t.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let l = &t.latencies_ms;
    format!(
        "| {label} | {} in {:.2} s | {:.0} | {:.2} / {:.2} / {:.2} ms |\n",
        l.len(),
        t.seconds,
        t.rate(),
        percentile(l, 0.5),
        percentile(l, 0.99),
        l.last().copied().unwrap_or(f64::NAN)
    )
}

pub async fn run(cli: &Cli, plan: Plan) -> R<String> {
    let cast = Cast::new(&cli.secret)?;
    let rounds = plan.rounds.max(1);
    let per_round = (plan.transitions / rounds).max(ACTIONS.len() as u64);
    let mut main = Tally::default();
    let mut base = Tally::default();
    for _ in 0..rounds {
        merge(
            &mut main,
            round(&cast, cli.addr, plan.writers, per_round).await?,
        );
        if let Some(b) = plan.baseline {
            merge(&mut base, round(&cast, b, plan.writers, per_round).await?);
        }
    }
    let mut t = String::from(
        "| server | durable transitions | per second | latency p50 / p99 / max |\n|---|---|---|---|\n",
    );
    t.push_str(&row("ordertrack", &mut main));
    if plan.baseline.is_some() {
        t.push_str(&row(&plan.baseline_label, &mut base));
        t.push_str(&format!(
            "\n{} writers, {rounds} alternating rounds; throughput ratio ordertrack / {}: **{:.1}×**\n",
            plan.writers,
            plan.baseline_label,
            main.rate() / base.rate().max(1e-9)
        ));
    } else {
        t.push_str(&format!("\n{} writers\n", plan.writers));
    }
    Ok(t)
}
