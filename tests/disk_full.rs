//! A full disk, for real: the database lives on a small `tmpfs` that the test fills up.
//!
//! What a caller may rely on (the guide's operations chapter): the write that could not be made returns
//! `Error::DiskFull`, nothing acknowledged is lost, reads go on, the file stays intact, and
//! writes succeed again on the same `Db` once space is freed, without reopening.
//!
//! These tests need to mount a `tmpfs` (root, or `CAP_SYS_ADMIN`), so they are `#[ignore]`d
//! and run with `-- --include-ignored`; run so without that right, they fail with a message
//! saying so.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::tmpfs::Tmpfs;
use common::{integrity_check, item_names};
use serde_json::json;
use sqlrepo::{
    Db, DbOptions, Error, ItemPatch, ItemStatus, NewAccount, NewItem, NewOrder, NewUser, Transfer,
};

/// Fills the file system holding `dir` with one file, until the kernel says no more.
fn fill(dir: &Path) -> PathBuf {
    let ballast = dir.join("ballast");
    let mut file = File::create(&ballast).expect("create ballast");
    let chunk = vec![0xa5_u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::StorageFull => break,
            Err(err) => panic!("filling the tmpfs failed otherwise: {err}"),
        }
    }
    // Whatever is buffered is lost on purpose; the file system is full either way.
    let _ = file.flush();
    ballast
}

/// One item of about a kilobyte, so a few dozen fill a page run of the WAL.
fn item(name: &str) -> NewItem {
    NewItem::new(name, json!({ "padding": "x".repeat(1_000) }))
}

/// A database on a tmpfs that is full: some writes acknowledged before, one batch refused.
struct FullDisk {
    // Declared first, so the connections close before the tmpfs is unmounted.
    db: Db,
    path: PathBuf,
    ballast: PathBuf,
    /// Item names whose writes returned Ok.
    acknowledged: Vec<String>,
    /// The batch that could not be written, and what the write returned.
    refused: (Error, Vec<String>),
    /// Two accounts, `a` holding all the money (10,000 cents), `b` none.
    a: i64,
    b: i64,
    /// A user, made before the disk filled, for orders to name.
    user: i64,
    _disk: Tmpfs,
}

impl FullDisk {
    async fn new() -> FullDisk {
        let disk = Tmpfs::mount(4 * 1024 * 1024);
        let path = disk.path().join("app.db");
        let db = Db::open_with(DbOptions::new(&path).readers(2))
            .await
            .expect("open on the tmpfs");
        let account = |balance_cents| {
            let db = db.clone();
            async move {
                db.accounts()
                    .open(&NewAccount {
                        user_id: None,
                        balance_cents,
                    })
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (account(10_000).await, account(0).await);
        let user = db
            .users()
            .create(&NewUser::new("owner@example.test", "Owner"))
            .await
            .unwrap();

        let mut acknowledged = Vec::new();
        let mut batch = 0;
        let mut write_batch = async |acknowledged: &mut Vec<String>| {
            batch += 1;
            let names: Vec<String> = (0..20).map(|i| format!("b{batch:05}-{i:02}")).collect();
            let items: Vec<NewItem> = names.iter().map(|name| item(name)).collect();
            match db.items().insert_many(&items).await {
                Ok(n) => {
                    assert_eq!(n, 20);
                    acknowledged.extend(names);
                    None
                }
                Err(err) => Some((err, names)),
            }
        };
        for _ in 0..5 {
            assert!(write_batch(&mut acknowledged).await.is_none());
        }
        // Fill the disk, then write until the database cannot grow any more (the WAL may
        // have room left in pages it already holds).
        let ballast = fill(disk.path());
        let mut refused = None;
        for _ in 0..10_000 {
            refused = write_batch(&mut acknowledged).await;
            if refused.is_some() {
                break;
            }
        }
        let refused = refused.expect("the disk never filled up");
        FullDisk {
            db,
            path,
            ballast,
            acknowledged,
            refused,
            a,
            b,
            user,
            _disk: disk,
        }
    }

    /// Every item name the Db reads, through the API.
    async fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let count = self.db.items().count().await.expect("count");
        // Ids are not reused here, so looking a little past the count finds every row.
        for id in 1..=count + 30 {
            if let Some(found) = self.db.items().get(id).await.expect("get") {
                names.push(found.name);
            }
        }
        names
    }

    async fn balances(&self) -> (i64, i64) {
        let get = |id| async move {
            self.db
                .accounts()
                .get(id)
                .await
                .unwrap()
                .unwrap()
                .balance_cents
        };
        (get(self.a).await, get(self.b).await)
    }
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn a_write_on_a_full_disk_fails_with_disk_full_and_stores_nothing() {
    let full = FullDisk::new().await;
    let (err, refused_names) = &full.refused;
    assert!(
        matches!(err, Error::DiskFull),
        "a batch on a full disk failed with {err:?}, not Error::DiskFull"
    );
    assert_eq!(
        err.to_string(),
        "the disk is full: this write was not stored; free space, then retry"
    );
    let stored = full.names().await;
    for name in refused_names {
        assert!(!stored.contains(name), "{name} was refused and is stored");
    }

    let moved = full
        .db
        .accounts()
        .transfer(&Transfer::new(full.a, full.b, 100))
        .await;
    assert!(matches!(moved, Err(Error::DiskFull)), "{moved:?}");
    assert_eq!(full.balances().await, (10_000, 0));
    assert_eq!(full.db.accounts().total_balance().await.unwrap(), 10_000);
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn user_order_and_ledger_batches_on_a_full_disk_fail_with_disk_full_and_store_nothing() {
    // The other one-statement batches (`jsonb_each` over the rows), as items' is above: each
    // is refused whole, with nothing of it stored.
    let full = FullDisk::new().await;
    let users: Vec<NewUser> = (0..500)
        .map(|i| NewUser::new(format!("u{i}@example.test"), "n".repeat(200)))
        .collect();
    let err = full.db.users().insert_many(&users).await.unwrap_err();
    assert!(matches!(err, Error::DiskFull), "users: {err:?}");
    assert_eq!(full.db.users().count().await.unwrap(), 1);

    let orders: Vec<NewOrder> = (0..2_000)
        .map(|i| NewOrder::new(full.user, i + 1))
        .collect();
    let err = full.db.orders().insert_many(&orders).await.unwrap_err();
    assert!(matches!(err, Error::DiskFull), "orders: {err:?}");
    assert_eq!(full.db.orders().count().await.unwrap(), 0);

    let steps: Vec<Transfer> = (0..1_000)
        .map(|_| Transfer::new(full.a, full.b, 1))
        .collect();
    let err = full.db.accounts().transfer_batch(&steps).await.unwrap_err();
    assert!(matches!(err, Error::DiskFull), "transfer_batch: {err:?}");
    assert_eq!(full.balances().await, (10_000, 0));
    assert_eq!(full.db.accounts().total_balance().await.unwrap(), 10_000);
    assert_eq!(integrity_check(&full.path), "ok");
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn reads_go_on_and_nothing_acknowledged_is_lost_while_the_disk_is_full() {
    let full = FullDisk::new().await;
    assert!(full.acknowledged.len() >= 100);
    let stored = full.names().await;
    assert_eq!(
        stored, full.acknowledged,
        "the Db reads other rows than it acknowledged"
    );
    assert_eq!(
        full.db.items().count().await.unwrap(),
        full.acknowledged.len() as i64
    );

    // The file is intact, and a fresh connection reads exactly what the Db acknowledged.
    full.db
        .integrity_check()
        .await
        .expect("integrity while full");
    assert_eq!(integrity_check(&full.path), "ok");
    assert_eq!(item_names(&full.path), full.acknowledged);
}

#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn writes_succeed_again_on_the_same_db_once_space_is_freed() {
    let full = FullDisk::new().await;
    assert!(
        matches!(full.refused.0, Error::DiskFull),
        "{:?}",
        full.refused.0
    );

    std::fs::remove_file(&full.ballast).unwrap();
    let db = &full.db;
    let after = db
        .items()
        .create(&item("after-space-freed"))
        .await
        .expect("a write after space was freed");
    db.accounts()
        .transfer(&Transfer::new(full.a, full.b, 1))
        .await
        .expect("a transfer after space was freed");
    let retried: Vec<NewItem> = full.refused.1.iter().map(|name| item(name)).collect();
    assert_eq!(db.items().insert_many(&retried).await.unwrap(), 20);

    assert_eq!(
        db.items().get(after).await.unwrap().unwrap().name,
        "after-space-freed"
    );
    assert_eq!(full.balances().await, (9_999, 1));
    db.integrity_check().await.unwrap();
    db.close().await;

    let mut expected = full.acknowledged.clone();
    expected.push("after-space-freed".to_owned());
    expected.extend(full.refused.1.iter().cloned());
    assert_eq!(item_names(&full.path), expected);
    assert_eq!(integrity_check(&full.path), "ok");
}

/// A single-row create on a full disk is refused, or it is stored: never `Ok(id)` with nothing
/// stored (which an `INSERT … RETURNING` read without stepping it to completion would give,
/// since its failed autocommit is then never reported).
#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn a_single_row_create_on_a_full_disk_is_refused_or_stored() {
    let full = FullDisk::new().await;
    let created = full.db.items().create(&item("single-while-full")).await;
    let stored = full.names().await.contains(&"single-while-full".to_owned());
    match created {
        Ok(id) => assert!(
            stored,
            "items.create returned Ok({id}) on a full disk, and the row is not stored"
        ),
        Err(err) => {
            assert!(matches!(err, Error::DiskFull), "{err:?}");
            assert!(
                !stored,
                "items.create failed with DiskFull and the row is stored"
            );
        }
    }
}

/// Item updates on a full disk, sixteen at once so that they share group commits and the
/// direct path on the caller's thread: each one is refused with `DiskFull` and leaves its row
/// as it was, or returns `Ok(true)` with the new value stored. Together they ask for far more
/// space than the tmpfs has, so some must be refused.
#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn item_updates_on_a_full_disk_are_refused_whole_or_stored() {
    let full = FullDisk::new().await;
    let ids: Vec<i64> = (1..=16).collect();
    let mut before = Vec::new();
    for &id in &ids {
        before.push(
            full.db
                .items()
                .get(id)
                .await
                .unwrap()
                .expect("an acknowledged item"),
        );
    }

    // About 900 KB each (under MAX_DATA_BYTES): 16 of them are over 14 MB, on a 4 MiB disk.
    let patch = |id: i64| ItemPatch {
        data: Some(json!({ "grown": id, "padding": "y".repeat(900_000) })),
        ..Default::default()
    };
    let updates = ids.iter().map(|&id| {
        let items = full.db.items();
        let patch = patch(id);
        async move { (id, items.update(id, &patch).await) }
    });
    let answers = futures_util::future::join_all(updates).await;

    let mut refused = 0;
    for ((id, answer), old) in answers.into_iter().zip(&before) {
        let now = full.db.items().get(id).await.unwrap().unwrap();
        match answer {
            Ok(changed) => {
                assert!(changed, "item {id}: a real change returned Ok(false)");
                assert_eq!(
                    Some(&now.data),
                    patch(id).data.as_ref(),
                    "item {id}: Ok, not stored"
                );
            }
            Err(err) => {
                assert!(matches!(err, Error::DiskFull), "item {id}: {err:?}");
                assert_eq!(&now, old, "item {id} was refused and changed");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "16 updates of 900 KB fit on a full 4 MiB disk");

    // The file is intact and a fresh connection sees the same rows.
    full.db.integrity_check().await.unwrap();
    assert_eq!(integrity_check(&full.path), "ok");
    assert_eq!(item_names(&full.path), full.acknowledged);
}

/// Item creates on a full disk, sixteen at once so that they share group commits and the
/// direct path on the caller's thread: each one is refused with `DiskFull` and stores nothing,
/// or returns the id of the row holding its own name and data. Together they ask for far more
/// space than the tmpfs has, so some must be refused.
#[tokio::test]
#[ignore = "needs root: mounts a tmpfs to fill a real disk; run with -- --include-ignored"]
async fn concurrent_item_creates_on_a_full_disk_are_refused_or_stored_under_their_id() {
    let full = FullDisk::new().await;
    // About 900 KB each (under MAX_DATA_BYTES): 16 of them are over 14 MB, on a 4 MiB disk.
    let new = |n: usize| NewItem {
        name: format!("grown-{n:02}"),
        data: json!({ "grown": n, "padding": "z".repeat(900_000) }),
        status: ItemStatus::Active,
    };
    let creates = (0..16).map(|n| {
        let items = full.db.items();
        let new = new(n);
        async move { (n, items.create(&new).await) }
    });
    let answers = futures_util::future::join_all(creates).await;

    let mut stored = full.acknowledged.clone();
    let mut refused = 0;
    for (n, answer) in answers {
        match answer {
            Ok(id) => {
                let row = full.db.items().get(id).await.unwrap();
                let row = row.unwrap_or_else(|| panic!("create {n}: Ok({id}), not stored"));
                assert_eq!(
                    (row.name, row.data),
                    (new(n).name, new(n).data),
                    "create {n}"
                );
                stored.push(new(n).name);
            }
            Err(err) => {
                assert!(matches!(err, Error::DiskFull), "create {n}: {err:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "16 creates of 900 KB fit on a full 4 MiB disk");

    // The file is intact and holds exactly the acknowledged rows.
    full.db.integrity_check().await.unwrap();
    assert_eq!(integrity_check(&full.path), "ok");
    stored.sort();
    let mut names = item_names(&full.path);
    names.sort();
    assert_eq!(names, stored);
}
