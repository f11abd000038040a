//! What the XDP maps should hold, and how to get there safely.
//!
//! Pure code computes the target ([`ServiceTarget`]) and the ordered list of map writes
//! ([`plan`]) from a [`Snapshot`] of the maps; a [`Dataplane`] applies them — the pinned BPF
//! maps in production ([`bpf::BpfDataplane`]), an in-memory copy in unit tests
//! ([`MemDataplane`]). The order of the writes is what makes every intermediate state safe for
//! packets in flight: a slot is filled before anything points at it, and a replica leaves the
//! Maglev table before its connections are reset.
//!
//! Every write the controller makes to the maps it owns is a [`MapOp`] through
//! [`Dataplane::apply`]: the service maps by [`sync`], the list maps (floating addresses and
//! their ARP lease, client networks, veth peers, saved sysctls) by the trait's `set_*`
//! methods, planned in `lists`. The connection table is the program's; the controller only
//! sweeps ended connections out of it (see [`sweep`]).
//!
//! Files: this one (targets, the service planner, the trait), `lists` (the list maps'
//! planner), `mem` (the in-memory fake), [`sweep`] (which connection entries to drop),
//! [`bpf`] (the real maps and the program's life on the host).

pub mod bpf;
mod lists;
mod mem;
pub mod sweep;

pub use mem::MemDataplane;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use redis_ha_common::{
    Backend, FlowHashKey, NatConfig, ServiceKey, ServicePort, ServiceState, backend_flags,
    port_kind,
};

use crate::{
    config::{ServiceConfig, backend_slot},
    maglev,
};

/// What one service's maps should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    /// Index of the service in the config: its `SERVICE_STATE` slot and backend block.
    pub id: u32,
    pub vip: Ipv4Addr,
    pub write_port: u16,
    pub read_port: u16,
    /// In config order; backend `i` lives in slot `backend_slot(id, i)`.
    pub backends: Vec<SocketAddrV4>,
    pub master: Option<SocketAddrV4>,
    pub read_pool: Vec<SocketAddrV4>,
    /// Failover epoch of `master`; the maps never go back to an older one.
    pub epoch: u64,
    /// The backends that are this node's own addresses ([`backend_flags::LOCAL`]): empty
    /// until [`Self::on_host`] says.
    pub local: BTreeSet<Ipv4Addr>,
}

impl ServiceTarget {
    /// The starting point for a service nobody has failed over yet: the first backend is the
    /// master, the others serve reads.
    pub fn initial(id: u32, svc: &ServiceConfig) -> Self {
        Self {
            id,
            vip: svc.vip,
            write_port: svc.write_port,
            read_port: svc.read_port,
            backends: svc.backends.clone(),
            master: svc.backends.first().copied(),
            read_pool: svc.backends.iter().skip(1).copied().collect(),
            epoch: 0,
            local: BTreeSet::new(),
        }
    }

    /// The same target on a host whose own addresses are `addresses`: its backends among
    /// them are delivered to locally.
    pub fn on_host(mut self, addresses: &BTreeSet<Ipv4Addr>) -> Self {
        self.local = self
            .backends
            .iter()
            .map(|b| *b.ip())
            .filter(|ip| addresses.contains(ip))
            .collect();
        self
    }

    /// The target a running data plane already serves for this service, when its maps hold
    /// one whose master is still a configured backend; otherwise [`Self::initial`]. Reloading
    /// the config must never undo a failover.
    pub fn resume(id: u32, svc: &ServiceConfig, current: &Snapshot) -> Self {
        let mut t = Self::initial(id, svc);
        let Some(state) = current.states.get(&id) else {
            return t;
        };
        let addr_of = |slot: u32| {
            let b = current.backends.get(&slot)?;
            (b.service_id == id).then(|| SocketAddrV4::new(b.ip.into(), b.port))
        };
        let Some(master) = addr_of(state.master).filter(|a| svc.backends.contains(a)) else {
            return t;
        };
        t.master = Some(master);
        t.epoch = state.epoch;
        t.read_pool = current
            .backends
            .iter()
            .filter(|(_, b)| b.service_id == id && b.flags & backend_flags::READABLE != 0)
            .filter_map(|(slot, _)| addr_of(*slot))
            .filter(|a| svc.backends.contains(a))
            .collect();
        t
    }

    fn slot_of(&self, addr: SocketAddrV4) -> Option<u32> {
        self.backends
            .iter()
            .position(|b| *b == addr)
            .map(|i| backend_slot(self.id, i))
    }

    fn keys(&self) -> [(ServiceKey, ServicePort); 2] {
        let key = |port| ServiceKey {
            vip: self.vip.octets(),
            port,
            _pad: 0,
        };
        let val = |kind| ServicePort {
            service_id: self.id,
            kind,
        };
        [
            (key(self.write_port), val(port_kind::WRITE)),
            (key(self.read_port), val(port_kind::READ)),
        ]
    }
}

/// The service maps, as [`plan`] reads them (flows and counters belong to the program; the
/// list maps are read one at a time, see [`Dataplane`]). Zeroed array entries are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub ports: BTreeMap<([u8; 4], u16), ServicePort>,
    pub states: BTreeMap<u32, ServiceState>,
    pub backends: BTreeMap<u32, Backend>,
}

impl Snapshot {
    fn readable(&self, service_id: u32) -> BTreeSet<u32> {
        self.backends
            .iter()
            .filter(|(_, b)| b.service_id == service_id && b.flags & backend_flags::READABLE != 0)
            .map(|(s, _)| *s)
            .collect()
    }
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// `BACKENDS[slot] = backend` (a zeroed backend clears the slot).
    SetBackend {
        slot: u32,
        backend: Backend,
    },
    SetPort {
        key: ServiceKey,
        port: ServicePort,
    },
    RemovePort {
        key: ServiceKey,
    },
    /// Writes one of a service's two Maglev tables.
    SetRing {
        service_id: u32,
        half: u32,
        table: Vec<u32>,
    },
    /// `SERVICE_STATE[service_id] = state`: the switch itself.
    SetState {
        service_id: u32,
        state: ServiceState,
    },
    /// `FLOATING[addr]`: this node answers ARP for `addr` until `until_ns` (CLOCK_MONOTONIC;
    /// 0: it drops the requests).
    SetFloating {
        addr: [u8; 4],
        until_ns: u64,
    },
    /// `addr` leaves `FLOATING`: ARP for it is left to the kernel.
    RemoveFloating {
        addr: [u8; 4],
    },
    /// `CLIENT_NETS` gains `net/prefix_len`.
    AddClientNet {
        net: [u8; 4],
        prefix_len: u32,
    },
    RemoveClientNet {
        net: [u8; 4],
        prefix_len: u32,
    },
    /// `PEER_DEVS` gains the veth `ifindex`.
    AddPeerDev {
        ifindex: u32,
    },
    RemovePeerDev {
        ifindex: u32,
    },
    /// `ACCEPT_LOCAL[iface] = value`: the interface's `accept_local` before redis-ha set it,
    /// kept to be given back (`iface` is the NUL-padded name).
    SaveAcceptLocal {
        iface: [u8; 16],
        value: u32,
    },
    ForgetAcceptLocal {
        iface: [u8; 16],
    },
    /// `NAT[0] = nat`: how new connections are translated (existing ones keep theirs).
    SetNat {
        nat: NatConfig,
    },
    /// `FLOW_HASH_KEY[0] = key`: the secret key of the replica choice (`flow_hash`).
    SetFlowHashKey {
        key: FlowHashKey,
    },
    /// `IF_MACS[ifindex] = mac`: the data-plane interface's own MAC.
    SetInterfaceMac {
        ifindex: u32,
        mac: [u8; 6],
    },
    RemoveInterfaceMac {
        ifindex: u32,
    },
    /// `IF_ROLES[ifindex] = role`: what the data-plane interface faces (`if_role`).
    SetInterfaceRole {
        ifindex: u32,
        role: u32,
    },
    RemoveInterfaceRole {
        ifindex: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "service {service}: the data plane is at epoch {current}, refusing to go back to epoch {offered}"
    )]
    StaleEpoch {
        service: u32,
        current: u64,
        offered: u64,
    },
    #[error("service {service}: {addr} is not one of its backends")]
    UnknownBackend { service: u32, addr: SocketAddrV4 },
}

/// The ordered writes that take the maps from `current` to `targets` (services absent from
/// `targets` are removed). Order, each step safe for packets in flight:
/// 1. backend slots get their address, and newly readable replicas their READABLE flag;
/// 2. service ports appear;
/// 3. the inactive Maglev table is written when the read pool changed;
/// 4. one state write per service flips master, table and epoch together;
/// 5. replicas that left the pool lose READABLE (their connections get reset);
/// 6. removed services lose ports, then state, then backend slots.
pub fn plan(current: &Snapshot, targets: &[ServiceTarget]) -> Result<Vec<MapOp>, PlanError> {
    let mut ops = Vec::new();
    let mut late_flag_clears = Vec::new();
    let mut states = Vec::new();
    let mut wanted_slots = BTreeSet::new();
    let mut wanted_ports = BTreeSet::new();

    for t in targets {
        let cur_state = current.states.get(&t.id).copied();
        if let Some(s) = cur_state
            && s.epoch > t.epoch
        {
            return Err(PlanError::StaleEpoch {
                service: t.id,
                current: s.epoch,
                offered: t.epoch,
            });
        }
        for addr in t.master.iter().chain(&t.read_pool) {
            if t.slot_of(*addr).is_none() {
                return Err(PlanError::UnknownBackend {
                    service: t.id,
                    addr: *addr,
                });
            }
        }
        let pool: BTreeSet<u32> = t.read_pool.iter().filter_map(|a| t.slot_of(*a)).collect();

        // 1. Slots, with READABLE added now but removed only after the table flip.
        for (i, addr) in t.backends.iter().enumerate() {
            let slot = backend_slot(t.id, i);
            wanted_slots.insert(slot);
            let want = Backend {
                ip: addr.ip().octets(),
                port: addr.port(),
                _pad: 0,
                service_id: t.id,
                flags: if pool.contains(&slot) {
                    backend_flags::READABLE
                } else {
                    0
                } | if t.local.contains(addr.ip()) {
                    backend_flags::LOCAL
                } else {
                    0
                },
            };
            let cur = current.backends.get(&slot).copied().unwrap_or_default();
            let same_place = cur.ip == want.ip && cur.port == want.port && cur.service_id == t.id;
            let interim = if same_place && cur.flags & backend_flags::READABLE != 0 {
                Backend {
                    flags: want.flags | backend_flags::READABLE,
                    ..want
                }
            } else {
                want
            };
            if interim != cur {
                ops.push(MapOp::SetBackend {
                    slot,
                    backend: interim,
                });
            }
            if interim != want {
                late_flag_clears.push(MapOp::SetBackend {
                    slot,
                    backend: want,
                });
            }
        }

        // 2. Ports.
        for (key, port) in t.keys() {
            wanted_ports.insert((key.vip, key.port));
            if current.ports.get(&(key.vip, key.port)) != Some(&port) {
                ops.push(MapOp::SetPort { key, port });
            }
        }

        // 3. Table, into the half packets are not reading.
        let mut ring_active = cur_state.map_or(0, |s| s.ring_active & 1);
        if cur_state.is_none() || current.readable(t.id) != pool {
            let half = if cur_state.is_none() {
                0
            } else {
                1 - ring_active
            };
            let members: Vec<(u32, SocketAddrV4)> = t
                .read_pool
                .iter()
                .filter_map(|a| Some((t.slot_of(*a)?, *a)))
                .collect();
            ops.push(MapOp::SetRing {
                service_id: t.id,
                half,
                table: maglev::table(&members),
            });
            ring_active = half;
        }

        // 4. The switch.
        let want_state = ServiceState {
            master: t.master.and_then(|a| t.slot_of(a)).unwrap_or(0),
            ring_active,
            epoch: t.epoch,
            vip: t.vip.octets(),
            write_port: t.write_port,
            read_port: t.read_port,
        };
        if cur_state != Some(want_state) {
            states.push(MapOp::SetState {
                service_id: t.id,
                state: want_state,
            });
        }
    }
    ops.extend(states);
    // 5.
    ops.extend(late_flag_clears);

    // 6. Removals.
    let wanted_ids: BTreeSet<u32> = targets.iter().map(|t| t.id).collect();
    for (vip, port) in current.ports.keys() {
        if !wanted_ports.contains(&(*vip, *port)) {
            ops.push(MapOp::RemovePort {
                key: ServiceKey {
                    vip: *vip,
                    port: *port,
                    _pad: 0,
                },
            });
        }
    }
    for id in current.states.keys() {
        if !wanted_ids.contains(id) {
            ops.push(MapOp::SetState {
                service_id: *id,
                state: ServiceState::default(),
            });
        }
    }
    for slot in current.backends.keys() {
        if !wanted_slots.contains(slot) {
            ops.push(MapOp::SetBackend {
                slot: *slot,
                backend: Backend::default(),
            });
        }
    }
    Ok(ops)
}

/// Something that holds the data plane's maps. [`Self::apply`] is the only way the controller
/// writes the maps it owns, so the planners' order is the order every such write happens in.
pub trait Dataplane {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The service maps, which [`plan`] starts from.
    fn snapshot(&self) -> Result<Snapshot, Self::Error>;
    /// `FLOATING`: address → end of its ARP lease (CLOCK_MONOTONIC ns; 0: none).
    fn floating_leases(&self) -> Result<BTreeMap<[u8; 4], u64>, Self::Error>;
    /// `CLIENT_NETS`: (network, prefix length).
    fn client_networks(&self) -> Result<BTreeSet<([u8; 4], u32)>, Self::Error>;
    /// `PEER_DEVS`: ifindexes.
    fn peer_devices(&self) -> Result<BTreeSet<u32>, Self::Error>;
    /// `ACCEPT_LOCAL`: NUL-padded interface name → the value saved before the first load.
    fn saved_accept_local(&self) -> Result<BTreeMap<[u8; 16], u32>, Self::Error>;
    /// `IF_MACS`: ifindex → MAC.
    fn interface_macs(&self) -> Result<BTreeMap<u32, [u8; 6]>, Self::Error>;
    /// `IF_ROLES`: ifindex → `if_role`.
    fn interface_roles(&self) -> Result<BTreeMap<u32, u32>, Self::Error>;
    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error>;

    /// Makes `FLOATING` hold exactly `addresses`, each answering ARP until `until_ns`
    /// (`CLOCK_MONOTONIC`; 0: not at all). Stale entries are removed after the new ones are in.
    fn set_floating_leases(
        &mut self,
        addresses: &[Ipv4Addr],
        until_ns: u64,
    ) -> Result<(), Self::Error> {
        let ops = lists::plan_floating(&self.floating_leases()?, addresses, until_ns);
        apply_all(self, &ops)
    }

    /// Makes `CLIENT_NETS` hold exactly `nets` (added first, then stale ones removed, so a
    /// network listed both before and after never disappears in between).
    fn set_client_networks(&mut self, nets: &[(Ipv4Addr, u8)]) -> Result<(), Self::Error> {
        let ops = lists::plan_client_nets(&self.client_networks()?, nets);
        apply_all(self, &ops)
    }

    /// Makes `IF_MACS` hold exactly `macs` (ifindex, MAC), new ones first.
    fn set_interface_macs(&mut self, macs: &[(u32, [u8; 6])]) -> Result<(), Self::Error> {
        let ops = lists::plan_interface_macs(&self.interface_macs()?, macs);
        apply_all(self, &ops)
    }

    /// Makes `IF_ROLES` hold exactly `roles` (ifindex, `if_role`), new ones first.
    fn set_interface_roles(&mut self, roles: &[(u32, u32)]) -> Result<(), Self::Error> {
        let ops = lists::plan_interface_roles(&self.interface_roles()?, roles);
        apply_all(self, &ops)
    }

    /// Makes `PEER_DEVS` hold exactly `ifindexes`, new ones first.
    fn set_peer_devices(&mut self, ifindexes: &[u32]) -> Result<(), Self::Error> {
        let ops = lists::plan_peer_devs(&self.peer_devices()?, ifindexes);
        apply_all(self, &ops)
    }
}

fn apply_all<D: Dataplane + ?Sized>(dp: &mut D, ops: &[MapOp]) -> Result<(), D::Error> {
    ops.iter().try_for_each(|op| dp.apply(op))
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("applying the map update: {0}")]
    Apply(#[source] E),
}

/// Brings `dp` to `targets`, returning the writes it made.
pub fn sync<D: Dataplane>(
    dp: &mut D,
    targets: &[ServiceTarget],
) -> Result<Vec<MapOp>, SyncError<D::Error>> {
    let current = dp.snapshot().map_err(SyncError::Apply)?;
    let ops = plan(&current, targets)?;
    for op in &ops {
        dp.apply(op).map_err(SyncError::Apply)?;
    }
    Ok(ops)
}

#[cfg(test)]
mod tests;
