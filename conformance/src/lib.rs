//! chatd-conformance: a black-box conformance suite for the chatd line protocol.
//!
//! The suite knows only an address. Its cases are data files under `cases/`, one file per spec
//! topic, each case naming the spec section it checks and quoting the sentence; the runner connects
//! named clients, sends lines, and matches what comes back against patterns that accept exactly what
//! the spec allows. See `README.md` for the case format.
//!
//! - [`template`]: the text of sends and patterns, with per-run unique names and captures.
//! - [`pattern`]: matching a received line against an expanded pattern.
//! - [`case`]: parsing case files into steps.
//! - [`conn`]: one blocking TCP or TLS connection, read line by line against a deadline.
//! - [`runner`]: running cases, one at a time, and judging each step.
//! - [`report`]: report lines, the per-section summary, JUnit XML.
//! - [`coverage`]: which commands and reply codes the cases exercise.
#![forbid(unsafe_code)]

pub mod case;
pub mod conn;
pub mod coverage;
pub mod pattern;
pub mod report;
pub mod runner;
pub mod template;

use std::path::PathBuf;

pub use case::{load_dir, Case, ParseError};
pub use conn::TlsSettings;
pub use runner::{run, CaseResult, Options, Outcome};

/// The directory of the bundled cases.
pub fn cases_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/cases"))
}

/// The bundled cases.
pub fn bundled_cases() -> Result<Vec<Case>, ParseError> {
    load_dir(&cases_dir())
}
