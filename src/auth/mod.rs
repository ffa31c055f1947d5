//! Authentication: a bearer JWT becomes a `domain::Principal` (subject, roles, restaurant
//! permissions, expiry), with a cache of verified tokens; and the minting of tokens for the
//! `token` command, the demo and the tests. What a principal may see and do is decided in
//! `domain/access.rs`, not here. Keys are static (a secret or a PEM public key, pinned by
//! configuration) or come from the identity provider's JWK set (`jwks.rs`, fetched by
//! `fetch.rs`).

mod fetch;
mod jwks;

pub use jwks::{JwksSettings, JwksSnapshot, DEFAULT_MIN_REFRESH};

use crate::domain::Principal;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thiserror::Error;
use uuid::Uuid;

/// The role that sees and acts on every order.
pub const ADMINISTRATOR: &str = "Administrator";
/// The role of the order service: places orders and reports payments.
pub const ORDER_SERVICE: &str = "OrderService";
/// Every role a token's `role` claim can grant; any other role grants nothing.
pub const ROLES: [&str; 2] = [ADMINISTRATOR, ORDER_SERVICE];
/// The forms of a `permission` claim that grant something, for messages.
pub const PERMISSION_FORMS: &str =
    "RestaurantStaff:<restaurantId> or RestaurantOwner:<restaurantId>";

/// What one `permission` claim grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    Staff(Uuid),
    Owner(Uuid),
}

/// Reads one `permission` claim: `RestaurantStaff:{restaurantId}` or
/// `RestaurantOwner:{restaurantId}` with a UUID; anything else grants nothing (`None`).
pub fn parse_permission(claim: &str) -> Option<Permission> {
    let (kind, id) = claim.split_once(':')?;
    let id = canonical_uuid(id)?;
    match kind {
        "RestaurantStaff" => Some(Permission::Staff(id)),
        "RestaurantOwner" => Some(Permission::Owner(id)),
        _ => None,
    }
}

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid token: its key is not in the identity provider's key set")]
    UnknownKey,
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("unsupported JWT algorithm '{0}' (use HS256, RS256, ES256 or EdDSA)")]
    Algorithm(String),
    #[error("HS256 needs a secret (--jwt-secret or ORDERTRACK_JWT_SECRET)")]
    NoSecret,
    #[error("{0} needs a PEM public key (--jwt-public-key)")]
    NoPublicKey(&'static str),
    #[error("cannot read the public key: {0}")]
    BadKey(String),
    #[error("the JWT library failed its self-test: {0}")]
    SelfTest(String),
    #[error("tokens can only be minted with HS256 and a secret")]
    CannotMint,
    #[error("{0}")]
    Jwks(#[from] fetch::SourceError),
}

/// The algorithms the server can be pinned to.
pub fn parse_algorithm(s: &str) -> Result<Algorithm, KeyError> {
    match s.to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EDDSA" => Ok(Algorithm::EdDSA),
        _ => Err(KeyError::Algorithm(s.to_string())),
    }
}

/// How tokens are checked.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub algorithm: Algorithm,
    pub secret: Option<Vec<u8>>,
    pub public_key_pem: Option<Vec<u8>>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_secs: u64,
    /// Keys from the identity provider instead of `secret`/`public_key_pem`.
    pub jwks: Option<JwksSettings>,
}

/// A string or an array of strings, as `role` and `permission` claims come.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
            OneOrMany::None => Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, alias = "roles")]
    role: OneOrMany,
    #[serde(default, alias = "permissions")]
    permission: OneOrMany,
}

/// Verifies bearer tokens with one pinned algorithm and key, or with the identity provider's
/// key set.
pub struct Authenticator {
    keys: Keys,
    cache: VerifiedTokens,
}

// One per process: boxing the static key would only add a pointer chase to every check.
#[allow(clippy::large_enum_variant)]
enum Keys {
    /// One key, its algorithm pinned by configuration.
    Static {
        key: DecodingKey,
        validation: Validation,
    },
    /// The provider's keys; `seen` is the set's change count the token cache was filled under.
    Jwks {
        set: Arc<jwks::Jwks>,
        seen: AtomicU64,
    },
}

/// Tokens that already passed verification, keyed by their exact text, kept until they expire.
/// A hit skips the signature check and claim parsing; `exp` is still enforced on every use.
/// Bounded: a full shard is cleared rather than grown.
struct VerifiedTokens {
    shards: Vec<std::sync::Mutex<TokenMap>>,
    per_shard: usize,
    leeway: i64,
}

/// Verified tokens by their full text. Hashed with foldhash, not SipHash: a token is ~200 bytes
/// and SipHash over it was a tenth of a status poll's own work. Only tokens whose signature
/// verified are ever stored, so nobody can fill a bucket with chosen collisions.
type TokenMap = std::collections::HashMap<Box<str>, Principal, foldhash::fast::RandomState>;

impl VerifiedTokens {
    const SHARDS: usize = 16;

    fn new(capacity: usize, leeway: u64) -> Self {
        VerifiedTokens {
            shards: (0..Self::SHARDS).map(|_| Default::default()).collect(),
            per_shard: (capacity / Self::SHARDS).max(1),
            leeway: leeway as i64,
        }
    }

    fn shard(&self, token: &str) -> &std::sync::Mutex<TokenMap> {
        // The signature tail of a JWT is uniformly distributed: a cheap, good shard key.
        let b = token.as_bytes();
        let i = b.last().copied().unwrap_or(0) as usize ^ (b.len() << 3);
        &self.shards[i % Self::SHARDS]
    }

    fn get(&self, token: &str, now: i64) -> Option<Principal> {
        let mut m = self.shard(token).lock().unwrap_or_else(|e| e.into_inner());
        match m.get(token) {
            Some(p) if p.expires_at + self.leeway > now => Some(p.clone()),
            Some(_) => {
                m.remove(token);
                None
            }
            None => None,
        }
    }

    fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    fn put(&self, token: &str, p: &Principal) {
        let mut m = self.shard(token).lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= self.per_shard {
            m.clear();
        }
        m.insert(token.into(), p.clone());
    }
}

impl Authenticator {
    pub fn new(s: &AuthSettings) -> Result<Self, KeyError> {
        let validation = base_validation(s);
        let cache = VerifiedTokens::new(100_000, s.leeway_secs);
        if let Some(j) = &s.jwks {
            let set = Arc::new(jwks::Jwks::new(j, validation)?);
            return Ok(Authenticator {
                keys: Keys::Jwks {
                    set,
                    seen: AtomicU64::new(0),
                },
                cache,
            });
        }
        let key = match s.algorithm {
            Algorithm::HS256 => {
                DecodingKey::from_secret(s.secret.as_deref().ok_or(KeyError::NoSecret)?)
            }
            alg => {
                let name = match alg {
                    Algorithm::RS256 => "RS256",
                    Algorithm::ES256 => "ES256",
                    _ => "EdDSA",
                };
                let pem = s
                    .public_key_pem
                    .as_deref()
                    .ok_or(KeyError::NoPublicKey(name))?;
                let parsed = match alg {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                    Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
                    _ => DecodingKey::from_ed_pem(pem),
                };
                parsed.map_err(|e| KeyError::BadKey(e.to_string()))?
            }
        };
        let mut validation = validation;
        validation.algorithms = vec![s.algorithm];
        let auth = Authenticator {
            keys: Keys::Static { key, validation },
            cache,
        };
        if s.algorithm == Algorithm::HS256 {
            auth.self_test(s)?;
        }
        Ok(auth)
    }

    /// Starts fetching the identity provider's key set (nothing to do with static keys).
    pub fn start_refresh(&self, stop: tokio_util::sync::CancellationToken) {
        if let Keys::Jwks { set, .. } = &self.keys {
            use tracing::Instrument;
            tokio::spawn(
                set.clone()
                    .run(stop)
                    .instrument(tracing::info_span!("jwks_refresh")),
            );
        }
    }

    /// False until a key set has loaded (always true with static keys).
    pub fn ready(&self) -> bool {
        match &self.keys {
            Keys::Static { .. } => true,
            Keys::Jwks { set, .. } => set.loaded(),
        }
    }

    /// The key set's numbers, with `--jwks-url`.
    pub fn jwks_snapshot(&self) -> Option<JwksSnapshot> {
        match &self.keys {
            Keys::Static { .. } => None,
            Keys::Jwks { set, .. } => Some(set.snapshot()),
        }
    }

    /// Mints and verifies one token so a broken crypto backend fails at start-up, not at the
    /// first request.
    fn self_test(&self, s: &AuthSettings) -> Result<(), KeyError> {
        let Keys::Static { key, validation } = &self.keys else {
            return Ok(());
        };
        let minter = TokenMinter::new(s)?;
        let token = minter
            .mint(Uuid::nil(), &[], &[], 60)
            .map_err(|e| KeyError::SelfTest(e.to_string()))?;
        let mut v = validation.clone();
        v.validate_aud = false;
        v.iss = None;
        jsonwebtoken::decode::<Claims>(&token, key, &v)
            .map(|_| ())
            .map_err(|e| KeyError::SelfTest(e.to_string()))
    }

    /// Verifies a raw token, and with the identity provider's keys, fetches the set once when
    /// the token names a key it does not hold (rate-limited; see `jwks.rs`).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let first = self.verify(token);
        let Keys::Jwks { set, .. } = &self.keys else {
            return first;
        };
        if !matches!(first, Err(AuthError::UnknownKey)) {
            return first;
        }
        // Boxed: the fetch's state stays out of every request's future (hyper moves that
        // future into place per request; this path runs only for a key not yet seen).
        let again = if Box::pin(set.refresh_for_unknown_kid(token)).await {
            self.verify(token)
        } else {
            first
        };
        if matches!(again, Err(AuthError::UnknownKey)) {
            set.count_unknown_kid();
        }
        again
    }
}

/// The checks every key shares: exp/nbf with leeway, `sub`, and `iss`/`aud` when configured.
fn base_validation(s: &AuthSettings) -> Validation {
    let mut validation = Validation::new(s.algorithm);
    validation.leeway = s.leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &s.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &s.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

impl Authenticator {
    /// Verifies a raw token (without the `Bearer ` prefix).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > 8192 {
            return Err(AuthError::Invalid("length".into()));
        }
        // With the provider's keys: a changed set may have withdrawn the key of a cached token,
        // so the cache starts over, and a token verified under an older set is not cached.
        let generation = match &self.keys {
            Keys::Static { .. } => None,
            Keys::Jwks { set, seen } => {
                let now_seen = set.changes();
                if seen.load(Ordering::Relaxed) != now_seen
                    && seen.swap(now_seen, Ordering::Relaxed) != now_seen
                {
                    self.cache.clear();
                }
                Some((set, now_seen))
            }
        };
        let now = chrono::Utc::now().timestamp();
        if let Some(p) = self.cache.get(token, now) {
            return Ok(p);
        }
        let p = self.verify_uncached(token)?;
        if generation.is_none_or(|(set, seen)| set.changes() == seen) {
            self.cache.put(token, &p);
        }
        Ok(p)
    }

    /// Full verification: signature, algorithm, exp/nbf, iss/aud, claims. Bypasses the cache
    /// of verified tokens: the server calls [`Authenticator::verify`]; `benches/auth.rs` measures
    /// this one through the `testing` door.
    pub fn verify_uncached(&self, token: &str) -> Result<Principal, AuthError> {
        refuse_critical_extensions(token)?;
        let invalid =
            |e: jsonwebtoken::errors::Error| AuthError::Invalid(format!("{:?}", e.kind()));
        let data = match &self.keys {
            Keys::Static { key, validation } => {
                jsonwebtoken::decode::<Claims>(token, key, validation).map_err(invalid)?
            }
            Keys::Jwks { set, .. } => {
                let k = set.key_for(token)?;
                jsonwebtoken::decode::<Claims>(token, &k.key, &k.validation).map_err(invalid)?
            }
        };
        let c = data.claims;
        let sub = canonical_uuid(&c.sub)
            .ok_or_else(|| AuthError::Invalid("sub is not a UUID in its standard form".into()))?;
        let mut p = Principal {
            sub,
            administrator: false,
            order_service: false,
            staff_of: Vec::new(),
            owner_of: Vec::new(),
            expires_at: c.exp,
        };
        for role in c.role.into_vec() {
            match role.as_str() {
                ADMINISTRATOR => p.administrator = true,
                ORDER_SERVICE => p.order_service = true,
                _ => {}
            }
        }
        for perm in c.permission.into_vec() {
            match parse_permission(&perm) {
                Some(Permission::Staff(id)) => p.staff_of.push(id),
                Some(Permission::Owner(id)) => p.owner_of.push(id),
                None => {}
            }
        }
        Ok(p)
    }

    /// Verifies the `Authorization: Bearer …` header value.
    pub fn verify_header(&self, value: Option<&[u8]>) -> Result<Principal, AuthError> {
        let v = value.ok_or(AuthError::Missing)?;
        let v = std::str::from_utf8(v).map_err(|_| AuthError::Invalid("header".into()))?;
        let token = bearer_token(v).ok_or(AuthError::Invalid("scheme".into()))?;
        self.verify(token)
    }
}

/// A UUID in the RFC 9562 string form only: 36 characters, hyphens at 8, 13, 18 and 23, hex
/// digits (either case) elsewhere. The other spellings a parser may accept (`urn:uuid:`,
/// braces, 32 bare digits) are refused, so no two token texts name one identity by accident.
pub fn canonical_uuid(s: &str) -> Option<Uuid> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if !shape_ok {
        return None;
    }
    Uuid::from_str(s).ok()
}

/// RFC 7515 §4.1.11: a token whose header lists `crit` extensions must be refused unless every
/// one is understood; this server understands none. The header is read before the signature
/// is checked (jsonwebtoken ignores `crit`), so this costs one small base64 and JSON decode.
fn refuse_critical_extensions(token: &str) -> Result<(), AuthError> {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Invalid("header encoding".into()))?;
    #[derive(Deserialize)]
    struct Crit {
        crit: Option<serde::de::IgnoredAny>,
    }
    let h: Crit = serde_json::from_slice(&raw)
        .map_err(|_| AuthError::Invalid("header is not a JSON object".into()))?;
    if h.crit.is_some() {
        return Err(AuthError::Invalid(
            "unsupported critical header extension".into(),
        ));
    }
    Ok(())
}

/// The token of an `Authorization` value using the Bearer scheme (case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    role: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    permission: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Signs development and test tokens with the configured HS256 secret.
pub struct TokenMinter {
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl TokenMinter {
    pub fn new(s: &AuthSettings) -> Result<Self, KeyError> {
        if s.algorithm != Algorithm::HS256 || s.jwks.is_some() {
            return Err(KeyError::CannotMint);
        }
        let secret = s.secret.as_deref().ok_or(KeyError::NoSecret)?;
        Ok(TokenMinter {
            key: EncodingKey::from_secret(secret),
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
        })
    }

    pub fn mint(
        &self,
        sub: Uuid,
        roles: &[String],
        permissions: &[String],
        ttl_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let claims = MintClaims {
            sub: sub.to_string(),
            iat: now,
            nbf: now,
            exp: now + ttl_secs,
            role: roles,
            permission: permissions,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            algorithm: Algorithm::HS256,
            secret: Some(b"unit-test-secret-0123456789abcdef".to_vec()),
            public_key_pem: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            jwks: None,
        }
    }

    #[test]
    fn mint_then_verify() {
        let s = settings();
        let a = Authenticator::new(&s).unwrap();
        let m = TokenMinter::new(&s).unwrap();
        let r = Uuid::new_v4();
        let sub = Uuid::new_v4();
        let t = m
            .mint(
                sub,
                &["Administrator".into()],
                &[format!("RestaurantOwner:{r}"), "Junk".into()],
                60,
            )
            .unwrap();
        let p = a.verify(&t).unwrap();
        assert_eq!(p.sub, sub);
        assert!(p.administrator && !p.order_service);
        assert!(p.is_staff_of(r));
        assert!(a.verify(&t[..t.len() - 2]).is_err());
        assert!(a
            .verify_header(Some(format!("bearer {t}").as_bytes()))
            .is_ok());
        assert!(matches!(a.verify_header(None), Err(AuthError::Missing)));
    }

    #[test]
    fn permissions_grant_only_in_their_two_forms() {
        let r = Uuid::new_v4();
        assert_eq!(
            parse_permission(&format!("RestaurantStaff:{r}")),
            Some(Permission::Staff(r))
        );
        assert_eq!(
            parse_permission(&format!("RestaurantOwner:{r}")),
            Some(Permission::Owner(r))
        );
        for bad in [
            "Foo".to_string(),
            "RestaurantStaff:".to_string(),
            "RestaurantStaff:nope".to_string(),
            format!("restaurantstaff:{r}"),
            format!("RestaurantManager:{r}"),
        ] {
            assert_eq!(parse_permission(&bad), None, "{bad}");
        }
    }

    #[test]
    fn expired_beyond_leeway_is_refused() {
        let s = settings();
        let a = Authenticator::new(&s).unwrap();
        let t = TokenMinter::new(&s)
            .unwrap()
            .mint(Uuid::new_v4(), &[], &[], -31)
            .unwrap();
        assert!(a.verify(&t).is_err());
        let t = TokenMinter::new(&s)
            .unwrap()
            .mint(Uuid::new_v4(), &[], &[], -5)
            .unwrap();
        assert!(a.verify(&t).is_ok());
    }
}
