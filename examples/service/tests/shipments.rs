//! The service's own table beside sqlrepo's: its migrations and sqlrepo's share a file in
//! either order; its repository runs on `db.handle()` and inside `db.begin()` together with
//! sqlrepo's repositories (commit keeps both, a dropped `Tx` neither); its errors are sqlrepo's
//! typed variants. Each test works on a fresh database file.

#[path = "../src/shipments.rs"]
mod shipments;

use std::path::Path;

use shipments::{NewShipment, ShipmentRepo};
use sqlrepo::{Db, DbOptions, Error, NewAccount, NewOrder, NewUser, Transfer};
use tempfile::TempDir;

/// A fresh file migrated as the service's `main` does it: sqlrepo's, then the service's.
async fn open() -> (Db, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path().join("shop.db")).await.expect("open");
    shipments::migrate(&db)
        .await
        .expect("the service's migrations");
    (db, dir)
}

/// A user with an order of `total_cents`: (user, order).
async fn order(db: &Db, email: &str, total_cents: i64) -> (i64, i64) {
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

fn ship(order_id: i64) -> NewShipment {
    NewShipment {
        order_id,
        address: "1 Quay Street".to_owned(),
    }
}

#[tokio::test]
async fn a_shipment_written_on_the_db_handle_is_read_back() {
    let (db, _dir) = open().await;
    let (_, order) = order(&db, "ann@example.com", 700).await;
    let shipments = ShipmentRepo::new(db.handle());
    let id = shipments.create(&ship(order)).await.unwrap();
    let shipment = shipments.get(id).await.unwrap().expect("the shipment");
    assert_eq!(
        (shipment.order_id, shipment.address.as_str()),
        (order, "1 Quay Street")
    );
    assert_eq!(shipments.for_order(order).await.unwrap(), Some(shipment));
    assert_eq!(shipments.get(id + 1).await.unwrap(), None);
    db.close().await;
}

#[tokio::test]
async fn a_committed_tx_keeps_sqlrepos_rows_and_the_services() {
    let (db, _dir) = open().await;
    let user = db
        .users()
        .create(&NewUser::new("ann@example.com", "Ann"))
        .await
        .unwrap();
    let wallet = db
        .accounts()
        .open(&NewAccount {
            user_id: Some(user),
            balance_cents: 1_000,
        })
        .await
        .unwrap();
    let shop = db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await
        .unwrap();

    let tx = db.begin().await.unwrap();
    let order = tx.orders().create(&NewOrder::new(user, 400)).await.unwrap();
    let shipment = ShipmentRepo::new(tx.handle())
        .create(&ship(order))
        .await
        .unwrap();
    tx.accounts()
        .transfer(&Transfer::new(wallet, shop, 400))
        .await
        .unwrap();
    // Inside the transaction, the service's repository sees its write; outside, nobody does.
    assert!(
        ShipmentRepo::new(tx.handle())
            .get(shipment)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(ShipmentRepo::new(db.handle()).count().await.unwrap(), 0);
    tx.commit().await.unwrap();

    assert!(db.orders().get(order).await.unwrap().is_some());
    let shipped = ShipmentRepo::new(db.handle()).get(shipment).await.unwrap();
    assert_eq!(shipped.expect("committed shipment").order_id, order);
    assert_eq!(
        db.accounts()
            .get(shop)
            .await
            .unwrap()
            .unwrap()
            .balance_cents,
        400
    );
    db.close().await;
}

#[tokio::test]
async fn a_dropped_tx_keeps_neither_sqlrepos_rows_nor_the_services() {
    let (db, _dir) = open().await;
    let user = db
        .users()
        .create(&NewUser::new("ann@example.com", "Ann"))
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    let order = tx.orders().create(&NewOrder::new(user, 400)).await.unwrap();
    ShipmentRepo::new(tx.handle())
        .create(&ship(order))
        .await
        .unwrap();
    drop(tx);

    assert_eq!(db.orders().get(order).await.unwrap(), None);
    assert_eq!(ShipmentRepo::new(db.handle()).count().await.unwrap(), 0);
    // The writer is free again, for sqlrepo's writes and the service's.
    let (_, order) = self::order(&db, "bob@example.com", 100).await;
    ShipmentRepo::new(db.handle())
        .create(&ship(order))
        .await
        .unwrap();
    assert_eq!(ShipmentRepo::new(db.handle()).count().await.unwrap(), 1);
    db.close().await;
}

#[tokio::test]
async fn a_second_shipment_of_an_order_is_duplicate_naming_the_services_column() {
    let (db, _dir) = open().await;
    let (_, order) = order(&db, "ann@example.com", 700).await;
    let shipments = ShipmentRepo::new(db.handle());
    shipments.create(&ship(order)).await.unwrap();
    match shipments.create(&ship(order)).await {
        Err(Error::Duplicate { constraint }) => assert_eq!(constraint, "shipments.order_id"),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(shipments.count().await.unwrap(), 1);
    db.close().await;
}

#[tokio::test]
async fn a_shipment_of_a_missing_order_is_foreign_key_on_the_db_and_in_a_tx() {
    let (db, _dir) = open().await;
    let shipments = ShipmentRepo::new(db.handle());
    assert!(matches!(
        shipments.create(&ship(999)).await,
        Err(Error::ForeignKey)
    ));
    // Inside a transaction the failed statement undoes only itself; the rest commits.
    let tx = db.begin().await.unwrap();
    let user = tx
        .users()
        .create(&NewUser::new("ann@example.com", "Ann"))
        .await
        .unwrap();
    assert!(matches!(
        ShipmentRepo::new(tx.handle()).create(&ship(999)).await,
        Err(Error::ForeignKey)
    ));
    tx.commit().await.unwrap();
    assert!(db.users().get(user).await.unwrap().is_some());
    assert_eq!(shipments.count().await.unwrap(), 0);
    db.close().await;
}

#[tokio::test]
async fn sqlrepo_refuses_to_delete_an_order_the_service_still_references() {
    let (db, _dir) = open().await;
    let (_, order) = order(&db, "ann@example.com", 700).await;
    ShipmentRepo::new(db.handle())
        .create(&ship(order))
        .await
        .unwrap();
    assert!(matches!(
        db.orders().delete(order).await,
        Err(Error::ForeignKey)
    ));
    assert!(db.orders().get(order).await.unwrap().is_some());
    db.close().await;
}

#[tokio::test]
async fn a_blank_address_is_invalid_input_and_writes_nothing() {
    let (db, _dir) = open().await;
    let (_, order) = order(&db, "ann@example.com", 700).await;
    let shipments = ShipmentRepo::new(db.handle());
    let blank = NewShipment {
        order_id: order,
        address: " ".to_owned(),
    };
    assert!(matches!(
        shipments.create(&blank).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(shipments.count().await.unwrap(), 0);
    db.close().await;
}

/// Opens the file with sqlrepo's migrations off, runs only the service's, and closes it.
async fn run_service_migrations(path: &Path) {
    let db = Db::open_with(DbOptions::new(path).migrate(false))
        .await
        .unwrap();
    shipments::migrate(&db).await.unwrap();
    db.close().await;
}

#[tokio::test]
async fn the_services_migrations_and_sqlrepos_share_a_file_in_either_order_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    for service_first in [true, false] {
        let path = dir.path().join(format!("either-order-{service_first}.db"));
        for _round in 0..3 {
            if service_first {
                run_service_migrations(&path).await;
                Db::open(&path).await.unwrap().close().await;
            } else {
                Db::open(&path).await.unwrap().close().await;
                run_service_migrations(&path).await;
            }
        }
        let db = Db::open(&path).await.unwrap();
        shipments::migrate(&db).await.unwrap();
        let (_, order) = order(&db, "ann@example.com", 700).await;
        ShipmentRepo::new(db.handle())
            .create(&ship(order))
            .await
            .unwrap();
        db.close().await;
    }
}

#[tokio::test]
async fn a_shipment_behind_another_processs_write_lock_is_busy_and_writes_nothing() {
    let (db, dir) = open().await;
    let (_, order) = order(&db, "ann@example.com", 700).await;
    db.close().await;
    let path = dir.path().join("shop.db");
    let db =
        Db::open_with(DbOptions::new(&path).busy_timeout(std::time::Duration::from_millis(200)))
            .await
            .unwrap();
    // Another handle on the file (as another process would be) holds the write lock.
    let other = Db::open(&path).await.unwrap();
    let holder = other.begin().await.unwrap();

    let shipments = ShipmentRepo::new(db.handle());
    let refused = shipments.create(&ship(order)).await;
    assert!(matches!(refused, Err(Error::Busy)), "{refused:?}");
    assert!(refused.unwrap_err().is_retryable());

    holder.rollback().await.unwrap();
    assert_eq!(shipments.count().await.unwrap(), 0);
    shipments.create(&ship(order)).await.unwrap();
    assert_eq!(shipments.count().await.unwrap(), 1);
    other.close().await;
    db.close().await;
}
