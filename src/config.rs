//! Every protocol limit and server default in one place.
//!
//! The protocol's limits are normative: `spec/PROTOCOL.md` states each of them, and the tests
//! exercise each one at its boundary; they are constants because clients depend on them. The
//! `DEFAULT_*` values are defaults of settings an operator may change with a flag (see
//! [`cli`](crate::cli)); the rest tune the server itself.

use std::time::Duration;

/// Longest accepted line in bytes, not counting the LF (or CRLF) that ends it.
pub const MAX_LINE_BYTES: usize = 4096;
/// Longest account name, in characters (names are ASCII).
pub const MAX_NAME_LEN: usize = 32;
/// Shortest accepted password in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest accepted password in bytes.
pub const MAX_PASSWORD_BYTES: usize = 128;
/// Longest message text in bytes (UTF-8).
pub const MAX_TEXT_BYTES: usize = 2048;
/// Most recipients of one GROUP message.
pub const MAX_GROUP_RECIPIENTS: usize = 50;
/// Longest client label (`@label`), in characters.
pub const MAX_LABEL_LEN: usize = 32;
/// Longest PING token in bytes.
pub const MAX_PING_TOKEN_BYTES: usize = 64;
/// HISTORY count when none is given.
pub const HISTORY_DEFAULT_COUNT: u32 = 50;
/// Largest HISTORY count.
pub const HISTORY_MAX_COUNT: u32 = 500;
/// Most messages one account may have waiting for offline delivery.
pub const MAX_PENDING_PER_ACCOUNT: u32 = 1000;
/// Longest device token label in bytes (UTF-8).
pub const MAX_TOKEN_LABEL_BYTES: usize = 64;
/// Most device tokens one account may hold; TOKEN beyond it is refused (TOO_MANY_TOKENS).
pub const MAX_TOKENS_PER_ACCOUNT: usize = 20;
/// A device token expires when it has not been used for this long (milliseconds: 30 days).
pub const TOKEN_IDLE_LIFETIME_MS: i64 = 30 * DAY_MS;
/// ... and in any case this long after it was issued, however often it is used (180 days).
pub const TOKEN_MAX_LIFETIME_MS: i64 = 180 * DAY_MS;
/// A token's last use is written to disk at most this often (one hour): a reconnect storm of
/// RESUMEs reads memory and writes nothing. The sliding lifetime is measured from the last use
/// in memory, so the granularity only shows after a restart.
pub const TOKEN_TOUCH_INTERVAL_MS: i64 = 60 * 60 * 1000;
/// One day in milliseconds, for the lifetimes above.
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest away message in bytes (UTF-8).
pub const MAX_AWAY_BYTES: usize = 200;
/// When an account goes offline, its last-seen time is written to disk only if the time on disk is
/// at least this old (ten minutes): a wave of disconnections writes little, and after a restart
/// last seen is at most this early.
pub const LAST_SEEN_WRITE_INTERVAL_MS: i64 = 10 * 60 * 1000;
/// Most admin accounts the server may be given (`--admin`, repeated).
pub const MAX_ADMINS: usize = 64;
/// The accounts a demo server starts with, and their passwords (`--demo`): a first-run tour.
/// These passwords are shorter than the password rule allows, which only demo mode accepts.
pub const DEMO_ACCOUNTS: &[(&str, &str)] = &[
    ("alice", "alice123"),
    ("bob", "bob123"),
    ("charlie", "charlie123"),
];
/// Most accounts one account may block; BLOCK beyond it is refused (TOO_MANY_BLOCKS).
pub const MAX_BLOCKS_PER_ACCOUNT: usize = 1000;
/// Default share of one sender in one recipient's offline inbox: messages from one sender waiting
/// for one offline user; beyond it MSG/GROUP get INBOX_SHARE_FULL, so that one sender cannot fill
/// someone's inbox for everyone.
pub const DEFAULT_INBOX_SHARE: u32 = 100;
/// Default messages per minute per account (a bucket: this many at once, then one every 60/N s);
/// beyond it MSG/GROUP/ALL get TOO_MANY_MESSAGES.
pub const DEFAULT_MSGS_PER_MINUTE: u64 = 60;
/// What an ALL counts against the messages per minute: it goes to everyone online.
pub const ALL_MESSAGE_WEIGHT: u64 = 10;
/// Default bytes one account may have stored per day, in KiB (a bucket: the whole day's amount at
/// once, refilled over 24 hours); beyond it MSG/GROUP/ALL get QUOTA_EXCEEDED.
pub const DEFAULT_STORED_KIB_PER_DAY: u64 = 8 * 1024;
/// Bytes a stored message counts beyond its text: its record's header.
pub const STORED_MESSAGE_OVERHEAD_BYTES: u64 = 128;
/// Bytes a stored message counts per recipient (an ALL counts one): its index entries.
pub const STORED_BYTES_PER_RECIPIENT: u64 = 32;
/// Default friend requests per account per hour (a bucket); beyond it FRIEND ADD gets
/// TOO_MANY_REQUESTS.
pub const DEFAULT_FRIEND_REQUESTS_PER_HOUR: u64 = 20;
/// Most friends and friend requests (both ways) one account may have; a FRIEND ADD that would
/// take either side past it gets TOO_MANY_FRIENDS.
pub const MAX_RELATIONS_PER_ACCOUNT: usize = 1000;
/// Longest room name after its `#`, in characters (names are ASCII).
pub const MAX_ROOM_NAME_LEN: usize = 32;
/// Most rooms one account may be a member of (a room it creates counts).
pub const MAX_ROOMS_PER_ACCOUNT: usize = 100;
/// Default most members of one room (an operator setting, `--max-room-members`).
pub const DEFAULT_MAX_ROOM_MEMBERS: usize = 5_000;
/// Most accounts on one room's ban list.
pub const MAX_BANS_PER_ROOM: usize = 100;
/// Most invitations one room may have waiting.
pub const MAX_INVITES_PER_ROOM: usize = 100;
/// Most invitations one account may have waiting, from all rooms together.
pub const MAX_INVITES_PER_ACCOUNT: usize = 100;
/// How long an invitation stays valid, in milliseconds: 7 days.
pub const INVITE_LIFETIME_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Longest room topic in bytes (UTF-8).
pub const MAX_TOPIC_BYTES: usize = 300;
/// Longest reason of a PART, KICK, BAN, SUSPEND or KILL, in bytes (UTF-8).
pub const MAX_REASON_BYTES: usize = 300;
/// Most of a room's latest messages a JOIN answers with.
pub const JOIN_REPLAY: u32 = 20;
/// Most public rooms ROOMS lists besides the caller's own (the ones with the most members).
pub const ROOMS_LISTED_PUBLIC: usize = 500;
/// Most commands of one connection that may be read but not yet answered; the server stops reading
/// the connection's socket until answers go out (backpressure, nothing is lost).
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 64;
/// Bytes a connection's outbox may hold; beyond it the client is a slow consumer and is disconnected.
pub const OUTBOX_LIMIT_BYTES: usize = 1024 * 1024;
/// A long answer (a HISTORY page, a login's backlog, USERS) is queued part by part: the next part
/// only while the connection's outbox holds less than this, so an answer never takes more memory
/// than this and one part, whatever its size and however slowly the client reads.
pub const ANSWER_LOW_WATER: usize = 32 * 1024;
/// Messages per part of a long HISTORY page or backlog (at most 16 lines of 4 KiB).
pub const ANSWER_PART_MESSAGES: usize = 16;
/// Names per part of a long USERS answer.
pub const ANSWER_PART_USERS: usize = 256;

// ----- the IRC front end (spec/IRC.md) -----

/// The server name IRC lines come from, and the host part of every user's source
/// (`alice!alice@chatd`).
pub const IRC_SERVER_NAME: &str = "chatd";
/// The host part of a user's source.
pub const IRC_HOST: &str = "chatd";
/// Most bytes of an IRC line without its tags, CR LF included (Modern IRC: 512). Longer messages
/// to IRC clients are split; longer lines from them are refused with 417.
pub const IRC_MAX_LINE_BYTES: usize = 512;
/// Most bytes of the tags of a line from a client (message-tags: 4096 with the `@` and the space).
pub const IRC_MAX_TAG_BYTES: usize = 4094;
/// Most bytes of one line read from an IRC client: the line and its tags, with `@`, spaces and
/// CR LF.
pub const IRC_MAX_INPUT_BYTES: usize = IRC_MAX_LINE_BYTES + IRC_MAX_TAG_BYTES + 2;
/// Most parameters of an IRC message (Modern IRC: 15).
pub const IRC_MAX_PARAMS: usize = 15;
/// Most rooms one JOIN or PART names (the rest of the list is ignored).
pub const IRC_MAX_TARGETS: usize = 10;
/// Most unread messages of one room replayed to an IRC client at login (the rest: CHATHISTORY).
pub const IRC_CATCH_UP: u32 = 50;
/// The length of a full AUTHENTICATE chunk: a chunk this long means more follows (IRCv3 SASL).
pub const IRC_SASL_CHUNK: usize = 400;
/// Most bytes held for an IRC client between a SASL login and the end of its registration (its
/// offline backlog, rendered); past it the rest is dropped from the connection, not from HISTORY.
pub const IRC_MAX_HELD_BYTES: usize = OUTBOX_LIMIT_BYTES;
/// DEFLATE level of compressed connections (`COMPRESS DEFLATE`, spec 4.38): zlib's default, a
/// good ratio for chat text at a CPU cost that docs/BENCHMARKS.md measures.
pub const DEFLATE_LEVEL: u32 = 6;
/// Bytes inflated at a time from a compressed connection before its lines are framed: however
/// much a few compressed bytes expand, the server holds no more than this of them at once.
pub const INFLATE_CHUNK: usize = 1024;
/// Default most connections compressed at once (each holds its DEFLATE state, about 250 KiB; see
/// the spec's limits); beyond it COMPRESS gets SERVER_BUSY. 0 turns compression off.
pub const DEFAULT_MAX_COMPRESSED: usize = 1000;

/// How long a DIRECT offer waits for its answer, in seconds (spec 4.39); then both sides are told
/// it expired.
pub const DIRECT_OFFER_SECS: u64 = 60;
/// Most DIRECT offers one account may have waiting for an answer; beyond it DIRECT OFFER gets
/// TOO_MANY_OFFERS.
pub const MAX_OFFERS_OUT: usize = 8;
/// Most DIRECT offers that may wait for one account's answer; beyond it DIRECT OFFER to that
/// account gets TOO_MANY_OFFERS.
pub const MAX_OFFERS_IN: usize = 32;

/// Default plain-TCP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Default database file (relative to the working directory).
pub const DEFAULT_DB: &str = "chatd.redb";
/// Default connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default limit of connections from one address (an IPv4 address or an IPv6 /64), so that one
/// source cannot take every connection slot. The same default as Ergo's `max-concurrent-connections`.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 16;
/// Default idle timeout in seconds: a connection silent this long (no line read, no answer owed)
/// is sent an idle probe, and closed with `BYE IDLE_TIMEOUT` if it stays silent as long again.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 120;
/// How often the counts of repeated events (connections, failed logins, refusals) are written to
/// the log as one line; the single events are logged at `debug` only, so no client can flood the
/// log.
pub const LOG_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// How often the core looks at the clock by itself (idle connections, periodic log summaries,
/// forgetting expired limits) when nothing else happens.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// Default sustained line rate per connection (lines per second).
pub const DEFAULT_LINE_RATE: u32 = 200;
/// Default line burst per connection.
pub const DEFAULT_LINE_BURST: u32 = 400;
/// Time a TLS client has to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a client may make no progress before the connection is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// After a client closes its sending side, how long its unanswered commands may take.
pub const DRAIN_AFTER_EOF: Duration = Duration::from_secs(30);
/// Bytes read from a socket at a time (the only per-connection read buffer).
pub const READ_CHUNK: usize = 512;
/// Lines waiting in the core's input queue before readers wait.
///
/// Readers that find it full wait in no fixed order: a reader that runs takes the room the core
/// just made before one that was woken for it gets there. So it is sized to be full only when the
/// core has fallen far behind: a thousand clients with ten commands each in flight, while the
/// store holds [`MAX_STORE_INFLIGHT`] of them, leave about 3,000 here, and with 1,024 some of their
/// messages waited ten times as long as most. Its slots are made when the server starts, about
/// 170 bytes each (2.7 MB).
pub const CORE_QUEUE: usize = 16_384;
/// After the shutdown notice, how long writers get to flush.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// Password hashes that may wait for a hashing thread; beyond it LOGIN/REGISTER get SERVER_BUSY.
pub const DEFAULT_HASH_QUEUE: usize = 256;
/// Password hashes one address may have queued or running at once; beyond it LOGIN/REGISTER get
/// RATE_LIMITED. With 2 hashing threads, a LOGIN from elsewhere then waits behind at most this many
/// hashes per attacking address instead of a full queue.
pub const DEFAULT_HASH_PER_ADDRESS: usize = 4;
/// Accounts one address may register per hour (a bucket: this many at once, then one every
/// 3600/N seconds); beyond it REGISTER gets RATE_LIMITED.
pub const DEFAULT_REGISTRATIONS_PER_HOUR: u64 = 10;
/// Failed logins from one address that cost nothing; each further one doubles the wait before the
/// next attempt from that address is let through.
pub const LOGIN_FREE_FAILURES_PER_ADDRESS: u32 = 5;
/// Failed logins for one account name, from anywhere, that cost nothing; each further one doubles
/// the wait before the next attempt for that name is let through (except from the addresses the
/// account last logged in from, see [`KNOWN_ADDRESSES_PER_ACCOUNT`]).
pub const LOGIN_FREE_FAILURES_PER_ACCOUNT: u32 = 10;
/// The wait after the first failed login past the free ones; it doubles with each further failure.
pub const LOGIN_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two login attempts, however many failed: an attacker gets about one
/// guess a minute, and the owner of an account under attack is never locked out for longer.
pub const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long failed logins are remembered after the last one; past it, the count starts again.
pub const LOGIN_FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered per account (in memory, since the server started) as where it logged in
/// successfully; logins from them skip the account's back-off, so an attack on an account from
/// elsewhere does not lock its owner out.
pub const KNOWN_ADDRESSES_PER_ACCOUNT: usize = 8;
/// Most account names with failed logins remembered at once (their own back-off); past it the
/// oldest are forgotten. Bounds the memory an attacker trying random names can use.
pub const MAX_TRACKED_NAMES: usize = 100_000;
/// Most addresses with login state remembered at once (hashes in flight, failures, registrations);
/// past it those with nothing in flight are forgotten, oldest first.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;
/// Most store operations in one commit.
pub const MAX_STORE_BATCH: usize = 1024;
/// Most store operations queued or in flight before the core stops taking new input.
pub const MAX_STORE_INFLIGHT: usize = 8192;
/// Message ids reserved at a time before messages are delivered ahead of their commit (spec 6.1,
/// 6.2): a new reservation is committed when fewer than half are left, and a crash skips at most
/// this many ids.
pub const ID_RESERVE_BLOCK: u64 = 65_536;
/// After a failed write, how long the store worker waits before it tries again; the wait doubles
/// with each failure, up to [`STORE_RETRY_MAX`].
pub const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a failing write.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often an idle store worker checks that a write could be made (the disk reserve), so that a
/// disk filling up is noticed before a write meets it.
pub const STORE_IDLE_CHECK: Duration = Duration::from_secs(1);
/// Default free disk space, in MiB, that the database's file system must keep: below it writes
/// stop (STORAGE_UNAVAILABLE) and resume by themselves once there is room again. More than a full
/// commit can need (1024 ops of at most a few KiB, and redb's copied pages).
pub const DEFAULT_MIN_FREE_DISK_MIB: u64 = 64;
/// Production scrypt cost: log2(N). About 100 ms per hash on one core.
pub const SCRYPT_LOG_N: u8 = 15;
/// Production scrypt block size r.
pub const SCRYPT_R: u32 = 8;
/// Production scrypt parallelism p.
pub const SCRYPT_P: u32 = 1;
/// Longest HELP data line in bytes, `HELP ` prefix included, LF excluded. Short enough to read in a
/// terminal and far below the protocol's line limit.
pub const MAX_HELP_LINE_BYTES: usize = 200;
/// Blocks of at least this many bytes get a mapping of their own from glibc's malloc, unmapped when
/// freed (its starting threshold, held fixed: see `heap`), so that a password hash's working memory
/// (1 MiB at `--scrypt-log-n 10`) goes back to the system after each hash.
pub const HEAP_MMAP_THRESHOLD: usize = 128 * 1024;
/// Memory the database may use to cache its pages (redb's own default is 1 GiB). The cache fills
/// as the database is read, so without a bound the server's resident memory would grow with the
/// database file; past it, pages are read from the file (the operating system's page cache).
pub const STORE_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Messages the durable store writes past its conversation index's watermark before it indexes
/// them, all at once, one row per conversation (see `store::conv_index`). A larger lag makes the
/// rows longer and the index cheaper per message; a HISTORY read scans the messages past the
/// watermark (fewer than this many: the list is indexed as soon as it reaches it, also inside a
/// commit), and the writer keeps one small entry per message of them in memory.
pub const INDEX_LAG: usize = 4096;
/// Cluster mode: publish requests that may wait for the NATS thread (each is one store batch; the
/// store worker sends one at a time, so one is enough and a few leave room).
pub const CLUSTER_REQUEST_QUEUE: usize = 4;
/// Cluster mode: log entries read from NATS and not yet applied to the node's index; past it the
/// reader waits (the ordered consumer's flow control holds the rest on the NATS server).
pub const CLUSTER_FEED_QUEUE: usize = 4096;
/// Cluster mode: most log entries applied to the node's index in one write transaction.
pub const CLUSTER_APPLY_BATCH: usize = 1024;
/// Cluster mode: how long a write waits for its own acknowledged entries to come back through the
/// log before it counts as failed (and is tried again, with the same entry ids).
pub const CLUSTER_LOG_WAIT: Duration = Duration::from_secs(10);
/// Cluster mode: how long a write waits for its own acknowledged entries before the node's log
/// reader opens its consumer again (one lost with a NATS server), while the write goes on waiting
/// up to [`CLUSTER_LOG_WAIT`].
pub const CLUSTER_LOG_NUDGE: Duration = Duration::from_secs(2);
/// Cluster mode: how many rooms whose creation lost its name to another node's a node remembers,
/// to refuse the ops of the same batch (and of its retries) on them. A race is lost in a batch
/// and its retries, so the most recent few suffice; the oldest is forgotten past this.
pub const CLUSTER_LOST_ROOMS_KEPT: usize = 256;
/// Cluster mode: how often a node writes its heartbeat (and tries again the presence entries it
/// could not write).
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(2);
/// Cluster mode: a node whose last heartbeat is this old is taken for dead, and its users offline
/// (also the heartbeat bucket's maximum age).
pub const PRESENCE_EXPIRY: Duration = Duration::from_secs(6);
/// Cluster mode: the maximum age of an entry of the presence bucket. A node writes an entry when
/// one of its accounts comes online and deletes it when it goes offline; a crashed node's entries
/// (and the delete markers) leave the bucket after this long, and a node forgets a dead node this
/// long after its last heartbeat.
pub const PRESENCE_ENTRY_AGE: Duration = Duration::from_secs(3600);
/// Cluster mode: a node writes again each of its presence entries this long after it last wrote
/// it, so that an account online longer than [`PRESENCE_ENTRY_AGE`] keeps its entry.
pub const PRESENCE_RENEW: Duration = Duration::from_secs(1800);
/// Cluster mode: at start, how long a node waits to have read the presence buckets before it
/// serves (past it, it serves, and the rest of the presence comes in meanwhile).
pub const PRESENCE_START_WAIT: Duration = Duration::from_secs(5);
/// Cluster mode: words waiting between the core and the NATS thread, each way (presence changes
/// and subscriptions out, presence and routed messages in).
pub const CLUSTER_BUS_QUEUE: usize = 4096;
/// Cluster mode: (message, account) pairs a node remembers having delivered by route, so that a
/// second copy, or the log entry applied after the route came, is not delivered or counted again;
/// past it the oldest are forgotten (by then their log entries have long been applied).
pub const ROUTE_MEMORY: usize = 8192;
/// Cluster mode: how long after its index applied a message kept for an account online on this
/// node the node waits for the message's route before it delivers the message itself (the route
/// was published before this node's subscription reached NATS).
pub const ROUTE_FALLBACK: Duration = Duration::from_secs(1);
/// Cluster mode: most messages waiting for [`ROUTE_FALLBACK`]; past it the oldest is delivered at
/// once.
pub const ROUTE_AWAITING: usize = 4096;
/// Cluster mode: at start, how many times (a second apart) a node tries to open the log stream
/// while a NATS cluster that has just started elects its JetStream leaders.
pub const CLUSTER_START_TRIES: u32 = 20;
/// The durable store writes new messages in blocks, several consecutive records in one row of its
/// log (see `store::msg_log`), closed before they would grow past this many bytes (a record larger
/// than it makes a block of its own). A commit of many messages is then a few inserts instead of
/// one per message; reading one message reads its whole block, so this bounds what a scattered
/// read (a backlog, a page) costs per message.
pub const MESSAGE_BLOCK_BYTES: usize = 4 * 1024;
