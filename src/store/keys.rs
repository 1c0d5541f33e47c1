//! Index keys shared by both stores: an account's lookup key, and the keys a message is indexed
//! under by conversation.
//!
//! A conversation key is the two account keys in ascending order joined by a space (names cannot
//! contain spaces, so the join is unambiguous), or `*` for the broadcasts. A message is indexed under
//! every conversation it belongs to: MSG under (sender, recipient), GROUP under (sender, r) for each
//! distinct recipient r, ALL under `*`.

use super::codec::ToRef;
use super::{Conversation, MessageRecord, To};
use crate::proto::name::Key;

/// The conversation key of the ALL broadcasts.
const BROADCAST_KEY: &str = "*";

/// The store's form of an account's lookup key: [`Key::of`], the one place names are folded, as
/// the string the tables are keyed by.
pub fn key_of(name: &str) -> String {
    Key::of(name).as_str().to_owned()
}

/// The index key of a conversation: `"a b"` with `a <= b`, or `"*"`.
/// `None` for a room, which is indexed by its number.
pub(crate) fn conversation_key(conv: &Conversation) -> Option<String> {
    match conv {
        Conversation::Pair(a, b) => Some(pair_key(a, b)),
        Conversation::Broadcast => Some(BROADCAST_KEY.to_owned()),
        Conversation::Room { .. } => None,
    }
}

/// `"a b"` with `a <= b`, from two names or keys, folded as it is written: one string, no
/// intermediate key per name (this runs once for every direct message the store writes).
fn pair_key(a: &str, b: &str) -> String {
    let mut key = String::with_capacity(a.len() + 1 + b.len());
    pair_key_into(a, b, &mut key);
    key
}

/// [`pair_key`] appended to `out`.
fn pair_key_into(a: &str, b: &str, out: &mut String) {
    let (lo, hi) = if Key::cmp_folded(a, b).is_le() {
        (a, b)
    } else {
        (b, a)
    };
    Key::fold_into(lo, out);
    out.push(' ');
    Key::fold_into(hi, out);
}

/// The one conversation key of a MSG or an ALL, written into `out` (replacing what it held);
/// false, with `out` left empty, for a GROUP or a room message, which
/// [`message_conversation_keys`] answers. The store makes the key of an ALL this way, and of a
/// MSG indexed at once (at or below the watermark); a MSG past it is keyed when its entry is
/// written out ([`written_conversation_key`]).
pub(crate) fn single_conversation_key(msg: &MessageRecord, out: &mut String) -> bool {
    out.clear();
    match &msg.to {
        To::User(r) => pair_key_into(&msg.from, r, out),
        To::All => out.push_str(BROADCAST_KEY),
        To::Group(_) | To::Room(_) => return false,
    }
    true
}

/// The conversation key of an index entry as the writer's list holds it (see `conv_index`),
/// written into `out`: two names joined by a space (a direct message's, as its record has them)
/// make their pair's key; anything else (`*`) is the key as it is. A key is written as it is too,
/// since the key of a pair of keys is the pair itself.
pub(crate) fn written_conversation_key(written: &[u8], out: &mut String) {
    out.clear();
    // Entries are made from strings: the bytes are UTF-8 (the fallback never runs).
    let written = String::from_utf8_lossy(written);
    match written.split_once(' ') {
        Some((a, b)) => pair_key_into(a, b, out),
        None => out.push_str(&written),
    }
}

/// Every conversation key a message is indexed under, without duplicates. Names are folded into
/// account keys here, since records carry names as registered.
pub(crate) fn message_conversation_keys(msg: &MessageRecord) -> Vec<String> {
    match &msg.to {
        To::User(r) => vec![pair_key(&msg.from, r)],
        To::Group(rs) => {
            let mut keys: Vec<String> = rs.iter().map(|r| pair_key(&msg.from, r)).collect();
            keys.sort();
            keys.dedup();
            keys
        }
        To::All => vec![BROADCAST_KEY.to_owned()],
        To::Room(_) => Vec::new(),
    }
}

/// Whether a message from `from` to `to` (read in place from its record) belongs to the
/// conversation whose key is `conv`; `buf` is scratch space for the keys compared.
pub(crate) fn parties_in_conversation(
    from: &str,
    to: &ToRef<'_>,
    conv: &[u8],
    buf: &mut String,
) -> bool {
    let mut pair = |r: &str| {
        buf.clear();
        pair_key_into(from, r, buf);
        buf.as_bytes() == conv
    };
    match to {
        ToRef::User(r) => pair(r),
        ToRef::Group(rs) => rs.iter().any(|r| pair(r)),
        ToRef::All => conv == BROADCAST_KEY.as_bytes(),
        ToRef::Room(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_keys_are_normalised() {
        let pair =
            |a: &str, b: &str| conversation_key(&Conversation::Pair(a.into(), b.into())).unwrap();
        assert_eq!(pair("bob", "alice"), "alice bob");
        assert_eq!(pair("alice", "bob"), "alice bob");
        assert_eq!(pair("al", "al"), "al al");
        // A name is folded before the two are ordered: "Bob" sorts as "bob", after "alice".
        assert_eq!(pair_key("Bob", "alice"), "alice bob");
        assert_eq!(pair_key("bob", "ALICE"), "alice bob");
        assert_eq!(pair_key("ab", "A"), "a ab");
        assert_eq!(pair_key("B", "a_"), "a_ b");
        assert_eq!(
            conversation_key(&Conversation::Broadcast).as_deref(),
            Some("*")
        );
        assert_eq!(
            conversation_key(&Conversation::Room { id: 1, after: 0 }),
            None
        );
        let msg = |to| MessageRecord {
            id: 1,
            time_ms: 0,
            from: "Carol".into(),
            to,
            text: String::new(),
        };
        assert_eq!(
            message_conversation_keys(&msg(To::User("ALICE".into()))),
            ["alice carol"]
        );
        assert_eq!(
            message_conversation_keys(&msg(To::Group(vec![
                "dave".into(),
                "Alice".into(),
                "DAVE".into(),
                "carol".into()
            ]))),
            ["alice carol", "carol carol", "carol dave"]
        );
        assert_eq!(message_conversation_keys(&msg(To::All)), ["*"]);
        // The single key, where there is one, is the same, whatever the buffer held before.
        let mut buf = String::from("left over");
        for to in [To::User("ALICE".into()), To::User("carol".into()), To::All] {
            let m = msg(to);
            assert!(single_conversation_key(&m, &mut buf));
            assert_eq!([buf.clone()], message_conversation_keys(&m).as_slice());
        }
        for to in [To::Group(vec!["dave".into()]), To::Room("#r".into())] {
            assert!(!single_conversation_key(&msg(to), &mut buf));
            assert!(buf.is_empty());
        }
        assert!(message_conversation_keys(&msg(To::Room("#r".into()))).is_empty());
    }
}
