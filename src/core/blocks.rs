//! BLOCK, UNBLOCK, BLOCKS and DMS: who may reach an account.
//!
//! A block is kept in memory on both accounts (`blocks`, `blocked_by`), so that every check on the
//! way of a message, a friend request or a broadcast is a set lookup. Like a friendship, it changes
//! in memory when the command runs, so a message sent after it is refused at once; the answer, and
//! telling the blocked account that a friendship or request ended, wait for the commit.
//!
//! What a blocked account is told (spec 4.19): its MSG, GROUP and FRIEND ADD to the blocker fail with
//! `BLOCKED`. Every OK of the protocol is true, so a message that will never reach its recipient
//! cannot be acknowledged; the refusal also means nothing is stored, so nothing of the blocked
//! account enters the blocker's history or backlog.

use super::out::{self, Out};
use super::{Account, Core, Req};
use crate::config::MAX_BLOCKS_PER_ACCOUNT;
use crate::proto::code::Code;
use crate::proto::command::Dms;
use crate::proto::name::{Key, Name};
use crate::proto::server_line::{FriendshipEvent, OkReply, ServerLine};
use crate::store::{FriendState, StoreOp};

impl Core {
    /// The account named `name`, other than the caller's, as registered; or the refusal.
    fn other_account(&mut self, req: Req, me: &Key, name: &Name) -> Option<(Req, Key, String)> {
        let other = name.key();
        if other == *me {
            self.refuse(req, Code::SELF_TARGET, "that is your own account");
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

    pub(super) fn block(&mut self, req: Req, name: Name) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let Some((mut req, other, shown)) = self.other_account(req, &me, &name) else {
            return;
        };
        let Some(acct) = self.accounts.get(&me) else {
            return;
        };
        if acct.ties().blocks.contains(&other) {
            let text = format!("you already block {shown}");
            return self.refuse(req, Code::ALREADY_BLOCKED, &text);
        }
        if acct.ties().blocks.len() >= MAX_BLOCKS_PER_ACCOUNT {
            let text = format!(
                "you block {MAX_BLOCKS_PER_ACCOUNT} accounts, the most an account may; UNBLOCK one first"
            );
            return self.refuse(req, Code::TOO_MANY_BLOCKS, &text);
        }
        // A block ends any friendship or request between the two.
        let ended = acct.ties().friends.get(&other).copied();
        if let Some(a) = self.accounts.get_mut(&me) {
            a.ties_mut().blocks.insert(other.clone());
            if let Some(t) = a.ties_if_any() {
                t.friends.remove(&other);
            }
        }
        if let Some(o) = self.accounts.get_mut(&other) {
            o.ties_mut().blocked_by.insert(me.clone());
            if let Some(t) = o.ties_if_any() {
                t.friends.remove(&me);
            }
        }
        let op = StoreOp::Block {
            a: me.as_str().to_owned(),
            b: other.as_str().to_owned(),
        };
        self.reserve(&mut req);
        self.store(op, move |core, _| {
            // The blocked account learns what ended, as if the caller had ended it; not the block.
            let event = ended.map(|state| match state {
                FriendState::Friends => FriendshipEvent::Removed,
                FriendState::Outgoing => FriendshipEvent::Withdrawn,
                FriendState::Incoming => FriendshipEvent::Denied,
            });
            if let (Some(event), Some(my_name)) = (event, core.accounts.get(&me).map(|a| a.name()))
            {
                let line = out::shared(&ServerLine::Friendship {
                    name: &my_name,
                    event,
                });
                core.push_to_account(&other, &line);
            }
            let after = core.end_offers_for_block(&me, &other);
            let mut out = Out::new();
            out.ok(&req, OkReply::Block { name: &shown });
            core.finish(req, out);
            if let Some(withdrawn) = after {
                core.push_to_account(&me, &withdrawn);
            }
        });
    }

    pub(super) fn unblock(&mut self, req: Req, name: Name) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let Some((mut req, other, shown)) = self.other_account(req, &me, &name) else {
            return;
        };
        if !self
            .accounts
            .get(&me)
            .is_some_and(|a| a.ties().blocks.contains(&other))
        {
            let text = format!("you do not block {shown}");
            return self.refuse(req, Code::NOT_BLOCKED, &text);
        }
        if let Some(a) = self.accounts.get_mut(&me) {
            if let Some(t) = a.ties_if_any() {
                t.blocks.remove(&other);
            }
        }
        if let Some(o) = self.accounts.get_mut(&other) {
            if let Some(t) = o.ties_if_any() {
                t.blocked_by.remove(&me);
            }
        }
        let op = StoreOp::Unblock {
            a: me.as_str().to_owned(),
            b: other.as_str().to_owned(),
        };
        self.reserve(&mut req);
        self.store(op, move |core, _| {
            let mut out = Out::new();
            out.ok(&req, OkReply::Unblock { name: &shown });
            core.finish(req, out);
        });
    }

    pub(super) fn list_blocks(&mut self, req: Req) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let mut names: Vec<&str> = self
            .accounts
            .get(&me)
            .map(|a| {
                a.ties()
                    .blocks
                    .iter()
                    .filter_map(|k| self.accounts.get(k).map(|b| &*b.name))
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by_key(|n| n.to_ascii_lowercase());
        let mut out = Out::new();
        for name in &names {
            out.line(&ServerLine::Blocked { name });
        }
        out.ok(
            &req,
            OkReply::Blocks {
                count: names.len() as u64,
            },
        );
        self.finish(req, out);
    }

    pub(super) fn dms(&mut self, mut req: Req, policy: Option<Dms>) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let Some(acct) = self.accounts.get_mut(&me) else {
            return;
        };
        let Some(policy) = policy else {
            let policy = if acct.ties().friends_only {
                Dms::Friends
            } else {
                Dms::Everyone
            };
            let mut out = Out::new();
            out.ok(&req, OkReply::Dms { policy });
            return self.finish(req, out);
        };
        let friends_only = policy == Dms::Friends;
        acct.ties_mut().friends_only = friends_only;
        let op = StoreOp::SetDms {
            user: me.as_str().to_owned(),
            friends_only,
        };
        self.reserve(&mut req);
        self.store(op, move |core, _| {
            let mut out = Out::new();
            out.ok(&req, OkReply::Dms { policy });
            core.finish(req, out);
        });
    }

    /// Why `sender` may not send a direct message to the `recipient` account, if it may not: a
    /// block between them, or the recipient's `DMS FRIENDS`. Writing to oneself is always allowed.
    pub(super) fn dm_refusal(&self, sender: &Key, recipient: &Key) -> Option<Code> {
        let r = self.accounts.get(recipient)?;
        self.dm_refusal_to(sender, recipient, r)
    }

    /// [`Core::dm_refusal`], with the recipient's account already looked up (`r`). Both sides of
    /// a block are on the recipient's account (module documentation), so no other look-up is
    /// made unless the recipient takes messages from friends only.
    pub(super) fn dm_refusal_to(&self, sender: &Key, recipient: &Key, r: &Account) -> Option<Code> {
        if sender == recipient {
            return None;
        }
        let ties = r.ties();
        if ties.blocks.contains(sender) || ties.blocked_by.contains(sender) {
            return Some(Code::BLOCKED);
        }
        (ties.friends_only && !self.are_friends(sender, recipient)).then_some(Code::FRIENDS_ONLY)
    }
}
