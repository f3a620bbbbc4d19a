//! A primary demoted without dropping a connection: a `Db` on a two-host URL writes to the
//! primary of a `.ci/pg-cluster` pair, which is then made to refuse writes
//! (`default_transaction_read_only = on`, reloaded: its sessions stay up and each write comes
//! back read-only), and its standby is promoted. The `Db`'s own refused writes start the search
//! for a new primary (no connection broke, so nothing else would), and writes land on the
//! promoted host within a second of it accepting writes; nothing lands on the old one.
//!
//! The test demotes and promotes the pair it runs on, so it starts a pair of its own with
//! `.ci/pg-cluster` (ports `SQLREPO_READ_ONLY_PORT` and the next, default 56600) and stops it
//! when done, and never touches the servers other suites share. Ignored by default;
//! `-- --include-ignored` runs it, and then a missing PostgreSQL is a failure.

#![cfg(feature = "postgres")]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlrepo::{Db, Error, NewItem};
use sqlx::{Connection, PgConnection};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/pg-cluster")
}

/// A primary and its streaming replica of this test's own, stopped (and their directory
/// deleted) when dropped, whatever the test did to them.
struct Pair {
    dir: PathBuf,
    primary: String,
    replica: String,
    _parent: tempfile::TempDir,
}

impl Pair {
    fn start() -> Pair {
        let port = std::env::var("SQLREPO_READ_ONLY_PORT").unwrap_or_else(|_| "56600".into());
        let parent = tempfile::tempdir().unwrap();
        // The servers run as the `postgres` user, which must reach the directory.
        let mut permissions = std::fs::metadata(parent.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o711);
        std::fs::set_permissions(parent.path(), permissions).unwrap();
        let dir = parent.path().join("pair");
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .arg(&port)
            .output()
            .expect("run .ci/pg-cluster");
        assert!(
            out.status.success(),
            "could not start a PostgreSQL pair (this test needs PostgreSQL 15 -- the script \
             installs it as root -- and ports {port} and the next free):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let export = |name: &str| {
            stdout
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
                .trim_matches(|c| c == '\'' || c == '"')
                .to_owned()
        };
        Pair {
            primary: export("SQLREPO_PG_URL"),
            replica: export("SQLREPO_PG_REPLICA_URL"),
            dir,
            _parent: parent,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
    }
}

/// `host:port` of a one-host URL `postgres://user@host:port/name`.
fn host_of(url: &str) -> &str {
    url.split_once('@').unwrap().1.split_once('/').unwrap().0
}

/// `pg_ctl` of the newest installed PostgreSQL, as the `postgres` user when we are root.
fn pg_ctl(args: &[&str]) -> std::process::Output {
    let mut bindirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server programs in /usr/lib/postgresql")
        .map(|entry| entry.unwrap().path().join("bin"))
        .collect();
    bindirs.sort();
    let program = bindirs
        .pop()
        .expect("a PostgreSQL bin directory")
        .join("pg_ctl");
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    let mut command = if is_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(&program);
        command
    } else {
        Command::new(&program)
    };
    command.args(args).output().unwrap()
}

/// Runs one statement on the server of `url` as the admin.
async fn admin(url: &str, sql: &'static str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// Items named `name` on the server of `url`, asked of it directly.
async fn items_named(url: &str, name: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE name = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (it starts, demotes and promotes a pair of its own); run with -- --include-ignored"]
async fn writes_refused_as_read_only_move_the_db_to_the_promoted_standby() {
    let pair = Pair::start();
    let url = format!(
        "postgres://postgres@{},{}/postgres?target_session_attrs=read-write&connect_timeout=2",
        host_of(&pair.primary),
        host_of(&pair.replica)
    );
    let db = Db::connect(&url).await.unwrap();
    let items = db.items();
    items
        .create(&NewItem::new("before", json!({})))
        .await
        .unwrap();
    assert_eq!(items_named(&pair.primary, "before").await, 1);

    // The primary refuses writes from now on, on the sessions it has open too: nothing
    // breaks a connection, so only the refusals themselves can tell the Db.
    // Two statements: ALTER SYSTEM may not run in the implicit transaction of a list.
    admin(
        &pair.primary,
        "ALTER SYSTEM SET default_transaction_read_only = on",
    )
    .await;
    admin(&pair.primary, "SELECT pg_reload_conf()").await;
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match items.create(&NewItem::new("refused", json!({}))).await {
            Err(Error::ReadOnly(_) | Error::Unavailable(_)) => refused += 1,
            other => {
                // The reload reaches an idle session at its next statement; until then a
                // write may still land, on the old primary (which still is one).
                assert!(other.is_ok(), "{other:?}");
                assert!(
                    Instant::now() < deadline,
                    "the primary never refused a write"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        if refused >= 3 {
            break;
        }
    }

    let replica_dir = pair.dir.join("replica");
    let out = pg_ctl(&[
        "promote",
        "-w",
        "-t",
        "60",
        "-D",
        replica_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "pg_ctl promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `promote -w` returns once the server accepts writes.
    let promoted = Instant::now();
    let mut errors = Vec::new();
    let id = loop {
        match items.create(&NewItem::new("after", json!({}))).await {
            Ok(id) => break id,
            Err(err) => {
                assert!(
                    matches!(err, Error::ReadOnly(_) | Error::Unavailable(_)),
                    "an unexpected error while the primary moved: {err:?}"
                );
                errors.push(err);
            }
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "no write landed 10 s after the promotion: {:?}",
            errors.last()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let resumed = promoted.elapsed();
    println!(
        "{refused} writes refused before the promotion; writes resumed {:.3} s after it, {} \
         refused meanwhile",
        resumed.as_secs_f64(),
        errors.len()
    );
    assert!(
        resumed < Duration::from_secs(1),
        "writes resumed {resumed:?} after the standby accepted writes"
    );
    // On the promoted host, not the demoted one, and read back through the same Db.
    assert_eq!(items_named(&pair.replica, "after").await, 1);
    assert_eq!(items_named(&pair.primary, "after").await, 0);
    assert_eq!(items.get(id).await.unwrap().unwrap().name, "after");
    db.close().await;
}
