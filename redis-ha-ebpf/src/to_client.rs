//! Backend → client: a backend's reply finds its connection through the backend's own address
//! (which slot, which service, hence which VIP and ports) and gets its source rewritten back to
//! the VIP port the client connected to; a reply with no entry is rewritten from the live
//! state when it goes to a client network. Also the upkeep of those lookups when a client
//! connects to a backend directly.

use aya_ebpf::programs::TcContext;
use redis_ha_common::{
    AddrKey, Flow, FlowKey, NextHop, ServiceState, backend_flags, counter, flow_end,
};

use crate::{
    csum::TcpFix,
    flows::{self, closing},
    forward::{Fixes, forward, rewrite, wire_len},
    frame::Frame,
    maps::{BACKEND_ADDRS, BACKENDS, CLIENT_NETS, SERVICE_STATE, backend_stats, count},
    nat,
    next_hop::note_activity,
    packet::{EthHdr, Ipv4Hdr, TcpHdr},
};

/// A new connection straight to a backend (not through a VIP) may reuse the client port of an
/// old VIP connection to that backend whose entry is still in the table: that entry would
/// rewrite this connection's SYN-ACK to come from the VIP. Forget it.
#[inline(always)]
pub fn forget_direct(fkey: &FlowKey) {
    if let Some(owner) = backend_of(fkey.dst_ip, fkey.dst_port)
        && let Some((key, flow)) = reply_flow(fkey.src_ip, fkey.src_port, &owner)
    {
        flows::remove(&key, flow);
    }
}

/// The backend at an address, and its service's live state.
pub struct Owner {
    slot: u32,
    readable: bool,
    /// The backend is this node's own redis-server.
    pub local: bool,
    state: ServiceState,
}

#[inline(always)]
pub fn backend_of(ip: [u8; 4], port: u16) -> Option<Owner> {
    let addr = AddrKey { ip, port, _pad: 0 };
    // SAFETY: the value is copied out at once.
    let slot = unsafe { BACKEND_ADDRS.get(&addr) }.copied()?;
    let be = BACKENDS.get(slot).copied()?;
    let state = SERVICE_STATE.get(be.service_id).copied()?;
    Some(Owner {
        slot,
        readable: be.flags & backend_flags::READABLE != 0,
        local: be.flags & backend_flags::LOCAL != 0,
        state,
    })
}

/// The entry (and its key) of the connection from `client_ip:client_port` to `owner`'s service
/// that `owner` serves. The client may have one connection through each VIP port from the
/// same port (to two backends, see [`crate::to_backend::new_flow`]): the port the backend's role makes likelier
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
pub fn backend_reply<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    fkey: &FlowKey,
    owner: Owner,
) -> Result<u32, u32> {
    let nat = nat::config();
    // The connection the reply belongs to and, under full NAT, what rewriting its destination
    // back to the client changed.
    let (key, flow, dst_fix) = if nat::is_full(nat) {
        // Only replies to this node's own address can be translations; anything else from a
        // backend (replication, probes between the nodes) is not ours to touch.
        if fkey.dst_ip != nat.ip || fkey.dst_port < nat.port_min || fkey.dst_port > nat.port_max {
            return Err(counter::PASS_NOT_SERVICE);
        }
        let Some((key, flow)) = nat::reply_flow(fkey.src_ip, fkey.src_port, fkey.dst_port) else {
            return Err(counter::PASS_NOT_SERVICE);
        };
        // The client's address first: the next hop is looked up for it.
        let fix = rewrite(
            &mut ip.dst,
            &mut tcp.dport,
            key.src_ip,
            key.src_port,
            &mut ip.check,
        );
        (key, flow, Some(fix))
    } else if let Some((key, flow)) = reply_flow(fkey.dst_ip, fkey.dst_port, &owner) {
        (key, flow, None)
    } else {
        // SAFETY: the caller checked the header.
        if !ctx.for_this_host(unsafe { &*eth }) {
            return Err(counter::PASS_NOT_FOR_HOST);
        }
        return match reply_without_flow(fkey, &owner) {
            Some(reply) => Ok(to_client(
                ctx,
                eth,
                ip,
                tcp,
                reply,
                None,
                None,
                counter::FWD_TO_CLIENT_NO_FLOW,
            )),
            None => Err(counter::PASS_NOT_SERVICE),
        };
    };
    if flows::out_of_window(tcp, flow.client_ack, &mut flow.backend_ack) {
        // Under full NAT the destination is rewritten already; the packet goes nowhere.
        count(counter::DROP_OUT_OF_WINDOW);
        return Ok(C::DROP);
    }
    let closed = closing(ip, tcp, flow, flow_end::BACKEND_FIN);
    // The connection's key names the VIP port it was made to.
    let reply = Reply {
        nat_ip: key.dst_ip,
        nat_port: key.dst_port,
        backend: owner.slot,
    };
    let action = to_client(
        ctx,
        eth,
        ip,
        tcp,
        reply,
        dst_fix,
        Some(&mut flow.to_client),
        counter::FWD_TO_CLIENT,
    );
    // Last, as for the client's packets.
    if closed && flows::remove(&key, flow) {
        backend_stats(owner.slot, |s| s.flows_closed += 1);
    }
    Ok(action)
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

/// What a backend's reply needs: the VIP port it must come from, and whose counters it adds to.
struct Reply {
    nat_ip: [u8; 4],
    nat_port: u16,
    backend: u32,
}

/// Backend → client reply: the source becomes VIP:port again. `dst_fix`: what a full-NAT
/// reply's destination rewrite changed; `hop`: the connection's cached next hop, if it has an
/// entry.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn to_client<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    tcp: &mut TcpHdr,
    reply: Reply,
    dst_fix: Option<TcpFix>,
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
    let fix = Fixes {
        first: fix,
        second: dst_fix,
    };
    let len = wire_len(ctx, ip, tcp);
    forward(ctx, eth, ip, len, fix, hop, fast)
}

/// TC egress, a reply of this node's own redis-server: if it belongs to a connection that was
/// delivered to it through a VIP port, its source becomes that VIP port again. The kernel has
/// routed it already, so only the header changes.
#[inline(always)]
pub fn local_reply(ctx: &TcContext, ip: &mut Ipv4Hdr, tcp: &mut TcpHdr) {
    let Some(owner) = backend_of(ip.src, u16::from_be_bytes(tcp.sport)) else {
        return;
    };
    if !owner.local {
        return;
    }
    let Some((key, flow)) = reply_flow(ip.dst, u16::from_be_bytes(tcp.dport), &owner) else {
        return;
    };
    // This node's own server: its segments are not forged, only its acknowledgement is noted.
    flows::out_of_window(tcp, 0, &mut flow.backend_ack);
    let closed = closing(ip, tcp, flow, flow_end::BACKEND_FIN);
    note_activity(&mut flow.to_client);
    let fix = rewrite(
        &mut ip.src,
        &mut tcp.sport,
        owner.state.vip,
        key.dst_port,
        &mut ip.check,
    );
    let bytes = ctx.ip_len(ip) as u64;
    let packets = ctx.wire_packets();
    // Last use of the headers: the checksum helper may move the packet's bytes.
    if !ctx.fix_tcp_checksum(&fix) {
        count(counter::DROP_INTERNAL);
        return;
    }
    backend_stats(owner.slot, |s| {
        s.packets_out += packets;
        s.bytes_out += bytes;
    });
    count(counter::FWD_LOCAL_REPLY);
    if closed && flows::remove(&key, flow) {
        backend_stats(owner.slot, |s| s.flows_closed += 1);
    }
}
