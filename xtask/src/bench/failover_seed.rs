//! The seed's stack for the failover trials of [`super::failover`]: a `redis-sentinel` in
//! every backend's namespace (as the seed runs one on every Redis host) and HAProxy in the LB
//! namespace, with the seed's settings; no XDP program anywhere.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::cluster::{Replication, replication};
use redis_ha_tests::testbed::{SERVICE_NAME, backend_ip};
use redis_ha_tests::{
    Backend, ChildGuard, Testbed, TestbedOptions, XdpMode, unique_tag, wait_until,
};

use super::failover::Stack;
use super::haproxy::{self, HaProxy};

pub const SENTINEL_PORT: u16 = 26379;

struct Seed {
    /// Declared first: the processes go before the namespaces they run in.
    proxy: HaProxy,
    _sentinels: Vec<ChildGuard>,
    tb: Testbed,
}

/// Debian 12's /etc/redis/sentinel.conf with the seed's three changes (monitor the master
/// with quorum 2, down-after 1000 ms, protected-mode no, which Debian already has), run in
/// the foreground with its log on stdout and its state in `dir`.
pub fn sentinel_config(dir: &Path, master: Ipv4Addr, down_after_ms: u64) -> String {
    format!(
        "protected-mode no
port {SENTINEL_PORT}
daemonize no
logfile \"\"
dir {dir}
sentinel monitor {SERVICE_NAME} {master} 6379 2
sentinel down-after-milliseconds {SERVICE_NAME} {down_after_ms}
acllog-max-len 128
sentinel parallel-syncs {SERVICE_NAME} 1
sentinel failover-timeout {SERVICE_NAME} 180000
sentinel deny-scripts-reconfig yes
SENTINEL resolve-hostnames no
SENTINEL announce-hostnames no
SENTINEL master-reboot-down-after-period {SERVICE_NAME} 0
",
        dir = dir.display()
    )
}

pub(super) fn seed(down_after_ms: u64) -> Result<Box<dyn Stack>> {
    let tb = Testbed::up(TestbedOptions {
        tag: unique_tag(),
        backends: 3,
        xdp_mode: XdpMode::Native,
        bridged_backends: false,
    })?;
    let dir = tb
        .config_path()
        .parent()
        .context("the testbed's config has no directory")?
        .to_path_buf();
    let mut sentinels = Vec::new();
    for b in tb.backends() {
        let sdir = dir.join(format!("sentinel{}", b.index()));
        std::fs::create_dir_all(&sdir)?;
        let conf = sdir.join("sentinel.conf");
        // Sentinel rewrites its config (myid, discovered peers): a private writable copy.
        std::fs::write(&conf, sentinel_config(&sdir, backend_ip(1), down_after_ms))?;
        let log = std::fs::File::create(sdir.join("sentinel.log"))?;
        let mut cmd = b.netns().command("redis-sentinel");
        cmd.arg(&conf)
            .current_dir(&sdir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        sentinels.push(ChildGuard::spawn(&mut cmd).context("starting redis-sentinel")?);
    }
    let servers: Vec<Ipv4Addr> = tb.backends().iter().map(|b| b.ip()).collect();
    let proxy = HaProxy::start(tb.lb(), &servers, &dir.join("haproxy"))?;
    let seed = Seed {
        proxy,
        _sentinels: sentinels,
        tb,
    };
    // Sentinels find each other through the master's hello channel (every 2 s).
    seed.wait_healthy(Duration::from_secs(60))?;
    Ok(Box::new(seed))
}

impl Seed {
    /// `redis-cli -p 26379 ARGS` against the sentinel of backend `n`, from its namespace.
    fn sentinel_cli(&self, n: usize, args: &[&str]) -> Result<String> {
        let b = self.tb.backend(n);
        b.netns()
            .redis_cli(SocketAddrV4::new(b.ip(), SENTINEL_PORT), args)
    }

    fn sentinel_master(&self, n: usize) -> Result<SocketAddrV4> {
        let out = self.sentinel_cli(n, &["SENTINEL", "get-master-addr-by-name", SERVICE_NAME])?;
        let mut lines = out.lines().map(str::trim);
        let (Some(ip), Some(port)) = (lines.next(), lines.next()) else {
            bail!("sentinel {n} answered {out:?}");
        };
        Ok(SocketAddrV4::new(ip.parse()?, port.parse()?))
    }

    /// `Ok(Err(what is wrong))` until the seed stack is whole.
    fn health(&self) -> Result<std::result::Result<SocketAddrV4, String>> {
        let master = self.sentinel_master(1)?;
        for n in 1..=self.tb.backends().len() {
            let m = self.sentinel_master(n)?;
            if m != master {
                return Ok(Err(format!("sentinel {n} names {m}, sentinel 1 {master}")));
            }
            let info = self.sentinel_cli(n, &["SENTINEL", "master", SERVICE_NAME])?;
            let field = |key: &str| {
                let mut lines = info.lines().map(str::trim);
                lines.find(|l| *l == key)?;
                lines.next().map(str::to_owned)
            };
            if field("num-other-sentinels").as_deref() != Some("2") {
                return Ok(Err(format!(
                    "sentinel {n} does not know the two others yet"
                )));
            }
            if field("flags").as_deref() != Some("master") {
                return Ok(Err(format!(
                    "sentinel {n} flags the master {:?}",
                    field("flags")
                )));
            }
        }
        let Some(master_backend) = self.tb.backend_at(master) else {
            return Ok(Err(format!("the sentinels name {master}")));
        };
        if replication(master_backend)? != Replication::Master {
            return Ok(Err(format!("{master} is not a master")));
        }
        for b in self.tb.backends().iter().filter(|b| b.addr() != master) {
            match replication(b) {
                Ok(Replication::Replica {
                    master: m,
                    link_up: true,
                }) if m == *master.ip() => {}
                other => return Ok(Err(format!("{} is {other:?}", b.addr()))),
            }
        }
        let up = self.proxy.write_servers_up()?;
        if up != [master] {
            return Ok(Err(format!("HAProxy's write servers UP: {up:?}")));
        }
        let reads_up = self
            .proxy
            .stats()?
            .iter()
            .filter(|s| s.backend == "redis_read" && s.up)
            .count();
        if reads_up != self.tb.backends().len() {
            return Ok(Err(format!("HAProxy has {reads_up} read servers UP")));
        }
        Ok(Ok(master))
    }
}

impl Stack for Seed {
    fn testbed(&self) -> &Testbed {
        &self.tb
    }

    fn write_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(haproxy::HAPROXY_VIP, haproxy::WRITE_PORT)
    }

    fn read_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(haproxy::HAPROXY_VIP, haproxy::READ_PORT)
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<SocketAddrV4> {
        wait_until(
            "Sentinel + HAProxy to be healthy",
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

    fn moved_from(&self, old: SocketAddrV4) -> Result<Option<SocketAddrV4>> {
        Ok(self
            .proxy
            .write_servers_up()?
            .into_iter()
            .find(|s| *s != old))
    }

    fn write_connections_to(&self, addr: SocketAddrV4) -> Result<u64> {
        Ok(self
            .proxy
            .stats()?
            .iter()
            .find(|s| s.backend == "redis_write" && s.addr == addr)
            .map(|s| s.sessions)
            .unwrap_or(0))
    }

    fn final_master(&self) -> Result<SocketAddrV4> {
        self.sentinel_master(1)
    }

    /// A killed master comes back as the seed's would: as a master. In the seed, Sentinel
    /// persists every REPLICAOF it sends with CONFIG REWRITE, so the redis.conf of a promoted
    /// replica no longer says `replicaof`; the testbed's servers have no config file and restart
    /// with their original `--replicaof 198.18.1.11`, which would leave a chained replica that
    /// Sentinel only fixes after failover-timeout (3 minutes). `REPLICAOF NO ONE` right after
    /// the restart restores what the seed's rewritten config would have done.
    fn after_restart(&self, backend: &Backend) -> Result<()> {
        if replication(backend)? != Replication::Master {
            backend.redis_cli(&["REPLICAOF", "NO", "ONE"])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_config_has_the_seed_settings() {
        let c = sentinel_config(Path::new("/tmp/s"), Ipv4Addr::new(198, 18, 1, 11), 1000);
        assert!(c.contains("sentinel monitor mymaster 198.18.1.11 6379 2\n"));
        assert!(c.contains("sentinel down-after-milliseconds mymaster 1000\n"));
        assert!(c.contains("protected-mode no\n"));
        assert!(c.contains("daemonize no\n"));
    }
}
