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
                Err(StoreError::ReplyCount {
                    ops: ops.len(),
                    replies: replies.len(),
                })
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{Conversation, Cursor, MessageRecord, To};

    fn append(id: u64, pending: &str) -> StoreOp {
        StoreOp::AppendMessage {
            msg: message(id),
            pending_for: vec![pending.to_owned()],
        }
    }

    fn message(id: u64) -> MessageRecord {
        MessageRecord {
            id,
            time_ms: 0,
            from: "a".into(),
            to: To::User("b".into()),
            text: format!("m{id}"),
        }
    }

    /// Start a worker whose `done` forwards each batch to the returned receiver.
    fn start(
        store: Box<dyn Store>,
        jobs: Receiver<StoreJob>,
    ) -> (JoinHandle<()>, mpsc::Receiver<BatchResult>) {
        let (tx, rx) = mpsc::channel();
        let handle = spawn(store, jobs, move |r| tx.send(r).unwrap()).unwrap();
        (handle, rx)
    }

    #[test]
    fn queued_jobs_are_committed_together_and_answered_in_order() {
        let (tx, rx) = async_channel::bounded(4096);
        // Each even job appends a message for its own user; the odd job after it takes that
        // user's backlog, so each reply can only be right if ops ran in order with the right ticket.
        let n = 2 * MAX_STORE_BATCH + 100;
        for i in 0..n as u64 {
            let user = format!("u{}", i / 2);
            let op = if i % 2 == 0 {
                append(i + 1, &user)
            } else {
                StoreOp::TakeBacklog { user }
            };
            tx.send_blocking(StoreJob {
                ticket: 1000 + i,
                op,
            })
            .unwrap();
        }
        drop(tx);
        let (handle, done) = start(Box::new(MemoryStore::new().0), rx);
        handle.join().unwrap();
        let batches: Vec<_> = done.iter().map(Result::unwrap).collect();
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_STORE_BATCH, MAX_STORE_BATCH, 100]
        );
        for (i, (ticket, reply)) in batches.into_iter().flatten().enumerate() {
            let i = i as u64;
            assert_eq!(ticket, 1000 + i);
            let want = if i.is_multiple_of(2) {
                StoreReply::Done
            } else {
                StoreReply::Backlog(vec![message(i)])
            };
            assert_eq!(reply, want, "job {i}");
        }
    }

    #[test]
    fn closing_the_channel_flushes_and_closes_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let (store, _) = crate::store::redb::RedbStore::open(&path).unwrap();
        let (tx, rx) = async_channel::bounded(64);
        let (handle, done) = start(Box::new(store), rx);
        for i in 1..=50 {
            tx.send_blocking(StoreJob {
                ticket: i,
                op: append(i, "b"),
            })
            .unwrap();
        }
        drop(tx);
        handle.join().unwrap();
        let answered: usize = done.iter().map(|r| r.unwrap().len()).sum();
        assert_eq!(answered, 50);
        // The worker dropped the store, so the file can be opened again, with everything in it.
        let (_, snap) = crate::store::redb::RedbStore::open(&path).unwrap();
        assert_eq!(
            (snap.next_id, snap.pending_counts),
            (51, vec![("b".to_owned(), 50)])
        );
    }

    /// A store that reports each batch it starts and waits for permission to finish it.
    struct GateStore {
        inner: MemoryStore,
        started: mpsc::Sender<usize>,
        go: mpsc::Receiver<()>,
    }

    impl Store for GateStore {
        fn execute(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            self.started.send(ops.len()).unwrap();
            self.go.recv().unwrap();
            self.inner.execute(ops)
        }
    }

    #[test]
    fn jobs_sent_during_a_commit_form_the_next_batch() {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let store = GateStore {
            inner: MemoryStore::new().0,
            started: started_tx,
            go: go_rx,
        };
        let (tx, rx) = async_channel::bounded(64);
        let (handle, done) = start(Box::new(store), rx);
        let history = |ticket| StoreJob {
            ticket,
            op: StoreOp::History {
                conv: Conversation::Broadcast,
                count: 1,
                cursor: Cursor::Latest,
            },
        };

        tx.send_blocking(history(0)).unwrap();
        assert_eq!(started.recv().unwrap(), 1);
        for t in 1..=10 {
            tx.send_blocking(history(t)).unwrap();
        }
        go.send(()).unwrap();
        assert_eq!(done.recv().unwrap().unwrap().len(), 1);
        assert_eq!(started.recv().unwrap(), 10);
        go.send(()).unwrap();
        let second = done.recv().unwrap().unwrap();
        assert_eq!(
            second.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        drop(tx);
        handle.join().unwrap();
    }

    /// Fails every batch after the first.
    struct FailAfterOne(bool);

    impl Store for FailAfterOne {
        fn execute(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            if std::mem::replace(&mut self.0, true) {
                Err(StoreError::Write {
                    path: "test.redb".into(),
                    source: ::redb::Error::Io(std::io::Error::other("disk full")),
                })
            } else {
                Ok(vec![StoreReply::Done; ops.len()])
            }
        }
    }

    #[test]
    fn a_store_error_is_reported_once_and_ends_the_worker() {
        let (tx, rx) = async_channel::bounded(64);
        let (handle, done) = start(Box::new(FailAfterOne(false)), rx);
        tx.send_blocking(StoreJob {
            ticket: 1,
            op: append(1, "b"),
        })
        .unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), vec![(1, StoreReply::Done)]);
        tx.send_blocking(StoreJob {
            ticket: 2,
            op: append(2, "b"),
        })
        .unwrap();
        assert!(matches!(
            done.recv().unwrap(),
            Err(StoreError::Write { .. })
        ));
        // The worker stops even though the channel is still open, and takes no more jobs.
        handle.join().unwrap();
        assert!(tx
            .send_blocking(StoreJob {
                ticket: 3,
                op: append(3, "b")
            })
            .is_err());
        assert!(done.recv().is_err());
    }

    /// A store that answers the wrong number of ops breaks the ticket matching; it is an error.
    struct ShortStore;

    impl Store for ShortStore {
        fn execute(&mut self, _: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            Ok(vec![StoreReply::Done])
        }
    }

    #[test]
    fn a_reply_count_mismatch_is_an_error() {
        let (tx, rx) = async_channel::bounded(64);
        for t in 0..3 {
            tx.send_blocking(StoreJob {
                ticket: t,
                op: append(t + 1, "b"),
            })
            .unwrap();
        }
        let (handle, done) = start(Box::new(ShortStore), rx);
        handle.join().unwrap();
        assert!(matches!(
            done.recv().unwrap(),
            Err(StoreError::ReplyCount { ops: 3, replies: 1 })
        ));
    }

    #[test]
    fn the_thread_is_named() {
        let (tx, rx) = async_channel::bounded(1);
        let (name_tx, name_rx) = mpsc::channel();
        let handle = spawn(Box::new(MemoryStore::new().0), rx, move |_| {
            name_tx
                .send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        })
        .unwrap();
        tx.send_blocking(StoreJob {
            ticket: 0,
            op: StoreOp::TakeBacklog { user: "x".into() },
        })
        .unwrap();
        assert_eq!(name_rx.recv().unwrap().as_deref(), Some("chatd-store"));
        drop(tx);
        handle.join().unwrap();
    }
}
