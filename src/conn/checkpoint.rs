//! Keeping the WAL small: a `TRUNCATE` checkpoint between writes once the `-wal` file passes
//! [`WAL_CHECKPOINT_BYTES`], so the bound [`WAL_BOUND_BYTES`] holds even when readers never
//! pause.
//!
//! # Why SQLite's own checkpoints are not enough here
//!
//! SQLite checkpoints after a commit once the WAL holds [`CHECKPOINT_PAGES`] pages
//! (`wal_autocheckpoint`, set on every connection), in `PASSIVE` mode: it copies the frames no
//! reader still needs, and never waits. The WAL file
//! starts over from its beginning only when a checkpoint copied *every* frame and no reader
//! is reading from the WAL at the next write. Under steady load with readers always active,
//! some reader always holds a snapshot a few frames old, so that moment never comes and the
//! file grows without bound (measured under the load of `tests/wal.rs` with the checkpoint of
//! ours off: the file kept growing for as long as the load ran).
//!
//! # What this does instead
//!
//! Before the writer is lent out, a `stat` of the `-wal` file (about a microsecond, no round
//! trip to SQLite). Past [`WAL_CHECKPOINT_BYTES`], while holding the writer (so no write of
//! this `Db` is in flight), a `PRAGMA wal_checkpoint(TRUNCATE)` runs on a connection of its
//! own. `TRUNCATE` holds the write lock, copies what is left (little: the passive
//! checkpoints did most of it), then waits for the readers still on older snapshots to finish;
//! readers that start meanwhile read from the database file and are not waited for, so with
//! short reads the wait is a millisecond or two. Then it truncates the file to zero bytes.
//!
//! The connection's busy timeout is [`CHECKPOINT_WAIT`], not the `Db`'s: a reader that holds
//! its snapshot longer (a backup, an integrity check, a service's long report) makes the
//! checkpoint give up after that wait instead of stalling every write for the busy timeout.
//! When one of sqlrepo's own long reads (`Db::backup_to`, `Db::integrity_check`) ends, the next
//! write tries again at once.
//! It is tried again once the WAL has grown by another [`RETRY_GROWTH_BYTES`], then at
//! growing spacing.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::Mutex as AsyncMutex;

use crate::error::Result;

/// The WAL size, in pages (frames), at which it is checkpointed after a commit (`PASSIVE`:
/// it copies what no reader still needs and waits for nobody), on every connection that
/// writes: 4,000, four times SQLite's default `wal_autocheckpoint`.
///
/// Why not SQLite's 1,000: a checkpoint costs the writes that queue behind it mostly two
/// `fsync`s (the WAL, then the database file) of the pages it copied, and the pages a mixed
/// load keeps rewriting (the accounts, the ledger's last page, an index's upper pages) are
/// copied once per checkpoint however often they were written. Measured by the bench with 16 callers
/// of gets, transfers and updates (the guide's performance chapter has the figures), every
/// fourth checkpoint left the writes about twice the time between them.
pub const CHECKPOINT_PAGES: u64 = 4_000;

/// The WAL size, in frames, at which the direct writer's commits have the `-wal` file synced in
/// the background, ahead of the checkpoint at [`CHECKPOINT_PAGES`]: three quarters of it.
///
/// A checkpoint first syncs the WAL, and an `fsync` costs in proportion to the data it writes
/// out, so the checkpoint that holds the writer syncs only the frames committed since.
/// (Its other sync, of the database file, comes after the copy and is not taken ahead:
/// SQLite syncs that file only in a checkpoint that reached the WAL's end with no commit
/// meanwhile, and checkpoints run beside 16 callers' writes did not, in the bench's mix.)
const PRESYNC_PAGES: u64 = CHECKPOINT_PAGES / 4 * 3;

/// Past this size, the `-wal` file is checkpointed and truncated before the next write: 16 MiB,
/// a little more than [`CHECKPOINT_PAGES`] pages of 4 KiB (with their frame headers) reach.
pub const WAL_CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;

/// The size the `-wal` file stays under: twice [`WAL_CHECKPOINT_BYTES`] (32 MiB).
///
/// It holds while no single transaction writes more than [`WAL_CHECKPOINT_BYTES`] of pages (a
/// batch of tens of thousands of rows can: the WAL is then as large as that batch, and is
/// truncated before the next write) and no read holds its snapshot longer than
/// [`CHECKPOINT_WAIT`] at every try. Checked under steady load by `tests/wal.rs`.
pub const WAL_BOUND_BYTES: u64 = 2 * WAL_CHECKPOINT_BYTES;

/// The longest a checkpoint waits for readers on older snapshots (and so the longest the
/// writes queued behind it wait for that) before it gives up until the next try.
pub const CHECKPOINT_WAIT: Duration = Duration::from_millis(200);

/// After a checkpoint that could not finish, how much more the WAL grows at least before the
/// next try (and as much again as it had grown past [`WAL_CHECKPOINT_BYTES`], so the tries
/// space out), so that writes do not each pay [`CHECKPOINT_WAIT`] while a long read goes on.
pub const RETRY_GROWTH_BYTES: u64 = WAL_CHECKPOINT_BYTES / 4;

/// What the checkpoints of one [`Db`](crate::Db) did since it was opened: for an operator's
/// metrics and for the bench harness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WalStats {
    /// The largest size of the `-wal` file seen before a write, in bytes.
    pub largest_wal_bytes: u64,
    /// `TRUNCATE` checkpoints run (the WAL had passed [`WAL_CHECKPOINT_BYTES`]).
    pub checkpoints: u64,
    /// Of those, the ones a reader kept from finishing within [`CHECKPOINT_WAIT`], or that
    /// failed (a full disk, say); the WAL was then left as it was.
    pub incomplete_checkpoints: u64,
    /// The time writes waited for checkpoints, in total, in microseconds.
    pub checkpoint_time_us: u64,
    /// The longest one checkpoint took, in microseconds.
    pub longest_checkpoint_us: u64,
    /// `PASSIVE` checkpoints run for the direct writer's commits, where SQLite would have run
    /// its own after a commit (see [`DbOptions::direct_writes`](crate::DbOptions::direct_writes)).
    pub passive_checkpoints: u64,
    /// The time writes waited for those, in total, in microseconds.
    pub passive_checkpoint_time_us: u64,
    /// Syncs of the `-wal` file started in the background ahead of those checkpoints (at most
    /// one before each), so that theirs has less to write out.
    pub wal_presyncs: u64,
}

/// The row `PRAGMA wal_checkpoint` answers.
#[derive(Debug)]
struct CheckpointResult {
    /// 1 when a reader or writer kept the checkpoint from finishing, else 0.
    busy: i64,
    /// Frames in the WAL (-1 when it could not be read).
    #[expect(dead_code, reason = "named so the macro checks the pragma's columns")]
    log: i64,
    /// Frames copied into the database file.
    #[expect(dead_code, reason = "named so the macro checks the pragma's columns")]
    checkpointed: i64,
}

/// The checkpoint policy of one database file, with the connection it checkpoints on.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    wal: PathBuf,
    // Boxed: a connection is large, and this sits in every open `Db`'s connection list.
    connection: AsyncMutex<Option<Box<SqliteConnection>>>,
    state: Mutex<State>,
}

/// Marks a long read (see [`Checkpointer::long_read`]) until dropped.
#[derive(Debug)]
pub(crate) struct LongRead<'a>(&'a Checkpointer);

impl Drop for LongRead<'_> {
    fn drop(&mut self) {
        // The snapshot that cut checkpoints short is gone: the next write tries one at once,
        // instead of waiting for the WAL to reach the spaced-out size of the next try.
        self.0.lock_state().next_try_bytes = WAL_CHECKPOINT_BYTES;
    }
}

#[derive(Debug)]
struct State {
    stats: WalStats,
    /// The WAL size at which the next checkpoint is tried.
    next_try_bytes: u64,
    /// Whether the WAL was synced ahead of the next `PASSIVE` checkpoint.
    presynced: bool,
}

impl Checkpointer {
    /// Opens the checkpoint connection on the file that `options` name (already created and
    /// in WAL mode: the writer is opened first).
    pub(crate) async fn open(options: &SqliteConnectOptions) -> Result<Checkpointer> {
        let mut wal = options.get_filename().as_os_str().to_owned();
        wal.push("-wal");
        let connection = options
            .clone()
            .busy_timeout(CHECKPOINT_WAIT)
            .connect()
            .await?;
        Ok(Checkpointer {
            wal: PathBuf::from(wal),
            connection: AsyncMutex::new(Some(Box::new(connection))),
            state: Mutex::new(State {
                stats: WalStats::default(),
                next_try_bytes: WAL_CHECKPOINT_BYTES,
                presynced: false,
            }),
        })
    }

    /// Marks a read that holds one snapshot for long (a backup, an integrity check) until the
    /// guard drops; then the first write tries a checkpoint at once.
    ///
    /// Checkpoints are still tried while it runs, at the spaced-out sizes: each fails after
    /// [`CHECKPOINT_WAIT`], and that wait is a brake on the writers. Measured on a 1M-row
    /// backup with a writer updating at full speed (`--operations` in the bench): with the
    /// tries, the backup took 1.2 s and the WAL reached 13 MiB; skipping them, the writer ran
    /// free, the WAL reached 640 MiB and the backup, reading through it, took 4.7 s.
    pub(crate) fn long_read(&self) -> LongRead<'_> {
        LongRead(self)
    }

    /// What the checkpoints did so far.
    pub(crate) fn stats(&self) -> WalStats {
        self.lock_state().stats
    }

    /// Called with the writer held, before it is lent out: checkpoints when the WAL is past
    /// its threshold. Never fails the write that follows: a checkpoint that cannot run now is
    /// counted and tried again later.
    ///
    /// `direct_frames` is the direct writer's count of WAL frames after its last commit (see
    /// `direct_write`): from [`PRESYNC_PAGES`] the WAL is synced in the background, once; at
    /// [`CHECKPOINT_PAGES`], the `PASSIVE` checkpoint SQLite would have run in that commit
    /// runs here, on the checkpoint connection, and the count is zeroed.
    pub(crate) async fn before_write(&self, direct_frames: Option<&AtomicU64>) {
        let count = direct_frames.map_or(0, |frames| frames.load(Ordering::Acquire));
        if (PRESYNC_PAGES..CHECKPOINT_PAGES).contains(&count) {
            // Not at the checkpoint itself: that one syncs the WAL anyway.
            self.presync();
        }
        if let Some(frames) = direct_frames
            && count >= CHECKPOINT_PAGES
        {
            frames.store(0, Ordering::Release);
            let started = Instant::now();
            self.passive().await;
            let took_us = micros(started.elapsed());
            let mut state = self.lock_state();
            state.presynced = false;
            let stats = &mut state.stats;
            stats.passive_checkpoints += 1;
            stats.passive_checkpoint_time_us =
                stats.passive_checkpoint_time_us.saturating_add(took_us);
        }
        // A missing WAL (just truncated, or not created yet) is an empty one.
        let wal_bytes = std::fs::metadata(&self.wal).map_or(0, |meta| meta.len());
        {
            let mut state = self.lock_state();
            let stats = &mut state.stats;
            stats.largest_wal_bytes = stats.largest_wal_bytes.max(wal_bytes);
            if wal_bytes < state.next_try_bytes {
                return;
            }
        }
        let started = Instant::now();
        let finished = self.checkpoint().await;
        let took_us = micros(started.elapsed());

        let mut state = self.lock_state();
        let stats = &mut state.stats;
        stats.checkpoints += 1;
        stats.checkpoint_time_us = stats.checkpoint_time_us.saturating_add(took_us);
        stats.longest_checkpoint_us = stats.longest_checkpoint_us.max(took_us);
        if finished {
            state.next_try_bytes = WAL_CHECKPOINT_BYTES;
        } else {
            stats.incomplete_checkpoints += 1;
            // A long read (a backup, say) keeps failing them: space the tries out as the WAL
            // grows (20, 24, 32, 48 MiB …), so writes pay the wait a few times, not per MiB.
            let grown = wal_bytes.saturating_sub(WAL_CHECKPOINT_BYTES);
            state.next_try_bytes = wal_bytes + grown.max(RETRY_GROWTH_BYTES);
        }
    }

    /// Syncs the `-wal` file on a blocking thread, once per `PASSIVE` checkpoint, and returns
    /// at once.
    ///
    /// Through a file handle of its own: SQLite takes no locks on the `-wal` file (its locks
    /// are on the database file and the `-shm` file), so opening and closing one there
    /// cannot release any, as a handle on the database file would. A failure is of no
    /// consequence: the checkpoint syncs the WAL itself.
    fn presync(&self) {
        let mut state = self.lock_state();
        if state.presynced {
            return;
        }
        // Always inside a tokio runtime, through sqlx; outside one, the checkpoint syncs.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.presynced = true;
        state.stats.wal_presyncs += 1;
        let wal = self.wal.clone();
        runtime.spawn_blocking(move || {
            if let Err(err) = std::fs::File::open(&wal).and_then(|file| file.sync_data()) {
                tracing::debug!(target: "sqlrepo", error = %err, "WAL presync failed");
            }
        });
    }

    /// Runs one `PASSIVE` checkpoint, SQLite's own kind after a commit: copies what no reader
    /// still needs and waits for nobody. Its failure changes nothing (the frames stay in the
    /// WAL, for the next one).
    async fn passive(&self) {
        let mut slot = self.connection.lock().await;
        let Some(conn) = slot.as_mut() else {
            return;
        };
        // Unchecked output for the reason `checkpoint` gives.
        if let Err(err) =
            sqlx::query_as_unchecked!(CheckpointResult, r#"PRAGMA wal_checkpoint(PASSIVE)"#)
                .fetch_one(&mut **conn)
                .await
        {
            tracing::warn!(target: "sqlrepo", error = %err, "WAL checkpoint failed");
        }
    }

    /// Runs one `TRUNCATE` checkpoint; true when it copied every frame and truncated the WAL.
    async fn checkpoint(&self) -> bool {
        let mut slot = self.connection.lock().await;
        let Some(conn) = slot.as_mut() else {
            return false;
        };
        // Checked against the schema like every statement here, but `_unchecked` for its
        // output: SQLite declares no types for a pragma's columns, so the checked macros cannot
        // name one (the columns are integers, SQLite's documentation says).
        match sqlx::query_as_unchecked!(CheckpointResult, r#"PRAGMA wal_checkpoint(TRUNCATE)"#)
            .fetch_one(&mut **conn)
            .await
        {
            Ok(row) => row.busy == 0,
            Err(err) => {
                tracing::warn!(target: "sqlrepo", error = %err, "WAL checkpoint failed");
                false
            }
        }
    }

    /// Closes the checkpoint connection.
    pub(crate) async fn close(&self) {
        use sqlx::Connection;
        if let Some(conn) = self.connection.lock().await.take() {
            // Nothing useful can be done about a failed close; the file is intact.
            let _ = conn.close().await;
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain numbers, valid whatever a panicking holder left.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A duration in whole microseconds, for [`WalStats`] (saturating: no checkpoint runs for
/// half a million years).
fn micros(took: std::time::Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}
