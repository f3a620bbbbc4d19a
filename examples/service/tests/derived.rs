//! Every method `#[derive(sqlrepo::Table)]` generated for `shipments`, on a `Db` and inside a
//! `Tx`, with the database's state checked after each refusal. (`create`, `insert_many`,
//! `get` and `count` are also in `shipments.rs`, beside sqlrepo's own repositories.)

mod common;

use common::shipments::{NewShipment, Shipment, ShipmentPatch, ShipmentRepo};
use common::{collect, open, orders, ship};
use sqlrepo::{Error, kit, limits};

/// Ships every order, in one batch: the shipments in id order.
async fn shipped(repo: &ShipmentRepo, orders: &[i64]) -> Vec<Shipment> {
    let batch: Vec<NewShipment> = orders
        .iter()
        .map(|&order| NewShipment::new(order, format!("{order} Quay Street")))
        .collect();
    assert_eq!(repo.insert_many(&batch).await.unwrap(), orders.len() as u64);
    collect(Box::pin(repo.stream()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn get_many_gives_known_ids_once_in_id_order() {
    let (db, _dir) = open().await;
    let repo = ShipmentRepo::new(db.handle());
    let all = shipped(&repo, &orders(&db, 5).await).await;
    let ids: Vec<i64> = all.iter().map(|s| s.id).collect();

    let asked = [ids[3], 999_999, ids[0], ids[3], ids[1]];
    let got = repo.get_many(&asked).await.unwrap();
    assert_eq!(got, vec![all[0].clone(), all[1].clone(), all[3].clone()]);
    assert_eq!(repo.get_many(&[]).await.unwrap(), Vec::new());

    let too_many = vec![ids[0]; limits::MAX_BATCH_ROWS + 1];
    assert!(matches!(
        repo.get_many(&too_many).await,
        Err(Error::InvalidInput(_))
    ));
    db.close().await;
}

#[tokio::test]
async fn update_changes_only_what_the_patch_sets_and_says_whether_anything_changed() {
    let (db, _dir) = open().await;
    let repo = ShipmentRepo::new(db.handle());
    let all = shipped(&repo, &orders(&db, 2).await).await;
    let (first, second) = (&all[0], &all[1]);

    let moved = ShipmentPatch {
        address: Some("9 Dock Road".into()),
        ..Default::default()
    };
    assert!(repo.update(first.id, &moved).await.unwrap());
    let read = repo.get(first.id).await.unwrap().unwrap();
    assert_eq!(read.address, "9 Dock Road");
    assert_eq!(
        (read.order_id, read.created_at),
        (first.order_id, first.created_at)
    );
    // The same values again, an empty patch, an unknown id: nothing changed.
    assert!(!repo.update(first.id, &moved).await.unwrap());
    assert!(
        !repo
            .update(first.id, &ShipmentPatch::default())
            .await
            .unwrap()
    );
    assert!(!repo.update(999_999, &moved).await.unwrap());
    assert_eq!(repo.get(second.id).await.unwrap().as_ref(), Some(second));
    db.close().await;
}

#[tokio::test]
async fn an_update_the_schema_refuses_is_typed_and_changes_nothing() {
    let (db, _dir) = open().await;
    let repo = ShipmentRepo::new(db.handle());
    let all = shipped(&repo, &orders(&db, 2).await).await;
    let (first, second) = (&all[0], &all[1]);

    // The order of another shipment: the UNIQUE constraint.
    let taken = ShipmentPatch {
        order_id: Some(second.order_id),
        address: Some("elsewhere".into()),
    };
    let refused = repo.update(first.id, &taken).await;
    assert!(
        matches!(refused, Err(Error::Duplicate { .. })),
        "{refused:?}"
    );
    // A missing order: the foreign key.
    let missing = ShipmentPatch {
        order_id: Some(999_999),
        ..Default::default()
    };
    let refused = repo.update(first.id, &missing).await;
    assert!(matches!(refused, Err(Error::ForeignKey)), "{refused:?}");
    // A blank address: the CHECK (the patch has no validate hook; the schema is the rule).
    let blank = ShipmentPatch {
        address: Some("  ".into()),
        ..Default::default()
    };
    assert!(repo.update(first.id, &blank).await.is_err());

    assert_eq!(repo.get(first.id).await.unwrap().as_ref(), Some(first));
    assert_eq!(repo.get(second.id).await.unwrap().as_ref(), Some(second));
    db.close().await;
}

#[tokio::test]
async fn delete_removes_one_row_and_says_whether_it_existed() {
    let (db, _dir) = open().await;
    let repo = ShipmentRepo::new(db.handle());
    let all = shipped(&repo, &orders(&db, 3).await).await;
    assert!(repo.delete(all[1].id).await.unwrap());
    assert!(!repo.delete(all[1].id).await.unwrap());
    assert_eq!(repo.get(all[1].id).await.unwrap(), None);
    assert_eq!(repo.count().await.unwrap(), 2);
    db.close().await;
}

#[tokio::test]
async fn pages_follow_their_cursor_to_the_end_and_refuse_a_bad_limit_untouched() {
    let (db, _dir) = open().await;
    let repo = ShipmentRepo::new(db.handle());
    let all = shipped(&repo, &orders(&db, 7).await).await;

    let mut read = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = repo.page(after, 3).await.unwrap();
        assert!(page.rows.len() <= 3);
        pages += 1;
        read.extend(page.rows);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(read, all);
    assert_eq!(pages, 3);
    // After the last id, and after i64::MAX (no statement): empty, no cursor.
    let past = repo.page(Some(all[6].id), 3).await.unwrap();
    assert_eq!((past.rows.len(), past.next), (0, None));
    let end = repo.page(Some(i64::MAX), 3).await.unwrap();
    assert_eq!((end.rows.len(), end.next), (0, None));

    for limit in [0, limits::MAX_PAGE_ROWS + 1] {
        assert!(matches!(
            repo.page(None, limit).await,
            Err(Error::InvalidInput(_))
        ));
    }
    db.close().await;
}

#[tokio::test]
async fn the_stream_reads_every_row_across_pages_in_id_order() {
    let (db, _dir) = open().await;
    let repo = ShipmentRepo::new(db.handle());
    // More rows than one stream page holds.
    let n = kit::STREAM_PAGE_ROWS as usize + 150;
    let orders = orders(&db, n).await;
    let all = shipped(&repo, &orders).await;
    assert_eq!(all.len(), n);
    let shipped_orders: Vec<i64> = all.iter().map(|s| s.order_id).collect();
    assert_eq!(shipped_orders, orders);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    db.close().await;
}

#[tokio::test]
async fn every_derived_method_works_inside_a_tx_and_a_dropped_tx_keeps_nothing() {
    let (db, _dir) = open().await;
    let outside = ShipmentRepo::new(db.handle());
    let all = orders(&db, 4).await;
    let (first, ids) = all.split_first().unwrap();
    let kept = outside.create(&ship(*first)).await.unwrap();

    let tx = db.begin().await.unwrap();
    let inside = ShipmentRepo::new(tx.handle());
    let batch: Vec<NewShipment> = ids.iter().map(|&o| ship(o)).collect();
    assert_eq!(inside.insert_many(&batch).await.unwrap(), 3);
    let moved = ShipmentPatch {
        address: Some("moved".into()),
        ..Default::default()
    };
    assert!(inside.update(kept, &moved).await.unwrap());
    let rows = collect(Box::pin(inside.stream())).await;
    assert_eq!(rows.len(), 4);
    let new_ids: Vec<i64> = rows
        .iter()
        .skip(1)
        .map(|r| r.as_ref().unwrap().id)
        .collect();
    assert_eq!(inside.get_many(&new_ids).await.unwrap().len(), 3);
    assert_eq!(inside.page(None, 10).await.unwrap().rows.len(), 4);
    assert!(inside.delete(new_ids[0]).await.unwrap());
    assert_eq!(inside.count().await.unwrap(), 3);
    assert_eq!(inside.get(kept).await.unwrap().unwrap().address, "moved");
    drop(tx);

    // Nothing of the Tx is stored: the one shipment made before it, as it was.
    assert_eq!(outside.count().await.unwrap(), 1);
    let before = outside.get(kept).await.unwrap().unwrap();
    assert_eq!(before.address, "1 Quay Street");

    // And a committed one keeps it all.
    let tx = db.begin().await.unwrap();
    ShipmentRepo::new(tx.handle())
        .insert_many(&batch)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outside.count().await.unwrap(), 4);
    db.close().await;
}

#[tokio::test]
async fn get_is_answered_on_the_callers_thread_with_what_the_ordinary_read_gives() {
    let (db, dir) = open().await;
    let repo = ShipmentRepo::new(db.handle());
    let all = shipped(&repo, &orders(&db, 3).await).await;
    // One reader, held here: a get that needed it would wait out the busy timeout.
    let path = dir.path().join("shop.db");
    let options = |direct| {
        sqlrepo::DbOptions::new(&path)
            .readers(1)
            .busy_timeout(std::time::Duration::from_millis(200))
            .direct_reads(direct)
    };
    let direct = sqlrepo::Db::open_with(options(true)).await.unwrap();
    let held = direct.handle().reader().await.unwrap();
    // Every field is a plain type, so the derived get reads on the caller's thread.
    let direct_repo = ShipmentRepo::new(direct.handle());
    for shipment in &all {
        assert_eq!(
            direct_repo.get(shipment.id).await.unwrap().as_ref(),
            Some(shipment)
        );
    }
    assert_eq!(direct_repo.get(999_999).await.unwrap(), None);
    drop(held);

    let ordinary = sqlrepo::Db::open_with(options(false)).await.unwrap();
    let held = ordinary.handle().reader().await.unwrap();
    let ordinary_repo = ShipmentRepo::new(ordinary.handle());
    assert!(matches!(
        ordinary_repo.get(all[0].id).await,
        Err(Error::Busy)
    ));
    drop(held);
    for shipment in &all {
        assert_eq!(
            ordinary_repo.get(shipment.id).await.unwrap().as_ref(),
            Some(shipment)
        );
    }
    db.close().await;
}
