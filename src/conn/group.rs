//! Group commit: writes of several callers that queue for a database's one writer are carried
//! together, in one statement or one transaction, by whichever of them gets the writer. The
//! same mechanism coalesces point reads that queue for the read connections into one statement.
//!
//! # Why
//!
//! Every statement costs one round trip to sqlx's worker thread, whatever SQLite does, and
//! that round trip is most of a point operation's cost (the guide's performance chapter has
//! the figures). With one writer, 16 callers' transfers used to wait in line for 16 round trips
//! and 16 commits. A group of them as one `INSERT … SELECT … FROM json_each(?)` costs one round
//! trip and one commit, and little more per member.
//!
//! # How
//!
//! - **Nobody waiting, nothing extra.** A caller that finds the writer free and nobody queued
//!   runs exactly the ungrouped path ([`Grouped::apply_one`]) on its own: no timer waits
//!   for company, no task is spawned.
//! - **Queued callers are carried.** A caller that finds the writer taken puts its request in
//!   the queue of its kind and waits for whichever comes first: its answer, or the writer. The
//!   one that gets the writer takes everything queued (up to [`MAX_GROUP`]) and applies it as a
//!   group ([`Grouped::apply_group`]); each member gets its own result through a channel.
//! - **A group outlives its callers.** Once members are taken, the group runs either as one
//!   statement on the direct writer (see `direct_write`), with no await between taking the
//!   members and answering them, or on sqlx's writer in a task of its own; so a caller that
//!   drops its future (its request cancelled, or the one that happened to take the writer)
//!   neither breaks the group nor leaves the writer in doubt, and each member still listening
//!   is answered. A caller that drops its future while its request is still
//!   queued takes the request out: it is never applied.
//! - **A caller's order is kept.** A caller's write is answered only once it is committed (or
//!   refused), so the next write it makes starts after it. Inside a queue, requests keep their
//!   arrival order.
//! - **Timeouts mean nothing stored.** A queued caller that waits past the busy timeout takes
//!   its request out and returns [`Error::Busy`]; if a group has already taken it, it waits for
//!   the group's answer instead, so `Busy` never hides a write that lands.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use super::handle::{Conn, Handle};
use super::pool::{Connections, Lease};
use crate::error::{Error, Result};

pub use crate::limits::MAX_GROUP;

/// A kind of call that several callers' requests can share one trip to a connection for: a
/// write (carried to the writer together, one commit) or a point read (answered by one
/// statement).
///
/// Implement it on a marker type and call [`Handle::write_grouped`](super::Handle::write_grouped)
/// or [`Handle::read_grouped`](super::Handle::read_grouped) with a request. [`apply_group`](Grouped::apply_group) must give every request exactly the
/// result it would get alone: a refused request must not fail its neighbours (the usual way is
/// one statement for the group and, when the database refuses it, each request again alone),
/// and an `Ok` must mean that request's write is committed.
pub trait Grouped: Send + Sync + 'static {
    /// One caller's request.
    type Request: Send + Sync + 'static;
    /// What a successful request returns to its caller.
    type Outcome: Send + 'static;

    /// Applies one request alone: the path a caller with nobody queued runs, unchanged.
    fn apply_one(
        conn: &mut Conn,
        request: &Self::Request,
    ) -> impl Future<Output = Result<Self::Outcome>> + Send;

    /// Applies several requests, returning one result per request, in their order.
    fn apply_group(
        conn: &mut Conn,
        requests: &[Self::Request],
    ) -> impl Future<Output = Vec<Result<Self::Outcome>>> + Send;

    /// Applies one write on the caller's own thread, on the writer's direct connection (see
    /// [`DbOptions::direct_writes`](crate::DbOptions::direct_writes)), as one statement in
    /// autocommit mode stepped to its end: `Some` only once it committed cleanly; `None` when
    /// it did not (a refusal, a lock, any error: SQLite then stored nothing), and
    /// [`apply_one`](Grouped::apply_one) runs instead, whose answer or error stands. `None`
    /// must never follow a commit. The default has no direct form: always `None`.
    fn apply_one_direct(
        conn: &rusqlite::Connection,
        request: &Self::Request,
    ) -> Option<Self::Outcome> {
        let _ = (conn, request);
        None
    }

    /// [`apply_one_direct`](Grouped::apply_one_direct) for a group, as one statement: one
    /// outcome per request, in their order, or `None` (nothing stored) for
    /// [`apply_group`](Grouped::apply_group) to run instead. The default: always `None`.
    fn apply_group_direct(
        conn: &rusqlite::Connection,
        requests: &[Self::Request],
    ) -> Option<Vec<Self::Outcome>> {
        let _ = (conn, requests);
        None
    }
}

/// The requests of one kind waiting for the writer.
struct Queue<G: Grouped> {
    pending: Mutex<VecDeque<Pending<G>>>,
    next_id: AtomicU64,
}

struct Pending<G: Grouped> {
    id: u64,
    request: G::Request,
    answer: oneshot::Sender<Result<G::Outcome>>,
}

impl<G: Grouped> Default for Queue<G> {
    fn default() -> Self {
        Queue {
            pending: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<G: Grouped> Queue<G> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending<G>>> {
        // Nothing here panics while holding the lock; a poisoned queue is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, request: G::Request, answer: oneshot::Sender<Result<G::Outcome>>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push_back(Pending {
            id,
            request,
            answer,
        });
        id
    }

    /// Takes up to [`MAX_GROUP`] requests, oldest first.
    fn take(&self) -> Vec<Pending<G>> {
        let mut pending = self.lock();
        let n = pending.len().min(MAX_GROUP);
        pending.drain(..n).collect()
    }

    /// Takes request `id` out if it is still queued; `false` when a group has it.
    fn remove(&self, id: u64) -> bool {
        let mut pending = self.lock();
        match pending.iter().position(|p| p.id == id) {
            Some(index) => {
                pending.remove(index);
                true
            }
            None => false,
        }
    }
}

/// Takes a queued request out when its caller stops waiting (its future dropped) before it
/// reached the writer.
struct Withdraw<'q, G: Grouped> {
    queue: &'q Queue<G>,
    id: u64,
    armed: bool,
}

impl<G: Grouped> Drop for Withdraw<'_, G> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.remove(self.id);
        }
    }
}

/// Which connections a kind of grouped work runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The one writer.
    Writer,
    /// Any of the read-only connections.
    Reader,
}

impl Side {
    fn grouping(self, connections: &Connections) -> bool {
        match self {
            Side::Writer => connections.groups_writes(),
            Side::Reader => connections.groups_reads(),
        }
    }

    async fn lease_now(self, connections: &Connections) -> Option<Result<Lease>> {
        match self {
            Side::Writer => connections.write_lease_now().await,
            Side::Reader => connections.read_lease_now().await,
        }
    }

    async fn lease(self, connections: &Connections) -> Result<Lease> {
        match self {
            Side::Writer => connections.write_lease().await,
            Side::Reader => connections.read_lease().await,
        }
    }
}

// Group commit through any `Handle`: defined here rather than in `handle.rs`, so that this
// module depends on `Handle` and `Conn` and not the other way round.
impl Handle {
    /// Applies one write of kind `G`, carried in one trip to the writer with other callers'
    /// writes of the same kind when they queue for it together (group commit, see
    /// [`Grouped`]). A caller with nobody queued runs [`Grouped::apply_one`] exactly as
    /// it would alone; inside a [`Tx`](crate::Tx), and on a caller's own pool, writes are
    /// never grouped.
    ///
    /// # Errors
    /// Whatever `G` returns for this request; [`Error::Busy`] when the writer stays taken past
    /// the busy timeout (the request was then not applied); [`Error::Database`] (`WorkerCrashed`)
    /// if the group carrying the request stopped without answering (its runtime shut down).
    pub async fn write_grouped<G: Grouped>(&self, request: G::Request) -> Result<G::Outcome> {
        match self.connections() {
            Some(connections) => run::<G>(connections, Side::Writer, request).await,
            None => {
                let mut conn = self.writer().await?;
                G::apply_one(&mut conn, &request).await
            }
        }
    }

    /// Runs one read of kind `G` on a reader, sharing one statement with other callers' reads
    /// of the same kind when every reader is taken and they queue together (for example point
    /// gets answered by one `get_many`-style statement). A caller that finds a reader idle
    /// runs [`Grouped::apply_one`] exactly as it would alone; inside a [`Tx`](crate::Tx),
    /// and on a caller's own pool, reads are never grouped.
    ///
    /// # Errors
    /// Whatever `G` returns for this request; [`Error::Busy`] when every reader stays taken
    /// past the busy timeout.
    pub async fn read_grouped<G: Grouped>(&self, request: G::Request) -> Result<G::Outcome> {
        match self.connections() {
            Some(connections) if connections.groups_reads() => {
                run::<G>(connections, Side::Reader, request).await
            }
            // Not grouped (PostgreSQL, a caller's pool): one read, bounded on a replica.
            Some(_) => {
                let request = &request;
                self.read(move |mut conn| async move { G::apply_one(&mut conn, request).await })
                    .await
            }
            None => {
                let mut conn = self.reader().await?;
                G::apply_one(&mut conn, &request).await
            }
        }
    }
}

/// Applies `request` on a connection of `side` (the database's writer, or a reader), carried
/// with other callers' requests of the same kind when they queue together (see the module
/// docs).
pub(crate) async fn run<G: Grouped>(
    connections: &Connections,
    side: Side,
    request: G::Request,
) -> Result<G::Outcome> {
    let queue = match connections.extensions().get::<Queue<G>>() {
        Some(queue) if side.grouping(connections) => queue,
        _ => return alone::<G>(side, side.lease(connections).await?, &request).await,
    };

    // A connection is free: nobody is ahead of us. Today's path, unless requests queued
    // meanwhile (their callers have not reached a connection yet), which we then carry too.
    if let Some(lease) = side.lease_now(connections).await {
        let lease = lease?;
        let mut members = queue.take();
        if members.is_empty() {
            return alone::<G>(side, lease, &request).await;
        }
        let (answer, answered) = oneshot::channel();
        members.push(Pending {
            id: u64::MAX,
            request,
            answer,
        });
        start_group::<G>(side, lease, members).await;
        return received(answered.await);
    }

    // Taken: queue, and wait for an answer or a connection, whichever comes first.
    let (answer, mut answered) = oneshot::channel();
    let id = queue.push(request, answer);
    let mut withdraw = Withdraw {
        queue: &queue,
        id,
        armed: true,
    };
    tokio::select! {
        // An answer first: a group carried us; the writer is left to the next caller.
        biased;
        outcome = &mut answered => received(outcome),
        lease = side.lease(connections) => {
            // The guard is no longer needed: before this future next awaits, the lines below
            // take the request out of the queue (to run it, or to give up), or find that a group
            // has it.
            withdraw.armed = false;
            let lease = match lease {
                Ok(lease) => lease,
                Err(err) => {
                    // Not taken by a group: nothing will be stored, say why. Taken: wait for
                    // the group's answer (no timeout: the group is running).
                    if queue.remove(id) {
                        return Err(err);
                    }
                    return received(answered.await);
                }
            };
            let mut members = queue.take();
            match members.as_slice() {
                // A group took ours already; its answer is on the way.
                [] => {
                    drop(lease);
                    received(answered.await)
                }
                // Only ours: the ungrouped path, here (nobody else depends on this future).
                [only] if only.id == id => {
                    let Some(Pending { request, .. }) = members.pop() else {
                        return received(answered.await);
                    };
                    alone::<G>(side, lease, &request).await
                }
                _ => {
                    start_group::<G>(side, lease, members).await;
                    received(answered.await)
                }
            }
        }
    }
}

/// One request on a connection of `side`, as it ran before groups existed; on the writer,
/// first on the caller's thread when `G` has a direct form (see `direct_write`).
async fn alone<G: Grouped>(side: Side, lease: Lease, request: &G::Request) -> Result<G::Outcome> {
    let mut conn = Conn::lease(lease);
    if side == Side::Writer
        && let Some(outcome) = conn.write_direct(|direct| G::apply_one_direct(direct, request))
    {
        drop(conn);
        // A write that never waits owes the runtime a turn, as a direct read does (see
        // `Handle::read_direct`): a task looping over writes would otherwise keep its thread.
        tokio::task::yield_now().await;
        return Ok(outcome);
    }
    G::apply_one(&mut conn, request).await
}

/// Applies a group and answers each member: on the writer, first as one statement on the
/// caller's thread when `G` has a direct form (no await in it, so no cancellation can stop it
/// halfway); else in a task of its own (so no caller's cancellation can stop it halfway), or,
/// without a Tokio runtime at hand, here.
async fn start_group<G: Grouped>(side: Side, lease: Lease, members: Vec<Pending<G>>) {
    let (requests, answers): (Vec<G::Request>, Vec<_>) = members
        .into_iter()
        .map(|member| (member.request, member.answer))
        .unzip();
    tracing::debug!(members = requests.len(), "group commit");
    let mut conn = Conn::lease(lease);
    if side == Side::Writer
        && let Some(outcomes) = conn.write_direct(|direct| G::apply_group_direct(direct, &requests))
    {
        drop(conn);
        answer_all::<G>(answers, outcomes.into_iter().map(Ok));
        // The runtime's turn, as after a lone direct write (see `alone`).
        tokio::task::yield_now().await;
        return;
    }
    let work = async move {
        let outcomes = G::apply_group(&mut conn, &requests).await;
        // Answered before the writer is released: every Ok is already committed.
        answer_all::<G>(answers, outcomes);
        drop(conn);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(work);
        }
        Err(_) => work.await,
    }
}

/// Sends each member its outcome, in order; a member left without one (which `Grouped`'s
/// contract rules out) is told its write's fate is unknown.
fn answer_all<G: Grouped>(
    answers: Vec<oneshot::Sender<Result<G::Outcome>>>,
    outcomes: impl IntoIterator<Item = Result<G::Outcome>>,
) {
    let mut outcomes = outcomes.into_iter();
    for answer in answers {
        let outcome = outcomes
            .next()
            .unwrap_or(Err(Error::Database(sqlx::Error::WorkerCrashed)));
        // A caller that stopped listening needs no answer.
        let _ = answer.send(outcome);
    }
}

/// A member's answer; a group that stopped without answering (its task panicked, or the
/// runtime shut down) leaves the write's fate unknown, which is reported as an error.
fn received<T>(answer: std::result::Result<Result<T>, oneshot::error::RecvError>) -> Result<T> {
    answer.unwrap_or(Err(Error::Database(sqlx::Error::WorkerCrashed)))
}
