//! Several chatd nodes as one server (`--cluster`): a real NATS server with JetStream on loopback
//! and three real chatd nodes.
//!
//! The failures guarded against: a name registered twice when two nodes race for it; a message
//! that reaches a user on another node late, twice, under another id, or not at all; a history or
//! a backlog that differs depending on the node asked; an acknowledged message lost when the node
//! that acknowledged it is killed; a node that drops its clients, or acknowledges writes it
//! could not make, while NATS is unreachable; a message sent to nodes that hold none of its
//! recipients; a node that starts without knowing who is online; and a killed node's users
//! shown online for ever.
//!
//! The tests need `nats-server` (Debian's package `nats-server`, which `scripts/test` installs when
//! it runs as root). Without it each test prints why it was skipped and passes.
//!
//! Nodes learn of each other's writes through the log, asynchronously. A test never sleeps for
//! that: it waits for a line (bounded by the harness's timeout), or uses [`Node::barrier`], a write
//! on the node whose acknowledgement means the node has applied every entry before it.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The operator account every node names (`--admin`).
const ADMIN: &str = "root";

/// A `nats-server` with JetStream, on a free loopback port, storing into a temporary directory.
struct Nats {
    child: Option<Child>,
    port: u16,
    /// The monitoring endpoint's port (`-m`): `/connz?subs=1` shows each node's subscriptions.
    monitor: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Whether `nats-server` can be run; prints why not.
fn have_nats(test: &str) -> bool {
    match Command::new("nats-server").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!(
                "SKIPPED {test}: nats-server is not installed (Debian: apt-get install nats-server; \
                 scripts/test installs it when run as root)"
            );
            false
        }
    }
}

impl Nats {
    fn start() -> Nats {
        let tmp = tempfile::tempdir().expect("temporary directory");
        // Both listeners are held until both ports are picked, so that they differ.
        let listeners: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("a free port").port())
            .collect();
        drop(listeners);
        let dir = tmp.path().join("js");
        let mut n = Nats {
            child: None,
            port: ports[0],
            monitor: ports[1],
            dir,
            _tmp: tmp,
        };
        n.run();
        n
    }

    /// Starts the server (again) on the same port and store directory, and waits until it accepts
    /// connections.
    fn run(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the NATS server.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A chatd node of the cluster, with a connection kept for barriers.
struct Node {
    server: Server,
    sync: Client,
}

impl Node {
    fn start(nats: &Nats, dir: &Path, i: usize) -> Node {
        let db = dir.join(format!("node{i}.redb"));
        // Every node names the operator, whose account `chatd adduser --cluster` makes (manual
        // 17.4).
        let url = nats.url();
        let args = ["--cluster", url.as_str(), "--admin", ADMIN];
        let server = Server::start_on(&db, &args);
        let mut sync = server.connect();
        let name = unique("sync");
        sync.register(&name);
        sync.login(&name);
        Node { server, sync }
    }

    /// A write on this node: once it is acknowledged, the node has applied (and its core has
    /// taken in) every entry the log held before it.
    fn barrier(&mut self) {
        // Pushes (an ALL) may come before the answer; they are not this connection's concern.
        self.sync.send(&format!("AWAY {}", unique("b")));
        let lines = self.sync.read_until(is_final);
        let reply = lines.last().unwrap();
        assert!(reply.starts_with("OK AWAY"), "{reply}");
    }

    fn connect(&self) -> Client {
        self.server.connect()
    }
}

/// `chatd adduser --cluster` of `name` with the password [`PASSWORD`], to the end.
fn adduser_in(nats: &Nats, name: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args([
            "adduser",
            "--scrypt-log-n",
            "4",
            "--cluster",
            &nats.url(),
            name,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chatd adduser");
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    child.wait_with_output().unwrap()
}

/// A NATS server and three nodes.
fn cluster(dir: &Path) -> (Nats, Vec<Node>) {
    let nats = Nats::start();
    let nodes = (0..3).map(|i| Node::start(&nats, dir, i)).collect();
    (nats, nodes)
}

/// Logs in as `name` on `node`, after a barrier so that the node knows the account.
fn login_on(node: &mut Node, name: &str) -> (Client, Vec<String>) {
    node.barrier();
    let mut c = node.connect();
    let pushed = c.login(name);
    (c, pushed)
}

/// `MESSAGE <id> ...` lines as (id, the rest).
fn messages(lines: &[String]) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("MESSAGE "))
        .map(|l| {
            let (id, rest) = l.split_once(' ').unwrap();
            (id.parse().unwrap(), rest.to_owned())
        })
        .collect()
}

/// Reads until a MESSAGE line with `text` and returns its id.
fn wait_message(c: &mut Client, text: &str) -> u64 {
    let lines = c.read_until(|l| l.starts_with("MESSAGE ") && l.ends_with(text));
    messages(&lines).last().unwrap().0
}

#[test]
fn a_register_race_on_two_nodes_has_exactly_one_winner() {
    if !have_nats("a_register_race_on_two_nodes_has_exactly_one_winner") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut nodes) = cluster(dir.path());
    let mut a = nodes[0].connect();
    let mut b = nodes[1].connect();
    for _ in 0..10 {
        let name = unique("race");
        // Both are sent before either answer is read: the two nodes check their memory at the
        // same time and both find the name free.
        a.send(&format!("REGISTER {name} {PASSWORD}"));
        b.send(&format!("REGISTER {name} other-password"));
        let ra = a.read_line();
        let rb = b.read_line();
        let ok = format!("OK REGISTER {name}");
        let wins = [&ra, &rb].iter().filter(|r| ***r == ok).count();
        let taken = [&ra, &rb]
            .iter()
            .filter(|r| r.starts_with("FAIL REGISTER NAME_TAKEN "))
            .count();
        assert_eq!((wins, taken), (1, 1), "{ra} / {rb}");
        // The third node knows the winner's password, and only it.
        let password = if ra == ok { PASSWORD } else { "other-password" };
        nodes[2].barrier();
        let mut c = nodes[2].connect();
        let reply = c.call1(&format!("LOGIN {name} {password}"));
        assert!(reply.starts_with("OK LOGIN"), "{reply}");
    }
}

#[test]
fn a_room_name_created_on_two_nodes_at_once_is_one_room() {
    if !have_nats("a_room_name_created_on_two_nodes_at_once_is_one_room") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut nodes) = cluster(dir.path());
    let [alice, bob, carol] = [unique("alice"), unique("bob"), unique("carol")];
    for (i, n) in [&alice, &bob, &carol].iter().enumerate() {
        nodes[i].connect().register(n);
    }
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b, _) = login_on(&mut nodes[1], &bob);
    // An onlooker on every node, who is in none of the rooms.
    let mut onlookers: Vec<Client> = (0..3).map(|i| login_on(&mut nodes[i], &carol).0).collect();
    let rounds = 12;
    for round in 0..rounds {
        let room = format!("#{}", unique("race"));
        // Both are sent before either answer is read: each node finds the name free. A message
        // follows each JOIN at once: it is for the room the JOIN answers.
        a.send(&format!("JOIN {room}"));
        b.send(&format!("JOIN {room}"));
        a.send(&format!("MSG {room} from alice {round}"));
        b.send(&format!("MSG {room} from bob {round}"));
        let ra = a.read_until(|l| l.starts_with("OK JOIN ") || l.starts_with("FAIL "));
        let rb = b.read_until(|l| l.starts_with("OK JOIN ") || l.starts_with("FAIL "));
        let (ra, rb) = (ra.last().unwrap(), rb.last().unwrap());
        for m in [&mut a, &mut b] {
            let sent = m.read_until(|l| l.starts_with("OK MSG ") || l.starts_with("FAIL "));
            assert!(sent.last().unwrap().starts_with("OK MSG "), "{sent:?}");
        }
        // One created the room; the other joined it, as a JOIN of an existing room.
        let mut outcomes = [ra.as_str(), rb.as_str()];
        outcomes.sort_unstable();
        assert_eq!(
            outcomes,
            [
                format!("OK JOIN {room} CREATED").as_str(),
                format!("OK JOIN {room} JOINED").as_str()
            ],
            "round {round}"
        );
        let owner = if ra.ends_with("CREATED") {
            &alice
        } else {
            &bob
        };
        // Every node shows one room of that name, with both members and one owner: the same.
        let mut seen = Vec::new();
        for (i, o) in onlookers.iter_mut().enumerate() {
            nodes[i].barrier();
            let listed: Vec<String> = o
                .call("ROOMS")
                .into_iter()
                .filter(|l| l.split(' ').nth(1) == Some(room.as_str()))
                .collect();
            assert_eq!(listed.len(), 1, "node {i}, round {round}: {listed:?}");
            let info = o.call(&format!("ROOM INFO {room}"));
            // Whether a member is online is presence, which travels apart from the log.
            let members: Vec<String> = o
                .call(&format!("MEMBERS {room}"))
                .into_iter()
                .map(|l| l.replace(" ONLINE", "").replace(" OFFLINE", ""))
                .collect();
            seen.push((listed, info, members));
        }
        let members = &seen[0].2;
        assert_eq!(members.len(), 3, "{members:?}");
        assert_eq!(members[0], format!("MEMBER {room} {owner} OWNER"));
        assert_eq!(
            members.iter().filter(|l| l.ends_with(" OWNER")).count(),
            1,
            "{members:?}"
        );
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "round {round}: {seen:?}"
        );
        // Both messages are in that room, and its history is the same from both nodes.
        let mut pages = Vec::new();
        for (m, node) in [(&mut a, 0), (&mut b, 1)] {
            nodes[node].barrier();
            m.sync();
            pages.push(m.history(&format!("{room} 10")).0);
        }
        assert_eq!(pages[0].len(), 2, "round {round}: {pages:?}");
        assert_eq!(pages[0], pages[1], "round {round}");
    }
    // How many rounds were a race that the log decided (the loser's node logs it).
    let lost = nodes
        .iter()
        .flat_map(|n| n.server.log())
        .filter(|l| l.contains("was created on another node first;"))
        .count();
    println!("{lost} of {rounds} rounds were decided by the log");
}

#[test]
fn a_join_on_one_node_as_the_room_is_deleted_on_another_is_told_the_truth() {
    if !have_nats("a_join_on_one_node_as_the_room_is_deleted_on_another_is_told_the_truth") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut nodes) = cluster(dir.path());
    let [alice, bob, carol] = [unique("alice"), unique("bob"), unique("carol")];
    for (i, n) in [&alice, &bob, &carol].iter().enumerate() {
        nodes[i].connect().register(n);
    }
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b, _) = login_on(&mut nodes[1], &bob);
    let mut onlookers: Vec<Client> = (0..3).map(|i| login_on(&mut nodes[i], &carol).0).collect();
    let mut outcomes = BTreeMap::new();
    for round in 0..10 {
        let room = format!("#{}", unique("gone"));
        let made = a.call(&format!("JOIN {room}"));
        assert!(made.last().unwrap().ends_with(" CREATED"), "{made:?}");
        nodes[1].barrier();
        // Sent together: bob's node may take the JOIN before it learns of the deletion.
        a.send(&format!("ROOM DELETE {room}"));
        b.send(&format!("JOIN {room}"));
        let deleted = a.read_until(|l| l.starts_with("OK ROOM ") || l.starts_with("FAIL "));
        assert_eq!(deleted.last().unwrap(), &format!("OK ROOM DELETE {room}"));
        let lines = b.read_until(|l| l.starts_with("OK JOIN ") || l.starts_with("FAIL "));
        let joined = lines.last().unwrap().clone();
        // Either bob joined before the deletion, and, a member then, is told of it; or the name
        // was free when his JOIN reached the log, and he made a new room of it.
        let members: Vec<String> = if joined == format!("OK JOIN {room} JOINED") {
            // (The deletion may reach bob's node with his JOIN's own commit, and be told first.)
            let told = format!("DELETED {room} {alice}");
            if !lines.contains(&told) {
                b.read_until(|l| *l == told);
            }
            vec![]
        } else {
            assert_eq!(joined, format!("OK JOIN {room} CREATED"), "round {round}");
            vec![
                format!("MEMBER {room} {bob} OWNER"),
                format!("OK MEMBERS {room} 1"),
            ]
        };
        *outcomes
            .entry(joined.rsplit(' ').next().unwrap().to_owned())
            .or_insert(0) += 1;
        // Every node agrees.
        for (i, o) in onlookers.iter_mut().enumerate() {
            nodes[i].barrier();
            let seen: Vec<String> = o
                .call(&format!("MEMBERS {room}"))
                .into_iter()
                .map(|l| l.replace(" ONLINE", "").replace(" OFFLINE", ""))
                .collect();
            if members.is_empty() {
                assert!(
                    seen.len() == 1 && seen[0].starts_with("FAIL MEMBERS NO_SUCH_ROOM"),
                    "node {i}, round {round}: {seen:?}"
                );
            } else {
                assert_eq!(seen, members, "node {i}, round {round}");
            }
        }
        if !members.is_empty() {
            let reply = b.call1(&format!("ROOM DELETE {room}"));
            assert_eq!(reply, format!("OK ROOM DELETE {room}"));
        }
    }
    println!("bob's JOINs: {outcomes:?}");
}

#[test]
fn two_owners_deleting_one_room_on_two_nodes_at_once_delete_it_once() {
    if !have_nats("two_owners_deleting_one_room_on_two_nodes_at_once_delete_it_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut nodes) = cluster(dir.path());
    let [alice, bob, carol] = [unique("alice"), unique("bob"), unique("carol")];
    for (i, n) in [&alice, &bob, &carol].iter().enumerate() {
        nodes[i].connect().register(n);
    }
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b, _) = login_on(&mut nodes[1], &bob);
    let (mut c, _) = login_on(&mut nodes[2], &carol);
    let final_line = |l: &str| l.starts_with("OK ROOM ") || l.starts_with("FAIL ");
    let mut firsts = BTreeMap::new();
    for round in 0..8 {
        let room = format!("#{}", unique("twice"));
        let made = a.call(&format!("JOIN {room}"));
        assert!(made.last().unwrap().ends_with(" CREATED"), "{made:?}");
        for (m, node) in [(&mut b, 1), (&mut c, 2)] {
            nodes[node].barrier();
            let joined = m.call(&format!("JOIN {room}"));
            assert!(joined.last().unwrap().ends_with(" JOINED"), "{joined:?}");
        }
        // Node 0 must have applied bob's JOIN (made on node 1) before alice names him.
        nodes[0].barrier();
        let made_owner = a.call(&format!("ROLE {room} {bob} OWNER"));
        assert!(
            made_owner.last().unwrap().starts_with("OK ROLE"),
            "{made_owner:?}"
        );
        nodes[1].barrier();
        b.sync();
        a.send(&format!("ROOM DELETE {room}"));
        b.send(&format!("ROOM DELETE {room}"));
        let answers = [
            a.read_until(final_line).pop().unwrap(),
            b.read_until(final_line).pop().unwrap(),
        ];
        // One deletes it; the other finds it gone, whichever node learned of the first when.
        let ok = format!("OK ROOM DELETE {room}");
        let oks = answers.iter().filter(|l| **l == ok).count();
        let gone = answers
            .iter()
            .filter(|l| l.starts_with("FAIL ROOM NO_SUCH_ROOM "))
            .count();
        assert_eq!((oks, gone), (1, 1), "round {round}: {answers:?}");
        // The member on the third node is told once, by the owner whose deletion took effect.
        let by = if answers[0] == ok { &alice } else { &bob };
        *firsts.entry(by == &alice).or_insert(0) += 1;
        nodes[2].barrier();
        let told: Vec<String> = c
            .sync()
            .into_iter()
            .filter(|l| l.starts_with("DELETED "))
            .collect();
        assert_eq!(told, [format!("DELETED {room} {by}")], "round {round}");
    }
    println!("rounds won by the owner on node 0 (true) and on node 1 (false): {firsts:?}");
}

#[test]
fn msg_group_and_all_cross_nodes_with_one_id_and_one_history_even_after_a_restart() {
    if !have_nats("msg_group_and_all_cross_nodes_with_one_id_and_one_history_even_after_a_restart")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut nats, mut nodes) = cluster(dir.path());
    let [alice, bob, carol] = [unique("alice"), unique("bob"), unique("carol")];
    for (i, n) in [&alice, &bob, &carol].iter().enumerate() {
        let mut c = nodes[i].connect();
        c.register(n);
    }
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b, _) = login_on(&mut nodes[1], &bob);
    let (mut c, _) = login_on(&mut nodes[2], &carol);

    // MSG from node 0 to node 1, and back.
    let id1 = a.msg(&bob, "hello from node zero");
    assert_eq!(wait_message(&mut b, "hello from node zero"), id1);
    let id2 = b.msg(&alice, "hello from node one");
    assert!(id2 > id1, "ids increase across nodes: {id1} then {id2}");
    assert_eq!(wait_message(&mut a, "hello from node one"), id2);

    // GROUP from node 2 reaches both other nodes with the same id.
    let reply = c.call1(&format!("GROUP {alice},{bob} to the group"));
    assert!(reply.starts_with("OK GROUP "), "{reply}");
    let gid: u64 = reply.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(wait_message(&mut a, "to the group"), gid);
    assert_eq!(wait_message(&mut b, "to the group"), gid);

    // ALL from node 1 reaches the users on the other nodes.
    let reply = b.call1("ALL to everyone");
    assert!(reply.starts_with("OK ALL "), "{reply}");
    let aid: u64 = reply.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(wait_message(&mut a, "to everyone"), aid);
    assert_eq!(wait_message(&mut c, "to everyone"), aid);
    assert!(id1 < id2 && id2 < gid && gid < aid);

    // Nothing arrives twice.
    for (client, node) in [(&mut a, 0), (&mut b, 1), (&mut c, 2)] {
        nodes[node].barrier();
        let extra = messages(&client.sync());
        assert!(extra.is_empty(), "node {node}: {extra:?}");
    }

    // HISTORY of one conversation is the same from every node.
    let mut pages = Vec::new();
    for node in nodes.iter_mut() {
        let (mut h, _) = login_on(node, &alice);
        let (lines, fin) = h.history(&format!("{bob} 50"));
        pages.push((lines, fin));
    }
    assert_eq!(pages[0].0.len(), 2, "{:?}", pages[0]);
    assert!(pages.iter().all(|p| *p == pages[0]), "{pages:?}");

    // Restart everything and compare: every node and the NATS server stop, and start again on
    // the same storage; each node then shows the same history and knows the same accounts.
    drop((a, b, c));
    for n in nodes.drain(..) {
        let status = n.server.stop();
        assert!(status.success(), "a node stopped with {status}");
    }
    nats.kill();
    nats.run();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::start(&nats, dir.path(), i)).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        for who in [&alice, &bob, &carol] {
            // LOGIN checks the password against the account as it was before the restart.
            let (mut h, _) = login_on(node, who);
            if who == &alice {
                let page = h.history(&format!("{bob} 50"));
                assert_eq!(page, pages[0], "node {i} after the restart");
            }
        }
    }
    println!("after the restart, every node shows: {:?}", pages[0]);
    // The ids go on from where they were.
    let (mut a, _) = login_on(&mut nodes[2], &alice);
    let after = a.msg(&bob, "after the restart");
    assert!(after > aid, "{after} after {aid}");
}

#[test]
fn a_backlog_kept_on_one_node_is_delivered_on_another() {
    if !have_nats("a_backlog_kept_on_one_node_is_delivered_on_another") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut nodes) = cluster(dir.path());
    let [alice, bob] = [unique("alice"), unique("bob")];
    nodes[0].connect().register(&alice);
    nodes[1].connect().register(&bob);
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    nodes[0].barrier();
    let ids: Vec<u64> = (0..5).map(|i| a.msg(&bob, &format!("kept {i}"))).collect();
    assert!(a.call1(&format!("MSG {bob} one more")).ends_with("KEPT"));
    let (_, pushed) = login_on(&mut nodes[2], &bob);
    let got: Vec<u64> = messages(&pushed).iter().map(|(id, _)| *id).collect();
    assert_eq!(&got[..5], &ids[..], "{pushed:?}");
    assert_eq!(got.len(), 6);
    // Delivered once: a second login anywhere has nothing waiting.
    let (_, again) = login_on(&mut nodes[1], &bob);
    assert_eq!(again, vec!["BACKLOG-END 0".to_owned()]);
}

/// The subscriptions of each chatd node's NATS connection (one per node), read from the NATS
/// server's monitoring endpoint (`/connz?subs=1`).
fn node_subscriptions(nats: &Nats) -> Vec<Vec<String>> {
    let body = http_get(nats.monitor, "/connz?subs=1").expect("the NATS monitoring endpoint");
    body.split("\"cid\":")
        .skip(1)
        .filter(|c| c.contains("\"name\": \"chatd "))
        .map(|c| {
            let Some(at) = c.find("\"subscriptions_list\":") else {
                return Vec::new();
            };
            let list = &c[at..];
            let (open, close) = (list.find('[').unwrap(), list.find(']').unwrap());
            list[open + 1..close]
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .collect()
}

/// How many nodes subscribe to a subject matching `pick`, read until it is `want` (a node's
/// subscriptions reach NATS a moment after the login or the JOIN that makes them; bounded by
/// the harness's timeout).
fn wait_subscribed(nats: &Nats, what: &str, pick: impl Fn(&str) -> bool, want: usize) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let subs = node_subscriptions(nats);
        let n = subs.iter().filter(|s| s.iter().any(|x| pick(x))).count();
        if n == want {
            println!("{what}: {n} node(s) subscribed");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} node(s) subscribed, not {want}: {subs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks `USERS` on `c`'s node until `name` is not in it (bounded by the harness's timeout).
fn wait_offline(c: &mut Client, name: &str) {
    let deadline = Instant::now() + TIMEOUT;
    let line = format!("USER {name}");
    loop {
        let users = c.call("USERS");
        if !users.contains(&line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still online on this node: {users:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn messages_are_routed_only_to_the_nodes_holding_their_recipients() {
    if !have_nats("messages_are_routed_only_to_the_nodes_holding_their_recipients") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (nats, mut nodes) = cluster(dir.path());
    let [alice, bob] = [unique("alice"), unique("bob")];
    nodes[0].connect().register(&alice);
    nodes[1].connect().register(&bob);
    let bob_subject = format!("chatd.to.{bob}");
    let is_bob = |s: &str| s == bob_subject;
    let is_room = |s: &str| s.starts_with("chatd.room.");
    wait_subscribed(&nats, "bob, offline", is_bob, 0);
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b1, _) = login_on(&mut nodes[1], &bob);
    // Only node 1 holds bob: only node 1 receives his subject.
    wait_subscribed(&nats, "bob on node 1", is_bob, 1);
    let id = a.msg(&bob, "one");
    assert_eq!(wait_message(&mut b1, "one"), id);
    // bob on nodes 1 and 2: both receive it, each connection once.
    let (mut b2, _) = login_on(&mut nodes[2], &bob);
    wait_subscribed(&nats, "bob on nodes 1 and 2", is_bob, 2);
    let id = a.msg(&bob, "two");
    assert_eq!(wait_message(&mut b1, "two"), id);
    assert_eq!(wait_message(&mut b2, "two"), id);
    // bob leaves node 1: node 1 stops receiving his messages.
    b1.expect("QUIT", "OK QUIT");
    wait_subscribed(&nats, "bob on node 2", is_bob, 1);
    let reply = a.call1(&format!("MSG {bob} three"));
    assert!(reply.ends_with(" DELIVERED"), "{reply}");
    let id3: u64 = reply.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(wait_message(&mut b2, "three"), id3);

    // A room is received by the nodes where a member is online: nodes 0 and 2.
    let room = format!("#{}", unique("r"));
    let joined = a.call(&format!("JOIN {room}"));
    assert!(joined.last().unwrap().starts_with("OK JOIN"), "{joined:?}");
    wait_subscribed(&nats, "the room, alice on node 0", is_room, 1);
    nodes[2].barrier();
    let joined = b2.call(&format!("JOIN {room}"));
    assert!(joined.last().unwrap().starts_with("OK JOIN"), "{joined:?}");
    assert_eq!(a.read_line(), format!("JOINED {room} {bob}"));
    wait_subscribed(&nats, "the room, bob on node 2", is_room, 2);
    let reply = a.call1(&format!("MSG {room} to the room"));
    assert!(reply.starts_with("OK MSG "), "{reply}");
    let rid: u64 = reply.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(wait_message(&mut b2, "to the room"), rid);

    // Nothing came twice.
    nodes[2].barrier();
    let extra = messages(&b2.sync());
    assert!(extra.is_empty(), "{extra:?}");

    // bob's last connection goes: no node receives his subject, and node 2 stops receiving the
    // room; a message to him is kept, and given at his next login, once.
    b2.expect("QUIT", "OK QUIT");
    wait_subscribed(&nats, "bob offline again", is_bob, 0);
    wait_subscribed(&nats, "the room, alice only", is_room, 1);
    // Node 0 learns that he left through the presence bucket, a moment after NATS drops node 2's
    // subscription; until then a message to him is answered DELIVERED (and kept all the same).
    wait_offline(&mut a, &bob);
    let reply = a.call1(&format!("MSG {bob} four"));
    assert!(reply.ends_with(" KEPT"), "{reply}");
    let (_, pushed) = login_on(&mut nodes[1], &bob);
    let got = messages(&pushed);
    assert_eq!(got.len(), 1, "{pushed:?}");
    assert!(
        got[0].1.ends_with(&format!("{alice} {bob} four")),
        "{pushed:?}"
    );
}

#[test]
fn killing_a_node_under_load_loses_no_acknowledged_message() {
    if !have_nats("killing_a_node_under_load_loses_no_acknowledged_message") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut nodes) = cluster(dir.path());
    let victim = nodes.remove(0);
    let target = unique("target");
    nodes[0].connect().register(&target);
    let senders: Vec<String> = (0..3).map(|_| unique("sender")).collect();
    let mut threads = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel::<(String, u64, String)>();
    for s in &senders {
        let mut c = victim.connect();
        c.register(s);
        c.login(s);
        let (s, target, tx) = (s.clone(), target.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            // Bounded: at most 2000 messages each; the node dies long before.
            for i in 0..2000 {
                let text = format!("{s} load {i}");
                c.send(&format!("MSG {target} {text}"));
                match c.next_line() {
                    Some(l) if l.starts_with("OK MSG ") => {
                        let id = l.split(' ').nth(2).unwrap().parse().unwrap();
                        if tx.send((s.clone(), id, text)).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(tx);
    // Kill once some messages are acknowledged.
    let mut acked = BTreeMap::new();
    while acked.len() < 60 {
        let (s, id, text) = rx
            .recv_timeout(TIMEOUT)
            .expect("acknowledgements under load");
        acked.insert(id, (s, text));
    }
    victim.server.crash();
    for (s, id, text) in rx.iter() {
        acked.insert(id, (s, text));
    }
    for t in threads {
        t.join().unwrap();
    }
    // The target logs in on a surviving node and finds every acknowledged message in its
    // backlog, under the id its OK gave.
    let (_, pushed) = login_on(&mut nodes[1], &target);
    let got: BTreeMap<u64, String> = messages(&pushed).into_iter().collect();
    for (id, (s, text)) in &acked {
        let line = got
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged message {id} lost"));
        assert!(
            line.contains(&format!(" {s} ")) && line.ends_with(text.as_str()),
            "{line}"
        );
    }
    // The senders log in on another node: they are known, and their history holds the same.
    let (mut s0, _) = login_on(&mut nodes[0], &senders[0]);
    let (lines, _) = s0.history(&format!("{target} 500"));
    let mine = acked.values().filter(|(s, _)| *s == senders[0]).count();
    assert!(lines.len() >= mine, "{} < {mine}", lines.len());
}

#[test]
fn with_nats_unreachable_writes_are_refused_and_connections_stay() {
    if !have_nats("with_nats_unreachable_writes_are_refused_and_connections_stay") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut nats, mut nodes) = cluster(dir.path());
    let [alice, bob] = [unique("alice"), unique("bob")];
    nodes[0].connect().register(&alice);
    nodes[0].connect().register(&bob);
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b, _) = login_on(&mut nodes[1], &bob);
    let before = a.msg(&bob, "before the outage");
    assert_eq!(wait_message(&mut b, "before the outage"), before);

    nats.kill();
    // The first write waits for NATS (its publish times out); from then on the node knows, and
    // refuses new writes at once with STORAGE_UNAVAILABLE.
    a.send(&format!("MSG {bob} during the outage"));
    let deadline = Instant::now() + 3 * TIMEOUT;
    while !nodes[0]
        .server
        .log()
        .iter()
        .any(|l| l.contains("writes to the database are failing"))
    {
        assert!(
            Instant::now() < deadline,
            "the node never noticed NATS was gone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut other = nodes[0].connect();
    other.expect_fail(
        &format!("REGISTER {} {PASSWORD}", unique("late")),
        "REGISTER",
        "STORAGE_UNAVAILABLE",
    );
    // Connections stay and answer.
    let mut b2 = nodes[0].connect();
    b2.sync();

    nats.run();
    // The waiting MSG is made once NATS is back, and acknowledged once.
    let reply = a.read_line();
    assert!(reply.starts_with("OK MSG "), "{reply}");
    let during = reply.split(' ').nth(2).unwrap().parse::<u64>().unwrap();
    assert!(during > before);
    assert_eq!(wait_message(&mut b, "during the outage"), during);
    let after = a.msg(&bob, "after the outage");
    assert!(after > during);
    assert!(messages(&a.sync()).is_empty());
}

/// alice logged in on node 0 and bob on node 1, made friends: alice's request made on node 0, bob
/// told of it on node 1 and accepting it there. The pushes of the acceptance are left unread.
fn friends_across(nodes: &mut [Node]) -> (String, String, Client, Client) {
    let [alice, bob] = [unique("alice"), unique("bob")];
    nodes[0].connect().register(&alice);
    nodes[1].connect().register(&bob);
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b, _) = login_on(&mut nodes[1], &bob);
    assert!(a
        .call1(&format!("FRIEND ADD {bob}"))
        .starts_with("OK FRIEND ADD"));
    assert_eq!(b.read_line(), format!("FRIENDSHIP {alice} REQUESTED"));
    let reply = b.call(&format!("FRIEND ACCEPT {alice}"));
    assert!(
        reply.iter().any(|l| l.starts_with("OK FRIEND ACCEPT")),
        "{reply:?}"
    );
    (alice, bob, a, b)
}

#[test]
fn friends_and_presence_cross_nodes() {
    if !have_nats("friends_and_presence_cross_nodes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut nodes) = cluster(dir.path());
    let (alice, bob, mut a, mut b) = friends_across(&mut nodes);
    // bob sees alice online, though on another node.
    assert_eq!(b.read_line(), format!("PRESENCE {alice} ONLINE"));
    // alice, on node 0, is told her request was accepted on node 1, and that bob is online.
    let told = a.read_until(|l| *l == format!("PRESENCE {bob} ONLINE"));
    println!("alice was told on node 0: {told:?}");
    assert_eq!(
        told,
        [
            format!("FRIENDSHIP {bob} ACCEPTED"),
            format!("PRESENCE {bob} ONLINE")
        ]
    );
    // Node 0 has applied the friendship before bob leaves (presence travels beside the log, so
    // a node learns of a friendship and of a presence change in either order).
    nodes[0].barrier();
    // bob leaves node 1: alice, on node 0, is told; he comes back on node 2: told again.
    b.expect("QUIT", "OK QUIT");
    a.read_until(|l| *l == format!("PRESENCE {bob} OFFLINE"));
    let (mut b2, _) = login_on(&mut nodes[2], &bob);
    a.read_until(|l| *l == format!("PRESENCE {bob} ONLINE"));
    // An away message set on node 0 is told to the friend on node 2.
    assert!(a.call1("AWAY at lunch").starts_with("OK AWAY"));
    assert_eq!(b2.read_line(), format!("AWAY {alice} at lunch"));
    // A message to him, online on another node, is delivered there.
    let reply = a.call1(&format!("MSG {bob} are you there"));
    assert!(reply.ends_with(" DELIVERED"), "{reply}");
    // Ending the friendship on node 0 is told to bob on node 2.
    wait_message(&mut b2, "are you there");
    assert!(a
        .call1(&format!("FRIEND REMOVE {bob}"))
        .starts_with("OK FRIEND REMOVE"));
    assert_eq!(b2.read_line(), format!("FRIENDSHIP {alice} REMOVED"));
    // A password changed on node 0 closes alice's connection on node 1, as it closes her others
    // on node 0.
    nodes[1].barrier();
    let (mut a1, _) = login_on(&mut nodes[1], &alice);
    nodes[0].barrier();
    let reply = a.call1(&format!("PASSWORD {PASSWORD} another-horse"));
    assert!(reply.starts_with("OK PASSWORD"), "{reply}");
    let closed = a1.read_to_close();
    println!("alice's connection on node 1 read: {closed:?}");
    assert!(
        closed.last().is_some_and(|l| l.starts_with("BYE REVOKED")),
        "{closed:?}"
    );
}

#[test]
fn presence_is_read_at_once_by_a_node_that_starts_later_and_a_killed_nodes_users_go_offline() {
    if !have_nats(
        "presence_is_read_at_once_by_a_node_that_starts_later_and_a_killed_nodes_users_go_offline",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (nats, mut nodes) = cluster(dir.path());
    let (alice, bob, mut a, b) = friends_across(&mut nodes);
    a.read_until(|l| *l == format!("PRESENCE {bob} ONLINE"));

    // A node started now knows at once who is online on the others: alice, logging in there
    // right away, is told bob is online (he is on node 1).
    let late = Node::start(&nats, dir.path(), 3);
    let mut a3 = late.connect();
    let told = a3.login(&alice);
    println!("alice, logging in on a node started just now, is told: {told:?}");
    assert!(told.contains(&format!("PRESENCE {bob} ONLINE")), "{told:?}");

    // bob's node is killed: it deletes nothing, and its entry stays in the presence bucket; once
    // its heartbeat is older than 6 s, every node shows bob offline.
    let killed = Instant::now();
    nodes.remove(1).server.crash();
    a.read_until(|l| *l == format!("PRESENCE {bob} OFFLINE"));
    println!(
        "bob shown offline {:?} after his node was killed",
        killed.elapsed()
    );
    a3.read_until(|l| *l == format!("PRESENCE {bob} OFFLINE"));
    drop(b);

    // A node started after that reads bob's entry, left by the dead node, and does not count it.
    let later = Node::start(&nats, dir.path(), 4);
    let mut a4 = later.connect();
    let told = a4.login(&alice);
    println!("alice, logging in on a node started after the kill, is told: {told:?}");
    assert!(
        told.contains(&format!("PRESENCE {bob} OFFLINE")),
        "{told:?}"
    );
    // bob logs in again (on node 0): everyone sees him online.
    let (b0, _) = login_on(&mut nodes[0], &bob);
    a4.read_until(|l| *l == format!("PRESENCE {bob} ONLINE"));
    a3.read_until(|l| *l == format!("PRESENCE {bob} ONLINE"));
    // Node 0 stops cleanly: it deletes its heartbeat and its entries as it goes, so bob is
    // offline for the others without waiting for the heartbeat to age out.
    drop((a, b0));
    let stopping = Instant::now();
    let status = nodes.remove(0).server.stop();
    assert!(status.success(), "node 0 stopped with {status}");
    println!("node 0 stopped in {:?}", stopping.elapsed());
    a3.read_until(|l| *l == format!("PRESENCE {bob} OFFLINE"));
    println!(
        "bob shown offline {:?} after his node was told to stop",
        stopping.elapsed()
    );
}

#[test]
fn rooms_cross_nodes() {
    if !have_nats("rooms_cross_nodes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (nats, mut nodes) = cluster(dir.path());
    let [alice, bob, carol] = [unique("alice"), unique("bob"), unique("carol")];
    for (i, n) in [&alice, &bob, &carol].iter().enumerate() {
        nodes[i].connect().register(n);
    }
    let (mut a, _) = login_on(&mut nodes[0], &alice);
    let (mut b, _) = login_on(&mut nodes[1], &bob);
    let (mut c, _) = login_on(&mut nodes[2], &carol);
    let room = format!("#{}", unique("r"));
    // Created on node 0, joined on nodes 1 and 2.
    assert!(a
        .call(&format!("JOIN {room}"))
        .last()
        .unwrap()
        .starts_with("OK JOIN"));
    nodes[1].barrier();
    assert!(b
        .call(&format!("JOIN {room}"))
        .last()
        .unwrap()
        .starts_with("OK JOIN"));
    // The members on other nodes are told of a JOIN.
    assert_eq!(a.read_line(), format!("JOINED {room} {bob}"));
    nodes[2].barrier();
    assert!(c
        .call(&format!("JOIN {room}"))
        .last()
        .unwrap()
        .starts_with("OK JOIN"));
    assert_eq!(a.read_line(), format!("JOINED {room} {carol}"));
    assert_eq!(b.read_line(), format!("JOINED {room} {carol}"));
    nodes[0].barrier();
    // A message from node 1 reaches the members on nodes 0 and 2, with one id.
    let reply = b.call1(&format!("MSG {room} hello room"));
    assert!(reply.starts_with("OK MSG "), "{reply}");
    let id: u64 = reply.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(wait_message(&mut a, "hello room"), id);
    assert_eq!(wait_message(&mut c, "hello room"), id);
    // The room's history is the same from every node.
    let mut pages = Vec::new();
    for (client, node) in [(&mut a, 0), (&mut b, 1), (&mut c, 2)] {
        nodes[node].barrier();
        pages.push(client.history(&format!("{room} 10")).0);
    }
    assert_eq!(pages[0].len(), 1, "{pages:?}");
    assert!(pages.iter().all(|p| *p == pages[0]), "{pages:?}");
    // A topic set on node 0 is told to the members on nodes 1 and 2.
    let reply = a.call1(&format!("TOPIC {room} plans"));
    assert!(reply.starts_with("OK TOPIC"), "{reply}");
    for m in [&mut b, &mut c] {
        assert_eq!(m.read_line(), format!("TOPIC {room} {alice} plans"));
    }
    // A ban on node 0 is told to the members on nodes 1 and 2, the banned one among them.
    let reply = a.call1(&format!("BAN {room} {carol} spam"));
    assert!(reply.starts_with("OK BAN"), "{reply}");
    for m in [&mut b, &mut c] {
        assert_eq!(m.read_line(), format!("BANNED {room} {carol} {alice} spam"));
    }
    // An invitation from node 0 reaches the invitee on node 2.
    let dave = unique("dave");
    nodes[2].connect().register(&dave);
    let (mut d, _) = login_on(&mut nodes[2], &dave);
    nodes[0].barrier();
    let reply = a.call1(&format!("INVITE {room} {dave}"));
    assert!(reply.starts_with("OK INVITE"), "{reply}");
    let invited = d.read_line();
    println!("dave, on node 2, was told: {invited}");
    assert!(
        invited.starts_with(&format!("INVITED {room} {alice} ")),
        "{invited}"
    );
    // Every other room event reaches the members on other nodes too: dave joins on node 2 and
    // leaves, bob is made an op and carol unbanned, rejoins and is kicked, all on other nodes.
    let joined = d.call(&format!("JOIN {room}"));
    assert!(joined.last().unwrap().starts_with("OK JOIN"), "{joined:?}");
    assert_eq!(a.read_line(), format!("JOINED {room} {dave}"));
    assert_eq!(b.read_line(), format!("JOINED {room} {dave}"));
    let reply = a.call1(&format!("ROLE {room} {bob} OP"));
    assert!(reply.starts_with("OK ROLE"), "{reply}");
    for m in [&mut b, &mut d] {
        assert_eq!(m.read_line(), format!("ROLE {room} {bob} OP {alice}"));
    }
    let reply = d.call1(&format!("PART {room} bye all"));
    assert!(reply.starts_with("OK PART"), "{reply}");
    for m in [&mut a, &mut b] {
        assert_eq!(m.read_line(), format!("PARTED {room} {dave} bye all"));
    }
    let reply = b.call1(&format!("UNBAN {room} {carol}"));
    assert!(reply.starts_with("OK UNBAN"), "{reply}");
    assert_eq!(a.read_line(), format!("UNBANNED {room} {carol} {bob}"));
    nodes[2].barrier();
    let joined = c.call(&format!("JOIN {room}"));
    assert!(joined.last().unwrap().starts_with("OK JOIN"), "{joined:?}");
    assert_eq!(a.read_line(), format!("JOINED {room} {carol}"));
    assert_eq!(b.read_line(), format!("JOINED {room} {carol}"));
    let reply = a.call1(&format!("KICK {room} {carol} enough"));
    assert!(reply.starts_with("OK KICK"), "{reply}");
    for m in [&mut b, &mut c] {
        assert_eq!(
            m.read_line(),
            format!("KICKED {room} {carol} {alice} enough")
        );
    }
    let reply = a.call1(&format!("ROOM PRIVATE {room}"));
    assert!(reply.starts_with("OK ROOM PRIVATE"), "{reply}");
    assert_eq!(b.read_line(), format!("PRIVACY {room} PRIVATE {alice}"));
    let reply = a.call1(&format!("ROOM DELETE {room}"));
    assert!(reply.starts_with("OK ROOM DELETE"), "{reply}");
    assert_eq!(b.read_line(), format!("DELETED {room} {alice}"));
    // An account deleted on node 2 hands its rooms on: the members on the other nodes are told
    // of the new owner and of its leaving, and the room it was alone in is gone on every node, its
    // name free to be created again on another.
    let erin = unique("erin");
    nodes[2].connect().register(&erin);
    let (mut e, _) = login_on(&mut nodes[2], &erin);
    let [team, solo] = [
        format!("#{}", unique("team")),
        format!("#{}", unique("solo")),
    ];
    for r in [&team, &solo] {
        let created = e.call(&format!("JOIN {r}"));
        assert!(created.last().unwrap().ends_with(" CREATED"), "{created:?}");
    }
    for (m, node) in [(&mut b, 1), (&mut a, 0)] {
        nodes[node].barrier();
        let joined = m.call(&format!("JOIN {team}"));
        assert!(joined.last().unwrap().ends_with(" JOINED"), "{joined:?}");
    }
    assert_eq!(b.read_line(), format!("JOINED {team} {alice}"));
    nodes[2].barrier();
    let told = e.call(&format!("UNREGISTER {PASSWORD}"));
    assert_eq!(
        told,
        [
            format!("JOINED {team} {bob}"),
            format!("JOINED {team} {alice}"),
            format!("OK UNREGISTER {erin}")
        ]
    );
    // Both joined with no message between: the first by name inherits it.
    for m in [&mut a, &mut b] {
        assert_eq!(m.read_line(), format!("ROLE {team} {alice} OWNER {erin}"));
        assert_eq!(m.read_line(), format!("PARTED {team} {erin}"));
    }
    for (m, node) in [(&mut a, 0), (&mut b, 1)] {
        nodes[node].barrier();
        let members: Vec<String> = m
            .call(&format!("MEMBERS {team}"))
            .into_iter()
            .map(|l| l.replace(" ONLINE", "").replace(" OFFLINE", ""))
            .collect();
        assert_eq!(
            members,
            [
                format!("MEMBER {team} {alice} OWNER"),
                format!("MEMBER {team} {bob} MEMBER"),
                format!("OK MEMBERS {team} 2")
            ],
            "node {node}"
        );
    }
    // Presence travels apart from the log: once a node has it, MEMBERS shows the member whose
    // connection is on the other node online, as USERS does.
    for m in [&mut a, &mut b] {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let members = m.call(&format!("MEMBERS {team}"));
            if members.iter().filter(|l| l.ends_with(" ONLINE")).count() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{members:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // So a room message counts the member on the other node among those it reached.
    let sent = a.call1(&format!("MSG {team} counted"));
    assert!(sent.ends_with(" DELIVERED 1"), "{sent}");
    assert!(b.read_line().ends_with(" counted"));
    let created = a.call(&format!("JOIN {solo}"));
    assert!(created.last().unwrap().ends_with(" CREATED"), "{created:?}");
    // An operator's ANNOUNCE on node 1 reaches the connections of every node, and a KILL closes
    // the account's connections on every node.
    // The operator's account is made with `chatd adduser --cluster`, while the nodes run (manual
    // 17.4); a second time, the name is taken.
    let made = adduser_in(&nats, ADMIN);
    assert!(made.status.success(), "{made:?}");
    let said = String::from_utf8_lossy(&made.stdout);
    assert!(
        said.contains("account root created in the cluster at nats://"),
        "{said}"
    );
    let again = adduser_in(&nats, ADMIN);
    assert!(!again.status.success(), "{again:?}");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("the name root is taken"), "{said}");
    let (mut root, _) = login_on(&mut nodes[1], ADMIN);
    nodes[0].barrier();
    nodes[2].barrier();
    let reply = root.call1("ANNOUNCE maintenance at noon");
    assert!(reply.starts_with("OK ANNOUNCE"), "{reply}");
    for m in [&mut root, &mut a, &mut c] {
        assert_eq!(m.read_line(), "NOTICE maintenance at noon");
    }
    let reply = root.call1(&format!("KILL {dave} go away"));
    assert!(reply.starts_with("OK KILL"), "{reply}");
    let closed = d.read_to_close();
    println!("dave, on node 2, read after the KILL on node 1: {closed:?}");
    assert!(
        closed.last().is_some_and(|l| l.starts_with("BYE KILLED")),
        "{closed:?}"
    );
}

#[test]
fn the_conformance_suite_passes_against_each_node() {
    if !have_nats("the_conformance_suite_passes_against_each_node") {
        return;
    }
    use chatd_conformance::{bundled_cases, report, run, Options};
    // The cases that need no special server settings (the limits cases need a server started
    // with small limits; tests/conformance.rs runs those against a single server).
    let cases: Vec<_> = bundled_cases()
        .expect("the bundled cases parse")
        .into_iter()
        .filter(|c| c.requires.is_empty())
        .collect();
    // Each node in a cluster of its own making: the suite expects a server that has not run it
    // before (ROOMS lists every public room), and the node asked is a different one each time.
    for i in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (_nats, nodes) = cluster(dir.path());
        let node = &nodes[i];
        let mut opts = Options::new(node.server.addr().to_string());
        opts.timeout = TIMEOUT;
        let results = run(&cases, &opts, |_| {});
        let totals = report::totals(&results);
        assert!(
            totals.failed == 0 && results.len() == cases.len(),
            "node {i}:\n{}\n{}",
            report::failures(&results),
            report::summary(&results)
        );
        eprintln!("node {i}: {}", report::summary(&results));
    }
}

/// Three NATS servers clustered on loopback, JetStream on each.
struct NatsCluster {
    servers: Vec<Option<Child>>,
    ports: Vec<u16>,
    _tmp: tempfile::TempDir,
}

impl NatsCluster {
    fn start() -> NatsCluster {
        let tmp = tempfile::tempdir().unwrap();
        // Nine distinct free ports: every listener is held until all nine are picked, or the
        // system may hand out one port twice.
        let held: Vec<TcpListener> = (0..9)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let picked: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(held);
        let ports: Vec<u16> = picked[0..3].to_vec();
        let routes: Vec<u16> = picked[3..6].to_vec();
        let monitors: Vec<u16> = picked[6..9].to_vec();
        // Made first, so that a failed start still stops the servers already running (Drop).
        let mut cluster = NatsCluster {
            servers: Vec::new(),
            ports,
            _tmp: tmp,
        };
        let (ports, servers, tmp) = (cluster.ports.clone(), &mut cluster.servers, &cluster._tmp);
        for i in 0..3 {
            let others: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            let child = Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &ports[i].to_string()])
                .args(["-n", &format!("n{i}"), "--cluster_name", "chatd"])
                .args(["-m", &monitors[i].to_string()])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", routes[i])])
                .args(["--routes", &others.join(",")])
                .arg("-sd")
                .arg(tmp.path().join(format!("js{i}")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting nats-server");
            servers.push(Some(child));
        }
        // Ready once every server's health check says so: JetStream has its leaders (bounded).
        for m in &monitors {
            let deadline = Instant::now() + 3 * TIMEOUT;
            while !healthy(*m) {
                assert!(
                    Instant::now() < deadline,
                    "the NATS cluster did not become ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn urls(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the NATS server with this monitoring port answers its health check with "ok".
fn healthy(port: u16) -> bool {
    http_get(port, "/healthz").is_some()
}

/// The body of a successful `GET path` from a NATS monitoring endpoint on loopback.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    if !(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")) {
        return None;
    }
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

#[test]
fn stopping_one_of_three_nats_servers_under_load_loses_nothing_acknowledged() {
    if !have_nats("stopping_one_of_three_nats_servers_under_load_loses_nothing_acknowledged") {
        return;
    }
    let mut nats = NatsCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let urls = nats.urls();
    let args = ["--cluster", urls.as_str(), "--cluster-replicas", "3"];
    // JetStream elects its leaders after the servers meet: the first node retries until its
    // stream can be made (bounded).
    let start = |i: usize| {
        let db = dir.path().join(format!("node{i}.redb"));
        Server::start_on(&db, &args)
    };
    let a = start(0);
    let b = start(1);
    let target = unique("target");
    b.connect().register(&target);
    let sender = unique("sender");
    let mut c = a.connect();
    c.register(&sender);
    c.login(&sender);
    // A publish caught by the failover waits for a new leader and is tried again with the same
    // entry id: its answer may take longer than the harness's wait for a line, so this
    // connection reads with a wait of its own (bounded).
    let mut s = std::io::BufReader::new(c.writer());
    s.get_ref().set_read_timeout(Some(6 * TIMEOUT)).unwrap();
    let mut w = c.writer();
    let mut acked = BTreeMap::new();
    for i in 0..300 {
        if i == 100 {
            nats.kill(0);
        }
        let text = format!("load {i}");
        use std::io::{BufRead, Write};
        w.write_all(format!("MSG {target} {text}\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        s.read_line(&mut reply)
            .expect("an answer during the failover");
        let reply = reply.trim_end().to_owned();
        if reply.starts_with("OK MSG ") {
            acked.insert(parse_ok_id(&reply, "MSG"), text);
        }
    }
    assert!(acked.len() > 200, "{} acknowledged", acked.len());
    // A write on the other node: once it is acknowledged, that node has applied every entry
    // before it. If the failover took the leader its log reader was reading from, that reader
    // is made again only when the write misses its entries (CLUSTER_LOG_WAIT, 10 s), so this
    // answer too is read with a wait of its own (bounded).
    {
        use std::io::{BufRead, Write};
        let c = b.connect();
        let mut r = std::io::BufReader::new(c.writer());
        r.get_ref().set_read_timeout(Some(6 * TIMEOUT)).unwrap();
        let name = unique("sync");
        c.writer()
            .write_all(format!("REGISTER {name} {PASSWORD}\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply)
            .expect("an answer after the failover");
        assert_eq!(reply.trim_end(), format!("OK REGISTER {name}"));
    }
    let pushed = b.connect().login(&target);
    let got: BTreeMap<u64, String> = messages(&pushed).into_iter().collect();
    for (id, text) in &acked {
        let line = got
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged message {id} lost"));
        assert!(line.ends_with(text.as_str()), "{line}");
    }
}

/// Publishes `payload` on `subject` with core NATS (the log's stream takes every
/// `chatd.log.>` subject), the way a newer chatd's entry would arrive, and waits for the server's
/// PONG so that it has been taken.
fn publish_raw(nats: &Nats, subject: &str, payload: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let s = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO "), "{line}");
    let mut msg = format!(
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
        payload.len()
    )
    .into_bytes();
    msg.extend_from_slice(payload);
    msg.extend_from_slice(b"\r\nPING\r\n");
    w.write_all(&msg).unwrap();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "NATS closed");
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

#[test]
fn an_entry_in_a_newer_format_stops_a_node_which_says_why() {
    if !have_nats("an_entry_in_a_newer_format_stops_a_node_which_says_why") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    let node = Node::start(&nats, dir.path(), 0);
    // Format version 250: no chatd writes it yet. Skipping it would make this node's index differ
    // from a newer node's; the node stops instead, and says which version it met.
    publish_raw(&nats, "chatd.log.state", &[250, 1, 2, 3]);
    let deadline = Instant::now() + TIMEOUT;
    let said = loop {
        let log = node.server.log();
        if let Some(l) = log.iter().find(|l| l.contains("format version 250")) {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "no word of the entry: {log:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("the running node logged: {said}");
    assert!(said.contains("reads versions up to 2"), "{said}");
    let status = node.server.stop();
    assert!(!status.success(), "the node ended with {status}");
    // A node started on that log refuses to start, with the same words.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["--listen", "127.0.0.1:0", "--cluster", &nats.url(), "--db"])
        .arg(dir.path().join("late.redb"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a node started on a log it cannot read did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    println!("a node started later said: {err}");
    assert!(!status.success());
    assert!(err.contains("is in format version 250"), "{err}");
}
