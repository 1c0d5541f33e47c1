//! The connection tasks: the accept loop, one task per connection with its reader and writer,
//! and the token bucket that paces a connection's input.
//!
//! Each accepted connection is counted in [`Connections`] from accept until its task ends, so the
//! server can refuse connections past its limit and, at shutdown, wait until every connection has
//! sent what it had queued.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_channel::Sender;
use async_net::{TcpListener, TcpStream};
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{Async, Executor, Timer};

use super::tls;
use crate::config::{
    DRAIN_AFTER_EOF, IRC_MAX_INPUT_BYTES, MAX_INFLIGHT_PER_CONNECTION, MAX_LINE_BYTES,
    OUTBOX_LIMIT_BYTES, READ_CHUNK, WRITE_STALL_TIMEOUT,
};
use crate::core::{ConnId, Event, Input};
use crate::irc::{Effects, Session};
use crate::outbox::{Chunk, Outbox};
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

/// One IRC connection's front end, shared by its reader (client lines) and writer (core lines).
/// The lock is never held across an `.await`.
type IrcSession = Arc<Mutex<Session>>;

fn lock(s: &IrcSession) -> std::sync::MutexGuard<'_, Session> {
    // A panic while translating one line leaves the session usable for the next.
    s.lock().unwrap_or_else(|e| e.into_inner())
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
        let key = Peer::new(String::new(), peer.ip(), &ctx.exempt).key;
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
        let task = connection(stream, peer, ctx.clone(), tls.clone(), guard, front);
        ctx.ex.spawn(task).detach();
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

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    tls: Option<Arc<tls::TlsConfigCell>>,
    _guard: ActiveGuard,
    front: Front,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => {
            let ready = Some(stream.clone().into());
            let shown = peer.to_string();
            serve(stream.clone(), stream, ready, peer, shown, ctx, front).await
        }
        // Boxed: a task's future is as large as its largest branch, and the TLS one (handshake
        // state, TLS streams) is several times the plain one. Inline, every plain connection would
        // carry that size for its whole life.
        Some(cell) => Box::pin(serve_tls(stream, peer, ctx, cell, front)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    cell: Arc<tls::TlsConfigCell>,
    front: Front,
) {
    match tls::handshake(cell.acceptor(), stream).await {
        Ok(s) => {
            let (r, w) = futures_lite::io::split(s);
            serve(r, w, None, peer, format!("{peer} (TLS)"), ctx, front).await
        }
        Err(e) => {
            log::debug!("TLS handshake with {peer} failed: {e}");
            let key = Peer::new(String::new(), peer.ip(), &ctx.exempt).key;
            ctx.count("TLS handshakes failed", key);
        }
    }
}

/// Runs one connection: registers it with the core, starts its writer, reads until it ends.
/// `ready` is the plain-TCP socket, whose readiness the reader can wait for without holding a
/// buffer (None for TLS, where the TLS layer buffers anyway).
async fn serve<R, W>(
    reader: R,
    writer: W,
    ready: Option<Arc<Async<std::net::TcpStream>>>,
    peer: SocketAddr,
    shown: String,
    ctx: Arc<Ctx>,
    front: Front,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    let irc: Option<IrcSession> = match front {
        Front::Chatd => None,
        Front::Irc => Some(Arc::new(Mutex::new(Session::with_default_password(
            env!("CARGO_PKG_VERSION"),
            ctx.irc_default_password.as_deref(),
        )))),
    };
    let outbox = Outbox::new(OUTBOX_LIMIT_BYTES, MAX_INFLIGHT_PER_CONNECTION);
    let connected = Event::Connected {
        conn,
        outbox: outbox.clone(),
        peer: Peer::new(shown, peer.ip(), &ctx.exempt),
    };
    if ctx.events.send(connected).await.is_err() {
        return;
    }
    let writer = ctx.ex.spawn(write_loop(
        writer,
        outbox.clone(),
        conn,
        ctx.events.clone(),
        irc.clone(),
    ));
    read_loop(reader, ready, conn, &outbox, &ctx, irc.as_ref()).await;
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
    irc: Option<&IrcSession>,
) {
    // The read buffer exists only while data flows: after a read that drained the socket, a plain
    // TCP connection gives it back and waits for readiness, so an idle connection holds none.
    let mut buf: Vec<u8> = Vec::new();
    let mut intake = Intake::new(if irc.is_some() {
        IRC_MAX_INPUT_BYTES
    } else {
        MAX_LINE_BYTES
    });
    let mut bucket = Bucket::new(ctx.line_rate, ctx.line_burst);
    loop {
        // Everything read so far first, one line at a time: after a COMPRESS line the bytes that
        // follow are compressed or not depending on its answer.
        while let Some(unit) = intake.next_unit() {
            let (input, compress) = match unit {
                Unit::Line(l) => {
                    // IRC has no COMPRESS: its lines are never the line protocol's.
                    let compress = irc.is_none() && is_compress_line(&l);
                    (Input::Line(l), compress)
                }
                Unit::TooLong => (Input::TooLong, false),
                Unit::BadDeflate => {
                    // Nothing more can be read. The core answers BYE BAD_DEFLATE and closes.
                    let bad = Event::Input {
                        conn,
                        input: Input::BadDeflate,
                    };
                    if ctx.events.send(bad).await.is_ok() {
                        outbox.closed().await;
                    }
                    return;
                }
            };
            if let Some(wait) = bucket.take() {
                // Boxed: most connections never wait here, so they should not carry a timer.
                Box::pin(Timer::after(wait)).await;
            }
            if let Some(session) = irc {
                // An IRC line becomes zero or more command lines for the core, and perhaps an
                // answer of the front end's own (CAP, a numeric), queued behind what is queued.
                let mut fx = Effects::default();
                {
                    let mut s = lock(session);
                    match &input {
                        Input::Line(l) => s.client_line(&String::from_utf8_lossy(l), &mut fx),
                        _ => s.too_long(&mut fx),
                    }
                }
                if !fx.client.is_empty()
                    && outbox.push(Chunk::Direct(fx.client.into_bytes())).is_err()
                {
                    outbox.close();
                    return;
                }
                if !to_core(conn, fx.core, outbox, &ctx.events).await {
                    return;
                }
                continue;
            }
            if !outbox.acquire_credit().await {
                return;
            }
            if ctx.events.send(Event::Input { conn, input }).await.is_err() {
                return;
            }
            if compress {
                // COMPRESS is answered once every earlier command is; the bytes after it are
                // inflated if the answer was OK (spec 4.38).
                Box::pin(outbox.all_answered()).await;
                if outbox.is_closed() {
                    return;
                }
                if outbox.deflating() {
                    intake.start_inflate();
                }
            }
        }
        if buf.is_empty() {
            if let Some(socket) = &ready {
                intake.shrink();
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
        intake.feed(&buf[..n]);
        if n < buf.len() && ready.is_some() {
            buf = Vec::new();
        }
    }
    // The client closed its sending side (`printf ... | nc` does): answer what it sent first. A
    // partial line at the end is discarded, as the spec says.
    let drain = future::or(outbox.all_answered(), async {
        Timer::after(DRAIN_AFTER_EOF).await;
    });
    Box::pin(drain).await;
}

/// Hands an IRC front end's command lines to the core, a credit each, as the reader does with a
/// client's lines. False when the connection or the core is gone.
async fn to_core(
    conn: ConnId,
    lines: Vec<String>,
    outbox: &Outbox,
    events: &Sender<Event>,
) -> bool {
    for line in lines {
        if !outbox.acquire_credit().await {
            return false;
        }
        let input = Input::Line(line.into_bytes());
        if events.send(Event::Input { conn, input }).await.is_err() {
            return false;
        }
    }
    true
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    outbox: Outbox,
    conn: ConnId,
    events: Sender<Event>,
    irc: Option<IrcSession>,
) {
    let mut batch: Vec<Chunk> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut follow_ups: Vec<String> = Vec::new();
    // After COMPRESS: its DEFLATE state (the window and the hash chains), for as long as the
    // connection lives, since later output refers back to earlier output.
    let mut deflater: Option<Box<Deflater>> = None;
    while outbox.next_batch(&mut batch).await {
        if let Some(session) = &irc {
            // The core's lines are rendered as IRC here, on this connection's task, so that the
            // core's task does no IRC work; the front end's own answers pass as they are.
            let mut fx = Effects::default();
            {
                let mut s = lock(session);
                for c in &batch {
                    match c {
                        Chunk::Direct(b) => fx.client.push_str(&String::from_utf8_lossy(b)),
                        other => s.server_bytes(other.as_bytes(), &mut fx),
                    }
                }
            }
            batch.clear();
            follow_ups.append(&mut fx.core);
            batch.push(Chunk::Owned(fx.client.into_bytes()));
        }
        // Everything queued leaves in one write: one syscall however many lines.
        let plain_chunk = batch.len() == 1 && !matches!(batch[0], Chunk::StartDeflate);
        let bytes: &[u8] = if plain_chunk && deflater.is_none() {
            batch[0].as_bytes()
        } else {
            let total: usize = batch.iter().map(|c| c.as_bytes().len()).sum();
            let mut plain: Vec<u8> = Vec::new();
            if deflater.is_some() {
                plain.reserve_exact(total);
            } else {
                buf.reserve_exact(total);
            }
            for c in &batch {
                match (c, &deflater) {
                    (Chunk::StartDeflate, _) => deflater = Some(Box::default()),
                    (c, None) => buf.extend_from_slice(c.as_bytes()),
                    (c, Some(_)) => plain.extend_from_slice(c.as_bytes()),
                }
            }
            if let Some(d) = &mut deflater {
                // One sync flush per write: the client can read every line of it at once.
                d.write(&plain, &mut buf);
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
        // What the IRC front end asks the core for after what it rendered (the NAMES of the rooms
        // joined at login).
        // If the connection is closing meanwhile they are dropped, and what is still queued (the
        // answer to a QUIT) is written below like anything else.
        if !follow_ups.is_empty() {
            to_core(conn, std::mem::take(&mut follow_ups), &outbox, &events).await;
        }
        // A long answer waits for room to send its next part: now there is. Told only after the
        // write, so that the part it sends next replaces what the client has read, and an answer
        // to a client that does not read takes no more memory than one write.
        if outbox.drained_wanted() && events.send(Event::Drained { conn }).await.is_err() {
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
    use super::{Bucket, Connections};
    use std::sync::Arc;
    use std::time::Duration;

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
