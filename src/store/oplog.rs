//! The wire form of a write op, for a store shared by several servers (`cluster`): each write a
//! server's core makes travels as one entry of a replicated log, and every server applies the
//! log's entries, in the log's order, to its own copy of the tables. The records inside an op use
//! the on-disk record format (`codec`), so there is one encoding of each record.
//!
//! An entry: a format-version byte, a tag byte naming the op, then its fields (strings and records
//! as a LEB128 length and bytes, ids and times as 8 bytes little-endian). Ops that only read are
//! never logged and have no tag.
//!
//! The version says which ops and fields an entry may hold: a node writes [`OPLOG_VERSION`] and
//! reads every version up to it. Version 1 had tags 1 to 27; version 2 added tag 28 (a room
//! created with its owner, on the name's own subject) and tag 29 (a room event and the change it
//! tells of, so that a node that skips the change skips the event too). A change that an older node would misread
//! (a new tag, a new field) takes a new version, so that a node meeting an entry newer than it
//! knows stops and says so ([`entry_version`]) instead of skipping it and drifting from the
//! others.

use super::codec::{
    decode_account, decode_ban, decode_invite, decode_member, decode_message, decode_room,
    decode_token, encode_account, encode_ban, encode_invite, encode_member, encode_message,
    encode_room, encode_token, put_len, put_str, Reader,
};
use super::{Damage, FriendState, Notice, StoreOp, Suspension};

/// The format version this build writes, and the newest it reads.
pub const OPLOG_VERSION: u8 = 2;

/// The oldest format version this build reads.
pub const OPLOG_OLDEST: u8 = 1;

/// The format version an entry says it is in (its first byte); `None` for an empty entry.
pub fn entry_version(bytes: &[u8]) -> Option<u8> {
    bytes.first().copied()
}

/// Whether this build reads entries of format `version`.
pub fn readable_version(version: u8) -> bool {
    (OPLOG_OLDEST..=OPLOG_VERSION).contains(&version)
}

/// Encodes a write op; `None` for an op that only reads (nothing to replicate).
pub fn encode_op(op: &StoreOp) -> Option<Vec<u8>> {
    let mut out = vec![OPLOG_VERSION];
    encode_body(op, &mut out).then_some(out)
}

/// Appends an op's tag and fields to `dst`; false for an op that only reads, or that a cluster
/// never writes.
fn encode_body(op: &StoreOp, dst: &mut Vec<u8>) -> bool {
    let mut out = Vec::new();
    let blob = |out: &mut Vec<u8>, b: Vec<u8>| {
        put_len(out, b.len());
        out.extend_from_slice(&b);
    };
    let u64s = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
    let i64s = |out: &mut Vec<u8>, v: i64| out.extend_from_slice(&v.to_le_bytes());
    match op {
        StoreOp::CreateAccount(rec) => {
            out.push(1);
            blob(&mut out, encode_account(rec));
        }
        StoreOp::AppendMessage { msg, pending_for } => {
            out.push(2);
            u64s(&mut out, msg.id);
            blob(&mut out, encode_message(msg));
            put_len(&mut out, pending_for.len());
            for u in pending_for {
                put_str(&mut out, u);
            }
        }
        StoreOp::AddPending { user, id } => {
            out.push(3);
            put_str(&mut out, user);
            u64s(&mut out, *id);
        }
        StoreOp::ClearBacklog { user, upto } => {
            out.push(4);
            put_str(&mut out, user);
            u64s(&mut out, *upto);
        }
        StoreOp::SetFriendship { a, b, state } => {
            out.push(5);
            put_str(&mut out, a);
            put_str(&mut out, b);
            out.push(match state {
                None => 0,
                Some(FriendState::Friends) => 1,
                Some(FriendState::Outgoing) => 2,
                Some(FriendState::Incoming) => 3,
            });
        }
        StoreOp::CreateToken(rec) => {
            out.push(6);
            u64s(&mut out, rec.id);
            blob(&mut out, encode_token(rec));
        }
        StoreOp::TouchToken { id, last_used_ms } => {
            out.push(7);
            u64s(&mut out, *id);
            i64s(&mut out, *last_used_ms);
        }
        StoreOp::RevokeTokens { ids } => {
            out.push(8);
            put_len(&mut out, ids.len());
            for id in ids {
                u64s(&mut out, *id);
            }
        }
        StoreOp::SetPassword { user, phc, revoke } => {
            out.push(9);
            put_str(&mut out, user);
            put_str(&mut out, phc);
            put_len(&mut out, revoke.len());
            for id in revoke {
                u64s(&mut out, *id);
            }
        }
        StoreOp::DeleteAccount { user, deleted_ms } => {
            out.push(10);
            put_str(&mut out, user);
            i64s(&mut out, *deleted_ms);
        }
        StoreOp::Block { a, b } => {
            out.push(11);
            put_str(&mut out, a);
            put_str(&mut out, b);
        }
        StoreOp::Unblock { a, b } => {
            out.push(12);
            put_str(&mut out, a);
            put_str(&mut out, b);
        }
        StoreOp::SetAway { user, away } => {
            out.push(13);
            put_str(&mut out, user);
            match away {
                Some(a) => {
                    out.push(1);
                    put_str(&mut out, a);
                }
                None => out.push(0),
            }
        }
        StoreOp::SetDms { user, friends_only } => {
            out.push(14);
            put_str(&mut out, user);
            out.push(u8::from(*friends_only));
        }
        StoreOp::SetLastSeen { user, ms } => {
            out.push(15);
            put_str(&mut out, user);
            i64s(&mut out, *ms);
        }
        StoreOp::AppendRoomMessage { msg, room, seq } => {
            out.push(16);
            u64s(&mut out, msg.id);
            blob(&mut out, encode_message(msg));
            u64s(&mut out, *room);
            u64s(&mut out, *seq);
        }
        StoreOp::PutRoom { id, room } => {
            out.push(17);
            u64s(&mut out, *id);
            blob(&mut out, encode_room(room));
        }
        StoreOp::DeleteRoom { id } => {
            out.push(18);
            u64s(&mut out, *id);
        }
        StoreOp::CreateRoom {
            id,
            room,
            owner,
            member,
        } => {
            out.push(28);
            u64s(&mut out, *id);
            blob(&mut out, encode_room(room));
            put_str(&mut out, owner);
            blob(&mut out, encode_member(member));
        }
        StoreOp::PutMember { room, user, member } => {
            out.push(19);
            u64s(&mut out, *room);
            put_str(&mut out, user);
            blob(&mut out, encode_member(member));
        }
        StoreOp::RemoveMember { room, user } => {
            out.push(20);
            u64s(&mut out, *room);
            put_str(&mut out, user);
        }
        StoreOp::PutBan { room, user, ban } => {
            out.push(21);
            u64s(&mut out, *room);
            put_str(&mut out, user);
            blob(&mut out, encode_ban(ban));
        }
        StoreOp::RemoveBan { room, user } => {
            out.push(22);
            u64s(&mut out, *room);
            put_str(&mut out, user);
        }
        StoreOp::PutInvite { room, user, invite } => {
            out.push(23);
            u64s(&mut out, *room);
            put_str(&mut out, user);
            blob(&mut out, encode_invite(invite));
        }
        StoreOp::RemoveInvite { room, user } => {
            out.push(24);
            u64s(&mut out, *room);
            put_str(&mut out, user);
        }
        StoreOp::SetDirectRead { user, with, id } => {
            out.push(25);
            put_str(&mut out, user);
            put_str(&mut out, with);
            u64s(&mut out, *id);
        }
        StoreOp::Notice(n) => {
            out.push(27);
            match n {
                Notice::Room { room, line } => {
                    out.push(0);
                    u64s(&mut out, *room);
                    put_str(&mut out, line);
                }
                Notice::Everyone { line } => {
                    out.push(1);
                    put_str(&mut out, line);
                }
                Notice::Kill { user, text } => {
                    out.push(2);
                    put_str(&mut out, user);
                    put_str(&mut out, text);
                }
            }
        }
        StoreOp::Told { notice, op } => {
            out.push(29);
            let notice = StoreOp::Notice(notice.clone());
            if matches!(**op, StoreOp::Notice(_) | StoreOp::Told { .. })
                || !encode_body(&notice, &mut out)
                || !encode_body(op, &mut out)
            {
                return false;
            }
        }
        StoreOp::SetSuspended { user, suspension } => {
            out.push(26);
            put_str(&mut out, user);
            match suspension {
                Some(sus) => {
                    out.push(1);
                    put_str(&mut out, &sus.reason);
                    i64s(&mut out, sus.since_ms);
                }
                None => out.push(0),
            }
        }
        StoreOp::History { .. }
        | StoreOp::ReadBacklog { .. }
        | StoreOp::ReadMessages { .. }
        | StoreOp::DirectRead { .. }
        | StoreOp::FirstUnread { .. }
        | StoreOp::RoomSeq { .. }
        | StoreOp::RoomReplay { .. } => return false,
        // A cluster's ids are its log's sequence: it never reserves any.
        StoreOp::ReserveIds { .. } => return false,
    }
    dst.extend_from_slice(&out);
    true
}

/// Decodes an entry made by [`encode_op`]; damage is an error, never a panic.
pub fn decode_op(bytes: &[u8]) -> Result<StoreOp, Damage> {
    let mut r = Reader::new(bytes, "log entry");
    let version = r.byte()?;
    if !readable_version(version) {
        return Err(r.corrupt(&format!("unknown format version {version}")));
    }
    let op = decode_body(&mut r, version)?;
    r.finish()?;
    Ok(op)
}

/// Decodes an op's tag and fields.
fn decode_body(r: &mut Reader<'_>, version: u8) -> Result<StoreOp, Damage> {
    let tag = r.byte()?;
    let blob = |r: &mut Reader<'_>| -> Result<Vec<u8>, Damage> {
        let n = r.len()?;
        Ok(r.take(n)?.to_vec())
    };
    let ids = |r: &mut Reader<'_>| -> Result<Vec<u64>, Damage> {
        let n = r.len()?;
        if n > r.remaining() / 8 {
            return Err(r.corrupt("truncated"));
        }
        (0..n).map(|_| r.u64()).collect()
    };
    let op = match tag {
        1 => StoreOp::CreateAccount(decode_account(&blob(r)?)?),
        2 => {
            let id = r.u64()?;
            let msg = decode_message(id, &blob(r)?)?;
            let n = r.len()?;
            if n > r.remaining() {
                return Err(r.corrupt("truncated"));
            }
            let pending_for = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
            StoreOp::AppendMessage { msg, pending_for }
        }
        3 => StoreOp::AddPending {
            user: r.string()?,
            id: r.u64()?,
        },
        4 => StoreOp::ClearBacklog {
            user: r.string()?,
            upto: r.u64()?,
        },
        5 => StoreOp::SetFriendship {
            a: r.string()?,
            b: r.string()?,
            state: match r.byte()? {
                0 => None,
                1 => Some(FriendState::Friends),
                2 => Some(FriendState::Outgoing),
                3 => Some(FriendState::Incoming),
                _ => return Err(r.corrupt("unknown friend state")),
            },
        },
        6 => {
            let id = r.u64()?;
            StoreOp::CreateToken(decode_token(id, &blob(r)?)?)
        }
        7 => StoreOp::TouchToken {
            id: r.u64()?,
            last_used_ms: r.i64()?,
        },
        8 => StoreOp::RevokeTokens { ids: ids(r)? },
        9 => StoreOp::SetPassword {
            user: r.string()?,
            phc: r.string()?,
            revoke: ids(r)?,
        },
        10 => StoreOp::DeleteAccount {
            user: r.string()?,
            deleted_ms: r.i64()?,
        },
        11 => StoreOp::Block {
            a: r.string()?,
            b: r.string()?,
        },
        12 => StoreOp::Unblock {
            a: r.string()?,
            b: r.string()?,
        },
        13 => StoreOp::SetAway {
            user: r.string()?,
            away: match r.byte()? {
                0 => None,
                1 => Some(r.string()?),
                _ => return Err(r.corrupt("bad away flag")),
            },
        },
        14 => StoreOp::SetDms {
            user: r.string()?,
            friends_only: match r.byte()? {
                0 => false,
                1 => true,
                _ => return Err(r.corrupt("bad flag")),
            },
        },
        15 => StoreOp::SetLastSeen {
            user: r.string()?,
            ms: r.i64()?,
        },
        16 => {
            let id = r.u64()?;
            let msg = decode_message(id, &blob(r)?)?;
            StoreOp::AppendRoomMessage {
                msg,
                room: r.u64()?,
                seq: r.u64()?,
            }
        }
        17 => StoreOp::PutRoom {
            id: r.u64()?,
            room: decode_room(&blob(r)?)?,
        },
        18 => StoreOp::DeleteRoom { id: r.u64()? },
        28 if version >= 2 => StoreOp::CreateRoom {
            id: r.u64()?,
            room: Box::new(decode_room(&blob(r)?)?),
            owner: r.string()?,
            member: decode_member(&blob(r)?)?,
        },
        19 => StoreOp::PutMember {
            room: r.u64()?,
            user: r.string()?,
            member: decode_member(&blob(r)?)?,
        },
        20 => StoreOp::RemoveMember {
            room: r.u64()?,
            user: r.string()?,
        },
        21 => StoreOp::PutBan {
            room: r.u64()?,
            user: r.string()?,
            ban: decode_ban(&blob(r)?)?,
        },
        22 => StoreOp::RemoveBan {
            room: r.u64()?,
            user: r.string()?,
        },
        23 => StoreOp::PutInvite {
            room: r.u64()?,
            user: r.string()?,
            invite: decode_invite(&blob(r)?)?,
        },
        24 => StoreOp::RemoveInvite {
            room: r.u64()?,
            user: r.string()?,
        },
        25 => StoreOp::SetDirectRead {
            user: r.string()?,
            with: r.string()?,
            id: r.u64()?,
        },
        26 => StoreOp::SetSuspended {
            user: r.string()?,
            suspension: match r.byte()? {
                0 => None,
                1 => Some(Suspension {
                    reason: r.string()?,
                    since_ms: r.i64()?,
                }),
                _ => return Err(r.corrupt("bad suspension flag")),
            },
        },
        27 => StoreOp::Notice(match r.byte()? {
            0 => Notice::Room {
                room: r.u64()?,
                line: r.string()?,
            },
            1 => Notice::Everyone { line: r.string()? },
            2 => Notice::Kill {
                user: r.string()?,
                text: r.string()?,
            },
            _ => return Err(r.corrupt("unknown notice")),
        }),
        29 if version >= 2 => match (decode_body(r, version)?, decode_body(r, version)?) {
            (StoreOp::Notice(notice), op)
                if !matches!(op, StoreOp::Notice(_) | StoreOp::Told { .. }) =>
            {
                StoreOp::Told {
                    notice,
                    op: Box::new(op),
                }
            }
            _ => return Err(r.corrupt("a told op that is not a notice and its change")),
        },
        other => return Err(r.corrupt(&format!("unknown op tag {other}"))),
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        AccountRecord, BanRecord, InviteRecord, MemberRecord, MessageRecord, Role, RoomRecord, To,
        TokenRecord,
    };

    fn samples() -> Vec<StoreOp> {
        let msg = |id, to| MessageRecord {
            id,
            time_ms: 1_700_000_000_000,
            from: "Alice".into(),
            to,
            text: "hello there".into(),
        };
        vec![
            StoreOp::CreateAccount(AccountRecord {
                name: "Alice".into(),
                phc: "$scrypt$x".into(),
                created_ms: 5,
            }),
            StoreOp::AppendMessage {
                msg: msg(7, To::Group(vec!["bob".into(), "carol".into()])),
                pending_for: vec!["bob".into()],
            },
            StoreOp::AppendMessage {
                msg: msg(8, To::All),
                pending_for: vec![],
            },
            StoreOp::AddPending {
                user: "bob".into(),
                id: 9,
            },
            StoreOp::ClearBacklog {
                user: "bob".into(),
                upto: 9,
            },
            StoreOp::SetFriendship {
                a: "alice".into(),
                b: "bob".into(),
                state: Some(FriendState::Incoming),
            },
            StoreOp::SetFriendship {
                a: "alice".into(),
                b: "bob".into(),
                state: None,
            },
            StoreOp::CreateToken(TokenRecord {
                id: 77,
                user: "alice".into(),
                digest: [3; 32],
                label: "phone".into(),
                created_ms: 1,
                last_used_ms: 2,
            }),
            StoreOp::TouchToken {
                id: 77,
                last_used_ms: 3,
            },
            StoreOp::RevokeTokens { ids: vec![1, 2] },
            StoreOp::SetPassword {
                user: "alice".into(),
                phc: "p".into(),
                revoke: vec![77],
            },
            StoreOp::DeleteAccount {
                user: "alice".into(),
                deleted_ms: 4,
            },
            StoreOp::Block {
                a: "a".into(),
                b: "b".into(),
            },
            StoreOp::Unblock {
                a: "a".into(),
                b: "b".into(),
            },
            StoreOp::SetAway {
                user: "a".into(),
                away: Some("lunch".into()),
            },
            StoreOp::SetAway {
                user: "a".into(),
                away: None,
            },
            StoreOp::SetDms {
                user: "a".into(),
                friends_only: true,
            },
            StoreOp::SetLastSeen {
                user: "a".into(),
                ms: -1,
            },
            StoreOp::AppendRoomMessage {
                msg: msg(10, To::Room("#rust".into())),
                room: 3,
                seq: 4,
            },
            StoreOp::PutRoom {
                id: 3,
                room: RoomRecord {
                    name: "#rust".into(),
                    created_ms: 1,
                    private: true,
                    topic: None,
                },
            },
            StoreOp::DeleteRoom { id: 3 },
            StoreOp::CreateRoom {
                id: 4,
                room: Box::new(RoomRecord {
                    name: "#go".into(),
                    created_ms: 2,
                    private: false,
                    topic: None,
                }),
                owner: "a".into(),
                member: MemberRecord {
                    role: Role::Owner,
                    since: 0,
                    read_id: 0,
                    read_seq: 0,
                },
            },
            StoreOp::PutMember {
                room: 3,
                user: "a".into(),
                member: MemberRecord {
                    role: Role::Op,
                    since: 1,
                    read_id: 2,
                    read_seq: 3,
                },
            },
            StoreOp::RemoveMember {
                room: 3,
                user: "a".into(),
            },
            StoreOp::PutBan {
                room: 3,
                user: "a".into(),
                ban: BanRecord {
                    by: "b".into(),
                    time_ms: 1,
                    reason: "spam".into(),
                },
            },
            StoreOp::RemoveBan {
                room: 3,
                user: "a".into(),
            },
            StoreOp::Notice(Notice::Room {
                room: 3,
                line: "KICKED #r a b spam".into(),
            }),
            StoreOp::Notice(Notice::Everyone {
                line: "NOTICE hello".into(),
            }),
            StoreOp::Notice(Notice::Kill {
                user: "a".into(),
                text: "bye".into(),
            }),
            StoreOp::Told {
                notice: Notice::Room {
                    room: 3,
                    line: "KICKED #r a b spam".into(),
                },
                op: Box::new(StoreOp::RemoveMember {
                    room: 3,
                    user: "a".into(),
                }),
            },
            StoreOp::PutInvite {
                room: 3,
                user: "a".into(),
                invite: InviteRecord {
                    by: "b".into(),
                    expires_ms: 9,
                },
            },
            StoreOp::RemoveInvite {
                room: 3,
                user: "a".into(),
            },
            StoreOp::SetDirectRead {
                user: "a".into(),
                with: "b".into(),
                id: 5,
            },
            StoreOp::SetSuspended {
                user: "a".into(),
                suspension: Some(Suspension {
                    reason: "spam".into(),
                    since_ms: 7,
                }),
            },
            StoreOp::SetSuspended {
                user: "a".into(),
                suspension: None,
            },
        ]
    }

    #[test]
    fn every_write_op_round_trips_and_damage_is_an_error() {
        for op in samples() {
            let bytes = encode_op(&op).expect("a write op encodes");
            assert_eq!(decode_op(&bytes).unwrap(), op);
            for cut in 0..bytes.len() {
                assert!(decode_op(&bytes[..cut]).is_err(), "{op:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_op(&longer).is_err());
        }
    }

    #[test]
    fn an_entry_says_its_version_and_a_newer_one_is_not_read() {
        let op = StoreOp::DeleteRoom { id: 3 };
        let mut bytes = encode_op(&op).unwrap();
        assert_eq!(entry_version(&bytes), Some(OPLOG_VERSION));
        // A version-1 entry (tags 1 to 27) still reads.
        bytes[0] = 1;
        assert_eq!(decode_op(&bytes).unwrap(), op);
        // One this build does not know is refused, never guessed at.
        bytes[0] = OPLOG_VERSION + 1;
        assert!(!readable_version(OPLOG_VERSION + 1));
        let err = decode_op(&bytes).unwrap_err().to_string();
        assert!(
            err.contains(&format!("version {}", OPLOG_VERSION + 1)),
            "{err}"
        );
        // The version-2 tag is not read from a version-1 entry.
        let create = samples()
            .into_iter()
            .find(|op| matches!(op, StoreOp::CreateRoom { .. }))
            .unwrap();
        let mut create = encode_op(&create).unwrap();
        create[0] = 1;
        assert!(decode_op(&create).is_err());
        assert_eq!(entry_version(&[]), None);
    }

    #[test]
    fn a_told_op_is_a_notice_then_its_change() {
        let notice = Notice::Room {
            room: 3,
            line: "DELETED #r a".into(),
        };
        let told = StoreOp::Told {
            notice: notice.clone(),
            op: Box::new(StoreOp::DeleteRoom { id: 3 }),
        };
        let bytes = encode_op(&told).unwrap();
        assert_eq!(bytes[1], 29);
        assert_eq!(decode_op(&bytes).unwrap(), told);
        // Not a notice telling of a notice, nor a change then a notice.
        let nested = StoreOp::Told {
            notice: notice.clone(),
            op: Box::new(StoreOp::Notice(notice.clone())),
        };
        assert_eq!(encode_op(&nested), None);
        let mut swapped = vec![OPLOG_VERSION, 29];
        swapped.extend_from_slice(&encode_op(&StoreOp::DeleteRoom { id: 3 }).unwrap()[1..]);
        swapped.extend_from_slice(&encode_op(&StoreOp::Notice(notice)).unwrap()[1..]);
        assert!(decode_op(&swapped).is_err());
        // Not in version 1.
        let mut old = bytes.clone();
        old[0] = 1;
        assert!(decode_op(&old).is_err());
    }

    #[test]
    fn reads_are_not_logged() {
        let read = StoreOp::ReadBacklog { user: "a".into() };
        assert_eq!(encode_op(&read), None);
    }
}
