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
//!
//! The async-nats client needs tokio: it runs on one thread of its own (`chatd-nats`) with a
//! current-thread runtime, joined to the rest by bounded `async-channel`s (requests in, the log's
//! entries out). Tokio never enters the core, the store worker or the connection tasks.
//!
//! When NATS cannot be reached a write fails like a failing disk: the worker keeps the batch and
//! tries it again, the core refuses new writes with STORAGE_UNAVAILABLE, and connections stay.
//! A batch tried again publishes the same entries with the same `Nats-Msg-Id`s, so the stream's
//! de-duplication makes the retry take effect once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;

use crate::config::{
    CLUSTER_APPLY_BATCH, CLUSTER_BUS_QUEUE, CLUSTER_FEED_QUEUE, CLUSTER_LOG_WAIT,
    CLUSTER_REQUEST_QUEUE, CLUSTER_START_TRIES, PRESENCE_ENTRY_AGE, PRESENCE_EXPIRY,
    PRESENCE_REFRESH, PRESENCE_RENEW, PRESENCE_START_WAIT,
};
use crate::core::{BusIn, BusOut, RouteTo};
use crate::store::oplog::{decode_op, encode_op};
use crate::store::redb::RedbStore;
use crate::store::{Snapshot, Store, StoreError, StoreOp, StoreReader, StoreReply, To};

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

/// One entry to publish.
struct Outgoing {
    subject: String,
    msg_id: String,
    payload: Vec<u8>,
    /// Only if no entry exists yet on the subject (REGISTER's compare-and-set).
    first_on_subject: bool,
    /// The subjects a message is routed on once the log has acknowledged it (see [`routes_of`]).
    routes: Vec<String>,
}

/// Why an entry was not taken.
#[derive(Debug)]
enum Refused {
    /// `first_on_subject` and the subject has an entry.
    Taken,
    /// NATS could not be reached, or did not acknowledge in time.
    Failed(String),
}

/// A request to the NATS thread.
struct Publish {
    entries: Vec<Outgoing>,
    reply: Sender<Vec<Result<u64, Refused>>>,
}

/// One entry of the log as read.
struct Entry {
    seq: u64,
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
        StoreOp::AppendRoomMessage { room, .. } => vec![room_subject(*room)],
        _ => Vec::new(),
    }
}

/// The subject of an account's routed messages (account keys are letters, digits, `_` and `-`,
/// so a key is one subject token).
fn account_subject(key: &str) -> String {
    format!("{ROUTE_ACCOUNT}{key}")
}

/// The subject of a room's routed messages.
fn room_subject(room: crate::store::RoomId) -> String {
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
                let next =
                    future::block_on(future::or(async { self.feed.recv().await.ok() }, async {
                        smol::Timer::after(CLUSTER_LOG_WAIT).await;
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
        let mut ops = Vec::with_capacity(self.unapplied.len());
        let mut keep = Vec::with_capacity(self.unapplied.len());
        for e in &self.unapplied {
            if e.seq <= self.applied {
                // Delivered again after the consumer was recreated.
                continue;
            }
            match decode_op(&e.payload) {
                Ok(op) => {
                    ops.push(with_id(op, e.seq));
                    keep.push(e);
                }
                // Every node skips it alike, so the indexes stay equal.
                Err(d) => log::error!("log entry {} cannot be decoded, skipped: {d}", e.seq),
            }
        }
        let replies = if ops.is_empty() {
            Vec::new()
        } else {
            self.local.write(&ops)?
        };
        for ((e, op), reply) in keep.into_iter().zip(ops).zip(replies) {
            match (&e.node, &e.msg_id) {
                (Some(n), Some(id)) if *n == self.node => {
                    self.own.insert(id.clone(), (e.seq, reply));
                }
                _ => self.remote.push(op),
            }
        }
        if let Some(last) = self.unapplied.last() {
            self.applied = self.applied.max(last.seq);
        }
        self.unapplied.clear();
        Ok(())
    }

    fn fresh_id(&mut self) -> String {
        self.next_op += 1;
        format!("{}.{}", self.node, self.next_op)
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

/// The subject an op's entry goes to, and whether it must be the first on it.
fn subject_of(op: &StoreOp) -> (String, bool) {
    match op {
        StoreOp::CreateAccount(rec) => (
            format!("chatd.log.account.{}", crate::store::key_of(&rec.name)),
            true,
        ),
        StoreOp::AppendMessage { .. } | StoreOp::AppendRoomMessage { .. } => {
            ("chatd.log.msg".to_owned(), false)
        }
        _ => ("chatd.log.state".to_owned(), false),
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
        let mut entries = Vec::new();
        let mut logged = Vec::with_capacity(ops.len());
        for (op, id) in ops.iter().zip(&ids) {
            match encode_op(op) {
                Some(payload) => {
                    let (subject, first_on_subject) = subject_of(op);
                    entries.push(Outgoing {
                        subject,
                        msg_id: id.clone(),
                        payload,
                        first_on_subject,
                        routes: routes_of(op),
                    });
                    logged.push(true);
                }
                None => logged.push(false),
            }
        }
        let results = if entries.is_empty() {
            Vec::new()
        } else {
            let (reply, answer) = async_channel::bounded(1);
            let sent = self
                .requests
                .requests
                .send_blocking(Publish { entries, reply });
            let got = sent.ok().and_then(|()| answer.recv_blocking().ok());
            match got {
                Some(r) => r,
                None => {
                    self.retry = Some((ops.to_vec(), ids));
                    return Err(StoreError::Cluster("the NATS thread has stopped".into()));
                }
            }
        };
        let mut last = 0;
        let mut taken = Vec::new();
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(seq) => last = last.max(*seq),
                Err(Refused::Taken) => taken.push(i),
                Err(Refused::Failed(why)) => {
                    self.retry = Some((ops.to_vec(), ids));
                    return Err(StoreError::Cluster(why.clone()));
                }
            }
        }
        if let Err(e) = self.apply_until(last) {
            self.retry = Some((ops.to_vec(), ids));
            return Err(e);
        }
        let mut replies = Vec::with_capacity(ops.len());
        let mut published = 0;
        for ((op, id), was_logged) in ops.iter().zip(&ids).zip(logged) {
            if !was_logged {
                // A read ordered with the writes: answered from the index, which now holds every
                // write of the batch.
                replies.extend(self.local.write(std::slice::from_ref(op))?);
                continue;
            }
            let index = published;
            published += 1;
            if taken.contains(&index) {
                replies.push(StoreReply::Taken);
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
        tokio::spawn(watch_beats(
            beats.clone(),
            node.clone(),
            bus_in.clone(),
            read_tx.clone(),
        ));
        tokio::spawn(watch_entries(
            entries.clone(),
            node.clone(),
            bus_in.clone(),
            read_tx,
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

    /// Reads the other nodes' heartbeats, those in the bucket first, and tells the core each
    /// one's age (the clocks of the machines are taken to agree within a second or so). `read`
    /// is told once the bucket's history is read. Starts again after an error.
    async fn watch_beats(
        kv: kv::Store,
        node: String,
        inbound: Sender<BusIn>,
        read: tokio::sync::mpsc::Sender<()>,
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
                        if e.key == node {
                            continue;
                        }
                        if e.operation != kv::Operation::Put {
                            // A node that stops deletes its heartbeat (see `presence`).
                            if inbound.send(BusIn::Gone { node: e.key }).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        let created = e.created.unix_timestamp_nanos() / 1_000_000;
                        let age_ms = i64::try_from(now_ms() - created).unwrap_or(i64::MAX);
                        let alive = BusIn::Alive {
                            node: e.key,
                            age_ms,
                        };
                        if inbound.send(alive).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => log::warn!("cannot read the heartbeats ({e}); trying again"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Reads the presence entries (`<account key>.<node>`), those in the bucket first, and tells
    /// the core each change: a value is "online there", a delete "offline there". `read` is
    /// told once the bucket's history is read. Starts again after an error.
    async fn watch_entries(
        kv: kv::Store,
        node: String,
        inbound: Sender<BusIn>,
        read: tokio::sync::mpsc::Sender<()>,
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
                        let Some((key, there)) = e.key.rsplit_once('.') else {
                            continue;
                        };
                        if there == node {
                            continue;
                        }
                        let news = BusIn::Presence {
                            node: there.to_owned(),
                            key: key.to_owned(),
                            online: e.operation == kv::Operation::Put,
                        };
                        if inbound.send(news).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => log::warn!("cannot read the presence entries ({e}); trying again"),
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
                            follows.set(room_subject(id), RouteTo::Room(id), watch);
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
            if e.first_on_subject {
                msg = msg.expected_last_subject_sequence(0);
            }
            pending.push(js.send_publish(e.subject, msg).await);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(match p {
                Err(e) => Err(Refused::Failed(format!("publishing to the log: {e}"))),
                Ok(ack) => match ack.await {
                    Ok(a) => Ok(a.sequence),
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                        Err(Refused::Taken)
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
