//! A fair wait for *any* free connection of a fixed set: SQLite's readers and each PostgreSQL
//! server's held connections lend through it.
//!
//! Waiting on one connection chosen in turn (as these pools once did) makes a caller wait for
//! *that* connection even while others are idle: one `Tx` held for 8 s made a read queued
//! behind it fail [`Error::Busy`](crate::Error::Busy) after 5 s with 15 of 16 connections
//! free. Here a caller first takes a permit of a fair (FIFO) semaphore with one permit per
//! connection, then the index of a free connection from a stack: whoever waits longest gets
//! the first connection that frees, whichever it is.
//!
//! The stack hands out the most recently returned index first, so a caller alone keeps reusing
//! one warm connection (its worker thread hot on SQLite, its statements cached on PostgreSQL).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The free indexes of a set of connections, and the fair queue of those waiting for one.
#[derive(Debug)]
pub(crate) struct FreeSlots {
    /// One permit per index on the stack; fair: waiters are served in the order they came.
    permits: Arc<Semaphore>,
    /// The free indexes; the last pushed is taken first.
    free: std::sync::Mutex<Vec<usize>>,
}

/// The right to use connection [`Ticket::index`] alone; the index is free again on drop.
#[derive(Debug)]
pub(crate) struct Ticket {
    slots: Arc<FreeSlots>,
    index: usize,
    /// Released after `Drop` put the index back, so a permit always finds an index.
    _permit: OwnedSemaphorePermit,
}

/// Why no ticket was had.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoTicket {
    /// Every connection stayed taken for the whole wait.
    TimedOut,
    /// [`FreeSlots::close`] was called.
    Closed,
}

impl FreeSlots {
    /// `count` free connections, indexes `0..count`, index 0 taken first.
    pub(crate) fn new(count: usize) -> Arc<FreeSlots> {
        Arc::new(FreeSlots {
            permits: Arc::new(Semaphore::new(count)),
            free: std::sync::Mutex::new((0..count).rev().collect()),
        })
    }

    /// A free connection if there is one now, without a timer.
    pub(crate) fn take_now(self: &Arc<Self>) -> Result<Ticket, NoTicket> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(self.ticket(permit)),
            Err(TryAcquireError::NoPermits) => Err(NoTicket::TimedOut),
            Err(TryAcquireError::Closed) => Err(NoTicket::Closed),
        }
    }

    /// The first connection to come free, waiting in line at most `wait`. A free one is taken
    /// without a timer, so a runtime without Tokio's time driver works while calls do not queue.
    pub(crate) async fn take(self: &Arc<Self>, wait: Duration) -> Result<Ticket, NoTicket> {
        match self.take_now() {
            Err(NoTicket::TimedOut) => {}
            other => return other,
        }
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.ticket(permit)),
            Ok(Err(_)) => Err(NoTicket::Closed),
            Err(_) => Err(NoTicket::TimedOut),
        }
    }

    /// Refuses every later [`take`](FreeSlots::take), and wakes those waiting with
    /// [`NoTicket::Closed`]. (SQLite's readers are closed by emptying them instead.)
    #[cfg_attr(not(any(feature = "postgres", test)), expect(dead_code))]
    pub(crate) fn close(&self) {
        self.permits.close();
    }

    fn ticket(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Ticket {
        let index = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        // A permit is released only after its index is back on the stack (`Ticket::drop`), so
        // the stack holds at least one index per available permit.
        let index = index.unwrap_or_default();
        Ticket {
            slots: self.clone(),
            index,
            _permit: permit,
        }
    }
}

impl Ticket {
    /// The connection this ticket lends.
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.slots
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_alone_keeps_reusing_the_first_connection() {
        let slots = FreeSlots::new(3);
        for _ in 0..3 {
            assert_eq!(slots.take_now().unwrap().index(), 0);
        }
    }

    #[tokio::test]
    async fn a_waiter_gets_whichever_connection_frees_first() {
        let slots = FreeSlots::new(2);
        let first = slots.take_now().unwrap();
        let second = slots.take_now().unwrap();
        assert_eq!(slots.take_now().unwrap_err(), NoTicket::TimedOut);
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(Duration::from_secs(5)).await.map(|t| t.index) })
        };
        tokio::task::yield_now().await;
        let freed = second.index();
        drop(second);
        assert_eq!(waiter.await.unwrap(), Ok(freed));
        drop(first);
    }

    #[tokio::test]
    async fn waiters_are_served_in_the_order_they_came() {
        let slots = FreeSlots::new(1);
        let held = slots.take_now().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..5 {
            let (slots, order) = (slots.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let ticket = slots.take(Duration::from_secs(5)).await.unwrap();
                order.lock().unwrap().push(n);
                drop(ticket);
            }));
            // Each waiter queues before the next is spawned.
            tokio::task::yield_now().await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_wait_past_its_limit_times_out_and_close_refuses() {
        let slots = FreeSlots::new(1);
        let _held = slots.take_now().unwrap();
        assert_eq!(
            slots.take(Duration::from_millis(20)).await.unwrap_err(),
            NoTicket::TimedOut
        );
        slots.close();
        assert_eq!(
            slots.take(Duration::from_millis(20)).await.unwrap_err(),
            NoTicket::Closed
        );
    }
}
