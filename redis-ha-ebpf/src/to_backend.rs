//! Client → VIP:port, the balancing itself: a new connection gets its backend (the master for
//! the write port, a replica from the live Maglev table for the read port) and an entry in
//! the connection table; a known connection follows its entry while that backend is still the
//! right one, and is reset once it is not.

use core::mem::MaybeUninit;

use aya_log_ebpf::debug;
use redis_ha_common::{
    Flow, FlowKey, RING_SIZE, ServicePort, ServiceState, backend_flags, counter, flow_end,
    flow_flags, flow_hash, port_kind, ring_index,
};

use crate::{
    csum::TcpFix,
    flows,
    forward::{Fixes, finish, fix_checksum, forward, rewrite, wire_len},
    frame::Frame,
    maps::{BACKENDS, FLOW_HASH_KEY, NEW_FLOW, READ_RING, SERVICE_STATE, backend_stats, count},
    mem::zero_in_place,
    nat,
    next_hop::{next_hop, note_activity},
    packet::{EthHdr, Ipv4Hdr, TcpHdr},
    reset::send_reset,
};

/// Client → VIP:port on a known connection: its backend, if still the right one.
#[inline(always)]
pub fn along_flow<C: Frame>(
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
        flows::remove(fkey, flow);
        debug!(ctx, "reset stale flow to backend slot {}", slot);
        return send_reset(ctx, eth, counter::RESET_STALE_FLOW);
    }
    // The entry carries the backend's address, which `still_valid` found still in its slot.
    let fix = to_backend_addr(ip, tcp, flow.backend_ip, flow.backend_port);
    count_to_backend(ctx, ip, flow.backend, false);
    if flow.flags & flow_flags::LOCAL != 0 {
        note_activity(&mut flow.to_backend);
        return deliver_locally(ctx, fix.into());
    }
    let fix = Fixes {
        first: fix,
        second: (flow.nat_port != 0).then(|| from_nat(ip, tcp, flow.nat_ip, flow.nat_port)),
    };
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

/// A packet for the redis-server of this node: its destination is already the server's own
/// address, which the kernel delivers (the FIB has nothing to add).
#[inline(always)]
fn deliver_locally<C: Frame>(ctx: &C, fix: Fixes) -> u32 {
    if !fix_checksum(ctx, &fix) {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    }
    count(counter::FWD_LOCAL);
    C::PASS
}

/// Full NAT, client → backend: the source becomes this node's address and the connection's
/// port.
#[inline(always)]
fn from_nat(ip: &mut Ipv4Hdr, tcp: &mut TcpHdr, addr: [u8; 4], port: u16) -> TcpFix {
    rewrite(&mut ip.src, &mut tcp.sport, addr, port, &mut ip.check)
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

/// Client → VIP:port, a connection's SYN (or, for a backend on this node, any segment of a
/// connection with no entry, see [`without_flow`]): picks the backend, records the
/// connection, forwards.
#[inline(always)]
pub fn new_flow<C: Frame>(
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
    let slot = pick(fkey, &svc, &state);
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
            flows::remove(&other, o);
        }
    }
    let local = be.flags & backend_flags::LOCAL != 0;
    let nat = nat::config();
    let mut nat_port = 0;
    if !local && nat::is_full(nat) {
        // A retransmitted SYN keeps the port its first copy took, so that the backend sees
        // the same connection again rather than a second one from another port.
        match flows::get(fkey) {
            Some(old) if old.backend == slot && old.nat_port != 0 && old.nat_ip == nat.ip => {
                nat_port = old.nat_port;
            }
            Some(old) => {
                flows::remove(fkey, old);
            }
            None => {}
        }
        if nat_port == 0 {
            match nat::take_port(nat, fkey, be.ip, be.port) {
                Some(port) => nat_port = port,
                None => return send_reset(ctx, eth, counter::RESET_NAT_EXHAUSTED),
            }
        }
    }
    let Some(value) = NEW_FLOW.get_ptr_mut(0) else {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    };
    // SAFETY: this CPU's scratch entry, which nothing else uses during this run; all-zero is
    // a valid Flow, whose next hops then say "nothing cached".
    let flow: &mut Flow = unsafe { zero_in_place(&mut *(value as *mut MaybeUninit<Flow>)) };
    flow.backend = slot;
    flow.service_id = svc.service_id;
    flow.kind = svc.kind;
    flow.backend_ip = be.ip;
    flow.backend_port = be.port;
    // What the backend will acknowledge first: the SYN takes one sequence number.
    flow.backend_ack = u32::from_be_bytes(tcp.seq).wrapping_add(1);
    if local {
        flow.flags = flow_flags::LOCAL;
    }
    if nat_port != 0 {
        flow.nat_ip = nat.ip;
        flow.nat_port = nat_port;
    }
    let fix = to_backend_addr(ip, tcp, be.ip, be.port);
    if local {
        note_activity(&mut flow.to_backend);
        if flows::insert(fkey, &*flow).is_err() {
            count(counter::DROP_INTERNAL);
            return C::DROP;
        }
        count_to_backend(ctx, ip, slot, true);
        return deliver_locally(ctx, fix.into());
    }
    let fix = Fixes {
        first: fix,
        second: (nat_port != 0).then(|| from_nat(ip, tcp, nat.ip, nat_port)),
    };
    // The connection's entry starts with this packet's next hop, so its next packets skip
    // the FIB. A failed lookup leaves it empty (the kernel resolves the neighbour, and the
    // next packet asks again); the connection is remembered either way. An entry of the same
    // key is this connection's own (a retransmitted SYN, a reused port) and is replaced.
    let route = next_hop(ctx, ip, wire_len(ctx, ip, tcp), Some(&mut flow.to_backend));
    if flows::insert(fkey, &*flow).is_err() {
        if nat_port != 0 {
            nat::give_back(be.ip, be.port, nat_port);
        }
        count(counter::DROP_INTERNAL);
        return C::DROP;
    }
    count_to_backend(ctx, ip, slot, true);
    finish(ctx, eth, ip, fix, route, counter::FWD_TO_BACKEND)
}

/// The backend the live state gives a connection: the master for the write port, the read
/// pool's Maglev entry of the connection's hash for the read port; 0 = none. The same on
/// every LB node given the same tables, which is what lets a connection move between nodes.
#[inline(always)]
fn pick(fkey: &FlowKey, svc: &ServicePort, state: &ServiceState) -> u32 {
    if svc.kind == port_kind::WRITE {
        return state.master;
    }
    let secret = FLOW_HASH_KEY.get(0).copied().unwrap_or_default();
    let i = flow_hash(fkey, &secret) % RING_SIZE;
    READ_RING
        .get(ring_index(svc.service_id, state.ring_active & 1, i))
        .copied()
        .unwrap_or(0)
}

/// Client → VIP:port, a segment that is not a SYN, with no entry here (the connection was
/// made through another LB node, or its entry was evicted or swept): forwarded to the backend
/// [`pick`] maps it to, and nothing is stored. Only a SYN may take a place in the table:
/// otherwise any flood of bare ACKs, FINs or RSTs from many source ports fills it, and the
/// spill table then evicts the idle live connections (pub/sub, pools). The backend's replies
/// take the stateless reply path (`client_networks`), as they did before for a connection
/// that moved here.
///
/// `None`: the backend is this node's own, whose replies are mapped back at TC egress only
/// through an entry (there is no stateless path there): the caller admits the connection as
/// before.
#[inline(always)]
pub fn without_flow<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    fkey: &FlowKey,
    svc: &ServicePort,
) -> Option<u32> {
    let Some(state) = SERVICE_STATE.get(svc.service_id).copied() else {
        count(counter::DROP_INTERNAL);
        return Some(C::DROP);
    };
    let slot = pick(fkey, svc, &state);
    if slot == 0 {
        return Some(send_reset(ctx, eth, counter::RESET_NO_BACKEND));
    }
    let Some(be) = BACKENDS.get(slot).copied() else {
        count(counter::DROP_INTERNAL);
        return Some(C::DROP);
    };
    if be.flags & backend_flags::LOCAL != 0 {
        return None;
    }
    let fix = to_backend_addr(ip, tcp, be.ip, be.port);
    count_to_backend(ctx, ip, slot, false);
    let len = wire_len(ctx, ip, tcp);
    Some(forward(
        ctx,
        eth,
        ip,
        len,
        fix.into(),
        None,
        counter::FWD_TO_BACKEND_NO_FLOW,
    ))
}

/// May a bare SYN follow the entry its key already has? Yes while the connection may still
/// be live: a SYN never takes a live connection's entry (a forged one would otherwise move a
/// client's connection to another replica, or cut it), so a retransmitted SYN, or a port
/// reused while the entry lingers, goes where the entry says. The entry is replaced only
/// once its connection ended (a reset, or FIN both ways) or its backend is no longer the
/// right one, or, under full NAT, its translation is from another source address.
#[inline(always)]
pub fn syn_follows(flow: &Flow) -> bool {
    if flow.end & flow_end::RST != 0 || flow.end & flow_end::BOTH_FIN == flow_end::BOTH_FIN {
        return false;
    }
    if flow.nat_port != 0 && flow.nat_ip != nat::config().ip {
        return false;
    }
    let Some(state) = SERVICE_STATE.get(flow.service_id) else {
        return false;
    };
    still_valid(flow, state.master)
}

/// Is the backend a connection was given still the right one? A write connection must still
/// point at the master, a read connection at a replica in the read pool; and the slot must
/// still hold the address the connection went to: a backend given by name that moved keeps
/// its slot, and its old machine's connections end as a removed backend's do.
#[inline(always)]
fn still_valid(flow: &Flow, master: u32) -> bool {
    let Some(be) = BACKENDS.get(flow.backend) else {
        return false;
    };
    if be.ip != flow.backend_ip || be.port != flow.backend_port {
        return false;
    }
    if flow.kind == port_kind::WRITE {
        return flow.backend == master;
    }
    be.flags & backend_flags::READABLE != 0 && be.service_id == flow.service_id
}
