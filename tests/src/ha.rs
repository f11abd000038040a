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
    /// Builds the switch, the client, both LB nodes, the backends (waiting for replication) and
    /// k3; writes the three controller configs; starts the controllers and waits until both data
    /// planes serve backend 1 as master with both replicas readable (and, with
    /// [`HaOptions::ha_section`], until exactly one LB holds the floating addresses). Needs
    /// root.
    pub fn up(options: HaOptions) -> Result<HaCluster> {
        crate::testbed::check_can_build(&options.tag, &options.secret)?;
        let tag = options.tag.clone();
        let prefix = namespace_prefix(&tag);
        let stale = leftovers(&prefix)?;
        if !stale.is_empty() {
            let hint = if tag == "tb" {
                "`cargo xtask testbed down`".to_owned()
            } else {
                format!("`redis_ha_tests::cleanup_prefix(\"{prefix}\")`")
            };
            bail!("testbed {tag} already exists ({stale}): remove it with {hint}");
        }
        let dir = DirGuard {
            path: temp_dir(&tag),
            armed: true,
        };
        std::fs::create_dir_all(dir.path.join("controllers"))
            .with_context(|| format!("creating {}", dir.path.display()))?;
        let name = |role: &str| format!("{prefix}{role}");

        let sw = Netns::create(&name("sw"))?;
        let client_bridge = name("bc");
        let backend_bridge = name("bb");
        for bridge in [&client_bridge, &backend_bridge] {
            sw.ip(&["link", "add", bridge, "type", "bridge"])?;
            sw.ip(&["link", "set", bridge, "up"])?;
        }
        let client = Netns::create(&name("client"))?;
        let client_interface = name("c");
        plug(&sw, &client, &client_interface, &name("pc"), &client_bridge)?;
        setup_on_link_endpoint(&client, &client_interface, CLIENT_IP, options.xdp_mode)?;

        let mut lbs = Vec::new();
        for n in 1..=LB_NODES {
            let ns = Netns::create(&name(&format!("lb{n}")))?;
            let node = LbNode {
                n,
                client_interface: name(&format!("{n}c")),
                backend_interface: name(&format!("{n}b")),
                switch_ports: [name(&format!("c{n}")), name(&format!("b{n}"))],
                pin_dir: pin_dir(&tag).join(format!("lb{n}")),
                ns,
            };
            plug(
                &sw,
                &node.ns,
                &node.client_interface,
                &node.switch_ports[0],
                &client_bridge,
            )?;
            plug(
                &sw,
                &node.ns,
                &node.backend_interface,
                &node.switch_ports[1],
                &backend_bridge,
            )?;
            setup_lb(&node)?;
            // The switch ports receive what the LB's XDP program redirects (docs/building.md, "XDP redirects between veths").
            for port in &node.switch_ports {
                sw.run("ethtool", &["-K", port, "gro", "on"])?;
            }
            lbs.push(node);
        }

        let mut backends = Vec::new();
        for n in 1..=BACKENDS {
            let ns = Netns::create(&name(&format!("r{n}")))?;
            let interface = name(&format!("r{n}"));
            let port = name(&format!("s{n}"));
            plug(&sw, &ns, &interface, &port, &backend_bridge)?;
            setup_endpoint(
                &ns,
                &interface,
                &format!("{}/{PREFIX_LEN}", backend_ip(n)),
                GATEWAY,
                options.xdp_mode,
            )?;
            backends.push(Backend::new(
                n,
                ns,
                interface,
                port,
                dir.path.join(format!("r{n}")),
                // Redis defaults (repl-ping-replica-period 10 s included): the read pool
                // must not flap with an idle master, and both data planes must agree on it.
                &[],
            )?);
        }

        let k3 = Netns::create(&name("k3"))?;
        plug(&sw, &k3, &name("k3"), &name("pk"), &backend_bridge)?;
        k3.ip(&[
            "addr",
            "add",
            &format!("{K3_IP}/{PREFIX_LEN}"),
            "dev",
            &name("k3"),
        ])?;
        k3.ip(&["link", "set", &name("k3"), "up"])?;

        let mut cluster = HaCluster {
            controllers: Vec::new(),
            backends,
            lbs,
            client,
            client_interface,
            k3,
            sw,
            client_bridge,
            backend_bridge,
            options,
            dir,
            armed: true,
        };
        for b in &cluster.backends {
            b.start()?;
        }
        wait_replication(&cluster.backends)?;

        for ctl in 1..=3 {
            let id = controller_id(ctl);
            let (config_path, log_path, state_path) =
                cluster::controller_files(&cluster.dir.path, &id);
            std::fs::write(&config_path, cluster.config_toml(ctl, &state_path))
                .with_context(|| format!("writing {}", config_path.display()))?;
            let ns_name = cluster.controller_netns(ctl).name().to_owned();
            cluster.controllers.push(Controller::new(
                &id,
                &ns_name,
                controller_listen(ctl),
                config_path,
                log_path,
                state_path,
            ));
        }
        // redis-ha-ctl checks that the parent of its pin directory is on bpffs, so the
        // testbed's own directory must exist before the per-node ones.
        let pins = cluster.pin_dir();
        std::fs::create_dir_all(&pins).with_context(|| format!("creating {}", pins.display()))?;
        for c in &cluster.controllers {
            c.start()?;
        }
        cluster.wait_dataplanes(HEALTHY_TIMEOUT)?;
        if cluster.options.ha_section {
            let timeout = Duration::from_secs(10)
                + Duration::from_millis(4 * cluster.options.ha_down_after_ms);
            cluster.wait_single_holder(timeout)?;
        }
        for c in &cluster.controllers {
            if let Some(started) = c.started_at() {
                std::thread::sleep(PEER_WARMUP.saturating_sub(started.elapsed()));
            }
        }
        Ok(cluster)
    }

    /// The TOML of controller `ctl` (1: lb1, 2: lb2, 3: c3).
    fn config_toml(&self, ctl: usize, state_file: &Path) -> String {
        let o = &self.options;
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| toml_string(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut toml = String::new();
        if let Some(lb) = self.lbs.get(ctl - 1) {
            toml += &format!(
                "[dataplane]\n\
                 interfaces = [{interfaces}]\n\
                 xdp_mode = {mode}\n\
                 pin_dir = {pin_dir}\n\
                 client_networks = [{networks}]\n\n",
                interfaces = list(&lb.interfaces().map(str::to_owned)),
                mode = toml_string(o.xdp_mode.as_str()),
                pin_dir = toml_string(&lb.pin_dir.display().to_string()),
                networks = toml_string(CLIENT_NETWORK),
            );
            if o.ha_section {
                let addresses: Vec<String> = lb
                    .floating_addresses()
                    .iter()
                    .map(|(addr, dev)| format!("{addr}/{PREFIX_LEN} dev {dev}"))
                    .collect();
                toml += &format!(
                    "[ha]\n\
                     priority = {priority}\n\
                     preempt = {preempt}\n\
                     heartbeat_ms = {heartbeat}\n\
                     down_after_ms = {down_after}\n\
                     addresses = [{addresses}]\n\n",
                    priority = o.priorities[ctl - 1],
                    preempt = o.preempt,
                    heartbeat = o.heartbeat_ms,
                    down_after = o.ha_down_after_ms,
                    addresses = list(&addresses),
                );
            }
        }
        let backends: Vec<String> = self.backends.iter().map(|b| b.addr().to_string()).collect();
        let peers: Vec<(String, SocketAddrV4)> = (1..=3)
            .filter(|&p| p != ctl)
            .map(|p| (controller_id(p), controller_listen(p)))
            .collect();
        toml += &format!(
            "[[service]]\n\
             name = {name}\n\
             vip = {vip}\n\
             write_port = {WRITE_PORT}\n\
             read_port = {READ_PORT}\n\
             backends = [{backends}]\n",
            name = toml_string(SERVICE_NAME),
            vip = toml_string(&VIP.to_string()),
            backends = list(&backends),
        );
        toml += &ControllerToml {
            quorum: o.quorum,
            down_after_ms: o.down_after_ms,
            failover_timeout_ms: o.failover_timeout_ms,
            id: &controller_id(ctl),
            listen: controller_listen(ctl),
            secret: &o.secret,
            state_file,
            probe_interval_ms: o.probe_interval_ms,
            metrics_listen: SocketAddrV4::new(*controller_listen(ctl).ip(), METRICS_PORT),
            peers: &peers,
            extra: "",
        }
        .render();
        toml
    }

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

/// `lb1`, `lb2`, `c3`.
fn controller_id(ctl: usize) -> String {
    match ctl {
        1..=LB_NODES => format!("lb{ctl}"),
        _ => format!("c{ctl}"),
    }
}

/// Where controller `ctl` listens (peer UDP and the Sentinel API): its node's address on the
/// backend segment.
fn controller_listen(ctl: usize) -> SocketAddrV4 {
    let ip = if ctl <= LB_NODES {
        lb_backend_ip(ctl)
    } else {
        K3_IP
    };
    SocketAddrV4::new(ip, PEER_PORT)
}

/// A veth `inside` in `ns`, its peer `port` on `bridge` in the switch namespace `sw`, the port up.
pub(crate) fn plug(sw: &Netns, ns: &Netns, inside: &str, port: &str, bridge: &str) -> Result<()> {
    sw.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        inside,
        "netns",
        ns.name(),
    ])?;
    sw.ip(&["link", "set", port, "master", bridge])?;
    sw.ip(&["link", "set", port, "up"])
        .map(drop)
        .with_context(|| format!("plugging {inside} of {} into {bridge}", ns.name()))
}

/// The client: its address on the client segment, no gateway (the VIP is on-link, and it must
/// reach the backends only through the VIP).
pub(crate) fn setup_on_link_endpoint(
    ns: &Netns,
    interface: &str,
    ip: Ipv4Addr,
    mode: XdpMode,
) -> Result<()> {
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{PREFIX_LEN}"),
        "dev",
        interface,
    ])?;
    ns.ip(&["link", "set", interface, "up"])?;
    // Full checksums and no segmentation offload on what the client sends for the XDP modes,
    // which update checksums incrementally (docs/building.md, "XDP redirects between veths"); the TC hook takes veth's defaults.
    if matches!(mode, XdpMode::Native | XdpMode::Skb) {
        ns.run(
            "ethtool",
            &["-K", interface, "tx", "off", "tso", "off", "gso", "off"],
        )?;
    }
    Ok(())
}

/// Addresses, forwarding and reverse-path filtering of an LB node.
fn setup_lb(lb: &LbNode) -> Result<()> {
    let ns = &lb.ns;
    ns.set_sysctl("net.ipv4.ip_forward", "1")?;
    // rp_filter off because XDP-rewritten replies arrive from addresses the reverse path check
    // would reject.
    for scope in [
        "all",
        "default",
        &lb.client_interface,
        &lb.backend_interface,
    ] {
        ns.set_sysctl(&format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
    }
    for (dev, ip) in [
        (&lb.client_interface, lb.client_ip()),
        (&lb.backend_interface, lb.backend_ip()),
    ] {
        ns.ip(&["addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// The MAC address of `interface` in `ns` (`ip -br link`: `NAME@ifN STATE MAC FLAGS`).
pub fn mac_of(ns: &Netns, interface: &str) -> Result<String> {
    let out = ns.ip(&["-br", "link", "show", "dev", interface])?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .with_context(|| format!("no MAC in `ip -br link show dev {interface}`: {out:?}"))
}

/// The MAC `ns`'s neighbour table has for `ip`, `None` without a usable entry (none yet,
/// INCOMPLETE or FAILED).
pub fn neighbour(ns: &Netns, ip: Ipv4Addr) -> Result<Option<String>> {
    let out = ns.ip(&["neigh", "show", &ip.to_string()])?;
    Ok(parse_neighbour(&out))
}

fn parse_neighbour(out: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "lladdr")?;
        if words.last().is_some_and(|state| *state == "FAILED") {
            return None;
        }
        words.get(at + 1).map(|mac| (*mac).to_owned())
    })
}

/// `(interface, address/len)` of every line of `ip -4 -o addr show`
/// (`5: rha-x-1c    inet 198.18.0.11/24 brd ... scope global rha-x-1c ...`).
fn address_lines(out: &str) -> impl Iterator<Item = (&str, &str)> {
    out.lines().filter_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "inet")?;
        Some((*words.get(1)?, *words.get(at + 1)?))
    })
}

fn cidr_addr(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

pub(crate) fn parse_inet(out: &str) -> Vec<Ipv4Addr> {
    address_lines(out)
        .filter_map(|(_, cidr)| cidr_addr(cidr))
        .collect()
}

/// Someone on the segment saying "`ip` is at `mac`".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpClaim {
    /// When the capture saw it (tcpdump's timestamp).
    pub time: SystemTime,
    pub ip: Ipv4Addr,
    /// The sender's Ethernet source address, lower case.
    pub mac: String,
    pub kind: ArpKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpKind {
    /// `Reply ip is-at mac`: an answer to a request.
    Reply,
    /// A request whose sender and target address are the same: an announcement (gratuitous ARP,
    /// `arping -U`), which updates every neighbour holding an entry.
    Gratuitous,
    /// An ordinary request `who-has X tell ip`: it claims `ip` too, since whoever receives it
    /// may update its entry for the sender.
    Request,
}

/// A running tcpdump of ARP frames on one interface of a namespace; killed when dropped.
#[derive(Debug)]
pub struct ArpCapture {
    child: ChildGuard,
    output: PathBuf,
}

impl ArpCapture {
    /// Starts `tcpdump -e -n -l -tt arp` on `interface` in `ns`, its output in
    /// `<file_stem>.txt` (and its messages in `<file_stem>.err`), and waits until it listens.
    pub fn start(ns: &Netns, interface: &str, file_stem: &Path) -> Result<ArpCapture> {
        if crate::find_program("tcpdump").is_none() {
            bail!(
                "`tcpdump` is not installed: run `cargo xtask build` (it installs the prerequisites)"
            );
        }
        let output = file_stem.with_extension("txt");
        let messages = file_stem.with_extension("err");
        let open = |path: &Path| {
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        };
        let mut cmd = ns.command("tcpdump");
        cmd.args([
            "-i",
            interface,
            "-e",
            "-n",
            "-l",
            "-tt",
            "--immediate-mode",
            "arp",
        ])
        .stdin(Stdio::null())
        .stdout(open(&output)?)
        .stderr(open(&messages)?);
        let mut child = ChildGuard::spawn(&mut cmd)?;
        wait_until(
            &format!("tcpdump to listen on {interface}"),
            CAPTURE_START_TIMEOUT,
            Duration::from_millis(20),
            || {
                let said = std::fs::read_to_string(&messages).unwrap_or_default();
                if let Some(status) = child.try_wait()? {
                    bail!("tcpdump exited ({status}): {said}");
                }
                Ok(said.contains("listening on").then_some(()))
            },
        )?;
        Ok(ArpCapture { child, output })
    }

    /// The claims captured so far (tcpdump writes line by line).
    pub fn claims(&self) -> Result<Vec<ArpClaim>> {
        let text = std::fs::read_to_string(&self.output)
            .with_context(|| format!("reading {}", self.output.display()))?;
        Ok(parse_arp_claims(&text))
    }

    /// Everything tcpdump printed so far, for messages.
    pub fn raw(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Stops tcpdump (SIGINT, so it flushes; SIGKILL after 2 s) and returns every claim.
    pub fn stop(mut self) -> Result<Vec<ArpClaim>> {
        if self.child.signal(libc::SIGINT).is_ok() {
            let _ = wait_until(
                "tcpdump to exit",
                Duration::from_secs(2),
                Duration::from_millis(20),
                || Ok(self.child.try_wait()?.map(drop)),
            );
        }
        self.child.kill()?;
        self.claims()
    }
}

/// Parses `tcpdump -e -n -tt arp` lines, e.g.
/// `1764111111.123456 aa:bb:cc:dd:ee:ff > 11:22:33:44:55:66, ethertype ARP (0x0806), length 42: Reply 198.18.0.100 is-at aa:bb:cc:dd:ee:ff, length 28`
/// or `... Request who-has 198.18.0.100 (ff:ff:ff:ff:ff:ff) tell 198.18.0.100, length 28`.
pub fn parse_arp_claims(text: &str) -> Vec<ArpClaim> {
    text.lines().filter_map(parse_arp_line).collect()
}

fn parse_arp_line(line: &str) -> Option<ArpClaim> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let time = parse_unix_time(words.first()?)?;
    let mac = words.get(1)?.to_ascii_lowercase();
    let after = |key: &str| -> Option<&str> {
        let at = words.iter().position(|w| *w == key)?;
        words.get(at + 1).copied()
    };
    let (ip, kind) = if words.contains(&"Reply") {
        (after("Reply")?, ArpKind::Reply)
    } else if words.contains(&"Request") {
        let sender = after("tell")?;
        let kind = if after("who-has") == Some(sender) {
            ArpKind::Gratuitous
        } else {
            ArpKind::Request
        };
        (sender, kind)
    } else {
        return None;
    };
    let ip: Ipv4Addr = ip.parse().ok()?;
    // A probe (sender 0.0.0.0) claims nothing.
    (!ip.is_unspecified()).then_some(ArpClaim {
        time,
        ip,
        mac,
        kind,
    })
}

fn parse_unix_time(word: &str) -> Option<SystemTime> {
    let (secs, frac) = word.split_once('.').unwrap_or((word, "0"));
    let secs: u64 = secs.parse().ok()?;
    let micros: u32 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000))
}

/// The claims for `ip` whose MAC differs from the claim before (the first claim counts): who
/// owned `ip`, in order. One LB failover without ping-pong shows as two entries; two MACs
/// taking turns at the same time show as many.
pub fn owner_changes(claims: &[ArpClaim], ip: Ipv4Addr) -> Vec<ArpClaim> {
    let mut changes: Vec<ArpClaim> = Vec::new();
    for claim in claims.iter().filter(|c| c.ip == ip) {
        if changes.last().is_none_or(|last| last.mac != claim.mac) {
            changes.push(claim.clone());
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arp_lines() {
        let text = "\
1764111111.500000 02:aa:aa:aa:aa:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.18.0.100 tell 198.18.0.2, length 28
1764111111.500100 02:AA:AA:AA:AA:02 > 02:aa:aa:aa:aa:01, ethertype ARP (0x0806), length 42: Reply 198.18.0.100 is-at 02:aa:aa:aa:aa:02, length 28
1764111112.25 02:aa:aa:aa:aa:03 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.18.0.100 (ff:ff:ff:ff:ff:ff) tell 198.18.0.100, length 28
1764111113.000000 02:aa:aa:aa:aa:03 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 198.18.0.5 tell 0.0.0.0, length 28
tcpdump noise
";
        let claims = parse_arp_claims(text);
        assert_eq!(claims.len(), 3, "{claims:?}");
        assert_eq!(
            (claims[0].ip, claims[0].kind),
            (CLIENT_IP, ArpKind::Request)
        );
        assert_eq!(
            (claims[1].ip, claims[1].mac.as_str(), claims[1].kind),
            (VIP, "02:aa:aa:aa:aa:02", ArpKind::Reply)
        );
        assert_eq!(
            claims[1].time,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_111_111_500_100)
        );
        assert_eq!((claims[2].ip, claims[2].kind), (VIP, ArpKind::Gratuitous));
        assert_eq!(
            claims[2].time,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_111_112_250)
        );
        let owners: Vec<String> = owner_changes(&claims, VIP)
            .into_iter()
            .map(|c| c.mac)
            .collect();
        assert_eq!(owners, ["02:aa:aa:aa:aa:02", "02:aa:aa:aa:aa:03"]);
    }

    #[test]
    fn parses_addresses_and_neighbours() {
        let addrs = "\
5: rha-x-1c    inet 198.18.0.11/24 brd 198.18.0.255 scope global rha-x-1c\\       valid_lft forever preferred_lft forever
5: rha-x-1c    inet 198.18.0.100/24 scope global secondary rha-x-1c\\       valid_lft forever preferred_lft forever
";
        assert_eq!(parse_inet(addrs), [Ipv4Addr::new(198, 18, 0, 11), VIP]);
        assert_eq!(
            address_lines(addrs).nth(1),
            Some(("rha-x-1c", "198.18.0.100/24"))
        );
        assert_eq!(
            parse_neighbour("198.18.0.100 dev rha-x-c lladdr 02:aa:aa:aa:aa:02 REACHABLE\n"),
            Some("02:aa:aa:aa:aa:02".to_owned())
        );
        assert_eq!(parse_neighbour("198.18.0.100 dev rha-x-c FAILED\n"), None);
        assert_eq!(
            parse_neighbour("198.18.0.100 dev rha-x-c lladdr 02:aa:aa:aa:aa:02 FAILED\n"),
            None
        );
        assert_eq!(parse_neighbour(""), None);
    }
}
