//! The naive sqlx way a user writes by hand: a `SqlitePool` (same pragmas as the other sides)
//! and a checked statement per row, each call acquiring a connection from the pool; a transfer
//! is the seed's read-check-write in a `BEGIN IMMEDIATE` transaction; a dashboard runs the
//! seed's three queries concurrently. Every statement is a checked `sqlx` macro.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure};
use futures_util::TryStreamExt;
use serde_json::Value;
use sqlrepo::{Dashboard, Db, Item, ItemStatus, NewItem, Order, OrderStats, Transfer, User};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteExecutor, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use time::OffsetDateTime;

use crate::data::{Inputs, MixedOp};
use crate::mixed::TaskTally;
use crate::rss::RssProbe;
use crate::timing::{Measured, Start};

/// The pragmas every side uses, as sqlx options (the floor uses them too).
pub fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5))
}

/// The row of an item point get.
struct ItemRow {
    id: i64,
    name: String,
    data: Value,
    status: ItemStatus,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl From<ItemRow> for Item {
    fn from(row: ItemRow) -> Self {
        Item {
            id: row.id,
            name: row.name,
            data: row.data,
            status: row.status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The point get, decoded into sqlrepo's [`Item`]: the naive side runs it through the pool, the
/// floor on one held connection.
pub async fn select_item<'e>(
    executor: impl SqliteExecutor<'e>,
    id: i64,
) -> sqlx::Result<Option<Item>> {
    let row = sqlx::query_as!(
        ItemRow,
        r#"
        SELECT id AS "id!: i64",
               name,
               data AS "data: Value",
               status AS "status: ItemStatus",
               created_at AS "created_at: OffsetDateTime",
               updated_at AS "updated_at: OffsetDateTime"
        FROM items
        WHERE id = ?1
        "#,
        id,
    )
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Item::from))
}

pub struct NaiveSide {
    pool: SqlitePool,
}

impl NaiveSide {
    /// A fresh database at `path`, migrated with `sqlx::migrate!` as a sqlx user would.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let pool = SqlitePoolOptions::new()
            .connect_with(connect_options(path))
            .await?;
        sqlx::migrate!().run(&pool).await?;
        Ok(NaiveSide { pool })
    }

    /// An `INSERT` per row, each on a connection from the pool, no transaction.
    pub async fn insert_many(&self, items: &[NewItem]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for item in items {
            let data = serde_json::to_string(&item.data)?;
            sqlx::query!(
                "INSERT INTO items (name, data, status) VALUES (?1, ?2, ?3)",
                item.name,
                data,
                item.status,
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(Measured::since(started, items.len()))
    }

    /// Untimed: more items, through sqlrepo's batch call on this pool.
    pub async fn top_up_items(&self, items: &[NewItem]) -> anyhow::Result<()> {
        let db = Db::from_pool(self.pool.clone());
        for chunk in items.chunks(sqlrepo::limits::MAX_BATCH_ROWS) {
            db.items().insert_many(chunk).await?;
        }
        Ok(())
    }

    pub async fn set_status_many(&self, ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut changed = 0;
        for id in ids {
            changed += sqlx::query!(
                r#"
                UPDATE items
                SET status = ?1,
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                WHERE id = ?2
                  AND status <> ?1
                "#,
                ItemStatus::Inactive,
                id,
            )
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        let measured = Measured::since(started, ids.len());
        ensure!(
            changed as usize == ids.len(),
            "naive changed {changed} rows"
        );
        Ok(measured)
    }

    pub async fn get(&self, ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for &id in ids {
            ensure!(
                select_item(&self.pool, id).await?.is_some(),
                "item {id} missing"
            );
        }
        Ok(Measured::since(started, ids.len()))
    }

    /// A point get per id (what a hand-written loop does), up to `max_rows` rows in all.
    pub async fn get_many(
        &self,
        batches: &[Vec<i64>],
        max_rows: usize,
    ) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut rows = 0;
        'batches: for batch in batches {
            for &id in batch {
                if rows == max_rows {
                    break 'batches;
                }
                ensure!(
                    select_item(&self.pool, id).await?.is_some(),
                    "item {id} missing"
                );
                rows += 1;
            }
        }
        Ok(Measured::since(started, rows))
    }

    /// `fetch()` over the first `rows` items in id order; returns the time and RSS growth.
    pub async fn stream(&self, rows: usize) -> anyhow::Result<(Measured, f64)> {
        let limit = rows as i64;
        let mut probe = RssProbe::start();
        let started = Start::now();
        let mut stream = sqlx::query_as!(
            ItemRow,
            r#"
            SELECT id AS "id!: i64",
                   name,
                   data AS "data: Value",
                   status AS "status: ItemStatus",
                   created_at AS "created_at: OffsetDateTime",
                   updated_at AS "updated_at: OffsetDateTime"
            FROM items
            ORDER BY id
            LIMIT ?1
            "#,
            limit,
        )
        .fetch(&self.pool);
        let mut count = 0;
        while let Some(row) = stream.try_next().await? {
            std::hint::black_box(Item::from(row));
            count += 1;
            if count % 8192 == 0 {
                probe.sample();
            }
        }
        let measured = Measured::since(started, count);
        ensure!(count == rows, "naive streamed {count} of {rows} rows");
        Ok((measured, probe.growth_mib()))
    }

    /// Untimed: users, orders and accounts, through sqlrepo's batch calls on this pool.
    pub async fn seed_people(&self, inputs: &Inputs) -> anyhow::Result<()> {
        crate::repo_side::seed_people(&Db::from_pool(self.pool.clone()), inputs).await
    }

    pub async fn transfer(&self, transfers: &[Transfer]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for t in transfers {
            transfer(&self.pool, std::slice::from_ref(t)).await?;
        }
        Ok(Measured::since(started, transfers.len()))
    }

    /// Each batch as one transaction, three statements per step; counts steps.
    pub async fn transfer_batch(&self, batches: &[Vec<Transfer>]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut steps = 0;
        for batch in batches {
            transfer(&self.pool, batch).await?;
            steps += batch.len();
        }
        Ok(Measured::since(started, steps))
    }

    pub async fn dashboard(&self, user_ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for &user_id in user_ids {
            let dashboard = dashboard(&self.pool, user_id).await?;
            std::hint::black_box(&dashboard);
        }
        Ok(Measured::since(started, user_ids.len()))
    }

    /// One tokio task per plan, all on this pool.
    pub async fn mixed(&self, plan: &[Vec<MixedOp>]) -> anyhow::Result<(Measured, TaskTally)> {
        let started = Start::now();
        let tasks: Vec<_> = plan
            .iter()
            .map(|ops| tokio::spawn(mixed_task(self.pool.clone(), ops.clone())))
            .collect();
        let mut total = TaskTally::default();
        for task in tasks {
            total += task.await?;
        }
        Ok((Measured::since(started, total.ops), total))
    }
}

/// The seed's transfer, by hand: in one `BEGIN IMMEDIATE` transaction, per step read the source
/// balance, check the target exists, check the balance, write the ledger row (its trigger moves
/// the money). Any failure drops the transaction, which rolls it back.
async fn transfer(pool: &SqlitePool, steps: &[Transfer]) -> anyhow::Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for t in steps {
        let Some(from_balance) =
            sqlx::query_scalar!("SELECT balance FROM accounts WHERE id = ?1", t.from)
                .fetch_optional(&mut *tx)
                .await?
        else {
            bail!("account {} not found", t.from);
        };
        let to_exists = sqlx::query_scalar!(
            r#"SELECT id AS "id!: i64" FROM accounts WHERE id = ?1"#,
            t.to
        )
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !to_exists {
            bail!("account {} not found", t.to);
        }
        if from_balance < t.amount_cents {
            bail!(
                "account {} holds {from_balance}, needs {}",
                t.from,
                t.amount_cents
            );
        }
        sqlx::query!(
            r#"
            INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
            VALUES (?1, ?2, ?3, ?4)
            "#,
            t.from,
            t.to,
            t.amount_cents,
            t.idempotency_key,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The seed's dashboard: three queries at once, each on its own pooled connection.
async fn dashboard(pool: &SqlitePool, user_id: i64) -> anyhow::Result<Dashboard> {
    let user = sqlx::query_as!(
        User,
        r#"
        SELECT id AS "id!: i64",
               email,
               name,
               created_at AS "created_at: OffsetDateTime"
        FROM users
        WHERE id = ?1
        "#,
        user_id,
    )
    .fetch_optional(pool);
    let recent = sqlx::query_as!(
        Order,
        r#"
        SELECT id AS "id!: i64",
               user_id,
               total AS total_cents,
               created_at AS "created_at: OffsetDateTime"
        FROM orders
        WHERE user_id = ?1
        ORDER BY created_at DESC, id DESC
        LIMIT 10
        "#,
        user_id,
    )
    .fetch_all(pool);
    let stats = sqlx::query_as!(
        OrderStats,
        r#"
        SELECT count(*) AS "count!: i64",
               coalesce(sum(total), 0) AS "total_cents!: i64"
        FROM orders
        WHERE user_id = ?1
        "#,
        user_id,
    )
    .fetch_one(pool);
    let (user, recent_orders, stats) = tokio::try_join!(user, recent, stats)?;
    let Some(user) = user else {
        bail!("user {user_id} not found");
    };
    Ok(Dashboard {
        user,
        recent_orders,
        stats,
    })
}

fn is_busy(err: &anyhow::Error) -> bool {
    let Some(sqlx::Error::Database(db_err)) = err.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    // SQLite reports extended codes; the primary code is the low byte (SQLITE_BUSY = 5).
    db_err
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 5)
}

async fn mixed_task(pool: SqlitePool, ops: Vec<MixedOp>) -> TaskTally {
    let mut tally = TaskTally::default();
    for op in &ops {
        let outcome: anyhow::Result<()> = match op {
            MixedOp::Get(id) => select_item(&pool, *id)
                .await
                .map(|_| ())
                .map_err(Into::into),
            MixedOp::Update(id, data) => update_item_data(&pool, *id, data).await,
            MixedOp::Transfer(t) => transfer(&pool, std::slice::from_ref(t))
                .await
                .map(|()| tally.landed_transfers += 1),
        };
        match outcome {
            Ok(()) => {}
            Err(err) if is_busy(&err) => tally.busy += 1,
            Err(_) => tally.other_errors += 1,
        }
        tally.ops += 1;
    }
    tally
}

async fn update_item_data(pool: &SqlitePool, id: i64, data: &Value) -> anyhow::Result<()> {
    let data = serde_json::to_string(data)?;
    sqlx::query!(
        r#"
        UPDATE items
        SET data = ?2,
            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        WHERE id = ?1
          AND data IS NOT ?2
        "#,
        id,
        data,
    )
    .execute(pool)
    .await?;
    Ok(())
}
