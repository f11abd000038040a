//! A network of their own for the backends' replication, beside the testbed's routed veths.
//!
//! ```text
//!   rha-T-rN                              rha-T-rp
//!   rha-T-pN 198.19.0.1N/24 ───────────── rha-T-bN ── bridge rha-T-rb
//! ```
//! In [`Testbed`] the backends reach each other only through the LB namespace (proxy_arp on
//! the routed veths), so the master's replication streams cross the native-XDP veths twice
//! and compete with the client traffic the bench measures; with two replicas that is twice
//! the bytes of every write, and it showed reordering and spurious retransmissions there. On real hosts replicas share an L2 segment with their master, not a hop through
//! the balancer. This module gives the benchmark that layout: client traffic (direct or
//! through the VIP) still goes through the LB namespace exactly as before, replication goes
//! over a plain bridge.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};

use super::{REDIS_PORT, Testbed, backend_ip, wait_replication};
use crate::netns::Netns;

/// Backend `n`'s address on the replication network: 198.19.0.1N.
pub fn replication_ip(n: usize) -> Ipv4Addr {
    let [_, _, _, last] = backend_ip(n).octets();
    Ipv4Addr::new(198, 19, 0, last)
}

/// The replication network's namespace (bridge and its ports); dropping it deletes the
/// namespace, which takes every backend's replication veth with it.
#[derive(Debug)]
pub struct ReplicationNetwork {
    _ns: Netns,
}

impl Testbed {
    /// Moves replication onto a network of its own (see the module docs): every backend gets
    /// a second veth to a bridge, the master also listens there, and the replicas replicate
    /// from that address (also after a restart). Waits until they are in sync again.
    ///
    /// Keep the result while the testbed runs; it must be dropped before the testbed (declare
    /// it after).
    pub fn separate_replication_network(&mut self) -> Result<ReplicationNetwork> {
        let prefix = super::namespace_prefix(&self.tag);
        let ns = Netns::create(&format!("{prefix}rp"))?;
        let bridge = format!("{prefix}rb");
        ns.ip(&["link", "add", &bridge, "type", "bridge"])?;
        ns.ip(&["link", "set", &bridge, "up"])?;
        let master = replication_ip(1);
        for backend in &mut self.backends {
            let n = backend.index;
            let port = format!("{prefix}b{n}");
            let interface = format!("{prefix}p{n}");
            ns.add_veth(&port, &interface, &backend.ns)?;
            ns.ip(&["link", "set", &port, "master", &bridge, "up"])?;
            let ip = replication_ip(n);
            backend
                .ns
                .ip(&["addr", "add", &format!("{ip}/24"), "dev", &interface])?;
            backend.ns.ip(&["link", "set", &interface, "up"])?;

            // The server binds its addresses explicitly: add this one, now and for restarts.
            let bind = backend
                .args
                .iter()
                .position(|a| a == "--bind")
                .context("redis-server arguments without --bind")?;
            backend.args.insert(bind + 1, ip.to_string());
            let addrs: Vec<&str> = backend.args[bind + 1..]
                .iter()
                .take_while(|a| !a.starts_with("--"))
                .map(String::as_str)
                .collect();
            backend.redis_cli(&["CONFIG", "SET", "bind", &addrs.join(" ")])?;
        }
        for replica in &mut self.backends[1..] {
            if let Some(of) = replica.args.iter().position(|a| a == "--replicaof") {
                replica.args[of + 1] = master.to_string();
            }
            replica.redis_cli(&["REPLICAOF", &master.to_string(), &REDIS_PORT.to_string()])?;
        }
        // The master's view changes only when the replicas reconnect from their new address.
        wait_replication(&self.backends)?;
        for replica in &self.backends[1..] {
            let info = replica.redis_cli(&["INFO", "replication"])?;
            let wanted = format!("master_host:{master}");
            if !info.contains(&wanted) {
                bail!(
                    "backend {} does not replicate over the replication network \
                     ({wanted} missing from INFO replication)",
                    replica.index
                );
            }
        }
        Ok(ReplicationNetwork { _ns: ns })
    }
}
