//! Builds a large database for the growth benchmark: appends N messages straight through the
//! store, in large batches (one durable commit each), without the protocol.
//!
//! Run in release: `cargo run --release --example fill_db -- PATH [N] [BATCH]` (default N =
//! 10,000,000, BATCH = 100,000). PATH is created if missing; an existing database is appended to,
//! after its highest message id. Nine messages in ten are direct messages between 2,000 accounts
//! named `fill0` .. `fill1999` (1,000 pairs), one in ten is an `ALL` broadcast; texts are 64
//! bytes, as in the load generator. No message waits in anyone's backlog. The accounts themselves
//! are not created: the messages are there to make the log and its indexes large, which is what
//! the growth benchmark measures. Prints its progress every batch.

use std::path::PathBuf;
use std::time::Instant;

use chatd::store::redb::RedbStore;
use chatd::store::{MessageRecord, Store, StoreOp, To};

const PAIRS: u64 = 1000;

fn message(id: u64) -> StoreOp {
    let pair = id.wrapping_mul(2_654_435_761) % PAIRS;
    let (a, b) = (format!("fill{}", 2 * pair), format!("fill{}", 2 * pair + 1));
    let (from, to) = if id.is_multiple_of(2) { (a, b) } else { (b, a) };
    let to = if id.is_multiple_of(10) {
        To::All
    } else {
        To::User(to)
    };
    StoreOp::AppendMessage {
        msg: MessageRecord {
            id,
            time_ms: 1_700_000_000_000 + id as i64,
            from,
            to,
            text: format!("{id:020} a stored message of sixty-four bytes...."),
        },
        pending_for: Vec::new(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().ok_or("usage: fill_db PATH [N] [BATCH]")?);
    let n: u64 = args.next().map_or(Ok(10_000_000), |a| a.parse())?;
    let batch: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let (mut store, snapshot) = RedbStore::open(&path)?;
    let first = snapshot.next_id;
    let last = first + n - 1;
    let start = Instant::now();
    let mut id = first;
    while id <= last {
        let ops: Vec<StoreOp> = (id..(id + batch).min(last + 1)).map(message).collect();
        id += ops.len() as u64;
        store.execute(&ops)?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{} messages written, {:.0} s, {:.0} messages/s",
            id - first,
            secs,
            (id - first) as f64 / secs
        );
    }
    println!(
        "{} messages appended (ids {first}..={last}) in {:.1} s",
        n,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
