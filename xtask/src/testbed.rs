//! `cargo xtask testbed up|down`: the testbed with the fixed tag `tb`, for manual work.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::testbed::{VIP, namespace_prefix};
use redis_ha_tests::{Testbed, TestbedOptions, XdpMode, cleanup_prefix, is_root, target_dir};

/// The manual testbed's tag: its namespaces are `rha-tb-*`.
pub const TAG: &str = "tb";

/// Where `up` writes the testbed's redis-ha-ctl config.
pub fn config_path() -> PathBuf {
    target_dir().join("testbed/redis-ha.toml")
}

/// Builds the `tb` testbed and writes its config to [`config_path`]. Dropping the result
/// tears it down; call `keep()` to leave it running.
pub fn up(xdp_mode: XdpMode) -> Result<Testbed> {
    println!(
        "==> building testbed {TAG} (namespaces {}*)",
        namespace_prefix(TAG)
    );
    let tb = Testbed::up(TestbedOptions {
        tag: TAG.to_owned(),
        backends: 3,
        xdp_mode,
    })?;
    let config = config_path();
    tb.write_config(&config)?;
    println!("    client  {} (198.18.0.2)", tb.client().name());
    println!(
        "    lb      {} (VIP {VIP}, interfaces {})",
        tb.lb().name(),
        tb.lb_interfaces().join(" ")
    );
    for b in tb.backends() {
        let role = if b.index() == 1 { "master" } else { "replica" };
        println!(
            "    {:<7} {} ({}, {role})",
            format!("r{}", b.index()),
            b.netns().name(),
            b.addr()
        );
    }
    println!(
        "    config  {} (xdp_mode = \"{xdp_mode}\")",
        config.display()
    );
    Ok(tb)
}

/// How to use a testbed left running.
pub fn print_usage() {
    let config = config_path();
    let client = format!("ip netns exec {}client", namespace_prefix(TAG));
    let lb = format!("{}lb", namespace_prefix(TAG));
    println!("==> testbed {TAG} is up");
    println!(
        "    load the data plane:   cargo xtask build-and-load --config {} --netns {lb}",
        config.display()
    );
    println!("    write port (master):   {client} redis-cli -h {VIP} -p 6380");
    println!("    read port (replicas):  {client} redis-cli -h {VIP} -p 6381");
    println!("    a backend directly:    {client} redis-cli -h 198.18.1.11 -p 6379");
    println!(
        "    a shell in the LB:     nsenter --net=/var/run/netns/{lb} bash   \
         (not `ip netns exec`: it hides the pins in /sys/fs/bpf)"
    );
    println!("    tear it down:          cargo xtask testbed down");
}

/// `cargo xtask testbed down`.
pub fn down() -> Result<()> {
    if !is_root() {
        bail!("removing the testbed needs root");
    }
    let removed = cleanup_prefix(&namespace_prefix(TAG))?;
    let config = config_path();
    if config.exists() {
        std::fs::remove_file(&config).with_context(|| format!("removing {}", config.display()))?;
    }
    if removed.is_empty() {
        println!("==> no testbed {TAG} was up");
    } else {
        println!("==> removed {removed}");
    }
    Ok(())
}
