//! Items, users, orders and the dashboard on PostgreSQL (cargo feature `postgres`, a server at
//! `SQLREPO_PG_URL`; without one these tests print why they were skipped and pass).
#![cfg(feature = "postgres")]

use serde_json::json;
use sqlx::migrate::MigrateDatabase;
use sqlx::{Connection, PgConnection, Postgres};

/// A fresh, migrated database on the server at `SQLREPO_PG_URL`, or `None` (with the reason
/// printed) when no server is configured.
async fn fresh_database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("SQLREPO_PG_URL") else {
        eprintln!("{test}: skipped, SQLREPO_PG_URL is not set (no PostgreSQL server to test on)");
        return None;
    };
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    let url = format!("{base}/sqlrepo_t_{}_{}", test, std::process::id());
    if Postgres::database_exists(&url).await.unwrap() {
        Postgres::drop_database(&url).await.unwrap();
    }
    Postgres::create_database(&url).await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlrepo_postgres::MIGRATOR.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    Some(url)
}

fn sqlstate(err: &sqlx::Error) -> (String, Option<String>) {
    let db = err.as_database_error().expect("a database error");
    (
        db.code().unwrap().into_owned(),
        db.constraint().map(str::to_owned),
    )
}

#[tokio::test]
async fn statements_on_postgres_store_and_read_what_they_should() {
    use sqlrepo_postgres::{dashboard, items, orders, users};
    let Some(url) = fresh_database("statements").await else {
        return;
    };
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
        (row.name.as_str(), &row.data, row.status.as_str()),
        ("lamp", &json!({"watts": 40}), "active")
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
        orders::insert_batch(c, &[ann; 12], &totals)
            .await
            .unwrap(),
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
    Postgres::drop_database(&url).await.unwrap();
}
