//! What the core does when only time passes: a connection that stays silent is probed with
//! `PING <token>`, and closed with `BYE IDLE_TIMEOUT` if it stays silent as long again (spec 7.6);
//! once a minute the login protection forgets what has expired, and the counts of repeated events
//! go to the log as one line (see `tally`).
//!
//! Silence counts from the later of the connection's last line and its last answer, and only
//! while the server owes it nothing: a connection waiting for an answer (a password check, a
//! commit, a HISTORY page) is not idle. Any line, a command or not, ends the silence.

use super::{ConnId, Core, Hold};
use crate::config::LOG_SUMMARY_INTERVAL;

/// How often the login protection tables forget what expired (milliseconds).
const GUARD_SWEEP_MS: i64 = 60_000;
use crate::outbox::Chunk;
use crate::proto::code::ByeCode;
use crate::proto::server_line::ServerLine;

impl Core {
    /// Runs on every [`Event::Tick`](super::Event::Tick).
    pub(super) fn tick(&mut self) {
        self.check_idle();
        self.expire_nodes();
        self.route_fallback();
        self.sample_message_rate();
        self.expire_offers();
        if self.now.saturating_sub(self.guard_swept) >= GUARD_SWEEP_MS {
            self.guard_swept = self.now;
            self.guard.forget(&self.settings.limits, self.now);
        }
        let interval = i64::try_from(LOG_SUMMARY_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        if self.now.saturating_sub(self.tally_since) >= interval {
            if self.tally_since != 0 {
                if let Some(line) = self.tally.summary() {
                    log::info!("in the last {} s: {line}", interval / 1000);
                }
            }
            self.tally_since = self.now;
        }
    }

    fn check_idle(&mut self) {
        let timeout = self.settings.limits.idle_timeout_ms;
        if timeout <= 0 || self.shutting_down {
            return;
        }
        let now = self.now;
        let mut probe = Vec::new();
        let mut close = Vec::new();
        for (&conn, c) in &self.conns {
            let owed = !c.slots.is_empty()
                || c.deferred.as_ref().is_some_and(|d| !d.is_empty())
                || c.hold != Hold::Free;
            if c.closing || owed {
                continue;
            }
            let silent = now.saturating_sub(c.last_heard);
            if c.probed && silent >= 2 * timeout {
                close.push(conn);
            } else if !c.probed && silent >= timeout {
                probe.push(conn);
            }
        }
        // In connection order, so that a simulated run is the same every time.
        probe.sort_unstable();
        close.sort_unstable();
        for conn in probe {
            self.probe(conn);
        }
        for conn in close {
            self.close_idle(conn);
        }
    }

    fn probe(&mut self, conn: ConnId) {
        let token = self.ticket().to_string();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.probed = true;
        let line = ServerLine::Ping { token: &token };
        if c.outbox.push(Chunk::Owned(line.to_bytes())).is_err() {
            self.overflowed.push(conn);
        }
    }

    fn close_idle(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        log::debug!(
            "connection {conn} from {} was silent too long; closing it",
            c.peer
        );
        self.tally.count("idle connections closed", c.peer.key());
        let bye = ServerLine::Bye {
            code: ByeCode::IDLE_TIMEOUT,
            text: "nothing heard from you after a PING; answer a PING with any command",
        };
        c.outbox.push_unbounded(Chunk::Owned(bye.to_bytes()));
        self.disconnected(conn);
    }
}
