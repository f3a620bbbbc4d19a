//! Opening a database: options, a caller's own pool, and files that are not what they seem.

mod common;

use common::{TestDb, backend_test, dump_all, fresh_db_with};
use serde_json::json;
use sqlrepo::{Db, DbOptions, Error, NewAccount, NewItem, NewUser, Transfer};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

// SQLite only: `from_pool` takes a SqlitePool.
#[tokio::test]
async fn a_db_from_the_callers_pool_works_once_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("pool.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let db = Db::from_pool(pool);
    assert!(matches!(
        db.items().count().await.unwrap_err(),
        Error::Schema(_)
    ));
    db.migrate().await.unwrap();
    db.migrate().await.unwrap(); // a second run has nothing to do

    let a = db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 100,
        })
        .await
        .unwrap();
    let b = db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await
        .unwrap();
    // Foreign keys are on in sqlx's default pool options, so a missing account is refused.
    assert!(matches!(
        db.accounts()
            .transfer(&Transfer::new(a, 99, 1))
            .await
            .unwrap_err(),
        Error::NotFound { id: 99, .. }
    ));
    let tx = db.begin().await.unwrap();
    tx.accounts()
        .transfer(&Transfer::new(a, b, 40))
        .await
        .unwrap();
    tx.items()
        .create(&NewItem::new("in tx", json!({})))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        db.accounts().get(b).await.unwrap().unwrap().balance_cents,
        40
    );
    assert_eq!(db.items().count().await.unwrap(), 1);
    db.close().await;
    assert!(db.items().count().await.is_err());
}

// SQLite only (this one and the next two): files on disk.
#[tokio::test]
async fn create_if_missing_false_refuses_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let err = Db::open_with(DbOptions::new(&path).create_if_missing(false))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_path_in_a_missing_directory_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = Db::open(dir.path().join("no/such/dir/app.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err:?}");
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let err = Db::open(&path).await.unwrap_err();
    // SQLITE_NOTADB: the file needs restoring, not the query fixing.
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

backend_test!(one_reader_is_enough_and_reads_see_every_commit, |options| {
    options.readers(0)
});
async fn one_reader_is_enough_and_reads_see_every_commit(db: TestDb) {
    assert_eq!(db.items().count().await.unwrap(), 0);
    let (a, b) = tokio::join!(
        db.items().create(&NewItem::new("a", json!(1))),
        db.users().create(&NewUser::new("a@example.com", "A"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (item, user) = tokio::join!(db.items().get(a), db.users().get(b));
    assert!(item.unwrap().is_some() && user.unwrap().is_some());
}

backend_test!(reopening_a_file_keeps_everything_and_migrates_nothing_twice);
async fn reopening_a_file_keeps_everything_and_migrates_nothing_twice(db: TestDb) {
    db.items()
        .create(&NewItem::new("kept", json!({"k": 1})))
        .await
        .unwrap();
    let seen = common::backend::snapshot(&db).await;
    db.close().await;
    let before = db.sqlite_path().map(dump_all);
    let reopened = db.reopen().await;
    assert_eq!(reopened.items().count().await.unwrap(), 1);
    assert_eq!(common::backend::snapshot(&reopened).await, seen);
    assert_eq!(db.sqlite_path().map(dump_all), before);
}

// SQLite only (this one and the next): a file path, and the WAL file.
#[tokio::test]
async fn opening_runs_in_a_spawned_task() {
    // Db::open's future must be Send: services open the database inside spawned tasks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spawned.db");
    let db = tokio::spawn(async move { Db::open(path).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(db.items().count().await.unwrap(), 0);
    let migrated = tokio::spawn({
        let db = db.clone();
        async move { db.migrate().await }
    });
    migrated.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_wal_file_shrinks_back_after_a_big_write_instead_of_keeping_its_high_water_size() {
    const LIMIT_BYTES: u64 = 16 << 20; // the `journal_size_limit` every connection gets
    let db = fresh_db_with(|options| options).await;
    let wal = db.path.with_extension("db-wal");
    // 24 MiB in one statement: the WAL has to hold all of it until the checkpoint.
    let big: Vec<NewItem> = (0..24)
        .map(|i| NewItem::new(format!("big-{i}"), json!("x".repeat((1 << 20) - 2))))
        .collect();
    db.items().insert_many(&big).await.unwrap();
    let high_water = std::fs::metadata(&wal).unwrap().len();
    assert!(high_water > LIMIT_BYTES, "{high_water}");

    // The commit checkpointed it (autocheckpoint); the next writes start the WAL over, and
    // with the limit SQLite truncates the file then instead of reusing its full size.
    for i in 0..3 {
        db.items()
            .create(&NewItem::new(format!("small-{i}"), json!({})))
            .await
            .unwrap();
    }
    let after = std::fs::metadata(&wal).unwrap().len();
    assert!(
        after <= LIMIT_BYTES,
        "the WAL kept {after} bytes (limit {LIMIT_BYTES})"
    );
    assert_eq!(db.items().count().await.unwrap(), 27);
}
