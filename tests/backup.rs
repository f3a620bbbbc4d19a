//! `Db::backup_to` and `Db::integrity_check`: online copies that are consistent, complete and
//! never overwrite anything, and a health check that tells a sound file from a damaged one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{fresh_db, raw};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlrepo::{Db, DbOptions, Error, NewItem, Transfer};

const ACCOUNTS: i64 = 20;
const OPENING_CENTS: i64 = 10_000;

/// Per account: the opening balance plus what the ledger says came in from other accounts,
/// less what went out (a ledger row for the opening deposit itself, with no source, is left
/// out, so this holds whether or not opening an account is recorded).
fn ledger_balances_match(path: &std::path::Path) -> Vec<(i64, i64, i64)> {
    let conn = raw(path);
    let mut stmt = conn
        .prepare(
            "SELECT a.id, a.balance,
                    ?1 + coalesce((SELECT sum(amount) FROM transfers
                                   WHERE to_account = a.id AND from_account IS NOT NULL), 0)
                       - coalesce((SELECT sum(amount) FROM transfers WHERE from_account = a.id), 0)
             FROM accounts AS a
             ORDER BY a.id",
        )
        .unwrap();
    stmt.query_map([OPENING_CENTS], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_during_concurrent_transfers_conserves_money_and_opens_clean() {
    let db = fresh_db().await;
    let accounts = Arc::new(common::open_accounts(&db, ACCOUNTS as usize, OPENING_CENTS).await);
    let landed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    // Eight writers moving money until told to stop; each counts the transfers that returned Ok.
    let mut writers = tokio::task::JoinSet::new();
    for seed in 0..8 {
        let (db, accounts, landed, stop) = (
            db.db.clone(),
            accounts.clone(),
            landed.clone(),
            stop.clone(),
        );
        writers.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) {
                let from = accounts[rng.random_range(0..accounts.len())];
                let to = accounts[rng.random_range(0..accounts.len())];
                if from == to {
                    continue;
                }
                match db
                    .accounts()
                    .transfer(&Transfer::new(from, to, rng.random_range(1..=500)))
                    .await
                {
                    Ok(()) => {
                        landed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Error::InsufficientFunds { .. }) => {}
                    Err(other) => panic!("a transfer failed during the backup: {other}"),
                }
            }
        });
    }
    // Let the load build up, and make sure some transfers landed before the backup starts.
    while landed.load(Ordering::SeqCst) < 200 {
        tokio::task::yield_now().await;
    }
    let marker = db
        .items()
        .create(&NewItem::new(
            "acknowledged-before-backup",
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    let landed_before = landed.load(Ordering::SeqCst);

    let copy_path = db.path.with_file_name("copy.db");
    db.backup_to(&copy_path).await.unwrap();

    // The load went on during the backup, and goes on a little after it.
    let landed_at_backup_end = landed.load(Ordering::SeqCst);
    while landed.load(Ordering::SeqCst) < landed_at_backup_end + 100 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = writers.join_next().await {
        joined.unwrap();
    }

    let copy = Db::open(&copy_path).await.unwrap();
    copy.integrity_check().await.unwrap();
    assert_eq!(
        copy.accounts().total_balance().await.unwrap(),
        ACCOUNTS * OPENING_CENTS,
        "money was created or lost in the copy"
    );
    assert_eq!(
        copy.items()
            .get(marker)
            .await
            .unwrap()
            .map(|item| item.name),
        Some("acknowledged-before-backup".to_owned()),
        "a write acknowledged before the backup is missing from it"
    );
    copy.close().await;
    let ledger_rows: i64 = raw(&copy_path)
        .query_row("SELECT count(*) FROM transfers", [], |row| row.get(0))
        .unwrap();
    let ledger_rows = ledger_rows as u64;
    assert!(
        ledger_rows >= landed_before,
        "the copy holds {ledger_rows} transfers; {landed_before} had returned Ok before it began"
    );
    for (account, balance, from_ledger) in ledger_balances_match(&copy_path) {
        assert_eq!(
            balance, from_ledger,
            "account {account}: the balance disagrees with the ledger"
        );
    }
    // The original is still whole, and holds at least what the copy does.
    db.integrity_check().await.unwrap();
    assert_eq!(
        db.accounts().total_balance().await.unwrap(),
        ACCOUNTS * OPENING_CENTS
    );
}

#[tokio::test]
async fn backup_refuses_an_existing_file_and_leaves_it_untouched() {
    let db = fresh_db().await;
    let taken = db.path.with_file_name("precious.db");
    std::fs::write(&taken, b"not yours to overwrite").unwrap();
    let refused = db.backup_to(&taken).await;
    assert!(
        matches!(&refused, Err(Error::InvalidInput(message)) if message.contains("already exists")),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"not yours to overwrite");

    // An empty file is a file too (VACUUM INTO alone would write into it).
    let empty = db.path.with_file_name("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        db.backup_to(&empty).await,
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    // The database itself, of course.
    assert!(matches!(
        db.backup_to(&db.path).await,
        Err(Error::InvalidInput(_))
    ));
    db.integrity_check().await.unwrap();
}

#[tokio::test]
async fn backup_into_a_missing_directory_fails_and_creates_nothing() {
    let db = fresh_db().await;
    let nowhere = db.path.with_file_name("no-such-dir").join("copy.db");
    let failed = db.backup_to(&nowhere).await;
    assert!(matches!(failed, Err(Error::Io(_))), "{failed:?}");
    assert!(!nowhere.parent().unwrap().exists());
}

#[tokio::test]
async fn a_restored_backup_is_the_database_as_it_was() {
    let db = fresh_db().await;
    let kept = db
        .items()
        .create(&NewItem::new("kept", serde_json::json!({"n": 1})))
        .await
        .unwrap();
    let copy_path = db.path.with_file_name("copy.db");
    db.backup_to(&copy_path).await.unwrap();
    db.items()
        .create(&NewItem::new("after the backup", serde_json::json!({})))
        .await
        .unwrap();
    db.close().await;

    // Restore as the guide's backups chapter says: with the service stopped, the copy replaces the file, and
    // the old file's WAL and shared-memory companions go with it.
    for suffix in ["-wal", "-shm"] {
        let mut companion = db.path.clone().into_os_string();
        companion.push(suffix);
        let _ = std::fs::remove_file(companion);
    }
    std::fs::copy(&copy_path, &db.path).unwrap();
    let restored = Db::open(&db.path).await.unwrap();
    restored.integrity_check().await.unwrap();
    assert_eq!(restored.items().count().await.unwrap(), 1);
    assert_eq!(
        restored.items().get(kept).await.unwrap().unwrap().name,
        "kept"
    );
    // The restored file takes writes again.
    restored
        .items()
        .create(&NewItem::new("after the restore", serde_json::json!({})))
        .await
        .unwrap();
}

#[tokio::test]
async fn integrity_check_passes_on_a_sound_file() {
    let db = fresh_db().await;
    db.items()
        .create(&NewItem::new("lamp", serde_json::json!({})))
        .await
        .unwrap();
    db.integrity_check().await.unwrap();
}

#[tokio::test]
async fn integrity_check_reports_a_damaged_file_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    {
        let db = Db::open(&path).await.unwrap();
        let items: Vec<NewItem> = (0..3_000)
            .map(|i| NewItem::new(format!("item {i:05}"), serde_json::json!({"i": i})))
            .collect();
        db.items().insert_many(&items).await.unwrap();
        db.close().await;
    }
    // Which pages hold the index on items.name: scribble over its second half, keeping the
    // schema (page 1) and the tables intact, as a bad disk sector might.
    let (page_size, index_root): (i64, i64) = {
        let conn = raw(&path);
        let page_size = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_schema
                 WHERE type = 'index' AND tbl_name = 'items' AND sql IS NULL
                 LIMIT 1",
                [],
                |row| row.get(0),
            )
            .unwrap();
        (page_size, root)
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let (page_size, index_root) = (page_size as usize, index_root as usize);
    let start = (index_root - 1) * page_size + page_size / 2;
    bytes[start..start + page_size / 2].fill(0x5a);
    std::fs::write(&path, &bytes).unwrap();

    let db = Db::open_with(DbOptions::new(&path).migrate(false))
        .await
        .unwrap();
    let checked = db.integrity_check().await;
    assert!(matches!(checked, Err(Error::Corrupt(_))), "{checked:?}");
}
