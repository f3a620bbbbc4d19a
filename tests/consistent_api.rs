//! One API across the built-in repositories (issue 24 point 4): `count` and `get_many` on users
//! and orders as on items, `new` on every `New*`, and the constants gathered in `limits`, on
//! both backends.

mod common;

use common::{TestDb, backend_test, user};
use sqlrepo::{Error, NewAccount, NewOrder, NewUser, limits};

backend_test!(users_get_many_reads_the_known_ids_once_each_in_id_order);
async fn users_get_many_reads_the_known_ids_once_each_in_id_order(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let bob = user(&db, "bob@example.com", "Bob").await;
    let cy = user(&db, "cy@example.com", "Cy").await;
    let found = db.users().get_many(&[cy, 999, ann, cy]).await.unwrap();
    let ids: Vec<i64> = found.iter().map(|u| u.id).collect();
    assert_eq!(ids, [ann, cy]);
    assert_eq!(found[0], db.users().get(ann).await.unwrap().unwrap());
    assert_eq!(found[1].email, "cy@example.com");
    assert!(db.users().get_many(&[]).await.unwrap().is_empty());
    assert!(db.users().get_many(&[999]).await.unwrap().is_empty());
    assert_eq!(db.users().get_many(&[bob]).await.unwrap()[0].name, "Bob");
}

backend_test!(users_count_follows_creates_and_deletes);
async fn users_count_follows_creates_and_deletes(db: TestDb) {
    assert_eq!(db.users().count().await.unwrap(), 0);
    let ann = user(&db, "ann@example.com", "Ann").await;
    // Read right after the write: on a replicated Db too (a caller reads its own writes).
    assert_eq!(db.users().count().await.unwrap(), 1);
    db.users()
        .insert_many(&[
            NewUser::new("bob@example.com", "Bob"),
            NewUser::new("cy@example.com", "Cy"),
        ])
        .await
        .unwrap();
    assert_eq!(db.users().count().await.unwrap(), 3);
    assert!(db.users().delete(ann).await.unwrap());
    assert_eq!(db.users().count().await.unwrap(), 2);
}

backend_test!(orders_get_many_and_count_agree_with_get);
async fn orders_get_many_and_count_agree_with_get(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    assert_eq!(db.orders().count().await.unwrap(), 0);
    let first = db.orders().create(&NewOrder::new(ann, 100)).await.unwrap();
    let second = db.orders().create(&NewOrder::new(ann, 250)).await.unwrap();
    assert_eq!(db.orders().count().await.unwrap(), 2);
    let found = db
        .orders()
        .get_many(&[second, first, second, -5])
        .await
        .unwrap();
    assert_eq!(
        found,
        [
            db.orders().get(first).await.unwrap().unwrap(),
            db.orders().get(second).await.unwrap().unwrap()
        ]
    );
    assert_eq!(found[1].total_cents, 250);
    assert!(db.orders().delete(first).await.unwrap());
    assert_eq!(db.orders().count().await.unwrap(), 1);
    assert_eq!(db.orders().get_many(&[first]).await.unwrap(), []);
}

backend_test!(an_oversized_get_many_is_invalid_input_before_the_database);
async fn an_oversized_get_many_is_invalid_input_before_the_database(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    db.orders().create(&NewOrder::new(ann, 100)).await.unwrap();
    let before = db.snapshot().await;
    let ids: Vec<i64> = (0..=limits::MAX_BATCH_ROWS as i64).collect();
    for refused in [
        db.users().get_many(&ids).await.map(|rows| rows.len()),
        db.orders().get_many(&ids).await.map(|rows| rows.len()),
    ] {
        assert!(
            matches!(&refused, Err(Error::InvalidInput(message)) if message.contains("get_many")),
            "{refused:?}"
        );
    }
    assert_eq!(db.snapshot().await, before);
    // The largest batch accepted is read.
    let most: Vec<i64> = (0..limits::MAX_BATCH_ROWS as i64).collect();
    assert_eq!(db.users().get_many(&most).await.unwrap().len(), 1);
}

backend_test!(new_account_opens_what_it_says);
async fn new_account_opens_what_it_says(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let mine = db
        .accounts()
        .open(&NewAccount::new(Some(ann), 500))
        .await
        .unwrap();
    let nobodys = db.accounts().open(&NewAccount::new(None, 0)).await.unwrap();
    let mine = db.accounts().get(mine).await.unwrap().unwrap();
    assert_eq!((mine.user_id, mine.balance_cents), (Some(ann), 500));
    let nobodys = db.accounts().get(nobodys).await.unwrap().unwrap();
    assert_eq!((nobodys.user_id, nobodys.balance_cents), (None, 0));
}

#[test]
fn the_scattered_constants_are_in_limits_and_still_at_their_first_paths() {
    assert_eq!(limits::MAX_GROUP, sqlrepo::MAX_GROUP);
    assert_eq!(
        limits::DASHBOARD_RECENT_ORDERS,
        sqlrepo::DASHBOARD_RECENT_ORDERS
    );
    assert_eq!(
        limits::IDEMPOTENCY_KEY_CONSTRAINT,
        sqlrepo::IDEMPOTENCY_KEY_CONSTRAINT
    );
    assert_eq!(
        limits::IDEMPOTENCY_KEY_CONSTRAINT,
        "transfers.idempotency_key"
    );
}
