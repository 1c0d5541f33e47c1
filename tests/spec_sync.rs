//! The spec and the code cannot drift apart: the reply codes in `spec/replies.tsv`, the command
//! sections of `spec/PROTOCOL.md` and the limits table must match what the code uses.

use std::collections::BTreeSet;

use chatd::config::*;
use chatd::proto::code::{ByeCode, Code};
use chatd::proto::command::COMMANDS;

fn spec_file(name: &str) -> String {
    let path = format!("{}/spec/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn tsv_codes(kind: &str) -> BTreeSet<String> {
    let tsv = spec_file("replies.tsv");
    let mut lines = tsv.lines();
    assert_eq!(
        lines.next(),
        Some("code\tkind\tcommands\tmeaning"),
        "replies.tsv header"
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .inspect(|cols| assert_eq!(cols.len(), 4, "four columns in {cols:?}"))
        .filter(|cols| cols[1] == kind)
        .map(|cols| cols[0].to_owned())
        .collect()
}

#[test]
fn fail_codes_match_the_spec_table() {
    let code: BTreeSet<String> = Code::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(tsv_codes("FAIL"), code);
}

#[test]
fn bye_codes_match_the_spec_table() {
    let code: BTreeSet<String> = ByeCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(tsv_codes("BYE"), code);
}

#[test]
fn every_fail_code_is_described_in_the_spec_text() {
    let spec = spec_file("PROTOCOL.md");
    for c in Code::ALL {
        assert!(
            spec.contains(&format!("`{}`", c.as_str())),
            "{} is not described in PROTOCOL.md",
            c.as_str()
        );
    }
}

#[test]
fn every_command_has_a_section() {
    let spec = spec_file("PROTOCOL.md");
    for c in COMMANDS {
        let found = spec
            .lines()
            .any(|l| l.starts_with("## 4.") && l.split_whitespace().last() == Some(c.name));
        assert!(found, "no `## 4.x {}` section in PROTOCOL.md", c.name);
    }
}

#[test]
fn limits_table_states_the_numbers_the_code_uses() {
    let spec = spec_file("PROTOCOL.md");
    let table: String = spec
        .lines()
        .skip_while(|l| !l.starts_with("# 9 Limits"))
        .take_while(|l| !l.starts_with("# 10"))
        .collect::<Vec<_>>()
        .join("\n");
    let row = |what: &str| -> String {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {what}")))
            .unwrap_or_else(|| panic!("no limits row for {what}"))
            .to_owned()
    };
    let has =
        |what: &str, n: String| assert!(row(what).contains(&n), "limits row {what:?} lacks {n}");
    has("line content, client to server", MAX_LINE_BYTES.to_string());
    has("name", format!("1 to {MAX_NAME_LEN}"));
    has(
        "password",
        format!("{MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES}"),
    );
    has("message text", format!("1 to {MAX_TEXT_BYTES}"));
    has("GROUP recipients", format!("1 to {MAX_GROUP_RECIPIENTS}"));
    has("label", format!("1 to {MAX_LABEL_LEN}"));
    has("PING token", format!("1 to {MAX_PING_TOKEN_BYTES}"));
    has(
        "HISTORY count",
        format!("1 to {HISTORY_MAX_COUNT}; default {HISTORY_DEFAULT_COUNT}"),
    );
    has(
        "kept (offline) messages",
        MAX_PENDING_PER_ACCOUNT.to_string(),
    );
    has(
        "unanswered commands",
        MAX_INFLIGHT_PER_CONNECTION.to_string(),
    );
    has(
        "line rate",
        format!("{DEFAULT_LINE_RATE} lines/s, burst {DEFAULT_LINE_BURST}"),
    );
    has("outbox per connection", OUTBOX_LIMIT_BYTES.to_string());
    has("connections", DEFAULT_MAX_CONNECTIONS.to_string());
    has("queued password hashes", DEFAULT_HASH_QUEUE.to_string());
    has(
        "TLS handshake",
        format!("{} s", TLS_HANDSHAKE_TIMEOUT.as_secs()),
    );
    has("room name", format!("1 to {MAX_ROOM_NAME_LEN}"));
    has("rooms per account", MAX_ROOMS_PER_ACCOUNT.to_string());
    has("members per room", DEFAULT_MAX_ROOM_MEMBERS.to_string());
    has("bans per room", MAX_BANS_PER_ROOM.to_string());
    has(
        "invitations waiting per room",
        MAX_INVITES_PER_ROOM.to_string(),
    );
    has(
        "invitations waiting per account",
        MAX_INVITES_PER_ACCOUNT.to_string(),
    );
    has(
        "invitation lifetime",
        format!(
            "{} days ({INVITE_LIFETIME_MS} ms)",
            INVITE_LIFETIME_MS / 86_400_000
        ),
    );
    has("topic", format!("1 to {MAX_TOPIC_BYTES} bytes"));
    has("reason of PART", format!("1 to {MAX_REASON_BYTES} bytes"));
    has("messages in a JOIN answer", JOIN_REPLAY.to_string());
    has("public rooms listed", ROOMS_LISTED_PUBLIC.to_string());
    has(
        "device token label",
        format!("1 to {MAX_TOKEN_LABEL_BYTES} bytes"),
    );
    has(
        "device tokens per account",
        MAX_TOKENS_PER_ACCOUNT.to_string(),
    );
    has(
        "accounts one account blocks",
        MAX_BLOCKS_PER_ACCOUNT.to_string(),
    );
    has("away message", format!("1 to {MAX_AWAY_BYTES} bytes"));
    has(
        "reason of SUSPEND or KILL",
        format!("1 to {MAX_REASON_BYTES} bytes"),
    );
    has("admins", format!("at most {MAX_ADMINS} accounts"));
    has(
        "last seen, on disk",
        format!("{} minutes", LAST_SEEN_WRITE_INTERVAL_MS / 60_000),
    );
    let days = |ms: i64| {
        assert_eq!(ms % 86_400_000, 0, "{ms} ms is not whole days");
        format!("{} days", ms / 86_400_000)
    };
    has("device token lifetime", days(TOKEN_IDLE_LIFETIME_MS));
    has("device token lifetime", days(TOKEN_MAX_LIFETIME_MS));
    assert_eq!(TOKEN_TOUCH_INTERVAL_MS, 3_600_000);
    has("device token last use", "once an hour".to_string());
    has(
        "device token |",
        format!(
            "{} bytes; {} random bits",
            chatd::proto::token::TOKEN_PREFIX.len()
                + chatd::proto::token::ID_CHARS
                + 1
                + chatd::proto::token::SECRET_CHARS,
            chatd::proto::token::SECRET_BYTES * 8
        ),
    );
}
