//! The command line. `chatd` runs the server; `chatd --connect HOST:PORT` runs the bundled client.
//!
//! [`Args`] is what argh parses; [`ServerOptions::try_from`] checks that the server's options fit
//! together, so the binary only dispatches.

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
    DEFAULT_REGISTRATIONS_PER_HOUR, DEFAULT_STORED_KIB_PER_DAY, SCRYPT_LOG_N,
};
use crate::net::{ServerOptions, TlsSource};
use crate::peer::Network;
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
            server line to stdout unchanged, and exits once stdin has ended and every command is answered.",
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

    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
}

/// `--direct-announce`: a `HOST:PORT` the protocol accepts (spec 4.39).
fn announce(s: &str) -> Result<String, String> {
    crate::proto::direct::PeerAddress::parse(s)
        .map(|a| a.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// Logs to stderr as `<time> <LEVEL> <message>`, at `level` and above.
pub fn init_logging(level: LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .target(env_logger::Target::Stderr)
        .init();
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
            UsageError::NothingToListenOn => {
                f.write_str("--no-plain needs --tls-listen: there would be nothing to listen on")
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
        Ok(ServerOptions {
            listen: (!args.no_plain).then_some(args.listen),
            tls,
            db: args.db,
            min_free_disk_mib: args.min_free_disk,
            max_connections: args.max_connections,
            max_per_address: args.max_per_address,
            idle_timeout: std::time::Duration::from_secs(args.idle_timeout),
            exempt: args.exempt,
            line_rate: args.line_rate,
            line_burst: args.line_burst,
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
            scrypt_log_n: args.scrypt_log_n,
            max_room_members: args.max_room_members.max(1),
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
}
