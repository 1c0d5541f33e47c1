//! The bundled client behind `chatd --connect HOST:PORT [--tls] [--ca PEM] [--insecure]`.
//!
//! - [`input`]: what the user typed (slash commands, plain text, `//` raw lines), parsed without state;
//! - [`session`]: the client's rules as a state machine (labels, who to answer, credentials kept for
//!   logging in again), no IO;
//! - [`render`]: server lines as sentences (local times, events), no IO;
//! - [`conn`]: TCP and TLS connections and the line reader;
//! - [`compress`]: `--compress`, the switch to DEFLATE after the greeting;
//! - [`direct`]: direct sessions between two clients, brokered by the server (`/direct`);
//! - [`interactive`]: the terminal front end (line editor, messages printed above the prompt,
//!   reconnection with back-off);
//! - [`batch`]: the front end for scripts (stdin to server, server lines to stdout as-is);
//! - [`token_file`]: where the interactive client keeps its device token.
//!
//! The mode follows stdin and stdout: both terminals gives the interactive client, anything else the
//! non-interactive one, so `chatd --connect ... < script > log` behaves the same from a terminal or not.

pub mod batch;
pub mod compress;
pub mod conn;
pub mod direct;
pub mod input;
pub mod interactive;
pub mod render;
pub mod session;
pub mod token_file;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use conn::{Connector, Trust};

/// Exit status: everything sent was answered.
pub const EXIT_OK: u8 = 0;
/// Exit status: no connection (address, TCP, TLS handshake or certificate problem, or the server
/// refused the connection before greeting).
pub const EXIT_NO_CONNECTION: u8 = 1;
/// Exit status: a REGISTER or LOGIN failed (non-interactive).
pub const EXIT_AUTH_FAILED: u8 = 2;
/// Exit status: the connection was lost before every command was answered (non-interactive).
pub const EXIT_CONNECTION_LOST: u8 = 3;
/// Exit status: an input line was not understood and nothing was sent for it (non-interactive).
pub const EXIT_BAD_INPUT: u8 = 4;
/// Exit status: a direct session could not be set up, or broke (non-interactive).
pub const EXIT_DIRECT_FAILED: u8 = 5;

/// How to reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// `HOST:PORT`.
    pub addr: String,
    /// Use TLS (implied by `ca` and `insecure`).
    pub tls: bool,
    /// Trust only the certificate(s) in this PEM file instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (a warning is printed).
    pub insecure: bool,
    /// Ask the server to compress the connection (`COMPRESS DEFLATE`).
    pub compress: bool,
    /// Where direct sessions listen and what they announce.
    pub direct: direct::DirectOptions,
}

/// Builds the connector the options describe.
pub fn connector(opts: &ClientOptions) -> Result<Connector, String> {
    if opts.insecure && opts.ca.is_some() {
        return Err("--ca and --insecure contradict each other; give one".into());
    }
    let connector = if opts.insecure {
        Connector::tls(&opts.addr, Trust::Insecure)
    } else if let Some(ca) = &opts.ca {
        Connector::tls(&opts.addr, Trust::CaFile(ca))
    } else if opts.tls {
        Connector::tls(&opts.addr, Trust::System)
    } else {
        Connector::plain(&opts.addr)
    };
    Ok(connector?.with_compress(opts.compress))
}

/// Runs the client until the user quits (interactive) or stdin ends and every command is answered
/// (non-interactive). The exit status is one of the `EXIT_` constants (also listed by `chatd --help`).
pub fn run(opts: ClientOptions) -> ExitCode {
    let connector = match connector(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chatd: cannot connect to {}: {e}", opts.addr);
            return ExitCode::from(EXIT_NO_CONNECTION);
        }
    };
    if opts.insecure {
        eprintln!(
            "chatd: warning: --insecure: the server's certificate is not verified; anyone between you \
             and {} can read and change this conversation",
            opts.addr
        );
    }
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        interactive::run(connector, opts.direct)
    } else {
        batch::run(connector, opts.direct)
    }
}
