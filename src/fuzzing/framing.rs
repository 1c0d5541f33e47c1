//! `line_framing`: arbitrary bytes, cut into arbitrary chunks, through the [`LineDecoder`], compared
//! with a reference model of the framing rules that looks at the whole stream at once.

use arbitrary::Unstructured;

use crate::config::MAX_LINE_BYTES;
use crate::proto::line::{Frame, LineDecoder};

/// What the decoder should report for one line.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Line(Vec<u8>),
    TooLong,
}

/// The framing rules written as plainly as possible: split at every LF, remove one CR before it,
/// and call a line over-long when what remains is longer than `max`. An unfinished tail gives no
/// line, but is reported over-long as soon as it is certain to be (the decoder never waits for the
/// LF of a line it will refuse).
fn model(stream: &[u8], max: usize) -> Vec<Expected> {
    let strip = |l: &[u8]| l.strip_suffix(b"\r").unwrap_or(l).to_vec();
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    let tail = parts.pop().unwrap_or_default();
    for line in parts {
        let line = strip(line);
        out.push(if line.len() > max {
            Expected::TooLong
        } else {
            Expected::Line(line)
        });
    }
    if strip(tail).len() > max {
        out.push(Expected::TooLong);
    }
    out
}

/// Checks the decoder against `model` for the limit, stream and chunking the input describes.
///
/// Input layout: the first byte picks the limit (the real [`MAX_LINE_BYTES`] for 0xFF, else a small
/// one, so the limit paths are reached with short inputs), then a stream length is taken from the
/// end and the stream from the front; what is left decides where the stream is cut into chunks
/// (when it runs out, the rest is fed one byte at a time).
pub fn check_line_framing(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let max = match u.arbitrary::<u8>().unwrap_or(0) {
        0xFF => MAX_LINE_BYTES,
        b => usize::from(b % 24),
    };
    let len = u.arbitrary_len::<u8>().unwrap_or(0);
    let stream = u.bytes(len).unwrap_or_default();

    let mut decoder = LineDecoder::new(max);
    let mut got = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = u.int_in_range(1..=stream.len() - fed).unwrap_or(1);
        let chunk = &stream[fed..fed + n];
        fed += n;
        decoder.feed(chunk, |f| {
            got.push(match f {
                Frame::Line(l) => {
                    assert!(
                        l.len() <= max,
                        "line of {} bytes passed limit {max}",
                        l.len()
                    );
                    assert!(!l.contains(&b'\n'), "line holds an LF: {l:?}");
                    Expected::Line(l.to_vec())
                }
                Frame::TooLong => Expected::TooLong,
            })
        });
        assert!(
            decoder.buffered() <= max + 1,
            "decoder holds {} bytes with limit {max}",
            decoder.buffered()
        );
    }

    let want = model(stream, max);
    assert_eq!(got, want, "frames differ from the model (limit {max})");
    // A CR left at the end of a line must have been the first of two before the LF. The frames
    // match the LF-separated parts one to one (the model says so), so walk them together.
    for (frame, part) in got.iter().zip(stream.split(|&b| b == b'\n')) {
        if let Expected::Line(l) = frame {
            if l.ends_with(b"\r") {
                assert!(part.ends_with(b"\r\r"), "lone CR kept at the end of {l:?}");
            }
        }
    }
    // What is held is exactly the unfinished tail, unless that tail was refused.
    let tail = stream.rsplit(|&b| b == b'\n').next().unwrap_or_default();
    let refused = tail.strip_suffix(b"\r").unwrap_or(tail).len() > max;
    let held = if refused { 0 } else { tail.len() };
    assert_eq!(decoder.buffered(), held, "partial line has the wrong size");
    assert_eq!(decoder.has_partial(), held > 0);
}
