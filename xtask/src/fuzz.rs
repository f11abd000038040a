//! `cargo xtask fuzz`: the packet fuzzer at length.
//!
//! The fuzzer itself is the packet test `fuzz::fuzz_frames` (tests/tests/packet/fuzz/), which
//! runs a short round in every `cargo xtask test`; this runs it with more frames and a seed
//! of the caller's choosing. Called through `cargo test` rather than linked, as the bench's
//! per-packet cost is: it loads the program from the redis-ha-ctl library, which xtask cannot
//! depend on (xtask must build before bpf-linker exists; it is what installs it).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::{describe, is_root};

use crate::bench::packet::packet_test;

/// The test's name, as `cargo test -- --exact` takes it.
const TEST: &str = "fuzz::fuzz_frames";

/// A program the frames go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FuzzHook {
    /// The XDP program.
    Xdp,
    /// The same program at the TC ingress hook.
    Tc,
    /// The TC egress program (a local backend's replies).
    Egress,
}

pub fn fuzz(seed: Option<u64>, frames: u64, hooks: &[FuzzHook]) -> Result<()> {
    if !is_root() {
        bail!("the fuzzer loads the XDP program and makes a network namespace: run as root");
    }
    if frames == 0 {
        bail!("--frames must be at least 1");
    }
    // Chosen here rather than in the test, so it is on screen before anything runs.
    let seed = seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        t.as_secs() ^ (u64::from(t.subsec_nanos()) << 20)
    });
    let hooks: Vec<&str> = if hooks.is_empty() {
        vec!["xdp", "tc", "egress"]
    } else {
        hooks
            .iter()
            .map(|h| match h {
                FuzzHook::Xdp => "xdp",
                FuzzHook::Tc => "tc",
                FuzzHook::Egress => "egress",
            })
            .collect()
    };
    let mut cmd = packet_test(TEST);
    cmd.env("RHA_FUZZ_SEED", seed.to_string())
        .env("RHA_FUZZ_FRAMES", frames.to_string())
        .env("RHA_FUZZ_HOOKS", hooks.join(","));
    println!(
        "==> seed {seed}, {frames} frames per hook ({}): RHA_FUZZ_SEED={seed} \
         RHA_FUZZ_FRAMES={frames} RHA_FUZZ_HOOKS={} {}",
        hooks.join(", "),
        hooks.join(","),
        describe(&cmd)
    );
    let status = cmd
        .status()
        .with_context(|| format!("running `{}`", describe(&cmd)))?;
    if !status.success() {
        bail!(
            "the fuzzer found a problem or could not run ({status}); replay: cargo xtask fuzz \
             --seed {seed} --frames {frames}"
        );
    }
    Ok(())
}
