//! The soak's faults, their repeating schedule, and how each is injected and undone on the
//! default topology (one LB node, three controllers: tests/src/cluster).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use redis_ha_tests::cluster::{Replication, node_ip, replication};
use redis_ha_tests::testbed::SERVICE_NAME;
use redis_ha_tests::trial::ms_since;
use redis_ha_tests::{Cluster, Fault, wait_until};

/// One kind of fault of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SoakFault {
    /// `kill -9` of the master, then restarted with the arguments it first had (backend 1
    /// claiming to be a master with an empty dataset, the others replicating backend 1); the
    /// controllers make it a replica of the current master.
    MasterKill9,
    /// `SIGSTOP` of the master (a hung host), then `SIGCONT`.
    MasterSigStop,
    /// The master's veth down on the LB side, then up.
    MasterLinkCut,
    /// `kill -9` of one controller (c2 or c3 in turn), then restarted. c1 is never killed, so
    /// that one controller's RSS and open files are followed over the whole run.
    ControllerKill9,
    /// One controller (c2 or c3; c1 shares the data plane's namespace) cut from its peers by
    /// blackhole routes, then healed.
    ControllerPartition,
    /// A planned switchover: `SENTINEL FAILOVER` on a controller's API.
    Switchover,
}

impl SoakFault {
    pub fn name(self) -> &'static str {
        match self {
            SoakFault::MasterKill9 => "master kill -9",
            SoakFault::MasterSigStop => "master SIGSTOP",
            SoakFault::MasterLinkCut => "master link cut",
            SoakFault::ControllerKill9 => "controller kill -9",
            SoakFault::ControllerPartition => "controller partition",
            SoakFault::Switchover => "switchover",
        }
    }

    /// Failovers the fault itself should cause; any other is spurious.
    pub fn expected_failovers(self) -> usize {
        match self {
            SoakFault::MasterKill9
            | SoakFault::MasterSigStop
            | SoakFault::MasterLinkCut
            | SoakFault::Switchover => 1,
            SoakFault::ControllerKill9 | SoakFault::ControllerPartition => 0,
        }
    }

    fn master_fault(self) -> Option<Fault> {
        match self {
            SoakFault::MasterKill9 => Some(Fault::Kill9),
            SoakFault::MasterSigStop => Some(Fault::SigStop),
            SoakFault::MasterLinkCut => Some(Fault::LinkCut),
            _ => None,
        }
    }
}

/// The order faults repeat in: master faults alternate with controller faults, so a
/// controller fault starts from a cluster that has just failed over, and the reverse.
pub const SCHEDULE: [SoakFault; 6] = [
    SoakFault::MasterKill9,
    SoakFault::ControllerKill9,
    SoakFault::MasterSigStop,
    SoakFault::ControllerPartition,
    SoakFault::MasterLinkCut,
    SoakFault::Switchover,
];

/// The `n`-th (0-based) fault of the schedule, and how many times that kind came before it.
pub fn scheduled(n: usize) -> (SoakFault, usize) {
    (SCHEDULE[n % SCHEDULE.len()], n / SCHEDULE.len())
}

/// One occurrence of a fault, times in ms since the soak's start.
#[derive(Clone, Debug)]
pub struct FaultRun {
    pub fault: SoakFault,
    /// What it hit: the master's address or the controller's id.
    pub target: String,
    pub injected_ms: u32,
    /// The fault undone (restarted, resumed, link up, healed) or, for a switchover, done.
    pub recovered_ms: u32,
    /// The cluster healthy again after the settle time: the next fault may start.
    pub ended_ms: u32,
    pub master_before: Option<SocketAddrV4>,
    pub master_after: Option<SocketAddrV4>,
    /// Why the occurrence could not be carried out (then the report shows it and the soak fails).
    pub error: Option<String>,
}

/// How long things may take; derived from the cluster's timing.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Between faults, with the cluster healthy and the workload running.
    pub settle: Duration,
    /// How long a controller stays down or partitioned: long enough for its peers to
    /// mark it down and for it to mark them down.
    pub hold: Duration,
    pub switch_timeout: Duration,
    pub restore_timeout: Duration,
    pub healthy_timeout: Duration,
}

impl Timing {
    pub fn for_cluster(cluster: &Cluster) -> Self {
        let down_after = cluster.down_after();
        Self {
            settle: Duration::from_secs(5),
            hold: 3 * down_after + Duration::from_secs(2),
            switch_timeout: Duration::from_secs(15) + 4 * down_after,
            restore_timeout: Duration::from_secs(30)
                + 3 * Duration::from_millis(cluster.options().failover_timeout_ms),
            healthy_timeout: Duration::from_secs(90),
        }
    }
}

/// Injects fault number `n` of the schedule, undoes it, and waits until the cluster is
/// healthy again after the settle time. Never fails: what went wrong is in the run's `error`.
pub fn inject(cluster: &Cluster, n: usize, origin: Instant, timing: Timing) -> FaultRun {
    let (fault, occurrence) = scheduled(n);
    let mut run = FaultRun {
        fault,
        target: String::new(),
        injected_ms: ms_since(origin, Instant::now()),
        recovered_ms: 0,
        ended_ms: 0,
        master_before: None,
        master_after: None,
        error: None,
    };
    let result = (|| -> Result<()> {
        let master = cluster.wait_healthy(timing.healthy_timeout)?;
        run.master_before = Some(master);
        run.injected_ms = ms_since(origin, Instant::now());
        match fault {
            SoakFault::ControllerKill9 => {
                let c = cluster.controller(occurrence % 2 + 2);
                run.target = c.id().to_owned();
                c.kill()?;
                std::thread::sleep(timing.hold);
                c.start()?;
            }
            SoakFault::ControllerPartition => {
                let n = occurrence % 2 + 2;
                run.target = cluster.controller(n).id().to_owned();
                partition(cluster, n, timing.hold)?;
            }
            SoakFault::Switchover => {
                run.target = master.to_string();
                cluster.sentinel_cli(1, &["SENTINEL", "FAILOVER", SERVICE_NAME])?;
                wait_moved(cluster, master, timing.switch_timeout)?;
            }
            _ => {
                run.target = master.to_string();
                let f = fault.master_fault().context("not a master fault")?;
                master_fault(cluster, f, master, timing)?;
            }
        }
        run.recovered_ms = ms_since(origin, Instant::now());
        std::thread::sleep(timing.settle);
        run.master_after = Some(cluster.wait_healthy(timing.healthy_timeout)?);
        Ok(())
    })();
    let now = ms_since(origin, Instant::now());
    if run.recovered_ms == 0 {
        run.recovered_ms = now;
    }
    run.ended_ms = now;
    if let Err(e) = result {
        run.error = Some(format!("{e:#}"));
    }
    run
}

/// Cuts controller `n` from every other controller (blackhole routes in its namespace) for
/// `hold`; the routes are removed even when adding one failed.
fn partition(cluster: &Cluster, n: usize, hold: Duration) -> Result<()> {
    let peers: Vec<_> = (1..=3u8)
        .filter(|p| usize::from(*p) != n)
        .map(node_ip)
        .collect();
    let mut blocked = Vec::new();
    let mut result = Ok(());
    for ip in &peers {
        match cluster.block(n, *ip) {
            Ok(()) => blocked.push(*ip),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        std::thread::sleep(hold);
    }
    for ip in blocked {
        let undone = cluster.unblock(n, ip);
        if result.is_ok() {
            result = undone;
        }
    }
    result
}

/// Waits until the write port points at another backend than `old`; returns it.
fn wait_moved(cluster: &Cluster, old: SocketAddrV4, timeout: Duration) -> Result<SocketAddrV4> {
    wait_until(
        &format!("the write port to leave {old}"),
        timeout,
        Duration::from_millis(50),
        || Ok(cluster.maps()?.master().filter(|m| *m != old)),
    )
}

/// Applies `fault` to the master at `old`, waits for the switch, keeps the fault for a while
/// (a spurious second failover would show then), undoes it, and waits until the old master
/// replicates from the new one. The fault is undone on every path.
fn master_fault(cluster: &Cluster, fault: Fault, old: SocketAddrV4, timing: Timing) -> Result<()> {
    let backend = cluster
        .testbed()
        .backend_at(old)
        .with_context(|| format!("the master {old} is not a backend"))?;
    fault.apply(cluster, backend)?;
    let moved = wait_moved(cluster, old, timing.switch_timeout);
    if moved.is_ok() {
        std::thread::sleep(timing.settle);
    }
    let undone = fault.undo(cluster, backend);
    let new = moved?;
    undone?;
    wait_until(
        &format!("{old} to replicate from {new}"),
        timing.restore_timeout,
        Duration::from_millis(100),
        || {
            Ok(matches!(
                replication(backend),
                Ok(Replication::Replica { master, link_up: true }) if master == *new.ip()
            )
            .then_some(()))
        },
    )
    .map(drop)
}

/// A fault kind the schedule cannot run on a topology, for the report.
pub fn not_on_default_topology() -> &'static str {
    "LB node lost: not in this schedule — the default topology has one LB node (its loss is a \
     total outage by design); the two-LB topology (tests/src/ha) is not wired into the soak yet"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_repeats_and_rotates_targets() {
        assert_eq!(scheduled(0), (SoakFault::MasterKill9, 0));
        assert_eq!(scheduled(6), (SoakFault::MasterKill9, 1));
        assert_eq!(scheduled(13), (SoakFault::ControllerKill9, 2));
        // Master faults and controller faults alternate, so no two master faults follow each
        // other (each starts from a cluster with a fresh replica set).
        for w in SCHEDULE.windows(2) {
            assert!(
                !(w[0].expected_failovers() == 1
                    && w[1].expected_failovers() == 1
                    && w[1] != SoakFault::Switchover),
                "{w:?}"
            );
        }
    }

    #[test]
    fn only_master_faults_and_switchovers_expect_a_failover() {
        let failing: Vec<_> = SCHEDULE
            .iter()
            .filter(|f| f.expected_failovers() == 1)
            .collect();
        assert_eq!(failing.len(), 4);
        assert_eq!(SoakFault::ControllerPartition.expected_failovers(), 0);
    }
}
