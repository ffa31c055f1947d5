//! Cluster mode: a write reaching a replica is forwarded to the primary as it came (method,
//! path, query, headers, `Authorization` and `Idempotency-Key` included, body) and the
//! primary's answer goes back as it is, so clients need not know which node leads
//! (`docs/decisions.md`). Connections to the primary are kept and reused. A forwarded request
//! carries `ordertrack-forwarded: 1`; a node that receives one while it is not the primary
//! answers 503 `Cluster.NoPrimary` rather than forward it again (no loops while the lease
//! moves).

use super::problem::Problem;
use super::{App, Resp, MAX_BODY};
use crate::client::Endpoint;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Mutex;
use std::time::Duration;

/// Marks a request forwarded by another node.
pub const FORWARDED: &str = "ordertrack-forwarded";
/// Longest a forwarded exchange may take (the primary waits for the log's acknowledgement).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept to the primary.
const KEEP: usize = 32;

/// Headers that belong to one connection, not to the request (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// Idle keep-alive connections to the primary, by its base URL.
#[derive(Default)]
pub struct Forwarder {
    idle: Mutex<Vec<(String, http1::SendRequest<Full<Bytes>>)>>,
}

impl Forwarder {
    fn take(&self, base: &str) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(_, s)| !s.is_closed());
        let i = idle.iter().position(|(b, _)| b == base)?;
        Some(idle.swap_remove(i).1)
    }

    fn put_back(&self, base: String, sender: http1::SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEEP {
            idle.push((base, sender));
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Whether this request must go to the primary instead of this node's writer: cluster mode, and
/// this node is not the primary.
pub fn must_forward(app: &App) -> bool {
    app.cluster.as_ref().is_some_and(|c| !c.is_primary())
}

/// Forwards a write to the primary and returns its answer; 503 `Cluster.NoPrimary` when no
/// primary is known or it cannot be reached.
pub async fn forward(app: &App, req: Request<Incoming>) -> Result<Resp, Problem> {
    let Some(cluster) = app.cluster.as_ref() else {
        return Err(Problem::not_primary());
    };
    if req.headers().contains_key(FORWARDED) {
        return Err(Problem::not_primary());
    }
    let Some(target) = cluster.forward_target() else {
        return Err(Problem::not_primary());
    };
    // The body is read (and refused) exactly as the primary would: 413, 415, 408 alike.
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let body = super::read_body(req, false).await?;
    let ep = Endpoint::parse(&target, None).map_err(|e| {
        tracing::warn!(error = %e, "the primary's advertised URL is not usable");
        Problem::not_primary()
    })?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = Request::builder()
        .method(method)
        .uri(format!("{}{path}", ep.prefix));
    if let Some(h) = out.headers_mut() {
        for (name, value) in headers.iter() {
            if !is_hop_by_hop(name) && name != HOST {
                h.append(name.clone(), value.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(&ep.authority()) {
            h.insert(HOST, v);
        }
        h.insert(FORWARDED, HeaderValue::from_static("1"));
    }
    let out = out.body(Full::new(body)).map_err(|_| Problem::internal())?;
    let exchange = send(&app.forwarder, &ep, out);
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(resp)) => {
            cluster.forwarded();
            Ok(resp)
        }
        Ok(Err(e)) => {
            tracing::warn!(primary = %target, error = %e, "forwarding a write to the primary failed");
            Err(Problem::not_primary())
        }
        Err(_) => {
            tracing::warn!(primary = %target, "the primary did not answer a forwarded write in time");
            Err(Problem::not_primary())
        }
    }
}

/// One exchange on a kept connection to `ep` (or a new one), the connection kept afterwards.
async fn send(
    forwarder: &Forwarder,
    ep: &Endpoint,
    req: Request<Full<Bytes>>,
) -> Result<Resp, String> {
    let base = ep.base();
    let mut sender = match forwarder.take(&base) {
        Some(s) => s,
        None => {
            let stream = ep.open().await.map_err(|e| e.to_string())?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
        }
    };
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, 4 * MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    forwarder.put_back(base, sender);
    let mut answer = Response::new(Full::new(body));
    *answer.status_mut() = parts.status;
    for (name, value) in parts.headers.iter() {
        if !is_hop_by_hop(name) && name != hyper::header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(answer)
}
