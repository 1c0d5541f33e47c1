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
//! Reads may also come on a second channel, of *fresh* reads: each is answered from a view of
//! everything committed when the writer takes it, whatever is queued on the first channel. The core
//! sends a read there only when nothing written for that connection is still uncommitted (see
//! `core`), which is what lets it serve reads while writes are failing, below.
//!
//! Results go back through the `done` callback as [`Report`]s: a batch's write results in one
//! call, its read results in another. The callback runs on either thread, never on both at once;
//! it must hand the results on (typically by a channel send) rather than do work of its own.
//!
//! # Ordering
//!
//! Guaranteed:
//! - Every op is answered once, with its ticket (unless the worker stops first, below).
//! - Writes are answered in the order they were sent, and reads in the order they were sent.
//! - A read sees every write sent before it, and is answered after them.
//! - A read sees no write whose answer has not been reported before the read's own. (It sees the
//!   writes of its own batch, including those sent after it, and of earlier batches; all of them
//!   were answered before the batch's reads started.)
//!
//! Not guaranteed: anything about a write sent after a read. The read may see it (when both are in
//! one batch) or not, and the write may be answered before the read (always, when the read sees
//! it) or after. A fresh read sees what was committed when it was taken, nothing more.
//!
//! # Failing writes
//!
//! A write that fails (the disk is full or under its reserve, an I/O error) does not end anything.
//! The writer reports [`Report::Failing`] once, keeps the batch, and tries it again, waiting a
//! little longer each time ([`STORE_RETRY_FIRST`] doubling to [`STORE_RETRY_MAX`]), until it
//! commits; it then reports its results and [`Report::Writing`], and goes on with the queue. It
//! asks the store first whether a write is worth trying ([`Store::ready`]: the disk reserve) and
//! gets it back into shape after a failed one ([`Store::recover`]: redb reopens its file).
//! Meanwhile jobs stay queued in order behind the failed batch, and fresh reads are answered. While
//! idle the writer also asks [`Store::ready`] about once a [`STORE_IDLE_CHECK`], so a disk that
//! fills up is noticed before a write meets it. Nothing is ever answered before its commit.
//!
//! A read that fails (a record that does not decode, an I/O error while reading, or no view to
//! read from) fails alone: it is answered with [`StoreReply::Unreadable`] and everything else goes
//! on.
//!
//! # Shutdown
//!
//! When every sender of the job channel is dropped, the writer applies what is still queued and
//! reports it, the reader answers the last reads, and both exit, dropping (closing) the store;
//! joining the handle [`spawn`] returns waits for both. If writes are failing then, the writer
//! tries once more and gives up: what was not written was never acknowledged, and the log says
//! how many ops it was.
//!
//! Only a store that breaks its own contract (a reply count that does not match the batch), or a
//! cluster log this build cannot read, stops the worker: [`Report::Fatal`], once, and nothing
//! after it ([`StoreError::is_fatal`]).

use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_channel::Receiver;
use futures_lite::future;
use smol::Timer;

use super::{ReadOp, Store, StoreError, StoreOp, StoreReader, StoreReply, Unreadable};
use crate::config::{MAX_STORE_BATCH, STORE_IDLE_CHECK, STORE_RETRY_FIRST, STORE_RETRY_MAX};

/// Chosen by the sender to match a reply with its op.
pub type Ticket = u64;

/// One op and the ticket its reply will carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreJob {
    pub ticket: Ticket,
    pub op: StoreOp,
}

/// What the worker tells the core.
#[derive(Debug)]
pub enum Report {
    /// Results of the writes or of the reads of one batch, with their tickets; and, after a
    /// commit, the batch's write ops, handed back so that they are freed on the thread that made
    /// them (the core's: glibc frees a block another thread allocated under that thread's arena
    /// lock, which cost the store thread about 420 instructions per direct message). Empty for
    /// reads.
    Done(Vec<(Ticket, StoreReply)>, Vec<StoreOp>),
    /// A batch of writes was committed (sent just before its [`Report::Done`]): for the server's
    /// figures.
    Committed {
        /// Ops in the commit.
        ops: u64,
        /// How long the write took, commit and fsync included, in microseconds.
        micros: u64,
        /// The database's size afterwards, when the store knows it.
        bytes: Option<u64>,
    },
    /// Writes cannot be made now (the first failure of a run of them); the cause, for the log.
    /// What is queued waits; fresh reads are answered.
    Failing(String),
    /// Writes are made again, after a [`Report::Failing`].
    Writing,
    /// The store broke its contract; the worker has stopped.
    Fatal(StoreError),
    /// Writes other servers sharing the store made, applied here, in their order (a cluster, see
    /// [`Store::take_remote`]). Reported before the results of the batch that applied them.
    Remote(Vec<StoreOp>),
}

/// The channels the worker takes jobs from: ops in order, and fresh reads.
#[derive(Clone, Debug)]
pub struct Queues {
    /// Writes and reads, answered in order (see the module documentation).
    pub jobs: Receiver<StoreJob>,
    /// Reads answered from what is committed when they are taken.
    pub fresh: Receiver<(Ticket, ReadOp)>,
}

/// Start the store threads (named `chatd-store` and `chatd-store-read`). They run until the job
/// channel is closed and drained, or until the store breaks its contract; join the handle to wait
/// for the final flush.
pub fn spawn<F>(store: Box<dyn Store>, queues: Queues, done: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnMut(Report) + Send + 'static,
{
    let reporter = Arc::new(Reporter {
        state: Mutex::new((done, false)),
        jobs: queues.jobs.clone(),
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
            Writer {
                store,
                queues,
                to_reader,
                reporter: reporter.clone(),
            }
            .run();
            // The writer has dropped its end: the reader answers what it holds, then exits.
            let _ = reader.join();
        })
}

/// The `done` callback, shared by both threads, and whether the worker has stopped.
struct Reporter<F> {
    state: Mutex<(F, bool)>,
    /// Closed on a fatal error, so that senders learn the worker is gone.
    jobs: Receiver<StoreJob>,
}

impl<F: FnMut(Report)> Reporter<F> {
    /// Reports one thing, unless the worker has stopped. Returns whether the worker may go on.
    fn report(&self, report: Report) -> bool {
        // A panic in `done` while this is held cannot leave the flag half-set.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, stopped) = &mut *state;
        if *stopped {
            return false;
        }
        if let Report::Fatal(e) = &report {
            log::error!("the store failed, no further writes: {e}");
            *stopped = true;
            self.jobs.close();
        }
        done(report);
        !*stopped
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
    /// An empty batch with room for `jobs` writes: the jobs queued when the batch starts are
    /// taken with it, so its lists are allocated once (growing them job by job cost about 80
    /// instructions per direct message).
    fn with_room(jobs: usize) -> Batch {
        Batch {
            tickets: Vec::with_capacity(jobs),
            writes: Vec::with_capacity(jobs),
            reads: Vec::new(),
        }
    }

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

/// What the writer waited for.
enum Woken {
    Job(StoreJob),
    /// Other servers' writes wait to be applied.
    Nudged,
    Fresh((Ticket, ReadOp)),
    /// The job channel is closed and empty.
    Closed,
    /// Nothing came in time.
    Timeout,
}

struct Writer<F> {
    store: Box<dyn Store>,
    queues: Queues,
    to_reader: mpsc::Sender<ReadBatch>,
    reporter: Arc<Reporter<F>>,
}

impl<F: FnMut(Report) + Send + 'static> Writer<F> {
    fn run(mut self) {
        // A disk already under its reserve is told at once.
        let mut held: Option<Batch> = None;
        let mut failing = match self.store.ready() {
            Ok(()) => false,
            Err(e) => self.report(Report::Failing(e.to_string())),
        };
        let mut wait = STORE_RETRY_FIRST;
        loop {
            if failing {
                let closing = self.queues.jobs.is_closed();
                if !closing {
                    self.serve_fresh_for(wait);
                }
                match self.attempt(held.as_mut()) {
                    Ok(true) => {
                        failing = false;
                        wait = STORE_RETRY_FIRST;
                        if let Some(batch) = held.take() {
                            if !self.finish(batch) {
                                return;
                            }
                        }
                        if !self.report(Report::Writing) {
                            return;
                        }
                    }
                    Ok(false) => return,
                    Err(e) if e.is_fatal() => {
                        self.report(Report::Fatal(e));
                        return;
                    }
                    Err(e) => {
                        log::debug!("store still failing: {e}");
                        if closing {
                            let left = held.as_ref().map_or(0, Batch::len) + self.queues.jobs.len();
                            log::error!(
                                "stopping with {left} store ops not done, since writes still \
                                 fail ({e}); none of them was acknowledged"
                            );
                            return;
                        }
                        wait = (wait * 2).min(STORE_RETRY_MAX);
                    }
                }
                continue;
            }
            match self.wait(Some(STORE_IDLE_CHECK)) {
                Woken::Job(first) => {
                    let queued = self.queues.jobs.len().min(MAX_STORE_BATCH - 1);
                    let mut batch = Batch::with_room(queued + 1);
                    batch.add(first);
                    while batch.len() < MAX_STORE_BATCH {
                        match self.queues.jobs.try_recv() {
                            Ok(job) => batch.add(job),
                            Err(_) => break,
                        }
                    }
                    if batch.writes.is_empty() {
                        if !self.finish_reads(batch.reads) {
                            return;
                        }
                        continue;
                    }
                    let started = std::time::Instant::now();
                    match self.store.write(&batch.writes) {
                        Ok(replies) => {
                            if !self.committed(batch.writes.len(), started) {
                                return;
                            }
                            if !self.done_writes(&mut batch, replies)
                                || !self.finish_reads(batch.reads)
                            {
                                return;
                            }
                        }
                        Err(e) if e.is_fatal() => {
                            self.report(Report::Fatal(e));
                            return;
                        }
                        Err(e) => {
                            // Reads go on meanwhile: a store that needs it is made readable again.
                            let cause = e.to_string();
                            if let Err(e) = self.store.recover() {
                                log::debug!("store not recovered yet: {e}");
                            }
                            held = Some(batch);
                            failing = self.report(Report::Failing(cause));
                            if !failing {
                                return;
                            }
                        }
                    }
                }
                Woken::Fresh(job) => {
                    if !self.answer_fresh(job) {
                        return;
                    }
                }
                Woken::Nudged => match self.store.catch_up() {
                    Ok(()) => {
                        if !self.report_remote() {
                            return;
                        }
                    }
                    Err(e) if e.is_fatal() => {
                        self.report(Report::Fatal(e));
                        return;
                    }
                    Err(e) => {
                        failing = self.report(Report::Failing(e.to_string()));
                        if !failing {
                            return;
                        }
                    }
                },
                Woken::Timeout => {
                    if let Err(e) = self.store.ready() {
                        failing = self.report(Report::Failing(e.to_string()));
                        if !failing {
                            return;
                        }
                    }
                }
                Woken::Closed => break,
            }
        }
        log::debug!("store queue closed and drained; closing the database");
    }

    fn report(&self, report: Report) -> bool {
        self.reporter.report(report)
    }

    /// Reports the other servers' writes the store applied, if any.
    fn report_remote(&mut self) -> bool {
        let ops = self.store.take_remote();
        ops.is_empty() || self.report(Report::Remote(ops))
    }

    /// Waits for a job (or a fresh read, or `timeout`).
    fn wait(&self, timeout: Option<Duration>) -> Woken {
        let (jobs, fresh) = (&self.queues.jobs, &self.queues.fresh);
        let nudges = self.store.nudges();
        future::block_on(async {
            let nudged = async {
                match &nudges {
                    Some(n) if n.recv().await.is_ok() => Woken::Nudged,
                    _ => future::pending().await,
                }
            };
            let job = async {
                match jobs.recv().await {
                    Ok(j) => Woken::Job(j),
                    Err(_) => Woken::Closed,
                }
            };
            let fresh = async {
                match fresh.recv().await {
                    Ok(j) => Woken::Fresh(j),
                    // No one sends fresh reads any more: only the job channel matters.
                    Err(_) => future::pending().await,
                }
            };
            let timer = async {
                match timeout {
                    Some(t) => {
                        Timer::after(t).await;
                        Woken::Timeout
                    }
                    None => future::pending().await,
                }
            };
            future::or(job, future::or(fresh, future::or(nudged, timer))).await
        })
    }

    /// Answers fresh reads for `span`, while writes wait.
    fn serve_fresh_for(&mut self, span: Duration) {
        let fresh = self.queues.fresh.clone();
        let until = std::time::Instant::now() + span;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let got = future::block_on(future::or(
                async {
                    match fresh.recv().await {
                        Ok(read) => Some(read),
                        // Nobody sends fresh reads: the wait is the whole span.
                        Err(_) => future::pending().await,
                    }
                },
                async {
                    Timer::after(left).await;
                    None
                },
            ));
            match got {
                Some(job) => {
                    if !self.answer_fresh(job) {
                        return;
                    }
                }
                None => return,
            }
        }
    }

    /// One more try while failing: `Ok(true)` once writes work again (the held batch, if any, was
    /// committed; its results are not reported yet), `Ok(false)` when the worker must stop.
    fn attempt(&mut self, held: Option<&mut Batch>) -> Result<bool, StoreError> {
        self.store.ready()?;
        self.store.recover()?;
        let Some(batch) = held else {
            return Ok(true);
        };
        if batch.writes.is_empty() {
            return Ok(true);
        }
        let started = std::time::Instant::now();
        let replies = self.store.write(&batch.writes)?;
        if !self.committed(batch.writes.len(), started) {
            return Ok(false);
        }
        Ok(self.done_writes(batch, replies))
    }

    /// Reports the size and time of a commit of `ops` writes that started at `started`.
    fn committed(&mut self, ops: usize, started: std::time::Instant) -> bool {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.report(Report::Committed {
            ops: ops as u64,
            micros,
            bytes: self.store.size(),
        })
    }

    /// Reports a batch whose writes were just committed (by [`Writer::attempt`]): its reads.
    fn finish(&mut self, batch: Batch) -> bool {
        self.finish_reads(batch.reads)
    }

    /// Reports the results of a batch's committed writes.
    fn done_writes(&mut self, batch: &mut Batch, replies: Vec<StoreReply>) -> bool {
        // Other servers' writes applied before this batch's are told first.
        if !self.report_remote() {
            return false;
        }
        if replies.len() != batch.writes.len() {
            self.report(Report::Fatal(StoreError::ReplyCount {
                ops: batch.writes.len(),
                replies: replies.len(),
            }));
            return false;
        }
        let spent = std::mem::take(&mut batch.writes);
        let results = batch.tickets.drain(..).zip(replies).collect();
        self.report(Report::Done(results, spent))
    }

    /// Hands `reads` to the reader with a view that sees everything committed so far; a backup
    /// gets a view and a thread of its own, so that the reads after it do not wait for the copy.
    fn finish_reads(&mut self, mut reads: Vec<(Ticket, ReadOp)>) -> bool {
        let (backups, rest): (Vec<_>, Vec<_>) = reads
            .drain(..)
            .partition(|(_, op)| matches!(op, ReadOp::Backup { .. }));
        let reads = rest;
        for (ticket, op) in backups {
            let view = self.store.reader();
            let reporter = self.reporter.clone();
            let copy = move || {
                let reply = match view {
                    Ok(view) => view
                        .read(&op)
                        .unwrap_or_else(|e| StoreReply::Unreadable(e.into())),
                    Err(e) => StoreReply::Unreadable(e.into()),
                };
                reporter.report(Report::Done(vec![(ticket, reply)], Vec::new()));
            };
            if let Err(e) = std::thread::Builder::new()
                .name("chatd-backup".to_owned())
                .spawn(copy)
            {
                let why = Unreadable::Unavailable(format!("cannot start the backup thread: {e}"));
                if !self.report(Report::Done(
                    vec![(ticket, StoreReply::Unreadable(why))],
                    Vec::new(),
                )) {
                    return false;
                }
            }
        }
        if reads.is_empty() {
            return true;
        }
        // Taken after the writes were reported: the view holds nothing unreported. Without a
        // view, each read fails on its own.
        let batch = ReadBatch {
            view: self.store.reader().map_err(Unreadable::from),
            reads,
        };
        // Fails only when the reader has stopped, after a fatal error.
        self.to_reader.send(batch).is_ok()
    }

    /// Answers a fresh read, with any others already waiting.
    fn answer_fresh(&mut self, first: (Ticket, ReadOp)) -> bool {
        let mut reads = vec![first];
        while reads.len() < MAX_STORE_BATCH {
            match self.queues.fresh.try_recv() {
                Ok(read) => reads.push(read),
                Err(_) => break,
            }
        }
        self.finish_reads(reads)
    }
}

fn read_loop<F: FnMut(Report)>(batches: &mpsc::Receiver<ReadBatch>, reporter: &Reporter<F>) {
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
        if !reporter.report(Report::Done(result, Vec::new())) {
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

    /// Start a worker whose `done` forwards each report to the returned receiver. Its fresh-read
    /// queue is closed (see `start_with_fresh` for one that is not).
    fn start(
        store: Box<dyn Store>,
        jobs: Receiver<StoreJob>,
    ) -> (JoinHandle<()>, mpsc::Receiver<Reports>) {
        let (_, fresh) = async_channel::bounded(1);
        start_with_fresh(store, jobs, fresh)
    }

    fn start_with_fresh(
        store: Box<dyn Store>,
        jobs: Receiver<StoreJob>,
        fresh: Receiver<(Ticket, ReadOp)>,
    ) -> (JoinHandle<()>, mpsc::Receiver<Reports>) {
        let (tx, rx) = mpsc::channel();
        let queues = Queues { jobs, fresh };
        // The commits' figures are left out here; `each_commit_reports_its_size_and_time` reads them.
        let handle = spawn(store, queues, move |r| {
            if !matches!(r, Report::Committed { .. }) {
                tx.send(Reports(r)).unwrap()
            }
        })
        .unwrap();
        (handle, rx)
    }

    #[test]
    fn each_commit_reports_its_size_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let (store, _) = crate::store::redb::RedbStore::open(&path).unwrap();
        let (tx, rx) = async_channel::bounded(64);
        for i in 1..=3 {
            tx.send_blocking(StoreJob {
                ticket: i,
                op: append(i, "b"),
            })
            .unwrap();
        }
        drop(tx);
        let (_, fresh) = async_channel::bounded(1);
        let (reports_tx, reports) = mpsc::channel();
        let queues = Queues { jobs: rx, fresh };
        // The file's size as each report is made (redb may trim the file when it closes it, so
        // the size after the thread ends is not the size after the commit).
        let file = path.clone();
        spawn(Box::new(store), queues, move |r| {
            let len = std::fs::metadata(&file).unwrap().len();
            reports_tx.send((r, len)).unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
        let (reports, lens): (Vec<Report>, Vec<u64>) = reports.iter().unzip();
        // One commit of the three ops, reported before its results.
        match &reports[..] {
            [Report::Committed {
                ops: 3,
                bytes: Some(b),
                ..
            }, Report::Done(results, spent)] => {
                assert_eq!(*b, lens[0]);
                assert_eq!(results.len(), 3);
                assert_eq!(spent, &[append(1, "b"), append(2, "b"), append(3, "b")]);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A report, with the shorthand the tests use.
    #[derive(Debug)]
    struct Reports(Report);

    impl Reports {
        /// The results of a `Report::Done`; panics on anything else.
        fn unwrap(self) -> Vec<(Ticket, StoreReply)> {
            match self.0 {
                Report::Done(results, _) => results,
                other => panic!("expected results, got {other:?}"),
            }
        }
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
        let batches: Vec<_> = done.iter().map(Reports::unwrap).collect();
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

    /// Fails every write while `fail` is set; reads see what was written.
    struct Flaky {
        inner: MemoryStore,
        fail: Arc<std::sync::atomic::AtomicBool>,
        recovered: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Store for Flaky {
        fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Write {
                    path: "test.redb".into(),
                    source: Box::new(::redb::Error::Io(std::io::Error::other("disk full"))),
                });
            }
            self.inner.write(ops)
        }

        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            self.inner.reader()
        }

        fn recover(&mut self) -> Result<(), StoreError> {
            self.recovered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    /// The failure this guards against: a failed commit ended the worker, and the server with it.
    /// Now the batch is kept and tried again until it commits; meanwhile what is queued waits in
    /// order, fresh reads are answered from what was committed, and the failure and the recovery
    /// are reported once each.
    #[test]
    fn a_failing_write_is_tried_again_until_it_commits() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let fail = Arc::new(AtomicBool::new(false));
        let recovered = Arc::new(AtomicUsize::new(0));
        let store = Flaky {
            inner: MemoryStore::new().0,
            fail: fail.clone(),
            recovered: recovered.clone(),
        };
        let (tx, rx) = async_channel::bounded(64);
        let (fresh_tx, fresh_rx) = async_channel::bounded(64);
        let (handle, done) = start_with_fresh(Box::new(store), rx, fresh_rx);
        tx.send_blocking(write(1, append(1, "b"))).unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), [(1, StoreReply::Done)]);

        fail.store(true, Ordering::SeqCst);
        tx.send_blocking(write(2, append(2, "b"))).unwrap();
        match done.recv().unwrap().0 {
            Report::Failing(why) => assert!(why.contains("disk full"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Queued behind the failed batch: a write and a read.
        tx.send_blocking(write(3, append(3, "b"))).unwrap();
        tx.send_blocking(history(4, "b")).unwrap();
        // A fresh read is answered meanwhile, from what was committed.
        let fresh_read = match history(5, "b").op.into_read() {
            Ok(r) => r,
            Err(_) => unreachable!(),
        };
        fresh_tx.send_blocking((5, fresh_read)).unwrap();
        assert_eq!(done.recv().unwrap().unwrap(), [(5, page(&[1]))]);
        assert!(recovered.load(Ordering::SeqCst) >= 1);

        fail.store(false, Ordering::SeqCst);
        // The failed batch commits; then the worker says writes work, and goes on in order.
        assert_eq!(done.recv().unwrap().unwrap(), [(2, StoreReply::Done)]);
        assert!(matches!(done.recv().unwrap().0, Report::Writing));
        assert_eq!(done.recv().unwrap().unwrap(), [(3, StoreReply::Done)]);
        assert_eq!(done.recv().unwrap().unwrap(), [(4, page(&[1, 2, 3]))]);
        drop(tx);
        handle.join().unwrap();
    }

    /// Stopping while writes fail: one last try, then the worker ends, and what it could not write
    /// (never acknowledged) is dropped.
    #[test]
    fn a_worker_told_to_stop_while_failing_gives_up() {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let store = Flaky {
            inner: MemoryStore::new().0,
            fail: Arc::new(AtomicBool::new(true)),
            recovered: Arc::new(AtomicUsize::new(0)),
        };
        let (tx, rx) = async_channel::bounded(64);
        let (handle, done) = start(Box::new(store), rx);
        tx.send_blocking(write(1, append(1, "b"))).unwrap();
        tx.send_blocking(write(2, append(2, "b"))).unwrap();
        assert!(matches!(done.recv().unwrap().0, Report::Failing(_)));
        drop(tx);
        handle.join().unwrap();
        assert!(done.recv().is_err(), "nothing answered after a failure");
    }

    /// A store that is not ready (its disk is under the reserve) is told at once, and again when
    /// it becomes ready, without any write being tried meanwhile.
    struct NotReady {
        inner: MemoryStore,
        ready: Arc<std::sync::atomic::AtomicBool>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Store for NotReady {
        fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.write(ops)
        }

        fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
            self.inner.reader()
        }

        fn ready(&self) -> Result<(), StoreError> {
            if self.ready.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err(StoreError::LowSpace {
                    path: "test.redb".into(),
                    free: 1,
                    reserve: 2,
                })
            }
        }
    }

    #[test]
    fn a_store_under_its_reserve_is_reported_before_any_write() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let ready = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicUsize::new(0));
        let store = NotReady {
            inner: MemoryStore::new().0,
            ready: ready.clone(),
            writes: writes.clone(),
        };
        let (tx, rx) = async_channel::bounded(64);
        let (handle, done) = start(Box::new(store), rx);
        match done.recv().unwrap().0 {
            Report::Failing(why) => assert!(why.contains("reserve"), "{why}"),
            other => panic!("{other:?}"),
        }
        tx.send_blocking(write(1, append(1, "b"))).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(writes.load(Ordering::SeqCst), 0, "a write was tried");
        ready.store(true, Ordering::SeqCst);
        assert!(matches!(done.recv().unwrap().0, Report::Writing));
        assert_eq!(done.recv().unwrap().unwrap(), [(1, StoreReply::Done)]);
        drop(tx);
        handle.join().unwrap();
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
            done.recv().unwrap().0,
            Report::Fatal(StoreError::ReplyCount { ops: 3, replies: 1 })
        ));
    }

    #[test]
    fn the_thread_is_named() {
        let (tx, rx) = async_channel::bounded(1);
        let (name_tx, name_rx) = mpsc::channel();
        let (_, fresh) = async_channel::bounded(1);
        let queues = Queues { jobs: rx, fresh };
        let handle = spawn(Box::new(MemoryStore::new().0), queues, move |_| {
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
            ids: ids.to_vec(),
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
        let batches: Vec<_> = done.iter().map(Reports::unwrap).collect();
        let both = StoreReply::Backlog(vec![1, 2]);
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
        let mut answered: Vec<_> = done.iter().flat_map(Reports::unwrap).collect();
        answered.sort_by_key(|(t, _)| *t);
        assert_eq!(answered.len(), 600);
        // The last read sees every write.
        assert_eq!(
            answered.last().unwrap().1,
            StoreReply::Backlog((1..=300).collect())
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
