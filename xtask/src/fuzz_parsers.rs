//! `cargo xtask fuzz-parsers`: the libFuzzer targets in `fuzz/` (cargo fuzz) on the parsers of
//! untrusted input: the API's RESP requests, the config file and its reload diff, the peer
//! datagrams. Each target runs for a bounded time from its seed corpus (`fuzz/corpus/<target>`,
//! only read) plus a working corpus under `target/fuzz-corpus/`, which later runs start from.
//! A crash fails the command, naming the input libFuzzer saved (`fuzz/artifacts/<target>/`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{describe, output_within, target_dir, workspace_root};

use crate::prerequisites::nightly;

/// The targets, as named in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["resp_parser", "config_loader", "peer_decoder"];

/// Builds every target, then runs each for `seconds`; fails at the first crash.
pub fn fuzz_parsers(seconds: u64) -> Result<()> {
    let root = workspace_root();
    println!("==> building the fuzz targets (cargo fuzz, nightly, with AddressSanitizer)");
    let started = Instant::now();
    let mut build = cargo_fuzz(root);
    build.arg("build");
    let status = build
        .status()
        .with_context(|| format!("running `{}`", describe(&build)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&build));
    }
    println!(
        "==> fuzz targets built in {} s",
        started.elapsed().as_secs()
    );

    for &target in TARGETS {
        let work = target_dir().join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let seeds = root.join("fuzz/corpus").join(target);
        let mut cmd = cargo_fuzz(root);
        // libFuzzer adds what it finds to the first directory only: the committed seeds stay as
        // they are.
        cmd.args(["run", target])
            .arg(&work)
            .arg(&seeds)
            .args(["--", "-print_final_stats=1"])
            .arg(format!("-max_total_time={seconds}"));
        println!("==> {}", describe(&cmd));
        // libFuzzer stops itself after max_total_time; the margin covers cargo's up-to-date
        // check and loading the corpora.
        let output = output_within(&mut cmd, Duration::from_secs(seconds + 300))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({}): a crash or a broken check; libFuzzer's \
                 report ends with:\n{}",
                output.status,
                tail.join("\n")
            );
        }
        let executions = stat(&stderr, "stat::number_of_executed_units:")
            .with_context(|| format!("{target}: libFuzzer printed no execution count"))?;
        println!("    {target}: {executions} inputs in {seconds} s, no crash");
    }
    Ok(())
}

/// `cargo fuzz` on nightly (it needs nightly's `-Z` flags), from the workspace root, where
/// it finds `fuzz/`.
fn cargo_fuzz(root: &Path) -> std::process::Command {
    let mut cmd = nightly("cargo");
    cmd.arg("fuzz").current_dir(root);
    cmd
}

/// The number after `key` in libFuzzer's final statistics.
fn stat(stderr: &str, key: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|n| n.trim().parse().ok())
}
