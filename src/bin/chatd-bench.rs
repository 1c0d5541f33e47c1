//! `chatd-bench`: the project's load benchmark, run by hand. It starts a chatd on 127.0.0.1 with a
//! fresh temporary database (or uses one given with `--addr`), runs each scenario against it and
//! prints one line of figures per scenario, to be compared run to run. docs/BENCHMARKS.md says what
//! each scenario measures and holds measured results.
//!
//! Speed is judged here, never in tests: figures depend on the machine and its load.
#![forbid(unsafe_code)]

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argh::FromArgs;

use bench::scenarios::{self, Figures, Settings};
use bench::server::{self, Launch, Server};
use bench::{system, EXECUTOR};

/// Scenarios in run order, by the name `--only` takes.
const SCENARIOS: &[&str] = &[
    "all", "group", "msg1", "msgn", "idle", "history", "compress",
];

#[derive(FromArgs)]
/// chatd-bench: load benchmark for chatd. Starts a server with a fresh temporary database (or uses
/// --addr), runs the scenarios and prints one line of figures per scenario.
struct Args {
    /// address of a running chatd to measure instead of starting one (its line rate should be high;
    /// memory and CPU figures need --pid)
    #[argh(option)]
    addr: Option<String>,

    /// process id of the server at --addr, for its memory and CPU figures
    #[argh(option)]
    pid: Option<u32>,

    /// chatd binary to start instead of the server code built into this benchmark
    #[argh(option)]
    server: Option<PathBuf>,

    /// directory for the temporary databases (default: the system temporary directory)
    #[argh(option)]
    dir: Option<PathBuf>,

    /// scenarios to run, comma-separated, from all,group,msg1,msgn,idle,history,compress (default:
    /// all of them)
    #[argh(option)]
    only: Option<String>,

    /// fan-out: logged-in recipients (default 200)
    #[argh(option, default = "200")]
    recipients: usize,

    /// fan-out: messages sent in the measured round (default 20000)
    #[argh(option, default = "20000")]
    fanout_msgs: usize,

    /// fan-out: recipients of each GROUP message (default 50)
    #[argh(option, default = "50")]
    group_size: usize,

    /// direct messages: messages in the measured round, over all senders (default 50000)
    #[argh(option, default = "50000")]
    direct_msgs: usize,

    /// direct messages: MSGs in flight for the single sender (default 64)
    #[argh(option, default = "64")]
    window: usize,

    /// direct messages: concurrent senders, one MSG in flight each (default 100)
    #[argh(option, default = "100")]
    senders: usize,

    /// idle memory: connections to open (default 2000)
    #[argh(option, default = "2000")]
    idle_conns: usize,

    /// large answers: connections asking for a 1 MiB HISTORY page without reading it (default 400)
    #[argh(option, default = "400")]
    history_conns: usize,

    /// bytes of message text (default 64)
    #[argh(option, default = "64")]
    text_bytes: usize,

    /// time limit of each scenario in seconds, setup included (default 60)
    #[argh(option, default = "60")]
    max_secs: u64,

    /// threads running the load generator (default 1, leaving the other cores to the server)
    #[argh(option, default = "1")]
    client_threads: usize,
}

fn main() -> ExitCode {
    if let Some(db) = std::env::var_os(server::SERVE_ENV) {
        return server::serve_child(db.into());
    }
    let args: Args = argh::from_env();
    let threads = args.client_threads.max(1);
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let helpers: Vec<_> = (1..threads)
        .map(|_| {
            let stop = stop_rx.clone();
            std::thread::spawn(move || smol::block_on(EXECUTOR.run(stop.recv())))
        })
        .collect();
    let code = smol::block_on(EXECUTOR.run(run(args)));
    drop(stop_tx);
    for h in helpers {
        let _ = h.join();
    }
    code
}

async fn run(args: Args) -> ExitCode {
    let selected: Vec<String> = match &args.only {
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        None => SCENARIOS.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(bad) = selected.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        eprintln!(
            "unknown scenario {bad:?}; choose from {}",
            SCENARIOS.join(",")
        );
        return ExitCode::FAILURE;
    }
    if args.text_bytes == 0 || args.text_bytes > chatd::config::MAX_TEXT_BYTES {
        eprintln!("--text-bytes must be 1..={}", chatd::config::MAX_TEXT_BYTES);
        return ExitCode::FAILURE;
    }
    let launch = match (&args.addr, &args.server) {
        (Some(_), Some(_)) => {
            eprintln!("--addr and --server exclude each other");
            return ExitCode::FAILURE;
        }
        (Some(addr), None) => Launch::External {
            addr: addr.clone(),
            pid: args.pid,
        },
        (None, Some(path)) => Launch::Binary(path.clone()),
        (None, None) => Launch::SelfExec,
    };
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let settings = Settings {
        recipients: args.recipients.max(1),
        fanout_msgs: args.fanout_msgs.max(1),
        group_size: args
            .group_size
            .clamp(1, chatd::config::MAX_GROUP_RECIPIENTS),
        direct_msgs: args.direct_msgs.max(1),
        window: args.window.max(1),
        senders: args.senders.max(2),
        idle_conns: args.idle_conns.max(1),
        history_conns: args.history_conns.max(1),
        text: text(args.text_bytes),
        limit: Duration::from_secs(args.max_secs.max(1)),
        prefix: run_prefix(),
    };

    let server_desc = match &launch {
        Launch::SelfExec => "built-in (net::run)".to_owned(),
        Launch::Binary(p) => p.display().to_string(),
        Launch::External { addr, .. } => format!("external {addr}"),
    };
    println!(
        "chatd-bench {} date={} profile={} cores={} cpu=\"{}\" kernel={}",
        env!("CARGO_PKG_VERSION"),
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        system::cores(),
        system::cpu_model(),
        system::kernel(),
    );
    println!(
        "server={server_desc} db_dir={} db_fs={} text_bytes={} client_threads={} loadavg={}",
        dir.display(),
        system::fs_type(&dir),
        args.text_bytes,
        args.client_threads.max(1),
        system::load_average(),
    );
    if cfg!(debug_assertions) {
        println!("warning: a debug build; run with --release for figures worth comparing");
    }

    let mut failed = false;
    for name in SCENARIOS
        .iter()
        .filter(|s| selected.iter().any(|x| x == *s))
    {
        let s = &settings;
        let conns = match *name {
            "all" | "group" => s.recipients + 2,
            "msg1" => 2,
            "msgn" => s.senders,
            "history" => s.history_conns + 2,
            "compress" => s.idle_conns / 4 + 32,
            _ => s.idle_conns,
        } + 64;
        let server = match Server::start(&launch, &dir, conns) {
            Ok(sv) => sv,
            Err(e) => {
                eprintln!("{name}: cannot start the server: {e}");
                return ExitCode::FAILURE;
            }
        };
        let lines: Result<Vec<(String, Figures)>, String> = match *name {
            "all" => scenarios::fanout(&server, s, false)
                .await
                .map(|f| vec![("fanout-all".to_owned(), f)]),
            "group" => scenarios::fanout(&server, s, true)
                .await
                .map(|f| vec![(format!("fanout-group{}", s.group_size), f)]),
            "msg1" => scenarios::direct_one(&server, s)
                .await
                .map(|f| vec![(format!("msg-1x{}", s.window), f)]),
            "msgn" => scenarios::direct_many(&server, s)
                .await
                .map(|f| vec![(format!("msg-{}x1", s.senders), f)]),
            "history" => scenarios::history(&server, s)
                .await
                .map(|v| v.into_iter().map(|(k, f)| (k.to_owned(), f)).collect()),
            "compress" => bench::compress::compress(&server, s).await,
            _ => scenarios::idle(&server, s)
                .await
                .map(|v| v.into_iter().map(|(k, f)| (k.to_owned(), f)).collect()),
        };
        match lines {
            Ok(lines) => {
                for (label, f) in lines {
                    println!("{label:<16} {f}");
                }
            }
            Err(e) => {
                failed = true;
                println!("{name:<16} FAILED: {e}");
            }
        }
        for c in server.complaints() {
            println!("  server logged: {c}");
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Message text of `n` bytes: printable ASCII, so any line stays valid.
fn text(n: usize) -> String {
    const PATTERN: &[u8] = b"the quick brown fox jumps over the lazy dog 0123456789 ";
    let mut t: String = PATTERN.iter().cycle().take(n).map(|&b| b as char).collect();
    // The text must not end in a way the server trims or refuses: make the last byte visible.
    if t.ends_with(' ') {
        t.pop();
        t.push('.');
    }
    t
}

/// A start for account names, different on every run (names are 1..=32 chars, first a letter).
fn run_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("b{:06x}", (nanos / 1000) as u64 & 0xff_ffff)
}
