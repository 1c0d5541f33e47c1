//! FRIEND: requests with consent, and the friendships that presence follows.
//!
//! The in-memory graph changes when the command runs (so a repeated request is refused at once);
//! the reply and the other side's notice go out when the change is committed.

use super::{ConnId, Core, Waiting};
use crate::outbox::Chunk;
use crate::proto::command::FriendOp;
use crate::proto::reply::{self, Code};
use crate::store::worker::Ticket;
use crate::store::{FriendState, StoreOp};

/// A friendship change waiting for its commit.
pub(super) struct Change {
    pub(super) conn: ConnId,
    pub(super) label: Option<String>,
    me: String,
    other: String,
    /// What follows `OK FRIEND`.
    details: String,
    /// The FRIENDSHIP event the other side is told.
    event: &'static str,
    /// The two became friends: each learns the other's presence.
    now_friends: bool,
}

impl Core {
    pub(super) fn friend(&mut self, conn: ConnId, label: Option<String>, op: FriendOp) {
        let Some(me) = self.account_of(conn) else {
            return;
        };
        let (sub, name) = match op {
            FriendOp::List => return self.friend_list(conn, label, &me),
            FriendOp::Add(n) => ("ADD", n),
            FriendOp::Accept(n) => ("ACCEPT", n),
            FriendOp::Deny(n) => ("DENY", n),
            FriendOp::Remove(n) => ("REMOVE", n),
        };
        let l = label.as_deref();
        let other = name.key();
        if other == me {
            return self.refuse(
                conn,
                l,
                "FRIEND",
                Code::SELF_TARGET,
                "you cannot befriend yourself",
            );
        }
        let shown = match self.accounts.get(&other) {
            Some(a) if a.phc.is_some() => a.name.clone(),
            _ => {
                return self.refuse(
                    conn,
                    l,
                    "FRIEND",
                    Code::UNKNOWN_USER,
                    &format!("no such user: {name}"),
                )
            }
        };
        let current = self
            .accounts
            .get(&me)
            .and_then(|a| a.friends.get(&other))
            .copied();
        use FriendState::*;
        let (new, details, event, now_friends) = match (sub, current) {
            ("ADD", Some(Friends)) => {
                return self.refuse(
                    conn,
                    l,
                    "FRIEND",
                    Code::ALREADY_FRIENDS,
                    &format!("{shown} is already your friend"),
                )
            }
            ("ADD", Some(Outgoing)) => {
                return self.refuse(
                    conn,
                    l,
                    "FRIEND",
                    Code::ALREADY_REQUESTED,
                    &format!("you already asked {shown}"),
                )
            }
            ("ADD", Some(Incoming)) => (
                Some(Friends),
                format!("ADD {shown} FRIENDS"),
                "ACCEPTED",
                true,
            ),
            ("ADD", None) => (
                Some(Outgoing),
                format!("ADD {shown} REQUESTED"),
                "REQUESTED",
                false,
            ),
            ("ACCEPT", Some(Incoming)) => {
                (Some(Friends), format!("ACCEPT {shown}"), "ACCEPTED", true)
            }
            ("DENY", Some(Incoming)) => (None, format!("DENY {shown}"), "DENIED", false),
            ("ACCEPT" | "DENY", _) => {
                return self.refuse(
                    conn,
                    l,
                    "FRIEND",
                    Code::NO_REQUEST,
                    &format!("{shown} has not asked to be your friend"),
                )
            }
            ("REMOVE", Some(Friends)) => (None, format!("REMOVE {shown}"), "REMOVED", false),
            ("REMOVE", Some(Outgoing)) => (None, format!("REMOVE {shown}"), "WITHDRAWN", false),
            _ => {
                return self.refuse(
                    conn,
                    l,
                    "FRIEND",
                    Code::NOT_FRIENDS,
                    &format!("{shown} is not your friend and you have not asked them"),
                )
            }
        };
        self.set_edge(&me, &other, new);
        let change = Change {
            conn,
            label,
            me: me.clone(),
            other: other.clone(),
            details,
            event,
            now_friends,
        };
        let ticket = self.store(
            StoreOp::SetFriendship {
                a: me,
                b: other,
                state: new,
            },
            Waiting::Friend(Box::new(change)),
        );
        self.reserve(conn, ticket, 1);
    }

    /// Sets both directions of an edge in memory.
    fn set_edge(&mut self, a: &str, b: &str, state: Option<FriendState>) {
        for (x, y, s) in [(a, b, state), (b, a, state.map(FriendState::mirror))] {
            if let Some(acct) = self.accounts.get_mut(x) {
                match s {
                    Some(s) => acct.friends.insert(y.to_owned(), s),
                    None => acct.friends.remove(y),
                };
            }
        }
    }

    pub(super) fn friend_stored(&mut self, ticket: Ticket, c: Change) {
        let name = |core: &Core, k: &str| {
            core.accounts
                .get(k)
                .map(|a| a.name.clone())
                .unwrap_or_default()
        };
        let presence = |core: &Core, k: &str| {
            if core.online.contains(k) {
                "ONLINE"
            } else {
                "OFFLINE"
            }
        };
        let (my_name, other_name) = (name(self, &c.me), name(self, &c.other));
        let mut out = String::new();
        reply::ok(&mut out, c.label.as_deref(), "FRIEND", &c.details);
        let mut notice = String::new();
        reply::line(&mut notice, "FRIENDSHIP", &format!("{my_name} {}", c.event));
        if c.now_friends {
            reply::line(
                &mut out,
                "PRESENCE",
                &format!("{other_name} {}", presence(self, &c.other)),
            );
            reply::line(
                &mut notice,
                "PRESENCE",
                &format!("{my_name} {}", presence(self, &c.me)),
            );
        }
        self.push_to_account(&c.other, &Chunk::Owned(notice.into_bytes()));
        if c.now_friends {
            // The caller's other connections learn the new friend's presence too.
            let mut line = String::new();
            reply::line(
                &mut line,
                "PRESENCE",
                &format!("{other_name} {}", presence(self, &c.other)),
            );
            let chunk = Chunk::Owned(line.into_bytes());
            let others: Vec<_> = self
                .accounts
                .get(&c.me)
                .map(|a| a.conns.iter().copied().filter(|x| *x != c.conn).collect())
                .unwrap_or_default();
            for conn in others {
                if let Some(k) = self.conns.get(&conn) {
                    if k.outbox.push(chunk.clone()).is_err() {
                        self.overflowed.push(conn);
                    }
                }
            }
        }
        self.fill(c.conn, ticket, out);
    }

    fn friend_list(&mut self, conn: ConnId, label: Option<String>, me: &str) {
        let Some(acct) = self.accounts.get(me) else {
            return;
        };
        let mut rows: Vec<(u8, &str, &'static str)> = Vec::new();
        for (k, s) in &acct.friends {
            let Some(other) = self.accounts.get(k) else {
                continue;
            };
            let (rank, state) = match s {
                FriendState::Friends if self.online.contains(k) => (0, "ONLINE"),
                FriendState::Friends => (0, "OFFLINE"),
                FriendState::Incoming => (1, "INCOMING"),
                FriendState::Outgoing => (2, "OUTGOING"),
            };
            rows.push((rank, other.name.as_str(), state));
        }
        rows.sort_by_key(|a| (a.0, a.1.to_ascii_lowercase()));
        let mut out = String::new();
        for (_, name, state) in &rows {
            reply::line(&mut out, "FRIEND", &format!("{name} {state}"));
        }
        reply::ok(
            &mut out,
            label.as_deref(),
            "FRIEND",
            &format!("LIST {}", rows.len()),
        );
        self.answer(conn, out);
    }
}
