//! Start-up on a database file that cannot be used: the real binary must refuse it with one log
//! line that names the file and says what to do, and exit with status 1.
//!
//! The failures this guards against: a 0-byte file was silently initialised as an empty database
//! (every account gone, without a word), and damaged pages made redb panic (status 101 and a
//! backtrace) instead of an error an operator can act on.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;

/// A database with two accounts and a few hundred messages, made by the real server.
fn make_database(path: &Path) {
    let server = Server::start_on(path, &[]);
    let mut a = server.user("alice");
    let mut b = server.user("bob");
    for i in 0..300 {
        a.msg("bob", &format!("message {i} {}", "x".repeat(200)));
    }
    b.sync();
    assert!(server.stop().success());
}

/// Runs chatd on `db` until it exits by itself (killed after [`common::TIMEOUT`] if it does not);
/// returns its exit code (None when it had to be killed) and its log.
fn start_and_exit(db: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["--listen", "127.0.0.1:0", "--scrypt-log-n", "4"])
        .arg("--db")
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "1")
        .spawn()
        .expect("running chatd");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let deadline = Instant::now() + common::TIMEOUT;
    let code = loop {
        if let Some(status) = child.try_wait().expect("waiting for chatd") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, reader.join().expect("log reader"))
}

/// chatd refused `db`: status 1, and exactly one ERROR line, which names the file and contains
/// each of `words`; no panic, no backtrace.
fn assert_refused(db: &Path, words: &[&str]) {
    let (code, log) = start_and_exit(db);
    assert_eq!(
        code,
        Some(1),
        "chatd should refuse {}:\n{log}",
        db.display()
    );
    assert!(
        !log.contains("panicked") && !log.contains("backtrace"),
        "a panic instead of an error:\n{log}"
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{log}");
    let line = errors[0];
    assert!(line.contains(&db.display().to_string()), "{line}");
    for w in words {
        assert!(line.contains(w), "{w:?} missing from {line}");
    }
    assert!(!log.contains("listening on"), "{log}");
}

#[test]
fn an_empty_file_is_refused_not_initialised() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatd.redb");
    std::fs::write(&db, b"").unwrap();
    assert_refused(&db, &["empty", "backup"]);
    // The file was left as it was.
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
}

#[test]
fn damaged_files_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    make_database(&good);
    let bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    assert!(
        n > 64 * 1024,
        "a database of {n} bytes is too small to damage usefully"
    );

    let damaged = dir.path().join("damaged.redb");
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Cut in half.
    cases.push(("truncated", bytes[..n / 2].to_vec()));
    // Not a redb file at all: the header overwritten.
    let mut header = bytes.clone();
    header[..64].fill(0xff);
    cases.push(("header", header));
    // Garbage in every page (this made redb 4 panic).
    let mut pages = bytes.clone();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for page in (4096..n).step_by(4096) {
        for b in &mut pages[page + 100..(page + 150).min(n)] {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
    }
    cases.push(("pages", pages));
    // Garbage at the end: the last 32 KB. The last two pages alone are sometimes free space (how
    // the commits group the messages decides where redb puts its pages), and garbage in free
    // space damages nothing; 32 KB reached pages in use in each of 18 runs.
    let mut tail = bytes.clone();
    for (i, b) in tail[n - 32768..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    cases.push(("tail", tail));
    for (what, content) in cases {
        std::fs::write(&damaged, &content).unwrap();
        println!("damage: {what}");
        assert_refused(&damaged, &["backup"]);
        assert_check_reports_damage(&damaged);
    }
}

/// `chatd check` on `db` says it is damaged: status 1, the file named on the last line, no panic.
fn assert_check_reports_damage(db: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["check", "--db"])
        .arg(db)
        .stdin(Stdio::null())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running chatd check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "chatd check:\n{text}");
    assert!(!text.contains("panicked"), "chatd check:\n{text}");
    assert!(
        text.contains(&db.display().to_string()),
        "chatd check:\n{text}"
    );
}
