//! Room values: names, their lookup keys, roles, privacy, and the target of a command that names
//! a user or a room. Checked once, when built from a line, like the values of [`super::name`].

use std::fmt;

use super::name::{check_text, Key, Name, TextError};
use crate::config::{MAX_REASON_BYTES, MAX_ROOM_NAME_LEN, MAX_TOPIC_BYTES};

/// A room name: `#` then 1 to 32 ASCII letters, digits, `_` or `-`. Kept as typed (the form it was
/// created with is how the server shows it); compared and looked up by its lowercase
/// [`key`](RoomName::key).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    /// Checks `s` (with its `#`) against the room name rules.
    pub fn parse(s: &str) -> Result<RoomName, &'static str> {
        let Some(body) = s.strip_prefix('#') else {
            return Err("a room name starts with #");
        };
        if body.is_empty() {
            return Err("a room name has 1 to 32 characters after its #");
        }
        if body.len() > MAX_ROOM_NAME_LEN {
            return Err("a room name has at most 32 characters after its #");
        }
        if !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("a room name may contain only letters, digits, '_' and '-' after its #");
        }
        Ok(RoomName(s.to_owned()))
    }

    /// The name as typed, `#` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lookup key of this name.
    pub fn key(&self) -> RoomKey {
        RoomKey::of(&self.0)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The key a room is found by: its name (with the `#`) case-folded. Made in one place,
/// [`RoomKey::of`], like an account's [`Key`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(Box<str>);

impl RoomKey {
    /// The key of a room name.
    pub fn of(name: &str) -> RoomKey {
        RoomKey(name.to_ascii_lowercase().into_boxed_str())
    }

    /// The folded form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::borrow::Borrow<str> for RoomKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A member's role in a room. Ordered by rank: `Member < Op < Owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Talks and reads.
    Member,
    /// Also sets the topic, invites, kicks and bans members.
    Op,
    /// Also changes roles and the room's settings, and deletes it.
    Owner,
}

impl Role {
    /// Every role, highest first (the order MEMBERS lists them in).
    pub const ALL: [Role; 3] = [Role::Owner, Role::Op, Role::Member];

    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Op => "OP",
            Role::Member => "MEMBER",
        }
    }

    /// The role a server line names (upper case, as sent).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The role a command names, in any letter case.
    pub fn lookup(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
    }

    /// Op or owner: may set the topic, invite, kick and ban.
    pub fn moderates(self) -> bool {
        self >= Role::Op
    }
}

/// Who may join a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Privacy {
    /// Anyone not banned.
    Public,
    /// Only someone invited (invite only).
    Private,
}

impl Privacy {
    /// The keyword as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Privacy::Public => "PUBLIC",
            Privacy::Private => "PRIVATE",
        }
    }

    /// The keyword as a server line sends it.
    pub fn parse(s: &str) -> Option<Privacy> {
        match s {
            "PUBLIC" => Some(Privacy::Public),
            "PRIVATE" => Some(Privacy::Private),
            _ => None,
        }
    }
}

/// What a command names: a user (`bob`) or a room (`#rust`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A user, by name.
    User(Name),
    /// A room, by name.
    Room(RoomName),
}

impl Target {
    /// The target as typed.
    pub fn as_str(&self) -> &str {
        match self {
            Target::User(n) => n.as_str(),
            Target::Room(r) => r.as_str(),
        }
    }

    /// The user's key, if the target is a user.
    pub fn user_key(&self) -> Option<Key> {
        match self {
            Target::User(n) => Some(n.key()),
            Target::Room(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a topic: the text rules of a message, at most [`MAX_TOPIC_BYTES`].
pub fn check_topic(s: &str) -> Result<(), TextError> {
    check_short_text(s, MAX_TOPIC_BYTES)
}

/// Checks the reason of a PART, KICK or BAN: the text rules, at most [`MAX_REASON_BYTES`].
pub fn check_reason(s: &str) -> Result<(), TextError> {
    check_short_text(s, MAX_REASON_BYTES)
}

fn check_short_text(s: &str, max: usize) -> Result<(), TextError> {
    if s.len() > max {
        return Err(TextError::TooLong);
    }
    check_text(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_at_the_boundaries() {
        assert!(RoomName::parse("#a").is_ok());
        assert!(RoomName::parse("#9").is_ok());
        assert!(RoomName::parse("#-_x").is_ok());
        assert!(RoomName::parse(&format!("#{}", "r".repeat(32))).is_ok());
        assert!(RoomName::parse(&format!("#{}", "r".repeat(33))).is_err());
        assert!(RoomName::parse("#").is_err());
        assert!(RoomName::parse("rust").is_err());
        assert!(RoomName::parse("##rust").is_err());
        assert!(RoomName::parse("#ru st").is_err());
        assert!(RoomName::parse("#ru.st").is_err());
        assert!(RoomName::parse("#rüst").is_err());
        let r = RoomName::parse("#Rust-Lang").unwrap();
        assert_eq!(r.as_str(), "#Rust-Lang");
        assert_eq!(r.key().as_str(), "#rust-lang");
        assert_eq!(r.key(), RoomKey::of("#RUST-lang"));
    }

    #[test]
    fn roles_rank_and_read_in_any_case() {
        assert!(Role::Owner > Role::Op && Role::Op > Role::Member);
        assert!(Role::Op.moderates() && Role::Owner.moderates() && !Role::Member.moderates());
        assert_eq!(Role::lookup("op"), Some(Role::Op));
        assert_eq!(Role::lookup("Owner"), Some(Role::Owner));
        assert_eq!(Role::lookup("admin"), None);
        assert_eq!(Role::parse("op"), None);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn topics_and_reasons_at_their_limits() {
        assert!(check_topic(&"t".repeat(MAX_TOPIC_BYTES)).is_ok());
        assert_eq!(
            check_topic(&"t".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TextError::TooLong)
        );
        assert!(check_reason(&"é".repeat(MAX_REASON_BYTES / 2)).is_ok());
        assert_eq!(
            check_reason(&"é".repeat(MAX_REASON_BYTES / 2 + 1)),
            Err(TextError::TooLong)
        );
        assert!(matches!(check_topic("  "), Err(TextError::Bad(_))));
        assert!(matches!(check_reason("a\u{7}"), Err(TextError::Bad(_))));
    }
}
