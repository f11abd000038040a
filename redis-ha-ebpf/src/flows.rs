//! The connection table as the program sees it: `FLOWS`, and `FLOWS_SPILL` behind it once
//! `FLOWS` has been full. An entry lives in one of them; a key may be in both only when a
//! connection re-admitted into `FLOWS` left an older entry in the spill table, which a lookup
//! never reaches (it asks `FLOWS` first) and a removal takes along.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use redis_ha_common::{Flow, FlowKey};

use crate::maps::{FLOWS, FLOWS_SPILL, FLOWS_SPILLED};

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

/// Removes `key`'s entry; true if there was one.
#[inline(always)]
pub fn remove(key: &FlowKey) -> bool {
    let main = FLOWS.remove(key).is_ok();
    if !spilling() {
        return main;
    }
    FLOWS_SPILL.remove(key).is_ok() || main
}
