//! End-to-end chat over real TCP: several clients of the real binary send MSG, GROUP and ALL, list
//! USERS, use one account on two connections, label and pipeline their commands, half-close their
//! socket, and follow their friends' presence.

mod common;

use common::*;

#[test]
fn users_exchange_msg_group_and_all() {
    let server = Server::start();
    let mut alice = server.user("alice");
    let mut bob = server.user("bob");
    // Names are shown as registered, whatever case a command uses.
    let mut carol = server.user("Carol");
    let mut dave = server.connect();
    dave.register("dave");

    // MSG to an online user: delivered live, with the sender and the recipient as registered.
    let id1 = alice.msg("BOB", "hello bob");
    assert_eq!(
        alice.call1("MSG carol  two  spaces "),
        format!("OK MSG {} DELIVERED", id1 + 1)
    );
    let got = bob.sync();
    assert_eq!(got.len(), 1, "{got:?}");
    let m = parse_msg(&got[0], "MESSAGE");
    assert_eq!(
        (m.id, &*m.from, &*m.to, &*m.text),
        (id1, "alice", "bob", "hello bob")
    );
    // The text is everything after the single space that follows the name, spaces kept.
    let got = carol.sync();
    assert_eq!(got.len(), 1, "{got:?}");
    let m = parse_msg(&got[0], "MESSAGE");
    assert_eq!(
        (m.id, &*m.from, &*m.to, &*m.text),
        (id1 + 1, "alice", "Carol", " two  spaces ")
    );

    // MSG to an offline user is kept.
    assert_eq!(
        alice.call1("MSG dave are you there?"),
        format!("OK MSG {} KEPT", id1 + 2)
    );

    // GROUP: the online recipients get it live, the offline one later; everyone sees the list.
    let reply = bob.call1("GROUP alice,carol,DAVE lunch at noon");
    let gid = parse_ok_id(&reply, "GROUP");
    assert_eq!(reply, format!("OK GROUP {gid} DELIVERED 2 KEPT 1"));
    assert!(gid > id1 + 2);
    for c in [&mut alice, &mut carol] {
        let got = c.sync();
        assert_eq!(got.len(), 1, "{got:?}");
        let m = parse_msg(&got[0], "MESSAGE");
        assert_eq!(
            (m.id, &*m.from, &*m.to, &*m.text),
            (gid, "bob", "alice,Carol,dave", "lunch at noon")
        );
    }
    bob.expect_quiet();

    // ALL: every other online user, not the sender.
    let reply = carol.call1("ALL meeting moved to 3");
    let aid = parse_ok_id(&reply, "ALL");
    assert_eq!(reply, format!("OK ALL {aid} DELIVERED 2"));
    assert!(aid > gid);
    for c in [&mut alice, &mut bob] {
        let got = c.sync();
        assert_eq!(got.len(), 1, "{got:?}");
        let m = parse_msg(&got[0], "MESSAGE");
        assert_eq!(
            (m.id, &*m.from, &*m.to, &*m.text),
            (aid, "Carol", "*", "meeting moved to 3")
        );
    }
    carol.expect_quiet();

    // USERS: online accounts sorted case-insensitively; dave is not logged in.
    assert_eq!(
        alice.call("USERS"),
        ["USER alice", "USER bob", "USER Carol", "OK USERS 3"]
    );

    // dave's backlog at login: the MSG and the GROUP in id order, but not the ALL.
    let backlog = dave.login("dave");
    assert_eq!(backlog.len(), 3, "{backlog:?}");
    let (m1, m2) = (
        parse_msg(&backlog[0], "MESSAGE"),
        parse_msg(&backlog[1], "MESSAGE"),
    );
    assert_eq!((m1.id, &*m1.text), (id1 + 2, "are you there?"));
    assert_eq!((m2.id, &*m2.to), (gid, "alice,Carol,dave"));
    assert_eq!(backlog[2], "BACKLOG-END 2");

    // The ALL is in HISTORY *; the GROUP is in the sender-recipient conversation.
    let (lines, fin) = dave.history("*");
    assert_eq!(lines.len(), 1);
    assert_eq!(parse_msg(&lines[0], "HISTORY").id, aid);
    assert_eq!(fin, "OK HISTORY * 1 BEFORE - AFTER -");
    let (lines, fin) = dave.history("BOB");
    assert_eq!(lines.len(), 1);
    assert_eq!(parse_msg(&lines[0], "HISTORY").id, gid);
    assert_eq!(fin, "OK HISTORY bob 1 BEFORE - AFTER -");

    // Sending to yourself is allowed and delivered to yourself (the push may come before the
    // reply or after it).
    let mut got = dave.call("MSG dave note to self");
    let sid = parse_ok_id(&got.pop().unwrap(), "MSG");
    got.extend(dave.sync());
    assert_eq!(got.len(), 1, "{got:?}");
    let m = parse_msg(&got[0], "MESSAGE");
    assert_eq!((m.id, &*m.to, &*m.text), (sid, "dave", "note to self"));
}

#[test]
fn one_account_on_two_connections_receives_on_both() {
    let server = Server::start();
    let mut alice = server.user("alice");
    let mut bob1 = server.user("bob");
    let mut bob2 = server.connect();
    assert_eq!(bob2.login("bob"), ["BACKLOG-END 0"]);

    let id = alice.msg("bob", "to both");
    for b in [&mut bob1, &mut bob2] {
        let got = b.sync();
        assert_eq!(got.len(), 1, "{got:?}");
        let m = parse_msg(&got[0], "MESSAGE");
        assert_eq!((m.id, &*m.text), (id, "to both"));
    }
    // What one connection sends, the other does not echo.
    let id2 = bob1.msg("alice", "from bob1");
    assert_eq!(parse_msg(&alice.sync()[0], "MESSAGE").id, id2);
    bob2.expect_quiet();
    // An account is listed once however many connections it has.
    assert_eq!(bob2.call("USERS"), ["USER alice", "USER bob", "OK USERS 2"]);
    // ALL reaches every connection of every other account, and counts accounts.
    let reply = alice.call1("ALL hi all");
    assert_eq!(
        reply,
        format!("OK ALL {} DELIVERED 1", parse_ok_id(&reply, "ALL"))
    );
    assert_eq!(bob1.sync().len(), 1);
    assert_eq!(bob2.sync().len(), 1);
    // One connection logging out leaves the other receiving.
    bob1.expect("LOGOUT", "OK LOGOUT");
    let id3 = alice.msg("bob", "only bob2");
    assert_eq!(parse_msg(&bob2.sync()[0], "MESSAGE").id, id3);
    bob1.expect_quiet();
}

#[test]
fn labels_are_echoed_on_final_lines() {
    let server = Server::start();
    let mut alice = server.connect();
    alice.expect(
        &format!("@r1 REGISTER alice {PASSWORD}"),
        "OK @r1 REGISTER alice",
    );
    let lines = alice.call(&format!("@L-2 login ALICE {PASSWORD}"));
    assert_eq!(lines, ["OK @L-2 LOGIN alice"]);
    assert_eq!(alice.read_line(), "BACKLOG-END 0");
    let mut bob = server.user("bob");
    let reply = alice.call1("@7 MSG bob hi");
    let id = parse_ok_id(&reply, "MSG");
    assert_eq!(reply, format!("OK @7 MSG {id} DELIVERED"));
    assert_eq!(parse_msg(&bob.sync()[0], "MESSAGE").id, id);
    assert_eq!(
        alice.call("@a.b-c_9 PING tok"),
        ["PONG tok", "OK @a.b-c_9 PING"]
    );
    assert_eq!(
        alice.call("@u USERS"),
        ["USER alice", "USER bob", "OK @u USERS 2"]
    );
    let lines = alice.call("@h HISTORY BOB 1");
    assert_eq!(lines.len(), 2);
    assert_eq!(parse_msg(&lines[0], "HISTORY").id, id);
    assert_eq!(lines[1], "OK @h HISTORY bob 1 BEFORE - AFTER -");
    let fail = alice.call1("@x MSG nobody hi");
    assert!(fail.starts_with("FAIL @x MSG UNKNOWN_USER "), "{fail}");
    let fail = alice.call1("@x FROB");
    assert!(fail.starts_with("FAIL @x * UNKNOWN_COMMAND "), "{fail}");
    let max = "z".repeat(32);
    assert_eq!(
        alice.call(&format!("@{max} PING")),
        ["PONG", &format!("OK @{max} PING")]
    );
    alice.expect("@bye QUIT done", "OK @bye QUIT");
    assert!(alice.read_to_close().is_empty());
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let server = Server::start();
    let mut bob = server.user("bob");
    let mut alice = server.connect();
    // Everything in one write: REGISTER and LOGIN wait for password hashing, MSG and HISTORY for
    // the store, PING and failures are answered at once; the replies must still come in order.
    let n = 150;
    let mut batch = format!("@0 REGISTER alice {PASSWORD}\n@1 LOGIN alice {PASSWORD}\n");
    for i in 2..n {
        batch.push_str(&match i % 5 {
            0 => format!("@{i} MSG bob m{i}\n"),
            1 => format!("@{i} PING p{i}\n"),
            2 => format!("@{i} HISTORY bob 1\n"),
            3 => format!("@{i} MSG nobody m{i}\n"),
            _ => format!("@{i} USERS\n"),
        });
    }
    alice.send_raw(batch.as_bytes());
    let mut next = 0;
    let mut last_id = 0;
    let mut sent_ids = Vec::new();
    while next < n {
        let line = alice.read_line();
        if !is_final(&line) {
            continue;
        }
        assert_eq!(
            line.split(' ').nth(1),
            Some(&*format!("@{next}")),
            "expected the reply to @{next}: {line}"
        );
        match next % 5 {
            _ if next < 2 => assert!(line.starts_with("OK "), "{line}"),
            0 => {
                let id = parse_ok_id(&line, "MSG");
                assert!(id > last_id, "ids increase: {line}");
                last_id = id;
                sent_ids.push(id);
            }
            1 => assert_eq!(line, format!("OK @{next} PING")),
            2 => assert!(
                line.starts_with(&format!("OK @{next} HISTORY bob ")),
                "{line}"
            ),
            3 => assert!(
                line.starts_with(&format!("FAIL @{next} MSG UNKNOWN_USER ")),
                "{line}"
            ),
            _ => assert_eq!(line, format!("OK @{next} USERS 2")),
        }
        next += 1;
    }
    alice.expect_quiet();
    // bob got every message, in order.
    let got: Vec<u64> = bob
        .sync()
        .iter()
        .map(|l| parse_msg(l, "MESSAGE").id)
        .collect();
    assert_eq!(got, sent_ids);
}

#[test]
fn half_closed_client_gets_every_reply() {
    let server = Server::start();
    let mut bob = server.user("bob");
    // Like `printf '...' | nc`: commands, then the client's EOF, then it only reads. The last,
    // unterminated line is never executed.
    let mut c = server.connect();
    let script = format!(
        "REGISTER alice {PASSWORD}\nLOGIN alice {PASSWORD}\nMSG bob one\nMSG bob two\n\
         HISTORY bob\nPING last\nMSG bob never sent"
    );
    c.send_raw(script.as_bytes());
    c.shutdown_write();
    let lines = c.read_to_close();
    let finals: Vec<&String> = lines.iter().filter(|l| is_final(l)).collect();
    assert_eq!(finals.len(), 6, "{lines:?}");
    assert_eq!(finals[0], "OK REGISTER alice");
    assert_eq!(finals[1], "OK LOGIN alice");
    let one = parse_ok_id(finals[2], "MSG");
    assert_eq!(finals[3], &format!("OK MSG {} DELIVERED", one + 1));
    assert_eq!(finals[4], "OK HISTORY bob 2 BEFORE - AFTER -");
    assert_eq!(finals[5], "OK PING");
    assert_eq!(lines.last().unwrap(), "OK PING");
    assert!(lines.contains(&"PONG last".to_owned()));

    let texts: Vec<String> = bob
        .sync()
        .iter()
        .map(|l| parse_msg(l, "MESSAGE").text)
        .collect();
    assert_eq!(texts, ["one", "two"]);
    let (lines, _) = bob.history("alice");
    let texts: Vec<String> = lines.iter().map(|l| parse_msg(l, "HISTORY").text).collect();
    assert_eq!(texts, ["one", "two"]);
}

#[test]
fn friends_follow_each_others_presence_and_strangers_see_none() {
    let server = Server::start();
    let mut alice = server.user("alice");
    let mut stranger = server.user("stranger");
    let mut b = server.connect();
    b.register("Bob");

    // A request to someone offline is seen at their login, before the backlog ends.
    assert_eq!(alice.call1("FRIEND ADD bob"), "OK FRIEND ADD Bob REQUESTED");
    assert_eq!(
        alice.call("FRIEND LIST"),
        ["FRIEND Bob OUTGOING", "OK FRIEND LIST 1"]
    );
    assert_eq!(
        b.login("bob"),
        ["FRIENDSHIP alice REQUESTED", "BACKLOG-END 0"]
    );
    // Not friends yet: bob's login tells alice nothing.
    alice.expect_quiet();
    assert_eq!(
        b.call("FRIEND LIST"),
        ["FRIEND alice INCOMING", "OK FRIEND LIST 1"]
    );

    // Accepting: each learns the other's presence; alice is told of the acceptance.
    assert_eq!(b.call1("FRIEND ACCEPT ALICE"), "OK FRIEND ACCEPT alice");
    assert_eq!(b.sync(), ["PRESENCE alice ONLINE"]);
    assert_eq!(
        alice.sync(),
        ["FRIENDSHIP Bob ACCEPTED", "PRESENCE Bob ONLINE"]
    );
    assert_eq!(
        alice.call("FRIEND LIST"),
        ["FRIEND Bob ONLINE", "OK FRIEND LIST 1"]
    );

    // A second connection of bob is not news to alice, but it is told alice's presence.
    let mut b2 = server.connect();
    assert_eq!(b2.login("bob"), ["PRESENCE alice ONLINE", "BACKLOG-END 0"]);
    alice.expect_quiet();
    // Logging out of one of two connections: still online.
    b.expect("LOGOUT", "OK LOGOUT");
    alice.expect_quiet();
    // The last connection going away (a disconnect): alice is told.
    drop(b2);
    let seen = alice.read_until(|l| l.starts_with("PRESENCE "));
    assert_eq!(seen, ["PRESENCE Bob OFFLINE"]);
    // Login again: alice is told; bob learns alice is online.
    assert_eq!(b.login("bob"), ["PRESENCE alice ONLINE", "BACKLOG-END 0"]);
    assert_eq!(alice.sync(), ["PRESENCE Bob ONLINE"]);
    // LOGOUT of the last connection: alice is told by the time bob has its reply.
    b.expect("LOGOUT", "OK LOGOUT");
    assert_eq!(alice.sync(), ["PRESENCE Bob OFFLINE"]);
    // alice's own login lists her friends' presence.
    alice.expect("LOGOUT", "OK LOGOUT");
    assert_eq!(
        alice.login("alice"),
        ["PRESENCE Bob OFFLINE", "BACKLOG-END 0"]
    );
    b.login("bob");
    assert_eq!(alice.sync(), ["PRESENCE Bob ONLINE"]);

    // None of it reached the stranger.
    stranger.expect_quiet();

    // Ending the friendship ends the presence notices.
    assert_eq!(alice.call1("FRIEND REMOVE bob"), "OK FRIEND REMOVE Bob");
    assert_eq!(b.sync(), ["FRIENDSHIP alice REMOVED"]);
    b.expect("LOGOUT", "OK LOGOUT");
    alice.expect_quiet();

    // Deny and withdraw reach the other side too.
    assert_eq!(
        stranger.call1("FRIEND ADD alice"),
        "OK FRIEND ADD alice REQUESTED"
    );
    assert_eq!(alice.sync(), ["FRIENDSHIP stranger REQUESTED"]);
    assert_eq!(
        alice.call("FRIEND LIST"),
        ["FRIEND stranger INCOMING", "OK FRIEND LIST 1"]
    );
    assert_eq!(
        alice.call1("FRIEND DENY stranger"),
        "OK FRIEND DENY stranger"
    );
    assert_eq!(stranger.sync(), ["FRIENDSHIP alice DENIED"]);
    assert_eq!(
        stranger.call1("FRIEND ADD alice"),
        "OK FRIEND ADD alice REQUESTED"
    );
    assert_eq!(
        stranger.call1("FRIEND REMOVE alice"),
        "OK FRIEND REMOVE alice"
    );
    assert_eq!(
        alice.sync(),
        [
            "FRIENDSHIP stranger REQUESTED",
            "FRIENDSHIP stranger WITHDRAWN"
        ]
    );
    // Two requests meeting make friends at once.
    assert_eq!(
        stranger.call1("FRIEND ADD alice"),
        "OK FRIEND ADD alice REQUESTED"
    );
    assert_eq!(alice.sync(), ["FRIENDSHIP stranger REQUESTED"]);
    assert_eq!(
        alice.call1("FRIEND ADD stranger"),
        "OK FRIEND ADD stranger FRIENDS"
    );
    assert_eq!(alice.sync(), ["PRESENCE stranger ONLINE"]);
    assert_eq!(
        stranger.sync(),
        ["FRIENDSHIP alice ACCEPTED", "PRESENCE alice ONLINE"]
    );
}
