//! The PostgreSQL connection layer itself (cargo feature `postgres`): connecting by URL,
//! migrations, transactions, and reads routed to replicas. Needs a server (`SQLREPO_PG_URL`):
//! ignored unless asked for (`-- --include-ignored`), and then a missing server fails.
#![cfg(feature = "postgres")]

mod common;

use common::backend::{self, pg};
use sqlrepo::{Backend, Db, Error};
use sqlx::migrate::MigrateDatabase;

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn connect_migrates_and_lends_postgres_connections() {
    let Some(database) = pg::create(backend::Backend::Postgres).await else {
        return;
    };
    let url = database.url.clone();
    let db = Db::connect(&url).await.unwrap();
    assert!(db.is_postgres());
    // Connecting again finds the migrations applied.
    let again = Db::connect(&url).await.unwrap();
    again.migrate().await.unwrap();
    let mut conn = db.handle().writer().await.unwrap();
    let position = sqlrepo_postgres::replication::current_position(conn.postgres().unwrap())
        .await
        .unwrap();
    assert!(position > 0);
    assert!(matches!(conn.sqlite(), Err(Error::WrongBackend(_))));
    assert!(matches!(conn.backend().unwrap(), Backend::Postgres(_)));
    drop(conn);
    assert!(matches!(
        db.backup_to("/tmp/never.db").await,
        Err(Error::WrongBackend(_))
    ));
    let tx = db.begin().await.unwrap();
    let mut conn = tx.handle().writer().await.unwrap();
    sqlrepo_postgres::replication::current_position(conn.postgres().unwrap())
        .await
        .unwrap();
    drop(conn);
    tx.commit().await.unwrap();
    db.close().await;
    again.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn a_replica_that_is_down_is_skipped() {
    let Some(database) = pg::create(backend::Backend::Postgres).await else {
        return;
    };
    let url = database.url.clone();
    let db = Db::connect_replicated(&url, &["postgres://postgres@127.0.0.1:1/none"])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let mut conn = db.handle().reader().await.unwrap();
        sqlrepo_postgres::replication::current_position(conn.postgres().unwrap())
            .await
            .unwrap();
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    db.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn reads_after_a_write_go_to_the_primary_until_the_replica_has_caught_up() {
    let Some(database) = pg::create(backend::Backend::Replicated).await else {
        return;
    };
    let (url, replica) = (database.url.clone(), database.replica_url.clone().unwrap());
    // The new database reaches the replica by replication.
    let db = Db::connect_replicated(&url, &[&replica]).await.unwrap();
    let mut on_replica = 0;
    for round in 0..50 {
        // A write (a lease of the writer), and the primary's position once it has returned.
        let written = {
            let mut writer = db.handle().writer().await.unwrap();
            sqlrepo_postgres::replication::current_position(writer.postgres().unwrap())
                .await
                .unwrap()
        };
        let mut conn = db.handle().reader().await.unwrap();
        // On the primary (no replay position), or on a replica that has replayed the write.
        if let Some(replayed) =
            sqlrepo_postgres::replication::replayed_position(conn.postgres().unwrap())
                .await
                .unwrap()
        {
            assert!(
                replayed >= written,
                "round {round}: a read right after a write went to a replica at {replayed}, \
                 behind the write at {written}"
            );
            on_replica += 1;
        }
    }
    eprintln!("reads on the replica right after a write: {on_replica}/50");
    // Reads with no write in between go to the replica once the Db has learnt, in the
    // background, that it has caught up: within a moment, not never.
    let started = std::time::Instant::now();
    loop {
        let mut conn = db.handle().reader().await.unwrap();
        let replayed = sqlrepo_postgres::replication::replayed_position(conn.postgres().unwrap())
            .await
            .unwrap();
        if replayed.is_some() {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "idle reads never reached the caught-up replica"
        );
        drop(conn);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    db.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn a_missing_database_is_created_only_when_asked() {
    let Some(database) = pg::create(backend::Backend::Postgres).await else {
        return;
    };
    let url = database.url.clone();
    let missing = format!("{url}_new");
    assert!(!sqlx::Postgres::database_exists(&missing).await.unwrap());
    // By default a missing database (a typo in the URL) is an error naming it, and nothing is
    // created.
    let err = Db::connect(&missing).await.unwrap_err();
    let name = missing.rsplit('/').next().unwrap();
    assert!(
        matches!(&err, Error::Config(message) if message.contains(name)),
        "{err:?}"
    );
    assert!(!sqlx::Postgres::database_exists(&missing).await.unwrap());
    // Asked for, it is created and migrated.
    let create = sqlrepo::DbOptions::default().create_database(true);
    let db = Db::connect_with(&missing, create).await.unwrap();
    db.items()
        .create(&sqlrepo::NewItem::new("lamp", serde_json::json!({})))
        .await
        .unwrap();
    db.close().await;
    assert!(sqlx::Postgres::database_exists(&missing).await.unwrap());
    // Connecting again (default options) finds it, with sqlrepo's migrations applied.
    let again = Db::connect(&missing).await.unwrap();
    assert_eq!(again.items().count().await.unwrap(), 1);
    again.close().await;
    backend::drop_database(&missing).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn a_transaction_a_service_left_open_is_rolled_back_before_the_connection_is_lent_again() {
    let Some(database) = pg::create(backend::Backend::Postgres).await else {
        return;
    };
    let url = database.url.clone();
    let db = Db::connect(&url).await.unwrap();
    {
        let mut conn = db.handle().writer().await.unwrap();
        let pg = conn.postgres().unwrap();
        sqlrepo_postgres::tx::begin(pg).await.unwrap();
        sqlrepo_postgres::tx::savepoint_call(pg).await.unwrap();
        // Dropped with the transaction open.
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Every connection the pool can lend is outside any transaction: RELEASE finds no
    // savepoint (it would succeed inside the abandoned transaction).
    let mut conns = Vec::new();
    for _ in 0..16 {
        conns.push(db.handle().writer().await.unwrap());
    }
    for conn in &mut conns {
        let released = sqlrepo_postgres::tx::release_call(conn.postgres().unwrap()).await;
        assert!(
            released.is_err(),
            "a connection was lent inside a transaction"
        );
    }
    drop(conns);
    db.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn a_cancelled_call_s_error_never_reaches_the_next_call_on_its_connection() {
    let Some(database) = pg::create(backend::Backend::Postgres).await else {
        return;
    };
    let db = Db::connect(&database.url).await.unwrap();
    let account = db
        .accounts()
        .open(&sqlrepo::NewAccount {
            user_id: None,
            balance_cents: 100,
        })
        .await
        .unwrap();
    let mut cancelled = 0;
    for round in 0..200 {
        // Polled once (the statement goes out, and PostgreSQL will refuse it: no account
        // 999999), then dropped before its answer is read.
        let refused = sqlrepo::Transfer::new(account, 999_999, 1);
        let transfer = db.accounts().transfer(&refused);
        if tokio::time::timeout(std::time::Duration::from_nanos(1), transfer)
            .await
            .is_err()
        {
            cancelled += 1;
        }
        // The next call on the same held connection gets its own answer, not the refusal.
        let got = db.accounts().get(account).await;
        assert!(
            matches!(&got, Ok(Some(a)) if a.balance_cents == 100),
            "round {round}: {got:?}"
        );
    }
    assert!(cancelled > 0, "no call was cancelled mid-flight");
    db.close().await;
}
