//! REGISTER, LOGIN, LOGOUT and QUIT: accounts and connection state; and [`Core::enter`], the one
//! login path after the credentials are checked, which LOGIN and RESUME share.
//!
//! REGISTER and LOGIN hash a password on the hashing pool; the connection's later lines wait until
//! the hash is done (they must see the state it leads to). A login (LOGIN or RESUME) that finds
//! messages kept for the account holds the connection until they are sent, so every command after
//! it runs once the login is complete, backlog included.

use super::guard::Refusal;
use super::order::SlotId;
use super::out::Out;
use super::quota::Inbox;
use super::stream::Stream;
use super::{Account, ConnId, ConnState, Core, Looks, Req};
use crate::auth::{HashJob, HashOutcome, Phc};
use crate::metrics::LoginKind;
use crate::peer::AddrKey;
use crate::proto::code::Code;
use crate::proto::name::{Key, Name, Password};
use crate::proto::server_line::{FriendshipEvent, OkReply, Presence, ServerLine};
use crate::store::{AccountRecord, FriendState, StoreOp, StoreReply, TokenId};

/// How a connection proved who it is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Via {
    /// LOGIN: a password.
    Password,
    /// RESUME: a device token, which the connection is on from now.
    Token(TokenId),
}

/// What a read answered instead of its data, for the log.
pub(super) fn unreadable(reply: &StoreReply) -> String {
    match reply {
        StoreReply::Unreadable(why) => why.to_string(),
        other => format!("unexpected store reply {other:?}"),
    }
}

impl Core {
    pub(super) fn register(&mut self, req: Req, name: Name, password: Password) {
        if self.settings.policy.registration_closed {
            return self.refuse(
                req,
                Code::REGISTRATION_CLOSED,
                "registration is closed on this server; ask its operators for an account",
            );
        }
        self.create_account(req, name, password, false);
    }

    /// REGISTER, or an admin's ADDUSER (`by_admin`): the name is reserved at once, the password
    /// hashed, the account committed, then the answer sent. An admin is not held to the
    /// registrations per address, and may create an account named by `--admin`.
    pub(super) fn create_account(
        &mut self,
        mut req: Req,
        name: Name,
        password: Password,
        by_admin: bool,
    ) {
        let key = name.key();
        // A deleted account's name stays taken (spec 4.18), and so does the name of an admin
        // that has no account yet: nobody but an admin may create it.
        if self.accounts.contains_key(&key)
            || self.retired.contains_key(&key)
            || (!by_admin && self.is_admin(&key))
        {
            let text = format!("the name {name} is taken");
            return self.refuse(req, Code::NAME_TAKEN, &text);
        }
        // A retired name's look stays taken too: nobody may pass for a deleted account.
        if let Some(taken) = self
            .skeletons
            .get(&Looks(key.clone()))
            .and_then(|Looks(k)| {
                self.accounts
                    .get(k)
                    .map(|a| &*a.name)
                    .or_else(|| self.retired.get(k).map(String::as_str))
            })
        {
            let text = format!("the name {name} looks too much like {taken}, which is taken");
            return self.refuse(req, Code::NAME_TAKEN, &text);
        }
        let addr = self.peer_key(req.conn);
        if !by_admin {
            let limits = &self.settings.limits;
            if let Some(r) = self.guard.register_refusal(addr, limits, self.now) {
                return self.rate_limited(req, r);
            }
        }
        if self.hash_full() {
            return self.refuse(
                req,
                Code::SERVER_BUSY,
                "the server is busy; try again in a moment",
            );
        }
        if !by_admin {
            self.guard
                .registering(addr, &self.settings.limits, self.now);
        }
        // The name is reserved now, so a second REGISTER of it cannot race this one.
        self.accounts.insert(
            key.clone(),
            Box::new(Account::new(key.spelled(name.as_str()), None)),
        );
        self.skeletons.replace(Looks(key.clone()));
        let conn = req.conn;
        self.reserve(&mut req);
        self.hash(conn, HashJob::Hash(password), move |core, outcome| {
            core.register_hashed(req, key, outcome, by_admin)
        });
        self.hold(conn);
    }

    fn register_hashed(&mut self, req: Req, key: Key, outcome: HashOutcome, by_admin: bool) {
        let HashOutcome::Hashed(phc) = outcome else {
            if self.accounts.remove(&key).is_some() {
                self.skeletons.remove(&Looks(key.clone()));
            }
            if outcome == HashOutcome::Cancelled {
                // Its connection closed before the hash started: nobody to answer.
                return;
            }
            return self.internal_error(req, &format!("hashing: {outcome:?}"));
        };
        let Some(acct) = self.accounts.get_mut(&key) else {
            return self.internal_error(req, "a reserved name vanished while hashing");
        };
        acct.phc = Some(Phc::parse(&phc));
        let name = acct.name();
        let record = AccountRecord {
            name: name.clone(),
            phc,
            created_ms: self.now,
        };
        let conn = req.conn;
        let hashed = acct.phc.clone();
        let admin = self.account_of(conn).map(|k| k.to_string());
        self.store(StoreOp::CreateAccount(record), move |core, reply| {
            if reply == StoreReply::Taken {
                // Another server of the cluster registered the name first. The reservation is
                // dropped unless that server's account has replaced it meanwhile.
                let ours = core
                    .accounts
                    .get(&key)
                    .is_some_and(|a| a.phc.is_some() && a.phc == hashed);
                if ours && core.accounts.remove(&key).is_some() {
                    core.skeletons.remove(&Looks(key.clone()));
                }
                let text = format!("the name {name} is taken");
                return core.refuse(req, Code::NAME_TAKEN, &text);
            }
            let mut out = Out::new();
            if by_admin {
                log::info!(
                    "admin {} created the account {name}",
                    admin.as_deref().unwrap_or("?")
                );
                out.ok(&req, OkReply::Adduser { name: &name });
            } else {
                log::info!("registered {name}");
                out.ok(&req, OkReply::Register { name: &name });
            }
            core.finish(req, out);
        });
        self.release(conn);
    }

    pub(super) fn login(&mut self, mut req: Req, name: String, password: Password) {
        let key = Key::of(&name);
        // Only a name that could exist has a back-off of its own (any such name, account or not,
        // so that the replies do not tell which names exist).
        let tracked = Name::parse(&name).is_ok().then(|| key.clone());
        let addr = self.peer_key(req.conn);
        let account = self.accounts.get(&key).map(|a| &**a);
        if let Some(r) =
            self.guard
                .login_refusal(addr, &key, account, &self.settings.limits, self.now)
        {
            return self.rate_limited(req, r);
        }
        let phc = account.and_then(|a| a.phc.clone());
        let known = phc.is_some();
        // An unknown name costs the same hash as a known one, so timing does not tell them apart.
        let phc = phc.unwrap_or_else(|| self.settings.dummy_phc.clone());
        if self.hash_full() {
            return self.refuse(
                req,
                Code::SERVER_BUSY,
                "the server is busy; try again in a moment",
            );
        }
        let conn = req.conn;
        self.reserve(&mut req);
        let key = known.then_some(key);
        let checked = phc.clone();
        self.hash(
            conn,
            HashJob::Verify(password, phc),
            move |core, outcome| core.login_verified(req, key, tracked, checked, outcome),
        );
        self.hold(conn);
    }

    /// True when `key` is an account whose password hash is still `phc`: a password checked
    /// against a hash that has since been replaced (PASSWORD) or removed (UNREGISTER) is no
    /// longer the account's password. (Every hash has a salt of its own, so a replaced hash never
    /// equals the one it replaced.)
    pub(super) fn still_has_password(&self, key: &Key, phc: &Phc) -> bool {
        self.accounts
            .get(key)
            .and_then(|a| a.phc.as_ref())
            .is_some_and(|current| current == phc)
    }

    fn login_verified(
        &mut self,
        req: Req,
        key: Option<Key>,
        tracked: Option<Key>,
        phc: Phc,
        outcome: HashOutcome,
    ) {
        let ok = match outcome {
            HashOutcome::Verified(ok) => ok,
            // Its connection closed before the hash started: nobody to answer.
            HashOutcome::Cancelled => return,
            other => return self.internal_error(req, &format!("hashing: {other:?}")),
        };
        let conn = req.conn;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let addr = c.peer.key();
        let key = match key {
            Some(k)
                if ok && c.key().is_none() && !c.closing && self.still_has_password(&k, &phc) =>
            {
                k
            }
            _ => {
                log::debug!("failed login from {}", c.peer);
                self.tally.count("failed logins", addr);
                self.settings.metrics.logins_failed.inc();
                if !ok {
                    self.guard.login_failed(
                        addr,
                        tracked.as_ref(),
                        &self.settings.limits,
                        self.now,
                    );
                }
                self.refuse(req, Code::BAD_CREDENTIALS, "wrong name or password");
                return self.release(conn);
            }
        };
        self.guard.login_succeeded(&key);
        // Told only to whoever knows the password: the reply reveals nothing to anyone else.
        if let Some(why) = self.suspension(&key) {
            self.refuse(req, Code::SUSPENDED, &why);
            return self.release(conn);
        }
        self.enter(req, key, Via::Password);
    }

    /// Why the account cannot log in, if an operator suspended it: the sentence of its
    /// `SUSPENDED` reply.
    pub(super) fn suspension(&self, key: &Key) -> Option<String> {
        let s = self.accounts.get(key)?.ties().suspended.as_ref()?;
        Some(if s.reason.is_empty() {
            "this account is suspended by the server's operators".to_owned()
        } else {
            format!(
                "this account is suspended by the server's operators: {}",
                s.reason
            )
        })
    }

    /// The one login path after the credentials are checked, for LOGIN and RESUME alike: the
    /// connection is attached to the account, the answer and the login pushes go out, friends
    /// learn the account came online, and the backlog follows. The connection is held until the
    /// backlog is sent.
    pub(super) fn enter(&mut self, req: Req, key: Key, via: Via) {
        let conn = req.conn;
        // The account table's own copy of the key, shared by the connection and the online set:
        // the one LOGIN made from the name it was given is dropped here.
        let key = match self.accounts.get_key_value(&key) {
            Some((k, _)) => k.clone(),
            None => key,
        };
        let addr = self.peer_key(conn);
        self.remember_address(&key, addr);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.state = ConnState::LoggedIn(key.clone());
        if let Via::Token(id) = via {
            c.device_token = Some(id);
            c.resumed = true;
        }
        let peer = c.peer;
        let Some(acct) = self.accounts.get_mut(&key) else {
            return self.internal_error(req, "an account vanished while logging in");
        };
        acct.conns.push(conn);
        super::rooms::connections_changed(&mut self.rooms, &acct.rooms);
        let first = acct.conns.len() == 1;
        // While writes fail the backlog stays kept: delivering it means committing its removal
        // first (spec 6.3), and the login is not held up waiting for that.
        let pending = if self.store_failing {
            Inbox::default()
        } else {
            acct.ties_if_any()
                .map(|t| std::mem::take(&mut t.inbox))
                .unwrap_or_default()
        };
        self.settings.metrics.login(match via {
            Via::Password => LoginKind::Password,
            Via::Token(_) => LoginKind::Token,
        });
        match via {
            Via::Password => log::info!("{} logged in from {peer}", acct.name),
            // No hash bounds how often a token logs in: these are counted in the log's summary.
            Via::Token(id) => log::debug!(
                "{} logged in from {peer} with token {}",
                acct.name,
                crate::proto::token::format_id(id)
            ),
        }
        if let Via::Token(_) = via {
            self.tally.count("logins with a device token", addr);
        }

        let unread = self.unread_rooms(&key);
        let nothing_more = pending.total() == 0 && unread.is_empty();
        let mut out = Out::new();
        self.login_answer(&req, &key, via, nothing_more, &mut out);
        self.finish(req, out);
        if first {
            self.online.insert(key.clone());
            self.announce_presence(&key, true);
        }
        if nothing_more {
            return self.release(conn);
        }
        // The unread rooms, then the backlog, follow the answer; the connection is held until
        // both are sent.
        self.hold(conn);
        let Some(unread_slot) = self.open_slot(conn, 0) else {
            return;
        };
        let Some(slot) = self.open_slot(conn, 0) else {
            return;
        };
        self.unread_lines(unread, move |core, lines| {
            core.fill(conn, unread_slot, lines);
            if pending.total() == 0 {
                let mut out = Out::new();
                out.line(&ServerLine::BacklogEnd { count: 0 });
                core.fill(conn, slot, out);
                return core.release(conn);
            }
            let user = key.as_str().to_owned();
            core.store(StoreOp::ReadBacklog { user }, move |core, reply| {
                core.backlog_read(conn, slot, key, pending, reply)
            });
        });
    }

    /// `OK LOGIN` or `OK RESUME`, then a PRESENCE line per friend and a FRIENDSHIP line per
    /// request waiting, in name order, and an INVITED line per invitation waiting, in room name
    /// order; `BACKLOG-END 0` too when nothing is kept and no room has unread messages.
    fn login_answer(&self, req: &Req, key: &Key, via: Via, no_backlog: bool, out: &mut Out) {
        let Some(acct) = self.accounts.get(key) else {
            return;
        };
        let name = &acct.name;
        out.ok(
            req,
            match via {
                Via::Password => OkReply::Login { name },
                Via::Token(_) => OkReply::Resume { name },
            },
        );
        // The account's own away message first, so a client learns it is still away.
        if let Some(text) = acct.ties().away.as_deref() {
            out.line(&ServerLine::Away {
                name,
                text: Some(text),
            });
        }
        let mut friends: Vec<(&Key, &FriendState)> = acct.ties().friends.iter().collect();
        friends.sort_by(|a, b| a.0.cmp(b.0));
        // Every friend's presence first (with its away message), then the requests (spec 4.2).
        for (k, _) in friends.iter().filter(|(_, s)| **s == FriendState::Friends) {
            let Some(other) = self.accounts.get(*k) else {
                continue;
            };
            out.line(&ServerLine::Presence {
                name: &other.name,
                presence: Presence::of(self.is_online(k)),
            });
            if let Some(text) = other.ties().away.as_deref() {
                out.line(&ServerLine::Away {
                    name: &other.name,
                    text: Some(text),
                });
            }
        }
        for (k, _) in friends.iter().filter(|(_, s)| **s == FriendState::Incoming) {
            if let Some(other) = self.accounts.get(*k) {
                out.line(&ServerLine::Friendship {
                    name: &other.name,
                    event: FriendshipEvent::Requested,
                });
            }
        }
        self.invited_lines(key, out);
        if no_backlog {
            out.line(&ServerLine::BacklogEnd { count: 0 });
        }
    }

    /// The backlog was read (beside the writer, in a read transaction). Its entries are removed
    /// durably before the messages are sent (spec 6.1, 6.3): a crash in between keeps them for the
    /// next login rather than losing them.
    fn backlog_read(
        &mut self,
        conn: ConnId,
        slot: SlotId,
        key: Key,
        pending: Inbox,
        reply: StoreReply,
    ) {
        let msgs = match reply {
            StoreReply::Backlog(msgs) => msgs,
            other => {
                // Nothing was removed: the messages stay kept for a later login. The login itself
                // is complete, so it ends as usual.
                log::error!(
                    "internal error: the offline backlog of {key} could not be read: {}",
                    unreadable(&other)
                );
                if let Some(a) = self.accounts.get_mut(&key) {
                    a.ties_mut().inbox.merge(pending);
                }
                let mut out = Out::new();
                out.line(&ServerLine::BacklogEnd { count: 0 });
                self.fill(conn, slot, out);
                return self.release(conn);
            }
        };
        if self.conns.get(&conn).is_none_or(|c| c.closing) {
            // The connection left (or the server is stopping) before its backlog arrived: nothing
            // was removed, so the messages stay kept for the next login.
            if let Some(a) = self.accounts.get_mut(&key) {
                a.ties_mut().inbox.merge(pending);
            }
            let mut out = Out::new();
            out.line(&ServerLine::BacklogEnd { count: 0 });
            return self.fill(conn, slot, out);
        }
        let Some(&upto) = msgs.last() else {
            let mut out = Out::new();
            out.line(&ServerLine::BacklogEnd { count: 0 });
            self.fill(conn, slot, out);
            return self.release(conn);
        };
        // Removing every entry up to the last id read removes exactly the ones read: while this
        // connection is logged in, the account is online, so nothing new is kept for it, and what
        // was kept before the login was committed before the read was sent.
        let clear = StoreOp::ClearBacklog {
            user: key.as_str().to_owned(),
            upto,
        };
        // In a cluster, what the backlog gives is not pushed again when its route comes.
        self.replayed(&key, &msgs);
        // Then the messages go out part by part as the client reads them, and the stream's end
        // (BACKLOG-END) completes the login.
        self.store(clear, move |core, _| {
            if core.conns.get(&conn).is_none_or(|c| c.closing) {
                // The connection left while the entries were being removed: nothing was sent, so
                // the messages go back into the backlog for the next login, counted as they were
                // before this login took them.
                for &id in &msgs {
                    let user = key.as_str().to_owned();
                    core.store(StoreOp::AddPending { user, id }, |_, _| {});
                }
                if let Some(a) = core.accounts.get_mut(&key) {
                    a.ties_mut().inbox.merge(pending);
                }
                let mut out = Out::new();
                out.line(&ServerLine::BacklogEnd { count: 0 });
                return core.fill(conn, slot, out);
            }
            core.fill_with_stream(conn, slot, Stream::backlog(msgs));
        });
    }

    /// The address key of a connection, if the limits per address count it.
    pub(super) fn peer_key(&self, conn: ConnId) -> Option<AddrKey> {
        self.conns.get(&conn).and_then(|c| c.peer.key())
    }

    /// Answers `RATE_LIMITED`, saying when to try again.
    pub(super) fn rate_limited(&mut self, req: Req, r: Refusal) {
        let source = self.peer_key(req.conn);
        self.tally
            .count("logins and registrations refused as rate limited", source);
        let secs = (r.wait_ms.max(1) as u64).div_ceil(1000);
        let text = format!("{}; try again in {secs} s", r.why);
        self.refuse_for(req, Code::RATE_LIMITED, r.wait_ms, &text);
    }

    pub(super) fn logout(&mut self, req: Req) {
        let Some(c) = self.conns.get_mut(&req.conn) else {
            return;
        };
        c.device_token = None;
        let resumed = std::mem::take(&mut c.resumed);
        if let ConnState::LoggedIn(key) = std::mem::replace(&mut c.state, ConnState::Guest) {
            self.detach(req.conn, &key, resumed);
        }
        let mut out = Out::new();
        out.ok(&req, OkReply::Logout);
        self.finish(req, out);
    }

    pub(super) fn quit(&mut self, req: Req) {
        let Some(c) = self.conns.get_mut(&req.conn) else {
            return;
        };
        c.closing = true;
        let resumed = std::mem::take(&mut c.resumed);
        if let ConnState::LoggedIn(key) = std::mem::replace(&mut c.state, ConnState::Guest) {
            self.detach(req.conn, &key, resumed);
        }
        let mut out = Out::new();
        out.ok(&req, OkReply::Quit);
        self.finish_with(req, out, true);
    }
}
