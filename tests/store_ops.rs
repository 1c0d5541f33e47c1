//! The meaning of each store op, checked on both stores (memory and redb) with the same calls.
//! The redb store's snapshots are read by reopening the file, so these are reopen tests too.

mod store_support;

use chatd::store::{
    Conversation, Cursor, FriendState, HistoryPage, MemberRecord, Profile, ReadOp, RetiredName,
    RoomRecord, Snapshot, StoreOp, StoreReply, Suspension, To, TokenRecord,
};
use store_support::*;

#[test]
fn accounts_are_listed_by_key_with_their_registered_name() {
    for mut s in Subject::each() {
        let replies = s.exec(&[
            StoreOp::CreateAccount(account("bob", 2)),
            StoreOp::CreateAccount(account("Alice", 1)),
            StoreOp::CreateAccount(account("CAROL", 3)),
        ]);
        assert_eq!(replies, vec![StoreReply::Done; 3]);
        let snap = s.snapshot();
        assert_eq!(
            snap.accounts,
            vec![account("Alice", 1), account("bob", 2), account("CAROL", 3)],
            "{}",
            s.name()
        );
        assert_eq!(snap.next_id, 1);
        assert!(snap.friendships.is_empty() && snap.pending_counts.is_empty());
    }
}

#[test]
fn direct_messages_form_one_conversation_whatever_the_order_or_case() {
    for mut s in Subject::each() {
        s.exec(&[
            append(msg(1, "Alice", user("bob"), "hi"), &[]),
            append(msg(2, "bob", user("ALICE"), "hello"), &[]),
            append(msg(3, "Alice", user("carol"), "other"), &[]),
        ]);
        let ab = s.history(&pair("bob", "alice"), 10, Cursor::Latest);
        assert_eq!(ids(&ab.messages), vec![1, 2], "{}", s.name());
        assert_eq!(ab, s.history(&pair("alice", "bob"), 10, Cursor::Latest));
        assert_eq!(ab.messages[0], msg(1, "Alice", user("bob"), "hi"));
        assert_eq!(
            ids(&s
                .history(&pair("carol", "alice"), 10, Cursor::Latest)
                .messages),
            vec![3]
        );
        assert!(s
            .history(&pair("bob", "carol"), 10, Cursor::Latest)
            .messages
            .is_empty());
        assert_eq!(s.snapshot().next_id, 4);
    }
}

#[test]
fn a_group_message_is_in_each_sender_recipient_conversation_once() {
    for mut s in Subject::each() {
        let m = msg(
            7,
            "alice",
            group(&["Bob", "carol", "BOB", "alice"]),
            "to all of you",
        );
        s.exec1(append(m.clone(), &[]));
        for other in ["bob", "carol", "alice"] {
            let page = s.history(&pair("alice", other), 10, Cursor::Latest);
            assert_eq!(page.messages, vec![m.clone()], "{} alice/{other}", s.name());
        }
        // Recipients among themselves do not share it.
        assert!(s
            .history(&pair("bob", "carol"), 10, Cursor::Latest)
            .messages
            .is_empty());
        assert!(s
            .history(&Conversation::Broadcast, 10, Cursor::Latest)
            .messages
            .is_empty());
    }
}

#[test]
fn broadcasts_are_only_in_the_broadcast_conversation() {
    for mut s in Subject::each() {
        s.exec(&[
            append(msg(1, "alice", To::All, "hey all"), &[]),
            append(msg(2, "alice", user("alice"), "note"), &[]),
        ]);
        assert_eq!(
            ids(&s
                .history(&Conversation::Broadcast, 10, Cursor::Latest)
                .messages),
            vec![1]
        );
        // A message to oneself is the conversation of the account with itself.
        assert_eq!(
            ids(&s
                .history(&pair("alice", "alice"), 10, Cursor::Latest)
                .messages),
            vec![2],
            "{}",
            s.name()
        );
    }
}

#[test]
fn backlog_is_taken_once_in_id_order() {
    for mut s in Subject::each() {
        s.exec(&[
            append(msg(1, "alice", user("bob"), "one"), &[]),
            append(
                msg(2, "alice", group(&["bob", "carol"]), "two"),
                &["bob", "carol"],
            ),
            append(msg(3, "carol", user("bob"), "three"), &["bob"]),
            StoreOp::AddPending {
                user: "bob".into(),
                id: 1,
            },
        ]);
        let snap = s.snapshot();
        assert_eq!(
            snap.pending_counts,
            vec![("bob".to_owned(), 3), ("carol".to_owned(), 1)],
            "{}",
            s.name()
        );
        assert_eq!(ids(&s.backlog("bob")), vec![1, 2, 3]);
        assert!(s.backlog("bob").is_empty());
        assert_eq!(s.snapshot().pending_counts, vec![("carol".to_owned(), 1)]);
        assert_eq!(
            s.backlog("carol"),
            vec![msg(2, "alice", group(&["bob", "carol"]), "two")]
        );
        assert!(s.snapshot().pending_counts.is_empty());
        // Taking a backlog does not touch the log.
        assert_eq!(
            ids(&s
                .history(&pair("bob", "alice"), 10, Cursor::Latest)
                .messages),
            vec![1, 2]
        );
    }
}

/// An entry whose message is not stored (only damage can make one) is skipped when the backlog is
/// read; clearing up to the last message read removes the entries before it.
#[test]
fn a_backlog_entry_without_its_message_is_skipped() {
    for mut s in Subject::each() {
        s.exec(&[
            StoreOp::AddPending {
                user: "bob".into(),
                id: 1,
            },
            append(msg(2, "alice", user("bob"), "two"), &["bob"]),
        ]);
        assert_eq!(s.snapshot().pending_counts, vec![("bob".to_owned(), 2)]);
        assert_eq!(ids(&s.backlog("bob")), vec![2], "{}", s.name());
        assert!(s.snapshot().pending_counts.is_empty(), "{}", s.name());
    }
}

#[test]
fn read_backlog_removes_nothing_and_clear_backlog_removes_up_to_an_id() {
    for mut s in Subject::each() {
        s.exec(&[
            append(msg(1, "alice", user("bob"), "one"), &["bob"]),
            append(msg(2, "alice", user("bob"), "two"), &["bob"]),
            append(msg(3, "alice", user("carol"), "three"), &["carol"]),
            StoreOp::AddPending {
                user: "bob".into(),
                id: 99,
            },
        ]);
        let read = |s: &mut Subject, user: &str| match s
            .exec1(StoreOp::ReadBacklog { user: user.into() })
        {
            StoreReply::Backlog(ids) => ids,
            other => panic!("ReadBacklog answered {other:?}"),
        };
        // An entry without its message is skipped, not removed.
        assert_eq!(read(&mut s, "bob"), vec![1, 2], "{}", s.name());
        assert_eq!(read(&mut s, "bob"), vec![1, 2]);
        assert_eq!(
            s.snapshot().pending_counts,
            vec![("bob".to_owned(), 3), ("carol".to_owned(), 1)]
        );
        // Clearing up to 1 leaves 2 (and the dangling 99).
        let clear = |user: &str, upto| StoreOp::ClearBacklog {
            user: user.into(),
            upto,
        };
        assert_eq!(s.exec1(clear("bob", 1)), StoreReply::Done);
        assert_eq!(read(&mut s, "bob"), vec![2]);
        assert_eq!(
            s.snapshot().pending_counts,
            vec![("bob".to_owned(), 2), ("carol".to_owned(), 1)]
        );
        // Clearing an empty backlog, or with an id below every entry, is not an error.
        assert_eq!(s.exec1(clear("dave", 5)), StoreReply::Done);
        assert_eq!(s.exec1(clear("carol", 2)), StoreReply::Done);
        assert_eq!(s.exec1(clear("bob", u64::MAX)), StoreReply::Done);
        assert!(read(&mut s, "bob").is_empty());
        assert_eq!(s.snapshot().pending_counts, vec![("carol".to_owned(), 1)]);
    }
}

/// A reader is a read transaction: it keeps showing what was committed when it was taken, while
/// later writes commit beside it.
#[test]
fn a_reader_sees_the_store_as_it_was_when_taken() {
    for mut s in Subject::each() {
        s.exec(&[append(msg(1, "alice", user("bob"), "one"), &["bob"])]);
        let before = s.reader();
        s.exec(&[
            append(msg(2, "alice", user("bob"), "two"), &["bob"]),
            StoreOp::ClearBacklog {
                user: "bob".into(),
                upto: 2,
            },
        ]);
        let after = s.reader();
        let history = ReadOp::History {
            conv: pair("bob", "alice"),
            count: 10,
            cursor: Cursor::Latest,
        };
        let backlog = ReadOp::Backlog { user: "bob".into() };
        let page = |reply| match reply {
            StoreReply::History(p) => p.ids,
            other => panic!("History answered {other:?}"),
        };
        let pending = |reply| match reply {
            StoreReply::Backlog(ids) => ids,
            other => panic!("ReadBacklog answered {other:?}"),
        };
        assert_eq!(
            page(before.read(&history).unwrap()),
            vec![1],
            "{}",
            s.name()
        );
        assert_eq!(pending(before.read(&backlog).unwrap()), vec![1]);
        assert_eq!(page(after.read(&history).unwrap()), vec![1, 2]);
        assert!(pending(after.read(&backlog).unwrap()).is_empty());
        drop((before, after));
    }
}

#[test]
fn friendship_edges_are_stored_both_ways_and_removed_together() {
    for mut s in Subject::each() {
        let set = |a: &str, b: &str, state| StoreOp::SetFriendship {
            a: a.into(),
            b: b.into(),
            state,
        };
        s.exec(&[
            set("alice", "bob", Some(FriendState::Outgoing)),
            set("carol", "alice", Some(FriendState::Friends)),
        ]);
        let edge = |a: &str, b: &str, st| (a.to_owned(), b.to_owned(), st);
        assert_eq!(
            s.snapshot().friendships,
            vec![
                edge("alice", "bob", FriendState::Outgoing),
                edge("alice", "carol", FriendState::Friends),
                edge("bob", "alice", FriendState::Incoming),
                edge("carol", "alice", FriendState::Friends),
            ],
            "{}",
            s.name()
        );
        s.exec(&[
            set("bob", "alice", Some(FriendState::Friends)),
            set("alice", "carol", None),
        ]);
        assert_eq!(
            s.snapshot().friendships,
            vec![
                edge("alice", "bob", FriendState::Friends),
                edge("bob", "alice", FriendState::Friends)
            ]
        );
        // Removing an edge that does not exist is not an error.
        assert_eq!(s.exec1(set("dave", "erin", None)), StoreReply::Done);
    }
}

#[test]
fn ops_of_a_batch_see_the_ops_before_them() {
    for mut s in Subject::each() {
        let replies = s.exec(&[
            StoreOp::History {
                conv: pair("a", "b"),
                count: 5,
                cursor: Cursor::Latest,
            },
            append(msg(1, "a", user("b"), "x"), &["b"]),
            StoreOp::History {
                conv: pair("a", "b"),
                count: 5,
                cursor: Cursor::Latest,
            },
            StoreOp::ReadBacklog { user: "b".into() },
            StoreOp::ClearBacklog {
                user: "b".into(),
                upto: 1,
            },
            StoreOp::ReadBacklog { user: "b".into() },
            StoreOp::ReadMessages { ids: vec![7, 1] },
        ]);
        let m = msg(1, "a", user("b"), "x");
        assert_eq!(
            replies,
            vec![
                StoreReply::History(HistoryPage::default()),
                StoreReply::Done,
                StoreReply::History(HistoryPage {
                    ids: vec![1],
                    older: None,
                    newer: None
                }),
                StoreReply::Backlog(vec![1]),
                StoreReply::Done,
                StoreReply::Backlog(vec![]),
                StoreReply::Messages(vec![m]),
            ],
            "{}",
            s.name()
        );
    }
}

/// The conversation alice/bob holds ids 2, 4, 6, 8, 10; the odd ids belong to other conversations.
fn even_conversation(s: &mut Subject) {
    let mut ops = Vec::new();
    for id in 1..=11 {
        let m = if id % 2 == 0 {
            msg(id, "alice", user("bob"), "even")
        } else {
            msg(id, "carol", user("bob"), "odd")
        };
        ops.push(append(m, &[]));
    }
    s.exec(&ops);
}

type PageCase = (Cursor, u32, &'static [u64], Option<u64>, Option<u64>);

#[test]
fn history_pages_and_their_continuation_cursors() {
    let ab = pair("alice", "bob");
    // (cursor, count, ids shown, older, newer)
    let cases: &[PageCase] = &[
        (Cursor::Latest, 2, &[8, 10], Some(8), None),
        (Cursor::Latest, 5, &[2, 4, 6, 8, 10], None, None),
        (Cursor::Latest, 500, &[2, 4, 6, 8, 10], None, None),
        (Cursor::Before(8), 2, &[4, 6], Some(4), Some(6)),
        (Cursor::Before(7), 1, &[6], Some(6), Some(6)),
        (Cursor::Before(3), 2, &[2], None, Some(2)),
        (Cursor::Before(u64::MAX), 2, &[8, 10], Some(8), None),
        (Cursor::After(0), 2, &[2, 4], None, Some(4)),
        (Cursor::After(4), 2, &[6, 8], Some(6), Some(8)),
        (Cursor::After(9), 5, &[10], Some(10), None),
        // Empty pages: the direction that has messages keeps the asked-for position.
        (Cursor::Before(2), 5, &[], None, Some(1)),
        (Cursor::Before(1), 5, &[], None, Some(0)),
        // Before(0) cannot point one below itself; After(0) shows everything.
        (Cursor::Before(0), 5, &[], None, Some(0)),
        (Cursor::After(10), 5, &[], Some(11), None),
        (Cursor::After(500), 5, &[], Some(501), None),
        // After(MAX) cannot point one above itself; Before(MAX) shows everything.
        (Cursor::After(u64::MAX), 5, &[], Some(u64::MAX), None),
    ];
    for mut s in Subject::each() {
        even_conversation(&mut s);
        for &(cursor, count, want, older, newer) in cases {
            let page = s.history(&ab, count, cursor);
            assert_eq!(
                (ids(&page.messages).as_slice(), page.older, page.newer),
                (want, older, newer),
                "{} {cursor:?} count {count}",
                s.name()
            );
        }
        for cursor in [
            Cursor::Latest,
            Cursor::Before(5),
            Cursor::After(5),
            Cursor::Before(0),
            Cursor::After(u64::MAX),
        ] {
            assert_eq!(
                s.history(&pair("alice", "nobody"), 3, cursor),
                Page::default(),
                "{cursor:?}"
            );
        }
    }
}

/// Walk a conversation of 250 messages (interleaved with others) page by page in both directions:
/// every message is seen exactly once, in order, whatever the page size.
#[test]
fn paging_through_250_messages_has_no_gap_or_duplicate() {
    for mut s in Subject::each() {
        let mut ops = Vec::new();
        let mut expected = Vec::new();
        for id in 1..=700u64 {
            if id % 2 == 1 || id % 7 == 0 {
                ops.push(append(msg(id, "x", user("y"), "noise"), &[]));
            } else if expected.len() < 250 {
                expected.push(id);
                let m = if id % 3 == 0 {
                    msg(id, "Bob", user("alice"), "b")
                } else {
                    msg(id, "alice", user("BOB"), "a")
                };
                ops.push(append(m, &[]));
            }
        }
        assert_eq!(expected.len(), 250);
        s.exec(&ops);
        let conv = pair("bob", "alice");
        for count in [1, 7, 50, 249, 250, 500] {
            // Backward from the latest page.
            let mut seen = Vec::new();
            let mut page = s.history(&conv, count, Cursor::Latest);
            assert_eq!(page.newer, None);
            loop {
                let mut batch = ids(&page.messages);
                batch.extend(seen);
                seen = batch;
                match page.older {
                    Some(c) => page = s.history(&conv, count, Cursor::Before(c)),
                    None => break,
                }
            }
            assert_eq!(seen, expected, "{} backward by {count}", s.name());

            // Forward from the start, then one step past the end and back.
            let mut seen = Vec::new();
            let mut page = s.history(&conv, count, Cursor::After(0));
            assert_eq!(page.older, None);
            let last = loop {
                seen.extend(ids(&page.messages));
                match page.newer {
                    Some(c) => page = s.history(&conv, count, Cursor::After(c)),
                    None => break page,
                }
            };
            assert_eq!(seen, expected, "{} forward by {count}", s.name());
            let end = *expected.last().unwrap();
            let past = s.history(&conv, count, Cursor::After(end));
            assert_eq!(
                (past.messages.len(), past.older, past.newer),
                (0, Some(end + 1), None)
            );
            let back = s.history(&conv, count, Cursor::Before(end + 1));
            let tail = &expected[250 - (count as usize).min(250)..];
            assert_eq!(ids(&back.messages), tail.to_vec());
            assert!(last.messages.iter().all(|m| back.messages.contains(m)));

            // From an empty page before the first message, the newer cursor leads to the first page.
            let first = expected[0];
            let before = s.history(&conv, count, Cursor::Before(first));
            assert_eq!((before.messages.len(), before.older), (0, None));
            let resumed = s.history(&conv, count, Cursor::After(before.newer.expect("newer")));
            assert_eq!(
                ids(&resumed.messages),
                expected[..(count as usize).min(250)].to_vec()
            );
        }
    }
}

/// The share each sender has of an account's offline backlog survives a restart: the core limits
/// it (spec 6.3), and must not forget it when the server restarts.
#[test]
fn backlogs_are_counted_per_sender_in_the_snapshot() {
    for mut s in Subject::each() {
        s.exec(&[
            append(msg(1, "Alice", user("carol"), "a1"), &["carol"]),
            append(msg(2, "ALICE", user("carol"), "a2"), &["carol"]),
            append(
                msg(3, "bob", group(&["carol", "dave"]), "b"),
                &["carol", "dave"],
            ),
            append(msg(4, "bob", user("alice"), "delivered"), &[]),
            StoreOp::AddPending {
                user: "alice".into(),
                id: 4,
            },
        ]);
        let snap = s.snapshot();
        assert_eq!(
            snap.pending_senders,
            vec![
                ("alice".to_owned(), "bob".to_owned(), 1),
                ("carol".to_owned(), "alice".to_owned(), 2),
                ("carol".to_owned(), "bob".to_owned(), 1),
                ("dave".to_owned(), "bob".to_owned(), 1),
            ],
            "{}",
            s.name()
        );
        s.exec1(StoreOp::ClearBacklog {
            user: "carol".into(),
            upto: 2,
        });
        assert_eq!(
            s.snapshot().pending_senders,
            vec![
                ("alice".to_owned(), "bob".to_owned(), 1),
                ("carol".to_owned(), "bob".to_owned(), 1),
                ("dave".to_owned(), "bob".to_owned(), 1),
            ]
        );
    }
}

#[test]
fn everything_survives_a_reopen() {
    let mut mem = Subject::memory();
    let mut disk = Subject::redb();
    let ops = vec![
        StoreOp::CreateAccount(account("Alice", 10)),
        StoreOp::CreateAccount(account("bob", 11)),
        StoreOp::SetFriendship {
            a: "alice".into(),
            b: "bob".into(),
            state: Some(FriendState::Outgoing),
        },
        append(msg(1, "Alice", user("bob"), "first"), &["bob"]),
        append(
            msg(2, "bob", group(&["Alice", "carol"]), "second ünïcödé"),
            &["carol"],
        ),
        append(msg(5, "Alice", To::All, "third"), &[]),
    ];
    assert_eq!(mem.exec(&ops), disk.exec(&ops));
    let snap = disk.snapshot();
    assert_eq!(snap, mem.snapshot());
    assert_eq!(
        snap,
        Snapshot {
            accounts: vec![account("Alice", 10), account("bob", 11)],
            friendships: vec![
                ("alice".into(), "bob".into(), FriendState::Outgoing),
                ("bob".into(), "alice".into(), FriendState::Incoming),
            ],
            pending_counts: vec![("bob".into(), 1), ("carol".into(), 1)],
            pending_senders: vec![
                ("bob".into(), "alice".into(), 1),
                ("carol".into(), "bob".into(), 1)
            ],
            next_id: 6,
            next_room_id: 1,
            ..Snapshot::default()
        }
    );
    // The snapshot came from a reopened file; its history and backlogs are intact too.
    for conv in [
        pair("alice", "bob"),
        pair("bob", "carol"),
        Conversation::Broadcast,
    ] {
        assert_eq!(
            disk.history(&conv, 10, Cursor::Latest),
            mem.history(&conv, 10, Cursor::Latest)
        );
    }
    assert_eq!(disk.backlog("carol"), mem.backlog("carol"));
    assert_eq!(disk.snapshot(), mem.snapshot());
}

#[test]
fn rooms_members_bans_and_invitations_are_in_the_snapshot() {
    use chatd::store::{BanRecord, InviteRecord, Role, RoomState, TopicRecord};
    for mut s in Subject::each() {
        let mut ops = vec![
            StoreOp::PutRoom {
                id: 1,
                room: room("#Rust"),
            },
            StoreOp::PutRoom {
                id: 2,
                room: room("#gone"),
            },
            StoreOp::PutMember {
                room: 1,
                user: "alice".into(),
                member: member(Role::Owner, 0),
            },
            StoreOp::PutMember {
                room: 1,
                user: "bob".into(),
                member: member(Role::Member, 0),
            },
            StoreOp::PutMember {
                room: 2,
                user: "bob".into(),
                member: member(Role::Owner, 0),
            },
            StoreOp::PutBan {
                room: 1,
                user: "mallory".into(),
                ban: BanRecord {
                    by: "alice".into(),
                    time_ms: 3,
                    reason: "spam".into(),
                },
            },
            StoreOp::PutBan {
                room: 2,
                user: "eve".into(),
                ban: BanRecord {
                    by: "bob".into(),
                    time_ms: 3,
                    reason: String::new(),
                },
            },
            StoreOp::PutInvite {
                room: 1,
                user: "carol".into(),
                invite: InviteRecord {
                    by: "alice".into(),
                    expires_ms: 99,
                },
            },
            post(3, "alice", 1, "#Rust", 1),
            post(4, "bob", 2, "#gone", 1),
            post(6, "bob", 1, "#Rust", 2),
        ];
        // A topic set, a member's role and marker changed, one member gone, one room deleted.
        let topic = TopicRecord {
            text: "be kind".into(),
            by: "alice".into(),
            time_ms: 7,
        };
        ops.extend([
            StoreOp::PutRoom {
                id: 1,
                room: RoomRecord {
                    topic: Some(topic.clone()),
                    ..room("#Rust")
                },
            },
            StoreOp::PutMember {
                room: 1,
                user: "bob".into(),
                member: MemberRecord {
                    role: Role::Op,
                    since: 0,
                    read_id: 3,
                    read_seq: 1,
                },
            },
            StoreOp::RemoveMember {
                room: 1,
                user: "nobody".into(),
            },
            StoreOp::DeleteRoom { id: 2 },
        ]);
        let replies = s.exec(&ops);
        assert!(
            replies.iter().all(|r| *r == StoreReply::Done),
            "{}",
            s.name()
        );
        let snap = s.snapshot();
        assert_eq!(
            snap.rooms,
            vec![RoomState {
                id: 1,
                record: RoomRecord {
                    topic: Some(topic),
                    ..room("#Rust")
                },
                last_id: 6,
                count: 2,
            }],
            "{}",
            s.name()
        );
        assert_eq!(
            snap.members,
            vec![
                (1, "alice".to_owned(), member(Role::Owner, 0)),
                (
                    1,
                    "bob".to_owned(),
                    MemberRecord {
                        role: Role::Op,
                        since: 0,
                        read_id: 3,
                        read_seq: 1
                    }
                )
            ]
        );
        assert_eq!(snap.bans.len(), 1);
        assert_eq!(snap.bans[0].1, "mallory");
        assert_eq!(snap.invites.len(), 1);
        // Room 2 is deleted, but its number is in the log: never given out again.
        assert_eq!(snap.next_room_id, 3);
        assert_eq!(snap.next_id, 7);
        // Its messages stay in the log, where only its number reaches them.
        let gone = s.history(&Conversation::Room { id: 2, after: 0 }, 10, Cursor::Latest);
        assert_eq!(ids(&gone.messages), vec![4]);
        s.exec(&[
            StoreOp::RemoveBan {
                room: 1,
                user: "mallory".into(),
            },
            StoreOp::RemoveInvite {
                room: 1,
                user: "carol".into(),
            },
            StoreOp::RemoveMember {
                room: 1,
                user: "bob".into(),
            },
        ]);
        let snap = s.snapshot();
        assert!(snap.bans.is_empty() && snap.invites.is_empty());
        assert_eq!(snap.members.len(), 1);
    }
}

#[test]
fn a_room_pages_within_what_the_reader_may_see() {
    for mut s in Subject::each() {
        let mut ops = vec![StoreOp::PutRoom {
            id: 7,
            room: room("#r"),
        }];
        // Room messages 10, 20, 30, 40, 50, with a direct message between them.
        for (seq, id) in [10u64, 20, 30, 40, 50].into_iter().enumerate() {
            ops.push(post(id, "alice", 7, "#r", seq as u64 + 1));
        }
        ops.push(append(msg(25, "alice", user("bob"), "direct"), &[]));
        s.exec(&ops);
        let page = |s: &mut Subject, after, count, cursor| {
            let p = s.history(&Conversation::Room { id: 7, after }, count, cursor);
            (ids(&p.messages), p.older, p.newer)
        };
        assert_eq!(
            page(&mut s, 0, 2, Cursor::Latest),
            (vec![40, 50], Some(40), None),
            "{}",
            s.name()
        );
        // A member of a private room who joined after message 20.
        assert_eq!(
            page(&mut s, 20, 5, Cursor::Latest),
            (vec![30, 40, 50], None, None)
        );
        assert_eq!(
            page(&mut s, 20, 5, Cursor::Before(30)),
            (vec![], None, Some(29))
        );
        assert_eq!(
            page(&mut s, 20, 1, Cursor::After(0)),
            (vec![30], None, Some(30))
        );
        // The replay of a JOIN after message 40: the latest ones up to it.
        let replay = s.exec1(StoreOp::RoomReplay {
            room: 7,
            after: 0,
            upto: 40,
            count: 3,
        });
        match replay {
            StoreReply::Messages(m) => assert_eq!(ids(&m), vec![20, 30, 40]),
            other => panic!("{other:?}"),
        }
        // Where unread messages start, and the position of a message in the room.
        let firsts = s.exec1(StoreOp::FirstUnread {
            rooms: vec![(7, 0), (7, 25), (7, 50), (8, 0), (7, u64::MAX)],
        });
        assert_eq!(
            firsts,
            StoreReply::FirstIds(vec![Some(10), Some(30), None, None, None])
        );
        assert_eq!(
            s.exec1(StoreOp::RoomSeq { room: 7, upto: 35 }),
            StoreReply::Seq(Some((30, 3)))
        );
        assert_eq!(
            s.exec1(StoreOp::RoomSeq { room: 7, upto: 5 }),
            StoreReply::Seq(None)
        );
        // Room messages are in no direct conversation.
        assert_eq!(
            ids(&s
                .history(&pair("alice", "bob"), 10, Cursor::Latest)
                .messages),
            vec![25]
        );
    }
}

fn token(id: u64, user: &str) -> TokenRecord {
    TokenRecord {
        id,
        user: user.to_owned(),
        digest: [id as u8; 32],
        label: format!("device {id}"),
        created_ms: 100,
        last_used_ms: 100,
    }
}

/// The failure guarded against: an account deleted on disk leaves something keyed by it behind
/// (a token that still logs in, a friendship or block the other side still sees, a backlog, a
/// profile), or its name becomes free, so a new account of the same name inherits its history.
#[test]
fn deleting_an_account_removes_everything_keyed_by_it_and_retires_its_name() {
    for mut s in Subject::each() {
        s.exec(&[
            StoreOp::CreateAccount(account("Alice", 1)),
            StoreOp::CreateAccount(account("bob", 2)),
            StoreOp::CreateAccount(account("carol", 3)),
            StoreOp::CreateToken(token(7, "alice")),
            StoreOp::CreateToken(token(8, "alice")),
            StoreOp::CreateToken(token(9, "bob")),
            StoreOp::SetFriendship {
                a: "alice".into(),
                b: "bob".into(),
                state: Some(FriendState::Friends),
            },
            StoreOp::SetFriendship {
                a: "carol".into(),
                b: "alice".into(),
                state: Some(FriendState::Outgoing),
            },
            StoreOp::Block {
                a: "alice".into(),
                b: "carol".into(),
            },
            StoreOp::Block {
                a: "bob".into(),
                b: "alice".into(),
            },
            StoreOp::SetAway {
                user: "alice".into(),
                away: Some("out".into()),
            },
            append(msg(1, "bob", user("Alice"), "kept for alice"), &["alice"]),
            append(msg(2, "Alice", user("bob"), "from alice"), &["bob"]),
            StoreOp::DeleteAccount {
                user: "alice".into(),
                deleted_ms: 50,
            },
        ]);
        let snap = s.snapshot();
        let name = s.name();
        assert_eq!(
            snap.accounts,
            vec![account("bob", 2), account("carol", 3)],
            "{name}"
        );
        assert_eq!(snap.tokens, vec![token(9, "bob")], "{name}");
        assert!(
            snap.friendships.is_empty(),
            "{name}: {:?}",
            snap.friendships
        );
        assert!(snap.blocks.is_empty(), "{name}: {:?}", snap.blocks);
        assert!(snap.profiles.is_empty(), "{name}");
        assert_eq!(snap.pending_counts, vec![("bob".into(), 1)], "{name}");
        assert_eq!(
            snap.retired,
            vec![RetiredName {
                name: "Alice".into(),
                deleted_ms: 50
            }],
            "{name}"
        );
        // What alice sent stays in bob's history, under her name.
        let page = s.history(&pair("bob", "alice"), 10, Cursor::Latest);
        assert_eq!(ids(&page.messages), [1, 2], "{name}");
        assert_eq!(page.messages[1].from, "Alice");
        // A later block of bob by carol, after the deletion, is untouched by it.
        s.exec1(StoreOp::Block {
            a: "carol".into(),
            b: "bob".into(),
        });
        assert_eq!(
            s.snapshot().blocks,
            vec![("carol".to_owned(), "bob".to_owned())],
            "{name}"
        );
    }
}

#[test]
fn direct_read_markers_only_move_forward() {
    for mut s in Subject::each() {
        let set = |s: &mut Subject, id| {
            s.exec1(StoreOp::SetDirectRead {
                user: "bob".into(),
                with: "alice".into(),
                id,
            })
        };
        assert_eq!(
            s.exec1(StoreOp::DirectRead {
                user: "bob".into(),
                with: "alice".into()
            }),
            StoreReply::Marker {
                before: 0,
                after: 0
            }
        );
        assert_eq!(
            set(&mut s, 0),
            StoreReply::Marker {
                before: 0,
                after: 0
            }
        );
        assert_eq!(
            set(&mut s, 9),
            StoreReply::Marker {
                before: 0,
                after: 9
            }
        );
        assert_eq!(
            set(&mut s, 4),
            StoreReply::Marker {
                before: 9,
                after: 9
            }
        );
        assert_eq!(
            s.reader()
                .read(&ReadOp::DirectRead {
                    user: "bob".into(),
                    with: "alice".into()
                })
                .unwrap(),
            StoreReply::Marker {
                before: 9,
                after: 9
            },
            "{}",
            s.name()
        );
        // Per direction: alice's marker of bob is her own.
        assert_eq!(
            s.exec1(StoreOp::DirectRead {
                user: "alice".into(),
                with: "bob".into()
            }),
            StoreReply::Marker {
                before: 0,
                after: 0
            }
        );
    }
}

#[test]
fn a_block_ends_the_friendship_and_unblock_leaves_no_relation() {
    for mut s in Subject::each() {
        s.exec(&[
            StoreOp::SetFriendship {
                a: "a".into(),
                b: "b".into(),
                state: Some(FriendState::Friends),
            },
            StoreOp::Block {
                a: "b".into(),
                b: "a".into(),
            },
        ]);
        let snap = s.snapshot();
        assert!(snap.friendships.is_empty(), "{}", s.name());
        assert_eq!(snap.blocks, vec![("b".to_owned(), "a".to_owned())]);
        s.exec1(StoreOp::Unblock {
            a: "b".into(),
            b: "a".into(),
        });
        let snap = s.snapshot();
        assert!(snap.blocks.is_empty() && snap.friendships.is_empty());
    }
}

#[test]
fn tokens_are_touched_revoked_and_revoked_with_a_new_password() {
    for mut s in Subject::each() {
        s.exec(&[
            StoreOp::CreateAccount(account("ann", 1)),
            StoreOp::CreateToken(token(1, "ann")),
            StoreOp::CreateToken(token(2, "ann")),
            StoreOp::CreateToken(token(3, "ann")),
            StoreOp::TouchToken {
                id: 2,
                last_used_ms: 900,
            },
            // Touching a token that is gone changes nothing.
            StoreOp::TouchToken {
                id: 99,
                last_used_ms: 900,
            },
            StoreOp::RevokeTokens { ids: vec![1, 42] },
        ]);
        let mut touched = token(2, "ann");
        touched.last_used_ms = 900;
        assert_eq!(
            s.snapshot().tokens,
            vec![touched.clone(), token(3, "ann")],
            "{}",
            s.name()
        );
        s.exec1(StoreOp::SetPassword {
            user: "ann".into(),
            phc: "new-hash".into(),
            revoke: vec![3],
        });
        let snap = s.snapshot();
        assert_eq!(snap.tokens, vec![touched], "{}", s.name());
        assert_eq!(snap.accounts[0].phc, "new-hash");
    }
}

#[test]
fn profiles_change_field_by_field_and_only_for_accounts() {
    for mut s in Subject::each() {
        s.exec(&[
            StoreOp::CreateAccount(account("ann", 1)),
            StoreOp::SetAway {
                user: "ann".into(),
                away: Some("lunch".into()),
            },
            StoreOp::SetDms {
                user: "ann".into(),
                friends_only: true,
            },
            StoreOp::SetLastSeen {
                user: "ann".into(),
                ms: 77,
            },
            StoreOp::SetAway {
                user: "nobody".into(),
                away: Some("x".into()),
            },
            StoreOp::SetSuspended {
                user: "ann".into(),
                suspension: Some(Suspension {
                    reason: "spam".into(),
                    since_ms: 5,
                }),
            },
            StoreOp::SetSuspended {
                user: "nobody".into(),
                suspension: Some(Suspension::default()),
            },
        ]);
        let want = Profile {
            friends_only: true,
            away: Some("lunch".into()),
            last_seen_ms: Some(77),
            suspended: Some(Suspension {
                reason: "spam".into(),
                since_ms: 5,
            }),
        };
        assert_eq!(
            s.snapshot().profiles,
            vec![("ann".to_owned(), want.clone())],
            "{}",
            s.name()
        );
        s.exec1(StoreOp::SetAway {
            user: "ann".into(),
            away: None,
        });
        assert_eq!(
            s.snapshot().profiles[0].1,
            Profile {
                away: None,
                ..want.clone()
            }
        );
        s.exec1(StoreOp::SetSuspended {
            user: "ann".into(),
            suspension: None,
        });
        assert_eq!(
            s.snapshot().profiles[0].1,
            Profile {
                away: None,
                suspended: None,
                ..want
            }
        );
    }
}
