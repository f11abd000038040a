//! The SVG plots of a bench run: latency per workload, LB CPU, the failover timeline.

use super::*;

pub(super) fn plots(r: &Results) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(p) = &r.paths {
        let table = p.table();
        let mut categories = Vec::new();
        let mut series: Vec<(String, Vec<Option<f64>>)> =
            [PathKind::VipWrite, PathKind::VipRead, PathKind::Haproxy]
                .iter()
                .map(|k| (path_title(*k).to_owned(), Vec::new()))
                .collect();
        for w in &p.workloads {
            for test in ["SET", "GET"] {
                categories.push(format!("{} {test}", w.id));
                for (i, k) in [PathKind::VipWrite, PathKind::VipRead, PathKind::Haproxy]
                    .iter()
                    .enumerate()
                {
                    let v = table
                        .get(&(w.id.to_owned(), test.to_owned(), *k))
                        .and_then(|c| c.rps_ratio.map(|r| r.0));
                    series[i].1.push(v);
                }
            }
        }
        out.push((
            "throughput-ratio.svg".to_owned(),
            svg::bars(
                "Throughput relative to direct (median over repeats; 1.0 = direct)",
                "× direct",
                &categories,
                &series,
                Some(1.0),
            ),
        ));
        for w in &p.workloads {
            let lines: Vec<(String, Vec<(f64, f64)>)> = PATHS
                .iter()
                .filter_map(|k| {
                    let c = table.get(&(w.id.to_owned(), "GET".to_owned(), *k))?;
                    let (i, j) = c.median_run;
                    Some((
                        path_title(*k).to_owned(),
                        p.runs[i].tests[j].distribution.clone(),
                    ))
                })
                .collect();
            out.push((
                format!("latency-{}.svg", w.id),
                svg::percentiles(
                    &format!(
                        "GET latency by percentile, {} (run with median throughput)",
                        w.label
                    ),
                    &lines,
                ),
            ));
        }
        let mut cpu_series: Vec<(String, Vec<Option<f64>>)> =
            [PathKind::VipWrite, PathKind::VipRead, PathKind::Haproxy]
                .iter()
                .map(|k| {
                    (
                        match k {
                            PathKind::Haproxy => "HAProxy process (user+sys)".to_owned(),
                            _ => format!("{} program run time", path_title(*k)),
                        },
                        p.workloads
                            .iter()
                            .map(|w| p.cpu_per_100k(w.id, *k).map(|c| c.0 / 1e6))
                            .collect(),
                    )
                })
                .collect();
        cpu_series.insert(
            1,
            (
                format!(
                    "{} program, net of the statistics' floor",
                    path_title(PathKind::VipWrite)
                ),
                p.workloads
                    .iter()
                    .map(|w| {
                        p.xdp_net_per_100k(w.id, PathKind::VipWrite)
                            .map(|c| c.0 / 1e6)
                    })
                    .collect(),
            ),
        );
        out.push((
            "lb-cpu.svg".to_owned(),
            svg::bars(
                "Load-balancer CPU per 100k requests (ms)",
                "ms CPU / 100k requests",
                &p.workloads
                    .iter()
                    .map(|w| w.id.to_owned())
                    .collect::<Vec<_>>(),
                &cpu_series,
                None,
            ),
        ));
    }
    if let Ok(series) = &r.failover {
        let rows: Vec<svg::TimelineRow> = series
            .iter()
            .flat_map(|s| s.outcomes.iter())
            .map(|o| svg::TimelineRow {
                label: format!("{} {}ms {}", o.stack, o.down_after_ms, o.fault.id()),
                write_gap: (o.gap_from_ms, o.gap_to_ms),
                read_errors: o.read_error_from_ms.zip(o.read_error_to_ms),
                switch_seen: o.switch_seen_ms,
            })
            .collect();
        if !rows.is_empty() {
            out.push((
                "failover-timeline.svg".to_owned(),
                svg::timeline("Failover: write gap and read errors per trial", &rows),
            ));
        }
    }
    out
}
