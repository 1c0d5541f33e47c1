//! A self-signed certificate for trying chatd out (`--tls-generate`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{fingerprint, fingerprint_der, TlsError, TlsFiles};

/// File name of the certificate [`generate_self_signed`] writes.
pub const SELF_SIGNED_CERT_FILE: &str = "chatd-cert.pem";
/// File name of the private key [`generate_self_signed`] writes.
pub const SELF_SIGNED_KEY_FILE: &str = "chatd-key.pem";
/// Names the self-signed certificate is valid for.
pub const SELF_SIGNED_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Validity of a generated certificate, in years from the start of the current year.
const SELF_SIGNED_YEARS: i16 = 10;

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
}
