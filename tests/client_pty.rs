//! The interactive client in a pseudo-terminal, as a person sees it.
//!
//! What could go wrong: a message that arrives while the user is half-way through typing a line is
//! written over that line, or splices itself into it, or the typed text is lost from the editor's
//! buffer; or a reconnect after the server restarts leaves the user logged out without a word; or
//! the device token the client keeps is readable by others, is not used to log in again, or
//! survives `/logout` (on disk, or on the server).
//!
//! Every client here runs with `XDG_CONFIG_HOME` in a temporary directory, so no test touches the
//! real configuration of whoever runs it.
//!
//! The client runs on the slave side of a pseudo-terminal (rustix's pty functions, which the
//! dependency tree already has); a vt100 emulator renders what it writes, so the assertions are about
//! the screen a person would see, not about escape sequences. The emulator answers the cursor
//! position query the line editor sends, as a real terminal does. This keeps the test inside
//! `cargo test` with no terminal multiplexer to install or to synchronise with.

mod client_support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use client_support::{chatd_bin, Peer, Server, WAIT};
use rustix::fs::{Mode, OFlags};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcsetwinsize, Winsize};

const ROWS: u16 = 24;
const COLS: u16 = 100;

/// Collects the replies a terminal owes the program (cursor position reports).
#[derive(Default)]
struct Answers(Vec<Vec<u8>>);

impl vt100::Callbacks for Answers {
    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        // ESC [ 6 n: "where is the cursor?"; the answer is ESC [ row ; col R, 1-based.
        if c == 'n' && i1.is_none() && params == [&[6u16][..]] {
            let (row, col) = screen.cursor_position();
            self.0
                .push(format!("\x1b[{};{}R", row + 1, col + 1).into_bytes());
        }
    }
}

/// The client running in a pseudo-terminal, with the emulated screen.
struct Term {
    child: Child,
    keys: File,
    parser: Arc<Mutex<vt100::Parser<Answers>>>,
}

impl Term {
    /// The client with `args`, keeping its configuration (its device token) under `config`.
    fn spawn(config: &std::path::Path, args: &[&str]) -> Term {
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        tcsetwinsize(
            &master,
            Winsize {
                ws_row: ROWS,
                ws_col: COLS,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
        let slave = rustix::fs::open(
            std::ffi::OsStr::from_bytes(name.as_bytes()),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the pty slave");
        let mut cmd = Command::new(chatd_bin());
        cmd.args(args)
            .env("TERM", "xterm-256color")
            .env("TZ", "UTC")
            .env("XDG_CONFIG_HOME", config)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().expect("start the client");
        // The slave ends must close here, or reading the master never ends.
        drop(cmd);

        let master = File::from(master);
        let keys = master.try_clone().unwrap();
        let mut answer = master.try_clone().unwrap();
        let parser = Arc::new(Mutex::new(vt100::Parser::new_with_callbacks(
            ROWS.try_into().unwrap(),
            COLS.try_into().unwrap(),
            0,
            Answers::default(),
        )));
        {
            let parser = parser.clone();
            let mut master = master;
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Ends with EIO once the client has exited.
                while let Ok(n) = master.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let replies = {
                        let mut p = parser.lock().unwrap();
                        p.process(&buf[..n]);
                        std::mem::take(&mut p.callbacks_mut().0)
                    };
                    for r in replies {
                        let _ = answer.write_all(&r);
                    }
                }
            });
        }
        Term {
            child,
            keys,
            parser,
        }
    }

    fn type_keys(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).unwrap();
    }

    fn rows(&self) -> Vec<String> {
        let p = self.parser.lock().unwrap();
        p.screen().rows(0, COLS).collect()
    }

    fn cursor(&self) -> (usize, usize) {
        let (r, c) = self.parser.lock().unwrap().screen().cursor_position();
        (r as usize, c as usize)
    }

    /// Waits until `ok` holds for the screen; on timeout fails showing the screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows();
            if ok(&rows) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; screen:\n{}", rows.join("\n"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_text(&self, text: &str) {
        self.wait_for(text, |rows| rows.iter().any(|r| r.contains(text)));
    }

    /// Waits for the client to exit; its status code.
    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited normally");
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the client did not exit; screen:\n{}",
                    self.rows().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[HH:MM] <rest>` with any time.
fn is_stamped(row: &str, rest: &str) -> bool {
    let b = row.as_bytes();
    b.len() > 8
        && b[0] == b'['
        && b[3] == b':'
        && b[6] == b']'
        && b[1..6].iter().all(|&c| c.is_ascii_digit() || c == b':')
        && row[8..].trim_end() == rest
}

#[test]
fn an_incoming_message_does_not_disturb_a_half_typed_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    drop(Peer::login(server.plain, "alice", "wonderland1"));
    let mut bob = Peer::login(server.plain, "bob", "builder123");

    let mut term = Term::spawn(dir.path(), &["--connect", &server.plain.to_string()]);
    term.wait_text("Server: chatd");
    term.type_keys("/login alice wonderland1\r");
    term.wait_text("* Logged in as alice.");

    // Typed in one burst, as a fast typist, a paste without bracketing or an IME delivers it.
    let typed = "/msg bob half-typed words";
    term.type_keys(typed);
    term.wait_for("the half-typed line", |rows| {
        rows.iter().any(|r| r.trim_end().ends_with(typed))
    });

    bob.send("MSG alice incoming while typing");
    bob.expect(|l| l.starts_with("OK MSG "));
    term.wait_text("bob → you: incoming while typing");

    let rows = term.rows();
    let (row, col) = term.cursor();
    let line = rows[row].trim_end();
    assert!(
        line == format!("> {typed}") || line == format!("alice> {typed}"),
        "the line being typed changed: {line:?}\n{}",
        rows.join("\n")
    );
    assert_eq!(
        col,
        line.chars().count(),
        "the cursor left the end of the line"
    );
    assert!(
        is_stamped(&rows[row - 1], "bob → you: incoming while typing"),
        "the message is not on its own row just above the prompt: {:?}\n{}",
        rows[row - 1],
        rows.join("\n")
    );
    assert_eq!(
        rows.iter().filter(|r| r.contains("half-typed")).count(),
        1,
        "the typed text shows up more than once:\n{}",
        rows.join("\n")
    );

    // The editor's buffer is intact too: finishing the line sends all of it.
    term.type_keys(" and the rest\r");
    let got = bob.expect(|l| l.starts_with("MESSAGE "));
    assert!(
        got.ends_with(" alice bob half-typed words and the rest"),
        "{got}"
    );
    term.wait_text("* delivered to bob");

    // A plain line answers the last person talked with.
    term.type_keys("plain reply\r");
    let got = bob.expect(|l| l.starts_with("MESSAGE "));
    assert!(got.ends_with(" alice bob plain reply"), "{got}");

    term.type_keys("/quit\r");
    term.wait_text("* Bye.");
    assert_eq!(term.wait_exit(), 0);
}

#[test]
fn after_the_server_restarts_the_client_reconnects_and_logs_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let addr = server.plain;
    drop(Peer::login(addr, "dave", "davespass1"));

    let mut term = Term::spawn(dir.path(), &["--connect", &addr.to_string()]);
    term.wait_text("Server: chatd");
    term.type_keys("/login dave davespass1\r");
    term.wait_text("* Logged in as dave.");

    server.kill();
    term.wait_text(&format!("error: connection to {addr} lost"));
    term.wait_text("* reconnecting in 0.5 s...");
    // Typed while disconnected: refused with a reason, not queued.
    term.type_keys("/msg erin too early\r");
    term.wait_text("error: not connected, so that was not sent");

    let started = Instant::now();
    let server = Server::start_on(dir.path(), &addr.to_string(), None);
    term.wait_text(&format!("* reconnected to {addr}"));
    term.wait_text("* Logged in again as dave.");
    let took = started.elapsed();
    // Attempts come 0.5 s, 1 s, 2 s... apart: the wait after a restart is bounded by the back-off.
    assert!(took < Duration::from_secs(10), "reconnecting took {took:?}");
    eprintln!("logged in again {took:?} after the server restarted");

    let mut erin = Peer::login(server.plain, "erin", "erinspass1");
    assert!(erin
        .command("MSG dave after the restart")
        .starts_with("OK MSG "));
    term.wait_for("the message after the restart", |rows| {
        rows.iter()
            .any(|r| is_stamped(r, "erin → you: after the restart"))
    });

    term.type_keys("/quit\r");
    assert_eq!(term.wait_exit(), 0);
}

/// The device token: kept in a file only the user can read, used to log in again after the server
/// restarts and when the client starts again, and revoked and deleted by `/logout`.
#[test]
fn the_client_keeps_a_device_token_and_logout_revokes_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let server = Server::start(dir.path(), None);
    let addr = server.plain;
    drop(Peer::login(addr, "frank", "frankspass1"));
    let token_file = config
        .join("chatd")
        .join("tokens")
        .join(addr.to_string().replace(':', "_"));

    let mut term = Term::spawn(&config, &["--connect", &addr.to_string()]);
    term.wait_text("New here?");
    term.type_keys("/login frank frankspass1\r");
    term.wait_text("* Logged in as frank.");
    term.wait_text("* This device will log in by itself from now on");
    let token = std::fs::read_to_string(&token_file)
        .unwrap_or_else(|e| panic!("no token in {}: {e}", token_file.display()));
    let token = token.trim().to_owned();
    assert!(token.starts_with("ct1."), "{token}");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is readable by others");
    assert!(
        !term.rows().iter().any(|r| r.contains(&token[4..20])),
        "the token is shown on the screen"
    );

    // The server restarts: the client logs in again with its token, not a password.
    server.kill();
    term.wait_text(&format!("error: connection to {addr} lost"));
    let server = Server::start_on(dir.path(), &addr.to_string(), None);
    term.wait_text("* Logged in again as frank.");
    let id = &token[4..20];
    server.wait_log("frank logged in from", &format!("with token {id}"));

    // A new client on the same machine logs in by itself.
    term.type_keys("/quit\r");
    assert_eq!(term.wait_exit(), 0);
    let mut term = Term::spawn(&config, &["--connect", &addr.to_string()]);
    term.wait_text("* Logged in as frank with this device's saved token");
    term.type_keys("/tokens\r");
    term.wait_text("(this connection)");

    // /logout revokes the token on the server and deletes the file.
    term.type_keys("/logout\r");
    term.wait_text("* Logged out.");
    assert!(!token_file.exists(), "the token file survived /logout");
    let mut peer = Peer::connect(addr);
    assert!(peer
        .command(&format!("RESUME {token}"))
        .starts_with("FAIL RESUME BAD_TOKEN "));
    term.type_keys("/quit\r");
    assert_eq!(term.wait_exit(), 0);

    // The next client does not log in by itself.
    let mut term = Term::spawn(&config, &["--connect", &addr.to_string()]);
    term.wait_text("New here?");
    term.type_keys("/whois frank\r");
    term.wait_text("error: log in first");
    term.type_keys("/quit\r");
    assert_eq!(term.wait_exit(), 0);
}

#[test]
fn rooms_in_the_terminal_joined_talked_in_and_caught_up_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let server = Server::start(dir.path(), None);
    drop(Peer::login(server.plain, "alice", "wonderland1"));
    let mut bob = Peer::login(server.plain, "bob", "builder123");
    assert_eq!(bob.command("JOIN #lobby"), "OK JOIN #lobby CREATED");
    assert!(bob
        .command("MSG #lobby before you came")
        .starts_with("OK MSG "));

    let mut term = Term::spawn(&config, &["--connect", &server.plain.to_string()]);
    term.wait_text("Server: chatd");
    term.type_keys("/login alice wonderland1\r");
    term.wait_text("* Logged in as alice.");
    term.type_keys("/join #LOBBY\r");
    // The room's line, what was said before, and where plain lines go now.
    term.wait_text("#lobby (public, 2 members; you: member)");
    term.wait_text("bob → #lobby: before you came");
    term.wait_text("* Joined #lobby. A line without / now goes to #lobby.");
    assert_eq!(bob.line(), "JOINED #lobby alice");

    // A message in the room shows its room; a plain line answers in the room.
    assert!(bob.command("MSG #lobby welcome").starts_with("OK MSG "));
    term.wait_for("the room message", |rows| {
        rows.iter().any(|r| is_stamped(r, "bob → #lobby: welcome"))
    });
    term.type_keys("thanks, bob\r");
    let got = bob.expect(|l| l.starts_with("MESSAGE "));
    assert!(got.ends_with(" alice #lobby thanks, bob"), "{got}");
    term.wait_text("* sent to #lobby (1 other member online)");
    term.type_keys("/quit\r");
    assert_eq!(term.wait_exit(), 0);

    // What alice saw is marked read; what comes while she is away is counted at her next login.
    assert!(bob.command("MSG #lobby one").starts_with("OK MSG "));
    assert!(bob.command("MSG #lobby two").starts_with("OK MSG "));
    // The client logs in by itself, with the device token it kept.
    let mut term = Term::spawn(&config, &["--connect", &server.plain.to_string()]);
    term.wait_text("* Logged in as alice with this device's saved token");
    term.wait_text("* #lobby: 2 unread messages; read them with /history #lobby 2 after");
    term.type_keys("/quit\r");
    assert_eq!(term.wait_exit(), 0);
}
