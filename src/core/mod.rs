//! The server's rules as a state machine, with no IO.
//!
//! [`Core::handle`] takes one [`Event`] (a connection opened, a line arrived, a commit finished, a
//! password hash finished, ...) and the current time, and answers with effects: bytes queued on
//! connections' [`Outbox`]es (which never blocks) and [`Job`]s for the store and the hashing pool,
//! whose results come back later as events. The network shell in `net` drives it in production;
//! tests and fuzzers drive it directly with an in-memory store.
//!
//! How it is laid out:
//! - `commands`: the command table. One row per command: the state it needs, whether it waits for
//!   the connection's earlier commands, its help text and its handler. The checks of the table run
//!   once, in `Core::process`, before any handler.
//! - one file per group of commands, each holding its handlers and what they do when their store or
//!   hash result comes back (a closure given with the job): `session` (REGISTER, LOGIN, LOGOUT,
//!   QUIT, and the login path LOGIN and RESUME share), `messaging` (MSG, GROUP, ALL), `history`,
//!   `friends`, `info` (HELP, PING, USERS), `tokens` (TOKEN, RESUME, TOKENS, REVOKE),
//!   `account` (PASSWORD, UNREGISTER), `blocks` (BLOCK, UNBLOCK, BLOCKS, DMS), `status` (AWAY,
//!   WHOIS, and last seen);
//! - `entropy`: where the random bits of device tokens come from;
//! - `order`: the reply order of a connection, and [`Req`], the command being answered;
//! - `out`: where typed server lines become bytes for a connection.
//!
//! Ordering rules that the rest of the design leans on:
//! - Replies to one connection leave in the order of its commands, even when a later command
//!   finishes first: each command owns a slot in the connection's reply order (`order`).
//! - Nothing a command changes is visible to others before it is durable: a message is delivered,
//!   every push caused by a command is sent, and every `OK` is sent, only when the commit that makes
//!   it true has finished.
//! - A command sees the state every earlier command of its connection left: while a connection waits
//!   for a password hash (LOGIN, REGISTER) or for its login's backlog, its later lines wait; QUIT and
//!   LOGOUT wait until every earlier command of the connection is answered.
//! - A store read sees every write sent to the store before it, so a LOGIN's backlog read sees every
//!   message queued for the account before it.

mod account;
mod blocks;
mod commands;
mod friends;
mod history;
mod info;
mod messaging;
mod order;
mod out;
mod session;
mod status;
mod tokens;

pub mod entropy;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

pub use self::commands::{Needs, Row, COMMANDS};
pub use self::order::Req;

use self::entropy::{Entropy, Rng};
use self::order::Slots;
use self::tokens::Token;
use crate::auth::{HashJob, HashOutcome};
use crate::outbox::{Chunk, Outbox};
use crate::proto::code::{ByeCode, Code};
use crate::proto::command::split_head;
use crate::proto::name::Key;
use crate::proto::server_line::{Presence, Recipient, ServerLine};
use crate::store::worker::{StoreJob, Ticket};
use crate::store::{
    FriendState, MsgId, Profile, Snapshot, StoreError, StoreOp, StoreReply, To, TokenId,
};

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
        /// The new connection.
        conn: ConnId,
        /// Where its lines go.
        outbox: Outbox,
        /// Its address, for the log.
        peer: String,
    },
    /// One unit of input from a connection (the reader holds one credit for it).
    Input {
        /// The connection.
        conn: ConnId,
        /// What it sent.
        input: Input,
    },
    /// The connection is gone (closed by the client, by an error, or after the core closed it).
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// A batch of store ops finished (each result with its op's ticket), or the store failed.
    Stored(Result<Vec<(Ticket, StoreReply)>, StoreError>),
    /// A password hash finished.
    Hashed {
        /// The job's ticket.
        ticket: Ticket,
        /// Its result.
        outcome: HashOutcome,
    },
    /// The server is stopping: tell everyone and close every connection.
    Shutdown,
}

/// Work the core hands to the outside.
#[derive(Debug)]
pub enum Job {
    /// An op for the store worker.
    Store(StoreJob),
    /// A password hash for the hashing pool.
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
    /// Where device tokens' random bits come from.
    pub entropy: Entropy,
}

struct Account {
    /// Name as registered.
    name: String,
    /// None while the REGISTER that created it is still hashing.
    phc: Option<Arc<str>>,
    /// Other account -> this account's view of the edge.
    friends: HashMap<Key, FriendState>,
    /// Messages waiting in the offline backlog.
    pending: u32,
    /// Logged-in connections.
    conns: Vec<ConnId>,
    /// Its device tokens (expired ones stay until the next TOKEN or REVOKE of the account removes
    /// them).
    tokens: Vec<TokenId>,
    /// The accounts it blocks.
    blocks: HashSet<Key>,
    /// The accounts that block it.
    blocked_by: HashSet<Key>,
    /// Its settings and status.
    profile: Profile,
    /// The last-seen time as written to the store.
    seen_written: Option<i64>,
}

impl Account {
    /// A new account, with nothing but its name and hash.
    fn new(name: String, phc: Option<Arc<str>>) -> Account {
        Account {
            name,
            phc,
            friends: HashMap::new(),
            pending: 0,
            conns: Vec::new(),
            tokens: Vec::new(),
            blocks: HashSet::new(),
            blocked_by: HashSet::new(),
            profile: Profile::default(),
            seen_written: None,
        }
    }
}

enum ConnState {
    Guest,
    LoggedIn(Key),
}

/// Why a connection's input waits in `deferred` instead of running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Nothing: input runs as it comes.
    Free,
    /// A command's job (a password hash, a login's backlog) decides the state that later input
    /// must see; the command releases the hold.
    Job,
    /// A command that must run after every earlier command is answered (QUIT, LOGOUT) waits at the
    /// head of `deferred` until the reply order is empty.
    Drain,
    /// The connection's account is being deleted from another connection: nothing it sends runs,
    /// and it is closed once the deletion is committed.
    Frozen,
}

struct Conn {
    outbox: Outbox,
    peer: String,
    state: ConnState,
    hold: Hold,
    deferred: VecDeque<Input>,
    slots: Slots,
    /// QUIT was answered or the server closed it; further input is ignored.
    closing: bool,
    /// The device token this connection is on: the one it logged in with (RESUME) or issued
    /// (TOKEN), whichever came last (spec 4.13).
    device_token: Option<TokenId>,
}

impl Conn {
    fn key(&self) -> Option<&Key> {
        match &self.state {
            ConnState::LoggedIn(k) => Some(k),
            ConnState::Guest => None,
        }
    }
}

/// What to do with a store op's result.
type AfterStore = Box<dyn FnOnce(&mut Core, StoreReply) + Send>;
/// What to do with a hash job's result.
type AfterHash = Box<dyn FnOnce(&mut Core, HashOutcome) + Send>;

/// A job's continuation, kept until its result comes back.
enum Then {
    Store(AfterStore),
    Hash(AfterHash),
}

/// The server state machine. See the module documentation.
pub struct Core {
    settings: Settings,
    accounts: HashMap<Key, Account>,
    /// Accounts with at least one logged-in connection, sorted for USERS.
    online: BTreeSet<Key>,
    conns: HashMap<ConnId, Conn>,
    next_id: MsgId,
    next_ticket: Ticket,
    waiting: HashMap<Ticket, Then>,
    hashing: usize,
    store_inflight: usize,
    /// Every device token, by id.
    tokens: HashMap<TokenId, Token>,
    /// The names of deleted accounts, by key (spec 4.18: never registered again).
    retired: HashMap<Key, String>,
    rng: Rng,
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
            accounts.insert(Key::of(&a.name), Account::new(a.name, Some(a.phc.into())));
        }
        for (a, b) in snapshot.blocks {
            let (a, b) = (Key::from_folded(a), Key::from_folded(b));
            if accounts.contains_key(&a) && accounts.contains_key(&b) {
                if let Some(acct) = accounts.get_mut(&a) {
                    acct.blocks.insert(b.clone());
                }
                if let Some(acct) = accounts.get_mut(&b) {
                    acct.blocked_by.insert(a);
                }
            }
        }
        for (user, profile) in snapshot.profiles {
            if let Some(acct) = accounts.get_mut(user.as_str()) {
                acct.seen_written = profile.last_seen_ms;
                acct.profile = profile;
            }
        }
        let mut tokens = HashMap::with_capacity(snapshot.tokens.len());
        for t in snapshot.tokens {
            let key = Key::from_folded(t.user.clone());
            if let Some(acct) = accounts.get_mut(&key) {
                acct.tokens.push(t.id);
                tokens.insert(t.id, Token::from_record(key, t));
            }
        }
        for (a, b, state) in snapshot.friendships {
            if let Some(acct) = accounts.get_mut(a.as_str()) {
                acct.friends.insert(Key::of(&b), state);
            }
        }
        for (user, n) in snapshot.pending_counts {
            if let Some(acct) = accounts.get_mut(user.as_str()) {
                acct.pending = n;
            }
        }
        let retired = snapshot
            .retired
            .into_iter()
            .map(|r| (Key::of(&r.name), r.name))
            .collect();
        let rng = Rng::new(settings.entropy);
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
            tokens,
            retired,
            rng,
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
                    if let Some(Then::Store(then)) = self.waiting.remove(&ticket) {
                        then(self, reply);
                    }
                }
            }
            Event::Stored(Err(e)) => {
                log::error!("{e}; stopping, since memory and disk may now differ");
                self.fatal = Some(e.to_string());
                self.shutdown();
            }
            Event::Hashed { ticket, outcome } => {
                self.hashing = self.hashing.saturating_sub(1);
                if let Some(Then::Hash(then)) = self.waiting.remove(&ticket) {
                    then(self, outcome);
                }
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
        if self.shutting_down {
            let bye = ServerLine::Bye {
                code: ByeCode::SHUTDOWN,
                text: "the server is stopping",
            };
            outbox.abort_with(Chunk::Owned(bye.to_bytes()));
            return;
        }
        let hello = ServerLine::Hello {
            software: "chatd",
            version: self.settings.version,
            text: "Welcome! Type HELP for commands; REGISTER <name> <password> then LOGIN <name> <password>.",
        };
        let _ = outbox.push(Chunk::Owned(hello.to_bytes()));
        log::info!("connection {conn} from {peer}");
        self.conns.insert(
            conn,
            Conn {
                outbox,
                peer,
                state: ConnState::Guest,
                hold: Hold::Free,
                deferred: VecDeque::new(),
                slots: Slots::default(),
                closing: false,
                device_token: None,
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
        if c.hold != Hold::Free {
            c.deferred.push_back(input);
            return;
        }
        self.process(conn, input);
    }

    /// Runs one unit of input: the checks of the command table, in the order the spec gives, then the
    /// command's handler.
    fn process(&mut self, conn: ConnId, input: Input) {
        let line = match input {
            Input::TooLong => {
                let text = format!(
                    "line exceeds {} bytes; it was discarded",
                    crate::config::MAX_LINE_BYTES
                );
                return self.refuse(Req::new(conn, None, None), Code::LINE_TOO_LONG, &text);
            }
            Input::Line(bytes) => match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => {
                    return self.refuse(
                        Req::new(conn, None, None),
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
            Err(r) => {
                let req = Req::new(conn, r.label.map(String::into_boxed_str), None);
                return self.refuse(req, r.code, &r.text);
            }
        };
        let row = commands::row(head.verb);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if row.barrier && !c.slots.is_empty() {
            // QUIT and LOGOUT change what the connection is; they wait until every earlier command
            // of the connection has its answer, so those run with the state they were sent in.
            c.hold = Hold::Drain;
            c.deferred.push_front(Input::Line(line.into_bytes()));
            return;
        }
        let logged_in = c.key().is_some();
        let req = Req::new(conn, head.label.map(Box::from), Some(head.verb));
        match row.state {
            Needs::LoggedIn if !logged_in => {
                return self.refuse(
                    req,
                    Code::NOT_LOGGED_IN,
                    "log in first: LOGIN <name> <password>",
                )
            }
            Needs::LoggedOut if logged_in => {
                return self.refuse(
                    req,
                    Code::ALREADY_LOGGED_IN,
                    "this connection is logged in; LOGOUT first",
                )
            }
            _ => {}
        }
        match head.verb.parse_args(head.rest) {
            Err(r) => self.refuse(req, r.0, &r.1),
            Ok(command) => (row.run)(self, req, command),
        }
    }

    /// The account a connection is logged in as.
    fn account_of(&self, conn: ConnId) -> Option<Key> {
        self.conns.get(&conn).and_then(|c| c.key()).cloned()
    }

    /// True when a block stands between two accounts: either blocks the other.
    fn barred(&self, a: &Key, b: &Key) -> bool {
        self.accounts
            .get(a)
            .is_some_and(|x| x.blocks.contains(b) || x.blocked_by.contains(b))
    }

    /// True when `a` and `b` are friends.
    fn are_friends(&self, a: &Key, b: &Key) -> bool {
        self.accounts
            .get(a)
            .is_some_and(|x| x.friends.get(b) == Some(&FriendState::Friends))
    }

    /// Queues an unsolicited line on every logged-in connection of `key`; returns how many
    /// connections that is.
    fn push_to_account(&mut self, key: &Key, chunk: &Chunk) -> usize {
        fan_out(
            &self.accounts,
            &self.conns,
            &mut self.overflowed,
            std::iter::once(key),
            chunk,
            None,
        )
    }

    /// Closes a connection on the server's own account (its login was revoked): `BYE <code>` after
    /// whatever is already queued for it, then the connection ends as if the client had left.
    fn close_with_bye(&mut self, conn: ConnId, code: ByeCode, text: &str) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        log::info!("closing connection {conn} from {}: {text}", c.peer);
        c.outbox
            .push_unbounded(Chunk::Owned(ServerLine::Bye { code, text }.to_bytes()));
        self.disconnected(conn);
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
            let bye = ServerLine::Bye {
                code: ByeCode::SLOW_CONSUMER,
                text: "you were not reading your messages; disconnected",
            };
            c.outbox.abort_with(Chunk::Owned(bye.to_bytes()));
            self.disconnected(conn);
        }
    }

    // ----- jobs -----

    fn ticket(&mut self) -> Ticket {
        let t = self.next_ticket;
        self.next_ticket += 1;
        t
    }

    /// Sends `op` to the store; `then` runs with its result.
    fn store(&mut self, op: StoreOp, then: impl FnOnce(&mut Core, StoreReply) + Send + 'static) {
        let ticket = self.ticket();
        self.jobs.push(Job::Store(StoreJob { ticket, op }));
        self.waiting.insert(ticket, Then::Store(Box::new(then)));
        self.store_inflight += 1;
    }

    /// True when the hashing queue is full: a command that needs a hash answers SERVER_BUSY.
    fn hash_full(&self) -> bool {
        self.hashing >= self.settings.hash_queue
    }

    /// Queues a hash job whose result goes to `then`. The caller checked [`Core::hash_full`].
    fn hash(&mut self, job: HashJob, then: impl FnOnce(&mut Core, HashOutcome) + Send + 'static) {
        self.hashing += 1;
        let ticket = self.ticket();
        self.jobs.push(Job::Hash(ticket, job));
        self.waiting.insert(ticket, Then::Hash(Box::new(then)));
    }

    /// Logs an internal failure and answers the command with INTERNAL_ERROR.
    fn internal_error(&mut self, req: Req, detail: &str) {
        log::error!("internal error: {detail}");
        self.release(req.conn);
        self.refuse(
            req,
            Code::INTERNAL_ERROR,
            "the server failed; it has been logged",
        );
    }

    /// Holds a connection's later input until [`Core::release`] (see [`Hold::Job`]).
    fn hold(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.hold = Hold::Job;
        }
    }

    /// Ends a connection's hold and runs the input that waited.
    fn release(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.hold == Hold::Job {
            c.hold = Hold::Free;
        }
        self.run_deferred(conn);
    }

    /// Runs waiting input until the connection is held again or nothing is left.
    fn run_deferred(&mut self, conn: ConnId) {
        while let Some(c) = self.conns.get_mut(&conn) {
            if c.hold != Hold::Free || c.closing {
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
    fn detach(&mut self, conn: ConnId, key: &Key) {
        let Some(acct) = self.accounts.get_mut(key) else {
            return;
        };
        acct.conns.retain(|c| *c != conn);
        if acct.conns.is_empty() {
            self.online.remove(key);
            log::info!("{} is offline", acct.name);
            self.saw(key, false);
            self.announce_presence(key, false);
        }
    }

    /// Tells the online friends of `key` that it came online or went offline.
    fn announce_presence(&mut self, key: &Key, online: bool) {
        let Some(acct) = self.accounts.get(key) else {
            return;
        };
        let line = ServerLine::Presence {
            name: &acct.name,
            presence: Presence::of(online),
        };
        let chunk = out::shared(&line);
        let friends: Vec<Key> = acct
            .friends
            .iter()
            .filter(|(k, s)| **s == FriendState::Friends && self.online.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for f in &friends {
            self.push_to_account(f, &chunk);
        }
    }

    fn shutdown(&mut self) {
        // Whoever is online is last seen now; after a storage failure nothing more is written.
        if !self.shutting_down && self.fatal.is_none() {
            let online: Vec<Key> = self.online.iter().cloned().collect();
            for key in &online {
                self.saw(key, true);
            }
        }
        self.shutting_down = true;
        let chunk = out::shared(&ServerLine::Bye {
            code: ByeCode::SHUTDOWN,
            text: "the server is stopping",
        });
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
    accounts: &HashMap<Key, Account>,
    conns: &HashMap<ConnId, Conn>,
    overflowed: &mut Vec<ConnId>,
    keys: impl Iterator<Item = &'a Key>,
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
fn recipient(to: &To) -> Recipient<'_> {
    match to {
        To::User(u) => Recipient::User(u),
        To::Group(g) => Recipient::Group(g.iter().map(String::as_str).collect()),
        To::All => Recipient::All,
    }
}
