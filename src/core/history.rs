//! HISTORY: one page of a conversation, read from the message log (a direct conversation, the ALL
//! broadcasts, or a room the caller is a member of: of a private room, what was said from their
//! join on): the page's ids first (a damaged message fails the whole answer before any line of it),
//! then its lines part by part as the client reads them (see `stream`).

use super::out::Out;
use super::session::unreadable;
use super::stream::Stream;
use super::{Core, Req};
use crate::config::HISTORY_DEFAULT_COUNT;
use crate::proto::code::Code;
use crate::proto::command::{HistoryTarget, Page};
use crate::proto::server_line::OkReply;
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
            HistoryTarget::Room(name) => {
                let id = match self.membership(&me, &name) {
                    Ok((id, _)) => id,
                    Err(r) => return self.refused(req, r),
                };
                let Some(room) = self.rooms.get(&id) else {
                    return;
                };
                let after = room.members().get(&me).map_or(0, |m| room.visible_after(m));
                (Conversation::Room { id, after }, room.name.clone())
            }
            HistoryTarget::User(n) => {
                let key = n.key();
                // A deleted account's conversations stay readable under its name (spec 4.18).
                let shown = match self.accounts.get(&key) {
                    Some(a) if a.phc.is_some() => Some(a.name()),
                    _ => self.retired.get(&key).cloned(),
                };
                let Some(name) = shown else {
                    let text = format!("no such user: {n}");
                    return self.refuse(req, Code::UNKNOWN_USER, &text);
                };
                let pair = Conversation::Pair(me.as_str().to_owned(), key.as_str().to_owned());
                (pair, name)
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
            if page.ids.is_empty() {
                let mut out = Out::new();
                out.ok(
                    &req,
                    OkReply::History {
                        with: &shown,
                        count: 0,
                        before: page.older,
                        after: page.newer,
                    },
                );
                return core.finish(req, out);
            }
            // The page's lines are read and sent part by part, as the client takes them.
            let label = req.label.clone();
            let stream = Stream::history(label, shown, page.ids, page.older, page.newer);
            core.answer_in_parts(req, stream);
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
