//! SIGHUP makes a running server read its certificate and key again: new connections get the new
//! certificate, and a broken replacement is refused with the old certificate kept in service.

mod client_support;

use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use chatd::client::conn::{Connector, Trust};
use chatd::tls::{generate_self_signed, TlsFiles};
use client_support::{Server, WAIT};

/// True if a TLS connection trusting only `ca` succeeds.
fn trusted_by(addr: &str, ca: &std::path::Path) -> bool {
    let connector = Connector::tls(addr, Trust::CaFile(ca)).unwrap();
    smol::block_on(connector.connect()).is_ok()
}

fn hup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

#[test]
fn sighup_swaps_the_certificate_and_keeps_it_when_the_new_one_is_broken() {
    let live = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (fa, _) = generate_self_signed(a.path()).unwrap();
    let (fb, _) = generate_self_signed(b.path()).unwrap();
    let files = TlsFiles {
        cert: live.path().join("cert.pem"),
        key: live.path().join("key.pem"),
    };
    fs::copy(&fa.cert, &files.cert).unwrap();
    fs::copy(&fa.key, &files.key).unwrap();

    let server = Server::start(live.path(), Some(&files));
    let addr = format!("localhost:{}", server.tls.unwrap().port());
    assert!(trusted_by(&addr, &fa.cert));
    assert!(!trusted_by(&addr, &fb.cert));

    fs::copy(&fb.cert, &files.cert).unwrap();
    fs::copy(&fb.key, &files.key).unwrap();
    hup(&server);
    // The signal is handled asynchronously: poll for the switch.
    let deadline = Instant::now() + WAIT;
    while !trusted_by(&addr, &fb.cert) {
        assert!(
            Instant::now() < deadline,
            "the certificate was not reloaded"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!trusted_by(&addr, &fa.cert));

    // A key that does not match: the reload fails, the server logs why and keeps certificate B.
    fs::copy(&fa.key, &files.key).unwrap();
    hup(&server);
    let deadline = Instant::now() + WAIT;
    while !server.log.lock().unwrap().contains("does not belong") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            server.log.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(trusted_by(&addr, &fb.cert));
}
