//! The soak's verdicts, computed from its records alone (pure, so unit-tested): per fault
//! occurrence the write gap, the lost acknowledged writes, the writes a demoted master
//! acknowledged, failovers beyond the fault's own; over time, whether memory and file
//! descriptors stay flat.

use std::collections::BTreeMap;

use redis_ha_tests::trial::WriteAck;

use super::faults::{FaultRun, SoakFault};
use super::monitor::{MasterChange, ResourceSample};

/// The master's backend index at `t_ms`, when the samples say so for certain: `None` before
/// the first sample, and between the last sample before a change and the sample that saw it
/// (the change happened somewhere in there).
pub fn master_at(changes: &[MasterChange], t_ms: u32) -> Option<u8> {
    let i = changes.partition_point(|c| c.seen_ms <= t_ms);
    if i == 0 {
        return None;
    }
    if changes
        .get(i)
        .is_some_and(|next| next.prev_sample_ms < t_ms)
    {
        return None;
    }
    Some(changes[i - 1].master)
}

/// Acknowledged by a backend that was certainly not the master at that moment: the master is
/// known, the same, and another backend from the `SET`'s sending to its reply.
pub fn by_demoted_master(ack: &WriteAck, changes: &[MasterChange]) -> bool {
    let sent = ack.at_ms.saturating_sub(u32::from(ack.sent_before_ms));
    let same_interval = changes.partition_point(|c| c.seen_ms <= sent)
        == changes.partition_point(|c| c.seen_ms <= ack.at_ms);
    ack.backend != 0
        && same_interval
        && master_at(changes, sent).is_some_and(|m| m != ack.backend)
        && master_at(changes, ack.at_ms).is_some_and(|m| m != ack.backend)
}

/// The longest time between consecutive acknowledgements (times sorted) that ends after
/// `from` and starts no later than `until`: what a client saw around an event at `from`.
pub fn longest_gap(times: &[u32], from: u32, until: u32) -> Option<u32> {
    times
        .windows(2)
        .filter(|w| w[1] > from && w[0] <= until)
        .map(|w| w[1] - w[0])
        .max()
}

/// What one occurrence did: everything acknowledged from its injection until the next
/// occurrence's (or the end) is charged to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occurrence {
    pub from_ms: u32,
    pub to_ms: u32,
    pub gap_ms: Option<u32>,
    pub acked: u64,
    pub lost_confirmed: u64,
    pub lost_unconfirmed: u64,
    pub demoted_acks: u64,
    pub failovers: usize,
    pub epoch_bumps: usize,
    pub spurious_failovers: usize,
    pub published: u64,
    /// Per subscriber: acknowledged publications of the window it did not receive.
    pub pubsub_missed: Vec<u64>,
    pub read_errors: u64,
    pub churn_errors: u64,
}

/// Everything [`analyse`] reads.
pub struct Inputs<'a> {
    pub runs: &'a [FaultRun],
    pub end_ms: u32,
    pub acks: &'a [WriteAck],
    /// Sorted ids of acknowledged writes missing on the final master.
    pub missing: &'a [u32],
    pub changes: &'a [MasterChange],
    /// (message number, ack ms) of every acknowledged `PUBLISH`.
    pub published: &'a [(u64, u32)],
    /// Per subscriber: whether it received message n.
    pub received: &'a [&'a dyn Fn(u64) -> bool],
    /// ms of every failed read and churned read.
    pub read_failures: &'a [u32],
    pub churn_failures: &'a [u32],
}

/// Failovers (the write port moved) and epoch bumps seen in [from, to).
fn failovers_in(changes: &[MasterChange], from: u32, to: u32) -> (usize, usize) {
    let mut failovers = 0;
    let mut bumps = 0;
    for w in changes.windows(2) {
        if w[1].seen_ms >= from && w[1].seen_ms < to {
            failovers += usize::from(w[1].master != w[0].master);
            bumps += usize::from(w[1].epoch != w[0].epoch);
        }
    }
    (failovers, bumps)
}

fn count_in(times: &[u32], from: u32, to: u32) -> u64 {
    times.iter().filter(|t| **t >= from && **t < to).count() as u64
}

/// One [`Occurrence`] per run, in order, and the failovers seen before the first fault (all
/// spurious).
pub fn analyse(inp: &Inputs) -> (Vec<Occurrence>, usize) {
    let times: Vec<u32> = inp.acks.iter().map(|a| a.at_ms).collect();
    let first = inp.runs.first().map_or(inp.end_ms, |r| r.injected_ms);
    let (before, _) = failovers_in(inp.changes, 0, first);
    let mut out = Vec::new();
    for (i, run) in inp.runs.iter().enumerate() {
        let from = run.injected_ms;
        let to = inp.runs.get(i + 1).map_or(inp.end_ms, |r| r.injected_ms);
        let mut o = Occurrence {
            from_ms: from,
            to_ms: to,
            gap_ms: longest_gap(&times, from, run.recovered_ms.max(from)),
            ..Occurrence::default()
        };
        let lo = times.partition_point(|t| *t < from);
        let hi = times.partition_point(|t| *t < to);
        for ack in &inp.acks[lo..hi] {
            o.acked += 1;
            if inp.missing.binary_search(&ack.id).is_ok() {
                if ack.confirmed {
                    o.lost_confirmed += 1;
                } else {
                    o.lost_unconfirmed += 1;
                }
            }
            o.demoted_acks += u64::from(by_demoted_master(ack, inp.changes));
        }
        (o.failovers, o.epoch_bumps) = failovers_in(inp.changes, from, to);
        o.spurious_failovers = o.failovers.saturating_sub(run.fault.expected_failovers());
        let window: Vec<u64> = inp
            .published
            .iter()
            .filter(|(_, at)| *at >= from && *at < to)
            .map(|(n, _)| *n)
            .collect();
        o.published = window.len() as u64;
        o.pubsub_missed = inp
            .received
            .iter()
            .map(|has| window.iter().filter(|n| !has(**n)).count() as u64)
            .collect();
        o.read_errors = count_in(inp.read_failures, from, to);
        o.churn_errors = count_in(inp.churn_failures, from, to);
        out.push(o);
    }
    (out, before)
}

/// min / median / max.
pub fn spread(values: &mut [u32]) -> Option<(u32, u32, u32)> {
    values.sort_unstable();
    let n = values.len();
    (n > 0).then(|| (values[0], values[n / 2], values[n - 1]))
}

/// Per fault kind, the occurrences in schedule order.
pub fn by_fault<'a>(
    runs: &'a [FaultRun],
    occurrences: &'a [Occurrence],
) -> BTreeMap<SoakFault, Vec<(&'a FaultRun, &'a Occurrence)>> {
    let mut map: BTreeMap<SoakFault, Vec<_>> = BTreeMap::new();
    for (r, o) in runs.iter().zip(occurrences) {
        map.entry(r.fault).or_default().push((r, o));
    }
    map
}

/// How one value of one controller process moved over its life.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    pub samples: usize,
    pub first: u64,
    pub last: u64,
    pub max: u64,
    /// Least-squares slope, per hour.
    pub per_hour: f64,
    pub minutes: f64,
}

/// The trend of `(ms, value)` points; `None` for fewer than two.
pub fn trend(points: &[(u32, u64)]) -> Option<Trend> {
    let (first, last) = (points.first()?, points.last()?);
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let hours = |ms: u32| f64::from(ms) / 3_600_000.0;
    let mx = points.iter().map(|p| hours(p.0)).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxy: f64 = points
        .iter()
        .map(|p| (hours(p.0) - mx) * (p.1 as f64 - my))
        .sum();
    let sxx: f64 = points.iter().map(|p| (hours(p.0) - mx).powi(2)).sum();
    Some(Trend {
        samples: points.len(),
        first: first.1,
        last: last.1,
        max: points.iter().map(|p| p.1).max().unwrap_or(0),
        per_hour: if sxx > 0.0 { sxy / sxx } else { 0.0 },
        minutes: f64::from(last.0 - first.0) / 60_000.0,
    })
}

/// A process's memory counts as growing when it ends more than this above where it started
/// (and more than [`RSS_GROWTH_FRACTION`] of it): allocator caches and one-off buffers move
/// RSS by a few MB, a leak keeps going.
pub const RSS_GROWTH_KIB: u64 = 8 * 1024;
pub const RSS_GROWTH_FRACTION: f64 = 0.25;
/// Open file descriptors may end this many above the start (connections in flight).
pub const FD_GROWTH: u64 = 16;
/// Processes sampled fewer times than this (restarted soon after) are reported, not judged.
pub const MIN_SAMPLES: usize = 6;

/// The connection tables' size over time (every controller's sample of one moment carries the
/// same count: taken once per moment).
pub fn flow_trend(samples: &[ResourceSample]) -> Option<Trend> {
    let mut points: Vec<(u32, u64)> = samples
        .iter()
        .filter_map(|s| Some((s.at_ms, s.flows?)))
        .collect();
    points.dedup_by_key(|p| p.0);
    trend(&points)
}

/// One controller process (controller index, pid) and its two trends.
#[derive(Clone, Debug)]
pub struct ProcessTrend {
    pub controller: u8,
    pub pid: u32,
    pub rss: Trend,
    pub fds: Trend,
}

impl ProcessTrend {
    /// Why this process's resources are not flat, if they are not.
    pub fn growth(&self) -> Option<String> {
        if self.rss.samples < MIN_SAMPLES {
            return None;
        }
        let rss_up = self.rss.last.saturating_sub(self.rss.first);
        let mut why = Vec::new();
        if rss_up > RSS_GROWTH_KIB && rss_up as f64 > RSS_GROWTH_FRACTION * self.rss.first as f64 {
            why.push(format!("RSS {} → {} KiB", self.rss.first, self.rss.last));
        }
        if self.fds.last.saturating_sub(self.fds.first) > FD_GROWTH {
            why.push(format!("fds {} → {}", self.fds.first, self.fds.last));
        }
        (!why.is_empty()).then(|| {
            format!(
                "c{} (pid {}): {}",
                self.controller,
                self.pid,
                why.join(", ")
            )
        })
    }
}

/// Trends per controller process, in order of controller then start.
pub fn process_trends(samples: &[ResourceSample]) -> Vec<ProcessTrend> {
    let mut keys: Vec<(u8, u32)> = Vec::new();
    for s in samples {
        if !keys.contains(&(s.controller, s.pid)) {
            keys.push((s.controller, s.pid));
        }
    }
    keys.sort_by_key(|k| k.0);
    keys.into_iter()
        .filter_map(|(controller, pid)| {
            let mine: Vec<&ResourceSample> = samples
                .iter()
                .filter(|s| (s.controller, s.pid) == (controller, pid))
                .collect();
            let series = |f: fn(&ResourceSample) -> u64| -> Vec<(u32, u64)> {
                mine.iter().map(|s| (s.at_ms, f(s))).collect()
            };
            Some(ProcessTrend {
                controller,
                pid,
                rss: trend(&series(|s| s.rss_kib))?,
                fds: trend(&series(|s| u64::from(s.fds)))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(prev: u32, seen: u32, epoch: u64, master: u8) -> MasterChange {
        MasterChange {
            prev_sample_ms: prev,
            seen_ms: seen,
            epoch,
            master,
        }
    }

    fn ack(id: u32, at_ms: u32, backend: u8, confirmed: bool) -> WriteAck {
        WriteAck {
            id,
            at_ms,
            sent_before_ms: 0,
            backend,
            waited: confirmed,
            confirmed,
        }
    }

    #[test]
    fn the_master_is_unknown_between_the_samples_around_a_change() {
        // Backend 1 from 0; the switch to 2 happened after the sample at 1000, seen at 1250.
        let changes = [change(0, 0, 1, 1), change(1000, 1250, 2, 2)];
        assert_eq!(master_at(&changes, 500), Some(1));
        assert_eq!(master_at(&changes, 1000), Some(1));
        assert_eq!(master_at(&changes, 1100), None);
        assert_eq!(master_at(&changes, 1250), Some(2));
        // An ack by 1 during the uncertain interval is not blamed; after it, it is.
        assert!(!by_demoted_master(&ack(1, 1200, 1, false), &changes));
        assert!(by_demoted_master(&ack(2, 1300, 1, false), &changes));
        assert!(!by_demoted_master(&ack(3, 1300, 2, false), &changes));
        assert!(
            !by_demoted_master(&ack(4, 1300, 0, false), &changes),
            "an unknown backend is not blamed"
        );
        // Sent during the uncertain interval, its reply read late: not blamed either.
        let late = WriteAck {
            sent_before_ms: 200,
            ..ack(5, 1300, 1, false)
        };
        assert!(!by_demoted_master(&late, &changes));
    }

    fn run(fault: SoakFault, injected: u32, recovered: u32) -> FaultRun {
        FaultRun {
            fault,
            target: String::new(),
            injected_ms: injected,
            recovered_ms: recovered,
            ended_ms: recovered,
            master_before: None,
            master_after: None,
            error: None,
        }
    }

    #[test]
    fn each_window_is_charged_with_its_own_losses_gaps_and_failovers() {
        let runs = [
            run(SoakFault::MasterKill9, 1000, 3000),
            run(SoakFault::ControllerKill9, 5000, 6000),
        ];
        // Writes every 100 ms, none from 1050 to 2050 (the failover), then a second failover
        // in the controller's window (spurious).
        let mut acks = Vec::new();
        let mut id = 0;
        for t in (0..8000).step_by(100).filter(|t| !(1050..2050).contains(t)) {
            id += 1;
            let backend = if t < 1050 {
                1
            } else if t < 5500 {
                2
            } else {
                3
            };
            acks.push(ack(id, t, backend, id % 2 == 0));
        }
        // A write acknowledged by backend 1 long after the switch: by a demoted master.
        acks.push(ack(1000, 7000, 1, false));
        acks.sort_by_key(|a| a.at_ms);
        let changes = [
            change(0, 0, 1, 1),
            change(1800, 2050, 2, 2),
            change(5400, 5600, 3, 3),
        ];
        // Lost: 10 (t=900, before the fault, confirmed) and 11 (t=1000, unconfirmed).
        let missing = [10, 11, 60];
        let published = [(1, 1500), (2, 5500)];
        let received = |n: u64| n == 2;
        let inputs = Inputs {
            runs: &runs,
            end_ms: 8000,
            acks: &acks,
            missing: &missing,
            changes: &changes,
            published: &published,
            received: &[&received],
            read_failures: &[1200, 1300, 7000],
            churn_failures: &[],
        };
        let (occ, before) = analyse(&inputs);
        assert_eq!(before, 0);
        assert_eq!(occ[0].gap_ms, Some(1100));
        assert_eq!((occ[0].lost_confirmed, occ[0].lost_unconfirmed), (0, 1));
        assert_eq!((occ[0].failovers, occ[0].spurious_failovers), (1, 0));
        assert_eq!(occ[0].demoted_acks, 0);
        assert_eq!(occ[0].pubsub_missed, vec![1]);
        assert_eq!(occ[0].read_errors, 2);
        assert_eq!(occ[1].demoted_acks, 1);
        assert_eq!((occ[1].failovers, occ[1].spurious_failovers), (1, 1));
        assert_eq!(occ[1].pubsub_missed, vec![0]);
        // Write 60 (t = 6900, an even id: WAIT-confirmed) was lost.
        assert_eq!(occ[1].lost_confirmed, 1);
    }

    #[test]
    fn a_leak_is_growth_and_noise_is_not() {
        let flat: Vec<(u32, u64)> = (0..30)
            .map(|i| (i * 10_000, 12_000 + (i % 3) as u64 * 500))
            .collect();
        let leak: Vec<(u32, u64)> = (0..30)
            .map(|i| (i * 10_000, 12_000 + i as u64 * 600))
            .collect();
        let fds: Vec<(u32, u64)> = (0..30).map(|i| (i * 10_000, 20)).collect();
        let p = |rss: &[(u32, u64)]| ProcessTrend {
            controller: 1,
            pid: 9,
            rss: trend(rss).unwrap(),
            fds: trend(&fds).unwrap(),
        };
        assert_eq!(p(&flat).growth(), None);
        let grown = p(&leak).growth().expect("a leak");
        assert!(grown.contains("RSS 12000 → 29400"), "{grown}");
        let t = trend(&leak).unwrap();
        assert!((t.per_hour - 600.0 * 360.0).abs() < 1.0, "{t:?}");
        // Too short to judge.
        assert_eq!(p(&leak[..3]).growth(), None);
    }
}
