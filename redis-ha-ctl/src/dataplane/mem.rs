//! An in-memory data plane: the controller's maps as plain collections, behind the same
//! [`Dataplane`] trait as the pinned maps. Unit tests (here and in the controller) apply plans
//! to it one write at a time and check what packets would see after each.

use std::collections::{BTreeMap, BTreeSet};

use redis_ha_common::{Backend, FlowHashKey, NatConfig, ServiceState};

use super::{Dataplane, MapOp, Snapshot};

#[derive(Clone, Debug, Default)]
pub struct MemDataplane {
    /// `SERVICES`, `SERVICE_STATE` and `BACKENDS`, as the planner reads them.
    pub maps: Snapshot,
    /// `READ_RING`: (service_id, half) → table.
    pub rings: BTreeMap<(u32, u32), Vec<u32>>,
    /// `FLOATING`: address → end of its ARP lease (ns; 0: no ARP answers).
    pub floating: BTreeMap<[u8; 4], u64>,
    /// `CLIENT_NETS`: (network, prefix length).
    pub client_nets: BTreeSet<([u8; 4], u32)>,
    /// `PEER_DEVS`: ifindexes.
    pub peer_devs: BTreeSet<u32>,
    /// `ACCEPT_LOCAL`: interface key → the value saved before the first load.
    pub accept_local: BTreeMap<[u8; 16], u32>,
    /// `NAT[0]`.
    pub nat: NatConfig,
    /// `FLOW_HASH_KEY[0]`.
    pub flow_hash_key: FlowHashKey,
    /// `IF_MACS`: ifindex → MAC.
    pub if_macs: BTreeMap<u32, [u8; 6]>,
    /// `IF_ROLES`: ifindex → `if_role`.
    pub if_roles: BTreeMap<u32, u32>,
}

impl MemDataplane {
    /// Where a new write connection to `service_id` would go now.
    pub fn master_of(&self, service_id: u32) -> Option<Backend> {
        let st = self.maps.states.get(&service_id)?;
        self.maps.backends.get(&st.master).copied()
    }

    /// Slots new read connections of `service_id` can land on now.
    pub fn live_ring_slots(&self, service_id: u32) -> BTreeSet<u32> {
        let Some(st) = self.maps.states.get(&service_id) else {
            return BTreeSet::new();
        };
        self.rings
            .get(&(service_id, st.ring_active))
            .map(|t| t.iter().copied().filter(|s| *s != 0).collect())
            .unwrap_or_default()
    }
}

impl Dataplane for MemDataplane {
    type Error = std::convert::Infallible;

    fn snapshot(&self) -> Result<Snapshot, Self::Error> {
        Ok(self.maps.clone())
    }

    fn floating_leases(&self) -> Result<BTreeMap<[u8; 4], u64>, Self::Error> {
        Ok(self.floating.clone())
    }

    fn client_networks(&self) -> Result<BTreeSet<([u8; 4], u32)>, Self::Error> {
        Ok(self.client_nets.clone())
    }

    fn peer_devices(&self) -> Result<BTreeSet<u32>, Self::Error> {
        Ok(self.peer_devs.clone())
    }

    fn saved_accept_local(&self) -> Result<BTreeMap<[u8; 16], u32>, Self::Error> {
        Ok(self.accept_local.clone())
    }

    fn interface_macs(&self) -> Result<BTreeMap<u32, [u8; 6]>, Self::Error> {
        Ok(self.if_macs.clone())
    }

    fn interface_roles(&self) -> Result<BTreeMap<u32, u32>, Self::Error> {
        Ok(self.if_roles.clone())
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error> {
        match op {
            MapOp::SetBackend { slot, backend } => {
                if *backend == Backend::default() {
                    self.maps.backends.remove(slot);
                } else {
                    self.maps.backends.insert(*slot, *backend);
                }
            }
            MapOp::SetPort { key, port } => {
                self.maps.ports.insert((key.vip, key.port), *port);
            }
            MapOp::RemovePort { key } => {
                self.maps.ports.remove(&(key.vip, key.port));
            }
            MapOp::SetRing {
                service_id,
                half,
                table,
            } => {
                self.rings.insert((*service_id, *half), table.clone());
            }
            MapOp::SetState { service_id, state } => {
                if *state == ServiceState::default() {
                    self.maps.states.remove(service_id);
                } else {
                    self.maps.states.insert(*service_id, *state);
                }
            }
            MapOp::SetFloating { addr, until_ns } => {
                self.floating.insert(*addr, *until_ns);
            }
            MapOp::RemoveFloating { addr } => {
                self.floating.remove(addr);
            }
            MapOp::AddClientNet { net, prefix_len } => {
                self.client_nets.insert((*net, *prefix_len));
            }
            MapOp::RemoveClientNet { net, prefix_len } => {
                self.client_nets.remove(&(*net, *prefix_len));
            }
            MapOp::AddPeerDev { ifindex } => {
                self.peer_devs.insert(*ifindex);
            }
            MapOp::RemovePeerDev { ifindex } => {
                self.peer_devs.remove(ifindex);
            }
            MapOp::SaveAcceptLocal { iface, value } => {
                self.accept_local.insert(*iface, *value);
            }
            MapOp::ForgetAcceptLocal { iface } => {
                self.accept_local.remove(iface);
            }
            MapOp::SetNat { nat } => self.nat = *nat,
            MapOp::SetFlowHashKey { key } => self.flow_hash_key = *key,
            MapOp::SetInterfaceMac { ifindex, mac } => {
                self.if_macs.insert(*ifindex, *mac);
            }
            MapOp::RemoveInterfaceMac { ifindex } => {
                self.if_macs.remove(ifindex);
            }
            MapOp::SetInterfaceRole { ifindex, role } => {
                self.if_roles.insert(*ifindex, *role);
            }
            MapOp::RemoveInterfaceRole { ifindex } => {
                self.if_roles.remove(ifindex);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        config::ServiceConfig,
        dataplane::{ServiceTarget, sync},
    };

    /// The fake, calling `check` on the maps after every write that goes through it.
    struct Checked<F> {
        dp: MemDataplane,
        writes: usize,
        check: F,
    }

    impl<F: FnMut(&MemDataplane)> Checked<F> {
        fn new(dp: MemDataplane, check: F) -> Self {
            Self {
                dp,
                writes: 0,
                check,
            }
        }
    }

    impl<F: FnMut(&MemDataplane)> Dataplane for Checked<F> {
        type Error = std::convert::Infallible;
        fn snapshot(&self) -> Result<Snapshot, Self::Error> {
            self.dp.snapshot()
        }
        fn floating_leases(&self) -> Result<BTreeMap<[u8; 4], u64>, Self::Error> {
            self.dp.floating_leases()
        }
        fn client_networks(&self) -> Result<BTreeSet<([u8; 4], u32)>, Self::Error> {
            self.dp.client_networks()
        }
        fn peer_devices(&self) -> Result<BTreeSet<u32>, Self::Error> {
            self.dp.peer_devices()
        }
        fn saved_accept_local(&self) -> Result<BTreeMap<[u8; 16], u32>, Self::Error> {
            self.dp.saved_accept_local()
        }
        fn interface_macs(&self) -> Result<BTreeMap<u32, [u8; 6]>, Self::Error> {
            self.dp.interface_macs()
        }
        fn interface_roles(&self) -> Result<BTreeMap<u32, u32>, Self::Error> {
            self.dp.interface_roles()
        }
        fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error> {
            self.dp.apply(op)?;
            self.writes += 1;
            (self.check)(&self.dp);
            Ok(())
        }
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    #[test]
    fn floating_leases_are_written_through_apply_and_an_address_that_stays_never_goes() {
        let mut dp = MemDataplane::default();
        dp.set_floating_leases(&[ip(1), ip(2)], 0).unwrap();
        assert_eq!(
            dp.floating,
            [(ip(1).octets(), 0), (ip(2).octets(), 0)].into()
        );

        // ip(2) is listed before and after: it must be there after every single write.
        let mut dp = Checked::new(dp, |m: &MemDataplane| {
            assert!(m.floating.contains_key(&ip(2).octets()), "{m:?}");
        });
        dp.set_floating_leases(&[ip(2), ip(3)], 5_000).unwrap();
        assert_eq!(dp.writes, 3, "two leases written, one address removed");
        assert_eq!(
            dp.dp.floating,
            [(ip(2).octets(), 5_000), (ip(3).octets(), 5_000)].into()
        );

        // The same lease again writes nothing; an empty list empties the map.
        dp.set_floating_leases(&[ip(3), ip(2)], 5_000).unwrap();
        assert_eq!(dp.writes, 3);
        let mut dp = dp.dp;
        dp.set_floating_leases(&[], 0).unwrap();
        assert!(dp.floating.is_empty());
    }

    #[test]
    fn client_networks_and_peer_devices_end_exactly_as_listed() {
        let mut dp = MemDataplane::default();
        dp.set_client_networks(&[(ip(0), 24), (Ipv4Addr::new(10, 0, 0, 0), 8)])
            .unwrap();
        dp.set_peer_devices(&[4, 5]).unwrap();
        let mut dp = Checked::new(dp, |m: &MemDataplane| {
            assert!(m.client_nets.contains(&(ip(0).octets(), 24)), "{m:?}");
            assert!(m.peer_devs.contains(&5), "{m:?}");
        });
        dp.set_client_networks(&[(ip(0), 24), (ip(0), 16)]).unwrap();
        dp.set_peer_devices(&[5, 6]).unwrap();
        assert_eq!(
            dp.dp.client_nets,
            [(ip(0).octets(), 24), (ip(0).octets(), 16)].into()
        );
        assert_eq!(dp.dp.peer_devs, [5, 6].into());
        assert_eq!(dp.writes, 4);
    }

    #[test]
    fn saved_accept_local_values_are_kept_until_forgotten() {
        let mut dp = MemDataplane::default();
        let eth0 = *b"eth0\0\0\0\0\0\0\0\0\0\0\0\0";
        dp.apply(&MapOp::SaveAcceptLocal {
            iface: eth0,
            value: 0,
        })
        .unwrap();
        assert_eq!(dp.saved_accept_local().unwrap(), [(eth0, 0)].into());
        dp.apply(&MapOp::ForgetAcceptLocal { iface: eth0 }).unwrap();
        assert!(dp.saved_accept_local().unwrap().is_empty());
    }

    #[test]
    fn service_syncs_and_list_writes_leave_each_other_alone() {
        let svc = ServiceConfig {
            name: "mymaster".into(),
            vip: ip(100),
            write_port: 6380,
            read_port: 6381,
            backends: ["198.18.1.11:6379", "198.18.1.12:6379"]
                .map(|s| s.parse().unwrap())
                .to_vec(),
            backend_specs: ["198.18.1.11:6379", "198.18.1.12:6379"]
                .map(|s| crate::config::BackendSpec::parse(s).unwrap())
                .to_vec(),
            resolve_hostnames: false,
            announce_hostnames: false,
            failover: Default::default(),
            tls: None,
        };
        let mut dp = MemDataplane::default();
        dp.set_floating_leases(&[ip(100)], 7).unwrap();
        sync(&mut dp, &[ServiceTarget::initial(0, &svc)]).unwrap();
        let services = dp.maps.clone();
        dp.set_floating_leases(&[ip(100)], 9).unwrap();
        assert_eq!(dp.maps, services);
        sync(&mut dp, &[]).unwrap();
        assert_eq!(dp.maps, Snapshot::default());
        assert_eq!(dp.floating, [(ip(100).octets(), 9)].into());
    }
}
