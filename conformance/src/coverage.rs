//! What the suite covers: the commands its cases send, the `OK` forms and the reply codes they
//! expect. The coverage test compares this against the spec's command list and reply-code table,
//! minus the exemptions in `conformance/exempt.tsv`.

use std::collections::BTreeSet;
use std::path::Path;

use crate::case::{Case, StepKind};

/// Commands whose first argument is a subcommand, counted as `COMMAND SUBCOMMAND`.
const WITH_SUBCOMMANDS: &[&str] = &["FRIEND"];

/// Everything the cases exercise.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Commands sent (upper case; `FRIEND ADD` and also `FRIEND`).
    pub sent: BTreeSet<String>,
    /// Commands whose `OK` reply some case expects.
    pub ok: BTreeSet<String>,
    /// Reply codes some case expects in a `FAIL` line.
    pub fail_codes: BTreeSet<String>,
    /// Codes some case expects in a `BYE` line.
    pub bye_codes: BTreeSet<String>,
}

/// `COMMAND` or `COMMAND SUB` from the words after OK/FAIL or at the start of a sent line.
fn command_of(words: &[String]) -> Vec<String> {
    let mut w = words.iter().map(|w| w.to_ascii_uppercase());
    let Some(cmd) = w.next() else {
        return vec![];
    };
    let mut out = vec![cmd.clone()];
    if WITH_SUBCOMMANDS.contains(&cmd.as_str()) {
        if let Some(sub) = w.next() {
            out.push(format!("{cmd} {sub}"));
        }
    }
    out
}

fn skip_label(words: &[String]) -> &[String] {
    match words.first() {
        Some(w) if w.starts_with('@') => &words[1..],
        _ => words,
    }
}

/// Collects the coverage of `cases`.
pub fn of(cases: &[Case]) -> Coverage {
    let mut cov = Coverage::default();
    for step in cases.iter().flat_map(|c| &c.steps) {
        match &step.kind {
            StepKind::Send { tpl, .. } => {
                let words = tpl.literal_words();
                cov.sent.extend(command_of(skip_label(&words)));
            }
            StepKind::Signup { .. } => {
                cov.sent
                    .extend(["REGISTER".to_string(), "LOGIN".to_string()]);
            }
            StepKind::Expect { pat, .. } | StepKind::ExpectSomewhere { pat, .. } => {
                let words = pat.literal_words();
                match words.first().map(String::as_str) {
                    Some("OK") => cov.ok.extend(command_of(skip_label(&words[1..]))),
                    Some("FAIL") => {
                        if let Some(code) = skip_label(&words[1..]).get(1) {
                            cov.fail_codes.insert(code.clone());
                        }
                    }
                    Some("BYE") => {
                        if let Some(code) = words.get(1) {
                            cov.bye_codes.insert(code.clone());
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    cov
}

/// One exemption: a reply code no black-box client can provoke, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exemption {
    /// The code.
    pub code: String,
    /// Why it cannot be tested from outside.
    pub reason: String,
}

/// Reads `code<TAB>reason` lines (`#` comments allowed) from the exemption list.
pub fn read_exemptions(path: &Path) -> Result<Vec<Exemption>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the exemption list {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('\t') {
            Some((code, reason)) if !code.trim().is_empty() && !reason.trim().is_empty() => out
                .push(Exemption {
                    code: code.trim().to_string(),
                    reason: reason.trim().to_string(),
                }),
            _ => {
                return Err(format!(
                    "{}:{}: expected CODE<TAB>reason",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    Ok(out)
}

/// The reply codes of `spec/replies.tsv`: the first column of every line that is not blank, a
/// comment or the header row.
pub fn spec_codes(tsv: &str) -> Vec<String> {
    tsv.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split('\t').next())
        .map(str::trim)
        .filter(|c| !c.eq_ignore_ascii_case("code"))
        .map(str::to_string)
        .collect()
}

/// The commands of `spec/PROTOCOL.md`: the headings of its command sections, `### 7.3 MSG`-like
/// (a section number, then the command name in upper case, optionally in backticks).
pub fn spec_commands(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in md.lines() {
        let Some(rest) = line.strip_prefix("###") else {
            continue;
        };
        let mut words = rest.trim_start_matches('#').split_whitespace();
        let Some(first) = words.next() else { continue };
        let looks_numbered = first
            .trim_end_matches('.')
            .split('.')
            .all(|p| p.chars().all(|c| c.is_ascii_digit()));
        let name = if looks_numbered {
            words.next()
        } else {
            Some(first)
        };
        let Some(name) = name.map(|n| n.trim_matches('`')) else {
            continue;
        };
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase()) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::parse_file;

    #[test]
    fn collects_commands_oks_and_codes() {
        let cases = parse_file(
            Path::new("t.case"),
            "case 1 x\n# \"q\"\nconnect a\na signup $a\n\
             a> @l1 friend add $b\na< OK @l1 FRIEND ADD $b REQUESTED\n\
             a>> {3*MSG $b x\\n}\na<? FAIL MSG UNKNOWN_USER <text>\n\
             a< FAIL @x * BAD_LABEL <text>\na< BYE SLOW_CONSUMER <text>\n\
             a<* FAIL PING NOT_COUNTED <text>\na< OK PING\n",
        )
        .unwrap();
        let cov = of(&cases);
        let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            cov.sent,
            set(&["FRIEND", "FRIEND ADD", "LOGIN", "MSG", "REGISTER"])
        );
        assert_eq!(cov.ok, set(&["FRIEND", "FRIEND ADD", "PING"]));
        assert_eq!(cov.fail_codes, set(&["BAD_LABEL", "UNKNOWN_USER"]));
        assert_eq!(cov.bye_codes, set(&["SLOW_CONSUMER"]));
    }

    fn spec_file(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("spec")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the coverage check needs {} ({e}); it compares the cases against the spec and cannot pass without it",
                path.display()
            )
        })
    }

    #[test]
    fn bundled_cases_parse() {
        let cases = crate::bundled_cases().expect("the bundled cases parse");
        assert!(cases.len() > 100, "only {} cases", cases.len());
    }

    #[test]
    fn every_reply_code_and_command_has_a_case() {
        let codes = spec_codes(&spec_file("replies.tsv"));
        let commands = spec_commands(&spec_file("PROTOCOL.md"));
        assert!(!codes.is_empty(), "spec/replies.tsv lists no reply code");
        assert!(
            !commands.is_empty(),
            "spec/PROTOCOL.md has no command section"
        );
        let exempt = read_exemptions(&Path::new(env!("CARGO_MANIFEST_DIR")).join("exempt.tsv"))
            .expect("the exemption list reads");
        let cov = of(&crate::bundled_cases().expect("the bundled cases parse"));
        let mut missing = Vec::new();
        for code in &codes {
            let covered = cov.fail_codes.contains(code) || cov.bye_codes.contains(code);
            let exempted = exempt.iter().any(|e| &e.code == code);
            if covered && exempted {
                missing.push(format!(
                    "{code} is exempted in exempt.tsv but a case covers it: drop the exemption"
                ));
            } else if !covered && !exempted {
                missing.push(format!("reply code {code} has no case"));
            }
        }
        for e in &exempt {
            if !codes.contains(&e.code) {
                missing.push(format!(
                    "exempt.tsv names {}, which spec/replies.tsv does not have",
                    e.code
                ));
            }
        }
        for cmd in &commands {
            if !cov.sent.contains(cmd) {
                missing.push(format!("command {cmd} is never sent by a case"));
            }
            if !cov.ok.contains(cmd) {
                missing.push(format!("no case expects OK {cmd}"));
            }
        }
        assert!(
            missing.is_empty(),
            "coverage gaps:\n  {}",
            missing.join("\n  ")
        );
    }

    #[test]
    fn reads_spec_tables() {
        let tsv = "code\tcommands\tmeaning\n# note\nBAD_NAME\tREGISTER MSG\tinvalid name\n\nBYE_X\t-\tx\n";
        assert_eq!(spec_codes(tsv), ["BAD_NAME", "BYE_X"]);
        let md = "# chatd\n## 7 Commands\n### 7.1 REGISTER\ntext\n### 7.2 `LOGIN`\n### 7.10. USERS\n### Notes on style\n";
        assert_eq!(spec_commands(md), ["REGISTER", "LOGIN", "USERS"]);
    }
}
