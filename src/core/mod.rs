//! The server's rules as a state machine, with no IO.
//!
//! [`Core::handle`] takes one [`Event`] (a connection opened, a line arrived, a commit finished, a
//! password hash finished, ...) and the current time, and answers with effects: bytes queued on
//! connections' [`Outbox`]es (which never blocks) and [`Job`]s for the store and the hashing pool,
//! whose results come back later as events. The network shell in `net` drives it in production;
//! tests and fuzzers drive it directly with an in-memory store.
//!
//! Ordering rules that the rest of the design leans on:
//! - Replies to one connection leave in the order of its commands, even when a later command
//!   finishes first: each command owns a slot in the connection's reply queue ([`Slot`]).
//! - Nothing a command changes is visible to others before it is durable: a message is delivered,
//!   and every push caused by a command is sent, only when its commit has finished.
//! - Store results come back in the order the ops were sent, so a LOGIN's backlog read sees every
//!   message queued before it.
//!
//! One file per group of commands: `session` (REGISTER, LOGIN, LOGOUT, QUIT), `messaging` (MSG,
//! GROUP, ALL), `history`, `friends`, `info` (HELP, PING, USERS).

mod friends;
mod history;
mod info;
mod messaging;
mod session;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::auth::{HashJob, HashOutcome};
use crate::outbox::{Chunk, Outbox};
use crate::proto::command::{split_head, Command, Refusal, Verb};
use crate::proto::reply::{self, ByeCode, Code, Recipients};
use crate::store::worker::{StoreJob, Ticket};
use crate::store::{FriendState, MsgId, Snapshot, StoreError, StoreOp, StoreReply, To};

/// Identifies a connection for the life of the process.
pub type ConnId = u64;

/// What a connection's reader hands to the core.
#[derive(Debug)]
pub enum Input {
    /// A complete line (not yet checked as UTF-8).
    Line(Vec<u8>),
    /// A line that passed the length limit and was discarded.
    TooLong,
}

/// Something that happened.
#[derive(Debug)]
pub enum Event {
    /// A connection was accepted; its outbox is where its lines go.
    Connected {
        conn: ConnId,
        outbox: Outbox,
        peer: String,
    },
    /// One unit of input from a connection (the reader holds one credit for it).
    Input { conn: ConnId, input: Input },
    /// The connection is gone (closed by the client, by an error, or after the core closed it).
    Disconnected { conn: ConnId },
    /// A batch of store ops finished (results in op order), or the store failed.
    Stored(Result<Vec<(Ticket, StoreReply)>, StoreError>),
    /// A password hash finished.
    Hashed {
        ticket: Ticket,
        outcome: HashOutcome,
    },
    /// The server is stopping: tell everyone and close every connection.
    Shutdown,
}

/// Work the core hands to the outside.
#[derive(Debug)]
pub enum Job {
    Store(StoreJob),
    Hash(Ticket, HashJob),
}

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Most hash jobs queued or running; more get SERVER_BUSY.
    pub hash_queue: usize,
    /// A PHC string that no password matches, verified for unknown names.
    pub dummy_phc: Arc<str>,
    /// Server version, shown in HELLO.
    pub version: &'static str,
}

struct Account {
    /// Name as registered.
    name: String,
    /// None while the REGISTER that created it is still hashing.
    phc: Option<Arc<str>>,
    /// Other account key -> this account's view of the edge.
    friends: HashMap<String, FriendState>,
    /// Messages waiting in the offline backlog.
    pending: u32,
    /// Logged-in connections.
    conns: Vec<ConnId>,
}

enum ConnState {
    Guest,
    LoggedIn(String),
}

/// One command's place in a connection's reply order.
struct Slot {
    /// Waiting for this ticket; None once filled.
    ticket: Option<Ticket>,
    text: String,
    /// Credits to give back when it is sent (1 for a command's final reply, 0 for extra output).
    finals: usize,
    /// Close the connection after sending it (QUIT).
    close_after: bool,
}

struct Conn {
    outbox: Outbox,
    peer: String,
    state: ConnState,
    /// A password hash for this connection is running; its later input waits in `deferred`, since
    /// it must see the state that hash leads to.
    busy: bool,
    deferred: VecDeque<Input>,
    slots: VecDeque<Slot>,
    /// QUIT was answered or the server closed it; further input is ignored.
    closing: bool,
}

impl Conn {
    fn key(&self) -> Option<&str> {
        match &self.state {
            ConnState::LoggedIn(k) => Some(k),
            ConnState::Guest => None,
        }
    }
}

/// What to do when a job finishes.
enum Waiting {
    /// REGISTER's hash.
    RegisterHash {
        conn: ConnId,
        label: Option<String>,
        key: String,
    },
    /// REGISTER's commit.
    RegisterStored {
        conn: ConnId,
        label: Option<String>,
        name: String,
    },
    /// LOGIN's verification; `key` is None when the name is unknown.
    LoginVerify {
        conn: ConnId,
        label: Option<String>,
        key: Option<String>,
    },
    /// The offline backlog read at login, for account `key`.
    Backlog { conn: ConnId, key: String },
    /// A message's commit.
    Message(Box<messaging::Sent>),
    /// A HISTORY read.
    History {
        conn: ConnId,
        label: Option<String>,
        name: String,
    },
    /// A FRIEND change's commit.
    Friend(Box<friends::Change>),
    /// A write with nothing to report.
    Quiet,
}

/// The server state machine. See the module documentation.
pub struct Core {
    settings: Settings,
    accounts: HashMap<String, Account>,
    /// Keys of accounts with at least one logged-in connection, sorted for USERS.
    online: BTreeSet<String>,
    conns: HashMap<ConnId, Conn>,
    next_id: MsgId,
    next_ticket: Ticket,
    waiting: HashMap<Ticket, Waiting>,
    hashing: usize,
    store_inflight: usize,
    jobs: Vec<Job>,
    /// Connections whose outbox overflowed during this event.
    overflowed: Vec<ConnId>,
    now: i64,
    shutting_down: bool,
    fatal: Option<String>,
}

impl Core {
    /// A core holding the state read from the store.
    pub fn new(snapshot: Snapshot, settings: Settings) -> Core {
        let mut accounts = HashMap::with_capacity(snapshot.accounts.len());
        for a in snapshot.accounts {
            let key = a.name.to_ascii_lowercase();
            accounts.insert(
                key,
                Account {
                    name: a.name,
                    phc: Some(a.phc.into()),
                    friends: HashMap::new(),
                    pending: 0,
                    conns: Vec::new(),
                },
            );
        }
        for (a, b, state) in snapshot.friendships {
            if let Some(acct) = accounts.get_mut(&a) {
                acct.friends.insert(b, state);
            }
        }
        for (user, n) in snapshot.pending_counts {
            if let Some(acct) = accounts.get_mut(&user) {
                acct.pending = n;
            }
        }
        Core {
            settings,
            accounts,
            online: BTreeSet::new(),
            conns: HashMap::new(),
            next_id: snapshot.next_id.max(1),
            next_ticket: 1,
            waiting: HashMap::new(),
            hashing: 0,
            store_inflight: 0,
            jobs: Vec::new(),
            overflowed: Vec::new(),
            now: 0,
            shutting_down: false,
            fatal: None,
        }
    }

    /// Applies one event at time `now_ms` (milliseconds since the Unix epoch); the jobs it creates
    /// are appended to `jobs`.
    pub fn handle(&mut self, now_ms: i64, event: Event, jobs: &mut Vec<Job>) {
        self.now = now_ms;
        match event {
            Event::Connected { conn, outbox, peer } => self.connected(conn, outbox, peer),
            Event::Input { conn, input } => self.input(conn, input),
            Event::Disconnected { conn } => self.disconnected(conn),
            Event::Stored(Ok(results)) => {
                for (ticket, reply) in results {
                    self.store_inflight = self.store_inflight.saturating_sub(1);
                    self.stored(ticket, reply);
                }
            }
            Event::Stored(Err(e)) => {
                log::error!("{e}; stopping, since memory and disk may now differ");
                self.fatal = Some(e.to_string());
                self.shutdown();
            }
            Event::Hashed { ticket, outcome } => {
                self.hashing = self.hashing.saturating_sub(1);
                self.hashed(ticket, outcome);
            }
            Event::Shutdown => self.shutdown(),
        }
        self.reap_overflowed();
        jobs.append(&mut self.jobs);
    }

    /// Store ops sent and not yet finished; the driver stops taking input past a limit.
    pub fn store_inflight(&self) -> usize {
        self.store_inflight
    }

    /// Set when the store failed; the server must stop.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    fn connected(&mut self, conn: ConnId, outbox: Outbox, peer: String) {
        let mut hello = String::new();
        if self.shutting_down {
            reply::bye(&mut hello, ByeCode::SHUTDOWN, "the server is stopping");
            outbox.abort_with(Chunk::Owned(hello.into_bytes()));
            return;
        }
        reply::line(
            &mut hello,
            "HELLO",
            &format!(
                "chatd {} Welcome! Type HELP for commands; REGISTER <name> <password> then LOGIN <name> <password>.",
                self.settings.version
            ),
        );
        let _ = outbox.push(Chunk::Owned(hello.into_bytes()));
        log::info!("connection {conn} from {peer}");
        self.conns.insert(
            conn,
            Conn {
                outbox,
                peer,
                state: ConnState::Guest,
                busy: false,
                deferred: VecDeque::new(),
                slots: VecDeque::new(),
                closing: false,
            },
        );
    }

    fn input(&mut self, conn: ConnId, input: Input) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        if c.busy {
            c.deferred.push_back(input);
            return;
        }
        self.process(conn, input);
    }

    /// Runs one unit of input: the checks of the command table, in the order the spec gives, then the
    /// command.
    fn process(&mut self, conn: ConnId, input: Input) {
        let line = match input {
            Input::TooLong => {
                return self.refuse(
                    conn,
                    None,
                    "*",
                    Code::LINE_TOO_LONG,
                    "line exceeds 4096 bytes; it was discarded",
                )
            }
            Input::Line(bytes) => match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => {
                    return self.refuse(
                        conn,
                        None,
                        "*",
                        Code::BAD_ENCODING,
                        "line is not valid UTF-8",
                    )
                }
            },
        };
        let head = match split_head(&line) {
            Ok(Some(h)) => h,
            Ok(None) => {
                // A blank line is no command: no reply, but its credit comes back.
                if let Some(c) = self.conns.get(&conn) {
                    c.outbox.release_credits(1);
                }
                return;
            }
            Err(r) => return self.refuse(conn, r.label.as_deref(), r.command, r.code, &r.text),
        };
        let label = head.label.map(str::to_owned);
        let verb = head.verb;
        let logged_in = self.conns.get(&conn).is_some_and(|c| c.key().is_some());
        if verb.needs_login() && !logged_in {
            return self.refuse(
                conn,
                label.as_deref(),
                verb.name(),
                Code::NOT_LOGGED_IN,
                "log in first: LOGIN <name> <password>",
            );
        }
        if verb.spec().only_logged_out && logged_in {
            return self.refuse(
                conn,
                label.as_deref(),
                verb.name(),
                Code::ALREADY_LOGGED_IN,
                "this connection is logged in; LOGOUT first",
            );
        }
        match verb.parse_args(head.rest) {
            Err(Refusal(code, text)) => {
                self.refuse(conn, label.as_deref(), verb.name(), code, &text)
            }
            Ok(command) => self.execute(conn, label, command),
        }
    }

    fn execute(&mut self, conn: ConnId, label: Option<String>, command: Command) {
        match command {
            Command::Register { name, password } => self.register(conn, label, name, password),
            Command::Login { name, password } => self.login(conn, label, name, password),
            Command::Logout => self.logout(conn, label),
            Command::Quit { reason } => self.quit(conn, label, reason),
            Command::Help { topic } => self.help(conn, label, topic),
            Command::Ping { token } => self.ping(conn, label, token),
            Command::Users => self.users(conn, label),
            Command::Msg { to, text } => self.send_direct(conn, label, vec![to], text, Verb::Msg),
            Command::Group { to, text } => self.send_direct(conn, label, to, text, Verb::Group),
            Command::All { text } => self.send_all(conn, label, text),
            Command::History {
                with,
                count,
                cursor,
            } => self.history(conn, label, with, count, cursor),
            Command::Friend(op) => self.friend(conn, label, op),
        }
    }

    /// The account key a connection is logged in as.
    fn account_of(&self, conn: ConnId) -> Option<String> {
        self.conns
            .get(&conn)
            .and_then(|c| c.key())
            .map(str::to_owned)
    }

    // ----- replies and ordering -----

    /// Sends a FAIL reply as a command's final answer.
    fn refuse(&mut self, conn: ConnId, label: Option<&str>, command: &str, code: Code, text: &str) {
        let mut out = String::new();
        reply::fail(&mut out, label, command, code, text);
        self.answer(conn, out);
    }

    /// A command's complete answer (one final line, maybe data lines before it).
    fn answer(&mut self, conn: ConnId, text: String) {
        self.push_slot(
            conn,
            Slot {
                ticket: None,
                text,
                finals: 1,
                close_after: false,
            },
        );
    }

    /// Reserves the next place in the connection's reply order for a job's result.
    fn reserve(&mut self, conn: ConnId, ticket: Ticket, finals: usize) {
        self.push_slot(
            conn,
            Slot {
                ticket: Some(ticket),
                text: String::new(),
                finals,
                close_after: false,
            },
        );
    }

    fn push_slot(&mut self, conn: ConnId, slot: Slot) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.slots.is_empty() && slot.ticket.is_none() {
            // The common case, nothing waiting before it: straight out, no queue.
            return self.emit(conn, slot);
        }
        c.slots.push_back(slot);
        self.flush_slots(conn);
    }

    /// Fills the slot reserved for `ticket` and sends every ready slot at the front.
    fn fill(&mut self, conn: ConnId, ticket: Ticket, text: String) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(s) = c.slots.iter_mut().find(|s| s.ticket == Some(ticket)) {
            s.ticket = None;
            s.text = text;
        }
        self.flush_slots(conn);
    }

    /// Sends the ready slots at the front of the queue, as one chunk.
    fn flush_slots(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut merged: Option<Slot> = None;
        while c.slots.front().is_some_and(|s| s.ticket.is_none()) {
            let s = c.slots.pop_front().expect("front exists");
            let close = s.close_after;
            match &mut merged {
                None => merged = Some(s),
                Some(m) => {
                    m.text.push_str(&s.text);
                    m.finals += s.finals;
                    m.close_after |= s.close_after;
                }
            }
            if close {
                c.slots.clear();
                break;
            }
        }
        if c.slots.is_empty() {
            // An idle connection keeps no queue.
            c.slots = VecDeque::new();
        }
        if let Some(m) = merged {
            self.emit(conn, m);
        }
    }

    /// Queues a ready slot's text on the connection, gives back its credits, closes after QUIT.
    fn emit(&mut self, conn: ConnId, slot: Slot) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        // The limit is checked before queueing (see Outbox::push), so one large answer (a
        // HISTORY page, the offline backlog) still reaches a client that reads.
        if !slot.text.is_empty() && c.outbox.push(Chunk::Owned(slot.text.into_bytes())).is_err() {
            self.overflowed.push(conn);
        }
        c.outbox.release_credits(slot.finals);
        if slot.close_after {
            c.outbox.close();
        }
    }

    /// Queues an unsolicited line on every logged-in connection of account `key`; returns how many
    /// connections that is.
    fn push_to_account(&mut self, key: &str, chunk: &Chunk) -> usize {
        fan_out(
            &self.accounts,
            &self.conns,
            &mut self.overflowed,
            std::iter::once(key),
            chunk,
            None,
        )
    }

    /// Disconnects every client whose outbox overflowed during this event.
    fn reap_overflowed(&mut self) {
        while let Some(conn) = self.overflowed.pop() {
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            log::warn!(
                "connection {conn} from {} is not reading; disconnecting it",
                c.peer
            );
            let mut bye = String::new();
            reply::bye(
                &mut bye,
                ByeCode::SLOW_CONSUMER,
                "you were not reading your messages; disconnected",
            );
            c.outbox.abort_with(Chunk::Owned(bye.into_bytes()));
            self.disconnected(conn);
        }
    }

    // ----- jobs -----

    fn ticket(&mut self) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    fn store(&mut self, op: StoreOp, then: Waiting) -> Ticket {
        let ticket = self.ticket();
        self.jobs.push(Job::Store(StoreJob { ticket, op }));
        self.waiting.insert(ticket, then);
        self.store_inflight += 1;
        ticket
    }

    /// Queues a hash job, or None when too many are queued.
    fn hash(&mut self, job: HashJob, then: Waiting) -> Option<Ticket> {
        if self.hashing >= self.settings.hash_queue {
            return None;
        }
        self.hashing += 1;
        let ticket = self.ticket();
        self.jobs.push(Job::Hash(ticket, job));
        self.waiting.insert(ticket, then);
        Some(ticket)
    }

    fn stored(&mut self, ticket: Ticket, reply: StoreReply) {
        let Some(w) = self.waiting.remove(&ticket) else {
            return;
        };
        match (w, reply) {
            (Waiting::RegisterStored { conn, label, name }, _) => {
                self.register_stored(conn, ticket, label, name)
            }
            (Waiting::Backlog { conn, key }, StoreReply::Backlog(msgs)) => {
                self.backlog(conn, ticket, key, msgs)
            }
            (Waiting::Message(sent), _) => self.message_stored(ticket, *sent),
            (Waiting::History { conn, label, name }, StoreReply::History(page)) => {
                self.history_read(conn, ticket, label, name, page)
            }
            (Waiting::Friend(change), _) => self.friend_stored(ticket, *change),
            (Waiting::Quiet, _) => {}
            (w, r) => self.internal_error(ticket, w, &format!("unexpected store reply {r:?}")),
        }
    }

    fn hashed(&mut self, ticket: Ticket, outcome: HashOutcome) {
        let Some(w) = self.waiting.remove(&ticket) else {
            return;
        };
        match (w, outcome) {
            (Waiting::RegisterHash { conn, label, key }, HashOutcome::Hashed(phc)) => {
                self.register_hashed(conn, ticket, label, key, phc)
            }
            (Waiting::LoginVerify { conn, label, key }, HashOutcome::Verified(ok)) => {
                self.login_verified(conn, ticket, label, key, ok)
            }
            (w, outcome) => {
                if let Waiting::RegisterHash { key, .. } = &w {
                    self.accounts.remove(key);
                }
                self.internal_error(ticket, w, &format!("hashing: {outcome:?}"));
            }
        }
    }

    /// Logs an internal failure and answers the waiting command with INTERNAL_ERROR.
    fn internal_error(&mut self, ticket: Ticket, w: Waiting, detail: &str) {
        log::error!("internal error: {detail}");
        let (conn, label, verb) = match w {
            Waiting::RegisterHash { conn, label, .. }
            | Waiting::RegisterStored { conn, label, .. } => (conn, label, "REGISTER"),
            Waiting::LoginVerify { conn, label, .. } => (conn, label, "LOGIN"),
            Waiting::History { conn, label, .. } => (conn, label, "HISTORY"),
            Waiting::Backlog { conn, .. } => {
                self.set_busy(conn, false);
                return self.fill(conn, ticket, String::new());
            }
            Waiting::Message(s) => (s.conn, s.label, s.verb.name()),
            Waiting::Friend(c) => (c.conn, c.label, "FRIEND"),
            Waiting::Quiet => return,
        };
        let mut out = String::new();
        reply::fail(
            &mut out,
            label.as_deref(),
            verb,
            Code::INTERNAL_ERROR,
            "the server failed; it has been logged",
        );
        self.set_busy(conn, false);
        self.fill(conn, ticket, out);
    }

    /// Marks a connection busy (its input waits) or not; leaving busy runs the waiting input.
    fn set_busy(&mut self, conn: ConnId, busy: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.busy = busy;
        if busy {
            return;
        }
        while let Some(c) = self.conns.get_mut(&conn) {
            if c.busy || c.closing {
                break;
            }
            let Some(input) = c.deferred.pop_front() else {
                c.deferred = VecDeque::new();
                break;
            };
            self.process(conn, input);
        }
    }

    // ----- connection life -----

    fn disconnected(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        c.outbox.close();
        if let ConnState::LoggedIn(key) = c.state {
            self.detach(conn, &key);
        }
        log::info!("connection {conn} from {} closed", c.peer);
    }

    /// Removes a logged-in connection from its account; the last one takes the account offline.
    fn detach(&mut self, conn: ConnId, key: &str) {
        let Some(acct) = self.accounts.get_mut(key) else {
            return;
        };
        acct.conns.retain(|c| *c != conn);
        if acct.conns.is_empty() {
            self.online.remove(key);
            log::info!("{} is offline", acct.name);
            self.announce_presence(key, false);
        }
    }

    /// Tells the online friends of `key` that it came online or went offline.
    fn announce_presence(&mut self, key: &str, online: bool) {
        let Some(acct) = self.accounts.get(key) else {
            return;
        };
        let mut line = String::new();
        reply::line(
            &mut line,
            "PRESENCE",
            &format!(
                "{} {}",
                acct.name,
                if online { "ONLINE" } else { "OFFLINE" }
            ),
        );
        let chunk = Chunk::Shared(Arc::from(line.into_bytes()));
        let friends: Vec<String> = acct
            .friends
            .iter()
            .filter(|(k, s)| **s == FriendState::Friends && self.online.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for f in friends {
            self.push_to_account(&f, &chunk);
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        let mut bye = String::new();
        reply::bye(&mut bye, ByeCode::SHUTDOWN, "the server is stopping");
        let chunk = Chunk::Shared(Arc::from(bye.into_bytes()));
        for c in self.conns.values_mut() {
            c.closing = true;
            c.outbox.push_unbounded(chunk.clone());
            c.outbox.close();
        }
    }
}

/// Queues `chunk` on every logged-in connection of each account in `keys`, sharing the bytes;
/// returns the number of connections (`skip` counted, but not sent to: its copy goes after the
/// command's own reply). A free function over the fields it needs, so a broadcast can walk the
/// online set without copying it.
fn fan_out<'a>(
    accounts: &HashMap<String, Account>,
    conns: &HashMap<ConnId, Conn>,
    overflowed: &mut Vec<ConnId>,
    keys: impl Iterator<Item = &'a str>,
    chunk: &Chunk,
    skip: Option<ConnId>,
) -> usize {
    let mut n = 0;
    for key in keys {
        let Some(acct) = accounts.get(key) else {
            continue;
        };
        for conn in &acct.conns {
            if Some(*conn) == skip {
                n += 1;
                continue;
            }
            if let Some(c) = conns.get(conn) {
                if c.outbox.push(chunk.clone()).is_err() {
                    overflowed.push(*conn);
                }
                n += 1;
            }
        }
    }
    n
}

/// How a stored message's addressees are shown on the wire.
fn recipients(to: &To) -> Recipients<'_> {
    match to {
        To::User(u) => Recipients::User(u),
        To::Group(g) => Recipients::Group(g),
        To::All => Recipients::All,
    }
}
