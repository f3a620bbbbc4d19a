//! A replicated `Db` under what replicas do in production (cargo feature `postgres`):
//! asynchronous commit on the primary, a replica whose processes stop answering (`SIGSTOP`),
//! a replica shut down (`pg_ctl stop`).
//!
//! They need the cluster of `.ci/pg-cluster` (`SQLREPO_PG_URL`, `SQLREPO_PG_REPLICA_URL`,
//! `SQLREPO_PG_DATA`) and the right to signal and stop its replica (root, or the `postgres`
//! user): ignored by default, run with `-- --include-ignored`, where anything missing fails
//! them. The tests of this file take turns (one lock), since two of them stop the replica.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::backend::{Backend, PgDatabase, pg};
use serde_json::json;
use sqlrepo::{Db, ItemPatch, NewItem};
use sqlx::{Connection, PgConnection};

/// One test at a time: some of them stop the replica the others read.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh database on the primary and its URL on the replica; fails without a cluster.
async fn database() -> PgDatabase {
    for var in [
        "SQLREPO_PG_URL",
        "SQLREPO_PG_REPLICA_URL",
        "SQLREPO_PG_DATA",
    ] {
        assert!(
            std::env::var(var).is_ok(),
            "{var} is not set: start a cluster with .ci/pg-cluster start DIR PORT and export what it prints"
        );
    }
    pg::create(Backend::Replicated)
        .await
        .expect("a PostgreSQL test database")
}

/// Transactions the replica has run on `database` (a standby counts its own).
async fn replica_transactions(replica_url: &str) -> i64 {
    let mut conn = PgConnection::connect(replica_url).await.unwrap();
    let count: i64 = sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    count
}

/// The data an item holds after round `round`.
fn round_data(round: i64) -> serde_json::Value {
    json!({ "round": round })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the PostgreSQL cluster of .ci/pg-cluster (SQLREPO_PG_URL, SQLREPO_PG_REPLICA_URL); run with -- --include-ignored"]
async fn asynchronous_commit_still_reads_its_own_writes() {
    let _turn = TURN.lock().await;
    let database = database().await;
    let replica_url = database.replica_url.clone().unwrap();
    let name = database.url.rsplit('/').next().unwrap().to_owned();
    let mut admin = PgConnection::connect(&database.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();

    let db = Db::connect_replicated(&database.url, &[&replica_url])
        .await
        .unwrap();
    let mut conn = db.handle().writer().await.unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(conn.postgres().unwrap())
        .await
        .unwrap();
    assert_eq!(setting, "off", "the Db's sessions commit asynchronously");
    drop(conn);

    let id = db
        .items()
        .create(&NewItem::new("counter", round_data(0)))
        .await
        .unwrap();
    let before = replica_transactions(&replica_url).await;
    let (rounds, mut stale) = (300, Vec::new());
    for round in 1..=rounds {
        let patch = ItemPatch {
            data: Some(round_data(round)),
            ..ItemPatch::default()
        };
        assert!(db.items().update(id, &patch).await.unwrap());
        for get in 0..3 {
            let seen = db.items().get(id).await.unwrap().unwrap().data;
            if seen != round_data(round) {
                stale.push((round, get, seen));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let on_replica = replica_transactions(&replica_url).await - before;
    db.close().await;
    assert!(
        stale.is_empty(),
        "{} stale reads of {}: {:?}",
        stale.len(),
        rounds * 3,
        &stale[..stale.len().min(5)]
    );
    // The gets 5 and 10 ms after a write are the ones a caught-up replica serves: without
    // them on the replica, this test would prove nothing.
    assert!(
        on_replica >= rounds,
        "only {on_replica} transactions ran on the replica"
    );
}
