//! A password-guessing attack from one address, over TCP against the real binary with the real
//! hashing cost.
//!
//! The failure this guards against: 300 connections sending wrong LOGINs from one address filled
//! the hashing queue, so that every legitimate LOGIN got SERVER_BUSY during the attack and for up
//! to 48 s after it ended (hashes queued by connections that were gone were still computed). Now
//! one address holds at most a few places in the queue, its failures back off, and hashes of closed
//! connections are skipped: the owner of the attacked account, logging in from another address,
//! gets in during the attack and at once after it.
//!
//! The attack is bounded (300 connections, rounds of one LOGIN per connection, stopped once the
//! measurements are made or after a minute at most); the only timed assertion is the harness's
//! generous deadline on each line. The measured latencies are printed.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Client, Server, PASSWORD};

const ATTACKERS: usize = 300;
const THREADS: usize = 6;
const ATTACKER: &str = "127.0.0.2";
const OWNER: &str = "127.0.0.3";

#[derive(Default)]
struct Tally {
    rounds: AtomicUsize,
    bad_credentials: AtomicUsize,
    rate_limited: AtomicUsize,
    server_busy: AtomicUsize,
}

/// One attacking thread: its connections each send `LOGIN alice <wrong>` and read the answer, in
/// rounds, until told to stop.
fn attack(addr: SocketAddr, conns: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut clients: Vec<Client> = (0..conns)
        .map(|_| Client::connect_from(addr, ATTACKER))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        for c in clients.iter_mut() {
            c.send(&format!("LOGIN alice guess-{round:06}"));
        }
        for c in clients.iter_mut() {
            let reply = c.read_line();
            let counter = if reply.starts_with("FAIL LOGIN BAD_CREDENTIALS ") {
                &tally.bad_credentials
            } else if reply.starts_with("FAIL LOGIN RATE_LIMITED retry_after=") {
                &tally.rate_limited
            } else if reply.starts_with("FAIL LOGIN SERVER_BUSY ") {
                &tally.server_busy
            } else {
                panic!("an attacker got {reply}");
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        tally.rounds.fetch_add(1, Ordering::Relaxed);
        round += 1;
    }
    // Dropping the connections closes them: the attack ends.
}

/// Logs in as alice from the owner's address on a new connection; returns how long the answer
/// took and the answer.
fn owner_login(addr: SocketAddr) -> (Duration, String) {
    let mut c = Client::connect_from(addr, OWNER);
    let started = Instant::now();
    c.send(&format!("LOGIN alice {PASSWORD}"));
    let reply = c.read_line();
    (started.elapsed(), reply)
}

#[test]
fn the_owner_logs_in_during_and_right_after_a_300_connection_attack() {
    let server = Server::start_with_real_hashing(&[
        "--hash-threads",
        "2",
        // Every attacker connection is let in: what is measured is the protection of the
        // hashing queue, not the limit of connections per address.
        "--max-per-address",
        "1000",
    ]);
    let addr = server.addr();
    // alice has logged in from home before.
    let mut home = Client::connect_from(addr, OWNER);
    home.register("alice");
    home.login("alice");
    home.send("QUIT");
    home.read_to_close();
    let (quiet, _) = owner_login(addr);
    println!("LOGIN with no attack: {quiet:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let attackers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || attack(addr, ATTACKERS / THREADS, stop, tally))
        })
        .collect();
    // Wait until every attacker connection has had a few answers, so the attack is in full swing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.rounds.load(Ordering::Relaxed) < THREADS * 3 {
        assert!(Instant::now() < deadline, "the attack did not get going");
        thread::sleep(Duration::from_millis(10));
    }
    let (during, reply) = owner_login(addr);
    println!("LOGIN during the attack: {during:?}: {reply}");
    assert_eq!(reply, "OK LOGIN alice", "during the attack");

    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().expect("an attacker thread");
    }
    let (after, reply) = owner_login(addr);
    println!("LOGIN right after the attack: {after:?}: {reply}");
    assert_eq!(reply, "OK LOGIN alice", "right after the attack");
    println!(
        "attack: {} LOGINs: {} hashed (BAD_CREDENTIALS), {} refused at once (RATE_LIMITED), \
         {} SERVER_BUSY",
        tally.bad_credentials.load(Ordering::Relaxed)
            + tally.rate_limited.load(Ordering::Relaxed)
            + tally.server_busy.load(Ordering::Relaxed),
        tally.bad_credentials.load(Ordering::Relaxed),
        tally.rate_limited.load(Ordering::Relaxed),
        tally.server_busy.load(Ordering::Relaxed),
    );
}
