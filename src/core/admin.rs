//! The operators' commands: ANNOUNCE, SUSPEND, UNSUSPEND, KILL, STATS and ADDUSER.
//!
//! Only the accounts the server names as admins (`--admin`) may use them; the command table says
//! so (`Needs::Admin`) and `Core::process` checks it, with the login, before any handler runs.
//!
//! SUSPEND follows the pattern of UNREGISTER: the suspension is in memory when the command runs, so
//! that from then on no LOGIN or RESUME of the account succeeds and its connections run nothing
//! more (they are frozen), and it is committed before anyone is told: then the account's
//! connections get `BYE ACCOUNT_SUSPENDED` and the admin its `OK`. Nothing else of the account
//! changes: its tokens, friendships and kept messages wait for UNSUSPEND. KILL and ANNOUNCE store
//! nothing; they act on the connections there are when they run.

use super::out::{self, Out};
use super::{BackupDone, ConnId, Core, Hold, Req};
use crate::proto::code::{ByeCode, Code};
use crate::proto::name::{Key, Name, Password};
use crate::proto::server_line::{OkReply, ServerLine};
use crate::store::{Notice, ReadOp, StoreOp, StoreReply, Suspension};

impl Core {
    /// The account an admin command names, as registered, or the refusal: no such account (one
    /// being registered or deleted has no password hash yet, or any more, and counts as none).
    fn admin_target(&self, name: &Name) -> Result<(Key, String), (Code, String)> {
        let key = name.key();
        match self.accounts.get(&key) {
            Some(a) if a.phc.is_some() => Ok((key, a.name())),
            _ => Err((Code::UNKNOWN_USER, format!("no such user: {name}"))),
        }
    }

    /// The caller's account name, for the log.
    fn admin_name(&self, conn: ConnId) -> String {
        self.account_of(conn)
            .and_then(|k| self.accounts.get(&k).map(|a| a.name()))
            .unwrap_or_default()
    }

    pub(super) fn announce(&mut self, req: Req, text: String) {
        let chunk = out::shared(&ServerLine::Notice { text: &text });
        let mut reached = 0u64;
        // Every connection, logged in or not, in connection order; the caller's own copy goes
        // after its OK (spec 6.4).
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            let Some(c) = self.conns.get(&conn) else {
                continue;
            };
            if c.closing {
                continue;
            }
            reached += 1;
            if conn == req.conn {
                continue;
            }
            if c.outbox.push(chunk.clone()).is_err() {
                self.overflowed.push(conn);
            }
        }
        log::info!(
            "admin {} announced to {reached} connections: {text}",
            self.admin_name(req.conn)
        );
        // In a cluster the other nodes' connections are told too (the count is of this node's),
        // and the OK follows the commit that has them told.
        let notice = self.settings.cluster.then(|| {
            let line = ServerLine::Notice { text: &text }.to_string();
            StoreOp::Notice(Notice::Everyone { line })
        });
        let mut req = req;
        self.reserve(&mut req);
        self.store_all(notice.into_iter().collect(), move |core, _| {
            let mut out = Out::new();
            out.ok(&req, OkReply::Announce { delivered: reached });
            out.raw(&chunk);
            core.finish(req, out);
        });
    }

    pub(super) fn suspend(&mut self, mut req: Req, name: Name, reason: Option<String>) {
        let (key, shown) = match self.admin_target(&name) {
            Ok(t) => t,
            Err((code, text)) => return self.refuse(req, code, &text),
        };
        if self.account_of(req.conn).as_ref() == Some(&key) {
            return self.refuse(
                req,
                Code::SELF_TARGET,
                "you cannot suspend your own account",
            );
        }
        let suspension = Suspension {
            reason: reason.unwrap_or_default(),
            since_ms: self.now,
        };
        let Some(acct) = self.accounts.get_mut(&key) else {
            return;
        };
        if acct.ties().suspended.is_some() {
            let text = format!("{shown} is suspended already; UNSUSPEND lifts it");
            return self.refuse(req, Code::ALREADY_SUSPENDED, &text);
        }
        // From now on the account logs in nowhere, and its connections run nothing more.
        acct.ties_mut().suspended = Some(suspension.clone());
        let conns = acct.conns.to_vec();
        for c in &conns {
            if let Some(c) = self.conns.get_mut(c) {
                c.hold = Hold::Frozen;
            }
        }
        self.settings
            .metrics
            .accounts_suspended
            .set(super::suspended_count(&self.accounts));
        let admin = self.admin_name(req.conn);
        let op = StoreOp::SetSuspended {
            user: key.as_str().to_owned(),
            suspension: Some(suspension.clone()),
        };
        self.reserve(&mut req);
        self.store(op, move |core, _| {
            let text = if suspension.reason.is_empty() {
                "the server's operators suspended this account".to_owned()
            } else {
                format!(
                    "the server's operators suspended this account: {}",
                    suspension.reason
                )
            };
            // Whatever logged in meanwhile was refused; these are the connections it had.
            let closing: Vec<ConnId> = core
                .accounts
                .get(&key)
                .map(|a| a.conns.to_vec())
                .unwrap_or_default();
            for &c in &closing {
                core.close_with_bye(c, ByeCode::ACCOUNT_SUSPENDED, &text);
            }
            log::info!(
                "admin {admin} suspended {shown} ({} connections closed): {}",
                closing.len(),
                suspension.reason
            );
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Suspend {
                    name: &shown,
                    closed: closing.len() as u64,
                },
            );
            core.finish(req, out);
        });
    }

    pub(super) fn unsuspend(&mut self, mut req: Req, name: Name) {
        let (key, shown) = match self.admin_target(&name) {
            Ok(t) => t,
            Err((code, text)) => return self.refuse(req, code, &text),
        };
        let Some(acct) = self.accounts.get_mut(&key) else {
            return;
        };
        if acct
            .ties_if_any()
            .and_then(|t| t.suspended.take())
            .is_none()
        {
            let text = format!("{shown} is not suspended");
            return self.refuse(req, Code::NOT_SUSPENDED, &text);
        }
        self.settings
            .metrics
            .accounts_suspended
            .set(super::suspended_count(&self.accounts));
        let admin = self.admin_name(req.conn);
        let op = StoreOp::SetSuspended {
            user: key.as_str().to_owned(),
            suspension: None,
        };
        self.reserve(&mut req);
        self.store(op, move |core, _| {
            log::info!("admin {admin} lifted the suspension of {shown}");
            let mut out = Out::new();
            out.ok(&req, OkReply::Unsuspend { name: &shown });
            core.finish(req, out);
        });
    }

    pub(super) fn kill(&mut self, req: Req, name: Name, reason: Option<String>) {
        let (key, shown) = match self.admin_target(&name) {
            Ok(t) => t,
            Err((code, text)) => return self.refuse(req, code, &text),
        };
        let reason = reason.unwrap_or_default();
        let text = if reason.is_empty() {
            "the server's operators closed this connection".to_owned()
        } else {
            format!("the server's operators closed this connection: {reason}")
        };
        // The caller's own connection is never closed by its KILL (it may name its own account
        // to close its other connections).
        let closing: Vec<ConnId> = self
            .accounts
            .get(&key)
            .map(|a| a.conns.iter().copied().filter(|c| *c != req.conn).collect())
            .unwrap_or_default();
        for &c in &closing {
            self.close_with_bye(c, ByeCode::KILLED, &text);
        }
        // In a cluster the account's connections on the other nodes are closed too (the count
        // is of this node's), and the OK follows the commit that has them closed.
        let notice = self.settings.cluster.then(|| {
            StoreOp::Notice(Notice::Kill {
                user: key.as_str().to_owned(),
                text: text.clone(),
            })
        });
        log::info!(
            "admin {} closed the {} connections of {shown}: {reason}",
            self.admin_name(req.conn),
            closing.len()
        );
        let closed = closing.len() as u64;
        let mut req = req;
        self.reserve(&mut req);
        self.store_all(notice.into_iter().collect(), move |core, _| {
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Kill {
                    name: &shown,
                    closed,
                },
            );
            core.finish(req, out);
        });
    }

    pub(super) fn stats(&mut self, req: Req) {
        // The figures that are states are brought up to date first: STATS sees this moment.
        self.gauges();
        let stats = self.settings.metrics.stats(self.now);
        let mut out = Out::new();
        for (name, value) in &stats {
            out.line(&ServerLine::Stat { name, value });
        }
        out.ok(
            &req,
            OkReply::Stats {
                count: stats.len() as u64,
            },
        );
        self.finish(req, out);
    }

    /// The operator's backup (`chatd backup`, through the control socket): a fresh read, answered
    /// from everything committed when the store takes it, so every acknowledged write is in the
    /// copy; it is written on a thread of its own. One at a time.
    pub(super) fn backup(&mut self, to: std::path::PathBuf, done: BackupDone) {
        if self.backing_up {
            return (done.0)(Err(
                "a backup is being made already; try again when it ends".into(),
            ));
        }
        if self.shutting_down {
            return (done.0)(Err("the server is stopping".into()));
        }
        self.backing_up = true;
        log::info!("backup to {} started", to.display());
        self.store_fresh(ReadOp::Backup { to: to.clone() }, move |core, reply| {
            core.backing_up = false;
            let outcome = match reply {
                StoreReply::Backup(summary) => {
                    log::info!("backup to {} done: {summary}", to.display());
                    Ok(summary)
                }
                other => {
                    let why = super::session::unreadable(&other);
                    log::error!("backup to {} failed: {why}", to.display());
                    Err(why)
                }
            };
            (done.0)(outcome);
        });
    }

    pub(super) fn adduser(&mut self, req: Req, name: Name, password: Password) {
        self.create_account(req, name, password, true);
    }
}
