//! The conversation index of the durable store, built in bulk.
//!
//! A direct message's index entry is not inserted into a B-tree when the message is written: the
//! writer keeps the messages appended since the index's *watermark* in a list of its own
//! ([`Tail`]), and once there are [`INDEX_LAG`](crate::config::INDEX_LAG) of them writes their
//! entries in one go, grouped by conversation and sorted: one row per conversation per flush,
//! keyed (conversation key as bytes, the row's last id), its value the row's ids packed
//! (`codec::encode_id_row`). The watermark moves up in the same transaction, so the rows hold
//! every conversation message with an id up to the watermark, and the messages past it are in the
//! message log alone: a crash loses nothing, and the writer rebuilds its list from the log when the
//! database opens ([`Tail::rebuild`]).
//!
//! A read takes the watermark from its own transaction and merges the rows with a scan of the
//! messages past it in the same snapshot ([`ids`]): fewer than `INDEX_LAG` records (the writer
//! indexes the list as soon as it reaches the lag, op by op, also inside a batch), whose sender and recipients are read in place (`codec::decode_parties`); room messages share
//! the id space and are skipped. So a read sees exactly what was committed, whatever the writer
//! holds in memory.
//!
//! A message whose id is at or below the watermark (ids increase, so only a replicated one could
//! be) is added to the rows at once ([`insert_one`]): the rows stay the index of everything up to
//! the watermark.
//!
//! A record past the watermark that does not decode cannot be placed in its conversation: the
//! scan counts it in every conversation, so every page that spans it fails as damage (as a page
//! holding it always did) rather than silently leaving it out of its own.

use std::collections::HashMap;

use redb::{ReadableTable, Table};

use super::codec::{self, ToRef};
use super::keys::{message_conversation_keys, parties_in_conversation, written_conversation_key};
use super::redb::Fail;
use super::{Damage, MsgId};

/// The key of a conversation index row: the conversation key's bytes and the row's last id.
pub(super) type RowKey = (&'static [u8], u64);

/// The rows of the conversation index.
pub(super) trait Rows: ReadableTable<RowKey, &'static [u8]> {}
impl<T: ReadableTable<RowKey, &'static [u8]>> Rows for T {}

use super::msg_log::Log;
pub(super) use super::msg_log::LogTable;

/// The writer's list of the messages appended past the watermark, and their index entries. Its
/// size is bounded by the lag: it is written out and emptied when it reaches it.
#[derive(Debug, Default)]
pub(super) struct Tail {
    /// Every message with an id up to it is in the rows.
    watermark: MsgId,
    /// Messages appended past the watermark (room messages too, so that the scan of a read stays
    /// within the lag whatever the traffic).
    count: usize,
    /// The largest id appended past the watermark.
    top: MsgId,
    /// The entries' conversations, one after another (reused: no allocation per message): a
    /// conversation key, or a direct message's two names as written (see [`Tail::pair_entry`]).
    keys: Vec<u8>,
    /// One index entry: where its key is in `keys`, its length, the id.
    entries: Vec<(u32, u32, MsgId)>,
    /// The flush's buffer for a row, reused.
    row: Vec<u8>,
}

impl Tail {
    /// An empty list above `watermark`.
    pub(super) fn new(watermark: MsgId) -> Tail {
        Tail {
            watermark,
            ..Tail::default()
        }
    }

    /// The list of a database: the messages past `watermark` in `messages`. A record that does
    /// not decode is counted but cannot be indexed: it is logged and left out of the rows.
    pub(super) fn rebuild(
        messages: &Log<'_, impl LogTable, impl LogTable>,
        watermark: MsgId,
    ) -> Result<Tail, Fail> {
        let mut tail = Tail::new(watermark);
        let Some(from) = watermark.checked_add(1) else {
            return Ok(tail);
        };
        let damaged = |key: MsgId, damage: Damage| {
            log::error!(
                "the message block ending at {key} does not parse; its messages cannot be added \
                 to the conversation index: {damage}"
            );
            Ok(())
        };
        messages.scan(from, MsgId::MAX, false, damaged, |id, bytes| {
            tail.message(id);
            match codec::decode_message(id, bytes) {
                Ok(m) => {
                    for conv in message_conversation_keys(&m) {
                        tail.entry(conv.as_bytes(), id);
                    }
                }
                Err(damage) => log::error!(
                    "message {id} does not decode and cannot be added to the conversation \
                     index: {damage}"
                ),
            }
            Ok(false)
        })?;
        Ok(tail)
    }

    /// The watermark.
    pub(super) fn watermark(&self) -> MsgId {
        self.watermark
    }

    /// Messages appended past the watermark.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Whether a message with this id is past the watermark (and goes into the list).
    pub(super) fn takes(&self, id: MsgId) -> bool {
        id > self.watermark
    }

    /// A message appended past the watermark, whether or not it has index entries.
    pub(super) fn message(&mut self, id: MsgId) {
        self.count += 1;
        self.top = self.top.max(id);
    }

    /// The index entry of a direct message past the watermark, from its two names as the record
    /// has them, in either order and case: the entry is written `from to`, and the flush makes
    /// the conversation key (`keys::written_conversation_key`) once per such pair rather than
    /// the writer once per message (about 300 instructions per direct message).
    pub(super) fn pair_entry(&mut self, from: &str, to: &str, id: MsgId) {
        // As in `entry`.
        let start = self.keys.len() as u32;
        self.keys.extend_from_slice(from.as_bytes());
        self.keys.push(b' ');
        self.keys.extend_from_slice(to.as_bytes());
        self.entries
            .push((start, self.keys.len() as u32 - start, id));
    }

    /// An index entry of a message past the watermark, under its conversation key.
    pub(super) fn entry(&mut self, conv: &[u8], id: MsgId) {
        // Conversation keys are short (two names): the offsets fit, and the list is emptied at the
        // lag, far below 4 GiB of keys.
        let start = self.keys.len() as u32;
        self.keys.extend_from_slice(conv);
        self.entries.push((start, conv.len() as u32, id));
    }

    /// Writes the list's entries into the rows, one row per conversation, in key order, and
    /// empties it. Returns the new watermark, which the caller records in the same transaction.
    pub(super) fn flush(
        &mut self,
        rows: &mut Table<'_, RowKey, &'static [u8]>,
    ) -> Result<MsgId, Fail> {
        // Grouped by the entries as written through a map rather than by sorting the whole
        // list: a sort of 4,096 entries by key cost about 1,000 instructions per message. Then
        // each group's conversation key is made, once (two groups may share one: `a b` and
        // `b a`), and only the groups are sorted (for the inserts' locality, and to bring those
        // sharing a key together).
        let mut row = std::mem::take(&mut self.row);
        let keys = &self.keys;
        let mut groups: HashMap<&[u8], Vec<MsgId>, KeyHashing> =
            HashMap::with_hasher(KeyHashing::new());
        for &(start, len, id) in &self.entries {
            let key = &keys[start as usize..(start + len) as usize];
            groups.entry(key).or_default().push(id);
        }
        let mut convs: Vec<(String, Vec<MsgId>)> = groups
            .into_iter()
            .map(|(written, ids)| {
                let mut conv = String::new();
                written_conversation_key(written, &mut conv);
                (conv, ids)
            })
            .collect();
        convs.sort_unstable_by(|x, y| x.0.cmp(&y.0));
        let mut convs = convs.into_iter().peekable();
        while let Some((conv, mut ids)) = convs.next() {
            while let Some((_, more)) = convs.next_if(|next| next.0 == conv) {
                ids.extend(more);
            }
            ids.sort_unstable();
            // The same id twice (a message written again under its id) is one entry.
            ids.dedup();
            let last = *ids.last().expect("a group holds its first entry");
            codec::encode_id_row(&ids, &mut row);
            rows.insert((conv.as_bytes(), last), row.as_slice())?;
        }
        self.row = row;
        self.watermark = self.watermark.max(self.top);
        self.count = 0;
        self.top = 0;
        self.keys.clear();
        self.entries.clear();
        Ok(self.watermark)
    }
}

/// The flush's hashing of conversation keys: a multiply-rotate hash of the key's words (as
/// `rustc-hash`'s) with a seed drawn once per flush, and a final mix (MurmurHash3's) so that
/// every bit of the result depends on the whole key. The standard SipHash cost about 220
/// instructions per entry, a quarter of the flush. The seed keeps the buckets unpredictable from
/// outside; and a flush hashes at most `INDEX_LAG` entries, so even keys made to share a bucket
/// would only make that flush slower, bounded.
#[derive(Clone)]
struct KeyHashing(u64);

impl KeyHashing {
    fn new() -> KeyHashing {
        use std::hash::BuildHasher;
        KeyHashing(std::collections::hash_map::RandomState::new().hash_one(0u8))
    }
}

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in words.by_ref() {
            self.add(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Adds the entry (conv, id) to the rows themselves: the row that would hold it gets it (the
/// first row of the conversation ending at or after `id`), or a row of its own is made.
pub(super) fn insert_one(
    rows: &mut Table<'_, RowKey, &'static [u8]>,
    conv: &[u8],
    id: MsgId,
) -> Result<(), Fail> {
    let found = match rows.range((conv, id)..=(conv, MsgId::MAX))?.next() {
        Some(entry) => {
            let (key, value) = entry?;
            let last = key.value().1;
            let mut ids = Vec::new();
            codec::decode_id_row(value.value(), last, &mut ids)?;
            Some((last, ids))
        }
        None => None,
    };
    let mut row = Vec::new();
    match found {
        Some((last, mut ids)) => {
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
                codec::encode_id_row(&ids, &mut row);
                rows.insert((conv, last), row.as_slice())?;
            }
        }
        None => {
            codec::encode_id_row(&[id], &mut row);
            rows.insert((conv, id), row.as_slice())?;
        }
    }
    Ok(())
}

/// Whether the index holds (conv, id): in a row, or past the watermark (where the message log is
/// the index). For the check of a database.
pub(super) fn contains(
    rows: &impl Rows,
    watermark: MsgId,
    conv: &[u8],
    id: MsgId,
) -> Result<bool, Fail> {
    if id > watermark {
        return Ok(true);
    }
    match rows.range((conv, id)..=(conv, MsgId::MAX))?.next() {
        Some(entry) => {
            let (key, value) = entry?;
            let mut ids = Vec::new();
            codec::decode_id_row(value.value(), key.value().1, &mut ids)?;
            Ok(ids.binary_search(&id).is_ok())
        }
        None => Ok(false),
    }
}

/// Whether the message record `bytes` belongs to the conversation `conv` (one that does not
/// decode counts, see the module documentation). `buf` is scratch space.
fn in_conversation(bytes: &[u8], conv: &[u8], buf: &mut String) -> bool {
    match codec::decode_parties(bytes) {
        Ok((_, ToRef::Room(_))) => false,
        Ok((from, to)) => parties_in_conversation(from, &to, conv, buf),
        Err(_) => true,
    }
}

/// What one page's reads learnt of the messages past the watermark: once a scan has met every
/// one of them, the conversation's ids among them, ascending, so that the page's later questions
/// (is there anything newer, older) do not scan again. Valid for one read snapshot and one
/// conversation only.
#[derive(Default)]
pub(super) struct Memo(Option<Vec<MsgId>>);

/// At most `take` ids of conversation `conv` within `a..=b`, ascending, or descending with `rev`:
/// the rows' ids merged with the messages past `watermark` (all of one read's snapshot).
#[allow(clippy::too_many_arguments)]
pub(super) fn ids(
    rows: &impl Rows,
    messages: &Log<'_, impl LogTable, impl LogTable>,
    watermark: MsgId,
    memo: &mut Memo,
    conv: &[u8],
    a: MsgId,
    b: MsgId,
    rev: bool,
    take: usize,
) -> Result<Vec<MsgId>, Fail> {
    if a > b || take == 0 {
        return Ok(Vec::new());
    }
    let past = Past {
        messages,
        watermark,
        conv,
    };
    if rev {
        // Newest first: the scan past the watermark, then the rows below what it found.
        let tail = past.ids(memo, a, b, true, take)?;
        let row_b = match tail.last() {
            Some(&low) if tail.len() == take => low - 1,
            _ => b,
        };
        let packed = rows_desc(rows, conv, a, row_b, take)?;
        Ok(merge(tail, packed, true, take))
    } else {
        let packed = rows_asc(rows, conv, a, b, take)?;
        let tail_b = match packed.last() {
            Some(&high) if packed.len() == take => high.saturating_sub(1).min(b),
            _ => b,
        };
        let tail = past.ids(memo, a, tail_b, false, take)?;
        Ok(merge(packed, tail, false, take))
    }
}

/// The messages past the watermark, as one conversation's index.
struct Past<'a, 'l, B, M> {
    messages: &'a Log<'l, B, M>,
    watermark: MsgId,
    conv: &'a [u8],
}

impl<B: LogTable, M: LogTable> Past<'_, '_, B, M> {
    /// At most `take` ids of the conversation past the watermark within `a..=b`, in the order
    /// `rev` asks.
    fn ids(
        &self,
        memo: &mut Memo,
        a: MsgId,
        b: MsgId,
        rev: bool,
        take: usize,
    ) -> Result<Vec<MsgId>, Fail> {
        let Some(first) = self.watermark.checked_add(1) else {
            return Ok(Vec::new());
        };
        let from = a.max(first);
        if from > b {
            return Ok(Vec::new());
        }
        if let Some(all) = &memo.0 {
            let within = all.iter().copied().filter(|id| (from..=b).contains(id));
            return Ok(if rev {
                within.rev().take(take).collect()
            } else {
                within.take(take).collect()
            });
        }
        let mut out = Vec::new();
        let mut buf = String::new();
        let mut cut = false;
        let damaged = |_, damage: Damage| Err(damage.into());
        self.messages.scan(from, b, rev, damaged, |id, bytes| {
            if in_conversation(bytes, self.conv, &mut buf) {
                out.push(id);
            }
            cut = out.len() == take;
            Ok(cut)
        })?;
        if !cut && from == first && b == MsgId::MAX {
            let mut all = out.clone();
            if rev {
                all.reverse();
            }
            memo.0 = Some(all);
        }
        Ok(out)
    }
}

/// Two lists sorted the same way (descending with `rev`) merged, without repeats, cut at `take`.
fn merge(x: Vec<MsgId>, y: Vec<MsgId>, rev: bool, take: usize) -> Vec<MsgId> {
    if y.is_empty() {
        return x;
    }
    if x.is_empty() {
        return y;
    }
    let mut out = Vec::with_capacity((x.len() + y.len()).min(take));
    let (mut i, mut j) = (0, 0);
    while out.len() < take && (i < x.len() || j < y.len()) {
        let next = match (x.get(i), y.get(j)) {
            (Some(&p), Some(&q)) => {
                let p_first = if rev { p >= q } else { p <= q };
                if p == q {
                    i += 1;
                    j += 1;
                    p
                } else if p_first {
                    i += 1;
                    p
                } else {
                    j += 1;
                    q
                }
            }
            (Some(&p), None) => {
                i += 1;
                p
            }
            (None, Some(&q)) => {
                j += 1;
                q
            }
            (None, None) => break,
        };
        out.push(next);
    }
    out
}

/// At most `take` ids of the rows of `conv` within `a..=b`, ascending.
fn rows_asc(
    rows: &impl Rows,
    conv: &[u8],
    a: MsgId,
    b: MsgId,
    take: usize,
) -> Result<Vec<MsgId>, Fail> {
    let mut out = Vec::new();
    let mut row = Vec::new();
    // The first row that can hold `a` is the first ending at or after it.
    for entry in rows.range((conv, a)..=(conv, MsgId::MAX))? {
        let (key, value) = entry?;
        let last = key.value().1;
        row.clear();
        codec::decode_id_row(value.value(), last, &mut row)?;
        for &id in &row {
            if id < a {
                continue;
            }
            if id > b {
                return Ok(out);
            }
            out.push(id);
            if out.len() == take {
                return Ok(out);
            }
        }
        if last >= b {
            break;
        }
    }
    Ok(out)
}

/// At most `take` ids of the rows of `conv` within `a..=b`, descending.
fn rows_desc(
    rows: &impl Rows,
    conv: &[u8],
    a: MsgId,
    b: MsgId,
    take: usize,
) -> Result<Vec<MsgId>, Fail> {
    let mut out = Vec::new();
    if a > b {
        return Ok(out);
    }
    let mut row = Vec::new();
    // Newest first: the row that can hold `b` (the first ending at or after it), then the rows
    // ending within a..b, from the last.
    let mut walk = |last: MsgId, value: &[u8], out: &mut Vec<MsgId>| -> Result<bool, Fail> {
        row.clear();
        codec::decode_id_row(value, last, &mut row)?;
        for &id in row.iter().rev() {
            if id > b {
                continue;
            }
            if id < a {
                return Ok(true);
            }
            out.push(id);
            if out.len() == take {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if let Some(entry) = rows.range((conv, b)..=(conv, MsgId::MAX))?.next() {
        let (key, value) = entry?;
        if walk(key.value().1, value.value(), &mut out)? {
            return Ok(out);
        }
    }
    for entry in rows.range((conv, a)..(conv, b))?.rev() {
        let (key, value) = entry?;
        if walk(key.value().1, value.value(), &mut out)? {
            return Ok(out);
        }
    }
    Ok(out)
}

/// Every id of the rows of `conv`, for the check of a database: calls `each` with every (conv,
/// id) of every row.
pub(super) fn each_entry(rows: &impl Rows, mut each: impl FnMut(&[u8], MsgId)) -> Result<(), Fail> {
    let mut ids = Vec::new();
    for entry in rows.iter()? {
        let (key, value) = entry?;
        let (conv, last) = key.value();
        ids.clear();
        codec::decode_id_row(value.value(), last, &mut ids)?;
        for &id in &ids {
            each(conv, id);
        }
    }
    Ok(())
}
