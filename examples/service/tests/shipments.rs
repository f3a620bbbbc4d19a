//! The service's own table beside sqlrepo's: its migrations and sqlrepo's share a file in
//! either order; its repository runs on `db.handle()` and inside `db.begin()` together with
//! sqlrepo's repositories (commit keeps both, a dropped `Tx` neither); its errors are sqlrepo's
//! typed variants. Each test works on a fresh database file.

mod common;

use std::path::Path;

use common::shipments::{self, NewShipment, ShipmentRepo};
use common::{open, order, ship};
use sqlrepo::{Db, DbOptions, Error, NewAccount, NewOrder, NewUser, Transfer};

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
    db.run_migrations(&shipments::MIGRATOR).await.unwrap();
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
        db.run_migrations(&shipments::MIGRATOR).await.unwrap();
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

#[tokio::test]
async fn a_shipments_future_owns_its_arguments_and_can_be_spawned() {
    let (db, _dir) = open().await;
    let (_, order) = order(&db, "ann@example.com", 700).await;
    let shipments = ShipmentRepo::new(db.handle());
    let new = NewShipment::new(order, "1 Quay Street");
    // The future borrows neither the repository nor `new`: both may go before it runs.
    let created = tokio::spawn(shipments.create(&new));
    drop(new);
    let id = created.await.unwrap().unwrap();
    let read = tokio::spawn(shipments.get(id)).await.unwrap().unwrap();
    assert_eq!(read.expect("the shipment").order_id, order);
    db.close().await;
}

#[tokio::test]
async fn insert_many_writes_every_shipment_in_slice_order() {
    let (db, _dir) = open().await;
    let mut orders = Vec::new();
    for i in 0..3 {
        orders.push(order(&db, &format!("u{i}@example.com"), 100).await.1);
    }
    let shipments = ShipmentRepo::new(db.handle());
    let batch: Vec<NewShipment> = orders
        .iter()
        .map(|&order| NewShipment::new(order, format!("{order} Quay Street")))
        .collect();
    assert_eq!(shipments.insert_many(&batch).await.unwrap(), 3);
    assert_eq!(shipments.insert_many(&[]).await.unwrap(), 0);
    for (position, &order) in orders.iter().enumerate() {
        let shipped = shipments.for_order(order).await.unwrap().expect("shipped");
        assert_eq!(shipped.id, position as i64 + 1);
        assert_eq!(shipped.address, format!("{order} Quay Street"));
    }
    db.close().await;
}

#[tokio::test]
async fn a_batch_with_a_bad_row_names_its_position_and_writes_nothing() {
    let (db, _dir) = open().await;
    let (_, first) = order(&db, "ann@example.com", 100).await;
    let (_, second) = order(&db, "bob@example.com", 100).await;
    let shipments = ShipmentRepo::new(db.handle());
    let blank = [
        NewShipment::new(first, "1 Quay Street"),
        NewShipment::new(second, "  "),
    ];
    match shipments.insert_many(&blank).await {
        Err(Error::InvalidInput(message)) => assert!(
            message.starts_with("shipment 1: "),
            "the position is named: {message}"
        ),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // Refused by the database: a missing order, a repeated one. Nothing of either batch stays.
    let missing = [
        NewShipment::new(first, "1 Quay Street"),
        NewShipment::new(999, "2 Quay Street"),
    ];
    assert!(matches!(
        shipments.insert_many(&missing).await,
        Err(Error::ForeignKey)
    ));
    let repeated = [
        NewShipment::new(first, "1 Quay Street"),
        NewShipment::new(first, "2 Quay Street"),
    ];
    match shipments.insert_many(&repeated).await {
        Err(Error::Duplicate { constraint }) => assert_eq!(constraint, "shipments.order_id"),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    assert_eq!(shipments.count().await.unwrap(), 0);
    db.close().await;
}

#[tokio::test]
async fn a_batch_inside_a_tx_commits_and_rolls_back_with_sqlrepos_writes() {
    let (db, _dir) = open().await;
    let user = db
        .users()
        .create(&NewUser::new("ann@example.com", "Ann"))
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    let first = tx.orders().create(&NewOrder::new(user, 100)).await.unwrap();
    let second = tx.orders().create(&NewOrder::new(user, 200)).await.unwrap();
    let batch = [
        NewShipment::new(first, "1 Quay Street"),
        NewShipment::new(second, "2 Quay Street"),
    ];
    assert_eq!(
        ShipmentRepo::new(tx.handle())
            .insert_many(&batch)
            .await
            .unwrap(),
        2
    );
    drop(tx);
    assert_eq!(ShipmentRepo::new(db.handle()).count().await.unwrap(), 0);
    assert_eq!(db.orders().get(first).await.unwrap(), None);

    let tx = db.begin().await.unwrap();
    let first = tx.orders().create(&NewOrder::new(user, 100)).await.unwrap();
    ShipmentRepo::new(tx.handle())
        .insert_many(&[NewShipment::new(first, "1 Quay Street")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ShipmentRepo::new(db.handle()).count().await.unwrap(), 1);
    db.close().await;
}

#[tokio::test]
async fn created_at_is_now_in_the_canonical_form_and_kept_so_for_other_writers() {
    let (db, dir) = open().await;
    let (_, order) = order(&db, "ann@example.com", 700).await;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let shipments = ShipmentRepo::new(db.handle());
    let id = shipments
        .create(&NewShipment::new(order, "1 Quay Street"))
        .await
        .unwrap();
    let created = shipments.get(id).await.unwrap().unwrap().created_at;
    assert!(created >= before && created <= time::OffsetDateTime::now_utc());

    // Another program writes the sqlite3 shell's form; the trigger stores ours, and refuses
    // text that is no time at all.
    let url = format!("sqlite://{}", dir.path().join("shop.db").display());
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query!(
        "UPDATE shipments SET created_at = '2026-01-02 03:04:05' WHERE id = ?1",
        id
    )
    .execute(&mut other)
    .await
    .unwrap();
    let stored = sqlx::query_scalar!(
        r#"SELECT created_at AS "created_at!" FROM shipments WHERE id = ?1"#,
        id
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(stored, "2026-01-02T03:04:05.000Z");
    assert_eq!(
        sqlrepo::kit::format_timestamp(shipments.get(id).await.unwrap().unwrap().created_at),
        stored
    );
    for unreadable in ["soon", "2026-13-45"] {
        let refused = sqlx::query!(
            "UPDATE shipments SET created_at = ?1 WHERE id = ?2",
            unreadable,
            id
        )
        .execute(&mut other)
        .await;
        assert!(refused.is_err(), "{unreadable} was stored");
    }
    let unset = sqlx::query!("UPDATE shipments SET created_at = NULL WHERE id = ?1", id)
        .execute(&mut other)
        .await;
    assert!(unset.is_err(), "the time was taken away");
    let kept = sqlx::query_scalar!(
        r#"SELECT created_at AS "created_at!" FROM shipments WHERE id = ?1"#,
        id
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(kept, stored);

    // A row another program inserts without the time gets the time of the insert.
    let (_, second) = self::order(&db, "bob@example.com", 100).await;
    sqlx::query!(
        "INSERT INTO shipments (order_id, address) VALUES (?1, '2 Quay Street')",
        second
    )
    .execute(&mut other)
    .await
    .unwrap();
    let filled = shipments
        .for_order(second)
        .await
        .unwrap()
        .expect("inserted");
    assert!(filled.created_at >= before);
    db.close().await;
}
