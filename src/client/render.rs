//! Server lines as sentences for people: local times, who a message was for, events in words.
//!
//! Everything here is pure: the time zone and the current time are parameters, so tests pin them.
//! Text that came from the server is cleaned of control characters before it reaches the terminal,
//! so a message cannot move the cursor, clear the screen or retitle the window.

use std::borrow::Cow;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::proto::room::{Privacy, Role};
use crate::proto::server_line::{
    FriendState, FriendshipEvent, MessageLine, Presence, Recipient, RoomEvent, RoomLine, Standing,
    TokenLine,
};
use crate::proto::token::format_id;

/// Replaces control characters other than TAB with U+FFFD.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(|c| c.is_control() && c != '\t') {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() && c != '\t' {
                        char::REPLACEMENT_CHARACTER
                    } else {
                        c
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// Where and when the user is, for showing times.
#[derive(Clone, Debug)]
pub struct Clock {
    /// The user's time zone.
    pub tz: TimeZone,
    /// Now; times on another day than this one are shown with their date.
    pub now: Timestamp,
}

impl Clock {
    /// The system time zone and the current time.
    pub fn now() -> Clock {
        Clock {
            tz: TimeZone::system(),
            now: Timestamp::now(),
        }
    }

    /// The wire time `YYYY-MM-DDTHH:MM:SS.mmmZ` as local `HH:MM`, with the date in front when it is
    /// not today or `always_date` is set. An unparsable time is shown as sent.
    pub fn local(&self, ms: i64, always_date: bool) -> String {
        let Ok(ts) = Timestamp::from_millisecond(ms) else {
            return crate::proto::time::timestamp(ms);
        };
        let at = ts.to_zoned(self.tz.clone());
        let today = self.now.to_zoned(self.tz.clone()).date();
        if always_date || at.date() != today {
            at.strftime("%Y-%m-%d %H:%M").to_string()
        } else {
            at.strftime("%H:%M").to_string()
        }
    }
}

fn is(me: Option<&str>, name: &str) -> bool {
    me.is_some_and(|m| m.eq_ignore_ascii_case(name))
}

/// Whom a message was for, from the reader's point of view.
pub fn recipients(to: &Recipient<'_>, me: Option<&str>) -> String {
    match to {
        Recipient::User(u) if is(me, u) => "you".to_string(),
        Recipient::User(u) => clean(u).into_owned(),
        Recipient::Group(names) => {
            let shown: Vec<Cow<'_, str>> = names
                .iter()
                .map(|n| {
                    if is(me, n) {
                        Cow::Borrowed("you")
                    } else {
                        clean(n)
                    }
                })
                .collect();
            format!("group ({})", shown.join(", "))
        }
        Recipient::All => "everyone".to_string(),
        Recipient::Room(r) => clean(r).into_owned(),
    }
}

/// `[HH:MM] alice → you: text` (with the date for history and for other days).
pub fn message(m: &MessageLine<'_>, me: Option<&str>, clock: &Clock, history: bool) -> String {
    let from = if is(me, m.from) {
        Cow::Borrowed("you")
    } else {
        clean(m.from)
    };
    format!(
        "[{}] {} → {}: {}",
        clock.local(m.time_ms, history),
        from,
        recipients(&m.to, me),
        clean(m.text)
    )
}

/// A `TOKENS` entry: `<id>  <label>  created ..., last used ..., expires ...`, marked when it is
/// the one this connection is on.
pub fn token(t: &TokenLine<'_>, clock: &Clock) -> String {
    let label = if t.label.is_empty() {
        Cow::Borrowed("(no label)")
    } else {
        clean(t.label)
    };
    format!(
        "  {}  {label}{}: created {}, last used {}, expires {}",
        format_id(t.id),
        if t.current { " (this connection)" } else { "" },
        clock.local(t.created_ms, true),
        clock.local(t.last_used_ms, true),
        clock.local(t.expires_ms, true),
    )
}

/// `AWAY` as a sentence.
pub fn away(name: &str, text: Option<&str>) -> String {
    match text {
        Some(t) => format!("{} is away: {}", clean(name), clean(t)),
        None => format!("{} is back.", clean(name)),
    }
}

/// `PRESENCE` as a sentence.
pub fn presence(name: &str, p: Presence) -> String {
    match p {
        Presence::Online => format!("{} is online.", clean(name)),
        Presence::Offline => format!("{} is offline.", clean(name)),
    }
}

/// `FRIENDSHIP` as a sentence.
pub fn friendship(name: &str, event: FriendshipEvent) -> String {
    let n = clean(name);
    match event {
        FriendshipEvent::Requested => {
            format!("{n} asks to be your friend: /friend accept {n} or /friend deny {n}.")
        }
        FriendshipEvent::Accepted => format!("{n} accepted: you are now friends."),
        FriendshipEvent::Denied => format!("{n} denied your friend request."),
        FriendshipEvent::Removed => format!("{n} ended your friendship."),
        FriendshipEvent::Withdrawn => format!("{n} withdrew their friend request."),
    }
}

/// One `FRIEND LIST` entry.
pub fn friend(name: &str, state: FriendState) -> String {
    let n = clean(name);
    match state {
        FriendState::Online => format!("  {n}: friend, online"),
        FriendState::Offline => format!("  {n}: friend, offline"),
        FriendState::Incoming => {
            format!("  {n}: asks to be your friend (/friend accept {n})")
        }
        FriendState::Outgoing => format!("  {n}: you asked; no answer yet"),
    }
}

/// A role in lower case, as a person reads it.
fn role_word(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Op => "op",
        Role::Member => "member",
    }
}

/// One `ROOM` line: `  #rust (public, 12 members; you: member, 3 unread): the topic`.
pub fn room(r: &RoomLine<'_>) -> String {
    let privacy = match r.privacy {
        Privacy::Public => "public",
        Privacy::Private => "private",
    };
    let members = match r.members {
        1 => "1 member".to_string(),
        n => format!("{n} members"),
    };
    let you = match (r.standing, r.unread) {
        (Standing::Member(role), Some(0)) => format!("; you: {}", role_word(role)),
        (Standing::Member(role), Some(n)) => format!("; you: {}, {n} unread", role_word(role)),
        (Standing::Member(role), None) => format!("; you: {}", role_word(role)),
        (Standing::Invited, _) => "; you are invited".to_string(),
        (Standing::Outside, _) => String::new(),
    };
    let mut line = format!("  {} ({privacy}, {members}{you})", clean(r.room));
    if !r.topic.is_empty() {
        line.push_str(": ");
        line.push_str(&clean(r.topic));
    }
    line
}

/// One `MEMBER` line.
pub fn member(name: &str, role: Role, p: Presence) -> String {
    let presence = match p {
        Presence::Online => "online",
        Presence::Offline => "offline",
    };
    format!("  {} ({}, {presence})", clean(name), role_word(role))
}

/// One `BAN` line of `ROOM INFO`.
pub fn ban(name: &str, by: &str, time_ms: i64, reason: &str, clock: &Clock) -> String {
    let mut line = format!(
        "  banned: {} by {} on {}",
        clean(name),
        clean(by),
        clock.local(time_ms, true)
    );
    if !reason.is_empty() {
        line.push_str(&format!(" ({})", clean(reason)));
    }
    line
}

/// One `INVITATION` line of `ROOM INFO`.
pub fn invitation(name: &str, by: &str, expires_ms: i64, clock: &Clock) -> String {
    format!(
        "  invited: {} by {}, until {}",
        clean(name),
        clean(by),
        clock.local(expires_ms, true)
    )
}

/// A room event as a sentence; `me` is the reader.
pub fn room_event(room: &str, event: &RoomEvent<'_>, me: Option<&str>, clock: &Clock) -> String {
    let r = clean(room);
    let who = |n: &str| -> String {
        if is(me, n) {
            "you".to_string()
        } else {
            clean(n).into_owned()
        }
    };
    let because = |reason: &str| -> String {
        if reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", clean(reason))
        }
    };
    match event {
        RoomEvent::Joined { name } => format!("{} joined {r}.", who(name)),
        RoomEvent::Parted { name, reason } => format!("{} left {r}{}.", who(name), because(reason)),
        RoomEvent::Kicked { name, by, reason } => format!(
            "{} removed {} from {r}{}.",
            who(by),
            who(name),
            because(reason)
        ),
        RoomEvent::Banned { name, by, reason } => format!(
            "{} banned {} from {r}{}.",
            who(by),
            who(name),
            because(reason)
        ),
        RoomEvent::Unbanned { name, by } => {
            format!("{} lifted {}'s ban from {r}.", who(by), who(name))
        }
        RoomEvent::Topic { by, text: "" } => format!("{} cleared the topic of {r}.", who(by)),
        RoomEvent::Topic { by, text } => {
            format!("{} set the topic of {r}: {}", who(by), clean(text))
        }
        RoomEvent::Role { name, role, by } => format!(
            "{} made {} {} of {r}.",
            who(by),
            who(name),
            match role {
                Role::Owner => "an owner",
                Role::Op => "an op",
                Role::Member => "a member",
            }
        ),
        RoomEvent::Invited { by, expires_ms } => format!(
            "{} invites you to {r} (until {}): /join {r}, or /part {r} to decline.",
            who(by),
            clock.local(*expires_ms, true)
        ),
        RoomEvent::Privacy {
            privacy: Privacy::Private,
            by,
        } => format!("{} made {r} private: invitation only.", who(by)),
        RoomEvent::Privacy {
            privacy: Privacy::Public,
            by,
        } => format!("{} made {r} public.", who(by)),
        RoomEvent::Deleted { by } => format!("{} deleted {r}.", who(by)),
    }
}

/// `UNREAD` at login: where to start reading.
pub fn unread(room: &str, count: u64, first: u64) -> String {
    let r = clean(room);
    let what = if count == 1 {
        "1 unread message".to_string()
    } else {
        format!("{count} unread messages")
    };
    // A page holds at most 500; the command shows the first ones.
    let page = count.min(crate::config::HISTORY_MAX_COUNT.into());
    format!(
        "{r}: {what}; read them with /history {r} {page} after {}",
        first.saturating_sub(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::server_line::{parse, ServerLine};

    fn clock() -> Clock {
        Clock {
            tz: TimeZone::fixed(jiff::tz::offset(2)),
            now: "2026-11-21T12:00:00Z".parse().unwrap(),
        }
    }

    fn shown(line: &str, me: Option<&str>, history: bool) -> String {
        match parse(line) {
            ServerLine::Message(m) | ServerLine::History(m) => message(&m, me, &clock(), history),
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn messages_say_when_in_local_time_and_for_whom() {
        assert_eq!(
            shown(
                "MESSAGE 1 2026-11-21T10:04:05.123Z alice Bob hi",
                Some("bob"),
                false
            ),
            "[12:04] alice → you: hi"
        );
        assert_eq!(
            shown(
                "MESSAGE 2 2026-11-21T10:04:05.123Z alice bob,Carol,dave  hey",
                Some("carol"),
                false
            ),
            "[12:04] alice → group (bob, you, dave):  hey"
        );
        assert_eq!(
            shown(
                "MESSAGE 3 2026-11-20T23:59:00.000Z alice * yo",
                Some("bob"),
                false
            ),
            // 01:59 local on the 21st: today, so no date.
            "[01:59] alice → everyone: yo"
        );
        assert_eq!(
            shown(
                "MESSAGE 4 2026-11-19T08:00:00.000Z alice bob old",
                Some("bob"),
                false
            ),
            "[2026-11-19 10:00] alice → you: old"
        );
        assert_eq!(
            shown(
                "HISTORY 5 2026-11-21T10:00:00.000Z bob alice mine",
                Some("bob"),
                true
            ),
            "[2026-11-21 12:00] you → alice: mine"
        );
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(clean("a\u{1b}[2Jb\tc"), "a\u{fffd}[2Jb\tc");
        assert!(matches!(clean("plain"), Cow::Borrowed(_)));
        assert_eq!(
            friendship("x\u{7}", FriendshipEvent::Removed),
            "x\u{fffd} ended your friendship."
        );
    }

    #[test]
    fn rooms_in_words() {
        let line = |s: &str| match parse(s) {
            ServerLine::Room(r) => room(&r),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            line("ROOM #rust PUBLIC 12 MEMBER 3 Rust talk"),
            "  #rust (public, 12 members; you: member, 3 unread): Rust talk"
        );
        assert_eq!(
            line("ROOM #team PRIVATE 1 INVITED -"),
            "  #team (private, 1 member; you are invited)"
        );
        assert_eq!(
            line("ROOM #x PUBLIC 2 OWNER 0"),
            "  #x (public, 2 members; you: owner)"
        );
        let event = |s: &str| match parse(s) {
            ServerLine::RoomEvent { room, event } => {
                room_event(room, &event, Some("bob"), &clock())
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(event("JOINED #x alice"), "alice joined #x.");
        assert_eq!(
            event("KICKED #x bob alice off topic"),
            "alice removed you from #x (off topic)."
        );
        assert_eq!(event("TOPIC #x alice"), "alice cleared the topic of #x.");
        assert_eq!(event("ROLE #x bob OP alice"), "alice made you an op of #x.");
        assert_eq!(
            event("INVITED #x alice 2026-11-28T10:00:00.000Z"),
            "alice invites you to #x (until 2026-11-28 12:00): /join #x, or /part #x to decline."
        );
        assert_eq!(
            unread("#x", 3, 57),
            "#x: 3 unread messages; read them with /history #x 3 after 56"
        );
        assert_eq!(
            member("bob", Role::Op, Presence::Offline),
            "  bob (op, offline)"
        );
        assert_eq!(
            shown(
                "MESSAGE 9 2026-11-21T10:04:05.123Z alice #x \u{1b}hi",
                Some("bob"),
                false
            ),
            "[12:04] alice → #x: \u{fffd}hi"
        );
    }

    #[test]
    fn events_as_sentences() {
        assert_eq!(presence("bob", Presence::Online), "bob is online.");
        assert_eq!(
            friendship("bob", FriendshipEvent::Requested),
            "bob asks to be your friend: /friend accept bob or /friend deny bob."
        );
        assert_eq!(
            friend("bob", FriendState::Outgoing),
            "  bob: you asked; no answer yet"
        );
    }
}
