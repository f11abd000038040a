//! What the controller removes from the connection table (`FLOWS`) on the program's behalf.
//!
//! The program removes a connection's two entries when it sees the connection close (both FINs,
//! then the last ACK). `FLOWS` is a plain hash table, which never evicts, so what the program
//! cannot see end would stay for ever: connections that ended with a reset (the program keeps
//! their entries, an RST may be out of window), whose last ACK was lost, or whose host vanished.
//! The daemon sweeps them here every few seconds (`FLOW_SWEEP_INTERVAL`). A full table
//! still refuses nothing (the program spills into `FLOWS_SPILL`, an LRU table), but spilled
//! connections cost more, so the sweep keeps `FLOWS` below [`HIGH_WATER`].
//!
//! An entry's last activity is its cached next hop's `resolved_ns`: a packet that finds the
//! cache older than `NEXT_HOP_TTL_NS` (100 ms) asks the FIB again and refreshes it, so the
//! connection's last packet came at most that long after it. Both sides read
//! `CLOCK_MONOTONIC`.

use std::collections::{HashMap, HashSet};

use redis_ha_common::{Flow, FlowKey, flow_dir, flow_end, flow_partner};

/// How long an ended connection's entries stay after their last packet: a retransmitted FIN or
/// reset within this finds its entry and is rewritten, as the program's own timing would.
pub const ENDED_GRACE_NS: u64 = 60_000_000_000;
/// Above this share of `FLOWS`' capacity (percent), the least recently active connections are
/// removed down to [`LOW_WATER`], as an LRU table would evict them.
pub const HIGH_WATER: usize = 90;
pub const LOW_WATER: usize = 80;

/// The keys to remove from `FLOWS`, of `capacity` entries, holding `entries` at `now_ns`,
/// while `FLOWS_SPILL` holds `spilled` (a connection's two entries may sit one in each, when
/// `FLOWS` filled up between them). A connection loses both of its entries in `FLOWS`, so
/// that neither direction is left half rewritten.
pub fn select(
    entries: &[(FlowKey, Flow)],
    spilled: &[(FlowKey, Flow)],
    now_ns: u64,
    capacity: usize,
) -> HashSet<FlowKey> {
    let idle = |f: &Flow| now_ns.saturating_sub(f.hop.resolved_ns);
    let main: HashMap<FlowKey, &Flow> = entries.iter().map(|(k, f)| (*k, f)).collect();
    let spill: HashMap<FlowKey, &Flow> = spilled.iter().map(|(k, f)| (*k, f)).collect();
    let partner_of = |key: &FlowKey, flow: &Flow| {
        let k = flow_partner(key, flow);
        (k, main.get(&k).or_else(|| spill.get(&k)).copied())
    };
    let mut out = HashSet::new();
    let take = |out: &mut HashSet<FlowKey>, key: FlowKey, partner: FlowKey| {
        out.insert(key);
        if main.contains_key(&partner) {
            out.insert(partner);
        }
    };
    for (key, flow) in entries {
        let (partner_key, partner) = partner_of(key, flow);
        let reset =
            flow.end & flow_end::RST != 0 || partner.is_some_and(|p| p.end & flow_end::RST != 0);
        let both_fin =
            flow.end & flow_end::FIN != 0 && partner.is_some_and(|p| p.end & flow_end::FIN != 0);
        // An entry whose partner is gone belongs to no connection the program can complete.
        let orphan = partner.is_none();
        // The backend never sent a packet on it: a connection attempt that got no answer.
        let reply_side = if flow.dir == flow_dir::TO_CLIENT {
            Some(flow)
        } else {
            partner
        };
        let unanswered = reply_side.is_some_and(|r| r.hop.resolved_ns == 0);
        let quiet =
            idle(flow) >= ENDED_GRACE_NS && partner.is_none_or(|p| idle(p) >= ENDED_GRACE_NS);
        if quiet && (reset || both_fin || orphan || unanswered) {
            take(&mut out, *key, partner_key);
        }
    }
    let mut left = entries.len() - out.len();
    if left * 100 > capacity * HIGH_WATER {
        let mut by_age: Vec<&(FlowKey, Flow)> =
            entries.iter().filter(|(k, _)| !out.contains(k)).collect();
        // Least recently active connections first, by the later of their two entries: a
        // connection still in its handshake has a reply entry no packet has touched yet
        // (`resolved_ns` 0), and must not go first for that.
        by_age.sort_by_key(|(k, f)| {
            let (_, partner) = partner_of(k, f);
            f.hop
                .resolved_ns
                .max(partner.map_or(0, |p| p.hop.resolved_ns))
        });
        let target = capacity * LOW_WATER / 100;
        for (key, flow) in by_age {
            if left <= target {
                break;
            }
            let before = out.len();
            take(&mut out, *key, flow_partner(key, flow));
            left -= out.len() - before;
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

    /// Client port `port` → VIP 198.18.0.100:6380, on backend 198.18.1.11:6379: both entries,
    /// each last active `ago_ns` before [`NOW`], with `end` bits (client side, backend side).
    fn connection(port: u16, ago_ns: u64, end: (u16, u16)) -> [(FlowKey, Flow); 2] {
        let client = [198, 18, 0, 2];
        let vip = [198, 18, 0, 100];
        let backend = [198, 18, 1, 11];
        let hop = NextHop {
            resolved_ns: NOW - ago_ns,
            ..NextHop::default()
        };
        let to_backend = (
            FlowKey {
                src_ip: client,
                dst_ip: vip,
                src_port: port,
                dst_port: 6380,
            },
            Flow {
                nat_ip: backend,
                nat_port: 6379,
                end: end.0,
                dir: flow_dir::TO_BACKEND,
                hop,
                ..Flow::default()
            },
        );
        let to_client = (
            FlowKey {
                src_ip: backend,
                dst_ip: client,
                src_port: 6379,
                dst_port: port,
            },
            Flow {
                nat_ip: vip,
                nat_port: 6380,
                end: end.1,
                dir: flow_dir::TO_CLIENT,
                hop,
                ..Flow::default()
            },
        );
        assert_eq!(flow_partner(&to_backend.0, &to_backend.1), to_client.0);
        assert_eq!(flow_partner(&to_client.0, &to_client.1), to_backend.0);
        [to_backend, to_client]
    }

    fn ports(selected: &HashSet<FlowKey>) -> Vec<u16> {
        let mut p: Vec<u16> = selected
            .iter()
            .map(|k| {
                if k.dst_port == 6380 {
                    k.src_port
                } else {
                    k.dst_port
                }
            })
            .collect();
        p.sort();
        p.dedup();
        p
    }

    #[test]
    fn ended_connections_go_after_the_grace_period_live_ones_stay() {
        let mut t = Vec::new();
        t.extend(connection(1000, 61 * SEC, (flow_end::RST, 0))); // reset, quiet: goes
        t.extend(connection(1001, 10 * SEC, (flow_end::RST, 0))); // reset, recent: stays
        t.extend(connection(1002, 61 * SEC, (flow_end::FIN, flow_end::FIN))); // last ACK lost
        t.extend(connection(1003, 61 * SEC, (flow_end::FIN, 0))); // half-closed: stays
        t.extend(connection(1004, 3600 * SEC, (0, 0))); // idle pub/sub: stays
        t.extend(connection(1005, 61 * SEC, (0, flow_end::RST))); // reset by the backend
        let sel = select(&t, &[], NOW, 65_536);
        assert_eq!(ports(&sel), vec![1000, 1002, 1005]);
        assert_eq!(sel.len(), 6, "both entries of each: {sel:?}");
    }

    #[test]
    fn an_entry_without_its_partner_goes_once_quiet() {
        let [a, _] = connection(2000, 61 * SEC, (0, 0));
        let [_, b] = connection(2001, 5 * SEC, (0, 0));
        let sel = select(&[a, b], &[], NOW, 65_536);
        assert_eq!(ports(&sel), vec![2000]);
    }

    #[test]
    fn a_connection_attempt_the_backend_never_answered_goes_once_quiet() {
        let [a, mut b] = connection(5000, 61 * SEC, (0, 0));
        b.1.hop.resolved_ns = 0;
        let [c, mut d] = connection(5001, 5 * SEC, (0, 0));
        d.1.hop.resolved_ns = 0;
        let sel = select(&[a, b, c, d], &[], NOW, 65_536);
        assert_eq!(ports(&sel), vec![5000]);
    }

    #[test]
    fn an_entry_whose_partner_spilled_is_not_an_orphan() {
        // An idle connection whose client side went to the spill table: its reply entry in
        // FLOWS stays; reset, its FLOWS half goes (the spill table ages the other out).
        let [a, b] = connection(6000, 61 * SEC, (0, 0));
        assert!(select(&[b], &[a], NOW, 65_536).is_empty());
        let [mut a, b] = connection(6001, 61 * SEC, (0, 0));
        a.1.end = flow_end::RST;
        let sel = select(&[b], &[a], NOW, 65_536);
        assert_eq!(sel, HashSet::from([b.0]));
    }

    #[test]
    fn a_connection_active_on_one_side_is_not_ended() {
        let [mut a, b] = connection(3000, 61 * SEC, (flow_end::RST, 0));
        a.1.hop.resolved_ns = NOW - SEC;
        assert!(select(&[a, b], &[], NOW, 65_536).is_empty());
    }

    #[test]
    fn a_nearly_full_table_loses_its_least_recently_active_connections() {
        // 1024 entries of capacity, 470 connections (940 entries, 92 %): down to 80 %
        // (819 entries) takes the 61 oldest connections.
        let mut t = Vec::new();
        for i in 0..470u16 {
            t.extend(connection(4000 + i, u64::from(470 - i) * SEC, (0, 0)));
        }
        let sel = select(&t, &[], NOW, 1024);
        let p = ports(&sel);
        assert_eq!(p, (4000..4061).collect::<Vec<_>>());
        assert_eq!(sel.len(), 122);
        // Below the high-water mark nothing live goes.
        assert!(select(&t[..900], &[], NOW, 1024).is_empty());
        // A connection in its handshake (no packet on its reply entry yet) is the newest,
        // not the oldest.
        let newest_reply = &mut t[2 * 469 + 1];
        assert_eq!(newest_reply.0.dst_port, 4469);
        newest_reply.1.hop.resolved_ns = 0;
        let sel = select(&t, &[], NOW, 1024);
        assert_eq!(ports(&sel), (4000..4061).collect::<Vec<_>>());
    }
}
