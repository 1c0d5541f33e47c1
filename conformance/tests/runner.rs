//! The runner's semantics, checked against a scripted stand-in server on 127.0.0.1.
//!
//! The stand-in greets, answers `PING` like chatd, registers and logs in anyone, and echoes the text
//! of `SAY <text>` back as a line of its own, so each case decides exactly which lines arrive and
//! when. That lets these tests show that expectations pass on what they should and fail, with the
//! right report, on what they should not.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use chatd_conformance::case::parse_file;
use chatd_conformance::{run, CaseResult, Options, Outcome};

fn serve(stream: TcpStream) {
    let mut out = stream.try_clone().expect("clone");
    let _ = out.write_all(b"HELLO chatd 0.0.0 stand-in server\n");
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let (cmd, rest) = line.split_once(' ').unwrap_or((&line, ""));
        let reply = match cmd {
            "PING" if rest.is_empty() => "PONG\nOK PING\n".to_string(),
            "PING" => format!("PONG {rest}\nOK PING\n"),
            "SAY" => format!("{rest}\n"),
            "REGISTER" => format!("OK REGISTER {}\n", rest.split(' ').next().unwrap_or("")),
            "LOGIN" => format!(
                "OK LOGIN {}\nBACKLOG-END 0\n",
                rest.split(' ').next().unwrap_or("")
            ),
            "QUIT" => {
                let _ = out.write_all(b"OK QUIT\n");
                return;
            }
            _ => format!("FAIL * UNKNOWN_COMMAND unknown command: {cmd}\n"),
        };
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn stand_in() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

fn run_text(text: &str) -> Vec<CaseResult> {
    let cases = parse_file(Path::new("inline.case"), text).expect("cases parse");
    let mut opts = Options::new(stand_in());
    opts.timeout = Duration::from_millis(500);
    opts.run_id = Some("t00000".into());
    opts.check_grammar = false;
    run(&cases, &opts, |_| {})
}

fn one(text: &str) -> Outcome {
    let mut rs = run_text(text);
    assert_eq!(rs.len(), 1);
    rs.remove(0).outcome
}

fn passes(body: &str) {
    let text = format!("case 1 c\n# \"q\"\n{body}");
    match one(&text) {
        Outcome::Pass => {}
        other => panic!("expected a pass for\n{body}\ngot {other:?}"),
    }
}

/// Runs a case that must fail; returns (expected, received) of the failure.
fn fails(body: &str) -> (String, Vec<String>) {
    let text = format!("case 1 c\n# \"q\"\n{body}");
    match one(&text) {
        Outcome::Fail(f) => (f.expected, f.received),
        other => panic!("expected a failure for\n{body}\ngot {other:?}"),
    }
}

#[test]
fn greeting_signup_and_ordered_expectations() {
    passes(
        "connect a\n\
         a signup $a\n\
         a> SAY first\n\
         a> SAY second\n\
         a< first\n\
         a< second\n",
    );
    let (exp, got) = fails("connect a\na> SAY first\na> SAY second\na< second\n");
    assert_eq!(exp, "second");
    assert_eq!(got, ["first"]);
}

#[test]
fn names_expand_per_run_and_case() {
    passes("connect a\na> SAY user $a\na< user Ct0000022_a\n");
    passes("connect a\na> SAY $a:lower $a:upper\na< ct0000022_a CT0000022_A\n");
}

#[test]
fn somewhere_takes_lines_in_any_order_and_keeps_the_rest() {
    passes(
        "connect a\n\
         a> SAY one\n\
         a> SAY two\n\
         a<? two\n\
         a< one\n",
    );
    passes("connect a\na> SAY 3\na> SAY 1\na> SAY 2\na<?3 {i}\na quiet\n");
    let (exp, got) = fails("connect a\na> SAY one\na<? two\n");
    assert_eq!(exp, "some line two");
    assert_eq!(got, ["one", "(nothing: timed out)"]);
}

#[test]
fn sync_collects_lines_for_later_expectations() {
    passes(
        "connect a b\n\
         a> SAY pushed\n\
         b> SAY other\n\
         sync\n\
         a< pushed\n\
         b< other\n\
         a quiet\n",
    );
}

#[test]
fn absent_and_quiet_sync_first() {
    passes("connect a\na> SAY noise\na<! signal\na< noise\n");
    let (exp, got) = fails("connect a\na> SAY signal\na<! signal\n");
    assert_eq!(exp, "no line signal");
    assert_eq!(got, ["signal"]);
    let (exp, got) = fails("connect a\na> SAY stray\na quiet\n");
    assert_eq!(exp, "no line at all");
    assert_eq!(got, ["stray"]);
}

#[test]
fn captures_bind_compare_and_send() {
    passes(
        "connect a\n\
         a> SAY OK MSG 41 KEPT\n\
         a< OK MSG {id} KEPT\n\
         a> SAY again {id} then {id+1}\n\
         a< again {id} then 42\n",
    );
    let (exp, got) = fails("connect a\na> SAY 7 8\na< {x} {x}\n");
    assert_eq!(exp, "{x} {x}");
    assert_eq!(got, ["7 8"]);
}

#[test]
fn skip_allows_noise_before_the_next_expectation_only() {
    passes(
        "connect a\n\
         a> SAY PRESENCE x ONLINE\n\
         a> SAY PRESENCE y ONLINE\n\
         a> SAY OK DONE\n\
         a<* PRESENCE <word> ONLINE\n\
         a< OK DONE\n",
    );
    let (_, got) =
        fails("connect a\na> SAY FRIENDSHIP x\na> SAY OK DONE\na<* PRESENCE <text>\na< OK DONE\n");
    assert_eq!(got, ["FRIENDSHIP x"]);
}

#[test]
fn repeated_sends_and_expectations_count_with_i() {
    passes("connect a\na>3 SAY line {i}\na<3 line {i}\n");
    let (exp, got) = fails("connect a\na>2 SAY line 1\na<2 line {i}\n");
    assert_eq!(exp, "line 2");
    assert_eq!(got, ["line 1"]);
}

#[test]
fn raw_sends_and_close() {
    passes(
        "connect a\n\
         a>> SAY x\\nSAY y\\n\n\
         a< x\n\
         a< y\n\
         a> QUIT\n\
         a< OK QUIT\n\
         a expects close\n",
    );
    let (exp, got) = fails("connect a\na> SAY late\na expects close\n");
    assert_eq!(exp, "the server to close the connection");
    assert_eq!(got, ["late"]);
}

#[test]
fn wrong_greeting_and_refused_connections_fail() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"BYE SERVER_FULL too many connections\n");
        }
    });
    let cases = parse_file(Path::new("inline.case"), "case 1 c\n# \"q\"\nconnect a\n").unwrap();
    let mut opts = Options::new(addr);
    opts.timeout = Duration::from_millis(500);
    opts.check_grammar = false;
    let rs = run(&cases, &opts, |_| {});
    let Outcome::Fail(f) = &rs[0].outcome else {
        panic!("a BYE instead of HELLO must fail the greeting");
    };
    assert_eq!(f.received, ["BYE SERVER_FULL too many connections"]);
}

#[test]
fn filter_and_requirements() {
    let text = "case 1 alpha\n# \"q\"\nconnect a\n\
                case 2 beta\n# \"q\"\nrequires max-connections\nsaturate z\nz< BYE <text>\n";
    let cases = parse_file(Path::new("inline.case"), text).unwrap();
    let mut opts = Options::new(stand_in());
    opts.filter = Some("beta".into());
    opts.check_grammar = false;
    let rs = run(&cases, &opts, |_| {});
    assert_eq!(rs.len(), 1);
    assert!(matches!(rs[0].outcome, Outcome::Skip(_)));
}

#[test]
fn any_finds_a_line_on_one_of_several_clients() {
    passes("connect a b c\nb> SAY wanted\nany a,b,c< wanted\nb quiet\n");
    let (exp, got) = fails("connect a b\na> SAY other\nany a,b< wanted\n");
    assert_eq!(exp, "on one of a,b: wanted");
    assert_eq!(got, ["a< other"]);
}

#[test]
fn captures_of_times_and_words() {
    passes(
        "connect a\n\
         a> SAY at 2026-11-21T02:12:12.345Z by bob\n\
         a< at {t:time} by {who:word}\n\
         a> SAY {who} {t}\n\
         a< bob 2026-11-21T02:12:12.345Z\n",
    );
}

#[test]
fn a_malformed_server_line_fails_the_case_when_grammar_is_checked() {
    let text = "case 1 c\n# \"q\"\nconnect a\na> SAY OK MSG 41 KEPT\na< OK MSG 41 KEPT\na> SAY not a server line\na< not a server line\n";
    let cases = parse_file(Path::new("inline.case"), text).expect("cases parse");
    let mut opts = Options::new(stand_in());
    opts.timeout = Duration::from_millis(500);
    opts.run_id = Some("t00000".into());
    let mut rs = run(&cases, &opts, |_| {});
    match rs.remove(0).outcome {
        Outcome::Fail(f) => {
            assert_eq!(f.expected, "a: only well-formed server lines (spec 2.9)");
            assert_eq!(f.received, ["not a server line"]);
            assert_eq!(f.step, "a< not a server line");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}
