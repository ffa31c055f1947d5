//! HTTP: the shared application state, request routing, body limits, the one bearer-token
//! extraction (REST and hub endpoints) and the per-request span. `server.rs` owns the accept
//! loop and connection limits, `handlers.rs` the REST endpoints, `hubs.rs` the hub endpoints
//! (negotiate, upgrade, CORS), `views.rs` the JSON shapes and `problem.rs` the RFC 7807 answers.

mod admin;
mod handlers;
mod hubs;
mod openapi;
mod problem;
pub(crate) mod server;
pub(crate) mod views;

use crate::auth::{AuthError, Authenticator};
use crate::domain::Principal;
use crate::metrics::Metrics;
use crate::store::{Store, WriterHandle};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use problem::Problem;
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
    let v: u128 = rand::random();
    format!("{v:032x}")
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
pub(crate) fn principal(
    app: &App,
    req: &Request<Incoming>,
    from: Credentials,
) -> Result<Principal, Problem> {
    let verified = match req.headers().get(hyper::header::AUTHORIZATION) {
        Some(h) => app.auth.verify_header(Some(h.as_bytes())),
        None => match from {
            Credentials::HeaderOrQuery => {
                match crate::hub::query_value(req.uri().query(), "access_token") {
                    Some(t) => app.auth.verify(&t),
                    None => Err(AuthError::Missing),
                }
            }
            Credentials::HeaderOnly => Err(AuthError::Missing),
        },
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
    let trace_id = new_trace_id();
    let started = Instant::now();
    let method = req.method().clone();
    // The query string is never logged: browsers put hub tokens there.
    let span = tracing::debug_span!("request", %method, path = %req.uri().path(), trace_id = %trace_id, peer = %peer);
    let (route, result) = route(&app, req, peer).instrument(span.clone()).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(p) => p.into_response(&trace_id),
    };
    if let Ok(v) = HeaderValue::from_str(&trace_id) {
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
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method().clone();
    match segs.as_slice() {
        ["healthz"] | ["readyz"] => {
            if m != Method::GET && m != Method::HEAD {
                return ("health", Err(method_not_allowed("GET, HEAD")));
            }
            let ready = segs[0] == "healthz" || app.ready.load(Ordering::Relaxed);
            let (status, body) = if ready {
                (StatusCode::OK, "ok\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n")
            };
            (
                "health",
                Ok(text_response(status, "text/plain; charset=utf-8", body)),
            )
        }
        ["metrics"] => {
            if m != Method::GET {
                return ("metrics", Err(method_not_allowed("GET")));
            }
            let stats = app.store.stats().unwrap_or_default();
            let mut body = app.metrics.render(stats.file_bytes, stats.orders);
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
        ["admin", rest @ ..] => admin::route(app, req, rest).await,
        ["hubs", hub, rest @ ..] => hubs::route(app, req, hub, rest, peer).await,
        ["api", "v1", "orders"] => {
            if m != Method::POST {
                return ("place_order", Err(method_not_allowed("POST")));
            }
            let r = match principal(app, &req, Credentials::HeaderOnly) {
                Ok(p) => handlers::place_order(app, &p, req).await,
                Err(e) => Err(e),
            };
            ("place_order", r)
        }
        ["api", "v1", "orders", "my"] => {
            if m != Method::GET {
                return ("order_history", Err(method_not_allowed("GET")));
            }
            let r = principal(app, &req, Credentials::HeaderOnly)
                .and_then(|p| handlers::get_history(app, &p, req.uri().query()));
            ("order_history", r)
        }
        ["api", "v1", "orders", id] => {
            if m != Method::GET {
                return ("order_details", Err(method_not_allowed("GET")));
            }
            let r = principal(app, &req, Credentials::HeaderOnly)
                .and_then(|p| handlers::get_details(app, &p, req.headers(), id));
            ("order_details", r)
        }
        ["api", "v1", "orders", id, "status"] => {
            if m != Method::GET {
                return ("order_status", Err(method_not_allowed("GET")));
            }
            let r = principal(app, &req, Credentials::HeaderOnly)
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
            let r = match principal(app, &req, Credentials::HeaderOnly) {
                Ok(p) => handlers::act(app, &p, id, action, req).await,
                Err(e) => Err(e),
            };
            ("order_action", r)
        }
        _ => ("not_found", Err(not_found())),
    }
}

pub fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "Request.NotFound",
        "No resource exists at this path.",
    )
}
