//! Loading, reloading, upgrading and unloading the program, and choosing its hook.

use super::*;

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

    // Out of `interfaces` and `backend_interfaces` both.
    let without_l3 = tb.config_toml().replace(&format!(", \"{l3}\""), "");
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
