//! `command_parse` and `roundtrip`: the command parser on arbitrary text, and the encoder on every
//! request that can be built from valid parts.

use arbitrary::{Error, Result, Unstructured};

use crate::config::{
    HISTORY_MAX_COUNT, MAX_AWAY_BYTES, MAX_GROUP_RECIPIENTS, MAX_LABEL_LEN, MAX_LINE_BYTES,
    MAX_NAME_LEN, MAX_PASSWORD_BYTES, MAX_PING_TOKEN_BYTES, MAX_REASON_BYTES, MAX_ROOM_NAME_LEN,
    MAX_TEXT_BYTES, MAX_TOKEN_LABEL_BYTES, MAX_TOPIC_BYTES,
};
use crate::proto::command::{
    parse, Command, DirectOp, Dms, FriendOp, HistoryTarget, Page, Request, Revoke, RoomSub,
    TopicChange, Verb, CLEAR_TOPIC, COMMANDS,
};
use crate::proto::direct::{Fingerprint, PeerAddress};
use crate::proto::line::{Frame, LineDecoder};
use crate::proto::name::{check_label, check_text, check_text_within, Name, Password};
use crate::proto::room::{check_reason, check_topic, Role, RoomName, Target};
use crate::proto::server_line::{self, ServerLine};
use crate::proto::token::DeviceToken;

/// Any input as a command line: the parser never panics; a parsed request encodes to a line, no
/// longer than the limit when the input was within it, that parses back to the same request; a
/// refused line names a valid label and a real command, and its FAIL reply parses back as that FAIL.
pub fn check_command_parse(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    match parse(&line) {
        Ok(None) => assert!(
            line.bytes().all(|b| b == b' '),
            "only a blank line is nothing: {line:?}"
        ),
        Ok(Some(request)) => {
            let encoded = request.encode();
            assert_eq!(
                parse(&encoded),
                Ok(Some(request.clone())),
                "{line:?} encoded as {encoded:?}"
            );
            if line.len() <= MAX_LINE_BYTES {
                assert!(
                    encoded.len() <= MAX_LINE_BYTES,
                    "{} bytes encoded as {} bytes",
                    line.len(),
                    encoded.len()
                );
            }
            if !line.contains('\n') {
                assert!(!encoded.contains('\n'), "an LF appeared in {encoded:?}");
            }
        }
        Err(rejection) => {
            if let Some(l) = &rejection.label {
                assert!(check_label(l).is_ok(), "bad label echoed: {l:?}");
            }
            // What the server sends for it. A line the server reads holds no LF.
            if !line.contains('\n') {
                let fail = ServerLine::Fail {
                    label: rejection.label.as_deref(),
                    command: rejection.command,
                    code: rejection.code,
                    retry_after: None,
                    text: &rejection.text,
                };
                let out = fail.to_string();
                assert_eq!(
                    server_line::parse(&out),
                    fail,
                    "the refusal of {line:?} does not parse back"
                );
            }
        }
    }
}

/// A request built from valid parts encodes to one line within the limit, which parses back to
/// the same request, also after the line framing.
pub fn check_roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(request) = arbitrary_request(&mut u) else {
        return;
    };
    let encoded = request.encode();
    assert!(
        encoded.len() <= MAX_LINE_BYTES,
        "{request:?} encodes to {} bytes",
        encoded.len()
    );
    assert_eq!(
        parse(&encoded),
        Ok(Some(request.clone())),
        "{request:?} encoded as {encoded:?}"
    );
    let mut wire = encoded.clone().into_bytes();
    wire.push(b'\n');
    let mut frames = Vec::new();
    LineDecoder::new(MAX_LINE_BYTES).feed(&wire, |f| {
        frames.push(match f {
            Frame::Line(l) => Some(l.to_vec()),
            Frame::TooLong => None,
        })
    });
    assert_eq!(
        frames,
        vec![Some(encoded.into_bytes())],
        "{request:?} is not one line on the wire"
    );
}

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const NAME_TAIL: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
/// Characters free-form fields are made of: spaces, a TAB, protocol punctuation, multi-byte UTF-8.
const TEXT_CHARS: &[char] = &[
    'a', 'b', 'Z', '0', '9', ' ', ' ', '\t', ',', '@', '*', '-', '_', '.', ':', '"', 'é', 'ß', '€',
    '😀', '\u{a0}', '\u{7f}', '\u{1b}',
];

/// A string of `min..=max` characters from `pool`, or, now and then, of any characters.
fn string_from(u: &mut Unstructured<'_>, pool: &[char], min: usize, max: usize) -> Result<String> {
    let len = u.int_in_range(min..=max)?;
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        let c = if u.ratio(1u8, 16u8)? {
            u.arbitrary::<char>()?
        } else {
            *u.choose(pool)?
        };
        s.push(c);
    }
    Ok(s)
}

/// A name, through [`Name::parse`].
fn name(u: &mut Unstructured<'_>) -> Result<Name> {
    let len = u.int_in_range(1..=MAX_NAME_LEN)?;
    let mut s = String::with_capacity(len);
    s.push(char::from(*u.choose(LETTERS)?));
    for _ in 1..len {
        s.push(char::from(*u.choose(NAME_TAIL)?));
    }
    Name::parse(&s).map_err(|_| Error::IncorrectFormat)
}

/// A room name, through [`RoomName::parse`].
fn room(u: &mut Unstructured<'_>) -> Result<RoomName> {
    let len = u.int_in_range(1..=MAX_ROOM_NAME_LEN)?;
    let mut s = String::from("#");
    for _ in 0..len {
        s.push(char::from(*u.choose(NAME_TAIL)?));
    }
    RoomName::parse(&s).map_err(|_| Error::IncorrectFormat)
}

/// A user or a room.
fn target(u: &mut Unstructured<'_>) -> Result<Target> {
    Ok(if u.arbitrary()? {
        Target::Room(room(u)?)
    } else {
        Target::User(name(u)?)
    })
}

/// A short text (topic, reason) through its check, or nothing.
fn short_text(
    u: &mut Unstructured<'_>,
    max: usize,
    check: fn(&str) -> std::result::Result<(), crate::proto::name::TextError>,
) -> Result<String> {
    let mut s = string_from(u, TEXT_CHARS, 1, 24)?;
    if u.ratio(1u8, 16u8)? {
        while s.len() < max {
            s.push('y');
        }
    }
    check(&s).map_err(|_| Error::IncorrectFormat)?;
    Ok(s)
}

fn reason(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    Ok(if u.arbitrary()? {
        Some(short_text(u, MAX_REASON_BYTES, check_reason)?)
    } else {
        None
    })
}

/// A message text, through [`check_text`].
fn text(u: &mut Unstructured<'_>) -> Result<String> {
    // Mostly short, sometimes right up to the limit.
    let max = if u.ratio(1u8, 8u8)? {
        MAX_TEXT_BYTES / 4
    } else {
        24
    };
    let mut s = string_from(u, TEXT_CHARS, 1, max)?;
    if u.ratio(1u8, 16u8)? {
        // Pad to exactly the limit in bytes, to test the boundary.
        while s.len() < MAX_TEXT_BYTES {
            s.push('x');
        }
    }
    check_text(&s).map_err(|_| Error::IncorrectFormat)?;
    Ok(s)
}

/// A token as the parser splits them: one or more characters, no space; no LF or CR either,
/// since a line cannot carry them.
fn token(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let s = string_from(u, TEXT_CHARS, 1, max)?;
    if s.is_empty() || s.contains([' ', '\n', '\r']) {
        return Err(Error::IncorrectFormat);
    }
    Ok(s)
}

/// A free-form rest of line (QUIT's reason): anything but LF and CR, spaces kept.
fn rest_of_line(u: &mut Unstructured<'_>) -> Result<String> {
    let s = string_from(u, TEXT_CHARS, 0, 40)?;
    if s.contains(['\n', '\r']) {
        return Err(Error::IncorrectFormat);
    }
    Ok(s)
}

fn label(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    if !u.arbitrary::<bool>()? {
        return Ok(None);
    }
    let pool: Vec<char> = "abcXYZ019._-".chars().collect();
    let l = string_from(u, &pool, 1, MAX_LABEL_LEN)?;
    check_label(&l).map_err(|_| Error::IncorrectFormat)?;
    Ok(Some(l))
}

fn password(u: &mut Unstructured<'_>) -> Result<Password> {
    let max = if u.ratio(1u8, 8u8)? {
        MAX_PASSWORD_BYTES
    } else {
        20
    };
    let pool: Vec<char> = TEXT_CHARS
        .iter()
        .copied()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect();
    let s = string_from(u, &pool, 8, max)?;
    Password::parse(&s).map_err(|_| Error::IncorrectFormat)
}

/// Any id, with the edges more likely.
/// A valid DIRECT fingerprint: 32 arbitrary bytes in the wire form.
pub(super) fn fingerprint(u: &mut Unstructured<'_>) -> Result<Fingerprint> {
    let bytes: [u8; 32] = u.arbitrary()?;
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    Fingerprint::parse(&hex.join(":")).map_err(|_| Error::IncorrectFormat)
}

/// A valid DIRECT address: IPv4, IPv6 or a host name, and a port.
pub(super) fn peer_address(u: &mut Unstructured<'_>) -> Result<PeerAddress> {
    let port = u.int_in_range(1..=65535u32)?;
    let host = match u.int_in_range(0..=2u8)? {
        0 => std::net::Ipv4Addr::from(u.arbitrary::<u32>()?).to_string(),
        1 => format!("[{}]", std::net::Ipv6Addr::from(u.arbitrary::<u128>()?)),
        _ => u
            .choose(&["localhost", "laptop.example.org", "a-b.c"])?
            .to_string(),
    };
    PeerAddress::parse(&format!("{host}:{port}")).map_err(|_| Error::IncorrectFormat)
}

fn id(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 => 0,
        1 => u64::MAX,
        _ => u.arbitrary()?,
    })
}

/// A request built only from parts that passed the validating constructors ([`Name::parse`],
/// [`Password::parse`], [`check_text`], [`check_label`]) and, for the parts that have none, from
/// what the parser itself can produce (tokens without spaces, a PING token of at most 64 bytes, a
/// GROUP list of distinct names). Values outside that are refused with [`Error::IncorrectFormat`].
pub fn arbitrary_request(u: &mut Unstructured<'_>) -> Result<Request> {
    let label = label(u)?;
    let verb = u.choose(COMMANDS)?.verb;
    let command = match verb {
        Verb::Register => Command::Register {
            name: name(u)?,
            password: password(u)?,
        },
        Verb::Login => Command::Login {
            name: token(u, 40)?,
            password: Password::unchecked(&token(u, 40)?),
        },
        Verb::Logout => Command::Logout,
        Verb::Quit => Command::Quit {
            reason: if u.arbitrary()? {
                Some(rest_of_line(u)?)
            } else {
                None
            },
        },
        Verb::Help => Command::Help {
            topic: if u.arbitrary()? {
                Some(token(u, 20)?)
            } else {
                None
            },
        },
        Verb::Ping => Command::Ping {
            token: if u.arbitrary()? {
                let t = token(u, MAX_PING_TOKEN_BYTES)?;
                if t.len() > MAX_PING_TOKEN_BYTES {
                    return Err(Error::IncorrectFormat);
                }
                Some(t)
            } else {
                None
            },
        },
        Verb::Msg => Command::Msg {
            to: target(u)?,
            text: text(u)?,
        },
        Verb::Group => {
            let n = u.int_in_range(1..=MAX_GROUP_RECIPIENTS)?;
            let mut to: Vec<Name> = Vec::with_capacity(n);
            for _ in 0..n {
                let candidate = name(u)?;
                if !to.iter().any(|m| m.key() == candidate.key()) {
                    to.push(candidate);
                }
            }
            Command::Group { to, text: text(u)? }
        }
        Verb::All => Command::All { text: text(u)? },
        Verb::Users => Command::Users,
        Verb::History => Command::History {
            with: match u.int_in_range(0..=2u8)? {
                0 => HistoryTarget::Broadcast,
                1 => HistoryTarget::Room(room(u)?),
                _ => HistoryTarget::User(name(u)?),
            },
            count: if u.arbitrary()? {
                Some(u.int_in_range(1..=HISTORY_MAX_COUNT)?)
            } else {
                None
            },
            cursor: match u.int_in_range(0..=2u8)? {
                0 => Page::Latest,
                1 => Page::Before(id(u)?),
                _ => Page::After(id(u)?),
            },
        },
        Verb::Friend => Command::Friend(match u.int_in_range(0..=4u8)? {
            0 => FriendOp::List,
            1 => FriendOp::Add(name(u)?),
            2 => FriendOp::Accept(name(u)?),
            3 => FriendOp::Deny(name(u)?),
            _ => FriendOp::Remove(name(u)?),
        }),
        Verb::Compress => Command::Compress,
        Verb::Direct => Command::Direct(match u.int_in_range(0..=3u8)? {
            0 => DirectOp::Offer {
                to: name(u)?,
                address: peer_address(u)?,
                fingerprint: fingerprint(u)?,
            },
            1 => DirectOp::Accept {
                from: name(u)?,
                fingerprint: fingerprint(u)?,
            },
            2 => DirectOp::Decline { from: name(u)? },
            _ => DirectOp::Cancel { to: name(u)? },
        }),
        Verb::Token => Command::Token {
            label: if u.arbitrary()? {
                let l = string_from(u, TEXT_CHARS, 1, MAX_TOKEN_LABEL_BYTES / 2)?;
                check_text_within(&l, MAX_TOKEN_LABEL_BYTES).map_err(|_| Error::IncorrectFormat)?;
                Some(l)
            } else {
                None
            },
        },
        Verb::Resume => Command::Resume {
            // A well-formed token mostly; any token, as the parser takes any.
            token: if u.ratio(3u8, 4u8)? {
                DeviceToken::new(u.arbitrary()?, &u.arbitrary()?)
            } else {
                DeviceToken::unchecked(&token(u, 80)?)
            },
        },
        Verb::Tokens => Command::Tokens,
        Verb::Password => Command::Password {
            old: Password::unchecked(&token(u, 40)?),
            new: password(u)?,
        },
        Verb::Unregister => Command::Unregister {
            password: Password::unchecked(&token(u, 40)?),
        },
        Verb::Block => Command::Block { name: name(u)? },
        Verb::Unblock => Command::Unblock { name: name(u)? },
        Verb::Blocks => Command::Blocks,
        Verb::Away => Command::Away {
            text: if u.arbitrary()? {
                let t = string_from(u, TEXT_CHARS, 1, 40)?;
                check_text_within(&t, MAX_AWAY_BYTES).map_err(|_| Error::IncorrectFormat)?;
                Some(t)
            } else {
                None
            },
        },
        Verb::Whois => Command::Whois { name: name(u)? },
        Verb::Dms => Command::Dms(*u.choose(&[None, Some(Dms::Friends), Some(Dms::Everyone)])?),
        Verb::Revoke => Command::Revoke(if u.arbitrary()? {
            Revoke::All
        } else {
            Revoke::One(id(u)?)
        }),
        Verb::Join => Command::Join { room: room(u)? },
        Verb::Part => Command::Part {
            room: room(u)?,
            reason: reason(u)?,
        },
        Verb::Rooms => Command::Rooms,
        Verb::Members => Command::Members { room: room(u)? },
        Verb::Topic => Command::Topic {
            room: room(u)?,
            change: match u.int_in_range(0..=2u8)? {
                0 => None,
                1 => Some(TopicChange::Clear),
                _ => {
                    let t = short_text(u, MAX_TOPIC_BYTES, check_topic)?;
                    // `-` alone is the clearing form, not a topic.
                    if t == CLEAR_TOPIC {
                        return Err(Error::IncorrectFormat);
                    }
                    Some(TopicChange::Set(t))
                }
            },
        },
        Verb::Invite => Command::Invite {
            room: room(u)?,
            name: name(u)?,
        },
        Verb::Kick => Command::Kick {
            room: room(u)?,
            name: name(u)?,
            reason: reason(u)?,
        },
        Verb::Ban => Command::Ban {
            room: room(u)?,
            name: name(u)?,
            reason: reason(u)?,
        },
        Verb::Unban => Command::Unban {
            room: room(u)?,
            name: name(u)?,
        },
        Verb::Role => Command::Role {
            room: room(u)?,
            name: name(u)?,
            role: *u.choose(&Role::ALL)?,
        },
        Verb::Room => Command::Room {
            sub: *u.choose(&[
                RoomSub::Info,
                RoomSub::Private,
                RoomSub::Public,
                RoomSub::Delete,
            ])?,
            room: room(u)?,
        },
        Verb::Read => Command::Read {
            target: target(u)?,
            id: if u.arbitrary()? { Some(id(u)?) } else { None },
        },
        Verb::Announce => Command::Announce { text: text(u)? },
        Verb::Suspend | Verb::Kill => {
            let name = name(u)?;
            let reason = reason(u)?;
            if verb == Verb::Suspend {
                Command::Suspend { name, reason }
            } else {
                Command::Kill { name, reason }
            }
        }
        Verb::Unsuspend => Command::Unsuspend { name: name(u)? },
        Verb::Stats => Command::Stats,
        Verb::Adduser => Command::Adduser {
            name: name(u)?,
            password: password(u)?,
        },
    };
    Ok(Request { label, command })
}
