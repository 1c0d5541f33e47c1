//! One client connection: plain TCP or TLS, blocking, read line by line against a deadline.
//!
//! The suite never sleeps: every wait is a blocking read whose socket timeout is the time left until
//! the step's deadline. Lines are kept as bytes (the server might send invalid UTF-8, and a case must
//! be able to say so) and the LF is removed; a CR before it is kept, so a server that ends its lines
//! in CRLF fails the cases instead of being silently accepted.
//!
//! After `COMPRESS DEFLATE` (spec 4.25) a case switches the connection to DEFLATE
//! ([`Conn::start_deflate`]): lines are then compressed with a sync flush per send, and what the
//! server sends is inflated before it is split into lines, with the same code the server and the
//! bundled client use (`chatd::proto::deflate`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use chatd::proto::deflate::{Deflater, Inflater};

/// How to speak TLS to the server: the trusted CA and the name to verify.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsSettings {
    /// Trusts the certificates in the PEM file `ca` and verifies the server as `server_name`.
    pub fn new(ca: &Path, server_name: &str) -> Result<TlsSettings, String> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate in {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("no certificate in {}", ca.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("bad TLS server name {server_name:?}: {e}"))?;
        Ok(TlsSettings {
            config: Arc::new(config),
            server_name,
        })
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    fn sock(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => &s.sock,
        }
    }
}

/// Why no line could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The deadline passed first.
    Timeout,
    /// The server closed the connection; `partial` holds bytes received after the last LF.
    Closed { partial: Vec<u8> },
    /// Any other socket or TLS error.
    Io(io::Error),
}

/// A connection to the server.
pub struct Conn {
    t: Transport,
    /// Bytes received (inflated, once compressed) after the last line taken.
    buf: Vec<u8>,
    eof: bool,
    /// The first line received that is not a well-formed server line (spec 2.9), if any.
    malformed: Option<Vec<u8>>,
    /// Both directions' DEFLATE state, after `COMPRESS DEFLATE`.
    deflate: Option<Box<(Deflater, Inflater)>>,
}

/// True when `line` (its LF removed) is one of the server lines of spec 2.9, as the chatd codec
/// parses them: UTF-8, a known first token, the fields that kind of line has. Every line the server
/// sends is checked, whatever the case expects of it.
fn well_formed(line: &[u8]) -> bool {
    // A CR left before the LF is the case's business (it fails as a CRLF terminator).
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    line.ends_with(b"\r")
        || !matches!(
            chatd::proto::server_line::parse(text),
            chatd::proto::server_line::ServerLine::Other(_)
        )
}

/// Errors that mean the peer has gone, as opposed to a fault on our side.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

impl Conn {
    /// Connects to `addr`, over TLS when `tls` is given. `timeout` bounds connecting and each write.
    pub fn connect(addr: &str, tls: Option<&TlsSettings>, timeout: Duration) -> io::Result<Conn> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        );
        let mut sock = None;
        for sa in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sa, timeout) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let sock = sock.ok_or(last)?;
        sock.set_nodelay(true)?;
        sock.set_write_timeout(Some(timeout))?;
        let t = match tls {
            None => Transport::Plain(sock),
            Some(tls) => {
                let conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                    .map_err(io::Error::other)?;
                Transport::Tls(Box::new(StreamOwned::new(conn, sock)))
            }
        };
        Ok(Conn {
            t,
            buf: Vec::new(),
            eof: false,
            malformed: None,
            deflate: None,
        })
    }

    /// From now on both directions are DEFLATE streams (after `OK COMPRESS DEFLATE`): bytes
    /// received after the last line taken are inflated, and [`Conn::send`] compresses.
    pub fn start_deflate(&mut self) {
        let rest = std::mem::take(&mut self.buf);
        self.deflate = Some(Box::new((Deflater::new(), Inflater::new())));
        self.absorb(&rest);
    }

    /// True after [`Conn::start_deflate`].
    pub fn deflating(&self) -> bool {
        self.deflate.is_some()
    }

    /// Adds bytes received to the buffer, inflating them on a compressed connection. A stream
    /// that does not inflate ends the connection, and counts as a malformed line.
    fn absorb(&mut self, mut raw: &[u8]) {
        let Some(d) = &mut self.deflate else {
            self.buf.extend_from_slice(raw);
            return;
        };
        let mut out = [0u8; 16 * 1024];
        loop {
            let done = d.1.inflate(raw, &mut out);
            self.buf.extend_from_slice(&out[..done.made]);
            raw = &raw[done.taken..];
            if done.bad {
                self.eof = true;
                if self.malformed.is_none() {
                    self.malformed =
                        Some(b"(the server's DEFLATE stream does not inflate)".to_vec());
                }
                return;
            }
            if raw.is_empty() && done.made < out.len() {
                return;
            }
        }
    }

    /// Sends bytes: as they are, or compressed (with a sync flush) on a compressed connection.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.deflate {
            None => self.send_raw(bytes),
            Some(d) => {
                let mut wire = Vec::new();
                d.0.write(bytes, &mut wire);
                self.send_raw(&wire)
            }
        }
    }

    /// Sends bytes as they are, compressed connection or not (a case sending a bad stream).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.t {
            Transport::Plain(s) => s.write_all(bytes),
            Transport::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    /// Reads the next line (without its LF), waiting until `deadline` at most.
    pub fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if self.malformed.is_none() && !well_formed(&line) {
                    self.malformed = Some(line.clone());
                }
                return Ok(line);
            }
            if self.eof {
                return Err(ReadError::Closed {
                    partial: std::mem::take(&mut self.buf),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout);
            }
            self.t
                .sock()
                .set_read_timeout(Some(left))
                .map_err(ReadError::Io)?;
            let n = match &mut self.t {
                Transport::Plain(s) => s.read(&mut chunk),
                Transport::Tls(s) => s.read(&mut chunk),
            };
            match n {
                Ok(0) => self.eof = true,
                Ok(n) => self.absorb(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadError::Timeout)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_disconnect(&e) => self.eof = true,
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// The first line received that is not a well-formed server line, if one was.
    pub fn malformed(&self) -> Option<&[u8]> {
        self.malformed.as_deref()
    }

    /// Closes the connection: TLS close_notify if any, then FIN.
    pub fn close(&mut self) {
        if let Transport::Tls(s) = &mut self.t {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
        let _ = self.t.sock().shutdown(Shutdown::Both);
    }
}
