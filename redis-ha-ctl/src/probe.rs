//! Talking to one Redis node: health probes (PING + `INFO replication`) and the commands a
//! failover sends. One persistent connection per node, as Sentinel keeps, re-opened after any
//! error so a restarted node is seen at once.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use redis::aio::MultiplexedConnection;
use tracing::warn;

use crate::{
    config::{BackendSpec, ServiceConfig},
    failover::{Command, NodeAddr, NodeInfo, ProbeResult, ReplicaInfo, Role},
    redis_conn::RedisAccess,
};

/// A service's backend names, for the nodes that speak of each other by name: a replica's
/// `master_host` may be a name (it was told `REPLICAOF <name>`), and with
/// `announce_hostnames` the commands tell replicas the master's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    /// Every backend given by name, lower case, and its address.
    by_name: BTreeMap<String, Ipv4Addr>,
    /// With `announce_hostnames`: the name to give a node by, for `REPLICAOF`.
    announce: BTreeMap<SocketAddrV4, String>,
}

impl Hosts {
    pub fn of(svc: &ServiceConfig) -> Arc<Self> {
        let mut hosts = Self::default();
        for (spec, addr) in svc.backend_specs.iter().zip(&svc.backends) {
            if let BackendSpec::Host { name, .. } = spec {
                hosts.by_name.insert(name.clone(), *addr.ip());
                if svc.announce_hostnames {
                    hosts.announce.insert(*addr, name.clone());
                }
            }
        }
        Arc::new(hosts)
    }

    /// A configured backend name's address (names are case-insensitive, as in DNS).
    pub fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.by_name.get(&name.to_ascii_lowercase()).copied()
    }

    /// The host `REPLICAOF` names `master` by.
    pub fn replicaof_host(&self, master: SocketAddrV4) -> String {
        self.announce
            .get(&master)
            .cloned()
            .unwrap_or_else(|| master.ip().to_string())
    }
}

pub struct Prober {
    addr: SocketAddrV4,
    access: RedisAccess,
    hosts: Arc<Hosts>,
    conn: Option<MultiplexedConnection>,
    timeout: Duration,
    /// `run_id` fetched when the connection was opened (it only changes with a restart, which
    /// drops the connection).
    run_id: Option<String>,
    /// The last unusable `INFO replication` logged, so a node that keeps sending one is logged
    /// once.
    invalid_info: Option<InfoError>,
    /// The last failure to open a connection logged, so a node that keeps refusing the same
    /// way (a TLS handshake with the wrong CA) is logged once, not at every probe.
    connect_error: Option<String>,
}

impl Prober {
    pub fn new(
        addr: SocketAddrV4,
        access: RedisAccess,
        timeout: Duration,
        hosts: Arc<Hosts>,
    ) -> Self {
        Self {
            addr,
            access,
            hosts,
            conn: None,
            timeout,
            run_id: None,
            invalid_info: None,
            connect_error: None,
        }
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    async fn conn(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let mut c = match self.access.connect(self.addr, self.timeout).await {
            Ok(c) => {
                self.connect_error = None;
                c
            }
            Err(e) => {
                // A refused or unreachable node is what probes are for (the failover machine
                // counts it); a TLS failure is a setup problem the operator must see.
                let text = e.to_string();
                if self.access.is_tls() && self.connect_error.as_ref() != Some(&text) {
                    warn!(node = %self.addr, "{text}: probe failed");
                    self.connect_error = Some(text);
                }
                return Err(e);
            }
        };
        let server: String = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
        self.run_id = info_field(&server, "run_id").map(str::to_owned);
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// PING + `INFO replication`; any error or timeout is a failed probe (and drops the
    /// connection so the next probe reconnects).
    pub async fn probe(&mut self) -> ProbeResult {
        let result = tokio::time::timeout(self.timeout, self.try_probe()).await;
        match result {
            Ok(Ok(info)) => ProbeResult::Ok(info),
            _ => {
                self.conn = None;
                ProbeResult::Failed
            }
        }
    }

    async fn try_probe(&mut self) -> redis::RedisResult<NodeInfo> {
        let mut c = self.conn().await?;
        // Sentinel counts LOADING and MASTERDOWN as valid replies: the node is alive.
        match redis::cmd("PING").query_async::<String>(&mut c).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some("LOADING") | Some("MASTERDOWN")) => {}
            Err(e) => return Err(e),
        }
        let text: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await?;
        let looked_up = self.look_up_master_host(&text).await;
        let role = match parse_role_with(&text, |name| self.hosts.lookup(name).or(looked_up)) {
            Ok(role) => {
                self.invalid_info = None;
                role
            }
            Err(e) => {
                // Once per distinct problem, not per probe: the probe failures are counted.
                if self.invalid_info.as_ref() != Some(&e) {
                    warn!(node = %self.addr, "{e}: probe failed");
                    self.invalid_info = Some(e.clone());
                }
                return Err(redis::RedisError::from((
                    redis::ErrorKind::ParseError,
                    "unusable INFO replication",
                    e.to_string(),
                )));
            }
        };
        Ok(NodeInfo {
            run_id: self.run_id.clone(),
            role,
        })
    }

    /// A `master_host` that is a name but not a configured backend's (another alias of the
    /// node, or a name redis.conf's `replicaof` gave), looked up as redis-server itself did.
    async fn look_up_master_host(&self, text: &str) -> Option<Ipv4Addr> {
        let host = info_field(text, "master_host")?;
        if host.parse::<Ipv4Addr>().is_ok() || self.hosts.lookup(host).is_some() {
            return None;
        }
        let addrs = tokio::net::lookup_host((host, 0)).await.ok()?;
        crate::config::first_ipv4(addrs)
    }

    /// One command, bounded by the probe timeout, on this node's connection (opened if
    /// needed); any error drops the connection. Used by the planned switchover (`CLIENT PAUSE`,
    /// `INFO replication`, `CLIENT UNPAUSE`).
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let result = match tokio::time::timeout(self.timeout, async {
            let mut c = self.conn().await?;
            cmd.query_async::<T>(&mut c).await
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "timed out",
            ))),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Sends a failover command the way Sentinel does: the role change, then a best-effort
    /// `CONFIG REWRITE` (so a restart keeps the new role) and, on a demotion, killing normal
    /// clients so connections that still reach the old master close instead of writing to it.
    pub async fn command(&mut self, command: &Command) -> bool {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            let mut c = self.conn().await?;
            let mut cmd = redis::cmd("REPLICAOF");
            match command {
                Command::PromoteReplica => cmd.arg("NO").arg("ONE"),
                Command::ReplicaOf { master } => cmd
                    .arg(self.hosts.replicaof_host(*master))
                    .arg(master.port()),
            };
            cmd.query_async::<()>(&mut c).await?;
            let _ = redis::cmd("CONFIG")
                .arg("REWRITE")
                .query_async::<()>(&mut c)
                .await;
            if matches!(command, Command::ReplicaOf { .. }) {
                let _ = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .query_async::<()>(&mut c)
                    .await;
            }
            Ok::<_, redis::RedisError>(())
        })
        .await;
        let ok = matches!(result, Ok(Ok(())));
        if !ok {
            self.conn = None;
        }
        ok
    }
}

fn info_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// An `INFO replication` the failover logic cannot use: a field missing, unparsable, or
/// impossible (an offset or a time Redis could never report). A node sending one fails its
/// probe: taking the value as given would let a wrapped lag make a stale replica look fresh.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("INFO replication: {0}")]
pub struct InfoError(String);

/// Largest replication offset or time in seconds Redis can report: it keeps them in signed
/// 64-bit integers.
const MAX_INFO_NUMBER: u64 = i64::MAX as u64;

/// The fields of `INFO replication` the failover logic needs, from a node whose
/// `master_host` is an address.
pub fn parse_role(text: &str) -> Result<Role, InfoError> {
    parse_role_with(text, |_| None)
}

/// [`parse_role`], with a `master_host` that is a name given its address by `resolve`.
pub fn parse_role_with(
    text: &str,
    resolve: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Result<Role, InfoError> {
    let bad = |key: &str, value: &str, why: &str| InfoError(format!("{key}:{value} is {why}"));
    // A field that is absent takes its default (older servers lack some); one that is present
    // must be a number Redis could send.
    let offset = |key: &str| -> Result<u64, InfoError> {
        info_field(text, key).map_or(Ok(0), |v| {
            v.parse::<u64>()
                .ok()
                .filter(|&n| n <= MAX_INFO_NUMBER)
                .ok_or_else(|| bad(key, v, "not a replication offset"))
        })
    };
    match info_field(text, "role") {
        Some("master") => Ok(Role::Master {
            repl_offset: offset("master_repl_offset")?,
        }),
        Some("slave") => {
            let field =
                |key: &str| info_field(text, key).ok_or_else(|| InfoError(format!("no {key}")));
            let host = field("master_host")?;
            let host: Ipv4Addr = match host.parse() {
                Ok(ip) => ip,
                Err(_) => resolve(host).ok_or_else(|| {
                    bad(
                        "master_host",
                        host,
                        "neither an IPv4 address nor a name that resolves to one",
                    )
                })?,
            };
            let port = field("master_port")?;
            let port: u16 = port
                .parse()
                .map_err(|_| bad("master_port", port, "not a port"))?;
            let link_up = info_field(text, "master_link_status") == Some("up");
            // Seconds to milliseconds, checked: Redis reports -1 for "never", which is very
            // stale, as is a field left out; a number whose milliseconds overflow is no time
            // Redis could report.
            let ms = |key: &str| -> Result<u64, InfoError> {
                let Some(v) = info_field(text, key) else {
                    return Ok(u64::MAX / 2);
                };
                let secs: i64 = v.parse().map_err(|_| bad(key, v, "not a number"))?;
                if secs < 0 {
                    return Ok(u64::MAX / 2);
                }
                (secs as u64)
                    .checked_mul(1000)
                    .filter(|&ms| ms <= u64::MAX / 2)
                    .ok_or_else(|| bad(key, v, "too large to be a time in seconds"))
            };
            Ok(Role::Replica(ReplicaInfo {
                master: NodeAddr::new(host, port),
                link_up,
                link_down_ms: if link_up {
                    0
                } else {
                    ms("master_link_down_since_seconds")?
                },
                lag_ms: if link_up {
                    ms("master_last_io_seconds_ago")?
                } else {
                    u64::MAX / 2
                },
                repl_offset: offset("slave_repl_offset")?,
                priority: match info_field(text, "slave_priority")
                    .or_else(|| info_field(text, "replica_priority"))
                {
                    None => 100,
                    Some(v) => v
                        .parse()
                        .map_err(|_| bad("slave_priority", v, "not a priority"))?,
                },
            }))
        }
        Some(other) => Err(bad("role", other, "not a role")),
        None => Err(InfoError("no role".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_master() {
        let t = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nmaster_repl_offset:4242\r\n";
        assert_eq!(parse_role(t), Ok(Role::Master { repl_offset: 4242 }));
    }

    #[test]
    fn parses_a_replica() {
        let t = "# Replication\r\nrole:slave\r\nmaster_host:198.18.1.11\r\nmaster_port:6379\r\n\
                 master_link_status:up\r\nmaster_last_io_seconds_ago:1\r\n\
                 master_sync_in_progress:0\r\nslave_read_repl_offset:99\r\nslave_repl_offset:98\r\n\
                 slave_priority:50\r\nslave_read_only:1\r\n";
        assert_eq!(
            parse_role(t),
            Ok(Role::Replica(ReplicaInfo {
                master: "198.18.1.11:6379".parse().unwrap(),
                link_up: true,
                link_down_ms: 0,
                lag_ms: 1000,
                repl_offset: 98,
                priority: 50,
            }))
        );
    }

    #[test]
    fn a_replica_with_its_link_down_is_stale() {
        let t = "role:slave\nmaster_host:198.18.1.11\nmaster_port:6379\nmaster_link_status:down\n\
                 master_last_io_seconds_ago:-1\nmaster_link_down_since_seconds:7\nslave_repl_offset:1\n";
        let Ok(Role::Replica(r)) = parse_role(t) else {
            panic!("not a replica")
        };
        assert!(!r.link_up);
        assert_eq!(r.link_down_ms, 7000);
        assert!(r.lag_ms > 1_000_000);
    }

    #[test]
    fn garbage_is_not_a_role() {
        assert_eq!(parse_role("hello"), Err(InfoError("no role".into())));
        assert_eq!(
            parse_role("role:slave\nmaster_host:nope\nmaster_port:1\n"),
            Err(InfoError(
                "master_host:nope is neither an IPv4 address nor a name that resolves to one"
                    .into()
            ))
        );
        assert!(parse_role("role:sentinel\n").is_err());
        assert!(parse_role("role:slave\nmaster_host:198.18.1.11\nmaster_port:65536\n").is_err());
    }

    /// A replica told `REPLICAOF redis1.internal 6379` reports the name; it is understood
    /// as the address the name has, not a failed probe.
    #[test]
    fn a_master_host_given_by_name_is_resolved() {
        let t = "role:slave\r\nmaster_host:Redis1.internal\r\nmaster_port:6379\r\n\
                 master_link_status:up\r\nmaster_last_io_seconds_ago:0\r\nslave_repl_offset:7\r\n";
        let mut svc = crate::config::Config::parse_resolving(
            std::path::Path::new("t.toml"),
            "[[service]]\nname = \"m\"\nvip = \"198.18.0.100\"\nwrite_port = 6380\n\
             read_port = 6381\nresolve_hostnames = true\nannounce_hostnames = true\n\
             backends = [\"redis1.internal:6379\", \"198.18.1.12:6379\"]\n",
            &crate::config::FixedHosts(&[("redis1.internal", "198.18.1.11")]),
        )
        .unwrap()
        .services
        .remove(0);
        let hosts = Hosts::of(&svc);
        let Ok(Role::Replica(r)) = parse_role_with(t, |n| hosts.lookup(n)) else {
            panic!("not a replica")
        };
        assert_eq!(r.master, "198.18.1.11:6379".parse().unwrap());
        assert_eq!(r.repl_offset, 7);
        // Unknown to the table and to the resolver: the probe fails, naming the field.
        let err = parse_role_with(&t.replace("Redis1", "redis9"), |n| hosts.lookup(n));
        assert!(
            matches!(&err, Err(InfoError(m)) if m.starts_with("master_host:redis9.internal is neither")),
            "{err:?}"
        );
        // REPLICAOF names the master by name only with announce_hostnames.
        let master: SocketAddrV4 = "198.18.1.11:6379".parse().unwrap();
        assert_eq!(hosts.replicaof_host(master), "redis1.internal");
        svc.announce_hostnames = false;
        assert_eq!(Hosts::of(&svc).replicaof_host(master), "198.18.1.11");
    }

    const REPLICA: &str = "role:slave\nmaster_host:198.18.1.11\nmaster_port:6379\n\
                           master_link_status:up\n";

    /// A hostile (or broken) server's numbers: each is refused, naming the field, and none
    /// wraps into a fresh-looking replica.
    #[test]
    fn impossible_numbers_fail_the_probe_instead_of_wrapping() {
        let cases = [
            // 18446744073709552 s is 384 ms after wrapping the milliseconds around 2^64.
            (
                "master_last_io_seconds_ago:18446744073709552\n",
                "master_last_io_seconds_ago",
            ),
            (
                "master_last_io_seconds_ago:9223372036854775807\n",
                "master_last_io_seconds_ago",
            ),
            (
                "master_last_io_seconds_ago:99999999999999999999\n",
                "master_last_io_seconds_ago",
            ),
            (
                "master_last_io_seconds_ago:1e3\n",
                "master_last_io_seconds_ago",
            ),
            (
                "slave_repl_offset:18446744073709551615\n",
                "slave_repl_offset",
            ),
            (
                "slave_repl_offset:9223372036854775808\n",
                "slave_repl_offset",
            ),
            ("slave_repl_offset:-5\n", "slave_repl_offset"),
            ("slave_priority:-1\n", "slave_priority"),
        ];
        for (line, key) in cases {
            let text = format!("{REPLICA}{line}");
            match parse_role(&text) {
                Err(InfoError(message)) => assert!(message.starts_with(key), "{message}"),
                Ok(role) => panic!("{line:?} accepted as {role:?}"),
            }
        }
        let down = "role:slave\nmaster_host:198.18.1.11\nmaster_port:6379\n\
                    master_link_status:down\nmaster_link_down_since_seconds:18446744073709552\n";
        assert!(parse_role(down).is_err());
        assert!(parse_role("role:master\nmaster_repl_offset:18446744073709551615\n").is_err());
        // The largest values Redis can send are taken as they are: very stale, far ahead.
        let text = format!(
            "{REPLICA}master_last_io_seconds_ago:4611686018427387\nslave_repl_offset:9223372036854775807\n"
        );
        let Ok(Role::Replica(r)) = parse_role(&text) else {
            panic!("not a replica")
        };
        assert_eq!(r.lag_ms, 4_611_686_018_427_387_000);
        assert_eq!(r.repl_offset, i64::MAX as u64);
    }
}
