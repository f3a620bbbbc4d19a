//! Every repository call is a `sqlrepo` span with table, operation, rows and elapsed time, and
//! no span field carries user data.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::fresh_db;
use serde_json::json;
use sqlrepo::{NewAccount, NewItem, NewUser, Transfer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span's fields, by name, as text.
type Fields = HashMap<String, String>;

/// The fields of every `sqlrepo` span, in the order the spans were created.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(Id, Fields)>>>);

struct FieldText<'a>(&'a mut Fields);

impl Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().target() != "sqlrepo" {
            return;
        }
        let mut fields = HashMap::new();
        attrs.record(&mut FieldText(&mut fields));
        self.0.lock().unwrap().push((id.clone(), fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, fields)) = spans.iter_mut().rev().find(|(span, _)| span == id) {
            values.record(&mut FieldText(fields));
        }
    }
}

/// Spans of this thread from DEBUG up, captured until the guard is dropped.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(
        captured
            .clone()
            .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
    );
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn repository_calls_emit_spans_with_rows_and_elapsed_but_no_user_data() {
    let (captured, _guard) = capture();

    let db = fresh_db().await;
    let secret = "secret-name-4711";
    db.items()
        .create(&NewItem::new(secret, json!({"token": "hush-hush"})))
        .await
        .unwrap();
    let batch: Vec<NewItem> = (0..3)
        .map(|i| NewItem::new(format!("b{i}"), json!({})))
        .collect();
    db.items().insert_many(&batch).await.unwrap();
    db.items()
        .create(&NewItem::new(secret, json!({})))
        .await
        .unwrap_err();
    db.users()
        .create(&NewUser::new("private@example.com", "Private Person"))
        .await
        .unwrap();
    let a = db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 777_777,
        })
        .await
        .unwrap();
    let b = db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await
        .unwrap();
    db.accounts()
        .transfer(&Transfer::new(a, b, 123_456).with_key("key-do-not-log"))
        .await
        .unwrap();
    db.dashboard(1).await.unwrap();

    let spans = captured.0.lock().unwrap().clone();
    let find = |table: &str, operation: &str| -> Vec<Fields> {
        spans
            .iter()
            .map(|(_, fields)| fields.clone())
            .filter(|f| f.get("table").map(String::as_str) == Some(table))
            .filter(|f| f.get("operation").map(String::as_str) == Some(operation))
            .collect()
    };

    let creates = find("items", "create");
    assert_eq!(creates.len(), 2, "{spans:?}");
    assert_eq!(creates[0].get("rows").map(String::as_str), Some("1"));
    assert!(creates[0].contains_key("elapsed_us"));
    assert_eq!(
        creates[1].get("error").map(String::as_str),
        Some("duplicate")
    );
    assert_eq!(
        find("items", "insert_many")[0]
            .get("rows")
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(find("users", "create").len(), 1);
    assert_eq!(find("accounts", "open").len(), 2);
    assert_eq!(find("accounts", "transfer").len(), 1);
    assert_eq!(find("users", "dashboard").len(), 1);

    for (_, fields) in &spans {
        for value in fields.values() {
            for private in [
                secret,
                "hush-hush",
                "private@example.com",
                "Private Person",
                "123456",
                "777777",
                "key-do-not-log",
            ] {
                assert!(
                    !value.contains(private),
                    "span field leaks {private}: {fields:?}"
                );
            }
        }
    }
}

/// The `rows` of every `stream_page` span of `table`, in order.
fn page_rows(captured: &Captured, table: &str) -> Vec<usize> {
    captured
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, fields)| fields)
        .filter(|f| f.get("table").map(String::as_str) == Some(table))
        .filter(|f| f.get("operation").map(String::as_str) == Some("stream_page"))
        .map(|f| f["rows"].parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_stream_of_big_items_holds_at_most_a_page_budget_of_bytes_at_a_time() {
    use futures_util::TryStreamExt;
    use sqlrepo::limits::{MAX_DATA_BYTES, MAX_PAGE_BYTES};

    let (captured, _guard) = capture();

    let db = fresh_db().await;
    // Ten items of 1 MiB each, the most `data` may hold; then a few small ones.
    let mut items: Vec<NewItem> = (0..10)
        .map(|i| NewItem::new(format!("big-{i}"), json!("x".repeat(MAX_DATA_BYTES - 2))))
        .collect();
    items.extend((0..5).map(|i| NewItem::new(format!("small-{i}"), json!({"i": i}))));
    db.items().insert_many(&items).await.unwrap();

    let streamed: Vec<_> = db.items().stream().try_collect().await.unwrap();
    assert_eq!(streamed.len(), items.len());

    // Each page starts within the budget: every row but its last began before MAX_PAGE_BYTES
    // of JSON, so no page holds more than the budget plus one row.
    let pages = page_rows(&captured, "items");
    let big_per_page = MAX_PAGE_BYTES / MAX_DATA_BYTES;
    assert_eq!(pages.iter().sum::<usize>(), items.len(), "{pages:?}");
    assert_eq!(
        &pages[..2],
        [big_per_page, big_per_page],
        "pages of big rows stop at the byte budget: {pages:?}"
    );
    // The last page holds the two remaining big rows and the small ones.
    assert_eq!(pages[2..], [10 - 2 * big_per_page + 5], "{pages:?}");
}

#[tokio::test]
async fn a_services_call_through_the_kit_is_a_span_like_ours() {
    let (captured, _guard) = capture();

    let found: Vec<i64> = sqlrepo::kit::traced("notes", "list", async { Ok(vec![1, 2, 3]) })
        .await
        .unwrap();
    assert_eq!(found, [1, 2, 3]);
    let refused: sqlrepo::Result<u64> = sqlrepo::kit::traced("notes", "insert_many", async {
        Err(sqlrepo::Error::Duplicate {
            constraint: "notes.slug".to_owned(),
        })
    })
    .await;
    assert!(matches!(refused, Err(sqlrepo::Error::Duplicate { .. })));

    let spans = captured.0.lock().unwrap().clone();
    let field = |index: usize, name: &str| spans[index].1.get(name).cloned();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(field(0, "table").as_deref(), Some("notes"));
    assert_eq!(field(0, "operation").as_deref(), Some("list"));
    assert_eq!(field(0, "rows").as_deref(), Some("3"));
    assert!(field(0, "elapsed_us").is_some());
    assert_eq!(field(0, "error"), None);
    assert_eq!(field(1, "operation").as_deref(), Some("insert_many"));
    assert_eq!(field(1, "error").as_deref(), Some("duplicate"));
    assert_eq!(field(1, "rows"), None);
}
