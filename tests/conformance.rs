//! The black-box conformance suite (`conformance/`) against the real `chatd` binary.
//!
//! Each test starts chatd on an ephemeral 127.0.0.1 port with a fresh database in a temporary
//! directory, reads the bound address from the `listening on ADDR` line of its log, runs the suite
//! through the library API, and fails with every failing case's expected and received lines.
//!
//! - `plain_tcp`: every case that needs no special server setting, over plain TCP, with cheap
//!   password hashing so that hundreds of REGISTER/LOGIN stay fast.
//! - `tls`: the same cases inside TLS, verified against the certificate chatd generates.
//! - `limits`: the cases that need a server started with small limits: a connection limit (for
//!   `BYE SERVER_FULL`) and one hashing thread with a one-slot queue at the real scrypt cost (for
//!   `SERVER_BUSY`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatd_conformance::case::Case;
use chatd_conformance::{report, run, CaseResult, Options, Outcome, TlsSettings};

/// How long chatd may take to open its database and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one expectation waits; generous, because the machine may be busy with other builds.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The connection limit of the `limits` server.
const SMALL_MAX_CONNECTIONS: usize = 12;
/// The room size limit of the `limits` server.
const SMALL_MAX_ROOM_MEMBERS: usize = 3;

/// A running chatd, killed (by its own process id) when dropped.
struct Server {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(tls: bool, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
        cmd.arg("--db").arg(dir.path().join("chatd.redb"));
        if tls {
            cmd.args([
                "--no-plain",
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-generate",
            ]);
        } else {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("chatd starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = log.clone();
        // Drain the log for the server's whole life, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                keep.lock().expect("log lock").push(line);
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chatd did not log `listening on`; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child,
            addr,
            dir,
            log,
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("chatd-cert.pem")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cases(with_requirements: bool) -> Vec<Case> {
    let all = chatd_conformance::bundled_cases().expect("the bundled cases parse");
    all.into_iter()
        .filter(|c| c.requires.is_empty() != with_requirements)
        .collect()
}

/// Runs `cases` and panics with every failure (and skip) if any case did not pass.
fn run_all(server: &Server, cases: &[Case], opts: &Options) {
    let results: Vec<CaseResult> = run(cases, opts, |_| {});
    let totals = report::totals(&results);
    let skipped: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Skip(why) => Some(format!("{} {}: {why}", r.section, r.name)),
            _ => None,
        })
        .collect();
    if totals.failed > 0 || !skipped.is_empty() || results.len() != cases.len() {
        let tail: Vec<String> = {
            let log = server.log.lock().expect("log lock");
            log.iter().rev().take(20).rev().cloned().collect()
        };
        panic!(
            "{}\n\n{}\nskipped:\n  {}\n\nlast lines of the chatd log:\n{}",
            report::failures(&results),
            report::summary(&results),
            skipped.join("\n  "),
            tail.join("\n")
        );
    }
    eprintln!("{}", report::summary(&results));
}

fn options(server: &Server) -> Options {
    let mut opts = Options::new(server.addr.clone());
    opts.timeout = STEP_TIMEOUT;
    opts
}

#[test]
fn plain_tcp() {
    let server = Server::start(false, &["--scrypt-log-n", "4"]);
    run_all(&server, &cases(false), &options(&server));
}

#[test]
fn tls() {
    let server = Server::start(true, &["--scrypt-log-n", "4"]);
    let mut opts = options(&server);
    opts.tls =
        Some(TlsSettings::new(&server.cert(), "127.0.0.1").expect("chatd's certificate loads"));
    run_all(&server, &cases(false), &opts);
}

#[test]
fn limits() {
    let max = SMALL_MAX_CONNECTIONS.to_string();
    let room_max = SMALL_MAX_ROOM_MEMBERS.to_string();
    // The real scrypt cost: each hash takes long enough for eight simultaneous logins to find the
    // single thread and the one-slot queue taken.
    let server = Server::start(
        false,
        &[
            "--max-connections",
            &max,
            "--hash-threads",
            "1",
            "--hash-queue",
            "1",
            "--max-room-members",
            &room_max,
        ],
    );
    let mut opts = options(&server);
    opts.max_connections = Some(SMALL_MAX_CONNECTIONS);
    opts.busy_hashing = true;
    opts.max_room_members = Some(SMALL_MAX_ROOM_MEMBERS);
    let cases = cases(true);
    assert!(
        cases.len() >= 2,
        "the cases that need server settings are missing"
    );
    run_all(&server, &cases, &opts);
}
