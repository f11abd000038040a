//! The load-balancer high-availability testbed: two data-plane nodes on a bridged
//! client segment and a bridged backend segment, floating addresses that move between them,
//! and three controllers that agree who holds them.
//!
//! ```text
//!                       rha-T-sw: bridges rha-T-bc (198.18.0.0/24) and rha-T-bb (198.18.1.0/24)
//!   rha-T-client                                                              rha-T-rN
//!   rha-T-c .0.2 ─── pc ┤bc├ cN ─── rha-T-Nc .0.1N  rha-T-lbN  rha-T-Nb .1.(N+1) ─── bN ┤bb├ sN ─── rha-T-rN .1.1N
//!                                   + 198.18.0.100/24 (VIP)    + 198.18.1.1/24 (gateway)      redis-server :6379
//!                                   while lbN holds them        XDP on both veths
//!                                                                                       ┤bb├ pk ─── rha-T-k3 .1.4 (c3)
//! ```
//!
//! The client reaches the VIP on-link and the backends use 198.18.1.1 as their gateway, so
//! whichever LB holds those two addresses carries all client traffic, both ways. Replication
//! and the controllers' probes and peer datagrams cross the backend bridge directly.
//!
//! The XDP program redirects from an LB's client veth to its backend veth and back, never into
//! a bridge (a bridge has no XDP transmit): the switch's end of each LB veth, a bridge port,
//! receives the redirected frame. A veth accepts redirected frames only when it runs NAPI,
//! hence GRO on those switch ports.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::cluster::{
    self, Controller, ControllerToml, METRICS_PORT, MapsView, PEER_PORT, PEER_WARMUP,
};
use crate::netns::{Netns, leftovers};
use crate::process::{ChildGuard, run_within, wait_until};
use crate::testbed::{
    Backend, CLIENT_IP, DirGuard, LB_BACKEND_IP, READ_PORT, SERVICE_NAME, VIP, WRITE_PORT, XdpMode,
    backend_ip, namespace_prefix, pin_dir, setup_endpoint, temp_dir, toml_string, unique_tag,
    wait_replication,
};

mod arp;
mod build;
mod clients;

pub(crate) use arp::parse_inet;
pub use arp::{ArpCapture, ArpClaim, ArpKind, mac_of, neighbour, owner_changes, parse_arp_claims};
use arp::{address_lines, cidr_addr};
pub(crate) use build::{plug, setup_on_link_endpoint};

/// The backends' gateway, floating with the VIP.
pub const GATEWAY: Ipv4Addr = LB_BACKEND_IP;
/// Both segments are /24s, and so are the floating addresses (on-link for client and backends).
pub const PREFIX_LEN: u8 = 24;
/// The client segment, the data planes' `client_networks`.
pub const CLIENT_NETWORK: &str = "198.18.0.0/24";
/// The vote-only controller's address on the backend segment.
pub const K3_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);
/// Data-plane nodes in the testbed.
pub const LB_NODES: usize = 2;
const BACKENDS: usize = 3;

/// How long the controllers may take to agree on the initial data-plane state.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const MAPS_TIMEOUT: Duration = Duration::from_secs(30);
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long tcpdump may take to start listening.
const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Address of LB `n` (1-based) on the client segment: 198.18.0.1N.
pub fn lb_client_ip(n: usize) -> Ipv4Addr {
    assert!(
        (1..=LB_NODES).contains(&n),
        "LB node {n} out of 1..={LB_NODES}"
    );
    Ipv4Addr::new(198, 18, 0, 10 + n as u8)
}

/// Address of LB `n` (1-based) on the backend segment: 198.18.1.(n+1), where its controller
/// listens.
pub fn lb_backend_ip(n: usize) -> Ipv4Addr {
    assert!(
        (1..=LB_NODES).contains(&n),
        "LB node {n} out of 1..={LB_NODES}"
    );
    Ipv4Addr::new(198, 18, 1, 1 + n as u8)
}

/// What [`HaCluster::up`] builds.
#[derive(Clone, Debug)]
pub struct HaOptions {
    /// Goes into every name (`rha-<tag>-lb1`); unique per test so tests never collide.
    pub tag: String,
    pub xdp_mode: XdpMode,
    /// Write the `[ha]` section, so the controllers own the floating addresses. Without it
    /// nobody adds them: see [`HaCluster::assign_addresses`].
    pub ha_section: bool,
    /// `ha.priority` of lb1 and lb2 (1..=255, higher preferred).
    pub priorities: [u8; LB_NODES],
    /// `ha.preempt` of both LB nodes.
    pub preempt: bool,
    /// `ha.heartbeat_ms`.
    pub heartbeat_ms: u64,
    /// `ha.down_after_ms`: how long a silent holder keeps the addresses.
    pub ha_down_after_ms: u64,
    /// The service's (Sentinel's) `down_after_ms` for Redis nodes.
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    pub probe_interval_ms: u64,
    pub quorum: usize,
    /// The shared peer secret (at least 16 characters).
    pub secret: String,
}

impl Default for HaOptions {
    /// A fresh [`unique_tag`], native XDP, the `[ha]` section with lb1 preferred, no preemption
    /// and sub-second detection.
    fn default() -> Self {
        Self {
            tag: unique_tag(),
            xdp_mode: XdpMode::Native,
            ha_section: true,
            priorities: [150, 100],
            preempt: false,
            heartbeat_ms: 50,
            ha_down_after_ms: 200,
            down_after_ms: 1000,
            failover_timeout_ms: 5000,
            probe_interval_ms: 100,
            quorum: 2,
            secret: "redis-ha-e2e-shared-secret".to_owned(),
        }
    }
}

/// One data-plane node: its namespace, its two veths (XDP on both) and their switch ports.
#[derive(Debug)]
pub struct LbNode {
    n: usize,
    ns: Netns,
    /// `rha-<tag>-Nc`, on the client segment; carries the VIP while this node holds it.
    client_interface: String,
    /// `rha-<tag>-Nb`, on the backend segment; carries the gateway while this node holds it.
    backend_interface: String,
    /// The switch's ends of those two veths (`rha-<tag>-cN`, `rha-<tag>-bN`): bridge ports,
    /// taken down to cut the node off.
    switch_ports: [String; 2],
    pin_dir: PathBuf,
}

impl LbNode {
    /// 1-based: lb1 is `rha-<tag>-lb1`.
    pub fn index(&self) -> usize {
        self.n
    }

    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    pub fn client_interface(&self) -> &str {
        &self.client_interface
    }

    pub fn backend_interface(&self) -> &str {
        &self.backend_interface
    }

    /// `[dataplane] interfaces`: client veth, then backend veth.
    pub fn interfaces(&self) -> [&str; 2] {
        [&self.client_interface, &self.backend_interface]
    }

    /// Bridge ports in the switch namespace: the client segment's, then the backend segment's.
    pub fn switch_ports(&self) -> [&str; 2] {
        [&self.switch_ports[0], &self.switch_ports[1]]
    }

    /// Its own (fixed) address on the client segment.
    pub fn client_ip(&self) -> Ipv4Addr {
        lb_client_ip(self.n)
    }

    /// Its own (fixed) address on the backend segment.
    pub fn backend_ip(&self) -> Ipv4Addr {
        lb_backend_ip(self.n)
    }

    /// Where its controller pins the data plane: `/sys/fs/bpf/redis-ha-<tag>/lbN`, inside the
    /// testbed's pin directory so that the usual cleanup removes it.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The floating addresses as `ip addr` and `[ha] addresses` write them, with this node's
    /// interfaces: `198.18.0.100/24 dev rha-T-1c`, `198.18.1.1/24 dev rha-T-1b`.
    pub fn floating_addresses(&self) -> [(Ipv4Addr, &str); 2] {
        [
            (VIP, &self.client_interface),
            (GATEWAY, &self.backend_interface),
        ]
    }

    /// MAC address of the client veth: what the client should have for the VIP while this
    /// node holds it.
    pub fn client_mac(&self) -> Result<String> {
        mac_of(&self.ns, &self.client_interface)
    }

    /// MAC address of the backend veth: what backends should have for the gateway.
    pub fn backend_mac(&self) -> Result<String> {
        mac_of(&self.ns, &self.backend_interface)
    }

    /// Every IPv4 address configured in the namespace.
    pub fn addresses(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self.ns.ip(&["-4", "-o", "addr", "show"])?;
        Ok(parse_inet(&out))
    }

    /// Whether `addr` is configured in this node's namespace (on any interface).
    pub fn holds(&self, addr: Ipv4Addr) -> Result<bool> {
        Ok(self.addresses()?.contains(&addr))
    }

    /// `ip addr add` of both floating addresses (those already present are left alone).
    pub fn add_floating_addresses(&self) -> Result<()> {
        let held = self.addresses()?;
        for (addr, dev) in self.floating_addresses() {
            if !held.contains(&addr) {
                self.ns
                    .ip(&["addr", "add", &format!("{addr}/{PREFIX_LEN}"), "dev", dev])?;
            }
        }
        Ok(())
    }

    /// `ip addr del` of both floating addresses, wherever they are in the namespace.
    pub fn remove_floating_addresses(&self) -> Result<()> {
        let out = self.ns.ip(&["-4", "-o", "addr", "show"])?;
        for (addr, _) in self.floating_addresses() {
            for (dev, cidr) in address_lines(&out).filter(|(_, cidr)| cidr_addr(cidr) == Some(addr))
            {
                self.ns.ip(&["addr", "del", cidr, "dev", dev])?;
            }
        }
        Ok(())
    }

    /// Gratuitous ARP for both floating addresses from this node (`arping -U`), as a new
    /// holder announces itself.
    pub fn announce(&self) -> Result<()> {
        if crate::find_program("arping").is_none() {
            bail!("`arping` is not installed (Debian: iputils-arping)");
        }
        // arping lingers a second after its one announcement: both at once, so the gateway's
        // goes out as soon as the VIP's.
        std::thread::scope(|scope| {
            let announcing: Vec<_> = self
                .floating_addresses()
                .map(|(addr, dev)| {
                    let mut cmd = self.ns.command("arping");
                    cmd.args(["-U", "-c", "1", "-I", dev, &addr.to_string()]);
                    // arping exits 1 when no reply came, the normal outcome of an unsolicited
                    // announcement: only a failure to start or a timeout is an error.
                    scope.spawn(move || {
                        crate::process::output_within(&mut cmd, Duration::from_secs(5)).map(drop)
                    })
                })
                .into_iter()
                .collect();
            announcing
                .into_iter()
                .try_for_each(|t| t.join().unwrap_or_else(|_| bail!("arping thread panicked")))
        })
    }
}

/// Which LB namespaces have each floating address configured right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressHolders {
    /// LB nodes (1-based) holding 198.18.0.100.
    pub vip: Vec<usize>,
    /// LB nodes holding 198.18.1.1.
    pub gateway: Vec<usize>,
}

impl AddressHolders {
    /// The node holding both addresses when exactly one does and nobody else holds either.
    pub fn single(&self) -> Option<usize> {
        match (self.vip.as_slice(), self.gateway.as_slice()) {
            ([a], [b]) if a == b => Some(*a),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.vip.is_empty() && self.gateway.is_empty()
    }
}

/// The HA testbed with its three controllers running. Dropping it (also during a panic) kills
/// every process, deletes the namespaces (with their veths and bridges), the pins of both data
/// planes and the temporary directory; during a panic it first prints the end of every
/// controller's log and saves the logs under `target/e2e-logs/<tag>/`.
#[derive(Debug)]
pub struct HaCluster {
    /// lb1, lb2, c3. Declared first: the processes die before their namespaces and pins go.
    controllers: Vec<Controller>,
    backends: Vec<Backend>,
    lbs: Vec<LbNode>,
    client: Netns,
    client_interface: String,
    /// The vote-only controller's namespace.
    k3: Netns,
    /// The switch: both bridges and every switch port.
    sw: Netns,
    client_bridge: String,
    backend_bridge: String,
    options: HaOptions,
    /// Server data, controller configs, logs and state files. Declared last: dropped after the
    /// processes writing into it are gone.
    dir: DirGuard,
    armed: bool,
}

impl HaCluster {
    pub fn tag(&self) -> &str {
        &self.options.tag
    }

    pub fn options(&self) -> &HaOptions {
        &self.options
    }

    /// The client namespace (`rha-<tag>-client`, 198.18.0.2, no gateway: the VIP is on-link).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn client_interface(&self) -> &str {
        &self.client_interface
    }

    /// The switch namespace (`rha-<tag>-sw`) holding both bridges.
    pub fn switch(&self) -> &Netns {
        &self.sw
    }

    /// `rha-<tag>-bc`, the client segment's bridge (in [`Self::switch`]).
    pub fn client_bridge(&self) -> &str {
        &self.client_bridge
    }

    /// `rha-<tag>-bb`, the backend segment's bridge.
    pub fn backend_bridge(&self) -> &str {
        &self.backend_bridge
    }

    /// Both data-plane nodes, lb1 first.
    pub fn lbs(&self) -> &[LbNode] {
        &self.lbs
    }

    /// LB node `n`, 1-based. Panics if there is none.
    pub fn lb(&self, n: usize) -> &LbNode {
        assert!(
            (1..=LB_NODES).contains(&n),
            "LB node {n} out of 1..={LB_NODES}"
        );
        &self.lbs[n - 1]
    }

    /// The namespace of the vote-only controller c3 (`rha-<tag>-k3`).
    pub fn k3(&self) -> &Netns {
        &self.k3
    }

    /// lb1, lb2 and c3, in that order.
    pub fn controllers(&self) -> &[Controller] {
        &self.controllers
    }

    /// Controller `n`, 1-based: 1 and 2 run in (and drive the data plane of) LB nodes 1 and 2,
    /// 3 is c3 in k3.
    pub fn controller(&self, n: usize) -> &Controller {
        assert!((1..=3).contains(&n), "controller {n} out of 1..=3");
        &self.controllers[n - 1]
    }

    /// The namespace controller `n` runs in.
    pub fn controller_netns(&self, n: usize) -> &Netns {
        match n {
            1..=LB_NODES => &self.lbs[n - 1].ns,
            3 => &self.k3,
            _ => panic!("controller {n} out of 1..=3"),
        }
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Backend `n`, 1-based (backend 1 starts as the master). Panics if there is none.
    pub fn backend(&self, n: usize) -> &Backend {
        assert!(
            (1..=BACKENDS).contains(&n),
            "backend {n} out of 1..={BACKENDS}"
        );
        &self.backends[n - 1]
    }

    /// The backend whose address is `addr`, if any.
    pub fn backend_at(&self, addr: SocketAddrV4) -> Option<&Backend> {
        self.backends.iter().find(|b| b.addr() == addr)
    }

    /// `198.18.0.100:6380`.
    pub fn vip_write(&self) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, WRITE_PORT)
    }

    /// `198.18.0.100:6381`.
    pub fn vip_read(&self) -> SocketAddrV4 {
        SocketAddrV4::new(VIP, READ_PORT)
    }

    /// `/sys/fs/bpf/redis-ha-<tag>`, holding both data planes' pin directories.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(self.tag())
    }

    /// `redis-ha-ctl status --json` of controller `n`, run in its namespace (the CLI asks the
    /// controller's API at its `listen` address). Parse it with `redis_ha_ctl::status::Status`.
    pub fn status_json(&self, n: usize) -> Result<String> {
        self.ctl(n, "status", &["--json"], STATUS_TIMEOUT)
    }

    /// `redis-ha-ctl SUBCOMMAND --config <controller n's config> ARGS...` in its namespace,
    /// bounded by `timeout`; returns its stdout.
    pub fn ctl(
        &self,
        n: usize,
        subcommand: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let mut cmd = self.controller_netns(n).command(crate::ctl_binary()?);
        cmd.arg(subcommand)
            .arg("--config")
            .arg(self.controller(n).config_path())
            .args(args);
        run_within(&mut cmd, timeout)
    }

    /// The data plane of LB node `n` as `redis-ha-ctl maps --flows 0` shows it.
    pub fn maps(&self, n: usize) -> Result<MapsView> {
        self.lb(n);
        self.ctl(n, "maps", &["--flows", "0"], MAPS_TIMEOUT)?
            .parse()
    }

    /// Waits (bounded) until both data planes send the write port to backend 1 and read from
    /// the others.
    pub fn wait_dataplanes(&self, timeout: Duration) -> Result<()> {
        let master = self.backend(1).addr();
        let replicas: Vec<SocketAddrV4> = self.backends[1..].iter().map(Backend::addr).collect();
        for lb in &self.lbs {
            let n = lb.n;
            wait_until(
                &format!("the data plane of lb{n} to serve {master} and read from the replicas"),
                timeout,
                POLL,
                || {
                    let maps = self.maps(n)?;
                    let mut readable = maps.readable();
                    readable.sort();
                    Ok((maps.master() == Some(master) && readable == replicas).then_some(()))
                },
            )?;
        }
        Ok(())
    }

    /// Which LB nodes have the VIP and the gateway configured right now. A node failed with
    /// [`Self::fail_lb`] keeps the addresses it had (its links are cut, nobody hears it) until
    /// [`Self::return_lb`] removes them.
    pub fn address_holders(&self) -> Result<AddressHolders> {
        let mut holders = AddressHolders::default();
        for lb in &self.lbs {
            let held = lb.addresses()?;
            if held.contains(&VIP) {
                holders.vip.push(lb.n);
            }
            if held.contains(&GATEWAY) {
                holders.gateway.push(lb.n);
            }
        }
        Ok(holders)
    }

    /// Waits (bounded) until one LB node holds both floating addresses and the other neither;
    /// returns it.
    pub fn wait_single_holder(&self, timeout: Duration) -> Result<usize> {
        wait_until(
            "one LB node to hold both floating addresses",
            timeout,
            Duration::from_millis(20),
            || Ok(self.address_holders()?.single()),
        )
        .with_context(|| format!("{:?}", self.address_holders()))
    }

    /// Waits (bounded) until LB node `n` holds both floating addresses (whatever a failed node
    /// still has configured); returns how long that took.
    pub fn wait_holder(&self, n: usize, timeout: Duration) -> Result<Duration> {
        let lb = self.lb(n);
        let started = std::time::Instant::now();
        wait_until(
            &format!("lb{n} to hold both floating addresses"),
            timeout,
            Duration::from_millis(10),
            || {
                let held = lb.addresses()?;
                Ok((held.contains(&VIP) && held.contains(&GATEWAY)).then(|| started.elapsed()))
            },
        )
        .with_context(|| format!("{:?}", self.address_holders()))
    }

    /// Moves the floating addresses to LB node `n` by hand, as a holder change would: removed
    /// from the other node, added to `n`, announced with gratuitous ARP (`arping`). For
    /// testbeds without [`HaOptions::ha_section`]; with it, the controllers would fight this.
    pub fn assign_addresses(&self, n: usize) -> Result<()> {
        self.lb(n);
        for lb in self.lbs.iter().filter(|lb| lb.n != n) {
            lb.remove_floating_addresses()?;
        }
        let lb = self.lb(n);
        lb.add_floating_addresses()?;
        lb.announce()
    }

    /// Cuts the switch ports of both veths of LB node `n` (its NICs are dead).
    pub fn cut_links(&self, n: usize) -> Result<()> {
        for port in self.lb(n).switch_ports() {
            self.sw.ip(&["link", "set", port, "down"])?;
        }
        Ok(())
    }

    /// Undoes [`Self::cut_links`].
    pub fn restore_links(&self, n: usize) -> Result<()> {
        for port in self.lb(n).switch_ports() {
            self.sw.ip(&["link", "set", port, "up"])?;
        }
        Ok(())
    }

    /// LB node `n` crashes: its links are cut, then its controller is SIGKILLed. The pinned XDP
    /// program and the addresses stay, as on a host whose NIC died.
    pub fn fail_lb(&self, n: usize) -> Result<()> {
        self.cut_links(n)?;
        self.controller(n).kill()
    }

    /// LB node `n` comes back as after a reboot: the floating addresses the dead controller left
    /// are removed (a reboot loses them), its controller starts again (and waits until it runs),
    /// then its links come up.
    pub fn return_lb(&self, n: usize) -> Result<()> {
        let lb = self.lb(n);
        if self.controller(n).is_running() {
            bail!("the controller of lb{n} still runs: fail_lb({n}) first");
        }
        lb.remove_floating_addresses()?;
        self.controller(n).start()?;
        self.restore_links(n)
    }

    /// The MAC the client's neighbour table has for `ip` (`None`: no usable entry).
    pub fn client_neighbour(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        neighbour(&self.client, ip)
    }

    /// Starts capturing ARP on the client segment's bridge (every frame the bridge forwards,
    /// as tcpdump puts it in promiscuous mode).
    pub fn capture_client_arp(&self) -> Result<ArpCapture> {
        ArpCapture::start(
            &self.sw,
            &self.client_bridge,
            &self.dir.path.join("arp-client"),
        )
    }

    /// Starts capturing ARP on the backend segment's bridge.
    pub fn capture_backend_arp(&self) -> Result<ArpCapture> {
        ArpCapture::start(
            &self.sw,
            &self.backend_bridge,
            &self.dir.path.join("arp-backend"),
        )
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
    /// --lb-nodes 2`); [`crate::cleanup_prefix`] with `rha-<tag>-` removes it later.
    pub fn keep(mut self) {
        self.armed = false;
        for c in &self.controllers {
            c.disarm();
        }
        for b in &mut self.backends {
            b.disarm();
        }
        for ns in self.lbs.iter_mut().map(|lb| &mut lb.ns).chain([
            &mut self.client,
            &mut self.k3,
            &mut self.sw,
        ]) {
            ns.disarm();
        }
        self.dir.armed = false;
    }

    fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.lbs
            .iter()
            .map(|lb| &lb.ns)
            .chain([&self.k3, &self.client])
            .chain(self.backends.iter().map(Backend::netns))
            .chain([&self.sw])
    }
}

impl Drop for HaCluster {
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
        for b in &self.backends {
            let _ = b.kill();
        }
        // Processes a test started in the namespaces without a guard (a capture, a client)
        // go too, and the controllers before their pins.
        for ns in self.namespaces() {
            if let Err(e) = ns.kill_all() {
                eprintln!("redis-ha-tests: {e:#}");
            }
        }
        let pins = self.pin_dir();
        if pins.exists()
            && let Err(e) = std::fs::remove_dir_all(&pins)
        {
            eprintln!("redis-ha-tests: removing {}: {e}", pins.display());
        }
        // The namespaces (with their veths and bridges) and the directory go as the fields drop.
    }
}
