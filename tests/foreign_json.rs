//! JSON in `items.data` written by another program with numbers `serde_json::Value` cannot hold
//! exactly (`1e400`, a 30-digit integer): each such row is refused alone as
//! `Error::Unreadable` naming it, a stream goes on past it, and nothing is rounded and written
//! back.

mod common;

use common::{TestDb, backend_test};
use futures_util::StreamExt;
use serde_json::json;
use sqlrepo::{Error, ItemPatch, ItemStatus, NewItem};

const HUGE: &str = r#"{"n": 1e400}"#;
const PRECISE: &str = r#"{"serial": 123456789012345678901234567890}"#;

/// Asserts `result` is `Unreadable` for item `id`, naming `number`.
fn assert_unreadable<T: std::fmt::Debug>(result: sqlrepo::Result<T>, id: i64, number: &str) {
    match result {
        Err(Error::Unreadable {
            entity,
            id: got,
            reason,
        }) => {
            assert_eq!((entity, got), ("item", id));
            assert!(reason.contains(number), "{reason:?} names {number}");
            assert!(!Error::Unreadable { entity, id, reason }.is_retryable());
        }
        other => panic!("expected Unreadable for item {id}, got {other:?}"),
    }
}

/// Three rows by the API around two foreign ones: `[ok, huge, ok, precise, ok]` in id order.
async fn mixed_rows(db: &TestDb) -> Vec<i64> {
    let items = db.items();
    let first = items
        .create(&NewItem::new("first", json!({"n": 1})))
        .await
        .unwrap();
    let huge = db.foreign_item("huge", HUGE).await;
    let middle = items
        .create(&NewItem::new("middle", json!({"n": 1e23})))
        .await
        .unwrap();
    let precise = db.foreign_item("precise", PRECISE).await;
    // The last write goes through the API, so a replicated read waits for the foreign rows too.
    let last = items
        .create(&NewItem::new("last", json!({"n": 0.1})))
        .await
        .unwrap();
    vec![first, huge, middle, precise, last]
}

backend_test!(get_refuses_only_the_row_whose_number_cannot_be_held);
async fn get_refuses_only_the_row_whose_number_cannot_be_held(db: TestDb) {
    let ids = mixed_rows(&db).await;
    let items = db.items();
    assert_unreadable(items.get(ids[1]).await, ids[1], "1e400");
    assert_unreadable(
        items.get(ids[3]).await,
        ids[3],
        "123456789012345678901234567890",
    );
    let middle = items.get(ids[2]).await.unwrap().expect("stored");
    assert_eq!(middle.data, json!({"n": 1e23}));
    assert_eq!(
        items.get(ids[4]).await.unwrap().unwrap().data,
        json!({"n": 0.1})
    );
    // A batch read that holds the row says which; one without it is not disturbed.
    assert_unreadable(items.get_many(&ids).await, ids[1], "1e400");
    let readable = items.get_many(&[ids[0], ids[2], ids[4]]).await.unwrap();
    assert_eq!(readable.len(), 3);
    assert_unreadable(
        items
            .list_by_status_page(ItemStatus::Active, Some(ids[2]), 10)
            .await,
        ids[3],
        "123456789012345678901234567890",
    );
    assert_eq!(items.count().await.unwrap(), 5);
}

backend_test!(a_stream_reports_the_unreadable_rows_in_place_and_goes_on);
async fn a_stream_reports_the_unreadable_rows_in_place_and_goes_on(db: TestDb) {
    let ids = mixed_rows(&db).await;
    let got: Vec<sqlrepo::Result<sqlrepo::Item>> = db.items().stream().collect().await;
    assert_eq!(
        got.len(),
        5,
        "every row comes, the unreadable ones as errors"
    );
    let mut got = got.into_iter();
    for (position, id) in ids.iter().enumerate() {
        let row = got.next().unwrap();
        match position {
            1 => assert_unreadable(row, *id, "1e400"),
            3 => assert_unreadable(row, *id, "123456789012345678901234567890"),
            _ => assert_eq!(row.unwrap().id, *id),
        }
    }
}

backend_test!(an_update_of_another_field_leaves_the_stored_number_as_it_was);
async fn an_update_of_another_field_leaves_the_stored_number_as_it_was(db: TestDb) {
    let ids = mixed_rows(&db).await;
    let before = db.stored_data(ids[3]).await;
    assert!(
        before.contains("123456789012345678901234567890"),
        "{before}"
    );
    let renamed = ItemPatch {
        name: Some("renamed".into()),
        ..ItemPatch::default()
    };
    assert!(db.items().update(ids[3], &renamed).await.unwrap());
    assert_eq!(db.stored_data(ids[3]).await, before, "the digits are kept");
    assert_unreadable(
        db.items().get(ids[3]).await,
        ids[3],
        "123456789012345678901234567890",
    );
    // A caller who replaces the data makes the row readable again.
    let replaced = ItemPatch {
        data: Some(json!({"serial": "123456789012345678901234567890"})),
        ..ItemPatch::default()
    };
    assert!(db.items().update(ids[3], &replaced).await.unwrap());
    let item = db.items().get(ids[3]).await.unwrap().unwrap();
    assert_eq!(
        (item.name.as_str(), item.data),
        (
            "renamed",
            json!({"serial": "123456789012345678901234567890"})
        )
    );
}
