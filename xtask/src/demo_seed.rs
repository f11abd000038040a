//! `cargo xtask demo --topology seed`: the stack redis-ha replaces, in its own shape — three
//! machines on one subnet, each with a redis-server, a controller and the data plane, the VIP
//! held by one of them — and the two failures that stack was built for: the master dies, and
//! the machine holding the VIP dies. Two clients write through the VIP all along (one on the
//! subnet, one behind a router); each failure shows the write gap they saw, who is master, who
//! holds the VIP, and how many acknowledged writes were lost.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::seed::trial::{SeedFault, SeedTrialOptions, SeedTrialOutcome, run_seed_trial};
use redis_ha_tests::{FULL_NAT, Netns, SeedCluster, XdpMode};

use crate::testbed::{seed_usage, up_seed};

/// Fresh connections made to the read port from each client.
const READ_CONNECTIONS: usize = 6;
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn demo(keep: bool, xdp_mode: XdpMode) -> Result<()> {
    if !FULL_NAT {
        bail!(
            "the seed demo sends traffic through the VIP, which on one subnet needs the data \
             plane's full NAT, and the harness does not turn it on yet (FULL_NAT in \
             tests/src/seed.rs); `cargo xtask demo --topology default` shows a failover on the \
             LB-node testbed meanwhile"
        );
    }
    let seed = up_seed(xdp_mode)?;
    let outcome = steps(&seed);
    if outcome.is_err() {
        eprintln!("{}", seed.log_tails(30));
        match seed.save_logs() {
            Ok(dir) => eprintln!("controller logs saved in {}", dir.display()),
            Err(e) => eprintln!("saving the controller logs: {e:#}"),
        }
    }
    if keep {
        let usage = seed_usage(&seed);
        seed.keep();
        println!("{usage}");
    } else {
        drop(seed);
        println!("==> testbed removed (keep it next time with --keep)");
    }
    outcome
}

fn steps(seed: &SeedCluster) -> Result<()> {
    println!("==> step 1/3: writes and reads through the VIP, from both clients");
    for ns in [seed.client(), seed.routed_client()] {
        through_the_vip(seed, ns)
            .with_context(|| format!("step 1/3 (traffic from {}) failed", ns.name()))?;
    }

    let options = SeedTrialOptions::new(seed);
    println!(
        "==> step 2/3: kill -9 of the master's redis-server (r{}), both clients writing through {}",
        seed.master()?,
        seed.vip_write()
    );
    let killed = run_seed_trial(seed, SeedFault::KillMaster, "demo-kill9", &options)
        .context("step 2/3 (kill -9 of the master) failed")?;
    show(&killed)?;
    println!(
        "    the old master r{} restarts empty: the controllers make it a replica",
        killed.master_before
    );
    seed.node(killed.master_before).redis().start()?;
    seed.wait_healthy(HEALTHY_TIMEOUT)
        .context("step 2/3 (the old master rejoining) failed")?;

    println!(
        "==> step 3/3: the node holding the VIP (r{}) dies: link down, controller, redis-server \
         and data plane gone at once",
        seed.holder()?
    );
    let lost = run_seed_trial(seed, SeedFault::LoseHolder, "demo-node", &options)
        .context("step 3/3 (loss of the VIP holder's node) failed")?;
    show(&lost)?;
    if killed.lost() + lost.lost() > 0 {
        bail!("acknowledged writes were lost");
    }
    Ok(())
}

/// SET and GET through the write port, then fresh connections to the read port: which node
/// answered each.
fn through_the_vip(seed: &SeedCluster, ns: &Netns) -> Result<()> {
    let key = format!("demo:{}", ns.name());
    let shown = |addr: SocketAddrV4, args: &[&str]| -> Result<String> {
        println!(
            "$ ip netns exec {} redis-cli -h {} -p {} {}",
            ns.name(),
            addr.ip(),
            addr.port(),
            args.join(" ")
        );
        let reply = ns.redis_cli(addr, args)?.trim().to_owned();
        println!("{reply}");
        Ok(reply)
    };
    if shown(seed.vip_write(), &["SET", &key, "hello"])? != "OK" {
        bail!("SET through the write port was not acknowledged");
    }
    if shown(seed.vip_write(), &["GET", &key])? != "hello" {
        bail!("GET through the write port does not return the value written");
    }
    let master = seed.master()?;
    let writer = seed.node_behind(ns, seed.vip_write())?;
    println!(
        "    the write port reached r{writer} (the controllers' master: r{master}); the VIP is on r{}",
        seed.holder()?
    );
    if writer != master {
        bail!("the write port reached r{writer}, not the master r{master}");
    }
    let mut spread: BTreeMap<usize, usize> = BTreeMap::new();
    for _ in 0..READ_CONNECTIONS {
        *spread
            .entry(seed.node_behind(ns, seed.vip_read())?)
            .or_default() += 1;
    }
    let spread: Vec<String> = spread.iter().map(|(n, c)| format!("r{n}: {c}")).collect();
    println!(
        "    {READ_CONNECTIONS} connections to the read port {}: {}",
        seed.vip_read(),
        spread.join(", ")
    );
    Ok(())
}

fn show(outcome: &SeedTrialOutcome) -> Result<()> {
    println!("{outcome}");
    if !outcome.resolved_once() {
        bail!("the failure was not resolved exactly once");
    }
    Ok(())
}
