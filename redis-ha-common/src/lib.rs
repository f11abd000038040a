//! The data plane's contract: every BPF map key and value, shared byte for byte by the XDP
//! program (`redis-ha-ebpf`) and the controller (`redis-ha-ctl`).
//!
//! Conventions, chosen so that `bpftool map dump` is readable by an operator:
//! - IPv4 addresses are `[u8; 4]` in network order (bpftool prints `[198,18,0,100]`);
//! - ports are `u16` in host order (bpftool prints `6380`);
//! - flags are `u32`, never `bool`; every padding byte is an explicit field;
//! - backend index 0 means "unset", so a zeroed array slot is never a real backend.
#![no_std]

use core::mem::size_of;

/// Most services (VIP + write port + read port) one data plane serves.
pub const MAX_SERVICES: u32 = 64;
/// Backend slots, shared by all services. Slot 0 is never used.
pub const MAX_BACKENDS: u32 = 1024;
/// Entries in one Maglev lookup table. A prime well above the number of replicas a service
/// has (Maglev wants M >> N), small enough that two tables per service fit in a few MiB.
pub const RING_SIZE: u32 = 4093;
/// Each service owns two tables (double buffering); [`ServiceState::ring_active`] picks one.
pub const RING_ENTRIES: u32 = MAX_SERVICES * 2 * RING_SIZE;
/// Client networks whose replies may be rewritten without a connection-table entry.
pub const MAX_CLIENT_NETS: u32 = 256;
/// Default connection-table capacity (one entry per connection), which
/// `[dataplane] flow_table_size` overrides at load time. 65,536 entries hold the default
/// `maxclients` (10,000) of six backends at once, in about 8 MiB (and as much again for the
/// spill table). A larger table is not free: every lookup lands at a
/// random place in it, and on the 2-vCPU VM of `cargo xtask bench` the program's time per
/// packet with a new connection for every request grew by about half at 262,144 entries
/// (cache and TLB misses, measured with the LRU table of earlier versions).
pub const FLOW_TABLE_SIZE: u32 = 65_536;

/// Pin directory under bpffs for the program's link and every map.
pub const PIN_DIR: &str = "/sys/fs/bpf/redis-ha";

/// What a VIP port is for.
pub mod port_kind {
    /// Always forwarded to the service's current master.
    pub const WRITE: u32 = 1;
    /// Balanced over the service's read pool by the Maglev table.
    pub const READ: u32 = 2;
}

/// Key of `SERVICES`: a VIP and one of its ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub vip: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}

/// Value of `SERVICES`: which service this VIP port belongs to and which of its ports it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    /// Index into `SERVICE_STATE` (and the service's half of `READ_RING`).
    pub service_id: u32,
    /// [`port_kind::WRITE`] or [`port_kind::READ`].
    pub kind: u32,
}

/// Value of `SERVICE_STATE[service_id]`: the small, hot record a failover rewrites.
///
/// Backends and rings are filled first; then one write of this record switches traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Backend slot of the current master; 0 = no master (new write connections are reset).
    pub master: u32,
    /// Which of the service's two Maglev tables is live (0 or 1).
    pub ring_active: u32,
    /// Failover epoch that installed this master; userspace never writes an older one.
    pub epoch: u64,
    /// The service's VIP and ports, for replies that arrive without a connection-table entry
    /// (another LB node accepted the connection, or the entry was evicted).
    pub vip: [u8; 4],
    pub write_port: u16,
    pub read_port: u16,
}

/// Bits of [`Backend::flags`].
pub mod backend_flags {
    /// The backend is in its service's read pool. Read-port connections to a backend
    /// without it are reset on their next packet.
    pub const READABLE: u32 = 1;
    /// The backend's address is one of this node's own (the redis-server beside the data
    /// plane, as on the seed's machines): its connections are delivered to the local stack
    /// with only the destination rewritten, and its replies mapped back at TC egress, in
    /// either NAT mode. Set per node by the controller.
    pub const LOCAL: u32 = 2;
}

/// Value of `BACKENDS[slot]`: where a backend lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub ip: [u8; 4],
    pub port: u16,
    pub _pad: u16,
    /// The service this slot belongs to (a slot serves one service).
    pub service_id: u32,
    /// [`backend_flags`] bits.
    pub flags: u32,
}

/// Key of `BACKEND_ADDRS`: a backend's address, to find its slot from a reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub ip: [u8; 4],
    pub port: u16,
    pub _pad: u16,
}

/// Value of `FLOATING` (keyed by a floating IPv4 address): until when this node may answer ARP
/// for it, in `bpf_ktime_get_ns` time (`CLOCK_MONOTONIC`). The controller keeps it a lease
/// ahead while its peers agree it holds the address, and sets 0 when it lets go; if the
/// controller dies, the lease runs out by itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloatingLease {
    pub until_ns: u64,
}
const _: () = assert!(size_of::<FloatingLease>() == 8);

/// Floating addresses one node may hold (`FLOATING` entries).
pub const MAX_FLOATING: u32 = 16;

/// Data-plane interfaces one node may have (`PEER_DEVS`, `ACCEPT_LOCAL`).
pub const MAX_INTERFACES: u32 = 256;

/// Key of `CLIENT_NETS` (an LPM trie key: prefix length in bits, then the address).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Key of `FLOWS`: a TCP connection as its client addressed it (client → VIP:port, addresses
/// as on the wire). Replies find the entry from their own addresses: the backend's address
/// gives its slot and service (`BACKEND_ADDRS`, `BACKENDS`), the service its VIP and ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

/// Value of `IF_MACS` (keyed by ifindex): a data-plane interface's own MAC, against which the
/// XDP program tells frames for this host from frames a switch flooded to every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Values of `IF_ROLES` (keyed by ifindex): what a data-plane interface faces.
pub mod if_role {
    /// Clients only: a segment from a backend's address arriving here is not a reply.
    pub const CLIENTS: u32 = 1;
    /// The backends (and maybe clients too): their replies are taken here.
    pub const BACKENDS: u32 = 2;
}

/// `NatConfig::mode`.
pub mod nat_mode {
    /// Only the destination is rewritten: backends see the client's address, and their
    /// replies must come back through this node (it is their gateway).
    pub const DESTINATION: u32 = 0;
    /// The source too becomes this node's address and a port of its range, so that any host
    /// that can reach the node can be a backend, and any client (on the backends' subnet
    /// included) a client.
    pub const FULL: u32 = 1;
}

/// Value of `NAT[0]`: how this node translates connections to remote backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// [`nat_mode`].
    pub mode: u32,
    /// Full NAT: the source address of translated connections (one of this node's).
    pub ip: [u8; 4],
    /// Full NAT: source ports `port_min ..= port_max` (host order).
    pub port_min: u16,
    pub port_max: u16,
    pub _pad: u32,
}

/// Key of `NAT_PORTS`: a full-NAT translation as the backend sees it (the node's address is
/// `NatConfig::ip`), so that a port is unique per backend rather than per node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub backend_ip: [u8; 4],
    pub backend_port: u16,
    pub nat_port: u16,
}

/// How many ports a new connection tries before it is refused (`RESET_NAT_EXHAUSTED`): all
/// of a range this small, a sample of a larger one. Bounded for the verifier.
pub const NAT_PORT_TRIES: u32 = 64;

/// Of [`NAT_PORT_TRIES`], how many follow the CPU's cursor; the rest are random ports of the
/// range. Consecutive tries alone fail inside any run of that many busy ports, which every
/// connection pool opened at once leaves (another CPU's cursor, or this one's after it wraps,
/// walks into it): random tries fail only when most of the range is taken.
pub const NAT_PORT_TRIES_IN_ORDER: u32 = 8;

/// Bits of [`Flow::flags`].
pub mod flow_flags {
    /// The backend is on this node ([`crate::backend_flags::LOCAL`]): the client's packets
    /// go to the local stack.
    pub const LOCAL: u16 = 1;
}

/// Bits of [`Flow::end`].
pub mod flow_end {
    /// The client sent a FIN.
    pub const CLIENT_FIN: u16 = 1;
    /// Either side sent an RST. The entry stays (the reset may be out of window), but a new
    /// connection through the other VIP port may reuse the backend-side addresses.
    pub const RST: u16 = 2;
    /// The backend sent a FIN.
    pub const BACKEND_FIN: u16 = 4;
    /// Both sides sent a FIN: the next bare ACK (the last segment of an orderly close) removes
    /// the entry.
    pub const BOTH_FIN: u16 = CLIENT_FIN | BACKEND_FIN;
}

/// Value of `FLOWS`: one TCP connection through a VIP port, both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// The backend's address, which replaces the destination of the client's packets.
    pub backend_ip: [u8; 4],
    pub backend_port: u16,
    /// [`flow_end`] bits: how the connection has ended so far.
    pub end: u16,
    /// Backend slot the connection was given; checked against the live state on every client
    /// packet so a switched master or a removed replica resets the connection instead of
    /// hanging it.
    pub backend: u32,
    pub service_id: u32,
    /// [`port_kind`] of the VIP port the client connected to.
    pub kind: u32,
    /// Full NAT: the source port this node gave the connection toward the backend (its
    /// `NAT_PORTS` entry); 0 when only the destination is rewritten.
    pub nat_port: u16,
    /// [`flow_flags`] bits.
    pub flags: u16,
    /// Full NAT: the source address toward the backend (`NatConfig::ip` when it was made).
    pub nat_ip: [u8; 4],
    /// The backend's acknowledgement number (the client's next sequence number), as last
    /// noted: set from the SYN, then written by the backend's replies only when it moved more
    /// than [`ACK_STEP`], so that the entry is not written on every packet. A client's FIN or
    /// RST counts only within [`seq_in_window`] of it. 0: not known.
    pub backend_ack: u32,
    /// Where the client's packets went last, so most packets skip the FIB lookup.
    pub to_backend: NextHop,
    /// Where the backend's replies went last. Its `resolved_ns` stays 0 until the backend
    /// answers.
    pub to_client: NextHop,
    /// The client's acknowledgement number (the backend's next sequence number), noted like
    /// `backend_ack` by the client's packets; the backend's FIN or RST counts only within
    /// [`seq_in_window`] of it. 0: not known yet (until the client's first ACK).
    pub client_ack: u32,
    pub _pad: u32,
}

/// How far a side's acknowledgement number moves before the program writes it into the entry
/// again. The two directions run on different CPUs and share the entry's cache line: a write
/// per packet would bounce it between them.
pub const ACK_STEP: u32 = 1 << 20;
/// How far beyond the noted acknowledgement number a FIN or RST's sequence number may be: the
/// noted value lags by up to [`ACK_STEP`], and the sender may have a whole receive window in
/// flight past it (Linux's default maximum is 6 MiB).
pub const SEQ_AHEAD: u32 = ACK_STEP + (1 << 24);
/// How far before it: a retransmission of what was already acknowledged.
pub const SEQ_BEHIND: u32 = 1 << 16;

/// Does sequence number `seq` lie in the window around `acked`, the peer's acknowledgement
/// number as noted in the entry (0: unknown, anything goes)? A forger who does not see the
/// connection hits it about once in 250 tries, and a FIN or RST outside it ends nothing.
pub const fn seq_in_window(seq: u32, acked: u32) -> bool {
    if acked == 0 {
        return true;
    }
    let d = seq.wrapping_sub(acked);
    d <= SEQ_AHEAD || d >= 0u32.wrapping_sub(SEQ_BEHIND)
}

impl Flow {
    /// When (`bpf_ktime_get_coarse_ns`) either direction last asked the FIB: the connection's
    /// last packet came at most [`NEXT_HOP_TTL_NS`] after it.
    pub const fn last_active_ns(&self) -> u64 {
        let a = self.to_backend.resolved_ns;
        let b = self.to_client.resolved_ns;
        if a > b { a } else { b }
    }
}

/// How long the program trusts a cached [`NextHop`] before asking the FIB again. This bounds
/// how late a changed neighbour (new MAC), route or MTU reaches a connection that already
/// exists; new connections always ask the FIB. One lookup per 100 ms of a busy connection
/// costs nothing measurable, and 100 ms is well below a failover's own delay.
pub const NEXT_HOP_TTL_NS: u64 = 100_000_000;

/// A `bpf_fib_lookup` answer kept in a [`Flow`]: egress device and MACs. The program uses it
/// only for a packet that arrives on the same device, is no longer than one the FIB already
/// accepted (its MTU check), and within [`NEXT_HOP_TTL_NS`] of the lookup; anything else asks
/// the FIB again. All zero: nothing cached yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// `bpf_ktime_get_coarse_ns()` at the lookup.
    pub resolved_ns: u64,
    /// Egress device; 0 = nothing cached.
    pub ifindex: u32,
    /// Ingress device of the packet that was looked up: the FIB's answer depends on it
    /// (forwarding enabled, policy rules).
    pub ingress_ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// IP total length the FIB's MTU check passed: the packet's own, or a full 1500-byte
    /// frame's when the packet was smaller and the egress MTU allows it, so later full-size
    /// segments of the connection need no lookup of their own.
    pub max_len: u16,
    /// [`hop_flags`] of the egress device.
    pub flags: u16,
}

/// [`NextHop::flags`].
pub mod hop_flags {
    /// The egress device is in `PEER_DEVS`: hand the packet to its peer's ingress.
    pub const PEER: u16 = 1;
}

/// Value of `BACKEND_STATS[slot]` (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Packets forwarded to the backend (client → backend).
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Replies from the backend rewritten back to the VIP.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Connections assigned to this backend.
    pub new_flows: u64,
    /// Connections reset because this backend stopped being the master / left the read pool.
    pub flows_reset: u64,
    /// Connections that closed in order (FIN both ways, then the last ACK): their entries were
    /// removed from the connection table.
    pub flows_closed: u64,
}

/// Indexes of `COUNTERS` (per CPU, one `u64` packet count each): what the program did with
/// each packet and why. Userspace prints them by these names.
pub mod counter {
    /// Rewritten toward a backend and redirected (fast path).
    pub const FWD_TO_BACKEND: u32 = 0;
    /// Reply rewritten back to VIP:port and redirected (fast path).
    pub const FWD_TO_CLIENT: u32 = 1;
    /// Rewritten, then passed to the kernel, which knows better than the fast path: no
    /// neighbour entry yet (the kernel resolves ARP; later packets take the fast path), a local
    /// destination or no route at all (the FIB says "not forwarded" for both), TTL expiring, or
    /// an MTU to enforce. The kernel forwards, delivers or rejects it as it would have.
    pub const PASS_REWRITTEN: u32 = 2;
    /// Not IPv4 (IPv6, ARP, ...): passed untouched.
    pub const PASS_NOT_IPV4: u32 = 3;
    /// IPv4 but not TCP (UDP to a VIP port included): passed untouched.
    pub const PASS_NOT_TCP: u32 = 4;
    /// TCP not addressed to a VIP service port and not a reply of a known connection.
    pub const PASS_NOT_SERVICE: u32 = 5;
    /// Truncated Ethernet/IP/TCP header or an IHL/data offset below the minimum.
    pub const PASS_MALFORMED: u32 = 6;
    /// IPv4 fragment: ports are not in every fragment, so it is left to the kernel.
    pub const PASS_FRAGMENT: u32 = 7;
    /// IPv4 header with options (IHL > 5): left to the kernel.
    pub const PASS_IP_OPTIONS: u32 = 8;
    /// A connection whose backend is no longer valid got a TCP RST.
    pub const RESET_STALE_FLOW: u32 = 9;
    /// A new connection to a port with no backend (no master / empty read pool) got a TCP RST.
    pub const RESET_NO_BACKEND: u32 = 10;
    /// The route to the destination is a blackhole, unreachable or prohibited, or forwarding is
    /// disabled on the ingress interface (`net.ipv4.ip_forward=0`): dropped.
    pub const DROP_NO_ROUTE: u32 = 11;
    /// A map or helper call failed (flow table insert, packet resize): dropped.
    pub const DROP_INTERNAL: u32 = 12;
    /// A client's RST on a connection we would have reset (stale or without backend): dropped,
    /// since a reset must never be answered with a reset (RFC 9293, 3.10.7.1).
    pub const DROP_RST_NO_BACKEND: u32 = 13;
    /// A backend's reply with no connection-table entry, to an address in a client network:
    /// rewritten from the live state (write port if it is the master, else read port) and
    /// redirected. This is what keeps connections alive when they move to another LB node.
    pub const FWD_TO_CLIENT_NO_FLOW: u32 = 14;
    /// An ARP request for a floating address (the VIP, the backends' gateway) while this node's
    /// lease on it has expired: dropped, so the kernel does not answer for an address another
    /// LB node may hold now (a controller that died leaves the addresses configured).
    pub const DROP_ARP_NOT_HOLDER: u32 = 15;
    /// A new connection would have reached its backend from the same client address and port
    /// as a live connection through the other VIP port (the master serves both ports, and the
    /// client reused its source port for a different destination port): both would have the
    /// same addresses on the backend's side, which TCP cannot tell apart. The new one got a
    /// TCP RST; the client's next attempt comes from another port.
    pub const RESET_PORT_IN_USE: u32 = 16;
    /// Full NAT: a new connection to a remote backend found no free source port (every port
    /// tried is in use toward that backend, or the translation table is full): it got a TCP
    /// RST instead of a translation.
    pub const RESET_NAT_EXHAUSTED: u32 = 17;
    /// Full NAT: a client's packet (not a SYN) of a connection this node has no entry for (it
    /// was translated by a node that has since lost the VIP, or its entry was evicted): it got
    /// a TCP RST, so the client reconnects at once rather than waiting for a timeout.
    pub const RESET_NO_FLOW: u32 = 18;
    /// A client's packet for a backend on this node: destination rewritten, delivered to the
    /// local stack.
    pub const FWD_LOCAL: u32 = 19;
    /// A local backend's reply rewritten back to VIP:port at TC egress.
    pub const FWD_LOCAL_REPLY: u32 = 20;
    /// A frame for another host's MAC (a switch flooded it to every port) that would have
    /// started a connection or been rewritten without one: passed untouched, the kernel drops
    /// it. Only the host it is addressed to acts on it.
    pub const PASS_NOT_FOR_HOST: u32 = 21;
    /// A client's segment that is not a SYN, on a connection this node has no entry for (made
    /// through another LB node, or its entry was evicted or swept): rewritten toward the
    /// backend the live state maps it to (the master, or the read pool's Maglev entry) and
    /// forwarded, without storing anything, so that segments which start no connection (a
    /// flood of bare ACKs, FINs or RSTs) cannot fill the connection table.
    pub const FWD_TO_BACKEND_NO_FLOW: u32 = 22;
    /// A segment from a backend's address that arrived on an interface which does not face the
    /// backends (`[dataplane] backend_interfaces`): not taken as a reply (anyone on the client
    /// side can forge a backend's address, and XDP runs before reverse-path filtering), passed
    /// untouched.
    pub const PASS_NOT_BACKEND_SIDE: u32 = 23;
    /// A FIN or RST of a known connection whose sequence number lies outside the connection's
    /// window (`seq_in_window` of the other side's noted acknowledgement): most likely forged
    /// by someone who does not see the connection. Dropped; the entry is left as it was (its
    /// receiver would have ignored it too).
    pub const DROP_OUT_OF_WINDOW: u32 = 24;
    /// Number of counters (size of the `COUNTERS` array).
    pub const COUNT: u32 = 25;

    /// Names for display, indexed like the constants above.
    pub const NAMES: [&str; COUNT as usize] = [
        "fwd_to_backend",
        "fwd_to_client",
        "pass_rewritten",
        "pass_not_ipv4",
        "pass_not_tcp",
        "pass_not_service",
        "pass_malformed",
        "pass_fragment",
        "pass_ip_options",
        "reset_stale_flow",
        "reset_no_backend",
        "drop_no_route",
        "drop_internal",
        "drop_rst_no_backend",
        "fwd_to_client_no_flow",
        "drop_arp_not_holder",
        "reset_port_in_use",
        "reset_nat_exhausted",
        "reset_no_flow",
        "fwd_local",
        "fwd_local_reply",
        "pass_not_for_host",
        "fwd_to_backend_no_flow",
        "pass_not_backend_side",
        "drop_out_of_window",
    ];
}

/// Pinned map names (files under [`PIN_DIR`]); the XDP program declares maps with these names.
pub mod map_name {
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_STATE: &str = "SERVICE_STATE";
    pub const BACKENDS: &str = "BACKENDS";
    pub const READ_RING: &str = "READ_RING";
    pub const FLOWS: &str = "FLOWS";
    pub const FLOWS_SPILL: &str = "FLOWS_SPILL";
    pub const FLOWS_SPILLED: &str = "FLOWS_SPILLED";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const BACKEND_ADDRS: &str = "BACKEND_ADDRS";
    pub const CLIENT_NETS: &str = "CLIENT_NETS";
    pub const FLOATING: &str = "FLOATING";
    pub const PEER_DEVS: &str = "PEER_DEVS";
    pub const ACCEPT_LOCAL: &str = "ACCEPT_LOCAL";
    pub const NAT: &str = "NAT";
    pub const NAT_PORTS: &str = "NAT_PORTS";
    pub const NAT_CURSOR: &str = "NAT_CURSOR";
    pub const IF_MACS: &str = "IF_MACS";
    pub const FLOW_HASH_KEY: &str = "FLOW_HASH_KEY";
    pub const IF_ROLES: &str = "IF_ROLES";
}

/// Value of `FLOW_HASH_KEY[0]`: the secret key of [`flow_hash`]. The same on every LB node
/// of a cluster (the controller derives it from the cluster's shared secret), so that every
/// node sends a connection to the same replica; unknown to clients, so that no client can
/// choose its replica by choosing its source port. All zero: not written (yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowHashKey {
    pub k0: u64,
    pub k1: u64,
}

impl FlowHashKey {
    /// The key from 16 bytes, as SipHash reads its key (two little-endian words).
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self {
            k0: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            k1: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}

/// One SipRound.
#[inline(always)]
const fn sip_round(v: [u64; 4]) -> [u64; 4] {
    let [mut v0, mut v1, mut v2, mut v3] = v;
    v0 = v0.wrapping_add(v1);
    v1 = v1.rotate_left(13) ^ v0;
    v0 = v0.rotate_left(32);
    v2 = v2.wrapping_add(v3);
    v3 = v3.rotate_left(16) ^ v2;
    v0 = v0.wrapping_add(v3);
    v3 = v3.rotate_left(21) ^ v0;
    v2 = v2.wrapping_add(v1);
    v1 = v1.rotate_left(17) ^ v2;
    v2 = v2.rotate_left(32);
    [v0, v1, v2, v3]
}

/// SipHash-2-4 compression of one 8-byte message word.
#[inline(always)]
const fn sip_block(v: [u64; 4], m: u64) -> [u64; 4] {
    let [v0, v1, v2, v3] = v;
    let [v0, v1, v2, v3] = sip_round(sip_round([v0, v1, v2, v3 ^ m]));
    [v0 ^ m, v1, v2, v3]
}

/// Hash of a client → VIP connection that picks its Maglev table entry (and, under full NAT,
/// where the search for a source port starts): SipHash-2-4, keyed by `secret`, of the 12
/// bytes client address, VIP, client port and VIP port (ports big-endian, as on the wire),
/// truncated to 32 bits.
///
/// Keyed so that a client cannot choose its replica (an unkeyed hash lets it pick source
/// ports that all land on one replica); deterministic given the key, so every data-plane
/// node, given the same key and tables, sends a connection to the same replica. SipHash is a
/// keyed PRF made for short inputs, and its fixed-length form here has no loop and no memory
/// access, which the verifier takes as it is; it costs about 100 ALU instructions, paid only
/// on a read port's new connection.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey, secret: &FlowHashKey) -> u32 {
    let (s, d) = (key.src_ip, key.dst_ip);
    let m0 = u64::from_le_bytes([s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]);
    let [sp0, sp1] = key.src_port.to_be_bytes();
    let [dp0, dp1] = key.dst_port.to_be_bytes();
    // The last word: the 4 bytes left, then the message length (12) in the top byte.
    let m1 = u32::from_le_bytes([sp0, sp1, dp0, dp1]) as u64 | (12u64 << 56);
    let v = [
        secret.k0 ^ 0x736f_6d65_7073_6575,
        secret.k1 ^ 0x646f_7261_6e64_6f6d,
        secret.k0 ^ 0x6c79_6765_6e65_7261,
        secret.k1 ^ 0x7465_6462_7974_6573,
    ];
    let [v0, v1, v2, v3] = sip_block(sip_block(v, m0), m1);
    let v = sip_round(sip_round(sip_round(sip_round([v0, v1, v2 ^ 0xff, v3]))));
    (v[0] ^ v[1] ^ v[2] ^ v[3]) as u32
}

/// Slot of `READ_RING` holding entry `i` of table `half` (0/1) of `service_id`.
pub const fn ring_index(service_id: u32, half: u32, i: u32) -> u32 {
    (service_id * 2 + half) * RING_SIZE + i
}

// The eBPF and userspace builds must agree on every layout; a field added without its
// padding would silently shift the other side's view.
const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<ServicePort>() == 8);
const _: () = assert!(size_of::<ServiceState>() == 24);
const _: () = assert!(size_of::<AddrKey>() == 8);
const _: () = assert!(size_of::<NetKey>() == 8);
const _: () = assert!(size_of::<Backend>() == 16);
const _: () = assert!(size_of::<FlowKey>() == 12);
const _: () = assert!(size_of::<NextHop>() == 32);
const _: () = assert!(size_of::<Flow>() == 104);
const _: () = assert!(size_of::<NatConfig>() == 16);
const _: () = assert!(size_of::<NatKey>() == 8);
const _: () = assert!(size_of::<InterfaceMac>() == 8);
const _: () = assert!(size_of::<BackendStats>() == 56);
const _: () = assert!(size_of::<FlowHashKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are #[repr(C)], Copy, made only of integers and byte arrays, with
    // every padding byte an explicit field, so any bit pattern is a valid value.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServicePort {}
    unsafe impl aya::Pod for ServiceState {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for NetKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for FloatingLease {}
    unsafe impl aya::Pod for NatConfig {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for InterfaceMac {}
    unsafe impl aya::Pod for FlowHashKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::hash::Hasher as _;

    use super::*;

    /// SipHash-2-4 as the reference implementation computes it over the same 12 bytes.
    #[expect(
        deprecated,
        reason = "std's SipHasher is SipHash-2-4 itself, the reference"
    )]
    fn reference(key: &FlowKey, secret: &FlowHashKey) -> u32 {
        let mut h = std::hash::SipHasher::new_with_keys(secret.k0, secret.k1);
        h.write(&key.src_ip);
        h.write(&key.dst_ip);
        h.write(&key.src_port.to_be_bytes());
        h.write(&key.dst_port.to_be_bytes());
        h.finish() as u32
    }

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src_ip: [198, 18, (i >> 8) as u8, i as u8],
            dst_ip: [198, 18, 0, 100],
            src_port: 32768 + (i as u16).wrapping_mul(7919),
            dst_port: 6381,
        }
    }

    #[test]
    fn flow_hash_is_siphash_2_4_of_the_connection() {
        let secrets = [
            FlowHashKey::default(),
            FlowHashKey::from_bytes(*b"0123456789abcdef"),
            FlowHashKey {
                k0: u64::MAX,
                k1: 0x0123_4567_89ab_cdef,
            },
        ];
        for secret in &secrets {
            for i in 0..1000 {
                assert_eq!(
                    flow_hash(&key(i), secret),
                    reference(&key(i), secret),
                    "{i}"
                );
            }
        }
    }

    #[test]
    fn the_sequence_window_is_around_the_noted_acknowledgement_and_wraps() {
        for acked in [1u32, 0x6d2f_0a12, u32::MAX - 10] {
            assert!(seq_in_window(acked, acked));
            assert!(seq_in_window(acked.wrapping_add(SEQ_AHEAD), acked));
            assert!(!seq_in_window(acked.wrapping_add(SEQ_AHEAD + 1), acked));
            assert!(seq_in_window(acked.wrapping_sub(SEQ_BEHIND), acked));
            assert!(!seq_in_window(acked.wrapping_sub(SEQ_BEHIND + 1), acked));
            assert!(!seq_in_window(acked.wrapping_add(0x8000_0000), acked));
        }
        assert!(
            seq_in_window(0x1234_5678, 0),
            "nothing noted: anything goes"
        );
    }

    #[test]
    fn another_secret_sends_connections_elsewhere() {
        let a = FlowHashKey::from_bytes(*b"cluster-a-secret");
        let b = FlowHashKey::from_bytes(*b"cluster-b-secret");
        let same = (0..1000)
            .filter(|&i| flow_hash(&key(i), &a) % RING_SIZE == flow_hash(&key(i), &b) % RING_SIZE)
            .count();
        // Independent keys agree on a ring entry about once in RING_SIZE.
        assert!(same < 5, "{same} of 1000 connections kept their ring entry");
    }
}
