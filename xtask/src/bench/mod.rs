//! `cargo xtask bench [--quick]`: redis-ha against a direct connection and against the seed's
//! HAProxy + Sentinel stack, in one run on the project's testbed.
//!
//! Layout:
//! - [`workload`]: the redis-benchmark workloads and the parser of its output;
//! - [`haproxy`]: the seed's HAProxy, run in the LB namespace;
//! - [`xdp`]: loading/unloading redis-ha's data plane, the program's run-time statistics;
//! - [`paths`]: parts 1–3, throughput, latency and LB CPU per path;
//! - [`packet`]: part 4, ns/packet through BPF_PROG_TEST_RUN (the packet test's measurement);
//! - [`failover`]: part 5, the failover trials against both stacks;
//! - [`report`]: the stdout table, `bench-results/` (JSON, Markdown, SVG);
//! - `--topology seed`: [`seed_stack`] (the seed's Sentinel + HAProxy + keepalived on the seed
//!   topology), [`seed_paths`] (throughput there), [`seed_failover`] and its [`seed_writer`]
//!   (the three faults on both stacks), reported by `report::seed`.
//!
//! Numbers are only compared within one run; the report names the machine they came from.

mod attack;
mod failover;
mod failover_seed;
mod haproxy;
pub(crate) mod packet;
mod paths;
pub(crate) mod report;
mod seed_failover;
mod seed_paths;
mod seed_stack;
mod seed_writer;
mod svg;
mod workload;
mod xdp;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::testbed::replication_ip;
use redis_ha_tests::{Testbed, TestbedOptions, XdpMode, ctl_binary, is_root, unique_tag};

/// What `cargo xtask bench` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    /// Repeats of every (path, workload); default 3 (--quick) or 5.
    pub repeats: Option<usize>,
    /// Failover trials per fault and stack; default 1 (--quick) or 5.
    pub trials: Option<usize>,
    pub skip_paths: bool,
    pub skip_packet: bool,
    pub skip_failover: bool,
    /// Attach mode of the redis-ha paths.
    pub xdp_mode: XdpMode,
    /// Where the results go; default `<workspace>/bench-results`.
    pub out: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
    /// Run on the seed's topology against the seed's own stack (`--topology seed`).
    pub seed: bool,
    /// Only failovers under attack (`--attack`).
    pub attack: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C (or SIGTERM) would end the process without running a destructor, leaving the
/// testbeds' namespaces and processes behind. Instead the signal is noted, the bench stops at
/// its next check (every measured run and trial), and the guards clean up as it unwinds.
pub(crate) fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// An error once the bench has been interrupted.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Which redis-ha-ctl the bench ran and whether it is fresh.
pub struct CtlInfo {
    pub path: PathBuf,
    pub note: String,
}

pub fn bench(options: Options) -> Result<()> {
    if !is_root() {
        bail!("the bench creates network namespaces and loads XDP programs: run it as root");
    }
    let started = Instant::now();
    catch_interrupts();
    let ctl = ctl()?;
    // Everything below that starts redis-ha-ctl (the cluster helper included) finds it here.
    // SAFETY: no other thread exists yet in this process, so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var("REDIS_HA_CTL", &ctl.path) };
    let machine = report::Machine::probe();
    println!("==> bench on {}", machine.one_line());

    if options.seed {
        return bench_seed(&options, ctl, machine, started);
    }
    if options.attack {
        return bench_attack(&options, &machine, started);
    }
    let repeats = options.repeats.unwrap_or(if options.quick { 3 } else { 9 });
    let trials = options.trials.unwrap_or(if options.quick { 1 } else { 5 });

    // First, while BPF run-time statistics are off: they add two clock reads to every run of
    // every BPF program, which BPF_PROG_TEST_RUN's timing would include.
    let packet = if options.skip_packet {
        Err("skipped (--skip-packet)".to_owned())
    } else {
        packet::measure().map_err(|e| format!("{e:#}"))
    };
    if let Err(e) = &packet {
        println!("    per-packet: {e}");
    }

    let paths = if options.skip_paths {
        Err("skipped (--skip-paths)".to_owned())
    } else {
        println!("==> paths: {repeats} repeats, order rotated per workload and repeat");
        measure_paths(&ctl, options.quick, repeats, options.xdp_mode).map_err(|e| format!("{e:#}"))
    };
    if let Err(e) = &paths {
        println!("    paths: {e}");
    }

    let failover = if options.skip_failover {
        Err("skipped (--skip-failover)".to_owned())
    } else {
        Ok(failover::measure(trials))
    };

    check_interrupted()?;
    let load_after = report::loadavg();
    let results = report::Results {
        machine,
        load_after,
        command: options.command.clone(),
        ctl,
        took: started.elapsed(),
        repeats,
        trials,
        paths,
        packet,
        failover,
    };
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| redis_ha_tests::workspace_root().join("bench-results"));
    let summary = report::write(&results, &out)?;
    println!();
    println!("{summary}");
    println!(
        "==> wrote {} (results.json, summary.md, *.svg) in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--topology seed`: throughput and failover on the seed's topology, redis-ha against the
/// seed's Sentinel + HAProxy + keepalived. Defaults: 2 repeats and 1 trial (--quick), else 5
/// repeats and 10 trials (the N); results under `bench-results/seed/`.
fn bench_seed(
    options: &Options,
    ctl: CtlInfo,
    machine: report::Machine,
    started: Instant,
) -> Result<()> {
    let repeats = options.repeats.unwrap_or(if options.quick { 2 } else { 5 });
    let trials = options.trials.unwrap_or(if options.quick { 1 } else { 10 });
    let paths = if options.skip_paths {
        Err("skipped (--skip-paths)".to_owned())
    } else {
        seed_paths::measure(options.quick, repeats, options.xdp_mode).map_err(|e| format!("{e:#}"))
    };
    if let Err(e) = &paths {
        println!("    paths: {e}");
    }
    check_interrupted()?;
    let failover = if options.skip_failover {
        Err("skipped (--skip-failover)".to_owned())
    } else {
        Ok(seed_failover::measure(trials, options.xdp_mode))
    };
    check_interrupted()?;
    let results = report::seed::SeedResults {
        machine,
        load_after: report::loadavg(),
        command: options.command.clone(),
        ctl,
        took: started.elapsed(),
        repeats,
        trials,
        xdp_mode: options.xdp_mode.as_str().to_owned(),
        paths,
        failover,
    };
    let out = options.out.clone().unwrap_or_else(|| {
        redis_ha_tests::workspace_root()
            .join("bench-results")
            .join("seed")
    });
    let summary = report::seed::write(&results, &out)?;
    println!();
    println!("{summary}");
    println!(
        "==> wrote {} (results.json, summary.md) in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A fresh release build of redis-ha-ctl; if the tree does not build right now (the tree is
/// shared with engineers mid-change), the newest binary already built, said so in the report.
pub(crate) fn ctl() -> Result<CtlInfo> {
    if let Some(path) = std::env::var_os("REDIS_HA_CTL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return Ok(CtlInfo {
            note: format!("REDIS_HA_CTL={}", path.display()),
            path,
        });
    }
    match crate::build_load::build() {
        Ok(path) => Ok(CtlInfo {
            path,
            note: "built by this run (cargo build --release -p redis-ha-ctl)".to_owned(),
        }),
        Err(e) => {
            let path = ctl_binary().context("and no redis-ha-ctl binary is built")?;
            let age = path
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or(Duration::ZERO);
            let note = format!(
                "STALE: the build failed ({}); used {} built {:.0} min earlier",
                first_line(&format!("{e:#}")),
                path.display(),
                age.as_secs_f64() / 60.0
            );
            println!("    warning: {note}");
            Ok(CtlInfo { path, note })
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn measure_paths(
    ctl: &CtlInfo,
    quick: bool,
    repeats: usize,
    xdp_mode: XdpMode,
) -> Result<paths::PathResults> {
    // A master and one replica: every path then has one busy server. With two replicas
    // behind the read port, a 2-CPU machine ran three busy processes for that path alone
    // and measured its scheduler (pipelined GET 0.82x direct unpinned; 0.92x with its p99
    // at 5.6x when both replicas shared one CPU); the balancing itself is covered by the
    // tests, not by this comparison of per-request cost.
    let mut tb = Testbed::up(TestbedOptions {
        tag: unique_tag(),
        backends: 2,
        xdp_mode,
        bridged_backends: false,
    })?;
    // Replication off the LB's veths, as replicas share a segment with their master on real
    // hosts. Through the LB, the master's replication streams (twice the bytes of every
    // write, with two replicas) crossed the veths the program is attached to, where they were
    // reordered and retransmitted, slowing writes only while the program was loaded: the
    // 16 KB SET measured 0.67-0.76x direct that way, 0.99x with this bridge (quick runs). The
    // client's paths through the LB are unchanged.
    let _replication = tb.separate_replication_network()?;
    println!(
        "    testbed {} up; replication over its own bridge ({})",
        tb.tag(),
        replication_ip(1)
    );
    // On for the throughput runs only (the XDP CPU column); off again before the failover part.
    let _stats = xdp::BpfStats::enable()?;
    paths::measure(&tb, &ctl.path, quick, repeats)
}

/// `--attack`: `kill -9` and SIGSTOP failovers (5 trials each by default) while every
/// controller's API is attacked and its peer port flooded; the write gaps, the invariants and
/// the controllers' largest resident memory. Results in `bench-results/attack/summary.md`.
fn bench_attack(options: &Options, machine: &report::Machine, started: Instant) -> Result<()> {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let trials = options.trials.unwrap_or(if options.quick { 1 } else { 5 });
    let (series, summary) = failover::measure_under_attack(trials);
    let mut md = String::new();
    writeln!(md, "# Failover while the controllers are attacked\n")?;
    writeln!(
        md,
        "Machine: {}. Command: `{}`. Took {:.0} s. {} trial(s) per fault, down_after_ms 1000.\n",
        machine.one_line(),
        options.command,
        started.elapsed().as_secs_f64(),
        trials
    )?;
    writeln!(
        md,
        "Attacks, for the whole series, on every controller at once: pipelined `SENTINEL MASTERS` / `INFO` \
         never read; up to 400 idle connections held; a 1 MB SET sent a byte every 10 ms on 8 connections; \
         random datagrams to the peer port at 2000/s.\n"
    )?;
    for fault in [failover::Fault::Kill9, failover::Fault::SigStop] {
        let gaps: Vec<String> = series
            .outcomes
            .iter()
            .filter(|o| o.fault == fault)
            .map(|o| format!("{:.0}", o.gap_ms))
            .collect();
        let median = failover::median_of(&series.outcomes, fault, |o| o.gap_ms);
        let lost: usize = series
            .outcomes
            .iter()
            .filter(|o| o.fault == fault)
            .map(|o| o.lost)
            .sum();
        let bar = match (fault, median) {
            (failover::Fault::Kill9, Some(m)) if m <= 1200.0 => " (bar ≤ 1200 ms: met)",
            (failover::Fault::Kill9, Some(_)) => " (bar ≤ 1200 ms: **missed**)",
            _ => "",
        };
        writeln!(
            md,
            "- `{}`: write gap median {}{bar}; trials [{}] ms; acknowledged writes lost: {lost}",
            fault.id(),
            median.map_or("–".to_owned(), |m| format!("{m:.0} ms")),
            gaps.join(", ")
        )?;
    }
    for e in &series.errors {
        writeln!(md, "- error: {e}")?;
    }
    if let Some(s) = &summary {
        let worst = s.rss_max_kib.iter().map(|(_, k)| *k).max().unwrap_or(0);
        writeln!(
            md,
            "- controllers' largest resident memory: {} (bar < 64 MB: {})",
            s.rss_max_kib
                .iter()
                .map(|(pid, k)| format!("pid {pid} {:.1} MB", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", "),
            if worst < 64 * 1024 {
                "met"
            } else {
                "**missed**"
            }
        )?;
        let c = &s.counters;
        writeln!(
            md,
            "- attackers: {} MB pipelined over {} connections; {} flood connections opened, {} refused or closed \
             by the controllers; {} bytes trickled over {} connections; {} datagrams",
            c.pipelined_bytes.load(Relaxed) / (1 << 20),
            c.pipeline_reconnects.load(Relaxed),
            c.flood_open.load(Relaxed),
            c.flood_refused_or_closed.load(Relaxed),
            c.trickled_bytes.load(Relaxed),
            c.trickle_reconnects.load(Relaxed),
            c.datagrams.load(Relaxed)
        )?;
    }
    let out = options.out.clone().unwrap_or_else(|| {
        redis_ha_tests::workspace_root()
            .join("bench-results")
            .join("attack")
    });
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("summary.md"), &md)?;
    println!("\n{md}");
    println!("==> wrote {}", out.join("summary.md").display());
    Ok(())
}
