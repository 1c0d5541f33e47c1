//! The load generator's side of a connection: a socket with one large read buffer, read in big
//! chunks and split into lines without copying, and the few protocol steps the scenarios need
//! (register, log in, wait for a final reply).
//!
//! Reading is the client's hot path in the fan-out scenario (hundreds of sockets, millions of
//! lines), so a line is a borrowed slice of the buffer and nothing is allocated per line.

use std::io;

use async_net::TcpStream;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

/// Password of every benchmark account.
pub const PASSWORD: &str = "bench-password";

/// First size of a connection's read buffer; enough for an idle connection's few lines.
const READ_BUF_MIN: usize = 8 * 1024;
/// Largest size the read buffer grows to while reads keep filling it (a busy connection).
const READ_BUF_MAX: usize = 256 * 1024;

/// The reading half of a connection.
pub struct Lines {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    start: usize,
    /// End of the bytes read into `buf`.
    end: usize,
}

/// A connection: `lines` reads, `out` writes (a clone of the same socket, so a reading task and a
/// writing task can own one each).
pub struct Conn {
    pub lines: Lines,
    pub out: TcpStream,
}

impl Conn {
    /// Connects and reads the server's greeting.
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            lines: Lines {
                stream: stream.clone(),
                buf: Vec::new(),
                start: 0,
                end: 0,
            },
            out: stream,
        };
        let hello = conn.lines.next_line().await?;
        if !hello.starts_with("HELLO ") {
            return Err(protocol(format!("expected HELLO, got {hello:?}")));
        }
        Ok(conn)
    }

    /// Writes `bytes` (one or more whole lines).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes).await
    }

    /// Sends `LOGIN` and reads up to `BACKLOG-END`.
    pub async fn login(&mut self, name: &str) -> io::Result<()> {
        self.send(format!("LOGIN {name} {PASSWORD}\n").as_bytes())
            .await?;
        self.lines.expect_ok("LOGIN").await?;
        loop {
            let line = self.lines.next_line().await?;
            if line.starts_with("BACKLOG-END ") {
                return Ok(());
            }
            check_push(&line)?;
        }
    }

    /// Connects and logs in as `name`.
    pub async fn logged_in(addr: &str, name: &str) -> io::Result<Conn> {
        let mut c = Conn::connect(addr).await?;
        c.login(name).await?;
        Ok(c)
    }
}

impl Lines {
    /// Reads more bytes into the buffer, keeping what is unread. An error at end of stream.
    pub async fn read_more(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            self.buf = vec![0; READ_BUF_MIN];
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A line longer than the buffer: make room for it.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let room = self.buf.len() - self.end;
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == room && self.buf.len() < READ_BUF_MAX {
            // The socket had at least as much as we could take: read bigger chunks from now on.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// The next complete line already read (without its LF), if any.
    pub fn take_line(&mut self) -> Option<&[u8]> {
        let unread = &self.buf[self.start..self.end];
        let i = unread.iter().position(|&b| b == b'\n')?;
        let line = &self.buf[self.start..self.start + i];
        self.start += i + 1;
        Some(line)
    }

    /// The next line, read from the socket if needed.
    pub async fn next_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(String::from_utf8_lossy(line).into_owned());
            }
            self.read_more().await?;
        }
    }

    /// Reads up to the next final reply and fails unless it is `OK` for `command`. Pushes before
    /// it are skipped (a `BYE` is an error).
    pub async fn expect_ok(&mut self, command: &str) -> io::Result<String> {
        loop {
            let line = self.next_line().await?;
            if is_final(line.as_bytes()) {
                let ok = line
                    .strip_prefix("OK ")
                    .map(|rest| rest.split(' ').any(|t| t == command))
                    .unwrap_or(false);
                return if ok {
                    Ok(line)
                } else {
                    Err(protocol(format!("{command}: {line}")))
                };
            }
            check_push(&line)?;
        }
    }
}

/// True for a command's final reply.
pub fn is_final(line: &[u8]) -> bool {
    line.starts_with(b"OK ") || line.starts_with(b"FAIL ")
}

/// Fails on `BYE` (the server is dropping the connection); other pushes are fine.
pub fn check_push(line: &str) -> io::Result<()> {
    if line.starts_with("BYE ") {
        Err(protocol(format!("disconnected: {line}")))
    } else {
        Ok(())
    }
}

/// An error for a reply the benchmark did not expect.
pub fn protocol(text: String) -> io::Error {
    io::Error::other(text)
}

/// Registers every name in `names` over `conns` connections, each pipelining its share.
pub async fn register_all(addr: &str, names: &[String], conns: usize) -> io::Result<()> {
    let conns = conns.clamp(1, names.len().max(1));
    let per = names.len().div_ceil(conns);
    let tasks: Vec<_> = names
        .chunks(per.max(1))
        .map(|share| {
            let addr = addr.to_owned();
            let share = share.to_vec();
            super::spawn(async move {
                let mut c = Conn::connect(&addr).await?;
                // The server reads at most 64 unanswered commands; send in windows of that size.
                for window in share.chunks(64) {
                    let mut out = String::new();
                    for name in window {
                        out.push_str(&format!("REGISTER {name} {PASSWORD}\n"));
                    }
                    c.send(out.as_bytes()).await?;
                    for _ in window {
                        c.lines.expect_ok("REGISTER").await?;
                    }
                }
                Ok::<(), io::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Opens one logged-in connection per name, `parallel` logins at a time.
pub async fn login_all(addr: &str, names: &[String], parallel: usize) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(names.len());
    for group in names.chunks(parallel.max(1)) {
        let tasks: Vec<_> = group
            .iter()
            .map(|name| {
                let (addr, name) = (addr.to_owned(), name.clone());
                super::spawn(async move { Conn::logged_in(&addr, &name).await })
            })
            .collect();
        for t in tasks {
            conns.push(t.await?);
        }
    }
    Ok(conns)
}
