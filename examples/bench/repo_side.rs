//! The side under test: the same work through sqlrepo's public API, as a service would call it
//! (one `Db` opened on a file with its defaults, one call per operation or per batch).

use std::path::{Path, PathBuf};
use std::pin::pin;

use anyhow::ensure;
use futures_util::TryStreamExt;
use sqlrepo::{Db, Error, ItemPatch, ItemStatus, NewAccount, NewItem, Transfer};

use crate::data::{Inputs, MixedOp};
use crate::mixed::TaskTally;
use crate::rss::RssProbe;
use crate::timing::{Measured, Start};

/// The most rows one sqlrepo batch call takes (`sqlrepo::limits::MAX_BATCH_ROWS`).
const BATCH_ROWS: usize = sqlrepo::limits::MAX_BATCH_ROWS;

pub struct RepoSide {
    db: Db,
    path: PathBuf,
}

impl RepoSide {
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(RepoSide {
            db: Db::open(path).await?,
            path: path.to_path_buf(),
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One `insert_many` call per 100,000 items (a full run makes exactly one).
    pub async fn insert_many(&self, items: &[NewItem]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut inserted = 0;
        for chunk in items.chunks(BATCH_ROWS) {
            inserted += self.db.items().insert_many(chunk).await?;
        }
        let measured = Measured::since(started, items.len());
        ensure!(
            inserted as usize == items.len(),
            "sqlrepo inserted {inserted} rows"
        );
        Ok(measured)
    }

    pub async fn set_status_many(&self, ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        let mut changed = 0;
        for chunk in ids.chunks(BATCH_ROWS) {
            changed += self
                .db
                .items()
                .set_status_many(chunk, ItemStatus::Inactive)
                .await?;
        }
        let measured = Measured::since(started, ids.len());
        ensure!(
            changed as usize == ids.len(),
            "sqlrepo changed {changed} rows"
        );
        Ok(measured)
    }

    pub async fn get(&self, ids: &[i64]) -> anyhow::Result<Measured> {
        let items = self.db.items();
        let started = Start::now();
        for &id in ids {
            ensure!(items.get(id).await?.is_some(), "item {id} missing");
        }
        Ok(Measured::since(started, ids.len()))
    }

    /// One `get_many` call per batch; counts rows.
    pub async fn get_many(&self, batches: &[Vec<i64>]) -> anyhow::Result<Measured> {
        let items = self.db.items();
        let started = Start::now();
        let mut rows = 0;
        for batch in batches {
            let found = items.get_many(batch).await?;
            ensure!(found.len() == batch.len(), "sqlrepo get_many lost rows");
            rows += found.len();
        }
        Ok(Measured::since(started, rows))
    }

    /// `ItemRepo::stream` over the whole table; returns the time and the RSS growth in MiB.
    pub async fn stream(&self, expected_rows: usize) -> anyhow::Result<(Measured, f64)> {
        let mut probe = RssProbe::start();
        let started = Start::now();
        let mut stream = pin!(self.db.items().stream());
        let mut count = 0;
        while let Some(item) = stream.try_next().await? {
            std::hint::black_box(&item);
            count += 1;
            if count % 8192 == 0 {
                probe.sample();
            }
        }
        let measured = Measured::since(started, count);
        ensure!(
            count == expected_rows,
            "sqlrepo streamed {count} of {expected_rows} rows"
        );
        Ok((measured, probe.growth_mib()))
    }

    /// Untimed: users, orders and accounts for the transfer and dashboard workloads.
    pub async fn seed_people(&self, inputs: &Inputs) -> anyhow::Result<()> {
        seed_people(&self.db, inputs).await
    }

    /// One `ItemRepo::create` per item, each its own committed write.
    pub async fn create_each(&self, items: &[NewItem]) -> anyhow::Result<Measured> {
        let repo = self.db.items();
        let started = Start::now();
        for item in items {
            repo.create(item).await?;
        }
        Ok(Measured::since(started, items.len()))
    }

    pub async fn transfer(&self, transfers: &[Transfer]) -> anyhow::Result<Measured> {
        let accounts = self.db.accounts();
        let started = Start::now();
        for t in transfers {
            accounts.transfer(t).await?;
        }
        Ok(Measured::since(started, transfers.len()))
    }

    /// One `transfer_batch` call per batch; counts steps.
    pub async fn transfer_batch(&self, batches: &[Vec<Transfer>]) -> anyhow::Result<Measured> {
        let accounts = self.db.accounts();
        let started = Start::now();
        let mut steps = 0;
        for batch in batches {
            accounts.transfer_batch(batch).await?;
            steps += batch.len();
        }
        Ok(Measured::since(started, steps))
    }

    pub async fn dashboard(&self, user_ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for &user_id in user_ids {
            let dashboard = self.db.dashboard(user_id).await?;
            std::hint::black_box(&dashboard);
        }
        Ok(Measured::since(started, user_ids.len()))
    }

    /// The seed's dashboard shape, measured against `Db::dashboard`'s one statement: the user,
    /// the recent orders and the stats as three queries run concurrently (three readers).
    pub async fn dashboard_three_queries(&self, user_ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for &user_id in user_ids {
            let (user, recent, stats) = tokio::join!(
                self.db.users().get(user_id),
                self.db.orders().recent_for_user(user_id, 10),
                self.db.orders().stats_for_user(user_id)
            );
            std::hint::black_box((user?, recent?, stats?));
        }
        Ok(Measured::since(started, user_ids.len()))
    }

    /// One tokio task per plan, all on this `Db`.
    pub async fn mixed(&self, plan: &[Vec<MixedOp>]) -> anyhow::Result<(Measured, TaskTally)> {
        let started = Start::now();
        let tasks: Vec<_> = plan
            .iter()
            .map(|ops| tokio::spawn(mixed_task(self.db.clone(), ops.clone())))
            .collect();
        let mut total = TaskTally::default();
        for task in tasks {
            total += task.await?;
        }
        Ok((Measured::since(started, total.ops), total))
    }
}

/// Seeds any database through sqlrepo's batch calls (the naive side uses it too, on its pool,
/// since seeding is not what is measured).
pub async fn seed_people(db: &Db, inputs: &Inputs) -> anyhow::Result<()> {
    for chunk in inputs.users.chunks(BATCH_ROWS) {
        db.users().insert_many(chunk).await?;
    }
    for chunk in inputs.orders.chunks(BATCH_ROWS) {
        db.orders().insert_many(chunk).await?;
    }
    let account = NewAccount {
        user_id: None,
        balance_cents: inputs.sizes.opening_balance_cents,
    };
    for _ in 0..inputs.sizes.accounts {
        db.accounts().open(&account).await?;
    }
    Ok(())
}

async fn mixed_task(db: Db, ops: Vec<MixedOp>) -> TaskTally {
    let mut tally = TaskTally::default();
    for op in &ops {
        let outcome = match op {
            MixedOp::Get(id) => db.items().get(*id).await.map(|_| ()),
            MixedOp::Update(id, data) => {
                let patch = ItemPatch {
                    data: Some(data.clone()),
                    ..ItemPatch::default()
                };
                db.items().update(*id, &patch).await.map(|_| ())
            }
            MixedOp::Transfer(t) => db
                .accounts()
                .transfer(t)
                .await
                .map(|()| tally.landed_transfers += 1),
        };
        match outcome {
            Ok(()) => {}
            Err(Error::Busy) => tally.busy += 1,
            Err(_) => tally.other_errors += 1,
        }
        tally.ops += 1;
    }
    tally
}
