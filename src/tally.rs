//! Counting repeated events for the log, so that no client can flood it.
//!
//! An event a client can cause as often as it likes (a connection opened, a failed login, a refusal
//! for a limit) is not written to the log each time, which would let one client write megabytes a
//! second: it is counted in a [`Tally`], and once a [`LOG_SUMMARY_INTERVAL`] the tally becomes one
//! line, with the address that caused most of each event. The single events are still written at
//! `debug` level, for an investigation.
//!
//! A tally remembers at most [`MAX_TALLIED_SOURCES`] addresses per period; past it the counts go
//! on, only the "most from" may miss an address that showed up late.
//!
//! [`LOG_SUMMARY_INTERVAL`]: crate::config::LOG_SUMMARY_INTERVAL

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::peer::AddrKey;

/// Distinct addresses remembered per kind of event and period.
pub const MAX_TALLIED_SOURCES: usize = 1024;

/// Counts of events since the last summary, by kind, with the addresses they came from.
#[derive(Debug, Default)]
pub struct Tally {
    kinds: BTreeMap<&'static str, Count>,
}

#[derive(Debug, Default)]
struct Count {
    total: u64,
    by_source: HashMap<AddrKey, u64>,
}

impl Tally {
    /// Counts one event of kind `what` (a plural noun phrase: "failed logins"), from `source` if
    /// it has an address.
    pub fn count(&mut self, what: &'static str, source: Option<AddrKey>) {
        let c = self.kinds.entry(what).or_default();
        c.total += 1;
        if let Some(a) = source {
            if let Some(n) = c.by_source.get_mut(&a) {
                *n += 1;
            } else if c.by_source.len() < MAX_TALLIED_SOURCES {
                c.by_source.insert(a, 1);
            }
        }
    }

    /// The counts as one line (`None` when nothing happened), and a fresh start.
    pub fn summary(&mut self) -> Option<String> {
        let kinds = std::mem::take(&mut self.kinds);
        let mut line = String::new();
        for (what, count) in kinds {
            if !line.is_empty() {
                line.push_str("; ");
            }
            let _ = write!(line, "{} {what}", count.total);
            let top = count
                .by_source
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
            if let Some((addr, n)) = top {
                if count.by_source.len() > 1 || *n < count.total {
                    let _ = write!(
                        line,
                        " from {} addresses, most from {addr} ({n})",
                        count.by_source.len()
                    );
                } else {
                    let _ = write!(line, " from {addr}");
                }
            }
        }
        (!line.is_empty()).then_some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> Option<AddrKey> {
        Some(AddrKey::V4(std::net::Ipv4Addr::new(192, 0, 2, n)))
    }

    #[test]
    fn counts_become_one_line_then_start_again() {
        let mut t = Tally::default();
        assert_eq!(t.summary(), None);
        for _ in 0..50 {
            t.count("failed logins", addr(2));
        }
        for _ in 0..7 {
            t.count("failed logins", addr(3));
        }
        t.count("connections closed", None);
        t.count("idle connections closed", addr(9));
        assert_eq!(
            t.summary().as_deref(),
            Some(
                "1 connections closed; 57 failed logins from 2 addresses, most from \
                 192.0.2.2 (50); 1 idle connections closed from 192.0.2.9"
            )
        );
        assert_eq!(t.summary(), None);
    }

    #[test]
    fn the_addresses_remembered_are_bounded() {
        let mut t = Tally::default();
        for i in 0..(MAX_TALLIED_SOURCES as u32 + 100) {
            let a = AddrKey::V4(std::net::Ipv4Addr::from(i));
            t.count("connections opened", Some(a));
        }
        let c = &t.kinds["connections opened"];
        assert_eq!(c.total, MAX_TALLIED_SOURCES as u64 + 100);
        assert_eq!(c.by_source.len(), MAX_TALLIED_SOURCES);
    }
}
