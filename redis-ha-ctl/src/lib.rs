//! redis-ha-ctl: loads redis-ha's XDP program and drives its maps.

/// The compiled XDP program (redis-ha-ebpf), embedded at build time by `build.rs`.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redis-ha"))
}
