//! The controller's writes to the pinned maps: [`Dataplane`] (the snapshot the planner starts
//! from and each [`MapOp`] it orders), the list maps kept exact (client networks, veth peers,
//! floating addresses' ARP leases), and the connection-table sweep.

use aya::maps::{HashMap, MapData, MapInfo, lpm_trie::Key};
use redis_ha_common::{
    AddrKey, Backend, FloatingLease, Flow, FlowKey, MAX_BACKENDS, MAX_SERVICES, ServiceState,
    map_name, ring_index,
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
        }
    }
}

/// What a pass of [`BpfDataplane::sweep_flows`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSweep {
    /// Entries left in both tables.
    pub entries: usize,
    pub removed: usize,
}

/// Makes the hash map `map` (pinned as `name`) hold exactly `wanted`: new entries first, then
/// stale ones removed, so a key listed both before and after never disappears in between.
fn sync_hash<K: aya::Pod + PartialEq, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    wanted: &[(K, V)],
) -> Result<(), BpfError> {
    for (k, v) in wanted {
        map.insert(k, v, 0).map_err(map_err(name))?;
    }
    let present: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in present {
        if !wanted.iter().any(|(k, _)| *k == key) {
            map.remove(&key).map_err(map_err(name))?;
        }
    }
    Ok(())
}

impl BpfDataplane {
    /// Makes `CLIENT_NETS` hold exactly `nets` (added first, then stale ones removed, so a
    /// network listed both before and after never disappears in between).
    pub fn set_client_networks(
        &mut self,
        nets: &[(std::net::Ipv4Addr, u8)],
    ) -> Result<(), BpfError> {
        let wanted: Vec<Key<[u8; 4]>> = nets
            .iter()
            .map(|(addr, len)| Key::new(u32::from(*len), addr.octets()))
            .collect();
        for key in &wanted {
            self.client_nets
                .insert(key, 1, 0)
                .map_err(map_err(map_name::CLIENT_NETS))?;
        }
        // aya's Key keeps its fields private; it is a packed (u32, [u8; 4]), so compare bytes.
        let bytes = |k: &Key<[u8; 4]>| -> [u8; 8] {
            // SAFETY: Key<[u8; 4]> is #[repr(C, packed)] of a u32 and 4 bytes: exactly 8
            // initialised bytes, any of which is a valid u8.
            unsafe { std::mem::transmute_copy(k) }
        };
        let present: Vec<Key<[u8; 4]>> = self.client_nets.keys().filter_map(Result::ok).collect();
        for key in present {
            let listed = wanted.iter().any(|w| bytes(w) == bytes(&key));
            if !listed {
                self.client_nets
                    .remove(&key)
                    .map_err(map_err(map_name::CLIENT_NETS))?;
            }
        }
        Ok(())
    }

    /// Makes `PEER_DEVS` hold exactly `ifindexes`.
    pub(super) fn set_peer_devices(&mut self, ifindexes: &[u32]) -> Result<(), BpfError> {
        let wanted: Vec<(u32, u32)> = ifindexes.iter().map(|i| (*i, 1)).collect();
        sync_hash(&mut self.peer_devs, map_name::PEER_DEVS, &wanted)
    }

    /// Makes `FLOATING` hold exactly these addresses, each answering ARP until `until_ns`
    /// (`CLOCK_MONOTONIC`; 0: not at all). Stale entries are removed after the new ones are in.
    pub fn set_floating_leases(
        &mut self,
        addresses: &[std::net::Ipv4Addr],
        until_ns: u64,
    ) -> Result<(), BpfError> {
        let wanted: Vec<([u8; 4], FloatingLease)> = addresses
            .iter()
            .map(|a| (a.octets(), FloatingLease { until_ns }))
            .collect();
        sync_hash(&mut self.floating, map_name::FLOATING, &wanted)
    }

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
            if now.is_some() && now.as_ref() == read.get(&key) && self.flows.remove(&key).is_ok() {
                removed += 1;
            }
        }
        Ok(FlowSweep {
            entries: entries.len() - removed + spilled,
            removed,
        })
    }
}
