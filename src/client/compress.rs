//! `--compress`: the client asks for `COMPRESS DEFLATE` (spec 4.38) right after the greeting, and
//! then speaks DEFLATE both ways through [`Deflated`], a stream wrapper the rest of the client does
//! not see.
//!
//! What is written is compressed when the writer flushes (the batch and interactive clients flush
//! once per burst of lines), with one sync flush, so a command is never held back. What is read is
//! inflated into the reader's buffer, never more than it asks for at a time.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::Stream;
use crate::proto::deflate::{Deflater, Inflater};
use crate::proto::server_line::{parse, OkReply, ServerLine};

/// Bytes read from the server at a time while compressed.
const READ_BUF: usize = 16 * 1024;
/// Longest line the exchange before compression reads (HELLO, the COMPRESS answer).
const MAX_HANDSHAKE_LINE: usize = 8 * 1024;

/// A stream whose bytes are compressed both ways once [`negotiate`] got the server's OK; before,
/// and without it, bytes pass through. Bytes read during that exchange are given back first
/// (`replay`).
pub struct Deflated {
    inner: Box<dyn Stream>,
    /// Plain bytes to give the reader before anything else (the greeting read before COMPRESS).
    replay: Vec<u8>,
    replay_at: usize,
    on: Option<Box<(Deflater, Inflater)>>,
    /// Compressed bytes read and not yet inflated.
    raw: Vec<u8>,
    raw_at: usize,
    /// The inflater may hold more output than the last read took.
    more: bool,
    /// Plain bytes written since the last flush.
    pending: Vec<u8>,
    /// Compressed bytes not yet written to `inner`.
    out: Vec<u8>,
    out_at: usize,
}

impl Deflated {
    fn new(inner: Box<dyn Stream>) -> Deflated {
        Deflated {
            inner,
            replay: Vec::new(),
            replay_at: 0,
            on: None,
            raw: Vec::new(),
            raw_at: 0,
            more: false,
            pending: Vec::new(),
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// True once both directions are compressed.
    pub fn is_compressed(&self) -> bool {
        self.on.is_some()
    }
}

/// What came of asking for compression.
pub enum Negotiated {
    /// The server said `OK COMPRESS DEFLATE`.
    Compressed,
    /// The server refused (its sentence), or greeted with something else than HELLO; the
    /// connection goes on uncompressed.
    Refused(String),
}

/// Reads the greeting, asks for `COMPRESS DEFLATE` and reads its answer; returns the stream,
/// compressed or not, with the greeting still to be read from it.
pub async fn negotiate(inner: Box<dyn Stream>) -> io::Result<(Deflated, Negotiated)> {
    let mut s = Deflated::new(inner);
    let mut buf: Vec<u8> = Vec::new();
    let hello = read_line(&mut s.inner, &mut buf).await?;
    s.replay.extend_from_slice(&hello);
    if !matches!(
        parse(&String::from_utf8_lossy(&hello)),
        ServerLine::Hello { .. }
    ) {
        // BYE SERVER_FULL, say: the client shows it as it is.
        s.replay.extend_from_slice(&buf);
        return Ok((s, Negotiated::Refused("the server did not greet".into())));
    }
    s.inner.write_all(b"COMPRESS DEFLATE\n").await?;
    s.inner.flush().await?;
    // Nothing comes before the answer but pushes the server sends on its own (there are none
    // before a login, but a client should not rely on it): they are given back too.
    loop {
        let line = read_line(&mut s.inner, &mut buf).await?;
        let text = String::from_utf8_lossy(&line).into_owned();
        match parse(&text) {
            ServerLine::Ok {
                reply: OkReply::Compress,
                ..
            } => {
                s.on = Some(Box::new((Deflater::new(), Inflater::new())));
                // What followed the OK in the same read is compressed already.
                s.raw = buf;
                s.more = false;
                return Ok((s, Negotiated::Compressed));
            }
            ServerLine::Fail { text, .. } => {
                s.replay.extend_from_slice(&buf);
                return Ok((s, Negotiated::Refused(text.to_owned())));
            }
            _ => s.replay.extend_from_slice(&line),
        }
    }
}

/// One line, LF included, from `inner`; `buf` keeps what was read after it.
async fn read_line(inner: &mut Box<dyn Stream>, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            return Ok(buf.drain(..=i).collect());
        }
        if buf.len() > MAX_HANDSHAKE_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server sent a line too long before compression",
            ));
        }
        let mut chunk = [0u8; 1024];
        let n = inner.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl AsyncRead for Deflated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replay_at < this.replay.len() {
            let n = buf.len().min(this.replay.len() - this.replay_at);
            buf[..n].copy_from_slice(&this.replay[this.replay_at..this.replay_at + n]);
            this.replay_at += n;
            if this.replay_at == this.replay.len() {
                this.replay = Vec::new();
                this.replay_at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        let Some(on) = &mut this.on else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let input = &this.raw[this.raw_at.min(this.raw.len())..];
            if !input.is_empty() || this.more {
                let done = on.1.inflate(input, buf);
                this.raw_at += done.taken;
                this.more = done.made == buf.len();
                if done.made > 0 {
                    return Poll::Ready(Ok(done.made));
                }
                if done.bad {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server's compressed stream does not inflate",
                    )));
                }
                if done.taken > 0 || this.raw_at < this.raw.len() {
                    continue;
                }
            }
            this.raw.resize(READ_BUF, 0);
            this.raw_at = 0;
            this.more = false;
            let n = match Pin::new(&mut this.inner).poll_read(cx, &mut this.raw) {
                Poll::Ready(Ok(n)) => n,
                other => {
                    this.raw.clear();
                    return other;
                }
            };
            this.raw.truncate(n);
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
        }
    }
}

impl Deflated {
    /// Writes the compressed bytes waiting for `inner`.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Deflated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.on.is_none() {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        // Compressed at the next flush, as one block; a writer that writes much without
        // flushing has it compressed in pieces.
        if self.pending.len() >= READ_BUF {
            ready!(self.as_mut().poll_flush(cx))?;
        }
        self.pending.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(on) = &mut this.on {
            if !this.pending.is_empty() && this.out_at >= this.out.len() {
                this.out.clear();
                this.out_at = 0;
                on.0.write(&this.pending, &mut this.out);
                this.pending.clear();
            }
        }
        ready!(this.poll_out(cx))?;
        if !this.pending.is_empty() {
            // Written meanwhile: compress it too.
            return self.poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's side of the exchange, played by hand over a socket pair.
    #[test]
    fn negotiates_then_speaks_deflate_both_ways() {
        smol::block_on(async {
            let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = smol::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(b"HELLO chatd 0.1.0 hi\n").await.unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 64];
                while !got.ends_with(b"\n") {
                    let n = s.read(&mut b).await.unwrap();
                    got.extend_from_slice(&b[..n]);
                }
                assert_eq!(got, b"COMPRESS DEFLATE\n");
                let mut d = Deflater::new();
                let mut wire = b"OK COMPRESS DEFLATE\n".to_vec();
                d.write(b"PONG x\nOK PING\n", &mut wire);
                s.write_all(&wire).await.unwrap();
                let mut i = Inflater::new();
                let mut plain = Vec::new();
                while !plain.ends_with(b"QUIT\n") {
                    let n = s.read(&mut b).await.unwrap();
                    let mut out = [0u8; 256];
                    let done = i.inflate(&b[..n], &mut out);
                    assert!(!done.bad);
                    plain.extend_from_slice(&out[..done.made]);
                }
                assert_eq!(plain, b"PING x\nQUIT\n");
            });
            let tcp = async_net::TcpStream::connect(addr).await.unwrap();
            let (mut s, outcome) = negotiate(Box::new(tcp)).await.unwrap();
            assert!(matches!(outcome, Negotiated::Compressed));
            assert!(s.is_compressed());
            s.write_all(b"PING x\n").await.unwrap();
            s.flush().await.unwrap();
            let mut text = Vec::new();
            let mut b = [0u8; 7];
            while !text.ends_with(b"OK PING\n") {
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0);
                text.extend_from_slice(&b[..n]);
            }
            assert_eq!(text, b"HELLO chatd 0.1.0 hi\nPONG x\nOK PING\n");
            s.write_all(b"QUIT\n").await.unwrap();
            s.flush().await.unwrap();
            server.await;
        });
    }
}
