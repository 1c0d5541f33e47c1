//! The IRC front end under arbitrary input: the codec's round trip, and a session fed arbitrary
//! client lines and server lines.

use crate::config::{IRC_MAX_LINE_BYTES, MAX_LINE_BYTES};
use crate::irc::{Effects, Message, Session};

/// The input is split at the first NUL: before it, lines a client sends (LF separated); after it,
/// lines the core sends. Checks:
/// - every client line that parses encodes to a line that parses back to the same message;
/// - the session never panics, every line it sends the client parses as IRC and has at most 512
///   bytes without its tags, and every line it hands the core is one line of at most the line
///   protocol's limit.
pub fn check_irc(data: &[u8]) {
    let (client, server) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let client = String::from_utf8_lossy(client);
    let mut session = Session::new("fuzz");
    // A login the session believes in, so that later lines reach the logged-in commands.
    let mut fx = Effects::default();
    for line in ["CAP LS 302", "CAP REQ :sasl server-time message-tags echo-message batch multi-prefix away-notify draft/chathistory", "NICK fuzz", "USER fuzz 0 * :f", "AUTHENTICATE PLAIN", "AUTHENTICATE AGZ1enoAcGFzc3dvcmQx", "CAP END"] {
        session.client_line(line, &mut fx);
    }
    session.server_bytes(b"OK @i1 LOGIN fuzz\nBACKLOG-END 0\n", &mut fx);
    assert!(
        fx.client.contains(" 001 fuzz "),
        "the canned login is taken"
    );
    check_effects(&fx);
    for line in client.split('\n') {
        if let Ok(m) = Message::parse(line) {
            let encoded = m.to_line();
            let again = Message::parse(encoded.strip_suffix('\n').unwrap_or(&encoded))
                .expect("an encoded message parses");
            assert_eq!(again, m, "{encoded:?}");
        }
        let mut fx = Effects::default();
        session.client_line(line, &mut fx);
        check_effects(&fx);
    }
    let mut fx = Effects::default();
    session.server_bytes(server, &mut fx);
    check_effects(&fx);
}

fn check_effects(fx: &Effects) {
    for line in fx.client.split_inclusive('\n') {
        assert!(line.ends_with("\r\n"), "{line:?}");
        let m = Message::parse(line.trim_end_matches('\n')).expect("the session sends IRC");
        let tags = if m.tags.is_empty() {
            0
        } else {
            line.find(' ').map_or(0, |i| i + 1)
        };
        assert!(line.len() - tags <= IRC_MAX_LINE_BYTES, "{line:?}");
    }
    for line in &fx.core {
        assert!(
            !line.contains('\n') && line.len() < MAX_LINE_BYTES,
            "{line:?}"
        );
    }
}
