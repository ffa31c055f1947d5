//! `ordertrack db check | compact | backup <DEST> | stats`: maintenance of the data directory,
//! with the same `--data-dir` / `--config` sources as `serve`.
//!
//! redb lets one process hold the file. When no server runs, every command opens the file
//! itself. When a server holds it, `check` and `compact` refuse (they need the file alone), while
//! `backup` and `stats` ask the running server through its Administrator-only endpoints
//! (`POST /admin/db/backup`, `GET /admin/db/stats`): the server copies one read transaction into
//! `<data-dir>/backups/…` and this command moves that file into DEST.

use crate::cli::{BackupArgs, CommonArgs, DbArgs, DbCommand};
use crate::client::{ClientError, Endpoint, Http};
use crate::config::{locate, token_auth, ConfigError};
use crate::store::maintenance::{self, MaintenanceError, DB_FILE};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Maintenance(#[from] MaintenanceError),
    #[error("{0} — stop the server first (backup and stats work while it runs)")]
    NeedsExclusive(MaintenanceError),
    #[error("the running server: {0}")]
    Client(#[from] ClientError),
    #[error("the running server answered {0}")]
    Server(String),
    #[error("cannot mint an Administrator token ({0}); pass --token")]
    Token(String),
    #[error(
        "the server wrote its snapshot {0} into its own data directory's backups/, which is not this --data-dir ({1}): run the command on the server's host with its --data-dir"
    )]
    ElsewhereSnapshot(String, PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Dir(#[from] crate::store::dirsync::DirError),
    #[error("the database file is damaged beyond what redb can read ({0}); restore a backup")]
    Damaged(String),
    #[error("integrity check failed: {0} problem(s)")]
    CheckFailed(u64),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

pub fn run(cmd: DbCommand) -> Result<(), DbError> {
    guarded(|| match cmd {
        DbCommand::Check(a) => check(&a),
        DbCommand::Compact(a) => compact(&a),
        DbCommand::Backup(a) => backup(&a),
        DbCommand::Stats(a) => stats(&a),
    })
}

/// redb can panic on a file that is damaged badly enough (garbage where its structures were).
/// A maintenance command turns that into an error line instead of a backtrace.
fn guarded(f: impl FnOnce() -> Result<(), DbError>) -> Result<(), DbError> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    r.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown failure".into());
        Err(DbError::Damaged(what))
    })
}

fn exclusive(e: MaintenanceError) -> DbError {
    match e {
        MaintenanceError::InUse(_) => DbError::NeedsExclusive(e),
        e => DbError::Maintenance(e),
    }
}

fn check(a: &DbArgs) -> Result<(), DbError> {
    let (dir, _) = locate(&a.common)?;
    let r = maintenance::check(&dir).map_err(exclusive)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        println!(
            "{}: {} orders, {} outbox events; page checksums {}",
            dir.join(DB_FILE).display(),
            r.orders,
            r.events,
            if r.checksums_ok {
                "verified"
            } else {
                "were damaged and have been repaired"
            }
        );
        for p in &r.problems {
            println!("problem: {p}");
        }
        if r.problem_count as usize > r.problems.len() {
            println!("… and {} more", r.problem_count as usize - r.problems.len());
        }
        if r.ok() {
            println!("ok");
        }
    }
    if !r.ok() {
        return Err(DbError::CheckFailed(r.problem_count.max(1)));
    }
    Ok(())
}

fn compact(a: &DbArgs) -> Result<(), DbError> {
    let (dir, _) = locate(&a.common)?;
    let (before, after) = maintenance::compact(&dir).map_err(exclusive)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bytesBefore": before, "bytesAfter": after})
        );
    } else {
        println!(
            "compacted {}: {before} → {after} bytes",
            dir.join(DB_FILE).display()
        );
    }
    Ok(())
}

fn stats(a: &DbArgs) -> Result<(), DbError> {
    let (dir, listen) = locate(&a.common)?;
    let (v, source) = match maintenance::open_read_only(&dir) {
        Ok(db) => {
            let s = maintenance::stats(&db, &dir.join(DB_FILE))?;
            (serde_json::to_value(&s).unwrap_or_default(), "file")
        }
        Err(MaintenanceError::InUse(_)) => {
            let r = online(a, listen, AdminCall::Stats)?;
            (r, "running server")
        }
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!(
        "database: {} (read from the {source})",
        dir.join(DB_FILE).display()
    );
    if let Some(map) = v.as_object() {
        for (k, val) in map {
            match val.as_object() {
                Some(inner) => {
                    println!("{k}:");
                    for (ik, iv) in inner {
                        println!("  {ik}: {iv}");
                    }
                }
                None => println!("{k}: {val}"),
            }
        }
    }
    Ok(())
}

fn backup(a: &BackupArgs) -> Result<(), DbError> {
    let (dir, listen) = locate(&a.db.common)?;
    let target = a.dest.join(DB_FILE);
    if target.exists() {
        return Err(MaintenanceError::Exists(target).into());
    }
    crate::store::dirsync::create_dir_all(&a.dest)?;
    let (info, how) = match maintenance::open_read_only(&dir) {
        Ok(db) => {
            let info = maintenance::snapshot(&db, &target)?;
            (
                serde_json::to_value(&info).unwrap_or_default(),
                "from the file",
            )
        }
        Err(MaintenanceError::InUse(_)) => {
            let v = online(&a.db, listen, AdminCall::Backup)?;
            let file = v["file"].as_str().unwrap_or_default();
            let local = dir.join("backups").join(file);
            if file.is_empty() || file.contains('/') || !local.is_file() {
                return Err(DbError::ElsewhereSnapshot(
                    if file.is_empty() { "?" } else { file }.to_string(),
                    dir,
                ));
            }
            move_file(&local, &target)?;
            (v, "by the running server")
        }
        Err(e) => return Err(e.into()),
    };
    if a.db.json {
        println!("{info}");
    } else {
        println!(
            "backup written to {} ({} orders, {} bytes, taken {how} in {} ms)",
            target.display(),
            info["orders"],
            std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0),
            info["millis"]
        );
        println!(
            "restore: stop the server, then `ordertrack serve --data-dir {}` (or copy {} into the data directory and delete the {} there)",
            a.dest.display(),
            DB_FILE,
            crate::store::wal::LOG_FILE
        );
    }
    Ok(())
}

/// Renames (or, across file systems, copies, syncs and removes) `from` to `to`.
fn move_file(from: &Path, to: &Path) -> Result<(), DbError> {
    let io = |e| DbError::Io(to.into(), e);
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to).map_err(io)?;
        std::fs::File::open(to)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        let _ = std::fs::remove_file(from);
    }
    crate::store::dirsync::sync_parent(to)?;
    Ok(())
}

/// The admin requests the online commands send.
enum AdminCall {
    Stats,
    Backup,
}

/// Sends one admin request to the running server and returns its JSON answer.
fn online(a: &DbArgs, listen: SocketAddr, call: AdminCall) -> Result<serde_json::Value, DbError> {
    let ep = match &a.url {
        Some(u) => Endpoint::parse(u, a.cacert.as_deref())?,
        None if crate::config::serves_tls(&a.common)? => {
            Endpoint::local(listen).with_tls(a.cacert.as_deref())?
        }
        None => Endpoint::local(listen),
    };
    let token = match &a.token {
        Some(t) => t.clone(),
        None => admin_token(&a.common)?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DbError::Runtime)?;
    let reply = rt.block_on(async {
        let mut http = Http::new(&ep);
        match call {
            AdminCall::Stats => http.get("/admin/db/stats", Some(&token), &[]).await,
            AdminCall::Backup => {
                http.send(
                    hyper::Method::POST,
                    "/admin/db/backup",
                    Some(&token),
                    &[],
                    None,
                )
                .await
            }
        }
    })?;
    if reply.status != 200 {
        return Err(DbError::Server(reply.describe()));
    }
    Ok(reply.json())
}

fn admin_token(c: &CommonArgs) -> Result<String, DbError> {
    let auth = token_auth(c)?;
    let minter = crate::auth::TokenMinter::new(&auth).map_err(|e| DbError::Token(e.to_string()))?;
    minter
        .mint(uuid::Uuid::new_v4(), &["Administrator".into()], &[], 300)
        .map_err(|e| DbError::Token(e.to_string()))
}
