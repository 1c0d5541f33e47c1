//! DIRECT and who may reach whom (spec 4.26 with 4.19 and 4.22), through the simulator: a blocked
//! user's offer never arrives, a block stands both ways, an account that takes direct messages from
//! friends only takes offers from friends only, and a block made while an offer waits ends it.

use chatd::sim::Sim;

const FP: &str =
    "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

fn user(s: &mut Sim, client: &str, name: &str) {
    s.connect(client);
    s.send(client, &format!("REGISTER {name} wonderland1"));
    s.send(client, &format!("LOGIN {name} wonderland1"));
    s.output(client);
}

fn offer(to: &str) -> String {
    format!("DIRECT OFFER {to} 192.0.2.7:41000 {FP}")
}

#[test]
fn a_blocked_users_direct_offer_never_arrives() {
    let mut s = Sim::new();
    user(&mut s, "a", "alice");
    user(&mut s, "b", "bob");
    s.send("b", "BLOCK alice");
    assert!(s.output("b").starts_with("OK BLOCK alice"));
    s.send("a", &offer("bob"));
    let said = s.output("a");
    assert!(said.starts_with("FAIL DIRECT BLOCKED "), "{said}");
    assert_eq!(s.output("b"), "", "the offer reached the blocker");
    // A block stands both ways: the blocker cannot offer either.
    s.send("b", &offer("alice"));
    assert!(s.output("b").starts_with("FAIL DIRECT BLOCKED "));
    assert_eq!(s.output("a"), "");
    assert_eq!(s.core().offers_waiting(), 0);
    // Once lifted, offers go through again.
    s.send("b", "UNBLOCK alice");
    s.output("b");
    s.send("a", &offer("bob"));
    assert!(s.output("a").starts_with("OK DIRECT OFFER bob "));
    assert!(s.output("b").starts_with("DIRECT alice OFFER "));
}

#[test]
fn friends_only_takes_offers_from_friends_only() {
    let mut s = Sim::new();
    user(&mut s, "a", "alice");
    user(&mut s, "c", "carol");
    user(&mut s, "d", "dave");
    s.send("c", "DMS FRIENDS");
    s.send("c", "FRIEND ADD dave");
    s.send("d", "FRIEND ACCEPT carol");
    s.output("c");
    s.output("d");
    s.send("a", &offer("carol"));
    assert!(s.output("a").starts_with("FAIL DIRECT FRIENDS_ONLY "));
    assert_eq!(s.output("c"), "");
    s.send("d", &offer("carol"));
    assert!(s.output("d").starts_with("OK DIRECT OFFER carol "));
    assert!(s.output("c").starts_with("DIRECT dave OFFER "));
}

/// An offer that waits when a block is made ends: the blocker's connections hear it withdrawn,
/// the blocked offerer that it was declined; and an offer the blocker made is withdrawn from the
/// blocked account's connections.
#[test]
fn a_block_ends_the_offers_waiting_between_the_two() {
    let mut s = Sim::new();
    user(&mut s, "a", "alice");
    user(&mut s, "b", "bob");
    s.send("a", &offer("bob"));
    s.send("b", &offer("alice"));
    s.output("a");
    s.output("b");
    assert_eq!(s.core().offers_waiting(), 2);
    s.send("b", "BLOCK alice");
    let to_bob = s.output("b");
    assert!(to_bob.starts_with("OK BLOCK alice\n"), "{to_bob}");
    assert!(to_bob.contains("DIRECT alice WITHDRAWN\n"), "{to_bob}");
    let to_alice = s.output("a");
    assert!(to_alice.contains("DIRECT bob DECLINED\n"), "{to_alice}");
    assert!(to_alice.contains("DIRECT bob WITHDRAWN\n"), "{to_alice}");
    assert_eq!(s.core().offers_waiting(), 0);
    // Nothing is left to accept, and the block would refuse it anyway.
    s.send("a", &format!("DIRECT ACCEPT bob {FP}"));
    assert!(s.output("a").starts_with("FAIL DIRECT BLOCKED "));
    s.send("a", "DIRECT DECLINE bob");
    assert!(s.output("a").starts_with("FAIL DIRECT NO_OFFER "));
}
