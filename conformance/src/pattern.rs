//! Matching a received line against an expanded pattern.
//!
//! A pattern is a list of [`PatTok`]s: literals compared byte for byte (so names are compared
//! case-sensitively, as registered), range matchers, and captures to bind. Matching is anchored at
//! both ends and backtracks, so `<text>` may sit anywhere in a pattern.

use crate::template::{Matcher, PatTok};

/// Matches `line` against `pat`; on success returns the captures it bound, in pattern order.
pub fn matches(pat: &[PatTok], line: &[u8]) -> Option<Vec<(String, String)>> {
    let mut binds = Vec::new();
    if match_at(pat, line, &mut binds) {
        Some(binds)
    } else {
        None
    }
}

/// The lengths of `input`'s prefixes that `m` accepts, in the order to try them; `last` when
/// nothing follows in the pattern.
fn prefixes(m: Matcher, input: &[u8], last: bool) -> Vec<usize> {
    match m {
        Matcher::Number | Matcher::Id => {
            let run = input.iter().take_while(|b| b.is_ascii_digit()).count();
            // A number ends where its digits end: any other prefix would split it.
            let ok = run > 0
                && (run == 1 || input[0] != b'0')
                && decimal(&input[..run]).is_some_and(|v| m == Matcher::Number || v > 0);
            if ok {
                vec![run]
            } else {
                vec![]
            }
        }
        Matcher::Time => {
            if input.len() >= TIME_LEN && is_time(&input[..TIME_LEN]) {
                vec![TIME_LEN]
            } else {
                vec![]
            }
        }
        Matcher::Word => {
            let run = input.iter().take_while(|&&b| b != b' ').count();
            (1..=run).rev().collect()
        }
        Matcher::Text | Matcher::Any => {
            let min = usize::from(m == Matcher::Text);
            if last {
                // Nothing follows: only the whole rest can match.
                if input.len() >= min {
                    vec![input.len()]
                } else {
                    vec![]
                }
            } else {
                (min..=input.len()).collect()
            }
        }
    }
}

fn match_at(pat: &[PatTok], input: &[u8], binds: &mut Vec<(String, String)>) -> bool {
    let Some((tok, rest)) = pat.split_first() else {
        return input.is_empty();
    };
    match tok {
        PatTok::Lit(lit) => input.starts_with(lit) && match_at(rest, &input[lit.len()..], binds),
        PatTok::Bind(name, m) if binds.iter().any(|(n, _)| n == name) => {
            // Bound earlier in this same pattern: the same value must appear again.
            let value = binds.iter().find(|(n, _)| n == name).map(|b| b.1.clone());
            let lit = value.expect("checked above").into_bytes();
            input.starts_with(&lit)
                && prefixes(*m, input, rest.is_empty()).contains(&lit.len())
                && match_at(rest, &input[lit.len()..], binds)
        }
        PatTok::Bind(name, m) => {
            for len in prefixes(*m, input, rest.is_empty()) {
                let value = String::from_utf8_lossy(&input[..len]).into_owned();
                binds.push((name.clone(), value));
                if match_at(rest, &input[len..], binds) {
                    return true;
                }
                binds.pop();
            }
            false
        }
        PatTok::Match(m) => prefixes(*m, input, rest.is_empty())
            .into_iter()
            .any(|len| match_at(rest, &input[len..], binds)),
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
        assert!(ok("USER $a", "USER Crun00023_a"));
        assert!(!ok("USER $a", "USER crun00023_a"));
    }

    #[test]
    fn numbers() {
        assert!(ok("OK MSG <id> KEPT", "OK MSG 42 KEPT"));
        assert!(ok("OK MSG <id> KEPT", "OK MSG 18446744073709551615 KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG 18446744073709551616 KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG  KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG -1 KEPT"));
        assert!(!ok("OK MSG <id> KEPT", "OK MSG 4x KEPT"));
        assert!(ok("<n>", "0"));
        assert!(!ok("<id>", "0"));
        assert!(
            !ok("<n>", "007"),
            "the server writes numbers without leading zeros"
        );
        assert!(ok("<n>x<n>", "1x2"));
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
        assert!(ok("X <any>$a<any>", "X no such user: Crun00023_a"));
        assert!(ok("X <any>$a<any>", "X Crun00023_a, y"));
        assert!(!ok("X <any>$a<any>", "X Crun00023_b"));
        assert!(ok(
            "MESSAGE <id> <time> $a $b   two",
            "MESSAGE 1 2026-11-21T02:12:12.345Z Crun00023_a Crun00023_b   two"
        ));
    }

    #[test]
    fn captures_bind_and_compare() {
        let bind = |p: &str, l: &str| matches(&pat(p), l.as_bytes());
        let s = |v: &str| v.to_string();
        assert_eq!(
            bind("OK MSG {id} DELIVERED", "OK MSG 17 DELIVERED").unwrap(),
            vec![(s("id"), s("17"))]
        );
        let mut env = Env::new("run000", 1);
        env.captures.insert("id".into(), "17".into());
        let bound = Template::parse("MESSAGE {id} <text>", Mode::Pattern)
            .unwrap()
            .to_pattern(&env)
            .unwrap();
        assert!(matches(&bound, b"MESSAGE 17 x").is_some());
        assert!(matches(&bound, b"MESSAGE 170 x").is_none());
        // A capture used twice in one pattern must repeat its value.
        assert!(bind("{x} {x}", "7 7").is_some());
        assert!(bind("{x} {x}", "7 8").is_none());
        assert!(bind("{x} {x}", "7 77").is_none());
        // Times and words.
        let t = "2026-11-21T02:12:12.345Z";
        assert_eq!(
            bind("at {t:time}!", &format!("at {t}!")).unwrap(),
            vec![(s("t"), s(t))]
        );
        assert!(bind("{t:time} {t:time}", &format!("{t} {t}")).is_some());
        assert!(bind(
            "{t:time} {t:time}",
            &format!("{t} 2026-11-21T02:12:12.346Z")
        )
        .is_none());
        assert_eq!(
            bind("{w:word} <text>", "one two").unwrap(),
            vec![(s("w"), s("one"))]
        );
        assert!(bind("{w:word} {w:word}", "ab abc").is_none());
    }
}
