//! Replays saved fuzz inputs as ordinary tests: the minimized inputs that once broke a check
//! (`fuzz/regressions/<target>/`) and the checked-in seed corpus (`fuzz/seeds/<target>/`), each
//! through the same function its fuzz target calls (`chatd::fuzzing`). A bug a fuzzer found stays
//! fixed without anyone running a fuzzer, on the stable toolchain.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

use chatd::fuzzing::{Check, TARGETS};

/// Every file under `fuzz/<dir>/<target>/`, by target, sorted. A folder that names no target is an
/// error, so a misspelt one cannot silently go unreplayed.
fn inputs(dir: &str) -> Vec<(&'static str, Check, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(&root) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("readable directory").path();
        let folder = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if folder.starts_with('.') {
            continue;
        }
        let Some((name, check)) = TARGETS.iter().find(|(n, _)| *n == folder) else {
            panic!("{} names no fuzz target", path.display());
        };
        let mut files: Vec<PathBuf> = fs::read_dir(&path)
            .expect("readable directory")
            .map(|e| e.expect("readable entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|f| (*name, *check, f)));
    }
    out
}

/// Runs each input, collecting every failure instead of stopping at the first.
fn replay(dir: &str) -> usize {
    let inputs = inputs(dir);
    let mut failed = Vec::new();
    for (name, check, path) in &inputs {
        let data = fs::read(path).expect("readable input");
        if panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(format!("{name}: {}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs fail:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
    inputs.len()
}

#[test]
fn minimized_crashes_stay_fixed() {
    replay("regressions");
}

#[test]
fn seed_corpus_passes_every_check() {
    let n = replay("seeds");
    // Every target has seeds; an empty corpus would make this test prove nothing.
    for (name, _) in TARGETS {
        assert!(
            inputs("seeds").iter().any(|(n, _, _)| n == name),
            "no seeds for {name}"
        );
    }
    assert!(n > 0);
}
