//! The `compress` scenario: what `COMPRESS DEFLATE` (spec 4.38) saves on the wire and costs the
//! server, each figure measured once uncompressed and once compressed on the same data:
//!
//! - `history500`: a 500-line HISTORY page of varied chat text, read `HISTORY_ROUNDS` times;
//!   bytes on the wire per page, server CPU per page;
//! - `room-hour`: an hour of a busy room, replayed as fast as it is delivered: `ROOM_MEMBERS`
//!   users online, `ROOM_MSGS_PER_HOUR` messages (an `ALL` each, from a member picked at random,
//!   of a length typical of chat), each one a write of its own to every member, as live traffic
//!   is; bytes on the wire (in and out, all members together), server CPU for the hour;
//! - `idle`: resident memory per connection of `idle_conns / 4` idle connections, uncompressed and
//!   compressed, after one exchange each (so the DEFLATE state has been used), and after a
//!   500-line page each (so all of it has been touched).
//!
//! The client speaks DEFLATE with chatd's own code (`chatd::proto::deflate`).

use std::io;
use std::time::Duration;

use async_net::TcpStream;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use smol::Timer;

use chatd::proto::deflate::{Deflater, Inflater};

use super::client::{self, PASSWORD};
use super::scenarios::{Figures, Settings};
use super::server::Server;

/// Times the 500-line page is read, for a CPU figure above the clock's resolution.
const HISTORY_ROUNDS: usize = 200;
/// Users online in the room.
const ROOM_MEMBERS: usize = 20;
/// Messages in the room's hour: one every 5 seconds, a busy room.
const ROOM_MSGS_PER_HOUR: usize = 720;
/// Wait for the server to settle before reading its memory.
const SETTLE: Duration = Duration::from_millis(500);

/// Chat-like text: sentences of common words, 2 to 30 of them, from a fixed seed.
struct Chatter(u64);

const WORDS: &[&str] = &[
    "the",
    "a",
    "I",
    "you",
    "we",
    "it",
    "is",
    "was",
    "are",
    "to",
    "of",
    "and",
    "in",
    "that",
    "for",
    "on",
    "with",
    "this",
    "at",
    "be",
    "have",
    "not",
    "but",
    "what",
    "so",
    "can",
    "just",
    "do",
    "get",
    "like",
    "know",
    "think",
    "time",
    "see",
    "about",
    "now",
    "if",
    "yes",
    "no",
    "ok",
    "lunch",
    "meeting",
    "tomorrow",
    "today",
    "build",
    "deploy",
    "server",
    "review",
    "merge",
    "branch",
    "test",
    "failing",
    "works",
    "thanks",
    "sorry",
    "later",
    "coffee",
    "weekend",
    "release",
    "ticket",
    "bug",
    "fix",
    "morning",
    "afternoon",
    "anyone",
    "please",
    "check",
    "logs",
    "done",
    "soon",
    "again",
    "maybe",
    "great",
    "sounds",
    "good",
    "here",
    "there",
    "who",
    "why",
    "when",
    "how",
    "cool",
    "nice",
    "lol",
    "brb",
    "issue",
    "latency",
    "database",
    "disk",
];

impl Chatter {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, so every run sends the same text.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn line(&mut self) -> String {
        let n = 2 + (self.next() % 29) as usize;
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[(self.next() % WORDS.len() as u64) as usize]);
        }
        if self.next().is_multiple_of(3) {
            s.push('?');
        }
        s
    }
}

/// A connection that speaks DEFLATE after `COMPRESS`, or plain lines without, and counts the bytes
/// it moves on the wire.
struct Link {
    sock: TcpStream,
    z: Option<Box<(Deflater, Inflater)>>,
    /// Bytes received (inflated, when compressed) and not yet taken as lines.
    plain: Vec<u8>,
    wire_in: u64,
    wire_out: u64,
}

impl Link {
    async fn connect(addr: &str, compress: bool) -> io::Result<Link> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let mut l = Link {
            sock,
            z: None,
            plain: Vec::new(),
            wire_in: 0,
            wire_out: 0,
        };
        let hello = l.line().await?;
        if !hello.starts_with("HELLO ") {
            return Err(client::protocol(format!("expected HELLO, got {hello:?}")));
        }
        if compress {
            l.send("COMPRESS DEFLATE").await?;
            let ok = l.line().await?;
            if ok != "OK COMPRESS DEFLATE" {
                return Err(client::protocol(format!("COMPRESS: {ok}")));
            }
            // Nothing else was sent after the OK: the server sends nothing unasked before LOGIN.
            let rest = std::mem::take(&mut l.plain);
            l.z = Some(Box::new((Deflater::new(), Inflater::new())));
            l.absorb(&rest)?;
        }
        Ok(l)
    }

    async fn logged_in(addr: &str, name: &str, compress: bool) -> io::Result<Link> {
        let mut l = Link::connect(addr, compress).await?;
        l.send(&format!("LOGIN {name} {PASSWORD}")).await?;
        l.expect_ok("LOGIN").await?;
        while !l.line().await?.starts_with("BACKLOG-END ") {}
        Ok(l)
    }

    async fn send(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        if let Some(z) = &mut self.z {
            let mut wire = Vec::new();
            z.0.write(&bytes, &mut wire);
            bytes = wire;
        }
        self.wire_out += bytes.len() as u64;
        self.sock.write_all(&bytes).await
    }

    fn absorb(&mut self, raw: &[u8]) -> io::Result<()> {
        let Some(z) = &mut self.z else {
            self.plain.extend_from_slice(raw);
            return Ok(());
        };
        let mut input = raw;
        let mut out = [0u8; 16 * 1024];
        loop {
            let done = z.1.inflate(input, &mut out);
            self.plain.extend_from_slice(&out[..done.made]);
            input = &input[done.taken..];
            if done.bad {
                return Err(client::protocol(
                    "the server's stream does not inflate".into(),
                ));
            }
            if input.is_empty() && done.made < out.len() {
                return Ok(());
            }
        }
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.plain.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.plain.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            let mut raw = vec![0u8; 64 * 1024];
            let n = self.sock.read(&mut raw).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.wire_in += n as u64;
            self.absorb(&raw[..n])?;
        }
    }

    async fn expect_ok(&mut self, command: &str) -> io::Result<String> {
        loop {
            let line = self.line().await?;
            if client::is_final(line.as_bytes()) {
                return if line.starts_with(&format!("OK {command}")) {
                    Ok(line)
                } else {
                    Err(client::protocol(format!("{command}: {line}")))
                };
            }
            client::check_push(&line)?;
        }
    }
}

fn context(what: &'static str) -> impl Fn(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn cpu(server: &Server) -> Result<Duration, String> {
    server
        .cpu()
        .ok_or_else(|| "cannot read the server's CPU time".into())
}

fn mode(compress: bool) -> &'static str {
    if compress {
        "deflate"
    } else {
        "plain"
    }
}

/// Runs the three parts; one line of figures per part and mode.
pub async fn compress(server: &Server, s: &Settings) -> Result<Vec<(String, Figures)>, String> {
    if server.pid.is_none() {
        return Err("needs the server's process id (--pid with --addr)".into());
    }
    let mut out = Vec::new();
    let addr = server.addr.clone();
    let (reader, writer) = (format!("{}zr", s.prefix), format!("{}zw", s.prefix));
    let members: Vec<String> = (0..ROOM_MEMBERS)
        .map(|i| format!("{}zm{i}", s.prefix))
        .collect();
    let idle_n = (s.idle_conns / 4).max(1);
    let idlers: Vec<String> = (0..idle_n).map(|i| format!("{}zi{i}", s.prefix)).collect();
    let mut accounts = vec![reader.clone(), writer.clone()];
    accounts.extend(members.iter().cloned());
    accounts.extend(idlers.iter().cloned());
    client::register_all(&addr, &accounts, 8)
        .await
        .map_err(context("register"))?;

    // The page: 500 messages of chat from writer to reader, who is online (nothing is kept for
    // later, which a sender's share of an inbox would limit).
    let online = Link::logged_in(&addr, &reader, false)
        .await
        .map_err(context("reader login"))?;
    let mut chatter = Chatter(0x9E37_79B9_7F4A_7C15);
    let mut w = Link::logged_in(&addr, &writer, false)
        .await
        .map_err(context("writer login"))?;
    for _ in 0..500 {
        w.send(&format!("MSG {reader} {}", chatter.line()))
            .await
            .map_err(context("MSG"))?;
        w.expect_ok("MSG").await.map_err(context("MSG"))?;
    }
    drop(online);
    for compress in [false, true] {
        let mut r = Link::logged_in(&addr, &reader, compress)
            .await
            .map_err(context("reader login"))?;
        let (wire_in, wire_out) = (r.wire_in, r.wire_out);
        let cpu0 = cpu(server)?;
        let mut plain_bytes = 0usize;
        for _ in 0..HISTORY_ROUNDS {
            r.send(&format!("HISTORY {writer} 500"))
                .await
                .map_err(context("HISTORY"))?;
            loop {
                let line = r.line().await.map_err(context("HISTORY"))?;
                plain_bytes += line.len() + 1;
                if client::is_final(line.as_bytes()) {
                    if !line.starts_with("OK HISTORY") {
                        return Err(format!("HISTORY: {line}"));
                    }
                    break;
                }
            }
        }
        let cpu1 = cpu(server)?;
        let rounds = HISTORY_ROUNDS as u64;
        let mut f = Figures::default();
        f.add("lines", 501)
            .add("line_bytes", plain_bytes as u64 / rounds)
            .add("wire_in_bytes", (r.wire_in - wire_in) / rounds)
            .add("wire_out_bytes", (r.wire_out - wire_out) / rounds)
            .add("server_cpu_us", (cpu1 - cpu0).as_micros() as u64 / rounds);
        out.push((format!("history500-{}", mode(compress)), f));
    }
    drop(w);

    // The room's hour.
    for compress in [false, true] {
        let mut links = Vec::with_capacity(ROOM_MEMBERS);
        for m in &members {
            links.push(
                Link::logged_in(&addr, m, compress)
                    .await
                    .map_err(context("member login"))?,
            );
        }
        let base: Vec<(u64, u64)> = links.iter().map(|l| (l.wire_in, l.wire_out)).collect();
        let mut chatter = Chatter(0xD1B5_4A32_D192_ED03);
        let mut text_bytes = 0u64;
        let cpu0 = cpu(server)?;
        for _ in 0..ROOM_MSGS_PER_HOUR {
            let from = (chatter.next() % ROOM_MEMBERS as u64) as usize;
            let text = chatter.line();
            text_bytes += text.len() as u64;
            links[from]
                .send(&format!("ALL {text}"))
                .await
                .map_err(context("ALL"))?;
            links[from].expect_ok("ALL").await.map_err(context("ALL"))?;
            for (i, l) in links.iter_mut().enumerate() {
                if i != from {
                    let m = l.line().await.map_err(context("MESSAGE"))?;
                    if !m.starts_with("MESSAGE ") {
                        return Err(format!("expected a MESSAGE, got {m}"));
                    }
                }
            }
        }
        let cpu1 = cpu(server)?;
        let wire_in: u64 = links.iter().zip(&base).map(|(l, b)| l.wire_in - b.0).sum();
        let wire_out: u64 = links.iter().zip(&base).map(|(l, b)| l.wire_out - b.1).sum();
        let mut f = Figures::default();
        f.add("members", ROOM_MEMBERS)
            .add("msgs", ROOM_MSGS_PER_HOUR)
            .add("text_bytes", text_bytes)
            .add("wire_in_bytes", wire_in)
            .add("wire_out_bytes", wire_out)
            .add("server_cpu_ms", (cpu1 - cpu0).as_millis());
        out.push((format!("room-hour-{}", mode(compress)), f));
    }

    // Idle memory: the same connections, each logged in, one PING each; then one page each.
    for compress in [false, true] {
        Timer::after(SETTLE).await;
        let before = server.rss().ok_or("cannot read the server's VmRSS")?;
        let mut links = Vec::with_capacity(idle_n);
        for name in &idlers {
            let mut l = Link::logged_in(&addr, name, compress)
                .await
                .map_err(context("idle login"))?;
            l.send("PING").await.map_err(context("PING"))?;
            l.expect_ok("PING").await.map_err(context("PING"))?;
            links.push(l);
        }
        Timer::after(SETTLE).await;
        let after = server.rss().ok_or("cannot read the server's VmRSS")?;
        for l in links.iter_mut() {
            l.send("HISTORY * 50").await.map_err(context("HISTORY"))?;
            l.expect_ok("HISTORY").await.map_err(context("HISTORY"))?;
        }
        Timer::after(SETTLE).await;
        let used = server.rss().ok_or("cannot read the server's VmRSS")?;
        let per = |a: u64, b: u64| format!("{:.0}", (b as f64 - a as f64) / idle_n as f64);
        let mut f = Figures::default();
        f.add("conns", idle_n)
            .add("bytes_per_conn", per(before, after))
            .add("after_a_page_bytes_per_conn", per(before, used));
        out.push((format!("idle-{}", mode(compress)), f));
        drop(links);
        Timer::after(SETTLE * 2).await;
    }
    Ok(out)
}
