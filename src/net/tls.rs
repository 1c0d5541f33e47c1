//! TLS for the server's listener: the certificate and key it serves, swapped on reload, and the
//! bounded handshake. Loading, fingerprints and self-signed certificates are in [`crate::tls`],
//! shared with the client.
//!
//! The current [`ServerConfig`] sits behind a lock in [`TlsConfigCell`]; taking an acceptor clones the
//! `Arc` and releases the lock at once, so a reload never waits for handshakes and a handshake in
//! progress keeps the configuration it started with. The handshake itself runs in the connection's
//! own task under [`TLS_HANDSHAKE_TIMEOUT`], so a client that connects and sends nothing costs one
//! idle task for at most that long and never delays the accept loop.

use std::fmt;
use std::io;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_net::TcpStream;
use futures_lite::future;
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use rustls::{InconsistentKeys, ServerConfig};

use crate::config::TLS_HANDSHAKE_TIMEOUT;
use crate::tls::{load_certs, load_key, provider, TlsError, TlsFiles};

/// Builds a server configuration from the files, checking that the key belongs to the certificate.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let rustls_error = |source| TlsError::Rustls {
        files: files.clone(),
        source,
    };
    // `with_single_cert` compares the key's public half with the certificate's and fails with
    // `KeyMismatch`, which is worth its own message: it is the usual mistake.
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                }
            }
            e => rustls_error(e),
        })
}

/// The server's current TLS configuration, replaceable while connections come and go.
pub struct TlsConfigCell {
    files: TlsFiles,
    /// Only ever locked to clone or replace the `Arc`, never across an await.
    current: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsConfigCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfigCell")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsConfigCell {
    /// Loads the certificate and key.
    pub fn load(files: &TlsFiles) -> Result<TlsConfigCell, TlsError> {
        let config = server_config(files)?;
        Ok(TlsConfigCell {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again and uses them for new connections. On error the previous
    /// configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files)?);
        // A writer that panicked cannot have left a half-written Arc behind, so a poisoned lock
        // still holds a usable value.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// An acceptor using the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }
}

/// Runs the server side of a TLS handshake, giving up after [`TLS_HANDSHAKE_TIMEOUT`].
/// Call it from the connection's own task.
pub async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    handshake_within(acceptor, tcp, TLS_HANDSHAKE_TIMEOUT).await
}

/// [`handshake`] with a given time limit.
pub async fn handshake_within(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    limit: Duration,
) -> io::Result<TlsStream<TcpStream>> {
    future::or(acceptor.accept(tcp), async move {
        smol::Timer::after(limit).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not finished within {} ms", limit.as_millis()),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::tls::{fingerprint, fingerprint_der, generate_self_signed, self_signed};
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
    use futures_rustls::TlsConnector;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};

    fn client_trusting(cert: &Path) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for c in load_certs(cert).unwrap() {
            roots.add(c).unwrap();
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    /// Serves one TLS connection that echoes 5 bytes, and returns the fingerprint of the
    /// certificate the client saw.
    async fn echo_once(cell: &TlsConfigCell, client: &TlsConnector, name: &str) -> String {
        let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = cell.acceptor();
        let server = smol::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = handshake(acceptor, tcp).await.unwrap();
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
            tls.flush().await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut tls = client.connect(name, tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        server.await;
        let peer = tls.get_ref().1.peer_certificates().unwrap();
        fingerprint_der(&peer[0])
    }

    fn is_fingerprint(s: &str) -> bool {
        s.len() == 32 * 3 - 1
            && s.split(':').all(|h| {
                h.len() == 2
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            })
    }

    #[test]
    fn generated_certificate_serves_a_verified_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let (files, fp) = generate_self_signed(dir.path()).unwrap();
        assert!(is_fingerprint(&fp), "{fp}");
        assert_eq!(fingerprint(&files.cert).unwrap(), fp);
        let cell = TlsConfigCell::load(&files).unwrap();
        let client = client_trusting(&files.cert);
        smol::block_on(async {
            for name in self_signed::SELF_SIGNED_NAMES {
                assert_eq!(echo_once(&cell, &client, name).await, fp);
            }
        });
    }

    #[test]
    fn mismatched_key_is_refused_with_its_own_error() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (fa, _) = generate_self_signed(a.path()).unwrap();
        let (fb, _) = generate_self_signed(b.path()).unwrap();
        let crossed = TlsFiles {
            cert: fa.cert.clone(),
            key: fb.key.clone(),
        };
        let err = TlsConfigCell::load(&crossed).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("does not belong"), "{msg}");
        assert!(msg.contains(&fb.key.display().to_string()), "{msg}");
    }

    #[test]
    fn missing_and_wrong_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = generate_self_signed(dir.path()).unwrap();
        let missing = dir.path().join("nope.pem");

        let err = TlsConfigCell::load(&TlsFiles {
            cert: missing.clone(),
            key: files.key.clone(),
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        // The files swapped: the "certificate" is a key and the "key" is a certificate.
        let err = TlsConfigCell::load(&TlsFiles {
            cert: files.key.clone(),
            key: files.cert.clone(),
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        let err = TlsConfigCell::load(&TlsFiles {
            cert: files.cert.clone(),
            key: files.cert.clone(),
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
        assert!(err.to_string().contains("no private key"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = fingerprint(&garbage).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    }

    #[test]
    fn reload_swaps_the_certificate_for_new_connections_and_keeps_it_on_error() {
        let live = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (files, fp_a) = generate_self_signed(live.path()).unwrap();
        let (other_files, fp_b) = generate_self_signed(other.path()).unwrap();
        assert_ne!(fp_a, fp_b);
        let cell = TlsConfigCell::load(&files).unwrap();
        let trusts_a = client_trusting(&files.cert);
        let trusts_b = client_trusting(&other_files.cert);
        smol::block_on(async {
            assert_eq!(echo_once(&cell, &trusts_a, "localhost").await, fp_a);

            // An acceptor taken before the reload keeps the old configuration.
            let before = cell.acceptor();
            fs::copy(&other_files.cert, &files.cert).unwrap();
            fs::copy(&other_files.key, &files.key).unwrap();
            cell.reload().unwrap();
            assert_eq!(echo_once(&cell, &trusts_b, "localhost").await, fp_b);
            drop(before);

            // A broken file: reload fails, the last good configuration stays.
            fs::write(&files.key, "not a key").unwrap();
            let err = cell.reload().unwrap_err();
            assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
            assert_eq!(echo_once(&cell, &trusts_b, "127.0.0.1").await, fp_b);
        });
    }

    #[test]
    fn handshake_times_out_when_the_client_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = generate_self_signed(dir.path()).unwrap();
        let cell = TlsConfigCell::load(&files).unwrap();
        smol::block_on(async {
            let listener = async_net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let _idle = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let started = std::time::Instant::now();
            let err = handshake_within(cell.acceptor(), tcp, Duration::from_millis(200))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(started.elapsed() >= Duration::from_millis(200));
        });
    }
}
