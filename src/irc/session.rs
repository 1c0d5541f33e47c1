//! One IRC connection's front end: IRC lines in, the core's command lines out; the core's typed
//! lines in, IRC lines out. Sans-IO: the network shell (`net::conn`) and the simulator (`sim`) feed
//! it and carry what it returns.
//!
//! The session holds only what IRC needs on top of the core: the capabilities the client asked
//! for, the registration steps seen, which rooms the client shows as joined, and, for each command
//! it handed to the core and whose answer has not come, what IRC command that answer belongs to
//! (`pending`, by the label the command carries: the reader and the writer of a connection both hand
//! commands to the core, so the core may take them in another order than they were made). Every rule
//! of the server (who may join, what a message may hold, who is told what) stays in the core: the
//! session translates, it decides nothing the core decides.

use std::collections::BTreeMap;

use super::message::{is_middle, Message};
use crate::config::{
    HISTORY_MAX_COUNT, IRC_CATCH_UP, IRC_HOST, IRC_MAX_HELD_BYTES, IRC_MAX_LINE_BYTES,
    IRC_MAX_TARGETS, IRC_SASL_CHUNK, IRC_SERVER_NAME, MAX_AWAY_BYTES, MAX_NAME_LEN,
    MAX_REASON_BYTES, MAX_ROOM_NAME_LEN, MAX_TOPIC_BYTES,
};
use crate::proto::code::Code;
use crate::proto::room::{Privacy, Role};
use crate::proto::server_line::{
    self, MessageLine, OkReply, Presence, Recipient, RoomEvent, RoomReply, ServerLine, Standing,
};
use crate::proto::time::timestamp;

/// The capabilities offered (CAP LS), in the order listed.
pub const CAPS: &[&str] = &[
    "away-notify",
    "batch",
    "draft/chathistory",
    "echo-message",
    "message-tags",
    "multi-prefix",
    "sasl",
    "server-time",
];

/// What one step of the session produced.
#[derive(Debug, Default)]
pub struct Effects {
    /// IRC bytes for the client, CR LF ended lines.
    pub client: String,
    /// Command lines for the core, without their LF, in order.
    pub core: Vec<String>,
}

/// The capabilities a client enabled.
#[derive(Clone, Copy, Debug, Default)]
struct Caps {
    away_notify: bool,
    batch: bool,
    chathistory: bool,
    echo_message: bool,
    message_tags: bool,
    multi_prefix: bool,
    sasl: bool,
    server_time: bool,
}

impl Caps {
    fn set(&mut self, name: &str, on: bool) -> bool {
        let flag = match name {
            "away-notify" => &mut self.away_notify,
            "batch" => &mut self.batch,
            "draft/chathistory" => &mut self.chathistory,
            "echo-message" => &mut self.echo_message,
            "message-tags" => &mut self.message_tags,
            "multi-prefix" => &mut self.multi_prefix,
            "sasl" => &mut self.sasl,
            "server-time" => &mut self.server_time,
            _ => return false,
        };
        *flag = on;
        true
    }

    fn enabled(&self) -> Vec<&'static str> {
        let on = [
            self.away_notify,
            self.batch,
            self.chathistory,
            self.echo_message,
            self.message_tags,
            self.multi_prefix,
            self.sasl,
            self.server_time,
        ];
        CAPS.iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// Where the login stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Login {
    /// No credentials tried yet.
    None,
    /// LOGIN or RESUME handed to the core, not yet answered.
    Pending,
    /// Logged in as this account (the nick).
    Done(String),
}

/// What an answer from the core belongs to.
#[derive(Debug)]
enum Ctx {
    /// LOGIN or RESUME, from SASL or from PASS.
    Login {
        sasl: bool,
    },
    /// An answer nobody asked to see (PONG to the server's probe, a registration QUIT).
    Silent,
    /// The client's PING.
    Ping {
        token: String,
    },
    /// PRIVMSG or NOTICE.
    Msg {
        target: String,
        text: String,
        notice: bool,
    },
    Join {
        room: String,
    },
    Part {
        room: String,
        reason: String,
    },
    /// MEMBERS for NAMES (`who`: false) or WHO (`who`: true); `joining`: the NAMES of a JOIN,
    /// shown only if the client is in the room.
    Members {
        room: String,
        who: bool,
        joining: bool,
    },
    Topic {
        room: String,
        set: bool,
    },
    /// ROOM INFO for `MODE #room` (`bans`: false) or `MODE #room b` (true).
    RoomInfo {
        room: String,
        bans: bool,
    },
    /// A mode change mapped to ROLE, BAN, UNBAN, ROOM PRIVATE or ROOM PUBLIC.
    Mode {
        room: String,
        change: String,
        arg: Option<String>,
    },
    Kick {
        room: String,
        reason: String,
    },
    Invite,
    /// WHOIS (`who`: false) or `WHO <nick>` (true).
    Whois {
        nick: String,
        who: bool,
    },
    Away,
    /// ROOMS for LIST (`auto`: false) or for the joins after login (true).
    Rooms {
        auto: bool,
    },
    /// HISTORY for CHATHISTORY, or (`catch_up`) for the unread messages of a room at login.
    History {
        target: String,
        catch_up: bool,
    },
    Quit,
}

/// A ROOM data line, kept until its answer ends.
#[derive(Debug)]
struct RoomRow {
    room: String,
    privacy: Privacy,
    members: u64,
    standing: Standing,
    topic: String,
}

/// A message kept until its answer ends (the replay of a JOIN, a HISTORY page).
#[derive(Debug)]
struct Msg {
    id: u64,
    time_ms: i64,
    from: String,
    to: Target,
    text: String,
}

/// Whom a kept message was for, as IRC shows it.
#[derive(Debug)]
enum Target {
    Room(String),
    /// A direct message (a MSG, a GROUP or an ALL): the other party, as IRC's target field.
    User(String),
}

/// The data lines of the answer being received.
#[derive(Debug, Default)]
struct Acc {
    rooms: Vec<RoomRow>,
    members: Vec<(String, Role, Presence)>,
    messages: Vec<Msg>,
    bans: Vec<(String, String, i64)>,
}

/// One IRC connection's state. See the module documentation.
#[derive(Debug)]
pub struct Session {
    version: String,
    /// The password a client that gives no credentials logs in with (`--irc-default-password`).
    default_password: Option<String>,
    caps: Caps,
    /// CAP LS or REQ was seen and CAP END not yet: registration waits.
    negotiating: bool,
    /// The nick the client asked for, before login.
    nick: Option<String>,
    user: bool,
    pass: Option<String>,
    /// AUTHENTICATE PLAIN was started; the payload gathered so far.
    sasl: Option<String>,
    login: Login,
    welcomed: bool,
    /// Lines rendered after login and before the welcome (a SASL login's backlog), sent after it.
    held: String,
    /// What each command handed to the core and not yet answered belongs to, by its label's
    /// number (at most the connection's unanswered commands, as the credits bound them).
    pending: BTreeMap<u64, Ctx>,
    next_label: u64,
    acc: Acc,
    /// Rooms the client shows as joined: folded name to name as created.
    joined: BTreeMap<String, String>,
    /// Unread counts reported at login, shown once the rooms are joined.
    unread: Vec<(String, u64, u64)>,
    /// The user the last PRIVMSG went to, whose AWAY line right after its answer is a 301.
    last_direct: Option<String>,
    next_batch: u64,
    closing: bool,
}

fn fold(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// True when `s` could be an account name (the core checks it exactly).
fn nickish(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// True when `s` could be a room name (the core checks it exactly).
fn roomish(s: &str) -> bool {
    s.starts_with('#')
        && s.len() > 1
        && s.len() <= MAX_ROOM_NAME_LEN + 1
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// The core's text for what an IRC client sent as a message: CTCP ACTION becomes `/me `, IRC's
/// formatting codes are removed (the core refuses control characters). `None`: nothing visible is
/// left, or a CTCP other than ACTION.
fn text_in(text: &str) -> Option<String> {
    let body = if let Some(ctcp) = text.strip_prefix('\x01') {
        let ctcp = ctcp.strip_suffix('\x01').unwrap_or(ctcp);
        let rest = ctcp.strip_prefix("ACTION ")?;
        format!("/me {rest}")
    } else {
        text.to_owned()
    };
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x02' | '\x0f' | '\x11' | '\x16' | '\x1d' | '\x1e' | '\x1f' => {}
            '\x03' => {
                // Colour: up to two digits, optionally a comma and up to two more.
                for _ in 0..2 {
                    if chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                }
                let mut look = chars.clone();
                if look.next() == Some(',') && look.peek().is_some_and(char::is_ascii_digit) {
                    chars.next();
                    for _ in 0..2 {
                        if chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    if out.trim_matches([' ', '\t']).is_empty() {
        None
    } else {
        Some(out)
    }
}

/// IRC's text for a stored message: `/me ` becomes CTCP ACTION.
fn text_out(text: &str) -> (bool, &str) {
    match text.strip_prefix("/me ") {
        Some(rest) => (true, rest),
        None => (false, text),
    }
}

/// Splits `text` into pieces of at most `max` bytes, at a space where one is near the end, else
/// at a character boundary.
fn split_text(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(8);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(sp) = rest[..cut].rfind(' ') {
            if sp > cut / 2 {
                cut = sp + 1;
            }
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

/// Seconds since the epoch, as IRC numerics show times.
fn secs(ms: i64) -> String {
    ms.div_euclid(1000).to_string()
}

impl Session {
    /// A new session for a server of this version.
    pub fn new(version: &str) -> Session {
        Session::with_default_password(version, None)
    }

    /// A new session in which a client that sends neither SASL nor PASS logs in as its nick with
    /// `password` (`--irc-default-password`, for load generators that speak bare IRC).
    pub fn with_default_password(version: &str, password: Option<&str>) -> Session {
        Session {
            version: version.to_owned(),
            default_password: password.map(str::to_owned),
            caps: Caps::default(),
            negotiating: false,
            nick: None,
            user: false,
            pass: None,
            sasl: None,
            login: Login::None,
            welcomed: false,
            held: String::new(),
            pending: BTreeMap::new(),
            next_label: 0,
            acc: Acc::default(),
            joined: BTreeMap::new(),
            unread: Vec::new(),
            last_direct: None,
            next_batch: 0,
            closing: false,
        }
    }

    /// The nick the client is known by: the account once logged in, else what it asked for.
    fn me(&self) -> &str {
        match &self.login {
            Login::Done(name) => name,
            _ => self.nick.as_deref().unwrap_or("*"),
        }
    }

    fn logged_in(&self) -> bool {
        matches!(self.login, Login::Done(_))
    }

    /// The source of a user's lines.
    fn source(name: &str) -> String {
        format!("{name}!{name}@{IRC_HOST}")
    }

    // ----- output helpers -----

    /// A line from the server, to the client, with the client's nick first.
    fn numeric(&self, fx: &mut Effects, code: &str, params: &[&str]) {
        let mut all = vec![self.me()];
        all.extend_from_slice(params);
        self.say(fx, from_server(code, &all));
    }

    /// Sends one message to the client.
    fn say(&self, fx: &mut Effects, m: Message) {
        fx.client.push_str(&clamped(m));
    }

    /// Sends one message to the client, or, between a SASL login and the welcome, holds it until
    /// the welcome.
    fn say_held(&mut self, fx: &mut Effects, m: Message) {
        if self.welcomed || !self.logged_in() {
            fx.client.push_str(&clamped(m));
        } else if self.held.len() < IRC_MAX_HELD_BYTES {
            self.held.push_str(&clamped(m));
        }
    }

    fn notice(&self, fx: &mut Effects, text: &str) {
        self.say(fx, from_server("NOTICE", &[self.me(), text]));
    }

    fn ask_core(&mut self, fx: &mut Effects, line: String, ctx: Ctx) {
        self.next_label += 1;
        fx.core.push(format!("@i{} {line}", self.next_label));
        self.pending.insert(self.next_label, ctx);
    }

    /// The context of the command a final line answers, by its label.
    fn answered(&mut self, label: Option<&str>) -> Option<Ctx> {
        let n = label?.strip_prefix('i')?.parse::<u64>().ok()?;
        self.pending.remove(&n)
    }

    fn new_batch(&mut self) -> String {
        self.next_batch += 1;
        format!("h{}", self.next_batch)
    }

    /// Tags for a message line: time and msgid as the client's capabilities allow.
    fn tags(&self, id: u64, time_ms: i64, batch: Option<&str>) -> Vec<(String, Option<String>)> {
        let mut tags = Vec::new();
        if let Some(b) = batch {
            tags.push(("batch".to_owned(), Some(b.to_owned())));
        }
        if self.caps.server_time {
            tags.push(("time".to_owned(), Some(timestamp(time_ms))));
        }
        if self.caps.message_tags && id > 0 {
            tags.push(("msgid".to_owned(), Some(id.to_string())));
        }
        tags
    }

    /// Renders a message as PRIVMSG (or NOTICE) lines, split to fit IRC's 512 bytes.
    #[allow(clippy::too_many_arguments)]
    fn privmsg(
        &mut self,
        fx: &mut Effects,
        verb: &str,
        from: &str,
        target: &str,
        text: &str,
        id: u64,
        time_ms: i64,
        batch: Option<&str>,
    ) {
        let source = Session::source(from);
        let (action, body) = text_out(text);
        // ":source VERB target :" + CR LF, and the CTCP wrapping of an action.
        let overhead = 1
            + source.len()
            + 1
            + verb.len()
            + 1
            + target.len()
            + 2
            + 2
            + if action { 9 } else { 0 };
        let max = IRC_MAX_LINE_BYTES.saturating_sub(overhead);
        for part in split_text(body, max) {
            let part = if action {
                format!("\x01ACTION {part}\x01")
            } else {
                part.to_owned()
            };
            let m = Message {
                tags: self.tags(id, time_ms, batch),
                source: Some(source.clone()),
                command: verb.to_owned(),
                params: vec![target.to_owned(), part],
                trailing: true,
            };
            self.say_held(fx, m);
        }
    }

    /// Renders a stored or delivered message.
    fn message(&mut self, fx: &mut Effects, m: &Msg, batch: Option<&str>) {
        let me = self.me().to_owned();
        let target = match &m.to {
            Target::Room(r) => r.clone(),
            Target::User(other) => {
                if fold(&m.from) == fold(&me) {
                    other.clone()
                } else {
                    me
                }
            }
        };
        self.privmsg(
            fx, "PRIVMSG", &m.from, &target, &m.text, m.id, m.time_ms, batch,
        );
    }

    fn owned(m: &MessageLine<'_>) -> Msg {
        let to = match &m.to {
            Recipient::Room(r) => Target::Room((*r).to_owned()),
            Recipient::User(u) => Target::User((*u).to_owned()),
            // A GROUP or ALL message reaches IRC as a direct message from its sender.
            Recipient::Group(_) | Recipient::All => Target::User(m.from.to_owned()),
        };
        Msg {
            id: m.id,
            time_ms: m.time_ms,
            from: m.from.to_owned(),
            to,
            text: m.text.to_owned(),
        }
    }

    // ----- from the client -----

    /// A line from the client was longer than the IRC limit and was discarded.
    pub fn too_long(&mut self, fx: &mut Effects) {
        self.numeric(fx, "417", &["Input line was too long"]);
    }

    /// Handles one line from the client (without its line end).
    pub fn client_line(&mut self, line: &str, fx: &mut Effects) {
        if self.closing {
            return;
        }
        let msg = match Message::parse(line) {
            Ok(m) => m,
            Err(super::message::ParseError::Empty) => return,
            Err(e) => {
                return self.numeric(fx, "421", &["*", &format!("Unparsable line: {e:?}")]);
            }
        };
        let verb = msg.command.to_ascii_uppercase();
        match verb.as_str() {
            "CAP" => self.cap(&msg, fx),
            "AUTHENTICATE" => self.authenticate(&msg, fx),
            "PASS" => {
                if self.logged_in() || self.login == Login::Pending {
                    self.numeric(fx, "462", &["You may not reregister"]);
                } else if let Some(p) = msg.param(0) {
                    self.pass = Some(p.to_owned());
                } else {
                    self.numeric(fx, "461", &["PASS", "Not enough parameters"]);
                }
            }
            "NICK" => self.nick(&msg, fx),
            "USER" => {
                if self.user {
                    self.numeric(fx, "462", &["You may not reregister"]);
                } else if msg.params.len() < 4 {
                    self.numeric(fx, "461", &["USER", "Not enough parameters"]);
                } else {
                    self.user = true;
                    self.try_register(fx);
                }
            }
            "PING" => {
                let token = msg.param(0).unwrap_or("").to_owned();
                if !self.logged_in() {
                    let p = if token.is_empty() {
                        IRC_SERVER_NAME
                    } else {
                        &token
                    };
                    return self.say(fx, from_server("PONG", &[IRC_SERVER_NAME, p]));
                }
                // Through the core: it answers in order, and it hears that the client is alive.
                self.ask_core(fx, "PING".to_owned(), Ctx::Ping { token });
            }
            "PONG" => {
                if self.logged_in() {
                    self.ask_core(fx, "PING".to_owned(), Ctx::Silent);
                }
            }
            "QUIT" => {
                self.ask_core(fx, "QUIT".to_owned(), Ctx::Quit);
                self.closing = true;
            }
            _ if !self.logged_in() => {
                self.numeric(fx, "451", &[&msg.command, "You have not registered"]);
            }
            "PRIVMSG" | "NOTICE" => self.privmsg_in(&msg, verb == "NOTICE", fx),
            "JOIN" => self.join(&msg, fx),
            "PART" => self.part(&msg, fx),
            "TOPIC" => self.topic(&msg, fx),
            "NAMES" => self.names(&msg, fx),
            "WHO" => self.who(&msg, fx),
            "WHOIS" => self.whois(&msg, fx),
            "MODE" => self.mode(&msg, fx),
            "KICK" => self.kick(&msg, fx),
            "INVITE" => self.invite(&msg, fx),
            "AWAY" => self.away(&msg, fx),
            "LIST" => self.ask_core(fx, "ROOMS".to_owned(), Ctx::Rooms { auto: false }),
            "CHATHISTORY" => self.chathistory(&msg, fx),
            "MOTD" => self.motd(fx),
            "USERHOST" => {
                let replies: Vec<String> = msg
                    .params
                    .iter()
                    .take(5)
                    .map(|n| format!("{n}=+{n}@{IRC_HOST}"))
                    .collect();
                self.numeric(fx, "302", &[&replies.join(" ")]);
            }
            "ISON" => {
                // Without a presence lookup of its own, ISON answers from the core's WHOIS would
                // need one command per nick; the honest short answer is "none known".
                self.numeric(fx, "303", &[""]);
            }
            _ => self.numeric(fx, "421", &[&msg.command, "Unknown command"]),
        }
    }

    fn cap(&mut self, msg: &Message, fx: &mut Effects) {
        let sub = msg.param(0).unwrap_or("").to_ascii_uppercase();
        match sub.as_str() {
            "LS" => {
                if !self.logged_in() {
                    self.negotiating = true;
                }
                let v302 = msg
                    .param(1)
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
                    >= 302;
                let list: Vec<String> = CAPS
                    .iter()
                    .map(|c| {
                        if *c == "sasl" && v302 {
                            "sasl=PLAIN".to_owned()
                        } else if *c == "draft/chathistory" && v302 {
                            // Not a value chathistory defines; the limit goes in ISUPPORT.
                            (*c).to_owned()
                        } else {
                            (*c).to_owned()
                        }
                    })
                    .collect();
                let me = self.me().to_owned();
                self.say(fx, from_server("CAP", &[&me, "LS", &list.join(" ")]));
            }
            "LIST" => {
                let me = self.me().to_owned();
                let on = self.caps.enabled().join(" ");
                self.say(fx, from_server("CAP", &[&me, "LIST", &on]));
            }
            "REQ" => {
                if !self.logged_in() {
                    self.negotiating = true;
                }
                let wanted = msg.param(1).unwrap_or("");
                let mut next = self.caps;
                let ok = wanted.split(' ').filter(|s| !s.is_empty()).all(|c| {
                    let (name, on) = match c.strip_prefix('-') {
                        Some(n) => (n, false),
                        None => (c, true),
                    };
                    next.set(name, on)
                });
                let me = self.me().to_owned();
                if ok {
                    self.caps = next;
                    self.say(fx, from_server("CAP", &[&me, "ACK", wanted]));
                } else {
                    self.say(fx, from_server("CAP", &[&me, "NAK", wanted]));
                }
            }
            "END" => {
                if self.negotiating {
                    self.negotiating = false;
                    self.try_register(fx);
                }
            }
            _ => self.numeric(
                fx,
                "410",
                &[msg.param(0).unwrap_or(""), "Invalid CAP command"],
            ),
        }
    }

    fn authenticate(&mut self, msg: &Message, fx: &mut Effects) {
        if self.logged_in() || self.login == Login::Pending {
            return self.numeric(fx, "907", &["You have already authenticated"]);
        }
        let arg = msg.param(0).unwrap_or("");
        if arg == "*" {
            self.sasl = None;
            return self.numeric(fx, "906", &["SASL authentication aborted"]);
        }
        match &mut self.sasl {
            None => {
                if arg.eq_ignore_ascii_case("PLAIN") {
                    self.sasl = Some(String::new());
                    self.say(fx, Message::new("AUTHENTICATE", &["+"]));
                } else {
                    self.numeric(fx, "908", &["PLAIN", "are available SASL mechanisms"]);
                    self.numeric(fx, "904", &["SASL authentication failed"]);
                }
            }
            Some(gathered) => {
                if arg != "+" {
                    gathered.push_str(arg);
                }
                if gathered.len() > 4 * IRC_SASL_CHUNK {
                    self.sasl = None;
                    return self.numeric(fx, "905", &["SASL message too long"]);
                }
                if arg.len() == IRC_SASL_CHUNK {
                    return; // more follows
                }
                let payload = self.sasl.take().unwrap_or_default();
                let Some(plain) = base64_decode(&payload) else {
                    return self.numeric(fx, "904", &["SASL authentication failed"]);
                };
                let mut fields = plain.split(|b| *b == 0);
                let (_authz, authc, pass) = (fields.next(), fields.next(), fields.next());
                let (Some(authc), Some(pass)) = (authc, pass) else {
                    return self.numeric(fx, "904", &["SASL authentication failed"]);
                };
                let (Ok(authc), Ok(pass)) = (std::str::from_utf8(authc), std::str::from_utf8(pass))
                else {
                    return self.numeric(fx, "904", &["SASL authentication failed"]);
                };
                self.log_in(fx, authc, pass, true);
            }
        }
    }

    /// Hands the credentials to the core: a device token logs in with RESUME, anything else with
    /// LOGIN.
    fn log_in(&mut self, fx: &mut Effects, account: &str, secret: &str, sasl: bool) {
        let clean = |s: &str| !s.is_empty() && !s.contains([' ', '\r', '\n', '\0']);
        let line = if secret.starts_with("ct1.") && clean(secret) {
            format!("RESUME {secret}")
        } else if clean(account) && clean(secret) {
            format!("LOGIN {account} {secret}")
        } else {
            // Nothing the core could accept: the same answer as a wrong password.
            return self.login_failed(fx, sasl);
        };
        self.login = Login::Pending;
        self.ask_core(fx, line, Ctx::Login { sasl });
    }

    fn login_failed(&mut self, fx: &mut Effects, sasl: bool) {
        self.login = Login::None;
        if sasl {
            self.numeric(fx, "904", &["SASL authentication failed"]);
        } else {
            self.numeric(fx, "464", &["Password incorrect"]);
            self.close(fx, "Bad account or password");
        }
    }

    /// Closes the connection: an ERROR line, and QUIT to the core.
    fn close(&mut self, fx: &mut Effects, why: &str) {
        if self.closing {
            return;
        }
        self.say(
            fx,
            Message::new("ERROR", &[&format!("Closing link: {why}")]),
        );
        self.closing = true;
        self.ask_core(fx, "QUIT".to_owned(), Ctx::Silent);
    }

    fn nick(&mut self, msg: &Message, fx: &mut Effects) {
        let Some(want) = msg.param(0).filter(|n| !n.is_empty()) else {
            return self.numeric(fx, "431", &["No nickname given"]);
        };
        if let Login::Done(name) = &self.login {
            if !self.welcomed {
                // Logged in by SASL before NICK: the nick is the account's, shown in 001.
                self.nick = Some(want.to_owned());
                return self.try_register(fx);
            }
            if fold(want) != fold(name) {
                let name = name.clone();
                self.numeric(
                    fx,
                    "432",
                    &[
                        want,
                        &format!("Your nick is your account name here: {name}"),
                    ],
                );
            }
            return;
        }
        if !nickish(want) {
            return self.numeric(fx, "432", &[want, "Erroneous nickname"]);
        }
        self.nick = Some(want.to_owned());
        self.try_register(fx);
    }

    /// Registration ends once NICK and USER are in and capability negotiation is over: with a
    /// SASL login done, the welcome; with PASS, the login; with neither, the client is told and
    /// closed.
    fn try_register(&mut self, fx: &mut Effects) {
        if self.nick.is_none() || !self.user || self.negotiating || self.welcomed {
            return;
        }
        match self.login.clone() {
            Login::Done(_) => self.welcome(fx),
            Login::Pending => {}
            Login::None => match self.pass.take().or_else(|| self.default_password.clone()) {
                Some(pass) => {
                    let nick = self.nick.clone().unwrap_or_default();
                    let (account, secret) = match pass.split_once(':') {
                        Some((a, p)) if !a.is_empty() => (a.to_owned(), p.to_owned()),
                        _ => (nick, pass),
                    };
                    self.log_in(fx, &account, &secret, false);
                }
                None => {
                    self.numeric(
                        fx,
                        "464",
                        &["This server needs an account: log in with SASL PLAIN or PASS \
                           <account>:<password> (accounts are registered with chatd's own protocol)"],
                    );
                    self.close(fx, "Authentication required");
                }
            },
        }
    }

    fn welcome(&mut self, fx: &mut Effects) {
        self.welcomed = true;
        let me = self.me().to_owned();
        let v = self.version.clone();
        self.numeric(fx, "001", &[&format!("Welcome to chatd, {me}")]);
        self.numeric(
            fx,
            "002",
            &[&format!(
                "Your host is {IRC_SERVER_NAME}, running version chatd-{v}"
            )],
        );
        self.numeric(
            fx,
            "003",
            &["This server keeps rooms and messages for you while you are away"],
        );
        self.numeric(
            fx,
            "004",
            &[IRC_SERVER_NAME, &format!("chatd-{v}"), "i", "bimnoqt"],
        );
        let isupport = [
            "AWAYLEN=200".to_owned(),
            "CASEMAPPING=ascii".to_owned(),
            "CHANLIMIT=#:100".to_owned(),
            "CHANMODES=b,,,imnt".to_owned(),
            format!("CHANNELLEN={}", MAX_ROOM_NAME_LEN + 1),
            "CHANTYPES=#".to_owned(),
            format!("CHATHISTORY={HISTORY_MAX_COUNT}"),
            format!("KICKLEN={MAX_REASON_BYTES}"),
            "MAXTARGETS=1".to_owned(),
            "MSGREFTYPES=msgid".to_owned(),
            format!("NICKLEN={MAX_NAME_LEN}"),
            "NETWORK=chatd".to_owned(),
            "PREFIX=(qo)~@".to_owned(),
            format!("TARGMAX=JOIN:{IRC_MAX_TARGETS},PART:{IRC_MAX_TARGETS},PRIVMSG:1,NOTICE:1"),
            format!("TOPICLEN={MAX_TOPIC_BYTES}"),
        ];
        // At most 13 tokens a line, so that with the nick and the text a 005 stays within IRC's 15
        // parameters.
        for chunk in isupport.chunks(13) {
            let mut params: Vec<&str> = chunk.iter().map(String::as_str).collect();
            params.push("are supported by this server");
            self.numeric(fx, "005", &params);
        }
        self.motd(fx);
        let held = std::mem::take(&mut self.held);
        fx.client.push_str(&held);
        // Join the account's rooms: ROOMS lists them first.
        self.ask_core(fx, "ROOMS".to_owned(), Ctx::Rooms { auto: true });
    }

    fn motd(&mut self, fx: &mut Effects) {
        self.numeric(
            fx,
            "375",
            &[&format!("- {IRC_SERVER_NAME} Message of the day -")],
        );
        for line in [
            "- Rooms and their messages are kept: you rejoin your rooms at every login,",
            "- and what was said while you were away is in each room's history.",
            "- Accounts are registered with chatd's own line protocol.",
        ] {
            self.numeric(fx, "372", &[line]);
        }
        self.numeric(fx, "376", &["End of /MOTD command"]);
    }

    fn privmsg_in(&mut self, msg: &Message, notice: bool, fx: &mut Effects) {
        let verb = if notice { "NOTICE" } else { "PRIVMSG" };
        let (Some(target), Some(text)) = (msg.param(0), msg.param(1)) else {
            if !notice {
                self.numeric(fx, "411", &["No recipient given (PRIVMSG)"]);
            }
            return;
        };
        if text.is_empty() {
            if !notice {
                self.numeric(fx, "412", &["No text to send"]);
            }
            return;
        }
        if target.contains(',') {
            return self.numeric(fx, "407", &[target, "Too many recipients"]);
        }
        if !is_middle(target) || !(nickish(target) || roomish(target)) {
            return self.numeric(fx, "401", &[target, "No such nick/channel"]);
        }
        let Some(core_text) = text_in(text) else {
            if !notice {
                self.notice(
                    fx,
                    &format!("{verb}: only CTCP ACTION is carried; nothing was sent"),
                );
            }
            return;
        };
        self.last_direct = None;
        self.ask_core(
            fx,
            format!("MSG {target} {core_text}"),
            Ctx::Msg {
                target: target.to_owned(),
                text: core_text,
                notice,
            },
        );
    }

    fn join(&mut self, msg: &Message, fx: &mut Effects) {
        let Some(list) = msg.param(0) else {
            return self.numeric(fx, "461", &["JOIN", "Not enough parameters"]);
        };
        if list == "0" {
            return self.notice(
                fx,
                "JOIN 0 is not supported: PART each room you want to leave",
            );
        }
        for room in list
            .split(',')
            .filter(|r| !r.is_empty())
            .take(IRC_MAX_TARGETS)
        {
            if !roomish(room) {
                self.numeric(fx, "479", &[room, "Illegal channel name"]);
                continue;
            }
            self.ask_core(
                fx,
                format!("JOIN {room}"),
                Ctx::Join {
                    room: room.to_owned(),
                },
            );
            // NAMES right after the JOIN's answer: asked together, answered in order, shown only
            // if the JOIN succeeded.
            self.ask_core(
                fx,
                format!("MEMBERS {room}"),
                Ctx::Members {
                    room: room.to_owned(),
                    who: false,
                    joining: true,
                },
            );
        }
    }

    fn part(&mut self, msg: &Message, fx: &mut Effects) {
        let Some(list) = msg.param(0) else {
            return self.numeric(fx, "461", &["PART", "Not enough parameters"]);
        };
        let reason = msg.param(1).and_then(text_in).unwrap_or_default();
        for room in list
            .split(',')
            .filter(|r| !r.is_empty())
            .take(IRC_MAX_TARGETS)
        {
            if !roomish(room) {
                self.numeric(fx, "403", &[room, "No such channel"]);
                continue;
            }
            let line = if reason.is_empty() {
                format!("PART {room}")
            } else {
                format!("PART {room} {reason}")
            };
            self.ask_core(
                fx,
                line,
                Ctx::Part {
                    room: room.to_owned(),
                    reason: reason.clone(),
                },
            );
        }
    }

    fn topic(&mut self, msg: &Message, fx: &mut Effects) {
        let Some(room) = msg.param(0).filter(|r| roomish(r)) else {
            return self.numeric(fx, "461", &["TOPIC", "Not enough parameters"]);
        };
        let room = room.to_owned();
        match msg.param(1) {
            None => self.ask_core(fx, format!("TOPIC {room}"), Ctx::Topic { room, set: false }),
            Some(text) => {
                // An empty topic clears it; the core spells that `-`.
                let text = text_in(text).unwrap_or_else(|| "-".to_owned());
                self.ask_core(
                    fx,
                    format!("TOPIC {room} {text}"),
                    Ctx::Topic { room, set: true },
                );
            }
        }
    }

    fn names(&mut self, msg: &Message, fx: &mut Effects) {
        match msg
            .param(0)
            .and_then(|l| l.split(',').next())
            .filter(|r| roomish(r))
        {
            Some(room) => {
                let room = room.to_owned();
                self.ask_core(
                    fx,
                    format!("MEMBERS {room}"),
                    Ctx::Members {
                        room,
                        who: false,
                        joining: false,
                    },
                );
            }
            None => self.numeric(fx, "366", &["*", "End of /NAMES list"]),
        }
    }

    fn who(&mut self, msg: &Message, fx: &mut Effects) {
        let Some(mask) = msg.param(0) else {
            return self.numeric(fx, "315", &["*", "End of /WHO list"]);
        };
        if roomish(mask) {
            let room = mask.to_owned();
            self.ask_core(
                fx,
                format!("MEMBERS {room}"),
                Ctx::Members {
                    room,
                    who: true,
                    joining: false,
                },
            );
        } else if nickish(mask) && !mask.contains(['*', '?']) {
            let nick = mask.to_owned();
            self.ask_core(fx, format!("WHOIS {nick}"), Ctx::Whois { nick, who: true });
        } else {
            self.numeric(fx, "315", &[mask, "End of /WHO list"]);
        }
    }

    fn whois(&mut self, msg: &Message, fx: &mut Effects) {
        // WHOIS [<server>] <nick>: the nick is the last parameter.
        let Some(nick) = msg.params.last().filter(|n| !n.is_empty()) else {
            return self.numeric(fx, "431", &["No nickname given"]);
        };
        let nick = nick.split(',').next().unwrap_or("").to_owned();
        if !nickish(&nick) {
            self.numeric(fx, "401", &[&nick, "No such nick/channel"]);
            return self.numeric(fx, "318", &[&nick, "End of /WHOIS list"]);
        }
        self.ask_core(fx, format!("WHOIS {nick}"), Ctx::Whois { nick, who: false });
    }

    fn mode(&mut self, msg: &Message, fx: &mut Effects) {
        let Some(target) = msg.param(0) else {
            return self.numeric(fx, "461", &["MODE", "Not enough parameters"]);
        };
        if !target.starts_with('#') {
            // User modes: chatd has none. A query is answered; a change is ignored.
            if fold(target) != fold(self.me()) {
                return self.numeric(fx, "502", &["Can't change mode for other users"]);
            }
            if msg.params.len() == 1 {
                self.numeric(fx, "221", &["+"]);
            }
            return;
        }
        if !roomish(target) {
            return self.numeric(fx, "403", &[target, "No such channel"]);
        }
        let room = target.to_owned();
        let Some(modes) = msg.param(1) else {
            return self.ask_core(
                fx,
                format!("ROOM INFO {room}"),
                Ctx::RoomInfo { room, bans: false },
            );
        };
        let mut args = msg.params.iter().skip(2);
        let mut sign = '+';
        for c in modes.chars() {
            match c {
                '+' | '-' => sign = c,
                'b' => match args.next() {
                    None => self.ask_core(
                        fx,
                        format!("ROOM INFO {room}"),
                        Ctx::RoomInfo {
                            room: room.clone(),
                            bans: true,
                        },
                    ),
                    Some(mask) => {
                        let nick = mask.split('!').next().unwrap_or("");
                        if !nickish(nick) || nick.contains(['*', '?']) {
                            self.notice(fx, "bans name accounts here: MODE #room +b <account>");
                            continue;
                        }
                        let verb = if sign == '+' { "BAN" } else { "UNBAN" };
                        self.ask_core(
                            fx,
                            format!("{verb} {room} {nick}"),
                            Ctx::Mode {
                                room: room.clone(),
                                change: format!("{sign}b"),
                                arg: Some(nick.to_owned()),
                            },
                        );
                    }
                },
                'o' | 'q' => {
                    let Some(nick) = args.next().filter(|n| nickish(n)) else {
                        self.numeric(fx, "461", &["MODE", "Not enough parameters"]);
                        continue;
                    };
                    let role = match (c, sign) {
                        ('o', '+') => "OP",
                        ('o', _) => "MEMBER",
                        ('q', '+') => "OWNER",
                        _ => "OP",
                    };
                    self.ask_core(
                        fx,
                        format!("ROLE {room} {nick} {role}"),
                        Ctx::Mode {
                            room: room.clone(),
                            change: format!("{sign}{c}"),
                            arg: Some(nick.clone()),
                        },
                    );
                }
                'i' => {
                    let sub = if sign == '+' { "PRIVATE" } else { "PUBLIC" };
                    self.ask_core(
                        fx,
                        format!("ROOM {sub} {room}"),
                        Ctx::Mode {
                            room: room.clone(),
                            change: format!("{sign}i"),
                            arg: None,
                        },
                    );
                }
                // Always on: members only send (n), ops set the topic (t).
                'n' | 't' if sign == '+' => {}
                other => {
                    let m = other.to_string();
                    self.numeric(fx, "472", &[&m, "is not a mode chatd rooms have"]);
                }
            }
        }
    }

    fn kick(&mut self, msg: &Message, fx: &mut Effects) {
        let (Some(room), Some(nick)) = (msg.param(0), msg.param(1)) else {
            return self.numeric(fx, "461", &["KICK", "Not enough parameters"]);
        };
        if !roomish(room) || !nickish(nick) {
            return self.numeric(fx, "403", &[room, "No such channel"]);
        }
        let reason = msg.param(2).and_then(text_in).unwrap_or_default();
        let line = if reason.is_empty() {
            format!("KICK {room} {nick}")
        } else {
            format!("KICK {room} {nick} {reason}")
        };
        self.ask_core(
            fx,
            line,
            Ctx::Kick {
                room: room.to_owned(),
                reason,
            },
        );
    }

    fn invite(&mut self, msg: &Message, fx: &mut Effects) {
        let (Some(nick), Some(room)) = (msg.param(0), msg.param(1)) else {
            return self.numeric(fx, "461", &["INVITE", "Not enough parameters"]);
        };
        if !roomish(room) || !nickish(nick) {
            return self.numeric(fx, "403", &[room, "No such channel"]);
        }
        self.ask_core(fx, format!("INVITE {room} {nick}"), Ctx::Invite);
    }

    fn away(&mut self, msg: &Message, fx: &mut Effects) {
        match msg.param(0).and_then(text_in) {
            Some(text) => {
                let mut text = text;
                if text.len() > MAX_AWAY_BYTES {
                    let mut cut = MAX_AWAY_BYTES;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                self.ask_core(fx, format!("AWAY {text}"), Ctx::Away)
            }
            None => self.ask_core(fx, "AWAY".to_owned(), Ctx::Away),
        }
    }

    fn chathistory(&mut self, msg: &Message, fx: &mut Effects) {
        let fail = |s: &Session, fx: &mut Effects, code: &str, text: &str| {
            let sub = msg.param(0).unwrap_or("*").to_owned();
            s.say(fx, from_server("FAIL", &["CHATHISTORY", code, &sub, text]));
        };
        let sub = msg.param(0).unwrap_or("").to_ascii_uppercase();
        let (Some(target), Some(a), Some(b)) = (msg.param(1), msg.param(2), msg.param(3)) else {
            return fail(self, fx, "NEED_MORE_PARAMS", "Missing parameters");
        };
        if !(roomish(target) || nickish(target)) {
            return fail(self, fx, "INVALID_TARGET", "No such target");
        }
        let count = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| n.min(HISTORY_MAX_COUNT))
        };
        let msgid = |s: &str| s.strip_prefix("msgid=").and_then(|v| v.parse::<u64>().ok());
        let cursor = match sub.as_str() {
            "LATEST" if a == "*" => count(b).map(|n| (n, String::new())),
            "LATEST" => count(b)
                .zip(msgid(a))
                .map(|(n, id)| (n, format!(" AFTER {id}"))),
            "BEFORE" => count(b)
                .zip(msgid(a))
                .map(|(n, id)| (n, format!(" BEFORE {id}"))),
            "AFTER" => count(b)
                .zip(msgid(a))
                .map(|(n, id)| (n, format!(" AFTER {id}"))),
            "AROUND" | "BETWEEN" | "TARGETS" => {
                return fail(
                    self,
                    fx,
                    "INVALID_PARAMS",
                    "Only LATEST, BEFORE and AFTER are supported",
                );
            }
            _ => return fail(self, fx, "INVALID_PARAMS", "Unknown subcommand"),
        };
        let Some((n, cursor)) = cursor else {
            return fail(
                self,
                fx,
                "INVALID_PARAMS",
                "Give a count and msgid=<id> (timestamps are not supported)",
            );
        };
        let target = target.to_owned();
        self.ask_core(
            fx,
            format!("HISTORY {target} {n}{cursor}"),
            Ctx::History {
                target,
                catch_up: false,
            },
        );
    }

    // ----- from the core -----

    /// Handles bytes the core queued for this connection: whole lines, each ended by LF.
    pub fn server_bytes(&mut self, bytes: &[u8], fx: &mut Effects) {
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            // The core sends only UTF-8.
            let text = String::from_utf8_lossy(line);
            self.server_line(&server_line::parse(&text), fx);
        }
    }

    /// Handles one line from the core.
    pub fn server_line(&mut self, line: &ServerLine<'_>, fx: &mut Effects) {
        match line {
            ServerLine::Ok { reply, label } => {
                let ctx = self.answered(*label);
                let acc = std::mem::take(&mut self.acc);
                if let Some(ctx) = ctx {
                    self.ok(ctx, reply, acc, fx);
                }
            }
            ServerLine::Fail {
                code, text, label, ..
            } => {
                self.acc = Acc::default();
                if let Some(ctx) = self.answered(*label) {
                    self.fail(ctx, *code, text, fx);
                }
            }
            ServerLine::Hello { .. } | ServerLine::BacklogEnd { .. } | ServerLine::Read { .. } => {}
            ServerLine::Message(m) => {
                let m = Session::owned(m);
                self.message(fx, &m, None);
            }
            ServerLine::History(m) => self.acc.messages.push(Session::owned(m)),
            ServerLine::Room(r) => self.acc.rooms.push(RoomRow {
                room: r.room.to_owned(),
                privacy: r.privacy,
                members: r.members,
                standing: r.standing,
                topic: r.topic.to_owned(),
            }),
            ServerLine::Member {
                name,
                role,
                presence,
                ..
            } => self
                .acc
                .members
                .push(((*name).to_owned(), *role, *presence)),
            ServerLine::Ban {
                name, by, time_ms, ..
            } => self
                .acc
                .bans
                .push(((*name).to_owned(), (*by).to_owned(), *time_ms)),
            ServerLine::Unread { room, count, first } => {
                self.unread.push(((*room).to_owned(), *count, *first));
            }
            ServerLine::Away { name, text } => {
                let direct = self
                    .last_direct
                    .as_deref()
                    .is_some_and(|d| fold(d) == fold(name));
                match text {
                    Some(t) if direct => self.numeric(fx, "301", &[name, t]),
                    _ if fold(name) == fold(self.me()) => {}
                    _ if self.caps.away_notify => {
                        let mut m = Message::new("AWAY", &[]);
                        if let Some(t) = text {
                            m.params.push((*t).to_owned());
                        }
                        m.source = Some(Session::source(name));
                        self.say_held(fx, m);
                    }
                    _ => {}
                }
            }
            ServerLine::Ping { token } => self.say(fx, Message::new("PING", &[token])),
            ServerLine::Bye { text, .. } => {
                self.say(
                    fx,
                    Message::new("ERROR", &[&format!("Closing link: {text}")]),
                );
            }
            ServerLine::RoomEvent { room, event } => self.room_event(room, event, fx),
            ServerLine::Friendship { name, event } => {
                let m = from_server(
                    "NOTICE",
                    &[self.me(), &format!("friendship: {name} {}", event.as_str())],
                );
                self.say_held(fx, m);
            }
            ServerLine::Notice { text } => {
                let m = from_server("NOTICE", &[self.me(), text]);
                self.say_held(fx, m);
            }
            // DIRECT sessions are between bundled clients; an IRC client has none to offer or take.
            // STAT lines answer the operators' STATS, which IRC does not carry.
            ServerLine::Presence { .. }
            | ServerLine::Stat { .. }
            | ServerLine::Direct { .. }
            | ServerLine::User { .. }
            | ServerLine::Help { .. }
            | ServerLine::Pong { .. }
            | ServerLine::Friend { .. }
            | ServerLine::Token(_)
            | ServerLine::Blocked { .. }
            | ServerLine::Invitation { .. }
            | ServerLine::Other(_) => {}
        }
    }

    fn room_event(&mut self, room: &str, event: &RoomEvent<'_>, fx: &mut Effects) {
        let me = self.me().to_owned();
        let line = |src: &str, verb: &str, params: &[&str]| {
            let mut m = Message::new(verb, params);
            m.source = Some(Session::source(src));
            m
        };
        match event {
            RoomEvent::Joined { name } => {
                if fold(name) == fold(&me) {
                    // Another connection of this account joined: show the room here too.
                    self.joined.insert(fold(room), room.to_owned());
                    self.say_held(fx, line(name, "JOIN", &[room]));
                    self.ask_core(
                        fx,
                        format!("MEMBERS {room}"),
                        Ctx::Members {
                            room: room.to_owned(),
                            who: false,
                            joining: false,
                        },
                    );
                } else {
                    self.say_held(fx, line(name, "JOIN", &[room]));
                }
            }
            RoomEvent::Parted { name, reason } => {
                if fold(name) == fold(&me) {
                    self.joined.remove(&fold(room));
                }
                let m = if reason.is_empty() {
                    line(name, "PART", &[room])
                } else {
                    line(name, "PART", &[room, reason])
                };
                self.say_held(fx, m);
            }
            RoomEvent::Kicked { name, by, reason } => {
                if fold(name) == fold(&me) {
                    self.joined.remove(&fold(room));
                }
                let reason = if reason.is_empty() { *by } else { *reason };
                self.say_held(fx, line(by, "KICK", &[room, name, reason]));
            }
            RoomEvent::Banned { name, by, reason } => {
                let mask = format!("{name}!*@*");
                self.say_held(fx, line(by, "MODE", &[room, "+b", &mask]));
                // A ban removes a member: IRC clients learn it as a KICK.
                if fold(name) == fold(&me) {
                    self.joined.remove(&fold(room));
                }
                let reason = if reason.is_empty() { "banned" } else { *reason };
                self.say_held(fx, line(by, "KICK", &[room, name, reason]));
            }
            RoomEvent::Unbanned { name, by } => {
                let mask = format!("{name}!*@*");
                self.say_held(fx, line(by, "MODE", &[room, "-b", &mask]));
            }
            RoomEvent::Topic { by, text } => {
                self.say_held(fx, line(by, "TOPIC", &[room, text]));
            }
            RoomEvent::Role { name, role, by } => {
                let change = match role {
                    Role::Owner => "+q",
                    Role::Op => "+o",
                    Role::Member => "-o",
                };
                self.say_held(fx, line(by, "MODE", &[room, change, name]));
            }
            RoomEvent::Invited { by, .. } => {
                self.say_held(fx, line(by, "INVITE", &[&me, room]));
            }
            RoomEvent::Privacy { privacy, by } => {
                let change = match privacy {
                    Privacy::Private => "+i",
                    Privacy::Public => "-i",
                };
                self.say_held(fx, line(by, "MODE", &[room, change]));
            }
            RoomEvent::Deleted { by } => {
                self.joined.remove(&fold(room));
                self.say_held(fx, line(by, "KICK", &[room, &me, "the room was deleted"]));
            }
        }
    }

    fn prefix(&self, role: Role) -> &'static str {
        match (role, self.caps.multi_prefix) {
            (Role::Owner, true) => "~@",
            (Role::Owner, false) => "~",
            (Role::Op, _) => "@",
            (Role::Member, _) => "",
        }
    }

    /// 353 lines (as many as the names need) and 366.
    fn names_reply(&mut self, fx: &mut Effects, room: &str, members: &[(String, Role, Presence)]) {
        let me = self.me().to_owned();
        let overhead = IRC_SERVER_NAME.len() + me.len() + room.len() + 16;
        let mut line = String::new();
        for (name, role, _) in members {
            let entry = format!("{}{name}", self.prefix(*role));
            if !line.is_empty() && overhead + line.len() + 1 + entry.len() > IRC_MAX_LINE_BYTES {
                self.numeric(fx, "353", &["=", room, &line]);
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&entry);
        }
        if !line.is_empty() {
            self.numeric(fx, "353", &["=", room, &line]);
        }
        self.numeric(fx, "366", &[room, "End of /NAMES list"]);
    }

    fn ok(&mut self, ctx: Ctx, reply: &OkReply<'_>, acc: Acc, fx: &mut Effects) {
        let me = self.me().to_owned();
        match (ctx, reply) {
            (Ctx::Login { sasl }, OkReply::Login { name } | OkReply::Resume { name }) => {
                self.login = Login::Done((*name).to_owned());
                if sasl {
                    let src = Session::source(name);
                    self.numeric(
                        fx,
                        "900",
                        &[&src, name, &format!("You are now logged in as {name}")],
                    );
                    self.numeric(fx, "903", &["SASL authentication successful"]);
                }
                self.try_register(fx);
            }
            (Ctx::Ping { token }, _) => {
                let p = if token.is_empty() {
                    IRC_SERVER_NAME
                } else {
                    &token
                };
                self.say(fx, from_server("PONG", &[IRC_SERVER_NAME, p]));
            }
            (
                Ctx::Msg {
                    target,
                    text,
                    notice,
                },
                OkReply::Msg { id, .. } | OkReply::RoomMsg { id, .. },
            ) => {
                if !target.starts_with('#') {
                    self.last_direct = Some(target.clone());
                }
                if self.caps.echo_message {
                    let verb = if notice { "NOTICE" } else { "PRIVMSG" };
                    // The time is not in the OK; the echo carries the id, and the time of now is
                    // left to the client.
                    let _ = &me;
                    self.echo(fx, verb, &target, &text, *id);
                }
            }
            (Ctx::Join { .. }, OkReply::Join { room, .. }) => {
                self.joined.insert(fold(room), (*room).to_owned());
                let mut m = Message::new("JOIN", &[room]);
                m.source = Some(Session::source(&me));
                self.say(fx, m);
                if let Some(r) = acc.rooms.first() {
                    if !r.topic.is_empty() {
                        self.numeric(fx, "332", &[room, &r.topic]);
                    }
                }
                self.replay(fx, &acc.messages);
            }
            (Ctx::Part { reason, .. }, OkReply::Part { room, .. }) => {
                self.joined.remove(&fold(room));
                let params: Vec<&str> = if reason.is_empty() {
                    vec![room]
                } else {
                    vec![room, &reason]
                };
                let mut m = Message::new("PART", &params);
                m.source = Some(Session::source(&me));
                self.say(fx, m);
            }
            (
                Ctx::Members {
                    who: false,
                    joining,
                    ..
                },
                OkReply::Members { room, .. },
            ) if !joining || self.joined.contains_key(&fold(room)) => {
                self.names_reply(fx, room, &acc.members);
            }
            (Ctx::Members { who: true, .. }, OkReply::Members { room, .. }) => {
                for (name, role, presence) in &acc.members {
                    let here = if *presence == Presence::Online {
                        "H"
                    } else {
                        "G"
                    };
                    let flags = format!("{here}{}", self.prefix(*role));
                    self.numeric(
                        fx,
                        "352",
                        &[
                            room,
                            name,
                            IRC_HOST,
                            IRC_SERVER_NAME,
                            name,
                            &flags,
                            &format!("0 {name}"),
                        ],
                    );
                }
                self.numeric(fx, "315", &[room, "End of /WHO list"]);
            }
            (Ctx::Topic { set: false, .. }, OkReply::Topic { room, set, text }) => {
                if text.is_empty() {
                    self.numeric(fx, "331", &[room, "No topic is set"]);
                } else {
                    self.numeric(fx, "332", &[room, text]);
                    if let Some(s) = set {
                        self.numeric(fx, "333", &[room, s.by, &secs(s.time_ms)]);
                    }
                }
            }
            (Ctx::Topic { set: true, .. }, OkReply::Topic { room, text, .. }) => {
                let mut m = Message::new("TOPIC", &[room, text]);
                m.source = Some(Session::source(&me));
                self.say(fx, m);
            }
            (
                Ctx::RoomInfo { bans: false, .. },
                OkReply::Room(RoomReply::Info { room, created_ms }),
            ) => {
                let private = acc
                    .rooms
                    .first()
                    .is_some_and(|r| r.privacy == Privacy::Private);
                let modes = if private { "+int" } else { "+nt" };
                self.numeric(fx, "324", &[room, modes]);
                self.numeric(fx, "329", &[room, &secs(*created_ms)]);
            }
            (Ctx::RoomInfo { bans: true, .. }, OkReply::Room(RoomReply::Info { room, .. })) => {
                for (name, by, time_ms) in &acc.bans {
                    let mask = format!("{name}!*@*");
                    self.numeric(fx, "367", &[room, &mask, by, &secs(*time_ms)]);
                }
                self.numeric(fx, "368", &[room, "End of channel ban list"]);
            }
            (Ctx::Mode { change, arg, .. }, reply) => {
                let room = match reply {
                    OkReply::Ban { room, .. }
                    | OkReply::Unban { room, .. }
                    | OkReply::Role { room, .. }
                    | OkReply::Room(RoomReply::Private { room })
                    | OkReply::Room(RoomReply::Public { room }) => *room,
                    _ => return,
                };
                let mut params = vec![room, change.as_str()];
                let mask;
                if let Some(a) = &arg {
                    if change.ends_with('b') {
                        mask = format!("{a}!*@*");
                        params.push(&mask);
                    } else {
                        params.push(a);
                    }
                }
                let mut m = Message::new("MODE", &params);
                m.source = Some(Session::source(&me));
                self.say(fx, m);
            }
            (Ctx::Kick { reason, .. }, OkReply::Kick { room, name }) => {
                let reason = if reason.is_empty() {
                    me.clone()
                } else {
                    reason
                };
                let mut m = Message::new("KICK", &[room, name, &reason]);
                m.source = Some(Session::source(&me));
                self.say(fx, m);
            }
            (Ctx::Invite, OkReply::Invite { room, name, .. }) => {
                self.numeric(fx, "341", &[name, room]);
            }
            (
                Ctx::Whois { who: false, .. },
                OkReply::Whois {
                    name,
                    presence,
                    away,
                    ..
                },
            ) => {
                self.numeric(fx, "311", &[name, name, IRC_HOST, "*", name]);
                self.numeric(fx, "312", &[name, IRC_SERVER_NAME, "chatd"]);
                if !away.is_empty() {
                    self.numeric(fx, "301", &[name, away]);
                }
                if *presence == Presence::Offline {
                    self.numeric(fx, "320", &[name, "is offline; messages are kept for them"]);
                }
                self.numeric(fx, "330", &[name, name, "is logged in as"]);
                self.numeric(fx, "318", &[name, "End of /WHOIS list"]);
            }
            (
                Ctx::Whois { who: true, .. },
                OkReply::Whois {
                    name,
                    presence,
                    away,
                    ..
                },
            ) => {
                let here = if *presence == Presence::Online && away.is_empty() {
                    "H"
                } else {
                    "G"
                };
                self.numeric(
                    fx,
                    "352",
                    &[
                        "*",
                        name,
                        IRC_HOST,
                        IRC_SERVER_NAME,
                        name,
                        here,
                        &format!("0 {name}"),
                    ],
                );
                self.numeric(fx, "315", &[name, "End of /WHO list"]);
            }
            (Ctx::Away, OkReply::Away { set }) => {
                if *set {
                    self.numeric(fx, "306", &["You have been marked as being away"]);
                } else {
                    self.numeric(fx, "305", &["You are no longer marked as being away"]);
                }
            }
            (Ctx::Rooms { auto: false }, _) => {
                self.numeric(fx, "321", &["Channel", "Users  Name"]);
                for r in &acc.rooms {
                    if r.privacy == Privacy::Private && !matches!(r.standing, Standing::Member(_)) {
                        continue;
                    }
                    self.numeric(fx, "322", &[&r.room, &r.members.to_string(), &r.topic]);
                }
                self.numeric(fx, "323", &["End of /LIST"]);
            }
            (Ctx::Rooms { auto: true }, _) => {
                let unread = std::mem::take(&mut self.unread);
                // A room the client joined meanwhile (its JOIN may reach the core first) is shown
                // already.
                let fresh: Vec<&RoomRow> = acc
                    .rooms
                    .iter()
                    .filter(|r| {
                        matches!(r.standing, Standing::Member(_))
                            && !self.joined.contains_key(&fold(&r.room))
                    })
                    .collect();
                for r in fresh {
                    self.joined.insert(fold(&r.room), r.room.clone());
                    let mut m = Message::new("JOIN", &[&r.room]);
                    m.source = Some(Session::source(&me));
                    self.say(fx, m);
                    if !r.topic.is_empty() {
                        self.numeric(fx, "332", &[&r.room, &r.topic]);
                    }
                    self.ask_core(
                        fx,
                        format!("MEMBERS {}", r.room),
                        Ctx::Members {
                            room: r.room.clone(),
                            who: false,
                            joining: false,
                        },
                    );
                }
                for (room, count, first) in unread {
                    let shown = count.min(u64::from(IRC_CATCH_UP));
                    let text = if shown < count {
                        format!(
                            "{count} unread messages since you last read {room}; the first {shown} follow (CHATHISTORY AFTER for more)"
                        )
                    } else {
                        format!(
                            "{count} unread message{} since you last read {room}",
                            if count == 1 { "" } else { "s" }
                        )
                    };
                    self.say(fx, from_server("NOTICE", &[&room, &text]));
                    // What was missed follows, and is then marked read.
                    self.ask_core(
                        fx,
                        format!("HISTORY {room} {shown} AFTER {}", first.saturating_sub(1)),
                        Ctx::History {
                            target: room.clone(),
                            catch_up: true,
                        },
                    );
                }
            }
            (Ctx::History { target, catch_up }, OkReply::History { .. }) => {
                let batch = if self.caps.batch {
                    let b = self.new_batch();
                    self.say(
                        fx,
                        from_server("BATCH", &[&format!("+{b}"), "chathistory", &target]),
                    );
                    Some(b)
                } else {
                    None
                };
                for m in &acc.messages {
                    self.message(fx, m, batch.as_deref());
                }
                if let Some(b) = batch {
                    self.say(fx, from_server("BATCH", &[&format!("-{b}")]));
                }
                if let (true, Some(last)) = (catch_up, acc.messages.last()) {
                    let line = format!("READ {target} {}", last.id);
                    self.ask_core(fx, line, Ctx::Silent);
                }
            }
            (Ctx::Quit, _) => {
                self.say(fx, Message::new("ERROR", &["Closing link: Quit"]));
            }
            // Silent answers, and any answer whose shape does not match its context (which the core
            // never sends), show nothing.
            _ => {}
        }
    }

    /// A JOIN's replay of the room's latest messages, as a batch when the client takes batches.
    fn replay(&mut self, fx: &mut Effects, messages: &[Msg]) {
        if messages.is_empty() {
            return;
        }
        let batch = if self.caps.batch {
            let b = self.new_batch();
            let room = match &messages[0].to {
                Target::Room(r) | Target::User(r) => r.clone(),
            };
            self.say(
                fx,
                from_server("BATCH", &[&format!("+{b}"), "chathistory", &room]),
            );
            Some(b)
        } else {
            None
        };
        for m in messages {
            self.message(fx, m, batch.as_deref());
        }
        if let Some(b) = batch {
            self.say(fx, from_server("BATCH", &[&format!("-{b}")]));
        }
    }

    /// echo-message: the client's own message, back with its id.
    fn echo(&mut self, fx: &mut Effects, verb: &str, target: &str, text: &str, id: u64) {
        let me = self.me().to_owned();
        let source = Session::source(&me);
        let (action, body) = text_out(text);
        let overhead = 1 + source.len() + 1 + verb.len() + 1 + target.len() + 2 + 2 + 9;
        for part in split_text(body, IRC_MAX_LINE_BYTES.saturating_sub(overhead)) {
            let part = if action {
                format!("\x01ACTION {part}\x01")
            } else {
                part.to_owned()
            };
            let mut tags = Vec::new();
            if self.caps.message_tags {
                tags.push(("msgid".to_owned(), Some(id.to_string())));
            }
            let m = Message {
                tags,
                source: Some(source.clone()),
                command: verb.to_owned(),
                params: vec![target.to_owned(), part],
                trailing: true,
            };
            self.say(fx, m);
        }
    }

    fn fail(&mut self, ctx: Ctx, code: Code, text: &str, fx: &mut Effects) {
        let me = self.me().to_owned();
        match ctx {
            Ctx::Login { sasl } => self.login_failed(fx, sasl),
            Ctx::Silent | Ctx::Quit => {}
            Ctx::Ping { token } => {
                let p = if token.is_empty() {
                    IRC_SERVER_NAME
                } else {
                    &token
                };
                self.say(fx, from_server("PONG", &[IRC_SERVER_NAME, p]));
            }
            Ctx::Msg { target, notice, .. } => {
                // NOTICE is never answered with an error (RFC 2812 3.3.2).
                if notice {
                    return;
                }
                match code {
                    Code::UNKNOWN_USER
                    | Code::BAD_NAME
                    | Code::NO_SUCH_ROOM
                    | Code::BAD_ROOM_NAME => {
                        self.numeric(fx, "401", &[&target, "No such nick/channel"]);
                    }
                    Code::NOT_MEMBER => self.numeric(
                        fx,
                        "404",
                        &[&target, "Cannot send to channel (join it first)"],
                    ),
                    _ => self.notice(fx, &format!("PRIVMSG {target}: {text} ({})", code.as_str())),
                }
            }
            Ctx::Join { room } => {
                let n = match code {
                    Code::BANNED => Some(("474", "Cannot join channel (+b)")),
                    Code::INVITE_ONLY => Some(("473", "Cannot join channel (+i)")),
                    Code::ROOM_FULL => Some(("471", "Cannot join channel (+l)")),
                    Code::TOO_MANY_ROOMS => Some(("405", "You have joined too many channels")),
                    Code::BAD_ROOM_NAME => Some(("479", "Illegal channel name")),
                    _ => None,
                };
                match n {
                    Some((num, t)) => self.numeric(fx, num, &[&room, t]),
                    None => self.notice(fx, &format!("JOIN {room}: {text} ({})", code.as_str())),
                }
            }
            Ctx::Members { room, who, joining } => {
                // NAMES and WHO of a room one may not list end empty, as on other servers; the
                // NAMES of a JOIN that failed shows nothing (the JOIN's error said it).
                let _ = code;
                if joining {
                } else if who {
                    self.numeric(fx, "315", &[&room, "End of /WHO list"]);
                } else {
                    self.numeric(fx, "366", &[&room, "End of /NAMES list"]);
                }
            }
            Ctx::Whois { nick, who } => {
                if who {
                    self.numeric(fx, "315", &[&nick, "End of /WHO list"]);
                } else {
                    self.numeric(fx, "401", &[&nick, "No such nick/channel"]);
                    self.numeric(fx, "318", &[&nick, "End of /WHOIS list"]);
                }
            }
            Ctx::Part { room, .. }
            | Ctx::Topic { room, .. }
            | Ctx::RoomInfo { room, .. }
            | Ctx::Mode { room, .. }
            | Ctx::Kick { room, .. } => self.room_fail(fx, &room, code, text),
            Ctx::Invite => match code {
                Code::NOT_MEMBER => self.numeric(fx, "442", &["*", "You're not on that channel"]),
                Code::NOT_ALLOWED => self.numeric(fx, "482", &["*", "You're not channel operator"]),
                Code::ALREADY_MEMBER => {
                    self.numeric(fx, "443", &["*", "*", "is already on channel"])
                }
                _ => self.notice(fx, &format!("INVITE: {text} ({})", code.as_str())),
            },
            Ctx::History { target, .. } => {
                let _ = me;
                self.say(
                    fx,
                    from_server("FAIL", &["CHATHISTORY", "INVALID_TARGET", &target, text]),
                );
            }
            Ctx::Away | Ctx::Rooms { .. } => {
                self.notice(fx, &format!("{text} ({})", code.as_str()));
            }
        }
    }

    fn room_fail(&mut self, fx: &mut Effects, room: &str, code: Code, text: &str) {
        match code {
            Code::NO_SUCH_ROOM | Code::BAD_ROOM_NAME => {
                self.numeric(fx, "403", &[room, "No such channel"]);
            }
            Code::NOT_MEMBER => self.numeric(fx, "442", &[room, "You're not on that channel"]),
            Code::NOT_ALLOWED => self.numeric(fx, "482", &[room, "You're not channel operator"]),
            Code::NO_SUCH_MEMBER => {
                self.numeric(fx, "441", &["*", room, "They aren't on that channel"])
            }
            _ => self.notice(fx, &format!("{room}: {text} ({})", code.as_str())),
        }
    }

    /// True once the session asked to close (QUIT, or registration refused).
    pub fn closing(&self) -> bool {
        self.closing
    }
}

/// The message as a line of at most [`IRC_MAX_LINE_BYTES`] without its tags: a longer last
/// parameter (a name or text echoed from a long line) is cut at a character boundary. Messages are
/// split before they get here; this is the bound for everything else.
fn clamped(mut m: Message) -> String {
    // Text goes in the trailing form, as servers send it (and as simple clients expect it).
    // The numerics whose last parameter is a value, not text, keep the plain form.
    let numeric = m.command.len() == 3
        && m.command.bytes().all(|b| b.is_ascii_digit())
        && !matches!(
            m.command.as_str(),
            "004" | "221" | "324" | "329" | "333" | "341" | "367"
        );
    if numeric
        || matches!(
            m.command.as_str(),
            "PRIVMSG" | "NOTICE" | "PART" | "KICK" | "TOPIC" | "AWAY" | "ERROR" | "CAP"
        )
    {
        m.trailing = m.params.len() >= 2 || matches!(m.command.as_str(), "AWAY" | "ERROR");
    }
    // Bounded: each round shortens the last parameter, or ends.
    loop {
        let line = m.to_line();
        let tags = if m.tags.is_empty() {
            0
        } else {
            line.find(' ').map_or(0, |i| i + 1)
        };
        let over = (line.len() - tags).saturating_sub(IRC_MAX_LINE_BYTES);
        if over == 0 {
            return line;
        }
        let Some(last) = m.params.last_mut().filter(|p| !p.is_empty()) else {
            // Only a source or command longer than a line could get here; the session makes none.
            return String::new();
        };
        let mut keep = last.len().saturating_sub(over);
        while !last.is_char_boundary(keep) {
            keep -= 1;
        }
        last.truncate(keep);
    }
}

/// A message from the server.
fn from_server(command: &str, params: &[&str]) -> Message {
    let mut m = Message::new(command, params);
    m.source = Some(IRC_SERVER_NAME.to_owned());
    m
}

/// Decodes standard base64 (with or without padding); `None` if it is not base64.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_a_sasl_plain_payload() {
        // "\0alice\0wonderland1"
        assert_eq!(
            base64_decode("AGFsaWNlAHdvbmRlcmxhbmQx").unwrap(),
            b"\0alice\0wonderland1"
        );
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn action_and_formatting_map_to_text() {
        assert_eq!(
            text_in("\x01ACTION waves\x01").as_deref(),
            Some("/me waves")
        );
        assert_eq!(
            text_in("\x02bold\x02 \x0304,12red\x03").as_deref(),
            Some("bold red")
        );
        assert_eq!(text_in("\x01VERSION\x01"), None);
        assert_eq!(text_in("\x02\x02"), None);
        assert_eq!(text_out("/me waves"), (true, "waves"));
    }

    /// A session logged in as `alice`, as the core would have it after SASL.
    fn logged_in() -> Session {
        let mut s = Session::new("test");
        let mut fx = Effects::default();
        for l in ["CAP LS 302", "CAP REQ :sasl", "AUTHENTICATE PLAIN"] {
            s.client_line(l, &mut fx);
        }
        s.client_line("AUTHENTICATE AGFsaWNlAHdvbmRlcmxhbmQx", &mut fx);
        assert_eq!(fx.core.last().unwrap(), "@i1 LOGIN alice wonderland1");
        for l in ["NICK alice", "USER alice 0 * :A", "CAP END"] {
            s.client_line(l, &mut fx);
        }
        s.server_bytes(b"OK @i1 LOGIN alice\nBACKLOG-END 0\n", &mut fx);
        assert!(fx.client.contains(" 001 alice "), "{}", fx.client);
        s
    }

    #[test]
    fn join_takes_at_most_the_target_limit() {
        let mut s = logged_in();
        let rooms: Vec<String> = (0..=IRC_MAX_TARGETS).map(|i| format!("#r{i}")).collect();
        let mut fx = Effects::default();
        s.client_line(&format!("JOIN {}", rooms.join(",")), &mut fx);
        let joins = fx.core.iter().filter(|l| l.contains(" JOIN #")).count();
        assert_eq!(joins, IRC_MAX_TARGETS);
        assert!(!fx
            .core
            .iter()
            .any(|l| l.ends_with(&format!("JOIN #r{IRC_MAX_TARGETS}"))));
    }

    #[test]
    fn a_full_sasl_chunk_waits_for_more() {
        let mut s = Session::new("test");
        let mut fx = Effects::default();
        s.client_line("AUTHENTICATE PLAIN", &mut fx);
        // 400 bytes of base64 (of 300 bytes: NUL, a name, NUL, a long password).
        let raw = format!("\0alice\0{}", "p".repeat(293));
        assert_eq!(raw.len(), 300);
        let b64 = encode64(raw.as_bytes());
        assert_eq!(b64.len(), IRC_SASL_CHUNK);
        s.client_line(&format!("AUTHENTICATE {b64}"), &mut fx);
        assert!(fx.core.is_empty(), "a full chunk means more follows");
        s.client_line("AUTHENTICATE +", &mut fx);
        assert_eq!(fx.core.len(), 1);
        assert!(
            fx.core[0].starts_with("@i1 LOGIN alice ppp"),
            "{:?}",
            fx.core
        );
    }

    fn encode64(raw: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        raw.chunks(3)
            .flat_map(|c| {
                let n = (u32::from(c[0]) << 16)
                    | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                    | u32::from(*c.get(2).unwrap_or(&0));
                (0..4).map(move |i| {
                    if i <= c.len() {
                        A[(n >> (18 - 6 * i) & 63) as usize] as char
                    } else {
                        '='
                    }
                })
            })
            .collect()
    }

    #[test]
    fn long_text_splits_at_spaces_within_the_limit() {
        let text = "word ".repeat(200);
        let parts = split_text(&text, 100);
        assert!(parts.iter().all(|p| p.len() <= 100));
        assert_eq!(parts.concat(), text);
        let wide = "é".repeat(100);
        let parts = split_text(&wide, 51);
        assert!(parts.iter().all(|p| p.len() <= 51));
        assert_eq!(parts.concat(), wide);
    }
}
