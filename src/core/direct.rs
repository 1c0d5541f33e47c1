//! DIRECT (spec 4.39, 5.12): the server introduces two clients that want to talk directly, and
//! carries nothing of what they then say.
//!
//! An offer says where the offering client listens and the fingerprint of the certificate it will
//! show; the server passes it, with the offerer's authenticated name, to the other user's
//! connections. The answer (the accepting client's own fingerprint, or a refusal) goes back to the
//! one connection that offered, since that is the client that listens. Offers live in memory only,
//! for [`DIRECT_OFFER_SECS`] at most: nothing here is stored, so no OK waits for a commit.
//!
//! An offer ends exactly once, and both sides hear how: accepted, declined, withdrawn (cancelled,
//! or the offering connection left), expired, or the other user went offline. Each account has at
//! most [`MAX_OFFERS_OUT`] offers waiting and [`MAX_OFFERS_IN`] waiting for it, so the table is
//! bounded by the accounts online.

use std::collections::{HashMap, VecDeque};

use super::out::{self, Out};
use super::{ConnId, Core, Req};
use crate::config::{DIRECT_OFFER_SECS, MAX_OFFERS_IN, MAX_OFFERS_OUT};
use crate::outbox::Chunk;
use crate::proto::code::Code;
use crate::proto::command::DirectOp;
use crate::proto::direct::{Fingerprint, PeerAddress};
use crate::proto::name::{Key, Name};
use crate::proto::server_line::{DirectEvent, DirectReply, OkReply, ServerLine};

/// One offer waiting for its answer.
struct Offer {
    /// The connection that offered: its client listens, and hears the answer.
    conn: ConnId,
    address: PeerAddress,
    fingerprint: Fingerprint,
    /// When it expires (the core's clock, milliseconds).
    expires: i64,
}

/// The offers waiting, with their indexes.
#[derive(Default)]
pub(super) struct Offers {
    /// (offerer, recipient) -> the offer.
    by_pair: HashMap<(Key, Key), Offer>,
    /// offerer -> recipients of its waiting offers (at most [`MAX_OFFERS_OUT`]).
    out: HashMap<Key, Vec<Key>>,
    /// recipient -> offerers waiting for its answer (at most [`MAX_OFFERS_IN`]).
    incoming: HashMap<Key, Vec<Key>>,
    /// (expiry, offerer, recipient), in the order the offers were made; an entry whose offer
    /// ended or was made again is skipped.
    deadlines: VecDeque<(i64, Key, Key)>,
}

impl Offers {
    fn insert(&mut self, from: Key, to: Key, offer: Offer) {
        self.deadlines
            .push_back((offer.expires, from.clone(), to.clone()));
        self.out.entry(from.clone()).or_default().push(to.clone());
        self.incoming
            .entry(to.clone())
            .or_default()
            .push(from.clone());
        self.by_pair.insert((from, to), offer);
    }

    fn remove(&mut self, from: &Key, to: &Key) -> Option<Offer> {
        let offer = self.by_pair.remove(&(from.clone(), to.clone()))?;
        drop_from(&mut self.out, from, to);
        drop_from(&mut self.incoming, to, from);
        if self.by_pair.is_empty() {
            // An idle server keeps no queue.
            self.deadlines = VecDeque::new();
        }
        Some(offer)
    }

    fn out_of(&self, from: &Key) -> usize {
        self.out.get(from).map_or(0, Vec::len)
    }

    fn waiting_for(&self, to: &Key) -> usize {
        self.incoming.get(to).map_or(0, Vec::len)
    }

    /// Offers waiting, in all.
    pub(super) fn len(&self) -> usize {
        self.by_pair.len()
    }
}

fn drop_from(index: &mut HashMap<Key, Vec<Key>>, key: &Key, other: &Key) {
    if let Some(list) = index.get_mut(key) {
        list.retain(|k| k != other);
        if list.is_empty() {
            index.remove(key);
        }
    }
}

impl Core {
    /// DIRECT and its subcommands.
    pub(super) fn direct(&mut self, req: Req, op: DirectOp) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        match op {
            DirectOp::Offer {
                to,
                address,
                fingerprint,
            } => self.offer(req, me, to, address, fingerprint),
            DirectOp::Accept { from, fingerprint } => self.answer(req, me, from, Some(fingerprint)),
            DirectOp::Decline { from } => self.answer(req, me, from, None),
            DirectOp::Cancel { to } => self.cancel_offer(req, me, to),
        }
    }

    /// The other account named `name`, as registered, or the refusal (`SELF_TARGET`,
    /// `UNKNOWN_USER`).
    fn direct_peer(&mut self, req: Req, me: &Key, name: &Name) -> Option<(Req, Key, String)> {
        let other = name.key();
        if other == *me {
            self.refuse(
                req,
                Code::SELF_TARGET,
                "that is your own account; a direct session is with someone else",
            );
            return None;
        }
        match self.accounts.get(&other) {
            Some(a) if a.phc.is_some() => {
                let shown = a.name();
                Some((req, other, shown))
            }
            _ => {
                let text = format!("no such user: {name}");
                self.refuse(req, Code::UNKNOWN_USER, &text);
                None
            }
        }
    }

    fn offer(
        &mut self,
        req: Req,
        me: Key,
        to: Name,
        address: PeerAddress,
        fingerprint: Fingerprint,
    ) {
        let Some((req, other, shown)) = self.direct_peer(req, &me, &to) else {
            return;
        };
        // Who may reach whom is the same as for MSG (spec 4.19, 4.22): a blocked user's offer
        // never arrives, and an account that takes direct messages from friends only takes
        // offers from friends only. Checked before whether the user is online, which a blocked
        // user is not told.
        match self.dm_refusal(&me, &other) {
            Some(Code::BLOCKED) => {
                let text = format!("a block stands between you and {shown}; nothing was sent");
                return self.refuse(req, Code::BLOCKED, &text);
            }
            Some(code) => {
                let text =
                    format!("{shown} takes direct messages from friends only; nothing was sent");
                return self.refuse(req, code, &text);
            }
            None => {}
        }
        if !self.online.contains(&other) {
            let text = format!("{shown} is offline; a direct session needs you both online");
            return self.refuse(req, Code::USER_OFFLINE, &text);
        }
        if self
            .offers
            .by_pair
            .contains_key(&(me.clone(), other.clone()))
        {
            let text = format!(
                "your offer to {shown} is still waiting; DIRECT CANCEL {shown} to make a new one"
            );
            return self.refuse(req, Code::ALREADY_OFFERED, &text);
        }
        if self.offers.out_of(&me) >= MAX_OFFERS_OUT {
            let text = format!(
                "you have {MAX_OFFERS_OUT} offers waiting, the most you may; cancel one or wait"
            );
            return self.refuse(req, Code::TOO_MANY_OFFERS, &text);
        }
        if self.offers.waiting_for(&other) >= MAX_OFFERS_IN {
            let text = format!("{shown} has as many offers waiting as an account may; try later");
            return self.refuse(req, Code::TOO_MANY_OFFERS, &text);
        }
        let Some(my_name) = self.accounts.get(&me).map(|a| a.name()) else {
            return;
        };
        let push = out::shared(&ServerLine::Direct {
            name: &my_name,
            event: DirectEvent::Offer {
                address: address.as_str(),
                fingerprint: fingerprint.as_str(),
            },
        });
        let expires = self.now + DIRECT_OFFER_SECS as i64 * 1000;
        self.offers.insert(
            me,
            other.clone(),
            Offer {
                conn: req.conn,
                address,
                fingerprint,
                expires,
            },
        );
        // The push is queued before the OK (spec 6.4): once the offerer has its OK, a PING of the
        // other user's connection finds the offer before its PONG.
        self.push_to_account(&other, &push);
        let mut out = Out::new();
        out.ok(
            &req,
            OkReply::Direct(DirectReply::Offer {
                name: &shown,
                expires_secs: DIRECT_OFFER_SECS,
            }),
        );
        self.finish(req, out);
    }

    /// DIRECT ACCEPT (with the accepting client's fingerprint) or DIRECT DECLINE.
    fn answer(&mut self, req: Req, me: Key, from: Name, accept: Option<Fingerprint>) {
        let Some((req, other, shown)) = self.direct_peer(req, &me, &from) else {
            return;
        };
        if accept.is_some() && self.barred(&me, &other) {
            // A block made while the offer waited, not yet committed (its commit ends the offer).
            let text = format!("a block stands between you and {shown}; nothing was sent");
            return self.refuse(req, Code::BLOCKED, &text);
        }
        let Some(offer) = self.offers.remove(&other, &me) else {
            let text = format!("{shown} has no direct-session offer waiting for you");
            return self.refuse(req, Code::NO_OFFER, &text);
        };
        let Some(my_name) = self.accounts.get(&me).map(|a| a.name()) else {
            return;
        };
        let to_offerer = ServerLine::Direct {
            name: &my_name,
            event: match &accept {
                Some(fp) => DirectEvent::Accepted {
                    fingerprint: fp.as_str(),
                },
                None => DirectEvent::Declined,
            },
        };
        let to_offerer = to_offerer.to_bytes();
        let answered = out::shared(&ServerLine::Direct {
            name: &shown,
            event: DirectEvent::Answered,
        });
        let mut out = Out::new();
        let reply = match &accept {
            Some(_) => DirectReply::Accept {
                name: &shown,
                address: offer.address.as_str(),
                fingerprint: offer.fingerprint.as_str(),
            },
            None => DirectReply::Decline { name: &shown },
        };
        out.ok(&req, OkReply::Direct(reply));
        self.push_to_conn(offer.conn, Chunk::Owned(to_offerer));
        self.push_to_others(&me, req.conn, &answered);
        self.finish(req, out);
    }

    fn cancel_offer(&mut self, req: Req, me: Key, to: Name) {
        let Some((req, other, shown)) = self.direct_peer(req, &me, &to) else {
            return;
        };
        if self.offers.remove(&me, &other).is_none() {
            let text = format!("you have no direct-session offer waiting for {shown}");
            return self.refuse(req, Code::NO_OFFER, &text);
        }
        self.tell_recipient(&me, &other, DirectEvent::Withdrawn);
        let mut out = Out::new();
        out.ok(&req, OkReply::Direct(DirectReply::Cancel { name: &shown }));
        self.finish(req, out);
    }

    /// A block between `blocker` and `blocked` was committed: the offers waiting between them end.
    /// The blocked account's offer is declined (its offering connection is told so, as if the
    /// blocker had declined it), and the blocker's offer is withdrawn from the blocked account's
    /// connections; both are queued now, before the BLOCK's OK. What the blocker's own connections
    /// are to hear (the offer to them withdrawn) is returned, to be queued after that OK.
    pub(super) fn end_offers_for_block(&mut self, blocker: &Key, blocked: &Key) -> Option<Chunk> {
        if self.offers.remove(blocker, blocked).is_some() {
            self.tell_recipient(blocker, blocked, DirectEvent::Withdrawn);
        }
        let offer = self.offers.remove(blocked, blocker)?;
        self.tell_offerer(blocker, offer.conn, DirectEvent::Declined);
        let name = self.accounts.get(blocked).map(|a| a.name())?;
        Some(out::shared(&ServerLine::Direct {
            name: &name,
            event: DirectEvent::Withdrawn,
        }))
    }

    /// Runs on every tick: offers past their time end, and both sides are told.
    pub(super) fn expire_offers(&mut self) {
        while let Some((at, from, to)) = self.offers.deadlines.front().cloned() {
            if at > self.now {
                break;
            }
            self.offers.deadlines.pop_front();
            let current = self
                .offers
                .by_pair
                .get(&(from.clone(), to.clone()))
                .is_some_and(|o| o.expires == at);
            if !current {
                continue;
            }
            if let Some(offer) = self.offers.remove(&from, &to) {
                self.tell_offerer(&to, offer.conn, DirectEvent::Expired);
                self.tell_recipient(&from, &to, DirectEvent::Expired);
            }
        }
    }

    /// A logged-in connection of `key` leaves (closed, or LOGOUT); `offline` when it was the
    /// account's last. Its own offers are withdrawn; offers waiting for the account end, if it
    /// is now offline.
    pub(super) fn direct_conn_left(&mut self, conn: ConnId, key: &Key, offline: bool) {
        let mine: Vec<Key> = self.offers.out.get(key).cloned().unwrap_or_default();
        for to in mine {
            let withdrawn = self
                .offers
                .by_pair
                .get(&(key.clone(), to.clone()))
                .is_some_and(|o| o.conn == conn);
            if withdrawn && self.offers.remove(key, &to).is_some() {
                self.tell_recipient(key, &to, DirectEvent::Withdrawn);
            }
        }
        if offline {
            let waiting: Vec<Key> = self.offers.incoming.get(key).cloned().unwrap_or_default();
            for from in waiting {
                if let Some(offer) = self.offers.remove(&from, key) {
                    self.tell_offerer(key, offer.conn, DirectEvent::Gone);
                }
            }
        }
    }

    /// `DIRECT <about> <event>` to the offering connection.
    fn tell_offerer(&mut self, about: &Key, conn: ConnId, event: DirectEvent<'_>) {
        let Some(name) = self.accounts.get(about).map(|a| a.name()) else {
            return;
        };
        let line = ServerLine::Direct { name: &name, event };
        self.push_to_conn(conn, Chunk::Owned(line.to_bytes()));
    }

    /// `DIRECT <from> <event>` to every connection of `to`.
    fn tell_recipient(&mut self, from: &Key, to: &Key, event: DirectEvent<'_>) {
        let Some(name) = self.accounts.get(from).map(|a| a.name()) else {
            return;
        };
        let chunk = out::shared(&ServerLine::Direct { name: &name, event });
        self.push_to_account(to, &chunk);
    }

    /// Queues a push on one connection.
    fn push_to_conn(&mut self, conn: ConnId, chunk: Chunk) {
        if let Some(c) = self.conns.get(&conn) {
            if c.outbox.push(chunk).is_err() {
                self.overflowed.push(conn);
            }
        }
    }

    /// Queues a push on every logged-in connection of `key` but `skip`.
    fn push_to_others(&mut self, key: &Key, skip: ConnId, chunk: &Chunk) {
        let conns: Vec<ConnId> = self
            .accounts
            .get(key)
            .map(|a| a.conns.iter().copied().filter(|c| *c != skip).collect())
            .unwrap_or_default();
        for c in conns {
            self.push_to_conn(c, chunk.clone());
        }
    }

    /// Offers waiting now (for tests and the fuzzer).
    pub fn offers_waiting(&self) -> usize {
        self.offers.len()
    }
}
