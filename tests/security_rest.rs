//! The smaller findings of the outside security probe (issue 16), through the binary: private
//! answers are marked so shared caches do not keep them; a token whose permission names a
//! restaurant in another UUID spelling grants nothing (the `sub` spellings and `crit` are in
//! `reliability_tokens.rs`'s table); the backup endpoint answers a name, not the host path, and
//! keeps a bounded number of backups.

mod common;
use common::*;
use std::path::Path;
use uuid::Uuid;

#[test]
fn private_answers_are_not_stored_by_shared_caches() {
    let server = Server::start();
    let cast = Cast::new();
    let order = place(&server, &cast, "CashOnDelivery");
    for (path, want) in [
        (
            format!("/api/v1/orders/{order}/status"),
            "private, no-cache",
        ),
        (format!("/api/v1/orders/{order}"), "private, no-cache"),
        ("/api/v1/orders/my".to_string(), "private, no-store"),
    ] {
        let r = get_with(&server, &cast.customer_token, &path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("cache-control").as_deref(), Some(want), "{path}");
    }
    // The 304 of a revalidation says the same.
    let r = get_with(
        &server,
        &cast.customer_token,
        &format!("/api/v1/orders/{order}/status"),
        &[("if-none-match", &format!("\"order-{order}-v1\""))],
    );
    assert_eq!(r.status, 304);
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("private, no-cache")
    );
}

#[test]
fn one_identity_has_one_spelling() {
    let server = Server::start();
    let cast = Cast::new();
    let order = place(&server, &cast, "CashOnDelivery");
    let path = format!("/api/v1/orders/{order}/status");
    // Upper case is the same standard form (RFC 9562 allows either case).
    let upper = token_ttl_sub_text(&cast.customer.to_string().to_uppercase(), &[]);
    assert_eq!(get_with(&server, &upper, &path, &[]).status, 200);
    // A permission naming the restaurant in another spelling grants nothing: the order stays
    // hidden (404), while the standard spelling sees it.
    let r = cast.restaurant;
    for (perm, want) in [
        (format!("RestaurantStaff:{r}"), 200),
        (
            format!("RestaurantStaff:{}", r.to_string().to_uppercase()),
            200,
        ),
        (format!("RestaurantStaff:{{{r}}}"), 404),
        (format!("RestaurantStaff:urn:uuid:{r}"), 404),
        (format!("RestaurantStaff:{}", r.simple()), 404),
        (format!("RestaurantOwner:{}", r.simple()), 404),
    ] {
        let t = token_ttl_sub_text(&Uuid::new_v4().to_string(), &[&perm]);
        assert_eq!(get_with(&server, &t, &path, &[]).status, want, "{perm}");
    }
}

/// A token whose `sub` and permissions are written exactly as given (the `token` command would
/// refuse the odd spellings), signed with the test secret.
fn token_ttl_sub_text(sub: &str, permissions: &[&str]) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "exp": chrono::Utc::now().timestamp() + 3600,
        "permission": permissions,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("backups"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_backup_endpoint_answers_a_name_and_keeps_a_bounded_number() {
    let server = Server::start_with(&["--keep-backups", "2"]);
    let cast = Cast::new();
    place(&server, &cast, "CashOnDelivery");
    let dir = server.dir.clone();
    let host_path = std::fs::canonicalize(&dir).expect("data dir");
    let mut answered = Vec::new();
    for _ in 0..4 {
        let r = post_raw(
            &server,
            &cast.admin_token,
            "/admin/db/backup",
            None,
            vec![],
            &[],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert!(v.get("path").is_none(), "the answer names a host path: {v}");
        for p in [&dir, &host_path] {
            let shown = p.to_string_lossy();
            assert!(
                !r.text.contains(&*shown),
                "the answer shows {shown}: {}",
                r.text
            );
        }
        let file = v["file"].as_str().expect("file").to_string();
        assert!(file.starts_with("backup-") && file.ends_with(".redb") && !file.contains('/'));
        assert_eq!(v["orders"], 1);
        answered.push(file);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // The two newest are kept, the older ones deleted.
    assert_eq!(backups_in(&dir), answered[2..].to_vec());
}
