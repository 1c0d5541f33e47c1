//! What the suite covers: the commands its cases send, the `OK` forms and the reply codes they
//! expect. The coverage test compares this against the spec's command list and reply-code table,
//! minus the exemptions in `conformance/exempt.tsv`.

use std::collections::BTreeSet;
use std::path::Path;

use crate::case::{Case, StepKind};

/// Commands whose first argument is a subcommand, counted as `COMMAND SUBCOMMAND`.
const WITH_SUBCOMMANDS: &[&str] = &["FRIEND", "ROOM", "DIRECT"];

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
            StepKind::Expect { pat, .. }
            | StepKind::ExpectSomewhere { pat, .. }
            | StepKind::ExpectAny { pat, .. } => {
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

/// Whether a reply code is sent in a `FAIL` line or a `BYE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    /// `FAIL [@label] <COMMAND> <CODE> ...`
    Fail,
    /// `BYE <CODE> ...`
    Bye,
}

/// The reply codes of `spec/replies.tsv` (columns `code`, `kind`, `commands`, `meaning`): every line
/// that is not blank, a comment or the header row.
pub fn spec_codes(tsv: &str) -> Result<Vec<(String, CodeKind)>, String> {
    let mut out = Vec::new();
    for (i, line) in tsv.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        match cols[..] {
            ["code", ..] => {}
            [code, "FAIL", ..] => out.push((code.to_string(), CodeKind::Fail)),
            [code, "BYE", ..] => out.push((code.to_string(), CodeKind::Bye)),
            _ => {
                return Err(format!(
                    "replies.tsv line {}: expected CODE<TAB>FAIL|BYE<TAB>...",
                    i + 1
                ))
            }
        }
    }
    Ok(out)
}

/// The commands of `spec/PROTOCOL.md`: the headings of section 4, one per command (`## 4.7 MSG`)
/// and one per FRIEND subcommand (`### 4.12.1 FRIEND ADD`).
pub fn spec_commands(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in md.lines() {
        let Some(heading) = line.strip_prefix("##") else {
            continue;
        };
        let mut words = heading.trim_start_matches('#').split_whitespace();
        let Some(number) = words.next() else { continue };
        if !number.starts_with("4.") {
            continue;
        }
        let name: Vec<&str> = words.collect();
        if !name.is_empty()
            && name
                .iter()
                .all(|w| w.chars().all(|c| c.is_ascii_uppercase()))
        {
            out.push(name.join(" "));
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
        let codes = spec_codes(&spec_file("replies.tsv")).expect("spec/replies.tsv parses");
        let commands = spec_commands(&spec_file("PROTOCOL.md"));
        assert!(
            codes.len() > 20,
            "spec/replies.tsv lists only {} codes",
            codes.len()
        );
        assert!(
            commands.len() >= 12,
            "spec/PROTOCOL.md section 4 names only {commands:?}"
        );
        let exempt = read_exemptions(&Path::new(env!("CARGO_MANIFEST_DIR")).join("exempt.tsv"))
            .expect("the exemption list reads");
        let cov = of(&crate::bundled_cases().expect("the bundled cases parse"));
        let mut missing = Vec::new();
        for (code, kind) in &codes {
            let covered = match kind {
                CodeKind::Fail => cov.fail_codes.contains(code),
                CodeKind::Bye => cov.bye_codes.contains(code),
            };
            let exempted = exempt.iter().any(|e| &e.code == code);
            if covered && exempted {
                missing.push(format!(
                    "{code} is exempted in exempt.tsv but a case covers it: drop the exemption"
                ));
            } else if !covered && !exempted {
                missing.push(format!("reply code {code} ({kind:?}) has no case"));
            }
        }
        for e in &exempt {
            if !codes.iter().any(|(c, _)| c == &e.code) {
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
    fn every_case_names_a_section_of_the_spec() {
        let md = spec_file("PROTOCOL.md");
        let sections: BTreeSet<String> = md
            .lines()
            .filter(|l| l.starts_with('#'))
            .filter_map(|l| l.trim_start_matches('#').split_whitespace().next())
            .map(str::to_string)
            .collect();
        let unknown: Vec<String> = crate::bundled_cases()
            .expect("the bundled cases parse")
            .iter()
            .filter(|c| !sections.contains(&c.section))
            .map(|c| {
                format!(
                    "{}:{} names section {}",
                    c.file.display(),
                    c.line,
                    c.section
                )
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "cases name sections the spec lacks:\n  {}",
            unknown.join("\n  ")
        );
    }

    /// Whitespace-normalised text, so that quotes may be joined onto one line.
    fn squash(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn every_quote_is_in_the_spec() {
        let spec = squash(&spec_file("PROTOCOL.md"));
        let mut wrong = Vec::new();
        for case in crate::bundled_cases().expect("the bundled cases parse") {
            for quote in &case.quotes {
                let inner = quote.trim().trim_start_matches('"');
                let inner = inner.strip_suffix('"').unwrap_or(inner);
                // ` ... ` joins pieces of one passage; each piece must be verbatim.
                for piece in inner.split(" ... ") {
                    if !spec.contains(&squash(piece)) {
                        wrong.push(format!("{}:{}: {piece:?}", case.file.display(), case.line));
                    }
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "quotes not found verbatim in spec/PROTOCOL.md:\n  {}",
            wrong.join("\n  ")
        );
    }

    #[test]
    fn reads_spec_tables() {
        let tsv = "code\tkind\tcommands\tmeaning\n# note\nBAD_NAME\tFAIL\tREGISTER\tinvalid\n\nSHUTDOWN\tBYE\t*\tx\n";
        assert_eq!(
            spec_codes(tsv).unwrap(),
            [
                ("BAD_NAME".to_string(), CodeKind::Fail),
                ("SHUTDOWN".to_string(), CodeKind::Bye)
            ]
        );
        assert!(spec_codes("BAD_NAME\tWHAT\tx\n").is_err());
        let md = "# 4 Commands\n## 4.1 REGISTER\ntext\n## 4.12 FRIEND\n### 4.12.1 FRIEND ADD\n## 5.1 HELLO\n## 4.13 Notes on style\n";
        assert_eq!(spec_commands(md), ["REGISTER", "FRIEND", "FRIEND ADD"]);
    }
}
