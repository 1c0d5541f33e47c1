//! The text of the HELP command, as data.
//!
//! This module owns what a person typing into `nc` reads when they send `HELP`. Each command of
//! `spec/PROTOCOL.md` section 4 has one [`HelpEntry`], in the order the spec lists the commands. The
//! server renders the entries into `HELP` data lines (spec 4.5):
//!
//! - `HELP` with no argument: one line per entry, `HELP <syntax> -- <summary>`.
//! - `HELP <command>`: `HELP <syntax>`, then one `HELP <detail>` line per detail.
//!
//! The text is plain data so that it can be checked here (every command has an entry, every rendered
//! line fits [`MAX_HELP_LINE_BYTES`]) and shown by the bundled client without a server.

/// Longest rendered HELP line in bytes, `HELP ` prefix included, LF excluded. Short enough to read in
/// a terminal and far below the protocol's line limit.
pub const MAX_HELP_LINE_BYTES: usize = 200;

/// The help for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelpEntry {
    /// Canonical upper-case command name, as in final replies (`MSG`, `FRIEND`, ...).
    pub command: &'static str,
    /// One-line syntax, starting with the command name.
    pub syntax: &'static str,
    /// A few words on what the command does, for the index.
    pub summary: &'static str,
    /// What the command does and one example, one sentence-sized line each.
    pub details: &'static [&'static str],
    /// Whether the command needs a logged-in connection.
    pub needs_login: bool,
}

/// Every command, in the order of `spec/PROTOCOL.md` section 4.
pub const HELP: &[HelpEntry] = &[
    HelpEntry {
        command: "REGISTER",
        syntax: "REGISTER <name> <password>",
        summary: "create an account (then LOGIN)",
        details: &[
            "Creates an account. It does not log you in: send LOGIN next.",
            "<name>: 1 to 32 characters: a letter, then letters, digits, _ or -. \
             Letter case is shown as you typed it but ignored when comparing names.",
            "<password>: 8 to 128 bytes, no spaces, no control characters.",
            "Example: REGISTER alice wonderland1  (answer: OK REGISTER alice)",
        ],
        needs_login: false,
    },
    HelpEntry {
        command: "LOGIN",
        syntax: "LOGIN <name> <password>",
        summary: "log in and receive the messages kept for you",
        details: &[
            "Logs in. One account may be logged in on several connections at once; each gets its messages.",
            "After OK LOGIN come a PRESENCE line per friend and a FRIENDSHIP line per friend request waiting for you,",
            "then the messages sent while you were away (MESSAGE lines), then BACKLOG-END <how many>.",
            "Example: LOGIN alice wonderland1  (answer: OK LOGIN alice)",
        ],
        needs_login: false,
    },
    HelpEntry {
        command: "LOGOUT",
        syntax: "LOGOUT",
        summary: "log out but stay connected",
        details: &[
            "Logs out. The connection stays open: you can LOGIN again, or QUIT.",
            "Example: LOGOUT  (answer: OK LOGOUT)",
        ],
        needs_login: true,
    },
    HelpEntry {
        command: "QUIT",
        syntax: "QUIT [<reason>]",
        summary: "close the connection",
        details: &[
            "The server answers OK QUIT and closes the connection. The reason is optional and ignored.",
            "Example: QUIT see you tomorrow",
        ],
        needs_login: false,
    },
    HelpEntry {
        command: "HELP",
        syntax: "HELP [<command>]",
        summary: "list the commands, or explain one",
        details: &[
            "Without an argument: one line per command. With a command name: its syntax and what it does.",
            "Example: HELP HISTORY",
        ],
        needs_login: false,
    },
    HelpEntry {
        command: "PING",
        syntax: "PING [<token>]",
        summary: "check the connection (answer: PONG)",
        details: &[
            "The server answers PONG with the same token, then OK PING. The token is optional: \
             up to 64 bytes, no spaces.",
            "Example: PING 42  (answer: PONG 42, then OK PING)",
        ],
        needs_login: false,
    },
    HelpEntry {
        command: "MSG",
        syntax: "MSG <name> <text>",
        summary: "send a message to one user",
        details: &[
            "Sends <text> to one user. The text is everything after the name and one space, spaces included.",
            "Text: up to 2048 bytes, not blank, no control characters except TAB.",
            "Answer: OK MSG <id> DELIVERED (they are online and got it) or OK MSG <id> KEPT \
             (kept until they next log in).",
            "Example: MSG bob hello there",
        ],
        needs_login: true,
    },
    HelpEntry {
        command: "GROUP",
        syntax: "GROUP <name>,<name>,... <text>",
        summary: "send one message to several users",
        details: &[
            "Sends one message to up to 50 users: names separated by commas, without spaces.",
            "All or nothing: if a name is wrong or an offline recipient's inbox is full, nobody gets it.",
            "Answer: OK GROUP <id> DELIVERED <online recipients> KEPT <offline recipients>",
            "Example: GROUP bob,carol lunch at noon?",
        ],
        needs_login: true,
    },
    HelpEntry {
        command: "ALL",
        syntax: "ALL <text>",
        summary: "send a message to everyone online",
        details: &[
            "Sends a message to every other user online now. Users who are offline do not get it later,",
            "but anyone can read past ALL messages with HISTORY *.",
            "Answer: OK ALL <id> DELIVERED <how many users got it>",
            "Example: ALL good morning, everyone",
        ],
        needs_login: true,
    },
    HelpEntry {
        command: "USERS",
        syntax: "USERS",
        summary: "list the users online now",
        details: &[
            "Lists the users online now, one USER line each, then OK USERS <how many>.",
            "Example: USERS",
        ],
        needs_login: true,
    },
    HelpEntry {
        command: "HISTORY",
        syntax: "HISTORY <name>|* [<count>] [BEFORE <id>|AFTER <id>]",
        summary: "read past messages with a user, or * for ALL messages",
        details: &[
            "Shows past messages between you and <name>, oldest first. * shows the ALL messages.",
            "<count>: 1 to 500, default 50. Without BEFORE or AFTER you get the latest messages.",
            "BEFORE <id>: the latest ones older than <id>. AFTER <id>: the earliest ones newer than <id>.",
            "The last line says where to go on: OK HISTORY <name> <shown> BEFORE <id>|- AFTER <id>|- \
             (- means there is no more).",
            "Example: HISTORY bob 20, then HISTORY bob 20 BEFORE <id> with the BEFORE id of the last line.",
        ],
        needs_login: true,
    },
    HelpEntry {
        command: "FRIEND",
        syntax: "FRIEND ADD|ACCEPT|DENY|REMOVE <name> | FRIEND LIST",
        summary: "manage friends and friend requests",
        details: &[
            "FRIEND ADD <name>: ask <name> to be your friend. If they already asked you, you are friends at once.",
            "FRIEND ACCEPT <name> or FRIEND DENY <name>: answer a request.",
            "FRIEND REMOVE <name>: end a friendship, or withdraw your request.",
            "FRIEND LIST: friends (ONLINE or OFFLINE), then requests to you (INCOMING) and from you (OUTGOING).",
            "Friends see each other come and go: PRESENCE <name> ONLINE or PRESENCE <name> OFFLINE.",
            "Example: FRIEND ADD bob",
        ],
        needs_login: true,
    },
];

/// The entry for `topic`, ignoring letter case (`msg`, `Msg` and `MSG` all find MSG).
pub fn lookup(topic: &str) -> Option<&'static HelpEntry> {
    HELP.iter().find(|e| e.command.eq_ignore_ascii_case(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commands of spec section 4, in order. Kept here by hand on purpose: adding a command to the
    /// spec without help text, or reordering one, must fail this test.
    const SPEC_COMMANDS: &[&str] = &[
        "REGISTER", "LOGIN", "LOGOUT", "QUIT", "HELP", "PING", "MSG", "GROUP", "ALL", "USERS",
        "HISTORY", "FRIEND",
    ];

    /// Every data line the server renders from the table: the index lines and each entry's lines.
    fn rendered_lines() -> Vec<String> {
        let mut lines = Vec::new();
        for e in HELP {
            lines.push(format!("HELP {} -- {}", e.syntax, e.summary));
            lines.push(format!("HELP {}", e.syntax));
            for d in e.details {
                lines.push(format!("HELP {d}"));
            }
        }
        lines
    }

    #[test]
    fn one_entry_per_spec_command_in_spec_order() {
        let commands: Vec<&str> = HELP.iter().map(|e| e.command).collect();
        assert_eq!(commands, SPEC_COMMANDS);
    }

    #[test]
    fn lookup_ignores_letter_case() {
        for name in SPEC_COMMANDS {
            let lower = name.to_ascii_lowercase();
            let mixed: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }
                })
                .collect();
            for topic in [name.to_string(), lower, mixed] {
                assert_eq!(
                    lookup(&topic).map(|e| e.command),
                    Some(*name),
                    "topic {topic:?}"
                );
            }
        }
    }

    #[test]
    fn lookup_rejects_unknown_topics() {
        for topic in ["", "NOPE", "FRIEND ADD", "MSG ", "ADD", "*"] {
            assert!(lookup(topic).is_none(), "topic {topic:?}");
        }
    }

    #[test]
    fn syntax_starts_with_the_command() {
        for e in HELP {
            let first = e.syntax.split(' ').next().unwrap_or("");
            assert_eq!(first, e.command, "{}", e.syntax);
        }
    }

    #[test]
    fn login_requirement_matches_the_spec() {
        // Spec 3.1: REGISTER, LOGIN, QUIT, HELP and PING work without login; everything else needs it.
        let open: Vec<&str> = HELP
            .iter()
            .filter(|e| !e.needs_login)
            .map(|e| e.command)
            .collect();
        assert_eq!(open, ["REGISTER", "LOGIN", "QUIT", "HELP", "PING"]);
    }

    #[test]
    fn every_entry_has_details_with_an_example() {
        for e in HELP {
            assert!(!e.summary.is_empty(), "{}", e.command);
            assert!(
                e.details.iter().any(|d| d.starts_with("Example: ")),
                "{} has no example",
                e.command
            );
        }
    }

    #[test]
    fn no_line_exceeds_the_limit() {
        for line in rendered_lines() {
            assert!(
                line.len() <= MAX_HELP_LINE_BYTES,
                "{} bytes: {line}",
                line.len()
            );
        }
    }

    #[test]
    fn no_text_contains_a_newline_or_control_character() {
        for e in HELP {
            let texts = [e.command, e.syntax, e.summary]
                .into_iter()
                .chain(e.details.iter().copied());
            for t in texts {
                assert!(!t.chars().any(char::is_control), "{}: {t:?}", e.command);
                assert_eq!(t.trim(), t, "{}: stray spaces in {t:?}", e.command);
                assert!(!t.is_empty(), "{}: empty text", e.command);
            }
        }
    }
}
