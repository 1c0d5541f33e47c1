//! HISTORY paging, once for both stores: which ids a page shows and where the next pages start,
//! given only a way to list the ids of a conversation between two bounds.
//!
//! A conversation here is a set of message ids, restricted to the ids a reader may see (`lo` to
//! `hi`, inclusive: a private room's member sees from their join on, a JOIN's replay up to the
//! join). The cursor rules are spec 4.11's, applied to that set: nothing outside it exists for the
//! page, its cursors or the empty-page rules.

use super::{Cursor, MsgId};

/// A page: the ids shown (ascending), and the older and newer cursors (see
/// [`HistoryPage`](super::HistoryPage)).
pub(crate) type Page = (Vec<MsgId>, Option<MsgId>, Option<MsgId>);

/// One page of `count` ids of the set `ids` describes, restricted to `lo..=hi`.
///
/// `ids(a, b, rev, take)` lists at most `take` ids of the set within `a..=b` (nothing when
/// `a > b`), ascending, or descending with `rev`.
pub(crate) fn page<E>(
    lo: MsgId,
    hi: MsgId,
    count: u32,
    cursor: Cursor,
    mut ids: impl FnMut(MsgId, MsgId, bool, usize) -> Result<Vec<MsgId>, E>,
) -> Result<Page, E> {
    let take = usize::try_from(count).unwrap_or(usize::MAX);
    let shown = match cursor {
        Cursor::Latest => {
            let mut v = ids(lo, hi, true, take)?;
            v.reverse();
            v
        }
        Cursor::Before(0) => Vec::new(),
        Cursor::Before(x) => {
            let mut v = ids(lo, hi.min(x - 1), true, take)?;
            v.reverse();
            v
        }
        Cursor::After(MsgId::MAX) => Vec::new(),
        Cursor::After(x) => ids(lo.max(x + 1), hi, false, take)?,
    };
    // Whether the set holds an id within a..=b.
    let mut any = |a: MsgId, b: MsgId| -> Result<bool, E> { Ok(!ids(a, b, false, 1)?.is_empty()) };
    let (older, newer) = match (shown.first(), shown.last()) {
        (Some(&min), Some(&max)) => {
            let older = min > 0 && any(lo, min - 1)?;
            let newer = max < MsgId::MAX && any(max + 1, hi)?;
            (older.then_some(min), newer.then_some(max))
        }
        _ => match cursor {
            Cursor::Latest => (None, None),
            // Nothing below x; if anything from x up exists, After(x - 1) shows it.
            Cursor::Before(x) => (None, any(lo.max(x), hi)?.then(|| x.saturating_sub(1))),
            // Nothing above x; if anything up to x exists, Before(x + 1) shows it.
            Cursor::After(x) => (any(lo, hi.min(x))?.then(|| x.saturating_add(1)), None),
        },
    };
    Ok((shown, older, newer))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::convert::Infallible;

    use super::*;

    fn run(set: &[MsgId], lo: MsgId, hi: MsgId, count: u32, cursor: Cursor) -> Page {
        let set: BTreeSet<MsgId> = set.iter().copied().collect();
        page(lo, hi, count, cursor, |a, b, rev, take| {
            let r: Vec<MsgId> = if a > b {
                Vec::new()
            } else if rev {
                set.range(a..=b).rev().take(take).copied().collect()
            } else {
                set.range(a..=b).take(take).copied().collect()
            };
            Ok::<_, Infallible>(r)
        })
        .unwrap()
    }

    #[test]
    fn pages_of_the_whole_set() {
        let set = [2, 4, 6, 8];
        let all = (0, MsgId::MAX);
        assert_eq!(
            run(&set, all.0, all.1, 2, Cursor::Latest),
            (vec![6, 8], Some(6), None)
        );
        assert_eq!(
            run(&set, all.0, all.1, 2, Cursor::Before(6)),
            (vec![2, 4], None, Some(4))
        );
        assert_eq!(
            run(&set, all.0, all.1, 2, Cursor::After(2)),
            (vec![4, 6], Some(4), Some(6))
        );
        assert_eq!(
            run(&set, all.0, all.1, 2, Cursor::Before(2)),
            (vec![], None, Some(1))
        );
        assert_eq!(
            run(&set, all.0, all.1, 2, Cursor::After(8)),
            (vec![], Some(9), None)
        );
        assert_eq!(
            run(&[], all.0, all.1, 2, Cursor::Latest),
            (vec![], None, None)
        );
        assert_eq!(
            run(&set, all.0, all.1, 2, Cursor::Before(0)),
            (vec![], None, Some(0))
        );
        assert_eq!(
            run(&set, all.0, all.1, 2, Cursor::After(MsgId::MAX)),
            (vec![], Some(MsgId::MAX), None)
        );
    }

    #[test]
    fn what_is_outside_the_bounds_does_not_exist() {
        let set = [2, 4, 6, 8];
        // Visible from 5 on (a member who joined after message 4).
        assert_eq!(
            run(&set, 5, MsgId::MAX, 5, Cursor::Latest),
            (vec![6, 8], None, None)
        );
        assert_eq!(
            run(&set, 5, MsgId::MAX, 5, Cursor::Before(6)),
            (vec![], None, Some(5))
        );
        assert_eq!(
            run(&set, 5, MsgId::MAX, 5, Cursor::Before(5)),
            (vec![], None, Some(4))
        );
        assert_eq!(
            run(&set, 5, MsgId::MAX, 5, Cursor::After(0)),
            (vec![6, 8], None, None)
        );
        assert_eq!(
            run(&set, 9, MsgId::MAX, 5, Cursor::Latest),
            (vec![], None, None)
        );
        // A replay: up to 6 only.
        assert_eq!(
            run(&set, 0, 6, 2, Cursor::Latest),
            (vec![4, 6], Some(4), None)
        );
        assert_eq!(run(&set, 3, 5, 2, Cursor::Latest), (vec![4], None, None));
        assert_eq!(run(&set, 7, 6, 2, Cursor::Latest), (vec![], None, None));
    }
}
