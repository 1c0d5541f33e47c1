//! HELP, PING and USERS: answers that need no store.

use super::commands::COMMANDS;
use super::out::Out;
use super::stream::Stream;
use super::{Core, Req};
use crate::proto::code::Code;
use crate::proto::command::{quote, Verb};
use crate::proto::server_line::{OkReply, ServerLine};

impl Core {
    /// HELP is rendered from the command table: an index line per command, or one command's usage
    /// and details.
    pub(super) fn help(&mut self, req: Req, topic: Option<String>) {
        let mut out = Out::new();
        match topic {
            None => {
                for row in COMMANDS {
                    let text = format!("{} -- {}", row.verb.syntax().usage, row.summary);
                    out.line(&ServerLine::Help { text: &text });
                }
            }
            Some(t) => match Verb::lookup(&t) {
                Some(verb) => {
                    let row = super::commands::row(verb);
                    out.line(&ServerLine::Help {
                        text: verb.syntax().usage,
                    });
                    for d in row.details {
                        out.line(&ServerLine::Help { text: d });
                    }
                }
                None => {
                    let text = format!("no help for \"{}\"; type HELP for the list", quote(&t));
                    return self.refuse(req, Code::UNKNOWN_COMMAND, &text);
                }
            },
        }
        out.ok(&req, OkReply::Help);
        self.finish(req, out);
    }

    pub(super) fn ping(&mut self, req: Req, token: Option<String>) {
        let mut out = Out::new();
        out.line(&ServerLine::Pong {
            token: token.as_deref(),
        });
        out.ok(&req, OkReply::Ping);
        self.finish(req, out);
    }

    /// USERS goes out part by part (see `stream`): with thousands online, it is a long answer.
    pub(super) fn users(&mut self, req: Req) {
        let label = req.label.clone();
        self.answer_in_parts(req, Stream::users(label));
    }
}
