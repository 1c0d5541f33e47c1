//! The IRC front end's conformance cases, as data: `conformance/irc/*.case`, run against the real
//! binary over TCP. Each case quotes the sentence of `spec/IRC.md` it checks (the quote must be found
//! there verbatim), and is a script of IRC connections and line-protocol connections:
//!
//! - `register NAME...`: registers accounts (with the tests' password) over the line protocol;
//! - `irc X` / `line X NAME`: opens an IRC connection `X`, or a line-protocol connection `X` logged
//!   in as NAME;
//! - `X> LINE`: sends LINE (CR LF added on IRC);
//! - `X< PATTERN`: the next line matches PATTERN (`*` stands for any run of characters);
//! - `X<~ PATTERN`: lines are skipped until one matches (within the timeout);
//! - `X login NAME`: CAP/SASL PLAIN/NICK/USER for NAME, read up to the end of the MOTD;
//! - `X closed`: the server closes the connection (after any lines not yet read).
//!
//! In every line `$NAME` becomes the case's own account name for NAME, so cases share one server.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

struct Case {
    title: String,
    quotes: Vec<String>,
    steps: Vec<String>,
}

fn cases() -> Vec<Case> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/irc");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("conformance/irc")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    files.sort();
    let mut out: Vec<Case> = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            if let Some(title) = line.strip_prefix("case ") {
                out.push(Case {
                    title: title.to_owned(),
                    quotes: Vec::new(),
                    steps: Vec::new(),
                });
            } else if let Some(q) = line.strip_prefix("# \"") {
                let case = out.last_mut().expect("a quote inside a case");
                case.quotes
                    .push(q.strip_suffix('"').expect("a closing quote").to_owned());
            } else if line.starts_with('#') || line.trim().is_empty() {
            } else {
                out.last_mut()
                    .expect("a step inside a case")
                    .steps
                    .push(line.to_owned());
            }
        }
    }
    out
}

/// True when `line` matches `pat`, where `*` is any run of characters.
fn glob(pat: &str, line: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    irc: bool,
}

impl Conn {
    fn open(addr: SocketAddr, irc: bool) -> Conn {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            irc,
        }
    }

    fn send(&mut self, line: &str) {
        let end = if self.irc { "\r\n" } else { "\n" };
        self.writer
            .write_all(format!("{line}{end}").as_bytes())
            .unwrap();
    }

    /// The next line, or None when the server closed the connection.
    fn next(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => None,
            Ok(_) => Some(l.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => panic!("no line within the timeout: {e}"),
        }
    }
}

/// `{c*N}` stands for N copies of c, and `\xHH` for the character HH.
fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    loop {
        let brace = rest.find('{');
        let esc = rest.find("\\x");
        match (brace, esc) {
            (Some(b), e) if e.is_none_or(|e| b < e) => {
                let Some(end) = rest[b..].find('}') else {
                    break;
                };
                let inner = &rest[b + 1..b + end];
                match inner
                    .rsplit_once('*')
                    .and_then(|(w, n)| Some((w, n.parse::<usize>().ok()?)))
                {
                    Some((w, n)) => {
                        out.push_str(&rest[..b]);
                        out.push_str(&w.repeat(n));
                    }
                    None => out.push_str(&rest[..b + end + 1]),
                }
                rest = &rest[b + end + 1..];
            }
            (_, Some(e)) => {
                out.push_str(&rest[..e]);
                let hex = rest.get(e + 2..e + 4).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(char::from(v));
                        rest = &rest[e + 4..];
                    }
                    Err(_) => {
                        out.push_str("\\x");
                        rest = &rest[e + 2..];
                    }
                }
            }
            _ => break,
        }
    }
    out.push_str(rest);
    out
}

fn run(case: &Case, n: usize, server: &Server, irc_addr: SocketAddr) -> Result<(), String> {
    let names = |s: &str| -> String {
        // $name -> name + the case number, so that cases do not share accounts.
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let word: String = rest[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            out.push_str(&format!("{word}{n}"));
            rest = &rest[i + 1 + word.len()..];
        }
        out.push_str(rest);
        expand(&out)
    };
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let mut log = Vec::new();
    for raw in &case.steps {
        let step = names(raw);
        log.push(step.clone());
        let fail = |log: &[String], why: String| {
            Err(format!("{why}\n  steps: {}", log.join("\n         ")))
        };
        let (who, rest) = step.split_at(step.find([' ', '<', '>']).unwrap_or(step.len()));
        match who {
            "register" => {
                for name in rest.split_whitespace() {
                    server.connect().register(name);
                }
                continue;
            }
            "irc" => {
                conns.insert(rest.trim().to_owned(), Conn::open(irc_addr, true));
                continue;
            }
            "line" => {
                let (x, name) = rest.trim().split_once(' ').expect("line X NAME");
                let mut c = Conn::open(server.addr(), false);
                c.next();
                c.send(&format!("LOGIN {name} {PASSWORD}"));
                // Bounded by the read timeout.
                while c.next().is_some_and(|l| !l.starts_with("BACKLOG-END")) {}
                conns.insert(x.to_owned(), c);
                continue;
            }
            _ => {}
        }
        let Some(c) = conns.get_mut(who) else {
            return fail(&log, format!("no connection {who}"));
        };
        if let Some(line) = rest.strip_prefix("> ") {
            c.send(line);
        } else if let Some(pat) = rest.strip_prefix("<~ ") {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match c.next() {
                    Some(l) if glob(pat, &l) => break,
                    Some(l) => log.push(format!("  (skipped) {l}")),
                    None => return fail(&log, format!("closed before {pat:?}")),
                }
                if Instant::now() > deadline {
                    return fail(&log, format!("no line matching {pat:?}"));
                }
            }
        } else if let Some(pat) = rest.strip_prefix("< ") {
            match c.next() {
                Some(l) if glob(pat, &l) => {}
                Some(l) => return fail(&log, format!("expected {pat:?}, got {l:?}")),
                None => return fail(&log, format!("closed before {pat:?}")),
            }
        } else if let Some(name) = rest.strip_prefix(" login ") {
            c.send("CAP LS 302");
            c.send(&format!("NICK {name}"));
            c.send(&format!("USER {name} 0 * :{name}"));
            c.send("CAP REQ :sasl");
            c.send("AUTHENTICATE PLAIN");
            c.send(&format!(
                "AUTHENTICATE {}",
                base64(format!("\0{name}\0{PASSWORD}").as_bytes())
            ));
            c.send("CAP END");
            // Bounded by the read timeout.
            loop {
                match c.next() {
                    Some(l) if l.contains(" 376 ") => break,
                    Some(_) => {}
                    None => return fail(&log, "closed during login".into()),
                }
            }
        } else if rest == " closed" {
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.next().is_some() {
                if Instant::now() > deadline {
                    return fail(&log, "not closed".into());
                }
            }
        } else {
            return fail(&log, format!("cannot read step {step:?}"));
        }
    }
    for c in conns.values_mut() {
        c.send("QUIT");
    }
    Ok(())
}

#[test]
fn irc_conformance_cases() {
    let spec =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/spec/IRC.md")).unwrap();
    let spec_flat = spec.split_whitespace().collect::<Vec<_>>().join(" ");
    let cases = cases();
    assert!(cases.len() >= 10, "only {} cases", cases.len());
    let server = Server::start_with(&["--irc-listen", "127.0.0.1:0"]);
    let irc_addr = {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let found = server.log().iter().find_map(|l| {
                l.split("listening on ")
                    .nth(1)?
                    .strip_suffix(" (IRC)")?
                    .trim()
                    .parse()
                    .ok()
            });
            if let Some(a) = found {
                break a;
            }
            assert!(Instant::now() < deadline, "no IRC listener");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut failed = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        assert!(
            !case.quotes.is_empty(),
            "case {:?} quotes nothing",
            case.title
        );
        for q in &case.quotes {
            let q = q.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                spec_flat.contains(&q),
                "case {:?}: not in spec/IRC.md: {q:?}",
                case.title
            );
        }
        match run(case, n, &server, irc_addr) {
            Ok(()) => eprintln!("PASS {}", case.title),
            Err(e) => {
                eprintln!("FAIL {}: {e}", case.title);
                failed.push(case.title.clone());
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}
