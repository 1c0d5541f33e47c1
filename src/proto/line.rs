//! Line framing: UTF-8 text lines terminated by LF, with a CR before the LF removed.
//!
//! The decoder never holds more than [`MAX_LINE_BYTES`](crate::config::MAX_LINE_BYTES) plus one byte
//! of a line. When a line grows past the limit it reports [`Frame::TooLong`] once, then discards
//! everything up to and including the next LF, so an over-long line costs no memory and the next line
//! is read normally.

/// One unit of input found by the [`LineDecoder`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its LF and without a CR just before the LF. Not yet checked as UTF-8.
    Line(&'a [u8]),
    /// A line exceeded the limit; its bytes up to the next LF are discarded.
    TooLong,
}

/// Splits a byte stream into [`Frame`]s.
#[derive(Debug)]
pub struct LineDecoder {
    max: usize,
    /// Bytes of the current, unfinished line. Empty (and unallocated) between lines.
    partial: Vec<u8>,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
}

impl LineDecoder {
    /// A decoder that accepts lines of at most `max` bytes (terminator not counted).
    pub fn new(max: usize) -> LineDecoder {
        LineDecoder {
            max,
            partial: Vec::new(),
            discarding: false,
        }
    }

    /// Feeds `data` and calls `on_frame` for each frame completed by it, in order.
    pub fn feed(&mut self, data: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        self.feed_until(data, |f| {
            on_frame(f);
            true
        });
    }

    /// Like [`LineDecoder::feed`], but stops right after a frame for which `on_frame` returns
    /// false; returns how many bytes of `data` were taken (all of them unless it stopped). The
    /// bytes not taken are the caller's to feed later, or to treat otherwise: after a line that
    /// changes how the stream is read (COMPRESS), what follows it is compressed.
    pub fn feed_until(
        &mut self,
        data: &[u8],
        mut on_frame: impl FnMut(Frame<'_>) -> bool,
    ) -> usize {
        let total = data.len();
        let mut data = data;
        while !data.is_empty() {
            let newline = memchr::memchr(b'\n', data);
            if self.discarding {
                match newline {
                    Some(i) => {
                        self.discarding = false;
                        data = &data[i + 1..];
                        continue;
                    }
                    None => return total,
                }
            }
            match newline {
                Some(i) => {
                    let (head, rest) = (&data[..i], &data[i + 1..]);
                    data = rest;
                    let go_on = if self.partial.is_empty() {
                        self.emit(head, &mut on_frame)
                    } else {
                        let mut line = std::mem::take(&mut self.partial);
                        line.extend_from_slice(head);
                        self.emit(&line, &mut on_frame)
                    };
                    if !go_on {
                        return total - data.len();
                    }
                }
                None => {
                    // One byte more than the limit may still be the CR of a CRLF. Decide before
                    // copying, so a huge chunk is never buffered.
                    let len = self.partial.len() + data.len();
                    let over =
                        len > self.max + 1 || (len == self.max + 1 && data.last() != Some(&b'\r'));
                    if !over {
                        self.partial.extend_from_slice(data);
                        return total;
                    }
                    self.partial = Vec::new();
                    self.discarding = true;
                    // The rest of this chunk belongs to the discarded line: all of it is taken.
                    on_frame(Frame::TooLong);
                    return total;
                }
            }
        }
        total
    }

    /// True when part of a line has been received but not its end.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Bytes of the unfinished line held now; never more than the limit plus one (a CR that may
    /// turn out to end the line).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    fn emit(&self, line: &[u8], on_frame: &mut impl FnMut(Frame<'_>) -> bool) -> bool {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max {
            on_frame(Frame::TooLong)
        } else {
            on_frame(Frame::Line(line))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ()>> {
        let mut d = LineDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, |f| {
                out.push(match f {
                    Frame::Line(l) => Ok(l.to_vec()),
                    Frame::TooLong => Err(()),
                })
            });
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_one_cr() {
        let got = frames(10, &[b"ab\ncd\r\n\r\r\n", b"e"]);
        assert_eq!(
            got,
            vec![Ok(b"ab".to_vec()), Ok(b"cd".to_vec()), Ok(b"\r".to_vec())]
        );
    }

    #[test]
    fn joins_lines_split_across_chunks() {
        let got = frames(10, &[b"he", b"ll", b"o\r", b"\nx\n"]);
        assert_eq!(got, vec![Ok(b"hello".to_vec()), Ok(b"x".to_vec())]);
    }

    #[test]
    fn limit_is_exact_with_lf_and_crlf() {
        let ok = [b'a'; 10];
        let long = [b'a'; 11];
        let mut crlf = ok.to_vec();
        crlf.extend_from_slice(b"\r\n");
        let mut lf = ok.to_vec();
        lf.push(b'\n');
        let mut too_long = long.to_vec();
        too_long.push(b'\n');
        assert_eq!(frames(10, &[&lf]), vec![Ok(ok.to_vec())]);
        assert_eq!(frames(10, &[&crlf]), vec![Ok(ok.to_vec())]);
        // Byte by byte, so the partial-line check is exercised too.
        let bytes: Vec<&[u8]> = crlf.chunks(1).collect();
        assert_eq!(frames(10, &bytes), vec![Ok(ok.to_vec())]);
        assert_eq!(
            frames(10, &[&too_long, b"next\n"]),
            vec![Err(()), Ok(b"next".to_vec())]
        );
    }

    #[test]
    fn over_long_line_is_reported_once_and_discarded_without_buffering() {
        let mut d = LineDecoder::new(8);
        let mut n = 0;
        for _ in 0..1000 {
            d.feed(&[b'x'; 100], |f| {
                assert_eq!(f, Frame::TooLong);
                n += 1
            });
            assert!(d.partial.capacity() <= 200);
        }
        assert_eq!(n, 1);
        let mut got = Vec::new();
        d.feed(b"tail\nok\n", |f| got.push(format!("{f:?}")));
        assert_eq!(got, vec![format!("{:?}", Frame::Line(b"ok"))]);
    }

    #[test]
    fn feeding_can_stop_after_a_frame() {
        let mut d = LineDecoder::new(8);
        let mut got = Vec::new();
        let data = b"a\r\nstop\nafter\n";
        let taken = d.feed_until(data, |f| {
            got.push(format!("{f:?}"));
            f != Frame::Line(b"stop")
        });
        assert_eq!(taken, 8);
        assert_eq!(got.len(), 2);
        assert_eq!(&data[taken..], b"after\n");
        // A stop after a line that was split across chunks counts only this chunk's bytes.
        let mut d = LineDecoder::new(8);
        assert_eq!(d.feed_until(b"st", |_| false), 2);
        assert_eq!(d.feed_until(b"op\nxy", |_| false), 3);
    }

    #[test]
    fn partial_line_is_visible() {
        let mut d = LineDecoder::new(8);
        d.feed(b"abc", |_| panic!("no frame expected"));
        assert!(d.has_partial());
    }
}
