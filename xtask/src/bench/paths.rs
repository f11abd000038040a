//! Part 1–3 of the bench: the same redis-benchmark workloads through four paths, alternated
//! and repeated, with the load balancer's CPU time per request.
//!
//! Paths, all from the client namespace through the LB namespace:
//! - `direct`: straight to the master 198.18.1.11:6379, plain kernel routing, with the XDP
//!   program **detached** (`redis-ha-ctl unload`). Detached because this row is the physical
//!   limit an on-path balancer is compared with: on veth, even an XDP program that only
//!   passes makes the driver run its XDP receive path (and copy frames), which would slow
//!   the baseline and flatter redis-ha's ratio.
//! - `vip-write` / `vip-read`: redis-ha's VIP ports 198.18.0.100:6380 / :6381, program loaded.
//! - `haproxy`: the seed's HAProxy on 198.18.0.101:6380, program detached (the seed stack has
//!   no XDP, and a passing program would tax HAProxy's traffic too).
//!
//! Loading and unloading take tens of milliseconds, so the order of paths rotates for every
//! workload and repeat, and every comparison is between runs minutes apart at most. Ratios are
//! the median over repeats of (path ÷ direct in the same repeat and workload), which cancels
//! slow drifts in the machine's load better than a ratio of medians.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::testbed::{READ_PORT, REDIS_PORT, VIP, WRITE_PORT, backend_ip};
use redis_ha_tests::{Testbed, XdpMode, run_within, wait_until};

use super::haproxy::{self, HaProxy};
use super::workload::{self, TestResult, Workload};
use super::xdp::{DataPlane, LiveFloor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    Direct,
    /// Reference only (no bar): the direct path with the program attached, which passes
    /// this traffic. The gap between it and `Direct` is what native XDP on veth costs before
    /// the program does anything (the driver copies every frame a local stack sent).
    DirectXdp,
    VipWrite,
    VipRead,
    Haproxy,
}

pub const PATHS: [PathKind; 5] = [
    PathKind::Direct,
    PathKind::DirectXdp,
    PathKind::VipWrite,
    PathKind::VipRead,
    PathKind::Haproxy,
];

impl PathKind {
    pub fn id(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::DirectXdp => "direct-xdp",
            PathKind::VipWrite => "vip-write",
            PathKind::VipRead => "vip-read",
            PathKind::Haproxy => "haproxy",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PathKind::Direct => {
                "direct to the master 198.18.1.11:6379, kernel routing, redis-ha's program detached"
            }
            PathKind::DirectXdp => {
                "direct to the master 198.18.1.11:6379, kernel routing, redis-ha's program \
                 attached (it passes this traffic); a reference for what attaching alone costs \
                 (in XDP native mode on veth, the driver's copy of every frame)"
            }
            PathKind::VipWrite => "redis-ha write port 198.18.0.100:6380",
            PathKind::VipRead => "redis-ha read port 198.18.0.100:6381 (GET only)",
            PathKind::Haproxy => {
                "seed HAProxy 2.6 write frontend 198.18.0.101:6380, redis-ha's program detached"
            }
        }
    }

    pub fn addr(self) -> SocketAddrV4 {
        match self {
            PathKind::Direct | PathKind::DirectXdp => SocketAddrV4::new(backend_ip(1), REDIS_PORT),
            PathKind::VipWrite => SocketAddrV4::new(VIP, WRITE_PORT),
            PathKind::VipRead => SocketAddrV4::new(VIP, READ_PORT),
            PathKind::Haproxy => SocketAddrV4::new(haproxy::HAPROXY_VIP, haproxy::WRITE_PORT),
        }
    }

    fn xdp_loaded(self) -> bool {
        matches!(
            self,
            PathKind::DirectXdp | PathKind::VipWrite | PathKind::VipRead
        )
    }

    /// The read port reaches replicas, which refuse SET (READONLY).
    fn tests(self) -> &'static str {
        match self {
            PathKind::VipRead => "get",
            _ => "set,get",
        }
    }

    /// The role the backend behind the path must report.
    fn expected_role(self) -> &'static str {
        match self {
            PathKind::VipRead => "slave",
            _ => "master",
        }
    }
}

/// One redis-benchmark run: one path, one workload, one repeat.
#[derive(Clone, Debug)]
pub struct Run {
    pub path: PathKind,
    pub workload: String,
    pub repeat: usize,
    pub tests: Vec<TestResult>,
    /// Requests sent (tests × -n).
    pub requests: u64,
    /// The LB's CPU time over the run: the XDP program's run time, or HAProxy's user+system
    /// time. None for the direct path (no balancer process or program).
    pub lb_cpu_ns: Option<u64>,
    /// XDP program runs (packets) over the run.
    pub xdp_runs: Option<u64>,
    /// What the run-time statistics count per run of an empty program, measured right after
    /// the run ([`super::xdp::stats_floor_ns_per_run`]).
    pub xdp_floor_ns: Option<f64>,
    pub wall: Duration,
}

/// Where the measured runs ran: redis-benchmark on one CPU, every redis-server on another,
/// so the client and the server of a path never take each other's CPU, whichever the
/// scheduler would have picked (the ratios' spread over repeats narrowed from up to 0.27 to
/// 0.02-0.08 in quick runs).
#[derive(Clone, Copy, Debug)]
pub struct Pinning {
    pub client_cpu: usize,
    pub server_cpu: usize,
}

impl Pinning {
    /// CPU 0 for the client, CPU 1 for the servers; `None` on a single CPU.
    fn pin(tb: &Testbed) -> Result<Option<Self>> {
        if cpu_count() < 2 {
            return Ok(None);
        }
        let p = Pinning {
            client_cpu: 0,
            server_cpu: 1,
        };
        for b in tb.backends() {
            let pid = b
                .pid()
                .with_context(|| format!("backend {} has no process", b.index()))?;
            set_affinity(pid, &p.server_cpu.to_string())?;
        }
        Ok(Some(p))
    }

    /// Back to every CPU (the failover part runs unpinned).
    fn unpin(tb: &Testbed) -> Result<()> {
        let all = format!("0-{}", cpu_count() - 1);
        for pid in tb.backends().iter().filter_map(|b| b.pid()) {
            set_affinity(pid, &all)?;
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!(
            "redis-benchmark pinned to CPU {}, every redis-server to CPU {}",
            self.client_cpu, self.server_cpu
        )
    }
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `taskset -a -p -c CPUS PID`: every thread of the process, as redis-benchmark is pinned
/// with `taskset` too.
fn set_affinity(pid: u32, cpus: &str) -> Result<()> {
    run_within(
        Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()]),
        Duration::from_secs(10),
    )?;
    Ok(())
}

/// Everything part 1–3 measured.
pub struct PathResults {
    /// CPU placement of the runs, if any.
    pub pinning: Option<Pinning>,
    /// How the redis-ha paths' program was attached.
    pub xdp_mode: XdpMode,
    pub workloads: Vec<Workload>,
    pub runs: Vec<Run>,
    pub repeats: usize,
    pub clock_ticks_per_s: u64,
    /// Workload id → what BPF run-time statistics count per run of an empty program under
    /// that workload's traffic (TC hook only, [`LiveFloor`]); empty for the XDP modes.
    pub live_floor_ns: BTreeMap<String, f64>,
}

/// Runs every workload through every path `repeats` times. `tb` must be a fresh testbed
/// (backend 1 the master) with the data plane unloaded; `ctl` is redis-ha-ctl.
pub fn measure(tb: &Testbed, ctl: &Path, quick: bool, repeats: usize) -> Result<PathResults> {
    // Connection churn opens tens of thousands of connections per minute from one client
    // address, and the side that closes first (the client; HAProxy towards its servers) keeps
    // each for a minute in TIME_WAIT. Those sockets outlive the run: the next runs' connect()
    // searches for a port among them, and reuses one only by tearing it down, so a run paid
    // for the runs before it, more for the same destination (two back-to-back direct runs,
    // no program anywhere: GET 38k, then 14k requests/s; with `tcp_tw_reuse` and a pause,
    // still a few percent, and the order of paths decides who pays). No TIME_WAIT at all in
    // the client and LB namespaces gives every run the same start. The port range is widened
    // for the same reason. Namespace-local settings.
    for ns in [tb.client(), tb.lb()] {
        ns.set_sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
        ns.set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        ns.set_sysctl("net.ipv4.ip_local_port_range", "10000 60999")?;
    }
    let dir = tb
        .config_path()
        .parent()
        .context("the testbed's config has no directory")?
        .join("haproxy");
    let servers: Vec<_> = tb.backends().iter().map(|b| b.ip()).collect();
    println!(
        "==> starting HAProxy (seed config) on {}",
        haproxy::HAPROXY_VIP
    );
    let proxy = HaProxy::start(tb.lb(), &servers, &dir)?;
    let ticks = clock_ticks_per_s();
    let mut dp = DataPlane::new(tb, ctl);

    // Every path must reach the backend it claims to before anything is measured.
    for path in PATHS {
        dp.ensure(path.xdp_loaded())?;
        check_path(tb, path)?;
    }

    let pinning = Pinning::pin(tb)?;
    if let Some(p) = &pinning {
        println!("    {}", p.describe());
    }
    let bench = Bench {
        tb,
        proxy: &proxy,
        ticks,
        client_cpu: pinning.map(|p| p.client_cpu),
    };
    let workloads = workload::workloads(quick);
    let mut runs = Vec::new();
    let started = Instant::now();
    for repeat in 0..repeats {
        for (w, wl) in workloads.iter().enumerate() {
            prime_key(tb, wl.value_bytes)?;
            for k in 0..PATHS.len() {
                super::check_interrupted()?;
                let path = PATHS[(repeat + w + k) % PATHS.len()];
                dp.ensure(path.xdp_loaded())?;
                let run = run_one(&bench, &dp, path, wl, repeat)
                    .with_context(|| format!("{} through {}", wl.label, path.id()))?;
                let rps: Vec<String> = run
                    .tests
                    .iter()
                    .map(|t| format!("{} {:.0}/s", t.test, t.rps))
                    .collect();
                println!(
                    "    [{:>4.0}s] repeat {}/{repeats} {:<32} {:<10} {}",
                    started.elapsed().as_secs_f64(),
                    repeat + 1,
                    wl.label,
                    path.id(),
                    rps.join("  ")
                );
                runs.push(run);
            }
        }
    }
    let live_floor_ns = if tb.xdp_mode() == XdpMode::Tc {
        live_floors(&bench, &mut dp, &workloads)?
    } else {
        BTreeMap::new()
    };
    dp.ensure(false)?;
    drop(proxy);
    Pinning::unpin(tb)?;
    Ok(PathResults {
        pinning,
        xdp_mode: tb.xdp_mode(),
        workloads,
        runs,
        repeats,
        clock_ticks_per_s: ticks,
        live_floor_ns,
    })
}

/// One more run of every workload through the write port with [`LiveFloor`] in front of
/// the program: what the statistics count per run for a program that does nothing, under that
/// traffic. Not a measured run (the empty program is on the path).
fn live_floors(
    b: &Bench,
    dp: &mut DataPlane,
    workloads: &[Workload],
) -> Result<BTreeMap<String, f64>> {
    let path = PathKind::VipWrite;
    dp.ensure(true)?;
    let mut floors = BTreeMap::new();
    for wl in workloads {
        super::check_interrupted()?;
        prime_key(b.tb, wl.value_bytes)?;
        let floor = LiveFloor::attach(b.tb)?;
        let before = floor.stats()?;
        workload::run(b.tb.client(), path.addr(), wl, path.tests(), b.client_cpu)
            .with_context(|| format!("{} with the empty program in front", wl.label))?;
        let d = floor.stats()?.since(before);
        if d.run_cnt == 0 {
            bail!("the empty TC program counted no runs under {}", wl.label);
        }
        let ns = d.run_time_ns as f64 / d.run_cnt as f64;
        println!(
            "    statistics' floor under {:<32} {ns:.1} ns per run",
            wl.label
        );
        floors.insert(wl.id.to_owned(), ns);
    }
    Ok(floors)
}

/// What every measured run shares.
struct Bench<'a> {
    tb: &'a Testbed,
    proxy: &'a HaProxy,
    ticks: u64,
    client_cpu: Option<usize>,
}

fn run_one(b: &Bench, dp: &DataPlane, path: PathKind, wl: &Workload, repeat: usize) -> Result<Run> {
    let Bench {
        tb,
        proxy,
        ticks,
        client_cpu,
    } = *b;
    workload::warm_up(tb.client(), path.addr())?;
    let before_xdp = if path.xdp_loaded() {
        Some(dp.stats()?)
    } else {
        None
    };
    let before_proxy = (path == PathKind::Haproxy)
        .then(|| process_cpu_ticks(proxy.pid()))
        .transpose()?;
    let t0 = Instant::now();
    let tests = workload::run(tb.client(), path.addr(), wl, path.tests(), client_cpu)?;
    let wall = t0.elapsed();
    let mut lb_cpu_ns = None;
    let mut xdp_runs = None;
    let mut xdp_floor_ns = None;
    if let Some(before) = before_xdp {
        let d = dp.stats()?.since(before);
        if d.run_cnt == 0 {
            bail!(
                "the XDP program counted no runs while traffic went through {}: are BPF \
                 statistics on?",
                path.id()
            );
        }
        lb_cpu_ns = Some(d.run_time_ns);
        xdp_runs = Some(d.run_cnt);
        xdp_floor_ns = Some(super::xdp::stats_floor_ns_per_run()?);
    }
    if let Some(before) = before_proxy {
        let d = process_cpu_ticks(proxy.pid())?.saturating_sub(before);
        lb_cpu_ns = Some(d * 1_000_000_000 / ticks);
    }
    Ok(Run {
        path,
        workload: wl.id.to_owned(),
        repeat,
        requests: wl.requests * tests.len() as u64,
        tests,
        lb_cpu_ns,
        xdp_runs,
        xdp_floor_ns,
        wall,
    })
}

/// Asks the backend behind `path` for its role through the path itself.
fn check_path(tb: &Testbed, path: PathKind) -> Result<()> {
    let role = tb
        .client()
        .redis_cli(path.addr(), &["ROLE"])
        .with_context(|| format!("no answer through {} ({})", path.id(), path.addr()))?;
    let role = role.lines().next().unwrap_or_default().trim().to_owned();
    if role != path.expected_role() {
        bail!(
            "{} ({}) reached a {role}, not a {}",
            path.id(),
            path.addr(),
            path.expected_role()
        );
    }
    Ok(())
}

/// Stores redis-benchmark's key (`key:__rand_int__`, used as is without `-r`) with a value of
/// the workload's size on the master, and waits until the replicas have it, so GET through
/// any path returns a value of the size the workload names.
fn prime_key(tb: &Testbed, bytes: u32) -> Result<()> {
    let value = "x".repeat(bytes as usize);
    tb.backend(1)
        .redis_cli(&["SET", "key:__rand_int__", &value])
        .context("priming the benchmark key on the master")?;
    for replica in &tb.backends()[1..] {
        wait_until(
            &format!("backend {} to replicate the benchmark key", replica.index()),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let len = replica.redis_cli(&["STRLEN", "key:__rand_int__"])?;
                Ok((len.trim() == bytes.to_string()).then_some(()))
            },
        )?;
    }
    Ok(())
}

/// utime + stime of a process, all threads, in clock ticks (/proc/PID/stat fields 14 and 15).
pub fn process_cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Median of `values` (None when empty); the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians for one (workload, test, path).
#[derive(Clone, Debug)]
pub struct Cell {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Median over repeats of rps ÷ direct's rps in the same repeat, with min and max.
    pub rps_ratio: Option<(f64, f64, f64)>,
    /// Median over repeats of p99 ÷ direct's p99 in the same repeat.
    pub p99_ratio: Option<f64>,
    /// The repeat whose throughput is the median (its distribution is plotted).
    pub median_run: (usize, usize),
}

/// (workload, test, path) → medians.
pub type Table = BTreeMap<(String, String, PathKind), Cell>;

impl PathResults {
    pub fn table(&self) -> Table {
        let mut out = Table::new();
        let find = |wl: &str, test: &str, path: PathKind, rep: usize| {
            self.runs
                .iter()
                .enumerate()
                .find(|(_, r)| r.workload == wl && r.path == path && r.repeat == rep)
                .and_then(|(i, r)| {
                    r.tests
                        .iter()
                        .position(|t| t.test == test)
                        .map(|j| (i, j, &r.tests[j]))
                })
        };
        for wl in &self.workloads {
            for test in ["SET", "GET"] {
                for path in PATHS {
                    let mut per_rep = Vec::new();
                    for rep in 0..self.repeats {
                        if let Some((i, j, t)) = find(wl.id, test, path, rep) {
                            let direct = find(wl.id, test, PathKind::Direct, rep).map(|x| x.2);
                            per_rep.push((i, j, t, direct));
                        }
                    }
                    if per_rep.is_empty() {
                        continue;
                    }
                    let col = |f: fn(&TestResult) -> f64| {
                        median(&per_rep.iter().map(|(_, _, t, _)| f(t)).collect::<Vec<_>>())
                            .unwrap_or(f64::NAN)
                    };
                    let rps_ratios: Vec<f64> = per_rep
                        .iter()
                        .filter_map(|(_, _, t, d)| d.map(|d| t.rps / d.rps))
                        .collect();
                    let p99_ratios: Vec<f64> = per_rep
                        .iter()
                        .filter_map(|(_, _, t, d)| d.map(|d| t.p99_ms / d.p99_ms))
                        .collect();
                    let rps_median = col(|t| t.rps);
                    let median_run = per_rep
                        .iter()
                        .min_by(|a, b| {
                            (a.2.rps - rps_median)
                                .abs()
                                .total_cmp(&(b.2.rps - rps_median).abs())
                        })
                        .map(|(i, j, _, _)| (*i, *j))
                        .unwrap_or_default();
                    let ratio = median(&rps_ratios).map(|m| {
                        let min = rps_ratios.iter().copied().fold(f64::INFINITY, f64::min);
                        let max = rps_ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        (m, min, max)
                    });
                    out.insert(
                        (wl.id.to_owned(), test.to_owned(), path),
                        Cell {
                            rps: rps_median,
                            p50_ms: col(|t| t.p50_ms),
                            p99_ms: col(|t| t.p99_ms),
                            p999_ms: col(|t| t.p999_ms),
                            rps_ratio: ratio,
                            p99_ratio: median(&p99_ratios),
                            median_run,
                        },
                    );
                }
            }
        }
        out
    }

    /// Median LB CPU nanoseconds per 100k requests for (workload, path), with the XDP runs
    /// (packets) per request for the VIP paths.
    pub fn cpu_per_100k(&self, workload: &str, path: PathKind) -> Option<(f64, Option<f64>)> {
        let runs: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.workload == workload && r.path == path)
            .collect();
        let ns: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.lb_cpu_ns.map(|ns| ns as f64 / r.requests as f64 * 1e5))
            .collect();
        let pkts: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.xdp_runs.map(|n| n as f64 / r.requests as f64))
            .collect();
        Some((median(&ns)?, median(&pkts)))
    }

    /// Median XDP CPU nanoseconds per 100k requests for (workload, path) net of the
    /// statistics' floor (run_time_ns − runs × floor), with that floor in ns per run: the one
    /// measured under the workload's traffic at the TC hook, else the median of those measured
    /// by test runs after each run. None for paths without an XDP program.
    pub fn xdp_net_per_100k(&self, workload: &str, path: PathKind) -> Option<(f64, f64)> {
        let runs: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.workload == workload && r.path == path)
            .collect();
        let live = self.live_floor_ns.get(workload).copied();
        let net: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                let floor = live.or(r.xdp_floor_ns)?;
                let ns = r.lb_cpu_ns? as f64 - r.xdp_runs? as f64 * floor;
                Some(ns.max(0.0) / r.requests as f64 * 1e5)
            })
            .collect();
        let floors: Vec<f64> = runs.iter().filter_map(|r| r.xdp_floor_ns).collect();
        Some((median(&net)?, live.or(median(&floors))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(process_cpu_ticks(std::process::id()).is_ok());
    }
}
