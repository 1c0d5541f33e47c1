//! The operator's kit against the real binary: admins suspending, killing and announcing over
//! TCP, a suspension surviving kill -9, closed registration, `/metrics` scraped and read by the
//! Prometheus project's own parser, a live backup taken while 20 clients send, `chatd check`,
//! `chatd health`, demo mode, the environment and the log file.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{Client, Server, PASSWORD, TIMEOUT};

const ADMIN: &str = "root";

fn chatd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chatd"))
}

/// Creates the admin's account in `db` offline, as an operator does before the first start.
fn make_admin(db: &Path) {
    let mut child = chatd()
        .args(["adduser", "--scrypt-log-n", "4", "--db"])
        .arg(db)
        .arg(ADMIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("account root created"));
}

/// A server with the admin `root`, on `db`.
fn admin_server(db: &Path, extra: &[&str]) -> Server {
    if !db.exists() {
        make_admin(db);
    }
    let mut args = vec!["--admin", ADMIN];
    args.extend_from_slice(extra);
    Server::start_on(db, &args)
}

fn admin(s: &Server) -> Client {
    let mut c = s.connect();
    c.login(ADMIN);
    c
}

#[test]
fn suspend_survives_a_crash_and_kill_and_announce_reach_connections() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatd.redb");
    let s = admin_server(&db, &[]);
    let mut root = admin(&s);
    let mut m1 = s.user("mallory");
    m1.send("TOKEN phone");
    let token = m1.read_line();
    let token = token.rsplit(' ').next().unwrap().to_owned();
    let mut m2 = s.connect();
    m2.login("mallory");
    let mut guest = s.connect();

    // ANNOUNCE: every connection, logged in or not; the caller's copy after its OK.
    let reply = root.call("ANNOUNCE back in five minutes");
    assert_eq!(reply, ["OK ANNOUNCE 4"]);
    assert_eq!(root.read_line(), "NOTICE back in five minutes");
    for c in [&mut m1, &mut m2, &mut guest] {
        assert_eq!(c.sync(), ["NOTICE back in five minutes"]);
    }

    // A non-admin is refused, whatever it asks.
    m1.expect_fail("STATS", "STATS", "NOT_ADMIN");
    m1.expect_fail("SUSPEND root", "SUSPEND", "NOT_ADMIN");

    root.expect("SUSPEND mallory spam", "OK SUSPEND mallory CLOSED 2");
    for c in [&mut m1, &mut m2] {
        let lines = c.read_to_close();
        assert_eq!(
            lines,
            ["BYE ACCOUNT_SUSPENDED the server's operators suspended this account: spam"]
        );
    }
    // Crash: the suspension was committed before the OK.
    s.crash();
    let s = admin_server(&db, &[]);
    let mut c = s.connect();
    c.expect_fail(&format!("LOGIN mallory {PASSWORD}"), "LOGIN", "SUSPENDED");
    c.expect_fail(&format!("RESUME {token}"), "RESUME", "SUSPENDED");
    c.expect_fail("LOGIN mallory wrong-password", "LOGIN", "BAD_CREDENTIALS");
    let mut root = admin(&s);
    root.expect("UNSUSPEND mallory", "OK UNSUSPEND mallory");
    // Nothing was revoked: the device's token logs in again.
    c.send(&format!("RESUME {token}"));
    assert_eq!(c.read_line(), "OK RESUME mallory");
    c.read_until(|l| l.starts_with("BACKLOG-END"));

    root.expect("KILL mallory please reconnect", "OK KILL mallory CLOSED 1");
    assert_eq!(
        c.read_to_close(),
        ["BYE KILLED the server's operators closed this connection: please reconnect"]
    );
    let mut again = s.connect();
    again.login("mallory");
}

#[test]
fn closed_registration_leaves_account_creation_to_admins() {
    let dir = tempfile::tempdir().unwrap();
    let s = admin_server(
        &dir.path().join("chatd.redb"),
        &["--registration", "closed"],
    );
    let mut c = s.connect();
    c.expect_fail(
        &format!("REGISTER carol {PASSWORD}"),
        "REGISTER",
        "REGISTRATION_CLOSED",
    );
    let mut root = admin(&s);
    root.expect(&format!("ADDUSER carol {PASSWORD}"), "OK ADDUSER carol");
    c.login("carol");
}

/// The Python interpreter that has the `prometheus_client` package (installed by
/// `scripts/test` into `target/py`), or the one `CHATD_PROMETHEUS_PYTHON` names.
fn prometheus_python() -> PathBuf {
    if let Ok(p) = std::env::var("CHATD_PROMETHEUS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    assert!(
        venv.exists(),
        "the metrics test reads /metrics with the Prometheus project's parser (the Python package \
         prometheus_client): run ./scripts/test, which installs it into target/py, or set \
         CHATD_PROMETHEUS_PYTHON to a python that has it"
    );
    venv
}

/// GET `path` from the HTTP server at `addr`: the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("headers end");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn metrics_are_scraped_and_parsed_by_prometheus_s_own_parser() {
    let python = prometheus_python();
    let dir = tempfile::tempdir().unwrap();
    let s = admin_server(
        &dir.path().join("chatd.redb"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let addr = s
        .log()
        .iter()
        .find_map(|l| {
            l.split("metrics at http://")
                .nth(1)
                .map(|r| r.trim_end_matches("/metrics").to_owned())
        })
        .expect("the log says where the metrics are");
    let mut a = s.user("alice");
    let mut b = s.user("bob");
    for i in 0..3 {
        a.msg("bob", &format!("hi {i}"));
    }
    a.call1("GROUP alice,bob lunch?");
    // And one room message, which bob reads.
    a.call("JOIN #ops");
    b.call("JOIN #ops");
    a.sync();
    a.msg("#ops", "in the room");
    b.sync();

    let (status, body) = http_get(&addr, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let (status, _) = http_get(&addr, "/");
    assert!(status.contains(" 404 "), "{status}");

    // The real parser: every family, its type and its samples, as Prometheus reads them.
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(fam.type, s.name, labels, repr(float(s.value)))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = String::from_utf8(out.stdout).unwrap();
    let value = |name: &str, labels: &str| -> f64 {
        parsed
            .lines()
            .find_map(|l| {
                let mut f = l.split(' ');
                let (_, n, ls, v) = (f.next()?, f.next()?, f.next()?, f.next()?);
                (n == name && ls == labels).then(|| v.parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{parsed}"))
    };
    assert_eq!(value("chatd_messages_total", "kind=msg"), 3.0);
    assert_eq!(value("chatd_messages_total", "kind=group"), 1.0);
    assert_eq!(value("chatd_messages_total", "kind=room"), 1.0);
    assert_eq!(value("chatd_connections", ""), 2.0);
    assert_eq!(value("chatd_accounts_online", ""), 2.0);
    assert_eq!(value("chatd_accounts", ""), 3.0);
    assert_eq!(value("chatd_logins_total", "via=password"), 2.0);
    // Three MSGs delivered to bob, the GROUP to both, the room message to bob.
    assert_eq!(value("chatd_deliveries_total", ""), 6.0);
    assert!(value("chatd_commit_seconds_count", "") >= 6.0);
    assert!(value("chatd_database_bytes", "") > 0.0);
    assert!(parsed
        .lines()
        .any(|l| l.starts_with("histogram chatd_commit_seconds_bucket le=+Inf")));

    // STATS shows the same figures.
    let mut root = admin(&s);
    let lines = root.call("STATS");
    assert!(
        lines.contains(&"STAT messages_total_msg 3".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"STAT accounts_online 3".to_owned()),
        "{lines:?}"
    );
}

#[test]
fn a_backup_taken_while_20_clients_send_holds_everything_acknowledged_before_it() {
    const CLIENTS: usize = 20;
    /// Each client stops after this many messages (a HISTORY page shows them all).
    const MAX_EACH: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatd.redb");
    let copy = dir.path().join("copy.redb");
    let s = admin_server(&db, &[]);
    let acked: Arc<Mutex<Vec<BTreeSet<u64>>>> =
        Arc::new(Mutex::new(vec![BTreeSet::new(); CLIENTS]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    // Half the clients write to themselves, half to a room of their own: the copy holds both the
    // conversations and the rooms.
    let room = |i: usize| (i % 2 == 1).then(|| format!("#b{i}"));
    for i in 0..CLIENTS {
        let mut c = s.user(&format!("u{i}"));
        if let Some(r) = room(i) {
            let answer = c.call(&format!("JOIN {r}"));
            assert_eq!(answer.last().unwrap(), &format!("OK JOIN {r} CREATED"));
        }
        let (acked, stop) = (acked.clone(), stop.clone());
        senders.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < MAX_EACH {
                let id = match room(i) {
                    // The sender's connection gets the OK only.
                    Some(r) => c.msg(&r, &format!("m{n}")),
                    // To itself: its own conversation holds every message it sent.
                    None => {
                        let id = c.msg(&format!("u{i}"), &format!("m{n}"));
                        c.read_line(); // its own copy, after the OK
                        id
                    }
                };
                acked.lock().unwrap()[i].insert(id);
                n += 1;
            }
        }));
    }
    // Let them get going, then take the backup while they go on.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while acked
        .lock()
        .unwrap()
        .iter()
        .map(BTreeSet::len)
        .sum::<usize>()
        < 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the clients did not get going"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let before: Vec<BTreeSet<u64>> = acked.lock().unwrap().clone();
    let out = chatd()
        .args(["backup", "--db"])
        .arg(&db)
        .arg("--out")
        .arg(&copy)
        .output()
        .unwrap();
    let during = acked
        .lock()
        .unwrap()
        .iter()
        .map(BTreeSet::len)
        .sum::<usize>();
    stop.store(true, Ordering::SeqCst);
    for t in senders {
        t.join().unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chatd backup: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fine:"), "{stdout}");
    let total_before: usize = before.iter().map(BTreeSet::len).sum();
    println!(
        "backup: {total_before} messages acknowledged before it began, {during} by its end; {stdout}"
    );
    // A second backup to the same file is refused: a copy is never overwritten.
    let again = chatd()
        .args(["backup", "--db"])
        .arg(&db)
        .arg("--out")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    drop(s);

    // A server on the copy has every account, room and message acknowledged before the backup.
    let s = admin_server(&copy, &[]);
    for (i, ids) in before.iter().enumerate() {
        let mut c = s.connect();
        c.login(&format!("u{i}"));
        let conversation = room(i).unwrap_or_else(|| format!("u{i}"));
        let (lines, _) = c.history(&format!("{conversation} 500"));
        let have: BTreeSet<u64> = lines
            .iter()
            .map(|l| common::parse_msg(l, "HISTORY").id)
            .collect();
        let missing: Vec<&u64> = ids.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "u{i}: acknowledged but not in the copy: {missing:?}"
        );
    }
    // New messages continue after the copy's highest id.
    let mut c = s.connect();
    c.login("u0");
    let last = before.iter().flatten().max().copied().unwrap();
    assert!(c.msg("u1", "after the restore") > last);
}

#[test]
fn check_says_what_is_wrong_and_who_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatd.redb");
    let s = admin_server(&db, &[]);
    let mut a = s.user("alice");
    a.msg("alice", "hello");
    let out = chatd().args(["check", "--db"]).arg(&db).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&db.display().to_string()) && err.contains("another chatd process holds it"),
        "{err}"
    );
    drop(a);
    drop(s);
    let out = chatd().args(["check", "--db"]).arg(&db).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("fine: 2 accounts, 1 messages, last message id 1"),
        "{stdout}"
    );

    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, b"not a database at all\n".repeat(100)).unwrap();
    let out = chatd().args(["check", "--db"]).arg(&junk).output().unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&junk.display().to_string()), "{said}");

    // A server refuses a locked database with the same words.
    let _held = admin_server(&db, &[]);
    let out = chatd()
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another chatd process holds it"), "{err}");
}

#[test]
fn health_exits_0_for_a_server_that_answers_and_1_otherwise() {
    let s = Server::start();
    let ok = chatd()
        .args(["health", &s.addr().to_string()])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let bad = chatd()
        .args(["health", &closed.to_string()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot connect"));
}

#[test]
fn demo_mode_has_its_accounts_says_so_and_cleans_up() {
    use std::io::BufRead;
    let mut child = chatd()
        .args(["--demo", "--listen", "127.0.0.1:0", "--scrypt-log-n", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = rx.recv_timeout(TIMEOUT).expect("the demo server starts");
        log.push(line.clone());
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().parse().unwrap();
        }
    };
    // The banner comes after the listening line.
    while !log.iter().any(|l| l.contains("is deleted when it stops")) {
        log.push(rx.recv_timeout(TIMEOUT).expect("the demo banner"));
    }
    assert!(log.iter().any(|l| l.contains("DEMO MODE")), "{log:?}");
    let demo_db = log
        .iter()
        .find_map(|l| l.split("Its database ").nth(1))
        .and_then(|r| r.split(" is deleted").next())
        .unwrap()
        .to_owned();
    assert!(Path::new(&demo_db).exists());
    for (name, pw) in chatd::config::DEMO_ACCOUNTS {
        let mut c = Client::connect(addr);
        c.send(&format!("LOGIN {name} {pw}"));
        assert_eq!(c.read_line(), format!("OK LOGIN {name}"));
    }
    // The short passwords are the demo's only: REGISTER still holds the rule.
    let mut c = Client::connect(addr);
    c.expect_fail("REGISTER dan dan123", "REGISTER", "BAD_PASSWORD");
    drop(c);
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    assert!(!Path::new(&demo_db).exists(), "{demo_db} was left behind");
}

#[test]
fn options_come_from_the_environment_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("env.redb");
    let log = dir.path().join("chatd.log");
    let mut child = chatd()
        .env("CHATD_LISTEN", "127.0.0.1:1")
        .env("CHATD_DB", &db)
        .env("CHATD_SCRYPT_LOG_N", "4")
        .env("CHATD_LOG_FILE", &log)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The log goes to the file; wait (bounded) for the listening line.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .find_map(|l| l.split("listening on ").nth(1).map(str::to_owned))
        {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no listening line in the log file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(db.exists(), "CHATD_DB was not used");
    let mut c = Client::connect(addr.trim().parse().unwrap());
    c.register("envy");
    // logrotate: move the file away, SIGHUP, and the server writes a new one.
    let rotated = dir.path().join("chatd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("log file reopened")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log file was not reopened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("registered envy"));
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
}
