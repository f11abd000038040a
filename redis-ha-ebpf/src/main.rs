//! redis-ha's XDP program: the write port of a VIP goes to the service's master, the read port
//! to a replica picked by a Maglev table; replies get their source rewritten back to the VIP.
//! Only the destination (and, on replies, the source) changes, so backends see the client's
//! real address. Everything else passes to the kernel untouched.
//!
//! This file holds the two entry points (XDP and TC) and the per-packet path from the headers
//! to the module that handles the packet. One job per module:
//!
//! - [`packet`]: header layouts and offsets; [`csum`]: checksum arithmetic;
//! - [`frame`]: what differs between the XDP and TC hooks, and the bounds-checked accessor;
//! - [`maps`]: every map, who writes and who reads it; [`flows`]: the connection table;
//! - [`to_backend`]: client → VIP:port, choosing and following a backend;
//! - [`to_client`]: backend → client, back to the VIP port;
//! - [`forward`]: rewrite and send; [`next_hop`]: the FIB and its per-connection cache;
//! - [`reset`]: the RST replies; [`arp`]: the ARP guard for floating addresses;
//! - [`mem`]: zeroed stack values without `memset`.
#![no_std]
#![no_main]

mod arp;
mod csum;
mod flows;
mod forward;
mod frame;
mod maps;
mod mem;
mod nat;
mod next_hop;
mod packet;
mod reset;
mod to_backend;
mod to_client;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use frame::{Frame, ptr_at};
use maps::{IF_ROLES, SERVICES, backend_stats, count};
use packet::{
    ETH_P_ARP, ETH_P_IPV4, EthHdr, IP_MF_OFFSET_MASK, IP_OFF, IPPROTO_TCP, Ipv4Hdr, RST_FRAME_LEN,
    TCP_ACK, TCP_OFF, TCP_SYN, TcpHdr,
};
use redis_ha_common::{FlowKey, ServiceKey, counter, flow_end, if_role};

use crate::{
    arp::arp_guard,
    flows::{closing, out_of_window},
    reset::send_reset,
    to_backend::{along_flow, new_flow, syn_follows, without_flow},
    to_client::{backend_of, backend_reply, forget_direct, local_reply},
};

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
    let (ip, tcp) = tcp_headers(ctx)?;
    let fkey = FlowKey {
        src_ip: ip.src,
        dst_ip: ip.dst,
        src_port: u16::from_be_bytes(tcp.sport),
        dst_port: u16::from_be_bytes(tcp.dport),
    };
    // Only a bare SYN may start a connection's entry (see `to_backend::without_flow`).
    let bare_syn = tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !bare_syn {
        // A reply comes from a backend's address. Asked first: `BACKEND_ADDRS` is small and
        // stays in cache, so a client's packet pays little for the miss, while asking `FLOWS`
        // first would cost every reply a miss in a large table.
        if let Some(owner) = backend_of(fkey.src_ip, fkey.src_port) {
            // Anyone on the client side can forge a backend's address (XDP runs before
            // reverse-path filtering), and a reply may close or reset a connection's entry.
            if !faces_backends(ctx) {
                return Err(counter::PASS_NOT_BACKEND_SIDE);
            }
            return backend_reply(ctx, eth, ip, tcp, &fkey, owner);
        }
        // Most of the client's packets belong to a known connection: one lookup finds it, and
        // the service's own entry is not needed (about 15 ns per packet less than asking
        // SERVICES first).
        // SAFETY: a map value stays valid for the whole run of the program (RCU); another
        // CPU may write its next hops concurrently, see `next_hop`.
        if let Some(flow) = flows::get(&fkey) {
            if out_of_window(tcp, flow.backend_ack, &mut flow.client_ack) {
                count(counter::DROP_OUT_OF_WINDOW);
                return Ok(C::DROP);
            }
            let closed = closing(ip, tcp, flow, flow_end::CLIENT_FIN);
            let slot = flow.backend;
            let action = along_flow(ctx, eth, ip, tcp, &fkey, flow);
            if closed {
                // Last: `flow` points into the entry, which may be reused once removed. The
                // packet itself no longer needs it (a redirect is carried out after return).
                // A stale connection's entry is gone already: that one counts as a reset.
                if flows::remove(&fkey, flow) {
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
        // SAFETY: ptr_at checked the header at the start.
        if !ctx.for_this_host(unsafe { &*eth }) {
            return Err(counter::PASS_NOT_FOR_HOST);
        }
        // Under full NAT the backend knows the connection by the translation of the node that
        // made it, which no other node can rebuild: a connection this node has no entry for
        // (the VIP moved here, or its entry was evicted) is over, and the client is told at
        // once. With destination NAT the backend knows the client's own address, so the
        // connection simply carries on from here.
        if bare_syn {
            if let Some(flow) = flows::get(&fkey)
                && syn_follows(flow)
            {
                return Ok(along_flow(ctx, eth, ip, tcp, &fkey, flow));
            }
        } else if nat::is_full(&nat::config()) {
            return Ok(send_reset(ctx, eth, counter::RESET_NO_FLOW));
        } else if let Some(action) = without_flow(ctx, eth, ip, tcp, &fkey, &svc) {
            return Ok(action);
        }
        return Ok(new_flow(ctx, eth, ip, tcp, &fkey, svc));
    }
    if bare_syn {
        forget_direct(&fkey);
    }
    Err(counter::PASS_NOT_SERVICE)
}

/// Does the interface the frame came in on face the backends (`IF_ROLES`; no entry: yes)?
#[inline(always)]
fn faces_backends<C: Frame>(ctx: &C) -> bool {
    // SAFETY: the value is copied out at once.
    unsafe { IF_ROLES.get(&ctx.ingress_ifindex()) }
        .is_none_or(|role| *role & if_role::BACKENDS != 0)
}

/// The IPv4 and TCP headers of an IPv4 frame, or why the fast path leaves it alone.
#[inline(always)]
fn tcp_headers<C: Frame>(ctx: &C) -> Result<(&'static mut Ipv4Hdr, &'static mut TcpHdr), u32> {
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
    // SAFETY: as above.
    let tcp = unsafe { &mut *tcp };
    if tcp.doff_res >> 4 < 5 || ctx.ip_len(ip) < (Ipv4Hdr::LEN + TcpHdr::LEN) as u32 {
        return Err(counter::PASS_MALFORMED);
    }
    Ok((ip, tcp))
}

/// TC egress: the replies of this node's own redis-server to connections that were delivered
/// to it through a VIP port get their source mapped back to that VIP port. Attached only
/// where a backend is local. Everything else leaves untouched and uncounted: this hook sees
/// all the host's own traffic, which the counters are not about.
#[classifier]
pub fn redis_ha_egress(ctx: TcContext) -> i32 {
    frame::pull_headers(&ctx, (TCP_OFF + TcpHdr::LEN) as u32);
    if let Some(eth) = ptr_at::<EthHdr, _>(&ctx, 0)
        // SAFETY: ptr_at checked that the header lies inside the packet.
        && unsafe { (*eth).ether_type } == ETH_P_IPV4
        && let Ok((ip, tcp)) = tcp_headers(&ctx)
    {
        local_reply(&ctx, ip, tcp);
    }
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
