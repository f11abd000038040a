//! Part 5: the same failover trial against redis-ha (three controllers, tests/src/cluster.rs)
//! and against the seed stack (three Debian `redis-sentinel`s + the seed's HAProxy).
//!
//! One trial routine serves both stacks, so the probe is literally the same code: the writer
//! of tests/src/trial.rs (`LoopOptions::writer`: a SET of a unique key every ~3 ms, 100 ms
//! timeouts, one connection kept until it fails), plus a reader on the read port opening a new
//! connection per GET (so every read is balanced afresh and a dead backend in the read pool
//! shows). The definitions follow `run_trial` in tests/src/trial.rs:
//! - write gap: the longest time between two consecutive acknowledged writes that ends after
//!   the fault and starts no later than the switch was seen (`LoopRecord::longest_gap_between`);
//! - switch seen: fault → the balancer's write target observed on another backend (polled
//!   every 50 ms: redis-ha's maps, HAProxy's `show stat`);
//! - read errors: failed reads between the fault and the restore, and their window (first →
//!   last failure);
//! - lost: acknowledged writes missing on the final master (pipelined EXISTS);
//! - old master after switch: new connections the balancer's write side sent to the old master
//!   between the switch and the end of the trial (redis-ha: the slot's new_flows; HAProxy:
//!   the server's session count), after the old master is restored (restart / SIGCONT).
//!
//! `run_trial` itself is not called: its outcome has no per-request timeline and it reads
//! redis-ha's maps, which the seed stack does not have.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use redis_ha_tests::cluster::{Replication, replication};
use redis_ha_tests::trial::{LoopOptions, LoopRecord, Request, TrafficLoop, missing_keys};
use redis_ha_tests::{Backend, Cluster, ClusterOptions, Testbed, unique_tag, wait_until};

use std::sync::{Arc, Mutex};

use super::attack::{Attack, Counters};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill9,
    SigStop,
}

impl Fault {
    pub fn id(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill-9",
            Fault::SigStop => "sigstop",
        }
    }
}

/// What the trial needs from a stack.
pub(super) trait Stack {
    fn testbed(&self) -> &Testbed;
    fn write_addr(&self) -> SocketAddrV4;
    fn read_addr(&self) -> SocketAddrV4;
    /// Waits until the service is whole again; returns the master.
    fn wait_healthy(&self, timeout: Duration) -> Result<SocketAddrV4>;
    /// Where the balancer sends new writes, if that is no longer `old`.
    fn moved_from(&self, old: SocketAddrV4) -> Result<Option<SocketAddrV4>>;
    /// New connections the balancer's write side has sent to `addr` so far.
    fn write_connections_to(&self, addr: SocketAddrV4) -> Result<u64>;
    /// The master the stack ends on.
    fn final_master(&self) -> Result<SocketAddrV4>;
    /// Called right after a killed backend was restarted.
    fn after_restart(&self, _backend: &Backend) -> Result<()> {
        Ok(())
    }
}

/// What one trial measured (times in ms, relative to the fault where they are instants).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub stack: String,
    pub fault: Fault,
    pub down_after_ms: u64,
    pub old_master: SocketAddrV4,
    pub new_master: SocketAddrV4,
    pub gap_ms: f64,
    /// The two acks around the write gap, relative to the fault.
    pub gap_from_ms: f64,
    pub gap_to_ms: f64,
    pub switch_seen_ms: f64,
    pub read_errors: u64,
    pub read_error_from_ms: Option<f64>,
    pub read_error_to_ms: Option<f64>,
    pub acked: usize,
    pub lost: usize,
    pub write_failures: u64,
    pub old_master_conns_after_switch: u64,
    /// The most frequent failure messages of the writer and the reader, with counts.
    pub write_error_kinds: Vec<(String, usize)>,
    pub read_error_kinds: Vec<(String, usize)>,
}

/// The three most frequent messages among `failures`, with their counts.
fn error_kinds(failures: &[(Instant, String)]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, why) in failures {
        *counts.entry(why.as_str()).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(why, n)| (why.to_owned(), n))
        .collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    kinds.truncate(3);
    kinds
}

impl Outcome {
    pub fn read_window_ms(&self) -> f64 {
        match (self.read_error_from_ms, self.read_error_to_ms) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }
}

/// One stack × down-after: N trials of each fault, or why it could not run.
pub struct Series {
    pub stack: String,
    pub down_after_ms: u64,
    pub outcomes: Vec<Outcome>,
    pub errors: Vec<String>,
}

fn ms_between(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1000.0
    } else {
        -((earlier - later).as_secs_f64() * 1000.0)
    }
}

/// Brings a failed master back if a trial ends early (an error between the fault and the
/// restore), so the next trial does not start with a backend frozen or dead.
struct Undo<'a> {
    backend: &'a Backend,
    fault: Fault,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = match self.fault {
                Fault::Kill9 => self.backend.start(),
                Fault::SigStop => self.backend.resume(),
            };
        }
    }
}

fn run_trial(
    stack: &dyn Stack,
    name: &str,
    fault: Fault,
    down_after_ms: u64,
    label: &str,
) -> Result<Outcome> {
    let tb = stack.testbed();
    let down_after = Duration::from_millis(down_after_ms);
    let resume_timeout = Duration::from_secs(15) + 4 * down_after;
    let old = stack.wait_healthy(Duration::from_secs(60))?;
    let old_backend = tb.backend_at(old).context("the master is no backend")?;

    let writer = TrafficLoop::start(
        tb.client().path(),
        LoopOptions::writer(stack.write_addr(), label),
    )?;
    let reader = TrafficLoop::start(
        tb.client().path(),
        LoopOptions {
            request: Request::Get {
                key: format!("{label}:read"),
            },
            reconnect_every: Some(1),
            ..LoopOptions::writer(stack.read_addr(), label)
        },
    )?;
    let t0 = Instant::now();
    writer
        .wait_acks_after(t0, 1, Duration::from_secs(10))
        .context("writes fail before the fault")?;
    reader
        .wait_acks_after(t0, 1, Duration::from_secs(10))
        .context("reads fail before the fault")?;
    std::thread::sleep(Duration::from_millis(500));

    let mut undo = Undo {
        backend: old_backend,
        fault,
        armed: true,
    };
    match fault {
        Fault::Kill9 => old_backend.kill()?,
        Fault::SigStop => old_backend.stop()?,
    }
    // After the call the old master can acknowledge nothing more (reaped, or stopped).
    let fault_at = Instant::now();

    let (new, switch_at) = wait_until(
        "the write side to leave the failed master",
        resume_timeout,
        Duration::from_millis(50),
        || Ok(stack.moved_from(old)?.map(|new| (new, Instant::now()))),
    )?;
    let conns_at_switch = stack.write_connections_to(old)?;
    writer
        .wait_acks_after(switch_at, 20, resume_timeout)
        .context("writes did not resume after the switch")?;
    std::thread::sleep((3 * down_after).max(Duration::from_millis(1500)));

    // The reader stops before the old master returns: redis-ha counts new flows per backend,
    // not per port, so reads balanced onto the returning replica would count as writes.
    let restore_at = Instant::now();
    let rrec: LoopRecord = reader.finish()?;
    undo.armed = false;
    match fault {
        Fault::Kill9 => {
            old_backend.start()?;
            stack.after_restart(old_backend)?;
        }
        Fault::SigStop => old_backend.resume()?,
    }
    // Sentinel notices a returning master through its 10 s INFO period, then waits until the
    // instance has been up and reporting its role for 8 s more (4 publish periods), and only
    // while the new master looks sane in its own view; in one seed trial of five in a few
    // runs that took over 45 s. Only a slow trial pays for the margin.
    wait_until(
        &format!("{old} to replicate from {new}"),
        Duration::from_secs(90),
        Duration::from_millis(100),
        || {
            Ok(matches!(
                replication(old_backend),
                Ok(Replication::Replica { master, link_up: true }) if master == *new.ip()
            )
            .then_some(()))
        },
    )?;
    writer.wait_acks_after(Instant::now(), 50, Duration::from_secs(10))?;
    let conns_end = stack.write_connections_to(old)?;
    let wrec: LoopRecord = writer.finish()?;

    let final_master = stack.final_master()?;
    let final_backend = tb
        .backend_at(final_master)
        .context("the final master is no backend")?;
    let acked = wrec.set_keys(label);
    let lost = missing_keys(final_backend, acked.clone())?.len();

    let (last_before, first_after) = wrec
        .longest_gap_between(fault_at, switch_at)
        .context("no write acknowledged around the fault")?;
    let read_failures: Vec<Instant> = rrec
        .failures
        .iter()
        .map(|(at, _)| *at)
        .filter(|at| *at >= fault_at && *at < restore_at)
        .collect();
    Ok(Outcome {
        stack: name.to_owned(),
        fault,
        down_after_ms,
        old_master: old,
        new_master: new,
        gap_ms: ms_between(first_after, last_before),
        gap_from_ms: ms_between(last_before, fault_at),
        gap_to_ms: ms_between(first_after, fault_at),
        switch_seen_ms: ms_between(switch_at, fault_at),
        read_errors: read_failures.len() as u64,
        read_error_from_ms: read_failures.first().map(|t| ms_between(*t, fault_at)),
        read_error_to_ms: read_failures.last().map(|t| ms_between(*t, fault_at)),
        acked: acked.len(),
        lost,
        write_failures: wrec.failure_count,
        old_master_conns_after_switch: conns_end.saturating_sub(conns_at_switch),
        write_error_kinds: error_kinds(&wrec.failures),
        read_error_kinds: error_kinds(&rrec.failures),
    })
}

/// Runs `trials` trials of each fault on a freshly built stack; failures are recorded, not
/// fatal, so one broken stack does not hide the other's numbers.
fn series(
    name: &str,
    down_after_ms: u64,
    trials: usize,
    build: impl FnOnce() -> Result<Box<dyn Stack>>,
) -> Series {
    let mut s = Series {
        stack: name.to_owned(),
        down_after_ms,
        outcomes: Vec::new(),
        errors: Vec::new(),
    };
    println!("==> failover: {name}, down-after {down_after_ms} ms, {trials} trial(s) per fault");
    let stack = match build() {
        Ok(stack) => stack,
        Err(e) => {
            let msg = format!("{name}: setting up failed: {e:#}");
            println!("    {msg}");
            s.errors.push(msg);
            return s;
        }
    };
    // A stack that did not recover makes every later trial wait out its health timeout:
    // after two failures in a row the series stops.
    let mut failures_in_a_row = 0;
    'trials: for n in 0..trials {
        for fault in [Fault::Kill9, Fault::SigStop] {
            if failures_in_a_row >= 2 {
                s.errors.push(format!(
                    "{name}: stopped after two failed trials in a row ({} of {} done)",
                    s.outcomes.len(),
                    2 * trials
                ));
                break 'trials;
            }
            if let Err(e) = super::check_interrupted() {
                s.errors.push(format!("{name}: {e}"));
                return s;
            }
            let label = format!("bench-{}-{}-{n}", fault.id(), unique_tag());
            match run_trial(stack.as_ref(), name, fault, down_after_ms, &label) {
                Ok(o) => {
                    println!(
                        "    {:<8} gap {:>7.1} ms  switch seen {:>7.1} ms  read errors {:>4} over {:>7.1} ms  acked {:>5}  lost {:>3}  old-master conns after switch {}",
                        fault.id(),
                        o.gap_ms,
                        o.switch_seen_ms,
                        o.read_errors,
                        o.read_window_ms(),
                        o.acked,
                        o.lost,
                        o.old_master_conns_after_switch
                    );
                    for (who, kinds) in [
                        ("writes", &o.write_error_kinds),
                        ("reads", &o.read_error_kinds),
                    ] {
                        for (why, n) in kinds {
                            println!("             {who} failed {n}×: {why}");
                        }
                    }
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

/// Every series: redis-ha at down_after_ms 1000 and 250, the seed stack at 1000.
pub fn measure(trials: usize) -> Vec<Series> {
    let mut all = Vec::new();
    for (name, down_after_ms) in [
        ("redis-ha", 1000),
        ("redis-ha", 250),
        ("sentinel+haproxy", 1000),
    ] {
        if super::check_interrupted().is_err() {
            break;
        }
        all.push(series(name, down_after_ms, trials, || match name {
            "redis-ha" => redis_ha(down_after_ms),
            _ => super::failover_seed::seed(down_after_ms),
        }));
    }
    all
}

/// What the attackers did and the controllers' largest resident memory, for
/// [`measure_under_attack`].
pub struct AttackSummary {
    pub counters: Arc<Counters>,
    /// (controller pid, largest VmRSS in KiB)
    pub rss_max_kib: Vec<(u32, u64)>,
}

/// What the series' stack hands back of its attack: the counters and the memory samples.
type AttackHandles = (Arc<Counters>, Arc<Mutex<Vec<(u32, u64)>>>);

/// redis-ha at down-after 1000 ms, `trials` trials of each fault, while every controller is
/// attacked (see [`super::attack`]) for the whole series.
pub fn measure_under_attack(trials: usize) -> (Series, Option<AttackSummary>) {
    let seen: Arc<Mutex<Option<AttackHandles>>> = Arc::new(Mutex::new(None));
    let keep = seen.clone();
    let series = series("redis-ha under attack", 1000, trials, move || {
        let cluster = Cluster::up(ClusterOptions {
            down_after_ms: 1000,
            ..ClusterOptions::default()
        })?;
        let apis: Vec<SocketAddrV4> = cluster.controllers().iter().map(|c| c.listen()).collect();
        let pids: Vec<u32> = cluster
            .controllers()
            .iter()
            .filter_map(|c| c.pid())
            .collect();
        let attack = Attack::start(cluster.testbed().client().path().as_path(), &apis, pids)?;
        *keep.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((attack.counters.clone(), attack.rss_max_kib.clone()));
        // Let the attack settle in before the first trial.
        std::thread::sleep(Duration::from_secs(5));
        Ok(Box::new(RedisHa {
            attack: Some(attack),
            cluster,
        }))
    });
    let summary = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map(|(counters, rss)| AttackSummary {
            counters,
            rss_max_kib: rss.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        });
    (series, summary)
}

// ---------------------------------------------------------------------------------------------
// redis-ha: three controllers (tests/src/cluster.rs).

struct RedisHa {
    /// Declared first: the attackers stop before the cluster they attack goes. Held only to
    /// be dropped with the stack.
    #[expect(dead_code, reason = "held for its Drop, which stops the attackers")]
    attack: Option<Attack>,
    cluster: Cluster,
}

fn redis_ha(down_after_ms: u64) -> Result<Box<dyn Stack>> {
    let cluster = Cluster::up(ClusterOptions {
        down_after_ms,
        ..ClusterOptions::default()
    })?;
    Ok(Box::new(RedisHa {
        attack: None,
        cluster,
    }))
}

impl Stack for RedisHa {
    fn testbed(&self) -> &Testbed {
        self.cluster.testbed()
    }

    fn write_addr(&self) -> SocketAddrV4 {
        self.testbed().vip_write()
    }

    fn read_addr(&self) -> SocketAddrV4 {
        self.testbed().vip_read()
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<SocketAddrV4> {
        self.cluster.wait_healthy(timeout)
    }

    fn moved_from(&self, old: SocketAddrV4) -> Result<Option<SocketAddrV4>> {
        Ok(self.cluster.maps()?.master().filter(|m| *m != old))
    }

    fn write_connections_to(&self, addr: SocketAddrV4) -> Result<u64> {
        Ok(self
            .cluster
            .maps()?
            .row(addr)
            .map(|r| r.new_flows)
            .unwrap_or(0))
    }

    fn final_master(&self) -> Result<SocketAddrV4> {
        self.cluster
            .maps()?
            .master()
            .context("no master in the maps")
    }
}

/// Median of `f` over the outcomes of one fault.
pub fn median_of(outcomes: &[Outcome], fault: Fault, f: fn(&Outcome) -> f64) -> Option<f64> {
    let v: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.fault == fault)
        .map(f)
        .collect();
    super::paths::median(&v)
}
