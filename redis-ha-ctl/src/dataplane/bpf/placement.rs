//! Which hook a configuration gets, and at XDP in which mode new links attach: decided from
//! `xdp_mode`, the hook of a data plane already pinned, and whether XDP can transmit through
//! each configured interface. A configuration whose XDP could not reach an interface is
//! refused here, before anything is attached.
//!
//! Why transmitting matters: the program forwards by redirecting a packet to the egress
//! interface. From native XDP that goes through the egress driver's XDP transmit
//! (`ndo_xdp_xmit`); where there is none (a Linux bridge such as docker0 or virbr0, a VLAN,
//! ...) the kernel drops the packet after the program counted it as forwarded, and only the
//! `xdp:xdp_redirect_err` trace event sees it. The TC hook and generic (skb) XDP hand the
//! packet to the interface's ordinary transmit, which every interface has.

use std::path::Path;

use super::{BpfError, hook::Hook, host};
use crate::config::{DataplaneConfig, XdpMode};

/// Where the program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placement {
    Tc,
    Xdp(XdpLinks),
}

/// The mode an XDP link gets when it is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum XdpLinks {
    Native,
    Skb,
    /// Native where the driver has it, generic elsewhere: chosen only when XDP can transmit
    /// through every interface, since a native link would redirect into the generic ones too.
    NativeElseSkb,
}

impl Placement {
    /// Where `cfg`'s data plane runs on this host, or why it cannot run as configured.
    pub(super) fn for_config(cfg: &DataplaneConfig) -> Result<Self, BpfError> {
        let drivers: Vec<(&str, Option<String>)> = cfg
            .interfaces
            .iter()
            .map(|i| (i.as_str(), host::driver_of(i)))
            .collect();
        let drivers: Vec<(&str, Option<&str>)> =
            drivers.iter().map(|(i, d)| (*i, d.as_deref())).collect();
        let pinned = Hook::pinned(&cfg.pin_dir);
        let placement = place(
            cfg.xdp_mode,
            pinned,
            &drivers,
            host::kernel_has_tcx(),
            &cfg.pin_dir,
        )?;
        let interfaces: Vec<(&str, XdpTransmit)> = drivers
            .iter()
            .map(|(i, d)| (*i, XdpTransmit::of(*d)))
            .collect();
        let unfit = interfaces.iter().find(|(_, t)| *t != XdpTransmit::Yes);
        match (cfg.xdp_mode, placement, unfit) {
            (XdpMode::Auto, Placement::Tc, Some((iface, t))) if pinned.is_none() => {
                tracing::info!(
                    "xdp_mode = \"auto\": the TC hook, since interface {iface} {}",
                    t.describe()
                );
            }
            (XdpMode::Native, _, _) => {
                for (iface, t) in &interfaces {
                    if matches!(t, XdpTransmit::Unknown(_)) {
                        tracing::warn!(
                            "xdp_mode = \"native\": interface {iface} {}; if it has none, \
                             packets redirected there are dropped silently (xdp_mode = \"tc\" \
                             works through any interface)",
                            t.describe()
                        );
                    }
                }
            }
            _ => {}
        }
        Ok(placement)
    }

    pub(super) fn hook(self) -> Hook {
        match self {
            Self::Tc => Hook::Tc,
            Self::Xdp(_) => Hook::Xdp,
        }
    }
}

/// Whether XDP can transmit through an interface, told by its driver's name (`ethtool -i`).
///
/// The driver, because it is asked through a socket, which answers for the caller's network
/// namespace; `/sys/class/net/<if>/bridge` shows the namespace that mounted `/sys`, another one
/// for a controller entered into its namespace with `nsenter --net` or in a container sharing
/// the host's `/sys`. The kernel's own answer (`xdp_features`, bit `NDO_XMIT`, Linux 6.3+)
/// needs a generic-netlink client for one bit, and on a veth it flips with the peer's GRO
/// setting. A driver missing from both lists counts as unable under `auto`: the TC hook
/// forwards through any interface, so a wrong guess costs speed, never packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum XdpTransmit {
    Yes,
    /// A kind of device that has no XDP transmit, e.g. "a bridge".
    No(&'static str),
    /// A driver in neither list, or none named.
    Unknown(Option<String>),
}

/// Drivers that implement `ndo_xdp_xmit` (in the kernels of the last years: igb and qede
/// since 5.10, hv_netvsc since 6.0), as `ethtool -i` names them.
const TRANSMITTING_DRIVERS: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "mlx5_core",
    "i40e",
    "ice",
    "ixgbe",
    "igb",
    "igc",
    "bnxt_en",
    "ena",
    "qede",
    "sfc",
    "hv_netvsc",
    "gve",
    "mana",
];

/// Virtual devices without any XDP transmit, as `ethtool -i` names their driver, and what to
/// call them. A bond is left out: it transmits XDP when every member's driver does.
const NON_TRANSMITTING: &[(&str, &str)] = &[
    ("bridge", "a bridge"),
    ("802.1Q VLAN Support", "a VLAN"),
    ("macvlan", "a macvlan"),
    ("ipvlan", "an ipvlan"),
    ("team", "a team device"),
    ("vxlan", "a VXLAN tunnel"),
    ("openvswitch", "an Open vSwitch port"),
];

impl XdpTransmit {
    pub(super) fn of(driver: Option<&str>) -> Self {
        match driver {
            Some(d) if TRANSMITTING_DRIVERS.contains(&d) => Self::Yes,
            Some(d) => match NON_TRANSMITTING.iter().find(|(name, _)| *name == d) {
                Some((_, what)) => Self::No(what),
                None => Self::Unknown(Some(d.to_owned())),
            },
            None => Self::Unknown(None),
        }
    }

    /// Follows "interface br0 ".
    fn describe(&self) -> String {
        match self {
            Self::Yes => "has XDP transmit".to_owned(),
            Self::No(what) => format!("is {what}: XDP cannot transmit through it"),
            Self::Unknown(Some(driver)) => {
                format!("has driver {driver}, not known to have XDP transmit (ndo_xdp_xmit)")
            }
            Self::Unknown(None) => {
                "has no driver ethtool can name, so no known XDP transmit".to_owned()
            }
        }
    }
}

/// The placement for `mode`, given the hook of a pinned data plane, each interface's driver
/// (`ethtool -i`, if it names one), and whether the kernel has TCX links (which the TC hook uses).
///
/// `auto` picks the TC hook when any interface lacks XDP transmit (one program serves every
/// interface, and any of them may be the egress), and also when every interface is a veth
/// (XDP would copy every packet there first); XDP otherwise, native where the driver has it.
/// A pinned data plane keeps its hook, unless that is XDP and can no longer transmit through
/// every interface: refused then, as is `auto` without TCX where XDP cannot do. `native`
/// refuses interfaces known to have no XDP transmit. `skb` takes any: generic XDP sends a
/// redirected packet through the interface's ordinary transmit.
fn place(
    mode: XdpMode,
    pinned: Option<Hook>,
    drivers: &[(&str, Option<&str>)],
    tcx: bool,
    pin_dir: &Path,
) -> Result<Placement, BpfError> {
    let interfaces: Vec<(&str, XdpTransmit)> = drivers
        .iter()
        .map(|(i, d)| (*i, XdpTransmit::of(*d)))
        .collect();
    let refuse = |iface: &str, t: &XdpTransmit, remedy: String| BpfError::NoXdpTransmit {
        iface: iface.to_owned(),
        what: t.describe(),
        remedy,
    };
    match mode {
        XdpMode::Tc => Ok(Placement::Tc),
        XdpMode::Skb => Ok(Placement::Xdp(XdpLinks::Skb)),
        XdpMode::Native => match interfaces
            .iter()
            .find(|(_, t)| matches!(t, XdpTransmit::No(_)))
        {
            Some((iface, t)) => Err(refuse(
                iface,
                t,
                "set [dataplane] xdp_mode = \"tc\" or \"auto\"".to_owned(),
            )),
            None => Ok(Placement::Xdp(XdpLinks::Native)),
        },
        XdpMode::Auto => {
            let unfit = interfaces.iter().find(|(_, t)| *t != XdpTransmit::Yes);
            let all_veth = !drivers.is_empty() && drivers.iter().all(|(_, d)| *d == Some("veth"));
            match (pinned, unfit) {
                (Some(Hook::Tc), _) => Ok(Placement::Tc),
                (Some(Hook::Xdp), None) => Ok(Placement::Xdp(XdpLinks::NativeElseSkb)),
                (Some(Hook::Xdp), Some((iface, t))) => Err(refuse(
                    iface,
                    t,
                    format!(
                        "the data plane pinned at {} runs at the XDP hook: run `redis-ha-ctl \
                         unload --config FILE`, then `load` again picks the TC hook \
                         (forwarding stops in between)",
                        pin_dir.display()
                    ),
                )),
                (None, Some(_)) if tcx => Ok(Placement::Tc),
                (None, Some((iface, t))) => Err(refuse(
                    iface,
                    t,
                    "the TC hook needs TCX links (Linux 6.6+), which this kernel lacks: set \
                     [dataplane] xdp_mode = \"skb\" (generic XDP transmits through any \
                     interface, copying each packet)"
                        .to_owned(),
                )),
                (None, None) if all_veth && tcx => Ok(Placement::Tc),
                (None, None) => Ok(Placement::Xdp(XdpLinks::NativeElseSkb)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_DIR: &str = "/sys/fs/bpf/redis-ha";

    /// `place` for interfaces named after their drivers' position ("if0", "if1", ...).
    fn placed(
        mode: XdpMode,
        pinned: Option<Hook>,
        drivers: &[Option<&str>],
        tcx: bool,
    ) -> Result<Placement, String> {
        let names: Vec<String> = (0..drivers.len()).map(|i| format!("if{i}")).collect();
        let interfaces: Vec<(&str, Option<&str>)> = names
            .iter()
            .map(String::as_str)
            .zip(drivers.iter().copied())
            .collect();
        place(mode, pinned, &interfaces, tcx, Path::new(PIN_DIR)).map_err(|e| e.to_string())
    }

    const VETH: Option<&str> = Some("veth");
    const MLX5: Option<&str> = Some("mlx5_core");
    const BRIDGE: Option<&str> = Some("bridge");
    const E1000E: Option<&str> = Some("e1000e");
    const BOND: Option<&str> = Some("bonding");
    const NATIVE_ELSE_SKB: Placement = Placement::Xdp(XdpLinks::NativeElseSkb);

    #[test]
    fn drivers_are_sorted_into_transmitting_not_and_unknown() {
        assert_eq!(XdpTransmit::of(VETH), XdpTransmit::Yes);
        assert_eq!(XdpTransmit::of(MLX5), XdpTransmit::Yes);
        assert_eq!(XdpTransmit::of(BRIDGE), XdpTransmit::No("a bridge"));
        assert_eq!(
            XdpTransmit::of(Some("802.1Q VLAN Support")),
            XdpTransmit::No("a VLAN")
        );
        assert_eq!(
            XdpTransmit::of(BOND),
            XdpTransmit::Unknown(Some("bonding".to_owned()))
        );
        assert_eq!(XdpTransmit::of(None), XdpTransmit::Unknown(None));
    }

    #[test]
    fn auto_on_a_new_data_plane_picks_tc_for_veths_only_or_any_interface_without_xdp_transmit() {
        let auto = |drivers: &[Option<&str>]| placed(XdpMode::Auto, None, drivers, true);
        assert_eq!(auto(&[VETH, VETH]), Ok(Placement::Tc));
        // The user's router: the backends behind a Linux bridge.
        assert_eq!(auto(&[VETH, BRIDGE]), Ok(Placement::Tc));
        assert_eq!(auto(&[MLX5, BRIDGE]), Ok(Placement::Tc));
        assert_eq!(auto(&[MLX5, E1000E]), Ok(Placement::Tc));
        assert_eq!(auto(&[MLX5, BOND]), Ok(Placement::Tc));
        assert_eq!(auto(&[VETH, None]), Ok(Placement::Tc));
        // Every interface transmits XDP, and NICs are among them: XDP, for the NICs' sake.
        assert_eq!(auto(&[VETH, MLX5]), Ok(NATIVE_ELSE_SKB));
        assert_eq!(auto(&[MLX5, Some("ice")]), Ok(NATIVE_ELSE_SKB));
        assert_eq!(auto(&[]), Ok(NATIVE_ELSE_SKB));
    }

    #[test]
    fn auto_without_tcx_keeps_xdp_where_it_transmits_and_refuses_where_not() {
        let auto = |drivers: &[Option<&str>]| placed(XdpMode::Auto, None, drivers, false);
        assert_eq!(auto(&[VETH, VETH]), Ok(NATIVE_ELSE_SKB));
        assert_eq!(auto(&[VETH, MLX5]), Ok(NATIVE_ELSE_SKB));
        let refused = auto(&[VETH, BRIDGE]).unwrap_err();
        assert!(
            refused.contains("interface if1 is a bridge")
                && refused.contains("Linux 6.6")
                && refused.contains("xdp_mode = \"skb\""),
            "{refused}"
        );
    }

    #[test]
    fn auto_keeps_a_pinned_hook_unless_xdp_cannot_transmit_through_an_interface() {
        let pinned =
            |hook, drivers: &[Option<&str>]| placed(XdpMode::Auto, Some(hook), drivers, true);
        assert_eq!(pinned(Hook::Tc, &[MLX5, Some("ice")]), Ok(Placement::Tc));
        assert_eq!(pinned(Hook::Tc, &[VETH, BRIDGE]), Ok(Placement::Tc));
        // A restart never moves a working data plane, even where a new load would pick TC.
        assert_eq!(pinned(Hook::Xdp, &[VETH, VETH]), Ok(NATIVE_ELSE_SKB));
        // What an older version's `auto` left on the user's router.
        let refused = pinned(Hook::Xdp, &[VETH, BRIDGE]).unwrap_err();
        assert!(
            refused.contains("interface if1 is a bridge")
                && refused.contains(PIN_DIR)
                && refused.contains("unload"),
            "{refused}"
        );
    }

    #[test]
    fn native_refuses_an_interface_without_xdp_transmit_and_says_what_to_set() {
        let native = |drivers: &[Option<&str>]| placed(XdpMode::Native, None, drivers, true);
        assert_eq!(native(&[VETH, MLX5]), Ok(Placement::Xdp(XdpLinks::Native)));
        // Unknown drivers are the operator's call (warned about, not refused).
        assert_eq!(
            native(&[MLX5, E1000E]),
            Ok(Placement::Xdp(XdpLinks::Native))
        );
        assert_eq!(
            native(&[VETH, BRIDGE]).unwrap_err(),
            "interface if1 is a bridge: XDP cannot transmit through it (a packet the program \
             redirects there is dropped without a trace): set [dataplane] xdp_mode = \"tc\" or \
             \"auto\""
        );
    }

    #[test]
    fn tc_and_skb_take_any_interface() {
        for tcx in [true, false] {
            for drivers in [&[VETH, BRIDGE][..], &[MLX5, E1000E], &[VETH, VETH]] {
                assert_eq!(placed(XdpMode::Tc, None, drivers, tcx), Ok(Placement::Tc));
                assert_eq!(
                    placed(XdpMode::Skb, None, drivers, tcx),
                    Ok(Placement::Xdp(XdpLinks::Skb))
                );
            }
        }
    }
}
