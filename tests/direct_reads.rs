//! Point gets answered on the caller's thread (`DbOptions::direct_reads`, on by default), on a
//! real SQLite file: the same answers and errors as the ordinary read for every row, writes
//! seen as soon as they are committed, no snapshot left to stall a checkpoint, and a task that
//! loops over gets still lets other tasks run.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{SqliteDb, fresh_db, open_account, raw, user};
use serde_json::json;
use sqlrepo::{Db, DbOptions, Error, ItemPatch, ItemStatus, NewAccount, NewItem, NewOrder};

async fn open(path: &Path, direct: bool) -> Db {
    Db::open_with(DbOptions::new(path).direct_reads(direct))
        .await
        .expect("open")
}

/// A fresh database (direct reads on, the default) holding one item named "a" with `data`,
/// and that item's id.
async fn one_item(data: serde_json::Value) -> (SqliteDb, i64) {
    let db = fresh_db().await;
    let id = db.items().create(&NewItem::new("a", data)).await.unwrap();
    (db, id)
}

/// One read connection, which a test holds: a get that needed it would wait out the short
/// busy timeout and fail with `Busy`.
fn one_reader(path: &Path, direct: bool) -> DbOptions {
    held_reader(DbOptions::new(path)).direct_reads(direct)
}

/// `options` with [`one_reader`]'s one read connection and short busy timeout.
fn held_reader(options: DbOptions) -> DbOptions {
    options.readers(1).busy_timeout(Duration::from_millis(200))
}

#[tokio::test]
async fn a_get_needs_no_reader_connection_and_gives_what_the_ordinary_read_gives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    let direct = Db::open_with(one_reader(&path, true)).await.unwrap();
    let id = direct
        .items()
        .create(&NewItem::new("lamp", json!({"watts": 40})))
        .await
        .unwrap();
    let held = direct.handle().reader().await.unwrap();
    let item = direct.items().get(id).await.unwrap().unwrap();
    assert_eq!((item.id, item.name.as_str()), (id, "lamp"));
    assert_eq!(item.data, json!({"watts": 40}));
    assert!(direct.items().get(id + 1).await.unwrap().is_none());
    // No other thread is waited for: the get yields once to the runtime (as a read on another
    // thread would, so that a task looping over gets lets others run), and is done when polled
    // again, with no other thread having done anything meanwhile.
    let mut get = std::pin::pin!(direct.items().get(id));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(get.as_mut().poll(&mut cx).is_pending(), "yields once");
    match get.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(answer) => assert_eq!(answer.unwrap().as_ref(), Some(&item)),
        std::task::Poll::Pending => panic!("a direct get waited for something"),
    }
    drop(held);

    // The ordinary read waits for the reader, and gives the same item once it is free.
    let ordinary = Db::open_with(one_reader(&path, false)).await.unwrap();
    let held = ordinary.handle().reader().await.unwrap();
    assert!(matches!(ordinary.items().get(id).await, Err(Error::Busy)));
    drop(held);
    assert_eq!(ordinary.items().get(id).await.unwrap(), Some(item));
}

#[tokio::test]
async fn users_orders_and_accounts_get_without_a_reader_connection_and_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables.db");
    let direct = Db::open_with(one_reader(&path, true)).await.unwrap();
    let user = user(&direct, "ann@example.com", "Ann").await;
    let order = direct
        .orders()
        .create(&NewOrder {
            user_id: user,
            total_cents: 1234,
        })
        .await
        .unwrap();
    let owned = direct
        .accounts()
        .open(&NewAccount {
            user_id: Some(user),
            balance_cents: 500,
        })
        .await
        .unwrap();
    let unowned = open_account(&direct, 0).await;

    let held = direct.handle().reader().await.unwrap();
    let got_user = direct.users().get(user).await.unwrap().unwrap();
    let got_order = direct.orders().get(order).await.unwrap().unwrap();
    let got_owned = direct.accounts().get(owned).await.unwrap().unwrap();
    let got_unowned = direct.accounts().get(unowned).await.unwrap().unwrap();
    assert_eq!(
        (got_user.email.as_str(), got_user.name.as_str()),
        ("ann@example.com", "Ann")
    );
    assert_eq!((got_order.user_id, got_order.total_cents), (user, 1234));
    assert_eq!(
        (got_owned.user_id, got_owned.balance_cents),
        (Some(user), 500)
    );
    assert_eq!((got_unowned.user_id, got_unowned.balance_cents), (None, 0));
    assert!(direct.users().get(user + 10).await.unwrap().is_none());
    assert!(direct.orders().get(order + 10).await.unwrap().is_none());
    assert!(direct.accounts().get(unowned + 10).await.unwrap().is_none());
    drop(held);

    let ordinary = Db::open_with(one_reader(&path, false)).await.unwrap();
    let held = ordinary.handle().reader().await.unwrap();
    assert!(matches!(ordinary.users().get(user).await, Err(Error::Busy)));
    drop(held);
    assert_eq!(ordinary.users().get(user).await.unwrap(), Some(got_user));
    assert_eq!(ordinary.orders().get(order).await.unwrap(), Some(got_order));
    assert_eq!(
        ordinary.accounts().get(owned).await.unwrap(),
        Some(got_owned)
    );
    assert_eq!(
        ordinary.accounts().get(unowned).await.unwrap(),
        Some(got_unowned)
    );
}

#[tokio::test]
async fn a_dashboard_needs_no_reader_connection_and_reads_as_the_ordinary_read() {
    let direct = common::fresh_db_with(held_reader).await;
    let ann = user(&direct, "ann@example.com", "Ann").await;
    for total_cents in [100, 250, 75] {
        direct
            .orders()
            .create(&NewOrder {
                user_id: ann,
                total_cents,
            })
            .await
            .unwrap();
    }

    let held = direct.handle().reader().await.unwrap();
    let got = direct.dashboard(ann).await.unwrap();
    assert_eq!(got.user.email, "ann@example.com");
    assert_eq!((got.stats.count, got.stats.total_cents), (3, 425));
    let totals: Vec<i64> = got.recent_orders.iter().map(|o| o.total_cents).collect();
    assert_eq!(totals, [75, 250, 100], "newest first");
    assert!(matches!(
        direct.dashboard(ann + 10).await,
        Err(Error::NotFound { entity: "user", id }) if id == ann + 10
    ));
    drop(held);

    let ordinary = Db::open_with(one_reader(&direct.path, false))
        .await
        .unwrap();
    let held = ordinary.handle().reader().await.unwrap();
    assert!(matches!(ordinary.dashboard(ann).await, Err(Error::Busy)));
    drop(held);
    assert_eq!(ordinary.dashboard(ann).await.unwrap(), got);
    assert!(matches!(
        ordinary.dashboard(ann + 10).await,
        Err(Error::NotFound { entity: "user", id }) if id == ann + 10
    ));
}

#[tokio::test]
async fn a_read_past_its_step_budget_is_left_to_a_reader_and_still_answers() {
    let db = common::fresh_db_with(held_reader).await;
    let few = user(&db, "few@example.com", "Few").await;
    let many = user(&db, "many@example.com", "Many").await;
    db.orders()
        .create(&NewOrder {
            user_id: few,
            total_cents: 5,
        })
        .await
        .unwrap();
    // 5,000 orders: the dashboard's count and sum step through every one of them (about 35,000
    // steps), far past sqlrepo::limits::DIRECT_READ_MOST_STEPS.
    raw(&db.path)
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
             INSERT INTO orders (user_id, total) SELECT ?1, i FROM n",
            [many],
        )
        .unwrap();

    // With the one reader held, a dashboard within the budget is answered on the caller's
    // thread; the long one is interrupted there and waits for the reader, in vain.
    let held = db.handle().reader().await.unwrap();
    assert_eq!(db.dashboard(few).await.unwrap().stats.count, 1);
    assert!(matches!(db.dashboard(many).await, Err(Error::Busy)));
    drop(held);
    let long = db.dashboard(many).await.unwrap();
    assert_eq!(
        (long.stats.count, long.stats.total_cents),
        (5_000, 5_000 * 5_001 / 2)
    );
    let totals: Vec<i64> = long.recent_orders.iter().map(|o| o.total_cents).collect();
    assert_eq!(totals, (4_991..=5_000).rev().collect::<Vec<i64>>());
    // The interrupted read left the direct readers fit for the next one.
    let held = db.handle().reader().await.unwrap();
    assert_eq!(db.dashboard(few).await.unwrap().stats.total_cents, 5);
    drop(held);
}

#[tokio::test]
async fn every_row_reads_the_same_with_and_without_direct_reads_errors_included() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("same.db");
    let direct = open(&path, true).await;
    let ordinary = open(&path, false).await;
    let items = direct.items();
    for (i, data) in [
        json!(null),
        json!({"nested": {"deep": [1, 2.5, -3e-7, "x"]}, "empty": {}}),
        json!("\u{0}nul and ünïcode ✓"),
        json!(i64::MAX),
        json!(u64::MAX),
        json!([]),
    ]
    .into_iter()
    .enumerate()
    {
        let status = [
            ItemStatus::Active,
            ItemStatus::Inactive,
            ItemStatus::Archived,
        ][i % 3];
        items
            .create(&NewItem {
                name: format!("item {i}"),
                data,
                status,
            })
            .await
            .unwrap();
    }
    // Rows other programs wrote: numbers the model cannot hold exactly (refused as
    // Unreadable), a timestamp not in the canonical form (stored canonical by the trigger).
    raw(&path)
        .execute_batch(
            "INSERT INTO items (id, name, data) VALUES (100, 'huge', '[1e400]');
         INSERT INTO items (id, name, data) VALUES (101, 'long', '123456789012345678901234567890');
         INSERT INTO items (id, name, data, created_at, updated_at)
             VALUES (102, 'odd time', '{}', '2026-01-02 03:04:05', '2026-01-02 03:04:05');",
        )
        .expect("another program's write");
    let mut unreadable = 0;
    for id in (0..=8).chain(99..=103) {
        let got = direct.items().get(id).await;
        let want = ordinary.items().get(id).await;
        match (&got, &want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "item {id}"),
            (
                Err(Error::Unreadable {
                    id: a, reason: r, ..
                }),
                Err(Error::Unreadable {
                    id: b, reason: s, ..
                }),
            ) => {
                assert_eq!((a, r), (b, s));
                unreadable += 1;
            }
            _ => panic!("item {id}: direct {got:?}, ordinary {want:?}"),
        }
    }
    assert_eq!(unreadable, 2, "rows 100 and 101 are refused both ways");
    let odd = direct.items().get(102).await.unwrap().unwrap();
    assert_eq!(
        odd.created_at,
        time::macros::datetime!(2026-01-02 03:04:05 UTC)
    );
}

#[tokio::test]
async fn a_file_without_the_schema_is_a_schema_error_with_direct_reads_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.db");
    for direct in [true, false] {
        let db = Db::open_with(DbOptions::new(&path).migrate(false).direct_reads(direct))
            .await
            .unwrap();
        let err = db.items().get(1).await.unwrap_err();
        assert!(matches!(err, Error::Schema(_)), "direct {direct}: {err:?}");
        db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_update_is_seen_by_the_next_get_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let db = open(&path, true).await;
    let new: Vec<NewItem> = (0..8)
        .map(|i| NewItem::new(format!("n{i}"), json!(0)))
        .collect();
    db.items().insert_many(&new).await.unwrap();
    let mut tasks = Vec::new();
    for id in 1..=8_i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for n in 1..=200 {
                let patch = ItemPatch {
                    data: Some(json!(n)),
                    ..ItemPatch::default()
                };
                assert!(db.items().update(id, &patch).await.unwrap());
                // Read-your-writes across connections: the write's Ok came after its commit.
                let seen = db.items().get(id).await.unwrap().unwrap();
                assert_eq!(seen.data, json!(n), "item {id} after update {n}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let ordinary = open(&path, false).await;
    for id in 1..=8 {
        let stored = ordinary.items().get(id).await.unwrap().unwrap();
        assert_eq!(stored.data, json!(200));
    }
}

#[tokio::test]
async fn gets_leave_no_snapshot_that_keeps_a_checkpoint_from_emptying_the_wal() {
    let (db, id) = one_item(json!(1)).await;
    for _ in 0..50 {
        db.items().get(id).await.unwrap().unwrap();
    }
    db.items()
        .update(
            id,
            &ItemPatch {
                data: Some(json!(2)),
                ..ItemPatch::default()
            },
        )
        .await
        .unwrap();
    db.items().get(id).await.unwrap().unwrap();
    // Another program's TRUNCATE checkpoint: it waits for no reader (busy 0) and copies every
    // frame back, which it could not do past a reader still holding an older snapshot.
    let conn = raw(&db.path);
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .unwrap();
    assert_eq!((busy, log, done), (0, 0, 0));
    let wal = std::fs::metadata(db.path.with_extension("db-wal")).unwrap();
    assert_eq!(wal.len(), 0, "the WAL was truncated");
    assert_eq!(db.items().get(id).await.unwrap().unwrap().data, json!(2));
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_that_only_gets_still_lets_the_others_on_its_thread_run() {
    let (db, id) = one_item(json!(1)).await;
    let ticked = Arc::new(AtomicBool::new(false));
    let ticker = {
        let ticked = ticked.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ticked.store(true, Ordering::SeqCst);
        })
    };
    // One thread only: without yielding, this loop would run to its end before the ticker.
    let looping = tokio::spawn(async move {
        let mut gets = 0_u64;
        while !ticked.load(Ordering::SeqCst) {
            assert!(db.items().get(id).await.unwrap().is_some());
            gets += 1;
            assert!(gets < 5_000_000, "the ticker never ran");
        }
        gets
    });
    let gets = looping.await.unwrap();
    ticker.await.unwrap();
    assert!(gets > 0);
}

#[tokio::test]
async fn a_transaction_reads_its_own_uncommitted_write_and_others_do_not() {
    let (db, id) = one_item(json!("before")).await;
    let tx = db.begin().await.unwrap();
    let patch = ItemPatch {
        data: Some(json!("inside")),
        ..ItemPatch::default()
    };
    assert!(tx.items().update(id, &patch).await.unwrap());
    assert_eq!(
        tx.items().get(id).await.unwrap().unwrap().data,
        json!("inside")
    );
    assert_eq!(
        db.items().get(id).await.unwrap().unwrap().data,
        json!("before")
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        db.items().get(id).await.unwrap().unwrap().data,
        json!("before")
    );
}

#[tokio::test]
async fn a_closed_database_refuses_gets_as_before_and_lets_its_file_go() {
    let (db, id) = one_item(json!(1)).await;
    assert!(db.items().get(id).await.unwrap().is_some());
    db.close().await;
    assert!(db.items().get(id).await.is_err());
    // Every connection is closed, the direct ones included: the last close checkpointed the
    // WAL and removed it, which SQLite does only when no other connection has the file open.
    assert!(!db.path.with_extension("db-wal").exists());
}
