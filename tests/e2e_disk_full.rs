//! A full disk, end to end: the real binary with its database on a small tmpfs that the test
//! mounts itself (it needs root; without it the tests say so and pass).
//!
//! The failure this guards against: one ordinary user could fill the disk, and on ENOSPC the
//! server exited; restarted on the still-full disk it exited again after two commands (a crash
//! loop under a service manager, with nothing readable meanwhile). Now the server keeps serving
//! reads and logins, refuses new writes with STORAGE_UNAVAILABLE, and resumes writing by itself
//! once there is room; the commands that were being committed get their answers then, and nothing
//! acknowledged is lost, across a restart too.
//!
//! Two ways to fill the disk: under the reserve (`--min-free-disk`), where writes stop before redb
//! meets the full disk; and with no reserve, where a commit really fails with ENOSPC and the store
//! reopens its file to go on reading.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{parse_ok_id, Client, Server, TIMEOUT};

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `mib` MiB, or `None` (with a note on stderr) where mounting is not possible.
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs for the disk-full test ({}); run as root to \
                     test it",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount for the disk-full test: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes free on the file system of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Fills the file system of `dir` with a ballast file until at most `leave` bytes are free (0: until
/// it is full); returns the ballast's path.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).expect("creating the ballast");
    let mut chunk = 1 << 20;
    // Bounded: the file system is a few MiB; each round writes at least 4 KiB or stops.
    for _ in 0..100_000 {
        let free = free_bytes(dir);
        if free <= leave {
            break;
        }
        let n = chunk.min((free - leave) as usize).max(4096);
        match f.write_all(&vec![0x55; n]) {
            Ok(()) => {}
            Err(_) if chunk > 4096 => chunk = 4096,
            Err(_) => break,
        }
    }
    let _ = f.sync_all();
    path
}

/// Waits until the server has logged a line containing `what`.
fn wait_for_log(server: &Server, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !server.log().iter().any(|l| l.contains(what)) {
        assert!(
            Instant::now() < deadline,
            "the server did not log {what:?}; its log:\n{}",
            server.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ids of the messages between alice and bob, as bob's HISTORY shows them (live MESSAGE
/// pushes that arrive meanwhile are left aside).
fn history_ids(c: &mut Client) -> Vec<u64> {
    let lines = c.call("HISTORY alice 500");
    let last = lines.last().expect("a final line");
    assert!(last.starts_with("OK HISTORY "), "{last}");
    lines
        .iter()
        .filter(|l| l.starts_with("HISTORY "))
        .map(|l| common::parse_msg(l, "HISTORY").id)
        .collect()
}

#[test]
fn under_the_reserve_writes_stop_reads_go_on_and_writes_resume_by_themselves() {
    let Some(fs) = Tmpfs::mount(48) else { return };
    let db = fs.path().join("chatd.redb");
    let server = Server::start_on(&db, &["--min-free-disk", "16"]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let mut carol = server.connect();
    carol.register("carol");
    let mut acked: Vec<u64> = (0..20)
        .map(|i| alice.msg("bob", &format!("before {i}")))
        .collect();
    bob.sync();

    let ballast = fill(fs.path(), 8 << 20);
    println!("ballast in place: {} MiB free", free_bytes(fs.path()) >> 20);
    // The idle store notices the disk under its reserve within a second or so.
    wait_for_log(&server, "writes to the database are failing");
    alice.expect_fail("MSG bob refused", "MSG", "STORAGE_UNAVAILABLE");
    alice.expect_fail("FRIEND ADD bob", "FRIEND", "STORAGE_UNAVAILABLE");
    // Reads and logins go on.
    assert_eq!(history_ids(&mut bob), acked);
    carol.login("carol");
    assert_eq!(
        carol.call("USERS").last().map(String::as_str),
        Some("OK USERS 3")
    );

    // A restart on the still-full disk: the server starts, serves, and refuses writes; it does
    // not stop again.
    drop((alice, bob, carol));
    assert!(server.stop().success());
    let server = Server::start_on(&db, &["--min-free-disk", "16"]);
    wait_for_log(&server, "writes to the database are failing");
    let mut alice = server.connect();
    alice.login("alice");
    let mut bob = server.connect();
    bob.login("bob");
    assert_eq!(history_ids(&mut bob), acked);
    alice.expect_fail("MSG bob refused", "MSG", "STORAGE_UNAVAILABLE");

    std::fs::remove_file(&ballast).expect("removing the ballast");
    wait_for_log(&server, "writes to the database work again");
    acked.push(alice.msg("bob", "after"));
    assert_eq!(history_ids(&mut bob), acked);

    // Nothing acknowledged is lost across a restart.
    drop((alice, bob));
    assert!(server.stop().success());
    let server = Server::start_on(&db, &[]);
    let mut bob = server.connect();
    bob.login("bob");
    assert_eq!(history_ids(&mut bob), acked);
}

#[test]
fn a_commit_that_meets_a_full_disk_waits_and_nothing_acknowledged_is_lost() {
    let Some(fs) = Tmpfs::mount(24) else { return };
    let db = fs.path().join("chatd.redb");
    // No reserve: the disk fills under redb's feet, in the middle of commits.
    let server = Server::start_on(&db, &["--min-free-disk", "0"]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let mut other = server.connect();
    other.register("carol");
    let before: Vec<u64> = (0..10)
        .map(|i| alice.msg("bob", &format!("before {i}")))
        .collect();
    bob.sync();

    let ballast = fill(fs.path(), 0);
    println!("ballast in place: {} bytes free", free_bytes(fs.path()));
    // alice sends 100 messages in one go, from a thread of its own: her lines wait in the network
    // while the server has 64 of them unanswered.
    const N: usize = 100;
    let mut writer = alice.writer();
    let sender = std::thread::spawn(move || {
        let mut lines = String::new();
        for i in 0..N {
            lines.push_str(&format!("MSG bob during {i} {}\n", "x".repeat(1500)));
        }
        writer
            .write_all(lines.as_bytes())
            .expect("sending the burst");
    });
    wait_for_log(&server, "writes to the database are failing");
    // Meanwhile: reads and logins work, new writes are refused.
    let mut seen = history_ids(&mut bob);
    assert!(
        seen.starts_with(&before),
        "acknowledged messages must stay readable: {seen:?}"
    );
    other.login("carol");
    other.expect_fail("MSG bob hi", "MSG", "STORAGE_UNAVAILABLE");

    std::fs::remove_file(&ballast).expect("removing the ballast");
    sender.join().expect("the sender thread");
    // Every command of the burst gets its answer: OK once committed, or STORAGE_UNAVAILABLE if it
    // was read after the server knew.
    let mut acked = before.clone();
    let mut refused = 0;
    for _ in 0..N {
        let reply = alice.read_line();
        if reply.starts_with("OK MSG ") {
            acked.push(parse_ok_id(&reply, "MSG"));
        } else {
            assert!(
                reply.starts_with("FAIL MSG STORAGE_UNAVAILABLE "),
                "unexpected {reply}"
            );
            refused += 1;
        }
    }
    println!(
        "burst of {N}: {} acknowledged, {refused} refused",
        acked.len() - before.len()
    );
    wait_for_log(&server, "writes to the database work again");
    acked.push(alice.msg("bob", "after"));
    seen = history_ids(&mut bob);
    assert_eq!(
        seen, acked,
        "HISTORY holds exactly the acknowledged messages"
    );

    drop((alice, bob, other));
    assert!(server.stop().success());
    let server = Server::start_on(&db, &[]);
    let mut bob = server.connect();
    bob.login("bob");
    assert_eq!(history_ids(&mut bob), acked, "after a restart");
}

/// SIGTERM while commands wait for a disk that stays full: the server stops (status 0) instead of
/// waiting for the disk, says in its log what it could not write, and what it acknowledged is
/// there after a restart.
#[test]
fn a_server_stopped_while_writes_fail_stops_and_keeps_what_it_acknowledged() {
    let Some(fs) = Tmpfs::mount(16) else { return };
    let db = fs.path().join("chatd.redb");
    let server = Server::start_on(&db, &["--min-free-disk", "0"]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let before: Vec<u64> = (0..10)
        .map(|i| alice.msg("bob", &format!("before {i}")))
        .collect();
    bob.sync();
    let ballast = fill(fs.path(), 0);
    let mut writer = alice.writer();
    let sender = std::thread::spawn(move || {
        let mut lines = String::new();
        for i in 0..40 {
            lines.push_str(&format!("MSG bob during {i} {}\n", "x".repeat(1500)));
        }
        // The server may close the connection before it has read everything.
        let _ = writer.write_all(lines.as_bytes());
    });
    wait_for_log(&server, "writes to the database are failing");
    let log = server.log();
    assert!(server.stop().success(), "chatd did not stop cleanly");
    sender.join().expect("the sender thread");
    println!(
        "{}",
        log.iter()
            .chain(std::iter::once(&String::new()))
            .filter(|l| l.contains("failing") || l.contains("stopping with"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut acked = before.clone();
    while let Some(line) = alice.next_whole_line() {
        if line.starts_with("OK MSG ") {
            acked.push(parse_ok_id(&line, "MSG"));
        }
    }
    std::fs::remove_file(&ballast).expect("removing the ballast");
    let server = Server::start_on(&db, &[]);
    let mut bob = server.connect();
    bob.login("bob");
    let seen = history_ids(&mut bob);
    for id in &acked {
        assert!(
            seen.contains(id),
            "acknowledged message {id} lost: {seen:?}"
        );
    }
}
