//! `cargo xtask test`: what CI runs.

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::testbed::PREFIX;
use redis_ha_tests::{describe, is_root, leftovers};

use crate::build_load::{build, cargo};
use crate::fuzz_parsers::fuzz_parsers;

/// Seconds each parser fuzz target runs in the suite: enough for the seeds' neighbourhood
/// (tens of thousands of inputs); the long runs are `cargo xtask fuzz-parsers`.
const FUZZ_SECONDS: u64 = 20;

pub fn test() -> Result<()> {
    if !is_root() {
        bail!("the end-to-end tests create namespaces and load XDP programs: run as root");
    }
    let ctl = build()?;
    // A testbed someone keeps running (`cargo xtask testbed up`) is not a leak of these tests.
    let before = leftovers(PREFIX)?;
    if !before.is_empty() {
        println!("==> already present before the tests, left alone: {before}");
    }

    // --workspace minus the eBPF crate, which only builds for the BPF target;
    // --no-fail-fast so one failing test binary does not hide the others' results.
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "redis-ha-ebpf",
        "--release",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
    .env("REDIS_HA_CTL", &ctl);
    println!("==> REDIS_HA_CTL={} {}", ctl.display(), describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("running `{}`", describe(&cmd)))?;

    let leaked = leftovers(PREFIX)?.since(&before);
    if !leaked.is_empty() {
        leaked.remove().context("removing what the tests leaked")?;
    }
    match (status.success(), leaked.is_empty()) {
        (true, true) => {
            println!("==> all tests passed; no namespace leaked");
            // After the tests, so a crash found here does not hide their results.
            fuzz_parsers(FUZZ_SECONDS)?;
            Ok(())
        }
        (false, true) => bail!("tests failed ({status})"),
        (ok, false) => bail!(
            "{}tests leaked {leaked} (removed now): a test must clean up after itself, also when it fails",
            if ok { "" } else { "tests failed, and " }
        ),
    }
}
