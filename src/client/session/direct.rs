//! The session's side of direct sessions (spec 4.39): which offers wait for the user, where the
//! user's own offer or answer stands, and the lines typed before the session opens. No IO: the
//! shell does the networking ([`DirectAction`]) and reports back (`on_direct_*`).
//!
//! One direct session at a time. Plain lines go to it while it is being set up or open (queued
//! until it opens, at most [`QUEUED_LINES`]); `/close` ends it.

use std::collections::VecDeque;

use super::{note, Effect, NoteKind, Pending, Session};
use crate::client::render::clean;
use crate::config::DIRECT_OFFER_SECS;
use crate::proto::direct::Fingerprint;
use crate::proto::server_line::{DirectEvent, DirectReply};

/// Lines typed before the direct session opens, kept to send once it does.
pub const QUEUED_LINES: usize = 64;

/// What the shell must do for a direct session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectAction {
    /// Make a certificate and bind the listener, then call [`Session::offer_ready`] with the
    /// address to announce and the certificate's fingerprint (or [`Session::direct_failed`]).
    PrepareOffer {
        /// Whom the offer is for.
        peer: String,
    },
    /// Make a certificate, then call [`Session::accept_ready`] with its fingerprint.
    PrepareAccept {
        /// Whose offer is accepted.
        peer: String,
    },
    /// Wait on the listener for the peer, whose certificate must have this fingerprint; then
    /// [`Session::on_direct_open`].
    Await {
        /// Who connects.
        peer: String,
        /// The fingerprint its certificate must have.
        fingerprint: Fingerprint,
    },
    /// Connect to the peer's listener, whose certificate must have this fingerprint; then
    /// [`Session::on_direct_open`].
    Dial {
        /// Whom to connect to.
        peer: String,
        /// Where.
        address: String,
        /// The fingerprint its certificate must have.
        fingerprint: Fingerprint,
    },
    /// Send a line to the peer.
    Say(String),
    /// Close the direct session, its listener and its certificate.
    Close,
}

/// Where the user's direct session stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum Stage {
    /// None.
    #[default]
    Idle,
    /// `/direct` given; the shell prepares the listener.
    Preparing { peer: String },
    /// The offer was sent; the listener waits.
    Offered { peer: String },
    /// The peer accepted; its client should be connecting.
    Awaiting { peer: String },
    /// `/accept` given: the certificate is being made, then the answer sent.
    Accepting { peer: String },
    /// The answer was accepted by the server; connecting to the peer.
    Dialing { peer: String },
    /// Open.
    Open { peer: String },
}

impl Stage {
    fn peer(&self) -> Option<&str> {
        match self {
            Stage::Idle => None,
            Stage::Preparing { peer }
            | Stage::Offered { peer }
            | Stage::Awaiting { peer }
            | Stage::Accepting { peer }
            | Stage::Dialing { peer }
            | Stage::Open { peer } => Some(peer),
        }
    }
}

/// An offer made to the user, waiting for an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Offer {
    name: String,
    address: String,
}

/// The kinds of DIRECT command sent, to match their answers in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sent {
    Offer,
    Accept,
    Decline,
    Cancel,
}

/// The direct-session part of a [`Session`].
#[derive(Debug, Default)]
pub(super) struct Direct {
    pub(super) stage: Stage,
    offers: Vec<Offer>,
    /// DIRECT commands sent and not answered, oldest first: the server answers in order.
    sent: VecDeque<Sent>,
    queued: VecDeque<String>,
}

fn info(text: impl Into<String>) -> Effect {
    note(NoteKind::Direct, text)
}

fn error(text: impl Into<String>) -> Effect {
    note(NoteKind::Error, text)
}

impl Session {
    /// True while a direct session is being set up or open: plain lines go to it.
    pub fn direct_active(&self) -> bool {
        self.direct.stage != Stage::Idle
    }

    /// What the prompt shows of the direct session: ` [direct bob]` while open, ` [direct bob?]`
    /// while being set up, nothing without one.
    pub(super) fn direct_prompt(&self) -> String {
        match &self.direct.stage {
            Stage::Idle => String::new(),
            Stage::Open { peer } => format!(" [direct {}]", clean(peer)),
            stage => format!(" [direct {}?]", clean(stage.peer().unwrap_or(""))),
        }
    }

    fn direct_send(&mut self, kind: Sent, line: String) -> Effect {
        self.direct.sent.push_back(kind);
        self.send(Pending::Direct, line)
    }

    fn drop_queued(&mut self) -> Vec<Effect> {
        let n = self.direct.queued.len();
        self.direct.queued.clear();
        if n == 0 {
            return Vec::new();
        }
        vec![error(format!(
            "{n} line{} typed for the direct session {} not sent",
            if n == 1 { "" } else { "s" },
            if n == 1 { "was" } else { "were" }
        ))]
    }

    /// Ends the session in whatever stage: the shell closes what it holds.
    fn direct_end(&mut self, why: Effect) -> Vec<Effect> {
        self.direct.stage = Stage::Idle;
        let mut out = vec![Effect::Direct(DirectAction::Close), why];
        out.extend(self.drop_queued());
        out
    }

    pub(super) fn direct_input_offer(&mut self, to: &str) -> Vec<Effect> {
        if let Some(peer) = self.direct.stage.peer() {
            return vec![error(format!(
                "a direct session with {} is already open or being set up; /close it first",
                clean(peer)
            ))];
        }
        if self
            .me
            .as_deref()
            .is_some_and(|me| me.eq_ignore_ascii_case(to))
        {
            return vec![error("a direct session is with someone else")];
        }
        self.direct.stage = Stage::Preparing {
            peer: to.to_string(),
        };
        vec![Effect::Direct(DirectAction::PrepareOffer {
            peer: to.to_string(),
        })]
    }

    /// The listener is bound and the certificate made: sends the offer.
    pub fn offer_ready(&mut self, address: &str, fingerprint: &Fingerprint) -> Vec<Effect> {
        let Stage::Preparing { peer } = self.direct.stage.clone() else {
            return vec![Effect::Direct(DirectAction::Close)];
        };
        self.direct.stage = Stage::Offered { peer: peer.clone() };
        vec![
            self.direct_send(
                Sent::Offer,
                format!("DIRECT OFFER {peer} {address} {fingerprint}"),
            ),
            info(format!(
                "offering {} a direct session; your client listens at {}, which their client must be \
                 able to reach (there is no NAT traversal). What you then write goes between your two \
                 clients only, encrypted, and is stored nowhere.",
                clean(&peer),
                clean(address)
            )),
        ]
    }

    pub(super) fn direct_input_accept(&mut self, from: &str) -> Vec<Effect> {
        if let Some(peer) = self.direct.stage.peer() {
            return vec![error(format!(
                "a direct session with {} is already open or being set up; /close it first",
                clean(peer)
            ))];
        }
        let Some(i) = self
            .direct
            .offers
            .iter()
            .position(|o| o.name.eq_ignore_ascii_case(from))
        else {
            return vec![error(format!(
                "{} has not offered you a direct session (an offer waits {DIRECT_OFFER_SECS} s)",
                clean(from)
            ))];
        };
        let offer = self.direct.offers.remove(i);
        self.direct.stage = Stage::Accepting {
            peer: offer.name.clone(),
        };
        vec![Effect::Direct(DirectAction::PrepareAccept {
            peer: offer.name,
        })]
    }

    /// The certificate is made: sends the acceptance.
    pub fn accept_ready(&mut self, fingerprint: &Fingerprint) -> Vec<Effect> {
        let Stage::Accepting { peer } = self.direct.stage.clone() else {
            return vec![Effect::Direct(DirectAction::Close)];
        };
        vec![self.direct_send(Sent::Accept, format!("DIRECT ACCEPT {peer} {fingerprint}"))]
    }

    pub(super) fn direct_input_decline(&mut self, from: &str) -> Vec<Effect> {
        self.direct
            .offers
            .retain(|o| !o.name.eq_ignore_ascii_case(from));
        vec![self.direct_send(Sent::Decline, format!("DIRECT DECLINE {from}"))]
    }

    pub(super) fn direct_input_close(&mut self) -> Vec<Effect> {
        let stage = self.direct.stage.clone();
        let Some(peer) = stage.peer().map(str::to_owned) else {
            return vec![error("no direct session to close")];
        };
        let mut out = Vec::new();
        if let Stage::Offered { .. } = stage {
            out.push(self.direct_send(Sent::Cancel, format!("DIRECT CANCEL {peer}")));
        }
        let why = info(match stage {
            Stage::Open { .. } => format!("you closed the direct session with {}", clean(&peer)),
            _ => format!("direct session with {} called off", clean(&peer)),
        });
        out.extend(self.direct_end(why));
        out
    }

    /// A plain line while a direct session is active: to the peer, or queued until it opens.
    pub(super) fn direct_input_line(&mut self, text: &str) -> Vec<Effect> {
        if let Stage::Open { .. } = self.direct.stage {
            return vec![Effect::Direct(DirectAction::Say(text.to_string()))];
        }
        if self.direct.queued.len() >= QUEUED_LINES {
            return vec![error(format!(
                "{QUEUED_LINES} lines already wait for the direct session to open; this one was not sent"
            ))];
        }
        self.direct.queued.push_back(text.to_string());
        if self.labelled {
            vec![info(
                "the direct session is not open yet; the line will go once it is",
            )]
        } else {
            Vec::new()
        }
    }

    pub(super) fn on_direct_push(&mut self, name: &str, event: DirectEvent<'_>) -> Vec<Effect> {
        let shown = clean(name).into_owned();
        let ours = |d: &Direct| matches!(&d.stage, Stage::Offered { peer } if peer.eq_ignore_ascii_case(name));
        match event {
            DirectEvent::Offer { address, .. } => {
                self.direct
                    .offers
                    .retain(|o| !o.name.eq_ignore_ascii_case(name));
                self.direct.offers.push(Offer {
                    name: name.to_string(),
                    address: address.to_string(),
                });
                vec![info(format!(
                    "{shown} offers you a direct session: your client would connect to theirs at {} \
                     and nothing you say would pass through the server or be stored. /accept {shown} \
                     or /decline {shown} (the offer waits {DIRECT_OFFER_SECS} s).",
                    clean(address)
                ))]
            }
            DirectEvent::Accepted { fingerprint } => {
                if !ours(&self.direct) {
                    return Vec::new();
                }
                let Ok(fingerprint) = Fingerprint::parse(fingerprint) else {
                    return self
                        .direct_end(error("the server relayed a fingerprint that is not one"));
                };
                self.direct.stage = Stage::Awaiting {
                    peer: name.to_string(),
                };
                vec![
                    Effect::Direct(DirectAction::Await {
                        peer: name.to_string(),
                        fingerprint,
                    }),
                    info(format!(
                        "{shown} accepted; waiting for their client to connect to yours"
                    )),
                ]
            }
            DirectEvent::Declined if ours(&self.direct) => {
                self.direct_end(info(format!("{shown} declined the direct session")))
            }
            DirectEvent::Gone if ours(&self.direct) => self.direct_end(info(format!(
                "{shown} went offline before answering your offer"
            ))),
            DirectEvent::Expired if ours(&self.direct) => {
                self.direct_end(info(format!("{shown} did not answer your offer in time")))
            }
            DirectEvent::Withdrawn | DirectEvent::Expired | DirectEvent::Answered => {
                let had = self.direct.offers.len();
                self.direct
                    .offers
                    .retain(|o| !o.name.eq_ignore_ascii_case(name));
                if self.direct.offers.len() == had {
                    return Vec::new();
                }
                vec![info(match event {
                    DirectEvent::Withdrawn => format!("{shown} withdrew their offer"),
                    DirectEvent::Expired => format!("{shown}'s offer expired"),
                    _ => format!("{shown}'s offer was answered on another of your connections"),
                })]
            }
            DirectEvent::Declined | DirectEvent::Gone => Vec::new(),
        }
    }

    /// The final reply of a DIRECT command.
    pub(super) fn on_direct_ok(&mut self, reply: DirectReply<'_>) -> Vec<Effect> {
        self.direct.sent.pop_front();
        match reply {
            DirectReply::Offer { name, expires_secs } => vec![info(format!(
                "offer passed to {}; it waits {expires_secs} s for an answer",
                clean(name)
            ))],
            DirectReply::Accept {
                name,
                address,
                fingerprint,
            } => {
                if !matches!(&self.direct.stage, Stage::Accepting { peer } if peer.eq_ignore_ascii_case(name))
                {
                    return Vec::new();
                }
                let Ok(fingerprint) = Fingerprint::parse(fingerprint) else {
                    return self
                        .direct_end(error("the server relayed a fingerprint that is not one"));
                };
                self.direct.stage = Stage::Dialing {
                    peer: name.to_string(),
                };
                vec![
                    Effect::Direct(DirectAction::Dial {
                        peer: name.to_string(),
                        address: address.to_string(),
                        fingerprint,
                    }),
                    info(format!(
                        "connecting to {}'s client at {}",
                        clean(name),
                        clean(address)
                    )),
                ]
            }
            DirectReply::Decline { name } => {
                vec![info(format!("you declined {}'s offer", clean(name)))]
            }
            DirectReply::Cancel { name } => {
                vec![info(format!("your offer to {} is withdrawn", clean(name)))]
            }
        }
    }

    /// A DIRECT command failed: if it was the offer or the acceptance, the session ends.
    pub(super) fn on_direct_fail(&mut self, text: &str) -> Vec<Effect> {
        let shown = error(format!("direct session: {}", clean(text)));
        match self.direct.sent.pop_front() {
            Some(Sent::Offer) if matches!(self.direct.stage, Stage::Offered { .. }) => {
                self.direct_end(shown)
            }
            Some(Sent::Accept) if matches!(self.direct.stage, Stage::Accepting { .. }) => {
                self.direct_end(shown)
            }
            _ => vec![shown],
        }
    }

    /// The connection to the server is gone: offers made to the user are withdrawn with it, and
    /// so is the user's own offer; a session already open or connecting goes on.
    pub(super) fn direct_on_disconnected(&mut self) -> Vec<Effect> {
        self.direct.offers.clear();
        self.direct.sent.clear();
        match self.direct.stage {
            Stage::Preparing { .. } | Stage::Offered { .. } | Stage::Accepting { .. } => self
                .direct_end(error(
                    "the direct session was not set up before the connection was lost",
                )),
            _ => Vec::new(),
        }
    }

    /// The shell could not do its part (bind, make a certificate, connect, or check the peer).
    pub fn direct_failed(&mut self, why: &str) -> Vec<Effect> {
        let peer = self.direct.stage.peer().unwrap_or("").to_string();
        let mut out = Vec::new();
        if let Stage::Offered { .. } = self.direct.stage {
            out.push(self.direct_send(Sent::Cancel, format!("DIRECT CANCEL {peer}")));
        }
        out.extend(self.direct_end(error(format!(
            "direct session with {} aborted: {}",
            clean(&peer),
            clean(why)
        ))));
        out
    }

    /// The peer is connected and its certificate checked: the session is open.
    pub fn on_direct_open(&mut self) -> Vec<Effect> {
        let (Stage::Awaiting { peer } | Stage::Dialing { peer }) = self.direct.stage.clone() else {
            return vec![Effect::Direct(DirectAction::Close)];
        };
        self.direct.stage = Stage::Open { peer: peer.clone() };
        let shown = clean(&peer).into_owned();
        let mut out = vec![info(format!(
            "direct session with {shown} open: TLS between your two clients, their certificate checked \
             against the fingerprint the server relayed. Lines you type now go to {shown} only, and are \
             stored nowhere (not on the server, not in HISTORY). /close ends it."
        ))];
        for line in std::mem::take(&mut self.direct.queued) {
            out.push(Effect::Direct(DirectAction::Say(line)));
        }
        out
    }

    /// A line from the peer.
    pub fn on_direct_message(&mut self, text: &str) -> Vec<Effect> {
        let peer = clean(self.direct.stage.peer().unwrap_or("?")).into_owned();
        vec![note(NoteKind::Direct, format!("{peer}: {}", clean(text)))]
    }

    /// The peer sent something that is not message text.
    pub fn on_direct_dropped(&mut self) -> Vec<Effect> {
        vec![error(
            "the other client sent a line that is not valid text; it was dropped",
        )]
    }

    /// The session ended: the peer closed it, or it broke (`why`).
    pub fn on_direct_closed(&mut self, why: Option<&str>) -> Vec<Effect> {
        let Some(peer) = self.direct.stage.peer().map(str::to_owned) else {
            return Vec::new();
        };
        let text = match why {
            None => format!("{} closed the direct session", clean(&peer)),
            Some(why) => format!(
                "the direct session with {} broke: {}",
                clean(&peer),
                clean(why)
            ),
        };
        self.direct_end(info(text))
    }
}
