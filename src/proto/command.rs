//! Command lines: the syntax of every command, the two-step parser and the encoder.
//!
//! This is the codec's half of a command: its name, its usage line, how many arguments it takes
//! ([`COMMANDS`], one row per command) and how its arguments parse ([`Verb::parse_args`]) and encode
//! ([`Request::encode`]). What the server does with it (the state it needs, its help text, its
//! handler) is the core's command table, `core::commands`.
//!
//! Parsing happens in two steps so that the core can check preconditions in the order the spec gives
//! (label, command, login state, arity, argument values): [`split_head`] finds the label and the
//! command word, the core checks the state, then [`Verb::parse_args`] checks arity (from the table,
//! before any argument is looked at) and values. [`parse`] does both for callers that hold no state
//! (clients, fuzzers). [`Request::encode`] is the inverse: `parse(encode(r)) == r` for every request
//! whose values pass the same checks `parse` makes (the types do not stop a caller from building a
//! GROUP of 51 names or a 65-byte PING token; those encode to lines that are refused).

use super::code::Code;
use super::direct::{Fingerprint, PeerAddress};
use super::name::{check_label, check_text, check_text_within, Name, Password, TextError};
use super::room::{check_reason, check_topic, Role, RoomName, Target};
use super::token::{parse_id, DeviceToken};
use crate::config::{
    HISTORY_MAX_COUNT, MAX_AWAY_BYTES, MAX_GROUP_RECIPIENTS, MAX_PING_TOKEN_BYTES,
    MAX_REASON_BYTES, MAX_TEXT_BYTES, MAX_TOKEN_LABEL_BYTES, MAX_TOPIC_BYTES,
};

/// A command word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Register,
    Login,
    Logout,
    Quit,
    Help,
    Ping,
    Msg,
    Group,
    All,
    Users,
    History,
    Friend,
    Token,
    Resume,
    Tokens,
    Revoke,
    Password,
    Unregister,
    Block,
    Unblock,
    Blocks,
    Dms,
    Away,
    Whois,
    Join,
    Part,
    Rooms,
    Members,
    Topic,
    Invite,
    Kick,
    Ban,
    Unban,
    Role,
    Room,
    Read,
    Compress,
    Direct,
    Announce,
    Suspend,
    Unsuspend,
    Kill,
    Stats,
    Adduser,
}

/// How many space-separated arguments a command takes, checked before any of them is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arity {
    /// Fewer gives `MISSING_ARGUMENT`.
    pub min: usize,
    /// More gives `TOO_MANY_ARGUMENTS`; `None` when the last argument is free text (it may hold
    /// spaces) or a subcommand decides (FRIEND, ROOM).
    pub max: Option<usize>,
}

/// The codec's row for one command.
#[derive(Debug)]
pub struct Syntax {
    pub verb: Verb,
    /// Canonical name, as used in replies.
    pub name: &'static str,
    /// One-line syntax, for MISSING_ARGUMENT / TOO_MANY_ARGUMENTS replies and HELP.
    pub usage: &'static str,
    pub arity: Arity,
}

const fn row(
    verb: Verb,
    name: &'static str,
    usage: &'static str,
    min: usize,
    max: Option<usize>,
) -> Syntax {
    Syntax {
        verb,
        name,
        usage,
        arity: Arity { min, max },
    }
}

/// The syntax of every command, in the order of the spec (section 4).
pub const COMMANDS: &[Syntax] = &[
    row(
        Verb::Register,
        "REGISTER",
        "REGISTER <name> <password>",
        2,
        Some(2),
    ),
    row(Verb::Login, "LOGIN", "LOGIN <name> <password>", 2, Some(2)),
    row(Verb::Logout, "LOGOUT", "LOGOUT", 0, Some(0)),
    row(Verb::Quit, "QUIT", "QUIT [<reason>]", 0, None),
    row(Verb::Help, "HELP", "HELP [<command>]", 0, Some(1)),
    row(Verb::Ping, "PING", "PING [<token>]", 0, Some(1)),
    row(Verb::Msg, "MSG", "MSG <name>|<#room> <text>", 2, None),
    row(
        Verb::Group,
        "GROUP",
        "GROUP <name>,<name>,... <text>",
        2,
        None,
    ),
    row(Verb::All, "ALL", "ALL <text>", 1, None),
    row(Verb::Users, "USERS", "USERS", 0, Some(0)),
    row(
        Verb::History,
        "HISTORY",
        "HISTORY <name>|<#room>|* [<count>] [BEFORE <id>|AFTER <id>]",
        1,
        Some(4),
    ),
    row(
        Verb::Friend,
        "FRIEND",
        "FRIEND ADD|ACCEPT|DENY|REMOVE <name> | FRIEND LIST",
        1,
        None,
    ),
    row(Verb::Token, "TOKEN", "TOKEN [<label>]", 0, None),
    row(Verb::Resume, "RESUME", "RESUME <token>", 1, Some(1)),
    row(Verb::Tokens, "TOKENS", "TOKENS", 0, Some(0)),
    row(Verb::Revoke, "REVOKE", "REVOKE <id>|ALL", 1, Some(1)),
    row(
        Verb::Password,
        "PASSWORD",
        "PASSWORD <old> <new>",
        2,
        Some(2),
    ),
    row(
        Verb::Unregister,
        "UNREGISTER",
        "UNREGISTER <password>",
        1,
        Some(1),
    ),
    row(Verb::Block, "BLOCK", "BLOCK <name>", 1, Some(1)),
    row(Verb::Unblock, "UNBLOCK", "UNBLOCK <name>", 1, Some(1)),
    row(Verb::Blocks, "BLOCKS", "BLOCKS", 0, Some(0)),
    row(Verb::Dms, "DMS", "DMS [FRIENDS|EVERYONE]", 0, Some(1)),
    row(Verb::Away, "AWAY", "AWAY [<text>]", 0, None),
    row(Verb::Whois, "WHOIS", "WHOIS <name>", 1, Some(1)),
    row(Verb::Join, "JOIN", "JOIN <#room>", 1, Some(1)),
    row(Verb::Part, "PART", "PART <#room> [<reason>]", 1, None),
    row(Verb::Rooms, "ROOMS", "ROOMS", 0, Some(0)),
    row(Verb::Members, "MEMBERS", "MEMBERS <#room>", 1, Some(1)),
    row(Verb::Topic, "TOPIC", "TOPIC <#room> [<text>|-]", 1, None),
    row(Verb::Invite, "INVITE", "INVITE <#room> <name>", 2, Some(2)),
    row(
        Verb::Kick,
        "KICK",
        "KICK <#room> <name> [<reason>]",
        2,
        None,
    ),
    row(Verb::Ban, "BAN", "BAN <#room> <name> [<reason>]", 2, None),
    row(Verb::Unban, "UNBAN", "UNBAN <#room> <name>", 2, Some(2)),
    row(
        Verb::Role,
        "ROLE",
        "ROLE <#room> <name> OWNER|OP|MEMBER",
        3,
        Some(3),
    ),
    row(
        Verb::Room,
        "ROOM",
        "ROOM INFO|PRIVATE|PUBLIC|DELETE <#room>",
        1,
        None,
    ),
    row(Verb::Read, "READ", "READ <name>|<#room> [<id>]", 1, Some(2)),
    row(Verb::Compress, "COMPRESS", "COMPRESS DEFLATE", 1, Some(1)),
    row(
        Verb::Direct,
        "DIRECT",
        "DIRECT OFFER <name> <address> <fingerprint> | DIRECT ACCEPT <name> <fingerprint> | \
         DIRECT DECLINE|CANCEL <name>",
        1,
        None,
    ),
    row(Verb::Announce, "ANNOUNCE", "ANNOUNCE <text>", 1, None),
    row(
        Verb::Suspend,
        "SUSPEND",
        "SUSPEND <name> [<reason>]",
        1,
        None,
    ),
    row(Verb::Unsuspend, "UNSUSPEND", "UNSUSPEND <name>", 1, Some(1)),
    row(Verb::Kill, "KILL", "KILL <name> [<reason>]", 1, None),
    row(Verb::Stats, "STATS", "STATS", 0, Some(0)),
    row(
        Verb::Adduser,
        "ADDUSER",
        "ADDUSER <name> <password>",
        2,
        Some(2),
    ),
];

impl Verb {
    /// Every verb, in the order of [`COMMANDS`].
    pub fn all() -> impl Iterator<Item = Verb> {
        COMMANDS.iter().map(|s| s.verb)
    }

    /// The command named `word`, in any letter case.
    pub fn lookup(word: &str) -> Option<Verb> {
        COMMANDS
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(word))
            .map(|s| s.verb)
    }

    /// The command whose canonical (upper-case) name is exactly `word`, as in server lines.
    pub fn canonical(word: &str) -> Option<Verb> {
        COMMANDS.iter().find(|s| s.name == word).map(|s| s.verb)
    }

    /// This command's row of the table.
    pub fn syntax(self) -> &'static Syntax {
        COMMANDS
            .iter()
            .find(|s| s.verb == self)
            .expect("every verb has a row; checked by a test")
    }

    /// Canonical name.
    pub fn name(self) -> &'static str {
        self.syntax().name
    }

    /// Parses the arguments (`rest` is the line after the command word, starting with the space
    /// that follows it, or empty). The arity of the table is checked first.
    pub fn parse_args(self, rest: &str) -> Result<Command, Refusal> {
        let syntax = self.syntax();
        let usage = || format!("usage: {}", syntax.usage);
        let missing = || Refusal(Code::MISSING_ARGUMENT, usage());
        let too_many = || Refusal(Code::TOO_MANY_ARGUMENTS, usage());
        // Counted only as far as the check needs: past `max` (or to `min` when the last argument
        // is free text), not through every word of a message's text.
        let cap = syntax.arity.max.map_or(syntax.arity.min, |max| max + 1);
        let given = Tokens(rest).count_up_to(cap);
        if given < syntax.arity.min {
            return Err(missing());
        }
        if syntax.arity.max.is_some_and(|max| given > max) {
            return Err(too_many());
        }
        let mut args = Tokens(rest);
        Ok(match self {
            Verb::Register | Verb::Adduser => {
                let (n, p) = (args.need()?, args.need()?);
                let name = Name::parse(n).map_err(|e| Refusal(Code::BAD_NAME, e.into()))?;
                let password =
                    Password::parse(p).map_err(|e| Refusal(Code::BAD_PASSWORD, e.into()))?;
                if self == Verb::Register {
                    Command::Register { name, password }
                } else {
                    Command::Adduser { name, password }
                }
            }
            Verb::Announce => {
                let text = args.text().ok_or_else(missing)?;
                text_ok(text)?;
                Command::Announce {
                    text: text.to_owned(),
                }
            }
            Verb::Suspend | Verb::Kill => {
                let name =
                    Name::parse(args.need()?).map_err(|e| Refusal(Code::BAD_NAME, e.into()))?;
                let reason = reason(&mut args)?;
                if self == Verb::Suspend {
                    Command::Suspend { name, reason }
                } else {
                    Command::Kill { name, reason }
                }
            }
            Verb::Unsuspend => Command::Unsuspend {
                name: Name::parse(args.need()?).map_err(|e| Refusal(Code::BAD_NAME, e.into()))?,
            },
            Verb::Stats => Command::Stats,
            Verb::Login => Command::Login {
                name: args.need()?.to_owned(),
                password: Password::unchecked(args.need()?),
            },
            Verb::Logout => Command::Logout,
            Verb::Users => Command::Users,
            Verb::Quit => Command::Quit {
                reason: rest.strip_prefix(' ').map(str::to_owned),
            },
            Verb::Help => Command::Help {
                topic: args.next().map(str::to_owned),
            },
            Verb::Ping => {
                let token = args.next().map(str::to_owned);
                if token
                    .as_ref()
                    .is_some_and(|t| t.len() > MAX_PING_TOKEN_BYTES)
                {
                    return Err(Refusal(
                        Code::BAD_ARGUMENT,
                        format!("a PING token has at most {MAX_PING_TOKEN_BYTES} bytes"),
                    ));
                }
                Command::Ping { token }
            }
            Verb::Msg => {
                let target = args.need()?;
                let text = args.text().ok_or_else(missing)?;
                let to = parse_target(target)?;
                text_ok(text)?;
                Command::Msg {
                    to,
                    text: text.to_owned(),
                }
            }
            Verb::Group => {
                let list = args.need()?;
                let text = args.text().ok_or_else(missing)?;
                let to = parse_group(list)?;
                text_ok(text)?;
                Command::Group {
                    to,
                    text: text.to_owned(),
                }
            }
            Verb::All => {
                let text = args.text().ok_or_else(missing)?;
                text_ok(text)?;
                Command::All {
                    text: text.to_owned(),
                }
            }
            Verb::History => parse_history(&mut args)?,
            Verb::Compress => {
                let mechanism = args.need()?;
                if !mechanism.eq_ignore_ascii_case(super::deflate::MECHANISM) {
                    return Err(Refusal(
                        Code::BAD_ARGUMENT,
                        format!(
                            "unknown compression \"{}\"; the only one is DEFLATE",
                            quote(mechanism)
                        ),
                    ));
                }
                Command::Compress
            }
            Verb::Direct => parse_direct(&mut args, &usage)?,
            Verb::Friend => {
                let sub = args.need()?;
                let op = match sub.to_ascii_uppercase().as_str() {
                    "LIST" => None,
                    "ADD" => Some(FriendOp::Add as fn(Name) -> FriendOp),
                    "ACCEPT" => Some(FriendOp::Accept as fn(Name) -> FriendOp),
                    "DENY" => Some(FriendOp::Deny as fn(Name) -> FriendOp),
                    "REMOVE" => Some(FriendOp::Remove as fn(Name) -> FriendOp),
                    _ => {
                        return Err(Refusal(
                            Code::UNKNOWN_SUBCOMMAND,
                            format!("unknown FRIEND subcommand \"{}\"; {}", quote(sub), usage()),
                        ))
                    }
                };
                // The subcommand's own arity (spec 3.2, check 5).
                let name = match op {
                    None => None,
                    Some(_) => Some(args.next().ok_or_else(missing)?),
                };
                if args.next().is_some() {
                    return Err(too_many());
                }
                match (op, name) {
                    (Some(make), Some(n)) => {
                        make(Name::parse(n).map_err(|e| Refusal(Code::BAD_NAME, e.into()))?)
                    }
                    _ => FriendOp::List,
                }
                .into()
            }
            Verb::Token => Command::Token {
                label: optional_text(&mut args, MAX_TOKEN_LABEL_BYTES, "a token label")?,
            },
            Verb::Away => Command::Away {
                text: optional_text(&mut args, MAX_AWAY_BYTES, "an away message")?,
            },
            Verb::Whois => Command::Whois {
                name: Name::parse(args.need()?).map_err(|e| Refusal(Code::BAD_NAME, e.into()))?,
            },
            Verb::Resume => Command::Resume {
                token: DeviceToken::unchecked(args.need()?),
            },
            Verb::Tokens => Command::Tokens,
            Verb::Password => {
                let (old, new) = (args.need()?, args.need()?);
                Command::Password {
                    old: Password::unchecked(old),
                    new: Password::parse(new).map_err(|e| Refusal(Code::BAD_PASSWORD, e.into()))?,
                }
            }
            Verb::Unregister => Command::Unregister {
                password: Password::unchecked(args.need()?),
            },
            Verb::Block | Verb::Unblock => {
                let name =
                    Name::parse(args.need()?).map_err(|e| Refusal(Code::BAD_NAME, e.into()))?;
                if self == Verb::Block {
                    Command::Block { name }
                } else {
                    Command::Unblock { name }
                }
            }
            Verb::Blocks => Command::Blocks,
            Verb::Dms => Command::Dms(match args.next() {
                None => None,
                Some(w) if w.eq_ignore_ascii_case("FRIENDS") => Some(Dms::Friends),
                Some(w) if w.eq_ignore_ascii_case("EVERYONE") => Some(Dms::Everyone),
                Some(w) => {
                    return Err(Refusal(
                        Code::BAD_ARGUMENT,
                        format!("\"{}\" is neither FRIENDS nor EVERYONE", quote(w)),
                    ))
                }
            }),
            Verb::Revoke => {
                let which = args.need()?;
                Command::Revoke(if which.eq_ignore_ascii_case("ALL") {
                    Revoke::All
                } else {
                    Revoke::One(parse_id(which).ok_or_else(|| {
                        Refusal(
                            Code::BAD_ARGUMENT,
                            format!(
                                "\"{}\" is neither ALL nor a token id (16 hex digits, as TOKENS \
                                 shows them)",
                                quote(which)
                            ),
                        )
                    })?)
                })
            }
            Verb::Join => Command::Join {
                room: parse_room(args.need()?)?,
            },
            Verb::Part => {
                let room = parse_room(args.need()?)?;
                Command::Part {
                    room,
                    reason: reason(&mut args)?,
                }
            }
            Verb::Rooms => Command::Rooms,
            Verb::Members => Command::Members {
                room: parse_room(args.need()?)?,
            },
            Verb::Topic => {
                let room = parse_room(args.need()?)?;
                let change = match args.text() {
                    None => None,
                    Some(CLEAR_TOPIC) => Some(TopicChange::Clear),
                    Some(text) => {
                        check_topic(text).map_err(|e| short_text_refusal(e, MAX_TOPIC_BYTES))?;
                        Some(TopicChange::Set(text.to_owned()))
                    }
                };
                Command::Topic { room, change }
            }
            Verb::Invite => {
                let room = parse_room(args.need()?)?;
                let name = parse_name(args.need()?)?;
                Command::Invite { room, name }
            }
            Verb::Kick | Verb::Ban => {
                let room = parse_room(args.need()?)?;
                let name = parse_name(args.need()?)?;
                let reason = reason(&mut args)?;
                if self == Verb::Kick {
                    Command::Kick { room, name, reason }
                } else {
                    Command::Ban { room, name, reason }
                }
            }
            Verb::Unban => {
                let room = parse_room(args.need()?)?;
                let name = parse_name(args.need()?)?;
                Command::Unban { room, name }
            }
            Verb::Role => {
                let room = parse_room(args.need()?)?;
                let name = parse_name(args.need()?)?;
                let word = args.need()?;
                let role = Role::lookup(word).ok_or_else(|| {
                    Refusal(
                        Code::BAD_ARGUMENT,
                        format!("a role is OWNER, OP or MEMBER, not \"{}\"", quote(word)),
                    )
                })?;
                Command::Role { room, name, role }
            }
            Verb::Room => {
                let sub = args.need()?;
                let sub = match sub.to_ascii_uppercase().as_str() {
                    "INFO" => RoomSub::Info,
                    "PRIVATE" => RoomSub::Private,
                    "PUBLIC" => RoomSub::Public,
                    "DELETE" => RoomSub::Delete,
                    _ => {
                        return Err(Refusal(
                            Code::UNKNOWN_SUBCOMMAND,
                            format!("unknown ROOM subcommand \"{}\"; {}", quote(sub), usage()),
                        ))
                    }
                };
                // The subcommand's own arity (spec 3.2, check 5): exactly one room.
                let room = args.next().ok_or_else(missing)?;
                if args.next().is_some() {
                    return Err(too_many());
                }
                Command::Room {
                    sub,
                    room: parse_room(room)?,
                }
            }
            Verb::Read => {
                let target = parse_target(args.need()?)?;
                let id = match args.next() {
                    None => None,
                    Some(tok) => Some(parse_u64(tok).ok_or_else(|| {
                        Refusal(
                            Code::BAD_ID,
                            format!("\"{}\" is not a message id", quote(tok)),
                        )
                    })?),
                };
                Command::Read { target, id }
            }
        })
    }
}

/// The text of `TOPIC <#room> -`, which clears the topic.
pub const CLEAR_TOPIC: &str = "-";

/// An account name argument.
fn parse_name(tok: &str) -> Result<Name, Refusal> {
    Name::parse(tok).map_err(|e| Refusal(Code::BAD_NAME, e.into()))
}

/// A room name argument.
fn parse_room(tok: &str) -> Result<RoomName, Refusal> {
    RoomName::parse(tok).map_err(|e| Refusal(Code::BAD_ROOM_NAME, e.into()))
}

/// A user or a room: a token starting with `#` is a room.
fn parse_target(tok: &str) -> Result<Target, Refusal> {
    if tok.starts_with('#') {
        parse_room(tok).map(Target::Room)
    } else {
        parse_name(tok).map(Target::User)
    }
}

/// The optional reason of PART, KICK, BAN, SUSPEND and KILL: the rest of the line.
fn reason(args: &mut Tokens<'_>) -> Result<Option<String>, Refusal> {
    match args.text() {
        None => Ok(None),
        Some(text) => {
            check_reason(text).map_err(|e| short_text_refusal(e, MAX_REASON_BYTES))?;
            Ok(Some(text.to_owned()))
        }
    }
}

/// A topic or a reason that breaks the text rules or its own limit.
fn short_text_refusal(e: TextError, max: usize) -> Refusal {
    match e {
        TextError::Bad(why) => Refusal(Code::BAD_TEXT, why.into()),
        TextError::Hidden(c) => hidden(c),
        TextError::TooLong => Refusal(
            Code::TEXT_TOO_LONG,
            format!("this text has at most {max} bytes"),
        ),
    }
}

impl From<FriendOp> for Command {
    fn from(op: FriendOp) -> Command {
        Command::Friend(op)
    }
}

/// A free text that may be left out (a token label, an away message), checked like a message text
/// but against `max` bytes.
fn optional_text(args: &mut Tokens<'_>, max: usize, what: &str) -> Result<Option<String>, Refusal> {
    let Some(text) = args.text() else {
        return Ok(None);
    };
    check_text_within(text, max).map_err(|e| match e {
        TextError::Bad(why) => Refusal(Code::BAD_TEXT, why.into()),
        TextError::Hidden(c) => hidden(c),
        TextError::TooLong => Refusal(
            Code::TEXT_TOO_LONG,
            format!("{what} has at most {max} bytes"),
        ),
    })?;
    Ok(Some(text.to_owned()))
}

/// `DIRECT <subcommand> ...`: the subcommand, its arity, then its arguments left to right.
fn parse_direct(args: &mut Tokens<'_>, usage: &dyn Fn() -> String) -> Result<Command, Refusal> {
    let sub = args.need()?;
    let upper = sub.to_ascii_uppercase();
    let arity = match upper.as_str() {
        "OFFER" => 3,
        "ACCEPT" => 2,
        "DECLINE" | "CANCEL" => 1,
        _ => {
            return Err(Refusal(
                Code::UNKNOWN_SUBCOMMAND,
                format!("unknown DIRECT subcommand \"{}\"; {}", quote(sub), usage()),
            ))
        }
    };
    let given: Vec<&str> = std::iter::from_fn(|| args.next()).collect();
    if given.len() < arity {
        return Err(Refusal(Code::MISSING_ARGUMENT, usage()));
    }
    if given.len() > arity {
        return Err(Refusal(Code::TOO_MANY_ARGUMENTS, usage()));
    }
    let name = Name::parse(given[0]).map_err(|e| Refusal(Code::BAD_NAME, e.into()))?;
    let address = |s: &str| PeerAddress::parse(s).map_err(|e| Refusal(Code::BAD_ADDRESS, e.into()));
    let fingerprint =
        |s: &str| Fingerprint::parse(s).map_err(|e| Refusal(Code::BAD_FINGERPRINT, e.into()));
    Ok(Command::Direct(match upper.as_str() {
        "OFFER" => DirectOp::Offer {
            to: name,
            address: address(given[1])?,
            fingerprint: fingerprint(given[2])?,
        },
        "ACCEPT" => DirectOp::Accept {
            from: name,
            fingerprint: fingerprint(given[1])?,
        },
        "DECLINE" => DirectOp::Decline { from: name },
        _ => DirectOp::Cancel { to: name },
    }))
}

fn text_ok(text: &str) -> Result<(), Refusal> {
    check_text(text).map_err(|e| match e {
        TextError::Bad(why) => Refusal(Code::BAD_TEXT, why.into()),
        TextError::Hidden(c) => hidden(c),
        TextError::TooLong => Refusal(
            Code::TEXT_TOO_LONG,
            format!("a text has at most {MAX_TEXT_BYTES} bytes"),
        ),
    })
}

/// The refusal of a text holding a hidden character.
fn hidden(c: char) -> Refusal {
    Refusal(
        Code::BAD_TEXT,
        format!(
            "the text contains U+{:04X}, an invisible or direction-changing character that \
             would make it show something else than it says",
            c as u32
        ),
    )
}

fn parse_group(list: &str) -> Result<Vec<Name>, Refusal> {
    let parts: Vec<&str> = list.split(',').collect();
    if parts.len() > MAX_GROUP_RECIPIENTS {
        return Err(Refusal(
            Code::TOO_MANY_RECIPIENTS,
            format!("a GROUP has at most {MAX_GROUP_RECIPIENTS} recipients"),
        ));
    }
    // Every name's form first, then repeats (spec 4.8).
    let names = parts
        .iter()
        .map(|p| {
            Name::parse(p)
                .map_err(|e| Refusal(Code::BAD_NAME, format!("\"{}\" in the list: {e}", quote(p))))
        })
        .collect::<Result<Vec<Name>, Refusal>>()?;
    for (i, n) in names.iter().enumerate() {
        if names[..i]
            .iter()
            .any(|m| m.as_str().eq_ignore_ascii_case(n.as_str()))
        {
            return Err(Refusal(Code::DUPLICATE_NAME, format!("{n} is named twice")));
        }
    }
    Ok(names)
}

fn parse_history(args: &mut Tokens<'_>) -> Result<Command, Refusal> {
    // The arity (a target and at most three more tokens) was checked from the table.
    let toks: Vec<&str> = std::iter::from_fn(|| args.next()).collect();
    let Some((&target, rest)) = toks.split_first() else {
        return Err(Refusal(
            Code::MISSING_ARGUMENT,
            format!("usage: {}", Verb::History.syntax().usage),
        ));
    };
    let with = if target == "*" {
        HistoryTarget::Broadcast
    } else {
        match parse_target(target)? {
            Target::User(n) => HistoryTarget::User(n),
            Target::Room(r) => HistoryTarget::Room(r),
        }
    };
    let mut rest = rest.iter().copied();
    let mut count = None;
    let mut cursor = Page::Latest;
    let mut next = rest.next();
    if let Some(tok) = next {
        if !is_cursor_word(tok) {
            count = Some(parse_count(tok)?);
            next = rest.next();
        }
    }
    if let Some(word) = next {
        if !is_cursor_word(word) {
            return Err(Refusal(
                Code::BAD_ARGUMENT,
                format!(
                    "expected BEFORE <id> or AFTER <id>, not \"{}\"",
                    quote(word)
                ),
            ));
        }
        let id = rest.next().ok_or_else(|| {
            Refusal(
                Code::BAD_ARGUMENT,
                format!("{} needs a message id", word.to_ascii_uppercase()),
            )
        })?;
        let id: u64 = parse_u64(id).ok_or_else(|| {
            Refusal(
                Code::BAD_ID,
                format!("\"{}\" is not a message id", quote(id)),
            )
        })?;
        cursor = if word.eq_ignore_ascii_case("BEFORE") {
            Page::Before(id)
        } else {
            Page::After(id)
        };
        if let Some(extra) = rest.next() {
            return Err(Refusal(
                Code::BAD_ARGUMENT,
                format!(
                    "nothing may follow the message id, not \"{}\"",
                    quote(extra)
                ),
            ));
        }
    }
    Ok(Command::History {
        with,
        count,
        cursor,
    })
}

fn is_cursor_word(t: &str) -> bool {
    t.eq_ignore_ascii_case("BEFORE") || t.eq_ignore_ascii_case("AFTER")
}

fn parse_count(tok: &str) -> Result<u32, Refusal> {
    let bad = || {
        Refusal(
            Code::BAD_COUNT,
            format!("a count is a number from 1 to {HISTORY_MAX_COUNT}"),
        )
    };
    let n = parse_u64(tok).ok_or_else(bad)?;
    if n == 0 || n > u64::from(HISTORY_MAX_COUNT) {
        return Err(bad());
    }
    Ok(n as u32)
}

/// Plain decimal digits only (no sign, no spaces), fitting in a u64.
fn parse_u64(tok: &str) -> Option<u64> {
    if tok.is_empty() || !tok.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tok.parse().ok()
}

/// At most 32 characters of client input, for quoting it back in an error. Control characters
/// become U+FFFD: quoted verbatim, a CR would make the reply a line that clients cannot parse, and
/// an ESC could drive the terminal of whoever reads it.
pub fn quote(s: &str) -> String {
    s.chars()
        .take(32)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// Space-separated tokens of an argument string.
struct Tokens<'a>(&'a str);

impl<'a> Tokens<'a> {
    fn next(&mut self) -> Option<&'a str> {
        // Spaces are searched for as bytes (a space is never part of a longer UTF-8 sequence, so
        // the positions found are character boundaries): cheaper than a `char` pattern, and every
        // word of every command passes here.
        let start = self
            .0
            .bytes()
            .position(|b| b != b' ')
            .unwrap_or(self.0.len());
        let s = &self.0[start..];
        if s.is_empty() {
            self.0 = s;
            return None;
        }
        let end = s.bytes().position(|b| b == b' ').unwrap_or(s.len());
        self.0 = &s[end..];
        Some(&s[..end])
    }

    /// The rest of the line after the single space that follows the previous token; None when no
    /// token follows (only spaces count as no text: spec 2.6).
    /// The next token, which the arity check says is there.
    fn need(&mut self) -> Result<&'a str, Refusal> {
        // Unreachable after the table's arity check; kept as a refusal rather than a panic.
        self.next()
            .ok_or_else(|| Refusal(Code::MISSING_ARGUMENT, "an argument is missing".into()))
    }

    /// How many tokens are left, counting no further than `cap`.
    fn count_up_to(mut self, cap: usize) -> usize {
        std::iter::from_fn(|| self.next()).take(cap).count()
    }

    fn text(&mut self) -> Option<&'a str> {
        let t = self.0.strip_prefix(' ')?;
        if t.trim_start_matches(' ').is_empty() {
            return None;
        }
        self.0 = "";
        Some(t)
    }
}

/// A refused command: its code and a sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub Code, pub String);

/// The parts of a command line found before any state is consulted.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub label: Option<&'a str>,
    pub verb: Verb,
    /// The line after the command word, starting with the space that follows it (or empty).
    pub rest: &'a str,
}

/// A line refused before its command was known (the reply names the command `*`), or after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub label: Option<String>,
    /// The command, or `None` when it was not known (the reply names `*`).
    pub command: Option<Verb>,
    pub code: Code,
    pub text: String,
}

/// Finds the label and the command word. `Ok(None)` for a blank line, which gets no reply.
pub fn split_head(line: &str) -> Result<Option<Head<'_>>, Rejection> {
    let mut toks = Tokens(line);
    let Some(mut word) = toks.next() else {
        return Ok(None);
    };
    let mut label = None;
    if let Some(l) = word.strip_prefix('@') {
        check_label(l).map_err(|e| Rejection {
            label: None,
            command: None,
            code: Code::BAD_LABEL,
            text: e.into(),
        })?;
        label = Some(l);
        word = toks.next().ok_or_else(|| Rejection {
            label: Some(l.to_owned()),
            command: None,
            code: Code::UNKNOWN_COMMAND,
            text: "a label must be followed by a command".into(),
        })?;
    }
    match Verb::lookup(word) {
        Some(verb) => Ok(Some(Head {
            label,
            verb,
            rest: toks.0,
        })),
        None => Err(Rejection {
            label: label.map(str::to_owned),
            command: None,
            code: Code::UNKNOWN_COMMAND,
            text: format!(
                "unknown command \"{}\"; type HELP for the list",
                quote(word)
            ),
        }),
    }
}

/// Parses a whole line without regard to connection state. `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Request>, Rejection> {
    let Some(head) = split_head(line)? else {
        return Ok(None);
    };
    match head.verb.parse_args(head.rest) {
        Ok(command) => Ok(Some(Request {
            label: head.label.map(str::to_owned),
            command,
        })),
        Err(Refusal(code, text)) => Err(Rejection {
            label: head.label.map(str::to_owned),
            command: Some(head.verb),
            code,
            text,
        }),
    }
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub label: Option<String>,
    pub command: Command,
}

/// Where a HISTORY page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Latest,
    Before(u64),
    After(u64),
}

/// Whose conversation HISTORY reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryTarget {
    User(Name),
    /// A room the caller is a member of.
    Room(RoomName),
    /// `*`: the ALL broadcasts.
    Broadcast,
}

/// What TOPIC with a text does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicChange {
    /// Sets the topic to this text.
    Set(String),
    /// `-`: removes the topic.
    Clear,
}

/// A ROOM subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomSub {
    Info,
    Private,
    Public,
    Delete,
}

impl RoomSub {
    /// The subcommand as sent, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomSub::Info => "INFO",
            RoomSub::Private => "PRIVATE",
            RoomSub::Public => "PUBLIC",
            RoomSub::Delete => "DELETE",
        }
    }
}

/// A FRIEND subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FriendOp {
    Add(Name),
    Accept(Name),
    Deny(Name),
    Remove(Name),
    List,
}

/// What REVOKE revokes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoke {
    /// The token with this id.
    One(u64),
    /// Every token of the account.
    All,
}

/// Whose direct messages an account takes (`DMS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dms {
    /// From friends only.
    Friends,
    /// From anyone who is not blocked.
    Everyone,
}

impl Dms {
    /// The keyword as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Dms::Friends => "FRIENDS",
            Dms::Everyone => "EVERYONE",
        }
    }
}

/// A DIRECT subcommand (spec 4.39).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectOp {
    /// Offer `to` a direct session with the client listening at `address` and showing the
    /// certificate of `fingerprint`.
    Offer {
        to: Name,
        address: PeerAddress,
        fingerprint: Fingerprint,
    },
    /// Accept `from`'s offer; the caller's client will show the certificate of `fingerprint`.
    Accept {
        from: Name,
        fingerprint: Fingerprint,
    },
    /// Decline `from`'s offer.
    Decline { from: Name },
    /// Withdraw the caller's offer to `to`.
    Cancel { to: Name },
}

/// A command with valid arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Register {
        name: Name,
        password: Password,
    },
    /// The name is not checked: a malformed one is simply not a registered one.
    Login {
        name: String,
        password: Password,
    },
    Logout,
    Quit {
        reason: Option<String>,
    },
    Help {
        topic: Option<String>,
    },
    Ping {
        token: Option<String>,
    },
    Msg {
        to: Target,
        text: String,
    },
    Group {
        to: Vec<Name>,
        text: String,
    },
    All {
        text: String,
    },
    Users,
    History {
        with: HistoryTarget,
        count: Option<u32>,
        cursor: Page,
    },
    Friend(FriendOp),
    Token {
        /// What the user calls the device, if anything.
        label: Option<String>,
    },
    /// The token is not checked: a malformed one is simply not a valid one.
    Resume {
        token: DeviceToken,
    },
    Tokens,
    Revoke(Revoke),
    /// The old password is not checked: a malformed one is simply a wrong one.
    Password {
        old: Password,
        new: Password,
    },
    /// Not checked either.
    Unregister {
        password: Password,
    },
    Block {
        name: Name,
    },
    Unblock {
        name: Name,
    },
    Blocks,
    /// `None` asks for the current setting.
    Dms(Option<Dms>),
    /// `None` clears the away message.
    Away {
        text: Option<String>,
    },
    Whois {
        name: Name,
    },
    Join {
        room: RoomName,
    },
    Part {
        room: RoomName,
        reason: Option<String>,
    },
    Rooms,
    Members {
        room: RoomName,
    },
    /// `None`: show the topic.
    Topic {
        room: RoomName,
        change: Option<TopicChange>,
    },
    Invite {
        room: RoomName,
        name: Name,
    },
    Kick {
        room: RoomName,
        name: Name,
        reason: Option<String>,
    },
    Ban {
        room: RoomName,
        name: Name,
        reason: Option<String>,
    },
    Unban {
        room: RoomName,
        name: Name,
    },
    Role {
        room: RoomName,
        name: Name,
        role: Role,
    },
    Room {
        sub: RoomSub,
        room: RoomName,
    },
    /// `None`: show the marker.
    Read {
        target: Target,
        id: Option<u64>,
    },
    /// `COMPRESS DEFLATE`, the only mechanism.
    Compress,
    Direct(DirectOp),
    /// A server notice to every connection (an admin's).
    Announce {
        text: String,
    },
    /// Lock an account until UNSUSPEND (an admin's).
    Suspend {
        name: Name,
        reason: Option<String>,
    },
    /// Lift a suspension (an admin's).
    Unsuspend {
        name: Name,
    },
    /// Close every connection of an account (an admin's).
    Kill {
        name: Name,
        reason: Option<String>,
    },
    /// The server's figures (an admin's).
    Stats,
    /// Create an account, also while registration is closed (an admin's).
    Adduser {
        name: Name,
        password: Password,
    },
}

impl Command {
    /// The command word.
    pub fn verb(&self) -> Verb {
        match self {
            Command::Register { .. } => Verb::Register,
            Command::Login { .. } => Verb::Login,
            Command::Logout => Verb::Logout,
            Command::Quit { .. } => Verb::Quit,
            Command::Help { .. } => Verb::Help,
            Command::Ping { .. } => Verb::Ping,
            Command::Msg { .. } => Verb::Msg,
            Command::Group { .. } => Verb::Group,
            Command::All { .. } => Verb::All,
            Command::Users => Verb::Users,
            Command::History { .. } => Verb::History,
            Command::Friend(_) => Verb::Friend,
            Command::Token { .. } => Verb::Token,
            Command::Resume { .. } => Verb::Resume,
            Command::Tokens => Verb::Tokens,
            Command::Revoke(_) => Verb::Revoke,
            Command::Password { .. } => Verb::Password,
            Command::Unregister { .. } => Verb::Unregister,
            Command::Block { .. } => Verb::Block,
            Command::Unblock { .. } => Verb::Unblock,
            Command::Blocks => Verb::Blocks,
            Command::Dms(_) => Verb::Dms,
            Command::Away { .. } => Verb::Away,
            Command::Whois { .. } => Verb::Whois,
            Command::Join { .. } => Verb::Join,
            Command::Part { .. } => Verb::Part,
            Command::Rooms => Verb::Rooms,
            Command::Members { .. } => Verb::Members,
            Command::Topic { .. } => Verb::Topic,
            Command::Invite { .. } => Verb::Invite,
            Command::Kick { .. } => Verb::Kick,
            Command::Ban { .. } => Verb::Ban,
            Command::Unban { .. } => Verb::Unban,
            Command::Role { .. } => Verb::Role,
            Command::Room { .. } => Verb::Room,
            Command::Read { .. } => Verb::Read,
            Command::Compress => Verb::Compress,
            Command::Direct(_) => Verb::Direct,
            Command::Announce { .. } => Verb::Announce,
            Command::Suspend { .. } => Verb::Suspend,
            Command::Unsuspend { .. } => Verb::Unsuspend,
            Command::Kill { .. } => Verb::Kill,
            Command::Stats => Verb::Stats,
            Command::Adduser { .. } => Verb::Adduser,
        }
    }
}

impl Request {
    /// The command line (without its LF) that parses back to this request.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if let Some(l) = &self.label {
            s.push('@');
            s.push_str(l);
            s.push(' ');
        }
        s.push_str(self.command.verb().name());
        let mut arg = |a: &str| {
            s.push(' ');
            s.push_str(a);
        };
        match &self.command {
            Command::Register { name, password } | Command::Adduser { name, password } => {
                arg(name.as_str());
                arg(password.expose());
            }
            Command::Announce { text } => arg(text),
            Command::Suspend { name, reason } | Command::Kill { name, reason } => {
                arg(name.as_str());
                if let Some(r) = reason {
                    arg(r);
                }
            }
            Command::Unsuspend { name } => arg(name.as_str()),
            Command::Login { name, password } => {
                arg(name);
                arg(password.expose());
            }
            Command::Password { old, new } => {
                arg(old.expose());
                arg(new.expose());
            }
            Command::Unregister { password } => arg(password.expose()),
            Command::Logout
            | Command::Users
            | Command::Tokens
            | Command::Blocks
            | Command::Rooms
            | Command::Stats => {}
            Command::Block { name } | Command::Unblock { name } | Command::Whois { name } => {
                arg(name.as_str())
            }
            Command::Dms(policy) => {
                if let Some(p) = policy {
                    arg(p.as_str());
                }
            }
            Command::Quit { reason }
            | Command::Help { topic: reason }
            | Command::Ping { token: reason }
            | Command::Token { label: reason }
            | Command::Away { text: reason } => {
                if let Some(r) = reason {
                    arg(r);
                }
            }
            Command::Msg { to, text } => {
                arg(to.as_str());
                arg(text);
            }
            Command::Group { to, text } => {
                let list: Vec<&str> = to.iter().map(Name::as_str).collect();
                arg(&list.join(","));
                arg(text);
            }
            Command::All { text } => arg(text),
            Command::History {
                with,
                count,
                cursor,
            } => {
                match with {
                    HistoryTarget::User(n) => arg(n.as_str()),
                    HistoryTarget::Room(r) => arg(r.as_str()),
                    HistoryTarget::Broadcast => arg("*"),
                }
                if let Some(c) = count {
                    arg(&c.to_string());
                }
                match cursor {
                    Page::Latest => {}
                    Page::Before(id) => arg(&format!("BEFORE {id}")),
                    Page::After(id) => arg(&format!("AFTER {id}")),
                }
            }
            Command::Friend(op) => match op {
                FriendOp::List => arg("LIST"),
                FriendOp::Add(n) => arg(&format!("ADD {n}")),
                FriendOp::Accept(n) => arg(&format!("ACCEPT {n}")),
                FriendOp::Deny(n) => arg(&format!("DENY {n}")),
                FriendOp::Remove(n) => arg(&format!("REMOVE {n}")),
            },
            Command::Resume { token } => arg(token.expose()),
            Command::Revoke(Revoke::All) => arg("ALL"),
            Command::Revoke(Revoke::One(id)) => arg(&super::token::format_id(*id)),
            Command::Join { room } | Command::Members { room } => arg(room.as_str()),
            Command::Part { room, reason } => {
                arg(room.as_str());
                if let Some(r) = reason {
                    arg(r);
                }
            }
            Command::Topic { room, change } => {
                arg(room.as_str());
                match change {
                    None => {}
                    Some(TopicChange::Clear) => arg(CLEAR_TOPIC),
                    Some(TopicChange::Set(t)) => arg(t),
                }
            }
            Command::Invite { room, name } | Command::Unban { room, name } => {
                arg(room.as_str());
                arg(name.as_str());
            }
            Command::Kick { room, name, reason } | Command::Ban { room, name, reason } => {
                arg(room.as_str());
                arg(name.as_str());
                if let Some(r) = reason {
                    arg(r);
                }
            }
            Command::Role { room, name, role } => {
                arg(room.as_str());
                arg(name.as_str());
                arg(role.as_str());
            }
            Command::Room { sub, room } => {
                arg(sub.as_str());
                arg(room.as_str());
            }
            Command::Read { target, id } => {
                arg(target.as_str());
                if let Some(id) = id {
                    arg(&id.to_string());
                }
            }
            Command::Compress => arg(super::deflate::MECHANISM),
            Command::Direct(op) => match op {
                DirectOp::Offer {
                    to,
                    address,
                    fingerprint,
                } => arg(&format!("OFFER {to} {address} {fingerprint}")),
                DirectOp::Accept { from, fingerprint } => {
                    arg(&format!("ACCEPT {from} {fingerprint}"))
                }
                DirectOp::Decline { from } => arg(&format!("DECLINE {from}")),
                DirectOp::Cancel { to } => arg(&format!("CANCEL {to}")),
            },
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> Code {
        parse(line).unwrap_err().code
    }

    #[test]
    fn every_verb_has_one_row_found_by_its_name() {
        for (i, s) in COMMANDS.iter().enumerate() {
            assert_eq!(COMMANDS.iter().filter(|r| r.verb == s.verb).count(), 1);
            assert_eq!(Verb::lookup(&s.name.to_lowercase()), Some(s.verb));
            assert_eq!(Verb::canonical(s.name), Some(s.verb));
            assert_eq!(Verb::canonical(&s.name.to_lowercase()), None);
            assert!(s.usage.starts_with(s.name), "{}", s.usage);
            assert_eq!(s.verb as usize, i, "the table follows the spec's order");
        }
    }

    #[test]
    fn blank_lines_are_nothing() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("    "), Ok(None));
    }

    #[test]
    fn text_keeps_spaces_after_the_one_separator() {
        let r = parse("msg Bob  hi  there ").unwrap().unwrap();
        assert_eq!(
            r.command,
            Command::Msg {
                to: Target::User(Name::parse("Bob").unwrap()),
                text: " hi  there ".into()
            }
        );
        let r = parse("  @a.1   ALL x").unwrap().unwrap();
        assert_eq!(r.label.as_deref(), Some("a.1"));
        assert_eq!(r.command, Command::All { text: "x".into() });
    }

    #[test]
    fn each_refusal_has_its_code() {
        assert_eq!(code("@ MSG a b"), Code::BAD_LABEL);
        assert_eq!(code("@x"), Code::UNKNOWN_COMMAND);
        assert_eq!(code("DANCE"), Code::UNKNOWN_COMMAND);
        assert_eq!(code("MSG bob"), Code::MISSING_ARGUMENT);
        assert_eq!(code("MSG 1bob"), Code::MISSING_ARGUMENT);
        assert_eq!(code("MSG 1bob hi"), Code::BAD_NAME);
        assert_eq!(code("MSG bob  "), Code::MISSING_ARGUMENT);
        assert_eq!(code("MSG bob \t"), Code::BAD_TEXT);
        assert_eq!(code("HISTORY bob AFTER 1 more"), Code::BAD_ARGUMENT);
        assert_eq!(code("HISTORY bob 10 20"), Code::BAD_ARGUMENT);
        assert_eq!(code("MSG bob \x07"), Code::BAD_TEXT);
        assert_eq!(
            code(&format!("MSG bob {}", "x".repeat(2049))),
            Code::TEXT_TOO_LONG
        );
        assert_eq!(code("REGISTER a"), Code::MISSING_ARGUMENT);
        assert_eq!(code("REGISTER a b c"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("REGISTER 9a password1"), Code::BAD_NAME);
        assert_eq!(code("REGISTER a short"), Code::BAD_PASSWORD);
        assert_eq!(code("LOGOUT now"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(
            code(&format!("PING {}", "t".repeat(65))),
            Code::BAD_ARGUMENT
        );
        assert_eq!(code("GROUP a,,b hi"), Code::BAD_NAME);
        assert_eq!(code("GROUP a,B,b hi"), Code::DUPLICATE_NAME);
        assert_eq!(code("GROUP b,b,9bad hi"), Code::BAD_NAME);
        let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
        assert_eq!(
            code(&format!("GROUP {} hi", many.join(","))),
            Code::TOO_MANY_RECIPIENTS
        );
        assert_eq!(code("HISTORY"), Code::MISSING_ARGUMENT);
        assert_eq!(code("HISTORY bob 0"), Code::BAD_COUNT);
        assert_eq!(code("HISTORY bob -3"), Code::BAD_COUNT);
        assert_eq!(code("HISTORY bob ten"), Code::BAD_COUNT);
        assert_eq!(code("HISTORY bob 501"), Code::BAD_COUNT);
        assert_eq!(code("HISTORY bob 5 SINCE 3"), Code::BAD_ARGUMENT);
        assert_eq!(code("HISTORY bob BEFORE"), Code::BAD_ARGUMENT);
        assert_eq!(code("HISTORY bob BEFORE x1"), Code::BAD_ID);
        assert_eq!(
            code("HISTORY bob BEFORE 99999999999999999999"),
            Code::BAD_ID
        );
        assert_eq!(code("HISTORY bob 5 AFTER 1 more"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("FRIEND"), Code::MISSING_ARGUMENT);
        assert_eq!(code("FRIEND HUG bob"), Code::UNKNOWN_SUBCOMMAND);
        assert_eq!(code("FRIEND ADD"), Code::MISSING_ARGUMENT);
        assert_eq!(code("FRIEND LIST x"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("FRIEND add 1x"), Code::BAD_NAME);
        assert_eq!(code("MSG #bad.room hi"), Code::BAD_ROOM_NAME);
        assert_eq!(code("MSG # hi"), Code::BAD_ROOM_NAME);
        assert_eq!(code("JOIN"), Code::MISSING_ARGUMENT);
        assert_eq!(code("JOIN rust"), Code::BAD_ROOM_NAME);
        assert_eq!(code("JOIN #a #b"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(
            code(&format!("JOIN #{}", "r".repeat(33))),
            Code::BAD_ROOM_NAME
        );
        assert_eq!(code("PART"), Code::MISSING_ARGUMENT);
        assert_eq!(code("PART #r \u{7}"), Code::BAD_TEXT);
        assert_eq!(
            code(&format!("PART #r {}", "x".repeat(301))),
            Code::TEXT_TOO_LONG
        );
        assert_eq!(code("ROOMS x"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("MEMBERS"), Code::MISSING_ARGUMENT);
        assert_eq!(code("TOPIC r"), Code::BAD_ROOM_NAME);
        assert_eq!(
            code(&format!("TOPIC #r {}", "é".repeat(151))),
            Code::TEXT_TOO_LONG
        );
        assert_eq!(code("TOPIC #r \t"), Code::BAD_TEXT);
        assert_eq!(code("INVITE #r"), Code::MISSING_ARGUMENT);
        assert_eq!(code("INVITE #r bob x"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("INVITE #r 1bob"), Code::BAD_NAME);
        assert_eq!(code("INVITE r 1bob"), Code::BAD_ROOM_NAME);
        assert_eq!(code("KICK #r"), Code::MISSING_ARGUMENT);
        assert_eq!(code("KICK #r bob \u{1b}"), Code::BAD_TEXT);
        assert_eq!(code("BAN #r *"), Code::BAD_NAME);
        assert_eq!(code("UNBAN #r bob x"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("ROLE #r bob"), Code::MISSING_ARGUMENT);
        assert_eq!(code("ROLE #r bob ADMIN"), Code::BAD_ARGUMENT);
        assert_eq!(code("ROLE #r bob OP x"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("ROOM"), Code::MISSING_ARGUMENT);
        assert_eq!(code("ROOM SHOW #r"), Code::UNKNOWN_SUBCOMMAND);
        assert_eq!(code("ROOM INFO"), Code::MISSING_ARGUMENT);
        assert_eq!(code("ROOM INFO #r #s"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("ROOM delete r"), Code::BAD_ROOM_NAME);
        assert_eq!(code("READ"), Code::MISSING_ARGUMENT);
        assert_eq!(code("READ #r x"), Code::BAD_ID);
        assert_eq!(code("READ 9 1"), Code::BAD_NAME);
        assert_eq!(code("READ #r 1 2"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("HISTORY #r.x"), Code::BAD_ROOM_NAME);
        assert_eq!(code("TOKEN a\u{7}"), Code::BAD_TEXT);
        assert_eq!(
            code(&format!("TOKEN {}", "x".repeat(MAX_TOKEN_LABEL_BYTES + 1))),
            Code::TEXT_TOO_LONG
        );
        assert_eq!(code("RESUME"), Code::MISSING_ARGUMENT);
        assert_eq!(code("RESUME a b"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("TOKENS x"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("REVOKE"), Code::MISSING_ARGUMENT);
        assert_eq!(code("REVOKE 12"), Code::BAD_ARGUMENT);
        assert_eq!(code("REVOKE everything"), Code::BAD_ARGUMENT);
        assert_eq!(code("PASSWORD old"), Code::MISSING_ARGUMENT);
        assert_eq!(code("PASSWORD a b c"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("PASSWORD anything short"), Code::BAD_PASSWORD);
        assert_eq!(code("UNREGISTER"), Code::MISSING_ARGUMENT);
        assert_eq!(code("UNREGISTER a b"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("BLOCK"), Code::MISSING_ARGUMENT);
        assert_eq!(code("BLOCK 9x"), Code::BAD_NAME);
        assert_eq!(code("UNBLOCK a b"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("BLOCKS all"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("DMS nobody"), Code::BAD_ARGUMENT);
        assert_eq!(code("DMS FRIENDS EVERYONE"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(
            code(&format!("AWAY {}", "x".repeat(MAX_AWAY_BYTES + 1))),
            Code::TEXT_TOO_LONG
        );
        assert_eq!(code("AWAY out\u{1b}"), Code::BAD_TEXT);
        assert_eq!(code("WHOIS"), Code::MISSING_ARGUMENT);
        assert_eq!(code("WHOIS a b"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("WHOIS *"), Code::BAD_NAME);
        assert_eq!(code("ANNOUNCE"), Code::MISSING_ARGUMENT);
        assert_eq!(code("ANNOUNCE \u{202e}x"), Code::BAD_TEXT);
        assert_eq!(code("SUSPEND"), Code::MISSING_ARGUMENT);
        assert_eq!(code("SUSPEND 9x spam"), Code::BAD_NAME);
        assert_eq!(
            code(&format!("SUSPEND x {}", "r".repeat(MAX_REASON_BYTES + 1))),
            Code::TEXT_TOO_LONG
        );
        assert_eq!(code("KILL x bad\u{7}"), Code::BAD_TEXT);
        assert_eq!(code("UNSUSPEND a b"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("STATS now"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("ADDUSER a"), Code::MISSING_ARGUMENT);
        assert_eq!(code("ADDUSER a short"), Code::BAD_PASSWORD);
    }

    #[test]
    fn token_commands() {
        let c = |l: &str| parse(l).unwrap().unwrap().command;
        assert_eq!(c("TOKEN"), Command::Token { label: None });
        assert_eq!(c("TOKEN   "), Command::Token { label: None });
        assert_eq!(
            c("token my  phone"),
            Command::Token {
                label: Some("my  phone".into())
            }
        );
        let max = "é".repeat(MAX_TOKEN_LABEL_BYTES / 2);
        assert_eq!(
            c(&format!("TOKEN {max}")),
            Command::Token { label: Some(max) }
        );
        assert_eq!(c("revoke all"), Command::Revoke(Revoke::All));
        assert_eq!(
            c("REVOKE 00000000000000fF"),
            Command::Revoke(Revoke::One(255))
        );
        // RESUME takes any token: a malformed one is an invalid one, refused by the server.
        assert_eq!(
            c("RESUME nonsense"),
            Command::Resume {
                token: DeviceToken::unchecked("nonsense")
            }
        );
    }

    #[test]
    fn room_command_forms() {
        let cmd = |l: &str| parse(l).unwrap().unwrap().command;
        let room = |s: &str| RoomName::parse(s).unwrap();
        let name = |s: &str| Name::parse(s).unwrap();
        assert_eq!(
            cmd("msg #Rust  hi"),
            Command::Msg {
                to: Target::Room(room("#Rust")),
                text: " hi".into()
            }
        );
        assert_eq!(
            cmd("topic #r"),
            Command::Topic {
                room: room("#r"),
                change: None
            }
        );
        assert_eq!(
            cmd("TOPIC #r -"),
            Command::Topic {
                room: room("#r"),
                change: Some(TopicChange::Clear)
            }
        );
        assert_eq!(
            cmd("TOPIC #r  - "),
            Command::Topic {
                room: room("#r"),
                change: Some(TopicChange::Set(" - ".into()))
            }
        );
        assert_eq!(
            cmd("part #r  gone  fishing"),
            Command::Part {
                room: room("#r"),
                reason: Some(" gone  fishing".into())
            }
        );
        assert_eq!(
            cmd("role #r Bob op"),
            Command::Role {
                room: room("#r"),
                name: name("Bob"),
                role: Role::Op
            }
        );
        assert_eq!(
            cmd("room Private #r"),
            Command::Room {
                sub: RoomSub::Private,
                room: room("#r")
            }
        );
        assert_eq!(
            cmd("READ bob 7"),
            Command::Read {
                target: Target::User(name("bob")),
                id: Some(7)
            }
        );
        assert_eq!(
            cmd("history #r 5"),
            Command::History {
                with: HistoryTarget::Room(room("#r")),
                count: Some(5),
                cursor: Page::Latest
            }
        );
    }

    #[test]
    fn quoted_input_has_no_control_characters() {
        let r = parse("DA\rNCE\u{1b}[2J\u{0}").unwrap_err();
        assert_eq!(
            r.text,
            "unknown command \"DA\u{FFFD}NCE\u{FFFD}[2J\u{FFFD}\"; type HELP for the list"
        );
        let r = parse("FRIEND H\tUG bob").unwrap_err();
        assert!(r
            .text
            .starts_with("unknown FRIEND subcommand \"H\u{FFFD}UG\""));
        let long = "é".repeat(40);
        assert_eq!(quote(&long), "é".repeat(32));
    }

    #[test]
    fn history_forms() {
        let h = |l: &str| match parse(l).unwrap().unwrap().command {
            Command::History {
                with,
                count,
                cursor,
            } => (with, count, cursor),
            c => panic!("{c:?}"),
        };
        assert_eq!(
            h("HISTORY *"),
            (HistoryTarget::Broadcast, None, Page::Latest)
        );
        assert_eq!(h("history bob 5").1, Some(5));
        assert_eq!(h("history bob before 9").2, Page::Before(9));
        assert_eq!(h("history bob 500 AFTER 0").2, Page::After(0));
    }

    #[test]
    fn encode_then_parse_is_identity() {
        let lines = [
            "REGISTER Alice password1",
            "@l LOGIN whatever x",
            "LOGOUT",
            "QUIT",
            "QUIT ",
            "QUIT  gone  fishing",
            "HELP",
            "HELP msg",
            "PING",
            "PING tok",
            "MSG bob  two spaces",
            "GROUP a,b,C hello",
            "ALL \thi",
            "USERS",
            "HISTORY * 3 BEFORE 10",
            "HISTORY bob AFTER 0",
            "FRIEND LIST",
            "FRIEND REMOVE x",
            "MSG #Room  two spaces",
            "JOIN #r",
            "PART #r",
            "PART #r  see you",
            "ROOMS",
            "MEMBERS #r-1",
            "TOPIC #r",
            "TOPIC #r -",
            "TOPIC #r new topic",
            "INVITE #r bob",
            "KICK #r bob",
            "KICK #r bob spam",
            "BAN #r bob  flood",
            "UNBAN #r bob",
            "ROLE #r bob owner",
            "ROOM delete #r",
            "READ #r",
            "READ bob 0",
            "HISTORY #r 3 AFTER 2",
            "TOKEN",
            "TOKEN  laptop at work ",
            "RESUME ct1.0000000000000001.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "TOKENS",
            "REVOKE ALL",
            "REVOKE 00000000000000ff",
            "PASSWORD x new-password",
            "UNREGISTER anything",
            "BLOCK Bob",
            "UNBLOCK bob",
            "BLOCKS",
            "DMS",
            "DMS FRIENDS",
            "DMS EVERYONE",
            "AWAY",
            "AWAY  gone  fishing ",
            "WHOIS Bob",
            "@z COMPRESS DEFLATE",
            "DIRECT OFFER bob [::1]:4000 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89",
            "DIRECT ACCEPT Alice 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
            "DIRECT DECLINE x",
            "DIRECT CANCEL y",
            "ANNOUNCE  maintenance at 5 ",
            "SUSPEND mallory",
            "SUSPEND mallory spam,  again",
            "UNSUSPEND mallory",
            "KILL mallory",
            "KILL mallory stuck client",
            "STATS",
            "ADDUSER Dave password1",
        ];
        for l in lines {
            let r = parse(l).unwrap().unwrap();
            assert_eq!(parse(&r.encode()).unwrap().unwrap(), r, "{l}");
        }
    }

    #[test]
    fn compress_and_direct_refusals() {
        assert_eq!(code("COMPRESS"), Code::MISSING_ARGUMENT);
        assert_eq!(code("COMPRESS DEFLATE now"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("COMPRESS GZIP"), Code::BAD_ARGUMENT);
        assert_eq!(
            parse("compress deflate").unwrap().unwrap().command,
            Command::Compress
        );
        let fp = ["AB"; 32].join(":");
        assert_eq!(code("DIRECT"), Code::MISSING_ARGUMENT);
        assert_eq!(code("DIRECT POKE bob"), Code::UNKNOWN_SUBCOMMAND);
        assert_eq!(code("DIRECT OFFER bob 1.2.3.4:5"), Code::MISSING_ARGUMENT);
        assert_eq!(
            code(&format!("DIRECT OFFER bob 1.2.3.4:5 {fp} x")),
            Code::TOO_MANY_ARGUMENTS
        );
        assert_eq!(code("DIRECT OFFER 9b 1.2.3.4:0 x"), Code::BAD_NAME);
        assert_eq!(
            code(&format!("DIRECT OFFER bob 1.2.3.4:0 {fp}")),
            Code::BAD_ADDRESS
        );
        assert_eq!(
            code("DIRECT OFFER bob 1.2.3.4:9 AB:CD"),
            Code::BAD_FINGERPRINT
        );
        assert_eq!(code("DIRECT ACCEPT bob AB:CD"), Code::BAD_FINGERPRINT);
        assert_eq!(code("DIRECT DECLINE bob now"), Code::TOO_MANY_ARGUMENTS);
        assert_eq!(code("DIRECT CANCEL"), Code::MISSING_ARGUMENT);
    }
}
