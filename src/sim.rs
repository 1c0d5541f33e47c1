//! A deterministic driver of the core without sockets, for tests, snapshot transcripts and fuzzers.
//!
//! Clients are named; their lines go straight to the core, store jobs run on an in-memory store (or
//! any [`Store`]) in batches the way the store worker runs them (writes in one transaction, each
//! read through a view that sees the writes before it, failing on its own), password hashes run
//! inline with a cheap cost, and the clock only moves when told to. Everything a client was sent is collected from its outbox.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::auth::{HashOutcome, Hasher, Phc};
use crate::config::{
    IRC_MAX_INPUT_BYTES, MAX_INFLIGHT_PER_CONNECTION, MAX_LINE_BYTES, OUTBOX_LIMIT_BYTES,
};
use crate::core::entropy::Entropy;
use crate::core::{BusIn, BusOut, ConnId, Core, Event, Input, Job, Limits, Policy, Settings};
use crate::irc::{Effects, Session};
use crate::outbox::Outbox;
use crate::peer::Peer;
use crate::proto::line::{Frame, LineDecoder};
use crate::store::memory::MemoryStore;
use crate::store::worker::{Report, StoreJob, Ticket};
use crate::store::{ReadOp, Snapshot, Store, StoreError, StoreOp, StoreReply};

/// Start of the simulated clock: 2026-01-01T00:00:00.000Z.
pub const EPOCH_MS: i64 = 1_767_225_600_000;
/// The seed of the simulated server's random bits: the same run issues the same device tokens.
const SEED: u64 = 0x5eed_c4a7_d000_0001;

struct Client {
    conn: ConnId,
    outbox: Outbox,
    decoder: LineDecoder,
    /// The IRC front end of a client connected with [`Sim::connect_irc`], and what it said to the
    /// client on its own (before the core's output is read).
    irc: Option<(Session, String)>,
}

/// The simulated server. See the module documentation.
pub struct Sim {
    core: Core,
    store: Backing,
    hasher: Hasher,
    clients: BTreeMap<String, Client>,
    next_conn: ConnId,
    now: i64,
    jobs: Vec<Job>,
    /// How many times [`Sim::restart`] ran: each new core draws from a seed of its own, as a
    /// restarted server would not repeat the tokens of the one before.
    restarts: u64,
    /// Store jobs held since a write failed, in order (see [`Sim::retry_store`]).
    held: Vec<StoreJob>,
    /// A node of a cluster ([`Sim::cluster_node`]): the words its core said to the other nodes,
    /// not yet taken.
    bus: Option<Vec<BusOut>>,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    /// A server with an empty in-memory store.
    pub fn new() -> Sim {
        let (store, snapshot) = MemoryStore::new();
        Sim::build(Backing::Memory(store), snapshot, Limits::default())
    }

    /// A server on `store`, whose contents `snapshot` describes.
    pub fn with_store(store: Box<dyn Store>, snapshot: Snapshot) -> Sim {
        Sim::with(store, snapshot, Limits::default())
    }

    /// A server with an empty in-memory store and these limits.
    pub fn with_limits(limits: Limits) -> Sim {
        let (store, snapshot) = MemoryStore::new();
        Sim::build(Backing::Memory(store), snapshot, limits)
    }

    /// A server on `store` (whose contents `snapshot` describes) with these limits.
    pub fn with(store: Box<dyn Store>, snapshot: Snapshot, limits: Limits) -> Sim {
        Sim::build(Backing::Other(store), snapshot, limits)
    }

    fn build(store: Backing, snapshot: Snapshot, limits: Limits) -> Sim {
        let hasher = Hasher::new(4, 8, 1).expect("cheap scrypt parameters are valid");
        Sim {
            core: Core::new(snapshot, Sim::settings(&hasher, 0, limits)),
            store,
            hasher,
            clients: BTreeMap::new(),
            next_conn: 1,
            now: EPOCH_MS,
            jobs: Vec::new(),
            restarts: 0,
            held: Vec::new(),
            bus: None,
        }
    }

    /// A node of a cluster, with an empty in-memory store standing for its index: what the other
    /// nodes do comes in by [`Sim::index`], [`Sim::report_remote`] and [`Sim::bus_in`], and what
    /// its core tells them goes out to [`Sim::take_bus`]. Message ids stay the core's own (the
    /// memory store does not answer `Appended`).
    pub fn cluster_node() -> Sim {
        let (store, snapshot) = MemoryStore::new();
        let hasher = Hasher::new(4, 8, 1).expect("cheap scrypt parameters are valid");
        let mut settings = Sim::settings(&hasher, 0, Limits::default());
        settings.cluster = true;
        let mut sim = Sim::build(Backing::Memory(store), snapshot, Limits::default());
        sim.core = Core::new(sim.store_snapshot(), settings);
        sim.hasher = hasher;
        sim.bus = Some(Vec::new());
        sim
    }

    fn store_snapshot(&self) -> Snapshot {
        match &self.store {
            Backing::Memory(m) => m.snapshot(),
            Backing::Other(_) => Snapshot::default(),
        }
    }

    /// The words the core of a [`Sim::cluster_node`] said to the other nodes since the last call.
    pub fn take_bus(&mut self) -> Vec<BusOut> {
        self.bus.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// What the other nodes say or route to this one, handed to the core; then the server runs
    /// until it is idle.
    pub fn bus_in(&mut self, news: BusIn) {
        self.event(Event::Bus(news));
        self.settle();
    }

    /// Ops another node wrote, applied to this node's store (its index), as the cluster's log
    /// reader applies them before it tells the core ([`Sim::report_remote`]).
    pub fn index(&mut self, ops: &[StoreOp]) {
        self.store
            .get_mut()
            .write(ops)
            .expect("the in-memory store takes the ops");
    }

    /// Tells the core of ops another node wrote (already in the index, see [`Sim::index`]); then
    /// the server runs until it is idle.
    pub fn report_remote(&mut self, ops: Vec<StoreOp>) {
        self.event(Event::Store(Report::Remote(ops)));
        self.settle();
    }

    fn settings(hasher: &Hasher, restarts: u64, limits: Limits) -> Settings {
        Settings {
            hash_queue: 64,
            dummy_phc: Phc::parse(&hasher.dummy_phc()),
            version: "0.0.0-sim",
            entropy: Entropy::Seeded(SEED.wrapping_add(restarts)),
            limits,
            cluster: false,
            deliver_after_commit: false,
            policy: Policy::default(),
            metrics: Arc::default(),
        }
    }

    /// Changes the server's policy (its admins, whether registration is open) from now on.
    pub fn set_policy(&mut self, change: impl FnOnce(&mut Policy)) {
        let mut policy = self.core.policy().clone();
        change(&mut policy);
        self.core.set_policy(policy);
    }

    /// The core, for inspection.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Stops the server abruptly and starts a new one on the same (in-memory) store, as after a
    /// crash: every job still queued or held is lost, every connection is gone, and the new core
    /// knows only what was committed. The clock and the limits go on. Only for a server made by
    /// [`Sim::new`] or [`Sim::with_limits`].
    pub fn restart(&mut self) {
        let Backing::Memory(memory) = &self.store else {
            panic!("Sim::restart needs the in-memory store of Sim::new");
        };
        let snapshot = memory.snapshot();
        self.jobs.clear();
        self.held.clear();
        self.clients.clear();
        self.restarts += 1;
        let limits = self.core.limits().clone();
        let policy = self.core.policy().clone();
        let mut settings = Sim::settings(&self.hasher, self.restarts, limits);
        settings.policy = policy;
        self.core = Core::new(snapshot, settings);
    }

    /// Whether messages wait for their commit before they reach their recipients, from now on
    /// (`--deliver-after-commit`; off again after [`Sim::restart`]).
    pub fn set_deliver_after_commit(&mut self, on: bool) {
        self.core.set_deliver_after_commit(on);
    }

    /// Changes the server's limits from now on.
    pub fn set_limits(&mut self, change: impl FnOnce(&mut Limits)) {
        let mut limits = self.core.limits().clone();
        change(&mut limits);
        self.core.set_limits(limits);
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, ms: i64) {
        self.now += ms;
    }

    /// Opens a connection named `client` (a name reused after a disconnect opens a new one). It has
    /// no address: the limits per address leave it alone.
    pub fn connect(&mut self, client: &str) {
        self.connect_as(client, Peer::unlimited());
    }

    /// Opens a connection named `client` from the address `ip`, which the limits per address
    /// count.
    pub fn connect_from(&mut self, client: &str, ip: &str) {
        let ip = ip.parse().expect("an IP address");
        self.connect_as(
            client,
            Peer::new(std::net::SocketAddr::new(ip, 1), false, &[]),
        );
    }

    /// Moves the clock forward by `ms` and lets the server look at it (an [`Event::Tick`]). Jobs
    /// queued with [`Sim::queue`] stay queued.
    pub fn tick(&mut self, ms: i64) {
        self.now += ms;
        self.event(Event::Tick);
    }

    /// Opens an IRC connection named `client`: what it sends and receives goes through the IRC
    /// front end (`crate::irc`), as on an `--irc-listen` port.
    pub fn connect_irc(&mut self, client: &str) {
        self.connect_as(client, Peer::unlimited());
        if let Some(c) = self.clients.get_mut(client) {
            c.decoder = LineDecoder::new(IRC_MAX_INPUT_BYTES);
            c.irc = Some((Session::new("0.0.0-sim"), String::new()));
        }
        // The core's HELLO is for the line protocol: the front end reads it and shows nothing.
        self.output(client);
    }

    fn connect_as(&mut self, client: &str, peer: Peer) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let outbox = Outbox::new(OUTBOX_LIMIT_BYTES, MAX_INFLIGHT_PER_CONNECTION);
        self.clients.insert(
            client.to_owned(),
            Client {
                conn,
                outbox: outbox.clone(),
                decoder: LineDecoder::new(MAX_LINE_BYTES),
                irc: None,
            },
        );
        self.event(Event::Connected { conn, outbox, peer });
    }

    /// Hands an IRC front end's command lines to the core.
    fn hand_to_core(&mut self, conn: ConnId, lines: Vec<String>) {
        for line in lines {
            let input = Input::Line(line.into_bytes());
            self.event(Event::Input { conn, input });
        }
    }

    /// Sends one line (an LF is added) and runs the server until it is idle.
    pub fn send(&mut self, client: &str, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.send_bytes(client, &bytes);
    }

    /// Sends raw bytes through the line framing, and runs the server until it is idle.
    pub fn send_bytes(&mut self, client: &str, bytes: &[u8]) {
        let Some(c) = self.clients.get_mut(client) else {
            return;
        };
        let conn = c.conn;
        let mut inputs = Vec::new();
        c.decoder.feed(bytes, |f| {
            inputs.push(match f {
                Frame::Line(l) => Input::Line(l.to_vec()),
                Frame::TooLong => Input::TooLong,
            })
        });
        if c.irc.is_some() {
            for input in inputs {
                let Some(Client {
                    irc: Some((session, said)),
                    ..
                }) = self.clients.get_mut(client)
                else {
                    return;
                };
                let mut fx = Effects::default();
                match input {
                    Input::Line(l) => session.client_line(&String::from_utf8_lossy(&l), &mut fx),
                    Input::TooLong => session.too_long(&mut fx),
                    // IRC has no COMPRESS, so no DEFLATE stream to go bad.
                    Input::BadDeflate => {}
                }
                said.push_str(&fx.client);
                self.hand_to_core(conn, fx.core);
                self.settle();
                // Each line's answer is read before the next line is sent, as a client reads.
                self.pump_irc(client);
            }
            return;
        }
        // As a connection's task hands them over: what one read brought, together.
        if inputs.len() == 1 {
            if let Some(input) = inputs.pop() {
                self.event(Event::Input { conn, input });
            }
        } else if !inputs.is_empty() {
            self.event(Event::Inputs { conn, inputs });
        }
        self.settle();
    }

    /// The client's DEFLATE stream turned out bad (what its reader reports after COMPRESS), and
    /// the server runs until it is idle.
    pub fn bad_deflate(&mut self, client: &str) {
        let Some(c) = self.clients.get(client) else {
            return;
        };
        let conn = c.conn;
        self.event(Event::Input {
            conn,
            input: Input::BadDeflate,
        });
        self.settle();
    }

    /// True once the server switched the client's connection to DEFLATE (after `OK COMPRESS`).
    pub fn is_compressed(&self, client: &str) -> bool {
        self.clients
            .get(client)
            .is_some_and(|c| c.outbox.deflating())
    }

    /// Closes the client's connection, as an abrupt disconnect.
    pub fn disconnect(&mut self, client: &str) {
        if let Some(c) = self.clients.remove(client) {
            self.event(Event::Disconnected { conn: c.conn });
            self.settle();
        }
    }

    /// Tells the server to stop.
    pub fn shutdown(&mut self) {
        self.event(Event::Shutdown);
        self.settle();
    }

    /// Everything sent to `client` since the last call. The client reads as the server writes:
    /// a long answer sent part by part (which waits for the client to read each part) comes whole.
    pub fn output(&mut self, client: &str) -> String {
        if self.clients.get(client).is_some_and(|c| c.irc.is_some()) {
            self.pump_irc(client);
            return self
                .clients
                .get_mut(client)
                .and_then(|c| c.irc.as_mut())
                .map(|(_, said)| std::mem::take(said))
                .unwrap_or_default();
        }
        self.core_output(client)
    }

    /// Runs an IRC client's front end over what the core sent it, until the front end asks the
    /// core for nothing more; what the client is sent collects in its `said`.
    fn pump_irc(&mut self, client: &str) {
        // Bounded: each round answers commands the front end sent in the round before, and the
        // front end sends follow-ups only for answers to commands of the client's (NAMES after a
        // JOIN, the joins after a login), never for answers to its own follow-ups but one level.
        for _ in 0..8 {
            let bytes = self.core_output(client);
            let Some(c) = self.clients.get_mut(client) else {
                return;
            };
            let conn = c.conn;
            let Some((session, said)) = &mut c.irc else {
                return;
            };
            let mut fx = Effects::default();
            session.server_bytes(bytes.as_bytes(), &mut fx);
            said.push_str(&fx.client);
            if fx.core.is_empty() {
                return;
            }
            self.hand_to_core(conn, fx.core);
            self.settle();
        }
    }

    /// What the core queued for `client`, as the line protocol.
    fn core_output(&mut self, client: &str) -> String {
        let mut text = String::new();
        // Bounded: each round either sends a part of a long answer or ends the loop.
        loop {
            let Some(c) = self.clients.get(client) else {
                return text;
            };
            text.push_str(&c.outbox.drain_text());
            if !c.outbox.drained_wanted() {
                return text;
            }
            let conn = c.conn;
            self.event(Event::Drained { conn });
            self.settle();
        }
    }

    /// True when the server closed the client's connection.
    pub fn is_closed(&self, client: &str) -> bool {
        self.clients
            .get(client)
            .is_none_or(|c| c.outbox.is_closed())
    }

    /// Names of the connected clients.
    pub fn clients(&self) -> Vec<String> {
        self.clients.keys().cloned().collect()
    }

    fn event(&mut self, event: Event) {
        self.core.handle(self.now, event, &mut self.jobs);
    }

    /// Hands a line to the server without running any job, to set up races with [`Sim::step`].
    pub fn queue(&mut self, client: &str, line: &str) {
        let Some(c) = self.clients.get(client) else {
            return;
        };
        let conn = c.conn;
        let input = Input::Line(line.as_bytes().to_vec());
        self.event(Event::Input { conn, input });
    }

    /// Closes the client's connection without running any job (see [`Sim::queue`]).
    pub fn drop_connection(&mut self, client: &str) {
        if let Some(c) = self.clients.remove(client) {
            self.event(Event::Disconnected { conn: c.conn });
        }
    }

    /// Runs the jobs queued so far once (the ones they lead to stay queued).
    pub fn step(&mut self) {
        self.run_jobs();
    }

    /// Runs store and hash jobs until none is left. Store jobs queued together commit together.
    pub fn settle(&mut self) {
        while !self.jobs.is_empty() {
            self.run_jobs();
        }
    }

    fn run_jobs(&mut self) {
        let jobs = std::mem::take(&mut self.jobs);
        let mut batch = Vec::new();
        let mut fresh = Vec::new();
        let mut hashes = Vec::new();
        for j in jobs {
            match j {
                Job::Store(s) => batch.push(s),
                Job::Read(t, r) => fresh.push((t, r)),
                Job::Hash(t, h) => hashes.push((t, h)),
                Job::Bus(word) => {
                    if let Some(bus) = &mut self.bus {
                        bus.push(word);
                    }
                }
            }
        }
        if !fresh.is_empty() {
            let results = self.read_all(fresh);
            self.event(Event::Store(Report::Done(results, Vec::new())));
        }
        if !batch.is_empty() {
            if self.held.is_empty() {
                self.run_store_batch(batch);
            } else {
                // Writes are failing: what comes after waits behind what failed, in order.
                self.held.extend(batch);
            }
        }
        for (ticket, job) in hashes {
            let outcome: HashOutcome = job.run(&self.hasher);
            self.event(Event::Hashed { ticket, outcome });
        }
    }

    /// While writes fail (the store's `write` returned an error), the jobs held since: tries them
    /// again, as the store worker does after its back-off, and runs the server until it is idle.
    /// Nothing happens when no write failed.
    pub fn retry_store(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        if self.run_store_batch(held) {
            self.event(Event::Store(Report::Writing));
        }
        self.settle();
    }

    /// Runs one batch the way the store worker may: each run of writes in one `write` call, each
    /// read through a reader taken after the writes before it, failing on its own as the worker's
    /// reads do. If a write fails, the results before it are reported, it and everything after it
    /// are held for [`Sim::retry_store`], and the core is told that writes fail. Returns whether
    /// the whole batch ran.
    fn run_store_batch(&mut self, batch: Vec<StoreJob>) -> bool {
        let mut results = Vec::with_capacity(batch.len());
        let mut spent = Vec::new();
        let mut writes: Vec<StoreJob> = Vec::new();
        let mut jobs = batch.into_iter();
        let mut failed = None;
        for job in jobs.by_ref() {
            match job.op.clone().into_read() {
                Err(_) => writes.push(job),
                Ok(read) => {
                    if let Err(e) = self.write_all(&mut writes, &mut results, &mut spent) {
                        failed = Some((e, Some(job)));
                        break;
                    }
                    let reply = self.read_one(&read);
                    results.push((job.ticket, reply));
                }
            }
        }
        if failed.is_none() {
            if let Err(e) = self.write_all(&mut writes, &mut results, &mut spent) {
                failed = Some((e, None));
            }
        }
        if !results.is_empty() {
            self.event(Event::Store(Report::Done(results, spent)));
        }
        let Some((e, read)) = failed else {
            return true;
        };
        // `writes` still holds the failed writes.
        self.held = writes.into_iter().chain(read).chain(jobs).collect();
        self.event(Event::Store(Report::Failing(e.to_string())));
        false
    }

    fn read_one(&self, read: &ReadOp) -> StoreReply {
        match self.store.get().reader() {
            Ok(view) => view
                .read(read)
                .unwrap_or_else(|e| StoreReply::Unreadable(e.into())),
            Err(e) => StoreReply::Unreadable(e.into()),
        }
    }

    fn read_all(&self, reads: Vec<(Ticket, ReadOp)>) -> Vec<(Ticket, StoreReply)> {
        reads
            .into_iter()
            .map(|(t, r)| (t, self.read_one(&r)))
            .collect()
    }

    /// Writes `writes` in one call; on success their results join `results`, their ops join
    /// `spent` (handed back to the core as the worker does) and `writes` is emptied, on failure
    /// `writes` is left as it was.
    fn write_all(
        &mut self,
        writes: &mut Vec<StoreJob>,
        results: &mut Vec<(Ticket, StoreReply)>,
        spent: &mut Vec<StoreOp>,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.store.get_mut().ready()?;
        self.store.get_mut().recover()?;
        let ops: Vec<StoreOp> = writes.iter().map(|j| j.op.clone()).collect();
        let replies = self.store.get_mut().write(&ops)?;
        results.extend(writes.drain(..).map(|j| j.ticket).zip(replies));
        spent.extend(ops);
        Ok(())
    }
}

/// The simulated server's store: the in-memory one (which [`Sim::restart`] can reopen), or any.
enum Backing {
    Memory(MemoryStore),
    Other(Box<dyn Store>),
}

impl Backing {
    fn get(&self) -> &dyn Store {
        match self {
            Backing::Memory(m) => m,
            Backing::Other(s) => &**s,
        }
    }

    fn get_mut(&mut self) -> &mut dyn Store {
        match self {
            Backing::Memory(m) => m,
            Backing::Other(s) => &mut **s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sim;

    #[test]
    fn register_login_and_chat() {
        let mut s = Sim::new();
        s.connect("a");
        s.connect("b");
        assert!(s.output("a").starts_with("HELLO chatd"));
        s.output("b");
        s.send("a", "REGISTER alice password1");
        s.send("b", "REGISTER Bob password2");
        s.send("b", "@1 LOGIN bob password2");
        assert_eq!(
            s.output("b"),
            "OK REGISTER Bob\nOK @1 LOGIN Bob\nBACKLOG-END 0\n"
        );
        s.send("a", "LOGIN alice wrongpass");
        s.send("a", "LOGIN alice password1");
        s.send("a", "MSG bob  hi there");
        assert_eq!(
            s.output("a"),
            "OK REGISTER alice\nFAIL LOGIN BAD_CREDENTIALS wrong name or password\nOK LOGIN alice\nBACKLOG-END 0\nOK MSG 1 DELIVERED\n"
        );
        assert_eq!(
            s.output("b"),
            "MESSAGE 1 2026-01-01T00:00:00.000Z alice Bob  hi there\n"
        );
    }

    /// alice has sent bob, offline, one message; connection `b` is open and not logged in.
    fn one_message_kept_for_bob() -> Sim {
        let mut s = Sim::new();
        s.connect("a");
        s.send("a", "REGISTER alice password1");
        s.send("a", "REGISTER bob password2");
        s.send("a", "LOGIN alice password1");
        s.send("a", "MSG bob kept for you");
        s.connect("b");
        s
    }

    /// A new connection logs in as bob and receives alice's message from the backlog.
    fn assert_bob_still_has_the_kept_message(s: &mut Sim) {
        assert_bob_has(s, "alice bob kept for you\nBACKLOG-END 1\n");
    }

    /// A new connection logs in as bob; its login output ends with `tail`.
    fn assert_bob_has(s: &mut Sim, tail: &str) {
        s.connect("b");
        s.output("b");
        s.send("b", "LOGIN bob password2");
        let out = s.output("b");
        assert!(out.ends_with(tail), "{out}");
    }

    #[test]
    fn a_quit_sent_with_the_login_runs_after_the_backlog() {
        let mut s = one_message_kept_for_bob();
        s.output("b");
        s.send_bytes("b", b"LOGIN bob password2\nQUIT\n");
        assert_eq!(
            s.output("b"),
            "OK LOGIN bob\nMESSAGE 1 2026-01-01T00:00:00.000Z alice bob kept for you\n\
             BACKLOG-END 1\nOK QUIT\n"
        );
        assert!(s.is_closed("b"));
        s.disconnect("b");
        // Delivered once: the next login finds nothing kept.
        s.connect("b");
        s.output("b");
        s.send("b", "LOGIN bob password2");
        assert_eq!(s.output("b"), "OK LOGIN bob\nBACKLOG-END 0\n");
    }

    #[test]
    fn a_message_to_yourself_sent_with_the_login_is_delivered_before_quit() {
        let mut s = Sim::new();
        s.connect("a");
        s.send("a", "REGISTER hal password1");
        s.output("a");
        s.send_bytes("a", b"LOGIN hal password1\nMSG hal note\nUSERS\nQUIT\n");
        assert_eq!(
            s.output("a"),
            "OK LOGIN hal\nBACKLOG-END 0\nOK MSG 1 DELIVERED\n\
             MESSAGE 1 2026-01-01T00:00:00.000Z hal hal note\nUSER hal\nOK USERS 1\nOK QUIT\n"
        );
    }

    #[test]
    fn a_kept_reply_waits_for_the_backlog_entry_of_a_recipient_who_left() {
        let mut s = Sim::new();
        s.connect("a");
        s.send("a", "REGISTER alice password1");
        s.send("a", "REGISTER bob password2");
        s.send("a", "LOGIN alice password1");
        s.connect("b");
        s.send("b", "LOGIN bob password2");
        s.output("a");
        s.queue("a", "MSG bob are you there");
        s.drop_connection("b");
        s.step(); // the message's commit: bob has left, so a backlog entry is written next
        assert_eq!(
            s.output("a"),
            "",
            "an OK KEPT before the backlog entry is durable"
        );
        s.step(); // the backlog entry's commit
        assert_eq!(s.output("a"), "OK MSG 1 KEPT\n");
        assert_bob_has(&mut s, "alice bob are you there\nBACKLOG-END 1\n");
    }

    #[test]
    fn a_backlog_whose_connection_left_while_it_was_removed_is_kept_again() {
        let mut s = one_message_kept_for_bob();
        s.queue("b", "LOGIN bob password2");
        s.step(); // the password check; the backlog read is now queued
        s.step(); // the backlog read; the removal of its entries is now queued
        s.drop_connection("b");
        s.settle();
        assert_bob_still_has_the_kept_message(&mut s);
    }

    #[test]
    fn a_backlog_whose_connection_left_is_kept_for_the_next_login() {
        let mut s = one_message_kept_for_bob();
        s.queue("b", "LOGIN bob password2");
        s.step(); // the password check; the backlog read is now queued
        s.drop_connection("b");
        s.settle();
        assert_bob_still_has_the_kept_message(&mut s);
    }
}
