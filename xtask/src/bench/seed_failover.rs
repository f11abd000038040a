//! Failover trials on the seed topology, the same trial against redis-ha (three controllers
//! with the data plane and `[ha]`) and against the seed's stack ([`SeedStack`]), both at
//! down-after 1000 ms, on freshly built copies of the same namespaces and addresses.
//!
//! Three faults, each with the master and the VIP placed first (by a planned switchover):
//! - `kill -9` of the master's redis-server, the VIP on another node;
//! - loss of the VIP holder's node (link down, everything on it SIGKILLed), the master elsewhere;
//! - loss of the node holding both.
//!
//! Two writers through the VIP's write port from the same-subnet client, one with a persistent
//! connection and one with a new connection per write ([`super::seed_writer`]). Per writer:
//! the write gap (as tests/src/trial.rs defines it: the longest time between two consecutive
//! acknowledged writes that ends after the fault and starts no later than the resolution was
//! seen), acknowledged writes lost on the final master split by whether `WAIT 1` confirmed
//! them replicated, and writes acknowledged after the fault by a node that is not the final
//! master (a demoted master). The failed part is brought back while the writers still run
//! (the seed's old master returns as a master, as its rewritten config makes it), so what a
//! returning node does to writes is measured too; the trial ends once it replicates the
//! final master.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::cluster::{Replication, replication};
use redis_ha_tests::seed::NODES;
use redis_ha_tests::trial::missing_keys;
use redis_ha_tests::{SeedCluster, SeedOptions, XdpMode, unique_tag, wait_until};

use super::paths::median;
use super::seed_stack::{SEED_DOWN_AFTER_MS, SeedStack, file_len};
use super::seed_writer::{Writer, WriterRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedFault {
    KillMaster,
    LoseHolder,
    LoseBoth,
}

pub const FAULTS: [SeedFault; 3] = [
    SeedFault::KillMaster,
    SeedFault::LoseHolder,
    SeedFault::LoseBoth,
];

impl SeedFault {
    pub fn id(self) -> &'static str {
        match self {
            SeedFault::KillMaster => "kill-master",
            SeedFault::LoseHolder => "lose-holder",
            SeedFault::LoseBoth => "lose-both",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            SeedFault::KillMaster => "`kill -9` of the master (VIP on another node)",
            SeedFault::LoseHolder => "loss of the VIP holder's node (master elsewhere)",
            SeedFault::LoseBoth => "loss of the node holding the VIP and the master",
        }
    }

    /// The target for redis-ha's median write gap, in ms.
    pub fn target_ms(self) -> f64 {
        match self {
            SeedFault::KillMaster => 1200.0,
            SeedFault::LoseHolder => 1000.0,
            SeedFault::LoseBoth => 1500.0,
        }
    }

    fn master_moves(self) -> bool {
        self != SeedFault::LoseHolder
    }
}

/// What the trial needs from a stack.
trait HaStack {
    fn cluster(&self) -> &SeedCluster;
    /// Waits until whole; (master, VIP holder).
    fn wait_healthy(&self) -> Result<(usize, usize)>;
    fn master(&self) -> Result<usize>;
    fn switch_master(&self, to: usize) -> Result<()>;
    fn fail_node(&self, n: usize) -> Result<()>;
    fn restore_node(&self, n: usize, was_master: bool) -> Result<()>;
    /// Restarts node `n`'s killed redis-server (it was the master).
    fn restart_killed_master(&self, n: usize) -> Result<()>;
    /// The logs of the failover managers of the nodes that are up, where `+switch-master`
    /// shows.
    fn logs(&self) -> Vec<(String, PathBuf)>;
}

struct RedisHa(SeedCluster);

impl HaStack for RedisHa {
    fn cluster(&self) -> &SeedCluster {
        &self.0
    }
    fn wait_healthy(&self) -> Result<(usize, usize)> {
        let master = self.0.wait_healthy(Duration::from_secs(60))?;
        Ok((master, self.0.holder()?))
    }
    fn master(&self) -> Result<usize> {
        self.0.master()
    }
    fn switch_master(&self, to: usize) -> Result<()> {
        self.0.switch_master(to)
    }
    fn fail_node(&self, n: usize) -> Result<()> {
        self.0.fail_node(n)
    }
    fn restore_node(&self, n: usize, _was_master: bool) -> Result<()> {
        self.0.restore_node(n)
    }
    fn restart_killed_master(&self, n: usize) -> Result<()> {
        self.0.node(n).redis().start()
    }
    fn logs(&self) -> Vec<(String, PathBuf)> {
        self.0
            .up_nodes()
            .into_iter()
            .map(|n| {
                let c = self.0.controller(n);
                (format!("controller {}", c.id()), c.log_path().to_owned())
            })
            .collect()
    }
}

impl HaStack for SeedStack {
    fn cluster(&self) -> &SeedCluster {
        &self.cluster
    }
    fn wait_healthy(&self) -> Result<(usize, usize)> {
        SeedStack::wait_healthy(self, Duration::from_secs(90))
    }
    fn master(&self) -> Result<usize> {
        SeedStack::master(self)
    }
    fn switch_master(&self, to: usize) -> Result<()> {
        SeedStack::switch_master(self, to)
    }
    fn fail_node(&self, n: usize) -> Result<()> {
        SeedStack::fail_node(self, n)
    }
    fn restore_node(&self, n: usize, was_master: bool) -> Result<()> {
        SeedStack::restore_node(self, n, was_master)
    }
    fn restart_killed_master(&self, n: usize) -> Result<()> {
        self.cluster.node(n).redis().start()?;
        self.after_restart(n, true)
    }
    fn logs(&self) -> Vec<(String, PathBuf)> {
        SeedStack::logs(self)
    }
}

/// What one writer saw in one trial.
#[derive(Clone, Debug)]
pub struct WriterOutcome {
    pub mode: &'static str,
    pub gap_ms: f64,
    pub acked: usize,
    /// Acknowledged writes `WAIT 1` confirmed replicated, and those it did not.
    pub confirmed: usize,
    pub unconfirmed: usize,
    /// Acknowledged writes missing on the final master, by confirmation.
    pub lost_confirmed: usize,
    pub lost_unconfirmed: usize,
    /// Writes acknowledged after the fault by a node other than the final master.
    pub demoted_acks: usize,
    pub failures: u64,
    pub connects: u64,
}

#[derive(Clone, Debug)]
pub struct SeedOutcome {
    pub stack: String,
    pub fault: SeedFault,
    pub master_before: usize,
    pub holder_before: usize,
    pub master_after: usize,
    pub holder_after: usize,
    /// Fault → the stack naming the new master / another holder (polled every 20 ms).
    pub resolved_ms: f64,
    pub writers: Vec<WriterOutcome>,
    /// `+switch-master` lines per manager that ran throughout, until the end of the settle
    /// period (before the failed part returns).
    pub switches: BTreeMap<String, usize>,
    /// Masters named from the resolution to the end of the settle period.
    pub masters_seen: Vec<usize>,
}

impl SeedOutcome {
    /// The trial's write gap: the worse of the two writers'.
    pub fn gap_ms(&self) -> f64 {
        self.writers.iter().map(|w| w.gap_ms).fold(0.0, f64::max)
    }

    /// Exactly one master change for a master fault, none otherwise.
    pub fn one_master_change(&self) -> bool {
        let expected = usize::from(self.fault.master_moves());
        !self.switches.is_empty()
            && self.switches.values().all(|&n| n == expected)
            && self.masters_seen == [self.master_after]
    }

    pub fn sum(&self, f: fn(&WriterOutcome) -> usize) -> usize {
        self.writers.iter().map(f).sum()
    }
}

/// One stack's trials, or why some could not run.
pub struct SeedSeries {
    pub stack: String,
    pub outcomes: Vec<SeedOutcome>,
    pub errors: Vec<String>,
}

impl SeedSeries {
    /// Median write gap for `fault`, with min and max, and the number of trials.
    pub fn gap(&self, fault: SeedFault) -> Option<(f64, f64, f64, usize)> {
        let v: Vec<f64> = self
            .outcomes
            .iter()
            .filter(|o| o.fault == fault)
            .map(SeedOutcome::gap_ms)
            .collect();
        let m = median(&v)?;
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((m, min, max, v.len()))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Counts `+switch-master` lines written to `path` after byte `from`.
fn switches_since(path: &std::path::Path, from: u64) -> usize {
    let text = std::fs::read(path).unwrap_or_default();
    let start = (from as usize).min(text.len());
    String::from_utf8_lossy(&text[start..])
        .lines()
        .filter(|l| l.contains("+switch-master"))
        .count()
}

/// Puts the master where `fault` needs it relative to the VIP; returns (master, holder).
fn place(stack: &dyn HaStack, fault: SeedFault) -> Result<(usize, usize)> {
    let (master, holder) = stack.wait_healthy()?;
    let to = match fault {
        SeedFault::KillMaster | SeedFault::LoseHolder if master == holder => {
            (1..=NODES).find(|&n| n != holder).expect("three nodes")
        }
        SeedFault::LoseBoth if master != holder => holder,
        _ => return Ok((master, holder)),
    };
    stack.switch_master(to)?;
    let (master, holder) = stack.wait_healthy()?;
    let placed = match fault {
        SeedFault::LoseBoth => master == holder,
        _ => master != holder,
    };
    if !placed {
        bail!(
            "could not place the master for {}: master r{master}, VIP on r{holder}",
            fault.id()
        );
    }
    Ok((master, holder))
}

fn run_trial(
    stack: &dyn HaStack,
    name: &str,
    fault: SeedFault,
    label: &str,
) -> Result<SeedOutcome> {
    let cluster = stack.cluster();
    let (master_before, holder_before) = place(stack, fault)?;
    let dies = (fault != SeedFault::KillMaster).then_some(holder_before);
    let marks: Vec<(String, PathBuf, u64)> = stack
        .logs()
        .into_iter()
        .filter(|(who, _)| dies.is_none_or(|d| !who.ends_with(&format!("r{d}"))))
        .map(|(who, path)| {
            let at = file_len(&path);
            (who, path, at)
        })
        .collect();

    let client = cluster.client().path();
    let writers = [false, true]
        .into_iter()
        .map(|per_request| {
            let prefix = format!("{label}:{}", if per_request { "pr" } else { "pc" });
            Writer::start(client.clone(), cluster.vip_write(), &prefix, per_request)
        })
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    for w in &writers {
        w.wait_acks_after(t0, 1, Duration::from_secs(10))
            .context("writes fail before the fault")?;
    }
    std::thread::sleep(Duration::from_millis(500));

    match fault {
        SeedFault::KillMaster => cluster.kill_redis(master_before)?,
        SeedFault::LoseHolder | SeedFault::LoseBoth => stack.fail_node(holder_before)?,
    }
    let fault_at = Instant::now();
    let timeout = Duration::from_secs(30);
    let (master_after, holder_after, resolved_at) = wait_until(
        "the stack to resolve the fault",
        timeout,
        Duration::from_millis(20),
        || {
            let (Ok(master), Ok(holder)) = (stack.master(), cluster.holder()) else {
                return Ok(None);
            };
            let done = (!fault.master_moves() || master != master_before)
                && (dies.is_none() || holder != holder_before);
            Ok(done.then(|| (master, holder, Instant::now())))
        },
    )?;
    for w in &writers {
        w.wait_acks_after(resolved_at, 20, timeout)
            .with_context(|| format!("writes ({}) did not resume", w.mode()))?;
    }
    // The window in which a second, spurious move would show.
    let mut masters_seen = vec![master_after];
    let settle_until = Instant::now() + Duration::from_millis(3 * SEED_DOWN_AFTER_MS);
    while Instant::now() < settle_until {
        if let Ok(m) = stack.master()
            && !masters_seen.contains(&m)
        {
            masters_seen.push(m);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let switches: BTreeMap<String, usize> = marks
        .iter()
        .map(|(who, path, at)| (who.clone(), switches_since(path, *at)))
        .collect();

    // The failed part returns while the writers go on.
    let returning = match fault {
        SeedFault::KillMaster => {
            stack.restart_killed_master(master_before)?;
            master_before
        }
        _ => {
            stack.restore_node(holder_before, holder_before == master_before)?;
            holder_before
        }
    };
    let final_master = stack.master()?;
    let final_ip = cluster.node(final_master).ip();
    wait_until(
        &format!("r{returning} to replicate r{final_master}"),
        Duration::from_secs(90),
        Duration::from_millis(100),
        || {
            Ok(matches!(
                replication(cluster.node(returning).redis()),
                Ok(Replication::Replica { master, link_up: true }) if master == final_ip
            )
            .then_some(()))
        },
    )?;
    let end = Instant::now();
    for w in &writers {
        w.wait_acks_after(end, 20, Duration::from_secs(10))?;
    }
    let final_master = stack.master()?;
    let final_redis = cluster.node(final_master).redis();
    let final_ip = cluster.node(final_master).ip();

    let mut outcomes = Vec::new();
    for w in writers {
        let mode = w.mode();
        let prefix = w.prefix.clone();
        let rec: WriterRecord = w.finish()?;
        let (before, after) = rec
            .loop_record()
            .longest_gap_between(fault_at, resolved_at)
            .context("no write acknowledged around the fault")?;
        let key = |n: u64| format!("{prefix}:{n}");
        let missing: std::collections::HashSet<String> =
            missing_keys(final_redis, rec.acks.iter().map(|a| key(a.n)).collect())?
                .into_iter()
                .collect();
        let lost = |confirmed: bool| {
            rec.acks
                .iter()
                .filter(|a| a.confirmed == confirmed && missing.contains(&key(a.n)))
                .count()
        };
        let confirmed = rec.acks.iter().filter(|a| a.confirmed).count();
        outcomes.push(WriterOutcome {
            mode,
            gap_ms: ms(after - before),
            acked: rec.acks.len(),
            confirmed,
            unconfirmed: rec.acks.len() - confirmed,
            lost_confirmed: lost(true),
            lost_unconfirmed: lost(false),
            demoted_acks: rec
                .acks
                .iter()
                .filter(|a| a.at > fault_at && a.node.is_some_and(|ip| ip != final_ip))
                .count(),
            failures: rec.failures,
            connects: rec.connects,
        });
    }
    Ok(SeedOutcome {
        stack: name.to_owned(),
        fault,
        master_before,
        holder_before,
        master_after,
        holder_after,
        resolved_ms: ms(resolved_at - fault_at),
        writers: outcomes,
        switches,
        masters_seen,
    })
}

fn series(name: &str, trials: usize, stack: Result<Box<dyn HaStack>>) -> SeedSeries {
    let mut s = SeedSeries {
        stack: name.to_owned(),
        outcomes: Vec::new(),
        errors: Vec::new(),
    };
    println!("==> seed failover: {name}, {trials} trial(s) per fault");
    let stack = match stack {
        Ok(stack) => stack,
        Err(e) => {
            let msg = format!("{name}: setting up failed: {e:#}");
            println!("    {msg}");
            s.errors.push(msg);
            return s;
        }
    };
    let mut failures_in_a_row = 0;
    'trials: for n in 0..trials {
        for fault in FAULTS {
            if failures_in_a_row >= 2 {
                s.errors
                    .push(format!("{name}: stopped after two failed trials in a row"));
                break 'trials;
            }
            if let Err(e) = super::check_interrupted() {
                s.errors.push(format!("{name}: {e}"));
                return s;
            }
            let label = format!("seed-{}-{}-{n}", fault.id(), unique_tag());
            match run_trial(stack.as_ref(), name, fault, &label) {
                Ok(o) => {
                    print!(
                        "    {:<12} r{}/VIP r{} -> r{}/VIP r{}  resolved {:>6.0} ms  gap",
                        fault.id(),
                        o.master_before,
                        o.holder_before,
                        o.master_after,
                        o.holder_after,
                        o.resolved_ms
                    );
                    for w in &o.writers {
                        print!(" {:.0}", w.gap_ms);
                    }
                    println!(
                        " ms  switches {:?}  acked {}  unconfirmed {}  lost {}+{}  demoted-master acks {}",
                        o.switches.values().collect::<Vec<_>>(),
                        o.sum(|w| w.acked),
                        o.sum(|w| w.unconfirmed),
                        o.sum(|w| w.lost_confirmed),
                        o.sum(|w| w.lost_unconfirmed),
                        o.sum(|w| w.demoted_acks)
                    );
                    s.outcomes.push(o);
                    failures_in_a_row = 0;
                }
                Err(e) => {
                    failures_in_a_row += 1;
                    let msg = format!("{name} {} trial {}: {e:#}", fault.id(), n + 1);
                    println!("    {msg}");
                    s.errors.push(msg);
                }
            }
        }
    }
    s
}

/// Both stacks, one after the other, each on a fresh seed topology.
pub fn measure(trials: usize, xdp_mode: XdpMode) -> Vec<SeedSeries> {
    let options = || SeedOptions {
        tag: unique_tag(),
        xdp_mode,
        down_after_ms: SEED_DOWN_AFTER_MS,
        ..SeedOptions::default()
    };
    let mut all = Vec::new();
    let redis_ha = SeedCluster::up(options()).map(|c| Box::new(RedisHa(c)) as Box<dyn HaStack>);
    all.push(series("redis-ha", trials, redis_ha));
    if super::check_interrupted().is_ok() {
        let seed = SeedCluster::up(SeedOptions {
            start_controllers: false,
            ..options()
        })
        .and_then(SeedStack::up)
        .map(|s| Box::new(s) as Box<dyn HaStack>);
        all.push(series("sentinel+haproxy+keepalived", trials, seed));
    }
    all
}
