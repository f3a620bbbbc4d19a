//! A derived repository whose struct names a column the table lacks does not build: the
//! generated statements are `sqlx::query!` literals, checked against the schema. The fixture
//! (`tests/compile_fail/shipments.rs`) is built as a crate of its own with `cargo check`
//! against a fresh database holding sqlrepo's and the service's migrations: with the feature
//! `wrong_column` the build must fail naming the column, and without it the same crate must
//! build, so the failure is the column's and nothing else's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's root, whose `Cargo.lock` pins the fixture's dependencies (and whose
/// registry cache has them, so the build needs no network).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check(crate_dir: &Path, database_url: &str, features: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .arg("check")
        .arg("--offline")
        .arg("--quiet")
        .arg("--features")
        .arg(features.join(","))
        .current_dir(crate_dir)
        .env("DATABASE_URL", database_url)
        .env("SQLX_OFFLINE", "false")
        .env_remove("SQLX_OFFLINE_DIR")
        // A target directory of its own (kept between runs, so only the first builds sqlx),
        // away from the one the running `cargo test` holds.
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target").join("compile-fail"),
        )
        .output()
        .expect("run cargo")
}

#[tokio::test]
async fn a_derived_struct_naming_a_missing_column_fails_to_build() {
    let scratch = tempfile::tempdir().unwrap();
    let db_path = scratch.path().join("schema.db");
    let db = sqlrepo::Db::open(&db_path).await.unwrap();
    db.run_migrations(&sqlx::migrate!()).await.unwrap();
    db.close().await;
    let database_url = format!("sqlite://{}", db_path.display());

    let crate_dir = scratch.path().join("fixture");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compile_fail/shipments.rs"),
        crate_dir.join("src/lib.rs"),
    )
    .unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let sqlrepo = workspace().canonicalize().unwrap();
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "derive-fixture"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[features]
wrong_column = []

[dependencies]
sqlrepo = {{ path = {sqlrepo:?} }}
sqlx = {{ version = "0.9.0", default-features = false, features = ["runtime-tokio", "sqlite", "macros", "migrate", "time"] }}
time = "0.3"
"#
        ),
    )
    .unwrap();

    let right = check(&crate_dir, &database_url, &[]);
    assert!(
        right.status.success(),
        "the fixture with the right columns must build:\n{}",
        String::from_utf8_lossy(&right.stderr)
    );
    let wrong = check(&crate_dir, &database_url, &["wrong_column"]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "a missing column built");
    assert!(
        stderr.contains("no such column: adress") || stderr.contains("has no column named adress"),
        "the build failed, but not for the column:\n{stderr}"
    );
}
