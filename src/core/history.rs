//! HISTORY: one page of a conversation, read from the message log.

use super::out::Out;
use super::session::unreadable;
use super::{recipient, Core, Req};
use crate::config::HISTORY_DEFAULT_COUNT;
use crate::proto::code::Code;
use crate::proto::command::{HistoryTarget, Page};
use crate::proto::server_line::{MessageLine, OkReply, ServerLine};
use crate::store::{Conversation, Cursor, StoreOp, StoreReply, Unreadable};

impl Core {
    pub(super) fn history(
        &mut self,
        mut req: Req,
        with: HistoryTarget,
        count: Option<u32>,
        cursor: Page,
    ) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let (conv, shown) = match with {
            HistoryTarget::Broadcast => (Conversation::Broadcast, "*".to_owned()),
            HistoryTarget::User(n) => {
                let key = n.key();
                match self.accounts.get(&key) {
                    Some(a) if a.phc.is_some() => {
                        let name = a.name.clone();
                        let pair =
                            Conversation::Pair(me.as_str().to_owned(), key.as_str().to_owned());
                        (pair, name)
                    }
                    _ => {
                        let text = format!("no such user: {n}");
                        return self.refuse(req, Code::UNKNOWN_USER, &text);
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
        let op = StoreOp::History {
            conv,
            count,
            cursor,
        };
        self.reserve(&mut req);
        let then = move |core: &mut Core, reply| {
            let page = match reply {
                StoreReply::History(page) => page,
                StoreReply::Unreadable(Unreadable::Unavailable(why)) => {
                    log::warn!("a HISTORY read found the database unavailable: {why}");
                    return core.refuse(
                        req,
                        Code::STORAGE_UNAVAILABLE,
                        "the server cannot read its database right now; try again later",
                    );
                }
                other => {
                    let detail = format!("a HISTORY read failed: {}", unreadable(&other));
                    return core.internal_error(req, &detail);
                }
            };
            let mut out = Out::new();
            for m in &page.messages {
                out.line(&ServerLine::History(MessageLine {
                    id: m.id,
                    time_ms: m.time_ms,
                    from: &m.from,
                    to: recipient(&m.to),
                    text: &m.text,
                }));
            }
            out.ok(
                &req,
                OkReply::History {
                    with: &shown,
                    count: page.messages.len() as u64,
                    before: page.older,
                    after: page.newer,
                },
            );
            core.finish(req, out);
        };
        if self.store_failing {
            // The connection has nothing in flight (the command waited for that, see
            // `Core::process`), so a read of what is committed now sees all it wrote. It goes
            // beside the writes waiting for the disk, not behind them.
            match op.into_read() {
                Ok(read) => self.store_fresh(read, then),
                Err(op) => self.store(op, then),
            }
        } else {
            self.store(op, then);
        }
    }
}
