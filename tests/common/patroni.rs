//! A Patroni cluster for a test or the bench: `.ci/patroni-cluster` started in a scratch
//! directory (stopped and deleted when dropped), its leader and promotion times, and 8 tasks
//! of keyed transfers through one `Db` that record what a caller sees through a failover.
//! Shared by `tests/pg_patroni.rs` and the bench's failover rows (`#[path]`), so both measure
//! the same thing the same way.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlrepo::{Db, NewAccount, Transfer};
use time::OffsetDateTime;

/// Each writer account's opening balance.
pub const OPENING: i64 = 1_000_000;

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/patroni-cluster")
}

/// A running cluster, stopped (everything, then its directory deleted) when dropped.
pub struct Cluster {
    pub dir: PathBuf,
    pub url: String,
    _parent: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let base = std::env::var("SQLREPO_PATRONI_BASEPORT").unwrap_or_else(|_| "27000".into());
        let parent = tempfile::tempdir().unwrap();
        // Patroni and PostgreSQL run as the `postgres` user, which must reach the directory.
        let mut permissions = std::fs::metadata(parent.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o711);
        std::fs::set_permissions(parent.path(), permissions).unwrap();
        let dir = parent.path().join("patroni");
        let start = || {
            Command::new(script())
                .arg("start")
                .arg(&dir)
                .arg(&base)
                .output()
                .expect("run .ci/patroni-cluster")
        };
        let mut out = start();
        if !out.status.success() {
            // A start that meets the ports of a cluster still shutting down (the script stops
            // everything and deletes the directory on failure) gets one more try.
            eprintln!(
                "the first Patroni start failed, trying once more:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(5));
            out = start();
        }
        assert!(
            out.status.success(),
            "could not start a Patroni cluster (this test needs Patroni, etcd and PostgreSQL 15 \
             -- the script installs them as root -- and ports {base}+1..21 free):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = stdout
            .lines()
            .find_map(|line| line.strip_prefix("export SQLREPO_PATRONI_URL="))
            .unwrap_or_else(|| panic!("no SQLREPO_PATRONI_URL in {stdout}"))
            .trim_matches('\'')
            .to_owned();
        Cluster {
            dir,
            url,
            _parent: parent,
        }
    }

    /// The leader as `.ci/patroni-cluster leader` prints it: name, port, Patroni's pid and the
    /// postmaster's.
    pub fn leader(&self) -> (String, u16, String, String) {
        let out = Command::new(script())
            .arg("leader")
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "leader printed {text:?}");
        (
            fields[0].to_owned(),
            fields[1].parse().unwrap(),
            fields[2].to_owned(),
            fields[3].to_owned(),
        )
    }

    /// When the node's Patroni logged its promotion (Patroni logs in UTC here: the script
    /// starts it with TZ=UTC).
    pub fn promoted_at(&self, node: &str) -> Option<OffsetDateTime> {
        let log = std::fs::read_to_string(self.dir.join(node).join("patroni.log")).ok()?;
        let line = log
            .lines()
            .rfind(|line| line.contains("promoted self to leader"))?;
        let format = time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second],[subsecond]"
        );
        let stamp = line.get(..23)?;
        Some(
            time::PrimitiveDateTime::parse(stamp, &format)
                .ok()?
                .assume_utc(),
        )
    }
}

impl Cluster {
    /// Starts a killed node's Patroni again (`.ci/patroni-cluster start-node`).
    pub fn start_node(&self, name: &str) {
        let out = Command::new(script())
            .arg("start-node")
            .arg(&self.dir)
            .arg(name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "start-node {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the cluster has a leader and two streaming replicas again (`status`).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let out = Command::new(script())
                .arg("status")
                .arg(&self.dir)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster is not healthy {within:?} after a node's restart:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
    }
}

pub fn port_of(label: &str) -> u16 {
    label.rsplit(':').next().unwrap().parse().unwrap()
}

/// What the writers of a failover test saw.
#[derive(Default)]
pub struct Seen {
    /// The two accounts every transfer moves a cent between.
    pub from: i64,
    pub to: i64,
    /// Transfers acknowledged (each under its own idempotency key).
    pub acknowledged: i64,
    /// Errors meanwhile, all of which must be retryable.
    pub errors: Vec<String>,
    /// The longest a single call took.
    pub slowest: Duration,
    /// When the fault (a kill, a switchover) was made.
    pub fault_at: Option<Instant>,
    /// The first acknowledgement of a call started after the fault.
    pub first_ok_after_fault: Option<(Instant, OffsetDateTime)>,
    /// When the first and the last error were seen.
    pub errors_from: Option<Instant>,
    pub errors_until: Option<Instant>,
    /// The first acknowledgement after the latest error: once the writers are done, when
    /// writes resumed for good.
    pub resumed: Option<OffsetDateTime>,
    /// The latest error when `resumed` was taken.
    pub resumed_after: Option<Instant>,
}

/// 8 tasks of keyed transfers of 1 cent through one `Db`, each key retried until acknowledged.
pub struct Writers {
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// Opens two accounts on `db` and starts the writers.
    pub async fn start(db: &Db) -> Writers {
        let accounts = db.accounts();
        let open = || NewAccount {
            user_id: None,
            balance_cents: OPENING,
        };
        let seen = Arc::new(Mutex::new(Seen {
            from: accounts.open(&open()).await.unwrap(),
            to: accounts.open(&open()).await.unwrap(),
            ..Seen::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..8)
            .map(|task| tokio::spawn(write(db.clone(), task, seen.clone(), stop.clone())))
            .collect();
        Writers { seen, stop, tasks }
    }

    pub fn acknowledged(&self) -> i64 {
        self.seen.lock().unwrap().acknowledged
    }

    /// Marks now as the moment of the fault.
    pub fn fault(&self) {
        self.seen.lock().unwrap().fault_at = Some(Instant::now());
    }

    pub fn first_ok_after_fault(&self) -> Option<(Instant, OffsetDateTime)> {
        self.seen.lock().unwrap().first_ok_after_fault
    }

    /// Stops the writers (each finishes its key) and returns what they saw.
    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// One writer: transfers under keys `w{from}-{task}-{n}` (unique to its `Writers`) until `stop`.
async fn write(db: Db, task: usize, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let accounts = db.accounts();
    let (from, to) = {
        let seen = seen.lock().unwrap();
        (seen.from, seen.to)
    };
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        // The same key until it is acknowledged: a write whose answer was lost in the outage
        // lands once.
        let transfer = Transfer::new(from, to, 1).with_key(format!("w{from}-{task}-{n}"));
        loop {
            let start = Instant::now();
            let result = accounts.transfer(&transfer).await;
            let acknowledged = {
                let mut seen = seen.lock().unwrap();
                seen.slowest = seen.slowest.max(start.elapsed());
                match result {
                    Ok(_) => {
                        seen.acknowledged += 1;
                        // The first success since the latest error.
                        if seen.resumed_after != seen.errors_until {
                            seen.resumed = Some(OffsetDateTime::now_utc());
                            seen.resumed_after = seen.errors_until;
                        }
                        // A call that started after the fault cannot have been answered by the
                        // lost leader.
                        if seen.fault_at.is_some_and(|at| start > at)
                            && seen.first_ok_after_fault.is_none()
                        {
                            seen.first_ok_after_fault =
                                Some((Instant::now(), OffsetDateTime::now_utc()));
                        }
                        true
                    }
                    Err(err) => {
                        seen.errors.push(format!("{err:?}"));
                        let now = Instant::now();
                        seen.errors_from.get_or_insert(now);
                        seen.errors_until = Some(now);
                        false
                    }
                }
            };
            if acknowledged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n += 1;
    }
}
