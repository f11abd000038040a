//! The typed handles on the pinned maps, taken once when a data plane is opened, so every
//! later read or write is checked against the map's key and value types and no map is looked
//! up by name again. Also which maps there are and where each is pinned, the key of
//! `ACCEPT_LOCAL`, and the check that refuses pinned maps this binary's program would misread.
//!
//! The handles are only opened here; `apply` writes them, `inspect` reads what the program
//! records.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray};
use redis_ha_common::{
    AddrKey, Backend, BackendStats, FloatingLease, Flow, FlowHashKey, FlowKey, InterfaceMac,
    NatConfig, NatKey, ServiceKey, ServicePort, ServiceState, map_name,
};

use super::{BpfError, map_err};

/// Handles on the pinned maps (see `redis-ha-ebpf/src/maps.rs` for what each holds, who
/// writes it and who reads it).
pub struct BpfDataplane {
    /// Where the maps, the program and its links are pinned; also where the sweep finds the
    /// connection table's capacity.
    pub(super) pin_dir: PathBuf,
    /// `SERVICES`: VIP and port → service and port kind.
    pub(super) services: HashMap<MapData, ServiceKey, ServicePort>,
    /// `SERVICE_STATE`: service → master slot, live Maglev table, epoch.
    pub(super) state: Array<MapData, ServiceState>,
    /// `BACKENDS`: slot → backend.
    pub(super) backends: Array<MapData, Backend>,
    /// `READ_RING`: the services' Maglev tables, two per service.
    pub(super) ring: Array<MapData, u32>,
    /// `FLOWS`: the connection table.
    pub(super) flows: HashMap<MapData, FlowKey, Flow>,
    /// `FLOWS_SPILL`: connections admitted while `FLOWS` was full.
    pub(super) flows_spill: HashMap<MapData, FlowKey, Flow>,
    /// `FLOWS_SPILLED`: when the program first had to spill.
    pub(super) flows_spilled: Array<MapData, u64>,
    /// `BACKEND_STATS`: per-slot traffic counters, per CPU.
    pub(super) backend_stats: PerCpuArray<MapData, BackendStats>,
    /// `COUNTERS`: what was done with each packet and why, per CPU.
    pub(super) counters: PerCpuArray<MapData, u64>,
    /// `BACKEND_ADDRS`: backend address → slot, the mirror of `BACKENDS`.
    pub(super) backend_addrs: HashMap<MapData, AddrKey, u32>,
    /// `CLIENT_NETS`: networks whose replies may be rewritten without a connection entry.
    pub(super) client_nets: LpmTrie<MapData, [u8; 4], u32>,
    /// `FLOATING`: floating address → end of this node's ARP lease.
    pub(super) floating: HashMap<MapData, [u8; 4], FloatingLease>,
    /// `PEER_DEVS`: veths the program delivers to the peer directly.
    pub(super) peer_devs: HashMap<MapData, u32, u32>,
    /// `ACCEPT_LOCAL`: interface → its `accept_local` before the first load.
    pub(super) accept_local: HashMap<MapData, [u8; 16], u32>,
    /// `IF_MACS`: data-plane interface → its MAC.
    pub(super) if_macs: HashMap<MapData, u32, InterfaceMac>,
    /// `IF_ROLES`: data-plane interface → what it faces (`if_role`).
    pub(super) if_roles: HashMap<MapData, u32, u32>,
    /// `FLOW_HASH_KEY`: the secret key of the replica choice.
    pub(super) flow_hash_key: Array<MapData, FlowHashKey>,
    /// `NAT`: this node's NAT mode, source address and ports.
    pub(super) nat: Array<MapData, NatConfig>,
    /// `NAT_PORTS`: full-NAT (backend, source port) → connection.
    pub(super) nat_ports: HashMap<MapData, NatKey, FlowKey>,
    /// Ports the last sweep found held by no connection, freed if the next finds them so too.
    pub(super) nat_orphans: std::collections::HashSet<(NatKey, FlowKey)>,
}

impl BpfDataplane {
    /// Opens the maps a previous `load` pinned.
    pub fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        if !pin_dir.join(map_name::SERVICES).exists() {
            return Err(BpfError::NotLoaded(pin_dir.to_owned()));
        }
        check_pinned_layout(pin_dir, false)?;
        let open = |name| open_pinned(pin_dir, name);
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            services: HashMap::try_from(open(map_name::SERVICES)?)
                .map_err(map_err(map_name::SERVICES))?,
            state: Array::try_from(open(map_name::SERVICE_STATE)?)
                .map_err(map_err(map_name::SERVICE_STATE))?,
            backends: Array::try_from(open(map_name::BACKENDS)?)
                .map_err(map_err(map_name::BACKENDS))?,
            ring: Array::try_from(open(map_name::READ_RING)?)
                .map_err(map_err(map_name::READ_RING))?,
            flows: HashMap::try_from(open(map_name::FLOWS)?).map_err(map_err(map_name::FLOWS))?,
            flows_spill: HashMap::try_from(open(map_name::FLOWS_SPILL)?)
                .map_err(map_err(map_name::FLOWS_SPILL))?,
            flows_spilled: Array::try_from(open(map_name::FLOWS_SPILLED)?)
                .map_err(map_err(map_name::FLOWS_SPILLED))?,
            backend_stats: PerCpuArray::try_from(open(map_name::BACKEND_STATS)?)
                .map_err(map_err(map_name::BACKEND_STATS))?,
            counters: PerCpuArray::try_from(open(map_name::COUNTERS)?)
                .map_err(map_err(map_name::COUNTERS))?,
            backend_addrs: HashMap::try_from(open(map_name::BACKEND_ADDRS)?)
                .map_err(map_err(map_name::BACKEND_ADDRS))?,
            client_nets: LpmTrie::try_from(open(map_name::CLIENT_NETS)?)
                .map_err(map_err(map_name::CLIENT_NETS))?,
            floating: HashMap::try_from(open(map_name::FLOATING)?)
                .map_err(map_err(map_name::FLOATING))?,
            peer_devs: HashMap::try_from(open(map_name::PEER_DEVS)?)
                .map_err(map_err(map_name::PEER_DEVS))?,
            accept_local: HashMap::try_from(open(map_name::ACCEPT_LOCAL)?)
                .map_err(map_err(map_name::ACCEPT_LOCAL))?,
            nat: Array::try_from(open(map_name::NAT)?).map_err(map_err(map_name::NAT))?,
            if_roles: HashMap::try_from(open(map_name::IF_ROLES)?)
                .map_err(map_err(map_name::IF_ROLES))?,
            flow_hash_key: Array::try_from(open(map_name::FLOW_HASH_KEY)?)
                .map_err(map_err(map_name::FLOW_HASH_KEY))?,
            if_macs: HashMap::try_from(open(map_name::IF_MACS)?)
                .map_err(map_err(map_name::IF_MACS))?,
            nat_ports: HashMap::try_from(open(map_name::NAT_PORTS)?)
                .map_err(map_err(map_name::NAT_PORTS))?,
            nat_orphans: Default::default(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

/// The map pinned as `name` under `pin_dir`.
pub(super) fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, BpfError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// Every map of the program, with the path it is (or will be) pinned at.
pub(super) type MapPins = Vec<(&'static str, PathBuf)>;

pub(super) fn map_pins(pin_dir: &Path) -> MapPins {
    [
        map_name::SERVICES,
        map_name::SERVICE_STATE,
        map_name::BACKENDS,
        map_name::READ_RING,
        map_name::FLOWS,
        map_name::FLOWS_SPILL,
        map_name::FLOWS_SPILLED,
        map_name::BACKEND_STATS,
        map_name::COUNTERS,
        map_name::BACKEND_ADDRS,
        map_name::CLIENT_NETS,
        map_name::FLOATING,
        map_name::PEER_DEVS,
        map_name::ACCEPT_LOCAL,
        map_name::NAT,
        map_name::NAT_PORTS,
        map_name::IF_MACS,
        map_name::FLOW_HASH_KEY,
        map_name::IF_ROLES,
    ]
    .into_iter()
    .map(|n| (n, pin_dir.join(n)))
    .collect()
}

/// Refuses pinned maps this binary's program would misread: one whose key, value or number of
/// entries (but for `FLOWS`, sized by the configuration) differs from the program's
/// definition, or (unless `missing_ok`, when the program is about to be loaded and will
/// create it) a map not pinned at all. aya reuses a pinned map by
/// name without comparing, so without this a new program would run on an old layout.
pub(super) fn check_pinned_layout(pin_dir: &Path, missing_ok: bool) -> Result<(), BpfError> {
    if !pin_dir.join(map_name::SERVICES).exists() {
        // Nothing pinned yet: everything will be created.
        return Ok(());
    }
    let obj =
        aya_obj::Object::parse(crate::ebpf_object()).map_err(|e| BpfError::Load(Box::new(e)))?;
    let incompatible = |problem: String| BpfError::Incompatible {
        pin_dir: pin_dir.to_owned(),
        problem,
    };
    for (name, path) in map_pins(pin_dir) {
        let Some(def) = obj.maps.get(name) else {
            continue;
        };
        if !path.exists() {
            if missing_ok {
                continue;
            }
            return Err(BpfError::MissingMap {
                pin_dir: pin_dir.to_owned(),
                name,
            });
        }
        let info = MapInfo::from_pin(&path).map_err(map_err(name))?;
        let mut want = (def.key_size(), def.value_size(), def.max_entries());
        let got = (info.key_size(), info.value_size(), info.max_entries());
        if [map_name::FLOWS, map_name::FLOWS_SPILL, map_name::NAT_PORTS].contains(&name) {
            // Sized at load time from `flow_table_size`; any size reads the same.
            want.2 = got.2;
        }
        if want != got {
            return Err(incompatible(format!(
                "{name}: key/value/entries {}/{}/{} pinned, {}/{}/{} expected",
                got.0, got.1, got.2, want.0, want.1, want.2
            )));
        }
    }
    Ok(())
}

/// `ACCEPT_LOCAL`'s key for an interface name (the kernel's names are at most 15 bytes).
pub(super) fn key_of_iface(iface: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let n = iface.len().min(15);
    key[..n].copy_from_slice(&iface.as_bytes()[..n]);
    key
}

/// The interface name an `ACCEPT_LOCAL` key holds.
pub(super) fn iface_of_key(key: &[u8; 16]) -> String {
    let end = key.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&key[..end]).into_owned()
}
