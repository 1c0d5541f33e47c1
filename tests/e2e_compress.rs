//! COMPRESS DEFLATE against the real binary: the bundled client's `--compress` through TLS; what a
//! compressed connection puts on the wire (the same lines, in fewer bytes); and a decompression
//! bomb, which the server inflates a chunk at a time into its bounded line decoder, so that a few
//! kilobytes standing for hundreds of megabytes cost it no memory.

mod client_support;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chatd::proto::deflate::{Deflater, Inflater};
use chatd::tls::generate_self_signed;

/// A client speaking DEFLATE over plain TCP by hand, counting the bytes on the wire.
struct Compressed {
    sock: TcpStream,
    out: Deflater,
    inflate: Inflater,
    /// Inflated bytes not yet taken as lines.
    plain: Vec<u8>,
    /// Bytes read from the socket since the switch.
    wire_in: usize,
}

impl Compressed {
    /// Connects, reads HELLO, asks for COMPRESS DEFLATE and switches on its OK.
    fn connect(addr: std::net::SocketAddr) -> Compressed {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        sock.write_all(b"COMPRESS DEFLATE\n").unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        // Byte by byte up to the OK's LF: nothing of the compressed stream is read as text.
        while !got.ends_with(b"OK COMPRESS DEFLATE\n") {
            assert_eq!(sock.read(&mut b).unwrap(), 1, "closed early: {got:?}");
            got.push(b[0]);
        }
        assert!(got.starts_with(b"HELLO chatd "), "{got:?}");
        Compressed {
            sock,
            out: Deflater::new(),
            inflate: Inflater::new(),
            plain: Vec::new(),
            wire_in: 0,
        }
    }

    fn send(&mut self, line: &str) {
        let mut wire = Vec::new();
        self.out.write(format!("{line}\n").as_bytes(), &mut wire);
        self.sock.write_all(&wire).unwrap();
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.plain.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.plain.drain(..=i).collect();
                return String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
            }
            let mut raw = [0u8; 4096];
            let n = self.sock.read(&mut raw).unwrap();
            assert!(n > 0, "the server closed the connection");
            self.wire_in += n;
            let mut input = &raw[..n];
            let mut out = [0u8; 16 * 1024];
            loop {
                let done = self.inflate.inflate(input, &mut out);
                assert!(!done.bad, "the server's stream does not inflate");
                self.plain.extend_from_slice(&out[..done.made]);
                input = &input[done.taken..];
                if input.is_empty() && done.made < out.len() {
                    break;
                }
            }
        }
    }

    /// Lines up to and including the first final line.
    fn answer(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let done = common::is_final(&l);
            lines.push(l);
            if done {
                return lines;
            }
        }
    }
}

#[test]
fn the_bundled_client_compresses_through_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = generate_self_signed(dir.path()).unwrap();
    let server = client_support::Server::start(dir.path(), Some(&files));
    let mut bob = client_support::Peer::login(server.plain, "bob", "bobsecret1");
    let tls = server.tls.unwrap().to_string();
    let ca = files.cert.to_str().unwrap();

    let run = client_support::client(
        &tls,
        &["--ca", ca, "--compress"],
        "/register alice wonderland1\n/login alice wonderland1\n/msg bob squeezed through TLS\n\
         //HISTORY bob\n",
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert_eq!(run.stderr, "", "the server accepted COMPRESS");
    let out: Vec<&str> = run.stdout.lines().collect();
    assert!(out[0].starts_with("HELLO chatd "), "{out:?}");
    assert_eq!(
        out[1..4],
        ["OK REGISTER alice", "OK LOGIN alice", "BACKLOG-END 0"]
    );
    assert_eq!(out[4], "OK MSG 1 DELIVERED");
    assert!(
        out[5].starts_with("HISTORY 1 ") && out[5].ends_with(" alice bob squeezed through TLS")
    );
    assert_eq!(out[6], "OK HISTORY bob 1 BEFORE - AFTER -");
    assert_eq!(out.len(), 7, "{out:?}");
    let m = bob.expect(|l| l.starts_with("MESSAGE 1 "));
    assert!(m.ends_with(" alice bob squeezed through TLS"), "{m}");

    // A server with compression turned off: the client says so and goes on uncompressed.
    drop(bob);
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start_with(&["--max-compressed", "0"]);
    let run = client_support::client(
        &server.addr().to_string(),
        &["--compress"],
        "//PING plain\n",
    );
    assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("did not compress this connection")
            && run.stderr.contains("compression is turned off"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("PONG plain\nOK PING\n"),
        "{}",
        run.stdout
    );
    drop(dir);
}

/// The same HISTORY page, read uncompressed and compressed: the same lines, in far fewer bytes on
/// the wire.
#[test]
fn a_compressed_history_page_is_the_same_lines_in_fewer_bytes() {
    let server = common::Server::start();
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    for i in 0..300 {
        alice.msg(
            "bob",
            &format!("message {i}: are we still on for lunch at noon tomorrow?"),
        );
    }
    for _ in 0..300 {
        assert!(bob.read_line().starts_with("MESSAGE "));
    }
    let (plain_lines, plain_ok) = bob.history("alice 300");
    let plain_bytes: usize =
        plain_lines.iter().map(|l| l.len() + 1).sum::<usize>() + plain_ok.len() + 1;

    let mut z = Compressed::connect(server.addr());
    z.send(&format!("LOGIN bob {}", common::PASSWORD));
    assert_eq!(z.answer(), ["OK LOGIN bob"]);
    assert_eq!(z.line(), "BACKLOG-END 0");
    let before = z.wire_in;
    z.send("HISTORY alice 300");
    let answer = z.answer();
    let wire = z.wire_in - before;
    assert_eq!(answer.len(), 301);
    assert_eq!(answer[..300], plain_lines[..]);
    assert_eq!(answer[300], plain_ok);
    assert!(
        wire * 4 < plain_bytes,
        "{wire} bytes on the wire for {plain_bytes} bytes of lines"
    );

    // Pushes to a compressed connection are compressed too, and it still sends.
    alice.msg("bob", "one more");
    let m = z.line();
    assert!(
        m.starts_with("MESSAGE ") && m.ends_with(" alice bob one more"),
        "{m}"
    );
    z.send("MSG alice got it");
    let ok = z.answer();
    assert!(
        ok[0].starts_with("OK MSG ") && ok[0].ends_with(" DELIVERED"),
        "{ok:?}"
    );
    let back = alice.read_line();
    assert!(back.ends_with(" bob alice got it"), "{back}");
}

/// 100 MiB of one line, compressed to about 100 KiB: the server discards it as it streams in
/// (LINE_TOO_LONG) and reads the next line, and its memory does not grow with what the bytes stand
/// for. Then a stream that is not DEFLATE: BYE BAD_DEFLATE, compressed, and the connection closes.
#[test]
fn a_decompression_bomb_costs_the_server_nothing_and_a_bad_stream_is_told_bye() {
    let server = common::Server::start();
    let mut z = Compressed::connect(server.addr());
    z.send("PING warm");
    assert_eq!(z.answer(), ["PONG warm", "OK PING"]);
    let rss_before = server.status_kib("VmRSS");

    let mut bomb = Vec::new();
    let mut d = Deflater::new();
    let mib = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        d.write(&mib, &mut bomb);
    }
    d.write(b"\nPING after\n", &mut bomb);
    assert!(bomb.len() < 200 * 1024, "{} bytes", bomb.len());
    z.out = d;
    z.sock.write_all(&bomb).unwrap();
    let start = Instant::now();
    let answers = [z.answer(), z.answer()];
    assert!(
        answers[0][0].starts_with("FAIL * LINE_TOO_LONG"),
        "{answers:?}"
    );
    assert_eq!(answers[1], ["PONG after", "OK PING"]);
    let rss_after = server.status_kib("VmRSS");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "the server grew from {rss_before} KiB to {rss_after} KiB (in {:?})",
        start.elapsed()
    );

    z.sock.write_all(&[0xff, 0xff, b'P', b'\n']).unwrap();
    let bye = z.line();
    assert!(bye.starts_with("BYE BAD_DEFLATE "), "{bye}");
    let mut rest = Vec::new();
    z.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = z.sock.read_to_end(&mut rest);
    let mut out = [0u8; 1024];
    let done = z.inflate.inflate(&rest, &mut out);
    assert_eq!(done.made, 0, "nothing after the BYE");
    // The server goes on serving others.
    let mut other = server.connect();
    assert_eq!(other.call("PING still"), ["PONG still", "OK PING"]);
}
