//! HTTP: the shared application state, request routing, body limits, the one bearer-token
//! extraction (REST and hub endpoints) and the per-request span. `server.rs` owns the accept
//! loop and connection limits, `handlers.rs` the REST endpoints, `hubs.rs` the hub endpoints
//! (negotiate, upgrade, CORS), `views.rs` the JSON shapes, `problem.rs` the RFC 7807 answers and `tls.rs` the TLS
//! handshake and certificate reload.

mod admin;
mod board;
pub(crate) mod forward;
mod handlers;
mod hubs;
mod openapi;
mod problem;
pub(crate) mod server;
pub(crate) mod tls;
mod transports;
pub(crate) mod views;

use crate::auth::{bearer_token, AuthError, Authenticator};
use crate::domain::Principal;
use crate::metrics::Metrics;
use crate::store::{Store, WriterHandle};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use problem::Problem;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub type Resp = Response<Full<Bytes>>;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Time allowed to receive a whole request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request handler needs.
pub struct App {
    pub store: Store,
    pub writer: WriterHandle,
    pub auth: Authenticator,
    pub metrics: Arc<Metrics>,
    pub hubs: Arc<crate::hub::Hubs>,
    pub ready: AtomicBool,
    /// Backups kept in `<data-dir>/backups/` (older ones are deleted after each backup).
    pub keep_backups: usize,
    /// Cluster mode (`--nats`): this node's role and the primary writes are forwarded to.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Kept connections to the primary (cluster mode).
    pub forwarder: forward::Forwarder,
}

pub fn json_response(status: StatusCode, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn text_response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn is_json(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// Reads the body within `MAX_BODY` and `BODY_TIMEOUT`. A non-empty body must be JSON;
/// `required` bodies must be present.
pub async fn read_body(req: Request<Incoming>, required: bool) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request.TooLarge",
            format!("The request body must not exceed {MAX_BODY} bytes."),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("invalid").to_string());
    let body = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request.Timeout",
                "The request body did not arrive in time.",
            ))
        }
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large());
            }
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "Request.BadBody",
                "The request body could not be read.",
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let empty = bytes.iter().all(|b| b.is_ascii_whitespace());
    if !empty || content_type.is_some() {
        match content_type.as_deref() {
            Some(ct) if is_json(ct) => {}
            None if empty => {}
            _ => {
                return Err(Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Request.UnsupportedMediaType",
                    "The request body must be application/json.",
                ))
            }
        }
    }
    if required && empty {
        return Err(Problem::validation("Request.EmptyBody", {
            let mut e = crate::domain::FieldErrors::new();
            e.insert(String::new(), vec!["a JSON body is required".into()]);
            e
        }));
    }
    Ok(bytes)
}

/// A short random id for correlating a request's answer with its log lines.
pub fn new_trace_id() -> String {
    TraceId::new().as_str().to_string()
}

/// A request's trace id: 128 random bits as 32 lowercase hex digits, built on the stack (every
/// request makes one, so it costs no allocation and no formatter).
struct TraceId([u8; 32]);

impl TraceId {
    fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let v: u128 = rand::random();
        let mut out = [0u8; 32];
        for (i, d) in out.iter_mut().enumerate() {
            *d = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
        }
        TraceId(out)
    }

    fn as_str(&self) -> &str {
        // Only ASCII hex digits were written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Where a request may carry its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// `Authorization: Bearer …` only (REST, hub negotiate).
    HeaderOnly,
    /// The header or, without one, the `access_token` query parameter: the hub's WebSocket
    /// upgrade, where browsers cannot set headers.
    HeaderOrQuery,
}

/// The one bearer-token extraction, for REST and hub endpoints alike: the verified principal,
/// or the 401 problem. The token never reaches a log line.
pub(crate) async fn principal(
    app: &App,
    req: &Request<Incoming>,
    from: Credentials,
) -> Result<Principal, Problem> {
    // Borrowed from the header (no copy per request); the query parameter is decoded, so owned.
    let header = req.headers().get(hyper::header::AUTHORIZATION);
    let token: Result<Cow<'_, str>, AuthError> = match header {
        Some(h) => std::str::from_utf8(h.as_bytes())
            .ok()
            .and_then(bearer_token)
            .map(Cow::Borrowed)
            .ok_or(AuthError::Invalid("scheme".into())),
        None => match from {
            Credentials::HeaderOrQuery => {
                crate::hub::query_value(req.uri().query(), "access_token")
                    .map(Cow::Owned)
                    .ok_or(AuthError::Missing)
            }
            Credentials::HeaderOnly => Err(AuthError::Missing),
        },
    };
    let verified = match token {
        Ok(t) => app.auth.authenticate(&t).await,
        Err(e) => Err(e),
    };
    verified.map_err(|e| {
        tracing::debug!(reason = %e, "token refused");
        Problem::unauthorized()
    })
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request.MethodNotAllowed",
        format!("This resource supports {allow}."),
    )
    .with_header("allow", allow)
}

/// Entry point for every request: routes, answers, records metrics, all inside a span.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    let trace = TraceId::new();
    let trace_id = trace.as_str();
    let started = Instant::now();
    // The query string is never logged: browsers put hub tokens there.
    let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), trace_id = %trace_id, peer = %peer);
    let (route, result) = route(&app, req, peer).instrument(span.clone()).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(p) => p.into_response(trace_id),
    };
    if let Ok(v) = HeaderValue::from_bytes(&trace.0) {
        resp.headers_mut().insert("x-trace-id", v);
    }
    let elapsed = started.elapsed().as_secs_f64();
    app.metrics
        .observe_request(route, resp.status().as_u16(), elapsed);
    span.in_scope(|| {
        tracing::debug!(
            route,
            status = resp.status().as_u16(),
            micros = (elapsed * 1e6) as u64,
            "answered"
        )
    });
    resp
}

async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (&'static str, Result<Resp, Problem>) {
    // A clone of the URI shares its bytes: the path stays borrowable while `req` moves on.
    let uri = req.uri().clone();
    let path = uri.path().trim_start_matches('/');
    // Every route has at most 8 segments, so they are split onto the stack; a longer path is
    // only ever a 404 or an admin/hub path, split onto the heap.
    let mut short = [""; 8];
    let long: Vec<&str>;
    let segs: &[&str] = if path.split('/').count() <= short.len() {
        let mut n = 0;
        for (slot, seg) in short.iter_mut().zip(path.split('/')) {
            *slot = seg;
            n += 1;
        }
        &short[..n]
    } else {
        long = path.split('/').collect();
        &long
    };
    let m = req.method().clone();
    match segs {
        ["healthz"] => {
            if m != Method::GET && m != Method::HEAD {
                return ("health", Err(method_not_allowed("GET, HEAD")));
            }
            (
                "health",
                Ok(text_response(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    "ok\n",
                )),
            )
        }
        ["readyz"] => {
            if m != Method::GET && m != Method::HEAD {
                return ("health", Err(method_not_allowed("GET, HEAD")));
            }
            ("health", Ok(readiness(app)))
        }
        ["metrics"] => {
            if m != Method::GET {
                return ("metrics", Err(method_not_allowed("GET")));
            }
            let stats = app.store.stats().unwrap_or_default();
            let mut body = app.metrics.render(stats.file_bytes, stats.orders);
            app.metrics.cluster.render(&mut body);
            if let Some(jwks) = app.auth.jwks_snapshot() {
                crate::metrics::render_jwks(&mut body, &jwks);
            }
            body.push_str(&crate::metrics::render_retention(&stats));
            (
                "metrics",
                Ok(text_response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body,
                )),
            )
        }
        ["openapi.json"] => ("openapi", openapi::serve(req.method())),
        ["board"] | ["board", ""] => match board::serve(req.method(), None) {
            Some(r) => ("board_page", r),
            None => ("not_found", Err(not_found())),
        },
        ["board", asset] => match board::serve(req.method(), Some(asset)) {
            Some(r) => ("board_page", r),
            None => ("not_found", Err(not_found())),
        },
        // The routes that await (admin, hubs, writes) are boxed: their states stay out of this
        // future, which hyper moves into place for every request, reads included.
        ["admin", rest @ ..] => Box::pin(admin::route(app, req, rest)).await,
        ["hubs", hub, rest @ ..] => Box::pin(hubs::route(app, req, hub, rest, peer)).await,
        ["api", "v1", "orders"] => {
            if m != Method::POST {
                return ("place_order", Err(method_not_allowed("POST")));
            }
            if forward::must_forward(app) {
                return ("place_order", Box::pin(forward::forward(app, req)).await);
            }
            let r = match principal(app, &req, Credentials::HeaderOnly).await {
                Ok(p) => Box::pin(handlers::place_order(app, &p, req)).await,
                Err(e) => Err(e),
            };
            ("place_order", r)
        }
        ["api", "v1", "orders", "my"] => {
            if m != Method::GET {
                return ("order_history", Err(method_not_allowed("GET")));
            }
            let r = principal(app, &req, Credentials::HeaderOnly)
                .await
                .and_then(|p| handlers::get_history(app, &p, req.uri().query()));
            ("order_history", r)
        }
        ["api", "v1", "restaurants", id, "orders"] => {
            if m != Method::GET {
                return ("restaurant_orders", Err(method_not_allowed("GET")));
            }
            let r = principal(app, &req, Credentials::HeaderOnly)
                .await
                .and_then(|p| handlers::get_board(app, &p, id, req.uri().query()));
            ("restaurant_orders", r)
        }
        ["api", "v1", "orders", id] => {
            if m != Method::GET {
                return ("order_details", Err(method_not_allowed("GET")));
            }
            let r = principal(app, &req, Credentials::HeaderOnly)
                .await
                .and_then(|p| handlers::get_details(app, &p, req.headers(), id));
            ("order_details", r)
        }
        ["api", "v1", "orders", id, "status"] => {
            if m != Method::GET {
                return ("order_status", Err(method_not_allowed("GET")));
            }
            let r = principal(app, &req, Credentials::HeaderOnly)
                .await
                .and_then(|p| handlers::get_status(app, &p, req.headers(), id));
            ("order_status", r)
        }
        ["api", "v1", "orders", id, action] if handlers::parse_action(action).is_some() => {
            if m != Method::POST {
                return ("order_action", Err(method_not_allowed("POST")));
            }
            let Some(action) = handlers::parse_action(action) else {
                return ("order_action", Err(not_found()));
            };
            if forward::must_forward(app) {
                return ("order_action", Box::pin(forward::forward(app, req)).await);
            }
            let r = match principal(app, &req, Credentials::HeaderOnly).await {
                Ok(p) => Box::pin(handlers::act(app, &p, id, action, req)).await,
                Err(e) => Err(e),
            };
            ("order_action", r)
        }
        _ => ("not_found", Err(not_found())),
    }
}

/// `GET /readyz`: JSON, 200 when ready, 503 when not (starting or stopping, no key set yet,
/// or in cluster mode a replica still catching up or too far behind the log).
fn readiness(app: &App) -> Resp {
    let serving = app.ready.load(Ordering::Relaxed) && app.auth.ready();
    let body = match &app.cluster {
        None => serde_json::json!({
            "status": if serving { "ready" } else { "not ready" },
            "role": "single",
            "appliedSeq": 0,
            "lagRecords": 0,
            "primary": null,
        }),
        Some(c) => {
            let r = c.readiness();
            let ready = serving && r.ready;
            serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "role": r.role,
                "appliedSeq": r.applied_seq,
                "lagRecords": r.lag_records,
                "primary": r.primary,
            })
        }
    };
    let status = if body["status"] == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, Bytes::from(body.to_string()))
}

pub fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "Request.NotFound",
        "No resource exists at this path.",
    )
}
