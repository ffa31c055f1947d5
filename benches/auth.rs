//! Auth benches: HS256 bearer-token verification for a customer token and for a staff token
//! with roles and permissions, minted with `auth::TokenMinter`: the full check
//! (`Authenticator::verify_uncached`: signature, header and claims JSON, exp/nbf, the principal),
//! which a token pays on first use, and `Authenticator::verify` as every request calls it, which
//! answers repeats of a token from the cache of verified tokens.
//!
//! Same-run baselines without any JSON: the signature check alone through `jsonwebtoken`'s
//! crypto (base64url-decode the signature, HMAC-SHA256, compare), and a bare HMAC-SHA256 of the
//! signing input written on `sha2` (the cryptographic floor).
//!
//! Run: `cargo bench --bench auth`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{Algorithm, DecodingKey};
use ordertrack::testing::{AuthSettings, Authenticator, TokenMinter};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use uuid::Uuid;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123456789";

/// HMAC-SHA256 (RFC 2104) on `sha2`, with the key already shorter than the block size.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    assert!(key.len() <= BLOCK);
    let mut inner_pad = [0x36u8; BLOCK];
    let mut outer_pad = [0x5cu8; BLOCK];
    for (i, k) in key.iter().enumerate() {
        inner_pad[i] ^= k;
        outer_pad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn verify(c: &mut Criterion) {
    let settings = AuthSettings {
        algorithm: Algorithm::HS256,
        secret: Some(SECRET.to_vec()),
        public_key_pem: None,
        issuer: None,
        audience: None,
        leeway_secs: 30,
        jwks: None,
    };
    let auth = Authenticator::new(&settings).expect("authenticator");
    let minter = TokenMinter::new(&settings).expect("minter");
    let customer = minter
        .mint(Uuid::new_v4(), &[], &[], 3600)
        .expect("customer token");
    let restaurant = Uuid::new_v4();
    let staff = minter
        .mint(
            Uuid::new_v4(),
            &["OrderService".into()],
            &[
                format!("RestaurantStaff:{restaurant}"),
                format!("RestaurantOwner:{}", Uuid::new_v4()),
            ],
            3600,
        )
        .expect("staff token");

    let mut g = c.benchmark_group("hs256_verify");
    for (name, token) in [("customer_token", &customer), ("staff_token", &staff)] {
        assert_eq!(
            auth.verify_uncached(token).expect("valid"),
            auth.verify(token).expect("valid")
        );
        g.bench_function(BenchmarkId::new("full_verification", name), |b| {
            b.iter(|| auth.verify_uncached(black_box(token)).expect("valid"))
        });
        g.bench_function(BenchmarkId::new("verify_repeat_cached", name), |b| {
            b.iter(|| auth.verify(black_box(token)).expect("valid"))
        });
    }

    let key = DecodingKey::from_secret(SECRET);
    let (signing_input, signature) = customer.rsplit_once('.').expect("three parts");
    let sent = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("base64url signature");
    assert_eq!(
        hmac_sha256(SECRET, signing_input.as_bytes()).as_slice(),
        sent.as_slice(),
        "the bare HMAC computes the token's signature"
    );
    assert!(jsonwebtoken::crypto::verify(
        signature,
        signing_input.as_bytes(),
        &key,
        Algorithm::HS256
    )
    .expect("verify"));
    g.bench_function(
        BenchmarkId::new("baseline_signature_only", "customer_token"),
        |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(
                    black_box(signature),
                    black_box(signing_input.as_bytes()),
                    &key,
                    Algorithm::HS256,
                )
                .expect("verify")
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("baseline_bare_hmac_sha256", "customer_token"),
        |b| b.iter(|| hmac_sha256(SECRET, black_box(signing_input.as_bytes()))),
    );
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
