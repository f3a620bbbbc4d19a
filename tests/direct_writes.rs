//! Writes on the caller's thread (`DbOptions::direct_writes`, on by default): every answer
//! and every stored row the same as on sqlx's writer, and a write the direct connection does
//! not commit cleanly (a refusal, another connection's lock, a trigger's veto) stored nothing
//! there and lands, or is refused, exactly once the ordinary way.

mod common;

use std::time::{Duration, Instant};

use common::{dump_all, fresh_db_with, raw};
use serde_json::json;
use sqlrepo::{Db, Error, ItemPatch, ItemStatus, NewAccount, NewItem, Transfer};

/// Runs the same calls on `db` and returns each answer as text (so that two `Db`s can be
/// compared call by call): transfers that land, replay, overdraw, name a missing account or
/// reuse a key; updates that change, repeat, miss or take a name already used.
async fn calls(db: &Db) -> Vec<String> {
    let accounts = db.accounts();
    let items = db.items();
    let mut answers = Vec::new();
    for balance in [1_000, 50] {
        answers.push(format!(
            "{:?}",
            accounts.open(&NewAccount::new(None, balance)).await
        ));
    }
    for name in ["a", "b"] {
        let new = NewItem {
            name: name.to_owned(),
            data: json!({ "n": name }),
            status: ItemStatus::Active,
        };
        answers.push(format!("{:?}", items.create(&new).await));
    }
    let transfers = [
        Transfer::new(1, 2, 100),
        Transfer::new(1, 2, 100).with_key("k1"),
        Transfer::new(1, 2, 100).with_key("k1"), // a replay
        Transfer::new(1, 2, 7).with_key("k1"),   // the key again, another movement
        Transfer::new(2, 1, 10_000),             // an overdraft
        Transfer::new(1, 99, 5),                 // a missing account
        Transfer::new(99, 1, 5),
        Transfer::new(2, 1, i64::MAX),
    ];
    for t in &transfers {
        answers.push(format!("{:?}", accounts.transfer_with_outcome(t).await));
    }
    let patches = [
        (
            1,
            ItemPatch {
                data: Some(json!({ "n": 2 })),
                ..ItemPatch::default()
            },
        ),
        (
            1,
            ItemPatch {
                data: Some(json!({ "n": 2 })),
                ..ItemPatch::default()
            },
        ), // the same
        (
            2,
            ItemPatch {
                name: Some("a".to_owned()),
                ..ItemPatch::default()
            },
        ), // name taken
        (
            2,
            ItemPatch {
                status: Some(ItemStatus::Archived),
                ..ItemPatch::default()
            },
        ),
        (
            77,
            ItemPatch {
                data: Some(json!(1)),
                ..ItemPatch::default()
            },
        ), // no such item
    ];
    for (id, patch) in &patches {
        answers.push(format!("{:?}", items.update(*id, patch).await));
    }
    // Creates: one that lands after the others, one whose name is taken, one that lands.
    for name in ["c", "b", "d"] {
        let new = NewItem {
            name: name.to_owned(),
            data: json!([name, { "deep": [1, 2.5, null] }]),
            status: ItemStatus::Inactive,
        };
        answers.push(format!("{:?}", items.create(&new).await));
    }
    answers
}

/// The stored rows, less the times SQLite wrote (which differ between two runs).
fn state(path: &std::path::Path) -> Vec<String> {
    let conn = raw(path);
    [
        "SELECT 'item', id, name, data, status FROM items ORDER BY id",
        "SELECT 'transfer', id, from_account, to_account, amount, idempotency_key \
         FROM transfers ORDER BY id",
        "SELECT 'account', id, balance FROM accounts ORDER BY id",
    ]
    .iter()
    .flat_map(|sql| {
        let mut statement = conn.prepare(sql).unwrap();
        let columns = statement.column_count();
        statement
            .query_map([], |row| {
                let fields: rusqlite::Result<Vec<String>> = (0..columns)
                    .map(|i| Ok(text(row.get::<_, rusqlite::types::Value>(i)?)))
                    .collect();
                Ok(fields?.join(" "))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    })
    .collect()
}

/// A stored value as the line `state` shows it: text as it is, numbers as digits.
fn text(value: rusqlite::types::Value) -> String {
    match value {
        rusqlite::types::Value::Text(text) => text,
        rusqlite::types::Value::Integer(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn direct_writes_answer_and_store_exactly_as_the_writers_worker_does() {
    let direct = fresh_db_with(|options| options).await;
    let ordinary = fresh_db_with(|options| options.direct_writes(false)).await;
    let answers = calls(&direct).await;
    assert_eq!(answers, calls(&ordinary).await);
    // The calls above meant what they say: money moved twice (the plain one and k1), the
    // replay and every refusal moved nothing, and one update of each item landed.
    assert_eq!(
        answers[4..12]
            .iter()
            .filter(|a| a.contains("Landed"))
            .count(),
        2
    );
    assert!(answers[6].contains("Replayed"), "{answers:?}");
    assert!(answers[7].contains("Duplicate"), "{answers:?}");
    assert!(answers[8].contains("InsufficientFunds"), "{answers:?}");
    assert!(answers[9].contains("NotFound") && answers[10].contains("NotFound"));
    let updates: Vec<&str> = answers[12..17].iter().map(String::as_str).collect();
    assert_eq!(
        updates,
        [
            "Ok(true)",
            "Ok(false)",
            &answers[14],
            "Ok(true)",
            "Ok(false)"
        ]
    );
    assert!(answers[14].contains("Duplicate"), "{answers:?}");
    // Creates: ids 1 and 2 first, then 3; the taken name refused; the next id not skipped.
    assert_eq!(answers[2..4], ["Ok(1)", "Ok(2)"]);
    assert_eq!(answers[17], "Ok(3)");
    assert!(answers[18].contains("Duplicate"), "{answers:?}");
    assert_eq!(answers[19], "Ok(4)");
    let stored = state(&direct.path);
    assert_eq!(stored, state(&ordinary.path));
    assert!(stored.contains(&"account 1 800".to_owned()), "{stored:?}");
    assert!(stored.contains(&"account 2 250".to_owned()), "{stored:?}");
}

#[tokio::test]
async fn a_write_lock_held_elsewhere_sends_the_write_the_ordinary_way_and_it_lands_once() {
    let test = fresh_db_with(|options| options.busy_timeout(Duration::from_secs(5))).await;
    let accounts = test.accounts();
    for _ in 0..2 {
        accounts.open(&NewAccount::new(None, 1_000)).await.unwrap();
    }
    let item = test
        .items()
        .create(&NewItem {
            name: "held".to_owned(),
            data: json!(0),
            status: ItemStatus::Active,
        })
        .await
        .unwrap();

    // Another connection (another process, as far as SQLite knows) takes the write lock for
    // a moment: the direct connection waits for no lock, so the write goes to sqlx's writer,
    // which waits its busy timeout and lands it once the lock is gone.
    let path = test.path.clone();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = raw(&path);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        conn.execute_batch("COMMIT").unwrap();
    });
    is_locked.recv().unwrap();
    let started = Instant::now();
    accounts.transfer(&Transfer::new(1, 2, 25)).await.unwrap();
    let patch = ItemPatch {
        data: Some(json!(1)),
        ..ItemPatch::default()
    };
    assert!(test.items().update(item, &patch).await.unwrap());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the transfer landed while another connection held the write lock"
    );
    holder.join().unwrap();

    let conn = raw(&test.path);
    let ledger: i64 = conn
        .query_row(
            "SELECT count(*) FROM transfers WHERE from_account = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ledger, 1, "the transfer must be stored exactly once");
    let balances: Vec<i64> = conn
        .prepare("SELECT balance FROM accounts ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(balances, [975, 1_025]);
    let data: String = conn
        .query_row("SELECT data FROM items WHERE id = ?1", [item], |r| r.get(0))
        .unwrap();
    assert_eq!(data, "1");
}

#[tokio::test]
async fn a_lock_held_past_the_busy_timeout_is_busy_and_stores_nothing() {
    let test = fresh_db_with(|options| options.busy_timeout(Duration::from_millis(100))).await;
    let accounts = test.accounts();
    for _ in 0..2 {
        accounts.open(&NewAccount::new(None, 1_000)).await.unwrap();
    }
    let before = dump_all(&test.path);
    let conn = raw(&test.path);
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = accounts
        .transfer(&Transfer::new(1, 2, 25))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy), "{err:?}");
    conn.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        dump_all(&test.path),
        before,
        "a Busy transfer stored something"
    );
    // The writer is in order afterwards, on both paths.
    accounts.transfer(&Transfer::new(1, 2, 25)).await.unwrap();
    assert_eq!(accounts.get(2).await.unwrap().unwrap().balance_cents, 1_025);
}

#[tokio::test]
async fn a_trigger_vetoing_a_direct_write_fails_it_alone_and_stores_nothing() {
    for veto in ["ABORT", "ROLLBACK", "FAIL"] {
        let test = fresh_db_with(|options| options).await;
        let accounts = test.accounts();
        for _ in 0..2 {
            accounts.open(&NewAccount::new(None, 1_000)).await.unwrap();
        }
        // A service's own rule, installed behind the Db's back: SQLite re-prepares the direct
        // connection's cached statement for the new schema.
        raw(&test.path)
            .execute_batch(&format!(
                "CREATE TRIGGER veto BEFORE INSERT ON transfers WHEN NEW.amount = 13
                 BEGIN SELECT RAISE({veto}, 'unlucky amount'); END;"
            ))
            .unwrap();
        let before = dump_all(&test.path);
        let err = accounts
            .transfer(&Transfer::new(1, 2, 13))
            .await
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("unlucky amount"),
            "{veto}: the service's message is lost: {err:?}"
        );
        assert_eq!(
            dump_all(&test.path),
            before,
            "{veto}: a vetoed transfer stored something"
        );

        // Neither connection is left in a transaction: the next writes land, and one by one.
        accounts.transfer(&Transfer::new(1, 2, 12)).await.unwrap();
        let tx = test.begin().await.unwrap();
        tx.accounts()
            .transfer(&Transfer::new(2, 1, 2))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        accounts.transfer(&Transfer::new(2, 1, 2)).await.unwrap();
        let balances = (
            accounts.get(1).await.unwrap().unwrap().balance_cents,
            accounts.get(2).await.unwrap().unwrap().balance_cents,
        );
        assert_eq!(balances, (990, 1_010), "{veto}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_direct_groups_with_refusals_answer_each_caller_and_conserve_money() {
    let test = fresh_db_with(|options| options).await;
    let accounts = test.accounts();
    for _ in 0..8 {
        accounts.open(&NewAccount::new(None, 100)).await.unwrap();
    }
    let tasks: Vec<_> = (0..16_i64)
        .map(|caller| {
            let db = test.db.clone();
            tokio::spawn(async move {
                let mut landed = 0_i64;
                let mut refused = 0_i64;
                for n in 0..40_i64 {
                    let from = (caller + n) % 8 + 1;
                    let to = (caller * 3 + n) % 8 + 1;
                    let to = if to == from { to % 8 + 1 } else { to };
                    // Large amounts overdraw now and then: their groups run again one by one.
                    let amount = if n % 5 == 0 { 90 } else { 3 };
                    match db
                        .accounts()
                        .transfer(&Transfer::new(from, to, amount))
                        .await
                    {
                        Ok(()) => landed += 1,
                        Err(Error::InsufficientFunds { .. }) => refused += 1,
                        Err(other) => panic!("caller {caller}: {other:?}"),
                    }
                }
                (landed, refused)
            })
        })
        .collect();
    let (mut landed, mut refused) = (0, 0);
    for task in tasks {
        let (l, r) = task.await.unwrap();
        landed += l;
        refused += r;
    }
    assert_eq!(landed + refused, 16 * 40);
    assert!(
        refused > 0,
        "no overdraft was tried: the test proves nothing"
    );
    assert_eq!(accounts.total_balance().await.unwrap(), 800);
    let conn = raw(&test.path);
    let (rows, negative): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM transfers WHERE from_account IS NOT NULL),
                    (SELECT count(*) FROM accounts WHERE balance < 0)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        rows, landed,
        "every Ok is one ledger row, and nothing else is"
    );
    assert_eq!(negative, 0);
}

/// Creates of sixteen callers at once, grouped on the caller's thread: each `Ok` is the id of
/// the row holding that caller's own name and data, each taken name is refused alone (its
/// group runs again one by one), and nothing else is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_each_get_their_own_row_and_a_taken_name_fails_alone() {
    // Direct groups, and the worker's (`GroupedCreates::apply_group`) with direct writes off.
    for direct in [true, false] {
        concurrent_creates(direct).await;
    }
}

async fn concurrent_creates(direct: bool) {
    let test = fresh_db_with(|options| options.direct_writes(direct)).await;
    let tasks: Vec<_> = (0..16_u32)
        .map(|caller| {
            let db = test.db.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut refused = 0_u32;
                for n in 0..40_u32 {
                    // Every fifth name is shared by all callers: one of them gets it.
                    let name = if n % 5 == 0 {
                        format!("shared-{n}")
                    } else {
                        format!("c{caller}-{n}")
                    };
                    let new = NewItem {
                        name: name.clone(),
                        data: json!({ "caller": caller, "n": n }),
                        status: ItemStatus::Active,
                    };
                    match db.items().create(&new).await {
                        Ok(id) => mine.push((id, name, caller, n)),
                        Err(Error::Duplicate { .. }) => refused += 1,
                        Err(other) => panic!("caller {caller}: {other:?}"),
                    }
                }
                (mine, refused)
            })
        })
        .collect();
    let (mut created, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (mine, r) = task.await.unwrap();
        created.extend(mine);
        refused += r;
    }
    // 8 shared names of 16 callers each: one landing per name, 15 refusals.
    assert_eq!(refused, 8 * 15);
    assert_eq!(created.len(), 16 * 40 - 8 * 15);
    let conn = raw(&test.path);
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        stored,
        created.len() as i64,
        "every Ok is one row, and nothing else is"
    );
    for (id, name, caller, n) in &created {
        let (stored_name, data): (String, String) = conn
            .query_row("SELECT name, data FROM items WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            &stored_name, name,
            "direct {direct}: id {id} answered the wrong caller"
        );
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data, json!({ "caller": caller, "n": n }));
    }
}

/// The `-wal` file is synced once in the background ahead of each checkpoint of the direct
/// writer's commits (so that the checkpoint, which holds the writer, syncs little), and the
/// writes around it all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_synced_once_ahead_of_each_checkpoint_of_direct_writes() {
    let test = fresh_db_with(|options| options).await;
    let accounts = test.accounts();
    for _ in 0..2 {
        accounts
            .open(&NewAccount::new(None, 1_000_000))
            .await
            .unwrap();
    }
    let stats = || test.db.wal_stats();
    let (mut presynced_at, mut checkpointed_at) = (None, None);
    for n in 0..50_000_u32 {
        let (from, to) = if n % 2 == 0 { (1, 2) } else { (2, 1) };
        accounts
            .transfer(&Transfer::new(from, to, 1 + i64::from(n % 7)))
            .await
            .unwrap();
        let now = stats();
        if presynced_at.is_none() && now.wal_presyncs > 0 {
            presynced_at = Some(n);
        }
        if now.passive_checkpoints > 0 {
            checkpointed_at = Some(n);
            assert_eq!(
                now.wal_presyncs, 1,
                "one sync ahead of one checkpoint: {now:?}"
            );
            break;
        }
    }
    let (Some(presynced_at), Some(checkpointed_at)) = (presynced_at, checkpointed_at) else {
        panic!("50,000 transfers brought no checkpoint: {:?}", stats());
    };
    assert!(
        presynced_at < checkpointed_at,
        "the WAL was synced with the checkpoint (transfer {presynced_at}), not ahead of it"
    );
    assert_eq!(accounts.total_balance().await.unwrap(), 2_000_000);
    // Every transfer is stored, those before the checkpoint and the one it came with.
    let ledger: i64 = raw(&test.path)
        .query_row(
            "SELECT count(*) FROM transfers WHERE from_account IS NOT NULL",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(ledger, i64::from(checkpointed_at) + 1);
    test.db.integrity_check().await.unwrap();
}
