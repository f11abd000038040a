//! [`Dataplane`] on the pinned maps: the reads the planners start from, and the one place the
//! controller writes a map. Every write is a [`MapOp`], so the order the planners give (a
//! slot filled before anything points at it, a new list entry before a stale one goes) is the
//! order the kernel sees.
//!
//! One write is no `MapOp`: the connection-table sweep ([`BpfDataplane::sweep_flows`]), with
//! the full-NAT ports it frees.
//! `FLOWS` belongs to the program, which adds and rewrites entries on every packet; the sweep
//! removes an entry only if it is still as it was read, which a plain write cannot say, and
//! nothing the planners order ever points at a connection entry.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use aya::maps::{MapError, MapInfo, lpm_trie::Key};
use redis_ha_common::{
    AddrKey, Backend, FloatingLease, Flow, FlowKey, InterfaceMac, MAX_BACKENDS, MAX_SERVICES,
    NatKey, ServiceState, map_name, ring_index,
};

use super::{BpfDataplane, BpfError, map_err};
use crate::dataplane::{Dataplane, MapOp, Snapshot};

impl Dataplane for BpfDataplane {
    type Error = BpfError;

    fn snapshot(&self) -> Result<Snapshot, BpfError> {
        let mut snap = Snapshot::default();
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(map_err(map_name::SERVICES))?;
            snap.ports.insert((k.vip, k.port), v);
        }
        for id in 0..MAX_SERVICES {
            let s = self
                .state
                .get(&id, 0)
                .map_err(map_err(map_name::SERVICE_STATE))?;
            if s != ServiceState::default() {
                snap.states.insert(id, s);
            }
        }
        for slot in 1..MAX_BACKENDS {
            let b = self
                .backends
                .get(&slot, 0)
                .map_err(map_err(map_name::BACKENDS))?;
            if b != Backend::default() {
                snap.backends.insert(slot, b);
            }
        }
        Ok(snap)
    }

    // The list maps are read entry by entry; one removed between listing its key and reading
    // it is simply left out.

    fn floating_leases(&self) -> Result<BTreeMap<[u8; 4], u64>, BpfError> {
        Ok(self
            .floating
            .iter()
            .filter_map(Result::ok)
            .map(|(addr, lease)| (addr, lease.until_ns))
            .collect())
    }

    fn client_networks(&self) -> Result<BTreeSet<([u8; 4], u32)>, BpfError> {
        Ok(self
            .client_nets
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.data(), k.prefix_len()))
            .collect())
    }

    fn peer_devices(&self) -> Result<BTreeSet<u32>, BpfError> {
        Ok(self.peer_devs.keys().filter_map(Result::ok).collect())
    }

    fn saved_accept_local(&self) -> Result<BTreeMap<[u8; 16], u32>, BpfError> {
        Ok(self.accept_local.iter().filter_map(Result::ok).collect())
    }

    fn interface_macs(&self) -> Result<BTreeMap<u32, [u8; 6]>, BpfError> {
        Ok(self
            .if_macs
            .iter()
            .filter_map(Result::ok)
            .map(|(i, m)| (i, m.mac))
            .collect())
    }

    fn interface_roles(&self) -> Result<BTreeMap<u32, u32>, BpfError> {
        Ok(self.if_roles.iter().filter_map(Result::ok).collect())
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), BpfError> {
        match op {
            MapOp::SetBackend { slot, backend } => {
                // BACKEND_ADDRS mirrors BACKENDS: the new address is findable before the slot
                // holds it, the old one is forgotten only after.
                let old = self
                    .backends
                    .get(slot, 0)
                    .map_err(map_err(map_name::BACKENDS))?;
                let key = |b: &Backend| AddrKey {
                    ip: b.ip,
                    port: b.port,
                    _pad: 0,
                };
                if *backend != Backend::default() {
                    self.backend_addrs
                        .insert(key(backend), slot, 0)
                        .map_err(map_err(map_name::BACKEND_ADDRS))?;
                }
                self.backends
                    .set(*slot, backend, 0)
                    .map_err(map_err(map_name::BACKENDS))?;
                if old != Backend::default() && (old.ip, old.port) != (backend.ip, backend.port) {
                    // Absent already is fine: the mirror may predate this map (older pins).
                    let _ = self.backend_addrs.remove(&key(&old));
                }
                Ok(())
            }
            MapOp::SetPort { key, port } => self
                .services
                .insert(key, port, 0)
                .map_err(map_err(map_name::SERVICES)),
            MapOp::RemovePort { key } => self
                .services
                .remove(key)
                .map_err(map_err(map_name::SERVICES)),
            MapOp::SetRing {
                service_id,
                half,
                table,
            } => {
                for (i, slot) in table.iter().enumerate() {
                    self.ring
                        .set(ring_index(*service_id, *half, i as u32), slot, 0)
                        .map_err(map_err(map_name::READ_RING))?;
                }
                Ok(())
            }
            MapOp::SetState { service_id, state } => self
                .state
                .set(*service_id, state, 0)
                .map_err(map_err(map_name::SERVICE_STATE)),
            MapOp::SetFloating { addr, until_ns } => self
                .floating
                .insert(
                    addr,
                    FloatingLease {
                        until_ns: *until_ns,
                    },
                    0,
                )
                .map_err(map_err(map_name::FLOATING)),
            MapOp::RemoveFloating { addr } => self
                .floating
                .remove(addr)
                .map_err(map_err(map_name::FLOATING)),
            MapOp::AddClientNet { net, prefix_len } => self
                .client_nets
                .insert(&Key::new(*prefix_len, *net), 1, 0)
                .map_err(map_err(map_name::CLIENT_NETS)),
            MapOp::RemoveClientNet { net, prefix_len } => self
                .client_nets
                .remove(&Key::new(*prefix_len, *net))
                .map_err(map_err(map_name::CLIENT_NETS)),
            MapOp::AddPeerDev { ifindex } => self
                .peer_devs
                .insert(ifindex, 1, 0)
                .map_err(map_err(map_name::PEER_DEVS)),
            MapOp::RemovePeerDev { ifindex } => self
                .peer_devs
                .remove(ifindex)
                .map_err(map_err(map_name::PEER_DEVS)),
            MapOp::SaveAcceptLocal { iface, value } => self
                .accept_local
                .insert(iface, value, 0)
                .map_err(map_err(map_name::ACCEPT_LOCAL)),
            MapOp::ForgetAcceptLocal { iface } => self
                .accept_local
                .remove(iface)
                .map_err(map_err(map_name::ACCEPT_LOCAL)),
            MapOp::SetInterfaceMac { ifindex, mac } => self
                .if_macs
                .insert(
                    ifindex,
                    InterfaceMac {
                        mac: *mac,
                        _pad: [0; 2],
                    },
                    0,
                )
                .map_err(map_err(map_name::IF_MACS)),
            MapOp::RemoveInterfaceMac { ifindex } => self
                .if_macs
                .remove(ifindex)
                .map_err(map_err(map_name::IF_MACS)),
            MapOp::SetNat { nat } => self.nat.set(0, nat, 0).map_err(map_err(map_name::NAT)),
            MapOp::SetInterfaceRole { ifindex, role } => self
                .if_roles
                .insert(ifindex, role, 0)
                .map_err(map_err(map_name::IF_ROLES)),
            MapOp::RemoveInterfaceRole { ifindex } => self
                .if_roles
                .remove(ifindex)
                .map_err(map_err(map_name::IF_ROLES)),
            MapOp::SetFlowHashKey { key } => self
                .flow_hash_key
                .set(0, key, 0)
                .map_err(map_err(map_name::FLOW_HASH_KEY)),
        }
    }
}

/// What a pass of [`BpfDataplane::sweep_flows`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSweep {
    /// Entries left in both tables.
    pub entries: usize,
    pub removed: usize,
    /// Full-NAT source ports freed because no connection entry held them any more.
    pub ports_freed: usize,
}

impl BpfDataplane {
    /// Removes from `FLOWS` what [`sweep::select`](crate::dataplane::sweep::select) picks at
    /// `now_ns` (CLOCK_MONOTONIC); returns the entries left in `FLOWS` and `FLOWS_SPILL`, and
    /// how many were removed.
    pub fn sweep_flows(&mut self, now_ns: u64) -> Result<FlowSweep, BpfError> {
        let pin = self.pin_dir.join(map_name::FLOWS);
        let capacity = MapInfo::from_pin(&pin)
            .map_err(map_err(map_name::FLOWS))?
            .max_entries() as usize;
        let entries: Vec<(FlowKey, Flow)> = self.flows.iter().filter_map(Result::ok).collect();
        // Only counted: the sweep leaves the spill table to its own LRU.
        let spilled = self.flows_spill.keys().filter(Result::is_ok).count();
        let read: std::collections::HashMap<FlowKey, Flow> = entries.iter().copied().collect();
        let mut removed = 0;
        for key in crate::dataplane::sweep::select(&entries, now_ns, capacity) {
            // The program may have reused the key for a new connection since it was read: only
            // an entry still as it was goes. (What changes between this read and the removal
            // is a packet's worth of time; the worst case is a connection re-admitted by its
            // next packet, as after an LRU eviction.)
            let now = self.flows.get(&key, 0).ok();
            if let Some(flow) = now
                && Some(&flow) == read.get(&key)
                && self.flows.remove(&key).is_ok()
            {
                removed += 1;
                if flow.nat_port != 0 {
                    self.free_nat_port(&key, &flow)?;
                }
            }
        }
        let ports_freed = self.sweep_nat_ports()?;
        Ok(FlowSweep {
            entries: entries.len() - removed + spilled,
            removed,
            ports_freed,
        })
    }

    /// Frees the full-NAT port of `flow`, whose entry at `key` the sweep removed, if the port
    /// still names that connection.
    fn free_nat_port(&mut self, key: &FlowKey, flow: &Flow) -> Result<(), BpfError> {
        let nat = NatKey {
            backend_ip: flow.backend_ip,
            backend_port: flow.backend_port,
            nat_port: flow.nat_port,
        };
        if self.nat_ports.get(&nat, 0).ok().as_ref() == Some(key) {
            match self.nat_ports.remove(&nat) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_name::NAT_PORTS)(e)),
            }
        }
        Ok(())
    }

    /// Frees the full-NAT ports no connection entry holds any more (an entry the spill
    /// table evicted, or replaced by a connection that took another port). A port is freed
    /// only when a second pass finds it still held by nobody: the program takes a port just
    /// before it inserts the connection's entry, and a pass must not catch it in between.
    fn sweep_nat_ports(&mut self) -> Result<usize, BpfError> {
        let taken: Vec<(NatKey, FlowKey)> = self.nat_ports.iter().filter_map(Result::ok).collect();
        let held = |nat: &NatKey, key: &FlowKey| {
            let flow = self
                .flows
                .get(key, 0)
                .or_else(|_| self.flows_spill.get(key, 0));
            flow.is_ok_and(|f| {
                f.nat_port == nat.nat_port
                    && f.backend_ip == nat.backend_ip
                    && f.backend_port == nat.backend_port
            })
        };
        let orphans: HashSet<(NatKey, FlowKey)> = taken
            .into_iter()
            .filter(|(nat, key)| !held(nat, key))
            .collect();
        let mut freed = 0;
        for (nat, key) in orphans.intersection(&self.nat_orphans) {
            if self.nat_ports.get(nat, 0).ok().as_ref() == Some(key)
                && self.nat_ports.remove(nat).is_ok()
            {
                freed += 1;
            }
        }
        self.nat_orphans = orphans;
        Ok(freed)
    }
}
