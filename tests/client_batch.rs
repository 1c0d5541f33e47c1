//! The non-interactive client (`chatd --connect` with stdin not a terminal) against a real server:
//! server lines reach stdout unchanged, the end-of-input barrier stays invisible, TLS verifies the
//! server's generated certificate, and each documented exit status happens when it should.

mod client_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread;

use chatd::tls::generate_self_signed;
use client_support::{client, run_chatd, Peer, Server};

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn server_lines_reach_stdout_as_sent_and_the_barrier_stays_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let mut bob = Peer::login(server.plain, "bob", "bobsecret1");

    let run = client(
        &server.plain.to_string(),
        &[],
        "/register alice wonderland1\n/login alice wonderland1\n/msg bob hello  there\n\
         and a plain line\n/users\n//PING x\n",
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "");
    let out = lines(&run.stdout);
    assert!(out[0].starts_with("HELLO chatd "), "{out:?}");
    assert_eq!(
        out[1..],
        [
            "OK REGISTER alice",
            "OK LOGIN alice",
            "BACKLOG-END 0",
            "OK MSG 1 DELIVERED",
            "OK MSG 2 DELIVERED",
            "USER alice",
            "USER bob",
            "OK USERS 2",
            "PONG x",
            "OK PING",
        ]
    );
    assert!(!run.stdout.contains("client.end"));

    // The text kept its two spaces; the plain line went to the last person messaged.
    let first = bob.expect(|l| l.starts_with("MESSAGE 1 "));
    assert!(first.ends_with(" alice bob hello  there"), "{first}");
    let second = bob.expect(|l| l.starts_with("MESSAGE 2 "));
    assert!(second.ends_with(" alice bob and a plain line"), "{second}");
}

#[test]
fn tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _fingerprint) = generate_self_signed(dir.path()).unwrap();
    let server = Server::start(dir.path(), Some(&files));
    let tls = server.tls.unwrap();
    let ca = files.cert.to_str().unwrap();

    // By IP address and by name: the certificate names both.
    for (i, addr) in [tls.to_string(), format!("localhost:{}", tls.port())]
        .iter()
        .enumerate()
    {
        let run = client(
            addr,
            &["--tls", "--ca", ca],
            &format!("/register carol{i} wonderland1\n//PING tls\n"),
        );
        assert_eq!(run.code(), 0, "{addr}: {}", run.stderr);
        assert!(
            run.stdout.contains("PONG tls\nOK PING\n"),
            "{addr}: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains(&format!("OK REGISTER carol{i}\n")),
            "{}",
            run.stdout
        );
    }

    // --ca alone implies --tls.
    let run = client(&tls.to_string(), &["--ca", ca], "//PING implied\n");
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(run.stdout.contains("PONG implied"));

    // The system roots do not know a self-signed certificate.
    let run = client(&tls.to_string(), &["--tls"], "//PING x\n");
    assert_eq!(run.code(), 1, "{}", run.stdout);
    assert!(run.stderr.contains("could not connect"), "{}", run.stderr);
    assert!(run.stderr.contains("certificate"), "{}", run.stderr);

    // Nor does another self-signed certificate.
    let other = tempfile::tempdir().unwrap();
    let (other_files, _) = generate_self_signed(other.path()).unwrap();
    let run = client(
        &tls.to_string(),
        &["--ca", other_files.cert.to_str().unwrap()],
        "//PING x\n",
    );
    assert_eq!(run.code(), 1, "{}", run.stdout);

    // --insecure connects, and says what it gives up.
    let run = client(&tls.to_string(), &["--insecure"], "//PING risky\n");
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(run.stdout.contains("PONG risky"));
    assert!(run.stderr.contains("warning: --insecure"), "{}", run.stderr);

    // Plain TCP to the TLS port: the handshake fails and no greeting ever comes.
    let run = client(&tls.to_string(), &[], "//PING x\n");
    assert_eq!(run.code(), 1, "{}", run.stdout);
    assert!(run.stderr.contains("without a greeting"), "{}", run.stderr);
}

#[test]
fn exit_status_for_each_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let addr = server.plain.to_string();

    // 0: QUIT answered, then the server closes.
    let run = client(&addr, &[], "/quit bye now\n");
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert!(run.stdout.ends_with("OK QUIT\n"), "{}", run.stdout);

    // 2: a LOGIN failed.
    let run = client(&addr, &[], "/login nobody wonderland1\n//PING x\n");
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(run
        .stdout
        .contains("FAIL LOGIN BAD_CREDENTIALS wrong name or password\n"));

    // 4: a line the client does not understand is not sent.
    let run = client(
        &addr,
        &[],
        "/msg bob\n/nonsense\nno one to answer\n//PING x\n",
    );
    assert_eq!(run.code(), 4, "{}", run.stderr);
    assert!(run
        .stderr
        .contains("input line 1 not sent: usage: /msg <name> <text>"));
    assert!(run
        .stderr
        .contains("input line 2 not sent: unknown command /nonsense"));
    assert!(run
        .stderr
        .contains("input line 3 not sent: nobody to answer yet"));
    assert!(run.stdout.contains("PONG x"));

    // 1: nothing listens there.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = client(&closed.to_string(), &[], "");
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("could not connect"), "{}", run.stderr);

    // 1: a bad address, a missing CA file, contradictory options.
    let run = client("no-port-here", &[], "");
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("not HOST:PORT"), "{}", run.stderr);
    let run = client(&addr, &["--ca", "/nonexistent/ca.pem"], "");
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("/nonexistent/ca.pem"), "{}", run.stderr);
    let run = client(&addr, &["--ca", "/nonexistent/ca.pem", "--insecure"], "");
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("contradict"), "{}", run.stderr);
}

/// A listener that greets (or not), reads one line, and hangs up.
fn hang_up_after_one_line(greet: bool) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        if !greet {
            let _ = s.write_all(b"BYE SERVER_FULL too many connections\n");
            return;
        }
        s.write_all(b"HELLO chatd 0.0.0 test\n").unwrap();
        let mut line = String::new();
        let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
    });
    addr
}

#[test]
fn a_lost_connection_and_a_refusal_have_their_own_status() {
    // 3: the server went away with a command unanswered.
    let addr = hang_up_after_one_line(true);
    let run = client(&addr.to_string(), &[], "/users\n");
    assert_eq!(run.code(), 3, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("closed the connection with 1 command unanswered"),
        "{}",
        run.stderr
    );

    // 1: turned away before any greeting (e.g. BYE SERVER_FULL).
    let addr = hang_up_after_one_line(false);
    let run = client(&addr.to_string(), &[], "/users\n");
    assert_eq!(run.code(), 1, "{}", run.stderr);
    assert!(run.stdout.contains("BYE SERVER_FULL"), "{}", run.stdout);
    assert!(run.stderr.contains("without a greeting"), "{}", run.stderr);
}

#[test]
fn help_documents_the_exit_statuses() {
    let run = run_chatd(&["--help"], "");
    assert_eq!(run.code(), 0);
    for code in [
        chatd::client::EXIT_OK,
        chatd::client::EXIT_NO_CONNECTION,
        chatd::client::EXIT_AUTH_FAILED,
        chatd::client::EXIT_CONNECTION_LOST,
        chatd::client::EXIT_BAD_INPUT,
    ] {
        assert!(
            run.stdout.contains(&format!("\n  {code} ")),
            "exit status {code} missing from --help:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("--connect"));
}

#[test]
fn room_commands_go_to_the_room_joined() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    let mut bob = Peer::login(server.plain, "bob", "bobsecret1");
    assert_eq!(bob.command("JOIN #lobby"), "OK JOIN #lobby CREATED");

    let run = client(
        &server.plain.to_string(),
        &[],
        "/register carol wonderland1\n/login carol wonderland1\n/join #LOBBY\n\
         hello lobby\n/members\n/topic mine now\n/part #lobby see you\n",
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    let out = lines(&run.stdout);
    let id = out
        .iter()
        .find_map(|l| l.strip_prefix("OK MSG "))
        .and_then(|r| r.strip_suffix(" DELIVERED 1"))
        .unwrap_or_else(|| panic!("no room OK in {out:?}"));
    assert_eq!(
        out[1..],
        [
            "OK REGISTER carol",
            "OK LOGIN carol",
            "BACKLOG-END 0",
            "ROOM #lobby PUBLIC 2 MEMBER 0",
            "OK JOIN #lobby JOINED",
            &format!("OK MSG {id} DELIVERED 1"),
            "MEMBER #lobby bob OWNER ONLINE",
            "MEMBER #lobby carol MEMBER ONLINE",
            "OK MEMBERS #lobby 2",
            "FAIL TOPIC NOT_ALLOWED only an op or owner of #lobby may do that",
            "OK PART #lobby LEFT",
        ]
    );
    assert_eq!(bob.line(), "JOINED #lobby carol");
    let got = bob.expect(|l| l.starts_with("MESSAGE "));
    assert!(got.ends_with(" carol #lobby hello lobby"), "{got}");
    assert_eq!(bob.line(), "PARTED #lobby carol see you");
}
