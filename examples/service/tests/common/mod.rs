//! What the example service's test files share: the service's `shipments` module, and a fresh
//! database migrated as the service's `main` does it.

#![allow(dead_code)]

#[path = "../../src/shipments.rs"]
pub mod shipments;

use shipments::NewShipment;
use sqlrepo::{Db, NewOrder, NewUser};
use tempfile::TempDir;

/// A fresh file migrated as the service's `main` does it: sqlrepo's, then the service's.
pub async fn open() -> (Db, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path().join("shop.db")).await.expect("open");
    db.run_migrations(&shipments::MIGRATOR)
        .await
        .expect("the service's migrations");
    (db, dir)
}

/// A user with an order of `total_cents`: (user, order).
pub async fn order(db: &Db, email: &str, total_cents: i64) -> (i64, i64) {
    let user = db
        .users()
        .create(&NewUser::new(email, "Ann"))
        .await
        .expect("user");
    let order = db
        .orders()
        .create(&NewOrder::new(user, total_cents))
        .await
        .expect("order");
    (user, order)
}

pub fn ship(order_id: i64) -> NewShipment {
    NewShipment::new(order_id, "1 Quay Street")
}

/// `n` users with an order each (of 100, 200, … cents), one batch each, on a database with
/// no users yet: the orders' ids in id order.
pub async fn orders(db: &Db, n: usize) -> Vec<i64> {
    let users: Vec<NewUser> = (0..n)
        .map(|i| NewUser::new(format!("u{i}@example.com"), "Ann"))
        .collect();
    assert_eq!(db.users().insert_many(&users).await.unwrap(), n as u64);
    let mut stream = std::pin::pin!(db.users().stream());
    let mut new_orders = Vec::with_capacity(n);
    while let Some(user) = next(&mut stream).await {
        let cents = 100 * (new_orders.len() as i64 + 1);
        new_orders.push(NewOrder::new(user.unwrap().id, cents));
    }
    assert_eq!(
        db.orders().insert_many(&new_orders).await.unwrap(),
        n as u64
    );
    let mut conn = db.handle().reader().await.unwrap();
    sqlx::query_scalar!(r#"SELECT id AS "id!: i64" FROM orders ORDER BY id"#)
        .fetch_all(conn.statements().unwrap())
        .await
        .unwrap()
}

/// The next item of a stream, without a dependency on `futures`.
pub async fn next<S: sqlrepo::kit::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

/// Every item of a stream, in order.
pub async fn collect<S: sqlrepo::kit::Stream + Unpin>(mut stream: S) -> Vec<S::Item> {
    let mut out = Vec::new();
    while let Some(item) = next(&mut stream).await {
        out.push(item);
    }
    out
}
