//! The connection tasks: the accept loop, one task per connection that both reads and writes, and
//! the token bucket that paces a connection's input.
//!
//! Each accepted connection is counted in [`Connections`] from accept until its task ends, so the
//! server can refuse connections past its limit and, at shutdown, wait until every connection has
//! sent what it had queued.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::{Sender, TrySendError};
use async_net::{TcpListener, TcpStream};
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use smol::{Async, Executor, Timer};

use super::tls;
use crate::config::{
    DRAIN_AFTER_EOF, IRC_MAX_INPUT_BYTES, MAX_INFLIGHT_PER_CONNECTION, MAX_LINE_BYTES,
    OUTBOX_LIMIT_BYTES, READ_CHUNK, WRITE_STALL_TIMEOUT,
};
use crate::core::{ConnId, Event, Input};
use crate::irc::{Effects, Session};
use crate::outbox::{Batch, Chunk, Outbox};
use crate::peer::{AddrKey, Network, Peer};
use crate::proto::code::ByeCode;
use crate::proto::deflate::{is_compress_line, Deflater, Intake, Unit};
use crate::proto::server_line::ServerLine;
use crate::tally::Tally;

/// The protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Front {
    /// chatd's line protocol (spec/PROTOCOL.md): lines go to the core as they are.
    Chatd,
    /// IRC (spec/IRC.md): each connection's lines go through its `irc::Session`.
    Irc,
}

/// Shared by the accept loops and connection tasks.
pub(super) struct Ctx {
    pub(super) ex: Arc<Executor<'static>>,
    pub(super) events: Sender<Event>,
    pub(super) next_conn: AtomicU64,
    pub(super) connections: Arc<Connections>,
    pub(super) max_connections: usize,
    /// 0: no limit per address.
    pub(super) max_per_address: usize,
    pub(super) exempt: Vec<Network>,
    pub(super) line_rate: u32,
    pub(super) line_burst: u32,
    /// What IRC clients without credentials log in with (`--irc-default-password`).
    pub(super) irc_default_password: Option<String>,
    /// Refusals and failed handshakes since the last summary in the log.
    pub(super) tally: Mutex<Tally>,
}

impl Ctx {
    fn count(&self, what: &'static str, source: Option<AddrKey>) {
        self.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(what, source);
    }
}

/// Counts the connection tasks alive, in all and per address, and wakes whoever waits for the
/// count to reach zero.
#[derive(Default)]
pub(super) struct Connections {
    active: AtomicUsize,
    /// Connections per address, for the addresses that have one (exempt ones are not counted).
    /// Entries go when their count does, so the map holds at most one entry per connection.
    per_address: Mutex<HashMap<AddrKey, usize>>,
    none_left: event_listener::Event,
}

impl Connections {
    /// Counts a new connection (under `key` too, if it has one) until the returned guard is
    /// dropped; also returns the new total and the new count for `key`.
    fn enter(self: &Arc<Self>, key: Option<AddrKey>) -> (usize, usize, ActiveGuard) {
        let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        let from_key = key.map_or(0, |k| {
            let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(k).or_insert(0);
            *n += 1;
            *n
        });
        (active, from_key, ActiveGuard(self.clone(), key))
    }

    fn leave(&self, key: Option<AddrKey>) {
        if let Some(k) = key {
            let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&k);
                }
            }
        }
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.none_left.notify(usize::MAX);
        }
    }

    /// Returns once no connection task is left.
    pub(super) async fn all_closed(&self) {
        loop {
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            // Listen first, then check again: a task ending in between notifies this listener.
            let listener = self.none_left.listen();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// Counts a connection task as active (in all, and under its address) until dropped.
struct ActiveGuard(Arc<Connections>, Option<AddrKey>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// Accepts connections until the task is dropped. Each gets a task of its own at once (the TLS
/// handshake runs there), or `BYE SERVER_FULL` past the connection limit, or
/// `BYE TOO_MANY_CONNECTIONS` past the limit for its address.
pub(super) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    tls: Option<Arc<tls::TlsConfigCell>>,
    front: Front,
) {
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
        let key = Peer::new(peer, false, &ctx.exempt).key();
        let (active, from_key, guard) = ctx.connections.enter(key);
        if active > ctx.max_connections {
            log::debug!(
                "connection limit ({}) reached; refusing {peer}",
                ctx.max_connections
            );
            ctx.count("connections refused, the server being full", key);
            ctx.ex
                .spawn(refuse(
                    stream,
                    tls.clone(),
                    guard,
                    ByeCode::SERVER_FULL,
                    front,
                ))
                .detach();
            continue;
        }
        if ctx.max_per_address > 0 && from_key > ctx.max_per_address {
            log::debug!(
                "connection limit per address ({}) reached; refusing {peer}",
                ctx.max_per_address
            );
            ctx.count("connections refused, their address having too many", key);
            ctx.ex
                .spawn(refuse(
                    stream,
                    tls.clone(),
                    guard,
                    ByeCode::TOO_MANY_CONNECTIONS,
                    front,
                ))
                .detach();
            continue;
        }
        match &tls {
            // The task is the connection's state machine itself, with nothing around it.
            None => {
                let _ = stream.set_nodelay(true);
                let task = Task::new(Plain(stream.into()), peer, false, ctx.clone(), front, guard);
                ctx.ex.spawn(task).detach();
            }
            Some(cell) => {
                let task = serve_tls(stream, peer, ctx.clone(), cell.clone(), front, guard);
                ctx.ex.spawn(task).detach();
            }
        }
    }
}

/// Sends `BYE <code>` instead of HELLO and closes; on the TLS port inside TLS, after the
/// handshake (spec 7.4), which gets the usual time limit.
async fn refuse(
    stream: TcpStream,
    tls: Option<Arc<tls::TlsConfigCell>>,
    _guard: ActiveGuard,
    code: ByeCode,
    front: Front,
) {
    let text = match code {
        ByeCode::TOO_MANY_CONNECTIONS => {
            "too many connections from your address; close one and try again"
        }
        _ => "the server has too many connections; try again later",
    };
    let bye = match front {
        Front::Chatd => ServerLine::Bye { code, text }.to_bytes(),
        Front::Irc => format!("ERROR :Closing link: {text}\r\n").into_bytes(),
    };
    match tls {
        None => say_and_close(stream, &bye).await,
        Some(cell) => {
            if let Ok(s) = tls::handshake(cell.acceptor(), stream).await {
                say_and_close(s, &bye).await;
            }
        }
    }
}

/// Writes `bytes` and closes, giving up on a client that does not read within a few seconds.
async fn say_and_close<S: AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) {
    let _ = future::or(async { stream.write_all(bytes).await }, async {
        Timer::after(Duration::from_secs(5)).await;
        Ok(())
    })
    .await;
    let _ = future::or(async { stream.close().await }, async {
        Timer::after(Duration::from_secs(5)).await;
        Ok(())
    })
    .await;
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    cell: Arc<tls::TlsConfigCell>,
    front: Front,
    guard: ActiveGuard,
) {
    let _ = stream.set_nodelay(true);
    match tls::handshake(cell.acceptor(), stream).await {
        Ok(s) => Task::new(s, peer, true, ctx, front, guard).await,
        Err(e) => {
            log::debug!("TLS handshake with {peer} failed: {e}");
            let key = Peer::new(peer, false, &ctx.exempt).key();
            ctx.count("TLS handshakes failed", key);
        }
    }
}

/// A plain TCP connection, read and written in place: each direction waits for readiness through
/// the one waker slot the reactor keeps for it (async-net's stream adds a readiness future per
/// direction).
struct Plain(Arc<Async<std::net::TcpStream>>);

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown(Shutdown::Write))
    }
}

/// What a connection's task reads and writes: a plain TCP socket or a TLS stream.
trait Stream: AsyncRead + AsyncWrite + Unpin {
    /// Ready when a read may find bytes. After a short read the task asks this before reading
    /// again, so that a socket it emptied is not read once more only to hear that it is empty.
    fn poll_read_ready(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Stream for Plain {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // An error shows in the read that follows.
        self.0.poll_readable(cx).map(|_| ())
    }
}

/// A TLS stream reads whole records into its own buffer, so a short read says nothing about the
/// socket: it is always read.
impl Stream for futures_rustls::server::TlsStream<TcpStream> {}

/// Lines a connection's task takes from what it read before it lets other tasks run.
const LINES_PER_POLL: usize = 64;

/// Lines a batch for the core has room for when it is first allocated: what one read of a busy
/// client brings (about five lines in the kit's direct messages) without growing.
const BATCH_FIRST_CAPACITY: usize = 8;

/// The lines of one poll, for the core: a single line goes as an [`Event::Input`] (no list
/// allocated for it), more as one [`Event::Inputs`].
#[derive(Default)]
struct Lines {
    first: Option<Input>,
    more: Vec<Input>,
}

impl Lines {
    fn push(&mut self, input: Input) {
        match self.first.take() {
            None if self.more.is_empty() => self.first = Some(input),
            first => {
                if self.more.is_empty() {
                    self.more.reserve(BATCH_FIRST_CAPACITY);
                }
                self.more.extend(first);
                self.more.push(input);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }

    /// The lines as one event for connection `conn`, leaving none.
    fn take(&mut self, conn: ConnId) -> Option<Event> {
        if let Some(input) = self.first.take() {
            return Some(Event::Input { conn, input });
        }
        if self.more.is_empty() {
            return None;
        }
        Some(Event::Inputs {
            conn,
            inputs: std::mem::take(&mut self.more),
        })
    }
}

/// How long closing a connection (a TLS close_notify, the TCP shutdown) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the reading half of a connection's task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    /// Reading lines and handing them to the core.
    Lines,
    /// A COMPRESS line went to the core: nothing more is read until every command is answered,
    /// since the bytes after it are compressed or not depending on its answer (spec 4.38).
    Compress,
    /// The compressed stream went bad: the core answers `BYE BAD_DEFLATE` and closes.
    BadDeflate,
    /// The client closed its sending side: what it sent is answered first, within
    /// [`DRAIN_AFTER_EOF`].
    Eof,
    /// Nothing more is read: the core is told that the connection is gone.
    Ending,
    /// The core was told (or is gone).
    Done,
}

/// Where the writing half of a connection's task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writing {
    /// Writing what the outbox holds.
    Open,
    /// The outbox is closed and everything was written: the connection is being closed.
    Closing,
    /// Nothing more is written.
    Done,
}

/// Bytes being written: a chunk as queued (most writes are one line, sent without a copy), or
/// the lines of a batch put together (and perhaps compressed or rendered as IRC).
enum Out {
    Chunk(Chunk),
    Bytes(Vec<u8>),
}

impl Out {
    fn bytes(&self) -> &[u8] {
        match self {
            Out::Chunk(c) => c.as_bytes(),
            Out::Bytes(b) => b,
        }
    }
}

/// An IRC connection's front end (spec/IRC.md), boxed: a line-protocol connection has none.
struct IrcFront {
    session: Session,
    /// Command lines for the core, in order, each waiting for a credit.
    to_core: VecDeque<String>,
    /// What the front end asks the core for after what it rendered last (the NAMES of the rooms
    /// joined at login): sent once that is written.
    follow_ups: Vec<String>,
}

/// An event for the core that found its queue full, on its way.
type Sending = Pin<Box<dyn Future<Output = bool> + Send>>;

/// One connection: one task that reads the client's lines and hands them to the core, and writes
/// what the core queued in the connection's outbox. It waits for whichever of them can go on (the
/// socket readable or writable, a credit back, something queued), with one waker, and holds
/// nothing it does not need while the connection is idle: no read buffer (a read goes through
/// the stack), no timer, no second task. See docs/ARCHITECTURE.md.
struct Task<S> {
    io: S,
    conn: ConnId,
    ctx: Arc<Ctx>,
    outbox: Outbox,
    intake: Intake,
    bucket: Bucket,
    reading: Reading,
    writing: Writing,
    /// The next line, taken from the intake and waiting for its turn (the line rate, a credit),
    /// and whether it is a COMPRESS.
    line: Option<(Input, bool)>,
    /// The reading half's wait: for the line rate, or for the answers after EOF. Boxed: most
    /// connections never wait for one.
    timer: Option<Box<Timer>>,
    /// What is being written, and how much of it went.
    out: Option<(Out, usize)>,
    /// The writing half's wait: since a write stopped making progress (WRITE_STALL_TIMEOUT), or
    /// for the close to finish.
    stall: Option<Box<Timer>>,
    /// After COMPRESS: its DEFLATE state (the window and the hash chains), for as long as the
    /// connection lives, since later output refers back to earlier output.
    deflater: Option<Box<Deflater>>,
    irc: Option<Box<IrcFront>>,
    /// An event the core's queue had no room for; nothing else goes to the core before it.
    sending: Option<Sending>,
    /// The core asked to hear when the outbox has room for the next part of an answer, and it has.
    drained_due: bool,
    /// The last read was short, or found nothing: the socket is read again once it is readable.
    emptied: bool,
    _guard: ActiveGuard,
}

impl<S: Stream> Task<S> {
    /// A connection, registered with the core.
    fn new(
        io: S,
        peer: SocketAddr,
        tls: bool,
        ctx: Arc<Ctx>,
        front: Front,
        guard: ActiveGuard,
    ) -> Task<S> {
        let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
        let irc = match front {
            Front::Chatd => None,
            Front::Irc => Some(Box::new(IrcFront {
                session: Session::with_default_password(
                    env!("CARGO_PKG_VERSION"),
                    ctx.irc_default_password.as_deref(),
                ),
                to_core: VecDeque::new(),
                follow_ups: Vec::new(),
            })),
        };
        let max_line = if irc.is_some() {
            IRC_MAX_INPUT_BYTES
        } else {
            MAX_LINE_BYTES
        };
        let outbox = Outbox::new(OUTBOX_LIMIT_BYTES, MAX_INFLIGHT_PER_CONNECTION);
        let connected = Event::Connected {
            conn,
            outbox: outbox.clone(),
            peer: Peer::new(peer, tls, &ctx.exempt),
        };
        let mut task = Task {
            io,
            conn,
            bucket: Bucket::new(ctx.line_burst, Instant::now()),
            ctx,
            outbox,
            intake: Intake::new(max_line),
            reading: Reading::Lines,
            writing: Writing::Open,
            line: None,
            timer: None,
            out: None,
            stall: None,
            deflater: None,
            irc,
            sending: None,
            drained_due: false,
            emptied: false,
            _guard: guard,
        };
        if !task.offer(&mut Lines::default(), connected) {
            task.core_gone();
        }
        task
    }

    /// Hands `event` to the core: at once if its queue has room, or else through a send that is
    /// polled before anything else goes to the core. False when the core is gone.
    /// The lines gathered in `batch` go first: the core sees a connection's events in order.
    fn offer(&mut self, batch: &mut Lines, event: Event) -> bool {
        debug_assert!(self.sending.is_none());
        if let Some(lines) = batch.take(self.conn) {
            match self.ctx.events.try_send(lines) {
                Ok(()) => {}
                Err(TrySendError::Full(lines)) => {
                    let events = self.ctx.events.clone();
                    self.sending = Some(Box::pin(async move {
                        events.send(lines).await.is_ok() && events.send(event).await.is_ok()
                    }));
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match self.ctx.events.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(event)) => {
                let events = self.ctx.events.clone();
                self.sending = Some(Box::pin(async move { events.send(event).await.is_ok() }));
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Hands the lines gathered in this poll to the core.
    fn flush_batch(&mut self, cx: &mut Context<'_>, mut batch: Lines) {
        if self.reading == Reading::Done {
            // The core is gone: nothing more goes to it.
            return;
        }
        debug_assert!(self.sending.is_none() || batch.is_empty());
        let Some(lines) = batch.take(self.conn) else {
            return;
        };
        match self.ctx.events.try_send(lines) {
            Ok(()) => {}
            Err(TrySendError::Full(lines)) => {
                let events = self.ctx.events.clone();
                let mut sending: Sending =
                    Box::pin(async move { events.send(lines).await.is_ok() });
                // Polled once here, so that the task is woken when the queue has room.
                match sending.as_mut().poll(cx) {
                    Poll::Pending => self.sending = Some(sending),
                    Poll::Ready(true) => {}
                    Poll::Ready(false) => self.core_gone(),
                }
            }
            Err(TrySendError::Closed(_)) => self.core_gone(),
        }
    }

    /// The core has stopped: nothing more goes to it, and what is queued is still written.
    fn core_gone(&mut self) {
        self.outbox.close();
        self.sending = None;
        self.reading = Reading::Done;
    }

    /// The writing half: writes what is queued until the outbox is empty or the socket full.
    /// True when it left its waker with the outbox (it waits for a push, which closing also wakes).
    fn write_side(&mut self, cx: &mut Context<'_>) -> bool {
        // A write just finished: the next look at the outbox also asks whether the core waits to
        // hear that there is room.
        let mut wrote = false;
        loop {
            match self.writing {
                Writing::Done => return false,
                Writing::Closing => {
                    let closed = Pin::new(&mut self.io).poll_close(cx).is_ready();
                    if closed || self.stall.as_mut().is_none_or(|t| poll_timer(t, cx)) {
                        self.stall = None;
                        self.writing = Writing::Done;
                    }
                    return false;
                }
                Writing::Open => {}
            }
            let Some((out, at)) = &mut self.out else {
                let next = if std::mem::take(&mut wrote) {
                    // A long answer waits for room to send its next part: now there is. Told
                    // only after the write, so that the part it sends next replaces what the
                    // client has read, and an answer to a client that does not read takes no
                    // more memory than one write.
                    self.outbox
                        .poll_batch_after_write(cx, &mut self.drained_due)
                } else {
                    self.outbox.poll_batch(cx)
                };
                match next {
                    Poll::Pending => return true,
                    Poll::Ready(None) => {
                        self.writing = Writing::Closing;
                        self.stall = Some(Box::new(Timer::after(CLOSE_TIMEOUT)));
                    }
                    Poll::Ready(Some(batch)) => self.out = Some((self.render(batch), 0)),
                }
                continue;
            };
            // Everything queued leaves in one write: one syscall however many lines.
            let mut moved = false;
            let mut failed = false;
            let mut pending = false;
            while *at < out.bytes().len() {
                match Pin::new(&mut self.io).poll_write(cx, &out.bytes()[*at..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        *at += n;
                        moved = true;
                    }
                    Poll::Ready(_) => {
                        failed = true;
                        break;
                    }
                    Poll::Pending => {
                        pending = true;
                        break;
                    }
                }
            }
            if !failed && !pending {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => failed = true,
                    Poll::Pending => pending = true,
                }
            }
            if pending {
                // A client that does not read: its write may make no progress for so long.
                let stall = self
                    .stall
                    .get_or_insert_with(|| Box::new(Timer::after(WRITE_STALL_TIMEOUT)));
                if moved {
                    stall.set_after(WRITE_STALL_TIMEOUT);
                }
                if !poll_timer(stall, cx) {
                    return false;
                }
                failed = true;
            }
            // Nothing is kept between writes: a connection that had a burst and went quiet would
            // otherwise hold the burst's size (up to the outbox limit) for as long as it stays
            // open.
            self.out = None;
            self.stall = None;
            if failed {
                self.outbox.close();
                self.writing = Writing::Done;
                return false;
            }
            if let Some(irc) = &mut self.irc {
                // If the connection is closing meanwhile they are dropped, and what is still
                // queued (the answer to a QUIT) is written like anything else.
                irc.to_core.extend(irc.follow_ups.drain(..));
            }
            wrote = true;
        }
    }

    /// The bytes to write for `batch`.
    fn render(&mut self, batch: Batch) -> Out {
        if let Some(irc) = &mut self.irc {
            // The core's lines are rendered as IRC here, on this connection's task, so that the
            // core's task does no IRC work; the front end's own answers pass as they are.
            let mut fx = Effects::default();
            for c in batch.iter() {
                match c {
                    Chunk::Direct(b) => fx.client.push_str(&String::from_utf8_lossy(b)),
                    other => irc.session.server_bytes(other.as_bytes(), &mut fx),
                }
            }
            irc.follow_ups.append(&mut fx.core);
            return Out::Bytes(fx.client.into_bytes());
        }
        let batch = if self.deflater.is_none()
            && batch.len() == 1
            && !batch.iter().any(|c| matches!(c, Chunk::StartDeflate))
        {
            match batch.into_single() {
                Ok(c) => return Out::Chunk(c),
                Err(b) => b,
            }
        } else {
            batch
        };
        let total: usize = batch.iter().map(|c| c.as_bytes().len()).sum();
        let mut buf: Vec<u8> = Vec::new();
        let mut plain: Vec<u8> = Vec::new();
        if self.deflater.is_some() {
            plain.reserve_exact(total);
        } else {
            buf.reserve_exact(total);
        }
        for c in batch.iter() {
            match (c, &self.deflater) {
                (Chunk::StartDeflate, _) => self.deflater = Some(Box::default()),
                (c, None) => buf.extend_from_slice(c.as_bytes()),
                (c, Some(_)) => plain.extend_from_slice(c.as_bytes()),
            }
        }
        if let Some(d) = &mut self.deflater {
            // One sync flush per write: the client can read every line of it at once.
            d.write(&plain, &mut buf);
        }
        Out::Bytes(buf)
    }

    /// The reading half: reads lines and hands them to the core until it must wait (for the
    /// socket, a credit, the core's queue, the line rate). `watched`: the writing half left the
    /// task's waker with the outbox, so its closing wakes the task. The lines it takes go to the
    /// core together when it stops.
    fn read_side(&mut self, cx: &mut Context<'_>, watched: bool) {
        // Lines that have their credits, gathered here and handed over together once this poll
        // has read what it can ([`Event::Inputs`]): one hand-off for what one read brought. A
        // local, not a field: an idle connection's task holds none.
        let mut batch = Lines::default();
        self.read_lines(cx, watched, &mut batch);
        self.flush_batch(cx, batch);
    }

    fn read_lines(&mut self, cx: &mut Context<'_>, watched: bool, batch: &mut Lines) {
        let mut budget = LINES_PER_POLL;
        let mut now: Option<Instant> = None;
        loop {
            // What waits to reach the core goes first: the core sees a connection's events in
            // order.
            if let Some(sending) = &mut self.sending {
                match sending.as_mut().poll(cx) {
                    Poll::Pending => return,
                    Poll::Ready(true) => self.sending = None,
                    Poll::Ready(false) => {
                        self.core_gone();
                        return;
                    }
                }
            }
            match self.reading {
                Reading::Done => return,
                Reading::Ending => {
                    // The core closes the outbox on Disconnected; if the core is gone, close it
                    // here.
                    let conn = self.conn;
                    if !self.offer(batch, Event::Disconnected { conn }) {
                        self.outbox.close();
                    }
                    self.reading = Reading::Done;
                    continue;
                }
                _ => {}
            }
            if self.drained_due {
                self.drained_due = false;
                let conn = self.conn;
                if !self.offer(batch, Event::Drained { conn }) {
                    self.core_gone();
                    return;
                }
                continue;
            }
            if let Some(irc) = &mut self.irc {
                if !irc.to_core.is_empty() {
                    // An IRC line's command lines, or the front end's follow-ups: a credit each,
                    // as the client's own lines.
                    match self.outbox.poll_credit(cx) {
                        Poll::Pending => return,
                        Poll::Ready(false) => {
                            irc.to_core.clear();
                            self.reading = Reading::Ending;
                            continue;
                        }
                        Poll::Ready(true) => {}
                    }
                    let Some(line) = irc.to_core.pop_front() else {
                        continue;
                    };
                    let input = Input::Line(line.into_bytes());
                    let conn = self.conn;
                    if !self.offer(batch, Event::Input { conn, input }) {
                        self.core_gone();
                        return;
                    }
                    continue;
                }
            }
            match self.reading {
                Reading::Compress => {
                    if self.outbox.poll_all_answered(cx).is_pending() {
                        return;
                    }
                    if self.outbox.is_closed() {
                        self.reading = Reading::Ending;
                        continue;
                    }
                    if self.outbox.deflating() {
                        self.intake.start_inflate();
                    }
                    self.reading = Reading::Lines;
                    continue;
                }
                Reading::BadDeflate => {
                    if self.outbox.poll_closed(cx).is_pending() {
                        return;
                    }
                    self.reading = Reading::Ending;
                    continue;
                }
                Reading::Eof => {
                    let answered = self.outbox.poll_all_answered(cx).is_ready();
                    if answered || self.timer.as_mut().is_none_or(|t| poll_timer(t, cx)) {
                        self.timer = None;
                        self.reading = Reading::Ending;
                        continue;
                    }
                    return;
                }
                Reading::Lines | Reading::Ending | Reading::Done => {}
            }
            if self.line.is_none() {
                // Everything read so far first, one line at a time: after a COMPRESS line the
                // bytes that follow are compressed or not depending on its answer.
                let Some(unit) = self.intake.next_unit() else {
                    if !self.read_socket(cx, watched) {
                        return;
                    }
                    continue;
                };
                let (input, compress) = match unit {
                    Unit::Line(l) => {
                        // IRC has no COMPRESS: its lines are never the line protocol's.
                        let compress = self.irc.is_none() && is_compress_line(&l);
                        (Input::Line(l), compress)
                    }
                    Unit::TooLong => (Input::TooLong, false),
                    Unit::BadDeflate => {
                        // Nothing more can be read. The core answers BYE BAD_DEFLATE and closes.
                        let conn = self.conn;
                        let bad = Event::Input {
                            conn,
                            input: Input::BadDeflate,
                        };
                        if !self.offer(batch, bad) {
                            self.core_gone();
                            return;
                        }
                        self.reading = Reading::BadDeflate;
                        continue;
                    }
                };
                self.line = Some((input, compress));
                // One look at the clock for the lines of one poll, which all arrive now.
                let now = *now.get_or_insert_with(Instant::now);
                if let Some(wait) = self
                    .bucket
                    .take(now, self.ctx.line_rate, self.ctx.line_burst)
                {
                    self.timer = Some(Box::new(Timer::after(wait)));
                }
                budget -= 1;
                if budget == 0 {
                    // Others get their turn; this task comes back at once.
                    cx.waker().wake_by_ref();
                    return;
                }
            }
            if let Some(t) = &mut self.timer {
                if !poll_timer(t, cx) {
                    return;
                }
                self.timer = None;
            }
            if let Some(irc) = &mut self.irc {
                // An IRC line becomes zero or more command lines for the core, and perhaps an
                // answer of the front end's own (CAP, a numeric), queued behind what is queued.
                let Some((input, _)) = self.line.take() else {
                    continue;
                };
                let mut fx = Effects::default();
                match &input {
                    Input::Line(l) => irc
                        .session
                        .client_line(&String::from_utf8_lossy(l), &mut fx),
                    _ => irc.session.too_long(&mut fx),
                }
                irc.to_core.extend(fx.core);
                if !fx.client.is_empty()
                    && self
                        .outbox
                        .push(Chunk::Direct(fx.client.into_bytes()))
                        .is_err()
                {
                    self.outbox.close();
                    self.reading = Reading::Ending;
                }
                continue;
            }
            match self.outbox.poll_credit(cx) {
                Poll::Pending => return,
                Poll::Ready(false) => {
                    self.reading = Reading::Ending;
                    continue;
                }
                Poll::Ready(true) => {}
            }
            let Some((input, compress)) = self.line.take() else {
                continue;
            };
            batch.push(input);
            if compress {
                self.reading = Reading::Compress;
            }
        }
    }

    /// Reads what the socket has into the intake. False when the task must wait for it.
    fn read_socket(&mut self, cx: &mut Context<'_>, watched: bool) -> bool {
        // A closed outbox ends the reading: nothing read now would be answered. When the writing
        // half waits on the outbox it found it open in this poll, and a close since wakes the
        // task; a line read meanwhile finds no credit.
        if !watched && self.outbox.is_closed() {
            self.reading = Reading::Ending;
            return true;
        }
        if self.emptied && self.io.poll_read_ready(cx).is_pending() {
            return self.wait_for_bytes(cx, watched);
        }
        // On the stack: an idle connection holds no read buffer.
        let mut buf = [0u8; READ_CHUNK];
        let read = Pin::new(&mut self.io).poll_read(cx, &mut buf);
        // After a short read, or none, the socket is asked for readiness first: that also
        // consumes the readiness the reactor reported, so that the next wait starts afresh.
        self.emptied = match read {
            Poll::Ready(Ok(n)) => n < buf.len(),
            Poll::Ready(Err(_)) => false,
            Poll::Pending => true,
        };
        match read {
            Poll::Ready(Ok(0)) => {
                // The client closed its sending side (`printf ... | nc` does): answer what it sent
                // first. A partial line at the end is discarded, as the spec says.
                self.reading = Reading::Eof;
                self.timer = Some(Box::new(Timer::after(DRAIN_AFTER_EOF)));
                true
            }
            Poll::Ready(Ok(n)) => {
                self.intake.feed(&buf[..n]);
                true
            }
            Poll::Ready(Err(_)) => {
                self.reading = Reading::Ending;
                true
            }
            Poll::Pending => self.wait_for_bytes(cx, watched),
        }
    }

    /// The socket has nothing to read: the task waits for it. True when the reading ended instead.
    fn wait_for_bytes(&mut self, cx: &mut Context<'_>, watched: bool) -> bool {
        self.intake.shrink();
        // While a write is stuck the outbox does not have the task's waker: leave it, so that
        // closing the outbox still ends the reading.
        if !watched && self.outbox.poll_closed(cx).is_ready() {
            self.reading = Reading::Ending;
            return true;
        }
        false
    }
}

/// The size in bytes of the pieces of a plain connection's task, as this build lays them out.
pub(super) fn sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("task_future", size_of::<Task<Plain>>()),
        ("intake", size_of::<Intake>()),
        ("line_bucket", size_of::<Bucket>()),
    ]
}

/// Polls a boxed timer: true once it fired.
fn poll_timer(t: &mut Timer, cx: &mut Context<'_>) -> bool {
    Pin::new(t).poll(cx).is_ready()
}

impl<S: Stream> Future for Task<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let task = self.get_mut();
        let watched = task.write_side(cx);
        task.read_side(cx, watched);
        // The reading half may have queued an answer of the IRC front end's (which wakes the
        // task through the outbox) or closed the outbox (likewise).
        if task.reading == Reading::Done && task.sending.is_none() && task.writing == Writing::Done
        {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// A token bucket: `rate` lines a second, up to `burst` at once. Past it the reader waits, which
/// slows the client through TCP; no line is refused. The rate and the burst are the server's
/// (`Ctx`), given to each call rather than kept in every connection.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes a token at `now`; returns how long to wait first when none is left.
    fn take(&mut self, now: Instant, rate: u32, burst: u32) -> Option<Duration> {
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        if now > self.last {
            let earned = now.duration_since(self.last).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(burst);
            self.last = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        // The next token is earned this long after `last` (which may lie ahead, if lines already
        // wait); it is spent at once.
        let ready = self.last + Duration::from_secs_f64((1.0 - self.tokens) / rate);
        self.tokens = 0.0;
        self.last = ready;
        Some(ready.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::{Bucket, Connections};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn all_closed_waits_for_the_last_connection() {
        let conns = Arc::new(Connections::default());
        smol::block_on(conns.all_closed());
        let (n, _, first) = conns.enter(None);
        let (m, _, second) = conns.enter(None);
        assert_eq!((n, m), (1, 2));
        let waiter = smol::spawn({
            let conns = conns.clone();
            async move { conns.all_closed().await }
        });
        drop(first);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(second);
        smol::block_on(waiter);
    }

    #[test]
    fn connections_are_counted_per_address_and_forgotten_when_gone() {
        use crate::peer::AddrKey;
        let conns = Arc::new(Connections::default());
        let a = Some(AddrKey::V4("192.0.2.1".parse().unwrap()));
        let b = Some(AddrKey::V4("192.0.2.2".parse().unwrap()));
        let (_, n1, g1) = conns.enter(a);
        let (_, n2, g2) = conns.enter(a);
        let (_, m1, g3) = conns.enter(b);
        let (total, unkeyed, g4) = conns.enter(None);
        assert_eq!((n1, n2, m1, total, unkeyed), (1, 2, 1, 4, 0));
        drop(g1);
        let (_, n3, g5) = conns.enter(a);
        assert_eq!(n3, 2);
        for g in [g2, g3, g4, g5] {
            drop(g);
        }
        assert!(conns.per_address.lock().unwrap().is_empty());
        smol::block_on(conns.all_closed());
    }

    #[test]
    fn bucket_gives_the_burst_then_spaces_lines_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, t0);
        assert_eq!(
            (b.take(t0, 10, 3), b.take(t0, 10, 3), b.take(t0, 10, 3)),
            (None, None, None)
        );
        let tenth = Duration::from_millis(100);
        assert_eq!(b.take(t0, 10, 3), Some(tenth), "the burst is spent");
        // The next line waits a further tenth of a second after that one.
        assert_eq!(b.take(t0, 10, 3), Some(2 * tenth));
        // Once the waits are over, the tokens earned since come back, up to the burst.
        let later = t0 + 10 * tenth;
        assert_eq!(
            (
                b.take(later, 10, 3),
                b.take(later, 10, 3),
                b.take(later, 10, 3)
            ),
            (None, None, None)
        );
        assert_eq!(b.take(later, 10, 3), Some(tenth));
    }
}
