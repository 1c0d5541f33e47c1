//! The DEFLATE layer of `COMPRESS DEFLATE` (spec 4.38, 8.4): raw DEFLATE (RFC 1951) in both
//! directions, with no IO of its own.
//!
//! - [`Deflater`] compresses what one write sends and ends it with a sync flush, so the peer can
//!   read every line of the write at once: compression never holds a line back.
//! - [`Inflater`] inflates into a buffer the caller gives, so a few bytes that expand a
//!   thousandfold (a decompression bomb) never take more memory than that buffer.
//! - [`Intake`] is a connection's read side: bytes as read from the socket in, lines out, plain
//!   until [`Intake::start_inflate`] and inflated after it. It holds at most one read of raw bytes,
//!   one [`INFLATE_CHUNK`] of inflated bytes and one line, whatever it is fed; a bad stream is
//!   reported once ([`Unit::BadDeflate`]) and nothing is read after it.
//!
//! The server, the bundled client and the conformance runner share this module, so the two ends
//! of a compressed connection run the same code.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::line::{Frame, LineDecoder};
use crate::config::{DEFLATE_LEVEL, INFLATE_CHUNK};

/// The mechanism's name, as `COMPRESS DEFLATE` and `OK COMPRESS DEFLATE` spell it.
pub const MECHANISM: &str = "DEFLATE";

/// The compressing half: one per direction that sends.
pub struct Deflater {
    c: Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("in", &self.c.total_in())
            .field("out", &self.c.total_out())
            .finish()
    }
}

impl Default for Deflater {
    fn default() -> Deflater {
        Deflater::new()
    }
}

impl Deflater {
    /// A raw DEFLATE stream (no zlib header) at [`DEFLATE_LEVEL`].
    pub fn new() -> Deflater {
        Deflater {
            c: Compress::new(Compression::new(DEFLATE_LEVEL), false),
        }
    }

    /// Appends to `out` the compressed form of `input`, ending with a sync flush: everything the
    /// peer needs to inflate all of `input` now.
    pub fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut input = input;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(input.len() / 2 + 256);
            }
            let (before_in, before_out) = (self.c.total_in(), self.c.total_out());
            let spare = out.capacity() - out.len();
            let start = out.len();
            out.resize(start + spare, 0);
            let status = self
                .c
                .compress(input, &mut out[start..], FlushCompress::Sync);
            let produced = (self.c.total_out() - before_out) as usize;
            out.truncate(start + produced);
            input = &input[(self.c.total_in() - before_in) as usize..];
            // Compressing into memory cannot fail; treat a failure like the end of the work.
            let Ok(status) = status else { return };
            // The flush is complete when the input is used and the output was not filled: with
            // room left over, nothing of the flush is pending.
            let filled = start + produced == start + spare;
            if input.is_empty() && !filled || status == Status::StreamEnd {
                return;
            }
        }
    }

    /// Bytes taken in and sent out so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.c.total_in(), self.c.total_out())
    }
}

/// The peer's DEFLATE stream is not valid: the connection cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadDeflate;

/// The inflating half: one per direction that receives.
pub struct Inflater {
    d: Decompress,
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("in", &self.d.total_in())
            .field("out", &self.d.total_out())
            .finish()
    }
}

impl Default for Inflater {
    fn default() -> Inflater {
        Inflater::new()
    }
}

/// What one [`Inflater::inflate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflated {
    /// Bytes of the input taken.
    pub taken: usize,
    /// Bytes of the output filled: valid even when the stream turned out bad after them.
    pub made: usize,
    /// The stream is not valid past what was made: nothing more can be inflated.
    pub bad: bool,
}

impl Inflater {
    /// For a raw DEFLATE stream (no zlib header).
    pub fn new() -> Inflater {
        Inflater {
            d: Decompress::new(false),
            ended: false,
        }
    }

    /// Inflates from `input` into `out`. It fills at most `out`, and may take more input than the
    /// output it gave (it keeps the rest inside): while it fills `out` completely, call it again,
    /// with the rest of the input or with none, before reading more. A stream that ended (a final
    /// block) takes no more bytes: any that follow are a bad stream.
    pub fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Inflated {
        if out.is_empty() || (self.ended && input.is_empty()) {
            return Inflated {
                taken: 0,
                made: 0,
                bad: false,
            };
        }
        if self.ended {
            return Inflated {
                taken: 0,
                made: 0,
                bad: true,
            };
        }
        let (before_in, before_out) = (self.d.total_in(), self.d.total_out());
        let status = self.d.decompress(input, out, FlushDecompress::None);
        let taken = (self.d.total_in() - before_in) as usize;
        let made = (self.d.total_out() - before_out) as usize;
        let bad = match status {
            Err(_) => true,
            Ok(Status::StreamEnd) => {
                self.ended = true;
                taken < input.len()
            }
            Ok(_) => false,
        };
        Inflated { taken, made, bad }
    }
}

/// What a connection's [`Intake`] gives, one unit at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Unit {
    /// A complete line, without its terminator (not yet checked as UTF-8).
    Line(Vec<u8>),
    /// A line passed the length limit and was discarded.
    TooLong,
    /// The DEFLATE stream is not valid; nothing more comes from this intake.
    BadDeflate,
}

/// A connection's read side, from socket bytes to lines; see the module documentation.
#[derive(Debug)]
pub struct Intake {
    decoder: LineDecoder,
    /// Bytes read from the socket and not yet used (plain, or compressed once inflating).
    raw: Vec<u8>,
    raw_at: usize,
    /// Made at [`Intake::start_inflate`]: most connections never compress, and each one's task
    /// holds its intake for as long as it lives.
    inflating: Option<Box<Inflating>>,
    broken: bool,
}

/// What an [`Intake`] holds once it inflates.
#[derive(Debug, Default)]
struct Inflating {
    inflater: Inflater,
    /// Inflated bytes not yet framed.
    plain: Vec<u8>,
    plain_at: usize,
    /// The last inflation filled its buffer: the inflater may hold more output.
    more: bool,
    /// The stream went bad after what `plain` holds.
    bad_after: bool,
}

impl Inflating {
    /// Everything inflated was framed, and the inflater holds nothing more.
    fn used(&self) -> bool {
        self.plain_at >= self.plain.len() && !self.more && !self.bad_after
    }
}

impl Intake {
    /// An intake whose lines have at most `max_line` bytes.
    pub fn new(max_line: usize) -> Intake {
        Intake {
            decoder: LineDecoder::new(max_line),
            raw: Vec::new(),
            raw_at: 0,
            inflating: None,
            broken: false,
        }
    }

    /// True when everything fed has been used: read the socket and [`Intake::feed`] what came.
    pub fn wants_input(&self) -> bool {
        self.broken
            || (self.raw_at >= self.raw.len() && self.inflating.as_ref().is_none_or(|i| i.used()))
    }

    /// Takes bytes read from the socket. Call only when [`Intake::wants_input`]: an intake holds
    /// one read at a time.
    pub fn feed(&mut self, bytes: &[u8]) {
        debug_assert!(self.wants_input(), "fed before the last read was used");
        if self.broken {
            return;
        }
        self.raw.clear();
        self.raw.extend_from_slice(bytes);
        self.raw_at = 0;
    }

    /// From now on the bytes are a DEFLATE stream, starting with the first byte after the last
    /// line given. Nothing changes if it already inflates.
    pub fn start_inflate(&mut self) {
        if self.inflating.is_none() && !self.broken {
            self.inflating = Some(Box::default());
        }
    }

    /// True once [`Intake::start_inflate`] was called.
    pub fn inflating(&self) -> bool {
        self.inflating.is_some()
    }

    /// Gives back the memory an idle intake does not need (its buffers; the inflater's window
    /// stays, since the stream goes on).
    #[inline]
    pub fn shrink(&mut self) {
        // Most waits find nothing to give back (a connection that only receives): no call then.
        if self.raw.capacity() == 0
            && self
                .inflating
                .as_ref()
                .is_none_or(|i| i.plain.capacity() == 0)
        {
            return;
        }
        if self.wants_input() {
            self.raw = Vec::new();
            self.raw_at = 0;
            if let Some(i) = &mut self.inflating {
                i.plain = Vec::new();
                i.plain_at = 0;
            }
        }
    }

    /// Bytes the intake holds now, its inflater's state aside: at most one read, one
    /// [`INFLATE_CHUNK`] and one line.
    pub fn buffered(&self) -> usize {
        self.raw.len()
            + self.inflating.as_ref().map_or(0, |i| i.plain.len())
            + self.decoder.buffered()
    }

    /// The next unit; `None` when it needs more bytes.
    #[inline]
    pub fn next_unit(&mut self) -> Option<Unit> {
        // A connection that only receives asks this at every wake-up and has read nothing: it
        // learns so without a call.
        if self.broken || (self.inflating.is_none() && self.raw_at >= self.raw.len()) {
            return None;
        }
        self.next_unit_read()
    }

    /// [`Intake::next_unit`] when bytes were read, or may wait in the inflater.
    fn next_unit_read(&mut self) -> Option<Unit> {
        loop {
            let mut unit = None;
            let mut take = |f: Frame<'_>| {
                unit = Some(match f {
                    Frame::Line(l) => Unit::Line(l.to_vec()),
                    Frame::TooLong => Unit::TooLong,
                });
                false
            };
            let Some(inf) = &mut self.inflating else {
                let data = &self.raw[self.raw_at.min(self.raw.len())..];
                if data.is_empty() {
                    return None;
                }
                self.raw_at += self.decoder.feed_until(data, &mut take);
                if unit.is_some() {
                    return unit;
                }
                continue;
            };
            let data = &inf.plain[inf.plain_at.min(inf.plain.len())..];
            if !data.is_empty() {
                inf.plain_at += self.decoder.feed_until(data, &mut take);
                if unit.is_some() {
                    return unit;
                }
                continue;
            }
            if inf.bad_after {
                return self.broke();
            }
            let input = &self.raw[self.raw_at.min(self.raw.len())..];
            if input.is_empty() && !inf.more {
                return None;
            }
            inf.plain.resize(INFLATE_CHUNK, 0);
            let done = inf.inflater.inflate(input, &mut inf.plain);
            self.raw_at += done.taken;
            inf.plain.truncate(done.made);
            inf.plain_at = 0;
            inf.more = done.made == INFLATE_CHUNK;
            inf.bad_after = done.bad;
            if !done.bad && done.taken == 0 && done.made == 0 && !input.is_empty() {
                // Nothing moved with input left and room to fill: the stream cannot make
                // progress, which a valid one always does.
                inf.bad_after = true;
            }
        }
    }

    fn broke(&mut self) -> Option<Unit> {
        self.broken = true;
        self.raw = Vec::new();
        self.inflating = None;
        Some(Unit::BadDeflate)
    }
}

/// True when `line` is a `COMPRESS` command (any arguments, any label): the reader of a
/// connection must know its answer before it reads the bytes after it.
pub fn is_compress_line(line: &[u8]) -> bool {
    // Every line read passes here. Most are not COMPRESS, which their command word (the first
    // word, or the second after a label; words are split at spaces as `split_head` splits them)
    // tells without checking the whole line's UTF-8 or parsing its head.
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let verb = match words.next() {
        Some(label) if label.starts_with(b"@") => words.next(),
        first => first,
    };
    if !verb
        .is_some_and(|v| v.eq_ignore_ascii_case(super::command::Verb::Compress.name().as_bytes()))
    {
        return false;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    matches!(
        super::command::split_head(text),
        Ok(Some(head)) if head.verb == super::command::Verb::Compress
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(intake: &mut Intake) -> Vec<Unit> {
        std::iter::from_fn(|| intake.next_unit()).collect()
    }

    fn line(s: &str) -> Unit {
        Unit::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn each_write_inflates_completely_on_its_own() {
        let mut d = Deflater::new();
        let mut i = Inflater::new();
        let mut buf = [0u8; 256];
        for msg in ["OK LOGIN alice\n", "MESSAGE 1 x\n", "MESSAGE 1 x\n"] {
            let mut wire = Vec::new();
            d.write(msg.as_bytes(), &mut wire);
            assert!(
                wire.ends_with(&[0, 0, 0xff, 0xff]),
                "a sync flush ends each write"
            );
            let done = i.inflate(&wire, &mut buf);
            assert_eq!(done.taken, wire.len());
            assert!(!done.bad);
            assert_eq!(&buf[..done.made], msg.as_bytes());
        }
        // Repeated text costs little: the window remembers it.
        let mut wire = Vec::new();
        d.write("MESSAGE 1 x\n".repeat(100).as_bytes(), &mut wire);
        assert!(wire.len() < 40, "{}", wire.len());
    }

    #[test]
    fn a_large_write_comes_out_whole() {
        let mut d = Deflater::new();
        let text: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut wire = Vec::new();
        d.write(&text, &mut wire);
        let mut i = Inflater::new();
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        let mut input = &wire[..];
        loop {
            let done = i.inflate(input, &mut buf);
            assert!(!done.bad);
            input = &input[done.taken..];
            out.extend_from_slice(&buf[..done.made]);
            if input.is_empty() && done.made < buf.len() {
                break;
            }
        }
        assert_eq!(out, text);
    }

    #[test]
    fn the_intake_switches_after_the_line_that_asks() {
        let mut d = Deflater::new();
        let mut read = b"PING a\r\nCOMPRESS DEFLATE\n".to_vec();
        d.write(b"PING b\nPING c\n", &mut read);
        let mut intake = Intake::new(4096);
        intake.feed(&read);
        assert_eq!(intake.next_unit(), Some(line("PING a")));
        assert_eq!(intake.next_unit(), Some(line("COMPRESS DEFLATE")));
        intake.start_inflate();
        assert_eq!(units(&mut intake), [line("PING b"), line("PING c")]);
        assert!(intake.wants_input());
        // Byte by byte works as well.
        let mut more = Vec::new();
        d.write(b"PING d\n", &mut more);
        for b in more {
            intake.feed(&[b]);
            for u in units(&mut intake) {
                assert_eq!(u, line("PING d"));
            }
        }
    }

    /// A few kilobytes that inflate to many megabytes never take more than the intake's
    /// bounds: the lines come out one at a time, and an over-long one is discarded as it streams.
    #[test]
    fn a_bomb_expands_chunk_by_chunk() {
        let mut d = Deflater::new();
        let mut wire = Vec::new();
        let zeros = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            d.write(&zeros, &mut wire);
        }
        d.write(b"\nPING\n", &mut wire);
        assert!(wire.len() < 256 * 1024, "{}", wire.len());
        let mut intake = Intake::new(4096);
        intake.start_inflate();
        let mut got = Vec::new();
        for chunk in wire.chunks(512) {
            intake.feed(chunk);
            while let Some(u) = intake.next_unit() {
                assert!(intake.buffered() <= 512 + INFLATE_CHUNK + 4097);
                got.push(u);
            }
            assert!(intake.buffered() <= 512 + INFLATE_CHUNK + 4097);
        }
        assert_eq!(got, [Unit::TooLong, line("PING")]);
    }

    #[test]
    fn a_bad_stream_is_reported_once_and_ends_the_intake() {
        let mut d = Deflater::new();
        let mut wire = Vec::new();
        d.write(b"PING 1\n", &mut wire);
        wire.extend_from_slice(&[0xff; 16]);
        let mut intake = Intake::new(4096);
        intake.start_inflate();
        intake.feed(&wire);
        assert_eq!(units(&mut intake), [line("PING 1"), Unit::BadDeflate]);
        assert!(intake.wants_input());
        intake.feed(b"PING 2\n");
        assert_eq!(intake.next_unit(), None);
    }

    #[test]
    fn bytes_after_the_final_block_are_a_bad_stream() {
        let mut c = Compress::new(Compression::default(), false);
        let mut wire = vec![0u8; 64];
        c.compress(b"PING\n", &mut wire, FlushCompress::Finish)
            .unwrap();
        wire.truncate(c.total_out() as usize);
        wire.extend_from_slice(b"PING\n");
        let mut intake = Intake::new(4096);
        intake.start_inflate();
        intake.feed(&wire);
        assert_eq!(units(&mut intake), [line("PING"), Unit::BadDeflate]);
    }

    #[test]
    fn compress_lines_are_recognised_by_their_command() {
        assert!(is_compress_line(b"COMPRESS DEFLATE"));
        assert!(is_compress_line(b"  @x compress   gzip"));
        assert!(is_compress_line(b"COMPRESS"));
        assert!(!is_compress_line(b"MSG bob COMPRESS DEFLATE"));
        assert!(!is_compress_line(b"COMPRESSX"));
        assert!(!is_compress_line(b"\xffCOMPRESS"));
        assert!(!is_compress_line(b"COMPRESS DEFLATE \xff"));
        assert!(!is_compress_line(b"@x"));
        assert!(!is_compress_line(b""));
        assert!(!is_compress_line(b"@x MSG bob hi"));
        assert!(!is_compress_line(b"@a,b COMPRESS DEFLATE"));
    }
}
