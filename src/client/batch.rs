//! The non-interactive client: lines from stdin to the server, server lines to stdout as-is.
//!
//! Input lines are the same as in the interactive client (slash commands, plain text to the last
//! person talked with, `//` for raw protocol lines). Every line the server sends is written to stdout
//! unchanged, so scripts and tests see the protocol itself. When stdin ends the client sends a
//! labelled `PING` with a token of its own as a barrier; the server answers in order, so once the
//! barrier's `OK` is in, every earlier command has been answered, and the client exits. The barrier's
//! own `PONG` and `OK` are not shown, nor are those of its answers to the server's idle probes
//! (`PING <token>`, answered with a `PING` of the same token). It does not reconnect: a script cannot know which of its
//! commands took effect, so a lost connection is an error (exit status 3) instead.
//!
//! A direct session (`/direct`, `/accept`) works here too: its lines and events go to stdout marked
//! `[direct]` (they are not the server's), lines typed before it opens wait for it, and the client
//! stays until the session ends (`/close` on either side) before it exits; one that could not be set
//! up, or broke, makes the exit status 5.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use futures_lite::future;
use futures_lite::io::{AsyncWriteExt, BufWriter};

use super::conn::{forward_lines, Connector, Incoming};
use super::direct::{DirectOptions, Host, HostEvent};
use super::input;
use super::render::Clock;
use super::session::{Effect, NoteKind, Session};
use super::{
    EXIT_AUTH_FAILED, EXIT_BAD_INPUT, EXIT_CONNECTION_LOST, EXIT_DIRECT_FAILED, EXIT_NO_CONNECTION,
    EXIT_OK,
};
use crate::proto::command::Verb;
use crate::proto::server_line::{parse, ServerLine};

/// Label of the end-of-input barrier.
const BARRIER_LABEL: &str = "client.end";
/// Lines read ahead from stdin; reading pauses beyond it (the server's pace sets ours).
const STDIN_QUEUE: usize = 64;
/// Server lines queued between the socket reader and the main loop.
const SERVER_QUEUE: usize = 256;

enum Stdin {
    Line(String),
    NotUtf8,
    End,
}

enum Event {
    Server(io::Result<Option<Incoming>>),
    Stdin(Stdin),
    Direct(HostEvent),
}

/// Reads stdin on its own thread, since std's stdin is blocking.
fn stdin_lines() -> async_channel::Receiver<Stdin> {
    let (tx, rx) = async_channel::bounded(STDIN_QUEUE);
    std::thread::spawn(move || {
        let stdin = io::stdin();
        let mut lock = stdin.lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let item = match lock.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => Stdin::End,
                Ok(_) => {
                    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    match std::str::from_utf8(line) {
                        Ok(s) => Stdin::Line(s.to_string()),
                        Err(_) => Stdin::NotUtf8,
                    }
                }
            };
            let end = matches!(item, Stdin::End);
            if tx.send_blocking(item).is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Runs the non-interactive client; see the module documentation.
pub fn run(connector: Connector, direct: DirectOptions) -> ExitCode {
    let code = smol::block_on(run_async(connector, direct));
    ExitCode::from(code)
}

/// What the effects of one event did, for the exit status.
#[derive(Default)]
struct Outcome {
    bad_input: bool,
    direct_failed: bool,
}

/// Carries out effects: lines for the server go to `to_send` (`counted` when they are the user's
/// commands), notes are printed (direct-session lines and events on stdout, marked `[direct]`,
/// like the server's lines; the rest on stderr), and direct-session actions go to the host, whose
/// own effects are carried out in turn.
async fn apply(
    effects: Vec<Effect>,
    counted: bool,
    session: &mut Session,
    host: &mut Host,
    to_send: &mut Vec<(String, bool)>,
    stdout: &mut io::StdoutLock<'_>,
    line_no: Option<u64>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut queue: std::collections::VecDeque<Effect> = effects.into();
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::Send(l) => to_send.push((l, counted)),
            Effect::Show(note) => match note.kind {
                NoteKind::Direct => {
                    let _ = writeln!(stdout, "{note}");
                    let _ = stdout.flush();
                }
                NoteKind::Error => match line_no {
                    Some(n) => {
                        outcome.bad_input = true;
                        eprintln!("chatd: input line {n} not sent: {}", note.text)
                    }
                    None => {
                        outcome.direct_failed = true;
                        eprintln!("chatd: {}", note.text)
                    }
                },
                _ => eprintln!("chatd: {note}"),
            },
            Effect::Direct(action) => queue.extend(host.act(action, session).await),
            // A script says how it logs in; this client keeps no token.
            Effect::SaveToken(_) | Effect::ForgetToken => {}
        }
    }
    outcome
}

async fn run_async(connector: Connector, direct: DirectOptions) -> u8 {
    let (stream, local) = match connector.connect().await {
        Ok(c) => {
            if let Some(note) = c.note {
                eprintln!("chatd: {note}");
            }
            (c.stream, c.local)
        }
        Err(e) => {
            eprintln!("chatd: could not connect to {}: {e}", connector.addr());
            return EXIT_NO_CONNECTION;
        }
    };
    let mut host = Host::new(direct);
    host.connected_from(local);
    let (read_half, write_half) = futures_lite::io::split(stream);
    let mut writer = BufWriter::new(write_half);
    let (server_tx, server_rx) = async_channel::bounded(SERVER_QUEUE);
    // The socket is read by its own future, so the server is never kept waiting on stdin or stdout.
    let reader = async move {
        forward_lines(read_half, server_tx).await;
        future::pending::<u8>().await
    };
    let stdin = stdin_lines();
    let main = async move {
        let mut session = Session::new(false);
        let token = format!("end-{}", std::process::id());
        let barrier_pong = format!("PONG {token}");
        let mut stdout = io::stdout().lock();
        let (mut sent, mut answered) = (0u64, 0u64);
        let mut line_no = 0u64;
        let (mut stdin_open, mut barrier_sent, mut barrier_done) = (true, false, false);
        let (mut greeted, mut auth_failed, mut bad_input) = (false, false, false);
        let mut direct_failed = false;
        loop {
            // Done once stdin has ended, everything sent is answered, and no direct session is
            // being set up or open (it ends with /close on either side, or its offer's end).
            if barrier_done && answered >= sent && !session.direct_active() {
                break;
            }
            let server = async { Event::Server(server_rx.recv().await.unwrap_or(Ok(None))) };
            let direct = async { Event::Direct(host.next().await) };
            let event = if stdin_open {
                future::or(
                    server,
                    future::or(direct, async {
                        Event::Stdin(stdin.recv().await.unwrap_or(Stdin::End))
                    }),
                )
                .await
            } else {
                future::or(server, direct).await
            };
            let mut to_send = Vec::new();
            match event {
                Event::Server(Ok(Some(Incoming::Line(line)))) => {
                    let parsed = parse(&line);
                    if let ServerLine::Ok {
                        label: Some(BARRIER_LABEL),
                        ..
                    }
                    | ServerLine::Fail {
                        label: Some(BARRIER_LABEL),
                        ..
                    } = parsed
                    {
                        barrier_done = true;
                        continue;
                    }
                    if barrier_sent && line == barrier_pong {
                        continue;
                    }
                    if session.is_probe_answer(&parsed) {
                        // The answer to the client's own answer to an idle probe: not shown,
                        // not counted.
                        session.on_server_line(&line, &Clock::now());
                        continue;
                    }
                    match parsed {
                        ServerLine::Hello { .. } => greeted = true,
                        ServerLine::Fail { command, .. } => {
                            answered += 1;
                            auth_failed |= matches!(command, Some(Verb::Login | Verb::Register));
                        }
                        ServerLine::Ok { .. } => answered += 1,
                        _ => {}
                    }
                    // The server's line itself is what is shown; the session's words are not,
                    // except a direct session's: it keeps its bookkeeping (who a plain line goes
                    // to), answers idle probes and runs the direct session.
                    let _ = writeln!(stdout, "{line}");
                    if server_rx.is_empty() {
                        let _ = stdout.flush();
                    }
                    let effects: Vec<Effect> = session
                        .on_server_line(&line, &Clock::now())
                        .into_iter()
                        .filter(|e| match e {
                            Effect::Show(n) => n.kind == NoteKind::Direct,
                            _ => true,
                        })
                        .collect();
                    let o = apply(
                        effects,
                        false,
                        &mut session,
                        &mut host,
                        &mut to_send,
                        &mut stdout,
                        None,
                    )
                    .await;
                    direct_failed |= o.direct_failed;
                }
                Event::Server(Ok(Some(Incoming::TooLong))) => {
                    eprintln!("chatd: a server line over the client's limit was skipped");
                }
                Event::Server(Ok(None)) | Event::Server(Err(_)) => {
                    let _ = stdout.flush();
                    if let Event::Server(Err(e)) = &event {
                        eprintln!("chatd: connection error: {e}");
                    }
                    if !greeted {
                        eprintln!("chatd: the server closed the connection without a greeting");
                        return EXIT_NO_CONNECTION;
                    }
                    if session.quitting() && answered >= sent {
                        break;
                    }
                    let missing = sent.saturating_sub(answered);
                    eprintln!(
                        "chatd: the server closed the connection with {missing} command{} unanswered",
                        if missing == 1 { "" } else { "s" }
                    );
                    return EXIT_CONNECTION_LOST;
                }
                Event::Direct(e) => {
                    let effects = host.handle(e, &mut session);
                    let o = apply(
                        effects,
                        false,
                        &mut session,
                        &mut host,
                        &mut to_send,
                        &mut stdout,
                        None,
                    )
                    .await;
                    direct_failed |= o.direct_failed;
                }
                Event::Stdin(Stdin::Line(line)) => match input::parse(&line) {
                    Ok(parsed) => {
                        line_no += 1;
                        let effects = session.on_input(parsed);
                        let o = apply(
                            effects,
                            true,
                            &mut session,
                            &mut host,
                            &mut to_send,
                            &mut stdout,
                            Some(line_no),
                        )
                        .await;
                        bad_input |= o.bad_input;
                        if session.quitting() {
                            // After QUIT the server closes the connection; nothing more to send.
                            stdin_open = false;
                        }
                    }
                    Err(e) => {
                        line_no += 1;
                        bad_input = true;
                        eprintln!("chatd: input line {line_no} not sent: {}", e.0);
                    }
                },
                Event::Stdin(Stdin::NotUtf8) => {
                    line_no += 1;
                    bad_input = true;
                    eprintln!("chatd: input line {line_no} not sent: it is not valid UTF-8");
                }
                Event::Stdin(Stdin::End) => {
                    stdin_open = false;
                    // Not counted in `sent`: its answer sets `barrier_done` instead.
                    to_send.push((format!("@{BARRIER_LABEL} PING {token}"), false));
                    barrier_sent = true;
                }
            }
            for (line, counted) in to_send {
                sent += u64::from(counted);
                let written = async {
                    writer.write_all(line.as_bytes()).await?;
                    writer.write_all(b"\n").await
                };
                if let Err(e) = written.await {
                    eprintln!("chatd: cannot send: {e}");
                    return EXIT_CONNECTION_LOST;
                }
            }
            // Batch what stdin has ready into one write; flush once it is drained.
            if stdin.is_empty() || !stdin_open {
                if let Err(e) = writer.flush().await {
                    eprintln!("chatd: cannot send: {e}");
                    return EXIT_CONNECTION_LOST;
                }
            }
        }
        let _ = stdout.flush();
        if auth_failed {
            EXIT_AUTH_FAILED
        } else if bad_input {
            EXIT_BAD_INPUT
        } else if direct_failed {
            EXIT_DIRECT_FAILED
        } else {
            EXIT_OK
        }
    };
    future::or(main, reader).await
}
