//! The client's rules as a state machine: typed input and server lines in, lines to send and notes
//! to show out. No IO and no clock of its own, like the server's core, so every rule is a unit test.
//!
//! In interactive use every command goes out with a label (`@c.<n>`) and the session remembers what
//! each label was for, so a reply can be told in words ("delivered to bob"), a login can be kept for
//! logging in again after a reconnect, and replies to commands lost with a connection are counted.
//! Without labels (the non-interactive mode passes server lines through untouched) it still tracks
//! the current conversation: who the user last talked with, or the room they last joined or heard
//! from, where a line without `/` goes.
//!
//! Room messages shown are read: in interactive use the session marks them so (`READ`), with at
//! most one `READ` on its way per room, so that the unread counts at the next login, on any device,
//! start after what this one showed.
//!
//! How a login is kept: after a `/login` succeeds, the session asks the server for a device token
//! (`TOKEN`), hands it to the shell to save ([`Effect::SaveToken`]) and forgets the password. From
//! then on a new connection logs in with `RESUME <token>`: no password in memory, and no password
//! hash on the server. A token the server refuses, one revoked from elsewhere, a deleted account and
//! `/logout` (which revokes the token first) make the session forget it ([`Effect::ForgetToken`]).
//! Without a token (the server refused to issue one), the password is kept for logging in again.

mod direct;

use std::collections::{HashMap, VecDeque};
use std::fmt;

use crate::proto::room::RoomKey;

pub use self::direct::{DirectAction, QUEUED_LINES};

use super::input::{help_text, Input};
use super::render::{self, clean, Clock};
use crate::proto::code::{ByeCode, Code};
use crate::proto::command::Dms;
use crate::proto::command::Verb;
use crate::proto::server_line::{
    parse, AddOutcome, Delivery, FriendReply, JoinOutcome, OkReply, PartOutcome, Presence,
    Recipient, RoomEvent, RoomReply, ServerLine,
};

/// The label of the client's answers to the server's idle probes (`PING <token>`, spec 7.6); their
/// `PONG` and `OK` are the client's own business and are not shown.
pub const PROBE_LABEL: &str = "client.probe";

/// Something the shell around the session must do.
#[derive(Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send this protocol line (without its LF).
    Send(String),
    /// Show this to the user.
    Show(Note),
    /// Do this for the direct session (spec 4.39); the shell reports back.
    Direct(DirectAction),
    /// Keep this device token for the next start (where only the user can read it).
    SaveToken(String),
    /// Delete the kept device token.
    ForgetToken,
}

impl fmt::Debug for Effect {
    // Lines may carry a password, a token always is a secret: neither is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Send(line) => match line.split(' ').find(|w| !w.starts_with('@')) {
                Some(verb) => write!(f, "Send({verb} ...)"),
                None => f.write_str("Send(..)"),
            },
            Effect::Show(note) => f.debug_tuple("Show").field(note).finish(),
            Effect::SaveToken(_) => f.write_str("SaveToken(<redacted>)"),
            Effect::ForgetToken => f.write_str("ForgetToken"),
            // What is said in a direct session is nobody else's business either.
            Effect::Direct(DirectAction::Say(_)) => f.write_str("Direct(Say(..))"),
            Effect::Direct(a) => f.debug_tuple("Direct").field(a).finish(),
        }
    }
}

/// A piece of text for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// How to present it.
    pub kind: NoteKind,
    /// The text, cleaned of control characters; may hold several lines.
    pub text: String,
}

/// How a [`Note`] is presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// A message, shown as it is.
    Chat,
    /// Listing or help output, shown as it is.
    Plain,
    /// An event or a confirmation (`* ...`).
    Info,
    /// A failure (`error: ...`).
    Error,
    /// A line of a direct session, or an event of one (`[direct] ...`): never from the server.
    Direct,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            NoteKind::Chat | NoteKind::Plain => f.write_str(&self.text),
            NoteKind::Info => write!(f, "* {}", self.text),
            NoteKind::Error => write!(f, "error: {}", self.text),
            NoteKind::Direct => write!(f, "[direct] {}", self.text),
        }
    }
}

fn note(kind: NoteKind, text: impl Into<String>) -> Effect {
    Effect::Show(Note {
        kind,
        text: text.into(),
    })
}

/// A password kept for logging in again; never printed.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a labelled command was, to word its reply.
#[derive(Clone, Debug)]
enum Pending {
    Register,
    Login {
        password: Secret,
    },
    Relogin,
    /// RESUME with the kept token; `again` after a reconnect, not at start.
    Resume {
        again: bool,
    },
    /// The TOKEN asked for after a /login.
    IssueToken,
    /// The REVOKE of the kept token that /logout sends before LOGOUT.
    RevokeOwn,
    Logout,
    Password {
        new: Secret,
    },
    Tokens,
    Revoke,
    Unregister,
    Block,
    Whois,
    /// An operator's command (`/announce`, `/suspend`, ...).
    Operator,
    Away,
    Dms,
    Msg {
        to: String,
    },
    Group,
    All,
    Users,
    Help,
    Quit,
    Friend,
    History {
        target: String,
    },
    Join {
        room: String,
    },
    Part,
    Rooms,
    Members,
    Topic,
    RoomChange,
    /// A READ the session sent by itself for what it showed of a room.
    AutoRead {
        room: RoomKey,
    },
    Direct,
}

/// What the session has shown and marked read of one room.
#[derive(Clone, Debug, Default)]
struct Reading {
    /// The newest message id shown.
    shown: u64,
    /// The read marker, as far as the session knows.
    marked: u64,
    /// A READ is on its way.
    outstanding: bool,
}

/// The client's state across commands and reconnections.
#[derive(Debug)]
pub struct Session {
    labelled: bool,
    next_label: u64,
    pending: HashMap<String, Pending>,
    /// The account this connection is logged in as (name as registered).
    me: Option<String>,
    /// Name and password of the last successful LOGIN, to log in again after a reconnect when
    /// there is no device token.
    credentials: Option<(String, Secret)>,
    /// The kept device token: its id, and the token.
    token: Option<(u64, Secret)>,
    /// The label a device token is asked for with; `None` when the shell has nowhere to keep a
    /// token, so none is asked for.
    device: Option<String>,
    /// At least one connection was made: the next RESUME is a reconnect.
    connected_before: bool,
    /// Where a plain line goes: a user, or a room (`#name`).
    target: Option<String>,
    /// USER lines of a USERS answer, shown together with its final line.
    users: Vec<String>,
    /// The room and newest id of the HISTORY lines of the answer being received (a JOIN's).
    replayed: Option<(String, u64)>,
    /// Per room, what was shown and marked read (labelled mode only).
    reading: HashMap<RoomKey, Reading>,
    quitting: bool,
    /// Tokens of the idle probes answered whose PONG has not come back yet, oldest first.
    probes: VecDeque<String>,
    /// The direct session, if any (see `direct`).
    direct: direct::Direct,
}

impl Session {
    /// A session; `labelled` for interactive use (see the module documentation).
    pub fn new(labelled: bool) -> Session {
        Session {
            labelled,
            next_label: 1,
            pending: HashMap::new(),
            me: None,
            credentials: None,
            token: None,
            device: None,
            connected_before: false,
            target: None,
            users: Vec::new(),
            replayed: None,
            reading: HashMap::new(),
            quitting: false,
            probes: VecDeque::new(),
            direct: direct::Direct::default(),
        }
    }

    /// True for a line of the answer to one of this session's probe answers (its `PONG` and its
    /// final line), which a shell does not show. [`Session::on_server_line`] still wants it.
    pub fn is_probe_answer(&self, line: &ServerLine<'_>) -> bool {
        match line {
            ServerLine::Pong { token: Some(t) } => self.probes.front().is_some_and(|p| p == t),
            l => l.is_final() && l.label() == Some(PROBE_LABEL),
        }
    }

    /// A session whose shell keeps a device token: it logs in with `token` (as read from where
    /// the shell keeps it), and after a /login asks for one labelled `device`.
    pub fn with_token(mut self, token: Option<String>, device: &str) -> Session {
        self.token = token.and_then(|t| {
            let id = crate::proto::token::DeviceToken::unchecked(&t).parts()?.0;
            Some((id, Secret(t)))
        });
        self.device = Some(device.to_owned());
        self
    }

    /// True while the session keeps a device token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The account this connection is logged in as, if known.
    pub fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    /// Where a plain line would go: a user, or a room (`#name`).
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// True once the user asked to quit.
    pub fn quitting(&self) -> bool {
        self.quitting
    }

    /// Commands sent whose final reply has not arrived (labelled mode only).
    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }

    /// The prompt for the line editor: who you are, and where a plain line goes.
    pub fn prompt(&self) -> String {
        // While a direct session is set up or open, plain lines go to it: the prompt says so.
        let direct = self.direct_prompt();
        match (&self.me, &self.target) {
            (Some(me), _) if !direct.is_empty() => format!("{me}{direct}> "),
            (Some(me), Some(t)) => format!("{me} → {}> ", clean(t)),
            (Some(me), None) => format!("{me}> "),
            (None, _) => format!("{direct}> ").trim_start().to_string(),
        }
    }

    fn send(&mut self, what: Pending, line: String) -> Effect {
        if !self.labelled {
            return Effect::Send(line);
        }
        let label = format!("c.{}", self.next_label);
        self.next_label += 1;
        let out = format!("@{label} {line}");
        self.pending.insert(label, what);
        Effect::Send(out)
    }

    /// A new connection is up: log in with the kept token, or else again with the credentials.
    pub fn on_connected(&mut self) -> Vec<Effect> {
        self.me = None;
        let again = std::mem::replace(&mut self.connected_before, true);
        if let Some((_, token)) = self.token.clone() {
            return vec![self.send(Pending::Resume { again }, format!("RESUME {}", token.0))];
        }
        match self.credentials.clone() {
            Some((name, password)) => {
                vec![self.send(Pending::Relogin, format!("LOGIN {name} {}", password.0))]
            }
            None => Vec::new(),
        }
    }

    /// Forgets the kept token, here and where the shell keeps it.
    fn forget_token(&mut self) -> Option<Effect> {
        self.token.take().map(|_| Effect::ForgetToken)
    }

    /// The connection is gone: forget what it was doing and say what may have been lost.
    pub fn on_disconnected(&mut self) -> Vec<Effect> {
        let lost = self
            .pending
            .values()
            .filter(|p| !matches!(p, Pending::Quit))
            .count();
        self.pending.clear();
        self.users.clear();
        self.replayed = None;
        self.reading.clear();
        self.probes.clear();
        self.me = None;
        let mut out = self.direct_on_disconnected();
        if lost == 0 {
            return out;
        }
        out.push(note(
            NoteKind::Error,
            format!(
                "{lost} command{} had no answer when the connection was lost; {} may not have taken effect.",
                if lost == 1 { "" } else { "s" },
                if lost == 1 { "it" } else { "they" }
            ),
        ));
        out
    }

    /// Acts on one line the user typed.
    pub fn on_input(&mut self, input: Input<'_>) -> Vec<Effect> {
        match input {
            Input::Nothing => Vec::new(),
            Input::Msg { to, text } => self.msg(to, text),
            Input::Reply { text } if self.direct_active() => self.direct_input_line(text),
            Input::Reply { text } => match self.target.clone() {
                Some(to) => self.msg(&to, text),
                None => vec![note(
                    NoteKind::Error,
                    "nobody to answer yet: start with /msg <name> <text> or /join <#room>. A line \
                     without / goes to the last person you messaged or who messaged you, or to the \
                     room you last joined or heard from.",
                )],
            },
            Input::Group { to, text } => {
                vec![self.send(Pending::Group, format!("GROUP {to} {text}"))]
            }
            Input::All { text } => vec![self.send(Pending::All, format!("ALL {text}"))],
            Input::Users => {
                self.users.clear();
                vec![self.send(Pending::Users, "USERS".into())]
            }
            Input::Help { topic } => {
                let mut out = Vec::new();
                if topic.is_none() {
                    out.push(note(NoteKind::Plain, help_text().trim_end()));
                    out.push(note(NoteKind::Plain, "Server commands (send one with //):"));
                }
                let line = match topic {
                    Some(t) => format!("HELP {t}"),
                    None => "HELP".into(),
                };
                out.push(self.send(Pending::Help, line));
                out
            }
            Input::Quit { reason } => {
                self.quitting = true;
                let line = match reason {
                    Some(r) => format!("QUIT {r}"),
                    None => "QUIT".into(),
                };
                vec![self.send(Pending::Quit, line)]
            }
            Input::Register { name, password } => {
                vec![self.send(Pending::Register, format!("REGISTER {name} {password}"))]
            }
            Input::Login { name, password } => {
                let what = Pending::Login {
                    password: Secret(password.to_string()),
                };
                vec![self.send(what, format!("LOGIN {name} {password}"))]
            }
            Input::Logout => {
                // The device token goes first: a logged-out device must not log in again.
                let mut out = Vec::new();
                if let Some((id, _)) = self.token {
                    let line = format!("REVOKE {}", crate::proto::token::format_id(id));
                    out.push(self.send(Pending::RevokeOwn, line));
                }
                out.push(self.send(Pending::Logout, "LOGOUT".into()));
                out
            }
            Input::Password { old, new } => vec![self.send(
                Pending::Password {
                    new: Secret(new.to_string()),
                },
                format!("PASSWORD {old} {new}"),
            )],
            Input::Tokens => vec![self.send(Pending::Tokens, "TOKENS".into())],
            Input::Revoke { which } => vec![self.send(Pending::Revoke, format!("REVOKE {which}"))],
            Input::Unregister { password } => {
                vec![self.send(Pending::Unregister, format!("UNREGISTER {password}"))]
            }
            Input::Block { name } => vec![self.send(Pending::Block, format!("BLOCK {name}"))],
            Input::Unblock { name } => vec![self.send(Pending::Block, format!("UNBLOCK {name}"))],
            Input::Blocks => vec![self.send(Pending::Block, "BLOCKS".into())],
            Input::Dms { who } => vec![self.send(
                Pending::Dms,
                match who {
                    Some(w) => format!("DMS {w}"),
                    None => "DMS".into(),
                },
            )],
            Input::Away { text } => vec![self.send(
                Pending::Away,
                match text {
                    Some(t) => format!("AWAY {t}"),
                    None => "AWAY".into(),
                },
            )],
            Input::Whois { name } => vec![self.send(Pending::Whois, format!("WHOIS {name}"))],
            Input::Operator { verb, args } => vec![self.send(
                Pending::Operator,
                if args.is_empty() {
                    verb.to_owned()
                } else {
                    format!("{verb} {args}")
                },
            )],
            Input::Friend { args } => vec![self.send(Pending::Friend, format!("FRIEND {args}"))],
            Input::History { args: "" } => match self.target.clone() {
                Some(peer) => vec![self.send(
                    Pending::History {
                        target: peer.clone(),
                    },
                    format!("HISTORY {peer}"),
                )],
                None => vec![note(
                    NoteKind::Error,
                    "usage: /history <name>|* [<count>] [before|after <id>]",
                )],
            },
            Input::History { args } => {
                let target = args.split(' ').next().unwrap_or("").to_string();
                vec![self.send(Pending::History { target }, format!("HISTORY {args}"))]
            }
            Input::Join { room } => {
                // From now on a plain line goes there (a script may send one before the answer).
                self.target = Some(room.to_string());
                let what = Pending::Join {
                    room: room.to_string(),
                };
                vec![self.send(what, format!("JOIN {room}"))]
            }
            Input::Part { room, reason } => {
                self.in_room(room, "/part [<#room>] [<reason>]", |s, r| {
                    let line = match reason {
                        Some(why) => format!("PART {r} {why}"),
                        None => format!("PART {r}"),
                    };
                    s.send(Pending::Part, line)
                })
            }
            Input::Rooms => vec![self.send(Pending::Rooms, "ROOMS".into())],
            Input::Members { room } => self.in_room(room, "/members [<#room>]", |s, r| {
                s.send(Pending::Members, format!("MEMBERS {r}"))
            }),
            Input::Topic { room, text } => {
                self.in_room(room, "/topic [<#room>] [<text>]", |s, r| {
                    let line = match text {
                        Some(t) => format!("TOPIC {r} {t}"),
                        None => format!("TOPIC {r}"),
                    };
                    s.send(Pending::Topic, line)
                })
            }
            Input::OnMember { verb, room, name } => {
                let form = format!("/{} [<#room>] <name>", verb.to_ascii_lowercase());
                self.in_room(room, &form, |s, r| {
                    s.send(Pending::RoomChange, format!("{verb} {r} {name}"))
                })
            }
            Input::Remove {
                verb,
                room,
                name,
                reason,
            } => {
                let form = format!("/{} [<#room>] <name> [<reason>]", verb.to_ascii_lowercase());
                self.in_room(room, &form, |s, r| {
                    let line = match reason {
                        Some(why) => format!("{verb} {r} {name} {why}"),
                        None => format!("{verb} {r} {name}"),
                    };
                    s.send(Pending::RoomChange, line)
                })
            }
            Input::Role { room, name, role } => {
                self.in_room(room, "/role [<#room>] <name> owner|op|member", |s, r| {
                    s.send(Pending::RoomChange, format!("ROLE {r} {name} {role}"))
                })
            }
            Input::Room { sub, room } => self.in_room(
                room,
                "/room info|private|public|delete [<#room>]",
                |s, r| s.send(Pending::RoomChange, format!("ROOM {sub} {r}")),
            ),
            Input::Direct { to } => self.direct_input_offer(to),
            Input::Accept { from } => self.direct_input_accept(from),
            Input::Decline { from } => self.direct_input_decline(from),
            Input::Close => self.direct_input_close(),
            Input::Raw(line) => vec![Effect::Send(line.to_string())],
        }
    }

    /// Runs `then` with the room named, or the current one; without either, says how to name one.
    fn in_room(
        &mut self,
        named: Option<&str>,
        usage: &str,
        then: impl FnOnce(&mut Session, &str) -> Effect,
    ) -> Vec<Effect> {
        let current = self.target.clone().filter(|t| t.starts_with('#'));
        match named.map(str::to_owned).or(current) {
            Some(room) => vec![then(self, &room)],
            None => vec![note(
                NoteKind::Error,
                format!("usage: {usage} (no current room: name one, or /join one first)"),
            )],
        }
    }

    /// A room message was shown: in labelled mode, mark it read unless a READ is on its way
    /// (its answer sends the next one).
    fn shown_in_room(&mut self, room: &str, id: u64) -> Vec<Effect> {
        if !self.labelled {
            return Vec::new();
        }
        let key = RoomKey::of(room);
        let r = self.reading.entry(key.clone()).or_default();
        r.shown = r.shown.max(id);
        if r.outstanding || r.shown <= r.marked {
            return Vec::new();
        }
        r.outstanding = true;
        let line = format!("READ {room} {}", r.shown);
        vec![self.send(Pending::AutoRead { room: key }, line)]
    }

    /// Forgets the current conversation if it is this room (the user is not in it any more).
    fn left_room(&mut self, room: &str) {
        if self
            .target
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(room))
        {
            self.target = None;
        }
        self.reading.remove(&RoomKey::of(room));
    }

    fn msg(&mut self, to: &str, text: &str) -> Vec<Effect> {
        self.target = Some(to.to_string());
        vec![self.send(Pending::Msg { to: to.into() }, format!("MSG {to} {text}"))]
    }

    /// Acts on one line from the server; `clock` places message times.
    pub fn on_server_line(&mut self, raw: &str, clock: &Clock) -> Vec<Effect> {
        let line = parse(raw);
        if self.is_probe_answer(&line) {
            if matches!(line, ServerLine::Pong { .. }) {
                self.probes.pop_front();
            }
            return Vec::new();
        }
        match line {
            // The server heard nothing for a while: any command shows this client is alive.
            ServerLine::Ping { token } => {
                self.probes.push_back(token.to_owned());
                vec![Effect::Send(format!("@{PROBE_LABEL} PING {token}"))]
            }
            ServerLine::Ok { label, reply } => {
                let what = label.and_then(|l| self.pending.remove(l));
                self.on_ok(what, reply, clock)
            }
            // A retry_after is in the sentence too, in words; the sentence is what is shown.
            ServerLine::Fail {
                label,
                command,
                code,
                text,
                ..
            } => {
                let what = label.and_then(|l| self.pending.remove(l));
                self.on_fail(what, command, code, text)
            }
            ServerLine::Hello { version, .. } => {
                let mut text =
                    format!("Server: chatd {}. Type /help for commands.", clean(version));
                if self.credentials.is_none() && self.token.is_none() {
                    text.push_str(
                        " New here? /register <name> <password>, then /login <name> <password>.",
                    );
                }
                vec![note(NoteKind::Info, text)]
            }
            ServerLine::Message(m) => {
                // The server pushes a MESSAGE only to its recipients, so one addressed to a single
                // user is addressed to this account even before the session knows its name.
                let to_me = matches!(m.to, Recipient::User(_));
                let from_me = self
                    .me
                    .as_deref()
                    .is_some_and(|me| me.eq_ignore_ascii_case(m.from));
                if to_me && !from_me {
                    self.target = Some(m.from.to_string());
                }
                let mut out = vec![note(
                    NoteKind::Chat,
                    render::message(&m, self.me.as_deref(), clock, false),
                )];
                if let Recipient::Room(room) = m.to {
                    if !from_me {
                        self.target = Some(room.to_string());
                    }
                    out.extend(self.shown_in_room(room, m.id));
                }
                out
            }
            ServerLine::History(m) => {
                if let Recipient::Room(room) = m.to {
                    self.replayed = Some((room.to_string(), m.id));
                }
                vec![note(
                    NoteKind::Chat,
                    render::message(&m, self.me.as_deref(), clock, true),
                )]
            }
            ServerLine::BacklogEnd { count: 0 } => Vec::new(),
            ServerLine::BacklogEnd { count } => vec![note(
                NoteKind::Info,
                format!(
                    "{count} message{} arrived while you were away.",
                    if count == 1 { "" } else { "s" }
                ),
            )],
            ServerLine::Presence { name, presence } => {
                vec![note(NoteKind::Info, render::presence(name, presence))]
            }
            ServerLine::Friendship { name, event } => {
                vec![note(NoteKind::Info, render::friendship(name, event))]
            }
            ServerLine::Bye { code, text } => {
                let mut out = Vec::new();
                // This device's login was revoked, or the account is gone: it must not log in
                // again by itself.
                if matches!(code, ByeCode::REVOKED | ByeCode::ACCOUNT_DELETED) {
                    self.credentials = None;
                    out.extend(self.forget_token());
                }
                out.push(note(
                    NoteKind::Error,
                    format!("the server is closing the connection: {}", clean(text)),
                ));
                out
            }
            ServerLine::User { name } => {
                self.users.push(clean(name).into_owned());
                Vec::new()
            }
            ServerLine::Help { text } => vec![note(NoteKind::Plain, format!("  {}", clean(text)))],
            ServerLine::Pong { token } => vec![note(
                NoteKind::Info,
                format!("pong {}", clean(token.unwrap_or("")))
                    .trim_end()
                    .to_string(),
            )],
            ServerLine::Friend { name, state } => {
                vec![note(NoteKind::Plain, render::friend(name, state))]
            }
            ServerLine::Token(t) => vec![note(NoteKind::Plain, render::token(&t, clock))],
            ServerLine::Away { name, text } => vec![note(NoteKind::Info, render::away(name, text))],
            ServerLine::Blocked { name } => {
                vec![note(
                    NoteKind::Plain,
                    format!("  {} (blocked)", clean(name)),
                )]
            }
            ServerLine::Room(r) => vec![note(NoteKind::Plain, render::room(&r))],
            ServerLine::Member {
                name,
                role,
                presence,
                ..
            } => vec![note(NoteKind::Plain, render::member(name, role, presence))],
            ServerLine::Ban {
                name,
                by,
                time_ms,
                reason,
                ..
            } => vec![note(
                NoteKind::Plain,
                render::ban(name, by, time_ms, reason, clock),
            )],
            ServerLine::Invitation {
                name,
                by,
                expires_ms,
                ..
            } => vec![note(
                NoteKind::Plain,
                render::invitation(name, by, expires_ms, clock),
            )],
            ServerLine::RoomEvent { room, event } => {
                let me = self.me.clone();
                let about_me = |n: &str| me.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(n));
                match event {
                    RoomEvent::Parted { name, .. }
                    | RoomEvent::Kicked { name, .. }
                    | RoomEvent::Banned { name, .. }
                        if about_me(name) =>
                    {
                        self.left_room(room)
                    }
                    RoomEvent::Deleted { .. } => self.left_room(room),
                    _ => {}
                }
                vec![note(
                    NoteKind::Info,
                    render::room_event(room, &event, self.me.as_deref(), clock),
                )]
            }
            ServerLine::Unread { room, count, first } => {
                vec![note(NoteKind::Info, render::unread(room, count, first))]
            }
            ServerLine::Read { target, id } => {
                // Another of this account's connections marked it read: nothing to show.
                if target.starts_with('#') {
                    let r = self.reading.entry(RoomKey::of(target)).or_default();
                    r.marked = r.marked.max(id);
                }
                Vec::new()
            }
            ServerLine::Direct { name, event } => self.on_direct_push(name, event),
            ServerLine::Stat { name, value } => {
                vec![note(NoteKind::Plain, format!("  {name} {value}"))]
            }
            ServerLine::Notice { text } => {
                vec![note(NoteKind::Info, format!("NOTICE: {}", clean(text)))]
            }
            ServerLine::Other(raw) => {
                vec![note(NoteKind::Plain, format!("server: {}", clean(raw)))]
            }
        }
    }

    fn on_ok(&mut self, what: Option<Pending>, reply: OkReply<'_>, clock: &Clock) -> Vec<Effect> {
        // Whoever sent it (a slash command, a raw line, a script), the login state follows the reply.
        // Credentials and the token are kept only from a /login the session saw succeed; a raw
        // LOGIN, RESUME or LOGOUT makes the ones it had wrong, so they go (the saved token stays
        // saved: it is the device's, for the next start).
        let mut effects = Vec::new();
        match reply {
            OkReply::Login { name } | OkReply::Resume { name } => {
                self.me = Some(name.to_string());
                if !matches!(
                    what,
                    Some(Pending::Login { .. } | Pending::Relogin | Pending::Resume { .. })
                ) {
                    self.credentials = None;
                    self.token = None;
                }
            }
            OkReply::Logout => {
                self.me = None;
                self.credentials = None;
            }
            OkReply::Direct(r) => return self.on_direct_ok(r),
            OkReply::Unregister { .. } => {
                self.me = None;
                self.credentials = None;
                effects.extend(self.forget_token());
            }
            _ => {}
        }
        let replayed = self.replayed.take();
        let text = match (what, reply) {
            (Some(Pending::AutoRead { room }), OkReply::Read { target, id }) => {
                let r = self.reading.entry(room).or_default();
                r.outstanding = false;
                r.marked = r.marked.max(id);
                // More was shown while it was on its way.
                let shown = r.shown;
                return self.shown_in_room(target, shown);
            }
            (Some(Pending::Msg { to }), OkReply::RoomMsg { delivered, .. }) => match delivered {
                0 => format!("sent to {} (nobody else online there)", clean(&to)),
                1 => format!("sent to {} (1 other member online)", clean(&to)),
                n => format!("sent to {} ({n} other members online)", clean(&to)),
            },
            (_, OkReply::Join { room, outcome }) => {
                self.target = Some(room.to_string());
                let mut out = vec![note(
                    NoteKind::Info,
                    match outcome {
                        JoinOutcome::Created => format!(
                            "Created {0}; you are its owner. A line without / now goes to {0}.",
                            clean(room)
                        ),
                        JoinOutcome::Joined => {
                            format!("Joined {0}. A line without / now goes to {0}.", clean(room))
                        }
                        JoinOutcome::Member => format!(
                            "You are in {0}. A line without / now goes to {0}.",
                            clean(room)
                        ),
                    },
                )];
                // What the JOIN replayed was shown: it is read.
                if let Some((r, id)) = replayed {
                    out.extend(self.shown_in_room(&r, id));
                }
                return out;
            }
            (_, OkReply::Part { room, outcome }) => {
                self.left_room(room);
                match outcome {
                    PartOutcome::Left => format!("You left {}.", clean(room)),
                    PartOutcome::Declined => {
                        format!("You declined the invitation to {}.", clean(room))
                    }
                }
            }
            (Some(Pending::Rooms), OkReply::Rooms { count: 0 }) => {
                "no rooms yet: /join <#room> creates one".into()
            }
            (Some(Pending::Rooms), OkReply::Rooms { count }) => format!("{count} rooms"),
            (Some(Pending::Members), OkReply::Members { room, count }) => {
                format!("{count} in {}", clean(room))
            }
            (
                Some(Pending::Topic),
                OkReply::Topic {
                    room, set: None, ..
                },
            ) => format!("{} has no topic.", clean(room)),
            (
                Some(Pending::Topic),
                OkReply::Topic {
                    room,
                    set: Some(set),
                    text: "",
                },
            ) => format!(
                "{} has no topic (cleared by {}, {}).",
                clean(room),
                clean(set.by),
                clock.local(set.time_ms, true)
            ),
            (
                Some(Pending::Topic),
                OkReply::Topic {
                    room,
                    set: Some(set),
                    text,
                },
            ) => format!(
                "Topic of {}: {} (set by {}, {})",
                clean(room),
                clean(text),
                clean(set.by),
                clock.local(set.time_ms, true)
            ),
            (Some(Pending::RoomChange), reply) => room_ok(reply, clock),
            (Some(Pending::Register), OkReply::Register { name }) => format!(
                "Registered {0}. Now log in: /login {0} <password>",
                clean(name)
            ),
            (Some(Pending::Login { password }), OkReply::Login { name }) => {
                self.credentials = Some((name.to_string(), password));
                if let Some(device) = self.device.clone().filter(|_| self.labelled) {
                    // A device token, so that this client logs in again without the password.
                    effects.push(self.send(Pending::IssueToken, format!("TOKEN {device}")));
                }
                format!("Logged in as {}.", clean(name))
            }
            (Some(Pending::Relogin), OkReply::Login { name }) => {
                format!("Logged in again as {}.", clean(name))
            }
            (Some(Pending::Resume { again: true }), OkReply::Resume { name }) => {
                format!("Logged in again as {}.", clean(name))
            }
            (Some(Pending::Resume { again: false }), OkReply::Resume { name }) => format!(
                "Logged in as {} with this device's saved token (/logout forgets it).",
                clean(name)
            ),
            (Some(Pending::IssueToken), OkReply::Token { id, token }) => {
                // The token replaces the password: it is all this client keeps.
                self.token = Some((id, Secret(token.to_owned())));
                self.credentials = None;
                effects.push(Effect::SaveToken(token.to_owned()));
                "This device will log in by itself from now on (/logout to stop that).".into()
            }
            (Some(Pending::RevokeOwn), OkReply::Revoke { .. }) => {
                effects.extend(self.forget_token());
                return effects;
            }
            (Some(Pending::Logout), OkReply::Logout) => "Logged out.".into(),
            (Some(Pending::Password { new }), OkReply::Password { revoked, closed }) => {
                if let Some((_, password)) = &mut self.credentials {
                    *password = new;
                }
                format!(
                    "Password changed. {revoked} other device token{} revoked, {closed} other \
                     connection{} closed.",
                    if revoked == 1 { "" } else { "s" },
                    if closed == 1 { "" } else { "s" }
                )
            }
            (Some(Pending::Tokens), OkReply::Tokens { count: 0 }) => "no device tokens".into(),
            (Some(Pending::Tokens), OkReply::Tokens { count }) => format!(
                "{count} device token{}; /revoke <id> logs one out",
                if count == 1 { "" } else { "s" }
            ),
            (Some(Pending::Revoke), OkReply::Revoke { revoked, closed }) => format!(
                "{revoked} token{} revoked; {closed} connection{} closed",
                if revoked == 1 { "" } else { "s" },
                if closed == 1 { "" } else { "s" }
            ),
            (Some(Pending::Unregister), OkReply::Unregister { name }) => {
                format!("The account {} is deleted.", clean(name))
            }
            (Some(Pending::Operator), OkReply::Announce { delivered }) => {
                format!("notice sent to {delivered} connection(s)")
            }
            (Some(Pending::Operator), OkReply::Suspend { name, closed }) => format!(
                "{} is suspended; {closed} connection(s) closed",
                clean(name)
            ),
            (Some(Pending::Operator), OkReply::Unsuspend { name }) => {
                format!("{} may log in again", clean(name))
            }
            (Some(Pending::Operator), OkReply::Kill { name, closed }) => {
                format!("{closed} connection(s) of {} closed", clean(name))
            }
            (Some(Pending::Operator), OkReply::Stats { count }) => format!("{count} figures"),
            (Some(Pending::Operator), OkReply::Adduser { name }) => {
                format!("account {} created", clean(name))
            }
            (Some(Pending::Block), OkReply::Block { name }) => {
                format!("blocked {}: they can no longer reach you", clean(name))
            }
            (Some(Pending::Block), OkReply::Unblock { name }) => {
                format!("unblocked {}", clean(name))
            }
            (Some(Pending::Block), OkReply::Blocks { count: 0 }) => "you block no one".into(),
            (Some(Pending::Block), OkReply::Blocks { count }) => format!("{count} blocked"),
            (Some(Pending::Dms), OkReply::Dms { policy }) => match policy {
                Dms::Friends => "direct messages: from friends only".into(),
                Dms::Everyone => "direct messages: from everyone".into(),
            },
            (Some(Pending::Away), OkReply::Away { set: true }) => {
                "You are away; friends and whoever writes to you see your message.".into()
            }
            (Some(Pending::Away), OkReply::Away { set: false }) => "You are back.".into(),
            (
                Some(Pending::Whois),
                OkReply::Whois {
                    name,
                    presence,
                    last_seen_ms,
                    away,
                },
            ) => {
                let mut t = match (presence, last_seen_ms) {
                    (Presence::Online, _) => format!("{} is online", clean(name)),
                    (Presence::Offline, Some(ms)) => format!(
                        "{} is offline, last seen {}",
                        clean(name),
                        clock.local(ms, false)
                    ),
                    (Presence::Offline, None) => format!("{} is offline", clean(name)),
                };
                if !away.is_empty() {
                    t.push_str(&format!("; away: {}", clean(away)));
                }
                t
            }
            (Some(Pending::Msg { to }), OkReply::Msg { delivery, .. }) => match delivery {
                Delivery::Kept => format!(
                    "{} is offline; the message waits for their next login.",
                    clean(&to)
                ),
                Delivery::Delivered => format!("delivered to {}", clean(&to)),
            },
            (
                Some(Pending::Group),
                OkReply::Group {
                    delivered, kept, ..
                },
            ) => match kept {
                0 => format!("delivered to {delivered}"),
                k => format!("delivered to {delivered}; kept for {k} offline"),
            },
            (Some(Pending::All), OkReply::All { delivered, .. }) => {
                format!("delivered to {delivered} online")
            }
            (Some(Pending::Users), _) | (None, OkReply::Users { .. }) => {
                return self.users_listed()
            }
            (Some(Pending::Help), _) => return Vec::new(),
            (Some(Pending::Quit), _) => "Bye.".into(),
            (Some(Pending::Friend), OkReply::Friend(r)) => friend_ok(r),
            (
                Some(Pending::History { target }),
                OkReply::History {
                    with,
                    count,
                    before,
                    ..
                },
            ) => match (count, before) {
                (0, _) if target == "*" => "no messages to everyone".to_string(),
                (0, _) => format!("no messages with {}", clean(&target)),
                (_, Some(before)) => format!(
                    "older messages: /history {} 50 before {before}",
                    clean(with)
                ),
                (_, None) => return Vec::new(),
            },
            (_, reply) => clean(&format!("OK {reply}")).into_owned(),
        };
        effects.push(note(NoteKind::Info, text));
        effects
    }

    fn users_listed(&mut self) -> Vec<Effect> {
        let users = std::mem::take(&mut self.users);
        vec![note(
            NoteKind::Info,
            format!("online ({}): {}", users.len(), users.join(", ")),
        )]
    }

    fn on_fail(
        &mut self,
        what: Option<Pending>,
        command: Option<Verb>,
        code: Code,
        text: &str,
    ) -> Vec<Effect> {
        self.users.clear();
        self.replayed = None;
        if command == Some(Verb::Direct) {
            return self.on_direct_fail(text);
        }
        let text = clean(text);
        if let Some(Pending::Join { room }) = &what {
            // Not joined after all: plain lines do not go there.
            if self.target.as_deref() == Some(room.as_str()) {
                self.target = None;
            }
        }
        let mut effects = Vec::new();
        let shown = match what {
            Some(Pending::AutoRead { room }) => {
                // Not worth troubling the user with; do not try again for this room.
                if let Some(r) = self.reading.get_mut(&room) {
                    r.outstanding = false;
                    r.marked = r.shown;
                }
                return Vec::new();
            }
            Some(Pending::Login { .. }) => format!("login failed: {text}"),
            Some(Pending::Register) => format!("registration failed: {text}"),
            Some(Pending::Relogin) => {
                let name = self.credentials.take().map(|c| c.0).unwrap_or_default();
                format!(
                    "could not log in again as {}: {text}. Use /login <name> <password>.",
                    clean(&name)
                )
            }
            Some(Pending::Resume { .. }) => {
                effects.extend(self.forget_token());
                format!(
                    "the saved login of this device no longer works ({text}); it is forgotten. \
                     Use /login <name> <password>."
                )
            }
            Some(Pending::IssueToken) => format!(
                "no device token ({text}); this client logs in again with your password instead"
            ),
            // The token is useless either way: it is forgotten, the logout goes on.
            Some(Pending::RevokeOwn) => {
                effects.extend(self.forget_token());
                return effects;
            }
            Some(_) => text.into_owned(),
            // Not ours (a raw line, or a line refused before its label was read): say which.
            None => format!(
                "{} {}: {text}",
                command.map_or("*", Verb::name),
                code.as_str()
            ),
        };
        effects.push(note(NoteKind::Error, shown));
        effects
    }
}

/// `OK INVITE`, `KICK`, `BAN`, `UNBAN`, `ROLE` and `ROOM ...` in words.
fn room_ok(reply: OkReply<'_>, clock: &Clock) -> String {
    match reply {
        OkReply::Invite {
            room,
            name,
            expires_ms,
        } => format!(
            "invited {} to {} (until {})",
            clean(name),
            clean(room),
            clock.local(expires_ms, true)
        ),
        OkReply::Kick { room, name } => format!("removed {} from {}", clean(name), clean(room)),
        OkReply::Ban { room, name } => format!("banned {} from {}", clean(name), clean(room)),
        OkReply::Unban { room, name } => {
            format!("lifted {}'s ban from {}", clean(name), clean(room))
        }
        OkReply::Role { room, name, role } => format!(
            "{} is now {} of {}",
            clean(name),
            role.as_str().to_ascii_lowercase(),
            clean(room)
        ),
        OkReply::Room(RoomReply::Info { room, created_ms }) => {
            format!(
                "{} was created {}",
                clean(room),
                clock.local(created_ms, true)
            )
        }
        OkReply::Room(RoomReply::Private { room }) => {
            format!("{} is private: invitation only", clean(room))
        }
        OkReply::Room(RoomReply::Public { room }) => format!("{} is public", clean(room)),
        OkReply::Room(RoomReply::Delete { room }) => format!("deleted {}", clean(room)),
        other => clean(&format!("OK {other}")).into_owned(),
    }
}

/// `OK FRIEND ...` in words.
fn friend_ok(reply: FriendReply<'_>) -> String {
    match reply {
        FriendReply::Add {
            name,
            outcome: AddOutcome::Requested,
        } => format!("friend request sent to {}", clean(name)),
        FriendReply::Add {
            name,
            outcome: AddOutcome::Friends,
        }
        | FriendReply::Accept { name } => format!("you and {} are now friends", clean(name)),
        FriendReply::Deny { name } => format!("you denied {}'s friend request", clean(name)),
        FriendReply::Remove { name } => format!(
            "removed {} (a friendship ended, or your request withdrawn)",
            clean(name)
        ),
        FriendReply::List { count: 0 } => "no friends or friend requests yet".into(),
        FriendReply::List { count } => format!("{count} in all"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::input::parse as typed;
    use crate::proto::direct::Fingerprint;

    fn clock() -> Clock {
        Clock {
            tz: jiff::tz::TimeZone::UTC,
            now: "2026-11-21T12:00:00Z".parse().unwrap(),
        }
    }

    fn input(s: &mut Session, line: &str) -> Vec<Effect> {
        s.on_input(typed(line).unwrap())
    }

    fn server(s: &mut Session, line: &str) -> Vec<Effect> {
        s.on_server_line(line, &clock())
    }

    fn sent(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(l) => Some(l.as_str()),
                _ => None,
            })
            .collect()
    }

    fn shown(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Show(n) => Some(n.to_string()),
                _ => None,
            })
            .collect()
    }

    fn logged_in(name: &str) -> Session {
        let mut s = Session::new(true);
        assert_eq!(
            sent(&input(&mut s, &format!("/login {name} secret-pw1"))),
            [format!("@c.1 LOGIN {name} secret-pw1")]
        );
        assert_eq!(
            shown(&server(&mut s, &format!("OK @c.1 LOGIN {name}"))),
            [format!("* Logged in as {name}.")]
        );
        s
    }

    #[test]
    fn replies_are_worded_by_what_was_sent() {
        let mut s = logged_in("alice");
        assert_eq!(sent(&input(&mut s, "/msg bob hi")), ["@c.2 MSG bob hi"]);
        assert_eq!(
            sent(&input(&mut s, "/group bob,carol yo")),
            ["@c.3 GROUP bob,carol yo"]
        );
        assert_eq!(sent(&input(&mut s, "/all hey")), ["@c.4 ALL hey"]);
        assert_eq!(s.unanswered(), 3);
        // Replies may come in any order; labels match them up.
        assert_eq!(
            shown(&server(&mut s, "OK @c.4 ALL 9 DELIVERED 2")),
            ["* delivered to 2 online"]
        );
        assert_eq!(
            shown(&server(&mut s, "OK @c.2 MSG 7 KEPT")),
            ["* bob is offline; the message waits for their next login."]
        );
        assert_eq!(
            shown(&server(&mut s, "OK @c.3 GROUP 8 DELIVERED 1 KEPT 1")),
            ["* delivered to 1; kept for 1 offline"]
        );
        assert_eq!(
            shown(&server(
                &mut s,
                "FAIL @c.9 MSG UNKNOWN_USER no such user: zed"
            )),
            ["error: MSG UNKNOWN_USER: no such user: zed"]
        );
        assert_eq!(s.unanswered(), 0);
        // The prompt says where a plain line goes: bob, the last person messaged.
        assert_eq!(s.prompt(), "alice → bob> ");
    }

    #[test]
    fn operator_commands_are_sent_and_their_answers_worded() {
        let mut s = logged_in("root");
        assert_eq!(
            sent(&input(&mut s, "/announce back at 18:10")),
            ["@c.2 ANNOUNCE back at 18:10"]
        );
        assert_eq!(
            shown(&server(&mut s, "OK @c.2 ANNOUNCE 7")),
            ["* notice sent to 7 connection(s)"]
        );
        assert_eq!(
            shown(&server(&mut s, "NOTICE back at 18:10")),
            ["* NOTICE: back at 18:10"]
        );
        assert_eq!(
            sent(&input(&mut s, "/suspend mallory spam")),
            ["@c.3 SUSPEND mallory spam"]
        );
        assert_eq!(
            shown(&server(&mut s, "OK @c.3 SUSPEND Mallory CLOSED 2")),
            ["* Mallory is suspended; 2 connection(s) closed"]
        );
        assert_eq!(sent(&input(&mut s, "/stats")), ["@c.4 STATS"]);
        assert_eq!(
            shown(&server(&mut s, "STAT connections 3")),
            ["  connections 3"]
        );
        assert_eq!(shown(&server(&mut s, "OK @c.4 STATS 1")), ["* 1 figures"]);
        assert_eq!(
            sent(&input(&mut s, "/adduser dave wonderland1")),
            ["@c.5 ADDUSER dave wonderland1"]
        );
        assert_eq!(
            shown(&server(
                &mut s,
                "FAIL @c.5 ADDUSER NOT_ADMIN for admins only"
            )),
            ["error: for admins only"]
        );
    }

    /// The server's idle probe is answered at once, with a PING of the same token, and neither the
    /// probe's answer nor its own reply is shown; a PONG the user asked for still is.
    #[test]
    fn an_idle_probe_is_answered_quietly() {
        let mut s = logged_in("alice");
        let probed = server(&mut s, "PING 42");
        assert_eq!(sent(&probed), ["@client.probe PING 42"]);
        assert!(shown(&probed).is_empty());
        assert_eq!(sent(&input(&mut s, "//PING 42")), ["PING 42"]);
        let pong = parse("PONG 42");
        assert!(s.is_probe_answer(&pong));
        assert!(server(&mut s, "PONG 42").is_empty());
        assert!(server(&mut s, "OK @client.probe PING").is_empty());
        // The user's own PING of the same token is shown.
        assert!(!s.is_probe_answer(&pong));
        assert_eq!(shown(&server(&mut s, "PONG 42")), ["* pong 42"]);
        assert_eq!(s.unanswered(), 0);
    }

    #[test]
    fn plain_lines_go_to_the_last_person_talked_with() {
        let mut s = logged_in("alice");
        let none = input(&mut s, "hello?");
        assert!(sent(&none).is_empty());
        assert!(shown(&none)[0].starts_with("error: nobody to answer yet"));

        // A direct message to me makes its sender the one I answer.
        let shown_msg = shown(&server(
            &mut s,
            "MESSAGE 3 2026-11-21T11:59:00.000Z Bob Alice hi alice",
        ));
        assert_eq!(shown_msg, ["[11:59] Bob → you: hi alice"]);
        assert_eq!(s.target(), Some("Bob"));
        assert_eq!(sent(&input(&mut s, "hi bob")), ["@c.2 MSG Bob hi bob"]);

        // Group and broadcast messages do not change it; sending a MSG does.
        server(
            &mut s,
            "MESSAGE 4 2026-11-21T11:59:00.000Z carol alice,bob x",
        );
        server(&mut s, "MESSAGE 5 2026-11-21T11:59:00.000Z dave * y");
        assert_eq!(s.target(), Some("Bob"));
        input(&mut s, "/msg erin z");
        assert_eq!(sent(&input(&mut s, "again")), ["@c.4 MSG erin again"]);
        assert_eq!(sent(&input(&mut s, "/history")), ["@c.5 HISTORY erin"]);
    }

    #[test]
    fn credentials_are_reused_after_a_reconnect_and_forgotten_on_logout() {
        let mut s = logged_in("Alice");
        input(&mut s, "/msg bob one");
        input(&mut s, "/msg bob two");
        let lost = s.on_disconnected();
        assert_eq!(
            shown(&lost),
            ["error: 2 commands had no answer when the connection was lost; they may not have taken effect."]
        );
        assert_eq!(s.me(), None);
        let again = s.on_connected();
        assert_eq!(sent(&again), ["@c.4 LOGIN Alice secret-pw1"]);
        assert_eq!(
            shown(&server(&mut s, "OK @c.4 LOGIN Alice")),
            ["* Logged in again as Alice."]
        );
        assert_eq!(s.me(), Some("Alice"));
        // The password never shows in debug output.
        assert!(!format!("{s:?}").contains("secret-pw1"));

        input(&mut s, "/logout");
        assert_eq!(shown(&server(&mut s, "OK @c.5 LOGOUT")), ["* Logged out."]);
        assert!(s.on_connected().is_empty());
    }

    #[test]
    fn a_raw_login_as_someone_else_drops_the_kept_credentials() {
        let mut s = logged_in("alice");
        assert_eq!(
            sent(&input(&mut s, "//LOGIN bob builder123")),
            ["LOGIN bob builder123"]
        );
        server(&mut s, "OK LOGIN bob");
        assert_eq!(s.me(), Some("bob"));
        s.on_disconnected();
        // Not alice's password for bob's session: no automatic login at all.
        assert!(s.on_connected().is_empty());
    }

    #[test]
    fn a_failed_relogin_forgets_the_credentials() {
        let mut s = logged_in("alice");
        s.on_disconnected();
        assert_eq!(sent(&s.on_connected()), ["@c.2 LOGIN alice secret-pw1"]);
        let failed = server(
            &mut s,
            "FAIL @c.2 LOGIN BAD_CREDENTIALS wrong name or password",
        );
        assert_eq!(
            shown(&failed),
            ["error: could not log in again as alice: wrong name or password. Use /login <name> <password>."]
        );
        s.on_disconnected();
        assert!(s.on_connected().is_empty());
    }

    #[test]
    fn a_failed_login_keeps_nothing() {
        let mut s = Session::new(true);
        input(&mut s, "/login alice wrong-pass");
        assert_eq!(
            shown(&server(
                &mut s,
                "FAIL @c.1 LOGIN BAD_CREDENTIALS wrong name or password"
            )),
            ["error: login failed: wrong name or password"]
        );
        assert!(s.on_connected().is_empty());
        assert_eq!(s.prompt(), "> ");
    }

    #[test]
    fn multi_line_answers_and_pushes() {
        let mut s = logged_in("alice");
        input(&mut s, "/users");
        assert!(server(&mut s, "USER alice").is_empty());
        assert!(server(&mut s, "USER bob").is_empty());
        assert_eq!(
            shown(&server(&mut s, "OK @c.2 USERS 2")),
            ["* online (2): alice, bob"]
        );
        let help = input(&mut s, "/help");
        assert_eq!(sent(&help), ["@c.3 HELP"]);
        assert!(shown(&help)[0].contains("/msg <name> <text>"));
        assert_eq!(
            shown(&server(
                &mut s,
                "HELP PING [<token>] -- check the connection"
            )),
            ["  PING [<token>] -- check the connection"]
        );
        assert!(server(&mut s, "OK @c.3 HELP").is_empty());
        assert_eq!(
            shown(&server(&mut s, "PRESENCE bob OFFLINE")),
            ["* bob is offline."]
        );
        assert_eq!(
            shown(&server(&mut s, "BACKLOG-END 2")),
            ["* 2 messages arrived while you were away."]
        );
        assert!(server(&mut s, "BACKLOG-END 0").is_empty());
        assert_eq!(
            shown(&server(&mut s, "BYE SHUTDOWN the server is stopping")),
            ["error: the server is closing the connection: the server is stopping"]
        );
        assert_eq!(
            shown(&server(&mut s, "WHO\u{1b}KNOWS")),
            ["server: WHO\u{fffd}KNOWS"]
        );
        input(&mut s, "/friend add bob");
        assert_eq!(
            shown(&server(&mut s, "OK @c.4 FRIEND ADD bob REQUESTED")),
            ["* friend request sent to bob"]
        );
    }

    const TOKEN: &str = "ct1.00000000000000ab.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn kept(effects: &[Effect]) -> Vec<Effect> {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::SaveToken(_) | Effect::ForgetToken))
            .cloned()
            .collect()
    }

    #[test]
    fn a_login_is_exchanged_for_a_device_token_that_logs_in_again() {
        let mut s = Session::new(true).with_token(None, "chatd client on desk");
        assert!(s.on_connected().is_empty());
        input(&mut s, "/login alice secret-pw1");
        let after = server(&mut s, "OK @c.1 LOGIN alice");
        assert_eq!(sent(&after), ["@c.2 TOKEN chatd client on desk"]);
        let issued = server(&mut s, &format!("OK @c.2 TOKEN 00000000000000ab {TOKEN}"));
        assert_eq!(kept(&issued), [Effect::SaveToken(TOKEN.into())]);
        assert!(s.has_token());
        // The password is not kept once there is a token.
        assert!(!format!("{s:?}").contains("secret-pw1"));
        assert!(!format!("{s:?} {issued:?}").contains("AAAAAAAA"));
        s.on_disconnected();
        let again = s.on_connected();
        assert_eq!(sent(&again), [format!("@c.3 RESUME {TOKEN}")]);
        assert_eq!(
            shown(&server(&mut s, "OK @c.3 RESUME alice")),
            ["* Logged in again as alice."]
        );
        assert_eq!(s.me(), Some("alice"));
    }

    #[test]
    fn a_saved_token_logs_in_at_start_and_a_refused_one_is_forgotten() {
        let mut s = Session::new(true).with_token(Some(TOKEN.into()), "x");
        assert_eq!(sent(&s.on_connected()), [format!("@c.1 RESUME {TOKEN}")]);
        assert_eq!(
            shown(&server(&mut s, "OK @c.1 RESUME alice")),
            ["* Logged in as alice with this device's saved token (/logout forgets it)."]
        );
        s.on_disconnected();
        s.on_connected();
        let refused = server(
            &mut s,
            "FAIL @c.2 RESUME BAD_TOKEN unknown, expired or revoked token",
        );
        assert_eq!(kept(&refused), [Effect::ForgetToken]);
        assert!(shown(&refused)[0].contains("Use /login <name> <password>"));
        s.on_disconnected();
        assert!(s.on_connected().is_empty());
    }

    #[test]
    fn logout_revokes_the_token_before_logging_out() {
        let mut s = Session::new(true).with_token(Some(TOKEN.into()), "x");
        s.on_connected();
        server(&mut s, "OK @c.1 RESUME alice");
        let out = input(&mut s, "/logout");
        assert_eq!(sent(&out), ["@c.2 REVOKE 00000000000000ab", "@c.3 LOGOUT"]);
        let revoked = server(&mut s, "OK @c.2 REVOKE 1 CLOSED 0");
        assert_eq!(kept(&revoked), [Effect::ForgetToken]);
        assert!(shown(&revoked).is_empty());
        assert_eq!(shown(&server(&mut s, "OK @c.3 LOGOUT")), ["* Logged out."]);
        s.on_disconnected();
        assert!(s.on_connected().is_empty());
    }

    #[test]
    fn a_revoked_login_or_a_deleted_account_forgets_the_token() {
        for bye in [
            "BYE REVOKED the token this connection logged in with was revoked",
            "BYE ACCOUNT_DELETED the account was deleted",
        ] {
            let mut s = Session::new(true).with_token(Some(TOKEN.into()), "x");
            s.on_connected();
            server(&mut s, "OK @c.1 RESUME alice");
            assert_eq!(kept(&server(&mut s, bye)), [Effect::ForgetToken], "{bye}");
            s.on_disconnected();
            assert!(s.on_connected().is_empty(), "{bye}");
        }
        let mut s = Session::new(true).with_token(Some(TOKEN.into()), "x");
        s.on_connected();
        server(&mut s, "OK @c.1 RESUME alice");
        input(&mut s, "/unregister secret-pw1");
        let gone = server(&mut s, "OK @c.2 UNREGISTER alice");
        assert_eq!(kept(&gone), [Effect::ForgetToken]);
        assert_eq!(shown(&gone), ["* The account alice is deleted."]);
    }

    #[test]
    fn a_refused_token_keeps_the_password_for_logging_in_again() {
        let mut s = Session::new(true).with_token(None, "x");
        input(&mut s, "/login alice secret-pw1");
        server(&mut s, "OK @c.1 LOGIN alice");
        let refused = server(&mut s, "FAIL @c.2 TOKEN TOO_MANY_TOKENS you hold 20 tokens");
        assert!(kept(&refused).is_empty());
        s.on_disconnected();
        assert_eq!(sent(&s.on_connected()), ["@c.3 LOGIN alice secret-pw1"]);
    }

    #[test]
    fn account_replies_in_words() {
        let mut s = logged_in("alice");
        input(&mut s, "/whois bob");
        assert_eq!(
            shown(&server(
                &mut s,
                "OK @c.2 WHOIS bob OFFLINE 2026-11-21T11:00:00.000Z  at lunch"
            )),
            ["* bob is offline, last seen 11:00; away:  at lunch"]
        );
        input(&mut s, "/whois carol");
        assert_eq!(
            shown(&server(&mut s, "OK @c.3 WHOIS carol ONLINE -")),
            ["* carol is online"]
        );
        input(&mut s, "/password secret-pw1 new-secret2");
        assert_eq!(
            shown(&server(&mut s, "OK @c.4 PASSWORD REVOKED 2 CLOSED 1")),
            ["* Password changed. 2 other device tokens revoked, 1 other connection closed."]
        );
        // Logging in again uses the new password.
        s.on_disconnected();
        assert_eq!(sent(&s.on_connected()), ["@c.5 LOGIN alice new-secret2"]);
        server(&mut s, "OK @c.5 LOGIN alice");
        input(&mut s, "/block mallory");
        assert_eq!(
            shown(&server(&mut s, "OK @c.6 BLOCK mallory")),
            ["* blocked mallory: they can no longer reach you"]
        );
        assert_eq!(
            shown(&server(&mut s, "AWAY bob gone fishing")),
            ["* bob is away: gone fishing"]
        );
        assert_eq!(shown(&server(&mut s, "AWAY bob")), ["* bob is back."]);
        input(&mut s, "/tokens");
        assert_eq!(
            shown(&server(
                &mut s,
                "TOKEN 00000000000000ab 2026-11-21T10:00:00.000Z 2026-11-21T11:00:00.000Z \
                 2026-12-21T11:00:00.000Z CURRENT laptop"
            )),
            ["  00000000000000ab  laptop (this connection): created 2026-11-21 10:00, last used \
              2026-11-21 11:00, expires 2026-12-21 11:00"]
        );
    }

    #[test]
    fn after_a_join_plain_lines_go_to_the_room() {
        let mut s = logged_in("alice");
        assert_eq!(sent(&input(&mut s, "/join #Rust")), ["@c.2 JOIN #Rust"]);
        assert_eq!(
            shown(&server(&mut s, "ROOM #Rust PUBLIC 3 MEMBER 0 be kind")),
            ["  #Rust (public, 3 members; you: member): be kind"]
        );
        let replay = server(
            &mut s,
            "HISTORY 7 2026-11-21T11:00:00.000Z bob #Rust earlier",
        );
        assert_eq!(shown(&replay), ["[2026-11-21 11:00] bob → #Rust: earlier"]);
        // The answer's end: the room is where plain lines go now, and what was replayed is read.
        let joined = server(&mut s, "OK @c.2 JOIN #Rust JOINED");
        assert_eq!(
            shown(&joined),
            ["* Joined #Rust. A line without / now goes to #Rust."]
        );
        assert_eq!(sent(&joined), ["@c.3 READ #Rust 7"]);
        assert_eq!(s.target(), Some("#Rust"));
        assert_eq!(s.prompt(), "alice → #Rust> ");
        assert_eq!(
            sent(&input(&mut s, "hello all")),
            ["@c.4 MSG #Rust hello all"]
        );
        assert_eq!(
            shown(&server(&mut s, "OK @c.4 MSG 9 DELIVERED 2")),
            ["* sent to #Rust (2 other members online)"]
        );
        // Room commands default to the current room.
        assert_eq!(sent(&input(&mut s, "/topic")), ["@c.5 TOPIC #Rust"]);
        assert_eq!(
            sent(&input(&mut s, "/kick bob spam")),
            ["@c.6 KICK #Rust bob spam"]
        );
        assert_eq!(
            sent(&input(&mut s, "/invite #team carol")),
            ["@c.7 INVITE #team carol"]
        );
        assert_eq!(sent(&input(&mut s, "/members")), ["@c.8 MEMBERS #Rust"]);
    }

    #[test]
    fn room_messages_are_shown_with_their_room_and_marked_read_one_read_at_a_time() {
        let mut s = logged_in("alice");
        let first = server(&mut s, "MESSAGE 10 2026-11-21T11:59:00.000Z bob #x one");
        assert_eq!(shown(&first), ["[11:59] bob → #x: one"]);
        assert_eq!(sent(&first), ["@c.2 READ #x 10"]);
        // A message from a room makes it the current conversation.
        assert_eq!(s.target(), Some("#x"));
        // While that READ is on its way, nothing more is sent...
        let second = server(&mut s, "MESSAGE 11 2026-11-21T11:59:01.000Z bob #x two");
        assert!(sent(&second).is_empty());
        let third = server(&mut s, "MESSAGE 12 2026-11-21T11:59:02.000Z bob #x three");
        assert!(sent(&third).is_empty());
        // ...and its answer sends one READ for the newest shown, silently.
        let ok = server(&mut s, "OK @c.2 READ #x 10");
        assert!(shown(&ok).is_empty());
        assert_eq!(sent(&ok), ["@c.3 READ #x 12"]);
        assert!(sent(&server(&mut s, "OK @c.3 READ #x 12")).is_empty());
        // Another connection of the account read further: no READ for what it covers.
        assert!(server(&mut s, "READ #x 20").is_empty());
        assert!(sent(&server(
            &mut s,
            "MESSAGE 15 2026-11-21T11:59:03.000Z bob #x old"
        ))
        .is_empty());
        assert_eq!(s.unanswered(), 0);
    }

    #[test]
    fn leaving_a_room_ends_it_as_the_current_conversation() {
        let mut s = logged_in("alice");
        server(&mut s, "MESSAGE 10 2026-11-21T11:59:00.000Z bob #x hi");
        assert_eq!(s.target(), Some("#x"));
        assert_eq!(
            shown(&server(&mut s, "KICKED #x alice bob off topic")),
            ["* bob removed you from #x (off topic)."]
        );
        assert_eq!(s.target(), None);
        let err = input(&mut s, "/part");
        assert!(sent(&err).is_empty());
        assert!(
            shown(&err)[0].contains("no current room"),
            "{:?}",
            shown(&err)
        );
        server(&mut s, "MESSAGE 11 2026-11-21T11:59:00.000Z bob #y hi");
        assert_eq!(sent(&input(&mut s, "/part bye")), ["@c.4 PART #y bye"]);
        assert_eq!(
            shown(&server(&mut s, "OK @c.4 PART #y LEFT")),
            ["* You left #y."]
        );
        assert_eq!(s.target(), None);
    }

    #[test]
    fn login_shows_unread_rooms_and_invitations() {
        let mut s = logged_in("alice");
        assert_eq!(
            shown(&server(&mut s, "UNREAD #rust 3 57")),
            ["* #rust: 3 unread messages; read them with /history #rust 3 after 56"]
        );
        assert_eq!(
            shown(&server(&mut s, "INVITED #team bob 2026-11-28T12:00:00.000Z")),
            ["* bob invites you to #team (until 2026-11-28 12:00): /join #team, or /part #team to decline."]
        );
    }

    #[test]
    fn unlabelled_sessions_send_plain_protocol_lines() {
        let mut s = Session::new(false);
        assert_eq!(
            sent(&input(&mut s, "/register alice wonderland1")),
            ["REGISTER alice wonderland1"]
        );
        assert_eq!(sent(&input(&mut s, "/msg bob  hi")), ["MSG bob  hi"]);
        assert_eq!(sent(&input(&mut s, "again")), ["MSG bob again"]);
        assert_eq!(sent(&input(&mut s, "//PING x")), ["PING x"]);
        // A direct message makes its sender the one a plain line answers, labels or not.
        server(&mut s, "OK LOGIN alice");
        assert_eq!(s.me(), Some("alice"));
        server(&mut s, "MESSAGE 9 2026-11-21T11:59:00.000Z carol alice hey");
        assert_eq!(sent(&input(&mut s, "hi carol")), ["MSG carol hi carol"]);
        // Without labels the session sends nothing of its own: no READ for a room message.
        let room = server(&mut s, "MESSAGE 10 2026-11-21T11:59:00.000Z dave #x hi");
        assert!(sent(&room).is_empty());
        assert_eq!(sent(&input(&mut s, "and you")), ["MSG #x and you"]);
        assert_eq!(sent(&input(&mut s, "/quit")), ["QUIT"]);
        assert!(s.quitting());
        assert_eq!(s.unanswered(), 0);
    }

    fn actions(effects: &[Effect]) -> Vec<DirectAction> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Direct(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    const FP1: &str =
        "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
    const FP2: &str =
        "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";

    /// The offering side: prepare, offer, hear the answer, wait for the peer, then lines go to
    /// it; what was typed before it opened goes first.
    #[test]
    fn an_offer_from_slash_direct_to_an_open_session() {
        let mut s = logged_in("alice");
        let fp1 = Fingerprint::parse(FP1).unwrap();
        assert_eq!(
            actions(&input(&mut s, "/direct bob")),
            [DirectAction::PrepareOffer { peer: "bob".into() }]
        );
        assert!(s.direct_active());
        let offered = s.offer_ready("127.0.0.1:4000", &fp1);
        assert_eq!(
            sent(&offered),
            [format!("@c.2 DIRECT OFFER bob 127.0.0.1:4000 {FP1}")]
        );
        assert!(shown(&offered)[0].contains("there is no NAT traversal"));
        // Typed before the session opens: kept, not sent to the server.
        let early = input(&mut s, "hello early");
        assert!(sent(&early).is_empty() && actions(&early).is_empty());
        assert_eq!(
            shown(&server(&mut s, "OK @c.2 DIRECT OFFER bob 60")),
            ["[direct] offer passed to bob; it waits 60 s for an answer"]
        );
        let accepted = server(&mut s, &format!("DIRECT bob ACCEPTED {FP2}"));
        assert_eq!(
            actions(&accepted),
            [DirectAction::Await {
                peer: "bob".into(),
                fingerprint: Fingerprint::parse(FP2).unwrap()
            }]
        );
        assert_eq!(s.prompt(), "alice [direct bob?]> ");
        let open = s.on_direct_open();
        assert!(shown(&open)[0].contains("stored nowhere"));
        assert_eq!(s.prompt(), "alice [direct bob]> ");
        assert_eq!(actions(&open), [DirectAction::Say("hello early".into())]);
        assert_eq!(
            actions(&input(&mut s, "and now")),
            [DirectAction::Say("and now".into())]
        );
        assert_eq!(
            shown(&s.on_direct_message("hi \u{1b}[2J alice")),
            ["[direct] bob: hi \u{fffd}[2J alice"]
        );
        // /msg still goes through the server.
        assert_eq!(sent(&input(&mut s, "/msg carol x")), ["@c.3 MSG carol x"]);
        let closed = input(&mut s, "/close");
        assert_eq!(actions(&closed), [DirectAction::Close]);
        assert!(sent(&closed).is_empty(), "an open session needs no CANCEL");
        assert!(!s.direct_active());
        assert_eq!(
            sent(&input(&mut s, "back to carol")),
            ["@c.4 MSG carol back to carol"]
        );
    }

    /// The accepting side: an offer is shown, /accept makes a certificate, the server's OK says
    /// where to connect and what to expect there.
    #[test]
    fn accepting_an_offer_dials_the_address_it_named() {
        let mut s = logged_in("bob");
        assert!(shown(&input(&mut s, "/accept alice"))[0].contains("has not offered you"));
        let offer = server(&mut s, &format!("DIRECT alice OFFER 192.0.2.7:4000 {FP1}"));
        assert!(shown(&offer)[0].contains("/accept alice or /decline alice"));
        assert_eq!(
            actions(&input(&mut s, "/accept ALICE")),
            [DirectAction::PrepareAccept {
                peer: "alice".into()
            }]
        );
        let fp2 = Fingerprint::parse(FP2).unwrap();
        assert_eq!(
            sent(&s.accept_ready(&fp2)),
            [format!("@c.2 DIRECT ACCEPT alice {FP2}")]
        );
        let ok = server(
            &mut s,
            &format!("OK @c.2 DIRECT ACCEPT alice 192.0.2.7:4000 {FP1}"),
        );
        assert_eq!(
            actions(&ok),
            [DirectAction::Dial {
                peer: "alice".into(),
                address: "192.0.2.7:4000".into(),
                fingerprint: Fingerprint::parse(FP1).unwrap()
            }]
        );
        s.on_direct_open();
        let gone = s.on_direct_closed(None);
        assert_eq!(shown(&gone), ["[direct] alice closed the direct session"]);
        assert!(!s.direct_active());
    }

    /// Every way an offer ends without a session: declined, refused by the server, expired, or a
    /// check that failed; lines typed for it are reported as not sent.
    #[test]
    fn offers_that_end_without_a_session() {
        let mut s = logged_in("alice");
        let fp1 = Fingerprint::parse(FP1).unwrap();
        input(&mut s, "/direct bob");
        s.offer_ready("127.0.0.1:4000", &fp1);
        input(&mut s, "lost line");
        let declined = server(&mut s, "DIRECT bob DECLINED");
        assert_eq!(actions(&declined), [DirectAction::Close]);
        assert_eq!(
            shown(&declined),
            [
                "[direct] bob declined the direct session",
                "error: 1 line typed for the direct session was not sent"
            ]
        );
        input(&mut s, "/direct zed");
        s.offer_ready("127.0.0.1:4000", &fp1);
        let refused = server(&mut s, "FAIL @c.3 DIRECT USER_OFFLINE zed is offline");
        assert_eq!(actions(&refused), [DirectAction::Close]);
        assert_eq!(shown(&refused), ["error: direct session: zed is offline"]);
        input(&mut s, "/direct bob");
        s.offer_ready("127.0.0.1:4000", &fp1);
        assert_eq!(
            actions(&server(&mut s, "DIRECT bob EXPIRED")),
            [DirectAction::Close]
        );
        input(&mut s, "/direct bob");
        s.offer_ready("127.0.0.1:4000", &fp1);
        let cancelled = input(&mut s, "/close");
        assert_eq!(sent(&cancelled), ["@c.6 DIRECT CANCEL bob"]);
        input(&mut s, "/direct bob");
        s.offer_ready("127.0.0.1:4000", &fp1);
        server(&mut s, &format!("DIRECT bob ACCEPTED {FP2}"));
        let failed = s.direct_failed("the certificate's fingerprint is X, not Y");
        assert_eq!(actions(&failed), [DirectAction::Close]);
        assert!(shown(&failed)[0].starts_with("error: direct session with bob aborted: "));
        assert!(!s.direct_active());
        // An offer to the user that is withdrawn is forgotten.
        server(&mut s, &format!("DIRECT carol OFFER 192.0.2.7:4000 {FP1}"));
        assert_eq!(
            shown(&server(&mut s, "DIRECT carol WITHDRAWN")),
            ["[direct] carol withdrew their offer"]
        );
        assert!(shown(&input(&mut s, "/accept carol"))[0].contains("has not offered you"));
    }
}
