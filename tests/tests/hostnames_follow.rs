//! A backend given by name that moves to a new address while the controllers run: three real
//! controllers, real redis-servers, the real data plane. The names resolve through a hosts
//! file of the test's own (see `redis_ha_tests::hosts`), rewritten in place to move a name.
//!
//! The move stands for a Redis machine replaced under the same name: the replica's
//! redis-server is made to listen on a second address of its namespace only (its old address
//! then refuses connections), the LB routes the new address to it, and the hosts file names
//! the new address.
//!
//! Run: `REDIS_HA_CTL=<binary> cargo test --release -p redis-ha-tests --test hostnames_follow
//! -- --test-threads=1 --nocapture`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::{
    Backend, Cluster, ClusterOptions,
    hosts::{name, name_backends, with_private_hosts},
    process::run_within,
    require_root,
    testbed::{READ_PORT, REDIS_PORT, VIP, WRITE_PORT, backend_ip},
    wait_until,
};

/// Bound of every wait below (correctness, not speed).
const BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// Read connections opened through the VIP to find the moved replica behind it: with two or
/// three backends in the pool, missing one that many times is a failure, not bad luck.
const READ_TRIES: usize = 40;

/// The moved replica, and where it goes.
const MOVED: usize = 2;
fn new_ip() -> Ipv4Addr {
    let old = backend_ip(MOVED).octets();
    Ipv4Addr::new(old[0], old[1], old[2], old[3] + 10)
}

/// Before, a changed address was only logged: the controllers kept probing the old one (the
/// replica fell out of the read pool for good, and could never be promoted). Now they follow
/// it: same backend, same slot, probed at its new address, back in the read pool, shown at
/// the new address, promoted by a failover, and written to through the VIP.
#[test]
fn controllers_follow_a_replica_that_moved_to_a_new_address() -> Result<()> {
    require_root();
    let cluster = Cluster::up(ClusterOptions::default())?;
    let outcome = name_backends(&cluster, "resolve_hostnames = true")
        .and_then(|hosts| with_private_hosts(&hosts, || follow(&cluster, &hosts)));
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails(80));
    }
    outcome
}

fn follow(cluster: &Cluster, hosts: &Path) -> Result<()> {
    let tb = cluster.testbed();
    ensure!(tb.backends().len() == 3, "the test expects three backends");
    for b in tb.backends() {
        b.kill()?;
        b.start()?;
    }
    for c in cluster.controllers() {
        c.start()?;
    }
    cluster.wait_healthy(BOUND)?;
    // Only the moved replica may be promoted: the failover below must pick it at its new
    // address or not at all.
    tb.backend(3)
        .redis_cli(&["CONFIG", "SET", "replica-priority", "0"])?;

    let old = SocketAddrV4::new(backend_ip(MOVED), REDIS_PORT);
    let new = SocketAddrV4::new(new_ip(), REDIS_PORT);
    let slot = cluster
        .maps()?
        .row(old)
        .context("the replica has no slot")?
        .slot;
    let marks: Vec<_> = cluster.controllers().iter().map(|c| c.mark()).collect();

    // The move: the server listens at the new address only, then the name says so.
    let b = tb.backend(MOVED);
    let cidr = format!("{}/24", new.ip());
    b.netns()
        .ip(&["addr", "add", &cidr, "dev", b.interface()])?;
    let route = format!("{}/32", new.ip());
    tb.lb()
        .ip(&["route", "add", &route, "dev", b.lb_interface()])?;
    b.redis_cli(&["CONFIG", "SET", "bind", &format!("{} 127.0.0.1", new.ip())])?;
    let table = std::fs::read_to_string(hosts)?;
    let moved = table.replace(
        &format!("{} {}", old.ip(), name(MOVED)),
        &format!("{} {}", new.ip(), name(MOVED)),
    );
    ensure!(
        moved != table,
        "the hosts file does not name {}",
        name(MOVED)
    );
    // In place: the file is bind-mounted over /etc/hosts, a new inode would not be seen.
    std::fs::write(hosts, moved)?;

    // Every controller follows: SENTINEL REPLICAS shows the new address, not the old one.
    for n in 1..=3 {
        wait_until(
            &format!("c{n} to show the replica at {new}"),
            BOUND,
            POLL,
            || {
                let out = cluster.sentinel_cli(n, &["SENTINEL", "REPLICAS", "mymaster"])?;
                let shown = out.lines().any(|l| l == new.ip().to_string());
                let gone = !out.lines().any(|l| l == old.ip().to_string());
                Ok((shown && gone).then_some(()))
            },
        )?;
    }
    for (c, mark) in cluster.controllers().iter().zip(&marks) {
        let said = format!("moved from {old} to {new}");
        ensure!(
            c.log_since(*mark).contains(&said),
            "{} did not log {said:?}",
            c.id()
        );
    }

    // The data plane: the same slot holds the new address, readable once probed there, and
    // the reply lookup (BACKEND_ADDRS) knows the new address and forgot the old one.
    wait_until(
        "the slot to hold the new address, readable",
        BOUND,
        POLL,
        || {
            let maps = cluster.maps()?;
            let row = maps.row(new).copied();
            Ok(row
                .filter(|r| r.slot == slot && r.readable && maps.row(old).is_none())
                .map(|_| ()))
        },
    )?;
    let addrs = backend_addrs(cluster)?;
    ensure!(addrs.contains(&new), "BACKEND_ADDRS lacks {new}: {addrs:?}");
    ensure!(
        !addrs.contains(&old),
        "BACKEND_ADDRS still has {old}: {addrs:?}"
    );

    // Reads through the VIP reach the replica at its new address.
    let run_id = info_field(&cli_at(b, new, &["INFO", "server"])?, "run_id")?;
    let reached = (0..READ_TRIES).any(|_| {
        vip_cli(cluster, READ_PORT, &["INFO", "server"])
            .and_then(|out| info_field(&out, "run_id"))
            .is_ok_and(|id| id == run_id)
    });
    ensure!(
        reached,
        "{READ_TRIES} reads through the VIP never reached {new}"
    );

    // kill -9 the master: the moved replica, the only candidate, is promoted at its new
    // address; the write port and every controller follow.
    tb.backend(1).kill()?;
    wait_until(
        "the write port to move to the new address",
        BOUND,
        POLL,
        || Ok((cluster.maps()?.master() == Some(new)).then_some(())),
    )?;
    for n in 1..=3 {
        wait_until(&format!("c{n} to name {new} master"), BOUND, POLL, || {
            let out =
                cluster.sentinel_cli(n, &["SENTINEL", "get-master-addr-by-name", "mymaster"])?;
            Ok(out
                .lines()
                .next()
                .is_some_and(|ip| ip == new.ip().to_string())
                .then_some(()))
        })?;
    }
    wait_until("a write through the VIP", BOUND, POLL, || {
        let out = vip_cli(cluster, WRITE_PORT, &["SET", "follow:key", "moved"]);
        Ok(out.is_ok_and(|o| o.trim() == "OK").then_some(()))
    })?;
    let stored = cli_at(b, new, &["GET", "follow:key"])?;
    ensure!(
        stored.trim() == "moved",
        "the write did not reach the moved replica, now master: GET said {stored:?}"
    );
    Ok(())
}

/// `redis-cli` to backend `b` at `addr` (its harness knows only its first address).
fn cli_at(b: &Backend, addr: SocketAddrV4, args: &[&str]) -> Result<String> {
    let mut cmd = b.netns().command("redis-cli");
    cmd.args([
        "-e",
        "-h",
        &addr.ip().to_string(),
        "-p",
        &addr.port().to_string(),
    ])
    .args(args);
    run_within(&mut cmd, Duration::from_secs(5))
}

/// `redis-cli` from the client's namespace to the VIP's `port`.
fn vip_cli(cluster: &Cluster, port: u16, args: &[&str]) -> Result<String> {
    let mut cmd = cluster.testbed().client().command("redis-cli");
    cmd.args(["-h", &VIP.to_string(), "-p", &port.to_string()])
        .args(args);
    run_within(&mut cmd, Duration::from_secs(5))
}

fn info_field(info: &str, field: &str) -> Result<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("no {field} in {info:?}"))
}

/// The addresses `BACKEND_ADDRS` holds, as bpftool prints the pinned map (with its BTF).
fn backend_addrs(cluster: &Cluster) -> Result<Vec<SocketAddrV4>> {
    let path = cluster.testbed().pin_dir().join("BACKEND_ADDRS");
    let mut cmd = std::process::Command::new("bpftool");
    cmd.args(["--json", "map", "dump", "pinned"]).arg(&path);
    let out = run_within(&mut cmd, BOUND)?;
    let entries: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("bpftool said {out:?}"))?;
    let Some(entries) = entries.as_array() else {
        bail!("bpftool said {out:?}");
    };
    entries
        .iter()
        .map(|e| {
            let key = e.get("formatted").map_or(&e["key"], |f| &f["key"]);
            let ip: Vec<u8> = key["ip"]
                .as_array()
                .with_context(|| format!("no formatted key in {e}"))?
                .iter()
                .map(|b| b.as_u64().map(|b| b as u8).context("an address byte"))
                .collect::<Result<_>>()?;
            let port = key["port"].as_u64().context("a port")? as u16;
            let ip: [u8; 4] = ip
                .try_into()
                .map_err(|_| anyhow::anyhow!("an IPv4 address"))?;
            Ok(SocketAddrV4::new(ip.into(), port))
        })
        .collect()
}
