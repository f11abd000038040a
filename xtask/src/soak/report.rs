//! `bench-results/soak/summary.md` and `samples.csv`: per occurrence, per fault kind, the
//! controllers' resources over time, and the verdicts that decide the exit status.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::analysis::{
    FD_GROWTH, MIN_SAMPLES, Occurrence, ProcessTrend, RSS_GROWTH_FRACTION, RSS_GROWTH_KIB, Trend,
    by_fault, spread,
};
use super::faults::FaultRun;
use super::monitor::ResourceSample;

/// Everything the report shows besides the per-occurrence figures.
pub struct Totals {
    pub header: String,
    pub acked: u64,
    pub confirmed: u64,
    pub write_failures: u64,
    pub writer_connects: u64,
    pub final_master: String,
    pub published: u64,
    /// Per subscriber: (where, received, connections).
    pub subscribers: Vec<(String, u64, u64)>,
    pub reads: (u64, u64),
    pub churn: (u64, u64),
    pub failovers_before_first_fault: usize,
    pub maps_samples: u64,
    pub maps_errors: u64,
    pub notes: Vec<String>,
}

fn opt_ms(v: Option<u32>) -> String {
    v.map_or("–".to_owned(), |v| v.to_string())
}

fn secs(ms: u32) -> String {
    format!("{:.0}", f64::from(ms) / 1000.0)
}

/// The must-be-0 figures and growth that fail the soak, one line each; empty when it passed.
pub fn failures(
    runs: &[FaultRun],
    occ: &[Occurrence],
    trends: &[ProcessTrend],
    totals: &Totals,
) -> Vec<String> {
    let mut out = Vec::new();
    let sum = |f: fn(&Occurrence) -> u64| occ.iter().map(f).sum::<u64>();
    let lost_confirmed = sum(|o| o.lost_confirmed);
    if lost_confirmed > 0 {
        out.push(format!("{lost_confirmed} WAIT-confirmed write(s) lost"));
    }
    let demoted = sum(|o| o.demoted_acks);
    if demoted > 0 {
        out.push(format!(
            "{demoted} write(s) acknowledged by a demoted master"
        ));
    }
    let spurious = occ.iter().map(|o| o.spurious_failovers).sum::<usize>()
        + totals.failovers_before_first_fault;
    if spurious > 0 {
        out.push(format!("{spurious} spurious failover(s)"));
    }
    for r in runs.iter().filter(|r| r.error.is_some()) {
        out.push(format!(
            "{} at {} s could not be carried out: {}",
            r.fault.name(),
            secs(r.injected_ms),
            r.error.as_deref().unwrap_or_default()
        ));
    }
    out.extend(
        trends
            .iter()
            .filter_map(ProcessTrend::growth)
            .map(|g| format!("not flat: {g}")),
    );
    out
}

pub fn markdown(
    runs: &[FaultRun],
    occ: &[Occurrence],
    trends: &[ProcessTrend],
    flows: Option<Trend>,
    totals: &Totals,
) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "# Soak\n\n{}\n", totals.header)?;
    let verdicts = failures(runs, occ, trends, totals);
    if verdicts.is_empty() {
        writeln!(
            md,
            "**Passed**: every WAIT-confirmed write present on the final master, 0 writes acknowledged \
             by a demoted master, 0 spurious failovers, controllers' RSS and fds flat.\n"
        )?;
    } else {
        writeln!(md, "**Failed**:\n")?;
        for v in &verdicts {
            writeln!(md, "- {v}")?;
        }
        writeln!(md)?;
    }
    writeln!(
        md,
        "Workload: {} writes acknowledged ({} WAIT-confirmed), {} failed requests, {} writer connections; \
         {} messages published; reads ok/failed {}/{}; churned reads (a connection each) ok/failed {}/{}. \
         Final master: {}. Write-port samples: {} ({} failed).\n",
        totals.acked,
        totals.confirmed,
        totals.write_failures,
        totals.writer_connects,
        totals.published,
        totals.reads.0,
        totals.reads.1,
        totals.churn.0,
        totals.churn.1,
        totals.final_master,
        totals.maps_samples,
        totals.maps_errors
    )?;
    for (at, received, connects) in &totals.subscribers {
        writeln!(
            md,
            "- subscriber on {at}: {received} of {} messages received, {connects} connection(s)",
            totals.published
        )?;
    }
    for n in &totals.notes {
        writeln!(md, "- {n}")?;
    }

    writeln!(md, "\n## Per fault\n")?;
    writeln!(
        md,
        "| fault | n | write gap ms min / median / max | lost WAIT-confirmed | lost unconfirmed | acked by demoted master | failovers (expected) | spurious | pub/sub missed | read errors | errors |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for (fault, list) in by_fault(runs, occ) {
        let mut gaps: Vec<u32> = list.iter().filter_map(|(_, o)| o.gap_ms).collect();
        let gap =
            spread(&mut gaps).map_or("–".to_owned(), |(a, m, b)| format!("{a} / {m} / {b}"));
        let s = |f: fn(&Occurrence) -> u64| list.iter().map(|(_, o)| f(o)).sum::<u64>();
        writeln!(
            md,
            "| {} | {} | {gap} | {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            fault.name(),
            list.len(),
            s(|o| o.lost_confirmed),
            s(|o| o.lost_unconfirmed),
            s(|o| o.demoted_acks),
            list.iter().map(|(_, o)| o.failovers).sum::<usize>(),
            fault.expected_failovers() * list.len(),
            list.iter()
                .map(|(_, o)| o.spurious_failovers)
                .sum::<usize>(),
            s(|o| o.pubsub_missed.iter().sum()),
            s(|o| o.read_errors + o.churn_errors),
            list.iter().filter(|(r, _)| r.error.is_some()).count(),
        )?;
    }
    writeln!(
        md,
        "\nFailovers before the first fault (spurious): {}. {}\n",
        totals.failovers_before_first_fault,
        super::faults::not_on_default_topology()
    )?;

    writeln!(md, "## Every occurrence\n")?;
    writeln!(
        md,
        "| # | fault | target | at s | master before → after | write gap ms | acked | lost confirmed / unconfirmed | demoted acks | failovers | epoch bumps | spurious | pub/sub missed | read / churn errors | error |"
    )?;
    writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for (i, (r, o)) in runs.iter().zip(occ).enumerate() {
        let addr =
            |a: Option<std::net::SocketAddrV4>| a.map_or("?".to_owned(), |a| a.ip().to_string());
        writeln!(
            md,
            "| {} | {} | {} | {} | {} → {} | {} | {} | {} / {} | {} | {} | {} | {} | {:?} | {} / {} | {} |",
            i + 1,
            r.fault.name(),
            r.target,
            secs(r.injected_ms),
            addr(r.master_before),
            addr(r.master_after),
            opt_ms(o.gap_ms),
            o.acked,
            o.lost_confirmed,
            o.lost_unconfirmed,
            o.demoted_acks,
            o.failovers,
            o.epoch_bumps,
            o.spurious_failovers,
            o.pubsub_missed,
            o.read_errors,
            o.churn_errors,
            r.error
                .as_deref()
                .unwrap_or("")
                .replace('|', "/")
                .replace('\n', " "),
        )?;
    }

    writeln!(md, "\n## Controllers over time (sampled every 10 s)\n")?;
    writeln!(
        md,
        "Not flat means: RSS ends more than {} MiB and {:.0} % above its first sample, or fds more than {FD_GROWTH} \
         above; judged for processes sampled at least {MIN_SAMPLES} times (a restarted controller is a new process).\n",
        RSS_GROWTH_KIB / 1024,
        RSS_GROWTH_FRACTION * 100.0
    )?;
    writeln!(
        md,
        "| controller | pid | samples | minutes | RSS KiB first / last / max | RSS slope KiB/h | fds first / last / max | fds slope /h |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for t in trends {
        writeln!(
            md,
            "| c{} | {} | {} | {:.1} | {} / {} / {} | {:.0} | {} / {} / {} | {:.1} |",
            t.controller,
            t.pid,
            t.rss.samples,
            t.rss.minutes,
            t.rss.first,
            t.rss.last,
            t.rss.max,
            t.rss.per_hour,
            t.fds.first,
            t.fds.last,
            t.fds.max,
            t.fds.per_hour,
        )?;
    }
    match flows {
        Some(f) => writeln!(
            md,
            "\nConnection tables (FLOWS + FLOWS_SPILL entries), {} samples over {:.1} min: first {}, last {}, \
             max {}, slope {:.0}/h (the churning reader opens a connection every ~20 ms; entries of closed \
             connections live until the sweep).",
            f.samples, f.minutes, f.first, f.last, f.max, f.per_hour
        )?,
        None => writeln!(md, "\nConnection tables: no sample.")?,
    }
    writeln!(
        md,
        "\nDefinitions: a window runs from a fault's injection to the next one's; its write gap is the longest \
         time between two acknowledged writes that ends after the injection and starts before the fault was \
         undone. Lost: acknowledged writes of the window missing on the final master (pipelined EXISTS after \
         the last fault). Acked by a demoted master: the backend behind the writer's connection (CLIENT INFO's \
         laddr) was certainly not the write port's master from the SET's sending to its reply (sampled \
         every 250 ms; nothing is judged from the start of the last sample showing the old master to \
         the end of the first showing the new one). \
         Failovers: the write port moved to another backend (epoch bumps: its epoch changed)."
    )?;
    Ok(md)
}

/// One line per controller sample.
pub fn csv(samples: &[ResourceSample]) -> String {
    let mut out = String::from("t_s,controller,pid,rss_kib,fds,flows\n");
    for s in samples {
        let _ = writeln!(
            out,
            "{:.1},c{},{},{},{},{}",
            f64::from(s.at_ms) / 1000.0,
            s.controller,
            s.pid,
            s.rss_kib,
            s.fds,
            s.flows.map_or(String::new(), |f| f.to_string())
        );
    }
    out
}

pub fn write(dir: &Path, md: &str, samples: &[ResourceSample]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("summary.md"), md)?;
    std::fs::write(dir.join("samples.csv"), csv(samples))?;
    Ok(())
}
