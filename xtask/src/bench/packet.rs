//! Part 4: per-packet cost of the XDP program's paths through BPF_PROG_TEST_RUN.
//!
//! This calls the packet test that already measures it (tests/tests/packet/measure.rs,
//! `measure_ns_per_packet`) instead of duplicating it: that test solves the pitfalls of
//! measuring a rewriting program on one reused buffer (a service mapped onto itself, runs of
//! 250 repeats from TTL 255, the program's own counters proving every packet took the path
//! named) and loads the program from the redis-ha-ctl library, which xtask cannot depend on
//! (xtask must build before bpf-linker exists; it is what installs it).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{describe, output_within};

use crate::build_load::cargo;

/// The test's name, as `cargo test -- --exact` takes it.
const TEST: &str = "measure::measure_ns_per_packet";

#[derive(Clone, Debug)]
pub struct PacketPath {
    pub name: String,
    pub ns_per_packet: f64,
    /// Share of packets the program's counters prove took the named path, in percent.
    pub on_path_pct: Option<f64>,
}

pub struct PacketResults {
    pub paths: Vec<PacketPath>,
    /// The test's whole table, for the record.
    pub raw: String,
    pub command: String,
    pub took: Duration,
    /// BPF run-time statistics were on around the measurement (someone else's
    /// `kernel.bpf_stats_enabled = 1`): every figure then includes their clock reads.
    pub stats_on: bool,
}

/// `cargo test` of one packet test (tests/tests/packet/) by its exact name, its output shown:
/// how xtask runs what loads the program, since it cannot link the library that does.
pub fn packet_test(exact_name: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "redis-ha-tests",
        "--test",
        "packet",
        "--",
        "--exact",
        exact_name,
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd
}

/// Whether the kernel's BPF run-time statistics are on (the sysctl, or a BPF_ENABLE_STATS
/// file descriptor someone holds: both show here).
fn stats_on() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

pub fn measure() -> Result<PacketResults> {
    let mut cmd = packet_test(TEST);
    let command = describe(&cmd);
    println!("==> per-packet cost: {command}");
    let stats_before = stats_on();
    if stats_before {
        println!(
            "    warning: BPF run-time statistics are on (kernel.bpf_stats_enabled = 1): the \
             figures will include their clock reads"
        );
    }
    let t0 = Instant::now();
    // Bounded generously: the first call may compile the test binary (a minute or two on two
    // busy cores); the measurement itself takes seconds.
    let output = output_within(&mut cmd, Duration::from_secs(900))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        bail!(
            "`{command}` failed ({}):\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let paths = parse(&stdout).with_context(|| format!("parsing the output of `{command}`"))?;
    Ok(PacketResults {
        paths,
        raw: table_text(&stdout),
        command,
        took: t0.elapsed(),
        stats_on: stats_before || stats_on(),
    })
}

/// The lines of the test's main table: after the `BPF_PROG_TEST_RUN, ...` title and the
/// column header, up to the first blank line.
fn table_lines(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| !l.starts_with("BPF_PROG_TEST_RUN,"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

fn table_text(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("BPF_PROG_TEST_RUN,"))
        .take_while(|l| !l.starts_with("test "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rows are `<path name> <ns/pkt> <repeat> <packets> <proof...> <share> %`: the name is every
/// word before the first number.
pub fn parse(text: &str) -> Result<Vec<PacketPath>> {
    let mut paths = Vec::new();
    for line in table_lines(text) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(first_number) = words.iter().position(|w| w.parse::<f64>().is_ok()) else {
            continue;
        };
        let on_path_pct = match words.as_slice() {
            [.., share, "%"] => share.parse().ok(),
            _ => None,
        };
        paths.push(PacketPath {
            name: words[..first_number].join(" "),
            ns_per_packet: words[first_number].parse()?,
            on_path_pct,
        });
    }
    if paths.is_empty() {
        bail!("no measurement table in:\n{text}");
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_measure_table() {
        let out = "\nrunning 1 test\n\nBPF_PROG_TEST_RUN, 1000000 packets per path (x)\n\
path                                   ns/pkt   repeat    packets  proof (program counters)         on path\n\
write-port SYN (new flow)                50.3      250    1000000  fwd_to_backend & new_flows       100.00 %\n\
non-VIP pass                             12.0  1000000    1000000  pass_not_service                 100.00 %\n\
\nFor comparison, one run\nwrite-port SYN (new flow) 30.0 x\ntest measure::measure_ns_per_packet ... ok\n";
        let p = parse(out).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "write-port SYN (new flow)");
        assert_eq!(p[0].ns_per_packet, 50.3);
        assert_eq!(p[0].on_path_pct, Some(100.0));
        assert_eq!(p[1].name, "non-VIP pass");
    }
}
