//! `ordertrack db …` end to end: stats and backup while the server runs (through the
//! Administrator-only endpoints), check and compact once it stopped, offline backup, restore by
//! pointing `--data-dir` at a backup, and a damaged file failing the check.

mod common;
use common::*;
use ordertrack::testing::wal;
use std::path::Path;
use std::process::{Command, Output};

fn ot(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("ORDERTRACK_JWT_SECRET")
        .env_remove("ORDERTRACK_DATA_DIR")
        .output()
        .expect("run ordertrack")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stats_json(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let d = dir.to_str().unwrap();
    let mut args = vec![
        "db",
        "stats",
        "--json",
        "--data-dir",
        d,
        "--jwt-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    let o = ot(&args);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

#[test]
fn backup_while_serving_check_compact_and_restore() {
    let mut server = Server::start();
    let cast = Cast::new();
    let delivered = order_in(&server, &cast, "Delivered");
    let _placed = order_in(&server, &cast, "Placed");
    let _awaiting = order_in(&server, &cast, "AwaitingPayment");
    let dir = server.dir.clone();
    let d = dir.to_str().unwrap().to_string();
    let url = server.base.clone();

    // Stats while the server holds the file come from the server.
    let v = stats_json(&dir, &["--url", &url]);
    assert_eq!(v["orders"], 3, "{v}");
    assert_eq!(v["ordersByStatus"]["Delivered"], 1, "{v}");
    assert_eq!(v["customers"], 1, "{v}");

    // The maintenance endpoints are for administrators only.
    let r = post_raw(
        &server,
        &cast.customer_token,
        "/admin/db/backup",
        None,
        vec![],
        &[],
    );
    assert_eq!(problem(&r).0, 403);
    let r = send(client().post(server.url("/admin/db/backup")));
    assert_eq!(problem(&r).0, 401);
    let r = get_with(&server, &cast.admin_token, "/admin/db/stats", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["orders"], 3);

    // A backup while serving.
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("backup1");
    let dest_s = dest.to_str().unwrap();
    let o = ot(&[
        "db",
        "backup",
        dest_s,
        "--data-dir",
        &d,
        "--jwt-secret",
        SECRET,
        "--url",
        &url,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("by the running server"),
        "{}",
        text(&o)
    );
    assert!(dest.join("orders.redb").is_file());
    let again = ot(&[
        "db",
        "backup",
        dest_s,
        "--data-dir",
        &d,
        "--jwt-secret",
        SECRET,
        "--url",
        &url,
    ]);
    assert!(
        !again.status.success(),
        "a backup never overwrites: {}",
        text(&again)
    );
    // Nothing is left behind in the server's backups folder.
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("backups")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The backup is a snapshot: an order placed afterwards is not in it.
    let later = place(&server, &cast, "CashOnDelivery");

    // check and compact need the file alone.
    let o = ot(&["db", "check", "--data-dir", &d]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {}", text(&o));
    assert!(
        err.contains("in use by a running server") && err.contains("stop the server"),
        "{err}"
    );
    let o = ot(&["db", "compact", "--data-dir", &d]);
    assert!(!o.status.success(), "{}", text(&o));

    assert_eq!(server.terminate(), Some(0));

    let o = ot(&["db", "check", "--data-dir", &d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("4 orders"),
        "{}",
        text(&o)
    );
    let o = ot(&["db", "check", "--data-dir", dest_s]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ot(&["db", "compact", "--data-dir", &d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("compacted"),
        "{}",
        text(&o)
    );
    assert_eq!(stats_json(&dir, &[])["orders"], 4);
    assert_eq!(stats_json(&dest, &[])["orders"], 3);

    // An offline backup reads the file itself.
    let dest2 = tmp.path().join("backup2");
    let o = ot(&["db", "backup", dest2.to_str().unwrap(), "--data-dir", &d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("from the file"),
        "{}",
        text(&o)
    );
    assert_eq!(stats_json(&dest2, &[])["orders"], 4);

    // Restore: serve the backup directory.
    let restored = Server::spawn_on(free_port(), &dest, &[]);
    let (st, v) = get_json(
        &restored,
        &cast.customer_token,
        &format!("/api/v1/orders/{delivered}"),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["order"]["status"], "Delivered");
    let (st, _) = get_json(
        &restored,
        &cast.customer_token,
        &format!("/api/v1/orders/{later}"),
    );
    assert_eq!(st, 404, "the order placed after the backup is not in it");
    // And the restored server keeps working.
    let id = place(&restored, &cast, "CashOnDelivery");
    assert_eq!(
        act(&restored, &cast.staff_token, id, "accept", Some(eta())).0,
        200
    );
    drop(restored);

    // A missing database is one clear line.
    let o = ot(&[
        "db",
        "check",
        "--data-dir",
        tmp.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no database at"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_damaged_file_fails_the_check() {
    let mut server = Server::start();
    let cast = Cast::new();
    for _ in 0..20 {
        order_in(&server, &cast, "Accepted");
    }
    assert_eq!(server.terminate(), Some(0));
    let d = server.dir.to_str().unwrap().to_string();
    let o = ot(&["db", "check", "--data-dir", &d]);
    assert!(o.status.success(), "{}", text(&o));

    // Overwrite everything past the first pages with garbage.
    let path = server.dir.join("orders.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for (i, b) in bytes.iter_mut().enumerate().take(len).skip(8192) {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    let o = ot(&["db", "check", "--data-dir", &d]);
    assert!(
        !o.status.success(),
        "damage must fail the check: {}",
        text(&o)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim().lines().count(),
        1,
        "{}",
        text(&o)
    );
}

#[test]
fn offline_commands_after_a_kill_see_the_writes_only_the_commit_log_held() {
    // Writes are made durable by the commit log and reach redb's own file at checkpoints (every
    // few seconds under load); a kill right after them leaves them in the log only. The offline
    // commands must apply the log before they look at the file.
    let mut server = Server::start();
    let cast = Cast::new();
    let _delivered = order_in(&server, &cast, "Delivered");
    let _placed = order_in(&server, &cast, "Placed");
    server.kill9();
    let dir = server.dir.clone();
    let d = dir.to_str().unwrap().to_string();
    {
        // The file itself does not have them yet: the log does.
        let db = redb::Database::open(dir.join("orders.redb")).expect("open");
        let (have, id) = (wal::db_log_seq(&db).unwrap(), wal::db_id(&db).unwrap());
        drop(db);
        let mut log = wal::CommitLog::open(&dir.join(wal::LOG_FILE), 0, id).unwrap();
        let pending = log
            .records()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s > have)
            .count();
        assert!(pending > 0, "nothing was left only in the commit log");
    }
    // A read-only command first (it applies the log before opening read-only), then check.
    let v = stats_json(&dir, &[]);
    assert_eq!(v["orders"], 2, "{v}");
    assert_eq!(v["ordersByStatus"]["Delivered"], 1, "{v}");
    let o = ot(&["db", "check", "--data-dir", &d, "--jwt-secret", SECRET]);
    assert!(o.status.success(), "{}", text(&o));
    // The server starts on the same directory and has them too.
    server.restart();
    let v = stats_json(&dir, &["--url", &server.base]);
    assert_eq!(v["orders"], 2, "{v}");
}
