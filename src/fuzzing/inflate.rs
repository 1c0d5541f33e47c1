//! `inflate`: the read side of a compressed connection (`proto::deflate::Intake`), fed a DEFLATE
//! stream of arbitrary text (cut into arbitrary writes, each with its sync flush), or arbitrary
//! bytes, or a valid stream with bytes flipped, in arbitrary chunks of at most one read; and what
//! the server does when the stream breaks.

use arbitrary::Unstructured;

use crate::config::{INFLATE_CHUNK, MAX_LINE_BYTES, READ_CHUNK};
use crate::proto::deflate::{Deflater, Intake, Unit};
use crate::proto::line::{Frame, LineDecoder};
use crate::sim::Sim;

/// The lines the same bytes give uncompressed: what an intact stream must give.
fn model(text: &[u8]) -> Vec<Unit> {
    let mut d = LineDecoder::new(MAX_LINE_BYTES);
    let mut out = Vec::new();
    d.feed(text, |f| {
        out.push(match f {
            Frame::Line(l) => Unit::Line(l.to_vec()),
            Frame::TooLong => Unit::TooLong,
        })
    });
    out
}

/// Checks the intake for the stream the input describes.
///
/// Input layout: the first byte picks the stream: 0..=1 a valid stream of the text that follows,
/// 2 the same with a few bytes changed, 3 raw bytes; the second byte how much a run of the text is
/// repeated (so short inputs reach the line limit and expand a lot); then the text or bytes; what
/// is left cuts the text into writes and the stream into reads.
///
/// Checks: no panic; the intake never holds more than one read, one inflated chunk and one line
/// (whatever the bytes expand to); no line is over the limit; a valid stream gives exactly the
/// lines of its text, and never `BadDeflate`; after `BadDeflate` nothing more comes, whatever is
/// fed; and a server whose client sent such a stream answers with `BYE BAD_DEFLATE` and nothing
/// else, and closes the connection.
pub fn check_inflate(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mode = u.arbitrary::<u8>().unwrap_or(0) % 4;
    // Up to 4096 repeats of 16 bytes: past the line limit, and far more than the input.
    let repeat = usize::from(u.arbitrary::<u8>().unwrap_or(0)) * 16 + 1;
    let len = u.arbitrary_len::<u8>().unwrap_or(0).min(2048);
    let seed = u.bytes(len).unwrap_or_default().to_vec();

    // The text: the seed, its first 16 bytes repeated, then the seed again.
    let mut text = seed.clone();
    for _ in 0..repeat {
        text.extend_from_slice(&seed[..seed.len().min(16)]);
    }
    text.extend_from_slice(&seed);

    let mut stream = Vec::new();
    if mode == 3 {
        stream = seed;
    } else {
        let mut d = Deflater::new();
        let mut at = 0;
        while at < text.len() {
            let n = u
                .int_in_range(1..=text.len() - at)
                .unwrap_or(text.len() - at);
            d.write(&text[at..at + n], &mut stream);
            at += n;
        }
        if mode == 2 && !stream.is_empty() {
            for _ in 0..u.int_in_range(1..=4u8).unwrap_or(1) {
                let i = u.choose_index(stream.len()).unwrap_or(0);
                stream[i] ^= u.arbitrary::<u8>().unwrap_or(0xff).max(1);
            }
        }
    }

    let mut intake = Intake::new(MAX_LINE_BYTES);
    intake.start_inflate();
    let bound = READ_CHUNK + INFLATE_CHUNK + MAX_LINE_BYTES + 1;
    let mut got = Vec::new();
    let mut fed = 0;
    let mut broken = false;
    while fed < stream.len() {
        let n = u
            .int_in_range(1..=READ_CHUNK.min(stream.len() - fed))
            .unwrap_or(READ_CHUNK.min(stream.len() - fed));
        assert!(intake.wants_input());
        intake.feed(&stream[fed..fed + n]);
        fed += n;
        while let Some(unit) = intake.next_unit() {
            assert!(!broken, "a unit after BadDeflate: {unit:?}");
            assert!(
                intake.buffered() <= bound,
                "the intake holds {} bytes",
                intake.buffered()
            );
            if let Unit::Line(l) = &unit {
                assert!(l.len() <= MAX_LINE_BYTES, "a line of {} bytes", l.len());
            }
            broken |= unit == Unit::BadDeflate;
            got.push(unit);
        }
        assert!(intake.buffered() <= bound);
    }
    if broken {
        // Whatever comes next is not read.
        intake.feed(b"PING after\n");
        assert_eq!(intake.next_unit(), None);
    }
    if mode <= 1 {
        assert!(!broken, "a valid stream was refused");
        assert_eq!(got, model(&text), "the lines differ from the text's");
    }
    if broken {
        check_server_says_bye(&got);
    }
}

/// What the server does with the units: the lines before the break run as commands (the first
/// few: what they do is the core target's business); the break is answered with `BYE BAD_DEFLATE`
/// alone, and the connection closes.
fn check_server_says_bye(units: &[Unit]) {
    let mut sim = Sim::new();
    sim.connect("z");
    sim.output("z");
    for unit in units.iter().take(8) {
        match unit {
            Unit::Line(l) if !l.contains(&b'\r') => {
                let mut bytes = l.clone();
                bytes.push(b'\n');
                sim.send_bytes("z", &bytes);
            }
            _ => {}
        }
        if sim.is_closed("z") {
            return; // a QUIT among them
        }
    }
    sim.output("z");
    sim.bad_deflate("z");
    let said = sim.output("z");
    assert!(
        said.starts_with("BYE BAD_DEFLATE ") && said.ends_with('\n') && said.lines().count() == 1,
        "the server said {said:?}"
    );
    assert!(sim.is_closed("z"));
}
