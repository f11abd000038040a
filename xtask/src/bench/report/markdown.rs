//! `summary.md`: the tables of a bench run, the targets they are held to, and its gaps.

use super::*;

fn fmt_rps(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".to_owned()
    }
}

fn cell_rps(c: Option<&Cell>, is_direct: bool) -> String {
    match c {
        None => "–".to_owned(),
        Some(c) if is_direct => fmt_rps(c.rps),
        Some(c) => match c.rps_ratio {
            Some((m, lo, hi)) => format!("{} ({m:.2}×, {lo:.2}–{hi:.2})", fmt_rps(c.rps)),
            None => fmt_rps(c.rps),
        },
    }
}

fn cell_latency(c: Option<&Cell>) -> String {
    match c {
        None => "–".to_owned(),
        Some(c) => format!("{:.3} / {:.3} / {:.3}", c.p50_ms, c.p99_ms, c.p999_ms),
    }
}

pub(super) fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# redis-ha benchmark\n");
    let _ = writeln!(
        md,
        "- Machine: Linux {} · {} CPUs · {} · load average (1 min) {} at start, {} at end",
        m.kernel, m.nproc, m.cpu_model, m.load_before, r.load_after
    );
    let _ = writeln!(
        md,
        "- Command: `{}` · {} · took {:.0} s",
        r.command,
        m.date,
        r.took.as_secs_f64()
    );
    let _ = writeln!(md, "- redis-ha-ctl: {}", r.ctl.note);
    let _ = writeln!(
        md,
        "- Testbed: client, LB and redis-server 7.0 namespaces joined by veths. Paths: a \
         master and one replica, which replicates over a bridge of its own (198.19.0.0/24), \
         not through the LB; failovers: a master and two replicas. One run, so only the \
         ratios compare. Shared 2-core machines vary ±10–15 % run to run.{}\n",
        match &r.paths {
            Ok(PathResults {
                pinning: Some(p), ..
            }) => format!(" Paths: {}.", p.describe()),
            _ => String::new(),
        }
    );

    let mut gaps: Vec<String> = Vec::new();
    match &r.paths {
        Ok(p) => paths_markdown(&mut md, p, r.repeats),
        Err(e) => gaps.push(format!("paths, latency and LB CPU: {e}")),
    }
    match &r.packet {
        Ok(p) => {
            let _ = writeln!(md, "## Per-packet cost (BPF_PROG_TEST_RUN)\n");
            let _ = writeln!(md, "| path | ns/packet | packets proven on the path |");
            let _ = writeln!(md, "|---|---:|---:|");
            for x in &p.paths {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} | {} |",
                    x.name,
                    x.ns_per_packet,
                    x.on_path_pct
                        .map_or("–".to_owned(), |v| format!("{v:.2} %"))
                );
            }
            let _ = writeln!(
                md,
                "\nFrom `{}` (tests/tests/packet/measure.rs): 1,000,000 packets per path, the \
                 kernel's average per repeat; forwarding paths in runs of 250 repeats on a \
                 service mapped onto itself so every repeat takes the full path, proven by the \
                 program's counters. It includes the ~27 ns test-run harness. `TC:` rows: the \
                 same program at the TC hook, through the skb test run, whose harness costs \
                 more (compare the non-VIP pass rows, where the program does least). A repeated SYN \
                 finds the entry its previous repeat made, so the SYN rows price the \
                 re-admission of a known connection (its entry overwritten rather than \
                 inserted), about what a new connection's SYN costs.\n",
                p.command
            );
            if p.stats_on {
                let _ = writeln!(
                    md,
                    "**BPF run-time statistics were on during this measurement** \
                     (`kernel.bpf_stats_enabled = 1`, set outside the bench): every figure \
                     above includes two clock reads per packet (about 50 ns on a VM). Turn \
                     them off and run again for the program's own cost.\n"
                );
            }
        }
        Err(e) => gaps.push(format!("per-packet cost: {e}")),
    }
    match &r.failover {
        Ok(series) => failover_markdown(&mut md, series, r.trials, &mut gaps),
        Err(e) => gaps.push(format!("failover: {e}")),
    }
    bars_markdown(&mut md, r);
    let _ = writeln!(md, "## Gaps\n");
    if gaps.is_empty() {
        let _ = writeln!(md, "None: every part ran.\n");
    } else {
        for g in &gaps {
            let _ = writeln!(md, "- {}", g.replace('\n', " "));
        }
        md.push('\n');
    }
    md
}

fn paths_markdown(md: &mut String, p: &PathResults, repeats: usize) {
    let table = p.table();
    let _ = writeln!(md, "## Throughput (requests/s) and ratio to direct\n");
    let _ = writeln!(
        md,
        "Median of {repeats} repeats; in brackets the median over repeats of (path ÷ direct in \
         the same repeat), then its min–max. Paths alternate, in an order rotated for every \
         workload and repeat. `-k 0`: a new connection for every request; TIME_WAIT is off \
         in the client and LB namespaces (`net.ipv4.tcp_max_tw_buckets = 0`), so that no run \
         searches for ports among the closed connections of the runs before it.\n"
    );
    let header: Vec<&str> = PATHS.iter().map(|k| path_title(*k)).collect();
    let _ = writeln!(md, "| workload | test | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---:|".repeat(PATHS.len()));
    for w in &p.workloads {
        for test in ["SET", "GET"] {
            let cells: Vec<String> = PATHS
                .iter()
                .map(|k| {
                    cell_rps(
                        table.get(&(w.id.to_owned(), test.to_owned(), *k)),
                        *k == PathKind::Direct,
                    )
                })
                .collect();
            let _ = writeln!(md, "| `{}` | {test} | {} |", w.label, cells.join(" | "));
        }
    }
    let _ = writeln!(md, "\n## Latency p50 / p99 / p99.9 (ms)\n");
    let _ = writeln!(
        md,
        "Medians over repeats of redis-benchmark's own percentiles (p99.9 from its \
         percentile distribution). With `-P 16` a latency covers a pipeline of 16.\n"
    );
    let _ = writeln!(md, "| workload | test | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|---|{}", "---:|".repeat(PATHS.len()));
    for w in &p.workloads {
        for test in ["SET", "GET"] {
            let cells: Vec<String> = PATHS
                .iter()
                .map(|k| cell_latency(table.get(&(w.id.to_owned(), test.to_owned(), *k))))
                .collect();
            let _ = writeln!(md, "| `{}` | {test} | {} |", w.label, cells.join(" | "));
        }
    }
    let _ = writeln!(md, "\n## Load-balancer CPU per 100k requests\n");
    let _ = writeln!(
        md,
        "| workload | redis-ha write port (program): raw | net | redis-ha read port (program): raw | net | HAProxy | program write ÷ HAProxy: raw | net |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut floors = Vec::new();
    for w in &p.workloads {
        let xw = p.cpu_per_100k(w.id, PathKind::VipWrite);
        let xr = p.cpu_per_100k(w.id, PathKind::VipRead);
        let hp = p.cpu_per_100k(w.id, PathKind::Haproxy);
        let nw = p.xdp_net_per_100k(w.id, PathKind::VipWrite);
        let nr = p.xdp_net_per_100k(w.id, PathKind::VipRead);
        floors.extend(nw.iter().chain(nr.iter()).map(|n| n.1));
        let fmt = |c: Option<(f64, Option<f64>)>| match c {
            Some((ns, Some(pkts))) => format!("{:.2} ms ({pkts:.1} pkts/req)", ns / 1e6),
            Some((ns, None)) => format!("{:.2} ms", ns / 1e6),
            None => "–".to_owned(),
        };
        let net = |c: Option<(f64, f64)>| {
            c.map_or("–".to_owned(), |(ns, _)| format!("{:.2} ms", ns / 1e6))
        };
        let ratio = |x: Option<f64>| match (x, hp) {
            (Some(x), Some((h, _))) if h > 0.0 => format!("{:.1} %", 100.0 * x / h),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
            w.label,
            fmt(xw),
            net(nw),
            fmt(xr),
            net(nr),
            fmt(hp),
            ratio(xw.map(|c| c.0)),
            ratio(nw.map(|c| c.0)),
        );
    }
    let floor =
        crate::bench::paths::median(&floors).map_or("–".to_owned(), |f| format!("{f:.1} ns"));
    let test_run_floors: Vec<f64> = p.runs.iter().filter_map(|r| r.xdp_floor_ns).collect();
    let test_run_floor = crate::bench::paths::median(&test_run_floors)
        .map_or("–".to_owned(), |f| format!("{f:.1} ns"));
    let floor_method = if p.live_floor_ns.is_empty() {
        format!(
            "for a program that only returns XDP_PASS it counted {floor} per run here (median; \
             measured after every path run with a million BPF_PROG_TEST_RUN runs of such an XDP \
             program; XDP cannot run a second program in front of redis-ha's to measure it under \
             the traffic itself)"
        )
    } else {
        format!(
            "for a program that does nothing it counted {floor} per run here (median over the \
             workloads; each measured under its own traffic: one more run of the workload \
             through the write port with a two-instruction TC program attached in front of \
             redis-ha's on every LB interface; BPF_PROG_TEST_RUN's hot loop counts only \
             {test_run_floor} for such a program, but under traffic the clock and the statistics \
             are no longer in cache)"
        )
    };
    let _ = writeln!(
        md,
        "\nProgram raw: the program's `run_time_ns` delta (`bpftool prog show id N --json`, BPF \
         run-time statistics on) over the run, per 100k requests. It counts the program only — \
         not the veth driver, the redirect and the softirq around it, which the kernel would \
         spend routing the packet anyway (the direct path pays those too). It includes every \
         packet the program saw in the window (both directions, handshakes). With statistics \
         on, the kernel reads the clock before and after every run and adds the difference, \
         which includes part of the clock reads and the call into the program: {floor_method}. \
         Net: raw minus runs × that floor. The net figure leaves out the call into the \
         program (a real, if small, cost) along with the clock reads; the raw figure \
         overstates the program by the clock reads, so the truth lies between the two. HAProxy: utime+stime of its process \
         (/proc/PID/stat, all threads, {} ticks/s) over the run, health checks included; its \
         socket and softirq work in the kernel on behalf of other tasks is not counted either. \
         Softirq time per CPU is not used for either: every namespace shares the machine's \
         CPUs, and the softirq that runs the LB's receive path also runs the client's and the \
         backends' stacks, so it cannot be told apart.\n",
        p.clock_ticks_per_s
    );
    let _ = writeln!(
        md,
        "Paths: direct = {}; direct, program attached = {}; redis-ha = {}, loaded by \
         `redis-ha-ctl load` (fresh flow table every time it is reloaded); HAProxy = {}. \
         Workloads: `redis-benchmark -t set,get` from the client namespace ({}).\n",
        PathKind::Direct.describe(),
        PathKind::DirectXdp.describe(),
        hook_label(p.xdp_mode),
        PathKind::Haproxy.describe(),
        p.workloads
            .iter()
            .map(|w| format!("`{}`", w.args().join(" ")))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "Plots: `throughput-ratio.svg`, `latency-<workload>.svg`, `lb-cpu.svg`.\n"
    );
}

fn failover_markdown(md: &mut String, series: &[Series], trials: usize, gaps: &mut Vec<String>) {
    let _ = writeln!(md, "## Failover\n");
    let _ = writeln!(
        md,
        "{trials} trial(s) per fault; medians (min–max). Write gap: the longest time between \
         two acknowledged writes that ends after the fault and starts before the switch was \
         seen (a SET every ~3 ms, 100 ms timeouts; a reply in flight at the fault does not \
         end it). Read \
         errors: failed GETs on the read port (new connection per GET) between the fault and \
         the restore, and first-to-last window. Lost: acknowledged writes missing on the final \
         master. Old master: new write-side connections the balancer sent to the old master \
         after the switch until the end of the trial, which restores the old master (restart or SIGCONT) and waits until it replicates from the new one (HAProxy: sessions of the old master's server in \
         `redis_write`; redis-ha: new flows of its slot, which the data plane counts for both \
         ports, so the reader stops before the restore).\n"
    );
    let _ = writeln!(
        md,
        "| stack | down-after | fault | trials | write gap ms | switch seen ms | read errors | read error window ms | lost acked writes | old-master conns after switch |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in series {
        for e in &s.errors {
            gaps.push(e.clone());
        }
        for fault in [Fault::Kill9, Fault::SigStop] {
            let os: Vec<_> = s.outcomes.iter().filter(|o| o.fault == fault).collect();
            if os.is_empty() {
                continue;
            }
            let stat = |f: fn(&failover::Outcome) -> f64| {
                let v: Vec<f64> = os.iter().map(|o| f(o)).collect();
                let med = crate::bench::paths::median(&v).unwrap_or(f64::NAN);
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if v.len() > 1 {
                    format!("{med:.0} ({lo:.0}–{hi:.0})")
                } else {
                    format!("{med:.0}")
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} ms | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.stack,
                s.down_after_ms,
                fault.id(),
                os.len(),
                stat(|o| o.gap_ms),
                stat(|o| o.switch_seen_ms),
                stat(|o| o.read_errors as f64),
                stat(failover::Outcome::read_window_ms),
                os.iter()
                    .map(|o| o.lost.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                os.iter()
                    .map(|o| o.old_master_conns_after_switch.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nredis-ha: three controllers (tests/src/cluster.rs), quorum 2. Seed: three Debian \
         `redis-sentinel`s, one in each backend's namespace as the seed runs one per Redis host \
         (`sentinel monitor mymaster 198.18.1.11 6379 2`, down-after-milliseconds 1000, the rest \
         Debian's sentinel.conf), and the seed's HAProxy. Plot: `failover-timeline.svg`.\n"
    );
}

/// The bars, with by how much each is met or missed.
fn bars_markdown(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Against the targets\n");
    if let Ok(p) = &r.paths {
        let table: Table = p.table();
        let worst = |path: PathKind, f: fn(&Cell) -> Option<f64>, lowest: bool| {
            table
                .iter()
                .filter(|((_, _, k), _)| *k == path)
                .filter_map(|((wl, test, _), c)| {
                    f(c).map(|v| (v, format!("{} {test}", workload_label(p, wl))))
                })
                .reduce(|a, b| if (b.0 < a.0) == lowest { b } else { a })
        };
        for path in [PathKind::VipWrite, PathKind::VipRead] {
            if let Some((v, at)) = worst(path, |c| c.rps_ratio.map(|r| r.0), true) {
                let _ = writeln!(
                    md,
                    "- {} throughput ≥ 0.98× direct on every workload: {} — lowest {v:.2}× ({at}){}",
                    path_title(path),
                    if v >= 0.98 { "met" } else { "missed" },
                    if v < 0.98 {
                        format!(", {:.1} points short", (0.98 - v) * 100.0)
                    } else {
                        String::new()
                    }
                );
            }
            if let Some((v, at)) = worst(path, |c| c.p99_ratio, false) {
                let _ = writeln!(
                    md,
                    "- {} p99 within 10 % of direct: {} — highest {v:.2}× direct ({at})",
                    path_title(path),
                    if v <= 1.10 { "met" } else { "missed" },
                );
            }
        }
        let ratios: Vec<(f64, f64, &str)> = p
            .workloads
            .iter()
            .filter_map(|w| {
                let x = p.cpu_per_100k(w.id, PathKind::VipWrite)?.0;
                let n = p.xdp_net_per_100k(w.id, PathKind::VipWrite)?.0;
                let h = p.cpu_per_100k(w.id, PathKind::Haproxy)?.0;
                (h > 0.0).then_some((n / h, x / h, w.label))
            })
            .collect();
        if let Some((net, raw, at)) = ratios
            .iter()
            .copied()
            .reduce(|a, b| if b.0 > a.0 { b } else { a })
        {
            let _ = writeln!(
                md,
                "- LB CPU per request ≤ 5 % of HAProxy's: {} — highest {:.1} % net of the \
                 statistics' floor (`{at}`; {:.1} % raw; program time only, see above)",
                if net <= 0.05 { "met" } else { "missed" },
                net * 100.0,
                raw * 100.0
            );
        }
    }
    if let Ok(pk) = &r.packet
        && let Some(x) = pk
            .paths
            .iter()
            .find(|x| x.name.starts_with("write-port established"))
    {
        let _ = writeln!(
            md,
            "- write-port established flow ≤ 80 ns/packet: {} — {:.1} ns{}",
            if x.ns_per_packet <= 80.0 {
                "met"
            } else {
                "missed"
            },
            x.ns_per_packet,
            if pk.stats_on {
                " (BPF statistics were on: see the per-packet section)"
            } else {
                ""
            }
        );
    }
    if let Ok(series) = &r.failover {
        let find = |stack: &str, ms: u64| {
            series
                .iter()
                .find(|s| s.stack == stack && s.down_after_ms == ms)
        };
        if let (Some(ha), Some(seed)) = (find("redis-ha", 1000), find("sentinel+haproxy", 1000)) {
            for fault in [Fault::Kill9, Fault::SigStop] {
                if let (Some(a), Some(b)) = (
                    failover::median_of(&ha.outcomes, fault, |o| o.gap_ms),
                    failover::median_of(&seed.outcomes, fault, |o| o.gap_ms),
                ) {
                    let v = a / b;
                    let _ = writeln!(
                        md,
                        "- failover write gap median ≤ 0.5× the seed's at down-after 1000 ms ({}): {} — {v:.2}× ({a:.0} ms vs {b:.0} ms)",
                        fault.id(),
                        if v <= 0.5 { "met" } else { "missed" }
                    );
                }
            }
        }
    }
    md.push('\n');
}
