//! The file is shared: the seed's Python during a port, a service's own SQL, an operator with
//! the sqlite3 shell. Data they write legally but unusually (timestamps in SQLite's own format,
//! ids of zero and below, sums past 64 bits, values past SQLite's limits) reads the same on
//! every path, and errors blame the right party.

mod common;

use common::{dump, dump_all, fresh_db, raw, user};
use futures_util::TryStreamExt;
use serde_json::json;
use sqlrepo::{Error, ItemStatus, NewItem, NewOrder};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The text SQLite stores in a column.
fn stored_text(path: &std::path::Path, sql: &str, id: i64) -> String {
    raw(path).query_row(sql, [id], |row| row.get(0)).unwrap()
}

// ---- timestamps written by other programs ----

#[tokio::test]
async fn items_with_sqlite_style_timestamps_read_the_same_on_every_path() {
    let db = fresh_db().await;
    db.items()
        .create(&NewItem::new("ours", json!({})))
        .await
        .unwrap();
    let conn = raw(&db.path);
    // What the sqlite3 shell or a Python service writes: `YYYY-MM-DD HH:MM:SS`.
    conn.execute(
        "INSERT INTO items (name, data, created_at, updated_at)
         VALUES ('theirs', '{}', '2024-02-29 13:14:15', CURRENT_TIMESTAMP)",
        [],
    )
    .unwrap();
    let theirs = conn.last_insert_rowid();

    let got = db.items().get(theirs).await.unwrap().unwrap();
    assert_eq!(
        got.created_at,
        OffsetDateTime::parse("2024-02-29T13:14:15Z", &Rfc3339).unwrap()
    );
    let streamed: Vec<_> = db.items().stream().try_collect().await.unwrap();
    let fetched = db.items().get_many(&[1, theirs]).await.unwrap();
    let listed = db.items().list_by_status(ItemStatus::Active).await.unwrap();
    let page = db
        .items()
        .list_by_status_page(ItemStatus::Active, None, 10)
        .await
        .unwrap();
    assert_eq!(streamed.len(), 2);
    assert_eq!(streamed, fetched);
    assert_eq!(streamed, listed);
    assert_eq!(streamed, page.items);
    assert_eq!(streamed[1], got);
    // Stored in the one canonical form, which sorts as text.
    assert_eq!(
        stored_text(
            &db.path,
            "SELECT created_at FROM items WHERE id = ?1",
            theirs
        ),
        "2024-02-29T13:14:15.000Z"
    );
}

#[tokio::test]
async fn an_update_by_other_sql_with_current_timestamp_is_stored_canonically() {
    let db = fresh_db().await;
    let id = db
        .items()
        .create(&NewItem::new("lamp", json!({})))
        .await
        .unwrap();
    raw(&db.path)
        .execute(
            "UPDATE items SET updated_at = '2031-05-06 07:08:09' WHERE id = ?1",
            [id],
        )
        .unwrap();
    assert_eq!(
        stored_text(&db.path, "SELECT updated_at FROM items WHERE id = ?1", id),
        "2031-05-06T07:08:09.000Z"
    );
    let streamed: Vec<_> = db.items().stream().try_collect().await.unwrap();
    assert_eq!(
        streamed[0].updated_at,
        OffsetDateTime::parse("2031-05-06T07:08:09Z", &Rfc3339).unwrap()
    );
}

#[tokio::test]
async fn orders_written_with_datetime_now_sort_newest_first_everywhere() {
    let db = fresh_db().await;
    let ann = user(&db, "ann@example.com", "Ann").await;
    let ours = db.orders().create(&NewOrder::new(ann, 100)).await.unwrap();
    let conn = raw(&db.path);
    // An hour from now in SQLite's format: as text, `2026-01-01 16:00:00` sorts before
    // `2026-01-01T15:00:00.000Z`, so unnormalised it would come out older than ours.
    conn.execute(
        "INSERT INTO orders (user_id, total, created_at) VALUES (?1, 250, datetime('now', '+1 hour'))",
        [ann],
    )
    .unwrap();
    let later = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO orders (user_id, total, created_at) VALUES (?1, 50, datetime('now', '-1 day'))",
        [ann],
    )
    .unwrap();
    let earlier = conn.last_insert_rowid();

    let recent: Vec<i64> = db
        .orders()
        .recent_for_user(ann, 10)
        .await
        .unwrap()
        .iter()
        .map(|order| order.id)
        .collect();
    assert_eq!(recent, [later, ours, earlier]);
    let dashboard = db.dashboard(ann).await.unwrap();
    let on_dashboard: Vec<i64> = dashboard.recent_orders.iter().map(|o| o.id).collect();
    assert_eq!(on_dashboard, recent);
    assert_eq!(
        dashboard.recent_orders[0],
        db.orders().get(later).await.unwrap().unwrap()
    );
    assert_eq!(dashboard.stats.total_cents, 400);
}

#[tokio::test]
async fn users_and_accounts_written_with_current_timestamp_read_back() {
    let db = fresh_db().await;
    let conn = raw(&db.path);
    conn.execute(
        "INSERT INTO users (email, name, created_at) VALUES ('py@example.com', 'Py', CURRENT_TIMESTAMP)",
        [],
    )
    .unwrap();
    let py = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO accounts (user_id, balance, created_at) VALUES (?1, 0, CURRENT_TIMESTAMP)",
        [py],
    )
    .unwrap();
    let account = conn.last_insert_rowid();
    let got = db.users().get(py).await.unwrap().unwrap();
    let streamed: Vec<_> = db.users().stream().try_collect().await.unwrap();
    assert_eq!(streamed, std::slice::from_ref(&got));
    assert_eq!(db.dashboard(py).await.unwrap().user, got);
    let opened = db.accounts().get(account).await.unwrap().unwrap();
    assert!(
        stored_text(
            &db.path,
            "SELECT created_at FROM accounts WHERE id = ?1",
            account
        )
        .ends_with('Z')
    );
    assert_eq!(opened.created_at.offset(), time::UtcOffset::UTC);
}

#[tokio::test]
async fn an_item_inserted_by_other_sql_has_each_timestamp_made_canonical_whichever_it_is() {
    // The insert trigger tests `created_at` alone when the two timestamps are one value, and
    // both otherwise: every mix of canonical and not, equal and not, ends canonical.
    let db = fresh_db().await;
    let conn = raw(&db.path);
    let cases = [
        // (created_at, updated_at) as written -> as stored
        (
            ("2024-01-02T03:04:05.678Z", "2024-01-02T03:04:05.678Z"),
            ("2024-01-02T03:04:05.678Z", "2024-01-02T03:04:05.678Z"),
        ),
        (
            ("2024-01-02 03:04:05", "2024-01-02 03:04:05"),
            ("2024-01-02T03:04:05.000Z", "2024-01-02T03:04:05.000Z"),
        ),
        (
            ("2024-01-02T03:04:05.678Z", "2024-05-06 07:08:09"),
            ("2024-01-02T03:04:05.678Z", "2024-05-06T07:08:09.000Z"),
        ),
        (
            ("2024-05-06 07:08:09", "2024-01-02T03:04:05.678Z"),
            ("2024-05-06T07:08:09.000Z", "2024-01-02T03:04:05.678Z"),
        ),
        (
            ("2024-01-02T03:04:05.678Z", "2024-05-06T07:08:09.000Z"),
            ("2024-01-02T03:04:05.678Z", "2024-05-06T07:08:09.000Z"),
        ),
    ];
    for (n, ((created, updated), (want_created, want_updated))) in cases.into_iter().enumerate() {
        conn.execute(
            "INSERT INTO items (name, created_at, updated_at) VALUES (?1, ?2, ?3)",
            (format!("theirs {n}"), created, updated),
        )
        .unwrap();
        let id = conn.last_insert_rowid();
        let stored: (String, String) = conn
            .query_row(
                "SELECT created_at, updated_at FROM items WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            stored,
            (want_created.to_owned(), want_updated.to_owned()),
            "written as {created:?}, {updated:?}"
        );
        let read = db.items().get(id).await.unwrap().unwrap();
        assert_eq!(
            read.created_at,
            OffsetDateTime::parse(want_created, &Rfc3339).unwrap()
        );
        assert_eq!(
            read.updated_at,
            OffsetDateTime::parse(want_updated, &Rfc3339).unwrap()
        );
    }
    // An unreadable `updated_at` beside a canonical `created_at` is refused, and nothing lands.
    let before = dump_all(&db.path);
    let err = conn
        .execute(
            "INSERT INTO items (name, created_at, updated_at)
             VALUES ('when?', '2024-01-02T03:04:05.678Z', 'next week')",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("must be a date and time"), "{err}");
    assert_eq!(dump_all(&db.path), before);
    // sqlrepo's own batch writes one instant into both.
    db.items()
        .insert_many(&[
            NewItem::new("ours 1", json!({})),
            NewItem::new("ours 2", json!({})),
        ])
        .await
        .unwrap();
    let ours: Vec<(String, String)> = conn
        .prepare("SELECT created_at, updated_at FROM items WHERE name LIKE 'ours %'")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ours.len(), 2);
    for (created, updated) in ours {
        assert_eq!(created, updated);
        assert!(
            OffsetDateTime::parse(&created, &Rfc3339).is_ok(),
            "{created}"
        );
    }
}

#[tokio::test]
async fn a_timestamp_sqlite_cannot_read_is_refused_and_writes_nothing() {
    let db = fresh_db().await;
    let before = dump_all(&db.path);
    let err = raw(&db.path)
        .execute(
            "INSERT INTO items (name, created_at) VALUES ('when?', 'last Tuesday')",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("must be a date and time"), "{err}");
    let err = raw(&db.path)
        .execute(
            "INSERT INTO orders (user_id, total, created_at) VALUES (1, 1, 'soon')",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("must be a date and time"), "{err}");
    assert_eq!(dump_all(&db.path), before);
}

// ---- ids of zero and below ----

#[tokio::test]
async fn the_item_stream_yields_ids_at_and_below_zero_in_order() {
    let db = fresh_db().await;
    let conn = raw(&db.path);
    for id in [7, -5, 0, i64::MIN, i64::MAX] {
        conn.execute(
            "INSERT INTO items (id, name) VALUES (?1, 'item ' || ?1)",
            [id],
        )
        .unwrap();
    }
    assert_eq!(db.items().count().await.unwrap(), 5);
    let ids: Vec<i64> = db
        .items()
        .stream()
        .map_ok(|item| item.id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, [i64::MIN, -5, 0, 7, i64::MAX]);
    let page = db
        .items()
        .list_by_status_page(ItemStatus::Active, None, 2)
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|i| i.id).collect::<Vec<_>>(),
        [i64::MIN, -5]
    );
    assert_eq!(page.next, Some(-5));
    let last = db
        .items()
        .list_by_status_page(ItemStatus::Active, Some(7), 2)
        .await
        .unwrap();
    assert_eq!(
        last.items.iter().map(|i| i.id).collect::<Vec<_>>(),
        [i64::MAX]
    );
    assert_eq!(last.next, None, "nothing can follow i64::MAX");
}

#[tokio::test]
async fn the_user_stream_yields_ids_at_and_below_zero_in_order() {
    let db = fresh_db().await;
    let conn = raw(&db.path);
    for id in [-5, 0, 7] {
        conn.execute(
            "INSERT INTO users (id, email, name) VALUES (?1, 'u' || ?1 || '@example.com', 'U')",
            [id],
        )
        .unwrap();
    }
    let ids: Vec<i64> = db
        .users()
        .stream()
        .map_ok(|user| user.id)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, [-5, 0, 7]);
}

// ---- errors that blame the right party ----

#[tokio::test]
async fn order_totals_past_i64_are_overflow_on_every_read_not_the_callers_fault() {
    let db = fresh_db().await;
    let ann = user(&db, "ann@example.com", "Ann").await;
    db.orders()
        .insert_many(&[NewOrder::new(ann, i64::MAX), NewOrder::new(ann, 1)])
        .await
        .unwrap();
    let before = dump(&db.path, "orders");
    let err = db.orders().stats_for_user(ann).await.unwrap_err();
    assert!(matches!(err, Error::Overflow(_)), "{err:?}");
    let err = db.dashboard(ann).await.unwrap_err();
    assert!(matches!(err, Error::Overflow(_)), "{err:?}");
    assert!(!err.is_retryable());
    // Reads that add nothing up still work, and nothing changed.
    assert_eq!(db.orders().recent_for_user(ann, 5).await.unwrap().len(), 2);
    assert_eq!(dump(&db.path, "orders"), before);
}

#[tokio::test]
async fn a_value_past_sqlites_length_limit_is_too_big_and_writes_nothing() {
    let db = fresh_db().await;
    let handle = db.handle();
    // `zeroblob` asks SQLite for 2e9 bytes, past its 1e9-byte limit on one value: SQLite
    // refuses before allocating, so this runs in no memory to speak of.
    let mut conn = handle.writer().await.unwrap();
    let result =
        sqlx::query("INSERT INTO items (name, data) VALUES ('big', CAST(zeroblob(?1) AS TEXT))")
            .bind(2_000_000_000_i64)
            .execute(conn.sqlite().unwrap())
            .await;
    drop(conn);
    let err = Error::from(result.unwrap_err());
    assert!(matches!(err, Error::TooBig(_)), "{err:?}");
    assert!(dump(&db.path, "items").is_empty());

    let mut conn = handle.reader().await.unwrap();
    let result: Result<(Vec<u8>,), _> = sqlx::query_as("SELECT zeroblob(?1)")
        .bind(2_000_000_000_i64)
        .fetch_one(conn.sqlite().unwrap())
        .await;
    let err = Error::from(result.unwrap_err());
    assert!(matches!(err, Error::TooBig(_)), "{err:?}");
}

#[tokio::test]
async fn a_database_damaged_on_disk_is_corrupt_not_a_generic_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    let db = sqlrepo::Db::open(&path).await.unwrap();
    let items: Vec<NewItem> = (0..2_000)
        .map(|i| NewItem::new(format!("item {i}"), json!({"i": i})))
        .collect();
    db.items().insert_many(&items).await.unwrap();
    db.close().await;
    // Overwrite every page after the schema with noise, as a failing disk might.
    let mut bytes = std::fs::read(&path).unwrap();
    let page_size = 4_096;
    for (offset, byte) in bytes.iter_mut().enumerate().skip(page_size) {
        *byte = (offset.wrapping_mul(31) % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    let result = match sqlrepo::Db::open_with(sqlrepo::DbOptions::new(&path).migrate(false)).await {
        Ok(db) => db.items().count().await.map(|_| ()),
        Err(err) => Err(err),
    };
    assert!(matches!(result, Err(Error::Corrupt(_))), "{result:?}");
}
