//! The ARP guard of an LB node that shares floating addresses (the VIP, the backends'
//! gateway) with others: while another node holds them, this one must not answer ARP for
//! them, though the kernel still has them configured.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use redis_ha_common::counter;

use crate::{
    frame::{Frame, ptr_at},
    maps::{FLOATING, count},
    packet::{ARP_REQUEST, ArpHdr, IP_OFF},
};

/// Drops an ARP request for a floating address this node's lease no longer covers: the
/// addresses stay configured when a controller dies, and the kernel would go on answering for
/// them while another LB node holds them. Every other ARP frame passes.
#[inline(always)]
pub fn arp_guard<C: Frame>(ctx: &C) -> Result<u32, u32> {
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
