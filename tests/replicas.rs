//! PostgreSQL read replicas (cargo feature `postgres`, servers from `SQLREPO_PG_URL` and
//! `SQLREPO_PG_REPLICA_URL`): a `Db` opened with `connect_replicated` reads its own writes
//! right after they return, every time, although the replica is asynchronous; and a replica
//! that is down is skipped within a bounded time instead of stalling reads.

mod common;

use std::time::{Duration, Instant};

use common::backend::{Backend, TestDb, pg};
use futures_util::TryStreamExt;
use serde_json::json;
use sqlrepo::{Db, ItemPatch, ItemStatus, NewAccount, NewItem, Transfer};

/// Rounds of write-then-read; each round makes several writes, each read at once.
const ROUNDS: i64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL and a replica: set SQLREPO_PG_URL and SQLREPO_PG_REPLICA_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn a_replicated_db_reads_every_write_right_after_it_returns() {
    let Some(db) = TestDb::new(Backend::Replicated).await else {
        return;
    };
    let open = |balance_cents| NewAccount {
        user_id: None,
        balance_cents,
    };
    let a = db.accounts().open(&open(ROUNDS * 10)).await.unwrap();
    // Read at once: the account was written by this Db a moment ago.
    assert_eq!(
        db.accounts().get(a).await.unwrap().map(|x| x.balance_cents),
        Some(ROUNDS * 10)
    );
    let b = db.accounts().open(&open(0)).await.unwrap();
    for round in 1..=ROUNDS {
        // create, then get
        let name = format!("item-{round}");
        let id = db
            .items()
            .create(&NewItem::new(&name, json!({"round": round})))
            .await
            .unwrap();
        let got = db.items().get(id).await.unwrap();
        assert_eq!(
            got.as_ref().map(|i| &i.name),
            Some(&name),
            "round {round}: a created item must be read at once"
        );

        // update, then get
        let patch = ItemPatch {
            data: Some(json!({"round": round, "updated": true})),
            status: Some(ItemStatus::Inactive),
            ..ItemPatch::default()
        };
        assert!(db.items().update(id, &patch).await.unwrap());
        let got = db.items().get(id).await.unwrap().unwrap();
        assert_eq!(
            (got.data, got.status),
            (
                json!({"round": round, "updated": true}),
                ItemStatus::Inactive
            ),
            "round {round}: an update must be read at once"
        );

        // transfer, then get and total_balance
        db.accounts()
            .transfer(&Transfer::new(a, b, 10).with_key(format!("ryw-{round}")))
            .await
            .unwrap();
        let (from, to) = (
            db.accounts().get(a).await.unwrap().unwrap().balance_cents,
            db.accounts().get(b).await.unwrap().unwrap().balance_cents,
        );
        assert_eq!(
            (from, to),
            // b also got a deposit of 1 in each earlier round's transaction.
            (ROUNDS * 10 - round * 10, round * 10 + round - 1),
            "round {round}: a transfer must be read at once"
        );
        assert_eq!(
            db.accounts().total_balance().await.unwrap(),
            ROUNDS * 10 + round - 1
        );

        // a transaction's commit, then reads
        let tx = db.begin().await.unwrap();
        let in_tx = tx
            .items()
            .create(&NewItem::new(format!("tx-{round}"), json!(round)))
            .await
            .unwrap();
        tx.accounts().deposit(b, 1).await.unwrap();
        tx.commit().await.unwrap();
        assert!(
            db.items().get(in_tx).await.unwrap().is_some(),
            "round {round}: a committed transaction must be read at once"
        );
        assert_eq!(
            db.accounts().get(b).await.unwrap().unwrap().balance_cents,
            round * 11,
            "round {round}: a deposit in a committed transaction must be read at once"
        );
        assert_eq!(db.items().count().await.unwrap(), round * 2);

        // delete, then get
        if round % 10 == 0 {
            assert!(db.items().delete(in_tx).await.unwrap());
            assert!(db.items().get(in_tx).await.unwrap().is_none());
            db.items()
                .create(&NewItem::new(format!("tx-{round}-again"), json!(round)))
                .await
                .unwrap();
        }
    }
    // A clone is the same Db: it reads what the original wrote, and the other way round.
    let clone = db.db.clone();
    let id = clone
        .items()
        .create(&NewItem::new("from the clone", json!(1)))
        .await
        .unwrap();
    assert!(db.items().get(id).await.unwrap().is_some());
    let streamed: Vec<_> = db.items().stream().try_collect().await.unwrap();
    assert_eq!(streamed.len() as i64, ROUNDS * 2 + 1);
}

/// Reads through `db` that must all answer: a get, a count, a stream and a total.
async fn some_reads(db: &Db, id: i64) {
    for _ in 0..3 {
        assert_eq!(
            db.items().get(id).await.unwrap().map(|i| i.name),
            Some("kept".to_owned())
        );
        assert_eq!(db.items().count().await.unwrap(), 1);
        let all: Vec<_> = db.items().stream().try_collect().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(db.accounts().total_balance().await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and a replica: set SQLREPO_PG_URL and SQLREPO_PG_REPLICA_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn a_replica_that_is_down_is_skipped_and_reads_answer_promptly() {
    let Some(database) = pg::create(Backend::Replicated).await else {
        return;
    };
    // Nothing listens on port 1: connections are refused at once. Its database name is ours.
    let down = common::backend::with_database("postgres://postgres@127.0.0.1:1/x", "none");
    let started = Instant::now();
    let db = Db::connect_replicated(&database.url, &[down.as_str()])
        .await
        .expect("a replica that is down must not stop the Db from opening");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "connect_replicated took {:?} with a replica down",
        started.elapsed()
    );
    let id = db
        .items()
        .create(&NewItem::new("kept", json!({})))
        .await
        .unwrap();
    let started = Instant::now();
    some_reads(&db, id).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "12 reads took {took:?} with the only replica down"
    );

    // A down replica beside a live one: reads answer too (from the live one or the primary).
    let live = database.replica_url.clone().expect("a replica URL");
    let db = Db::connect_replicated(&database.url, &[down.as_str(), live.as_str()])
        .await
        .unwrap();
    let started = Instant::now();
    some_reads(&db, id).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "12 reads took {took:?} with one of two replicas down"
    );
    db.close().await;
}
