//! The baseline: the same work through rusqlite, calling the same bundled SQLite in-process, on
//! the same schema (the `migrations/*.up.sql` files read from disk at run time) with the same
//! pragmas (WAL, `synchronous=NORMAL`, `foreign_keys=ON`, a 5 s busy timeout) and the same
//! rules: a get decodes the row (JSON data, status, timestamps) into an [`Item`]; a transfer
//! checks both accounts and the balance and writes the ledger row in one `BEGIN IMMEDIATE`
//! transaction (the ledger trigger moves the money, as in sqlrepo); a dashboard reads all three
//! parts in one read transaction. Also the auditor every side's `mixed` run is checked with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde_json::Value;
use sqlrepo::{Dashboard, Item, ItemStatus, NewItem, Order, OrderStats, Transfer, User};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::data::{Inputs, MixedOp};
use crate::mixed::TaskTally;
use crate::rss::RssProbe;
use crate::timing::{Measured, Start};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SELECT_ITEM: &str =
    "SELECT id, name, data, status, created_at, updated_at FROM items WHERE id = ?1";

/// One connection on its own database file.
pub struct RusqliteSide {
    conn: Connection,
    path: PathBuf,
}

/// Opens a connection with the pragmas every side uses.
pub fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

/// Applies every `migrations/*.up.sql`, in file-name order, as one batch each.
fn apply_migrations(conn: &Connection) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.to_string_lossy().ends_with(".up.sql"));
    files.sort();
    ensure!(!files.is_empty(), "no *.up.sql in {}", dir.display());
    for file in files {
        let sql = std::fs::read_to_string(&file)?;
        conn.execute_batch(&sql)
            .with_context(|| format!("applying {}", file.display()))?;
    }
    Ok(())
}

fn timestamp(text: &str) -> anyhow::Result<OffsetDateTime> {
    Ok(OffsetDateTime::parse(text, &Rfc3339)?)
}

/// The row of `SELECT_ITEM` as the same [`Item`] sqlrepo returns.
fn decode_item(row: &Row<'_>) -> anyhow::Result<Item> {
    let data: String = row.get(2)?;
    let status: String = row.get(3)?;
    let created_at: String = row.get(4)?;
    let updated_at: String = row.get(5)?;
    Ok(Item {
        id: row.get(0)?,
        name: row.get(1)?,
        data: serde_json::from_str(&data)?,
        status: ItemStatus::from_str(&status)?,
        created_at: timestamp(&created_at)?,
        updated_at: timestamp(&updated_at)?,
    })
}

pub fn get_item(conn: &Connection, id: i64) -> anyhow::Result<Option<Item>> {
    let mut statement = conn.prepare_cached(SELECT_ITEM)?;
    let mut rows = statement.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(decode_item(row)?)),
        None => Ok(None),
    }
}

/// One transfer step inside an open `BEGIN IMMEDIATE` transaction: both accounts must exist and
/// the source must cover the amount; the ledger row's trigger then moves the money.
fn apply_transfer(conn: &Connection, t: &Transfer) -> anyhow::Result<()> {
    let mut balance = conn.prepare_cached("SELECT balance FROM accounts WHERE id = ?1")?;
    let Some(from_balance): Option<i64> =
        balance.query_row([t.from], |row| row.get(0)).optional()?
    else {
        bail!("account {} not found", t.from);
    };
    if !conn
        .prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?
        .exists([t.to])?
    {
        bail!("account {} not found", t.to);
    }
    if from_balance < t.amount_cents {
        bail!(
            "account {} holds {from_balance}, needs {}",
            t.from,
            t.amount_cents
        );
    }
    conn.prepare_cached(
        "INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![t.from, t.to, t.amount_cents, t.idempotency_key])?;
    Ok(())
}

pub fn transfer(conn: &mut Connection, t: &Transfer) -> anyhow::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    apply_transfer(&tx, t)?;
    tx.commit()?;
    Ok(())
}

pub fn update_item_data(conn: &Connection, id: i64, data: &Value) -> anyhow::Result<bool> {
    let data = serde_json::to_string(data)?;
    let changed = conn
        .prepare_cached(
            "UPDATE items
             SET data = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ?1 AND data IS NOT ?2",
        )?
        .execute(params![id, data])?;
    Ok(changed > 0)
}

pub fn is_busy(err: &anyhow::Error) -> bool {
    err.downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| code == rusqlite::ErrorCode::DatabaseBusy)
}

impl RusqliteSide {
    /// A fresh, migrated database at `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let conn = connect(path)?;
        apply_migrations(&conn)?;
        Ok(RusqliteSide {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// A prepared `INSERT` per row inside one `BEGIN IMMEDIATE` transaction.
    pub fn insert_many(&mut self, items: &[NewItem]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO items (name, data, status) VALUES (?1, ?2, ?3)")?;
            for item in items {
                let data = serde_json::to_string(&item.data)?;
                insert.execute(params![item.name, data, item.status.as_str()])?;
            }
        }
        tx.commit()?;
        Ok(Measured::since(started, items.len()))
    }

    /// A prepared `UPDATE` per id inside one transaction, counting rows really changed.
    pub fn set_status_many(&mut self, ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut changed = 0;
        {
            let mut update = tx.prepare_cached(
                "UPDATE items
                 SET status = ?1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?2 AND status <> ?1",
            )?;
            for id in ids {
                changed += update.execute(params![ItemStatus::Inactive.as_str(), id])?;
            }
        }
        tx.commit()?;
        let measured = Measured::since(started, ids.len());
        ensure!(
            changed == ids.len(),
            "rusqlite changed {changed} of {} rows",
            ids.len()
        );
        Ok(measured)
    }

    pub fn get(&mut self, ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for &id in ids {
            ensure!(get_item(&self.conn, id)?.is_some(), "item {id} missing");
        }
        Ok(Measured::since(started, ids.len()))
    }

    /// The rusqlite way to fetch a set of ids: a cached point get per id (in-process, each one
    /// is cheap). Counts rows.
    pub fn get_many(&mut self, batches: &[Vec<i64>]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut rows = 0;
        for batch in batches {
            let mut items = Vec::with_capacity(batch.len());
            for &id in batch {
                items.extend(get_item(&self.conn, id)?);
            }
            ensure!(items.len() == batch.len(), "rusqlite get_many lost rows");
            rows += items.len();
        }
        Ok(Measured::since(started, rows))
    }

    /// Untimed: inserts more items (for the stream).
    pub fn top_up_items(&mut self, items: &[NewItem]) -> anyhow::Result<()> {
        self.insert_many(items).map(|_| ())
    }

    /// Every item in id order, decoded one by one; returns the time and the RSS growth in MiB.
    pub fn stream(&mut self, expected_rows: usize) -> anyhow::Result<(Measured, f64)> {
        let mut probe = RssProbe::start();
        let started = Start::now();
        let mut statement = self.conn.prepare(
            "SELECT id, name, data, status, created_at, updated_at FROM items ORDER BY id",
        )?;
        let mut rows = statement.query([])?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            let item = decode_item(row)?;
            std::hint::black_box(&item);
            count += 1;
            if count % 8192 == 0 {
                probe.sample();
            }
        }
        let measured = Measured::since(started, count);
        ensure!(
            count == expected_rows,
            "rusqlite streamed {count} of {expected_rows} rows"
        );
        Ok((measured, probe.growth_mib()))
    }

    /// Untimed: users, orders and accounts for the transfer and dashboard workloads.
    pub fn seed_people(&mut self, inputs: &Inputs) -> anyhow::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut user = tx.prepare("INSERT INTO users (email, name) VALUES (?1, ?2)")?;
            for new in &inputs.users {
                user.execute(params![new.email, new.name])?;
            }
            let mut order = tx.prepare("INSERT INTO orders (user_id, total) VALUES (?1, ?2)")?;
            for new in &inputs.orders {
                order.execute(params![new.user_id, new.total_cents])?;
            }
            let mut account = tx.prepare("INSERT INTO accounts (balance) VALUES (?1)")?;
            for _ in 0..inputs.sizes.accounts {
                account.execute([inputs.sizes.opening_balance_cents])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A prepared `INSERT` per item in autocommit mode: each row its own committed write.
    pub fn create_each(&mut self, items: &[NewItem]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut insert = self
            .conn
            .prepare_cached("INSERT INTO items (name, data, status) VALUES (?1, ?2, ?3)")?;
        for item in items {
            let data = serde_json::to_string(&item.data)?;
            insert.execute(params![item.name, data, item.status.as_str()])?;
        }
        Ok(Measured::since(started, items.len()))
    }

    pub fn transfer(&mut self, transfers: &[Transfer]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for t in transfers {
            transfer(&mut self.conn, t)?;
        }
        Ok(Measured::since(started, transfers.len()))
    }

    /// Each batch in one `BEGIN IMMEDIATE` transaction, checked step by step. Counts steps.
    pub fn transfer_batch(&mut self, batches: &[Vec<Transfer>]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut steps = 0;
        for batch in batches {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for t in batch {
                apply_transfer(&tx, t)?;
            }
            tx.commit()?;
            steps += batch.len();
        }
        Ok(Measured::since(started, steps))
    }

    pub fn dashboard(&mut self, user_ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for &user_id in user_ids {
            let dashboard = self.read_dashboard(user_id)?;
            std::hint::black_box(&dashboard);
        }
        Ok(Measured::since(started, user_ids.len()))
    }

    /// The seed's three queries, in one read transaction so the parts agree (as sqlrepo's one
    /// statement does).
    fn read_dashboard(&mut self, user_id: i64) -> anyhow::Result<Dashboard> {
        let tx = self.conn.transaction()?;
        let user = tx
            .prepare_cached("SELECT id, email, name, created_at FROM users WHERE id = ?1")?
            .query_row([user_id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        let Some((id, email, name, created_at)) = user else {
            bail!("user {user_id} not found");
        };
        let mut recent_orders = Vec::new();
        {
            let mut recent = tx.prepare_cached(
                "SELECT id, total, created_at FROM orders
                 WHERE user_id = ?1
                 ORDER BY created_at DESC, id DESC
                 LIMIT 10",
            )?;
            let mut rows = recent.query([user_id])?;
            while let Some(row) = rows.next()? {
                let created_at: String = row.get(2)?;
                recent_orders.push(Order {
                    id: row.get(0)?,
                    user_id,
                    total_cents: row.get(1)?,
                    created_at: timestamp(&created_at)?,
                });
            }
        }
        let (count, total_cents) = tx
            .prepare_cached(
                "SELECT count(*), coalesce(sum(total), 0) FROM orders WHERE user_id = ?1",
            )?
            .query_row([user_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        tx.commit()?;
        Ok(Dashboard {
            user: User {
                id,
                email,
                name,
                created_at: timestamp(&created_at)?,
            },
            recent_orders,
            stats: OrderStats { count, total_cents },
        })
    }

    /// One OS thread per task, each with its own connection (the way rusqlite is shared).
    pub fn mixed(&self, plan: &[Vec<MixedOp>]) -> anyhow::Result<(Measured, TaskTally)> {
        let path = self.path.as_path();
        let started = Start::now();
        let tallies = std::thread::scope(|scope| {
            let handles: Vec<_> = plan
                .iter()
                .map(|ops| scope.spawn(move || mixed_task(path, ops)))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("a mixed task panicked"))
                .collect::<anyhow::Result<Vec<TaskTally>>>()
        })?;
        let mut total = TaskTally::default();
        for tally in tallies {
            total += tally;
        }
        Ok((Measured::since(started, total.ops), total))
    }
}

fn mixed_task(path: &Path, ops: &[MixedOp]) -> anyhow::Result<TaskTally> {
    let mut conn = connect(path)?;
    let mut tally = TaskTally::default();
    for op in ops {
        let outcome = match op {
            MixedOp::Get(id) => get_item(&conn, *id).map(|_| ()),
            MixedOp::Update(id, data) => update_item_data(&conn, *id, data).map(|_| ()),
            MixedOp::Transfer(t) => transfer(&mut conn, t).map(|()| tally.landed_transfers += 1),
        };
        match outcome {
            Ok(()) => {}
            Err(err) if is_busy(&err) => tally.busy += 1,
            Err(_) => tally.other_errors += 1,
        }
        tally.ops += 1;
    }
    Ok(tally)
}

/// The bank as an auditor sees it.
#[derive(Debug, Clone, Copy)]
pub struct Audit {
    pub total_balance_cents: i64,
    pub ledger_rows: i64,
}

/// Reads the bank total and the ledger size of any side's database, on a connection of its own.
pub fn audit(path: &Path) -> anyhow::Result<Audit> {
    let conn = connect(path)?;
    let (total_balance_cents, ledger_rows) = conn.query_row(
        "SELECT (SELECT coalesce(sum(balance), 0) FROM accounts), (SELECT count(*) FROM transfers)",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(Audit {
        total_balance_cents,
        ledger_rows,
    })
}

/// The stored `data` of these items, parsed.
pub fn item_data(path: &Path, ids: &[i64]) -> anyhow::Result<HashMap<i64, Value>> {
    let conn = connect(path)?;
    let mut statement = conn.prepare("SELECT data FROM items WHERE id = ?1")?;
    let mut stored = HashMap::with_capacity(ids.len());
    for &id in ids {
        let data: Option<String> = statement.query_row([id], |row| row.get(0)).optional()?;
        if let Some(data) = data {
            stored.insert(id, serde_json::from_str(&data)?);
        }
    }
    Ok(stored)
}
