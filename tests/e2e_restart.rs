//! A graceful restart: what one server process stored, the next one on the same database file
//! serves. Accounts, the offline backlog, message history and pending friend requests all survive
//! a SIGTERM and a new start; connected clients are told `BYE SHUTDOWN` and the old process exits
//! with status 0.

mod common;

use common::*;

const MESSAGES: usize = 250;

#[test]
fn a_restart_keeps_accounts_backlog_history_and_friend_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.redb");

    // ----- first run -----
    let server = Server::start_on(&db, &[]);
    let mut alice = server.user("alice");
    let mut setup = server.connect();
    setup.register("Bob");
    setup.register("carol");
    let mut guest = server.connect();

    // 250 messages to bob, who is offline, written at once.
    let mut batch = String::new();
    for i in 0..MESSAGES {
        batch.push_str(&format!("MSG bob message {i}\n"));
    }
    alice.send_raw(batch.as_bytes());
    let mut ids = Vec::new();
    for _ in 0..MESSAGES {
        let reply = alice.read_line();
        let id = parse_ok_id(&reply, "MSG");
        assert_eq!(reply, format!("OK MSG {id} KEPT"));
        ids.push(id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    // A friend request while carol is offline.
    assert_eq!(
        alice.call1("FRIEND ADD carol"),
        "OK FRIEND ADD carol REQUESTED"
    );

    // SIGTERM: every connection, logged in or not, is told, then closed; the exit status is 0.
    let status = server.stop();
    assert!(status.success(), "exit status {status:?}");
    for c in [&mut alice, &mut setup, &mut guest] {
        let rest = c.read_to_close();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert!(rest[0].starts_with("BYE SHUTDOWN "), "{}", rest[0]);
    }

    // ----- second run, same file -----
    let server = Server::start_on(&db, &[]);
    assert!(
        server.log().iter().any(|l| l.contains(&format!(
            "3 accounts, 0 rooms, next message id {}",
            ids[MESSAGES - 1] + 1
        ))),
        "{:?}",
        server.log()
    );
    let mut alice = server.connect();
    alice.expect_fail("LOGIN alice wrong-password", "LOGIN", "BAD_CREDENTIALS");
    assert_eq!(alice.login("alice"), ["BACKLOG-END 0"]);
    // Names are kept as registered.
    let mut bob = server.connect();
    bob.send(&format!("LOGIN BOB {PASSWORD}"));
    assert_eq!(bob.read_line(), "OK LOGIN Bob");
    // The backlog: every message, in id order, once, then its count.
    let backlog = bob.read_until(|l| l.starts_with("BACKLOG-END "));
    assert_eq!(backlog.len(), MESSAGES + 1);
    for (i, line) in backlog[..MESSAGES].iter().enumerate() {
        let m = parse_msg(line, "MESSAGE");
        assert_eq!(
            (m.id, &*m.from, &*m.to, &*m.text),
            (ids[i], "alice", "Bob", &*format!("message {i}"))
        );
    }
    assert_eq!(backlog[MESSAGES], format!("BACKLOG-END {MESSAGES}"));
    // Not again at the next login, on this server or after another restart.
    bob.expect("LOGOUT", "OK LOGOUT");
    assert_eq!(bob.login("bob"), ["BACKLOG-END 0"]);

    // HISTORY pages backward from the latest, then forward, following the cursors of the final
    // lines; together they hold every message once, in order.
    let mut pages: Vec<Vec<u64>> = Vec::new();
    let mut query = "alice 50".to_owned();
    let oldest_after = loop {
        let (lines, fin) = bob.history(&query);
        let page: Vec<u64> = lines.iter().map(|l| parse_msg(l, "HISTORY").id).collect();
        assert_eq!(page.len(), 50, "{fin}");
        let (first, last) = (page[0], page[49]);
        let after = if pages.is_empty() {
            "-".to_owned()
        } else {
            last.to_string()
        };
        pages.push(page);
        if pages.len() == MESSAGES / 50 {
            assert_eq!(fin, format!("OK HISTORY alice 50 BEFORE - AFTER {after}"));
            break last;
        }
        assert_eq!(
            fin,
            format!("OK HISTORY alice 50 BEFORE {first} AFTER {after}")
        );
        query = format!("alice 50 BEFORE {first}");
    };
    let backward: Vec<u64> = pages.iter().rev().flatten().copied().collect();
    assert_eq!(backward, ids);

    let mut forward: Vec<u64> = pages.last().unwrap().clone();
    let mut cursor = oldest_after;
    loop {
        let (lines, fin) = bob.history(&format!("Alice 50 AFTER {cursor}"));
        let page: Vec<u64> = lines.iter().map(|l| parse_msg(l, "HISTORY").id).collect();
        assert_eq!(page.len(), 50, "{fin}");
        forward.extend(&page);
        let (first, last) = (page[0], page[49]);
        if forward.len() == MESSAGES {
            assert_eq!(fin, format!("OK HISTORY alice 50 BEFORE {first} AFTER -"));
            break;
        }
        assert_eq!(
            fin,
            format!("OK HISTORY alice 50 BEFORE {first} AFTER {last}")
        );
        cursor = last;
    }
    assert_eq!(forward, ids);
    // Past either end: nothing shown, and a cursor that pages back the other way from the
    // cursor given, that message included (spec: x+1 after AFTER x, x-1 after BEFORE x).
    let (first, last) = (ids[0], ids[MESSAGES - 1]);
    let (lines, fin) = bob.history(&format!("alice 50 AFTER {last}"));
    assert!(lines.is_empty());
    assert_eq!(
        fin,
        format!("OK HISTORY alice 0 BEFORE {} AFTER -", last + 1)
    );
    let (lines, _) = bob.history(&format!("alice 1 BEFORE {}", last + 1));
    assert_eq!(parse_msg(&lines[0], "HISTORY").id, last);
    let (lines, fin) = bob.history(&format!("alice 50 BEFORE {first}"));
    assert!(lines.is_empty());
    assert_eq!(
        fin,
        format!("OK HISTORY alice 0 BEFORE - AFTER {}", first - 1)
    );
    let (lines, _) = bob.history(&format!("alice 1 AFTER {}", first - 1));
    assert_eq!(parse_msg(&lines[0], "HISTORY").id, first);
    // The whole conversation in one page, the same from either side.
    let (all, fin) = alice.history("bob 500");
    assert_eq!(all.len(), MESSAGES);
    assert_eq!(fin, format!("OK HISTORY Bob {MESSAGES} BEFORE - AFTER -"));
    let texts: Vec<String> = all.iter().map(|l| parse_msg(l, "HISTORY").text).collect();
    assert_eq!(texts[MESSAGES - 1], format!("message {}", MESSAGES - 1));

    // The friend request made before the restart is waiting for carol.
    let mut carol = server.connect();
    assert_eq!(
        carol.login("carol"),
        ["FRIENDSHIP alice REQUESTED", "BACKLOG-END 0"]
    );
    assert_eq!(
        carol.call("FRIEND LIST"),
        ["FRIEND alice INCOMING", "OK FRIEND LIST 1"]
    );
    assert_eq!(
        alice.call("FRIEND LIST"),
        ["FRIEND carol OUTGOING", "OK FRIEND LIST 1"]
    );
    assert_eq!(carol.call1("FRIEND ACCEPT alice"), "OK FRIEND ACCEPT alice");
    assert_eq!(carol.sync(), ["PRESENCE alice ONLINE"]);
    assert_eq!(
        alice.sync(),
        ["FRIENDSHIP carol ACCEPTED", "PRESENCE carol ONLINE"]
    );

    // New messages get ids past every id of the first run.
    let new = alice.msg("bob", "after the restart");
    assert!(new > ids[MESSAGES - 1]);
    assert_eq!(parse_msg(&bob.sync()[0], "MESSAGE").id, new);
    let status = server.stop();
    assert!(status.success(), "exit status {status:?}");

    // ----- third run: the friendship, and an empty backlog, are still there -----
    let server = Server::start_on(&db, &[]);
    let mut carol = server.connect();
    assert_eq!(
        carol.login("carol"),
        ["PRESENCE alice OFFLINE", "BACKLOG-END 0"]
    );
    let mut bob = server.connect();
    assert_eq!(bob.login("bob"), ["BACKLOG-END 0"]);
    let (lines, fin) = bob.history("alice 1");
    assert_eq!(parse_msg(&lines[0], "HISTORY").id, new);
    assert_eq!(fin, format!("OK HISTORY alice 1 BEFORE {new} AFTER -"));
}

/// A graceful restart keeps the account's side too: device tokens and their revocation, blocks,
/// the direct-message setting, away messages, a changed password, a deleted account's retired
/// name, and the last-seen time of everyone who was online when the server stopped.
#[test]
fn a_restart_keeps_tokens_blocks_settings_and_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.redb");

    let server = Server::start_on(&db, &[]);
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    let mut carol = server.user("carol");
    let mut setup = server.connect();
    setup.register("dave");
    assert_eq!(alice.call1("FRIEND ADD bob"), "OK FRIEND ADD bob REQUESTED");
    assert_eq!(
        bob.call("FRIEND ACCEPT alice"),
        ["FRIENDSHIP alice REQUESTED", "OK FRIEND ACCEPT alice"]
    );
    bob.sync();
    alice.sync();
    let kept = alice.call1("TOKEN laptop");
    let kept = kept.split(' ').nth(3).unwrap().to_owned();
    let revoked = alice.call1("TOKEN phone");
    let revoked_id = revoked.split(' ').nth(2).unwrap().to_owned();
    let revoked = revoked.split(' ').nth(3).unwrap().to_owned();
    assert_eq!(
        alice.call1(&format!("REVOKE {revoked_id}")),
        "OK REVOKE 1 CLOSED 0"
    );
    assert_eq!(alice.call1("AWAY on a boat"), "OK AWAY SET");
    assert_eq!(bob.sync(), ["AWAY alice on a boat"]);
    assert_eq!(bob.call1("BLOCK carol"), "OK BLOCK carol");
    assert_eq!(bob.call1("DMS FRIENDS"), "OK DMS FRIENDS");
    assert_eq!(
        carol.call1(&format!("PASSWORD {PASSWORD} a-new-password")),
        "OK PASSWORD REVOKED 0 CLOSED 0"
    );
    let mut dave = server.connect();
    dave.login("dave");
    assert_eq!(
        dave.call1(&format!("UNREGISTER {PASSWORD}")),
        "OK UNREGISTER dave"
    );
    // alice is online when the server stops: her last seen is the stop.
    let status = server.stop();
    assert!(status.success(), "exit status {status:?}");

    let server = Server::start_on(&db, &[]);
    // alice's last seen is the moment the server stopped, shown to her friend bob.
    let mut bob = server.connect();
    bob.login("bob");
    let seen = bob.call1("WHOIS alice");
    let parts: Vec<&str> = seen.splitn(6, ' ').collect();
    assert_eq!(
        (parts[2], parts[3], parts[5]),
        ("alice", "OFFLINE", "on a boat"),
        "{seen}"
    );
    assert_ne!(parts[4], "-", "no last seen: {seen}");
    assert_eq!(bob.call1("DMS"), "OK DMS FRIENDS");
    assert_eq!(bob.call("BLOCKS"), ["BLOCKED carol", "OK BLOCKS 1"]);
    bob.expect("LOGOUT", "OK LOGOUT");

    let mut alice = server.connect();
    alice.send(&format!("RESUME {kept}"));
    assert_eq!(alice.read_line(), "OK RESUME alice");
    assert_eq!(
        alice.read_until(|l| l.starts_with("BACKLOG-END ")),
        [
            "AWAY alice on a boat",
            "PRESENCE bob OFFLINE",
            "BACKLOG-END 0"
        ]
    );
    let mut other = server.connect();
    other.expect_fail(&format!("RESUME {revoked}"), "RESUME", "BAD_TOKEN");
    other.expect_fail(
        &format!("LOGIN carol {PASSWORD}"),
        "LOGIN",
        "BAD_CREDENTIALS",
    );
    other.expect("LOGIN carol a-new-password", "OK LOGIN carol");
    other.read_until(|l| l.starts_with("BACKLOG-END "));
    other.expect_fail("MSG bob still blocked?", "MSG", "BLOCKED");
    other.expect("LOGOUT", "OK LOGOUT");
    other.expect_fail(
        &format!("REGISTER dave {PASSWORD}"),
        "REGISTER",
        "NAME_TAKEN",
    );
    let (tokens, fin) = (alice.call("TOKENS"), "OK TOKENS 1");
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens[0].ends_with(" CURRENT laptop"), "{tokens:?}");
    assert_eq!(tokens[1], fin);
}
