//! chatd's TLS listener as an independent TLS implementation sees it: the `openssl s_client`
//! binary, trusting only the certificate `generate_self_signed` wrote (`-CAfile`) and checking the
//! host name, registers, logs in and exchanges messages with a plain-TCP client. s_client sends CRLF
//! line ends (`-crlf`), as the protocol says clients may.
//!
//! The `openssl` command-line tool must be installed (Debian/Ubuntu package `openssl`); without it
//! the test fails and says so.

mod client_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Instant;

use chatd::tls::{fingerprint, generate_self_signed};
use client_support::{Peer, Server, WAIT};

fn openssl() -> Command {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "this test needs the `openssl` command-line tool on PATH (Debian/Ubuntu package: openssl)"
    );
    Command::new("openssl")
}

struct SClient {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl SClient {
    fn start(port: u16, ca: &std::path::Path, host: &str) -> SClient {
        let mut child = openssl()
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg("-CAfile")
            .arg(ca)
            .args(["-servername", host, "-verify_hostname", host])
            .args(["-verify_return_error", "-crlf", "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_client");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        SClient {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn expect(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("s_client output ended or timed out; lines: {seen:?}"),
            }
        }
    }

    fn wait(mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("openssl s_client did not exit");
            }
            thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn openssl_s_client_chats_with_a_plain_tcp_client() {
    let dir = tempfile::tempdir().unwrap();
    let (files, fp) = generate_self_signed(dir.path()).unwrap();
    let server = Server::start(dir.path(), Some(&files));
    let port = server.tls.unwrap().port();

    // The fingerprint is the one openssl computes.
    let out = openssl()
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&files.cert)
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        printed.trim().rsplit('=').next(),
        Some(fp.as_str()),
        "{printed}"
    );
    assert_eq!(fingerprint(&files.cert).unwrap(), fp);

    let mut bob = Peer::login(server.plain, "bob", "builder123");
    let mut carol = SClient::start(port, &files.cert, "localhost");
    carol.expect(|l| l.starts_with("HELLO chatd "));
    carol.send("REGISTER carol wonderland1");
    carol.expect(|l| l == "OK REGISTER carol");
    carol.send("LOGIN carol wonderland1");
    carol.expect(|l| l == "OK LOGIN carol");
    carol.expect(|l| l == "BACKLOG-END 0");

    carol.send("MSG bob hello from openssl");
    carol.expect(|l| l == "OK MSG 1 DELIVERED");
    let got = bob.expect(|l| l.starts_with("MESSAGE 1 "));
    assert!(got.ends_with(" carol bob hello from openssl"), "{got}");

    assert_eq!(
        bob.command("MSG carol and back over TLS"),
        "OK MSG 2 DELIVERED"
    );
    let got = carol.expect(|l| l.starts_with("MESSAGE 2 "));
    assert!(got.ends_with(" bob carol and back over TLS"), "{got}");

    carol.send("QUIT");
    carol.expect(|l| l == "OK QUIT");
    assert_eq!(
        carol.wait(),
        0,
        "s_client should end cleanly when chatd closes"
    );
}

#[test]
fn openssl_refuses_a_certificate_it_was_not_told_to_trust() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = generate_self_signed(dir.path()).unwrap();
    let server = Server::start(dir.path(), Some(&files));
    let port = server.tls.unwrap().port();
    let other = tempfile::tempdir().unwrap();
    let (other_files, _) = generate_self_signed(other.path()).unwrap();

    // Another certificate as the trust anchor, then the right one with a name it does not carry.
    let wrong_ca = SClient::start(port, &other_files.cert, "localhost");
    assert_ne!(wrong_ca.wait(), 0);
    let wrong_name = SClient::start(port, &files.cert, "chat.example.com");
    assert_ne!(wrong_name.wait(), 0);
}
