//! Migrations: up, down and up again on a fresh file give the same schema and a working
//! database; each down migration exactly reverses its up; and a database that holds a
//! migration this release does not know (or one edited or failed) is refused with a clear
//! `Error::Schema` instead of being used silently.

#[path = "reliability_common/mod.rs"]
mod reliability_common;

use std::path::Path;

use reliability_common::{applied_migrations, dump_file, raw, schema};
use serde_json::json;
use sqlrepo::{Db, DbOptions, Error, NewAccount, NewItem, NewOrder, NewUser, Transfer};
use sqlx::migrate::{MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

/// The same `migrations/` the crate embeds.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A version newer than any this release ships.
const FUTURE_VERSION: i64 = 20_991_231_000_000;

async fn connect(path: &Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .foreign_keys(true)
        .connect()
        .await
        .unwrap()
}

/// The up migrations' versions, ascending.
fn versions() -> Vec<i64> {
    MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect()
}

/// Every repository works on the file (a short smoke run through the public API).
async fn works(path: &Path) {
    let db = Db::open_with(DbOptions::new(path).migrate(false))
        .await
        .unwrap();
    let item = db
        .items()
        .create(&NewItem::new("lamp", json!({"watts": 40})))
        .await
        .unwrap();
    assert_eq!(db.items().get(item).await.unwrap().unwrap().name, "lamp");
    let user = db
        .users()
        .create(&NewUser::new("ann@example.com", "Ann"))
        .await
        .unwrap();
    db.orders().create(&NewOrder::new(user, 700)).await.unwrap();
    assert_eq!(db.dashboard(user).await.unwrap().stats.total_cents, 700);
    let new = NewAccount {
        user_id: Some(user),
        balance_cents: 0,
    };
    let a = db.accounts().open(&new).await.unwrap();
    let b = db.accounts().open(&new).await.unwrap();
    db.accounts().deposit(a, 1_000).await.unwrap();
    db.accounts()
        .transfer(&Transfer::new(a, b, 400).with_key("k"))
        .await
        .unwrap();
    assert_eq!(
        db.accounts().get(b).await.unwrap().unwrap().balance_cents,
        400
    );
    assert_eq!(db.accounts().total_balance().await.unwrap(), 1_000);
    db.close().await;
}

#[tokio::test]
async fn every_migration_ships_with_a_down_migration() {
    let ups = versions();
    let downs: Vec<i64> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type == MigrationType::ReversibleDown)
        .map(|m| m.version)
        .collect();
    assert!(!ups.is_empty());
    assert_eq!(ups, downs);
}

#[tokio::test]
async fn up_down_up_on_a_fresh_file_gives_the_same_schema_and_a_working_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("updown.db");
    let mut conn = connect(&path).await;

    MIGRATOR.run(&mut conn).await.unwrap();
    let first = schema(&raw(&path));
    assert!(
        first
            .iter()
            .any(|(kind, name, ..)| kind == "trigger" && name == "transfers_apply")
    );

    MIGRATOR.undo(&mut conn, 0).await.unwrap();
    let bare = schema(&raw(&path));
    let names: Vec<&str> = bare.iter().map(|(_, name, ..)| name.as_str()).collect();
    assert_eq!(names, ["_sqlx_migrations"], "down left objects behind");
    assert!(applied_migrations(&raw(&path)).is_empty());

    MIGRATOR.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(schema(&raw(&path)), first);
    works(&path).await;
}

#[tokio::test]
async fn each_down_migration_exactly_reverses_its_up() {
    let dir = tempfile::tempdir().unwrap();
    let all = versions();
    for (index, &version) in all.iter().enumerate() {
        // Up to `version` directly ...
        let direct = dir.path().join(format!("direct-{version}.db"));
        let mut conn = connect(&direct).await;
        MIGRATOR.run_to(version, &mut conn).await.unwrap();
        conn.close().await.unwrap();
        // ... and all the way up, then down to `version`.
        let undone = dir.path().join(format!("undone-{version}.db"));
        let mut conn = connect(&undone).await;
        MIGRATOR.run(&mut conn).await.unwrap();
        MIGRATOR.undo(&mut conn, version).await.unwrap();
        conn.close().await.unwrap();

        assert_eq!(
            schema(&raw(&undone)),
            schema(&raw(&direct)),
            "down to {version} differs from up to {version}"
        );
        let applied: Vec<i64> = applied_migrations(&raw(&undone))
            .into_iter()
            .map(|(v, ..)| v)
            .collect();
        assert_eq!(applied, all[..=index]);
    }
}

#[tokio::test]
async fn down_migrations_run_on_a_database_holding_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.db");
    let db = Db::open(&path).await.unwrap();
    db.close().await;
    works(&path).await;
    let mut conn = connect(&path).await;
    MIGRATOR.undo(&mut conn, 0).await.unwrap();
    conn.close().await.unwrap();
    let names: Vec<String> = schema(&raw(&path))
        .into_iter()
        .map(|(_, n, ..)| n)
        .collect();
    assert_eq!(names, ["_sqlx_migrations"]);
    // And up again from there, through the crate.
    Db::open(&path).await.unwrap().close().await;
    works(&path).await;
}

#[tokio::test]
async fn opening_twice_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twice.db");
    Db::open(&path).await.unwrap().close().await;
    let before = (schema(&raw(&path)), applied_migrations(&raw(&path)));
    Db::open(&path).await.unwrap().close().await;
    assert_eq!(
        (schema(&raw(&path)), applied_migrations(&raw(&path))),
        before
    );
    assert_eq!(before.1.len(), versions().len());
}

/// A migrated file whose `_sqlx_migrations` was changed by `sql`; returns its dump.
async fn migrated_then(path: &Path, sql: &str) -> reliability_common::Dump {
    let db = Db::open(path).await.unwrap();
    db.items()
        .create(&NewItem::new("kept", json!(1)))
        .await
        .unwrap();
    db.close().await;
    raw(path).execute_batch(sql).unwrap();
    dump_file(path)
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_release_is_refused_with_a_schema_error_naming_the_version()
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    let before = migrated_then(
        &path,
        &format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ({FUTURE_VERSION}, 'from the future', 1, X'00', 0)"
        ),
    )
    .await;

    let result = Db::open(&path).await;
    match result {
        Err(Error::Schema(message)) => {
            assert!(message.contains(&FUTURE_VERSION.to_string()), "{message}");
            assert!(message.contains("newer"), "{message}");
        }
        other => panic!("expected Error::Schema, got {other:?}"),
    }
    assert_eq!(dump_file(&path), before, "the refused file was changed");
}

#[tokio::test]
async fn migrating_explicitly_a_database_from_a_newer_release_is_a_schema_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer-explicit.db");
    migrated_then(
        &path,
        &format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES ({FUTURE_VERSION}, 'from the future', 1, X'00', 0)"
        ),
    )
    .await;
    let db = Db::open_with(DbOptions::new(&path).migrate(false))
        .await
        .unwrap();
    let result = db.migrate().await;
    assert!(matches!(result, Err(Error::Schema(_))), "{result:?}");
    db.close().await;
}

#[tokio::test]
async fn a_database_whose_applied_migration_was_edited_is_refused_with_a_schema_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.db");
    let first = versions()[0];
    let before = migrated_then(
        &path,
        &format!("UPDATE _sqlx_migrations SET checksum = X'0123' WHERE version = {first}"),
    )
    .await;
    let result = Db::open(&path).await;
    match result {
        Err(Error::Schema(message)) => assert!(message.contains(&first.to_string()), "{message}"),
        other => panic!("expected Error::Schema, got {other:?}"),
    }
    assert_eq!(dump_file(&path), before);
}

#[tokio::test]
async fn a_database_with_a_half_applied_migration_is_refused_with_a_schema_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dirty.db");
    let last = *versions().last().unwrap();
    let before = migrated_then(
        &path,
        &format!("UPDATE _sqlx_migrations SET success = 0 WHERE version = {last}"),
    )
    .await;
    let result = Db::open(&path).await;
    match result {
        Err(Error::Schema(message)) => assert!(message.contains(&last.to_string()), "{message}"),
        other => panic!("expected Error::Schema, got {other:?}"),
    }
    assert_eq!(dump_file(&path), before);
}

#[tokio::test]
async fn a_database_missing_its_last_migration_is_brought_up_to_date_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("older.db");
    let all = versions();
    let mut conn = connect(&path).await;
    MIGRATOR
        .run_to(all[all.len() - 2], &mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    Db::open(&path).await.unwrap().close().await;
    let applied: Vec<i64> = applied_migrations(&raw(&path))
        .into_iter()
        .map(|(v, ..)| v)
        .collect();
    assert_eq!(applied, all);
    works(&path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_handles_opening_a_fresh_file_at_once_all_succeed() {
    const OPENERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    // Polled together in one task: each handle's connections run on their own threads, so
    // the migrations really race.
    let opens = (0..OPENERS).map(|_| Db::open(path.clone()));
    let mut failures = Vec::new();
    let mut dbs = Vec::new();
    for open in futures_util::future::join_all(opens).await {
        match open {
            Ok(db) => dbs.push(db),
            Err(err) => failures.push(format!("{err:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {OPENERS} concurrent opens failed: {failures:?}",
        failures.len()
    );
    for db in dbs {
        db.close().await;
    }
    let applied: Vec<i64> = applied_migrations(&raw(&path))
        .into_iter()
        .map(|(v, ..)| v)
        .collect();
    assert_eq!(applied, versions());
    works(&path).await;
}
