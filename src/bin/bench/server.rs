//! The server under test: a child process on 127.0.0.1 with a fresh temporary database, or one
//! already running (`--addr`).
//!
//! By default the child is this same executable in server mode (see [`serve_child`]): it runs the
//! library's `net::run`, the code the `chatd` binary runs, so `cargo run --release --bin
//! chatd-bench` always measures the current source and never a stale `chatd` binary. `--server
//! PATH` runs a given `chatd` binary instead (for comparing builds). Either way the server is a
//! process of its own, so its memory and CPU can be read from `/proc` apart from the load
//! generator's.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chatd::config::DEFAULT_HASH_QUEUE;
use chatd::net::{self, Control, ServerOptions};

/// Set in the child's environment to the database path: the process then serves instead of
/// benchmarking.
pub const SERVE_ENV: &str = "CHATD_BENCH_SERVE_DB";
/// The child's connection limit.
const MAX_CONNECTIONS_ENV: &str = "CHATD_BENCH_MAX_CONNECTIONS";

/// scrypt cost of the benchmark server: cheap, since password hashing is not what is measured.
const SCRYPT_LOG_N: u8 = 4;
/// Line rate and burst of the benchmark server: high enough never to slow a benchmark client.
const LINE_RATE: u32 = 1_000_000;

/// How to get a server.
pub enum Launch {
    /// This executable in server mode.
    SelfExec,
    /// A `chatd` binary.
    Binary(PathBuf),
    /// A server already running at this address (with its process id, if known).
    External { addr: String, pid: Option<u32> },
}

/// A server the scenarios talk to.
pub struct Server {
    pub addr: String,
    /// Its process id, when memory and CPU can be read.
    pub pid: Option<u32>,
    child: Option<Child>,
    /// Closing it stops a self-exec child gracefully.
    stdin: Option<ChildStdin>,
    dir: Option<PathBuf>,
    /// Warnings and errors the server logged.
    complaints: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts (or attaches to) a server. `dir` holds the temporary database directory;
    /// `max_connections` must cover every connection the scenario opens.
    pub fn start(launch: &Launch, dir: &Path, max_connections: usize) -> Result<Server, String> {
        let (bin, self_exec) = match launch {
            Launch::External { addr, pid } => {
                return Ok(Server {
                    addr: addr.clone(),
                    pid: *pid,
                    child: None,
                    stdin: None,
                    dir: None,
                    complaints: Arc::default(),
                })
            }
            Launch::SelfExec => (
                std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
                true,
            ),
            Launch::Binary(p) => (p.clone(), false),
        };
        let db_dir = fresh_dir(dir)?;
        let db = db_dir.join("bench.redb");
        let mut cmd = Command::new(&bin);
        if self_exec {
            cmd.env(SERVE_ENV, &db)
                .env(MAX_CONNECTIONS_ENV, max_connections.to_string());
        } else {
            cmd.arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--db")
                .arg(&db)
                .arg("--scrypt-log-n")
                .arg(SCRYPT_LOG_N.to_string())
                .arg("--line-rate")
                .arg(LINE_RATE.to_string())
                .arg("--line-burst")
                .arg(LINE_RATE.to_string())
                .arg("--max-connections")
                .arg(max_connections.to_string())
                .args(["--exempt", LOAD_GENERATOR])
                .args(["--msgs-per-minute", "0", "--stored-kib-per-day", "0"]);
        }
        // A self-exec child stops when its stdin closes; a chatd binary does not read stdin.
        let stdin = if self_exec {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let complaints = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let kept = complaints.clone();
        // Drains the server's log for its whole life (a full pipe would stall the server).
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &addr_tx {
                    if let Some(a) = line.split("listening on ").nth(1) {
                        if !a.contains("(TLS)") {
                            let _ = tx.send(a.trim().to_owned());
                            addr_tx = None;
                        }
                    }
                }
                // The cheap scrypt cost is chosen here; its warning says nothing about the run.
                let expected = line.contains("--scrypt-log-n");
                if (line.contains(" WARN ") || line.contains(" ERROR ")) && !expected {
                    let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if k.len() < 20 {
                        k.push(line);
                    }
                }
            }
        });
        let pid = child.id();
        let stdin = child.stdin.take();
        let mut server = Server {
            addr: String::new(),
            pid: Some(pid),
            child: Some(child),
            stdin,
            dir: Some(db_dir),
            complaints,
        };
        match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => server.addr = a,
            Err(_) => {
                let seen = server.complaints();
                return Err(format!(
                    "the server did not report its address; it logged: {seen:?}"
                ));
            }
        }
        Ok(server)
    }

    /// Warnings and errors the server has logged so far.
    pub fn complaints(&self) -> Vec<String> {
        self.complaints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server's resident memory in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(super::system::rss_bytes)
    }

    /// The server's CPU time so far.
    pub fn cpu(&self) -> Option<Duration> {
        self.pid.and_then(super::system::cpu_time)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A self-exec child stops gracefully when its stdin closes; a chatd binary is killed
            // (its database is thrown away anyway).
            if self.stdin.take().is_none() {
                let _ = child.kill();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new empty directory under `parent`.
fn fresh_dir(parent: &Path) -> Result<PathBuf, String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!(
        "chatd-bench-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Where the load comes from: one address, which the per-address limits must leave alone or they
/// would be what gets measured.
const LOAD_GENERATOR: &str = "127.0.0.1";

/// Server mode of this executable: what `chatd --listen 127.0.0.1:0 --db DB --scrypt-log-n 4
/// --line-rate 1000000 --line-burst 1000000 --exempt 127.0.0.1` does, stopping when stdin closes
/// (so the server never outlives the benchmark).
pub fn serve_child(db: PathBuf) -> ExitCode {
    chatd::cli::init_logging(log::LevelFilter::Info, None);
    let max_connections = std::env::var(MAX_CONNECTIONS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(chatd::config::DEFAULT_MAX_CONNECTIONS);
    let (control_tx, control_rx) = async_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = control_tx.send_blocking(Control::Stop);
    });
    let opts = ServerOptions {
        cluster: None,
        listen: Some("127.0.0.1:0".into()),
        tls: None,
        irc_listen: None,
        irc_tls_listen: None,
        irc_default_password: None,
        db,
        min_free_disk_mib: chatd::config::DEFAULT_MIN_FREE_DISK_MIB,
        max_connections,
        max_per_address: chatd::config::DEFAULT_MAX_PER_ADDRESS,
        idle_timeout: Duration::from_secs(chatd::config::DEFAULT_IDLE_TIMEOUT_SECS),
        exempt: vec![LOAD_GENERATOR.parse().expect("a valid network")],
        line_rate: LINE_RATE,
        line_burst: LINE_RATE,
        io_threads: super::system::cores(),
        hash_threads: super::system::cores(),
        hash_queue: DEFAULT_HASH_QUEUE,
        hash_per_address: chatd::config::DEFAULT_HASH_PER_ADDRESS,
        registrations_per_hour: chatd::config::DEFAULT_REGISTRATIONS_PER_HOUR,
        // The benchmark sends as fast as it can: the quotas per account would be what gets
        // measured.
        msgs_per_minute: 0,
        stored_kib_per_day: 0,
        inbox_share: chatd::config::DEFAULT_INBOX_SHARE,
        friend_requests_per_hour: chatd::config::DEFAULT_FRIEND_REQUESTS_PER_HOUR,
        max_compressed: chatd::config::DEFAULT_MAX_COMPRESSED,
        deliver_after_commit: false,
        scrypt_log_n: SCRYPT_LOG_N,
        max_room_members: chatd::config::DEFAULT_MAX_ROOM_MEMBERS,
        admins: Vec::new(),
        registration_closed: false,
        metrics_listen: None,
        demo: None,
    };
    match net::run(opts, control_rx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
