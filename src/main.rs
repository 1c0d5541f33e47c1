//! The `chatd` binary: parses the command line (with the environment merged in) and runs the
//! server, the bundled client or one of the operator's tools.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use argh::FromArgs;
use chatd::cli::{self, Args, LogFile, WEAK_SCRYPT_LOG_N};
use chatd::net::{self, Control, ServerError, ServerOptions};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let program = argv.first().map_or("chatd", String::as_str);
    let merged = cli::with_env(&argv[1..], |k| std::env::var(k).ok());
    let merged: Vec<&str> = merged.iter().map(String::as_str).collect();
    let args = match Args::from_args(&[program], &merged) {
        Ok(a) => a,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!(
                        "{}\nRun {program} --help for more information.",
                        early.output
                    );
                    ExitCode::FAILURE
                }
            };
        }
    };
    if args.version {
        println!("chatd {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(tool) = args.command {
        return chatd::tools::run(tool);
    }
    if let Some(client) = args.client_options() {
        return chatd::client::run(client);
    }
    let level = args.log_level;
    let log_file = match &args.log_file {
        Some(path) => match LogFile::open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("chatd: cannot open the log file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let opts = match ServerOptions::try_from(args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::FAILURE;
        }
    };
    cli::init_logging(level, log_file.clone());
    if opts.scrypt_log_n < WEAK_SCRYPT_LOG_N {
        log::warn!(
            "--scrypt-log-n {} makes password hashes cheap to crack; use it for tests only",
            opts.scrypt_log_n
        );
    }
    match serve(opts, log_file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the server until SIGINT or SIGTERM; SIGHUP reloads the TLS certificate and reopens the
/// log file.
fn serve(opts: ServerOptions, log_file: Option<LogFile>) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let (control_tx, control_rx) = async_channel::bounded(8);
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("chatd-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let c = if sig == SIGHUP {
                    // The log first, so that what the reload logs goes to the new file.
                    if let Some(f) = &log_file {
                        match f.reopen() {
                            Ok(()) => log::info!("log file reopened"),
                            Err(e) => log::error!("log file not reopened, writing on: {e}"),
                        }
                    }
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
        .map_err(|source| ServerError::Thread {
            name: "signal",
            source,
        })?;
    net::run(opts, control_rx)
}
