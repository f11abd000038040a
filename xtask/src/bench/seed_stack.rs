//! The stack redis-ha replaces, run as the seed runs it, on the seed topology's machines
//! (`SeedCluster` built with `start_controllers: false`, so nothing of redis-ha runs): on each
//! of r1..r3 a redis-sentinel (the seed's sentinel.conf: monitor the master with quorum 2,
//! down-after-milliseconds 1000), HAProxy with the seed's config (`bind *:6380` → the server
//! whose `tcp-check` finds `role:master`, `*:6381` → every server), and keepalived moving the
//! VIP 198.18.0.100 by VRRP among the three, in place of the seed's Pacemaker.
//!
//! keepalived: VRRP only (`-P`), in the foreground (`-n`, so its ChildGuard owns the parent;
//! its VRRP child is killed with the namespace's processes), with its own config and pid files
//! per node. Timers are keepalived's defaults (advert_int 1 s: a backup takes over after
//! 3 × advert_int + skew, about 3.4–3.6 s), with one change: every node starts BACKUP with
//! `nopreempt`, so a returning node does not take the VIP back (a second move of the VIP
//! for nothing). Pacemaker, which it stands in for, does not move a resource back either
//! when the VIP has no location preference.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::cluster::{Replication, replication};
use redis_ha_tests::seed::NODES;
use redis_ha_tests::testbed::{SERVICE_NAME, VIP};
use redis_ha_tests::{ChildGuard, SeedCluster, SeedNode, wait_until};

use super::failover_seed::{SENTINEL_PORT, sentinel_config};
use super::haproxy::HaProxy;

/// The seed's own figure (its sentinel.conf), kept for the comparison.
pub const SEED_DOWN_AFTER_MS: u64 = 1000;
/// keepalived's default advertisement interval, in seconds.
pub const ADVERT_INT_S: u32 = 1;
/// VRRP priorities of r1..r3: r1 first, as redis-ha's `ha.priority` in the seed topology.
const PRIORITIES: [u8; NODES] = [150, 120, 100];

/// The processes of one node.
#[derive(Default)]
struct NodeProcs {
    /// Declared first: HAProxy goes before the others.
    haproxy: Option<HaProxy>,
    keepalived: Option<ChildGuard>,
    sentinel: Option<ChildGuard>,
}

pub struct SeedStack {
    /// Declared first: the processes go before the namespaces they run in.
    procs: Vec<Mutex<NodeProcs>>,
    pub cluster: SeedCluster,
    dir: PathBuf,
}

/// keepalived.conf of one node.
pub fn keepalived_config(n: usize, interface: &str) -> String {
    format!(
        "global_defs {{
    router_id r{n}
}}

vrrp_instance redis_vip {{
    state BACKUP
    nopreempt
    interface {interface}
    virtual_router_id 51
    priority {priority}
    advert_int {ADVERT_INT_S}
    virtual_ipaddress {{
        {VIP}/24 dev {interface}
    }}
}}
",
        priority = PRIORITIES[n - 1]
    )
}

impl SeedStack {
    /// Starts the three sentinels, HAProxies and keepalived on `cluster` (whose redis-servers
    /// replicate r1) and waits until the stack is whole.
    pub fn up(cluster: SeedCluster) -> Result<SeedStack> {
        let dir = cluster.dir().join("seed-stack");
        let stack = SeedStack {
            procs: (0..NODES)
                .map(|_| Mutex::new(NodeProcs::default()))
                .collect(),
            cluster,
            dir,
        };
        for n in 1..=NODES {
            let ndir = stack.node_dir(n);
            std::fs::create_dir_all(&ndir)?;
            // Sentinel rewrites its config (myid, peers, the current master): written once,
            // reused by a restarted node as the seed's machine would after a reboot.
            std::fs::write(
                ndir.join("sentinel.conf"),
                sentinel_config(&ndir, stack.cluster.node(1).ip(), SEED_DOWN_AFTER_MS),
            )?;
            std::fs::write(
                ndir.join("keepalived.conf"),
                keepalived_config(n, stack.cluster.node(n).interface()),
            )?;
        }
        for n in 1..=NODES {
            stack.start_node(n)?;
        }
        stack.wait_healthy(Duration::from_secs(60))?;
        Ok(stack)
    }

    fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.join(format!("r{n}"))
    }

    fn node(&self, n: usize) -> &SeedNode {
        self.cluster.node(n)
    }

    fn procs(&self, n: usize) -> std::sync::MutexGuard<'_, NodeProcs> {
        self.procs[n - 1].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts node `n`'s sentinel, HAProxy and keepalived (its redis-server runs already).
    fn start_node(&self, n: usize) -> Result<()> {
        let ndir = self.node_dir(n);
        let ns = self.node(n).netns();
        let sentinel = {
            let log = std::fs::File::create(ndir.join("sentinel.log"))?;
            let mut cmd = ns.command("redis-sentinel");
            cmd.arg(ndir.join("sentinel.conf"))
                .current_dir(&ndir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            ChildGuard::spawn(&mut cmd).context("starting redis-sentinel")?
        };
        self.procs(n).sentinel = Some(sentinel);
        let keepalived = {
            let log = std::fs::File::create(ndir.join("keepalived.log"))?;
            let file = |name: &str| ndir.join(name);
            let mut cmd = ns.command("keepalived");
            cmd.args(["-P", "-n", "-l", "-D", "-G", "-f"])
                .arg(file("keepalived.conf"))
                .arg("-p")
                .arg(file("keepalived.pid"))
                .arg("-r")
                .arg(file("vrrp.pid"))
                .arg("-c")
                .arg(file("checkers.pid"))
                .current_dir(&ndir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            ChildGuard::spawn(&mut cmd).context("starting keepalived")?
        };
        self.procs(n).keepalived = Some(keepalived);
        let servers: Vec<Ipv4Addr> = self.cluster.nodes().iter().map(SeedNode::ip).collect();
        let proxy = HaProxy::start_bound(ns, &servers, "*", &ndir.join("haproxy"))
            .with_context(|| format!("starting HAProxy on r{n}"))?;
        self.procs(n).haproxy = Some(proxy);
        Ok(())
    }

    /// HAProxy's pid on node `n`.
    pub fn haproxy_pid(&self, n: usize) -> Option<u32> {
        self.procs(n).haproxy.as_ref().map(HaProxy::pid)
    }

    fn sentinel_cli(&self, n: usize, args: &[&str]) -> Result<String> {
        let node = self.node(n);
        node.netns()
            .redis_cli(SocketAddrV4::new(node.ip(), SENTINEL_PORT), args)
    }

    fn sentinel_master(&self, n: usize) -> Result<SocketAddrV4> {
        let out = self.sentinel_cli(n, &["SENTINEL", "get-master-addr-by-name", SERVICE_NAME])?;
        let mut lines = out.lines().map(str::trim);
        let (Some(ip), Some(port)) = (lines.next(), lines.next()) else {
            bail!("sentinel r{n} answered {out:?}");
        };
        Ok(SocketAddrV4::new(ip.parse()?, port.parse()?))
    }

    /// The master the sentinels of the nodes that are up name (they must agree).
    pub fn master(&self) -> Result<usize> {
        let up = self.with_sentinel();
        if up.is_empty() {
            bail!("no sentinel runs");
        }
        let first = self.sentinel_master(up[0])?;
        for &n in &up[1..] {
            let m = self.sentinel_master(n)?;
            if m != first {
                bail!("sentinel r{n} names {m}, r{} {first}", up[0]);
            }
        }
        self.cluster
            .node_at(first)
            .with_context(|| format!("the sentinels name {first}"))
    }

    /// The nodes that are up with their sentinel running (a restored node's starts last).
    fn with_sentinel(&self) -> Vec<usize> {
        self.cluster
            .up_nodes()
            .into_iter()
            .filter(|&n| self.procs(n).sentinel.is_some())
            .collect()
    }

    /// Sentinels' log files of the nodes that are up, for counting `+switch-master`.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.with_sentinel()
            .into_iter()
            .map(|n| {
                (
                    format!("sentinel r{n}"),
                    self.node_dir(n).join("sentinel.log"),
                )
            })
            .collect()
    }

    /// `Ok(Err(what is wrong))` until the stack is whole among the nodes that are up.
    fn health(&self) -> Result<std::result::Result<(usize, usize), String>> {
        let master = match self.master() {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("{e:#}"))),
        };
        let up = self.cluster.up_nodes();
        for &n in &up {
            let info = self.sentinel_cli(n, &["SENTINEL", "master", SERVICE_NAME])?;
            let field = |key: &str| {
                let mut lines = info.lines().map(str::trim);
                lines.find(|l| *l == key)?;
                lines.next().map(str::to_owned)
            };
            if field("num-other-sentinels").as_deref() != Some("2") {
                return Ok(Err(format!("sentinel r{n} does not know the two others")));
            }
            if field("flags").as_deref() != Some("master") {
                return Ok(Err(format!("sentinel r{n} flags {:?}", field("flags"))));
            }
        }
        let master_redis = self.node(master).redis();
        if replication(master_redis)? != Replication::Master {
            return Ok(Err(format!("r{master} is not a master")));
        }
        for &n in up.iter().filter(|&&n| n != master) {
            match replication(self.node(n).redis()) {
                Ok(Replication::Replica {
                    master: m,
                    link_up: true,
                }) if m == self.node(master).ip() => {}
                other => return Ok(Err(format!("r{n} is {other:?}"))),
            }
        }
        for &n in &up {
            let procs = self.procs(n);
            let Some(proxy) = procs.haproxy.as_ref() else {
                return Ok(Err(format!("no HAProxy on r{n}")));
            };
            let up_writes = proxy.write_servers_up()?;
            if up_writes != [master_redis.addr()] {
                return Ok(Err(format!("HAProxy r{n} write servers UP: {up_writes:?}")));
            }
            let reads = proxy
                .stats()?
                .iter()
                .filter(|s| s.backend == "redis_read" && s.up)
                .count();
            if reads != up.len() {
                return Ok(Err(format!("HAProxy r{n} has {reads} read servers UP")));
            }
        }
        match self.cluster.holder() {
            Ok(h) => Ok(Ok((master, h))),
            Err(e) => Ok(Err(format!("{e:#}"))),
        }
    }

    /// Waits (bounded) until the stack is whole; returns (master, VIP holder).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(usize, usize)> {
        wait_until(
            "Sentinel + HAProxy + keepalived to be healthy",
            timeout,
            Duration::from_millis(200),
            || Ok(self.health()?.ok()),
        )
        .with_context(|| match self.health() {
            Ok(Err(problem)) => format!("still wrong: {problem}"),
            Ok(Ok(_)) => "healthy just now".to_owned(),
            Err(e) => format!("{e:#}"),
        })
    }

    /// A planned switchover to `to`: Sentinel picks the replica to promote by
    /// `replica-priority` (0: never), so every other replica gets 0 for the time of one
    /// `SENTINEL FAILOVER`, then 100 (Redis' default) again.
    pub fn switch_master(&self, to: usize) -> Result<()> {
        let set_priority = |n: usize, p: &str| {
            self.node(n)
                .redis()
                .redis_cli(&["CONFIG", "SET", "replica-priority", p])
        };
        let others: Vec<usize> = (1..=NODES).filter(|&n| n != to).collect();
        for &n in &others {
            set_priority(n, "0")?;
        }
        let result = (|| {
            let via = self.cluster.up_nodes()[0];
            self.sentinel_cli(via, &["SENTINEL", "FAILOVER", SERVICE_NAME])?;
            wait_until(
                &format!("Sentinel to promote r{to}"),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || Ok((self.master().ok() == Some(to)).then_some(())),
            )
        })();
        for n in others {
            set_priority(n, "100")?;
        }
        result?;
        let (master, _) = self.wait_healthy(Duration::from_secs(90))?;
        if master != to {
            bail!("asked for r{to}, the master is r{master}");
        }
        Ok(())
    }

    /// Node `n` dies: its link goes down, then everything on it is SIGKILLed at once
    /// (redis-server, sentinel, HAProxy, keepalived and its VRRP child).
    pub fn fail_node(&self, n: usize) -> Result<()> {
        self.cluster.fail_node(n)?;
        {
            let mut procs = self.procs(n);
            procs.haproxy = None;
            procs.keepalived = None;
            procs.sentinel = None;
        }
        self.node(n).netns().kill_all()
    }

    /// Node `n` comes back as after a reboot: redis-server as its rewritten config would
    /// start it (see [`Self::after_restart`]), then sentinel, keepalived and HAProxy.
    pub fn restore_node(&self, n: usize, was_master: bool) -> Result<()> {
        self.cluster.restore_node(n)?;
        self.after_restart(n, was_master)?;
        self.start_node(n)
    }

    /// What Sentinel's CONFIG REWRITE would have left in node `n`'s redis.conf: a node that
    /// was the master starts as a master (no `replicaof`); a replica follows the master that
    /// was current when it died. The testbed's servers have no config file and restart with
    /// their first arguments (`--replicaof` r1 for r2 and r3), so this sets it right.
    pub fn after_restart(&self, n: usize, was_master: bool) -> Result<()> {
        let redis = self.node(n).redis();
        if was_master {
            if replication(redis)? != Replication::Master {
                redis.redis_cli(&["REPLICAOF", "NO", "ONE"])?;
            }
        } else {
            let master = self.node(self.master()?).ip().to_string();
            redis.redis_cli(&["REPLICAOF", &master, "6379"])?;
        }
        Ok(())
    }
}

/// Bytes of `path` so far (a log mark).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalived_config_has_the_defaults_and_no_preemption() {
        let c = keepalived_config(2, "rha-x-r2");
        assert!(c.contains("advert_int 1\n"));
        assert!(c.contains("priority 120\n"));
        assert!(c.contains("nopreempt\n"));
        assert!(c.contains("198.18.0.100/24 dev rha-x-r2"));
    }
}
