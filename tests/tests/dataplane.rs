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

#[test]
fn traffic_not_for_a_vip_port_passes_and_reloading_keeps_forwarding() -> Result<()> {
    let tb = testbed(XdpMode::Native)?;
    // Straight to a backend, routed by the LB's kernel with the program attached.
    let direct = tb
        .client()
        .redis_cli("198.18.1.13:6379".parse()?, &["PING"])?;
    assert_eq!(direct.trim(), "PONG");
    let mut conn = connect(&tb, tb.vip_write())?;
    let again = tb.ctl("load", &[])?;
    assert!(again.contains("already attached"), "{again}");
    let _: String = redis::cmd("PING").query(&mut conn)?;
    assert!(counters(&tb)?.contains("pass_not_service"));
    Ok(())
}

/// The id of the program a pinned object (program or link) refers to, from bpftool's JSON.
fn pinned_prog_id(kind: &str, path: &std::path::Path) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["--json", kind, "show", "pinned"])
        .arg(path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key = if kind == "link" {
        "\"prog_id\":"
    } else {
        "\"id\":"
    };
    let start = text
        .find(key)
        .context("no program id in bpftool's output")?
        + key.len();
    let digits: String = text[start..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Ok(digits.parse()?)
}

#[test]
fn upgrading_the_program_keeps_connections_and_state() -> Result<()> {
    for (mode, pin) in [(XdpMode::Native, "prog"), (XdpMode::Tc, "prog_tc")] {
        upgrade(mode, pin).with_context(|| format!("{mode}"))?;
    }
    Ok(())
}

fn upgrade(mode: XdpMode, prog_pin: &str) -> Result<()> {
    let tb = testbed(mode)?;
    let mut conn = connect(&tb, tb.vip_write())?;
    let _: () = redis::cmd("SET").arg("e2e:up").arg("1").query(&mut conn)?;
    let link = tb
        .pin_dir()
        .join(format!("link_{}", tb.lb_client_interface()));
    let before = pinned_prog_id("prog", &tb.pin_dir().join(prog_pin))?;
    assert_eq!(pinned_prog_id("link", &link)?, before);

    let out = tb.ctl("upgrade", &[])?;
    let after = pinned_prog_id("prog", &tb.pin_dir().join(prog_pin))?;
    assert_ne!(after, before, "{out}");
    assert_eq!(
        pinned_prog_id("link", &link)?,
        after,
        "the link runs the new program"
    );

    // The connection opened before the swap goes on: its flow-table entry was kept.
    let v: String = redis::cmd("GET").arg("e2e:up").query(&mut conn)?;
    assert_eq!(v, "1");
    assert_eq!(served_by(&mut conn)?, "198.18.1.11");
    assert!(counters(&tb)?.contains("fwd_to_backend"));
    Ok(())
}

/// A data plane pinned by a version with other maps (here: COUNTERS with one entry fewer and
/// FLOATING missing, as before the ARP guard) is refused with what to do, rather than a new
/// program running on maps it would misread.
#[test]
fn maps_pinned_by_another_layout_are_refused_with_a_remedy() -> Result<()> {
    let tb = testbed(XdpMode::Native)?;
    let pins = tb.pin_dir();
    std::fs::remove_file(pins.join("FLOATING"))?;
    let err = tb.ctl("maps", &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("without the map FLOATING") && msg.contains("redis-ha-ctl upgrade"),
        "{msg}"
    );
    // The remedy works: an older version's data plane gets the map it lacks.
    tb.ctl("upgrade", &[])?;
    tb.ctl("maps", &[])?;

    std::fs::remove_file(pins.join("COUNTERS"))?;
    let old_counters = pins.join("COUNTERS");
    let count = (redis_ha_common::counter::COUNT - 1).to_string();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&old_counters)
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            &count,
        ])
        .args(["name", "COUNTERS"])
        .output()?;
    assert!(out.status.success(), "bpftool: {out:?}");
    let err = tb.ctl("upgrade", &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("COUNTERS: key/value/entries 4/8/{count} pinned")),
        "{msg}"
    );
    // The running program was left alone: traffic still flows.
    let mut conn = connect(&tb, tb.vip_write())?;
    let _: () = redis::cmd("SET")
        .arg("e2e:layout")
        .arg("1")
        .query(&mut conn)?;
    Ok(())
}

fn flow_table_entries(tb: &Testbed) -> Result<u64> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "show", "pinned"])
        .arg(tb.pin_dir().join("FLOWS"))
        .arg("--json")
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool map show: {out:?}"))?;
    v["max_entries"].as_u64().context("no max_entries")
}

/// `flow_table_size` sizes the connection table of a new load; a pinned table keeps its size
/// (resizing would drop every connection's entry) until an unload.
#[test]
fn the_flow_table_takes_its_size_from_the_config_at_load() -> Result<()> {
    let tb = testbed(XdpMode::Native)?;
    assert_eq!(
        flow_table_entries(&tb)?,
        u64::from(redis_ha_common::FLOW_TABLE_SIZE)
    );
    let sized = tb
        .config_toml()
        .replace("[dataplane]\n", "[dataplane]\nflow_table_size = 4096\n");
    std::fs::write(tb.config_path(), sized)?;
    tb.ctl("load", &[])?;
    assert_eq!(
        flow_table_entries(&tb)?,
        u64::from(redis_ha_common::FLOW_TABLE_SIZE)
    );
    tb.ctl("unload", &[])?;
    tb.ctl("load", &[])?;
    assert_eq!(flow_table_entries(&tb)?, 4096);
    let mut conn = connect(&tb, tb.vip_write())?;
    let _: () = redis::cmd("SET")
        .arg("e2e:size")
        .arg("1")
        .query(&mut conn)?;
    Ok(())
}

/// A TCP connection from the client namespace out of `port` of the client's address, bound
/// with SO_REUSEADDR so that two connections to different destinations may share it, as
/// Linux's own port choice lets them.
fn connect_from_port(
    tb: &Testbed,
    port: u16,
    to: SocketAddrV4,
) -> Result<std::io::Result<std::net::TcpStream>> {
    use std::os::fd::FromRawFd as _;
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }
    let from = SocketAddrV4::new("198.18.0.2".parse()?, port);
    in_netns(&tb.client().path(), move || {
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket calls on a descriptor owned here, which the TcpStream takes
        // over (or which is closed on error); the addresses outlive the calls.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let stream = std::net::TcpStream::from_raw_fd(fd);
            let one: libc::c_int = 1;
            let (src, dst) = (sockaddr(from), sockaddr(to));
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
                || libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) != 0
                || libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(stream)
        }
    })
}

fn ping(stream: &mut std::net::TcpStream) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn a_client_port_reused_for_the_other_vip_port_never_breaks_the_live_connection() -> Result<()> {
    let tb = testbed(XdpMode::Native)?;
    // The master serves reads too (what `read_from_master` does when no replica can).
    tb.ctl("set-read-pool", &["mymaster", "198.18.1.11:6379"])?;
    let port = 45123;
    let mut write = connect_from_port(&tb, port, tb.vip_write())??;
    assert_eq!(ping(&mut write)?, "+PONG\r\n");
    let second = connect_from_port(&tb, port, tb.vip_read())?;
    match &second {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!(
            "the second connection should be refused at once, got {other:?}\n{}",
            tb.ctl("maps", &["--flows", "10"])?
        ),
    }
    assert_eq!(
        ping(&mut write)?,
        "+PONG\r\n",
        "the live connection must keep working"
    );
    assert!(counters(&tb)?.contains("reset_port_in_use"));
    // Another port is fine.
    let mut read = connect_from_port(&tb, port + 1, tb.vip_read())??;
    assert_eq!(ping(&mut read)?, "+PONG\r\n");
    Ok(())
}

/// A data plane attached at one hook is not silently doubled by a config that names the
/// other: `load` says what to do instead.
#[test]
fn loading_at_another_hook_than_the_pinned_one_is_refused_with_a_remedy() -> Result<()> {
    let tb = testbed(XdpMode::Tc)?;
    let config = std::fs::read_to_string(tb.config_path())?;
    assert!(config.contains("xdp_mode = \"tc\""), "{config}");
    let native = tb.config_path().with_file_name("native.toml");
    std::fs::write(
        &native,
        config.replace("xdp_mode = \"tc\"", "xdp_mode = \"native\""),
    )?;
    let mut cmd = tb.ctl_command()?;
    cmd.arg("load").arg("--config").arg(&native);
    let err = redis_ha_tests::run_within(&mut cmd, Duration::from_secs(60)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("TC ingress") && msg.contains("unload"),
        "{msg}"
    );
    // Still forwarding at the TC hook.
    let mut conn = connect(&tb, tb.vip_write())?;
    assert_eq!(served_by(&mut conn)?, "198.18.1.11");
    Ok(())
}

/// `xdp_mode = "auto"` on veths (every interface of the testbed) runs the TC hook, where XDP
/// would copy every packet, and keeps it across a reload.
#[test]
fn auto_runs_the_tc_hook_when_every_interface_is_a_veth() -> Result<()> {
    let tb = testbed(XdpMode::Auto)?;
    assert!(tb.pin_dir().join("prog_tc").exists(), "no prog_tc pinned");
    assert!(
        !tb.pin_dir().join("prog").exists(),
        "an XDP program is pinned"
    );
    let mut conn = connect(&tb, tb.vip_write())?;
    assert_eq!(served_by(&mut conn)?, "198.18.1.11");
    let again = tb.ctl("load", &[])?;
    assert!(again.contains("already attached"), "{again}");
    let _: String = redis::cmd("PING").query(&mut conn)?;
    Ok(())
}

/// At the TC hook a local sender's partial checksum (`tx on`, the default on veth, as in
/// containers) stays correct through the rewrite: the LB's own ends have checksum offload
/// off, so the kernel completes each checksum in software from what the program left, and
/// the receivers check the result. A full-checksum update of a partial one (what the XDP
/// path does, hence its `tx off` requirement) fails here: the connection never completes.
#[test]
fn the_tc_hook_keeps_partial_checksums_correct() -> Result<()> {
    let tb = testbed(XdpMode::Tc)?;
    let offload =
        |ns: &redis_ha_tests::Netns, dev: &str, on: &str| ns.run("ethtool", &["-K", dev, "tx", on]);
    offload(tb.client(), tb.client_interface(), "on")?;
    offload(tb.lb(), tb.lb_client_interface(), "off")?;
    for b in tb.backends() {
        offload(b.netns(), b.interface(), "on")?;
        offload(tb.lb(), b.lb_interface(), "off")?;
    }
    let mut w = connect(&tb, tb.vip_write())?;
    let _: () = redis::cmd("SET").arg("e2e:csum").arg("x").query(&mut w)?;
    assert_eq!(served_by(&mut w)?, "198.18.1.11");
    let mut r = connect(&tb, tb.vip_read())?;
    let _: String = redis::cmd("PING").query(&mut r)?;
    Ok(())
}

/// Packets the LB device `dev` has transmitted (`ip -s link`).
fn tx_packets(tb: &Testbed, dev: &str) -> Result<u64> {
    let out = tb.lb().ip(&["-s", "-j", "link", "show", dev])?;
    let links: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    links[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .with_context(|| format!("no tx packets for {dev} in {out}"))
}

/// `n` PINGs on a new write-port connection; returns how many packets the LB's client-side
/// veth transmitted meanwhile.
fn pings_through_client_veth(tb: &Testbed, n: usize) -> Result<u64> {
    let mut conn = connect(tb, tb.vip_write())?;
    let dev = tb.lb_client_interface();
    let before = tx_packets(tb, dev)?;
    for _ in 0..n {
        let pong: String = redis::cmd("PING").query(&mut conn)?;
        ensure!(pong == "PONG", "PING answered {pong:?}");
    }
    Ok(tx_packets(tb, dev)? - before)
}

/// At the TC hook, a packet leaving through a veth whose peer is in another namespace goes
/// straight to the peer (the client gets every reply, and the LB's veth transmits none of
/// them); a veth whose peer is in the LB's own namespace is left to transmit; and
/// `veth_peer_redirect = false` sends every packet through the egress veth again, where
/// `tcpdump` sees it.
#[test]
fn replies_go_straight_to_the_veth_peer_unless_turned_off() -> Result<()> {
    let tb = testbed(XdpMode::Tc)?;
    // A veth pair inside the LB namespace (removed with it), attached like the others.
    let local = format!("rha-{}-p0", tb.tag());
    tb.lb().ip(&[
        "link",
        "add",
        &local,
        "type",
        "veth",
        "peer",
        "name",
        &format!("rha-{}-p1", tb.tag()),
    ])?;
    tb.lb().ip(&["link", "set", &local, "up"])?;
    let lc = tb.lb_client_interface().to_owned();
    let with_local =
        tb.config_toml()
            .replacen(&format!("\"{lc}\""), &format!("\"{lc}\", \"{local}\""), 1);
    std::fs::write(tb.config_path(), &with_local)?;
    let loaded = tb.ctl("load", &[])?;
    for iface in tb.lb_interfaces() {
        let line = loaded
            .lines()
            .find(|l| l.starts_with(&format!("{iface}:")))
            .with_context(|| format!("no line for {iface} in {loaded}"))?;
        ensure!(
            line.contains("veth peer"),
            "{iface} not redirected to its peer: {line}"
        );
    }
    let line = loaded
        .lines()
        .find(|l| l.starts_with(&format!("{local}:")))
        .with_context(|| format!("no line for {local} in {loaded}"))?;
    ensure!(
        !line.contains("veth peer"),
        "a same-namespace veth is redirected to its peer: {line}"
    );

    // Room for the odd ARP or IPv6 packet the LB's stack sends by itself.
    let sent = pings_through_client_veth(&tb, 200)?;
    ensure!(
        sent < 20,
        "the client veth transmitted {sent} packets for 200 PINGs"
    );

    let off = with_local.replace("[dataplane]\n", "[dataplane]\nveth_peer_redirect = false\n");
    std::fs::write(tb.config_path(), off)?;
    let reloaded = tb.ctl("load", &[])?;
    ensure!(!reloaded.contains("veth peer"), "{reloaded}");
    // Cached next hops keep the old answer for up to NEXT_HOP_TTL_NS; a new connection asks.
    std::thread::sleep(Duration::from_nanos(redis_ha_common::NEXT_HOP_TTL_NS));
    let sent = pings_through_client_veth(&tb, 200)?;
    ensure!(
        sent >= 200,
        "the client veth transmitted only {sent} packets for 200 PINGs"
    );
    Ok(())
}

fn accept_local(tb: &Testbed, dev: &str) -> Result<String> {
    Ok(tb
        .lb()
        .run(
            "sysctl",
            &["-n", &format!("net.ipv4.conf.{dev}.accept_local")],
        )?
        .trim()
        .to_owned())
}

/// `load` sets `accept_local = 1` on the data-plane interfaces (see `write_accept_local`);
/// an interface dropped from the config, and every interface at `unload`, gets back the
/// value it had before the first load, an operator's own 1 included.
#[test]
fn unload_gives_accept_local_back() -> Result<()> {
    require_root();
    let tb = Testbed::up(TestbedOptions {
        tag: unique_tag(),
        backends: 3,
        xdp_mode: XdpMode::Tc,
        bridged_backends: false,
    })?;
    let [lc, l1, l2, l3] = [
        tb.lb_client_interface().to_owned(),
        tb.backend(1).lb_interface().to_owned(),
        tb.backend(2).lb_interface().to_owned(),
        tb.backend(3).lb_interface().to_owned(),
    ];
    tb.lb()
        .set_sysctl(&format!("net.ipv4.conf.{l2}.accept_local"), "1")?;
    for dev in [&lc, &l1, &l3] {
        ensure!(accept_local(&tb, dev)? == "0", "{dev} does not start at 0");
    }

    tb.ctl("load", &[])?;
    for dev in [&lc, &l1, &l2, &l3] {
        ensure!(accept_local(&tb, dev)? == "1", "{dev} not set by load");
    }
    // A second load saves nothing new: the values saved stay those from before the first.
    tb.ctl("load", &[])?;

    let without_l3 = tb.config_toml().replacen(&format!(", \"{l3}\""), "", 1);
    ensure!(
        without_l3 != tb.config_toml(),
        "{l3} not found in the config"
    );
    std::fs::write(tb.config_path(), without_l3)?;
    tb.ctl("load", &[])?;
    ensure!(
        accept_local(&tb, &l3)? == "0",
        "{l3} kept 1 after leaving the config"
    );
    ensure!(
        accept_local(&tb, &l1)? == "1",
        "{l1} lost its 1 while still configured"
    );

    let out = tb.ctl("unload", &[])?;
    ensure!(out.contains("accept_local given back"), "{out}");
    for (dev, want) in [(&lc, "0"), (&l1, "0"), (&l2, "1"), (&l3, "0")] {
        let got = accept_local(&tb, dev)?;
        ensure!(
            got == want,
            "{dev}: accept_local {got} after unload, {want} before load"
        );
    }
    Ok(())
}

/// `FLOWS` never evicts, so the daemon sweeps what the program cannot see end: here, on the
/// real pinned table, a connection that ended with a reset two minutes ago goes, while one
/// idle for as long (a quiet subscriber, say) and a live one in use stay.
#[test]
fn the_sweep_removes_ended_connections_and_keeps_idle_and_live_ones() -> Result<()> {
    use redis_ha_common::flow_end;
    use redis_ha_ctl::dataplane::bpf::BpfDataplane;

    let tb = testbed(XdpMode::Tc)?;
    let mut live = connect(&tb, tb.vip_write())?;
    let _: () = redis::cmd("SET")
        .arg("e2e:sweep")
        .arg("1")
        .query(&mut live)?;
    wait_for_flow_entries(&tb, 1)?;

    let now = redis_ha_ctl::ha::net::monotonic_ns();
    let two_minutes = 120_000_000_000;
    let reset = tb.made_up_connection(50_000, now - two_minutes, flow_end::RST);
    let idle = tb.made_up_connection(50_001, now - two_minutes, 0);
    let mut flows = tb.flows_map()?;
    for (k, v) in [&reset, &idle] {
        flows.insert(k, v, 0)?;
    }

    let mut dp = BpfDataplane::open(&tb.pin_dir())?;
    let sweep = dp.sweep_flows(now)?;
    assert_eq!(sweep.removed, 1, "{sweep:?}");
    assert_eq!(
        sweep.entries, 2,
        "the live and the idle connection: {sweep:?}"
    );
    assert!(
        flows.get(&reset.0, 0).is_err(),
        "the reset connection is gone"
    );
    assert_eq!(
        flows.get(&idle.0, 0).ok(),
        Some(idle.1),
        "the idle connection stays"
    );
    let v: String = redis::cmd("GET").arg("e2e:sweep").query(&mut live)?;
    assert_eq!(v, "1", "the live connection still works");
    Ok(())
}
