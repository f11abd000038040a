//! The report of `cargo xtask bench --topology seed`: `results.json` and `summary.md`, with
//! every bar of the seed comparison checked and, where missed, by how much.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::super::CtlInfo;
use super::super::seed_failover::{FAULTS, SeedSeries};
use super::super::seed_paths::{Placement, SeedPath, SeedPathResults, SeedRun};
use super::super::seed_stack::{ADVERT_INT_S, SEED_DOWN_AFTER_MS};
use super::Machine;

pub struct SeedResults {
    pub machine: Machine,
    pub load_after: String,
    pub command: String,
    pub ctl: CtlInfo,
    pub took: Duration,
    pub repeats: usize,
    pub trials: usize,
    pub xdp_mode: String,
    pub paths: Result<SeedPathResults, String>,
    pub failover: Result<Vec<SeedSeries>, String>,
}

/// Writes `results.json` and `summary.md` into `out`; returns the summary.
pub fn write(r: &SeedResults, out: &Path) -> Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&to_json(r))?;
    std::fs::write(out.join("results.json"), json + "\n")?;
    let summary = markdown(r);
    std::fs::write(out.join("summary.md"), &summary)?;
    Ok(summary)
}

/// "met", or "MISSED by X" in the bar's own unit.
fn verdict(value: f64, bar: f64, at_least: bool, unit: &str) -> String {
    let ok = if at_least { value >= bar } else { value <= bar };
    if ok {
        "met".to_owned()
    } else {
        format!("**missed** by {:.2}{unit}", (value - bar).abs())
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

const WRITE_TARGET: [(Placement, f64); 2] = [(Placement::Remote, 0.90), (Placement::Local, 0.95)];

fn markdown(r: &SeedResults) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "# redis-ha against the seed's stack, on the seed's topology\n"
    );
    let _ = writeln!(
        s,
        "Machine: Linux {}, {} CPUs ({}), {}; load average {} at the start, {} at the end. \
         Command: `{}`. redis-ha-ctl: {}. Took {:.0} s. Data-plane hook: {}.\n",
        m.kernel,
        m.nproc,
        m.cpu_model,
        m.date,
        m.load_before,
        r.load_after,
        r.command,
        r.ctl.note,
        r.took.as_secs_f64(),
        r.xdp_mode
    );
    let _ = writeln!(
        s,
        "Topology: three nodes r1..r3 (198.18.0.11-.13) on one bridge, each with redis-server \
         :6379, the VIP 198.18.0.100; clients at 198.18.0.2 (same subnet). redis-ha: \
         `redis-ha-ctl run` with the data plane (`nat = \"full\"`, `[ha]`) on every node. The \
         seed's stack, on freshly built copies of the same namespaces with redis-ha not \
         running: on every node redis-sentinel (the seed's sentinel.conf: quorum 2, \
         down-after-milliseconds {SEED_DOWN_AFTER_MS}, as the seed itself sets; redis-ha uses \
         down_after_ms {SEED_DOWN_AFTER_MS} too), HAProxy with the seed's config (`bind *:6380` \
         → `tcp-check` role:master, `*:6381` → every server; `inter 1s fall 1 rise 1`), and \
         keepalived standing in for Pacemaker: VRRP, advert_int {ADVERT_INT_S} s (keepalived's \
         default; a backup takes over after about 3 × advert_int + skew), every node BACKUP \
         with `nopreempt` so a returning node does not take the VIP back.\n"
    );
    failover_md(&mut s, r);
    paths_md(&mut s, r);
    s
}

fn failover_md(s: &mut String, r: &SeedResults) {
    let _ = writeln!(s, "## Failover: write gap through the VIP\n");
    let series = match &r.failover {
        Ok(series) => series,
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
            return;
        }
    };
    let _ = writeln!(
        s,
        "{} trial(s) per fault and stack. Two writers from the same-subnet client through \
         VIP:6380, one on a persistent connection, one opening a connection per write, each \
         `SET` followed by `WAIT 1 50`. Write gap: the longest time between two acknowledged \
         writes around the fault, the worse of the two writers; median (min–max).\n",
        r.trials
    );
    let find = |name: &str| series.iter().find(|x| x.stack == name);
    let (ha, seed) = (find("redis-ha"), find("sentinel+haproxy+keepalived"));
    let _ = writeln!(
        s,
        "| fault | redis-ha | seed stack | redis-ha ÷ seed | target (redis-ha) | |\n|---|---:|---:|---:|---:|---|"
    );
    for fault in FAULTS {
        let g = |x: Option<&SeedSeries>| x.and_then(|x| x.gap(fault));
        let cell = |g: Option<(f64, f64, f64, usize)>| {
            g.map_or_else(
                || "–".to_owned(),
                |(m, lo, hi, n)| format!("{m:.0} ms ({lo:.0}–{hi:.0}, n={n})"),
            )
        };
        let (a, b) = (g(ha), g(seed));
        let ratio = a.zip(b).map(|(a, b)| a.0 / b.0);
        let v = a.map_or_else(
            || "not measured".to_owned(),
            |a| verdict(a.0, fault.target_ms(), false, " ms"),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | ≤ {:.0} ms | {v} |",
            fault.describe(),
            cell(a),
            cell(b),
            opt(ratio, 2),
            fault.target_ms()
        );
    }
    let _ = writeln!(
        s,
        "\nEvery trial's invariants (sums over trials; \"one master change\": every failover \
         manager that ran throughout logged exactly one `+switch-master` for a master fault, \
         none otherwise, and the master did not move again for 3 s):\n"
    );
    let _ = writeln!(
        s,
        "| stack | fault | trials | one master change | acked by a demoted master | lost, `WAIT 1` confirmed | unconfirmed acks (lost) | acked writes |\n|---|---|---:|---:|---:|---:|---:|---:|"
    );
    for x in series {
        for fault in FAULTS {
            let os: Vec<_> = x.outcomes.iter().filter(|o| o.fault == fault).collect();
            if os.is_empty() {
                continue;
            }
            let sum = |f: fn(&super::super::seed_failover::WriterOutcome) -> usize| {
                os.iter().map(|o| o.sum(f)).sum::<usize>()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {}/{} | {} | {} | {} ({}) | {} |",
                x.stack,
                fault.id(),
                os.len(),
                os.iter().filter(|o| o.one_master_change()).count(),
                os.len(),
                sum(|w| w.demoted_acks),
                sum(|w| w.lost_confirmed),
                sum(|w| w.unconfirmed),
                sum(|w| w.lost_unconfirmed),
                sum(|w| w.acked)
            );
        }
    }
    let errors: Vec<&String> = series.iter().flat_map(|x| &x.errors).collect();
    if !errors.is_empty() {
        let _ = writeln!(s, "\nTrials that could not be carried out:\n");
        for e in errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    let _ = writeln!(s);
}

fn paths_md(s: &mut String, r: &SeedResults) {
    let _ = writeln!(s, "## Throughput, p99 and LB CPU\n");
    let p = match &r.paths {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(s, "Not measured: {e}\n");
            return;
        }
    };
    let _ = writeln!(
        s,
        "redis-benchmark from the same-subnet client (CPU 0; every redis-server on CPU 1), {} \
         repeats, paths rotated; ratios are medians over repeats of path ÷ direct in the same \
         phase and repeat. Direct: the client straight to the master's :6379 (in the redis-ha \
         phase the master's node has the program attached, passing that traffic). Placements: {}.\n",
        r.repeats,
        p.notes.join("; ")
    );
    for (placement, target) in WRITE_TARGET {
        let _ = writeln!(s, "### {}\n", placement.id());
        let _ = writeln!(
            s,
            "| workload | test | direct rps (p99 ms) | VIP write ÷ direct (≥ {target:.2}) | p99 ÷ direct (≤ 1.20) | VIP read ÷ direct | HAProxy ÷ direct (seed phase) | VIP write ÷ HAProxy (≥ 1.30) |\n|---|---|---:|---|---|---:|---:|---|"
        );
        for wl in &p.workloads {
            for test in ["SET", "GET"] {
                let c = |path| p.cell(placement, path, wl.id, test);
                let (Some(direct), Some(vip)) = (c(SeedPath::Direct), c(SeedPath::VipWrite)) else {
                    continue;
                };
                let ratio = vip.rps_ratio.unwrap_or(f64::NAN);
                let p99 = vip.p99_ratio.unwrap_or(f64::NAN);
                let hap = c(SeedPath::Haproxy);
                let vs_hap = hap.as_ref().map(|h| vip.rps / h.rps);
                let _ = writeln!(
                    s,
                    "| {} | {test} | {:.0} ({:.3}) | {ratio:.2} {} | {p99:.2} {} | {} | {} | {} |",
                    wl.label,
                    direct.rps,
                    direct.p99_ms,
                    verdict(ratio, target, true, "×"),
                    verdict(p99, 1.2, false, "×"),
                    opt(c(SeedPath::VipRead).and_then(|x| x.rps_ratio), 2),
                    opt(hap.and_then(|h| h.rps_ratio), 2),
                    vs_hap.map_or_else(
                        || "–".to_owned(),
                        |v| format!("{v:.2} {}", verdict(v, 1.3, true, "×"))
                    ),
                );
            }
        }
        let _ = writeln!(
            s,
            "\nLB CPU, ms per 100k requests (median): the VIP holder's program run time (BPF \
             statistics, raw: not net of the statistics' own cost), the three nodes' programs \
             together, and the holder's HAProxy process (utime + stime); bar: the holder's \
             program ≤ 10 % of HAProxy.\n"
        );
        let _ = writeln!(
            s,
            "| workload | holder's program | all three programs | HAProxy | holder ÷ HAProxy | |\n|---|---:|---:|---:|---:|---|"
        );
        let holder: fn(&SeedRun) -> Option<u64> = |r| r.lb_cpu_ns;
        let all: fn(&SeedRun) -> Option<u64> = |r| r.all_programs_ns;
        for wl in &p.workloads {
            let prog = p.cpu_per_100k(placement, SeedPath::VipWrite, wl.id, holder);
            let progs = p.cpu_per_100k(placement, SeedPath::VipWrite, wl.id, all);
            let hap = p.cpu_per_100k(placement, SeedPath::Haproxy, wl.id, holder);
            let pct = prog.zip(hap).map(|(a, b)| 100.0 * a / b);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                wl.label,
                opt(prog.map(|v| v / 1e6), 2),
                opt(progs.map(|v| v / 1e6), 2),
                opt(hap.map(|v| v / 1e6), 2),
                pct.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} %")),
                pct.map_or_else(String::new, |v| verdict(v, 10.0, false, " points")),
            );
        }
        let _ = writeln!(s);
    }
}

fn to_json(r: &SeedResults) -> Value {
    let paths = match &r.paths {
        Ok(p) => json!({
            "notes": p.notes,
            "workloads": p.workloads.iter().map(|w| json!({
                "id": w.id, "label": w.label, "redis_benchmark_args": w.args().join(" "),
            })).collect::<Vec<_>>(),
            "runs": p.runs.iter().map(|run| json!({
                "placement": run.placement.id(), "path": run.path.id(),
                "workload": run.workload, "repeat": run.repeat, "requests": run.requests,
                "lb_cpu_ns": run.lb_cpu_ns, "all_programs_ns": run.all_programs_ns,
                "tests": run.tests.iter().map(|t| json!({
                    "test": t.test, "rps": t.rps, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms,
                    "p99_9_ms": t.p999_ms,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "error": e }),
    };
    let failover = match &r.failover {
        Ok(series) => json!(series.iter().map(|x| json!({
            "stack": x.stack, "errors": x.errors,
            "medians_ms": FAULTS.iter().map(|f| json!({
                "fault": f.id(), "write_gap_median_ms": x.gap(*f).map(|g| g.0),
            })).collect::<Vec<_>>(),
            "trials": x.outcomes.iter().map(|o| json!({
                "stack": o.stack, "fault": o.fault.id(), "master_before": o.master_before,
                "holder_before": o.holder_before, "master_after": o.master_after,
                "holder_after": o.holder_after, "resolved_ms": o.resolved_ms,
                "write_gap_ms": o.gap_ms(), "switch_master_per_manager": o.switches,
                "masters_seen": o.masters_seen, "one_master_change": o.one_master_change(),
                "writers": o.writers.iter().map(|w| json!({
                    "mode": w.mode, "gap_ms": w.gap_ms, "acked": w.acked,
                    "wait1_confirmed": w.confirmed, "unconfirmed": w.unconfirmed,
                    "lost_confirmed": w.lost_confirmed, "lost_unconfirmed": w.lost_unconfirmed,
                    "acked_by_demoted_master": w.demoted_acks, "failures": w.failures,
                    "connects": w.connects,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()),
        Err(e) => json!({ "error": e }),
    };
    json!({
        "topology": "seed",
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
        "xdp_mode": r.xdp_mode,
        "seed_stack": {
            "sentinel_down_after_ms": SEED_DOWN_AFTER_MS, "sentinel_quorum": 2,
            "keepalived_advert_int_s": ADVERT_INT_S, "keepalived_nopreempt": true,
        },
        "paths": paths,
        "failover": failover,
    })
}
