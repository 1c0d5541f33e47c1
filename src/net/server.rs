//! Start-up and shutdown: [`run`] opens the database, binds the listeners, starts the threads and
//! tasks, serves until told to stop, then stops them in order.
//!
//! Shutdown, step by step: the accept loops stop; the core tells every client `BYE SHUTDOWN` and
//! finishes the store ops in flight; connections get [`SHUTDOWN_FLUSH`] to send what they had
//! queued (the wait ends as soon as the last one closes); then the executor threads stop, and the
//! store worker commits what is queued and closes the database.

use std::fmt;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use async_channel::Receiver;
use async_net::TcpListener;
use futures_lite::future;
use smol::{Executor, Timer};

use super::conn::{accept_loop, Connections, Ctx, Front};
use super::driver::core_loop;
use super::ops;
use super::{tls, Control, ServerOptions, TlsSource};
use crate::auth::{self, HashTask, Hasher, Phc};
use crate::cluster::{Bus, ClusterStore};
use crate::config::{
    CORE_QUEUE, LOG_SUMMARY_INTERVAL, MAX_STORE_INFLIGHT, SCRYPT_P, SCRYPT_R, SHUTDOWN_FLUSH,
};
use crate::core::entropy::Entropy;
use crate::core::{Core, Event, Limits, Policy, Settings};
use crate::metrics::Metrics;
use crate::store::redb::RedbStore;
use crate::store::worker::{self, StoreJob};
use crate::store::StoreError;
use crate::store::{Snapshot, Store};
use crate::tally::Tally;
use crate::tls::{generate_self_signed, TlsError, TlsFiles};

/// Why the server could not start, or had to stop.
#[derive(Debug)]
pub enum ServerError {
    /// The TLS certificate or key could not be loaded (or generated).
    Tls(TlsError),
    /// A listen address could not be bound.
    Listen {
        /// The address as given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The database could not be opened.
    Store(StoreError),
    /// The scrypt parameters are not valid.
    Scrypt(scrypt::errors::InvalidParams),
    /// A thread could not be started.
    Thread {
        /// What the thread is for.
        name: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The signal handlers could not be installed.
    Signals(io::Error),
    /// The store failed while serving; the message is the store's error.
    Storage(String),
    /// A part of the server stopped that must not (a bug).
    Internal(&'static str),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Tls(e) => e.fmt(f),
            ServerError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            ServerError::Store(e) => match e.advice() {
                Some(advice) => write!(f, "{e}; {advice}"),
                None => e.fmt(f),
            },
            ServerError::Scrypt(e) => write!(f, "bad scrypt parameters: {e}"),
            ServerError::Thread { name, source } => {
                write!(f, "cannot start the {name} thread: {source}")
            }
            ServerError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            ServerError::Storage(e) => write!(f, "storage failure: {e}"),
            ServerError::Internal(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Tls(e) => Some(e),
            ServerError::Listen { source, .. } | ServerError::Thread { source, .. } => Some(source),
            ServerError::Store(e) => Some(e),
            ServerError::Scrypt(e) => Some(e),
            ServerError::Signals(e) => Some(e),
            ServerError::Storage(_) | ServerError::Internal(_) => None,
        }
    }
}

/// Opens the database, binds the listeners and serves until told to stop. Returns an error for a
/// startup failure or a fatal storage failure.
pub fn run(opts: ServerOptions, control: Receiver<Control>) -> Result<(), ServerError> {
    // Certificates and addresses first: a mistake there should not leave a new database behind.
    let tls_cell = match &opts.tls {
        Some((_, source)) => Some(Arc::new(
            tls::TlsConfigCell::load(&tls_files(source)?).map_err(ServerError::Tls)?,
        )),
        None => None,
    };
    let plain = match &opts.listen {
        Some(a) => Some(bind(a)?),
        None => None,
    };
    let secure = match &opts.tls {
        Some((a, _)) => Some(bind(a)?),
        None => None,
    };
    let irc = match &opts.irc_listen {
        Some(a) => Some(bind(a)?),
        None => None,
    };
    let irc_secure = match &opts.irc_tls_listen {
        Some(a) => Some(bind(a)?),
        None => None,
    };
    let metrics_listener = match &opts.metrics_listen {
        Some(a) => Some(bind(a)?),
        None => None,
    };
    // Before the first hash (the dummy one just below): each hash's memory is unmapped after it
    // instead of staying in a hashing thread's heap.
    crate::heap::give_back_large_blocks();
    let hasher = Hasher::new(opts.scrypt_log_n, SCRYPT_R, SCRYPT_P).map_err(ServerError::Scrypt)?;

    // A demo runs on a fresh database of its own, removed at the end.
    let demo = match &opts.demo {
        Some(accounts) => Some(Demo::create(accounts, &hasher)?),
        None => None,
    };
    let db = demo.as_ref().map_or(opts.db.clone(), |d| d.db.clone());
    let (store, snapshot, bus): (Box<dyn Store>, Snapshot, Option<Bus>) = match &opts.cluster {
        None => {
            let (store, snapshot) = RedbStore::open(&db).map_err(ServerError::Store)?;
            let reserve = opts.min_free_disk_mib.saturating_mul(1024 * 1024);
            (Box::new(store.with_reserve(reserve)), snapshot, None)
        }
        Some(cluster) => {
            let (mut store, snapshot) =
                ClusterStore::open(cluster, &db).map_err(ServerError::Store)?;
            let bus = store.take_bus();
            (Box::new(store), snapshot, bus)
        }
    };
    log::info!(
        "database {}: {} accounts, {} rooms, next message id {}",
        db.display(),
        snapshot.accounts.len(),
        snapshot.rooms.len(),
        snapshot.next_id
    );
    let control_path = ops::control_path(&db);
    let control_socket =
        ops::bind_control(&control_path).map_err(|source| ServerError::Listen {
            addr: control_path.display().to_string(),
            source,
        })?;
    let metrics = Arc::new(Metrics::default());
    metrics.started_ms.store(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Ok(m) = std::fs::metadata(&db) {
        metrics
            .database_bytes
            .set(i64::try_from(m.len()).unwrap_or(i64::MAX));
    }
    let settings = Settings {
        hash_queue: opts.hash_queue,
        dummy_phc: Phc::parse(&hasher.dummy_phc()),
        version: env!("CARGO_PKG_VERSION"),
        entropy: Entropy::Os,
        cluster: opts.cluster.is_some(),
        deliver_after_commit: opts.deliver_after_commit,
        limits: Limits {
            idle_timeout_ms: i64::try_from(opts.idle_timeout.as_millis()).unwrap_or(i64::MAX),
            hash_per_address: opts.hash_per_address,
            registrations_per_hour: opts.registrations_per_hour,
            msgs_per_minute: opts.msgs_per_minute,
            stored_bytes_per_day: opts.stored_kib_per_day.saturating_mul(1024),
            inbox_share: opts.inbox_share,
            friend_requests_per_hour: opts.friend_requests_per_hour,
            max_room_members: opts.max_room_members,
            max_compressed: opts.max_compressed,
        },
        policy: Policy {
            admins: opts.admins.iter().map(|n| n.key()).collect(),
            registration_closed: opts.registration_closed,
        },
        metrics: metrics.clone(),
    };
    let core = Core::new(snapshot, settings);

    // Results of the store and hashing threads. Its capacity covers every job the core can have
    // outstanding, so those threads never wait on it.
    let (done_tx, done_rx) = async_channel::bounded(MAX_STORE_INFLIGHT + opts.hash_queue + 16);
    let (store_tx, store_rx) = async_channel::bounded::<StoreJob>(MAX_STORE_INFLIGHT);
    let (fresh_tx, fresh_rx) = async_channel::bounded(MAX_STORE_INFLIGHT);
    let store_done = done_tx.clone();
    let queues = worker::Queues {
        jobs: store_rx,
        fresh: fresh_rx,
    };
    let store_thread = worker::spawn(store, queues, move |r| {
        let _ = store_done.send_blocking(Event::Store(r));
    })
    .map_err(|source| ServerError::Thread {
        name: "store",
        source,
    })?;
    let (hash_tx, hash_rx) = async_channel::bounded::<(u64, HashTask)>(opts.hash_queue.max(1));
    let hash_done = done_tx;
    let hash_threads = auth::spawn_pool(
        hasher,
        opts.hash_threads,
        hash_rx,
        move |(ticket, outcome)| {
            let _ = hash_done.send_blocking(Event::Hashed { ticket, outcome });
        },
    )
    .map_err(|source| ServerError::Thread {
        name: "hashing",
        source,
    })?;

    let ex = Arc::new(Executor::new());
    let (events_tx, events_rx) = async_channel::bounded(CORE_QUEUE);
    // What other nodes say comes in with the connections' input (not with the results, whose
    // queue must always have room for the store and hashing threads).
    let bus_done = events_tx.clone();
    let ctx = Arc::new(Ctx {
        ex: ex.clone(),
        events: events_tx.clone(),
        next_conn: AtomicU64::new(1),
        connections: Arc::new(Connections::default()),
        max_connections: opts.max_connections,
        max_per_address: opts.max_per_address,
        exempt: opts.exempt.clone(),
        line_rate: opts.line_rate,
        line_burst: opts.line_burst,
        irc_default_password: opts.irc_default_password.clone(),
        tally: Mutex::new(Tally::default()),
    });

    // Executor threads (by default one per core), this thread included. If one cannot be started,
    // dropping `stop_tx` on the way out stops those that were.
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let workers = (1..opts.io_threads.max(1))
        .map(|i| {
            let (ex, stop) = (ex.clone(), stop_rx.clone());
            std::thread::Builder::new()
                .name(format!("chatd-io-{i}"))
                .spawn(move || smol::block_on(ex.run(stop.recv())))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ServerError::Thread {
            name: "executor",
            source,
        })?;

    if let Some(l) = &metrics_listener {
        log::info!("metrics at http://{}/metrics", local(l));
    }
    log::info!("control socket {} (chatd backup)", control_path.display());
    if let Some(d) = &demo {
        d.announce();
    }
    // Announced last: once this line is logged the server is ready (tests wait for it).
    if let Some(l) = &plain {
        log::info!("listening on {}", local(l));
    }
    if let Some(l) = &secure {
        log::info!("listening on {} (TLS)", local(l));
    }
    if let Some(l) = &irc {
        log::info!("listening on {} (IRC)", local(l));
    }
    if let Some(l) = &irc_secure {
        log::info!("listening on {} (IRC, TLS)", local(l));
    }

    let result = smol::block_on(ex.run(async {
        let (bus_out, bus_in) = match bus {
            Some(b) => (Some(b.out), Some(b.inbound)),
            None => (None, None),
        };
        // What the other nodes say, to the core.
        let _bus_task = bus_in.map(|inbound| {
            let done = bus_done.clone();
            ex.spawn(async move {
                while let Ok(news) = inbound.recv().await {
                    if done.send(Event::Bus(news)).await.is_err() {
                        return;
                    }
                }
            })
        });
        let mut core_task = ex.spawn(core_loop(
            core, events_rx, done_rx, store_tx, fresh_tx, hash_tx, bus_out,
        ));
        let mut accepts = Vec::new();
        if let Some(l) = plain {
            accepts.push(ex.spawn(accept_loop(l, ctx.clone(), None, Front::Chatd)));
        }
        if let Some(l) = secure {
            let tls = tls_cell.clone();
            accepts.push(ex.spawn(accept_loop(l, ctx.clone(), tls, Front::Chatd)));
        }
        if let Some(l) = irc {
            accepts.push(ex.spawn(accept_loop(l, ctx.clone(), None, Front::Irc)));
        }
        if let Some(l) = irc_secure {
            let tls = tls_cell.clone();
            accepts.push(ex.spawn(accept_loop(l, ctx.clone(), tls, Front::Irc)));
        }
        if let Some(l) = metrics_listener {
            accepts.push(ex.spawn(ops::serve_metrics(l, metrics.clone(), ex.clone())));
        }
        accepts.push(ex.spawn(ops::serve_control(
            control_socket,
            events_tx.clone(),
            ex.clone(),
        )));
        // The network's repeated events, summarised as the core's are.
        let summaries = {
            let ctx = ctx.clone();
            ex.spawn(async move {
                loop {
                    Timer::after(LOG_SUMMARY_INTERVAL).await;
                    let line = ctx
                        .tally
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .summary();
                    if let Some(line) = line {
                        log::info!("in the last {} s: {line}", LOG_SUMMARY_INTERVAL.as_secs());
                    }
                }
            })
        };
        let stop = async {
            while let Ok(Control::ReloadTls) = control.recv().await {
                match &tls_cell {
                    Some(cell) => match cell.reload() {
                        Ok(()) => log::info!("TLS certificate reloaded"),
                        Err(e) => {
                            log::error!("TLS certificate not reloaded, keeping the old one: {e}")
                        }
                    },
                    None => log::info!("no TLS listener; nothing to reload"),
                }
            }
            log::info!("stopping: no new connections; telling clients");
            None
        };
        // The core task ends by itself only on a fatal store error.
        let early = future::or(async { Some((&mut core_task).await) }, stop).await;
        drop(accepts);
        drop(summaries);
        let outcome = match early {
            Some(r) => r,
            None => {
                let _ = events_tx.send(Event::Shutdown).await;
                drop(events_tx);
                // The core runs until every store op in flight has finished; see core_loop.
                core_task.await
            }
        };
        // Give writers a moment to send BYE and what was queued before it.
        future::or(ctx.connections.all_closed(), async {
            Timer::after(SHUTDOWN_FLUSH).await;
        })
        .await;
        outcome
    }));
    drop(stop_tx);
    for w in workers {
        let _ = w.join();
    }
    // The core dropped the job senders: the store thread commits what is queued and exits.
    let _ = store_thread.join();
    for h in hash_threads {
        let _ = h.join();
    }
    let _ = std::fs::remove_file(&control_path);
    drop(demo);
    log::info!("stopped");
    result
}

/// The temporary database of `--demo`, removed (with its directory) when dropped.
struct Demo {
    dir: std::path::PathBuf,
    db: std::path::PathBuf,
    accounts: Vec<(String, String)>,
}

impl Demo {
    /// A new directory under the system's temporary directory, with a database holding
    /// `accounts` (name, password). The passwords need not follow the password rules: the accounts
    /// are made here, not by REGISTER.
    fn create(accounts: &[(String, String)], hasher: &Hasher) -> Result<Demo, ServerError> {
        use crate::auth::{HashJob, HashOutcome};
        use crate::proto::name::Password;
        use crate::store::{AccountRecord, Store, StoreOp};
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("chatd-demo-{}-{stamp}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|source| ServerError::Listen {
            addr: dir.display().to_string(),
            source,
        })?;
        let demo = Demo {
            db: dir.join("chatd.redb"),
            dir,
            accounts: accounts.to_vec(),
        };
        let (mut store, _) = RedbStore::open(&demo.db).map_err(ServerError::Store)?;
        let mut ops = Vec::new();
        for (name, password) in accounts {
            let HashOutcome::Hashed(phc) =
                hasher.run(&HashJob::Hash(Password::unchecked(password)))
            else {
                return Err(ServerError::Internal("hashing a demo password failed"));
            };
            ops.push(StoreOp::CreateAccount(AccountRecord {
                name: name.clone(),
                phc,
                created_ms: 0,
            }));
        }
        store.write(&ops).map_err(ServerError::Store)?;
        Ok(demo)
    }

    /// Says, loudly, that this is a demo.
    fn announce(&self) {
        let accounts: Vec<String> = self
            .accounts
            .iter()
            .map(|(n, p)| format!("{n}/{p}"))
            .collect();
        for line in [
            "*****************************************************************".to_owned(),
            "DEMO MODE: a throw-away server for a first tour, not for real use.".to_owned(),
            format!(
                "Its database {} is deleted when it stops.",
                self.db.display()
            ),
            format!("Log in as {} (name/password).", accounts.join(", ")),
            "*****************************************************************".to_owned(),
        ] {
            log::warn!("{line}");
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The certificate files to serve, generating a self-signed pair first if asked to.
fn tls_files(source: &TlsSource) -> Result<TlsFiles, ServerError> {
    match source {
        TlsSource::Files(files) => Ok(files.clone()),
        TlsSource::SelfSigned { dir } => {
            let (files, fingerprint) = generate_self_signed(dir).map_err(ServerError::Tls)?;
            log::info!(
                "TLS certificate {} (key {}), SHA-256 fingerprint {fingerprint}",
                files.cert.display(),
                files.key.display()
            );
            Ok(files)
        }
    }
}

fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    let listen_error = |source| ServerError::Listen {
        addr: addr.to_owned(),
        source,
    };
    let std = std::net::TcpListener::bind(addr).map_err(listen_error)?;
    TcpListener::try_from(std).map_err(listen_error)
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}
