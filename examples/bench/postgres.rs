//! The PostgreSQL rows, when the bench is built with the `postgres` feature and
//! `SQLREPO_PG_URL` names a server: sqlrepo on PostgreSQL against the floor of each operation
//! there, on a fresh database of its own on that server (created here, dropped at the end).
//!
//! - point get, create, transfer, dashboard: sqlrepo (`Db::connect`) against raw sqlx on one
//!   held `PgConnection`, each operation one checked statement and one round trip
//!   (`sqlrepo_postgres::floor`);
//! - tx of 5: a `Tx` of five transfers, committed, against `BEGIN`, the same five checked
//!   statements and `COMMIT` on the held connection (what a `Tx`'s per-call savepoints cost);
//! - insert_many: one `insert_many` call per round against `COPY ... FROM STDIN` of the same
//!   rows, the physical limit for bulk loads;
//! - with `SQLREPO_PG_REPLICA_URL` (a streaming replica of that server): point gets through a
//!   `Db::connect_replicated` against the same gets through the primary-only `Db` (what
//!   routing a read costs), and a write followed by a read of it, both ways (what reading
//!   one's own writes costs), each read checked to see its write; and point gets while the
//!   same `Db` writes every 2 ms, through the replicated `Db` and the primary-only one, with
//!   the share of those reads the replica served (its own count of scans of `items`) at
//!   one write per 2 ms and per 20 ms in the notes ("replica share under writes").
//!
//! Each pair takes turns in rounds, as the SQLite rows do, so machine noise hits both alike.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;
use sqlrepo::{Db, ItemPatch, NewItem, Transfer};
use sqlrepo_postgres::floor;
use sqlx::migrate::MigrateDatabase;
use sqlx::{Connection, PgConnection, Postgres};
use tokio::runtime::Runtime;

use crate::data::{Inputs, item_range};
use crate::repo_side::seed_people;
use crate::report::{Row, Target};
use crate::timing::{Measured, progress, report_side};

/// The servers to run on, from the environment; `None` when `SQLREPO_PG_URL` is not set.
pub struct Servers {
    /// The primary, any database on it (the bench makes its own beside it).
    pub primary: String,
    /// A streaming replica of the primary.
    pub replica: Option<String>,
}

impl Servers {
    pub fn from_env() -> Option<Self> {
        let primary = std::env::var("SQLREPO_PG_URL").ok()?;
        let replica = std::env::var("SQLREPO_PG_REPLICA_URL").ok();
        Some(Servers { primary, replica })
    }
}

/// Runs the PostgreSQL rows; returns them and their notes.
pub fn run(
    runtime: &Runtime,
    inputs: &Inputs,
    servers: &Servers,
) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    runtime.block_on(async {
        let name = format!("sqlrepo_bench_{}", std::process::id());
        let url = with_database(&servers.primary, &name)?;
        if Postgres::database_exists(&url).await? {
            Postgres::force_drop_database(&url).await?;
        }
        Postgres::create_database(&url)
            .await
            .with_context(|| format!("creating database {name} on {}", servers.primary))?;
        let outcome = match PgBench::open(inputs, &url, servers).await {
            Ok(mut bench) => {
                let outcome = bench.run().await;
                bench.close().await;
                outcome.map(|()| (bench.rows, bench.notes))
            }
            Err(err) => Err(err),
        };
        // The database goes whatever happened; a failed drop is worth a line, not the run.
        if let Err(err) = Postgres::force_drop_database(&url).await {
            progress(format_args!("could not drop database {name}: {err}"));
        }
        outcome
    })
}

/// `url` with its database (the path) replaced by `database`; the query string stays.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|at| at + 3)
        .context("SQLREPO_PG_URL is not a URL (postgres://user@host:port/database)")?;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// The part of `0..n` that round `round` of `rounds` covers.
fn slice(n: usize, rounds: usize, round: usize) -> Range<usize> {
    n * round / rounds..n * (round + 1) / rounds
}

struct PgBench<'a> {
    inputs: &'a Inputs,
    /// sqlrepo on the primary alone (`Db::connect`).
    db: Db,
    /// sqlrepo on the primary and the replica (`Db::connect_replicated`).
    replicated: Option<Db>,
    /// The replica's URL for the bench's database.
    replica_url: Option<String>,
    /// The primary's URL for the bench's database.
    url: String,
    /// Raw sqlx: one connection to the primary, held for the whole run.
    floor: PgConnection,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl<'a> PgBench<'a> {
    async fn open(inputs: &'a Inputs, url: &str, servers: &Servers) -> anyhow::Result<Self> {
        let db = Db::connect(url).await?;
        let floor = PgConnection::connect(url).await?;
        let replica_url = match &servers.replica {
            Some(replica) => Some(with_database(replica, &url_database(url))?),
            None => None,
        };
        let replicated = match &replica_url {
            Some(replica_url) => {
                wait_for_database(replica_url).await?;
                Some(Db::connect_replicated(url, &[replica_url.as_str()]).await?)
            }
            None => None,
        };
        let version = floor.server_version_num().map_or_else(
            || "unknown".to_owned(),
            |v| format!("{}.{}", v / 10_000, v % 10_000),
        );
        progress(format_args!(
            "PostgreSQL {version}: a fresh database, migrated by Db::connect{}",
            if replicated.is_some() {
                ", and its streaming replica"
            } else {
                " (no SQLREPO_PG_REPLICA_URL: no replica rows)"
            }
        ));
        let notes = vec![format!(
            "PostgreSQL rows (pg ...): server {version} on {}, a fresh database; the floor column \
             is raw sqlx on one held PgConnection, one checked statement per operation \
             (sqlrepo_postgres::floor), except pg insert_many (COPY ... FROM STDIN of the same \
             rows) and pg get replicated / pg write+read replicated (the same calls through a \
             Db on the primary alone).",
            host_of(url)
        )];
        Ok(PgBench {
            inputs,
            db,
            replicated,
            replica_url,
            url: url.to_owned(),
            floor,
            rows: Vec::new(),
            notes,
        })
    }

    async fn close(&mut self) {
        self.db.close().await;
        if let Some(replicated) = &self.replicated {
            replicated.close().await;
        }
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        self.insert_many().await?;
        self.get().await?;
        self.create().await?;
        let sizes = &self.inputs.sizes;
        progress(format_args!(
            "pg: seeding {} users, {} orders, {} accounts (untimed)",
            sizes.users, sizes.orders, sizes.accounts
        ));
        seed_people(&self.db, self.inputs).await?;
        self.transfer().await?;
        self.tx_of_five().await?;
        self.dashboard().await?;
        if self.replicated.is_some() {
            self.replicated_get().await?;
            self.write_then_read().await?;
            self.replica_share_under_writes().await?;
        }
        Ok(())
    }

    /// Runs a workload of `n` operations in rounds, sqlrepo and the baseline taking turns (who
    /// goes first rotates); each closure does its side's share `range` of one round.
    async fn take_turns(
        &mut self,
        workload: &str,
        baseline: &str,
        n: usize,
        mut sqlrepo: impl AsyncFnMut(&mut Self, Range<usize>) -> anyhow::Result<Measured>,
        mut floor: impl AsyncFnMut(&mut Self, Range<usize>) -> anyhow::Result<Measured>,
    ) -> anyhow::Result<[Measured; 2]> {
        let rounds = self.inputs.sizes.rounds;
        let mut totals: [Measured; 2] = Default::default();
        for round in 0..rounds {
            let range = slice(n, rounds, round);
            for offset in 0..2 {
                let side = (round + offset) % 2;
                totals[side] += match side {
                    0 => sqlrepo(self, range.clone()).await?,
                    _ => floor(self, range.clone()).await?,
                };
            }
        }
        report_side(workload, "sqlrepo", &totals[0]);
        report_side(workload, baseline, &totals[1]);
        Ok(totals)
    }

    /// After a workload of transfers on both sides: both moved money inside one bank, so it
    /// still holds what it opened with; anything else is a bug in one side, not a timing.
    async fn ensure_money_conserved(&self, workload: &str) -> anyhow::Result<()> {
        let sizes = &self.inputs.sizes;
        let opened = sizes.accounts as i64 * sizes.opening_balance_cents;
        let total = self.db.accounts().total_balance().await?;
        ensure!(
            total == opened,
            "after {workload} the bank holds {total} cents, expected {opened}"
        );
        Ok(())
    }

    fn push(&mut self, name: &'static str, unit: &'static str, sides: [Measured; 2]) {
        let [repo, floor] = sides;
        self.rows.push(Row {
            floor: Some(floor),
            target: Target::Compared,
            on_postgres: true,
            ..Row::new(name, unit, repo)
        });
    }

    /// One `insert_many` per round against `COPY` of as many rows (named apart, so names stay
    /// unique); both leave ids `1..=2 * items` in the table.
    async fn insert_many(&mut self) -> anyhow::Result<()> {
        let inputs = self.inputs;
        let items = &inputs.items;
        let copied: Vec<NewItem> = items
            .iter()
            .map(|item| NewItem {
                name: format!("copied-{}", item.name),
                ..item.clone()
            })
            .collect();
        let sides = self
            .take_turns(
                "pg insert_many",
                "COPY",
                items.len(),
                async |bench, range| {
                    let started = Instant::now();
                    let inserted = bench.db.items().insert_many(&items[range.clone()]).await?;
                    let measured = Measured::since(started, range.len());
                    ensure!(
                        inserted as usize == range.len(),
                        "sqlrepo inserted {inserted}"
                    );
                    Ok(measured)
                },
                async |bench, range| {
                    let rows = copied[range.clone()]
                        .iter()
                        .map(|item| (item.name.as_str(), &item.data, item.status.as_str()));
                    let started = Instant::now();
                    let copied_rows = floor::copy_items(&mut bench.floor, rows).await?;
                    let measured = Measured::since(started, range.len());
                    ensure!(
                        copied_rows as usize == range.len(),
                        "COPY wrote {copied_rows}"
                    );
                    Ok(measured)
                },
            )
            .await?;
        self.push("pg insert_many", "row", sides);
        Ok(())
    }

    async fn get(&mut self) -> anyhow::Result<()> {
        let inputs = self.inputs;
        let ids = &inputs.get_ids;
        let sides = self
            .take_turns(
                "pg get",
                "floor",
                ids.len(),
                async |bench, range| repo_gets(&bench.db, &ids[range]).await,
                async |bench, range| {
                    let started = Instant::now();
                    for &id in &ids[range.clone()] {
                        let item =
                            sqlrepo_postgres::items::select_one(&mut bench.floor, id).await?;
                        ensure!(item.is_some(), "item {id} missing");
                    }
                    Ok(Measured::since(started, range.len()))
                },
            )
            .await?;
        self.push("pg get", "get", sides);
        Ok(())
    }

    /// Single-row creates, each its own commit.
    async fn create(&mut self) -> anyhow::Result<()> {
        let count = self.inputs.sizes.transfers;
        let named = |prefix: &str| -> Vec<NewItem> {
            item_range(0, count)
                .into_iter()
                .map(|item| NewItem {
                    name: format!("{prefix}-{}", item.name),
                    ..item
                })
                .collect()
        };
        let (repo_items, floor_items) = (named("created"), named("floor-created"));
        let sides = self
            .take_turns(
                "pg create",
                "floor",
                count,
                async |bench, range| {
                    let items = bench.db.items();
                    let started = Instant::now();
                    for item in &repo_items[range.clone()] {
                        items.create(item).await?;
                    }
                    Ok(Measured::since(started, range.len()))
                },
                async |bench, range| {
                    let started = Instant::now();
                    for item in &floor_items[range.clone()] {
                        floor::create_item(
                            &mut bench.floor,
                            &item.name,
                            &item.data,
                            item.status.as_str(),
                        )
                        .await?;
                    }
                    Ok(Measured::since(started, range.len()))
                },
            )
            .await?;
        self.push("pg create", "create", sides);
        Ok(())
    }

    async fn transfer(&mut self) -> anyhow::Result<()> {
        let inputs = self.inputs;
        let transfers = &inputs.transfers;
        let sides = self
            .take_turns(
                "pg transfer",
                "floor",
                transfers.len(),
                async |bench, range| {
                    let accounts = bench.db.accounts();
                    let started = Instant::now();
                    for t in &transfers[range.clone()] {
                        accounts.transfer(t).await?;
                    }
                    Ok(Measured::since(started, range.len()))
                },
                async |bench, range| {
                    let started = Instant::now();
                    for t in &transfers[range.clone()] {
                        floor_transfer(&mut bench.floor, t).await?;
                    }
                    Ok(Measured::since(started, range.len()))
                },
            )
            .await?;
        self.ensure_money_conserved("pg transfer").await?;
        self.push("pg transfer", "transfer", sides);
        Ok(())
    }

    /// A `Tx` of five transfers, committed, against `BEGIN`, the same five statements and
    /// `COMMIT` on the floor's connection: a call inside a `Tx` pays for its savepoint (one
    /// round trip), the floor for nothing but its statement.
    async fn tx_of_five(&mut self) -> anyhow::Result<()> {
        const CALLS: usize = 5;
        let inputs = self.inputs;
        let units: Vec<_> = inputs.transfers.chunks_exact(CALLS).collect();
        let sides = self
            .take_turns(
                "pg tx of 5",
                "floor",
                units.len(),
                async |bench, range| {
                    let started = Instant::now();
                    for unit in &units[range.clone()] {
                        let tx = bench.db.begin().await?;
                        for t in unit.iter() {
                            tx.accounts().transfer(t).await?;
                        }
                        tx.commit().await?;
                    }
                    Ok(Measured::since(started, range.len()))
                },
                async |bench, range| {
                    let started = Instant::now();
                    for unit in &units[range.clone()] {
                        sqlrepo_postgres::tx::begin(&mut bench.floor).await?;
                        for t in unit.iter() {
                            floor_transfer(&mut bench.floor, t).await?;
                        }
                        sqlrepo_postgres::tx::commit(&mut bench.floor).await?;
                    }
                    Ok(Measured::since(started, range.len()))
                },
            )
            .await?;
        self.ensure_money_conserved("pg tx of 5").await?;
        self.push("pg tx of 5", "tx", sides);
        Ok(())
    }

    async fn dashboard(&mut self) -> anyhow::Result<()> {
        let inputs = self.inputs;
        let users = &inputs.dashboard_users;
        let sides = self
            .take_turns(
                "pg dashboard",
                "floor",
                users.len(),
                async |bench, range| {
                    let started = Instant::now();
                    for &user in &users[range.clone()] {
                        std::hint::black_box(bench.db.dashboard(user).await?);
                    }
                    Ok(Measured::since(started, range.len()))
                },
                async |bench, range| {
                    let started = Instant::now();
                    for &user in &users[range.clone()] {
                        let dashboard =
                            sqlrepo_postgres::dashboard::select(&mut bench.floor, user).await?;
                        ensure!(dashboard.is_some(), "user {user} missing");
                    }
                    Ok(Measured::since(started, range.len()))
                },
            )
            .await?;
        self.push("pg dashboard", "dashboard", sides);
        Ok(())
    }

    /// The same point gets through the replicated `Db` and through the primary-only one: what
    /// choosing a replica costs a read when nothing was written meanwhile.
    async fn replicated_get(&mut self) -> anyhow::Result<()> {
        let inputs = self.inputs;
        let ids = &inputs.get_ids;
        let sides = self
            .take_turns(
                "pg get replicated",
                "primary",
                ids.len(),
                async |bench, range| {
                    let replicated = bench.replicated.as_ref().context("no replica")?;
                    repo_gets(replicated, &ids[range]).await
                },
                async |bench, range| repo_gets(&bench.db, &ids[range]).await,
            )
            .await?;
        self.push("pg get replicated", "get", sides);
        Ok(())
    }

    /// An update of an item, then a get of it, through the replicated `Db` and through the
    /// primary-only one: what reading one's own writes costs. Every read must see its write.
    async fn write_then_read(&mut self) -> anyhow::Result<()> {
        let inputs = self.inputs;
        let ids = &inputs.get_ids;
        let count = ids.len().min(inputs.sizes.transfers);
        let sides = self
            .take_turns(
                "pg write+read replicated",
                "primary",
                count,
                async |bench, range| {
                    let replicated = bench.replicated.clone().context("no replica")?;
                    write_then_read(&replicated, &ids[range], "replicated").await
                },
                async |bench, range| write_then_read(&bench.db, &ids[range], "primary").await,
            )
            .await?;
        self.push("pg write+read replicated", "write+read", sides);
        self.notes.push(format!(
            "pg write+read replicated: {count} item updates, each followed by a get of the same \
             item, through Db::connect_replicated (primary + one streaming replica) and through \
             Db::connect (primary only); every get saw its own write."
        ));
        Ok(())
    }
}

impl PgBench<'_> {
    /// Point gets while the same `Db` updates an item every 2 ms, through the replicated `Db`
    /// and the primary-only one; and the share of the replicated `Db`'s gets the replica
    /// served, at one write per 2 ms and per 20 ms. Every read must see every write that
    /// returned before it (the README's promise), so a read right after any write of the `Db`
    /// goes to the primary: the share shows what that costs the replica.
    async fn replica_share_under_writes(&mut self) -> anyhow::Result<()> {
        let inputs = self.inputs;
        let ids = &inputs.get_ids;
        let replica_url = self.replica_url.clone().context("no replica")?;
        let sides = self
            .take_turns(
                "pg replica share under writes",
                "primary",
                ids.len(),
                async |bench, range| {
                    let replicated = bench.replicated.clone().context("no replica")?;
                    gets_while_writing(&replicated, &ids[range], Duration::from_millis(2)).await
                },
                async |bench, range| {
                    gets_while_writing(&bench.db, &ids[range], Duration::from_millis(2)).await
                },
            )
            .await?;
        self.push("pg replica share under writes", "get", sides);
        let mut shares = Vec::new();
        for period in [Duration::from_millis(2), Duration::from_millis(20)] {
            // A Db of its own, closed before counting: a session's last statistics reach the
            // server's counters when it ends.
            let replicated = Db::connect_replicated(&self.url, &[replica_url.as_str()]).await?;
            let before = replica_item_scans(&replica_url).await?;
            gets_while_writing(&replicated, ids, period).await?;
            replicated.close().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let served = replica_item_scans(&replica_url).await? - before;
            let share = 100.0 * served.max(0) as f64 / ids.len() as f64;
            progress(format_args!(
                "pg replica share under writes: one write per {period:?}: {served} of {} gets on the replica ({share:.0} %)",
                ids.len()
            ));
            shares.push(format!(
                "{served} of {} ({share:.0} %) at one write per {} ms",
                ids.len(),
                period.as_millis()
            ));
        }
        self.notes.push(format!(
            "pg replica share under writes: point gets through the replicated Db (and through the \
             primary-only Db, the floor column) while the same Db updates an item every 2 ms; \
             gets the replica served: {}. A read may use the replica only once a position \
             covering every write of the whole Db is known (the README's promise).",
            shares.join(", ")
        ));
        Ok(())
    }
}

/// Point gets through `db` while a task of the same `db` updates one item every `period`.
async fn gets_while_writing(db: &Db, ids: &[i64], period: Duration) -> anyhow::Result<Measured> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop, id) = (db.clone(), stop.clone(), ids[0]);
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let patch = ItemPatch {
                    data: Some(json!({"writer": seq})),
                    ..ItemPatch::default()
                };
                db.items().update(id, &patch).await?;
                tokio::time::sleep(period).await;
            }
            anyhow::Ok(())
        })
    };
    let measured = repo_gets(db, ids).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await??;
    measured
}

/// Scans of `items` the replica ran (a standby counts its own): one per get it served; the
/// routing's own questions to the replica read no table.
async fn replica_item_scans(replica_url: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::connect(replica_url).await?;
    let count = sqlrepo_postgres::replication::item_scans(&mut conn).await?;
    conn.close().await?;
    Ok(count)
}

/// One transfer on the floor's held connection: its ledger row must land (the schema's trigger
/// refuses an overdraft or a missing account with an error, never with no row).
async fn floor_transfer(conn: &mut PgConnection, t: &Transfer) -> anyhow::Result<()> {
    let landed = floor::transfer(conn, t.from, t.to, t.amount_cents).await?;
    ensure!(landed == 1, "a floor transfer landed {landed} rows");
    Ok(())
}

/// Point gets through a `Db`; each item must be there.
async fn repo_gets(db: &Db, ids: &[i64]) -> anyhow::Result<Measured> {
    let items = db.items();
    let started = Instant::now();
    for &id in ids {
        ensure!(items.get(id).await?.is_some(), "item {id} missing");
    }
    Ok(Measured::since(started, ids.len()))
}

/// For each id: an update of its data, then a get that must see it.
async fn write_then_read(db: &Db, ids: &[i64], side: &str) -> anyhow::Result<Measured> {
    let items = db.items();
    let started = Instant::now();
    for (seq, &id) in ids.iter().enumerate() {
        let data = json!({"written_by": side, "seq": seq, "id": id});
        let patch = ItemPatch {
            data: Some(data.clone()),
            ..ItemPatch::default()
        };
        ensure!(items.update(id, &patch).await?, "item {id} missing");
        let read = items.get(id).await?.context("item vanished")?;
        ensure!(
            read.data == data,
            "{side}: a read after a write did not see it (item {id})"
        );
    }
    Ok(Measured::since(started, ids.len()))
}

/// The database name of `url` (its path).
fn url_database(url: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    base.rsplit_once('/')
        .map_or_else(String::new, |(_, database)| database.to_owned())
}

/// `host:port` of `url`, for the notes (no user name or password).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

/// Waits (at most 30 s) until the replica has replayed the creation of the bench's database
/// and lets a connection in: `connect_replicated` would otherwise find the replica not ready
/// and (rightly) skip it for the whole run.
async fn wait_for_database(url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn.close().await?),
            Err(err) if Instant::now() > deadline => {
                return Err(err).context("the replica never showed the bench's database");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_all_but_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@h/x?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "b").unwrap(),
            "postgres://h:1/b"
        );
        assert_eq!(url_database("postgres://h/b?x=1"), "b");
        assert_eq!(host_of("postgres://u:p@h:1/b"), "h:1");
    }
}
