//! Another host on the backends' segment, which is not a backend: where an attacker who shares
//! the backends' network (another container on the same bridge) sends from.
//!
//! ```text
//!   rha-T-x                        rha-T-lb
//!   rha-T-x 198.18.1.N/24 ──────── rha-T-lx ── bridge rha-T-br (198.18.1.1/24)
//! ```

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

use super::{LB_BACKEND_IP, Testbed, setup_endpoint};
use crate::netns::Netns;

impl Testbed {
    /// A namespace `rha-<tag>-x` with one veth, a port of the backends' bridge, at `ip`/24, and
    /// its default route through the LB. Needs [`super::TestbedOptions::bridged_backends`]: in
    /// the routed topology each backend has a point-to-point veth of its own, and there is no
    /// shared segment to join. Dropping the namespace deletes the veth with it.
    pub fn add_backend_side_host(&self, ip: Ipv4Addr) -> Result<Netns> {
        let Some(bridge) = &self.backend_bridge else {
            bail!("the testbed has no backend bridge to join: build it with bridged_backends");
        };
        if self.backends.iter().any(|b| b.ip == ip) || ip == LB_BACKEND_IP {
            bail!("{ip} is taken on the backend segment");
        }
        let prefix = super::namespace_prefix(&self.tag);
        let ns = Netns::create(&format!("{prefix}x"))?;
        let interface = format!("{prefix}x");
        let lb_interface = format!("{prefix}lx");
        self.lb.add_veth(&lb_interface, &interface, &ns)?;
        self.lb
            .ip(&["link", "set", &lb_interface, "master", bridge])?;
        self.lb.ip(&["link", "set", &lb_interface, "up"])?;
        setup_endpoint(
            &ns,
            &interface,
            &format!("{ip}/24"),
            LB_BACKEND_IP,
            self.xdp_mode,
        )?;
        Ok(ns)
    }
}
