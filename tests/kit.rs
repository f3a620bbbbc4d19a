//! The kit a service's repository is built with (`sqlrepo::kit`, `Db::run_migrations`): its
//! migrations on our writer, all or nothing; batches in byte-bounded chunks that land as one
//! unit on a `Db` and inside a `Tx`. Each test works on a fresh database.

mod common;

use common::{TestDb, backend_test};
use sqlrepo::kit;
use sqlrepo::sqlx::SqlStr;
use sqlrepo::sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlrepo::{Db, Error, Result};

/// A service's migrator of `steps` (version 1, 2, …), each valid on SQLite and PostgreSQL.
fn migrator(steps: &[&'static str]) -> Migrator {
    Migrator::with_migrations(
        steps
            .iter()
            .enumerate()
            .map(|(index, sql)| {
                Migration::new(
                    index as i64 + 1,
                    format!("step {}", index + 1).into(),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

const NOTES: &str =
    "CREATE TABLE notes (id BIGINT PRIMARY KEY, user_id BIGINT REFERENCES users (id))";
const NOTES_INDEX: &str = "CREATE INDEX notes_user_idx ON notes (user_id)";
// A syntax error on both backends.
const BROKEN: &str = "CREATE TABLEE tags (id BIGINT PRIMARY KEY)";

/// The service's migrations recorded on the database (sqlx's default `_sqlx_migrations`), and
/// whether its table exists, read through a writer `Conn` by backend.
async fn service_schema(db: &Db) -> (i64, bool) {
    let mut conn = db.handle().writer().await.unwrap();
    match conn.backend().unwrap() {
        sqlrepo::Backend::Sqlite(c) => {
            let applied = sqlrepo::sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM _sqlx_migrations WHERE success",
            )
            .fetch_one(&mut *c)
            .await
            .unwrap_or(0);
            let notes = sqlrepo::sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sqlite_master WHERE name = 'notes'",
            )
            .fetch_one(&mut *c)
            .await
            .unwrap();
            (applied, notes == 1)
        }
        #[cfg(feature = "postgres")]
        sqlrepo::Backend::Postgres(c) => {
            let applied = sqlrepo::sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM _sqlx_migrations WHERE success",
            )
            .fetch_one(&mut *c)
            .await
            .unwrap_or(0);
            let notes =
                sqlrepo::sqlx::query_scalar::<_, bool>("SELECT to_regclass('notes') IS NOT NULL")
                    .fetch_one(&mut *c)
                    .await
                    .unwrap();
            (applied, notes)
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("a backend this test does not know"),
    }
}

backend_test!(a_services_migrations_apply_once_beside_ours);
async fn a_services_migrations_apply_once_beside_ours(db: TestDb) {
    let service = migrator(&[NOTES, NOTES_INDEX]);
    db.run_migrations(&service).await.unwrap();
    assert_eq!(service_schema(&db).await, (2, true));
    // Again, and after a restart: nothing left to apply, nothing refused.
    db.run_migrations(&service).await.unwrap();
    let again = db.reopen().await;
    again.run_migrations(&service).await.unwrap();
    assert_eq!(service_schema(&again).await, (2, true));
    // sqlrepo's own migrator through the same door is Db::migrate.
    again.run_migrations(&sqlrepo::MIGRATOR).await.unwrap();
    again.close().await;
}

backend_test!(a_refused_migration_is_schema_naming_it_and_undoes_its_run_on_sqlite);
async fn a_refused_migration_is_schema_naming_it_and_undoes_its_run_on_sqlite(db: TestDb) {
    let service = migrator(&[NOTES, BROKEN]);
    let refused = db.run_migrations(&service).await;
    assert!(
        matches!(&refused, Err(Error::Schema(message)) if message.contains("migration 2")),
        "{refused:?}"
    );
    if db.backend.is_postgres() {
        // sqlx applies each PostgreSQL migration in its own transaction: the first stays.
        assert_eq!(service_schema(&db).await, (1, true));
    } else {
        // One BEGIN IMMEDIATE for the run: the first migration is undone with the second.
        assert_eq!(service_schema(&db).await, (0, false));
    }
    // The writer is usable afterwards, for the fixed migrations and for our writes.
    db.run_migrations(&migrator(&[NOTES])).await.unwrap();
    assert_eq!(service_schema(&db).await, (1, true));
    db.items()
        .create(&sqlrepo::NewItem::new("after", serde_json::json!({})))
        .await
        .unwrap();
}

backend_test!(a_migration_edited_after_it_ran_is_schema_and_changes_nothing);
async fn a_migration_edited_after_it_ran_is_schema_and_changes_nothing(db: TestDb) {
    db.run_migrations(&migrator(&[NOTES])).await.unwrap();
    let edited = migrator(&["CREATE TABLE notes (id BIGINT PRIMARY KEY)", NOTES_INDEX]);
    let refused = db.run_migrations(&edited).await;
    assert!(matches!(refused, Err(Error::Schema(_))), "{refused:?}");
    assert_eq!(service_schema(&db).await, (1, true));
}

#[tokio::test]
async fn processes_starting_at_once_apply_a_services_migrations_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    Db::open(&path).await.unwrap().close().await;
    let service = std::sync::Arc::new(migrator(&[NOTES, NOTES_INDEX]));
    let starts = (0..4).map(|_| {
        let (path, service) = (path.clone(), service.clone());
        tokio::spawn(async move {
            // Each its own Db on the file, as separate processes would be.
            let db = Db::open(&path).await?;
            db.run_migrations(&service).await?;
            db.close().await;
            Ok::<_, Error>(())
        })
    });
    for started in futures_util::future::join_all(starts).await {
        started.unwrap().unwrap();
    }
    let db = Db::open(&path).await.unwrap();
    assert_eq!(service_schema(&db).await, (2, true));
    db.close().await;
}

/// `n` item rows for the kit's chunking, `[name, data]`, the last one named `last`.
fn rows(n: usize, last: &str) -> Vec<String> {
    let mut names: Vec<String> = (0..n - 1).map(|i| format!("kit-{i}")).collect();
    names.push(last.to_owned());
    names
}

fn chunks(names: &[String]) -> Result<Vec<String>> {
    kit::json_chunks(
        "row",
        names,
        |name| {
            if name.trim().is_empty() {
                Err(Error::InvalidInput("name must not be blank".to_owned()))
            } else {
                Ok(())
            }
        },
        |name| (&**name, "{}"),
    )
}

/// The kit's `write_chunks` with one `json_each` statement per chunk (the same statement as
/// the kit's rustdoc example).
async fn write(db_or_tx: &sqlrepo::Handle, chunks: &[String]) -> Result<u64> {
    let mut conn = db_or_tx.writer().await?;
    kit::write_chunks(&mut conn, chunks, |sqlite, rows| {
        Box::pin(async move {
            let done = sqlrepo::sqlx::query!(
                "INSERT INTO items (name, data) SELECT value ->> 0, value ->> 1 FROM json_each(?1) ORDER BY key",
                rows
            )
            .execute(sqlite)
            .await?;
            Ok(done.rows_affected())
        })
    })
    .await
}

#[tokio::test]
async fn chunks_of_a_batch_land_together_or_not_at_all() {
    let db = common::fresh_db().await;
    db.items()
        .create(&sqlrepo::NewItem::new("taken", serde_json::json!({})))
        .await
        .unwrap();
    // 100,000 rows are two chunks (MAX_CHUNK_ROWS); the last row, in the second, is refused.
    let refused = chunks(&rows(100_000, "taken")).unwrap();
    assert_eq!(refused.len(), 2);
    let err = write(&db.handle(), &refused).await.unwrap_err();
    assert!(
        matches!(&err, Error::Duplicate { constraint } if constraint == "items.name"),
        "{err:?}"
    );
    assert_eq!(db.items().count().await.unwrap(), 1);
    // The writer was given back clean: the same batch with a free name lands whole.
    let good = chunks(&rows(100_000, "free")).unwrap();
    assert_eq!(write(&db.handle(), &good).await.unwrap(), 100_000);
    assert_eq!(db.items().count().await.unwrap(), 100_001);
}

#[tokio::test]
async fn inside_a_tx_refused_chunks_undo_only_themselves() {
    let db = common::fresh_db().await;
    db.items()
        .create(&sqlrepo::NewItem::new("taken", serde_json::json!({})))
        .await
        .unwrap();
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&sqlrepo::NewItem::new("in-tx", serde_json::json!({})))
        .await
        .unwrap();
    let refused = chunks(&rows(60_000, "taken")).unwrap();
    assert!(matches!(
        write(&tx.handle(), &refused).await,
        Err(Error::Duplicate { .. })
    ));
    // The transaction goes on: its own write stays, none of the batch's rows are there.
    assert_eq!(tx.items().count().await.unwrap(), 2);
    tx.commit().await.unwrap();
    assert_eq!(db.items().count().await.unwrap(), 2);
}

#[tokio::test]
async fn an_invalid_row_is_refused_by_position_before_anything_is_sent() {
    let names = rows(10, " ");
    let err = chunks(&names).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(message) if message == "row 9: name must not be blank"),
        "{err:?}"
    );
    let too_many = rows(sqlrepo::limits::MAX_BATCH_ROWS + 1, "x");
    assert!(matches!(chunks(&too_many), Err(Error::InvalidInput(_))));
    assert_eq!(chunks(&[]).unwrap(), Vec::<String>::new());
}

/// `kit::read_page` stops at its row limit or past `MAX_PAGE_BYTES` beyond the first row,
/// whichever comes first; the row past the budget starts the next page (the cursor is the last
/// row taken), a first row bigger than the budget is still taken, and a short page has no
/// cursor.
#[tokio::test]
async fn read_page_stops_at_rows_or_bytes_and_leaves_the_rest_for_the_next_page() {
    use sqlrepo::limits::MAX_PAGE_BYTES;
    let budget = MAX_PAGE_BYTES as i64;
    let rows = |sizes: &[i64]| {
        let rows: Vec<Result<(i64, i64), sqlx::Error>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Ok((i as i64 + 10, size)))
            .collect();
        futures_util::stream::iter(rows)
    };
    let take = |(key, size): (i64, i64)| (key, key, size);

    let by_rows = kit::read_page(rows(&[1, 1, 1, 1]), 3, take).await.unwrap();
    assert_eq!((by_rows.rows, by_rows.next), (vec![10, 11, 12], Some(12)));

    let third = budget / 2 + 1;
    let by_bytes = kit::read_page(rows(&[5, third, third, 1]), 10, take)
        .await
        .unwrap();
    assert_eq!((by_bytes.rows, by_bytes.next), (vec![10, 11], Some(11)));

    let huge_first = kit::read_page(rows(&[budget * 3, 1]), 10, take)
        .await
        .unwrap();
    assert_eq!((huge_first.rows, huge_first.next), (vec![10, 11], None));

    let short = kit::read_page(rows(&[1, 1]), 10, take).await.unwrap();
    assert_eq!((short.rows, short.next), (vec![10, 11], None));
}
