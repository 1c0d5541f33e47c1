//! The case file format: parsing `cases/*.case` into [`Case`]s made of [`Step`]s.
//!
//! The format is documented for case authors in `conformance/README.md`; in short:
//!
//! ```text
//! case 4.7 two connections of one account both receive
//! # "One account may be logged in on several connections at once; each receives the account's messages."
//! connect a1 a2 b
//! a1 signup $a
//! a2> LOGIN $a $pw
//! a2< OK LOGIN $a
//! a2< BACKLOG-END 0
//! b signup $b
//! b> MSG $a hi
//! b< OK MSG {id} DELIVERED
//! a1< MESSAGE {id} <time> $b $a hi
//! a2< MESSAGE {id} <time> $b $a hi
//! ```
//!
//! Everything a case refers to is checked here, when the file is loaded: template syntax, client
//! names (a step may only use a client that is open), a skip (`<*`) followed by the expectation it
//! belongs to, and the spec quote every case must carry.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::template::{Mode, Template};

/// A run-time setting a case needs; cases whose requirement is not met are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// The server's connection limit must be given (`--max-connections`).
    MaxConnections,
    /// The server must hash slowly with at most three hashes running or waiting
    /// (`--busy-hashing`), so that a burst of logins finds the hash queue full.
    BusyHashing,
    /// The server's room size limit must be exactly this (`--max-room-members N`), so that a case
    /// can fill a room.
    MaxRoomMembers(usize),
    /// The server's limit of connections per address must be given (`--max-per-address`).
    MaxPerAddress,
    /// The server's idle timeout must be given, and short enough for the suite to wait for it
    /// (`--idle-timeout`).
    IdleTimeout,
    /// The server applies its default limits per address to the suite's address
    /// (`--rate-limits`), so that a few failed logins make it back off.
    RateLimits,
    /// The server's quotas per account are small and known (`--small-quotas`): 60 messages a
    /// minute, 16 KiB stored a day, a share of 5 in an offline inbox, 2 friend requests an hour.
    SmallQuotas,
    /// An admin account of the server is given (`--admin NAME:PASSWORD`); enables the operator
    /// commands' cases.
    Admin,
    /// The suite may send what reaches every user online, `ALL` and `ANNOUNCE` (`--broadcast`):
    /// on a shared server, only when its users expect it.
    Broadcast,
    /// The server's registration is closed (`--registration-closed`); needs an admin too.
    RegistrationClosed,
}

impl Requirement {
    /// The name a case file uses after `requires` (without a value).
    pub fn name(self) -> &'static str {
        match self {
            Requirement::MaxConnections => "max-connections",
            Requirement::BusyHashing => "busy-hashing",
            Requirement::MaxRoomMembers(_) => "max-room-members",
            Requirement::MaxPerAddress => "max-per-address",
            Requirement::IdleTimeout => "idle-timeout",
            Requirement::RateLimits => "rate-limits",
            Requirement::SmallQuotas => "small-quotas",
            Requirement::Admin => "admin",
            Requirement::Broadcast => "broadcast",
            Requirement::RegistrationClosed => "registration-closed",
        }
    }
}

/// One step of a case.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Open a connection per client; with `greet`, expect the `HELLO` line on each.
    Connect { clients: Vec<String>, greet: bool },
    /// Send the template `repeat` times in one write, each followed by LF unless `raw`; `raw`
    /// bytes also go out uncompressed on a compressed connection.
    Send {
        client: String,
        repeat: usize,
        raw: bool,
        tpl: Template,
    },
    /// The next `count` lines must each match (after any lines a preceding skip allows).
    Expect {
        client: String,
        count: usize,
        pat: Template,
    },
    /// `count` lines, in whatever order they arrive, must match (one line each).
    ExpectSomewhere {
        client: String,
        count: usize,
        pat: Template,
    },
    /// Lines matching this may come before the client's next `<` expectation.
    Skip { client: String, pat: Template },
    /// After a sync of each client, a line collected on any one of them matches.
    ExpectAny { clients: Vec<String>, pat: Template },
    /// After a sync, no collected line matches.
    ExpectAbsent { client: String, pat: Template },
    /// After a sync, no line was collected at all.
    Quiet { client: String },
    /// Barrier: `PING` each client and read up to its `OK PING`, keeping the lines before it.
    Sync { clients: Vec<String> },
    /// Close the client's connection.
    Close { client: String },
    /// The server must close the connection with no further line.
    ExpectClose { client: String },
    /// From now on the client's connection is compressed both ways (after `OK COMPRESS DEFLATE`).
    Deflate { client: String },
    /// Register a fresh account and log in with it, expecting an empty backlog.
    Signup { client: String, account: Template },
    /// Log in as the server's admin (`--admin`) and read up to the end of the login's backlog.
    Admin { client: String },
    /// Open connections until the server refuses one; the refused connection becomes `client`.
    Saturate { client: String },
}

/// A step and where it came from.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based line in the case file.
    pub line: usize,
    /// The step as written.
    pub text: String,
    /// What the step does.
    pub kind: StepKind,
}

/// One conformance case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The spec section it checks, e.g. `4.7`.
    pub section: String,
    /// A short description, unique in the suite.
    pub name: String,
    /// The case file.
    pub file: PathBuf,
    /// Line of the `case` header.
    pub line: usize,
    /// The spec sentences the case checks (comment lines starting with `# "`).
    pub quotes: Vec<String>,
    /// Settings the case needs.
    pub requires: Vec<Requirement>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Case {
    /// `section name`, what `--filter` matches against and what reports show.
    pub fn title(&self) -> String {
        format!("{} {}", self.section, self.name)
    }
}

/// A problem in a case file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.msg)
    }
}

impl std::error::Error for ParseError {}

fn is_client(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn is_section(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

struct CaseBuilder {
    case: Case,
    open: BTreeSet<String>,
    pending_skip: HashSet<String>,
}

/// Parses the text of one case file.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<Case>, ParseError> {
    let mut cases = Vec::new();
    let mut cur: Option<CaseBuilder> = None;
    for (idx, raw_line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let err = |msg: String| ParseError {
            file: file.to_path_buf(),
            line: line_no,
            msg,
        };
        let line = raw_line.trim_start();
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if comment.starts_with('"') {
                match cur.as_mut() {
                    Some(b) => b.case.quotes.push(comment.to_string()),
                    None => return Err(err("a spec quote outside a case".into())),
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("case ") {
            if let Some(b) = cur.take() {
                cases.push(finish(file, b)?);
            }
            let rest = rest.trim();
            let (section, name) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_section(section) {
                return Err(err(format!(
                    "`case` needs a section number first, got {section:?}"
                )));
            }
            if name.trim().is_empty() {
                return Err(err("`case` needs a name after the section".into()));
            }
            cur = Some(CaseBuilder {
                case: Case {
                    section: section.to_string(),
                    name: name.trim().to_string(),
                    file: file.to_path_buf(),
                    line: line_no,
                    quotes: Vec::new(),
                    requires: Vec::new(),
                    steps: Vec::new(),
                },
                open: BTreeSet::new(),
                pending_skip: HashSet::new(),
            });
            continue;
        }
        let Some(b) = cur.as_mut() else {
            return Err(err(
                "a step outside a case (start one with `case SECTION NAME`)".into(),
            ));
        };
        if let Some(req) = line.strip_prefix("requires ") {
            let mut words = req.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("max-connections"), None, _) => {
                    b.case.requires.push(Requirement::MaxConnections)
                }
                (Some("busy-hashing"), None, _) => b.case.requires.push(Requirement::BusyHashing),
                (Some("max-per-address"), None, _) => {
                    b.case.requires.push(Requirement::MaxPerAddress)
                }
                (Some("idle-timeout"), None, _) => b.case.requires.push(Requirement::IdleTimeout),
                (Some("rate-limits"), None, _) => b.case.requires.push(Requirement::RateLimits),
                (Some("small-quotas"), None, _) => b.case.requires.push(Requirement::SmallQuotas),
                (Some("admin"), None, _) => b.case.requires.push(Requirement::Admin),
                (Some("broadcast"), None, _) => b.case.requires.push(Requirement::Broadcast),
                (Some("registration-closed"), None, _) => {
                    b.case.requires.push(Requirement::RegistrationClosed)
                }
                (Some("max-room-members"), Some(n), None) => match n.parse() {
                    Ok(n) => b.case.requires.push(Requirement::MaxRoomMembers(n)),
                    Err(_) => {
                        return Err(err(format!("max-room-members needs a number, not {n:?}")))
                    }
                },
                _ => {
                    return Err(err(format!(
                        "unknown requirement {:?} (known: max-connections, busy-hashing, \
                         max-per-address, idle-timeout, rate-limits, small-quotas, \
                         admin, broadcast, registration-closed, max-room-members N)",
                        req.trim()
                    )))
                }
            }
            continue;
        }
        let kind = parse_step(line, b).map_err(err)?;
        b.case.steps.push(Step {
            line: line_no,
            text: line.to_string(),
            kind,
        });
    }
    if let Some(b) = cur.take() {
        cases.push(finish(file, b)?);
    }
    Ok(cases)
}

fn finish(file: &Path, b: CaseBuilder) -> Result<Case, ParseError> {
    let err = |msg: String| {
        Err(ParseError {
            file: file.to_path_buf(),
            line: b.case.line,
            msg,
        })
    };
    if b.case.quotes.is_empty() {
        return err(format!(
            "case {:?} quotes no spec sentence (add a comment line starting with `# \"`)",
            b.case.title()
        ));
    }
    if b.case.steps.is_empty() {
        return err(format!("case {:?} has no steps", b.case.title()));
    }
    if let Some(c) = b.pending_skip.iter().next() {
        return err(format!("`{c}<*` is not followed by a `{c}<` expectation"));
    }
    Ok(b.case)
}

fn template(text: &str, mode: Mode) -> Result<Template, String> {
    Template::parse(text, mode).map_err(|e| format!("{e} in {text:?}"))
}

fn parse_step(line: &str, b: &mut CaseBuilder) -> Result<StepKind, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[0] {
        kw @ ("connect" | "open") => {
            let clients: Vec<String> = words[1..].iter().map(|s| s.to_string()).collect();
            if clients.is_empty() {
                return Err(format!("`{kw}` needs client names"));
            }
            for c in &clients {
                if !is_client(c) {
                    return Err(format!("bad client name {c:?} (a-z then a-z, 0-9)"));
                }
                if !b.open.insert(c.clone()) {
                    return Err(format!("client {c} is already open"));
                }
            }
            return Ok(StepKind::Connect {
                clients,
                greet: kw == "connect",
            });
        }
        "sync" => {
            let clients: Vec<String> = if words.len() == 1 {
                b.open.iter().cloned().collect()
            } else {
                words[1..].iter().map(|s| s.to_string()).collect()
            };
            for c in &clients {
                check_open(b, c)?;
                check_no_skip(b, c)?;
            }
            if clients.is_empty() {
                return Err("`sync` with no open client".into());
            }
            return Ok(StepKind::Sync { clients });
        }
        "any" => {
            let Some((list, pat)) = line["any".len()..].split_once('<') else {
                return Err("`any` is written `any a,b,c< PATTERN`".into());
            };
            let clients: Vec<String> = list
                .trim()
                .split(',')
                .map(|c| c.trim().to_string())
                .collect();
            for c in &clients {
                check_open(b, c)?;
                check_no_skip(b, c)?;
            }
            let Some(pat) = pat.strip_prefix(' ').filter(|p| !p.is_empty()) else {
                return Err(format!("an expectation needs a pattern in {line:?}"));
            };
            return Ok(StepKind::ExpectAny {
                clients,
                pat: template(pat, Mode::Pattern)?,
            });
        }
        "saturate" => {
            let [_, c] = words[..] else {
                return Err("`saturate` takes one client name".into());
            };
            if !is_client(c) || !b.open.insert(c.to_string()) {
                return Err(format!("`saturate` needs a new client name, got {c:?}"));
            }
            if !b.case.requires.contains(&Requirement::MaxConnections)
                && !b.case.requires.contains(&Requirement::MaxPerAddress)
            {
                return Err(
                    "`saturate` needs `requires max-connections` or `requires max-per-address` \
                     first"
                        .into(),
                );
            }
            return Ok(StepKind::Saturate {
                client: c.to_string(),
            });
        }
        _ => {}
    }
    let name_len = line
        .bytes()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .count();
    let (client, rest) = line.split_at(name_len);
    if !is_client(client) {
        return Err(format!("unknown step {line:?}"));
    }
    check_open(b, client)?;
    let client = client.to_string();
    // Text after an operator: exactly one space separates it, the rest is kept verbatim.
    let arg = |s: &str| -> Result<String, String> {
        match s.strip_prefix(' ') {
            Some(t) => Ok(t.to_string()),
            None if s.is_empty() => Ok(String::new()),
            None => Err(format!("expected a space after the operator in {line:?}")),
        }
    };
    let count = |s: &str| -> Result<(usize, String), String> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let n = if digits == 0 {
            1
        } else {
            s[..digits]
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("bad repeat count in {line:?}"))?
        };
        Ok((n, arg(&s[digits..])?))
    };
    if let Some(r) = rest.strip_prefix(">>") {
        check_no_skip(b, &client)?;
        let text = arg(r)?;
        if text.is_empty() {
            return Err("`>>` needs bytes to send".into());
        }
        return Ok(StepKind::Send {
            client,
            repeat: 1,
            raw: true,
            tpl: template(&text, Mode::Send)?,
        });
    }
    if let Some(r) = rest.strip_prefix('>') {
        check_no_skip(b, &client)?;
        let (repeat, text) = count(r)?;
        return Ok(StepKind::Send {
            client,
            repeat,
            raw: false,
            tpl: template(&text, Mode::Send)?,
        });
    }
    let pattern = |r: &str| -> Result<Template, String> {
        let text = arg(r)?;
        if text.is_empty() {
            return Err(format!("an expectation needs a pattern in {line:?}"));
        }
        template(&text, Mode::Pattern)
    };
    if let Some(r) = rest.strip_prefix("<?") {
        check_no_skip(b, &client)?;
        let (count, _) = count(r)?;
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        return Ok(StepKind::ExpectSomewhere {
            pat: pattern(&r[digits..])?,
            client,
            count,
        });
    }
    if let Some(r) = rest.strip_prefix("<*") {
        b.pending_skip.insert(client.clone());
        return Ok(StepKind::Skip {
            pat: pattern(r)?,
            client,
        });
    }
    if let Some(r) = rest.strip_prefix("<!") {
        check_no_skip(b, &client)?;
        return Ok(StepKind::ExpectAbsent {
            pat: pattern(r)?,
            client,
        });
    }
    if let Some(r) = rest.strip_prefix('<') {
        b.pending_skip.remove(&client);
        let (count, _) = count(r)?;
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        return Ok(StepKind::Expect {
            pat: pattern(&r[digits..])?,
            client,
            count,
        });
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    check_no_skip(b, &client)?;
    match words[..] {
        ["quiet"] => Ok(StepKind::Quiet { client }),
        ["deflate"] => Ok(StepKind::Deflate { client }),
        ["closes"] => {
            b.open.remove(&client);
            Ok(StepKind::Close { client })
        }
        ["expects", "close"] => {
            b.open.remove(&client);
            Ok(StepKind::ExpectClose { client })
        }
        ["signup", account] => Ok(StepKind::Signup {
            client,
            account: template(account, Mode::Send)?,
        }),
        ["admin"] => {
            if !b.case.requires.contains(&Requirement::Admin) {
                return Err("`admin` needs `requires admin` first".into());
            }
            Ok(StepKind::Admin { client })
        }
        _ => Err(format!("unknown step {line:?}")),
    }
}

fn check_open(b: &CaseBuilder, c: &str) -> Result<(), String> {
    if b.open.contains(c) {
        Ok(())
    } else {
        Err(format!("client {c} is not open here (use `connect {c}`)"))
    }
}

fn check_no_skip(b: &CaseBuilder, c: &str) -> Result<(), String> {
    if b.pending_skip.contains(c) {
        Err(format!(
            "`{c}<*` must be followed by a `{c}<` expectation first"
        ))
    } else {
        Ok(())
    }
}

/// Loads every `*.case` file in `dir`, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Case>, ParseError> {
    let io_err = |e: std::io::Error| ParseError {
        file: dir.to_path_buf(),
        line: 0,
        msg: e.to_string(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    let mut titles = HashSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ParseError {
            file: file.clone(),
            line: 0,
            msg: e.to_string(),
        })?;
        for case in parse_file(&file, &text)? {
            if !titles.insert(case.name.to_ascii_lowercase()) {
                return Err(ParseError {
                    file: file.clone(),
                    line: case.line,
                    msg: format!("a second case named {:?}", case.name),
                });
            }
            cases.push(case);
        }
    }
    if cases.is_empty() {
        return Err(ParseError {
            file: dir.to_path_buf(),
            line: 0,
            msg: "no cases found (files named *.case)".into(),
        });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Case>, ParseError> {
        parse_file(Path::new("t.case"), text)
    }

    #[test]
    fn parses_a_case() {
        let cases = parse(
            "# file comment\n\
             case 4.7 two connections\n\
             # \"each receives the account's messages.\"\n\
             connect a b\n\
             a signup $a\n\
             a>3 PING {i}\n\
             a>> PING x\\r\\n\n\
             a>\n\
             a<3 PONG {i}\n\
             a<* PRESENCE <text>\n\
             a< OK PING\n\
             b<? MESSAGE <text>\n\
             b<! MESSAGE <text>\n\
             any a,b< OK <text>\n\
             sync\n\
             b quiet\n\
             a closes\n\
             b expects close\n",
        )
        .unwrap();
        assert_eq!(cases.len(), 1);
        let c = &cases[0];
        assert_eq!(
            (c.section.as_str(), c.name.as_str()),
            ("4.7", "two connections")
        );
        assert_eq!(c.quotes, ["\"each receives the account's messages.\""]);
        assert_eq!(c.steps.len(), 15);
        assert!(matches!(
            &c.steps[2].kind,
            StepKind::Send {
                repeat: 3,
                raw: false,
                ..
            }
        ));
        assert!(matches!(&c.steps[3].kind, StepKind::Send { raw: true, .. }));
        assert!(
            matches!(&c.steps[4].kind, StepKind::Send { raw: false, tpl, .. } if tpl.source().is_empty())
        );
        assert!(matches!(
            &c.steps[5].kind,
            StepKind::Expect { count: 3, .. }
        ));
        assert!(
            matches!(&c.steps[10].kind, StepKind::ExpectAny { clients, .. } if clients == &["a", "b"])
        );
        assert!(matches!(&c.steps[11].kind, StepKind::Sync { clients } if clients == &["a", "b"]));
        assert_eq!(c.steps[0].line, 4);
    }

    #[test]
    fn send_text_is_verbatim_after_one_space() {
        let cases = parse("case 1 x\n# \"q\"\nconnect a\na>   PING  x \n").unwrap();
        let StepKind::Send { tpl, .. } = &cases[0].steps[1].kind else {
            panic!("not a send");
        };
        assert_eq!(tpl.source(), "  PING  x ");
    }

    #[test]
    fn rejects_mistakes() {
        let bad = [
            ("a> PING\n", "outside a case"),
            ("case x y\n", "section number"),
            ("case 1\n", "needs a name"),
            ("case 1 x\nconnect a\na> PING\n", "quotes no spec"),
            ("case 1 x\n# \"q\"\n", "no steps"),
            ("case 1 x\n# \"q\"\na> PING\n", "not open"),
            (
                "case 1 x\n# \"q\"\nconnect a\na closes\na> PING\n",
                "not open",
            ),
            ("case 1 x\n# \"q\"\nconnect a a\n", "already open"),
            ("case 1 x\n# \"q\"\nconnect a\na<* X\n", "not followed"),
            (
                "case 1 x\n# \"q\"\nconnect a\na<* X\nsync a\na< Y\n",
                "must be followed",
            ),
            ("case 1 x\n# \"q\"\nconnect a\na<\n", "needs a pattern"),
            ("case 1 x\n# \"q\"\nconnect a\na<0 X\n", "repeat count"),
            (
                "case 1 x\n# \"q\"\nconnect a\na< <bogus>\n",
                "unknown matcher",
            ),
            ("case 1 x\n# \"q\"\nconnect a\na dances\n", "unknown step"),
            (
                "case 1 x\n# \"q\"\nsaturate z\n",
                "requires max-connections",
            ),
        ];
        for (text, want) in bad {
            let e = parse(text).expect_err(text);
            assert!(
                e.msg.contains(want),
                "{text:?}: {} (wanted {want:?})",
                e.msg
            );
        }
    }
}
