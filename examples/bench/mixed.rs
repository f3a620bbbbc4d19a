//! The `mixed` workload's bookkeeping, shared by every side: what the tasks report, and the
//! audit afterwards that proves nothing was lost (the bank total is conserved, every landed
//! transfer is one ledger row, every item holds the last value its task wrote).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::data::MixedOp;
use crate::rusqlite_side::{Audit, audit, item_data};
use crate::timing::Measured;

/// What one task (or all of them, summed) saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskTally {
    pub ops: usize,
    pub landed_transfers: usize,
    pub busy: usize,
    pub other_errors: usize,
}

impl std::ops::AddAssign for TaskTally {
    fn add_assign(&mut self, other: TaskTally) {
        self.ops += other.ops;
        self.landed_transfers += other.landed_transfers;
        self.busy += other.busy;
        self.other_errors += other.other_errors;
    }
}

/// The outcome of one side's `mixed` run, after the audit.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub measured: Measured,
    pub tally: TaskTally,
    pub total_before: i64,
    pub total_after: i64,
    pub new_ledger_rows: i64,
    pub lost_updates: usize,
}

impl Verdict {
    /// Whether the run kept every rule: no Busy, no other error, no lost write.
    pub fn clean(&self) -> bool {
        self.tally.busy == 0
            && self.tally.other_errors == 0
            && self.total_before == self.total_after
            && self.new_ledger_rows == self.tally.landed_transfers as i64
            && self.lost_updates == 0
    }

    /// One line for the notes under the table.
    pub fn describe(&self, side: &str) -> String {
        format!(
            "{side}: {} ops, {:.0} ops/s; Busy errors {}, other errors {}; bank total {} -> {} ({}); \
             landed transfers {} vs new ledger rows {}; lost updates {}",
            self.measured.ops,
            self.measured.ops as f64 / self.measured.elapsed.as_secs_f64(),
            self.tally.busy,
            self.tally.other_errors,
            self.total_before,
            self.total_after,
            if self.total_before == self.total_after {
                "conserved"
            } else {
                "NOT CONSERVED"
            },
            self.tally.landed_transfers,
            self.new_ledger_rows,
            self.lost_updates,
        )
    }
}

/// The plan of each task cut to `ops_per_task` operations.
pub fn cut_plan(plan: &[Vec<MixedOp>], ops_per_task: usize) -> Vec<Vec<MixedOp>> {
    plan.iter()
        .map(|ops| ops[..ops_per_task.min(ops.len())].to_vec())
        .collect()
}

/// Audits the database at `path` after a mixed run that started from `before`.
pub fn verify(
    path: &Path,
    before: Audit,
    plan: &[Vec<MixedOp>],
    measured: Measured,
    tally: TaskTally,
) -> anyhow::Result<Verdict> {
    let after = audit(path)?;
    let mut expected: HashMap<i64, &Value> = HashMap::new();
    for ops in plan {
        for op in ops {
            if let MixedOp::Update(id, data) = op {
                expected.insert(*id, data);
            }
        }
    }
    let ids: Vec<i64> = expected.keys().copied().collect();
    let stored = item_data(path, &ids)?;
    let lost_updates = expected
        .iter()
        .filter(|(id, data)| stored.get(id) != Some(data))
        .count();
    Ok(Verdict {
        measured,
        tally,
        total_before: before.total_balance_cents,
        total_after: after.total_balance_cents,
        new_ledger_rows: after.ledger_rows - before.ledger_rows,
        lost_updates,
    })
}
