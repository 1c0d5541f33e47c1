//! HISTORY: one page of a conversation, read from the message log.

use super::{recipients, ConnId, Core, Waiting};
use crate::config::HISTORY_DEFAULT_COUNT;
use crate::proto::command::{HistoryTarget, Page};
use crate::proto::reply::{self, Code};
use crate::store::worker::Ticket;
use crate::store::{Conversation, Cursor, HistoryPage, StoreOp};

impl Core {
    pub(super) fn history(
        &mut self,
        conn: ConnId,
        label: Option<String>,
        with: HistoryTarget,
        count: Option<u32>,
        cursor: Page,
    ) {
        let Some(me) = self.account_of(conn) else {
            return;
        };
        let (conv, name) = match with {
            HistoryTarget::Broadcast => (Conversation::Broadcast, "*".to_owned()),
            HistoryTarget::User(n) => {
                let key = n.key();
                match self.accounts.get(&key) {
                    Some(a) if a.phc.is_some() => {
                        let name = a.name.clone();
                        (Conversation::Pair(me, key), name)
                    }
                    _ => {
                        let text = format!("no such user: {n}");
                        return self.refuse(
                            conn,
                            label.as_deref(),
                            "HISTORY",
                            Code::UNKNOWN_USER,
                            &text,
                        );
                    }
                }
            }
        };
        let cursor = match cursor {
            Page::Latest => Cursor::Latest,
            Page::Before(id) => Cursor::Before(id),
            Page::After(id) => Cursor::After(id),
        };
        let count = count.unwrap_or(HISTORY_DEFAULT_COUNT);
        let ticket = self.store(
            StoreOp::History {
                conv,
                count,
                cursor,
            },
            Waiting::History { conn, label, name },
        );
        self.reserve(conn, ticket, 1);
    }

    pub(super) fn history_read(
        &mut self,
        conn: ConnId,
        ticket: Ticket,
        label: Option<String>,
        name: String,
        page: HistoryPage,
    ) {
        let mut out = String::new();
        for m in &page.messages {
            let to = recipients(&m.to);
            reply::message(&mut out, "HISTORY", m.id, m.time_ms, &m.from, to, &m.text);
        }
        let cursor = |c: Option<u64>| c.map_or_else(|| "-".to_owned(), |id| id.to_string());
        let details = format!(
            "{name} {} BEFORE {} AFTER {}",
            page.messages.len(),
            cursor(page.older),
            cursor(page.newer)
        );
        reply::ok(&mut out, label.as_deref(), "HISTORY", &details);
        self.fill(conn, ticket, out);
    }
}
