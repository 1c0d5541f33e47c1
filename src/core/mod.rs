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
//!   WHOIS, and last seen), `rooms` (the room state, JOIN, PART, ROOMS, MEMBERS, TOPIC, ROOM),
//!   `moderation` (INVITE, KICK, BAN, UNBAN, ROLE), `read` (READ, and what a login reports of
//!   rooms), `compress` (COMPRESS, and a connection whose DEFLATE stream breaks), `direct` (DIRECT:
//!   offers of direct sessions between clients, which the server introduces and never carries),
//!   `admin` (the operators' ANNOUNCE, SUSPEND, UNSUSPEND, KILL, STATS and ADDUSER);
//! - `entropy`: where the random bits of device tokens come from;
//! - `idle`: what the clock does by itself: silent connections are probed, then closed;
//! - `guard`: login protection: hashes per address, failed-login back-off, registrations per
//!   address; `quota`: what one account may send and store; `bucket`: the token bucket both count
//!   with;
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
mod admin;
mod blocks;
mod bucket;
mod commands;
mod compress;
mod direct;
mod friends;
mod guard;
mod history;
mod idle;
mod info;
mod messaging;
mod moderation;
mod order;
mod out;
mod quota;
mod read;
mod remote;
mod rooms;
mod session;
mod status;
mod stream;
mod tokens;

pub mod entropy;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

pub use self::commands::{Needs, Row, COMMANDS};
pub use self::order::Req;

use self::entropy::{Entropy, Rng};
use self::guard::Guard;
use self::order::Slots;
use self::quota::{Inbox, Quota};
use self::tokens::Token;
use crate::auth::{Cancel, HashJob, HashOutcome, HashTask, Phc};
use crate::metrics::Metrics;
use crate::outbox::{Chunk, Outbox};
use crate::peer::{AddrKey, Peer};
use crate::proto::code::{ByeCode, Code};
use crate::proto::command::split_head;
use crate::proto::name::{Key, Skeleton};
use crate::proto::room::RoomKey;
use crate::proto::server_line::{Presence, Recipient, ServerLine};
use crate::store::worker::{Report, StoreJob, Ticket};
use crate::store::{
    FriendState, MsgId, Notice, Profile, ReadOp, RoomId, Snapshot, StoreOp, StoreReply, Suspension,
    To, TokenId,
};
use crate::tally::Tally;

use self::rooms::Room;

/// Identifies a connection for the life of the process.
pub type ConnId = u64;

/// The connection table. Every command looks its connection up several times (its state, its reply
/// order, its outbox), and SipHash took about 140 instructions a lookup in the profile of direct
/// messages. The server numbers connections itself (0, 1, 2, ...), so no client can choose ids that
/// collide, and SipHash's defence against chosen keys is not needed here; maps keyed by names keep it.
/// The connection table. Entries are boxed: a table keeps room for up to twice its entries, and
/// an empty bucket then costs a pointer instead of a whole `Conn`.
type ConnMap = HashMap<ConnId, Box<Conn>, BuildHasherDefault<ConnIdHasher>>;

/// Every account. Entries are boxed for the same reason as the connection table's, and more so:
/// an `Account` is several hundred bytes.
type Accounts = HashMap<Key, Box<Account>>;

/// How many accounts are suspended, for the `accounts_suspended` gauge.
fn suspended_count(accounts: &Accounts) -> i64 {
    accounts
        .values()
        .filter(|a| a.ties().suspended.is_some())
        .count() as i64
}

/// Hashes a connection id (or a job's ticket, also numbered by the server) with one multiplication (Fibonacci hashing): consecutive ids fill the
/// table's buckets evenly (the low bits of the product are a permutation of the id's), and the high
/// bits the table also uses are well mixed.
#[derive(Default)]
struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What a connection's reader hands to the core.
#[derive(Debug)]
pub enum Input {
    /// A complete line (not yet checked as UTF-8).
    Line(Vec<u8>),
    /// A line that passed the length limit and was discarded.
    TooLong,
    /// The connection's DEFLATE stream (after COMPRESS) could not be inflated: nothing more can
    /// be read from it. Needs no credit.
    BadDeflate,
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
        /// Where it comes from: for the log, and for the limits per address.
        peer: Peer,
    },
    /// One unit of input from a connection (the reader holds one credit for it).
    Input {
        /// The connection.
        conn: ConnId,
        /// What it sent.
        input: Input,
    },
    /// Units of input from a connection that were read together, in order, each as if it came
    /// in an [`Event::Input`] of its own (the reader holds one credit for each). One hand-off
    /// between the connection's task and the core for what one read brought, not one a line.
    Inputs {
        /// The connection.
        conn: ConnId,
        /// What it sent.
        inputs: Vec<Input>,
    },
    /// The connection is gone (closed by the client, by an error, or after the core closed it).
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// What the store worker reports: results of store ops (each with its op's ticket), writes
    /// failing or working again, or a fatal error.
    Store(Report),
    /// A password hash finished.
    Hashed {
        /// The job's ticket.
        ticket: Ticket,
        /// Its result.
        outcome: HashOutcome,
    },
    /// The writer of a connection took what was queued, after the core asked to be told (a long
    /// answer waits for room to send its next part, see `stream`).
    Drained {
        /// The connection.
        conn: ConnId,
    },
    /// What another server of a cluster said about who is online there (`--cluster`).
    Bus(BusIn),
    /// Time passed (the driver sends one about every [`TICK_INTERVAL`]): connections that stayed
    /// silent are probed or closed.
    ///
    /// [`TICK_INTERVAL`]: crate::config::TICK_INTERVAL
    Tick,
    /// The server is stopping: tell everyone and close every connection.
    Shutdown,
    /// The operator asks for a consistent copy of the database, written to a new file `to`; the
    /// answer goes to `done` (see `admin`).
    Backup {
        /// Where the copy goes.
        to: std::path::PathBuf,
        /// Who is told how it went.
        done: BackupDone,
    },
}

/// Where the outcome of [`Event::Backup`] goes: what the copy holds, or why there is none.
pub struct BackupDone(pub Box<dyn FnOnce(Result<crate::store::backup::Summary, String>) + Send>);

impl std::fmt::Debug for BackupDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupDone")
    }
}

/// Work the core hands to the outside.
#[derive(Debug)]
pub enum Job {
    /// An op for the store worker, answered in order (see `store::worker`).
    Store(StoreJob),
    /// A read for the store worker's fresh-read queue, answered from what is committed when it is
    /// taken; the core sends one only for a connection with no write in flight.
    Read(Ticket, ReadOp),
    /// A password hash for the hashing pool.
    Hash(Ticket, HashTask),
    /// A word for the other servers of a cluster (only with [`Settings::cluster`]): presence, and
    /// the subscriptions to routed messages. The NATS thread takes each at once; one is lost
    /// (and logged) only if that thread is stuck.
    Bus(BusOut),
}

/// What the core tells the other servers of a cluster directly, outside the log. The NATS thread
/// keeps its subscriptions by these words: an account's routed messages are received while it
/// has a connection here, a room's while one of its members has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusOut {
    /// An account got its first connection on this server, or lost its last one.
    Presence {
        /// The account key.
        key: String,
        /// Online (first connection) or offline (last one gone).
        online: bool,
    },
    /// A room got its first member online on this server, or lost its last one.
    Room {
        /// The room.
        id: RoomId,
        /// Whether the room's messages are wanted here from now on.
        watch: bool,
    },
}

/// Whom a routed message was sent to this node for: what its subject named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTo {
    /// One account (a MSG or GROUP recipient), by key.
    Account(String),
    /// A room's members.
    Room(RoomId),
    /// Everyone online (ALL).
    All,
}

/// What another server of a cluster said (see `cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusIn {
    /// An account got its first connection on `node`, or lost its last one there.
    Presence {
        node: String,
        key: String,
        online: bool,
    },
    /// `node`'s heartbeat, written `age_ms` ago: the node is alive (if that is recent enough).
    Alive { node: String, age_ms: i64 },
    /// `node` deleted its heartbeat: it is stopping, and its users are offline now.
    Gone { node: String },
    /// A message another node committed to the log (the op as the log holds it, with its id),
    /// routed here because this node holds a connection it is for. It may come before or after
    /// the node's index applies the same entry.
    Routed {
        /// What the message's subject named.
        to: RouteTo,
        /// An `AppendMessage` or `AppendRoomMessage`.
        op: StoreOp,
    },
}

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Most hash jobs queued or running; more get SERVER_BUSY.
    pub hash_queue: usize,
    /// A PHC string that no password matches, verified for unknown names.
    pub dummy_phc: Phc,
    /// Server version, shown in HELLO.
    pub version: &'static str,
    /// Where device tokens' random bits come from.
    pub entropy: Entropy,
    /// The limits an operator may set.
    pub limits: Limits,
    /// A node of a cluster: presence changes go out as [`Job::Bus`], and [`Event::Bus`] comes in.
    pub cluster: bool,
    /// Who may use the operator commands, and who may register.
    pub policy: Policy,
    /// Where the core writes its figures (read by STATS and by the metrics endpoint).
    pub metrics: Arc<Metrics>,
    /// No message goes to a recipient before its commit (`--deliver-after-commit`); by default
    /// a server alone delivers a message as it accepts it and acknowledges it after its commit
    /// (spec 6.1).
    pub deliver_after_commit: bool,
}

/// The operator's policy: the admin accounts and whether anyone may register.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Accounts that may use the operator commands (spec 4.40 on).
    pub admins: BTreeSet<Key>,
    /// `REGISTER` is refused with `REGISTRATION_CLOSED`; admins create accounts with `ADDUSER`.
    pub registration_closed: bool,
}

impl Default for Settings {
    /// Settings for tests and tools: a small hashing queue, the default limits, no admin.
    fn default() -> Settings {
        Settings {
            hash_queue: crate::config::DEFAULT_HASH_QUEUE,
            dummy_phc: Phc::parse(""),
            version: env!("CARGO_PKG_VERSION"),
            entropy: Entropy::Os,
            limits: Limits::default(),
            policy: Policy::default(),
            metrics: Arc::default(),
            cluster: false,
            deliver_after_commit: false,
        }
    }
}

/// The operator's limits the core enforces, in the units the core counts in. [`Default`] gives the
/// defaults of `config`; 0 means "no limit" wherever the flag says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Silence (milliseconds) after which a connection is probed; closed after twice as long.
    /// 0: never.
    pub idle_timeout_ms: i64,
    /// Password hashes one address may have queued or running. 0: no limit.
    pub hash_per_address: usize,
    /// Accounts one address may register per hour. 0: no limit.
    pub registrations_per_hour: u64,
    /// Messages (an ALL counts several) one account may send per minute. 0: no limit.
    pub msgs_per_minute: u64,
    /// Bytes one account may have stored per day. 0: no limit.
    pub stored_bytes_per_day: u64,
    /// Messages from one sender that may wait in one offline recipient's inbox. 0: no limit
    /// beyond the inbox's own.
    pub inbox_share: u32,
    /// Friend requests one account may send per hour. 0: no limit.
    pub friend_requests_per_hour: u64,
    /// Most members of one room; JOIN beyond it gets ROOM_FULL.
    pub max_room_members: usize,
    /// Connections that may be compressed at once (COMPRESS). 0: compression is off.
    pub max_compressed: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        use crate::config::*;
        Limits {
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_SECS as i64 * 1000,
            hash_per_address: DEFAULT_HASH_PER_ADDRESS,
            registrations_per_hour: DEFAULT_REGISTRATIONS_PER_HOUR,
            msgs_per_minute: DEFAULT_MSGS_PER_MINUTE,
            stored_bytes_per_day: DEFAULT_STORED_KIB_PER_DAY * 1024,
            inbox_share: DEFAULT_INBOX_SHARE,
            friend_requests_per_hour: DEFAULT_FRIEND_REQUESTS_PER_HOUR,
            max_room_members: DEFAULT_MAX_ROOM_MEMBERS,
            max_compressed: DEFAULT_MAX_COMPRESSED,
        }
    }
}

struct Account {
    /// Name as registered: shares the account key's string when spelled the same
    /// ([`Key::spelled`]).
    name: Arc<str>,
    /// None while the REGISTER that created it is still hashing. In binary, inline: an account
    /// is kept for every registered name.
    phc: Option<Phc>,
    /// Logged-in connections.
    conns: ConnList,
    /// Addresses it logged in from since the server started, most recent last (see `guard`).
    known: Vec<AddrKey>,
    /// When its last connection left, as recorded (`Profile::last_seen_ms`), and as written to
    /// the store.
    seen: Seen,
    /// Rooms it is a member of.
    rooms: BTreeSet<RoomId>,
    /// The rest, which most accounts never have: made on first use (see [`Ties`]).
    ties: Option<Box<Ties>>,
}

/// When an account was last seen (its last connection left), as recorded and as last written to
/// the store: two times in 16 bytes inside every account, where two `Option<i64>` took 32.
/// `i64::MIN`, a time no clock gives, stands for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    last: i64,
    written: i64,
}

impl Seen {
    const NEVER: i64 = i64::MIN;
    const NONE: Seen = Seen {
        last: Seen::NEVER,
        written: Seen::NEVER,
    };

    /// Seen at `ms` as the store holds it.
    fn written_at(ms: Option<i64>) -> Seen {
        let t = ms.unwrap_or(Seen::NEVER);
        Seen {
            last: t,
            written: t,
        }
    }

    fn last(self) -> Option<i64> {
        (self.last != Seen::NEVER).then_some(self.last)
    }

    fn written(self) -> Option<i64> {
        (self.written != Seen::NEVER).then_some(self.written)
    }
}

/// An account's logged-in connections, read as a slice: most accounts have one, kept inline,
/// where a list of its own would be a block on the heap for every logged-in account.
#[derive(Clone, Debug, Default)]
enum ConnList {
    #[default]
    Empty,
    One(ConnId),
    Many(Vec<ConnId>),
}

impl ConnList {
    fn push(&mut self, conn: ConnId) {
        *self = match std::mem::take(self) {
            ConnList::Empty => ConnList::One(conn),
            ConnList::One(first) => ConnList::Many(vec![first, conn]),
            ConnList::Many(mut v) => {
                v.push(conn);
                ConnList::Many(v)
            }
        };
    }

    /// Removes `conn` if it is in the list.
    fn remove(&mut self, conn: ConnId) {
        match self {
            ConnList::One(c) if *c == conn => *self = ConnList::Empty,
            ConnList::Many(v) => {
                v.retain(|c| *c != conn);
                match v[..] {
                    [] => *self = ConnList::Empty,
                    [one] => *self = ConnList::One(one),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

impl<'a> IntoIterator for &'a ConnList {
    type Item = &'a ConnId;
    type IntoIter = std::slice::Iter<'a, ConnId>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl std::ops::Deref for ConnList {
    type Target = [ConnId];

    fn deref(&self) -> &[ConnId] {
        match self {
            ConnList::Empty => &[],
            ConnList::One(c) => std::slice::from_ref(c),
            ConnList::Many(v) => v,
        }
    }
}

/// An account key, hashed and compared by the look of its name ([`Skeleton`]): the name table
/// holds one key per look, and is searched with the key of the name to check. A key is its name
/// with ASCII letters lower-cased, and a skeleton lower-cases first, so a key's skeleton is its
/// name's. The table holds the key alone (shared with the account table), where a map from the
/// skeleton held a string of the skeleton's own beside it; the skeleton is made again when the
/// table hashes or compares, which is at a REGISTER and when the table grows.
#[derive(Clone)]
struct Looks(Key);

impl Looks {
    fn skeleton(&self) -> Skeleton {
        Skeleton::of(self.0.as_str())
    }
}

impl PartialEq for Looks {
    fn eq(&self, other: &Looks) -> bool {
        self.0 == other.0 || self.skeleton() == other.skeleton()
    }
}

impl Eq for Looks {}

impl std::hash::Hash for Looks {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.skeleton().hash(state);
    }
}

/// What an account holds that most accounts never have (friends, blocks, tokens, invitations, an
/// offline backlog, an away message, quota use): kept apart so that an account without any of it
/// costs one pointer for all of it. [`Account::ties`] reads it (empty when never made),
/// [`Account::ties_mut`] makes it on first use; it is not given back once made.
#[derive(Default)]
struct Ties {
    /// Other account -> this account's view of the edge.
    friends: HashMap<Key, FriendState>,
    /// Messages waiting in the offline backlog, and from whom.
    inbox: Inbox,
    /// What it may still send and store (see `quota`).
    quota: Quota,
    /// Its device tokens (expired ones stay until the next TOKEN or REVOKE of the account removes
    /// them).
    tokens: Vec<TokenId>,
    /// The accounts it blocks.
    blocks: HashSet<Key>,
    /// The accounts that block it.
    blocked_by: HashSet<Key>,
    /// Rooms with an invitation for it (an expired one stays until it is purged).
    invited: BTreeSet<RoomId>,
    /// `DMS FRIENDS`: direct messages from friends only (`Profile::friends_only`).
    friends_only: bool,
    /// The away message, if one is set (`Profile::away`).
    away: Option<String>,
    /// Set while an operator has suspended the account (`Profile::suspended`).
    suspended: Option<Suspension>,
}

/// The ties of an account that has none.
static NO_TIES: std::sync::LazyLock<Ties> = std::sync::LazyLock::new(Ties::default);

impl Account {
    /// The name as registered, as a string of its own. Copied as a `str`: `to_string` on the
    /// shared string would go through the formatter, on every message that names its sender.
    fn name(&self) -> String {
        self.name.as_ref().to_owned()
    }

    /// A new account, with nothing but its name and hash.
    fn new(name: Arc<str>, phc: Option<Phc>) -> Account {
        Account {
            name,
            phc,
            conns: ConnList::Empty,
            known: Vec::new(),
            seen: Seen::NONE,
            rooms: BTreeSet::new(),
            ties: None,
        }
    }

    /// Its friends, blocks, tokens, invitations, backlog and settings (all empty if it never had
    /// any).
    fn ties(&self) -> &Ties {
        self.ties.as_deref().unwrap_or(&NO_TIES)
    }

    /// The same, to change: made empty on first use.
    fn ties_mut(&mut self) -> &mut Ties {
        self.ties.get_or_insert_default()
    }

    /// The same, to remove from: `None` when it never had any, so that removing nothing makes
    /// nothing.
    fn ties_if_any(&mut self) -> Option<&mut Ties> {
        self.ties.as_deref_mut()
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
    peer: Peer,
    /// When the connection last had the server's attention: its last line, or the moment its
    /// last answer went out, whichever is later (milliseconds, the core's clock).
    last_heard: i64,
    /// An idle probe was sent and not yet answered.
    probed: bool,
    /// The cancel flag of its password hash in flight, set if it closes first.
    hashing: Option<Cancel>,
    state: ConnState,
    hold: Hold,
    /// Input waiting while the connection is held: made when a line first waits, and given
    /// back once none does (most connections are idle, and most input never waits).
    // Boxed on purpose: 8 bytes in every connection's entry, where the empty ring took 32.
    #[allow(clippy::box_collection)]
    deferred: Option<Box<VecDeque<Input>>>,
    slots: Slots,
    /// QUIT was answered or the server closed it; further input is ignored.
    closing: bool,
    /// The device token this connection is on: the one it logged in with (RESUME) or issued
    /// (TOKEN), whichever came last (spec 4.13).
    device_token: Option<TokenId>,
    /// It logged in with a device token (RESUME), which no password hash slows down: its login and
    /// its going offline are counted in the log's summary rather than written one by one.
    resumed: bool,
    /// COMPRESS DEFLATE was accepted: the connection counts in `Core::compressed`.
    compressed: bool,
}

impl Conn {
    fn key(&self) -> Option<&Key> {
        match &self.state {
            ConnState::LoggedIn(k) => Some(k),
            ConnState::Guest => None,
        }
    }
}

/// The size in bytes of the core's entry for a connection (with its largest pieces: where it comes
/// from, its reply order, its input held back) and for an account (each boxed in its table), as
/// this build lays them out.
pub fn entry_sizes() -> [(&'static str, usize); 6] {
    use std::mem::size_of;
    [
        ("core_conn", size_of::<Conn>()),
        ("core_conn_peer", size_of::<Peer>()),
        ("core_conn_reply_order", size_of::<Slots>()),
        (
            "core_conn_deferred",
            size_of::<Option<Box<VecDeque<Input>>>>(),
        ),
        ("core_account", size_of::<Account>()),
        ("core_account_ties", size_of::<Ties>()),
    ]
}

/// Ticks of message counts kept for the messages-per-second figure: one minute's worth.
const RATE_WINDOW: usize = 61;

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
    accounts: Accounts,
    /// The look of every account's name (see [`Skeleton`]), to refuse a name too like a taken one.
    skeletons: HashSet<Looks>,
    /// Accounts with at least one logged-in connection, sorted for USERS.
    online: BTreeSet<Key>,
    /// In a cluster: accounts online on other nodes, and on which.
    remote_online: BTreeMap<Key, HashSet<String>>,
    /// In a cluster: the other nodes, their heartbeats and the accounts they say are online there.
    nodes: HashMap<String, remote::NodeSeen>,
    /// In a cluster: routed delivery (see `remote`).
    routes: remote::Routes,
    /// Connections compressed now (COMPRESS), against `Limits::max_compressed`.
    compressed: usize,
    /// Direct-session offers waiting for their answer (see `direct`).
    offers: direct::Offers,
    conns: ConnMap,
    /// Every room, by number.
    rooms: HashMap<RoomId, Room>,
    /// Room numbers by folded name.
    room_names: HashMap<RoomKey, RoomId>,
    /// In a cluster, the rooms this node is creating whose creation the log has not answered yet
    /// (another node may have taken the name first: see `rooms.rs`).
    creating: HashSet<RoomId>,
    /// The JOINs each connection has waiting on such a creation: its input is held until none.
    join_holds: HashMap<ConnId, u32>,
    next_room_id: RoomId,
    next_id: MsgId,
    /// Ids below this may be shown before their commit: the store has committed a reservation
    /// up to it (`StoreOp::ReserveIds`; spec 6.2). 0 until the first one is committed.
    ids_shown_below: MsgId,
    /// The reservation last asked of the store, committed or not.
    ids_reserving: MsgId,
    /// Messages waiting for their commit to be delivered, and JOINs for theirs to be told; while
    /// there are any, no message is delivered ahead of its commit, so that one sender's messages
    /// arrive in order (spec 6.4) and none said after a join arrives before its `JOINED` (4.26).
    held_for_commit: usize,
    next_ticket: Ticket,
    /// The continuations of store and hash jobs, by ticket. Every stored message passes through it
    /// twice (insert, remove); the server numbers tickets itself, so it hashes them as it hashes
    /// connection ids.
    waiting: HashMap<Ticket, Then, BuildHasherDefault<ConnIdHasher>>,
    hashing: usize,
    /// Login protection: per-address and per-name state (see `guard`).
    guard: Guard,
    /// Repeated events since the last summary in the log.
    tally: Tally,
    /// When the last summary was written.
    tally_since: i64,
    /// When the guard last forgot what expired.
    guard_swept: i64,
    store_inflight: usize,
    /// Every device token, by id.
    tokens: HashMap<TokenId, Token>,
    /// The names of deleted accounts, by key (spec 4.18: never registered again).
    retired: HashMap<Key, String>,
    rng: Rng,
    /// The store reported that writes fail, and not yet that they work again.
    store_failing: bool,
    /// The count of stored messages at each of the last minute's ticks, oldest first, for the
    /// messages-per-second figure (at most [`RATE_WINDOW`] entries).
    message_samples: VecDeque<(i64, u64)>,
    /// A backup is being written (one at a time).
    backing_up: bool,
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
        let mut skeletons: HashSet<Looks> = HashSet::with_capacity(accounts.capacity());
        for a in snapshot.accounts {
            let key = Key::of(&a.name);
            // Names registered before look-alikes were refused may share a skeleton: each keeps
            // working (names are looked up by key), and no further name like them is accepted.
            let looks = Looks(key.clone());
            if let Some(Looks(first)) = skeletons.get(&looks) {
                log::warn!(
                    "accounts {} and {} have names that look alike; both keep working, and no \
                     other name like them can be registered",
                    first,
                    key
                );
            } else {
                skeletons.insert(looks);
            }
            accounts.insert(
                key.clone(),
                Box::new(Account::new(key.spelled(&a.name), Some(Phc::parse(&a.phc)))),
            );
        }
        for (a, b) in snapshot.blocks {
            let (a, b) = (Key::from_folded(a), Key::from_folded(b));
            if accounts.contains_key(&a) && accounts.contains_key(&b) {
                if let Some(acct) = accounts.get_mut(&a) {
                    acct.ties_mut().blocks.insert(b.clone());
                }
                if let Some(acct) = accounts.get_mut(&b) {
                    acct.ties_mut().blocked_by.insert(a);
                }
            }
        }
        for (user, profile) in snapshot.profiles {
            if let Some(acct) = accounts.get_mut(user.as_str()) {
                let Profile {
                    friends_only,
                    away,
                    last_seen_ms,
                    suspended,
                } = profile;
                acct.seen = Seen::written_at(last_seen_ms);
                if friends_only || away.is_some() || suspended.is_some() {
                    let ties = acct.ties_mut();
                    ties.friends_only = friends_only;
                    ties.away = away;
                    ties.suspended = suspended;
                }
            }
        }
        let mut tokens = HashMap::with_capacity(snapshot.tokens.len());
        for t in snapshot.tokens {
            let key = Key::from_folded(t.user.clone());
            if let Some(acct) = accounts.get_mut(&key) {
                acct.ties_mut().tokens.push(t.id);
                tokens.insert(t.id, Token::from_record(key, t));
            }
        }
        for (a, b, state) in snapshot.friendships {
            if let Some(acct) = accounts.get_mut(a.as_str()) {
                acct.ties_mut().friends.insert(Key::of(&b), state);
            }
        }
        for (user, n) in snapshot.pending_counts {
            if let Some(acct) = accounts.get_mut(user.as_str()) {
                acct.ties_mut().inbox.set_total(n);
            }
        }
        for (user, sender, n) in snapshot.pending_senders {
            if let Some(acct) = accounts.get_mut(user.as_str()) {
                acct.ties_mut().inbox.add_n(Key::from_folded(sender), n);
            }
        }
        let retired = snapshot
            .retired
            .into_iter()
            .map(|r| (Key::of(&r.name), r.name))
            .collect::<HashMap<Key, String>>();
        // A deleted account's name stays taken, and so does its look (spec 4.18).
        for key in retired.keys() {
            skeletons.insert(Looks(key.clone()));
        }
        let rng = Rng::new(settings.entropy);
        let (rooms, room_names) = rooms::load(
            snapshot.rooms,
            snapshot.members,
            snapshot.bans,
            snapshot.invites,
            &mut accounts,
        );
        settings
            .metrics
            .accounts_suspended
            .set(suspended_count(&accounts));
        for admin in &settings.policy.admins {
            if !accounts.contains_key(admin) {
                log::warn!(
                    "--admin {admin}: no account has this name yet; nobody may register it, \
                     create it with ADDUSER or `chatd adduser` (manual, section 16.1)"
                );
            }
        }
        Core {
            settings,
            accounts,
            skeletons,
            online: BTreeSet::new(),
            remote_online: BTreeMap::new(),
            nodes: HashMap::new(),
            routes: remote::Routes::default(),
            compressed: 0,
            offers: direct::Offers::default(),
            conns: ConnMap::default(),
            rooms,
            room_names,
            creating: HashSet::new(),
            join_holds: HashMap::new(),
            next_room_id: snapshot.next_room_id.max(1),
            next_id: snapshot.next_id.max(1),
            ids_shown_below: 0,
            ids_reserving: 0,
            held_for_commit: 0,
            next_ticket: 1,
            waiting: HashMap::default(),
            hashing: 0,
            guard: Guard::default(),
            guard_swept: 0,
            tally: Tally::default(),
            tally_since: 0,
            store_inflight: 0,
            tokens,
            retired,
            rng,
            store_failing: false,
            message_samples: VecDeque::with_capacity(RATE_WINDOW),
            backing_up: false,
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
        // The uptime counts from the first event when the shell did not say when it started.
        let _ = self.settings.metrics.started_ms.compare_exchange(
            0,
            now_ms,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        match event {
            Event::Connected { conn, outbox, peer } => self.connected(conn, outbox, peer),
            Event::Input { conn, input } => self.input(conn, input),
            Event::Inputs { conn, inputs } => {
                for input in inputs {
                    self.input(conn, input);
                }
            }
            Event::Disconnected { conn } => self.disconnected(conn),
            Event::Store(Report::Done(results, spent)) => {
                for (ticket, reply) in results {
                    self.store_inflight = self.store_inflight.saturating_sub(1);
                    if matches!(reply, StoreReply::Unreadable(_)) {
                        self.settings.metrics.storage_errors.inc();
                    }
                    if let Some(Then::Store(then)) = self.waiting.remove(&ticket) {
                        then(self, reply);
                    }
                }
                // The committed ops, freed here, on the thread that made them.
                drop(spent);
            }
            Event::Store(Report::Committed { ops, micros, bytes }) => {
                let m = &self.settings.metrics;
                m.commit(ops, micros);
                if let Some(b) = bytes {
                    m.database_bytes.set(i64::try_from(b).unwrap_or(i64::MAX));
                }
            }
            Event::Store(Report::Failing(why)) => {
                if !self.store_failing {
                    self.settings.metrics.storage_errors.inc();
                    log::error!(
                        "writes to the database are failing ({why}); refusing new writes with \
                         STORAGE_UNAVAILABLE, serving reads and logins, retrying the {} waiting",
                        self.store_inflight
                    );
                }
                self.store_failing = true;
            }
            Event::Store(Report::Writing) => {
                if self.store_failing {
                    log::info!("writes to the database work again; accepting writes");
                }
                self.store_failing = false;
            }
            Event::Store(Report::Remote(ops)) => {
                for op in ops {
                    self.remote(op);
                }
            }
            Event::Store(Report::Fatal(e)) => {
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
            Event::Drained { conn } => self.pump(conn),
            Event::Bus(news) => self.bus(news),
            Event::Tick => self.tick(),
            Event::Shutdown => self.shutdown(),
            Event::Backup { to, done } => self.backup(to, done),
        }
        self.reap_overflowed();
        self.gauges();
        jobs.append(&mut self.jobs);
    }

    /// Brings the figures that are states (not counts) up to date; after every event, so that
    /// STATS and `/metrics` show the state the last event left.
    fn gauges(&self) {
        let m = &self.settings.metrics;
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        m.connections.set(n(self.conns.len()));
        m.accounts_online.set(n(self.online.len()));
        m.hash_queue.set(n(self.hashing));
        m.store_queue.set(n(self.store_inflight));
        m.storage_failing.set(i64::from(self.store_failing));
        m.accounts.set(n(self.accounts.len()));
    }

    /// Samples the count of stored messages (on each tick) and sets the messages-per-second figure
    /// from the last minute's samples.
    fn sample_message_rate(&mut self) {
        let total = self.settings.metrics.messages();
        if self.message_samples.len() == RATE_WINDOW {
            self.message_samples.pop_front();
        }
        self.message_samples.push_back((self.now, total));
        if let Some(&(t0, n0)) = self.message_samples.front() {
            let span = self.now.saturating_sub(t0);
            let milli = if span > 0 {
                (total.saturating_sub(n0) as i64).saturating_mul(1_000_000) / span
            } else {
                0
            };
            self.settings.metrics.messages_per_second_milli.set(milli);
        }
    }

    /// Whether the account is one of the server's admins.
    pub(super) fn is_admin(&self, key: &Key) -> bool {
        self.settings.policy.admins.contains(key)
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }

    /// Changes the limits from now on (counts already made are kept: a lower quota applies to
    /// what an account has already used).
    pub fn set_limits(&mut self, limits: Limits) {
        self.settings.limits = limits;
    }

    /// Whether messages wait for their commit before they go to their recipients (from now on).
    pub fn set_deliver_after_commit(&mut self, on: bool) {
        self.settings.deliver_after_commit = on;
    }

    /// The policy in force: the admins, and whether registration is open.
    pub fn policy(&self) -> &Policy {
        &self.settings.policy
    }

    /// Changes the policy from now on (a connection already logged in as an account that is no
    /// longer an admin can no longer use the operator commands).
    pub fn set_policy(&mut self, policy: Policy) {
        self.settings.policy = policy;
    }

    /// The server's figures.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.settings.metrics
    }

    /// Store ops sent and not yet finished; the driver stops taking input past a limit.
    pub fn store_inflight(&self) -> usize {
        self.store_inflight
    }

    /// True while the store reports that writes fail: new writes are refused, and the ops in
    /// flight may wait for as long as it lasts.
    pub fn store_failing(&self) -> bool {
        self.store_failing
    }

    /// Set when the store failed; the server must stop.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    fn connected(&mut self, conn: ConnId, outbox: Outbox, peer: Peer) {
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
        self.settings.metrics.connections_opened.inc();
        log::debug!("connection {conn} from {}", peer);
        self.tally.count("connections opened", peer.key());
        self.conns.insert(
            conn,
            Box::new(Conn {
                outbox,
                peer,
                last_heard: self.now,
                probed: false,
                hashing: None,
                state: ConnState::Guest,
                hold: Hold::Free,
                deferred: None,
                slots: Slots::default(),
                closing: false,
                device_token: None,
                resumed: false,
                compressed: false,
            }),
        );
    }

    fn input(&mut self, conn: ConnId, input: Input) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        if matches!(input, Input::BadDeflate) {
            return self.close_bad_deflate(conn);
        }
        c.last_heard = self.now;
        c.probed = false;
        if c.hold != Hold::Free {
            c.deferred.get_or_insert_default().push_back(input);
            return;
        }
        self.process(conn, input);
    }

    /// Runs one unit of input: the checks of the command table, in the order the spec gives, then the
    /// command's handler.
    fn process(&mut self, conn: ConnId, input: Input) {
        let line = match input {
            // Handled when it arrives (`Core::input`), never deferred.
            Input::BadDeflate => return self.close_bad_deflate(conn),
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
        let barrier = row.barrier || (row.reads && self.store_failing);
        if barrier && !c.slots.is_empty() {
            // QUIT and LOGOUT change what the connection is; they wait until every earlier command
            // of the connection has its answer, so those run with the state they were sent in.
            // While writes fail, a read waits the same way, so that it can go to the fresh-read
            // queue and still see every write its connection sent before it.
            c.hold = Hold::Drain;
            c.deferred
                .get_or_insert_default()
                .push_front(Input::Line(line.into_bytes()));
            return;
        }
        let key = c.key().cloned();
        let logged_in = key.is_some();
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
            Needs::Admin => match key.as_ref() {
                None => {
                    return self.refuse(
                        req,
                        Code::NOT_LOGGED_IN,
                        "log in first: LOGIN <name> <password>",
                    )
                }
                Some(k) if !self.is_admin(k) => {
                    let text = format!("{} is for the server's admins only", head.verb.name());
                    return self.refuse(req, Code::NOT_ADMIN, &text);
                }
                Some(_) => {}
            },
            _ => {}
        }
        match head.verb.parse_args(head.rest) {
            Err(r) => self.refuse(req, r.0, &r.1),
            Ok(command) if self.store_failing && (row.writes)(&command) => {
                let source = self.conns.get(&conn).and_then(|c| c.peer.key());
                self.tally
                    .count("writes refused while the database failed", source);
                self.refuse(
                    req,
                    Code::STORAGE_UNAVAILABLE,
                    "the server cannot write to its database right now; nothing was done; \
                     reading works; try again later",
                )
            }
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
            .is_some_and(|x| x.ties().blocks.contains(b) || x.ties().blocked_by.contains(b))
    }

    /// True when `a` and `b` are friends.
    fn are_friends(&self, a: &Key, b: &Key) -> bool {
        self.accounts
            .get(a)
            .is_some_and(|x| x.ties().friends.get(b) == Some(&FriendState::Friends))
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
        log::debug!("closing connection {conn} from {}: {text}", c.peer);
        self.tally.count(
            "connections closed for a revoked token, a new password, or a deleted, suspended or \
             killed account",
            c.peer.key(),
        );
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
            log::debug!(
                "connection {conn} from {} is not reading; disconnecting it",
                c.peer
            );
            self.tally
                .count("slow consumers disconnected", c.peer.key());
            self.settings.metrics.outbox_drops.inc();
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

    /// Sends `ops` (writes, or ops answered in their order: see `StoreOp::is_read`) to the store
    /// in order; `then` runs with the last one's result, when all of them are committed (writes
    /// are answered in the order they were sent). With no ops, `then` runs at once with `Done`.
    fn store_all(
        &mut self,
        ops: Vec<StoreOp>,
        then: impl FnOnce(&mut Core, StoreReply) + Send + 'static,
    ) {
        let ops = told_ops(ops);
        let last = ops.len();
        let mut then = Some(then);
        for (i, op) in ops.into_iter().enumerate() {
            debug_assert!(!op.is_read(), "{op:?} would not be answered in order");
            if i + 1 < last {
                self.store(op, |_, _| {});
            } else if let Some(then) = then.take() {
                self.store(op, then);
            }
        }
        if let Some(then) = then {
            then(self, StoreReply::Done);
        }
    }

    /// Sends a read to the store's fresh-read queue; `then` runs with its result. Only for a
    /// connection with no write in flight (the read does not wait for writes queued before it).
    fn store_fresh(
        &mut self,
        read: ReadOp,
        then: impl FnOnce(&mut Core, StoreReply) + Send + 'static,
    ) {
        let ticket = self.ticket();
        self.jobs.push(Job::Read(ticket, read));
        self.waiting.insert(ticket, Then::Store(Box::new(then)));
        self.store_inflight += 1;
    }

    /// True when the hashing queue is full: a command that needs a hash answers SERVER_BUSY.
    fn hash_full(&self) -> bool {
        self.hashing >= self.settings.hash_queue
    }

    /// Queues a hash job for `conn`, whose result goes to `then`. The caller checked
    /// [`Core::hash_full`] and the limits of `guard`. The hash counts against the connection's
    /// address until it comes back, and is cancelled if the connection closes first.
    fn hash(
        &mut self,
        conn: ConnId,
        job: HashJob,
        then: impl FnOnce(&mut Core, HashOutcome) + Send + 'static,
    ) {
        self.hashing += 1;
        let cancel = Cancel::default();
        let addr = self.conns.get(&conn).and_then(|c| c.peer.key());
        self.guard
            .hash_started(addr, &self.settings.limits, self.now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.hashing = Some(cancel.clone());
        }
        let ticket = self.ticket();
        self.jobs.push(Job::Hash(ticket, HashTask { job, cancel }));
        let then = move |core: &mut Core, outcome| {
            core.guard.hash_finished(addr);
            if let Some(c) = core.conns.get_mut(&conn) {
                c.hashing = None;
            }
            then(core, outcome)
        };
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
            let Some(input) = c.deferred.as_mut().and_then(|d| d.pop_front()) else {
                c.deferred = None;
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
        if c.compressed {
            self.compressed -= 1;
        }
        if let Some(cancel) = &c.hashing {
            // Its hash is not wanted any more: a thread that has not started it skips it.
            cancel.cancel();
        }
        if let ConnState::LoggedIn(key) = c.state {
            self.detach(conn, &key, c.resumed);
        }
        log::debug!("connection {conn} from {} closed", c.peer);
        self.tally.count("connections closed", c.peer.key());
    }

    /// Removes a logged-in connection from its account; the last one takes the account offline.
    /// `resumed`: the connection logged in with a device token (see `Conn::resumed`).
    fn detach(&mut self, conn: ConnId, key: &Key, resumed: bool) {
        let Some(acct) = self.accounts.get_mut(key) else {
            return;
        };
        acct.conns.remove(conn);
        rooms::connections_changed(&mut self.rooms, &acct.rooms);
        let offline = acct.conns.is_empty();
        if offline {
            self.online.remove(key);
            if resumed {
                log::debug!("{} is offline", acct.name);
                self.tally
                    .count("accounts offline after a device token login", None);
            } else {
                log::info!("{} is offline", acct.name);
            }
            self.saw(key, false);
        }
        self.direct_conn_left(conn, key, offline);
        if offline {
            self.announce_presence(key, false);
        }
    }

    /// `key` got its first connection here, or lost its last one: the other nodes of a cluster
    /// are told, and the online friends here, unless another node has it online (then nothing
    /// changed for them).
    fn announce_presence(&mut self, key: &Key, online: bool) {
        if self.settings.cluster {
            self.jobs.push(Job::Bus(BusOut::Presence {
                key: key.as_str().to_owned(),
                online,
            }));
            self.rewatch_rooms_of(key);
            if self.remote_online.contains_key(key) {
                return;
            }
        }
        self.tell_friends(key, online);
    }

    /// Whether `key` has a connection on this server or, in a cluster, on another node.
    fn is_online(&self, key: &Key) -> bool {
        self.online.contains(key) || self.remote_online.contains_key(key)
    }

    /// Tells the online friends of `key`, here, that it came online or went offline.
    fn tell_friends(&mut self, key: &Key, online: bool) {
        let Some(acct) = self.accounts.get(key) else {
            return;
        };
        let line = ServerLine::Presence {
            name: &acct.name,
            presence: Presence::of(online),
        };
        let chunk = out::shared(&line);
        let friends: Vec<Key> = acct
            .ties()
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
            // Every id handed out is in a message committed before this (writes commit in
            // order), so the next start may go on from the last one instead of skipping the rest
            // of the reservation. After a failure, the reservation stands.
            if self.ids_reserving > 0 && !self.store_failing {
                let below = self.next_id;
                self.store(StoreOp::ReserveIds { below }, |_, _| {});
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
    accounts: &Accounts,
    conns: &ConnMap,
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
        for conn in acct.conns.iter() {
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
        To::Room(r) => Recipient::Room(r),
    }
}

/// Queues `chunk` on every logged-in connection of each account in `keys`, except `skip`. For the
/// room events, whose audience is taken when the command runs and reached when it is committed.
fn push_to_keys(
    accounts: &Accounts,
    conns: &ConnMap,
    overflowed: &mut Vec<ConnId>,
    keys: &[Key],
    chunk: &Chunk,
    skip: ConnId,
) {
    fan_out(accounts, conns, overflowed, keys.iter(), chunk, Some(skip));
}

/// A command's ops with each room notice joined to the change right after it on the same room
/// (`StoreOp::Told`), so that the two are one log entry in a cluster. Outside a cluster there are
/// no notices, and the ops are as given.
fn told_ops(ops: Vec<StoreOp>) -> Vec<StoreOp> {
    let mut out: Vec<StoreOp> = Vec::with_capacity(ops.len());
    for op in ops {
        let joins = match (out.last(), &op) {
            (Some(StoreOp::Notice(Notice::Room { room, .. })), change) => {
                !matches!(change, StoreOp::Notice(_) | StoreOp::Told { .. })
                    && !change.is_read()
                    && change.room() == Some(*room)
            }
            _ => false,
        };
        match (joins, out.pop()) {
            (true, Some(StoreOp::Notice(notice))) => out.push(StoreOp::Told {
                notice,
                op: Box::new(op),
            }),
            (_, last) => {
                out.extend(last);
                out.push(op);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_list_holds_one_inline_and_more_in_a_list() {
        let mut l = ConnList::default();
        assert!(l.is_empty());
        l.remove(7);
        l.push(7);
        assert!(matches!(l, ConnList::One(7)));
        l.push(9);
        l.push(11);
        assert_eq!(&l[..], &[7, 9, 11]);
        l.remove(9);
        assert_eq!(&l[..], &[7, 11]);
        l.remove(7);
        assert!(matches!(l, ConnList::One(11)));
        l.remove(5);
        assert_eq!(&l[..], &[11]);
        l.remove(11);
        assert!(matches!(l, ConnList::Empty));
        assert!(l.is_empty());
        assert!(size_of::<ConnList>() <= size_of::<Vec<ConnId>>());
    }

    fn notice(room: RoomId) -> StoreOp {
        StoreOp::Notice(Notice::Room {
            room,
            line: format!("PARTED #r{room} a"),
        })
    }

    fn leave(room: RoomId) -> StoreOp {
        StoreOp::RemoveMember {
            room,
            user: "a".into(),
        }
    }

    #[test]
    fn a_room_notice_is_joined_to_the_change_after_it_on_its_room_only() {
        let told = |room| StoreOp::Told {
            notice: match notice(room) {
                StoreOp::Notice(n) => n,
                _ => unreachable!(),
            },
            op: Box::new(leave(room)),
        };
        assert_eq!(told_ops(vec![notice(1), leave(1)]), [told(1)]);
        // Another room's change, another notice, or nothing after it: the notice stays alone.
        assert_eq!(told_ops(vec![notice(1), leave(2)]), [notice(1), leave(2)]);
        assert_eq!(
            told_ops(vec![notice(1), notice(1), leave(1)]),
            [notice(1), told(1)]
        );
        assert_eq!(told_ops(vec![leave(1), notice(1)]), [leave(1), notice(1)]);
        assert_eq!(told_ops(Vec::new()), []);
    }
}
