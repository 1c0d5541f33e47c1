//! Quotas per account (spec 7.8): what one account may make the server store and send, so that one
//! user cannot fill the disk, flood everyone, or fill someone's inbox for everyone else.
//!
//! - Messages per minute ([`Limits::msgs_per_minute`]): each message counts 1, an `ALL` counts
//!   [`ALL_MESSAGE_WEIGHT`], since it goes to everyone online.
//! - Bytes stored per day ([`Limits::stored_bytes_per_day`]): each message counts what keeping it
//!   costs, [`stored_bytes`].
//! - A sender's share of one recipient's offline inbox ([`Limits::inbox_share`]): of the messages
//!   kept for an offline user, at most this many from one sender.
//! - Friend requests per hour ([`Limits::friend_requests_per_hour`]), and at most
//!   [`MAX_RELATIONS_PER_ACCOUNT`] friends and requests per account.
//!
//! Every message-sending command charges its sender through [`Core::charge_message`], so a new
//! kind of message falls under the same quotas by calling it. The rates are token buckets on the
//! core's clock (`bucket`); they live in memory and start full when the server starts.

use std::collections::HashMap;

use super::bucket::{Bucket, Rate};
use super::{Core, Limits};
use crate::config::{
    ALL_MESSAGE_WEIGHT, MAX_RELATIONS_PER_ACCOUNT, STORED_BYTES_PER_RECIPIENT,
    STORED_MESSAGE_OVERHEAD_BYTES,
};
use crate::proto::code::Code;
use crate::proto::name::Key;

/// The rate buckets of one account.
#[derive(Debug, Default)]
pub(super) struct Quota {
    messages: Bucket,
    bytes: Bucket,
    friend_requests: Bucket,
}

/// An account's offline backlog as the limits count it: how many messages wait, and from whom.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    total: u32,
    by_sender: HashMap<Key, u32>,
}

impl Inbox {
    /// Messages waiting.
    pub(super) fn total(&self) -> u32 {
        self.total
    }

    /// Messages waiting from `sender`.
    pub(super) fn from(&self, sender: &Key) -> u32 {
        self.by_sender.get(sender).copied().unwrap_or(0)
    }

    /// One more message from `sender` waits.
    pub(super) fn add(&mut self, sender: &Key) {
        self.total += 1;
        *self.by_sender.entry(sender.clone()).or_insert(0) += 1;
    }

    /// `n` messages from `sender` wait (as read from the store at start).
    pub(super) fn add_n(&mut self, sender: Key, n: u32) {
        *self.by_sender.entry(sender).or_insert(0) += n;
    }

    /// Sets the total (as read from the store at start; it also counts messages whose sender
    /// could not be read).
    pub(super) fn set_total(&mut self, n: u32) {
        self.total = n;
    }

    /// Adds what another count holds (a backlog taken by a login, given back).
    pub(super) fn merge(&mut self, other: Inbox) {
        self.total += other.total;
        for (k, n) in other.by_sender {
            *self.by_sender.entry(k).or_insert(0) += n;
        }
    }
}

/// The bytes a message costs its sender's daily quota: its text, plus what the server keeps
/// beside it (the record's header and an index entry per conversation it is in).
pub(super) fn stored_bytes(text: &str, recipients: usize) -> u64 {
    text.len() as u64
        + STORED_MESSAGE_OVERHEAD_BYTES
        + STORED_BYTES_PER_RECIPIENT * recipients as u64
}

/// Why a quota refuses: the code, how long until it would not (milliseconds, if it frees up with
/// time), and a sentence.
pub(super) struct OverQuota {
    pub(super) code: Code,
    pub(super) wait_ms: Option<i64>,
    pub(super) text: String,
}

fn minute(limits: &Limits) -> Option<Rate> {
    Rate::new(limits.msgs_per_minute, 60_000)
}

fn day(limits: &Limits) -> Option<Rate> {
    Rate::new(limits.stored_bytes_per_day, 86_400_000)
}

fn hour_of_requests(limits: &Limits) -> Option<Rate> {
    Rate::new(limits.friend_requests_per_hour, 3_600_000)
}

fn wait_text(ms: i64) -> String {
    if ms >= i64::MAX / 2 {
        return "it is larger than the whole quota".to_owned();
    }
    let secs = (ms.max(1) as u64).div_ceil(1000);
    format!("try again in {secs} s")
}

impl Core {
    /// Charges a message to `sender`'s quotas: `broadcast` for an `ALL`, `stored` bytes. Nothing is
    /// charged when it is refused.
    pub(super) fn charge_message(
        &mut self,
        sender: &Key,
        broadcast: bool,
        stored: u64,
    ) -> Result<(), OverQuota> {
        let limits = &self.settings.limits;
        let (minute, day) = (minute(limits), day(limits));
        if minute.is_none() && day.is_none() {
            // No quota applies: the sender's account is not looked up (a SipHash of its name).
            return Ok(());
        }
        let now = self.now;
        let Some(acct) = self.accounts.get_mut(sender) else {
            return Ok(());
        };
        let weight = if broadcast { ALL_MESSAGE_WEIGHT } else { 1 };
        if let Some(rate) = minute {
            if let Err(wait) = acct.ties().quota.messages.check(rate, weight, now) {
                return Err(OverQuota {
                    code: Code::TOO_MANY_MESSAGES,
                    wait_ms: Some(wait),
                    text: format!(
                        "you sent {} messages in the last minute (an ALL counts {ALL_MESSAGE_WEIGHT}); {}",
                        limits.msgs_per_minute,
                        wait_text(wait)
                    ),
                });
            }
        }
        if let Some(rate) = day {
            if let Err(wait) = acct.ties().quota.bytes.check(rate, stored, now) {
                return Err(OverQuota {
                    code: Code::QUOTA_EXCEEDED,
                    wait_ms: Some(wait),
                    text: format!(
                        "you have stored your {} KiB of messages for the day; {}",
                        limits.stored_bytes_per_day / 1024,
                        wait_text(wait)
                    ),
                });
            }
        }
        if let Some(rate) = minute {
            let _ = acct.ties_mut().quota.messages.take(rate, weight, now);
        }
        if let Some(rate) = day {
            let _ = acct.ties_mut().quota.bytes.take(rate, stored, now);
        }
        Ok(())
    }

    /// Charges a friend request from `me` to `other`; refuses past the rate or the number of
    /// relations either may have.
    pub(super) fn charge_friend_request(&mut self, me: &Key, other: &Key) -> Result<(), OverQuota> {
        let full = |k: &Key| {
            self.accounts
                .get(k)
                .is_some_and(|a| a.ties().friends.len() >= MAX_RELATIONS_PER_ACCOUNT)
        };
        if full(me) || full(other) {
            return Err(OverQuota {
                code: Code::TOO_MANY_FRIENDS,
                wait_ms: None,
                text: format!(
                    "you or they already have {MAX_RELATIONS_PER_ACCOUNT} friends and requests"
                ),
            });
        }
        let limits = &self.settings.limits;
        let (rate, per_hour, now) = (
            hour_of_requests(limits),
            limits.friend_requests_per_hour,
            self.now,
        );
        let (Some(rate), Some(acct)) = (rate, self.accounts.get_mut(me)) else {
            return Ok(());
        };
        acct.ties_mut()
            .quota
            .friend_requests
            .take(rate, 1, now)
            .map_err(|wait| OverQuota {
                code: Code::TOO_MANY_REQUESTS,
                wait_ms: Some(wait),
                text: format!(
                    "you sent {per_hour} friend requests in the last hour; {}",
                    wait_text(wait)
                ),
            })
    }

    /// Answers a command refused by a quota.
    pub(super) fn over_quota(&mut self, req: super::Req, why: OverQuota) {
        let source = self.conns.get(&req.conn).and_then(|c| c.peer.key());
        self.tally.count("commands refused by quotas", source);
        match why.wait_ms {
            Some(ms) => self.refuse_for(req, why.code, ms.min(i64::MAX / 2), &why.text),
            None => self.refuse(req, why.code, &why.text),
        }
    }
}
