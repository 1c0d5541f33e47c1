//! AWAY, WHOIS and last seen: what an account shows of itself.
//!
//! The away message is the account's, not a connection's: it stays set when the account goes
//! offline, and across restarts, until AWAY clears it. Friends are told when it changes, and see it
//! at login; a sender is told it after the OK of a message to an away account.
//!
//! Last seen is when the account's last connection left. Memory has it exactly; the store gets it
//! when it is at least [`LAST_SEEN_WRITE_INTERVAL_MS`] newer than what the store has, without the
//! core waiting for the write, and for everyone online when the server stops. WHOIS shows it to
//! friends only.

use super::out::{self, Out};
use super::{ConnId, Core, Req};
use crate::config::LAST_SEEN_WRITE_INTERVAL_MS;
use crate::outbox::Chunk;
use crate::proto::code::Code;
use crate::proto::name::{Key, Name};
use crate::proto::server_line::{OkReply, Presence, ServerLine};
use crate::store::{FriendState, StoreOp};

impl Core {
    /// Notes that the account was online until now (its last connection left, or the server is
    /// stopping), and writes it unless the store's time is recent enough and `always` is false.
    pub(super) fn saw(&mut self, key: &Key, always: bool) {
        let now = self.now;
        let Some(acct) = self.accounts.get_mut(key) else {
            return;
        };
        acct.seen.last = now;
        let stale = always
            || acct
                .seen
                .written()
                .is_none_or(|t| now - t >= LAST_SEEN_WRITE_INTERVAL_MS);
        // An account being deleted is not written to: its deletion is on its way to the store.
        if stale && acct.phc.is_some() {
            acct.seen.written = now;
            let op = StoreOp::SetLastSeen {
                user: key.as_str().to_owned(),
                ms: now,
            };
            self.store(op, |_, _| {});
        }
    }

    /// The `AWAY <name> [<text>]` line of an account, as it is now.
    pub(super) fn away_line(&self, key: &Key) -> Option<ServerLine<'_>> {
        let acct = self.accounts.get(key)?;
        Some(ServerLine::Away {
            name: &acct.name,
            text: acct.ties().away.as_deref(),
        })
    }

    /// Whether the account has an away message set.
    pub(super) fn is_away(&self, key: &Key) -> bool {
        self.accounts
            .get(key)
            .is_some_and(|a| a.ties().away.is_some())
    }

    pub(super) fn away(&mut self, mut req: Req, text: Option<String>) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let Some(acct) = self.accounts.get_mut(&me) else {
            return;
        };
        let changed = acct.ties().away != text;
        let set = text.is_some();
        acct.ties_mut().away = text.clone();
        let op = StoreOp::SetAway {
            user: me.as_str().to_owned(),
            away: text,
        };
        let conn = req.conn;
        self.reserve(&mut req);
        self.store(op, move |core, _| {
            if changed {
                core.announce_away(&me, conn);
            }
            let mut out = Out::new();
            out.ok(&req, OkReply::Away { set });
            core.finish(req, out);
        });
    }

    /// Tells the account's online friends, and its own other connections, its away message as it
    /// is now (`except`: the connection that set it; 0 when it was set on another node).
    pub(super) fn announce_away(&mut self, me: &Key, except: ConnId) {
        let Some(line) = self.away_line(me) else {
            return;
        };
        let chunk = out::shared(&line);
        let Some(acct) = self.accounts.get(me) else {
            return;
        };
        let friends: Vec<Key> = acct
            .ties()
            .friends
            .iter()
            .filter(|(k, s)| **s == FriendState::Friends && self.online.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for f in &friends {
            self.push_to_account(f, &chunk);
        }
        super::fan_out(
            &self.accounts,
            &self.conns,
            &mut self.overflowed,
            std::iter::once(me),
            &chunk,
            Some(except),
        );
    }

    /// The AWAY lines that follow a message's OK: one per away recipient other than the sender,
    /// in the order given.
    pub(super) fn away_notices(&self, sender: &Key, recipients: &[Key], out: &mut Out) {
        for r in recipients.iter().filter(|r| *r != sender) {
            if self.is_away(r) {
                if let Some(line) = self.away_line(r) {
                    out.line(&line);
                }
            }
        }
    }

    /// The AWAY line of `key`, for a push, if it is away.
    pub(super) fn away_chunk(&self, key: &Key) -> Option<Chunk> {
        if !self.is_away(key) {
            return None;
        }
        self.away_line(key).map(|l| out::shared(&l))
    }

    pub(super) fn whois(&mut self, req: Req, name: Name) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let key = name.key();
        let Some(acct) = self.accounts.get(&key).filter(|a| a.phc.is_some()) else {
            let text = format!("no such user: {name}");
            return self.refuse(req, Code::UNKNOWN_USER, &text);
        };
        let online = self.is_online(&key);
        // Last seen is for friends (and oneself), and means something only while offline.
        let seen = if !online && (key == me || self.are_friends(&me, &key)) {
            acct.seen.last()
        } else {
            None
        };
        let mut out = Out::new();
        out.ok(
            &req,
            OkReply::Whois {
                name: &acct.name,
                presence: Presence::of(online),
                last_seen_ms: seen,
                away: acct.ties().away.as_deref().unwrap_or(""),
            },
        );
        self.finish(req, out);
    }
}
