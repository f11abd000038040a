//! Generated replies: the TCP RST the program sends back to a client, built in place from the
//! client's own segment, when a connection has no backend or its backend is no longer the
//! right one. (The one reply the data plane makes itself; everything else is forwarded or left
//! to the kernel.)

use aya_ebpf::helpers::generated::bpf_redirect;
use redis_ha_common::counter;

use crate::{
    csum::{ipv4_csum, tcp_bare_csum},
    frame::{Frame, ptr_at},
    maps::count,
    packet::{
        EthHdr, IP_DF, IP_OFF, Ipv4Hdr, RST_FRAME_LEN, TCP_ACK, TCP_FIN, TCP_OFF, TCP_RST, TCP_SYN,
        TcpHdr,
    },
};

/// Turns the client's segment into a TCP RST from VIP:port back to the client and bounces
/// it out of the interface it came in on, so the client fails fast instead of waiting on a
/// backend that is gone or no longer the right one.
#[inline(always)]
pub fn send_reset<C: Frame>(ctx: &C, eth: *mut EthHdr, reason: u32) -> u32 {
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
