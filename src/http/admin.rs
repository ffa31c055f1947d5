//! Administrator-only maintenance endpoints of a running server, used by `ordertrack db` while
//! the server holds the database file: `POST /admin/db/backup` writes a consistent snapshot
//! (one read transaction) to `<data-dir>/backups/`, `GET /admin/db/stats` answers counts and
//! sizes. The server picks the snapshot's path; a request cannot name one.

use super::problem::Problem;
use super::{json_response, method_not_allowed, not_found, principal, App, Credentials, Resp};
use crate::store::maintenance;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One backup at a time: each holds a read transaction that pins pages while it copies.
static BACKUP_RUNNING: AtomicBool = AtomicBool::new(false);

struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        BACKUP_RUNNING.store(false, Ordering::Release);
    }
}

pub async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    rest: &[&str],
) -> (&'static str, Result<Resp, Problem>) {
    let m = req.method();
    let r = match rest {
        ["db", "backup"] if m != Method::POST => Err(method_not_allowed("POST")),
        ["db", "stats"] if m != Method::GET => Err(method_not_allowed("GET")),
        ["db", "backup"] => match admin(app, &req).await {
            Ok(()) => backup(app).await,
            Err(p) => Err(p),
        },
        ["db", "stats"] => match admin(app, &req).await {
            Ok(()) => stats(app).await,
            Err(p) => Err(p),
        },
        _ => Err(not_found()),
    };
    ("admin", r)
}

async fn admin(app: &App, req: &Request<Incoming>) -> Result<(), Problem> {
    let p = principal(app, req, Credentials::HeaderOnly).await?;
    if !p.administrator {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "Admin.Forbidden",
            "Only administrators may use maintenance endpoints.",
        ));
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn failed(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "maintenance request failed");
    Problem::internal()
}

async fn backup(app: &Arc<App>) -> Result<Resp, Problem> {
    if BACKUP_RUNNING.swap(true, Ordering::AcqRel) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "Backup.InProgress",
            "Another backup is being written; try again when it is done.",
        ));
    }
    let guard = Running;
    let store = app.store.clone();
    let dir = store
        .path()
        .parent()
        .map(|p| p.join("backups"))
        .unwrap_or_else(|| "backups".into());
    let name = format!(
        "backup-{}-{:08x}.redb",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    );
    let dest = dir.join(&name);
    let keep = app.keep_backups;
    let span = tracing::info_span!("backup", file = %name);
    let info = tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        let _guard = guard;
        crate::store::dirsync::create_dir_all(&dir).map_err(failed)?;
        let db = maintenance::handle(&store).map_err(failed)?;
        let info = maintenance::snapshot(db.as_ref(), &dest).map_err(failed)?;
        tracing::info!(
            orders = info.orders,
            bytes = info.bytes,
            millis = info.millis,
            "backup written"
        );
        prune_backups(&dir, keep);
        Ok::<_, Problem>(info)
    })
    .await
    .map_err(failed)??;
    // The backup's name, never the host path: the caller knows the data directory it asked.
    let v = serde_json::json!({
        "file": name,
        "bytes": info.bytes,
        "orders": info.orders,
        "rows": info.rows,
        "millis": info.millis,
    });
    Ok(json_response(StatusCode::OK, to_json(&v)))
}

/// Keeps the newest `keep` backups in `dir` (names start with their UTC time, so name order
/// is age order) and deletes the rest. A backup that `ordertrack db backup` is about to move
/// is the newest, so it is never the one deleted.
fn prune_backups(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("backup-") && n.ends_with(".redb"))
        .collect();
    names.sort_unstable();
    let excess = names.len().saturating_sub(keep);
    for old in &names[..excess] {
        match std::fs::remove_file(dir.join(old)) {
            Ok(()) => tracing::info!(file = %old, "old backup deleted"),
            Err(e) => tracing::warn!(file = %old, error = %e, "could not delete an old backup"),
        }
    }
}

async fn stats(app: &Arc<App>) -> Result<Resp, Problem> {
    let store = app.store.clone();
    let s = tokio::task::spawn_blocking(move || {
        let db = maintenance::handle(&store).map_err(failed)?;
        maintenance::stats(db.as_ref(), store.path()).map_err(failed)
    })
    .await
    .map_err(failed)??;
    Ok(json_response(StatusCode::OK, to_json(&s)))
}
