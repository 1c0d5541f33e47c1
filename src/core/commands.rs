//! The command table: one row per command, checked once before any handler runs.
//!
//! A row says what the core does with a command whose line parsed (its syntax, arity and usage are
//! the codec's, in `proto::command`): the connection state it needs, whether it waits for the
//! connection's earlier commands, its help text, and its handler. [`Core::process`] checks the state
//! for every command in one place, in the order of spec 3.2; HELP is rendered from these rows.
//!
//! Adding a command: its syntax in `proto::command` (a `Verb`, a row of `COMMANDS`, its arguments in
//! `parse_args` and `Request::encode`), one row here, its handler in a file of its own (or of its
//! group), and its spec section, conformance cases and transcripts.

use super::{Core, Req};
use crate::proto::command::{Command, Verb};
use crate::proto::room::Target;

/// The connection state a command needs (spec 3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Connected or logged in.
    Any,
    /// Logged in; otherwise `NOT_LOGGED_IN`.
    LoggedIn,
    /// Not logged in; otherwise `ALREADY_LOGGED_IN`.
    LoggedOut,
}

/// The core's row for one command.
pub struct Row {
    /// The command.
    pub verb: Verb,
    /// The state it needs.
    pub state: Needs,
    /// It runs only once every earlier command of the connection is answered, because it changes
    /// what the connection is (QUIT, LOGOUT).
    pub barrier: bool,
    /// A few words on what it does, for the HELP index.
    pub summary: &'static str,
    /// What it does and one example, one short line each, for `HELP <command>`.
    pub details: &'static [&'static str],
    /// The handler. It answers the command through the [`Req`], now or when its job comes back.
    pub(super) run: fn(&mut Core, Req, Command),
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("verb", &self.verb)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The row of `verb`.
pub(super) fn row(verb: Verb) -> &'static Row {
    COMMANDS
        .iter()
        .find(|r| r.verb == verb)
        .expect("every verb has a row; checked by a test")
}

impl Core {
    /// A handler was given a command of another verb: the table is wrong. Answered as an internal
    /// error rather than a panic.
    fn mismatch(&mut self, req: Req, cmd: Command) {
        let detail = format!(
            "{:?} dispatched to the handler of {:?}",
            cmd.verb(),
            req.verb
        );
        self.internal_error(req, &detail);
    }
}

/// Every command, in the order of the spec (section 4).
pub static COMMANDS: &[Row] = &[
    Row {
        verb: Verb::Register,
        state: Needs::LoggedOut,
        barrier: false,
        summary: "create an account (then LOGIN)",
        details: &[
            "Creates an account. It does not log you in: send LOGIN next.",
            "<name>: 1 to 32 characters: a letter, then letters, digits, _ or -. \
             Letter case is shown as you typed it but ignored when comparing names.",
            "<password>: 8 to 128 bytes, no spaces, no control characters.",
            "Example: REGISTER alice wonderland1  (answer: OK REGISTER alice)",
        ],
        run: |core, req, cmd| match cmd {
            Command::Register { name, password } => core.register(req, name, password),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Login,
        state: Needs::LoggedOut,
        barrier: false,
        summary: "log in and receive the messages kept for you",
        details: &[
            "Logs in. One account may be logged in on several connections at once; each gets its messages.",
            "After OK LOGIN come a PRESENCE line per friend and a FRIENDSHIP line per friend request waiting for you,",
            "then the messages sent while you were away (MESSAGE lines), then BACKLOG-END <how many>.",
            "Example: LOGIN alice wonderland1  (answer: OK LOGIN alice)",
        ],
        run: |core, req, cmd| match cmd {
            Command::Login { name, password } => core.login(req, name, password),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Logout,
        state: Needs::LoggedIn,
        barrier: true,
        summary: "log out but stay connected",
        details: &[
            "Logs out. The connection stays open: you can LOGIN again, or QUIT.",
            "Example: LOGOUT  (answer: OK LOGOUT)",
        ],
        run: |core, req, cmd| match cmd {
            Command::Logout => core.logout(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Quit,
        state: Needs::Any,
        barrier: true,
        summary: "close the connection",
        details: &[
            "The server answers OK QUIT and closes the connection. The reason is optional and ignored.",
            "Example: QUIT see you tomorrow",
        ],
        run: |core, req, cmd| match cmd {
            Command::Quit { .. } => core.quit(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Help,
        state: Needs::Any,
        barrier: false,
        summary: "list the commands, or explain one",
        details: &[
            "Without an argument: one line per command. With a command name: its syntax and what it does.",
            "Example: HELP HISTORY",
        ],
        run: |core, req, cmd| match cmd {
            Command::Help { topic } => core.help(req, topic),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Ping,
        state: Needs::Any,
        barrier: false,
        summary: "check the connection (answer: PONG)",
        details: &[
            "The server answers PONG with the same token, then OK PING. The token is optional: \
             up to 64 bytes, no spaces.",
            "Example: PING 42  (answer: PONG 42, then OK PING)",
        ],
        run: |core, req, cmd| match cmd {
            Command::Ping { token } => core.ping(req, token),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Msg,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "send a message to one user, or to a room",
        details: &[
            "Sends <text> to one user, or to every member of a room you are in (#name).",
            "The text is everything after the name and one space, spaces included.",
            "Text: up to 2048 bytes, not blank, no control characters except TAB.",
            "Answer: OK MSG <id> DELIVERED (they are online and got it) or OK MSG <id> KEPT \
             (kept until they next log in).",
            "To a room: OK MSG <id> DELIVERED <members online who got it>; the others read it later.",
            "Example: MSG bob hello there, or MSG #rust hello everyone",
        ],
        run: |core, req, cmd| match cmd {
            Command::Msg {
                to: Target::User(to),
                text,
            } => core.send_direct(req, vec![to], text),
            Command::Msg {
                to: Target::Room(room),
                text,
            } => core.send_room(req, room, text),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Group,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "send one message to several users",
        details: &[
            "Sends one message to up to 50 users: names separated by commas, without spaces.",
            "All or nothing: if a name is wrong or an offline recipient's inbox is full, nobody gets it.",
            "Answer: OK GROUP <id> DELIVERED <online recipients> KEPT <offline recipients>",
            "Example: GROUP bob,carol lunch at noon?",
        ],
        run: |core, req, cmd| match cmd {
            Command::Group { to, text } => core.send_direct(req, to, text),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::All,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "send a message to everyone online",
        details: &[
            "Sends a message to every other user online now. Users who are offline do not get it later,",
            "but anyone can read past ALL messages with HISTORY *.",
            "Answer: OK ALL <id> DELIVERED <how many users got it>",
            "Example: ALL good morning, everyone",
        ],
        run: |core, req, cmd| match cmd {
            Command::All { text } => core.send_all(req, text),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Users,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "list the users online now",
        details: &[
            "Lists the users online now, one USER line each, then OK USERS <how many>.",
            "Example: USERS",
        ],
        run: |core, req, cmd| match cmd {
            Command::Users => core.users(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::History,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "read past messages with a user, of a room, or * for ALL messages",
        details: &[
            "Shows past messages between you and <name>, or of a room you are in, oldest first.",
            "* shows the ALL messages. Of a private room you see what was said since you joined.",
            "<count>: 1 to 500, default 50. Without BEFORE or AFTER you get the latest messages.",
            "BEFORE <id>: the latest ones older than <id>. AFTER <id>: the earliest ones newer than <id>.",
            "The last line says where to go on: OK HISTORY <name> <shown> BEFORE <id>|- AFTER <id>|- \
             (- means there is no more).",
            "Example: HISTORY bob 20, then HISTORY bob 20 BEFORE <id> with the BEFORE id of the last line.",
        ],
        run: |core, req, cmd| match cmd {
            Command::History {
                with,
                count,
                cursor,
            } => core.history(req, with, count, cursor),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Friend,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "manage friends and friend requests",
        details: &[
            "FRIEND ADD <name>: ask <name> to be your friend. If they already asked you, you are friends at once.",
            "FRIEND ACCEPT <name> or FRIEND DENY <name>: answer a request.",
            "FRIEND REMOVE <name>: end a friendship, or withdraw your request.",
            "FRIEND LIST: friends (ONLINE or OFFLINE), then requests to you (INCOMING) and from you (OUTGOING).",
            "Friends see each other come and go: PRESENCE <name> ONLINE or PRESENCE <name> OFFLINE.",
            "Example: FRIEND ADD bob",
        ],
        run: |core, req, cmd| match cmd {
            Command::Friend(op) => core.friend(req, op),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Join,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "join a room, or create it",
        details: &[
            "Makes you a member of the room, until you PART. A room that does not exist is created, \
             public, with you as its owner.",
            "A private room needs an invitation (INVITE). Membership lasts across logins and restarts.",
            "Answer: a ROOM line, the room's latest messages (HISTORY lines, up to 20), then \
             OK JOIN <#room> CREATED|JOINED|MEMBER.",
            "Example: JOIN #rust",
        ],
        run: |core, req, cmd| match cmd {
            Command::Join { room } => core.join(req, room),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Part,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "leave a room for good (or decline an invitation)",
        details: &[
            "Ends your membership; the members online see PARTED with your reason. You may JOIN again.",
            "The last owner cannot leave: make someone else owner (ROLE) or delete the room first.",
            "PART of a room you are only invited to declines the invitation.",
            "Example: PART #rust see you all",
        ],
        run: |core, req, cmd| match cmd {
            Command::Part { room, reason } => core.part(req, room, reason),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Rooms,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "list your rooms, your invitations, then public rooms",
        details: &[
            "One ROOM line per room: ROOM <#room> PUBLIC|PRIVATE <members> <your role>|INVITED|- \
             <unread>|- <topic>.",
            "First the rooms you are in, then those you are invited to, then public rooms \
             (the 500 with the most members).",
            "Example: ROOMS",
        ],
        run: |core, req, cmd| match cmd {
            Command::Rooms => core.rooms_list(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Members,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "list a room's members, with role and presence",
        details: &[
            "One line per member: MEMBER <#room> <name> OWNER|OP|MEMBER ONLINE|OFFLINE; owners \
             first, then ops, then members.",
            "Anyone may list a public room; a private room, its members and invitees.",
            "Example: MEMBERS #rust",
        ],
        run: |core, req, cmd| match cmd {
            Command::Members { room } => core.members(req, room),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Topic,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "show a room's topic, or set it (op or owner)",
        details: &[
            "Without a text: OK TOPIC <#room> <set by> <when> <topic> (- - when never set).",
            "With a text (up to 300 bytes), ops and owners set it; - alone clears it. \
             Members online see TOPIC.",
            "Example: TOPIC #rust Rust talk; be kind",
        ],
        run: |core, req, cmd| match cmd {
            Command::Topic { room, change } => core.topic(req, room, change),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Invite,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "invite someone to a room (op or owner)",
        details: &[
            "Lets <name> JOIN a private room (in a public one, it tells them about it). They see \
             INVITED now or at their next login.",
            "An invitation lasts 7 days; inviting again renews it. PART declines one.",
            "Example: INVITE #team carol",
        ],
        run: |core, req, cmd| match cmd {
            Command::Invite { room, name } => core.invite(req, room, name),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Kick,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "remove a member of lower role (op or owner)",
        details: &[
            "Ends <name>'s membership; they may JOIN again (a private room needs a new invitation).",
            "Owners remove ops and members, ops remove members. Members online see KICKED.",
            "Example: KICK #rust mallory please stay on topic",
        ],
        run: |core, req, cmd| match cmd {
            Command::Kick { room, name, reason } => core.kick(req, room, name, reason),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Ban,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "remove someone and keep them out (op or owner)",
        details: &[
            "Puts <name> on the room's ban list (at most 100) and ends their membership; they cannot \
             JOIN until UNBAN.",
            "A member must have a lower role than yours. Members online see BANNED.",
            "Example: BAN #rust mallory spam",
        ],
        run: |core, req, cmd| match cmd {
            Command::Ban { room, name, reason } => core.ban(req, room, name, reason),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Unban,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "lift a ban (op or owner)",
        details: &[
            "Takes <name> off the room's ban list: they may JOIN again. ROOM INFO lists the bans.",
            "Example: UNBAN #rust mallory",
        ],
        run: |core, req, cmd| match cmd {
            Command::Unban { room, name } => core.unban(req, room, name),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Role,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "make a member owner, op or member (owner)",
        details: &[
            "Owners set the role of any member but another owner; an owner may step down unless \
             they are the last one.",
            "Example: ROLE #rust bob OP",
        ],
        run: |core, req, cmd| match cmd {
            Command::Role { room, name, role } => core.role(req, room, name, role),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Room,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "a room's settings, and its deletion",
        details: &[
            "ROOM INFO <#room>: its ROOM line; for ops and owners, its bans and invitations too.",
            "ROOM PRIVATE <#room> or ROOM PUBLIC <#room> (owner): invite only, or open to anyone.",
            "ROOM DELETE <#room> (owner): removes the room for everyone; its name is free again.",
            "Example: ROOM PRIVATE #team",
        ],
        run: |core, req, cmd| match cmd {
            Command::Room { sub, room } => core.room_command(req, sub, room),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Read,
        state: Needs::LoggedIn,
        barrier: false,
        summary: "mark a conversation read up to a message",
        details: &[
            "Moves your read marker of a room or of the conversation with <name> forward to <id>; \
             your other connections see READ.",
            "Without an id it shows the marker. Unread counts (ROOMS, and UNREAD at login) follow it.",
            "Example: READ #rust 1234",
        ],
        run: |core, req, cmd| match cmd {
            Command::Read { target, id } => core.read(req, target, id),
            cmd => core.mismatch(req, cmd),
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_HELP_LINE_BYTES;
    use crate::proto::command::COMMANDS as SYNTAX;

    #[test]
    fn one_row_per_verb_in_the_order_of_the_syntax_table() {
        let rows: Vec<Verb> = COMMANDS.iter().map(|r| r.verb).collect();
        let syntax: Vec<Verb> = SYNTAX.iter().map(|s| s.verb).collect();
        assert_eq!(rows, syntax);
    }

    #[test]
    fn login_requirement_matches_the_spec() {
        // Spec 3.1: REGISTER and LOGIN need a connection that is not logged in; QUIT, HELP and PING
        // work in any state; everything else needs a login.
        let by = |n: Needs| -> Vec<&str> {
            COMMANDS
                .iter()
                .filter(|r| r.state == n)
                .map(|r| r.verb.name())
                .collect()
        };
        assert_eq!(by(Needs::LoggedOut), ["REGISTER", "LOGIN"]);
        assert_eq!(by(Needs::Any), ["QUIT", "HELP", "PING"]);
        assert_eq!(by(Needs::LoggedIn).len(), COMMANDS.len() - 5);
    }

    #[test]
    fn every_row_has_help_with_an_example_that_fits_a_line() {
        for r in COMMANDS {
            let usage = r.verb.syntax().usage;
            assert!(!r.summary.is_empty(), "{usage}");
            assert!(
                r.details.iter().any(|d| d.starts_with("Example: ")),
                "{usage} has no example"
            );
            let lines = std::iter::once(format!("HELP {usage} -- {}", r.summary))
                .chain(r.details.iter().map(|d| format!("HELP {d}")));
            for line in lines {
                assert!(
                    line.len() <= MAX_HELP_LINE_BYTES,
                    "{} bytes: {line}",
                    line.len()
                );
                assert!(!line.chars().any(char::is_control), "{line:?}");
                assert_eq!(line.trim(), line, "stray spaces in {line:?}");
            }
        }
    }
}
