//! Opening a database: options, a caller's own pool, and files that are not what they seem.

mod common;

use common::{dump_all, fresh_db_with};
use serde_json::json;
use sqlrepo::{Db, DbOptions, Error, NewAccount, NewItem, NewUser, Transfer};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

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
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[tokio::test]
async fn one_reader_is_enough_and_reads_see_every_commit() {
    let db = fresh_db_with(|options| options.readers(0)).await;
    assert_eq!(db.items().count().await.unwrap(), 0);
    let (a, b) = tokio::join!(
        db.items().create(&NewItem::new("a", json!(1))),
        db.users().create(&NewUser::new("a@example.com", "A"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let (item, user) = tokio::join!(db.items().get(a), db.users().get(b));
    assert!(item.unwrap().is_some() && user.unwrap().is_some());
}

#[tokio::test]
async fn reopening_a_file_keeps_everything_and_migrates_nothing_twice() {
    let db = fresh_db_with(|options| options).await;
    db.items()
        .create(&NewItem::new("kept", json!({"k": 1})))
        .await
        .unwrap();
    db.close().await;
    let before = dump_all(&db.path);
    let reopened = Db::open(&db.path).await.unwrap();
    assert_eq!(reopened.items().count().await.unwrap(), 1);
    assert_eq!(dump_all(&db.path), before);
}

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
