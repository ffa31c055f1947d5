//! Negotiate (versions 0 and 1) and the connection tokens it hands out.
//!
//! A connection token is stateless: it carries its expiry and a random nonce, sealed with an
//! HMAC under a key made at start, plus a second tag that binds it to the user who negotiated.
//! Nothing is stored per negotiate, so no flood of negotiates can fill a table and crowd out
//! other users; and a token seen by someone else (a proxy log) cannot be used by another user
//! to take or break the negotiating user's connection (ASP.NET likewise refuses a different
//! user with 403). A token opens one connection, within [`TOKEN_TTL`], for its own user: the
//! nonces of used tokens are remembered until they expire, which costs memory per real
//! connection opened, never per negotiate.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A negotiated connection must open its WebSocket within this time.
pub const TOKEN_TTL: Duration = Duration::from_secs(15);

const BODY: usize = 16; // expiry (ms since the epoch, u64 BE) + 8 random bytes, the last bit
                        // of which says whether stateful reconnect was granted
const SEAL: usize = 16; // HMAC over the body: the server made it
const BIND: usize = 8; // HMAC over the body and the user id: for whom
const RAW: usize = BODY + SEAL + BIND;

type HmacSha256 = Hmac<Sha256>;

/// Why an upgrade's connection token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not one of ours, damaged, or expired: ASP.NET's 404 "No Connection with that ID".
    Unknown,
    /// Made for another user: ASP.NET's 403.
    OtherUser,
}

/// Most used tokens remembered at once (each for at most `TOKEN_TTL`); beyond that, upgrades
/// that name a token are refused until older ones expire.
const MAX_USED: usize = 500_000;

/// Mints and checks connection tokens with a key that lives as long as the process.
pub struct ConnectionTokens {
    key: [u8; 32],
    used: Mutex<Used>,
}

/// Nonces of tokens that opened a connection, with their expiry in time order.
#[derive(Default)]
struct Used {
    nonces: HashSet<u64>,
    by_expiry: VecDeque<(u64, u64)>,
}

impl Default for ConnectionTokens {
    fn default() -> Self {
        ConnectionTokens {
            key: rand::random(),
            used: Mutex::default(),
        }
    }
}

impl ConnectionTokens {
    fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(domain);
        for p in parts {
            m.update(p);
        }
        m
    }

    /// A token for `user`, good until `TOKEN_TTL` from now.
    pub fn mint(&self, user: Uuid) -> String {
        self.mint_at(user, now_ms(), false)
    }

    /// A token whose connection may use stateful reconnect when `stateful` (the grant is
    /// sealed in with the rest).
    fn mint_at(&self, user: Uuid, now_ms: u64, stateful: bool) -> String {
        let mut raw = [0u8; RAW];
        let expires = now_ms.saturating_add(TOKEN_TTL.as_millis() as u64);
        raw[..8].copy_from_slice(&expires.to_be_bytes());
        raw[8..BODY].copy_from_slice(&rand::random::<[u8; 8]>());
        raw[BODY - 1] = (raw[BODY - 1] & !1) | u8::from(stateful);
        let seal = self.mac(b"seal", &[&raw[..BODY]]).finalize().into_bytes();
        raw[BODY..BODY + SEAL].copy_from_slice(&seal[..SEAL]);
        let bind = self
            .mac(b"bind", &[&raw[..BODY], user.as_bytes()])
            .finalize()
            .into_bytes();
        raw[BODY + SEAL..].copy_from_slice(&bind[..BIND]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Uses `token` for one connection: it must have been minted here for `user`, not be
    /// expired, and not have opened a connection before. `Ok(true)`: negotiate granted
    /// stateful reconnect to it.
    pub fn take(&self, token: &str, user: Uuid) -> Result<bool, TokenRefusal> {
        let now = now_ms();
        let (expires, nonce) = self.check_at(token, user, now)?;
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&(e, n)) = used.by_expiry.front() {
            if e > now {
                break;
            }
            used.by_expiry.pop_front();
            used.nonces.remove(&n);
        }
        if used.nonces.len() >= MAX_USED || !used.nonces.insert(nonce) {
            return Err(TokenRefusal::Unknown);
        }
        used.by_expiry.push_back((expires, nonce));
        Ok(nonce & 1 == 1)
    }

    /// Whether `token` was minted here for `user` and has not expired (it may have been used).
    #[cfg(test)]
    fn check(&self, token: &str, user: Uuid) -> Result<(), TokenRefusal> {
        self.check_at(token, user, now_ms()).map(|_| ())
    }

    /// The token's expiry and nonce when it is ours, alive and `user`'s.
    fn check_at(&self, token: &str, user: Uuid, now_ms: u64) -> Result<(u64, u64), TokenRefusal> {
        if token.len() > 64 {
            return Err(TokenRefusal::Unknown);
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenRefusal::Unknown)?;
        if raw.len() != RAW {
            return Err(TokenRefusal::Unknown);
        }
        self.mac(b"seal", &[&raw[..BODY]])
            .verify_truncated_left(&raw[BODY..BODY + SEAL])
            .map_err(|_| TokenRefusal::Unknown)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&raw[..8]);
        let expires = u64::from_be_bytes(word);
        if expires <= now_ms {
            return Err(TokenRefusal::Unknown);
        }
        self.mac(b"bind", &[&raw[..BODY], user.as_bytes()])
            .verify_truncated_left(&raw[BODY + SEAL..])
            .map_err(|_| TokenRefusal::OtherUser)?;
        word.copy_from_slice(&raw[8..BODY]);
        Ok((expires, u64::from_be_bytes(word)))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 16 random bytes, base64url without padding: URL-safe because clients append it unencoded.
pub fn random_token() -> String {
    let raw: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// What negotiate answers `user`, as JSON text (stateful reconnect granted when asked).
pub fn negotiate_body(query: Option<&str>, tokens: &ConnectionTokens, user: Uuid) -> String {
    negotiate_body_with(query, tokens, user, true)
}

/// What negotiate answers `user`; stateful reconnect is granted only when `allow_stateful` and
/// the query asks for it (`useStatefulReconnect=true`, key case-insensitive, as ASP.NET).
pub fn negotiate_body_with(
    query: Option<&str>,
    tokens: &ConnectionTokens,
    user: Uuid,
    allow_stateful: bool,
) -> String {
    let version = match negotiate_version(query) {
        Ok(v) => v,
        Err(msg) => return serde_json::json!({ "error": msg }).to_string(),
    };
    let stateful = allow_stateful
        && query_value(query, "useStatefulReconnect")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let token = tokens.mint_at(user, now_ms(), stateful);
    // Version 0 clients connect with the connection id, so there it is the token itself.
    let connection_id = if version >= 1 {
        random_token()
    } else {
        token.clone()
    };
    let transports = serde_json::json!([
        { "transport": "WebSockets", "transferFormats": ["Text", "Binary"] },
        { "transport": "ServerSentEvents", "transferFormats": ["Text"] },
        { "transport": "LongPolling", "transferFormats": ["Text", "Binary"] }
    ]);
    let mut body = if version >= 1 {
        serde_json::json!({
            "negotiateVersion": 1,
            "connectionId": connection_id,
            "connectionToken": token,
            "availableTransports": transports,
        })
    } else {
        serde_json::json!({
            "negotiateVersion": 0,
            "connectionId": connection_id,
            "availableTransports": transports,
        })
    };
    if stateful {
        body["useStatefulReconnect"] = serde_json::Value::Bool(true);
    }
    body.to_string()
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
        let tokens = ConnectionTokens::default();
        let me = Uuid::from_u128(1);
        let v1: serde_json::Value =
            serde_json::from_str(&negotiate_body(Some("negotiateVersion=1"), &tokens, me)).unwrap();
        assert_ne!(v1["connectionId"], v1["connectionToken"]);
        assert_eq!(
            tokens.check(v1["connectionToken"].as_str().unwrap(), me),
            Ok(())
        );
        let v0: serde_json::Value =
            serde_json::from_str(&negotiate_body(None, &tokens, me)).unwrap();
        assert!(v0.get("connectionToken").is_none());
        assert_eq!(
            tokens.check(v0["connectionId"].as_str().unwrap(), me),
            Ok(())
        );
        let t = random_token();
        assert_eq!(t.len(), 22);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn stateful_reconnect_is_granted_only_when_asked_and_allowed() {
        let tokens = ConnectionTokens::default();
        let me = Uuid::from_u128(1);
        let answer = |q: &str, allow: bool| -> serde_json::Value {
            serde_json::from_str(&negotiate_body_with(Some(q), &tokens, me, allow)).unwrap()
        };
        let asked = "negotiateVersion=1&UseStatefulReconnect=true";
        let granted = answer(asked, true);
        assert_eq!(granted["useStatefulReconnect"], true);
        let token = granted["connectionToken"].as_str().unwrap();
        assert_eq!(tokens.take(token, me), Ok(true));
        for (q, allow) in [(asked, false), ("negotiateVersion=1", true)] {
            let plain = answer(q, allow);
            assert!(plain.get("useStatefulReconnect").is_none(), "{q} {allow}");
            let token = plain["connectionToken"].as_str().unwrap();
            assert_eq!(tokens.take(token, me), Ok(false));
        }
    }

    #[test]
    fn a_token_is_bound_to_its_user_and_expires() {
        let tokens = ConnectionTokens::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t = tokens.mint_at(a, 1_000, false);
        assert!(t
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(tokens.check_at(&t, a, 1_001).is_ok());
        assert_eq!(tokens.check_at(&t, b, 1_001), Err(TokenRefusal::OtherUser));
        let ttl = TOKEN_TTL.as_millis() as u64;
        assert_eq!(
            tokens.check_at(&t, a, 1_000 + ttl),
            Err(TokenRefusal::Unknown)
        );
        // Another process's key, a changed byte, junk: unknown.
        assert_eq!(
            ConnectionTokens::default().check_at(&t, a, 1_001),
            Err(TokenRefusal::Unknown)
        );
        // A live token opens one connection only; another user cannot spend it.
        let live = tokens.mint(a);
        assert_eq!(tokens.take(&live, b), Err(TokenRefusal::OtherUser));
        assert_eq!(tokens.take(&live, a), Ok(false));
        assert_eq!(tokens.take(&live, a), Err(TokenRefusal::Unknown));
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t)
            .unwrap();
        raw[3] ^= 1;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            tokens.check_at(&forged, a, 1_001),
            Err(TokenRefusal::Unknown)
        );
        for junk in ["", "x", "!!!!", &"A".repeat(54), &"A".repeat(500)] {
            assert_eq!(tokens.check_at(junk, a, 1_001), Err(TokenRefusal::Unknown));
        }
    }
}
