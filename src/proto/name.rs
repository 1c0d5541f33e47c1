//! Values that cannot be invalid: account names, passwords, labels and message text are checked
//! once, when they are built from a line, and carry their validity in their type.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

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

    /// The name's folded form (its key's string), to look an account up by without making a
    /// [`Key`]: the name itself when it has no capitals, as most names have none.
    pub fn folded(&self) -> Cow<'_, str> {
        Key::folded(&self.0)
    }

    /// What the name looks like: two names with the same skeleton are too alike to tell apart on a
    /// screen, so only one of them may be registered (see [`Skeleton`]).
    pub fn skeleton(&self) -> Skeleton {
        Skeleton::of(&self.0)
    }
}

impl std::str::FromStr for Name {
    type Err = String;

    /// As [`Name::parse`], for the command line (`--admin NAME`).
    fn from_str(s: &str) -> Result<Name, String> {
        Name::parse(s).map_err(|e| format!("{s:?} is not a name: {e}"))
    }
}

/// The look of a name, after the folds of Unicode's confusable detection (UTS #39) that apply to
/// the characters a name may hold (ASCII letters, digits, `_`, `-`): letter case; `I`, `l`, `i`
/// and `1`; `O`, `o` and `0`; `rn` and `m`; `vv` and `w`. Names are looked up by their [`Key`];
/// the skeleton only decides whether a new name is too like one that is taken.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skeleton(Box<str>);

impl Skeleton {
    /// The skeleton of any string (used on names).
    pub fn of(name: &str) -> Skeleton {
        let folded: String = name
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                'i' | '1' | '|' => 'l',
                '0' => 'o',
                c => c,
            })
            .collect();
        Skeleton(
            folded
                .replace("rn", "m")
                .replace("vv", "w")
                .into_boxed_str(),
        )
    }
}

impl fmt::Debug for Skeleton {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Skeleton({:?})", &*self.0)
    }
}

/// The key an account is found by: its name case-folded. Made in one place, [`Key::of`], so every
/// map, store table and comparison folds names the same way. Its copies share one string (the
/// account table, the name table, the online set and each logged-in connection all hold one).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key of any string (a LOGIN name is not checked: a malformed one finds no account).
    pub fn of(name: &str) -> Key {
        Key(Arc::from(&*Key::folded(name)))
    }

    /// The folded form of `name`, the string of its key: `name` itself when it has no capitals.
    pub fn folded(name: &str) -> Cow<'_, str> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        }
    }

    /// Appends the key of `name` to `out`: the same folding as [`Key::of`], without a string of
    /// its own (the store joins two keys into one index key this way).
    pub fn fold_into(name: &str, out: &mut String) {
        let start = out.len();
        out.push_str(name);
        out[start..].make_ascii_lowercase();
    }

    /// How the keys of two names compare, without making either.
    pub fn cmp_folded(a: &str, b: &str) -> std::cmp::Ordering {
        a.bytes()
            .map(|b| b.to_ascii_lowercase())
            .cmp(b.bytes().map(|b| b.to_ascii_lowercase()))
    }

    /// A key already in folded form, as read back from the store.
    pub fn from_folded(folded: String) -> Key {
        debug_assert!(!folded.bytes().any(|b| b.is_ascii_uppercase()));
        Key(folded.into())
    }

    /// The folded form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `name` (whose key this is) as a shared string: this key's own string when the name is
    /// spelled as its key is (no capitals, as most names are), or else a string of its own. An
    /// account keeps its name this way, so that most accounts keep one string for both.
    pub fn spelled(&self, name: &str) -> Arc<str> {
        debug_assert!(Key::cmp_folded(name, &self.0).is_eq());
        if *self.0 == *name {
            Arc::clone(&self.0)
        } else {
            name.into()
        }
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
    /// A character that would make the text show something else than what it says (see
    /// [`is_hidden`]).
    Hidden(char),
    /// Over the limit ([`MAX_TEXT_BYTES`] for a message).
    TooLong,
}

/// True for the characters a message text may not hold because they change what the text shows
/// without showing themselves: the explicit direction controls, which reorder what follows them
/// ("Trojan Source": U+202A to U+202E, U+2066 to U+2069); the line and paragraph separators
/// (U+2028, U+2029), which would break a MESSAGE line in two on a screen; and the invisible
/// characters with no use in chat text (zero width space U+200B, word joiner U+2060, invisible
/// operators U+2061 to U+2064, zero width no-break space U+FEFF, Mongolian vowel separator
/// U+180E). The joiners U+200C and U+200D, which emoji and several scripts need, and the implicit
/// direction marks U+200E, U+200F and U+061C, which only place neutral characters, are allowed.
pub fn is_hidden(c: char) -> bool {
    matches!(c,
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{2028}' | '\u{2029}'
        | '\u{200B}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}')
}

/// Checks a message text: at least one non-space character, at most 2048 bytes, no control
/// characters except TAB, and no character that [`is_hidden`].
pub fn check_text(s: &str) -> Result<(), TextError> {
    check_text_within(s, MAX_TEXT_BYTES)
}

/// Checks a text with the rules of message text but another limit (a token label, an away
/// message).
pub fn check_text_within(s: &str, max_bytes: usize) -> Result<(), TextError> {
    if s.len() > max_bytes {
        return Err(TextError::TooLong);
    }
    // Nearly every chat line is printable ASCII: no control character and no hidden one can be
    // in it, so one pass over the bytes decides (the checks below cost a tenth of a direct
    // message's CPU in the profile). The pass folds every byte without stopping early, which
    // the compiler turns into a check of many bytes at once.
    let printable = s.bytes().fold(true, |ok, b| {
        ok & ((b' '..=b'~').contains(&b) | (b == b'\t'))
    });
    if printable {
        return if s.bytes().all(|b| b == b' ' || b == b'\t') {
            Err(TextError::Bad("the text is empty"))
        } else {
            Ok(())
        };
    }
    check_chars(s)
}

/// The rules of message text, checked character by character (any text within its limit).
fn check_chars(s: &str) -> Result<(), TextError> {
    if s.chars().all(|c| c == ' ' || c == '\t') {
        return Err(TextError::Bad("the text is empty"));
    }
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err(TextError::Bad("the text contains control characters"));
    }
    if let Some(c) = s.chars().find(|c| is_hidden(*c)) {
        return Err(TextError::Hidden(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_spelled_as_its_key_shares_the_key_string() {
        let key = Key::of("alice");
        let same = key.spelled("alice");
        assert!(Arc::ptr_eq(&same, &key.0));
        let key = Key::of("Alice");
        let capital = key.spelled("Alice");
        assert_eq!(&*capital, "Alice");
        assert!(!Arc::ptr_eq(&capital, &key.0));
        assert_eq!(key.as_str(), "alice");
    }

    #[test]
    fn a_folded_name_is_its_keys_string_and_borrows_when_it_can() {
        for n in ["alice", "Alice", "ALICE", "a_b-9", "Zz"] {
            let name = Name::parse(n).unwrap();
            assert_eq!(&*name.folded(), name.key().as_str(), "{n}");
            let borrowed = matches!(name.folded(), Cow::Borrowed(_));
            assert_eq!(borrowed, n == n.to_ascii_lowercase(), "{n}");
        }
    }

    #[test]
    fn the_ascii_shortcut_agrees_with_the_check_by_character() {
        let mut texts = vec![String::new(), " \t ".to_owned()];
        for b in 0u8..=0x7f {
            let c = char::from(b);
            texts.extend([
                c.to_string(),
                format!("a{c}"),
                format!(" {c} "),
                format!("{c}\t"),
            ]);
        }
        for t in texts {
            assert_eq!(check_text(&t), check_chars(&t), "{t:?}");
        }
    }

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

    /// The failure this guards against: `aIice` (capital i) and `a1ice` registered beside `alice`,
    /// so one user could pass for another.
    #[test]
    fn names_that_look_alike_have_the_same_skeleton() {
        let skel = |s: &str| Name::parse(s).unwrap().skeleton();
        let alice = skel("alice");
        for lookalike in ["aIice", "a1ice", "ALICE", "aiice", "AL1CE", "a|ice"]
            .into_iter()
            .filter(|n| Name::parse(n).is_ok())
        {
            assert_eq!(skel(lookalike), alice, "{lookalike}");
        }
        assert_eq!(skel("bob0"), skel("BoBo"));
        assert_eq!(skel("Oscar"), skel("oscar"));
        assert_eq!(skel("modern"), skel("modem"));
        assert_eq!(skel("vvill"), skel("will"));
        assert_ne!(skel("alice"), skel("alicia"));
        assert_ne!(skel("bob"), skel("b0b0"));
        assert_ne!(skel("a_b"), skel("a-b"));
    }

    /// The failure this guards against: text with a right-to-left override, zero-width characters
    /// or a line separator was delivered raw, so a MESSAGE line could show other people something
    /// else than what it says.
    #[test]
    fn texts_that_would_not_show_what_they_say_are_refused() {
        for (text, what) in [
            ("pay\u{202E}lapyap", "U+202E"),
            ("a\u{202A}b", "U+202A"),
            ("x\u{2067}y\u{2069}", "U+2067"),
            ("one\u{2028}two", "U+2028"),
            ("one\u{2029}two", "U+2029"),
            ("pay\u{200B}pal.example", "U+200B"),
            ("\u{FEFF}hello", "U+FEFF"),
            ("a\u{2060}b", "U+2060"),
            ("a\u{2062}b", "U+2062"),
        ] {
            match check_text(text) {
                Err(TextError::Hidden(c)) => assert_eq!(format!("U+{:04X}", c as u32), what),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        // What scripts and emoji need stays: joiners, and the implicit direction marks.
        for ok in [
            "family: \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}",
            "abc \u{200F}(xyz)",
            "\u{05E9}\u{05DC}\u{05D5}\u{05DD} \u{200E}123",
        ] {
            assert_eq!(check_text(ok), Ok(()), "{ok:?}");
        }
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
