//! RFC 7807 problem details: the one shape every error answer takes.

use super::Resp;
use crate::domain::FieldErrors;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    trace_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a FieldErrors>,
}

/// A problem to answer with.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
    pub errors: Option<FieldErrors>,
    pub headers: Vec<(&'static str, String)>,
}

fn type_uri(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        401 => "https://tools.ietf.org/html/rfc9110#section-15.5.2",
        403 => "https://tools.ietf.org/html/rfc9110#section-15.5.4",
        404 => "https://tools.ietf.org/html/rfc9110#section-15.5.5",
        405 => "https://tools.ietf.org/html/rfc9110#section-15.5.6",
        408 => "https://tools.ietf.org/html/rfc9110#section-15.5.9",
        409 => "https://tools.ietf.org/html/rfc9110#section-15.5.10",
        412 => "https://tools.ietf.org/html/rfc9110#section-15.5.13",
        413 => "https://tools.ietf.org/html/rfc9110#section-15.5.14",
        415 => "https://tools.ietf.org/html/rfc9110#section-15.5.16",
        429 => "https://tools.ietf.org/html/rfc6585#section-4",
        503 => "https://tools.ietf.org/html/rfc9110#section-15.6.4",
        _ => "https://tools.ietf.org/html/rfc9110#section-15.6.1",
    }
}

impl Problem {
    pub fn new(status: StatusCode, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title: title.into(),
            detail: detail.into(),
            errors: None,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn validation(title: &str, errors: FieldErrors) -> Self {
        Problem {
            errors: Some(errors),
            ..Problem::new(
                StatusCode::BAD_REQUEST,
                title,
                "One or more validation errors occurred.",
            )
        }
    }

    pub fn unauthorized() -> Self {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "A valid bearer token is required.",
        )
        .with_header("www-authenticate", "Bearer error=\"invalid_token\"")
    }

    /// The masked answer for an order that does not exist for this caller.
    pub fn order_not_found(title: &str) -> Self {
        Problem::new(StatusCode::NOT_FOUND, title, "The order was not found.")
    }

    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "An unexpected error occurred.",
        )
    }

    pub fn unavailable() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The order store cannot accept writes right now. Retry later.",
        )
        .with_header("retry-after", "5")
    }

    /// Cluster mode: this node cannot take the write now (no primary is known to forward it
    /// to, or it was the primary and lost the lease or the log refused it). Nothing was
    /// written; retrying is safe (with an `Idempotency-Key` for placements).
    pub fn not_primary() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Cluster.NoPrimary",
            "No primary node can take this write right now. Retry shortly.",
        )
        .with_header("retry-after", "1")
    }

    pub fn into_response(self, trace_id: &str) -> Resp {
        let body = Body {
            kind: type_uri(self.status),
            title: &self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            trace_id,
            errors: self.errors.as_ref(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}

/// Raw bytes of a problem for a connection refused before hyper sees it.
pub fn raw_refusal(status: StatusCode, title: &str, detail: &str) -> Vec<u8> {
    let body = serde_json::to_string(&Body {
        kind: type_uri(status),
        title,
        status: status.as_u16(),
        detail,
        trace_id: "",
        errors: None,
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        body
    )
    .into_bytes()
}
