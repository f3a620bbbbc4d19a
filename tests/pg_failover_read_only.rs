//! A primary demoted without dropping a connection: a `Db` on a two-host URL writes to the
//! primary of a `.ci/pg-cluster` pair, which is then made to refuse writes
//! (`default_transaction_read_only = on`, reloaded: its sessions stay up and each write comes
//! back read-only), and its standby is promoted. The `Db`'s own refused writes start the search
//! for a new primary (no connection broke, so nothing else would), and writes land on the
//! promoted host within a second of it accepting writes; nothing lands on the old one.
//!
//! The test demotes and promotes the pair it runs on, so it starts a pair of its own with
//! `.ci/pg-cluster` (ports `SQLREPO_READ_ONLY_PORT` and the next, default 26600) and stops it
//! when done, and never touches the servers other suites share. Ignored by default;
//! `-- --include-ignored` runs it, and then a missing PostgreSQL is a failure.

#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use sqlrepo::{Db, Error, NewItem};
use sqlx::{Connection, PgConnection};

use common::pg_pair::Pair;
use common::pg_server;

/// `host:port` of a one-host URL `postgres://user@host:port/name`.
fn host_of(url: &str) -> &str {
    url.split_once('@').unwrap().1.split_once('/').unwrap().0
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
    let pair = Pair::start("SQLREPO_READ_ONLY_PORT", "26600");
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
    pg_server::run(
        "pg_ctl",
        [
            "promote",
            "-w",
            "-t",
            "60",
            "-D",
            replica_dir.to_str().unwrap(),
        ],
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
