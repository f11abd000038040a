//! Talking to one Redis node: health probes (PING + `INFO replication`) and the commands a
//! failover sends. One persistent connection per node, as Sentinel keeps, re-opened after any
//! error so a restarted node is seen at once.

use std::{net::SocketAddrV4, time::Duration};

use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};

use crate::{
    config::RedisAuth,
    failover::{Command, NodeAddr, NodeInfo, ProbeResult, ReplicaInfo, Role},
};

pub struct Prober {
    addr: SocketAddrV4,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    timeout: Duration,
    /// `run_id` fetched when the connection was opened (it only changes with a restart, which
    /// drops the connection).
    run_id: Option<String>,
}

impl Prober {
    pub fn new(
        addr: SocketAddrV4,
        auth: Option<&RedisAuth>,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()),
            redis: redis::RedisConnectionInfo {
                db: 0,
                username: auth.and_then(|a| a.username.clone()),
                password: auth.map(|a| a.password.clone()),
                ..Default::default()
            },
        };
        Ok(Self {
            addr,
            client: redis::Client::open(info)?,
            conn: None,
            timeout,
            run_id: None,
        })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    async fn conn(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
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
        let role = parse_role(&text).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::ParseError, "unparsable INFO replication"))
        })?;
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

/// The fields of `INFO replication` the failover logic needs.
pub fn parse_role(text: &str) -> Option<Role> {
    let num = |key: &str| info_field(text, key).and_then(|v| v.parse::<u64>().ok());
    match info_field(text, "role")? {
        "master" => Some(Role::Master {
            repl_offset: num("master_repl_offset").unwrap_or(0),
        }),
        "slave" => {
            let host: std::net::Ipv4Addr = info_field(text, "master_host")?.parse().ok()?;
            let port: u16 = info_field(text, "master_port")?.parse().ok()?;
            let link_up = info_field(text, "master_link_status") == Some("up");
            // Redis reports -1 for "never"; treat unknown as very stale.
            let secs = |key: &str| {
                info_field(text, key)
                    .and_then(|v| v.parse::<i64>().ok())
                    .map_or(u64::MAX / 2, |s| {
                        if s < 0 { u64::MAX / 2 } else { s as u64 * 1000 }
                    })
            };
            Some(Role::Replica(ReplicaInfo {
                master: NodeAddr::new(host, port),
                link_up,
                link_down_ms: if link_up {
                    0
                } else {
                    secs("master_link_down_since_seconds")
                },
                lag_ms: if link_up {
                    secs("master_last_io_seconds_ago")
                } else {
                    u64::MAX / 2
                },
                repl_offset: num("slave_repl_offset").unwrap_or(0),
                priority: info_field(text, "slave_priority")
                    .or_else(|| info_field(text, "replica_priority"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100),
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_master() {
        let t = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nmaster_repl_offset:4242\r\n";
        assert_eq!(parse_role(t), Some(Role::Master { repl_offset: 4242 }));
    }

    #[test]
    fn parses_a_replica() {
        let t = "# Replication\r\nrole:slave\r\nmaster_host:198.18.1.11\r\nmaster_port:6379\r\n\
                 master_link_status:up\r\nmaster_last_io_seconds_ago:1\r\n\
                 master_sync_in_progress:0\r\nslave_read_repl_offset:99\r\nslave_repl_offset:98\r\n\
                 slave_priority:50\r\nslave_read_only:1\r\n";
        assert_eq!(
            parse_role(t),
            Some(Role::Replica(ReplicaInfo {
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
        let Some(Role::Replica(r)) = parse_role(t) else {
            panic!("not a replica")
        };
        assert!(!r.link_up);
        assert_eq!(r.link_down_ms, 7000);
        assert!(r.lag_ms > 1_000_000);
    }

    #[test]
    fn garbage_is_not_a_role() {
        assert_eq!(parse_role("hello"), None);
        assert_eq!(
            parse_role("role:slave\nmaster_host:nope\nmaster_port:1\n"),
            None
        );
    }
}
