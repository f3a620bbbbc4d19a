//! The floor: the same point get through raw sqlx on one held `SqliteConnection` (no pool, no
//! repository), so one worker-thread round trip plus the decode. sqlrepo's single operations
//! (get, transfer, dashboard) are measured against it in alternating rounds.

use std::path::Path;

use anyhow::ensure;
use sqlx::{ConnectOptions, SqliteConnection};

use crate::naive::{connect_options, select_item};
use crate::timing::{Measured, Start};

pub struct Floor {
    conn: SqliteConnection,
}

impl Floor {
    /// A read-only connection on the database sqlrepo is using.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = connect_options(path)
            .create_if_missing(false)
            .read_only(true)
            .connect()
            .await?;
        Ok(Floor { conn })
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
}
