//! The floors: what raw sqlx on one held `SqliteConnection` (no pool, no repository) needs for
//! the same job, so one worker-thread round trip plus SQLite's work and the decode.
//!
//! - Reads (get, dashboard) are measured against the same point get on a read-only connection
//!   to sqlrepo's file.
//! - The transfer is measured against the very statement sqlrepo sends for one (the ledger
//!   `INSERT … WHERE NOT EXISTS`, the schema's trigger moving the money) on a writable
//!   connection to a database of its own, seeded like the others. A write's round trip costs
//!   more than a read's (a commit, the WAL), so a read floor would charge sqlrepo for SQLite's
//!   write path.

use std::path::Path;

use anyhow::ensure;
use sqlrepo::{Db, Transfer};
use sqlx::{ConnectOptions, SqliteConnection};

use crate::data::Inputs;
use crate::naive::{connect_options, select_item};
use crate::repo_side::seed_people;
use crate::timing::{Measured, Start};

pub struct Floor {
    conn: SqliteConnection,
    writer: SqliteConnection,
}

impl Floor {
    /// A read-only connection on the database sqlrepo is using, and a writable one on a fresh
    /// database at `write_path`, migrated and seeded as the others (untimed).
    pub async fn open(path: &Path, write_path: &Path, inputs: &Inputs) -> anyhow::Result<Self> {
        let conn = connect_options(path)
            .create_if_missing(false)
            .read_only(true)
            .connect()
            .await?;
        let seeding = Db::open(write_path).await?;
        seed_people(&seeding, inputs).await?;
        seeding.close().await;
        let writer = connect_options(write_path).connect().await?;
        Ok(Floor { conn, writer })
    }

    pub async fn get(&mut self, ids: &[i64]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for &id in ids {
            ensure!(
                select_item(&mut self.conn, id).await?.is_some(),
                "item {id} missing"
            );
        }
        Ok(Measured::since(started, ids.len()))
    }

    /// sqlrepo's one-transfer statement, one autocommit statement per transfer.
    pub async fn transfer(&mut self, transfers: &[Transfer]) -> anyhow::Result<Measured> {
        let started = Start::now();
        for t in transfers {
            let key = t.idempotency_key.as_deref();
            let landed = sqlx::query!(
                r#"
                INSERT INTO transfers (from_account, to_account, amount, idempotency_key)
                SELECT ?1, ?2, ?3, ?4
                WHERE NOT EXISTS (
                    SELECT 1
                    FROM transfers
                    WHERE idempotency_key = ?4
                      AND from_account = ?1
                      AND to_account = ?2
                      AND amount = ?3
                )
                "#,
                t.from,
                t.to,
                t.amount_cents,
                key,
            )
            .execute(&mut self.writer)
            .await?
            .rows_affected();
            ensure!(landed == 1, "the floor's transfer {t:?} did not land");
        }
        Ok(Measured::since(started, transfers.len()))
    }
}
