//! Backends named by host (`redis1.internal:6379`), as Sentinel's `resolve-hostnames` allows:
//! how a backend is spelled, and how a name becomes the IPv4 address the probes, the failover
//! machine and the data plane's maps work with.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4, ToSocketAddrs},
};

/// A backend as the file spells it: an address, or a host name to resolve, and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    Addr(SocketAddrV4),
    Host { name: String, port: u16 },
}

impl BackendSpec {
    /// `ip:port` or `host:port`. The host must be a DNS name (RFC 1123: letters, digits, '-'
    /// and '.', labels of at most 63 characters): anything else is a typo, not a name the
    /// resolver could find.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddrV4>() {
            return Ok(Self::Addr(addr));
        }
        let not = || format!("{text:?} is not an IPv4 address:port or a host:port");
        let (host, port) = text.rsplit_once(':').ok_or_else(not)?;
        let port: u16 = port.parse().map_err(|_| not())?;
        if !is_host_name(host) {
            return Err(not());
        }
        Ok(Self::Host {
            name: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Host { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// A name the resolver could look up. A dotted quad that failed to parse as an address (a
/// typo such as `198.18.1.300`) is refused here rather than sent to DNS.
fn is_host_name(host: &str) -> bool {
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let all_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    labels_ok && !all_numeric
}

/// Turns a host name into an IPv4 address.
pub trait Resolver {
    /// The name's first IPv4 address, or why there is none.
    fn resolve(&self, name: &str) -> Result<Ipv4Addr, String>;
}

/// The system's resolver (`getaddrinfo`: /etc/hosts, then DNS, as `nsswitch.conf` says), the
/// one redis-server itself uses for a `replicaof` by name.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, name: &str) -> Result<Ipv4Addr, String> {
        let addrs = (name, 0u16)
            .to_socket_addrs()
            .map_err(|e| format!("{name} does not resolve: {e}"))?;
        first_ipv4(addrs).ok_or_else(|| format!("{name} has no IPv4 address"))
    }
}

/// The first IPv4 address of a lookup: the data plane forwards IPv4 only.
pub fn first_ipv4(addrs: impl IntoIterator<Item = std::net::SocketAddr>) -> Option<Ipv4Addr> {
    addrs.into_iter().find_map(|a| match a {
        std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
        std::net::SocketAddr::V6(_) => None,
    })
}

/// A hosts table for unit tests: names resolve only inside the test.
#[cfg(test)]
pub struct FixedHosts<'a>(pub &'a [(&'a str, &'a str)]);

#[cfg(test)]
impl Resolver for FixedHosts<'_> {
    fn resolve(&self, name: &str) -> Result<Ipv4Addr, String> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, ip)| ip.parse().expect("a test's address"))
            .ok_or_else(|| format!("{name} does not resolve: not in the test's hosts"))
    }
}
