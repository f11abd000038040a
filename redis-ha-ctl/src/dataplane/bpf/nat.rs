//! What NAT needs from the host: its own IPv4 addresses (which backends are local, the
//! default full-NAT source address), forwarding on the data-plane interfaces, and the source
//! ports kept out of the kernel's ephemeral range. Then the `NAT` map value a config gives.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use redis_ha_common::{NatConfig, nat_mode};

use super::BpfError;
use crate::config::{DataplaneConfig, NatMode, NatPorts};

/// Every IPv4 address configured on this host's interfaces (the current network namespace),
/// with the interface it is on.
pub fn host_addresses() -> Vec<(String, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list it points `list` at, freed below; every node and
    // the strings and addresses it points at live until then.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut node = list;
        while !node.is_null() {
            let ifa = &*node;
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
                out.push((name.into_owned(), ip));
            }
            node = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

/// The host's addresses, for [`crate::dataplane::ServiceTarget::on_host`].
pub fn local_addresses() -> BTreeSet<Ipv4Addr> {
    host_addresses().into_iter().map(|(_, ip)| ip).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NatSetupError {
    #[error(
        "nat = \"full\": interface {0} has no IPv4 address to translate connections from: \
         give it one, or set [dataplane] nat_address"
    )]
    NoAddress(String),
    #[error(
        "nat = \"full\": nat_address {0} is not an address of this host: a backend's replies \
         would never come back here"
    )]
    NotLocal(Ipv4Addr),
    #[error(
        "nat = \"full\": forwarding is off on {iface} (net.ipv4.conf.{iface}.forwarding = 0): \
         the node holding the VIP forwards connections to the other nodes. Turn it on \
         (`sysctl -w net.ipv4.conf.{iface}.forwarding=1`, and in /etc/sysctl.d to keep it)"
    )]
    NoForwarding { iface: String },
}

/// The `NAT` value for `cfg` on this host, after checking that the host can do it.
pub fn nat_config(cfg: &DataplaneConfig) -> Result<NatConfig, BpfError> {
    if cfg.nat == NatMode::Destination {
        return Ok(NatConfig::default());
    }
    let addresses = host_addresses();
    let ip = match cfg.nat_address {
        Some(ip) if addresses.iter().any(|(_, a)| *a == ip) => ip,
        Some(ip) => return Err(NatSetupError::NotLocal(ip).into()),
        None => {
            let first = &cfg.interfaces[0];
            addresses
                .iter()
                .find(|(iface, _)| iface == first)
                .map(|(_, ip)| *ip)
                .ok_or_else(|| NatSetupError::NoAddress(first.clone()))?
        }
    };
    for iface in &cfg.interfaces {
        let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"));
        // An interface the kernel does not know fails later, at attach, with its own error.
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            return Err(NatSetupError::NoForwarding {
                iface: iface.clone(),
            }
            .into());
        }
    }
    reserve_ports(cfg.nat_ports)?;
    Ok(NatConfig {
        mode: nat_mode::FULL,
        ip: ip.octets(),
        port_min: cfg.nat_ports.first,
        port_max: cfg.nat_ports.last,
        _pad: 0,
    })
}

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Keeps the kernel from giving the node's own connections a port of `ports` (which would
/// then look like a translation's): when the range overlaps `ip_local_port_range`, it is
/// added to `ip_local_reserved_ports`. Left there on unload: reserving a port only narrows
/// which ports the kernel picks by itself.
fn reserve_ports(ports: NatPorts) -> Result<(), BpfError> {
    let io = |what, path: &str| {
        let path = PathBuf::from(path);
        move |source| BpfError::Io { what, path, source }
    };
    let range = std::fs::read_to_string(PORT_RANGE).map_err(io("reading", PORT_RANGE))?;
    let mut bounds = range
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    let (Some(low), Some(high)) = (bounds.next(), bounds.next()) else {
        return Ok(());
    };
    if ports.last < low || ports.first > high {
        return Ok(());
    }
    let reserved = std::fs::read_to_string(RESERVED).map_err(io("reading", RESERVED))?;
    let wanted = merge_reserved(reserved.trim(), ports);
    if wanted != reserved.trim() {
        std::fs::write(RESERVED, &wanted).map_err(io("writing", RESERVED))?;
        tracing::info!(
            "nat_ports {ports} overlaps the kernel's ephemeral ports ({low}-{high}): \
             reserved them in net.ipv4.ip_local_reserved_ports"
        );
    }
    Ok(())
}

/// `reserved` (the sysctl's "a,b-c" list) with `ports` added.
fn merge_reserved(reserved: &str, ports: NatPorts) -> String {
    let entry = format!("{}-{}", ports.first, ports.last);
    if reserved.split(',').any(|e| e.trim() == entry) {
        return reserved.to_owned();
    }
    if reserved.is_empty() {
        entry
    } else {
        format!("{reserved},{entry}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_gain_the_range_once() {
        let ports = NatPorts {
            first: 40000,
            last: 40999,
        };
        assert_eq!(merge_reserved("", ports), "40000-40999");
        assert_eq!(merge_reserved("8080", ports), "8080,40000-40999");
        assert_eq!(
            merge_reserved("8080,40000-40999", ports),
            "8080,40000-40999"
        );
    }

    #[test]
    fn a_host_has_its_loopback_address() {
        assert!(local_addresses().contains(&Ipv4Addr::LOCALHOST));
    }
}
