//! The scenarios. Each one registers its own accounts and opens its connections first (not timed),
//! runs a short warm-up round, then measures one round, all within the scenario's time limit, and
//! returns its figures as `key=value` pairs.
//!
//! Every reply is checked (an `OK` with the expected details, deliveries counted line by line), so a
//! run that went wrong fails loudly instead of printing a fast but meaningless figure.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::AsyncWriteExt;
use smol::Timer;

use super::client::{self, check_push, is_final, protocol, Conn, Lines};
use super::server::Server;
use super::spawn;
use super::system;

/// What the scenarios are asked to do.
pub struct Settings {
    /// Logged-in recipients of the fan-out scenarios.
    pub recipients: usize,
    /// Messages the fan-out sender sends in the measured round.
    pub fanout_msgs: usize,
    /// Recipients of each GROUP message.
    pub group_size: usize,
    /// Direct messages in the measured round (in total over all senders).
    pub direct_msgs: usize,
    /// Messages in flight for the single direct sender.
    pub window: usize,
    /// Concurrent direct senders, one message in flight each.
    pub senders: usize,
    /// Connections of the idle-memory scenario.
    pub idle_conns: usize,
    /// Connections of the large-answer memory scenario.
    pub history_conns: usize,
    /// The text of every message.
    pub text: String,
    /// Time limit of one scenario, setup included.
    pub limit: Duration,
    /// Start of every account name, unique per run (a server given with --addr keeps its accounts).
    pub prefix: String,
}

/// One scenario's figures, in print order.
#[derive(Default)]
pub struct Figures(Vec<(&'static str, String)>);

impl Figures {
    pub(super) fn add(&mut self, key: &'static str, value: impl ToString) -> &mut Self {
        self.0.push((key, value.to_string()));
        self
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

type Outcome<T> = Result<T, String>;

fn context(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// How long after its deadline a whole scenario is given up, so that the measured round's own
/// timeout (which says how far it got) is the one reported.
const GRACE: Duration = Duration::from_secs(2);

/// Runs `f`, failing with a timeout error at `deadline`.
async fn within<T>(deadline: Instant, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    future::or(f, async {
        Timer::at(deadline).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the scenario's time limit (--max-secs) was reached",
        ))
    })
    .await
}

/// CPU time of the server and of this process, and wall time, from a start point.
struct Meter {
    wall: Instant,
    server: Option<Duration>,
    client: Option<Duration>,
}

impl Meter {
    fn start(server: &Server) -> Meter {
        Meter {
            wall: Instant::now(),
            server: server.cpu(),
            client: system::own_cpu_time(),
        }
    }

    /// Adds server and client CPU seconds since the start; with `per` messages, the server's CPU
    /// microseconds per message too.
    fn report(&self, server: &Server, figures: &mut Figures, per: Option<usize>) {
        let server_cpu = match (self.server, server.cpu()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let client_cpu = system::own_cpu_time().and_then(|b| self.client.map(|a| b - a));
        let wall = self.wall.elapsed().as_secs_f64();
        match server_cpu {
            Some(c) => {
                figures.add("server_cpu_s", format!("{:.2}", c.as_secs_f64()));
                figures.add(
                    "server_cores_busy",
                    format!("{:.2}", c.as_secs_f64() / wall),
                );
                if let Some(n) = per {
                    figures.add(
                        "server_cpu_us_per_msg",
                        format!("{:.1}", c.as_secs_f64() * 1e6 / n.max(1) as f64),
                    );
                }
            }
            None => {
                figures.add("server_cpu_s", "n/a");
            }
        }
        if let Some(c) = client_cpu {
            figures.add("client_cpu_s", format!("{:.2}", c.as_secs_f64()));
        }
    }
}

/// Reads until `count` MESSAGE lines have arrived; returns the time the last one was read.
async fn receive(
    mut lines: Lines,
    count: usize,
    progress: Arc<AtomicUsize>,
) -> io::Result<(Lines, Instant)> {
    let mut got = 0;
    loop {
        let before = got;
        while got < count {
            let Some(l) = lines.take_line() else { break };
            if l.starts_with(b"MESSAGE ") {
                got += 1;
            } else if l.starts_with(b"BYE ") {
                return Err(protocol(format!(
                    "recipient disconnected: {}",
                    String::from_utf8_lossy(l)
                )));
            }
        }
        progress.fetch_add(got - before, Ordering::Relaxed);
        if got == count {
            return Ok((lines, Instant::now()));
        }
        lines.read_more().await?;
    }
}

/// Reads `count` final replies, each an `OK` ending with `tail`; returns the time of the last.
async fn read_oks(mut lines: Lines, count: usize, tail: String) -> io::Result<(Lines, Instant)> {
    let mut got = 0;
    loop {
        while got < count {
            let Some(l) = lines.take_line() else { break };
            if is_final(l) {
                if !(l.starts_with(b"OK ") && l.ends_with(tail.as_bytes())) {
                    return Err(protocol(format!(
                        "expected OK ... {tail}, got {}",
                        String::from_utf8_lossy(l)
                    )));
                }
                got += 1;
            } else {
                check_push(&String::from_utf8_lossy(l))?;
            }
        }
        if got == count {
            return Ok((lines, Instant::now()));
        }
        lines.read_more().await?;
    }
}

/// Times of one fan-out round.
struct FanoutRound {
    first_send: Instant,
    last_ok: Instant,
    last_delivery: Instant,
}

/// The sender sends `count` copies of `line` at once (the server reads them as fast as its
/// in-flight limit allows) while every receiver counts its deliveries.
async fn fanout_round(
    sender: Conn,
    receivers: Vec<Lines>,
    line: Arc<[u8]>,
    count: usize,
    ok_tail: String,
    deadline: Instant,
) -> Outcome<(Conn, Vec<Lines>, FanoutRound)> {
    let expected = receivers.len() * count;
    let progress = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = receivers
        .into_iter()
        .map(|l| spawn(within(deadline, receive(l, count, progress.clone()))))
        .collect();
    let Conn { lines, mut out } = sender;
    let mut batch = Vec::with_capacity(line.len() * count);
    for _ in 0..count {
        batch.extend_from_slice(&line);
    }
    let first_send = Instant::now();
    let writer = spawn(within(deadline, async move {
        out.write_all(&batch).await?;
        Ok(out)
    }));
    let oks = spawn(within(deadline, read_oks(lines, count, ok_tail)));
    let so_far = |e: io::Error| {
        format!(
            "{e} ({} of {expected} deliveries arrived)",
            progress.load(Ordering::Relaxed)
        )
    };
    let (lines, last_ok) = oks.await.map_err(so_far)?;
    let out = writer.await.map_err(so_far)?;
    let mut receivers = Vec::with_capacity(tasks.len());
    let mut last_delivery = first_send;
    for t in tasks {
        let (l, at) = t.await.map_err(so_far)?;
        last_delivery = last_delivery.max(at);
        receivers.push(l);
    }
    Ok((
        Conn { lines, out },
        receivers,
        FanoutRound {
            first_send,
            last_ok,
            last_delivery,
        },
    ))
}

/// Scenario 1: one sender, `recipients` logged-in accounts; each message goes to all of them (ALL)
/// or to the first `group_size` (GROUP).
pub async fn fanout(server: &Server, s: &Settings, group: bool) -> Outcome<Figures> {
    let deadline = Instant::now() + s.limit;
    within(deadline + GRACE, async {
        Ok(fanout_inner(server, s, group, deadline).await)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn fanout_inner(
    server: &Server,
    s: &Settings,
    group: bool,
    deadline: Instant,
) -> Outcome<Figures> {
    let addr = &server.addr;
    let tag = if group { "g" } else { "a" };
    let names: Vec<String> = (0..s.recipients)
        .map(|i| format!("{}{tag}{i}", s.prefix))
        .collect();
    let sender_name = format!("{}{tag}s", s.prefix);
    let mut accounts = names.clone();
    accounts.push(sender_name.clone());
    client::register_all(addr, &accounts, 16)
        .await
        .map_err(context("register"))?;
    let conns = client::login_all(addr, &names, 50)
        .await
        .map_err(context("login"))?;
    let sender = Conn::logged_in(addr, &sender_name)
        .await
        .map_err(context("sender login"))?;

    let receiving = if group {
        s.group_size.min(s.recipients)
    } else {
        s.recipients
    };
    let (line, ok_tail) = if group {
        (
            format!("GROUP {} {}\n", names[..receiving].join(","), s.text),
            format!("DELIVERED {receiving} KEPT 0"),
        )
    } else {
        (
            format!("ALL {}\n", s.text),
            format!("DELIVERED {receiving}"),
        )
    };
    let line: Arc<[u8]> = line.into_bytes().into();
    // Recipients outside the group stay logged in: they are part of the server's load (and of ALL).
    let (receivers, bystanders): (Vec<_>, Vec<_>) = conns
        .into_iter()
        .enumerate()
        .partition(|(i, _)| *i < receiving);
    let receivers: Vec<Lines> = receivers.into_iter().map(|(_, c)| c.lines).collect();

    let warm = s.fanout_msgs.clamp(1, 64);
    let (sender, receivers, _) = fanout_round(
        sender,
        receivers,
        line.clone(),
        warm,
        ok_tail.clone(),
        deadline,
    )
    .await?;
    let meter = Meter::start(server);
    let (_sender, _receivers, r) = fanout_round(
        sender,
        receivers,
        line.clone(),
        s.fanout_msgs,
        ok_tail,
        deadline,
    )
    .await?;
    drop(bystanders);

    let deliveries = receiving * s.fanout_msgs;
    let secs = r.last_delivery.duration_since(r.first_send).as_secs_f64();
    let ok_secs = r.last_ok.duration_since(r.first_send).as_secs_f64();
    let mut f = Figures::default();
    f.add("recipients", receiving)
        .add("msgs", s.fanout_msgs)
        .add("line_bytes", line.len() - 1)
        .add("deliveries", deliveries)
        .add("secs", format!("{secs:.3}"))
        .add(
            "deliveries_per_s",
            format!("{:.0}", deliveries as f64 / secs),
        )
        .add(
            "msgs_per_s",
            format!("{:.0}", s.fanout_msgs as f64 / ok_secs),
        );
    meter.report(server, &mut f, None);
    Ok(f)
}

/// What one direct sender saw.
struct Sent {
    conn: Conn,
    latencies: Vec<Duration>,
    last_ok: Instant,
}

/// Sends `n` MSGs to `to`, keeping up to `window` unanswered, and reads until every OK and
/// `incoming` MESSAGE lines have arrived. Each OK's latency is from the write of its command.
async fn direct_sender(
    mut conn: Conn,
    to: String,
    text: Arc<str>,
    n: usize,
    window: usize,
    incoming: usize,
    acks: Arc<AtomicUsize>,
) -> io::Result<Sent> {
    let mut sent_at: Vec<Instant> = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    let mut last_ok = Instant::now();
    let (mut acked, mut delivered) = (0usize, 0usize);
    let mut out = String::new();
    loop {
        let now = Instant::now();
        while let Some(l) = conn.lines.take_line() {
            if l.starts_with(b"MESSAGE ") {
                delivered += 1;
            } else if is_final(l) {
                let seq = parse_msg_ok(l).ok_or_else(|| {
                    protocol(format!(
                        "expected OK @<n> MSG <id> DELIVERED, got {}",
                        String::from_utf8_lossy(l)
                    ))
                })?;
                if seq != acked {
                    return Err(protocol(format!("reply for @{seq} where @{acked} was due")));
                }
                latencies.push(now.duration_since(sent_at[seq]));
                acked += 1;
                acks.fetch_add(1, Ordering::Relaxed);
                last_ok = now;
            } else {
                check_push(&String::from_utf8_lossy(l))?;
            }
        }
        if acked == n && delivered >= incoming {
            return Ok(Sent {
                conn,
                latencies,
                last_ok,
            });
        }
        if sent_at.len() < n && sent_at.len() - acked < window {
            out.clear();
            let now = Instant::now();
            while sent_at.len() < n && sent_at.len() - acked < window {
                let _ = writeln!(out, "@{} MSG {to} {text}", sent_at.len());
                sent_at.push(now);
            }
            conn.send(out.as_bytes()).await?;
        }
        conn.lines.read_more().await?;
    }
}

/// The label of `OK @<label> MSG <id> DELIVERED`, as a number.
fn parse_msg_ok(line: &[u8]) -> Option<usize> {
    let rest = line.strip_prefix(b"OK @")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    let rest = rest[space..].strip_prefix(b" MSG ")?;
    rest.ends_with(b" DELIVERED").then_some(seq)
}

/// The latency figures of a round.
fn latency_figures(f: &mut Figures, mut l: Vec<Duration>) {
    l.sort_unstable();
    let at = |p: usize| l[(l.len() * p / 100).min(l.len() - 1)];
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1e3);
    f.add("p50_ms", ms(at(50)))
        .add("p99_ms", ms(at(99)))
        .add("max_ms", ms(l[l.len() - 1]));
}

/// Scenarios 2 and 4 with one sender: `window` MSGs in flight to one recipient, which only reads.
pub async fn direct_one(server: &Server, s: &Settings) -> Outcome<Figures> {
    let deadline = Instant::now() + s.limit;
    within(deadline + GRACE, async {
        Ok(direct_one_inner(server, s, deadline).await)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn direct_one_inner(server: &Server, s: &Settings, deadline: Instant) -> Outcome<Figures> {
    let addr = &server.addr;
    let (from, to) = (format!("{}d0", s.prefix), format!("{}d1", s.prefix));
    client::register_all(addr, &[from.clone(), to.clone()], 2)
        .await
        .map_err(context("register"))?;
    let mut sender = Conn::logged_in(addr, &from)
        .await
        .map_err(context("login"))?;
    let mut recipient = Conn::logged_in(addr, &to)
        .await
        .map_err(context("login"))?
        .lines;
    let text: Arc<str> = s.text.as_str().into();
    let warm = (s.window * 2).min(s.direct_msgs).max(1);
    let mut round = None;
    for n in [warm, s.direct_msgs] {
        let (acks, deliveries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let so_far = |e: io::Error| {
            format!(
                "{e} ({} of {n} acknowledged, {} delivered)",
                acks.load(Ordering::Relaxed),
                deliveries.load(Ordering::Relaxed)
            )
        };
        let meter = Meter::start(server);
        let t0 = Instant::now();
        let drain = spawn(within(deadline, receive(recipient, n, deliveries.clone())));
        let sent = spawn(within(
            deadline,
            direct_sender(
                sender,
                to.clone(),
                text.clone(),
                n,
                s.window,
                0,
                acks.clone(),
            ),
        ))
        .await
        .map_err(so_far)?;
        let (lines, _) = drain.await.map_err(so_far)?;
        recipient = lines;
        sender = sent.conn;
        round = Some((meter, t0, sent.last_ok, sent.latencies));
    }
    let (meter, t0, last_ok, latencies) = round.expect("two rounds ran");
    let secs = last_ok.duration_since(t0).as_secs_f64();
    let mut f = Figures::default();
    f.add("senders", 1)
        .add("window", s.window)
        .add("msgs", s.direct_msgs)
        .add("secs", format!("{secs:.3}"))
        .add("msgs_per_s", format!("{:.0}", s.direct_msgs as f64 / secs));
    latency_figures(&mut f, latencies);
    meter.report(server, &mut f, Some(s.direct_msgs));
    Ok(f)
}

/// Scenarios 2 and 4 with many senders: sender i sends to sender i+1 (in a ring), one MSG in flight
/// each, and reads its own deliveries too.
pub async fn direct_many(server: &Server, s: &Settings) -> Outcome<Figures> {
    let deadline = Instant::now() + s.limit;
    within(deadline + GRACE, async {
        Ok(direct_many_inner(server, s, deadline).await)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn direct_many_inner(server: &Server, s: &Settings, deadline: Instant) -> Outcome<Figures> {
    let addr = &server.addr;
    let count = s.senders.max(2);
    let names: Vec<String> = (0..count).map(|i| format!("{}p{i}", s.prefix)).collect();
    client::register_all(addr, &names, 16)
        .await
        .map_err(context("register"))?;
    let mut conns = client::login_all(addr, &names, 50)
        .await
        .map_err(context("login"))?;
    let text: Arc<str> = s.text.as_str().into();
    let each = (s.direct_msgs / count).max(1);
    let total = each * count;
    let mut round = None;
    for n in [2, each] {
        let acks = Arc::new(AtomicUsize::new(0));
        let meter = Meter::start(server);
        let t0 = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let to = names[(i + 1) % count].clone();
                spawn(within(
                    deadline,
                    direct_sender(c, to, text.clone(), n, 1, n, acks.clone()),
                ))
            })
            .collect();
        conns = Vec::with_capacity(count);
        let mut latencies = Vec::with_capacity(n * count);
        let mut last_ok = t0;
        for t in tasks {
            let sent = t.await.map_err(|e| {
                format!(
                    "{e} ({} of {} acknowledged)",
                    acks.load(Ordering::Relaxed),
                    n * count
                )
            })?;
            last_ok = last_ok.max(sent.last_ok);
            latencies.extend(sent.latencies);
            conns.push(sent.conn);
        }
        round = Some((meter, t0, last_ok, latencies));
    }
    let (meter, t0, last_ok, latencies) = round.expect("two rounds ran");
    let secs = last_ok.duration_since(t0).as_secs_f64();
    let mut f = Figures::default();
    f.add("senders", count)
        .add("window", 1)
        .add("msgs", total)
        .add("secs", format!("{secs:.3}"))
        .add("msgs_per_s", format!("{:.0}", total as f64 / secs));
    latency_figures(&mut f, latencies);
    meter.report(server, &mut f, Some(total));
    Ok(f)
}

/// How long the server gets to settle before its memory is read.
const SETTLE: Duration = Duration::from_millis(500);

/// Messages the idle-memory scenario sends to every connection after the logins: one in-flight
/// window's worth, so that they reach each connection close together, as a burst does.
const BURST: usize = 64;

/// Scenario 3: the server's resident memory before and after opening `idle_conns` connections
/// (greeting read, nothing else), after logging each of them in, and after a short burst of ALL
/// messages to all of them has been delivered and read (what an idle connection keeps once it has
/// been busy). The accounts are registered, and the burst's sender logged in, before the baseline,
/// so that only the idle connections are counted.
pub async fn idle(server: &Server, s: &Settings) -> Outcome<Vec<(&'static str, Figures)>> {
    let deadline = Instant::now() + s.limit;
    within(deadline + GRACE, async {
        Ok(idle_inner(server, s, deadline).await)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn idle_inner(
    server: &Server,
    s: &Settings,
    deadline: Instant,
) -> Outcome<Vec<(&'static str, Figures)>> {
    let addr = &server.addr;
    if server.pid.is_none() {
        return Err("needs the server's process id (--pid with --addr)".into());
    }
    let rss = || server.rss().ok_or("cannot read the server's VmRSS");
    let n = s.idle_conns.max(1);
    let names: Vec<String> = (0..n).map(|i| format!("{}i{i}", s.prefix)).collect();
    let sender_name = format!("{}is", s.prefix);
    let mut accounts = names.clone();
    accounts.push(sender_name.clone());
    client::register_all(addr, &accounts, 32)
        .await
        .map_err(context("register"))?;
    let sender = Conn::logged_in(addr, &sender_name)
        .await
        .map_err(context("sender login"))?;
    Timer::after(SETTLE).await;
    let before = rss()?;

    let mut conns = Vec::with_capacity(n);
    for batch in names.chunks(100) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|_| {
                let addr = addr.clone();
                spawn(async move { Conn::connect(&addr).await })
            })
            .collect();
        for t in tasks {
            conns.push(t.await.map_err(context("connect"))?);
        }
    }
    Timer::after(SETTLE).await;
    let connected = rss()?;

    let mut logged = Vec::with_capacity(n);
    let mut pending = conns.into_iter().zip(names.iter().cloned());
    loop {
        let tasks: Vec<_> = pending
            .by_ref()
            .take(100)
            .map(|(mut c, name)| {
                spawn(async move {
                    c.login(&name).await?;
                    Ok::<Conn, io::Error>(c)
                })
            })
            .collect();
        if tasks.is_empty() {
            break;
        }
        for t in tasks {
            logged.push(t.await.map_err(context("login"))?);
        }
    }
    Timer::after(SETTLE).await;
    let after = rss()?;

    let line: Arc<[u8]> = format!("ALL {}\n", s.text).into_bytes().into();
    let receivers: Vec<Lines> = logged.into_iter().map(|c| c.lines).collect();
    let (_sender, _receivers, _) = fanout_round(
        sender,
        receivers,
        line,
        BURST,
        format!("DELIVERED {n}"),
        deadline,
    )
    .await?;
    Timer::after(SETTLE).await;
    let burst = rss()?;

    let per = |a: u64, b: u64| format!("{:.0}", (b as f64 - a as f64) / n as f64);
    let kib = |b: u64| b / 1024;
    let mut c = Figures::default();
    c.add("conns", n)
        .add("rss_before_kib", kib(before))
        .add("rss_after_kib", kib(connected))
        .add("bytes_per_conn", per(before, connected));
    let mut l = Figures::default();
    l.add("conns", n)
        .add("rss_before_kib", kib(before))
        .add("rss_after_kib", kib(after))
        .add("bytes_per_conn", per(before, after))
        .add("login_bytes_per_conn", per(connected, after));
    let mut b = Figures::default();
    b.add("conns", n)
        .add("burst_msgs", BURST)
        .add("rss_before_kib", kib(before))
        .add("rss_after_kib", kib(burst))
        .add("bytes_per_conn", per(before, burst))
        .add("kept_after_burst_bytes_per_conn", per(after, burst));
    // What the structures of this build take, to read beside the figures above (for a server
    // built from the same source as this benchmark).
    let mut sizes = Figures::default();
    for (piece, bytes) in chatd::net::connection_sizes() {
        sizes.add(piece, bytes);
    }
    Ok(vec![
        ("idle-connected", c),
        ("idle-logged-in", l),
        ("idle-after-burst", b),
        ("idle-sizes", sizes),
    ])
}

/// Bytes of each message the history scenario stores: the largest text, so that a page is as big
/// as a page can be.
const HISTORY_TEXT_BYTES: usize = chatd::config::MAX_TEXT_BYTES;

/// Memory under large answers: `history_conns` connections of one account each ask for the largest
/// page of `HISTORY *` (500 messages of 2 KB, about 1 MiB) and do not read it. The server's resident
/// memory is read before, at its highest while the answers are pending, and after every
/// connection has closed.
pub async fn history(server: &Server, s: &Settings) -> Outcome<Vec<(&'static str, Figures)>> {
    let deadline = Instant::now() + s.limit;
    within(deadline + GRACE, async {
        Ok(history_inner(server, s).await)
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn history_inner(server: &Server, s: &Settings) -> Outcome<Vec<(&'static str, Figures)>> {
    let addr = &server.addr;
    if server.pid.is_none() {
        return Err("needs the server's process id (--pid with --addr)".into());
    }
    let rss = || server.rss().ok_or("cannot read the server's VmRSS");
    let n = s.history_conns.max(1);
    let page = chatd::config::HISTORY_MAX_COUNT as usize;
    let reader = format!("{}hr", s.prefix);
    let writer = format!("{}hw", s.prefix);
    client::register_all(addr, &[reader.clone(), writer.clone()], 2)
        .await
        .map_err(context("register"))?;
    let mut w = Conn::logged_in(addr, &writer)
        .await
        .map_err(context("writer login"))?;
    let text = "h".repeat(HISTORY_TEXT_BYTES);
    for _ in 0..page {
        w.send(format!("ALL {text}\n").as_bytes())
            .await
            .map_err(context("ALL"))?;
        w.lines.expect_ok("ALL").await.map_err(context("ALL"))?;
    }
    let mut conns = Vec::with_capacity(n);
    for _ in (0..n).step_by(50) {
        let tasks: Vec<_> = (0..50.min(n - conns.len()))
            .map(|_| {
                let (addr, reader) = (addr.clone(), reader.clone());
                spawn(async move { Conn::logged_in(&addr, &reader).await })
            })
            .collect();
        for t in tasks {
            conns.push(t.await.map_err(context("reader login"))?);
        }
    }
    Timer::after(SETTLE).await;
    let before = rss()?;
    let line = format!("HISTORY * {page}\n");
    for c in conns.iter_mut() {
        c.send(line.as_bytes()).await.map_err(context("HISTORY"))?;
    }
    // The answers are produced and queued while the clients read nothing; the highest resident
    // memory over a few seconds is what they cost.
    let mut peak = before;
    for _ in 0..30 {
        Timer::after(Duration::from_millis(100)).await;
        peak = peak.max(rss()?);
    }
    drop(conns);
    Timer::after(SETTLE * 4).await;
    let after = rss()?;
    let answer = page * (HISTORY_TEXT_BYTES + 60);
    let per = |a: u64, b: u64| format!("{:.0}", (b as f64 - a as f64) / n as f64);
    let kib = |b: u64| b / 1024;
    let mut f = Figures::default();
    f.add("conns", n)
        .add("answer_bytes", answer)
        .add("rss_before_kib", kib(before))
        .add("rss_peak_kib", kib(peak))
        .add("rss_after_close_kib", kib(after))
        .add("peak_bytes_per_conn", per(before, peak))
        .add("kept_after_close_bytes_per_conn", per(before, after));
    Ok(vec![("history-unread", f)])
}
