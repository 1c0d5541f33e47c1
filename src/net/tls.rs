//! TLS for the server: loading the certificate and key, swapping them on reload, the bounded
//! handshake, and a self-signed certificate for trying chatd out.
//!
//! The crypto provider is rustls' `ring` provider, named explicitly rather than taken from the process
//! default, so linking another provider into the binary can never change what chatd uses.
//!
//! The current [`ServerConfig`] sits behind a lock in [`TlsConfigCell`]; taking an acceptor clones the
//! `Arc` and releases the lock at once, so a reload never waits for handshakes and a handshake in
//! progress keeps the configuration it started with. The handshake itself runs in the connection's
//! own task under [`TLS_HANDSHAKE_TIMEOUT`], so a client that connects and sends nothing costs one
//! idle task for at most that long and never delays the accept loop.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_net::TcpStream;
use futures_lite::future;
use futures_rustls::server::TlsStream;
use futures_rustls::TlsAcceptor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{InconsistentKeys, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::TLS_HANDSHAKE_TIMEOUT;

/// File name of the certificate [`generate_self_signed`] writes.
pub const SELF_SIGNED_CERT_FILE: &str = "chatd-cert.pem";
/// File name of the private key [`generate_self_signed`] writes.
pub const SELF_SIGNED_KEY_FILE: &str = "chatd-key.pem";
/// Names the self-signed certificate is valid for.
pub const SELF_SIGNED_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Validity of a generated certificate, in years from the start of the current year.
const SELF_SIGNED_YEARS: i16 = 10;

/// Where the server's certificate chain and private key live (both PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS could not be set up. Every message names the file involved.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
    /// A file could not be written (generating a certificate).
    Write {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
    /// A file is not valid PEM.
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM decoder said.
        detail: String,
    },
    /// The certificate file holds no certificate.
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key does not belong to the certificate.
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate or key.
    Rustls {
        /// The files involved.
        files: TlsFiles,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// Only one of the two self-signed files exists; generating would overwrite the other.
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// Generating a key pair or certificate failed.
    Generate(rcgen::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            TlsError::Write { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            TlsError::Pem { path, detail } => {
                write!(f, "{} is not valid PEM: {detail}", path.display())
            }
            TlsError::NoCertificate { path } => write!(
                f,
                "{} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
                path.display()
            ),
            TlsError::NoPrivateKey { path } => write!(
                f,
                "{} holds no private key (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
                 or \"BEGIN EC PRIVATE KEY\" block)",
                path.display()
            ),
            TlsError::KeyMismatch { cert, key } => write!(
                f,
                "the private key in {} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ),
            TlsError::Rustls { files, source } => write!(
                f,
                "cannot use certificate {} with key {}: {source}",
                files.cert.display(),
                files.key.display()
            ),
            TlsError::Incomplete { present, missing } => write!(
                f,
                "{} exists but {} does not; remove the first to generate a new pair, or supply both",
                present.display(),
                missing.display()
            ),
            TlsError::Generate(e) => write!(f, "cannot generate a self-signed certificate: {e}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } | TlsError::Write { source, .. } => Some(source),
            TlsError::Rustls { source, .. } => Some(source),
            TlsError::Generate(e) => Some(e),
            _ => None,
        }
    }
}

/// The crypto provider chatd uses, for servers and clients alike.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// Reads every certificate in a PEM file, in order; at least one must be there.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        e => pem_error(path, e),
    })
}

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

    /// The files this cell loads from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
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

/// The SHA-256 fingerprint of a DER certificate as colon-separated upper-case hex, the form
/// `openssl x509 -fingerprint -sha256` prints.
pub fn fingerprint_der(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// The SHA-256 fingerprint of the first certificate in a PEM file (see [`fingerprint_der`]).
pub fn fingerprint(cert_pem: &Path) -> Result<String, TlsError> {
    let certs = load_certs(cert_pem)?;
    Ok(fingerprint_der(&certs[0]))
}

/// Makes sure `dir` holds a certificate and key for local use, generating them if both are missing.
///
/// The certificate is a leaf (not a CA: TLS clients refuse a CA certificate as a server's own
/// certificate) for `localhost`, `127.0.0.1` and `::1`, self-signed with a new ECDSA P-256 key. The
/// key file is created readable by its owner only. Existing files are kept, so the fingerprint
/// clients pinned stays valid across restarts. Returns the files and the certificate's fingerprint.
pub fn generate_self_signed(dir: &Path) -> Result<(TlsFiles, String), TlsError> {
    let files = TlsFiles {
        cert: dir.join(SELF_SIGNED_CERT_FILE),
        key: dir.join(SELF_SIGNED_KEY_FILE),
    };
    match (files.cert.exists(), files.key.exists()) {
        (true, true) => {
            let fp = fingerprint(&files.cert)?;
            return Ok((files, fp));
        }
        (true, false) => {
            return Err(TlsError::Incomplete {
                present: files.cert,
                missing: files.key,
            })
        }
        (false, true) => {
            return Err(TlsError::Incomplete {
                present: files.key,
                missing: files.cert,
            })
        }
        (false, false) => {}
    }

    let key_pair = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).map_err(TlsError::Generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chatd self-signed");
    // Explicitly not a CA, and only for TLS servers.
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let year = jiff::Zoned::now().year();
    params.not_before = rcgen::date_time_ymd(i32::from(year) - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(i32::from(year + SELF_SIGNED_YEARS), 1, 1);
    let cert = params.self_signed(&key_pair).map_err(TlsError::Generate)?;

    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_file(&files.key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok((files, fingerprint_der(cert.der())))
}

/// Writes `data` to a temporary file created with `mode`, then renames it into place, so a reader
/// never sees half a file and the key is never readable by others, not even briefly.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A temporary file left by an interrupted run would make create_new fail.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(data).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
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
            for name in SELF_SIGNED_NAMES {
                assert_eq!(echo_once(&cell, &client, name).await, fp);
            }
        });
    }

    #[test]
    fn generation_keeps_existing_files_and_protects_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (files, fp) = generate_self_signed(dir.path()).unwrap();
        let (again, fp2) = generate_self_signed(dir.path()).unwrap();
        assert_eq!((files, fp), (again.clone(), fp2));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&again.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_file(&again.key).unwrap();
        let err = generate_self_signed(dir.path()).unwrap_err();
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
        assert!(err.to_string().contains("chatd-key.pem"), "{err}");
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
