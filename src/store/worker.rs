//! The store threads: the one place where store work blocks.
//!
//! The core sends [`StoreJob`]s down a bounded channel and keeps serving. Two threads serve it:
//!
//! - The writer (`chatd-store`) waits for the first job, then takes every job already queued (up
//!   to [`MAX_STORE_BATCH`]): that is one batch. It applies the batch's write ops in one
//!   [`Store::write`] call, that is one transaction and one fsync, and reports their results. Then
//!   it takes a [`Store::reader`], a read transaction that sees that commit and nothing later,
//!   hands it with the batch's read ops ([`StoreOp::is_read`]) to the reader thread, and goes on to
//!   the next batch. A batch without writes skips the write transaction; one without reads skips
//!   the reader. While a commit runs, new jobs queue up and form the next batch, so the commit
//!   rate adapts to load: one op per commit when idle, up to `MAX_STORE_BATCH` per commit when
//!   busy.
//! - The reader (`chatd-store-read`) answers each batch's reads from the view it was handed, batch
//!   after batch, and reports their results.
//!
//! So a long read (a 500-message HISTORY page) holds up later reads, never a commit.
//!
//! Results go back through the `done` callback as lists of `(ticket, reply)` pairs: a batch's
//! write results in one call, its read results in another. The callback runs on either thread,
//! never on both at once; it must hand the results on (typically by a channel send) rather than do
//! work of its own.
//!
//! # Ordering
//!
//! Guaranteed:
//! - Every op is answered once, with its ticket (unless the store fails, below).
//! - Writes are answered in the order they were sent, and reads in the order they were sent.
//! - A read sees every write sent before it, and is answered after them.
//! - A read sees no write whose answer has not been reported before the read's own. (It sees the
//!   writes of its own batch, including those sent after it, and of earlier batches; all of them
//!   were answered before the batch's reads started.)
//!
//! Not guaranteed: anything about a write sent after a read. The read may see it (when both are in
//! one batch) or not, and the write may be answered before the read (always, when the read sees
//! it) or after.
//!
//! # Shutdown and failure
//!
//! When every sender of the channel is dropped, the writer applies what is still queued and
//! reports it, the reader answers the last reads, and both exit, dropping (closing) the store;
//! joining the handle [`spawn`] returns waits for both.
//!
//! A read that fails (a record that does not decode, an I/O error while reading, or no view to
//! read from) fails alone: it is answered with [`StoreReply::Unreadable`] and everything else goes
//! on. A failed write is reported with `done(Err)`, once, and ends both threads: nothing is
//! reported after it, the job channel is closed, and the writer takes no more jobs. After a failed
//! commit the in-memory state of the server no longer matches the disk, so nothing more may be
//! written.

use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_channel::Receiver;

use super::{ReadOp, Store, StoreError, StoreOp, StoreReader, StoreReply, Unreadable};
use crate::config::MAX_STORE_BATCH;

/// Chosen by the sender to match a reply with its op.
pub type Ticket = u64;

/// One op and the ticket its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreJob {
    pub ticket: Ticket,
    pub op: StoreOp,
}

/// What the worker reports for the writes or the reads of one batch.
pub type BatchResult = Result<Vec<(Ticket, StoreReply)>, StoreError>;

/// Start the store threads (named `chatd-store` and `chatd-store-read`). They run until `jobs` is
/// closed and drained, or until the store fails; join the handle to wait for the final flush.
pub fn spawn<F>(
    store: Box<dyn Store>,
    jobs: Receiver<StoreJob>,
    done: F,
) -> std::io::Result<JoinHandle<()>>
where
    F: FnMut(BatchResult) + Send + 'static,
{
    let reporter = Arc::new(Reporter {
        state: Mutex::new((done, false)),
        jobs: jobs.clone(),
    });
    // Unbounded, yet never long: every read in it is an op the core counts as in flight, and the
    // core stops sending past MAX_STORE_INFLIGHT. A bound here would let a slow read stall the
    // writer, which is what the reader thread is for.
    let (to_reader, batches) = mpsc::channel::<ReadBatch>();
    let reader = {
        let reporter = reporter.clone();
        std::thread::Builder::new()
            .name("chatd-store-read".to_owned())
            .spawn(move || read_loop(&batches, &reporter))?
    };
    // If this spawn fails, `to_reader` is dropped with the closure and the reader exits.
    std::thread::Builder::new()
        .name("chatd-store".to_owned())
        .spawn(move || {
            write_loop(store, &jobs, to_reader, &reporter);
            // The writer has dropped its end: the reader answers what it holds, then exits.
            let _ = reader.join();
        })
}

/// The `done` callback, shared by both threads, and whether the store has failed.
struct Reporter<F> {
    state: Mutex<(F, bool)>,
    /// Closed on failure, so that senders learn the worker is gone.
    jobs: Receiver<StoreJob>,
}

impl<F: FnMut(BatchResult)> Reporter<F> {
    /// Reports one result, unless the store has already failed. Returns whether the worker may go
    /// on.
    fn report(&self, result: BatchResult) -> bool {
        // A panic in `done` while this is held cannot leave the flag half-set.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, failed) = &mut *state;
        if *failed {
            return false;
        }
        if let Err(e) = &result {
            log::error!("store failed, no further writes: {e}");
            *failed = true;
            self.jobs.close();
        }
        done(result);
        !*failed
    }

    fn failed(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

/// The reads of one batch and the view that answers them (or why there is none).
struct ReadBatch {
    view: Result<Box<dyn StoreReader>, Unreadable>,
    reads: Vec<(Ticket, ReadOp)>,
}

/// One batch's jobs, split into writes and reads.
#[derive(Default)]
struct Batch {
    tickets: Vec<Ticket>,
    writes: Vec<StoreOp>,
    reads: Vec<(Ticket, ReadOp)>,
}

impl Batch {
    fn add(&mut self, job: StoreJob) {
        match job.op.into_read() {
            Ok(read) => self.reads.push((job.ticket, read)),
            Err(write) => {
                self.tickets.push(job.ticket);
                self.writes.push(write);
            }
        }
    }

    fn len(&self) -> usize {
        self.writes.len() + self.reads.len()
    }
}

fn write_loop<F: FnMut(BatchResult)>(
    mut store: Box<dyn Store>,
    jobs: &Receiver<StoreJob>,
    to_reader: mpsc::Sender<ReadBatch>,
    reporter: &Reporter<F>,
) {
    // recv_blocking fails only once the channel is closed and empty: everything sent was applied.
    while let Ok(first) = jobs.recv_blocking() {
        if reporter.failed() {
            return;
        }
        let mut batch = Batch::default();
        batch.add(first);
        while batch.len() < MAX_STORE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.add(job),
                Err(_) => break,
            }
        }
        if !batch.writes.is_empty() {
            let result = store.write(&batch.writes).and_then(|replies| {
                if replies.len() == batch.writes.len() {
                    Ok(batch.tickets.drain(..).zip(replies).collect())
                } else {
                    Err(StoreError::ReplyCount {
                        ops: batch.writes.len(),
                        replies: replies.len(),
                    })
                }
            });
            if !reporter.report(result) {
                return;
            }
        }
        if !batch.reads.is_empty() {
            // Taken after the writes were reported: the view holds nothing unreported. Without a
            // view, each read of the batch fails on its own.
            let reads = ReadBatch {
                view: store.reader().map_err(Unreadable::from),
                reads: batch.reads,
            };
            // Fails only when the reader has stopped, after a failure it reported.
            if to_reader.send(reads).is_err() {
                return;
            }
        }
    }
    log::debug!("store queue closed and drained; closing the database");
}

fn read_loop<F: FnMut(BatchResult)>(batches: &mpsc::Receiver<ReadBatch>, reporter: &Reporter<F>) {
    while let Ok(ReadBatch { view, reads }) = batches.recv() {
        let result: Vec<_> = reads
            .into_iter()
            .map(|(ticket, op)| {
                let reply = match &view {
                    Ok(view) => view
                        .read(&op)
                        .unwrap_or_else(|e| StoreReply::Unreadable(e.into())),
                    Err(why) => StoreReply::Unreadable(why.clone()),
                };
                (ticket, reply)
            })
            .collect();
        // The read transaction ends before the results go out.
        drop(view);
        if !reporter.report(Ok(result)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

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
        // Each even job appends a message for its own user; the odd job after it clears that
        // user's backlog. Both are writes: they commit in batches of at most MAX_STORE_BATCH, and
        // their answers come back with their tickets, in order.
        let n = 2 * MAX_STORE_BATCH + 100;
        for i in 0..n as u64 {
            let user = format!("u{}", i / 2);
            let op = if i % 2 == 0 {
                append(i + 1, &user)
            } else {
                StoreOp::ClearBacklog { user, upto: i }
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
            assert_eq!(ticket, 1000 + i as u64);
            assert_eq!(reply, StoreReply::Done, "job {i}");
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
        fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            self.started.send(ops.len()).unwrap();
            self.go.recv().unwrap();
            self.inner.write(ops)
        }

        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            self.inner.reader()
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
        let write = |ticket| StoreJob {
            ticket,
            op: append(ticket + 1, "b"),
        };

        tx.send_blocking(write(0)).unwrap();
        assert_eq!(started.recv().unwrap(), 1);
        for t in 1..=10 {
            tx.send_blocking(write(t)).unwrap();
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
        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            MemoryStore::default().reader()
        }

        fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            if std::mem::replace(&mut self.0, true) {
                Err(StoreError::Write {
                    path: "test.redb".into(),
                    source: Box::new(::redb::Error::Io(std::io::Error::other("disk full"))),
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
        fn write(&mut self, _: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            Ok(vec![StoreReply::Done])
        }

        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            MemoryStore::default().reader()
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
            op: StoreOp::ClearBacklog {
                user: "x".into(),
                upto: 0,
            },
        })
        .unwrap();
        assert_eq!(name_rx.recv().unwrap().as_deref(), Some("chatd-store"));
        drop(tx);
        handle.join().unwrap();
    }

    fn history(ticket: Ticket, with: &str) -> StoreJob {
        StoreJob {
            ticket,
            op: StoreOp::History {
                conv: Conversation::Pair("a".into(), with.into()),
                count: 10,
                cursor: Cursor::Latest,
            },
        }
    }

    fn read_backlog(ticket: Ticket, user: &str) -> StoreJob {
        StoreJob {
            ticket,
            op: StoreOp::ReadBacklog { user: user.into() },
        }
    }

    fn write(ticket: Ticket, op: StoreOp) -> StoreJob {
        StoreJob { ticket, op }
    }

    fn page(ids: &[u64]) -> StoreReply {
        StoreReply::History(crate::store::HistoryPage {
            messages: ids.iter().map(|&id| message(id)).collect(),
            older: None,
            newer: None,
        })
    }

    /// The guarantee the core relies on: a read sees every write sent before it (here also the one
    /// sent after it in the same batch), and the writes it sees are answered first.
    #[test]
    fn a_read_sees_the_writes_of_its_batch_and_is_answered_after_them() {
        let (tx, rx) = async_channel::bounded(64);
        tx.send_blocking(write(1, append(1, "b"))).unwrap();
        tx.send_blocking(history(2, "b")).unwrap();
        tx.send_blocking(read_backlog(3, "b")).unwrap();
        tx.send_blocking(write(4, append(2, "b"))).unwrap();
        tx.send_blocking(read_backlog(5, "b")).unwrap();
        drop(tx);
        let (handle, done) = start(Box::new(MemoryStore::new().0), rx);
        handle.join().unwrap();
        let batches: Vec<_> = done.iter().map(Result::unwrap).collect();
        let both = StoreReply::Backlog(vec![message(1), message(2)]);
        assert_eq!(
            batches,
            [
                vec![(1, StoreReply::Done), (4, StoreReply::Done)],
                vec![(2, page(&[1, 2])), (3, both.clone()), (5, both)],
            ]
        );
    }

    /// A store whose reads each wait for permission, to hold a read open as long as a test likes.
    struct GatedReads {
        inner: MemoryStore,
        started: mpsc::Sender<()>,
        go: Arc<Mutex<mpsc::Receiver<()>>>,
    }

    impl Store for GatedReads {
        fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            self.inner.write(ops)
        }

        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            Ok(Box::new(GatedReader {
                inner: self.inner.reader()?,
                started: self.started.clone(),
                go: self.go.clone(),
            }))
        }
    }

    struct GatedReader {
        inner: Box<dyn StoreReader>,
        started: mpsc::Sender<()>,
        go: Arc<Mutex<mpsc::Receiver<()>>>,
    }

    impl StoreReader for GatedReader {
        fn read(&self, op: &ReadOp) -> Result<StoreReply, StoreError> {
            self.started.send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
            self.inner.read(op)
        }
    }

    /// The failure this guards against: a long HISTORY page delaying everyone's commit. While a
    /// read is held open, a later write is still committed and answered; the read, when it ends,
    /// shows the database as it was when its batch committed.
    #[test]
    fn a_long_read_does_not_hold_back_the_next_commit() {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let store = GatedReads {
            inner: MemoryStore::new().0,
            started: started_tx,
            go: Arc::new(Mutex::new(go_rx)),
        };
        let (tx, rx) = async_channel::bounded(64);
        let (handle, done) = start(Box::new(store), rx);

        tx.send_blocking(history(1, "b")).unwrap();
        started.recv().unwrap();
        tx.send_blocking(write(2, append(1, "b"))).unwrap();
        let committed = done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(committed.unwrap(), [(2, StoreReply::Done)]);

        // A read sent after that commit waits behind the held one, and sees the commit.
        tx.send_blocking(history(3, "b")).unwrap();
        go.send(()).unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), [(1, page(&[]))]);
        started.recv().unwrap();
        go.send(()).unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), [(3, page(&[1]))]);
        drop(tx);
        handle.join().unwrap();
    }

    /// Shutdown: everything queued when the channel closes is answered, reads included, and the
    /// database is closed once both threads have ended.
    #[test]
    fn closing_the_channel_answers_every_queued_read_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let (store, _) = crate::store::redb::RedbStore::open(&path).unwrap();
        let (tx, rx) = async_channel::bounded(4096);
        for i in 1..=300 {
            tx.send_blocking(write(2 * i, append(i, "b"))).unwrap();
            tx.send_blocking(read_backlog(2 * i + 1, "b")).unwrap();
        }
        let (handle, done) = start(Box::new(store), rx);
        drop(tx);
        handle.join().unwrap();
        let mut answered: Vec<_> = done.iter().flat_map(Result::unwrap).collect();
        answered.sort_by_key(|(t, _)| *t);
        assert_eq!(answered.len(), 600);
        // The last read sees every write.
        assert_eq!(
            answered.last().unwrap().1,
            StoreReply::Backlog((1..=300).map(message).collect())
        );
        let (_, snap) = crate::store::redb::RedbStore::open(&path).unwrap();
        assert_eq!(snap.pending_counts, vec![("b".to_owned(), 300)]);
    }

    /// Reads of the conversation with `bad` fail as damaged; every other op works.
    struct OneBadConversation {
        inner: MemoryStore,
        bad: &'static str,
    }

    impl Store for OneBadConversation {
        fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            self.inner.write(ops)
        }

        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            Ok(Box::new(BadReader {
                inner: self.inner.reader()?,
                bad: self.bad,
            }))
        }
    }

    struct BadReader {
        inner: Box<dyn StoreReader>,
        bad: &'static str,
    }

    impl StoreReader for BadReader {
        fn read(&self, op: &ReadOp) -> Result<StoreReply, StoreError> {
            match op {
                ReadOp::History {
                    conv: Conversation::Pair(_, b),
                    ..
                } if b == self.bad => Err(StoreError::Corrupt {
                    path: "test.redb".into(),
                    source: Box::new(crate::store::Damage::new("message record 1: truncated")),
                }),
                op => self.inner.read(op),
            }
        }
    }

    /// The failure this guards against: one record that does not decode stopping the whole
    /// server, and again after every restart. The read that meets it fails alone, saying why; the
    /// reads beside it, the writes after it and the reads after those are answered as usual.
    #[test]
    fn a_damaged_read_fails_alone_and_the_worker_goes_on() {
        let (tx, rx) = async_channel::bounded(64);
        let store = OneBadConversation {
            inner: MemoryStore::new().0,
            bad: "x",
        };
        let (handle, done) = start(Box::new(store), rx);
        tx.send_blocking(write(1, append(1, "b"))).unwrap();
        tx.send_blocking(history(2, "x")).unwrap();
        tx.send_blocking(history(3, "b")).unwrap();
        let writes = done.recv().unwrap().unwrap();
        assert_eq!(writes, [(1, StoreReply::Done)]);
        let reads = done.recv().unwrap().unwrap();
        assert_eq!(reads.len(), 2);
        match &reads[0] {
            (2, StoreReply::Unreadable(Unreadable::Damaged(why))) => {
                assert!(
                    why.contains("test.redb") && why.contains("truncated"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reads[1], (3, page(&[1])));
        // The worker is still there: a later write commits and a later read sees it.
        tx.send_blocking(write(4, append(2, "b"))).unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), [(4, StoreReply::Done)]);
        tx.send_blocking(history(5, "b")).unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), [(5, page(&[1, 2]))]);
        drop(tx);
        handle.join().unwrap();
    }

    /// Every read fails, and no view can even be taken.
    struct NoReads;

    impl Store for NoReads {
        fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            Ok(vec![StoreReply::Done; ops.len()])
        }

        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            Err(StoreError::Read {
                path: "test.redb".into(),
                source: Box::new(::redb::Error::Io(std::io::Error::other("bad sector"))),
            })
        }
    }

    #[test]
    fn without_a_view_each_read_is_unavailable_and_writes_go_on() {
        let (tx, rx) = async_channel::bounded(64);
        let (handle, done) = start(Box::new(NoReads), rx);
        tx.send_blocking(read_backlog(1, "b")).unwrap();
        tx.send_blocking(history(2, "b")).unwrap();
        let reads = done.recv().unwrap().unwrap();
        assert_eq!(reads.len(), 2);
        for (_, reply) in &reads {
            match reply {
                StoreReply::Unreadable(Unreadable::Unavailable(why)) => {
                    assert!(why.contains("bad sector"), "{why}")
                }
                other => panic!("{other:?}"),
            }
        }
        tx.send_blocking(write(3, append(1, "b"))).unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), [(3, StoreReply::Done)]);
        drop(tx);
        handle.join().unwrap();
    }
}
