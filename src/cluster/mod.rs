//! Several servers as one: a store shared through a NATS JetStream log (`chatd --cluster`).
//!
//! The cluster is another implementation of the store seam ([`Store`]), not a second copy of the
//! rules: every server runs the same core, and every write op its core makes is published to one
//! replicated JetStream stream ([`STREAM`]) before it counts. Every server reads the whole stream
//! in order (an ordered consumer) and applies each entry to its own redb file, the node's index,
//! with the same code the single-server store runs; the entries other servers wrote are also handed
//! to the core ([`Report::Remote`](crate::store::worker::Report::Remote)), which brings its memory up
//! to date and tells its own connections what the changes tell users. So every node's index holds
//! the same tables in the same order, and HISTORY, backlogs and unread counts read the same from
//! any node.
//!
//! Messages reach other nodes' connections by **routing**, not through the log: once the stream
//! has acknowledged a message's entry (its id is then known), the writing node publishes the same
//! payload on core NATS subjects, one per recipient account ([`ROUTE_ACCOUNT`]), the room's
//! ([`ROUTE_ROOM`]) or ALL's ([`ROUTE_ALL`]). A node subscribes to an account's subject while it
//! holds a connection of that account, and to a room's while one of its members is online there, as
//! the core's [`BusOut`] words say; so NATS interest is the directory, and a message goes only to
//! the nodes that need it. What a node does with a routed message is `core::remote`'s.
//!
//! **Presence** is in two JetStream KV buckets: [`NODES_BUCKET`], each node's heartbeat (also
//! published on [`ALIVE_SUBJECT`]), and [`PRESENCE_BUCKET`], an entry per account and node while
//! the account has a connection there. A node reads both before it serves, then follows their
//! changes; the core counts a node's entries only while its heartbeat is fresh, so a crashed
//! node's users go offline when its heartbeat ages out (nats-server 2.9 has no per-key TTL).
//!
//! Where a single server is the only authority, the log decides instead:
//! - **message ids** are the stream sequence of the message's entry: strictly increasing and never
//!   reused cluster-wide. The core proposes an id, the store answers the real one
//!   ([`StoreReply::Appended`]), and the MESSAGE line is encoded once it is known. The OK follows
//!   the stream's acknowledgement and the entry's application to the local index.
//! - **names**: REGISTER publishes to a subject of its own per account key with "expected last
//!   subject sequence 0": of two REGISTERs of one name on two nodes, the stream takes exactly one;
//!   the other is answered [`StoreReply::Taken`] (NAME_TAKEN). The check and the write are one
//!   step, so no crash can leave a name reserved without an account.
//! - **room names** work the same way, on `chatd.log.room.<name>`: a room's creation
//!   ([`StoreOp::CreateRoom`]) expects the subject's last entry to be the one this node knows for
//!   the name (none, or the deletion of the room that last had it: `DeleteRoom` goes on the same
//!   subject, and a deleted name can be created again). Of two nodes creating one name at once the
//!   stream takes one; the other learns the winner's room from the log before its answer,
//!   [`StoreReply::Taken`], reaches its core, which then answers the JOIN as a JOIN of that room.
//!   An op on a room the log does not have (one that lost its name, or that another node deleted
//!   while the op was made) is not written either, and is answered `Taken` too; and since the
//!   deletion may still be on its way, every node skips alike, when applying, an entry on a room
//!   that does not exist at its place in the log (its own node answers it `Taken`).
//!
//! The async-nats client needs tokio: it runs on one thread of its own (`chatd-nats`) with a
//! current-thread runtime, joined to the rest by bounded `async-channel`s (requests in, the log's
//! entries out). Tokio never enters the core, the store worker or the connection tasks.
//!
//! When NATS cannot be reached a write fails like a failing disk: the worker keeps the batch and
//! tries it again, the core refuses new writes with STORAGE_UNAVAILABLE, and connections stay.
//! A batch tried again publishes the same entries with the same `Nats-Msg-Id`s, so the stream's
//! de-duplication makes the retry take effect once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;

use crate::config::{
    CLUSTER_APPLY_BATCH, CLUSTER_BUS_QUEUE, CLUSTER_FEED_QUEUE, CLUSTER_LOG_NUDGE,
    CLUSTER_LOG_WAIT, CLUSTER_LOST_ROOMS_KEPT, CLUSTER_REQUEST_QUEUE, CLUSTER_START_TRIES,
    PRESENCE_ENTRY_AGE, PRESENCE_EXPIRY, PRESENCE_REFRESH, PRESENCE_RENEW, PRESENCE_START_WAIT,
};
use crate::core::{BusIn, BusOut, RouteTo};
use crate::proto::room::RoomKey;
use crate::store::oplog::{decode_op, encode_op, entry_version, readable_version, OPLOG_VERSION};
use crate::store::redb::RedbStore;
use crate::store::{RoomId, Snapshot, Store, StoreError, StoreOp, StoreReader, StoreReply, To};

/// The JetStream stream that holds the log.
pub const STREAM: &str = "CHATD_LOG";
/// The header naming the node that wrote an entry.
const NODE_HEADER: &str = "Chatd-Node";

/// How a node reaches NATS.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://HOST:PORT`), any of which may be used.
    pub urls: Vec<String>,
    /// Replicas of the log stream when this node creates it (1, or 3 on a three-server NATS
    /// cluster); an existing stream keeps its own.
    pub replicas: usize,
}

impl ClusterOptions {
    /// From `--cluster` (URLs, comma-separated) and `--cluster-replicas` (at least 1).
    pub fn new(urls: &str, replicas: usize) -> ClusterOptions {
        ClusterOptions {
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            replicas: replicas.max(1),
        }
    }
}

/// One entry to publish.
struct Outgoing {
    subject: String,
    msg_id: String,
    payload: Vec<u8>,
    /// Only if the subject's last entry is this one (0: the subject has none): the
    /// compare-and-set of REGISTER and of a room's creation.
    expect: Option<u64>,
    /// The subjects a message is routed on once the log has acknowledged it (see [`routes_of`]).
    routes: Vec<String>,
}

/// Why an entry was not taken.
#[derive(Debug)]
enum Refused {
    /// `expect` and the subject's last entry is another: that one, if it could be read.
    Taken(Option<u64>),
    /// NATS could not be reached, or did not acknowledge in time.
    Failed(String),
}

/// The answers to a part of a batch: each entry's op index, and its sequence or refusal.
type Answers = Vec<(usize, Result<u64, Refused>)>;

/// A request to the NATS thread.
struct Publish {
    entries: Vec<Outgoing>,
    reply: Sender<Vec<Result<u64, Refused>>>,
}

/// One entry of the log as read.
struct Entry {
    seq: u64,
    subject: String,
    node: Option<String>,
    msg_id: Option<String>,
    payload: Vec<u8>,
}

/// The node's link to the other nodes outside the log (presence, and the subscriptions to routed
/// messages): what the core says goes out, what the others say and route here comes in.
pub struct Bus {
    /// Presence changes of this node's accounts and rooms (which also drive its subscriptions);
    /// [`CLUSTER_BUS_QUEUE`] at most wait.
    pub out: Sender<BusOut>,
    /// What the other nodes said.
    pub inbound: Receiver<BusIn>,
}

/// The KV bucket of the nodes' heartbeats (key: the node's name), whose entries live
/// [`PRESENCE_EXPIRY`].
pub const NODES_BUCKET: &str = "CHATD_NODES";
/// The subject each node's heartbeat is also published on (core NATS, nothing stored): the
/// heartbeats in [`NODES_BUCKET`] tell a node that starts which nodes are alive, these keep the
/// nodes alive to each other while JetStream elects a new leader for the bucket (a NATS server
/// lost), when writes to the bucket stall for seconds.
pub const ALIVE_SUBJECT: &str = "chatd.alive";
/// The KV bucket of presence entries: `<account key>.<node>` while the account has a connection
/// on that node (see [`PRESENCE_ENTRY_AGE`]).
pub const PRESENCE_BUCKET: &str = "CHATD_PRESENCE";
/// Routed messages for one account: this prefix and the account key.
pub const ROUTE_ACCOUNT: &str = "chatd.to.";
/// Routed messages for one room's members: this prefix and the room number.
pub const ROUTE_ROOM: &str = "chatd.room.";
/// Routed ALL messages.
pub const ROUTE_ALL: &str = "chatd.all";
/// The header giving a routed message's id (its entry's stream sequence).
const SEQ_HEADER: &str = "Chatd-Seq";

/// The subjects a message's op is routed on: one per recipient account, the room's, or ALL's.
/// Every recipient's subject gets it, wherever its sender's node thinks the recipient is: the
/// nodes subscribed there are exactly the ones that need it (a recipient may have connections on
/// several nodes, and the sender's node may not know of a login that has just happened).
fn routes_of(op: &StoreOp) -> Vec<String> {
    match op {
        StoreOp::AppendMessage { msg, .. } => match &msg.to {
            To::User(u) => vec![account_subject(&crate::store::key_of(u))],
            To::Group(g) => {
                let mut keys: Vec<String> = g.iter().map(|n| crate::store::key_of(n)).collect();
                keys.sort();
                keys.dedup();
                keys.iter().map(|k| account_subject(k)).collect()
            }
            To::All => vec![ROUTE_ALL.to_owned()],
            To::Room(_) => Vec::new(),
        },
        StoreOp::AppendRoomMessage { room, .. } => vec![room_route_subject(*room)],
        _ => Vec::new(),
    }
}

/// The subject of an account's routed messages (account keys are letters, digits, `_` and `-`,
/// so a key is one subject token).
fn account_subject(key: &str) -> String {
    format!("{ROUTE_ACCOUNT}{key}")
}

/// The subject of a room's routed messages.
fn room_route_subject(room: RoomId) -> String {
    format!("{ROUTE_ROOM}{room}")
}

/// The request queue to the NATS thread. Dropping it closes the queue, which ends the thread once
/// it has said goodbye (its heartbeat deleted: the other nodes take this node's users offline at
/// once), and waits for that, a bounded time, so that a node that stops says so.
struct NatsLink {
    requests: Sender<Publish>,
    /// Told when the NATS thread has ended.
    stopped: std::sync::mpsc::Receiver<()>,
}

impl Drop for NatsLink {
    fn drop(&mut self) {
        self.requests = async_channel::bounded(1).0;
        let _ = self.stopped.recv_timeout(PRESENCE_REFRESH * 2);
    }
}

/// A store whose writes go through the cluster's log (see the module documentation).
pub struct ClusterStore {
    /// Until the server takes it. First, so that it is dropped before the link to the NATS
    /// thread (whose goodbye waits for the presence words to end).
    bus: Option<Bus>,
    local: RedbStore,
    node: String,
    requests: NatsLink,
    feed: Receiver<Entry>,
    nudges: Receiver<()>,
    /// Asks the log reader to make its consumer again and read on from its last entry.
    reread: Sender<()>,
    /// The last stream sequence applied to the local index.
    applied: u64,
    next_op: u64,
    /// This node's entries applied and not yet answered, by `Nats-Msg-Id`.
    own: HashMap<String, (u64, StoreReply)>,
    /// Other nodes' ops applied and not yet reported to the core.
    remote: Vec<StoreOp>,
    /// The ops and ids of a batch that failed, so that its retry publishes the same ids.
    retry: Option<(Vec<StoreOp>, Vec<String>)>,
    /// Entries read from the feed and not yet applied (a local write failed).
    unapplied: Vec<Entry>,
    /// Room names as the applied entries left them.
    names: RoomNames,
}

/// What a node knows of room names from the entries it applied: enough to publish a room's
/// creation with the right expectation, and its deletion on the right subject.
#[derive(Default)]
struct RoomNames {
    /// By room name subject: the sequence of the last entry on it (0: none), and the room that
    /// has the name now.
    by_name: HashMap<String, (u64, Option<RoomId>)>,
    /// The name subject of every room that exists.
    by_room: HashMap<RoomId, String>,
    /// Rooms whose creation the log refused, the latest [`CLUSTER_LOST_ROOMS_KEPT`]: the ops of
    /// the same batch (and of its retries) on them are not written. Later batches have none: the
    /// core forgets a room when its creation is answered `Taken`, and an op on a room no applied
    /// entry created is refused anyway.
    lost: LostRooms,
}

/// The rooms whose creation the log refused, the most recent first out of a bounded queue.
#[derive(Default)]
struct LostRooms(VecDeque<RoomId>);

impl LostRooms {
    fn contains(&self, room: &RoomId) -> bool {
        self.0.contains(room)
    }

    fn insert(&mut self, room: RoomId) {
        if self.contains(&room) {
            return;
        }
        if self.0.len() == CLUSTER_LOST_ROOMS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(room);
    }
}

impl RoomNames {
    /// Takes in the subject of an entry read (applied or skipped): a room name's subject's last
    /// entry is what the name's next creation expects.
    fn on_subject(&mut self, subject: &str, seq: u64) {
        if subject.starts_with(ROOM_SUBJECTS) {
            let name = self.by_name.entry(subject.to_owned()).or_default();
            name.0 = name.0.max(seq);
        }
    }

    /// Whether an entry's op is applied, at its place in the log: not if it concerns a room that
    /// does not exist there (an op made on a node that had not yet learned of the room's deletion,
    /// or of its loss of the name). Every node decides alike, from the entries before it;
    /// `changed` holds the rooms made or deleted by the entries of the batch not yet taken in.
    fn takes(&self, op: &StoreOp, version: u8, changed: &mut HashMap<RoomId, bool>) -> bool {
        if let StoreOp::Told { op, .. } = op {
            // The event goes with its change.
            return self.takes(op, version, changed);
        }
        let exists = |r: &RoomId, changed: &HashMap<RoomId, bool>| {
            changed
                .get(r)
                .copied()
                .unwrap_or_else(|| self.by_room.contains_key(r))
        };
        match op {
            StoreOp::CreateRoom { id, .. } => {
                changed.insert(*id, true);
                true
            }
            // Format version 1 created rooms this way.
            StoreOp::PutRoom { id, .. } if !exists(id, changed) => {
                let legacy = version == 1;
                if legacy {
                    changed.insert(*id, true);
                }
                legacy
            }
            StoreOp::DeleteRoom { id } => {
                let there = exists(id, changed);
                changed.insert(*id, false);
                there
            }
            // Stores nothing; a node's core tells a room it does not know nobody.
            StoreOp::Notice(_) => true,
            op => room_of(op).is_none_or(|r| exists(&r, changed)),
        }
    }

    /// Takes in an applied op.
    fn applied(&mut self, op: &StoreOp) {
        match op {
            StoreOp::Told { op, .. } => self.applied(op),
            StoreOp::CreateRoom { id, room, .. } => {
                let on = room_subject(&room.name);
                self.by_name.entry(on.clone()).or_default().1 = Some(*id);
                self.by_room.insert(*id, on);
            }
            StoreOp::PutRoom { id, room } if !self.by_room.contains_key(id) => {
                // A room created by a node of format version 1, on no subject of its own.
                let on = room_subject(&room.name);
                self.by_name.entry(on.clone()).or_default().1 = Some(*id);
                self.by_room.insert(*id, on);
            }
            StoreOp::DeleteRoom { id } => {
                if let Some(on) = self.by_room.remove(id) {
                    let name = self.by_name.entry(on).or_default();
                    if name.1 == Some(*id) {
                        name.1 = None;
                    }
                }
            }
            _ => {}
        }
    }
}

/// The prefix of the room names' subjects.
const ROOM_SUBJECTS: &str = "chatd.log.room.";

/// The subject of a room name's creations and deletions.
fn room_subject(name: &str) -> String {
    let key = RoomKey::of(name);
    // A room name is `#` and letters, digits, `_` and `-`: a valid subject token without it.
    format!("{ROOM_SUBJECTS}{}", key.as_str().trim_start_matches('#'))
}

/// The room an op concerns, if any (a room's creation is not counted: it is the one that decides).
fn room_of(op: &StoreOp) -> Option<RoomId> {
    match op {
        StoreOp::CreateRoom { .. } => None,
        StoreOp::Told { op, .. } => room_of(op),
        op => op.room(),
    }
}

impl ClusterStore {
    /// Connects to NATS, makes sure the log stream exists, builds the node's index at `db` (a
    /// file rebuilt from the log at every start: what it held before is replaced) by applying the
    /// whole log, and reads the [`Snapshot`] the core starts from.
    pub fn open(opts: &ClusterOptions, db: &Path) -> Result<(ClusterStore, Snapshot), StoreError> {
        let index = index_path(db);
        match std::fs::remove_file(&index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Cluster(format!(
                    "cannot replace the node's index {}: {e}",
                    index.display()
                )))
            }
        }
        let node = node_id();
        let (requests, feed, nudges, last, bus, reread, stopped) =
            spawn_nats(opts.clone(), node.clone())?;
        let requests = NatsLink { requests, stopped };
        let (local, _) = RedbStore::open(&index)?;
        let mut store = ClusterStore {
            local,
            node,
            requests,
            feed,
            nudges,
            reread,
            applied: 0,
            next_op: 0,
            own: HashMap::new(),
            remote: Vec::new(),
            retry: None,
            unapplied: Vec::new(),
            bus: Some(bus),
            names: RoomNames::default(),
        };
        store.apply_until(last)?;
        // Everything before start is the snapshot's, not news for the core: the index is opened
        // again to read it.
        let ClusterStore {
            local,
            node,
            requests,
            feed,
            nudges,
            reread,
            applied,
            next_op,
            bus,
            names,
            ..
        } = store;
        drop(local);
        let (local, mut snapshot) = RedbStore::open(&index)?;
        // Room numbers come from each node's own counter: each run of a node counts in a range of
        // its own, so that two nodes creating rooms at once never give two rooms one number.
        snapshot.next_room_id = room_range(&node);
        let store = ClusterStore {
            local,
            node,
            requests,
            feed,
            nudges,
            reread,
            applied,
            next_op,
            own: HashMap::new(),
            remote: Vec::new(),
            retry: None,
            unapplied: Vec::new(),
            bus,
            names,
        };
        log::info!(
            "cluster node {}: index {} built from the log up to entry {last}",
            store.node,
            index.display()
        );
        Ok((store, snapshot))
    }

    /// The presence link, for the server to join to the core (once).
    pub fn take_bus(&mut self) -> Option<Bus> {
        self.bus.take()
    }

    /// Applies entries from the feed until the entry `seq` is applied.
    fn apply_until(&mut self, seq: u64) -> Result<(), StoreError> {
        while self.applied < seq {
            if self.unapplied.is_empty() {
                // An acknowledged entry is in the stream: if it is slow to come, the consumer may
                // have been lost with a NATS server (a stream leader that moved), and the reader
                // makes it again at once rather than when the write gives up. Making it again is
                // harmless when it was only slow.
                let feed = &self.feed;
                let reread = &self.reread;
                let next = future::block_on(future::or(async { feed.recv().await.ok() }, async {
                    smol::Timer::after(CLUSTER_LOG_NUDGE).await;
                    let _ = reread.try_send(());
                    smol::Timer::after(CLUSTER_LOG_WAIT.saturating_sub(CLUSTER_LOG_NUDGE)).await;
                    None
                }));
                match next {
                    Some(e) => self.unapplied.push(e),
                    None => {
                        // The consumer may have been lost with a NATS server: the reader makes
                        // it again, and the retry of this write finds the entries.
                        let _ = self.reread.try_send(());
                        return Err(StoreError::Cluster(format!(
                            "the log did not deliver entry {seq} within {:?}",
                            CLUSTER_LOG_WAIT
                        )));
                    }
                }
            }
            self.take_ready();
            self.apply_unapplied()?;
        }
        Ok(())
    }

    /// Moves whatever the feed holds now into `unapplied`, up to a batch.
    fn take_ready(&mut self) {
        while self.unapplied.len() < CLUSTER_APPLY_BATCH {
            match self.feed.try_recv() {
                Ok(e) => self.unapplied.push(e),
                Err(_) => break,
            }
        }
    }

    /// Applies `unapplied` to the local index in one write transaction.
    fn apply_unapplied(&mut self) -> Result<(), StoreError> {
        if self.unapplied.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.unapplied);
        let mut ops = Vec::with_capacity(entries.len());
        // Per entry kept: `None` if its op is in `ops`, or the op skipped.
        let mut fates = Vec::with_capacity(entries.len());
        // Rooms made or deleted by the entries before, in this batch.
        let mut changed = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.seq <= self.applied {
                // Delivered again after the consumer was recreated.
                continue;
            }
            let version = entry_version(&e.payload).unwrap_or(0);
            if !readable_version(version) && !e.payload.is_empty() {
                self.unapplied = entries;
                return Err(StoreError::LogVersion {
                    seq: self.unapplied[i].seq,
                    found: version,
                    reads: OPLOG_VERSION,
                });
            }
            match decode_op(&e.payload) {
                Ok(op) => {
                    let op = with_id(op, e.seq);
                    if self.names.takes(&op, version, &mut changed) {
                        ops.push(op);
                        fates.push((i, None));
                    } else {
                        fates.push((i, Some(op)));
                    }
                }
                // Every node skips it alike, so the indexes stay equal.
                Err(d) => log::error!("log entry {} cannot be decoded, skipped: {d}", e.seq),
            }
        }
        let count = ops.len();
        let replies = if ops.is_empty() {
            Vec::new()
        } else {
            match self.local.write(&ops) {
                Ok(r) => r,
                Err(err) => {
                    self.unapplied = entries;
                    return Err(err);
                }
            }
        };
        if replies.len() != count {
            return Err(StoreError::ReplyCount {
                ops: count,
                replies: replies.len(),
            });
        }
        let mut applied = ops.into_iter().zip(replies);
        for (i, skipped) in fates {
            let e = &entries[i];
            self.names.on_subject(&e.subject, e.seq);
            let (op, reply) = match skipped {
                None => match applied.next() {
                    Some(x) => x,
                    None => break,
                },
                Some(op) => {
                    // Every node skips it alike: it concerns a room that no longer exists (or
                    // never did) at its place in the log.
                    log::debug!(
                        "log entry {} is on a room that is gone, skipped: {op:?}",
                        e.seq
                    );
                    if let (Some(n), Some(id)) = (&e.node, &e.msg_id) {
                        if *n == self.node {
                            self.own.insert(id.clone(), (e.seq, StoreReply::Taken));
                        }
                    }
                    continue;
                }
            };
            self.names.applied(&op);
            match (&e.node, &e.msg_id) {
                (Some(n), Some(id)) if *n == self.node => {
                    self.own.insert(id.clone(), (e.seq, reply));
                }
                _ => self.remote.push(op),
            }
        }
        if let Some(last) = entries.last() {
            self.applied = self.applied.max(last.seq);
        }
        Ok(())
    }

    fn fresh_id(&mut self) -> String {
        self.next_op += 1;
        format!("{}.{}", self.node, self.next_op)
    }

    /// Publishes the batch's write ops under `ids`, applies the log up to them and answers each
    /// op. The entries go out together, but one whose subject is compared (a creation) ends a
    /// part: the rest waits for its answer, since a room that lost its creation must not get
    /// the ops that follow it.
    fn write_with(
        &mut self,
        ops: &[StoreOp],
        ids: &[String],
    ) -> Result<Vec<StoreReply>, StoreError> {
        let mut answered: Vec<Option<StoreReply>> = vec![None; ops.len()];
        let mut logged = vec![false; ops.len()];
        let mut part = Vec::new();
        let mut last = 0;
        // Rooms this batch creates, not in the index until the batch is applied.
        let mut made = HashSet::new();
        for (i, (op, id)) in ops.iter().zip(ids).enumerate() {
            // An op on a room the log does not have (its creation lost the name, or another node
            // deleted it meanwhile) is not written: it would leave rows of no room in every index.
            let gone = |r: RoomId| {
                if self.names.by_room.contains_key(&r) {
                    // Applied, so never lost.
                    return false;
                }
                !made.contains(&r) || self.names.lost.contains(&r)
            };
            if room_of(op).is_some_and(gone) {
                answered[i] = Some(StoreReply::Taken);
                continue;
            }
            if let StoreOp::CreateRoom {
                id: room,
                room: rec,
                ..
            } = op
            {
                let on = room_subject(&rec.name);
                match self.names.by_name.get(&on).and_then(|n| n.1) {
                    // Refused in an earlier try of this batch.
                    _ if self.names.lost.contains(room) => {
                        answered[i] = Some(StoreReply::Taken);
                        continue;
                    }
                    // Taken in an earlier try of this batch, and applied: answered from it.
                    Some(has) if has == *room => {
                        logged[i] = true;
                        continue;
                    }
                    // The index has a room of that name that the core has not learned of yet:
                    // refused without asking the log.
                    Some(_) => {
                        self.names.lost.insert(*room);
                        answered[i] = Some(StoreReply::Taken);
                        continue;
                    }
                    None => {}
                }
                made.insert(*room);
            }
            let Some(payload) = encode_op(op) else {
                continue;
            };
            logged[i] = true;
            let (subject, expect) = self.subject_of(op);
            part.push((
                i,
                Outgoing {
                    subject,
                    msg_id: id.clone(),
                    payload,
                    expect,
                    routes: routes_of(op),
                },
            ));
            if expect.is_some() {
                let part = std::mem::take(&mut part);
                self.settle(part, ops, &mut answered, &mut last)?;
            }
        }
        self.settle(part, ops, &mut answered, &mut last)?;
        self.apply_until(last)?;
        let mut replies = Vec::with_capacity(ops.len());
        for (i, (op, id)) in ops.iter().zip(ids).enumerate() {
            if let Some(reply) = answered[i].take() {
                replies.push(reply);
                continue;
            }
            if !logged[i] {
                // A read ordered with the writes: answered from the index, which now holds every
                // write of the batch.
                replies.extend(self.local.write(std::slice::from_ref(op))?);
                continue;
            }
            match self.own.remove(id) {
                Some((seq, reply)) => replies.push(match op {
                    StoreOp::AppendMessage { .. } | StoreOp::AppendRoomMessage { .. } => {
                        StoreReply::Appended(seq)
                    }
                    _ => reply,
                }),
                None => {
                    return Err(StoreError::Cluster(format!(
                        "entry {id} was acknowledged but not found in the log"
                    )))
                }
            }
        }
        Ok(replies)
    }
}

/// The op as applied at stream sequence `seq`: a message takes the sequence as its id.
fn with_id(op: StoreOp, seq: u64) -> StoreOp {
    match op {
        StoreOp::AppendMessage {
            mut msg,
            pending_for,
        } => {
            msg.id = seq;
            StoreOp::AppendMessage { msg, pending_for }
        }
        StoreOp::AppendRoomMessage {
            mut msg,
            room,
            seq: pos,
        } => {
            msg.id = seq;
            StoreOp::AppendRoomMessage {
                msg,
                room,
                seq: pos,
            }
        }
        other => other,
    }
}

/// The first room number of a run of a node: its range is `slot << 32` upward, the slot taken
/// from the node's random name (1 to 2^24 - 1), so ranges of different runs meet by chance only
/// (one in 16 million for two runs).
fn room_range(node: &str) -> u64 {
    let bits = u64::from_str_radix(node, 16).unwrap_or(1);
    let slot = (bits % ((1 << 24) - 1)) + 1;
    (slot << 32) + 1
}

/// Where a node keeps its index, beside the `--db` path.
pub fn index_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_owned()).unwrap_or_default();
    name.push(".cluster-index");
    db.with_file_name(name)
}

/// A random name for this run of the node: entries it wrote in an earlier run are other nodes'
/// to it, which is what they are to its fresh memory.
fn node_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    format!("{:016x}", u64::from_le_bytes(b))
}

impl ClusterStore {
    /// The subject an op's entry goes to, and the subject's last entry it expects, if any.
    fn subject_of(&self, op: &StoreOp) -> (String, Option<u64>) {
        match op {
            StoreOp::Told { op, .. } => self.subject_of(op),
            StoreOp::CreateAccount(rec) => (
                format!("chatd.log.account.{}", crate::store::key_of(&rec.name)),
                Some(0),
            ),
            StoreOp::CreateRoom { room, .. } => {
                let on = room_subject(&room.name);
                let last = self.names.by_name.get(&on).map_or(0, |n| n.0);
                (on, Some(last))
            }
            StoreOp::DeleteRoom { id } => match self.names.by_room.get(id) {
                Some(on) => (on.clone(), None),
                None => ("chatd.log.state".to_owned(), None),
            },
            StoreOp::AppendMessage { .. } | StoreOp::AppendRoomMessage { .. } => {
                ("chatd.log.msg".to_owned(), None)
            }
            _ => ("chatd.log.state".to_owned(), None),
        }
    }

    /// Publishes a part of a batch and takes in the answers: the last sequence taken into
    /// `last`, a refusal into `answered`.
    fn settle(
        &mut self,
        part: Vec<(usize, Outgoing)>,
        ops: &[StoreOp],
        answered: &mut [Option<StoreReply>],
        last: &mut u64,
    ) -> Result<(), StoreError> {
        for (at, r) in self.publish(part)? {
            match r {
                Ok(seq) => *last = (*last).max(seq),
                Err(Refused::Taken(conflict)) => {
                    answered[at] = Some(StoreReply::Taken);
                    if let StoreOp::CreateRoom { id, room, .. } = &ops[at] {
                        self.names.lost.insert(*id);
                        if let Some(seq) = conflict {
                            self.names.on_subject(&room_subject(&room.name), seq);
                        }
                    }
                    // The entry that won is applied before the answer, so that the core learns
                    // of it first, and so that this node's next creation of the name expects it.
                    if let Some(seq) = conflict {
                        self.apply_until(seq)?;
                    }
                }
                Err(Refused::Failed(why)) => return Err(StoreError::Cluster(why)),
            }
        }
        Ok(())
    }

    /// Publishes `entries` (with the index of their op) and waits for their acknowledgements.
    fn publish(&mut self, entries: Vec<(usize, Outgoing)>) -> Result<Answers, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (at, entries): (Vec<usize>, Vec<Outgoing>) = entries.into_iter().unzip();
        let (reply, answer) = async_channel::bounded(1);
        let sent = self
            .requests
            .requests
            .send_blocking(Publish { entries, reply });
        match sent.ok().and_then(|()| answer.recv_blocking().ok()) {
            Some(r) => Ok(at.into_iter().zip(r).collect()),
            None => Err(StoreError::Cluster("the NATS thread has stopped".into())),
        }
    }
}

impl Store for ClusterStore {
    fn write(&mut self, ops: &[StoreOp]) -> Result<Vec<StoreReply>, StoreError> {
        // The applied entries waiting in the feed go first: what this batch decided on was decided
        // after them.
        self.take_ready();
        self.apply_unapplied()?;
        let ids = match self.retry.take() {
            Some((same, ids)) if same == ops => ids,
            _ => ops.iter().map(|_| self.fresh_id()).collect(),
        };
        match self.write_with(ops, &ids) {
            Ok(replies) => Ok(replies),
            Err(e) => {
                self.retry = Some((ops.to_vec(), ids));
                Err(e)
            }
        }
    }

    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
        self.local.reader()
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        self.local.recover()
    }

    fn nudges(&self) -> Option<Receiver<()>> {
        Some(self.nudges.clone())
    }

    fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            self.take_ready();
            if self.unapplied.is_empty() {
                return Ok(());
            }
            self.apply_unapplied()?;
        }
    }

    fn take_remote(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.remote)
    }
}

/// What the NATS thread hands back at start.
type Started = (
    Sender<Publish>,
    Receiver<Entry>,
    Receiver<()>,
    u64,
    Bus,
    Sender<()>,
    std::sync::mpsc::Receiver<()>,
);

/// Starts the `chatd-nats` thread: connects, makes sure the stream exists, and starts reading the
/// log from its first entry. Returns the request queue, the feed of entries, the nudges (one
/// waiting at most: "the feed has entries") and the stream's last sequence at start.
fn spawn_nats(opts: ClusterOptions, node: String) -> Result<Started, StoreError> {
    let (req_tx, req_rx) = async_channel::bounded::<Publish>(CLUSTER_REQUEST_QUEUE);
    let (feed_tx, feed_rx) = async_channel::bounded::<Entry>(CLUSTER_FEED_QUEUE);
    let (nudge_tx, nudge_rx) = async_channel::bounded::<()>(1);
    // "Read the log again": sent on a reconnection, and by the store when an entry it waits for
    // does not come (a consumer lost with a NATS server that went away).
    let (reread_tx, reread_rx) = async_channel::bounded::<()>(1);
    let reread = (reread_tx.clone(), reread_rx);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u64, String>>();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<()>();
    let (out_tx, out_rx) = async_channel::bounded::<BusOut>(CLUSTER_BUS_QUEUE);
    let (in_tx, in_rx) = async_channel::bounded::<BusIn>(CLUSTER_BUS_QUEUE);
    let presence = (out_rx, in_tx, reread);
    std::thread::Builder::new()
        .name("chatd-nats".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the NATS runtime: {e}")));
                    return;
                }
            };
            rt.block_on(nats::run(
                opts, node, req_rx, feed_tx, nudge_tx, ready_tx, presence,
            ));
            let _ = stopped_tx.send(());
        })
        .map_err(|e| StoreError::Cluster(format!("cannot start the NATS thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(last)) => Ok((
            req_tx,
            feed_rx,
            nudge_rx,
            last,
            Bus {
                out: out_tx,
                inbound: in_rx,
            },
            reread_tx,
            stopped_rx,
        )),
        Ok(Err(e)) => Err(StoreError::Cluster(e)),
        Err(_) => Err(StoreError::Cluster(
            "the NATS thread stopped at start".into(),
        )),
    }
}

/// The tokio side. Nothing here knows the core or the store's tables.
mod nats {
    use super::*;
    use async_nats::jetstream::{self, consumer, context::PublishErrorKind, kv, stream};
    use futures_util::StreamExt;

    /// The presence bus (to and from the node) and the "read the log again" channel.
    pub(super) type Wiring = (Receiver<BusOut>, Sender<BusIn>, (Sender<()>, Receiver<()>));

    pub(super) async fn run(
        opts: ClusterOptions,
        node: String,
        requests: Receiver<Publish>,
        feed: Sender<Entry>,
        nudge: Sender<()>,
        ready: std::sync::mpsc::Sender<Result<u64, String>>,
        (bus_out, bus_in, (reconnected_tx, reconnected)): Wiring,
    ) {
        // A reconnection is told to the log reader: the NATS server may have restarted without
        // the consumer it was reading from, and reading again at once beats waiting for the
        // consumer's heartbeat to be missed. The store asks the same when an entry it waits for
        // does not come.
        let mut addrs = Vec::with_capacity(opts.urls.len());
        for u in &opts.urls {
            match u.parse::<async_nats::ServerAddr>() {
                Ok(a) => addrs.push(a),
                Err(e) => {
                    let _ = ready.send(Err(format!("the NATS URL {u} is not valid: {e}")));
                    return;
                }
            }
        }
        let connected = async_nats::ConnectOptions::new()
            .name(format!("chatd {node}"))
            .event_callback(move |event| {
                let tx = reconnected_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            log::info!("connected to NATS");
                            let _ = tx.try_send(());
                        }
                        async_nats::Event::Disconnected => log::warn!("disconnected from NATS"),
                        other => log::debug!("NATS: {other}"),
                    }
                }
            })
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 250).min(2000))
            })
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(addrs)
            .await;
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(format!(
                    "cannot connect to NATS at {}: {e}",
                    opts.urls.join(",")
                )));
                return;
            }
        };
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["chatd.log.>".to_owned()],
            storage: stream::StorageType::File,
            num_replicas: opts.replicas.max(1),
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        };
        // A NATS cluster that has just started elects its JetStream leaders first: a bounded
        // wait for it.
        let mut tries = 0;
        let mut log = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(s) => break s,
                Err(e) if tries < CLUSTER_START_TRIES => {
                    tries += 1;
                    log::info!("the stream {STREAM} cannot be opened yet ({e}); trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot open the stream {STREAM}: {e}")));
                    return;
                }
            }
        };
        let last = match log.info().await {
            Ok(i) => i.state.last_sequence,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot read the stream {STREAM}: {e}")));
                return;
            }
        };
        tokio::spawn(read_log(log, feed, nudge, reconnected));
        let replicas = opts.replicas.max(1);
        let beats = match bucket(&js, NODES_BUCKET, PRESENCE_EXPIRY, replicas).await {
            Ok(b) => b,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let entries = match bucket(&js, PRESENCE_BUCKET, PRESENCE_ENTRY_AGE, replicas).await {
            Ok(b) => b,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        // The presence the buckets hold now is read before the node serves: a user who logs in
        // at once sees their friends as they are.
        let (read_tx, read_rx) = tokio::sync::mpsc::channel::<()>(2);
        tokio::spawn(watch_bucket(
            beats.clone(),
            node.clone(),
            bus_in.clone(),
            read_tx.clone(),
            "heartbeats",
            beat_word,
        ));
        tokio::spawn(watch_bucket(
            entries.clone(),
            node.clone(),
            bus_in.clone(),
            read_tx,
            "presence entries",
            presence_word,
        ));
        let mut read_rx = read_rx;
        let _ = tokio::time::timeout(PRESENCE_START_WAIT, async {
            for _ in 0..2 {
                read_rx.recv().await;
            }
        })
        .await;
        let presence = tokio::spawn(presence(
            client.clone(),
            node.clone(),
            bus_out,
            bus_in,
            (beats, entries),
        ));
        let _ = ready.send(Ok(last));
        while let Ok(req) = requests.recv().await {
            let _ = req
                .reply
                .send(publish(&js, &client, &node, req.entries).await)
                .await;
        }
        // The store is gone, so the core has ended: the presence task says goodbye (bounded).
        let _ = tokio::time::timeout(PRESENCE_REFRESH * 2, presence).await;
    }

    /// The node's subscriptions to routed messages: one per account with a connection here and
    /// per room with a member online here (as the core's [`BusOut`] says), and ALL's. Each is a
    /// task forwarding what comes to the core; ending the task drops the subscription, which
    /// unsubscribes. At most one per account and one per room, so bounded by what the core holds.
    struct Follows {
        client: async_nats::Client,
        node: String,
        inbound: Sender<BusIn>,
        tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    }

    impl Follows {
        fn set(&mut self, subject: String, to: RouteTo, on: bool) {
            if !on {
                if let Some(task) = self.tasks.remove(&subject) {
                    task.abort();
                }
                return;
            }
            if self.tasks.contains_key(&subject) {
                return;
            }
            let task = tokio::spawn(follow(
                self.client.clone(),
                self.node.clone(),
                subject.clone(),
                to,
                self.inbound.clone(),
            ));
            self.tasks.insert(subject, task);
        }
    }

    /// Receives the messages routed on `subject` and hands them to the core, but this node's own
    /// (its core delivered them already).
    async fn follow(
        client: async_nats::Client,
        node: String,
        subject: String,
        to: RouteTo,
        inbound: Sender<BusIn>,
    ) {
        let mut sub = match client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot subscribe to {subject}: {e}");
                return;
            }
        };
        while let Some(m) = sub.next().await {
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            if header(NODE_HEADER).as_deref() == Some(node.as_str()) {
                continue;
            }
            let Some(seq) = header(SEQ_HEADER).and_then(|s| s.parse::<u64>().ok()) else {
                log::debug!("a routed message on {subject} without its id ignored");
                continue;
            };
            let op = match decode_op(&m.payload) {
                Ok(op) => with_id(op, seq),
                Err(d) => {
                    log::warn!("routed message {seq} cannot be decoded, ignored: {d}");
                    continue;
                }
            };
            let to = to.clone();
            if inbound.send(BusIn::Routed { to, op }).await.is_err() {
                return;
            }
        }
    }

    /// Opens a KV bucket, making it if it is not there (the first node to start makes it). The
    /// bucket's stream is made here with the settings of a KV bucket (`KV_<name>`, subjects
    /// `$KV.<name>.>`, the last value per key kept, roll-ups allowed, direct gets), because
    /// async-nats 0.51's `create_key_value` first reads the account's JetStream limits in a form
    /// nats-server 2.9 does not answer.
    async fn bucket(
        js: &jetstream::Context,
        name: &str,
        max_age: Duration,
        replicas: usize,
    ) -> Result<kv::Store, String> {
        let config = stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            // No longer than the entries live (the server refuses it otherwise).
            duplicate_window: max_age.min(Duration::from_secs(120)),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| format!("cannot open the bucket {name}: {e}"))?;
        js.get_key_value(name)
            .await
            .map_err(|e| format!("cannot open the bucket {name}: {e}"))
    }

    /// Milliseconds since the epoch, by this machine's clock.
    fn now_ms() -> i128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i128)
    }

    /// Whether the bucket holds nothing yet (then there is no history to wait for).
    async fn is_empty(kv: &kv::Store) -> bool {
        match kv.status().await {
            Ok(st) => st.values() == 0,
            Err(_) => true,
        }
    }

    /// A heartbeat of another node, as news for the core: its age (the clocks of the machines
    /// are taken to agree within a second or so), or that the node is gone (a node that stops
    /// deletes its heartbeat, see `presence`).
    fn beat_word(node: &str, e: kv::Entry) -> Option<BusIn> {
        if e.key == node {
            return None;
        }
        if e.operation != kv::Operation::Put {
            return Some(BusIn::Gone { node: e.key });
        }
        let created = e.created.unix_timestamp_nanos() / 1_000_000;
        let age_ms = i64::try_from(now_ms() - created).unwrap_or(i64::MAX);
        Some(BusIn::Alive {
            node: e.key,
            age_ms,
        })
    }

    /// A presence entry (`<account key>.<node>`) of another node, as news for the core: a value
    /// is "online there", a delete "offline there".
    fn presence_word(node: &str, e: kv::Entry) -> Option<BusIn> {
        let (key, there) = e.key.rsplit_once('.')?;
        if there == node {
            return None;
        }
        Some(BusIn::Presence {
            node: there.to_owned(),
            key: key.to_owned(),
            online: e.operation == kv::Operation::Put,
        })
    }

    /// Reads a presence bucket, the entries it holds first, and tells the core what `word` makes
    /// of each change (`beat_word`, `presence_word`). `read` is told once the bucket's history
    /// is read. Starts again after an error.
    async fn watch_bucket(
        kv: kv::Store,
        node: String,
        inbound: Sender<BusIn>,
        read: tokio::sync::mpsc::Sender<()>,
        what: &'static str,
        word: fn(&str, kv::Entry) -> Option<BusIn>,
    ) {
        let mut read = Some(read);
        loop {
            if is_empty(&kv).await {
                if let Some(r) = read.take() {
                    let _ = r.send(()).await;
                }
            }
            match kv.watch_with_history(">").await {
                Ok(mut w) => {
                    while let Some(e) = w.next().await {
                        let Ok(e) = e else { break };
                        // Read: the history is all queued for the core, or the queue is full
                        // (the core reads it once the node serves; the rest follows).
                        if e.delta == 0 || inbound.is_full() {
                            if let Some(r) = read.take() {
                                let _ = r.send(()).await;
                            }
                        }
                        let Some(news) = word(&node, e) else {
                            continue;
                        };
                        if inbound.send(news).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => log::warn!("cannot read the {what} ({e}); trying again"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One of this node's presence entries, as it should be and as it was last written.
    struct Local {
        online: bool,
        /// When the bucket last took it as it is now (`None`: not yet).
        written: Option<tokio::time::Instant>,
        /// A write of it is in flight.
        writing: bool,
    }

    /// Presence and routing, this node's side: the subscriptions changed at once as the core's
    /// words say; the presence entries written (an account's first connection here) and deleted
    /// (its last one gone), each in a task of its own so that a slow or unreachable NATS never
    /// holds up the words behind; the heartbeat every [`PRESENCE_REFRESH`], when the entries
    /// that could not be written are tried again and those older than [`PRESENCE_RENEW`] written
    /// again.
    async fn presence(
        client: async_nats::Client,
        node: String,
        out: Receiver<BusOut>,
        inbound: Sender<BusIn>,
        (beats, entries): (kv::Store, kv::Store),
    ) {
        let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
        let mut alive = match client.subscribe(ALIVE_SUBJECT).await {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot subscribe to {ALIVE_SUBJECT}: {e}");
                None
            }
        };
        let mut follows = Follows {
            client: client.clone(),
            node: node.clone(),
            inbound: inbound.clone(),
            tasks: HashMap::new(),
        };
        follows.set(ROUTE_ALL.to_owned(), RouteTo::All, true);
        // One entry per account online here (or just gone offline, until its delete is taken):
        // bounded by the accounts online here, and so are the writes in flight and their answers.
        let mut local: HashMap<String, Local> = HashMap::new();
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<(String, bool, bool)>();
        let write = |key: &str, online: bool, local: &mut HashMap<String, Local>| {
            let Some(l) = local.get_mut(key) else { return };
            if l.writing {
                return;
            }
            l.writing = true;
            let (kv, name, key) = (entries.clone(), format!("{key}.{node}"), key.to_owned());
            let done = done_tx.clone();
            tokio::spawn(async move {
                let ok = if online {
                    kv.put(&name, bytes::Bytes::new()).await.is_ok()
                } else {
                    kv.delete(&name).await.is_ok()
                };
                let _ = done.send((key, online, ok));
            });
        };
        loop {
            tokio::select! {
                said = out.recv() => {
                    let (key, online) = match said {
                        Err(_) => {
                            // The node is stopping (its core has ended, after taking its users
                            // offline): the heartbeat goes, so the others need not wait for it to
                            // age out; bounded, as the process is about to end.
                            let bye = async {
                                let _ = beats.delete(&node).await;
                            };
                            let _ = tokio::time::timeout(PRESENCE_REFRESH, bye).await;
                            return;
                        }
                        Ok(BusOut::Room { id, watch }) => {
                            follows.set(room_route_subject(id), RouteTo::Room(id), watch);
                            continue;
                        }
                        Ok(BusOut::Presence { key, online }) => (key, online),
                    };
                    follows.set(account_subject(&key), RouteTo::Account(key.clone()), online);
                    let l = local.entry(key.clone()).or_insert(Local {
                        online,
                        written: None,
                        writing: false,
                    });
                    l.online = online;
                    l.written = None;
                    write(&key, online, &mut local);
                }
                Some((key, online, ok)) = done.recv() => {
                    let Some(l) = local.get_mut(&key) else { continue };
                    l.writing = false;
                    if l.online != online {
                        // Changed while it was being written: write it as it is now.
                        let now = l.online;
                        write(&key, now, &mut local);
                    } else if ok && !online {
                        local.remove(&key);
                    } else if ok {
                        l.written = Some(tokio::time::Instant::now());
                    }
                    // Not taken: tried again at the next heartbeat.
                }
                heard = async { alive.as_mut()?.next().await }, if alive.is_some() => {
                    let Some(m) = heard else {
                        alive = None;
                        continue;
                    };
                    let Ok(from) = std::str::from_utf8(&m.payload) else { continue };
                    if from == node {
                        continue;
                    }
                    let news = BusIn::Alive { node: from.to_owned(), age_ms: 0 };
                    if inbound.send(news).await.is_err() {
                        return;
                    }
                }
                _ = refresh.tick() => {
                    let (beats, client) = (beats.clone(), client.clone());
                    let me = node.clone();
                    tokio::spawn(async move {
                        let said = bytes::Bytes::from(me.clone().into_bytes());
                        let _ = client.publish(ALIVE_SUBJECT, said).await;
                        if let Err(e) = beats.put(&me, bytes::Bytes::new()).await {
                            log::debug!("cannot write the heartbeat: {e}");
                        }
                    });
                    let now = tokio::time::Instant::now();
                    let due: Vec<(String, bool)> = local
                        .iter()
                        .filter(|(_, l)| {
                            !l.writing
                                && l.written.is_none_or(|w| l.online && now - w >= PRESENCE_RENEW)
                        })
                        .map(|(k, l)| (k.clone(), l.online))
                        .collect();
                    for (key, online) in due {
                        write(&key, online, &mut local);
                    }
                }
            }
        }
    }

    /// Publishes entries in order and waits for every acknowledgement; then routes each
    /// acknowledged message on its subjects (nothing is delivered before it is in the log).
    async fn publish(
        js: &jetstream::Context,
        client: &async_nats::Client,
        node: &str,
        entries: Vec<Outgoing>,
    ) -> Vec<Result<u64, Refused>> {
        let mut pending = Vec::with_capacity(entries.len());
        let mut routed = Vec::with_capacity(entries.len());
        for e in entries {
            let copy = (!e.routes.is_empty()).then(|| (e.routes, e.payload.clone()));
            routed.push(copy);
            let mut msg = jetstream::message::PublishMessage::build()
                .payload(e.payload.into())
                .message_id(&e.msg_id)
                .header(NODE_HEADER, node);
            if let Some(seq) = e.expect {
                msg = msg.expected_last_subject_sequence(seq);
            }
            pending.push((e.subject.clone(), js.send_publish(e.subject, msg).await));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (subject, p) in pending {
            out.push(match p {
                Err(e) => Err(Refused::Failed(format!("publishing to the log: {e}"))),
                Ok(ack) => match ack.await {
                    Ok(a) => Ok(a.sequence),
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                        Err(Refused::Taken(last_on(js, &subject).await))
                    }
                    Err(e) => Err(Refused::Failed(format!("the log did not acknowledge: {e}"))),
                },
            });
        }
        for (result, copy) in out.iter().zip(routed) {
            let (Ok(seq), Some((subjects, payload))) = (result, copy) else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(NODE_HEADER, node);
            headers.insert(SEQ_HEADER, seq.to_string().as_str());
            let payload: bytes::Bytes = payload.into();
            for subject in subjects {
                // Core NATS: lost if NATS went away just now. The recipients whose copy was kept
                // have it in their backlog (and the node that has them online delivers it from its
                // index, see `core::remote`); everyone has it in HISTORY.
                if let Err(e) = client
                    .publish_with_headers(subject, headers.clone(), payload.clone())
                    .await
                {
                    log::warn!("cannot route message {seq}: {e}");
                }
            }
        }
        out
    }

    /// The sequence of the last entry on `subject`, if it can be read.
    async fn last_on(js: &jetstream::Context, subject: &str) -> Option<u64> {
        let log = js.get_stream_no_info(STREAM).await.ok()?;
        match log.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Some(m.sequence),
            Err(e) => {
                log::warn!("cannot read the last entry on {subject}: {e}");
                None
            }
        }
    }

    /// Reads the log from its first entry, in order, into the feed; starts again after the last
    /// entry read whenever the consumer fails.
    async fn read_log(
        log: stream::Stream,
        feed: Sender<Entry>,
        nudge: Sender<()>,
        reconnected: Receiver<()>,
    ) {
        let mut next = 1u64;
        loop {
            let config = consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: next,
                },
                ..Default::default()
            };
            let messages = match log.create_consumer(config).await {
                Ok(c) => c.messages().await,
                Err(e) => {
                    log::warn!("cannot read the log ({e}); trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("cannot read the log ({e}); trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // What came before this consumer was made is not news.
            while reconnected.try_recv().is_ok() {}
            loop {
                let got = tokio::select! {
                    m = messages.next() => m,
                    _ = reconnected.recv() => {
                        log::info!("reading the log again from entry {next} after reconnecting");
                        break;
                    }
                };
                let Some(m) = got else { break };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        log::warn!("reading the log: {e}; starting again at entry {next}");
                        break;
                    }
                };
                let Ok(info) = m.info() else { continue };
                let seq = info.stream_sequence;
                if seq < next {
                    continue;
                }
                let header = |name: &str| {
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                };
                let entry = Entry {
                    seq,
                    subject: m.subject.to_string(),
                    node: header(NODE_HEADER),
                    msg_id: header("Nats-Msg-Id"),
                    payload: m.payload.to_vec(),
                };
                if feed.send(entry).await.is_err() {
                    return;
                }
                next = seq + 1;
                let _ = nudge.try_send(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::room::Role;
    use crate::store::{MemberRecord, Notice, RoomRecord};

    fn create(id: RoomId, name: &str) -> StoreOp {
        StoreOp::CreateRoom {
            id,
            room: Box::new(RoomRecord {
                name: name.into(),
                created_ms: 1,
                private: false,
                topic: None,
            }),
            owner: "a".into(),
            member: MemberRecord {
                role: Role::Owner,
                since: 0,
                read_id: 0,
                read_seq: 0,
            },
        }
    }

    fn join(room: RoomId) -> StoreOp {
        StoreOp::PutMember {
            room,
            user: "b".into(),
            member: MemberRecord {
                role: Role::Member,
                since: 0,
                read_id: 0,
                read_seq: 0,
            },
        }
    }

    /// Reads `ops` as entries on their subjects from sequence 1 on, as a node applies them;
    /// returns which were applied.
    fn read(names: &mut RoomNames, ops: &[StoreOp], version: u8) -> Vec<bool> {
        let mut changed = HashMap::new();
        let mut applied = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let subject = match op {
                StoreOp::CreateRoom { room, .. } => room_subject(&room.name),
                StoreOp::DeleteRoom { id } => names
                    .by_room
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| room_subject("#rust")),
                _ => "chatd.log.state".into(),
            };
            let takes = names.takes(op, version, &mut changed);
            names.on_subject(&subject, i as u64 + 1);
            if takes {
                names.applied(op);
            }
            applied.push(takes);
        }
        applied
    }

    #[test]
    fn a_room_name_subject_is_the_folded_name() {
        assert_eq!(room_subject("#Rust-Lang_2"), "chatd.log.room.rust-lang_2");
    }

    #[test]
    fn a_name_is_expected_at_its_last_entry_and_ops_on_a_gone_room_are_skipped() {
        let mut names = RoomNames::default();
        let ops = [
            create(7, "#Rust"),
            join(7),
            StoreOp::DeleteRoom { id: 7 },
            join(7),
        ];
        // The join after the deletion is skipped, as on every node.
        assert_eq!(read(&mut names, &ops, 2), [true, true, true, false]);
        let on = room_subject("#rust");
        // Free again, and its next creation expects the deletion's entry (3).
        assert_eq!(names.by_name.get(&on), Some(&(3, None)));
        // A second deletion of the gone room (a node that had not learned of the first) is
        // skipped, but it is on the subject: the next creation expects it.
        let mut changed = HashMap::new();
        assert!(!names.takes(&StoreOp::DeleteRoom { id: 7 }, 2, &mut changed));
        names.on_subject(&on, 9);
        assert_eq!(names.by_name.get(&on), Some(&(9, None)));
        let ops = [create(8, "#RUST"), join(8)];
        assert_eq!(read(&mut names, &ops, 2), [true, true]);
        assert_eq!(names.by_name.get(&on).map(|n| n.1), Some(Some(8)));
    }

    #[test]
    fn a_room_of_format_version_1_is_created_by_its_settings() {
        let mut names = RoomNames::default();
        let put = StoreOp::PutRoom {
            id: 3,
            room: RoomRecord {
                name: "#old".into(),
                created_ms: 1,
                private: false,
                topic: None,
            },
        };
        // A room's settings for a room that does not exist: a creation in version 1 only.
        assert_eq!(read(&mut names, std::slice::from_ref(&put), 2), [false]);
        assert_eq!(read(&mut names, &[put, join(3)], 1), [true, true]);
        assert_eq!(
            names.by_name.get(&room_subject("#old")),
            Some(&(0, Some(3)))
        );
    }

    #[test]
    fn ops_of_one_batch_see_the_rooms_made_and_deleted_before_them() {
        let names = RoomNames::default();
        let mut changed = HashMap::new();
        assert!(names.takes(&create(5, "#a"), 2, &mut changed));
        assert!(names.takes(&join(5), 2, &mut changed));
        assert!(names.takes(&StoreOp::DeleteRoom { id: 5 }, 2, &mut changed));
        assert!(!names.takes(&join(5), 2, &mut changed));
        // A room event goes with its change: a second deletion of the room is skipped, event and
        // all (its members were told by the first).
        let told = StoreOp::Told {
            notice: Notice::Room {
                room: 5,
                line: "DELETED #a b".into(),
            },
            op: Box::new(StoreOp::DeleteRoom { id: 5 }),
        };
        assert!(!names.takes(&told, 2, &mut changed));
        // Ops on no room, and notices, are always taken.
        let away = StoreOp::SetAway {
            user: "a".into(),
            away: None,
        };
        assert!(names.takes(&away, 2, &mut changed));
        let notice = StoreOp::Notice(Notice::Room {
            room: 99,
            line: "x".into(),
        });
        assert!(names.takes(&notice, 2, &mut changed));
    }
}
