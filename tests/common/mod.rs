//! A small harness for tests that talk to the real `chatd` binary over TCP.
//!
//! [`Server`] starts the binary on `127.0.0.1:0` with a database in a temporary directory (or a
//! given path, for restart tests) and cheap password hashing, reads the bound port from its log,
//! keeps draining its log so it never blocks on a full pipe, and stops it when dropped: SIGTERM and a
//! check that it exited with status 0, or SIGKILL when the test is already failing. [`Server::crash`]
//! is `kill -9`.
//!
//! [`Client`] is a line client over a blocking [`TcpStream`]. Every wait is bounded by [`TIMEOUT`], so
//! a broken server fails a test instead of hanging it. Tests never sleep to wait for output: they
//! use [`Client::sync`], which sends `PING <unique token>` and returns everything received before
//! its answer. Since the server answers a connection's commands in order, every reply to an
//! earlier command, and every push queued before the PING's reply, is in what `sync` returns.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest any single wait may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A password that passes the password rules.
pub const PASSWORD: &str = "correct-horse";

/// A running `chatd` process.
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    db: PathBuf,
    /// Every line the server has logged so far.
    log: Arc<Mutex<Vec<String>>>,
    /// Keeps the temporary database directory alive while the server runs.
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server with a fresh database in a temporary directory and the default limits.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with a fresh database and extra command-line arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let db = dir.path().join("chatd.redb");
        let mut s = Server::start_on(&db, extra);
        s._dir = Some(dir);
        s
    }

    /// A server with a fresh database, extra arguments, and password hashing at its real cost
    /// (about 0.1 s a hash), for tests of what hashing costs.
    pub fn start_with_real_hashing(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let db = dir.path().join("chatd.redb");
        let mut s = Server::spawn(&db, extra, false);
        s._dir = Some(dir);
        s
    }

    /// A server on the database file `db` (created if missing), for tests that restart it.
    ///
    /// 127.0.0.1, where the tests' clients come from unless they say otherwise, is exempt from the
    /// limits per address, and the quotas per account (messages per minute, bytes per day, the
    /// inbox share) are lifted: the tests send load. A test of the limits per address connects
    /// from 127.0.0.2 and up ([`Client::connect_from`]); the quotas are tested through the
    /// simulator (`tests/quotas.rs`).
    pub fn start_on(db: &Path, extra: &[&str]) -> Server {
        Server::spawn(db, extra, true)
    }

    fn spawn(db: &Path, extra: &[&str], cheap_hashing: bool) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(db)
            .args(["--exempt", "127.0.0.1"])
            .args(["--msgs-per-minute", "0", "--stored-kib-per-day", "0"])
            .args(["--inbox-share", "0"]);
        if cheap_hashing {
            cmd.args(["--scrypt-log-n", "4"]);
        }
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chatd");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    if let (Some(tx), Ok(a)) = (&port_tx, addr.trim().parse::<SocketAddr>()) {
                        let _ = tx.send(a);
                        port_tx = None;
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match port_rx.recv_timeout(TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chatd did not report its address; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child: Some(child),
            addr,
            db: db.to_owned(),
            log,
            _dir: None,
        }
    }

    /// The plain-TCP address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The database file.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// A new connection that has read the HELLO line.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A new connection logged in as `name` (registered first), with its login output read.
    pub fn user(&self, name: &str) -> Client {
        let mut c = self.connect();
        c.register(name);
        c.login(name);
        c
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    /// Stops the server with SIGTERM and returns its exit status once it has exited.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// Kills the server with SIGKILL (a crash) and waits until it is gone.
    pub fn crash(mut self) {
        let mut child = self.child.take().expect("server is running");
        child.kill().expect("sending SIGKILL");
        let status = wait_bounded(&mut child).expect("chatd did not die after SIGKILL");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "chatd ended with {status:?}");
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM failed");
        match wait_bounded(&mut child) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chatd did not stop within {TIMEOUT:?} of SIGTERM; its log:\n{}",
                    self.log().join("\n")
                );
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return;
        }
        let status = self.terminate();
        assert!(
            status.success(),
            "chatd exited with {status:?} after SIGTERM; its log:\n{}",
            self.log().join("\n")
        );
    }
}

/// Waits for the process to exit, at most [`TIMEOUT`].
fn wait_bounded(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(s) = child.try_wait().expect("waiting for chatd") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What one read of a line found.
enum Read {
    Line(String),
    End,
    /// The connection ended after these bytes, before the LF.
    Cut(Vec<u8>),
}

/// Tokens unique across the whole test process.
static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A fresh token such as `t17`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// True for a command's final line (`OK ...` or `FAIL ...`).
pub fn is_final(line: &str) -> bool {
    line.starts_with("OK ") || line.starts_with("FAIL ")
}

/// One line client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The HELLO line it received.
    pub hello: String,
}

impl Client {
    /// Connects and reads the HELLO line.
    pub fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr);
        let hello = c.read_line();
        assert!(hello.starts_with("HELLO chatd "), "expected HELLO: {hello}");
        c.hello = hello;
        c
    }

    /// Connects from the loopback address `source` (`127.0.0.2`, ...) and reads the HELLO line.
    pub fn connect_from(addr: SocketAddr, source: &str) -> Client {
        let mut c = Client::connect_raw_from(addr, source);
        let hello = c.read_line();
        assert!(hello.starts_with("HELLO chatd "), "expected HELLO: {hello}");
        c.hello = hello;
        c
    }

    /// Connects from the loopback address `source` without reading anything.
    pub fn connect_raw_from(addr: SocketAddr, source: &str) -> Client {
        Client::over(tcp_from(source, addr))
    }

    /// Connects without reading anything.
    pub fn connect_raw(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting to chatd"))
    }

    fn over(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            hello: String::new(),
        }
    }

    /// A second handle on the socket, for a thread that writes while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().unwrap()
    }

    /// Sends one line (an LF is added).
    pub fn send(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.send_raw(&bytes);
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to chatd: {e}"));
    }

    /// Shuts down the sending side (the client's EOF); replies can still be read.
    pub fn shutdown_write(&mut self) {
        self.writer.shutdown(Shutdown::Write).unwrap();
    }

    /// The next line, without its LF. Panics on EOF, on an error, or after [`TIMEOUT`].
    pub fn read_line(&mut self) -> String {
        match self.next_line() {
            Some(l) => l,
            None => panic!("chatd closed the connection while a line was expected"),
        }
    }

    /// The next line, or None at EOF (or when the connection was reset). Panics after [`TIMEOUT`]
    /// and when the connection ends in the middle of a line.
    pub fn next_line(&mut self) -> Option<String> {
        match self.read_one() {
            Read::Line(l) => Some(l),
            Read::End => None,
            Read::Cut(part) => panic!(
                "the connection ended in the middle of a line: {:?}",
                clip(&String::from_utf8_lossy(&part))
            ),
        }
    }

    /// Like [`Client::next_line`], but a line cut off by the end of the connection (a server
    /// killed in the middle of a write) counts as the end.
    pub fn next_whole_line(&mut self) -> Option<String> {
        match self.read_one() {
            Read::Line(l) => Some(l),
            Read::End | Read::Cut(_) => None,
        }
    }

    fn read_one(&mut self) -> Read {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => Read::End,
            Ok(_) if buf.last() != Some(&b'\n') => Read::Cut(buf),
            Ok(_) => {
                buf.pop();
                Read::Line(String::from_utf8(buf).expect("chatd sent a line that is not UTF-8"))
            }
            // Data received before a reset is still read first; a reset ends the stream.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => match buf.is_empty() {
                true => Read::End,
                false => Read::Cut(buf),
            },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no line from chatd within {TIMEOUT:?}")
            }
            Err(e) => panic!("reading from chatd: {e}"),
        }
    }

    /// Every line up to the end of the connection, which must come within [`TIMEOUT`].
    pub fn read_to_close(&mut self) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = Vec::new();
        while let Some(l) = self.next_line() {
            lines.push(l);
            assert!(Instant::now() < deadline, "the connection did not close");
        }
        lines
    }

    /// Lines up to and including the first one `stop` accepts.
    pub fn read_until(&mut self, mut stop: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = Vec::new();
        loop {
            let l = self.read_line();
            let done = stop(&l);
            lines.push(l);
            if done {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "no matching line within {TIMEOUT:?}; got {lines:?}"
            );
        }
    }

    /// The barrier: sends `PING <unique token>` and returns every line received before its `PONG`,
    /// then reads the `OK PING` that follows it.
    pub fn sync(&mut self) -> Vec<String> {
        let token = unique("sync");
        self.send(&format!("PING {token}"));
        let pong = format!("PONG {token}");
        let mut lines = self.read_until(|l| l == pong);
        lines.pop();
        assert_eq!(self.read_line(), "OK PING", "after {pong}");
        lines
    }

    /// Asserts that nothing arrived since the last read (checked with a barrier).
    pub fn expect_quiet(&mut self) {
        let lines = self.sync();
        assert!(lines.is_empty(), "unexpected lines: {lines:?}");
    }

    /// Sends a command and returns every line up to and including the first final line.
    pub fn call(&mut self, line: &str) -> Vec<String> {
        self.send(line);
        self.read_until(is_final)
    }

    /// Sends a command and returns its final line, asserting that nothing else came before it.
    pub fn call1(&mut self, line: &str) -> String {
        let mut lines = self.call(line);
        let last = lines.pop().unwrap();
        assert!(
            lines.is_empty(),
            "{line}: unexpected lines {lines:?} before {last}"
        );
        last
    }

    /// Sends a command and checks that its final line, with nothing before it, is `expected`.
    pub fn expect(&mut self, line: &str, expected: &str) {
        assert_eq!(self.call1(line), expected, "reply to {line:?}");
    }

    /// Sends a command that must fail with `code` (the label and command are checked too:
    /// `FAIL <command> <code> ...`), then checks the connection still answers a PING.
    pub fn expect_fail(&mut self, line: &str, command: &str, code: &str) {
        let reply = self.call1(line);
        let prefix = format!("FAIL {command} {code} ");
        assert!(
            reply.starts_with(&prefix) && reply.len() > prefix.len(),
            "reply to {:?}: expected {prefix}<text>, got {reply:?}",
            clip(line)
        );
        self.expect_quiet();
    }

    /// REGISTER with [`PASSWORD`].
    pub fn register(&mut self, name: &str) {
        self.expect(
            &format!("REGISTER {name} {PASSWORD}"),
            &format!("OK REGISTER {name}"),
        );
    }

    /// LOGIN with [`PASSWORD`]; returns the pushes that follow `OK LOGIN`, up to and including
    /// `BACKLOG-END`.
    pub fn login(&mut self, name: &str) -> Vec<String> {
        self.send(&format!("LOGIN {name} {PASSWORD}"));
        let reply = self.read_line();
        assert!(
            reply.starts_with("OK LOGIN ") && reply[9..].eq_ignore_ascii_case(name),
            "LOGIN {name}: {reply}"
        );
        self.read_until(|l| l.starts_with("BACKLOG-END "))
    }

    /// MSG; returns the id from `OK MSG <id> DELIVERED|KEPT`.
    pub fn msg(&mut self, to: &str, text: &str) -> u64 {
        let reply = self.call1(&format!("MSG {to} {text}"));
        parse_ok_id(&reply, "MSG")
    }

    /// The answer to a HISTORY already sent: its HISTORY data lines and its final line.
    pub fn history_answer(&mut self) -> (Vec<String>, String) {
        let mut lines = self.read_until(is_final);
        let last = lines.pop().unwrap();
        assert!(last.starts_with("OK HISTORY "), "HISTORY: {last}");
        assert!(
            lines.iter().all(|l| l.starts_with("HISTORY ")),
            "HISTORY: unexpected lines"
        );
        (lines, last)
    }

    /// HISTORY; returns its HISTORY data lines and its final line.
    pub fn history(&mut self, args: &str) -> (Vec<String>, String) {
        let mut lines = self.call(&format!("HISTORY {args}"));
        let last = lines.pop().unwrap();
        assert!(last.starts_with("OK HISTORY "), "HISTORY {args}: {last}");
        assert!(
            lines.iter().all(|l| l.starts_with("HISTORY ")),
            "HISTORY {args}: unexpected lines {lines:?}"
        );
        (lines, last)
    }
}

/// A TCP connection to `addr` from the loopback address `source` (`127.0.0.2`, ...): to the
/// server's limits per address, another machine. The socket is bound to the source before it
/// connects, which std cannot do.
pub fn tcp_from(source: &str, addr: SocketAddr) -> TcpStream {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).expect("a socket");
    let src: SocketAddr = format!("{source}:0").parse().expect("a source address");
    bind(&fd, &src).unwrap_or_else(|e| panic!("binding {source}: {e}"));
    connect(&fd, &addr).unwrap_or_else(|e| panic!("connecting from {source}: {e}"));
    TcpStream::from(fd)
}

/// The id in `OK [@label] <command> <id> ...`.
pub fn parse_ok_id(reply: &str, command: &str) -> u64 {
    let mut words = reply.split(' ').peekable();
    assert_eq!(
        words.next(),
        Some("OK"),
        "expected OK {command} <id>: {reply}"
    );
    if words.peek().is_some_and(|w| w.starts_with('@')) {
        words.next();
    }
    assert_eq!(
        words.next(),
        Some(command),
        "expected OK {command} <id>: {reply}"
    );
    words
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no id in {reply}"))
}

/// Fields of a `MESSAGE` or `HISTORY` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub id: u64,
    pub time: String,
    pub from: String,
    pub to: String,
    pub text: String,
}

/// Parses `<tag> <id> <time> <from> <to> <text>`.
pub fn parse_msg(line: &str, tag: &str) -> Msg {
    let rest = line
        .strip_prefix(tag)
        .and_then(|r| r.strip_prefix(' '))
        .unwrap_or_else(|| panic!("expected a {tag} line: {line}"));
    let mut parts = rest.splitn(5, ' ');
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("short {tag} line: {line}"))
            .to_owned()
    };
    let id = next().parse().expect("message id");
    let (time, from, to, text) = (next(), next(), next(), next());
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "time in {line}"
    );
    Msg {
        id,
        time,
        from,
        to,
        text,
    }
}

/// The first 80 characters of a line, for failure messages.
pub fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Standard base64, with padding: an IRC client's `AUTHENTICATE` payload.
pub fn base64(raw: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The SASL PLAIN payload for `name` and `password` (`\0name\0password`), base64.
pub fn sasl_plain(name: &str, password: &str) -> String {
    base64(format!("\0{name}\0{password}").as_bytes())
}
