//! Transactions the caller owns: several repositories, all or nothing, on one connection.

mod common;

use common::{TestDb, backend_test, user};
use sqlrepo::{Error, NewAccount, NewItem, NewOrder, NewUser, Transfer};

async fn buyer_and_shop(db: &sqlrepo::Db, wallet_cents: i64) -> (i64, i64, i64) {
    let buyer = user(db, "ann@example.com", "Ann").await;
    let wallet = db
        .accounts()
        .open(&NewAccount {
            user_id: Some(buyer),
            balance_cents: wallet_cents,
        })
        .await
        .unwrap();
    let shop = db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await
        .unwrap();
    (buyer, wallet, shop)
}

backend_test!(an_order_and_its_payment_commit_together);
async fn an_order_and_its_payment_commit_together(db: TestDb) {
    let (buyer, wallet, shop) = buyer_and_shop(&db, 5_000).await;
    let tx = db.begin().await.unwrap();
    let order = tx
        .orders()
        .create(&NewOrder::new(buyer, 1_250))
        .await
        .unwrap();
    tx.accounts()
        .transfer(&Transfer::new(wallet, shop, 1_250))
        .await
        .unwrap();
    // Inside the transaction its own writes are visible.
    assert_eq!(tx.dashboard(buyer).await.unwrap().stats.total_cents, 1_250);
    tx.commit().await.unwrap();
    assert!(db.orders().get(order).await.unwrap().is_some());
    assert_eq!(
        db.accounts()
            .get(shop)
            .await
            .unwrap()
            .unwrap()
            .balance_cents,
        1_250
    );
    assert_eq!(
        db.accounts()
            .get(wallet)
            .await
            .unwrap()
            .unwrap()
            .balance_cents,
        3_750
    );
}

backend_test!(a_failure_in_the_second_repository_leaves_no_trace_of_the_first);
async fn a_failure_in_the_second_repository_leaves_no_trace_of_the_first(db: TestDb) {
    let (buyer, wallet, shop) = buyer_and_shop(&db, 1_000).await;
    let before = db.snapshot().await;
    let tx = db.begin().await.unwrap();
    tx.orders()
        .create(&NewOrder::new(buyer, 5_000))
        .await
        .unwrap();
    let err = tx
        .accounts()
        .transfer(&Transfer::new(wallet, shop, 5_000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InsufficientFunds {
                balance_cents: 1_000,
                ..
            }
        ),
        "{err:?}"
    );
    drop(tx); // not committed: rolled back
    assert_eq!(db.snapshot().await, before);
    // The writer is free again.
    db.items()
        .create(&NewItem::new("after", serde_json::json!({})))
        .await
        .unwrap();
}

backend_test!(an_explicit_rollback_undoes_every_repository);
async fn an_explicit_rollback_undoes_every_repository(db: TestDb) {
    let (buyer, wallet, shop) = buyer_and_shop(&db, 1_000).await;
    let before = db.snapshot().await;
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("x", serde_json::json!(1)))
        .await
        .unwrap();
    tx.orders().create(&NewOrder::new(buyer, 10)).await.unwrap();
    tx.accounts()
        .transfer(&Transfer::new(wallet, shop, 10))
        .await
        .unwrap();
    tx.accounts().deposit(shop, 5).await.unwrap();
    tx.users()
        .create(&NewUser::new("bob@example.com", "Bob"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.snapshot().await, before);
}

backend_test!(uncommitted_writes_are_invisible_to_readers_until_commit);
async fn uncommitted_writes_are_invisible_to_readers_until_commit(db: TestDb) {
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("pending", serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(tx.items().count().await.unwrap(), 1);
    assert_eq!(
        db.items().count().await.unwrap(),
        0,
        "readers see the last commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(db.items().count().await.unwrap(), 1);
}

backend_test!(a_failed_batch_inside_a_transaction_rolls_back_only_itself);
async fn a_failed_batch_inside_a_transaction_rolls_back_only_itself(db: TestDb) {
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("kept", serde_json::json!({})))
        .await
        .unwrap();
    let batch: Vec<NewItem> = (0..60_000)
        .map(|i| {
            NewItem::new(
                if i == 59_000 {
                    "kept".into()
                } else {
                    format!("n{i}")
                },
                serde_json::json!(i),
            )
        })
        .collect();
    assert!(matches!(
        tx.items().insert_many(&batch).await.unwrap_err(),
        Error::Duplicate { .. }
    ));
    assert_eq!(tx.items().count().await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(db.items().count().await.unwrap(), 1);
}

backend_test!(repositories_of_a_finished_transaction_refuse_work);
async fn repositories_of_a_finished_transaction_refuse_work(db: TestDb) {
    let tx = db.begin().await.unwrap();
    let items = tx.items();
    tx.commit().await.unwrap();
    assert!(matches!(
        items
            .create(&NewItem::new("late", serde_json::json!({})))
            .await
            .unwrap_err(),
        Error::TxFinished
    ));
    assert_eq!(db.items().count().await.unwrap(), 0);
}

backend_test!(other_writes_wait_for_an_open_transaction_and_then_proceed);
async fn other_writes_wait_for_an_open_transaction_and_then_proceed(db: TestDb) {
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("first", serde_json::json!({})))
        .await
        .unwrap();
    let writer = {
        let db = db.db.clone();
        tokio::spawn(async move {
            db.items()
                .create(&NewItem::new("second", serde_json::json!({})))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // SQLite has one writer, so the write queues behind the transaction; PostgreSQL locks
    // rows, not the database, so there it may land beside it (both must then commit).
    if !db.backend.is_postgres() {
        assert!(
            !writer.is_finished(),
            "a write must wait for the open transaction"
        );
    }
    tx.commit().await.unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(db.items().count().await.unwrap(), 2);
}

// SQLite only: an in-memory database.
#[tokio::test]
async fn an_in_memory_db_reads_beside_an_open_transaction_without_waiting() {
    let db = sqlrepo::Db::in_memory().await.unwrap();
    let other = sqlrepo::Db::in_memory().await.unwrap();
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("pending", serde_json::json!({})))
        .await
        .unwrap();
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), db.items().count()).await;
    assert_eq!(
        read.expect("a read must not wait for the transaction")
            .unwrap(),
        0
    );
    tx.commit().await.unwrap();
    assert_eq!(db.items().count().await.unwrap(), 1);
    // Each in-memory database is private.
    assert_eq!(other.items().count().await.unwrap(), 0);
}

// SQLite only: its busy timeout on the one write lock (PostgreSQL has no database lock).
#[tokio::test]
async fn a_write_behind_a_transaction_held_past_the_busy_timeout_is_busy() {
    let db = common::fresh_db_with(|options| {
        options.busy_timeout(std::time::Duration::from_millis(100))
    })
    .await;
    let tx = db.begin().await.unwrap();
    let started = std::time::Instant::now();
    let err = db
        .items()
        .create(&NewItem::new("blocked", serde_json::json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Reads do not wait for the writer.
    assert_eq!(db.items().count().await.unwrap(), 0);
    tx.commit().await.unwrap();
    db.items()
        .create(&NewItem::new("after", serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(db.items().count().await.unwrap(), 1);
}
