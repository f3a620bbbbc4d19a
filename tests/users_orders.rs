//! UserRepo, OrderRepo and the dashboard against a real SQLite file.

mod common;

use common::{TestDb, backend_test, user};
use futures_util::TryStreamExt;
use sqlrepo::{Error, NewAccount, NewOrder, NewUser, UserPatch};

backend_test!(create_get_and_get_by_email_agree);
async fn create_get_and_get_by_email_agree(db: TestDb) {
    let id = user(&db, "ann@example.com", "Ann O'Neil").await;
    let user = db.users().get(id).await.unwrap().unwrap();
    assert_eq!(user.email, "ann@example.com");
    assert_eq!(user.name, "Ann O'Neil");
    assert_eq!(
        db.users().get_by_email("ann@example.com").await.unwrap(),
        Some(user.clone())
    );
    // Email lookups ignore ASCII case, as mail does.
    assert_eq!(
        db.users().get_by_email("ANN@example.com").await.unwrap(),
        Some(user)
    );
    assert!(
        db.users()
            .get_by_email("bob@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert!(db.users().get(id + 1).await.unwrap().is_none());
}

backend_test!(duplicate_email_in_any_case_is_duplicate_users_email);
async fn duplicate_email_in_any_case_is_duplicate_users_email(db: TestDb) {
    user(&db, "ann@example.com", "Ann").await;
    let before = db.dump("users").await;
    for email in ["ann@example.com", "Ann@Example.com"] {
        let err = db
            .users()
            .create(&NewUser::new(email, "Other"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Duplicate { constraint } if constraint == "users.email"),
            "{err:?}"
        );
    }
    assert_eq!(db.dump("users").await, before);
}

backend_test!(emails_fold_ascii_case_only_on_both_backends);
/// As SQLite's `NOCASE`, which folds A-Z only: `Ann@` and `ann@` are one address, `Élise@` and
/// `élise@` two (PostgreSQL's `lower` would fold `É` too in a UTF-8 locale; the index and the
/// lookup use the C collation so both backends agree).
async fn emails_fold_ascii_case_only_on_both_backends(db: TestDb) {
    let upper = db
        .users()
        .create(&NewUser::new("Élise@example.com", "Élise"))
        .await
        .unwrap();
    let lower = db
        .users()
        .create(&NewUser::new("élise@example.com", "élise"))
        .await
        .expect("a non-ASCII capital is another address");
    assert_ne!(upper, lower);
    let found = db.users().get_by_email("éLISE@EXAMPLE.COM").await.unwrap();
    assert_eq!(found.map(|u| u.id), Some(lower));
    assert_eq!(db.dump("users").await.len(), 2);
}

backend_test!(malformed_email_and_blank_name_are_refused_before_the_database);
async fn malformed_email_and_blank_name_are_refused_before_the_database(db: TestDb) {
    for (email, name) in [
        ("not-an-email", "Ann"),
        ("@example.com", "Ann"),
        ("ann@", "Ann"),
        ("ann@example", "Ann"),
        ("ann smith@example.com", "Ann"),
        ("ann@example.com", ""),
        ("ann@example.com", "   "),
    ] {
        let err = db
            .users()
            .create(&NewUser::new(email, name))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput(_)),
            "{email} {name}: {err:?}"
        );
    }
    assert!(db.dump("users").await.is_empty());
}

backend_test!(update_applies_the_patch_and_reports_real_changes);
async fn update_applies_the_patch_and_reports_real_changes(db: TestDb) {
    let id = user(&db, "ann@example.com", "Ann").await;
    let other = user(&db, "bob@example.com", "Bob").await;
    let patch = UserPatch {
        name: Some("Ann Smith".into()),
        ..Default::default()
    };
    assert!(db.users().update(id, &patch).await.unwrap());
    assert!(
        !db.users().update(id, &patch).await.unwrap(),
        "same values again"
    );
    assert!(!db.users().update(999, &patch).await.unwrap());
    let user = db.users().get(id).await.unwrap().unwrap();
    assert_eq!(
        (user.email.as_str(), user.name.as_str()),
        ("ann@example.com", "Ann Smith")
    );

    let before = db.dump("users").await;
    let taken = UserPatch {
        email: Some("bob@example.com".into()),
        ..Default::default()
    };
    assert!(matches!(
        db.users().update(id, &taken).await.unwrap_err(),
        Error::Duplicate { ref constraint } if constraint == "users.email"
    ));
    let malformed = UserPatch {
        email: Some("nope".into()),
        ..Default::default()
    };
    assert!(matches!(
        db.users().update(other, &malformed).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
    assert_eq!(db.dump("users").await, before);
}

backend_test!(deleting_a_user_with_orders_or_accounts_is_foreign_key_and_deletes_nothing);
async fn deleting_a_user_with_orders_or_accounts_is_foreign_key_and_deletes_nothing(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let bob = user(&db, "bob@example.com", "Bob").await;
    let carl = user(&db, "carl@example.com", "Carl").await;
    db.orders().create(&NewOrder::new(ann, 100)).await.unwrap();
    db.accounts()
        .open(&NewAccount {
            user_id: Some(bob),
            balance_cents: 0,
        })
        .await
        .unwrap();
    let before = db.snapshot().await;
    let err = db.users().delete(ann).await.unwrap_err();
    assert!(matches!(err, Error::ForeignKey), "{err:?}");
    assert!(matches!(
        db.users().delete(bob).await.unwrap_err(),
        Error::ForeignKey
    ));
    assert_eq!(db.snapshot().await, before);
    assert!(db.users().delete(carl).await.unwrap());
    assert!(!db.users().delete(carl).await.unwrap());
}

backend_test!(an_order_for_an_unknown_user_is_foreign_key);
async fn an_order_for_an_unknown_user_is_foreign_key(db: TestDb) {
    let err = db
        .orders()
        .create(&NewOrder::new(42, 100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ForeignKey), "{err:?}");
    assert!(db.dump("orders").await.is_empty());
}

backend_test!(negative_totals_are_refused_and_zero_is_allowed);
async fn negative_totals_are_refused_and_zero_is_allowed(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    assert!(matches!(
        db.orders()
            .create(&NewOrder::new(ann, -1))
            .await
            .unwrap_err(),
        Error::InvalidInput(_)
    ));
    let batch = [NewOrder::new(ann, 5), NewOrder::new(ann, -5)];
    match db.orders().insert_many(&batch).await.unwrap_err() {
        Error::InvalidInput(message) => assert!(message.contains("order 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(db.dump("orders").await.is_empty());
    assert!(db.orders().create(&NewOrder::new(ann, 0)).await.is_ok());
}

backend_test!(recent_for_user_is_newest_first_with_ties_to_the_later_id);
async fn recent_for_user_is_newest_first_with_ties_to_the_later_id(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let bob = user(&db, "bob@example.com", "Bob").await;
    // One statement: every row gets the same created_at, so only the id orders them.
    let orders: Vec<NewOrder> = (1..=15).map(|t| NewOrder::new(ann, t * 100)).collect();
    assert_eq!(db.orders().insert_many(&orders).await.unwrap(), 15);
    db.orders().create(&NewOrder::new(bob, 1)).await.unwrap();
    let recent = db.orders().recent_for_user(ann, 10).await.unwrap();
    let totals: Vec<i64> = recent.iter().map(|o| o.total_cents).collect();
    assert_eq!(totals, (6..=15).rev().map(|t| t * 100).collect::<Vec<_>>());
    assert!(recent.iter().all(|o| o.user_id == ann));
    assert!(
        db.orders()
            .recent_for_user(ann, 0)
            .await
            .unwrap()
            .is_empty()
    );

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let newest = db.orders().create(&NewOrder::new(ann, 7)).await.unwrap();
    assert_eq!(
        db.orders().recent_for_user(ann, 1).await.unwrap()[0].id,
        newest
    );
}

backend_test!(stats_are_zero_for_a_user_without_orders);
async fn stats_are_zero_for_a_user_without_orders(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let stats = db.orders().stats_for_user(ann).await.unwrap();
    assert_eq!((stats.count, stats.total_cents), (0, 0));
    let stats = db.orders().stats_for_user(12345).await.unwrap();
    assert_eq!((stats.count, stats.total_cents), (0, 0));
    db.orders()
        .insert_many(&[NewOrder::new(ann, 250), NewOrder::new(ann, 750)])
        .await
        .unwrap();
    let stats = db.orders().stats_for_user(ann).await.unwrap();
    assert_eq!((stats.count, stats.total_cents), (2, 1_000));
}

backend_test!(order_get_and_delete);
async fn order_get_and_delete(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let id = db.orders().create(&NewOrder::new(ann, 999)).await.unwrap();
    let order = db.orders().get(id).await.unwrap().unwrap();
    assert_eq!((order.user_id, order.total_cents), (ann, 999));
    assert!(db.orders().delete(id).await.unwrap());
    assert!(!db.orders().delete(id).await.unwrap());
    assert!(db.orders().get(id).await.unwrap().is_none());
    // With the order gone, the user can go too.
    assert!(db.users().delete(ann).await.unwrap());
}

backend_test!(order_insert_many_with_one_unknown_user_writes_nothing);
async fn order_insert_many_with_one_unknown_user_writes_nothing(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    assert_eq!(db.orders().insert_many(&[]).await.unwrap(), 0);
    let mut orders: Vec<NewOrder> = (0..1_000).map(|i| NewOrder::new(ann, i)).collect();
    orders[900].user_id = ann + 1;
    assert!(matches!(
        db.orders().insert_many(&orders).await.unwrap_err(),
        Error::ForeignKey
    ));
    assert!(db.dump("orders").await.is_empty());
}

backend_test!(user_insert_many_is_all_or_nothing_and_streams_in_order);
async fn user_insert_many_is_all_or_nothing_and_streams_in_order(db: TestDb) {
    assert_eq!(db.users().insert_many(&[]).await.unwrap(), 0);
    let mut users: Vec<NewUser> = (0..5_000)
        .map(|i| NewUser::new(format!("u{i}@example.com"), format!("User {i}")))
        .collect();
    users[4_000].email = "u1@example.com".into();
    assert!(matches!(
        db.users().insert_many(&users).await.unwrap_err(),
        Error::Duplicate { ref constraint } if constraint == "users.email"
    ));
    assert!(db.dump("users").await.is_empty());
    users[4_000].email = "u4000@example.com".into();
    users[10].email = "bad".into();
    match db.users().insert_many(&users).await.unwrap_err() {
        Error::InvalidInput(message) => assert!(message.contains("user 10"), "{message}"),
        other => panic!("{other:?}"),
    }
    users[10].email = "u10@example.com".into();
    assert_eq!(db.users().insert_many(&users).await.unwrap(), 5_000);

    let streamed: Vec<_> = db.users().stream().try_collect().await.unwrap();
    assert_eq!(streamed.len(), 5_000);
    for (i, user) in streamed.iter().enumerate() {
        // SQLite hands out the next rowid after the largest; a PostgreSQL sequence also spent
        // ids on the refused batch, so there the ids only rise in input order.
        if db.backend.is_postgres() {
            assert!(i == 0 || user.id > streamed[i - 1].id);
        } else {
            assert_eq!(user.id, i as i64 + 1);
        }
        assert_eq!(user.email, users[i].email);
    }
}

backend_test!(dashboard_shows_the_user_their_ten_newest_orders_and_stats);
async fn dashboard_shows_the_user_their_ten_newest_orders_and_stats(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let bob = user(&db, "bob@example.com", "Bob").await;
    let orders: Vec<NewOrder> = (1..=12).map(|t| NewOrder::new(ann, t)).collect();
    db.orders().insert_many(&orders).await.unwrap();
    db.orders()
        .create(&NewOrder::new(bob, 1_000))
        .await
        .unwrap();

    let dash = db.dashboard(ann).await.unwrap();
    assert_eq!(dash.user, db.users().get(ann).await.unwrap().unwrap());
    assert_eq!(
        dash.recent_orders,
        db.orders().recent_for_user(ann, 10).await.unwrap()
    );
    let totals: Vec<i64> = dash.recent_orders.iter().map(|o| o.total_cents).collect();
    assert_eq!(totals, (3..=12).rev().collect::<Vec<_>>());
    assert_eq!((dash.stats.count, dash.stats.total_cents), (12, 78));
}

backend_test!(dashboard_of_a_user_without_orders_has_zeros_and_unknown_user_is_not_found);
async fn dashboard_of_a_user_without_orders_has_zeros_and_unknown_user_is_not_found(db: TestDb) {
    let ann = user(&db, "ann@example.com", "Ann").await;
    let dash = db.dashboard(ann).await.unwrap();
    assert!(dash.recent_orders.is_empty());
    assert_eq!((dash.stats.count, dash.stats.total_cents), (0, 0));
    assert!(matches!(
        db.dashboard(ann + 1).await.unwrap_err(),
        Error::NotFound { entity: "user", id } if id == ann + 1
    ));
}
