//! The group-commit thread: the one place where store work blocks.
//!
//! The core sends [`StoreJob`]s down a bounded channel and keeps serving. This thread waits for the
//! first job, then takes every job already queued (up to [`MAX_STORE_BATCH`]) and applies them all
//! in one [`Store::execute`] call, that is one transaction and one fsync. While that commit runs,
//! new jobs queue up and form the next batch, so the commit rate adapts to load: one op per commit
//! when idle, up to `MAX_STORE_BATCH` per commit when busy.
//!
//! Results go back through the `done` callback, once per batch, as `(ticket, reply)` pairs in the
//! order the jobs were received. The callback runs on this thread; it must hand the results on
//! (typically by a channel send) rather than do work of its own.
//!
//! Shutdown: when every sender of the channel is dropped, the thread applies what is still queued,
//! reports it, and exits, dropping (closing) the store. A store error is reported with `done(Err)`
//! and ends the thread at once: after a failed commit the in-memory state of the server no longer
//! matches the disk, so nothing more may be written.

use std::thread::JoinHandle;

use async_channel::Receiver;

use super::{Store, StoreError, StoreOp, StoreReply};
use crate::config::MAX_STORE_BATCH;

/// Chosen by the sender to match a reply with its op.
pub type Ticket = u64;

/// One op and the ticket its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreJob {
    pub ticket: Ticket,
    pub op: StoreOp,
}

/// What the worker reports for one batch.
pub type BatchResult = Result<Vec<(Ticket, StoreReply)>, StoreError>;

/// Start the store thread (named `chatd-store`). It runs until `jobs` is closed and drained, or
/// until the store fails; join the handle to wait for the final flush.
pub fn spawn<F>(
    store: Box<dyn Store>,
    jobs: Receiver<StoreJob>,
    done: F,
) -> std::io::Result<JoinHandle<()>>
where
    F: FnMut(BatchResult) + Send + 'static,
{
    std::thread::Builder::new()
        .name("chatd-store".to_owned())
        .spawn(move || run(store, &jobs, done))
}

fn run<F>(mut store: Box<dyn Store>, jobs: &Receiver<StoreJob>, mut done: F)
where
    F: FnMut(BatchResult),
{
    let mut tickets = Vec::with_capacity(MAX_STORE_BATCH);
    let mut ops = Vec::with_capacity(MAX_STORE_BATCH);
    // recv_blocking fails only once the channel is closed and empty: everything sent was applied.
    while let Ok(first) = jobs.recv_blocking() {
        tickets.push(first.ticket);
        ops.push(first.op);
        while ops.len() < MAX_STORE_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    tickets.push(job.ticket);
                    ops.push(job.op);
                }
                Err(_) => break,
            }
        }
        let result = store.execute(&ops).and_then(|replies| {
            if replies.len() == ops.len() {
                Ok(tickets.drain(..).zip(replies).collect())
            } else {
                Err(StoreError::Commit(format!(
                    "store returned {} replies for {} ops",
                    replies.len(),
                    ops.len()
                )))
            }
        });
        ops.clear();
        tickets.clear();
        let failed = result.is_err();
        if let Err(e) = &result {
            log::error!("store failed, no further writes: {e}");
        }
        done(result);
        if failed {
            return;
        }
    }
    log::debug!("store queue closed and drained; closing the database");
}
