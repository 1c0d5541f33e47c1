//! REGISTER, LOGIN, LOGOUT and QUIT: accounts and connection state.

use std::collections::HashMap;

use super::{recipients, Account, ConnId, ConnState, Core, Slot, Waiting};
use crate::auth::HashJob;
use crate::proto::name::{Name, Password};
use crate::proto::reply::{self, Code};
use crate::store::worker::Ticket;
use crate::store::{AccountRecord, FriendState, MessageRecord, StoreOp};

impl Core {
    pub(super) fn register(
        &mut self,
        conn: ConnId,
        label: Option<String>,
        name: Name,
        password: Password,
    ) {
        let key = name.key();
        if self.accounts.contains_key(&key) {
            return self.refuse(
                conn,
                label.as_deref(),
                "REGISTER",
                Code::NAME_TAKEN,
                &format!("the name {name} is taken"),
            );
        }
        let waiting = Waiting::RegisterHash {
            conn,
            label: label.clone(),
            key: key.clone(),
        };
        let Some(ticket) = self.hash(HashJob::Hash(password), waiting) else {
            return self.refuse(
                conn,
                label.as_deref(),
                "REGISTER",
                Code::SERVER_BUSY,
                "the server is busy; try again in a moment",
            );
        };
        // The name is reserved now, so a second REGISTER of it cannot race this one.
        self.accounts.insert(
            key,
            Account {
                name: name.to_string(),
                phc: None,
                friends: HashMap::new(),
                pending: 0,
                conns: Vec::new(),
            },
        );
        self.reserve(conn, ticket, 1);
        self.set_busy(conn, true);
    }

    pub(super) fn register_hashed(
        &mut self,
        conn: ConnId,
        ticket: Ticket,
        label: Option<String>,
        key: String,
        phc: String,
    ) {
        let Some(acct) = self.accounts.get_mut(&key) else {
            return;
        };
        acct.phc = Some(phc.clone().into());
        let name = acct.name.clone();
        let record = AccountRecord {
            name: name.clone(),
            phc,
            created_ms: self.now,
        };
        let stored = self.store(
            StoreOp::CreateAccount(record),
            Waiting::RegisterStored { conn, label, name },
        );
        // The reply waits for the commit: move this command's slot to the new ticket.
        if let Some(c) = self.conns.get_mut(&conn) {
            if let Some(s) = c.slots.iter_mut().find(|s| s.ticket == Some(ticket)) {
                s.ticket = Some(stored);
            }
        }
        self.set_busy(conn, false);
    }

    pub(super) fn register_stored(
        &mut self,
        conn: ConnId,
        ticket: Ticket,
        label: Option<String>,
        name: String,
    ) {
        log::info!("registered {name}");
        let mut out = String::new();
        reply::ok(&mut out, label.as_deref(), "REGISTER", &name);
        self.fill(conn, ticket, out);
    }

    pub(super) fn login(
        &mut self,
        conn: ConnId,
        label: Option<String>,
        name: String,
        password: Password,
    ) {
        let key = name.to_ascii_lowercase();
        let phc = self.accounts.get(&key).and_then(|a| a.phc.clone());
        let known = phc.is_some();
        // An unknown name costs the same hash as a known one, so timing does not tell them apart.
        let phc = phc.unwrap_or_else(|| self.settings.dummy_phc.clone());
        let waiting = Waiting::LoginVerify {
            conn,
            label: label.clone(),
            key: known.then_some(key),
        };
        let Some(ticket) = self.hash(HashJob::Verify(password, phc), waiting) else {
            return self.refuse(
                conn,
                label.as_deref(),
                "LOGIN",
                Code::SERVER_BUSY,
                "the server is busy; try again in a moment",
            );
        };
        self.reserve(conn, ticket, 1);
        self.set_busy(conn, true);
    }

    pub(super) fn login_verified(
        &mut self,
        conn: ConnId,
        ticket: Ticket,
        label: Option<String>,
        key: Option<String>,
        ok: bool,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let key = match key {
            Some(k) if ok && c.key().is_none() && !c.closing => k,
            _ => {
                log::info!("failed login from {}", c.peer);
                let mut out = String::new();
                reply::fail(
                    &mut out,
                    label.as_deref(),
                    "LOGIN",
                    Code::BAD_CREDENTIALS,
                    "wrong name or password",
                );
                self.fill(conn, ticket, out);
                return self.set_busy(conn, false);
            }
        };
        c.state = ConnState::LoggedIn(key.clone());
        let peer = c.peer.clone();
        let Some(acct) = self.accounts.get_mut(&key) else {
            return;
        };
        acct.conns.push(conn);
        let first = acct.conns.len() == 1;
        let pending = std::mem::take(&mut acct.pending);
        log::info!("{} logged in from {peer}", acct.name);

        let Some(acct) = self.accounts.get(&key) else {
            return;
        };
        let mut out = String::new();
        reply::ok(&mut out, label.as_deref(), "LOGIN", &acct.name);
        let mut friends: Vec<(&String, &FriendState)> = acct.friends.iter().collect();
        friends.sort_by(|a, b| a.0.cmp(b.0));
        for (k, state) in &friends {
            let Some(other) = self.accounts.get(*k) else {
                continue;
            };
            match state {
                FriendState::Friends => {
                    let status = if self.online.contains(*k) {
                        "ONLINE"
                    } else {
                        "OFFLINE"
                    };
                    reply::line(&mut out, "PRESENCE", &format!("{} {status}", other.name));
                }
                FriendState::Incoming => {
                    reply::line(&mut out, "FRIENDSHIP", &format!("{} REQUESTED", other.name))
                }
                FriendState::Outgoing => {}
            }
        }
        if pending == 0 {
            reply::line(&mut out, "BACKLOG-END", "0");
        }
        self.fill(conn, ticket, out);
        if pending > 0 {
            let t = self.store(
                StoreOp::TakeBacklog { user: key.clone() },
                Waiting::Backlog {
                    conn,
                    key: key.clone(),
                },
            );
            // Extra output of the LOGIN, not a command's answer: it gives back no credit.
            self.reserve(conn, t, 0);
        }
        if first {
            self.online.insert(key.clone());
            self.announce_presence(&key, true);
        }
        self.set_busy(conn, false);
    }

    pub(super) fn backlog(
        &mut self,
        conn: ConnId,
        ticket: Ticket,
        key: String,
        msgs: Vec<MessageRecord>,
    ) {
        if self.conns.get(&conn).is_none_or(|c| c.closing) {
            // The connection left, or is closing (QUIT, shutdown), before its backlog arrived:
            // keep the messages for the next login rather than lose them. The login's answer still
            // ends, with none of them, so that what waits behind it (the OK QUIT) goes out.
            for m in &msgs {
                self.keep_for_later(&key, m.id);
            }
            let mut out = String::new();
            reply::line(&mut out, "BACKLOG-END", "0");
            return self.fill(conn, ticket, out);
        }
        let mut out = String::new();
        for m in &msgs {
            let to = recipients(&m.to);
            reply::message(&mut out, "MESSAGE", m.id, m.time_ms, &m.from, to, &m.text);
        }
        reply::line(&mut out, "BACKLOG-END", &msgs.len().to_string());
        self.fill(conn, ticket, out);
    }

    pub(super) fn logout(&mut self, conn: ConnId, label: Option<String>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let ConnState::LoggedIn(key) = std::mem::replace(&mut c.state, ConnState::Guest) {
            self.detach(conn, &key);
        }
        let mut out = String::new();
        reply::ok(&mut out, label.as_deref(), "LOGOUT", "");
        self.answer(conn, out);
    }

    pub(super) fn quit(&mut self, conn: ConnId, label: Option<String>, _reason: Option<String>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.closing = true;
        if let ConnState::LoggedIn(key) = std::mem::replace(&mut c.state, ConnState::Guest) {
            self.detach(conn, &key);
        }
        let mut out = String::new();
        reply::ok(&mut out, label.as_deref(), "QUIT", "");
        self.push_slot(
            conn,
            Slot {
                ticket: None,
                text: out,
                finals: 1,
                close_after: true,
            },
        );
    }
}
