//! A service's own statements on sqlrepo's connections: through `Db::handle` they queue with
//! ours on the one writer, through `Tx::handle` they commit or roll back with ours, and their
//! errors classify as ours do. (The service's own tables and migrations are exercised by the
//! example service crate; these tests use our tables so they need no second schema.)

mod common;

use serde_json::json;
use sqlrepo::{Conn, Error, Handle, NewItem, Result};

/// A service's repository, shaped like sqlrepo's own: a `Handle` and checked statements.
#[derive(Clone)]
struct LabelRepo {
    handle: Handle,
}

impl LabelRepo {
    /// Inserts an item the service's way (its own checked statement) and returns its id.
    async fn add(&self, name: &str) -> Result<i64> {
        let mut conn: Conn = self.handle.writer().await?;
        let result = sqlx::query!("INSERT INTO items (name) VALUES (?1)", name)
            .execute(conn.statements()?)
            .await?;
        Ok(result.last_insert_rowid())
    }

    async fn count(&self) -> Result<i64> {
        let mut conn = self.handle.reader().await?;
        Ok(
            sqlx::query_scalar!(r#"SELECT count(*) AS "count!: i64" FROM items"#)
                .fetch_one(conn.statements()?)
                .await?,
        )
    }
}

#[tokio::test]
async fn service_writes_through_the_writer_queue_with_ours_and_never_meet_busy() {
    let test = common::fresh_db().await;
    let labels = LabelRepo {
        handle: test.db.handle(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let (db, labels) = (test.db.clone(), labels.clone());
        tasks.spawn(async move {
            for n in 0..50 {
                if task % 2 == 0 {
                    labels.add(&format!("service-{task}-{n}")).await?;
                } else {
                    db.items()
                        .create(&NewItem::new(format!("ours-{task}-{n}"), json!(n)))
                        .await?;
                }
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(outcome) = tasks.join_next().await {
        outcome.unwrap().unwrap(); // no Busy, no error of any kind
    }
    assert_eq!(labels.count().await.unwrap(), 16 * 50);
    assert_eq!(test.db.items().count().await.unwrap(), 16 * 50);
}

#[tokio::test]
async fn service_statements_in_a_tx_commit_with_ours() {
    let test = common::fresh_db().await;
    let tx = test.db.begin().await.unwrap();
    let labels = LabelRepo {
        handle: tx.handle(),
    };
    labels.add("service-row").await.unwrap();
    tx.items()
        .create(&NewItem::new("our-row", json!(1)))
        .await
        .unwrap();
    // Inside the transaction both are visible; outside, neither yet.
    assert_eq!(labels.count().await.unwrap(), 2);
    assert_eq!(test.db.items().count().await.unwrap(), 0);
    tx.commit().await.unwrap();
    assert_eq!(test.db.items().count().await.unwrap(), 2);
}

#[tokio::test]
async fn dropping_the_tx_keeps_neither_the_services_rows_nor_ours() {
    let test = common::fresh_db().await;
    let tx = test.db.begin().await.unwrap();
    let labels = LabelRepo {
        handle: tx.handle(),
    };
    labels.add("service-row").await.unwrap();
    tx.items()
        .create(&NewItem::new("our-row", json!(1)))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(test.db.items().count().await.unwrap(), 0);
    // The service's repository of the dropped Tx refuses work.
    let late = labels.add("late").await;
    assert!(matches!(late, Err(Error::RolledBack(_))), "{late:?}");
    assert_eq!(test.db.items().count().await.unwrap(), 0);
}

#[tokio::test]
async fn the_services_errors_classify_as_ours() {
    let test = common::fresh_db().await;
    let labels = LabelRepo {
        handle: test.db.handle(),
    };
    labels.add("taken").await.unwrap();
    match labels.add("taken").await {
        Err(Error::Duplicate { constraint }) => assert_eq!(constraint, "items.name"),
        other => panic!("expected Duplicate(items.name), got {other:?}"),
    }
    assert_eq!(labels.count().await.unwrap(), 1);
}

#[tokio::test]
async fn our_repositories_are_built_from_any_handle() {
    let test = common::fresh_db().await;
    let items = sqlrepo::ItemRepo::new(test.db.handle());
    let id = items
        .create(&NewItem::new("via-handle", json!(1)))
        .await
        .unwrap();
    let tx = test.db.begin().await.unwrap();
    let in_tx = sqlrepo::ItemRepo::new(tx.handle());
    assert!(in_tx.delete(id).await.unwrap());
    tx.rollback().await.unwrap();
    assert!(test.db.items().get(id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_check_or_not_null_the_schema_refuses_is_a_constraint_error_naming_it() {
    let test = common::fresh_db().await;
    let labels = LabelRepo {
        handle: test.db.handle(),
    };
    let id = labels.add("lamp").await.unwrap();
    let mut conn = test.db.handle().writer().await.unwrap();
    // A value our repositories would refuse first (ItemStatus has no "bogus"), written by a
    // service's own statement: the table's CHECK refuses it, by name.
    let bogus = sqlx::query!("UPDATE items SET status = 'bogus' WHERE id = ?1", id)
        .execute(conn.statements().unwrap())
        .await
        .map_err(Error::from);
    match bogus {
        Err(Error::Constraint { constraint }) => assert_eq!(constraint, "items_status_known"),
        other => panic!("expected Constraint(items_status_known), got {other:?}"),
    }
    let missing: Option<&str> = None;
    let null_name = sqlx::query!("INSERT INTO items (name) VALUES (?1)", missing)
        .execute(conn.statements().unwrap())
        .await
        .map_err(Error::from);
    match null_name {
        Err(Error::Constraint { constraint }) => assert_eq!(constraint, "items.name"),
        other => panic!("expected Constraint(items.name), got {other:?}"),
    }
    drop(conn);
    // Neither statement changed anything.
    let item = test.db.items().get(id).await.unwrap().unwrap();
    assert_eq!(item.status, sqlrepo::ItemStatus::Active);
    assert_eq!(labels.count().await.unwrap(), 1);
}

#[tokio::test]
async fn a_finished_tx_is_its_own_error_and_changes_nothing() {
    let test = common::fresh_db().await;
    let tx = test.db.begin().await.unwrap();
    let handle = tx.handle();
    let labels = LabelRepo {
        handle: handle.clone(),
    };
    labels.add("in-tx").await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(handle.writer().await, Err(Error::TxFinished)));
    assert!(matches!(handle.reader().await, Err(Error::TxFinished)));
    let late = labels.add("late").await;
    assert!(matches!(late, Err(Error::TxFinished)), "{late:?}");
    assert!(!Error::TxFinished.is_retryable());
    assert_eq!(test.db.items().count().await.unwrap(), 1);
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_other_backends_connection_is_a_wrong_backend_error() {
    let test = common::fresh_db().await;
    let mut conn = test.db.handle().writer().await.unwrap();
    let err = conn.postgres().unwrap_err();
    assert!(
        matches!(&err, Error::WrongBackend(m) if m.contains("Conn::sqlite")),
        "{err:?}"
    );
    drop(conn);
    assert!(matches!(test.db.items().count().await, Ok(0)));
}
