//! Where a connection comes from, as the per-address limits see it.
//!
//! The limits that protect the server from one source (connections per address, password hashes
//! per address, failed-login back-off, registrations per hour) count per [`AddrKey`]: an IPv4
//! address, or the /64 prefix of an IPv6 address, since one IPv6 host usually holds a whole /64
//! (RFC 6177) and could otherwise take a new address for every connection. An IPv4 address seen as
//! IPv6 (`::ffff:192.0.2.1`) counts as the IPv4 address.
//!
//! Networks given with `--exempt` (a reverse proxy, a monitoring host, an office behind one NAT
//! address) are not limited per address; a [`Peer`] from them carries no key. The limits per
//! account apply to everyone.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// The unit the per-address limits count: an IPv4 address or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrKey {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl AddrKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(v4),
                None => AddrKey::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for AddrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrKey::V4(a) => a.fmt(f),
            AddrKey::V6(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64))
            }
        }
    }
}

/// A connection's origin: its address (shown in the log as `127.0.0.1:53712`, with ` (TLS)` on a
/// TLS port), and whether the per-address limits count it.
///
/// Kept as the address itself, 22 bytes inline in the core's entry for the connection, and
/// formatted only when a log line shows it: a string of its own would be a block on the heap for
/// every connection, held for as long as it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// `None` for a connection the simulator made without an address.
    ip: Option<IpAddr>,
    port: u16,
    /// It came through a TLS port.
    tls: bool,
    /// The per-address limits count it: not in an exempt network.
    limited: bool,
}

impl Peer {
    /// A peer at `addr` (through a TLS port if `tls`), limited per address unless `exempt`
    /// holds it.
    pub fn new(addr: SocketAddr, tls: bool, exempt: &[Network]) -> Peer {
        let ip = addr.ip();
        Peer {
            ip: Some(ip),
            port: addr.port(),
            tls,
            limited: !exempt.iter().any(|n| n.contains(ip)),
        }
    }

    /// A peer with no address, never limited per address.
    pub fn unlimited() -> Peer {
        Peer {
            ip: None,
            port: 0,
            tls: false,
            limited: false,
        }
    }

    /// What the per-address limits count it under; `None`: not limited per address.
    pub fn key(&self) -> Option<AddrKey> {
        self.ip.filter(|_| self.limited).map(AddrKey::of)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            None => f.write_str("no address"),
            Some(ip) => {
                SocketAddr::new(ip, self.port).fmt(f)?;
                if self.tls {
                    f.write_str(" (TLS)")?;
                }
                Ok(())
            }
        }
    }
}

/// A network: an address and a prefix length (`10.0.0.0/8`, `2001:db8::/32`; an address alone is
/// the /32 or /128 of that address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// True when `ip` is in the network. An IPv4 address seen as IPv6 is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == a.to_bits() & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == a.to_bits() & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or ADDRESS/PREFIX"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a = AddrKey::of(ip("2001:db8:1:2::1"));
        assert_eq!(a, AddrKey::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(a, AddrKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            AddrKey::of(ip("::ffff:192.0.2.7")),
            AddrKey::of(ip("192.0.2.7"))
        );
        assert_eq!(AddrKey::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
    }

    #[test]
    fn networks_parse_and_contain() {
        let lo: Network = "127.0.0.1".parse().unwrap();
        assert!(lo.contains(ip("127.0.0.1")));
        assert!(!lo.contains(ip("127.0.0.2")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        let ten: Network = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.200.3.4")) && !ten.contains(ip("11.0.0.1")));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        let v6: Network = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
        for bad in ["", "10.0.0.0/33", "::/129", "host.example", "10.0.0.0/x"] {
            assert!(bad.parse::<Network>().is_err(), "{bad:?}");
        }
        let exempt = [lo];
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(Peer::new(at("127.0.0.1:5"), false, &exempt).key(), None);
        assert_eq!(
            Peer::new(at("127.0.0.2:5"), false, &exempt).key(),
            Some(AddrKey::V4("127.0.0.2".parse().unwrap()))
        );
        assert_eq!(Peer::unlimited().key(), None);
    }

    #[test]
    fn peers_show_as_their_socket_address() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            Peer::new(at("127.0.0.1:53712"), false, &[]).to_string(),
            "127.0.0.1:53712"
        );
        assert_eq!(
            Peer::new(at("[2001:db8::1]:6697"), true, &[]).to_string(),
            "[2001:db8::1]:6697 (TLS)"
        );
        assert_eq!(
            Peer::new(at("[::ffff:192.0.2.7]:5"), false, &[]).to_string(),
            "[::ffff:192.0.2.7]:5"
        );
        assert_eq!(Peer::unlimited().to_string(), "no address");
        assert!(std::mem::size_of::<Peer>() <= 24);
    }
}
