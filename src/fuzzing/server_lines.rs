//! `server_line`: the parser of server lines on arbitrary text, and on every kind of line the
//! server's encoders build.

use arbitrary::{Result, Unstructured};

use crate::config::{MAX_GROUP_RECIPIENTS, MAX_PING_TOKEN_BYTES};
use crate::proto::command::COMMANDS;
use crate::proto::name::check_label;
use crate::proto::reply::{self, ByeCode, Code, Recipients};
use crate::proto::server_line::{
    parse, FriendState, FriendshipEvent, MessageLine, Presence, Recipient, ServerLine,
};
use crate::proto::time::timestamp;

/// First input byte even: the rest, as text, goes to the parser, which must not panic, and whatever
/// it recognises must survive a trip through its canonical form. Odd: the rest describes a line
/// built by the reply encoders, which must parse to the kind and fields it was built from.
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

fn command_name(u: &mut Unstructured<'_>, star: bool) -> Result<&'static str> {
    if star && u.ratio(1u8, 4u8)? {
        return Ok("*");
    }
    Ok(u.choose(COMMANDS)?.name)
}

/// Builds one line with the reply encoders from arbitrary valid fields and checks what the
/// parser makes of it.
fn encoded_line_parses(u: &mut Unstructured<'_>) -> Result<()> {
    let mut out = String::new();
    match u.int_in_range(0..=13u8)? {
        0 => {
            let label = label(u)?;
            let command = command_name(u, false)?;
            let details = if u.arbitrary()? {
                sentence(u)?
            } else {
                String::new()
            };
            reply::ok(&mut out, label.as_deref(), command, &details);
            expect(
                &out,
                ServerLine::Ok {
                    label: label.as_deref(),
                    command,
                    details: &details,
                },
            );
        }
        1 => {
            let label = label(u)?;
            let command = command_name(u, true)?;
            let code = *u.choose(Code::ALL)?;
            let text = sentence(u)?;
            reply::fail(&mut out, label.as_deref(), command, code, &text);
            expect(
                &out,
                ServerLine::Fail {
                    label: label.as_deref(),
                    command,
                    code: code.as_str(),
                    text: &text,
                },
            );
        }
        2 | 3 => {
            let tag = if u.arbitrary()? { "MESSAGE" } else { "HISTORY" };
            let id: u64 = u.arbitrary()?;
            // Years 0000 to 9999, the range the four-digit wire form can show.
            let time_ms = u.int_in_range(-62_167_219_200_000i64..=253_402_300_799_999)?;
            let from = name(u)?;
            let group: Vec<String> = {
                let n = u.int_in_range(1..=MAX_GROUP_RECIPIENTS)?;
                (0..n).map(|_| name(u)).collect::<Result<_>>()?
            };
            let user = name(u)?;
            let (to, want_to) = match u.int_in_range(0..=2u8)? {
                0 => (Recipients::User(&user), Recipient::User(&user)),
                1 => (
                    Recipients::Group(&group),
                    // A list of one looks like a MSG on the wire.
                    if group.len() == 1 {
                        Recipient::User(&group[0])
                    } else {
                        Recipient::Group(group.iter().map(String::as_str).collect())
                    },
                ),
                _ => (Recipients::All, Recipient::All),
            };
            // Message text keeps its spaces, leading ones too.
            let text = free_text(u, 1, 60)?;
            reply::message(&mut out, tag, id, time_ms, &from, to, &text);
            let time = timestamp(time_ms);
            let fields = MessageLine {
                id,
                time: &time,
                from: &from,
                to: want_to,
                text: &text,
            };
            expect(
                &out,
                if tag == "MESSAGE" {
                    ServerLine::Message(fields)
                } else {
                    ServerLine::History(fields)
                },
            );
        }
        4 => {
            let code = *u.choose(ByeCode::ALL)?;
            let text = sentence(u)?;
            reply::bye(&mut out, code, &text);
            expect(
                &out,
                ServerLine::Bye {
                    code: code.as_str(),
                    text: &text,
                },
            );
        }
        5 => {
            let count: u64 = u.arbitrary()?;
            reply::line(&mut out, "BACKLOG-END", &count.to_string());
            expect(&out, ServerLine::BacklogEnd { count });
        }
        6 => {
            let n = name(u)?;
            let presence = *u.choose(&[Presence::Online, Presence::Offline])?;
            reply::line(&mut out, "PRESENCE", &format!("{n} {}", presence.as_str()));
            expect(&out, ServerLine::Presence { name: &n, presence });
        }
        7 => {
            let n = name(u)?;
            let event = *u.choose(&[
                FriendshipEvent::Requested,
                FriendshipEvent::Accepted,
                FriendshipEvent::Denied,
                FriendshipEvent::Removed,
                FriendshipEvent::Withdrawn,
            ])?;
            reply::line(&mut out, "FRIENDSHIP", &format!("{n} {}", event.as_str()));
            expect(&out, ServerLine::Friendship { name: &n, event });
        }
        8 => {
            let n = name(u)?;
            reply::line(&mut out, "USER", &n);
            expect(&out, ServerLine::User { name: &n });
        }
        9 => {
            let text = if u.arbitrary()? {
                sentence(u)?
            } else {
                String::new()
            };
            reply::line(&mut out, "HELP", &text);
            expect(&out, ServerLine::Help { text: &text });
        }
        10 => {
            let token = if u.arbitrary()? {
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
            reply::line(&mut out, "PONG", token.as_deref().unwrap_or(""));
            expect(
                &out,
                ServerLine::Pong {
                    token: token.as_deref(),
                },
            );
        }
        11 => {
            let n = name(u)?;
            let state = *u.choose(&[
                FriendState::Online,
                FriendState::Offline,
                FriendState::Incoming,
                FriendState::Outgoing,
            ])?;
            reply::line(&mut out, "FRIEND", &format!("{n} {}", state.as_str()));
            expect(&out, ServerLine::Friend { name: &n, state });
        }
        _ => {
            let version = format!(
                "{}.{}.{}",
                u.arbitrary::<u8>()?,
                u.arbitrary::<u8>()?,
                u.arbitrary::<u8>()?
            );
            let text = sentence(u)?;
            reply::line(&mut out, "HELLO", &format!("chatd {version} {text}"));
            expect(
                &out,
                ServerLine::Hello {
                    software: "chatd",
                    version: &version,
                    text: &text,
                },
            );
        }
    }
    Ok(())
}

/// The encoder's line is one LF-terminated line that parses to `want`, and prints back as itself.
fn expect(line: &str, want: ServerLine<'_>) {
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "{line:?}"
    );
    let parsed = parse(line);
    assert_eq!(parsed, want, "{line:?}");
    assert_eq!(parsed.to_string(), line.trim_end_matches('\n'), "{line:?}");
}
