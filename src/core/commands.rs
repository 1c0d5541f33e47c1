//! The command table: one row per command, checked once before any handler runs.
//!
//! A row says what the core does with a command whose line parsed (its syntax, arity and usage are
//! the codec's, in `proto::command`): the connection state it needs, whether it waits for the
//! connection's earlier commands, whether it writes or reads the store (which matters while writes
//! fail), its help text, and its handler. [`Core::process`] checks the state
//! for every command in one place, in the order of spec 3.2; HELP is rendered from these rows.
//!
//! Adding a command: its syntax in `proto::command` (a `Verb`, a row of `COMMANDS`, its arguments in
//! `parse_args` and `Request::encode`), one row here, its handler in a file of its own (or of its
//! group), and its spec section, conformance cases and transcripts.

use super::{Core, Req};
use crate::proto::command::{Command, FriendOp, RoomSub, Verb};
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
    /// Logged in (otherwise `NOT_LOGGED_IN`) as one of the server's admins (otherwise
    /// `NOT_ADMIN`).
    Admin,
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
    /// Whether this command (with these arguments) writes to the store: while writes fail, it is
    /// refused with STORAGE_UNAVAILABLE (spec 6.6), before its handler runs.
    pub writes: fn(&Command) -> bool,
    /// It reads the store for its answer: while writes fail, it runs only once every earlier
    /// command of the connection is answered, so that its read sees what they wrote (spec 6.6).
    pub reads: bool,
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
        writes: |_| true,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |_| true,
        reads: false,
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
            } => core.send_direct(req, std::slice::from_ref(&to), text),
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
        writes: |_| true,
        reads: false,
        summary: "send one message to several users",
        details: &[
            "Sends one message to up to 50 users: names separated by commas, without spaces.",
            "All or nothing: if a name is wrong or an offline recipient's inbox is full, nobody gets it.",
            "Answer: OK GROUP <id> DELIVERED <online recipients> KEPT <offline recipients>",
            "Example: GROUP bob,carol lunch at noon?",
        ],
        run: |core, req, cmd| match cmd {
            Command::Group { to, text } => core.send_direct(req, &to, text),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::All,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |_| false,
        reads: true,
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
        writes: |cmd| !matches!(cmd, Command::Friend(FriendOp::List)),
        reads: false,
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
        verb: Verb::Token,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "get a device token, to log in again without your password",
        details: &[
            "Issues a token for this account and shows it once: OK TOKEN <id> <token>. Keep it secret.",
            "RESUME <token> then logs in as you with no password, until the token expires or is revoked.",
            "A token expires 30 days after its last use, and 180 days after it was issued at the latest.",
            "The label (up to 64 bytes) is for you, to tell your devices apart in TOKENS. At most 20 tokens.",
            "Example: TOKEN laptop",
        ],
        run: |core, req, cmd| match cmd {
            Command::Token { label } => core.token(req, label),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Resume,
        state: Needs::LoggedOut,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "log in with a device token instead of a password",
        details: &[
            "Logs in with a token from TOKEN, exactly as LOGIN does: the same pushes and backlog follow.",
            "An unknown, expired or revoked token gets FAIL RESUME BAD_TOKEN; log in with LOGIN then.",
            "Example: RESUME ct1.0123456789abcdef.<secret>",
        ],
        run: |core, req, cmd| match cmd {
            Command::Resume { token } => core.resume(req, token),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Tokens,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "list your device tokens",
        details: &[
            "One line per token that has not expired, oldest first:",
            "TOKEN <id> <created> <last used> <expires> CURRENT|OTHER <label>",
            "CURRENT marks the token this connection logged in with or was issued. Secrets are never shown.",
            "Example: TOKENS",
        ],
        run: |core, req, cmd| match cmd {
            Command::Tokens => core.list_tokens(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Revoke,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "revoke a device token, or all of them",
        details: &[
            "REVOKE <id> revokes one token (the id is from TOKENS); REVOKE ALL revokes every one.",
            "A revoked token no longer logs in. Your other connections on it are closed (BYE REVOKED);",
            "this one stays logged in. Answer: OK REVOKE <tokens revoked> CLOSED <connections closed>",
            "Example: REVOKE 0123456789abcdef",
        ],
        run: |core, req, cmd| match cmd {
            Command::Revoke(which) => core.revoke(req, which),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Password,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "change your password",
        details: &[
            "Changes your password. <new> follows the rules of REGISTER.",
            "Every device token but the one this connection is on is revoked, and your other connections",
            "are closed (BYE REVOKED): anyone who knew the old password is logged out.",
            "Answer: OK PASSWORD REVOKED <tokens revoked> CLOSED <connections closed>",
            "Example: PASSWORD wonderland1 looking-glass2",
        ],
        run: |core, req, cmd| match cmd {
            Command::Password { old, new } => core.password(req, old, new),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Unregister,
        state: Needs::LoggedIn,
        barrier: true,
        writes: |_| true,
        reads: false,
        summary: "delete your account",
        details: &[
            "Deletes your account at once, with its tokens, friendships, blocks and kept messages.",
            "Messages you sent stay in the others' history under your name. The name is never free again.",
            "This connection stays open, logged out; your other connections are closed (BYE ACCOUNT_DELETED).",
            "Example: UNREGISTER wonderland1",
        ],
        run: |core, req, cmd| match cmd {
            Command::Unregister { password } => core.unregister(req, password),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Block,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "stop an account from reaching you",
        details: &[
            "Blocks <name>: their MSG, GROUP and FRIEND ADD to you fail with BLOCKED, and their ALL messages",
            "no longer reach you. A friendship or request between you ends. You cannot message them either.",
            "Example: BLOCK mallory",
        ],
        run: |core, req, cmd| match cmd {
            Command::Block { name } => core.block(req, name),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Unblock,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "lift a block",
        details: &[
            "Lifts your block of <name>. A friendship it ended does not come back.",
            "Example: UNBLOCK mallory",
        ],
        run: |core, req, cmd| match cmd {
            Command::Unblock { name } => core.unblock(req, name),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Blocks,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "list the accounts you block",
        details: &[
            "One BLOCKED <name> line per account you block, then OK BLOCKS <how many>.",
            "Example: BLOCKS",
        ],
        run: |core, req, cmd| match cmd {
            Command::Blocks => core.list_blocks(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Dms,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |cmd| matches!(cmd, Command::Dms(Some(_))),
        reads: false,
        summary: "take direct messages from friends only, or from everyone",
        details: &[
            "DMS FRIENDS: MSG and GROUP from anyone but your friends fail with FRIENDS_ONLY.",
            "DMS EVERYONE (the default): anyone you do not block may write to you. DMS alone shows the setting.",
            "Example: DMS FRIENDS",
        ],
        run: |core, req, cmd| match cmd {
            Command::Dms(policy) => core.dms(req, policy),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Away,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "set an away message, or clear it",
        details: &[
            "AWAY <text> sets your away message (up to 200 bytes); AWAY alone clears it. It stays set",
            "when you log out, until you clear it. Friends see it (AWAY <you> <text>), and so does whoever",
            "writes to you: an AWAY line follows their OK.",
            "Example: AWAY at lunch, back at 2",
        ],
        run: |core, req, cmd| match cmd {
            Command::Away { text } => core.away(req, text),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Whois,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "is a user online, away, or when last seen",
        details: &[
            "Answer: OK WHOIS <name> ONLINE|OFFLINE <last seen>|- <away message>",
            "Last seen (when the user's last connection left) is shown to their friends only.",
            "Example: WHOIS bob",
        ],
        run: |core, req, cmd| match cmd {
            Command::Whois { name } => core.whois(req, name),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Join,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| true,
        reads: false,
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
        writes: |_| true,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |_| false,
        reads: false,
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
        writes: |cmd| matches!(cmd, Command::Topic { change: Some(_), .. }),
        reads: false,
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
        writes: |_| true,
        reads: false,
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
        writes: |_| true,
        reads: false,
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
        writes: |_| true,
        reads: false,
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
        writes: |_| true,
        reads: false,
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
        writes: |_| true,
        reads: false,
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
        writes: |cmd| !matches!(
            cmd,
            Command::Room {
                sub: RoomSub::Info,
                ..
            }
        ),
        reads: false,
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
        writes: |cmd| matches!(cmd, Command::Read { id: Some(_), .. }),
        reads: true,
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
    Row {
        verb: Verb::Compress,
        state: Needs::Any,
        // What follows it is read and written compressed: it must come after every earlier answer.
        barrier: true,
        writes: |_| false,
        reads: false,
        summary: "compress this connection both ways (for clients that speak DEFLATE)",
        details: &[
            "After OK COMPRESS DEFLATE, every byte both ways is a raw DEFLATE stream (RFC 1951),",
            "flushed at the end of each write. Send nothing after COMPRESS until its answer has come.",
            "It saves bandwidth on long answers; each compressed connection costs the server memory.",
            "Example: COMPRESS DEFLATE  (answer: OK COMPRESS DEFLATE)",
        ],
        run: |core, req, cmd| match cmd {
            Command::Compress => core.compress(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Direct,
        state: Needs::LoggedIn,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "offer, answer or withdraw a direct session between two clients",
        details: &[
            "Introduces two clients that then talk over TLS between themselves: nothing they say passes here.",
            "DIRECT OFFER <name> <host:port> <fingerprint>: your client listens there with that certificate.",
            "DIRECT ACCEPT <name> <fingerprint>: connect to the address of the offer; yours shows that certificate.",
            "DIRECT DECLINE <name> refuses an offer; DIRECT CANCEL <name> withdraws yours. An offer waits 60 s.",
            "Pushes: DIRECT <name> OFFER|ACCEPTED|DECLINED|WITHDRAWN|EXPIRED|ANSWERED|GONE.",
            "Example: DIRECT DECLINE bob",
        ],
        run: |core, req, cmd| match cmd {
            Command::Direct(op) => core.direct(req, op),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Announce,
        state: Needs::Admin,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "admins: send a notice to every connection",
        details: &[
            "Sends NOTICE <text> to every connection, logged in or not, this one included.",
            "It is not stored: whoever connects later does not see it. Answer: OK ANNOUNCE <connections>",
            "Example: ANNOUNCE maintenance at 18:00 UTC, back by 18:10",
        ],
        run: |core, req, cmd| match cmd {
            Command::Announce { text } => core.announce(req, text),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Suspend,
        state: Needs::Admin,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "admins: lock an account until UNSUSPEND",
        details: &[
            "Closes every connection of the account (BYE ACCOUNT_SUSPENDED <reason>); its LOGIN and",
            "RESUME fail with SUSPENDED until UNSUSPEND. Its tokens, friends and messages are kept.",
            "Example: SUSPEND mallory spam in every inbox",
        ],
        run: |core, req, cmd| match cmd {
            Command::Suspend { name, reason } => core.suspend(req, name, reason),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Unsuspend,
        state: Needs::Admin,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "admins: lift a suspension",
        details: &[
            "The account may log in again, with its password or its device tokens.",
            "Example: UNSUSPEND mallory",
        ],
        run: |core, req, cmd| match cmd {
            Command::Unsuspend { name } => core.unsuspend(req, name),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Kill,
        state: Needs::Admin,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "admins: close every connection of an account now",
        details: &[
            "Closes the account's connections (BYE KILLED <reason>); it may log in again at once.",
            "To keep it out, SUSPEND it. Answer: OK KILL <name> CLOSED <connections>",
            "Example: KILL bob stuck client, please reconnect",
        ],
        run: |core, req, cmd| match cmd {
            Command::Kill { name, reason } => core.kill(req, name, reason),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Stats,
        state: Needs::Admin,
        barrier: false,
        writes: |_| false,
        reads: false,
        summary: "admins: the server's figures",
        details: &[
            "One STAT <name> <value> line per figure: connections, accounts online, messages per second,",
            "store queue depth, commit time, database size, uptime, ... (the same as /metrics).",
            "Example: STATS",
        ],
        run: |core, req, cmd| match cmd {
            Command::Stats => core.stats(req),
            cmd => core.mismatch(req, cmd),
        },
    },
    Row {
        verb: Verb::Adduser,
        state: Needs::Admin,
        barrier: false,
        writes: |_| true,
        reads: false,
        summary: "admins: create an account, also while registration is closed",
        details: &[
            "Creates an account as REGISTER would, with the same rules for the name and the password.",
            "Example: ADDUSER dave wonderland1  (answer: OK ADDUSER dave)",
        ],
        run: |core, req, cmd| match cmd {
            Command::Adduser { name, password } => core.adduser(req, name, password),
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
    fn the_commands_that_write_and_read_are_marked() {
        use crate::proto::command::parse;
        // Spec 6.6: while writes fail, REGISTER, MSG, GROUP, ALL and the FRIEND changes are
        // refused; HISTORY waits for the commands before it.
        for (line, writes) in [
            ("REGISTER a password1", true),
            ("LOGIN a password1", false),
            ("MSG a hi", true),
            ("GROUP a,b hi", true),
            ("ALL hi", true),
            ("FRIEND ADD a", true),
            ("FRIEND ACCEPT a", true),
            ("FRIEND DENY a", true),
            ("FRIEND REMOVE a", true),
            ("FRIEND LIST", false),
            ("HISTORY a", false),
            ("USERS", false),
            ("PING", false),
            ("HELP", false),
            ("LOGOUT", false),
            ("QUIT", false),
            ("JOIN #r", true),
            ("PART #r", true),
            ("ROOMS", false),
            ("MEMBERS #r", false),
            ("TOPIC #r", false),
            ("TOPIC #r a topic", true),
            ("TOPIC #r -", true),
            ("INVITE #r a", true),
            ("KICK #r a", true),
            ("BAN #r a", true),
            ("UNBAN #r a", true),
            ("ROLE #r a OP", true),
            ("ROOM INFO #r", false),
            ("ROOM PRIVATE #r", true),
            ("ROOM PUBLIC #r", true),
            ("ROOM DELETE #r", true),
            ("READ #r", false),
            ("READ #r 5", true),
            ("MSG #r hi", true),
            ("HISTORY #r", false),
            ("COMPRESS DEFLATE", false),
            ("DIRECT DECLINE a", false),
        ] {
            let cmd = parse(line).expect("parses").expect("a command").command;
            assert_eq!((row(cmd.verb()).writes)(&cmd), writes, "{line}");
        }
        let reading: Vec<&str> = COMMANDS
            .iter()
            .filter(|r| r.reads)
            .map(|r| r.verb.name())
            .collect();
        // READ without an id reads a direct conversation's marker from the store.
        assert_eq!(reading, ["HISTORY", "READ"]);
    }

    #[test]
    fn login_requirement_matches_the_spec() {
        // Spec 3.1: REGISTER, LOGIN and RESUME need a connection that is not logged in; QUIT, HELP,
        // PING and COMPRESS work in any state; everything else needs a login.
        let by = |n: Needs| -> Vec<&str> {
            COMMANDS
                .iter()
                .filter(|r| r.state == n)
                .map(|r| r.verb.name())
                .collect()
        };
        assert_eq!(by(Needs::LoggedOut), ["REGISTER", "LOGIN", "RESUME"]);
        assert_eq!(by(Needs::Any), ["QUIT", "HELP", "PING", "COMPRESS"]);
        assert_eq!(
            by(Needs::Admin),
            [
                "ANNOUNCE",
                "SUSPEND",
                "UNSUSPEND",
                "KILL",
                "STATS",
                "ADDUSER"
            ]
        );
        assert_eq!(by(Needs::LoggedIn).len(), COMMANDS.len() - 13);
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
