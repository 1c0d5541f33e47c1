//! FRIEND: requests with consent, and the friendships that presence follows.
//!
//! The in-memory graph changes when the command runs (so a repeated request is refused at once);
//! the reply and the other side's notice go out when the change is committed.

use super::out::Out;
use super::{Core, Req};
use crate::proto::code::Code;
use crate::proto::command::FriendOp;
use crate::proto::name::{Key, Name};
use crate::proto::server_line::{
    AddOutcome, FriendReply, FriendState as Listed, FriendshipEvent, OkReply, Presence, ServerLine,
};
use crate::store::{FriendState, StoreOp};

/// A FRIEND subcommand that changes an edge.
#[derive(Clone, Copy)]
enum Change {
    Add,
    Accept,
    Deny,
    Remove,
}

/// What a change does, once its preconditions hold.
struct Effect {
    /// The caller's new view of the edge (`None`: no edge).
    new: Option<FriendState>,
    /// The event the other side is told.
    event: FriendshipEvent,
    /// `OK FRIEND ADD` says whether the two are friends now.
    outcome: AddOutcome,
}

impl Core {
    pub(super) fn friend(&mut self, req: Req, op: FriendOp) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let (change, name) = match op {
            FriendOp::List => return self.friend_list(req, &me),
            FriendOp::Add(n) => (Change::Add, n),
            FriendOp::Accept(n) => (Change::Accept, n),
            FriendOp::Deny(n) => (Change::Deny, n),
            FriendOp::Remove(n) => (Change::Remove, n),
        };
        self.friend_change(req, me, change, name);
    }

    fn friend_change(&mut self, mut req: Req, me: Key, change: Change, name: Name) {
        let other = name.key();
        if other == me {
            return self.refuse(req, Code::SELF_TARGET, "you cannot befriend yourself");
        }
        let shown = match self.accounts.get(&other) {
            Some(a) if a.phc.is_some() => a.name(),
            _ => {
                let text = format!("no such user: {name}");
                return self.refuse(req, Code::UNKNOWN_USER, &text);
            }
        };
        if matches!(change, Change::Add) && self.barred(&me, &other) {
            let text = format!("a block stands between you and {shown}");
            return self.refuse(req, Code::BLOCKED, &text);
        }
        let current = self
            .accounts
            .get(&me)
            .and_then(|a| a.ties().friends.get(&other))
            .copied();
        use FriendState::{Friends, Incoming, Outgoing};
        let effect = |new, event, outcome| Effect {
            new,
            event,
            outcome,
        };
        let refusal = |code: Code, text: String| (code, text);
        let decided = match (change, current) {
            (Change::Add, Some(Friends)) => Err(refusal(
                Code::ALREADY_FRIENDS,
                format!("{shown} is already your friend"),
            )),
            (Change::Add, Some(Outgoing)) => Err(refusal(
                Code::ALREADY_REQUESTED,
                format!("you already asked {shown}"),
            )),
            (Change::Add, Some(Incoming)) => Ok(effect(
                Some(Friends),
                FriendshipEvent::Accepted,
                AddOutcome::Friends,
            )),
            (Change::Add, None) => Ok(effect(
                Some(Outgoing),
                FriendshipEvent::Requested,
                AddOutcome::Requested,
            )),
            (Change::Accept, Some(Incoming)) => Ok(effect(
                Some(Friends),
                FriendshipEvent::Accepted,
                AddOutcome::Friends,
            )),
            (Change::Deny, Some(Incoming)) => {
                Ok(effect(None, FriendshipEvent::Denied, AddOutcome::Requested))
            }
            (Change::Accept | Change::Deny, Some(Friends | Outgoing) | None) => Err(refusal(
                Code::NO_REQUEST,
                format!("{shown} has not asked to be your friend"),
            )),
            (Change::Remove, Some(Friends)) => Ok(effect(
                None,
                FriendshipEvent::Removed,
                AddOutcome::Requested,
            )),
            (Change::Remove, Some(Outgoing)) => Ok(effect(
                None,
                FriendshipEvent::Withdrawn,
                AddOutcome::Requested,
            )),
            (Change::Remove, Some(Incoming) | None) => Err(refusal(
                Code::NOT_FRIENDS,
                format!("{shown} is not your friend and you have not asked them"),
            )),
        };
        let effect = match decided {
            Ok(e) => e,
            Err((code, text)) => return self.refuse(req, code, &text),
        };
        if matches!((change, current), (Change::Add, None)) {
            // A new request: it tells the other user something, and adds an edge to both.
            if let Err(why) = self.charge_friend_request(&me, &other) {
                return self.over_quota(req, why);
            }
        }
        self.set_edge(&me, &other, effect.new);
        let op = StoreOp::SetFriendship {
            a: me.as_str().to_owned(),
            b: other.as_str().to_owned(),
            state: effect.new,
        };
        self.reserve(&mut req);
        self.store(op, move |core, _| {
            core.friend_stored(req, me, other, shown, change, effect)
        });
    }

    /// Sets both directions of an edge in memory.
    pub(super) fn set_edge(&mut self, a: &Key, b: &Key, state: Option<FriendState>) {
        for (x, y, s) in [(a, b, state), (b, a, state.map(FriendState::mirror))] {
            if let Some(acct) = self.accounts.get_mut(x) {
                match s {
                    Some(s) => acct.ties_mut().friends.insert(y.clone(), s),
                    None => acct.ties_if_any().and_then(|t| t.friends.remove(y)),
                };
            }
        }
    }

    /// What a committed change of the edge `me` -> `other` tells the connections of this
    /// server: `other`'s get the `FRIENDSHIP` notice (and, when the two are friends now, `me`'s
    /// presence), and `me`'s, but `skip`, get `other`'s presence when they are friends now. The
    /// server that ran the command calls it at the commit, every other server of a cluster when
    /// the change reaches it (`skip` 0: no connection of it asked).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tell_friendship(
        &mut self,
        me: &Key,
        my_name: &str,
        other: &Key,
        shown: &str,
        event: FriendshipEvent,
        now_friends: bool,
        skip: super::ConnId,
    ) {
        let mut notice = Out::new();
        notice.line(&ServerLine::Friendship {
            name: my_name,
            event,
        });
        let their_presence = ServerLine::Presence {
            name: shown,
            presence: Presence::of(self.is_online(other)),
        };
        let their_away = self.away_chunk(other);
        if now_friends {
            notice.line(&ServerLine::Presence {
                name: my_name,
                presence: Presence::of(self.is_online(me)),
            });
            if let Some(a) = self.away_chunk(me) {
                notice.raw(&a);
            }
        }
        let notice = notice.into_chunk();
        self.push_to_account(other, &notice);
        if now_friends {
            // The caller's other connections learn the new friend's presence (and away) too.
            let mut lines = Out::new();
            lines.line(&their_presence);
            if let Some(a) = &their_away {
                lines.raw(a);
            }
            let lines = lines.into_chunk();
            super::fan_out(
                &self.accounts,
                &self.conns,
                &mut self.overflowed,
                std::iter::once(me),
                &lines,
                Some(skip),
            );
        }
    }

    fn friend_stored(
        &mut self,
        req: Req,
        me: Key,
        other: Key,
        shown: String,
        change: Change,
        effect: Effect,
    ) {
        let my_name = self.accounts.get(&me).map(|a| a.name()).unwrap_or_default();
        let now_friends = effect.new == Some(FriendState::Friends);
        let reply = match change {
            Change::Add => FriendReply::Add {
                name: &shown,
                outcome: effect.outcome,
            },
            Change::Accept => FriendReply::Accept { name: &shown },
            Change::Deny => FriendReply::Deny { name: &shown },
            Change::Remove => FriendReply::Remove { name: &shown },
        };
        let mut out = Out::new();
        out.ok(&req, OkReply::Friend(reply));
        if now_friends {
            out.line(&ServerLine::Presence {
                name: &shown,
                presence: Presence::of(self.is_online(&other)),
            });
            if let Some(a) = self.away_chunk(&other) {
                out.raw(&a);
            }
        }
        self.tell_friendship(
            &me,
            &my_name,
            &other,
            &shown,
            effect.event,
            now_friends,
            req.conn,
        );
        self.finish(req, out);
    }

    fn friend_list(&mut self, req: Req, me: &Key) {
        let Some(acct) = self.accounts.get(me) else {
            return;
        };
        let mut rows: Vec<(u8, &str, Listed)> = Vec::new();
        for (k, s) in &acct.ties().friends {
            let Some(other) = self.accounts.get(k) else {
                continue;
            };
            let (rank, state) = match s {
                FriendState::Friends if self.is_online(k) => (0, Listed::Online),
                FriendState::Friends => (0, Listed::Offline),
                FriendState::Incoming => (1, Listed::Incoming),
                FriendState::Outgoing => (2, Listed::Outgoing),
            };
            rows.push((rank, &*other.name, state));
        }
        rows.sort_by_key(|a| (a.0, a.1.to_ascii_lowercase()));
        let mut out = Out::new();
        for (_, name, state) in &rows {
            out.line(&ServerLine::Friend {
                name,
                state: *state,
            });
        }
        out.ok(
            &req,
            OkReply::Friend(FriendReply::List {
                count: rows.len() as u64,
            }),
        );
        self.finish(req, out);
    }
}
