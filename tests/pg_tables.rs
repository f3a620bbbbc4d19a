//! Items, users, orders and the dashboard on PostgreSQL (cargo feature `postgres`, a server at
//! `SQLREPO_PG_URL`): ignored unless asked for (`-- --include-ignored`), and then a missing
//! server fails.
#![cfg(feature = "postgres")]

mod common;

use common::backend::{Backend, PgDatabase, pg};
use futures_util::TryStreamExt;
use serde_json::json;
use sqlrepo::{Db, Error, ItemPatch, ItemStatus, NewItem, NewOrder, NewUser, UserPatch};
use sqlx::{Connection, PgConnection};

/// A fresh, migrated database on the server at `SQLREPO_PG_URL` (the shared fixture of
/// `tests/common`, dropped when the guard is), or `None` (with the reason printed) when no
/// server is configured.
async fn fresh_database() -> Option<PgDatabase> {
    let database = pg::create(Backend::Postgres).await?;
    let mut conn = PgConnection::connect(&database.url).await.unwrap();
    sqlrepo_postgres::MIGRATOR.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    Some(database)
}

fn sqlstate(err: &sqlx::Error) -> (String, Option<String>) {
    let db = err.as_database_error().expect("a database error");
    (
        db.code().unwrap().into_owned(),
        db.constraint().map(str::to_owned),
    )
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn statements_on_postgres_store_and_read_what_they_should() {
    use sqlrepo_postgres::{dashboard, items, orders, users};
    let Some(database) = fresh_database().await else {
        return;
    };
    let url = database.url.clone();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let c = &mut conn;

    // Items: insert, get, duplicate, patch, status batch, pages, count.
    let lamp = items::insert_one(c, "lamp", r#"{"watts":40}"#, "active")
        .await
        .unwrap();
    let again = items::insert_one(c, "lamp", "{}", "active")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&again),
        ("23505".into(), Some("items_name_unique".into()))
    );
    let row = items::select_one(c, lamp).await.unwrap().unwrap();
    assert_eq!(
        (row.name.as_str(), row.data.as_str(), row.status.as_str()),
        ("lamp", r#"{"watts": 40}"#, "active")
    );
    assert!(
        !items::update_one(c, lamp, Some("lamp"), Some(r#"{ "watts": 40 }"#), None)
            .await
            .unwrap()
    );
    assert!(
        items::update_one(c, lamp, None, None, Some("archived"))
            .await
            .unwrap()
    );
    assert!(
        !items::update_one(c, 999, Some("x"), None, None)
            .await
            .unwrap()
    );

    let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
    let data: Vec<String> = (0..5).map(|i| format!("[{i}]")).collect();
    let statuses = vec!["active".to_owned(); 5];
    assert_eq!(
        items::insert_batch(c, &names, &data, &statuses)
            .await
            .unwrap(),
        5
    );
    // All or nothing: a repeated name fails the whole statement.
    let dup = vec!["z".to_owned(), "n1".to_owned()];
    let err = items::insert_batch(c, &dup, &data[..2], &statuses[..2])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).0, "23505");
    assert_eq!(items::count(c).await.unwrap(), 6);
    let all = items::select_page(c, i64::MIN, 100, 1 << 20, 128)
        .await
        .unwrap();
    assert!(!all.more);
    let ids: Vec<i64> = all.rows.iter().map(|r| r.id).collect();
    assert_eq!(
        all.rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["lamp", "n0", "n1", "n2", "n3", "n4"]
    );
    assert!(ids.is_sorted());
    // Pages stop at their row limit and at their byte budget (the first row always fits).
    let two = items::select_page(c, i64::MIN, 2, 1 << 20, 128)
        .await
        .unwrap();
    assert_eq!((two.rows.len(), two.more), (2, true));
    let tight = items::select_page(c, i64::MIN, 100, 1, 128).await.unwrap();
    assert_eq!((tight.rows.len(), tight.more), (1, true));
    let last = items::select_page(c, ids[5], 100, 1 << 20, 128)
        .await
        .unwrap();
    assert_eq!((last.rows.len(), last.more), (1, false));
    let active = items::select_status_page(c, "active", i64::MIN, 3, 1 << 20, 128)
        .await
        .unwrap();
    assert_eq!((active.rows.len(), active.more), (3, true));
    assert_eq!(
        items::select_by_status(c, "archived").await.unwrap().len(),
        1
    );
    let many = items::select_many(c, &[ids[2], ids[1], ids[2], 999])
        .await
        .unwrap();
    assert_eq!(
        many.iter().map(|r| r.id).collect::<Vec<_>>(),
        [ids[1], ids[2]]
    );
    // Only real changes count: lamp is already archived, 999 does not exist, ids repeat.
    let changed = items::update_status_batch(c, &[lamp, ids[1], ids[1], 999], "archived")
        .await
        .unwrap();
    assert_eq!(changed, 1);
    assert!(items::delete_one(c, lamp).await.unwrap());
    assert!(!items::delete_one(c, lamp).await.unwrap());

    // Users: case-insensitive unique email and lookup, binary patch comparison.
    let ann = users::insert_one(c, "Ann@Example.com", "Ann")
        .await
        .unwrap();
    let err = users::insert_one(c, "ann@example.COM", "Other")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err),
        ("23505".into(), Some("users_email_unique".into()))
    );
    assert_eq!(
        users::select_by_email(c, "ANN@example.com")
            .await
            .unwrap()
            .unwrap()
            .id,
        ann
    );
    assert!(
        !users::update_one(c, ann, Some("Ann@Example.com"), Some("Ann"))
            .await
            .unwrap()
    );
    assert!(
        users::update_one(c, ann, Some("ann@example.com"), None)
            .await
            .unwrap()
    );
    let emails = vec!["b@x.io".to_owned(), "c@x.io".to_owned()];
    let unames = vec!["B".to_owned(), "C".to_owned()];
    assert_eq!(users::insert_batch(c, &emails, &unames).await.unwrap(), 2);
    let page = users::select_page(c, i64::MIN, 10).await.unwrap();
    assert_eq!(
        page.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["Ann", "B", "C"]
    );

    // Orders: foreign keys, newest first with ties by id, stats, overflow.
    let err = orders::insert_one(c, 999, 5).await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        ("23503".into(), Some("orders_user_fk".into()))
    );
    let err = orders::insert_batch(c, &[ann, 999], &[1, 2])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).0, "23503");
    assert_eq!(
        orders::select_stats(c, ann).await.unwrap(),
        orders::StatsRow { count: 0, total: 0 }
    );
    // One statement: every row gets the same now(), so the tie goes to the higher id.
    let totals: Vec<i64> = (1..=12).collect();
    assert_eq!(
        orders::insert_batch(c, &[ann; 12], &totals).await.unwrap(),
        12
    );
    let recent = orders::select_recent(c, ann, 3).await.unwrap();
    assert_eq!(
        recent.iter().map(|o| o.total).collect::<Vec<_>>(),
        [12, 11, 10]
    );
    assert_eq!(
        orders::select_stats(c, ann).await.unwrap(),
        orders::StatsRow {
            count: 12,
            total: 78
        }
    );
    let err = users::delete_one(c, ann).await.unwrap_err();
    assert_eq!(sqlstate(&err).0, "23503");

    let board = dashboard::select(c, ann).await.unwrap().unwrap();
    assert_eq!(board.email, "ann@example.com");
    assert_eq!(board.recent_totals, (3..=12).rev().collect::<Vec<i64>>());
    assert_eq!(board.recent_ids.len(), 10);
    assert!(board.recent_ids.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(board.recent_created_at.len(), 10);
    assert_eq!((board.order_count, board.order_total), (12, 78));
    let empty = users::insert_one(c, "d@x.io", "D").await.unwrap();
    let board = dashboard::select(c, empty).await.unwrap().unwrap();
    assert!(board.recent_ids.is_empty());
    assert_eq!((board.order_count, board.order_total), (0, 0));
    assert!(dashboard::select(c, 999).await.unwrap().is_none());

    let big = users::insert_one(c, "e@x.io", "E").await.unwrap();
    orders::insert_batch(c, &[big, big], &[i64::MAX, 1])
        .await
        .unwrap();
    assert_eq!(
        sqlstate(&orders::select_stats(c, big).await.unwrap_err()).0,
        "22003"
    );
    assert_eq!(
        sqlstate(&dashboard::select(c, big).await.unwrap_err()).0,
        "22003"
    );

    let order = orders::select_recent(c, ann, 1).await.unwrap()[0].clone();
    assert_eq!(
        orders::select_one(c, order.id).await.unwrap(),
        Some(order.clone())
    );
    assert!(orders::delete_one(c, order.id).await.unwrap());
    assert_eq!(orders::select_one(c, order.id).await.unwrap(), None);
    conn.close().await.unwrap();
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn items_through_db_connect_behave_as_on_sqlite() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let url = database.url.clone();
    let db = Db::connect(&url).await.unwrap();
    let items = db.items();
    let lamp = items
        .create(&NewItem::new("lamp", json!({"watts": 40})))
        .await
        .unwrap();
    let got = items.get(lamp).await.unwrap().unwrap();
    assert_eq!(
        (got.name.as_str(), &got.data, got.status),
        ("lamp", &json!({"watts": 40}), ItemStatus::Active)
    );
    assert_eq!(items.get(999).await.unwrap(), None);
    let dup = items.create(&NewItem::new("lamp", json!({}))).await;
    assert!(
        matches!(&dup, Err(Error::Duplicate { constraint }) if constraint == "items.name"),
        "{dup:?}"
    );
    assert!(matches!(
        items.create(&NewItem::new(" ", json!({}))).await,
        Err(Error::InvalidInput(_))
    ));

    let patch = ItemPatch {
        status: Some(ItemStatus::Inactive),
        ..Default::default()
    };
    assert!(items.update(lamp, &patch).await.unwrap());
    assert!(
        !items.update(lamp, &patch).await.unwrap(),
        "the same values again change nothing"
    );
    assert!(!items.update(999, &patch).await.unwrap());
    let rename = ItemPatch {
        name: Some("lamp".into()),
        ..Default::default()
    };
    assert!(!items.update(lamp, &rename).await.unwrap());

    // insert_many: all or nothing, then every row, ids in slice order.
    let bad = [NewItem::new("a", json!(1)), NewItem::new("lamp", json!(2))];
    let refused = items.insert_many(&bad).await;
    assert!(matches!(refused, Err(Error::Duplicate { constraint }) if constraint == "items.name"));
    assert_eq!(items.count().await.unwrap(), 1);
    assert_eq!(items.insert_many(&[]).await.unwrap(), 0);
    let batch: Vec<NewItem> = (0..100_000)
        .map(|i| NewItem::new(format!("item-{i}"), json!({"i": i})))
        .collect();
    assert_eq!(items.insert_many(&batch).await.unwrap(), 100_000);
    assert_eq!(items.count().await.unwrap(), 100_001);

    let streamed: Vec<sqlrepo::Item> = items.stream().try_collect().await.unwrap();
    assert_eq!(streamed.len(), 100_001);
    assert!(streamed.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(streamed[1].name, "item-0");
    assert_eq!(streamed[100_000].name, "item-99999");
    assert_eq!(streamed[100_000].data, json!({"i": 99_999}));
    let ids: Vec<i64> = streamed.iter().map(|item| item.id).collect();

    // set_status_many counts only real changes.
    let changed = items
        .set_status_many(
            &[lamp, ids[1], ids[2], ids[2], 9_999_999],
            ItemStatus::Inactive,
        )
        .await
        .unwrap();
    assert_eq!(changed, 2);
    assert_eq!(
        items
            .list_by_status(ItemStatus::Inactive)
            .await
            .unwrap()
            .len(),
        3
    );
    let many = items.get_many(&[ids[2], lamp, 9_999_999]).await.unwrap();
    assert_eq!(
        many.iter().map(|i| i.id).collect::<Vec<_>>(),
        [lamp, ids[2]]
    );
    let first = items
        .list_by_status_page(ItemStatus::Inactive, None, 2)
        .await
        .unwrap();
    assert_eq!(
        first.items.iter().map(|i| i.id).collect::<Vec<_>>(),
        [lamp, ids[1]]
    );
    let second = items
        .list_by_status_page(ItemStatus::Inactive, first.next, 2)
        .await
        .unwrap();
    assert_eq!((second.items.len(), second.next), (1, None));

    assert!(items.delete(lamp).await.unwrap());
    assert!(!items.delete(lamp).await.unwrap());
    assert_eq!(items.count().await.unwrap(), 100_000);
    db.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set SQLREPO_PG_URL (.ci/pg-cluster); run with -- --include-ignored"]
async fn users_orders_and_the_dashboard_through_db_connect_behave_as_on_sqlite() {
    let Some(database) = fresh_database().await else {
        return;
    };
    let url = database.url.clone();
    let db = Db::connect(&url).await.unwrap();
    let (users, orders) = (db.users(), db.orders());
    let ann = users
        .create(&NewUser::new("Ann@Example.com", "Ann"))
        .await
        .unwrap();
    let dup = users
        .create(&NewUser::new("ann@example.com", "Other"))
        .await;
    assert!(
        matches!(&dup, Err(Error::Duplicate { constraint }) if constraint == "users.email"),
        "{dup:?}"
    );
    assert_eq!(
        users
            .get_by_email("ANN@EXAMPLE.COM")
            .await
            .unwrap()
            .unwrap()
            .id,
        ann
    );
    assert_eq!(users.get(999).await.unwrap(), None);
    let patch = UserPatch {
        name: Some("Ann B".into()),
        ..Default::default()
    };
    assert!(users.update(ann, &patch).await.unwrap());
    assert!(!users.update(ann, &patch).await.unwrap());
    assert_eq!(users.get(ann).await.unwrap().unwrap().name, "Ann B");
    let batch = [
        NewUser::new("b@x.io", "B"),
        NewUser::new("b@x.io", "B again"),
    ];
    assert!(matches!(
        users.insert_many(&batch).await,
        Err(Error::Duplicate { .. })
    ));
    assert_eq!(users.insert_many(&batch[..1]).await.unwrap(), 1);
    let all: Vec<sqlrepo::User> = users.stream().try_collect().await.unwrap();
    assert_eq!(
        all.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["Ann B", "B"]
    );

    // Orders: unknown users are ForeignKey, one by one and in a batch (nothing written).
    assert!(matches!(
        orders.create(&NewOrder::new(999, 5)).await,
        Err(Error::ForeignKey)
    ));
    let mixed = [NewOrder::new(ann, 1), NewOrder::new(999, 2)];
    assert!(matches!(
        orders.insert_many(&mixed).await,
        Err(Error::ForeignKey)
    ));
    assert_eq!(
        orders.stats_for_user(ann).await.unwrap(),
        sqlrepo::OrderStats {
            count: 0,
            total_cents: 0
        }
    );
    let first = orders.create(&NewOrder::new(ann, 100)).await.unwrap();
    let batch: Vec<NewOrder> = (1..=12).map(|t| NewOrder::new(ann, t)).collect();
    assert_eq!(orders.insert_many(&batch).await.unwrap(), 12);
    // The batch shares one created_at: the one inserted last comes first.
    let recent = orders.recent_for_user(ann, 3).await.unwrap();
    assert_eq!(
        recent.iter().map(|o| o.total_cents).collect::<Vec<_>>(),
        [12, 11, 10]
    );
    assert!(recent.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(orders.get(first).await.unwrap().unwrap().total_cents, 100);
    assert_eq!(
        orders.stats_for_user(ann).await.unwrap(),
        sqlrepo::OrderStats {
            count: 13,
            total_cents: 178
        }
    );
    assert!(matches!(users.delete(ann).await, Err(Error::ForeignKey)));
    assert!(users.get(ann).await.unwrap().is_some());

    let board = db.dashboard(ann).await.unwrap();
    assert_eq!(board.user.name, "Ann B");
    assert_eq!(
        board.recent_orders,
        orders.recent_for_user(ann, 10).await.unwrap()
    );
    assert_eq!(
        board.stats,
        sqlrepo::OrderStats {
            count: 13,
            total_cents: 178
        }
    );
    let b = users.get_by_email("b@x.io").await.unwrap().unwrap().id;
    let empty = db.dashboard(b).await.unwrap();
    assert!(empty.recent_orders.is_empty());
    assert_eq!(empty.stats, sqlrepo::OrderStats::default());
    assert!(matches!(
        db.dashboard(999).await,
        Err(Error::NotFound {
            entity: "user",
            id: 999
        })
    ));

    // Totals past i64 are legal data: Overflow, as on SQLite.
    orders
        .insert_many(&[NewOrder::new(b, i64::MAX), NewOrder::new(b, 1)])
        .await
        .unwrap();
    assert!(matches!(
        orders.stats_for_user(b).await,
        Err(Error::Overflow(_))
    ));

    // Several repositories in one transaction: a failed call undoes only itself.
    let tx = db.begin().await.unwrap();
    let order = tx.orders().create(&NewOrder::new(ann, 7)).await.unwrap();
    assert!(matches!(
        tx.orders().create(&NewOrder::new(999, 1)).await,
        Err(Error::ForeignKey)
    ));
    tx.items()
        .create(&NewItem::new("in-tx", json!(null)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(orders.get(order).await.unwrap().unwrap().total_cents, 7);
    assert_eq!(db.items().count().await.unwrap(), 1);

    for order in orders.recent_for_user(ann, 100).await.unwrap() {
        assert!(orders.delete(order.id).await.unwrap());
    }
    assert!(users.delete(ann).await.unwrap());
    assert!(!users.delete(ann).await.unwrap());
    db.close().await;
}
