//! Rooms through the simulator: the limits at their boundaries that the conformance suite cannot
//! reach cheaply, the races between a room's messages and its membership, and what a restart
//! keeps.
//!
//! What could go wrong: a member who joins while a message is being committed gets it twice (in
//! the JOIN's replay and live) or sees a private room's message from before their join; a message
//! committed after its room was deleted reaches someone; the public room directory grows without
//! bound; an invitation outlives its 7 days; a restart forgets a ban, a topic or an invitation.

use chatd::config::{INVITE_LIFETIME_MS, MAX_ROOMS_PER_ACCOUNT, ROOMS_LISTED_PUBLIC};
use chatd::sim::Sim;

/// A server with `names` registered and each logged in on a connection of the same name.
fn with_users(names: &[&str]) -> Sim {
    let mut s = Sim::new();
    s.connect("setup");
    for n in names {
        s.send("setup", &format!("REGISTER {n} password1"));
    }
    s.disconnect("setup");
    for n in names {
        s.connect(n);
        s.send(n, &format!("LOGIN {n} password1"));
        s.output(n);
    }
    s
}

fn lines(s: &mut Sim, client: &str) -> Vec<String> {
    s.output(client).lines().map(str::to_owned).collect()
}

#[test]
fn rooms_lists_at_most_500_public_rooms_the_busiest_first() {
    // Six accounts create 501 public rooms between them (one account may be in 100).
    let creators = ["c0", "c1", "c2", "c3", "c4", "c5"];
    let mut names: Vec<&str> = creators.to_vec();
    names.extend(["reader", "fan"]);
    let mut s = with_users(&names);
    let wanted = ROOMS_LISTED_PUBLIC + 1;
    let mut made = 0;
    'outer: for c in creators {
        for _ in 0..MAX_ROOMS_PER_ACCOUNT {
            if made == wanted {
                break 'outer;
            }
            s.send(c, &format!("JOIN #room{made:03}"));
            made += 1;
        }
        s.output(c);
    }
    // The last one by name gets a second member: it is listed first.
    s.send("fan", &format!("JOIN #room{:03}", wanted - 1));
    s.output("fan");
    s.send("reader", "ROOMS");
    let out = lines(&mut s, "reader");
    assert_eq!(out.len(), ROOMS_LISTED_PUBLIC + 1, "{:?}", &out[..3]);
    assert!(
        out[0].starts_with(&format!("ROOM #room{:03} PUBLIC 2 - -", wanted - 1)),
        "{}",
        out[0]
    );
    assert!(
        out[1].starts_with("ROOM #room000 PUBLIC 1 - -"),
        "{}",
        out[1]
    );
    assert_eq!(
        out[ROOMS_LISTED_PUBLIC],
        format!("OK ROOMS {ROOMS_LISTED_PUBLIC}")
    );
    // The one left out is the last by name among those with one member.
    assert!(!out
        .iter()
        .any(|l| l.starts_with(&format!("ROOM #room{:03} ", wanted - 2))));
    // A member's own rooms are listed whatever the bound.
    s.output("c5");
    s.send("c5", "ROOMS");
    let own = lines(&mut s, "c5");
    assert!(
        own[0].starts_with("ROOM #room500 PUBLIC 2 OWNER 0"),
        "{}",
        own[0]
    );
}

#[test]
fn an_invitation_lasts_exactly_seven_days() {
    let mut s = with_users(&["alice", "bob"]);
    s.send("alice", "JOIN #team");
    s.send("alice", "ROOM PRIVATE #team");
    s.send("alice", "INVITE #team bob");
    s.output("alice");
    s.output("bob");
    s.advance(INVITE_LIFETIME_MS - 1);
    s.send("bob", "ROOMS");
    assert_eq!(
        lines(&mut s, "bob"),
        ["ROOM #team PRIVATE 1 INVITED -", "OK ROOMS 1"]
    );
    s.advance(1);
    s.send("bob", "ROOMS");
    assert_eq!(lines(&mut s, "bob"), ["OK ROOMS 0"]);
    s.send("bob", "JOIN #team");
    assert_eq!(
        lines(&mut s, "bob")[0],
        "FAIL JOIN INVITE_ONLY #team is invite only; ask an op or owner to INVITE you"
    );
    // An expired invitation neither counts nor blocks a new one.
    s.send("alice", "INVITE #team bob");
    assert!(lines(&mut s, "alice")[0].starts_with("OK INVITE #team bob "));
    s.send("bob", "JOIN #team");
    assert_eq!(
        lines(&mut s, "bob"),
        [
            "INVITED #team alice 2026-01-15T00:00:00.000Z",
            "ROOM #team PRIVATE 2 MEMBER 0",
            "OK JOIN #team JOINED"
        ]
    );
}

/// bob joins while alice's message is being committed: the message was accepted first, so it is
/// in his JOIN's replay (the room is public), and it does not reach him live as well.
#[test]
fn a_join_during_a_message_commit_gets_it_once() {
    let mut s = with_users(&["alice", "bob"]);
    s.send("alice", "JOIN #r");
    s.output("alice");
    s.queue("alice", "MSG #r racing");
    s.queue("bob", "JOIN #r");
    s.settle();
    assert_eq!(
        lines(&mut s, "bob"),
        [
            "ROOM #r PUBLIC 2 MEMBER 0",
            "HISTORY 1 2026-01-01T00:00:00.000Z alice #r racing",
            "OK JOIN #r JOINED"
        ]
    );
    assert_eq!(
        lines(&mut s, "alice"),
        ["OK MSG 1 DELIVERED 0", "JOINED #r bob"]
    );
    // After the join, messages arrive live.
    s.send("alice", "MSG #r after");
    assert_eq!(
        lines(&mut s, "bob"),
        ["MESSAGE 2 2026-01-01T00:00:00.000Z alice #r after"]
    );
}

/// The same race in a private room: the message was said before bob's join, so he sees it
/// nowhere, neither live nor in the replay nor in HISTORY.
#[test]
fn a_join_during_a_message_commit_to_a_private_room_never_shows_it() {
    let mut s = with_users(&["alice", "bob"]);
    for line in ["JOIN #p", "ROOM PRIVATE #p", "INVITE #p bob"] {
        s.send("alice", line);
    }
    s.output("alice");
    s.output("bob");
    s.queue("alice", "MSG #p before you");
    s.queue("bob", "JOIN #p");
    s.settle();
    assert_eq!(
        lines(&mut s, "bob"),
        ["ROOM #p PRIVATE 2 MEMBER 0", "OK JOIN #p JOINED"]
    );
    s.send("bob", "HISTORY #p");
    assert_eq!(lines(&mut s, "bob"), ["OK HISTORY #p 0 BEFORE - AFTER -"]);
}

/// The owner deletes the room while a member's message is being committed: nobody gets it, and
/// its sender is told it reached no one.
#[test]
fn a_message_committed_after_its_room_was_deleted_reaches_nobody() {
    let mut s = with_users(&["alice", "bob", "carol"]);
    s.send("alice", "JOIN #r");
    s.send("bob", "JOIN #r");
    s.send("carol", "JOIN #r");
    for c in ["alice", "bob", "carol"] {
        s.output(c);
    }
    s.queue("bob", "MSG #r last words");
    s.queue("alice", "ROOM DELETE #r");
    s.settle();
    assert_eq!(
        lines(&mut s, "bob"),
        ["OK MSG 1 DELIVERED 0", "DELETED #r alice"]
    );
    assert_eq!(lines(&mut s, "carol"), ["DELETED #r alice"]);
    assert_eq!(lines(&mut s, "alice"), ["OK ROOM DELETE #r"]);
}

/// A member kicked while their message is being committed: the message, accepted before the
/// kick, is delivered; the kick takes effect when it runs, so the member's next message is refused
/// (its answer waits for the one before it, which is committed with the kick), and the kick is
/// told at its commit.
#[test]
fn a_kick_during_a_message_commit() {
    let mut s = with_users(&["alice", "bob"]);
    s.send("alice", "JOIN #r");
    s.send("bob", "JOIN #r");
    s.output("alice");
    s.output("bob");
    s.queue("bob", "MSG #r one");
    s.queue("alice", "KICK #r bob");
    s.queue("bob", "MSG #r two");
    s.settle();
    assert_eq!(
        lines(&mut s, "alice"),
        [
            "MESSAGE 1 2026-01-01T00:00:00.000Z bob #r one",
            "OK KICK #r bob"
        ]
    );
    assert_eq!(
        lines(&mut s, "bob"),
        [
            "OK MSG 1 DELIVERED 1",
            "FAIL MSG NOT_MEMBER you are not a member of #r",
            "KICKED #r bob alice"
        ]
    );
}

#[test]
fn a_restart_keeps_roles_bans_topics_invitations_and_markers() {
    let mut s = with_users(&["alice", "bob", "carol", "mallory"]);
    for line in [
        "JOIN #Team",
        "ROOM PRIVATE #team",
        "TOPIC #team plans",
        "INVITE #team bob",
        "INVITE #team carol",
        "BAN #team mallory no thanks",
    ] {
        s.send("alice", line);
    }
    s.send("bob", "JOIN #team");
    s.send("alice", "ROLE #team bob OP");
    s.send("alice", "MSG #team one");
    s.send("alice", "MSG #team two");
    s.send("bob", "READ #team 1");
    for c in ["alice", "bob", "carol", "mallory"] {
        s.output(c);
    }
    s.advance(1000);
    s.restart();
    for c in ["alice", "bob", "carol", "mallory"] {
        s.connect(c);
        s.output(c);
        s.send(c, &format!("LOGIN {c} password1"));
    }
    assert_eq!(
        lines(&mut s, "bob"),
        ["OK LOGIN bob", "UNREAD #Team 1 2", "BACKLOG-END 0"]
    );
    assert_eq!(
        lines(&mut s, "carol"),
        [
            "OK LOGIN carol",
            "INVITED #Team alice 2026-01-08T00:00:00.000Z",
            "BACKLOG-END 0"
        ]
    );
    s.output("alice");
    s.output("mallory");
    s.send("mallory", "JOIN #team");
    assert!(lines(&mut s, "mallory")[0].starts_with("FAIL JOIN BANNED"));
    s.send("bob", "ROOM INFO #team");
    assert_eq!(
        lines(&mut s, "bob"),
        [
            "ROOM #Team PRIVATE 2 OP 1 plans",
            "BAN #Team mallory alice 2026-01-01T00:00:00.000Z no thanks",
            "INVITATION #Team carol alice 2026-01-08T00:00:00.000Z",
            "OK ROOM INFO #Team 2026-01-01T00:00:00.000Z"
        ]
    );
    s.send("carol", "JOIN #TEAM");
    assert_eq!(
        lines(&mut s, "carol"),
        [
            "ROOM #Team PRIVATE 3 MEMBER 0 plans",
            "OK JOIN #Team JOINED"
        ]
    );
    // Message ids go on past those before the restart (which was a crash: past the ids reserved
    // then, spec 6.2).
    s.send("alice", "MSG #team three");
    let ok = lines(&mut s, "alice")
        .into_iter()
        .find(|l| l.starts_with("OK MSG "))
        .expect("an OK");
    let id: u64 = ok
        .strip_prefix("OK MSG ")
        .and_then(|r| r.strip_suffix(" DELIVERED 2"))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{ok}"));
    assert!(id > 2, "{ok}");
}

/// An account deleted with UNREGISTER leaves its rooms: the op who joined first inherits a room it
/// was the last owner of, a room it was alone in is deleted, and its invitations and the bans
/// naming it go too; a restart finds the same.
#[test]
fn a_deleted_account_hands_its_rooms_on() {
    let mut s = with_users(&["alice", "bob", "carol", "dave"]);
    for line in [
        "JOIN #team",
        "JOIN #solo",
        "ROOM PRIVATE #solo",
        "INVITE #solo dave",
    ] {
        s.send("alice", line);
    }
    s.send("carol", "JOIN #team");
    s.send("bob", "JOIN #team");
    s.send("alice", "ROLE #team bob OP");
    s.send("alice", "ROLE #team carol OP");
    s.send("alice", "MSG #team before bob joined? no: after both");
    s.send("dave", "JOIN #team");
    s.send("dave", "JOIN #elsewhere");
    s.send("dave", "BAN #elsewhere alice");
    for c in ["alice", "bob", "carol", "dave"] {
        s.output(c);
    }
    s.send("alice", "UNREGISTER password1");
    assert_eq!(lines(&mut s, "alice"), ["OK UNREGISTER alice"]);
    // Carol and bob joined at the same point (no message between them): name order decides.
    for c in ["bob", "carol", "dave"] {
        assert_eq!(
            lines(&mut s, c),
            ["ROLE #team bob OWNER alice", "PARTED #team alice"],
            "{c}"
        );
    }
    s.send("bob", "MEMBERS #team");
    assert_eq!(
        lines(&mut s, "bob"),
        [
            "MEMBER #team bob OWNER ONLINE",
            "MEMBER #team carol OP ONLINE",
            "MEMBER #team dave MEMBER ONLINE",
            "OK MEMBERS #team 3"
        ]
    );
    // #solo had no one else: it is gone, and so is dave's invitation to it.
    s.send("dave", "ROOMS");
    let rooms = lines(&mut s, "dave");
    assert!(!rooms.iter().any(|l| l.contains("#solo")), "{rooms:?}");
    s.send("dave", "ROOM INFO #elsewhere");
    let info = lines(&mut s, "dave");
    assert!(!info.iter().any(|l| l.starts_with("BAN ")), "{info:?}");
    s.restart();
    s.connect("bob");
    s.output("bob");
    s.send("bob", "LOGIN bob password1");
    s.send("bob", "MEMBERS #team");
    s.send("bob", "JOIN #solo");
    let after = lines(&mut s, "bob");
    assert!(
        after.contains(&"MEMBER #team bob OWNER ONLINE".to_owned())
            && after.contains(&"OK MEMBERS #team 3".to_owned())
            && after.contains(&"OK JOIN #solo CREATED".to_owned()),
        "{after:?}"
    );
}

/// Who got the room message `text`: the clients whose output has it as a `MESSAGE` line. The
/// sender's output is read too, and its `OK MSG` gives the count of members reached.
fn reached(s: &mut Sim, clients: &[&str], text: &str) -> (Vec<String>, u64) {
    s.send("alice", &format!("MSG #r {text}"));
    let ok = lines(s, "alice")
        .into_iter()
        .find(|l| l.starts_with("OK MSG "))
        .unwrap_or_else(|| panic!("no OK for {text}"));
    let count = ok
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ok}"));
    let mut got = Vec::new();
    for c in clients {
        let out = s.output(c);
        if out
            .lines()
            .any(|l| l.starts_with("MESSAGE ") && l.ends_with(&format!(" {text}")))
        {
            got.push((*c).to_owned());
        }
    }
    (got, count)
}

/// A room message reaches the connections its members have at that moment, through every change
/// of who is a member and of who is online: a login (of a member, of a second connection, of
/// someone who is not a member), a connection closing, LOGOUT, JOIN, PART, KICK, BAN, a BLOCK and
/// its end, an account deleted. The fan-out walks a list the room keeps of its members'
/// connections (debug builds check that list against the members and the accounts at each
/// message), so each change here is one the list must follow.
#[test]
fn a_room_message_reaches_the_members_online_through_every_change() {
    let mut s = with_users(&["alice", "bob", "carol", "dave", "erin", "frank"]);
    s.connect("bob2");
    s.send("bob2", "LOGIN bob password1");
    let all = ["bob", "bob2", "carol", "dave", "erin", "frank"];
    s.send("alice", "JOIN #r");
    for c in ["bob", "carol"] {
        s.send(c, "JOIN #r");
    }
    for c in ["alice"].iter().chain(all.iter()) {
        s.output(c);
    }
    let check = |s: &mut Sim, text: &str, want: &[&str], count: u64| {
        let (got, n) = reached(s, &all, text);
        assert_eq!(got, want, "{text}");
        assert_eq!(n, count, "{text}");
        for c in all {
            s.output(c);
        }
    };
    check(&mut s, "m1", &["bob", "bob2", "carol"], 2);
    // A connection closing; then its account logging in again.
    s.disconnect("carol");
    check(&mut s, "m2", &["bob", "bob2"], 1);
    s.connect("carol");
    s.send("carol", "LOGIN carol password1");
    check(&mut s, "m3", &["bob", "bob2", "carol"], 2);
    // One of two connections going: the member is still reached on the other.
    s.send("bob2", "LOGOUT");
    check(&mut s, "m4", &["bob", "carol"], 2);
    // A login of someone who is not a member changes nothing; a JOIN adds.
    s.connect("frank2");
    s.send("frank2", "LOGIN frank password1");
    s.output("frank2");
    s.send("dave", "JOIN #r");
    s.send("erin", "JOIN #r");
    check(&mut s, "m5", &["bob", "carol", "dave", "erin"], 4);
    s.send("bob", "PART #r");
    check(&mut s, "m6", &["carol", "dave", "erin"], 3);
    s.send("alice", "KICK #r dave");
    s.output("alice");
    check(&mut s, "m7", &["carol", "erin"], 2);
    s.send("carol", "BLOCK alice");
    check(&mut s, "m8", &["erin"], 1);
    s.send("carol", "UNBLOCK alice");
    check(&mut s, "m9", &["carol", "erin"], 2);
    s.send("alice", "BAN #r carol");
    s.output("alice");
    check(&mut s, "m10", &["erin"], 1);
    s.send("erin", "UNREGISTER password1");
    check(&mut s, "m11", &[], 0);
    // Someone who joined while offline is reached once they log in.
    s.disconnect("frank2");
    s.disconnect("frank");
    s.connect("f");
    s.send("f", "LOGIN frank password1");
    s.send("f", "JOIN #r");
    s.send("f", "QUIT");
    s.connect("frank");
    s.send("frank", "LOGIN frank password1");
    check(&mut s, "m12", &["frank"], 1);
}
