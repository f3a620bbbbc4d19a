//! Single-statement writes run on the caller's thread: a read-write connection of SQLite's C
//! library (through `rusqlite`) beside sqlx's writer, used only while the writer is leased.
//!
//! # Why
//!
//! sqlx-sqlite runs every statement on its connection's worker thread, so a point write (one
//! transfer, one item create or update) costs two thread wake-ups around a few microseconds of
//! SQLite work, as a point read did before direct reads. Under many callers on a loaded machine
//! those wake-ups are most of a write's cost, and writes set the pace of a mixed load: every
//! caller with a write in hand waits for the writer's worker thread. A single statement in
//! autocommit mode is short, bounded work (one ledger row and its trigger, one item's row,
//! or a group of at most [`MAX_GROUP`](crate::limits::MAX_GROUP) of them), short enough to
//! run where the caller already is, as an in-process SQLite program would.
//!
//! # What stays the same
//!
//! - **One writer.** A direct write runs only while its caller holds the writer's lease, so
//!   it never runs beside sqlx's writer or a [`Tx`](crate::Tx), and writes of this process
//!   still queue in Rust (group commit included) rather than fight over SQLite's write lock.
//!   The WAL checkpoint runs before the lease is lent, as for every write.
//! - **The statement is the checked one.** Its text is taken from the `query!` the worker
//!   path runs, so sqlx checks it against the schema at build time.
//! - **`Ok` means committed.** The statement runs in autocommit mode and is stepped to its end,
//!   where SQLite commits; an answer is built only after that.
//! - **Anything but a clean commit changes nothing, and the ordinary path answers.** A
//!   statement that fails in autocommit mode is rolled back whole by SQLite (a refused row, a
//!   full disk, an I/O error, `SQLITE_BUSY` from another process's lock: the connection waits
//!   for no lock, busy timeout zero, so the caller's thread never stalls). The caller then runs
//!   the same write the ordinary way, on sqlx's writer, whose answer or typed error stands (and
//!   which waits for a lock as the busy timeout says). If SQLite ever left a transaction open
//!   after a failure, it is rolled back here, and a connection that cannot be rolled back is
//!   closed and not used again.
//! - **No fsync on the caller's thread.** In WAL mode with `synchronous=NORMAL` a commit appends
//!   to the `-wal` file without syncing it, as on sqlx's writer; the syncs belong to
//!   checkpoints, and this connection runs none. SQLite would run a `PASSIVE` checkpoint in the
//!   commit that takes the WAL to [`CHECKPOINT_PAGES`](crate::CHECKPOINT_PAGES) frames, copying pages and
//!   syncing both files on the caller's thread; a WAL hook replaces that with a count, and the
//!   next write lease runs the same checkpoint on the checkpoint connection's own thread
//!   (`checkpoint`), holding the writer as SQLite's would have. The WAL's part of its syncs
//!   is mostly done ahead, on a blocking thread, while writes go on.
//! - **The rules are the schema's.** Foreign keys on, as on every connection of a `Db`.
//! - **Reads borrow it only when it is free.** A point read runs here when it can take the
//!   writer's lease without waiting (see [`DirectWriter::read`]), under the direct readers'
//!   step budget; otherwise it goes to a direct reader. A write never waits for more than
//!   one such read.

use std::cell::Cell;
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};

use crate::limits::DIRECT_READ_MOST_STEPS;

thread_local! {
    /// The WAL's size in frames after the commit the current thread's direct write just made,
    /// set by [`count_wal_frames`]. A thread-local, because SQLite's WAL hook takes a plain
    /// function; it runs inside the commit, on the thread of [`DirectWriter::write`], which
    /// reads it back before returning.
    static COMMITTED_WAL_FRAMES: Cell<Option<u64>> = const { Cell::new(None) };

    /// Set while the current thread runs a point read on the direct writer (see
    /// [`DirectWriter::read`]), so that SQLite's progress handler interrupts that read past
    /// [`DIRECT_READ_MOST_STEPS`] steps, as on a direct reader, and leaves writes alone.
    static READING: Cell<bool> = const { Cell::new(false) };
}

/// SQLite's progress handler on the direct writer: `true` (interrupt) only inside a read.
fn interrupt_reads() -> bool {
    READING.get()
}

/// Clears [`READING`] when a read ends, a panicking one included.
struct Reading;

impl Reading {
    fn start() -> Reading {
        READING.set(true);
        Reading
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READING.set(false);
    }
}

/// SQLite's WAL hook on the direct writer: notes the WAL's size after a commit.
fn count_wal_frames(_wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    COMMITTED_WAL_FRAMES.set(Some(u64::try_from(frames).unwrap_or(0)));
    Ok(())
}

/// The read-write connection that runs direct writes, or nothing once it was closed or found
/// in a state it could not be brought back from.
#[derive(Debug)]
pub(crate) struct DirectWriter {
    // Only a writer-lease holder locks it, so it is never contended; a mutex all the same, so
    // that the type says so rather than a comment.
    conn: Mutex<Option<Connection>>,
    /// The frames in the WAL after this connection's last commit, as SQLite's WAL hook told
    /// it; zeroed by the checkpoint that copied them (see [`DirectWriter::wal_frames`]).
    wal_frames: AtomicU64,
    /// The reads this connection answered, for the tests that make sure reads run here.
    #[cfg(test)]
    reads: AtomicU64,
}

impl DirectWriter {
    /// Opens the connection on the file at `path` (created, migrated and in WAL mode: the
    /// sqlx writer is opened first). `None` when SQLite cannot open it: writes then take the
    /// ordinary path, as before direct writes.
    pub(crate) fn open(path: &Path, journal_size_limit: u64) -> Option<DirectWriter> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).ok()?;
        conn.busy_timeout(Duration::ZERO).ok()?;
        conn.execute_batch(&format!(
            "PRAGMA foreign_keys = ON;
             PRAGMA synchronous = NORMAL;
             PRAGMA journal_size_limit = {journal_size_limit};"
        ))
        .ok()?;
        // The pragmas are checked, not trusted: a build of SQLite without foreign keys would
        // let a transfer reach a missing account.
        let foreign_keys: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |row| row.get(0))
            .ok()?;
        // In place of SQLite's own checkpoint after a commit (which the hook replaces): the
        // hook only counts, and the checkpoint runs on its own connection (see the module docs).
        conn.wal_hook(Some(count_wal_frames));
        conn.progress_handler(DIRECT_READ_MOST_STEPS, Some(interrupt_reads))
            .ok()?;
        (foreign_keys == 1).then(|| DirectWriter {
            conn: Mutex::new(Some(conn)),
            wal_frames: AtomicU64::new(0),
            #[cfg(test)]
            reads: AtomicU64::new(0),
        })
    }

    /// Runs `write` on the connection: its answer when it committed cleanly, `None` when it
    /// gave up (nothing stored) or the connection is gone. Called only with the writer leased.
    pub(crate) fn write<T>(&self, write: impl FnOnce(&Connection) -> Option<T>) -> Option<T> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked first: a statement run inside a transaction left open would not commit, and
        // its answer would then promise a write that is not stored.
        if !in_autocommit(&mut slot) {
            return None;
        }
        COMMITTED_WAL_FRAMES.set(None);
        let answer = write(slot.as_ref()?);
        if let Some(frames) = COMMITTED_WAL_FRAMES.take() {
            self.wal_frames.store(frames, Ordering::Release);
        }
        // SQLite rolls a failed autocommit statement back by itself, so this finds nothing
        // open; it is here so that no failure, however odd, carries the next caller's write
        // (and what it rolled back is not stored, so the ordinary path runs).
        if !in_autocommit(&mut slot) {
            return None;
        }
        answer
    }

    /// Runs the point read `read` on the connection, as a direct reader would: `None` when it
    /// gave up or the connection is gone. Called only with the writer leased, as `write` is.
    ///
    /// Why: a connection's page cache outlives only its own commits. A read that starts
    /// after another connection's commit finds SQLite's cache emptied and reads the B-tree's
    /// pages again (about three times the CPU of a read on a warm cache), and under a mixed
    /// load every direct reader is in that case, since the writes commit here. While no write
    /// holds the writer, a read here finds the pages its commits left.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Connection) -> Option<T>) -> Option<T> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !in_autocommit(&mut slot) {
            return None;
        }
        let _reading = Reading::start();
        let answer = read(slot.as_ref()?);
        #[cfg(test)]
        if answer.is_some() {
            self.reads.fetch_add(1, Ordering::AcqRel);
        }
        answer
    }

    /// The reads answered here so far.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Acquire)
    }

    /// The frames in the WAL after this connection's last commit, for the checkpoint that
    /// SQLite would have run after it (`checkpoint` runs it instead, off the caller's thread,
    /// and zeroes the count).
    pub(crate) fn wal_frames(&self) -> &AtomicU64 {
        &self.wal_frames
    }

    /// Closes the connection; later writes take the ordinary path.
    pub(crate) fn close(&self) {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(conn);
    }
}

/// Whether the connection in `slot` is in autocommit mode (no transaction open), rolling back
/// what is open if not; a connection that cannot be rolled back is closed (`slot` emptied).
/// `false` when there is no connection, or there was a transaction to roll back.
fn in_autocommit(slot: &mut Option<Connection>) -> bool {
    let Some(conn) = slot.as_ref() else {
        return false;
    };
    if conn.is_autocommit() {
        return true;
    }
    if conn.execute_batch("ROLLBACK").is_err() || !conn.is_autocommit() {
        *slot = None;
    }
    false
}

#[cfg(test)]
mod tests {
    use crate::{Db, DbOptions, ItemPatch, NewAccount, NewItem, Transfer};

    /// The WAL frames after the direct writer's last commit: moves only when a write commits
    /// there.
    fn frames(db: &Db) -> Option<u64> {
        db.handle().connections()?.direct_wal_frames()
    }

    #[tokio::test]
    async fn grouped_writes_commit_on_the_direct_writer_and_refusals_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("direct.db")).await.unwrap();
        for _ in 0..2 {
            db.accounts()
                .open(&NewAccount::new(None, 100))
                .await
                .unwrap();
        }
        // Opens are not grouped writes: they run on sqlx's writer.
        assert_eq!(frames(&db), Some(0));

        let item = db
            .items()
            .create(&NewItem::new("i", serde_json::json!(0)))
            .await
            .unwrap();
        let after_create = frames(&db).unwrap();
        assert!(
            after_create > 0,
            "the create did not commit on the direct writer"
        );

        db.accounts()
            .transfer(&Transfer::new(1, 2, 10))
            .await
            .unwrap();
        let after_transfer = frames(&db).unwrap();
        assert!(
            after_transfer > after_create,
            "the transfer did not commit on the direct writer"
        );

        let patch = ItemPatch {
            data: Some(serde_json::json!(1)),
            ..ItemPatch::default()
        };
        assert!(db.items().update(item, &patch).await.unwrap());
        let after_update = frames(&db).unwrap();
        assert!(
            after_update > after_transfer,
            "the update did not commit there"
        );

        // A refusal commits nothing on the direct writer (the ordinary path names it).
        let err = db.accounts().transfer(&Transfer::new(1, 2, 1_000)).await;
        assert!(
            matches!(err, Err(crate::Error::InsufficientFunds { .. })),
            "{err:?}"
        );
        assert_eq!(frames(&db), Some(after_update));
        db.close().await;

        let off = Db::open_with(DbOptions::new(dir.path().join("off.db")).direct_writes(false))
            .await
            .unwrap();
        assert_eq!(frames(&off), None);
    }

    /// The reads the direct writer answered (`None` without one).
    fn writer_reads(db: &Db) -> Option<u64> {
        db.handle().connections()?.direct_writer_reads()
    }

    #[tokio::test]
    async fn a_get_reads_on_the_direct_writer_when_it_is_free_and_elsewhere_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("reads.db")).await.unwrap();
        let new = NewItem::new("i", serde_json::json!("committed"));
        let id = db.items().create(&new).await.unwrap();
        let before = writer_reads(&db).unwrap();
        let item = db.items().get(id).await.unwrap().unwrap();
        assert_eq!(item.data, serde_json::json!("committed"));
        assert_eq!(
            writer_reads(&db),
            Some(before + 1),
            "not read on the free writer"
        );

        // A transaction holds the writer: a get neither waits for it nor reads there, and sees
        // only what is committed.
        let tx = db.begin().await.unwrap();
        let patch = ItemPatch {
            data: Some(serde_json::json!("uncommitted")),
            ..ItemPatch::default()
        };
        assert!(tx.items().update(id, &patch).await.unwrap());
        let during = db.items().get(id).await.unwrap().unwrap();
        assert_eq!(during.data, serde_json::json!("committed"));
        assert_eq!(
            writer_reads(&db),
            Some(before + 1),
            "read on a taken writer"
        );
        tx.commit().await.unwrap();

        let after = db.items().get(id).await.unwrap().unwrap();
        assert_eq!(after.data, serde_json::json!("uncommitted"));
        assert_eq!(writer_reads(&db), Some(before + 2));
        db.close().await;

        let off = Db::open_with(DbOptions::new(dir.path().join("off.db")).direct_reads(false))
            .await
            .unwrap();
        let id = off.items().create(&new).await.unwrap();
        assert!(off.items().get(id).await.unwrap().is_some());
        assert_eq!(
            writer_reads(&off),
            Some(0),
            "direct reads off, yet read directly"
        );
    }

    /// A read on the direct writer is cut off past the direct readers' step budget, as on a
    /// direct reader; a write of many more steps, before and after it, is not.
    #[test]
    fn the_step_budget_stops_reads_on_the_direct_writer_and_not_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.db");
        let setup = rusqlite::Connection::open(&path).unwrap();
        setup
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER NOT NULL);")
            .unwrap();
        let writer = super::DirectWriter::open(&path, 1 << 20).unwrap();
        let fill = |conn: &rusqlite::Connection| {
            // Tens of thousands of steps: far past the budget a read gets.
            conn.execute(
                "WITH RECURSIVE s (v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 5000)
                 INSERT INTO t (n) SELECT v FROM s",
                [],
            )
            .ok()
        };
        assert_eq!(writer.write(fill), Some(5000));

        let count = |conn: &rusqlite::Connection| {
            conn.query_row("SELECT count(*) FROM t WHERE n % 7 = 0", [], |row| {
                row.get::<_, i64>(0)
            })
            .ok()
        };
        assert_eq!(writer.read(count), None, "a long read was not cut off");
        let short = |conn: &rusqlite::Connection| {
            conn.query_row("SELECT n FROM t WHERE rowid = 42", [], |row| {
                row.get::<_, i64>(0)
            })
            .ok()
        };
        assert_eq!(writer.read(short), Some(42));

        assert_eq!(
            writer.write(fill),
            Some(5000),
            "a write after a read was cut off"
        );
        let stored: i64 = setup
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(stored, 10_000);
    }
}
