//! Running cases against a server: one case at a time, each with its own fresh account names.
//!
//! Every client keeps a queue of lines received but not yet consumed. `<` takes the front of the
//! queue (or the next line from the socket), `<?` takes the first matching line wherever it is,
//! and `sync` appends what arrives before its `PONG` to the queue, so a later expectation can still
//! consume it. Negative checks (`<!`, `quiet`) sync first: they only mean something once the server
//! has answered a `PING` sent after the command under test.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::case::{Case, Requirement, Step, StepKind};
use crate::conn::{Conn, ReadError, TlsSettings};
use crate::pattern::matches;
use crate::template::{name_digits, Env, Matcher, Mode, PatTok, Template, NAME_DIGITS};

/// Where and how to run the suite.
#[derive(Clone)]
pub struct Options {
    /// `host:port` of the server.
    pub addr: String,
    /// TLS settings, for a TLS listener.
    pub tls: Option<TlsSettings>,
    /// How long one expectation waits for its line.
    pub timeout: Duration,
    /// Only run cases whose `section name` contains this.
    pub filter: Option<String>,
    /// The server's connection limit, when known; enables the cases that need it.
    pub max_connections: Option<usize>,
    /// The server hashes passwords slowly with at most three hashes running or waiting; enables
    /// the SERVER_BUSY case.
    pub busy_hashing: bool,
    /// The server's most members per room, when known; enables the cases that fill a room of
    /// exactly that size.
    pub max_room_members: Option<usize>,
    /// The server's limit of connections from one address, when known; enables the cases that
    /// need it.
    pub max_per_address: Option<usize>,
    /// The server's idle timeout, when it is short enough to wait for; enables the idle cases.
    pub idle_timeout: Option<Duration>,
    /// The server applies its default limits per address (spec 7.5) to the suite's address;
    /// enables the RATE_LIMITED cases.
    pub rate_limits: bool,
    /// The server runs with small quotas per account (see [`Requirement::SmallQuotas`]); enables
    /// the quota cases.
    pub small_quotas: bool,
    /// The server's admin account, name and password; enables the operator commands' cases.
    pub admin: Option<(String, String)>,
    /// The suite may send `ALL` and `ANNOUNCE`, which reach every user online.
    pub broadcast: bool,
    /// The server's registration is closed.
    pub registration_closed: bool,
    /// Distinguishes this run's account names from every other run's; random when `None`.
    pub run_id: Option<String>,
    /// Fail a case when the server sends a line that is not a well-formed server line (spec 2.9).
    /// On by default; the runner's own tests turn it off to drive it with a stand-in server.
    pub check_grammar: bool,
}

impl Options {
    /// Plain TCP to `addr`, a 5 s timeout, every case.
    pub fn new(addr: impl Into<String>) -> Options {
        Options {
            addr: addr.into(),
            tls: None,
            timeout: Duration::from_secs(5),
            filter: None,
            max_connections: None,
            busy_hashing: false,
            max_room_members: None,
            max_per_address: None,
            idle_timeout: None,
            rate_limits: false,
            small_quotas: false,
            admin: None,
            broadcast: false,
            registration_closed: false,
            run_id: None,
            check_grammar: true,
        }
    }
}

/// Why a case failed: the step, what it expected and what arrived instead.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Line of the failing step in the case file.
    pub line: usize,
    /// The failing step as written.
    pub step: String,
    /// What the step expected, with variables expanded.
    pub expected: String,
    /// What arrived instead (lines, a timeout, a close).
    pub received: Vec<String>,
    /// The last lines the case sent and received, oldest first.
    pub transcript: Vec<String>,
}

/// How a case ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every step held.
    Pass,
    /// A step did not.
    Fail(Failure),
    /// A requirement was not met.
    Skip(String),
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's spec section.
    pub section: String,
    /// The case's name.
    pub name: String,
    /// `file:line` of the case.
    pub location: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
}

/// The pattern every connection's first line must match.
const HELLO: &str = "HELLO chatd <word> <text>";
/// Transcript lines kept for a failure report.
const TRANSCRIPT_KEEP: usize = 40;
/// Display width of one line in reports.
const SHOW_MAX: usize = 160;
/// How long the clean-up at the end of a case waits for the server to close a connection.
const CLEANUP_WAIT: Duration = Duration::from_secs(2);

/// A fresh run id: six characters (see `name_digits`) from the clock and a randomly keyed hash.
pub fn fresh_run_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    name_digits(h.finish() % (NAME_DIGITS.len() as u64).pow(6), 6)
}

/// Runs the selected cases in order, calling `progress` after each one.
pub fn run(
    cases: &[Case],
    opts: &Options,
    mut progress: impl FnMut(&CaseResult),
) -> Vec<CaseResult> {
    let run_id = opts.run_id.clone().unwrap_or_else(fresh_run_id);
    let mut results = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        if let Some(f) = &opts.filter {
            if !case.title().contains(f.as_str()) {
                continue;
            }
        }
        let start = Instant::now();
        let unmet = case.requires.iter().find(|r| match r {
            Requirement::MaxConnections => opts.max_connections.is_none(),
            Requirement::BusyHashing => !opts.busy_hashing,
            Requirement::MaxRoomMembers(n) => opts.max_room_members != Some(*n),
            Requirement::MaxPerAddress => opts.max_per_address.is_none(),
            Requirement::IdleTimeout => opts.idle_timeout.is_none(),
            Requirement::RateLimits => !opts.rate_limits,
            Requirement::SmallQuotas => !opts.small_quotas,
            Requirement::Admin => opts.admin.is_none(),
            Requirement::Broadcast => !opts.broadcast,
            Requirement::RegistrationClosed => !opts.registration_closed,
        });
        let outcome = if let Some(r) = unmet {
            Outcome::Skip(match r {
                Requirement::MaxRoomMembers(n) => format!("needs --max-room-members {n}"),
                r => format!("needs --{}", r.name()),
            })
        } else {
            let mut env = Env::new(&run_id, index);
            env.admin = opts.admin.as_ref().map(|(name, _)| name.clone());
            let mut cx = CaseRun::new(opts, env);
            let outcome = match case
                .steps
                .iter()
                .try_for_each(|s| cx.step(s).and_then(|()| cx.grammar()))
            {
                Ok(()) => Outcome::Pass,
                Err(f) => Outcome::Fail(f),
            };
            cx.cleanup();
            outcome
        };
        let result = CaseResult {
            section: case.section.clone(),
            name: case.name.clone(),
            location: format!("{}:{}", case.file.display(), case.line),
            outcome,
            duration: start.elapsed(),
        };
        progress(&result);
        results.push(result);
    }
    results
}

/// Shows bytes for a report: UTF-8 as is, anything else escaped, long lines cut.
pub fn show(bytes: &[u8]) -> String {
    let cut = bytes.len() > SHOW_MAX;
    let part = if cut { &bytes[..SHOW_MAX - 40] } else { bytes };
    let mut out = String::new();
    for chunk in part.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    if cut {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    out
}

fn show_pattern(pat: &[PatTok]) -> String {
    let mut out = String::new();
    for t in pat {
        match t {
            PatTok::Lit(b) => out.push_str(&show(b)),
            PatTok::Match(Matcher::Number) => out.push_str("<n>"),
            PatTok::Match(Matcher::Id) => out.push_str("<id>"),
            PatTok::Match(Matcher::Time) => out.push_str("<time>"),
            PatTok::Match(Matcher::Word) => out.push_str("<word>"),
            PatTok::Match(Matcher::Text) => out.push_str("<text>"),
            PatTok::Match(Matcher::Any) => out.push_str("<any>"),
            PatTok::Bind(name, Matcher::Time) => out.push_str(&format!("{{{name}:time}}")),
            PatTok::Bind(name, Matcher::Word) => out.push_str(&format!("{{{name}:word}}")),
            PatTok::Bind(name, _) => out.push_str(&format!("{{{name}}}")),
        }
    }
    out
}

struct Client {
    conn: Conn,
    queue: VecDeque<Vec<u8>>,
    skip: Option<Vec<PatTok>>,
}

struct CaseRun<'a> {
    opts: &'a Options,
    env: Env,
    clients: BTreeMap<String, Client>,
    fillers: Vec<Conn>,
    transcript: VecDeque<String>,
    syncs: u64,
    step: Option<Step>,
    /// Accounts the case may have created (REGISTER, ADDUSER), by name, with the passwords they
    /// may have now (PASSWORD may have changed them): the clean-up deletes them.
    made: Vec<String>,
    passwords: Vec<String>,
}

type StepResult = Result<(), Failure>;

impl<'a> CaseRun<'a> {
    fn new(opts: &'a Options, env: Env) -> CaseRun<'a> {
        CaseRun {
            opts,
            env,
            clients: BTreeMap::new(),
            fillers: Vec::new(),
            transcript: VecDeque::new(),
            syncs: 0,
            step: None,
            made: Vec::new(),
            passwords: Vec::new(),
        }
    }

    /// Notes the accounts a line sent may create, and the passwords it may set, for the clean-up.
    fn note_accounts(&mut self, bytes: &[u8]) {
        for line in bytes.split(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(line);
            let mut words = line.split(' ').filter(|w| !w.is_empty());
            let mut first = words.next();
            if first.is_some_and(|w| w.starts_with('@')) {
                first = words.next();
            }
            let (Some(cmd), Some(a), Some(b)) = (first, words.next(), words.next()) else {
                continue;
            };
            let cmd = cmd.to_ascii_uppercase();
            if cmd == "REGISTER" || cmd == "ADDUSER" {
                if !self.made.iter().any(|m| m.eq_ignore_ascii_case(a)) {
                    self.made.push(a.to_owned());
                }
                self.passwords.push(b.to_owned());
            } else if cmd == "PASSWORD" {
                self.passwords.push(b.to_owned());
            }
        }
    }

    fn note(&mut self, entry: String) {
        if self.transcript.len() == TRANSCRIPT_KEEP {
            self.transcript.pop_front();
        }
        self.transcript.push_back(entry);
    }

    fn fail(&self, expected: impl Into<String>, received: Vec<String>) -> Failure {
        let step = self.step.as_ref().expect("failures happen inside a step");
        Failure {
            line: step.line,
            step: step.text.clone(),
            expected: expected.into(),
            received,
            transcript: self.transcript.iter().cloned().collect(),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.opts.timeout
    }

    fn client(&mut self, name: &str) -> &mut Client {
        self.clients
            .get_mut(name)
            .expect("the parser only lets steps use open clients")
    }

    fn pattern(&self, tpl: &Template) -> Result<Vec<PatTok>, Failure> {
        tpl.to_pattern(&self.env)
            .map_err(|e| self.fail(format!("a pattern that expands ({e})"), vec![]))
    }

    fn bytes(&self, tpl: &Template) -> Result<Vec<u8>, Failure> {
        tpl.to_bytes(&self.env)
            .map_err(|e| self.fail(format!("bytes that expand ({e})"), vec![]))
    }

    fn bind(&mut self, binds: Vec<(String, String)>) {
        self.env.captures.extend(binds);
    }

    fn describe(err: &ReadError) -> String {
        match err {
            ReadError::Timeout => "(nothing: timed out)".to_string(),
            ReadError::Closed { partial } if partial.is_empty() => "(connection closed)".into(),
            ReadError::Closed { partial } => {
                format!(
                    "(connection closed after a partial line: {})",
                    show(partial)
                )
            }
            ReadError::Io(e) => format!("(error: {e})"),
        }
    }

    /// The client's next line: the front of its queue, else the socket.
    fn next_line(&mut self, c: &str, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        let client = self.client(c);
        if let Some(line) = client.queue.pop_front() {
            return Ok(line);
        }
        let line = client.conn.read_line(deadline)?;
        self.note(format!("{c}< {}", show(&line)));
        Ok(line)
    }

    fn send(&mut self, c: &str, bytes: &[u8], shown: String) -> StepResult {
        self.note(shown);
        let r = self.client(c).conn.send(bytes);
        r.map_err(|e| self.fail("to send", vec![format!("(send failed: {e})")]))
    }

    fn connect(&mut self) -> Result<Conn, Failure> {
        Conn::connect(&self.opts.addr, self.opts.tls.as_ref(), self.opts.timeout).map_err(|e| {
            self.fail(
                format!("a connection to {}", self.opts.addr),
                vec![format!("({e})")],
            )
        })
    }

    /// Expects the next line of `c` to match, after any lines a pending skip allows.
    fn expect(&mut self, c: &str, pat: &[PatTok]) -> StepResult {
        let deadline = self.deadline();
        loop {
            match self.next_line(c, deadline) {
                Ok(line) => {
                    if let Some(binds) = matches(pat, &line) {
                        self.bind(binds);
                        return Ok(());
                    }
                    let skip = self.client(c).skip.clone();
                    if skip.is_some_and(|s| matches(&s, &line).is_some()) {
                        continue;
                    }
                    return Err(self.fail(show_pattern(pat), vec![show(&line)]));
                }
                Err(e) => return Err(self.fail(show_pattern(pat), vec![Self::describe(&e)])),
            }
        }
    }

    /// Takes the first line of `c` that matches, from its queue or, reading on, from the socket;
    /// lines that do not match stay queued.
    fn expect_somewhere(&mut self, c: &str, p: &[PatTok]) -> StepResult {
        let queue = &mut self.client(c).queue;
        if let Some(pos) = queue.iter().position(|l| matches(p, l).is_some()) {
            let line = queue.remove(pos).expect("position is in range");
            let binds = matches(p, &line).expect("it matched");
            self.bind(binds);
            return Ok(());
        }
        let deadline = self.deadline();
        loop {
            match self.client(c).conn.read_line(deadline) {
                Ok(line) => {
                    self.note(format!("{c}< {}", show(&line)));
                    if let Some(binds) = matches(p, &line) {
                        self.bind(binds);
                        return Ok(());
                    }
                    self.client(c).queue.push_back(line);
                }
                Err(e) => {
                    let mut got: Vec<String> =
                        self.client(c).queue.iter().map(|l| show(l)).collect();
                    got.push(Self::describe(&e));
                    return Err(self.fail(format!("some line {}", show_pattern(p)), got));
                }
            }
        }
    }

    /// PINGs every client in `cs`, then reads each up to its PONG and `OK PING`, queueing the rest.
    fn sync(&mut self, cs: &[String]) -> StepResult {
        let mut tokens = Vec::new();
        for c in cs {
            self.syncs += 1;
            let token = format!("sync-{}", self.syncs);
            self.send(
                c,
                format!("PING {token}\n").as_bytes(),
                format!("{c}> PING {token}"),
            )?;
            tokens.push(token);
        }
        for (c, token) in cs.iter().zip(tokens) {
            let pong = format!("PONG {token}").into_bytes();
            let deadline = self.deadline();
            loop {
                let client = self.client(c);
                let line = client.conn.read_line(deadline);
                match line {
                    Ok(line) if line == pong => {
                        self.note(format!("{c}< {}", show(&line)));
                        break;
                    }
                    Ok(line) => {
                        self.note(format!("{c}< {}", show(&line)));
                        self.client(c).queue.push_back(line);
                    }
                    Err(e) => {
                        return Err(self.fail(
                            format!("{c}: PONG {token} (sync barrier)"),
                            vec![Self::describe(&e)],
                        ))
                    }
                }
            }
            match self.client(c).conn.read_line(deadline) {
                Ok(line) if line == b"OK PING" => self.note(format!("{c}< OK PING")),
                Ok(line) => {
                    self.note(format!("{c}< {}", show(&line)));
                    return Err(self.fail(
                        format!("{c}: OK PING right after PONG {token} (sync barrier)"),
                        vec![show(&line)],
                    ));
                }
                Err(e) => {
                    return Err(self.fail(
                        format!("{c}: OK PING (sync barrier)"),
                        vec![Self::describe(&e)],
                    ))
                }
            }
        }
        Ok(())
    }

    fn literal(s: &str) -> Vec<PatTok> {
        vec![PatTok::Lit(s.as_bytes().to_vec())]
    }

    /// Fails the step when any connection received a line that is not a well-formed server line.
    fn grammar(&self) -> StepResult {
        if !self.opts.check_grammar {
            return Ok(());
        }
        let conns = self
            .clients
            .iter()
            .map(|(name, c)| (name.as_str(), &c.conn))
            .chain(self.fillers.iter().map(|c| ("(filler)", c)));
        for (name, conn) in conns {
            if let Some(line) = conn.malformed() {
                return Err(self.fail(
                    format!("{name}: only well-formed server lines (spec 2.9)"),
                    vec![show(line)],
                ));
            }
        }
        Ok(())
    }

    fn hello(&self) -> Vec<PatTok> {
        Template::parse(HELLO, Mode::Pattern)
            .expect("the HELLO pattern parses")
            .to_pattern(&self.env)
            .expect("the HELLO pattern has no captures")
    }

    fn step(&mut self, step: &Step) -> StepResult {
        self.step = Some(step.clone());
        match &step.kind {
            StepKind::Connect { clients, greet } => {
                for c in clients {
                    let conn = self.connect()?;
                    self.note(format!("{c}: connected"));
                    self.clients.insert(
                        c.clone(),
                        Client {
                            conn,
                            queue: VecDeque::new(),
                            skip: None,
                        },
                    );
                    if *greet {
                        let hello = self.hello();
                        self.expect(c, &hello)?;
                    }
                }
                Ok(())
            }
            StepKind::Send {
                client,
                repeat,
                raw,
                tpl,
            } => {
                let saved = self.env.captures.get("i").cloned();
                let mut bytes = Vec::new();
                for i in 1..=*repeat {
                    if *repeat > 1 {
                        self.env.captures.insert("i".into(), i.to_string());
                    }
                    let one = self.bytes(tpl)?;
                    if i <= 3 || i == *repeat {
                        self.note(format!(
                            "{client}{} {}",
                            if *raw { ">>" } else { ">" },
                            show(&one)
                        ));
                    } else if i == 4 {
                        self.note(format!("{client}> ... ({} lines in all)", repeat));
                    }
                    bytes.extend_from_slice(&one);
                    if !raw {
                        bytes.push(b'\n');
                    }
                }
                restore(&mut self.env, saved);
                self.note_accounts(&bytes);
                let conn = &mut self.client(client).conn;
                let r = if *raw {
                    conn.send_raw(&bytes)
                } else {
                    conn.send(&bytes)
                };
                r.map_err(|e| self.fail("to send", vec![format!("(send failed: {e})")]))
            }
            StepKind::Expect { client, count, pat } => {
                let saved = self.env.captures.get("i").cloned();
                for i in 1..=*count {
                    if *count > 1 {
                        self.env.captures.insert("i".into(), i.to_string());
                    }
                    let p = self.pattern(pat)?;
                    self.expect(client, &p)?;
                }
                restore(&mut self.env, saved);
                self.client(client).skip = None;
                Ok(())
            }
            StepKind::Skip { client, pat } => {
                let p = self.pattern(pat)?;
                self.client(client).skip = Some(p);
                Ok(())
            }
            StepKind::ExpectSomewhere { client, count, pat } => {
                let saved = self.env.captures.get("i").cloned();
                for i in 1..=*count {
                    if *count > 1 {
                        self.env.captures.insert("i".into(), i.to_string());
                    }
                    let p = self.pattern(pat)?;
                    self.expect_somewhere(client, &p)?;
                }
                restore(&mut self.env, saved);
                Ok(())
            }
            StepKind::ExpectAbsent { client, pat } => {
                self.sync(std::slice::from_ref(client))?;
                let p = self.pattern(pat)?;
                let found = self
                    .client(client)
                    .queue
                    .iter()
                    .find(|l| matches(&p, l).is_some())
                    .cloned();
                match found {
                    Some(line) => {
                        Err(self.fail(format!("no line {}", show_pattern(&p)), vec![show(&line)]))
                    }
                    None => Ok(()),
                }
            }
            StepKind::ExpectAny { clients, pat } => {
                self.sync(clients)?;
                let p = self.pattern(pat)?;
                for c in clients {
                    let queue = &mut self.client(c).queue;
                    if let Some(pos) = queue.iter().position(|l| matches(&p, l).is_some()) {
                        let line = queue.remove(pos).expect("position is in range");
                        let binds = matches(&p, &line).expect("it matched");
                        self.bind(binds);
                        return Ok(());
                    }
                }
                let mut got = Vec::new();
                for c in clients {
                    got.extend(
                        self.client(c)
                            .queue
                            .iter()
                            .map(|l| format!("{c}< {}", show(l))),
                    );
                }
                Err(self.fail(
                    format!("on one of {}: {}", clients.join(","), show_pattern(&p)),
                    got,
                ))
            }
            StepKind::Deflate { client } => {
                self.note(format!("{client}: compressed from here on"));
                self.client(client).conn.start_deflate();
                Ok(())
            }
            StepKind::Quiet { client } => {
                self.sync(std::slice::from_ref(client))?;
                let queue: Vec<String> =
                    self.client(client).queue.iter().map(|l| show(l)).collect();
                if queue.is_empty() {
                    Ok(())
                } else {
                    Err(self.fail("no line at all", queue))
                }
            }
            StepKind::Sync { clients } => self.sync(clients),
            StepKind::Close { client } => {
                let mut cl = self
                    .clients
                    .remove(client)
                    .expect("the parser checked it is open");
                cl.conn.close();
                self.note(format!("{client}: closed by the client"));
                Ok(())
            }
            StepKind::ExpectClose { client } => {
                let queued: Vec<String> =
                    self.client(client).queue.iter().map(|l| show(l)).collect();
                if !queued.is_empty() {
                    return Err(self.fail("the server to close the connection", queued));
                }
                let deadline = self.deadline();
                let r = self.client(client).conn.read_line(deadline);
                match r {
                    Err(ReadError::Closed { partial }) if partial.is_empty() => {
                        self.note(format!("{client}: closed by the server"));
                        self.clients.remove(client);
                        Ok(())
                    }
                    Ok(line) => {
                        self.note(format!("{client}< {}", show(&line)));
                        Err(self.fail("the server to close the connection", vec![show(&line)]))
                    }
                    Err(e) => Err(self.fail(
                        "the server to close the connection",
                        vec![Self::describe(&e)],
                    )),
                }
            }
            StepKind::Admin { client } => {
                let (name, pw) = self
                    .opts
                    .admin
                    .clone()
                    .expect("cases that log in as the admin are skipped without one");
                let login = format!("LOGIN {name} {pw}");
                self.send(
                    client,
                    format!("{login}\n").as_bytes(),
                    format!("{client}> LOGIN {name} <admin password>"),
                )?;
                let ok = Template::parse("OK LOGIN <word>", Mode::Pattern)
                    .expect("a valid pattern")
                    .to_pattern(&self.env)
                    .expect("no captures");
                self.expect(client, &ok)?;
                // Whatever the admin's account is sent at login (friends, a backlog), up to its end.
                let end = Template::parse("BACKLOG-END <n>", Mode::Pattern)
                    .expect("a valid pattern")
                    .to_pattern(&self.env)
                    .expect("no captures");
                let any = Template::parse("<any>", Mode::Pattern)
                    .expect("a valid pattern")
                    .to_pattern(&self.env)
                    .expect("no captures");
                self.client(client).skip = Some(any);
                let r = self.expect(client, &end);
                self.client(client).skip = None;
                r
            }
            StepKind::Signup { client, account } => {
                let name = String::from_utf8_lossy(&self.bytes(account)?).into_owned();
                let pw = self.env.password.clone();
                let reg = format!("REGISTER {name} {pw}");
                self.note_accounts(reg.as_bytes());
                self.send(
                    client,
                    format!("{reg}\n").as_bytes(),
                    format!("{client}> {reg}"),
                )?;
                self.expect(client, &Self::literal(&format!("OK REGISTER {name}")))?;
                let login = format!("LOGIN {name} {pw}");
                self.send(
                    client,
                    format!("{login}\n").as_bytes(),
                    format!("{client}> {login}"),
                )?;
                self.expect(client, &Self::literal(&format!("OK LOGIN {name}")))?;
                self.expect(client, &Self::literal("BACKLOG-END 0"))
            }
            StepKind::Saturate { client } => {
                // The smaller of the limits that apply (the suite connects from one address).
                let max = [self.opts.max_connections, self.opts.max_per_address]
                    .into_iter()
                    .flatten()
                    .min()
                    .expect("cases that saturate are skipped without a connection limit");
                let hello = self.hello();
                // Our own open clients count towards the limit too, so at most max+1 attempts.
                for _ in 0..=max {
                    let mut conn = self.connect()?;
                    let line = conn.read_line(self.deadline()).map_err(|e| {
                        self.fail(
                            "HELLO or a BYE on a new connection",
                            vec![Self::describe(&e)],
                        )
                    })?;
                    if matches(&hello, &line).is_some() {
                        self.fillers.push(conn);
                        continue;
                    }
                    self.note(format!(
                        "{} connections greeted; {client}< {}",
                        self.fillers.len(),
                        show(&line)
                    ));
                    let mut queue = VecDeque::new();
                    queue.push_back(line);
                    self.clients.insert(
                        client.clone(),
                        Client {
                            conn,
                            queue,
                            skip: None,
                        },
                    );
                    return Ok(());
                }
                Err(self.fail(
                    format!(
                        "a refused connection within {} attempts (the limit is {max})",
                        max + 1
                    ),
                    vec![format!("({} connections greeted)", self.fillers.len())],
                ))
            }
        }
    }

    /// Leaves the server as the case found it: every connection says QUIT and waits (briefly) for
    /// the server to close it, so its accounts are offline and its connection slot free before the
    /// next case starts.
    fn cleanup(&mut self) {
        let deadline = Instant::now() + CLEANUP_WAIT;
        let mut conns: Vec<&mut Conn> = self.fillers.iter_mut().collect();
        conns.extend(self.clients.values_mut().map(|c| &mut c.conn));
        for conn in &mut conns {
            let _ = conn.send(b"QUIT\n");
        }
        for conn in &mut conns {
            while conn.read_line(deadline).is_ok() {}
            conn.close();
        }
        self.fillers.clear();
        self.clients.clear();
        self.remove_accounts();
    }

    /// Deletes the accounts the case made, so that a run leaves no trace on a shared server: each
    /// logs in (with whichever password it has now) and sends UNREGISTER. An account that is
    /// suspended is first unsuspended by the admin. One that cannot log in (the case deleted it
    /// already, or left the suite's address backed off) is left.
    fn remove_accounts(&mut self) {
        let made = std::mem::take(&mut self.made);
        if made.is_empty() {
            return;
        }
        let mut passwords = std::mem::take(&mut self.passwords);
        passwords.push(self.env.password.clone());
        passwords.dedup();
        let Ok(mut conn) = Conn::connect(&self.opts.addr, self.opts.tls.as_ref(), CLEANUP_WAIT)
        else {
            return;
        };
        let deadline = || Instant::now() + self.opts.timeout;
        let call = |conn: &mut Conn, line: &str| -> Option<String> {
            conn.send(format!("{line}\n").as_bytes()).ok()?;
            loop {
                let got = conn.read_line(deadline()).ok()?;
                let got = String::from_utf8_lossy(&got).into_owned();
                if got.starts_with("OK ") || got.starts_with("FAIL ") {
                    return Some(got);
                }
            }
        };
        let _ = conn.read_line(deadline());
        for name in made {
            for pw in passwords.iter().rev() {
                let mut reply = call(&mut conn, &format!("LOGIN {name} {pw}"));
                if reply.as_deref().is_some_and(|r| r.contains(" SUSPENDED ")) {
                    if let Some((admin, apw)) = &self.opts.admin {
                        let _ = call(&mut conn, &format!("LOGIN {admin} {apw}"));
                        let _ = call(&mut conn, &format!("UNSUSPEND {name}"));
                        let _ = call(&mut conn, "LOGOUT");
                        reply = call(&mut conn, &format!("LOGIN {name} {pw}"));
                    }
                }
                if reply.as_deref().is_some_and(|r| r.starts_with("OK LOGIN")) {
                    let _ = call(&mut conn, &format!("UNREGISTER {pw}"));
                    break;
                }
            }
        }
        let _ = conn.send(b"QUIT\n");
        while conn.read_line(deadline()).is_ok() {}
        conn.close();
    }
}

fn restore(env: &mut Env, saved: Option<String>) {
    match saved {
        Some(v) => env.captures.insert("i".into(), v),
        None => env.captures.remove("i"),
    };
}
