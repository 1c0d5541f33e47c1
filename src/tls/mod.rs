//! TLS pieces shared by the server and the bundled client: the crypto provider, PEM loading,
//! certificate fingerprints, the files a server's certificate lives in, and the errors all of
//! them report.
//!
//! The crypto provider is rustls' `ring` provider, named explicitly rather than taken from the process
//! default, so linking another provider into the binary can never change what chatd uses.
//!
//! The server's acceptor and handshake are in [`net::tls`](crate::net::tls); [`self_signed`]
//! makes a certificate for trying chatd out.

pub mod self_signed;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub use self_signed::generate_self_signed;

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
