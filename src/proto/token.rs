//! Device tokens on the wire: the form of a token and of its id.
//!
//! A token is `ct1.<id>.<secret>`: the prefix names the format, `<id>` is 16 lowercase hex digits
//! (64 random bits, the token's public name in `TOKENS` and `REVOKE`), and `<secret>` is 43
//! characters of unpadded base64url (256 random bits). The server looks a token up by its id and
//! compares the SHA-256 of the secret with the one it stored. Nothing here knows where the random
//! bits come from or how the secret is checked; this is only the text form.

use std::fmt;

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "ct1.";
/// Bytes of randomness in a token's secret.
pub const SECRET_BYTES: usize = 32;
/// Characters of a token id.
pub const ID_CHARS: usize = 16;
/// Characters of a token's secret: `SECRET_BYTES` in base64url without padding.
pub const SECRET_CHARS: usize = (SECRET_BYTES * 8).div_ceil(6);

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A device token as a client sends it or the server issues it. Its `Debug` form never shows it,
/// so it cannot leak into logs or test output.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken(String);

impl DeviceToken {
    /// The token made of an id and a secret's random bytes.
    pub fn new(id: u64, secret: &[u8; SECRET_BYTES]) -> DeviceToken {
        let mut s = String::with_capacity(TOKEN_PREFIX.len() + ID_CHARS + 1 + SECRET_CHARS);
        s.push_str(TOKEN_PREFIX);
        s.push_str(&format_id(id));
        s.push('.');
        base64url(secret, &mut s);
        DeviceToken(s)
    }

    /// Wraps any string without checking it (for RESUME, where a malformed token is simply not a
    /// valid one).
    pub fn unchecked(s: &str) -> DeviceToken {
        DeviceToken(s.to_owned())
    }

    /// The token itself: for the one reply that shows it, and for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The id and the secret's text, if the token has the form the server issues.
    pub fn parts(&self) -> Option<(u64, &str)> {
        let rest = self.0.strip_prefix(TOKEN_PREFIX)?;
        let (id, secret) = rest.split_once('.')?;
        let id = parse_id(id)?;
        let well_formed = secret.len() == SECRET_CHARS
            && secret.bytes().all(|b| BASE64URL.contains(&b))
            // The last character carries only the secret's last 4 bits (43 * 6 = 258 bits for
            // 256): its low 2 bits are always 0, so each secret has exactly one spelling.
            && secret
                .bytes()
                .last()
                .and_then(|b| BASE64URL.iter().position(|&c| c == b))
                .is_some_and(|v| v & 0b11 == 0);
        well_formed.then_some((id, secret))
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceToken(<redacted>)")
    }
}

/// A token id as shown: 16 lowercase hex digits.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

/// A token id as typed: exactly 16 hex digits, in either letter case.
pub fn parse_id(s: &str) -> Option<u64> {
    if s.len() != ID_CHARS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Appends `bytes` in base64url without padding.
fn base64url(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // 2 bytes give 3 characters, 1 gives 2.
        for i in 0..=chunk.len() {
            out.push(char::from(BASE64URL[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_has_its_form_and_parts() {
        let t = DeviceToken::new(0x0123_4567_89ab_cdef, &[0xff; SECRET_BYTES]);
        let s = t.expose();
        assert_eq!(s.len(), 4 + 16 + 1 + 43);
        assert!(s.starts_with("ct1.0123456789abcdef."), "{s}");
        let (id, secret) = t.parts().unwrap();
        assert_eq!(id, 0x0123_4567_89ab_cdef);
        assert_eq!(secret, &s[21..]);
        // 0xff... is all ones: "_" but for the last character, which has two zero bits.
        assert_eq!(secret, format!("{}8", "_".repeat(42)));
        assert!(!format!("{t:?}").contains("ct1"));
    }

    #[test]
    fn base64url_matches_rfc_4648_test_vectors() {
        let enc = |b: &[u8]| {
            let mut s = String::new();
            base64url(b, &mut s);
            s
        };
        // RFC 4648 section 10, without padding.
        assert_eq!(enc(b""), "");
        assert_eq!(enc(b"f"), "Zg");
        assert_eq!(enc(b"fo"), "Zm8");
        assert_eq!(enc(b"foo"), "Zm9v");
        assert_eq!(enc(b"foob"), "Zm9vYg");
        assert_eq!(enc(b"fooba"), "Zm9vYmE");
        assert_eq!(enc(b"foobar"), "Zm9vYmFy");
        assert_eq!(enc(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn malformed_tokens_have_no_parts() {
        let good = DeviceToken::new(7, &[1; SECRET_BYTES]);
        let s = good.expose().to_owned();
        assert!(good.parts().is_some());
        let bad = [
            String::new(),
            "ct1.".into(),
            s.replacen("ct1.", "ct2.", 1),
            s[..s.len() - 1].to_owned(),
            format!("{s}A"),
            s.replacen('.', ":", 2),
            // The id: not hex, too short.
            s.replacen("0000000000000007", "000000000000000g", 1),
            s.replacen("0000000000000007", "000000000000007", 1),
            // A character outside the alphabet; a last character with nonzero low bits.
            format!("{}+", &s[..s.len() - 1]),
            format!("{}B", &s[..s.len() - 1]),
        ];
        for b in bad {
            assert_eq!(DeviceToken::unchecked(&b).parts(), None, "{b}");
        }
    }

    #[test]
    fn ids_at_the_boundaries() {
        assert_eq!(format_id(0), "0000000000000000");
        assert_eq!(format_id(u64::MAX), "ffffffffffffffff");
        assert_eq!(parse_id("FFFFFFFFFFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_id("0000000000000001"), Some(1));
        assert_eq!(parse_id("1"), None);
        assert_eq!(parse_id("00000000000000001"), None);
        assert_eq!(parse_id("+000000000000001"), None);
    }
}
