//! Reply codes and the encoders of every line the server sends.
//!
//! Each FAIL code is one [`Code`] variant with one meaning; `spec/replies.tsv` lists the same codes
//! and a test keeps the two in step. Encoders append to a caller's buffer so a line is built once,
//! however many connections receive it.

use std::fmt::Write;

use super::time::write_timestamp;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident ),* $(,)?) => {
        /// A machine code carried by a `FAIL` line.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)] // the variants are the wire codes, spelled as sent
        pub enum Code { $( $(#[$doc])* $variant, )* }

        impl Code {
            /// Every code, in declaration order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => stringify!($variant),)* }
            }
        }
    };
}

codes! {
    /// A line longer than 4096 bytes; it was discarded.
    LINE_TOO_LONG,
    /// A line that is not valid UTF-8.
    BAD_ENCODING,
    /// A malformed `@label`.
    BAD_LABEL,
    /// The command (or HELP topic) is not known.
    UNKNOWN_COMMAND,
    /// FRIEND with an unknown subcommand.
    UNKNOWN_SUBCOMMAND,
    /// Fewer arguments than the command needs.
    MISSING_ARGUMENT,
    /// More arguments than the command takes.
    TOO_MANY_ARGUMENTS,
    /// An argument of the wrong form not covered by a more specific code.
    BAD_ARGUMENT,
    /// The command needs a logged-in connection.
    NOT_LOGGED_IN,
    /// REGISTER or LOGIN on a logged-in connection.
    ALREADY_LOGGED_IN,
    /// A name that breaks the name rules.
    BAD_NAME,
    /// A password that breaks the password rules.
    BAD_PASSWORD,
    /// REGISTER of a name already registered (in any letter case).
    NAME_TAKEN,
    /// LOGIN with an unknown name or a wrong password.
    BAD_CREDENTIALS,
    /// No account has that name.
    UNKNOWN_USER,
    /// Message text that is blank or holds control characters.
    BAD_TEXT,
    /// Message text over 2048 bytes.
    TEXT_TOO_LONG,
    /// A GROUP list names someone twice.
    DUPLICATE_NAME,
    /// A GROUP list with more than 50 names.
    TOO_MANY_RECIPIENTS,
    /// An offline recipient already has 1000 messages waiting.
    INBOX_FULL,
    /// A HISTORY count that is not a number from 1 to 500.
    BAD_COUNT,
    /// A message id that is not a number.
    BAD_ID,
    /// A FRIEND command naming yourself.
    SELF_TARGET,
    /// FRIEND ADD of someone who is already a friend.
    ALREADY_FRIENDS,
    /// FRIEND ADD repeated while the first request is pending.
    ALREADY_REQUESTED,
    /// FRIEND ACCEPT or DENY with no request from that user.
    NO_REQUEST,
    /// FRIEND REMOVE of someone who is neither a friend nor asked.
    NOT_FRIENDS,
    /// Too much password hashing is queued; try again shortly.
    SERVER_BUSY,
    /// The server failed internally; the details are in its log.
    INTERNAL_ERROR,
}

/// Why the server closes a connection on its own (`BYE <code> <text>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)] // the variants are the wire codes, spelled as sent
pub enum ByeCode {
    /// The server is stopping.
    SHUTDOWN,
    /// The client did not read and its outbox overflowed.
    SLOW_CONSUMER,
    /// The connection limit is reached.
    SERVER_FULL,
}

impl ByeCode {
    /// Every BYE code.
    pub const ALL: &'static [ByeCode] = &[
        ByeCode::SHUTDOWN,
        ByeCode::SLOW_CONSUMER,
        ByeCode::SERVER_FULL,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeCode::SHUTDOWN => "SHUTDOWN",
            ByeCode::SLOW_CONSUMER => "SLOW_CONSUMER",
            ByeCode::SERVER_FULL => "SERVER_FULL",
        }
    }
}

/// Whom a delivered message was addressed to, as shown in MESSAGE and HISTORY lines.
#[derive(Clone, Copy, Debug)]
pub enum Recipients<'a> {
    /// One user (MSG).
    User(&'a str),
    /// The list a GROUP was sent to.
    Group(&'a [String]),
    /// Everyone (ALL), shown as `*`.
    All,
}

fn label_prefix(out: &mut String, label: Option<&str>) {
    if let Some(l) = label {
        out.push('@');
        out.push_str(l);
        out.push(' ');
    }
}

/// Appends `OK [@label] <command>[ <details>]`.
pub fn ok(out: &mut String, label: Option<&str>, command: &str, details: &str) {
    out.push_str("OK ");
    label_prefix(out, label);
    out.push_str(command);
    if !details.is_empty() {
        out.push(' ');
        out.push_str(details);
    }
    out.push('\n');
}

/// Appends `FAIL [@label] <command> <code> <text>`.
pub fn fail(out: &mut String, label: Option<&str>, command: &str, code: Code, text: &str) {
    out.push_str("FAIL ");
    label_prefix(out, label);
    out.push_str(command);
    out.push(' ');
    out.push_str(code.as_str());
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

/// Appends a data or push line: `<tag> <rest>` (or just `<tag>` when `rest` is empty).
pub fn line(out: &mut String, tag: &str, rest: &str) {
    out.push_str(tag);
    if !rest.is_empty() {
        out.push(' ');
        out.push_str(rest);
    }
    out.push('\n');
}

/// Appends `<tag> <id> <time> <from> <to> <text>`, the form of `MESSAGE` pushes and `HISTORY` lines.
pub fn message(
    out: &mut String,
    tag: &str,
    id: u64,
    time_ms: i64,
    from: &str,
    to: Recipients<'_>,
    text: &str,
) {
    let _ = write!(out, "{tag} {id} ");
    write_timestamp(out, time_ms);
    out.push(' ');
    out.push_str(from);
    out.push(' ');
    match to {
        Recipients::User(u) => out.push_str(u),
        Recipients::Group(list) => {
            for (i, n) in list.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(n);
            }
        }
        Recipients::All => out.push('*'),
    }
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

/// Appends `BYE <code> <text>`.
pub fn bye(out: &mut String, code: ByeCode, text: &str) {
    out.push_str("BYE ");
    out.push_str(code.as_str());
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_replies_with_and_without_labels() {
        let mut s = String::new();
        ok(&mut s, None, "MSG", "7 DELIVERED");
        ok(&mut s, Some("x1"), "LOGOUT", "");
        fail(
            &mut s,
            Some("q"),
            "LOGIN",
            Code::BAD_CREDENTIALS,
            "wrong name or password",
        );
        bye(&mut s, ByeCode::SHUTDOWN, "the server is stopping");
        assert_eq!(
            s,
            "OK MSG 7 DELIVERED\nOK @x1 LOGOUT\nFAIL @q LOGIN BAD_CREDENTIALS wrong name or password\n\
             BYE SHUTDOWN the server is stopping\n"
        );
    }

    #[test]
    fn encodes_messages() {
        let mut s = String::new();
        let group = ["Bob".to_string(), "carol".to_string()];
        message(
            &mut s,
            "MESSAGE",
            3,
            0,
            "alice",
            Recipients::Group(&group),
            " hi  there",
        );
        message(&mut s, "HISTORY", 4, 1, "alice", Recipients::All, "x");
        assert_eq!(
            s,
            "MESSAGE 3 1970-01-01T00:00:00.000Z alice Bob,carol  hi  there\n\
             HISTORY 4 1970-01-01T00:00:00.001Z alice * x\n"
        );
    }

    #[test]
    fn codes_are_unique_and_upper_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()));
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
    }
}
