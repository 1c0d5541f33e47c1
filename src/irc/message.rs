//! The IRC message codec: one line of IRC, parsed into tags, source, command and parameters, and
//! encoded back. Pure: no IO, no state.
//!
//! The grammar is the one of the Modern IRC client protocol document and the IRCv3 message-tags
//! specification: `['@' tags SP] [':' source SP] command *(SP param) [SP ':' trailing]`, lines ended
//! by CR LF (a bare LF is accepted). Tag values are escaped as message-tags says (`\:` for `;`,
//! `\s` for SP, `\\`, `\r`, `\n`). A parameter that holds a space, is empty or starts with `:` can
//! only be the last, and is encoded as a trailing parameter.

use std::fmt::Write as _;

use crate::config::{IRC_MAX_PARAMS, IRC_MAX_TAG_BYTES};

/// One IRC message. Borrowed from the line it was parsed from, except unescaped tag values.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Message {
    /// Tags, in the order sent: key and value (`None` for a tag without `=`).
    pub tags: Vec<(String, Option<String>)>,
    /// The source (prefix) without its `:`.
    pub source: Option<String>,
    /// The command as sent (a verb or a three-digit numeric); compare with
    /// [`Message::is`], which ignores case.
    pub command: String,
    /// The parameters, the trailing one included (without its `:`).
    pub params: Vec<String>,
    /// The last parameter is sent in the trailing form (after ` :`) even when it need not be, as
    /// servers send message text; set by the parser when the line had it.
    pub trailing: bool,
}

/// Why a line is not an IRC message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but spaces (a client may send an empty line: it is ignored, not answered).
    Empty,
    /// A tags section without a command after it, or a source without one.
    NoCommand,
    /// The tags section is longer than the message-tags allowance.
    TagsTooLong,
    /// A command that is not letters or three digits.
    BadCommand,
    /// More parameters than the protocol allows.
    TooManyParams,
}

impl Message {
    /// A message with this command and these parameters, no tags and no source.
    pub fn new(command: &str, params: &[&str]) -> Message {
        Message {
            tags: Vec::new(),
            source: None,
            command: command.to_owned(),
            params: params.iter().map(|p| (*p).to_owned()).collect(),
            trailing: false,
        }
    }

    /// True when the command is `verb`, ignoring ASCII case.
    pub fn is(&self, verb: &str) -> bool {
        self.command.eq_ignore_ascii_case(verb)
    }

    /// The `i`th parameter, if present.
    pub fn param(&self, i: usize) -> Option<&str> {
        self.params.get(i).map(String::as_str)
    }

    /// The value of tag `key`, if present (an empty string for a tag without a value).
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// Parses one line, without its CR LF (a trailing CR is removed).
    pub fn parse(line: &str) -> Result<Message, ParseError> {
        let mut rest = line.strip_suffix('\r').unwrap_or(line);
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Err(ParseError::Empty);
        }
        let mut msg = Message::default();
        if let Some(after) = rest.strip_prefix('@') {
            let end = after.find(' ').ok_or(ParseError::NoCommand)?;
            let raw = &after[..end];
            if raw.len() > IRC_MAX_TAG_BYTES {
                return Err(ParseError::TagsTooLong);
            }
            for item in raw.split(';').filter(|s| !s.is_empty()) {
                let (k, v) = match item.split_once('=') {
                    Some((k, v)) => (k, Some(unescape_tag(v))),
                    None => (item, None),
                };
                msg.tags.push((k.to_owned(), v));
            }
            rest = after[end..].trim_start_matches(' ');
        }
        if let Some(after) = rest.strip_prefix(':') {
            let end = after.find(' ').ok_or(ParseError::NoCommand)?;
            msg.source = Some(after[..end].to_owned());
            rest = after[end..].trim_start_matches(' ');
        }
        let end = rest.find(' ').unwrap_or(rest.len());
        let command = &rest[..end];
        if command.is_empty() {
            return Err(ParseError::NoCommand);
        }
        let numeric = command.len() == 3 && command.bytes().all(|b| b.is_ascii_digit());
        if !numeric && !command.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(ParseError::BadCommand);
        }
        msg.command = command.to_owned();
        rest = &rest[end..];
        loop {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                break;
            }
            if msg.params.len() == IRC_MAX_PARAMS {
                return Err(ParseError::TooManyParams);
            }
            if let Some(trailing) = rest.strip_prefix(':') {
                msg.params.push(trailing.to_owned());
                msg.trailing = true;
                break;
            }
            let end = rest.find(' ').unwrap_or(rest.len());
            msg.params.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
        Ok(msg)
    }

    /// Appends the message and its CR LF to `out`.
    pub fn encode(&self, out: &mut String) {
        if !self.tags.is_empty() {
            out.push('@');
            for (i, (k, v)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(';');
                }
                out.push_str(k);
                if let Some(v) = v {
                    out.push('=');
                    escape_tag(v, out);
                }
            }
            out.push(' ');
        }
        if let Some(s) = &self.source {
            out.push(':');
            out.push_str(s);
            out.push(' ');
        }
        out.push_str(&self.command);
        let last = self.params.len().saturating_sub(1);
        for (i, p) in self.params.iter().enumerate() {
            out.push(' ');
            if i == last && (self.trailing || needs_trailing(p)) {
                out.push(':');
            }
            out.push_str(p);
        }
        out.push_str("\r\n");
    }

    /// The message as a line with its CR LF.
    pub fn to_line(&self) -> String {
        let mut s = String::new();
        self.encode(&mut s);
        s
    }
}

/// True when a parameter can only be sent as the trailing one.
pub fn needs_trailing(p: &str) -> bool {
    p.is_empty() || p.starts_with(':') || p.contains(' ')
}

/// True when `p` can be a middle parameter: non-empty, no space, no leading `:`, no CR/LF/NUL.
pub fn is_middle(p: &str) -> bool {
    !needs_trailing(p) && !p.contains(['\r', '\n', '\0'])
}

/// Escapes a tag value as message-tags says.
fn escape_tag(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => {
                let _ = out.write_char(c);
            }
        }
    }
}

/// Unescapes a tag value: an unknown escape drops the backslash, a lone trailing backslash is
/// dropped (message-tags).
fn unescape_tag(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags_source_command_and_params() {
        let m = Message::parse(
            "@time=2026-01-01T00:00:00.000Z;msgid=7;+x :alice!a@h PRIVMSG #rust :hi there\r",
        )
        .unwrap();
        assert_eq!(m.tag("time"), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(m.tag("msgid"), Some("7"));
        assert_eq!(m.tag("+x"), Some(""));
        assert_eq!(m.source.as_deref(), Some("alice!a@h"));
        assert!(m.is("privmsg"));
        assert_eq!(m.params, ["#rust", "hi there"]);
    }

    #[test]
    fn encodes_the_last_param_as_trailing_only_when_it_must() {
        assert_eq!(Message::new("NICK", &["alice"]).to_line(), "NICK alice\r\n");
        assert_eq!(
            Message::new("PRIVMSG", &["#r", "a b"]).to_line(),
            "PRIVMSG #r :a b\r\n"
        );
        assert_eq!(
            Message::new("TOPIC", &["#r", ""]).to_line(),
            "TOPIC #r :\r\n"
        );
    }

    #[test]
    fn tag_values_round_trip_through_escapes() {
        let mut m = Message::new("TAGMSG", &["#r"]);
        m.tags.push(("k".into(), Some("a;b c\\d\r\n".into())));
        let line = m.to_line();
        assert_eq!(line, "@k=a\\:b\\sc\\\\d\\r\\n TAGMSG #r\r\n");
        assert_eq!(Message::parse(line.trim_end_matches('\n')).unwrap(), m);
    }

    #[test]
    fn refuses_what_is_not_a_message() {
        assert_eq!(Message::parse("   "), Err(ParseError::Empty));
        assert_eq!(Message::parse("@a=b"), Err(ParseError::NoCommand));
        assert_eq!(Message::parse(":src"), Err(ParseError::NoCommand));
        assert_eq!(Message::parse("PR1VMSG x"), Err(ParseError::BadCommand));
        let many = format!("CMD{}", " x".repeat(IRC_MAX_PARAMS + 1));
        assert_eq!(Message::parse(&many), Err(ParseError::TooManyParams));
        let at_limit = format!("CMD{}", " x".repeat(IRC_MAX_PARAMS));
        assert!(Message::parse(&at_limit).is_ok());
        let tags = format!("@k={} CMD", "v".repeat(IRC_MAX_TAG_BYTES));
        assert_eq!(Message::parse(&tags), Err(ParseError::TagsTooLong));
        let tags = format!("@k={} CMD", "v".repeat(IRC_MAX_TAG_BYTES - 2));
        assert!(Message::parse(&tags).is_ok());
    }
}
