//! `GET /openapi.json`: the OpenAPI 3.1 description of the REST API and the hub endpoints
//! (`openapi.json` beside this file). `tests/ops_openapi.rs` validates real answers against it,
//! so the document stays true.

use super::problem::Problem;
use super::{method_not_allowed, Resp};
use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn serve(method: &Method) -> Result<Resp, Problem> {
    if method != Method::GET && method != Method::HEAD {
        return Err(method_not_allowed("GET, HEAD"));
    }
    let mut resp = Response::new(http_body_util::Full::new(Bytes::from_static(
        DOCUMENT.as_bytes(),
    )));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_and_openapi_3_1() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert!(v["openapi"].as_str().unwrap().starts_with("3.1."));
    }
}
