//! The HTTP side of the hub's Server-Sent Events and long-polling transports (ASP.NET's
//! TransportProtocols.md): `GET /hubs/{hub}?id=…` opens the event stream (`Accept:
//! text/event-stream`) or polls, `POST` sends the client's messages, `DELETE` ends a
//! long-polling connection. Every request carries a token (header or `access_token`) whose
//! user must be the one the connection was negotiated for. The connection itself lives in the
//! hub (`hub/link.rs`); this file speaks HTTP for it, and gives the server (`server.rs`) the
//! one streaming body it sends: the event stream.

use super::problem::Problem;
use super::{principal, App, Credentials, Resp, BODY_TIMEOUT, MAX_BODY};
use crate::hub::{
    poll, EventStream, HubKind, Link, LinkRefusal, PollAnswer, TokenRefusal, Transport,
};
use crate::metrics::HubRefusal;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The response body the server sends: whole, or an SSE event stream.
pub type Served = Response<Either<Full<Bytes>, SseBody>>;

/// An event stream handed from the handler to the server through the response's extensions
/// (handlers answer whole bodies; only this one streams).
#[derive(Clone)]
struct PendingStream(Arc<Mutex<Option<EventStream>>>);

/// The body of an SSE response.
pub struct SseBody(EventStream);

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_chunk(cx)
            .map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Gives a response its body: the event stream a handler left in its extensions, if any.
pub fn attach(resp: Resp) -> Served {
    let (mut parts, body) = resp.into_parts();
    let stream = parts
        .extensions
        .remove::<PendingStream>()
        .and_then(|p| p.0.lock().ok()?.take());
    match stream {
        Some(s) => Response::from_parts(parts, Either::Right(SseBody(s))),
        None => Response::from_parts(parts, Either::Left(body)),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Resp {
    super::text_response(status, "text/plain; charset=utf-8", text)
}

/// No cache may keep a poll or an event stream.
fn no_cache(resp: &mut Resp) {
    let h = resp.headers_mut();
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert("pragma", HeaderValue::from_static("no-cache"));
    h.insert(
        "expires",
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
}

fn wants_event_stream(req: &Request<Incoming>) -> bool {
    req.headers().get_all(ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|m| {
                m.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
            })
        })
    })
}

/// Serves a non-WebSocket request on `/hubs/{hub}`: GET (event stream or poll), POST, DELETE.
pub async fn serve(
    app: &Arc<App>,
    req: Request<Incoming>,
    kind: HubKind,
    peer: SocketAddr,
) -> (&'static str, Result<Resp, Problem>) {
    let method = req.method().clone();
    let route = match method {
        Method::GET => "hub_receive",
        Method::POST => "hub_send",
        Method::DELETE => "hub_delete",
        _ => {
            return (
                "hub_connect",
                Err(Problem::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Hub.MethodNotAllowed",
                    "A hub accepts GET, POST, DELETE and OPTIONS.",
                )
                .with_header("allow", "GET, POST, DELETE, OPTIONS")),
            )
        }
    };
    let Some(id) = crate::hub::query_value(req.uri().query(), "id") else {
        return (
            route,
            Ok(plain(StatusCode::BAD_REQUEST, "Connection ID required\n")),
        );
    };
    let who = match principal(app, &req, Credentials::HeaderOrQuery).await {
        Ok(p) => p,
        Err(p) => return (route, Err(p)),
    };
    let link = app.hubs.link(&id);
    if let Some(l) = &link {
        if l.user != who.sub {
            app.metrics
                .hub_refused(HubRefusal::OtherUsersConnectionToken);
            return (
                route,
                Ok(plain(
                    StatusCode::FORBIDDEN,
                    "The connection was negotiated by another user.\n",
                )),
            );
        }
    }
    let resp = match method {
        Method::POST => send(link, req).await,
        Method::DELETE => Ok(delete(link)),
        _ => receive(app, link, req, id, who, kind, peer).await,
    };
    (route, resp)
}

const NO_CONNECTION: &str = "No Connection with that ID\n";

async fn send(link: Option<Arc<Link>>, req: Request<Incoming>) -> Result<Resp, Problem> {
    let Some(link) = link else {
        return Ok(plain(StatusCode::NOT_FOUND, NO_CONNECTION));
    };
    let body = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request.TooLarge",
                format!("The request body must not exceed {MAX_BODY} bytes."),
            ))
        }
        Err(_) => {
            return Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "Request.Timeout",
                "The request body did not arrive in time.",
            ))
        }
    };
    Ok(match link.send(bytes).await {
        Ok(()) => plain(StatusCode::OK, ""),
        Err(LinkRefusal::Busy) => plain(
            StatusCode::CONFLICT,
            "Another send request is already in progress for this connection.\n",
        ),
        Err(LinkRefusal::Gone) => plain(StatusCode::NOT_FOUND, NO_CONNECTION),
    })
}

fn delete(link: Option<Arc<Link>>) -> Resp {
    match link {
        None => plain(StatusCode::NOT_FOUND, NO_CONNECTION),
        Some(l) if l.transport != Transport::LongPolling => plain(
            StatusCode::BAD_REQUEST,
            "Cannot terminate this connection using the DELETE endpoint.\n",
        ),
        Some(l) => {
            l.delete();
            plain(StatusCode::ACCEPTED, "")
        }
    }
}

/// GET: the event stream or a poll; the first GET of a negotiated connection opens it.
#[allow(clippy::too_many_arguments)]
async fn receive(
    app: &Arc<App>,
    link: Option<Arc<Link>>,
    req: Request<Incoming>,
    id: String,
    who: crate::domain::Principal,
    kind: HubKind,
    peer: SocketAddr,
) -> Result<Resp, Problem> {
    let transport = if wants_event_stream(&req) {
        Transport::ServerSentEvents
    } else {
        Transport::LongPolling
    };
    let link = match link {
        Some(l) if l.transport != transport => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "Cannot change transports mid-connection.\n",
            ))
        }
        Some(l) => l,
        None => {
            match open(app, id, transport, who, kind, peer)? {
                Ok(l) if transport == Transport::LongPolling => {
                    // The first poll answers at once: the connection is established.
                    drop(l);
                    let mut resp = plain(StatusCode::OK, "");
                    no_cache(&mut resp);
                    return Ok(resp);
                }
                Ok(l) => l,
                Err(refusal) => return Ok(refusal),
            }
        }
    };
    let reader = match link.begin_read() {
        Ok(r) => r,
        Err(LinkRefusal::Busy) => {
            return Ok(plain(
                StatusCode::CONFLICT,
                "Another poll or event stream is already open for this connection.\n",
            ))
        }
        Err(LinkRefusal::Gone) => return Ok(plain(StatusCode::NOT_FOUND, NO_CONNECTION)),
    };
    if transport == Transport::ServerSentEvents {
        let mut resp = plain(StatusCode::OK, "");
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        no_cache(&mut resp);
        resp.extensions_mut()
            .insert(PendingStream(Arc::new(Mutex::new(Some(EventStream::new(
                reader,
            ))))));
        return Ok(resp);
    }
    let binary = link.protocol().is_some_and(|p| p.is_binary());
    let mut resp = match poll(reader, app.hubs.settings.long_poll_timeout).await {
        PollAnswer::Data(d) => {
            let ctype = if binary {
                "application/octet-stream"
            } else {
                "text/plain; charset=utf-8"
            };
            super::text_response(StatusCode::OK, ctype, d)
        }
        PollAnswer::TimedOut => plain(StatusCode::OK, ""),
        PollAnswer::Closed => plain(StatusCode::NO_CONTENT, ""),
    };
    no_cache(&mut resp);
    Ok(resp)
}

/// Opens the connection a negotiated token names, under the same caps as a WebSocket: the
/// link, or the refusal to answer with.
fn open(
    app: &Arc<App>,
    id: String,
    transport: Transport,
    who: crate::domain::Principal,
    kind: HubKind,
    peer: SocketAddr,
) -> Result<Result<Arc<Link>, Resp>, Problem> {
    match app.hubs.take_negotiated(&id, who.sub) {
        Ok(_) => {} // stateful reconnect is WebSocket-only; a grant is unused here
        Err(TokenRefusal::Unknown) => {
            return Ok(Err(plain(StatusCode::NOT_FOUND, NO_CONNECTION)));
        }
        Err(TokenRefusal::OtherUser) => {
            return Ok(Err(plain(
                StatusCode::FORBIDDEN,
                "The connection was negotiated by another user.\n",
            )));
        }
    }
    let admission = match app.hubs.admit(who.sub) {
        Ok(a) => a,
        Err(r) => return Err(super::hubs::refusal(r)),
    };
    Ok(Ok(app.hubs.open_link(
        id,
        transport,
        admission,
        kind,
        peer,
        who,
        app.store.clone(),
    )))
}
