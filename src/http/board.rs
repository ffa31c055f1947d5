//! The kitchen board page, `/board`: a small HTML page, its script and style, and the official
//! SignalR browser bundle (vendored in `assets/`, see `assets/signalr.LICENSE.txt`), all
//! embedded in the binary so a restaurant can open a board with nothing but this server. Every
//! answer carries a strict Content-Security-Policy: the page loads and connects to this origin
//! only, and runs no inline script.

use super::{method_not_allowed, Problem, Resp};
use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

const HTML: &str = include_str!("assets/board.html");
const SCRIPT: &str = include_str!("assets/board.js");
const STYLE: &str = include_str!("assets/board.css");
const SIGNALR: &str = include_str!("assets/signalr.min.js");
const SIGNALR_LICENSE: &str = include_str!("assets/signalr.LICENSE.txt");

/// Nothing from elsewhere, no inline script or style, no framing, no referrer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /board` and `GET /board/{asset}`; `None` for an unknown asset (the caller's 404).
pub fn serve(method: &Method, asset: Option<&str>) -> Option<Result<Resp, Problem>> {
    let (body, content_type) = match asset {
        None => (HTML, "text/html; charset=utf-8"),
        Some("board.js") => (SCRIPT, "text/javascript; charset=utf-8"),
        Some("board.css") => (STYLE, "text/css; charset=utf-8"),
        Some("signalr.min.js") => (SIGNALR, "text/javascript; charset=utf-8"),
        Some("signalr.LICENSE.txt") => (SIGNALR_LICENSE, "text/plain; charset=utf-8"),
        Some(_) => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(Err(method_not_allowed("GET, HEAD")));
    }
    let mut resp = Response::new(http_body_util::Full::new(Bytes::from_static(
        body.as_bytes(),
    )));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    Some(Ok(resp))
}
