//! A node of a cluster through the simulator: the races between a message's routed copy and its
//! log entry, and presence from the other nodes' heartbeats and entries, in every order, without
//! NATS (`tests/cluster.rs` runs the real thing).
//!
//! What could go wrong: a message pushed twice (by its route and again from the index, or by a
//! LOGIN's backlog and again by its route); a backlog entry left behind for a message that was
//! pushed (shown again at the next login) or cleared for one that was not (lost); a message kept
//! for an account online here never pushed because its route was published before this node
//! subscribed; a crashed node's users shown online for ever, or a live node's entries ignored
//! because they came before its heartbeat; a subscription kept after its last reason went.

use chatd::config::{PRESENCE_EXPIRY, ROUTE_FALLBACK, ROUTE_MEMORY};
use chatd::core::{BusIn, BusOut, RouteTo};
use chatd::sim::{Sim, EPOCH_MS};
use chatd::store::{MessageRecord, StoreOp, To};

/// A node with `names` registered; each in `online` logged in on a connection of the same name.
fn node(names: &[&str], online: &[&str]) -> Sim {
    let mut s = Sim::cluster_node();
    s.connect("setup");
    for n in names {
        s.send("setup", &format!("REGISTER {n} password1"));
    }
    s.disconnect("setup");
    for n in online {
        login(&mut s, n, n);
    }
    s.take_bus();
    s
}

fn login(s: &mut Sim, client: &str, name: &str) -> Vec<String> {
    s.connect(client);
    s.output(client);
    s.send(client, &format!("LOGIN {name} password1"));
    lines(s, client)
}

fn lines(s: &mut Sim, client: &str) -> Vec<String> {
    s.output(client).lines().map(str::to_owned).collect()
}

fn pushed_messages(s: &mut Sim, client: &str) -> Vec<String> {
    lines(s, client)
        .into_iter()
        .filter(|l| l.starts_with("MESSAGE "))
        .collect()
}

/// The entry another node wrote for alice's MSG to bob, who had no connection there: kept for
/// him.
fn message(id: u64, text: &str) -> StoreOp {
    StoreOp::AppendMessage {
        msg: MessageRecord {
            id,
            time_ms: EPOCH_MS,
            from: "alice".into(),
            to: To::User("bob".into()),
            text: text.into(),
        },
        pending_for: vec!["bob".into()],
    }
}

fn routed_to_bob(op: &StoreOp) -> BusIn {
    BusIn::Routed {
        to: RouteTo::Account("bob".into()),
        op: op.clone(),
    }
}

/// What a new LOGIN of bob finds waiting.
fn backlog_of_bob(s: &mut Sim) -> Vec<String> {
    let said = login(s, "bob-later", "bob");
    s.disconnect("bob-later");
    said.into_iter()
        .filter(|l| l.starts_with("MESSAGE ") || l.starts_with("BACKLOG-END"))
        .collect()
}

#[test]
fn a_route_that_comes_before_the_entry_is_applied_is_pushed_once_and_clears_the_backlog() {
    let mut s = node(&["alice", "bob"], &["bob"]);
    let op = message(1000, "route first");
    // The entry is in the log (a route is published only once it is): the index has it, the core
    // has not been told yet.
    s.index(std::slice::from_ref(&op));
    s.bus_in(routed_to_bob(&op));
    assert_eq!(
        pushed_messages(&mut s, "bob"),
        ["MESSAGE 1000 2026-01-01T00:00:00.000Z alice bob route first"]
    );
    s.report_remote(vec![op]);
    s.tick(5_000);
    assert_eq!(pushed_messages(&mut s, "bob"), Vec::<String>::new());
    assert_eq!(backlog_of_bob(&mut s), ["BACKLOG-END 0"]);
}

#[test]
fn a_route_that_comes_after_the_entry_is_applied_is_pushed_once_and_clears_the_backlog() {
    let mut s = node(&["alice", "bob"], &["bob"]);
    let op = message(1000, "entry first");
    s.index(std::slice::from_ref(&op));
    s.report_remote(vec![op.clone()]);
    // Applying the entry pushes nothing: the route does.
    assert_eq!(pushed_messages(&mut s, "bob"), Vec::<String>::new());
    s.bus_in(routed_to_bob(&op));
    assert_eq!(pushed_messages(&mut s, "bob").len(), 1);
    // The wait for a missing route passes: nothing is pushed again.
    s.tick(5_000);
    assert_eq!(pushed_messages(&mut s, "bob"), Vec::<String>::new());
    assert_eq!(backlog_of_bob(&mut s), ["BACKLOG-END 0"]);
}

#[test]
fn a_kept_message_whose_route_never_comes_is_pushed_from_the_index_after_a_second() {
    let mut s = node(&["alice", "bob"], &["bob"]);
    let op = message(1000, "route lost");
    s.index(std::slice::from_ref(&op));
    s.report_remote(vec![op]);
    // The boundary: pushed once the wait is over, not a tick before.
    let wait = ROUTE_FALLBACK.as_millis() as i64;
    s.tick(wait - 1);
    assert_eq!(pushed_messages(&mut s, "bob"), Vec::<String>::new());
    s.tick(1);
    assert_eq!(
        pushed_messages(&mut s, "bob"),
        ["MESSAGE 1000 2026-01-01T00:00:00.000Z alice bob route lost"]
    );
    s.tick(5_000);
    assert_eq!(pushed_messages(&mut s, "bob"), Vec::<String>::new());
    assert_eq!(backlog_of_bob(&mut s), ["BACKLOG-END 0"]);
}

#[test]
fn a_message_pushed_by_its_route_is_not_pushed_again_after_a_busy_second() {
    let mut s = node(&["alice", "bob"], &["bob"]);
    let op = message(1000, "early entry");
    s.index(std::slice::from_ref(&op));
    s.report_remote(vec![op.clone()]);
    s.bus_in(routed_to_bob(&op));
    assert_eq!(pushed_messages(&mut s, "bob").len(), 1);
    // More messages are pushed before the wait for the first one's route is over than the node
    // remembers pairs for (ROUTE_MEMORY): the first is still not pushed again.
    let busy = ROUTE_MEMORY as u64 + 10;
    for i in 0..busy {
        let StoreOp::AppendMessage { msg, .. } = message(2000 + i, "busy") else {
            unreachable!()
        };
        let other = StoreOp::AppendMessage {
            msg,
            pending_for: Vec::new(),
        };
        s.bus_in(routed_to_bob(&other));
        if i % 100 == 0 {
            s.output("bob");
        }
    }
    s.output("bob");
    s.tick(ROUTE_FALLBACK.as_millis() as i64);
    assert_eq!(pushed_messages(&mut s, "bob"), Vec::<String>::new());
}

#[test]
fn a_route_for_an_account_that_has_left_leaves_the_message_in_its_backlog() {
    let mut s = node(&["alice", "bob"], &["bob"]);
    s.send("bob", "QUIT");
    s.disconnect("bob");
    let op = message(1000, "while away");
    s.index(std::slice::from_ref(&op));
    s.bus_in(routed_to_bob(&op));
    s.report_remote(vec![op]);
    s.tick(5_000);
    assert_eq!(
        backlog_of_bob(&mut s),
        [
            "MESSAGE 1000 2026-01-01T00:00:00.000Z alice bob while away",
            "BACKLOG-END 1"
        ]
    );
}

#[test]
fn a_message_a_login_backlog_gave_is_not_pushed_again_by_its_route_or_the_index() {
    let mut s = node(&["alice", "bob"], &[]);
    let op = message(1000, "in flight");
    s.index(std::slice::from_ref(&op));
    s.report_remote(vec![op.clone()]);
    // bob logs in here while the message's route is on its way: the backlog gives it.
    let said = login(&mut s, "bob", "bob");
    assert!(
        said.contains(&"MESSAGE 1000 2026-01-01T00:00:00.000Z alice bob in flight".to_owned()),
        "{said:?}"
    );
    s.bus_in(routed_to_bob(&op));
    s.tick(5_000);
    assert_eq!(pushed_messages(&mut s, "bob"), Vec::<String>::new());
}

#[test]
fn a_second_copy_of_a_route_is_not_pushed_again() {
    let mut s = node(&["alice", "bob"], &["bob"]);
    let op = message(1000, "twice");
    s.index(std::slice::from_ref(&op));
    s.bus_in(routed_to_bob(&op));
    s.bus_in(routed_to_bob(&op));
    assert_eq!(pushed_messages(&mut s, "bob").len(), 1);
}

#[test]
fn a_route_naming_an_account_the_message_is_not_for_is_ignored() {
    let mut s = node(&["alice", "bob", "carol"], &["carol"]);
    let op = message(1000, "for bob");
    s.index(std::slice::from_ref(&op));
    s.bus_in(BusIn::Routed {
        to: RouteTo::Account("carol".into()),
        op,
    });
    assert_eq!(pushed_messages(&mut s, "carol"), Vec::<String>::new());
}

#[test]
fn subscriptions_follow_the_accounts_and_the_rooms_with_a_connection_here() {
    let mut s = node(&["alice", "bob"], &[]);
    login(&mut s, "bob", "bob");
    assert_eq!(
        s.take_bus(),
        [BusOut::Presence {
            key: "bob".into(),
            online: true
        }]
    );
    s.send("bob", "JOIN #lounge");
    s.output("bob");
    let words = s.take_bus();
    let [BusOut::Room { id, watch: true }] = words[..] else {
        panic!("{words:?}");
    };
    // A second member online here changes nothing; the room is watched until the last goes (bob
    // made it: he is its owner, and stays).
    login(&mut s, "alice", "alice");
    s.send("alice", "JOIN #lounge");
    s.output("alice");
    assert_eq!(
        s.take_bus(),
        [BusOut::Presence {
            key: "alice".into(),
            online: true
        }]
    );
    let gone = |key: &str| BusOut::Presence {
        key: key.into(),
        online: false,
    };
    s.send("alice", "QUIT");
    s.disconnect("alice");
    assert_eq!(s.take_bus(), [gone("alice")]);
    s.send("bob", "QUIT");
    s.disconnect("bob");
    assert_eq!(
        s.take_bus(),
        [gone("bob"), BusOut::Room { id, watch: false }]
    );
    // A member logging in here watches the room again, and leaving it stops that.
    login(&mut s, "alice", "alice");
    assert_eq!(
        s.take_bus(),
        [
            BusOut::Presence {
                key: "alice".into(),
                online: true
            },
            BusOut::Room { id, watch: true }
        ]
    );
    s.send("alice", "PART #lounge");
    assert!(s.output("alice").contains("OK PART"));
    assert_eq!(s.take_bus(), [BusOut::Room { id, watch: false }]);
}

#[test]
fn another_nodes_entries_count_while_its_heartbeat_is_fresh() {
    let mut s = node(&["alice", "bob"], &["alice", "bob"]);
    s.send("alice", "FRIEND ADD bob");
    s.send("bob", "FRIEND ACCEPT alice");
    s.send("alice", "QUIT");
    s.disconnect("alice");
    s.output("bob");
    let alice_on = |node: &str| BusIn::Presence {
        node: node.into(),
        key: "alice".into(),
        online: true,
    };
    // An entry of a node whose heartbeat was not seen (yet) counts for nothing...
    s.bus_in(alice_on("n2"));
    assert_eq!(lines(&mut s, "bob"), Vec::<String>::new());
    // ... until the heartbeat comes, in whichever order they are read.
    s.bus_in(BusIn::Alive {
        node: "n2".into(),
        age_ms: 0,
    });
    assert_eq!(lines(&mut s, "bob"), ["PRESENCE alice ONLINE"]);
    // A heartbeat 10 s old, read from the bucket by a node that starts: that node is dead.
    s.bus_in(BusIn::Alive {
        node: "n3".into(),
        age_ms: 10_000,
    });
    s.bus_in(alice_on("n3"));
    // n2 is not heard from again: once its heartbeat is older than 6 s its users are offline
    // (not at 6 s exactly); n3's entry never counted.
    let expiry = PRESENCE_EXPIRY.as_millis() as i64;
    s.tick(expiry);
    assert_eq!(lines(&mut s, "bob"), Vec::<String>::new());
    s.tick(1);
    assert_eq!(lines(&mut s, "bob"), ["PRESENCE alice OFFLINE"]);
    // n2 comes back (it was cut off from NATS): its entries count again.
    s.bus_in(BusIn::Alive {
        node: "n2".into(),
        age_ms: 0,
    });
    assert_eq!(lines(&mut s, "bob"), ["PRESENCE alice ONLINE"]);
    s.bus_in(BusIn::Presence {
        node: "n2".into(),
        key: "alice".into(),
        online: false,
    });
    assert_eq!(lines(&mut s, "bob"), ["PRESENCE alice OFFLINE"]);
    // A node that stops deletes its heartbeat: its users are offline at once, whatever entries
    // it left behind.
    s.bus_in(alice_on("n2"));
    assert_eq!(lines(&mut s, "bob"), ["PRESENCE alice ONLINE"]);
    s.bus_in(BusIn::Gone { node: "n2".into() });
    assert_eq!(lines(&mut s, "bob"), ["PRESENCE alice OFFLINE"]);
}
