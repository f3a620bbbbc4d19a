//! The embedded migrator and `cargo sqlx migrate run` produce the same database.
//!
//! These tests compare a file made by `cargo sqlx database create` and `cargo sqlx migrate run`
//! with a fresh file migrated by the crate (schema and migration bookkeeping), and use it
//! through `Db`. CI makes that file once and names it in `SQLREPO_CLI_DB`; without the variable
//! each test makes its own with sqlx-cli in a temporary directory. They are `#[ignore]`d (a
//! machine with only Rust has no sqlx-cli, and `cargo test` reports them as ignored, not
//! passed); `-- --include-ignored` runs them, and then every test does its work: without
//! sqlx-cli installed (and no `SQLREPO_CLI_DB`) they fail, saying how to install it, rather
//! than pass having compared nothing.
//!
//! sqlx-cli reads this crate's `sqlx.toml`, so it records our migrations in
//! `_sqlrepo_migrations`, as the embedded migrator does (it needs sqlx-cli built with its
//! `sqlx-toml` feature, as `.ci/run` installs it).

#[path = "reliability_common/mod.rs"]
mod reliability_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use reliability_common::{
    SchemaRow, applied_migrations, applied_migrations_in, dump_file, raw, schema, table_rows,
};
use serde_json::json;
use sqlrepo::{Db, DbOptions, NewAccount, NewItem, NewUser, Transfer};

/// The sqlx-cli version CI pins (`.ci/run`), for the install hint.
const SQLX_CLI_VERSION: &str = "0.9.0";

/// A file migrated by sqlx-cli: CI's (`SQLREPO_CLI_DB`), or one made here in `dir` by running
/// `cargo sqlx database create` and `cargo sqlx migrate run` on this crate's `migrations/`.
fn cli_database(dir: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os("SQLREPO_CLI_DB") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SQLREPO_CLI_DB names {path:?}, which is not a file"
        );
        return path;
    }
    let path = dir.join("cli.db");
    let url = format!("sqlite://{}", path.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for step in [["sqlx", "database", "create"], ["sqlx", "migrate", "run"]] {
        let output = Command::new(&cargo)
            .args(step)
            .env("DATABASE_URL", &url)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap_or_else(|err| panic!("could not run cargo: {err}"));
        assert!(
            output.status.success(),
            "`cargo {}` failed: {}\nThese tests need sqlx-cli: `cargo install sqlx-cli \
             --version ={SQLX_CLI_VERSION} --locked --no-default-features --features sqlite,sqlx-toml`, \
             or SQLREPO_CLI_DB naming a file it migrated.",
            step.join(" "),
            String::from_utf8_lossy(&output.stderr).trim(),
        );
    }
    path
}

/// The schema without the bookkeeping tables, whose DDL belongs to the sqlx version that
/// created them (and sqlx's default one may be there for the checked statements that adopt
/// files of sqlrepo 0.1.0, see the guide's migrations chapter).
fn app_schema(path: &Path) -> Vec<SchemaRow> {
    schema(&raw(path))
        .into_iter()
        .filter(|(_, name, ..)| name != "_sqlrepo_migrations" && name != "_sqlx_migrations")
        .collect()
}

/// A fresh file migrated by the crate itself.
async fn embedded(dir: &Path) -> PathBuf {
    let path = dir.join("embedded.db");
    Db::open(&path).await.unwrap().close().await;
    path
}

#[tokio::test]
#[ignore = "needs sqlx-cli (cargo install sqlx-cli, as .ci/run does) or SQLREPO_CLI_DB; run with -- --include-ignored"]
async fn the_cli_and_the_embedded_migrator_produce_the_same_schema() {
    let dir = tempfile::tempdir().unwrap();
    let cli = cli_database(dir.path());
    let ours = embedded(dir.path()).await;
    let theirs = app_schema(&cli);
    assert!(
        !theirs.is_empty(),
        "{cli:?} holds no tables: was `migrate run` run?"
    );
    assert_eq!(theirs, app_schema(&ours));
}

#[tokio::test]
#[ignore = "needs sqlx-cli (cargo install sqlx-cli, as .ci/run does) or SQLREPO_CLI_DB; run with -- --include-ignored"]
async fn the_cli_and_the_embedded_migrator_record_the_same_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let cli = cli_database(dir.path());
    let ours = embedded(dir.path()).await;
    // Same versions, same checksums (so neither side will call the other's edited), all
    // successful.
    assert_eq!(
        applied_migrations(&raw(&cli)),
        applied_migrations(&raw(&ours))
    );
}

#[tokio::test]
#[ignore = "needs sqlx-cli (cargo install sqlx-cli, as .ci/run does) or SQLREPO_CLI_DB; run with -- --include-ignored"]
async fn the_cli_records_our_migrations_in_sqlrepos_own_table_not_in_sqlxs_default() {
    let dir = tempfile::tempdir().unwrap();
    let cli = cli_database(dir.path());
    let ours: Vec<i64> = sqlrepo::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    let recorded: Vec<i64> = applied_migrations(&raw(&cli))
        .into_iter()
        .map(|(version, ..)| version)
        .collect();
    assert_eq!(recorded, ours, "sqlx-cli did not use `_sqlrepo_migrations`");
    if table_rows(&raw(&cli), "_sqlx_migrations").is_some() {
        assert_eq!(
            applied_migrations_in(&raw(&cli), "_sqlx_migrations"),
            Vec::new(),
            "sqlx-cli recorded migrations in sqlx's default table"
        );
    }
}

#[tokio::test]
#[ignore = "needs sqlx-cli (cargo install sqlx-cli, as .ci/run does) or SQLREPO_CLI_DB; run with -- --include-ignored"]
async fn a_cli_migrated_file_opens_without_migrating_and_serves_every_repository() {
    let dir = tempfile::tempdir().unwrap();
    let cli = cli_database(dir.path());
    let before = dump_file(&cli);
    let db = Db::open_with(DbOptions::new(&cli).migrate(false))
        .await
        .unwrap();
    // Work inside a transaction that is rolled back, so CI's file is left as it was.
    let tx = db.begin().await.unwrap();
    let item = tx
        .items()
        .create(&NewItem::new("cli-check-lamp", json!({"watts": 40})))
        .await
        .unwrap();
    assert_eq!(
        tx.items().get(item).await.unwrap().unwrap().data["watts"],
        40
    );
    let user = tx
        .users()
        .create(&NewUser::new("cli-check@example.com", "Check"))
        .await
        .unwrap();
    assert_eq!(tx.users().get(user).await.unwrap().unwrap().name, "Check");
    let new = NewAccount {
        user_id: Some(user),
        balance_cents: 500,
    };
    let a = tx.accounts().open(&new).await.unwrap();
    let b = tx.accounts().open(&new).await.unwrap();
    tx.accounts()
        .transfer(&Transfer::new(a, b, 200).with_key("cli-check"))
        .await
        .unwrap();
    assert_eq!(
        tx.accounts().get(b).await.unwrap().unwrap().balance_cents,
        700
    );
    tx.rollback().await.unwrap();
    db.close().await;
    assert_eq!(
        dump_file(&cli),
        before,
        "the rolled-back checks left rows behind"
    );
}

#[tokio::test]
#[ignore = "needs sqlx-cli (cargo install sqlx-cli, as .ci/run does) or SQLREPO_CLI_DB; run with -- --include-ignored"]
async fn a_copy_of_the_cli_migrated_file_opens_with_migrations_on_and_keeps_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cli = cli_database(dir.path());
    let copy = dir.path().join("copy.db");
    raw(&cli)
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let applied = applied_migrations(&raw(&copy));

    // The embedded migrator accepts sqlx-cli's bookkeeping: nothing to apply, no error.
    let db = Db::open(&copy).await.unwrap();
    let item = db
        .items()
        .create(&NewItem::new("kept", json!([1, 2])))
        .await
        .unwrap();
    let user = db
        .users()
        .create(&NewUser::new("kept@example.com", "Kept"))
        .await
        .unwrap();
    let account = db
        .accounts()
        .open(&NewAccount {
            user_id: Some(user),
            balance_cents: 0,
        })
        .await
        .unwrap();
    db.accounts().deposit(account, 250).await.unwrap();
    db.close().await;

    assert_eq!(applied_migrations(&raw(&copy)), applied);
    let db = Db::open(&copy).await.unwrap();
    assert_eq!(
        db.items().get(item).await.unwrap().unwrap().data,
        json!([1, 2])
    );
    assert_eq!(
        db.accounts()
            .get(account)
            .await
            .unwrap()
            .unwrap()
            .balance_cents,
        250
    );
    db.close().await;
}
