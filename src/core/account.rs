//! PASSWORD and UNREGISTER: the account's owner changes its password or deletes it.
//!
//! Both check the current password on the hashing pool, and hold the connection until they are
//! answered. Between the check and the commit, the account's in-memory state already shows the
//! change, so that nothing that runs meanwhile contradicts it:
//!
//! - PASSWORD puts the new hash in place and drops the revoked tokens at once; a LOGIN checked
//!   against the old hash meanwhile is refused (`Core::still_has_password`). Once committed, the
//!   account's other connections are closed.
//! - UNREGISTER takes the account's password hash away at once, which makes the account unknown to
//!   every command of anyone else (no message, request or login reaches it), and freezes its other
//!   connections, whose input waits. Once the deletion is committed, the account leaves memory,
//!   its name is retired, the other side of each friendship or request is told, and its other
//!   connections are closed.

use super::out::{self, Out};
use super::{Account, BusOut, ConnId, ConnState, Core, Hold, Job, Req};
use crate::auth::{HashJob, HashOutcome, Phc};
use crate::proto::code::{ByeCode, Code};
use crate::proto::name::{Key, Password};
use crate::proto::server_line::{FriendshipEvent, OkReply, ServerLine};
use crate::store::{FriendState, StoreOp, TokenId};

impl Core {
    /// The account's current password hash for a command that checks the password, or the reply
    /// that refuses it (the account is being deleted, or the hashing queue is full).
    fn password_check(&mut self, req: Req) -> Option<(Req, Key, Phc)> {
        let me = self.account_of(req.conn)?;
        let Some(phc) = self.accounts.get(&me).and_then(|a| a.phc.clone()) else {
            self.refuse(req, Code::BAD_CREDENTIALS, "wrong password");
            return None;
        };
        // A wrong password here counts as a failed login (spec 7.5): a connection logged in with a
        // device token must not guess the password faster than a LOGIN could.
        let addr = self.peer_key(req.conn);
        let refusal = self.guard.login_refusal(
            addr,
            &me,
            self.accounts.get(&me).map(|a| &**a),
            &self.settings.limits,
            self.now,
        );
        if let Some(r) = refusal {
            self.rate_limited(req, r);
            return None;
        }
        if self.hash_full() {
            self.refuse(
                req,
                Code::SERVER_BUSY,
                "the server is busy; try again in a moment",
            );
            return None;
        }
        Some((req, me, phc))
    }

    /// PASSWORD or UNREGISTER checked a wrong password: a failed login for the address and the
    /// account (spec 7.5).
    fn wrong_password(&mut self, conn: ConnId, me: &Key) {
        let addr = self.peer_key(conn);
        self.tally
            .count("wrong passwords in PASSWORD or UNREGISTER", addr);
        self.guard
            .login_failed(addr, Some(me), &self.settings.limits, self.now);
    }

    /// Whether the connection is still logged in as `me`, open, and the password it checked is
    /// still the account's.
    fn checked_still_holds(&self, conn: ConnId, me: &Key, phc: &Phc) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| !c.closing && c.key() == Some(me))
            && self.still_has_password(me, phc)
    }

    /// The account's other connections.
    fn other_conns(&self, me: &Key, conn: ConnId) -> Vec<ConnId> {
        self.accounts
            .get(me)
            .map(|a| a.conns.iter().copied().filter(|c| *c != conn).collect())
            .unwrap_or_default()
    }

    pub(super) fn password(&mut self, req: Req, old: Password, new: Password) {
        let Some((mut req, me, phc)) = self.password_check(req) else {
            return;
        };
        let conn = req.conn;
        self.reserve(&mut req);
        let job = HashJob::Rehash {
            old,
            phc: phc.clone(),
            new,
        };
        self.hash(conn, job, move |core, outcome| {
            core.password_hashed(req, me, phc, outcome)
        });
        self.hold(conn);
    }

    fn password_hashed(&mut self, req: Req, me: Key, phc: Phc, outcome: HashOutcome) {
        let conn = req.conn;
        let new_phc = match outcome {
            HashOutcome::Rehashed(Some(new)) if self.checked_still_holds(conn, &me, &phc) => new,
            HashOutcome::Rehashed(checked) => {
                if checked.is_none() {
                    self.wrong_password(conn, &me);
                }
                self.refuse(req, Code::BAD_CREDENTIALS, "wrong password");
                return self.release(conn);
            }
            // Its connection closed before the hash started: nobody to answer.
            HashOutcome::Cancelled => return,
            other => return self.internal_error(req, &format!("hashing: {other:?}")),
        };
        let keep = self.conns.get(&conn).and_then(|c| c.device_token);
        let now = self.now;
        let revoke: Vec<TokenId> = self
            .accounts
            .get(&me)
            .map(|a| {
                a.ties()
                    .tokens
                    .iter()
                    .copied()
                    .filter(|t| Some(*t) != keep)
                    .collect()
            })
            .unwrap_or_default();
        let revoked = revoke
            .iter()
            .filter(|id| self.tokens.get(id).is_some_and(|t| t.live(now)))
            .count() as u64;
        if let Some(acct) = self.accounts.get_mut(&me) {
            acct.phc = Some(Phc::parse(&new_phc));
        }
        self.forget_tokens(&me, &revoke);
        let op = StoreOp::SetPassword {
            user: me.as_str().to_owned(),
            phc: new_phc,
            revoke,
        };
        self.store(op, move |core, _| {
            let others = core.other_conns(&me, conn);
            for &c in &others {
                core.close_with_bye(
                    c,
                    ByeCode::REVOKED,
                    "the account's password was changed on another connection",
                );
            }
            if let Some(acct) = core.accounts.get(&me) {
                log::info!("{} changed the password", acct.name);
            }
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Password {
                    revoked,
                    closed: others.len() as u64,
                },
            );
            core.finish(req, out);
            core.release(conn);
        });
    }

    pub(super) fn unregister(&mut self, req: Req, password: Password) {
        let Some((mut req, me, phc)) = self.password_check(req) else {
            return;
        };
        let conn = req.conn;
        self.reserve(&mut req);
        let job = HashJob::Verify(password, phc.clone());
        self.hash(conn, job, move |core, outcome| {
            core.unregister_verified(req, me, phc, outcome)
        });
        self.hold(conn);
    }

    fn unregister_verified(&mut self, req: Req, me: Key, phc: Phc, outcome: HashOutcome) {
        let conn = req.conn;
        match outcome {
            HashOutcome::Verified(true) if self.checked_still_holds(conn, &me, &phc) => {}
            HashOutcome::Verified(ok) => {
                if !ok {
                    self.wrong_password(conn, &me);
                }
                self.refuse(req, Code::BAD_CREDENTIALS, "wrong password");
                return self.release(conn);
            }
            HashOutcome::Cancelled => return,
            other => return self.internal_error(req, &format!("hashing: {other:?}")),
        }
        // From now on the account is unknown to everyone else, and its other connections wait.
        if let Some(acct) = self.accounts.get_mut(&me) {
            acct.phc = None;
        }
        for c in self.other_conns(&me, conn) {
            if let Some(c) = self.conns.get_mut(&c) {
                c.hold = Hold::Frozen;
            }
        }
        // Its rooms are handed on (or deleted, when it was their last member) first, so that no
        // room is left without an owner whatever happens; its memberships, invitations and the
        // bans naming it go with the account.
        let shown = self.shown(&me);
        let (mut ops, left) = self.leave_every_room(&me);
        ops.push(StoreOp::DeleteAccount {
            user: me.as_str().to_owned(),
            deleted_ms: self.now,
        });
        ops.extend(self.rooms_left_notices(&shown, &left));
        self.store_all(ops, move |core, _| {
            let name = core.shown(&me);
            core.tell_rooms_left(&name, &left);
            core.unregister_stored(req, me)
        });
    }

    fn unregister_stored(&mut self, req: Req, me: Key) {
        let conn = req.conn;
        let Some(acct) = self.forget_account(&me) else {
            return self.internal_error(req, "a deleted account vanished before its commit");
        };
        for c in acct.conns.iter().copied().filter(|c| *c != conn) {
            self.close_with_bye(c, ByeCode::ACCOUNT_DELETED, "the account was deleted");
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Guest;
            c.device_token = None;
            c.resumed = false;
        }
        log::info!("{} deleted the account", acct.name);
        let mut out = Out::new();
        out.ok(&req, OkReply::Unregister { name: &acct.name });
        self.finish(req, out);
        self.release(conn);
    }

    /// Removes a deleted account from memory: its name is retired, its tokens, friendships (the
    /// other side is told) and blocks go, and in a cluster the other nodes learn it is offline.
    /// Returns the account, whose connections the caller closes.
    pub(super) fn forget_account(&mut self, me: &Key) -> Option<Account> {
        let acct = self.accounts.remove(me)?;
        super::rooms::connections_changed(&mut self.rooms, &acct.rooms);
        if self.online.remove(me) && self.settings.cluster {
            self.jobs.push(Job::Bus(BusOut::Presence {
                key: me.as_str().to_owned(),
                online: false,
            }));
            for id in &acct.rooms {
                self.rewatch(*id);
            }
        }
        self.remote_online.remove(me);
        self.retired.insert(me.clone(), acct.name());
        for id in &acct.ties().tokens {
            self.tokens.remove(id);
        }
        // The other side of each friendship or request learns it is over, as if the account had
        // ended it itself.
        for (other, state) in &acct.ties().friends {
            let event = match state {
                FriendState::Friends => FriendshipEvent::Removed,
                FriendState::Outgoing => FriendshipEvent::Withdrawn,
                FriendState::Incoming => FriendshipEvent::Denied,
            };
            if let Some(o) = self.accounts.get_mut(other) {
                if let Some(t) = o.ties_if_any() {
                    t.friends.remove(me);
                }
            }
            let line = out::shared(&ServerLine::Friendship {
                name: &acct.name,
                event,
            });
            self.push_to_account(other, &line);
        }
        for k in &acct.ties().blocks {
            if let Some(o) = self.accounts.get_mut(k) {
                if let Some(t) = o.ties_if_any() {
                    t.blocked_by.remove(me);
                }
            }
        }
        for k in &acct.ties().blocked_by {
            if let Some(o) = self.accounts.get_mut(k) {
                if let Some(t) = o.ties_if_any() {
                    t.blocks.remove(me);
                }
            }
        }
        Some(*acct)
    }
}
