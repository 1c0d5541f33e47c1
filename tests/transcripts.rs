//! Snapshot transcripts: each file in tests/transcripts/ is a script of what several clients send;
//! it runs through the core without sockets (`chatd::sim`) and the full exchange, every line each
//! client sent and received, is compared with its snapshot in tests/snapshots/. With `CI=true` a
//! missing or changed snapshot fails the test.
//!
//! Script lines:
//! - `# text`: a comment, copied into the transcript;
//! - `a: connect-irc`: connects an IRC client (its lines go through the IRC front end, spec/IRC.md);
//! - `a: connect`, `a: disconnect`, `a: shutdown` (the whole server), `a: advance MS` (the clock);
//! - `a: restart`: the server stops as in a crash (jobs still queued are lost, every connection is
//!   gone) and starts again on what it committed; message ids go on above its reservation (spec
//!   6.2);
//! - `a: tick MS`: the clock moves MS forward and the server looks at it (idle connections);
//! - `a: connect-from IP`: connects from that address, which the limits per address count;
//! - `server: set LIMIT N`: changes one of the server's limits (`msgs-per-minute`,
//!   `stored-bytes-per-day`, `inbox-share`, `friend-requests-per-hour`, `hash-per-address`,
//!   `registrations-per-hour`; 0 lifts it), so that a transcript can show one rule at a time;
//! - `server: admin NAME`: the account NAME is one of the server's admins from now on;
//!   `server: registration closed` (or `open`): whether REGISTER is refused;
//!   `server: deliver-after-commit`: no message reaches a recipient before its commit from now on;
//! - `a> LINE`: client `a` sends LINE. In LINE, `{x*N}` stands for N copies of `x`, and `\xHH`
//!   for one raw byte;
//! - `a: raw TEXT`: sends TEXT with the same escapes and no LF added (`\n` for a newline);
//! - `a: repeat N LINE`: sends LINE N times and shows only a count of the replies by their first
//!   word;
//! - races, staged one job at a time: `a: queue LINE` hands LINE to the server without running the
//!   store or hash jobs it leads to, `a: drop` closes the connection the same way, and `a: step`
//!   runs the jobs queued so far once (the jobs they lead to stay queued; the next ordinary step runs
//!   everything).
//!
//! In what a client sends, `{token}` and `{token-id}` stand for the last device token the server
//! issued (`OK TOKEN <id> <token>`) and its id, so a script can use a token it was just given.
//!
//! After each step, every client's new output is shown as `a< LINE`, clients in name order.

use std::collections::BTreeMap;

use chatd::proto::server_line::{self, OkReply, ServerLine};
use chatd::proto::token::format_id;
use chatd::sim::Sim;

/// The last device token seen in any output: (id, token).
#[derive(Default)]
struct Issued(Option<(String, String)>);

impl Issued {
    fn note(&mut self, line: &str) {
        if let ServerLine::Ok {
            reply: OkReply::Token { id, token },
            ..
        } = server_line::parse(line)
        {
            self.0 = Some((format_id(id), token.to_owned()));
        }
    }

    fn fill(&self, s: &str) -> String {
        match &self.0 {
            Some((id, token)) => s.replace("{token-id}", id).replace("{token}", token),
            None => s.to_owned(),
        }
    }
}

fn expand(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{' {
            if let Some(end) = s[i..].find('}') {
                let inner = &s[i + 1..i + end];
                if let Some((what, n)) = inner.rsplit_once('*') {
                    if let Ok(n) = n.parse::<usize>() {
                        for _ in 0..n {
                            out.extend_from_slice(what.as_bytes());
                        }
                        i += end + 1;
                        continue;
                    }
                }
            }
        }
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' if i + 3 < b.len() => {
                    if let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn shown(line: &str) -> String {
    // Long lines are shortened in the transcript so snapshots stay readable.
    if line.len() > 120 {
        let cut = line
            .char_indices()
            .take_while(|(i, _)| *i < 100)
            .last()
            .map_or(0, |(i, c)| i + c.len_utf8());
        format!("{}...({} bytes)", &line[..cut], line.len())
    } else {
        line.to_owned()
    }
}

/// What a run of lines is folded by: a line's first word, or for an IRC line (`:source VERB` or
/// `@tags :source VERB`) its command.
fn kind(line: &str) -> &str {
    let mut words = line.split(' ');
    let mut w = words.next().unwrap_or("");
    if w.starts_with('@') {
        w = words.next().unwrap_or("");
    }
    if w.starts_with(':') {
        w = words.next().unwrap_or("");
    }
    w
}

fn collect(sim: &mut Sim, out: &mut String, issued: &mut Issued) {
    for c in sim.clients() {
        let text = sim.output(&c);
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines {
            issued.note(l);
        }
        // A long run of lines of one kind (a large backlog) shows its first and last two.
        let mut i = 0;
        while i < lines.len() {
            let word = kind(lines[i]);
            let run = lines[i..].iter().take_while(|l| kind(l) == word).count();
            if run > 6 {
                for l in &lines[i..i + 2] {
                    out.push_str(&format!("{c}< {}\n", shown(l)));
                }
                out.push_str(&format!("{c}< ... {} more {word} lines ...\n", run - 4));
                for l in &lines[i + run - 2..i + run] {
                    out.push_str(&format!("{c}< {}\n", shown(l)));
                }
            } else {
                for l in &lines[i..i + run] {
                    out.push_str(&format!("{c}< {}\n", shown(l)));
                }
            }
            i += run;
        }
    }
}

fn run(script: &str) -> String {
    let mut sim = Sim::new();
    let mut out = String::new();
    let mut issued = Issued::default();
    for raw in script.lines() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            out.push('\n');
            continue;
        }
        if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let who_len = line
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(line.len());
        let (who, after) = line.split_at(who_len);
        if let Some(rest) = after.strip_prefix('>') {
            let rest = issued.fill(rest.strip_prefix(' ').unwrap_or(rest));
            let rest = rest.as_str();
            out.push_str(&format!(
                "{who}> {}\n",
                shown(&String::from_utf8_lossy(&expand(rest)))
            ));
            let mut bytes = expand(rest);
            bytes.push(b'\n');
            sim.send_bytes(who, &bytes);
        } else if let Some(action) = after.strip_prefix(": ") {
            let action = issued.fill(action);
            let action = action.as_str();
            out.push_str(&format!("{who}: {}\n", shown(action)));
            let (verb, arg) = action.split_once(' ').unwrap_or((action, ""));
            match verb {
                "connect" => sim.connect(who),
                "connect-irc" => sim.connect_irc(who),
                "disconnect" => {
                    collect(&mut sim, &mut out, &mut issued);
                    sim.disconnect(who)
                }
                "shutdown" => sim.shutdown(),
                "advance" => sim.advance(arg.parse().expect("advance MS")),
                "tick" => sim.tick(arg.parse().expect("tick MS")),
                "connect-from" => sim.connect_from(who, arg),
                "set" => {
                    let (limit, n) = arg.split_once(' ').expect("set LIMIT N");
                    let n: u64 = n.parse().expect("set LIMIT N");
                    sim.set_limits(|l| match limit {
                        "msgs-per-minute" => l.msgs_per_minute = n,
                        "stored-bytes-per-day" => l.stored_bytes_per_day = n,
                        "inbox-share" => l.inbox_share = n as u32,
                        "friend-requests-per-hour" => l.friend_requests_per_hour = n,
                        "hash-per-address" => l.hash_per_address = n as usize,
                        "registrations-per-hour" => l.registrations_per_hour = n,
                        "max-compressed" => l.max_compressed = n as usize,
                        other => panic!("unknown limit {other:?}"),
                    });
                }
                "admin" => sim.set_policy(|p| {
                    p.admins.insert(chatd::proto::name::Key::of(arg));
                }),
                "registration" => sim.set_policy(|p| p.registration_closed = arg == "closed"),
                "deliver-after-commit" => sim.set_deliver_after_commit(true),
                "raw" => sim.send_bytes(who, &expand(arg)),
                "bad-deflate" => sim.bad_deflate(who),
                "compressed?" => {
                    collect(&mut sim, &mut out, &mut issued);
                    out.push_str(&format!("{who}: {}\n", sim.is_compressed(who)));
                }
                "queue" => sim.queue(who, arg),
                "drop" => {
                    collect(&mut sim, &mut out, &mut issued);
                    sim.drop_connection(who)
                }
                "step" => sim.step(),
                "restart" => {
                    collect(&mut sim, &mut out, &mut issued);
                    sim.restart()
                }
                "repeat" => {
                    let (n, cmd) = arg.split_once(' ').expect("repeat N LINE");
                    let n: usize = n.parse().expect("repeat count");
                    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                    for _ in 0..n {
                        let mut bytes = expand(cmd);
                        bytes.push(b'\n');
                        sim.send_bytes(who, &bytes);
                        for c in sim.clients() {
                            for l in sim.output(&c).lines() {
                                let word = l.split(' ').next().unwrap_or("").to_owned();
                                *counts.entry(format!("{c}< {word}")).or_default() += 1;
                            }
                        }
                    }
                    for (k, v) in counts {
                        out.push_str(&format!("{k} ... x{v}\n"));
                    }
                    continue;
                }
                other => panic!("unknown action {other:?} in {line:?}"),
            }
        } else {
            panic!("cannot read script line {line:?}");
        }
        collect(&mut sim, &mut out, &mut issued);
    }
    out
}

#[test]
fn transcripts() {
    insta::glob!("transcripts/*.txt", |path| {
        let script = std::fs::read_to_string(path).expect("reading a transcript");
        let transcript = run(&script);
        insta::with_settings!({
            // Message times are hidden, so a script can change without rewriting every line; other
            // times (a token's last use, expiry) are the point of the lines they are on and stay.
            filters => vec![
                (
                    r"((?:MESSAGE|HISTORY) \d+ )\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
                    "${1}[time]"
                ),
                (r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "time=[time]"),
            ],
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(transcript);
        });
    });
}
