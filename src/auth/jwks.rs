//! Keys from the identity provider (`--jwks-url`): the cached JWK set, its refresh policy and
//! its numbers. Each usable key is pinned to one algorithm when the set is loaded (its `alg`,
//! or what its `kty`/`crv` allows: RSA → RS256, EC P-256 → ES256, OKP Ed25519 → EdDSA); a
//! token is checked with the key its `kid` names and only with that key's algorithm, so the
//! token header cannot choose how it is verified. Symmetric (`oct`) keys, encryption keys and
//! other algorithms are skipped.
//!
//! Refresh: on the answer's `Cache-Control: max-age` (kept between `min_refresh` and
//! [`MAX_REFRESH`], [`DEFAULT_REFRESH`] without one), and when a token names an unknown `kid`;
//! never two fetches within `min_refresh` (default 30 s) once a set is loaded, so forged `kid`s
//! cannot make us hammer the provider. A failed fetch, or a set with no usable key, keeps the
//! last good set. Until a first set loads, retries back off from 0.5 s up to `min_refresh`.

use super::fetch::{Source, SourceError};
use super::AuthError;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Refresh interval when the provider sends no `max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Longest refresh interval, whatever `max-age` says: a key the provider withdraws stops
/// verifying within this long even if no token names an unknown `kid`.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// The default least time between two fetches.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(30);
/// First retry delay while no set has loaded yet.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Where the keys come from and how often they may be fetched.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    pub url: String,
    /// PEM CA certificates to trust instead of the system's, for an https URL.
    pub cacert_pem: Option<Vec<u8>>,
    pub min_refresh: Duration,
}

/// One key of the set with the algorithm it is pinned to.
pub(super) struct PinnedKey {
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<PinnedKey>>,
    /// The one key a token without `kid` may use: set only when the set holds exactly one.
    only: Option<Arc<PinnedKey>>,
    /// The usable keys' JSON, sorted: tells whether a new set differs from the old.
    fingerprint: Vec<String>,
}

/// The set's numbers for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JwksSnapshot {
    pub fetches_ok: u64,
    pub fetches_failed: u64,
    pub keys: u64,
    /// Seconds since the last successful fetch; `None` before the first.
    pub last_success_age_secs: Option<f64>,
    pub unknown_kid_refusals: u64,
}

#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    keys: AtomicU64,
    /// Unix milliseconds of the last success, 0 before the first.
    last_ok_ms: AtomicI64,
    unknown_kid: AtomicU64,
}

/// When the next fetch may and should happen (held across a fetch: one fetch at a time).
struct Schedule {
    last_attempt: Option<Instant>,
    next_due: Instant,
    failures: u32,
}

/// The cached key set and its refresher.
pub struct Jwks {
    source: Source,
    base: Validation,
    min_refresh: Duration,
    set: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    /// Bumped whenever the loaded set differs from the one before (verified tokens are then
    /// forgotten, so a withdrawn key's tokens are refused at once).
    changes: AtomicU64,
    schedule: tokio::sync::Mutex<Schedule>,
    stats: Stats,
}

impl Jwks {
    /// Resolves the URL and TLS trust; fetches nothing yet (see [`Jwks::run`]).
    pub fn new(s: &JwksSettings, base: Validation) -> Result<Jwks, SourceError> {
        Ok(Jwks {
            source: Source::new(&s.url, s.cacert_pem.as_deref())?,
            base,
            min_refresh: s.min_refresh,
            set: RwLock::new(Arc::default()),
            loaded: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            schedule: tokio::sync::Mutex::new(Schedule {
                last_attempt: None,
                next_due: Instant::now(),
                failures: 0,
            }),
            stats: Stats::default(),
        })
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Relaxed)
    }

    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Relaxed)
    }

    /// The key the token's header names, if it is pinned to the header's algorithm.
    pub(super) fn key_for(&self, token: &str) -> Result<Arc<PinnedKey>, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("header: {:?}", e.kind())))?;
        let set = self.set.read().unwrap_or_else(|e| e.into_inner()).clone();
        let key = match &header.kid {
            Some(kid) => set.by_kid.get(kid),
            None => set.only.as_ref(),
        }
        .ok_or(AuthError::UnknownKey)?;
        if key.alg != header.alg {
            return Err(AuthError::Invalid(
                "the token's alg is not the one its key is pinned to".into(),
            ));
        }
        Ok(key.clone())
    }

    /// Called after a token named an unknown key: fetches the set unless a fetch happened
    /// within `min_refresh` (concurrent callers wait for the one fetch under way). True when
    /// the token should be checked again.
    pub(super) async fn refresh_for_unknown_kid(&self, token: &str) -> bool {
        let mut s = self.schedule.lock().await;
        if self.key_for(token).is_ok() {
            return true;
        }
        if s.last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refresh)
        {
            return false;
        }
        self.fetch(&mut s).await;
        true
    }

    pub(super) fn count_unknown_kid(&self) {
        self.stats.unknown_kid.fetch_add(1, Relaxed);
    }

    /// Fetches on schedule until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let due = self.schedule.lock().await.next_due;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            let mut s = self.schedule.lock().await;
            if Instant::now() >= s.next_due {
                self.fetch(&mut s).await;
            }
        }
    }

    /// One fetch; installs the set when it holds a usable key and plans the next fetch.
    async fn fetch(&self, s: &mut Schedule) {
        let now = Instant::now();
        s.last_attempt = Some(now);
        let result = match self.source.get().await {
            Ok(f) => self.parse(&f.body).map(|set| (set, f.max_age)),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((set, max_age)) => {
                self.install(set);
                s.failures = 0;
                let every = max_age
                    .unwrap_or(DEFAULT_REFRESH)
                    .clamp(self.min_refresh, MAX_REFRESH.max(self.min_refresh));
                s.next_due = now + every;
            }
            Err(reason) => {
                self.stats.failed.fetch_add(1, Relaxed);
                s.failures = s.failures.saturating_add(1);
                let wait = if self.loaded() {
                    self.min_refresh
                } else {
                    FIRST_RETRY
                        .saturating_mul(1 << s.failures.min(16))
                        .min(self.min_refresh)
                };
                s.next_due = now + wait;
                tracing::warn!(
                    host = self.source.host(),
                    %reason,
                    loaded = self.loaded(),
                    retry_in_ms = wait.as_millis() as u64,
                    "JWKS fetch failed; keeping the last good key set"
                );
            }
        }
    }

    /// The usable keys of a JWK set document; an error when there is none.
    fn parse(&self, body: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut set = KeySet::default();
        let mut unnamed = Vec::new();
        for raw in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            let Some(alg) = pinned_algorithm(&jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let mut validation = self.base.clone();
            validation.algorithms = vec![alg];
            let pinned = Arc::new(PinnedKey {
                alg,
                key,
                validation,
            });
            set.fingerprint.push(raw.to_string());
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, pinned.clone());
                }
                None => unnamed.push(pinned.clone()),
            }
            set.only = Some(pinned);
        }
        if set.fingerprint.is_empty() {
            return Err("the set holds no usable RS256, ES256 or EdDSA key".into());
        }
        if set.fingerprint.len() > 1 {
            set.only = None;
        }
        set.fingerprint.sort();
        Ok(set)
    }

    fn install(&self, set: KeySet) {
        let count = set.fingerprint.len() as u64;
        let mut cur = self.set.write().unwrap_or_else(|e| e.into_inner());
        let changed = cur.fingerprint != set.fingerprint;
        if changed {
            *cur = Arc::new(set);
            self.changes.fetch_add(1, Relaxed);
        }
        drop(cur);
        self.stats.ok.fetch_add(1, Relaxed);
        self.stats.keys.store(count, Relaxed);
        self.stats
            .last_ok_ms
            .store(chrono::Utc::now().timestamp_millis().max(1), Relaxed);
        if changed {
            tracing::info!(
                host = self.source.host(),
                keys = count,
                "JWKS key set loaded"
            );
        }
        self.loaded.store(true, Relaxed);
    }

    pub fn snapshot(&self) -> JwksSnapshot {
        let last = self.stats.last_ok_ms.load(Relaxed);
        JwksSnapshot {
            fetches_ok: self.stats.ok.load(Relaxed),
            fetches_failed: self.stats.failed.load(Relaxed),
            keys: self.stats.keys.load(Relaxed),
            last_success_age_secs: (last > 0)
                .then(|| (chrono::Utc::now().timestamp_millis() - last).max(0) as f64 / 1000.0),
            unknown_kid_refusals: self.stats.unknown_kid.load(Relaxed),
        }
    }
}

/// The one algorithm a JWK may verify, or `None` when we cannot use it: its `alg` if that is
/// one we support and fits its type, else what its type implies.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let named = match jwk.common.key_algorithm {
        None => return Some(by_type),
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
    };
    (named == by_type).then_some(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(v: serde_json::Value) -> Jwk {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_key_pins_the_algorithm() {
        let rsa = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
        assert_eq!(pinned_algorithm(&jwk(rsa.clone())), Some(Algorithm::RS256));
        let mut ps = rsa.clone();
        ps["alg"] = "PS256".into();
        assert_eq!(pinned_algorithm(&jwk(ps)), None);
        let mut enc = rsa;
        enc["use"] = "enc".into();
        assert_eq!(pinned_algorithm(&jwk(enc)), None);
        let oct = serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"});
        assert_eq!(pinned_algorithm(&jwk(oct)), None);
        let ec_as_rsa =
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "RS256"});
        assert_eq!(pinned_algorithm(&jwk(ec_as_rsa)), None);
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"});
        assert_eq!(pinned_algorithm(&jwk(ed)), Some(Algorithm::EdDSA));
    }
}
