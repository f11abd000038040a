//! Three redis-ha-ctl controller processes on a [`Testbed`], as the seed ran three Sentinels.
//!
//! ```text
//!   rha-T-lb  (c1: owns the data plane)          rha-T-k2 (c2)           rha-T-k3 (c3)
//!   rha-T-p2 198.18.2.1/32 ───────────────────── rha-T-k2 198.18.2.2/24
//!     route 198.18.2.2/32, proxy_arp=1             default via 198.18.2.1
//!   rha-T-p3 198.18.2.1/32 ─────────────────────────────────────────── rha-T-k3 198.18.2.3/24
//!     route 198.18.2.3/32, proxy_arp=1                                   default via 198.18.2.1
//! ```
//! Each controller lives outside the backends' namespaces, so killing a redis-server or cutting a
//! backend's link never takes a controller with it, and c2/c3 reach the backends the way a
//! remote Sentinel would: routed through the LB, but not through the XDP data plane (their
//! veths carry no program). c1 listens on 198.18.2.1, the LB's address on those veths, so every
//! peer datagram crosses exactly one veth.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::netns::{Netns, netns_command};
use crate::process::{ChildGuard, GiveUp, ProcessSlot, run_within, wait_until};
use crate::testbed::{
    Backend, SERVICE_NAME, Testbed, TestbedOptions, namespace_prefix, toml_string,
};
use crate::tls::AuthClients;

mod controller;
mod maps;
#[cfg(test)]
mod tests;

pub use controller::{Controller, ControllerState, EventLine, LogMark};
pub(crate) use controller::{log_tails, save_logs};
pub use maps::{BackendRow, MapsView};

/// UDP port of the peer protocol (Sentinel's port, out of habit).
pub const PEER_PORT: u16 = 26379;
/// How long a freshly started controller may take to log that it runs (it loads XDP first).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one `redis-ha-ctl maps`.
const MAPS_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// How long peers need, once all run, to have exchanged fresh hellos (they send one per probe
/// interval and forget them after `max(5 intervals, down_after_ms)`).
pub(crate) const PEER_WARMUP: Duration = Duration::from_secs(1);

/// The address of controller node `n` on the controllers' network: 198.18.2.1 is the LB (c1),
/// 198.18.2.N is the namespace `rha-<tag>-kN`.
/// Where every controller of a cluster serves HTTP (on its own node address).
pub const METRICS_PORT: u16 = 9121;

pub fn node_ip(n: u8) -> Ipv4Addr {
    assert!((1..=9).contains(&n), "controller node {n} out of 1..=9");
    Ipv4Addr::new(198, 18, 2, n)
}

/// The end of every generated controller config: the failover keys of the `[[service]]`
/// section it follows, then `[controller]`.
pub(crate) struct ControllerToml<'a> {
    pub quorum: usize,
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    pub id: &'a str,
    pub listen: SocketAddrV4,
    pub secret: &'a str,
    pub state_file: &'a Path,
    pub probe_interval_ms: u64,
    pub metrics_listen: SocketAddrV4,
    pub peers: &'a [(String, SocketAddrV4)],
    /// More `[controller]` keys, one `key = value` a line (e.g. the API's limits).
    pub extra: &'a str,
}

impl ControllerToml<'_> {
    pub fn render(&self) -> String {
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|(id, addr)| format!("{{ id = {}, addr = \"{addr}\" }}", toml_string(id)))
            .collect();
        format!(
            "quorum = {quorum}\n\
             down_after_ms = {down_after}\n\
             failover_timeout_ms = {failover_timeout}\n\
             \n\
             [controller]\n\
             id = {id}\n\
             listen = \"{listen}\"\n\
             secret = {secret}\n\
             state_file = {state}\n\
             probe_interval_ms = {interval}\n\
             metrics_listen = \"{metrics}\"\n\
             peers = [{peers}]\n\
             {extra}",
            quorum = self.quorum,
            down_after = self.down_after_ms,
            failover_timeout = self.failover_timeout_ms,
            id = toml_string(self.id),
            listen = self.listen,
            secret = toml_string(self.secret),
            state = toml_string(&self.state_file.display().to_string()),
            interval = self.probe_interval_ms,
            metrics = self.metrics_listen,
            peers = peers.join(", "),
            extra = self.extra,
        )
    }
}

/// What [`Cluster::up`] builds.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub testbed: TestbedOptions,
    pub down_after_ms: u64,
    /// Small in tests (Sentinel's default is 3 minutes): an aborted attempt is retried after
    /// twice this, which must fit in a test.
    pub failover_timeout_ms: u64,
    pub probe_interval_ms: u64,
    pub quorum: usize,
    /// The shared peer secret (at least 16 characters).
    pub secret: String,
    /// Appended to every controller's `[controller]` section (the last of its config): the
    /// API's passwords and users (`requirepass = ...`, `[[controller.users]]`). Empty: the
    /// API is open, as it is without a password.
    pub controller_toml: String,
    /// `redis-cli` arguments that authenticate the harness's own API queries (the health
    /// check, [`Cluster::sentinel_cli`]) when `controller_toml` sets a password, e.g.
    /// `["--user", "admin", "--pass", "..."]`.
    pub api_cli_auth: Vec<String>,
    /// The backends speak TLS only ([`Testbed::use_tls`]) and the controllers reach them
    /// with `[service.tls]`.
    pub redis_tls: Option<AuthClients>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            testbed: TestbedOptions::default(),
            down_after_ms: 1000,
            failover_timeout_ms: 5000,
            probe_interval_ms: 100,
            quorum: 2,
            secret: "redis-ha-e2e-shared-secret".to_owned(),
            controller_toml: String::new(),
            api_cli_auth: Vec::new(),
            redis_tls: None,
        }
    }
}

/// One controller's configuration, enough to write its TOML.
#[derive(Clone, Debug)]
pub struct ControllerSpec {
    pub id: String,
    /// Where it runs: node 1 is the LB namespace, node N ≥ 2 the namespace `rha-<tag>-kN`
    /// (created on demand). It listens on [`node_ip`]`(node)`:[`PEER_PORT`].
    pub node: u8,
    pub secret: String,
    pub quorum: usize,
    pub peers: Vec<(String, SocketAddrV4)>,
    /// Owns the XDP data plane (gets the testbed's `[dataplane]` section).
    pub dataplane: bool,
}

impl ControllerSpec {
    pub fn listen(&self) -> SocketAddrV4 {
        SocketAddrV4::new(node_ip(self.node), PEER_PORT)
    }

    /// `/metrics`, `/status.json` and the status page of this controller.
    pub fn metrics_listen(&self) -> SocketAddrV4 {
        SocketAddrV4::new(node_ip(self.node), METRICS_PORT)
    }
}

/// A namespace on the controllers' network, joined to the LB by a routed veth.
#[derive(Debug)]
struct ControllerNode {
    n: u8,
    ns: Netns,
}

/// A running testbed with controller processes. Dropping it (also during a panic) kills the
/// controllers, removes their namespaces, then the testbed; during a panic it first prints the
/// end of every controller's log, since the files go with the testbed's directory.
#[derive(Debug)]
pub struct Cluster {
    /// Declared first: the processes die before their namespaces and pins go.
    controllers: Vec<Controller>,
    nodes: Vec<ControllerNode>,
    options: ClusterOptions,
    /// Controller configs, logs and state files (inside the testbed's directory).
    dir: PathBuf,
    testbed: Testbed,
}

impl Cluster {
    /// Builds the testbed, the controller namespaces and three controllers (c1 in the LB with
    /// the data plane, c2 and c3 in their own namespaces), starts them and waits until the data
    /// plane serves the initial master and a full read pool.
    pub fn up(options: ClusterOptions) -> Result<Cluster> {
        if options.secret.len() < 16 {
            bail!("the peer secret must have at least 16 characters");
        }
        let mut testbed = Testbed::up(options.testbed.clone())?;
        if let Some(auth_clients) = options.redis_tls {
            testbed.use_tls(auth_clients)?;
        }
        let dir = testbed
            .config_path()
            .parent()
            .context("the testbed's config has no directory")?
            .join("controllers");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = Cluster {
            controllers: Vec::new(),
            nodes: Vec::new(),
            options,
            dir,
            testbed,
        };
        let members: Vec<(String, SocketAddrV4)> = (1..=3u8)
            .map(|n| (format!("c{n}"), SocketAddrV4::new(node_ip(n), PEER_PORT)))
            .collect();
        for n in 1..=3u8 {
            let id = format!("c{n}");
            let spec = ControllerSpec {
                peers: members.iter().filter(|(p, _)| *p != id).cloned().collect(),
                id,
                node: n,
                secret: cluster.options.secret.clone(),
                quorum: cluster.options.quorum,
                dataplane: n == 1,
            };
            cluster.add_controller(spec)?;
        }
        for c in &cluster.controllers {
            c.start()?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    pub fn testbed(&self) -> &Testbed {
        &self.testbed
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    pub fn down_after(&self) -> Duration {
        Duration::from_millis(self.options.down_after_ms)
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.options.probe_interval_ms)
    }

    /// Every controller, c1..c3 first, then any added with [`Self::add_controller`].
    pub fn controllers(&self) -> &[Controller] {
        &self.controllers
    }

    /// Controller `n`, 1-based (c1 owns the data plane).
    pub fn controller(&self, n: usize) -> &Controller {
        assert!(
            (1..=self.controllers.len()).contains(&n),
            "controller {n} out of 1..={}",
            self.controllers.len()
        );
        &self.controllers[n - 1]
    }

    /// The controllers whose process currently runs.
    pub fn running(&self) -> Vec<&Controller> {
        self.controllers.iter().filter(|c| c.is_running()).collect()
    }

    /// The namespace controller node `n` lives in (1: the LB).
    pub fn node_netns(&self, n: u8) -> Result<&Netns> {
        if n == 1 {
            return Ok(self.testbed.lb());
        }
        self.nodes
            .iter()
            .find(|node| node.n == n)
            .map(|node| &node.ns)
            .with_context(|| format!("controller node {n} does not exist"))
    }

    /// Writes the config of a new controller (creating its node namespace if needed) without
    /// starting it; returns its 1-based index. Used for c1..c3, and by tests for intruders.
    pub fn add_controller(&mut self, spec: ControllerSpec) -> Result<usize> {
        if spec.node >= 2 && !self.nodes.iter().any(|node| node.n == spec.node) {
            let ns = attach_node(&self.testbed, spec.node)?;
            self.nodes.push(ControllerNode { n: spec.node, ns });
        }
        let ns_name = self.node_netns(spec.node)?.name().to_owned();
        let index = self.controllers.len() + 1;
        // Unique names per index: an intruder may reuse a real controller's id.
        let file = |ext: &str| self.dir.join(format!("{index}-{}.{ext}", spec.id));
        let config_path = file("toml");
        std::fs::write(&config_path, self.config_toml(&spec, &file("state")))
            .with_context(|| format!("writing {}", config_path.display()))?;
        self.controllers.push(Controller {
            id: spec.id.clone(),
            ns_name,
            listen: spec.listen(),
            config_path,
            log_path: file("log"),
            state_path: file("state"),
            process: ProcessSlot::default(),
            started_at: Mutex::new(None),
            env: Mutex::new(Vec::new()),
        });
        Ok(index)
    }

    fn config_toml(&self, spec: &ControllerSpec, state_file: &Path) -> String {
        let base = self.testbed.config_toml();
        // The testbed's config is `[dataplane]` then `[[service]]`; only c1 keeps the former.
        let service_at = base.find("[[service]]").unwrap_or(0);
        let (dataplane, service) = base.split_at(service_at);
        let o = &self.options;
        let dataplane = if spec.dataplane { dataplane } else { "" };
        let tail = ControllerToml {
            quorum: spec.quorum,
            down_after_ms: o.down_after_ms,
            failover_timeout_ms: o.failover_timeout_ms,
            id: &spec.id,
            listen: spec.listen(),
            secret: &spec.secret,
            state_file,
            probe_interval_ms: o.probe_interval_ms,
            metrics_listen: spec.metrics_listen(),
            peers: &spec.peers,
            extra: &o.controller_toml,
        };
        format!("{dataplane}{service}{}", tail.render())
    }

    /// Moves controller `n`'s state file to `path` (copying what it holds) and points its
    /// config there, for a test that puts it on a file system of its own. The controller must
    /// not run.
    pub fn relocate_state_file(&mut self, n: usize, path: &Path) -> Result<()> {
        let c = &mut self.controllers[n - 1];
        if c.is_running() {
            bail!(
                "controller {} runs: stop it before moving its state file",
                c.id
            );
        }
        let config = std::fs::read_to_string(&c.config_path)
            .with_context(|| format!("reading {}", c.config_path.display()))?;
        let old = toml_string(&c.state_path.display().to_string());
        if !config.contains(&old) {
            bail!("{} does not name {old}", c.config_path.display());
        }
        let new = toml_string(&path.display().to_string());
        std::fs::write(&c.config_path, config.replace(&old, &new))
            .with_context(|| format!("writing {}", c.config_path.display()))?;
        if c.state_path.exists() {
            std::fs::copy(&c.state_path, path).with_context(|| {
                format!("copying {} to {}", c.state_path.display(), path.display())
            })?;
        }
        c.state_path = path.to_owned();
        Ok(())
    }

    /// `redis-ha-ctl maps --config <c1's config> --flows 0`, parsed.
    pub fn maps(&self) -> Result<MapsView> {
        let mut cmd = self.testbed.lb().command(crate::ctl_binary()?);
        cmd.arg("maps")
            .arg("--config")
            .arg(&self.controller(1).config_path)
            .args(["--flows", "0"]);
        let out = run_within(&mut cmd, MAPS_TIMEOUT)?;
        out.parse()
    }

    /// `redis-ha-ctl SUBCOMMAND --config <controller n's config>` from the client namespace,
    /// arguments still to add: an operator's shell on another host, talking to controller
    /// `n`'s API over the network. Built ahead, so a test can start several at one moment.
    pub fn ctl_command(&self, n: usize, subcommand: &str) -> Result<Command> {
        let mut cmd = self.testbed.client().command(crate::ctl_binary()?);
        cmd.arg(subcommand)
            .arg("--config")
            .arg(&self.controller(n).config_path);
        Ok(cmd)
    }

    /// `redis-cli -h <controller n> -p 26379 ARGS...` from the client namespace, as a Sentinel
    /// client asks (bounded; an error reply is an error); the reply without its last newline.
    pub fn sentinel_cli(&self, n: usize, args: &[&str]) -> Result<String> {
        let api = self.controller(n).listen;
        let out = self.testbed.client().redis_cli(api, &self.api_args(args))?;
        Ok(out.trim_end().to_owned())
    }

    /// `args` after the options that authenticate to the API, if it has a password.
    fn api_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let auth = self.options.api_cli_auth.iter().map(String::as_str);
        let quiet = (!self.options.api_cli_auth.is_empty()).then_some("--no-auth-warning");
        auth.chain(quiet).chain(args.iter().copied()).collect()
    }

    /// The backend the write port points at now.
    pub fn master(&self) -> Result<&Backend> {
        let addr = self
            .maps()?
            .master()
            .context("the write port has no master")?;
        self.testbed
            .backend_at(addr)
            .with_context(|| format!("the write port points at {addr}, not a backend"))
    }

    /// Cuts backend `n` off: its veth goes down on the LB side, as if its cable were pulled.
    pub fn cut_link(&self, n: usize) -> Result<()> {
        let b = self.testbed.backend(n);
        self.testbed
            .lb()
            .ip(&["link", "set", b.lb_interface(), "down"])?;
        Ok(())
    }

    /// Undoes [`Self::cut_link`]. Taking a link down flushes the routes through it, so the
    /// backend's host route comes back explicitly.
    pub fn restore_link(&self, n: usize) -> Result<()> {
        let b = self.testbed.backend(n);
        let lb = self.testbed.lb();
        lb.ip(&["link", "set", b.lb_interface(), "up"])?;
        lb.ip(&[
            "route",
            "replace",
            &format!("{}/32", b.ip()),
            "dev",
            b.lb_interface(),
        ])?;
        Ok(())
    }

    /// Makes `ip` unreachable from controller `ctl`'s namespace (a blackhole route), the others
    /// unaffected. Refused for c1, whose namespace is the data plane's.
    pub fn block(&self, ctl: usize, ip: Ipv4Addr) -> Result<()> {
        let ns = self.controller_netns(ctl)?;
        ns.ip(&["route", "add", "blackhole", &format!("{ip}/32")])?;
        Ok(())
    }

    /// Removes the route [`Self::block`] added.
    pub fn unblock(&self, ctl: usize, ip: Ipv4Addr) -> Result<()> {
        let ns = self.controller_netns(ctl)?;
        ns.ip(&["route", "del", "blackhole", &format!("{ip}/32")])?;
        Ok(())
    }

    fn controller_netns(&self, ctl: usize) -> Result<&Netns> {
        let c = self.controller(ctl);
        if c.ns_name == self.testbed.lb().name() {
            bail!(
                "controller {} runs in the LB namespace: a route there would also cut the data plane",
                c.id
            );
        }
        self.nodes
            .iter()
            .map(|node| &node.ns)
            .find(|ns| ns.name() == c.ns_name)
            .with_context(|| format!("no namespace for controller {}", c.id))
    }

    /// Waits (bounded) until the service is whole: the write port has a master that reports
    /// `role:master`; every other backend runs, follows it with the link up and is readable;
    /// every running controller's state file (once it has one) names that master, and none is
    /// still running a failover (`SENTINEL MASTER`'s flags); and the
    /// controllers have run long enough to have heard each other. Returns the master.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<SocketAddrV4> {
        let master = wait_until("the service to be healthy", timeout, POLL, || {
            Ok(self.health_problem()?.ok())
        })
        .map_err(|e| {
            // Say what was still wrong, not just that time ran out.
            let problem = match self.health_problem() {
                Ok(Err(p)) => p,
                Ok(Ok(_)) => "nothing (it became healthy just now)".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            e.context(format!("still wrong: {problem}"))
        })?;
        for c in self.running() {
            if let Some(started) = c.started_at() {
                std::thread::sleep(PEER_WARMUP.saturating_sub(started.elapsed()));
            }
        }
        Ok(master)
    }

    /// `Ok(Ok(master))` when healthy, `Ok(Err(what is wrong))` otherwise.
    fn health_problem(&self) -> Result<std::result::Result<SocketAddrV4, String>> {
        let maps = self.maps()?;
        let Some(master) = maps.master() else {
            return Ok(Err("the write port has no master".into()));
        };
        let tb = &self.testbed;
        let Some(master_backend) = tb.backend_at(master) else {
            return Ok(Err(format!("the write port points at {master}")));
        };
        match replication(master_backend) {
            Ok(Replication::Master) => {}
            other => return Ok(Err(format!("master {master} reports {other:?}"))),
        }
        for b in tb.backends().iter().filter(|b| b.addr() != master) {
            match replication(b) {
                Ok(Replication::Replica {
                    master: m,
                    link_up: true,
                }) if m == *master.ip() => {}
                other => {
                    return Ok(Err(format!(
                        "{} reports {other:?}, not a synced replica of {master}",
                        b.addr()
                    )));
                }
            }
            if !maps.row(b.addr()).is_some_and(|r| r.readable) {
                return Ok(Err(format!("{} is not in the read pool", b.addr())));
            }
        }
        for c in self.running() {
            if let Some(state) = c.state()?
                && state.master != master
            {
                return Ok(Err(format!(
                    "{} believes {} is the master",
                    c.id, state.master
                )));
            }
        }
        // The state file names the promoted node from its promotion on, while the leader still
        // reconfigures the replicas; until it is done, it refuses the next failover.
        // A controller the client cannot reach (a test cut it off) cannot tell: skip it.
        for c in self.running() {
            let Ok(reply) = self.testbed.client().redis_cli(
                c.listen,
                &self.api_args(&["SENTINEL", "MASTER", SERVICE_NAME]),
            ) else {
                continue;
            };
            let mut lines = reply.lines();
            let flags = lines
                .by_ref()
                .find(|l| l.trim() == "flags")
                .and(lines.next());
            if flags.is_some_and(|f| f.contains("failover_in_progress")) {
                return Ok(Err(format!("{} is still running a failover", c.id)));
            }
        }
        Ok(Ok(master))
    }
}

impl Cluster {
    /// Leaves everything running after this process exits (`cargo xtask demo --keep`): the
    /// controllers, their namespaces and the testbed. [`crate::cleanup_prefix`] with
    /// `rha-<tag>-` removes all of it later (`cargo xtask testbed down` for the tag `tb`): the
    /// controller namespaces carry the testbed's prefix, the controllers' files live in its
    /// directory, c1's pins in its pin directory.
    pub fn keep(mut self) {
        for c in &self.controllers {
            c.disarm();
        }
        for node in &mut self.nodes {
            node.ns.disarm();
        }
        self.testbed.disarm();
    }
}

impl Cluster {
    /// The last `lines` lines of every controller's log, for a failing test to print (the
    /// files go with the testbed's directory).
    pub fn log_tails(&self, lines: usize) -> String {
        log_tails(&self.controllers, lines)
    }
}

impl Cluster {
    /// Copies every controller's log to `<target>/e2e-logs/<tag>/` (which outlives the
    /// testbed, unlike the logs themselves) and returns that directory.
    pub fn save_logs(&self) -> Result<PathBuf> {
        save_logs(&self.controllers, self.testbed.tag())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(60));
            match self.save_logs() {
                Ok(dir) => eprintln!("controller logs saved in {}", dir.display()),
                Err(e) => eprintln!("saving the controller logs: {e:#}"),
            }
        }
    }
}

/// Creates `rha-<tag>-kN` joined to the LB (see the module docs).
fn attach_node(tb: &Testbed, n: u8) -> Result<Netns> {
    let prefix = namespace_prefix(tb.tag());
    let ns = Netns::create(&format!("{prefix}k{n}"))?;
    let inside = format!("{prefix}k{n}");
    let outside = format!("{prefix}p{n}");
    let lb = tb.lb();
    let ip = node_ip(n);
    lb.add_veth(&outside, &inside, &ns)?;
    lb.ip(&[
        "addr",
        "add",
        &format!("{}/32", node_ip(1)),
        "dev",
        &outside,
    ])?;
    // Controllers believe they share 198.18.2.0/24: the LB answers their ARP for each other.
    lb.set_sysctl(&format!("net.ipv4.conf.{outside}.proxy_arp"), "1")?;
    lb.set_sysctl(&format!("net.ipv4.conf.{outside}.rp_filter"), "0")?;
    lb.ip(&["link", "set", &outside, "up"])?;
    lb.ip(&["route", "add", &format!("{ip}/32"), "dev", &outside])?;
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &inside])?;
    ns.ip(&["link", "set", &inside, "up"])?;
    ns.ip(&["route", "add", "default", "via", &node_ip(1).to_string()])?;
    Ok(ns)
}

/// What `INFO replication` says about a backend's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    Master,
    Replica { master: Ipv4Addr, link_up: bool },
}

/// Asks backend `b` (from its own namespace) for its role.
pub fn replication(b: &Backend) -> Result<Replication> {
    let info = b.redis_cli(&["INFO", "replication"])?;
    let field = |key: &str| {
        info.lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_owned())
    };
    match field("role").as_deref() {
        Some("master") => Ok(Replication::Master),
        Some("slave") => Ok(Replication::Replica {
            master: field("master_host")
                .context("a replica without master_host")?
                .parse()
                .context("master_host is not an IPv4 address")?,
            link_up: field("master_link_status").as_deref() == Some("up"),
        }),
        other => bail!("{}: INFO replication has role {other:?}", b.addr()),
    }
}

/// Where a testbed whose files live in `dir` keeps controller `id`'s config, log and state
/// file.
pub(crate) fn controller_files(dir: &Path, id: &str) -> (PathBuf, PathBuf, PathBuf) {
    let file = |ext: &str| dir.join("controllers").join(format!("{id}.{ext}"));
    (file("toml"), file("log"), file("state"))
}
