//! The redis-benchmark workloads and the parser for what redis-benchmark 7 prints.
//!
//! The default (non-`--csv`, non-`-q`) output is parsed because it is the only one carrying the
//! whole latency distribution ("Latency by percentile distribution"): `--csv` stops at p99,
//! and the issue asks for p99.9 and for distribution plots.

use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{Netns, describe, output_within};

/// One redis-benchmark configuration, run as `-t set,get` (or `-t get` on the read port).
#[derive(Clone, Debug)]
pub struct Workload {
    /// Short id used in file names and JSON keys.
    pub id: &'static str,
    /// What a reader of the table sees.
    pub label: &'static str,
    pub clients: u32,
    pub pipeline: u32,
    pub value_bytes: u32,
    /// `-k 0`: a new connection for every request (connection churn).
    pub churn: bool,
    /// `-n`: requests per test.
    pub requests: u64,
}

/// The five workloads of the comparison. Request counts aim at roughly 0.5 s (quick) or 1 s (full)
/// per test on the 2-core testbed: long enough for p99.9 to rest on tens of samples and for
/// HAProxy's CPU time (10 ms ticks) to count tens of ticks, short enough that the whole
/// comparison repeats 3 (quick) or 5 times within the time budget.
pub fn workloads(quick: bool) -> Vec<Workload> {
    let scale = if quick { 1 } else { 2 };
    let w = |id, label, clients, pipeline, value_bytes, churn, requests: u64| Workload {
        id,
        label,
        clients,
        pipeline,
        value_bytes,
        churn,
        requests: requests * scale,
    };
    vec![
        w("c1", "-c 1", 1, 1, 3, false, 8_000),
        w("c50", "-c 50", 50, 1, 3, false, 40_000),
        w("c50p16", "-c 50 -P 16", 50, 16, 3, false, 200_000),
        // 16 KB GETs run at about 100k/s: at 8,000 (16,000 full) a GET test lasted 0.15 s, and
        // its p99 swung from 0.6 to 1.0 ms between runs for direct alone.
        w("d16k", "-c 50 -d 16384", 50, 1, 16384, false, 40_000),
        // Closed connections leave no TIME_WAIT behind (see `paths::measure`), so churn runs
        // as long as the others instead of stopping short of the client's port range.
        w("churn", "-c 50 -k 0", 50, 1, 3, true, 20_000),
    ]
}

impl Workload {
    /// The redis-benchmark arguments (without `-h`/`-p`/`-t`).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-n".to_owned(),
            self.requests.to_string(),
            "-c".to_owned(),
            self.clients.to_string(),
        ];
        if self.pipeline > 1 {
            args.extend(["-P".to_owned(), self.pipeline.to_string()]);
        }
        if self.value_bytes != 3 {
            args.extend(["-d".to_owned(), self.value_bytes.to_string()]);
        }
        if self.churn {
            args.extend(["-k".to_owned(), "0".to_owned()]);
        }
        // Three decimals: at -c 1 latencies are tens of microseconds.
        args.extend(["--precision".to_owned(), "3".to_owned()]);
        args
    }
}

/// One test (SET or GET) of one redis-benchmark run.
#[derive(Clone, Debug, Default)]
pub struct TestResult {
    pub test: String,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// From the percentile distribution: the latency at the first listed percentile ≥ 99.9 %
    /// (redis-benchmark lists HdrHistogram percentile ticks, so this is a slight overestimate).
    pub p999_ms: f64,
    /// (percentile, latency ms) points of "Latency by percentile distribution", for plots.
    pub distribution: Vec<(f64, f64)>,
}

/// A short unmeasured PING run through `addr`: after the data plane is (re)loaded, the first
/// packets meet a cold program, cold flow table and veths just switched into XDP mode.
pub fn warm_up(client: &Netns, addr: SocketAddrV4) -> Result<()> {
    let mut cmd = client.command("redis-benchmark");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", "ping", "-n", "2000", "-c", "10", "-q"]);
    redis_ha_tests::run_within(&mut cmd, Duration::from_secs(60))?;
    Ok(())
}

/// Runs redis-benchmark from `client` against `addr`; `tests` is `set,get` or `get`.
pub fn run(
    client: &Netns,
    addr: SocketAddrV4,
    workload: &Workload,
    tests: &str,
    cpu: Option<usize>,
) -> Result<Vec<TestResult>> {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut cmd = client.command("taskset");
            cmd.args(["-c", &cpu.to_string(), "redis-benchmark"]);
            cmd
        }
        None => client.command("redis-benchmark"),
    };
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", tests])
        .args(workload.args());
    // Bounded: the slowest expected run (churn through a proxy) takes a few seconds; a
    // wedged path must not hang the bench.
    let output = output_within(&mut cmd, Duration::from_secs(180))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(&cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let results =
        parse(&stdout).with_context(|| format!("parsing the output of `{}`", describe(&cmd)))?;
    let expected = tests.split(',').count();
    if results.len() != expected {
        bail!(
            "`{}` reported {} tests instead of {expected}:\n{stdout}",
            describe(&cmd),
            results.len()
        );
    }
    Ok(results)
}

/// Parses redis-benchmark 7's default output: one `====== NAME ======` section per test.
pub fn parse(text: &str) -> Result<Vec<TestResult>> {
    let mut results: Vec<TestResult> = Vec::new();
    let mut in_distribution = false;
    let mut expect_summary_values = false;
    // Progress lines are separated by '\r' only; splitting on it too isolates the sections.
    for line in text.split(['\n', '\r']).map(str::trim) {
        if let Some(name) = line
            .strip_prefix("====== ")
            .and_then(|l| l.strip_suffix(" ======"))
        {
            // "SET: rps=..." progress and "====== SET ======" may share a line in odd
            // terminals; the split above keeps them apart.
            results.push(TestResult {
                test: name.trim().to_owned(),
                ..TestResult::default()
            });
            in_distribution = false;
            continue;
        }
        let Some(current) = results.last_mut() else {
            continue;
        };
        if line.starts_with("Latency by percentile distribution") {
            in_distribution = true;
            continue;
        }
        if line.starts_with("Cumulative distribution") || line.is_empty() {
            in_distribution = false;
        }
        if in_distribution {
            // "99.902% <= 0.183 milliseconds (cumulative count 19984)"
            let mut words = line.split_whitespace();
            let pct = words.next().and_then(|w| w.strip_suffix('%'));
            let ms = words.nth(1);
            if let (Some(pct), Some(ms)) = (pct, ms)
                && let (Ok(pct), Ok(ms)) = (pct.parse::<f64>(), ms.parse::<f64>())
            {
                current.distribution.push((pct, ms));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("throughput summary:") {
            current.rps = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("throughput in {line:?}"))?;
            continue;
        }
        if line.starts_with("avg") && line.contains("p50") {
            expect_summary_values = true;
            continue;
        }
        if expect_summary_values {
            expect_summary_values = false;
            // avg min p50 p95 p99 max
            let values: Vec<f64> = line
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if values.len() < 6 {
                bail!("unexpected latency summary {line:?}");
            }
            current.p50_ms = values[2];
            current.p99_ms = values[4];
        }
    }
    for r in &mut results {
        if r.rps <= 0.0 {
            bail!("no throughput summary for {}", r.test);
        }
        r.p999_ms = r
            .distribution
            .iter()
            .find(|(pct, _)| *pct >= 99.9)
            .or(r.distribution.last())
            .map(|(_, ms)| *ms)
            .with_context(|| format!("no latency distribution for {}", r.test))?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "SET: rps=0.0 (overall: -nan) avg_msec=-nan\r SET: rps=1.0\r====== SET ======
  2000 requests completed in 0.18 seconds
  1 parallel clients

Latency by percentile distribution:
0.000% <= 0.015 milliseconds (cumulative count 4)
50.000% <= 0.071 milliseconds (cumulative count 1000)
99.805% <= 0.151 milliseconds (cumulative count 1996)
99.902% <= 0.183 milliseconds (cumulative count 1998)
100.000% <= 2.727 milliseconds (cumulative count 2000)

Cumulative distribution of latencies:
99.020% <= 0.103 milliseconds (cumulative count 1980)

Summary:
  throughput summary: 16920.47 requests per second
  latency summary (msec):
          avg       min       p50       p95       p99       max
        0.057     0.008     0.071     0.095     0.103     2.727
====== GET ======
Latency by percentile distribution:
0.000% <= 0.010 milliseconds (cumulative count 4)
100.000% <= 0.500 milliseconds (cumulative count 2000)

Summary:
  throughput summary: 20000.00 requests per second
  latency summary (msec):
          avg       min       p50       p95       p99       max
        0.050     0.008     0.060     0.095     0.110     0.500
";

    #[test]
    fn parses_sections_summaries_and_p999() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].test, "SET");
        assert_eq!(r[0].rps, 16920.47);
        assert_eq!(r[0].p50_ms, 0.071);
        assert_eq!(r[0].p99_ms, 0.103);
        assert_eq!(r[0].p999_ms, 0.183);
        assert_eq!(r[0].distribution.len(), 5);
        assert_eq!(r[1].test, "GET");
        assert_eq!(r[1].p999_ms, 0.5);
    }

    #[test]
    fn workload_arguments() {
        let all = workloads(true);
        assert_eq!(all.len(), 5);
        let churn = all.iter().find(|w| w.churn).unwrap();
        let args = churn.args().join(" ");
        assert!(args.contains("-k 0"), "{args}");
        let piped = all.iter().find(|w| w.pipeline == 16).unwrap();
        assert!(piped.args().join(" ").contains("-P 16"));
    }
}
