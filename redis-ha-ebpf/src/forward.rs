//! Rewriting one endpoint of a segment and sending the packet on: the address and port swap
//! with the IP checksum, the length the egress MTU must take, TTL and MACs, the redirect, and
//! the TCP checksum last. Both directions end here, once they know the new endpoint.

use aya_ebpf::helpers::generated::{bpf_redirect, bpf_redirect_peer};
use redis_ha_common::{NextHop, counter};

use crate::{
    csum::{TcpFix, csum_replace2, csum_replace4},
    frame::Frame,
    maps::count,
    next_hop::{Route, next_hop},
    packet::{EthHdr, Ipv4Hdr, TcpHdr},
};

/// Replaces one endpoint (address + port) of the segment and the IP checksum; returns what
/// the TCP checksum still needs, which [`finish`] applies once nothing else will touch the
/// packet (see [`Frame::fix_tcp_checksum`]).
#[inline(always)]
pub fn rewrite(
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
pub fn forward<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    len: u16,
    fix: Fixes,
    hop: Option<&mut NextHop>,
    fast: u32,
) -> u32 {
    let route = next_hop(ctx, ip, len, hop);
    finish(ctx, eth, ip, fix, route, fast)
}

/// What a rewrite changed, for the TCP checksum: one endpoint (destination NAT, or a reply's
/// source), or both (full NAT).
pub struct Fixes {
    pub first: TcpFix,
    pub second: Option<TcpFix>,
}

impl From<TcpFix> for Fixes {
    fn from(first: TcpFix) -> Self {
        Fixes {
            first,
            second: None,
        }
    }
}

/// Applies `fix` to the TCP checksum; false if the hook could not.
#[inline(always)]
pub fn fix_checksum<C: Frame>(ctx: &C, fix: &Fixes) -> bool {
    ctx.fix_tcp_checksum(&fix.first)
        && match &fix.second {
            Some(second) => ctx.fix_tcp_checksum(second),
            None => true,
        }
}

/// The end of a rewritten packet: sent on `route`, or given the action the FIB left
/// (`PASS` to the kernel, `DROP`), with its TCP checksum completed unless it is dropped.
#[inline(always)]
pub fn finish<C: Frame>(
    ctx: &C,
    eth: *mut EthHdr,
    ip: &mut Ipv4Hdr,
    fix: Fixes,
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
    if action != C::DROP && !fix_checksum(ctx, &fix) {
        count(counter::DROP_INTERNAL);
        return C::DROP;
    }
    if let Some(counted) = counted {
        count(counted);
    }
    action
}

/// The IP length of the largest packet this one puts on the wire, which the egress MTU must
/// take: its own, or for a segmentation-offload packet at the TC hook (a local sender's TSO
/// or GSO, GRO on a NIC: up to 64 KB in one skb) that of the segments the egress device cuts
/// it into, as the kernel's forwarding checks it. Taking the skb's length instead sent every
/// such packet to the kernel as too big, where a rewritten reply (its source the VIP, a local
/// address) is dropped as a martian unless `accept_local` is set. (Only such a packet, IPv4
/// BIG TCP, can be longer than 64 KB; its segments cannot.)
#[inline(always)]
pub fn wire_len<C: Frame>(ctx: &C, ip: &Ipv4Hdr, tcp: &TcpHdr) -> u16 {
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
