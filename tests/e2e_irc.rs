//! The IRC port over real sockets: an IRC client registered with SASL talks with a line-protocol
//! client in the same room; and the same with a real IRC client, WeeChat (`weechat-headless`),
//! scripted through its FIFO and read through its log files.
//!
//! The WeeChat test installs Debian's `weechat-headless` when it can (as root with apt-get, which
//! `scripts/test` does), and otherwise says why it skipped.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The IRC address the server logged.
fn irc_addr(server: &Server) -> SocketAddr {
    logged_addr(server, " (IRC)")
}

/// The address of the listener whose log line ends with `kind`.
fn logged_addr(server: &Server, kind: &str) -> SocketAddr {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for l in server.log() {
            if let Some(rest) = l.split("listening on ").nth(1) {
                if let Some(a) = rest.strip_suffix(kind) {
                    return a.trim().parse().expect("an address");
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no IRC listener: {:?}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw IRC connection.
struct Irc {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Irc {
    fn connect(addr: SocketAddr) -> Irc {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        Irc {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self
            .reader
            .read_line(&mut l)
            .expect("a line within the timeout");
        assert!(n > 0, "the IRC connection closed");
        assert!(l.ends_with("\r\n"), "{l:?}");
        assert!(l.len() <= 512 || l.starts_with('@'), "{l:?}");
        l.trim_end().to_owned()
    }

    /// Lines until one contains `needle`, which is returned last.
    fn until(&mut self, needle: &str) -> Vec<String> {
        let mut lines = Vec::new();
        // Bounded by the read timeout.
        loop {
            let l = self.line();
            let done = l.contains(needle);
            lines.push(l);
            if done {
                return lines;
            }
        }
    }
}

#[test]
fn an_irc_client_and_a_line_client_share_a_room() {
    let server = Server::start_with(&["--irc-listen", "127.0.0.1:0"]);
    let addr = irc_addr(&server);
    let mut alice = server.user("alice");
    server.connect().register("bob");
    let joined = alice.call("JOIN #e2e");
    assert_eq!(joined.last().unwrap(), "OK JOIN #e2e CREATED", "{joined:?}");
    alice.msg("#e2e", "before bob came");

    let mut bob = Irc::connect(addr);
    bob.send("CAP LS 302");
    bob.send("NICK bob");
    bob.send("USER bob 0 * :Bob");
    assert!(bob.line().contains("CAP * LS"));
    bob.send("CAP REQ :sasl server-time message-tags");
    assert!(bob.line().contains("ACK"));
    bob.send("AUTHENTICATE PLAIN");
    assert_eq!(bob.line(), "AUTHENTICATE +");
    bob.send(&format!("AUTHENTICATE {}", sasl_plain("bob", PASSWORD)));
    bob.until(" 903 ");
    bob.send("CAP END");
    let welcome = bob.until(" 376 ");
    assert!(welcome[0].starts_with(":chatd 001 bob "), "{welcome:?}");

    bob.send("JOIN #e2e");
    let join = bob.until(" 366 ");
    assert_eq!(join[0], ":bob!bob@chatd JOIN #e2e");
    assert!(
        join.iter()
            .any(|l| l.ends_with("PRIVMSG #e2e :before bob came")),
        "{join:?}"
    );
    assert!(
        join.iter()
            .any(|l| l.contains(" 353 bob = #e2e :~alice bob")),
        "{join:?}"
    );
    assert_eq!(alice.read_line(), "JOINED #e2e bob");
    // What irssi asks after a JOIN.
    bob.send("MODE #e2e");
    bob.until(" 329 ");
    bob.send("MODE #e2e b");
    bob.until(" 368 ");
    bob.send("WHO #e2e");
    bob.until(" 315 ");

    alice.msg("#e2e", "hello bob");
    let got = bob.line();
    assert!(
        got.contains(":alice!alice@chatd PRIVMSG #e2e :hello bob"),
        "{got}"
    );
    assert!(got.starts_with("@time="), "{got}");
    bob.send("PRIVMSG #e2e :hello alice");
    let m = parse_msg(&alice.read_line(), "MESSAGE");
    assert_eq!((&*m.from, &*m.to, &*m.text), ("bob", "#e2e", "hello alice"));
    bob.send("QUIT :bye");
    assert_eq!(bob.line(), "ERROR :Closing link: Quit");

    // What bob said is in the room's history for everyone.
    let (lines, _) = alice.history("#e2e");
    assert!(
        lines.iter().any(|l| l.ends_with("bob #e2e hello alice")),
        "{lines:?}"
    );
}

#[test]
fn a_bare_irc_client_logs_in_with_the_default_password_or_is_refused() {
    // Without --irc-default-password, NICK and USER alone are refused, with a reason.
    let server = Server::start_with(&["--irc-listen", "127.0.0.1:0"]);
    server.connect().register("carol");
    let mut c = Irc::connect(irc_addr(&server));
    c.send("NICK carol");
    c.send("USER carol 0 * :Carol");
    let refused = c.until("ERROR");
    assert!(refused[0].starts_with(":chatd 464 carol :"), "{refused:?}");
    drop(server);

    let server = Server::start_with(&[
        "--irc-listen",
        "127.0.0.1:0",
        "--irc-default-password",
        PASSWORD,
    ]);
    server.connect().register("carol");
    let mut c = Irc::connect(irc_addr(&server));
    c.send("NICK carol");
    c.send("USER carol 0 * :Carol");
    assert_eq!(c.line(), ":chatd 001 carol :Welcome to chatd, carol");
    // PASS still wins over the default.
    let mut d = Irc::connect(irc_addr(&server));
    d.send("PASS carol:wrong-password");
    d.send("NICK carol");
    d.send("USER carol 0 * :Carol");
    assert_eq!(d.line(), ":chatd 464 carol :Password incorrect");
}

#[test]
fn the_tls_irc_port_uses_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(
        &dir.path().join("chatd.redb"),
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-generate",
            "--irc-tls-listen",
            "127.0.0.1:0",
        ],
    );
    server.connect().register("dave");
    let addr = logged_addr(&server, " (IRC, TLS)");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-quiet", "-crlf"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("this test needs the openssl command-line tool (Debian package openssl)");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            format!("PASS dave:{PASSWORD}\nNICK dave\nUSER dave 0 * :Dave\nQUIT\n").as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(":chatd 001 dave :Welcome to chatd, dave"),
        "{text}"
    );
    assert!(text.contains("ERROR :Closing link: Quit"), "{text}");
}

#[test]
fn a_device_token_logs_in_over_sasl_and_pass() {
    let server = Server::start_with(&["--irc-listen", "127.0.0.1:0"]);
    let addr = irc_addr(&server);
    let mut erin = server.user("erin");
    let issued = erin.call1("TOKEN irc laptop");
    let token = issued
        .split(' ')
        .nth(3)
        .expect("OK TOKEN <id> <token>")
        .to_owned();
    assert!(token.starts_with("ct1."), "{issued}");

    // SASL PLAIN with the token as the password; the account name may be anything.
    let mut a = Irc::connect(addr);
    a.send("CAP LS 302");
    a.send("CAP REQ :sasl");
    a.send("AUTHENTICATE PLAIN");
    a.until("AUTHENTICATE +");
    a.send(&format!("AUTHENTICATE {}", sasl_plain("erin", &token)));
    a.until(" 903 ");
    a.send("NICK erin");
    a.send("USER erin 0 * :Erin");
    a.send("CAP END");
    assert_eq!(
        a.until(" 001 ").last().unwrap(),
        ":chatd 001 erin :Welcome to chatd, erin"
    );

    // PASS with the token alone.
    let mut b = Irc::connect(addr);
    b.send(&format!("PASS {token}"));
    b.send("NICK erin");
    b.send("USER erin 0 * :Erin");
    assert_eq!(b.line(), ":chatd 001 erin :Welcome to chatd, erin");

    // A revoked token no longer logs in.
    let id = issued.split(' ').nth(2).unwrap().to_owned();
    erin.call1(&format!("REVOKE {id}"));
    let mut c = Irc::connect(addr);
    c.send(&format!("PASS {token}"));
    c.send("NICK erin");
    c.send("USER erin 0 * :Erin");
    assert_eq!(c.line(), ":chatd 464 erin :Password incorrect");
}

/// Finds or installs weechat-headless; None (with the reason printed) when it cannot.
fn weechat() -> Option<PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("weechat-headless"))
                .find(|f| f.is_file())
        })
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| o.stdout == b"0\n");
    if root && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("installing weechat-headless for the IRC end-to-end test");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "weechat-headless"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    let found = find();
    if found.is_none() {
        eprintln!(
            "SKIPPED: weechat-headless is not installed and could not be (needs root and apt-get); \
             install Debian's weechat-headless to run this test"
        );
    }
    found
}

/// A weechat-headless process with its own home, connected to chatd as bob.
struct Weechat {
    child: Child,
    home: PathBuf,
}

impl Weechat {
    fn start(bin: &Path, home: &Path, addr: SocketAddr) -> Weechat {
        std::fs::create_dir_all(home).unwrap();
        let commands = [
            "/set logger.file.flush_delay 0".to_owned(),
            "/set fifo.file.enabled on".to_owned(),
            format!("/server add chatd {}/{}", addr.ip(), addr.port()),
            "/set irc.server.chatd.sasl_mechanism plain".to_owned(),
            "/set irc.server.chatd.sasl_username bob".to_owned(),
            format!("/set irc.server.chatd.sasl_password {PASSWORD}"),
            "/set irc.server.chatd.nicks bob".to_owned(),
            "/set irc.server.chatd.autojoin #e2e".to_owned(),
            "/connect chatd".to_owned(),
        ];
        let child = Command::new(bin)
            .arg("--dir")
            .arg(home)
            .arg("--run-command")
            .arg(commands.join(";"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting weechat-headless");
        Weechat {
            child,
            home: home.to_owned(),
        }
    }

    /// Everything WeeChat logged for the room so far.
    fn room_log(&self) -> String {
        let mut text = String::new();
        for dir in [self.home.join("logs"), self.home.clone()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains("#e2e") {
                    text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        text
    }

    /// Waits until the room's log holds `needle`.
    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.room_log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "WeeChat did not show {needle:?}; its log:\n{}",
                self.room_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a command through WeeChat's FIFO.
    fn command(&self, line: &str) {
        let deadline = Instant::now() + TIMEOUT;
        let fifo = loop {
            let found = std::fs::read_dir(&self.home).ok().and_then(|d| {
                d.flatten().map(|e| e.path()).find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("weechat_fifo"))
                })
            });
            if let Some(f) = found {
                break f;
            }
            assert!(
                Instant::now() < deadline,
                "no WeeChat FIFO in {:?}",
                self.home
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

impl Drop for Weechat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn weechat_joins_talks_and_catches_up_after_reconnecting() {
    let Some(bin) = weechat() else {
        return;
    };
    let server = Server::start_with(&["--irc-listen", "127.0.0.1:0"]);
    let addr = irc_addr(&server);
    let dir = tempfile::tempdir().unwrap();
    let mut alice = server.user("alice");
    server.connect().register("bob");
    let joined = alice.call("JOIN #e2e");
    assert_eq!(joined.last().unwrap(), "OK JOIN #e2e CREATED", "{joined:?}");

    // WeeChat logs in with SASL PLAIN and joins the room.
    let wee = Weechat::start(&bin, &dir.path().join("one"), addr);
    assert_eq!(alice.read_line(), "JOINED #e2e bob");
    alice.msg("#e2e", "hello weechat");
    wee.wait_for("hello weechat");
    wee.command("irc.chatd.#e2e *hello from weechat");
    let m = parse_msg(&alice.read_line(), "MESSAGE");
    assert_eq!(
        (&*m.from, &*m.to, &*m.text),
        ("bob", "#e2e", "hello from weechat")
    );
    drop(wee);

    // bob is away; alice talks; WeeChat comes back and shows what he missed.
    alice.msg("#e2e", "while you were away");
    let wee = Weechat::start(&bin, &dir.path().join("two"), addr);
    wee.wait_for("while you were away");
    wee.wait_for("unread message");
}
