//! Matching a received line against an expanded pattern.
//!
//! A pattern is a list of [`PatTok`]s: literals compared byte for byte (so names are compared
//! case-sensitively, as registered), range matchers, and captures to bind. Matching is anchored at
//! both ends and backtracks, so `<text>` may sit anywhere in a pattern.

use crate::template::{Matcher, PatTok};

/// Matches `line` against `pat`; on success returns the captures it bound, in pattern order.
pub fn matches(pat: &[PatTok], line: &[u8]) -> Option<Vec<(String, u64)>> {
    let mut binds = Vec::new();
    if match_at(pat, line, &mut binds) {
        Some(binds)
    } else {
        None
    }
}

fn match_at(pat: &[PatTok], input: &[u8], binds: &mut Vec<(String, u64)>) -> bool {
    let Some((tok, rest)) = pat.split_first() else {
        return input.is_empty();
    };
    match tok {
        PatTok::Lit(lit) => input.starts_with(lit) && match_at(rest, &input[lit.len()..], binds),
        PatTok::Match(Matcher::Time) => {
            input.len() >= TIME_LEN
                && is_time(&input[..TIME_LEN])
                && match_at(rest, &input[TIME_LEN..], binds)
        }
        PatTok::Bind(name) if binds.iter().any(|(n, _)| n == name) => {
            // Bound earlier in this same pattern: it must repeat the same number.
            let value = binds
                .iter()
                .find(|(n, _)| n == name)
                .map(|b| b.1.to_string());
            let lit = value.expect("checked above").into_bytes();
            input.starts_with(&lit)
                && !input[lit.len()..].first().is_some_and(u8::is_ascii_digit)
                && match_at(rest, &input[lit.len()..], binds)
        }
        PatTok::Match(Matcher::Number) | PatTok::Bind(_) => {
            let run = input.iter().take_while(|b| b.is_ascii_digit()).count();
            // Longest first: a number is normally followed by a non-digit.
            for len in (1..=run).rev() {
                let Some(value) = decimal(&input[..len]) else {
                    continue;
                };
                if let PatTok::Bind(name) = tok {
                    binds.push((name.clone(), value));
                }
                if match_at(rest, &input[len..], binds) {
                    return true;
                }
                if let PatTok::Bind(_) = tok {
                    binds.pop();
                }
            }
            false
        }
        PatTok::Match(Matcher::Word) => {
            let run = input.iter().take_while(|&&b| b != b' ').count();
            (1..=run)
                .rev()
                .any(|len| match_at(rest, &input[len..], binds))
        }
        PatTok::Match(m @ (Matcher::Text | Matcher::Any)) => {
            let min = usize::from(*m == Matcher::Text);
            if rest.is_empty() {
                return input.len() >= min;
            }
            (min..=input.len()).any(|len| match_at(rest, &input[len..], binds))
        }
    }
}

/// A decimal u64 as the protocol writes it.
fn decimal(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Length of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub const TIME_LEN: usize = 24;

/// Whether `t` is a UTC timestamp `YYYY-MM-DDTHH:MM:SS.mmmZ` with fields in range.
pub fn is_time(t: &[u8]) -> bool {
    if t.len() != TIME_LEN {
        return false;
    }
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    if !shape.iter().zip(t).all(|(&s, &c)| {
        if s == b'd' {
            c.is_ascii_digit()
        } else {
            s == c
        }
    }) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| decimal(&t[r]).unwrap_or(u64::MAX);
    let (month, day, hour, min, sec) =
        (num(5..7), num(8..10), num(11..13), num(14..16), num(17..19));
    (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && min < 60 && sec < 61
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{Env, Mode, Template};

    fn pat(p: &str) -> Vec<PatTok> {
        Template::parse(p, Mode::Pattern)
            .unwrap()
            .to_pattern(&Env::new("run000", 1))
            .unwrap()
    }

    fn ok(p: &str, line: &str) -> bool {
        matches(&pat(p), line.as_bytes()).is_some()
    }

    #[test]
    fn literals_are_exact_and_case_sensitive() {
        assert!(ok("OK PING", "OK PING"));
        assert!(!ok("OK PING", "OK PING "));
        assert!(!ok("OK PING", "ok ping"));
        assert!(!ok("OK PING", "OK PIN"));
        assert!(ok("USER $a", "USER Crun00001_a"));
        assert!(!ok("USER $a", "USER crun00001_a"));
    }

    #[test]
    fn numbers() {
        assert!(ok("OK MSG <id> KEPT", "OK MSG 42 KEPT"));
        assert!(ok("OK MSG <id> KEPT", "OK MSG 18446744073709551615 KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG 18446744073709551616 KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG  KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG -1 KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG 4x KEPT"));
        assert!(ok("<n><n>", "12"));
    }

    #[test]
    fn times() {
        assert!(ok("<time>", "2026-11-21T02:12:12.345Z"));
        assert!(!ok("<time>", "2026-11-21T02:12:12Z"));
        assert!(!ok("<time>", "2026-11-21 02:12:12.345Z"));
        assert!(!ok("<time>", "2026-13-21T02:12:12.345Z"));
        assert!(!ok("<time>", "2026-11-21T24:12:12.345Z"));
        assert!(!ok("<time>", "2026-11-21T02:12:12.345+00:00"));
    }

    #[test]
    fn words_and_text() {
        assert!(ok(
            "HELLO chatd <word> <text>",
            "HELLO chatd 0.1.0 Welcome! Type HELP."
        ));
        assert!(!ok("HELLO chatd <word> <text>", "HELLO chatd 0.1.0"));
        assert!(!ok("HELLO chatd <word> <text>", "HELLO chatd 0.1.0 "));
        assert!(ok(
            "FAIL MSG UNKNOWN_USER <text>",
            "FAIL MSG UNKNOWN_USER no such user: x"
        ));
        assert!(ok("<text> middle <text>", "a middle b middle c"));
        assert!(!ok("<text>", ""));
        assert!(ok("<any>", ""));
        assert!(ok("X <any>$a<any>", "X no such user: Crun00001_a"));
        assert!(ok("X <any>$a<any>", "X Crun00001_a, y"));
        assert!(!ok("X <any>$a<any>", "X Crun00001_b"));
        assert!(ok(
            "MESSAGE <id> <time> $a $b   two",
            "MESSAGE 1 2026-11-21T02:12:12.345Z Crun00001_a Crun00001_b   two"
        ));
    }

    #[test]
    fn captures_bind_and_compare() {
        let binds = matches(&pat("OK MSG {id} DELIVERED"), b"OK MSG 17 DELIVERED").unwrap();
        assert_eq!(binds, vec![("id".to_string(), 17)]);
        let mut env = Env::new("run000", 1);
        env.captures.insert("id".into(), 17);
        let bound = Template::parse("MESSAGE {id} <text>", Mode::Pattern)
            .unwrap()
            .to_pattern(&env)
            .unwrap();
        assert!(matches(&bound, b"MESSAGE 17 x").is_some());
        assert!(matches(&bound, b"MESSAGE 170 x").is_none());
        // Backtracking releases a binding that did not lead to a match.
        let binds = matches(&pat("{a}{b}9"), b"1239").unwrap();
        assert_eq!(binds, vec![("a".to_string(), 12), ("b".to_string(), 3)]);
        // A capture used twice in one pattern must repeat its number.
        assert!(matches(&pat("{x} {x}"), b"7 7").is_some());
        assert!(matches(&pat("{x} {x}"), b"7 8").is_none());
        assert!(matches(&pat("{x} {x}"), b"7 77").is_none());
    }
}
