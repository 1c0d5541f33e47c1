//! Reply codes: the machine codes of `FAIL` and `BYE` lines.
//!
//! Each code is one variant with one meaning; `spec/replies.tsv` lists the same codes and a test keeps
//! the two in step. Lines carrying them are built and parsed in [`super::server_line`].

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

            /// The code spelled `s`, if there is one.
            pub fn parse(s: &str) -> Option<Code> {
                match s { $(stringify!($variant) => Some(Code::$variant),)* _ => None }
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
    /// An offline recipient already has the sender's share of messages waiting from the sender.
    INBOX_SHARE_FULL,
    /// The sender sent as many messages as it may this minute.
    TOO_MANY_MESSAGES,
    /// The sender stored as many bytes as it may today.
    QUOTA_EXCEEDED,
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
    /// A room name that breaks the room name rules.
    BAD_ROOM_NAME,
    /// No room has that name (or it was deleted).
    NO_SUCH_ROOM,
    /// The caller is not a member of the room.
    NOT_MEMBER,
    /// The named user is not a member of the room.
    NO_SUCH_MEMBER,
    /// INVITE of someone who is a member already.
    ALREADY_MEMBER,
    /// JOIN of a private room without an invitation.
    INVITE_ONLY,
    /// The account is banned from the room.
    BANNED,
    /// The caller's role does not allow it, or the target's role is not lower.
    NOT_ALLOWED,
    /// JOIN of a room that has its most members.
    ROOM_FULL,
    /// The caller is a member of the most rooms already.
    TOO_MANY_ROOMS,
    /// The last owner would leave the room without an owner.
    LAST_OWNER,
    /// BAN of an account already banned.
    ALREADY_BANNED,
    /// UNBAN of an account that is not banned.
    NOT_BANNED,
    /// The room's ban list is full.
    BAN_LIST_FULL,
    /// The room has its most invitations waiting.
    INVITE_LIST_FULL,
    /// The invitee has its most invitations waiting.
    TOO_MANY_INVITATIONS,
    /// FRIEND ADD past the friend requests allowed per hour.
    TOO_MANY_REQUESTS,
    /// FRIEND ADD when either side has as many friends and requests as it may.
    TOO_MANY_FRIENDS,
    /// Too much password hashing is queued; try again shortly.
    SERVER_BUSY,
    /// Too many password checks or registrations from the address, or too many failed logins for
    /// the address or the account name; the line says when to try again.
    RATE_LIMITED,
    /// The server cannot write to its database for now (a full disk, an I/O error); nothing was
    /// done. Reads work; writes resume by themselves.
    STORAGE_UNAVAILABLE,
    /// RESUME with a token that is unknown, expired or revoked (not told apart).
    BAD_TOKEN,
    /// REVOKE of a token id the account does not have.
    UNKNOWN_TOKEN,
    /// TOKEN when the account already holds the most tokens it may.
    TOO_MANY_TOKENS,
    /// A block stands between the caller and the other account (either blocks the other).
    BLOCKED,
    /// The recipient takes direct messages from friends only.
    FRIENDS_ONLY,
    /// BLOCK of an account already blocked.
    ALREADY_BLOCKED,
    /// UNBLOCK of an account that is not blocked.
    NOT_BLOCKED,
    /// BLOCK when the account already blocks the most accounts it may.
    TOO_MANY_BLOCKS,
    /// An operator command from an account that is not one of the server's admins.
    NOT_ADMIN,
    /// LOGIN or RESUME of an account an operator has suspended.
    SUSPENDED,
    /// SUSPEND of an account already suspended.
    ALREADY_SUSPENDED,
    /// UNSUSPEND of an account that is not suspended.
    NOT_SUSPENDED,
    /// REGISTER while the server's registration is closed (admins create accounts with ADDUSER).
    REGISTRATION_CLOSED,
    /// The server failed internally; the details are in its log.
    INTERNAL_ERROR,
    /// COMPRESS on a connection that is compressed already.
    COMPRESSION_ACTIVE,
    /// DIRECT OFFER to a user with no connection logged in.
    USER_OFFLINE,
    /// DIRECT OFFER while the caller's earlier offer to the same user waits.
    ALREADY_OFFERED,
    /// DIRECT ACCEPT, DECLINE or CANCEL with no such offer waiting.
    NO_OFFER,
    /// DIRECT OFFER past the offers the caller, or the other user, may have waiting.
    TOO_MANY_OFFERS,
    /// A DIRECT address that is not HOST:PORT.
    BAD_ADDRESS,
    /// A DIRECT fingerprint that is not a SHA-256 in the usual form.
    BAD_FINGERPRINT,
}

impl Code {
    /// True for the codes whose `FAIL` line carries `retry_after=<seconds>` before its sentence:
    /// a limit that frees up with time, and the time it takes.
    pub fn has_retry_after(self) -> bool {
        matches!(
            self,
            Code::RATE_LIMITED
                | Code::TOO_MANY_MESSAGES
                | Code::QUOTA_EXCEEDED
                | Code::TOO_MANY_REQUESTS
        )
    }
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
    /// The connection limit for the client's address is reached.
    TOO_MANY_CONNECTIONS,
    /// The client stayed silent after an idle probe.
    IDLE_TIMEOUT,
    /// The connection's login was revoked from another connection of its account.
    REVOKED,
    /// The connection's account was deleted from another connection.
    ACCOUNT_DELETED,
    /// The client's DEFLATE stream (after COMPRESS) could not be inflated.
    BAD_DEFLATE,
    /// An operator suspended the connection's account.
    ACCOUNT_SUSPENDED,
    /// An operator closed the account's connections.
    KILLED,
}

impl ByeCode {
    /// Every BYE code.
    pub const ALL: &'static [ByeCode] = &[
        ByeCode::SHUTDOWN,
        ByeCode::SLOW_CONSUMER,
        ByeCode::SERVER_FULL,
        ByeCode::TOO_MANY_CONNECTIONS,
        ByeCode::IDLE_TIMEOUT,
        ByeCode::REVOKED,
        ByeCode::ACCOUNT_DELETED,
        ByeCode::BAD_DEFLATE,
        ByeCode::ACCOUNT_SUSPENDED,
        ByeCode::KILLED,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeCode::SHUTDOWN => "SHUTDOWN",
            ByeCode::SLOW_CONSUMER => "SLOW_CONSUMER",
            ByeCode::SERVER_FULL => "SERVER_FULL",
            ByeCode::TOO_MANY_CONNECTIONS => "TOO_MANY_CONNECTIONS",
            ByeCode::IDLE_TIMEOUT => "IDLE_TIMEOUT",
            ByeCode::REVOKED => "REVOKED",
            ByeCode::ACCOUNT_DELETED => "ACCOUNT_DELETED",
            ByeCode::BAD_DEFLATE => "BAD_DEFLATE",
            ByeCode::ACCOUNT_SUSPENDED => "ACCOUNT_SUSPENDED",
            ByeCode::KILLED => "KILLED",
        }
    }

    /// The code spelled `s`, if there is one.
    pub fn parse(s: &str) -> Option<ByeCode> {
        ByeCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_upper_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()));
            assert_eq!(Code::parse(c.as_str()), Some(*c));
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
        for c in ByeCode::ALL {
            assert_eq!(ByeCode::parse(c.as_str()), Some(*c));
        }
    }
}
