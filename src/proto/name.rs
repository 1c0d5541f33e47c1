//! Values that cannot be invalid: account names, passwords, labels and message text are checked
//! once, when they are built from a line, and carry their validity in their type.

use std::fmt;

use crate::config::{
    MAX_LABEL_LEN, MAX_NAME_LEN, MAX_PASSWORD_BYTES, MAX_TEXT_BYTES, MIN_PASSWORD_BYTES,
};

/// An account name: 1 to 32 characters, an ASCII letter first, then ASCII letters, digits, `_`, `-`.
/// Kept as typed; compared and looked up by its lowercase [`key`](Name::key).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Checks `s` against the name rules.
    pub fn parse(s: &str) -> Result<Name, &'static str> {
        let mut chars = s.chars();
        match chars.next() {
            None => return Err("a name cannot be empty"),
            Some(c) if !c.is_ascii_alphabetic() => return Err("a name must start with a letter"),
            Some(_) => {}
        }
        if s.len() > MAX_NAME_LEN {
            return Err("a name has at most 32 characters");
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err("a name may contain only letters, digits, '_' and '-'");
        }
        Ok(Name(s.to_owned()))
    }

    /// The name as typed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lookup key of this name.
    pub fn key(&self) -> Key {
        Key::of(&self.0)
    }
}

/// The key an account is found by: its name case-folded. Made in one place, [`Key::of`], so every
/// map, store table and comparison folds names the same way.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Box<str>);

impl Key {
    /// The key of any string (a LOGIN name is not checked: a malformed one finds no account).
    pub fn of(name: &str) -> Key {
        Key(name.to_ascii_lowercase().into_boxed_str())
    }

    /// A key already in folded form, as read back from the store.
    pub fn from_folded(folded: String) -> Key {
        debug_assert!(!folded.bytes().any(|b| b.is_ascii_uppercase()));
        Key(folded.into_boxed_str())
    }

    /// The folded form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A password. Its `Debug` form never shows it, so it cannot leak into logs or test output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Checks `s` against the password rules (8 to 128 bytes, no spaces or control characters).
    pub fn parse(s: &str) -> Result<Password, &'static str> {
        if s.len() < MIN_PASSWORD_BYTES {
            return Err("a password has at least 8 bytes");
        }
        if s.len() > MAX_PASSWORD_BYTES {
            return Err("a password has at most 128 bytes");
        }
        if s.chars().any(|c| c == ' ' || c.is_control()) {
            return Err("a password cannot contain spaces or control characters");
        }
        Ok(Password(s.to_owned()))
    }

    /// Wraps any string without checking it (for LOGIN, where a malformed password is simply wrong).
    pub fn unchecked(s: &str) -> Password {
        Password(s.to_owned())
    }

    /// The secret itself, for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Checks a client label (the text after `@`).
pub fn check_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > MAX_LABEL_LEN {
        return Err("a label has 1 to 32 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("a label may contain only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Why a message text was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextError {
    /// Only spaces, or control characters other than TAB.
    Bad(&'static str),
    /// Over the limit ([`MAX_TEXT_BYTES`] for a message).
    TooLong,
}

/// Checks a message text: at least one non-space character, at most 2048 bytes, no control
/// characters except TAB.
pub fn check_text(s: &str) -> Result<(), TextError> {
    check_text_within(s, MAX_TEXT_BYTES)
}

/// Checks a text with the rules of message text but another limit (a token label, an away
/// message).
pub fn check_text_within(s: &str, max_bytes: usize) -> Result<(), TextError> {
    if s.len() > max_bytes {
        return Err(TextError::TooLong);
    }
    if s.chars().all(|c| c == ' ' || c == '\t') {
        return Err(TextError::Bad("the text is empty"));
    }
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err(TextError::Bad("the text contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_at_the_boundaries() {
        assert!(Name::parse("a").is_ok());
        assert!(Name::parse(&"a".repeat(32)).is_ok());
        assert!(Name::parse(&"a".repeat(33)).is_err());
        assert!(Name::parse("").is_err());
        assert!(Name::parse("1abc").is_err());
        assert!(Name::parse("_abc").is_err());
        assert!(Name::parse("ab c").is_err());
        assert!(Name::parse("ab,c").is_err());
        assert!(Name::parse("é").is_err());
        assert_eq!(
            Name::parse("Alice-2_x").unwrap().key().as_str(),
            "alice-2_x"
        );
        assert_eq!(Key::of("ALICE"), Name::parse("alice").unwrap().key());
    }

    #[test]
    fn passwords_at_the_boundaries_and_never_printed() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"p".repeat(128)).is_ok());
        assert!(Password::parse(&"p".repeat(129)).is_err());
        assert!(Password::parse("has space").is_err());
        let p = Password::parse("s3cret-pass").unwrap();
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn labels_and_texts() {
        assert!(check_label("a.b-c_9").is_ok());
        assert!(check_label("").is_err());
        assert!(check_label(&"x".repeat(33)).is_err());
        assert!(check_label("a/b").is_err());
        assert_eq!(check_text("  "), Err(TextError::Bad("the text is empty")));
        assert!(check_text(" hi ").is_ok());
        assert!(check_text("tab\tok").is_ok());
        assert!(check_text("bell\x07").is_err());
        assert!(check_text(&"é".repeat(1024)).is_ok());
        assert_eq!(check_text(&"x".repeat(2049)), Err(TextError::TooLong));
    }
}
