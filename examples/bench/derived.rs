//! `#[derive(sqlrepo::Table)]` beside the built-in repository, on the same table: a derived
//! repository over `items` (as a service would write one for a table of its own) against
//! `ItemRepo`, for point gets and `insert_many`, in interleaved rounds. Its figures go in the
//! bench's notes, as ratios derived / built-in.

use std::path::Path;

use anyhow::ensure;
use sqlrepo::{Db, NewItem};
use time::OffsetDateTime;

use crate::timing::{Measured, Start};

/// sqlrepo's `items`, as a service's own table would be declared.
#[derive(Debug, Clone, PartialEq, sqlrepo::Table)]
#[table(name = "items", repo = DerivedItems, noun = "item")]
pub struct DerivedItem {
    pub id: i64,
    pub name: String,
    /// The JSON text as stored.
    pub data: String,
    pub status: String,
    #[table(created_at)]
    pub created_at: OffsetDateTime,
}

/// The same items as the built-in side writes, for the derived one.
fn as_derived(items: &[NewItem]) -> Vec<NewDerivedItem> {
    items
        .iter()
        .map(|item| {
            NewDerivedItem::new(
                item.name.clone(),
                item.data.to_string(),
                item.status.as_str(),
            )
        })
        .collect()
}

/// (built-in, derived) point gets of `ids` on `db`, over `rounds` interleaved rounds.
pub async fn gets(db: &Db, ids: &[i64], rounds: usize) -> anyhow::Result<(Measured, Measured)> {
    let (builtin, derived) = (db.items(), DerivedItems::new(db.handle()));
    let (mut b, mut d) = (Measured::default(), Measured::default());
    for round in 0..rounds {
        for turn in 0..2 {
            let started = Start::now();
            if (round + turn) % 2 == 0 {
                for &id in ids {
                    ensure!(builtin.get(id).await?.is_some(), "item {id} missing");
                }
                b += Measured::since(started, ids.len());
            } else {
                for &id in ids {
                    ensure!(derived.get(id).await?.is_some(), "item {id} missing");
                }
                d += Measured::since(started, ids.len());
            }
        }
    }
    Ok((b, d))
}

/// (built-in, derived) `insert_many` of `items`, each round on two fresh files in `dir`.
pub async fn inserts(
    dir: &Path,
    items: &[NewItem],
    rounds: usize,
) -> anyhow::Result<(Measured, Measured)> {
    let rows = as_derived(items);
    let (mut b, mut d) = (Measured::default(), Measured::default());
    for round in 0..rounds {
        for turn in 0..2 {
            let path = dir.join(format!("derived-{round}-{turn}.db"));
            let db = Db::open(&path).await?;
            let started = Start::now();
            let written = if (round + turn) % 2 == 0 {
                let written = db.items().insert_many(items).await?;
                b += Measured::since(started, items.len());
                written
            } else {
                let written = DerivedItems::new(db.handle()).insert_many(&rows).await?;
                d += Measured::since(started, items.len());
                written
            };
            ensure!(written as usize == items.len(), "inserted {written} rows");
            db.close().await;
            std::fs::remove_file(&path)?;
        }
    }
    Ok((b, d))
}
