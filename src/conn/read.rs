//! [`Handle::read`]: a read that a replica must answer within [`REPLICA_WAIT`], or the primary
//! answers it instead.
//!
//! A replica is chosen, and its connection lent, within that wait; but the statement itself
//! could still meet a replica that stops answering (its processes stopped, a network that
//! drops packets), and a read would then wait as long as the operating system keeps the
//! connection. Reads are idempotent, so a read that a replica does not finish in time, or
//! whose replica connection breaks, is run again on the primary: the caller gets its answer,
//! late by at most the wait, and the replica rests (its connection is dropped, not lent again).

use std::future::Future;

use super::handle::{Conn, Handle};
use crate::error::{Error, Result};

/// How long a read may take on a replica before it is sent to the primary.
#[cfg(feature = "postgres")]
use super::postgres::REPLICA_WAIT;
#[cfg(not(feature = "postgres"))]
const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Handle {
    /// Runs the read `op` on [`Handle::reader`]'s connection; when that is a replica's and
    /// `op` does not finish within [`REPLICA_WAIT`] or meets a broken connection, runs it
    /// again on the primary. `op` must only read (it may run twice).
    ///
    /// # Errors
    /// Those of [`Handle::reader`] and of `op` (on the primary, when it ran there).
    pub(crate) async fn read<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let conn = self.reader().await?;
        if !conn.on_replica() {
            return op(conn).await;
        }
        let mut attempt = Box::pin(op(conn));
        match tokio::time::timeout(REPLICA_WAIT, &mut attempt).await {
            // A broken replica connection (the server shut down or restarted): the slot
            // checks it at its next lease; this read goes to the primary.
            Ok(Err(Error::Unavailable(_))) => drop(attempt),
            Ok(done) => return done,
            Err(_) => abandon(attempt),
        }
        op(self.primary_reader().await?).await
    }

    /// A connection to read on the primary (a PostgreSQL `Db`), or [`Handle::reader`]'s.
    async fn primary_reader(&self) -> Result<Conn> {
        match self.connections() {
            Some(connections) => Ok(Conn::lease(connections.primary_read_lease().await?)),
            None => self.reader().await,
        }
    }
}

/// Drops a read that ran out of time, so its replica connection is not lent again.
fn abandon<T>(attempt: T) {
    #[cfg(feature = "postgres")]
    super::pg_held::abandon(attempt);
    #[cfg(not(feature = "postgres"))]
    drop(attempt);
}
