//! Callers with time limits on PostgreSQL, against a lock another session holds: a call its
//! caller gave up on is cancelled on the server (it never lands later), its connection is free
//! again within a bounded time, unrelated calls answer throughout, and the server-side limits
//! of `DbOptions` (`statement_timeout`, `lock_timeout`, `idle_in_transaction_session_timeout`)
//! are on every connection and fail as typed, retryable errors that stored nothing.
//!
//! Each test needs a PostgreSQL server (`SQLREPO_PG_URL`, as `.ci/pg-cluster start` prints
//! it): they are `#[ignore]`d, run with `-- --include-ignored`, and fail without one.
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::backend::{Backend, PgDatabase, pg};
use common::open_account;
use sqlrepo::{Db, DbOptions, Error, Transfer};
use sqlx::{Connection, PgConnection};

/// A fresh database on the test server; fails the test when there is none.
async fn database() -> PgDatabase {
    pg::create(Backend::Postgres).await.expect(
        "this test needs a PostgreSQL server: set SQLREPO_PG_URL (`.ci/pg-cluster start DIR PORT` \
         prints it)",
    )
}

/// Another program's session holding account `id`'s row lock (`SELECT … FOR UPDATE` in an open
/// transaction) until [`release`].
async fn lock_account(url: &str, id: i64) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("SELECT balance FROM accounts WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn
}

async fn release(mut conn: PgConnection) {
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// Balances by id and every transfer in the ledger `(from, to, amount)` (not the opening
/// deposits), as the server holds them.
async fn stored(url: &str) -> (Vec<(i64, i64)>, Vec<(Option<i64>, i64, i64)>) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let balances = sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let ledger = sqlx::query_as(
        "SELECT from_account, to_account, amount FROM transfers
             WHERE from_account IS NOT NULL ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    (balances, ledger)
}

/// Sessions of the test database waiting on a lock right now (the locker's own is not waiting).
async fn waiting_on_locks(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let waiting = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    waiting
}

/// Reads an unrelated account every 10 ms until stopped; the slowest answer, and how many.
fn probe(
    db: &Db,
    id: i64,
    balance_cents: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Duration, u64)> {
    let db = db.clone();
    tokio::spawn(async move {
        let slowest = AtomicU64::new(0);
        let mut reads = 0;
        while !stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let account = db.accounts().get(id).await;
            let took = started.elapsed();
            let account = account.unwrap_or_else(|err| panic!("an unrelated get failed: {err}"));
            assert_eq!(account.map(|a| a.balance_cents), Some(balance_cents));
            slowest.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
            reads += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (Duration::from_micros(slowest.into_inner()), reads)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn transfers_given_up_behind_a_strangers_lock_are_cancelled_and_free_their_connections() {
    let database = database().await;
    let url = &database.url;
    let db = Db::connect(url).await.unwrap();
    let a = open_account(&db, 10_000).await;
    let b = open_account(&db, 0).await;
    let c = open_account(&db, 500).await;
    let unrelated = open_account(&db, 700).await;

    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(&db, unrelated, 700, stop.clone());
    let locker = lock_account(url, a).await;

    // 40 transfers from the locked account, each given up by its caller after 100 ms: more
    // than the 16 connections to the primary, so the ones that got none queue meanwhile.
    let given_up = futures_util::future::join_all((0..40).map(|_| {
        let db = db.clone();
        async move {
            tokio::time::timeout(
                Duration::from_millis(100),
                db.accounts().transfer(&Transfer::new(a, b, 1)),
            )
            .await
        }
    }))
    .await;
    for outcome in &given_up {
        assert!(
            outcome.is_err(),
            "a transfer behind the lock answered: {outcome:?}"
        );
    }

    // Their statements are cancelled on the server: within a bounded time no session of the
    // database waits on the lock, though it is still held.
    let started = Instant::now();
    while waiting_on_locks(url).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "statements given up on still wait on the lock after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The pool serves writes that do not need the lock, more than 16 at once, promptly.
    let started = Instant::now();
    let unlocked = futures_util::future::join_all(
        (0..20).map(|_| db.accounts().transfer(&Transfer::new(c, b, 1))),
    )
    .await;
    for outcome in &unlocked {
        assert!(
            outcome.is_ok(),
            "a transfer needing no held lock failed: {outcome:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "20 transfers beside the lock took {:?}",
        started.elapsed()
    );

    release(locker).await;
    // Anything still queued on the lock would land now: give it the time to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (balances, ledger) = stored(url).await;
    assert_eq!(
        balances,
        vec![(a, 10_000), (b, 20), (c, 480), (unrelated, 700)],
        "a transfer its caller gave up on landed after the lock was released"
    );
    assert_eq!(ledger.len(), 20);
    assert!(
        ledger
            .iter()
            .all(|&(from, to, amount)| (from, to, amount) == (Some(c), b, 1))
    );

    // Every connection is back: 32 transfers from `a` at once all land.
    let after = futures_util::future::join_all(
        (0..32).map(|_| db.accounts().transfer(&Transfer::new(a, b, 1))),
    )
    .await;
    for outcome in &after {
        assert!(
            outcome.is_ok(),
            "a transfer after the lock failed: {outcome:?}"
        );
    }
    let (balances, ledger) = stored(url).await;
    assert_eq!(
        balances,
        vec![(a, 9_968), (b, 52), (c, 480), (unrelated, 700)]
    );
    assert_eq!(ledger.len(), 52);

    stop.store(true, Ordering::Release);
    let (slowest, reads) = prober.await.unwrap();
    assert!(reads > 10, "only {reads} unrelated reads ran");
    assert!(
        slowest < Duration::from_secs(1),
        "an unrelated get took {slowest:?} while the lock was held"
    );
    db.close().await;
}

/// A transfer tried under `options` while another session holds its source account's lock:
/// returns how it was refused and how long the refusal took. It must store nothing (checked
/// once the lock is gone and anything still waiting would have landed), and the same transfer
/// retried unchanged then lands -- what a retryable error promises its caller.
async fn refused_while_locked_then_retried(options: DbOptions) -> (Error, Duration) {
    let database = database().await;
    let url = &database.url;
    let db = Db::connect_replicated_with(url, &[], options)
        .await
        .unwrap();
    let a = open_account(&db, 1_000).await;
    let b = open_account(&db, 0).await;
    let before = stored(url).await;

    let locker = lock_account(url, a).await;
    let started = Instant::now();
    let err = db
        .accounts()
        .transfer(&Transfer::new(a, b, 100))
        .await
        .unwrap_err();
    let took = started.elapsed();
    release(locker).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stored(url).await,
        before,
        "the refused transfer stored something ({err:?})"
    );

    db.accounts()
        .transfer(&Transfer::new(a, b, 100))
        .await
        .unwrap();
    let (balances, ledger) = stored(url).await;
    assert_eq!(balances, vec![(a, 900), (b, 100)]);
    assert_eq!(ledger, vec![(Some(a), b, 100)]);
    db.close().await;
    (err, took)
}

#[tokio::test]
#[ignore = "needs PostgreSQL (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn a_statement_past_statement_timeout_is_cancelled_retryable_and_stores_nothing() {
    // No lock limit: the statement limit is what stops the wait.
    let options = DbOptions::new("")
        .statement_timeout(Duration::from_millis(300))
        .lock_timeout(Duration::ZERO);
    let (err, took) = refused_while_locked_then_retried(options).await;
    assert!(matches!(err, Error::Cancelled(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn a_lock_held_past_lock_timeout_is_busy_and_stores_nothing() {
    let options = DbOptions::new("").lock_timeout(Duration::from_millis(200));
    let (err, _) = refused_while_locked_then_retried(options).await;
    assert!(matches!(err, Error::Busy), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
#[ignore = "needs PostgreSQL (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn every_connection_starts_with_the_server_limits_of_its_options() {
    let database = database().await;
    let url = &database.url;
    let show = async |db: &Db| -> (String, String, String) {
        let mut conn = db.handle().reader().await.unwrap();
        let conn = conn.postgres().unwrap();
        let mut settings = Vec::new();
        for name in [
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_session_timeout",
        ] {
            let value: String = sqlx::query_scalar("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            settings.push(value);
        }
        (
            settings[0].clone(),
            settings[1].clone(),
            settings[2].clone(),
        )
    };

    let db = Db::connect(url).await.unwrap();
    assert_eq!(
        show(&db).await,
        ("30s".to_owned(), "5s".to_owned(), "1min".to_owned())
    );
    db.close().await;

    let options = DbOptions::new("")
        .statement_timeout(Duration::from_millis(1500))
        .lock_timeout(Duration::ZERO)
        .idle_in_transaction_session_timeout(Duration::from_secs(7));
    let db = Db::connect_replicated_with(url, &[], options.clone())
        .await
        .unwrap();
    assert_eq!(
        show(&db).await,
        ("1500ms".to_owned(), "0".to_owned(), "7s".to_owned())
    );
    db.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn a_limit_past_the_servers_largest_is_refused_before_anything_is_touched() {
    let database = database().await;
    // A database that does not exist yet: a connect would create it.
    let missing = format!("{}_never", database.url);
    let options = DbOptions::new("").statement_timeout(Duration::from_secs(40 * 24 * 3600));
    let err = Db::connect_replicated_with(&missing, &[], options.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(message) if message.contains("statement_timeout")),
        "{err:?}"
    );
    let mut admin = PgConnection::connect(&database.url).await.unwrap();
    let name = missing.rsplit('/').next().unwrap().to_owned();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(!exists, "the refused connect created {name}");
    admin.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs PostgreSQL (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn a_tx_left_idle_past_its_limit_is_rolled_back_and_the_db_goes_on() {
    let database = database().await;
    let url = &database.url;
    let options =
        DbOptions::new("").idle_in_transaction_session_timeout(Duration::from_millis(300));
    let db = Db::connect_replicated_with(url, &[], options.clone())
        .await
        .unwrap();
    let a = open_account(&db, 1_000).await;
    let b = open_account(&db, 0).await;
    let before = stored(url).await;

    let tx = db.begin().await.unwrap();
    tx.accounts()
        .transfer(&Transfer::new(a, b, 100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // The server ended the idle session: the transaction's later calls and its commit fail,
    // and nothing of it is stored.
    let next = tx.accounts().transfer(&Transfer::new(a, b, 1)).await;
    assert!(next.is_err(), "{next:?}");
    assert!(tx.commit().await.is_err());
    assert_eq!(
        stored(url).await,
        before,
        "the idle transaction stored something"
    );

    // The Db reconnects and goes on.
    db.accounts()
        .transfer(&Transfer::new(a, b, 100))
        .await
        .unwrap();
    assert_eq!(stored(url).await.0, vec![(a, 900), (b, 100)]);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (SQLREPO_PG_URL); run with -- --include-ignored"]
async fn a_call_given_up_inside_a_tx_is_undone_alone_and_the_tx_commits_the_rest() {
    let database = database().await;
    let url = &database.url;
    let db = Db::connect(url).await.unwrap();
    let a = open_account(&db, 1_000).await;
    let b = open_account(&db, 0).await;
    let c = open_account(&db, 500).await;

    let locker = lock_account(url, a).await;
    let tx = db.begin().await.unwrap();
    tx.accounts()
        .transfer(&Transfer::new(c, b, 10))
        .await
        .unwrap();
    let given_up = tokio::time::timeout(
        Duration::from_millis(100),
        tx.accounts().transfer(&Transfer::new(a, b, 100)),
    )
    .await;
    assert!(given_up.is_err(), "{given_up:?}");

    // The next call does not wait for the stranger's lock (the given-up statement is
    // cancelled, not waited for), and the transaction goes on.
    let started = Instant::now();
    tx.accounts()
        .transfer(&Transfer::new(c, b, 20))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the call after a given-up one took {:?}",
        started.elapsed()
    );
    // Released before the commit: a given-up statement still waiting would go through now.
    release(locker).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.accounts()
        .transfer(&Transfer::new(c, b, 30))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let (balances, ledger) = stored(url).await;
    assert_eq!(balances, vec![(a, 1_000), (b, 60), (c, 440)]);
    assert_eq!(
        ledger,
        vec![(Some(c), b, 10), (Some(c), b, 20), (Some(c), b, 30)]
    );
    db.close().await;
}
