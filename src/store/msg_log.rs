//! The message log: records by id, in blocks.
//!
//! New messages are written in blocks (`message_blocks`: the block's last id -> the block), several
//! consecutive records of one commit in one row, so that a commit of many messages is a few B-tree
//! inserts rather than one per message. A block is its records one after another, each as its id
//! (8 bytes, little-endian), its length (4 bytes, little-endian) and the encoded record, ids
//! increasing; it is closed before it would grow past [`MESSAGE_BLOCK_BYTES`] (a larger record
//! makes a block of its own). Blocks cover disjoint, increasing id ranges: a block only takes ids
//! above every id stored, so the block holding `id`, if any, is the first whose last id is `id` or
//! more.
//!
//! A message whose id is not above every stored id (a cluster's replicated message can arrive
//! after a later one, see `conv_index`) goes to the per-id table `messages` instead, as does every
//! message of a layout 4 file: a lookup that misses the blocks falls back to it. An id already
//! stored is not written again.
//!
//! Every reader of the log goes through [`Log`]. The lengths read from a block are never trusted:
//! a block that does not parse is [`Damage`], never a panic.

use redb::{AccessGuard, ReadableTable};

use super::redb::Fail;
use super::{Damage, MsgId};
#[cfg(doc)]
use crate::config::MESSAGE_BLOCK_BYTES;

/// Bytes of a record's header in a block: its id and its length.
pub(super) const HEADER: usize = 12;

/// A table of the log, keyed by id: `message_blocks` (by last id) or `messages`.
pub(super) trait LogTable: ReadableTable<u64, &'static [u8]> {}
impl<T: ReadableTable<u64, &'static [u8]>> LogTable for T {}

/// Appends record `id` to `block`.
pub(super) fn push(block: &mut Vec<u8>, id: MsgId, record: &[u8]) {
    block.extend_from_slice(&id.to_le_bytes());
    // A record is far below 4 GiB (its fields are bounded by the protocol's limits).
    block.extend_from_slice(&(record.len() as u32).to_le_bytes());
    block.extend_from_slice(record);
}

/// The records of a block, in order: `(id, record)`, or the damage that stops the walk.
pub(super) fn entries(block: &[u8]) -> impl Iterator<Item = Result<(MsgId, &[u8]), Damage>> {
    let mut rest = block;
    let mut last: Option<MsgId> = None;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let head = rest
                .get(..HEADER)
                .ok_or_else(|| Damage::new("a message block ends inside a record's header"))?;
            let id = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
            let record = rest
                .get(HEADER..)
                .and_then(|r| r.get(..len))
                .ok_or_else(|| {
                    Damage::new(format!(
                        "a message block ends inside record {id} ({len} bytes announced)"
                    ))
                })?;
            if last.is_some_and(|l| l >= id) {
                return Err(Damage::new(format!(
                    "a message block holds record {id} after a later one"
                )));
            }
            Ok((id, record, HEADER + len))
        })();
        match parsed {
            Ok((id, record, used)) => {
                rest = &rest[used..];
                last = Some(id);
                Some(Ok((id, record)))
            }
            Err(d) => {
                rest = &[];
                Some(Err(d))
            }
        }
    })
}

/// Record `id` in `block`, if it holds it.
pub(super) fn find(block: &[u8], id: MsgId) -> Result<Option<&[u8]>, Damage> {
    for entry in entries(block) {
        let (at, record) = entry?;
        if at == id {
            return Ok(Some(record));
        }
        if at > id {
            break;
        }
    }
    Ok(None)
}

/// The last id of a block, checked: the id its key names must be its last record's.
fn check_last(block: &[u8], key: MsgId) -> Result<(), Damage> {
    let mut last = None;
    for entry in entries(block) {
        last = Some(entry?.0);
    }
    if last == Some(key) {
        Ok(())
    } else {
        Err(Damage::new(format!(
            "the message block under {key} ends with {last:?}"
        )))
    }
}

/// The message log of one transaction: its blocks, the per-id table, and (in a write transaction)
/// the block being filled, not yet inserted.
pub(super) struct Log<'a, B, M> {
    pub(super) blocks: &'a B,
    pub(super) single: &'a M,
    pub(super) open: &'a [u8],
}

impl<B: LogTable, M: LogTable> Log<'_, B, M> {
    /// `f` of record `id`, or `None` when it is not stored.
    pub(super) fn with<T>(&self, id: MsgId, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>, Fail> {
        if let Some(record) = find(self.open, id)? {
            return Ok(Some(f(record)));
        }
        if let Some(entry) = self.blocks.range(id..)?.next() {
            let (_, block) = entry?;
            if let Some(record) = find(block.value(), id)? {
                return Ok(Some(f(record)));
            }
        }
        Ok(self.single.get(id)?.map(|record| f(record.value())))
    }

    /// Whether record `id` is stored.
    pub(super) fn contains(&self, id: MsgId) -> Result<bool, Fail> {
        Ok(self.with(id, |_| ())?.is_some())
    }

    /// The largest id stored, or 0.
    pub(super) fn last_id(&self) -> Result<MsgId, Fail> {
        let mut last = 0;
        if let Some(entry) = self.blocks.last()? {
            last = entry.0.value();
        }
        if let Some(entry) = self.single.last()? {
            last = last.max(entry.0.value());
        }
        if let Some(entry) = entries(self.open).last() {
            last = last.max(entry?.0);
        }
        Ok(last)
    }

    /// Calls `f` with each record with an id in `from..=to`, ascending (descending with `rev`),
    /// until it returns `true`. The blocks are read one at a time, in that order, so a scan that
    /// stops early reads only the blocks it needed; the per-id table's records in the range and
    /// the open block's are gathered first (their places, not their bytes) and merged in. A block
    /// in the range that does not parse is handed to `damaged` with its key: its error fails the
    /// scan, else the block is left out.
    pub(super) fn scan(
        &self,
        from: MsgId,
        to: MsgId,
        rev: bool,
        mut damaged: impl FnMut(MsgId, Damage) -> Result<(), Fail>,
        mut f: impl FnMut(MsgId, &[u8]) -> Result<bool, Fail>,
    ) -> Result<(), Fail> {
        if from > to {
            return Ok(());
        }
        // The records outside the blocks: (id, the single's guard or the open block, where).
        let mut singles: Vec<AccessGuard<'_, &'static [u8]>> = Vec::new();
        let mut extra: Vec<(MsgId, Option<usize>, usize, usize)> = Vec::new();
        for entry in self.single.range(from..=to)? {
            let (id, record) = entry?;
            let len = record.value().len();
            extra.push((id.value(), Some(singles.len()), 0, len));
            singles.push(record);
        }
        let base = |whole: &[u8], part: &[u8]| part.as_ptr() as usize - whole.as_ptr() as usize;
        for e in entries(self.open) {
            let (id, record) = e?;
            if id > to {
                break;
            }
            if id >= from {
                let at = base(self.open, record);
                extra.push((id, None, at, at + record.len()));
            }
        }
        extra.sort_unstable_by_key(|item| item.0);
        if rev {
            extra.reverse();
        }
        let extra_bytes = |item: &(MsgId, Option<usize>, usize, usize)| -> &[u8] {
            match item.1 {
                Some(g) => &singles[g].value()[item.2..item.3],
                None => &self.open[item.2..item.3],
            }
        };
        let mut next = 0;
        // The blocks that can hold ids in the range: up to the first whose last id is `to` or
        // more (the later ones start above `to`).
        let upper = match self.blocks.range(to..)?.next() {
            Some(entry) => entry?.0.value(),
            None => MsgId::MAX,
        };
        let range = self.blocks.range(from..=upper)?;
        let blocks: Box<dyn Iterator<Item = _>> = if rev {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut found: Vec<(MsgId, usize, usize)> = Vec::new();
        for entry in blocks {
            let (key, block) = entry?;
            let whole = block.value();
            found.clear();
            let mut bad = None;
            for e in entries(whole) {
                match e {
                    Ok((id, record)) if (from..=to).contains(&id) => {
                        let at = base(whole, record);
                        found.push((id, at, at + record.len()));
                    }
                    Ok(_) => {}
                    Err(d) => {
                        bad = Some(d);
                        break;
                    }
                }
            }
            if let Some(d) = bad {
                damaged(key.value(), d)?;
                continue;
            }
            if rev {
                found.reverse();
            }
            for &(id, a, b) in &found {
                while let Some(item) = extra.get(next) {
                    let before = if rev { item.0 > id } else { item.0 < id };
                    if !before {
                        break;
                    }
                    next += 1;
                    if f(item.0, extra_bytes(item))? {
                        return Ok(());
                    }
                }
                if f(id, &whole[a..b])? {
                    return Ok(());
                }
            }
        }
        for item in &extra[next..] {
            if f(item.0, extra_bytes(item))? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Calls `f` with every record of the log, the blocks' first and then the per-id table's (an
    /// id in both is met twice; the writer never stores one twice), one block in memory at a time.
    /// A block that does not parse, or whose key is not its last id, is handed to `damaged` with
    /// its key and skipped.
    pub(super) fn each(
        &self,
        mut f: impl FnMut(MsgId, &[u8]),
        mut damaged: impl FnMut(MsgId, Damage),
    ) -> Result<(), Fail> {
        for entry in self.blocks.iter()? {
            let (key, block) = entry?;
            let key = key.value();
            if let Err(d) = check_last(block.value(), key) {
                damaged(key, d);
                continue;
            }
            for e in entries(block.value()) {
                let (id, record) = e?;
                f(id, record);
            }
        }
        for entry in self.single.iter()? {
            let (id, record) = entry?;
            f(id.value(), record.value());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ids: &[MsgId]) -> Vec<u8> {
        let mut b = Vec::new();
        for &id in ids {
            push(&mut b, id, format!("record {id}").as_bytes());
        }
        b
    }

    #[test]
    fn a_record_is_found_at_a_blocks_first_and_last_id_and_not_between() {
        let b = block(&[5, 6, 9]);
        assert_eq!(find(&b, 5).unwrap(), Some(b"record 5".as_slice()));
        assert_eq!(find(&b, 9).unwrap(), Some(b"record 9".as_slice()));
        assert_eq!(find(&b, 7).unwrap(), None);
        assert_eq!(find(&b, 4).unwrap(), None);
        assert_eq!(find(&b, 10).unwrap(), None);
        assert!(check_last(&b, 9).is_ok());
        assert!(check_last(&b, 8).is_err());
    }

    #[test]
    fn a_damaged_block_is_damage_never_a_panic() {
        let b = block(&[1, 2, 3]);
        // Every cut of the block, and a length that runs past its end.
        for cut in 1..b.len() {
            let short = &b[..cut];
            let walked: Result<Vec<_>, _> = entries(short).collect();
            let whole_records = cut == HEADER + 8 || cut == 2 * (HEADER + 8);
            assert_eq!(walked.is_ok(), whole_records, "cut at {cut}");
        }
        let mut long = b.clone();
        long[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(find(&long, 3).is_err());
        // Ids out of order.
        let mut swapped = block(&[2]);
        swapped.extend_from_slice(&block(&[1]));
        assert!(find(&swapped, 5).is_err());
        assert!(check_last(&swapped, 1).is_err());
        assert!(entries(&[]).next().is_none());
    }
}
