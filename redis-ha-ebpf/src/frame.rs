//! What the program needs from the hook it runs at, so one body serves both: XDP (the fast
//! path on NICs with a native driver) and the TC ingress hook (sockets' own buffers: no copy
//! of the packet on veth or on devices without native XDP, where XDP has to make one). Also
//! [`ptr_at`], the one bounds-checked way into a frame's bytes, since the bounds are the
//! frame's.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::generated::{
        bpf_l4_csum_replace, bpf_skb_change_tail, bpf_skb_pull_data, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};

use crate::{
    csum::{TcpFix, csum_replace2, csum_replace4},
    maps::IF_MACS,
    packet::{EthHdr, IP_OFF, Ipv4Hdr, TCP_OFF, TcpHdr},
};

/// Where the TCP checksum field sits in the frame.
const TCP_CHECK_OFF: u32 = (TCP_OFF + core::mem::offset_of!(TcpHdr, check)) as u32;

pub trait Frame: EbpfContext {
    /// Hand the packet to the kernel's stack.
    const PASS: u32;
    const DROP: u32;
    /// The TC hook, where `bpf_redirect_peer` exists.
    const IS_TC: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    fn ingress_ifindex(&self) -> u32;
    /// Whether the frame is addressed to this host: broadcast, multicast or its own MAC. On a
    /// shared segment a switch floods a frame for a MAC it has not learnt (or has just
    /// forgotten, as when a node's port goes down) to every port, and every node's program
    /// sees it; only the host it is for may act on it.
    fn for_this_host(&self, eth: &EthHdr) -> bool;
    /// The payload size of each segment a segmentation-offload packet (a local sender's
    /// TSO/GSO, or GRO on a NIC) is cut into on the way out; 0 for a plain packet.
    fn gso_size(&self) -> u32;
    /// The packets this one stands for on the wire: its segments, or 1.
    fn wire_packets(&self) -> u64;
    /// The IPv4 packet's length: its header's `tot_len`, except for an IPv4 BIG TCP packet.
    fn ip_len(&self, ip: &Ipv4Hdr) -> u32;
    /// Cuts the packet to its first `len` bytes; false if the kernel refused.
    fn truncate(&self, len: u32) -> bool;
    /// Brings the TCP checksum in line with a rewrite; false if the kernel refused. Called
    /// once nothing else will read or write the packet: at the TC hook it is a helper after
    /// which no pointer into the packet may be used.
    fn fix_tcp_checksum(&self, fix: &TcpFix) -> bool;
}

impl Frame for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const IS_TC: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }

    /// The driver has not classified the frame yet: compared with the interface's MAC, which
    /// the controller writes at attach (`IF_MACS`; an interface it has no entry for takes
    /// everything, as before).
    #[inline(always)]
    fn for_this_host(&self, eth: &EthHdr) -> bool {
        if eth.dst[0] & 1 != 0 {
            return true;
        }
        // SAFETY: the value is copied out at once.
        let ifindex = Frame::ingress_ifindex(self);
        match unsafe { IF_MACS.get(&ifindex) } {
            Some(mac) => mac.mac == eth.dst,
            None => true,
        }
    }

    /// A frame in the driver is one wire packet (no multi-buffer here).
    #[inline(always)]
    fn gso_size(&self) -> u32 {
        0
    }

    #[inline(always)]
    fn wire_packets(&self) -> u64 {
        1
    }

    /// In skb (generic XDP) mode the frame may be a GRO aggregate, handed over without its
    /// segmentation state; an IPv4 BIG TCP one (over 64 KB) has `tot_len` 0. No IPv4 packet on
    /// a wire is that long, so the frame's length tells it apart from a malformed header.
    #[inline(always)]
    fn ip_len(&self, ip: &Ipv4Hdr) -> u32 {
        let len = u16::from_be_bytes(ip.tot_len) as u32;
        if len != 0 {
            return len;
        }
        let frame = (self.data_end() - self.data()) as u32;
        if frame > IP_OFF as u32 + u16::MAX as u32 {
            frame - IP_OFF as u32
        } else {
            0
        }
    }

    #[inline(always)]
    fn truncate(&self, len: u32) -> bool {
        let excess = (self.data_end() - self.data()) as i32 - len as i32;
        // SAFETY: the helper checks the delta against the frame itself.
        excess <= 0 || unsafe { bpf_xdp_adjust_tail(self.as_ptr() as *mut _, -excess) } == 0
    }

    /// A frame in the driver has no offload state: its checksum is always complete, and
    /// incremental arithmetic keeps it so.
    #[inline(always)]
    fn fix_tcp_checksum(&self, fix: &TcpFix) -> bool {
        let Some(tcp) = ptr_at::<TcpHdr, _>(self, TCP_OFF) else {
            return false;
        };
        // SAFETY: ptr_at checked that the header lies inside the packet.
        let check = unsafe { &mut (*tcp).check };
        csum_replace4(check, fix.from_addr, fix.to_addr);
        csum_replace2(check, fix.from_port, fix.to_port);
        true
    }
}

impl Frame for TcContext {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
    const IS_TC: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    /// The kernel classified the frame when it received it (`eth_type_trans`).
    #[inline(always)]
    fn for_this_host(&self, _eth: &EthHdr) -> bool {
        const PACKET_OTHERHOST: u32 = 3;
        // SAFETY: the context pointer is the kernel's __sk_buff for this run.
        unsafe { (*self.skb.skb).pkt_type != PACKET_OTHERHOST }
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // At the ingress hook the skb's own device is the one it arrived on; unlike
        // `ingress_ifindex` it is also set for a packet a test run injects.
        // SAFETY: the context pointer is the kernel's __sk_buff for this run.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn gso_size(&self) -> u32 {
        // SAFETY: the context pointer is the kernel's __sk_buff for this run.
        unsafe { (*self.skb.skb).gso_size }
    }

    #[inline(always)]
    fn wire_packets(&self) -> u64 {
        // SAFETY: as above.
        let segs = unsafe { (*self.skb.skb).gso_segs };
        if segs > 1 { segs as u64 } else { 1 }
    }

    /// An IPv4 BIG TCP packet (`gso_ipv4_max_size` / `gro_ipv4_max_size` above 64 KB) is a
    /// segmentation-offload skb longer than `tot_len` can say: its `tot_len` is 0 and the skb's
    /// length is the packet's, as the kernel's own `iph_totlen()` reads it. 0 in any other
    /// packet stays 0, which the caller rejects as malformed.
    #[inline(always)]
    fn ip_len(&self, ip: &Ipv4Hdr) -> u32 {
        let len = u16::from_be_bytes(ip.tot_len) as u32;
        if len == 0 && self.gso_size() != 0 {
            self.len().saturating_sub(IP_OFF as u32)
        } else {
            len
        }
    }

    #[inline(always)]
    fn truncate(&self, len: u32) -> bool {
        // SAFETY: the helper validates the length against the skb.
        self.len() <= len || unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) } == 0
    }

    /// An skb's TCP checksum may be partial (a local sender left it to the device: the field
    /// holds only the pseudo-header's sum, which covers the addresses but not the ports), and
    /// a receive checksum may be kept as a whole-packet sum. The kernel's helper handles each
    /// state: the addresses as pseudo-header fields, the port as a plain one.
    #[inline(always)]
    fn fix_tcp_checksum(&self, fix: &TcpFix) -> bool {
        let addr = |a: [u8; 4]| u64::from(u32::from_ne_bytes(a));
        let port = |p: [u8; 2]| u64::from(u16::from_ne_bytes(p));
        // SAFETY: helpers on this run's skb; they check the offset against the packet.
        unsafe {
            bpf_l4_csum_replace(
                self.skb.skb,
                TCP_CHECK_OFF,
                addr(fix.from_addr),
                addr(fix.to_addr),
                u64::from(BPF_F_PSEUDO_HDR) | 4,
            ) == 0
                // A VIP port equal to the backend's (6379 both) needs no second call.
                && (fix.from_port == fix.to_port
                    || bpf_l4_csum_replace(
                        self.skb.skb,
                        TCP_CHECK_OFF,
                        port(fix.from_port),
                        port(fix.to_port),
                        2,
                    ) == 0)
        }
    }
}

/// At the TC hook the headers may lie partly outside the skb's linear part (a driver that
/// puts everything in page fragments); direct access sees only the linear part, so pull up
/// to `want` bytes into it first. XDP frames are always linear here (no multi-buffer).
#[inline(always)]
pub fn pull_headers(ctx: &TcContext, want: u32) {
    let have = (ctx.data_end() - ctx.data()) as u32;
    if have < want && ctx.len() > have {
        let n = if ctx.len() < want { ctx.len() } else { want };
        // SAFETY: the helper bounds `n` by the skb's length; a failure leaves the packet as
        // it was, and the bounds checks that follow treat it as short.
        unsafe { bpf_skb_pull_data(ctx.skb.skb, n) };
    }
}

/// The only way this program reaches into a packet: `None` unless all of `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T, C: Frame>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}
