//! TOKEN, RESUME, TOKENS and REVOKE: device tokens, which log a device in again without its
//! password.
//!
//! A token is 64 random bits of id and 256 of secret (`proto::token` has its text form). Only the
//! SHA-256 of the secret is kept, here and on disk. RESUME costs no password hash: the token is
//! found by its id in memory and the digest of the secret it brings is compared with the stored
//! one in constant time, so a reconnect costs microseconds of CPU instead of a scrypt hash.
//!
//! A token lives [`TOKEN_IDLE_LIFETIME_MS`] after its last use and never longer than
//! [`TOKEN_MAX_LIFETIME_MS`] after it was issued. Its last use is kept exactly in memory and
//! written at most every [`TOKEN_TOUCH_INTERVAL_MS`], without waiting for the write: a RESUME's
//! answer does not depend on it, and a storm of RESUMEs writes next to nothing.
//!
//! Tokens are issued, listed and revoked in memory when the command runs, so every later command
//! sees the change; the answer (and closing the connections that were on a revoked token) waits
//! for the commit.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::out::Out;
use super::session::Via;
use super::{ConnId, Core, Req};
use crate::config::{
    MAX_TOKENS_PER_ACCOUNT, TOKEN_IDLE_LIFETIME_MS, TOKEN_MAX_LIFETIME_MS, TOKEN_TOUCH_INTERVAL_MS,
};
use crate::proto::code::{ByeCode, Code};
use crate::proto::command::Revoke;
use crate::proto::name::Key;
use crate::proto::server_line::{OkReply, ServerLine, TokenLine};
use crate::proto::token::{format_id, DeviceToken, SECRET_BYTES};
use crate::store::{StoreOp, TokenId, TokenRecord};

/// A device token as the core keeps it.
pub(super) struct Token {
    /// The account.
    user: Key,
    /// SHA-256 of the secret's text.
    digest: [u8; 32],
    label: String,
    created_ms: i64,
    /// The last use, exactly.
    last_used_ms: i64,
    /// The last use as written to the store.
    stored_last_used_ms: i64,
}

impl Token {
    pub(super) fn from_record(user: Key, rec: TokenRecord) -> Token {
        Token {
            user,
            digest: rec.digest,
            label: rec.label,
            created_ms: rec.created_ms,
            last_used_ms: rec.last_used_ms,
            stored_last_used_ms: rec.last_used_ms,
        }
    }

    /// The account it logs in to.
    pub(super) fn user(&self) -> &Key {
        &self.user
    }

    /// When it expires unless used before.
    fn expires_ms(&self) -> i64 {
        self.last_used_ms
            .saturating_add(TOKEN_IDLE_LIFETIME_MS)
            .min(self.created_ms.saturating_add(TOKEN_MAX_LIFETIME_MS))
    }

    pub(super) fn live(&self, now: i64) -> bool {
        now < self.expires_ms()
    }
}

/// The digest the store keeps of a secret.
fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Core {
    /// The ids of the account's tokens that have expired.
    fn expired_tokens(&self, key: &Key) -> Vec<TokenId> {
        let Some(acct) = self.accounts.get(key) else {
            return Vec::new();
        };
        acct.ties()
            .tokens
            .iter()
            .filter(|id| self.tokens.get(id).is_none_or(|t| !t.live(self.now)))
            .copied()
            .collect()
    }

    /// Removes tokens of the account from memory (the caller writes the same to the store).
    pub(super) fn forget_tokens(&mut self, key: &Key, ids: &[TokenId]) {
        for id in ids {
            self.tokens.remove(id);
        }
        if let Some(acct) = self.accounts.get_mut(key) {
            if let Some(t) = acct.ties_if_any() {
                t.tokens.retain(|id| !ids.contains(id));
            }
        }
    }

    /// Removes the account's expired tokens, in memory and on disk (the write is not waited for:
    /// nothing is answered from it, and a crash before it only leaves expired tokens behind).
    fn purge_expired_tokens(&mut self, key: &Key) {
        let expired = self.expired_tokens(key);
        if !expired.is_empty() {
            self.forget_tokens(key, &expired);
            self.store(StoreOp::RevokeTokens { ids: expired }, |_, _| {});
        }
    }

    /// Closes the connections of `key`, other than `except`, that are on one of `ids`.
    fn close_on_tokens(&mut self, key: &Key, ids: &[TokenId], except: ConnId) -> u64 {
        let Some(acct) = self.accounts.get(key) else {
            return 0;
        };
        let on: Vec<ConnId> = acct
            .conns
            .iter()
            .copied()
            .filter(|c| *c != except)
            .filter(|c| {
                self.conns
                    .get(c)
                    .and_then(|c| c.device_token)
                    .is_some_and(|t| ids.contains(&t))
            })
            .collect();
        for &conn in &on {
            self.close_with_bye(
                conn,
                ByeCode::REVOKED,
                "the token this connection logged in with was revoked",
            );
        }
        on.len() as u64
    }

    pub(super) fn token(&mut self, mut req: Req, label: Option<String>) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        self.purge_expired_tokens(&me);
        let held = self.accounts.get(&me).map_or(0, |a| a.ties().tokens.len());
        if held >= MAX_TOKENS_PER_ACCOUNT {
            let text = format!(
                "you hold {MAX_TOKENS_PER_ACCOUNT} tokens, the most an account may; REVOKE one first"
            );
            return self.refuse(req, Code::TOO_MANY_TOKENS, &text);
        }
        let mut secret = [0u8; SECRET_BYTES];
        let id = loop {
            match self.rng.u64() {
                Ok(id) if !self.tokens.contains_key(&id) => break id,
                Ok(_) => continue,
                Err(e) => return self.internal_error(req, &e.to_string()),
            }
        };
        if let Err(e) = self.rng.fill(&mut secret) {
            return self.internal_error(req, &e.to_string());
        }
        let token = DeviceToken::new(id, &secret);
        let Some((_, secret_text)) = token.parts() else {
            return self.internal_error(req, "an issued token does not have the token form");
        };
        let record = TokenRecord {
            id,
            user: me.as_str().to_owned(),
            digest: digest(secret_text),
            label: label.unwrap_or_default(),
            created_ms: self.now,
            last_used_ms: self.now,
        };
        self.tokens
            .insert(id, Token::from_record(me.clone(), record.clone()));
        if let Some(acct) = self.accounts.get_mut(&me) {
            acct.ties_mut().tokens.push(id);
            log::debug!("{} was issued token {}", acct.name, format_id(id));
        }
        let addr = self.peer_key(req.conn);
        self.tally.count("device tokens issued", addr);
        if let Some(c) = self.conns.get_mut(&req.conn) {
            c.device_token = Some(id);
        }
        self.reserve(&mut req);
        self.store(StoreOp::CreateToken(record), move |core, _| {
            let mut out = Out::new();
            out.ok(
                &req,
                OkReply::Token {
                    id,
                    token: token.expose(),
                },
            );
            core.finish(req, out);
        });
    }

    pub(super) fn resume(&mut self, req: Req, token: DeviceToken) {
        // The digest is taken whether or not the id is known, so the time taken says nothing
        // about which ids exist.
        let parts = token.parts();
        let presented = digest(parts.map_or("", |(_, secret)| secret));
        let found = parts.and_then(|(id, _)| {
            let t = self.tokens.get(&id)?;
            bool::from(presented.ct_eq(&t.digest)).then_some(id)
        });
        let refuse = |core: &mut Core, req: Req| {
            if let Some(c) = core.conns.get(&req.conn) {
                log::debug!("failed RESUME from {}", c.peer);
                core.tally.count("failed RESUMEs", c.peer.key());
            }
            core.settings.metrics.logins_failed.inc();
            core.refuse(
                req,
                Code::BAD_TOKEN,
                "unknown, expired or revoked token; LOGIN <name> <password> instead",
            );
        };
        let Some(id) = found else {
            return refuse(self, req);
        };
        let now = self.now;
        let Some(t) = self.tokens.get_mut(&id) else {
            return refuse(self, req);
        };
        let key = t.user.clone();
        if !t.live(now) {
            self.forget_tokens(&key, &[id]);
            self.store(StoreOp::RevokeTokens { ids: vec![id] }, |_, _| {});
            return refuse(self, req);
        }
        // An account being deleted or not yet registered has no password hash: nothing logs in.
        if self.accounts.get(&key).is_none_or(|a| a.phc.is_none()) {
            return refuse(self, req);
        }
        // A suspension revokes no token: the device logs in again once it is lifted. Only a valid
        // token's holder learns of it.
        if let Some(why) = self.suspension(&key) {
            return self.refuse(req, Code::SUSPENDED, &why);
        }
        let Some(t) = self.tokens.get_mut(&id) else {
            return refuse(self, req);
        };
        t.last_used_ms = now;
        if now - t.stored_last_used_ms >= TOKEN_TOUCH_INTERVAL_MS {
            t.stored_last_used_ms = now;
            self.store(
                StoreOp::TouchToken {
                    id,
                    last_used_ms: now,
                },
                |_, _| {},
            );
        }
        self.enter(req, key, Via::Token(id));
    }

    pub(super) fn list_tokens(&mut self, req: Req) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let current = self.conns.get(&req.conn).and_then(|c| c.device_token);
        let mut live: Vec<(TokenId, &Token)> = self
            .accounts
            .get(&me)
            .map(|a| a.ties().tokens.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|id| self.tokens.get(id).map(|t| (*id, t)))
            .filter(|(_, t)| t.live(self.now))
            .collect();
        live.sort_by_key(|(id, t)| (t.created_ms, *id));
        let mut out = Out::new();
        for (id, t) in &live {
            out.line(&ServerLine::Token(TokenLine {
                id: *id,
                created_ms: t.created_ms,
                last_used_ms: t.last_used_ms,
                expires_ms: t.expires_ms(),
                current: current == Some(*id),
                label: &t.label,
            }));
        }
        out.ok(
            &req,
            OkReply::Tokens {
                count: live.len() as u64,
            },
        );
        self.finish(req, out);
    }

    pub(super) fn revoke(&mut self, mut req: Req, which: Revoke) {
        let Some(me) = self.account_of(req.conn) else {
            return;
        };
        let now = self.now;
        let mine = self
            .accounts
            .get(&me)
            .map(|a| a.ties().tokens.clone())
            .unwrap_or_default();
        let is_live = |id: &TokenId| self.tokens.get(id).is_some_and(|t| t.live(now));
        let (ids, revoked) = match which {
            // Expired tokens go too, uncounted: TOKENS never showed them.
            Revoke::All => {
                let live = mine.iter().filter(|id| is_live(id)).count();
                (mine, live as u64)
            }
            Revoke::One(id) if mine.contains(&id) && is_live(&id) => (vec![id], 1),
            Revoke::One(id) => {
                let text = format!("you have no token {}; TOKENS lists yours", format_id(id));
                return self.refuse(req, Code::UNKNOWN_TOKEN, &text);
            }
        };
        self.forget_tokens(&me, &ids);
        // This connection stays logged in, whatever it revokes; it is no longer on a token.
        if let Some(c) = self.conns.get_mut(&req.conn) {
            if c.device_token.is_some_and(|t| ids.contains(&t)) {
                c.device_token = None;
            }
        }
        let conn = req.conn;
        self.reserve(&mut req);
        self.store(
            StoreOp::RevokeTokens { ids: ids.clone() },
            move |core, _| {
                let closed = core.close_on_tokens(&me, &ids, conn);
                let mut out = Out::new();
                out.ok(&req, OkReply::Revoke { revoked, closed });
                core.finish(req, out);
            },
        );
    }
}
