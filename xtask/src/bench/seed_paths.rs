//! Throughput, latency and LB CPU on the seed topology: the bench's redis-benchmark workloads
//! from the same-subnet client, in two phases on freshly built copies of the same namespaces:
//! - redis-ha (controllers, data plane on every node, the VIP on one): `direct` (the client
//!   straight to the master's 198.18.0.1N:6379; the master's node has the program attached,
//!   passing that traffic, as it would in production), `vip-write` and `vip-read`;
//! - the seed's stack ([`SeedStack`]): `direct` again (no program anywhere), and HAProxy's
//!   write and read frontends on the VIP (the holder's HAProxy).
//!
//! Each phase runs twice: with the master on another node than the VIP (`remote`: the holder
//! forwards to it over the subnet) and with the master on the VIP holder (`local`). Paths are
//! rotated per workload and repeat, ratios are medians over repeats of (path ÷ direct of the
//! same phase, placement, workload and repeat), as in [`super::paths`].
//!
//! LB CPU: the BPF run time of the VIP holder's program (BPF run-time statistics on), and the
//! same over all three nodes' programs (each node's program also sees, and passes, what
//! crosses its veth); HAProxy's: utime + stime of the holder's HAProxy process.

use std::net::SocketAddrV4;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::testbed::REDIS_PORT;
use redis_ha_tests::{Netns, SeedCluster, SeedOptions, XdpMode, run, unique_tag, wait_until};

use super::paths::{median, process_cpu_ticks};
use super::seed_stack::{SEED_DOWN_AFTER_MS, SeedStack};
use super::workload::{self, TestResult, Workload};
use super::xdp::{ProgStats, prog_stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placement {
    /// The master on another node than the VIP holder.
    Remote,
    /// The master on the VIP holder.
    Local,
}

impl Placement {
    pub fn id(self) -> &'static str {
        match self {
            Placement::Remote => "remote master",
            Placement::Local => "master on the VIP holder",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeedPath {
    /// Straight to the master, in the redis-ha phase (programs attached, passing).
    Direct,
    VipWrite,
    VipRead,
    /// Straight to the master, in the seed-stack phase (no program).
    SeedDirect,
    Haproxy,
    HaproxyRead,
}

impl SeedPath {
    pub fn id(self) -> &'static str {
        match self {
            SeedPath::Direct => "direct",
            SeedPath::VipWrite => "vip-write",
            SeedPath::VipRead => "vip-read",
            SeedPath::SeedDirect => "direct (seed phase)",
            SeedPath::Haproxy => "haproxy-write",
            SeedPath::HaproxyRead => "haproxy-read",
        }
    }

    /// The direct path of the same phase.
    pub fn baseline(self) -> SeedPath {
        match self {
            SeedPath::Direct | SeedPath::VipWrite | SeedPath::VipRead => SeedPath::Direct,
            _ => SeedPath::SeedDirect,
        }
    }

    fn tests(self) -> &'static str {
        match self {
            SeedPath::VipRead | SeedPath::HaproxyRead => "get",
            _ => "set,get",
        }
    }

    fn is_direct(self) -> bool {
        matches!(self, SeedPath::Direct | SeedPath::SeedDirect)
    }
}

/// One redis-benchmark run.
#[derive(Clone, Debug)]
pub struct SeedRun {
    pub placement: Placement,
    pub path: SeedPath,
    pub workload: String,
    pub repeat: usize,
    pub tests: Vec<TestResult>,
    pub requests: u64,
    /// The holder's program run time, or the holder's HAProxy CPU time.
    pub lb_cpu_ns: Option<u64>,
    /// All three nodes' programs (redis-ha paths only).
    pub all_programs_ns: Option<u64>,
}

pub struct SeedPathResults {
    pub workloads: Vec<Workload>,
    pub runs: Vec<SeedRun>,
    pub repeats: usize,
    /// Where each phase found the VIP and the master, for the report.
    pub notes: Vec<String>,
}

/// Medians of one (placement, path, workload, test).
#[derive(Clone, Debug)]
pub struct SeedCell {
    pub rps: f64,
    pub p99_ms: f64,
    /// Median over repeats of path ÷ the same phase's direct.
    pub rps_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
}

impl SeedPathResults {
    fn find(
        &self,
        pl: Placement,
        path: SeedPath,
        wl: &str,
        test: &str,
        rep: usize,
    ) -> Option<&TestResult> {
        self.runs
            .iter()
            .find(|r| r.placement == pl && r.path == path && r.workload == wl && r.repeat == rep)
            .and_then(|r| r.tests.iter().find(|t| t.test == test))
    }

    pub fn cell(&self, pl: Placement, path: SeedPath, wl: &str, test: &str) -> Option<SeedCell> {
        let mut rps = Vec::new();
        let mut p99 = Vec::new();
        let mut rps_r = Vec::new();
        let mut p99_r = Vec::new();
        for rep in 0..self.repeats {
            let Some(t) = self.find(pl, path, wl, test, rep) else {
                continue;
            };
            rps.push(t.rps);
            p99.push(t.p99_ms);
            if let Some(d) = self.find(pl, path.baseline(), wl, test, rep) {
                rps_r.push(t.rps / d.rps);
                p99_r.push(t.p99_ms / d.p99_ms);
            }
        }
        Some(SeedCell {
            rps: median(&rps)?,
            p99_ms: median(&p99)?,
            rps_ratio: median(&rps_r),
            p99_ratio: median(&p99_r),
        })
    }

    /// Median of `f` over the runs of (placement, path, workload), per 100k requests.
    pub fn cpu_per_100k(
        &self,
        pl: Placement,
        path: SeedPath,
        wl: &str,
        f: fn(&SeedRun) -> Option<u64>,
    ) -> Option<f64> {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.placement == pl && r.path == path && r.workload == wl)
            .filter_map(|r| f(r).map(|ns| ns as f64 / r.requests as f64 * 1e5))
            .collect();
        median(&v)
    }
}

/// The programs pinned under node `n`'s pin directory, their stats summed.
fn node_prog_stats(cluster: &SeedCluster, n: usize) -> Result<ProgStats> {
    let dir = cluster.node(n).pin_dir();
    let mut total = ProgStats::default();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("prog"))
        {
            continue;
        }
        let json = run(Command::new("bpftool")
            .args(["-j", "prog", "show", "pinned"])
            .arg(&path))?;
        let v: serde_json::Value = serde_json::from_str(&json)?;
        let id = v
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("no program id for {}", path.display()))?;
        let s = prog_stats(u32::try_from(id)?)?;
        total.run_time_ns += s.run_time_ns;
        total.run_cnt += s.run_cnt;
    }
    Ok(total)
}

/// What differs between the phases.
trait Phase {
    fn cluster(&self) -> &SeedCluster;
    /// (master, holder) once whole.
    fn healthy(&self) -> Result<(usize, usize)>;
    fn switch_master(&self, to: usize) -> Result<()>;
    /// LB CPU counters of the holder (ns), and of every node's program (redis-ha only).
    fn cpu(&self, holder: usize) -> Result<(u64, Option<u64>)>;
    fn paths(&self, placement: Placement) -> Vec<SeedPath>;
}

struct RedisHaPhase(SeedCluster);

impl Phase for RedisHaPhase {
    fn cluster(&self) -> &SeedCluster {
        &self.0
    }
    fn healthy(&self) -> Result<(usize, usize)> {
        let m = self.0.wait_healthy(Duration::from_secs(60))?;
        Ok((m, self.0.holder()?))
    }
    fn switch_master(&self, to: usize) -> Result<()> {
        self.0.switch_master(to)
    }
    fn cpu(&self, holder: usize) -> Result<(u64, Option<u64>)> {
        let mut all = 0;
        let mut own = 0;
        for n in 1..=3 {
            let s = node_prog_stats(&self.0, n)?.run_time_ns;
            all += s;
            if n == holder {
                own = s;
            }
        }
        Ok((own, Some(all)))
    }
    fn paths(&self, placement: Placement) -> Vec<SeedPath> {
        match placement {
            Placement::Remote => vec![SeedPath::Direct, SeedPath::VipWrite, SeedPath::VipRead],
            Placement::Local => vec![SeedPath::Direct, SeedPath::VipWrite],
        }
    }
}

impl Phase for SeedStack {
    fn cluster(&self) -> &SeedCluster {
        &self.cluster
    }
    fn healthy(&self) -> Result<(usize, usize)> {
        self.wait_healthy(Duration::from_secs(90))
    }
    fn switch_master(&self, to: usize) -> Result<()> {
        SeedStack::switch_master(self, to)
    }
    fn cpu(&self, holder: usize) -> Result<(u64, Option<u64>)> {
        let pid = self
            .haproxy_pid(holder)
            .context("no HAProxy on the holder")?;
        Ok((
            process_cpu_ticks(pid)? * 1_000_000_000 / clock_ticks(),
            None,
        ))
    }
    fn paths(&self, placement: Placement) -> Vec<SeedPath> {
        match placement {
            Placement::Remote => {
                vec![
                    SeedPath::SeedDirect,
                    SeedPath::Haproxy,
                    SeedPath::HaproxyRead,
                ]
            }
            Placement::Local => vec![SeedPath::SeedDirect, SeedPath::Haproxy],
        }
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Both phases.
pub fn measure(quick: bool, repeats: usize, xdp_mode: XdpMode) -> Result<SeedPathResults> {
    let workloads = workload::workloads(quick);
    let mut results = SeedPathResults {
        workloads: workloads.clone(),
        runs: Vec::new(),
        repeats,
        notes: Vec::new(),
    };
    let options = || SeedOptions {
        tag: unique_tag(),
        xdp_mode,
        down_after_ms: SEED_DOWN_AFTER_MS,
        ..SeedOptions::default()
    };
    {
        println!("==> seed paths, redis-ha phase: {repeats} repeats");
        let phase = RedisHaPhase(SeedCluster::up(options())?);
        let _stats = super::xdp::BpfStats::enable()?;
        measure_phase(&phase, &workloads, repeats, &mut results)?;
    }
    super::check_interrupted()?;
    println!("==> seed paths, seed-stack phase (Sentinel + HAProxy + keepalived)");
    let cluster = SeedCluster::up(SeedOptions {
        start_controllers: false,
        ..options()
    })?;
    let phase = SeedStack::up(cluster)?;
    measure_phase(&phase, &workloads, repeats, &mut results)?;
    Ok(results)
}

fn measure_phase(
    phase: &dyn Phase,
    workloads: &[Workload],
    repeats: usize,
    out: &mut SeedPathResults,
) -> Result<()> {
    let cluster = phase.cluster();
    let client = cluster.client();
    // As in `paths::measure`: no TIME_WAIT, wide port ranges, so no run pays for the last.
    let mut namespaces: Vec<&Netns> = vec![client];
    namespaces.extend(cluster.nodes().iter().map(|n| n.netns()));
    for ns in namespaces {
        ns.set_sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
        ns.set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        ns.set_sysctl("net.ipv4.ip_local_port_range", "10000 60999")?;
    }
    // As in `paths::Pinning`: redis-benchmark on CPU 0, every redis-server on CPU 1.
    let client_cpu = (cpu_count() >= 2).then_some(0);
    if client_cpu.is_some() {
        for node in cluster.nodes() {
            if let Some(pid) = node.redis().pid() {
                run(Command::new("taskset").args(["-a", "-p", "-c", "1", &pid.to_string()]))?;
            }
        }
    }
    for placement in [Placement::Remote, Placement::Local] {
        let (mut master, holder) = phase.healthy()?;
        let want_local = placement == Placement::Local;
        if (master == holder) != want_local {
            let to = if want_local {
                holder
            } else {
                (1..=3).find(|&n| n != holder).expect("three nodes")
            };
            phase.switch_master(to)?;
            let (m, h) = phase.healthy()?;
            if (m == h) != want_local || h != holder {
                bail!(
                    "placing the master for {}: master r{m}, VIP on r{h}",
                    placement.id()
                );
            }
            master = m;
        }
        let note = format!("{}: master r{master}, VIP on r{holder}", placement.id());
        println!("    {note}");
        out.notes.push(note);
        let paths = phase.paths(placement);
        let started = Instant::now();
        for repeat in 0..repeats {
            for (w, wl) in workloads.iter().enumerate() {
                prime_key(cluster, master, wl.value_bytes)?;
                for k in 0..paths.len() {
                    super::check_interrupted()?;
                    let path = paths[(repeat + w + k) % paths.len()];
                    let addr = match path {
                        p if p.is_direct() => {
                            SocketAddrV4::new(cluster.node(master).ip(), REDIS_PORT)
                        }
                        SeedPath::VipRead | SeedPath::HaproxyRead => cluster.vip_read(),
                        _ => cluster.vip_write(),
                    };
                    workload::warm_up(client, addr)?;
                    let before = (!path.is_direct()).then(|| phase.cpu(holder)).transpose()?;
                    let tests = workload::run(client, addr, wl, path.tests(), client_cpu)
                        .with_context(|| format!("{} through {}", wl.label, path.id()))?;
                    let after = (!path.is_direct()).then(|| phase.cpu(holder)).transpose()?;
                    let (lb_cpu_ns, all_programs_ns) = match (before, after) {
                        (Some(b), Some(a)) => (
                            Some(a.0.saturating_sub(b.0)),
                            a.1.zip(b.1).map(|(a, b)| a.saturating_sub(b)),
                        ),
                        _ => (None, None),
                    };
                    let rps: Vec<String> = tests
                        .iter()
                        .map(|t| format!("{} {:.0}/s", t.test, t.rps))
                        .collect();
                    println!(
                        "    [{:>4.0}s] {} repeat {}/{repeats} {:<16} {:<20} {}",
                        started.elapsed().as_secs_f64(),
                        placement.id(),
                        repeat + 1,
                        wl.label,
                        path.id(),
                        rps.join("  ")
                    );
                    out.runs.push(SeedRun {
                        placement,
                        path,
                        workload: wl.id.to_owned(),
                        repeat,
                        requests: wl.requests * tests.len() as u64,
                        tests,
                        lb_cpu_ns,
                        all_programs_ns,
                    });
                }
            }
        }
    }
    Ok(())
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// redis-benchmark's key with a value of the workload's size on the master, replicated.
fn prime_key(cluster: &SeedCluster, master: usize, bytes: u32) -> Result<()> {
    let value = "x".repeat(bytes as usize);
    cluster
        .node(master)
        .redis()
        .redis_cli(&["SET", "key:__rand_int__", &value])?;
    for node in cluster.nodes().iter().filter(|n| n.index() != master) {
        wait_until(
            &format!("r{} to replicate the benchmark key", node.index()),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let len = node.redis().redis_cli(&["STRLEN", "key:__rand_int__"])?;
                Ok((len.trim() == bytes.to_string()).then_some(()))
            },
        )?;
    }
    Ok(())
}
