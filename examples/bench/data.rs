//! What every side works on: the sizes of a full and a quick run, and the inputs (items, ids,
//! transfers, users, orders, the mixed plan), generated once from a fixed seed so that every
//! side does exactly the same work.

use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlrepo::{NewItem, NewOrder, NewUser, Transfer};

/// How much work each workload does. The naive sqlx side pays a pool acquire and a round trip
/// per row, so where that would take minutes it does fewer operations (`naive_*`) and the table
/// compares per-operation figures.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub items: usize,
    pub gets: usize,
    pub get_many_batches: usize,
    pub get_many_batch_rows: usize,
    pub stream_rows: usize,
    pub accounts: usize,
    pub opening_balance_cents: i64,
    pub transfers: usize,
    pub batches: usize,
    pub batch_steps: usize,
    pub users: usize,
    pub orders: usize,
    pub dashboards: usize,
    pub mixed_tasks: usize,
    pub mixed_ops_per_task: usize,
    /// Operations per round of each concurrent workload, shared out among its callers.
    pub concurrent_ops_per_round: usize,
    /// Rounds in which the sides take turns at the workloads of many small operations (get,
    /// get_many, transfer, transfer_batch, dashboard), so machine noise hits all alike.
    pub rounds: usize,
    pub naive_items: usize,
    pub naive_get_many_rows: usize,
    pub naive_stream_rows: usize,
    pub naive_transfers: usize,
    pub naive_batches: usize,
    pub naive_mixed_ops_per_task: usize,
}

impl Sizes {
    /// The sizes issue 5 names.
    pub fn full() -> Self {
        Sizes {
            items: 100_000,
            gets: 10_000,
            get_many_batches: 50,
            get_many_batch_rows: 1_000,
            stream_rows: 1_000_000,
            accounts: 1_000,
            opening_balance_cents: 1_000_000,
            transfers: 10_000,
            batches: 100,
            batch_steps: 100,
            users: 10_000,
            orders: 100_000,
            dashboards: 1_000,
            mixed_tasks: 8,
            mixed_ops_per_task: 2_000,
            concurrent_ops_per_round: 3_200,
            rounds: 10,
            naive_items: 10_000,
            naive_get_many_rows: 10_000,
            naive_stream_rows: 100_000,
            naive_transfers: 2_000,
            naive_batches: 10,
            naive_mixed_ops_per_task: 500,
        }
    }

    /// The regression guard's run (`--guard`, `--record`): the quick sizes with more
    /// operations and five rounds (each figure the median of them), so that a debug build's
    /// ratios hold still enough to compare with a record, in well under a minute.
    pub fn guard() -> Self {
        Sizes {
            items: 5_000,
            gets: 2_000,
            get_many_batches: 10,
            stream_rows: 20_000,
            transfers: 1_500,
            batches: 10,
            dashboards: 500,
            mixed_ops_per_task: 150,
            rounds: 5,
            ..Sizes::quick()
        }
    }

    /// Every workload small: seconds even in a debug build, to prove the harness works.
    pub fn quick() -> Self {
        Sizes {
            items: 2_000,
            gets: 500,
            get_many_batches: 5,
            get_many_batch_rows: 100,
            stream_rows: 5_000,
            accounts: 50,
            opening_balance_cents: 1_000_000,
            transfers: 300,
            batches: 5,
            batch_steps: 20,
            users: 200,
            orders: 2_000,
            dashboards: 100,
            mixed_tasks: 8,
            mixed_ops_per_task: 50,
            concurrent_ops_per_round: 128,
            rounds: 2,
            naive_items: 500,
            naive_get_many_rows: 200,
            naive_stream_rows: 2_000,
            naive_transfers: 100,
            naive_batches: 2,
            naive_mixed_ops_per_task: 20,
        }
    }
}

/// One operation of the `mixed` workload.
#[derive(Debug, Clone)]
pub enum MixedOp {
    Get(i64),
    /// Writes new data to an item that only this task updates, so the last value is known.
    Update(i64, Value),
    Transfer(Transfer),
}

/// Every input, generated once.
#[derive(Debug)]
pub struct Inputs {
    pub sizes: Sizes,
    pub items: Vec<NewItem>,
    /// Ids `1..=items` in random order, for `set_status_many`.
    pub shuffled_ids: Vec<i64>,
    /// Random ids for point gets (repeats allowed).
    pub get_ids: Vec<i64>,
    /// Batches of distinct random ids, each sorted as `get_many` returns them.
    pub get_many_batches: Vec<Vec<i64>>,
    pub users: Vec<NewUser>,
    pub orders: Vec<NewOrder>,
    pub transfers: Vec<Transfer>,
    pub transfer_batches: Vec<Vec<Transfer>>,
    pub dashboard_users: Vec<i64>,
    /// One list of operations per concurrent task.
    pub mixed: Vec<Vec<MixedOp>>,
}

impl Inputs {
    pub fn generate(sizes: Sizes) -> Self {
        let mut rng = SmallRng::seed_from_u64(5);
        let item_count = sizes.items as i64;
        let items = item_range(0, sizes.items);
        let mut shuffled_ids: Vec<i64> = (1..=item_count).collect();
        shuffled_ids.shuffle(&mut rng);
        let get_ids = (0..sizes.gets)
            .map(|_| rng.random_range(1..=item_count))
            .collect();
        let get_many_batches = (0..sizes.get_many_batches)
            .map(|_| {
                let mut ids: Vec<i64> = shuffled_ids
                    .choose_multiple(&mut rng, sizes.get_many_batch_rows)
                    .copied()
                    .collect();
                ids.sort_unstable();
                ids
            })
            .collect();
        let users = (0..sizes.users)
            .map(|i| NewUser::new(format!("user{i}@example.com"), format!("User {i}")))
            .collect();
        let orders = (0..sizes.orders)
            .map(|_| {
                NewOrder::new(
                    rng.random_range(1..=sizes.users as i64),
                    rng.random_range(100..10_000),
                )
            })
            .collect();
        let accounts = sizes.accounts as i64;
        let transfers = (0..sizes.transfers)
            .map(|_| random_transfer(&mut rng, accounts))
            .collect();
        let transfer_batches = (0..sizes.batches)
            .map(|_| {
                (0..sizes.batch_steps)
                    .map(|_| random_transfer(&mut rng, accounts))
                    .collect()
            })
            .collect();
        let dashboard_users = (0..sizes.dashboards)
            .map(|_| rng.random_range(1..=sizes.users as i64))
            .collect();
        let mixed = (0..sizes.mixed_tasks)
            .map(|task| mixed_plan(&mut rng, &sizes, task))
            .collect();
        Inputs {
            sizes,
            items,
            shuffled_ids,
            get_ids,
            get_many_batches,
            users,
            orders,
            transfers,
            transfer_batches,
            dashboard_users,
            mixed,
        }
    }
}

/// Items `start..end` of the run's item sequence: unique names, ~80 bytes of JSON each.
pub fn item_range(start: usize, end: usize) -> Vec<NewItem> {
    (start..end)
        .map(|i| {
            NewItem::new(
                format!("item-{i:07}"),
                json!({"i": i, "price_cents": i % 10_000, "tags": ["red", "blue"], "note": "bench"}),
            )
        })
        .collect()
}

fn random_transfer(rng: &mut SmallRng, accounts: i64) -> Transfer {
    let from = rng.random_range(1..=accounts);
    let to = loop {
        let to = rng.random_range(1..=accounts);
        if to != from {
            break to;
        }
    };
    Transfer::new(from, to, rng.random_range(1..=100))
}

/// 60 % gets, 20 % updates of the task's own items (ids ≡ task mod tasks), 20 % transfers.
fn mixed_plan(rng: &mut SmallRng, sizes: &Sizes, task: usize) -> Vec<MixedOp> {
    let tasks = sizes.mixed_tasks as i64;
    let own_items = sizes.items as i64 / tasks;
    (0..sizes.mixed_ops_per_task)
        .map(|seq| match rng.random_range(0..10) {
            0..6 => MixedOp::Get(rng.random_range(1..=sizes.items as i64)),
            6..8 => {
                let id = rng.random_range(0..own_items) * tasks + task as i64 + 1;
                MixedOp::Update(id, json!({"task": task, "seq": seq}))
            }
            _ => MixedOp::Transfer(random_transfer(rng, sizes.accounts as i64)),
        })
        .collect()
}
