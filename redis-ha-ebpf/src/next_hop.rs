//! Next hop: where a rewritten packet leaves (egress device, MACs), from the kernel's FIB
//! (`bpf_fib_lookup`), and the cache of that answer each connection's entry keeps for each
//! direction, so that an established connection's packets mostly skip the lookup.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        bpf_fib_lookup as FibParams,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns},
};
use redis_ha_common::{NEXT_HOP_TTL_NS, NextHop, counter, hop_flags};

use crate::{
    frame::Frame,
    maps::{PEER_DEVS, count},
    mem::zero_in_place,
    packet::{IPPROTO_TCP, Ipv4Hdr},
};

const AF_INET: u8 = 2;

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
pub fn next_hop<C: Frame>(
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

/// Where a packet leaves: what the fast path needs from a FIB answer.
pub struct Route {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// `ifindex` is in `PEER_DEVS`.
    pub peer: bool,
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

/// Notes a packet on a direction that never asks the FIB (a local backend's): the sweep reads
/// a connection's last activity from its next hops' `resolved_ns`, so it is kept as fresh as
/// a cached hop would be, written at most once per [`NEXT_HOP_TTL_NS`] (the entry's cache
/// line is shared with the other CPU's packets). `ifindex` stays 0: nothing is cached.
#[inline(always)]
pub fn note_activity(hop: &mut NextHop) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(hop.resolved_ns) >= NEXT_HOP_TTL_NS {
        hop.resolved_ns = now;
    }
}
