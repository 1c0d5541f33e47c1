//! The command line. `chatd` runs the server; `chatd --connect HOST:PORT` runs the bundled client.

use std::path::PathBuf;

use argh::FromArgs;

use crate::config::{
    DEFAULT_DB, DEFAULT_HASH_QUEUE, DEFAULT_LINE_BURST, DEFAULT_LINE_RATE, DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS, SCRYPT_LOG_N,
};

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}
fn default_db() -> PathBuf {
    PathBuf::from(DEFAULT_DB)
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_line_rate() -> u32 {
    DEFAULT_LINE_RATE
}
fn default_line_burst() -> u32 {
    DEFAULT_LINE_BURST
}
fn default_hash_queue() -> usize {
    DEFAULT_HASH_QUEUE
}
fn default_log_n() -> u8 {
    SCRYPT_LOG_N
}
fn default_log_level() -> String {
    "info".to_owned()
}

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
    error_code(4, "--connect without a terminal: an input line was not understood and was not sent")
)]
pub struct Args {
    /// plain-TCP listen address (default 127.0.0.1:7878)
    #[argh(option, default = "default_listen()")]
    pub listen: String,

    /// do not open the plain-TCP listener: serve TLS only (needs --tls-listen)
    #[argh(switch)]
    pub no_plain: bool,

    /// database file, created if missing (default ./chatd.redb)
    #[argh(option, default = "default_db()")]
    pub db: PathBuf,

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
    #[argh(option, default = "default_max_connections()")]
    pub max_connections: usize,

    /// lines per second one connection may send before the server reads it more slowly (default 200)
    #[argh(option, default = "default_line_rate()")]
    pub line_rate: u32,

    /// lines one connection may send at once above the rate (default 400)
    #[argh(option, default = "default_line_burst()")]
    pub line_burst: u32,

    /// password-hashing threads (default: the number of CPU cores)
    #[argh(option)]
    pub hash_threads: Option<usize>,

    /// password hashes that may wait; past it REGISTER/LOGIN get SERVER_BUSY (default 256)
    #[argh(option, default = "default_hash_queue()")]
    pub hash_queue: usize,

    /// scrypt cost as log2(N) for new passwords (default 15, about 100 ms; lower only for tests)
    #[argh(option, default = "default_log_n()")]
    pub scrypt_log_n: u8,

    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "default_log_level()")]
    pub log_level: String,

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

    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
}

/// Logs to stderr as `<time> <LEVEL> <message>`, at `level` and above (`info` if unreadable).
pub fn init_logging(level: &str) {
    let filter = level.parse().unwrap_or(log::LevelFilter::Info);
    env_logger::Builder::new()
        .filter_level(filter)
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
