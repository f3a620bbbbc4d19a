//! Migrations: up, down and up again on a fresh file give the same schema and a working
//! database; each down migration exactly reverses its up; a database that holds a migration
//! this release does not know (or one edited or failed) is refused with a clear
//! `Error::Schema` instead of being used silently; a service's own migrator (sqlx's default
//! `_sqlx_migrations`) and ours (`_sqlrepo_migrations`) share a file in either order; and a
//! file migrated by sqlrepo 0.1.0 (our migrations in `_sqlx_migrations`) is adopted on open.

#[path = "reliability_common/mod.rs"]
mod reliability_common;

use std::path::Path;

use reliability_common::{applied_migrations, applied_migrations_in, dump_file, raw, schema};
use serde_json::json;
use sqlrepo::{Db, DbOptions, Error, MIGRATOR, NewAccount, NewItem, NewOrder, NewUser, Transfer};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, SqlStr};

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
    assert_eq!(names, ["_sqlrepo_migrations"], "down left objects behind");
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
    assert_eq!(names, ["_sqlrepo_migrations"]);
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

/// A migrated file whose `_sqlrepo_migrations` was changed by `sql`; returns its dump.
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
            "INSERT INTO _sqlrepo_migrations (version, description, success, checksum, execution_time)
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
            "INSERT INTO _sqlrepo_migrations (version, description, success, checksum, execution_time)
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
        &format!("UPDATE _sqlrepo_migrations SET checksum = X'0123' WHERE version = {first}"),
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
        &format!("UPDATE _sqlrepo_migrations SET success = 0 WHERE version = {last}"),
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

// --- A service's migrator beside ours, and files migrated by sqlrepo 0.1.0 -----------------

/// sqlx's default bookkeeping table: a service's own `sqlx::migrate!()` records its migrations
/// there, and sqlrepo 0.1.0 recorded ours there.
const SQLX_DEFAULT_TABLE: &str = "_sqlx_migrations";

/// The versions a bookkeeping table records (empty when it does not exist).
fn recorded_in(path: &Path, table: &str) -> Vec<i64> {
    reliability_common::table_rows(&raw(path), table)
        .map(|_| {
            applied_migrations_in(&raw(path), table)
                .into_iter()
                .map(|(version, ..)| version)
                .collect()
        })
        .unwrap_or_default()
}

/// Every column of every row of a bookkeeping table (`None` when it does not exist).
fn bookkeeping(path: &Path, table: &str) -> Option<Vec<Vec<rusqlite::types::Value>>> {
    reliability_common::table_rows(&raw(path), table)
}

/// What a refused open must leave as it was: the schema, every row of ours, and both
/// bookkeeping tables.
type Whole = (
    reliability_common::Dump,
    Option<Vec<Vec<rusqlite::types::Value>>>,
    Option<Vec<Vec<rusqlite::types::Value>>>,
);

fn whole(path: &Path) -> Whole {
    (
        dump_file(path),
        bookkeeping(path, SQLX_DEFAULT_TABLE),
        bookkeeping(path, "_sqlrepo_migrations"),
    )
}

/// sqlrepo 0.1.0's migrator: the same migrations, recorded in sqlx's default table.
fn migrator_of_0_1_0() -> Migrator {
    let migrator = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    assert_eq!(migrator.table_name, SQLX_DEFAULT_TABLE);
    migrator
}

/// A file as sqlrepo 0.1.0 left it: our migrations up to `target` (all when `None`) recorded
/// in `_sqlx_migrations`, and an item written by that release.
async fn file_of_0_1_0(path: &Path, target: Option<i64>) {
    let mut conn = connect(path).await;
    let legacy = migrator_of_0_1_0();
    match target {
        Some(version) => legacy.run_to(version, &mut conn).await.unwrap(),
        None => legacy.run(&mut conn).await.unwrap(),
    }
    conn.close().await.unwrap();
    raw(path)
        .execute(
            "INSERT INTO items (name, data) VALUES ('made by 0.1.0', '{\"old\": true}')",
            [],
        )
        .unwrap();
    assert!(bookkeeping(path, "_sqlrepo_migrations").is_none());
}

/// A service's own migrator, as `sqlx::migrate!()` builds it in a service crate: recorded in
/// sqlx's default table, one migration older than ours and one newer, its table referencing
/// our `users`.
fn service_migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            20_250_101_000_000,
            "notes".into(),
            MigrationType::Simple,
            SqlStr::from_static(
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, slug TEXT NOT NULL UNIQUE) STRICT;",
            ),
            false,
        ),
        Migration::new(
            20_270_101_000_000,
            "notes owner".into(),
            MigrationType::Simple,
            SqlStr::from_static(
                "ALTER TABLE notes ADD COLUMN user_id INTEGER REFERENCES users (id);",
            ),
            false,
        ),
    ])
}

fn service_versions() -> Vec<i64> {
    service_migrator().iter().map(|m| m.version).collect()
}

/// Runs the service's migrator on the file, as a service does after opening its `Db`.
async fn run_service_migrator(path: &Path) {
    let mut conn = connect(path).await;
    service_migrator()
        .run(&mut conn)
        .await
        .expect("the service's migrator refused the file");
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_services_migrator_and_ours_share_a_file_in_either_order_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    for service_first in [true, false] {
        let path = dir
            .path()
            .join(format!("shared-service-first-{service_first}.db"));
        for _round in 0..3 {
            if service_first {
                run_service_migrator(&path).await;
                Db::open(&path).await.unwrap().close().await;
            } else {
                Db::open(&path).await.unwrap().close().await;
                run_service_migrator(&path).await;
            }
            assert_eq!(recorded_in(&path, "_sqlrepo_migrations"), versions());
            assert_eq!(recorded_in(&path, SQLX_DEFAULT_TABLE), service_versions());
        }
        // Both schemas are in the file, and the service's table references ours.
        works(&path).await;
        let conn = raw(&path);
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        conn.execute("INSERT INTO notes (slug, user_id) VALUES ('kept', 1)", [])
            .unwrap();
        let orphan = conn.execute(
            "INSERT INTO notes (slug, user_id) VALUES ('orphan', 999)",
            [],
        );
        assert!(
            orphan.is_err(),
            "the service's foreign key to users is not enforced"
        );
    }
}

#[tokio::test]
async fn our_migrator_run_directly_ignores_the_services_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("direct.db");
    run_service_migrator(&path).await;
    let mut conn = connect(&path).await;
    MIGRATOR.run(&mut conn).await.unwrap();
    MIGRATOR.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    run_service_migrator(&path).await;
    assert_eq!(recorded_in(&path, "_sqlrepo_migrations"), versions());
    assert_eq!(recorded_in(&path, SQLX_DEFAULT_TABLE), service_versions());
}

#[tokio::test]
async fn a_file_migrated_by_sqlrepo_0_1_0_is_adopted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v0.1.0.db");
    file_of_0_1_0(&path, None).await;
    let recorded_by_0_1_0 = bookkeeping(&path, SQLX_DEFAULT_TABLE).unwrap();
    assert_eq!(recorded_by_0_1_0.len(), versions().len());
    let schema_before = schema(&raw(&path));

    let db = Db::open(&path).await.unwrap();
    let old = db.items().get(1).await.unwrap().expect("0.1.0's item");
    assert_eq!(old.name, "made by 0.1.0");
    db.close().await;

    // Our rows moved as they were (description, install time, checksum, execution time) ...
    assert_eq!(
        bookkeeping(&path, "_sqlrepo_migrations").unwrap(),
        recorded_by_0_1_0
    );
    // ... and left sqlx's default table, which stays for a service's migrator.
    assert_eq!(
        bookkeeping(&path, SQLX_DEFAULT_TABLE).unwrap(),
        Vec::<Vec<_>>::new()
    );
    // Nothing but the bookkeeping changed in the schema.
    let without_ours = |rows: Vec<reliability_common::SchemaRow>| -> Vec<_> {
        rows.into_iter()
            .filter(|(_, name, ..)| name != "_sqlrepo_migrations")
            .collect()
    };
    assert_eq!(
        without_ours(schema(&raw(&path))),
        without_ours(schema_before)
    );

    // Opening again changes nothing; a service's migrator now runs on the file too.
    Db::open(&path).await.unwrap().close().await;
    assert_eq!(
        bookkeeping(&path, "_sqlrepo_migrations").unwrap(),
        recorded_by_0_1_0
    );
    run_service_migrator(&path).await;
    Db::open(&path).await.unwrap().close().await;
    assert_eq!(recorded_in(&path, SQLX_DEFAULT_TABLE), service_versions());
    works(&path).await;
}

#[tokio::test]
async fn adopting_a_0_1_0_file_leaves_the_services_own_migrations_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v0.1.0-with-service.db");
    file_of_0_1_0(&path, None).await;
    // With 0.1.0 a service could only run its migrator beside ours by ignoring our versions.
    let mut conn = connect(&path).await;
    service_migrator()
        .set_ignore_missing(true)
        .run(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let services_rows: Vec<_> = bookkeeping(&path, SQLX_DEFAULT_TABLE)
        .unwrap()
        .into_iter()
        .filter(|row| {
            let rusqlite::types::Value::Integer(version) = row[0] else {
                panic!("a version that is not an integer: {row:?}")
            };
            service_versions().contains(&version)
        })
        .collect();
    assert_eq!(services_rows.len(), 2);

    Db::open(&path).await.unwrap().close().await;

    assert_eq!(
        bookkeeping(&path, SQLX_DEFAULT_TABLE).unwrap(),
        services_rows
    );
    assert_eq!(recorded_in(&path, "_sqlrepo_migrations"), versions());
    // The service's migrator no longer needs to ignore anything.
    run_service_migrator(&path).await;
    works(&path).await;
}

#[tokio::test]
async fn a_0_1_0_file_missing_our_last_migration_is_adopted_and_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v0.1.0-older.db");
    let all = versions();
    file_of_0_1_0(&path, Some(all[all.len() - 2])).await;
    Db::open(&path).await.unwrap().close().await;
    assert_eq!(recorded_in(&path, "_sqlrepo_migrations"), all);
    assert_eq!(recorded_in(&path, SQLX_DEFAULT_TABLE), Vec::<i64>::new());
    works(&path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_handles_opening_a_0_1_0_file_at_once_adopt_it_once() {
    const OPENERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v0.1.0-race.db");
    file_of_0_1_0(&path, None).await;
    let recorded_by_0_1_0 = bookkeeping(&path, SQLX_DEFAULT_TABLE).unwrap();
    // Polled together in one task: each handle's connections run on their own threads, so
    // the adoptions really race.
    let opens = (0..OPENERS).map(|_| Db::open(path.clone()));
    let mut failures = Vec::new();
    for open in futures_util::future::join_all(opens).await {
        match open {
            Ok(db) => db.close().await,
            Err(err) => failures.push(format!("{err:?}")),
        }
    }
    assert!(failures.is_empty(), "concurrent opens failed: {failures:?}");
    assert_eq!(
        bookkeeping(&path, "_sqlrepo_migrations").unwrap(),
        recorded_by_0_1_0
    );
    assert_eq!(recorded_in(&path, SQLX_DEFAULT_TABLE), Vec::<i64>::new());
    works(&path).await;
}

#[tokio::test]
async fn a_0_1_0_file_whose_recorded_checksum_was_tampered_with_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v0.1.0-tampered.db");
    file_of_0_1_0(&path, None).await;
    let second = versions()[1];
    raw(&path)
        .execute(
            "UPDATE _sqlx_migrations SET checksum = X'0123' WHERE version = ?1",
            [second],
        )
        .unwrap();
    let before = whole(&path);

    match Db::open(&path).await {
        Err(Error::Schema(message)) => {
            assert!(message.contains(&second.to_string()), "{message}")
        }
        other => panic!("expected Error::Schema, got {other:?}"),
    }
    assert_eq!(whole(&path), before, "a refused adoption changed the file");
}

#[tokio::test]
async fn a_0_1_0_file_with_a_half_applied_migration_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v0.1.0-dirty.db");
    file_of_0_1_0(&path, None).await;
    let last = *versions().last().unwrap();
    raw(&path)
        .execute(
            "UPDATE _sqlx_migrations SET success = 0 WHERE version = ?1",
            [last],
        )
        .unwrap();
    let before = whole(&path);

    match Db::open(&path).await {
        Err(Error::Schema(message)) => assert!(message.contains(&last.to_string()), "{message}"),
        other => panic!("expected Error::Schema, got {other:?}"),
    }
    assert_eq!(whole(&path), before);
}

/// Names the file an opener process opens (see [`open_as_a_child_process`]).
const OPENER_DB: &str = "SQLREPO_MIGRATIONS_OPENER_DB";
/// Names the file whose appearance starts every opener process at once.
const OPENER_GO: &str = "SQLREPO_MIGRATIONS_OPENER_GO";

/// The opener processes' work: wait for the go file, then open (and so adopt) the file once.
/// The test below re-runs itself (`--exact` its own name) with [`OPENER_DB`] set, and its first
/// line sends that process here; so no separate test exists that could run on its own.
fn open_as_a_child_process(path: &str, go: &str) {
    while !Path::new(&go).exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let db = Db::open(path).await.expect("open in the opener process");
            db.close().await;
        });
}

#[test]
fn several_processes_opening_a_0_1_0_file_at_once_adopt_it_once() {
    if let (Ok(path), Ok(go)) = (std::env::var(OPENER_DB), std::env::var(OPENER_GO)) {
        return open_as_a_child_process(&path, &go);
    }
    const PROCESSES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v0.1.0-processes.db");
    let go = dir.path().join("go");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(file_of_0_1_0(&path, None));
    let recorded_by_0_1_0 = bookkeeping(&path, SQLX_DEFAULT_TABLE).unwrap();

    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "several_processes_opening_a_0_1_0_file_at_once_adopt_it_once",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(OPENER_DB, &path)
                .env(OPENER_GO, &go)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every process is waiting for this file: they all open at once.
    std::fs::write(&go, b"go").unwrap();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "an opener process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    assert_eq!(
        bookkeeping(&path, "_sqlrepo_migrations").unwrap(),
        recorded_by_0_1_0
    );
    assert_eq!(recorded_in(&path, SQLX_DEFAULT_TABLE), Vec::<i64>::new());
    runtime.block_on(works(&path));
}
