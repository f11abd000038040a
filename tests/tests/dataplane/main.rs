//! End-to-end tests of the data plane alone: a real testbed (client, LB and three
//! redis-server namespaces), the real XDP program loaded by `redis-ha-ctl load`, and manual
//! switches through `redis-ha-ctl set-master` / `set-read-pool`.

use std::{
    collections::BTreeSet,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use redis_ha_tests::{
    Netns, Testbed, TestbedOptions, XdpMode, in_netns, require_root, unique_tag, wait_until,
};

mod flows;
mod lifecycle;

fn testbed(mode: XdpMode) -> Result<Testbed> {
    require_root();
    let tb = Testbed::up(TestbedOptions {
        tag: unique_tag(),
        backends: 3,
        xdp_mode: mode,
        bridged_backends: false,
    })?;
    tb.ctl("load", &[])?;
    Ok(tb)
}

/// A Redis connection whose socket lives in the client namespace (a socket keeps the
/// namespace it was created in, whichever thread uses it later).
fn connect(tb: &Testbed, addr: SocketAddrV4) -> Result<redis::Connection> {
    let url = format!("redis://{addr}/");
    in_netns(&tb.client().path(), move || {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok::<_, redis::RedisError>(conn)
    })?
    .context("connecting through the VIP")
}

/// The address the backend that answered on `conn` is bound to (the testbed binds each
/// redis-server to its own address first).
fn served_by(conn: &mut redis::Connection) -> Result<String> {
    let bind: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("bind").query(conn)?;
    let addr = bind.get(1).context("CONFIG GET bind: no value")?;
    Ok(addr
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

fn counters(tb: &Testbed) -> Result<String> {
    tb.ctl("maps", &["--flows", "0"])
}

#[test]
fn writes_reach_the_master_with_the_clients_real_address() -> Result<()> {
    let tb = testbed(XdpMode::Native)?;
    let mut conn = connect(&tb, tb.vip_write())?;
    let _: () = redis::cmd("SET")
        .arg("e2e:w")
        .arg("hello")
        .query(&mut conn)?;
    assert_eq!(served_by(&mut conn)?, "198.18.1.11");
    assert_eq!(tb.backend(1).redis_cli(&["GET", "e2e:w"])?.trim(), "hello");

    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn)?;
    assert!(
        clients.contains("addr=198.18.0.2:"),
        "the master should see the client's own address, got:\n{clients}"
    );
    let maps = counters(&tb)?;
    assert!(
        maps.contains("fwd_to_backend") && maps.contains("fwd_to_client"),
        "{maps}"
    );
    Ok(())
}

#[test]
fn reads_spread_over_every_replica_and_never_reach_the_master() -> Result<()> {
    let tb = testbed(XdpMode::Native)?;
    tb.wait_replication()?;
    let mut w = connect(&tb, tb.vip_write())?;
    let _: () = redis::cmd("SET")
        .arg("e2e:r")
        .arg("replicated")
        .query(&mut w)?;
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let mut conn = connect(&tb, tb.vip_read())?;
        seen.insert(served_by(&mut conn)?);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["198.18.1.12".to_owned(), "198.18.1.13".to_owned()])
    );
    // Replication is asynchronous: give it a bounded moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut conn = connect(&tb, tb.vip_read())?;
        let v: Option<String> = redis::cmd("GET").arg("e2e:r").query(&mut conn)?;
        if v.as_deref() == Some("replicated") {
            break;
        }
        if Instant::now() > deadline {
            bail!("the replicas never served the written value (got {v:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every read connection closed in order and left the connection table; the open write
    // connection keeps its entry until it closes too.
    wait_for_flow_entries(&tb, 1)?;
    drop(w);
    wait_for_flow_entries(&tb, 0)?;
    Ok(())
}

/// Waits (bounded) until the connection table holds `n` connections.
fn wait_for_flow_entries(tb: &Testbed, n: usize) -> Result<()> {
    let want = format!("flows: {n} connections");
    wait_until(
        &want,
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let maps = counters(tb)?;
            ensure!(maps.contains(&want), "last `maps`:\n{maps}");
            Ok(Some(()))
        },
    )
}

/// At the TC hook the testbed's veths keep their default offloads, so both sides send 64 KB
/// TSO/GSO packets: they must stay on the fast path both ways (a reply handed to the kernel
/// instead has the VIP, a local address, as its source).
#[test]
fn a_one_megabyte_value_round_trips_at_every_hook() -> Result<()> {
    for mode in [XdpMode::Native, XdpMode::Skb, XdpMode::Tc] {
        let tb = testbed(mode)?;
        round_trip_megabyte(&tb).with_context(|| format!("{mode:?}"))?;
        let maps = counters(&tb)?;
        assert!(
            !maps.contains("pass_rewritten"),
            "{mode:?}: packets left the fast path:\n{maps}"
        );
    }
    Ok(())
}

/// IPv4 BIG TCP (Linux 6.3+): with `gso_ipv4_max_size` and `gro_ipv4_max_size` above 64 KB
/// on every veth, TSO packets grow past what an IPv4 header's `tot_len` can say, and carry 0
/// there. At the TC hook they reach the program as they are, and stay on the fast path. In
/// skb (generic XDP) mode, with the offloads turned back on, they reach it as GRO aggregates
/// without their segmentation state: too long for the egress MTU, they go to the kernel,
/// which segments them. Before the program read their length from the skb or the frame, it
/// passed them untouched as malformed, the LB's own stack (which has the VIP) answered with
/// a reset, and the SET failed.
#[test]
fn a_one_megabyte_value_round_trips_with_big_tcp() -> Result<()> {
    for mode in [XdpMode::Tc, XdpMode::Skb] {
        let tb = testbed(mode)?;
        let mut ends = vec![
            (tb.client(), tb.client_interface()),
            (tb.lb(), tb.lb_client_interface()),
        ];
        for b in tb.backends() {
            ends.push((b.netns(), b.interface()));
            ends.push((tb.lb(), b.lb_interface()));
        }
        for (ns, dev) in ends {
            if mode == XdpMode::Skb {
                // The testbed turns them off for the XDP modes.
                ns.run(
                    "ethtool",
                    &["-K", dev, "tx", "on", "tso", "on", "gso", "on"],
                )?;
            }
            allow_big_tcp(ns, dev, 196_608)?;
        }
        round_trip_megabyte(&tb).with_context(|| format!("{mode:?}"))?;
        let maps = counters(&tb)?;
        assert!(!maps.contains("pass_malformed"), "{mode:?}: {maps}");
        if mode == XdpMode::Tc {
            assert!(!maps.contains("pass_rewritten"), "{mode:?}: {maps}");
        }
    }
    Ok(())
}

/// `ip link set DEV gso_ipv4_max_size SIZE gro_ipv4_max_size SIZE` in `ns`, over route
/// netlink: Debian 12's iproute2 (6.1) predates both attributes (Linux 6.3).
fn allow_big_tcp(ns: &Netns, dev: &str, size: u32) -> Result<()> {
    use rtnetlink::{LinkUnspec, packet_route::link::LinkAttribute};
    let dev = dev.to_owned();
    in_netns(&ns.path(), move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            let message = LinkUnspec::new_with_name(&dev)
                .append_extra_attribute(LinkAttribute::GsoIpv4MaxSize(size))
                .append_extra_attribute(LinkAttribute::GroIpv4MaxSize(size))
                .build();
            handle
                .link()
                .set(message)
                .execute()
                .await
                .with_context(|| format!("raising {dev}'s IPv4 GSO/GRO limits to {size}"))
        })
    })?
}

/// SETs a 1 MB value through the write port, reads it back there and, once both replicas
/// have it, through the read port.
fn round_trip_megabyte(tb: &Testbed) -> Result<()> {
    let value: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut conn = connect(tb, tb.vip_write())?;
    let _: () = redis::cmd("SET")
        .arg("e2e:big")
        .arg(&value)
        .query(&mut conn)?;
    let back: Vec<u8> = redis::cmd("GET").arg("e2e:big").query(&mut conn)?;
    ensure!(back == value, "the value came back different");
    ensure!(
        served_by(&mut conn)? == "198.18.1.11",
        "not served by the master"
    );
    let acked: i64 = redis::cmd("WAIT").arg(2).arg(10_000).query(&mut conn)?;
    ensure!(acked == 2, "{acked} replicas acknowledged the value, not 2");
    let mut reader = connect(tb, tb.vip_read())?;
    let back: Vec<u8> = redis::cmd("GET").arg("e2e:big").query(&mut reader)?;
    ensure!(back == value, "the replica's value came back different");
    Ok(())
}

/// When the fast path cannot send a reply (here: the LB no longer has a neighbour entry for
/// the client once the connection's cached next hop expires), it hands the rewritten packet to
/// the kernel, whose source is then the VIP, a local address. `load` sets `accept_local` on the
/// data-plane interfaces so the kernel forwards it (and resolves the neighbour) instead of
/// dropping it as a martian, which stalls the connection.
#[test]
fn a_reply_the_fast_path_hands_to_the_kernel_still_reaches_the_client() -> Result<()> {
    let tb = testbed(XdpMode::Tc)?;
    let interfaces: Vec<&str> = std::iter::once(tb.lb_client_interface())
        .chain(tb.backends().iter().map(|b| b.lb_interface()))
        .collect();
    for interface in &interfaces {
        let key = format!("net.ipv4.conf.{interface}.accept_local");
        assert_eq!(tb.lb().run("sysctl", &["-n", &key])?.trim(), "1", "{key}");
    }
    let mut conn = connect(&tb, tb.vip_write())?;
    let _: String = redis::cmd("PING").query(&mut conn)?;
    assert!(!counters(&tb)?.contains("pass_rewritten"));
    tb.lb()
        .ip(&["neigh", "flush", "dev", tb.lb_client_interface()])?;
    // Past the cached next hop's 100 ms (and the coarse clock's tick).
    std::thread::sleep(Duration::from_millis(200));
    // Without accept_local every retransmission of the reply is dropped too, and this times
    // out (5 s).
    let pong: String = redis::cmd("PING").query(&mut conn)?;
    assert_eq!(pong, "PONG");
    let maps = counters(&tb)?;
    assert!(maps.contains("pass_rewritten"), "{maps}");
    Ok(())
}

/// Waits (bounded) for the next command on `conn` to fail, and says how.
fn next_command_error(conn: &mut redis::Connection) -> Result<(redis::RedisError, Duration)> {
    let start = Instant::now();
    for _ in 0..5 {
        match redis::cmd("PING").query::<String>(conn) {
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Ok((e, start.elapsed())),
        }
    }
    bail!("the old connection kept working after the switch")
}

fn is_reset(e: &redis::RedisError) -> bool {
    e.is_connection_dropped()
        || e.kind() == redis::ErrorKind::IoError
            && !e.is_timeout()
            && e.to_string().to_lowercase().contains("reset")
}

#[test]
fn switching_the_master_moves_new_writes_and_resets_old_connections() -> Result<()> {
    for mode in [XdpMode::Native, XdpMode::Tc] {
        switch_master(mode).with_context(|| format!("{mode}"))?;
    }
    Ok(())
}

fn switch_master(mode: XdpMode) -> Result<()> {
    let tb = testbed(mode)?;
    tb.wait_replication()?;
    let mut old = connect(&tb, tb.vip_write())?;
    assert_eq!(served_by(&mut old)?, "198.18.1.11");

    tb.backend(2).redis_cli(&["REPLICAOF", "NO", "ONE"])?;
    tb.ctl("set-master", &["mymaster", "198.18.1.12:6379"])?;

    let mut new = connect(&tb, tb.vip_write())?;
    assert_eq!(served_by(&mut new)?, "198.18.1.12");
    let _: () = redis::cmd("SET")
        .arg("e2e:after")
        .arg("1")
        .query(&mut new)?;
    assert_eq!(tb.backend(2).redis_cli(&["GET", "e2e:after"])?.trim(), "1");

    let (err, after) = next_command_error(&mut old)?;
    assert!(
        is_reset(&err),
        "expected a reset, got {err:?} after {after:?}"
    );
    assert!(!err.is_timeout(), "the old connection hung: {err:?}");
    assert!(counters(&tb)?.contains("reset_stale_flow"));
    Ok(())
}

#[test]
fn a_replica_leaving_the_read_pool_resets_its_connections() -> Result<()> {
    let tb = testbed(XdpMode::Native)?;
    let mut conn = connect(&tb, tb.vip_read())?;
    let leaving = served_by(&mut conn)?;
    let staying = if leaving == "198.18.1.12" {
        "198.18.1.13"
    } else {
        "198.18.1.12"
    };
    tb.ctl("set-read-pool", &["mymaster", &format!("{staying}:6379")])?;
    let (err, _) = next_command_error(&mut conn)?;
    assert!(is_reset(&err), "expected a reset, got {err:?}");
    for _ in 0..20 {
        let mut c = connect(&tb, tb.vip_read())?;
        assert_eq!(served_by(&mut c)?, staying);
    }
    Ok(())
}
