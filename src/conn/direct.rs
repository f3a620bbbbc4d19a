//! Point reads answered on the caller's own thread: read-only connections of SQLite's C library
//! (through `rusqlite`), used in place, without sqlx's worker thread.
//!
//! # Why
//!
//! sqlx-sqlite runs every statement on its connection's worker thread, so a point get costs two
//! thread wake-ups (there and back) around a few microseconds of SQLite work, and under many
//! callers those wake-ups are most of the machine's time. A read of one row by its key is
//! bounded work (one index probe, one row decoded), short enough to run where the caller
//! already is, as an in-process SQLite program would. The guide's performance chapter has the
//! figures.
//!
//! # What stays the same
//!
//! - **The statement is the checked one.** Its text is taken from the `query_as!` that the
//!   worker-thread path runs, so sqlx checks it against the schema at build time as it checks
//!   every other statement.
//! - **The answer is the same.** A direct read that meets anything but a clean row (an error of
//!   any kind, `SQLITE_BUSY`, a value that does not decode) gives up and the caller runs the
//!   ordinary read, whose answer or typed error stands. Reads have no effects, so trying twice
//!   changes nothing. The connections wait for no lock (busy timeout zero): a read never stalls
//!   the caller's thread; the ordinary path waits instead, on sqlx's worker.
//! - **Writes are untouched.** The connections are opened read-only. A read may also run on
//!   the writer's direct connection (`direct_write`) while no write holds the writer, never
//!   waiting for it: that connection's page cache survives its own commits (see
//!   `DirectWriter::read`).
//! - **No snapshot is held.** A statement is reset as its read ends, so a direct connection
//!   never keeps an old WAL snapshot that would stop a checkpoint.
//! - **The caller's thread is held briefly.** SQLite interrupts a statement past
//!   [`DIRECT_READ_MOST_STEPS`] steps of its virtual machine (about what a round trip costs: a
//!   dashboard of a user with more than a hundred orders, say), and that read goes to the
//!   ordinary path like any other that gives up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::limits::DIRECT_READ_MOST_STEPS;

/// The read-only connections of one database file that answer point reads in place.
#[derive(Debug)]
pub(crate) struct DirectReaders {
    path: PathBuf,
    /// Connections not in use. A thread takes one for the length of one read.
    idle: Mutex<Vec<Connection>>,
    /// Connections opened so far, in use or idle.
    opened: AtomicUsize,
    /// The most that may be open: one per thread that can be inside a read at once, a few
    /// spare. Past it a read takes the ordinary path.
    most: usize,
    /// Set by `close`: no read starts here afterwards, and connections coming back are closed.
    closed: AtomicBool,
}

impl DirectReaders {
    /// Direct readers of the file at `path` (opened as reads need them).
    pub(crate) fn new(path: &Path) -> DirectReaders {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        DirectReaders {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            opened: AtomicUsize::new(0),
            most: (threads * 2).max(4),
            closed: AtomicBool::new(false),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // Nothing panics while the lock is held; a poisoned list is still a list.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `read` on an idle connection (opening one if none is idle and fewer than the most
    /// are open). `None` when no connection is to be had or `read` gave up: the caller then
    /// runs its ordinary read.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Connection) -> Option<T>) -> Option<T> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let conn = match self.idle().pop() {
            Some(conn) => conn,
            None => self.open()?,
        };
        // Given back when the read ends, a panicking one included (then closed, since a read
        // cut short may have left a statement stepping).
        let lent = Lent {
            readers: self,
            conn: Some(conn),
        };
        read(lent.conn.as_ref()?)
    }

    /// A new connection, counted, or `None` at the most (or when SQLite cannot open one).
    fn open(&self) -> Option<Connection> {
        let taken = self
            .opened
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.most).then_some(open + 1)
            });
        taken.ok()?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // rusqlite's own default waits 5 s for a lock; here a lock is never waited for (see
        // the module's notes).
        let opened = Connection::open_with_flags(&self.path, flags).and_then(|conn| {
            conn.busy_timeout(Duration::ZERO)?;
            // Called once a statement has run that many steps: interrupts it.
            conn.progress_handler(DIRECT_READ_MOST_STEPS, Some(|| true))?;
            Ok(conn)
        });
        match opened {
            Ok(conn) => Some(conn),
            Err(_) => {
                self.opened.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }

    fn forget(&self, conn: Connection) {
        drop(conn);
        self.opened.fetch_sub(1, Ordering::AcqRel);
    }

    /// Closes the idle connections, and those in use as they come back.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.idle());
        for conn in idle {
            self.forget(conn);
        }
    }
}

/// A connection out of [`DirectReaders::idle`] for one read.
struct Lent<'a> {
    readers: &'a DirectReaders,
    conn: Option<Connection>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if std::thread::panicking() || self.readers.closed.load(Ordering::Acquire) {
            self.readers.forget(conn);
        } else {
            self.readers.idle().push(conn);
        }
    }
}
