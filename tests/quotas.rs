//! Quotas per account through the simulator (spec 7.8): what one user can make the server store and
//! send, whatever number of connections it uses.

use chatd::config::{
    ALL_MESSAGE_WEIGHT, DEFAULT_FRIEND_REQUESTS_PER_HOUR, DEFAULT_MSGS_PER_MINUTE,
    DEFAULT_STORED_KIB_PER_DAY, MAX_RELATIONS_PER_ACCOUNT, STORED_BYTES_PER_RECIPIENT,
    STORED_MESSAGE_OVERHEAD_BYTES,
};
use chatd::sim::Sim;

/// Sends `line` `n` times on `client`, one at a time; counts the replies starting with `ok`.
fn count_ok(s: &mut Sim, client: &str, line: &str, n: usize, ok: &str) -> usize {
    (0..n)
        .filter(|_| {
            s.send(client, line);
            s.output(client).lines().any(|l| l.starts_with(ok))
        })
        .count()
}

fn logged_in(s: &mut Sim, client: &str, name: &str) {
    s.connect(client);
    s.send(client, &format!("LOGIN {name} wonderland1"));
    s.output(client);
}

/// The failure this guards against: ALL with 2 KB texts stored 1 to 1.5 MB a second per
/// connection, forever, and one account could hold any number of connections. Now one account, on
/// four connections, stores 6 ALLs a minute (an ALL counts 10 of the 60 messages a minute).
#[test]
fn an_all_flood_from_four_connections_is_held_to_the_accounts_quota() {
    let mut s = Sim::new();
    s.connect("setup");
    s.send("setup", "REGISTER mallory wonderland1");
    s.send("setup", "REGISTER bob wonderland1");
    logged_in(&mut s, "bob", "bob");
    let text = "x".repeat(2048);
    let mut stored = 0;
    for c in ["m1", "m2", "m3", "m4"] {
        logged_in(&mut s, c, "mallory");
    }
    for _ in 0..50 {
        for c in ["m1", "m2", "m3", "m4"] {
            stored += count_ok(&mut s, c, &format!("ALL {text}"), 1, "OK ALL ");
        }
    }
    assert_eq!(
        stored as u64,
        DEFAULT_MSGS_PER_MINUTE / ALL_MESSAGE_WEIGHT,
        "ALLs stored in one minute"
    );
    // The rest were refused, saying when to retry.
    s.send("m1", &format!("ALL {text}"));
    assert!(s
        .output("m1")
        .starts_with("FAIL ALL TOO_MANY_MESSAGES retry_after="));
}

/// With the rate lifted, the bytes stored per day stop an account at its daily amount.
#[test]
fn the_daily_amount_bounds_what_one_account_stores() {
    let mut s = Sim::new();
    s.set_limits(|l| l.msgs_per_minute = 0);
    s.connect("setup");
    s.send("setup", "REGISTER mallory wonderland1");
    logged_in(&mut s, "m", "mallory");
    let text = "x".repeat(2048);
    let each = 2048 + STORED_MESSAGE_OVERHEAD_BYTES + STORED_BYTES_PER_RECIPIENT;
    let fits = DEFAULT_STORED_KIB_PER_DAY * 1024 / each;
    let stored = count_ok(
        &mut s,
        "m",
        &format!("ALL {text}"),
        fits as usize + 10,
        "OK ALL ",
    );
    assert_eq!(stored as u64, fits);
    s.send("m", &format!("ALL {text}"));
    assert!(s
        .output("m")
        .starts_with("FAIL ALL QUOTA_EXCEEDED retry_after="));
}

/// The failure this guards against: a FRIEND ADD/REMOVE loop sent its victim 250 pushes a second.
/// Now each ADD that makes a request counts against the friend requests per hour: the victim gets
/// a REQUESTED and a WITHDRAWN per request allowed, and the loop's other ADDs are refused.
#[test]
fn a_friend_add_remove_loop_is_held_to_the_request_rate() {
    let mut s = Sim::new();
    s.connect("setup");
    s.send("setup", "REGISTER mallory wonderland1");
    s.send("setup", "REGISTER victim wonderland1");
    logged_in(&mut s, "m", "mallory");
    logged_in(&mut s, "v", "victim");
    let mut refused = 0;
    for _ in 0..250 {
        s.send("m", "FRIEND ADD victim");
        if s.output("m")
            .starts_with("FAIL FRIEND TOO_MANY_REQUESTS retry_after=")
        {
            refused += 1;
        }
        s.send("m", "FRIEND REMOVE victim");
        s.output("m");
    }
    let pushes = s
        .output("v")
        .lines()
        .filter(|l| l.starts_with("FRIENDSHIP "))
        .count();
    let allowed = DEFAULT_FRIEND_REQUESTS_PER_HOUR as usize;
    assert_eq!((pushes, refused), (2 * allowed, 250 - allowed));
}

/// One account has at most 1000 friends and requests; a request past it, on either side, is
/// refused.
#[test]
fn relations_per_account_are_bounded() {
    let mut s = Sim::new();
    s.set_limits(|l| l.friend_requests_per_hour = 0);
    s.connect("setup");
    s.send("setup", "REGISTER hub wonderland1");
    for i in 0..=MAX_RELATIONS_PER_ACCOUNT {
        s.send("setup", &format!("REGISTER u{i} wonderland1"));
    }
    logged_in(&mut s, "h", "hub");
    for i in 0..MAX_RELATIONS_PER_ACCOUNT {
        s.send("h", &format!("FRIEND ADD u{i}"));
    }
    assert_eq!(
        s.output("h").matches(" REQUESTED\n").count(),
        MAX_RELATIONS_PER_ACCOUNT
    );
    s.send("h", &format!("FRIEND ADD u{MAX_RELATIONS_PER_ACCOUNT}"));
    assert!(s.output("h").starts_with("FAIL FRIEND TOO_MANY_FRIENDS "));
    // The other side is bounded too: a request to the full account is refused.
    logged_in(&mut s, "x", &format!("u{MAX_RELATIONS_PER_ACCOUNT}"));
    s.send("x", "FRIEND ADD hub");
    assert!(s.output("x").starts_with("FAIL FRIEND TOO_MANY_FRIENDS "));
    // Answering a request is not a new relation: u0 can still accept.
    logged_in(&mut s, "u0", "u0");
    s.send("u0", "FRIEND ACCEPT hub");
    assert!(s.output("u0").starts_with("OK FRIEND ACCEPT hub\n"));
}

/// The share of one sender in an offline inbox is counted from the store at start, so a restart
/// does not give a sender a fresh share.
#[test]
fn the_inbox_share_survives_a_restart() {
    use chatd::store::redb::RedbStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("share.redb");
    let share = |l: &mut chatd::core::Limits| {
        l.msgs_per_minute = 0;
        l.inbox_share = 3;
    };
    {
        let (store, snapshot) = RedbStore::open(&path).unwrap();
        let mut s = Sim::with_store(Box::new(store), snapshot);
        s.set_limits(share);
        s.connect("setup");
        s.send("setup", "REGISTER alice wonderland1");
        s.send("setup", "REGISTER carol wonderland1");
        logged_in(&mut s, "a", "alice");
        assert_eq!(count_ok(&mut s, "a", "MSG carol hello", 2, "OK MSG "), 2);
    }
    let (store, snapshot) = RedbStore::open(&path).unwrap();
    let mut s = Sim::with_store(Box::new(store), snapshot);
    s.set_limits(share);
    logged_in(&mut s, "a", "alice");
    assert_eq!(count_ok(&mut s, "a", "MSG carol again", 5, "OK MSG "), 1);
    s.send("a", "MSG carol once more");
    assert!(s.output("a").starts_with("FAIL MSG INBOX_SHARE_FULL "));
}
