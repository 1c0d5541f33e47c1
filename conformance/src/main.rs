//! The conformance runner's command line: run the suite against a server at an address.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chatd_conformance::{load_dir, report, run, Options, TlsSettings};

const USAGE: &str = "\
usage: chatd-conformance --addr HOST:PORT [options]

  --addr HOST:PORT        the server to test (required)
  --tls                   speak TLS (needs --ca)
  --ca PEM                CA certificate(s) to verify the server with
  --server-name NAME      name to verify in the server's certificate (default: the host of --addr)
  --filter SUBSTR         run only cases whose \"section name\" contains SUBSTR
  --junit FILE            also write the results as JUnit XML
  --timeout SECS          how long one expectation waits (default 5)
  --max-connections N     the server's connection limit; enables the SERVER_FULL case
  --busy-hashing          the server hashes slowly (default scrypt cost) with at most three hashes
                          running or waiting (e.g. --hash-threads 1 --hash-queue 1); enables the
                          SERVER_BUSY case
  --max-per-address N     the server's limit of connections from one address; enables the
                          TOO_MANY_CONNECTIONS case
  --idle-timeout SECS     the server's idle timeout, a few seconds at most (less than half of
                          --timeout); enables the idle-probe cases
  --rate-limits           the server applies its default limits per address (failed-login
                          back-off) to the suite's address; enables the RATE_LIMITED cases
  --small-quotas          the server's quotas per account are 60 messages a minute, 16 KiB stored a
                          day, a share of 5 in an offline inbox and 2 friend requests an hour
                          (chatd: --stored-kib-per-day 16 --inbox-share 5
                          --friend-requests-per-hour 2); enables the quota cases
  --admin NAME:PASSWORD   an admin account of the server (chatd: --admin NAME); enables the
                          operator commands' cases (ANNOUNCE, SUSPEND, KILL, STATS, ADDUSER, and
                          admins moderating rooms)
  --broadcast             the suite may send ALL and ANNOUNCE, which reach every user online;
                          without it, the cases that send them are skipped
  --registration-closed   the server's registration is closed (chatd: --registration closed);
                          enables its case (needs --admin)
  --cases DIR             case files to run (default: the bundled cases)
  --list                  list the cases and exit
";

struct Args {
    opts: Options,
    ca: Option<PathBuf>,
    tls: bool,
    server_name: Option<String>,
    junit: Option<PathBuf>,
    cases: PathBuf,
    list: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut addr = None;
    let mut a = Args {
        opts: Options::new(""),
        ca: None,
        tls: false,
        server_name: None,
        junit: None,
        cases: chatd_conformance::cases_dir(),
        list: false,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = Some(value()?),
            "--tls" => a.tls = true,
            "--ca" => a.ca = Some(PathBuf::from(value()?)),
            "--server-name" => a.server_name = Some(value()?),
            "--filter" => a.opts.filter = Some(value()?),
            "--junit" => a.junit = Some(PathBuf::from(value()?)),
            "--timeout" => {
                let v = value()?;
                let secs: f64 = v.parse().map_err(|_| format!("bad --timeout {v:?}"))?;
                if !(secs > 0.0 && secs < 3600.0) {
                    return Err(format!("--timeout {v} is out of range"));
                }
                a.opts.timeout = Duration::from_secs_f64(secs);
            }
            "--max-connections" => {
                let v = value()?;
                a.opts.max_connections = Some(
                    v.parse()
                        .map_err(|_| format!("bad --max-connections {v:?}"))?,
                );
            }
            "--busy-hashing" => a.opts.busy_hashing = true,
            "--max-room-members" => {
                let v = value()?;
                a.opts.max_room_members = Some(
                    v.parse()
                        .map_err(|_| format!("bad --max-room-members {v:?}"))?,
                );
            }
            "--max-per-address" => {
                let v = value()?;
                a.opts.max_per_address = Some(
                    v.parse()
                        .map_err(|_| format!("bad --max-per-address {v:?}"))?,
                );
            }
            "--rate-limits" => a.opts.rate_limits = true,
            "--small-quotas" => a.opts.small_quotas = true,
            "--idle-timeout" => {
                let v = value()?;
                let secs: u64 = v.parse().map_err(|_| format!("bad --idle-timeout {v:?}"))?;
                a.opts.idle_timeout = Some(Duration::from_secs(secs));
            }
            "--admin" => {
                let v = value()?;
                let (name, pw) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--admin takes NAME:PASSWORD, not {v:?}"))?;
                a.opts.admin = Some((name.to_owned(), pw.to_owned()));
            }
            "--broadcast" => a.opts.broadcast = true,
            "--registration-closed" => a.opts.registration_closed = true,
            "--cases" => a.cases = PathBuf::from(value()?),
            "--list" => a.list = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.list {
        return Ok(a);
    }
    a.opts.addr = addr.ok_or("--addr is required")?;
    if a.tls != a.ca.is_some() {
        return Err("--tls and --ca go together".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cases = match load_dir(&args.cases) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for c in &cases {
            println!("{} {}", c.section, c.name);
        }
        return ExitCode::SUCCESS;
    }
    let mut opts = args.opts;
    if let Some(ca) = &args.ca {
        let host = match &args.server_name {
            Some(n) => n.clone(),
            None => host_of(&opts.addr),
        };
        match TlsSettings::new(ca, &host) {
            Ok(t) => opts.tls = Some(t),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let results = run(&cases, &opts, |r| println!("{}", report::case_line(r)));
    println!();
    println!("{}", report::summary(&results));
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, report::junit(&results)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    let t = report::totals(&results);
    if results.is_empty() {
        eprintln!("error: no case matched the filter");
        ExitCode::from(2)
    } else if t.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}
