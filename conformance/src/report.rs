//! Reporting results: a line per case, failure details, a per-section summary and JUnit XML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::runner::{CaseResult, Outcome};

/// One case as a report line, with the details of a failure indented below it.
pub fn case_line(r: &CaseResult) -> String {
    match &r.outcome {
        Outcome::Pass => format!("PASS {} {}", r.section, r.name),
        Outcome::Skip(why) => format!("SKIP {} {} ({why})", r.section, r.name),
        Outcome::Fail(f) => {
            let mut s = format!("FAIL {} {}\n", r.section, r.name);
            let _ = writeln!(
                s,
                "     at {} (step line {}): {}",
                r.location, f.line, f.step
            );
            let _ = writeln!(s, "     expected: {}", f.expected);
            for (i, got) in f.received.iter().enumerate() {
                let label = if i == 0 { "received:" } else { "         " };
                let _ = writeln!(s, "     {label} {got}");
            }
            if !f.transcript.is_empty() {
                let _ = writeln!(s, "     transcript (last lines):");
                for t in &f.transcript {
                    let _ = writeln!(s, "       {t}");
                }
            }
            s.trim_end().to_string()
        }
    }
}

/// Counts of one group of cases.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases that were skipped.
    pub skipped: usize,
}

impl Counts {
    fn add(&mut self, r: &CaseResult) {
        match r.outcome {
            Outcome::Pass => self.passed += 1,
            Outcome::Fail(_) => self.failed += 1,
            Outcome::Skip(_) => self.skipped += 1,
        }
    }
}

/// Totals over all results.
pub fn totals(results: &[CaseResult]) -> Counts {
    let mut c = Counts::default();
    results.iter().for_each(|r| c.add(r));
    c
}

/// Sort key for section numbers: numerically, part by part (`2.10` after `2.9`).
fn section_key(s: &str) -> Vec<u64> {
    s.split('.')
        .map(|p| p.parse().unwrap_or(u64::MAX))
        .collect()
}

/// Counts per section, in section order.
pub fn by_section(results: &[CaseResult]) -> Vec<(String, Counts)> {
    let mut map: BTreeMap<Vec<u64>, (String, Counts)> = BTreeMap::new();
    for r in results {
        map.entry(section_key(&r.section))
            .or_insert_with(|| (r.section.clone(), Counts::default()))
            .1
            .add(r);
    }
    map.into_values().collect()
}

/// The per-section table and the totals.
pub fn summary(results: &[CaseResult]) -> String {
    let mut s = String::from("section   pass  fail  skip\n");
    for (section, c) in by_section(results) {
        let _ = writeln!(
            s,
            "{section:<8} {:>5} {:>5} {:>5}",
            c.passed, c.failed, c.skipped
        );
    }
    let t = totals(results);
    let _ = write!(
        s,
        "total: {} cases, {} passed, {} failed, {} skipped",
        t.passed + t.failed + t.skipped,
        t.passed,
        t.failed,
        t.skipped
    );
    s
}

/// Every failure in full, for an assertion message.
pub fn failures(results: &[CaseResult]) -> String {
    results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .map(case_line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters, even escaped.
            c if c.is_control() && c != '\n' && c != '\t' => {
                out.push_str(&format!("\\x{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// JUnit XML: one test suite per spec section, one test case per case.
pub fn junit(results: &[CaseResult]) -> String {
    let t = totals(results);
    let total_time: Duration = results.iter().map(|r| r.duration).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"chatd-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{}\">",
        results.len(),
        t.failed,
        t.skipped,
        secs(total_time)
    );
    let mut sections: BTreeMap<Vec<u64>, (String, Vec<&CaseResult>)> = BTreeMap::new();
    for r in results {
        sections
            .entry(section_key(&r.section))
            .or_insert_with(|| (r.section.clone(), Vec::new()))
            .1
            .push(r);
    }
    for (section, rs) in sections.into_values() {
        let mut c = Counts::default();
        rs.iter().for_each(|r| c.add(r));
        let time: Duration = rs.iter().map(|r| r.duration).sum();
        let _ = writeln!(
            s,
            "  <testsuite name=\"section {}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{}\">",
            xml_escape(&section),
            rs.len(),
            c.failed,
            c.skipped,
            secs(time)
        );
        for r in rs {
            let _ = write!(
                s,
                "    <testcase classname=\"section {}\" name=\"{}\" file=\"{}\" time=\"{}\"",
                xml_escape(&r.section),
                xml_escape(&r.name),
                xml_escape(&r.location),
                secs(r.duration)
            );
            match &r.outcome {
                Outcome::Pass => s.push_str("/>\n"),
                Outcome::Skip(why) => {
                    let _ = writeln!(
                        s,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        xml_escape(why)
                    );
                }
                Outcome::Fail(f) => {
                    let got = f.received.first().map(String::as_str).unwrap_or("");
                    let _ = writeln!(
                        s,
                        ">\n      <failure message=\"expected {} | received {}\">{}</failure>\n    </testcase>",
                        xml_escape(&f.expected),
                        xml_escape(got),
                        xml_escape(&case_line(r))
                    );
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Failure;

    fn result(section: &str, name: &str, outcome: Outcome) -> CaseResult {
        CaseResult {
            section: section.into(),
            name: name.into(),
            location: "cases/x.case:1".into(),
            outcome,
            duration: Duration::from_millis(5),
        }
    }

    fn failure() -> Outcome {
        Outcome::Fail(Failure {
            line: 7,
            step: "a< OK <PING>".into(),
            expected: "OK PING".into(),
            received: vec!["FAIL * UNKNOWN_COMMAND \"x\" & <y>".into()],
            transcript: vec!["a> PING".into()],
        })
    }

    #[test]
    fn lines_and_summary() {
        let rs = vec![
            result("2.10", "late", Outcome::Pass),
            result("2.9", "early", failure()),
            result("2.9", "skipped", Outcome::Skip("needs x".into())),
        ];
        assert_eq!(case_line(&rs[0]), "PASS 2.10 late");
        let fail = case_line(&rs[1]);
        assert!(fail.starts_with("FAIL 2.9 early\n"));
        assert!(fail.contains("expected: OK PING"));
        assert!(fail.contains("received: FAIL * UNKNOWN_COMMAND"));
        let sum = summary(&rs);
        let nine = sum.find("2.9 ").unwrap();
        let ten = sum.find("2.10").unwrap();
        assert!(nine < ten, "sections sort numerically:\n{sum}");
        assert!(sum.ends_with("total: 3 cases, 1 passed, 1 failed, 1 skipped"));
        assert_eq!(totals(&rs).failed, 1);
    }

    #[test]
    fn junit_is_escaped_and_counted() {
        let rs = vec![
            result("3", "a \"quoted\" <name>", failure()),
            result("3", "b", Outcome::Pass),
        ];
        let x = junit(&rs);
        assert!(x.contains("tests=\"2\" failures=\"1\" skipped=\"0\""));
        assert!(x.contains("name=\"a &quot;quoted&quot; &lt;name&gt;\""));
        assert!(x.contains("&amp; &lt;y&gt;"));
        assert!(!x.contains("<y>"));
        assert_eq!(x.matches("<testcase").count(), 2);
        assert_eq!(x.matches("</testsuite>").count(), 1);
    }
}
