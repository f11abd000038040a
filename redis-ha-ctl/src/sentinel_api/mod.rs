//! The Sentinel-compatible API on the controller's `listen` port (TCP; the peer protocol uses
//! UDP on the same port number), so that `redis-cli -p 26379 SENTINEL ...`, Sentinel-aware
//! clients (redis-py's `Sentinel`, Jedis, go-redis, ...) and scripts keep working:
//!
//! - `PING`, `ECHO`, `QUIT`, `HELLO [2|3] [AUTH ..] [SETNAME ..]` (RESP2 or RESP3),
//!   `AUTH [user] password`,
//!   `CLIENT SETNAME|SETINFO|GETNAME|ID`, `COMMAND`, `INFO [server|sentinel]`, `ROLE`;
//! - `SENTINEL masters | master | replicas | slaves | sentinels | get-master-addr-by-name |
//!   failover | ckquorum | myid | help`, with Sentinel's field names and reply shapes;
//! - `SUBSCRIBE` / `PSUBSCRIBE` to the event channels, named after the events (`+switch-master`,
//!   `+sdown`, ...) with Sentinel's payloads;
//! - redis-ha's own `REDIS-HA STATUS | EVENTS | FAILOVER`, used by `redis-ha-ctl status`,
//!   `events` and `failover`, and the channel [`JSON_EVENTS_CHANNEL`].
//!
//! Everything is answered from the latest [`Status`] snapshot, which the executor republishes
//! after each step; only a failover request travels to the executor (as a [`ControlRequest`]).
//!
//! A request goes through the files of this module in the order mini-redis's `cmd` takes it:
//! - this file: the listener ([`serve`]) and what the API serves from ([`Api`]);
//! - `auth`: who may run what once a password is configured (`-NOAUTH`, `-NOPERM`);
//! - `connection`: one client's loop (read, answer every complete request, write) and its
//!   state (name, subscriptions); it applies each parsed command;
//! - `command`: a request's words parsed into a typed `Command`, so that arity and
//!   syntax errors are settled before anything runs;
//! - `sentinel`: the replies built from the snapshot (`SENTINEL ...`, `INFO`), with Sentinel's
//!   field names and flags;
//! - `pubsub`: a connection's subscriptions and how an event is delivered to them;
//! - `limits`: what one client may take (unread replies, idle time, keepalive), and the
//!   rate-limited logs of the limits hit;
//! - `error_reply`: how the daemon's [`ApiError`] answers a RESP client. What the executor
//!   and the API exchange ([`EventHub`], [`ControlRequest`], [`ApiError`]) is the daemon's, in
//!   [`crate::daemon::control`].

mod auth;
mod command;
mod connection;
mod error_reply;
mod limits;
mod pubsub;
mod sentinel;
#[cfg(test)]
pub(crate) mod testdata;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_auth;
#[cfg(test)]
mod tests_resp3;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, watch},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::{
    config::{ApiAuthConfig, ApiLimits, ServiceConfig},
    daemon::control::{ApiError, ControlRequest, EventHub},
    metrics::Metrics,
    status::Status,
};
use connection::Connection;
use limits::LimitLog;

/// Subscribers of this channel (exact `SUBSCRIBE` only; patterns do not match it, so that
/// Sentinel clients doing `PSUBSCRIBE *` see only Sentinel's channels) get every event as an
/// [`EventRecord`](crate::status::EventRecord) in JSON: what `redis-ha-ctl events --follow`
/// reads.
pub const JSON_EVENTS_CHANNEL: &str = "redis-ha:events";

/// What `INFO` and `HELLO` report as the server version. Sentinel clients gate features on it
/// (e.g. `SENTINEL replicas` exists from 5.0); we implement what Sentinel 7.0 answers.
const REDIS_VERSION: &str = "7.0.0";

/// The services the API answers for: replaced as a whole when a reload adds, removes or
/// retunes one, so a request sees either the old list or the new one.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The services as configured: Sentinel's static fields (failover timeout, parallel syncs).
    pub services: Vec<ServiceConfig>,
    /// Per service: a peer heard from within this many ms counts toward the quorum and the
    /// majority (its reports have not expired); what `SENTINEL CKQUORUM` counts.
    pub peer_validity_ms: Vec<u64>,
}

impl Catalog {
    /// A service's peer validity (see [`Catalog::peer_validity_ms`]).
    fn validity(&self, service: &str) -> u64 {
        self.services
            .iter()
            .position(|c| c.name == service)
            .and_then(|i| self.peer_validity_ms.get(i).copied())
            .unwrap_or(0)
    }
}

/// What the API serves from.
pub struct Api {
    /// The services, as the executor last set them (at the start and at each reload).
    pub catalog: watch::Receiver<std::sync::Arc<Catalog>>,
    /// The executor's latest snapshot.
    pub status: watch::Receiver<Status>,
    pub events: Arc<EventHub>,
    pub control: mpsc::Sender<ControlRequest>,
    /// Where we listen (`INFO`'s `tcp_port`).
    pub listen: SocketAddr,
    /// Who may run what (`requirepass`, `[[controller.users]]`).
    pub auth: ApiAuthConfig,
    pub started: Instant,
    /// What one client may take (`[controller]`'s `maxclients`, `client_*`, `tcp_keepalive_s`).
    pub limits: ApiLimits,
    /// Where the limits hit and the connected clients are counted.
    pub metrics: Arc<Metrics>,
    /// The limits hit, logged at most once per period and reason.
    pub limit_log: LimitLog,
}

impl Api {
    /// The services now (cheap: the list is shared, not copied).
    fn catalog(&self) -> std::sync::Arc<Catalog> {
        self.catalog.borrow().clone()
    }
}

/// How long a client on the TLS port may take to complete its handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, api: Arc<Api>) {
    serve_with(listener, api, None).await;
}

/// [`serve`] in TLS (`[controller.tls]`): each connection completes a handshake first. A
/// client that fails it (plain TCP, an unknown certificate) is closed and logged, rate-limited
/// like the other refusals.
pub async fn serve_tls(listener: TcpListener, api: Arc<Api>, tls: TlsAcceptor) {
    serve_with(listener, api, Some(tls)).await;
}

async fn serve_with(listener: TcpListener, api: Arc<Api>, tls: Option<TlsAcceptor>) {
    let maxclients = limits::fit_maxclients(api.limits.maxclients);
    let slots = Arc::new(Semaphore::new(
        usize::try_from(maxclients).unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!("accepting an API connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Never waits: a fresh socket's send buffer takes these few bytes, and a client
            // that cannot be told is closed all the same.
            let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
            api.metrics.api_client_closed("maxclients");
            api.limit_log.warn(
                "maxclients",
                &peer.to_string(),
                &format!("refused: {maxclients} clients (maxclients) are connected"),
            );
            continue;
        };
        let api = api.clone();
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            api.metrics.api_clients_changed(1);
            let _ = stream.set_nodelay(true);
            if let Some(idle) = api.limits.keepalive() {
                let _ = limits::set_keepalive(&stream, idle);
            }
            let served = match tls {
                None => Connection::new(id, peer, &api).run(stream).await,
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => Connection::new(id, peer, &api).run(stream).await,
                        failed => {
                            let why = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => "timed out".to_owned(),
                            };
                            api.metrics.api_client_closed("tls-handshake");
                            api.limit_log.warn(
                                "tls-handshake",
                                &format!("{id} ({peer})"),
                                &format!("closed: TLS handshake failed: {why}"),
                            );
                            Ok(None)
                        }
                    }
                }
            };
            match served {
                Ok(None) => {}
                Ok(Some(closed)) => {
                    api.metrics.api_client_closed(closed.reason());
                    api.limit_log.warn(
                        closed.reason(),
                        &format!("{id} ({peer})"),
                        &format!("closed: {}", closed.describe(&api.limits)),
                    );
                }
                Err(e) => debug!(%peer, "API connection ended: {e}"),
            }
            api.metrics.api_clients_changed(-1);
        });
    }
}
