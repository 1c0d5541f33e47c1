//! Reaching the server over TCP or TLS, and reading its lines.
//!
//! TLS verifies the server against the operating system's root certificates, or only against the
//! certificate(s) in `--ca` when given; `--insecure` accepts any certificate but still checks that
//! the handshake is signed by the key of the certificate presented.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use futures_rustls::TlsConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::compress::{negotiate, Negotiated};
use super::render::clean;
use crate::proto::line::{Frame, LineDecoder};
use crate::tls::{load_certs, provider};

/// Time allowed for the TCP connection and the TLS handshake together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest server line the client accepts. Server lines are bounded by the protocol's limits (a
/// MESSAGE to 50 recipients with 2048 bytes of text is under 4 KiB); this leaves room to spare.
pub const MAX_SERVER_LINE_BYTES: usize = 64 * 1024;

/// A byte stream to the server, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where and how to connect.
pub struct Connector {
    addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    verified: bool,
    compress: bool,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("verified", &self.verified)
            .field("compress", &self.compress)
            .finish()
    }
}

/// The host part of `HOST:PORT` (brackets around an IPv6 address removed).
pub fn host_of(addr: &str) -> Result<&str, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not HOST:PORT"))?;
    if port.parse::<u16>().is_err() {
        return Err(format!("{addr:?} has no valid port number"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    Ok(host)
}

/// Which certificates the client accepts from the server.
pub enum Trust<'a> {
    /// The operating system's root certificates.
    System,
    /// Only the certificates in this PEM file (typically the server's own self-signed one).
    CaFile(&'a Path),
    /// Anything: no protection against an active attacker.
    Insecure,
}

/// Builds the client side of TLS.
pub fn client_config(trust: Trust<'_>) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in load_certs(path).map_err(|e| e.to_string())? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system root certificates found{why}; use --ca <PEM> to name the server's certificate"
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

impl Connector {
    /// A plain-TCP connector.
    pub fn plain(addr: &str) -> Result<Connector, String> {
        host_of(addr)?;
        Ok(Connector {
            addr: addr.to_string(),
            tls: None,
            verified: false,
            compress: false,
        })
    }

    /// A TLS connector; the server's certificate must be valid for the host part of `addr`.
    pub fn tls(addr: &str, trust: Trust<'_>) -> Result<Connector, String> {
        let host = host_of(addr)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a valid host name for TLS"))?;
        let verified = !matches!(trust, Trust::Insecure);
        let config = client_config(trust)?;
        Ok(Connector {
            addr: addr.to_string(),
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
            verified,
            compress: false,
        })
    }

    /// Asks for `COMPRESS DEFLATE` right after the greeting on every connection (`--compress`).
    pub fn with_compress(mut self, compress: bool) -> Connector {
        self.compress = compress;
        self
    }

    /// The address as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How the connection is protected, for telling the user.
    pub fn describe(&self) -> String {
        let base = match (&self.tls, self.verified) {
            (None, _) => "plain TCP",
            (Some(_), true) => "TLS",
            (Some(_), false) => "TLS, certificate NOT verified",
        };
        if self.compress {
            format!("{base}, compressed")
        } else {
            base.to_string()
        }
    }

    /// Opens a connection (and completes the TLS handshake, and with `--compress` the switch to
    /// DEFLATE), within [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> io::Result<Connected> {
        future::or(self.connect_now(), async {
            smol::Timer::after(CONNECT_TIMEOUT).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
            ))
        })
        .await
    }

    async fn connect_now(&self) -> io::Result<Connected> {
        let tcp = async_net::TcpStream::connect(self.addr.as_str()).await?;
        // Lines are small and interactive; do not wait to fill segments.
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        };
        if !self.compress {
            return Ok(Connected {
                stream,
                note: None,
                local,
            });
        }
        let (stream, outcome) = negotiate(stream).await?;
        let note = match outcome {
            Negotiated::Compressed => None,
            Negotiated::Refused(why) => Some(format!(
                "the server did not compress this connection ({}); going on uncompressed",
                clean(&why)
            )),
        };
        Ok(Connected {
            stream: Box::new(stream),
            note,
            local,
        })
    }
}

/// An open connection to the server.
pub struct Connected {
    /// The stream, TLS and compression applied.
    pub stream: Box<dyn Stream>,
    /// Something to tell the user: the server refused compression, say.
    pub note: Option<String>,
    /// This end's address: a direct session listens on the same interface by default.
    pub local: std::net::SocketAddr,
}

/// Accepts any server certificate; the handshake signatures are still checked, so the peer must hold
/// the key of the certificate it shows.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One unit read from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A line without its terminator (invalid UTF-8 replaced).
    Line(String),
    /// A line longer than [`MAX_SERVER_LINE_BYTES`] was skipped.
    TooLong,
}

/// Splits the server's byte stream into lines with the protocol's framing rules.
pub struct LineReader<R> {
    inner: R,
    decoder: LineDecoder,
    ready: std::collections::VecDeque<Incoming>,
    buf: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Reads from `inner`.
    pub fn new(inner: R) -> LineReader<R> {
        LineReader {
            inner,
            decoder: LineDecoder::new(MAX_SERVER_LINE_BYTES),
            ready: std::collections::VecDeque::new(),
            buf: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// The next line; `None` when the server closed the connection (an unfinished last line is
    /// dropped, as the protocol says). Cancel-safe: bytes read are decoded before the next await.
    pub async fn next(&mut self) -> io::Result<Option<Incoming>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(Some(item));
            }
            let n = self.inner.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            let ready = &mut self.ready;
            self.decoder.feed(&self.buf[..n], |frame| {
                ready.push_back(match frame {
                    Frame::Line(l) => Incoming::Line(String::from_utf8_lossy(l).into_owned()),
                    Frame::TooLong => Incoming::TooLong,
                })
            });
        }
    }
}

/// Reads lines from `read` into `tx` until the connection ends; the end (`Ok(None)`) or the error is
/// sent too. Run as its own future, so the socket is read whatever else the client is waiting on.
pub async fn forward_lines<R: AsyncRead + Unpin>(
    read: R,
    tx: async_channel::Sender<io::Result<Option<Incoming>>>,
) {
    let mut lines = LineReader::new(read);
    loop {
        let item = lines.next().await;
        let done = !matches!(item, Ok(Some(_)));
        if tx.send(item).await.is_err() || done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_part_of_addresses() {
        assert_eq!(host_of("localhost:7878"), Ok("localhost"));
        assert_eq!(host_of("127.0.0.1:1"), Ok("127.0.0.1"));
        assert_eq!(host_of("[::1]:7878"), Ok("::1"));
        assert!(host_of("localhost").is_err());
        assert!(host_of("localhost:http").is_err());
        assert!(host_of(":7878").is_err());
    }

    #[test]
    fn lines_are_framed_like_the_protocol_says() {
        let data: &[u8] = b"HELLO a b\r\nOK PING\nbad \xff utf8\npartial";
        let mut r = LineReader::new(data);
        smol::block_on(async {
            assert_eq!(
                r.next().await.unwrap(),
                Some(Incoming::Line("HELLO a b".into()))
            );
            assert_eq!(
                r.next().await.unwrap(),
                Some(Incoming::Line("OK PING".into()))
            );
            assert_eq!(
                r.next().await.unwrap(),
                Some(Incoming::Line("bad \u{fffd} utf8".into()))
            );
            assert_eq!(r.next().await.unwrap(), None);
        });
    }

    #[test]
    fn over_long_lines_are_skipped() {
        let mut data = vec![b'x'; MAX_SERVER_LINE_BYTES + 1];
        data.extend_from_slice(b"\nOK PING\n");
        let mut r = LineReader::new(&data[..]);
        smol::block_on(async {
            assert_eq!(r.next().await.unwrap(), Some(Incoming::TooLong));
            assert_eq!(
                r.next().await.unwrap(),
                Some(Incoming::Line("OK PING".into()))
            );
        });
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = Connector::tls(
            "localhost:1",
            Trust::CaFile(Path::new("/nonexistent/ca.pem")),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
