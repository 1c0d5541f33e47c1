//! `server_line`: the parser of server lines on arbitrary text, and on every kind of line the
//! server can build.

use arbitrary::{Result, Unstructured};

use crate::config::{MAX_GROUP_RECIPIENTS, MAX_PING_TOKEN_BYTES};
use crate::proto::code::{ByeCode, Code};
use crate::proto::command::{Dms, Verb, COMMANDS};
use crate::proto::name::check_label;
use crate::proto::room::{Privacy, Role};
use crate::proto::server_line::{
    parse, AddOutcome, Delivery, DirectEvent, DirectReply, FriendReply, FriendState,
    FriendshipEvent, JoinOutcome, MessageLine, OkReply, PartOutcome, Presence, Recipient,
    RoomEvent, RoomLine, RoomReply, ServerLine, Standing, TokenLine, TopicSet,
};
use crate::proto::token::DeviceToken;

/// First input byte even: the rest, as text, goes to the parser, which must not panic, and whatever
/// it recognises must survive a trip through its canonical form. Odd: the rest describes a line
/// built from typed fields, whose encoding must parse back to the value it was built from.
pub fn check_server_line(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let line = String::from_utf8_lossy(rest);
        let parsed = parse(&line);
        if !matches!(parsed, ServerLine::Other(_)) {
            let canonical = parsed.to_string();
            assert_eq!(parse(&canonical), parsed, "{line:?} -> {canonical:?}");
        }
    } else {
        let mut u = Unstructured::new(rest);
        let _ = encoded_line_parses(&mut u);
    }
}

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
/// Characters of human texts and other free fields: anything a line can hold, with the characters
/// that matter to the parser (spaces, `*`, `,`, `@`) likely.
const TEXT_CHARS: &[char] = &[
    'a', 'Z', '7', ' ', ' ', '\t', ',', '@', '*', ':', '-', 'é', '😀', '\u{1b}', '\u{0}',
];

fn free_text(u: &mut Unstructured<'_>, min: usize, max: usize) -> Result<String> {
    let len = u.int_in_range(min..=max)?;
    let mut s = String::new();
    while s.chars().count() < len {
        let c = if u.ratio(1u8, 16u8)? {
            u.arbitrary::<char>()?
        } else {
            *u.choose(TEXT_CHARS)?
        };
        // A line holds neither (LF ends it, a CR before the LF is framing).
        if c != '\n' && c != '\r' {
            s.push(c);
        }
        if u.is_empty() {
            break;
        }
    }
    Ok(s)
}

/// A human sentence as the server writes them: starts with a non-space character.
fn sentence(u: &mut Unstructured<'_>) -> Result<String> {
    let s = free_text(u, 1, 40)?;
    Ok(if s.is_empty() || s.starts_with(' ') {
        format!("x{s}")
    } else {
        s
    })
}

fn name(u: &mut Unstructured<'_>) -> Result<String> {
    let len = u.int_in_range(1..=32usize)?;
    let mut s = String::from(char::from(*u.choose(&NAME_CHARS[..52])?));
    for _ in 1..len {
        s.push(char::from(*u.choose(NAME_CHARS)?));
    }
    Ok(s)
}

/// A room name: `#` and 1 to 32 of the name characters.
fn room(u: &mut Unstructured<'_>) -> Result<String> {
    let len = u.int_in_range(1..=32usize)?;
    let mut s = String::from("#");
    for _ in 0..len {
        s.push(char::from(*u.choose(NAME_CHARS)?));
    }
    Ok(s)
}

/// A time the four-digit wire form can show (years 0000 to 9999).
fn time(u: &mut Unstructured<'_>) -> Result<i64> {
    u.int_in_range(-62_167_219_200_000i64..=253_402_300_799_999)
}

fn role(u: &mut Unstructured<'_>) -> Result<Role> {
    Ok(*u.choose(&Role::ALL)?)
}

fn privacy(u: &mut Unstructured<'_>) -> Result<Privacy> {
    Ok(*u.choose(&[Privacy::Public, Privacy::Private])?)
}

fn label(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    if !u.arbitrary::<bool>()? {
        return Ok(None);
    }
    let pool = b"abcXYZ019._-";
    let len = u.int_in_range(1..=32usize)?;
    let mut l = String::new();
    for _ in 0..len {
        l.push(char::from(*u.choose(pool)?));
    }
    assert!(check_label(&l).is_ok());
    Ok(Some(l))
}

fn verb(u: &mut Unstructured<'_>) -> Result<Verb> {
    Ok(u.choose(COMMANDS)?.verb)
}

fn id(u: &mut Unstructured<'_>) -> Result<u64> {
    u.arbitrary()
}

fn cursor(u: &mut Unstructured<'_>) -> Result<Option<u64>> {
    Ok(if u.arbitrary()? { Some(id(u)?) } else { None })
}

/// Arbitrary but valid details of an `OK` of `verb`; names come from `pool`, rooms from `rooms`,
/// texts from `text` (which does not start with a space), a token's text is `token`.
fn ok_reply<'a>(
    u: &mut Unstructured<'_>,
    verb: Verb,
    pool: &'a [String],
    rooms: &'a [String],
    text: &'a str,
    token: &'a DeviceToken,
    away: &'a str,
) -> Result<OkReply<'a>> {
    let n = |u: &mut Unstructured<'_>| -> Result<&'a str> { Ok(u.choose(pool)?.as_str()) };
    let r = |u: &mut Unstructured<'_>| -> Result<&'a str> { Ok(u.choose(rooms)?.as_str()) };
    Ok(match verb {
        Verb::Register => OkReply::Register { name: n(u)? },
        Verb::Login => OkReply::Login { name: n(u)? },
        Verb::Logout => OkReply::Logout,
        Verb::Quit => OkReply::Quit,
        Verb::Help => OkReply::Help,
        Verb::Ping => OkReply::Ping,
        Verb::Msg if u.arbitrary()? => OkReply::RoomMsg {
            id: id(u)?,
            delivered: u.arbitrary()?,
        },
        Verb::Msg => OkReply::Msg {
            id: id(u)?,
            delivery: *u.choose(&[Delivery::Delivered, Delivery::Kept])?,
        },
        Verb::Group => OkReply::Group {
            id: id(u)?,
            delivered: u.arbitrary()?,
            kept: u.arbitrary()?,
        },
        Verb::All => OkReply::All {
            id: id(u)?,
            delivered: u.arbitrary()?,
        },
        Verb::Users => OkReply::Users {
            count: u.arbitrary()?,
        },
        Verb::History => OkReply::History {
            with: if u.arbitrary()? { "*" } else { n(u)? },
            count: u.arbitrary()?,
            before: cursor(u)?,
            after: cursor(u)?,
        },
        Verb::Friend => OkReply::Friend(match u.int_in_range(0..=4u8)? {
            0 => FriendReply::Add {
                name: n(u)?,
                outcome: *u.choose(&[AddOutcome::Friends, AddOutcome::Requested])?,
            },
            1 => FriendReply::Accept { name: n(u)? },
            2 => FriendReply::Deny { name: n(u)? },
            3 => FriendReply::Remove { name: n(u)? },
            _ => FriendReply::List {
                count: u.arbitrary()?,
            },
        }),
        Verb::Token => OkReply::Token {
            id: token.parts().map_or(0, |(id, _)| id),
            token: token.expose(),
        },
        Verb::Resume => OkReply::Resume { name: n(u)? },
        Verb::Tokens => OkReply::Tokens {
            count: u.arbitrary()?,
        },
        Verb::Revoke => OkReply::Revoke {
            revoked: u.arbitrary()?,
            closed: u.arbitrary()?,
        },
        Verb::Password => OkReply::Password {
            revoked: u.arbitrary()?,
            closed: u.arbitrary()?,
        },
        Verb::Unregister => OkReply::Unregister { name: n(u)? },
        Verb::Block => OkReply::Block { name: n(u)? },
        Verb::Unblock => OkReply::Unblock { name: n(u)? },
        Verb::Blocks => OkReply::Blocks {
            count: u.arbitrary()?,
        },
        Verb::Away => OkReply::Away {
            set: u.arbitrary()?,
        },
        Verb::Whois => OkReply::Whois {
            name: n(u)?,
            presence: *u.choose(&[Presence::Online, Presence::Offline])?,
            last_seen_ms: if u.arbitrary()? { Some(time(u)?) } else { None },
            away: if u.arbitrary()? { away } else { "" },
        },
        Verb::Dms => OkReply::Dms {
            policy: *u.choose(&[Dms::Friends, Dms::Everyone])?,
        },
        Verb::Join => OkReply::Join {
            room: r(u)?,
            outcome: *u.choose(&[
                JoinOutcome::Created,
                JoinOutcome::Joined,
                JoinOutcome::Member,
            ])?,
        },
        Verb::Part => OkReply::Part {
            room: r(u)?,
            outcome: *u.choose(&[PartOutcome::Left, PartOutcome::Declined])?,
        },
        Verb::Rooms => OkReply::Rooms {
            count: u.arbitrary()?,
        },
        Verb::Members => OkReply::Members {
            room: r(u)?,
            count: u.arbitrary()?,
        },
        Verb::Topic => {
            let set = if u.arbitrary()? {
                Some(TopicSet {
                    by: n(u)?,
                    time_ms: time(u)?,
                })
            } else {
                None
            };
            OkReply::Topic {
                room: r(u)?,
                set,
                // Never set: no text either.
                text: if set.is_some() && u.arbitrary()? {
                    text
                } else {
                    ""
                },
            }
        }
        Verb::Invite => OkReply::Invite {
            room: r(u)?,
            name: n(u)?,
            expires_ms: time(u)?,
        },
        Verb::Kick => OkReply::Kick {
            room: r(u)?,
            name: n(u)?,
        },
        Verb::Ban => OkReply::Ban {
            room: r(u)?,
            name: n(u)?,
        },
        Verb::Unban => OkReply::Unban {
            room: r(u)?,
            name: n(u)?,
        },
        Verb::Role => OkReply::Role {
            room: r(u)?,
            name: n(u)?,
            role: role(u)?,
        },
        Verb::Room => OkReply::Room(match u.int_in_range(0..=3u8)? {
            0 => RoomReply::Info {
                room: r(u)?,
                created_ms: time(u)?,
            },
            1 => RoomReply::Private { room: r(u)? },
            2 => RoomReply::Public { room: r(u)? },
            _ => RoomReply::Delete { room: r(u)? },
        }),
        Verb::Read => OkReply::Read {
            target: if u.arbitrary()? { r(u)? } else { n(u)? },
            id: id(u)?,
        },
        Verb::Compress => OkReply::Compress,
        Verb::Direct => OkReply::Direct(match u.int_in_range(0..=3u8)? {
            0 => DirectReply::Offer {
                name: n(u)?,
                expires_secs: u.arbitrary()?,
            },
            1 => DirectReply::Accept {
                name: n(u)?,
                address: u.choose(&ADDRESSES)?,
                fingerprint: u.choose(&FINGERPRINTS)?,
            },
            2 => DirectReply::Decline { name: n(u)? },
            _ => DirectReply::Cancel { name: n(u)? },
        }),
        Verb::Announce => OkReply::Announce {
            delivered: u.arbitrary()?,
        },
        Verb::Suspend => OkReply::Suspend {
            name: n(u)?,
            closed: u.arbitrary()?,
        },
        Verb::Unsuspend => OkReply::Unsuspend { name: n(u)? },
        Verb::Kill => OkReply::Kill {
            name: n(u)?,
            closed: u.arbitrary()?,
        },
        Verb::Stats => OkReply::Stats {
            count: u.arbitrary()?,
        },
        Verb::Adduser => OkReply::Adduser { name: n(u)? },
    })
}

/// Arbitrary but valid room event, names from `pool`, texts from `text`.
fn room_event<'a>(
    u: &mut Unstructured<'_>,
    pool: &'a [String],
    text: &'a str,
) -> Result<RoomEvent<'a>> {
    let n = |u: &mut Unstructured<'_>| -> Result<&'a str> { Ok(u.choose(pool)?.as_str()) };
    let t = |u: &mut Unstructured<'_>| -> Result<&'a str> {
        Ok(if u.arbitrary()? { text } else { "" })
    };
    Ok(match u.int_in_range(0..=9u8)? {
        0 => RoomEvent::Joined { name: n(u)? },
        1 => RoomEvent::Parted {
            name: n(u)?,
            reason: t(u)?,
        },
        2 => RoomEvent::Kicked {
            name: n(u)?,
            by: n(u)?,
            reason: t(u)?,
        },
        3 => RoomEvent::Banned {
            name: n(u)?,
            by: n(u)?,
            reason: t(u)?,
        },
        4 => RoomEvent::Unbanned {
            name: n(u)?,
            by: n(u)?,
        },
        5 => RoomEvent::Topic {
            by: n(u)?,
            text: t(u)?,
        },
        6 => RoomEvent::Role {
            name: n(u)?,
            role: role(u)?,
            by: n(u)?,
        },
        7 => RoomEvent::Invited {
            by: n(u)?,
            expires_ms: time(u)?,
        },
        8 => RoomEvent::Privacy {
            privacy: privacy(u)?,
            by: n(u)?,
        },
        _ => RoomEvent::Deleted { by: n(u)? },
    })
}

/// Addresses and fingerprints for DIRECT lines (valid, the fingerprints in upper case).
const ADDRESSES: [&str; 3] = [
    "192.0.2.7:4000",
    "[2001:db8::1]:65535",
    "laptop.example.org:1",
];
const FINGERPRINTS: [&str; 2] = [
    "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89",
    "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
];

/// Builds one line of every kind from arbitrary valid fields, encodes it, and checks that it parses
/// back to the same value.
fn encoded_line_parses(u: &mut Unstructured<'_>) -> Result<()> {
    let names: Vec<String> = {
        let n = u.int_in_range(2..=MAX_GROUP_RECIPIENTS)?;
        (0..n).map(|_| name(u)).collect::<Result<_>>()?
    };
    let label = label(u)?;
    let text = sentence(u)?;
    // Message text keeps its spaces, leading ones too.
    let body = free_text(u, 1, 60)?;
    let version = format!(
        "{}.{}.{}",
        u.arbitrary::<u8>()?,
        u.arbitrary::<u8>()?,
        u.arbitrary::<u8>()?
    );
    let token: Option<String> = if u.arbitrary()? {
        let mut t: String = free_text(u, 1, MAX_PING_TOKEN_BYTES)?
            .chars()
            .filter(|c| *c != ' ')
            .collect();
        // A token may hold a CR (only not last, where it would read as CRLF).
        if t.len() > 1 && t.is_char_boundary(1) && u.ratio(1u8, 4u8)? {
            t.insert(1, '\r');
        }
        Some(t).filter(|t| !t.is_empty() && t.len() <= MAX_PING_TOKEN_BYTES)
    } else {
        None
    };
    let rooms: Vec<String> = (0..u.int_in_range(1..=4usize)?)
        .map(|_| room(u))
        .collect::<Result<_>>()?;
    let device_token = DeviceToken::new(u.arbitrary()?, &u.arbitrary()?);
    // The server's probe token is a number.
    let probe = id(u)?.to_string();
    let one = names[0].as_str();
    let stat_name = {
        let n = u.int_in_range(0..=20usize)?;
        let pool = b"abcdefghijklmnopqrstuvwxyz0123456789_";
        let mut s = String::from("s");
        for _ in 0..n {
            s.push(char::from(*u.choose(pool)?));
        }
        s
    };
    let stat_value = if u.arbitrary()? {
        u.arbitrary::<u64>()?.to_string()
    } else {
        format!(
            "{}.{:06}",
            u.arbitrary::<u32>()?,
            u.int_in_range(0..=999_999u32)?
        )
    };
    let line = match u.int_in_range(0..=26u8)? {
        0 => {
            let verb = verb(u)?;
            ServerLine::Ok {
                label: label.as_deref(),
                reply: ok_reply(u, verb, &names, &rooms, &text, &device_token, &body)?,
            }
        }
        1 => {
            let code = *u.choose(Code::ALL)?;
            ServerLine::Fail {
                label: label.as_deref(),
                command: if u.ratio(1u8, 4u8)? {
                    None
                } else {
                    Some(verb(u)?)
                },
                code,
                retry_after: if code.has_retry_after() {
                    Some(u.arbitrary()?)
                } else {
                    None
                },
                text: &text,
            }
        }
        2 | 3 => {
            let time_ms = time(u)?;
            let to = match u.int_in_range(0..=3u8)? {
                0 => Recipient::User(one),
                // A list of one prints as a MSG's recipient: a group value has two names or more.
                1 => Recipient::Group(names.iter().map(String::as_str).collect()),
                2 => Recipient::Room(rooms[0].as_str()),
                _ => Recipient::All,
            };
            let m = MessageLine {
                id: id(u)?,
                time_ms,
                from: names[1].as_str(),
                to,
                text: &body,
            };
            if u.arbitrary()? {
                ServerLine::Message(m)
            } else {
                ServerLine::History(m)
            }
        }
        4 => ServerLine::Bye {
            code: *u.choose(ByeCode::ALL)?,
            text: &text,
        },
        5 => ServerLine::BacklogEnd {
            count: u.arbitrary()?,
        },
        6 => ServerLine::Presence {
            name: one,
            presence: *u.choose(&[Presence::Online, Presence::Offline])?,
        },
        7 => ServerLine::Friendship {
            name: one,
            event: *u.choose(&[
                FriendshipEvent::Requested,
                FriendshipEvent::Accepted,
                FriendshipEvent::Denied,
                FriendshipEvent::Removed,
                FriendshipEvent::Withdrawn,
            ])?,
        },
        8 => ServerLine::User { name: one },
        9 => ServerLine::Help {
            text: if u.arbitrary()? { &text } else { "" },
        },
        10 => ServerLine::Pong {
            token: token.as_deref(),
        },
        11 => ServerLine::Friend {
            name: one,
            state: *u.choose(&[
                FriendState::Online,
                FriendState::Offline,
                FriendState::Incoming,
                FriendState::Outgoing,
            ])?,
        },
        13 => ServerLine::Blocked { name: one },
        14 => ServerLine::Away {
            name: one,
            text: if u.arbitrary()? { Some(&body) } else { None },
        },
        12 => ServerLine::Token(TokenLine {
            id: id(u)?,
            created_ms: time(u)?,
            last_used_ms: time(u)?,
            expires_ms: time(u)?,
            current: u.arbitrary()?,
            // A label is free text after one space; an empty one is left out.
            label: if u.arbitrary()? { &body } else { "" },
        }),
        15 => ServerLine::Ping { token: &probe },
        16 => {
            let standing = match u.int_in_range(0..=2u8)? {
                0 => Standing::Member(role(u)?),
                1 => Standing::Invited,
                _ => Standing::Outside,
            };
            ServerLine::Room(RoomLine {
                room: &rooms[0],
                privacy: privacy(u)?,
                members: u.arbitrary()?,
                standing,
                unread: match standing {
                    Standing::Member(_) => Some(u.arbitrary()?),
                    _ => None,
                },
                topic: if u.arbitrary()? { &body } else { "" },
            })
        }
        17 => ServerLine::Member {
            room: &rooms[0],
            name: one,
            role: role(u)?,
            presence: *u.choose(&[Presence::Online, Presence::Offline])?,
        },
        18 => ServerLine::Ban {
            room: &rooms[0],
            name: one,
            by: &names[1],
            time_ms: time(u)?,
            reason: if u.arbitrary()? { &body } else { "" },
        },
        19 => ServerLine::Invitation {
            room: &rooms[0],
            name: one,
            by: &names[1],
            expires_ms: time(u)?,
        },
        20 => ServerLine::RoomEvent {
            room: &rooms[0],
            event: room_event(u, &names, &body)?,
        },
        21 => ServerLine::Unread {
            room: &rooms[0],
            count: u.arbitrary()?,
            first: id(u)?,
        },
        22 => ServerLine::Read {
            target: if u.arbitrary()? { &rooms[0] } else { one },
            id: id(u)?,
        },
        23 => ServerLine::Direct {
            name: one,
            event: match u.int_in_range(0..=6u8)? {
                0 => DirectEvent::Offer {
                    address: u.choose(&ADDRESSES)?,
                    fingerprint: u.choose(&FINGERPRINTS)?,
                },
                1 => DirectEvent::Accepted {
                    fingerprint: u.choose(&FINGERPRINTS)?,
                },
                2 => DirectEvent::Declined,
                3 => DirectEvent::Withdrawn,
                4 => DirectEvent::Expired,
                5 => DirectEvent::Answered,
                _ => DirectEvent::Gone,
            },
        },
        24 => ServerLine::Notice { text: &body },
        25 => ServerLine::Stat {
            name: &stat_name,
            value: &stat_value,
        },
        _ => ServerLine::Hello {
            software: "chatd",
            version: &version,
            text: &text,
        },
    };
    let bytes = line.to_bytes();
    let encoded = String::from_utf8(bytes).expect("server lines are UTF-8");
    assert!(
        encoded.ends_with('\n') && encoded.matches('\n').count() == 1,
        "{encoded:?}"
    );
    let parsed = parse(&encoded);
    assert_eq!(parsed, line, "{encoded:?}");
    assert_eq!(
        parsed.to_string(),
        encoded.trim_end_matches('\n'),
        "{encoded:?}"
    );
    Ok(())
}
