//! Crash tests: `kill -9` of the server, then a new server on the same database file.
//!
//! The failure guarded against: a message that the server acknowledged (`OK MSG <id> ...`) is
//! missing after a crash, comes back with another id or text, or its id is handed out again to a
//! later message. The server promises that every message is committed (redb, fsync) before its OK
//! is sent, and that ids strictly increase and are never reused; so whatever moment the process
//! dies at, every message a client saw acknowledged must be in the history with the id from its
//! OK, a message to an offline user must still be waiting for them, the database must open without
//! error, and the next id must be greater than every id handed out before. Messages that were sent
//! but not acknowledged may or may not be there, but never twice. SIGKILL stops the process at an
//! arbitrary point without any shutdown code running; it does not simulate a power cut (data the
//! kernel has accepted survives), which is redb's own fsync guarantee to keep.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use common::*;

const SENDERS: usize = 3;

fn sender(i: usize) -> String {
    format!("s{i}")
}

/// A message as acknowledged, or as found in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    from: String,
    to: String,
    text: String,
}

/// Every message in the conversation of `c` with `with`, read page by page with the BEFORE
/// cursors of the final lines, in increasing id order.
fn whole_history(c: &mut Client, with: &str) -> BTreeMap<u64, Stored> {
    let mut all = BTreeMap::new();
    let mut query = format!("{with} 500");
    loop {
        let (lines, fin) = c.history(&query);
        for l in &lines {
            let m = parse_msg(l, "HISTORY");
            let s = Stored {
                from: m.from,
                to: m.to,
                text: m.text,
            };
            assert!(all.insert(m.id, s).is_none(), "id {} shown twice", m.id);
        }
        let before = fin
            .split(" BEFORE ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("{fin}"));
        if before == "-" {
            return all;
        }
        query = format!("{with} 500 BEFORE {before}");
    }
}

/// Starts a server on `db` and checks that it opened the database cleanly and will hand out ids
/// past `max_seen`.
fn restart(db: &Path, max_seen: u64) -> Server {
    let server = Server::start_on(db, &[]);
    let log = server.log();
    let next: u64 = log
        .iter()
        .find_map(|l| l.split("next message id ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no next id in the log: {log:?}"));
    assert!(
        next > max_seen,
        "next id {next} after a crash, but {max_seen} was already handed out"
    );
    let errors: Vec<&String> = log.iter().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "{errors:?}");
    server
}

/// Each of the `SENDERS` senders (registered first when `new`) writes `per_sender` messages to
/// `to` at once (`text(k)` for the k-th) and reads its OKs, each of which must say `outcome`;
/// `server` is killed once `kill_after` OKs have arrived. Returns every OK that arrived, as (sender,
/// id, k): those already on their way at the kill count as acknowledged too.
fn stream_and_kill(
    server: Server,
    new: bool,
    to: &str,
    per_sender: usize,
    kill_after: usize,
    outcome: &'static str,
    text: impl Fn(usize) -> String,
) -> Vec<Ack> {
    let (ok_tx, ok_rx) = mpsc::channel::<Ack>();
    let mut threads = Vec::new();
    for i in 0..SENDERS {
        let mut c = server.connect();
        if new {
            c.register(&sender(i));
        }
        c.login(&sender(i));
        let mut w = c.writer();
        let batch: String = (0..per_sender)
            .map(|k| format!("MSG {to} {}\n", text(k)))
            .collect();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            // Fails once the server is killed; what was written is what matters.
            let _ = w.write_all(batch.as_bytes());
        });
        let tx = ok_tx.clone();
        let reader = std::thread::spawn(move || {
            let mut k = 0;
            while let Some(line) = c.next_whole_line() {
                let id = parse_ok_id(&line, "MSG");
                assert_eq!(line, format!("OK MSG {id} {outcome}"));
                if tx.send((i, id, k)).is_err() {
                    break;
                }
                k += 1;
            }
        });
        threads.push((writer, reader));
    }
    drop(ok_tx);
    kill_after_acks(server, ok_rx, threads, kill_after)
}

/// An OK as the senders' readers report it: (sender, id, k for the k-th message of the sender).
type Ack = (usize, u64, usize);

/// Waits for `kill_after` OKs, kills `server`, waits for the senders' writer and reader threads,
/// and returns every OK that arrived: those already on their way at the kill count too.
fn kill_after_acks(
    server: Server,
    ok_rx: mpsc::Receiver<Ack>,
    threads: Vec<(JoinHandle<()>, JoinHandle<()>)>,
    kill_after: usize,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    while acks.len() < kill_after {
        acks.push(ok_rx.recv_timeout(TIMEOUT).expect("OKs stopped coming"));
    }
    server.crash();
    for (w, r) in threads {
        w.join().unwrap();
        r.join().expect("a sender's reader failed");
    }
    acks.extend(ok_rx.try_iter());
    acks
}

/// Logs in `name` and checks the offline backlog holds exactly `expected`, in id order.
fn check_backlog(server: &Server, name: &str, expected: &BTreeMap<u64, Stored>) {
    let mut c = server.connect();
    let backlog = c.login(name);
    let (end, msgs) = backlog.split_last().unwrap();
    assert_eq!(end, &format!("BACKLOG-END {}", expected.len()));
    let got: Vec<u64> = msgs.iter().map(|l| parse_msg(l, "MESSAGE").id).collect();
    let want: Vec<u64> = expected.keys().copied().collect();
    assert_eq!(got, want, "{name}'s backlog after the crash");
}

#[test]
fn acknowledged_messages_survive_kill_9_with_their_ids() {
    const ROUNDS: usize = 5;
    const PER_SENDER: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    // Every acknowledged message so far: id -> what was sent.
    let mut acked: BTreeMap<u64, Stored> = BTreeMap::new();
    let mut max_seen = 0;
    let started = Instant::now();

    for round in 0..=ROUNDS {
        let server = restart(&db, max_seen);
        let mut senders: Vec<Client> = (0..SENDERS)
            .map(|i| {
                let mut c = server.connect();
                if round == 0 {
                    c.register(&sender(i));
                }
                c.login(&sender(i));
                c
            })
            .collect();

        // Everything acknowledged in earlier rounds is there, with its id and text, and the
        // recipient of the last round still has it waiting.
        for (i, c) in senders.iter_mut().enumerate() {
            for r in 0..round {
                let history = whole_history(c, &format!("r{r}"));
                let expected: BTreeMap<u64, Stored> = acked
                    .iter()
                    .filter(|(_, s)| s.from == sender(i) && s.to == format!("r{r}"))
                    .map(|(id, s)| (*id, s.clone()))
                    .collect();
                assert_eq!(history, expected, "s{i} with r{r} after round {round}");
            }
        }
        if round > 0 {
            let prev = format!("r{}", round - 1);
            let expected = acked
                .iter()
                .filter(|(_, s)| s.to == prev)
                .map(|(id, s)| (*id, s.clone()))
                .collect();
            check_backlog(&server, &prev, &expected);
        }
        if round == ROUNDS {
            break;
        }

        // This round: a new offline recipient, and every sender writes its messages at once.
        let to = format!("r{round}");
        server.connect().register(&to);
        for (i, c) in senders.iter_mut().enumerate() {
            let mut batch = String::new();
            for k in 0..PER_SENDER {
                batch.push_str(&format!("MSG {to} round {round} from s{i} number {k}\n"));
            }
            c.send_raw(batch.as_bytes());
        }
        let mut round_ids = Vec::new();
        for (i, c) in senders.iter_mut().enumerate() {
            for k in 0..PER_SENDER {
                let reply = c.read_line();
                let id = parse_ok_id(&reply, "MSG");
                assert_eq!(reply, format!("OK MSG {id} KEPT"));
                assert!(id > max_seen, "id {id} reused (had seen up to {max_seen})");
                let s = Stored {
                    from: sender(i),
                    to: to.clone(),
                    text: format!("round {round} from s{i} number {k}"),
                };
                assert!(acked.insert(id, s).is_none(), "id {id} acknowledged twice");
                round_ids.push(id);
            }
        }
        // Right after the last OK.
        server.crash();
        max_seen = max_seen.max(*round_ids.iter().max().unwrap());
    }

    // The file itself opens cleanly in-process too, with every account and the right next id.
    let (store, snapshot) =
        chatd::store::redb::RedbStore::open(&db).expect("opening after crashes");
    drop(store);
    assert_eq!(snapshot.accounts.len(), SENDERS + ROUNDS);
    assert!(snapshot.next_id > max_seen);
    println!(
        "crash: {ROUNDS} rounds of {} acknowledged messages, each followed by kill -9, all found; \
         {:?} in all",
        SENDERS * PER_SENDER,
        started.elapsed()
    );
}

#[test]
fn a_kill_in_the_middle_of_a_stream_loses_no_acknowledged_message() {
    const ROUNDS: usize = 3;
    // Written per sender per round; fewer than 1000 in all, so the recipient's backlog never fills.
    const PER_SENDER: usize = 300;
    // Kill once this many OKs have arrived (from all senders together).
    const KILL_AFTER: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let mut max_seen = 0;
    let mut unacked_total = 0;

    for round in 0..ROUNDS {
        let server = restart(&db, max_seen);
        let to = format!("r{round}");
        let mut setup = server.connect();
        setup.register(&to);
        let acks = stream_and_kill(
            server,
            round == 0,
            &to,
            PER_SENDER,
            KILL_AFTER,
            "KEPT",
            |k| format!("stream {k}"),
        );
        assert!(
            acks.len() < SENDERS * PER_SENDER,
            "the kill came after the last OK"
        );

        let server = restart(&db, max_seen);
        let mut stored: BTreeMap<u64, Stored> = BTreeMap::new();
        for i in 0..SENDERS {
            let mut c = server.connect();
            c.login(&sender(i));
            let history = whole_history(&mut c, &to);
            // What is stored was sent, by this sender, once, in the order written.
            let mut texts = HashSet::new();
            let mut last_k = None;
            for s in history.values() {
                assert_eq!((&*s.from, &*s.to), (&*sender(i), &*to));
                let k: usize = s
                    .text
                    .strip_prefix("stream ")
                    .and_then(|k| k.parse().ok())
                    .unwrap_or_else(|| panic!("unknown text {:?}", s.text));
                assert!(texts.insert(k), "stream {k} stored twice");
                assert!(last_k < Some(k), "stored out of order");
                last_k = Some(k);
            }
            // Every acknowledged message is there, with the id of its OK.
            for (_, id, k) in acks.iter().filter(|a| a.0 == i) {
                assert_eq!(
                    history.get(id).map(|s| &*s.text),
                    Some(&*format!("stream {k}")),
                    "acknowledged message {id} from s{i} after the crash"
                );
            }
            stored.extend(history);
        }
        // Whatever was committed is also waiting for the recipient, and nothing else.
        check_backlog(&server, &to, &stored);
        max_seen = max_seen.max(*stored.keys().max().unwrap());
        unacked_total += stored.len() - acks.len();
        println!(
            "crash round {round}: killed after {} OKs; {} messages were committed",
            acks.len(),
            stored.len()
        );
        // A new message gets an id past everything before the crash.
        let mut c = server.connect();
        c.login(&sender(0));
        let id = c.msg(&to, "after the crash");
        assert!(id > max_seen);
        max_seen = id;
        server.crash();
    }
    println!("crash: {unacked_total} messages were committed without their OK being seen");
}

/// The failure guarded against with delivery ahead of the commit (spec 6.1, 6.2): a message a
/// recipient saw live is lost in a crash and its id is handed out again to another message, or an
/// acknowledged message is missing. Three senders stream messages to a recipient who is online
/// and reads them as they come; the server is killed in the middle. Afterwards the next id is above
/// every id the recipient saw, every acknowledged message is stored with its id, and every message
/// the recipient saw is either stored as it was seen or not stored at all.
#[test]
fn ids_seen_live_before_a_crash_are_never_handed_out_again() {
    const ROUNDS: usize = 3;
    const PER_SENDER: usize = 300;
    const KILL_AFTER: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let mut max_seen = 0;
    let mut lost_total = 0;
    let mut seen_total = 0;

    for round in 0..ROUNDS {
        let server = restart(&db, max_seen);
        let mut watcher = server.connect();
        if round == 0 {
            watcher.register("watcher");
        }
        watcher.login("watcher");
        let (seen_tx, seen_rx) = mpsc::channel::<(u64, String, String)>();
        let watching = std::thread::spawn(move || {
            while let Some(line) = watcher.next_whole_line() {
                let m = parse_msg(&line, "MESSAGE");
                assert_eq!(m.to, "watcher");
                if seen_tx.send((m.id, m.from, m.text)).is_err() {
                    break;
                }
            }
        });
        let acks = stream_and_kill(
            server,
            round == 0,
            "watcher",
            PER_SENDER,
            KILL_AFTER,
            "DELIVERED",
            |k| format!("live {round} {k}"),
        );
        watching.join().expect("the recipient's reader failed");
        let seen: Vec<(u64, String, String)> = seen_rx.try_iter().collect();
        let seen_max = seen.iter().map(|s| s.0).max().unwrap_or(0);
        let acked_max = acks.iter().map(|a| a.1).max().unwrap_or(0);

        // The server opens the file and will hand out ids past everything anyone saw.
        let server = restart(&db, max_seen.max(seen_max).max(acked_max));
        let mut stored: BTreeMap<u64, Stored> = BTreeMap::new();
        for i in 0..SENDERS {
            let mut c = server.connect();
            c.login(&sender(i));
            let history = whole_history(&mut c, "watcher");
            for (_, id, k) in acks.iter().filter(|a| a.0 == i) {
                assert_eq!(
                    history.get(id).map(|s| &*s.text),
                    Some(&*format!("live {round} {k}")),
                    "acknowledged message {id} from s{i} after the crash"
                );
            }
            stored.extend(history);
        }
        // What the recipient saw is stored as it was seen, or was lost before its commit.
        let mut lost = 0;
        for (id, from, text) in &seen {
            match stored.get(id) {
                Some(s) => assert_eq!((&s.from, &s.text), (from, text), "message {id}"),
                None => {
                    assert!(
                        !acks.iter().any(|a| a.1 == *id),
                        "message {id} was acknowledged and is missing"
                    );
                    lost += 1;
                }
            }
        }
        lost_total += lost;
        seen_total += seen.len();
        max_seen = max_seen
            .max(seen_max)
            .max(stored.keys().max().copied().unwrap_or(0));
        // A new message gets an id past everything seen before the crash.
        let mut c = server.connect();
        c.login(&sender(0));
        let id = c.msg(&sender(1), "after the crash");
        assert!(
            id > max_seen,
            "id {id} after the crash; {max_seen} was seen"
        );
        max_seen = id;
        println!(
            "crash round {round}: killed after {} OKs; the recipient saw {} messages, {lost} of \
             them not committed",
            acks.len(),
            seen.len()
        );
        server.crash();
    }
    println!("crash: {seen_total} messages seen live, {lost_total} lost before their commit");
}

/// The room failure: a room message that was acknowledged (`OK MSG <id> DELIVERED <n>`) is missing
/// from the room after a crash, or comes back with another id; a membership whose JOIN or PART was
/// acknowledged is not what it said after the crash; or the unread count a member is told at login
/// does not match the messages the room holds. Three senders in one room each write a stream of
/// room messages at once and the server is killed in the middle; a fourth member stays offline the
/// whole time and must be told, after each restart, exactly how many messages the room holds.
#[test]
fn room_messages_and_memberships_survive_kill_9() {
    const ROUNDS: usize = 3;
    const PER_SENDER: usize = 200;
    const KILL_AFTER: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let room = "#crash";
    let mut max_seen = 0;
    // Every room message acknowledged so far: id -> (sender, text).
    let mut acked: BTreeMap<u64, (String, String)> = BTreeMap::new();

    for round in 0..ROUNDS {
        let server = restart(&db, max_seen);
        if round == 0 {
            let mut owner = server.connect();
            owner.register("owner");
            owner.login("owner");
            assert_eq!(
                owner.call(&format!("JOIN {room}")).last().unwrap(),
                "OK JOIN #crash CREATED"
            );
            let mut reader = server.connect();
            reader.register("reader");
            reader.login("reader");
            assert_eq!(
                reader.call(&format!("JOIN {room}")).last().unwrap(),
                "OK JOIN #crash JOINED"
            );
        } else {
            check_room(&server, room, &acked, round);
        }
        let (ok_tx, ok_rx) = mpsc::channel::<Ack>();
        let mut threads = Vec::new();
        for i in 0..SENDERS {
            let mut c = server.connect();
            if round == 0 {
                c.register(&sender(i));
            }
            c.login(&sender(i));
            // A member from round 0 on: JOIN answers MEMBER after a restart.
            let joined = c.call(&format!("JOIN {room}"));
            let want = if round == 0 { "JOINED" } else { "MEMBER" };
            assert_eq!(
                joined.last().unwrap(),
                &format!("OK JOIN #crash {want}"),
                "{joined:?}"
            );
            let mut w = c.writer();
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let mut batch = String::new();
                for k in 0..PER_SENDER {
                    batch.push_str(&format!("MSG {room} round {round} from s{i} number {k}\n"));
                }
                let _ = w.write_all(batch.as_bytes());
            });
            let tx = ok_tx.clone();
            let reader = std::thread::spawn(move || {
                let mut k = 0;
                while let Some(line) = c.next_whole_line() {
                    // The other senders' messages come in between.
                    if line.starts_with("MESSAGE ") || line.starts_with("JOINED ") {
                        continue;
                    }
                    let id = parse_ok_id(&line, "MSG");
                    assert!(
                        line.starts_with(&format!("OK MSG {id} DELIVERED ")),
                        "{line}"
                    );
                    if tx.send((i, id, k)).is_err() {
                        break;
                    }
                    k += 1;
                }
            });
            threads.push((writer, reader));
        }
        drop(ok_tx);
        let acks = kill_after_acks(server, ok_rx, threads, KILL_AFTER);
        assert!(
            acks.len() < SENDERS * PER_SENDER,
            "the kill came after the last OK"
        );
        for (i, id, k) in acks {
            let text = format!("round {round} from s{i} number {k}");
            assert!(
                acked.insert(id, (sender(i), text)).is_none(),
                "id {id} acknowledged twice"
            );
            max_seen = max_seen.max(id);
        }
        println!(
            "room crash round {round}: killed after {} acknowledged messages",
            acked.len()
        );
    }
    let server = restart(&db, max_seen);
    check_room(&server, room, &acked, ROUNDS);
}

/// After a crash: the room still has its five members; it holds every acknowledged message with
/// its id, sender and text, plus at most messages that were sent and not acknowledged, each once
/// and in each sender's order; and the member who never read is told the exact count at login.
fn check_room(server: &Server, room: &str, acked: &BTreeMap<u64, (String, String)>, round: usize) {
    let mut reader = server.connect();
    let pushes = reader.login("reader");
    let mut owner = server.connect();
    owner.login("owner");
    let members = owner.call(&format!("MEMBERS {room}"));
    assert_eq!(
        members.last().unwrap(),
        "OK MEMBERS #crash 5",
        "{members:?}"
    );
    for who in ["owner", "reader", "s0", "s1", "s2"] {
        assert!(
            members
                .iter()
                .any(|l| l.starts_with(&format!("MEMBER #crash {who} "))),
            "{who} is not a member after the crash: {members:?}"
        );
    }
    let stored = whole_history(&mut owner, room);
    for (id, (from, text)) in acked {
        let s = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged room message {id} lost before round {round}"));
        assert_eq!((&s.from, &s.text, &*s.to), (from, text, "#crash"));
    }
    // What is stored was sent, once, in each sender's order.
    let mut last: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for s in stored.values() {
        let (r, k): (usize, usize) = s
            .text
            .strip_prefix("round ")
            .and_then(|t| {
                let (r, rest) = t.split_once(" from ")?;
                let k = rest.split(" number ").nth(1)?;
                Some((r.parse().ok()?, k.parse().ok()?))
            })
            .unwrap_or_else(|| panic!("unknown text {:?}", s.text));
        if let Some(prev) = last.insert(&s.from, (r, k)) {
            assert!(
                prev < (r, k),
                "{} stored out of order: {prev:?} then {:?}",
                s.from,
                (r, k)
            );
        }
    }
    // The reader never marked anything read: every stored message is unread, counted exactly.
    let first = stored.keys().next().copied();
    match first {
        Some(first) => assert!(
            pushes.contains(&format!("UNREAD #crash {} {first}", stored.len())),
            "{pushes:?}, {} stored",
            stored.len()
        ),
        None => assert!(
            !pushes.iter().any(|l| l.starts_with("UNREAD ")),
            "{pushes:?}"
        ),
    }
}

/// The failure guarded against: a JOIN or a PART that was acknowledged is undone by a crash, or one
/// that was never sent takes effect. One account joins and leaves many rooms in one stream of
/// commands and the server is killed in the middle; after the restart, each room's membership is
/// the one its last acknowledged command left, or that of a later command that was sent.
#[test]
fn acknowledged_joins_and_parts_survive_kill_9() {
    const ROOMS: usize = 100;
    const KILL_AFTER: usize = 70;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let server = restart(&db, 0);
    let mut owner = server.connect();
    owner.register("owner");
    owner.login("owner");
    for k in 0..ROOMS {
        assert_eq!(
            owner.call(&format!("JOIN #m{k}")),
            [
                format!("ROOM #m{k} PUBLIC 1 OWNER 0"),
                format!("OK JOIN #m{k} CREATED")
            ]
        );
    }
    let mut c = server.connect();
    c.register("churn");
    c.login("churn");
    // JOIN every room, PART the even ones, JOIN them again, PART every room: 300 commands.
    let mut commands = Vec::new();
    for (rooms, join) in [
        ((0..ROOMS).collect::<Vec<_>>(), true),
        ((0..ROOMS).step_by(2).collect(), false),
        ((0..ROOMS).step_by(2).collect(), true),
        ((0..ROOMS).collect(), false),
    ] {
        commands.extend(rooms.into_iter().map(|k| (k, join)));
    }
    let mut w = c.writer();
    let script: String = commands
        .iter()
        .map(|(k, join)| {
            if *join {
                format!("JOIN #m{k}\n")
            } else {
                format!("PART #m{k}\n")
            }
        })
        .collect();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = w.write_all(script.as_bytes());
    });
    let mut answered = 0;
    while answered < KILL_AFTER {
        let line = c.read_line();
        if line.starts_with("OK ") {
            answered += 1;
        }
    }
    server.crash();
    writer.join().unwrap();
    // Answers already on their way count as acknowledged too.
    while let Some(line) = c.next_whole_line() {
        if line.starts_with("OK ") {
            answered += 1;
        }
    }
    assert!(answered < commands.len(), "the kill came after the last OK");

    let server = restart(&db, 0);
    let mut c = server.connect();
    c.login("churn");
    let rooms = c.call("ROOMS");
    let member_of = |k: usize| {
        rooms
            .iter()
            .any(|l| l.starts_with(&format!("ROOM #m{k} PUBLIC ")) && l.contains(" MEMBER 0"))
    };
    for k in 0..ROOMS {
        // The commands about room k, in order; those before `answered` were acknowledged.
        let mine: Vec<(usize, bool)> = commands
            .iter()
            .enumerate()
            .filter(|(_, (room, _))| *room == k)
            .map(|(i, (_, join))| (i, *join))
            .collect();
        let acked = mine
            .iter()
            .rev()
            .find(|(i, _)| *i < answered)
            .map(|(_, j)| *j);
        let later: Vec<bool> = mine
            .iter()
            .filter(|(i, _)| *i >= answered)
            .map(|(_, j)| *j)
            .collect();
        // Possible states: the last acknowledged one, or that of any later command sent.
        let mut possible = vec![acked.unwrap_or(false)];
        possible.extend(later);
        assert!(
            possible.contains(&member_of(k)),
            "#m{k}: member {} after the crash; acknowledged {acked:?}, answered {answered}",
            member_of(k)
        );
    }
    println!(
        "membership crash: killed after {answered} of {} answers",
        commands.len()
    );
}

/// The state of one account's settings, as its owner's acknowledged commands left it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AccountState {
    password: String,
    /// Token id -> (token, revoked).
    tokens: BTreeMap<String, (String, bool)>,
    /// The token the owner's connection is on.
    current: Option<String>,
    blocks: std::collections::BTreeSet<String>,
    away: Option<String>,
    friends_only: bool,
}

impl AccountState {
    fn new() -> AccountState {
        AccountState {
            password: PASSWORD.to_owned(),
            tokens: BTreeMap::new(),
            current: None,
            blocks: Default::default(),
            away: None,
            friends_only: false,
        }
    }

    /// The command that changes this state next, from a deterministic sequence.
    fn next_op(&self, me: usize, n: u64, accounts: usize) -> String {
        let pick = (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33) % 6;
        let alive: Vec<&String> = self
            .tokens
            .iter()
            .filter(|(_, (_, revoked))| !revoked)
            .map(|(id, _)| id)
            .collect();
        match pick {
            1 if !alive.is_empty() => format!("REVOKE {}", alive[n as usize % alive.len()]),
            2 => {
                let other = format!("acct{}", (me + 1 + n as usize % (accounts - 1)) % accounts);
                if self.blocks.contains(&other) {
                    format!("UNBLOCK {other}")
                } else {
                    format!("BLOCK {other}")
                }
            }
            3 if self.away.is_some() => "AWAY".to_owned(),
            3 => format!("AWAY away number {n}"),
            4 if self.friends_only => "DMS EVERYONE".to_owned(),
            4 => "DMS FRIENDS".to_owned(),
            5 => format!("PASSWORD {} password-{me}-{n}", self.password),
            _ => format!("TOKEN device {n}"),
        }
    }

    /// The state after `op` was acknowledged with `reply`.
    fn apply(&mut self, op: &str, reply: &str) {
        let words: Vec<&str> = reply.split(' ').collect();
        assert_eq!(words[0], "OK", "{op}: {reply}");
        match words[1] {
            "TOKEN" => {
                self.tokens
                    .insert(words[2].to_owned(), (words[3].to_owned(), false));
                self.current = Some(words[2].to_owned());
            }
            "REVOKE" => {
                let id = op.split(' ').nth(1).unwrap();
                self.tokens.get_mut(id).unwrap().1 = true;
                if self.current.as_deref() == Some(id) {
                    self.current = None;
                }
            }
            "BLOCK" => {
                self.blocks.insert(words[2].to_owned());
            }
            "UNBLOCK" => {
                self.blocks.remove(words[2]);
            }
            "AWAY" => self.away = op.strip_prefix("AWAY ").map(str::to_owned),
            "DMS" => self.friends_only = words[2] == "FRIENDS",
            "PASSWORD" => {
                self.password = op.split(' ').nth(2).unwrap().to_owned();
                let keep = self.current.clone();
                for (id, t) in self.tokens.iter_mut() {
                    if Some(id) != keep.as_ref() {
                        t.1 = true;
                    }
                }
            }
            other => panic!("unexpected reply to {op}: {other}"),
        }
    }

    /// The same state, with what the server could not have told (a token issued by a command whose
    /// answer was lost) left out: what a check after the crash can observe.
    fn observed(server: &Server, name: &str, candidates: &[AccountState]) -> AccountState {
        let mut c = server.connect();
        let password = candidates
            .iter()
            .map(|s| s.password.clone())
            .find(|pw| {
                c.send(&format!("LOGIN {name} {pw}"));
                let reply = c.read_line();
                if reply.starts_with("OK LOGIN ") {
                    c.read_until(|l| l.starts_with("BACKLOG-END "));
                    true
                } else {
                    false
                }
            })
            .unwrap_or_else(|| panic!("{name}: no acknowledged password logs in"));
        let mut state = AccountState::new();
        state.password = password;
        let known: BTreeMap<String, String> = candidates
            .iter()
            .flat_map(|s| s.tokens.iter().map(|(id, (t, _))| (id.clone(), t.clone())))
            .collect();
        for (id, token) in known {
            let mut r = server.connect();
            let resumed = r.call(&format!("RESUME {token}"));
            let revoked = !resumed.last().unwrap().starts_with("OK RESUME ");
            state.tokens.insert(id, (token, revoked));
        }
        let lines = c.call("BLOCKS");
        state.blocks = lines
            .iter()
            .filter_map(|l| l.strip_prefix("BLOCKED "))
            .map(str::to_owned)
            .collect();
        let whois = c.call1(&format!("WHOIS {name}"));
        let away = whois
            .strip_prefix(&format!("OK WHOIS {name} ONLINE - "))
            .map(str::to_owned);
        state.away = away;
        state.friends_only = c.call1("DMS") == "OK DMS FRIENDS";
        state
    }
}

/// The failure guarded against: a change to an account that the server acknowledged (a device
/// token issued or revoked, a block, an away message, the direct-message setting, a new password
/// and the revocations it made) is lost or half-applied after a crash; or a deleted account comes
/// back; or an account's last seen, written when it went offline, is lost. Each account's owner sends one command at a time and waits for its answer, so at the kill
/// at most one command per account is unanswered: the state found afterwards must be the one its
/// acknowledged commands left, or that state with the unanswered command applied, never anything
/// else. Tokens are checked by logging in with them.
#[test]
fn acknowledged_account_changes_survive_kill_9() {
    const ACCOUNTS: usize = 4;
    const ROUNDS: usize = 3;
    const KILL_AFTER: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("accounts.redb");
    let mut states: Vec<AccountState> = (0..ACCOUNTS).map(|_| AccountState::new()).collect();
    let mut pending: Vec<Option<String>> = vec![None; ACCOUNTS];
    let mut max_seen = 0;
    let mut n = 0u64;

    for round in 0..=ROUNDS {
        let server = restart(&db, max_seen);
        if round == 0 {
            let mut setup = server.connect();
            for i in 0..ACCOUNTS {
                setup.register(&format!("acct{i}"));
            }
            // An account deleted before the first crash stays deleted, and its message stays.
            setup.register("gone");
            setup.register("keeper");
            // A friend who goes offline: last seen is written then (the first time at once).
            let mut seen = server.user("seen");
            let mut friend = server.user("friend");
            assert_eq!(
                seen.call1("FRIEND ADD friend"),
                "OK FRIEND ADD friend REQUESTED"
            );
            assert_eq!(
                friend.call("FRIEND ACCEPT seen"),
                ["FRIENDSHIP seen REQUESTED", "OK FRIEND ACCEPT seen"]
            );
            assert_eq!(
                seen.sync(),
                ["FRIENDSHIP friend ACCEPTED", "PRESENCE friend ONLINE"]
            );
            seen.expect("QUIT", "OK QUIT");
            friend.sync();
            setup.login("gone");
            let id = setup.msg("keeper", "from an account about to go");
            max_seen = id;
            assert_eq!(
                setup.call1(&format!("UNREGISTER {PASSWORD}")),
                "OK UNREGISTER gone"
            );
        } else {
            // What the last round acknowledged is there, with its unanswered commands applied or
            // not, each as a whole.
            for i in 0..ACCOUNTS {
                let name = format!("acct{i}");
                let before = states[i].clone();
                let mut candidates = vec![before.clone()];
                if let Some(op) = &pending[i] {
                    // The reply the op would have had; a TOKEN's own token is never known.
                    let mut after = before.clone();
                    if !op.starts_with("TOKEN") {
                        let reply = match op.split(' ').next().unwrap() {
                            "AWAY" => "OK AWAY SET".to_owned(),
                            "DMS" => format!("OK DMS {}", op.split(' ').nth(1).unwrap()),
                            "BLOCK" | "UNBLOCK" => {
                                format!("OK {op}")
                            }
                            "REVOKE" => "OK REVOKE 1 CLOSED 0".to_owned(),
                            "PASSWORD" => "OK PASSWORD REVOKED 0 CLOSED 0".to_owned(),
                            other => panic!("{other}"),
                        };
                        after.apply(op, &reply);
                    }
                    candidates.push(after);
                }
                let found = AccountState::observed(&server, &name, &candidates);
                let matched = candidates
                    .iter()
                    .position(|c| {
                        AccountState {
                            current: None,
                            ..c.clone()
                        } == AccountState {
                            current: None,
                            ..found.clone()
                        }
                    })
                    .unwrap_or_else(|| {
                        panic!(
                            "{name} after crash {round}: found {found:#?}\nacknowledged {:#?}\n\
                             unanswered {:?}",
                            before, pending[i]
                        )
                    });
                states[i] = candidates.swap_remove(matched);
                // A new connection is on no token.
                states[i].current = None;
            }
            let mut c = server.connect();
            c.login("friend");
            let whois = c.call1("WHOIS seen");
            assert!(
                whois.starts_with("OK WHOIS seen OFFLINE 20"),
                "last seen lost in crash {round}: {whois}"
            );
            c.expect("LOGOUT", "OK LOGOUT");
            c.expect_fail(
                &format!("REGISTER gone {PASSWORD}"),
                "REGISTER",
                "NAME_TAKEN",
            );
            c.expect_fail(
                &format!("LOGIN gone {PASSWORD}"),
                "LOGIN",
                "BAD_CREDENTIALS",
            );
            c.login("keeper");
            let (lines, _) = c.history("gone");
            assert!(
                lines
                    .iter()
                    .any(|l| l.ends_with(" gone keeper from an account about to go")),
                "{lines:?}"
            );
        }
        if round == ROUNDS {
            break;
        }

        // Each owner changes its account, one command at a time, until the kill.
        let (tx, rx) = mpsc::channel::<(usize, String, String)>();
        let mut threads = Vec::new();
        let sent: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>> =
            std::sync::Arc::new(std::sync::Mutex::new(vec![None; ACCOUNTS]));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for (i, state) in states.iter().enumerate() {
            let mut c = server.connect();
            c.send(&format!("LOGIN acct{i} {}", state.password));
            let reply = c.read_line();
            assert!(reply.starts_with("OK LOGIN "), "{reply}");
            c.read_until(|l| l.starts_with("BACKLOG-END "));
            let mut state = state.clone();
            let tx = tx.clone();
            let sent = sent.clone();
            let stop = stop.clone();
            let start = n + 1000 * i as u64;
            let mut w = c.writer();
            threads.push(std::thread::spawn(move || {
                use std::io::Write;
                for k in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let op = state.next_op(i, start + k, ACCOUNTS);
                    sent.lock().unwrap()[i] = Some(op.clone());
                    // Fails once the server is killed: the op is then unanswered, as it may have
                    // reached the server or not.
                    let _ = w.write_all(format!("{op}\n").as_bytes());
                    let reply = loop {
                        match c.next_whole_line() {
                            None => return,
                            Some(l) if is_final(&l) => break l,
                            Some(_) => {}
                        }
                    };
                    state.apply(&op, &reply);
                    // Answered: in the channel before it stops being unanswered.
                    tx.send((i, op, reply))
                        .expect("the test reads every answer");
                    sent.lock().unwrap()[i] = None;
                }
            }));
        }
        drop(tx);
        let mut acked = 0;
        while acked < KILL_AFTER {
            let (i, op, reply) = rx.recv_timeout(TIMEOUT).expect("answers stopped coming");
            states[i].apply(&op, &reply);
            acked += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        server.crash();
        for t in threads {
            t.join().expect("an owner's thread failed");
        }
        // Answers read before the owners stopped are acknowledged too.
        for (i, op, reply) in rx.try_iter() {
            states[i].apply(&op, &reply);
            acked += 1;
        }
        pending = sent.lock().unwrap().clone();
        n += 100_000;
        println!(
            "account crash round {round}: {acked} changes acknowledged, unanswered {pending:?}"
        );
    }
}
