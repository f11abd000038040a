//! redis-ha's XDP program: the write port of a VIP goes to the service's master, the read port
//! to a replica picked by a Maglev table; replies get their source rewritten back to the VIP.
//! Only the destination (and, on replies, the source) changes, so backends see the client's
//! real address. Everything else passes to the kernel untouched.
#![no_std]
#![no_main]

mod flows;
mod frame;
mod maps;
mod packet;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        bpf_fib_lookup as FibParams,
    },
    helpers::generated::{
        bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_peer,
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use frame::Frame;
use maps::{
    BACKEND_ADDRS, BACKENDS, CLIENT_NETS, FLOATING, PEER_DEVS, READ_RING, SERVICE_STATE, SERVICES,
    backend_stats, count,
};
use packet::*;
use redis_ha_common::{
    AddrKey, Flow, FlowKey, NEXT_HOP_TTL_NS, NextHop, RING_SIZE, ServiceKey, ServicePort,
    ServiceState, backend_flags, counter, flow_end, flow_hash, hop_flags, port_kind, ring_index,
};

const AF_INET: u8 = 2;

/// Entry point. Anything the fast path does not own goes to the kernel (`XDP_PASS`): the
/// program sits on interfaces that also carry the host's own traffic (SSH, replication
/// between backends, ARP), and the kernel handled all of that before we were attached.
#[xdp]
pub fn redis_ha(ctx: XdpContext) -> u32 {
    run(&ctx)
}

/// The same program at the TC ingress hook (`xdp_mode = "tc"`), for devices where XDP has to
/// copy every packet first (veth, drivers without native XDP).
#[classifier]
pub fn redis_ha_tc(ctx: TcContext) -> i32 {
    frame::pull_headers(&ctx, RST_FRAME_LEN as u32);
    run(&ctx) as i32
}

#[inline(always)]
fn run<C: Frame>(ctx: &C) -> u32 {
    match try_redis_ha(ctx) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            C::PASS
        }
    }
}

/// Drops an ARP request for a floating address this node's lease no longer covers: the
/// addresses stay configured when a controller dies, and the kernel would go on answering for
/// them while another LB node holds them. Every other ARP frame passes.
#[inline(always)]
fn arp_guard<C: Frame>(ctx: &C) -> Result<u32, u32> {
    let arp: *const ArpHdr = ptr_at(ctx, IP_OFF).ok_or(counter::PASS_MALFORMED)?;
    // SAFETY: ptr_at checked that the ARP message lies inside the packet.
    let (oper, target) = unsafe { ((*arp).oper, (*arp).tpa) };
    if oper != ARP_REQUEST {
        return Err(counter::PASS_NOT_IPV4);
    }
    // SAFETY: the value is copied out at once.
    let Some(lease) = (unsafe { FLOATING.get(&target) }).copied() else {
        return Err(counter::PASS_NOT_IPV4);
    };
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } < lease.until_ns {
        return Err(counter::PASS_NOT_IPV4);
    }
    count(counter::DROP_ARP_NOT_HOLDER);
    Ok(C::DROP)
}

/// `Err(counter)` means "pass untouched, counted under `counter`".
#[inline(always)]
fn try_redis_ha<C: Frame>(ctx: &C) -> Result<u32, u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(counter::PASS_MALFORMED)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type != ETH_P_IPV4 {
        if ether_type == ETH_P_ARP {
            return arp_guard(ctx);
        }
        return Err(counter::PASS_NOT_IPV4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, IP_OFF).ok_or(counter::PASS_MALFORMED)?;
    let ip = unsafe { &mut *ip };
    let ihl = ip.ver_ihl & 0x0f;
    if ip.ver_ihl >> 4 != 4 || ihl < 5 {
        return Err(counter::PASS_MALFORMED);
    }
    if ip.proto != IPPROTO_TCP {
        return Err(counter::PASS_NOT_TCP);
    }
    // Non-first fragments carry no ports, so fragments of one datagram could not be NATed
    // consistently; the kernel reassembles them (and owns the VIP address) instead.
    if u16::from_be_bytes(ip.frag) & IP_MF_OFFSET_MASK != 0 {
        return Err(counter::PASS_FRAGMENT);
    }
    // Options never occur on Redis traffic in practice; the kernel handles the rare one.
    if ihl != 5 {
        return Err(counter::PASS_IP_OPTIONS);
    }
    let tcp: *mut TcpHdr = ptr_at(ctx, TCP_OFF).ok_or(counter::PASS_MALFORMED)?;
    let tcp = unsafe { &mut *tcp };
    if tcp.doff_res >> 4 < 5 || ctx.ip_len(ip) < (Ipv4Hdr::LEN + TcpHdr::LEN) as u32 {
        return Err(counter::PASS_MALFORMED);
    }

    let fkey = FlowKey {
        src_ip: ip.src,
        dst_ip: ip.dst,
        src_port: u16::from_be_bytes(tcp.sport),
        dst_port: u16::from_be_bytes(tcp.dport),
    };
    // A bare SYN always starts over: the client may reuse a port whose old entry points at a
    // backend that has since been replaced.
    let bare_syn = tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !bare_syn {
        // A reply comes from a backend's address. Asked first: `BACKEND_ADDRS` is small and
        // stays in cache, so a client's packet pays little for the miss, while asking `FLOWS`
        // first would cost every reply a miss in a large table.
        if let Some(owner) = backend_of(fkey.src_ip, fkey.src_port) {
            return backend_reply(ctx, eth, ip, tcp, &fkey, owner);
        }
        // Most of the client's packets belong to a known connection: one lookup finds it, and
        // the service's own entry is not needed (about 15 ns per packet less than asking
        // SERVICES first).
        // SAFETY: a map value stays valid for the whole run of the program (RCU); another
        // CPU may write its next hops concurrently, see `next_hop`.
        if let Some(flow) = flows::get(&fkey) {
            let closed = closing(ip, tcp, flow, flow_end::CLIENT_FIN);
            let slot = flow.backend;
            let action = along_flow(ctx, eth, ip, tcp, &fkey, flow);
            if closed {
                // Last: `flow` points into the entry, which may be reused once removed. The
                // packet itself no longer needs it (a redirect is carried out after return).
                // A stale connection's entry is gone already: that one counts as a reset.
                if flows::remove(&fkey) {
                    backend_stats(slot, |s| s.flows_closed += 1);
                }
            }
            return Ok(action);
        }
    }

    let key = ServiceKey {
        vip: ip.dst,
        port: u16::from_be_bytes(tcp.dport),
        _pad: 0,
    };
    // SAFETY: the value is copied out before any map update.
    if let Some(svc) = unsafe { SERVICES.get(&key) }.copied() {
        return Ok(new_flow(ctx, eth, ip, tcp, &fkey, svc));
    }
    if bare_syn {
        forget_direct(&fkey);
    }
    Err(counter::PASS_NOT_SERVICE)
}

/// A new connection straight to a backend (not through a VIP) may reuse the client port of an
/// old VIP connection to that backend whose entry is still in the table: that entry would
/// rewrite this connection's SYN-ACK to come from the VIP. Forget it.
#[inline(always)]
fn forget_direct(fkey: &FlowKey) {
    if let Some(owner) = backend_of(fkey.dst_ip, fkey.dst_port)
        && let Some((key, _)) = reply_flow(fkey.src_ip, fkey.src_port, &owner)
    {
        flows::remove(&key);
    }
}

/// The backend at an address, and its service's live state.
struct Owner {
    slot: u32,
    readable: bool,
    state: ServiceState,
}

#[inline(always)]
fn backend_of(ip: [u8; 4], port: u16) -> Option<Owner> {
    let addr = AddrKey { ip, port, _pad: 0 };
    // SAFETY: the value is copied out at once.
    let slot = unsafe { BACKEND_ADDRS.get(&addr) }.copied()?;
    let be = BACKENDS.get(slot).copied()?;
    let state = SERVICE_STATE.get(be.service_id).copied()?;
    Some(Owner {
        slot,
        readable: be.flags & backend_flags::READABLE != 0,
        state,
    })
}

/// The entry (and its key) of the connection from `client_ip:client_port` to `owner`'s service
/// that `owner` serves. The client may have one connection through each VIP port from the
/// same port (to two backends, see [`new_flow`]): the port the backend's role makes likelier
/// is asked first, so the common case takes one lookup.
#[inline(always)]
fn reply_flow(
    client_ip: [u8; 4],
    client_port: u16,
    owner: &Owner,
) -> Option<(FlowKey, &'static mut Flow)> {
    let st = &owner.state;
    let (first, second) = if owner.slot == st.master {
        (st.write_port, st.read_port)
    } else {
        (st.read_port, st.write_port)
    };
    let mut key = FlowKey {
        src_ip: client_ip,
        dst_ip: st.vip,
        src_port: client_port,
        dst_port: first,
    };
    if let Some(flow) = flows::get(&key)
        && flow.backend == owner.slot
    {
        return Some((key, flow));
    }
    key.dst_port = second;
    let flow = flows::get(&key).filter(|f| f.backend == owner.slot)?;
    Some((key, flow))
}

/// Backend → client: the source becomes the VIP port of the client's connection.
#[inline(always)]
fn backend_reply<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    fkey: &FlowKey,
    owner: Owner,
) -> Result<u32, u32> {
    if let Some((key, flow)) = reply_flow(fkey.dst_ip, fkey.dst_port, &owner) {
        let closed = closing(ip, tcp, flow, flow_end::BACKEND_FIN);
        let reply = Reply {
            nat_ip: owner.state.vip,
            nat_port: key.dst_port,
            backend: owner.slot,
        };
        let action = to_client(
            ctx,
            eth,
            ip,
            tcp,
            reply,
            Some(&mut flow.to_client),
            counter::FWD_TO_CLIENT,
        );
        // Last, as for the client's packets.
        if closed && flows::remove(&key) {
            backend_stats(owner.slot, |s| s.flows_closed += 1);
        }
        return Ok(action);
    }
    match reply_without_flow(fkey, &owner) {
        Some(reply) => Ok(to_client(
            ctx,
            eth,
            ip,
            tcp,
            reply,
            None,
            counter::FWD_TO_CLIENT_NO_FLOW,
        )),
        None => Err(counter::PASS_NOT_SERVICE),
    }
}

/// A backend's reply for which this node has no connection entry: the connection was
/// accepted by another LB node (which then failed) or its entry was evicted. The rewrite is
/// derived from the live state, the same on every node: the master's replies come from the
/// write port, a readable replica's from the read port. Only for destinations in a configured
/// client network, so replication and probes between hosts behind the LB are never touched.
#[inline(always)]
fn reply_without_flow(fkey: &FlowKey, owner: &Owner) -> Option<Reply> {
    let net = aya_ebpf::btf_maps::lpm_trie::Key::new(32, fkey.dst_ip);
    CLIENT_NETS.get(&net)?;
    let st = &owner.state;
    let nat_port = if owner.slot == st.master {
        st.write_port
    } else if owner.readable {
        st.read_port
    } else {
        return None;
    };
    Some(Reply {
        nat_ip: st.vip,
        nat_port,
        backend: owner.slot,
    })
}

/// Follows a connection's close on its entry: notes each side's FIN (`fin` is the sender's
/// bit), and returns true when this packet is the bare ACK that completes an orderly close
/// (both sides sent a FIN), so that the entry goes once the packet is on its way. Otherwise
/// the table would keep every closed connection until the controller's sweep; a removed
/// entry is also the next one a new connection reuses while it is still in cache.
///
/// An RST removes nothing: one that the receiver rejects (out of window) would otherwise cut
/// a live connection. It is noted, so that a new connection needing the same backend-side
/// addresses may start (see [`new_flow`]), and the sweep removes the entry once it is quiet,
/// like that of a connection whose last ACK is lost (the FIN retransmitted after it finds no
/// entry and goes to the kernel unrewritten, and the client's reset of it closes the
/// backend's socket).
#[inline(always)]
fn closing(ip: &Ipv4Hdr, tcp: &TcpHdr, flow: &mut Flow, fin: u16) -> bool {
    let flags = tcp.flags;
    let ended = if flags & TCP_RST != 0 {
        flow_end::RST
    } else if flags & TCP_FIN != 0 {
        fin
    } else {
        0
    };
    if ended != 0 {
        // Written once: the entry's cache line is shared with the other CPU's packets.
        if flow.end & ended == 0 {
            flow.end |= ended;
        }
        return false;
    }
    if flow.end & flow_end::BOTH_FIN != flow_end::BOTH_FIN || flags & (TCP_SYN | TCP_ACK) != TCP_ACK
    {
        return false;
    }
    let hdrs = Ipv4Hdr::LEN as u16 + ((tcp.doff_res >> 4) as u16) * 4;
    u16::from_be_bytes(ip.tot_len) == hdrs
}

/// What a backend's reply needs: the VIP port it must come from, and whose counters it adds to.
struct Reply {
    nat_ip: [u8; 4],
    nat_port: u16,
    backend: u32,
}

/// Client → VIP:port on a known connection: its backend, if still the right one.
#[inline(always)]
fn along_flow<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    fkey: &FlowKey,
    flow: &mut Flow,
) -> u32 {
    let Some(state) = SERVICE_STATE.get(flow.service_id).copied() else {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    };
    if !still_valid(flow, state.master) {
        // Read before the remove: the entry's memory may be reused once it is gone.
        let slot = flow.backend;
        backend_stats(slot, |s| s.flows_reset += 1);
        // The client is told the connection is gone; the backend's late replies then find no
        // entry and go to the kernel, which answers them with a reset.
        flows::remove(fkey);
        debug!(ctx, "reset stale flow to backend slot {}", slot);
        return send_reset(ctx, eth, counter::RESET_STALE_FLOW);
    }
    // The entry carries the backend's address: no BACKENDS lookup on this path.
    let fix = to_backend_addr(ip, tcp, flow.backend_ip, flow.backend_port);
    count_to_backend(ctx, ip, flow.backend, false);
    let len = wire_len(ctx, ip, tcp);
    forward(
        ctx,
        eth,
        ip,
        len,
        fix,
        Some(&mut flow.to_backend),
        counter::FWD_TO_BACKEND,
    )
}

/// Client → backend: the destination becomes the backend's address.
#[inline(always)]
fn to_backend_addr(ip: &mut Ipv4Hdr, tcp: &mut TcpHdr, addr: [u8; 4], port: u16) -> TcpFix {
    rewrite(&mut ip.dst, &mut tcp.dport, addr, port, &mut ip.check)
}

/// Counts a packet forwarded to backend `slot` (and, for a connection's first, the flow).
#[inline(always)]
fn count_to_backend<C: Frame>(ctx: &C, ip: &Ipv4Hdr, slot: u32, new_flow: bool) {
    let len = ctx.ip_len(ip) as u64;
    let packets = ctx.wire_packets();
    backend_stats(slot, |s| {
        s.packets_in += packets;
        s.bytes_in += len;
        if new_flow {
            s.new_flows += 1;
        }
    });
}

/// Client → VIP:port with no connection entry (its SYN, or a packet whose entry was evicted
/// or made on another LB node): picks the backend, records the connection, forwards.
#[inline(always)]
fn new_flow<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    fkey: &FlowKey,
    svc: ServicePort,
) -> u32 {
    let Some(state) = SERVICE_STATE.get(svc.service_id).copied() else {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    };
    let slot = if svc.kind == port_kind::WRITE {
        state.master
    } else {
        let i = flow_hash(fkey) % RING_SIZE;
        READ_RING
            .get(ring_index(svc.service_id, state.ring_active & 1, i))
            .copied()
            .unwrap_or(0)
    };
    if slot == 0 {
        return send_reset(ctx, eth, counter::RESET_NO_BACKEND);
    }
    let Some(be) = BACKENDS.get(slot).copied() else {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    };
    // The master serves both VIP ports: a client that reuses its source port towards the
    // other one (Linux does so freely for another destination) would reach it with the same
    // addresses as its live connection through the first port. TCP cannot tell the two apart,
    // and their replies could not be told apart either, so the first one would break too.
    // A reset connection no longer holds the addresses, and its entry goes: the backend's
    // replies are this connection's now.
    //
    // Only asked when the backend serves both ports now: the master while it is in the read
    // pool. That lookup, a miss in a large table nearly always, was as much as a tenth of the
    // program's time under connection churn. A connection made while the backend served the
    // other port too, and not yet reset since it stopped, is missed: the client reusing its
    // port in that window gets a connection that cannot start (the backend answers its SYN
    // with a challenge ACK) instead of a reset.
    let (serves_both, other_port) = if svc.kind == port_kind::WRITE {
        (be.flags & backend_flags::READABLE != 0, state.read_port)
    } else {
        (slot == state.master, state.write_port)
    };
    if serves_both {
        let other = FlowKey {
            dst_port: other_port,
            ..*fkey
        };
        if let Some(o) = flows::get(&other)
            && o.backend == slot
        {
            if o.end & flow_end::RST == 0 {
                return send_reset(ctx, eth, counter::RESET_PORT_IN_USE);
            }
            flows::remove(&other);
        }
    }
    let mut value = MaybeUninit::uninit();
    // SAFETY: all-zero is a valid Flow; its next hops then say "nothing cached".
    let flow: &mut Flow = unsafe { zero_in_place(&mut value) };
    flow.backend = slot;
    flow.service_id = svc.service_id;
    flow.kind = svc.kind;
    flow.backend_ip = be.ip;
    flow.backend_port = be.port;
    let fix = to_backend_addr(ip, tcp, be.ip, be.port);
    // The connection's entry starts with this packet's next hop, so its next packets skip
    // the FIB. A failed lookup leaves it empty (the kernel resolves the neighbour, and the
    // next packet asks again); the connection is remembered either way. An entry of the same
    // key is this connection's own (a retransmitted SYN, a reused port) and is replaced.
    let route = next_hop(ctx, ip, wire_len(ctx, ip, tcp), Some(&mut flow.to_backend));
    if flows::insert(fkey, &*flow).is_err() {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    }
    count_to_backend(ctx, ip, slot, true);
    finish(ctx, eth, ip, fix, route, counter::FWD_TO_BACKEND)
}

/// Is the backend a connection was given still the right one? A write connection must still
/// point at the master, a read connection at a replica in the read pool.
#[inline(always)]
fn still_valid(flow: &Flow, master: u32) -> bool {
    if flow.kind == port_kind::WRITE {
        return flow.backend == master;
    }
    match BACKENDS.get(flow.backend) {
        Some(be) => be.flags & backend_flags::READABLE != 0 && be.service_id == flow.service_id,
        None => false,
    }
}

/// Backend → client reply: the source becomes VIP:port again. `hop`: the connection's cached
/// next hop, if it has an entry.
#[inline(always)]
fn to_client<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    reply: Reply,
    hop: Option<&mut NextHop>,
    fast: u32,
) -> u32 {
    let fix = rewrite(
        &mut ip.src,
        &mut tcp.sport,
        reply.nat_ip,
        reply.nat_port,
        &mut ip.check,
    );

    let bytes = ctx.ip_len(ip) as u64;
    let packets = ctx.wire_packets();
    backend_stats(reply.backend, |s| {
        s.packets_out += packets;
        s.bytes_out += bytes;
    });
    let len = wire_len(ctx, ip, tcp);
    forward(ctx, eth, ip, len, fix, hop, fast)
}

/// Replaces one endpoint (address + port) of the segment and the IP checksum; returns what
/// the TCP checksum still needs, which [`finish`] applies once nothing else will touch the
/// packet (see [`Frame::fix_tcp_checksum`]).
#[inline(always)]
fn rewrite(
    addr: &mut [u8; 4],
    port: &mut [u8; 2],
    new_addr: [u8; 4],
    new_port: u16,
    ip_check: &mut [u8; 2],
) -> TcpFix {
    let new_port = new_port.to_be_bytes();
    csum_replace4(ip_check, *addr, new_addr);
    let fix = TcpFix {
        from_addr: *addr,
        to_addr: new_addr,
        from_port: *port,
        to_port: new_port,
    };
    *addr = new_addr;
    *port = new_port;
    fix
}

/// Routes the rewritten packet as the kernel would (FIB lookup, TTL, MACs) and redirects it.
/// When the fast path cannot finish the job (no neighbour entry yet, a local destination, an
/// MTU to enforce) the rewritten packet goes to the kernel, which forwards it correctly and
/// resolves the neighbour for the packets that follow.
#[inline(always)]
fn forward<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    len: u16,
    fix: TcpFix,
    hop: Option<&mut NextHop>,
    fast: u32,
) -> u32 {
    let route = next_hop(ctx, ip, len, hop);
    finish(ctx, eth, ip, fix, route, fast)
}

/// The end of a rewritten packet: sent on `route`, or given the action the FIB left
/// (`PASS` to the kernel, `DROP`), with its TCP checksum completed unless it is dropped.
#[inline(always)]
fn finish<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    fix: TcpFix,
    route: Result<Route, u32>,
    fast: u32,
) -> u32 {
    let (action, counted) = match route {
        Ok(route) => {
            let (action, counted) = send::<C>(eth, ip, &route, fast);
            (action, Some(counted))
        }
        // The FIB lookup counted it already.
        Err(action) => (action, None),
    };
    // Last: at the TC hook this is a helper that may move the packet's bytes, after which no
    // pointer into it may be used.
    if action != C::DROP && !ctx.fix_tcp_checksum(&fix) {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    }
    if let Some(counted) = counted {
        count(counted);
    }
    action
}

/// Where the rewritten packet goes: `hop`, the connection's cached FIB answer, when it
/// covers this packet, else the FIB (whose answer then refreshes `hop`). `Err` is the action
/// to take when the fast path cannot forward the packet, already counted.
///
/// The lookup (about 45 ns measured with BPF_PROG_TEST_RUN) was the largest part of an
/// established packet's cost, and its answer for one direction of a connection rarely
/// changes. A cached answer is used only under the conditions of [`NextHop`]; a successful
/// lookup refreshes it, and a failed one clears it, so the next packet asks again.
///
/// Two CPUs may refresh the same entry at once, unsynchronised. Both write the FIB's answer of
/// that moment, so a packet could only see a mix of two answers while a neighbour changes,
/// misdirecting that one packet, which TCP retransmits.
#[inline(always)]
fn next_hop<C: Frame>(
    ctx: &C,
    ip: &Ipv4Hdr,
    len: u16,
    hop: Option<&mut NextHop>,
) -> Result<Route, u32> {
    let ingress = ctx.ingress_ifindex();
    // A packet with nowhere to cache skips the clock.
    // SAFETY: a helper without arguments.
    let now = if hop.is_some() {
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        0
    };
    match hop {
        Some(h)
            if h.ifindex != 0
                && h.ingress_ifindex == ingress
                && len <= h.max_len
                && now.wrapping_sub(h.resolved_ns) < NEXT_HOP_TTL_NS =>
        {
            Ok(Route {
                ifindex: h.ifindex,
                dst_mac: h.dst_mac,
                src_mac: h.src_mac,
                peer: h.flags & hop_flags::PEER != 0,
            })
        }
        hop => match fib_lookup(ctx, ip, len, ingress) {
            Ok((route, max_len)) => {
                if let Some(h) = hop {
                    h.resolved_ns = now;
                    h.ifindex = route.ifindex;
                    h.ingress_ifindex = ingress;
                    h.dst_mac = route.dst_mac;
                    h.src_mac = route.src_mac;
                    h.max_len = max_len;
                    h.flags = if route.peer { hop_flags::PEER } else { 0 };
                }
                Ok(route)
            }
            Err(action) => {
                if let Some(h) = hop {
                    h.ifindex = 0;
                    // Still the time of this direction's last activity, which the
                    // controller's sweep reads (a connection the kernel forwards is alive).
                    h.resolved_ns = now;
                }
                Err(action)
            }
        },
    }
}

/// The IP length of the largest packet this one puts on the wire, which the egress MTU must
/// take: its own, or for a segmentation-offload packet at the TC hook (a local sender's TSO
/// or GSO, GRO on a NIC: up to 64 KB in one skb) that of the segments the egress device cuts
/// it into, as the kernel's forwarding checks it. Taking the skb's length instead sent every
/// such packet to the kernel as too big, where a rewritten reply (its source the VIP, a local
/// address) is dropped as a martian unless `accept_local` is set. (Only such a packet, IPv4
/// BIG TCP, can be longer than 64 KB; its segments cannot.)
#[inline(always)]
fn wire_len<C: Frame>(ctx: &C, ip: &Ipv4Hdr, tcp: &TcpHdr) -> u16 {
    let len = ctx.ip_len(ip);
    let seg = ctx.gso_size();
    let seg_len = Ipv4Hdr::LEN as u32 + ((tcp.doff_res >> 4) as u32) * 4 + seg;
    let wire = if seg != 0 && seg_len < len {
        seg_len
    } else {
        len
    };
    if wire > u16::MAX as u32 {
        u16::MAX
    } else {
        wire as u16
    }
}

/// Decrements the TTL, sets the MACs of `route` and redirects the packet. Returns the action
/// and the counter it goes under, which [`finish`] adds once the packet is complete.
///
/// Out of a veth whose peer is in another namespace (`route.peer`, TC hook only), the packet
/// goes straight to the peer's ingress: the veth's transmit would only queue it on this CPU's
/// backlog for another softirq pass before the peer sees it, unchanged. Measured under
/// connection churn on the bench's testbed, that queueing cost about 3 % of throughput.
#[inline(always)]
fn send<C: Frame>(eth: *mut EthHdr, ip: &mut Ipv4Hdr, route: &Route, fast: u32) -> (u32, u32) {
    if ip.ttl <= 1 {
        // Let the kernel send the ICMP time-exceeded, as a router would.
        (C::PASS, counter::PASS_REWRITTEN)
    } else {
        let old = [ip.ttl, ip.proto];
        ip.ttl -= 1;
        csum_replace2(&mut ip.check, old, [ip.ttl, ip.proto]);
        // SAFETY: eth was bounds-checked by the caller and the packet was not resized.
        unsafe {
            (*eth).dst = route.dst_mac;
            (*eth).src = route.src_mac;
        }
        // `C::IS_TC` first: the XDP build must not even contain the TC-only helper's call.
        // SAFETY: helpers taking plain integers.
        let action = if C::IS_TC && route.peer {
            unsafe { bpf_redirect_peer(route.ifindex, 0) }
        } else {
            unsafe { bpf_redirect(route.ifindex, 0) }
        };
        (action as u32, fast)
    }
}

/// The change a rewrite made to the TCP header and pseudo-header, for the TCP checksum.
pub struct TcpFix {
    pub from_addr: [u8; 4],
    pub to_addr: [u8; 4],
    pub from_port: [u8; 2],
    pub to_port: [u8; 2],
}

/// Where a packet leaves: what the fast path needs from a FIB answer.
struct Route {
    ifindex: u32,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    /// `ifindex` is in `PEER_DEVS`.
    peer: bool,
}

/// A packet smaller than this asks the FIB about a frame of this size instead, so that the
/// answer, cached, also covers the connection's later full-size segments on a standard MTU
/// (one lookup per connection and direction instead of one more at its first large segment).
/// An egress MTU below it makes the FIB refuse; the packet then asks about its own size.
const FIB_ASK_LEN: u16 = 1500;

/// Asks the kernel's FIB where the (rewritten) packet, whose largest wire packet has IP length
/// `len`, goes; on success also the largest IP length the answer was checked for. `Err` is the
/// action to take when the fast path cannot forward it, already counted.
#[inline(always)]
fn fib_lookup<C: Frame>(
    ctx: &C,
    ip: &Ipv4Hdr,
    len: u16,
    ingress: u32,
) -> Result<(Route, u16), u32> {
    let mut asked = if len < FIB_ASK_LEN { FIB_ASK_LEN } else { len };
    let mut answer = fib_ask(ctx, ip, ingress, asked);
    if matches!(answer, Err(BPF_FIB_LKUP_RET_FRAG_NEEDED)) && asked != len {
        asked = len;
        answer = fib_ask(ctx, ip, ingress, len);
    }
    match answer {
        Ok(mut route) => {
            // Asked once per lookup, not per packet: the answer is cached with the route.
            // SAFETY: nothing is read through the value.
            route.peer = C::IS_TC && unsafe { PEER_DEVS.get(&route.ifindex) }.is_some();
            Ok((route, asked))
        }
        Err(
            BPF_FIB_LKUP_RET_BLACKHOLE
            | BPF_FIB_LKUP_RET_UNREACHABLE
            | BPF_FIB_LKUP_RET_PROHIBIT
            | BPF_FIB_LKUP_RET_FWD_DISABLED,
        ) => {
            count(counter::DROP_NO_ROUTE);
            Err(C::DROP)
        }
        Err(_) => {
            count(counter::PASS_REWRITTEN);
            Err(C::PASS)
        }
    }
}

/// One `bpf_fib_lookup` for a packet of IP length `tot_len`; `Err` is the helper's code.
#[inline(always)]
fn fib_ask<C: Frame>(ctx: &C, ip: &Ipv4Hdr, ingress: u32, tot_len: u16) -> Result<Route, u32> {
    let mut params = MaybeUninit::uninit();
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of integers).
    let p: &mut FibParams = unsafe { zero_in_place(&mut params) };
    p.family = AF_INET;
    p.l4_protocol = IPPROTO_TCP;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    p.ifindex = ingress;
    // SAFETY: p is a valid, correctly sized parameter block on the stack.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) } as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        Ok(Route {
            ifindex: p.ifindex,
            dst_mac: p.dmac,
            src_mac: p.smac,
            peer: false,
        })
    } else {
        Err(rc)
    }
}

/// Turns the client's segment into a TCP RST from VIP:port back to the client and bounces
/// it out of the interface it came in on, so the client fails fast instead of waiting on a
/// backend that is gone or no longer the right one.
#[inline(always)]
fn send_reset<C: Frame>(ctx: &C, eth: *mut EthHdr, reason: u32) -> u32 {
    let (Some(ip), Some(tcp)) = (
        ptr_at::<Ipv4Hdr, _>(ctx, IP_OFF),
        ptr_at::<TcpHdr, _>(ctx, TCP_OFF),
    ) else {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    };
    // SAFETY: both headers were bounds-checked just above.
    let (ip, tcp, eth) = unsafe { (&mut *ip, &mut *tcp, &mut *eth) };
    if tcp.flags & TCP_RST != 0 {
        // The client is closing anyway; a reset is never answered with a reset.
        count(counter::DROP_RST_NO_BACKEND);
        return C::DROP;
    }

    // RFC 793 reset generation: acknowledge everything the segment carried, and take our
    // sequence number from its ACK so the client accepts the reset.
    let hdrs = (Ipv4Hdr::LEN + ((tcp.doff_res >> 4) as usize) * 4) as u32;
    let payload = ctx.ip_len(ip).saturating_sub(hdrs);
    let mut seg_len = payload;
    if tcp.flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if tcp.flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    let ack = u32::from_be_bytes(tcp.seq).wrapping_add(seg_len);
    let seq = if tcp.flags & TCP_ACK != 0 {
        tcp.ack_seq
    } else {
        [0; 4]
    };

    core::mem::swap(&mut eth.src, &mut eth.dst);
    core::mem::swap(&mut ip.src, &mut ip.dst);
    ip.tot_len = (RST_FRAME_LEN as u16 - EthHdr::LEN as u16).to_be_bytes();
    ip.id = [0; 2];
    ip.frag = IP_DF.to_be_bytes();
    ip.ttl = 64;
    ip.check = [0; 2];
    ip.check = ipv4_csum(ip);

    core::mem::swap(&mut tcp.sport, &mut tcp.dport);
    tcp.seq = seq;
    tcp.ack_seq = ack.to_be_bytes();
    tcp.doff_res = 5 << 4;
    tcp.flags = TCP_RST | TCP_ACK;
    tcp.window = [0; 2];
    tcp.urg_ptr = [0; 2];
    tcp.check = [0; 2];
    tcp.check = tcp_bare_csum(ip, tcp);

    // Drop the options and payload the client sent; only the bare segment goes back.
    if !ctx.truncate(RST_FRAME_LEN as u32) {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    }
    count(reason);
    // Redirect to the ingress device rather than XDP_TX: on veth (native mode) an XDP_TX
    // frame can sit in the peer's queue until the next packet arrives (seen here: the reset
    // reached the client only with its retransmission, 200 ms late); a redirect is flushed
    // at the end of the poll.
    unsafe { bpf_redirect(ctx.ingress_ifindex(), 0) as u32 }
}

/// Zeroes `v` in place, one 4-byte word at a time, and returns it. `core::mem::zeroed()`, or
/// a struct literal with many zero fields, compiles for this target into a call to a `memset`
/// that stores one byte per loop iteration (for the 64-byte FIB request, 20–30 ns measured
/// with BPF_PROG_TEST_RUN); returning the value by move brings the call back too.
///
/// # Safety
/// All-zero must be a valid `T`.
#[inline(always)]
unsafe fn zero_in_place<T>(v: &mut core::mem::MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4) };
    let words = v.as_mut_ptr() as *mut u32;
    for i in 0..size_of::<T>() / 4 {
        // Volatile, or LLVM merges the stores back into the memset call.
        // SAFETY: inside `v`, and aligned (checked above).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte was written, and all-zero is a valid `T` (the caller's promise).
    unsafe { v.assume_init_mut() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
