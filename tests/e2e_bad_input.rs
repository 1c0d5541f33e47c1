//! Bad input over real TCP: every malformed or refused line gets its specific FAIL code (or, for a
//! blank line, no reply) and leaves the connection usable, which a PING barrier checks after each
//! case. Also: line-length limits at the boundary and far past it, a connection that ends in the
//! middle of a line, a flooding client beside a quiet one, and a client that never reads.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOO_LONG: &str = "FAIL * LINE_TOO_LONG line exceeds 4096 bytes; it was discarded";

/// A line `MSG <spaces>bob <text>` of exactly `len` bytes whose text has `text_len` bytes.
fn padded_msg(len: usize, text: &str) -> String {
    let spaces = len - "MSG".len() - " bob ".len() - text.len() + 1;
    format!("MSG{}bob {text}", " ".repeat(spaces))
}

#[test]
fn line_length_limit_is_exact_and_the_rest_of_a_long_line_is_discarded() {
    let server = Server::start();
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let text = "t".repeat(2048);

    // Exactly 4096 bytes, a maximal text: accepted (the separator may be many spaces).
    let line = padded_msg(4096, &text);
    assert_eq!(line.len(), 4096);
    let id = alice.msg("bob", "before");
    assert_eq!(alice.call1(&line), format!("OK MSG {} DELIVERED", id + 1));
    // 4096 bytes and a CRLF: the CR is not part of the line.
    assert_eq!(
        alice.call1(&format!("{line}\r")),
        format!("OK MSG {} DELIVERED", id + 2)
    );
    let got = bob.sync();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(parse_msg(&got[1], "MESSAGE").text, text);
    assert_eq!(parse_msg(&got[2], "MESSAGE").text, text);

    // 4097 bytes: refused as a whole, nothing of it runs, the next line is read normally.
    let long = padded_msg(4097, &text);
    assert_eq!(long.len(), 4097);
    alice.expect(&long, TOO_LONG);
    alice.expect_quiet();
    alice.expect(&format!("{long}\r"), TOO_LONG);
    alice.expect_quiet();
    // The part past the limit is not taken for a new line either.
    let tail = format!("{}PING tail", " ".repeat(4100));
    alice.expect(&tail, TOO_LONG);
    alice.expect_quiet();
    // Several over-long lines and a good one in one write: one reply each, in order.
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.extend_from_slice(long.as_bytes());
        batch.push(b'\n');
    }
    batch.extend_from_slice(b"PING after\n");
    alice.send_raw(&batch);
    for _ in 0..3 {
        assert_eq!(alice.read_line(), TOO_LONG);
    }
    assert_eq!(alice.read_line(), "PONG after");
    assert_eq!(alice.read_line(), "OK PING");

    bob.expect_quiet();
    let (lines, _) = bob.history("alice");
    assert_eq!(lines.len(), 3, "only the accepted lines were sent");
}

#[test]
fn a_megabyte_line_without_lf_does_not_grow_the_server() {
    let server = Server::start();
    let mut c = server.connect();
    // Warm up the paths the long line takes, so the baseline already includes them.
    c.expect(&"x".repeat(5000), TOO_LONG);
    c.expect_quiet();

    let before = server.status_kib("VmRSS");
    // The high-water mark catches a peak between two samples.
    let hwm_before = server.status_kib("VmHWM");
    let chunk = vec![b'a'; 64 * 1024];
    let mut peak = before;
    for _ in 0..16 {
        c.send_raw(&chunk);
        peak = peak.max(server.status_kib("VmRSS"));
    }
    // Until the LF comes there is no reply: the line has not ended.
    c.send_raw(b"\n");
    assert_eq!(c.read_line(), TOO_LONG);
    c.expect_quiet();
    peak = peak.max(server.status_kib("VmRSS"));
    let hwm = server.status_kib("VmHWM");
    println!(
        "RSS while sending a 1 MiB line: before {before} KiB, peak {peak} KiB (+{} KiB); \
         VmHWM {hwm_before} KiB before, {hwm} KiB after",
        peak - before
    );
    // Buffering the line would take at least 1024 KiB more.
    assert!(
        peak < before + 512,
        "the server's RSS grew from {before} KiB to {peak} KiB"
    );
    assert!(
        hwm < hwm_before.max(before) + 512,
        "the server's peak RSS grew from {hwm_before} KiB to {hwm} KiB"
    );
    // The connection still works for real commands.
    c.register("alice");
    c.login("alice");
    assert_eq!(c.call("USERS"), ["USER alice", "OK USERS 1"]);
}

#[test]
fn invalid_utf8_is_refused_and_the_connection_stays_usable() {
    let server = Server::start();
    let mut bob = server.user("bob");
    let mut c = server.user("alice");
    let expected = "FAIL * BAD_ENCODING line is not valid UTF-8";
    for bad in [
        &b"PING \xff\n"[..],
        b"\xc3\x28\n",
        b"@l1 MSG bob \xed\xa0\x80\n",
        b"MSG bob caf\xc3\n",
        b"\xfe\xfe\xff\xff\r\n",
    ] {
        c.send_raw(bad);
        assert_eq!(c.read_line(), expected, "for {bad:?}");
        c.expect_quiet();
    }
    // Valid multi-byte text goes through.
    let id = c.msg("bob", "café ☕");
    let got = bob.sync();
    assert_eq!(got.len(), 1, "only the valid line reached bob: {got:?}");
    let m = parse_msg(&got[0], "MESSAGE");
    assert_eq!((m.id, &*m.text), (id, "café ☕"));
}

#[test]
fn blank_lines_get_no_reply() {
    let server = Server::start();
    let mut c = server.connect();
    for blank in ["\n", "   \n", "\r\n", "  \r\n"] {
        c.send_raw(blank.as_bytes());
        c.expect_quiet();
    }
    // Many at once, between commands.
    c.send_raw(b"\n\n\nPING a\n\n  \nPING b\n\r\n");
    assert_eq!(c.sync(), ["PONG a", "OK PING", "PONG b", "OK PING"]);
}

#[test]
fn each_refusal_has_its_code_before_login() {
    let server = Server::start();
    let mut setup = server.connect();
    setup.register("alice");
    let mut c = server.connect();
    let long_name = "n".repeat(33);
    let long_label = "l".repeat(33);
    let long_token = "p".repeat(65);
    let cases: &[(String, &str, &str)] = &[
        // Label syntax comes first, then the command word.
        ("@ PING".into(), "*", "BAD_LABEL"),
        ("@bad/label PING".into(), "*", "BAD_LABEL"),
        (format!("@{long_label} PING"), "*", "BAD_LABEL"),
        ("@bad! FROB".into(), "*", "BAD_LABEL"),
        ("@only".into(), "@only *", "UNKNOWN_COMMAND"),
        ("FROB".into(), "*", "UNKNOWN_COMMAND"),
        ("@x FROB a b".into(), "@x *", "UNKNOWN_COMMAND"),
        // Then the login state, before arity and values.
        ("MSG bob hi".into(), "MSG", "NOT_LOGGED_IN"),
        ("MSG".into(), "MSG", "NOT_LOGGED_IN"),
        ("msg bad!name".into(), "MSG", "NOT_LOGGED_IN"),
        ("GROUP a,b hi".into(), "GROUP", "NOT_LOGGED_IN"),
        ("ALL hi".into(), "ALL", "NOT_LOGGED_IN"),
        ("USERS".into(), "USERS", "NOT_LOGGED_IN"),
        ("HISTORY alice".into(), "HISTORY", "NOT_LOGGED_IN"),
        ("FRIEND LIST".into(), "FRIEND", "NOT_LOGGED_IN"),
        ("LOGOUT".into(), "LOGOUT", "NOT_LOGGED_IN"),
        ("@n1 LOGOUT".into(), "@n1 LOGOUT", "NOT_LOGGED_IN"),
        // Arity.
        ("REGISTER".into(), "REGISTER", "MISSING_ARGUMENT"),
        ("REGISTER bob".into(), "REGISTER", "MISSING_ARGUMENT"),
        (
            "REGISTER bob pass-word extra".into(),
            "REGISTER",
            "TOO_MANY_ARGUMENTS",
        ),
        ("LOGIN".into(), "LOGIN", "MISSING_ARGUMENT"),
        ("LOGIN alice".into(), "LOGIN", "MISSING_ARGUMENT"),
        (
            format!("LOGIN alice {PASSWORD} extra"),
            "LOGIN",
            "TOO_MANY_ARGUMENTS",
        ),
        ("PING a b".into(), "PING", "TOO_MANY_ARGUMENTS"),
        ("HELP MSG extra".into(), "HELP", "TOO_MANY_ARGUMENTS"),
        // Values.
        ("REGISTER 1abc pass-word".into(), "REGISTER", "BAD_NAME"),
        ("REGISTER a!b pass-word".into(), "REGISTER", "BAD_NAME"),
        (
            format!("REGISTER {long_name} pass-word"),
            "REGISTER",
            "BAD_NAME",
        ),
        ("REGISTER bob short".into(), "REGISTER", "BAD_PASSWORD"),
        (
            format!("REGISTER bob {}", "p".repeat(129)),
            "REGISTER",
            "BAD_PASSWORD",
        ),
        (format!("PING {long_token}"), "PING", "BAD_ARGUMENT"),
        ("HELP NOPE".into(), "HELP", "UNKNOWN_COMMAND"),
        // The command's own rules.
        (
            format!("REGISTER ALICE {PASSWORD}"),
            "REGISTER",
            "NAME_TAKEN",
        ),
        (
            format!("REGISTER Alice {PASSWORD}"),
            "REGISTER",
            "NAME_TAKEN",
        ),
        (
            "LOGIN alice wrong-password".into(),
            "LOGIN",
            "BAD_CREDENTIALS",
        ),
        (
            format!("LOGIN nobody {PASSWORD}"),
            "LOGIN",
            "BAD_CREDENTIALS",
        ),
        ("LOGIN bad!name x".into(), "LOGIN", "BAD_CREDENTIALS"),
    ];
    for (line, command, code) in cases {
        c.expect_fail(line, command, code);
    }
    // Boundaries that pass.
    let label = "l".repeat(32);
    assert_eq!(
        c.call(&format!("@{label} PING")),
        ["PONG".to_owned(), format!("OK @{label} PING")]
    );
    c.register(&"n".repeat(32));
    c.expect(
        &format!("REGISTER bob {}", "p".repeat(128)),
        "OK REGISTER bob",
    );
    c.expect("REGISTER carol 8bytes!!", "OK REGISTER carol");
    c.login("alice");
    assert_eq!(c.call("USERS"), ["USER alice", "OK USERS 1"]);
}

#[test]
fn each_refusal_has_its_code_when_logged_in() {
    let server = Server::start();
    let mut bob = server.user("bob");
    let mut carol = server.user("carol");
    let mut c = server.user("alice");
    let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
    let fifty = many[..50].join(",");
    let fifty_one = many.join(",");
    let cases: &[(String, &str, &str)] = &[
        (
            format!("REGISTER dave {PASSWORD}"),
            "REGISTER",
            "ALREADY_LOGGED_IN",
        ),
        (
            format!("LOGIN alice {PASSWORD}"),
            "LOGIN",
            "ALREADY_LOGGED_IN",
        ),
        (
            format!("LOGIN bob {PASSWORD}"),
            "LOGIN",
            "ALREADY_LOGGED_IN",
        ),
        ("LOGIN".into(), "LOGIN", "ALREADY_LOGGED_IN"),
        // Missing and extra arguments.
        ("MSG".into(), "MSG", "MISSING_ARGUMENT"),
        ("MSG bob".into(), "MSG", "MISSING_ARGUMENT"),
        ("MSG bad!name".into(), "MSG", "MISSING_ARGUMENT"),
        ("GROUP".into(), "GROUP", "MISSING_ARGUMENT"),
        ("GROUP bob,carol".into(), "GROUP", "MISSING_ARGUMENT"),
        ("ALL".into(), "ALL", "MISSING_ARGUMENT"),
        ("HISTORY".into(), "HISTORY", "MISSING_ARGUMENT"),
        ("FRIEND".into(), "FRIEND", "MISSING_ARGUMENT"),
        ("FRIEND ADD".into(), "FRIEND", "MISSING_ARGUMENT"),
        ("USERS now".into(), "USERS", "TOO_MANY_ARGUMENTS"),
        ("LOGOUT now".into(), "LOGOUT", "TOO_MANY_ARGUMENTS"),
        ("FRIEND LIST all".into(), "FRIEND", "TOO_MANY_ARGUMENTS"),
        (
            "FRIEND ADD bob carol".into(),
            "FRIEND",
            "TOO_MANY_ARGUMENTS",
        ),
        (
            "HISTORY bob 5 BEFORE 3 x".into(),
            "HISTORY",
            "TOO_MANY_ARGUMENTS",
        ),
        // Names.
        ("MSG bad!name hi".into(), "MSG", "BAD_NAME"),
        ("MSG 9lives hi".into(), "MSG", "BAD_NAME"),
        ("MSG nobody hi".into(), "MSG", "UNKNOWN_USER"),
        // Text: empty, blank, control characters, too long (bytes, not characters).
        // Only spaces after the name: no text at all (spec 2.6).
        ("MSG bob ".into(), "MSG", "MISSING_ARGUMENT"),
        ("MSG bob     ".into(), "MSG", "MISSING_ARGUMENT"),
        ("MSG bob \t ".into(), "MSG", "BAD_TEXT"),
        ("MSG bob a\u{1}b".into(), "MSG", "BAD_TEXT"),
        ("MSG bob a\u{7f}b".into(), "MSG", "BAD_TEXT"),
        (
            format!("MSG bob {}", "t".repeat(2049)),
            "MSG",
            "TEXT_TOO_LONG",
        ),
        (
            format!("MSG bob {}", "é".repeat(1025)),
            "MSG",
            "TEXT_TOO_LONG",
        ),
        ("ALL  ".into(), "ALL", "MISSING_ARGUMENT"),
        ("ALL \t".into(), "ALL", "BAD_TEXT"),
        (format!("ALL {}", "t".repeat(2049)), "ALL", "TEXT_TOO_LONG"),
        ("GROUP bob,carol  ".into(), "GROUP", "MISSING_ARGUMENT"),
        ("GROUP bob,carol \t".into(), "GROUP", "BAD_TEXT"),
        (
            format!("GROUP bob,carol {}", "t".repeat(2049)),
            "GROUP",
            "TEXT_TOO_LONG",
        ),
        // GROUP lists: repeated names in any case, too many, empty or invalid entries, unknown.
        ("GROUP bob,bob hi".into(), "GROUP", "DUPLICATE_NAME"),
        ("GROUP bob,carol,BOB hi".into(), "GROUP", "DUPLICATE_NAME"),
        (
            format!("GROUP {fifty_one} hi"),
            "GROUP",
            "TOO_MANY_RECIPIENTS",
        ),
        (format!("GROUP {fifty} hi"), "GROUP", "UNKNOWN_USER"),
        ("GROUP bob,,carol hi".into(), "GROUP", "BAD_NAME"),
        ("GROUP bob, hi".into(), "GROUP", "BAD_NAME"),
        ("GROUP bob,c@rol hi".into(), "GROUP", "BAD_NAME"),
        ("GROUP bob,nobody hi".into(), "GROUP", "UNKNOWN_USER"),
        // HISTORY arguments.
        ("HISTORY bob 0".into(), "HISTORY", "BAD_COUNT"),
        ("HISTORY bob 501".into(), "HISTORY", "BAD_COUNT"),
        ("HISTORY bob -1".into(), "HISTORY", "BAD_COUNT"),
        ("HISTORY bob ten".into(), "HISTORY", "BAD_COUNT"),
        ("HISTORY bob BEFORE x".into(), "HISTORY", "BAD_ID"),
        (
            "HISTORY bob 5 AFTER 18446744073709551616".into(),
            "HISTORY",
            "BAD_ID",
        ),
        ("HISTORY bob 5 SINCE 3".into(), "HISTORY", "BAD_ARGUMENT"),
        ("HISTORY bob BEFORE".into(), "HISTORY", "BAD_ARGUMENT"),
        ("HISTORY bad!name".into(), "HISTORY", "BAD_NAME"),
        ("HISTORY nobody".into(), "HISTORY", "UNKNOWN_USER"),
        // FRIEND.
        ("FRIEND POKE bob".into(), "FRIEND", "UNKNOWN_SUBCOMMAND"),
        ("FRIEND ADD ALICE".into(), "FRIEND", "SELF_TARGET"),
        ("FRIEND ADD nobody".into(), "FRIEND", "UNKNOWN_USER"),
        ("FRIEND ADD b!b".into(), "FRIEND", "BAD_NAME"),
        ("FRIEND ACCEPT bob".into(), "FRIEND", "NO_REQUEST"),
        ("FRIEND DENY bob".into(), "FRIEND", "NO_REQUEST"),
        ("FRIEND REMOVE bob".into(), "FRIEND", "NOT_FRIENDS"),
    ];
    for (line, command, code) in cases {
        c.expect_fail(line, command, code);
    }
    // Repeated requests.
    assert_eq!(c.call1("FRIEND ADD bob"), "OK FRIEND ADD bob REQUESTED");
    c.expect_fail("FRIEND ADD bob", "FRIEND", "ALREADY_REQUESTED");
    assert_eq!(bob.sync(), ["FRIENDSHIP alice REQUESTED"]);
    assert_eq!(bob.call1("FRIEND ACCEPT alice"), "OK FRIEND ACCEPT alice");
    assert_eq!(c.sync(), ["FRIENDSHIP bob ACCEPTED", "PRESENCE bob ONLINE"]);
    c.expect_fail("FRIEND ADD bob", "FRIEND", "ALREADY_FRIENDS");

    // Nothing refused reached anyone or was stored; the boundaries pass.
    carol.expect_quiet();
    assert_eq!(bob.sync(), ["PRESENCE alice ONLINE"]);
    let (lines, fin) = c.history("bob");
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(fin, "OK HISTORY bob 0 BEFORE - AFTER -");
    c.msg("bob", &"t".repeat(2048));
    c.msg("bob", &"é".repeat(1024));
    c.msg("bob", "tab\tinside");
    let texts: Vec<String> = bob
        .sync()
        .iter()
        .map(|l| parse_msg(l, "MESSAGE").text)
        .collect();
    assert_eq!(
        texts,
        ["t".repeat(2048), "é".repeat(1024), "tab\tinside".into()]
    );
    carol.expect_quiet();
}

#[test]
fn a_line_cut_off_by_a_disconnect_is_not_executed() {
    let server = Server::start();
    let mut bob = server.user("bob");
    let mut alice = server.user("alice");
    alice.send_raw(b"MSG bob complete\nMSG bob cut off in the mid");
    let got = bob.read_until(|l| l.starts_with("MESSAGE "));
    assert_eq!(parse_msg(&got[0], "MESSAGE").text, "complete");
    drop(alice);
    // Wait, bounded and with a round trip each time, for the server to see alice gone.
    let deadline = Instant::now() + TIMEOUT;
    while bob.call("USERS").contains(&"USER alice".to_owned()) {
        assert!(Instant::now() < deadline, "alice is still online");
    }
    let (lines, fin) = bob.history("alice");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(parse_msg(&lines[0], "HISTORY").text, "complete");
    assert_eq!(fin, "OK HISTORY alice 1 BEFORE - AFTER -");
    bob.expect_quiet();
}

#[test]
fn a_flood_from_one_client_does_not_stall_another() {
    // The line-rate limit would slow the flood to 200 lines/s; lift it so the server really gets
    // 20,000 lines as fast as the client can write them.
    let server = Server::start_with(&["--line-rate", "1000000", "--line-burst", "1000000"]);
    let mut quiet = server.user("quiet");
    let mut flood = server.connect();
    const LINES: usize = 20_000;
    let done = Arc::new(AtomicBool::new(false));

    let flood_done = done.clone();
    let flooder = std::thread::spawn(move || {
        let mut w = flood.writer();
        let writer = std::thread::spawn(move || {
            let mut all = String::with_capacity(LINES * 16);
            for i in 0..LINES {
                all.push_str(&format!("PING f{i}\n"));
            }
            w.write_all(all.as_bytes()).expect("writing the flood");
        });
        let start = Instant::now();
        for i in 0..LINES {
            assert_eq!(flood.read_line(), format!("PONG f{i}"));
            assert_eq!(flood.read_line(), "OK PING");
        }
        let took = start.elapsed();
        writer.join().unwrap();
        flood_done.store(true, Ordering::SeqCst);
        took
    });

    let mut worst = Duration::ZERO;
    let mut trips = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.load(Ordering::SeqCst) {
        let t = Instant::now();
        quiet.expect_quiet();
        worst = worst.max(t.elapsed());
        trips += 1;
        assert!(Instant::now() < deadline, "the flood did not finish");
        if flooder.is_finished() {
            break;
        }
    }
    let took = flooder.join().expect("the flooding client failed");
    println!(
        "flood: {LINES} lines answered in {took:?}; the other client made {trips} PING round \
         trips meanwhile, the worst took {worst:?}"
    );
    assert!(worst < Duration::from_secs(5), "worst round trip {worst:?}");
    assert_eq!(quiet.call("USERS"), ["USER quiet", "OK USERS 1"]);
}

#[test]
fn a_client_that_never_reads_is_disconnected_and_the_sender_is_unaffected() {
    let server = Server::start_with(&["--line-rate", "1000000", "--line-burst", "1000000"]);
    let mut bob = server.user("bob");
    let mut alice = server.user("alice");
    let text = "s".repeat(2000);
    let mut delivered = Vec::new();
    let mut kept = Vec::new();
    // Batches of 50, at most 5000 messages (10 MB): far more than the 1 MiB outbox and the socket
    // buffers hold. Once bob is gone, the messages are kept for his next login instead.
    let batch: String = format!("MSG bob {text}\n").repeat(50);
    for _ in 0..100 {
        alice.send_raw(batch.as_bytes());
        for _ in 0..50 {
            let reply = alice.read_line();
            let id = parse_ok_id(&reply, "MSG");
            match reply.rsplit(' ').next() {
                Some("DELIVERED") => delivered.push(id),
                Some("KEPT") => kept.push(id),
                _ => panic!("{reply}"),
            }
        }
        if !kept.is_empty() {
            break;
        }
    }
    assert!(!kept.is_empty(), "bob was never disconnected");
    // The sender noticed nothing but the change to KEPT.
    alice.expect_quiet();
    assert_eq!(alice.call("USERS"), ["USER alice", "OK USERS 1"]);

    // bob reads at last: a run of complete messages, in order, then BYE and the end.
    let lines = bob.read_to_close();
    let (bye, messages) = lines.split_last().expect("bob got nothing");
    assert!(
        bye.starts_with("BYE SLOW_CONSUMER "),
        "bob's last line: {}",
        clip(bye)
    );
    let got: Vec<u64> = messages
        .iter()
        .map(|l| {
            let m = parse_msg(l, "MESSAGE");
            assert_eq!(m.text, text);
            m.id
        })
        .collect();
    assert!(got.len() < delivered.len());
    assert_eq!(got, delivered[..got.len()]);
    println!(
        "slow reader: disconnected after {} messages of 2000 bytes were delivered to it ({} of \
         them reached it before BYE); {} later ones were kept",
        delivered.len(),
        got.len(),
        kept.len()
    );
    // What came after the disconnect waits for bob's next login.
    let mut bob = server.connect();
    let backlog = bob.login("bob");
    let (end, backlog) = backlog.split_last().unwrap();
    assert_eq!(end, &format!("BACKLOG-END {}", kept.len()));
    let ids: Vec<u64> = backlog.iter().map(|l| parse_msg(l, "MESSAGE").id).collect();
    assert_eq!(ids, kept);
    alice.expect_quiet();
}

/// The failure this guards against: clients that ask for a 1 MiB HISTORY page and do not read it
/// made the server queue each whole page on top of a nearly full outbox: 400 such connections took
/// it from 33 MB to over a gigabyte. Now a page goes out part by part as the client reads, so an
/// unread page costs the server about one part.
#[test]
fn unread_history_pages_do_not_grow_the_server() {
    const CLIENTS: usize = 40;
    let server = Server::start_with(&["--line-rate", "1000000", "--line-burst", "1000000"]);
    let mut alice = server.user("alice");
    let text = "h".repeat(2000);
    let batch: String = format!("ALL {text}\n").repeat(100);
    for _ in 0..5 {
        alice.send_raw(batch.as_bytes());
        for _ in 0..100 {
            assert!(alice.read_line().starts_with("OK ALL "));
        }
    }
    let mut readers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut c = server.connect();
            if i == 0 {
                c.register("bob");
            }
            c.login("bob");
            c
        })
        .collect();
    readers[0].sync();
    let before = server.status_kib("VmRSS");
    for r in readers.iter_mut() {
        r.send("HISTORY * 500");
    }
    // A barrier on another connection: every HISTORY above has been read by the server.
    alice.sync();
    let mut peak = before;
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        peak = peak.max(server.status_kib("VmRSS"));
    }
    let per = (peak.saturating_sub(before)) * 1024 / CLIENTS as u64;
    println!(
        "{CLIENTS} unread 1 MiB pages: RSS before {before} KiB, peak {peak} KiB, about {per} \
         bytes per connection"
    );
    // Whole pages would take 40 MiB, less what the network buffers hold.
    assert!(
        peak < before + 12 * 1024,
        "the server's RSS grew from {before} KiB to {peak} KiB"
    );
    // A reader that reads gets its whole page.
    let (lines, last) = readers[1].history_answer();
    assert_eq!(lines.len(), 500);
    assert_eq!(last, "OK HISTORY * 500 BEFORE - AFTER -");
}
