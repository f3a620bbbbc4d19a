//! An `Ok` is a promise that the write is stored, and a transaction is all or nothing as the
//! caller sees it, under the faults that really happen: a full disk (a small tmpfs), a file
//! size limit (`ulimit -f` in a child process), a trigger raising `ROLLBACK`, a caller's pool
//! with the rules switched off or in rollback-journal mode behind a reader's lock, a `Tx`
//! dropped while a call runs, and a service's own statements left unfinished.
//!
//! The invariant every test asserts: the rows of a transaction are stored if and only if its
//! commit returned `Ok`; every other `Ok` is stored and readable at once; the `Db` works again
//! afterwards without being rebuilt.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sqlrepo::{Db, Error, NewAccount, NewItem, NewOrder, NewUser, Transfer};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use common::tmpfs::Tmpfs;
use common::{dump_all, integrity_check, item_names, raw};

// ---- finding 1: creates on a full disk ----

/// Which repository's single-row create a full-disk run exercises.
#[derive(Clone, Copy, Debug)]
enum Create {
    Item,
    User,
    Order,
    Account,
}

/// Creates rows one by one on a 4 MiB tmpfs until the disk is full, then checks that every
/// `Ok` id is readable on the same `Db` and stored in the file, that the failure is
/// `DiskFull`, and that creates succeed again once a file set aside is removed.
async fn creates_on_a_full_disk_are_stored_or_refused(kind: Create) {
    let disk = Tmpfs::mount(4 << 20);
    let db_path = disk.path().join("full.db");
    let set_aside = disk.path().join("set-aside");
    let db = Db::open(&db_path).await.unwrap();
    let owner = db
        .users()
        .create(&NewUser::new("owner@example.com", "Owner"))
        .await
        .unwrap();
    std::fs::write(&set_aside, vec![7u8; 1 << 20]).unwrap();

    let padding = "x".repeat(200);
    let create = |n: u64| {
        let db = db.clone();
        let padding = padding.clone();
        async move {
            match kind {
                Create::Item => {
                    db.items()
                        .create(&NewItem::new(
                            format!("item-{n}"),
                            json!({ "pad": padding }),
                        ))
                        .await
                }
                Create::User => {
                    db.users()
                        .create(&NewUser::new(
                            format!("u{n}-{}@example.com", &padding[..40]),
                            format!("user {n} {}", &padding[..150]),
                        ))
                        .await
                }
                Create::Order => db.orders().create(&NewOrder::new(owner, n as i64)).await,
                Create::Account => {
                    db.accounts()
                        .open(&NewAccount {
                            user_id: Some(owner),
                            balance_cents: n as i64,
                        })
                        .await
                }
            }
        }
    };
    let exists = |id: i64| {
        let db = db.clone();
        async move {
            match kind {
                Create::Item => db.items().get(id).await.unwrap().is_some(),
                Create::User => db.users().get(id).await.unwrap().is_some(),
                Create::Order => db.orders().get(id).await.unwrap().is_some(),
                Create::Account => db.accounts().get(id).await.unwrap().is_some(),
            }
        }
    };

    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    for n in 0..60_000u64 {
        match create(n).await {
            Ok(id) => {
                assert!(
                    failures.is_empty() || exists(id).await,
                    "Ok({id}) not readable"
                );
                acknowledged.push(id);
            }
            Err(err) => {
                failures.push(err);
                if failures.len() >= 200 {
                    break;
                }
            }
        }
    }
    assert!(
        !failures.is_empty(),
        "{kind:?}: the 4 MiB disk never filled ({} creates)",
        acknowledged.len()
    );
    assert!(
        failures.iter().all(|err| matches!(err, Error::DiskFull)),
        "{kind:?}: a full disk must be DiskFull: {:?}",
        failures.iter().find(|err| !matches!(err, Error::DiskFull))
    );
    // Every acknowledged row is there, through the same Db (reads go on) ...
    for &id in &acknowledged {
        assert!(exists(id).await, "{kind:?}: Ok({id}) was never stored");
    }
    // ... and in the file, for a reader that is not this process.
    let table = match kind {
        Create::Item => "items",
        Create::User => "users",
        Create::Order => "orders",
        Create::Account => "accounts",
    };
    let stored: i64 = raw(&db_path)
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap();
    let before = i64::from(matches!(kind, Create::User)); // the owner
    assert_eq!(stored, acknowledged.len() as i64 + before, "{kind:?}");

    // Space freed: the same Db writes again, and what it acknowledges is stored.
    std::fs::remove_file(&set_aside).unwrap();
    let id = create(1_000_000)
        .await
        .expect("a write after space was freed");
    assert!(exists(id).await);
    assert_eq!(integrity_check(&db_path), "ok");
    println!(
        "{kind:?}: {} creates acknowledged and stored, then {} DiskFull",
        acknowledged.len(),
        failures.len()
    );
    db.close().await;
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn item_creates_on_a_full_disk_are_stored_or_refused_never_ok_and_lost() {
    creates_on_a_full_disk_are_stored_or_refused(Create::Item).await;
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn user_creates_on_a_full_disk_are_stored_or_refused_never_ok_and_lost() {
    creates_on_a_full_disk_are_stored_or_refused(Create::User).await;
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn order_creates_on_a_full_disk_are_stored_or_refused_never_ok_and_lost() {
    creates_on_a_full_disk_are_stored_or_refused(Create::Order).await;
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn account_opens_on_a_full_disk_are_stored_or_refused_never_ok_and_lost() {
    creates_on_a_full_disk_are_stored_or_refused(Create::Account).await;
}

// ---- finding 2: a transaction SQLite rolled back by itself ----

/// Installs a trigger, as a service's own schema might, that vetoes items named `veto` by
/// rolling back the whole transaction.
fn install_veto_trigger(path: &Path) {
    raw(path)
        .execute_batch(
            "CREATE TRIGGER veto BEFORE INSERT ON items WHEN NEW.name = 'veto'
             BEGIN SELECT RAISE(ROLLBACK, 'vetoed by the service'); END;",
        )
        .unwrap();
}

#[tokio::test]
async fn a_tx_that_a_trigger_rolled_back_refuses_later_calls_and_commit() {
    let test = common::fresh_db().await;
    install_veto_trigger(&test.path);
    let tx = test.db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("first-in-tx", json!(1)))
        .await
        .unwrap();
    let vetoed = tx.items().create(&NewItem::new("veto", json!(2))).await;
    assert!(vetoed.is_err(), "{vetoed:?}");
    // Before: this ran outside any transaction and committed at once.
    let after = tx
        .items()
        .create(&NewItem::new("after-veto", json!(3)))
        .await;
    assert!(matches!(after, Err(Error::RolledBack(_))), "{after:?}");
    let commit = tx.commit().await;
    assert!(matches!(commit, Err(Error::RolledBack(_))), "{commit:?}");
    assert!(item_names(&test.path).is_empty());

    // The writer works again, for transactions and for multi-statement calls.
    let tx = test.db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("next-tx", json!(4)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let account = test
        .db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await
        .unwrap();
    assert_eq!(test.db.accounts().deposit(account, 5).await.unwrap(), 5);
    let chunked: Vec<NewItem> = (0..50_001)
        .map(|n| NewItem::new(format!("chunked-{n}"), json!(n)))
        .collect();
    assert_eq!(test.db.items().insert_many(&chunked).await.unwrap(), 50_001);
    assert_eq!(item_names(&test.path).len(), 50_002);
}

#[tokio::test]
async fn a_tx_on_a_callers_pool_that_a_trigger_rolled_back_is_dead_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = migrated_file(dir.path()).await;
    install_veto_trigger(&path);
    let pool = SqlitePoolOptions::new()
        .connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .unwrap();
    let db = Db::from_pool(pool);
    let tx = db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("first-in-tx", json!(1)))
        .await
        .unwrap();
    assert!(
        tx.items()
            .create(&NewItem::new("veto", json!(2)))
            .await
            .is_err()
    );
    let after = tx
        .items()
        .create(&NewItem::new("after-veto", json!(3)))
        .await;
    assert!(matches!(after, Err(Error::RolledBack(_))), "{after:?}");
    assert!(matches!(tx.commit().await, Err(Error::RolledBack(_))));
    assert!(item_names(&path).is_empty());
    let id = db
        .items()
        .create(&NewItem::new("next", json!(4)))
        .await
        .unwrap();
    assert!(db.items().get(id).await.unwrap().is_some());
    db.close().await;
    assert_eq!(item_names(&path), ["next"]);
}

#[tokio::test]
async fn a_constraint_error_inside_a_tx_fails_only_its_statement() {
    // SQLite aborts only the statement here; the transaction lives on and commits.
    let test = common::fresh_db().await;
    let tx = test.db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("kept", json!(1)))
        .await
        .unwrap();
    let duplicate = tx.items().create(&NewItem::new("kept", json!(2))).await;
    assert!(
        matches!(duplicate, Err(Error::Duplicate { .. })),
        "{duplicate:?}"
    );
    let batch = tx
        .items()
        .insert_many(&[
            NewItem::new("new", json!(3)),
            NewItem::new("kept", json!(4)),
        ])
        .await;
    assert!(matches!(batch, Err(Error::Duplicate { .. })), "{batch:?}");
    tx.items()
        .create(&NewItem::new("also-kept", json!(5)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(item_names(&test.path), ["kept", "also-kept"]);
}

const CHILD_DB: &str = "SQLREPO_WRITE_SAFETY_CHILD_DB";

/// The child process of `a_tx_that_hit_the_file_size_limit_...`, which re-runs itself
/// (`--exact` its own name) under `ulimit -f` with SIGXFSZ ignored and [`CHILD_DB`] set; its
/// first line sends that process here (so there is no separate test that could run on its
/// own). The WAL cannot grow past 1 MiB: a big batch inside a transaction fails with an I/O
/// error and SQLite rolls the transaction back by itself. Prints what each call returned, one
/// line each, for the parent to check.
async fn child_process_under_a_file_size_limit(path: &str) {
    let db = Db::open(path).await.unwrap();
    let report = |step: &str, outcome: String| println!("STEP {step} {outcome}");
    let tx = db.begin().await.unwrap();
    let first = tx
        .items()
        .create(&NewItem::new("first-in-tx", json!(1)))
        .await;
    report("first", format!("{first:?}"));
    let big: Vec<NewItem> = (0..3_000)
        .map(|n| NewItem::new(format!("big-{n}"), json!({ "pad": "y".repeat(1_000) })))
        .collect();
    let batch = tx.items().insert_many(&big).await;
    report("batch", format!("{:?}", batch.map_err(|e| kind(&e))));
    let after = tx
        .items()
        .create(&NewItem::new("after-failure", json!(2)))
        .await;
    report("after", format!("{:?}", after.map_err(|e| kind(&e))));
    let commit = tx.commit().await;
    report("commit", format!("{:?}", commit.map_err(|e| kind(&e))));
    // The Db works again without being rebuilt.
    let tx = db.begin().await;
    report(
        "begin",
        format!("{:?}", tx.as_ref().map(|_| ()).map_err(kind)),
    );
    if let Ok(tx) = tx {
        let fresh = tx.items().create(&NewItem::new("fresh-tx", json!(3))).await;
        report(
            "fresh",
            format!("{:?}", fresh.map(|_| ()).map_err(|e| kind(&e))),
        );
        let commit = tx.commit().await;
        report(
            "fresh-commit",
            format!("{:?}", commit.map_err(|e| kind(&e))),
        );
    }
    let account = db
        .accounts()
        .open(&NewAccount {
            user_id: None,
            balance_cents: 0,
        })
        .await;
    let deposit = match account {
        Ok(id) => db.accounts().deposit(id, 7).await.map_err(|e| kind(&e)),
        Err(err) => Err(kind(&err)),
    };
    report("deposit", format!("{deposit:?}"));
    db.close().await;
}

fn kind(err: &Error) -> &'static str {
    match err {
        Error::DiskFull => "DiskFull",
        Error::Io(_) => "Io",
        Error::RolledBack(_) => "RolledBack",
        Error::Busy => "Busy",
        Error::InvalidInput(_) => "InvalidInput",
        Error::Database(_) => "Database",
        _ => "Other",
    }
}

#[tokio::test]
async fn a_tx_that_hit_the_file_size_limit_stores_nothing_and_the_db_recovers() {
    if let Ok(path) = std::env::var(CHILD_DB) {
        return child_process_under_a_file_size_limit(&path).await;
    }
    let test = common::fresh_db().await;
    let path = test.path.clone();
    test.db.close().await;
    let output = Command::new("bash")
        .arg("-c")
        // 1024 blocks of 1 KiB; SIGXFSZ ignored so the write fails with EFBIG instead of
        // killing the process. An ignored signal stays ignored across exec.
        .arg("ulimit -f 1024 && trap '' XFSZ && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_tx_that_hit_the_file_size_limit_stores_nothing_and_the_db_recovers",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let step = |name: &str| -> String {
        stdout
            .lines()
            // The test harness may print its own text before the first line.
            .find_map(|line| {
                line.split_once(&format!("STEP {name} "))
                    .map(|(_, rest)| rest)
            })
            .unwrap_or_else(|| panic!("no step {name} in: {stdout}"))
            .to_owned()
    };
    assert!(step("first").starts_with("Ok("), "{stdout}");
    let batch = step("batch");
    assert!(
        batch == "Err(\"Io\")" || batch == "Err(\"DiskFull\")",
        "{stdout}"
    );
    assert_eq!(step("after"), "Err(\"RolledBack\")", "{stdout}");
    assert_eq!(step("commit"), "Err(\"RolledBack\")", "{stdout}");
    assert_eq!(step("begin"), "Ok(())", "{stdout}");
    assert_eq!(step("fresh"), "Ok(())", "{stdout}");
    assert_eq!(step("fresh-commit"), "Ok(())", "{stdout}");
    assert_eq!(step("deposit"), "Ok(7)", "{stdout}");
    // Nothing of the failed transaction is stored; what committed afterwards is.
    assert_eq!(item_names(&path), ["fresh-tx"]);
    assert_eq!(integrity_check(&path), "ok");
}

// ---- finding 3: a caller's pool that switches the rules off ----

async fn migrated_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("pool.db");
    let db = Db::open(&path).await.unwrap();
    for balance_cents in [500, 0] {
        db.accounts()
            .open(&NewAccount {
                user_id: None,
                balance_cents,
            })
            .await
            .unwrap();
    }
    db.close().await;
    path
}

#[tokio::test]
async fn a_pool_with_foreign_keys_off_is_refused_before_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = migrated_file(dir.path()).await;
    let before = dump_all(&path);
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .foreign_keys(false),
        )
        .await
        .unwrap();
    let db = Db::from_pool(pool);
    let transfer = db
        .accounts()
        .transfer(&Transfer::new(1, 999_999, 200))
        .await;
    match &transfer {
        Err(Error::Config(message)) => assert!(message.contains("foreign_keys"), "{message}"),
        other => panic!("expected Config naming foreign_keys, got {other:?}"),
    }
    assert!(matches!(db.migrate().await, Err(Error::Config(_))));
    let create = db.items().create(&NewItem::new("x", json!(1))).await;
    assert!(matches!(create, Err(Error::Config(_))), "{create:?}");
    db.close().await;
    assert_eq!(dump_all(&path), before, "nothing may change");
}

#[tokio::test]
async fn a_pool_ignoring_check_constraints_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = migrated_file(dir.path()).await;
    let before = dump_all(&path);
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .pragma("ignore_check_constraints", "ON"),
        )
        .await
        .unwrap();
    let db = Db::from_pool(pool);
    let overdraft = db.accounts().transfer(&Transfer::new(2, 1, 1_000)).await;
    assert!(matches!(overdraft, Err(Error::Config(_))), "{overdraft:?}");
    db.close().await;
    assert_eq!(dump_all(&path), before);
}

#[tokio::test]
async fn a_rollback_journal_pool_behind_a_readers_lock_says_busy_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = migrated_file(dir.path()).await;
    raw(&path)
        .query_row("PRAGMA journal_mode = DELETE", [], |row| {
            row.get::<_, String>(0)
        })
        .unwrap();
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .journal_mode(SqliteJournalMode::Delete)
                .busy_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let db = Db::from_pool(pool);

    // Another program reads, holding its shared lock past our busy timeout.
    let reader = raw(&path);
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .unwrap();
    let blocked = db.items().create(&NewItem::new("blocked", json!(1))).await;
    assert!(matches!(blocked, Err(Error::Busy)), "{blocked:?}");
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    assert!(db.items().get(1).await.unwrap().is_none());
    assert!(item_names(&path).is_empty());

    // Lock gone: the same Db writes, and the Ok is stored.
    let id = db
        .items()
        .create(&NewItem::new("after", json!(2)))
        .await
        .unwrap();
    assert_eq!(db.items().get(id).await.unwrap().unwrap().name, "after");
    db.close().await;
    assert_eq!(item_names(&path), ["after"]);
}

// ---- finding 4: a Tx dropped while one of its calls runs ----

#[tokio::test]
async fn a_tx_dropped_mid_call_frees_the_writer_when_the_call_ends_and_its_repos_refuse() {
    let test = common::fresh_db_with(|options| options.busy_timeout(Duration::from_secs(20))).await;
    for delay_ms in [0u64, 1, 5, 20] {
        let tx = test.db.begin().await.unwrap();
        let items = tx.items();
        let batch: Vec<NewItem> = (0..60_000)
            .map(|n| NewItem::new(format!("batch-{delay_ms}-{n}"), json!(n)))
            .collect();
        let running = tokio::spawn(items.insert_many(&batch));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        drop(tx);
        // Whatever the running call returns, nothing of it may be stored.
        let _ = running.await.unwrap();

        // The writer is free again while the dropped Tx's repository still lives ...
        let plain = test
            .db
            .items()
            .create(&NewItem::new(format!("plain-{delay_ms}"), json!(1)))
            .await;
        assert!(plain.is_ok(), "{plain:?}");
        // ... and that repository refuses work instead of writing into a dead transaction.
        let late = items
            .create(&NewItem::new(format!("late-{delay_ms}"), json!(2)))
            .await;
        assert!(matches!(late, Err(Error::RolledBack(_))), "{late:?}");
    }
    let names = item_names(&test.path);
    assert_eq!(names, ["plain-0", "plain-1", "plain-5", "plain-20"]);
}

// ---- a service's own statements through Handle/Conn ----

#[tokio::test]
async fn a_transaction_a_service_left_open_on_a_conn_is_rolled_back_before_reuse() {
    let test = common::fresh_db().await;
    {
        let mut conn = test.db.handle().writer().await.unwrap();
        sqlx::query!("BEGIN")
            .execute(conn.sqlite().unwrap())
            .await
            .unwrap();
        sqlx::query!("INSERT INTO items (name) VALUES ('left-open')")
            .execute(conn.sqlite().unwrap())
            .await
            .unwrap();
        // Returned early: no COMMIT, no ROLLBACK.
    }
    // The next user of the writer does not write into the service's transaction.
    let id = test
        .db
        .items()
        .create(&NewItem::new("next", json!(1)))
        .await
        .unwrap();
    assert_eq!(test.db.items().get(id).await.unwrap().unwrap().name, "next");
    assert_eq!(item_names(&test.path), ["next"]);
}

#[tokio::test]
async fn a_service_panicking_inside_its_own_transaction_leaves_nothing_behind() {
    let test = common::fresh_db().await;
    let handle = test.db.handle();
    let task = tokio::spawn(async move {
        let mut conn = handle.writer().await.unwrap();
        sqlx::query!("BEGIN IMMEDIATE")
            .execute(conn.sqlite().unwrap())
            .await
            .unwrap();
        sqlx::query!("INSERT INTO items (name) VALUES ('before-panic')")
            .execute(conn.sqlite().unwrap())
            .await
            .unwrap();
        panic!("the service's handler panicked");
    });
    assert!(task.await.unwrap_err().is_panic());
    let tx = test.db.begin().await.unwrap();
    tx.items()
        .create(&NewItem::new("in-tx", json!(1)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(item_names(&test.path), ["in-tx"]);
}

#[tokio::test]
async fn a_reader_conn_refuses_writes_with_a_typed_error_and_writes_nothing() {
    let test = common::fresh_db().await;
    let mut conn = test.db.handle().reader().await.unwrap();
    let write = sqlx::query!("INSERT INTO items (name) VALUES ('through-a-reader')")
        .execute(conn.sqlite().unwrap())
        .await
        .map_err(Error::from);
    assert!(matches!(write, Err(Error::ReadOnly(_))), "{write:?}");
    drop(conn);
    assert!(item_names(&test.path).is_empty());
}

// ---- group commit on a full disk ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn grouped_transfers_on_a_full_disk_are_stored_exactly_when_acknowledged() {
    let disk = Tmpfs::mount(4 << 20);
    let path = disk.path().join("full.db");
    let set_aside = disk.path().join("set-aside");
    let db = Db::open(&path).await.unwrap();
    let accounts = common::open_accounts(&db, 16, 1_000_000).await;
    std::fs::write(&set_aside, vec![7u8; 1 << 20]).unwrap();
    // Fill the disk with items until it refuses one.
    let padding = "x".repeat(2_000);
    for n in 0.. {
        let item = NewItem::new(format!("filler-{n}"), json!({ "pad": padding }));
        if let Err(err) = db.items().create(&item).await {
            assert!(matches!(err, Error::DiskFull), "{err:?}");
            break;
        }
    }
    // Give back about 96 KiB: room for some groups to land before the disk is full again, so
    // the run crosses from stored to refused while transfers are riding in groups.
    std::fs::write(&set_aside, vec![7u8; (1 << 20) - (96 << 10)]).unwrap();

    // 16 callers at once, so their transfers queue for the writer and ride in groups.
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..16usize {
        let (db, accounts) = (db.clone(), accounts.clone());
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..100usize {
                let key = format!("c{caller}-{n}");
                let t = Transfer::new(accounts[caller], accounts[(caller + 1 + n % 15) % 16], 1)
                    .with_key(key.clone());
                outcomes.push((key, db.accounts().transfer(&t).await));
            }
            outcomes
        });
    }
    let mut acknowledged = std::collections::BTreeSet::new();
    let mut full = 0;
    while let Some(outcomes) = tasks.join_next().await {
        for (key, outcome) in outcomes.unwrap() {
            match outcome {
                Ok(()) => {
                    acknowledged.insert(key);
                }
                Err(Error::DiskFull) => full += 1,
                Err(other) => panic!("{key}: {other:?}"),
            }
        }
    }
    assert!(full > 0, "the disk never refused a transfer");
    assert!(
        !acknowledged.is_empty(),
        "no transfer landed before the disk filled"
    );

    // The ledger holds exactly the acknowledged transfers, and money is conserved.
    let conn = raw(&path);
    let mut stmt = conn
        .prepare("SELECT idempotency_key FROM transfers WHERE idempotency_key IS NOT NULL")
        .unwrap();
    let stored: std::collections::BTreeSet<String> = stmt
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        stored, acknowledged,
        "acknowledged and stored transfers differ"
    );
    assert_eq!(db.accounts().total_balance().await.unwrap(), 16 * 1_000_000);
    assert_eq!(integrity_check(&path), "ok");

    // Space freed: the same Db transfers again, and that transfer is stored.
    std::fs::remove_file(&set_aside).unwrap();
    let balances = async || {
        let mut pair = [0; 2];
        for (balance, id) in pair.iter_mut().zip(&accounts[..2]) {
            *balance = db.accounts().get(*id).await.unwrap().unwrap().balance_cents;
        }
        pair
    };
    let before = balances().await;
    db.accounts()
        .transfer(&Transfer::new(accounts[0], accounts[1], 1).with_key("after"))
        .await
        .unwrap();
    let after_rows: i64 = raw(&path)
        .query_row(
            "SELECT count(*) FROM transfers WHERE idempotency_key = 'after'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        after_rows, 1,
        "the transfer after the space was freed is in the ledger"
    );
    assert_eq!(balances().await, [before[0] - 1, before[1] + 1]);
    println!(
        "grouped transfers on a full disk: {} acknowledged and stored, {full} DiskFull",
        acknowledged.len()
    );
    db.close().await;
}
