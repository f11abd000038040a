//! `cargo xtask testbed up|down`: the testbed with the fixed tag `tb`, for manual work: the
//! single-LB [`Testbed`] by default, the two-LB [`HaCluster`] with `--lb-nodes 2`, the seed's
//! three machines on one subnet ([`SeedCluster`]) with `--topology seed`.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::ha::{GATEWAY, K3_IP};
use redis_ha_tests::seed::{ROUTED_CLIENT_IP, ROUTED_GATEWAY, ROUTER_IP, SEED_NETWORK};
use redis_ha_tests::testbed::{VIP, namespace_prefix};
use redis_ha_tests::{
    FULL_NAT, HaCluster, HaOptions, SeedCluster, SeedOptions, Testbed, TestbedOptions, XdpMode,
    cleanup_prefix, ctl_binary, is_root, target_dir,
};

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
        bridged_backends: false,
    })?;
    let config = config_path();
    tb.write_config(&config)?;
    println!("    client  {} (198.18.0.2)", tb.client().name());
    println!(
        "    lb      {} (VIP {VIP}, interfaces {})",
        tb.lb().name(),
        tb.lb_interfaces().join(" ")
    );
    print_backends(tb.backends());
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

/// Builds the `tb` HA testbed: two LB nodes, three controllers running. With `ha_section`
/// the controllers place the floating addresses; without, they go on lb1 by hand. Dropping
/// the result tears it down; call `keep()` to leave it running.
pub fn up_ha(xdp_mode: XdpMode, ha_section: bool) -> Result<HaCluster> {
    // The controllers must match the source; REDIS_HA_CTL names a binary to use instead.
    if std::env::var_os("REDIS_HA_CTL").is_none_or(|p| p.is_empty()) {
        crate::build_load::build()?;
    }
    println!(
        "==> building HA testbed {TAG} (namespaces {}*) with {}",
        namespace_prefix(TAG),
        ctl_binary()?.display()
    );
    let ha = HaCluster::up(HaOptions {
        tag: TAG.to_owned(),
        xdp_mode,
        ha_section,
        ..HaOptions::default()
    })?;
    if !ha_section {
        ha.assign_addresses(1)?;
    }
    let o = ha.options();
    println!(
        "    switch  {} (bridges {} 198.18.0.0/24, {} 198.18.1.0/24)",
        ha.switch().name(),
        ha.client_bridge(),
        ha.backend_bridge()
    );
    println!(
        "    client  {} (198.18.0.2/24 on {})",
        ha.client().name(),
        ha.client_interface()
    );
    for lb in ha.lbs() {
        let n = lb.index();
        println!(
            "    lb{n}     {} ({} {} on {}, {} {} on {}; controller lb{n}{})",
            lb.netns().name(),
            lb.client_ip(),
            lb.client_mac()?,
            lb.client_interface(),
            lb.backend_ip(),
            lb.backend_mac()?,
            lb.backend_interface(),
            if ha_section {
                format!(", priority {}", o.priorities[n - 1])
            } else {
                String::new()
            },
        );
    }
    println!(
        "    k3      {} ({K3_IP}, controller c3: votes only)",
        ha.k3().name()
    );
    print_backends(ha.backends());
    let holders = ha.address_holders()?;
    println!(
        "    VIP {VIP} held by {:?}, gateway {GATEWAY} by {:?}{}",
        holders.vip,
        holders.gateway,
        if ha_section {
            ""
        } else {
            " (placed by hand: no [ha] section)"
        }
    );
    for c in ha.controllers() {
        println!("    config  {}", c.config_path().display());
    }
    Ok(ha)
}

/// How to use the HA testbed left running.
pub fn print_ha_usage(ha_section: bool) {
    let prefix = namespace_prefix(TAG);
    let client = format!("ip netns exec {prefix}client");
    let ctl = ctl_binary().map_or_else(|_| "redis-ha-ctl".into(), |p| p.display().to_string());
    let configs = std::env::temp_dir().join(format!("redis-ha-{TAG}/controllers"));
    println!("==> HA testbed {TAG} is up");
    println!("    write port (master):   {client} redis-cli -h {VIP} -p 6380");
    println!("    read port (replicas):  {client} redis-cli -h {VIP} -p 6381");
    println!(
        "    controller status:     nsenter --net=/var/run/netns/{prefix}lb1 {ctl} status --config {}/lb1.toml",
        configs.display()
    );
    println!(
        "                           (lb2: {prefix}lb2 and lb2.toml; c3: {prefix}k3 and c3.toml)"
    );
    println!(
        "    a data plane's maps:   nsenter --net=/var/run/netns/{prefix}lb1 {ctl} maps --config {}/lb1.toml",
        configs.display()
    );
    println!(
        "    who holds the VIP:     ip -n {prefix}lb1 -br -4 addr; ip -n {prefix}lb2 -br -4 addr; ip -n {prefix}client neigh"
    );
    println!("    watch ARP:             ip netns exec {prefix}sw tcpdump -e -n -i {prefix}bc arp");
    println!(
        "    crash lb1:             ip -n {prefix}sw link set {prefix}c1 down; ip -n {prefix}sw link set {prefix}b1 down; kill -9 $(ip netns pids {prefix}lb1)"
    );
    if !ha_section {
        println!(
            "    move the VIP by hand:  ip -n {prefix}lb1 addr del {VIP}/24 dev {prefix}1c; ip -n {prefix}lb1 addr del {GATEWAY}/24 dev {prefix}1b"
        );
        println!(
            "                           ip -n {prefix}lb2 addr add {VIP}/24 dev {prefix}2c; ip -n {prefix}lb2 addr add {GATEWAY}/24 dev {prefix}2b"
        );
        println!(
            "                           ip netns exec {prefix}lb2 arping -U -c 1 -I {prefix}2c {VIP}; ip netns exec {prefix}lb2 arping -U -c 1 -I {prefix}2b {GATEWAY}"
        );
    }
    println!("    controller logs:       {}/*.log", configs.display());
    println!("    tear it down:          cargo xtask testbed down");
}

/// Builds the `tb` seed testbed: three nodes, each with a redis-server, a controller and the
/// data plane, the VIP held by one; a client on the subnet and one behind a router. Dropping
/// the result tears it down; call `keep()` to leave it running.
pub fn up_seed(xdp_mode: XdpMode) -> Result<SeedCluster> {
    // The controllers must match the source; REDIS_HA_CTL names a binary to use instead.
    if std::env::var_os("REDIS_HA_CTL").is_none_or(|p| p.is_empty()) {
        crate::build_load::build()?;
    }
    println!(
        "==> building seed testbed {TAG} (namespaces {}*) with {}",
        namespace_prefix(TAG),
        ctl_binary()?.display()
    );
    let seed = SeedCluster::up(SeedOptions {
        tag: TAG.to_owned(),
        xdp_mode,
        ..SeedOptions::default()
    })?;
    let master = seed.master()?;
    let holder = seed.holder()?;
    println!(
        "    switch  {} (bridge {}, {SEED_NETWORK})",
        seed.switch().name(),
        seed.bridge()
    );
    for node in seed.nodes() {
        let n = node.index();
        let mut roles = vec![if n == master {
            "redis master"
        } else {
            "redis replica"
        }];
        if n == holder {
            roles.push("holds the VIP");
        }
        println!(
            "    r{n}      {} ({} {} on {}: redis-server :6379, controller r{n} :26379, \
             data plane; {})",
            node.netns().name(),
            node.ip(),
            node.mac()?,
            node.interface(),
            roles.join(", ")
        );
    }
    println!(
        "    client  {} ({} on the subnet)",
        seed.client().name(),
        redis_ha_tests::testbed::CLIENT_IP
    );
    println!(
        "    router  {} ({ROUTER_IP}, {ROUTED_GATEWAY})",
        seed.router().name()
    );
    println!(
        "    routed  {} ({ROUTED_CLIENT_IP}, via the router)",
        seed.routed_client().name()
    );
    let o = seed.options();
    println!(
        "    xdp_mode = \"{}\", full NAT {}, down_after_ms {}, ha.down_after_ms {}; configs and logs in {}/controllers",
        o.xdp_mode,
        if o.full_nat { "on" } else { "off" },
        o.down_after_ms,
        o.ha_down_after_ms,
        seed.dir().display()
    );
    Ok(seed)
}

/// How to use the seed testbed left running.
pub fn seed_usage(seed: &SeedCluster) -> String {
    let prefix = namespace_prefix(TAG);
    let client = format!("ip netns exec {}", seed.client().name());
    let routed = format!("ip netns exec {}", seed.routed_client().name());
    let ctl = ctl_binary().map_or_else(|_| "redis-ha-ctl".into(), |p| p.display().to_string());
    let configs = seed.dir().join("controllers");
    let mut lines = vec![
        format!("==> seed testbed {TAG} is up"),
        format!("    write port (master):   {client} redis-cli -h {VIP} -p 6380"),
        format!("    read port (replicas):  {client} redis-cli -h {VIP} -p 6381"),
        format!("    from the routed client: {routed} redis-cli -h {VIP} -p 6380"),
        format!(
            "    Sentinel API:          {client} redis-cli -h 198.18.0.11 -p 26379 SENTINEL get-master-addr-by-name mymaster"
        ),
        format!(
            "    controller status:     nsenter --net=/var/run/netns/{prefix}r1 {ctl} status --config {}/r1.toml   (r2, r3 alike)",
            configs.display()
        ),
        format!(
            "    a data plane's maps:   nsenter --net=/var/run/netns/{prefix}r1 {ctl} maps --config {}/r1.toml",
            configs.display()
        ),
        format!(
            "    who holds the VIP:     for n in 1 2 3; do ip -n {prefix}r$n -br -4 addr show dev {prefix}r$n; done"
        ),
        format!(
            "    kill -9 r1's redis:    kill -9 $(ip netns pids {prefix}r1 | xargs ps -o pid= -o comm= -p | awk '/redis-server/ {{print $1}}')"
        ),
        format!(
            "    lose node r1:          ip -n {prefix}sw link set {prefix}s1 down; kill -9 $(ip netns pids {prefix}r1)"
        ),
        format!("    controller logs:       {}/*.log", configs.display()),
        "    tear it down:          cargo xtask testbed down".to_owned(),
    ];
    if !FULL_NAT {
        lines.push(
            "    note: traffic through the VIP needs the data plane's full NAT, which the configs \
             do not ask for yet (FULL_NAT in tests/src/seed.rs); until then the holder answers \
             ARP for the VIP but redis-cli through it gets no answer"
                .to_owned(),
        );
    }
    lines.join("\n")
}

/// `cargo xtask testbed down`: any of the testbeds (all use the `rha-tb-` namespaces and the
/// `redis-ha-tb` pin and temporary directories).
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

/// One line per backend namespace: its name, address and starting role.
pub fn print_backends(backends: &[redis_ha_tests::Backend]) {
    for b in backends {
        let role = if b.index() == 1 { "master" } else { "replica" };
        println!(
            "    {:<7} {} ({}, {role})",
            format!("r{}", b.index()),
            b.netns().name(),
            b.addr()
        );
    }
}
