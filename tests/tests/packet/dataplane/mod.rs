//! One loaded copy of the program, at the XDP or the TC hook, with typed handles on its maps,
//! test runs through BPF_PROG_TEST_RUN, and the table runner that checks a [`Case`].
//!
//! Cases are written with XDP's actions; at the TC hook the program's TC action is read back
//! as the XDP action it stands for (TC_ACT_OK = pass, TC_ACT_SHOT = drop, TC_ACT_REDIRECT =
//! redirect), so every table holds for both hooks.

use std::{net::SocketAddrV4, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        ProgramError, SchedClassifier, TestRun as _, TestRunOptions, TestRunResult, Xdp, XdpMode,
    },
};
use redis_ha_common::{
    AddrKey, Backend, BackendStats, FloatingLease, Flow, FlowHashKey, FlowKey, InterfaceMac,
    NatConfig, NatKey, RING_SIZE, ServiceKey, ServicePort, ServiceState, backend_flags, counter,
    map_name, nat_mode, ring_index,
};

use crate::{
    frame::{ETH_LEN, Tcp4, diff, tcp_flags},
    netns::{CLI_DEV_MAC, SRV_DEV_MAC, Testbed, device_mac, neighbour_mac},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// Resets leave by redirect to the ingress device, not XDP_TX (commit 0e76e1c: on veth an
/// XDP_TX frame could wait in the peer's queue until the client's next packet). In a test run
/// only the action and the frame are visible, so a reset is told from a forward by its bytes.
pub const RESET_ACTION: u32 = XDP_REDIRECT;

pub fn action_name(a: u32) -> String {
    match a {
        XDP_ABORTED => "XDP_ABORTED".into(),
        XDP_DROP => "XDP_DROP".into(),
        XDP_PASS => "XDP_PASS".into(),
        XDP_TX => "XDP_TX".into(),
        XDP_REDIRECT => "XDP_REDIRECT".into(),
        other => format!("action {other}"),
    }
}

/// Where the program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

pub const HOOKS: [Hook; 2] = [Hook::Xdp, Hook::Tc];

mod run;

pub use run::{Case, Expect, Gso, Ingress, NO_COUNTER, Run};

pub struct Dataplane {
    bpf: Ebpf,
    hook: Hook,
    services: HashMap<MapData, ServiceKey, ServicePort>,
    state: Array<MapData, ServiceState>,
    backends: Array<MapData, Backend>,
    ring: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, Flow>,
    flows_spill: HashMap<MapData, FlowKey, Flow>,
    flows_spilled: Array<MapData, u64>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    counters: PerCpuArray<MapData, u64>,
    cli_ifindex: u32,
    srv_ifindex: u32,
    /// The device every frame arrives on, instead of the one its source lives behind: a
    /// forged source address arrives where the forger is.
    arrive_on: std::cell::Cell<Option<u32>>,
}

impl Dataplane {
    /// A fresh copy of the program and its maps: no flows, no services.
    pub fn load(tb: &Testbed, hook: Hook) -> Dataplane {
        Self::load_sized(tb, hook, None)
    }

    /// [`Dataplane::load`] with `flow_table_size` entries in `FLOWS` and `FLOWS_SPILL` (as
    /// `[dataplane] flow_table_size` sets them) instead of the object's default.
    pub fn load_sized(tb: &Testbed, hook: Hook, flow_table_size: Option<u32>) -> Dataplane {
        let mut loader = aya::EbpfLoader::new();
        if let Some(n) = flow_table_size {
            loader.map_max_entries(map_name::FLOWS, n);
            loader.map_max_entries(map_name::FLOWS_SPILL, n);
        }
        let mut bpf = loader
            .load(redis_ha_ctl::ebpf_object())
            .expect("load the redis-ha object");
        match hook {
            Hook::Xdp => {
                let prog: &mut Xdp = bpf
                    .program_mut("redis_ha")
                    .expect("program redis_ha in the object")
                    .try_into()
                    .expect("redis_ha is an XDP program");
                prog.load().expect("verifier accepts redis_ha");
            }
            Hook::Tc => {
                let prog: &mut SchedClassifier = bpf
                    .program_mut("redis_ha_tc")
                    .expect("program redis_ha_tc in the object")
                    .try_into()
                    .expect("redis_ha_tc is a TC classifier");
                prog.load().expect("verifier accepts redis_ha_tc");
            }
        }
        // The egress program shares the object's maps; loaded at either hook, since a node
        // with a local backend runs it beside XDP as well as beside TC ingress.
        let egress: &mut SchedClassifier = bpf
            .program_mut("redis_ha_egress")
            .expect("program redis_ha_egress in the object")
            .try_into()
            .expect("redis_ha_egress is a TC classifier");
        egress.load().expect("verifier accepts redis_ha_egress");
        let mut take = |name: &str| {
            bpf.take_map(name)
                .unwrap_or_else(|| panic!("map {name} in the object"))
        };
        let services = HashMap::try_from(take(map_name::SERVICES)).expect("SERVICES type");
        let state = Array::try_from(take(map_name::SERVICE_STATE)).expect("SERVICE_STATE type");
        let backends = Array::try_from(take(map_name::BACKENDS)).expect("BACKENDS type");
        let ring = Array::try_from(take(map_name::READ_RING)).expect("READ_RING type");
        let flows = HashMap::try_from(take(map_name::FLOWS)).expect("FLOWS type");
        let flows_spill = HashMap::try_from(take(map_name::FLOWS_SPILL)).expect("FLOWS_SPILL type");
        let flows_spilled =
            Array::try_from(take(map_name::FLOWS_SPILLED)).expect("FLOWS_SPILLED type");
        let backend_stats =
            PerCpuArray::try_from(take(map_name::BACKEND_STATS)).expect("BACKEND_STATS type");
        let counters = PerCpuArray::try_from(take(map_name::COUNTERS)).expect("COUNTERS type");
        let mut dp = Dataplane {
            bpf,
            hook,
            services,
            state,
            backends,
            ring,
            flows,
            flows_spill,
            flows_spilled,
            backend_stats,
            counters,
            cli_ifindex: tb.cli_ifindex,
            srv_ifindex: tb.srv_ifindex,
            arrive_on: std::cell::Cell::new(None),
        };
        // As the controller writes them at attach.
        dp.set_interface_mac(tb.cli_ifindex, CLI_DEV_MAC);
        dp.set_interface_mac(tb.srv_ifindex, SRV_DEV_MAC);
        dp
    }

    /// Empties `IF_MACS`: every interface then takes every frame.
    pub fn forget_interface_macs(&mut self) {
        let mut map: HashMap<&mut MapData, u32, InterfaceMac> =
            HashMap::try_from(self.bpf.map_mut(map_name::IF_MACS).expect("IF_MACS"))
                .expect("IF_MACS type");
        let keys: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for k in keys {
            map.remove(&k).expect("remove IF_MACS");
        }
    }

    /// `IF_MACS[ifindex] = mac`.
    pub fn set_interface_mac(&mut self, ifindex: u32, mac: [u8; 6]) {
        let mut map: HashMap<&mut MapData, u32, InterfaceMac> =
            HashMap::try_from(self.bpf.map_mut(map_name::IF_MACS).expect("IF_MACS"))
                .expect("IF_MACS type");
        map.insert(ifindex, InterfaceMac { mac, _pad: [0; 2] }, 0)
            .expect("insert IF_MACS");
    }

    pub fn add_port(&mut self, vip: SocketAddrV4, service_id: u32, kind: u32) {
        let key = ServiceKey {
            vip: vip.ip().octets(),
            port: vip.port(),
            _pad: 0,
        };
        self.services
            .insert(key, ServicePort { service_id, kind }, 0)
            .expect("insert SERVICES");
    }

    pub fn set_state(&mut self, service_id: u32, master: u32, ring_active: u32) {
        let st = ServiceState {
            master,
            ring_active,
            epoch: 1,
            vip: crate::VIP.octets(),
            write_port: crate::WRITE.port(),
            read_port: crate::READ.port(),
        };
        self.state
            .set(service_id, st, 0)
            .expect("set SERVICE_STATE");
    }

    pub fn set_backend(&mut self, slot: u32, addr: SocketAddrV4, service_id: u32, readable: bool) {
        let be = Backend {
            ip: addr.ip().octets(),
            port: addr.port(),
            _pad: 0,
            service_id,
            flags: if readable { backend_flags::READABLE } else { 0 },
        };
        self.backends.set(slot, be, 0).expect("set BACKENDS");
        self.add_backend_addr(addr, slot);
    }

    /// What the controller writes beside every backend slot: its address → slot.
    fn add_backend_addr(&mut self, addr: SocketAddrV4, slot: u32) {
        let mut map: HashMap<&mut MapData, AddrKey, u32> = HashMap::try_from(
            self.bpf
                .map_mut(map_name::BACKEND_ADDRS)
                .expect("BACKEND_ADDRS"),
        )
        .expect("BACKEND_ADDRS type");
        let key = AddrKey {
            ip: addr.ip().octets(),
            port: addr.port(),
            _pad: 0,
        };
        map.insert(key, slot, 0).expect("insert BACKEND_ADDRS");
    }

    /// The ARP lease of a floating address (`CLOCK_MONOTONIC` ns; 0: expired).
    pub fn set_floating(&mut self, addr: std::net::Ipv4Addr, until_ns: u64) {
        let mut map: HashMap<&mut MapData, [u8; 4], FloatingLease> =
            HashMap::try_from(self.bpf.map_mut(map_name::FLOATING).expect("FLOATING"))
                .expect("FLOATING type");
        map.insert(addr.octets(), FloatingLease { until_ns }, 0)
            .expect("insert FLOATING");
    }

    /// `[dataplane] client_networks`.
    pub fn add_client_net(&mut self, net: std::net::Ipv4Addr, prefix_len: u32) {
        let mut map: LpmTrie<&mut MapData, [u8; 4], u32> = LpmTrie::try_from(
            self.bpf
                .map_mut(map_name::CLIENT_NETS)
                .expect("CLIENT_NETS"),
        )
        .expect("CLIENT_NETS type");
        map.insert(&Key::new(prefix_len, net.octets()), 1, 0)
            .expect("insert CLIENT_NETS");
    }

    /// Frames arrive on `ifindex` from now on (`None`: where their source lives).
    pub fn arrive_on(&self, ifindex: Option<u32>) {
        self.arrive_on.set(ifindex);
    }

    /// `IF_ROLES[ifindex] = role`, as `[dataplane] backend_interfaces` sets it.
    pub fn set_interface_role(&mut self, ifindex: u32, role: u32) {
        let mut map: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.bpf.map_mut(map_name::IF_ROLES).expect("IF_ROLES"))
                .expect("IF_ROLES type");
        map.insert(ifindex, role, 0).expect("insert IF_ROLES");
    }

    /// `FLOW_HASH_KEY[0]`: the secret key of the replica choice.
    pub fn set_flow_hash_key(&mut self, key: FlowHashKey) {
        let mut map: Array<&mut MapData, FlowHashKey> = Array::try_from(
            self.bpf
                .map_mut(map_name::FLOW_HASH_KEY)
                .expect("FLOW_HASH_KEY"),
        )
        .expect("FLOW_HASH_KEY type");
        map.set(0, key, 0).expect("set FLOW_HASH_KEY");
    }

    /// `NAT[0]`: full NAT from `ip`, source ports `first..=last`.
    pub fn set_full_nat(&mut self, ip: std::net::Ipv4Addr, first: u16, last: u16) {
        let mut map: Array<&mut MapData, NatConfig> =
            Array::try_from(self.bpf.map_mut(map_name::NAT).expect("NAT")).expect("NAT type");
        let nat = NatConfig {
            mode: nat_mode::FULL,
            ip: ip.octets(),
            port_min: first,
            port_max: last,
            _pad: 0,
        };
        map.set(0, nat, 0).expect("set NAT");
    }

    /// The connection holding full-NAT port `port` toward `backend`.
    pub fn nat_port_owner(&self, backend: SocketAddrV4, port: u16) -> Option<FlowKey> {
        let map: HashMap<&MapData, NatKey, FlowKey> =
            HashMap::try_from(self.bpf.map(map_name::NAT_PORTS).expect("NAT_PORTS"))
                .expect("NAT_PORTS type");
        let key = NatKey {
            backend_ip: backend.ip().octets(),
            backend_port: backend.port(),
            nat_port: port,
        };
        map.get(&key, 0).ok()
    }

    /// Gives full-NAT port `port` toward `backend` to `owner`, as a live connection would.
    pub fn occupy_nat_port(&mut self, backend: SocketAddrV4, port: u16, owner: FlowKey) {
        let mut map: HashMap<&mut MapData, NatKey, FlowKey> =
            HashMap::try_from(self.bpf.map_mut(map_name::NAT_PORTS).expect("NAT_PORTS"))
                .expect("NAT_PORTS type");
        let key = NatKey {
            backend_ip: backend.ip().octets(),
            backend_port: backend.port(),
            nat_port: port,
        };
        map.insert(key, owner, 0).expect("insert NAT_PORTS");
    }

    /// Points every CPU's next full-NAT port at offset `offset` of the range.
    pub fn set_nat_cursor(&mut self, offset: u32) {
        let mut map: PerCpuArray<&mut MapData, u32> =
            PerCpuArray::try_from(self.bpf.map_mut(map_name::NAT_CURSOR).expect("NAT_CURSOR"))
                .expect("NAT_CURSOR type");
        let cpus = aya::util::nr_cpus().expect("CPU count");
        map.set(
            0,
            PerCpuValues::try_from(vec![offset; cpus]).expect("values"),
            0,
        )
        .expect("set NAT_CURSOR");
    }

    /// Marks `slot` as this host's own redis-server (`backend_flags::LOCAL`).
    pub fn set_local(&mut self, slot: u32) {
        let mut be = self.backends.get(&slot, 0).expect("get BACKENDS");
        be.flags |= backend_flags::LOCAL;
        self.backends.set(slot, be, 0).expect("set BACKENDS");
    }

    pub fn set_readable(&mut self, slot: u32, readable: bool) {
        let mut be = self.backends.get(&slot, 0).expect("get BACKENDS");
        be.flags = (be.flags & !backend_flags::READABLE)
            | if readable { backend_flags::READABLE } else { 0 };
        self.backends.set(slot, be, 0).expect("set BACKENDS");
    }

    /// Fills one Maglev table with a plain round robin over `slots` (empty: all zero). The
    /// Maglev construction has its own tests; here only the program's use of the table matters.
    pub fn fill_ring(&mut self, service_id: u32, half: u32, slots: &[u32]) {
        for i in 0..RING_SIZE {
            let slot = if slots.is_empty() {
                0
            } else {
                slots[i as usize % slots.len()]
            };
            self.ring
                .set(ring_index(service_id, half, i), slot, 0)
                .expect("set READ_RING");
        }
    }

    /// `key`'s entry, in `FLOWS` or else in `FLOWS_SPILL`, as the program looks.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows
            .get(key, 0)
            .ok()
            .or_else(|| self.flows_spill.get(key, 0).ok())
    }

    /// `key`'s entry in `FLOWS_SPILL` only.
    pub fn spilled_flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows_spill.get(key, 0).ok()
    }

    /// `FLOWS_SPILLED[0]`: when a connection first spilled, 0 if none has.
    pub fn spilling_since(&self) -> u64 {
        self.flows_spilled.get(&0, 0).expect("read FLOWS_SPILLED")
    }

    /// Writes an entry into `FLOWS` as the program would have.
    pub fn put_flow(&mut self, key: FlowKey, flow: Flow) {
        self.flows.insert(key, flow, 0).expect("insert into FLOWS");
    }

    pub fn counters(&self) -> [u64; counter::COUNT as usize] {
        let mut c = [0; counter::COUNT as usize];
        for (i, v) in c.iter_mut().enumerate() {
            *v = self
                .counters
                .get(&(i as u32), 0)
                .expect("read COUNTERS")
                .iter()
                .sum();
        }
        c
    }

    pub fn stats(&self, slot: u32) -> BackendStats {
        let per_cpu = self
            .backend_stats
            .get(&slot, 0)
            .expect("read BACKEND_STATS");
        per_cpu
            .iter()
            .fold(BackendStats::default(), |a, s| BackendStats {
                packets_in: a.packets_in + s.packets_in,
                bytes_in: a.bytes_in + s.bytes_in,
                packets_out: a.packets_out + s.packets_out,
                bytes_out: a.bytes_out + s.bytes_out,
                new_flows: a.new_flows + s.new_flows,
                flows_reset: a.flows_reset + s.flows_reset,
                flows_closed: a.flows_closed + s.flows_closed,
            })
    }
}
