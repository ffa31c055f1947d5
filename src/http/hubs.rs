//! The HTTP side of the hubs: routes `/hubs/{hub}` and `/hubs/{hub}/negotiate`, answers CORS
//! preflights and negotiate, checks the WebSocket upgrade and the token, and hands the accepted
//! upgrade to the SignalR engine (`hub/`) with what a connection needs: the hubs, the order
//! store to read from, and this server's connection slot as an opaque guard. The other
//! requests on `/hubs/{hub}` (SSE, long polling, their POSTs) go to `transports.rs`.

use super::problem::Problem;
use super::server::ConnectionSlot;
use super::{json_response, not_found, principal, App, Credentials, Resp};
use crate::hub::{
    query_value, Handoff, HubKind, Io, Reattach, ReattachRefusal, Refused, SlotGuard, TokenRefusal,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

/// CORS for the hub endpoints: the request's `Origin` is allowed back, with credentials, when
/// it is in `allowed` (or `allowed` is `None`: any origin, `null` included). The hubs take
/// bearer tokens, never cookies, so credentials carry nothing ambient.
fn cors(allowed: Option<&[String]>, req_headers: &hyper::HeaderMap, resp: &mut Resp) -> bool {
    let Some(origin) = req_headers.get(hyper::header::ORIGIN) else {
        return false;
    };
    let permitted = allowed.is_none_or(|list| {
        origin
            .to_str()
            .is_ok_and(|o| list.iter().any(|a| a.eq_ignore_ascii_case(o)))
    });
    resp.headers_mut()
        .insert("vary", HeaderValue::from_static("Origin"));
    if permitted {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", origin.clone());
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
    }
    permitted
}

fn plain(status: StatusCode, text: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Routes `/hubs/{hub}[/negotiate]`.
pub async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    hub: &str,
    rest: &[&str],
    peer: SocketAddr,
) -> (&'static str, Result<Resp, Problem>) {
    let Some(kind) = HubKind::from_path(hub) else {
        return ("not_found", Err(not_found()));
    };
    let negotiate = match rest {
        [] => false,
        ["negotiate"] => true,
        _ => return ("not_found", Err(not_found())),
    };
    if req.method() == Method::OPTIONS {
        let mut resp = plain(StatusCode::NO_CONTENT, "");
        if !cors(
            app.hubs.settings.cors_origins.as_deref(),
            req.headers(),
            &mut resp,
        ) {
            // Not an allowed origin: no CORS headers, so the browser refuses the call.
            return ("hub_preflight", Ok(resp));
        }
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        let asked = req
            .headers()
            .get("access-control-request-headers")
            .cloned()
            .unwrap_or(HeaderValue::from_static(
                "authorization, content-type, x-requested-with, x-signalr-user-agent",
            ));
        h.insert("access-control-allow-headers", asked);
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
        return ("hub_preflight", Ok(resp));
    }
    if negotiate {
        if req.method() != Method::POST {
            let mut resp = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST requests are required.\n",
            );
            resp.headers_mut()
                .insert("allow", HeaderValue::from_static("POST, OPTIONS"));
            return ("hub_negotiate", Ok(resp));
        }
        let mut resp = match principal(app, &req, Credentials::HeaderOnly).await {
            Err(p) => p.into_response(&super::new_trace_id()),
            Ok(p) => {
                let body = app.hubs.negotiate(req.uri().query(), p.sub);
                json_response(StatusCode::OK, Bytes::from(body))
            }
        };
        cors(
            app.hubs.settings.cors_origins.as_deref(),
            req.headers(),
            &mut resp,
        );
        return ("hub_negotiate", Ok(resp));
    }
    if req.method() != Method::GET || !is_websocket(req.headers()) {
        // Browsers call these with XHR/fetch/EventSource: every answer carries CORS.
        let mut origin = hyper::HeaderMap::new();
        if let Some(o) = req.headers().get(hyper::header::ORIGIN) {
            origin.insert(hyper::header::ORIGIN, o.clone());
        }
        let (route, result) = super::transports::serve(app, req, kind, peer).await;
        let mut resp = result.unwrap_or_else(|p| p.into_response(&super::new_trace_id()));
        cors(
            app.hubs.settings.cors_origins.as_deref(),
            &origin,
            &mut resp,
        );
        return (route, Ok(resp));
    }
    ("hub_connect", upgrade(app, req, kind, peer).await)
}

/// Whether a request asks for a WebSocket upgrade (the other GETs are SSE or long polling).
fn is_websocket(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && headers
            .get(CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The answer to a connection the hubs' caps refused (any transport).
pub(super) fn refusal(r: Refused) -> Problem {
    match r {
        Refused::HubConnections => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Hub.TooManyConnections",
            "The hub is at its connection limit; retry later.",
        )
        .with_header("retry-after", "5"),
        Refused::UserConnections => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Hub.TooManyUserConnections",
            "This user already holds the most hub connections allowed at once; close one and retry.",
        ),
    }
}

async fn upgrade(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    kind: HubKind,
    peer: SocketAddr,
) -> Result<Resp, Problem> {
    if req.method() != Method::GET {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Hub.MethodNotAllowed",
            "Only WebSockets are supported on this hub.",
        )
        .with_header("allow", "GET, OPTIONS"));
    }
    let headers = req.headers();
    let is_ws = is_websocket(headers);
    let key = headers.get("sec-websocket-key").cloned();
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let (true, Some(key), true) = (is_ws, key, version_ok) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "Hub.WebSocketRequired",
            "This hub only supports the WebSockets transport (RFC 6455, version 13).",
        ));
    };
    let principal = principal(app, &req, Credentials::HeaderOrQuery).await?;
    let id = query_value(req.uri().query(), "id");
    let mut stateful = false;
    if let Some(id) = &id {
        // A stateful connection's client coming back on a new socket (no handshake): same
        // token, same user; the connection takes the socket over.
        match app.hubs.find_resumable(id, principal.sub) {
            Ok(Some(handoff)) => return Ok(reattach(req, &key, &handoff, principal.expires_at)),
            Ok(None) => {}
            Err(ReattachRefusal::OtherUser) => {
                return Ok(plain(
                    StatusCode::FORBIDDEN,
                    "The connection was negotiated by another user.\n",
                ));
            }
        }
        match app.hubs.take_negotiated(id, principal.sub) {
            Ok(s) => stateful = s,
            Err(TokenRefusal::Unknown) => {
                return Ok(plain(StatusCode::NOT_FOUND, "No Connection with that ID\n"));
            }
            Err(TokenRefusal::OtherUser) => {
                return Ok(plain(
                    StatusCode::FORBIDDEN,
                    "The connection was negotiated by another user.\n",
                ));
            }
        }
    }
    let admission = match app.hubs.admit(principal.sub).map_err(refusal)? {
        a if stateful => a.resumable(id.as_deref().unwrap_or_default()),
        a => a,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let slot = take_slot(&mut req);
    let opened = async move { on_upgrade.await.map(TokioIo::new) };
    app.hubs.start(
        admission,
        opened,
        kind,
        peer,
        principal,
        app.store.clone(),
        slot,
    );
    Ok(switching_protocols(&key))
}

/// This server's slot for the request's TCP connection, which keeps it counted under the total
/// and per-address caps while the WebSocket is open.
fn take_slot(req: &mut Request<Incoming>) -> Option<SlotGuard> {
    req.extensions_mut()
        .remove::<ConnectionSlot>()
        .map(|s| Box::new(s) as SlotGuard)
}

/// Hands the upgrade to the waiting stateful connection and accepts it.
fn reattach(
    mut req: Request<Incoming>,
    key: &HeaderValue,
    handoff: &Handoff,
    expires_at: i64,
) -> Resp {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let slot = take_slot(&mut req);
    handoff.deliver(Reattach {
        opened: Box::pin(async move {
            on_upgrade
                .await
                .ok()
                .map(|u| Box::new(TokioIo::new(u)) as Box<dyn Io>)
        }),
        expires_at,
        slot,
    });
    switching_protocols(key)
}

/// The 101 answer to a WebSocket upgrade with `key`.
fn switching_protocols(key: &HeaderValue) -> Resp {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}
