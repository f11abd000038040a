//! Full NAT: the source ports this node gives connections toward remote backends, and the way
//! back from a backend's reply to the connection it belongs to. A port is unique per backend
//! (`NAT_PORTS` is keyed by backend and port), so a range of N ports carries N connections to
//! each backend at once.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use redis_ha_common::{
    Flow, FlowHashKey, FlowKey, NAT_PORT_TRIES, NAT_PORT_TRIES_IN_ORDER, NatConfig, NatKey,
    flow_hash, nat_mode,
};

use crate::{
    flows,
    maps::{NAT, NAT_CURSOR, NAT_PORTS},
};

/// Insert only if absent: a port already given toward that backend is never taken over.
const BPF_NOEXIST: u64 = 1;

/// Destination NAT, for the moment the array had no entry (it always has one).
static NO_NAT: NatConfig = NatConfig {
    mode: nat_mode::DESTINATION,
    ip: [0; 4],
    port_min: 0,
    port_max: 0,
    _pad: 0,
};

/// This node's NAT settings; all zero (destination NAT) until the controller writes them.
/// A reference into the map, not a copy: the program's stack is nearly full.
#[inline(always)]
pub fn config() -> &'static NatConfig {
    NAT.get(0).unwrap_or(&NO_NAT)
}

#[inline(always)]
pub fn is_full(nat: &NatConfig) -> bool {
    nat.mode == nat_mode::FULL
}

/// Gives connection `fkey` a source port toward `backend_ip:backend_port`, or `None` when
/// every port tried is taken (or the table is full). Tries [`NAT_PORT_TRIES_IN_ORDER`]
/// consecutive ports from this CPU's cursor (all of a range that small), then random ones,
/// [`NAT_PORT_TRIES`] in all: with a range a tenth full, a refusal takes 56 busy random
/// ports in a row, about one connection in 10^56.
#[inline(always)]
pub fn take_port(
    nat: &NatConfig,
    fkey: &FlowKey,
    backend_ip: [u8; 4],
    backend_port: u16,
) -> Option<u16> {
    let size = nat.port_max.wrapping_sub(nat.port_min) as u32 + 1;
    let cursor = NAT_CURSOR.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU's program instance touches it.
    let start = unsafe { *cursor };
    // A CPU's first connection starts at a point of its own (from the connection's hash), so
    // that CPUs do not all walk the range in step from its first port. Only a starting point,
    // which needs no secret.
    let start = if start == 0 {
        flow_hash(fkey, &FlowHashKey::default())
    } else {
        start
    };
    // A constant trip count, exited early for a smaller range: the verifier walks every
    // iteration, and a count it cannot bound (LLVM turned `min(size, 32)` into `size`) makes
    // the program too complex to load.
    let mut next = start.wrapping_add(NAT_PORT_TRIES_IN_ORDER);
    for i in 0..NAT_PORT_TRIES {
        let offset = if i < NAT_PORT_TRIES_IN_ORDER {
            if i >= size {
                break;
            }
            start.wrapping_add(i)
        } else {
            if size <= NAT_PORT_TRIES_IN_ORDER {
                break;
            }
            // SAFETY: a helper without arguments or side effects.
            unsafe { bpf_get_prandom_u32() }
        };
        let port = nat.port_min + (offset % size) as u16;
        let key = NatKey {
            backend_ip,
            backend_port,
            nat_port: port,
        };
        if NAT_PORTS.insert(&key, fkey, BPF_NOEXIST).is_ok() {
            // After a random port, go on from there: the run of busy ports stays behind.
            next = offset.wrapping_add(1);
            // SAFETY: as above.
            unsafe { *cursor = next };
            return Some(port);
        }
    }
    // SAFETY: as above.
    unsafe { *cursor = next };
    None
}

/// Frees a port [`take_port`] gave to `fkey` whose connection entry could not be made.
#[inline(always)]
pub fn give_back(backend_ip: [u8; 4], backend_port: u16, nat_port: u16) {
    _ = NAT_PORTS.remove(&NatKey {
        backend_ip,
        backend_port,
        nat_port,
    });
}

/// The connection a backend's reply to `nat_port` of this node belongs to: its key (client →
/// VIP:port) and entry. `None` for a port no connection holds now (a connection that ended,
/// or the node's own connection from an ephemeral port), which the kernel then answers.
#[inline(always)]
pub fn reply_flow(
    backend_ip: [u8; 4],
    backend_port: u16,
    nat_port: u16,
) -> Option<(FlowKey, &'static mut Flow)> {
    let key = NatKey {
        backend_ip,
        backend_port,
        nat_port,
    };
    // SAFETY: the value is copied out at once.
    let fkey = unsafe { NAT_PORTS.get(&key) }.copied()?;
    let flow = flows::get(&fkey)?;
    // The port may have been freed and given again between the two lookups (another CPU), or
    // the entry replaced by a new connection of the same client port: only a translation that
    // still matches both ways is followed.
    if flow.nat_port != nat_port
        || flow.backend_ip != backend_ip
        || flow.backend_port != backend_port
    {
        return None;
    }
    Some((fkey, flow))
}
