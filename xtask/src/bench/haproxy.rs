//! HAProxy from Debian's package, configured as the Sentinel + HAProxy stack we replace configures it,
//! started and stopped by the bench inside the LB namespace.
//!
//! The config is Debian 12's stock `/etc/haproxy/haproxy.cfg` (global and defaults) followed by
//! the seed's `30-backend.cfg` and `40-backend.cfg` verbatim, with only these changes, each
//! needed to run it inside a testbed rather than as a system service:
//! - server addresses are the testbed's backends (the seed's `redisN.internal`);
//! - the frontends bind `198.18.0.101` (the seed binds `*`): the redis-ha VIP 198.18.0.100
//!   lives in the same namespace, and both must coexist;
//! - `daemon`, `chroot`, `user`/`group` go (the bench runs it in the foreground as its child,
//!   so that /proc/<pid>/stat is HAProxy's own CPU time), the stats socket and the log target
//!   move into the bench's temporary directory; the log target is a datagram socket the
//!   bench drains, so HAProxy pays for `option tcplog`/`logasap` as it would with syslog.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use redis_ha_tests::testbed::REDIS_PORT;
use redis_ha_tests::{ChildGuard, Netns, wait_until};

/// Where HAProxy listens: a second VIP on the LB's `lo`, next to redis-ha's 198.18.0.100.
pub const HAPROXY_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
pub const WRITE_PORT: u16 = 6380;
pub const READ_PORT: u16 = 6381;

/// The seed's HAProxy config for backends `servers` (redis1, redis2, ...), files under `dir`,
/// its frontends bound to `bind` (`*` as in the seed, or an address).
pub fn config(servers: &[Ipv4Addr], bind: &str, dir: &Path) -> String {
    let servers_block = servers
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "    server redis{n} {ip}:{REDIS_PORT} check inter 1s fall 1 rise 1\n",
                n = i + 1
            )
        })
        .collect::<String>();
    let log = dir.join("log.sock");
    let stats = dir.join("admin.sock");
    format!(
        "\
# Debian 12 haproxy.cfg (global, defaults) + the seed's 30-backend.cfg and 40-backend.cfg.
# Changed for the testbed: bind address, log and stats socket paths; no daemon/chroot/user.
global
	log {log} local0
	log {log} local1 notice
	stats socket {stats} mode 660 level admin
	stats timeout 30s
	ca-base /etc/ssl/certs
	crt-base /etc/ssl/private
	ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384
	ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
	ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets

defaults
	log	global
	mode	http
	option	httplog
	option	dontlognull
	timeout connect 5000
	timeout client  50000
	timeout server  50000

backend redis_read
    mode tcp
    option tcp-check
    tcp-check connect
    tcp-check send PING\\r\\n
    tcp-check expect string +PONG
    tcp-check send QUIT\\r\\n
    tcp-check expect string +OK

{servers_block}
backend redis_write
    mode tcp
    option tcp-check
    tcp-check connect
    tcp-check send PING\\r\\n
    tcp-check expect string +PONG
    tcp-check send info\\ replication\\r\\n
    tcp-check expect string role:master
    tcp-check send QUIT\\r\\n
    tcp-check expect string +OK

{servers_block}
frontend redis-write
    bind {bind}:{WRITE_PORT}
    mode tcp

    option  tcpka
    option  tcplog
    option  logasap

    default_backend redis_write

frontend redis-read
    bind {bind}:{READ_PORT}
    mode tcp

    option  tcpka
    option  tcplog
    option  logasap

    default_backend redis_read
",
        log = log.display(),
        stats = stats.display(),
    )
}

/// Receives (and discards) HAProxy's log datagrams, as syslog would.
struct LogSink {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl LogSink {
    fn start(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let socket =
            UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        // The loop checks `stop` at least every 200 ms, so dropping the sink ends it promptly.
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.recv(&mut buf);
                }
            })
        };
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A running HAProxy; killed when dropped (ChildGuard), its VIP removed.
pub struct HaProxy {
    /// Declared first: HAProxy dies before its log sink stops reading.
    child: ChildGuard,
    _log: LogSink,
    stats_socket: PathBuf,
    lb: String,
    /// Whether [`HAPROXY_VIP`] was added for it (removed again on drop).
    owns_vip: bool,
}

/// One server line of `show stat`.
#[derive(Clone, Debug)]
pub struct ServerStat {
    pub backend: String,
    pub addr: SocketAddrV4,
    pub up: bool,
    /// Sessions (connections) sent to the server so far.
    pub sessions: u64,
}

impl HaProxy {
    /// Adds [`HAPROXY_VIP`] to the LB's `lo`, writes the config into `dir`, starts HAProxy in
    /// the LB namespace and waits (bounded) until its health checks have sorted the servers:
    /// exactly one UP in the write backend (a master), all UP in the read backend.
    ///
    /// The wait matters: HAProxy 2.6 starts every server UP and only marks it DOWN after its
    /// first failed check, so for up to a second after a start the write frontend also sends
    /// connections to replicas (a seed-stack behaviour of its own: writes fail with READONLY
    /// after every HAProxy restart).
    pub fn start(lb: &Netns, servers: &[Ipv4Addr], dir: &Path) -> Result<HaProxy> {
        let have_vip = lb.ip(&["-4", "addr", "show", "dev", "lo"])?;
        if !have_vip.contains(&format!("{HAPROXY_VIP}/32")) {
            lb.ip(&["addr", "add", &format!("{HAPROXY_VIP}/32"), "dev", "lo"])?;
        }
        let mut proxy = Self::start_bound(lb, servers, &HAPROXY_VIP.to_string(), dir)?;
        proxy.owns_vip = true;
        Ok(proxy)
    }

    /// HAProxy with the seed's config bound to `bind` (`*` on the seed's machines, where the
    /// VIP comes and goes with keepalived and a wildcard listener takes it whenever it is
    /// there), in namespace `ns`; waits as [`Self::start`] does.
    pub fn start_bound(
        ns: &Netns,
        servers: &[Ipv4Addr],
        bind: &str,
        dir: &Path,
    ) -> Result<HaProxy> {
        let lb = ns;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cfg_path = dir.join("haproxy.cfg");
        std::fs::write(&cfg_path, config(servers, bind, dir))
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        let log = LogSink::start(&dir.join("log.sock"))?;
        let out = std::fs::File::create(dir.join("haproxy.out"))?;
        let mut cmd = lb.command("haproxy");
        // -db: foreground, no master-worker fork, so the child's pid is HAProxy's own.
        cmd.args(["-db", "-f"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = ChildGuard::spawn(&mut cmd).context("starting haproxy")?;
        let mut proxy = HaProxy {
            child,
            _log: log,
            stats_socket: dir.join("admin.sock"),
            lb: lb.name().to_owned(),
            owns_vip: false,
        };
        let out_path = dir.join("haproxy.out");
        wait_until(
            "HAProxy's health checks to leave one master UP in redis_write",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                if let Some(status) = proxy.child.try_wait()? {
                    bail!(
                        "haproxy exited ({status}): {}",
                        std::fs::read_to_string(&out_path).unwrap_or_default()
                    );
                }
                let stats = proxy.stats()?;
                let up = |backend: &str| {
                    stats
                        .iter()
                        .filter(|s| s.backend == backend && s.up)
                        .count()
                };
                Ok((up("redis_write") == 1 && up("redis_read") == servers.len()).then_some(()))
            },
        )?;
        Ok(proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stats socket's `show stat`, server lines only.
    pub fn stats(&self) -> Result<Vec<ServerStat>> {
        let csv = self.command("show stat")?;
        let mut lines = csv.lines();
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .context("`show stat` printed no header")?;
        let cols: Vec<&str> = header.split(',').collect();
        let col = |name: &str| {
            cols.iter()
                .position(|c| *c == name)
                .with_context(|| format!("`show stat` has no column {name}"))
        };
        let (px, addr, status, stot) = (col("pxname")?, col("addr")?, col("status")?, col("stot")?);
        let mut servers = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            // Frontend and BACKEND lines have no address.
            let Some(Ok(addr)) = f.get(addr).filter(|a| !a.is_empty()).map(|a| a.parse()) else {
                continue;
            };
            servers.push(ServerStat {
                backend: f.get(px).copied().unwrap_or_default().to_owned(),
                addr,
                up: f.get(status).is_some_and(|s| s.starts_with("UP")),
                sessions: f.get(stot).and_then(|v| v.parse().ok()).unwrap_or(0),
            });
        }
        Ok(servers)
    }

    /// The servers of the write backend that HAProxy currently considers UP.
    pub fn write_servers_up(&self) -> Result<Vec<SocketAddrV4>> {
        Ok(self
            .stats()?
            .into_iter()
            .filter(|s| s.backend == "redis_write" && s.up)
            .map(|s| s.addr)
            .collect())
    }

    fn command(&self, command: &str) -> Result<String> {
        let mut s = UnixStream::connect(&self.stats_socket)
            .with_context(|| format!("connecting to {}", self.stats_socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        if !self.owns_vip {
            return;
        }
        let _ = redis_ha_tests::netns_command(&self.lb, "ip")
            .args(["addr", "del", &format!("{HAPROXY_VIP}/32"), "dev", "lo"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_the_seed_settings() {
        let ips = [Ipv4Addr::new(198, 18, 1, 11), Ipv4Addr::new(198, 18, 1, 12)];
        let cfg = config(&ips, "198.18.0.101", Path::new("/tmp/x"));
        assert_eq!(
            cfg.matches("server redis1 198.18.1.11:6379 check inter 1s fall 1 rise 1")
                .count(),
            2
        );
        assert!(cfg.contains("tcp-check expect string role:master"));
        assert!(cfg.contains("tcp-check send info\\ replication\\r\\n"));
        assert_eq!(cfg.matches("option  tcpka").count(), 2);
        assert!(cfg.contains("bind 198.18.0.101:6380"));
        assert!(cfg.contains("bind 198.18.0.101:6381"));
    }
}
