//! Direct sessions between two bundled clients (spec 4.39): the network side. The server only
//! introduces the two; this module listens, connects and carries the conversation over TLS between
//! the clients, each checking the other's certificate against the fingerprint the server relayed.
//!
//! - [`Identity`]: a fresh self-signed certificate and key, made for one session and then dropped.
//! - [`listen`] binds where the offering client waits; [`wait_peer`] takes the one connection that
//!   shows the certificate the answer named, and gives up on the session at the first one that
//!   does not (an impostor, or a mistake: either way, nobody gets a second try).
//! - [`dial_peer`] connects the accepting client to the address of the offer and checks the
//!   certificate the listener shows.
//! - [`run_link`] carries lines both ways until either side closes.
//!
//! Both ends present a certificate and both check it (mutual TLS, TLS 1.3 only): no
//! trust-on-first-use, no certificate authority, only the fingerprint that came through the
//! server, which knows who each of them is. Nothing passes through the server and nothing is
//! stored. Both clients must be able to reach each other: there is no NAT traversal.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_net::{TcpListener, TcpStream};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::config::MAX_LINE_BYTES;
use crate::proto::direct::Fingerprint;
use crate::proto::line::{Frame, LineDecoder};
use crate::proto::name::check_text;
use crate::tls::{fingerprint_der, provider};

/// How long the offering client waits, once its offer is accepted, for the other client to
/// connect and finish the handshake.
pub const PEER_WAIT: Duration = Duration::from_secs(30);
/// How long the accepting client has to connect and finish the handshake.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The first line each client sends inside TLS, so that neither mistakes something else for a
/// chatd client.
pub const GREETING: &str = "CHATD-DIRECT 1";
/// The name in the certificates; nothing checks it (the fingerprint is what is checked).
const CERT_NAME: &str = "chatd-direct";
/// Lines queued for the peer before whoever types waits.
const OUT_QUEUE: usize = 64;

/// A certificate and its key, made for one session.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new self-signed certificate with a new ECDSA P-256 key.
    pub fn new() -> io::Result<Identity> {
        let key = rcgen::KeyPair::generate().map_err(io::Error::other)?;
        let params =
            rcgen::CertificateParams::new(vec![CERT_NAME.to_string()]).map_err(io::Error::other)?;
        let cert = params.self_signed(&key).map_err(io::Error::other)?;
        let der = cert.der().clone();
        let fingerprint = Fingerprint::parse(&fingerprint_der(&der))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Identity {
            cert: der,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            fingerprint,
        })
    }

    /// The fingerprint to announce.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Accepts exactly the certificate of one fingerprint, as a server's or as a client's. The
/// handshake's signatures are checked too, so the peer must hold that certificate's key.
#[derive(Debug)]
struct Pinned {
    fingerprint: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let shown = fingerprint_der(end_entity);
        if shown == self.fingerprint.as_str() {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "the certificate's fingerprint is {shown}, not {} as the server relayed",
                self.fingerprint
            )))
        }
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

fn pinned(fingerprint: &Fingerprint) -> Arc<Pinned> {
    Arc::new(Pinned {
        fingerprint: fingerprint.clone(),
        provider: provider(),
    })
}

/// A TLS stream to the other client.
pub type PeerStream = Box<dyn super::conn::Stream>;

/// Binds the listener an offer announces.
pub async fn listen(at: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(at).await
}

/// Waits for the other client: the first connection that completes a handshake showing the
/// certificate of `expected` (and checks ours). Any other connection, or a handshake that fails,
/// ends the session with an error: a certificate that does not match is someone else, or a
/// mistake, and neither gets another try. Gives up after [`PEER_WAIT`].
pub async fn wait_peer(
    listener: TcpListener,
    me: &Identity,
    expected: &Fingerprint,
) -> io::Result<PeerStream> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .with_client_cert_verifier(pinned(expected))
        .with_single_cert(vec![me.cert.clone()], me.key())
        .map_err(io::Error::other)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let attempt = async {
        let (tcp, from) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the connection from {from} failed its check: {e}"),
            )
        })?;
        Ok::<PeerStream, io::Error>(Box::new(tls))
    };
    with_timeout(PEER_WAIT, "the other client did not connect", attempt).await
}

/// Connects to the address of an offer: its listener must show the certificate of `expected`;
/// ours goes with it.
pub async fn dial_peer(
    address: &str,
    me: &Identity,
    expected: &Fingerprint,
) -> io::Result<PeerStream> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(pinned(expected))
        .with_client_auth_cert(vec![me.cert.clone()], me.key())
        .map_err(io::Error::other)?;
    let connector = TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(CERT_NAME).map_err(io::Error::other)?;
        let tls = connector.connect(name, tcp).await.map_err(|e| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the client at {address} failed its check: {e}"),
            )
        })?;
        Ok::<PeerStream, io::Error>(Box::new(tls))
    };
    with_timeout(DIAL_TIMEOUT, "no direct connection", attempt).await
}

async fn with_timeout<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(f, async {
        smol::Timer::after(limit).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} within {} s", limit.as_secs()),
        ))
    })
    .await
}

/// What the link reports.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A line of text from the other client.
    Message(String),
    /// The other client sent a line that is not valid message text (it was dropped).
    Dropped,
    /// The session ended: `None` when the other client closed it, else why.
    Closed(Option<String>),
}

/// Carries lines both ways until either side closes: each line from `outgoing` goes to the other
/// client, each line from it becomes an event. When `outgoing` closes (the user ends the session),
/// the TLS session is closed cleanly.
pub async fn run_link(stream: PeerStream, outgoing: Receiver<String>, events: Sender<LinkEvent>) {
    let why = link(stream, outgoing, &events).await;
    let _ = events.send(LinkEvent::Closed(why)).await;
}

async fn link(
    stream: PeerStream,
    outgoing: Receiver<String>,
    events: &Sender<LinkEvent>,
) -> Option<String> {
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let greet = async {
        writer.write_all(format!("{GREETING}\n").as_bytes()).await?;
        writer.flush().await
    };
    if let Err(e) = greet.await {
        return Some(e.to_string());
    }
    let send = async {
        while let Ok(line) = outgoing.recv().await {
            writer.write_all(line.as_bytes()).await?;
            writer.write_all(b"\n").await?;
            if outgoing.is_empty() {
                writer.flush().await?;
            }
        }
        writer.close().await?;
        Ok::<(), io::Error>(())
    };
    let receive = async {
        let mut decoder = LineDecoder::new(MAX_LINE_BYTES);
        let mut buf = vec![0u8; 4096];
        let mut greeted = false;
        let mut lines = Vec::new();
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            decoder.feed(&buf[..n], |f| {
                lines.push(match f {
                    Frame::Line(l) => String::from_utf8(l.to_vec()).ok(),
                    Frame::TooLong => None,
                })
            });
            for line in lines.drain(..) {
                if !greeted {
                    if line.as_deref() != Some(GREETING) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the other side is not a chatd client",
                        ));
                    }
                    greeted = true;
                    continue;
                }
                let event = match line {
                    Some(text) if check_text(&text).is_ok() => LinkEvent::Message(text),
                    _ => LinkEvent::Dropped,
                };
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    // The session ends when either side is done: the user closed it (send ends) or the other
    // client did (receive ends).
    let ended = future::or(async { send.await.err().map(|e| e.to_string()) }, async {
        receive.await.err().map(|e| e.to_string())
    })
    .await;
    ended
}

/// Where direct sessions listen and what they announce (`--direct-listen`, `--direct-announce`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectOptions {
    /// Where to listen; by default the address of this end of the server connection, on a port
    /// the system picks.
    pub listen: Option<SocketAddr>,
    /// What to announce; by default the address listened on. For a client behind a forwarded
    /// port, the address others reach it at.
    pub announce: Option<String>,
}

/// What the network side of a direct session reports to its shell.
#[derive(Debug)]
pub enum HostEvent {
    /// The peer is connected and checked.
    Opened(u64),
    /// The link reported this.
    Link(u64, LinkEvent),
    /// Waiting for the peer or connecting to it failed.
    Failed(u64, String),
}

/// The network side of the client's direct session, shared by both front ends: it carries out the
/// session's [`DirectAction`]s and turns what happens into events for [`Host::handle`].
///
/// [`DirectAction`]: super::session::DirectAction
pub struct Host {
    opts: DirectOptions,
    /// This end of the server connection (the default interface to listen on).
    local: Option<SocketAddr>,
    identity: Option<Arc<Identity>>,
    listener: Option<TcpListener>,
    /// Lines for the peer, while the link runs.
    link: Option<Sender<String>>,
    /// Waiting for the peer, connecting to it, or carrying the link.
    task: Option<smol::Task<()>>,
    events: (Sender<HostEvent>, Receiver<HostEvent>),
    /// Tells events of the current session from those of one closed before.
    generation: u64,
}

impl Host {
    /// A host with these options.
    pub fn new(opts: DirectOptions) -> Host {
        Host {
            opts,
            local: None,
            identity: None,
            listener: None,
            link: None,
            task: None,
            events: async_channel::bounded(OUT_QUEUE),
            generation: 0,
        }
    }

    /// Records this end of a new server connection.
    pub fn connected_from(&mut self, local: SocketAddr) {
        self.local = Some(local);
    }

    /// The next event; pending while there is nothing to report.
    pub async fn next(&self) -> HostEvent {
        match self.events.1.recv().await {
            Ok(e) => e,
            Err(_) => future::pending().await,
        }
    }

    /// Carries out `action`; what it leads to at once comes back as effects of the session.
    pub async fn act(
        &mut self,
        action: super::session::DirectAction,
        session: &mut super::session::Session,
    ) -> Vec<super::session::Effect> {
        use super::session::DirectAction as A;
        match action {
            A::PrepareOffer { .. } => match self.prepare_offer().await {
                Ok((address, fp)) => session.offer_ready(&address, &fp),
                Err(e) => session.direct_failed(&e.to_string()),
            },
            A::PrepareAccept { .. } => match Identity::new() {
                Ok(me) => {
                    let fp = me.fingerprint().clone();
                    self.identity = Some(Arc::new(me));
                    session.accept_ready(&fp)
                }
                Err(e) => session.direct_failed(&e.to_string()),
            },
            A::Await { fingerprint, .. } => {
                let (Some(listener), Some(me)) = (self.listener.take(), self.identity.clone())
                else {
                    return session.direct_failed("no listener to wait on");
                };
                self.run(async move { wait_peer(listener, &me, &fingerprint).await });
                Vec::new()
            }
            A::Dial {
                address,
                fingerprint,
                ..
            } => {
                let Some(me) = self.identity.clone() else {
                    return session.direct_failed("no certificate to connect with");
                };
                self.run(async move { dial_peer(&address, &me, &fingerprint).await });
                Vec::new()
            }
            A::Say(line) => {
                if let Some(link) = &self.link {
                    if link.send(line).await.is_err() {
                        self.link = None;
                    }
                }
                Vec::new()
            }
            A::Close => {
                self.close();
                Vec::new()
            }
        }
    }

    /// Turns an event into the session's effects; events of a session closed since are dropped.
    pub fn handle(
        &mut self,
        event: HostEvent,
        session: &mut super::session::Session,
    ) -> Vec<super::session::Effect> {
        match event {
            HostEvent::Opened(g) if g == self.generation => session.on_direct_open(),
            HostEvent::Failed(g, why) if g == self.generation => {
                self.close();
                session.direct_failed(&why)
            }
            HostEvent::Link(g, e) if g == self.generation => match e {
                LinkEvent::Message(text) => session.on_direct_message(&text),
                LinkEvent::Dropped => session.on_direct_dropped(),
                LinkEvent::Closed(why) => {
                    self.close();
                    session.on_direct_closed(why.as_deref())
                }
            },
            _ => Vec::new(),
        }
    }

    /// True while a session is being set up or carried.
    pub fn busy(&self) -> bool {
        self.task.is_some() || self.listener.is_some()
    }

    async fn prepare_offer(&mut self) -> io::Result<(String, Fingerprint)> {
        let me = Identity::new()?;
        let at = match (self.opts.listen, self.local) {
            (Some(at), _) => at,
            (None, Some(local)) => SocketAddr::new(local.ip(), 0),
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let listener = listen(at).await?;
        let bound = listener.local_addr()?;
        let address = match &self.opts.announce {
            Some(a) => a.clone(),
            None => bound.to_string(),
        };
        let fp = me.fingerprint().clone();
        self.identity = Some(Arc::new(me));
        self.listener = Some(listener);
        Ok((address, fp))
    }

    /// Runs the connection step, then the link, as one task of this session.
    fn run(
        &mut self,
        connect: impl std::future::Future<Output = io::Result<PeerStream>> + Send + 'static,
    ) {
        let (out_tx, out_rx) = async_channel::bounded(OUT_QUEUE);
        self.link = Some(out_tx);
        let g = self.generation;
        let events = self.events.0.clone();
        self.task = Some(smol::spawn(async move {
            let stream = match connect.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = events.send(HostEvent::Failed(g, e.to_string())).await;
                    return;
                }
            };
            if events.send(HostEvent::Opened(g)).await.is_err() {
                return;
            }
            let (link_tx, link_rx) = async_channel::bounded(OUT_QUEUE);
            let forward = async {
                while let Ok(e) = link_rx.recv().await {
                    if events.send(HostEvent::Link(g, e)).await.is_err() {
                        return;
                    }
                }
            };
            future::zip(run_link(stream, out_rx, link_tx), forward).await;
        }));
    }

    /// Ends the session: an open link closes cleanly (its task ends by itself); a wait or a
    /// connection attempt is called off; the listener and the certificate go.
    fn close(&mut self) {
        self.generation += 1;
        self.listener = None;
        self.identity = None;
        match self.link.take() {
            // Dropping the sender closes the link, which sends close_notify and ends its task.
            Some(_) => {
                if let Some(t) = self.task.take() {
                    t.detach();
                }
            }
            None => self.task = None,
        }
    }
}
