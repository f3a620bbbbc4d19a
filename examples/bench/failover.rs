//! The failover rows (`--failover`): a three-node Patroni cluster on loopback (synchronous
//! mode, `.ci/patroni-cluster`), one `Db` on its three-host URL under 8 tasks of keyed
//! transfers, and the leader's Patroni and postmaster SIGKILLed together (the machine lost).
//! Reported: transfers/s before the kill and after writes resumed, kill → first acknowledged
//! write, promotion (Patroni's log) → first acknowledged write. The run fails if a caller saw a
//! non-retryable error, or if an acknowledged transfer is missing or money is not conserved.
//!
//! The cluster and the writers are those of `tests/pg_patroni.rs`, so the bench and the test
//! measure one thing one way. Needs Patroni, etcd and PostgreSQL (the script installs them as
//! root) and loopback ports `SQLREPO_PATRONI_BASEPORT`+1..21 (default 27000).

#[path = "../../tests/common/patroni.rs"]
mod patroni;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sqlrepo::Db;
use time::OffsetDateTime;
use tokio::runtime::Runtime;

use crate::report::Row;
use crate::timing::{Measured, progress};
use patroni::{Cluster, OPENING, Writers};

/// How long the writers' rate is measured before the kill and after writes resume.
const WINDOW: Duration = Duration::from_secs(3);

/// Runs the failover and returns its two rows (transfers before and after) and its notes.
pub fn run(runtime: &Runtime) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    progress(format_args!(
        "failover: starting a three-node Patroni cluster"
    ));
    let cluster = Cluster::start();
    runtime.block_on(async {
        let db = Db::connect(&cluster.url)
            .await
            .context("Db::connect on the three-host URL")?;
        let writers = Writers::start(&db).await;
        // Connections warm up first; then the rate before the kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (before_ops, before_started) = (writers.acknowledged(), Instant::now());
        tokio::time::sleep(WINDOW).await;
        let before = Measured::since(
            before_started,
            usize::try_from(writers.acknowledged() - before_ops)?,
        );

        let (old_name, _, patroni_pid, postmaster_pid) = cluster.leader();
        let killed_wall = OffsetDateTime::now_utc();
        let status = Command::new("kill")
            .args(["-KILL", &patroni_pid, &postmaster_pid])
            .status()?;
        ensure!(
            status.success(),
            "kill -KILL {patroni_pid} {postmaster_pid}"
        );
        let killed = Instant::now();
        writers.fault();
        progress(format_args!("failover: leader {old_name} killed"));
        let first_ok = loop {
            if let Some(first) = writers.first_ok_after_fault() {
                break first;
            }
            ensure!(
                killed.elapsed() < Duration::from_secs(90),
                "no write acknowledged 90 s after the leader was killed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (after_ops, after_started) = (writers.acknowledged(), Instant::now());
        tokio::time::sleep(WINDOW).await;
        let after = Measured::since(
            after_started,
            usize::try_from(writers.acknowledged() - after_ops)?,
        );
        let seen = writers.finish().await;

        let non_retryable: Vec<&String> = seen
            .errors
            .iter()
            .filter(|err| {
                !["Unavailable", "Busy", "Cancelled"]
                    .iter()
                    .any(|kind| err.starts_with(kind))
            })
            .collect();
        ensure!(
            non_retryable.is_empty(),
            "non-retryable errors in the failover: {non_retryable:?}"
        );
        let accounts = db.accounts();
        let moved = accounts
            .get(seen.to)
            .await?
            .context("the writers' account")?
            .balance_cents
            - OPENING;
        ensure!(
            moved == seen.acknowledged,
            "{} transfers acknowledged, {moved} on the new leader",
            seen.acknowledged
        );
        ensure!(
            accounts.total_balance().await? == 2 * OPENING,
            "money is not conserved"
        );
        db.close().await;

        let (new_name, _, _, _) = cluster.leader();
        ensure!(new_name != old_name, "Patroni promoted no other node");
        let promoted = cluster
            .promoted_at(&new_name)
            .with_context(|| format!("{new_name}'s Patroni logged no promotion"))?;
        let notes = vec![format!(
            "pg failover (Patroni, 3 nodes, synchronous mode, ttl 10 s; 8 writers of keyed \
             transfers on one Db with the three-host URL): leader {old_name} SIGKILLed, \
             {new_name} promoted {:.2} s later; first write acknowledged {:.2} s after the kill, \
             {:.2} s after the promotion; {} retryable errors meanwhile, slowest call {:.2} s; \
             all {} acknowledged transfers on the new leader, money conserved",
            (promoted - killed_wall).as_seconds_f64(),
            (first_ok.1 - killed_wall).as_seconds_f64(),
            (first_ok.1 - promoted).as_seconds_f64(),
            seen.errors.len(),
            seen.slowest.as_secs_f64(),
            seen.acknowledged,
        )];
        let row = |name, measured| {
            let mut row = Row::new(name, "transfer", measured);
            row.on_postgres = true;
            row
        };
        Ok((
            vec![
                row("pg failover: 8 writers before the kill", before),
                row("pg failover: 8 writers after the promotion", after),
            ],
            notes,
        ))
    })
}
