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
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
    if let Some(known) = principal_now(app, req, from) {
        return known;
    }
    // A token naming a key the set does not hold yet: fetch the set (rate-limited) and retry.
    let verified = match token_of(req, from) {
        Ok(t) => app.auth.authenticate(&t).await,
        Err(e) => Err(e),
    };
    verified.map_err(refused)
}

/// [`principal`] without awaiting: `None` only when the token names a key the identity
/// provider's set does not hold yet, which takes a fetch.
fn principal_now(
    app: &App,
    req: &Request<Incoming>,
    from: Credentials,
) -> Option<Result<Principal, Problem>> {
    let verified = match token_of(req, from) {
        Ok(t) => app.auth.verify(&t),
        Err(e) => Err(e),
    };
    match verified {
        Err(AuthError::UnknownKey) => None,
        v => Some(v.map_err(refused)),
    }
}

/// The request's raw token: borrowed from the header (no copy per request), or decoded from
/// the query where `from` allows it.
fn token_of(req: &Request<Incoming>, from: Credentials) -> Result<Cow<'_, str>, AuthError> {
    match req.headers().get(hyper::header::AUTHORIZATION) {
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
    }
}

fn refused(e: AuthError) -> Problem {
    tracing::debug!(reason = %e, "token refused");
    Problem::unauthorized()
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
/// What hyper awaits for one request: the answer itself when it was made in place (the read
/// routes, once the token verified without a key fetch), or a boxed future for the routes that
/// wait (writes, hubs, admin, a key fetch). hyper moves this value into place for every
/// request, so it is kept to an answer or a pointer: the futures it replaced weighed 2–6 KiB
/// and their copies were the largest single cost of a status poll.
pub enum Answer {
    Now(Option<Resp>),
    Later(Pin<Box<dyn Future<Output = Resp> + Send>>),
}

impl Future for Answer {
    type Output = Resp;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Resp> {
        match self.get_mut() {
            Answer::Now(r) => match r.take() {
                Some(r) => Poll::Ready(r),
                // Polled again after it answered: never by hyper.
                None => Poll::Pending,
            },
            Answer::Later(f) => f.as_mut().poll(cx),
        }
    }
}

pub fn handle(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    let trace = TraceId::new();
    let started = Instant::now();
    // The query string is never logged: browsers put hub tokens there.
    let span = tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), trace_id = %trace.as_str(), peer = %peer);
    let req = {
        let _in = span.enter();
        match read_now(app, req) {
            Ok((route, result)) => {
                return Answer::Now(Some(finish(app, &trace, started, route, result)));
            }
            Err(req) => req,
        }
    };
    let app = app.clone();
    Answer::Later(Box::pin(async move {
        let (route, result) = route(&app, req, peer).instrument(span.clone()).await;
        span.in_scope(|| finish(&app, &trace, started, route, result))
    }))
}

/// Named once: inserting by a string parses and checks the name on every request.
const X_TRACE_ID: hyper::header::HeaderName = hyper::header::HeaderName::from_static("x-trace-id");

/// The problem as a response, the trace id header, the request metric and the debug line.
fn finish(
    app: &App,
    trace: &TraceId,
    started: Instant,
    route: &'static str,
    result: Result<Resp, Problem>,
) -> Resp {
    let mut resp = match result {
        Ok(r) => r,
        Err(p) => p.into_response(trace.as_str()),
    };
    if let Ok(v) = HeaderValue::from_bytes(&trace.0) {
        resp.headers_mut().insert(X_TRACE_ID, v);
    }
    let elapsed = started.elapsed().as_secs_f64();
    app.metrics
        .observe_request(route, resp.status().as_u16(), elapsed);
    tracing::debug!(
        route,
        status = resp.status().as_u16(),
        micros = (elapsed * 1e6) as u64,
        "answered"
    );
    resp
}

/// The read routes every client polls, answered in place: `Err` hands the request back to
/// [`route`] (another route or method, or a token whose key needs fetching).
#[allow(clippy::result_large_err)]
fn read_now(
    app: &App,
    req: Request<Incoming>,
) -> Result<(&'static str, Result<Resp, Problem>), Request<Incoming>> {
    if req.method() != Method::GET {
        return Err(req);
    }
    let mut short = [""; 8];
    let found = segments(req.uri().path(), &mut short).and_then(Read::parse);
    let Some((name, read)) = found else {
        return Err(req);
    };
    let Some(p) = principal_now(app, &req, Credentials::HeaderOnly) else {
        return Err(req);
    };
    let result = p.and_then(|p| read.answer(app, &p, &req));
    Ok((name, result))
}

/// The path's segments (after the leading `/`) in `short`, when there are at most 8 of them:
/// every route has at most 8, so a longer path is only ever a 404 or an admin or hub path.
fn segments<'a>(path: &'a str, short: &'a mut [&'a str; 8]) -> Option<&'a [&'a str]> {
    let path = path.trim_start_matches('/');
    // A byte scan: `/` is ASCII, so every cut falls on a character boundary.
    let (mut n, mut start) = (0, 0);
    for (i, b) in path.bytes().enumerate() {
        if b == b'/' {
            *short.get_mut(n)? = path.get(start..i)?;
            n += 1;
            start = i + 1;
        }
    }
    *short.get_mut(n)? = path.get(start..)?;
    short.get(..=n)
}

/// A read route (GET only), with the id it names.
enum Read<'a> {
    History,
    Board(&'a str),
    Details(&'a str),
    Status(&'a str),
}

impl<'a> Read<'a> {
    fn parse(segs: &[&'a str]) -> Option<(&'static str, Read<'a>)> {
        Some(match *segs {
            ["api", "v1", "orders", "my"] => ("order_history", Read::History),
            ["api", "v1", "restaurants", id, "orders"] => ("restaurant_orders", Read::Board(id)),
            ["api", "v1", "orders", id] => ("order_details", Read::Details(id)),
            ["api", "v1", "orders", id, "status"] => ("order_status", Read::Status(id)),
            _ => return None,
        })
    }

    fn answer(self, app: &App, p: &Principal, req: &Request<Incoming>) -> Result<Resp, Problem> {
        let query = req.uri().query();
        match self {
            Read::History => handlers::get_history(app, p, query),
            Read::Board(id) => handlers::get_board(app, p, id, query),
            Read::Details(id) => handlers::get_details(app, p, req.headers(), id),
            Read::Status(id) => handlers::get_status(app, p, req.headers(), id),
        }
    }
}

async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (&'static str, Result<Resp, Problem>) {
    // A clone of the URI shares its bytes: the path stays borrowable while `req` moves on.
    let uri = req.uri().clone();
    let mut short = [""; 8];
    let long: Vec<&str>;
    let segs: &[&str] = match segments(uri.path(), &mut short) {
        Some(segs) => segs,
        None => {
            long = uri.path().trim_start_matches('/').split('/').collect();
            &long
        }
    };
    if let Some((name, read)) = Read::parse(segs) {
        if req.method() != Method::GET {
            return (name, Err(method_not_allowed("GET")));
        }
        let r = principal(app, &req, Credentials::HeaderOnly)
            .await
            .and_then(|p| read.answer(app, &p, &req));
        return (name, r);
    }
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
