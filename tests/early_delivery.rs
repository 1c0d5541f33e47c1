//! Delivery ahead of the commit (spec 6.1, 6.2), through the simulator, whose store commits only
//! when the test runs its jobs: a recipient gets a message as the server accepts it, the sender's
//! OK waits for the commit, and an id someone has seen is never handed out again, even when a
//! crash loses its message before the commit.
//!
//! The failure guarded against: recipients waiting for a slow disk (the latency the early delivery
//! removes), or, once they no longer wait, an OK sent before its commit, or a crash that gives the
//! id of a message someone saw to another message.

use chatd::sim::Sim;

/// alice and bob logged in on connections `a` and `b`, and one message already committed, so
/// that the server holds a committed reservation of ids.
fn two_users() -> Sim {
    let mut s = Sim::new();
    s.connect("a");
    s.connect("b");
    s.send("a", "REGISTER alice password1");
    s.send("b", "REGISTER bob password2");
    s.send("a", "LOGIN alice password1");
    s.send("b", "LOGIN bob password2");
    s.send("a", "MSG bob first");
    s.output("a");
    s.output("b");
    s
}

/// As [`two_users`], both members of `#team`.
fn in_a_room() -> Sim {
    let mut s = two_users();
    s.send("a", "JOIN #team");
    s.send("b", "JOIN #team");
    s.output("a");
    s.output("b");
    s
}

/// After a restart: alice and bob log in again on `a` and `b`.
fn log_in_again(s: &mut Sim) {
    s.connect("a");
    s.connect("b");
    s.send("a", "LOGIN alice password1");
    s.send("b", "LOGIN bob password2");
}

/// The id of the `MESSAGE` line in `out` whose text is `text`.
fn message_id(out: &str, text: &str) -> u64 {
    out.lines()
        .find(|l| l.starts_with("MESSAGE ") && l.ends_with(&format!(" {text}")))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no MESSAGE {text:?} in {out:?}"))
}

#[test]
fn a_recipient_gets_a_message_before_its_commit_and_the_sender_its_ok_after_it() {
    let mut s = two_users();
    // The store has not run: nothing is committed yet.
    s.queue("a", "MSG bob while the disk is slow");
    let b = s.output("b");
    let id = message_id(&b, "while the disk is slow");
    assert_eq!(s.output("a"), "", "no OK before the commit");
    // bob's HISTORY, sent before the commit, is answered after it and has the message (6.4).
    s.queue("b", "HISTORY alice 1");
    s.settle();
    assert_eq!(s.output("a"), format!("OK MSG {id} DELIVERED\n"));
    let b = s.output("b");
    assert!(b.starts_with(&format!("HISTORY {id} ")), "{b}");

    // The same for ALL and GROUP.
    s.queue("a", "ALL to everyone");
    let id = message_id(&s.output("b"), "to everyone");
    assert_eq!(s.output("a"), "");
    s.settle();
    assert_eq!(s.output("a"), format!("OK ALL {id} DELIVERED 1\n"));
    s.queue("a", "GROUP bob,alice to a few");
    let id = message_id(&s.output("b"), "to a few");
    assert_eq!(s.output("a"), "");
    s.settle();
    // The sender's own copy still comes after its OK (spec 6.4).
    let a = s.output("a");
    let (ok, own) = a.split_once('\n').unwrap();
    assert_eq!(ok, format!("OK GROUP {id} DELIVERED 2 KEPT 0"));
    assert_eq!(message_id(own, "to a few"), id);
}

#[test]
fn a_room_message_reaches_the_members_before_its_commit() {
    let mut s = in_a_room();
    s.queue("a", "MSG #team standup in five");
    let id = message_id(&s.output("b"), "standup in five");
    assert_eq!(s.output("a"), "");
    s.settle();
    assert_eq!(s.output("a"), format!("OK MSG {id} DELIVERED 1\n"));
}

#[test]
fn with_deliver_after_commit_nobody_sees_a_message_before_its_commit() {
    let mut s = two_users();
    s.set_deliver_after_commit(true);
    s.queue("a", "MSG bob only once it is on disk");
    assert_eq!(s.output("b"), "", "nothing before the commit");
    assert_eq!(s.output("a"), "");
    s.settle();
    let id = message_id(&s.output("b"), "only once it is on disk");
    assert_eq!(s.output("a"), format!("OK MSG {id} DELIVERED\n"));
}

/// A crash between the delivery and the commit loses the message, which its sender never had
/// acknowledged; its id, which bob saw, is not handed out again.
#[test]
fn an_id_seen_before_a_crash_lost_its_message_is_never_reused() {
    let mut s = two_users();
    s.queue("a", "MSG bob lost in the crash");
    let seen = message_id(&s.output("b"), "lost in the crash");
    assert_eq!(s.output("a"), "");
    s.restart();
    log_in_again(&mut s);
    s.send("b", "HISTORY alice");
    let history = s.output("b");
    assert!(history.contains(" alice bob first\n"), "{history}");
    assert!(!history.contains("lost in the crash"), "{history}");
    s.output("a");
    s.send("a", "MSG bob after the crash");
    let after = message_id(&s.output("b"), "after the crash");
    assert!(
        after > seen,
        "id {after} after the crash, but bob saw {seen} before it"
    );
    // Exactly past the reservation made with the first message (id 1, when the next id was 2):
    // the crash skipped the rest of it and no more.
    assert_eq!(after, 2 + chatd::config::ID_RESERVE_BLOCK);
    assert!(s
        .output("a")
        .starts_with(&format!("OK MSG {after} DELIVERED")));
}

/// After a clean stop every message handed out is committed, and ids go on from the last one
/// instead of skipping the rest of the reservation.
#[test]
fn after_a_clean_stop_ids_go_on_from_the_last() {
    let mut s = two_users();
    s.send("a", "MSG bob last before the stop");
    let last = message_id(&s.output("b"), "last before the stop");
    s.shutdown();
    s.restart();
    log_in_again(&mut s);
    s.output("a");
    s.send("a", "MSG bob first after the stop");
    assert_eq!(message_id(&s.output("b"), "first after the stop"), last + 1);
}

/// The reservation is renewed while half of it is left, so delivery never waits for one: the
/// message that leaves less than half (its id 32,770, when the next id is 32,771) commits a new
/// reservation up to 32,771 + 65,536, and a crash goes on exactly there.
#[test]
fn the_reservation_is_renewed_at_half() {
    let mut s = two_users();
    s.set_limits(|l| {
        l.msgs_per_minute = 0;
        l.stored_bytes_per_day = 0;
    });
    let half = chatd::config::ID_RESERVE_BLOCK / 2;
    let last = half + 10;
    for i in 2..=last {
        s.send("a", &format!("MSG bob n{i}"));
        if i % 1024 == 0 || i == last {
            s.output("a");
            s.output("b");
        }
    }
    s.restart();
    log_in_again(&mut s);
    s.output("a");
    s.send("a", "MSG bob after the crash");
    let after = message_id(&s.output("b"), "after the crash");
    assert_eq!(after, half + 3 + chatd::config::ID_RESERVE_BLOCK);
}

/// A member may mark read a room message it got before its commit: the store answers the
/// marker's place in the room after the writes sent before it, so it counts that message, and the
/// unread count at the next login is exact.
#[test]
fn a_room_message_marked_read_before_its_commit_counts_as_read() {
    let mut s = in_a_room();
    s.queue("a", "MSG #team one");
    s.queue("a", "MSG #team two");
    let b = s.output("b");
    let one = message_id(&b, "one");
    message_id(&b, "two");
    s.queue("b", &format!("READ #team {one}"));
    s.settle();
    assert_eq!(s.output("b"), format!("OK READ #team {one}\n"));
    s.connect("b2");
    s.send("b2", "LOGIN bob password2");
    let login = s.output("b2");
    assert!(login.contains("\nUNREAD #team 1 "), "{login}");
}
