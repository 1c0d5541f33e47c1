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

/// The failure this guards against: 200 idle sockets from one address took every slot of a server
/// at `--max-connections 200`, locking everyone else out. Past the limit per address (16 by
/// default) one address is refused with its own code, and another address still gets in.
#[test]
fn one_address_cannot_take_every_connection_slot() {
    let server = Server::start_with(&["--max-connections", "200"]);
    let mut held = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..200 {
        let mut c = common::Client::connect_raw_from(server.addr(), "127.0.0.2");
        let first = c.read_line();
        if first.starts_with("HELLO ") {
            accepted += 1;
            held.push(c);
        } else {
            assert!(first.starts_with("BYE TOO_MANY_CONNECTIONS "), "{first}");
            assert!(c.read_to_close().is_empty());
            refused += 1;
        }
    }
    println!("from one address: {accepted} accepted, {refused} refused");
    assert_eq!(
        (accepted, refused),
        (chatd::config::DEFAULT_MAX_PER_ADDRESS, 200 - accepted)
    );
    // Someone else gets in, and the held connections still work.
    let mut other = common::Client::connect_from(server.addr(), "127.0.0.3");
    other.sync();
    held[0].sync();
}

/// A silent connection is probed with PING after the idle timeout; one that answers stays, one
/// that stays silent is closed with BYE IDLE_TIMEOUT after the same time again, and its slot is
/// given back.
#[test]
fn silent_connections_are_probed_then_closed() {
    let server = Server::start_with(&["--idle-timeout", "1", "--max-per-address", "2"]);
    let mut talker = common::Client::connect_from(server.addr(), "127.0.0.4");
    let mut silent = common::Client::connect_from(server.addr(), "127.0.0.4");
    let started = Instant::now();
    let probe = talker.read_line();
    let token = probe
        .strip_prefix("PING ")
        .unwrap_or_else(|| panic!("expected the idle probe: {probe}"));
    println!("probed after {:?}", started.elapsed());
    talker.send(&format!("PING {token}"));
    assert_eq!(talker.read_line(), format!("PONG {token}"));
    assert_eq!(talker.read_line(), "OK PING");
    // The one that answered is still served (it is probed again later, and would be closed in
    // turn if it stopped answering).
    talker.sync();
    assert!(silent.read_line().starts_with("PING "));
    let lines = silent.read_to_close();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("BYE IDLE_TIMEOUT "), "{lines:?}");
    println!("closed after {:?}", started.elapsed());
    // Its place is free again (the slot goes when the connection's task ends: allow a few tries).
    for attempt in 0.. {
        let mut c = common::Client::connect_raw_from(server.addr(), "127.0.0.4");
        let first = c.read_line();
        if first.starts_with("HELLO ") {
            break;
        }
        assert!(
            first.starts_with("BYE TOO_MANY_CONNECTIONS") && attempt < 50,
            "{first}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A connection is one task that reads, writes and waits for its credits: clients that each send
/// far more than their 64 unanswered commands in one write, together more lines than the core's
/// input queue holds, get every answer in order, and one that closes its sending side right after
/// its burst still gets every answer before the server closes.
#[test]
fn pipelined_clients_past_every_queue_get_every_answer_in_order() {
    let server = Server::start_with(&[
        "--line-rate",
        "1000000",
        "--line-burst",
        "1000000",
        "--exempt",
        "127.0.0.1",
    ]);
    const CLIENTS: usize = 24;
    const LINES: usize = 200;
    let mut clients: Vec<_> = (0..CLIENTS).map(|_| server.connect()).collect();
    for (k, c) in clients.iter_mut().enumerate() {
        let mut burst = String::new();
        for i in 0..LINES {
            burst.push_str(&format!("PING c{k}n{i}\n"));
        }
        c.send_raw(burst.as_bytes());
    }
    clients[0].shutdown_write();
    for (k, c) in clients.iter_mut().enumerate() {
        for i in 0..LINES {
            assert_eq!(c.read_line(), format!("PONG c{k}n{i}"));
            assert_eq!(c.read_line(), "OK PING");
        }
    }
    assert_eq!(clients[0].next_line(), None, "closed after its answers");
}
