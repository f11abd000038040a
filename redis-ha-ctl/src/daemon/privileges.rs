//! The capabilities a controller keeps: only those its config needs. The unit grants what a
//! data-plane node needs; a controller-only node (no `[dataplane]`) gives them all up before
//! it starts a thread, and a data-plane node without `[ha]` gives up the raw socket that only
//! the gratuitous ARP of a takeover uses.
//!
//! Linux keeps capabilities per thread, and a thread starts with its creator's: so this runs
//! in `main`, before the runtime's threads exist, and never after.

use caps::{CapSet, Capability, CapsHashSet};

use crate::config::Config;

/// What a daemon with `config` needs after its start, on kernels from 5.8 (which know
/// CAP_BPF and CAP_PERFMON); shown to work with exactly these on Linux 6.18 by
/// `tests/tests/privileges.rs`.
pub fn needed(config: &Config) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    if config.dataplane.is_some() {
        // Loading and attaching the program, creating and pinning maps, reading the pins
        // again; CAP_PERFMON spares the program the verifier's Spectre rewriting.
        keep.extend([
            Capability::CAP_BPF,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_PERFMON,
        ]);
        // Kernels before 5.8 demand CAP_SYS_ADMIN for all of BPF: keep it where the unit
        // was edited to grant it.
        keep.insert(Capability::CAP_SYS_ADMIN);
        if config.ha.is_some() {
            keep.insert(Capability::CAP_NET_RAW);
        }
    }
    let low_port = config.controller.as_ref().is_some_and(|c| {
        c.listen.port() < 1024 || c.metrics_listen.is_some_and(|m| m.port() < 1024)
    });
    if low_port {
        keep.insert(Capability::CAP_NET_BIND_SERVICE);
    }
    keep
}

/// Gives up every capability of this thread (and so of the threads it starts) but those
/// `config` needs, in every set; returns the ones kept, for the log. Dropping from the
/// bounding set needs CAP_SETPCAP, which the unit does not grant: there, the unit's own
/// bounding set and NoNewPrivileges already bar getting any back.
pub fn keep_only_needed(config: &Config) -> Result<Vec<Capability>, caps::errors::CapsError> {
    let needed = needed(config);
    let permitted = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = permitted.intersection(&needed).copied().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)?.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    // The ambient set may only hold what stays permitted and inheritable: empty it first.
    caps::clear(None, CapSet::Ambient)?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}
