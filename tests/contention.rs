//! Contention: another connection holds the write lock longer than the busy timeout. Writes
//! through the `Db` then fail with `Error::Busy` (retryable) in bounded time — never a hang —
//! while reads keep working (WAL); once the lock is released everything works again. Writers
//! that contend below the timeout, in this process and from other connections, all succeed.
//!
//! Another connection holding SQLite's write lock, WAL snapshots and SQLITE_BUSY are SQLite's
//! own: those tests are SQLite only. The races between two `Db` handles on one database run on
//! every backend.

mod common;
#[path = "reliability_common/mod.rs"]
mod reliability_common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestDb, backend_test};
use futures_util::StreamExt;
use reliability_common::{check_bank, check_integrity, dump_diff, dump_file, raw};
use serde_json::json;
use sqlrepo::{
    Db, DbOptions, Error, ItemPatch, ItemStatus, NewAccount, NewItem, NewOrder, NewUser, Transfer,
    TransferOutcome,
};

const BUSY_TIMEOUT: Duration = Duration::from_millis(300);
/// How much later than the busy timeout a refused write may come back.
const SLACK: Duration = Duration::from_secs(2);
/// Beyond this a call counts as hung.
const HANG: Duration = Duration::from_secs(20);

/// A file with a user, an order, two funded accounts and two items; `Db` opened on it with
/// [`BUSY_TIMEOUT`].
async fn setup(path: &Path) -> Db {
    let db = Db::open_with(DbOptions::new(path).busy_timeout(BUSY_TIMEOUT))
        .await
        .unwrap();
    let user = db
        .users()
        .create(&NewUser::new("ann@example.com", "Ann"))
        .await
        .unwrap();
    db.orders().create(&NewOrder::new(user, 500)).await.unwrap();
    for _ in 0..2 {
        let id = db
            .accounts()
            .open(&NewAccount {
                user_id: None,
                balance_cents: 0,
            })
            .await
            .unwrap();
        db.accounts().deposit(id, 1_000).await.unwrap();
    }
    db.items()
        .insert_many(&[
            NewItem::new("lamp", json!({})),
            NewItem::new("desk", json!({})),
        ])
        .await
        .unwrap();
    db
}

/// Another connection that takes the write lock and writes a row it has not committed.
fn hold_write_lock(path: &Path) -> rusqlite::Connection {
    let conn = raw(path);
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         INSERT INTO items (name) VALUES ('uncommitted');",
    )
    .unwrap();
    conn
}

type Call = Pin<Box<dyn Future<Output = sqlrepo::Result<()>> + Send>>;

fn ok<T>(result: sqlrepo::Result<T>) -> sqlrepo::Result<()> {
    result.map(|_| ())
}

/// Every kind of write the crate offers.
fn writes(db: &Db) -> Vec<(&'static str, Call)> {
    let d = || db.clone();
    let (a, b, c, e, f, g, h, i, j, k, l, m) =
        (d(), d(), d(), d(), d(), d(), d(), d(), d(), d(), d(), d());
    vec![
        (
            "items.create",
            Box::pin(async move { ok(a.items().create(&NewItem::new("x", json!(1))).await) })
                as Call,
        ),
        (
            "items.insert_many",
            Box::pin(
                async move { ok(b.items().insert_many(&[NewItem::new("y", json!(1))]).await) },
            ),
        ),
        (
            "items.update",
            Box::pin(async move {
                ok(c.items()
                    .update(
                        1,
                        &ItemPatch {
                            name: Some("lamp 2".into()),
                            ..Default::default()
                        },
                    )
                    .await)
            }),
        ),
        (
            "items.delete",
            Box::pin(async move { ok(e.items().delete(2).await) }),
        ),
        (
            "items.set_status_many",
            Box::pin(async move {
                ok(f.items()
                    .set_status_many(&[1, 2], ItemStatus::Archived)
                    .await)
            }),
        ),
        (
            "users.create",
            Box::pin(async move {
                ok(g.users()
                    .create(&NewUser::new("bob@example.com", "Bob"))
                    .await)
            }),
        ),
        (
            "orders.create",
            Box::pin(async move { ok(h.orders().create(&NewOrder::new(1, 5)).await) }),
        ),
        (
            "accounts.open",
            Box::pin(async move {
                ok(i.accounts()
                    .open(&NewAccount {
                        user_id: None,
                        balance_cents: 1,
                    })
                    .await)
            }),
        ),
        (
            "accounts.deposit",
            Box::pin(async move { ok(j.accounts().deposit(1, 5).await) }),
        ),
        (
            "accounts.transfer",
            Box::pin(async move {
                ok(k.accounts()
                    .transfer(&Transfer::new(1, 2, 5).with_key("t"))
                    .await)
            }),
        ),
        (
            "accounts.transfer_batch",
            Box::pin(async move {
                ok(l.accounts()
                    .transfer_batch(&[Transfer::new(1, 2, 5), Transfer::new(2, 1, 3)])
                    .await)
            }),
        ),
        ("Db::begin", Box::pin(async move { ok(m.begin().await) })),
    ]
}

#[tokio::test]
async fn every_write_gets_a_retryable_busy_in_bounded_time_while_another_connection_holds_the_lock()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let db = setup(&path).await;
    let before = dump_file(&path);
    let holder = hold_write_lock(&path);

    let mut timings = Vec::new();
    let mut wrong = Vec::new();
    for (name, call) in writes(&db) {
        let started = Instant::now();
        let result = tokio::time::timeout(HANG, call)
            .await
            .unwrap_or_else(|_| panic!("{name} hung for {HANG:?} behind the lock"));
        let took = started.elapsed();
        timings.push(format!("{name} {took:?}"));
        match result {
            Err(err @ Error::Busy) if err.is_retryable() => {}
            other => wrong.push(format!("{name}: expected Error::Busy, got {other:?}")),
        }
        if took < BUSY_TIMEOUT.mul_f64(0.9) || took > BUSY_TIMEOUT + SLACK {
            wrong.push(format!(
                "{name}: answered after {took:?}, not within [{:?}, {:?}]",
                BUSY_TIMEOUT.mul_f64(0.9),
                BUSY_TIMEOUT + SLACK
            ));
        }
    }
    println!(
        "contention: busy answers with a {BUSY_TIMEOUT:?} timeout: {}",
        timings.join(", ")
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    holder.execute_batch("ROLLBACK").unwrap();
    let after = dump_file(&path);
    assert!(
        before == after,
        "a refused write changed the file:\n{}",
        dump_diff(&before, &after)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_a_write_stuck_on_the_lock_all_get_busy_in_bounded_time() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let db = setup(&path).await;
    let holder = hold_write_lock(&path);

    let started = Instant::now();
    let calls: Vec<_> = (0..WRITERS)
        .map(|n| {
            let db = db.clone();
            tokio::spawn(async move {
                let result = db
                    .items()
                    .create(&NewItem::new(format!("queued-{n}"), json!(n)))
                    .await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (result, took) = tokio::time::timeout(HANG, call)
            .await
            .expect("a queued write hung")
            .unwrap();
        assert!(matches!(result, Err(Error::Busy)), "{result:?}");
        slowest = slowest.max(took);
    }
    println!("contention: {WRITERS} queued writes all got Busy, the last after {slowest:?}");
    // Each waits at most one timeout for this process's writer and one for SQLite's lock.
    assert!(slowest <= BUSY_TIMEOUT * 2 + SLACK, "{slowest:?}");

    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(db.items().count().await.unwrap(), 2);
    db.items()
        .create(&NewItem::new("after", json!(0)))
        .await
        .unwrap();
}

#[tokio::test]
async fn reads_succeed_promptly_and_see_only_committed_rows_while_another_connection_holds_the_lock()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reads.db");
    let db = setup(&path).await;
    let _holder = hold_write_lock(&path);

    let started = Instant::now();
    assert_eq!(db.items().count().await.unwrap(), 2);
    assert_eq!(db.items().get(1).await.unwrap().unwrap().name, "lamp");
    assert_eq!(
        db.items()
            .list_by_status(ItemStatus::Active)
            .await
            .unwrap()
            .len(),
        2
    );
    let streamed: Vec<_> = db.items().stream().collect().await;
    assert_eq!(streamed.len(), 2);
    assert!(
        db.users()
            .get_by_email("ann@example.com")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        db.orders().stats_for_user(1).await.unwrap().total_cents,
        500
    );
    assert_eq!(db.orders().recent_for_user(1, 10).await.unwrap().len(), 1);
    assert_eq!(db.dashboard(1).await.unwrap().recent_orders.len(), 1);
    assert_eq!(
        db.accounts().get(2).await.unwrap().unwrap().balance_cents,
        1_000
    );
    assert_eq!(db.accounts().total_balance().await.unwrap(), 2_000);
    let took = started.elapsed();
    println!("contention: 10 reads beside a held write lock took {took:?}");
    assert!(
        took < BUSY_TIMEOUT,
        "reads waited for the write lock ({took:?}); WAL readers should not"
    );
}

#[tokio::test]
async fn once_the_other_connection_commits_writes_succeed_and_its_rows_are_visible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("release.db");
    let db = setup(&path).await;
    let holder = hold_write_lock(&path);
    let refused = db.items().create(&NewItem::new("mine", json!(1))).await;
    assert!(matches!(refused, Err(Error::Busy)), "{refused:?}");
    holder.execute_batch("COMMIT").unwrap();

    let id = db
        .items()
        .create(&NewItem::new("mine", json!(1)))
        .await
        .unwrap();
    db.accounts()
        .transfer(&Transfer::new(1, 2, 250).with_key("after"))
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("in tx", json!(2)))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let names: Vec<String> = db
        .items()
        .list_by_status(ItemStatus::Active)
        .await
        .unwrap()
        .into_iter()
        .map(|item| item.name)
        .collect();
    assert_eq!(names, ["lamp", "desk", "uncommitted", "mine", "in tx"]);
    assert_eq!(db.items().get(id).await.unwrap().unwrap().name, "mine");
    assert_eq!(
        db.accounts().get(2).await.unwrap().unwrap().balance_cents,
        1_250
    );
    db.close().await;
    let conn = raw(&path);
    check_integrity(&conn).unwrap();
    check_bank(&conn, 2_000).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_for_a_lock_released_within_the_timeout_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wait.db");
    let db = Db::open_with(DbOptions::new(&path).busy_timeout(Duration::from_secs(3)))
        .await
        .unwrap();
    let held_for = Duration::from_millis(250);
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let holder_path = path.clone();
    let holder = std::thread::spawn(move || {
        let conn = hold_write_lock(&holder_path);
        locked_tx.send(()).unwrap();
        std::thread::sleep(held_for);
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.await.unwrap();
    let started = Instant::now();
    let id = db
        .items()
        .create(&NewItem::new("patient", json!(1)))
        .await
        .unwrap();
    let waited = started.elapsed();
    holder.join().unwrap();
    println!("contention: a write behind a {held_for:?} lock waited {waited:?}");
    assert!(
        waited >= held_for.mul_f64(0.8),
        "it did not wait for the lock ({waited:?})"
    );
    assert_eq!(db.items().get(id).await.unwrap().unwrap().name, "patient");
    assert_eq!(db.items().count().await.unwrap(), 2);
}

#[tokio::test]
async fn a_write_waiting_behind_an_open_transaction_of_the_same_db_gets_busy_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.db");
    let db = setup(&path).await;
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("pending", json!(1)))
        .await
        .unwrap();

    let started = Instant::now();
    let result = tokio::time::timeout(HANG, db.items().create(&NewItem::new("other", json!(2))))
        .await
        .expect("the write hung behind the open transaction");
    let took = started.elapsed();
    assert!(matches!(result, Err(Error::Busy)), "{result:?}");
    assert!(
        took >= BUSY_TIMEOUT.mul_f64(0.9) && took <= BUSY_TIMEOUT + SLACK,
        "{took:?}"
    );

    tx.commit().await.unwrap();
    db.items()
        .create(&NewItem::new("other", json!(2)))
        .await
        .unwrap();
    assert_eq!(db.items().count().await.unwrap(), 4);
}

#[tokio::test]
async fn a_connection_holding_a_read_snapshot_does_not_block_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.db");
    let db = setup(&path).await;
    let reader = raw(&path);
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .unwrap();
    assert_eq!(seen, 2);

    let started = Instant::now();
    db.items()
        .create(&NewItem::new("while reading", json!(1)))
        .await
        .unwrap();
    db.accounts()
        .transfer(&Transfer::new(1, 2, 10))
        .await
        .unwrap();
    assert!(started.elapsed() < BUSY_TIMEOUT, "{:?}", started.elapsed());

    let still: i64 = reader
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .unwrap();
    assert_eq!(still, 2, "the snapshot moved");
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(db.items().count().await.unwrap(), 3);
}

backend_test!(
    multi_thread,
    many_concurrent_writers_below_the_timeout_all_succeed,
    |options| options.busy_timeout(std::time::Duration::from_secs(5))
);
async fn many_concurrent_writers_below_the_timeout_all_succeed(test: TestDb) {
    const TASKS: usize = 24;
    const ROUNDS: usize = 40;
    const ACCOUNTS: i64 = 6;
    let first = test.db.clone();
    // A second handle on the same database: its own writer connection, so the two really
    // contend (for SQLite's write lock, as two processes would).
    let second = test.reopen().await;
    for _ in 0..ACCOUNTS {
        let id = first
            .accounts()
            .open(&NewAccount {
                user_id: None,
                balance_cents: 0,
            })
            .await
            .unwrap();
        first.accounts().deposit(id, 100_000).await.unwrap();
    }

    // A third writer outside sqlrepo, committing short transactions the whole time (SQLite:
    // another program on the file).
    let stop = Arc::new(AtomicBool::new(false));
    let external = test.sqlite_path().map(|path| {
        let (stop, path) = (stop.clone(), path.to_owned());
        std::thread::spawn(move || {
            let conn = raw(&path);
            let mut commits = 0;
            while !stop.load(Ordering::Relaxed) {
                conn.execute_batch(&format!(
                    "BEGIN IMMEDIATE;
                     INSERT INTO items (name) VALUES ('external-{commits}');
                     COMMIT;"
                ))
                .unwrap();
                commits += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            commits
        })
    });

    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let db = if task % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for round in 0..ROUNDS {
                let began = Instant::now();
                let from = (task + round) as i64 % ACCOUNTS + 1;
                let to = from % ACCOUNTS + 1;
                match round % 4 {
                    0 => db
                        .accounts()
                        .transfer(&Transfer::new(from, to, 7).with_key(format!("t{task}-{round}")))
                        .await
                        .map(|_| ()),
                    1 => db
                        .items()
                        .insert_many(&[
                            NewItem::new(format!("i{task}-{round}-a"), json!(1)),
                            NewItem::new(format!("i{task}-{round}-b"), json!(2)),
                        ])
                        .await
                        .map(|_| ()),
                    2 => {
                        db.accounts()
                            .transfer_batch(&[
                                Transfer::new(from, to, 3),
                                Transfer::new(to, from, 2),
                            ])
                            .await
                    }
                    _ => {
                        async {
                            let tx = db.begin().await?;
                            tx.items()
                                .create(&NewItem::new(format!("x{task}-{round}"), json!(3)))
                                .await?;
                            tx.accounts().transfer(&Transfer::new(to, from, 1)).await?;
                            tx.commit().await
                        }
                        .await
                    }
                }
                .unwrap_or_else(|err| panic!("task {task} round {round}: {err:?}"));
                slowest = slowest.max(began.elapsed());
            }
            slowest
        }));
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        slowest = slowest.max(task.await.expect("a writer task failed"));
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let external_commits = external.map_or(0, |thread| thread.join().unwrap());
    println!(
        "contention: {} writes from {TASKS} tasks on 2 handles beside {external_commits} external \
         commits, all succeeded in {took:?}; slowest single write {slowest:?}",
        TASKS * ROUNDS
    );

    let per_kind = TASKS * ROUNDS / 4;
    let items = first.items().count().await.unwrap() as usize;
    assert_eq!(items, per_kind * 2 + per_kind + external_commits);
    let Some(path) = test.sqlite_path() else {
        // The ledger has no reader in the API: the money is all there, and every keyed
        // transfer is in the ledger (its replay moves nothing).
        assert_eq!(
            first.accounts().total_balance().await.unwrap(),
            ACCOUNTS * 100_000
        );
        for task in 0..TASKS {
            for round in (0..ROUNDS).step_by(4) {
                let from = (task + round) as i64 % ACCOUNTS + 1;
                let to = from % ACCOUNTS + 1;
                let t = Transfer::new(from, to, 7).with_key(format!("t{task}-{round}"));
                assert_eq!(
                    first.accounts().transfer_with_outcome(&t).await.unwrap(),
                    TransferOutcome::Replayed
                );
            }
        }
        for id in 1..=ACCOUNTS {
            assert!(
                first
                    .accounts()
                    .get(id)
                    .await
                    .unwrap()
                    .unwrap()
                    .balance_cents
                    >= 0
            );
        }
        return;
    };
    first.close().await;
    second.close().await;
    let conn = raw(path);
    check_integrity(&conn).unwrap();
    check_bank(&conn, ACCOUNTS * 100_000).unwrap();
    let landed: i64 = conn
        .query_row(
            "SELECT count(*) FROM transfers WHERE from_account IS NOT NULL",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(landed as usize, per_kind + per_kind * 2 + per_kind);
}

#[tokio::test]
async fn opening_a_migrated_file_while_another_connection_holds_the_lock_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open-busy.db");
    setup(&path).await.close().await;
    let holder = hold_write_lock(&path);

    let started = Instant::now();
    let db = tokio::time::timeout(
        HANG,
        Db::open_with(DbOptions::new(&path).busy_timeout(BUSY_TIMEOUT)),
    )
    .await
    .expect("open hung behind the lock")
    .expect("a second service could not open the file while the first was writing");
    assert!(started.elapsed() < BUSY_TIMEOUT, "{:?}", started.elapsed());
    assert_eq!(db.items().count().await.unwrap(), 2);
    holder.execute_batch("COMMIT").unwrap();
    assert_eq!(db.items().count().await.unwrap(), 3);
}

#[tokio::test]
async fn migrating_while_another_connection_holds_the_lock_is_busy_and_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("migrate-busy.db");
    // Every migration but the last, as an older release would have left the file.
    let migrator = sqlx::migrate!("./migrations");
    let versions: Vec<i64> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        migrator
            .run_to(versions[versions.len() - 2], &mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let db = Db::open_with(
        DbOptions::new(&path)
            .busy_timeout(BUSY_TIMEOUT)
            .migrate(false),
    )
    .await
    .unwrap();
    let before = dump_file(&path);
    let holder = raw(&path);
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let result = tokio::time::timeout(HANG, db.migrate())
        .await
        .expect("migrate hung behind the lock");
    let took = started.elapsed();
    assert!(matches!(result, Err(Error::Busy)), "{result:?}");
    assert!(took <= BUSY_TIMEOUT + SLACK, "{took:?}");
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(dump_file(&path), before, "a refused migration left changes");

    db.migrate().await.unwrap();
    let applied = reliability_common::applied_migrations(&raw(&path));
    assert_eq!(applied.len(), versions.len());
}

/// Two `Db` handles on the test's new database (two writers that only the database orders:
/// SQLite's lock, PostgreSQL's row locks), with accounts 1 and 2 funded by a 10,000-cent
/// deposit each.
async fn two_handles_on_two_funded_accounts(test: &TestDb) -> (Db, Db) {
    let first = test.db.clone();
    let second = test.reopen().await;
    for _ in 0..2 {
        let id = first
            .accounts()
            .open(&NewAccount {
                user_id: None,
                balance_cents: 0,
            })
            .await
            .unwrap();
        first.accounts().deposit(id, 10_000).await.unwrap();
    }
    (first, second)
}

/// On SQLite the file's bank invariant (every balance as the ledger says, the total); through
/// the API elsewhere (the total, no negative balance).
async fn check_bank_of(test: &TestDb, total: i64) {
    match test.sqlite_path() {
        Some(path) => check_bank(&raw(path), total).unwrap(),
        None => {
            assert_eq!(test.accounts().total_balance().await.unwrap(), total);
            for id in [1, 2] {
                assert!(
                    test.accounts()
                        .get(id)
                        .await
                        .unwrap()
                        .unwrap()
                        .balance_cents
                        >= 0
                );
            }
        }
    }
}

backend_test!(
    multi_thread,
    racing_replays_of_the_same_keys_from_two_handles_land_each_transfer_once,
    |options| options.busy_timeout(std::time::Duration::from_secs(5))
);
async fn racing_replays_of_the_same_keys_from_two_handles_land_each_transfer_once(test: TestDb) {
    const KEYS: usize = 20;
    const RACERS: usize = 8;
    let (first, second) = two_handles_on_two_funded_accounts(&test).await;
    let racers: Vec<_> = (0..RACERS)
        .map(|racer| {
            let db = if racer % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move {
                for k in 0..KEYS {
                    // Half the racers replay each key as a batch, half alone.
                    let t = Transfer::new(1, 2, 10 + k as i64).with_key(format!("pay-{k}"));
                    let result = if racer % 4 < 2 {
                        db.accounts().transfer(&t).await
                    } else {
                        db.accounts().transfer_batch(&[t]).await
                    };
                    result.unwrap_or_else(|err| panic!("racer {racer}, key {k}: {err:?}"));
                }
            })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap();
    }
    let moved: i64 = (0..KEYS as i64).map(|k| 10 + k).sum();
    assert_eq!(
        first
            .accounts()
            .get(2)
            .await
            .unwrap()
            .unwrap()
            .balance_cents,
        10_000 + moved
    );
    second.close().await;
    match test.sqlite_path() {
        Some(path) => {
            let landed: i64 = raw(path)
                .query_row(
                    "SELECT count(*) FROM transfers WHERE idempotency_key IS NOT NULL",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(landed, KEYS as i64);
        }
        None => {
            // No ledger reader in the API: each key is there (its replay moves nothing), and
            // the balance above says none landed twice.
            for k in 0..KEYS {
                let t = Transfer::new(1, 2, 10 + k as i64).with_key(format!("pay-{k}"));
                assert_eq!(
                    first.accounts().transfer_with_outcome(&t).await.unwrap(),
                    TransferOutcome::Replayed
                );
            }
        }
    }
    check_bank_of(&test, 20_000).await;
}

backend_test!(
    multi_thread,
    racing_transfers_reusing_a_key_with_different_amounts_land_exactly_one,
    |options| options.busy_timeout(std::time::Duration::from_secs(5))
);
async fn racing_transfers_reusing_a_key_with_different_amounts_land_exactly_one(test: TestDb) {
    const RACERS: i64 = 8;
    let (first, second) = two_handles_on_two_funded_accounts(&test).await;
    let racers: Vec<_> = (1..=RACERS)
        .map(|amount| {
            let db = if amount % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move {
                let t = Transfer::new(1, 2, amount).with_key("the-one");
                (amount, db.accounts().transfer(&t).await)
            })
        })
        .collect();
    let mut landed = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            (amount, Ok(())) => landed.push(amount),
            (_, Err(Error::Duplicate { constraint })) => {
                assert_eq!(constraint, "transfers.idempotency_key")
            }
            (amount, Err(other)) => panic!("amount {amount}: {other:?}"),
        }
    }
    assert_eq!(landed.len(), 1, "landed: {landed:?}");
    assert_eq!(
        first
            .accounts()
            .get(2)
            .await
            .unwrap()
            .unwrap()
            .balance_cents,
        10_000 + landed[0]
    );
    second.close().await;
    check_bank_of(&test, 20_000).await;
}

#[test]
fn uncontended_writes_on_a_runtime_without_timers_do_not_panic() {
    // `Builder::new_current_thread().build()` without `enable_time()`: a service that builds
    // its own runtime can easily end up with one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-timers.db");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            let db = Db::open(&path).await?;
            db.items().create(&NewItem::new("lamp", json!(1))).await?;
            db.accounts()
                .open(&NewAccount {
                    user_id: None,
                    balance_cents: 5,
                })
                .await?;
            let tx = db.begin().await?;
            tx.items().create(&NewItem::new("desk", json!(2))).await?;
            tx.commit().await?;
            db.items().count().await
        })
    }));
    match outcome {
        Ok(count) => assert_eq!(count.unwrap(), 2),
        Err(_) => panic!("a write panicked on a runtime without timers"),
    }
}
