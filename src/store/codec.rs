//! The on-disk record format of accounts, messages, device tokens, profiles and retired names,
//! encoded by hand.
//!
//! Records are encoded by hand rather than with a serialisation crate: the format is small, it is
//! versioned by a leading byte so it can change without a migration of the whole file, and decoding
//! never trusts a length it reads, so a damaged record is an error, never a panic or a huge
//! allocation.
//!
//! The record format: a format-version byte, then the fields in a fixed order. Strings are a
//! LEB128 length followed by UTF-8 bytes; times are i64 little-endian; the message id is the table
//! key and is not repeated in the value.
//!
//! Version 1:
//! - account: `1, name, phc, created_ms`
//! - message: `1, time_ms, from, to, text` where `to` is a tag byte then its payload:
//!   `0, name` (MSG), `1, count, name * count` (GROUP), `2` (ALL), `3, room name` (a room).
//! - token (the id is the key): `1, user, digest (32 bytes), label, created_ms, last_used_ms`
//! - profile: `1, flags, [away], [last_seen_ms], [reason, since_ms]`, where flag bit 0 is "friends
//!   only", bit 1 says an away message follows, bit 2 that a last-seen time follows and bit 3 that
//!   the account is suspended (the reason and the time follow); other bits are damage, so a build
//!   that does not know suspensions refuses such a file rather than let a suspended account in.
//! - retired name: `1, name, deleted_ms`
//! - room: `1, name, created_ms, flags, [topic, topic_by, topic_ms]` where flags bit 0 is
//!   private and bit 1 says a topic record follows.
//! - member: `1, role, since, read_id, read_seq` (role: 0 member, 1 op, 2 owner; the ids u64
//!   little-endian).
//! - ban: `1, by, time_ms, reason`.
//! - invitation: `1, by, expires_ms`.
//! - conversation index row (no version byte: the table layout versions it): the row's ids,
//!   ascending, as LEB128 numbers, the first whole and each later one as its distance from the one
//!   before (at least 1); the row's key holds its last id, which the row must end at.
//!
//! Version 2, the account row of the accounts table when its hash is an scrypt PHC string of the
//! shape chatd makes (`$scrypt$ln=L,r=R,p=P$SALT$HASH` with a 16-byte salt and a 32-byte hash, which
//! formats back to the same string): `2, name, ln (1 byte), r (u32), p (u32), salt (16 bytes), hash
//! (32 bytes), created_ms`, the integers little-endian. Version 1 rows are still read, and any
//! other hash is written in version 1.

use crate::auth::Phc;

use super::{
    AccountRecord, BanRecord, Damage, InviteRecord, MemberRecord, MessageRecord, MsgId, Profile,
    RetiredName, Role, RoomRecord, Suspension, To, TokenRecord, TopicRecord,
};

const FORMAT_V1: u8 = 1;
/// The account record's version 2: its scrypt hash in binary (see [`encode_account_row`]).
const ACCOUNT_SCRYPT: u8 = 2;
const TO_USER: u8 = 0;
const TO_GROUP: u8 = 1;
const TO_ALL: u8 = 2;
const PROFILE_FRIENDS_ONLY: u8 = 1;
const PROFILE_AWAY: u8 = 2;
const PROFILE_LAST_SEEN: u8 = 4;
const PROFILE_SUSPENDED: u8 = 8;
const TO_ROOM: u8 = 3;
const ROOM_PRIVATE: u8 = 1;
const ROOM_HAS_TOPIC: u8 = 2;

pub(crate) fn encode_account(rec: &AccountRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + rec.name.len() + rec.phc.len() + 8 + 4);
    out.push(FORMAT_V1);
    put_str(&mut out, &rec.name);
    put_str(&mut out, &rec.phc);
    out.extend_from_slice(&rec.created_ms.to_le_bytes());
    out
}

/// An account record as the accounts table keeps it: [`ACCOUNT_SCRYPT`] when its hash is an
/// scrypt PHC string this build makes (57 bytes where the string takes 89), version 1 otherwise.
/// The cluster's log keeps writing version 1 ([`encode_account`]), which every node reads.
pub(crate) fn encode_account_row(rec: &AccountRecord) -> Vec<u8> {
    let Phc::Scrypt {
        log_n,
        r,
        p,
        salt,
        hash,
    } = Phc::parse(&rec.phc)
    else {
        return encode_account(rec);
    };
    let mut out = Vec::with_capacity(2 + rec.name.len() + 9 + salt.len() + hash.len() + 8);
    out.push(ACCOUNT_SCRYPT);
    put_str(&mut out, &rec.name);
    out.push(log_n);
    out.extend_from_slice(&r.to_le_bytes());
    out.extend_from_slice(&p.to_le_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&hash);
    out.extend_from_slice(&rec.created_ms.to_le_bytes());
    out
}

pub(crate) fn decode_account(bytes: &[u8]) -> Result<AccountRecord, Damage> {
    let mut r = Reader::new(bytes, "account record");
    let rec = match r.byte()? {
        FORMAT_V1 => AccountRecord {
            name: r.string()?,
            phc: r.string()?,
            created_ms: r.i64()?,
        },
        ACCOUNT_SCRYPT => {
            let name = r.string()?;
            let log_n = r.byte()?;
            let cost = r.u32()?;
            let p = r.u32()?;
            let phc = Phc::Scrypt {
                log_n,
                r: cost,
                p,
                salt: r.array()?,
                hash: r.array()?,
            };
            AccountRecord {
                name,
                phc: phc.to_string(),
                created_ms: r.i64()?,
            }
        }
        v => return Err(r.corrupt(&format!("unknown format version {v}"))),
    };
    r.finish()?;
    Ok(rec)
}

pub(crate) fn encode_message(msg: &MessageRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message_into(msg, &mut out);
    out
}

/// [`encode_message`] into `out`, replacing what it held (a buffer reused message after message).
pub(crate) fn encode_message_into(msg: &MessageRecord, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(message_size_bound(msg));
    out.push(FORMAT_V1);
    out.extend_from_slice(&msg.time_ms.to_le_bytes());
    put_str(out, &msg.from);
    match &msg.to {
        To::User(name) => {
            out.push(TO_USER);
            put_str(out, name);
        }
        To::Group(names) => {
            out.push(TO_GROUP);
            put_len(out, names.len());
            for name in names {
                put_str(out, name);
            }
        }
        To::All => out.push(TO_ALL),
        To::Room(name) => {
            out.push(TO_ROOM);
            put_str(out, name);
        }
    }
    put_str(out, &msg.text);
}

/// The most bytes [`encode_message`] writes for `msg`, so that its buffer is allocated once: the
/// version and the time, the recipient's tag, and each string with the longest length prefix.
fn message_size_bound(msg: &MessageRecord) -> usize {
    const LEN_MAX: usize = 10;
    let to = match &msg.to {
        To::User(name) | To::Room(name) => LEN_MAX + name.len(),
        To::Group(names) => LEN_MAX + names.iter().map(|n| LEN_MAX + n.len()).sum::<usize>(),
        To::All => 0,
    };
    1 + 8 + LEN_MAX + msg.from.len() + 1 + to + LEN_MAX + msg.text.len()
}

pub(crate) fn decode_message(id: MsgId, bytes: &[u8]) -> Result<MessageRecord, Damage> {
    let mut r = Reader::new(bytes, "message record");
    r.version()?;
    let time_ms = r.i64()?;
    let (from, to) = parties(&mut r)?;
    let to = match to {
        ToRef::User(name) => To::User(name.to_owned()),
        ToRef::Group(names) => To::Group(names.into_iter().map(str::to_owned).collect()),
        ToRef::All => To::All,
        ToRef::Room(room) => To::Room(room.to_owned()),
    };
    let text = r.string()?;
    r.finish()?;
    Ok(MessageRecord {
        id,
        time_ms,
        from: from.to_owned(),
        to,
        text,
    })
}

/// Whom a stored message is for, borrowed from its record: what [`decode_parties`] reads.
pub(crate) enum ToRef<'a> {
    User(&'a str),
    Group(Vec<&'a str>),
    All,
    Room(&'a str),
}

/// The sender and recipients of a message record, borrowed from its bytes (nothing copied, the
/// text not read): enough to tell which conversations the message belongs to. Reads past the
/// conversation index's watermark run this over up to `INDEX_LAG` records.
pub(crate) fn decode_parties(bytes: &[u8]) -> Result<(&str, ToRef<'_>), Damage> {
    let mut r = Reader::new(bytes, "message record");
    r.version()?;
    r.take(8)?;
    parties(&mut r)
}

/// A message record's sender and recipients, read at the reader's position (after the time).
fn parties<'a>(r: &mut Reader<'a>) -> Result<(&'a str, ToRef<'a>), Damage> {
    let from = r.str_ref()?;
    let to = match r.byte()? {
        TO_USER => ToRef::User(r.str_ref()?),
        TO_GROUP => {
            let n = r.len()?;
            // Every name takes at least its length byte, so a count larger than the bytes left
            // is damage; checking first keeps a bad count from reserving a huge vector.
            if n > r.remaining() {
                return Err(r.corrupt("recipient count exceeds record size"));
            }
            let mut names = Vec::with_capacity(n);
            for _ in 0..n {
                names.push(r.str_ref()?);
            }
            ToRef::Group(names)
        }
        TO_ALL => ToRef::All,
        TO_ROOM => ToRef::Room(r.str_ref()?),
        other => return Err(r.corrupt(&format!("unknown recipient tag {other}"))),
    };
    Ok((from, to))
}

/// The ids of one conversation index row, ascending: the first as a LEB128 number, then each
/// one's distance from the one before (at least 1), so a row of close ids takes a byte or two per
/// id. The row's key carries its last id.
pub(crate) fn encode_id_row(ids: &[MsgId], out: &mut Vec<u8>) {
    out.clear();
    let mut prev = 0;
    for (i, &id) in ids.iter().enumerate() {
        let v = if i == 0 { id } else { id - prev };
        put_u64(out, v);
        prev = id;
    }
}

/// The ids of a row [`encode_id_row`] wrote, appended to `out`. `last` is the last id, from the
/// row's key: a row that is empty, not ascending, or does not end at `last` is damage.
pub(crate) fn decode_id_row(bytes: &[u8], last: MsgId, out: &mut Vec<MsgId>) -> Result<(), Damage> {
    let mut r = Reader::new(bytes, "conversation index row");
    let start = out.len();
    let mut prev: MsgId = 0;
    while r.remaining() > 0 {
        let v = r.u64_var()?;
        let id = if out.len() == start {
            v
        } else if v == 0 {
            return Err(r.corrupt("ids not ascending"));
        } else {
            prev.checked_add(v)
                .ok_or_else(|| r.corrupt("id overflows"))?
        };
        out.push(id);
        prev = id;
    }
    if out.len() == start || prev != last {
        return Err(r.corrupt(&format!("row does not end at its key's id {last}")));
    }
    Ok(())
}

/// `v` as LEB128.
fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn encode_token(rec: &TokenRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 1 + rec.user.len() + 32 + 1 + rec.label.len() + 16);
    out.push(FORMAT_V1);
    put_str(&mut out, &rec.user);
    out.extend_from_slice(&rec.digest);
    put_str(&mut out, &rec.label);
    out.extend_from_slice(&rec.created_ms.to_le_bytes());
    out.extend_from_slice(&rec.last_used_ms.to_le_bytes());
    out
}

pub(crate) fn decode_token(id: u64, bytes: &[u8]) -> Result<TokenRecord, Damage> {
    let mut r = Reader::new(bytes, "token record");
    r.version()?;
    let user = r.string()?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(r.take(32)?);
    let rec = TokenRecord {
        id,
        user,
        digest,
        label: r.string()?,
        created_ms: r.i64()?,
        last_used_ms: r.i64()?,
    };
    r.finish()?;
    Ok(rec)
}

pub(crate) fn encode_profile(p: &Profile) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + p.away.as_ref().map_or(0, |a| a.len() + 2) + 8);
    out.push(FORMAT_V1);
    let mut flags = 0;
    if p.friends_only {
        flags |= PROFILE_FRIENDS_ONLY;
    }
    if p.away.is_some() {
        flags |= PROFILE_AWAY;
    }
    if p.last_seen_ms.is_some() {
        flags |= PROFILE_LAST_SEEN;
    }
    if p.suspended.is_some() {
        flags |= PROFILE_SUSPENDED;
    }
    out.push(flags);
    if let Some(away) = &p.away {
        put_str(&mut out, away);
    }
    if let Some(ms) = p.last_seen_ms {
        out.extend_from_slice(&ms.to_le_bytes());
    }
    if let Some(s) = &p.suspended {
        put_str(&mut out, &s.reason);
        out.extend_from_slice(&s.since_ms.to_le_bytes());
    }
    out
}

pub(crate) fn decode_profile(bytes: &[u8]) -> Result<Profile, Damage> {
    let mut r = Reader::new(bytes, "profile record");
    r.version()?;
    let flags = r.byte()?;
    if flags & !(PROFILE_FRIENDS_ONLY | PROFILE_AWAY | PROFILE_LAST_SEEN | PROFILE_SUSPENDED) != 0 {
        return Err(r.corrupt(&format!("unknown flags {flags:#04x}")));
    }
    let away = if flags & PROFILE_AWAY != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let last_seen_ms = if flags & PROFILE_LAST_SEEN != 0 {
        Some(r.i64()?)
    } else {
        None
    };
    let suspended = if flags & PROFILE_SUSPENDED != 0 {
        Some(Suspension {
            reason: r.string()?,
            since_ms: r.i64()?,
        })
    } else {
        None
    };
    r.finish()?;
    Ok(Profile {
        friends_only: flags & PROFILE_FRIENDS_ONLY != 0,
        away,
        last_seen_ms,
        suspended,
    })
}

pub(crate) fn encode_retired(rec: &RetiredName) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + rec.name.len() + 8);
    out.push(FORMAT_V1);
    put_str(&mut out, &rec.name);
    out.extend_from_slice(&rec.deleted_ms.to_le_bytes());
    out
}

pub(crate) fn decode_retired(bytes: &[u8]) -> Result<RetiredName, Damage> {
    let mut r = Reader::new(bytes, "retired name record");
    r.version()?;
    let rec = RetiredName {
        name: r.string()?,
        deleted_ms: r.i64()?,
    };
    r.finish()?;
    Ok(rec)
}

pub(crate) fn encode_room(rec: &RoomRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + rec.name.len());
    out.push(FORMAT_V1);
    put_str(&mut out, &rec.name);
    out.extend_from_slice(&rec.created_ms.to_le_bytes());
    let mut flags = 0;
    if rec.private {
        flags |= ROOM_PRIVATE;
    }
    if rec.topic.is_some() {
        flags |= ROOM_HAS_TOPIC;
    }
    out.push(flags);
    if let Some(t) = &rec.topic {
        put_str(&mut out, &t.text);
        put_str(&mut out, &t.by);
        out.extend_from_slice(&t.time_ms.to_le_bytes());
    }
    out
}

pub(crate) fn decode_room(bytes: &[u8]) -> Result<RoomRecord, Damage> {
    let mut r = Reader::new(bytes, "room record");
    r.version()?;
    let name = r.string()?;
    let created_ms = r.i64()?;
    let flags = r.byte()?;
    if flags & !(ROOM_PRIVATE | ROOM_HAS_TOPIC) != 0 {
        return Err(r.corrupt(&format!("unknown room flags {flags:#x}")));
    }
    let topic = if flags & ROOM_HAS_TOPIC != 0 {
        Some(TopicRecord {
            text: r.string()?,
            by: r.string()?,
            time_ms: r.i64()?,
        })
    } else {
        None
    };
    r.finish()?;
    Ok(RoomRecord {
        name,
        created_ms,
        private: flags & ROOM_PRIVATE != 0,
        topic,
    })
}

pub(super) fn role_byte(role: Role) -> u8 {
    match role {
        Role::Member => 0,
        Role::Op => 1,
        Role::Owner => 2,
    }
}

pub(crate) fn encode_member(m: &MemberRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(26);
    out.push(FORMAT_V1);
    out.push(role_byte(m.role));
    out.extend_from_slice(&m.since.to_le_bytes());
    out.extend_from_slice(&m.read_id.to_le_bytes());
    out.extend_from_slice(&m.read_seq.to_le_bytes());
    out
}

pub(crate) fn decode_member(bytes: &[u8]) -> Result<MemberRecord, Damage> {
    let mut r = Reader::new(bytes, "member record");
    r.version()?;
    let role = match r.byte()? {
        0 => Role::Member,
        1 => Role::Op,
        2 => Role::Owner,
        other => return Err(r.corrupt(&format!("unknown role {other}"))),
    };
    let m = MemberRecord {
        role,
        since: r.u64()?,
        read_id: r.u64()?,
        read_seq: r.u64()?,
    };
    r.finish()?;
    Ok(m)
}

pub(crate) fn encode_ban(b: &BanRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + b.by.len() + b.reason.len());
    out.push(FORMAT_V1);
    put_str(&mut out, &b.by);
    out.extend_from_slice(&b.time_ms.to_le_bytes());
    put_str(&mut out, &b.reason);
    out
}

pub(crate) fn decode_ban(bytes: &[u8]) -> Result<BanRecord, Damage> {
    let mut r = Reader::new(bytes, "ban record");
    r.version()?;
    let b = BanRecord {
        by: r.string()?,
        time_ms: r.i64()?,
        reason: r.string()?,
    };
    r.finish()?;
    Ok(b)
}

pub(crate) fn encode_invite(i: &InviteRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + i.by.len());
    out.push(FORMAT_V1);
    put_str(&mut out, &i.by);
    out.extend_from_slice(&i.expires_ms.to_le_bytes());
    out
}

pub(crate) fn decode_invite(bytes: &[u8]) -> Result<InviteRecord, Damage> {
    let mut r = Reader::new(bytes, "invitation record");
    r.version()?;
    let i = InviteRecord {
        by: r.string()?,
        expires_ms: r.i64()?,
    };
    r.finish()?;
    Ok(i)
}

pub(super) fn put_len(out: &mut Vec<u8>, len: usize) {
    // usize always fits u64 on the platforms Rust supports.
    let mut v = len as u64;
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over one record's bytes; every read checks what is left.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub(super) fn corrupt(&self, why: &str) -> Damage {
        Damage::new(format!("{}: {why}", self.what))
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Damage> {
        if n > self.buf.len() {
            return Err(self.corrupt("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(super) fn byte(&mut self) -> Result<u8, Damage> {
        Ok(self.take(1)?[0])
    }

    fn version(&mut self) -> Result<(), Damage> {
        match self.byte()? {
            FORMAT_V1 => Ok(()),
            v => Err(self.corrupt(&format!("unknown format version {v}"))),
        }
    }

    pub(super) fn i64(&mut self) -> Result<i64, Damage> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, Damage> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// The next `N` bytes.
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], Damage> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    pub(super) fn u64(&mut self) -> Result<u64, Damage> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(super) fn len(&mut self) -> Result<usize, Damage> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.corrupt("length overflows"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return usize::try_from(v).map_err(|_| self.corrupt("length overflows"));
            }
        }
        Err(self.corrupt("length overflows"))
    }

    /// A LEB128 number of up to 64 bits.
    pub(super) fn u64_var(&mut self) -> Result<u64, Damage> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.corrupt("number overflows"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("number overflows"))
    }

    /// A string, borrowed.
    pub(super) fn str_ref(&mut self) -> Result<&'a str, Damage> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map_err(|_| self.corrupt("string is not UTF-8"))
    }

    pub(super) fn string(&mut self) -> Result<String, Damage> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.corrupt("string is not UTF-8")),
        }
    }

    pub(super) fn finish(&self) -> Result<(), Damage> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_messages() -> Vec<MessageRecord> {
        let m = |id, to, text: &str| MessageRecord {
            id,
            time_ms: 1_700_000_000_123,
            from: "Alice".into(),
            to,
            text: text.into(),
        };
        vec![
            m(1, To::User("bob".into()), "hello"),
            m(
                2,
                To::Group(vec!["Bob".into(), "carol".into(), "BOB".into()]),
                "to you both",
            ),
            m(3, To::Group(vec![]), ""),
            m(4, To::All, "ünïcödé and spaces \u{1F600}"),
            m(7, To::Room("#Rust-lang".into()), " in a room "),
            m(u64::MAX, To::User(String::new()), &"x".repeat(5000)),
            MessageRecord {
                time_ms: i64::MIN,
                ..m(5, To::All, "min")
            },
            MessageRecord {
                time_ms: -1,
                ..m(6, To::All, "neg")
            },
        ]
    }

    fn sample_accounts() -> Vec<AccountRecord> {
        vec![
            AccountRecord {
                name: "Alice".into(),
                phc: "$scrypt$ln=15,r=8,p=1$c2FsdA$aGFzaA".into(),
                created_ms: 1,
            },
            AccountRecord {
                name: String::new(),
                phc: String::new(),
                created_ms: i64::MAX,
            },
            AccountRecord {
                name: "a".repeat(300),
                phc: "p".repeat(200),
                created_ms: i64::MIN,
            },
            AccountRecord {
                name: "Bob".into(),
                phc: SCRYPT_PHC.into(),
                created_ms: -5,
            },
        ]
    }

    /// An scrypt hash of the shape chatd makes (a 16-byte salt, a 32-byte hash).
    const SCRYPT_PHC: &str =
        "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";

    /// The accounts table's rows: the hash in binary when it is an scrypt hash of chatd's shape,
    /// read back as the same string; version 1 for any other hash; both read.
    #[test]
    fn account_rows_keep_an_scrypt_hash_in_binary() {
        for a in sample_accounts() {
            let row = encode_account_row(&a);
            assert_eq!(decode_account(&row).unwrap(), a);
            let binary = a.phc == SCRYPT_PHC;
            assert_eq!(row[0], if binary { 2 } else { 1 }, "{}", a.phc);
            if binary {
                assert_eq!(row.len(), 1 + 1 + 3 + 1 + 4 + 4 + 16 + 32 + 8);
                assert_eq!(row.len() + 32, encode_account(&a).len());
            } else {
                assert_eq!(row, encode_account(&a));
            }
            for len in 0..row.len() {
                assert!(
                    matches!(decode_account(&row[..len]), Err(Damage { .. })),
                    "{len}"
                );
            }
            let mut longer = row.clone();
            longer.push(0);
            assert!(matches!(decode_account(&longer), Err(Damage { .. })));
        }
        // Pins version 2: a change here is a change of what is on users' disks.
        let mut phc = String::from("$scrypt$ln=10,r=8,p=2$");
        phc.push_str(&"A".repeat(21));
        phc.push_str("Q$");
        phc.push_str(&"A".repeat(42));
        phc.push('E');
        let a = AccountRecord {
            name: "Al".into(),
            phc,
            created_ms: -1,
        };
        let mut pinned = vec![2, 2, b'A', b'l', 10, 8, 0, 0, 0, 2, 0, 0, 0];
        pinned.extend_from_slice(&[0; 15]);
        pinned.push(1);
        pinned.extend_from_slice(&[0; 31]);
        pinned.push(1);
        pinned.extend_from_slice(&[255; 8]);
        assert_eq!(encode_account_row(&a), pinned);
        assert_eq!(decode_account(&pinned).unwrap(), a);
        // No version 3.
        pinned[0] = 3;
        assert!(matches!(decode_account(&pinned), Err(Damage { .. })));
    }

    #[test]
    fn records_round_trip() {
        for m in sample_messages() {
            let bytes = encode_message(&m);
            assert_eq!(bytes[0], 1, "format version first");
            assert!(bytes.len() <= message_size_bound(&m), "allocated once");
            assert_eq!(decode_message(m.id, &bytes).unwrap(), m);
        }
        for a in sample_accounts() {
            assert_eq!(decode_account(&encode_account(&a)).unwrap(), a);
        }
    }

    /// Pins version 1 of the format: a change here is a change of what is on users' disks.
    #[test]
    fn format_version_1_bytes() {
        let m = MessageRecord {
            id: 9,
            time_ms: 0x0102,
            from: "al".into(),
            to: To::Group(vec!["b".into(), "c".into()]),
            text: "hi".into(),
        };
        assert_eq!(
            encode_message(&m),
            [1, 2, 1, 0, 0, 0, 0, 0, 0, 2, b'a', b'l', 1, 2, 1, b'b', 1, b'c', 2, b'h', b'i']
        );
        let a = AccountRecord {
            name: "Al".into(),
            phc: "p".into(),
            created_ms: -1,
        };
        assert_eq!(
            encode_account(&a),
            [1, 2, b'A', b'l', 1, b'p', 255, 255, 255, 255, 255, 255, 255, 255]
        );
        // Lengths of 128 bytes and more take several length bytes.
        let long = MessageRecord {
            to: To::All,
            text: "t".repeat(300),
            ..m
        };
        let bytes = encode_message(&long);
        assert!(bytes.len() <= message_size_bound(&long));
        assert_eq!(&bytes[12..15], &[2, 0xac, 0x02]);
        assert_eq!(decode_message(9, &bytes).unwrap(), long);
    }

    fn sample_tokens() -> Vec<TokenRecord> {
        vec![
            TokenRecord {
                id: 7,
                user: "alice".into(),
                digest: [0xab; 32],
                label: "phone ü".into(),
                created_ms: 1,
                last_used_ms: 2,
            },
            TokenRecord {
                id: u64::MAX,
                user: String::new(),
                digest: [0; 32],
                label: String::new(),
                created_ms: i64::MIN,
                last_used_ms: i64::MAX,
            },
        ]
    }

    fn sample_profiles() -> Vec<Profile> {
        vec![
            Profile::default(),
            Profile {
                friends_only: true,
                away: Some("gone fishing 🎣".into()),
                last_seen_ms: Some(-5),
                suspended: None,
            },
            Profile {
                friends_only: false,
                away: Some(String::new()),
                last_seen_ms: None,
                suspended: Some(Suspension {
                    reason: String::new(),
                    since_ms: 0,
                }),
            },
            Profile {
                friends_only: false,
                away: None,
                last_seen_ms: Some(i64::MAX),
                suspended: Some(Suspension {
                    reason: "spam, again".into(),
                    since_ms: 42,
                }),
            },
        ]
    }

    #[test]
    fn tokens_profiles_and_retired_names_round_trip_and_detect_damage() {
        for t in sample_tokens() {
            let bytes = encode_token(&t);
            assert_eq!(decode_token(t.id, &bytes).unwrap(), t);
            for len in 0..bytes.len() {
                assert!(decode_token(t.id, &bytes[..len]).is_err(), "{len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_token(t.id, &longer).is_err());
        }
        for p in sample_profiles() {
            let bytes = encode_profile(&p);
            assert_eq!(decode_profile(&bytes).unwrap(), p);
            for len in 0..bytes.len() {
                assert!(decode_profile(&bytes[..len]).is_err(), "{len}");
            }
        }
        assert!(
            decode_profile(&[1, 16]).is_err(),
            "an unknown flag is damage"
        );
        let r = RetiredName {
            name: "Carol".into(),
            deleted_ms: 99,
        };
        let bytes = encode_retired(&r);
        assert_eq!(decode_retired(&bytes).unwrap(), r);
        assert!(decode_retired(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Pins version 1 of the newer records, as `format_version_1_bytes` does for the first ones.
    #[test]
    fn format_version_1_bytes_of_tokens_profiles_and_retired_names() {
        let t = TokenRecord {
            id: 1,
            user: "al".into(),
            digest: [7; 32],
            label: "x".into(),
            created_ms: 1,
            last_used_ms: 2,
        };
        let mut want = vec![1, 2, b'a', b'l'];
        want.extend_from_slice(&[7; 32]);
        want.extend_from_slice(&[1, b'x', 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_token(&t), want);
        let p = Profile {
            friends_only: true,
            away: Some("hi".into()),
            last_seen_ms: Some(3),
            suspended: None,
        };
        assert_eq!(
            encode_profile(&p),
            [1, 7, 2, b'h', b'i', 3, 0, 0, 0, 0, 0, 0, 0]
        );
        let p = Profile {
            suspended: Some(Suspension {
                reason: "x".into(),
                since_ms: 4,
            }),
            ..Profile::default()
        };
        assert_eq!(encode_profile(&p), [1, 8, 1, b'x', 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_profile(&Profile::default()), [1, 0]);
        let r = RetiredName {
            name: "Al".into(),
            deleted_ms: 1,
        };
        assert_eq!(
            encode_retired(&r),
            [1, 2, b'A', b'l', 1, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    fn sample_room_records() -> (Vec<RoomRecord>, Vec<MemberRecord>, BanRecord, InviteRecord) {
        let rooms = vec![
            RoomRecord {
                name: "#rust".into(),
                created_ms: 5,
                private: false,
                topic: None,
            },
            RoomRecord {
                name: "#Ops".into(),
                created_ms: -7,
                private: true,
                topic: Some(TopicRecord {
                    text: "keep it civil ✓".into(),
                    by: "Alice".into(),
                    time_ms: 1_700_000_000_000,
                }),
            },
        ];
        let members = Role::ALL
            .iter()
            .map(|&role| MemberRecord {
                role,
                since: 3,
                read_id: u64::MAX,
                read_seq: 17,
            })
            .collect();
        let ban = BanRecord {
            by: "alice".into(),
            time_ms: 9,
            reason: "flooding".into(),
        };
        let invite = InviteRecord {
            by: "bob".into(),
            expires_ms: i64::MAX,
        };
        (rooms, members, ban, invite)
    }

    #[test]
    fn room_records_round_trip_and_refuse_damage() {
        let (rooms, members, ban, invite) = sample_room_records();
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        for r in &rooms {
            let b = encode_room(r);
            assert_eq!(&decode_room(&b).unwrap(), r);
            encoded.push(b);
        }
        for m in &members {
            let b = encode_member(m);
            assert_eq!(&decode_member(&b).unwrap(), m);
        }
        assert_eq!(decode_ban(&encode_ban(&ban)).unwrap(), ban);
        assert_eq!(decode_invite(&encode_invite(&invite)).unwrap(), invite);
        // Pinned bytes of version 1.
        assert_eq!(
            encode_member(&members[1]),
            [
                1, 1, 3, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 17, 0, 0, 0,
                0, 0, 0, 0
            ]
        );
        assert_eq!(
            encode_room(&rooms[0]),
            [1, 5, b'#', b'r', b'u', b's', b't', 5, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        for (what, bytes, decode) in [
            (
                "room",
                encode_room(&rooms[1]),
                (|b: &[u8]| decode_room(b).is_err()) as fn(&[u8]) -> bool,
            ),
            ("member", encode_member(&members[0]), |b: &[u8]| {
                decode_member(b).is_err()
            }),
            ("ban", encode_ban(&ban), |b: &[u8]| decode_ban(b).is_err()),
            ("invite", encode_invite(&invite), |b: &[u8]| {
                decode_invite(b).is_err()
            }),
        ] {
            for len in 0..bytes.len() {
                assert!(decode(&bytes[..len]), "{what} cut at {len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer), "{what} with a trailing byte");
        }
        let mut bad_role = encode_member(&members[0]);
        bad_role[1] = 3;
        assert!(decode_member(&bad_role).is_err());
        let mut bad_flags = encode_room(&rooms[0]);
        bad_flags[15] = 4;
        assert!(decode_room(&bad_flags).is_err());
    }

    #[test]
    fn truncated_or_extended_records_are_corrupt() {
        for m in sample_messages() {
            let bytes = encode_message(&m);
            for len in 0..bytes.len() {
                assert!(
                    matches!(decode_message(m.id, &bytes[..len]), Err(Damage { .. })),
                    "{len}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(decode_message(m.id, &longer), Err(Damage { .. })));
        }
        for a in sample_accounts() {
            let bytes = encode_account(&a);
            for len in 0..bytes.len() {
                assert!(
                    matches!(decode_account(&bytes[..len]), Err(Damage { .. })),
                    "{len}"
                );
            }
        }
    }

    #[test]
    fn bad_versions_tags_counts_and_utf8_are_corrupt() {
        let good = encode_message(&sample_messages()[0]);
        let corrupt = |bytes: &[u8]| matches!(decode_message(1, bytes), Err(Damage { .. }));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(corrupt(&v2));
        let mut tag = good.clone();
        tag[1 + 8 + 1 + 5] = 7; // after version, time, "Alice"
        assert!(corrupt(&tag));
        let mut utf8 = good.clone();
        utf8[1 + 8 + 1] = 0xff;
        assert!(corrupt(&utf8));
        // A group claiming 2^62 recipients must fail fast, not try to reserve them.
        let mut huge = vec![1u8];
        huge.extend_from_slice(&0i64.to_le_bytes());
        huge.extend_from_slice(&[1, b'a', 1]);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        assert!(corrupt(&huge));
        // A length of more than 64 bits.
        let mut overlong = vec![1u8];
        overlong.extend_from_slice(&0i64.to_le_bytes());
        overlong.extend_from_slice(&[0xff; 11]);
        assert!(corrupt(&overlong));
        assert!(matches!(
            decode_account(&[1, 0, 0, 1, 2, 3]),
            Err(Damage { .. })
        ));
    }

    /// Random damage never panics: every mutated record either decodes to something that round
    /// trips, or is reported as corrupt.
    #[test]
    fn random_damage_is_decoded_or_reported() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut decoded = 0;
        let mut rejected = 0;
        for m in sample_messages() {
            let bytes = encode_message(&m);
            for _ in 0..2000 {
                let mut damaged = bytes.clone();
                for _ in 0..=(next() % 3) {
                    let i = (next() % damaged.len() as u64) as usize;
                    damaged[i] ^= (next() % 255 + 1) as u8;
                }
                match decode_message(m.id, &damaged) {
                    Ok(rec) => {
                        decoded += 1;
                        assert_eq!(decode_message(m.id, &encode_message(&rec)).unwrap(), rec);
                    }
                    Err(Damage { .. }) => rejected += 1,
                }
            }
        }
        // Both outcomes happen: flips inside text bytes decode, flips in lengths do not.
        assert!(
            decoded > 0 && rejected > 0,
            "{decoded} decoded, {rejected} rejected"
        );
    }
}
