//! Every map of the data plane. All are BTF maps so `bpftool map dump pinned
//! /sys/fs/bpf/redis-ha/NAME` prints named fields; `redis-ha-ctl` pins them under that
//! directory. Key → value, who writes, who reads:

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use redis_ha_common::{
    AddrKey, Backend, BackendStats, FLOW_TABLE_SIZE, FloatingLease, Flow, FlowHashKey, FlowKey,
    InterfaceMac, MAX_BACKENDS, MAX_CLIENT_NETS, MAX_FLOATING, MAX_INTERFACES, MAX_SERVICES,
    NatConfig, NatKey, RING_ENTRIES, ServiceKey, ServicePort, ServiceState, counter,
};

/// VIP + port → (service, write or read). Written by the controller when services change;
/// read for every TCP packet to tell VIP traffic from the rest.
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServicePort, { MAX_SERVICES as usize * 2 }> =
    HashMap::new();

/// service_id → master slot, live Maglev table, epoch. Written by the controller (a failover is
/// one write here); read for every VIP packet.
#[btf_map]
pub static SERVICE_STATE: Array<ServiceState, { MAX_SERVICES as usize }> = Array::new();

/// backend slot → address, service and read-pool flag. Slot 0 stays zero ("unset"). Written
/// by the controller before any state or ring entry points at the slot.
#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// ring_index(service, half, i) → backend slot: two Maglev tables per service, the inactive
/// one rewritten by the controller and then made live by flipping `ring_active`.
#[btf_map]
pub static READ_RING: Array<u32, { RING_ENTRIES as usize }> = Array::new();

/// Connection table, one entry per connection, keyed by client → VIP:port: the client's
/// packets get the backend as destination, the backend's replies the VIP port as source.
/// Written by the program on a connection's first packet and removed by it when the
/// connection closes; read on every packet. The controller dumps it, and its daemon removes
/// what the program cannot see end (`redis-ha-ctl`'s `dataplane::sweep`).
///
/// One entry rather than one per direction: a connection of one request then costs one
/// insert and one removal, which under connection churn was about a tenth of the program's
/// time (measured with a throw-away build; see the README's Performance section).
///
/// A plain hash table rather than an LRU one: under connection churn (a new connection per
/// request) the LRU's list bookkeeping, which takes another CPU's list lock whenever a
/// connection's entries are removed on the CPU that did not create them, made about a tenth
/// of the program's time. A full table does not refuse connections: see `FLOWS_SPILL`.
#[btf_map]
pub static FLOWS: HashMap<FlowKey, Flow, { FLOW_TABLE_SIZE as usize }> = HashMap::new();

/// Where a connection's entry goes when `FLOWS` is full: an LRU table of the same size, which
/// evicts its least recently used entries rather than refusing. Looked at only once something
/// spilled (`FLOWS_SPILLED` non-zero), so that until then a miss costs one lookup.
#[btf_map]
pub static FLOWS_SPILL: LruHashMap<FlowKey, Flow, { FLOW_TABLE_SIZE as usize }> = LruHashMap::new();

/// [0]: the secret key of `flow_hash`, which picks a read connection's replica. Written by
/// the controller at load (derived from the cluster's shared secret, so the same on every LB
/// node); read whenever the program picks a replica. All zero until written.
#[btf_map]
pub static FLOW_HASH_KEY: Array<FlowHashKey, 1> = Array::new();

/// [0]: when (`bpf_ktime_get_ns`) an entry first went to `FLOWS_SPILL`, 0 while none has.
/// Written by the program once; read by it on a `FLOWS` miss, and by the controller (status,
/// metrics).
#[btf_map]
pub static FLOWS_SPILLED: Array<u64, 1> = Array::new();

/// ifindex of a data-plane interface → its MAC. Written by the controller when it attaches;
/// read at XDP for a frame that would start a connection or be rewritten without one, so that
/// a frame a switch flooded here for another host is left alone (at TC the kernel says so
/// itself). No entry: the interface takes every frame.
#[btf_map]
pub static IF_MACS: HashMap<u32, InterfaceMac, { MAX_INTERFACES as usize }> = HashMap::new();

/// ifindex of a data-plane interface → [`redis_ha_common::if_role`]. Written by the controller
/// when it attaches, from `[dataplane] backend_interfaces`; read for every segment from a
/// backend's address, which is taken as a reply only where the interface faces the backends.
/// No entry (the key unset, as on one-subnet deployments where clients and backends share an
/// interface): every interface faces the backends.
#[btf_map]
pub static IF_ROLES: HashMap<u32, u32, { MAX_INTERFACES as usize }> = HashMap::new();

/// [0]: this node's NAT mode, source address and port range. Written by the controller at
/// load (all zero: destination NAT only); read for every new connection to a remote backend
/// and every packet to the node's own address.
#[btf_map]
pub static NAT: Array<NatConfig, 1> = Array::new();

/// Full NAT: (backend, source port) → the connection (client → VIP:port) that holds the port,
/// which is how a backend's reply finds its `FLOWS` entry. Inserted by the program with a
/// connection's entry (only if absent: that is what makes a port unique per backend), removed
/// with it; the controller's sweep removes any left without an entry (a spilled entry
/// evicted). Sized like `FLOWS` at load.
#[btf_map]
pub static NAT_PORTS: HashMap<NatKey, FlowKey, { FLOW_TABLE_SIZE as usize }> = HashMap::new();

/// [0]: where this CPU tries its next source port. Consecutive connections take consecutive
/// ports, so a port comes back into use as late as the range allows: a backend may still hold
/// the previous connection of that port in TIME_WAIT.
#[btf_map]
pub static NAT_CURSOR: PerCpuArray<u32, 1> = PerCpuArray::new();

/// [0]: where a new connection's entry is put together before it is inserted into `FLOWS`.
/// Program-private scratch space: the entry no longer fits beside the rest of the new
/// connection's path in the program's 512-byte stack.
#[btf_map]
pub static NEW_FLOW: PerCpuArray<Flow, 1> = PerCpuArray::new();

/// backend address → slot, mirroring `BACKENDS`. Written by the controller with each slot;
/// read for replies that have no `FLOWS` entry.
#[btf_map]
pub static BACKEND_ADDRS: HashMap<AddrKey, u32, { MAX_BACKENDS as usize }> = HashMap::new();

/// Client networks (longest prefix match) → 1. Written by the controller from
/// `[dataplane] client_networks`; a backend's reply without a `FLOWS` entry is rewritten only
/// when its destination is in one (empty: never, the default).
#[btf_map]
pub static CLIENT_NETS: LpmTrie<[u8; 4], u32, { MAX_CLIENT_NETS as usize }> = LpmTrie::new();

/// Floating address (the VIP, the backends' gateway) → until when this node may answer ARP for
/// it. Written by the controller of an `[ha]` node (kept a lease ahead while it holds the
/// address, 0 once it let go); read for every ARP frame. Empty (no `[ha]`): ARP untouched.
#[btf_map]
pub static FLOATING: HashMap<[u8; 4], FloatingLease, { MAX_FLOATING as usize }> = HashMap::new();

/// ifindex of a veth whose peer lives in another network namespace → 1. Written by the
/// controller when it attaches (`[dataplane] veth_peer_redirect`, TC hook only); read when the
/// FIB names an egress device. A packet leaving through one of these is handed straight to
/// the peer's ingress (`bpf_redirect_peer`) instead of being queued by the veth's transmit
/// for another softirq pass. Empty: every packet goes through the egress device.
#[btf_map]
pub static PEER_DEVS: HashMap<u32, u32, { MAX_INTERFACES as usize }> = HashMap::new();

/// Interface name (NUL-padded) → its `net.ipv4.conf.<name>.accept_local` before redis-ha set
/// it to 1. The program never touches it: `load` and the controller save a value the first
/// time they set the sysctl, `unload` (or a `load` whose config dropped the interface) writes
/// it back. Pinned with the other maps, it lives exactly as long as the data plane.
#[btf_map]
pub static ACCEPT_LOCAL: HashMap<[u8; 16], u32, { MAX_INTERFACES as usize }> = HashMap::new();

/// backend slot → traffic counters, per CPU. Written by the program; summed by the controller.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// `counter::*` → packets, per CPU: what was done with each packet and why.
#[btf_map]
pub static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU's program instance touches it.
        unsafe { *c += 1 };
    }
}

/// Adds to a backend's counters through `f`.
#[inline(always)]
pub fn backend_stats(slot: u32, f: impl FnOnce(&mut BackendStats)) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU's program instance touches it.
        f(unsafe { &mut *s });
    }
}
