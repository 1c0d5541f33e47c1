//! Durable state: accounts, friendships, blocks, device tokens, account profiles, retired names,
//! rooms (settings, members, bans, invitations), the message log and its indexes (by conversation,
//! by room, the offline backlog), and read markers.
//!
//! This module is the only place that knows redb. The core never calls the store directly: it emits
//! [`StoreOp`]s and the [`worker`] threads run them. Writes queued while the previous commit ran
//! form one write transaction (group commit); reads (HISTORY pages, the offline backlog) run in
//! read transactions on a thread of their own, beside the writer, and see every write sent before
//! them. The worker's module documentation states exactly in what order results come back. The
//! core keeps accounts, friendships, blocks, tokens, profiles, backlog counts and rooms in memory,
//! loaded from the [`Snapshot`] at start; the store is the durable copy and the only copy of the
//! message log.
//!
//! Files: `redb` (the tables and transactions), `conv_index` (the durable store's conversation
//! index, built in bulk), `codec` (the on-disk record format), `keys` (the index keys both stores
//! use), `page` (HISTORY paging, shared by both stores), `memory` (an
//! in-memory model with the same semantics, for tests and fuzzers), `worker` (the threads).

pub mod backup;
mod codec;
mod contain;
mod conv_index;
mod keys;
pub mod memory;
mod msg_log;
pub(crate) mod oplog;
mod page;
pub mod redb;
pub mod worker;

pub use keys::key_of;

use std::fmt;
use std::path::PathBuf;

pub use crate::proto::room::Role;

/// Message id: server-assigned, strictly increasing, never reused.
pub type MsgId = u64;

/// A room's number: server-assigned, never reused, so a room created again under the name of a
/// deleted one starts empty (the deleted room's messages stay filed under the old number).
pub type RoomId = u64;

/// A room's settings as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecord {
    /// The name as created, `#` included; its lowercase form is how it is found.
    pub name: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Invite only.
    pub private: bool,
    /// The topic's last change, if it was ever set.
    pub topic: Option<TopicRecord>,
}

/// A room's topic and who set it (cleared: an empty text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    /// The topic; empty when it was cleared.
    pub text: String,
    /// Who set or cleared it, as registered.
    pub by: String,
    /// When, milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// One account's membership of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub role: Role,
    /// The room's last message id when the member joined: live messages reach the member from
    /// after it, and in a private room it is where what the member may read starts.
    pub since: MsgId,
    /// The read marker: the last message the member marked read (at least `since`)...
    pub read_id: MsgId,
    /// ...and how many of the room's messages have an id up to it, so that the unread count is
    /// the room's message count minus this, without reading the log.
    pub read_seq: u64,
}

/// An account on a room's ban list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRecord {
    /// Who banned it, as registered.
    pub by: String,
    /// When, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The reason given; empty when none.
    pub reason: String,
}

/// An invitation waiting for an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteRecord {
    /// Who invited, as registered.
    pub by: String,
    /// When it ends, milliseconds since the Unix epoch.
    pub expires_ms: i64,
}

/// A room as loaded at start: its settings, and where its message log ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomState {
    pub id: RoomId,
    pub record: RoomRecord,
    /// The id of its last message (0: none).
    pub last_id: MsgId,
    /// How many messages it has.
    pub count: u64,
}

/// A registered account as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Name as registered (display form); its lowercase form is the lookup key.
    pub name: String,
    /// scrypt PHC string.
    pub phc: String,
    /// Registration time, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

impl fmt::Debug for AccountRecord {
    // The hash stays out of logs and test output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountRecord")
            .field("name", &self.name)
            .field("phc", &"<redacted>")
            .field("created_ms", &self.created_ms)
            .finish()
    }
}

/// Identifies a device token: the public half of the token, shown in `TOKENS` and named by
/// `REVOKE`. Random, so it says nothing about how many tokens exist.
pub type TokenId = u64;

/// A device token as stored. The secret is never stored, only its SHA-256 digest: a copy of the
/// database holds no token that logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: TokenId,
    /// The account's key.
    pub user: String,
    /// SHA-256 of the secret.
    pub digest: [u8; 32],
    /// What the user called it (may be empty).
    pub label: String,
    /// Issue time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Last use as recorded (the core writes it at a coarse granularity).
    pub last_used_ms: i64,
}

impl fmt::Debug for TokenRecord {
    // The digest stays out of logs and test output, like the password hash.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("digest", &"<redacted>")
            .field("label", &self.label)
            .field("created_ms", &self.created_ms)
            .field("last_used_ms", &self.last_used_ms)
            .finish()
    }
}

/// An account's settings and status: who may send it direct messages, its away message, and when
/// it was last online.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// `DMS FRIENDS`: direct messages from friends only.
    pub friends_only: bool,
    /// The away message, if one is set.
    pub away: Option<String>,
    /// When the account's last connection left, as recorded.
    pub last_seen_ms: Option<i64>,
    /// Set while an operator has suspended the account: it cannot log in.
    pub suspended: Option<Suspension>,
}

/// An operator's suspension of an account (`SUSPEND`): until it is lifted, the account cannot log
/// in. Nothing else of the account changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suspension {
    /// Why, as the operator gave it (may be empty).
    pub reason: String,
    /// When the account was suspended.
    pub since_ms: i64,
}

/// The name of a deleted account. It is never registered again (spec 4.18): the message log shows
/// the deleted account's messages under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredName {
    /// The name as it was registered.
    pub name: String,
    /// When the account was deleted.
    pub deleted_ms: i64,
}

/// Whom a message was addressed to (names as registered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum To {
    /// MSG: one user.
    User(String),
    /// GROUP: the full recipient list as the sender gave it (display names, in the sender's order).
    Group(Vec<String>),
    /// ALL: everyone online.
    All,
    /// A room message: the room's name as created, `#` included.
    Room(String),
}

/// One message of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    pub id: MsgId,
    /// Server time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Sender name as registered.
    pub from: String,
    pub to: To,
    pub text: String,
}

/// A friendship edge seen from one side (`a`'s view of `b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FriendState {
    /// Accepted, symmetric.
    Friends,
    /// `a` asked `b`; `b` has not answered.
    Outgoing,
    /// `b` asked `a`; `a` has not answered.
    Incoming,
}

impl FriendState {
    /// The same edge seen from the other side.
    pub fn mirror(self) -> FriendState {
        match self {
            FriendState::Friends => FriendState::Friends,
            FriendState::Outgoing => FriendState::Incoming,
            FriendState::Incoming => FriendState::Outgoing,
        }
    }
}

/// A conversation, the unit HISTORY pages through.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// Two accounts by lowercase key, in either order (the store normalises it). Both may be the same.
    Pair(String, String),
    /// The ALL broadcasts.
    Broadcast,
    /// A room's messages with an id above `after` (what one member may see of it: 0 for all).
    Room { id: RoomId, after: MsgId },
}

/// Where a HISTORY page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The newest `count` messages.
    Latest,
    /// The newest `count` messages with id < the given id.
    Before(MsgId),
    /// The oldest `count` messages with id > the given id.
    After(MsgId),
}

/// One page of a conversation: which messages, not the messages themselves, so that a long page
/// can be sent part by part ([`StoreOp::ReadMessages`]) without holding it whole in memory.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// The ids of the page's messages, in ascending order. Each was stored and could be decoded
    /// when the page was read: a page that holds a damaged record fails as a whole.
    pub ids: Vec<MsgId>,
    /// `Some(c)`: older messages exist and `Cursor::Before(c)` shows the next older page, with no gap
    /// and no duplicate. `None`: nothing older.
    pub older: Option<MsgId>,
    /// `Some(c)`: newer messages exist and `Cursor::After(c)` shows the next newer page.
    pub newer: Option<MsgId>,
}

/// One store operation. Most write; [`History`](StoreOp::History) and
/// [`ReadBacklog`](StoreOp::ReadBacklog) only read (see [`StoreOp::is_read`]). The worker runs the
/// writes of a batch in one write transaction and the reads afterwards, in a read transaction
/// that sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert a new account (the core has checked the name is free).
    CreateAccount(AccountRecord),
    /// Append a message to the log, index it under its conversations, and add it to the offline
    /// backlog of each account key in `pending_for`.
    AppendMessage {
        msg: MessageRecord,
        pending_for: Vec<String>,
    },
    /// Add an already-stored message to one account's offline backlog.
    AddPending { user: String, id: MsgId },
    /// Return (ascending order) the ids of the messages in the account's offline backlog, removing
    /// nothing. A read. An entry whose message is not stored, or does not decode, is left out.
    ReadBacklog { user: String },
    /// Return the messages with these ids, in the order given. A read. An id whose message is not
    /// stored, or does not decode, is left out.
    ReadMessages { ids: Vec<MsgId> },
    /// Remove the account's offline backlog entries with id <= `upto` (those a [`ReadBacklog`]
    /// returned and that were delivered). A write; entries added since with a larger id stay.
    ///
    /// [`ReadBacklog`]: StoreOp::ReadBacklog
    ClearBacklog { user: String, upto: MsgId },
    /// Set the edge between two account keys as seen from `a` (the mirror is stored for `b`), or
    /// delete both directions with `None`.
    SetFriendship {
        a: String,
        b: String,
        state: Option<FriendState>,
    },
    /// Read one page of a conversation (`count` >= 1). A read.
    History {
        conv: Conversation,
        count: u32,
        cursor: Cursor,
    },
    /// Insert a device token (the core chose a fresh id).
    CreateToken(TokenRecord),
    /// Record a token's last use; nothing if the token is gone.
    TouchToken { id: TokenId, last_used_ms: i64 },
    /// Delete the tokens with these ids (those that exist).
    RevokeTokens { ids: Vec<TokenId> },
    /// Replace an existing account's password hash and delete the tokens `revoke`, in one commit.
    SetPassword {
        user: String,
        phc: String,
        revoke: Vec<TokenId>,
    },
    /// Delete an account and everything keyed by it (its tokens, friendships and requests in both
    /// directions, blocks in both directions, its offline backlog, its profile, its memberships of
    /// rooms, its invitations, the bans naming it, its read markers) and retire its name, in one
    /// commit. Messages it sent stay in the log.
    DeleteAccount { user: String, deleted_ms: i64 },
    /// `a` blocks `b`: the block is stored and any friendship or request between them is deleted,
    /// in one commit.
    Block { a: String, b: String },
    /// `a` no longer blocks `b`.
    Unblock { a: String, b: String },
    /// Set or clear an existing account's away message.
    SetAway { user: String, away: Option<String> },
    /// Set whether an existing account takes direct messages from friends only.
    SetDms { user: String, friends_only: bool },
    /// Record when an existing account was last online.
    SetLastSeen { user: String, ms: i64 },
    /// Append a room message to the log and to the room's index, as the room's `seq`-th message.
    AppendRoomMessage {
        msg: MessageRecord,
        room: RoomId,
        seq: u64,
    },
    /// Create or replace a room's settings.
    PutRoom { id: RoomId, room: RoomRecord },
    /// Create a room with its first member (its owner), in one commit. In a cluster it is one log
    /// entry on the room name's own subject, taken only if no other node created that name first
    /// (answered [`StoreReply::Taken`] otherwise), so that a name never names two rooms.
    CreateRoom {
        id: RoomId,
        /// Boxed, to keep the op small.
        room: Box<RoomRecord>,
        owner: String,
        member: MemberRecord,
    },
    /// Remove a room: its settings, members, bans and invitations. Its messages stay in the log.
    DeleteRoom { id: RoomId },
    /// Add or replace a membership.
    PutMember {
        room: RoomId,
        user: String,
        member: MemberRecord,
    },
    /// Remove a membership.
    RemoveMember { room: RoomId, user: String },
    /// Add or replace a ban.
    PutBan {
        room: RoomId,
        user: String,
        ban: BanRecord,
    },
    /// Remove a ban.
    RemoveBan { room: RoomId, user: String },
    /// Add or replace an invitation.
    PutInvite {
        room: RoomId,
        user: String,
        invite: InviteRecord,
    },
    /// Remove an invitation.
    RemoveInvite { room: RoomId, user: String },
    /// The latest `count` messages of a room with ids in `after+1..=upto`, as a page. It only
    /// reads, but is answered in the order of the writes (see [`StoreOp::is_read`]): a JOIN's
    /// replay must show exactly what was said before the join, and reach the member before any
    /// later message of the room does.
    RoomReplay {
        room: RoomId,
        after: MsgId,
        upto: MsgId,
        count: u32,
    },
    /// Move `user`'s read marker of the direct conversation with `with` forward to `id` (never
    /// back); answers the marker before and after the op.
    SetDirectRead {
        user: String,
        with: String,
        id: MsgId,
    },
    /// `user`'s read marker of the direct conversation with `with` (0: none). A read.
    DirectRead { user: String, with: String },
    /// For each `(room, after)`: the id of the room's first message above `after`, if any. A read.
    FirstUnread { rooms: Vec<(RoomId, MsgId)> },
    /// The room's last message with an id up to `upto`, with its position in the room. A read.
    RoomSeq { room: RoomId, upto: MsgId },
    /// Suspend an existing account, or lift its suspension with `None`.
    SetSuspended {
        user: String,
        suspension: Option<Suspension>,
    },
    /// What a change tells the users it concerns beyond what its records say. Nothing is stored:
    /// in a cluster it travels in the log entry, first among the entry's ops, so that the other
    /// nodes tell their own connections too. Only a node of a cluster writes one.
    Notice(Notice),
    /// A room event and the change it tells of, as one op (the core makes it of a room notice
    /// followed by its change): `op` is applied, and in a cluster both travel in one log entry, so
    /// that a node that skips the change (its room is gone) skips the event too.
    Told { notice: Notice, op: Box<StoreOp> },
    /// Record that ids below `below` may have been shown: the next id after a restart is at least
    /// `below`, whatever is stored (spec 6.2). Raised in blocks before messages are delivered
    /// ahead of their commit; set back to the next id at a clean stop. Never in a cluster, whose
    /// ids are its log's sequence.
    ReserveIds { below: MsgId },
}

/// What another node's connections are told of a change (see [`StoreOp::Notice`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A room event line, encoded once where the command ran, for the room's members as they
    /// are before the ops after it in the entry.
    Room { room: RoomId, line: String },
    /// An `ANNOUNCE`: its `NOTICE` line for every connection.
    Everyone { line: String },
    /// A `KILL`: the account's connections are closed with `BYE KILLED` and this text.
    Kill { user: String, text: String },
}

impl StoreOp {
    /// The room the op concerns, if any (a room's creation included; a notice of a room event
    /// too, though it stores nothing).
    pub fn room(&self) -> Option<RoomId> {
        match self {
            StoreOp::AppendRoomMessage { room, .. }
            | StoreOp::PutMember { room, .. }
            | StoreOp::RemoveMember { room, .. }
            | StoreOp::PutBan { room, .. }
            | StoreOp::RemoveBan { room, .. }
            | StoreOp::PutInvite { room, .. }
            | StoreOp::RemoveInvite { room, .. }
            | StoreOp::RoomReplay { room, .. }
            | StoreOp::RoomSeq { room, .. }
            | StoreOp::Notice(Notice::Room { room, .. }) => Some(*room),
            StoreOp::PutRoom { id, .. }
            | StoreOp::DeleteRoom { id }
            | StoreOp::CreateRoom { id, .. } => Some(*id),
            StoreOp::Told { op, .. } => op.room(),
            _ => None,
        }
    }

    /// Whether the op only reads: it runs in a read transaction, outside the write batch.
    pub fn is_read(&self) -> bool {
        match self {
            StoreOp::History { .. }
            | StoreOp::ReadBacklog { .. }
            | StoreOp::ReadMessages { .. }
            | StoreOp::DirectRead { .. }
            | StoreOp::FirstUnread { .. }
            | StoreOp::RoomSeq { .. } => true,
            // Listed, not left to a catch-all, so that a new op has to be placed on one side.
            StoreOp::CreateAccount(_)
            | StoreOp::AppendMessage { .. }
            | StoreOp::AddPending { .. }
            | StoreOp::ClearBacklog { .. }
            | StoreOp::SetFriendship { .. }
            | StoreOp::CreateToken(_)
            | StoreOp::TouchToken { .. }
            | StoreOp::RevokeTokens { .. }
            | StoreOp::SetPassword { .. }
            | StoreOp::DeleteAccount { .. }
            | StoreOp::Block { .. }
            | StoreOp::Unblock { .. }
            | StoreOp::SetAway { .. }
            | StoreOp::SetDms { .. }
            | StoreOp::SetLastSeen { .. }
            | StoreOp::AppendRoomMessage { .. }
            | StoreOp::PutRoom { .. }
            | StoreOp::CreateRoom { .. }
            | StoreOp::DeleteRoom { .. }
            | StoreOp::PutMember { .. }
            | StoreOp::RemoveMember { .. }
            | StoreOp::PutBan { .. }
            | StoreOp::RemoveBan { .. }
            | StoreOp::PutInvite { .. }
            | StoreOp::RemoveInvite { .. }
            | StoreOp::SetDirectRead { .. }
            | StoreOp::SetSuspended { .. }
            | StoreOp::Notice(_)
            | StoreOp::Told { .. }
            | StoreOp::ReserveIds { .. } => false,
            // Reads, but ordered with the writes (see the op).
            StoreOp::RoomReplay { .. } => false,
        }
    }

    /// The read form of a read op; a write op is handed back unchanged.
    pub fn into_read(self) -> Result<ReadOp, StoreOp> {
        match self {
            StoreOp::History {
                conv,
                count,
                cursor,
            } => Ok(ReadOp::History {
                conv,
                count,
                cursor,
            }),
            StoreOp::ReadBacklog { user } => Ok(ReadOp::Backlog { user }),
            StoreOp::ReadMessages { ids } => Ok(ReadOp::Messages { ids }),
            StoreOp::DirectRead { user, with } => Ok(ReadOp::DirectRead { user, with }),
            StoreOp::FirstUnread { rooms } => Ok(ReadOp::FirstUnread { rooms }),
            StoreOp::RoomSeq { room, upto } => Ok(ReadOp::RoomSeq { room, upto }),
            write => {
                debug_assert!(!write.is_read());
                Err(write)
            }
        }
    }
}

/// A read-only op, answered by a [`StoreReader`]: the read ops of [`StoreOp`], as a type of their
/// own so that a reader cannot be handed a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// As [`StoreOp::History`]: one page of a conversation, as [`StoreReply::History`].
    History {
        conv: Conversation,
        count: u32,
        cursor: Cursor,
    },
    /// As [`StoreOp::ReadBacklog`]: an account's offline backlog, as [`StoreReply::Backlog`].
    Backlog { user: String },
    /// As [`StoreOp::ReadMessages`]: messages by id, as [`StoreReply::Messages`].
    Messages { ids: Vec<MsgId> },
    /// As [`StoreOp::DirectRead`], as [`StoreReply::Marker`].
    DirectRead { user: String, with: String },
    /// As [`StoreOp::FirstUnread`], as [`StoreReply::FirstIds`].
    FirstUnread { rooms: Vec<(RoomId, MsgId)> },
    /// As [`StoreOp::RoomSeq`], as [`StoreReply::Seq`].
    RoomSeq { room: RoomId, upto: MsgId },
    /// A consistent copy of the whole database, written to a new file `to` (see `backup`), as
    /// [`StoreReply::Backup`]. Only a fresh read: the worker runs it on a thread of its own, so
    /// that other reads do not wait for it.
    Backup { to: PathBuf },
}

/// The result of one op, in the same position as the op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreReply {
    Done,
    /// The ids of an offline backlog, ascending.
    Backlog(Vec<MsgId>),
    History(HistoryPage),
    /// A read marker before and after the op (the same for a read).
    Marker {
        before: MsgId,
        after: MsgId,
    },
    /// One answer per room asked, in order.
    FirstIds(Vec<Option<MsgId>>),
    /// A room message's id and its position in the room.
    Seq(Option<(MsgId, u64)>),
    /// Messages read by id.
    Messages(Vec<MessageRecord>),
    /// A message appended under this id, which the store chose (a cluster's log: the stream
    /// sequence of its entry); the core's proposed id stands when the reply is [`Done`].
    ///
    /// [`Done`]: StoreReply::Done
    Appended(MsgId),
    /// A new account or room was not created: the name was taken first by another server of the
    /// cluster, which the core could not know when it checked. Also the answer, in a cluster, to
    /// an op on a room the log does not have (its creation was refused so, or another server
    /// deleted it meanwhile): the op was not written.
    Taken,
    /// A backup was written: what it holds.
    Backup(backup::Summary),
    /// A read that could not be answered. It fails alone: the other ops of its batch, later ops
    /// and the server go on.
    Unreadable(Unreadable),
}

/// Why one read could not be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Stored data that does not decode, or an index naming a message that is not stored: a fault
    /// in the file, not in the request. The detail names the file and the damage.
    Damaged(String),
    /// The database could not be read at all (an I/O error, the file being reopened). The detail
    /// names the file and the cause.
    Unavailable(String),
}

impl From<StoreError> for Unreadable {
    fn from(e: StoreError) -> Unreadable {
        match e {
            StoreError::Corrupt { .. } => Unreadable::Damaged(e.to_string()),
            _ => Unreadable::Unavailable(e.to_string()),
        }
    }
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::Damaged(d) | Unreadable::Unavailable(d) => f.write_str(d),
        }
    }
}

/// Everything the core needs in memory, read once at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub accounts: Vec<AccountRecord>,
    /// Each stored edge `(a_key, b_key, a's view)`; both directions of a pair appear.
    pub friendships: Vec<(String, String, FriendState)>,
    /// Offline backlog size per account key (accounts with none may be absent).
    pub pending_counts: Vec<(String, u32)>,
    /// Every stored device token, in id order.
    pub tokens: Vec<TokenRecord>,
    /// Each block `(blocker key, blocked key)`, in key order.
    pub blocks: Vec<(String, String)>,
    /// Each stored profile by account key, in key order (accounts with none may be absent).
    pub profiles: Vec<(String, Profile)>,
    /// The names of deleted accounts, in key order.
    pub retired: Vec<RetiredName>,
    /// The same backlogs by sender: `(account key, sender key, messages)`, in key order. An entry
    /// whose message is missing or does not decode is counted in `pending_counts` only.
    pub pending_senders: Vec<(String, String, u32)>,
    /// The id the next message gets: one more than the largest id ever stored, or 1, and at
    /// least the last [`StoreOp::ReserveIds`].
    pub next_id: MsgId,
    /// Every room, in id order.
    pub rooms: Vec<RoomState>,
    /// Every membership `(room, account key, record)`.
    pub members: Vec<(RoomId, String, MemberRecord)>,
    /// Every ban `(room, account key, record)`.
    pub bans: Vec<(RoomId, String, BanRecord)>,
    /// Every invitation `(room, account key, record)`, expired ones included.
    pub invites: Vec<(RoomId, String, InviteRecord)>,
    /// The number the next room gets: one more than any room number in use or in the log, or 1.
    pub next_room_id: RoomId,
}

/// A failure of the storage layer. Every message about the database names its file.
///
/// What the server does with one depends on where it happens (see the operator's manual): at
/// start-up it refuses to start; a failed write is tried again until it commits while new writes
/// are refused (`worker`); a failed read fails that one read. Only a store that breaks its own
/// contract ([`StoreError::ReplyCount`]) or a cluster log this build cannot read
/// ([`StoreError::LogVersion`]) stops the server ([`StoreError::is_fatal`]).
///
/// The sources are boxed to keep the error small: it travels inside store results the core
/// receives, and the result queue holds thousands of them.
#[derive(Debug)]
pub enum StoreError {
    /// The database file exists but is empty (0 bytes). It is refused rather than initialised: a
    /// file truncated to nothing must not quietly become an empty database.
    Empty {
        /// The database file.
        path: PathBuf,
    },
    /// The database could not be opened or created (a missing directory, no permission, already
    /// open in another process).
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<::redb::Error>,
    },
    /// The file's table layout is not the one this build reads.
    Schema {
        /// The database file.
        path: PathBuf,
        /// The layout version the file holds.
        found: u64,
    },
    /// The disk holding the database has less free space than the reserve: no write is tried,
    /// so that redb never meets a full disk in the middle of a commit.
    LowSpace {
        /// The database file.
        path: PathBuf,
        /// Bytes free for the server on that file system.
        free: u64,
        /// The reserve (`--min-free-disk`).
        reserve: u64,
    },
    /// A write transaction or its commit failed (a full disk, an I/O error).
    Write {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<::redb::Error>,
    },
    /// A read transaction failed.
    Read {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<::redb::Error>,
    },
    /// Stored bytes could not be decoded, or the indexes contradict each other.
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is damaged.
        source: Box<Damage>,
    },
    /// The cluster's log could not be written or read (NATS unreachable, no acknowledgement in
    /// time); the detail says which.
    Cluster(String),
    /// A backup or a check could not be made.
    Backup {
        /// The file being written or checked.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A store answered a batch with a different number of replies than it had ops: a bug in the
    /// store, which breaks the matching of replies to tickets.
    ReplyCount {
        /// Ops in the batch.
        ops: usize,
        /// Replies returned.
        replies: usize,
    },
    /// An entry of a cluster's log is in a format version this build does not read (written by
    /// a newer chatd): applying the entries after it without it would make this node's index
    /// differ from the others', so the node stops.
    LogVersion {
        /// The entry's stream sequence.
        seq: u64,
        /// The version it says it is in.
        found: u8,
        /// The newest version this build reads.
        reads: u8,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Empty { path } => write!(
                f,
                "cannot open database {}: the file is empty (0 bytes), not a chatd database",
                path.display()
            ),
            StoreError::Open { path, source } => {
                write!(f, "cannot open database {}: {source}", path.display())
            }
            StoreError::Schema { path, found } => write!(
                f,
                "cannot open database {}: unsupported schema version {found} (this build reads \
                 {})",
                path.display(),
                redb::SCHEMA_VERSION
            ),
            StoreError::LowSpace {
                path,
                free,
                reserve,
            } => write!(
                f,
                "the disk of database {} has {} MiB free, less than the reserve of {} MiB \
                 (--min-free-disk)",
                path.display(),
                free / (1024 * 1024),
                reserve / (1024 * 1024)
            ),
            StoreError::Write { path, source } => {
                write!(f, "database write failed ({}): {source}", path.display())
            }
            StoreError::Read { path, source } => {
                write!(f, "database read failed ({}): {source}", path.display())
            }
            StoreError::Corrupt { path, source } => write!(
                f,
                "database {} holds data it cannot decode: {source}",
                path.display()
            ),
            StoreError::ReplyCount { ops, replies } => {
                write!(f, "the store returned {replies} replies for {ops} ops")
            }
            StoreError::Cluster(detail) => write!(f, "cluster log: {detail}"),
            StoreError::LogVersion { seq, found, reads } => write!(
                f,
                "cluster log: entry {seq} is in format version {found}, and this chatd reads \
                 versions up to {reads}: a newer chatd wrote it; run that version on this node"
            ),
            StoreError::Backup { path, why } => write!(f, "{}: {why}", path.display()),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Open { source, .. }
            | StoreError::Write { source, .. }
            | StoreError::Read { source, .. } => Some(&**source),
            StoreError::Corrupt { source, .. } => Some(&**source),
            StoreError::Empty { .. }
            | StoreError::LowSpace { .. }
            | StoreError::Schema { .. }
            | StoreError::ReplyCount { .. }
            | StoreError::Cluster(_)
            | StoreError::LogVersion { .. }
            | StoreError::Backup { .. } => None,
        }
    }
}

impl StoreError {
    /// Whether the error stops the server rather than being tried again: going on would make
    /// memory, or this node's index, differ from what was committed.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::ReplyCount { .. } | StoreError::LogVersion { .. }
        )
    }

    /// What the operator can do about an error that stops the database from opening, as a
    /// sentence to print after the error.
    pub fn advice(&self) -> Option<&'static str> {
        match self {
            StoreError::Empty { .. } => Some(
                "restore the file from a backup, or delete it to start a new, empty database \
                 (manual, section 6)",
            ),
            StoreError::Corrupt { .. } => Some(
                "the file is damaged: restore it from a backup, or move it aside to start a new, \
                 empty database (manual, section 6)",
            ),
            StoreError::Open { source, .. } if is_locked(source) => Some(
                "another chatd process holds it (redb locks the file): only one chatd may use a \
                 database; for a copy of a running server's, use `chatd backup`",
            ),
            StoreError::Schema { .. } => Some(
                "run the chatd version that wrote the file, or restore a backup made for this one",
            ),
            _ => None,
        }
    }
}

/// Whether redb's error says that the file is locked by another handle or process.
fn is_locked(e: &::redb::Error) -> bool {
    match e {
        ::redb::Error::DatabaseAlreadyOpen => true,
        // redb 4 reports another process's lock as an I/O error from flock (EWOULDBLOCK).
        ::redb::Error::Io(io) => io.kind() == std::io::ErrorKind::WouldBlock,
        _ => false,
    }
}

/// Damage found in stored data: which record or index entry, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    detail: String,
}

impl Damage {
    /// Damage described by `detail` (e.g. "message record: truncated").
    pub fn new(detail: impl Into<String>) -> Damage {
        Damage {
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Damage {}

/// A durable store, with a write path and a read path that do not wait for each other.
///
/// The worker hands each batch's writes to [`write`](Store::write), then takes a
/// [`reader`](Store::reader) and answers the batch's reads with it on another thread, while the
/// next batch's writes commit.
pub trait Store: Send {
    /// Applies `ops` in order inside one write transaction and commits it durably (all or
    /// nothing); the replies are in the same order as the ops. The worker passes writes only; a
    /// read op given here is answered inside the transaction and sees exactly the ops before it.
    fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError>;

    /// A read-only view of everything committed so far, and of nothing committed after this
    /// call. It may be used on another thread, while later writes commit.
    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError>;

    /// Whether a write may be tried now, found without touching the data: an error while the disk
    /// is below its reserve. The worker asks before each write and, while idle, now and then; a
    /// store without a disk is always ready.
    fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// After a failed write, gets the store back to where a write can be tried again (redb stops
    /// using a file after an I/O error until it is reopened). The worker calls it before each new
    /// try, and once right after the failure so that reads work meanwhile.
    fn recover(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs a whole batch, reads included, in one call: every op in order in one transaction, so
    /// each read sees exactly the ops before it. The replies are in the same order as the ops.
    ///
    /// For the simulator and the store tests. It is one of the schedules the worker may follow
    /// (the one in which every read ends its batch, so that no later write shares its view), which
    /// keeps a simulated server within what the real one can do.
    fn execute(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        self.write(ops)
    }

    /// For a store shared with other servers: a channel that has a message whenever their writes
    /// wait to be applied ([`catch_up`](Store::catch_up)). `None` for a store of one server.
    fn nudges(&self) -> Option<async_channel::Receiver<()>> {
        None
    }

    /// Applies the writes of other servers that wait (see [`nudges`](Store::nudges)).
    fn catch_up(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The other servers' ops applied since the last call, in the order applied, for the core
    /// to learn of ([`Report::Remote`](worker::Report::Remote)).
    fn take_remote(&mut self) -> Vec<StoreOp> {
        Vec::new()
    }
    /// The size of the database in bytes, for the server's figures; `None` for a store without a
    /// file.
    fn size(&self) -> Option<u64> {
        None
    }
}

/// A read-only view of a store at one moment (see [`Store::reader`]).
pub trait StoreReader: Send {
    /// Answers one read op.
    fn read(&self, op: &ReadOp) -> Result<StoreReply, StoreError>;
}
