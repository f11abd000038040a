//! The end-to-end testbed: a client, a load balancer and N redis-server backends, each in its
//! own network namespace, joined by veths.
//!
//! ```text
//!   rha-T-client            rha-T-lb                      rha-T-rN
//!   rha-T-c 198.18.0.2/24 ── rha-T-lc 198.18.0.1/24
//!                            lo 198.18.0.100/32 (VIP)
//!                            rha-T-lN 198.18.1.1/32 ──── rha-T-rN 198.18.1.1N/24
//!                              route 198.18.1.1N/32        redis-server :6379
//!                              proxy_arp=1
//! ```
//! One routed veth per backend rather than a bridge: a Linux bridge cannot transmit frames
//! that native XDP redirected into it. proxy_arp lets backends, which think they share a /24,
//! reach each other (replication) through the LB's kernel, unless
//! [`Testbed::separate_replication_network`] gives replication a bridge of its own.
//!
//! [`TestbedOptions::bridged_backends`] builds the other common router instead (docker0,
//! libvirt's virbr0): the LB's veths to the backends are ports of a bridge `rha-T-br`
//! (198.18.1.1/24), and the data plane's interfaces are the client veth and that bridge.

mod backend;
mod build;
mod intruder;
mod replication_net;

pub use backend::Backend;
pub use replication_net::{ReplicationNetwork, replication_ip};

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::netns::{Netns, leftovers};
use crate::process::{ChildGuard, GiveUp, ProcessSlot, run_within, wait_until};
use crate::tls::{AuthClients, RedisTls, TlsFiles};

/// Every namespace and interface the tests create starts with this.
pub const PREFIX: &str = "rha-";
/// The service name in the generated config.
pub const SERVICE_NAME: &str = "mymaster";
/// The virtual IP clients connect to (on the LB's `lo`).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Always reaches the current master.
pub const WRITE_PORT: u16 = 6380;
/// Balanced over the read pool.
pub const READ_PORT: u16 = 6381;
/// Where every redis-server listens.
pub const REDIS_PORT: u16 = 6379;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The LB's address on the client side: the client's default gateway.
pub const LB_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The LB's address on every backend-side veth: the backends' default gateway.
pub const LB_BACKEND_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Backend addresses are 198.18.1.1N, so N is one digit.
pub const MAX_BACKENDS: usize = 9;
/// Tags end up in interface names (`rha-<tag>-lc`), which Linux caps at 15 bytes.
pub const MAX_TAG_LEN: usize = 8;

/// How long a fresh redis-server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long replicas may take to finish their first sync.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The address of backend `n` (1-based): 198.18.1.1N.
pub fn backend_ip(n: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_BACKENDS).contains(&n),
        "backend {n} out of 1..={MAX_BACKENDS}"
    );
    Ipv4Addr::new(198, 18, 1, 10 + n as u8)
}

/// `rha-<tag>-`: the start of every namespace and interface name of one testbed.
pub fn namespace_prefix(tag: &str) -> String {
    format!("{PREFIX}{tag}-")
}

/// The bpffs directory redis-ha-ctl pins into for this testbed: `/sys/fs/bpf/redis-ha-<tag>`,
/// so concurrent testbeds never share (or delete) each other's pins.
pub fn pin_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!("{}-{tag}", redis_ha_common::PIN_DIR))
}

/// Server data and logs of a testbed: `$TMPDIR/redis-ha-<tag>`.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("redis-ha-{tag}"))
}

/// Directories holding per-testbed `redis-ha-<tag>` entries (see [`pin_dir`], [`temp_dir`]).
pub(crate) fn state_dir_parents() -> Vec<PathBuf> {
    let pin_parent = pin_dir("x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    vec![pin_parent, std::env::temp_dir()]
}

/// The tag in a `redis-ha-<tag>` directory name, if it is one of ours.
pub(crate) fn tag_of_state_dir(name: &str) -> Option<&str> {
    name.strip_prefix("redis-ha-")
        .filter(|tag| validate_tag(tag).is_ok())
}

pub(crate) fn validate_tag(tag: &str) -> Result<()> {
    if tag.is_empty()
        || tag.len() > MAX_TAG_LEN
        || !tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        bail!("testbed tag {tag:?} must be 1 to {MAX_TAG_LEN} characters of [a-z0-9]");
    }
    Ok(())
}

/// A tag no other live process uses: this process's pid (5 base-36 digits) and a counter,
/// e.g. `002ps0`, `002ps1`.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Fixed width for the pid so that (pid, counter) pairs never spell the same tag.
    format!("{:0>5}{}", base36(std::process::id()), base36(n))
}

fn base36(mut n: u32) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).expect("ASCII digits")
}

/// How redis-ha-ctl attaches the XDP program (`xdp_mode` in its config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Whatever redis-ha-ctl picks for the interfaces (TC on veths and bridges).
    Auto,
    /// In the veth driver (`xdpdrv`).
    #[default]
    Native,
    /// Generic XDP on the skb path (`xdpgeneric`).
    Skb,
    /// The same program at the TC ingress hook (TCX).
    Tc,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
            XdpMode::Tc => "tc",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for XdpMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "skb" => Ok(XdpMode::Skb),
            "tc" => Ok(XdpMode::Tc),
            _ => bail!("unknown XDP mode {s:?}: expected auto, native, skb or tc"),
        }
    }
}

/// What [`Testbed::up`] builds.
#[derive(Clone, Debug)]
pub struct TestbedOptions {
    /// Goes into every name (`rha-<tag>-lb`); unique per test so tests never collide.
    pub tag: String,
    /// Number of redis-server backends; backend 1 is the master, the others replicate it.
    pub backends: usize,
    /// Written into the generated redis-ha-ctl config.
    pub xdp_mode: XdpMode,
    /// The backends behind a Linux bridge in the LB namespace, which the data plane attaches
    /// to instead of the backends' veths (a router with a bridge for its containers or VMs).
    pub bridged_backends: bool,
}

impl Default for TestbedOptions {
    /// A fresh [`unique_tag`], three backends, native XDP.
    fn default() -> Self {
        Self {
            tag: unique_tag(),
            backends: 3,
            xdp_mode: XdpMode::Native,
            bridged_backends: false,
        }
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub(crate) struct DirGuard {
    pub(crate) path: PathBuf,
    pub(crate) armed: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running testbed. Dropping it (also during a panic) kills every process in its
/// namespaces, deletes the namespaces, the pin directory and the temporary directory;
/// [`Testbed::keep`] leaves everything running instead.
#[derive(Debug)]
pub struct Testbed {
    tag: String,
    xdp_mode: XdpMode,
    client: Netns,
    client_interface: String,
    lb: Netns,
    lb_client_interface: String,
    /// The bridge whose ports are the LB's veths to the backends, if
    /// [`TestbedOptions::bridged_backends`].
    backend_bridge: Option<String>,
    backends: Vec<Backend>,
    /// The generated redis-ha-ctl config (inside `dir`).
    config_path: PathBuf,
    /// Set by [`Testbed::use_tls`]: the servers speak TLS only, and the config says so.
    redis_tls: Option<RedisTls>,
    /// Declared last: dropped after the servers writing into it are gone.
    dir: DirGuard,
    armed: bool,
}

impl Testbed {
    /// Waits (bounded) until every replica reports `master_link_status:up` and the master
    /// counts them all.
    pub fn wait_replication(&self) -> Result<()> {
        wait_replication(&self.backends)
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn xdp_mode(&self) -> XdpMode {
        self.xdp_mode
    }

    /// The client namespace (`rha-<tag>-client`, 198.18.0.2).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The client's end of its veth to the LB.
    pub fn client_interface(&self) -> &str {
        &self.client_interface
    }

    /// The load balancer namespace (`rha-<tag>-lb`): run redis-ha-ctl here.
    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    /// The LB's end of the client veth.
    pub fn lb_client_interface(&self) -> &str {
        &self.lb_client_interface
    }

    /// Every LB interface the XDP program attaches to: the client side first, then one per
    /// backend in order, or the bridge they are ports of.
    pub fn lb_interfaces(&self) -> Vec<String> {
        let backend_side = match &self.backend_bridge {
            Some(bridge) => vec![bridge.clone()],
            None => self
                .backends
                .iter()
                .map(|b| b.lb_interface.clone())
                .collect(),
        };
        std::iter::once(self.lb_client_interface.clone())
            .chain(backend_side)
            .collect()
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Backend `n`, 1-based (backend 1 starts as the master). Panics if there is none.
    pub fn backend(&self, n: usize) -> &Backend {
        assert!(
            (1..=self.backends.len()).contains(&n),
            "backend {n} out of 1..={}",
            self.backends.len()
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

    /// `/sys/fs/bpf/redis-ha-<tag>`.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.tag)
    }

    /// The testbed's pinned connection table, `FLOWS`.
    pub fn flows_map(
        &self,
    ) -> Result<
        aya::maps::HashMap<aya::maps::MapData, redis_ha_common::FlowKey, redis_ha_common::Flow>,
    > {
        let pin = self.pin_dir().join(redis_ha_common::map_name::FLOWS);
        let data = aya::maps::MapData::from_pin(&pin)
            .with_context(|| format!("opening {}", pin.display()))?;
        Ok(aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?)
    }

    /// The `FLOWS` entry of a made-up connection from 198.19.200.1:`port` through the write
    /// port to the first backend, last active at `last_ns` (CLOCK_MONOTONIC) both ways, with
    /// `end` bits: what a test writes into the pinned table to stand for a connection no
    /// packet will come for.
    pub fn made_up_connection(
        &self,
        port: u16,
        last_ns: u64,
        end: u16,
    ) -> (redis_ha_common::FlowKey, redis_ha_common::Flow) {
        use redis_ha_common::{Flow, FlowKey, NextHop};
        let vip = self.vip_write();
        let master = self.backend(1).addr();
        let hop = NextHop {
            resolved_ns: last_ns,
            ..NextHop::default()
        };
        (
            FlowKey {
                src_ip: [198, 19, 200, 1],
                dst_ip: vip.ip().octets(),
                src_port: port,
                dst_port: vip.port(),
            },
            Flow {
                backend_ip: master.ip().octets(),
                backend_port: master.port(),
                backend: 1,
                end,
                to_backend: hop,
                to_client: hop,
                ..Flow::default()
            },
        )
    }

    /// The config [`Testbed::up`] wrote for this testbed (removed with it).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The redis-ha-ctl config describing this testbed.
    pub fn config_toml(&self) -> String {
        let list = |items: Vec<String>| {
            items
                .iter()
                .map(|s| toml_string(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let backends = self.backends.iter().map(|b| b.addr().to_string()).collect();
        format!(
            "[dataplane]\n\
             interfaces = [{interfaces}]\n\
             backend_interfaces = [{backend_interfaces}]\n\
             xdp_mode = {mode}\n\
             pin_dir = {pin_dir}\n\
             \n\
             [[service]]\n\
             name = {name}\n\
             vip = {vip}\n\
             write_port = {WRITE_PORT}\n\
             read_port = {READ_PORT}\n\
             backends = [{backends}]\n\
             {tls}",
            interfaces = list(self.lb_interfaces()),
            // Every LB interface but the clients' faces the backends.
            backend_interfaces = list(self.lb_interfaces().split_off(1)),
            mode = toml_string(self.xdp_mode.as_str()),
            pin_dir = toml_string(&self.pin_dir().display().to_string()),
            name = toml_string(SERVICE_NAME),
            vip = toml_string(&VIP.to_string()),
            backends = list(backends),
            tls = self
                .redis_tls
                .as_ref()
                .map_or(String::new(), RedisTls::service_toml),
        )
    }

    /// Restarts every backend as a TLS-only server (`--port 0 --tls-port`, TLS replication)
    /// with a CA and certificate made in the testbed's directory, points the harness's own
    /// `redis-cli` at TLS, waits for replication and rewrites the config with `[service.tls]`.
    pub fn use_tls(&mut self, auth_clients: AuthClients) -> Result<RedisTls> {
        let dir = self.dir.path.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The VIP too: a client through the data plane reaches a backend at that address.
        let ips: Vec<Ipv4Addr> = self.backends.iter().map(Backend::ip).chain([VIP]).collect();
        let tls = RedisTls {
            files: TlsFiles::create(&dir, "redis", &ips)?,
            auth_clients,
        };
        for b in &mut self.backends {
            b.kill()?;
            b.args.extend(tls.server_args(REDIS_PORT));
            b.cli_args = tls.cli_args();
        }
        for b in &self.backends {
            b.start()?;
        }
        self.wait_replication()?;
        self.redis_tls = Some(tls.clone());
        self.write_config(&self.config_path)?;
        Ok(tls)
    }

    /// How the servers speak TLS, once [`Testbed::use_tls`] made them.
    pub fn redis_tls(&self) -> Option<&RedisTls> {
        self.redis_tls.as_ref()
    }

    /// Writes [`Self::config_toml`] to `path`, creating its directory.
    pub fn write_config(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, self.config_toml())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// A command running redis-ha-ctl inside the LB namespace (arguments still to add), e.g.
    /// for a daemon the test wraps in a [`ChildGuard`].
    pub fn ctl_command(&self) -> Result<Command> {
        Ok(self.lb.command(crate::ctl_binary()?))
    }

    /// `redis-ha-ctl SUBCOMMAND --config <config_path> ARGS...` inside the LB namespace, bounded
    /// in time; returns its stdout.
    pub fn ctl(&self, subcommand: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.ctl_command()?;
        cmd.arg(subcommand)
            .arg("--config")
            .arg(&self.config_path)
            .args(args);
        run_within(&mut cmd, Duration::from_secs(60))
    }

    /// Leaves the testbed running after this process exits (`cargo xtask testbed up`);
    /// [`crate::cleanup_prefix`] with `rha-<tag>-` removes it later.
    pub fn keep(mut self) {
        self.disarm();
    }

    /// What [`Self::keep`] does, for owners that cannot give the testbed away by value (a
    /// [`crate::Cluster`] being kept).
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
        self.client.disarm();
        self.lb.disarm();
        for backend in &mut self.backends {
            backend.disarm();
        }
        self.dir.armed = false;
    }
}

/// Waits (bounded) until every backend after the first reports `master_link_status:up` and the
/// first counts them all.
pub(crate) fn wait_replication<B: std::borrow::Borrow<Backend>>(backends: &[B]) -> Result<()> {
    for replica in backends[1..].iter().map(B::borrow) {
        wait_until(
            &format!("backend {} to sync with the master", replica.index),
            REPLICATION_TIMEOUT,
            POLL_INTERVAL,
            || {
                let info = replica.redis_cli(&["INFO", "replication"])?;
                Ok(info.contains("master_link_status:up").then_some(()))
            },
        )?;
    }
    let expected = format!("connected_slaves:{}", backends.len() - 1);
    wait_until(
        &format!("the master to report {expected}"),
        REPLICATION_TIMEOUT,
        POLL_INTERVAL,
        || {
            let info = backends[0].borrow().redis_cli(&["INFO", "replication"])?;
            Ok(info.contains(&expected).then_some(()))
        },
    )
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for backend in &self.backends {
            let _ = backend.kill();
        }
        // Processes a test started in the namespaces without a guard (e.g. a controller
        // daemon) go before their pins do.
        for ns in [&self.client, &self.lb]
            .into_iter()
            .chain(self.backends.iter().map(|b| &b.ns))
        {
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
        // The namespaces and the temporary directory go as the fields drop.
    }
}

/// Addresses the endpoint of a veth (client or backend) and routes through the LB.
pub(crate) fn setup_endpoint(
    ns: &Netns,
    interface: &str,
    cidr: &str,
    gateway: Ipv4Addr,
    mode: XdpMode,
) -> Result<()> {
    ns.ip(&["addr", "add", cidr, "dev", interface])?;
    ns.ip(&["link", "set", interface, "up"])?;
    ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
    // The TC hook takes what a container's veth sends by default: partial checksums and
    // 64 KB TSO/GSO packets (`auto` is TC on veth). The XDP modes need what makes
    // XDP_REDIRECT deliver into this veth (docs/building.md, "XDP redirects between veths"): without `tx off` the receiver drops
    // redirected frames for bad partial checksums (native mode); without `tso off gso off`
    // large transfers stall (skb mode); GRO on lets a veth without its own XDP program accept
    // redirected frames (native mode).
    if matches!(mode, XdpMode::Native | XdpMode::Skb) {
        ns.run(
            "ethtool",
            &[
                "-K", interface, "tx", "off", "tso", "off", "gso", "off", "gro", "on",
            ],
        )?;
    }
    Ok(())
}

/// A TOML basic string. Our values are plain ASCII; escape the two characters that matter.
pub(crate) fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What building a testbed with controllers needs before anything is created: a valid tag, a
/// peer secret the controllers accept, root, the programs it runs and the redis-ha-ctl binary.
pub(crate) fn check_can_build(tag: &str, secret: &str) -> Result<()> {
    validate_tag(tag)?;
    if secret.len() < 16 {
        bail!("the peer secret must have at least 16 characters");
    }
    if !crate::is_root() {
        bail!("building a testbed needs root (network namespaces, veths): run as root");
    }
    for program in ["ip", "nsenter", "ethtool", "redis-server", "redis-cli"] {
        if crate::find_program(program).is_none() {
            bail!(
                "`{program}` is not installed: run `cargo xtask build` (it installs the prerequisites)"
            );
        }
    }
    crate::ctl_binary()?;
    Ok(())
}
