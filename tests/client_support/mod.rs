//! Shared pieces of the client and TLS end-to-end tests: a real `chatd` server on ephemeral
//! 127.0.0.1 ports, a raw protocol peer over TCP, and the client run with piped stdin.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chatd::tls::TlsFiles;

/// Generous limit for anything a test waits on; normal runs take milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn chatd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chatd")
}

/// A chatd server process; killed on drop.
pub struct Server {
    child: Child,
    pub plain: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub db: PathBuf,
    /// Everything the server logged so far.
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts chatd with its database in `dir`, plain TCP on an ephemeral port and, with `tls`, a TLS
    /// listener on another. Cheap password hashing keeps REGISTER/LOGIN fast.
    pub fn start(dir: &Path, tls: Option<&TlsFiles>) -> Server {
        Server::start_on(dir, "127.0.0.1:0", tls)
    }

    pub fn start_on(dir: &Path, listen: &str, tls: Option<&TlsFiles>) -> Server {
        let db = dir.join("chatd.redb");
        let mut cmd = Command::new(chatd_bin());
        cmd.args([
            "--listen",
            listen,
            "--scrypt-log-n",
            "4",
            "--log-level",
            "debug",
        ])
        .arg("--db")
        .arg(&db);
        if let Some(files) = tls {
            cmd.args(["--tls-listen", "127.0.0.1:0"])
                .arg("--tls-cert")
                .arg(&files.cert)
                .arg("--tls-key")
                .arg(&files.key);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chatd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let _ = tx.send(rest.to_string());
                    }
                }
            });
        }
        let (mut plain, mut secure) = (None, None);
        let deadline = Instant::now() + WAIT;
        while plain.is_none() || (tls.is_some() && secure.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(rest) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "chatd did not start listening; its log:\n{}",
                    log.lock().unwrap()
                );
            };
            let addr: SocketAddr = rest.split(' ').next().unwrap().parse().unwrap();
            if rest.ends_with("(TLS)") {
                secure = Some(addr);
            } else {
                plain = Some(addr);
            }
        }
        Server {
            child,
            plain: plain.unwrap(),
            tls: secure,
            db,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server has logged a line holding both `a` and `b`.
    pub fn wait_log(&self, a: &str, b: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self
                .log
                .lock()
                .unwrap()
                .lines()
                .any(|l| l.contains(a) && l.contains(b))
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the server never logged {a:?} with {b:?}; its log:\n{}",
                    self.log.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL: the tests that restart it want an abrupt loss).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A protocol peer speaking raw lines over plain TCP.
pub struct Peer {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut p = Peer {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        p.expect(|l| l.starts_with("HELLO "));
        p
    }

    pub fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    pub fn line(&mut self) -> String {
        let mut s = String::new();
        let n = self.reader.read_line(&mut s).expect("read from chatd");
        assert!(n > 0, "chatd closed the connection");
        s.trim_end_matches('\n').to_string()
    }

    /// Reads lines until one matches; returns it.
    pub fn expect(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        loop {
            let l = self.line();
            if pred(&l) {
                return l;
            }
            seen.push(l);
            assert!(seen.len() < 1000, "no matching line among {seen:?}");
        }
    }

    /// Sends a command and waits for its final line.
    pub fn command(&mut self, line: &str) -> String {
        self.send(line);
        self.expect(|l| l.starts_with("OK ") || l.starts_with("FAIL "))
    }

    /// Registers (if needed) and logs in.
    pub fn login(addr: SocketAddr, name: &str, password: &str) -> Peer {
        let mut p = Peer::connect(addr);
        let r = p.command(&format!("REGISTER {name} {password}"));
        assert!(
            r.starts_with("OK REGISTER") || r.contains("NAME_TAKEN"),
            "{r}"
        );
        let r = p.command(&format!("LOGIN {name} {password}"));
        assert_eq!(r, format!("OK LOGIN {name}"));
        p.expect(|l| l.starts_with("BACKLOG-END "));
        p
    }
}

/// The result of one client run.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().expect("exited normally")
    }
}

/// Runs `chatd <args>` with `stdin` piped in, waiting at most [`WAIT`].
pub fn run_chatd(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(chatd_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chatd");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    // Written from a thread so a client that stops reading stdin cannot block the test.
    thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chatd {args:?} did not exit within {WAIT:?}; stderr:\n{}",
                err_t.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Runs the client: `chatd --connect <addr> <extra>` with `stdin`.
pub fn client(addr: &str, extra: &[&str], stdin: &str) -> Run {
    let mut args = vec!["--connect", addr];
    args.extend_from_slice(extra);
    run_chatd(&args, stdin)
}
