//! The connection table as the program sees it: `FLOWS`, and `FLOWS_SPILL` behind it once
//! `FLOWS` has been full. An entry lives in one of them; a key may be in both only when a
//! connection re-admitted into `FLOWS` left an older entry in the spill table, which a lookup
//! never reaches (it asks `FLOWS` first) and a removal takes along. Also [`closing`], which
//! follows a connection's end on its entry, so that the entry goes when the connection does.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use redis_ha_common::{ACK_STEP, Flow, FlowKey, NatKey, flow_end, seq_in_window};

use crate::{
    maps::{FLOWS, FLOWS_SPILL, FLOWS_SPILLED, NAT_PORTS},
    packet::{Ipv4Hdr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr},
};

/// What a map update returns when the table is full.
const E2BIG: i32 = 7;

/// Has anything spilled since load? Until then the spill table is empty and not asked.
#[inline(always)]
fn spilling() -> bool {
    FLOWS_SPILLED.get(0).is_some_and(|n| *n != 0)
}

/// The entry of `key`, writable in place. A map value stays valid for the whole run of the
/// program (RCU); another CPU may write it concurrently.
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<&'static mut Flow> {
    // SAFETY: see above; the caller only reads and writes plain fields.
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        return Some(unsafe { &mut *f });
    }
    if !spilling() {
        return None;
    }
    // SAFETY: as above.
    FLOWS_SPILL.get_ptr_mut(key).map(|f| unsafe { &mut *f })
}

/// Records `flow` at `key`, replacing an entry of the same key.
#[inline(always)]
pub fn insert(key: &FlowKey, flow: &Flow) -> Result<(), i32> {
    match FLOWS.insert(key, flow, 0) {
        Err(e) if e == -E2BIG => {}
        other => return other,
    }
    if let Some(since) = FLOWS_SPILLED.get_ptr_mut(0) {
        // SAFETY: a valid map value. Two CPUs spilling at once both write a time of now.
        unsafe {
            if *since == 0 {
                *since = bpf_ktime_get_ns();
            }
        }
    }
    FLOWS_SPILL.insert(key, flow, 0)
}

/// Removes `key`'s entry, `flow`, and frees its full-NAT source port; true if there was one.
#[inline(always)]
pub fn remove(key: &FlowKey, flow: &Flow) -> bool {
    // Read before the removal: `flow` points into the entry, whose memory may be reused then.
    if flow.nat_port != 0 {
        let nat = NatKey {
            backend_ip: flow.backend_ip,
            backend_port: flow.backend_port,
            nat_port: flow.nat_port,
        };
        // SAFETY: the value is copied out at once. The port is freed only if it still names
        // this connection: another CPU may have freed and given it to a new one already.
        if unsafe { NAT_PORTS.get(&nat) }.is_some_and(|owner| owner == key) {
            _ = NAT_PORTS.remove(&nat);
        }
    }
    let main = FLOWS.remove(key).is_ok();
    if !spilling() {
        return main;
    }
    FLOWS_SPILL.remove(key).is_ok() || main
}

/// Checks a segment of a known connection against the connection's window: true for a FIN or
/// RST whose sequence number is outside the window around `peer_ack` (the other side's noted
/// acknowledgement), which the caller drops without touching the entry. A segment in the
/// window notes its own acknowledgement number in `own_ack` when that moved more than
/// `ACK_STEP` (rarely, so the entry is not written on every packet); one outside it notes
/// nothing, so a forger cannot move the window either.
#[inline(always)]
pub fn out_of_window(tcp: &TcpHdr, peer_ack: u32, own_ack: &mut u32) -> bool {
    if !seq_in_window(u32::from_be_bytes(tcp.seq), peer_ack) {
        return tcp.flags & (TCP_FIN | TCP_RST) != 0;
    }
    if tcp.flags & TCP_ACK != 0 {
        let ack = u32::from_be_bytes(tcp.ack_seq);
        let ahead = ack.wrapping_sub(*own_ack);
        if *own_ack == 0 || (ahead > ACK_STEP && ahead < 1 << 31) {
            *own_ack = ack;
        }
    }
    false
}

/// Follows a connection's close on its entry: notes each side's FIN (`fin` is the sender's
/// bit), and returns true when this packet is the bare ACK that completes an orderly close
/// (both sides sent a FIN), so that the entry goes once the packet is on its way. Otherwise
/// the table would keep every closed connection until the controller's sweep; a removed
/// entry is also the next one a new connection reuses while it is still in cache.
///
/// An RST removes nothing: one that the receiver rejects (out of window) would otherwise cut
/// a live connection. It is noted, so that a new connection needing the same backend-side
/// addresses may start (see [`crate::to_backend::new_flow`]), and the sweep removes the entry once it is quiet,
/// like that of a connection whose last ACK is lost (the FIN retransmitted after it finds no
/// entry and goes to the kernel unrewritten, and the client's reset of it closes the
/// backend's socket).
#[inline(always)]
pub fn closing(ip: &Ipv4Hdr, tcp: &TcpHdr, flow: &mut Flow, fin: u16) -> bool {
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
