//! Every line the server sends, as one type: [`ServerLine`].
//!
//! The server builds `ServerLine` values and encodes them here ([`ServerLine::encode`], or `Display`
//! for the line without its LF); the bundled client, the conformance runner and the fuzzers parse what
//! they receive with [`parse`], into the same type. There is no other encoder of server lines, so what
//! the server sends and what clients understand cannot drift apart.
//!
//! [`parse`] tells every server line kind of the protocol apart by its first token and splits it into
//! typed, borrowed fields; the details of an `OK` are typed per command ([`OkReply`]). It is total:
//! any input, however malformed, gives a value ([`ServerLine::Other`] for anything that is not a
//! well-formed server line) and never panics. It is strict about structure (a message id must be
//! decimal digits, a timestamp must name a real instant, a code must be one of the spec's, fixed-arity
//! lines take no extra tokens) so a test suite can rely on a parsed value meaning a well-formed line,
//! and lenient about what the protocol leaves open (human texts may be anything, tokens may be
//! separated by several spaces).
//!
//! `Display` writes the canonical form (single spaces, no terminator), so for every canonical line
//! `parse(line).to_string() == line`, and `parse(&x.to_string()) == x` for every parsed `x`: both
//! are tested, here and by the `server_line` fuzz target.

use std::fmt::{self, Write};

use super::code::{ByeCode, Code};
use super::command::{Dms, Verb};
use super::name::check_label;
use super::room::{Privacy, Role, RoomName};
use super::time::{parse_timestamp, timestamp_bytes, write_timestamp};
use super::token::{format_id, parse_id};

/// A friend's presence, as in `PRESENCE <name> ONLINE|OFFLINE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// The friend's first connection logged in.
    Online,
    /// The friend's last connection left.
    Offline,
}

impl Presence {
    /// `Online` when `online`.
    pub fn of(online: bool) -> Presence {
        if online {
            Presence::Online
        } else {
            Presence::Offline
        }
    }

    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "ONLINE",
            Presence::Offline => "OFFLINE",
        }
    }

    fn parse(s: &str) -> Option<Presence> {
        match s {
            "ONLINE" => Some(Presence::Online),
            "OFFLINE" => Some(Presence::Offline),
            _ => None,
        }
    }
}

/// What happened to a friendship, as in `FRIENDSHIP <name> <event>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FriendshipEvent {
    /// The named user asked to be your friend.
    Requested,
    /// The named user accepted your request (or you both asked).
    Accepted,
    /// The named user denied your request.
    Denied,
    /// The named user ended the friendship.
    Removed,
    /// The named user withdrew their request to you.
    Withdrawn,
}

impl FriendshipEvent {
    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            FriendshipEvent::Requested => "REQUESTED",
            FriendshipEvent::Accepted => "ACCEPTED",
            FriendshipEvent::Denied => "DENIED",
            FriendshipEvent::Removed => "REMOVED",
            FriendshipEvent::Withdrawn => "WITHDRAWN",
        }
    }

    fn parse(s: &str) -> Option<FriendshipEvent> {
        match s {
            "REQUESTED" => Some(FriendshipEvent::Requested),
            "ACCEPTED" => Some(FriendshipEvent::Accepted),
            "DENIED" => Some(FriendshipEvent::Denied),
            "REMOVED" => Some(FriendshipEvent::Removed),
            "WITHDRAWN" => Some(FriendshipEvent::Withdrawn),
            _ => None,
        }
    }
}

/// One entry of a `FRIEND LIST` answer, as in `FRIEND <name> <state>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FriendState {
    /// A friend with a connection logged in.
    Online,
    /// A friend with no connection logged in.
    Offline,
    /// The named user asked you; you have not answered.
    Incoming,
    /// You asked the named user; they have not answered.
    Outgoing,
}

impl FriendState {
    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            FriendState::Online => "ONLINE",
            FriendState::Offline => "OFFLINE",
            FriendState::Incoming => "INCOMING",
            FriendState::Outgoing => "OUTGOING",
        }
    }

    fn parse(s: &str) -> Option<FriendState> {
        match s {
            "ONLINE" => Some(FriendState::Online),
            "OFFLINE" => Some(FriendState::Offline),
            "INCOMING" => Some(FriendState::Incoming),
            "OUTGOING" => Some(FriendState::Outgoing),
            _ => None,
        }
    }
}

/// Whom a message was addressed to: the `<to>` field of MESSAGE and HISTORY lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient<'a> {
    /// One user (a MSG). Note that a GROUP with a single recipient looks the same on the wire.
    User(&'a str),
    /// The list a GROUP was sent to, in the sender's order.
    Group(Vec<&'a str>),
    /// Everyone (an ALL), sent as `*`.
    All,
    /// A room's members: a room message, sent as the room's name (`#rust`).
    Room(&'a str),
}

/// The fields of `MESSAGE` and `HISTORY` lines: `<id> <time> <from> <to> <text>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageLine<'a> {
    /// The message id.
    pub id: u64,
    /// The server time, milliseconds since the Unix epoch (sent as `YYYY-MM-DDTHH:MM:SS.mmmZ`, UTC).
    pub time_ms: i64,
    /// The sender's name as registered.
    pub from: &'a str,
    /// The addressee(s).
    pub to: Recipient<'a>,
    /// The message text, spaces kept.
    pub text: &'a str,
}

/// What became of a MSG: `DELIVERED` or `KEPT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The recipient was online and was sent the message.
    Delivered,
    /// The recipient was offline; the message waits for their next login.
    Kept,
}

impl Delivery {
    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Delivered => "DELIVERED",
            Delivery::Kept => "KEPT",
        }
    }
}

/// The outcome of `FRIEND ADD`: `FRIENDS` (they had asked you) or `REQUESTED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// The other user had asked you: you are now friends.
    Friends,
    /// Your request waits for the other user's answer.
    Requested,
}

impl AddOutcome {
    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            AddOutcome::Friends => "FRIENDS",
            AddOutcome::Requested => "REQUESTED",
        }
    }
}

/// One entry of a `TOKENS` answer: `TOKEN <id> <created> <last-used> <expires> CURRENT|OTHER
/// [<label>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLine<'a> {
    /// The token's id.
    pub id: u64,
    /// When it was issued (milliseconds since the Unix epoch).
    pub created_ms: i64,
    /// When it was last used to log in (issuing counts as a use).
    pub last_used_ms: i64,
    /// When it expires unless used before.
    pub expires_ms: i64,
    /// The token this connection is on (spec 4.25).
    pub current: bool,
    /// The label given at TOKEN; empty when none was.
    pub label: &'a str,
}

/// The details of an `OK FRIEND` reply, by subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FriendReply<'a> {
    /// `ADD <name> FRIENDS|REQUESTED`.
    Add {
        /// The other user, as registered.
        name: &'a str,
        /// Friends at once, or a request sent.
        outcome: AddOutcome,
    },
    /// `ACCEPT <name>`.
    Accept {
        /// The other user, as registered.
        name: &'a str,
    },
    /// `DENY <name>`.
    Deny {
        /// The other user, as registered.
        name: &'a str,
    },
    /// `REMOVE <name>`.
    Remove {
        /// The other user, as registered.
        name: &'a str,
    },
    /// `LIST <n>`, after `n` FRIEND data lines.
    List {
        /// How many FRIEND lines came before.
        count: u64,
    },
}

/// How `JOIN` went: `CREATED`, `JOINED` or `MEMBER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The room did not exist: it was created, public, with the caller as its owner.
    Created,
    /// The caller is a member now.
    Joined,
    /// The caller was a member already; nothing changed.
    Member,
}

impl JoinOutcome {
    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinOutcome::Created => "CREATED",
            JoinOutcome::Joined => "JOINED",
            JoinOutcome::Member => "MEMBER",
        }
    }

    fn parse(s: &str) -> Option<JoinOutcome> {
        match s {
            "CREATED" => Some(JoinOutcome::Created),
            "JOINED" => Some(JoinOutcome::Joined),
            "MEMBER" => Some(JoinOutcome::Member),
            _ => None,
        }
    }
}

/// How `PART` went: `LEFT` (a member left) or `DECLINED` (an invitation was declined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartOutcome {
    /// The caller was a member and is not any more.
    Left,
    /// The caller was invited, not a member; the invitation is gone.
    Declined,
}

impl PartOutcome {
    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            PartOutcome::Left => "LEFT",
            PartOutcome::Declined => "DECLINED",
        }
    }

    fn parse(s: &str) -> Option<PartOutcome> {
        match s {
            "LEFT" => Some(PartOutcome::Left),
            "DECLINED" => Some(PartOutcome::Declined),
            _ => None,
        }
    }
}

/// Who set a room's topic, and when, as `OK TOPIC` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSet<'a> {
    /// Who set (or cleared) it, as registered.
    pub by: &'a str,
    /// When, milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// The details of an `OK ROOM` reply, by subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomReply<'a> {
    /// `INFO <#room> <created>`, after the room's ROOM line (and, for ops and owners, its BAN and
    /// INVITATION lines).
    Info {
        /// The room, as created.
        room: &'a str,
        /// When it was created, milliseconds since the Unix epoch.
        created_ms: i64,
    },
    /// `PRIVATE <#room>`.
    Private {
        /// The room, as created.
        room: &'a str,
    },
    /// `PUBLIC <#room>`.
    Public {
        /// The room, as created.
        room: &'a str,
    },
    /// `DELETE <#room>`.
    Delete {
        /// The room, as it was created.
        room: &'a str,
    },
}

/// The caller's place in a room, in a `ROOM` line: a role, `INVITED` or `-` (neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A member with this role.
    Member(Role),
    /// Not a member, with an invitation waiting.
    Invited,
    /// Neither a member nor invited.
    Outside,
}

impl Standing {
    /// The field as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Member(r) => r.as_str(),
            Standing::Invited => "INVITED",
            Standing::Outside => "-",
        }
    }

    fn parse(s: &str) -> Option<Standing> {
        match s {
            "INVITED" => Some(Standing::Invited),
            "-" => Some(Standing::Outside),
            other => Role::parse(other).map(Standing::Member),
        }
    }
}

/// The fields of a `ROOM` data line:
/// `ROOM <#room> PUBLIC|PRIVATE <members> <standing> <unread>|- [<topic>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLine<'a> {
    /// The room, as created.
    pub room: &'a str,
    /// Who may join.
    pub privacy: Privacy,
    /// How many members it has.
    pub members: u64,
    /// The caller's place in it.
    pub standing: Standing,
    /// Messages after the caller's read marker (members only).
    pub unread: Option<u64>,
    /// The topic; empty when there is none.
    pub topic: &'a str,
}

/// Something that happened in a room, pushed to its online members (an invitation: to the
/// invitee). Each kind is sent with its own first token: `<EVENT> <#room> <fields>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomEvent<'a> {
    /// `JOINED <#room> <name>`.
    Joined {
        /// Who joined.
        name: &'a str,
    },
    /// `PARTED <#room> <name> [<reason>]`.
    Parted {
        /// Who left.
        name: &'a str,
        /// Their reason; empty when none was given.
        reason: &'a str,
    },
    /// `KICKED <#room> <name> <by> [<reason>]`.
    Kicked {
        /// Who was removed.
        name: &'a str,
        /// The op or owner who removed them.
        by: &'a str,
        /// The reason; empty when none was given.
        reason: &'a str,
    },
    /// `BANNED <#room> <name> <by> [<reason>]`.
    Banned {
        /// Who was banned.
        name: &'a str,
        /// The op or owner who banned them.
        by: &'a str,
        /// The reason; empty when none was given.
        reason: &'a str,
    },
    /// `UNBANNED <#room> <name> <by>`.
    Unbanned {
        /// Who may join again.
        name: &'a str,
        /// The op or owner who lifted the ban.
        by: &'a str,
    },
    /// `TOPIC <#room> <by> [<text>]`: the topic was set (cleared, without a text).
    Topic {
        /// Who set it.
        by: &'a str,
        /// The new topic; empty when it was cleared.
        text: &'a str,
    },
    /// `ROLE <#room> <name> <role> <by>`.
    Role {
        /// Whose role changed.
        name: &'a str,
        /// The new role.
        role: Role,
        /// The owner who changed it.
        by: &'a str,
    },
    /// `INVITED <#room> <by> <expires>`: you are invited.
    Invited {
        /// The op or owner who invited you.
        by: &'a str,
        /// When the invitation ends, milliseconds since the Unix epoch.
        expires_ms: i64,
    },
    /// `PRIVACY <#room> PUBLIC|PRIVATE <by>`.
    Privacy {
        /// The room's new setting.
        privacy: Privacy,
        /// The owner who changed it.
        by: &'a str,
    },
    /// `DELETED <#room> <by>`: the room is gone.
    Deleted {
        /// The owner who deleted it.
        by: &'a str,
    },
}

impl RoomEvent<'_> {
    /// The first token of the line.
    pub fn tag(&self) -> &'static str {
        match self {
            RoomEvent::Joined { .. } => "JOINED",
            RoomEvent::Parted { .. } => "PARTED",
            RoomEvent::Kicked { .. } => "KICKED",
            RoomEvent::Banned { .. } => "BANNED",
            RoomEvent::Unbanned { .. } => "UNBANNED",
            RoomEvent::Topic { .. } => "TOPIC",
            RoomEvent::Role { .. } => "ROLE",
            RoomEvent::Invited { .. } => "INVITED",
            RoomEvent::Privacy { .. } => "PRIVACY",
            RoomEvent::Deleted { .. } => "DELETED",
        }
    }
}

/// The details of an `OK DIRECT` reply, by subcommand (spec 4.39).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectReply<'a> {
    /// `OFFER <name> <seconds>`: passed on; it waits that long for an answer.
    Offer {
        /// The other user, as registered.
        name: &'a str,
        /// Seconds the offer waits for its answer.
        expires_secs: u64,
    },
    /// `ACCEPT <name> <address> <fingerprint>`: what the offer said; connect there and check.
    Accept {
        /// The offerer, as registered.
        name: &'a str,
        /// Where the offerer's client listens.
        address: &'a str,
        /// The fingerprint of the certificate it will show.
        fingerprint: &'a str,
    },
    /// `DECLINE <name>`.
    Decline {
        /// The offerer, as registered.
        name: &'a str,
    },
    /// `CANCEL <name>`.
    Cancel {
        /// The other user, as registered.
        name: &'a str,
    },
}

/// What happened to a direct-session offer, as in `DIRECT <name> <event>` (spec 5.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectEvent<'a> {
    /// `<name>` offers you a direct session: its client listens at `address` and will show the
    /// certificate of `fingerprint`.
    Offer {
        /// Where the offerer's client listens.
        address: &'a str,
        /// The fingerprint of the certificate it will show.
        fingerprint: &'a str,
    },
    /// `<name>` accepted your offer; its client will connect showing the certificate of
    /// `fingerprint`.
    Accepted {
        /// The fingerprint of the certificate the accepting client will show.
        fingerprint: &'a str,
    },
    /// `<name>` declined your offer.
    Declined,
    /// `<name>` withdrew its offer to you (or its offering connection left).
    Withdrawn,
    /// The offer between you and `<name>` was not answered in time.
    Expired,
    /// Another of your connections answered `<name>`'s offer.
    Answered,
    /// `<name>` went offline before answering your offer.
    Gone,
}

impl DirectEvent<'_> {
    /// The keyword as sent.
    pub fn as_str(&self) -> &'static str {
        match self {
            DirectEvent::Offer { .. } => "OFFER",
            DirectEvent::Accepted { .. } => "ACCEPTED",
            DirectEvent::Declined => "DECLINED",
            DirectEvent::Withdrawn => "WITHDRAWN",
            DirectEvent::Expired => "EXPIRED",
            DirectEvent::Answered => "ANSWERED",
            DirectEvent::Gone => "GONE",
        }
    }
}

/// What an `OK` reports, by command: the typed form of `OK <COMMAND> [<details>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OkReply<'a> {
    /// `REGISTER <name>`.
    Register {
        /// The name as registered.
        name: &'a str,
    },
    /// `LOGIN <name>`.
    Login {
        /// The name as registered.
        name: &'a str,
    },
    /// `LOGOUT`.
    Logout,
    /// `QUIT`.
    Quit,
    /// `HELP`, after its HELP data lines.
    Help,
    /// `PING`, after its PONG data line.
    Ping,
    /// `MSG <id> DELIVERED|KEPT`.
    Msg {
        /// The message id.
        id: u64,
        /// What became of it.
        delivery: Delivery,
    },
    /// `GROUP <id> DELIVERED <d> KEPT <k>`.
    Group {
        /// The message id.
        id: u64,
        /// Recipients who were online.
        delivered: u64,
        /// Recipients for whom it was kept.
        kept: u64,
    },
    /// `ALL <id> DELIVERED <n>`.
    All {
        /// The message id.
        id: u64,
        /// Other users online who were sent it.
        delivered: u64,
    },
    /// `USERS <n>`, after `n` USER data lines.
    Users {
        /// How many users are online.
        count: u64,
    },
    /// `HISTORY <with> <n> BEFORE <id>|- AFTER <id>|-`, after `n` HISTORY data lines.
    History {
        /// The other user as registered, or `*` for the broadcasts.
        with: &'a str,
        /// How many HISTORY lines came before.
        count: u64,
        /// The cursor of the next older page, if there is one.
        before: Option<u64>,
        /// The cursor of the next newer page, if there is one.
        after: Option<u64>,
    },
    /// `FRIEND <subcommand> ...`.
    Friend(FriendReply<'a>),
    /// `TOKEN <id> <token>`: the one time the token is shown.
    Token {
        /// The token's id.
        id: u64,
        /// The token itself.
        token: &'a str,
    },
    /// `RESUME <name>`.
    Resume {
        /// The name as registered.
        name: &'a str,
    },
    /// `TOKENS <n>`, after `n` TOKEN data lines.
    Tokens {
        /// How many TOKEN lines came before.
        count: u64,
    },
    /// `REVOKE <revoked> CLOSED <closed>`.
    Revoke {
        /// Tokens revoked.
        revoked: u64,
        /// Other connections closed because they were on one of them.
        closed: u64,
    },
    /// `PASSWORD REVOKED <revoked> CLOSED <closed>`.
    Password {
        /// Device tokens revoked (every one but the one this connection is on).
        revoked: u64,
        /// The account's other connections, closed.
        closed: u64,
    },
    /// `UNREGISTER <name>`.
    Unregister {
        /// The deleted account's name as it was registered.
        name: &'a str,
    },
    /// `BLOCK <name>`.
    Block {
        /// The blocked account, as registered.
        name: &'a str,
    },
    /// `UNBLOCK <name>`.
    Unblock {
        /// The account no longer blocked, as registered.
        name: &'a str,
    },
    /// `BLOCKS <n>`, after `n` BLOCKED data lines.
    Blocks {
        /// How many BLOCKED lines came before.
        count: u64,
    },
    /// `DMS FRIENDS|EVERYONE`: the setting now.
    Dms {
        /// Whose direct messages the account takes.
        policy: Dms,
    },
    /// `AWAY SET|CLEARED`.
    Away {
        /// An away message is set now.
        set: bool,
    },
    /// `WHOIS <name> ONLINE|OFFLINE <seen>|- [<away>]`.
    Whois {
        /// The account, as registered.
        name: &'a str,
        /// Whether it is online.
        presence: Presence,
        /// When it was last online: shown to friends only, and only while it is offline.
        last_seen_ms: Option<i64>,
        /// Its away message; empty when none is set.
        away: &'a str,
    },
    /// `MSG <id> DELIVERED <n>`: a room message.
    RoomMsg {
        /// The message id.
        id: u64,
        /// Members other than the sender who were online and were sent it.
        delivered: u64,
    },
    /// `JOIN <#room> CREATED|JOINED|MEMBER`, after the ROOM line and the replay.
    Join {
        /// The room, as created.
        room: &'a str,
        /// What happened.
        outcome: JoinOutcome,
    },
    /// `PART <#room> LEFT|DECLINED`.
    Part {
        /// The room, as created.
        room: &'a str,
        /// What happened.
        outcome: PartOutcome,
    },
    /// `ROOMS <n>`, after `n` ROOM data lines.
    Rooms {
        /// How many ROOM lines came before.
        count: u64,
    },
    /// `MEMBERS <#room> <n>`, after `n` MEMBER data lines.
    Members {
        /// The room, as created.
        room: &'a str,
        /// How many MEMBER lines came before.
        count: u64,
    },
    /// `TOPIC <#room> <by>|- <time>|- [<text>]`: the topic now.
    Topic {
        /// The room, as created.
        room: &'a str,
        /// Who set it last and when; `None` if it was never set.
        set: Option<TopicSet<'a>>,
        /// The topic; empty when there is none.
        text: &'a str,
    },
    /// `INVITE <#room> <name> <expires>`.
    Invite {
        /// The room, as created.
        room: &'a str,
        /// The invitee, as registered.
        name: &'a str,
        /// When the invitation ends, milliseconds since the Unix epoch.
        expires_ms: i64,
    },
    /// `KICK <#room> <name>`.
    Kick {
        /// The room, as created.
        room: &'a str,
        /// Who was removed, as registered.
        name: &'a str,
    },
    /// `BAN <#room> <name>`.
    Ban {
        /// The room, as created.
        room: &'a str,
        /// Who was banned, as registered.
        name: &'a str,
    },
    /// `UNBAN <#room> <name>`.
    Unban {
        /// The room, as created.
        room: &'a str,
        /// Who may join again, as registered.
        name: &'a str,
    },
    /// `ROLE <#room> <name> <role>`.
    Role {
        /// The room, as created.
        room: &'a str,
        /// The member, as registered.
        name: &'a str,
        /// Their role now.
        role: Role,
    },
    /// `ROOM <subcommand> ...`.
    Room(RoomReply<'a>),
    /// `READ <name>|<#room> <id>`: the read marker now (0: none).
    Read {
        /// The user as registered, or the room as created.
        target: &'a str,
        /// The marker.
        id: u64,
    },
    /// `COMPRESS DEFLATE`: from the next byte on, both directions are a DEFLATE stream.
    Compress,
    /// `DIRECT <subcommand> ...`.
    Direct(DirectReply<'a>),
    /// `ANNOUNCE <n>`: the notice went to `n` connections.
    Announce {
        /// Connections sent the notice, the caller's included.
        delivered: u64,
    },
    /// `SUSPEND <name> CLOSED <n>`.
    Suspend {
        /// The suspended account, as registered.
        name: &'a str,
        /// Its connections, closed.
        closed: u64,
    },
    /// `UNSUSPEND <name>`.
    Unsuspend {
        /// The account, as registered.
        name: &'a str,
    },
    /// `KILL <name> CLOSED <n>`.
    Kill {
        /// The account, as registered.
        name: &'a str,
        /// Its connections, closed.
        closed: u64,
    },
    /// `STATS <n>`, after `n` STAT data lines.
    Stats {
        /// How many STAT lines came before.
        count: u64,
    },
    /// `ADDUSER <name>`.
    Adduser {
        /// The new account, as registered.
        name: &'a str,
    },
}

impl OkReply<'_> {
    /// The command this reply answers.
    pub fn verb(&self) -> Verb {
        match self {
            OkReply::Register { .. } => Verb::Register,
            OkReply::Login { .. } => Verb::Login,
            OkReply::Logout => Verb::Logout,
            OkReply::Quit => Verb::Quit,
            OkReply::Help => Verb::Help,
            OkReply::Ping => Verb::Ping,
            OkReply::Msg { .. } => Verb::Msg,
            OkReply::Group { .. } => Verb::Group,
            OkReply::All { .. } => Verb::All,
            OkReply::Users { .. } => Verb::Users,
            OkReply::History { .. } => Verb::History,
            OkReply::Friend(_) => Verb::Friend,
            OkReply::Token { .. } => Verb::Token,
            OkReply::Resume { .. } => Verb::Resume,
            OkReply::Tokens { .. } => Verb::Tokens,
            OkReply::Revoke { .. } => Verb::Revoke,
            OkReply::Password { .. } => Verb::Password,
            OkReply::Unregister { .. } => Verb::Unregister,
            OkReply::Block { .. } => Verb::Block,
            OkReply::Unblock { .. } => Verb::Unblock,
            OkReply::Blocks { .. } => Verb::Blocks,
            OkReply::Dms { .. } => Verb::Dms,
            OkReply::Away { .. } => Verb::Away,
            OkReply::Whois { .. } => Verb::Whois,
            OkReply::RoomMsg { .. } => Verb::Msg,
            OkReply::Join { .. } => Verb::Join,
            OkReply::Part { .. } => Verb::Part,
            OkReply::Rooms { .. } => Verb::Rooms,
            OkReply::Members { .. } => Verb::Members,
            OkReply::Topic { .. } => Verb::Topic,
            OkReply::Invite { .. } => Verb::Invite,
            OkReply::Kick { .. } => Verb::Kick,
            OkReply::Ban { .. } => Verb::Ban,
            OkReply::Unban { .. } => Verb::Unban,
            OkReply::Role { .. } => Verb::Role,
            OkReply::Room(_) => Verb::Room,
            OkReply::Read { .. } => Verb::Read,
            OkReply::Compress => Verb::Compress,
            OkReply::Direct(_) => Verb::Direct,
            OkReply::Announce { .. } => Verb::Announce,
            OkReply::Suspend { .. } => Verb::Suspend,
            OkReply::Unsuspend { .. } => Verb::Unsuspend,
            OkReply::Kill { .. } => Verb::Kill,
            OkReply::Stats { .. } => Verb::Stats,
            OkReply::Adduser { .. } => Verb::Adduser,
        }
    }
}

/// One line from the server, split into its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerLine<'a> {
    /// `OK [@label] <COMMAND> [<details>]`.
    Ok {
        /// The label echoed from the command, without its `@`.
        label: Option<&'a str>,
        /// The command and its details.
        reply: OkReply<'a>,
    },
    /// `FAIL [@label] <COMMAND>|* <CODE> [retry_after=<seconds>] <text>`.
    Fail {
        /// The label echoed from the command, without its `@`.
        label: Option<&'a str>,
        /// The command; `None` for `*` (a line whose command was not known).
        command: Option<Verb>,
        /// The machine code.
        code: Code,
        /// When to try again, in seconds: present exactly for the codes that carry it
        /// ([`Code::has_retry_after`]).
        retry_after: Option<u64>,
        /// The human sentence.
        text: &'a str,
    },
    /// `HELLO <software> <version> <text>`, sent once on connect.
    Hello {
        /// The server software (`chatd`).
        software: &'a str,
        /// Its version.
        version: &'a str,
        /// The welcome text.
        text: &'a str,
    },
    /// `MESSAGE ...`: a delivered message.
    Message(MessageLine<'a>),
    /// `HISTORY ...`: a data line of a HISTORY answer.
    History(MessageLine<'a>),
    /// `BACKLOG-END <n>`: the end of the offline backlog after LOGIN.
    BacklogEnd {
        /// How many backlog messages were sent.
        count: u64,
    },
    /// `PRESENCE <name> ONLINE|OFFLINE`.
    Presence {
        /// The friend.
        name: &'a str,
        /// Their new presence.
        presence: Presence,
    },
    /// `FRIENDSHIP <name> <event>`.
    Friendship {
        /// The other user.
        name: &'a str,
        /// What they did.
        event: FriendshipEvent,
    },
    /// `AWAY <name> [<text>]`: a friend set an away message, or cleared it (no text); also after
    /// an `OK MSG`/`OK GROUP` for each recipient who is away.
    Away {
        /// The account.
        name: &'a str,
        /// Its away message; `None` when it came back.
        text: Option<&'a str>,
    },
    /// `PING <token>`: the server has heard nothing from the client for a while and asks for a
    /// sign of life; any command answers it (`PING <token>` is the usual one).
    Ping {
        /// The probe's token: 1 to 64 bytes, no SP.
        token: &'a str,
    },
    /// `BYE <CODE> <text>`: the server is about to close the connection.
    Bye {
        /// Why.
        code: ByeCode,
        /// The human sentence.
        text: &'a str,
    },
    /// `DIRECT <name> <event> ...`: something about a direct-session offer between you and
    /// `name` (spec 5.9).
    Direct {
        /// The other user, as registered.
        name: &'a str,
        /// What happened.
        event: DirectEvent<'a>,
    },
    /// `USER <name>`: a data line of a USERS answer.
    User {
        /// An online account.
        name: &'a str,
    },
    /// `HELP <text>`: a data line of a HELP answer.
    Help {
        /// The help text (may be empty).
        text: &'a str,
    },
    /// `PONG [<token>]`: the data line of a PING answer.
    Pong {
        /// The token given to PING, if any.
        token: Option<&'a str>,
    },
    /// `FRIEND <name> <state>`: a data line of a FRIEND LIST answer.
    Friend {
        /// The other user.
        name: &'a str,
        /// The relationship.
        state: FriendState,
    },
    /// `TOKEN ...`: a data line of a TOKENS answer.
    Token(TokenLine<'a>),
    /// `BLOCKED <name>`: a data line of a BLOCKS answer.
    Blocked {
        /// An account the caller blocks.
        name: &'a str,
    },
    /// `ROOM ...`: a data line of ROOMS, JOIN and ROOM INFO answers.
    Room(RoomLine<'a>),
    /// `MEMBER <#room> <name> <role> ONLINE|OFFLINE`: a data line of a MEMBERS answer.
    Member {
        /// The room, as created.
        room: &'a str,
        /// The member, as registered.
        name: &'a str,
        /// Their role.
        role: Role,
        /// Whether they are online.
        presence: Presence,
    },
    /// `BAN <#room> <name> <by> <time> [<reason>]`: a data line of ROOM INFO (ops and owners).
    Ban {
        /// The room, as created.
        room: &'a str,
        /// Who is banned, as registered.
        name: &'a str,
        /// Who banned them.
        by: &'a str,
        /// When, milliseconds since the Unix epoch.
        time_ms: i64,
        /// The reason; empty when none was given.
        reason: &'a str,
    },
    /// `INVITATION <#room> <name> <by> <expires>`: a data line of ROOM INFO (ops and owners).
    Invitation {
        /// The room, as created.
        room: &'a str,
        /// Who is invited, as registered.
        name: &'a str,
        /// Who invited them.
        by: &'a str,
        /// When the invitation ends, milliseconds since the Unix epoch.
        expires_ms: i64,
    },
    /// A room event (`JOINED`, `PARTED`, `KICKED`, ...): see [`RoomEvent`].
    RoomEvent {
        /// The room, as created.
        room: &'a str,
        /// What happened.
        event: RoomEvent<'a>,
    },
    /// `UNREAD <#room> <count> <first>`: at LOGIN, a room with messages after the read marker.
    Unread {
        /// The room, as created.
        room: &'a str,
        /// How many messages follow the marker.
        count: u64,
        /// The id of the first of them.
        first: u64,
    },
    /// `READ <name>|<#room> <id>`: the account's read marker moved (another connection's READ).
    Read {
        /// The user as registered, or the room as created.
        target: &'a str,
        /// The marker.
        id: u64,
    },
    /// `STAT <name> <value>`: a data line of a STATS answer.
    Stat {
        /// The figure's name: lower-case letters, digits and `_`.
        name: &'a str,
        /// Its value: decimal digits, with a fraction after a `.` for a rate or a time.
        value: &'a str,
    },
    /// `NOTICE <text>`: a notice from the server's operators, to every connection.
    Notice {
        /// What they say.
        text: &'a str,
    },
    /// Anything that is not a well-formed server line, kept as received (terminator removed).
    Other(&'a str),
}

impl<'a> ServerLine<'a> {
    /// True for the final line of an answer (`OK` or `FAIL`).
    pub fn is_final(&self) -> bool {
        matches!(self, ServerLine::Ok { .. } | ServerLine::Fail { .. })
    }

    /// The label of a final line, if it carries one.
    pub fn label(&self) -> Option<&'a str> {
        match self {
            ServerLine::Ok { label, .. } | ServerLine::Fail { label, .. } => *label,
            _ => None,
        }
    }

    /// Appends the line and its LF to `out`.
    pub fn encode(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{self}");
    }

    /// The line and its LF, as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Room for a typical line at once: grown from empty, a MESSAGE line was reallocated four
        // or five times on its way (and every message is encoded once this way).
        let mut v = Vec::with_capacity(LINE_CAPACITY_HINT);
        self.write_to(&mut v);
        v
    }

    /// Appends the line and its LF to `out`, as bytes: the same text as [`fmt::Display`]. The
    /// lines every direct message causes (its `MESSAGE`, the `OK` of its MSG) are copied field by
    /// field onto the bytes; the formatting machinery (a call through `dyn Write` per field) took
    /// about a third of their cost. The others go through `Display`.
    pub fn write_to<B: LineBuf + ?Sized>(&self, out: &mut B) {
        match self {
            ServerLine::Message(m) => {
                out.put(b"MESSAGE ");
                m.write_to(out);
            }
            ServerLine::Ok {
                label,
                reply: OkReply::Msg { id, delivery },
            } => {
                out.put(b"OK ");
                if let Some(l) = label {
                    out.put_byte(b'@');
                    out.put(l.as_bytes());
                    out.put_byte(b' ');
                }
                out.put(Verb::Msg.name().as_bytes());
                out.put_byte(b' ');
                put_decimal(out, *id);
                out.put_byte(b' ');
                out.put(delivery.as_str().as_bytes());
            }
            _ => {
                // Appending bytes cannot fail.
                let _ = write!(ByteSink(out), "{self}");
            }
        }
        out.put_byte(b'\n');
    }
}

/// `fmt::Write` straight onto bytes (a line's text is UTF-8, so its bytes are too).
struct ByteSink<'a, B: LineBuf + ?Sized>(&'a mut B);

impl<B: LineBuf + ?Sized> fmt::Write for ByteSink<'_, B> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.put(s.as_bytes());
        Ok(())
    }
}

/// Where [`ServerLine::write_to`] appends a line's bytes: a vector, or a buffer that keeps a
/// short line in place (the core's answers, `core::out`: an `OK` then needs no allocation).
pub trait LineBuf {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
    /// Appends one byte.
    fn put_byte(&mut self, b: u8);
}

impl LineBuf for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_byte(&mut self, b: u8) {
        self.push(b);
    }
}

/// Appends `v` in decimal, as `{v}` would.
fn put_decimal<B: LineBuf + ?Sized>(out: &mut B, v: u64) {
    out.put(decimal_digits(v, &mut [0; 20]));
}

/// `v`'s decimal digits, written at the end of `digits` (20 bytes hold every u64).
fn decimal_digits(mut v: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &digits[start..]
}

/// Bytes reserved for a line [`ServerLine::to_bytes`] encodes: a MESSAGE line with its header
/// (id, timestamp, two names) and a chat-sized text fits.
const LINE_CAPACITY_HINT: usize = 192;

/// Splits off space-separated tokens; the protocol allows one or more SP between tokens.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// The next token, skipping leading spaces; `None` at the end of the line.
    fn token(&mut self) -> Option<&'a str> {
        let s = self.rest.trim_start_matches(' ');
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        // Splitting at an ASCII space always lands on a char boundary.
        let end = s.find(' ').unwrap_or(s.len());
        let (tok, rest) = s.split_at(end);
        self.rest = rest;
        Some(tok)
    }

    /// The text after the single SP that follows the previous token, spaces kept; `None` when the
    /// line ended right after that token.
    fn text(&mut self) -> Option<&'a str> {
        let t = self.rest.strip_prefix(' ')?;
        self.rest = "";
        Some(t)
    }

    /// True when only spaces (or nothing) remain.
    fn at_end(&self) -> bool {
        self.rest.bytes().all(|b| b == b' ')
    }

    /// The next token as a decimal number.
    fn number(&mut self) -> Option<u64> {
        decimal(self.token()?)
    }

    /// The next token, which must be `word`.
    fn word(&mut self, word: &str) -> Option<()> {
        (self.token()? == word).then_some(())
    }
}

/// Parses one line from the server. A trailing LF, CRLF or CR is ignored; anything not well formed
/// is [`ServerLine::Other`].
pub fn parse(line: &str) -> ServerLine<'_> {
    let line = strip_terminator(line);
    parse_fields(line).unwrap_or(ServerLine::Other(line))
}

fn strip_terminator(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

fn parse_fields(line: &str) -> Option<ServerLine<'_>> {
    // Server lines start with their tag; a leading space is not something the server sends. An LF
    // inside is not part of any line. A CR is a control character, which the grammar allows only in
    // a PONG token (the server echoes the PING's, spec 2.8; see there for the one at its end).
    if line.starts_with(' ') || line.contains('\n') {
        return None;
    }
    if line.contains('\r') && !line.starts_with("PONG ") {
        return None;
    }
    let mut c = Cursor { rest: line };
    let tag = c.token()?;
    let parsed = match tag {
        "OK" => {
            let (label, command) = label_and_command(&mut c)?;
            let reply = ok_reply(command?, &mut c)?;
            ServerLine::Ok { label, reply }
        }
        "FAIL" => {
            let (label, command) = label_and_command(&mut c)?;
            let code = Code::parse(c.token()?)?;
            let retry_after = if code.has_retry_after() {
                Some(decimal(c.token()?.strip_prefix("retry_after=")?)?)
            } else {
                None
            };
            let text = c.text().unwrap_or("");
            ServerLine::Fail {
                label,
                command,
                code,
                retry_after,
                text,
            }
        }
        "HELLO" => {
            let software = c.token()?;
            let version = c.token()?;
            let text = c.text().unwrap_or("");
            ServerLine::Hello {
                software,
                version,
                text,
            }
        }
        "MESSAGE" => ServerLine::Message(message_fields(&mut c)?),
        "HISTORY" => ServerLine::History(message_fields(&mut c)?),
        "BACKLOG-END" => ServerLine::BacklogEnd { count: c.number()? },
        "PRESENCE" => {
            let name = c.token()?;
            let presence = Presence::parse(c.token()?)?;
            ServerLine::Presence { name, presence }
        }
        "FRIENDSHIP" => {
            let name = c.token()?;
            let event = FriendshipEvent::parse(c.token()?)?;
            ServerLine::Friendship { name, event }
        }
        "PING" => ServerLine::Ping { token: c.token()? },
        "BYE" => {
            let code = ByeCode::parse(c.token()?)?;
            let text = c.text().unwrap_or("");
            ServerLine::Bye { code, text }
        }
        "DIRECT" => {
            let name = c.token()?;
            let event = match c.token()? {
                "OFFER" => DirectEvent::Offer {
                    address: address(c.token()?)?,
                    fingerprint: fingerprint(c.token()?)?,
                },
                "ACCEPTED" => DirectEvent::Accepted {
                    fingerprint: fingerprint(c.token()?)?,
                },
                "DECLINED" => DirectEvent::Declined,
                "WITHDRAWN" => DirectEvent::Withdrawn,
                "EXPIRED" => DirectEvent::Expired,
                "ANSWERED" => DirectEvent::Answered,
                "GONE" => DirectEvent::Gone,
                _ => return None,
            };
            ServerLine::Direct { name, event }
        }
        "USER" => ServerLine::User { name: c.token()? },
        "HELP" => ServerLine::Help {
            text: c.text().unwrap_or(""),
        },
        "PONG" => {
            let token = c.token();
            // A token ending in CR prints as a line ending in CR, which reads back as a CRLF
            // terminator: it would not survive a round trip, and a client cannot tell it apart.
            if token.is_some_and(|t| t.ends_with('\r')) {
                return None;
            }
            ServerLine::Pong { token }
        }
        "FRIEND" => {
            let name = c.token()?;
            let state = FriendState::parse(c.token()?)?;
            ServerLine::Friend { name, state }
        }
        "TOKEN" => {
            let id = parse_id(c.token()?)?;
            let created_ms = parse_timestamp(c.token()?)?;
            let last_used_ms = parse_timestamp(c.token()?)?;
            let expires_ms = parse_timestamp(c.token()?)?;
            let current = match c.token()? {
                "CURRENT" => true,
                "OTHER" => false,
                _ => return None,
            };
            ServerLine::Token(TokenLine {
                id,
                created_ms,
                last_used_ms,
                expires_ms,
                current,
                label: c.text().unwrap_or(""),
            })
        }
        "BLOCKED" => ServerLine::Blocked { name: c.token()? },
        "STAT" => {
            let name = c.token()?;
            let value = c.token()?;
            if !is_stat_name(name) || !is_stat_value(value) {
                return None;
            }
            ServerLine::Stat { name, value }
        }
        "NOTICE" => ServerLine::Notice { text: c.text()? },
        "AWAY" => ServerLine::Away {
            name: c.token()?,
            text: c.text().filter(|t| !t.is_empty()),
        },
        "ROOM" => {
            let room = room(c.token()?)?;
            let privacy = Privacy::parse(c.token()?)?;
            let members = c.number()?;
            let standing = Standing::parse(c.token()?)?;
            let unread = cursor(c.token()?)?;
            // Members have a count of unread messages; others a `-`.
            if unread.is_some() != matches!(standing, Standing::Member(_)) {
                return None;
            }
            let topic = c.text().unwrap_or("");
            ServerLine::Room(RoomLine {
                room,
                privacy,
                members,
                standing,
                unread,
                topic,
            })
        }
        "MEMBER" => {
            let room = room(c.token()?)?;
            let name = c.token()?;
            let role = Role::parse(c.token()?)?;
            let presence = Presence::parse(c.token()?)?;
            ServerLine::Member {
                room,
                name,
                role,
                presence,
            }
        }
        "BAN" => {
            let room = room(c.token()?)?;
            let name = c.token()?;
            let by = c.token()?;
            let time_ms = parse_timestamp(c.token()?)?;
            let reason = c.text().unwrap_or("");
            ServerLine::Ban {
                room,
                name,
                by,
                time_ms,
                reason,
            }
        }
        "INVITATION" => {
            let room = room(c.token()?)?;
            let name = c.token()?;
            let by = c.token()?;
            let expires_ms = parse_timestamp(c.token()?)?;
            ServerLine::Invitation {
                room,
                name,
                by,
                expires_ms,
            }
        }
        "UNREAD" => {
            let room = room(c.token()?)?;
            let count = c.number()?;
            let first = c.number()?;
            ServerLine::Unread { room, count, first }
        }
        "READ" => {
            let target = c.token()?;
            let id = c.number()?;
            ServerLine::Read { target, id }
        }
        "JOINED" | "PARTED" | "KICKED" | "BANNED" | "UNBANNED" | "TOPIC" | "ROLE" | "INVITED"
        | "PRIVACY" | "DELETED" => {
            let room = room(c.token()?)?;
            let event = room_event(tag, &mut c)?;
            ServerLine::RoomEvent { room, event }
        }
        _ => return None,
    };
    // Lines ending in free text consumed the rest; fixed-arity lines must have nothing left.
    c.at_end().then_some(parsed)
}

/// The fields of a room event after `<EVENT> <#room>`.
fn room_event<'a>(tag: &str, c: &mut Cursor<'a>) -> Option<RoomEvent<'a>> {
    Some(match tag {
        "JOINED" => RoomEvent::Joined { name: c.token()? },
        "PARTED" => RoomEvent::Parted {
            name: c.token()?,
            reason: c.text().unwrap_or(""),
        },
        "KICKED" => RoomEvent::Kicked {
            name: c.token()?,
            by: c.token()?,
            reason: c.text().unwrap_or(""),
        },
        "BANNED" => RoomEvent::Banned {
            name: c.token()?,
            by: c.token()?,
            reason: c.text().unwrap_or(""),
        },
        "UNBANNED" => RoomEvent::Unbanned {
            name: c.token()?,
            by: c.token()?,
        },
        "TOPIC" => RoomEvent::Topic {
            by: c.token()?,
            text: c.text().unwrap_or(""),
        },
        "ROLE" => RoomEvent::Role {
            name: c.token()?,
            role: Role::parse(c.token()?)?,
            by: c.token()?,
        },
        "INVITED" => RoomEvent::Invited {
            by: c.token()?,
            expires_ms: parse_timestamp(c.token()?)?,
        },
        "PRIVACY" => RoomEvent::Privacy {
            privacy: Privacy::parse(c.token()?)?,
            by: c.token()?,
        },
        "DELETED" => RoomEvent::Deleted { by: c.token()? },
        _ => return None,
    })
}

/// A room name as the server sends it (`#` and 1 to 32 letters, digits, `_`, `-`).
fn room(tok: &str) -> Option<&str> {
    RoomName::parse(tok).ok().map(|_| tok)
}

/// The details of `OK <command>`, typed by command.
fn ok_reply<'a>(verb: Verb, c: &mut Cursor<'a>) -> Option<OkReply<'a>> {
    Some(match verb {
        Verb::Register => OkReply::Register { name: c.token()? },
        Verb::Login => OkReply::Login { name: c.token()? },
        Verb::Logout => OkReply::Logout,
        Verb::Quit => OkReply::Quit,
        Verb::Help => OkReply::Help,
        Verb::Ping => OkReply::Ping,
        Verb::Msg => {
            let id = c.number()?;
            let delivery = match c.token()? {
                "DELIVERED" => Delivery::Delivered,
                "KEPT" => Delivery::Kept,
                _ => return None,
            };
            // A room message says to how many members: `MSG <id> DELIVERED <n>`.
            match (delivery, c.at_end()) {
                (_, true) => OkReply::Msg { id, delivery },
                (Delivery::Delivered, false) => OkReply::RoomMsg {
                    id,
                    delivered: c.number()?,
                },
                (Delivery::Kept, false) => return None,
            }
        }
        Verb::Group => {
            let id = c.number()?;
            c.word("DELIVERED")?;
            let delivered = c.number()?;
            c.word("KEPT")?;
            let kept = c.number()?;
            OkReply::Group {
                id,
                delivered,
                kept,
            }
        }
        Verb::All => {
            let id = c.number()?;
            c.word("DELIVERED")?;
            let delivered = c.number()?;
            OkReply::All { id, delivered }
        }
        Verb::Users => OkReply::Users { count: c.number()? },
        Verb::History => {
            let with = c.token()?;
            let count = c.number()?;
            c.word("BEFORE")?;
            let before = cursor(c.token()?)?;
            c.word("AFTER")?;
            let after = cursor(c.token()?)?;
            OkReply::History {
                with,
                count,
                before,
                after,
            }
        }
        Verb::Friend => OkReply::Friend(match c.token()? {
            "ADD" => {
                let name = c.token()?;
                let outcome = match c.token()? {
                    "FRIENDS" => AddOutcome::Friends,
                    "REQUESTED" => AddOutcome::Requested,
                    _ => return None,
                };
                FriendReply::Add { name, outcome }
            }
            "ACCEPT" => FriendReply::Accept { name: c.token()? },
            "DENY" => FriendReply::Deny { name: c.token()? },
            "REMOVE" => FriendReply::Remove { name: c.token()? },
            "LIST" => FriendReply::List { count: c.number()? },
            _ => return None,
        }),
        Verb::Token => OkReply::Token {
            id: parse_id(c.token()?)?,
            token: c.token()?,
        },
        Verb::Resume => OkReply::Resume { name: c.token()? },
        Verb::Tokens => OkReply::Tokens { count: c.number()? },
        Verb::Revoke => {
            let revoked = c.number()?;
            c.word("CLOSED")?;
            let closed = c.number()?;
            OkReply::Revoke { revoked, closed }
        }
        Verb::Password => {
            c.word("REVOKED")?;
            let revoked = c.number()?;
            c.word("CLOSED")?;
            let closed = c.number()?;
            OkReply::Password { revoked, closed }
        }
        Verb::Unregister => OkReply::Unregister { name: c.token()? },
        Verb::Block => OkReply::Block { name: c.token()? },
        Verb::Unblock => OkReply::Unblock { name: c.token()? },
        Verb::Blocks => OkReply::Blocks { count: c.number()? },
        Verb::Away => OkReply::Away {
            set: match c.token()? {
                "SET" => true,
                "CLEARED" => false,
                _ => return None,
            },
        },
        Verb::Whois => {
            let name = c.token()?;
            let presence = Presence::parse(c.token()?)?;
            let last_seen_ms = match c.token()? {
                "-" => None,
                t => Some(parse_timestamp(t)?),
            };
            OkReply::Whois {
                name,
                presence,
                last_seen_ms,
                away: c.text().unwrap_or(""),
            }
        }
        Verb::Announce => OkReply::Announce {
            delivered: c.number()?,
        },
        Verb::Suspend => {
            let name = c.token()?;
            c.word("CLOSED")?;
            OkReply::Suspend {
                name,
                closed: c.number()?,
            }
        }
        Verb::Unsuspend => OkReply::Unsuspend { name: c.token()? },
        Verb::Kill => {
            let name = c.token()?;
            c.word("CLOSED")?;
            OkReply::Kill {
                name,
                closed: c.number()?,
            }
        }
        Verb::Stats => OkReply::Stats { count: c.number()? },
        Verb::Adduser => OkReply::Adduser { name: c.token()? },
        Verb::Dms => OkReply::Dms {
            policy: match c.token()? {
                "FRIENDS" => Dms::Friends,
                "EVERYONE" => Dms::Everyone,
                _ => return None,
            },
        },
        Verb::Join => OkReply::Join {
            room: room(c.token()?)?,
            outcome: JoinOutcome::parse(c.token()?)?,
        },
        Verb::Part => OkReply::Part {
            room: room(c.token()?)?,
            outcome: PartOutcome::parse(c.token()?)?,
        },
        Verb::Rooms => OkReply::Rooms { count: c.number()? },
        Verb::Members => OkReply::Members {
            room: room(c.token()?)?,
            count: c.number()?,
        },
        Verb::Topic => {
            let room = room(c.token()?)?;
            let by = c.token()?;
            let time = c.token()?;
            if by == "-" {
                // Never set: no setter, no time, no text.
                if time != "-" || !c.at_end() {
                    return None;
                }
                OkReply::Topic {
                    room,
                    set: None,
                    text: "",
                }
            } else {
                let time_ms = parse_timestamp(time)?;
                OkReply::Topic {
                    room,
                    set: Some(TopicSet { by, time_ms }),
                    text: c.text().unwrap_or(""),
                }
            }
        }
        Verb::Invite => OkReply::Invite {
            room: room(c.token()?)?,
            name: c.token()?,
            expires_ms: parse_timestamp(c.token()?)?,
        },
        Verb::Kick => OkReply::Kick {
            room: room(c.token()?)?,
            name: c.token()?,
        },
        Verb::Ban => OkReply::Ban {
            room: room(c.token()?)?,
            name: c.token()?,
        },
        Verb::Unban => OkReply::Unban {
            room: room(c.token()?)?,
            name: c.token()?,
        },
        Verb::Role => OkReply::Role {
            room: room(c.token()?)?,
            name: c.token()?,
            role: Role::parse(c.token()?)?,
        },
        Verb::Room => OkReply::Room(match c.token()? {
            "INFO" => RoomReply::Info {
                room: room(c.token()?)?,
                created_ms: parse_timestamp(c.token()?)?,
            },
            "PRIVATE" => RoomReply::Private {
                room: room(c.token()?)?,
            },
            "PUBLIC" => RoomReply::Public {
                room: room(c.token()?)?,
            },
            "DELETE" => RoomReply::Delete {
                room: room(c.token()?)?,
            },
            _ => return None,
        }),
        Verb::Read => OkReply::Read {
            target: c.token()?,
            id: c.number()?,
        },
        Verb::Compress => {
            c.word(super::deflate::MECHANISM)?;
            OkReply::Compress
        }
        Verb::Direct => OkReply::Direct(match c.token()? {
            "OFFER" => DirectReply::Offer {
                name: c.token()?,
                expires_secs: c.number()?,
            },
            "ACCEPT" => DirectReply::Accept {
                name: c.token()?,
                address: address(c.token()?)?,
                fingerprint: fingerprint(c.token()?)?,
            },
            "DECLINE" => DirectReply::Decline { name: c.token()? },
            "CANCEL" => DirectReply::Cancel { name: c.token()? },
            _ => return None,
        }),
    })
}

/// A DIRECT address, as the server relays it (valid: see `proto::direct`).
fn address(tok: &str) -> Option<&str> {
    super::direct::PeerAddress::parse(tok).ok().map(|_| tok)
}

/// A DIRECT fingerprint, as the server relays it: valid, and in upper case.
fn fingerprint(tok: &str) -> Option<&str> {
    let fp = super::direct::Fingerprint::parse(tok).ok()?;
    (fp.as_str() == tok).then_some(tok)
}

/// A STAT name: 1 to 64 of lower-case ASCII letters, digits and `_`, starting with a letter.
pub fn is_stat_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A STAT value: decimal digits, optionally a `.` and more digits.
pub fn is_stat_value(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('.') {
        Some((whole, frac)) => digits(whole) && digits(frac),
        None => digits(s),
    }
}

/// A page cursor: an id, or `-` for none.
fn cursor(tok: &str) -> Option<Option<u64>> {
    if tok == "-" {
        Some(None)
    } else {
        decimal(tok).map(Some)
    }
}

/// `[@label] <COMMAND>|*` of OK and FAIL lines; the command is `None` for `*`.
fn label_and_command<'a>(c: &mut Cursor<'a>) -> Option<(Option<&'a str>, Option<Verb>)> {
    let first = c.token()?;
    let (label, command) = match first.strip_prefix('@') {
        Some(l) => {
            check_label(l).ok()?;
            (Some(l), c.token()?)
        }
        None => (None, first),
    };
    if command == "*" {
        return Some((label, None));
    }
    Some((label, Some(Verb::canonical(command)?)))
}

/// A decimal u64 of digits only (`str::parse` would also take a leading `+`).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn message_fields<'a>(c: &mut Cursor<'a>) -> Option<MessageLine<'a>> {
    let id = c.number()?;
    let time_ms = parse_timestamp(c.token()?)?;
    let from = c.token()?;
    let to = match c.token()? {
        "*" => Recipient::All,
        list if list.contains(',') => {
            let names: Vec<&str> = list.split(',').collect();
            if names
                .iter()
                .any(|n| n.is_empty() || *n == "*" || n.starts_with('#'))
            {
                return None;
            }
            Recipient::Group(names)
        }
        r if r.starts_with('#') => Recipient::Room(room(r)?),
        name => Recipient::User(name),
    };
    let text = c.text()?;
    Some(MessageLine {
        id,
        time_ms,
        from,
        to,
        text,
    })
}

impl fmt::Display for Recipient<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::User(n) => f.write_str(n),
            Recipient::Group(names) => {
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    f.write_str(n)?;
                }
                Ok(())
            }
            Recipient::All => f.write_str("*"),
            Recipient::Room(r) => f.write_str(r),
        }
    }
}

impl MessageLine<'_> {
    /// Appends `<id> <time> <from> <to> <text>` to `out`: the text of [`fmt::Display`], field by
    /// field (see [`ServerLine::write_to`]).
    fn write_to<B: LineBuf + ?Sized>(&self, out: &mut B) {
        put_decimal(out, self.id);
        out.put_byte(b' ');
        match timestamp_bytes(self.time_ms) {
            Some(t) => out.put(&t),
            None => write_timestamp(&mut ByteSink(out), self.time_ms),
        }
        out.put_byte(b' ');
        out.put(self.from.as_bytes());
        out.put_byte(b' ');
        match &self.to {
            Recipient::User(n) | Recipient::Room(n) => out.put(n.as_bytes()),
            Recipient::Group(names) => {
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        out.put_byte(b',');
                    }
                    out.put(n.as_bytes());
                }
            }
            Recipient::All => out.put_byte(b'*'),
        }
        out.put_byte(b' ');
        out.put(self.text.as_bytes());
    }
}

impl fmt::Display for MessageLine<'_> {
    /// `<id> <time> <from> <to> <text>`, written piece by piece: every message is encoded here,
    /// and `write!` with five arguments cost twice as much.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_decimal(f, self.id)?;
        f.write_char(' ')?;
        write_timestamp(f, self.time_ms);
        f.write_char(' ')?;
        f.write_str(self.from)?;
        f.write_char(' ')?;
        fmt::Display::fmt(&self.to, f)?;
        f.write_char(' ')?;
        f.write_str(self.text)
    }
}

/// Writes `v` in decimal, as `{v}` would, without the formatting machinery's padding logic (ids
/// in the lines every message causes).
fn write_decimal(f: &mut fmt::Formatter<'_>, v: u64) -> fmt::Result {
    match std::str::from_utf8(decimal_digits(v, &mut [0; 20])) {
        Ok(text) => f.write_str(text),
        Err(_) => Err(fmt::Error),
    }
}

/// Writes ` <text>` unless the text is empty, the way the server leaves out an empty tail.
fn tail(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    if text.is_empty() {
        Ok(())
    } else {
        write!(f, " {text}")
    }
}

fn label_prefix(f: &mut fmt::Formatter<'_>, label: Option<&str>) -> fmt::Result {
    match label {
        Some(l) => {
            f.write_char('@')?;
            f.write_str(l)?;
            f.write_char(' ')
        }
        None => Ok(()),
    }
}

fn write_cursor(f: &mut fmt::Formatter<'_>, c: Option<u64>) -> fmt::Result {
    match c {
        Some(id) => write!(f, "{id}"),
        None => f.write_str("-"),
    }
}

impl fmt::Display for OkReply<'_> {
    /// `<COMMAND> [<details>]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb().name())?;
        match self {
            OkReply::Register { name }
            | OkReply::Login { name }
            | OkReply::Resume { name }
            | OkReply::Unregister { name }
            | OkReply::Block { name }
            | OkReply::Unblock { name }
            | OkReply::Unsuspend { name }
            | OkReply::Adduser { name } => write!(f, " {name}"),
            OkReply::Blocks { count } | OkReply::Stats { count } => write!(f, " {count}"),
            OkReply::Announce { delivered } => write!(f, " {delivered}"),
            OkReply::Suspend { name, closed } | OkReply::Kill { name, closed } => {
                write!(f, " {name} CLOSED {closed}")
            }
            OkReply::Dms { policy } => write!(f, " {}", policy.as_str()),
            OkReply::Away { set } => f.write_str(if *set { " SET" } else { " CLEARED" }),
            OkReply::Whois {
                name,
                presence,
                last_seen_ms,
                away,
            } => {
                write!(f, " {name} {} ", presence.as_str())?;
                match last_seen_ms {
                    Some(ms) => {
                        let mut t = String::with_capacity(24);
                        write_timestamp(&mut t, *ms);
                        f.write_str(&t)?;
                    }
                    None => f.write_str("-")?,
                }
                tail(f, away)
            }
            OkReply::Logout | OkReply::Quit | OkReply::Help | OkReply::Ping => Ok(()),
            OkReply::Msg { id, delivery } => {
                f.write_char(' ')?;
                write_decimal(f, *id)?;
                f.write_char(' ')?;
                f.write_str(delivery.as_str())
            }
            OkReply::Group {
                id,
                delivered,
                kept,
            } => write!(f, " {id} DELIVERED {delivered} KEPT {kept}"),
            OkReply::All { id, delivered } => write!(f, " {id} DELIVERED {delivered}"),
            OkReply::Users { count } => write!(f, " {count}"),
            OkReply::History {
                with,
                count,
                before,
                after,
            } => {
                write!(f, " {with} {count} BEFORE ")?;
                write_cursor(f, *before)?;
                f.write_str(" AFTER ")?;
                write_cursor(f, *after)
            }
            OkReply::Friend(r) => match r {
                FriendReply::Add { name, outcome } => write!(f, " ADD {name} {}", outcome.as_str()),
                FriendReply::Accept { name } => write!(f, " ACCEPT {name}"),
                FriendReply::Deny { name } => write!(f, " DENY {name}"),
                FriendReply::Remove { name } => write!(f, " REMOVE {name}"),
                FriendReply::List { count } => write!(f, " LIST {count}"),
            },
            OkReply::Token { id, token } => write!(f, " {} {token}", format_id(*id)),
            OkReply::Tokens { count } => write!(f, " {count}"),
            OkReply::Revoke { revoked, closed } => write!(f, " {revoked} CLOSED {closed}"),
            OkReply::Password { revoked, closed } => {
                write!(f, " REVOKED {revoked} CLOSED {closed}")
            }
            OkReply::RoomMsg { id, delivered } => write!(f, " {id} DELIVERED {delivered}"),
            OkReply::Join { room, outcome } => write!(f, " {room} {}", outcome.as_str()),
            OkReply::Part { room, outcome } => write!(f, " {room} {}", outcome.as_str()),
            OkReply::Rooms { count } => write!(f, " {count}"),
            OkReply::Members { room, count } => write!(f, " {room} {count}"),
            OkReply::Topic { room, set, text } => match set {
                None => write!(f, " {room} - -"),
                Some(TopicSet { by, time_ms }) => {
                    write!(f, " {room} {by} ")?;
                    write_time(f, *time_ms)?;
                    tail(f, text)
                }
            },
            OkReply::Invite {
                room,
                name,
                expires_ms,
            } => {
                write!(f, " {room} {name} ")?;
                write_time(f, *expires_ms)
            }
            OkReply::Kick { room, name }
            | OkReply::Ban { room, name }
            | OkReply::Unban { room, name } => write!(f, " {room} {name}"),
            OkReply::Role { room, name, role } => write!(f, " {room} {name} {}", role.as_str()),
            OkReply::Room(r) => match r {
                RoomReply::Info { room, created_ms } => {
                    write!(f, " INFO {room} ")?;
                    write_time(f, *created_ms)
                }
                RoomReply::Private { room } => write!(f, " PRIVATE {room}"),
                RoomReply::Public { room } => write!(f, " PUBLIC {room}"),
                RoomReply::Delete { room } => write!(f, " DELETE {room}"),
            },
            OkReply::Read { target, id } => write!(f, " {target} {id}"),
            OkReply::Compress => write!(f, " {}", super::deflate::MECHANISM),
            OkReply::Direct(r) => match r {
                DirectReply::Offer { name, expires_secs } => {
                    write!(f, " OFFER {name} {expires_secs}")
                }
                DirectReply::Accept {
                    name,
                    address,
                    fingerprint,
                } => write!(f, " ACCEPT {name} {address} {fingerprint}"),
                DirectReply::Decline { name } => write!(f, " DECLINE {name}"),
                DirectReply::Cancel { name } => write!(f, " CANCEL {name}"),
            },
        }
    }
}

/// Writes a wire timestamp.
fn write_time(f: &mut fmt::Formatter<'_>, ms: i64) -> fmt::Result {
    let mut time = String::with_capacity(24);
    write_timestamp(&mut time, ms);
    f.write_str(&time)
}

impl fmt::Display for RoomEvent<'_> {
    /// The fields after `<EVENT> <#room>`, with their leading space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomEvent::Joined { name } => write!(f, " {name}"),
            RoomEvent::Parted { name, reason } => {
                write!(f, " {name}")?;
                tail(f, reason)
            }
            RoomEvent::Kicked { name, by, reason } | RoomEvent::Banned { name, by, reason } => {
                write!(f, " {name} {by}")?;
                tail(f, reason)
            }
            RoomEvent::Unbanned { name, by } => write!(f, " {name} {by}"),
            RoomEvent::Topic { by, text } => {
                write!(f, " {by}")?;
                tail(f, text)
            }
            RoomEvent::Role { name, role, by } => write!(f, " {name} {} {by}", role.as_str()),
            RoomEvent::Invited { by, expires_ms } => {
                write!(f, " {by} ")?;
                write_time(f, *expires_ms)
            }
            RoomEvent::Privacy { privacy, by } => write!(f, " {} {by}", privacy.as_str()),
            RoomEvent::Deleted { by } => write!(f, " {by}"),
        }
    }
}

impl fmt::Display for ServerLine<'_> {
    /// The canonical line, without its LF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerLine::Ok { label, reply } => {
                f.write_str("OK ")?;
                label_prefix(f, *label)?;
                fmt::Display::fmt(reply, f)
            }
            ServerLine::Fail {
                label,
                command,
                code,
                retry_after,
                text,
            } => {
                f.write_str("FAIL ")?;
                label_prefix(f, *label)?;
                let command = command.map_or("*", Verb::name);
                write!(f, "{command} {}", code.as_str())?;
                if let Some(secs) = retry_after {
                    write!(f, " retry_after={secs}")?;
                }
                tail(f, text)
            }
            ServerLine::Hello {
                software,
                version,
                text,
            } => {
                write!(f, "HELLO {software} {version}")?;
                tail(f, text)
            }
            ServerLine::Message(m) => {
                f.write_str("MESSAGE ")?;
                fmt::Display::fmt(m, f)
            }
            ServerLine::History(m) => {
                f.write_str("HISTORY ")?;
                fmt::Display::fmt(m, f)
            }
            ServerLine::BacklogEnd { count } => write!(f, "BACKLOG-END {count}"),
            ServerLine::Presence { name, presence } => {
                write!(f, "PRESENCE {name} {}", presence.as_str())
            }
            ServerLine::Friendship { name, event } => {
                write!(f, "FRIENDSHIP {name} {}", event.as_str())
            }
            ServerLine::Ping { token } => write!(f, "PING {token}"),
            ServerLine::Bye { code, text } => {
                write!(f, "BYE {}", code.as_str())?;
                tail(f, text)
            }
            ServerLine::Direct { name, event } => {
                write!(f, "DIRECT {name} {}", event.as_str())?;
                match event {
                    DirectEvent::Offer {
                        address,
                        fingerprint,
                    } => write!(f, " {address} {fingerprint}"),
                    DirectEvent::Accepted { fingerprint } => write!(f, " {fingerprint}"),
                    _ => Ok(()),
                }
            }
            ServerLine::User { name } => write!(f, "USER {name}"),
            ServerLine::Help { text } => {
                f.write_str("HELP")?;
                tail(f, text)
            }
            ServerLine::Pong { token } => {
                f.write_str("PONG")?;
                tail(f, token.unwrap_or(""))
            }
            ServerLine::Friend { name, state } => write!(f, "FRIEND {name} {}", state.as_str()),
            ServerLine::Token(t) => {
                let mut times = String::with_capacity(3 * 25);
                for ms in [t.created_ms, t.last_used_ms, t.expires_ms] {
                    times.push(' ');
                    write_timestamp(&mut times, ms);
                }
                let state = if t.current { "CURRENT" } else { "OTHER" };
                write!(f, "TOKEN {}{times} {state}", format_id(t.id))?;
                tail(f, t.label)
            }
            ServerLine::Blocked { name } => write!(f, "BLOCKED {name}"),
            ServerLine::Stat { name, value } => write!(f, "STAT {name} {value}"),
            ServerLine::Notice { text } => write!(f, "NOTICE {text}"),
            ServerLine::Away { name, text } => {
                write!(f, "AWAY {name}")?;
                tail(f, text.unwrap_or(""))
            }
            ServerLine::Room(r) => {
                write!(
                    f,
                    "ROOM {} {} {} {} ",
                    r.room,
                    r.privacy.as_str(),
                    r.members,
                    r.standing.as_str()
                )?;
                write_cursor(f, r.unread)?;
                tail(f, r.topic)
            }
            ServerLine::Member {
                room,
                name,
                role,
                presence,
            } => write!(
                f,
                "MEMBER {room} {name} {} {}",
                role.as_str(),
                presence.as_str()
            ),
            ServerLine::Ban {
                room,
                name,
                by,
                time_ms,
                reason,
            } => {
                write!(f, "BAN {room} {name} {by} ")?;
                write_time(f, *time_ms)?;
                tail(f, reason)
            }
            ServerLine::Invitation {
                room,
                name,
                by,
                expires_ms,
            } => {
                write!(f, "INVITATION {room} {name} {by} ")?;
                write_time(f, *expires_ms)
            }
            ServerLine::RoomEvent { room, event } => write!(f, "{} {room}{event}", event.tag()),
            ServerLine::Unread { room, count, first } => {
                write!(f, "UNREAD {room} {count} {first}")
            }
            ServerLine::Read { target, id } => write!(f, "READ {target} {id}"),
            ServerLine::Other(raw) => f.write_str(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-11-21T10:04:05.123Z";
    const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
    const T_MS: i64 = 1_795_255_445_123;

    #[test]
    fn final_lines_with_and_without_labels() {
        assert_eq!(
            parse("OK MSG 42 DELIVERED"),
            ServerLine::Ok {
                label: None,
                reply: OkReply::Msg {
                    id: 42,
                    delivery: Delivery::Delivered
                }
            }
        );
        assert_eq!(
            parse("OK @7 LOGOUT\n"),
            ServerLine::Ok {
                label: Some("7"),
                reply: OkReply::Logout
            }
        );
        assert_eq!(
            parse("FAIL @a.b-c_9 MSG UNKNOWN_USER no such user: bob\r\n"),
            ServerLine::Fail {
                label: Some("a.b-c_9"),
                command: Some(Verb::Msg),
                code: Code::UNKNOWN_USER,
                retry_after: None,
                text: "no such user: bob"
            }
        );
        assert_eq!(
            parse("FAIL * LINE_TOO_LONG line exceeds 4096 bytes; it was discarded"),
            ServerLine::Fail {
                label: None,
                command: None,
                code: Code::LINE_TOO_LONG,
                retry_after: None,
                text: "line exceeds 4096 bytes; it was discarded"
            }
        );
        assert_eq!(
            parse("OK HISTORY * 2 BEFORE 17 AFTER -"),
            ServerLine::Ok {
                label: None,
                reply: OkReply::History {
                    with: "*",
                    count: 2,
                    before: Some(17),
                    after: None
                }
            }
        );
        assert_eq!(
            parse("OK FRIEND ADD Bob REQUESTED"),
            ServerLine::Ok {
                label: None,
                reply: OkReply::Friend(FriendReply::Add {
                    name: "Bob",
                    outcome: AddOutcome::Requested
                })
            }
        );
        assert_eq!(
            parse("FAIL @1 LOGIN RATE_LIMITED retry_after=12 too many failed logins"),
            ServerLine::Fail {
                label: Some("1"),
                command: Some(Verb::Login),
                code: Code::RATE_LIMITED,
                retry_after: Some(12),
                text: "too many failed logins"
            }
        );
        // The field is required for the codes that carry it, and only read for those.
        assert!(matches!(
            parse("FAIL LOGIN RATE_LIMITED too many failed logins"),
            ServerLine::Other(_)
        ));
        assert!(matches!(
            parse("FAIL LOGIN RATE_LIMITED retry_after=x later"),
            ServerLine::Other(_)
        ));
        assert!(matches!(
            parse("FAIL LOGIN BAD_CREDENTIALS retry_after=3 x"),
            ServerLine::Fail {
                retry_after: None,
                text: "retry_after=3 x",
                ..
            }
        ));
        assert!(parse("OK PING").is_final());
        assert_eq!(parse("OK @x PING").label(), Some("x"));
        assert_eq!(parse("PONG x").label(), None);
    }

    #[test]
    fn pushes() {
        assert_eq!(
            parse("HELLO chatd 0.1.0 Welcome! Type HELP for commands."),
            ServerLine::Hello {
                software: "chatd",
                version: "0.1.0",
                text: "Welcome! Type HELP for commands."
            }
        );
        assert_eq!(
            parse(&format!("MESSAGE 3 {T} alice Bob,carol  hi  there")),
            ServerLine::Message(MessageLine {
                id: 3,
                time_ms: T_MS,
                from: "alice",
                to: Recipient::Group(vec!["Bob", "carol"]),
                text: " hi  there"
            })
        );
        assert_eq!(
            parse(&format!("MESSAGE 18446744073709551615 {T} alice bob hi")),
            ServerLine::Message(MessageLine {
                id: u64::MAX,
                time_ms: T_MS,
                from: "alice",
                to: Recipient::User("bob"),
                text: "hi"
            })
        );
        assert_eq!(
            parse("BACKLOG-END 12"),
            ServerLine::BacklogEnd { count: 12 }
        );
        assert_eq!(
            parse("PRESENCE bob OFFLINE"),
            ServerLine::Presence {
                name: "bob",
                presence: Presence::Offline
            }
        );
        assert_eq!(
            parse("FRIENDSHIP bob WITHDRAWN"),
            ServerLine::Friendship {
                name: "bob",
                event: FriendshipEvent::Withdrawn
            }
        );
        assert_eq!(parse("PING 17"), ServerLine::Ping { token: "17" });
        assert_eq!(parse("PING"), ServerLine::Other("PING"));
        assert_eq!(parse("PING 1 2"), ServerLine::Other("PING 1 2"));
        assert_eq!(
            parse("BYE IDLE_TIMEOUT you were silent"),
            ServerLine::Bye {
                code: ByeCode::IDLE_TIMEOUT,
                text: "you were silent"
            }
        );
        assert_eq!(
            parse("BYE SLOW_CONSUMER you did not read"),
            ServerLine::Bye {
                code: ByeCode::SLOW_CONSUMER,
                text: "you did not read"
            }
        );
    }

    #[test]
    fn data_lines() {
        assert_eq!(
            parse(&format!("HISTORY 9 {T} bob * everyone!")),
            ServerLine::History(MessageLine {
                id: 9,
                time_ms: T_MS,
                from: "bob",
                to: Recipient::All,
                text: "everyone!"
            })
        );
        assert_eq!(parse("USER alice"), ServerLine::User { name: "alice" });
        assert_eq!(
            parse("HELP MSG <name> <text> -- send a message to one user"),
            ServerLine::Help {
                text: "MSG <name> <text> -- send a message to one user"
            }
        );
        assert_eq!(parse("PONG"), ServerLine::Pong { token: None });
        assert_eq!(parse("PONG a:b"), ServerLine::Pong { token: Some("a:b") });
        // A PING token may hold a CR (any control character but LF), and PONG echoes it.
        assert_eq!(
            parse("PONG a\rb\n"),
            ServerLine::Pong {
                token: Some("a\rb")
            }
        );
        assert_eq!(parse("PONG a\r\r\n"), ServerLine::Other("PONG a\r"));
        assert_eq!(parse("PONG a\r "), ServerLine::Other("PONG a\r "));
        assert_eq!(parse("HELP a\rb"), ServerLine::Other("HELP a\rb"));
        assert_eq!(
            parse("FRIEND carol INCOMING"),
            ServerLine::Friend {
                name: "carol",
                state: FriendState::Incoming
            }
        );
    }

    #[test]
    fn malformed_lines_are_other() {
        let bad = [
            "",
            " ",
            "\n",
            "\r\n",
            "ok MSG",
            " OK MSG",
            "OK",
            "OK ",
            "OK @",
            "OK @7",
            "OK @bad!label MSG",
            "OK @123456789012345678901234567890123 MSG",
            "OK msg",
            "OK MSG1",
            "OK MSG",
            "OK MSG 1",
            "OK MSG 1 SENT",
            "OK MSG x DELIVERED",
            "OK GROUP 1 DELIVERED 2",
            "OK GROUP 1 DELIVERED 2 KEPT",
            "OK ALL 1 KEPT 2",
            "OK USERS",
            "OK LOGOUT now",
            "OK HISTORY bob 1 BEFORE x AFTER -",
            "OK HISTORY bob 1 BEFORE -",
            "OK FRIEND",
            "OK FRIEND ADD bob",
            "OK FRIEND ADD bob MAYBE",
            "OK FRIEND LIST",
            "OK FRIEND HUG bob",
            "OK COMPRESS",
            "OK COMPRESS GZIP",
            "OK COMPRESS DEFLATE now",
            "OK DIRECT",
            "OK DIRECT OFFER bob",
            "OK DIRECT OFFER bob x",
            "OK DIRECT ACCEPT bob host:0 AB",
            "OK DIRECT HUG bob",
            "DIRECT bob",
            "DIRECT bob OFFER host:1",
            "DIRECT bob OFFER host:1 ab:cd",
            "DIRECT bob ACCEPTED",
            "DIRECT bob LIKED",
            "DIRECT bob GONE now",
            "OK FROB",
            "FAIL",
            "FAIL MSG",
            "FAIL MSG bad_code text",
            "FAIL MSG NO_SUCH_CODE text",
            "FAIL FROB BAD_TEXT text",
            "FAIL @x",
            "HELLO",
            "HELLO chatd",
            "MESSAGE",
            "MESSAGE 1",
            "MESSAGE +1 2026-11-21T10:04:05.123Z a b t",
            "MESSAGE -1 2026-11-21T10:04:05.123Z a b t",
            "MESSAGE 18446744073709551616 2026-11-21T10:04:05.123Z a b t",
            "MESSAGE 1 2026-11-21 a b t",
            "MESSAGE 1 2026-11-21T10:04:05.123Z a b",
            "MESSAGE 1 2026-11-21T10:04:05.123Z a a,,b t",
            "MESSAGE 1 2026-11-21T10:04:05.123Z a a, t",
            "MESSAGE 1 2026-11-21T10:04:05.123Z a *,b t",
            "MESSAGE 1 2026-11-21T10:04:05.12ZZ a b t",
            "MESSAGE 1 2026-11-21T10:04:05.123Ä a b t",
            "MESSAGE 1 2026-02-30T10:04:05.123Z a b t",
            "BACKLOG-END",
            "BACKLOG-END x",
            "BACKLOG-END 1 2",
            "PRESENCE bob",
            "PRESENCE bob online",
            "PRESENCE bob ONLINE now",
            "FRIENDSHIP bob",
            "FRIENDSHIP bob LIKED",
            "BYE",
            "BYE shutdown x",
            "BYE GOODBYE x",
            "USER",
            "USER a b",
            "PONG a b",
            "FRIEND bob",
            "FRIEND bob BEST",
            "FRIEND bob ONLINE x",
            "OK TOKEN 1 ct1.x",
            "OK TOKEN 00000000000000ff",
            "OK REVOKE 1",
            "OK REVOKE 1 CLOSED",
            "OK RESUME",
            "OK PASSWORD 2 CLOSED 0",
            "OK PASSWORD REVOKED 2",
            "OK UNREGISTER",
            "OK UNREGISTER a b",
            "OK BLOCK",
            "OK BLOCKS",
            "OK DMS",
            "OK DMS friends",
            "BLOCKED",
            "BLOCKED a b",
            "OK AWAY",
            "OK AWAY ON",
            "OK WHOIS bob",
            "OK WHOIS bob ONLINE",
            "OK WHOIS bob AWAY -",
            "OK WHOIS bob ONLINE yesterday",
            "AWAY",
            "NOTICE",
            "STAT",
            "STAT x",
            "STAT Connections 1",
            "STAT x 1.",
            "STAT x .5",
            "STAT x -1",
            "STAT x 1 2",
            "OK SUSPEND x",
            "OK SUSPEND x CLOSED",
            "OK KILL x 1",
            "OK STATS",
            "OK ANNOUNCE x",
            "TOKEN 0123456789abcdef 2026-11-21T10:04:05.123Z",
            "TOKEN 0123456789abcdef 2026-11-21T10:04:05.123Z 2026-11-21T10:04:05.123Z 2026-11-21T10:04:05.123Z MINE",
            "TOKEN 123 2026-11-21T10:04:05.123Z 2026-11-21T10:04:05.123Z 2026-11-21T10:04:05.123Z OTHER",
            "WHAT is this",
            "OK MSG x\r\r",
            "OK MSG x\ny",
            "\u{0}\u{1}\u{7f}",
            "MESSAGE 1 \u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9} a b t",
        ];
        for line in bad {
            assert_eq!(
                parse(line),
                ServerLine::Other(strip_terminator(line)),
                "{line:?}"
            );
        }
    }

    #[test]
    fn lenient_where_the_protocol_is() {
        // Several spaces between tokens, trailing spaces after fixed-arity lines, empty texts.
        assert_eq!(
            parse("PRESENCE  bob   ONLINE  "),
            ServerLine::Presence {
                name: "bob",
                presence: Presence::Online
            }
        );
        assert_eq!(
            parse("FAIL  MSG  BAD_TEXT"),
            ServerLine::Fail {
                label: None,
                command: Some(Verb::Msg),
                code: Code::BAD_TEXT,
                retry_after: None,
                text: ""
            }
        );
        assert_eq!(parse("HELP"), ServerLine::Help { text: "" });
        assert_eq!(
            parse(&format!("MESSAGE 1 {T} a b ")),
            ServerLine::Message(MessageLine {
                id: 1,
                time_ms: T_MS,
                from: "a",
                to: Recipient::User("b"),
                text: ""
            })
        );
    }

    #[test]
    fn canonical_lines_round_trip() {
        let lines = [
            "OK MSG 42 DELIVERED".to_string(),
            "OK MSG 42 KEPT".to_string(),
            "OK @a-1 MSG 18446744073709551615 DELIVERED".to_string(),
            "OK @x MSG 0 KEPT".to_string(),
            format!("MESSAGE 18446744073709551615 {T} Alice #rust hi there"),
            format!("MESSAGE 0 {T} a * everyone"),
            "MESSAGE 7 1969-12-31T23:59:59.999Z a b before the epoch".to_string(),
            "OK @l LOGOUT".to_string(),
            "OK REGISTER Alice".to_string(),
            "OK GROUP 5 DELIVERED 1 KEPT 2".to_string(),
            "OK ALL 6 DELIVERED 0".to_string(),
            "OK USERS 3".to_string(),
            "OK HISTORY bob 0 BEFORE - AFTER -".to_string(),
            "OK HISTORY * 50 BEFORE 12 AFTER 99".to_string(),
            "OK FRIEND ADD x FRIENDS".to_string(),
            "OK FRIEND ACCEPT x".to_string(),
            "OK FRIEND DENY x".to_string(),
            "OK FRIEND REMOVE x".to_string(),
            "OK FRIEND LIST 0".to_string(),
            "OK @z COMPRESS DEFLATE".to_string(),
            "OK DIRECT OFFER bob 60".to_string(),
            format!("OK DIRECT ACCEPT alice [::1]:4000 {FP}"),
            "OK DIRECT DECLINE alice".to_string(),
            "OK DIRECT CANCEL bob".to_string(),
            format!("DIRECT alice OFFER 192.0.2.1:7000 {FP}"),
            format!("DIRECT bob ACCEPTED {FP}"),
            "DIRECT bob DECLINED".to_string(),
            "DIRECT bob WITHDRAWN".to_string(),
            "DIRECT bob EXPIRED".to_string(),
            "DIRECT bob ANSWERED".to_string(),
            "DIRECT bob GONE".to_string(),
            "FAIL @l GROUP UNKNOWN_USER unknown: x, y".to_string(),
            "FAIL * BAD_LABEL bad label".to_string(),
            "HELLO chatd 0.1.0 Welcome!".to_string(),
            format!("MESSAGE 1 {T} a b  two spaces"),
            format!("MESSAGE 2 {T} a b,c,d text"),
            format!("HISTORY 3 {T} a * x"),
            "BACKLOG-END 0".to_string(),
            "PRESENCE x ONLINE".to_string(),
            "FRIENDSHIP x ACCEPTED".to_string(),
            "BYE SERVER_FULL too many connections".to_string(),
            "USER x".to_string(),
            "HELP MSG <name> <text>".to_string(),
            "PONG".to_string(),
            "PONG tok".to_string(),
            "PING 12".to_string(),
            "BYE TOO_MANY_CONNECTIONS too many from your address".to_string(),
            "FRIEND x OUTGOING".to_string(),
            "OK TOKEN 00000000000000ff ct1.00000000000000ff.secret".to_string(),
            "OK @r RESUME Alice".to_string(),
            "OK TOKENS 2".to_string(),
            "OK REVOKE 3 CLOSED 1".to_string(),
            "OK PASSWORD REVOKED 2 CLOSED 0".to_string(),
            "OK UNREGISTER Alice".to_string(),
            "OK BLOCK Bob".to_string(),
            "OK UNBLOCK Bob".to_string(),
            "OK BLOCKS 0".to_string(),
            "OK DMS FRIENDS".to_string(),
            "OK @d DMS EVERYONE".to_string(),
            "BLOCKED Bob".to_string(),
            "OK AWAY SET".to_string(),
            "OK AWAY CLEARED".to_string(),
            "OK WHOIS bob ONLINE -".to_string(),
            format!("OK WHOIS bob OFFLINE {T}  gone  fishing"),
            "AWAY bob".to_string(),
            "AWAY bob at lunch, back at 2".to_string(),
            "BYE ACCOUNT_DELETED the account was deleted".to_string(),
            format!("TOKEN 0123456789abcdef {T} {T} {T} CURRENT"),
            format!("TOKEN 0123456789abcdef {T} {T} {T} OTHER  my  phone"),
            "BYE REVOKED your token was revoked".to_string(),
            "OK ANNOUNCE 12".to_string(),
            "OK SUSPEND mallory CLOSED 2".to_string(),
            "OK UNSUSPEND mallory".to_string(),
            "OK KILL mallory CLOSED 0".to_string(),
            "OK STATS 7".to_string(),
            "OK ADDUSER Dave".to_string(),
            "STAT connections 12".to_string(),
            "STAT commit_seconds_avg 0.0042".to_string(),
            "NOTICE  maintenance at 5, back by 6 ".to_string(),
            "BYE ACCOUNT_SUSPENDED spam".to_string(),
            "BYE KILLED stuck client".to_string(),
        ];
        for l in &lines {
            let p = parse(l);
            assert!(!matches!(p, ServerLine::Other(_)), "{l}");
            assert_eq!(&p.to_string(), l);
            // The bytes the server sends: the same text, whether written field by field or
            // through Display.
            assert_eq!(p.to_bytes(), format!("{l}\n").into_bytes(), "{l}");
        }
    }

    /// Every kind of line the server builds encodes to one LF-terminated line that parses back to
    /// the same value.
    #[test]
    fn built_lines_encode_and_parse_back() {
        let m = MessageLine {
            id: 5,
            time_ms: 1_795_219_200_007,
            from: "alice",
            to: Recipient::Group(vec!["Bob", "carol"]),
            text: " x",
        };
        let mut lines = vec![
            ServerLine::Ok {
                label: Some("q1"),
                reply: OkReply::Group {
                    id: 5,
                    delivered: 1,
                    kept: 1,
                },
            },
            ServerLine::Message(m.clone()),
            ServerLine::History(MessageLine {
                to: Recipient::All,
                ..m
            }),
            ServerLine::Pong { token: None },
            ServerLine::Ping { token: "3" },
            ServerLine::BacklogEnd { count: 3 },
        ];
        for code in Code::ALL {
            for command in [None, Some(Verb::Friend)] {
                lines.push(ServerLine::Fail {
                    label: None,
                    command,
                    code: *code,
                    retry_after: code.has_retry_after().then_some(30),
                    text: "a human sentence",
                });
            }
        }
        for code in ByeCode::ALL {
            lines.push(ServerLine::Bye {
                code: *code,
                text: "closing",
            });
        }
        for line in &lines {
            let bytes = line.to_bytes();
            let text = std::str::from_utf8(&bytes).unwrap();
            assert_eq!(text.matches('\n').count(), 1, "{text:?}");
            assert!(text.ends_with('\n'));
            assert_eq!(&parse(text), line, "{text:?}");
        }
        assert_eq!(
            lines[1].to_string(),
            "MESSAGE 5 2026-11-21T00:00:00.007Z alice Bob,carol  x"
        );
    }

    /// Splices interesting fragments and random bytes into lines; none may panic, and every line
    /// that parses must survive a Display round trip.
    #[test]
    fn hostile_inputs_never_panic_and_round_trip() {
        const FRAGMENTS: &[&str] = &[
            "OK",
            "FAIL",
            "HELLO",
            "MESSAGE",
            "HISTORY",
            "BACKLOG-END",
            "PRESENCE",
            "FRIENDSHIP",
            "BYE",
            "USER",
            "HELP",
            "PONG",
            "FRIEND",
            "@",
            "@x",
            "*",
            ",",
            " ",
            "  ",
            "\r",
            "\n",
            "MSG",
            "PING",
            "LOGOUT",
            "BAD_TEXT",
            "SHUTDOWN",
            "DELIVERED",
            "KEPT",
            "ONLINE",
            "REQUESTED",
            "INCOMING",
            "LIST",
            "-",
            "0",
            "18446744073709551615",
            "99999999999999999999",
            "2026-11-21T10:04:05.123Z",
            "a,b",
            "\u{e9}",
            "\u{1F600}",
            "\u{0}",
            "\u{1b}[2J",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64*: deterministic, so a failure is reproducible.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let mut parsed = 0;
        for _ in 0..40_000 {
            let mut line = String::new();
            let parts = next() % 9;
            for i in 0..parts {
                if i > 0 && next() % 4 != 0 {
                    line.push(' ');
                }
                let r = next();
                if r % 7 == 0 {
                    line.push(char::from_u32((r >> 8) as u32 % 0x11_0000).unwrap_or('?'));
                } else {
                    line.push_str(FRAGMENTS[(r >> 8) as usize % FRAGMENTS.len()]);
                }
            }
            let p = parse(&line);
            if !matches!(p, ServerLine::Other(_)) {
                parsed += 1;
                let again = p.to_string();
                assert_eq!(parse(&again), p, "{line:?} -> {again:?}");
            }
        }
        // The generator must actually reach the structured paths, or the test proves little.
        assert!(parsed > 500, "only {parsed} lines parsed");
    }
}
