//! `core`: the whole server, driven through [`Sim`] by up to four clients doing arbitrary things,
//! with the protocol's promises checked after every step.
//!
//! Most operations (connect, send, disconnect) run every job they lead to before the next one, so
//! after them every command has its answer. Three do not, to make races: a line can be queued
//! with no job run, the queued jobs can be run once, and a connection can be dropped with no job
//! run (a login whose connection leaves while its backlog is read, a sender gone before its
//! commit, a recipient gone during one).
//!
//! The harness keeps its own small model of each connection: a copy of the line framing, which
//! tells it how many commands each send holds (a non-blank line, an over-long line and a line
//! that is not UTF-8 each get exactly one final line), the labels and command names their finals
//! must carry, in order, and whether a QUIT ended the connection. From the server's output it
//! follows which account each connection is logged in as, and checks every line it receives:
//!
//! - every line is a well-formed server line; the first is HELLO;
//! - finals come one per command, in command order, with the command's label and name, and nothing
//!   follows the `OK QUIT` that closes a connection;
//! - data lines come in one run, right before the final of the command they answer;
//! - a MESSAGE reaches only a connection logged in as one of its addressees (the MSG recipient, a
//!   member of the GROUP list, or anyone but the sender for ALL), and at most once per account on
//!   a connection;
//! - each MESSAGE has the sender, addressees and text of a message whose MSG/GROUP/ALL got its OK
//!   (or, when its connection was closed before the answer, of such a command);
//! - at the end, every message that got an OK is in the HISTORY of each pair of parties (or in
//!   `HISTORY *` for ALL), read through a fresh connection; and each MSG/GROUP reached each
//!   addressee exactly once: live on a connection, or else in the backlog that fresh login receives.
//!
//! And for rooms, with a small model of what it has seen (every command handed to the server and
//! every line read gets a tick of one clock, so "sent after that was seen" can be decided):
//!
//! - nothing is delivered to a non-member: a room MESSAGE reaches a connection only if its account
//!   has been a member of the room (or has a JOIN of it on its way), and never after that
//!   connection's own lines said the account left or was removed (OK PART, KICKED, BANNED,
//!   PARTED or DELETED naming it, OK ROOM DELETE) until they said it is back (OK JOIN, JOINED);
//! - a banned account never rejoins without UNBAN: a JOIN sent after the OK of a BAN of its account
//!   does not succeed, unless an UNBAN of it or a ROOM DELETE of the room was sent after the BAN;
//! - a private room's history before a member's join is never shown to them: for a JOIN sent
//!   while the room was private (its OK ROOM PRIVATE seen, no ROOM PUBLIC or DELETE sent since), no
//!   message acknowledged before the JOIN was sent reaches that member as MESSAGE, in the JOIN's
//!   replay or in HISTORY, as long as no ROOM PUBLIC or DELETE of the room has been sent;
//! - a message in a JOIN's replay is not delivered live to that connection afterwards;
//! - data lines belong to the command they answer (ROOM to ROOMS, JOIN or ROOM; HISTORY to HISTORY
//!   or JOIN; MEMBER to MEMBERS; BAN and INVITATION to ROOM INFO).
//!
//! The accounts commands add their own promises. The harness follows the device tokens the server
//! issues (`OK TOKEN`), which of them a connection is on, and which were revoked (REVOKE, PASSWORD,
//! UNREGISTER) or expired (its clock follows the simulator's); and the blocks (`OK BLOCK`):
//!
//! - a token known to be revoked or expired never logs in (`OK RESUME`), nor does a string the
//!   server never issued; at the end, through a fresh connection, each token logs in exactly when
//!   it should (alive: yes; revoked or expired: no), unless a race left its times uncertain;
//! - a MSG or GROUP between two accounts with a block between them is never acknowledged, and no
//!   message of an account reaches a connection of an account that blocks it;
//! - a connection closed by the server without a QUIT got `BYE REVOKED` or `BYE ACCOUNT_DELETED`,
//!   nothing after it, and only for a reason the harness saw (its token revoked, its account's
//!   password changed or the account deleted);
//! - a deleted account's name is never registered again, and its messages stay in the others'
//!   HISTORY.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;

use arbitrary::{Result, Unstructured};

use crate::config::{LOGIN_FAILURE_MEMORY, MAX_LINE_BYTES, MAX_TEXT_BYTES};
use crate::config::{TOKEN_IDLE_LIFETIME_MS, TOKEN_MAX_LIFETIME_MS};
use crate::proto::code::{ByeCode, Code};
use crate::proto::command::{parse, split_head, Command, Request, Revoke, Verb};
use crate::proto::line::{Frame, LineDecoder};
use crate::proto::room::Target;
use crate::proto::server_line::{
    self, JoinOutcome, OkReply, PartOutcome, Recipient, RoomEvent, RoomReply, ServerLine,
};
use crate::proto::token::format_id;
use crate::sim::{Sim, EPOCH_MS};

/// Clients the fuzzer drives.
const CLIENTS: [&str; 4] = ["c0", "c1", "c2", "c3"];
/// The client that reads HISTORY at the end.
const CHECKER: &str = "check";
/// Most operations taken from one input.
const MAX_OPS: usize = 96;
/// Names the command grammar uses: a few accounts, a case variant, one that is never registered
/// by a valid REGISTER below, and one that is not a valid name at all.
const NAMES: &[&str] = &["a", "b", "c", "d", "A", "Bee", "zed", "9x"];
/// Rooms the grammar uses: a few, a case variant, and two that are not room names.
const ROOMS: &[&str] = &["#r", "#R", "#s", "#t", "#bad!", "r"];

/// The password the grammar registers each account with, so LOGIN is mostly right.
fn password_for(key: &str) -> String {
    format!("pw-{key}-secret")
}

/// The other password PASSWORD may change an account's to (and back).
fn other_password_for(key: &str) -> String {
    format!("pw-{key}-other")
}

/// One day of the simulated clock.
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// One step of the run.
#[derive(Debug)]
enum Op {
    Connect(usize),
    /// Closes the connection and runs every job.
    Disconnect(usize),
    /// Bytes in one or two writes (the second starts mid-line when there are two); then every job
    /// runs.
    Send(usize, Vec<u8>, usize),
    Advance(i64),
    /// A line handed to the server with no job run, so that later steps race with it.
    Queue(usize, String),
    /// Runs the jobs queued so far once.
    Step,
    /// Closes the connection with no job run.
    Drop(usize),
}

/// A device token the server issued, as the harness follows it.
#[derive(Debug)]
struct TokenModel {
    token: String,
    account: String,
    created_ms: i64,
    last_used_ms: i64,
    revoked: bool,
    /// A race left the time of its issue or of a use unknown (the clock moved while the command
    /// waited): its expiry is not checked.
    uncertain: bool,
}

impl TokenModel {
    fn expired(&self, now: i64) -> bool {
        now >= (self.last_used_ms + TOKEN_IDLE_LIFETIME_MS)
            .min(self.created_ms + TOKEN_MAX_LIFETIME_MS)
    }
}

/// What the harness knows of the server's state when a line is framed, for the checks of its
/// answer.
struct Ctx<'a> {
    /// Nothing is in flight and the line is the first of its connection's queue: the harness's
    /// model is the server's state when the line runs.
    exact: bool,
    now: i64,
    tokens: &'a BTreeMap<u64, TokenModel>,
    blocks: &'a BTreeSet<(String, String)>,
}

/// A command sent and not yet answered: what its final line must say.
#[derive(Debug)]
struct Awaiting {
    label: Option<String>,
    /// `None` for a line refused before its command was known (`*`).
    command: Option<Verb>,
    /// LINE_TOO_LONG and BAD_ENCODING, which the framing decides.
    code: Option<Code>,
    request: Option<Request>,
    line: String,
    /// The tick at which the server was handed it.
    sent: u64,
    /// The simulated time when the line was sent.
    sent_at: i64,
    /// RESUME: the token is known revoked, or (exactly known) expired, so it must not log in.
    dead_token: bool,
    /// MSG, GROUP, ALL, when the state was exactly known: the sender and the accounts with a block
    /// between them, and those that block the sender.
    blocks: Option<(String, BTreeSet<String>, BTreeSet<String>)>,
}

struct Conn {
    /// Which connection this is, over the whole run (a reconnect is a new one).
    serial: usize,
    framing: LineDecoder,
    awaiting: VecDeque<Awaiting>,
    /// A QUIT was read; the server ignores everything after it.
    quit_sent: bool,
    /// `OK QUIT` arrived; nothing may follow.
    quit_seen: bool,
    hello_seen: bool,
    /// Account key, from OK LOGIN / OK LOGOUT.
    account: Option<String>,
    /// The final that ends the current run of data lines.
    data_run: Option<Verb>,
    /// (account, message id) received, to catch a duplicate. The same message may come twice to a
    /// connection that logs out and in as another addressee (live to one, from the backlog of
    /// the other), never twice to one account.
    received: BTreeSet<(String, u64)>,
    /// Room key -> whether this connection's own lines last said its account is a member (absent:
    /// they said nothing since the login).
    rooms: BTreeMap<String, bool>,
    /// (account, id) of the messages a JOIN answer replayed on this connection.
    replayed: BTreeSet<(String, u64)>,
    /// (id, room key) of the HISTORY lines of the answer being received.
    data_ids: Vec<(u64, Option<String>)>,
    /// The device token the connection is on, from OK TOKEN / OK RESUME.
    device_token: Option<u64>,
    /// `BYE` arrived: the server closed the connection; nothing may follow.
    bye_seen: bool,
}

/// A message whose MSG/GROUP/ALL got its OK.
#[derive(Clone, Debug)]
struct Sent {
    id: u64,
    from: String,
    /// Account keys as the sender gave them; empty for ALL and for a room.
    to: Vec<String>,
    all: bool,
    /// The room key, for a room message.
    room: Option<String>,
    text: String,
    /// The accounts it must never reach (they block the sender), when exactly known.
    blockers: BTreeSet<String>,
}

/// What the harness has seen of one room (by key, whatever its incarnation).
#[derive(Default)]
struct RoomModel {
    /// Accounts that have been members, or sent a JOIN of it.
    ever: BTreeSet<String>,
    /// Account -> (tick its BAN was sent, tick its OK BAN was seen).
    bans: BTreeMap<String, (u64, u64)>,
    /// (tick the OK was seen, id) of the room's acknowledged messages.
    acked: Vec<(u64, u64)>,
    /// (tick ROOM PRIVATE was sent, tick its OK was seen), while the last privacy OK seen said
    /// private.
    private: Option<(u64, u64)>,
    /// Account -> the join to check: the largest id acknowledged before its JOIN was sent, and
    /// the tick of the ROOM PRIVATE that made the room private then.
    joins: BTreeMap<String, (u64, u64)>,
}

/// A room command that can undo a ban or end a room's privacy, as handed to the server.
struct RoomCmd {
    tick: u64,
    room: String,
    kind: RoomCmdKind,
}

#[derive(Clone, PartialEq, Eq)]
enum RoomCmdKind {
    Unban(String),
    Public,
    Delete,
}

/// A MESSAGE line as received.
#[derive(Debug)]
struct Delivered {
    id: u64,
    from: String,
    to: String,
    text: String,
    /// The account of the connection that received it.
    account: String,
}

struct Harness {
    sim: Sim,
    conns: [Option<Conn>; 4],
    serials: usize,
    /// Registered accounts: key -> name as registered.
    accounts: BTreeMap<String, String>,
    /// Their passwords (raw input can register any), for the HISTORY reads at the end.
    passwords: BTreeMap<String, String>,
    sent: BTreeMap<u64, Sent>,
    delivered: Vec<Delivered>,
    /// Account key -> ids of the messages its connections received.
    live: BTreeMap<String, BTreeSet<u64>>,
    /// The last lines exchanged, shown when a check fails.
    log: VecDeque<String>,
    /// No job is waiting: every command sent so far has been answered.
    idle: bool,
    /// MSG/GROUP/ALL commands of connections closed before their answer: each may have been
    /// committed and delivered with an id the harness never saw.
    abandoned: Vec<Command>,
    /// One tick per command handed to the server and per line read.
    clock: u64,
    /// By room key.
    rooms: BTreeMap<String, RoomModel>,
    /// UNBAN, ROOM PUBLIC and ROOM DELETE commands handed to the server, in order.
    room_cmds: Vec<RoomCmd>,
    /// Print the whole exchange as it happens (`CHATD_FUZZ_TRACE` set), to see what an input does.
    trace: bool,
    /// The simulated clock.
    now: i64,
    /// Every token the server issued, by id.
    tokens: BTreeMap<u64, TokenModel>,
    /// (blocker, blocked), from OK BLOCK / OK UNBLOCK.
    blocks: BTreeSet<(String, String)>,
    /// Accounts deleted with UNREGISTER.
    deleted: BTreeSet<String>,
    /// Commands whose answer was lost with their connection, which may or may not have taken
    /// effect: the final checks that depend on them are relaxed.
    unsure: Unsure,
}

/// Kinds of commands that may have taken effect unseen (see `Harness::unsure`).
#[derive(Debug, Default)]
struct Unsure {
    /// A PASSWORD: an account's password may be either of the grammar's two.
    password: bool,
    /// An UNREGISTER: an account may be gone.
    unregister: bool,
    /// A BLOCK or UNBLOCK: a backlog may hold back a message the harness expects.
    block: bool,
    /// A REVOKE, PASSWORD or UNREGISTER: a token may be revoked unseen.
    revoke: bool,
}

/// Runs the operations `data` describes and checks the server's promises; panics on a violation.
pub fn check_core(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut h = Harness::new();
    let mut label_seq = 0u32;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let known: Vec<(u64, String)> = h
            .tokens
            .iter()
            .map(|(id, t)| (*id, t.token.clone()))
            .collect();
        let Ok(op) = op(&mut u, &mut label_seq, &known) else {
            break;
        };
        h.apply(op);
    }
    h.finish();
}

fn op(u: &mut Unstructured<'_>, label_seq: &mut u32, tokens: &[(u64, String)]) -> Result<Op> {
    let client = u.int_in_range(0..=CLIENTS.len() - 1)?;
    // 0 to 15 keep their meaning from before the race operations were added, so older inputs
    // still mean what they did.
    Ok(match u.int_in_range(0..=20u8)? {
        // Days at a time, so tokens expire.
        20 => Op::Advance(u.int_in_range(1..=40)? * DAY_MS),
        16 | 17 => Op::Queue(client, command_line(u, label_seq, tokens)?),
        18 => Op::Step,
        19 => Op::Drop(client),
        0 => Op::Connect(client),
        1 => Op::Disconnect(client),
        2 => Op::Advance(u.int_in_range(1..=90_000)?),
        3 => {
            // Raw bytes: broken UTF-8, stray CRs, lines cut anywhere.
            let n = u.int_in_range(0..=48usize)?;
            let bytes = u.bytes(n)?.to_vec();
            let cut = u.int_in_range(0..=bytes.len())?;
            Op::Send(client, bytes, cut)
        }
        4 => {
            // Around the length limit, ended by LF or CRLF.
            let len = *u.choose(&[MAX_LINE_BYTES - 1, MAX_LINE_BYTES, MAX_LINE_BYTES + 1, 9000])?;
            let mut bytes = b"PING ".to_vec();
            bytes.resize(len, b'x');
            if u.arbitrary()? {
                bytes.push(b'\r');
            }
            bytes.push(b'\n');
            let cut = u.int_in_range(0..=bytes.len())?;
            Op::Send(client, bytes, cut)
        }
        _ => {
            let n = u.int_in_range(1..=3u8)?;
            let crlf = u.ratio(1u8, 4u8)?;
            let mut bytes = Vec::new();
            for _ in 0..n {
                bytes.extend_from_slice(command_line(u, label_seq, tokens)?.as_bytes());
                if crlf {
                    bytes.push(b'\r');
                }
                bytes.push(b'\n');
            }
            let cut = if u.ratio(1u8, 4u8)? {
                u.int_in_range(0..=bytes.len())?
            } else {
                bytes.len()
            };
            Op::Send(client, bytes, cut)
        }
    })
}

/// One line of a small grammar of commands, valid and not. `tokens` are the device tokens issued
/// so far, for RESUME and REVOKE.
fn command_line(
    u: &mut Unstructured<'_>,
    label_seq: &mut u32,
    tokens: &[(u64, String)],
) -> Result<String> {
    let mut s = String::new();
    match u.int_in_range(0..=9u8)? {
        0..=3 => {}
        4..=8 => {
            *label_seq += 1;
            let _ = write!(s, "@{} ", label_seq);
        }
        _ => {
            s.push_str(u.choose(&["@ ", "@bad! ", "@123456789012345678901234567890123 ", "@x"])?)
        }
    }
    if u.ratio(1u8, 8u8)? {
        s.push_str("  ");
    }
    let name = |u: &mut Unstructured<'_>| -> Result<&'static str> { Ok(*u.choose(NAMES)?) };
    let text = |u: &mut Unstructured<'_>| -> Result<String> {
        Ok(match u.int_in_range(0..=9u8)? {
            0 => " two  spaces ".into(),
            1 => "tab\there".into(),
            2 => "é😀 ok".into(),
            3 => "   ".into(),
            4 => "bell\u{7}".into(),
            5 => "x".repeat(MAX_TEXT_BYTES + u.int_in_range(0..=1usize)?),
            _ => format!("hello {}", u.int_in_range(0..=99u8)?),
        })
    };
    let room = |u: &mut Unstructured<'_>| -> Result<&'static str> { Ok(*u.choose(ROOMS)?) };
    let verb: &str = u.choose(&[
        "REGISTER",
        "LOGIN",
        "LOGIN",
        "LOGOUT",
        "QUIT",
        "HELP",
        "PING",
        "MSG",
        "MSG",
        "GROUP",
        "ALL",
        "USERS",
        "HISTORY",
        "HISTORY",
        "FRIEND",
        "DANCE",
        "",
        "TOKEN",
        "RESUME",
        "RESUME",
        "TOKENS",
        "REVOKE",
        "PASSWORD",
        "UNREGISTER",
        "BLOCK",
        "BLOCK",
        "UNBLOCK",
        "BLOCKS",
        "DMS",
        "AWAY",
        "WHOIS",
        "JOIN",
        "JOIN",
        "PART",
        "ROOMS",
        "MEMBERS",
        "TOPIC",
        "INVITE",
        "KICK",
        "BAN",
        "UNBAN",
        "ROLE",
        "ROOM",
        "ROOM",
        "READ",
    ])?;
    let verb = if u.ratio(1u8, 6u8)? {
        verb.to_ascii_lowercase()
    } else {
        verb.to_owned()
    };
    s.push_str(&verb);
    match verb.to_ascii_uppercase().as_str() {
        "REGISTER" | "LOGIN" => {
            let n = name(u)?;
            let pw = match u.int_in_range(0..=6u8)? {
                0 => "wrong-password".to_owned(),
                1 => "short".to_owned(),
                2 => format!("{} extra", password_for(&key(n))),
                3 => String::new(),
                4 => other_password_for(&key(n)),
                _ => password_for(&key(n)),
            };
            let _ = write!(s, " {n} {pw}");
        }
        "TOKEN" => s.push_str(u.choose(&["", " laptop", "  my  phone ", " bell\u{7}"])?),
        "RESUME" => {
            let t = match u.int_in_range(0..=5u8)? {
                0 => "ct1.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
                1 => "nonsense".to_owned(),
                2 => String::new(),
                _ if tokens.is_empty() => "ct1.x".to_owned(),
                _ => u.choose(tokens)?.1.clone(),
            };
            let _ = write!(s, " {t}");
        }
        "REVOKE" => {
            let which = match u.int_in_range(0..=4u8)? {
                0 => "ALL".to_owned(),
                1 => "0123456789abcdef".to_owned(),
                2 => "12".to_owned(),
                _ if tokens.is_empty() => "all".to_owned(),
                _ => format_id(u.choose(tokens)?.0),
            };
            let _ = write!(s, " {which}");
        }
        "PASSWORD" | "UNREGISTER" => {
            // The account is not known here: these are right for the names of the grammar when
            // the connection is logged in as the name chosen.
            let k = key(name(u)?);
            let pick = |u: &mut Unstructured<'_>| -> Result<String> {
                Ok(match u.int_in_range(0..=3u8)? {
                    0 => "wrong-password".to_owned(),
                    1 => other_password_for(&k),
                    _ => password_for(&k),
                })
            };
            let old = pick(u)?;
            if verb.eq_ignore_ascii_case("PASSWORD") {
                let new = if old == password_for(&k) {
                    other_password_for(&k)
                } else {
                    password_for(&k)
                };
                let _ = write!(s, " {old} {new}");
            } else {
                let _ = write!(s, " {old}");
            }
        }
        "BLOCK" | "UNBLOCK" | "WHOIS" => {
            let _ = write!(s, " {}", name(u)?);
        }
        "DMS" => s.push_str(u.choose(&["", " FRIENDS", " everyone", " maybe"])?),
        "AWAY" => s.push_str(u.choose(&["", " out to lunch", "  spaces  ", " bell\u{7}"])?),
        "QUIT" if u.arbitrary()? => s.push_str(" see you"),
        "HELP" => s.push_str(u.choose(&["", " PING", " msg", " nothing", " a b"])?),
        "PING" => s.push_str(u.choose(&["", " tok", " a:b", " two tokens", " cr\rinside"])?),
        "MSG" => {
            let target = if u.ratio(2u8, 5u8)? {
                room(u)?
            } else {
                name(u)?
            };
            let _ = write!(s, " {target} {}", text(u)?);
        }
        "GROUP" => {
            let n = u.int_in_range(1..=4u8)?;
            let list: Vec<&str> = (0..n).map(|_| name(u)).collect::<Result<_>>()?;
            let _ = write!(s, " {} {}", list.join(","), text(u)?);
        }
        "ALL" => {
            let _ = write!(s, " {}", text(u)?);
        }
        "HISTORY" => {
            let target = match u.int_in_range(0..=3u8)? {
                0 => "*",
                1 => room(u)?,
                _ => name(u)?,
            };
            let _ = write!(s, " {target}");
            s.push_str(u.choose(&["", " 1", " 3", " 0", " 501", " x"])?);
            s.push_str(u.choose(&[
                "",
                " BEFORE 3",
                " after 1",
                " BEFORE",
                " AFTER x",
                " SINCE 2",
            ])?);
        }
        "FRIEND" => {
            let sub = *u.choose(&["ADD", "ACCEPT", "deny", "REMOVE", "LIST", "HUG", ""])?;
            let _ = write!(s, " {sub}");
            if sub != "LIST" && u.ratio(7u8, 8u8)? {
                let _ = write!(s, " {}", name(u)?);
            }
        }
        "JOIN" | "MEMBERS" => {
            let _ = write!(s, " {}", room(u)?);
        }
        "PART" => {
            let _ = write!(s, " {}", room(u)?);
            s.push_str(u.choose(&["", " bye", " \u{7}"])?);
        }
        "TOPIC" => {
            let _ = write!(s, " {}", room(u)?);
            s.push_str(u.choose(&["", " a topic", " -", "  spaced "])?);
        }
        "INVITE" | "UNBAN" => {
            let _ = write!(s, " {} {}", room(u)?, name(u)?);
        }
        "KICK" | "BAN" => {
            let _ = write!(s, " {} {}", room(u)?, name(u)?);
            s.push_str(u.choose(&["", " go away"])?);
        }
        "ROLE" => {
            let role = *u.choose(&["OWNER", "op", "MEMBER", "ADMIN"])?;
            let _ = write!(s, " {} {} {role}", room(u)?, name(u)?);
        }
        "ROOM" => {
            let sub = *u.choose(&["INFO", "PRIVATE", "private", "PUBLIC", "DELETE", "SHOW"])?;
            let _ = write!(s, " {sub} {}", room(u)?);
        }
        "READ" => {
            let target = if u.ratio(2u8, 3u8)? {
                room(u)?
            } else {
                name(u)?
            };
            let _ = write!(s, " {target}");
            s.push_str(u.choose(&["", " 1", " 3", " 99", " x"])?);
        }
        _ => {}
    }
    Ok(s)
}

/// Notes what the server must answer to one frame of connection `conn` (`None`: an over-long
/// line), unless it is blank or follows a QUIT.
fn expect_answer(
    conn: &mut Conn,
    frame: Option<Vec<u8>>,
    ctx: &Ctx<'_>,
    sent: u64,
) -> Option<Request> {
    if conn.quit_sent {
        return None;
    }
    let exact = ctx.exact && conn.awaiting.is_empty();
    let awaiting = match frame {
        None => Awaiting {
            label: None,
            command: None,
            code: Some(Code::LINE_TOO_LONG),
            request: None,
            line: "<over-long line>".into(),
            sent,
            sent_at: ctx.now,
            dead_token: false,
            blocks: None,
        },
        Some(bytes) => match String::from_utf8(bytes) {
            Err(e) => Awaiting {
                label: None,
                command: None,
                code: Some(Code::BAD_ENCODING),
                request: None,
                line: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                sent,
                sent_at: ctx.now,
                dead_token: false,
                blocks: None,
            },
            Ok(line) => match split_head(&line) {
                Ok(None) => return None,
                Err(r) => Awaiting {
                    label: r.label,
                    command: r.command,
                    code: None,
                    request: None,
                    line,
                    sent,
                    sent_at: ctx.now,
                    dead_token: false,
                    blocks: None,
                },
                Ok(Some(head)) => {
                    let request = parse(&line).ok().flatten();
                    if matches!(
                        request,
                        Some(Request {
                            command: Command::Quit { .. },
                            ..
                        })
                    ) {
                        conn.quit_sent = true;
                    }
                    let dead_token = match &request {
                        Some(Request {
                            command: Command::Resume { token },
                            ..
                        }) => ctx
                            .tokens
                            .values()
                            .find(|t| t.token == token.expose())
                            .is_some_and(|t| {
                                t.revoked || (exact && !t.uncertain && t.expired(ctx.now))
                            }),
                        _ => false,
                    };
                    let blocks = match (&request, &conn.account) {
                        (
                            Some(Request {
                                command:
                                    Command::Msg { .. } | Command::Group { .. } | Command::All { .. },
                                ..
                            }),
                            Some(me),
                        ) if exact => {
                            let either = ctx
                                .blocks
                                .iter()
                                .filter_map(|(a, b)| {
                                    if a == me {
                                        Some(b.clone())
                                    } else if b == me {
                                        Some(a.clone())
                                    } else {
                                        None
                                    }
                                })
                                .collect();
                            let blockers = ctx
                                .blocks
                                .iter()
                                .filter(|(_, b)| b == me)
                                .map(|(a, _)| a.clone())
                                .collect();
                            Some((me.clone(), either, blockers))
                        }
                        _ => None,
                    };
                    Awaiting {
                        label: head.label.map(str::to_owned),
                        command: Some(head.verb),
                        code: None,
                        request,
                        line: line.clone(),
                        sent,
                        sent_at: ctx.now,
                        dead_token,
                        blocks,
                    }
                }
            },
        },
    };
    let request = awaiting.request.clone();
    conn.awaiting.push_back(awaiting);
    request
}

impl Harness {
    fn new() -> Harness {
        Harness {
            sim: Sim::new(),
            conns: Default::default(),
            serials: 0,
            accounts: BTreeMap::new(),
            passwords: BTreeMap::new(),
            sent: BTreeMap::new(),
            delivered: Vec::new(),
            live: BTreeMap::new(),
            idle: true,
            abandoned: Vec::new(),
            log: VecDeque::new(),
            clock: 0,
            rooms: BTreeMap::new(),
            room_cmds: Vec::new(),
            trace: std::env::var_os("CHATD_FUZZ_TRACE").is_some(),
            now: EPOCH_MS,
            tokens: BTreeMap::new(),
            blocks: BTreeSet::new(),
            deleted: BTreeSet::new(),
            unsure: Unsure::default(),
        }
    }

    /// A command that will get no answer: its connection closed first. A message may still have
    /// been committed and delivered; another command may still have taken effect.
    fn abandon(&mut self, a: Awaiting) {
        match a.request.map(|r| r.command) {
            Some(c @ (Command::Msg { .. } | Command::Group { .. } | Command::All { .. })) => {
                self.abandoned.push(c)
            }
            Some(Command::Password { .. }) => {
                self.unsure.password = true;
                self.unsure.revoke = true;
            }
            Some(Command::Unregister { .. }) => {
                self.unsure.unregister = true;
                self.unsure.revoke = true;
                self.unsure.block = true;
            }
            Some(Command::Revoke(_)) => self.unsure.revoke = true,
            Some(Command::Block { .. } | Command::Unblock { .. }) => self.unsure.block = true,
            _ => {}
        }
    }

    /// Notes the frames a connection sent (see `expect_answer`), each with a tick of the clock, and
    /// the room commands among them the checks need to know about.
    fn expect(&mut self, i: usize, frames: Vec<Option<Vec<u8>>>) {
        let mut handed = Vec::new();
        {
            let Harness {
                conns,
                tokens,
                blocks,
                now,
                idle,
                clock,
                ..
            } = self;
            let ctx = Ctx {
                exact: *idle,
                now: *now,
                tokens,
                blocks,
            };
            let Some(conn) = conns[i].as_mut() else {
                return;
            };
            for frame in frames {
                *clock += 1;
                let tick = *clock;
                let account = conn.account.clone();
                if let Some(request) = expect_answer(conn, frame, &ctx, tick) {
                    handed.push((tick, account, request));
                }
            }
        }
        for (tick, account, request) in handed {
            self.note_room_command(tick, account, request);
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Notes a room command handed to the server at `tick` by a connection logged in as `account`.
    fn note_room_command(&mut self, tick: u64, account: Option<String>, request: Request) {
        let (room, kind) = match request.command {
            Command::Unban { room, name } => (room, RoomCmdKind::Unban(key(name.as_str()))),
            Command::Room {
                sub: crate::proto::command::RoomSub::Public,
                room,
            } => (room, RoomCmdKind::Public),
            Command::Room {
                sub: crate::proto::command::RoomSub::Delete,
                room,
            } => (room, RoomCmdKind::Delete),
            Command::Join { room } => {
                // A JOIN on its way may make the account a member before its OK is read.
                if let Some(a) = account {
                    self.room(room.as_str()).ever.insert(a);
                }
                return;
            }
            _ => return,
        };
        self.room_cmds.push(RoomCmd {
            tick,
            room: key(room.as_str()),
            kind,
        });
    }

    fn room(&mut self, name: &str) -> &mut RoomModel {
        self.rooms.entry(key(name)).or_default()
    }

    /// Whether a command of `kind` for `room` was handed to the server after tick `after`.
    fn sent_since(&self, room: &str, after: u64, kind: impl Fn(&RoomCmdKind) -> bool) -> bool {
        self.room_cmds
            .iter()
            .any(|c| c.tick > after && c.room == room && kind(&c.kind))
    }

    /// The largest id below which `account` may not see the room: the join to check, if it still
    /// holds (no ROOM PUBLIC or DELETE of the room sent since the room was made private).
    fn hidden_below(&self, room: &str, account: &str) -> Option<u64> {
        let (w, private_sent) = *self.rooms.get(room)?.joins.get(account)?;
        let undone = self.sent_since(room, private_sent, |k| {
            matches!(k, RoomCmdKind::Public | RoomCmdKind::Delete)
        });
        (!undone).then_some(w)
    }

    fn note(&mut self, mut entry: String) {
        if self.trace {
            eprintln!("{entry}");
        }
        if entry.len() > 240 {
            let mut cut = 200;
            while !entry.is_char_boundary(cut) {
                cut -= 1;
            }
            let dropped = entry.len() - cut;
            entry.truncate(cut);
            let _ = write!(entry, "... ({dropped} more bytes)");
        }
        if self.log.len() == 60 {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    /// Panics with the recent exchange, so a failure can be read without rerunning it.
    fn fail(&self, what: &str) -> ! {
        let mut s = format!("{what}\nrecent exchange:\n");
        for l in &self.log {
            s.push_str(l);
            s.push('\n');
        }
        panic!("{s}");
    }

    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(&what());
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Connect(i) => {
                if self.conns[i].is_some() {
                    self.disconnect(i);
                }
                self.serials += 1;
                self.conns[i] = Some(Conn {
                    serial: self.serials,
                    framing: LineDecoder::new(MAX_LINE_BYTES),
                    awaiting: VecDeque::new(),
                    quit_sent: false,
                    quit_seen: false,
                    hello_seen: false,
                    account: None,
                    data_run: None,
                    received: BTreeSet::new(),
                    rooms: BTreeMap::new(),
                    replayed: BTreeSet::new(),
                    data_ids: Vec::new(),
                    device_token: None,
                    bye_seen: false,
                });
                self.note(format!("{} connects", CLIENTS[i]));
                self.sim.connect(CLIENTS[i]);
            }
            Op::Disconnect(i) => self.disconnect(i),
            Op::Send(i, bytes, cut) => {
                if self.conns[i].is_none() {
                    return;
                }
                let (first, second) = bytes.split_at(cut);
                for part in [first, second] {
                    if !part.is_empty() {
                        self.send(i, part);
                    }
                }
            }
            Op::Advance(ms) => {
                self.now += ms;
                self.sim.advance(ms);
            }
            Op::Queue(i, line) => {
                if self.conns[i].is_none() {
                    return;
                }
                self.note(format!("{} queues {line:?}", CLIENTS[i]));
                self.expect(i, vec![Some(line.clone().into_bytes())]);
                self.sim.queue(CLIENTS[i], &line);
                self.idle = false;
            }
            Op::Step => {
                self.note("step".into());
                self.sim.step();
            }
            Op::Drop(i) => self.close(i, false),
        }
        self.read_all();
        self.check_settled();
    }

    fn disconnect(&mut self, i: usize) {
        self.close(i, true);
    }

    /// Closes connection `i`, then runs every job (`settle`) or none.
    fn close(&mut self, i: usize, settle: bool) {
        let Some(conn) = &self.conns[i] else {
            return;
        };
        // An account created by a REGISTER whose answer never came would be unknown to the
        // harness; let such a REGISTER finish first.
        if conn.awaiting.iter().any(|a| {
            matches!(
                a.request,
                Some(Request {
                    command: Command::Register { .. },
                    ..
                })
            )
        }) {
            self.sim.settle();
            self.idle = true;
        }
        self.read_all();
        self.check_settled();
        self.note(format!(
            "{} {}",
            CLIENTS[i],
            if settle { "disconnects" } else { "drops" }
        ));
        let conn = self.conns[i].take().expect("checked above");
        for a in conn.awaiting {
            self.abandon(a);
        }
        if settle {
            self.sim.disconnect(CLIENTS[i]);
            self.idle = true;
        } else {
            self.sim.drop_connection(CLIENTS[i]);
            self.idle = false;
        }
    }

    /// Feeds `bytes` to the model's framing, noting the commands they complete, then to the server.
    fn send(&mut self, i: usize, bytes: &[u8]) {
        self.note(format!(
            "{} sends {:?}",
            CLIENTS[i],
            String::from_utf8_lossy(bytes)
        ));
        let conn = self.conns[i].as_mut().expect("connected");
        let mut frames: Vec<Option<Vec<u8>>> = Vec::new();
        conn.framing.feed(bytes, |f| {
            frames.push(match f {
                Frame::Line(l) => Some(l.to_vec()),
                Frame::TooLong => None,
            })
        });
        self.expect(i, frames);
        self.sim.send_bytes(CLIENTS[i], bytes);
        self.idle = true;
    }

    fn read_all(&mut self) {
        for (i, name) in CLIENTS.iter().enumerate() {
            if self.conns[i].is_some() {
                let out = self.sim.output(name);
                for line in out.split_inclusive('\n') {
                    self.note(format!("{name} gets {line:?}"));
                    self.receive(i, line);
                }
            }
        }
    }

    /// Everything sent has been answered (the simulator runs every job before returning), and a
    /// connection is closed exactly when its QUIT was answered.
    fn check_settled(&self) {
        for (i, conn) in self.conns.iter().enumerate() {
            let Some(c) = conn else { continue };
            self.check(c.hello_seen, || format!("{}: no HELLO", CLIENTS[i]));
            self.check(!self.idle || c.awaiting.is_empty(), || {
                format!("{}: commands without a final: {:?}", CLIENTS[i], c.awaiting)
            });
            self.check(c.data_run.is_none(), || {
                format!("{}: data lines without their final", CLIENTS[i])
            });
            self.check(
                self.sim.is_closed(CLIENTS[i]) == (c.quit_seen || c.bye_seen),
                || {
                    format!(
                        "{}: closed without QUIT or BYE, or QUIT left it open",
                        CLIENTS[i]
                    )
                },
            );
        }
    }

    /// Checks one line received by client `i` and updates the model.
    fn receive(&mut self, i: usize, raw: &str) {
        let who = CLIENTS[i];
        self.check(raw.ends_with('\n'), || {
            format!("{who}: unterminated {raw:?}")
        });
        let parsed = server_line::parse(raw);
        let c = self.conns[i].as_ref().expect("connected");
        self.check(!c.quit_seen, || format!("{who}: {raw:?} after OK QUIT"));
        self.check(!c.bye_seen, || format!("{who}: {raw:?} after BYE"));
        if !c.hello_seen {
            self.check(matches!(parsed, ServerLine::Hello { .. }), || {
                format!("{who}: first line is not HELLO: {raw:?}")
            });
            self.conns[i].as_mut().expect("connected").hello_seen = true;
            return;
        }
        if raw.starts_with("PONG") {
            // Checked byte for byte against the PING it answers. A token may hold a CR; one at its
            // very end (sent as `PING a` CR CR LF) reads as a CRLF terminator, so such a line is not
            // expected to parse.
            let want = match c.awaiting.front().and_then(|a| a.request.as_ref()) {
                Some(Request {
                    command: Command::Ping { token },
                    ..
                }) => match token {
                    Some(t) => format!("PONG {t}\n"),
                    None => "PONG\n".to_owned(),
                },
                _ => self.fail(&format!("{who}: {raw:?} answers no PING")),
            };
            self.check(raw == want && c.data_run.is_none(), || {
                format!("{who}: {raw:?} where {want:?} was due")
            });
            if !raw.trim_end_matches('\n').ends_with('\r') {
                self.check(matches!(parsed, ServerLine::Pong { .. }), || {
                    format!("{who}: {raw:?} does not parse as PONG")
                });
            }
            self.conn_mut(i).data_run = Some(Verb::Ping);
            return;
        }
        // The commands whose answer a data line may belong to.
        let data_of: &[Verb] = match &parsed {
            ServerLine::User { .. } => &[Verb::Users],
            ServerLine::Help { .. } => &[Verb::Help],
            ServerLine::History(_) => &[Verb::History, Verb::Join],
            ServerLine::Friend { .. } => &[Verb::Friend],
            ServerLine::Token(_) => &[Verb::Tokens],
            ServerLine::Blocked { .. } => &[Verb::Blocks],
            ServerLine::Room(_) => &[Verb::Rooms, Verb::Join, Verb::Room],
            ServerLine::Member { .. } => &[Verb::Members],
            ServerLine::Ban { .. } | ServerLine::Invitation { .. } => &[Verb::Room],
            _ => &[],
        };
        if !data_of.is_empty() {
            // It answers the oldest unanswered command, whose final comes next.
            let front = c.awaiting.front().and_then(|a| a.command);
            let owner = front.filter(|v| data_of.contains(v));
            let Some(owner) = owner else {
                self.fail(&format!(
                    "{who}: {raw:?} while the next final due is of {front:?}"
                ));
            };
            self.check(c.data_run.is_none_or(|d| d == owner), || {
                format!("{who}: {raw:?} inside the answer of another command")
            });
            let conn = self.conns[i].as_mut().expect("connected");
            conn.data_run = Some(owner);
            if let ServerLine::History(m) = &parsed {
                let room = match m.to {
                    Recipient::Room(r) => Some(key(r)),
                    _ => None,
                };
                conn.data_ids.push((m.id, room));
            }
            return;
        }
        match parsed {
            ServerLine::Ok { label, reply } => {
                self.final_line(i, raw, label, Some(reply.verb()), Err(reply))
            }
            ServerLine::Fail {
                label,
                command,
                code,
                ..
            } => self.final_line(i, raw, label, command, Ok(code)),
            ServerLine::Message(m) => {
                self.check(c.data_run.is_none(), || {
                    format!("{who}: {raw:?} inside a multi-line answer")
                });
                let Some(me) = c.account.clone() else {
                    self.fail(&format!("{who}: {raw:?} while not logged in"));
                };
                let addressed = match &m.to {
                    Recipient::User(u) => key(u) == me,
                    Recipient::Group(list) => list.iter().any(|u| key(u) == me),
                    Recipient::All => key(m.from) != me,
                    Recipient::Room(r) => {
                        self.check_room_message(i, &me, &key(r), m.id, raw);
                        true
                    }
                };
                self.check(addressed, || {
                    format!("{who}: {raw:?} reached {me}, who it was not addressed to")
                });
                let conn = self.conns[i].as_mut().expect("connected");
                let first = conn.received.insert((me.clone(), m.id));
                let serial = conn.serial;
                self.check(first, || {
                    format!(
                        "{who}: message {} twice to {me} on connection {serial}",
                        m.id
                    )
                });
                self.live.entry(me.clone()).or_default().insert(m.id);
                self.delivered.push(Delivered {
                    id: m.id,
                    from: m.from.to_owned(),
                    to: m.to.to_string(),
                    text: m.text.to_owned(),
                    account: me,
                });
            }
            ServerLine::Bye { code, .. } => {
                self.check(c.data_run.is_none(), || {
                    format!("{who}: {raw:?} inside a multi-line answer")
                });
                // The only reasons the server closes a connection in these runs: the outbox never
                // fills, and the server is never stopped.
                self.check(
                    matches!(code, ByeCode::REVOKED | ByeCode::ACCOUNT_DELETED),
                    || format!("{who}: unexpected {raw:?}"),
                );
                let conn = self.conn_mut(i);
                conn.bye_seen = true;
                conn.quit_sent = true;
                conn.account = None;
                conn.device_token = None;
                let left: Vec<Awaiting> = conn.awaiting.drain(..).collect();
                for a in left {
                    self.abandon(a);
                }
            }
            ServerLine::BacklogEnd { .. }
            | ServerLine::Presence { .. }
            | ServerLine::Away { .. }
            | ServerLine::Friendship { .. }
            | ServerLine::Unread { .. }
            | ServerLine::Read { .. } => {
                self.check(c.data_run.is_none(), || {
                    format!("{who}: {raw:?} inside a multi-line answer")
                });
                self.check(c.account.is_some(), || {
                    format!("{who}: {raw:?} while not logged in")
                });
            }
            ServerLine::RoomEvent { room, event } => {
                self.check(c.data_run.is_none(), || {
                    format!("{who}: {raw:?} inside a multi-line answer")
                });
                let Some(me) = c.account.clone() else {
                    self.fail(&format!("{who}: {raw:?} while not logged in"));
                };
                self.room_event(i, &me, &key(room), event);
            }
            other => self.fail(&format!("{who}: unexpected line {raw:?} ({other:?})")),
        }
    }

    /// An OK (`Err(reply)`) or FAIL (`Ok(code)`): it answers the oldest unanswered command of the
    /// connection.
    fn final_line(
        &mut self,
        i: usize,
        raw: &str,
        label: Option<&str>,
        command: Option<Verb>,
        outcome: Result<Code, OkReply<'_>>,
    ) {
        let fail_code = outcome.ok();
        let who = CLIENTS[i];
        let c = self.conns[i].as_ref().expect("connected");
        if let Some(run) = c.data_run {
            self.check(fail_code.is_none() && command == Some(run), || {
                format!("{who}: data lines of {run:?} ended by {raw:?}")
            });
        }
        let Some(want) = c.awaiting.front() else {
            self.fail(&format!("{who}: {raw:?} answers no command"));
        };
        self.check(
            want.label.as_deref() == label && want.command == command,
            || {
                format!(
                    "{who}: {raw:?} out of order; the next command is {:?} (label {:?}, {:?})",
                    want.line, want.label, want.command
                )
            },
        );
        if let Some(code) = want.code {
            self.check(fail_code == Some(code), || {
                format!("{who}: {raw:?} should be FAIL {}", code.as_str())
            });
        }
        let (want, data_ids) = {
            let conn = self.conn_mut(i);
            conn.data_run = None;
            let data_ids = std::mem::take(&mut conn.data_ids);
            (conn.awaiting.pop_front().expect("checked above"), data_ids)
        };
        let Err(reply) = outcome else {
            return;
        };
        let (sent_at, dead_token, blocks) = (want.sent_at, want.dead_token, want.blocks);
        let sent_tick = want.sent;
        let request = want.request.map(|r| r.command);
        let me = self.conns[i].as_ref().and_then(|c| c.account.clone());
        if let (Some(me), Some(cmd)) = (&me, &request) {
            self.room_final(i, me, sent_tick, reply, cmd, &data_ids);
        }
        match (reply, request) {
            (OkReply::Register { name: shown }, Some(Command::Register { name, password })) => {
                self.check(shown == name.as_str(), || {
                    format!("{who}: {raw:?} for REGISTER {name}")
                });
                self.check(!self.deleted.contains(&key(name.as_str())), || {
                    format!("{who}: {raw:?}: the name of a deleted account was registered again")
                });
                self.accounts.insert(key(name.as_str()), name.to_string());
                self.passwords
                    .insert(key(name.as_str()), password.expose().to_owned());
            }
            (OkReply::Login { name: shown }, Some(Command::Login { name, password })) => {
                let k = key(&name);
                if !self.accounts.contains_key(&k) {
                    // A REGISTER on another connection may have committed before this LOGIN was
                    // checked while its OK has not been read yet: the harness reads clients one
                    // after the other. Take it as registered if such a REGISTER is waiting.
                    self.adopt_registration(shown, password.expose());
                }
                let registered = self.accounts.get(&k).cloned();
                self.check(registered.as_deref() == Some(shown), || {
                    format!("{who}: {raw:?} for LOGIN {name}, registered as {registered:?}")
                });
                let conn = self.conn_mut(i);
                conn.account = Some(k);
                // Nothing said on this connection yet about the new account's rooms.
                conn.rooms.clear();
                conn.device_token = None;
            }
            (OkReply::Resume { name }, Some(Command::Resume { token })) => {
                let found = self
                    .tokens
                    .iter_mut()
                    .find(|(_, t)| t.token == token.expose());
                let Some((&id, t)) = found else {
                    self.fail(&format!(
                        "{who}: {raw:?} with a token the server never issued"
                    ));
                };
                let account = t.account.clone();
                let revoked = t.revoked;
                t.last_used_ms = self.now;
                t.uncertain |= self.now != sent_at;
                self.check(!dead_token && !revoked, || {
                    format!("{who}: {raw:?}: a revoked or expired token logged in")
                });
                self.check(account == key(name), || {
                    format!("{who}: {raw:?}: token of {account} logged in as {name}")
                });
                let conn = self.conn_mut(i);
                conn.account = Some(account);
                conn.device_token = Some(id);
                // Nothing said on this connection yet about the new account's rooms.
                conn.rooms.clear();
            }
            (OkReply::Token { id, token }, Some(Command::Token { .. })) => {
                let Some(account) = me else {
                    self.fail(&format!("{who}: {raw:?} while not logged in"));
                };
                let issued = TokenModel {
                    token: token.to_owned(),
                    account,
                    created_ms: self.now,
                    last_used_ms: self.now,
                    revoked: false,
                    uncertain: self.now != sent_at,
                };
                let known = self.tokens.insert(id, issued);
                self.check(known.is_none(), || format!("{who}: token id {id} reused"));
                self.conn_mut(i).device_token = Some(id);
            }
            (OkReply::Revoke { .. }, Some(Command::Revoke(which))) => {
                let Some(me) = me else {
                    self.fail(&format!("{who}: {raw:?} while not logged in"));
                };
                for (id, t) in self.tokens.iter_mut() {
                    if t.account == me && (which == Revoke::All || which == Revoke::One(*id)) {
                        t.revoked = true;
                    }
                }
                let conn = self.conn_mut(i);
                if conn
                    .device_token
                    .is_some_and(|d| which == Revoke::All || which == Revoke::One(d))
                {
                    conn.device_token = None;
                }
            }
            (OkReply::Password { .. }, Some(Command::Password { new, .. })) => {
                let Some(me) = me else {
                    self.fail(&format!("{who}: {raw:?} while not logged in"));
                };
                let keep = self.conns[i].as_ref().and_then(|c| c.device_token);
                for (id, t) in self.tokens.iter_mut() {
                    if t.account == me && Some(*id) != keep {
                        t.revoked = true;
                    }
                }
                self.passwords.insert(me, new.expose().to_owned());
            }
            (OkReply::Unregister { name }, Some(Command::Unregister { .. })) => {
                let Some(me) = me else {
                    self.fail(&format!("{who}: {raw:?} while not logged in"));
                };
                self.check(me == key(name), || {
                    format!("{who}: {raw:?} while logged in as {me}")
                });
                for t in self.tokens.values_mut().filter(|t| t.account == me) {
                    t.revoked = true;
                }
                self.blocks.retain(|(a, b)| *a != me && *b != me);
                self.deleted.insert(me);
                let conn = self.conn_mut(i);
                conn.account = None;
                conn.device_token = None;
                conn.rooms.clear();
            }
            (OkReply::Block { name }, Some(Command::Block { .. })) => {
                if let Some(me) = me {
                    self.blocks.insert((me, key(name)));
                }
            }
            (OkReply::Unblock { name }, Some(Command::Unblock { .. })) => {
                if let Some(me) = me {
                    self.blocks.remove(&(me, key(name)));
                }
            }
            (OkReply::Logout, _) => {
                let conn = self.conn_mut(i);
                conn.account = None;
                conn.rooms.clear();
                conn.device_token = None;
            }
            (OkReply::Quit, _) => {
                let conn = self.conn_mut(i);
                conn.account = None;
                conn.quit_seen = true;
                let left = conn.awaiting.len();
                self.check(left == 0, || {
                    format!("{who}: {left} commands counted after QUIT")
                });
            }
            (
                OkReply::Msg { id, .. }
                | OkReply::RoomMsg { id, .. }
                | OkReply::Group { id, .. }
                | OkReply::All { id, .. },
                Some(cmd @ (Command::Msg { .. } | Command::Group { .. } | Command::All { .. })),
            ) => {
                let from = self.conns[i].as_ref().and_then(|c| c.account.clone());
                let Some(from) = from else {
                    self.fail(&format!("{who}: {raw:?} without an id or a sender"));
                };
                let (to, all, room, text) = sent_parts(cmd);
                let mut blockers = BTreeSet::new();
                if let Some((sender, either, who_block)) = blocks {
                    if sender == from {
                        // A block between the sender and a recipient refuses the whole message.
                        let barred: Vec<&String> = to
                            .iter()
                            .filter(|r| **r != from && either.contains(*r))
                            .collect();
                        self.check(barred.is_empty(), || {
                            format!("{who}: {raw:?} acknowledged across a block with {barred:?}")
                        });
                        blockers = who_block;
                    }
                }
                let known = self.sent.insert(
                    id,
                    Sent {
                        id,
                        from,
                        to,
                        all,
                        room,
                        text,
                        blockers,
                    },
                );
                self.check(known.is_none(), || format!("{who}: message id {id} reused"));
            }
            _ => {}
        }
    }

    /// Records the registration of `shown` (the name as the server says it was registered) from an
    /// unanswered REGISTER of exactly that name with `password` on any connection, if there is one.
    fn adopt_registration(&mut self, shown: &str, password: &str) {
        let pending = self
            .conns
            .iter()
            .flatten()
            .flat_map(|c| c.awaiting.iter())
            .find_map(|a| match &a.request {
                Some(Request {
                    command: Command::Register { name, password: pw },
                    ..
                }) if name.as_str() == shown && pw.expose() == password => Some(name.clone()),
                _ => None,
            });
        if let Some(name) = pending {
            self.accounts.insert(key(name.as_str()), name.to_string());
            self.passwords
                .insert(key(name.as_str()), password.to_owned());
        }
    }

    fn conn_mut(&mut self, i: usize) -> &mut Conn {
        self.conns[i].as_mut().expect("connected")
    }

    /// The end-of-run checks: deliveries match what was sent, and HISTORY holds every message.
    fn finish(mut self) {
        self.sim.settle();
        self.idle = true;
        self.read_all();
        self.check_settled();
        let delivered = std::mem::take(&mut self.delivered);
        for d in &delivered {
            if !self.sent.contains_key(&d.id) && !self.adopt(d) {
                self.fail(&format!(
                    "MESSAGE {} matches no acknowledged or abandoned command: {d:?}",
                    d.id
                ));
            }
            let s = &self.sent[&d.id];
            let want_to = if let Some(room) = &s.room {
                // Shown as created: the letter case is the server's to choose.
                if key(&d.to) == *room {
                    d.to.clone()
                } else {
                    room.clone()
                }
            } else if s.all {
                "*".to_owned()
            } else {
                s.to.iter()
                    .map(|k| self.accounts.get(k).cloned().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let want_from = self.accounts.get(&s.from).cloned().unwrap_or_default();
            self.check(
                d.from == want_from && d.to == want_to && d.text == s.text,
                || format!("delivered {d:?} differs from sent {s:?}"),
            );
            self.check(!s.blockers.contains(&d.account), || {
                format!(
                    "message {} reached {}, who blocks its sender",
                    d.id, d.account
                )
            });
        }
        // Each party reads the conversation with each other party, from a fresh connection. The
        // run may have failed enough logins for a name to put it in back-off (spec 7.5); the clock
        // moves past the time failures are remembered, so that the checker's logins are let in.
        let memory = i64::try_from(LOGIN_FAILURE_MEMORY.as_millis()).unwrap_or(i64::MAX);
        self.sim.advance(memory + 1000);
        let mut queries: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for s in self.sent.values() {
            if s.all {
                queries
                    .entry(s.from.clone())
                    .or_default()
                    .push(("*".into(), s.id));
            }
            for r in &s.to {
                queries
                    .entry(s.from.clone())
                    .or_default()
                    .push((r.clone(), s.id));
                queries
                    .entry(r.clone())
                    .or_default()
                    .push((s.from.clone(), s.id));
            }
        }
        for (me, list) in queries {
            // A deleted account cannot log in; the others still read their history with it.
            if !self.deleted.contains(&me) {
                self.history_of(&me, &list);
            }
        }
        self.check_tokens();
    }

    /// Each token the harness followed logs in exactly when it should: one that is revoked or
    /// expired never does, one that is neither does (unless a command lost with its connection
    /// may have revoked it, or a race left its times unknown).
    fn check_tokens(&mut self) {
        let ids: Vec<u64> = self.tokens.keys().copied().collect();
        for id in ids {
            let t = &self.tokens[&id];
            let dead = t.revoked || (!t.uncertain && t.expired(self.now));
            let alive = !t.revoked && !t.uncertain && !t.expired(self.now) && !self.unsure.revoke;
            if !dead && !alive {
                continue;
            }
            let line = format!("RESUME {}", t.token);
            self.sim.connect(CHECKER);
            self.sim.send(CHECKER, &line);
            let out = self.sim.output(CHECKER);
            self.sim.disconnect(CHECKER);
            let resumed = out.lines().any(|l| l.starts_with("OK RESUME "));
            self.check(resumed == alive, || {
                format!(
                    "token {} ({:?}) at {}: resumed {resumed}, expected {alive}: {out:?}",
                    format_id(id),
                    self.tokens[&id],
                    self.now
                )
            });
            if resumed {
                if let Some(t) = self.tokens.get_mut(&id) {
                    t.last_used_ms = self.now;
                }
            }
        }
    }

    /// Logs the checker in as `me` with the password the harness knows (or, when a PASSWORD was
    /// lost with its connection, either of the grammar's); the login's output, or `None` when the
    /// account may have been deleted unseen.
    fn checker_login(&mut self, me: &str) -> Option<String> {
        let mut passwords = vec![self.passwords.get(me).cloned().unwrap_or_default()];
        if self.unsure.password {
            passwords.push(password_for(me));
            passwords.push(other_password_for(me));
        }
        for password in passwords {
            self.sim.connect(CHECKER);
            self.sim.send(CHECKER, &format!("LOGIN {me} {password}"));
            let out = self.sim.output(CHECKER);
            if out.lines().any(|l| l.starts_with("OK LOGIN ")) {
                return Some(out);
            }
            self.sim.disconnect(CHECKER);
        }
        if self.unsure.unregister {
            return None;
        }
        self.fail(&format!("the checker cannot log in as {me}"));
    }

    /// Takes a message the harness saw no OK for as one of the abandoned commands with the same
    /// addressees and text, if there is one; from then on it counts as sent.
    fn adopt(&mut self, d: &Delivered) -> bool {
        let display = |k: String| self.accounts.get(&k).cloned().unwrap_or_default();
        let found = self.abandoned.iter().position(|c| match c {
            Command::Msg {
                to: Target::Room(r),
                text,
            } => key(&d.to) == key(r.as_str()) && *text == d.text,
            Command::Msg { to, text } => d.to == display(key(to.as_str())) && *text == d.text,
            Command::Group { to, text } => {
                let names: Vec<String> = to.iter().map(|n| display(key(n.as_str()))).collect();
                d.to == names.join(",") && *text == d.text
            }
            Command::All { text } => d.to == "*" && *text == d.text,
            _ => false,
        });
        let Some(at) = found else {
            return false;
        };
        let (to, all, room, text) = sent_parts(self.abandoned.remove(at));
        self.sent.insert(
            d.id,
            Sent {
                id: d.id,
                from: key(&d.from),
                to,
                all,
                room,
                text,
                blockers: BTreeSet::new(),
            },
        );
        true
    }

    /// A room MESSAGE reached connection `i`, logged in as `me`: it must be a member (4.25), may
    /// not see the room's past if it joined a private room (see `hidden_below`), and may not have
    /// had the message in a JOIN's replay on this connection.
    fn check_room_message(&mut self, i: usize, me: &str, room: &str, id: u64, raw: &str) {
        let who = CLIENTS[i];
        let c = self.conns[i].as_ref().expect("connected");
        let ever = self.rooms.get(room).is_some_and(|r| r.ever.contains(me));
        self.check(ever, || {
            format!("{who}: {raw:?} reached {me}, never a member of {room}")
        });
        self.check(c.rooms.get(room) != Some(&false), || {
            format!("{who}: {raw:?} reached {me} after this connection was told it left {room}")
        });
        self.check(!c.replayed.contains(&(me.to_owned(), id)), || {
            format!("{who}: {raw:?} came live after the JOIN's replay held it")
        });
        if let Some(w) = self.hidden_below(room, me) {
            self.check(id > w, || {
                format!("{who}: {raw:?} was said in private {room} before {me} joined (<= {w})")
            });
        }
    }

    /// A room event on connection `i`, logged in as `me`: what it says of `me`'s membership.
    fn room_event(&mut self, i: usize, me: &str, room: &str, event: RoomEvent<'_>) {
        let view = match event {
            RoomEvent::Joined { name } => {
                self.room(room).ever.insert(key(name));
                (key(name) == me).then_some(true)
            }
            RoomEvent::Parted { name, .. }
            | RoomEvent::Kicked { name, .. }
            | RoomEvent::Banned { name, .. } => (key(name) == me).then_some(false),
            RoomEvent::Deleted { .. } => {
                self.room_gone(room);
                Some(false)
            }
            RoomEvent::Privacy { privacy, .. } => {
                if privacy == crate::proto::room::Privacy::Public {
                    self.room(room).private = None;
                }
                None
            }
            RoomEvent::Unbanned { name, .. } => {
                self.room(room).bans.remove(&key(name));
                None
            }
            RoomEvent::Topic { .. } | RoomEvent::Role { .. } | RoomEvent::Invited { .. } => None,
        };
        if let Some(member) = view {
            self.conn_mut(i).rooms.insert(room.to_owned(), member);
        }
    }

    /// A room was deleted: what was known of it is of a room that is gone.
    fn room_gone(&mut self, room: &str) {
        let r = self.room(room);
        r.bans.clear();
        r.private = None;
        r.joins.clear();
    }

    /// The OK of a room command (or of a MSG or HISTORY of a room), sent at tick `sent_at` by
    /// connection `i`, logged in as `me`, after the HISTORY data lines `data_ids`.
    fn room_final(
        &mut self,
        i: usize,
        me: &str,
        sent_at: u64,
        reply: OkReply<'_>,
        cmd: &Command,
        data_ids: &[(u64, Option<String>)],
    ) {
        let who = CLIENTS[i];
        let now = self.tick();
        match (reply, cmd) {
            (OkReply::Join { room, outcome }, Command::Join { .. }) => {
                let k = key(room);
                self.room(room).ever.insert(me.to_owned());
                self.conn_mut(i).rooms.insert(k.clone(), true);
                // A banned account does not get in again without an UNBAN, or the room's
                // deletion, sent after its BAN.
                let banned = self.rooms.get(&k).and_then(|r| r.bans.get(me)).copied();
                if let Some((ban_sent, ban_seen)) = banned {
                    let undone = self.sent_since(&k, ban_sent, |kind| match kind {
                        RoomCmdKind::Unban(who) => who == me,
                        RoomCmdKind::Delete => true,
                        RoomCmdKind::Public => false,
                    });
                    self.check(sent_at < ban_seen || undone, || {
                        format!("{who}: {me} joined {room} ({outcome:?}) after it was banned")
                    });
                }
                match outcome {
                    JoinOutcome::Created => {
                        self.room_gone(&k);
                    }
                    JoinOutcome::Joined => {
                        let r = self.room(room);
                        let private = r.private.filter(|&(_, seen)| seen < sent_at);
                        let undone = private.is_some_and(|(private_sent, _)| {
                            self.sent_since(&k, private_sent, |kind| {
                                matches!(kind, RoomCmdKind::Public | RoomCmdKind::Delete)
                            })
                        });
                        let r = self.room(room);
                        match private {
                            Some((private_sent, _)) if !undone => {
                                let w = r
                                    .acked
                                    .iter()
                                    .filter(|(seen, _)| *seen < sent_at)
                                    .map(|(_, id)| *id)
                                    .max()
                                    .unwrap_or(0);
                                r.joins.insert(me.to_owned(), (w, private_sent));
                            }
                            _ => {
                                r.joins.remove(me);
                            }
                        }
                    }
                    JoinOutcome::Member => {}
                }
                if let Some(w) = self.hidden_below(&k, me) {
                    for (id, _) in data_ids {
                        self.check(*id > w, || {
                            format!("{who}: JOIN {room} replayed {id}, said before {me} joined")
                        });
                    }
                }
                let conn = self.conn_mut(i);
                for (id, _) in data_ids {
                    conn.replayed.insert((me.to_owned(), *id));
                }
            }
            (
                OkReply::History { with, .. },
                Command::History {
                    with: crate::proto::command::HistoryTarget::Room(_),
                    ..
                },
            ) => {
                if let Some(w) = self.hidden_below(&key(with), me) {
                    for (id, _) in data_ids {
                        self.check(*id > w, || {
                            format!("{who}: HISTORY {with} showed {id}, said before {me} joined")
                        });
                    }
                }
            }
            (
                OkReply::Part {
                    room,
                    outcome: PartOutcome::Left,
                },
                _,
            ) => {
                self.conn_mut(i).rooms.insert(key(room), false);
            }
            (OkReply::Ban { room, name }, _) => {
                self.room(room).bans.insert(key(name), (sent_at, now));
            }
            (OkReply::Unban { room, name }, _) => {
                self.room(room).bans.remove(&key(name));
            }
            (OkReply::Room(RoomReply::Private { room }), _) => {
                // Already private: it has been since an earlier ROOM PRIVATE, if any was seen.
                let r = self.room(room);
                if r.private.is_none() {
                    r.private = Some((sent_at, now));
                }
            }
            (OkReply::Room(RoomReply::Public { room }), _) => {
                self.room(room).private = None;
            }
            (OkReply::Room(RoomReply::Delete { room }), _) => {
                let k = key(room);
                self.room_gone(&k);
                self.conn_mut(i).rooms.insert(k, false);
            }
            (
                OkReply::RoomMsg { id, .. },
                Command::Msg {
                    to: Target::Room(r),
                    ..
                },
            ) => {
                self.room(r.as_str()).acked.push((now, id));
            }
            _ => {}
        }
    }

    /// Logs in as `me` on a fresh connection and reads each (conversation, id) in `list`.
    fn history_of(&mut self, me: &str, list: &[(String, u64)]) {
        let Some(out) = self.checker_login(me) else {
            return;
        };
        // Nothing lost, nothing twice: each MSG/GROUP addressed to `me` reached one of its
        // connections live, or waits in its backlog, which this login has just delivered.
        let backlog: Vec<Delivered> = out
            .lines()
            .filter_map(|l| match server_line::parse(l) {
                ServerLine::Message(m) => Some(Delivered {
                    id: m.id,
                    from: m.from.to_owned(),
                    to: m.to.to_string(),
                    text: m.text.to_owned(),
                    account: me.to_owned(),
                }),
                _ => None,
            })
            .collect();
        for d in &backlog {
            if !self.sent.contains_key(&d.id) && !self.adopt(d) {
                self.fail(&format!("{me}'s backlog holds an unknown message: {d:?}"));
            }
        }
        let backlog: BTreeSet<u64> = backlog.iter().map(|d| d.id).collect();
        let live = self.live.get(me).cloned().unwrap_or_default();
        for s in self.sent.values().filter(|s| s.to.iter().any(|r| r == me)) {
            let (l, b) = (live.contains(&s.id), backlog.contains(&s.id));
            // A backlog holds back what comes from an account its owner blocks now.
            let blocked = self.blocks.contains(&(me.to_owned(), s.from.clone()));
            let may_be_held_back = blocked || self.unsure.block;
            self.check(!(blocked && b), || {
                format!(
                    "message {} to {me} from {}, whom {me} blocks, in the backlog",
                    s.id, s.from
                )
            });
            self.check(l != b || (!l && may_be_held_back), || {
                format!(
                    "message {} to {me}: received live {l}, in the backlog {b}",
                    s.id
                )
            });
        }
        for (with, id) in list {
            let with_name = if with == "*" {
                "*".to_owned()
            } else {
                self.accounts.get(with).cloned().unwrap_or_default()
            };
            self.sim
                .send(CHECKER, &format!("HISTORY {with_name} 1 AFTER {}", id - 1));
            let out = self.sim.output(CHECKER);
            let s = &self.sent[id];
            let found = out.lines().any(|l| match server_line::parse(l) {
                ServerLine::History(m) => m.id == *id && key(m.from) == s.from && m.text == s.text,
                _ => false,
            });
            self.check(found, || {
                format!(
                    "message {id} ({s:?}) missing from {me}'s HISTORY with {with_name}: {out:?}"
                )
            });
        }
        self.sim.disconnect(CHECKER);
    }
}

/// The addressees and text of a MSG, GROUP or ALL: (account keys, ALL, room key, text).
fn sent_parts(cmd: Command) -> (Vec<String>, bool, Option<String>, String) {
    match cmd {
        Command::Msg {
            to: Target::Room(r),
            text,
        } => (Vec::new(), false, Some(key(r.as_str())), text),
        Command::Msg { to, text } => (vec![key(to.as_str())], false, None, text),
        Command::Group { to, text } => (
            to.iter().map(|n| key(n.as_str())).collect(),
            false,
            None,
            text,
        ),
        Command::All { text } => (Vec::new(), true, None, text),
        _ => unreachable!("only messages are sent"),
    }
}
