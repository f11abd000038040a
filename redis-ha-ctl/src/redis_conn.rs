//! Opening a connection to one of a service's Redis servers: the one place every probe and
//! command connection is made, in plain TCP or, for a service with `[service.tls]`, in TLS.
//!
//! For TLS the TCP connection and the handshake are made here and the stream handed to the
//! redis crate, rather than through its `rediss://` client: that client checks the name it
//! dialled (no `server_name` separate from the address) and adds the system's CAs to the one
//! configured.

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use redis::{
    AsyncConnectionConfig, ErrorKind, RedisError, RedisResult, aio::MultiplexedConnection,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{BackendSpec, RedisAuth, RedisTlsConfig, ServiceConfig};

/// How to reach and log in to a service's Redis servers; cheap to clone into tasks.
#[derive(Clone)]
pub struct RedisAccess {
    auth: Option<RedisAuth>,
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    connector: TlsConnector,
    config: RedisTlsConfig,
    /// The backends the config gives by host name: the name their certificates are checked
    /// against when `server_name` is not set.
    hosts: BTreeMap<SocketAddrV4, String>,
}

impl RedisAccess {
    /// The service's credentials and, with `[service.tls]`, its TLS files read into a client
    /// config once, shared by every connection made from this value.
    pub fn of(svc: &ServiceConfig) -> Result<Self, String> {
        let tls = match &svc.tls {
            None => None,
            Some(config) => Some(Tls {
                connector: TlsConnector::from(config.client_config()?),
                config: config.clone(),
                hosts: svc
                    .backend_specs
                    .iter()
                    .zip(&svc.backends)
                    .filter_map(|(spec, addr)| match spec {
                        BackendSpec::Host { name, .. } => Some((*addr, name.clone())),
                        BackendSpec::Addr(_) => None,
                    })
                    .collect(),
            }),
        };
        Ok(Self {
            auth: svc.failover.auth.clone(),
            tls,
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A connection to `addr`, logged in, each step bounded by `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddrV4,
        timeout: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        let info = redis::RedisConnectionInfo {
            db: 0,
            username: self.auth.as_ref().and_then(|a| a.username.clone()),
            password: self.auth.as_ref().map(|a| a.password.clone()),
            ..Default::default()
        };
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let Some(tls) = &self.tls else {
            let client = redis::Client::open(redis::ConnectionInfo {
                addr: redis::ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()),
                redis: info,
            })?;
            return client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await;
        };
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RedisError::from((ErrorKind::IoError, "connect timed out")))??;
        // As the redis crate sets on its own connections: commands are small and awaited.
        tcp.set_nodelay(true)?;
        let name = tls
            .config
            .server_name(*addr.ip(), tls.hosts.get(&addr).map(String::as_str));
        let stream = tokio::time::timeout(timeout, tls.connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| RedisError::from((ErrorKind::IoError, "TLS handshake timed out")))?
            .map_err(|e| {
                RedisError::from((
                    ErrorKind::IoError,
                    "TLS handshake failed",
                    format!(
                        "{e} (server name {:?}, CA {})",
                        name.to_str(),
                        tls.config.ca_file.display()
                    ),
                ))
            })?;
        let (conn, driver) = MultiplexedConnection::new_with_config(&info, stream, cfg).await?;
        // The driver ends when the last handle to the connection is dropped.
        tokio::spawn(driver);
        Ok(conn)
    }
}
