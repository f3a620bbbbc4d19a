//! ItemRepo against a real SQLite file: every method, hostile text, batches that fail whole.

mod common;

use common::{TestDb, backend_test, fresh_db_with};
use futures_util::TryStreamExt;
use serde_json::json;
use sqlrepo::limits::{
    MAX_BATCH_ROWS, MAX_CHUNK_BYTES, MAX_DATA_BYTES, MAX_PAGE_BYTES, MAX_PAGE_ROWS,
};
use sqlrepo::{Error, ItemPatch, ItemStatus, NewItem};

fn item(name: &str) -> NewItem {
    NewItem::new(name, json!({"name": name, "n": 1}))
}

backend_test!(create_then_get_returns_every_field);
async fn create_then_get_returns_every_field(db: TestDb) {
    let new = NewItem {
        name: "lamp".into(),
        data: json!({"watts": 40, "tags": ["desk", "led"], "price": 12.5, "nothing": null}),
        status: ItemStatus::Inactive,
    };
    let id = db.items().create(&new).await.unwrap();
    let got = db.items().get(id).await.unwrap().expect("stored");
    assert_eq!(got.id, id);
    assert_eq!(got.name, "lamp");
    assert_eq!(got.data, new.data);
    assert_eq!(got.status, ItemStatus::Inactive);
    assert_eq!(got.created_at, got.updated_at);
    assert!(db.items().get(id + 1).await.unwrap().is_none());
}

backend_test!(hostile_text_is_stored_verbatim_and_breaks_nothing);
async fn hostile_text_is_stored_verbatim_and_breaks_nothing(db: TestDb) {
    let names = [
        "'; DROP TABLE items; --",
        "Robert'); DELETE FROM items WHERE ('1'='1",
        "\"double\" and 'single' quotes",
        "/* comment */ -- trailing",
        "emoji 🦀 and ünïcödé and 中文",
        "percent % underscore _ backslash \\",
        "control \u{7} and line\nbreak and tab\t and \u{2028}",
    ];
    for name in names {
        let data = json!({"text": name});
        let id = db
            .items()
            .create(&NewItem::new(name, data.clone()))
            .await
            .unwrap();
        let got = db.items().get(id).await.unwrap().unwrap();
        assert_eq!(got.name, name);
        assert_eq!(got.data, data);
    }
    assert_eq!(db.items().count().await.unwrap(), names.len() as i64);
    assert_eq!(db.dump("items").await.len(), names.len());
    // Streams and batched gets build their pages as JSON text inside SQLite: same values.
    let streamed: Vec<_> = db.items().stream().try_collect().await.unwrap();
    let fetched = db.items().get_many(&[1, 2, 3, 4, 5, 6, 7]).await.unwrap();
    assert_eq!(streamed, fetched);
    for (item, name) in streamed.iter().zip(names) {
        assert_eq!(item.name, name);
        assert_eq!(item.data, json!({"text": name}));
        assert_eq!(Some(item), db.items().get(item.id).await.unwrap().as_ref());
    }
}

backend_test!(duplicate_name_is_a_typed_error_and_writes_nothing);
async fn duplicate_name_is_a_typed_error_and_writes_nothing(db: TestDb) {
    db.items().create(&item("lamp")).await.unwrap();
    let before = db.dump("items").await;
    let err = db.items().create(&item("lamp")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Duplicate { constraint } if constraint == "items.name"),
        "{err:?}"
    );
    assert_eq!(db.dump("items").await, before);
}

backend_test!(blank_nul_and_over_long_names_are_refused_before_the_database);
async fn blank_nul_and_over_long_names_are_refused_before_the_database(db: TestDb) {
    for name in ["", "   ", "a\0b", &"x".repeat(257)] {
        let err = db.items().create(&item(name)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{name:?}: {err:?}");
    }
    assert!(db.items().create(&item(&"x".repeat(256))).await.is_ok());
    assert_eq!(db.items().count().await.unwrap(), 1);
}

backend_test!(update_changes_only_the_given_fields);
async fn update_changes_only_the_given_fields(db: TestDb) {
    let id = db.items().create(&item("lamp")).await.unwrap();
    let before = db.items().get(id).await.unwrap().unwrap();

    let patch = ItemPatch {
        status: Some(ItemStatus::Archived),
        ..Default::default()
    };
    assert!(db.items().update(id, &patch).await.unwrap());
    let after = db.items().get(id).await.unwrap().unwrap();
    assert_eq!(after.status, ItemStatus::Archived);
    assert_eq!(after.name, before.name);
    assert_eq!(after.data, before.data);
    assert!(after.updated_at >= before.updated_at);

    let patch = ItemPatch {
        name: Some("desk lamp".into()),
        data: Some(json!([1, 2, 3])),
        status: None,
    };
    assert!(db.items().update(id, &patch).await.unwrap());
    let after = db.items().get(id).await.unwrap().unwrap();
    assert_eq!(after.name, "desk lamp");
    assert_eq!(after.data, json!([1, 2, 3]));
    assert_eq!(after.status, ItemStatus::Archived);
}

backend_test!(update_reports_false_for_unknown_ids_empty_and_identical_patches);
async fn update_reports_false_for_unknown_ids_empty_and_identical_patches(db: TestDb) {
    let id = db.items().create(&item("lamp")).await.unwrap();
    let before = db.dump("items").await;
    let rename = ItemPatch {
        name: Some("other".into()),
        ..Default::default()
    };
    assert!(!db.items().update(id + 100, &rename).await.unwrap());
    assert!(!db.items().update(id, &ItemPatch::default()).await.unwrap());
    let same = ItemPatch {
        name: Some("lamp".into()),
        status: Some(ItemStatus::Active),
        ..Default::default()
    };
    assert!(!db.items().update(id, &same).await.unwrap());
    assert_eq!(db.dump("items").await, before, "updated_at must not move");
}

backend_test!(update_to_a_taken_name_is_duplicate_and_changes_nothing);
async fn update_to_a_taken_name_is_duplicate_and_changes_nothing(db: TestDb) {
    db.items().create(&item("a")).await.unwrap();
    let b = db.items().create(&item("b")).await.unwrap();
    let before = db.dump("items").await;
    let patch = ItemPatch {
        name: Some("a".into()),
        ..Default::default()
    };
    let err = db.items().update(b, &patch).await.unwrap_err();
    assert!(matches!(err, Error::Duplicate { ref constraint } if constraint == "items.name"));
    let blank = ItemPatch {
        name: Some(" ".into()),
        ..Default::default()
    };
    assert!(matches!(
        db.items().update(b, &blank).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
    assert_eq!(db.dump("items").await, before);
}

backend_test!(delete_reports_whether_the_row_existed);
async fn delete_reports_whether_the_row_existed(db: TestDb) {
    let id = db.items().create(&item("lamp")).await.unwrap();
    assert!(db.items().delete(id).await.unwrap());
    assert!(!db.items().delete(id).await.unwrap());
    assert!(db.items().get(id).await.unwrap().is_none());
    assert_eq!(db.items().count().await.unwrap(), 0);
}

backend_test!(insert_many_inserts_in_slice_order_and_counts_rows);
async fn insert_many_inserts_in_slice_order_and_counts_rows(db: TestDb) {
    assert_eq!(db.items().insert_many(&[]).await.unwrap(), 0);
    let items: Vec<NewItem> = (0..500)
        .map(|i| NewItem {
            name: format!("item-{i:04}"),
            data: json!({"i": i, "s": "it's \"quoted\""}),
            status: if i % 2 == 0 {
                ItemStatus::Active
            } else {
                ItemStatus::Inactive
            },
        })
        .collect();
    assert_eq!(db.items().insert_many(&items).await.unwrap(), 500);
    let stored: Vec<_> = db.items().stream().try_collect().await.unwrap();
    assert_eq!(stored.len(), 500);
    for (new, got) in items.iter().zip(&stored) {
        assert_eq!(got.name, new.name);
        assert_eq!(got.data, new.data);
        assert_eq!(got.status, new.status);
    }
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
}

backend_test!(insert_many_with_a_duplicate_at_9000_leaves_the_table_as_it_was);
async fn insert_many_with_a_duplicate_at_9000_leaves_the_table_as_it_was(db: TestDb) {
    db.items().create(&item("existing")).await.unwrap();
    let before = db.dump("items").await;
    let mut items: Vec<NewItem> = (0..10_000).map(|i| item(&format!("n{i}"))).collect();
    items[9_000] = item("existing");
    let err = db.items().insert_many(&items).await.unwrap_err();
    assert!(matches!(err, Error::Duplicate { ref constraint } if constraint == "items.name"));
    assert_eq!(db.dump("items").await, before);
}

backend_test!(insert_many_across_chunks_rolls_back_every_chunk);
async fn insert_many_across_chunks_rolls_back_every_chunk(db: TestDb) {
    // More rows than one statement carries, with the repeat in the last chunk: the earlier
    // chunks ran and must be undone with it.
    let mut items: Vec<NewItem> = (0..60_000).map(|i| item(&format!("n{i}"))).collect();
    items[59_999] = item("n3");
    let err = db.items().insert_many(&items).await.unwrap_err();
    assert!(matches!(err, Error::Duplicate { .. }), "{err:?}");
    assert_eq!(db.items().count().await.unwrap(), 0);
    items[59_999] = item("last");
    assert_eq!(db.items().insert_many(&items).await.unwrap(), 60_000);
    assert_eq!(db.items().count().await.unwrap(), 60_000);
}

backend_test!(insert_many_refuses_invalid_items_and_oversized_batches_before_writing);
async fn insert_many_refuses_invalid_items_and_oversized_batches_before_writing(db: TestDb) {
    let mut items: Vec<NewItem> = (0..10).map(|i| item(&format!("n{i}"))).collect();
    items[7].name = " ".into();
    let err = db.items().insert_many(&items).await.unwrap_err();
    match err {
        Error::InvalidInput(message) => assert!(message.contains("item 7"), "{message}"),
        other => panic!("{other:?}"),
    }
    let too_many: Vec<NewItem> = (0..=MAX_BATCH_ROWS)
        .map(|i| item(&format!("n{i}")))
        .collect();
    assert!(matches!(
        db.items().insert_many(&too_many).await.unwrap_err(),
        Error::InvalidInput(_)
    ));
    assert_eq!(db.items().count().await.unwrap(), 0);
}

backend_test!(set_status_many_counts_only_rows_that_really_changed);
async fn set_status_many_counts_only_rows_that_really_changed(db: TestDb) {
    let items: Vec<NewItem> = (0..10).map(|i| item(&format!("n{i}"))).collect();
    db.items().insert_many(&items).await.unwrap();
    let archived = db
        .items()
        .set_status_many(&[1, 2, 3], ItemStatus::Archived)
        .await
        .unwrap();
    assert_eq!(archived, 3);
    // 1..3 already archived, 999 unknown, 4 repeated: only 4 and 5 change.
    let changed = db
        .items()
        .set_status_many(&[1, 2, 3, 4, 4, 5, 999], ItemStatus::Archived)
        .await
        .unwrap();
    assert_eq!(changed, 2);
    assert_eq!(
        db.items()
            .set_status_many(&[], ItemStatus::Active)
            .await
            .unwrap(),
        0
    );
    let archived = db
        .items()
        .list_by_status(ItemStatus::Archived)
        .await
        .unwrap();
    let ids: Vec<i64> = archived.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        db.items()
            .list_by_status(ItemStatus::Active)
            .await
            .unwrap()
            .len(),
        5
    );
}

backend_test!(stream_yields_twenty_thousand_items_in_id_order);
async fn stream_yields_twenty_thousand_items_in_id_order(db: TestDb) {
    let items: Vec<NewItem> = (0..20_000).map(|i| item(&format!("n{i}"))).collect();
    db.items().insert_many(&items).await.unwrap();
    db.items().delete(10).await.unwrap();
    let mut count = 0;
    let mut last = 0;
    let items = db.items();
    let mut stream = std::pin::pin!(items.stream());
    while let Some(item) = stream.try_next().await.unwrap() {
        assert!(item.id > last);
        assert_ne!(item.id, 10);
        assert_eq!(item.name, format!("n{}", item.id - 1));
        last = item.id;
        count += 1;
    }
    assert_eq!(count, 19_999);
}

// The stream reads its next page while the caller works through the current one (in a task of
// its own). Dropped mid-way, with that read in flight, it must leave no reader taken: with one
// reader, a point get right after must not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_while_it_reads_ahead_leaves_the_only_reader_free() {
    let db = fresh_db_with(|options| options.readers(1)).await;
    let items: Vec<NewItem> = (0..6_000).map(|i| item(&format!("n{i}"))).collect();
    db.items().insert_many(&items).await.unwrap();
    for _ in 0..20 {
        let repo = db.items();
        let mut stream = Box::pin(repo.stream());
        let first = stream.try_next().await.unwrap().unwrap();
        assert_eq!(first.id, 1);
        drop(stream);
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), db.items().get(6_000))
            .await
            .expect("a get waited behind a dropped stream's read ahead")
            .unwrap();
        assert_eq!(got.unwrap().name, "n5999");
    }
}

// Rows committed while the stream reads ahead: every row there before it started comes exactly
// once, in id order, and so do the new ones it sees (ids past the page being read); each row it
// yields is the row the table holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_committed_while_a_stream_reads_ahead_come_once_in_id_order() {
    let db = fresh_db_with(|options| options).await;
    let items: Vec<NewItem> = (0..9_000).map(|i| item(&format!("n{i}"))).collect();
    db.items().insert_many(&items).await.unwrap();
    let repo = db.items();
    let mut stream = std::pin::pin!(repo.stream());
    let mut streamed = Vec::new();
    let mut batch = 0;
    while let Some(got) = stream.try_next().await.unwrap() {
        if let Some(last) = streamed.last() {
            assert!(got.id > *last, "{} after {last}", got.id);
        }
        streamed.push(got.id);
        if got.id <= 9_000 {
            assert_eq!(got.name, format!("n{}", got.id - 1));
        }
        if streamed.len() % 1_500 == 0 {
            let more: Vec<NewItem> = (0..500).map(|i| item(&format!("b{batch}-{i}"))).collect();
            db.items().insert_many(&more).await.unwrap();
            batch += 1;
        }
    }
    // Every row there at the start came, each once (the ids only ever grow).
    let old: Vec<i64> = streamed.iter().copied().filter(|id| *id <= 9_000).collect();
    assert_eq!(old, (1..=9_000).collect::<Vec<i64>>());
    // What came past them are rows the table holds, and it holds every batch inserted.
    assert_eq!(db.items().count().await.unwrap(), 9_000 + 500 * batch);
    let new: Vec<i64> = streamed.iter().copied().filter(|id| *id > 9_000).collect();
    assert!(!new.is_empty(), "no row committed meanwhile came");
    let held = db.items().get_many(&new).await.unwrap();
    assert_eq!(held.iter().map(|item| item.id).collect::<Vec<_>>(), new);
}

backend_test!(get_many_returns_known_ids_in_order);
async fn get_many_returns_known_ids_in_order(db: TestDb) {
    let items: Vec<NewItem> = (0..5).map(|i| item(&format!("n{i}"))).collect();
    db.items().insert_many(&items).await.unwrap();
    let got = db.items().get_many(&[5, 1, 3, 3, 42]).await.unwrap();
    let ids: Vec<i64> = got.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![1, 3, 5]);
    assert_eq!(got[0], db.items().get(1).await.unwrap().unwrap());
    assert!(db.items().get_many(&[]).await.unwrap().is_empty());
}

backend_test!(concurrent_writers_from_many_tasks_all_land);
async fn concurrent_writers_from_many_tasks_all_land(db: TestDb) {
    let mut tasks = Vec::new();
    for task in 0..8 {
        let db = db.db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                db.items()
                    .create(&item(&format!("t{task}-{i}")))
                    .await
                    .unwrap();
            }
            let batch: Vec<NewItem> = (0..100).map(|i| item(&format!("t{task}-b{i}"))).collect();
            db.items().insert_many(&batch).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(db.items().count().await.unwrap(), 8 * 150);
    assert_eq!(db.dump("items").await.len(), 8 * 150);
}

// SQLite only: an unmigrated database is opened through DbOptions, which are SQLite's.
#[tokio::test]
async fn an_unmigrated_database_gives_a_schema_error_that_says_so() {
    let db = fresh_db_with(|options| options.migrate(false)).await;
    let err = db.items().count().await.unwrap_err();
    match err {
        Error::Schema(message) => assert!(message.contains("migrations"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        db.items().create(&item("x")).await.unwrap_err(),
        Error::Schema(_)
    ));
    db.migrate().await.unwrap();
    assert_eq!(db.items().count().await.unwrap(), 0);
}

backend_test!(data_past_the_limits_is_refused);
async fn data_past_the_limits_is_refused(db: TestDb) {
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    assert!(matches!(
        db.items()
            .create(&NewItem::new("deep", deep))
            .await
            .unwrap_err(),
        Error::InvalidInput(_)
    ));
    let huge = json!("x".repeat(sqlrepo::limits::MAX_DATA_BYTES));
    assert!(matches!(
        db.items()
            .create(&NewItem::new("huge", huge))
            .await
            .unwrap_err(),
        Error::InvalidInput(_)
    ));
    assert_eq!(db.items().count().await.unwrap(), 0);
}

backend_test!(a_closed_db_refuses_calls_and_the_file_reopens_intact);
async fn a_closed_db_refuses_calls_and_the_file_reopens_intact(db: TestDb) {
    db.items().create(&item("kept")).await.unwrap();
    db.close().await;
    assert!(db.items().count().await.is_err());
    let reopened = db.reopen().await;
    assert_eq!(reopened.items().count().await.unwrap(), 1);
}

backend_test!(repository_futures_borrow_nothing_so_they_can_be_joined_and_spawned);
async fn repository_futures_borrow_nothing_so_they_can_be_joined_and_spawned(db: TestDb) {
    // Temporaries everywhere: the repository, the NewItem. The futures own what they need.
    let creates: Vec<_> = (0..20)
        .map(|i| {
            db.items()
                .create(&NewItem::new(format!("j{i}"), json!({"i": i})))
        })
        .collect();
    let ids = futures_util::future::try_join_all(creates).await.unwrap();
    assert_eq!(ids.len(), 20);
    let spawned = tokio::spawn(db.items().count());
    assert_eq!(spawned.await.unwrap().unwrap(), 20);
    let (first, stream_len) = tokio::join!(
        db.items().get(ids[0]),
        tokio::spawn(db.items().stream().try_collect::<Vec<_>>())
    );
    assert_eq!(first.unwrap().unwrap().data, json!({"i": 0}));
    assert_eq!(stream_len.unwrap().unwrap().len(), 20);
}

/// Item data whose compact JSON text is exactly `bytes` bytes: one string.
fn data_of_bytes(bytes: usize) -> serde_json::Value {
    json!("x".repeat(bytes - 2))
}

/// `count` items of `bytes` bytes of data each, named `big-0`, `big-1`, ...
fn big_items(count: usize, bytes: usize) -> Vec<NewItem> {
    (0..count)
        .map(|i| NewItem::new(format!("big-{i}"), data_of_bytes(bytes)))
        .collect()
}

backend_test!(data_at_the_size_limit_is_accepted_by_create_update_and_insert_many_alike);
async fn data_at_the_size_limit_is_accepted_by_create_update_and_insert_many_alike(db: TestDb) {
    let at_limit = data_of_bytes(MAX_DATA_BYTES);
    let created = db
        .items()
        .create(&NewItem::new("one", at_limit.clone()))
        .await
        .unwrap();
    let patch = ItemPatch {
        data: Some(at_limit.clone()),
        name: Some("one renamed".into()),
        ..Default::default()
    };
    assert!(db.items().update(created, &patch).await.unwrap());
    // The batch measures `data` alone too: name and status do not count against it.
    let inserted = db
        .items()
        .insert_many(&[NewItem::new("two", at_limit.clone())])
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    let stored = db.items().get_many(&[1, 2]).await.unwrap();
    assert!(stored.iter().all(|item| item.data == at_limit));
}

backend_test!(data_one_byte_past_the_limit_is_refused_by_every_path_and_writes_nothing);
async fn data_one_byte_past_the_limit_is_refused_by_every_path_and_writes_nothing(db: TestDb) {
    let id = db.items().create(&item("kept")).await.unwrap();
    let before = db.dump("items").await;
    let past = data_of_bytes(MAX_DATA_BYTES + 1);
    let refusals = [
        db.items()
            .create(&NewItem::new("past", past.clone()))
            .await
            .map(|_| ()),
        db.items()
            .update(
                id,
                &ItemPatch {
                    data: Some(past.clone()),
                    ..Default::default()
                },
            )
            .await
            .map(|_| ()),
        db.items()
            .insert_many(&[item("fine"), NewItem::new("past", past)])
            .await
            .map(|_| ()),
    ];
    for refusal in refusals {
        assert!(
            matches!(&refusal, Err(Error::InvalidInput(m)) if m.contains("bytes")),
            "{refusal:?}"
        );
    }
    assert_eq!(db.dump("items").await, before);
}

/// 20 items of 1 MiB: past one page of the stream (`MAX_PAGE_BYTES`), one page of
/// `get_many` and one `insert_many` statement (`MAX_CHUNK_BYTES`), so every path has to split.
const BIG_ROWS: usize = 20;

backend_test!(big_items_insert_stream_and_get_many_across_byte_bounded_pages);
async fn big_items_insert_stream_and_get_many_across_byte_bounded_pages(db: TestDb) {
    const { assert!(BIG_ROWS * MAX_DATA_BYTES > MAX_CHUNK_BYTES) };
    const { assert!(BIG_ROWS * MAX_DATA_BYTES > MAX_PAGE_BYTES) };
    let items = big_items(BIG_ROWS, MAX_DATA_BYTES);
    assert_eq!(
        db.items().insert_many(&items).await.unwrap(),
        BIG_ROWS as u64
    );

    let streamed: Vec<_> = db.items().stream().try_collect().await.unwrap();
    let ids: Vec<i64> = (1..=BIG_ROWS as i64).collect();
    let fetched = db.items().get_many(&ids).await.unwrap();
    assert_eq!(streamed.len(), BIG_ROWS);
    assert_eq!(streamed, fetched);
    for (stored, new) in streamed.iter().zip(&items) {
        assert_eq!((&stored.name, &stored.data), (&new.name, &new.data));
    }
    assert_eq!(streamed.iter().map(|i| i.id).collect::<Vec<_>>(), ids);
}

backend_test!(big_items_span_byte_bounded_pages_inside_a_transaction_too);
async fn big_items_span_byte_bounded_pages_inside_a_transaction_too(db: TestDb) {
    // Inside a Tx the multi-page paths nest in the transaction (a savepoint, not a second
    // BEGIN) and see its uncommitted rows; the Tx then commits as usual.
    let items = big_items(BIG_ROWS, MAX_DATA_BYTES);
    let tx = db.begin().await.unwrap();
    assert_eq!(
        tx.items().insert_many(&items).await.unwrap(),
        BIG_ROWS as u64
    );
    let ids: Vec<i64> = (1..=BIG_ROWS as i64).collect();
    let fetched = tx.items().get_many(&ids).await.unwrap();
    assert_eq!(fetched.iter().map(|i| i.id).collect::<Vec<_>>(), ids);
    let streamed: Vec<_> = tx.items().stream().try_collect().await.unwrap();
    assert_eq!(streamed, fetched);
    tx.commit().await.unwrap();
    assert_eq!(db.items().get_many(&ids).await.unwrap(), fetched);
}

backend_test!(insert_many_split_by_bytes_is_still_all_or_nothing);
async fn insert_many_split_by_bytes_is_still_all_or_nothing(db: TestDb) {
    db.items().create(&item("taken")).await.unwrap();
    let before = db.dump("items").await;
    // The last item's name is taken: it lands in the last statement, after the first
    // statements of the same call have run.
    let mut items = big_items(BIG_ROWS, MAX_DATA_BYTES);
    items.push(item("taken"));
    let err = db.items().insert_many(&items).await.unwrap_err();
    assert!(
        matches!(&err, Error::Duplicate { constraint } if constraint == "items.name"),
        "{err:?}"
    );
    assert_eq!(db.dump("items").await, before);
}

backend_test!(list_by_status_page_walks_one_status_with_a_cursor);
async fn list_by_status_page_walks_one_status_with_a_cursor(db: TestDb) {
    let items: Vec<NewItem> = (0..10)
        .map(|i| NewItem {
            status: if i % 3 == 0 {
                ItemStatus::Archived
            } else {
                ItemStatus::Active
            },
            ..item(&format!("item-{i}"))
        })
        .collect();
    db.items().insert_many(&items).await.unwrap();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = db
            .items()
            .list_by_status_page(ItemStatus::Active, after, 3)
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        assert!(page.items.iter().all(|i| i.status == ItemStatus::Active));
        pages.push(page.items.iter().map(|i| i.id).collect::<Vec<_>>());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [vec![2, 3, 5], vec![6, 8, 9]]);
    let archived = db
        .items()
        .list_by_status_page(ItemStatus::Archived, None, 1_000)
        .await
        .unwrap();
    assert_eq!(
        archived.items.iter().map(|i| i.id).collect::<Vec<_>>(),
        [1, 4, 7, 10]
    );
    assert_eq!(archived.next, None);
}

backend_test!(list_by_status_page_bounds_big_rows_by_bytes);
async fn list_by_status_page_bounds_big_rows_by_bytes(db: TestDb) {
    db.items()
        .insert_many(&big_items(10, MAX_DATA_BYTES))
        .await
        .unwrap();
    let first = db
        .items()
        .list_by_status_page(ItemStatus::Active, None, MAX_PAGE_ROWS)
        .await
        .unwrap();
    let per_page = MAX_PAGE_BYTES / MAX_DATA_BYTES;
    assert_eq!(
        first.items.len(),
        per_page,
        "a page stops at its byte budget"
    );
    assert_eq!(first.next, Some(per_page as i64));
    let mut seen = first.items.len();
    let mut after = first.next;
    while let Some(cursor) = after {
        let page = db
            .items()
            .list_by_status_page(ItemStatus::Active, Some(cursor), MAX_PAGE_ROWS)
            .await
            .unwrap();
        assert!(page.items.len() <= per_page);
        seen += page.items.len();
        after = page.next;
    }
    assert_eq!(seen, 10);
}

backend_test!(a_page_limit_of_zero_or_past_the_maximum_is_refused_before_the_database);
async fn a_page_limit_of_zero_or_past_the_maximum_is_refused_before_the_database(db: TestDb) {
    db.close().await;
    // A closed database would fail any statement: InvalidInput proves none was sent.
    for limit in [0, MAX_PAGE_ROWS + 1, u32::MAX] {
        let err = db
            .items()
            .list_by_status_page(ItemStatus::Active, None, limit)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{limit}: {err:?}");
    }
}

backend_test!(
    multi_thread,
    concurrent_point_gets_each_get_their_own_item_when_coalesced,
    |options| options.readers(1)
);
async fn concurrent_point_gets_each_get_their_own_item_when_coalesced(db: TestDb) {
    // One reader (on SQLite), so concurrent gets queue and are answered together by one
    // statement.
    let items: Vec<NewItem> = (0..200)
        .map(|i| NewItem::new(format!("item-{i}"), json!({"i": i})))
        .collect();
    db.items().insert_many(&items).await.unwrap();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for task in 0..64_i64 {
        let db = db.db.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut seen = Vec::new();
            for n in 0..20 {
                // Ids 1..=200 exist; 201.. do not.
                let id = (task * 20 + n) % 230 + 1;
                seen.push((id, db.items().get(id).await.unwrap()));
            }
            seen
        }));
    }
    for task in tasks {
        for (id, item) in task.await.unwrap() {
            if id <= 200 {
                let item = item.unwrap_or_else(|| panic!("item {id} missing"));
                assert_eq!(item.id, id);
                assert_eq!(item.name, format!("item-{}", id - 1));
                assert_eq!(item.data, json!({"i": id - 1}));
            } else {
                assert_eq!(item, None, "id {id} does not exist");
            }
        }
    }
}

backend_test!(a_get_after_a_write_sees_it_whether_or_not_gets_are_coalesced);
async fn a_get_after_a_write_sees_it_whether_or_not_gets_are_coalesced(first: TestDb) {
    // Coalescing is SQLite's (PostgreSQL reads one by one), so each setting gets a database.
    let backend = first.backend;
    drop(first);
    for group_reads in [true, false] {
        let db = TestDb::new_with(backend, |options| {
            options.readers(1).group_reads(group_reads)
        })
        .await
        .expect("the backend ran the first database");
        let id = db
            .items()
            .create(&NewItem::new("lamp", json!({"watts": 40})))
            .await
            .unwrap();
        let (a, b, c) = tokio::join!(
            db.items().get(id),
            db.items().get(id),
            db.items().get(id + 1)
        );
        assert_eq!(a.unwrap().unwrap().name, "lamp");
        assert_eq!(b.unwrap().unwrap().name, "lamp");
        assert_eq!(c.unwrap(), None);
    }
}

backend_test!(
    multi_thread,
    concurrent_updates_each_get_their_own_answer_when_carried_together
);
async fn concurrent_updates_each_get_their_own_answer_when_carried_together(db: TestDb) {
    let items: Vec<NewItem> = (0..64)
        .map(|i| NewItem::new(format!("item-{i}"), json!({"i": i})))
        .collect();
    db.items().insert_many(&items).await.unwrap();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for task in 0..64_i64 {
        let db = db.db.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let id = task + 1;
            let mut answers = Vec::new();
            for round in 0..10 {
                let patch = match (task % 4, round % 3) {
                    // A name another item holds: Duplicate, for this caller only.
                    (0, 0) => ItemPatch {
                        name: Some(format!("item-{}", (task + 1) % 64)),
                        ..ItemPatch::default()
                    },
                    // The value it already has: Ok(false).
                    (1, _) => ItemPatch {
                        data: Some(json!({"i": task})),
                        ..ItemPatch::default()
                    },
                    _ => ItemPatch {
                        data: Some(json!({"task": task, "round": round})),
                        status: Some(ItemStatus::Inactive),
                        ..ItemPatch::default()
                    },
                };
                answers.push((round, db.items().update(id, &patch).await));
            }
            // An unknown id: Ok(false), nothing changes.
            answers.push((
                99,
                db.items()
                    .update(
                        1_000 + id,
                        &ItemPatch {
                            data: Some(json!(1)),
                            ..ItemPatch::default()
                        },
                    )
                    .await,
            ));
            answers
        }));
    }
    for (task, handle) in tasks.into_iter().enumerate() {
        let task = task as i64;
        for (round, answer) in handle.await.unwrap() {
            match (task % 4, round % 3, round) {
                (_, _, 99) => assert!(!answer.unwrap(), "unknown id"),
                (0, 0, _) => assert!(
                    matches!(&answer, Err(Error::Duplicate { constraint }) if constraint == "items.name"),
                    "task {task} round {round}: {answer:?}"
                ),
                (1, _, _) => assert!(!answer.unwrap(), "task {task} round {round}"),
                // The data changes every time.
                _ => assert!(answer.unwrap(), "task {task} round {round}"),
            }
        }
        let item = db.items().get(task + 1).await.unwrap().unwrap();
        assert_eq!(item.name, format!("item-{task}"));
        match task % 4 {
            1 => assert_eq!(
                (item.data, item.status),
                (json!({"i": task}), ItemStatus::Active)
            ),
            // Round 9 of a task ≡ 0 (mod 4) is the refused rename.
            0 => assert_eq!(
                (item.data, item.status),
                (json!({"task": task, "round": 8}), ItemStatus::Inactive)
            ),
            _ => assert_eq!(
                (item.data, item.status),
                (json!({"task": task, "round": 9}), ItemStatus::Inactive)
            ),
        }
    }
    assert_eq!(db.items().count().await.unwrap(), 64);
}
