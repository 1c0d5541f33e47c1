//! Model test: random batches of store ops applied to the redb store and to the in-memory store
//! must give identical replies and identical snapshots.
//!
//! The failure this guards against is a divergence between the two implementations: the core is
//! tested and fuzzed against the memory store, so anything the redb store does differently (an
//! index key, a paging cursor, an iteration order, a record that does not round trip) would be a
//! bug that only the production server shows. The generator is a fixed-seed xorshift, so a failure
//! reproduces exactly; the failing batch number is in the message.

mod store_support;

use chatd::store::{
    BanRecord, Conversation, Cursor, FriendState, InviteRecord, MemberRecord, MessageRecord, MsgId,
    Role, RoomRecord, StoreOp, To, TokenId, TokenRecord, TopicRecord,
};
use store_support::{account, Subject};

/// Marsaglia's xorshift64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Display names, several spellings of some accounts, so key normalisation is exercised.
const NAMES: &[&str] = &[
    "alice", "Alice", "BOB", "bob", "carol", "Dave", "erin", "Zed", "zed", "a1",
];
const TEXTS: &[&str] = &[
    "hi",
    "",
    "two words",
    "ünïcödé \u{1F600}",
    "a longer line of text, with punctuation!",
];

/// Room numbers the generator uses: a few, so rooms fill up and are deleted and reused.
const ROOMS: u64 = 4;

struct Generator {
    rng: Rng,
    next_id: MsgId,
    /// Ids skipped by the gaps, not yet used: a message now and then takes one, below the largest
    /// stored id, as a cluster's replicated message can (the durable store keeps it outside its
    /// blocks).
    gaps: Vec<MsgId>,
    /// Messages appended per room number, for the positions of the next ones.
    room_counts: [u64; ROOMS as usize + 1],
}

impl Generator {
    fn name(&mut self) -> String {
        self.rng.pick(NAMES).to_string()
    }

    fn key(&mut self) -> String {
        self.name().to_ascii_lowercase()
    }

    /// A new password hash: half the time of the shape chatd makes (a 16-byte salt and a 32-byte
    /// hash, which the accounts table keeps in binary), else any other string (kept as it is).
    fn phc(&mut self) -> String {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        if self.rng.chance(50) {
            return format!("$scrypt$new${}", self.rng.below(100));
        }
        // Unpadded base64 of 16 and 32 bytes: the last character carries 2 and 4 bits, the rest
        // zero.
        let mut b64 = |chars: usize, last: &[u8]| {
            let mut s: String = (0..chars - 1)
                .map(|_| B64[self.rng.below(64) as usize] as char)
                .collect();
            s.push(last[self.rng.below(last.len() as u64) as usize] as char);
            s
        };
        let salt = b64(22, b"AQgw");
        let hash = b64(43, b"AEIMQUYcgkosw048");
        let log_n = 1 + self.rng.below(20);
        format!("$scrypt$ln={log_n},r=8,p=1${salt}${hash}")
    }

    fn message(&mut self) -> MessageRecord {
        // Ids increase with occasional gaps, as when a failed batch's ids are not reused.
        let id = if !self.gaps.is_empty() && self.rng.chance(10) {
            let at = self.rng.below(self.gaps.len() as u64) as usize;
            self.gaps.swap_remove(at)
        } else {
            let skip = u64::from(self.rng.chance(20)) * self.rng.below(5);
            self.gaps.extend(self.next_id + 1..=self.next_id + skip);
            self.next_id += 1 + skip;
            self.next_id
        };
        let to = match self.rng.below(10) {
            0..=4 => To::User(self.name()),
            5..=7 => To::Group((0..1 + self.rng.below(5)).map(|_| self.name()).collect()),
            _ => To::All,
        };
        let mut text = self.rng.pick(TEXTS).to_string();
        if self.rng.chance(5) {
            text = text.repeat(60);
        }
        MessageRecord {
            id,
            time_ms: self.rng.next() as i64 >> 20,
            from: self.name(),
            to,
            text,
        }
    }

    /// An id near the stored range, or an extreme one.
    fn cursor_id(&mut self) -> MsgId {
        match self.rng.below(20) {
            0 => 0,
            1 => u64::MAX,
            _ => self.rng.below(self.next_id + 3),
        }
    }

    fn room(&mut self) -> u64 {
        1 + self.rng.below(ROOMS)
    }

    /// A room op: settings, members, bans, invitations, messages and the reads of rooms.
    fn room_op(&mut self) -> StoreOp {
        let room = self.room();
        let user = self.key();
        match self.rng.below(16) {
            0 => {
                let rec = RoomRecord {
                    name: format!("#{}", self.name()),
                    created_ms: self.rng.below(1000) as i64,
                    private: self.rng.chance(50),
                    topic: self.rng.chance(50).then(|| TopicRecord {
                        text: self.rng.pick(TEXTS).to_string(),
                        by: self.name(),
                        time_ms: self.rng.below(1000) as i64,
                    }),
                };
                if self.rng.chance(50) {
                    StoreOp::PutRoom {
                        id: room,
                        room: rec,
                    }
                } else {
                    // A creation: the room and its owner in one op.
                    StoreOp::CreateRoom {
                        id: room,
                        room: Box::new(rec),
                        owner: user,
                        member: MemberRecord {
                            role: Role::Owner,
                            since: 0,
                            read_id: 0,
                            read_seq: 0,
                        },
                    }
                }
            }
            1 => StoreOp::DeleteRoom { id: room },
            2 | 3 => StoreOp::PutMember {
                room,
                user,
                member: MemberRecord {
                    role: *self.rng.pick(&Role::ALL),
                    since: self.rng.below(self.next_id + 1),
                    read_id: self.rng.below(self.next_id + 1),
                    read_seq: self.rng.below(50),
                },
            },
            4 => StoreOp::RemoveMember { room, user },
            5 => StoreOp::PutBan {
                room,
                user,
                ban: BanRecord {
                    by: self.name(),
                    time_ms: self.rng.below(1000) as i64,
                    reason: self.rng.pick(TEXTS).to_string(),
                },
            },
            6 => StoreOp::RemoveBan { room, user },
            7 => StoreOp::PutInvite {
                room,
                user,
                invite: InviteRecord {
                    by: self.name(),
                    expires_ms: self.rng.next() as i64,
                },
            },
            8 => StoreOp::RemoveInvite { room, user },
            9 | 10 => {
                self.next_id += 1 + u64::from(self.rng.chance(20));
                self.room_counts[room as usize] += 1;
                StoreOp::AppendRoomMessage {
                    msg: MessageRecord {
                        id: self.next_id,
                        time_ms: self.rng.below(1000) as i64,
                        from: self.name(),
                        to: To::Room(format!("#r{room}")),
                        text: self.rng.pick(TEXTS).to_string(),
                    },
                    room,
                    seq: self.room_counts[room as usize],
                }
            }
            11 => StoreOp::RoomReplay {
                room,
                after: self.cursor_id(),
                upto: self.cursor_id(),
                count: 1 + self.rng.below(20) as u32,
            },
            12 => StoreOp::SetDirectRead {
                user,
                with: self.key(),
                id: self.cursor_id(),
            },
            13 => StoreOp::DirectRead {
                user,
                with: self.key(),
            },
            14 => StoreOp::FirstUnread {
                rooms: (0..self.rng.below(4))
                    .map(|_| (self.room(), self.cursor_id()))
                    .collect(),
            },
            _ => StoreOp::RoomSeq {
                room,
                upto: self.cursor_id(),
            },
        }
    }

    /// A token id from a small set, so ops meet the same tokens again.
    fn token_id(&mut self) -> TokenId {
        self.rng.below(14)
    }

    fn time(&mut self) -> i64 {
        self.rng.next() as i64 >> 20
    }

    /// The ops of accounts, tokens, blocks and profiles.
    fn account_op(&mut self) -> StoreOp {
        match self.rng.below(30) {
            0..=5 => StoreOp::CreateToken(TokenRecord {
                id: self.token_id(),
                user: self.key(),
                digest: [self.rng.below(256) as u8; 32],
                label: self.rng.pick(TEXTS).to_string(),
                created_ms: self.time(),
                last_used_ms: self.time(),
            }),
            6..=8 => StoreOp::TouchToken {
                id: self.token_id(),
                last_used_ms: self.time(),
            },
            9..=11 => StoreOp::RevokeTokens {
                ids: (0..self.rng.below(4)).map(|_| self.token_id()).collect(),
            },
            12..=13 => StoreOp::SetPassword {
                user: self.key(),
                phc: self.phc(),
                revoke: (0..self.rng.below(3)).map(|_| self.token_id()).collect(),
            },
            14 => StoreOp::DeleteAccount {
                user: self.key(),
                deleted_ms: self.time(),
            },
            15..=19 => StoreOp::Block {
                a: self.key(),
                b: self.key(),
            },
            20..=21 => StoreOp::Unblock {
                a: self.key(),
                b: self.key(),
            },
            22..=24 => StoreOp::SetAway {
                user: self.key(),
                away: self
                    .rng
                    .chance(70)
                    .then(|| self.rng.pick(TEXTS).to_string()),
            },
            25..=26 => StoreOp::SetDms {
                user: self.key(),
                friends_only: self.rng.chance(50),
            },
            27 => StoreOp::SetSuspended {
                user: self.key(),
                suspension: self.rng.chance(60).then(|| chatd::store::Suspension {
                    reason: self.rng.pick(TEXTS).to_string(),
                    since_ms: self.time(),
                }),
            },
            _ => StoreOp::SetLastSeen {
                user: self.key(),
                ms: self.time(),
            },
        }
    }

    fn op(&mut self) -> StoreOp {
        if self.rng.chance(30) {
            return self.room_op();
        }
        if self.rng.chance(1) {
            // Raised or set back (a clean stop sets it to the next id), as the core does.
            return StoreOp::ReserveIds {
                below: self.next_id + self.rng.below(100),
            };
        }
        match self.rng.below(130) {
            100.. => self.account_op(),
            0..=7 => {
                let name = self.name();
                let mut rec = account(&name, self.rng.below(1 << 40) as i64);
                rec.phc = self.phc();
                StoreOp::CreateAccount(rec)
            }
            8..=44 => {
                let msg = self.message();
                let pending_for = (0..self.rng.below(4)).map(|_| self.key()).collect();
                StoreOp::AppendMessage { msg, pending_for }
            }
            45..=49 => StoreOp::AddPending {
                user: self.key(),
                id: self.rng.below(self.next_id + 2),
            },
            50..=51 => StoreOp::ReadBacklog { user: self.key() },
            52..=53 => StoreOp::ReadMessages {
                ids: (0..self.rng.below(6))
                    .map(|_| self.rng.below(self.next_id + 2))
                    .collect(),
            },
            54..=57 => StoreOp::ClearBacklog {
                user: self.key(),
                upto: self.cursor_id(),
            },
            58..=69 => {
                let state = match self.rng.below(4) {
                    0 => None,
                    1 => Some(FriendState::Friends),
                    2 => Some(FriendState::Outgoing),
                    _ => Some(FriendState::Incoming),
                };
                StoreOp::SetFriendship {
                    a: self.key(),
                    b: self.key(),
                    state,
                }
            }
            _ => {
                let conv = match self.rng.below(20) {
                    0..=2 => Conversation::Broadcast,
                    3..=6 => Conversation::Room {
                        id: self.room(),
                        after: if self.rng.chance(50) {
                            0
                        } else {
                            self.cursor_id()
                        },
                    },
                    _ => Conversation::Pair(self.key(), self.key()),
                };
                let count = match self.rng.below(10) {
                    0 => 500,
                    1 => 1,
                    _ => 1 + self.rng.below(12) as u32,
                };
                let cursor = match self.rng.below(3) {
                    0 => Cursor::Latest,
                    1 => Cursor::Before(self.cursor_id()),
                    _ => Cursor::After(self.cursor_id()),
                };
                StoreOp::History {
                    conv,
                    count,
                    cursor,
                }
            }
        }
    }

    fn batch(&mut self) -> Vec<StoreOp> {
        // Mostly small batches, sometimes a large one as under load.
        let len = if self.rng.chance(3) {
            50 + self.rng.below(200)
        } else {
            1 + self.rng.below(12)
        };
        (0..len).map(|_| self.op()).collect()
    }
}

fn run(seed: u64, batches: usize, reopen_every: usize) {
    run_lagged(seed, batches, reopen_every, None)
}

/// [`run`] with the redb store indexing its conversations every `lag` messages.
fn run_lagged(seed: u64, batches: usize, reopen_every: usize, lag: Option<usize>) {
    let mut gen = Generator {
        rng: Rng(seed),
        next_id: 0,
        gaps: Vec::new(),
        room_counts: [0; ROOMS as usize + 1],
    };
    let mut model = Subject::memory();
    let mut real = Subject::redb_with_lag(lag);
    // (non-empty history pages, non-empty backlogs, non-empty room pages)
    let mut stats = [0usize; 3];
    for n in 0..batches {
        let ops = gen.batch();
        let want = model.exec(&ops);
        let got = real.exec(&ops);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(g, w, "seed {seed:#x}, batch {n}, op {i}: {:?}", ops[i]);
            match w {
                chatd::store::StoreReply::Messages(m)
                    if m.iter().any(|m| matches!(m.to, To::Room(_))) =>
                {
                    stats[2] += 1
                }
                chatd::store::StoreReply::History(p) if !p.ids.is_empty() => stats[0] += 1,
                chatd::store::StoreReply::Backlog(b) if !b.is_empty() => stats[1] += 1,
                _ => {}
            }
        }
        // The read path too: a read transaction taken now answers as the model does.
        let op = loop {
            if let Ok(read) = gen.op().into_read() {
                break read;
            }
        };
        let want = model.reader().read(&op).expect("memory read");
        let got = real.reader().read(&op).expect("redb read");
        assert_eq!(got, want, "seed {seed:#x}, read after batch {n}: {op:?}");
        if (n + 1) % reopen_every == 0 || n + 1 == batches {
            assert_eq!(
                real.snapshot(),
                model.snapshot(),
                "seed {seed:#x}, snapshot after batch {n}"
            );
        }
    }
    // The generator reaches the interesting cases, not only empty answers.
    assert!(
        stats[0] > batches / 4 && stats[1] > batches / 20 && stats[2] > batches / 20,
        "too few non-empty answers: {stats:?}"
    );
    let snap = model.snapshot();
    assert!(
        !snap.accounts.is_empty()
            && !snap.friendships.is_empty()
            && !snap.pending_counts.is_empty()
            && !snap.tokens.is_empty()
            && !snap.blocks.is_empty()
            && !snap.profiles.is_empty()
            && !snap.retired.is_empty()
            && !snap.rooms.is_empty()
            && !snap.members.is_empty(),
        "{snap:?}"
    );
}

#[test]
fn redb_store_matches_memory_store() {
    run(0x5eed_0001, 3000, 250);
}

#[test]
fn redb_store_matches_memory_store_second_seed() {
    run(0xdead_beef_cafe, 1000, 97);
}

/// The conversation index's watermark moves every few messages, inside batches and at their ends,
/// with reopens (which rebuild the writer's list of messages past it) between: every page, read in
/// the write transaction or a read transaction, is still the model's.
#[test]
fn redb_store_with_a_small_index_lag_matches_memory_store() {
    run_lagged(0x1a6_0005, 1500, 61, Some(7));
}
