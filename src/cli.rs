//! The command line. `chatd` runs the server; `chatd --connect HOST:PORT` runs the bundled client;
//! `chatd backup`, `chatd check`, `chatd health` and `chatd adduser` are the operator's tools.
//!
//! [`Args`] is what argh parses; [`ServerOptions::try_from`] checks that the server's options fit
//! together, so the binary only dispatches. Every option may also come from the environment
//! (`CHATD_LISTEN` for `--listen`, ...): [`with_env`] merges the environment into the arguments,
//! in this one place, before argh sees them; what the command line says wins.

use std::fmt;
use std::path::PathBuf;

use argh::FromArgs;
use log::LevelFilter;

use crate::client::ClientOptions;
use crate::config::{
    DEFAULT_DB, DEFAULT_FRIEND_REQUESTS_PER_HOUR, DEFAULT_HASH_PER_ADDRESS, DEFAULT_HASH_QUEUE,
    DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_INBOX_SHARE, DEFAULT_LINE_BURST, DEFAULT_LINE_RATE,
    DEFAULT_LISTEN, DEFAULT_MAX_COMPRESSED, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS,
    DEFAULT_MAX_ROOM_MEMBERS, DEFAULT_MIN_FREE_DISK_MIB, DEFAULT_MSGS_PER_MINUTE,
    DEFAULT_REGISTRATIONS_PER_HOUR, DEFAULT_STORED_KIB_PER_DAY, DEMO_ACCOUNTS, MAX_ADMINS,
    SCRYPT_LOG_N,
};
use crate::net::{ServerOptions, TlsSource};
use crate::peer::Network;
use crate::proto::name::Name;
use crate::tls::TlsFiles;

/// Lowest `--scrypt-log-n` accepted.
pub const MIN_SCRYPT_LOG_N: u8 = 1;
/// Highest `--scrypt-log-n` accepted.
pub const MAX_SCRYPT_LOG_N: u8 = 20;
/// Below this `--scrypt-log-n` the server warns that hashes are cheap to crack.
pub const WEAK_SCRYPT_LOG_N: u8 = 14;

#[derive(FromArgs, Debug)]
/// chatd: a small, durable chat server with a plain-text line protocol (try `nc 127.0.0.1 7878`).
/// Without --connect it runs the server; with --connect it is an interactive client.
#[argh(
    note = "With --connect, the client is interactive when stdin and stdout are terminals; otherwise it \
            reads commands from stdin (the same /commands, `//LINE` sends LINE as is), writes every \
            server line to stdout unchanged, and exits once stdin has ended and every command is answered.

Every option can also be set from the environment: CHATD_ and the option's name in capitals with _ \
for - (CHATD_LISTEN=0.0.0.0:7878, CHATD_DB=/data/chatd.redb, CHATD_TLS_GENERATE=1). A switch is on \
when its variable is 1, true or yes; a repeatable option (--admin, --exempt) takes a comma-separated \
list. An option given on the command line wins over its variable. The subcommands read CHATD_DB.",
    error_code(0, "server: stopped cleanly; --connect: every command sent was answered"),
    error_code(1, "server: could not start; --connect: could not connect (address, TCP, TLS, certificate, server full)"),
    error_code(2, "--connect without a terminal: a REGISTER or LOGIN failed"),
    error_code(3, "--connect without a terminal: the connection was lost before every command was answered"),
    error_code(4, "--connect without a terminal: an input line was not understood and was not sent"),
    error_code(5, "--connect without a terminal: a direct session could not be set up, or broke")
)]
pub struct Args {
    /// plain-TCP listen address (default 127.0.0.1:7878)
    #[argh(option, default = "DEFAULT_LISTEN.to_owned()")]
    pub listen: String,

    /// do not open the plain-TCP listener: serve TLS only (needs --tls-listen)
    #[argh(switch)]
    pub no_plain: bool,

    /// database file, created if missing (default ./chatd.redb)
    #[argh(option, default = "PathBuf::from(DEFAULT_DB)")]
    pub db: PathBuf,

    /// mebibytes that must stay free on the database's disk: below it new writes are refused
    /// (STORAGE_UNAVAILABLE) until there is room again; 0: no reserve (default 64)
    #[argh(option, default = "DEFAULT_MIN_FREE_DISK_MIB")]
    pub min_free_disk: u64,

    /// TLS listen address, e.g. 127.0.0.1:7879 (default: no TLS listener)
    #[argh(option)]
    pub tls_listen: Option<String>,

    /// IRC listen address, e.g. 127.0.0.1:6667: IRC clients log in to chatd accounts there
    /// (default: no IRC listener; spec/IRC.md)
    #[argh(option)]
    pub irc_listen: Option<String>,

    /// IRC-over-TLS listen address, e.g. 127.0.0.1:6697, with the certificate of --tls-listen
    /// (default: none)
    #[argh(option)]
    pub irc_tls_listen: Option<String>,

    /// IRC clients that send neither SASL nor PASS log in as their nick with this password: for
    /// load generators that speak bare IRC; never on a server with real users (default: none,
    /// such clients are refused)
    #[argh(option)]
    pub irc_default_password: Option<String>,

    /// PEM certificate chain for the TLS listener (reloaded on SIGHUP)
    #[argh(option)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for the TLS listener (reloaded on SIGHUP)
    #[argh(option)]
    pub tls_key: Option<PathBuf>,

    /// with --tls-listen and no --tls-cert/--tls-key: create a self-signed certificate and key
    /// beside the database if missing, and log the certificate's SHA-256 fingerprint
    #[argh(switch)]
    pub tls_generate: bool,

    /// most simultaneous connections; more are told BYE SERVER_FULL (default 10000)
    #[argh(option, default = "DEFAULT_MAX_CONNECTIONS")]
    pub max_connections: usize,

    /// most simultaneous connections from one address (an IPv4 address or an IPv6 /64); more are
    /// told BYE TOO_MANY_CONNECTIONS; 0: no limit (default 16)
    #[argh(option, default = "DEFAULT_MAX_PER_ADDRESS")]
    pub max_per_address: usize,

    /// seconds of silence after which a connection is probed (PING), and closed with
    /// BYE IDLE_TIMEOUT if it stays silent as long again; 0: never (default 120)
    #[argh(option, default = "DEFAULT_IDLE_TIMEOUT_SECS")]
    pub idle_timeout: u64,

    /// a network (ADDRESS or ADDRESS/PREFIX) whose clients the per-address limits leave alone,
    /// e.g. a reverse proxy; may be repeated (default: none)
    #[argh(option)]
    pub exempt: Vec<Network>,

    /// lines per second one connection may send before the server reads it more slowly (default 200)
    #[argh(option, default = "DEFAULT_LINE_RATE")]
    pub line_rate: u32,

    /// lines one connection may send at once above the rate (default 400)
    #[argh(option, default = "DEFAULT_LINE_BURST")]
    pub line_burst: u32,

    /// threads that run the connections and the core (default: the number of CPU cores)
    #[argh(option)]
    pub io_threads: Option<usize>,

    /// password-hashing threads (default: the number of CPU cores)
    #[argh(option)]
    pub hash_threads: Option<usize>,

    /// password hashes that may wait; past it REGISTER/LOGIN get SERVER_BUSY (default 256)
    #[argh(option, default = "DEFAULT_HASH_QUEUE")]
    pub hash_queue: usize,

    /// password hashes one address may have queued or running; past it REGISTER/LOGIN get
    /// RATE_LIMITED; 0: no limit (default 4)
    #[argh(option, default = "DEFAULT_HASH_PER_ADDRESS")]
    pub hash_per_address: usize,

    /// accounts one address may register per hour; past it REGISTER gets RATE_LIMITED;
    /// 0: no limit (default 10)
    #[argh(option, default = "DEFAULT_REGISTRATIONS_PER_HOUR")]
    pub registrations_per_hour: u64,

    /// messages one account may send per minute (an ALL counts 10); past it MSG/GROUP/ALL get
    /// TOO_MANY_MESSAGES; 0: no limit (default 60)
    #[argh(option, default = "DEFAULT_MSGS_PER_MINUTE")]
    pub msgs_per_minute: u64,

    /// kibibytes of messages one account may have stored per day; past it MSG/GROUP/ALL get
    /// QUOTA_EXCEEDED; 0: no limit (default 8192)
    #[argh(option, default = "DEFAULT_STORED_KIB_PER_DAY")]
    pub stored_kib_per_day: u64,

    /// messages from one sender that may wait in one offline user's inbox; past it MSG/GROUP get
    /// INBOX_SHARE_FULL; 0: only the inbox's own limit of 1000 (default 100)
    #[argh(option, default = "DEFAULT_INBOX_SHARE")]
    pub inbox_share: u32,

    /// friend requests one account may send per hour; past it FRIEND ADD gets TOO_MANY_REQUESTS;
    /// 0: no limit (default 20)
    #[argh(option, default = "DEFAULT_FRIEND_REQUESTS_PER_HOUR")]
    pub friend_requests_per_hour: u64,

    /// connections that may be compressed at once (COMPRESS DEFLATE, about 250 KiB of memory
    /// each); past it COMPRESS gets SERVER_BUSY; 0: compression off (default 1000)
    #[argh(option, default = "DEFAULT_MAX_COMPRESSED")]
    pub max_compressed: usize,

    /// scrypt cost as log2(N) for new passwords (default 15, about 100 ms; lower only for tests)
    #[argh(option, default = "SCRYPT_LOG_N")]
    pub scrypt_log_n: u8,

    /// most members of one room; JOIN past it gets ROOM_FULL (default 5000)
    #[argh(option, default = "DEFAULT_MAX_ROOM_MEMBERS")]
    pub max_room_members: usize,

    /// run as a node of a cluster: NATS server URLs, comma-separated (nats://HOST:PORT,...); the
    /// accounts, rooms and history live in a JetStream stream shared by every node, and --db names
    /// the node's index, rebuilt from it at start (default: no cluster, the database alone)
    #[argh(option)]
    pub cluster: Option<String>,

    /// with --cluster: replicas of the log stream when this node creates it (1, or 3 on a
    /// three-server NATS cluster) (default 1)
    #[argh(option, default = "1")]
    pub cluster_replicas: usize,

    /// send no message to its recipients before it is committed to disk (default: a server alone
    /// delivers a message as it accepts it, and acknowledges it once committed; manual 6.1)
    #[argh(switch)]
    pub deliver_after_commit: bool,

    /// log level: off, error, warn, info, debug or trace (default info)
    #[argh(option, default = "LevelFilter::Info")]
    pub log_level: LevelFilter,

    /// run the interactive client against HOST:PORT instead of the server
    #[argh(option)]
    pub connect: Option<String>,

    /// client: connect with TLS
    #[argh(switch)]
    pub tls: bool,

    /// client: trust this PEM certificate (e.g. the server's self-signed one) for --tls
    #[argh(option)]
    pub ca: Option<PathBuf>,

    /// client: do not verify the server's certificate (prints a warning)
    #[argh(switch)]
    pub insecure: bool,

    /// client: ask the server to compress the connection both ways (COMPRESS DEFLATE); saves
    /// bandwidth on long answers, costs the server memory
    #[argh(switch)]
    pub compress: bool,

    /// client: where a direct session you offer (/direct) listens, IP:PORT (default: the address
    /// this client reaches the server from, any free port)
    #[argh(option)]
    pub direct_listen: Option<std::net::SocketAddr>,

    /// client: the HOST:PORT a direct session you offer announces, when others reach you at
    /// another address than the one you listen on (a forwarded port; default: the listening one)
    #[argh(option, from_str_fn(announce))]
    pub direct_announce: Option<String>,

    /// an account that may use the operator commands (ANNOUNCE, SUSPEND, KILL, STATS, ADDUSER,
    /// ...); may be repeated (default: none)
    #[argh(option)]
    pub admin: Vec<Name>,

    /// who may create accounts: open (anyone, with REGISTER) or closed (REGISTER is refused;
    /// admins create accounts with ADDUSER) (default open)
    #[argh(option, default = "Registration::Open")]
    pub registration: Registration,

    /// serve the server's figures in the Prometheus text format at http://ADDR/metrics
    /// (default: not served)
    #[argh(option)]
    pub metrics_listen: Option<String>,

    /// run a demo: a fresh temporary database with the accounts alice, bob and charlie (passwords
    /// alice123, bob123, charlie123), deleted at exit; never for real use
    #[argh(switch)]
    pub demo: bool,

    /// write the log to this file instead of stderr; reopened on SIGHUP (for logrotate)
    #[argh(option)]
    pub log_file: Option<PathBuf>,

    /// print the version and exit
    #[argh(switch)]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Tool>,
}

/// `--direct-announce`: a `HOST:PORT` the protocol accepts (spec 4.39).
fn announce(s: &str) -> Result<String, String> {
    crate::proto::direct::PeerAddress::parse(s)
        .map(|a| a.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// Who may create accounts (`--registration`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// Anyone, with REGISTER.
    Open,
    /// Only admins, with ADDUSER.
    Closed,
}

impl std::str::FromStr for Registration {
    type Err = String;

    fn from_str(s: &str) -> Result<Registration, String> {
        match s {
            "open" => Ok(Registration::Open),
            "closed" => Ok(Registration::Closed),
            other => Err(format!("--registration is open or closed, not {other:?}")),
        }
    }
}

/// The operator's tools.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand)]
pub enum Tool {
    /// A consistent copy of a running server's database.
    Backup(BackupArgs),
    /// Verify a database file.
    Check(CheckArgs),
    /// Exit 0 when a server answers PING.
    Health(HealthArgs),
    /// Create an account in a database no server has open.
    Adduser(AdduserArgs),
}

#[derive(FromArgs, Debug, PartialEq)]
/// Ask the running server that uses --db for a consistent copy of its database, written to --out,
/// then verify the copy (as `chatd check` does). Clients are not disturbed; everything acknowledged
/// before the backup began is in the copy. The server is reached through its control socket,
/// DB.ctl beside the database.
#[argh(subcommand, name = "backup")]
pub struct BackupArgs {
    /// the running server's database (default ./chatd.redb)
    #[argh(option, default = "PathBuf::from(DEFAULT_DB)")]
    pub db: PathBuf,

    /// where to write the copy: a file that does not exist yet, in a directory the server may write
    #[argh(option)]
    pub out: PathBuf,
}

#[derive(FromArgs, Debug, PartialEq)]
/// Verify a database file that no server has open: every record decodes and every index agrees
/// with what it indexes. Prints what is wrong and exits 1 if anything is.
#[argh(subcommand, name = "check")]
pub struct CheckArgs {
    /// the database file (default ./chatd.redb)
    #[argh(option, default = "PathBuf::from(DEFAULT_DB)")]
    pub db: PathBuf,
}

#[derive(FromArgs, Debug, PartialEq)]
/// Connect to a server, send PING and exit 0 if it answers PONG within 5 seconds, 1 otherwise:
/// for container health checks and monitoring. Without an address, the server that CHATD_LISTEN
/// (or CHATD_TLS_LISTEN with CHATD_NO_PLAIN) describes, on the loopback address.
#[argh(subcommand, name = "health")]
pub struct HealthArgs {
    /// the server's address (default 127.0.0.1:7878)
    #[argh(positional, default = "DEFAULT_LISTEN.to_owned()")]
    pub addr: String,

    /// speak TLS, without verifying the certificate (the check is of liveness, not identity)
    #[argh(switch)]
    pub tls: bool,
}

#[derive(FromArgs, Debug, PartialEq)]
/// Create an account in a database file that no server has open, or in a cluster's log, reading
/// its password from the first line of stdin: the first admin of a server whose registration is
/// closed. The password follows the rules of REGISTER.
#[argh(subcommand, name = "adduser")]
pub struct AdduserArgs {
    /// the database file, created if missing (default ./chatd.redb); not used with --cluster
    #[argh(option, default = "PathBuf::from(DEFAULT_DB)")]
    pub db: PathBuf,

    /// create the account in the cluster whose NATS servers these are (nats://HOST:PORT,...,
    /// comma-separated), through its log, while its nodes run or not (default: in --db)
    #[argh(option)]
    pub cluster: Option<String>,

    /// with --cluster: replicas of the log stream if it does not exist yet (default 1)
    #[argh(option, default = "1")]
    pub cluster_replicas: usize,

    /// scrypt cost as log2(N) (default 15)
    #[argh(option, default = "SCRYPT_LOG_N")]
    pub scrypt_log_n: u8,

    /// the account's name
    #[argh(positional)]
    pub name: Name,
}

/// How an option is given: a value, a switch, or a value that may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Value,
    Switch,
    Repeated,
}

/// Every server option that the environment may give, with its form. `CHATD_` and the name in
/// capitals (`-` as `_`) is its variable. A test checks that `--help` lists no other option.
const ENV_OPTIONS: &[(&str, Form)] = &[
    ("listen", Form::Value),
    ("no-plain", Form::Switch),
    ("db", Form::Value),
    ("min-free-disk", Form::Value),
    ("tls-listen", Form::Value),
    ("tls-cert", Form::Value),
    ("tls-key", Form::Value),
    ("tls-generate", Form::Switch),
    ("irc-listen", Form::Value),
    ("irc-tls-listen", Form::Value),
    ("irc-default-password", Form::Value),
    ("max-connections", Form::Value),
    ("max-per-address", Form::Value),
    ("idle-timeout", Form::Value),
    ("exempt", Form::Repeated),
    ("line-rate", Form::Value),
    ("line-burst", Form::Value),
    ("io-threads", Form::Value),
    ("hash-threads", Form::Value),
    ("hash-queue", Form::Value),
    ("hash-per-address", Form::Value),
    ("registrations-per-hour", Form::Value),
    ("msgs-per-minute", Form::Value),
    ("stored-kib-per-day", Form::Value),
    ("inbox-share", Form::Value),
    ("friend-requests-per-hour", Form::Value),
    ("max-room-members", Form::Value),
    ("max-compressed", Form::Value),
    ("scrypt-log-n", Form::Value),
    ("log-level", Form::Value),
    ("connect", Form::Value),
    ("tls", Form::Switch),
    ("ca", Form::Value),
    ("insecure", Form::Switch),
    ("compress", Form::Switch),
    ("direct-listen", Form::Value),
    ("direct-announce", Form::Value),
    ("admin", Form::Repeated),
    ("registration", Form::Value),
    ("metrics-listen", Form::Value),
    ("demo", Form::Switch),
    ("log-file", Form::Value),
    ("cluster", Form::Value),
    ("cluster-replicas", Form::Value),
    ("deliver-after-commit", Form::Switch),
];

/// Options the environment may give a subcommand.
const ENV_TOOL_OPTIONS: &[(&str, &[&str])] = &[
    ("backup", &["db"]),
    ("check", &["db"]),
    (
        "adduser",
        &["db", "scrypt-log-n", "cluster", "cluster-replicas"],
    ),
];

/// `chatd health` without an address checks the server the environment describes: its TLS
/// listener when it serves TLS only, else its plain one, on the loopback address when it listens on
/// every address (as in a container, where the health check runs beside the server).
fn health_with_env(args: &[String], env: &impl Fn(&str) -> Option<String>) -> Vec<String> {
    let at = args.iter().position(|a| a == "health").unwrap_or(0);
    let given = args[at + 1..].iter().any(|a| !a.starts_with("--"));
    if given {
        return args.to_vec();
    }
    let on = |k: &str| {
        env(&env_name(k))
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    };
    let value = |k: &str| env(&env_name(k)).filter(|v| !v.is_empty());
    let (addr, tls) = match (on("no-plain"), value("tls-listen"), value("listen")) {
        (true, Some(tls), _) => (tls, true),
        (_, _, Some(plain)) => (plain, false),
        _ => return args.to_vec(),
    };
    let addr = match addr.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => addr,
    };
    let mut out = args.to_vec();
    if tls && !out.iter().any(|a| a == "--tls") {
        out.push("--tls".into());
    }
    out.push(addr);
    out
}

/// The environment variable of an option.
pub fn env_name(option: &str) -> String {
    format!("CHATD_{}", option.to_ascii_uppercase().replace('-', "_"))
}

/// `args` (without the program name) with the options the environment gives (`env` looks a
/// variable up) and the command line does not: the environment's come first, so that a
/// subcommand and positional arguments keep their place. A switch's variable is on when it is
/// `1`, `true` or `yes` (any letter case), off otherwise; a repeated option's is a comma-separated
/// list. An empty variable counts as unset.
pub fn with_env(args: &[String], env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let given = |opt: &str, within: &[String]| {
        let flag = format!("--{opt}");
        within
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
    };
    let from_env = |opt: &str, form: Form, within: &[String], out: &mut Vec<String>| {
        if given(opt, within) {
            return;
        }
        let Some(value) = env(&env_name(opt)).filter(|v| !v.is_empty()) else {
            return;
        };
        match form {
            Form::Value => out.extend([format!("--{opt}"), value]),
            Form::Switch => {
                if matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes") {
                    out.push(format!("--{opt}"));
                }
            }
            Form::Repeated => {
                for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                    out.extend([format!("--{opt}"), v.to_owned()]);
                }
            }
        }
    };
    // A subcommand is the first argument that is not an option or an option's value.
    let tool = ENV_TOOL_OPTIONS
        .iter()
        .find_map(|(name, opts)| args.iter().position(|a| a == name).map(|at| (at, *opts)));
    match tool {
        Some((at, opts)) => {
            let (head, rest) = args.split_at(at + 1);
            let mut out = head.to_vec();
            for opt in opts {
                from_env(opt, Form::Value, rest, &mut out);
            }
            out.extend_from_slice(rest);
            out
        }
        None if args.iter().any(|a| a == "health") => health_with_env(args, &env),
        None => {
            let mut out = Vec::new();
            for (opt, form) in ENV_OPTIONS {
                from_env(opt, *form, args, &mut out);
            }
            out.extend_from_slice(args);
            out
        }
    }
}

/// Logs as `<time> <LEVEL> <message>`, at `level` and above, to stderr or to `file`.
pub fn init_logging(level: LevelFilter, file: Option<LogFile>) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format(|buf, record| {
        use std::io::Write;
        writeln!(
            buf,
            "{} {:<5} {}",
            buf.timestamp_millis(),
            record.level(),
            record.args()
        )
    });
    match file {
        Some(f) => builder.target(env_logger::Target::Pipe(Box::new(f))),
        None => builder.target(env_logger::Target::Stderr),
    };
    builder.init();
}

/// The log file of `--log-file`: appended to, and reopened by [`LogFile::reopen`] (on SIGHUP), so
/// that logrotate can move it away and the server goes on in a new file of the same name.
#[derive(Clone, Debug)]
pub struct LogFile {
    path: PathBuf,
    file: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
}

impl LogFile {
    /// Opens (creating, appending) the file at `path`.
    pub fn open(path: &std::path::Path) -> std::io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_owned(),
            file: std::sync::Arc::new(std::sync::Mutex::new(Self::append(path)?)),
        })
    }

    fn append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// Opens the file's path again: log lines from now on go to whatever file has that name now.
    /// If it cannot be opened, the old file is kept and the error returned.
    pub fn reopen(&self) -> std::io::Result<()> {
        let new = Self::append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl Args {
    /// The client's options, when `--connect` asks for the client.
    pub fn client_options(&self) -> Option<ClientOptions> {
        Some(ClientOptions {
            addr: self.connect.clone()?,
            tls: self.tls,
            ca: self.ca.clone(),
            insecure: self.insecure,
            compress: self.compress,
            direct: crate::client::direct::DirectOptions {
                listen: self.direct_listen,
                announce: self.direct_announce.clone(),
            },
        })
    }
}

/// Options that do not fit together. The message names the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsageError {
    /// `--tls`, `--ca`, `--insecure` or `--compress` without `--connect`.
    ClientOnly,
    /// `--scrypt-log-n` out of range.
    ScryptLogN(u8),
    /// `--tls-cert`, `--tls-key` or `--tls-generate` without `--tls-listen`.
    TlsWithoutListener,
    /// `--tls-listen` without a certificate: neither both files nor `--tls-generate`.
    TlsWithoutCertificate,
    /// `--no-plain` without `--tls-listen`.
    NothingToListenOn,
    /// `--irc-tls-listen` without `--tls-listen`, whose certificate it uses.
    IrcTlsWithoutTls,
    /// More `--admin`s than [`MAX_ADMINS`].
    TooManyAdmins,
    /// `--demo` with `--db`: a demo never touches a real database.
    DemoWithDb,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::ClientOnly => f.write_str(
                "--tls, --ca, --insecure, --compress, --direct-listen and --direct-announce are \
                 client options; they need --connect",
            ),
            UsageError::ScryptLogN(_) => write!(
                f,
                "--scrypt-log-n must be from {MIN_SCRYPT_LOG_N} to {MAX_SCRYPT_LOG_N}"
            ),
            UsageError::TlsWithoutListener => {
                f.write_str("--tls-cert, --tls-key and --tls-generate need --tls-listen")
            }
            UsageError::TlsWithoutCertificate => {
                f.write_str("--tls-listen needs both --tls-cert and --tls-key, or --tls-generate")
            }
            UsageError::IrcTlsWithoutTls => f.write_str(
                "--irc-tls-listen uses the certificate of --tls-listen: give --tls-listen too",
            ),
            UsageError::NothingToListenOn => {
                f.write_str("--no-plain needs --tls-listen: there would be nothing to listen on")
            }
            UsageError::TooManyAdmins => write!(f, "at most {MAX_ADMINS} --admin accounts"),
            UsageError::DemoWithDb => {
                f.write_str("--demo runs on a fresh temporary database; it does not take --db")
            }
        }
    }
}

impl std::error::Error for UsageError {}

impl TryFrom<Args> for ServerOptions {
    type Error = UsageError;

    /// The server's options, once they are checked to fit together. Reads no file: a
    /// `--tls-generate` certificate is made when the server starts.
    fn try_from(args: Args) -> Result<ServerOptions, UsageError> {
        if args.tls
            || args.ca.is_some()
            || args.insecure
            || args.compress
            || args.direct_listen.is_some()
            || args.direct_announce.is_some()
        {
            return Err(UsageError::ClientOnly);
        }
        if !(MIN_SCRYPT_LOG_N..=MAX_SCRYPT_LOG_N).contains(&args.scrypt_log_n) {
            return Err(UsageError::ScryptLogN(args.scrypt_log_n));
        }
        let tls = match (args.tls_listen, args.tls_cert, args.tls_key) {
            (None, None, None) if !args.tls_generate => None,
            (None, _, _) => return Err(UsageError::TlsWithoutListener),
            (Some(addr), Some(cert), Some(key)) => {
                Some((addr, TlsSource::Files(TlsFiles { cert, key })))
            }
            (Some(addr), None, None) if args.tls_generate => {
                // Beside the database.
                let dir = match args.db.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                Some((addr, TlsSource::SelfSigned { dir }))
            }
            (Some(_), _, _) => return Err(UsageError::TlsWithoutCertificate),
        };
        if args.no_plain && tls.is_none() {
            return Err(UsageError::NothingToListenOn);
        }
        if args.irc_tls_listen.is_some() && tls.is_none() {
            return Err(UsageError::IrcTlsWithoutTls);
        }
        let cluster = args
            .cluster
            .map(|urls| crate::cluster::ClusterOptions::new(&urls, args.cluster_replicas));
        if args.admin.len() > MAX_ADMINS {
            return Err(UsageError::TooManyAdmins);
        }
        if args.demo && args.db.as_path() != std::path::Path::new(DEFAULT_DB) {
            return Err(UsageError::DemoWithDb);
        }
        let demo = args.demo.then(|| {
            DEMO_ACCOUNTS
                .iter()
                .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
                .collect()
        });
        Ok(ServerOptions {
            cluster,
            listen: (!args.no_plain).then_some(args.listen),
            tls,
            irc_listen: args.irc_listen,
            irc_tls_listen: args.irc_tls_listen,
            irc_default_password: args.irc_default_password,
            db: args.db,
            min_free_disk_mib: args.min_free_disk,
            max_connections: args.max_connections,
            max_per_address: args.max_per_address,
            idle_timeout: std::time::Duration::from_secs(args.idle_timeout),
            exempt: args.exempt,
            line_rate: args.line_rate,
            line_burst: args.line_burst,
            io_threads: args
                .io_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1),
            hash_threads: args
                .hash_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            hash_queue: args.hash_queue.max(1),
            hash_per_address: args.hash_per_address,
            registrations_per_hour: args.registrations_per_hour,
            msgs_per_minute: args.msgs_per_minute,
            stored_kib_per_day: args.stored_kib_per_day,
            inbox_share: args.inbox_share,
            friend_requests_per_hour: args.friend_requests_per_hour,
            max_compressed: args.max_compressed,
            deliver_after_commit: args.deliver_after_commit,
            scrypt_log_n: args.scrypt_log_n,
            max_room_members: args.max_room_members.max(1),
            admins: args.admin,
            registration_closed: args.registration == Registration::Closed,
            metrics_listen: args.metrics_listen,
            demo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, argh::EarlyExit> {
        Args::from_args(&["chatd"], args)
    }

    fn server(args: &[&str]) -> Result<ServerOptions, UsageError> {
        ServerOptions::try_from(parse(args).expect("parses"))
    }

    #[test]
    fn defaults_come_from_config_and_the_help_states_them() {
        let opts = server(&[]).unwrap();
        assert_eq!(opts.listen.as_deref(), Some(DEFAULT_LISTEN));
        assert_eq!(opts.db, PathBuf::from(DEFAULT_DB));
        assert_eq!(
            (opts.max_connections, opts.line_rate, opts.line_burst),
            (
                DEFAULT_MAX_CONNECTIONS,
                DEFAULT_LINE_RATE,
                DEFAULT_LINE_BURST
            )
        );
        assert_eq!(
            (opts.hash_queue, opts.scrypt_log_n, opts.max_room_members),
            (DEFAULT_HASH_QUEUE, SCRYPT_LOG_N, DEFAULT_MAX_ROOM_MEMBERS)
        );
        assert_eq!(
            (opts.max_per_address, opts.idle_timeout.as_secs()),
            (DEFAULT_MAX_PER_ADDRESS, DEFAULT_IDLE_TIMEOUT_SECS)
        );
        assert!(opts.exempt.is_empty());
        assert_eq!(opts.min_free_disk_mib, DEFAULT_MIN_FREE_DISK_MIB);
        assert_eq!(
            (opts.hash_per_address, opts.registrations_per_hour),
            (DEFAULT_HASH_PER_ADDRESS, DEFAULT_REGISTRATIONS_PER_HOUR)
        );
        assert_eq!(
            (
                opts.msgs_per_minute,
                opts.stored_kib_per_day,
                opts.inbox_share,
                opts.friend_requests_per_hour
            ),
            (
                DEFAULT_MSGS_PER_MINUTE,
                DEFAULT_STORED_KIB_PER_DAY,
                DEFAULT_INBOX_SHARE,
                DEFAULT_FRIEND_REQUESTS_PER_HOUR
            )
        );
        assert_eq!(opts.max_compressed, DEFAULT_MAX_COMPRESSED);
        assert!(opts.tls.is_none());
        assert_eq!(parse(&[]).unwrap().log_level, LevelFilter::Info);

        let help = parse(&["--help"]).unwrap_err().output;
        for stated in [
            format!("(default {DEFAULT_LISTEN})"),
            format!("(default ./{DEFAULT_DB})"),
            format!("(default {DEFAULT_MAX_CONNECTIONS})"),
            format!("(default {DEFAULT_MAX_PER_ADDRESS})"),
            format!("(default {DEFAULT_IDLE_TIMEOUT_SECS})"),
            format!("(default {DEFAULT_LINE_RATE})"),
            format!("(default {DEFAULT_LINE_BURST})"),
            format!("(default {DEFAULT_HASH_QUEUE})"),
            format!("(default {DEFAULT_HASH_PER_ADDRESS})"),
            format!("(default {DEFAULT_REGISTRATIONS_PER_HOUR})"),
            format!("(default {DEFAULT_MSGS_PER_MINUTE})"),
            format!("(default {DEFAULT_STORED_KIB_PER_DAY})"),
            format!("(default {DEFAULT_INBOX_SHARE})"),
            format!("(default {DEFAULT_FRIEND_REQUESTS_PER_HOUR})"),
            format!("(default {DEFAULT_MAX_COMPRESSED})"),
            format!("(default {DEFAULT_MIN_FREE_DISK_MIB})"),
            format!("(default {SCRYPT_LOG_N},"),
            format!("(default {DEFAULT_MAX_ROOM_MEMBERS})"),
        ] {
            assert!(help.contains(&stated), "help lacks {stated:?}:\n{help}");
        }
    }

    #[test]
    fn exempt_networks_repeat_and_a_bad_one_is_an_error() {
        let opts = server(&["--exempt", "127.0.0.1", "--exempt", "10.0.0.0/8"]).unwrap();
        assert_eq!(
            opts.exempt,
            vec![
                "127.0.0.1".parse::<Network>().unwrap(),
                "10.0.0.0/8".parse().unwrap()
            ]
        );
        assert!(parse(&["--exempt", "10.0.0.0/40"]).is_err());
    }

    #[test]
    fn a_mistyped_log_level_is_an_error() {
        assert_eq!(
            parse(&["--log-level", "debug"]).unwrap().log_level,
            LevelFilter::Debug
        );
        assert!(parse(&["--log-level", "verbose"]).is_err());
    }

    #[test]
    fn options_that_do_not_fit_together_are_refused() {
        assert_eq!(server(&["--insecure"]).unwrap_err(), UsageError::ClientOnly);
        assert_eq!(
            server(&["--scrypt-log-n", "21"]).unwrap_err(),
            UsageError::ScryptLogN(21)
        );
        assert_eq!(
            server(&["--tls-generate"]).unwrap_err(),
            UsageError::TlsWithoutListener
        );
        assert_eq!(
            server(&["--tls-listen", "x:1", "--tls-cert", "c.pem"]).unwrap_err(),
            UsageError::TlsWithoutCertificate
        );
        assert_eq!(
            server(&["--no-plain"]).unwrap_err(),
            UsageError::NothingToListenOn
        );
    }

    #[test]
    fn tls_options_name_the_files_or_the_directory_to_generate_in() {
        let opts = server(&[
            "--no-plain",
            "--tls-listen",
            "x:1",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap();
        assert_eq!(opts.listen, None);
        assert_eq!(
            opts.tls,
            Some((
                "x:1".to_owned(),
                TlsSource::Files(TlsFiles {
                    cert: "c.pem".into(),
                    key: "k.pem".into()
                })
            ))
        );
        let generate = |db: &str| {
            server(&["--db", db, "--tls-listen", "x:1", "--tls-generate"])
                .unwrap()
                .tls
                .map(|(_, source)| source)
        };
        assert_eq!(
            generate("/var/lib/chatd/c.redb"),
            Some(TlsSource::SelfSigned {
                dir: "/var/lib/chatd".into()
            })
        );
        assert_eq!(
            generate("c.redb"),
            Some(TlsSource::SelfSigned { dir: ".".into() })
        );
    }

    fn merged(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        with_env(&args, |k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_environment_fills_in_what_the_command_line_does_not_say() {
        let env = [
            ("CHATD_LISTEN", "0.0.0.0:7878"),
            ("CHATD_DB", "/data/chatd.redb"),
            ("CHATD_TLS_GENERATE", "yes"),
            ("CHATD_NO_PLAIN", "0"),
            ("CHATD_ADMIN", "root, ops"),
            ("CHATD_EXEMPT", ""),
        ];
        assert_eq!(
            merged(&["--db", "/elsewhere.redb"], &env),
            [
                "--listen",
                "0.0.0.0:7878",
                "--tls-generate",
                "--admin",
                "root",
                "--admin",
                "ops",
                "--db",
                "/elsewhere.redb"
            ]
        );
        // A repeated option given on the command line replaces the whole list.
        assert_eq!(
            merged(&["--admin", "x"], &[("CHATD_ADMIN", "root")]),
            ["--admin", "x"]
        );
        // The tools take the database from the environment, after their name.
        assert_eq!(
            merged(&["check"], &env),
            ["check", "--db", "/data/chatd.redb"]
        );
        assert_eq!(merged(&["health", "h:1"], &env), ["health", "h:1"]);
        assert_eq!(merged(&["health"], &env), ["health", "127.0.0.1:7878"]);
        let tls_only = [("CHATD_NO_PLAIN", "1"), ("CHATD_TLS_LISTEN", "[::]:7879")];
        assert_eq!(
            merged(&["health"], &tls_only),
            ["health", "--tls", "[::1]:7879"]
        );
        let args = parse(
            &merged(&[], &env)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(args.listen, "0.0.0.0:7878");
        assert_eq!(args.admin.len(), 2);
    }

    /// Every option `--help` lists can come from the environment, and the table names no option
    /// that does not exist.
    #[test]
    fn every_option_has_its_variable() {
        let help = match Args::from_args(&["chatd"], &["--help"]) {
            Err(early) => early.output,
            Ok(_) => panic!("--help parses to help"),
        };
        let listed: std::collections::BTreeSet<&str> = help
            .lines()
            // Option lines start `  --name`; wrapped descriptions are indented further.
            .filter_map(|l| l.strip_prefix("  --"))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|o| !matches!(*o, "help" | "help," | "version"))
            .collect();
        let table: std::collections::BTreeSet<&str> = ENV_OPTIONS.iter().map(|(o, _)| *o).collect();
        assert_eq!(listed, table);
        assert!(
            help.contains("CHATD_LISTEN"),
            "--help documents the environment"
        );
    }

    /// The executor's threads: as many as asked, at least one (the main thread), by default one
    /// per core.
    #[test]
    fn io_threads() {
        assert_eq!(server(&["--io-threads", "1"]).unwrap().io_threads, 1);
        assert_eq!(server(&["--io-threads", "0"]).unwrap().io_threads, 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(server(&[]).unwrap().io_threads, cores);
    }

    #[test]
    fn admins_registration_and_demo() {
        let opts = server(&["--admin", "root", "--registration", "closed"]).unwrap();
        assert_eq!(opts.admins.len(), 1);
        assert!(opts.registration_closed);
        assert!(parse(&["--admin", "9x"]).is_err());
        assert!(parse(&["--registration", "maybe"]).is_err());
        assert_eq!(
            server(&["--demo", "--db", "x.redb"]).unwrap_err(),
            UsageError::DemoWithDb
        );
        let demo = server(&["--demo"]).unwrap().demo.unwrap();
        assert_eq!(demo.len(), DEMO_ACCOUNTS.len());
        // The demo's passwords are shorter than the rule: only demo mode may have them.
        assert!(demo
            .iter()
            .any(|(_, p)| crate::proto::name::Password::parse(p).is_err()));
    }
}
