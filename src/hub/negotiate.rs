//! Negotiate (versions 0 and 1) and the table of negotiated-but-unconnected connection tokens,
//! which expire after `PENDING_TTL`.

use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A negotiated connection must open its WebSocket within this time.
pub const PENDING_TTL: Duration = Duration::from_secs(15);
/// Most negotiated tokens waiting at once (a flood of negotiates cannot grow memory).
pub const MAX_PENDING: usize = 50_000;

/// 16 random bytes, base64url without padding: URL-safe because clients append it unencoded.
pub fn random_token() -> String {
    let raw: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// What negotiate answers, as JSON text.
pub fn negotiate_body(query: Option<&str>, pending: &Pending) -> String {
    let version = match negotiate_version(query) {
        Ok(v) => v,
        Err(msg) => return serde_json::json!({ "error": msg }).to_string(),
    };
    let connection_id = random_token();
    let token = if version >= 1 {
        random_token()
    } else {
        connection_id.clone()
    };
    if !pending.insert(token.clone()) {
        return serde_json::json!({ "error": "The server is busy; try again shortly." })
            .to_string();
    }
    let transports = serde_json::json!([
        { "transport": "WebSockets", "transferFormats": ["Text", "Binary"] }
    ]);
    if version >= 1 {
        serde_json::json!({
            "negotiateVersion": 1,
            "connectionId": connection_id,
            "connectionToken": token,
            "availableTransports": transports,
        })
        .to_string()
    } else {
        serde_json::json!({
            "negotiateVersion": 0,
            "connectionId": connection_id,
            "availableTransports": transports,
        })
        .to_string()
    }
}

/// `negotiateVersion` from the query (key matched case-insensitively): missing → 0, above the
/// server's maximum → 1.
fn negotiate_version(query: Option<&str>) -> Result<u32, String> {
    let Some(v) = query_value(query, "negotiateVersion") else {
        return Ok(0);
    };
    match v.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!(
            "The client requested version '{n}', but the server does not support this version."
        )),
        Ok(n) => Ok(n.min(1) as u32),
        Err(_) => Err("The client requested an invalid protocol version.".into()),
    }
}

/// The first value of `key` in a query string (key case-insensitive, value percent-decoded).
pub fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    for pair in query?.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.eq_ignore_ascii_case(key) {
            return Some(
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
    }
    None
}

/// Negotiated connection tokens waiting for their WebSocket.
#[derive(Default)]
pub struct Pending(Mutex<HashMap<String, Instant>>);

impl Pending {
    /// Records a token; false when the table is full even after dropping expired entries.
    pub fn insert(&self, token: String) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_PENDING / 2 {
            let now = Instant::now();
            m.retain(|_, t| now.duration_since(*t) < PENDING_TTL);
        }
        if m.len() >= MAX_PENDING {
            return false;
        }
        m.insert(token, Instant::now());
        true
    }

    /// Consumes a token: true if it was negotiated and has not expired.
    pub fn take(&self, token: &str) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        matches!(m.remove(token), Some(t) if t.elapsed() < PENDING_TTL)
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(negotiate_version(None), Ok(0));
        assert_eq!(negotiate_version(Some("negotiateVersion=1")), Ok(1));
        assert_eq!(negotiate_version(Some("NegotiateVersion=5")), Ok(1));
        assert!(negotiate_version(Some("negotiateVersion=x")).is_err());
        assert!(negotiate_version(Some("negotiateVersion=-1")).is_err());
    }

    #[test]
    fn v1_has_a_separate_token_v0_does_not() {
        let p = Pending::default();
        let v1: serde_json::Value =
            serde_json::from_str(&negotiate_body(Some("negotiateVersion=1"), &p)).unwrap();
        assert_ne!(v1["connectionId"], v1["connectionToken"]);
        assert!(p.take(v1["connectionToken"].as_str().unwrap()));
        assert!(!p.take(v1["connectionToken"].as_str().unwrap()));
        let v0: serde_json::Value = serde_json::from_str(&negotiate_body(None, &p)).unwrap();
        assert!(v0.get("connectionToken").is_none());
        assert!(p.take(v0["connectionId"].as_str().unwrap()));
        let t = random_token();
        assert_eq!(t.len(), 22);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
