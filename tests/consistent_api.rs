//! One API across the built-in repositories (issue 24 point 4): `count` and `get_many` on users
//! and orders as on items, `new` on every `New*`, and the constants gathered in `limits`, on
//! both backends.

mod common;

use common::{TestDb, backend_test, user};
use futures_util::TryStreamExt;
use sqlrepo::{Error, NewAccount, NewOrder, NewUser, OrderPatch, limits};

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

backend_test!(orders_update_changes_only_what_the_patch_names_and_refusals_change_nothing);
async fn orders_update_changes_only_what_the_patch_names_and_refusals_change_nothing(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let bob = user(&db, "bob@example.com", "Bob").await;
    let id = db.orders().create(&NewOrder::new(ann, 500)).await.unwrap();
    let created = db.orders().get(id).await.unwrap().unwrap();
    let total = |cents| OrderPatch {
        total_cents: Some(cents),
        ..OrderPatch::default()
    };

    assert!(db.orders().update(id, &total(450)).await.unwrap());
    // The same value again, and an empty patch, change nothing and say so.
    assert!(!db.orders().update(id, &total(450)).await.unwrap());
    assert!(
        !db.orders()
            .update(id, &OrderPatch::default())
            .await
            .unwrap()
    );
    assert!(!db.orders().update(999_999, &total(1)).await.unwrap());
    let moved = OrderPatch {
        user_id: Some(bob),
        ..OrderPatch::default()
    };
    assert!(db.orders().update(id, &moved).await.unwrap());
    let after = db.orders().get(id).await.unwrap().unwrap();
    assert_eq!(
        (after.user_id, after.total_cents, after.created_at),
        (bob, 450, created.created_at)
    );
    assert_eq!(
        db.orders().stats_for_user(bob).await.unwrap().total_cents,
        450
    );

    // Refused before the database (negative) and by it (unknown user): nothing changes.
    let negative = db.orders().update(id, &total(-1)).await;
    assert!(
        matches!(negative, Err(Error::InvalidInput(_))),
        "{negative:?}"
    );
    let orphan = OrderPatch {
        user_id: Some(999_999),
        total_cents: Some(1),
    };
    let orphaned = db.orders().update(id, &orphan).await;
    assert!(matches!(orphaned, Err(Error::ForeignKey)), "{orphaned:?}");
    assert_eq!(db.orders().get(id).await.unwrap().unwrap(), after);
}

backend_test!(orders_stream_yields_every_order_once_in_id_order_across_pages);
async fn orders_stream_yields_every_order_once_in_id_order_across_pages(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    assert!(
        db.orders()
            .stream()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );
    // More than one stream page (2,000 rows).
    let orders: Vec<NewOrder> = (0..4_500).map(|n| NewOrder::new(ann, n)).collect();
    assert_eq!(db.orders().insert_many(&orders).await.unwrap(), 4_500);
    let streamed: Vec<_> = db.orders().stream().try_collect().await.unwrap();
    assert_eq!(streamed.len(), 4_500);
    assert!(streamed.windows(2).all(|w| w[0].id < w[1].id));
    let totals: Vec<i64> = streamed.iter().map(|o| o.total_cents).collect();
    assert_eq!(totals, (0..4_500).collect::<Vec<i64>>());
    assert_eq!(
        streamed[17],
        db.orders().get(streamed[17].id).await.unwrap().unwrap()
    );
}

backend_test!(accounts_get_many_count_and_stream_agree_with_get);
async fn accounts_get_many_count_and_stream_agree_with_get(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let accounts = db.accounts();
    assert_eq!(accounts.count().await.unwrap(), 0);
    assert!(
        accounts
            .stream()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );
    let mut ids = Vec::new();
    for cents in [700, 0, 300] {
        ids.push(
            accounts
                .open(&NewAccount::new(Some(ann), cents))
                .await
                .unwrap(),
        );
    }
    let bare = accounts.open(&NewAccount::new(None, 5)).await.unwrap();
    accounts
        .transfer(&sqlrepo::Transfer::new(ids[0], ids[1], 200))
        .await
        .unwrap();
    assert_eq!(accounts.count().await.unwrap(), 4);

    let found = accounts
        .get_many(&[bare, ids[2], 999_999, ids[0], bare])
        .await
        .unwrap();
    let expected = [
        accounts.get(ids[0]).await.unwrap().unwrap(),
        accounts.get(ids[2]).await.unwrap().unwrap(),
        accounts.get(bare).await.unwrap().unwrap(),
    ];
    assert_eq!(found, expected);
    assert_eq!(found[0].balance_cents, 500);
    assert_eq!(found[2].user_id, None);
    assert!(accounts.get_many(&[]).await.unwrap().is_empty());
    let too_many = vec![ids[0]; limits::MAX_BATCH_ROWS + 1];
    let refused = accounts.get_many(&too_many).await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );

    let streamed: Vec<_> = accounts.stream().try_collect().await.unwrap();
    let balances: Vec<(i64, i64)> = streamed.iter().map(|a| (a.id, a.balance_cents)).collect();
    assert_eq!(
        balances,
        [(ids[0], 500), (ids[1], 200), (ids[2], 300), (bare, 5)]
    );
    let sum: i64 = streamed.iter().map(|a| a.balance_cents).sum();
    assert_eq!(sum, accounts.total_balance().await.unwrap());
}
