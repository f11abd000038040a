//! The VIP moves between LB nodes when its holder dies, and connections survive.
//!
//! Two data-plane nodes (lb1 preferred) and a third, voting controller on bridged segments
//! (see `redis_ha_tests::ha`). A client holds one connection to the write port and one to the
//! read port, each sending a request every 10 ms with a 5 s timeout, so a connection breaks
//! only if the path really breaks (reset, or no answer for 5 s). The holder is killed (its
//! links cut, its controller SIGKILLed), the other node must take the addresses, the same two
//! connections must go on, and no acknowledged write may be missing from the master. The dead
//! node then returns and must not take the addresses back.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::ha::{GATEWAY, owner_changes};
use redis_ha_tests::testbed::{VIP, namespace_prefix};
use redis_ha_tests::trial::{missing_keys, summary};
use redis_ha_tests::{ArpKind, HaCluster, HaOptions, leftovers, require_root, wait_until};

/// Failovers per run: lb1 → lb2, back to lb1 (after lb2 dies), and so on.
const TRIALS: usize = 4;
const PREFIX: &str = "ha";
const READ_KEY: &str = "ha:read";

struct Trial {
    from: usize,
    to: usize,
    /// From the links being cut to the new holder's controller having the addresses.
    takeover: Duration,
    write_gap: Duration,
    read_gap: Duration,
}

#[test]
fn lb_failover_moves_the_vip_and_keeps_connections_and_writes() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions::default())?;
    let tag = ha.tag().to_owned();
    let trials = with_logs(&ha, run_trials)?;

    println!("LB failover, ha.heartbeat_ms 50, ha.down_after_ms 200 ({TRIALS} trials):");
    println!("  from  to  takeover  write gap  read gap");
    for t in &trials {
        println!(
            "  lb{}   lb{} {:>6.0} ms {:>7.0} ms {:>7.0} ms",
            t.from,
            t.to,
            ms(t.takeover),
            ms(t.write_gap),
            ms(t.read_gap)
        );
    }
    for (name, values) in [
        (
            "takeover",
            trials.iter().map(|t| t.takeover).collect::<Vec<_>>(),
        ),
        ("write gap", trials.iter().map(|t| t.write_gap).collect()),
        ("read gap", trials.iter().map(|t| t.read_gap).collect()),
    ] {
        if let Some((min, median, max)) = summary(&values) {
            println!(
                "  {name}: min {:.0} / median {:.0} / max {:.0} ms",
                ms(min),
                ms(median),
                ms(max)
            );
        }
    }

    drop(ha);
    let left = leftovers(&namespace_prefix(&tag))?;
    assert!(left.is_empty(), "the HA testbed left {left}");
    Ok(())
}

/// Fencing: a holder cut off from its peers (its controller still running) must let go of the
/// addresses by itself before another node takes them, and must not take them back when its
/// links return.
#[test]
fn an_lb_node_cut_off_from_its_peers_lets_go_before_another_takes_over() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions::default())?;
    with_logs(&ha, |ha| {
        ensure!(ha.wait_single_holder(Duration::from_secs(20))? == 1);
        let client_arp = ha.capture_client_arp()?;
        ha.cut_links(1)?;
        let cut = Instant::now();
        // Never both at once, sampled every few ms until lb2 holds them.
        let mut lb1_let_go = None;
        loop {
            ensure!(
                cut.elapsed() < Duration::from_secs(10),
                "lb2 never took over"
            );
            let h = ha.address_holders()?;
            ensure!(
                h.vip.len() <= 1 && h.gateway.len() <= 1,
                "two holders at once: {h:?}"
            );
            if lb1_let_go.is_none() && !h.vip.contains(&1) {
                lb1_let_go = Some(cut.elapsed());
            }
            if h.vip == [2] && h.gateway == [2] {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // The controllers' own clocks agree: lb1's release came before lb2's takeover.
        let released = event_time(ha, 1, "-vip-owner")?.context("lb1 reported no release")?;
        let taken = holding_since(ha, 2)?.context("lb2 reports no holding time")?;
        ensure!(
            released < taken,
            "lb1 released at {released:?}, lb2 took over at {taken:?}"
        );
        println!(
            "cut off: lb1 let go {:.0} ms after the cut; lb2 took over {:.0} ms after lb1 let go",
            ms(lb1_let_go.unwrap_or_default()),
            ms(taken.duration_since(released)?)
        );

        ha.restore_links(1)?;
        let back = Instant::now();
        while back.elapsed() < Duration::from_secs(2) {
            let h = ha.address_holders()?;
            ensure!(
                h.vip == [2] && h.gateway == [2],
                "after the links returned: {h:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let claims = client_arp.stop()?;
        let lb2_mac = ha.lb(2).client_mac()?;
        let owners = owner_changes(&claims, VIP);
        ensure!(
            owners.last().map(|c| c.mac.as_str()) == Some(lb2_mac.as_str())
                && owners.iter().filter(|c| c.mac == lb2_mac).count() == 1,
            "the VIP changed hands more than once: {owners:?}"
        );
        Ok(())
    })
}

/// With `preempt = true` the preferred node takes the addresses back when it returns, and the
/// hand-back never has two holders: the holder releases first, then lb1 is elected.
#[test]
fn with_preempt_the_preferred_node_takes_the_vip_back_without_overlap() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions {
        preempt: true,
        ..HaOptions::default()
    })?;
    with_logs(&ha, |ha| {
        ensure!(ha.wait_single_holder(Duration::from_secs(20))? == 1);
        ha.fail_lb(1)?;
        wait_until(
            "lb2 to take over",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok(ha.address_holders()?.vip.contains(&2).then_some(())),
        )?;
        let client_arp = ha.capture_client_arp()?;
        ha.return_lb(1)?;
        let back = Instant::now();
        loop {
            ensure!(
                back.elapsed() < Duration::from_secs(15),
                "lb1 never took the VIP back"
            );
            let h = ha.address_holders()?;
            ensure!(
                h.vip.len() <= 1 && h.gateway.len() <= 1,
                "two holders at once: {h:?}"
            );
            if h.vip == [1] && h.gateway == [1] {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let released = event_time(ha, 2, "-vip-owner")?.context("lb2 reported no release")?;
        let taken = holding_since(ha, 1)?.context("lb1 reports no holding time")?;
        ensure!(
            released < taken,
            "lb2 released at {released:?}, lb1 took over at {taken:?}"
        );
        // Settled: lb1 keeps it.
        std::thread::sleep(Duration::from_secs(1));
        ensure!(ha.address_holders()?.single() == Some(1));
        let lb1_mac = ha.lb(1).client_mac()?;
        let owners = owner_changes(&client_arp.stop()?, VIP);
        ensure!(
            owners.last().map(|c| c.mac.as_str()) == Some(lb1_mac.as_str()),
            "the client segment's last VIP claim is not lb1's: {owners:?}"
        );
        let reply = ha
            .client()
            .redis_cli(ha.vip_write(), &["SET", "ha:after-preempt", "1"])?;
        ensure!(reply.trim() == "OK", "a write through lb1 got {reply:?}");
        ensure!(ha.client_neighbour(VIP)?.as_deref() == Some(lb1_mac.as_str()));
        Ok(())
    })
}

/// A holder whose controller dies while its host and links stay up keeps the addresses
/// configured (nobody removes them); its data plane must stop answering ARP for them once the
/// lease runs out, so clients only ever hear the new holder.
#[test]
fn a_holder_whose_controller_died_stops_answering_arp_for_the_vip() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions::default())?;
    with_logs(&ha, |ha| {
        ensure!(ha.wait_single_holder(Duration::from_secs(20))? == 1);
        ha.controller(1).kill()?;
        wait_until(
            "lb2 to take over",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok(ha.address_holders()?.vip.contains(&2).then_some(())),
        )?;
        let h = ha.address_holders()?;
        ensure!(
            h.vip == [1, 2],
            "lb1 should still have the VIP configured: {h:?}"
        );

        let arp = ha.capture_client_arp()?;
        for round in 0..3 {
            // Forget the VIP's MAC, so the client asks everyone again.
            ha.client()
                .ip(&["neigh", "flush", "dev", ha.client_interface()])?;
            let key = format!("ha:arp:{round}");
            let reply = ha.client().redis_cli(ha.vip_write(), &["SET", &key, "1"])?;
            ensure!(
                reply.trim() == "OK",
                "a write through the VIP got {reply:?}"
            );
        }
        let claims = arp.stop()?;
        let (lb1_mac, lb2_mac) = (ha.lb(1).client_mac()?, ha.lb(2).client_mac()?);
        let about_vip: Vec<_> = claims.iter().filter(|c| c.ip == VIP).collect();
        ensure!(
            about_vip
                .iter()
                .any(|c| c.kind == ArpKind::Reply && c.mac == lb2_mac),
            "lb2 never answered for the VIP: {claims:?}"
        );
        ensure!(
            !about_vip.iter().any(|c| c.mac == lb1_mac),
            "lb1 (controller dead, addresses still configured) claimed the VIP: {claims:?}"
        );
        let maps = ha.maps(1)?;
        ensure!(
            maps.raw.lines().any(|l| l.contains("drop_arp_not_holder")
                && l.split_whitespace()
                    .any(|w| w.parse::<u64>().is_ok_and(|n| n > 0))),
            "lb1's data plane counted no refused ARP request:\n{}",
            maps.raw
        );
        Ok(())
    })
}

/// When controller `n` last published the event `name` (its `events --json`).
fn event_time(ha: &HaCluster, n: usize, name: &str) -> Result<Option<SystemTime>> {
    let out = ha.ctl(n, "events", &["--json"], Duration::from_secs(10))?;
    let mut last = None;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let e: serde_json::Value = serde_json::from_str(line)?;
        if e["name"] == name
            && let Some(ms) = e["at_unix_ms"].as_u64()
        {
            last = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        }
    }
    Ok(last)
}

/// Runs `body`; if it fails, prints the end of every controller's log first.
fn with_logs<T>(ha: &HaCluster, body: impl FnOnce(&HaCluster) -> Result<T>) -> Result<T> {
    let result = body(ha);
    if result.is_err() {
        eprintln!("{}", ha.log_tails(40));
    }
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run_trials(ha: &HaCluster) -> Result<Vec<Trial>> {
    let first = ha.wait_single_holder(Duration::from_secs(20))?;
    ensure!(
        first == 1,
        "lb1 has the higher priority, yet lb{first} holds the VIP"
    );

    let (writer, reader) =
        ha.start_vip_clients(PREFIX, READ_KEY, Duration::from_secs(240), 30_000)?;

    let mut trials = Vec::new();
    let mut holder = first;
    for _ in 0..TRIALS {
        let other = 3 - holder;
        let before = Instant::now();
        writer.wait_acks_after(before, 20, Duration::from_secs(10))?;
        reader.wait_acks_after(before, 20, Duration::from_secs(10))?;
        let client_arp = ha.capture_client_arp()?;
        let backend_arp = ha.capture_backend_arp()?;

        let cut = Instant::now();
        let cut_unix = SystemTime::now();
        ha.fail_lb(holder)?;
        let took = wait_until(
            &format!("lb{other} to hold the floating addresses"),
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                // The dead node keeps its addresses (its NICs are dead, as on a crashed host).
                let h = ha.address_holders()?;
                Ok((h.vip.contains(&other) && h.gateway.contains(&other)).then(Instant::now))
            },
        )?;
        // The holder's own account of when it took them (Unix ms), if earlier than we saw.
        let takeover = holding_since(ha, other)?
            .and_then(|t| t.duration_since(cut_unix).ok())
            .unwrap_or_else(|| took.duration_since(cut));

        writer
            .wait_acks_after(took, 20, Duration::from_secs(10))
            .context("writes did not resume through the new holder")?;
        reader
            .wait_acks_after(took, 20, Duration::from_secs(10))
            .context("reads did not resume through the new holder")?;

        // The dead node returns: the addresses stay where they are (no preemption).
        ha.return_lb(holder)?;
        let returned = Instant::now();
        while returned.elapsed() < Duration::from_secs(2) {
            let h = ha.address_holders()?;
            ensure!(
                h.vip == [other] && h.gateway == [other],
                "after lb{holder} returned, the addresses are held by {h:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        writer.wait_acks_after(Instant::now(), 10, Duration::from_secs(10))?;

        // Nobody else claimed the addresses once the new holder had: the neighbours moved once.
        let new_client_mac = ha.lb(other).client_mac()?;
        let new_backend_mac = ha.lb(other).backend_mac()?;
        for (claims, ip, mac) in [
            (client_arp.stop()?, VIP, &new_client_mac),
            (backend_arp.stop()?, GATEWAY, &new_backend_mac),
        ] {
            let owners = owner_changes(&claims, ip);
            let Some(first_new) = owners.iter().position(|c| c.mac == *mac) else {
                bail!("lb{other} never announced {ip}: {claims:?}");
            };
            ensure!(
                first_new == owners.len() - 1,
                "{ip} was claimed by another MAC after lb{other} took it: {owners:?}"
            );
        }
        ensure!(
            ha.client_neighbour(VIP)?.as_deref() == Some(new_client_mac.as_str()),
            "the client's neighbour entry for the VIP is not lb{other}'s"
        );

        // Operators see the same thing: the voter's status names the new holder, and the new
        // holder's metrics say it holds the addresses.
        let voter: serde_json::Value = serde_json::from_str(&ha.status_json(3)?)?;
        ensure!(
            voter["ha"]["owner"] == format!("lb{other}").as_str(),
            "c3's status: {}",
            voter["ha"]
        );
        let status_text = ha.ctl(other, "status", &[], Duration::from_secs(10))?;
        ensure!(
            status_text.contains(&format!("floating addresses: held by lb{other}")),
            "lb{other}'s status:\n{status_text}"
        );

        let (write_gap, read_gap) = (
            writer.record().longest_gap_after(cut).unwrap_or_default(),
            reader.record().longest_gap_after(cut).unwrap_or_default(),
        );
        trials.push(Trial {
            from: holder,
            to: other,
            takeover,
            write_gap,
            read_gap,
        });
        holder = other;
    }

    let writes = writer.finish()?;
    let reads = reader.finish()?;
    ensure!(
        writes.connects == 1 && reads.connects == 1,
        "connections were re-opened (write port {}, read port {}); failures: {:?} {:?}",
        writes.connects,
        reads.connects,
        writes.failures.first(),
        reads.failures.first()
    );
    ensure!(
        writes.failure_count == 0 && reads.failure_count == 0,
        "requests failed: {:?} {:?}",
        writes.failures.first(),
        reads.failures.first()
    );
    let master = ha.backend(1);
    let lost = missing_keys(master, writes.set_keys(PREFIX))?;
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged writes are missing from the master, e.g. {:?}",
        lost.len(),
        writes.acks.len(),
        &lost[..lost.len().min(5)]
    );
    println!(
        "{} writes and {} reads acknowledged on one connection each, 0 lost",
        writes.acks.len(),
        reads.acks.len()
    );
    Ok(trials)
}

/// When LB node `n`'s controller says it took the addresses.
fn holding_since(ha: &HaCluster, n: usize) -> Result<Option<SystemTime>> {
    let status: serde_json::Value = serde_json::from_str(&ha.status_json(n)?)?;
    Ok(status["ha"]["holding_since_unix_ms"]
        .as_u64()
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
}
