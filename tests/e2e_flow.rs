//! Flow control over real sockets: the line rate slows a client down without refusing or losing
//! anything, and the connection limit turns extra clients away with BYE SERVER_FULL.

mod common;

use std::time::Instant;

use common::Server;

#[test]
fn line_rate_slows_a_burst_but_answers_every_line_in_order() {
    let server = Server::start_with(&["--line-rate", "100", "--line-burst", "20"]);
    let mut c = server.connect();
    let started = Instant::now();
    let mut burst = String::new();
    for i in 0..120 {
        burst.push_str(&format!("PING n{i}\n"));
    }
    c.send_raw(burst.as_bytes());
    for i in 0..120 {
        assert_eq!(c.read_line(), format!("PONG n{i}"));
        assert_eq!(c.read_line(), "OK PING");
    }
    let took = started.elapsed();
    println!("120 lines at 100 lines/s, burst 20: answered in {took:?}");
    // 100 lines past the burst at 100 lines/s cannot take less than about a second; a lower bound
    // only, so a slow machine cannot make it fail.
    assert!(
        took.as_millis() >= 800,
        "the line rate was not applied: {took:?}"
    );
}

#[test]
fn connections_past_the_limit_are_told_server_full() {
    let server = Server::start_with(&["--max-connections", "2"]);
    let mut a = server.connect();
    let mut b = server.connect();
    a.sync();
    b.sync();
    let mut c = common::Client::connect_raw(server.addr());
    let lines = c.read_to_close();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("BYE SERVER_FULL "), "{lines:?}");
    // The first two are unaffected, and a place frees up when one leaves.
    a.sync();
    b.send("QUIT");
    assert_eq!(b.read_to_close(), vec!["OK QUIT".to_string()]);
    // The place is given back when the connection's task has ended, just after the socket closes:
    // allow a few tries.
    for attempt in 0.. {
        let mut d = common::Client::connect_raw(server.addr());
        let first = d.read_line();
        if first.starts_with("HELLO ") {
            break;
        }
        assert!(
            first.starts_with("BYE SERVER_FULL") && attempt < 50,
            "{first}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
