//! What the controller removes from the connection table (`FLOWS`) on the program's behalf.
//!
//! The program removes a connection's entry when it sees the connection close (both FINs, then
//! the last ACK). `FLOWS` is a plain hash table, which never evicts, so what the program cannot
//! see end would stay for ever: connections that ended with a reset (the program keeps their
//! entry, an RST may be out of window), whose last ACK was lost, or whose host vanished. The
//! daemon sweeps them here every few seconds (`FLOW_SWEEP_INTERVAL`). A full table still
//! refuses nothing (the program spills into `FLOWS_SPILL`, an LRU table), but spilled
//! connections cost more, so the sweep keeps `FLOWS` below [`HIGH_WATER`].
//!
//! A connection's last activity is the later of its two cached next hops' `resolved_ns`
//! ([`Flow::last_active_ns`]): a packet that finds its direction's cache older than
//! `NEXT_HOP_TTL_NS` (100 ms) asks the FIB again and refreshes it, so the connection's last
//! packet came at most that long after it. Both sides read `CLOCK_MONOTONIC`.

use std::collections::HashSet;

use redis_ha_common::{Flow, FlowKey, flow_end};

/// How long an ended connection's entry stays after its last packet: a retransmitted FIN or
/// reset within this finds its entry and is rewritten, as the program's own timing would.
pub const ENDED_GRACE_NS: u64 = 60_000_000_000;
/// Above this share of `FLOWS`' capacity (percent), the least recently active connections are
/// removed down to [`LOW_WATER`], as an LRU table would evict them.
pub const HIGH_WATER: usize = 90;
pub const LOW_WATER: usize = 80;

/// The keys to remove from `FLOWS`, of `capacity` entries, holding `entries` at `now_ns`.
pub fn select(entries: &[(FlowKey, Flow)], now_ns: u64, capacity: usize) -> HashSet<FlowKey> {
    let mut out = HashSet::new();
    for (key, flow) in entries {
        let reset = flow.end & flow_end::RST != 0;
        let both_fin = flow.end & flow_end::BOTH_FIN == flow_end::BOTH_FIN;
        // The backend never sent a packet on it: a connection attempt that got no answer.
        let unanswered = flow.to_client.resolved_ns == 0;
        let quiet = now_ns.saturating_sub(flow.last_active_ns()) >= ENDED_GRACE_NS;
        if quiet && (reset || both_fin || unanswered) {
            out.insert(*key);
        }
    }
    let mut left = entries.len() - out.len();
    if left * 100 > capacity * HIGH_WATER {
        let mut by_age: Vec<&(FlowKey, Flow)> =
            entries.iter().filter(|(k, _)| !out.contains(k)).collect();
        // Least recently active first. A connection still in its handshake has no reply yet
        // (`to_client.resolved_ns` 0) and counts from its client's packets.
        by_age.sort_by_key(|(_, f)| f.last_active_ns());
        let target = capacity * LOW_WATER / 100;
        for (key, _) in by_age {
            if left <= target {
                break;
            }
            out.insert(*key);
            left -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use redis_ha_common::NextHop;

    use super::*;

    const SEC: u64 = 1_000_000_000;
    const NOW: u64 = 10_000 * SEC;

    /// Client port `port` → VIP 198.18.0.100:6380, on backend 198.18.1.11:6379, whose client
    /// last sent a packet `ago_ns` before [`NOW`] and whose backend answered `reply_ago_ns`
    /// before it (`None`: never), with `end` bits.
    fn connection(port: u16, ago_ns: u64, reply_ago_ns: Option<u64>, end: u16) -> (FlowKey, Flow) {
        let hop = |ago: u64| NextHop {
            resolved_ns: NOW - ago,
            ..NextHop::default()
        };
        (
            FlowKey {
                src_ip: [198, 18, 0, 2],
                dst_ip: [198, 18, 0, 100],
                src_port: port,
                dst_port: 6380,
            },
            Flow {
                backend_ip: [198, 18, 1, 11],
                backend_port: 6379,
                end,
                to_backend: hop(ago_ns),
                to_client: reply_ago_ns.map(hop).unwrap_or_default(),
                ..Flow::default()
            },
        )
    }

    /// Both directions last active `ago_ns` before [`NOW`].
    fn quiet(port: u16, ago_ns: u64, end: u16) -> (FlowKey, Flow) {
        connection(port, ago_ns, Some(ago_ns), end)
    }

    fn ports(selected: &HashSet<FlowKey>) -> Vec<u16> {
        let mut p: Vec<u16> = selected.iter().map(|k| k.src_port).collect();
        p.sort();
        p
    }

    #[test]
    fn ended_connections_go_after_the_grace_period_live_ones_stay() {
        use flow_end::{BACKEND_FIN, BOTH_FIN, CLIENT_FIN, RST};
        let t = [
            quiet(1000, 61 * SEC, RST),               // reset, quiet: goes
            quiet(1001, 10 * SEC, RST),               // reset, recent: stays
            quiet(1002, 61 * SEC, BOTH_FIN),          // last ACK lost: goes
            quiet(1003, 61 * SEC, CLIENT_FIN),        // half-closed: stays
            quiet(1004, 3600 * SEC, 0),               // idle pub/sub: stays
            quiet(1005, 61 * SEC, RST | BACKEND_FIN), // reset after the backend's FIN
            quiet(1006, 61 * SEC, BACKEND_FIN),       // half-closed the other way: stays
        ];
        assert_eq!(ports(&select(&t, NOW, 65_536)), vec![1000, 1002, 1005]);
    }

    #[test]
    fn a_connection_attempt_the_backend_never_answered_goes_once_quiet() {
        let t = [
            connection(5000, 61 * SEC, None, 0),
            connection(5001, 5 * SEC, None, 0),
        ];
        assert_eq!(ports(&select(&t, NOW, 65_536)), vec![5000]);
    }

    #[test]
    fn a_connection_active_in_one_direction_is_not_ended() {
        let t = [
            connection(3000, 61 * SEC, Some(SEC), flow_end::RST),
            connection(3001, SEC, Some(61 * SEC), flow_end::RST),
        ];
        assert!(select(&t, NOW, 65_536).is_empty());
    }

    #[test]
    fn a_nearly_full_table_loses_its_least_recently_active_connections() {
        // 1024 entries of capacity, 940 connections (92 %): down to 80 % (819 entries) takes
        // the 121 oldest.
        let mut t: Vec<_> = (0..940u16)
            .map(|i| quiet(4000 + i, u64::from(940 - i) * SEC, 0))
            .collect();
        let sel = select(&t, NOW, 1024);
        assert_eq!(ports(&sel), (4000..4121).collect::<Vec<_>>());
        // Below the high-water mark nothing live goes.
        assert!(select(&t[..900], NOW, 1024).is_empty());
        // A connection in its handshake (no reply yet) counts from its client's packets: the
        // newest, not the oldest.
        t[939].1.to_client.resolved_ns = 0;
        assert_eq!(
            ports(&select(&t, NOW, 1024)),
            (4000..4121).collect::<Vec<_>>()
        );
        // One answered long ago but active since on the client's side is not old.
        t[0].1.to_backend.resolved_ns = NOW - SEC;
        assert_eq!(
            ports(&select(&t, NOW, 1024)),
            (4001..4122).collect::<Vec<_>>()
        );
    }
}
