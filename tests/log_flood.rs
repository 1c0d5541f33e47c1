//! Logs that cannot be flooded. The failure this guards against: each connection wrote two info
//! lines (opened, closed) and each failed login one, so one client could write about 1 MB of log a
//! second. Repeated events are now counted and written once a minute as one line.

mod common;

use std::sync::Mutex;

use chatd::sim::Sim;
use common::{Client, Server};

/// Lines the capturing logger has seen (this test binary's global logger).
static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            CAPTURED
                .lock()
                .unwrap()
                .push(format!("{} {}", r.level(), r.args()));
        }
    }

    fn flush(&self) {}
}

#[test]
fn repeated_events_become_one_line_a_minute() {
    log::set_logger(&Capture).expect("the only logger of this test binary");
    log::set_max_level(log::LevelFilter::Info);
    let mut s = Sim::new();
    s.tick(1);
    for i in 0..200 {
        let who = format!("c{i}");
        s.connect_from(&who, "198.51.100.7");
        s.send(&who, "LOGIN nobody wrong-password");
        s.disconnect(&who);
    }
    s.connect_from("other", "203.0.113.1");
    s.disconnect("other");
    let before = CAPTURED.lock().unwrap().len();
    assert_eq!(before, 0, "{:?}", CAPTURED.lock().unwrap());
    s.tick(60_000);
    let lines = CAPTURED.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line.starts_with("INFO in the last 60 s: "), "{line}");
    for part in [
        "201 connections opened from 2 addresses, most from 198.51.100.7 (200)",
        "201 connections closed",
        "failed logins from 198.51.100.7",
        "logins and registrations refused as rate limited from 198.51.100.7",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    // Nothing new: nothing written.
    s.tick(60_000);
    assert_eq!(CAPTURED.lock().unwrap().len(), 1);
}

#[test]
fn three_hundred_connections_and_failed_logins_leave_the_log_alone() {
    let server = Server::start();
    let quiet = server.log().len();
    for i in 0..300 {
        let mut c = Client::connect_from(server.addr(), "127.0.0.2");
        if i % 5 == 0 {
            c.send("LOGIN nobody wrong-password");
            assert!(c.read_line().starts_with("FAIL LOGIN "));
        }
        c.send("QUIT");
        c.read_to_close();
    }
    // A connection from an exempt address, to see that the server has read everything.
    let mut last = server.connect();
    last.sync();
    let log = server.log();
    let new: Vec<&String> = log[quiet..].iter().collect();
    println!(
        "log lines written for 300 connections: {}: {new:?}",
        new.len()
    );
    assert!(new.len() <= 2, "{new:#?}");
}
