//! Validating `[dataplane]`: interfaces, hook, pin directory, client networks, table size
//! and NAT, each refusal naming the key.

use std::{collections::HashSet, net::Ipv4Addr, path::PathBuf};

use toml::Spanned;

use super::{
    DataplaneConfig, FLOW_TABLE_RANGE,
    load::RawDataplane,
    nat,
    validate::{Problem, problem},
};

pub(super) fn validate_dataplane(dp: &Spanned<RawDataplane>) -> Result<DataplaneConfig, Problem> {
    let raw = dp.get_ref();
    if raw.interfaces.get_ref().is_empty() {
        return Err(problem(
            &raw.interfaces,
            "dataplane.interfaces",
            "lists no interface: name those where client packets and backend replies arrive",
        ));
    }
    let mut seen = HashSet::new();
    for (i, ifname) in raw.interfaces.get_ref().iter().enumerate() {
        let name = ifname.get_ref();
        // IFNAMSIZ is 16 including the terminating NUL.
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(problem(
                ifname,
                format!("dataplane.interfaces[{i}]"),
                format!("{name:?} is not a valid interface name"),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(problem(
                ifname,
                format!("dataplane.interfaces[{i}]"),
                format!("{name:?} is listed twice"),
            ));
        }
    }
    let backend_interfaces = backend_interfaces(raw)?;
    let d = DataplaneConfig::default();
    let pin_dir = match &raw.pin_dir {
        None => d.pin_dir,
        Some(p) => {
            let path = PathBuf::from(p.get_ref());
            if !path.is_absolute() || p.get_ref().contains('.') {
                return Err(problem(
                    p,
                    "dataplane.pin_dir",
                    format!(
                        "{:?} must be an absolute path on bpffs without '.' (bpffs refuses it)",
                        p.get_ref()
                    ),
                ));
            }
            path
        }
    };
    let client_networks = match &raw.client_networks {
        None => d.client_networks,
        Some(list) => client_networks(list)?,
    };
    let flow_table_size = match &raw.flow_table_size {
        None => d.flow_table_size,
        Some(n) => u32::try_from(*n.get_ref())
            .ok()
            .filter(|v| FLOW_TABLE_RANGE.contains(v))
            .ok_or_else(|| {
                problem(
                    n,
                    "dataplane.flow_table_size",
                    format!(
                        "{} entries is out of range: {}..={} (one entry per connection)",
                        n.get_ref(),
                        FLOW_TABLE_RANGE.start(),
                        FLOW_TABLE_RANGE.end()
                    ),
                )
            })?,
    };
    let nat = raw.nat.unwrap_or(d.nat);
    let nat_address = raw
        .nat_address
        .as_ref()
        .map(|a| nat::parse_address(a, nat))
        .transpose()?;
    let nat_ports = raw
        .nat_ports
        .as_ref()
        .map(nat::parse_ports)
        .transpose()?
        .unwrap_or(d.nat_ports);
    Ok(DataplaneConfig {
        nat,
        nat_address,
        nat_ports,
        client_networks,
        backend_interfaces,
        flow_table_size,
        veth_peer_redirect: raw.veth_peer_redirect.unwrap_or(d.veth_peer_redirect),
        interfaces: raw
            .interfaces
            .get_ref()
            .iter()
            .map(|s| s.get_ref().clone())
            .collect(),
        xdp_mode: raw.xdp_mode.unwrap_or(d.xdp_mode),
        pin_dir,
        // Filled in once `[controller]` is known (`secret::flow_hash_key`).
        flow_hash_key: d.flow_hash_key,
    })
}

/// `dataplane.backend_interfaces`: each one of `interfaces`, none twice.
fn backend_interfaces(raw: &RawDataplane) -> Result<Vec<String>, Problem> {
    let Some(list) = &raw.backend_interfaces else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = Vec::new();
    for (i, name) in list.iter().enumerate() {
        let key = format!("dataplane.backend_interfaces[{i}]");
        let listed = raw
            .interfaces
            .get_ref()
            .iter()
            .any(|n| n.get_ref() == name.get_ref());
        if !listed {
            return Err(problem(
                name,
                key,
                format!(
                    "{:?} is not one of dataplane.interfaces: the program sees only those",
                    name.get_ref()
                ),
            ));
        }
        if out.contains(name.get_ref()) {
            return Err(problem(
                name,
                key,
                format!("{:?} is listed twice", name.get_ref()),
            ));
        }
        out.push(name.get_ref().clone());
    }
    Ok(out)
}

/// `dataplane.client_networks`, each `"198.18.0.0/24"`.
fn client_networks(list: &[Spanned<String>]) -> Result<Vec<(Ipv4Addr, u8)>, Problem> {
    let mut client_networks = Vec::new();
    for (i, net) in list.iter().enumerate() {
        let bad = || {
            problem(
                net,
                format!("dataplane.client_networks[{i}]"),
                format!(
                    "{:?} is not an IPv4 network like \"198.18.0.0/24\"",
                    net.get_ref()
                ),
            )
        };
        let (addr, len) = net.get_ref().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        client_networks.push((addr, len));
    }
    Ok(client_networks)
}
