//! Talking to one Redis node: health probes (PING + `INFO replication`) and the commands a
//! failover sends. One persistent connection per node, as Sentinel keeps, re-opened after any
//! error so a restarted node is seen at once.

use std::{net::SocketAddrV4, time::Duration};

use redis::aio::MultiplexedConnection;
use tracing::warn;

use crate::{
    failover::{Command, NodeAddr, NodeInfo, ProbeResult, ReplicaInfo, Role},
    redis_conn::RedisAccess,
};

pub struct Prober {
    addr: SocketAddrV4,
    access: RedisAccess,
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
    pub fn new(addr: SocketAddrV4, access: RedisAccess, timeout: Duration) -> Self {
        Self {
            addr,
            access,
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
        let role = match parse_role(&text) {
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
                Command::ReplicaOf { master } => {
                    cmd.arg(master.ip().to_string()).arg(master.port())
                }
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

/// The fields of `INFO replication` the failover logic needs.
pub fn parse_role(text: &str) -> Result<Role, InfoError> {
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
            let host: std::net::Ipv4Addr = host
                .parse()
                .map_err(|_| bad("master_host", host, "not an IPv4 address"))?;
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
            Err(InfoError("master_host:nope is not an IPv4 address".into()))
        );
        assert!(parse_role("role:sentinel\n").is_err());
        assert!(parse_role("role:slave\nmaster_host:198.18.1.11\nmaster_port:65536\n").is_err());
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
