//! The connection table: its size, client ports reused across VIP ports, and the sweep.

use super::*;

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
