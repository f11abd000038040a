//! The seed's own topology (`redis_ha_tests::seed`): three machines r1..r3 on one subnet, each
//! with a redis-server, a controller and the data plane, the VIP held by one of them, a client
//! on the subnet and one behind a router.
//!
//! The topology, replication, the controllers' agreement on the master and on one VIP holder,
//! failovers seen through the Sentinel API, the VIP moving when its node dies and the cleanup
//! first; then traffic through the VIP from both clients (full NAT: `redis_ha_tests::FULL_NAT`),
//! wherever the master is, across a kill -9 of the master and the loss of the VIP holder.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use redis_ha_tests::cluster::{Replication, replication};
use redis_ha_tests::netns::in_netns;
use redis_ha_tests::seed::trial::{SeedFault, SeedTrialOptions, run_seed_trial};
use redis_ha_tests::seed::{NODES, ROUTED_CLIENT_IP, node_ip};
use redis_ha_tests::testbed::{CLIENT_IP, namespace_prefix};
use redis_ha_tests::trial::{Reply, Resp};
use redis_ha_tests::{
    FULL_NAT, Netns, SeedCluster, SeedOptions, leftovers, list_namespaces, require_root, wait_until,
};

/// Bound for a failover or a VIP move to show, with down_after_ms 1000 and ha.down_after_ms 200.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(20);
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `body` on a fresh seed; if it fails, prints the end of every controller's log. Then
/// checks that dropping the seed left nothing behind.
fn on_seed(options: SeedOptions, body: impl FnOnce(&SeedCluster) -> Result<()>) -> Result<()> {
    require_root();
    let seed = SeedCluster::up(options)?;
    let tag = seed.tag().to_owned();
    let result = body(&seed);
    if result.is_err() {
        eprintln!("{}", seed.log_tails(40));
        if let Ok(dir) = seed.save_logs() {
            eprintln!("controller logs saved in {}", dir.display());
        }
    }
    drop(seed);
    let left = leftovers(&namespace_prefix(&tag))?;
    ensure!(left.is_empty(), "the seed testbed left {left}");
    result
}

#[test]
fn the_seed_comes_up_with_one_master_and_one_vip_holder_and_leaves_nothing() -> Result<()> {
    on_seed(SeedOptions::default(), |seed| {
        let names = list_namespaces(&namespace_prefix(seed.tag()))?;
        ensure!(
            names.len() == NODES + 4,
            "switch, client, router, routed client and one per node: {names:?}"
        );

        // Every controller names r1, the seed's first master, as Sentinel would.
        for n in 1..=NODES {
            ensure!(
                seed.sentinel_master(n)? == seed.node(1).redis().addr(),
                "controller r{n} names {}",
                seed.sentinel_master(n)?
            );
        }
        for n in 2..=NODES {
            let role = replication(seed.node(n).redis())?;
            ensure!(
                role == Replication::Replica {
                    master: node_ip(1),
                    link_up: true
                },
                "r{n}: {role:?}"
            );
        }

        // One holder, r1 (the highest ha.priority), and it answers ARP for the VIP.
        ensure!(seed.holders()? == [1], "holders: {:?}", seed.holders()?);
        ensure!(
            seed.vip_arp_owner()? == Some(seed.node(1).mac()?),
            "the client's ARP for the VIP: {:?}",
            seed.vip_arp_owner()?
        );

        // Both clients reach every node directly: the same-subnet one on-link, the routed one
        // through the router both ways. Replication runs node to node.
        let master = seed.node(1).redis().addr();
        ensure!(
            seed.client()
                .redis_cli(master, &["SET", "seed:direct", "v"])?
                .trim()
                == "OK"
        );
        for ns in [seed.client(), seed.routed_client()] {
            for node in seed.nodes() {
                let addr = node.redis().addr();
                wait_until(
                    &format!("seed:direct on {addr} from {}", ns.name()),
                    Duration::from_secs(5),
                    Duration::from_millis(50),
                    || {
                        Ok((ns.redis_cli(addr, &["GET", "seed:direct"])?.trim() == "v")
                            .then_some(()))
                    },
                )?;
            }
        }

        // The configs ask for full NAT exactly when the harness says so, and the controller
        // accepts them.
        let config = std::fs::read_to_string(seed.controller(1).config_path())?;
        ensure!(
            config.contains("nat = \"full\"") == FULL_NAT,
            "FULL_NAT = {FULL_NAT}, config:\n{config}"
        );
        let mut check = std::process::Command::new(redis_ha_tests::ctl_binary()?);
        check
            .arg("check-config")
            .arg(seed.controller(1).config_path());
        redis_ha_tests::run(&mut check).context("check-config on r1's config")?;
        Ok(())
    })
}

#[test]
fn a_panic_with_the_seed_up_still_removes_everything() -> Result<()> {
    require_root();
    let options = SeedOptions::default();
    let tag = options.tag.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let seed = SeedCluster::up(options).expect("seed up");
        // A failed node too: its pinned data plane and stale VIP must go as well.
        seed.fail_node(1).expect("fail r1");
        panic!("deliberate panic with seed {} up", seed.tag());
    }));
    ensure!(outcome.is_err());
    let left = leftovers(&namespace_prefix(&tag))?;
    ensure!(left.is_empty(), "the seed testbed left {left}");
    Ok(())
}

#[test]
fn a_kill_9_of_the_master_gives_exactly_one_new_master() -> Result<()> {
    on_seed(SeedOptions::default(), |seed| {
        ensure!(seed.master()? == 1);
        let marks: Vec<_> = seed.controllers().iter().map(|c| c.mark()).collect();
        seed.kill_redis(1)?;
        let killed = Instant::now();
        let new = wait_until(
            "the controllers to agree on a new master",
            RESOLVE_TIMEOUT,
            Duration::from_millis(20),
            || Ok(seed.master().ok().filter(|&m| m != 1)),
        )?;
        println!(
            "kill -9 of r1: the controllers name r{new} after {:.0} ms",
            killed.elapsed().as_secs_f64() * 1000.0
        );
        // Whole again among the survivors: the other replica follows r{new}, every data
        // plane's write port points at it, one VIP holder.
        ensure!(seed.wait_healthy(HEALTHY_TIMEOUT)? == new);
        std::thread::sleep(3 * seed.down_after());
        ensure!(seed.master()? == new, "the master moved again");
        let mut promotions = 0;
        for (c, mark) in seed.controllers().iter().zip(&marks) {
            let switches = c.count_events("+switch-master", *mark);
            ensure!(switches == 1, "{} logged {switches} +switch-master", c.id());
            promotions += c.count_events("+promoted-slave", *mark);
        }
        ensure!(promotions == 1, "{promotions} promotions");
        // r1's controller and data plane still run: it keeps the VIP.
        ensure!(seed.holder()? == 1);
        let addr = seed.node(new).redis().addr();
        ensure!(
            seed.client()
                .redis_cli(addr, &["SET", "seed:after", "v"])?
                .trim()
                == "OK"
        );

        // The old master returns empty, claiming to be a master: it is demoted and syncs.
        seed.node(1).redis().start()?;
        ensure!(seed.wait_healthy(HEALTHY_TIMEOUT)? == new);
        ensure!(
            seed.node(1)
                .redis()
                .redis_cli(&["GET", "seed:after"])?
                .trim()
                == "v",
            "r1 did not sync from r{new}"
        );
        Ok(())
    })
}

#[test]
fn losing_the_vip_holder_moves_the_vip_and_the_master_to_the_survivors() -> Result<()> {
    on_seed(SeedOptions::default(), |seed| {
        ensure!(seed.holder()? == 1 && seed.master()? == 1);
        seed.fail_node(1)?;
        let failed = Instant::now();
        // Never two holders among the live nodes while the VIP moves.
        let holder = loop {
            ensure!(failed.elapsed() < RESOLVE_TIMEOUT, "nobody took the VIP");
            let holders = seed.holders()?;
            ensure!(holders.len() <= 1, "two holders at once: {holders:?}");
            if let [h] = holders.as_slice() {
                break *h;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = failed.elapsed();
        ensure!(
            holder == 2,
            "r2 has the higher priority of the survivors, yet r{holder} took the VIP"
        );
        ensure!(
            seed.vip_arp_owner()? == Some(seed.node(holder).mac()?),
            "the client's ARP for the VIP: {:?}",
            seed.vip_arp_owner()?
        );
        let master = seed.wait_healthy(HEALTHY_TIMEOUT)?;
        ensure!(master != 1, "r1 is dead, yet the master");
        println!(
            "loss of r1: the VIP on r{holder} after {:.0} ms, master r{master} after {:.0} ms",
            took.as_secs_f64() * 1000.0,
            failed.elapsed().as_secs_f64() * 1000.0
        );

        // r1 returns: it becomes a replica and does not take the VIP back (no preemption).
        seed.restore_node(1)?;
        ensure!(seed.wait_healthy(HEALTHY_TIMEOUT)? == master);
        let back = Instant::now();
        while back.elapsed() < Duration::from_secs(2) {
            ensure!(seed.holders()? == [holder], "holders {:?}", seed.holders()?);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Through the VIP (full NAT).

/// SET then GET through the write port and GET through the read port, from both clients; the
/// write port reaches the master, the read port a replica.
fn write_and_read_through_the_vip(seed: &SeedCluster, label: &str) -> Result<()> {
    let master = seed.master()?;
    for ns in [seed.client(), seed.routed_client()] {
        let key = format!("seed:{label}:{}", ns.name());
        let cli = |addr, args: &[&str]| -> Result<String> {
            Ok(ns.redis_cli(addr, args)?.trim().to_owned())
        };
        ensure!(cli(seed.vip_write(), &["SET", &key, label])? == "OK");
        ensure!(seed.node_behind(ns, seed.vip_write())? == master);
        ensure!(cli(seed.vip_write(), &["GET", &key])? == label);
        let reader = seed.node_behind(ns, seed.vip_read())?;
        ensure!(
            reader != master,
            "the read port reached the master r{master}"
        );
        wait_until(
            &format!("{key} through the read port from {}", ns.name()),
            Duration::from_secs(5),
            Duration::from_millis(50),
            || Ok((cli(seed.vip_read(), &["GET", &key])? == label).then_some(())),
        )?;
    }
    Ok(())
}

/// The address the master sees for a connection made through the write port from `ns`.
fn source_seen_by_master(seed: &SeedCluster, ns: &Netns) -> Result<Ipv4Addr> {
    let vip = seed.vip_write();
    // Held open while the master is asked, from inside the client's namespace.
    let conn = in_netns(&ns.path(), move || -> Result<Resp> {
        let mut conn = Resp::connect(vip, Duration::from_secs(5))?;
        let reply = conn.call(&[b"CLIENT", b"SETNAME", b"seed-probe"])?;
        ensure!(reply == Reply::Simple("OK".into()), "{reply:?}");
        Ok(conn)
    })??;
    let list = seed
        .node(seed.master()?)
        .redis()
        .redis_cli(&["CLIENT", "LIST"])?;
    drop(conn);
    let line = list
        .lines()
        .find(|l| l.contains("name=seed-probe"))
        .with_context(|| format!("no probe connection in CLIENT LIST:\n{list}"))?;
    let addr = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addr="))
        .context("no addr= field")?;
    Ok(*addr.parse::<SocketAddrV4>()?.ip())
}

#[test]
fn both_clients_write_and_read_through_the_vip_wherever_the_master_is() -> Result<()> {
    on_seed(SeedOptions::default(), |seed| {
        ensure!(seed.holder()? == 1 && seed.master()? == 1);
        write_and_read_through_the_vip(seed, "master-on-holder")?;
        for (ns, own) in [
            (seed.client(), CLIENT_IP),
            (seed.routed_client(), ROUTED_CLIENT_IP),
        ] {
            let seen = source_seen_by_master(seed, ns)?;
            println!("master on the holder: {} seen as {seen}", ns.name());
            ensure!(
                seen == own || seen == node_ip(1),
                "{} seen as {seen}",
                ns.name()
            );
        }

        seed.switch_master(2)?;
        ensure!(seed.holder()? == 1, "the VIP moved with the master");
        write_and_read_through_the_vip(seed, "master-remote")?;
        // Full NAT: the remote master sees the holder, not the client.
        for ns in [seed.client(), seed.routed_client()] {
            let seen = source_seen_by_master(seed, ns)?;
            ensure!(
                seen == node_ip(1),
                "{} seen by r2 as {seen}, not as the holder r1",
                ns.name()
            );
        }
        Ok(())
    })
}

#[test]
fn a_kill_9_of_the_master_under_traffic_loses_no_acknowledged_write() -> Result<()> {
    on_seed(SeedOptions::default(), |seed| {
        // The master away from the holder: the new master may then be local or remote.
        seed.switch_master(2)?;
        let o = run_seed_trial(
            seed,
            SeedFault::KillMaster,
            "kill9",
            &SeedTrialOptions::new(seed),
        )?;
        println!("{o}");
        ensure!(o.master_before == 2 && o.master_moved(), "{o}");
        ensure!(o.resolved_once(), "{o}");
        ensure!(o.lost() == 0, "{o}");
        let bound = 4 * seed.down_after() + Duration::from_secs(2);
        ensure!(
            o.writers.iter().all(|w| w.gap < bound),
            "gap over {bound:?}: {o}"
        );
        write_and_read_through_the_vip(seed, "after-kill")
    })
}

#[test]
fn losing_the_vip_holder_under_traffic_loses_no_acknowledged_write() -> Result<()> {
    on_seed(SeedOptions::default(), |seed| {
        let options = SeedTrialOptions::new(seed);
        let bound = 4 * seed.down_after() + Duration::from_secs(2);
        // The holder with the master on it: both move.
        let o = run_seed_trial(seed, SeedFault::LoseHolder, "lose-both", &options)?;
        println!("{o}");
        ensure!(o.holder_before == 1 && o.holder_after != 1, "{o}");
        ensure!(
            o.master_moved() && o.resolved_once() && o.lost() == 0,
            "{o}"
        );
        ensure!(
            o.writers.iter().all(|w| w.gap < bound),
            "gap over {bound:?}: {o}"
        );
        // Back as a replica; its restarted controller has caught up with the others' epoch.
        seed.restore_node(1)?;
        ensure!(seed.wait_healthy(HEALTHY_TIMEOUT)? == o.master_after);

        // The holder without the master: only the VIP moves.
        let holder = seed.holder()?;
        let elsewhere = (1..=NODES).find(|&n| n != holder).context("another node")?;
        seed.switch_master(elsewhere)?;
        let o = run_seed_trial(seed, SeedFault::LoseHolder, "lose-vip", &options)?;
        println!("{o}");
        ensure!(
            !o.master_moved() && o.resolved_once() && o.lost() == 0,
            "{o}"
        );
        ensure!(
            o.writers.iter().all(|w| w.gap < bound),
            "gap over {bound:?}: {o}"
        );
        write_and_read_through_the_vip(seed, "after-loss")
    })
}
