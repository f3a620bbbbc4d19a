//! The SQL statements of the Python aiosqlite service this crate ports (its "async patterns",
//! the seed), verbatim, against a database our migrations made: a service being ported can
//! share the file meanwhile.
//!
//! Left out on purpose: `safe_insert`'s `INSERT INTO items (name, value)`, which names a column
//! `value` that no other part of the seed has; it exists there to show error handling.

mod common;

use common::{fresh_db, raw};
use rusqlite::params;
use sqlrepo::ItemStatus;

#[tokio::test]
async fn every_seed_statement_runs_unchanged_and_sqlrepo_reads_the_result() {
    let db = fresh_db().await;
    let conn = raw(&db.path);

    // get_async_connection
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch("PRAGMA foreign_keys=ON").unwrap();

    // create_item
    conn.execute(
        "INSERT INTO items (name, data) VALUES (?, ?)",
        params!["seeded", r#"{"colour": "red"}"#],
    )
    .unwrap();
    let id = conn.last_insert_rowid();

    // get_item
    let name: String = conn
        .query_row("SELECT * FROM items WHERE id = ?", [id], |row| {
            row.get("name")
        })
        .unwrap();
    assert_eq!(name, "seeded");

    // query_items
    let active = conn
        .prepare("SELECT * FROM items WHERE status = ?")
        .unwrap()
        .query_map(["active"], |row| row.get::<_, i64>("id"))
        .unwrap()
        .count();
    assert_eq!(active, 1);

    // update_item, with the statements its f-string builds for each field
    for (sql, value) in [
        ("UPDATE items SET name = ? WHERE id = ?", "renamed"),
        (
            "UPDATE items SET data = ? WHERE id = ?",
            r#"{"colour": "blue"}"#,
        ),
        ("UPDATE items SET status = ? WHERE id = ?", "inactive"),
    ] {
        assert_eq!(conn.execute(sql, params![value, id]).unwrap(), 1, "{sql}");
    }
    assert_eq!(
        conn.execute(
            "UPDATE items SET name = ?, status = ? WHERE id = ?",
            params!["renamed again", "archived", id],
        )
        .unwrap(),
        1
    );

    // sqlrepo reads what the seed wrote, defaults and all.
    let item = db.items().get(id).await.unwrap().unwrap();
    assert_eq!(item.name, "renamed again");
    assert_eq!(item.data, serde_json::json!({"colour": "blue"}));
    assert_eq!(item.status, ItemStatus::Archived);

    // batch_insert and batch_update_status (executemany = one statement, many parameter sets)
    let mut insert = conn
        .prepare("INSERT INTO items (name, data) VALUES (?, ?)")
        .unwrap();
    for i in 0..3 {
        insert.execute(params![format!("batch-{i}"), "{}"]).unwrap();
    }
    let mut update = conn
        .prepare("UPDATE items SET status = ? WHERE id = ?")
        .unwrap();
    for batch_id in [id + 1, id + 2] {
        update.execute(params!["archived", batch_id]).unwrap();
    }
    assert_eq!(db.items().count().await.unwrap(), 4);
    assert_eq!(
        db.items()
            .list_by_status(ItemStatus::Archived)
            .await
            .unwrap()
            .len(),
        3
    );

    // stream_items
    let streamed = conn
        .prepare("SELECT * FROM items ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get::<_, i64>("id"))
        .unwrap()
        .count();
    assert_eq!(streamed, 4);

    // delete_item
    assert_eq!(
        conn.execute("DELETE FROM items WHERE id = ?", [id])
            .unwrap(),
        1
    );

    // get_user and get_dashboard_data
    let user_id = db
        .users()
        .create(&sqlrepo::NewUser::new("ann@example.com", "Ann"))
        .await
        .unwrap();
    db.orders()
        .insert_many(&[
            sqlrepo::NewOrder::new(user_id, 100),
            sqlrepo::NewOrder::new(user_id, 250),
        ])
        .await
        .unwrap();
    let email: String = conn
        .query_row("SELECT * FROM users WHERE id = ?", [user_id], |row| {
            row.get("email")
        })
        .unwrap();
    assert_eq!(email, "ann@example.com");
    let recent = conn
        .prepare("SELECT * FROM orders WHERE user_id = ? ORDER BY created_at DESC LIMIT 10")
        .unwrap()
        .query_map([user_id], |row| row.get::<_, i64>("total"))
        .unwrap()
        .count();
    assert_eq!(recent, 2);
    let (count, total): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*) as count, SUM(total) as total FROM orders WHERE user_id = ?",
            [user_id],
            |row| Ok((row.get("count")?, row.get("total")?)),
        )
        .unwrap();
    assert_eq!((count, total), (2, 350));

    // batch_transfer, with integer cents (a fractional float is refused by the STRICT table)
    let a = db
        .accounts()
        .open(&sqlrepo::NewAccount {
            user_id: None,
            balance_cents: 1_000,
        })
        .await
        .unwrap();
    let b = db
        .accounts()
        .open(&sqlrepo::NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance - ? WHERE id = ?",
        params![300, a],
    )
    .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + ? WHERE id = ?",
        params![300, b],
    )
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        db.accounts().get(a).await.unwrap().unwrap().balance_cents,
        700
    );
    assert_eq!(
        db.accounts().get(b).await.unwrap().unwrap().balance_cents,
        300
    );

    // What the seed got wrong now fails loudly instead: float money and overdrafts.
    assert!(
        conn.execute(
            "UPDATE accounts SET balance = balance - ? WHERE id = ?",
            params![0.5, a]
        )
        .is_err()
    );
    assert!(
        conn.execute(
            "UPDATE accounts SET balance = balance - ? WHERE id = ?",
            params![10_000, a]
        )
        .is_err()
    );
    assert_eq!(
        db.accounts().get(a).await.unwrap().unwrap().balance_cents,
        700
    );
}
