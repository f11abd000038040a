//! A router whose backend side is a Linux bridge (as docker0 or libvirt's virbr0 are), with the
//! data plane on the client veth and the bridge. Native XDP cannot transmit through a bridge:
//! `auto` must pick the TC hook there, `native` must be refused before anything is attached,
//! and an XDP data plane an older `auto` pinned must not be kept.

use anyhow::{Result, ensure};
use redis_ha_tests::{Testbed, TestbedOptions, XdpMode, require_root, unique_tag};

fn bridged_testbed(mode: XdpMode) -> Result<Testbed> {
    require_root();
    Testbed::up(TestbedOptions {
        tag: unique_tag(),
        backends: 2,
        xdp_mode: mode,
        bridged_backends: true,
    })
}

/// Rewrites the testbed's config with another `xdp_mode`.
fn set_mode(tb: &Testbed, mode: XdpMode) -> Result<()> {
    let from = format!("xdp_mode = \"{}\"", tb.xdp_mode());
    let config = tb.config_toml();
    ensure!(config.contains(&from), "no {from} in:\n{config}");
    let to = format!("xdp_mode = \"{mode}\"");
    std::fs::write(tb.config_path(), config.replace(&from, &to))?;
    Ok(())
}

/// A SET then a GET through the VIP's write port from the client, and the value on the master.
fn write_through_the_vip(tb: &Testbed, key: &str, value: &str) -> Result<()> {
    let client = tb.client();
    let set = client.redis_cli(tb.vip_write(), &["SET", key, value])?;
    ensure!(set.trim() == "OK", "SET through the VIP: {set:?}");
    let got = client.redis_cli(tb.vip_write(), &["GET", key])?;
    ensure!(got.trim() == value, "GET through the VIP: {got:?}");
    let on_master = tb.backend(1).redis_cli(&["GET", key])?;
    ensure!(on_master.trim() == value, "on the master: {on_master:?}");
    Ok(())
}

/// What `ip link` says is attached at XDP to the LB's interfaces (`xdp`, `xdpgeneric`).
fn xdp_attached(tb: &Testbed) -> Result<Vec<String>> {
    let links = tb.lb().ip(&["-o", "link", "show"])?;
    Ok(links
        .lines()
        .filter(|l| l.contains(" xdp"))
        .map(str::to_owned)
        .collect())
}

#[test]
fn native_is_refused_and_auto_picks_tc_which_forwards_through_the_bridge() -> Result<()> {
    let tb = bridged_testbed(XdpMode::Native)?;
    let [veth, bridge] = <[String; 2]>::try_from(tb.lb_interfaces()).expect("two interfaces");

    let refused = tb.ctl("load", &[]).unwrap_err().to_string();
    ensure!(
        refused.contains(&format!("interface {bridge} is a bridge"))
            && refused.contains("xdp_mode = \"tc\" or \"auto\""),
        "native on a bridge should be refused with what to set: {refused}"
    );
    ensure!(
        !tb.pin_dir().exists(),
        "a refused load left {}",
        tb.pin_dir().display()
    );
    let attached = xdp_attached(&tb)?;
    ensure!(attached.is_empty(), "a refused load attached: {attached:?}");

    set_mode(&tb, XdpMode::Auto)?;
    let loaded = tb.ctl("load", &[])?;
    for iface in [&veth, &bridge] {
        ensure!(
            loaded.contains(&format!("{iface}: attached (tc")),
            "auto should attach {iface} at the TC hook:\n{loaded}"
        );
    }
    ensure!(
        tb.pin_dir().join("prog_tc").exists(),
        "the TC program is not pinned"
    );
    write_through_the_vip(&tb, "bridged:auto", "tc")?;
    let maps = tb.ctl("maps", &["--flows", "0"])?;
    ensure!(
        maps.contains("fwd_to_backend") && maps.contains("fwd_to_client"),
        "{maps}"
    );
    Ok(())
}

/// Generic XDP hands a redirected packet to the bridge's own transmit, so `skb` is not
/// refused. `auto` does not keep a pinned XDP data plane on this interface set, as it cannot
/// tell generic links from native ones (an older `auto` left native on the veth, which drops
/// every packet bound for the bridge): it says to unload, and after that picks TC.
#[test]
fn skb_forwards_through_the_bridge_and_auto_will_not_keep_a_pinned_xdp_data_plane() -> Result<()> {
    let tb = bridged_testbed(XdpMode::Skb)?;
    let loaded = tb.ctl("load", &[])?;
    ensure!(
        loaded.matches("attached (skb)").count() == 2,
        "skb on both interfaces:\n{loaded}"
    );
    write_through_the_vip(&tb, "bridged:skb", "generic")?;

    set_mode(&tb, XdpMode::Auto)?;
    let refused = tb.ctl("load", &[]).unwrap_err().to_string();
    ensure!(
        refused.contains("is a bridge") && refused.contains("unload"),
        "auto should refuse the pinned XDP data plane and say to unload: {refused}"
    );
    tb.ctl("unload", &[])?;
    let loaded = tb.ctl("load", &[])?;
    ensure!(
        loaded.matches("attached (tc").count() == 2,
        "after unload, auto picks TC:\n{loaded}"
    );
    write_through_the_vip(&tb, "bridged:auto-after-skb", "tc")?;
    Ok(())
}
