//! Login protection: the limits that keep password hashing, the most expensive thing a client can
//! ask for, available to everyone (spec 7.5).
//!
//! - Each address may have a few hashes queued or running ([`Limits::hash_per_address`]); past
//!   it, its LOGIN and REGISTER get `RATE_LIMITED`. So a flood of LOGINs from one address holds a
//!   few places in the hashing queue, never all of them. A hash whose connection has closed is
//!   cancelled and costs nothing (see `auth`).
//! - Failed logins back off per address and per account name: a few are free, then each one
//!   doubles the wait before the next attempt is let through, up to a minute. A refused attempt is
//!   answered at once, with no hash, and the answer says when to try again.
//! - The back-off of an account name does not apply at the addresses that account last logged in
//!   from, so an attack on an account from elsewhere does not lock its owner out.
//! - Each address may register a few accounts per hour ([`Limits::registrations_per_hour`]).
//!
//! Exempt addresses (`--exempt`) and connections without an address are not limited per address;
//! the account name back-off applies to every connection. Names are tracked whether or not an
//! account has them, so that the replies do not tell which names exist. Every table here is
//! bounded ([`MAX_TRACKED_NAMES`], [`MAX_TRACKED_ADDRESSES`]) and forgets what has expired.

use std::collections::HashMap;

use super::bucket::{Bucket, Rate};
use super::{Account, Core, Limits};
use crate::config::{
    KNOWN_ADDRESSES_PER_ACCOUNT, LOGIN_BACKOFF_FIRST, LOGIN_BACKOFF_MAX, LOGIN_FAILURE_MEMORY,
    LOGIN_FREE_FAILURES_PER_ACCOUNT, LOGIN_FREE_FAILURES_PER_ADDRESS, MAX_TRACKED_ADDRESSES,
    MAX_TRACKED_NAMES,
};
use crate::peer::AddrKey;
use crate::proto::name::Key;

/// Failed logins counted for an address or a name.
#[derive(Clone, Copy, Debug, Default)]
struct Failures {
    count: u32,
    /// When the last one happened (milliseconds).
    last: i64,
}

impl Failures {
    /// The failures still remembered at `now`.
    fn current(&self, now: i64) -> u32 {
        if now.saturating_sub(self.last) > ms(LOGIN_FAILURE_MEMORY) {
            0
        } else {
            self.count
        }
    }

    /// How long (milliseconds) the next attempt must still wait, when past the `free` failures.
    fn wait(&self, free: u32, now: i64) -> Option<i64> {
        let n = self.current(now);
        if n <= free {
            return None;
        }
        let doublings = (n - free - 1).min(30);
        let delay = ms(LOGIN_BACKOFF_FIRST)
            .saturating_mul(1 << doublings)
            .min(ms(LOGIN_BACKOFF_MAX));
        let until = self.last.saturating_add(delay);
        (until > now).then(|| until - now)
    }

    fn record(&mut self, now: i64) {
        self.count = self.current(now).saturating_add(1);
        self.last = now;
    }

    fn expired(&self, now: i64) -> bool {
        self.current(now) == 0
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What is remembered about one address.
#[derive(Debug, Default)]
struct AddrState {
    /// Hashes queued or running for its connections.
    hashes: usize,
    failures: Failures,
    registrations: Bucket,
}

/// The login protection tables. See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Guard {
    addresses: HashMap<AddrKey, AddrState>,
    names: HashMap<Key, Failures>,
}

/// Why an attempt is refused, and for how long (milliseconds).
pub(super) struct Refusal {
    pub(super) wait_ms: i64,
    pub(super) why: &'static str,
}

impl Guard {
    fn address(&mut self, key: AddrKey, now: i64, limits: &Limits) -> &mut AddrState {
        if !self.addresses.contains_key(&key) && self.addresses.len() >= MAX_TRACKED_ADDRESSES {
            self.forget_addresses(now, limits, true);
        }
        self.addresses.entry(key).or_default()
    }

    /// The refusal of a LOGIN for `name` from `addr`, if it must be refused now.
    pub(super) fn login_refusal(
        &self,
        addr: Option<AddrKey>,
        name: &Key,
        account: Option<&Account>,
        limits: &Limits,
        now: i64,
    ) -> Option<Refusal> {
        if let Some(state) = addr.and_then(|a| self.addresses.get(&a)) {
            if let Some(wait_ms) = state.failures.wait(LOGIN_FREE_FAILURES_PER_ADDRESS, now) {
                return Some(Refusal {
                    wait_ms,
                    why: "too many failed logins from your address",
                });
            }
            if limits.hash_per_address > 0 && state.hashes >= limits.hash_per_address {
                return Some(Refusal {
                    wait_ms: 1000,
                    why: "too many password checks from your address at once",
                });
            }
        }
        let known = addr.is_some_and(|a| account.is_some_and(|acct| acct.known.contains(&a)));
        if !known {
            let failures = self.names.get(name).copied().unwrap_or_default();
            if let Some(wait_ms) = failures.wait(LOGIN_FREE_FAILURES_PER_ACCOUNT, now) {
                return Some(Refusal {
                    wait_ms,
                    why: "too many failed logins for this account",
                });
            }
        }
        None
    }

    /// The refusal of a REGISTER from `addr`, if it must be refused now.
    pub(super) fn register_refusal(
        &self,
        addr: Option<AddrKey>,
        limits: &Limits,
        now: i64,
    ) -> Option<Refusal> {
        let state = addr.and_then(|a| self.addresses.get(&a))?;
        if let Some(rate) = Rate::new(limits.registrations_per_hour, 3_600_000) {
            if let Err(wait_ms) = state.registrations.check(rate, 1, now) {
                return Some(Refusal {
                    wait_ms,
                    why: "too many accounts registered from your address",
                });
            }
        }
        if limits.hash_per_address > 0 && state.hashes >= limits.hash_per_address {
            return Some(Refusal {
                wait_ms: 1000,
                why: "too many password checks from your address at once",
            });
        }
        None
    }

    /// A REGISTER from `addr` starts (its hash is queued).
    pub(super) fn registering(&mut self, addr: Option<AddrKey>, limits: &Limits, now: i64) {
        if let (Some(a), Some(rate)) = (addr, Rate::new(limits.registrations_per_hour, 3_600_000)) {
            let _ = self
                .address(a, now, limits)
                .registrations
                .take(rate, 1, now);
        }
    }

    /// A hash for a connection from `addr` was queued.
    pub(super) fn hash_started(&mut self, addr: Option<AddrKey>, limits: &Limits, now: i64) {
        if let Some(a) = addr {
            self.address(a, now, limits).hashes += 1;
        }
    }

    /// A hash for a connection from `addr` came back (done or cancelled).
    pub(super) fn hash_finished(&mut self, addr: Option<AddrKey>) {
        if let Some(state) = addr.and_then(|a| self.addresses.get_mut(&a)) {
            state.hashes = state.hashes.saturating_sub(1);
        }
    }

    /// A LOGIN for `name` from `addr` failed (wrong password, or no such account).
    pub(super) fn login_failed(
        &mut self,
        addr: Option<AddrKey>,
        name: Option<&Key>,
        limits: &Limits,
        now: i64,
    ) {
        if let Some(a) = addr {
            self.address(a, now, limits).failures.record(now);
        }
        if let Some(name) = name {
            if !self.names.contains_key(name) && self.names.len() >= MAX_TRACKED_NAMES {
                self.forget_names(now, true);
            }
            self.names.entry(name.clone()).or_default().record(now);
        }
    }

    /// A LOGIN for `name` succeeded: the name's failures are forgotten (the owner knows the
    /// password). The address's are not, or an attacker holding one account could wipe its
    /// address's count between guesses at others.
    pub(super) fn login_succeeded(&mut self, name: &Key) {
        self.names.remove(name);
    }

    /// Forgets what no longer matters; called now and then.
    pub(super) fn forget(&mut self, limits: &Limits, now: i64) {
        self.forget_addresses(now, limits, false);
        self.forget_names(now, false);
    }

    /// Forgets the addresses with nothing left to remember; with `make_room`, and still at the
    /// bound, also the one whose last failure is oldest among those with no hash in flight.
    fn forget_addresses(&mut self, now: i64, limits: &Limits, make_room: bool) {
        let rate = Rate::new(limits.registrations_per_hour, 3_600_000);
        self.addresses.retain(|_, s| {
            s.hashes > 0
                || !s.failures.expired(now)
                || rate.is_some_and(|r| !s.registrations.is_full(r, now))
        });
        if make_room && self.addresses.len() >= MAX_TRACKED_ADDRESSES {
            let oldest = self
                .addresses
                .iter()
                .filter(|(_, s)| s.hashes == 0)
                .min_by_key(|(_, s)| s.failures.last)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.addresses.remove(&k);
            }
        }
    }

    fn forget_names(&mut self, now: i64, make_room: bool) {
        self.names.retain(|_, f| !f.expired(now));
        if make_room && self.names.len() >= MAX_TRACKED_NAMES {
            let oldest = self
                .names
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.names.remove(&k);
            }
        }
    }

    /// Addresses and names remembered now.
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (self.addresses.len(), self.names.len())
    }
}

impl Core {
    /// Remembers `addr` as one `key` logged in from (most recent last, at most
    /// [`KNOWN_ADDRESSES_PER_ACCOUNT`]).
    pub(super) fn remember_address(&mut self, key: &Key, addr: Option<AddrKey>) {
        let (Some(addr), Some(acct)) = (addr, self.accounts.get_mut(key)) else {
            return;
        };
        acct.known.retain(|a| *a != addr);
        if acct.known.len() >= KNOWN_ADDRESSES_PER_ACCOUNT {
            acct.known.remove(0);
        }
        // Grown one at a time (at most KNOWN_ADDRESSES_PER_ACCOUNT): most accounts log in from one
        // address, and a first push would make room for four.
        acct.known.reserve_exact(1);
        acct.known.push(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_past_the_free_failures_and_stops_at_the_maximum() {
        let mut f = Failures::default();
        for _ in 0..5 {
            f.record(1_000);
        }
        assert_eq!(f.wait(5, 1_000), None);
        f.record(1_000);
        assert_eq!(f.wait(5, 1_000), Some(1_000));
        assert_eq!(f.wait(5, 2_000), None);
        f.record(2_000);
        assert_eq!(f.wait(5, 2_000), Some(2_000));
        for _ in 0..20 {
            f.record(3_000);
        }
        assert_eq!(f.wait(5, 3_000), Some(60_000));
        // Forgotten after the memory time.
        let later = 3_000 + ms(LOGIN_FAILURE_MEMORY) + 1;
        assert_eq!(f.current(later), 0);
        assert_eq!(f.wait(5, later), None);
        assert!(f.expired(later));
    }

    #[test]
    fn the_tables_are_bounded_and_forget_what_expired() {
        let limits = Limits::default();
        let mut g = Guard::default();
        for i in 0..10u32 {
            let a = AddrKey::V4(std::net::Ipv4Addr::from(i));
            g.login_failed(Some(a), Some(&Key::of(&format!("n{i}"))), &limits, 0);
        }
        assert_eq!(g.tracked(), (10, 10));
        g.forget(&limits, ms(LOGIN_FAILURE_MEMORY));
        assert_eq!(g.tracked(), (10, 10));
        g.forget(&limits, ms(LOGIN_FAILURE_MEMORY) + 1);
        assert_eq!(g.tracked(), (0, 0));
    }
}
