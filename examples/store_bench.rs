//! Throughput of the redb store alone: append N messages in batches of 1, 10, 100 and 1000 ops
//! (one durable commit per batch) and print messages and commits per second, then time HISTORY
//! pages over the result.
//!
//! Run in release: `cargo run --release --example store_bench -- [N]` (default N = 10000; the
//! batch-of-1 run uses N / 10, since it is one fsync per message). Each run uses a fresh file in a
//! temporary directory, on the file system of `$TMPDIR`.

use std::time::Instant;

use chatd::store::redb::RedbStore;
use chatd::store::{Conversation, Cursor, MessageRecord, Store, StoreOp, To};

const USERS: u64 = 100;

fn message(id: u64) -> StoreOp {
    let from = format!("user{}", id % USERS);
    let to = format!("user{}", (id * 7 + 3) % USERS);
    // One message in four is for an offline recipient.
    let pending_for = if id.is_multiple_of(4) {
        vec![to.clone()]
    } else {
        Vec::new()
    };
    StoreOp::AppendMessage {
        msg: MessageRecord {
            id,
            time_ms: 1_700_000_000_000 + id as i64,
            from,
            to: To::User(to),
            text: "a message of about sixty bytes, typical of a chat line here".into(),
        },
        pending_for,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 10_000,
    };
    println!(
        "{:>6} {:>9} {:>9} {:>12} {:>10}",
        "batch", "messages", "seconds", "messages/s", "commits/s"
    );
    for batch in [1u64, 10, 100, 1000] {
        let total = if batch == 1 { (n / 10).max(1) } else { n };
        let dir = tempfile::tempdir()?;
        let (mut store, _) = RedbStore::open(&dir.path().join("bench.redb"))?;
        let start = Instant::now();
        let mut id = 1;
        let mut commits = 0u64;
        while id <= total {
            let ops: Vec<StoreOp> = (id..(id + batch).min(total + 1)).map(message).collect();
            id += ops.len() as u64;
            store.execute(&ops)?;
            commits += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{batch:>6} {total:>9} {secs:>9.3} {:>12.0} {:>10.0}",
            total as f64 / secs,
            commits as f64 / secs
        );

        if batch == 1000 {
            // Read side: latest 50 of many conversations, one page per (read-only) batch.
            let pages = 2000u64;
            let start = Instant::now();
            let mut shown = 0;
            for i in 0..pages {
                let conv = Conversation::Pair(
                    format!("user{}", i % USERS),
                    format!("user{}", (i * 7 + 3) % USERS),
                );
                let op = StoreOp::History {
                    conv,
                    count: 50,
                    cursor: Cursor::Latest,
                };
                // As the server reads a page: its ids, then its messages by id.
                if let Some(chatd::store::StoreReply::History(p)) = store.execute(&[op])?.pop() {
                    let read = StoreOp::ReadMessages { ids: p.ids };
                    if let Some(chatd::store::StoreReply::Messages(m)) =
                        store.execute(&[read])?.pop()
                    {
                        shown += m.len();
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "history: {pages} pages of up to 50 ({shown} messages) in {secs:.3} s, {:.0} pages/s",
                pages as f64 / secs
            );
        }
    }
    Ok(())
}
