//! The terminal client: a line editor on the main thread, the connection on a second thread, and a
//! third that prints.
//!
//! Incoming lines are printed through rustyline's external printer, which clears the prompt line,
//! prints above it and redraws the prompt with whatever was half typed, so a message arriving while
//! the user types never garbles their line. Printing has its own thread because the printer may
//! block until the editor takes the text; the connection thread only ever waits on a bounded queue to
//! it, never on the terminal.
//!
//! A lost connection is reported, then retried with exponential back-off ([`BACKOFF_START`] doubling
//! to [`BACKOFF_MAX`]); once back, the session logs in again with its device token (or its
//! credentials, when it has no token). While disconnected, typed lines are refused with an
//! explanation rather than queued, so nothing is sent later by surprise.
//!
//! The device token lives in a file of the user's ([`super::token_file`]): read at start, so that a
//! new client logs in by itself, written when the session gets one, deleted when it forgets it.

use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use futures_lite::io::AsyncWriteExt;
use rustyline::error::ReadlineError;
use rustyline::ExternalPrinter as _;

use super::conn::{forward_lines, Connected, Connector, Incoming};
use super::direct::{DirectOptions, Host, HostEvent};
use super::input::{self, Input};
use super::render::Clock;
use super::session::{Effect, Note, NoteKind, Session};
use super::token_file;
use super::{EXIT_NO_CONNECTION, EXIT_OK};
use crate::proto::server_line::{parse, ServerLine};

/// First wait before reconnecting.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long `/quit` waits for the server to confirm before closing anyway.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Typed lines queued for the connection thread.
const UI_QUEUE: usize = 16;
/// Notes queued for the printing thread.
const PRINT_QUEUE: usize = 256;
/// Server lines queued between the socket reader and the session.
const SERVER_QUEUE: usize = 256;

/// From the line editor to the connection thread.
enum Ui {
    Line(String),
    /// Ctrl-D, or the terminal went away.
    End,
}

/// Why one connection ended.
enum Ended {
    Quit,
    Lost { why: String, greeted: bool },
}

/// Runs the interactive client. A terminal the line editor cannot drive (`TERM=dumb`, say) gets
/// the non-interactive client instead, which still works there.
pub fn run(connector: Connector, direct: DirectOptions) -> ExitCode {
    let editor = rustyline::DefaultEditor::new().and_then(|mut e| {
        let printer = e.create_external_printer()?;
        Ok((e, printer))
    });
    let (mut editor, mut printer) = match editor {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("chatd: no line editing on this terminal ({e}); reading plain lines instead");
            return super::batch::run(connector, direct);
        }
    };
    // Connect before showing a prompt, so a wrong address is an error, not a prompt that goes nowhere.
    let first = match smol::block_on(connector.connect()) {
        Ok(c) => {
            if let Some(note) = &c.note {
                eprintln!("chatd: {note}");
            }
            c
        }
        Err(e) => {
            eprintln!("chatd: could not connect to {}: {e}", connector.addr());
            return ExitCode::from(EXIT_NO_CONNECTION);
        }
    };

    let (print_tx, print_rx) = async_channel::bounded::<String>(PRINT_QUEUE);
    let printing = std::thread::spawn(move || {
        while let Ok(mut text) = print_rx.recv_blocking() {
            text.push('\n');
            if printer.print(text).is_err() {
                break;
            }
        }
    });

    let token_path = token_file::path_for(connector.addr());
    let saved = match token_path.as_deref().map(token_file::load) {
        Some(Ok((token, warning))) => {
            if let Some(w) = warning {
                eprintln!("chatd: warning: {w}");
            }
            token
        }
        Some(Err(e)) => {
            eprintln!("chatd: cannot read the saved login: {e}");
            None
        }
        None => None,
    };
    let session = Session::new(true).with_token(saved, &device_label());

    let prompt = Arc::new(Mutex::new("> ".to_string()));
    let (ui_tx, ui_rx) = async_channel::bounded::<Ui>(UI_QUEUE);
    let network = {
        let prompt = prompt.clone();
        std::thread::spawn(move || {
            let mut net = Net {
                connector,
                session,
                token_path,
                host: Host::new(direct),
                ui: ui_rx,
                out: print_tx,
                prompt,
            };
            smol::block_on(net.run(first));
        })
    };

    loop {
        let p = prompt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match editor.readline(&p) {
            Ok(line) => {
                let parsed = input::parse(&line);
                // Passwords stay out of the editor's history.
                if !matches!(
                    parsed,
                    Ok(Input::Login { .. }
                        | Input::Register { .. }
                        | Input::Password { .. }
                        | Input::Unregister { .. }
                        | Input::Nothing)
                ) {
                    let _ = editor.add_history_entry(line.as_str());
                }
                let quit = matches!(parsed, Ok(Input::Quit { .. }));
                if ui_tx.send_blocking(Ui::Line(line)).is_err() || quit {
                    break;
                }
            }
            // Ctrl-C abandons the line being typed, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => {
                let _ = ui_tx.send_blocking(Ui::End);
                break;
            }
            Err(e) => {
                eprintln!("chatd: terminal error: {e}");
                let _ = ui_tx.send_blocking(Ui::End);
                break;
            }
        }
    }
    drop(ui_tx);
    let _ = network.join();
    let _ = printing.join();
    ExitCode::from(EXIT_OK)
}

/// What a device token is labelled with: this client and the machine it runs on.
fn device_label() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(40)
        .collect();
    if host.is_empty() {
        "chatd client".into()
    } else {
        format!("chatd client on {host}")
    }
}

/// The connection thread's state.
struct Net {
    connector: Connector,
    /// The direct session's network side: it outlives a lost server connection.
    host: Host,
    session: Session,
    /// Where the device token is kept, if there is a configuration directory.
    token_path: Option<PathBuf>,
    ui: Receiver<Ui>,
    out: Sender<String>,
    prompt: Arc<Mutex<String>>,
}

impl Net {
    async fn show(&self, kind: NoteKind, text: impl Into<String>) {
        let note = Note {
            kind,
            text: text.into(),
        };
        let _ = self.out.send(note.to_string()).await;
    }

    fn update_prompt(&self) {
        *self.prompt.lock().unwrap_or_else(PoisonError::into_inner) = self.session.prompt();
    }

    async fn run(&mut self, first: Connected) {
        self.show(
            NoteKind::Info,
            format!(
                "connected to {} ({})",
                self.connector.addr(),
                self.connector.describe()
            ),
        )
        .await;
        let mut stream = first;
        let mut delay = BACKOFF_START;
        loop {
            let (why, greeted) = match self.connection(stream).await {
                Ended::Quit => return,
                Ended::Lost { why, greeted } => (why, greeted),
            };
            let mut effects: std::collections::VecDeque<Effect> =
                self.session.on_disconnected().into();
            while let Some(effect) = effects.pop_front() {
                match effect {
                    Effect::Direct(action) => {
                        effects.extend(self.host.act(action, &mut self.session).await)
                    }
                    effect => self.effect_offline(effect).await,
                }
            }
            self.update_prompt();
            self.show(
                NoteKind::Error,
                format!("connection to {} lost: {why}", self.connector.addr()),
            )
            .await;
            // A connection that got as far as the greeting was a good one: start the back-off
            // afresh. One refused at once (server full, say) keeps growing it.
            if greeted {
                delay = BACKOFF_START;
            }
            stream = loop {
                self.show(
                    NoteKind::Info,
                    format!("reconnecting in {}...", seconds(delay)),
                )
                .await;
                if self.offline(smol::Timer::after(delay)).await.is_none() {
                    return;
                }
                let attempt = self.offline(self.connector.connect()).await;
                delay = (delay * 2).min(BACKOFF_MAX);
                match attempt {
                    None => return,
                    Some(Ok(c)) => {
                        self.show(
                            NoteKind::Info,
                            format!("reconnected to {}", self.connector.addr()),
                        )
                        .await;
                        if let Some(note) = &c.note {
                            self.show(NoteKind::Error, note.clone()).await;
                        }
                        break c;
                    }
                    Some(Err(e)) => {
                        self.show(NoteKind::Error, format!("could not reconnect: {e}"))
                            .await
                    }
                }
            };
        }
    }

    /// Waits for `fut` while disconnected, answering typed lines. `None` if the user quit.
    async fn offline<F: std::future::Future>(&self, fut: F) -> Option<F::Output> {
        enum Step<T> {
            Done(T),
            Typed(Ui),
        }
        let mut fut = pin!(fut);
        loop {
            let step = future::or(async { Step::Done((&mut fut).await) }, async {
                Step::Typed(self.ui.recv().await.unwrap_or(Ui::End))
            })
            .await;
            match step {
                Step::Done(v) => return Some(v),
                Step::Typed(Ui::End) => return None,
                Step::Typed(Ui::Line(line)) => match input::parse(&line) {
                    Ok(Input::Quit { .. }) => return None,
                    Ok(Input::Nothing) => {}
                    Ok(_) => {
                        self.show(
                            NoteKind::Error,
                            "not connected, so that was not sent; reconnecting (/quit to leave)",
                        )
                        .await
                    }
                    Err(e) => self.show(NoteKind::Error, e.0).await,
                },
            }
        }
    }

    async fn effect_offline(&self, effect: Effect) {
        match effect {
            Effect::Show(note) => {
                let _ = self.out.send(note.to_string()).await;
            }
            Effect::SaveToken(_) | Effect::ForgetToken => self.keep_token(effect).await,
            // Nothing can be sent while disconnected; a direct action is the caller's.
            Effect::Send(_) | Effect::Direct(_) => {}
        }
    }

    /// Saves or deletes the device token file.
    async fn keep_token(&self, effect: Effect) {
        let Some(path) = &self.token_path else {
            return;
        };
        let result = match &effect {
            Effect::SaveToken(token) => token_file::save(path, token),
            Effect::ForgetToken => token_file::forget(path),
            _ => return,
        };
        if let Err(e) = result {
            self.show(
                NoteKind::Error,
                format!("cannot keep the login in {}: {e}", path.display()),
            )
            .await;
        }
    }

    /// Runs one connection until it is lost or the user quits.
    async fn connection(&mut self, connected: Connected) -> Ended {
        self.host.connected_from(connected.local);
        let (read_half, mut writer) = futures_lite::io::split(connected.stream);
        let (server_tx, server_rx) = async_channel::bounded(SERVER_QUEUE);
        let reader = async move {
            forward_lines(read_half, server_tx).await;
            future::pending::<Ended>().await
        };
        let main = async {
            let tz = jiff::tz::TimeZone::system();
            let mut greeted = false;
            let mut quit_by: Option<smol::Timer> = None;
            let mut effects: std::collections::VecDeque<Effect> =
                self.session.on_connected().into();
            loop {
                while let Some(effect) = effects.pop_front() {
                    match effect {
                        Effect::Direct(action) => {
                            effects.extend(self.host.act(action, &mut self.session).await)
                        }
                        Effect::Send(line) => {
                            let sent = async {
                                writer.write_all(line.as_bytes()).await?;
                                writer.write_all(b"\n").await?;
                                writer.flush().await
                            };
                            if let Err(e) = sent.await {
                                if self.session.quitting() {
                                    return Ended::Quit;
                                }
                                return Ended::Lost {
                                    why: e.to_string(),
                                    greeted,
                                };
                            }
                        }
                        Effect::Show(note) => {
                            let _ = self.out.send(note.to_string()).await;
                        }
                        Effect::SaveToken(_) | Effect::ForgetToken => self.keep_token(effect).await,
                    }
                }
                self.update_prompt();
                if self.session.quitting() && quit_by.is_none() {
                    quit_by = Some(smol::Timer::after(QUIT_GRACE));
                }

                enum Step {
                    Server(std::io::Result<Option<Incoming>>),
                    Typed(Ui),
                    Direct(HostEvent),
                    GiveUp,
                }
                let server = async { Step::Server(server_rx.recv().await.unwrap_or(Ok(None))) };
                let direct = async { Step::Direct(self.host.next().await) };
                let typed = async {
                    if self.session.quitting() {
                        // Nothing more is read from the user once quitting.
                        future::pending::<()>().await;
                    }
                    Step::Typed(self.ui.recv().await.unwrap_or(Ui::End))
                };
                let give_up = async {
                    match quit_by.as_mut() {
                        Some(t) => {
                            t.await;
                            Step::GiveUp
                        }
                        None => future::pending().await,
                    }
                };
                match future::or(server, future::or(direct, future::or(typed, give_up))).await {
                    Step::Direct(e) => {
                        effects = self.host.handle(e, &mut self.session).into();
                    }
                    Step::Server(Ok(Some(Incoming::Line(line)))) => {
                        if matches!(parse(&line), ServerLine::Hello { .. }) {
                            greeted = true;
                        }
                        let clock = Clock {
                            tz: tz.clone(),
                            now: jiff::Timestamp::now(),
                        };
                        effects = self.session.on_server_line(&line, &clock).into();
                    }
                    Step::Server(Ok(Some(Incoming::TooLong))) => {
                        self.show(
                            NoteKind::Error,
                            "a server line was too long and was skipped",
                        )
                        .await;
                    }
                    Step::Server(Ok(None)) | Step::Server(Err(_)) | Step::GiveUp
                        if self.session.quitting() =>
                    {
                        return Ended::Quit;
                    }
                    Step::Server(Ok(None)) => {
                        return Ended::Lost {
                            why: "the server closed the connection".into(),
                            greeted,
                        }
                    }
                    Step::Server(Err(e)) => {
                        return Ended::Lost {
                            why: e.to_string(),
                            greeted,
                        }
                    }
                    Step::GiveUp => return Ended::Quit,
                    Step::Typed(Ui::Line(line)) => {
                        effects = match input::parse(&line) {
                            Ok(parsed) => self.session.on_input(parsed).into(),
                            Err(e) => {
                                self.show(NoteKind::Error, e.0).await;
                                Default::default()
                            }
                        }
                    }
                    Step::Typed(Ui::End) => {
                        effects = self.session.on_input(Input::Quit { reason: None }).into();
                    }
                }
            }
        };
        future::or(main, reader).await
    }
}

fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}
