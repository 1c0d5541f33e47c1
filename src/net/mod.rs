//! The network shell around the core: listeners, per-connection tasks, and the task that owns the
//! core.
//!
//! Tasks and who owns what:
//! - one accept task per listener; a new connection gets its own task at once, so a slow client
//!   (or a TLS handshake) never holds up the accept loop;
//! - per connection a reader (one bounded line at a time, handed to the core after taking a credit
//!   from its outbox, at no more than the configured line rate) and a writer (drains everything the
//!   outbox holds and sends it in one write); no task ever waits on another client's socket;
//! - one core task owns the [`Core`]; it takes events from readers and results from the store and
//!   hashing threads, and stops taking reader input while too many store ops are in flight;
//! - the store worker thread (group commit) and the hashing threads, off the executor.

pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender};
use async_net::{TcpListener, TcpStream};
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{Async, Executor, Timer};

use crate::auth::{self, HashJob, Hasher};
use crate::config::*;
use crate::core::{ConnId, Core, Event, Input, Job, Settings};
use crate::outbox::{Chunk, Outbox};
use crate::proto::line::{Frame, LineDecoder};
use crate::proto::reply::{self, ByeCode};
use crate::store::redb::RedbStore;
use crate::store::worker::{self, StoreJob};

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Plain-TCP listen address; None for TLS only.
    pub listen: Option<String>,
    /// TLS listen address and certificate files.
    pub tls: Option<(String, crate::tls::TlsFiles)>,
    pub db: PathBuf,
    pub max_connections: usize,
    pub line_rate: u32,
    pub line_burst: u32,
    pub hash_threads: usize,
    pub hash_queue: usize,
    pub scrypt_log_n: u8,
}

/// What the server is told from outside while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop: tell clients, flush the database, return.
    Stop,
    /// Re-read the TLS certificate and key.
    ReloadTls,
}

/// Shared by the accept loops and connection tasks.
struct Ctx {
    ex: Arc<Executor<'static>>,
    events: Sender<Event>,
    next_conn: AtomicU64,
    active: Arc<AtomicUsize>,
    max_connections: usize,
    line_rate: u32,
    line_burst: u32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Opens the database, binds the listeners and serves until told to stop. Returns an error for a
/// startup failure or a fatal storage failure.
pub fn run(opts: ServerOptions, control: Receiver<Control>) -> Result<(), String> {
    // Certificates and addresses first: a mistake there should not leave a new database behind.
    let tls_cell = match &opts.tls {
        Some((_, files)) => Some(Arc::new(
            tls::TlsConfigCell::load(files).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let plain = match &opts.listen {
        Some(a) => Some(bind(a)?),
        None => None,
    };
    let secure = match &opts.tls {
        Some((a, _)) => Some(bind(a)?),
        None => None,
    };

    let (store, snapshot) = RedbStore::open(&opts.db).map_err(|e| e.to_string())?;
    log::info!(
        "database {}: {} accounts, next message id {}",
        opts.db.display(),
        snapshot.accounts.len(),
        snapshot.next_id
    );
    let hasher = Hasher::new(opts.scrypt_log_n, SCRYPT_R, SCRYPT_P)?;
    let settings = Settings {
        hash_queue: opts.hash_queue,
        dummy_phc: Arc::from(hasher.dummy_phc()),
        version: env!("CARGO_PKG_VERSION"),
    };
    let core = Core::new(snapshot, settings);

    // Announced last: once this line is logged the server is ready (tests wait for it).
    if let Some(l) = &plain {
        log::info!("listening on {}", local(l));
    }
    if let Some(l) = &secure {
        log::info!("listening on {} (TLS)", local(l));
    }
    // Results of the store and hashing threads. Its capacity covers every job the core can have
    // outstanding, so those threads never wait on it.
    let (done_tx, done_rx) = async_channel::bounded(MAX_STORE_INFLIGHT + opts.hash_queue + 16);
    let (store_tx, store_rx) = async_channel::bounded::<StoreJob>(MAX_STORE_INFLIGHT);
    let store_done = done_tx.clone();
    let store_thread = worker::spawn(Box::new(store), store_rx, move |r| {
        let _ = store_done.send_blocking(Event::Stored(r));
    })
    .map_err(|e| format!("cannot start the store thread: {e}"))?;
    let (hash_tx, hash_rx) = async_channel::bounded::<(u64, HashJob)>(opts.hash_queue.max(1));
    let hash_done = done_tx;
    let hash_threads = auth::spawn_pool(
        hasher,
        opts.hash_threads,
        hash_rx,
        move |(ticket, outcome)| {
            let _ = hash_done.send_blocking(Event::Hashed { ticket, outcome });
        },
    );

    let ex = Arc::new(Executor::new());
    let (events_tx, events_rx) = async_channel::bounded(CORE_QUEUE);
    let ctx = Arc::new(Ctx {
        ex: ex.clone(),
        events: events_tx.clone(),
        next_conn: AtomicU64::new(1),
        active: Arc::new(AtomicUsize::new(0)),
        max_connections: opts.max_connections,
        line_rate: opts.line_rate,
        line_burst: opts.line_burst,
    });

    // Executor threads: one per core, this thread included.
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers: Vec<_> = (1..threads)
        .map(|i| {
            let (ex, stop) = (ex.clone(), stop_rx.clone());
            std::thread::Builder::new()
                .name(format!("chatd-io-{i}"))
                .spawn(move || smol::block_on(ex.run(stop.recv())))
                .expect("spawning an executor thread")
        })
        .collect();

    let result = smol::block_on(ex.run(async {
        let mut core_task = ex.spawn(core_loop(core, events_rx, done_rx, store_tx, hash_tx));
        let mut accepts = Vec::new();
        if let Some(l) = plain {
            accepts.push(ex.spawn(accept_loop(l, ctx.clone(), None)));
        }
        if let Some(l) = secure {
            accepts.push(ex.spawn(accept_loop(l, ctx.clone(), tls_cell.clone())));
        }
        let stop = async {
            while let Ok(Control::ReloadTls) = control.recv().await {
                match &tls_cell {
                    Some(cell) => match cell.reload() {
                        Ok(()) => log::info!("TLS certificate reloaded"),
                        Err(e) => {
                            log::error!("TLS certificate not reloaded, keeping the old one: {e}")
                        }
                    },
                    None => log::info!("no TLS listener; nothing to reload"),
                }
            }
            log::info!("stopping: no new connections; telling clients");
            None
        };
        // The core task ends by itself only on a fatal store error.
        let early = future::or(async { Some((&mut core_task).await) }, stop).await;
        drop(accepts);
        let outcome = match early {
            Some(r) => r,
            None => {
                let _ = events_tx.send(Event::Shutdown).await;
                drop(events_tx);
                // The core runs until every store op in flight has finished; see core_loop.
                core_task.await
            }
        };
        // Give writers a moment to send BYE and what was queued before it.
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        while ctx.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            Timer::after(Duration::from_millis(20)).await;
        }
        outcome
    }));
    drop(stop_tx);
    for w in workers {
        let _ = w.join();
    }
    // The core dropped the job senders: the store thread commits what is queued and exits.
    let _ = store_thread.join();
    for h in hash_threads {
        let _ = h.join();
    }
    log::info!("stopped");
    result
}

fn bind(addr: &str) -> Result<TcpListener, String> {
    let std =
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    TcpListener::try_from(std).map_err(|e| format!("cannot listen on {addr}: {e}"))
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The task that owns the core.
async fn core_loop(
    mut core: Core,
    events: Receiver<Event>,
    done: Receiver<Event>,
    store: Sender<StoreJob>,
    hashes: Sender<(u64, HashJob)>,
) -> Result<(), String> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut stopping = false;
    loop {
        if stopping && core.store_inflight() == 0 {
            return Ok(());
        }
        // Results first; reader input only while the store keeps up.
        let event = if let Ok(e) = done.try_recv() {
            e
        } else if stopping || core.store_inflight() + MAX_STORE_BATCH >= MAX_STORE_INFLIGHT {
            match done.recv().await {
                Ok(e) => e,
                Err(_) => return Ok(()),
            }
        } else {
            match future::or(done.recv(), events.recv()).await {
                Ok(e) => e,
                Err(_) => {
                    // No more readers: the server is stopping.
                    stopping = true;
                    continue;
                }
            }
        };
        stopping |= matches!(event, Event::Shutdown);
        core.handle(now_ms(), event, &mut jobs);
        for job in jobs.drain(..) {
            match job {
                // Cannot wait long: the store thread never waits on the core (see `done`).
                Job::Store(j) => {
                    if store.send(j).await.is_err() {
                        return Err("the store thread has stopped".into());
                    }
                }
                // The core never queues more hashes than the channel holds.
                Job::Hash(t, h) => {
                    if hashes.try_send((t, h)).is_err() {
                        return Err("the hashing queue overflowed".into());
                    }
                }
            }
        }
        if let Some(e) = core.fatal() {
            return Err(format!("storage failure: {e}"));
        }
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, tls: Option<Arc<tls::TlsConfigCell>>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, for instance: wait a little rather than spin.
                log::warn!("accept failed: {e}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let active = ctx.active.fetch_add(1, Ordering::SeqCst) + 1;
        let guard = ActiveGuard(ctx.active.clone());
        if active > ctx.max_connections {
            log::warn!(
                "connection limit ({}) reached; refusing {peer}",
                ctx.max_connections
            );
            ctx.ex.spawn(refuse_full(stream, guard)).detach();
            continue;
        }
        let task = connection(stream, peer, ctx.clone(), tls.clone(), guard);
        ctx.ex.spawn(task).detach();
    }
}

/// Counts a connection task as active until dropped.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn refuse_full(mut stream: TcpStream, _guard: ActiveGuard) {
    let mut bye = String::new();
    reply::bye(
        &mut bye,
        ByeCode::SERVER_FULL,
        "the server has too many connections; try again later",
    );
    let _ = future::or(async { stream.write_all(bye.as_bytes()).await }, async {
        Timer::after(Duration::from_secs(5)).await;
        Ok(())
    })
    .await;
    let _ = stream.close().await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    tls: Option<Arc<tls::TlsConfigCell>>,
    _guard: ActiveGuard,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let ready = Some(stream.clone().into());
            serve(stream.clone(), stream, ready, peer.to_string(), ctx).await
        }
        // Boxed: a task's future is as large as its largest branch, and the TLS one (handshake
        // state, TLS streams) is several times the plain one. Inline, every plain connection would
        // carry that size for its whole life.
        Some(cell) => Box::pin(serve_tls(stream, peer, ctx, cell)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    cell: Arc<tls::TlsConfigCell>,
) {
    match tls::handshake(cell.acceptor(), stream).await {
        Ok(s) => {
            let (r, w) = futures_lite::io::split(s);
            serve(r, w, None, format!("{peer} (TLS)"), ctx).await
        }
        Err(e) => log::info!("TLS handshake with {peer} failed: {e}"),
    }
}

/// Runs one connection: registers it with the core, starts its writer, reads until it ends.
/// `ready` is the plain-TCP socket, whose readiness the reader can wait for without holding a
/// buffer (None for TLS, where the TLS layer buffers anyway).
async fn serve<R, W>(
    reader: R,
    writer: W,
    ready: Option<Arc<Async<std::net::TcpStream>>>,
    peer: String,
    ctx: Arc<Ctx>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let outbox = Outbox::new(OUTBOX_LIMIT_BYTES, MAX_INFLIGHT_PER_CONNECTION);
    let connected = Event::Connected {
        conn,
        outbox: outbox.clone(),
        peer,
    };
    if ctx.events.send(connected).await.is_err() {
        return;
    }
    let writer = ctx.ex.spawn(write_loop(writer, outbox.clone()));
    read_loop(reader, ready, conn, &outbox, &ctx).await;
    let _ = ctx.events.send(Event::Disconnected { conn }).await;
    // The core closes the outbox on Disconnected; if the core is gone, close it here.
    if ctx.events.is_closed() {
        outbox.close();
    }
    writer.await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    ready: Option<Arc<Async<std::net::TcpStream>>>,
    conn: ConnId,
    outbox: &Outbox,
    ctx: &Ctx,
) {
    // The read buffer exists only while data flows: after a read that drained the socket, a plain
    // TCP connection gives it back and waits for readiness, so an idle connection holds none.
    let mut buf: Vec<u8> = Vec::new();
    let mut decoder = LineDecoder::new(MAX_LINE_BYTES);
    let mut bucket = Bucket::new(ctx.line_rate, ctx.line_burst);
    let mut inputs = Vec::new();
    loop {
        if buf.is_empty() {
            if let Some(socket) = &ready {
                let readable = future::or(async { socket.readable().await.is_ok() }, async {
                    outbox.closed().await;
                    false
                });
                if !readable.await {
                    return;
                }
            }
            buf = vec![0u8; READ_CHUNK];
        }
        let read = future::or(async { Some(reader.read(&mut buf).await) }, async {
            outbox.closed().await;
            None
        });
        let n = match read.await {
            None | Some(Err(_)) => return,
            Some(Ok(0)) => break,
            Some(Ok(n)) => n,
        };
        decoder.feed(&buf[..n], |f| {
            inputs.push(match f {
                Frame::Line(l) => Input::Line(l.to_vec()),
                Frame::TooLong => Input::TooLong,
            })
        });
        if n < buf.len() && ready.is_some() {
            buf = Vec::new();
        }
        for input in inputs.drain(..) {
            if let Some(wait) = bucket.take() {
                // Boxed: most connections never wait here, so they should not carry a timer.
                Box::pin(Timer::after(wait)).await;
            }
            if !outbox.acquire_credit().await {
                return;
            }
            if ctx.events.send(Event::Input { conn, input }).await.is_err() {
                return;
            }
        }
    }
    // The client closed its sending side (`printf ... | nc` does): answer what it sent first. A
    // partial line at the end is discarded, as the spec says.
    let drain = future::or(outbox.all_answered(), async {
        Timer::after(DRAIN_AFTER_EOF).await;
    });
    Box::pin(drain).await;
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, outbox: Outbox) {
    let mut batch: Vec<Chunk> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while outbox.next_batch(&mut batch).await {
        // Everything queued leaves in one write: one syscall however many lines.
        let bytes: &[u8] = if batch.len() == 1 {
            batch[0].as_bytes()
        } else {
            buf.reserve_exact(batch.iter().map(|c| c.as_bytes().len()).sum());
            for c in &batch {
                buf.extend_from_slice(c.as_bytes());
            }
            &buf
        };
        let written = future::or(async { writer.write_all(bytes).await.is_ok() }, async {
            Timer::after(WRITE_STALL_TIMEOUT).await;
            false
        })
        .await;
        // Nothing is kept between writes: a connection that had a burst and went quiet would
        // otherwise hold the burst's size (up to the outbox limit) for as long as it stays open.
        // The cost is an allocation or two per write, small next to the write itself.
        batch = Vec::new();
        buf = Vec::new();
        if !written {
            outbox.close();
            return;
        }
    }
    let _ = future::or(async { writer.close().await }, async {
        Timer::after(Duration::from_secs(5)).await;
        Ok(())
    })
    .await;
}

/// A token bucket: `rate` lines a second, up to `burst` at once. Past it the reader waits, which
/// slows the client through TCP; no line is refused.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token; returns how long to wait first when none is left.
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now > self.last {
            let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        // The next token is earned this long after `last` (which may lie ahead, if lines already
        // wait); it is spent at once.
        let ready = self.last + Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        self.tokens = 0.0;
        self.last = ready;
        Some(ready.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;

    #[test]
    fn bucket_gives_the_burst_then_spaces_lines_at_the_rate() {
        let mut b = Bucket::new(10, 3);
        assert_eq!((b.take(), b.take(), b.take()), (None, None, None));
        let first = b.take().expect("the burst is spent");
        assert!(
            first.as_secs_f64() > 0.05 && first.as_secs_f64() <= 0.1,
            "{first:?}"
        );
        // The next line waits a further tenth of a second after that one.
        let second = b.take().expect("still no token");
        assert!(
            second.as_secs_f64() > 0.15 && second.as_secs_f64() <= 0.2,
            "{second:?}"
        );
    }
}
