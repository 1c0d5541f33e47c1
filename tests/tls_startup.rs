//! A TLS listener that cannot be set up stops chatd at start with a clear message on stderr and a
//! non-zero exit status, never a panic and never a server running without the TLS it was asked for.

mod client_support;

use std::fs;
use std::path::Path;

use chatd::tls::generate_self_signed;
use client_support::{run_chatd, Run};

fn start_with(dir: &Path, cert: &Path, key: &Path) -> Run {
    let db = dir.join("chatd.redb");
    run_chatd(
        &[
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "",
    )
}

fn assert_refused(run: &Run, expected: &str) {
    assert_ne!(
        run.code(),
        0,
        "chatd started anyway; stderr:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(expected),
        "stderr lacks {expected:?}:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(!run.stderr.contains("listening on"), "{}", run.stderr);
}

#[test]
fn a_missing_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = generate_self_signed(dir.path()).unwrap();
    let missing = dir.path().join("no-such-cert.pem");
    let run = start_with(dir.path(), &missing, &files.key);
    assert_refused(&run, &format!("cannot read {}", missing.display()));
}

#[test]
fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (fa, _) = generate_self_signed(a.path()).unwrap();
    let (fb, _) = generate_self_signed(b.path()).unwrap();
    let run = start_with(a.path(), &fa.cert, &fb.key);
    assert_refused(
        &run,
        &format!(
            "the private key in {} does not belong to the certificate in {}",
            fb.key.display(),
            fa.cert.display()
        ),
    );
}

#[test]
fn files_without_a_key_or_a_certificate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = generate_self_signed(dir.path()).unwrap();
    let run = start_with(dir.path(), &files.cert, &files.cert);
    assert_refused(&run, "holds no private key");
    let run = start_with(dir.path(), &files.key, &files.key);
    assert_refused(&run, "holds no certificate");
}

#[test]
fn generate_refuses_to_replace_half_a_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = generate_self_signed(dir.path()).unwrap();
    fs::remove_file(&files.key).unwrap();
    let db = dir.path().join("chatd.redb");
    let run = run_chatd(
        &[
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-generate",
        ],
        "",
    );
    assert_refused(&run, "chatd-key.pem does not");
    // The certificate that was there is untouched.
    assert!(files.cert.exists());
}
