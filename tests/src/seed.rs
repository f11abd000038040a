//! The seed's own topology: three machines on one subnet, each running a redis-server and a
//! controller with the data plane, the VIP floating among them (the stack redis-ha replaces ran
//! redis-server, redis-sentinel and HAProxy on each machine, with Pacemaker moving the VIP).
//!
//! ```text
//!                         rha-T-sw: bridge rha-T-br, 198.18.0.0/24
//!   rha-T-c  .0.2  ── pc ┤  ├ s1 ── rha-T-r1 .0.11  redis-server :6379 (master), controller r1
//!                        │  ├ s2 ── rha-T-r2 .0.12  redis-server (replica),     controller r2
//!   rha-T-gw .0.1  ── pg ┤  ├ s3 ── rha-T-r3 .0.13  redis-server (replica),     controller r3
//!     rha-T-g1 198.19.0.1 ─── rha-T-rc 198.19.0.2 (namespace rha-T-rc: the routed client)
//!   198.18.0.100/24 (VIP) on the veth of whichever node holds it
//! ```
//!
//! Every node runs the data plane on its one veth and may hold the VIP (`[ha]`); the holder
//! sends write-port connections to the master and read-port connections over the replicas,
//! on the same segment its packets arrived from. Its replies cannot come back through a
//! gateway here (clients and backends share the subnet), so the holder rewrites the source too:
//! full NAT (`nat = "full"`, behind [`FULL_NAT`]). The switch's end of each node's veth runs
//! GRO, because a veth accepts frames the program redirects into it only when it runs NAPI.
//!
//! This file: the [`SeedCluster`] and what a test asks of it (who is master, who holds the VIP,
//! failing and restoring nodes); `build`: wiring it up and the controllers' configs;
//! [`trial`]: failover trials with traffic through the VIP.

mod build;
pub mod trial;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use crate::cluster::{
    self, Controller, MapsView, PEER_PORT, PEER_WARMUP, Replication, replication,
};
use crate::ha::{mac_of, parse_inet};
use crate::netns::Netns;
use crate::process::{run_within, wait_until};
use crate::testbed::{
    Backend, DirGuard, READ_PORT, REDIS_PORT, SERVICE_NAME, VIP, WRITE_PORT, XdpMode, pin_dir,
    unique_tag,
};

/// Whether the generated configs ask for full NAT (`[dataplane] nat = "full"`, `nat_address`,
/// `nat_ports`). Without it, traffic through the VIP cannot work on this topology: a backend
/// answers the client directly, from its own address.
pub const FULL_NAT: bool = true;
/// Machines in the seed: r1, r2, r3.
pub const NODES: usize = 3;
/// The seed's subnet: nodes, the VIP, the same-subnet client and the router.
pub const SEED_NETWORK: &str = "198.18.0.0/24";
/// The router's address on the seed's subnet.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The network behind the router, where the routed client lives.
pub const ROUTED_NETWORK: &str = "198.19.0.0/24";
/// The router's address on [`ROUTED_NETWORK`]: the routed client's gateway.
pub const ROUTED_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const ROUTED_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// `[dataplane] nat_ports`: the source ports a node uses toward backends.
pub const NAT_PORTS: &str = "61000-65535";
/// Every address here is a /24 (the floating VIP too: on-link for the clients).
const PREFIX_LEN: u8 = 24;

const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Node `n`'s address (1-based): 198.18.0.1N, where its redis-server and controller listen.
pub fn node_ip(n: usize) -> Ipv4Addr {
    assert!((1..=NODES).contains(&n), "node {n} out of 1..={NODES}");
    Ipv4Addr::new(198, 18, 0, 10 + n as u8)
}

/// What [`SeedCluster::up`] builds.
#[derive(Clone, Debug)]
pub struct SeedOptions {
    /// Goes into every name (`rha-<tag>-r1`); unique per test so tests never collide.
    pub tag: String,
    pub xdp_mode: XdpMode,
    /// Write the full-NAT keys into `[dataplane]` (see [`FULL_NAT`]).
    pub full_nat: bool,
    /// The service's (Sentinel's) `down_after_ms` for Redis nodes.
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    pub probe_interval_ms: u64,
    pub quorum: usize,
    /// `ha.priority` of r1, r2, r3: r1 first, so the VIP starts where the master does.
    pub priorities: [u8; NODES],
    /// `ha.heartbeat_ms`.
    pub heartbeat_ms: u64,
    /// `ha.down_after_ms`: how long a silent holder keeps the VIP.
    pub ha_down_after_ms: u64,
    /// The shared peer secret (at least 16 characters).
    pub secret: String,
    /// Start the controllers (and so the data plane). Off for the bench's run of the stack
    /// redis-ha replaces on the same machines: the controllers' configs are still written (so
    /// `redis-ha-ctl unload` can clean a node), but nothing of redis-ha runs.
    pub start_controllers: bool,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            tag: unique_tag(),
            xdp_mode: XdpMode::Auto,
            full_nat: FULL_NAT,
            down_after_ms: 1000,
            failover_timeout_ms: 5000,
            probe_interval_ms: 100,
            quorum: 2,
            priorities: [150, 120, 100],
            heartbeat_ms: 50,
            ha_down_after_ms: 200,
            secret: "redis-ha-e2e-shared-secret".to_owned(),
            start_controllers: true,
        }
    }
}

/// One machine of the seed: its namespace (owned by its redis-server's [`Backend`]), its veth
/// and where its controller pins the data plane.
#[derive(Debug)]
pub struct SeedNode {
    redis: Backend,
    pin_dir: PathBuf,
}

impl SeedNode {
    /// 1-based: node 1 is `rha-<tag>-r1`.
    pub fn index(&self) -> usize {
        self.redis.index()
    }

    pub fn netns(&self) -> &Netns {
        self.redis.netns()
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.redis.ip()
    }

    /// Its veth, the data plane's one interface, where the VIP goes while it holds it.
    pub fn interface(&self) -> &str {
        self.redis.interface()
    }

    /// The switch's end of its veth (a bridge port), taken down to cut the node off.
    pub fn switch_port(&self) -> &str {
        self.redis.lb_interface()
    }

    /// Its redis-server.
    pub fn redis(&self) -> &Backend {
        &self.redis
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn mac(&self) -> Result<String> {
        mac_of(self.netns(), self.interface())
    }

    /// Whether the VIP is configured in its namespace.
    pub fn holds_vip(&self) -> Result<bool> {
        let out = self.netns().ip(&["-4", "-o", "addr", "show"])?;
        Ok(parse_inet(&out).contains(&VIP))
    }
}

/// The seed topology with its three controllers running. Dropping it (also during a panic)
/// kills every process, deletes the namespaces (with their veths and the bridge), the pins
/// and the temporary directory; during a panic it first prints the end of every controller's
/// log and saves the logs under `target/e2e-logs/<tag>/`.
#[derive(Debug)]
pub struct SeedCluster {
    /// r1..r3. Declared first: the processes die before their namespaces and pins go.
    controllers: Vec<Controller>,
    nodes: Vec<SeedNode>,
    /// Nodes failed by [`Self::fail_node`]: their addresses are stale, their processes dead.
    failed: Mutex<[bool; NODES]>,
    client: Netns,
    client_interface: String,
    router: Netns,
    routed_client: Netns,
    sw: Netns,
    bridge: String,
    options: SeedOptions,
    /// Server data, controller configs, logs and state files. Declared last: dropped after the
    /// processes writing into it are gone.
    dir: DirGuard,
    armed: bool,
}

impl SeedCluster {
    pub fn tag(&self) -> &str {
        &self.options.tag
    }

    pub fn options(&self) -> &SeedOptions {
        &self.options
    }

    pub fn down_after(&self) -> Duration {
        Duration::from_millis(self.options.down_after_ms)
    }

    /// Node `n`, 1-based. Panics if there is none.
    pub fn node(&self, n: usize) -> &SeedNode {
        assert!((1..=NODES).contains(&n), "node {n} out of 1..={NODES}");
        &self.nodes[n - 1]
    }

    pub fn nodes(&self) -> &[SeedNode] {
        &self.nodes
    }

    /// The node whose redis-server listens at `addr`, if any.
    pub fn node_at(&self, addr: SocketAddrV4) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| n.redis.addr() == addr)
            .map(SeedNode::index)
    }

    /// Node `n`'s controller.
    pub fn controller(&self, n: usize) -> &Controller {
        self.node(n);
        &self.controllers[n - 1]
    }

    pub fn controllers(&self) -> &[Controller] {
        &self.controllers
    }

    /// The same-subnet client (`rha-<tag>-c`, 198.18.0.2, the VIP on-link).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn client_interface(&self) -> &str {
        &self.client_interface
    }

    /// The client behind the router (`rha-<tag>-rc`, 198.19.0.2).
    pub fn routed_client(&self) -> &Netns {
        &self.routed_client
    }

    /// The router (`rha-<tag>-gw`, 198.18.0.1 and 198.19.0.1).
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The switch namespace (`rha-<tag>-sw`) holding the bridge.
    pub fn switch(&self) -> &Netns {
        &self.sw
    }

    /// `rha-<tag>-br`, the seed's subnet.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// `198.18.0.100:6380`.
    pub fn vip_write(&self) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, WRITE_PORT)
    }

    /// `198.18.0.100:6381`.
    pub fn vip_read(&self) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, READ_PORT)
    }

    /// Where the testbed's configs, logs and server data are.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Whether node `n` is up (not failed with [`Self::fail_node`]).
    pub fn is_up(&self, n: usize) -> bool {
        !self.failed.lock().unwrap_or_else(|e| e.into_inner())[n - 1]
    }

    /// The nodes that are up.
    pub fn up_nodes(&self) -> Vec<usize> {
        (1..=NODES).filter(|&n| self.is_up(n)).collect()
    }

    /// The nodes that are up and have the VIP configured. A failed node keeps what it had (its
    /// link is down, nobody hears it) and is not counted.
    pub fn holders(&self) -> Result<Vec<usize>> {
        let mut holders = Vec::new();
        for n in self.up_nodes() {
            if self.node(n).holds_vip()? {
                holders.push(n);
            }
        }
        Ok(holders)
    }

    /// The one node holding the VIP; an error if none or several do.
    pub fn holder(&self) -> Result<usize> {
        match self.holders()?.as_slice() {
            [n] => Ok(*n),
            other => bail!("expected one VIP holder, found {other:?}"),
        }
    }

    /// Waits (bounded) until exactly one node that is up holds the VIP; returns it.
    pub fn wait_single_holder(&self, timeout: Duration) -> Result<usize> {
        wait_until(
            "one node to hold the VIP",
            timeout,
            Duration::from_millis(20),
            || Ok(self.holder().ok()),
        )
        .with_context(|| format!("holders: {:?}", self.holders()))
    }

    /// `SENTINEL get-master-addr-by-name mymaster` on node `n`'s controller, asked from the
    /// client namespace as a Sentinel client would.
    pub fn sentinel_master(&self, n: usize) -> Result<SocketAddrV4> {
        let reply = self.client.redis_cli(
            controller_listen(n),
            &["SENTINEL", "get-master-addr-by-name", SERVICE_NAME],
        )?;
        let mut lines = reply.lines().map(str::trim);
        let (Some(ip), Some(port)) = (lines.next(), lines.next()) else {
            bail!("controller r{n} answered {reply:?}");
        };
        Ok(SocketAddrV4::new(
            ip.parse().with_context(|| format!("{reply:?}"))?,
            port.parse().with_context(|| format!("{reply:?}"))?,
        ))
    }

    /// The master every running controller names (Sentinel API); an error if they disagree
    /// or it is no node.
    pub fn master(&self) -> Result<usize> {
        let mut named = Vec::new();
        for (i, c) in self.controllers.iter().enumerate() {
            if c.is_running() {
                named.push((c.id().to_owned(), self.sentinel_master(i + 1)?));
            }
        }
        let Some((_, first)) = named.first() else {
            bail!("no controller runs");
        };
        ensure!(
            named.iter().all(|(_, m)| m == first),
            "the controllers disagree on the master: {named:?}"
        );
        self.node_at(*first)
            .with_context(|| format!("the controllers name {first}, which is no node"))
    }

    /// `redis-ha-ctl SUBCOMMAND --config <node n's config> ARGS...` in node `n`'s namespace,
    /// bounded by `timeout`; returns its stdout.
    pub fn ctl(
        &self,
        n: usize,
        subcommand: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let mut cmd = self.node(n).netns().command(crate::ctl_binary()?);
        cmd.arg(subcommand)
            .arg("--config")
            .arg(self.controller(n).config_path())
            .args(args);
        run_within(&mut cmd, timeout)
    }

    /// Node `n`'s data plane as `redis-ha-ctl maps --flows 0` shows it.
    pub fn maps(&self, n: usize) -> Result<MapsView> {
        self.ctl(n, "maps", &["--flows", "0"], CTL_TIMEOUT)?.parse()
    }

    /// A planned switchover to node `to` (`redis-ha-ctl failover --to`, through the first
    /// running controller), then waits until the service is healthy again.
    pub fn switch_master(&self, to: usize) -> Result<()> {
        let via = self
            .up_nodes()
            .into_iter()
            .find(|&n| self.controller(n).is_running())
            .context("no controller runs")?;
        let target = self.node(to).redis.addr().to_string();
        self.ctl(
            via,
            "failover",
            &[SERVICE_NAME, "--to", &target, "--timeout", "5000"],
            CTL_TIMEOUT,
        )?;
        let master = self.wait_healthy(HEALTHY_TIMEOUT)?;
        ensure!(master == to, "asked for r{to}, the master is r{master}");
        Ok(())
    }

    /// Kills node `n`'s redis-server (`kill -9`).
    pub fn kill_redis(&self, n: usize) -> Result<()> {
        self.node(n).redis.kill()
    }

    /// Node `n` dies: its link goes down first (nothing it does from then on reaches anyone),
    /// then its controller and redis-server are SIGKILLed. Its data plane stays pinned and the
    /// VIP stays configured in its namespace, as on a host whose NIC died.
    pub fn fail_node(&self, n: usize) -> Result<()> {
        let node = self.node(n);
        self.sw.ip(&["link", "set", node.switch_port(), "down"])?;
        self.failed.lock().unwrap_or_else(|e| e.into_inner())[n - 1] = true;
        self.controller(n).kill()?;
        node.redis.kill()
    }

    /// Node `n` comes back as after a reboot: what the dead node kept (the VIP, its pinned
    /// data plane) is gone, its link comes up, its redis-server starts with its original
    /// arguments (r1 claiming to be a master again), then its controller.
    pub fn restore_node(&self, n: usize) -> Result<()> {
        ensure!(!self.is_up(n), "node r{n} was not failed");
        let node = self.node(n);
        let out = node.netns().ip(&["-4", "-o", "addr", "show"])?;
        if parse_inet(&out).contains(&VIP) {
            let vip = format!("{VIP}/{PREFIX_LEN}");
            node.netns()
                .ip(&["addr", "del", &vip, "dev", node.interface()])?;
        }
        if self.options.start_controllers {
            self.ctl(n, "unload", &[], CTL_TIMEOUT)
                .with_context(|| format!("unloading the data plane of r{n}"))?;
        }
        self.sw.ip(&["link", "set", node.switch_port(), "up"])?;
        self.failed.lock().unwrap_or_else(|e| e.into_inner())[n - 1] = false;
        node.redis.start()?;
        if self.options.start_controllers {
            self.controller(n).start()?;
        }
        Ok(())
    }

    /// Waits (bounded) until the service is whole among the nodes that are up: every running
    /// controller names the same master, which reports `role:master`; every other node's
    /// redis-server that runs follows it with the link up; every running data plane's write
    /// port points at it; no controller is still running a failover; one node holds the VIP;
    /// and the controllers have run long enough to have heard each other. Returns the master.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<usize> {
        let master = wait_until("the seed's service to be healthy", timeout, POLL, || {
            Ok(self.health_problem()?.ok())
        })
        .map_err(|e| {
            let problem = match self.health_problem() {
                Ok(Err(p)) => p,
                Ok(Ok(_)) => "nothing (it became healthy just now)".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            e.context(format!("still wrong: {problem}"))
        })?;
        for c in &self.controllers {
            if let Some(started) = c.started_at() {
                std::thread::sleep(PEER_WARMUP.saturating_sub(started.elapsed()));
            }
        }
        Ok(master)
    }

    /// `Ok(Ok(master))` when healthy, `Ok(Err(what is wrong))` otherwise.
    fn health_problem(&self) -> Result<std::result::Result<usize, String>> {
        let master = match self.master() {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("{e:#}"))),
        };
        let master_addr = self.node(master).redis.addr();
        match replication(&self.node(master).redis) {
            Ok(Replication::Master) => {}
            other => return Ok(Err(format!("master r{master} reports {other:?}"))),
        }
        for n in self.up_nodes().into_iter().filter(|&n| n != master) {
            let redis = &self.node(n).redis;
            if !redis.is_running() {
                continue;
            }
            match replication(redis) {
                Ok(Replication::Replica {
                    master: m,
                    link_up: true,
                }) if m == *master_addr.ip() => {}
                other => {
                    return Ok(Err(format!(
                        "r{n} reports {other:?}, not a synced replica of r{master}"
                    )));
                }
            }
        }
        for n in self.up_nodes() {
            if !self.controller(n).is_running() {
                continue;
            }
            let maps = self.maps(n)?;
            if maps.master() != Some(master_addr) {
                return Ok(Err(format!(
                    "the data plane of r{n} sends the write port to {:?}",
                    maps.master()
                )));
            }
            let reply = self
                .client
                .redis_cli(controller_listen(n), &["SENTINEL", "MASTER", SERVICE_NAME])?;
            let mut lines = reply.lines();
            let flags = lines
                .by_ref()
                .find(|l| l.trim() == "flags")
                .and(lines.next());
            if flags.is_some_and(|f| f.contains("failover_in_progress")) {
                return Ok(Err(format!("r{n} is still running a failover")));
            }
        }
        if let Err(e) = self.holder() {
            return Ok(Err(format!("{e:#}")));
        }
        Ok(Ok(master))
    }

    /// Which node answers a new connection to `addr` from `from` (by its `bind` setting).
    pub fn node_behind(&self, from: &Netns, addr: SocketAddrV4) -> Result<usize> {
        let reply = from.redis_cli(addr, &["CONFIG", "GET", "bind"])?;
        // `bind` then its value, e.g. `198.18.0.12 127.0.0.1`: the first address is the node's.
        let ip: Ipv4Addr = reply
            .lines()
            .nth(1)
            .and_then(|value| value.split_whitespace().next())
            .and_then(|ip| ip.parse().ok())
            .with_context(|| format!("unexpected CONFIG GET bind reply {reply:?}"))?;
        self.node_at(SocketAddrV4::new(ip, REDIS_PORT))
            .with_context(|| format!("{ip} is no node of the seed"))
    }

    /// The MAC that answers ARP for the VIP on the seed's subnet, asked from the client
    /// (`arping`); `None` when nobody answers.
    pub fn vip_arp_owner(&self) -> Result<Option<String>> {
        let mut cmd = self.client.command("arping");
        cmd.args(["-c", "1", "-w", "2", "-I", &self.client_interface])
            .arg(VIP.to_string());
        // arping exits 1 without a reply: only a failure to start or a timeout is an error.
        let out = crate::process::output_within(&mut cmd, Duration::from_secs(5))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().find_map(|line| {
            let at = line.find('[')?;
            let mac = line[at + 1..].split(']').next()?;
            Some(mac.to_ascii_lowercase())
        }))
    }

    /// The last `lines` lines of every controller's log.
    pub fn log_tails(&self, lines: usize) -> String {
        cluster::log_tails(&self.controllers, lines)
    }

    /// Copies every controller's log to `<target>/e2e-logs/<tag>/` (which outlives the
    /// testbed) and returns that directory.
    pub fn save_logs(&self) -> Result<PathBuf> {
        cluster::save_logs(&self.controllers, self.tag())
    }

    /// Leaves everything running after this process exits (`cargo xtask testbed up
    /// --topology seed`); [`crate::cleanup_prefix`] with `rha-<tag>-` removes it later.
    pub fn keep(mut self) {
        self.armed = false;
        for c in &self.controllers {
            c.disarm();
        }
        for node in &mut self.nodes {
            node.redis.disarm();
        }
        for ns in [
            &mut self.client,
            &mut self.router,
            &mut self.routed_client,
            &mut self.sw,
        ] {
            ns.disarm();
        }
        self.dir.armed = false;
    }

    fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.nodes.iter().map(SeedNode::netns).chain([
            &self.client,
            &self.router,
            &self.routed_client,
            &self.sw,
        ])
    }
}

impl Drop for SeedCluster {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::thread::panicking() && !self.controllers.is_empty() {
            eprintln!("{}", self.log_tails(60));
            match self.save_logs() {
                Ok(dir) => eprintln!("controller logs saved in {}", dir.display()),
                Err(e) => eprintln!("saving the controller logs: {e:#}"),
            }
        }
        for c in &self.controllers {
            let _ = c.kill();
        }
        for node in &self.nodes {
            let _ = node.redis.kill();
        }
        // Processes a test started in the namespaces without a guard go too, and the
        // controllers before their pins.
        for ns in self.namespaces() {
            if let Err(e) = ns.kill_all() {
                eprintln!("redis-ha-tests: {e:#}");
            }
        }
        let pins = pin_dir(self.tag());
        if pins.exists()
            && let Err(e) = std::fs::remove_dir_all(&pins)
        {
            eprintln!("redis-ha-tests: removing {}: {e}", pins.display());
        }
        // The namespaces (with their veths and the bridge) and the directory go as the fields
        // drop.
    }
}

/// `r1`, `r2`, `r3`: the controllers are named after their machines.
pub fn controller_id(n: usize) -> String {
    format!("r{n}")
}

/// Where node `n`'s controller listens (peer UDP and the Sentinel API).
pub fn controller_listen(n: usize) -> SocketAddrV4 {
    SocketAddrV4::new(node_ip(n), PEER_PORT)
}
