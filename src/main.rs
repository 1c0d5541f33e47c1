//! The `chatd` binary: parses the command line and runs the server or the bundled client.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use chatd::cli::Args;
use chatd::net::{self, Control, ServerOptions};
use chatd::tls;

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.version {
        println!("chatd {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(addr) = args.connect.clone() {
        return chatd::client::run(chatd::client::ClientOptions {
            addr,
            tls: args.tls,
            ca: args.ca.clone(),
            insecure: args.insecure,
        });
    }
    if args.tls || args.ca.is_some() || args.insecure {
        eprintln!("chatd: --tls, --ca and --insecure are client options; they need --connect");
        return ExitCode::FAILURE;
    }
    chatd::cli::init_logging(&args.log_level);
    match server(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn server(args: Args) -> Result<(), String> {
    if !(1..=20).contains(&args.scrypt_log_n) {
        return Err("--scrypt-log-n must be from 1 to 20".into());
    }
    if args.scrypt_log_n < 14 {
        log::warn!(
            "--scrypt-log-n {} makes password hashes cheap to crack; use it for tests only",
            args.scrypt_log_n
        );
    }
    let tls = match (&args.tls_listen, &args.tls_cert, &args.tls_key) {
        (None, None, None) if !args.tls_generate => None,
        (None, _, _) => {
            return Err("--tls-cert, --tls-key and --tls-generate need --tls-listen".into())
        }
        (Some(addr), Some(cert), Some(key)) => Some((
            addr.clone(),
            tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
        )),
        (Some(addr), None, None) if args.tls_generate => {
            let dir = match args.db.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            let (files, fingerprint) =
                tls::generate_self_signed(&dir).map_err(|e| e.to_string())?;
            log::info!(
                "TLS certificate {} (key {}), SHA-256 fingerprint {fingerprint}",
                files.cert.display(),
                files.key.display()
            );
            Some((addr.clone(), files))
        }
        (Some(_), _, _) => {
            return Err(
                "--tls-listen needs both --tls-cert and --tls-key, or --tls-generate".into(),
            )
        }
    };
    if args.no_plain && tls.is_none() {
        return Err("--no-plain needs --tls-listen: there would be nothing to listen on".into());
    }
    let opts = ServerOptions {
        listen: (!args.no_plain).then(|| args.listen.clone()),
        tls,
        db: args.db.clone(),
        max_connections: args.max_connections,
        line_rate: args.line_rate,
        line_burst: args.line_burst,
        hash_threads: args
            .hash_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        hash_queue: args.hash_queue.max(1),
        scrypt_log_n: args.scrypt_log_n,
    };
    let (control_tx, control_rx) = async_channel::bounded(8);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("chatd-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let c = if sig == signal_hook::consts::SIGHUP {
                    Control::ReloadTls
                } else {
                    Control::Stop
                };
                log::info!("signal {sig} received");
                if control_tx.send_blocking(c).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    net::run(opts, control_rx).map_err(|e| e.to_string())
}
