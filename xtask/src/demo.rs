//! `cargo xtask demo`: the whole path in a minute — testbed, data plane, a write through the
//! write port landing on the master, reads spread over the replicas, the maps.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::testbed::REDIS_PORT;
use redis_ha_tests::{Backend, Testbed, XdpMode};

use crate::build_load::{build, load, run_shown};
use crate::testbed;

/// Fresh connections made to the read port: enough to see the spread over two replicas.
const READ_CONNECTIONS: usize = 8;

pub fn demo(keep: bool, xdp_mode: XdpMode) -> Result<()> {
    // Build before anything exists, so a compile error leaves nothing behind.
    let ctl = build()?;
    let tb = testbed::up(xdp_mode)?;
    let outcome = steps(&tb, &ctl, &testbed::config_path(), xdp_mode);
    if keep {
        tb.keep();
        testbed::print_usage();
    } else {
        drop(tb);
        let _ = std::fs::remove_file(testbed::config_path());
        println!("==> testbed removed (keep it next time with --keep)");
    }
    outcome
}

fn steps(tb: &Testbed, ctl: &Path, config: &Path, xdp_mode: XdpMode) -> Result<()> {
    let vip_hint = || {
        let other = if xdp_mode == XdpMode::Skb {
            "native"
        } else {
            "skb"
        };
        format!(
            "no good answer through the VIP: is the program attached (`bpftool net show` above)? \
             Compare with `cargo xtask demo --xdp-mode {other}`"
        )
    };

    println!("==> step 1/4: load the data plane in {}", tb.lb().name());
    load(ctl, config, Some(tb.lb().name())).context("step 1/4 (loading the data plane) failed")?;

    println!(
        "==> step 2/4: a write through the write port {}",
        tb.vip_write()
    );
    let reply = client_cli(
        tb,
        tb.vip_write(),
        &["SET", "demo:greeting", "hello from redis-ha"],
    )
    .with_context(vip_hint)
    .context("step 2/4 (SET through the write port) failed")?;
    if reply.trim() != "OK" {
        bail!("step 2/4: SET through the write port answered {reply:?}, not OK");
    }
    let (backend, role) = backend_behind(tb, tb.vip_write())
        .with_context(vip_hint)
        .context("step 2/4 (which backend answered the write port) failed")?;
    println!("    the write port reached {} ({role})", backend.addr());
    if role != "master" {
        bail!(
            "step 2/4: the write port reached {}, a {role}, not the master",
            backend.addr()
        );
    }
    let stored = client_cli(tb, backend.addr(), &["GET", "demo:greeting"])
        .context("step 2/4 (reading the key back from the master directly) failed")?;
    if stored.trim() != "hello from redis-ha" {
        bail!("step 2/4: the master holds {stored:?} instead of the value written");
    }

    println!(
        "==> step 3/4: {READ_CONNECTIONS} fresh connections to the read port {}",
        tb.vip_read()
    );
    let mut spread: BTreeMap<SocketAddrV4, usize> = BTreeMap::new();
    for n in 1..=READ_CONNECTIONS {
        // One redis-cli per connection: each is a new source port, so a new hash.
        let (backend, role) = backend_behind(tb, tb.vip_read())
            .with_context(vip_hint)
            .with_context(|| format!("step 3/4 (read connection {n}) failed"))?;
        println!("    connection {n} reached {} ({role})", backend.addr());
        *spread.entry(backend.addr()).or_default() += 1;
    }
    let summary: Vec<String> = spread
        .iter()
        .map(|(addr, n)| format!("{addr}: {n}"))
        .collect();
    println!("    spread: {}", summary.join(", "));

    println!("==> step 4/4: the data plane's maps");
    let mut maps = tb.lb().command(ctl);
    maps.args(["maps", "--config"]).arg(config);
    run_shown(&mut maps, Duration::from_secs(60)).context("step 4/4 (redis-ha-ctl maps) failed")?;
    Ok(())
}

/// `redis-cli` from the client namespace, echoed as a reader would type it.
fn client_cli(tb: &Testbed, addr: SocketAddrV4, args: &[&str]) -> Result<String> {
    println!(
        "$ ip netns exec {} redis-cli -h {} -p {} {}",
        tb.client().name(),
        addr.ip(),
        addr.port(),
        args.join(" ")
    );
    let reply = tb.client().redis_cli(addr, args)?;
    println!("{}", reply.trim_end());
    Ok(reply)
}

/// Which backend answers a new connection to `addr` (by its `bind` setting), and its role.
fn backend_behind(tb: &Testbed, addr: SocketAddrV4) -> Result<(&Backend, String)> {
    let reply = tb.client().redis_cli(addr, &["CONFIG", "GET", "bind"])?;
    // `bind` then its value, e.g. `198.18.1.12 127.0.0.1`: the first address names the backend.
    let ip: Ipv4Addr = reply
        .lines()
        .nth(1)
        .and_then(|value| value.split_whitespace().next())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("unexpected CONFIG GET bind reply {reply:?}"))?;
    let backend = tb
        .backend_at(SocketAddrV4::new(ip, REDIS_PORT))
        .with_context(|| format!("{ip} is no backend of the testbed"))?;
    let role = match backend.redis_cli(&["ROLE"])?.lines().next() {
        Some("slave") => "replica".to_owned(),
        Some(role) => role.to_owned(),
        None => "unknown role".to_owned(),
    };
    Ok((backend, role))
}
