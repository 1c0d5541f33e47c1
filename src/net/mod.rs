//! The network shell around the core: listeners, per-connection tasks, and the task that owns the
//! core.
//!
//! Tasks and who owns what:
//! - one accept task per listener; a new connection gets its own task at once, so a slow client
//!   (or a TLS handshake) never holds up the accept loop;
//! - per connection one task that reads (one bounded line at a time, handed to the core after
//!   taking a credit from its outbox, at no more than the configured line rate) and writes (drains
//!   everything the outbox holds and sends it in one write), waiting with one waker for whichever
//!   can go on; no task ever waits on another client's socket;
//! - one core task owns the [`Core`](crate::core::Core); it takes events from readers and results
//!   from the store and hashing threads, and stops taking reader input while too many store ops
//!   are in flight;
//! - the store worker threads (group commit, and reads beside it) and the hashing threads, off the
//!   executor.
//!
//! Files: `server` starts everything, serves until told to stop, and shuts down; `driver` is the
//! core task, the production peer of the simulator in `sim.rs`; `conn` holds the accept loop and
//! the connection tasks; [`tls`] the TLS acceptor and handshake.

mod conn;
mod driver;
pub mod ops;
mod server;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use crate::peer::Network;

pub use server::{run, ServerError};

/// The size in bytes of each piece of a plain connection's state as this build lays them out (the
/// allocator's own bytes aside): its task's future and some of its parts, its outbox, the core's
/// entries for the connection and for an account. `chatd-bench --only idle` prints them beside the
/// memory it measures (docs/BENCHMARKS.md).
pub fn connection_sizes() -> Vec<(&'static str, usize)> {
    let mut v = conn::sizes();
    v.push(("outbox", crate::outbox::Outbox::shared_size()));
    v.extend(crate::core::entry_sizes());
    v
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Plain-TCP listen address; None for TLS only.
    pub listen: Option<String>,
    /// TLS listen address and where its certificate comes from.
    pub tls: Option<(String, TlsSource)>,
    /// IRC listen address (spec/IRC.md); None: no IRC port.
    pub irc_listen: Option<String>,
    /// IRC-over-TLS listen address, with the certificate of `tls`; None: none.
    pub irc_tls_listen: Option<String>,
    /// The password IRC clients without credentials log in with; None: they are refused.
    pub irc_default_password: Option<String>,
    /// The database file, created if missing.
    pub db: PathBuf,
    /// MiB that must stay free on the database's file system; below it writes stop until there is
    /// room again. 0: no reserve.
    pub min_free_disk_mib: u64,
    /// Most simultaneous connections; more are told `BYE SERVER_FULL`.
    pub max_connections: usize,
    /// Most simultaneous connections from one address; more are told `BYE TOO_MANY_CONNECTIONS`.
    /// 0: no limit.
    pub max_per_address: usize,
    /// Silence after which a connection is probed, and closed if it stays silent as long again.
    /// Zero: never.
    pub idle_timeout: Duration,
    /// Networks the per-address limits leave alone.
    pub exempt: Vec<Network>,
    /// Lines per second one connection may send before it is read more slowly.
    pub line_rate: u32,
    /// Lines one connection may send at once above the rate.
    pub line_burst: u32,
    /// Executor threads: they run the connections' tasks and the core's (at least one, this
    /// thread).
    pub io_threads: usize,
    /// Password-hashing threads.
    pub hash_threads: usize,
    /// Password hashes that may wait; past it REGISTER and LOGIN get `SERVER_BUSY`.
    pub hash_queue: usize,
    /// Password hashes one address may have queued or running; past it REGISTER and LOGIN get
    /// `RATE_LIMITED`. 0: no limit.
    pub hash_per_address: usize,
    /// Accounts one address may register per hour. 0: no limit.
    pub registrations_per_hour: u64,
    /// Messages one account may send per minute (an ALL counts 10). 0: no limit.
    pub msgs_per_minute: u64,
    /// KiB of messages one account may have stored per day. 0: no limit.
    pub stored_kib_per_day: u64,
    /// Messages from one sender that may wait in one offline user's inbox. 0: no limit beyond the
    /// inbox's own.
    pub inbox_share: u32,
    /// Friend requests one account may send per hour. 0: no limit.
    pub friend_requests_per_hour: u64,
    /// Connections that may be compressed at once (COMPRESS). 0: compression is off.
    pub max_compressed: usize,
    /// No message goes to its recipients before its commit (see `core::Settings`).
    pub deliver_after_commit: bool,
    /// scrypt cost of new password hashes, as log2(N).
    pub scrypt_log_n: u8,
    /// Most members of one room; JOIN beyond it gets `ROOM_FULL`.
    pub max_room_members: usize,
    /// Run as a node of a cluster sharing its store through NATS (`None`: the embedded database
    /// alone, the default).
    pub cluster: Option<crate::cluster::ClusterOptions>,
    /// Accounts that may use the operator commands.
    pub admins: Vec<crate::proto::name::Name>,
    /// REGISTER is refused; admins create accounts with ADDUSER.
    pub registration_closed: bool,
    /// Where to serve `/metrics` over HTTP, if anywhere.
    pub metrics_listen: Option<String>,
    /// A demo: the database is a fresh temporary file holding these accounts (name, password),
    /// deleted at exit; `db` is not used.
    pub demo: Option<Vec<(String, String)>>,
}

/// Where the TLS listener's certificate and key come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// These files (read again on [`Control::ReloadTls`]).
    Files(crate::tls::TlsFiles),
    /// A self-signed pair in this directory, generated at start if missing (see
    /// [`generate_self_signed`](crate::tls::generate_self_signed)); its fingerprint is logged.
    SelfSigned {
        /// The directory, usually the database's.
        dir: PathBuf,
    },
}

/// What the server is told from outside while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop: tell clients, flush the database, return.
    Stop,
    /// Re-read the TLS certificate and key.
    ReloadTls,
}
