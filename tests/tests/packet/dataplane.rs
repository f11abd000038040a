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
    AddrKey, Backend, BackendStats, FloatingLease, Flow, FlowKey, InterfaceMac, NatConfig, NatKey,
    RING_SIZE, ServiceKey, ServicePort, ServiceState, backend_flags, counter, map_name, nat_mode,
    ring_index,
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

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The XDP action a TC action stands for; anything else is kept out of XDP's range.
fn tc_as_xdp(action: u32) -> u32 {
    match action {
        TC_ACT_OK => XDP_PASS,
        TC_ACT_SHOT => XDP_DROP,
        TC_ACT_REDIRECT => XDP_REDIRECT,
        other => 1000 + other,
    }
}

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it in `ctx_in`: all zero but the devices
/// (`ingress_ifindex` at byte 36, `ifindex` at 40, which also picks the skb's device) and the
/// segmentation offload (`gso_segs` at 164, `gso_size` at 176), which the kernel copies into
/// the skb it builds.
fn sk_buff_ctx(ifindex: u32, gso: Option<Gso>) -> [u8; 192] {
    let mut b = [0; 192];
    b[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    b[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    if let Some(Gso { size, segs }) = gso {
        b[164..168].copy_from_slice(&segs.to_ne_bytes());
        b[176..180].copy_from_slice(&size.to_ne_bytes());
    }
    b
}

/// An skb that stands for several wire segments (TSO/GSO from a local sender, GRO): TC only.
#[derive(Clone, Copy, Debug)]
pub struct Gso {
    /// Payload bytes per segment.
    pub size: u32,
    pub segs: u32,
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it in `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpMd {
    fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0; 24];
        for (i, v) in [
            self.data,
            self.data_end,
            self.data_meta,
            self.ingress_ifindex,
            self.rx_queue_index,
            self.egress_ifindex,
        ]
        .iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// What one test run returned.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    /// The frame as the program left it.
    pub out: Vec<u8>,
    /// Average time per repeat, as measured by the kernel.
    pub duration: Duration,
}

/// Where a test run says the frame came in.
#[derive(Clone, Copy, Debug)]
pub enum Ingress {
    /// The device the frame's source address lives behind (`Dataplane::wire_ingress`).
    Wire,
    /// No `ctx_in`: the kernel's default, the namespace's loopback.
    KernelDefault,
}

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

    /// The device a frame arrives on: rha-srv for frames from the backend subnet, rha-cli for
    /// everything else.
    fn wire_ingress(&self, frame: &[u8]) -> u32 {
        let from_backend_net =
            frame.len() >= 30 && frame[12..14] == [0x08, 0x00] && frame[26..29] == [198, 18, 1];
        if from_backend_net {
            self.srv_ifindex
        } else {
            self.cli_ifindex
        }
    }

    pub fn run(&self, frame: &[u8]) -> Run {
        self.run_with(frame, Ingress::Wire, 1)
    }

    /// Runs the program `repeat` times over one buffer (the kernel does not restore it
    /// between repeats).
    pub fn run_with(&self, frame: &[u8], ingress: Ingress, repeat: u32) -> Run {
        self.try_run(frame, ingress, repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
    }

    fn try_run(&self, frame: &[u8], ingress: Ingress, repeat: u32) -> Result<Run, ProgramError> {
        self.try_run_gso(frame, ingress, repeat, None)
    }

    fn try_run_gso(
        &self,
        frame: &[u8],
        ingress: Ingress,
        repeat: u32,
        gso: Option<Gso>,
    ) -> Result<Run, ProgramError> {
        self.try_run_prog(frame, ingress, repeat, gso, false)
    }

    /// `egress`: the TC egress program instead of the hook's own.
    fn try_run_prog(
        &self,
        frame: &[u8],
        ingress: Ingress,
        repeat: u32,
        gso: Option<Gso>,
        egress: bool,
    ) -> Result<Run, ProgramError> {
        assert!(
            gso.is_none() || matches!(self.hook, Hook::Tc),
            "segmentation offload exists only at the TC hook"
        );
        let ingress_ifindex = self.wire_ingress(frame);
        let xdp_ctx;
        let tc_ctx;
        let ctx: &[u8] = match self.hook {
            _ if egress => {
                tc_ctx = sk_buff_ctx(ingress_ifindex, gso);
                &tc_ctx
            }
            Hook::Xdp => {
                xdp_ctx = XdpMd {
                    data: 0,
                    data_end: frame.len() as u32,
                    ingress_ifindex,
                    ..XdpMd::default()
                }
                .to_bytes();
                &xdp_ctx
            }
            Hook::Tc => {
                tc_ctx = sk_buff_ctx(ingress_ifindex, gso);
                &tc_ctx
            }
        };
        let mut data_out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ctx_in: matches!(ingress, Ingress::Wire).then_some(ctx),
            repeat,
            ..Default::default()
        };
        let (res, action): (TestRunResult, fn(u32) -> u32) = match self.hook {
            _ if egress => {
                let prog: &SchedClassifier = self
                    .bpf
                    .program("redis_ha_egress")
                    .expect("program redis_ha_egress")
                    .try_into()
                    .expect("TC classifier");
                (prog.test_run(options)?, tc_as_xdp)
            }
            Hook::Xdp => {
                let prog: &Xdp = self
                    .bpf
                    .program("redis_ha")
                    .expect("program redis_ha")
                    .try_into()
                    .expect("XDP program");
                (prog.test_run(options)?, |a| a)
            }
            Hook::Tc => {
                let prog: &SchedClassifier = self
                    .bpf
                    .program("redis_ha_tc")
                    .expect("program redis_ha_tc")
                    .try_into()
                    .expect("TC classifier");
                (prog.test_run(options)?, tc_as_xdp)
            }
        };
        data_out.truncate(res.data_size_out as usize);
        Ok(Run {
            action: action(res.return_value),
            out: data_out,
            duration: res.duration,
        })
    }

    /// The shortest frame the kernel test-runs at this hook: an Ethernet header at XDP; at TC
    /// also a whole IPv4 header when the EtherType says IPv4 (the skb test run checks it).
    fn shortest_run(&self) -> usize {
        match self.hook {
            Hook::Xdp => ETH_LEN,
            Hook::Tc => ETH_LEN + 20,
        }
    }

    /// Attaches the program in native mode to `dev`, a device that carries no traffic.
    ///
    /// BPF_PROG_TEST_RUN with repeat > 1 adds the program to the kernel's XDP dispatcher and
    /// removes it afterwards, each costing an RCU grace period (~18 ms per call measured
    /// here). While the program is attached natively somewhere the dispatcher already holds
    /// it, and a call costs microseconds; the program runs the same direct call either way.
    pub fn attach_idle(&mut self, dev: &str) {
        let prog: &mut Xdp = self
            .bpf
            .program_mut("redis_ha")
            .expect("program redis_ha")
            .try_into()
            .expect("XDP program");
        prog.attach(dev, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach to {dev} in native mode: {e}"));
    }

    /// Runs `case` and checks action, output bytes and counters; `Err` describes every
    /// mismatch.
    /// `Ok(None)`: the kernel refused to run the frame at all, which it does (EINVAL) for
    /// frames shorter than an Ethernet header; such frames never reach the program.
    pub fn check(&self, case: &Case) -> Result<Option<Run>, String> {
        self.check_gso(case, None)
    }

    fn check_gso(&self, case: &Case, gso: Option<Gso>) -> Result<Option<Run>, String> {
        self.check_prog(case, gso, false)
    }

    fn check_prog(
        &self,
        case: &Case,
        gso: Option<Gso>,
        egress: bool,
    ) -> Result<Option<Run>, String> {
        let expected = case.expect.outputs(&case.frame)?;
        let before = self.counters();
        let run = match self.try_run_prog(&case.frame, Ingress::Wire, 1, gso, egress) {
            Ok(run) => run,
            Err(ProgramError::SyscallError(e))
                if case.frame.len() < self.shortest_run()
                    && e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                return Ok(None);
            }
            Err(e) => {
                let errno = match &e {
                    ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
                    _ => None,
                };
                return Err(format!(
                    "case `{}` ({:?} hook, errno {errno:?}): BPF_PROG_TEST_RUN: {e}",
                    case.name, self.hook
                ));
            }
        };
        let after = self.counters();
        let mut errors = Vec::new();
        if run.action != case.action {
            errors.push(format!(
                "action: expected {}, got {}",
                action_name(case.action),
                action_name(run.action)
            ));
        }
        if !expected.is_empty() && !expected.contains(&run.out) {
            let detail: Vec<String> = expected.iter().map(|e| diff(e, &run.out)).collect();
            errors.push(format!(
                "output is not {:?}:\n{}",
                case.expect,
                detail.join("\n  -- or --\n")
            ));
        }
        let moved: Vec<String> = (0..counter::COUNT as usize)
            .filter(|&i| after[i] != before[i])
            .map(|i| {
                format!(
                    "{} +{}",
                    counter::NAMES[i],
                    after[i].wrapping_sub(before[i])
                )
            })
            .collect();
        let want = if case.counter == NO_COUNTER {
            Vec::new()
        } else {
            vec![format!("{} +1", counter::NAMES[case.counter as usize])]
        };
        if moved != want {
            errors.push(format!("counters: expected {want:?} only, got {moved:?}"));
        }
        if errors.is_empty() {
            Ok(Some(run))
        } else {
            Err(format!(
                "case `{}` ({:?} hook):\n  {}",
                case.name,
                self.hook,
                errors.join("\n  ")
            ))
        }
    }

    /// Runs one step of a scenario; later steps depend on it, so a failure stops the test.
    #[track_caller]
    pub fn step(&self, case: Case) -> Run {
        self.step_gso(case, None)
    }

    /// One run of `frame` as an skb carrying `gso` (TC only), arriving from the wire.
    #[track_caller]
    pub fn run_gso(&self, frame: &[u8], gso: Gso) -> Run {
        self.try_run_gso(frame, Ingress::Wire, 1, Some(gso))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
    }

    /// [`Self::step`] for an skb carrying `gso` (TC only).
    #[track_caller]
    pub fn step_gso(&self, case: Case, gso: Option<Gso>) -> Run {
        match self.check_gso(&case, gso) {
            Ok(Some(run)) => run,
            Ok(None) => panic!("case `{}`: the kernel refused to run the frame", case.name),
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Self::step`] through the TC egress program (the replies of a local backend).
    #[track_caller]
    pub fn step_egress(&self, case: Case) -> Run {
        match self.check_prog(&case, None, true) {
            Ok(Some(run)) => run,
            Ok(None) => panic!("case `{}`: the kernel refused to run the frame", case.name),
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs independent cases and reports every failure together.
    #[track_caller]
    pub fn table(&self, cases: &[Case]) {
        let mut failures = Vec::new();
        for c in cases {
            match self.check(c) {
                Ok(Some(_)) => {}
                Ok(None) => println!(
                    "note: case `{}` not run at the {:?} hook: the kernel refuses test runs of \
                     frames shorter than {} bytes there (EINVAL). At XDP no shorter frame \
                     reaches the program; at TC one can, and meets the same bounds checks as \
                     every other case",
                    c.name,
                    self.hook,
                    self.shortest_run()
                ),
                Err(e) => failures.push(e),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

/// [`Case::counter`] of a packet no counter may count (the egress program's passes).
pub const NO_COUNTER: u32 = u32::MAX;

/// One row of a table: a frame, what the program must return, what the frame must look like
/// afterwards, and which counter (alone) must move by one.
pub struct Case {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub action: u32,
    pub expect: Expect,
    pub counter: u32,
}

/// What the output frame must be, derived from the input frame.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// Byte for byte the input.
    Unchanged,
    /// Client → backend: destination replaced by `backend`, TTL − 1, MACs from the FIB
    /// (neighbour entry of the backend, MAC of the device toward it); all else unchanged.
    ToBackend(SocketAddrV4),
    /// Backend → client: source replaced by `vip`, TTL − 1, MACs from the FIB.
    ToClient(SocketAddrV4),
    /// Destination replaced by `backend`, but handed to the kernel: TTL and MACs untouched.
    RewrittenOnly(SocketAddrV4),
    /// Full NAT: both endpoints replaced, forwarded toward `dst` (TTL − 1, MACs from the FIB).
    Translated {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// Source replaced by `src`, nothing else (a local backend's reply at TC egress, which
    /// the kernel has routed already).
    SourceOnly(SocketAddrV4),
    /// A bare RST+ACK from the segment's destination back to its sender (RFC 793 reset
    /// generation), MACs swapped, so the client fails fast.
    Reset,
    /// [`Expect::ToBackend`] for one of these backends (the read port's pick).
    ToOneOf(&'static [SocketAddrV4]),
    /// Not checked: the frame is dropped.
    Dropped,
}

impl Expect {
    /// The frames the program may leave (one, except for [`Expect::ToOneOf`]), each built
    /// from the input's fields with this module's own checksum code; empty when the output
    /// does not matter.
    pub fn outputs(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        match *self {
            Expect::Unchanged => return Ok(vec![input.to_vec()]),
            Expect::Dropped => return Ok(Vec::new()),
            Expect::ToOneOf(backends) => {
                return backends
                    .iter()
                    .map(|&b| Expect::ToBackend(b).outputs(input).map(|mut v| v.remove(0)))
                    .collect();
            }
            _ => {}
        }
        let mut f = Tcp4::parse(input).ok_or("expectation needs a well-formed TCP/IPv4 input")?;
        if f.build() != input {
            return Err("test bug: input frame has a bad checksum".into());
        }
        let forwarded = |f: &mut Tcp4, toward: SocketAddrV4| {
            f.ttl -= 1;
            f.eth_dst = neighbour_mac(*toward.ip());
            f.eth_src = device_mac(*toward.ip());
        };
        match *self {
            Expect::ToBackend(backend) => {
                f.dst = backend;
                forwarded(&mut f, backend);
            }
            Expect::ToClient(vip) => {
                f.src = vip;
                let client = f.dst;
                forwarded(&mut f, client);
            }
            Expect::RewrittenOnly(backend) => f.dst = backend,
            Expect::Translated { src, dst } => {
                f.src = src;
                f.dst = dst;
                forwarded(&mut f, dst);
            }
            Expect::SourceOnly(src) => f.src = src,
            Expect::Reset => {
                let syn_fin = u32::from(f.flags & tcp_flags::SYN != 0)
                    + u32::from(f.flags & tcp_flags::FIN != 0);
                let seg_len = f.payload.len() as u32 + syn_fin;
                f = Tcp4 {
                    eth_dst: f.eth_src,
                    eth_src: f.eth_dst,
                    tos: f.tos,
                    id: 0,
                    frag: crate::frame::IP_DF,
                    ttl: 64,
                    ip_options: Vec::new(),
                    src: f.dst,
                    dst: f.src,
                    seq: if f.flags & tcp_flags::ACK != 0 {
                        f.ack
                    } else {
                        0
                    },
                    ack: f.seq.wrapping_add(seg_len),
                    flags: tcp_flags::RST | tcp_flags::ACK,
                    window: 0,
                    urg: 0,
                    tcp_options: Vec::new(),
                    payload: Vec::new(),
                    trailer: Vec::new(),
                };
            }
            Expect::Unchanged | Expect::Dropped | Expect::ToOneOf(_) => unreachable!(),
        }
        Ok(vec![f.build()])
    }
}
