//! The values of DIRECT (spec 4.39, 5.12): where a client listens for a direct session, and the
//! fingerprint of the certificate it will show there. Both validate at construction, so a value
//! the server relays is always one a client can use.

use std::fmt;

/// Longest `<address>` of `DIRECT OFFER`, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 261;

/// `HOST:PORT` where a client listens for a direct session: an IPv4 address, an IPv6 address in
/// brackets, or a DNS name; and a port from 1 to 65535.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress(String);

impl PeerAddress {
    /// Checks `s`: see the type's documentation.
    pub fn parse(s: &str) -> Result<PeerAddress, &'static str> {
        const WHAT: &str = "an address is HOST:PORT: an IPv4 address, [an IPv6 address] or a \
                            host name, and a port from 1 to 65535";
        if s.len() > MAX_ADDRESS_BYTES {
            return Err(WHAT);
        }
        let (host, port) = s.rsplit_once(':').ok_or(WHAT)?;
        let port_ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !port_ok {
            return Err(WHAT);
        }
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else if host.parse::<std::net::Ipv4Addr>().is_ok() {
            true
        } else {
            // A DNS name: labels of letters, digits and hyphens, 1 to 63 each, not starting or
            // ending with a hyphen; at most 253 in all.
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        };
        if !host_ok {
            return Err(WHAT);
        }
        Ok(PeerAddress(s.to_owned()))
    }

    /// The address as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a certificate's DER encoding, as 32 pairs of hexadecimal digits separated by
/// colons (`openssl x509 -fingerprint -sha256` prints it so), kept in upper case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Checks `s`, in any letter case.
    pub fn parse(s: &str) -> Result<Fingerprint, &'static str> {
        const WHAT: &str =
            "a fingerprint is the certificate's SHA-256: 32 pairs of hex digits separated by colons";
        let ok = s.len() == 95
            && s.split(':').count() == 32
            && s.split(':')
                .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(WHAT);
        }
        Ok(Fingerprint(s.to_ascii_uppercase()))
    }

    /// The fingerprint, upper case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "192.0.2.7:4000",
            "[2001:db8::1]:65535",
            "laptop.example.org:1",
            "my-host:8080",
            "[::1]:7000",
        ] {
            assert_eq!(PeerAddress::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "host",
            "host:",
            ":80",
            "host:0",
            "host:65536",
            "host:+80",
            "2001:db8::1:80",
            "[not-v6]:80",
            "-host:80",
            "ho st:80",
            "a..b:80",
            "999.1.1.1:80",
            "host:80\r",
        ] {
            assert!(PeerAddress::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}:1", "a.".repeat(130));
        assert!(PeerAddress::parse(&long).is_err());
    }

    #[test]
    fn fingerprints() {
        let hex: Vec<String> = (0..32u8).map(|i| format!("{:02X}", i * 7 + 3)).collect();
        let fp = Fingerprint::parse(&hex.join(":")).unwrap();
        assert_eq!(fp.as_str().len(), 95);
        let lower = fp.as_str().to_ascii_lowercase();
        assert_eq!(Fingerprint::parse(&lower), Ok(fp.clone()));
        assert!(Fingerprint::parse(&fp.as_str()[..94]).is_err());
        assert!(Fingerprint::parse(&fp.as_str().replace(':', "-")).is_err());
        assert!(Fingerprint::parse(&format!("{}:00", fp.as_str())).is_err());
        assert!(Fingerprint::parse(&format!("{}:0", &fp.as_str()[..93])).is_err());
        let bad = format!("G{}", &fp.as_str()[1..]);
        assert!(Fingerprint::parse(&bad).is_err());
    }
}
