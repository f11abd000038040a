//! What the bench prints and writes: `bench-results/results.json` (every run), `summary.md`
//! (README-ready tables, labelled with the machine and the command) and SVG plots.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use redis_ha_tests::XdpMode;
use serde_json::{Value, json};

use super::CtlInfo;
use super::failover::{self, Fault, Series};
use super::packet::PacketResults;
use super::paths::{Cell, PATHS, PathKind, PathResults, Table};
use super::svg;

mod markdown;
mod plots;
pub mod seed;

use markdown::markdown;
use plots::plots;

/// The machine, as the report labels every number with it.
pub struct Machine {
    pub kernel: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub load_before: String,
    pub date: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".to_owned());
        Machine {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            load_before: loadavg(),
            date: redis_ha_tests::run(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%MZ"]))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "Linux {}, {} CPUs ({}), load average {}",
            self.kernel, self.nproc, self.cpu_model, self.load_before
        )
    }
}

/// The 1-minute load average: how busy the shared machine was.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

pub struct Results {
    pub machine: Machine,
    pub load_after: String,
    pub command: String,
    pub ctl: CtlInfo,
    pub took: Duration,
    pub repeats: usize,
    pub trials: usize,
    pub paths: Result<PathResults, String>,
    pub packet: Result<PacketResults, String>,
    pub failover: Result<Vec<Series>, String>,
}

fn path_title(p: PathKind) -> &'static str {
    match p {
        PathKind::Direct => "direct",
        PathKind::DirectXdp => "direct, program attached (reference)",
        PathKind::VipWrite => "redis-ha write port",
        PathKind::VipRead => "redis-ha read port",
        PathKind::Haproxy => "HAProxy (seed)",
    }
}

/// Where the redis-ha paths' program ran, for the report.
pub fn hook_label(mode: XdpMode) -> String {
    match mode {
        XdpMode::Tc => "the program at the TC ingress hook (TCX)".to_owned(),
        m => format!("XDP {m} mode"),
    }
}

fn workload_label(results: &PathResults, id: &str) -> String {
    results
        .workloads
        .iter()
        .find(|w| w.id == id)
        .map_or_else(|| id.to_owned(), |w| w.label.to_owned())
}

/// Writes everything into `out` and returns the Markdown summary.
pub fn write(r: &Results, out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Plots of an earlier run (e.g. of a workload no longer measured) must not linger.
    for entry in std::fs::read_dir(out)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "svg") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let json = serde_json::to_string_pretty(&to_json(r))?;
    std::fs::write(out.join("results.json"), json + "\n")?;
    for (name, svg) in plots(r) {
        std::fs::write(out.join(&name), svg).with_context(|| format!("writing {name}"))?;
    }
    let summary = markdown(r);
    std::fs::write(out.join("summary.md"), &summary)?;
    Ok(summary)
}

fn to_json(r: &Results) -> Value {
    let paths = match &r.paths {
        Ok(p) => {
            let table = p.table();
            json!({
                "workloads": p.workloads.iter().map(|w| json!({
                    "id": w.id, "label": w.label, "clients": w.clients, "pipeline": w.pipeline,
                    "value_bytes": w.value_bytes, "new_connection_per_request": w.churn,
                    "requests_per_test": w.requests,
                    "redis_benchmark_args": w.args().join(" "),
                })).collect::<Vec<_>>(),
                "paths": PATHS.iter().map(|p| json!({
                    "id": p.id(), "what": p.describe(), "address": p.addr().to_string(),
                })).collect::<Vec<_>>(),
                "runs": p.runs.iter().map(|run| json!({
                    "path": run.path.id(), "workload": run.workload, "repeat": run.repeat,
                    "requests": run.requests, "wall_s": run.wall.as_secs_f64(),
                    "lb_cpu_ns": run.lb_cpu_ns, "xdp_runs": run.xdp_runs,
                    "xdp_stats_floor_ns_per_run": run.xdp_floor_ns,
                    "tests": run.tests.iter().map(|t| json!({
                        "test": t.test, "rps": t.rps, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms,
                        "p99_9_ms": t.p999_ms, "distribution_pct_ms": t.distribution,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "medians": table.iter().map(|((wl, test, path), c)| json!({
                    "workload": wl, "test": test, "path": path.id(), "rps": c.rps,
                    "p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "p99_9_ms": c.p999_ms,
                    "rps_ratio_to_direct": c.rps_ratio.map(|r| r.0),
                    "rps_ratio_min_max": c.rps_ratio.map(|r| [r.1, r.2]),
                    "p99_ratio_to_direct": c.p99_ratio,
                })).collect::<Vec<_>>(),
                "lb_cpu_ms_per_100k_requests": p.workloads.iter().map(|w| json!({
                    "workload": w.id,
                    "xdp_write": p.cpu_per_100k(w.id, PathKind::VipWrite).map(|c| c.0 / 1e6),
                    "xdp_read": p.cpu_per_100k(w.id, PathKind::VipRead).map(|c| c.0 / 1e6),
                    "xdp_packets_per_request_write": p.cpu_per_100k(w.id, PathKind::VipWrite).and_then(|c| c.1),
                    "xdp_write_net_of_stats_floor": p.xdp_net_per_100k(w.id, PathKind::VipWrite).map(|c| c.0 / 1e6),
                    "xdp_read_net_of_stats_floor": p.xdp_net_per_100k(w.id, PathKind::VipRead).map(|c| c.0 / 1e6),
                    "xdp_stats_floor_ns_per_run": p.xdp_net_per_100k(w.id, PathKind::VipWrite).map(|c| c.1),
                    "xdp_stats_floor_measured_under_traffic": p.live_floor_ns.contains_key(w.id),
                    "haproxy": p.cpu_per_100k(w.id, PathKind::Haproxy).map(|c| c.0 / 1e6),
                })).collect::<Vec<_>>(),
                "clock_ticks_per_s": p.clock_ticks_per_s,
                "pinning": p.pinning.map(|p| p.describe()),
                "xdp_mode": p.xdp_mode.as_str(),
            })
        }
        Err(e) => json!({ "error": e }),
    };
    let packet = match &r.packet {
        Ok(p) => json!({
            "command": p.command, "took_s": p.took.as_secs_f64(), "table": p.raw,
            "bpf_stats_on": p.stats_on,
            "paths": p.paths.iter().map(|x| json!({
                "path": x.name, "ns_per_packet": x.ns_per_packet, "on_path_pct": x.on_path_pct,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "error": e }),
    };
    let failover = match &r.failover {
        Ok(series) => json!(series.iter().map(|s| json!({
            "stack": s.stack, "down_after_ms": s.down_after_ms, "errors": s.errors,
            "trials": s.outcomes.iter().map(|o| json!({
                "fault": o.fault.id(), "old_master": o.old_master.to_string(),
                "new_master": o.new_master.to_string(), "write_gap_ms": o.gap_ms,
                "gap_from_ms": o.gap_from_ms, "gap_to_ms": o.gap_to_ms,
                "switch_seen_ms": o.switch_seen_ms, "read_errors": o.read_errors,
                "read_error_from_ms": o.read_error_from_ms, "read_error_to_ms": o.read_error_to_ms,
                "acked_writes": o.acked, "lost_acked_writes": o.lost,
                "write_failures": o.write_failures,
                "old_master_write_connections_after_switch": o.old_master_conns_after_switch,
                "write_errors_top": o.write_error_kinds, "read_errors_top": o.read_error_kinds,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()),
        Err(e) => json!({ "error": e }),
    };
    json!({
        "machine": {
            "kernel": r.machine.kernel, "nproc": r.machine.nproc, "cpu_model": r.machine.cpu_model,
            "loadavg_1min_start": r.machine.load_before, "loadavg_1min_end": r.load_after,
            "date": r.machine.date,
        },
        "command": r.command,
        "redis_ha_ctl": { "path": r.ctl.path.display().to_string(), "note": r.ctl.note },
        "took_s": r.took.as_secs_f64(),
        "repeats": r.repeats,
        "failover_trials_per_fault": r.trials,
        "paths": paths,
        "per_packet": packet,
        "failover": failover,
    })
}
