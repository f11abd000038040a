//! Failover trials on the seed topology: both clients write through the VIP, then the master's
//! redis-server is killed or the node holding the VIP is lost, and each client's view is
//! measured (the write gap, acknowledged writes missing on the final master) along with what
//! the controllers did (one `+switch-master` each, one promotion, the master not moving again).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::SeedCluster;
use crate::cluster::LogMark;
use crate::process::wait_until;
use crate::trial::{LoopOptions, TrafficLoop, missing_keys};

/// What fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedFault {
    /// `kill -9` of the master's redis-server; its node, controller and data plane live on.
    KillMaster,
    /// The node holding the VIP dies whole ([`SeedCluster::fail_node`]): its link, its
    /// controller, its redis-server (the master too, if it was there).
    LoseHolder,
}

impl fmt::Display for SeedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeedFault::KillMaster => "kill -9 of the master",
            SeedFault::LoseHolder => "loss of the VIP holder's node",
        })
    }
}

#[derive(Clone, Debug)]
pub struct SeedTrialOptions {
    /// How long both clients write before the fault.
    pub warmup: Duration,
    /// Bound for the controllers to resolve the fault and for writes to resume.
    pub resume_timeout: Duration,
    /// After the resolution, how long the master and the holder must stay put with writes
    /// flowing (the window in which a spurious second failover would show).
    pub settle: Duration,
}

impl SeedTrialOptions {
    pub fn new(cluster: &SeedCluster) -> Self {
        let down_after = cluster.down_after();
        Self {
            warmup: Duration::from_millis(500),
            resume_timeout: Duration::from_secs(15) + 4 * down_after,
            settle: (3 * down_after).max(Duration::from_millis(1500)),
        }
    }
}

/// What one client saw.
#[derive(Clone, Debug)]
pub struct WriterOutcome {
    /// The namespace it wrote from.
    pub client: String,
    /// The longest time between two acknowledged writes around the fault.
    pub gap: Duration,
    pub acked: usize,
    /// Acknowledged writes missing on the final master.
    pub lost: Vec<String>,
    pub failures: u64,
}

/// What one trial measured.
#[derive(Clone, Debug)]
pub struct SeedTrialOutcome {
    pub fault: SeedFault,
    pub master_before: usize,
    pub master_after: usize,
    pub holder_before: usize,
    pub holder_after: usize,
    /// From the fault to the controllers naming a new master and, for a lost holder, another
    /// node holding the VIP (polled, so coarse).
    pub resolved_after: Duration,
    /// The same-subnet client first, then the routed one.
    pub writers: Vec<WriterOutcome>,
    /// Per controller that ran throughout: the `+switch-master` events it logged.
    pub switches: BTreeMap<String, usize>,
    /// `+promoted-slave` events over those controllers.
    pub promotions: usize,
    /// Every master the controllers named from the resolution to the end.
    pub masters_seen: Vec<usize>,
    /// Every VIP holder seen from the resolution to the end.
    pub holders_seen: Vec<usize>,
}

impl SeedTrialOutcome {
    /// Whether the master had to move (it was killed, or lived on the lost node).
    pub fn master_moved(&self) -> bool {
        self.master_after != self.master_before
    }

    /// Exactly one failover when the master had to move (one `+switch-master` per controller,
    /// one promotion, one master named afterwards), none otherwise; and one holder afterwards.
    pub fn resolved_once(&self) -> bool {
        let expected = usize::from(self.master_moved());
        self.switches.values().all(|n| *n == expected)
            && self.promotions == expected
            && self.masters_seen == [self.master_after]
            && self.holders_seen == [self.holder_after]
    }

    /// Acknowledged writes lost, over both clients.
    pub fn lost(&self) -> usize {
        self.writers.iter().map(|w| w.lost.len()).sum()
    }
}

impl fmt::Display for SeedTrialOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: master r{} -> r{}, VIP on r{} -> r{}, resolved after {:.0} ms",
            self.fault,
            self.master_before,
            self.master_after,
            self.holder_before,
            self.holder_after,
            ms(self.resolved_after)
        )?;
        for w in &self.writers {
            writeln!(
                f,
                "  {:<14} write gap {:>6.0} ms, {:>5} writes acknowledged, {} lost, {} failed",
                w.client,
                ms(w.gap),
                w.acked,
                w.lost.len(),
                w.failures
            )?;
        }
        write!(
            f,
            "  +switch-master per controller {:?}, {} promotion(s)",
            self.switches, self.promotions
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs one trial: waits until the seed is healthy, starts a writer in each client, applies
/// `fault`, waits until the controllers resolved it and both clients' writes resume, watches
/// for a second move, and checks every acknowledged write on the final master. An error only
/// when the trial could not be carried out or a bounded wait ran out; verdicts are in the
/// outcome. The failed part is left failed: restore it with [`SeedCluster::restore_node`] or
/// by restarting the redis-server.
pub fn run_seed_trial(
    cluster: &SeedCluster,
    fault: SeedFault,
    label: &str,
    options: &SeedTrialOptions,
) -> Result<SeedTrialOutcome> {
    let master_before = cluster.wait_healthy(Duration::from_secs(60))?;
    let holder_before = cluster.holder()?;
    let dies = match fault {
        SeedFault::KillMaster => None,
        SeedFault::LoseHolder => Some(holder_before),
    };
    // Controllers running now and throughout are the ones expected to log the switch.
    let watched: Vec<(usize, LogMark)> = cluster
        .controllers()
        .iter()
        .enumerate()
        .filter(|(i, c)| c.is_running() && dies != Some(i + 1))
        .map(|(i, c)| (i, c.mark()))
        .collect();

    let clients = [cluster.client(), cluster.routed_client()];
    let mut writers = Vec::new();
    for ns in clients {
        let prefix = format!("{label}:{}", ns.name());
        let writer =
            TrafficLoop::start(ns.path(), LoopOptions::writer(cluster.vip_write(), &prefix))?;
        writers.push((ns.name().to_owned(), prefix, writer));
    }
    let warm_from = Instant::now();
    for (client, _, writer) in &writers {
        writer
            .wait_acks_after(warm_from, 1, Duration::from_secs(10))
            .with_context(|| {
                format!("writes through the VIP from {client} fail before the fault")
            })?;
    }
    std::thread::sleep(options.warmup);

    match fault {
        SeedFault::KillMaster => cluster.kill_redis(master_before)?,
        SeedFault::LoseHolder => cluster.fail_node(holder_before)?,
    }
    let fault_at = Instant::now();
    let master_must_move = fault == SeedFault::KillMaster || holder_before == master_before;
    let (master_after, holder_after, resolved_at) = wait_until(
        "the controllers to resolve the fault",
        options.resume_timeout,
        Duration::from_millis(20),
        || {
            let master = cluster.master()?;
            let holder = cluster.holder()?;
            let done = (!master_must_move || master != master_before)
                && (dies.is_none() || holder != holder_before);
            Ok(done.then(|| (master, holder, Instant::now())))
        },
    )?;
    for (client, _, writer) in &writers {
        writer
            .wait_acks_after(resolved_at, 20, options.resume_timeout)
            .with_context(|| format!("writes from {client} did not resume"))?;
    }
    if master_must_move {
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
    }

    let mut masters_seen = vec![master_after];
    let mut holders_seen = vec![holder_after];
    let settle_until = Instant::now() + options.settle;
    while Instant::now() < settle_until {
        for (seen, now) in [
            (&mut masters_seen, cluster.master()?),
            (&mut holders_seen, cluster.holder()?),
        ] {
            if !seen.contains(&now) {
                seen.push(now);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let final_master = cluster.master()?;
    let mut outcomes = Vec::new();
    for (client, prefix, writer) in writers {
        let record = writer.finish()?;
        let keys = record.set_keys(&prefix);
        let (before, after) = record
            .longest_gap_between(fault_at, resolved_at)
            .with_context(|| format!("no write from {client} was acknowledged around the fault"))?;
        outcomes.push(WriterOutcome {
            lost: missing_keys(cluster.node(final_master).redis(), keys.clone())?,
            client,
            gap: after - before,
            acked: keys.len(),
            failures: record.failure_count,
        });
    }

    let mut switches = BTreeMap::new();
    let mut promotions = 0;
    for (i, mark) in &watched {
        let c = &cluster.controllers()[*i];
        switches.insert(c.id().to_owned(), c.count_events("+switch-master", *mark));
        promotions += c.count_events("+promoted-slave", *mark);
    }
    Ok(SeedTrialOutcome {
        fault,
        master_before,
        master_after,
        holder_before,
        holder_after,
        resolved_after: resolved_at - fault_at,
        writers: outcomes,
        switches,
        promotions,
        masters_seen,
        holders_seen,
    })
}
