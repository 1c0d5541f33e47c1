//! HELP, PING and USERS: answers that need no store.

use super::{ConnId, Core};
use crate::proto::help;
use crate::proto::reply::{self, Code};

impl Core {
    pub(super) fn help(&mut self, conn: ConnId, label: Option<String>, topic: Option<String>) {
        let mut out = String::new();
        match topic {
            None => {
                for e in help::HELP {
                    reply::line(&mut out, "HELP", &format!("{} -- {}", e.syntax, e.summary));
                }
            }
            Some(t) => match help::lookup(&t) {
                Some(e) => {
                    reply::line(&mut out, "HELP", e.syntax);
                    for d in e.details {
                        reply::line(&mut out, "HELP", d);
                    }
                }
                None => {
                    let text = format!(
                        "no help for \"{}\"; type HELP for the list",
                        t.chars().take(32).collect::<String>()
                    );
                    return self.refuse(
                        conn,
                        label.as_deref(),
                        "HELP",
                        Code::UNKNOWN_COMMAND,
                        &text,
                    );
                }
            },
        }
        reply::ok(&mut out, label.as_deref(), "HELP", "");
        self.answer(conn, out);
    }

    pub(super) fn ping(&mut self, conn: ConnId, label: Option<String>, token: Option<String>) {
        let mut out = String::new();
        reply::line(&mut out, "PONG", token.as_deref().unwrap_or(""));
        reply::ok(&mut out, label.as_deref(), "PING", "");
        self.answer(conn, out);
    }

    pub(super) fn users(&mut self, conn: ConnId, label: Option<String>) {
        let mut out = String::new();
        for key in &self.online {
            if let Some(a) = self.accounts.get(key) {
                reply::line(&mut out, "USER", &a.name);
            }
        }
        reply::ok(
            &mut out,
            label.as_deref(),
            "USERS",
            &self.online.len().to_string(),
        );
        self.answer(conn, out);
    }
}
