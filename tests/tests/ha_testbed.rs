//! The LB high-availability testbed (two data-plane nodes on bridged segments) without the
//! controllers' `[ha]` section: the floating addresses are placed by hand, and the write and
//! read ports must work through whichever node holds them, including connections opened
//! through the other one. Cleanup is checked too.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::ha::{GATEWAY, owner_changes};
use redis_ha_tests::testbed::{VIP, namespace_prefix};
use redis_ha_tests::{HaCluster, HaOptions, in_netns, leftovers, require_root, wait_until};

/// Bound for one request on a held connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn write_and_read_ports_work_through_the_lb_holding_the_addresses() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions {
        ha_section: false,
        ..HaOptions::default()
    })?;
    let tag = ha.tag().to_owned();
    assert!(
        ha.address_holders()?.is_empty(),
        "nobody holds the addresses yet"
    );

    let arp = ha.capture_client_arp()?;
    ha.assign_addresses(1)?;
    assert_eq!(ha.address_holders()?.single(), Some(1));

    let client = ha.client();
    assert_eq!(
        client
            .redis_cli(ha.vip_write(), &["SET", "ha:key", "one"])?
            .trim(),
        "OK"
    );
    // A read may reach a replica before the write has: bounded retries.
    wait_until(
        "the write to be readable through the read port",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok((client.redis_cli(ha.vip_read(), &["GET", "ha:key"])?.trim() == "one").then_some(())),
    )?;
    // The read port reaches a replica, the write port the master.
    let role = |addr| -> Result<String> {
        let info = client.redis_cli(addr, &["INFO", "replication"])?;
        Ok(info
            .lines()
            .find_map(|l| l.trim().strip_prefix("role:"))
            .unwrap_or_default()
            .to_owned())
    };
    assert_eq!(role(ha.vip_write())?, "master");
    assert_eq!(role(ha.vip_read())?, "slave");

    let lb1_mac = ha.lb(1).client_mac()?;
    assert_eq!(ha.client_neighbour(VIP)?.as_deref(), Some(lb1_mac.as_str()));
    assert_eq!(
        redis_ha_tests::ha::neighbour(ha.backend(1).netns(), GATEWAY)?,
        Some(ha.lb(1).backend_mac()?),
        "the master's replies go through lb1"
    );
    let claims = arp.stop()?;
    let owners: Vec<String> = owner_changes(&claims, VIP)
        .into_iter()
        .map(|c| c.mac)
        .collect();
    assert_eq!(owners, [lb1_mac], "ARP on the client segment: {claims:?}");

    drop(ha);
    let left = leftovers(&namespace_prefix(&tag))?;
    assert!(left.is_empty(), "the HA testbed left {left}");
    Ok(())
}

/// One RESP command on an open connection; returns the reply's first line and, for a bulk
/// string, its value.
fn request(conn: &mut TcpStream, args: &[&str]) -> Result<String> {
    let mut msg = format!("*{}\r\n", args.len());
    for a in args {
        msg += &format!("${}\r\n{a}\r\n", a.len());
    }
    conn.write_all(msg.as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    // Replies here are `+OK`, `-ERR ...`, `$-1` or one short bulk string: complete once they
    // hold one line, or two for a bulk string with a value.
    loop {
        let n = conn.read(&mut buf).context("reading a reply")?;
        if n == 0 {
            bail!("the connection was closed");
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let lines = text.matches("\r\n").count();
        let needed = if text.starts_with('$') && !text.starts_with("$-1") {
            2
        } else {
            1
        };
        if lines >= needed {
            let mut parts = text.split("\r\n");
            let first = parts.next().unwrap_or_default();
            return Ok(if needed == 2 {
                parts.next().unwrap_or_default().to_owned()
            } else {
                first.to_owned()
            });
        }
        if reply.len() > 4096 {
            bail!("unexpected reply {text:?}");
        }
    }
}

#[test]
fn open_connections_keep_working_when_the_addresses_move_to_the_other_lb() -> Result<()> {
    require_root();
    let ha = HaCluster::up(HaOptions {
        ha_section: false,
        ..HaOptions::default()
    })?;
    ha.assign_addresses(1)?;

    // Sockets created in the client namespace stay there whichever thread uses them.
    let (write, read) = (ha.vip_write(), ha.vip_read());
    let (mut w, mut r) = in_netns(&ha.client().path(), move || -> Result<_> {
        let connect = |addr| -> Result<TcpStream> {
            let conn = TcpStream::connect_timeout(&SocketAddr::V4(addr), REPLY_TIMEOUT)?;
            conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
            conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
            Ok(conn)
        };
        Ok((connect(write)?, connect(read)?))
    })??;
    let (w_local, r_local) = (w.local_addr()?, r.local_addr()?);
    assert_eq!(request(&mut w, &["SET", "ha:moved", "before"])?, "+OK");
    assert_eq!(request(&mut r, &["PING"])?, "+PONG");
    let lb2_before = ha.maps(2)?;

    ha.assign_addresses(2)?;
    let lb2_mac = ha.lb(2).client_mac()?;
    wait_until(
        "the client to learn the VIP's new MAC",
        Duration::from_secs(3),
        Duration::from_millis(20),
        || Ok((ha.client_neighbour(VIP)?.as_deref() == Some(lb2_mac.as_str())).then_some(())),
    )?;

    // The same two connections, now through lb2, which never saw them open.
    for i in 0..50 {
        let value = format!("after-{i}");
        assert_eq!(
            request(&mut w, &["SET", "ha:moved", &value])
                .with_context(|| format!("SET {i} on the moved write connection"))?,
            "+OK"
        );
        request(&mut r, &["GET", "ha:moved"])
            .with_context(|| format!("GET {i} on the moved read connection"))?;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!((w.local_addr()?, r.local_addr()?), (w_local, r_local));
    let lb2_after = ha.maps(2)?;
    let master = ha.backend(1).addr();
    let forwarded = |m: &redis_ha_tests::MapsView| m.row(master).map_or(0, |row| row.pkts_in);
    assert!(
        forwarded(&lb2_after) >= forwarded(&lb2_before) + 50,
        "lb2 forwarded the moved write connection:\n{}",
        lb2_after.raw
    );
    Ok(())
}
