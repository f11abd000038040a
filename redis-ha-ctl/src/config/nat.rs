//! `[dataplane] nat`, `nat_address` and `nat_ports`: how a node translates the connections it
//! forwards, and the checks that keep its source ports clear of every port the node serves.

use std::{fmt, net::Ipv4Addr, ops::RangeInclusive};

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use super::{ServiceConfig, validate::Problem};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatMode {
    /// Only the destination is rewritten: backends see the client's own address, so their
    /// replies must come back through this node (the LB is their gateway, clients on another
    /// subnet).
    #[default]
    Destination,
    /// The source too becomes this node's address and a port of `nat_ports`, as with HAProxy:
    /// backends and clients may share one subnet, and backends see the node's address.
    Full,
}

impl fmt::Display for NatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Destination => "destination",
            Self::Full => "full",
        })
    }
}

/// The source ports a full-NAT node gives its connections toward backends, both ends
/// included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPorts {
    pub first: u16,
    pub last: u16,
}

impl NatPorts {
    /// Above Linux's default ephemeral range (`ip_local_port_range` 32768-60999), so the
    /// node's own outgoing connections (replication, probes) never pick one of these; the
    /// load reserves the range anyway where that sysctl says otherwise.
    pub const DEFAULT: NatPorts = NatPorts {
        first: 61000,
        last: 65535,
    };

    pub fn range(self) -> RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl fmt::Display for NatPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Written as the file spells it.
impl Serialize for NatPorts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Ports below this are left to services: a source port there could be one a backend or the
/// node itself listens on.
const LOWEST: u16 = 1024;

/// `dataplane.nat_ports`, written "FIRST-LAST".
pub(super) fn parse_ports(text: &Spanned<String>) -> Result<NatPorts, Problem> {
    let bad = |why: &str| Problem {
        span: text.span(),
        key: "dataplane.nat_ports".into(),
        message: format!("dataplane.nat_ports: {:?} {why}", text.get_ref()),
    };
    let (first, last) = text
        .get_ref()
        .split_once('-')
        .ok_or_else(|| bad("is not a range: write FIRST-LAST, e.g. \"61000-65535\""))?;
    let port = |p: &str| p.trim().parse::<u16>().ok();
    let (Some(first), Some(last)) = (port(first), port(last)) else {
        return Err(bad("is not a range of ports (1024-65535)"));
    };
    if first > last || first < LOWEST {
        return Err(bad("must go up and start at 1024 or above"));
    }
    Ok(NatPorts { first, last })
}

/// `dataplane.nat_address`: an IPv4 address, meaningful with `nat = "full"` only.
pub(super) fn parse_address(text: &Spanned<String>, mode: NatMode) -> Result<Ipv4Addr, Problem> {
    let bad = |message: String| Problem {
        span: text.span(),
        key: "dataplane.nat_address".into(),
        message: format!("dataplane.nat_address: {message}"),
    };
    if mode != NatMode::Full {
        return Err(bad("is only used with nat = \"full\"".into()));
    }
    text.get_ref()
        .parse()
        .map_err(|_| bad(format!("{:?} is not an IPv4 address", text.get_ref())))
}

/// A port the node serves inside its NAT range would have its translations collide with the
/// service's own connections: refused, naming the port and who uses it.
pub(super) fn check_ports_clear(
    ports: NatPorts,
    services: &[ServiceConfig],
    at: std::ops::Range<usize>,
) -> Result<(), Problem> {
    for (i, s) in services.iter().enumerate() {
        let used = [
            (s.write_port, format!("service[{i}].write_port")),
            (s.read_port, format!("service[{i}].read_port")),
        ]
        .into_iter()
        .chain(
            s.backends
                .iter()
                .enumerate()
                .map(|(b, a)| (a.port(), format!("service[{i}].backends[{b}]"))),
        );
        for (port, who) in used {
            if ports.range().contains(&port) {
                return Err(Problem {
                    span: at,
                    key: "dataplane.nat_ports".into(),
                    message: format!(
                        "dataplane.nat_ports: {ports} includes port {port} of {who}: choose a \
                         range clear of every port the services use"
                    ),
                });
            }
        }
    }
    Ok(())
}
