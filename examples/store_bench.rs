//! Throughput of the redb store alone: append N messages in batches of 1, 10, 100 and 1000 ops
//! (one durable commit per batch) and print messages and commits per second, then time HISTORY
//! pages over the result.
//!
//! Last, HISTORY with the conversation index's list of messages past its watermark at its
//! fullest (`INDEX_LAG` - 1 messages, every page scans them): the latest 50 of a busy conversation
//! (one message in two), and of a quiet one (nothing past the watermark, so the whole list is
//! scanned), read as the server reads them (a read transaction, then the messages by id); then
//! the same with nothing past the watermark (one message more makes the index take them all).
//!
//! Last, reads of scattered messages (offline backlogs, HISTORY pages) with the log in blocks and
//! with the same messages in the per-id table (layout 4's log, read through the fallback).
//!
//! Run in release: `cargo run --release --example store_bench -- [N]` (default N = 10000; the
//! batch-of-1 run uses N / 10, since it is one fsync per message). Each run uses a fresh file in a
//! temporary directory, on the file system of `$TMPDIR`.

use std::time::Instant;

use chatd::config::INDEX_LAG;
use chatd::store::redb::RedbStore;
use chatd::store::{Conversation, Cursor, MessageRecord, ReadOp, Store, StoreOp, StoreReply, To};

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
    history_with_full_tail()?;
    scattered_reads(n)?;
    Ok(())
}

/// Times reads of scattered messages (every user's offline backlog, one message in four of the
/// log, spread over it; then the latest 50 of conversations, after an index flush so that the
/// pages read through the rows) with the log in blocks, then with the same messages moved into
/// the per-id table (layout 4's log, read through the fallback).
fn scattered_reads(n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("scattered.redb");
    {
        let (mut store, _) = RedbStore::open(&path)?;
        let mut id = 1;
        while id <= n {
            let ops: Vec<StoreOp> = (id..(id + 1000).min(n + 1)).map(message).collect();
            id += ops.len() as u64;
            store.execute(&ops)?;
        }
    }
    for layout in ["blocks", "per-id table"] {
        if layout == "per-id table" {
            RedbStore::unblock(&path)?;
        }
        let (store, _) = RedbStore::open(&path)?;
        for round in 0..2 {
            let start = Instant::now();
            let mut read = 0usize;
            for u in 0..USERS {
                let reader = store.reader()?;
                let user = format!("user{u}");
                if let StoreReply::Backlog(ids) = reader.read(&ReadOp::Backlog { user })? {
                    if let StoreReply::Messages(m) = reader.read(&ReadOp::Messages { ids })? {
                        read += m.len();
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            // The first round reads the file into redb's cache; the second is the warm figure.
            println!(
                "backlogs, log in {layout}, round {}: {read} messages, {:.2} us per message",
                round + 1,
                secs * 1e6 / read.max(1) as f64
            );
        }
        let pages = 2000u64;
        let start = Instant::now();
        let mut shown = 0;
        for i in 0..pages {
            let (a, b) = (
                format!("user{}", i % USERS),
                format!("user{}", (i * 7 + 3) % USERS),
            );
            shown += latest_page(&store, a, b)?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "history, log in {layout}: {pages} pages ({shown} messages), {:.1} us per page",
            secs * 1e6 / pages as f64
        );
    }
    Ok(())
}

/// A direct message between `a` and `b`.
/// Reads the latest page (50 messages) of the conversation between `a` and `b`, as a client's
/// HISTORY does: the page's ids, then their messages. Returns how many messages it read.
fn latest_page(
    store: &RedbStore,
    a: String,
    b: String,
) -> Result<usize, Box<dyn std::error::Error>> {
    let reader = store.reader()?;
    let op = ReadOp::History {
        conv: Conversation::Pair(a, b),
        count: 50,
        cursor: Cursor::Latest,
    };
    if let StoreReply::History(p) = reader.read(&op)? {
        if let StoreReply::Messages(m) = reader.read(&ReadOp::Messages { ids: p.ids })? {
            return Ok(m.len());
        }
    }
    Ok(0)
}

fn direct(id: u64, a: &str, b: &str) -> StoreOp {
    StoreOp::AppendMessage {
        msg: MessageRecord {
            id,
            time_ms: 0,
            from: a.into(),
            to: To::User(b.into()),
            text: "a message of about sixty bytes, typical of a chat line here".into(),
        },
        pending_for: Vec::new(),
    }
}

/// Times HISTORY pages with the list past the watermark at its fullest (see the module doc).
fn history_with_full_tail() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (mut store, _) = RedbStore::open(&dir.path().join("tail.redb"))?;
    // Two flushes' worth and a list one short of the next: one message in two between "busy0"
    // and "busy1", the rest spread over the usual users; "quiet0" and "quiet1" spoke once, first.
    let total = 3 * INDEX_LAG as u64 - 1;
    let mut ops = vec![direct(1, "quiet0", "quiet1")];
    for id in 2..=total {
        ops.push(if id % 2 == 0 {
            direct(id, "busy0", "busy1")
        } else {
            message(id)
        });
        if ops.len() == 1000 {
            store.execute(&ops)?;
            ops.clear();
        }
    }
    store.execute(&ops)?;
    time_pages(&store, INDEX_LAG - 1)?;
    // One more message fills the list: the index takes it all, nothing is past the watermark.
    store.execute(&[direct(total + 1, "busy0", "busy1")])?;
    time_pages(&store, 0)
}

/// Times the latest 50 of the busy and the quiet conversation; `past` is how many messages are
/// past the watermark.
fn time_pages(store: &RedbStore, past: usize) -> Result<(), Box<dyn std::error::Error>> {
    for (what, a, b) in [("busy", "busy0", "busy1"), ("quiet", "quiet0", "quiet1")] {
        let pages = 500u32;
        let start = Instant::now();
        let mut shown = 0;
        for _ in 0..pages {
            shown += latest_page(store, a.into(), b.into())?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "history, {past} messages past the watermark, {what} conversation: {pages} pages \
             ({shown} messages), {:.1} us per page",
            secs * 1e6 / f64::from(pages)
        );
    }
    Ok(())
}
