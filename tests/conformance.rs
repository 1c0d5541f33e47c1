//! The black-box conformance suite (`conformance/`) against the real `chatd` binary.
//!
//! Each test starts chatd on an ephemeral 127.0.0.1 port with a fresh database in a temporary
//! directory, reads the bound address from the `listening on ADDR` line of its log, runs the suite
//! through the library API, and fails with every failing case's expected and received lines.
//!
//! - `plain_tcp`: every case that needs no special server setting, over plain TCP, with cheap
//!   password hashing so that hundreds of REGISTER/LOGIN stay fast.
//! - `tls`: the same cases inside TLS, verified against the certificate chatd generates.
//! - `limits`: the cases that need a server started with small limits, each group against a server
//!   of its own: a connection limit (for `BYE SERVER_FULL`), one hashing thread with a one-slot
//!   queue at the real scrypt cost (for `SERVER_BUSY`), a limit of connections per address (for
//!   `BYE TOO_MANY_CONNECTIONS`) and a short idle timeout (for the idle probe and
//!   `BYE IDLE_TIMEOUT`).
//!
//! The plain and TLS servers exempt the suite's address from the limits per address, as an
//! operator exempts a trusted host; the `limits` servers do not.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatd_conformance::case::{Case, Requirement};
use chatd_conformance::{report, run, CaseResult, Options, Outcome, TlsSettings};

/// How long chatd may take to open its database and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one expectation waits; generous, because the machine may be busy with other builds.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The connection limit of the `limits` server.
const SMALL_MAX_CONNECTIONS: usize = 12;
/// The room size limit of the `limits` server.
const SMALL_MAX_ROOM_MEMBERS: usize = 3;
/// The limit of connections per address of the `limits` server.
const SMALL_MAX_PER_ADDRESS: usize = 5;
/// The idle timeout of the `limits` server: a probe after 1 s, a close after 2 s.
const SHORT_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

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
        make_admin(&dir.path().join("chatd.redb"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
        cmd.arg("--db")
            .arg(dir.path().join("chatd.redb"))
            .args(["--admin", ADMIN]);
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

/// What a case needs of the server beyond what every server here has: an admin account and the
/// permission to send ALL and ANNOUNCE are given to every run.
fn setting(c: &Case) -> Vec<Requirement> {
    c.requires
        .iter()
        .copied()
        .filter(|r| !matches!(r, Requirement::Admin | Requirement::Broadcast))
        .collect()
}

fn cases(with_requirements: bool) -> Vec<Case> {
    let all = chatd_conformance::bundled_cases().expect("the bundled cases parse");
    all.into_iter()
        .filter(|c| setting(c).is_empty() != with_requirements)
        .collect()
}

/// The cases that need exactly the setting `r`.
fn cases_requiring(r: Requirement) -> Vec<Case> {
    cases(true)
        .into_iter()
        .filter(|c| setting(c) == [r])
        .collect()
}

/// The admin account every server here has, made with `chatd adduser` before the server starts.
const ADMIN: &str = "suite-admin";
const ADMIN_PASSWORD: &str = "suite-admin-password";

/// Creates the admin account in the database at `db`, as an operator would (`chatd adduser`).
fn make_admin(db: &std::path::Path) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["adduser", "--scrypt-log-n", "4", "--db"])
        .arg(db)
        .arg(ADMIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chatd adduser starts");
    writeln!(child.stdin.take().expect("piped"), "{ADMIN_PASSWORD}").expect("writing");
    let out = child.wait_with_output().expect("chatd adduser ends");
    assert!(
        out.status.success(),
        "chatd adduser: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    opts.admin = Some((ADMIN.to_owned(), ADMIN_PASSWORD.to_owned()));
    // These servers are the suite's own: ALL and ANNOUNCE disturb no one.
    opts.broadcast = true;
    opts
}

/// The accounts the server has, from the admin's STATS.
fn accounts(server: &Server) -> u64 {
    use std::io::Write;
    let stream = std::net::TcpStream::connect(&server.addr).expect("connecting");
    stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
    let mut w = stream.try_clone().unwrap();
    writeln!(w, "LOGIN {ADMIN} {ADMIN_PASSWORD}\nSTATS\nQUIT").unwrap();
    let mut found = None;
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("STAT accounts ") {
            found = n.parse().ok();
        }
    }
    found.expect("STATS shows the accounts")
}

/// The suite's own address, exempt from the limits per address on the servers that run the
/// ordinary cases: hundreds of accounts are registered and logged in from it.
const SUITE_ADDRESS: &str = "127.0.0.1";

/// The settings of the servers that run the ordinary cases: cheap hashing, the suite's address
/// exempt from the limits per address, and the quotas per account lifted (cases send more than a
/// minute's worth of messages); those limits have cases of their own, each on a server of its own.
const ORDINARY: [&str; 10] = [
    "--scrypt-log-n",
    "4",
    "--exempt",
    SUITE_ADDRESS,
    "--msgs-per-minute",
    "0",
    "--stored-kib-per-day",
    "0",
    "--inbox-share",
    "0",
];

#[test]
fn plain_tcp() {
    let server = Server::start(false, &ORDINARY);
    run_all(&server, &cases(false), &options(&server));
    // The suite leaves no trace: every account a case made was deleted again; the admin stays.
    assert_eq!(accounts(&server), 1, "accounts left behind by the suite");
}

/// The case of a server whose registration is closed: admins create the accounts.
#[test]
fn registration_closed() {
    let mut flags = ORDINARY.to_vec();
    flags.extend(["--registration", "closed"]);
    let server = Server::start(false, &flags);
    let mut opts = options(&server);
    opts.registration_closed = true;
    let cases = cases_requiring(Requirement::RegistrationClosed);
    assert!(!cases.is_empty());
    run_all(&server, &cases, &opts);
    assert_eq!(accounts(&server), 1, "accounts left behind by the suite");
}

#[test]
fn tls() {
    let server = Server::start(true, &ORDINARY);
    let mut opts = options(&server);
    opts.tls =
        Some(TlsSettings::new(&server.cert(), "127.0.0.1").expect("chatd's certificate loads"));
    run_all(&server, &cases(false), &opts);
}

/// The cases that need a server setting, each group against a server of its own with that
/// setting small (so that one group's setting does not disturb another's cases).
#[test]
fn limits() {
    let max = SMALL_MAX_CONNECTIONS.to_string();
    let per_address = SMALL_MAX_PER_ADDRESS.to_string();
    let idle = SHORT_IDLE_TIMEOUT.as_secs().to_string();
    let room_max = SMALL_MAX_ROOM_MEMBERS.to_string();
    let mut ran = 0;
    for requirement in [
        Requirement::MaxConnections,
        Requirement::BusyHashing,
        Requirement::MaxPerAddress,
        Requirement::IdleTimeout,
        Requirement::RateLimits,
        Requirement::SmallQuotas,
        Requirement::MaxRoomMembers(SMALL_MAX_ROOM_MEMBERS),
    ] {
        let flags: Vec<&str> = match requirement {
            Requirement::MaxConnections => vec!["--scrypt-log-n", "4", "--max-connections", &max],
            // The real scrypt cost: each hash takes long enough for eight simultaneous logins to
            // find the single thread and the one-slot queue taken.
            Requirement::BusyHashing => vec!["--hash-threads", "1", "--hash-queue", "1"],
            Requirement::MaxPerAddress => {
                vec!["--scrypt-log-n", "4", "--max-per-address", &per_address]
            }
            Requirement::IdleTimeout => vec!["--scrypt-log-n", "4", "--idle-timeout", &idle],
            // The defaults, with the suite's address not exempt.
            Requirement::RateLimits => vec!["--scrypt-log-n", "4"],
            Requirement::SmallQuotas => vec![
                "--scrypt-log-n",
                "4",
                "--exempt",
                SUITE_ADDRESS,
                "--stored-kib-per-day",
                "16",
                "--inbox-share",
                "5",
                "--friend-requests-per-hour",
                "2",
            ],
            Requirement::MaxRoomMembers(_) => {
                vec!["--scrypt-log-n", "4", "--max-room-members", &room_max]
            }
            other => unreachable!("{other:?} is not a setting of this test"),
        };
        let server = Server::start(false, &flags);
        let mut opts = options(&server);
        match requirement {
            Requirement::MaxConnections => opts.max_connections = Some(SMALL_MAX_CONNECTIONS),
            Requirement::BusyHashing => opts.busy_hashing = true,
            Requirement::MaxPerAddress => opts.max_per_address = Some(SMALL_MAX_PER_ADDRESS),
            Requirement::IdleTimeout => opts.idle_timeout = Some(SHORT_IDLE_TIMEOUT),
            Requirement::RateLimits => opts.rate_limits = true,
            Requirement::SmallQuotas => opts.small_quotas = true,
            Requirement::MaxRoomMembers(n) => opts.max_room_members = Some(n),
            other => unreachable!("{other:?} is not a setting of this test"),
        }
        let cases = cases_requiring(requirement);
        assert!(!cases.is_empty(), "no case needs {}", requirement.name());
        ran += cases.len();
        run_all(&server, &cases, &opts);
    }
    assert_eq!(
        ran + cases_requiring(Requirement::RegistrationClosed).len(),
        cases(true).len(),
        "every case that needs a setting needs exactly one of those above"
    );
}
