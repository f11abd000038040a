//! The writes that bring a list map to the list the controller wants.
//!
//! Four maps hold a plain list the controller keeps exact: `FLOATING` (the floating addresses
//! and their ARP lease), `CLIENT_NETS`, `PEER_DEVS` and `ACCEPT_LOCAL` (saved sysctl values).
//! Nothing in the program follows a pointer from one of their entries to another map, so the
//! only order that matters is within one list: every wanted entry is written before any stale
//! one is removed, and an entry listed both before and after never disappears in between.
//! [`super::Dataplane`]'s `set_*` methods read one list, plan with these functions and apply
//! each write through [`super::Dataplane::apply`], like the service maps' [`super::plan`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use super::MapOp;

/// Makes `FLOATING` hold exactly `addresses`, each with a lease until `until_ns`.
pub fn plan_floating(
    current: &BTreeMap<[u8; 4], u64>,
    addresses: &[Ipv4Addr],
    until_ns: u64,
) -> Vec<MapOp> {
    let wanted = addresses.iter().map(|a| (a.octets(), until_ns)).collect();
    exact(
        current,
        &wanted,
        |addr, until_ns| MapOp::SetFloating { addr, until_ns },
        |addr| MapOp::RemoveFloating { addr },
    )
}

/// Makes `CLIENT_NETS` hold exactly `nets` (network, prefix length).
pub fn plan_client_nets(current: &BTreeSet<([u8; 4], u32)>, nets: &[(Ipv4Addr, u8)]) -> Vec<MapOp> {
    let wanted = nets
        .iter()
        .map(|(net, len)| ((net.octets(), u32::from(*len)), ()))
        .collect();
    exact(
        &present(current),
        &wanted,
        |(net, prefix_len), ()| MapOp::AddClientNet { net, prefix_len },
        |(net, prefix_len)| MapOp::RemoveClientNet { net, prefix_len },
    )
}

/// Makes `PEER_DEVS` hold exactly `ifindexes`.
pub fn plan_peer_devs(current: &BTreeSet<u32>, ifindexes: &[u32]) -> Vec<MapOp> {
    let wanted = ifindexes.iter().map(|i| (*i, ())).collect();
    exact(
        &present(current),
        &wanted,
        |ifindex, ()| MapOp::AddPeerDev { ifindex },
        |ifindex| MapOp::RemovePeerDev { ifindex },
    )
}

pub fn plan_interface_macs(
    current: &BTreeMap<u32, [u8; 6]>,
    macs: &[(u32, [u8; 6])],
) -> Vec<MapOp> {
    exact(
        current,
        &macs.iter().copied().collect(),
        |ifindex, mac| MapOp::SetInterfaceMac { ifindex, mac },
        |ifindex| MapOp::RemoveInterfaceMac { ifindex },
    )
}

pub fn plan_interface_roles(current: &BTreeMap<u32, u32>, roles: &[(u32, u32)]) -> Vec<MapOp> {
    exact(
        current,
        &roles.iter().copied().collect(),
        |ifindex, role| MapOp::SetInterfaceRole { ifindex, role },
        |ifindex| MapOp::RemoveInterfaceRole { ifindex },
    )
}

/// A set as a map whose values say nothing.
fn present<K: Ord + Copy>(set: &BTreeSet<K>) -> BTreeMap<K, ()> {
    set.iter().map(|k| (*k, ())).collect()
}

/// The entries missing from `current` or different there, then the removal of those
/// `wanted` does not list.
fn exact<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
    set: impl Fn(K, V) -> MapOp,
    remove: impl Fn(K) -> MapOp,
) -> Vec<MapOp> {
    let writes = wanted
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| set(*k, *v));
    let removals = current
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .map(|k| remove(*k));
    writes.chain(removals).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    #[test]
    fn a_moved_lease_rewrites_every_address_and_removes_nothing() {
        let current = [(ip(1).octets(), 10), (ip(2).octets(), 10)].into();
        assert_eq!(
            plan_floating(&current, &[ip(1), ip(2)], 20),
            vec![
                MapOp::SetFloating {
                    addr: ip(1).octets(),
                    until_ns: 20
                },
                MapOp::SetFloating {
                    addr: ip(2).octets(),
                    until_ns: 20
                },
            ]
        );
        assert!(plan_floating(&current, &[ip(2), ip(1)], 10).is_empty());
    }

    #[test]
    fn stale_entries_go_after_every_new_one() {
        let current = [(ip(1).octets(), 10), (ip(9).octets(), 10)].into();
        let ops = plan_floating(&current, &[ip(5), ip(1)], 0);
        assert_eq!(
            ops,
            vec![
                MapOp::SetFloating {
                    addr: ip(1).octets(),
                    until_ns: 0
                },
                MapOp::SetFloating {
                    addr: ip(5).octets(),
                    until_ns: 0
                },
                MapOp::RemoveFloating {
                    addr: ip(9).octets()
                },
            ]
        );
    }

    #[test]
    fn client_networks_and_peer_devices_keep_what_stays() {
        let current = [(ip(0).octets(), 24), ([10, 0, 0, 0], 8)].into();
        assert_eq!(
            plan_client_nets(&current, &[(ip(0), 24), (ip(0), 16)]),
            vec![
                MapOp::AddClientNet {
                    net: ip(0).octets(),
                    prefix_len: 16
                },
                MapOp::RemoveClientNet {
                    net: [10, 0, 0, 0],
                    prefix_len: 8
                },
            ]
        );
        assert_eq!(
            plan_peer_devs(&[3, 4].into(), &[4, 7, 7]),
            vec![
                MapOp::AddPeerDev { ifindex: 7 },
                MapOp::RemovePeerDev { ifindex: 3 },
            ]
        );
        assert!(plan_peer_devs(&BTreeSet::new(), &[]).is_empty());
    }
}
