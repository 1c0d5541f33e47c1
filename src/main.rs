//! The `chatd` binary: parses the command line and runs the server or the bundled client.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use chatd::cli::{self, Args, WEAK_SCRYPT_LOG_N};
use chatd::net::{self, Control, ServerError, ServerOptions};

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    if args.version {
        println!("chatd {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(client) = args.client_options() {
        return chatd::client::run(client);
    }
    let level = args.log_level;
    let opts = match ServerOptions::try_from(args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::FAILURE;
        }
    };
    cli::init_logging(level);
    if opts.scrypt_log_n < WEAK_SCRYPT_LOG_N {
        log::warn!(
            "--scrypt-log-n {} makes password hashes cheap to crack; use it for tests only",
            opts.scrypt_log_n
        );
    }
    match serve(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the server until SIGINT or SIGTERM; SIGHUP reloads the TLS certificate.
fn serve(opts: ServerOptions) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let (control_tx, control_rx) = async_channel::bounded(8);
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("chatd-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let c = if sig == SIGHUP {
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
