//! Server lines as sentences for people: local times, who a message was for, events in words.
//!
//! Everything here is pure: the time zone and the current time are parameters, so tests pin them.
//! Text that came from the server is cleaned of control characters before it reaches the terminal,
//! so a message cannot move the cursor, clear the screen or retitle the window.

use std::borrow::Cow;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::proto::server_line::{
    FriendState, FriendshipEvent, MessageLine, Presence, Recipient, TokenLine,
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
