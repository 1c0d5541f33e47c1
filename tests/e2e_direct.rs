//! Direct sessions between two bundled clients in pipe mode, on loopback (spec 4.26): the server
//! introduces them and carries nothing of what they say. Every byte between each client and the
//! server passes a recording proxy, and so does every byte between the two clients: the server's
//! sockets carry the offer and the answer but no byte of the conversation, and the conversation
//! itself is encrypted. A certificate that does not match the fingerprint the server relayed
//! aborts the session, whichever side shows it.

mod client_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chatd::client::direct::{dial_peer, listen, run_link, wait_peer, Identity, LinkEvent};
use chatd::proto::direct::Fingerprint;
use client_support::{chatd_bin, Peer, Server, WAIT};

/// Forwards every connection made to it to `target`, keeping a copy of every byte, both ways.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(target: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let record = record.clone();
                    thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Recorder { addr, seen }
    }

    fn contains(&self, text: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(text.len()).any(|w| w == text.as_bytes())
    }

    fn bytes(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A bundled client in pipe mode whose stdin the test writes as it goes, and whose stdout it
/// reads line by line.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    fn start(server: SocketAddr, extra: &[&str]) -> Client {
        let mut child = Command::new(chatd_bin())
            .args(["--connect", &server.to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Client {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    fn type_lines(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn end_input(&mut self) {
        self.stdin = None;
    }

    /// Reads stdout until a line satisfies `pred`; returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no {what} on stdout; it showed {:?}", self.seen),
            }
        }
    }

    /// Waits for the client to exit; its status, all of its stdout and its stderr.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        self.stdin = None;
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the client did not exit; stdout so far: {:?}", self.seen);
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.seen.extend(self.lines.try_iter());
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        (status.code().unwrap_or(-1), self.seen, err)
    }
}

/// A port free now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_clients_talk_directly_and_the_server_carries_no_byte_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let to_server = Recorder::start(server.plain);
    // alice's client listens on a port of its own; she announces the recorder in front of it, so
    // the bytes between the two clients are recorded too.
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let between = Recorder::start(listen);
    let listen_arg = listen.to_string();
    let announce_arg = between.addr.to_string();

    let mut bob = Client::start(to_server.addr, &[]);
    bob.type_lines("/register bob bobsecret1\n/login bob bobsecret1\n");
    bob.wait_for("bob's BACKLOG-END", |l| l == "BACKLOG-END 0");

    let mut alice = Client::start(
        to_server.addr,
        &[
            "--direct-listen",
            &listen_arg,
            "--direct-announce",
            &announce_arg,
        ],
    );
    alice.type_lines(
        "/register alice wonderland1\n/login alice wonderland1\n/direct bob\n\
         hello bob, straight to you\nsecond line, no server between us\n",
    );
    // alice's stdin ends here: she waits for the session to end before she exits.
    alice.end_input();

    let offer = bob.wait_for("the offer", |l| l.starts_with("DIRECT alice OFFER "));
    assert!(offer.contains(&format!(" {} ", between.addr)), "{offer}");
    bob.type_lines("/accept alice\n");
    bob.wait_for("the session opening", |l| {
        l.starts_with("[direct] direct session with alice open")
    });
    bob.wait_for("alice's first line", |l| {
        l == "[direct] alice: hello bob, straight to you"
    });
    bob.wait_for("alice's second line", |l| {
        l == "[direct] alice: second line, no server between us"
    });
    bob.type_lines("a reply from bob, just as private\n");
    alice.wait_for("bob's reply", |l| {
        l == "[direct] bob: a reply from bob, just as private"
    });
    bob.type_lines("/close\n");
    bob.end_input();

    let (a_code, a_out, a_err) = alice.finish();
    let (b_code, b_out, b_err) = bob.finish();
    assert_eq!(a_code, 0, "alice: {a_err}\n{a_out:?}");
    assert_eq!(b_code, 0, "bob: {b_err}\n{b_out:?}");
    assert!(
        a_out
            .iter()
            .any(|l| l == "[direct] bob closed the direct session"),
        "{a_out:?}"
    );
    assert!(
        a_out.iter().any(|l| l.starts_with("OK DIRECT OFFER bob ")),
        "{a_out:?}"
    );
    assert!(
        b_out
            .iter()
            .any(|l| l.starts_with("OK DIRECT ACCEPT alice ")),
        "{b_out:?}"
    );

    // The server's sockets saw the introduction and nothing of the conversation.
    assert!(to_server.contains("DIRECT OFFER bob "));
    assert!(to_server.contains("DIRECT ACCEPT alice "));
    for text in ["straight to you", "no server between us", "just as private"] {
        assert!(
            !to_server.contains(text),
            "the server's sockets carried {text:?}"
        );
        assert!(
            !between.contains(text),
            "the direct link carried {text:?} in the clear"
        );
    }
    assert!(between.bytes() > 0, "the direct link carried nothing");
}

/// The bundled client that offered waits for the accepting side to connect: a client that shows
/// another certificate than the one the answer named aborts the session, and nothing typed for it
/// is sent.
#[test]
fn a_wrong_fingerprint_from_the_connecting_side_aborts_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let mut bob = Peer::login(server.plain, "bob", "bobsecret1");

    let mut alice = Client::start(server.plain, &[]);
    alice.type_lines(
        "/register alice wonderland1\n/login alice wonderland1\n/direct bob\nnot for an impostor\n",
    );
    alice.end_input();
    let offer = bob.expect(|l| l.starts_with("DIRECT alice OFFER "));
    let fields: Vec<&str> = offer.split(' ').collect();
    let (address, alice_fp) = (
        fields[3].to_string(),
        Fingerprint::parse(fields[4]).unwrap(),
    );

    // bob names one certificate, and another connects.
    let named = Identity::new().unwrap();
    let impostor = Identity::new().unwrap();
    let reply = bob.command(&format!("DIRECT ACCEPT alice {}", named.fingerprint()));
    assert!(reply.starts_with("OK DIRECT ACCEPT alice "), "{reply}");
    let dialed = smol::block_on(dial_peer(&address, &impostor, &alice_fp));
    if let Ok(stream) = dialed {
        // TLS 1.3 may finish the client's side before the server has judged its certificate:
        // then nothing at all comes through.
        let (tx, rx) = async_channel::bounded(8);
        let (_out_tx, out_rx) = async_channel::bounded(8);
        smol::block_on(run_link(stream, out_rx, tx));
        let events: Vec<LinkEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            !events.iter().any(|e| matches!(e, LinkEvent::Message(_))),
            "{events:?}"
        );
    }
    let (code, out, err) = alice.finish();
    assert_eq!(code, 5, "stdout {out:?}\nstderr {err}");
    assert!(err.contains("direct session with bob aborted"), "{err}");
    assert!(
        err.contains("fingerprint") || err.contains("failed its check"),
        "{err}"
    );
    assert!(
        err.contains("1 line typed for the direct session was not sent"),
        "{err}"
    );
}

/// The accepting bundled client checks the listener it connects to: one that shows another
/// certificate than the offer named aborts the session.
#[test]
fn a_wrong_fingerprint_from_the_listening_side_aborts_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let mut alice = Peer::login(server.plain, "alice", "wonderland1");

    let mut bob = Client::start(server.plain, &[]);
    bob.type_lines("/register bob bobsecret1\n/login bob bobsecret1\n");
    bob.wait_for("bob's BACKLOG-END", |l| l == "BACKLOG-END 0");

    // alice announces one certificate and listens with another.
    let announced = Identity::new().unwrap();
    let shown = Identity::new().unwrap();
    let listener = smol::block_on(listen(SocketAddr::from(([127, 0, 0, 1], 0)))).unwrap();
    let address = listener.local_addr().unwrap();
    let reply = alice.command(&format!(
        "DIRECT OFFER bob {address} {}",
        announced.fingerprint()
    ));
    assert!(reply.starts_with("OK DIRECT OFFER bob "), "{reply}");
    bob.wait_for("the offer", |l| l.starts_with("DIRECT alice OFFER "));
    bob.type_lines("/accept alice\nnot for an impostor either\n");
    bob.end_input();
    let accepted = alice.expect(|l| l.starts_with("DIRECT bob ACCEPTED "));
    let bob_fp = Fingerprint::parse(accepted.rsplit(' ').next().unwrap()).unwrap();
    // The bundled client refuses the certificate, so the handshake fails on this side too.
    let waited = smol::block_on(wait_peer(listener, &shown, &bob_fp));
    assert!(
        waited.is_err(),
        "the bundled client finished a handshake with the wrong certificate"
    );

    let (code, out, err) = bob.finish();
    assert_eq!(code, 5, "stdout {out:?}\nstderr {err}");
    assert!(err.contains("direct session with alice aborted"), "{err}");
    assert!(err.contains("not"), "{err}");
}
