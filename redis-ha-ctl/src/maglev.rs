//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) for the read port.
//!
//! Each backend gets a permutation of the table's entries derived from its *address* (not its
//! position in a list), and backends take turns claiming their next free preferred entry. So
//! the table depends only on the set of backends: every data-plane node builds the same one,
//! and adding or removing a replica moves only about 1/N of the entries.

use std::net::SocketAddrV4;

use redis_ha_common::RING_SIZE;

/// Builds the lookup table: `RING_SIZE` entries, each one of `backends`' slots. An empty pool
/// gives an all-zero table (slot 0 = "no backend", new read connections are reset).
pub fn table(backends: &[(u32, SocketAddrV4)]) -> Vec<u32> {
    let m = RING_SIZE as u64;
    let mut out = vec![0u32; m as usize];
    if backends.is_empty() {
        return out;
    }
    // Sort by address so the result does not depend on the order backends were listed in.
    let mut backends = backends.to_vec();
    backends.sort_by_key(|(_, addr)| (u32::from(*addr.ip()), addr.port()));
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|(_, addr)| {
            let key = addr.to_string();
            let offset = fnv1a(key.as_bytes(), 0) % m;
            let skip = fnv1a(key.as_bytes(), 1) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut filled = 0;
    while filled < m {
        for (i, (slot, _)) in backends.iter().enumerate() {
            let (offset, skip) = perms[i];
            let mut entry = (offset + next[i] * skip) % m;
            while out[entry as usize] != 0 {
                next[i] += 1;
                entry = (offset + next[i] * skip) % m;
            }
            out[entry as usize] = *slot;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    out
}

/// FNV-1a, written out rather than taken from std: std's hashers may change between Rust
/// releases, and nodes built by different toolchains must still agree on the table.
fn fnv1a(data: &[u8], seed: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&seed).chain(data) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u8) -> Vec<(u32, SocketAddrV4)> {
        (1..=n)
            .map(|i| {
                (
                    i as u32,
                    SocketAddrV4::new([198, 18, 1, 10 + i].into(), 6379),
                )
            })
            .collect()
    }

    fn share(t: &[u32], slot: u32) -> f64 {
        t.iter().filter(|&&s| s == slot).count() as f64 / t.len() as f64
    }

    #[test]
    fn every_entry_is_a_backend_and_shares_are_even() {
        let t = table(&pool(3));
        assert_eq!(t.len(), RING_SIZE as usize);
        assert!(t.iter().all(|s| (1..=3).contains(s)));
        for slot in 1..=3 {
            let s = share(&t, slot);
            assert!((0.32..0.35).contains(&s), "slot {slot} has {s}");
        }
    }

    #[test]
    fn same_set_gives_same_table_whatever_the_order() {
        let mut p = pool(4);
        let a = table(&p);
        p.reverse();
        assert_eq!(a, table(&p));
    }

    #[test]
    fn removing_one_backend_moves_few_other_entries() {
        let full = table(&pool(4));
        let less = table(&pool(3));
        let moved = full
            .iter()
            .zip(&less)
            .filter(|(a, b)| **a != 4 && a != b)
            .count();
        // Only the removed backend's quarter must move; Maglev keeps the rest nearly in place.
        assert!(
            (moved as f64) < 0.03 * RING_SIZE as f64,
            "{moved} entries of surviving backends moved"
        );
    }

    #[test]
    fn empty_pool_is_all_unset() {
        assert!(table(&[]).iter().all(|&s| s == 0));
    }

    #[test]
    fn single_backend_takes_everything() {
        assert!(table(&pool(1)).iter().all(|&s| s == 1));
    }
}
