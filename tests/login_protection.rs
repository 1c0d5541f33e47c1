//! Login protection through the simulator (spec 7.5): what a password-guessing client costs the
//! server, and who is still let in during an attack. The end-to-end version, over TCP with the real
//! hashing cost, is `e2e_login_attack.rs`.

use chatd::sim::Sim;

/// The replies to `lines` sent in one write (pipelined), one final line per command.
fn finals(s: &mut Sim, client: &str, lines: &[String]) -> Vec<String> {
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    s.send_bytes(client, &bytes);
    s.output(client)
        .lines()
        .filter(|l| l.starts_with("OK ") || l.starts_with("FAIL "))
        .map(str::to_owned)
        .collect()
}

fn count(replies: &[String], prefix: &str) -> usize {
    replies.iter().filter(|r| r.starts_with(prefix)).count()
}

/// The failure this guards against: 2,000 wrong passwords against one account from one connection
/// cost 2,000 password hashes (8 s of CPU). Now only the free attempts and one per back-off period
/// are hashed; the rest are refused at once, each saying when to try again.
#[test]
fn two_thousand_guesses_from_one_connection_cost_a_handful_of_hashes() {
    let mut s = Sim::new();
    s.connect_from("owner", "192.0.2.1");
    s.send("owner", "REGISTER alice wonderland1");
    s.connect_from("guesser", "198.51.100.7");
    s.output("guesser");
    let guesses: Vec<String> = (0..2000)
        .map(|i| format!("LOGIN alice guess-{i:04}"))
        .collect();
    // The line rate and the 64 unanswered commands pace a real client; the simulator hands the
    // lines over as fast as the core takes them, within one second of its clock.
    let replies = finals(&mut s, "guesser", &guesses);
    assert_eq!(replies.len(), 2000);
    let hashed = count(&replies, "FAIL LOGIN BAD_CREDENTIALS ");
    let refused = count(&replies, "FAIL LOGIN RATE_LIMITED retry_after=");
    println!("2000 guesses: {hashed} hashed, {refused} refused at once");
    assert_eq!((hashed, refused), (6, 1994));
    // The owner, from the address it registered from, is not locked out: an address does not
    // become known by registering, but the account's own back-off starts only after 10 failures
    // for the name, and these were fewer.
    s.send("owner", "LOGIN alice wonderland1");
    assert!(s.output("owner").contains("OK LOGIN alice\n"));
}

/// An account attacked from many addresses: past the free failures for the name, a LOGIN from a
/// new address waits (the answer says how long), while the addresses the account logged in from
/// before are let through at once.
#[test]
fn an_account_under_attack_still_lets_its_owner_in_from_a_known_address() {
    let mut s = Sim::new();
    s.connect_from("home", "192.0.2.1");
    s.send("home", "REGISTER alice wonderland1");
    s.send("home", "LOGIN alice wonderland1");
    s.send("home", "QUIT");
    s.output("home");
    // Twelve attackers, two guesses each, from twelve addresses: each address stays under its
    // own free failures, but the name has 24.
    for i in 0..12 {
        let who = format!("x{i}");
        s.connect_from(&who, &format!("203.0.113.{i}"));
        let replies = finals(
            &mut s,
            &who,
            &["LOGIN alice guess-a".into(), "LOGIN alice guess-b".into()],
        );
        assert!(
            replies.iter().all(|r| r.starts_with("FAIL LOGIN ")),
            "{replies:?}"
        );
    }
    // From a new address, even with the right password: wait.
    s.connect_from("cafe", "198.51.100.9");
    s.output("cafe");
    s.send("cafe", "LOGIN alice wonderland1");
    let cafe = s.output("cafe");
    assert!(
        cafe.starts_with("FAIL LOGIN RATE_LIMITED retry_after="),
        "{cafe}"
    );
    // From home, where alice logged in before: at once.
    s.connect_from("home", "192.0.2.1");
    s.output("home");
    s.send("home", "LOGIN alice wonderland1");
    assert!(s.output("home").starts_with("OK LOGIN alice\n"));
    // A success forgets the name's failures: the cafe gets in now too.
    s.send("cafe", "LOGIN alice wonderland1");
    assert!(s.output("cafe").starts_with("OK LOGIN alice\n"));
}

/// Names that do not exist back off like names that do, so RATE_LIMITED does not tell which
/// names are taken.
#[test]
fn unknown_names_back_off_like_known_ones() {
    let mut s = Sim::new();
    s.connect("setup");
    s.send("setup", "REGISTER alice wonderland1");
    let mut first_refusal = Vec::new();
    for name in ["alice", "nosuchuser"] {
        // Connections without an address: only the name's back-off applies.
        let mut n = 0;
        for i in 0..20 {
            let who = format!("{name}{i}");
            s.connect(&who);
            s.output(&who);
            s.send(&who, &format!("LOGIN {name} wrong-password"));
            n += 1;
            if s.output(&who).starts_with("FAIL LOGIN RATE_LIMITED ") {
                break;
            }
        }
        first_refusal.push(n);
    }
    assert_eq!(first_refusal, [12, 12]);
}
