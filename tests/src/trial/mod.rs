//! Traffic through the VIP and the failover trial built on it: write unique keys as fast as is
//! reasonable, fail the master, and measure what a client saw (the write-unavailability gap),
//! what it lost (acknowledged writes missing on the final master), and whether the old master
//! took a write through the VIP after the switch.
//!
//! Redis is spoken directly (a few lines of RESP over a `TcpStream`) so every socket has the
//! short, explicit timeouts a measuring client needs, and sockets are created on a thread that
//! entered the client namespace.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::cluster::{Cluster, LogMark, MapsView, Replication, replication};
use crate::netns::in_netns;
use crate::process::wait_until;
use crate::testbed::Backend;

mod pubsub;
mod resp;
mod traffic;
mod verified;
mod worker;

pub use pubsub::{PubSubRecord, Subscriber};
pub use resp::{Reply, Resp, missing_keys};
pub use traffic::{LoopOptions, LoopRecord, Request, TrafficLoop};
pub use verified::{VerifiedWriter, WriteAck, WriterOptions, WriterRecord, ms_since};
use worker::Worker;

/// How the master fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`; restored by restarting it with its original arguments (so backend 1 comes
    /// back claiming to be the master, with an empty dataset).
    Kill9,
    /// `SIGSTOP` (a hung host); restored by `SIGCONT`.
    SigStop,
    /// Its veth taken down on the LB side; restored by bringing it up.
    LinkCut,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill9 => "kill -9",
            Fault::SigStop => "SIGSTOP",
            Fault::LinkCut => "link cut",
        })
    }
}

impl Fault {
    pub fn apply(self, cluster: &Cluster, b: &Backend) -> Result<()> {
        match self {
            Fault::Kill9 => b.kill(),
            Fault::SigStop => b.stop(),
            Fault::LinkCut => cluster.cut_link(b.index()),
        }
    }

    pub fn undo(self, cluster: &Cluster, b: &Backend) -> Result<()> {
        match self {
            Fault::Kill9 => b.start(),
            Fault::SigStop => b.resume(),
            Fault::LinkCut => cluster.restore_link(b.index()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrialOptions {
    pub fault: Fault,
    /// Makes the keys unique (`<label>:<n>`); unique per trial.
    pub label: String,
    /// How long to write before the fault.
    pub warmup: Duration,
    /// Bound for the switch to happen and writes to resume.
    pub resume_timeout: Duration,
    /// After the switch, how long the write port must stay on the new master with writes
    /// flowing (the window in which a spurious second failover would show).
    pub settle: Duration,
    /// Bring the old master back (restart / SIGCONT / link up) and wait until it replicates
    /// from the new master, with the writer still running.
    pub restore: bool,
    /// Bound for the old master to become a synced replica of the new one.
    pub restore_timeout: Duration,
    /// Bound for the cluster to be healthy before the fault.
    pub healthy_timeout: Duration,
}

impl TrialOptions {
    pub fn new(fault: Fault, label: &str, cluster: &Cluster) -> Self {
        let down_after = cluster.down_after();
        Self {
            fault,
            label: label.to_owned(),
            warmup: Duration::from_millis(500),
            resume_timeout: Duration::from_secs(15) + 4 * down_after,
            settle: (3 * down_after).max(Duration::from_millis(1500)),
            restore: true,
            restore_timeout: Duration::from_secs(30)
                + 3 * Duration::from_millis(cluster.options().failover_timeout_ms),
            healthy_timeout: Duration::from_secs(60),
        }
    }
}

/// What one trial measured.
#[derive(Clone, Debug)]
pub struct TrialOutcome {
    pub fault: Fault,
    pub label: String,
    pub old_master: SocketAddrV4,
    pub new_master: SocketAddrV4,
    pub epoch_before: u64,
    pub epoch_after: u64,
    /// Last acknowledged write before the fault → first acknowledged write after it.
    pub gap: Duration,
    /// Fault → the data plane's write port observed on the new master (polled, so coarse).
    pub switch_seen_after: Duration,
    pub acked: usize,
    /// Acknowledged writes missing on the final master.
    pub lost: Vec<String>,
    pub write_failures: u64,
    /// How much the old master's VIP counters grew after the switch was observed (packets and
    /// new connections): anything but 0 means a write sent through the VIP reached it.
    pub old_master_pkts_after_switch: u64,
    pub old_master_flows_after_switch: u64,
    /// Distinct write-port masters seen after the switch (more than one: a second failover).
    pub masters_after_switch: Vec<SocketAddrV4>,
    /// Per controller id: `+switch-master` events it logged during the trial.
    pub switches: BTreeMap<String, usize>,
    /// `+promoted-slave` events over all controllers during the trial.
    pub promotions: usize,
    /// `+convert-to-slave` events over all controllers during the trial: the returning old
    /// master claimed to be a master and was demoted.
    pub conversions: usize,
    /// `+switch-master` payloads, for messages.
    pub switch_lines: Vec<String>,
    /// Whether the old master came back and became a synced replica of the new one.
    pub restored: bool,
}

impl TrialOutcome {
    /// The failover happened exactly once: every controller that ran throughout logged one
    /// `+switch-master`, one promotion in total, the write port moved once.
    pub fn switched_once(&self) -> bool {
        self.switches.values().all(|n| *n == 1)
            && self.promotions == 1
            && self.masters_after_switch == [self.new_master]
    }

    pub fn header() -> String {
        format!(
            "{:<5} {:<9} {:<17} {:<17} {:>8} {:>9} {:>6} {:>5} {:>6} {:>7} {:>8}",
            "trial",
            "fault",
            "old master",
            "new master",
            "gap ms",
            "switch ms",
            "acked",
            "lost",
            "errors",
            "epoch",
            "old pkts"
        )
    }

    pub fn row(&self, n: usize) -> String {
        format!(
            "{:<5} {:<9} {:<17} {:<17} {:>8.1} {:>9.1} {:>6} {:>5} {:>6} {:>7} {:>8}",
            n,
            self.fault.to_string(),
            self.old_master.to_string(),
            self.new_master.to_string(),
            ms(self.gap),
            ms(self.switch_seen_after),
            self.acked,
            self.lost.len(),
            self.write_failures,
            format!("{}→{}", self.epoch_before, self.epoch_after),
            self.old_master_pkts_after_switch,
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// min / median / max of `values`.
pub fn summary(values: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut v = values.to_vec();
    v.sort();
    let median = match v.len() {
        0 => return None,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    };
    Some((v[0], median, v[v.len() - 1]))
}

/// The table of every outcome and the gap's min / median / max, as a printable string.
pub fn report(title: &str, outcomes: &[TrialOutcome]) -> String {
    let mut out = format!("\n== {title} ==\n{}\n", TrialOutcome::header());
    for (i, o) in outcomes.iter().enumerate() {
        out.push_str(&o.row(i + 1));
        out.push('\n');
    }
    let gaps: Vec<Duration> = outcomes.iter().map(|o| o.gap).collect();
    if let Some((min, median, max)) = summary(&gaps) {
        out.push_str(&format!(
            "gap over {} trials: min {:.1} ms, median {:.1} ms, max {:.1} ms\n",
            gaps.len(),
            ms(min),
            ms(median),
            ms(max)
        ));
    }
    let lost: Vec<usize> = outcomes.iter().map(|o| o.lost.len()).collect();
    out.push_str(&format!("lost acknowledged writes per trial: {lost:?}\n"));
    out
}

/// Runs one failover trial on `cluster`: waits until it is healthy, writes through the write
/// port, applies `options.fault` to the current master, and measures (see [`TrialOutcome`]).
/// Returns an error only when the trial could not be carried out or bounded waits ran out
/// (no switch, writes never resumed); correctness verdicts are in the outcome.
pub fn run_trial(cluster: &Cluster, options: &TrialOptions) -> Result<TrialOutcome> {
    let tb = cluster.testbed();
    let old_addr = cluster.wait_healthy(options.healthy_timeout)?;
    let old = tb
        .backend_at(old_addr)
        .context("the master is not a backend")?;
    let before = cluster.maps()?;
    // Controllers running now and throughout are the ones expected to log the switch.
    let watched: Vec<(usize, LogMark)> = cluster
        .controllers()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_running())
        .map(|(i, c)| (i, c.mark()))
        .collect();

    let writer = TrafficLoop::start(
        tb.client().path(),
        LoopOptions::writer(tb.vip_write(), &options.label),
    )?;
    let warm_from = Instant::now();
    writer
        .wait_acks_after(warm_from, 1, Duration::from_secs(10))
        .context("writes through the VIP fail before the fault")?;
    std::thread::sleep(options.warmup);

    options.fault.apply(cluster, old)?;
    // After the call: a killed process is reaped, a stopped one cannot run, a cut link carries
    // nothing, so no acknowledgement can come from the old master after this instant.
    let fault_at = Instant::now();

    let (switch_maps, switch_seen_at) = wait_until(
        "the write port to leave the failed master",
        options.resume_timeout,
        Duration::from_millis(50),
        || {
            let maps = cluster.maps()?;
            Ok((maps.master() != Some(old_addr)).then(|| (maps, Instant::now())))
        },
    )?;
    let new_addr = switch_maps.master().context("no master after the switch")?;
    let old_row = *switch_maps
        .row(old_addr)
        .context("the old master has no slot")?;
    writer
        .wait_acks_after(switch_seen_at, 20, options.resume_timeout)
        .context("writes did not resume after the switch")?;

    // Every controller that ran throughout must come to the same conclusion; meanwhile (and
    // until the end) the write port must not move again.
    let mut masters_after_switch = vec![new_addr];
    let mut watch_master = |maps: &MapsView| {
        if let Some(m) = maps.master()
            && !masters_after_switch.contains(&m)
        {
            masters_after_switch.push(m);
        }
    };
    wait_until(
        "every controller to log +switch-master",
        options.resume_timeout,
        Duration::from_millis(100),
        || {
            Ok(watched
                .iter()
                .all(|(i, mark)| {
                    cluster.controllers()[*i].count_events("+switch-master", *mark) > 0
                })
                .then_some(()))
        },
    )?;
    let settle_until = Instant::now() + options.settle;
    while Instant::now() < settle_until {
        watch_master(&cluster.maps()?);
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut restored = false;
    if options.restore {
        options.fault.undo(cluster, old)?;
        wait_until(
            &format!("{old_addr} to replicate from {new_addr}"),
            options.restore_timeout,
            Duration::from_millis(100),
            || {
                watch_master(&cluster.maps()?);
                Ok(matches!(
                    replication(old),
                    Ok(Replication::Replica { master, link_up: true }) if master == *new_addr.ip()
                )
                .then_some(()))
            },
        )?;
        restored = true;
        // A little more traffic with the old master back as a replica.
        writer.wait_acks_after(Instant::now(), 50, Duration::from_secs(10))?;
    }

    let after = cluster.maps()?;
    watch_master(&after);
    let record = writer.finish()?;
    let acked_keys = record.set_keys(&options.label);
    let final_master = tb
        .backend_at(after.master().context("no master at the end")?)
        .context("the final master is not a backend")?;
    let lost = missing_keys(final_master, acked_keys.clone())?;

    let (last_before, first_after) = record
        .longest_gap_between(fault_at, switch_seen_at)
        .context("no write was acknowledged around the fault")?;
    let old_after = after
        .row(old_addr)
        .context("the old master lost its slot")?;

    let mut switches = BTreeMap::new();
    let mut promotions = 0;
    let mut conversions = 0;
    let mut switch_lines = Vec::new();
    for (i, mark) in &watched {
        let c = &cluster.controllers()[*i];
        let events = c.events("+switch-master", *mark);
        switch_lines.extend(events.iter().map(|e| format!("{}: {}", c.id(), e.payload)));
        switches.insert(c.id().to_owned(), events.len());
        promotions += c.count_events("+promoted-slave", *mark);
        conversions += c.count_events("+convert-to-slave", *mark);
    }
    ensure!(
        after.epoch >= switch_maps.epoch,
        "the data plane's epoch went back"
    );
    Ok(TrialOutcome {
        fault: options.fault,
        label: options.label.clone(),
        old_master: old_addr,
        new_master: new_addr,
        epoch_before: before.epoch,
        epoch_after: after.epoch,
        gap: first_after - last_before,
        switch_seen_after: switch_seen_at - fault_at,
        acked: acked_keys.len(),
        lost,
        write_failures: record.failure_count,
        old_master_pkts_after_switch: old_after.pkts_in.saturating_sub(old_row.pkts_in),
        old_master_flows_after_switch: old_after.new_flows.saturating_sub(old_row.new_flows),
        masters_after_switch,
        switches,
        promotions,
        conversions,
        switch_lines,
        restored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_write_gap_is_not_ended_by_a_reply_in_flight_at_the_fault() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Every 3 ms until 30; the fault at 30; one reply still lands at 31; then nothing
        // until the new master answers at 2000, and every 3 ms after; a later hiccup at 5000.
        let mut times: Vec<u64> = (0..=30).step_by(3).collect();
        times.push(31);
        times.extend((2000..2030).step_by(3));
        times.extend([4000, 5000]);
        let record = LoopRecord {
            acks: times
                .iter()
                .enumerate()
                .map(|(i, &ms)| (i as u64, at(ms)))
                .collect(),
            failures: Vec::new(),
            failure_count: 0,
            requests: times.len() as u64,
            connects: 1,
        };
        assert_eq!(
            record.longest_gap_between(at(30), at(2010)),
            Some((at(31), at(2000)))
        );
        assert_eq!(record.longest_gap_between(at(5000), at(6000)), None);
    }
}
