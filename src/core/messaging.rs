//! MSG, GROUP and ALL: a message is committed to the log, then delivered, then acknowledged.
//!
//! Whether a recipient is online is decided when the command runs: an offline recipient gets the
//! message through the backlog at its next login (its backlog entry is written in the same commit),
//! an online one gets it live when the commit finishes. A recipient that was online when the
//! message was sent but has no connection left by the time the commit finishes gets it added to
//! its backlog then, so nothing falls between the two; the OK, sent after the commit, then says
//! KEPT for it.

use std::sync::Arc;

use super::{fan_out, recipients, ConnId, Core, Waiting};
use crate::config::MAX_PENDING_PER_ACCOUNT;
use crate::outbox::Chunk;
use crate::proto::command::Verb;
use crate::proto::name::Name;
use crate::proto::reply::{self, Code};
use crate::store::worker::Ticket;
use crate::store::{MessageRecord, StoreOp, To};

/// A message waiting for its commit.
pub(super) struct Sent {
    pub(super) conn: ConnId,
    pub(super) label: Option<String>,
    pub(super) verb: Verb,
    sender: String,
    id: u64,
    /// The MESSAGE line, encoded once when the message was made; every recipient's outbox shares
    /// these bytes.
    line: Chunk,
    /// Recipient keys that had a connection online when the message was sent.
    online: Vec<String>,
    /// Recipients whose copy went to their offline backlog.
    kept: usize,
}

impl Core {
    /// MSG (one name) and GROUP (a list): all or nothing.
    pub(super) fn send_direct(
        &mut self,
        conn: ConnId,
        label: Option<String>,
        to: Vec<Name>,
        text: String,
        verb: Verb,
    ) {
        let Some(sender) = self.account_of(conn) else {
            return;
        };
        let cmd = verb.name();
        let mut unknown = Vec::new();
        let mut full = Vec::new();
        let mut online = Vec::new();
        let mut offline = Vec::new();
        let mut shown = Vec::with_capacity(to.len());
        for name in &to {
            let key = name.key();
            match self.accounts.get(&key) {
                Some(a) if a.phc.is_some() => {
                    shown.push(a.name.clone());
                    if !a.conns.is_empty() {
                        online.push(key);
                    } else if a.pending >= MAX_PENDING_PER_ACCOUNT {
                        full.push(a.name.clone());
                    } else {
                        offline.push(key);
                    }
                }
                _ => unknown.push(name.as_str()),
            }
        }
        if !unknown.is_empty() {
            let text = format!("no such user: {}", unknown.join(", "));
            return self.refuse(conn, label.as_deref(), cmd, Code::UNKNOWN_USER, &text);
        }
        if !full.is_empty() {
            let text = format!(
                "too many messages are waiting for {}; nothing was sent",
                full.join(", ")
            );
            return self.refuse(conn, label.as_deref(), cmd, Code::INBOX_FULL, &text);
        }
        for key in &offline {
            if let Some(a) = self.accounts.get_mut(key) {
                a.pending += 1;
            }
        }
        let to = if verb == Verb::Msg {
            To::User(shown.pop().unwrap_or_default())
        } else {
            To::Group(shown)
        };
        let kept = offline.len();
        self.commit_message(conn, label, verb, sender, to, text, online, offline, kept);
    }

    /// ALL: to every other online account; stored, never kept for offline delivery.
    pub(super) fn send_all(&mut self, conn: ConnId, label: Option<String>, text: String) {
        let Some(sender) = self.account_of(conn) else {
            return;
        };
        self.commit_message(
            conn,
            label,
            Verb::All,
            sender,
            To::All,
            text,
            Vec::new(),
            Vec::new(),
            0,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_message(
        &mut self,
        conn: ConnId,
        label: Option<String>,
        verb: Verb,
        sender: String,
        to: To,
        text: String,
        online: Vec<String>,
        pending_for: Vec<String>,
        kept: usize,
    ) {
        let from = self
            .accounts
            .get(&sender)
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let id = self.next_id;
        self.next_id += 1;
        let record = MessageRecord {
            id,
            time_ms: self.now,
            from,
            to,
            text,
        };
        let mut line = String::with_capacity(64 + record.text.len());
        let to = recipients(&record.to);
        reply::message(
            &mut line,
            "MESSAGE",
            id,
            record.time_ms,
            &record.from,
            to,
            &record.text,
        );
        let sent = Sent {
            conn,
            label,
            verb,
            sender,
            id,
            line: Chunk::Shared(Arc::from(line.into_bytes())),
            online,
            kept,
        };
        let ticket = self.store(
            StoreOp::AppendMessage {
                msg: record,
                pending_for,
            },
            Waiting::Message(Box::new(sent)),
        );
        self.reserve(conn, ticket, 1);
    }

    pub(super) fn message_stored(&mut self, ticket: Ticket, sent: Sent) {
        let (id, chunk) = (sent.id, &sent.line);
        let mut out = String::new();
        match sent.verb {
            Verb::All => {
                let others = self
                    .online
                    .iter()
                    .map(String::as_str)
                    .filter(|k| *k != sent.sender);
                fan_out(
                    &self.accounts,
                    &self.conns,
                    &mut self.overflowed,
                    others,
                    chunk,
                    None,
                );
                let users = self.online.len() - usize::from(self.online.contains(&sent.sender));
                let details = format!("{} DELIVERED {users}", id);
                reply::ok(&mut out, sent.label.as_deref(), "ALL", &details);
            }
            verb => {
                // The sender's own connection, when it is a recipient (MSG to yourself, a GROUP
                // naming you), gets its copy after the OK: a command's reply comes first (spec 6.4).
                let own_copy = self
                    .conns
                    .get(&sent.conn)
                    .and_then(|c| c.key())
                    .is_some_and(|k| sent.online.iter().any(|o| o == k));
                let mut late_kept = 0;
                for key in &sent.online {
                    let keys = std::iter::once(key.as_str());
                    let skip = Some(sent.conn);
                    let reached = fan_out(
                        &self.accounts,
                        &self.conns,
                        &mut self.overflowed,
                        keys,
                        chunk,
                        skip,
                    );
                    if reached == 0 {
                        self.keep_for_later(key, id);
                        late_kept += 1;
                    }
                }
                // The OK says what happened once the message was committed: a recipient that
                // left meanwhile had it kept, not delivered.
                let kept = sent.kept + late_kept;
                let delivered = sent.online.len() - late_kept;
                let details = if verb == Verb::Msg {
                    format!("{} {}", id, if kept == 0 { "DELIVERED" } else { "KEPT" })
                } else {
                    format!("{} DELIVERED {} KEPT {}", id, delivered, kept)
                };
                reply::ok(&mut out, sent.label.as_deref(), verb.name(), &details);
                if own_copy {
                    out.push_str(&String::from_utf8_lossy(chunk.as_bytes()));
                }
            }
        }
        self.fill(sent.conn, ticket, out);
    }

    /// Adds a stored message to an account's backlog (a recipient went offline while its message
    /// was being committed, or left before its backlog reached it).
    pub(super) fn keep_for_later(&mut self, key: &str, id: u64) {
        let Some(a) = self.accounts.get_mut(key) else {
            return;
        };
        if a.pending >= MAX_PENDING_PER_ACCOUNT {
            // Still in the log and in HISTORY; the backlog bound wins.
            return;
        }
        a.pending += 1;
        self.store(
            StoreOp::AddPending {
                user: key.to_owned(),
                id,
            },
            Waiting::Quiet,
        );
    }
}
