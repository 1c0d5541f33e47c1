//! What the user typed: slash commands, plain text and raw protocol lines, parsed without any state.
//!
//! The parser only splits and checks arity; names, passwords and texts are the server's to judge, so
//! the client never disagrees with it. Message text follows the protocol's rule: everything after the
//! single space that follows the preceding word, spaces kept.

/// One line of user input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// A blank line: nothing to do.
    Nothing,
    /// `/msg <name> <text>` (or `/unicast`).
    Msg {
        /// The recipient.
        to: &'a str,
        /// The text.
        text: &'a str,
    },
    /// `/group <a,b,...> <text>` (or `/multicast`).
    Group {
        /// The comma-separated recipients, as typed.
        to: &'a str,
        /// The text.
        text: &'a str,
    },
    /// `/all <text>` (or `/broadcast`).
    All {
        /// The text.
        text: &'a str,
    },
    /// A line not starting with `/`: a message to the current conversation (the last person
    /// talked with, or the room last joined or heard from).
    Reply {
        /// The whole line.
        text: &'a str,
    },
    /// `/users`.
    Users,
    /// `/help [<command>]`.
    Help {
        /// A protocol command to ask the server about.
        topic: Option<&'a str>,
    },
    /// `/quit [<reason>]` (or `/exit`).
    Quit {
        /// Passed on to the server.
        reason: Option<&'a str>,
    },
    /// `/register <name> <password>`.
    Register {
        /// The name to register.
        name: &'a str,
        /// Its password.
        password: &'a str,
    },
    /// `/login <name> <password>`.
    Login {
        /// The account name.
        name: &'a str,
        /// Its password.
        password: &'a str,
    },
    /// `/logout`.
    Logout,
    /// `/friend <arguments>`: passed on as `FRIEND <arguments>`.
    Friend {
        /// Everything after `/friend `.
        args: &'a str,
    },
    /// `/history [<arguments>]`: `HISTORY <arguments>`, or the last person talked with.
    History {
        /// Everything after `/history ` (may be empty).
        args: &'a str,
    },
    /// `/password <old> <new>`.
    Password {
        /// The current password.
        old: &'a str,
        /// The new one.
        new: &'a str,
    },
    /// `/tokens`: the account's device tokens.
    Tokens,
    /// `/revoke <id>|all`.
    Revoke {
        /// A token id, or `all`.
        which: &'a str,
    },
    /// `/unregister <password>`: delete the account.
    Unregister {
        /// The account's password.
        password: &'a str,
    },
    /// `/block <name>`.
    Block {
        /// Whom to block.
        name: &'a str,
    },
    /// `/unblock <name>`.
    Unblock {
        /// Whom to unblock.
        name: &'a str,
    },
    /// `/blocks`.
    Blocks,
    /// `/dms [friends|everyone]`.
    Dms {
        /// The setting, or `None` to show it.
        who: Option<&'a str>,
    },
    /// `/away [<text>]`.
    Away {
        /// The away message, or `None` to clear it.
        text: Option<&'a str>,
    },
    /// `/whois <name>`.
    Whois {
        /// Whom to ask about.
        name: &'a str,
    },
    /// The operators' commands, for admins: `/announce <text>`, `/suspend <name> [<reason>]`,
    /// `/unsuspend <name>`, `/kill <name> [<reason>]`, `/stats`, `/adduser <name> <password>`;
    /// passed on as `VERB <args>`.
    Operator {
        /// The protocol command: `ANNOUNCE`, `SUSPEND`, ...
        verb: &'static str,
        /// Its arguments, as typed (empty for `/stats`).
        args: &'a str,
    },
    /// `/join <#room>`.
    Join {
        /// The room.
        room: &'a str,
    },
    /// `/part [<#room>] [<reason>]`: the current room if none is named.
    Part {
        /// The room, if named.
        room: Option<&'a str>,
        /// Passed on to the server.
        reason: Option<&'a str>,
    },
    /// `/rooms`.
    Rooms,
    /// `/members [<#room>]`.
    Members {
        /// The room, if named.
        room: Option<&'a str>,
    },
    /// `/topic [<#room>] [<text>]`: show the topic, or set it.
    Topic {
        /// The room, if named.
        room: Option<&'a str>,
        /// The new topic (`-` clears it).
        text: Option<&'a str>,
    },
    /// `/invite [<#room>] <name>`, `/unban [<#room>] <name>`.
    OnMember {
        /// `INVITE` or `UNBAN`.
        verb: &'static str,
        /// The room, if named.
        room: Option<&'a str>,
        /// The user.
        name: &'a str,
    },
    /// `/kick [<#room>] <name> [<reason>]`, `/ban [<#room>] <name> [<reason>]`.
    Remove {
        /// `KICK` or `BAN`.
        verb: &'static str,
        /// The room, if named.
        room: Option<&'a str>,
        /// The user.
        name: &'a str,
        /// Passed on to the server.
        reason: Option<&'a str>,
    },
    /// `/role [<#room>] <name> owner|op|member`.
    Role {
        /// The room, if named.
        room: Option<&'a str>,
        /// The member.
        name: &'a str,
        /// The role, as typed.
        role: &'a str,
    },
    /// `/room info|private|public|delete [<#room>]`.
    Room {
        /// The subcommand, as typed.
        sub: &'a str,
        /// The room, if named.
        room: Option<&'a str>,
    },
    /// `/direct <name>`: offer `name` a direct session between the two clients.
    Direct {
        /// Whom to offer it.
        to: &'a str,
    },
    /// `/accept <name>`: accept `name`'s offer of a direct session.
    Accept {
        /// Who offered.
        from: &'a str,
    },
    /// `/decline <name>`: decline `name`'s offer.
    Decline {
        /// Who offered.
        from: &'a str,
    },
    /// `/close`: end the direct session, or withdraw the offer made.
    Close,
    /// `//<line>`: a protocol line sent as typed.
    Raw(&'a str),
}

/// Why a typed line was not understood; the text is for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputError(pub String);

/// Every slash command with its usage, for `/help` and for error messages.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "/msg <name> <text>",
        "send a message to one user (also /unicast)",
    ),
    (
        "/group <name,name,...> <text>",
        "send a message to several users (also /multicast)",
    ),
    (
        "/all <text>",
        "send a message to everyone online (also /broadcast)",
    ),
    (
        "<text>",
        "a line without / goes to the current conversation: the last person you messaged or who \
         messaged you, or the room you last joined or heard from",
    ),
    (
        "/join <#room>",
        "join a room (a new name creates it); then a line without / goes there",
    ),
    ("/part [<#room>] [<reason>]", "leave a room for good"),
    ("/rooms", "your rooms, your invitations, then public rooms"),
    ("/members [<#room>]", "who is in a room"),
    (
        "/topic [<#room>] [<text>|-]",
        "show a room's topic, or set it (- clears it)",
    ),
    ("/invite [<#room>] <name>", "invite someone to a room"),
    (
        "/kick [<#room>] <name> [<reason>]",
        "remove someone from a room",
    ),
    (
        "/ban [<#room>] <name> [<reason>]",
        "remove someone and keep them out (/unban to lift it)",
    ),
    (
        "/role [<#room>] <name> owner|op|member",
        "change a member's role",
    ),
    (
        "/room info|private|public|delete [<#room>]",
        "a room's settings, and its deletion",
    ),
    ("/users", "list who is online"),
    ("/register <name> <password>", "create an account"),
    (
        "/login <name> <password>",
        "log in; this client then keeps a device token and logs in again by itself",
    ),
    (
        "/logout",
        "log out, and revoke and forget this client's device token",
    ),
    (
        "/password <old> <new>",
        "change your password (logs out your other devices)",
    ),
    ("/tokens", "list your devices' tokens"),
    (
        "/revoke <id>|all",
        "log out a device (or all) by revoking its token",
    ),
    ("/unregister <password>", "delete your account for good"),
    (
        "/block <name>",
        "stop someone from reaching you (/unblock, /blocks)",
    ),
    (
        "/dms friends|everyone",
        "take direct messages from friends only, or from everyone",
    ),
    ("/away [<text>]", "set an away message, or clear it"),
    (
        "/whois <name>",
        "is someone online, away, or when last seen",
    ),
    (
        "/friend add|accept|deny|remove <name>",
        "ask, answer or end a friendship",
    ),
    ("/friend list", "list friends and requests"),
    (
        "/history [<name>|*] [<count>] [before|after <id>]",
        "show past messages (default: the last person you talked with)",
    ),
    ("/announce <text>", "admins: a notice to every connection"),
    (
        "/suspend <name> [<reason>]",
        "admins: lock an account until /unsuspend",
    ),
    (
        "/kill <name> [<reason>]",
        "admins: close an account's connections now",
    ),
    ("/stats", "admins: the server's figures"),
    (
        "/adduser <name> <password>",
        "admins: create an account (also when registration is closed)",
    ),
    (
        "/direct <name>",
        "offer a direct session: your clients talk over TLS, nothing passes the server",
    ),
    ("/accept <name>", "accept a direct session offered to you"),
    ("/decline <name>", "decline a direct session offered to you"),
    (
        "/close",
        "end the direct session (a line without / goes to it while it is open)",
    ),
    ("/help [<command>]", "this help, and the server's"),
    ("/quit [<reason>]", "leave (also /exit, or Ctrl-D)"),
    ("//<line>", "send <line> to the server exactly as typed"),
];

/// Splits off the first space-separated word; the rest starts after the single space following it.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(' ');
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn usage(form: &str) -> InputError {
    InputError(format!("usage: {form}"))
}

/// Parses one typed line (without its line terminator).
pub fn parse(line: &str) -> Result<Input<'_>, InputError> {
    if line.trim_matches(' ').is_empty() {
        return Ok(Input::Nothing);
    }
    if let Some(raw) = line.strip_prefix("//") {
        return Ok(if raw.trim_matches(' ').is_empty() {
            Input::Nothing
        } else {
            Input::Raw(raw)
        });
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Input::Reply { text: line });
    };
    let (verb, rest) = word(command);
    let blank = |s: &str| s.trim_matches(' ').is_empty();
    match verb.to_ascii_lowercase().as_str() {
        "msg" | "unicast" => {
            let (to, text) = word(rest);
            if to.is_empty() || blank(text) {
                return Err(usage("/msg <name> <text>"));
            }
            Ok(Input::Msg { to, text })
        }
        "group" | "multicast" => {
            let (to, text) = word(rest);
            if to.is_empty() || blank(text) {
                return Err(usage("/group <name,name,...> <text>"));
            }
            Ok(Input::Group { to, text })
        }
        "all" | "broadcast" => {
            if blank(rest) {
                return Err(usage("/all <text>"));
            }
            Ok(Input::All { text: rest })
        }
        "users" | "who" => {
            if !blank(rest) {
                return Err(usage("/users"));
            }
            Ok(Input::Users)
        }
        "help" => {
            let (topic, more) = word(rest);
            if !blank(more) {
                return Err(usage("/help [<command>]"));
            }
            Ok(Input::Help {
                topic: (!topic.is_empty()).then_some(topic),
            })
        }
        "quit" | "exit" => Ok(Input::Quit {
            reason: (!blank(rest)).then_some(rest),
        }),
        "register" | "login" => {
            let (name, rest) = word(rest);
            let (password, more) = word(rest);
            if name.is_empty() || password.is_empty() || !blank(more) {
                return Err(usage(&format!(
                    "/{} <name> <password>",
                    verb.to_lowercase()
                )));
            }
            Ok(if verb.eq_ignore_ascii_case("register") {
                Input::Register { name, password }
            } else {
                Input::Login { name, password }
            })
        }
        "logout" => {
            if !blank(rest) {
                return Err(usage("/logout"));
            }
            Ok(Input::Logout)
        }
        "friend" | "friends" => {
            if blank(rest) {
                return Err(usage(
                    "/friend add|accept|deny|remove <name>, or /friend list",
                ));
            }
            Ok(Input::Friend {
                args: rest.trim_matches(' '),
            })
        }
        "history" => Ok(Input::History {
            args: rest.trim_matches(' '),
        }),
        "password" => {
            let (old, rest) = word(rest);
            let (new, more) = word(rest);
            if old.is_empty() || new.is_empty() || !blank(more) {
                return Err(usage("/password <old> <new>"));
            }
            Ok(Input::Password { old, new })
        }
        "tokens" | "devices" => {
            if !blank(rest) {
                return Err(usage("/tokens"));
            }
            Ok(Input::Tokens)
        }
        "blocks" => {
            if !blank(rest) {
                return Err(usage("/blocks"));
            }
            Ok(Input::Blocks)
        }
        "revoke" | "unregister" | "block" | "unblock" | "whois" => {
            let (arg, more) = word(rest);
            let verb = verb.to_ascii_lowercase();
            if arg.is_empty() || !blank(more) {
                let what = match verb.as_str() {
                    "revoke" => "<id>|all",
                    "unregister" => "<password>",
                    _ => "<name>",
                };
                return Err(usage(&format!("/{verb} {what}")));
            }
            Ok(match verb.as_str() {
                "revoke" => Input::Revoke { which: arg },
                "unregister" => Input::Unregister { password: arg },
                "block" => Input::Block { name: arg },
                "unblock" => Input::Unblock { name: arg },
                _ => Input::Whois { name: arg },
            })
        }
        "announce" => {
            if blank(rest) {
                return Err(usage("/announce <text>"));
            }
            Ok(Input::Operator {
                verb: "ANNOUNCE",
                args: rest,
            })
        }
        "suspend" | "kill" | "unsuspend" => {
            let verb = verb.to_ascii_lowercase();
            let (name, more) = word(rest);
            let one_name = verb == "unsuspend";
            if name.is_empty() || (one_name && !blank(more)) {
                return Err(usage(&if one_name {
                    format!("/{verb} <name>")
                } else {
                    format!("/{verb} <name> [<reason>]")
                }));
            }
            Ok(Input::Operator {
                verb: match verb.as_str() {
                    "suspend" => "SUSPEND",
                    "kill" => "KILL",
                    _ => "UNSUSPEND",
                },
                args: rest.trim_start_matches(' ').trim_end_matches(' '),
            })
        }
        "stats" => {
            if !blank(rest) {
                return Err(usage("/stats"));
            }
            Ok(Input::Operator {
                verb: "STATS",
                args: "",
            })
        }
        "adduser" => {
            let (name, after) = word(rest);
            let (password, more) = word(after);
            if name.is_empty() || password.is_empty() || !blank(more) {
                return Err(usage("/adduser <name> <password>"));
            }
            Ok(Input::Operator {
                verb: "ADDUSER",
                args: rest.trim_start_matches(' ').trim_end_matches(' '),
            })
        }
        "dms" => {
            let (who, more) = word(rest);
            if !blank(more) {
                return Err(usage("/dms friends|everyone"));
            }
            Ok(Input::Dms {
                who: (!who.is_empty()).then_some(who),
            })
        }
        "away" => Ok(Input::Away {
            text: (!blank(rest)).then_some(rest),
        }),
        "join" => {
            let (room, more) = word(rest);
            if room.is_empty() || !blank(more) {
                return Err(usage("/join <#room>"));
            }
            Ok(Input::Join { room })
        }
        "part" | "leave" => {
            let (room, reason) = optional_room(rest);
            Ok(Input::Part {
                room,
                reason: (!blank(reason)).then_some(reason),
            })
        }
        "rooms" | "list" => {
            if !blank(rest) {
                return Err(usage("/rooms"));
            }
            Ok(Input::Rooms)
        }
        "members" | "names" => {
            let (room, more) = optional_room(rest);
            if !blank(more) {
                return Err(usage("/members [<#room>]"));
            }
            Ok(Input::Members { room })
        }
        "topic" => {
            let (room, text) = optional_room(rest);
            Ok(Input::Topic {
                room,
                text: (!blank(text)).then_some(text),
            })
        }
        "invite" | "unban" => {
            let (room, rest) = optional_room(rest);
            let (name, more) = word(rest);
            let verb = if verb.eq_ignore_ascii_case("invite") {
                "INVITE"
            } else {
                "UNBAN"
            };
            if name.is_empty() || !blank(more) {
                return Err(usage(&format!(
                    "/{} [<#room>] <name>",
                    verb.to_ascii_lowercase()
                )));
            }
            Ok(Input::OnMember { verb, room, name })
        }
        "kick" | "ban" => {
            let (room, rest) = optional_room(rest);
            let (name, reason) = word(rest);
            let verb = if verb.eq_ignore_ascii_case("kick") {
                "KICK"
            } else {
                "BAN"
            };
            if name.is_empty() {
                return Err(usage(&format!(
                    "/{} [<#room>] <name> [<reason>]",
                    verb.to_ascii_lowercase()
                )));
            }
            Ok(Input::Remove {
                verb,
                room,
                name,
                reason: (!blank(reason)).then_some(reason),
            })
        }
        "role" => {
            let (room, rest) = optional_room(rest);
            let (name, rest) = word(rest);
            let (role, more) = word(rest);
            if name.is_empty() || role.is_empty() || !blank(more) {
                return Err(usage("/role [<#room>] <name> owner|op|member"));
            }
            Ok(Input::Role { room, name, role })
        }
        "room" => {
            let (sub, rest) = word(rest);
            let (room, more) = optional_room(rest);
            if sub.is_empty() || !blank(more) {
                return Err(usage("/room info|private|public|delete [<#room>]"));
            }
            Ok(Input::Room { sub, room })
        }
        "direct" | "accept" | "decline" => {
            let (name, more) = word(rest);
            let lower = verb.to_ascii_lowercase();
            if name.is_empty() || !blank(more) {
                return Err(usage(&format!("/{lower} <name>")));
            }
            Ok(match lower.as_str() {
                "direct" => Input::Direct { to: name },
                "accept" => Input::Accept { from: name },
                _ => Input::Decline { from: name },
            })
        }
        "close" => {
            if !blank(rest) {
                return Err(usage("/close"));
            }
            Ok(Input::Close)
        }
        _ => Err(InputError(format!(
            "unknown command /{verb}; type /help for the list (// sends a line to the server as is)"
        ))),
    }
}

/// A leading `#room` word, if there is one, and the rest (spaces kept as the protocol keeps them).
fn optional_room(s: &str) -> (Option<&str>, &str) {
    let (first, rest) = word(s);
    if first.starts_with('#') {
        (Some(first), rest)
    } else {
        (None, s.trim_start_matches(' '))
    }
}

/// The client's own help text.
pub fn help_text() -> String {
    let width = COMMANDS.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
    let mut out = String::from("Commands:\n");
    for (form, what) in COMMANDS {
        out.push_str(&format!("  {form:width$}  {what}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_text_as_the_protocol_does() {
        assert_eq!(
            parse("/msg bob hello  there"),
            Ok(Input::Msg {
                to: "bob",
                text: "hello  there"
            })
        );
        assert_eq!(
            parse("/MSG bob  hi"),
            Ok(Input::Msg {
                to: "bob",
                text: " hi"
            })
        );
        assert_eq!(
            parse("/unicast bob hi"),
            Ok(Input::Msg {
                to: "bob",
                text: "hi"
            })
        );
        assert_eq!(
            parse("/multicast a,b x"),
            Ok(Input::Group {
                to: "a,b",
                text: "x"
            })
        );
        assert_eq!(parse("/broadcast hey"), Ok(Input::All { text: "hey" }));
        assert_eq!(
            parse("just talking"),
            Ok(Input::Reply {
                text: "just talking"
            })
        );
    }

    #[test]
    fn missing_parts_are_usage_errors() {
        for bad in [
            "/msg",
            "/msg bob",
            "/msg bob   ",
            "/group a,b",
            "/all",
            "/all   ",
            "/login alice",
            "/register alice pw extra",
            "/friend",
            "/users x",
            "/logout now",
            "/help a b",
            "/password onlyone",
            "/revoke",
            "/unregister",
            "/block",
            "/whois a b",
            "/tokens x",
            "/dms a b",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.0.starts_with("usage: /"), "{bad}: {err:?}");
        }
        let err = parse("/frobnicate").unwrap_err();
        assert!(err.0.contains("unknown command /frobnicate"), "{err:?}");
    }

    #[test]
    fn account_and_other_commands() {
        assert_eq!(
            parse("/login alice wonderland1"),
            Ok(Input::Login {
                name: "alice",
                password: "wonderland1"
            })
        );
        assert_eq!(
            parse("/Register alice wonderland1"),
            Ok(Input::Register {
                name: "alice",
                password: "wonderland1"
            })
        );
        assert_eq!(parse("/logout"), Ok(Input::Logout));
        assert_eq!(parse("/quit"), Ok(Input::Quit { reason: None }));
        assert_eq!(
            parse("/exit see you"),
            Ok(Input::Quit {
                reason: Some("see you")
            })
        );
        assert_eq!(parse("/help"), Ok(Input::Help { topic: None }));
        assert_eq!(parse("/help msg"), Ok(Input::Help { topic: Some("msg") }));
        assert_eq!(
            parse("/friend add bob"),
            Ok(Input::Friend { args: "add bob" })
        );
        assert_eq!(parse("/history"), Ok(Input::History { args: "" }));
        assert_eq!(
            parse("/password old-one new-one"),
            Ok(Input::Password {
                old: "old-one",
                new: "new-one"
            })
        );
        assert_eq!(parse("/tokens"), Ok(Input::Tokens));
        assert_eq!(parse("/revoke all"), Ok(Input::Revoke { which: "all" }));
        assert_eq!(
            parse("/unregister pw-secret"),
            Ok(Input::Unregister {
                password: "pw-secret"
            })
        );
        assert_eq!(parse("/block bob"), Ok(Input::Block { name: "bob" }));
        assert_eq!(parse("/unblock bob"), Ok(Input::Unblock { name: "bob" }));
        assert_eq!(parse("/blocks"), Ok(Input::Blocks));
        assert_eq!(parse("/dms"), Ok(Input::Dms { who: None }));
        assert_eq!(
            parse("/dms friends"),
            Ok(Input::Dms {
                who: Some("friends")
            })
        );
        assert_eq!(parse("/away"), Ok(Input::Away { text: None }));
        assert_eq!(
            parse("/away at  lunch"),
            Ok(Input::Away {
                text: Some("at  lunch")
            })
        );
        assert_eq!(parse("/whois bob"), Ok(Input::Whois { name: "bob" }));
        assert_eq!(
            parse("/history bob 10 before 7"),
            Ok(Input::History {
                args: "bob 10 before 7"
            })
        );
    }

    #[test]
    fn room_commands_name_a_room_or_leave_it_to_the_current_one() {
        assert_eq!(parse("/join #rust"), Ok(Input::Join { room: "#rust" }));
        assert!(parse("/join").unwrap_err().0.starts_with("usage: /join"));
        assert!(parse("/join #a #b").is_err());
        assert_eq!(
            parse("/part"),
            Ok(Input::Part {
                room: None,
                reason: None
            })
        );
        assert_eq!(
            parse("/part #rust see  you"),
            Ok(Input::Part {
                room: Some("#rust"),
                reason: Some("see  you")
            })
        );
        assert_eq!(
            parse("/leave good night"),
            Ok(Input::Part {
                room: None,
                reason: Some("good night")
            })
        );
        assert_eq!(parse("/rooms"), Ok(Input::Rooms));
        assert_eq!(parse("/members"), Ok(Input::Members { room: None }));
        assert_eq!(
            parse("/members #x"),
            Ok(Input::Members { room: Some("#x") })
        );
        assert_eq!(
            parse("/topic"),
            Ok(Input::Topic {
                room: None,
                text: None
            })
        );
        assert_eq!(
            parse("/topic #x be nice"),
            Ok(Input::Topic {
                room: Some("#x"),
                text: Some("be nice")
            })
        );
        assert_eq!(
            parse("/topic be nice"),
            Ok(Input::Topic {
                room: None,
                text: Some("be nice")
            })
        );
        assert_eq!(
            parse("/invite bob"),
            Ok(Input::OnMember {
                verb: "INVITE",
                room: None,
                name: "bob"
            })
        );
        assert_eq!(
            parse("/unban #x bob"),
            Ok(Input::OnMember {
                verb: "UNBAN",
                room: Some("#x"),
                name: "bob"
            })
        );
        assert_eq!(
            parse("/kick #x bob off topic"),
            Ok(Input::Remove {
                verb: "KICK",
                room: Some("#x"),
                name: "bob",
                reason: Some("off topic")
            })
        );
        assert_eq!(
            parse("/ban mallory"),
            Ok(Input::Remove {
                verb: "BAN",
                room: None,
                name: "mallory",
                reason: None
            })
        );
        assert_eq!(
            parse("/role bob op"),
            Ok(Input::Role {
                room: None,
                name: "bob",
                role: "op"
            })
        );
        assert_eq!(
            parse("/room private #x"),
            Ok(Input::Room {
                sub: "private",
                room: Some("#x")
            })
        );
        for bad in [
            "/invite",
            "/invite #x",
            "/kick",
            "/role bob",
            "/room",
            "/members a b",
        ] {
            assert!(parse(bad).unwrap_err().0.starts_with("usage: /"), "{bad}");
        }
    }

    #[test]
    fn operator_commands_pass_on_their_arguments() {
        let op = |verb, args| Ok(Input::Operator { verb, args });
        assert_eq!(
            parse("/announce back in  5 minutes"),
            op("ANNOUNCE", "back in  5 minutes")
        );
        assert_eq!(
            parse("/suspend mallory spam, again"),
            op("SUSPEND", "mallory spam, again")
        );
        assert_eq!(parse("/SUSPEND mallory"), op("SUSPEND", "mallory"));
        assert_eq!(parse("/unsuspend mallory"), op("UNSUSPEND", "mallory"));
        assert_eq!(parse("/kill bob stuck"), op("KILL", "bob stuck"));
        assert_eq!(parse("/stats"), op("STATS", ""));
        assert_eq!(
            parse("/adduser dave wonderland1"),
            op("ADDUSER", "dave wonderland1")
        );
        for bad in [
            "/announce",
            "/announce   ",
            "/suspend",
            "/kill",
            "/unsuspend",
            "/unsuspend a b",
            "/stats now",
            "/adduser dave",
            "/adduser dave pw extra",
        ] {
            assert!(parse(bad).unwrap_err().0.starts_with("usage: /"), "{bad}");
        }
    }

    #[test]
    fn raw_and_blank_lines() {
        assert_eq!(parse("//PING x"), Ok(Input::Raw("PING x")));
        assert_eq!(parse("//@1 MSG bob hi"), Ok(Input::Raw("@1 MSG bob hi")));
        assert_eq!(parse("//"), Ok(Input::Nothing));
        assert_eq!(parse(""), Ok(Input::Nothing));
        assert_eq!(parse("   "), Ok(Input::Nothing));
        // A leading space makes a slash ordinary text.
        assert_eq!(parse(" /msg"), Ok(Input::Reply { text: " /msg" }));
    }

    #[test]
    fn help_lists_every_command() {
        let h = help_text();
        for (form, _) in COMMANDS {
            assert!(h.contains(form));
        }
    }
}
