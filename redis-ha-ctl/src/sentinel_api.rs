//! The Sentinel-compatible API on the controller's `listen` port (TCP; the peer protocol uses
//! UDP on the same port number), so that `redis-cli -p 26379 SENTINEL ...`, Sentinel-aware
//! clients (redis-py's `Sentinel`, Jedis, go-redis, ...) and scripts keep working:
//!
//! - `PING`, `ECHO`, `QUIT`, `HELLO 2`, `CLIENT SETNAME|SETINFO|GETNAME|ID`, `COMMAND`,
//!   `INFO [server|sentinel]`, `ROLE`;
//! - `SENTINEL masters | master | replicas | slaves | sentinels | get-master-addr-by-name |
//!   failover | ckquorum | myid`, with Sentinel's field names and reply shapes;
//! - `SUBSCRIBE` / `PSUBSCRIBE` to the event channels, named after the events (`+switch-master`,
//!   `+sdown`, ...) with Sentinel's payloads;
//! - redis-ha's own `REDIS-HA STATUS | EVENTS | FAILOVER`, used by `redis-ha-ctl status`,
//!   `events` and `failover`, and the channel [`JSON_EVENTS_CHANNEL`].
//!
//! Everything is answered from the latest [`Status`] snapshot, which the executor republishes
//! after each step; only a failover request travels to the executor (as a [`ControlRequest`]).

use std::{
    collections::{BTreeSet, VecDeque},
    net::{SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, broadcast, mpsc, oneshot, watch},
};
use tracing::{debug, info, warn};

use crate::{
    config::ServiceConfig,
    failover::NodeAddr,
    resp::{self, Reply, Request},
    status::{EventRecord, FailoverPhase, NodeRole, NodeStatus, PeerStatus, ServiceStatus, Status},
};

/// Subscribers of this channel (exact `SUBSCRIBE` only; patterns do not match it, so that
/// Sentinel clients doing `PSUBSCRIBE *` see only Sentinel's channels) get every event as an
/// [`EventRecord`] in JSON: what `redis-ha-ctl events --follow` reads.
pub const JSON_EVENTS_CHANNEL: &str = "redis-ha:events";

/// Connections served at once; more are told so and closed (Redis's `maxclients`).
const MAX_CLIENTS: usize = 256;
/// Events kept for `REDIS-HA EVENTS`.
const RECENT_EVENTS: usize = 256;
/// A connection whose unparsed input grows past this without a complete request is closed.
const MAX_PENDING_INPUT: usize = 1024 * 1024;

/// The operator events: published by the executor, fanned out to subscribers, and the most
/// recent kept for `redis-ha-ctl events`.
pub struct EventHub {
    tx: broadcast::Sender<EventRecord>,
    recent: Mutex<VecDeque<EventRecord>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        Self {
            // A subscriber slower than this many events loses the oldest ones (and is told so
            // in the log) rather than slowing the executor down.
            tx: broadcast::channel(1024).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
        }
    }

    pub fn publish(&self, record: EventRecord) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(record);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }

    pub fn recent(&self) -> Vec<EventRecord> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }
}

/// A request only the executor can answer (it owns the machines).
#[derive(Debug)]
pub enum ControlRequest {
    /// `SENTINEL FAILOVER` / `REDIS-HA FAILOVER`: a forced failover, a planned switchover while
    /// the master answers.
    Failover {
        service: String,
        to: Option<NodeAddr>,
        /// Bound of the catch-up (and of the promotion) while writes are paused; the executor's
        /// default when `None`.
        timeout_ms: Option<u64>,
        /// Answer once it switched or aborted ([`SwitchoverReport`] as JSON), rather than as
        /// soon as it started (`OK`, as Sentinel answers).
        wait: bool,
        reply: oneshot::Sender<Result<String, ApiError>>,
    },
}

/// An error reply: `-<code> <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Redis's error code: `ERR`, or Sentinel's `INPROG`, `NOGOODSLAVE`, ...
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn reply(&self) -> Reply {
        Reply::Error(format!("{} {}", self.code, self.message))
    }
}

/// The answer to `REDIS-HA FAILOVER` once the switch happened.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SwitchoverReport {
    pub service: String,
    pub epoch: u64,
    pub from: String,
    pub to: String,
    /// How long writes were paused on the old master (`CLIENT PAUSE` to `CLIENT UNPAUSE`);
    /// `None` for a forced failover of a master that was down (nothing to pause).
    pub write_pause_ms: Option<f64>,
    /// From the request to the answer.
    pub total_ms: f64,
}

/// What the API serves from.
pub struct Api {
    /// The services as configured: Sentinel's static fields (failover timeout, parallel syncs).
    pub services: Vec<ServiceConfig>,
    /// Per service: a peer heard from within this many ms counts toward the quorum and the
    /// majority (its reports have not expired); what `SENTINEL CKQUORUM` counts.
    pub peer_validity_ms: Vec<u64>,
    /// The executor's latest snapshot.
    pub status: watch::Receiver<Status>,
    pub events: Arc<EventHub>,
    pub control: mpsc::Sender<ControlRequest>,
    /// Where we listen (`INFO`'s `tcp_port`).
    pub listen: SocketAddr,
    pub started: Instant,
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, api: Arc<Api>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!("accepting an API connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let api = api.clone();
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = Connection::new(id, &api).run(stream).await {
                debug!(%peer, "API connection ended: {e}");
            }
        });
    }
}

/// Whether to keep the connection after a reply.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// One client connection's state.
struct Connection<'a> {
    id: u64,
    api: &'a Api,
    name: Option<Vec<u8>>,
    channels: BTreeSet<String>,
    patterns: BTreeSet<String>,
    /// Set while subscribed to anything.
    events: Option<broadcast::Receiver<EventRecord>>,
}

impl<'a> Connection<'a> {
    fn new(id: u64, api: &'a Api) -> Self {
        Self {
            id,
            api,
            name: None,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            events: None,
        }
    }

    async fn run(mut self, mut stream: TcpStream) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut input: Vec<u8> = Vec::with_capacity(4096);
        let mut output: Vec<u8> = Vec::new();
        loop {
            // Answer every complete request buffered (clients may pipeline).
            loop {
                match resp::parse_request(&input) {
                    Ok(Some((request, used))) => {
                        input.drain(..used);
                        if request.is_empty() {
                            continue;
                        }
                        if self.handle(request, &mut output).await == Flow::Close {
                            stream.write_all(&output).await?;
                            return Ok(());
                        }
                    }
                    Ok(None) if input.len() > MAX_PENDING_INPUT => {
                        Reply::err("Protocol error: request too large").encode(&mut output);
                        stream.write_all(&output).await?;
                        return Ok(());
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Redis answers a protocol error and closes: resynchronising on a
                        // broken stream would misread what follows.
                        Reply::err(format!("Protocol error: {e}")).encode(&mut output);
                        stream.write_all(&output).await?;
                        return Ok(());
                    }
                }
            }
            if !output.is_empty() {
                stream.write_all(&output).await?;
                output.clear();
            }
            tokio::select! {
                read = stream.read_buf(&mut input) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
                event = next_event(&mut self.events) => match event {
                    Ok(record) => self.deliver(&record, &mut output),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(client = self.id, missed, "a slow subscriber missed events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    async fn handle(&mut self, request: Request, out: &mut Vec<u8>) -> Flow {
        let command = String::from_utf8_lossy(&request[0]).to_ascii_lowercase();
        let args: Vec<String> = request[1..]
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if self.events.is_some()
            && !matches!(
                command.as_str(),
                "subscribe"
                    | "psubscribe"
                    | "unsubscribe"
                    | "punsubscribe"
                    | "ping"
                    | "quit"
                    | "reset"
            )
        {
            Reply::err(format!(
                "Can't execute '{command}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context"
            ))
            .encode(out);
            return Flow::Continue;
        }
        let reply = match command.as_str() {
            "ping" if self.events.is_some() => Reply::Array(vec![
                Reply::bulk("pong"),
                Reply::Bulk(request.get(1).cloned().unwrap_or_default()),
            ]),
            "ping" => match request.get(1) {
                Some(message) => Reply::Bulk(message.clone()),
                None => Reply::Simple("PONG".into()),
            },
            "echo" => match request.get(1) {
                Some(message) if request.len() == 2 => Reply::Bulk(message.clone()),
                _ => wrong_arity("echo"),
            },
            "quit" => {
                Reply::ok().encode(out);
                return Flow::Close;
            }
            "reset" => {
                self.unsubscribe_all();
                self.name = None;
                Reply::Simple("RESET".into())
            }
            "hello" => self.hello(&args),
            "auth" => Reply::err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ),
            "client" => self.client(&request),
            "command" => Reply::Array(Vec::new()),
            "info" => Reply::bulk(info(self.api, args.first().map(String::as_str))),
            "role" => Reply::Array(vec![
                Reply::bulk("sentinel"),
                Reply::Array(
                    self.api
                        .services
                        .iter()
                        .map(|s| Reply::bulk(&s.name))
                        .collect(),
                ),
            ]),
            "sentinel" => self.sentinel(&args).await,
            "redis-ha" => self.redis_ha(&args).await,
            "subscribe" | "psubscribe" if args.is_empty() => wrong_arity(&command),
            "subscribe" => {
                self.subscribe(&args, false, out);
                return Flow::Continue;
            }
            "psubscribe" => {
                self.subscribe(&args, true, out);
                return Flow::Continue;
            }
            "unsubscribe" => {
                self.unsubscribe(&args, false, out);
                return Flow::Continue;
            }
            "punsubscribe" => {
                self.unsubscribe(&args, true, out);
                return Flow::Continue;
            }
            _ => {
                let shown: Vec<String> = args.iter().take(8).map(|a| format!("'{a}'")).collect();
                Reply::err(format!(
                    "unknown command '{}', with args beginning with: {}",
                    String::from_utf8_lossy(&request[0]),
                    shown.join(" ")
                ))
            }
        };
        reply.encode(out);
        Flow::Continue
    }

    /// `HELLO [2 [AUTH ..] [SETNAME ..]]`: RESP2 only (RESP3's push messages are not needed by
    /// any Sentinel client).
    fn hello(&mut self, args: &[String]) -> Reply {
        if let Some(version) = args.first()
            && version != "2"
        {
            return Reply::Error(
                "NOPROTO sorry, this protocol version is not supported".to_owned(),
            );
        }
        if let Some(i) = args.iter().position(|a| a.eq_ignore_ascii_case("setname"))
            && let Some(name) = args.get(i + 1)
        {
            self.name = Some(name.clone().into_bytes());
        }
        // Redis's HELLO map, flattened as RESP2 sends it.
        Reply::Array(vec![
            Reply::bulk("server"),
            Reply::bulk("redis"),
            Reply::bulk("version"),
            Reply::bulk(REDIS_VERSION),
            Reply::bulk("proto"),
            Reply::Integer(2),
            Reply::bulk("id"),
            Reply::Integer(self.id as i64),
            Reply::bulk("mode"),
            Reply::bulk("sentinel"),
            Reply::bulk("role"),
            Reply::bulk("sentinel"),
            Reply::bulk("modules"),
            Reply::Array(Vec::new()),
        ])
    }

    fn client(&mut self, request: &Request) -> Reply {
        let sub = request
            .get(1)
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        match (sub.as_deref(), request.len()) {
            (Some("setname"), 3) => {
                self.name = Some(request[2].clone());
                Reply::ok()
            }
            // Client libraries announce themselves (redis-py 5, the redis crate): accept.
            (Some("setinfo"), 4) => Reply::ok(),
            (Some("getname"), 2) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            (Some("id"), 2) => Reply::Integer(self.id as i64),
            (Some(sub), _) => Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{sub}'"
            )),
            (None, _) => wrong_arity("client"),
        }
    }

    async fn sentinel(&mut self, args: &[String]) -> Reply {
        let Some(sub) = args.first().map(|s| s.to_ascii_lowercase()) else {
            return wrong_arity("sentinel");
        };
        let status = self.api.status.borrow().clone();
        let named = |i: usize| -> Result<(&ServiceStatus, &ServiceConfig), Reply> {
            let name = args
                .get(i)
                .ok_or_else(|| wrong_arity(&format!("sentinel|{sub}")))?;
            lookup(&status, &self.api.services, name)
                .ok_or_else(|| Reply::err("No such master with that name"))
        };
        match sub.as_str() {
            "masters" => Reply::Array(
                status
                    .services
                    .iter()
                    .filter_map(|s| {
                        let cfg = self.api.services.iter().find(|c| c.name == s.name)?;
                        Some(master_fields(s, cfg))
                    })
                    .collect(),
            ),
            "master" => match named(1) {
                Ok((s, cfg)) => master_fields(s, cfg),
                Err(e) => e,
            },
            "replicas" | "slaves" => match named(1) {
                Ok((s, _)) => Reply::Array(
                    s.nodes
                        .iter()
                        .filter(|n| n.addr != s.master)
                        .map(|n| replica_fields(s, n))
                        .collect(),
                ),
                Err(e) => e,
            },
            "sentinels" => match named(1) {
                Ok((s, _)) => {
                    let validity = self.validity(&s.name);
                    Reply::Array(
                        s.peers
                            .iter()
                            .map(|p| sentinel_fields(s, p, validity))
                            .collect(),
                    )
                }
                Err(e) => e,
            },
            "get-master-addr-by-name" => {
                let Some(name) = args.get(1) else {
                    return wrong_arity("sentinel|get-master-addr-by-name");
                };
                match lookup(&status, &self.api.services, name).map(|(s, _)| s.master) {
                    Some(addr) => Reply::Array(vec![
                        Reply::bulk(addr.ip().to_string()),
                        Reply::bulk(addr.port().to_string()),
                    ]),
                    None => Reply::NullArray,
                }
            }
            "ckquorum" => match named(1) {
                Ok((s, _)) => ckquorum(s, self.validity(&s.name)),
                Err(e) => e,
            },
            "myid" => Reply::bulk(&status.controller),
            "failover" => {
                let Some(name) = args.get(1) else {
                    return wrong_arity("sentinel|failover");
                };
                if lookup(&status, &self.api.services, name).is_none() {
                    return Reply::err("No such master with that name");
                }
                match self.failover(name, None, None, false).await {
                    Ok(_) => Reply::ok(),
                    Err(e) => e.reply(),
                }
            }
            "is-master-down-by-addr"
            | "reset"
            | "monitor"
            | "remove"
            | "set"
            | "config"
            | "flushconfig"
            | "simulate-failure"
            | "debug"
            | "info-cache"
            | "pending-scripts" => Reply::err(format!(
                "SENTINEL {sub} is not supported by redis-ha: services, quorum and timings \
                     come from its config file, and controllers talk their own peer protocol"
            )),
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try SENTINEL HELP.",
                args[0]
            )),
        }
    }

    /// `REDIS-HA STATUS` (the snapshot as JSON), `REDIS-HA EVENTS` (recent events as JSON),
    /// `REDIS-HA FAILOVER <service> [TO <ip:port>] [TIMEOUT <ms>]` (waits for the outcome).
    async fn redis_ha(&mut self, args: &[String]) -> Reply {
        let sub = args.first().map(|s| s.to_ascii_lowercase());
        match sub.as_deref() {
            Some("status") => {
                let status = self.api.status.borrow().clone();
                match serde_json::to_string(&status) {
                    Ok(json) => Reply::bulk(json),
                    Err(e) => Reply::err(format!("encoding the status: {e}")),
                }
            }
            Some("events") => match serde_json::to_string(&self.api.events.recent()) {
                Ok(json) => Reply::bulk(json),
                Err(e) => Reply::err(format!("encoding the events: {e}")),
            },
            Some("failover") => {
                let Some(service) = args.get(1) else {
                    return wrong_arity("redis-ha|failover");
                };
                let mut to = None;
                let mut timeout = None;
                let mut rest = args[2..].iter();
                while let Some(option) = rest.next() {
                    let value = rest.next();
                    match (option.to_ascii_lowercase().as_str(), value) {
                        ("to", Some(v)) => match v.parse::<NodeAddr>() {
                            Ok(addr) => to = Some(addr),
                            Err(_) => return Reply::err(format!("{v:?} is not an ip:port")),
                        },
                        ("timeout", Some(v)) => match v.parse::<u64>() {
                            Ok(ms) if ms > 0 => timeout = Some(ms),
                            _ => return Reply::err(format!("{v:?} is not a timeout in ms")),
                        },
                        _ => {
                            return Reply::err(
                                "syntax error: expected TO <ip:port> or TIMEOUT <ms>",
                            );
                        }
                    }
                }
                match self.failover(service, to, timeout, true).await {
                    Ok(json) => Reply::bulk(json),
                    Err(e) => e.reply(),
                }
            }
            _ => Reply::err("unknown subcommand: try REDIS-HA STATUS | EVENTS | FAILOVER"),
        }
    }

    /// A service's peer validity (see [`Api::peer_validity_ms`]).
    fn validity(&self, service: &str) -> u64 {
        self.api
            .services
            .iter()
            .position(|c| c.name == service)
            .and_then(|i| self.api.peer_validity_ms.get(i).copied())
            .unwrap_or(0)
    }

    async fn failover(
        &self,
        service: &str,
        to: Option<NodeAddr>,
        timeout_ms: Option<u64>,
        wait: bool,
    ) -> Result<String, ApiError> {
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::Failover {
            service: service.to_owned(),
            to,
            timeout_ms,
            wait,
            reply,
        };
        self.api
            .control
            .send(request)
            .await
            .map_err(|_| ApiError::new("ERR", "the controller is shutting down"))?;
        info!(
            client = self.id,
            service,
            ?to,
            "failover requested through the API"
        );
        answer
            .await
            .map_err(|_| ApiError::new("ERR", "the controller dropped the request"))?
    }

    fn subscribe(&mut self, names: &[String], pattern: bool, out: &mut Vec<u8>) {
        if self.events.is_none() {
            self.events = Some(self.api.events.subscribe());
        }
        for name in names {
            if pattern {
                self.patterns.insert(name.clone());
            } else {
                self.channels.insert(name.clone());
            }
            let kind = if pattern { "psubscribe" } else { "subscribe" };
            Reply::Array(vec![
                Reply::bulk(kind),
                Reply::bulk(name),
                Reply::Integer(self.subscriptions()),
            ])
            .encode(out);
        }
    }

    fn unsubscribe(&mut self, names: &[String], pattern: bool, out: &mut Vec<u8>) {
        let kind = if pattern {
            "punsubscribe"
        } else {
            "unsubscribe"
        };
        let set = if pattern {
            &mut self.patterns
        } else {
            &mut self.channels
        };
        let names: Vec<String> = if names.is_empty() {
            std::mem::take(set).into_iter().collect()
        } else {
            names
                .iter()
                .inspect(|n| _ = set.remove(*n))
                .cloned()
                .collect()
        };
        if self.subscriptions() == 0 {
            self.events = None;
        }
        if names.is_empty() {
            Reply::Array(vec![Reply::bulk(kind), Reply::Null, Reply::Integer(0)]).encode(out);
        }
        for name in names {
            Reply::Array(vec![
                Reply::bulk(kind),
                Reply::bulk(name),
                Reply::Integer(self.subscriptions()),
            ])
            .encode(out);
        }
    }

    fn unsubscribe_all(&mut self) {
        self.channels.clear();
        self.patterns.clear();
        self.events = None;
    }

    fn subscriptions(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    /// Publishes one event to this subscriber, as Redis delivers a PUBLISH.
    fn deliver(&self, record: &EventRecord, out: &mut Vec<u8>) {
        if self.channels.contains(&record.name) {
            Reply::Array(vec![
                Reply::bulk("message"),
                Reply::bulk(&record.name),
                Reply::bulk(&record.payload),
            ])
            .encode(out);
        }
        for pattern in &self.patterns {
            if resp::glob_match(pattern.as_bytes(), record.name.as_bytes()) {
                Reply::Array(vec![
                    Reply::bulk("pmessage"),
                    Reply::bulk(pattern),
                    Reply::bulk(&record.name),
                    Reply::bulk(&record.payload),
                ])
                .encode(out);
            }
        }
        if self.channels.contains(JSON_EVENTS_CHANNEL)
            && let Ok(json) = serde_json::to_string(record)
        {
            Reply::Array(vec![
                Reply::bulk("message"),
                Reply::bulk(JSON_EVENTS_CHANNEL),
                Reply::bulk(json),
            ])
            .encode(out);
        }
    }
}

/// The next event for a subscribed connection; never resolves for one that is not.
async fn next_event(
    events: &mut Option<broadcast::Receiver<EventRecord>>,
) -> Result<EventRecord, broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What `INFO` and `HELLO` report as the server version. Sentinel clients gate features on it
/// (e.g. `SENTINEL replicas` exists from 5.0); we implement what Sentinel 7.0 answers.
const REDIS_VERSION: &str = "7.0.0";

fn wrong_arity(command: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{command}' command"))
}

fn lookup<'s>(
    status: &'s Status,
    services: &'s [ServiceConfig],
    name: &str,
) -> Option<(&'s ServiceStatus, &'s ServiceConfig)> {
    let s = status.services.iter().find(|s| s.name == name)?;
    let cfg = services.iter().find(|c| c.name == name)?;
    Some((s, cfg))
}

/// Sentinel's `ip` and `port` fields.
fn ip_port(addr: SocketAddrV4) -> (String, String) {
    (addr.ip().to_string(), addr.port().to_string())
}

fn node(s: &ServiceStatus, addr: SocketAddrV4) -> Option<&NodeStatus> {
    s.nodes.iter().find(|n| n.addr == addr)
}

/// Sentinel's flags for a node: `s_down` when we see it down, `disconnected` when it never
/// answered.
fn node_flags(base: &str, n: Option<&NodeStatus>) -> Vec<&'static str> {
    let mut flags = vec![match base {
        "master" => "master",
        _ => "slave",
    }];
    if n.is_some_and(|n| n.sdown) {
        flags.push("s_down");
    }
    if n.is_none_or(|n| n.last_ok_ms_ago.is_none()) {
        flags.push("disconnected");
    }
    flags
}

/// `SENTINEL MASTER`: Sentinel's field/value list (`addReplySentinelRedisInstance`).
fn master_fields(s: &ServiceStatus, cfg: &ServiceConfig) -> Reply {
    let (ip, port) = ip_port(s.master);
    let n = node(s, s.master);
    let mut flags = node_flags("master", n);
    if s.odown {
        flags.push("o_down");
    }
    if s.failover_phase != FailoverPhase::Idle {
        flags.push("failover_in_progress");
    }
    let since_ok = n.and_then(|n| n.last_ok_ms_ago).unwrap_or(0).to_string();
    Reply::fields([
        ("name", s.name.clone()),
        ("ip", ip),
        ("port", port),
        (
            "runid",
            n.and_then(|n| n.run_id.clone()).unwrap_or_default(),
        ),
        ("flags", flags.join(",")),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", since_ok.clone()),
        ("last-ping-reply", since_ok.clone()),
        ("down-after-milliseconds", s.down_after_ms.to_string()),
        ("info-refresh", since_ok),
        ("role-reported", "master".into()),
        ("role-reported-time", "0".into()),
        ("config-epoch", s.config_epoch.to_string()),
        (
            "num-slaves",
            s.nodes
                .iter()
                .filter(|n| n.addr != s.master)
                .count()
                .to_string(),
        ),
        ("num-other-sentinels", s.peers.len().to_string()),
        ("quorum", s.quorum.to_string()),
        (
            "failover-timeout",
            cfg.failover.failover_timeout_ms.to_string(),
        ),
        ("parallel-syncs", cfg.failover.parallel_syncs.to_string()),
    ])
}

/// `SENTINEL REPLICAS`: one entry per node that is not the master (a node that claims to be a
/// master is listed with `role-reported master`, as Sentinel lists it until it is converted).
fn replica_fields(s: &ServiceStatus, n: &NodeStatus) -> Reply {
    let (ip, port) = ip_port(n.addr);
    // Whom it follows not known yet: `?:0` and port 0, what these fields have always said.
    let (master_host, master_port) = n
        .master
        .map_or_else(|| ("?:0".to_owned(), "0".to_owned()), ip_port);
    let since_ok = n.last_ok_ms_ago.unwrap_or(0).to_string();
    let role = if n.role == NodeRole::Master {
        "master"
    } else {
        "slave"
    };
    Reply::fields([
        ("name", n.addr.to_string()),
        ("ip", ip),
        ("port", port),
        ("runid", n.run_id.clone().unwrap_or_default()),
        ("flags", node_flags("slave", Some(n)).join(",")),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", since_ok.clone()),
        ("last-ping-reply", since_ok.clone()),
        ("down-after-milliseconds", s.down_after_ms.to_string()),
        ("info-refresh", since_ok),
        ("role-reported", role.into()),
        ("role-reported-time", "0".into()),
        ("master-link-down-time", "0".into()),
        (
            "master-link-status",
            if n.link_up == Some(true) { "ok" } else { "err" }.into(),
        ),
        ("master-host", master_host),
        ("master-port", master_port),
        ("slave-priority", n.priority.unwrap_or(100).to_string()),
        ("slave-repl-offset", n.repl_offset.unwrap_or(0).to_string()),
        ("replica-announced", "1".into()),
    ])
}

/// `SENTINEL SENTINELS`: the other controllers.
/// Whether a peer was heard from recently enough to count (see [`Api::peer_validity_ms`]).
fn reachable(p: &PeerStatus, validity_ms: u64) -> bool {
    p.last_heard_ms_ago.is_some_and(|ms| ms <= validity_ms)
}

fn sentinel_fields(s: &ServiceStatus, p: &PeerStatus, validity_ms: u64) -> Reply {
    let (ip, port) = (p.addr.ip().to_string(), p.addr.port().to_string());
    let mut flags = vec!["sentinel"];
    if !reachable(p, validity_ms) {
        flags.push("s_down");
    }
    if p.last_heard_ms_ago.is_none() {
        flags.push("disconnected");
    }
    let heard = p.last_heard_ms_ago.unwrap_or(0).to_string();
    Reply::fields([
        ("name", p.id.clone()),
        ("ip", ip),
        ("port", port),
        ("runid", p.id.clone()),
        ("flags", flags.join(",")),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", heard.clone()),
        ("last-ping-reply", heard.clone()),
        ("down-after-milliseconds", s.down_after_ms.to_string()),
        ("last-hello-message", heard),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", "0".into()),
    ])
}

/// `SENTINEL CKQUORUM`: can this controller, with the peers it hears now, reach the quorum
/// (ODOWN) and a majority of all controllers (a failover's election)? Sentinel's texts.
fn ckquorum(s: &ServiceStatus, validity_ms: u64) -> Reply {
    let voters = s.peers.len() + 1;
    let usable = 1 + s.peers.iter().filter(|p| reachable(p, validity_ms)).count();
    let quorum_ok = usable >= s.quorum;
    let majority_ok = usable > voters / 2;
    if quorum_ok && majority_ok {
        return Reply::Simple(format!(
            "OK {usable} usable Sentinels. Quorum and failover authorization can be reached"
        ));
    }
    let mut message = format!("NOQUORUM {usable} usable Sentinels.");
    if !quorum_ok {
        message.push_str(
            " Not enough available Sentinels to reach the specified quorum for this master.",
        );
    }
    if !majority_ok {
        message.push_str(
            " Not enough available Sentinels to reach the majority and authorize a failover",
        );
    }
    Reply::Error(message)
}

/// `INFO [section]`: `# Server` and Sentinel's `# Sentinel` section.
fn info(api: &Api, section: Option<&str>) -> String {
    let section = section.map(str::to_ascii_lowercase);
    let want = |name: &str| {
        section
            .as_deref()
            .is_none_or(|s| matches!(s, "all" | "default" | "everything") || s == name)
    };
    let status = api.status.borrow().clone();
    let mut text = String::new();
    if want("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_ha_version:{}\r\n\
             redis_mode:sentinel\r\nprocess_id:{}\r\nrun_id:{}\r\ntcp_port:{}\r\n\
             uptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            status.controller,
            api.listen.port(),
            api.started.elapsed().as_secs(),
        ));
    }
    if want("sentinel") {
        text.push_str(&format!(
            "# Sentinel\r\nsentinel_masters:{}\r\nsentinel_tilt:0\r\n\
             sentinel_tilt_since_seconds:-1\r\nsentinel_running_scripts:0\r\n\
             sentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n",
            status.services.len()
        ));
        for (i, s) in status.services.iter().enumerate() {
            let master_down = node(s, s.master).is_some_and(|n| n.sdown);
            let state = if s.odown {
                "odown"
            } else if master_down {
                "sdown"
            } else {
                "ok"
            };
            text.push_str(&format!(
                "master{i}:name={},status={state},address={},slaves={},sentinels={}\r\n",
                s.name,
                s.master,
                s.nodes.iter().filter(|n| n.addr != s.master).count(),
                s.peers.len() + 1
            ));
        }
    }
    text
}

/// A snapshot for tests: a master, a healthy and a down replica, a heard and a silent peer, a
/// data plane with traffic.
#[cfg(test)]
pub(crate) mod testdata {
    use std::net::SocketAddrV4;

    use crate::status::{
        BackendTraffic, DataplaneStatus, FailoverPhase, NodeRole, NodeStatus, PeerStatus,
        ServiceStatus, Status,
    };

    fn addr(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    pub(crate) fn status() -> Status {
        let node = |at: &str, role: NodeRole| NodeStatus {
            addr: addr(at),
            role,
            last_ok_ms_ago: Some(20),
            ..NodeStatus::default()
        };
        let replica = |at: &str| NodeStatus {
            master: Some(addr("198.18.1.11:6379")),
            link_up: Some(true),
            priority: Some(100),
            repl_offset: Some(42),
            in_read_pool: true,
            ..node(at, NodeRole::Replica)
        };
        Status {
            controller: "c1".into(),
            listen: Some("127.0.0.1:26379".parse().unwrap()),
            at_unix_ms: 1,
            services: vec![ServiceStatus {
                name: "mymaster".into(),
                vip: "198.18.0.100".parse().unwrap(),
                write_port: 6380,
                read_port: 6381,
                master: addr("198.18.1.11:6379"),
                config_epoch: 3,
                current_epoch: 3,
                quorum: 2,
                down_after_ms: 1000,
                failover_phase: FailoverPhase::Idle,
                odown: false,
                nodes: vec![
                    NodeStatus {
                        run_id: Some("abc".into()),
                        ..node("198.18.1.11:6379", NodeRole::Master)
                    },
                    replica("198.18.1.12:6379"),
                    NodeStatus {
                        sdown: true,
                        ..replica("198.18.1.13:6379")
                    },
                ],
                read_pool: vec![addr("198.18.1.12:6379")],
                peers: vec![
                    PeerStatus {
                        id: "c2".into(),
                        addr: "127.0.0.2:26379".parse().unwrap(),
                        last_heard_ms_ago: Some(50),
                        agrees: true,
                        ..PeerStatus::default()
                    },
                    PeerStatus {
                        id: "c3".into(),
                        addr: "127.0.0.3:26379".parse().unwrap(),
                        ..PeerStatus::default()
                    },
                ],
                failovers: 0,
            }],
            dataplane: Some(DataplaneStatus {
                pin_dir: "/sys/fs/bpf/redis-ha".into(),
                interfaces: vec![("eth0".into(), "native".into())],
                backends: vec![BackendTraffic {
                    service: "mymaster".into(),
                    addr: addr("198.18.1.11:6379"),
                    slot: 1,
                    is_master: true,
                    packets_in: 10,
                    ..BackendTraffic::default()
                }],
                counters: [("fwd_to_backend".to_owned(), 15)].into_iter().collect(),
                flow_entries: 4,
                flows_spilled: false,
            }),
            ha: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testdata::status;
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
[controller]
id = "c1"
listen = "127.0.0.1:26379"
secret = "0123456789abcdef-test"
peers = [{ id = "c2", addr = "127.0.0.2:26379" }, { id = "c3", addr = "127.0.0.3:26379" }]

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]
"#;

    /// A server on an ephemeral port, and the receiving end of its control channel.
    async fn server(
        status: Status,
    ) -> (
        SocketAddr,
        Arc<EventHub>,
        watch::Sender<Status>,
        mpsc::Receiver<ControlRequest>,
    ) {
        let cfg = Config::parse(std::path::Path::new("test.toml"), CONFIG).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (status_tx, status_rx) = watch::channel(status);
        let (control_tx, control_rx) = mpsc::channel(8);
        let events = Arc::new(EventHub::new());
        let api = Arc::new(Api {
            services: cfg.services,
            peer_validity_ms: vec![1000],
            status: status_rx,
            events: events.clone(),
            control: control_tx,
            listen: addr,
            started: Instant::now(),
        });
        tokio::spawn(serve(listener, api));
        (addr, events, status_tx, control_rx)
    }

    async fn connect(addr: SocketAddr) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Raw request/response, to check the exact wire form.
    async fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out[..n]).into_owned()
    }

    fn pairs(v: Vec<String>) -> std::collections::BTreeMap<String, String> {
        v.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect()
    }

    #[tokio::test]
    async fn answers_sentinel_queries_as_sentinel_does() {
        let (addr, _, _, _) = server(status()).await;
        let mut c = connect(addr).await;
        let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
        assert_eq!(pong, "PONG");
        let master: (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(master, ("198.18.1.11".into(), "6379".into()));
        let none: Option<Vec<String>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("nope")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(none, None);

        let m: Vec<String> = redis::cmd("SENTINEL")
            .arg("master")
            .arg("mymaster")
            .query_async(&mut c)
            .await
            .unwrap();
        let m = pairs(m);
        assert_eq!(m["name"], "mymaster");
        assert_eq!(m["ip"], "198.18.1.11");
        assert_eq!(m["port"], "6379");
        assert_eq!(m["runid"], "abc");
        assert_eq!(m["flags"], "master");
        assert_eq!(m["num-slaves"], "2");
        assert_eq!(m["num-other-sentinels"], "2");
        assert_eq!(m["quorum"], "2");
        assert_eq!(m["config-epoch"], "3");
        assert_eq!(m["failover-timeout"], "180000");
        assert_eq!(m["parallel-syncs"], "1");
        assert_eq!(m["down-after-milliseconds"], "1000");

        let masters: Vec<Vec<String>> = redis::cmd("SENTINEL")
            .arg("masters")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(masters.len(), 1);

        for sub in ["replicas", "slaves"] {
            let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
                .arg(sub)
                .arg("mymaster")
                .query_async(&mut c)
                .await
                .unwrap();
            let replicas: Vec<_> = replicas.into_iter().map(pairs).collect();
            assert_eq!(replicas.len(), 2);
            assert_eq!(replicas[0]["name"], "198.18.1.12:6379");
            assert_eq!(replicas[0]["flags"], "slave");
            assert_eq!(replicas[0]["master-link-status"], "ok");
            assert_eq!(replicas[0]["master-host"], "198.18.1.11");
            assert_eq!(replicas[0]["slave-repl-offset"], "42");
            assert_eq!(replicas[1]["flags"], "slave,s_down");
        }
        let sentinels: Vec<Vec<String>> = redis::cmd("SENTINEL")
            .arg("sentinels")
            .arg("mymaster")
            .query_async(&mut c)
            .await
            .unwrap();
        let sentinels: Vec<_> = sentinels.into_iter().map(pairs).collect();
        assert_eq!(sentinels[0]["name"], "c2");
        assert_eq!(sentinels[0]["ip"], "127.0.0.2");
        assert_eq!(sentinels[0]["flags"], "sentinel");
        assert_eq!(sentinels[1]["flags"], "sentinel,s_down,disconnected");

        let myid: String = redis::cmd("SENTINEL")
            .arg("myid")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(myid, "c1");
        let role: (String, Vec<String>) = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
        assert_eq!(role, ("sentinel".into(), vec!["mymaster".into()]));
        let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
        assert!(info.contains("redis_mode:sentinel"), "{info}");
        assert!(
            info.contains(
                "master0:name=mymaster,status=ok,address=198.18.1.11:6379,slaves=2,sentinels=3"
            ),
            "{info}"
        );
        let err = redis::cmd("SENTINEL")
            .arg("master")
            .arg("nope")
            .query_async::<Vec<String>>(&mut c)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No such master"), "{err}");
    }

    #[tokio::test]
    async fn ckquorum_counts_the_peers_heard_recently() {
        let (addr, _, status_tx, _) = server(status()).await;
        assert_eq!(
            raw(addr, b"SENTINEL CKQUORUM mymaster\r\n").await,
            "+OK 2 usable Sentinels. Quorum and failover authorization can be reached\r\n"
        );
        let mut lonely = status();
        lonely.services[0].peers[0].last_heard_ms_ago = Some(60_000);
        status_tx.send(lonely).unwrap();
        let reply = raw(addr, b"SENTINEL CKQUORUM mymaster\r\n").await;
        assert!(
            reply.starts_with("-NOQUORUM 1 usable Sentinels."),
            "{reply}"
        );
        assert!(reply.contains("quorum"), "{reply}");
        assert!(reply.contains("majority"), "{reply}");
    }

    #[tokio::test]
    async fn unknown_commands_and_malformed_input_get_errors_and_the_server_lives_on() {
        let (addr, _, _, _) = server(status()).await;
        assert_eq!(
            raw(addr, b"*2\r\n$4\r\nFLUB\r\n$1\r\nx\r\n").await,
            "-ERR unknown command 'FLUB', with args beginning with: 'x'\r\n"
        );
        let reply = raw(addr, b"*1\r\n$999999999\r\n").await;
        assert!(reply.starts_with("-ERR Protocol error"), "{reply}");
        let reply = raw(addr, b"*1\r\n:5\r\n").await;
        assert!(reply.starts_with("-ERR Protocol error"), "{reply}");
        // Pipelined requests, inline syntax, and the connection still answers afterwards.
        assert_eq!(
            raw(addr, b"PING\r\nECHO hi\r\nSENTINEL nope\r\n").await,
            "+PONG\r\n$2\r\nhi\r\n-ERR unknown subcommand 'nope'. Try SENTINEL HELP.\r\n"
        );
        assert_eq!(raw(addr, b"PING\r\n").await, "+PONG\r\n");
    }

    #[tokio::test]
    async fn subscribers_get_events_on_their_channels_and_patterns() {
        let (addr, events, _, _) = server(status()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"SUBSCRIBE +switch-master redis-ha:events\r\nPSUBSCRIBE +s*\r\n")
            .await
            .unwrap();
        let expected_acks = "*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n\
                             *3\r\n$9\r\nsubscribe\r\n$15\r\nredis-ha:events\r\n:2\r\n\
                             *3\r\n$10\r\npsubscribe\r\n$3\r\n+s*\r\n:3\r\n";
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < expected_acks.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), expected_acks);

        let record = EventRecord {
            at_unix_ms: 5,
            service: "mymaster".into(),
            name: "+switch-master".into(),
            payload: "mymaster 198.18.1.11 6379 198.18.1.12 6379".into(),
        };
        let odown = EventRecord {
            name: "-odown".into(),
            payload: "master mymaster 198.18.1.11 6379".into(),
            ..record.clone()
        };
        events.publish(odown.clone());
        events.publish(record.clone());
        // Only the JSON channel carries -odown: no channel or pattern of ours matches it.
        let odown_json = serde_json::to_string(&odown).unwrap();
        let json = serde_json::to_string(&record).unwrap();
        let expected = format!(
            "*3\r\n$7\r\nmessage\r\n$15\r\nredis-ha:events\r\n${}\r\n{odown_json}\r\n\
             *3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$42\r\n{p}\r\n\
             *4\r\n$8\r\npmessage\r\n$3\r\n+s*\r\n$14\r\n+switch-master\r\n$42\r\n{p}\r\n\
             *3\r\n$7\r\nmessage\r\n$15\r\nredis-ha:events\r\n${}\r\n{json}\r\n",
            odown_json.len(),
            json.len(),
            p = record.payload
        );
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), expected);

        // In subscribe mode only the pub/sub commands run.
        s.write_all(b"SENTINEL masters\r\n").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("-ERR Can't execute 'sentinel'"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        assert_eq!(events.recent().len(), 2);
    }

    #[tokio::test]
    async fn failover_requests_reach_the_executor_and_its_answer_comes_back() {
        let (addr, _, _, mut control) = server(status()).await;
        tokio::spawn(async move {
            while let Some(ControlRequest::Failover {
                service,
                to,
                timeout_ms,
                wait,
                reply,
            }) = control.recv().await
            {
                let answer = if to == Some("198.18.1.13:6379".parse().unwrap()) {
                    Err(ApiError::new("NOGOODSLAVE", "198.18.1.13:6379 is down"))
                } else if wait {
                    Ok(format!("{service} {timeout_ms:?}"))
                } else {
                    Ok("started".into())
                };
                let _ = reply.send(answer);
            }
        });
        assert_eq!(
            raw(addr, b"SENTINEL FAILOVER mymaster\r\n").await,
            "+OK\r\n"
        );
        assert_eq!(
            raw(addr, b"SENTINEL FAILOVER other\r\n").await,
            "-ERR No such master with that name\r\n"
        );
        assert_eq!(
            raw(addr, b"REDIS-HA FAILOVER mymaster TIMEOUT 1500\r\n").await,
            "$19\r\nmymaster Some(1500)\r\n"
        );
        assert_eq!(
            raw(addr, b"REDIS-HA FAILOVER mymaster TO 198.18.1.13:6379\r\n").await,
            "-NOGOODSLAVE 198.18.1.13:6379 is down\r\n"
        );
        let reply = raw(addr, b"REDIS-HA FAILOVER mymaster TO nowhere\r\n").await;
        assert!(reply.starts_with("-ERR"), "{reply}");
    }

    #[tokio::test]
    async fn status_json_round_trips() {
        let (addr, _, _, _) = server(status()).await;
        let mut c = connect(addr).await;
        let json: String = redis::cmd("REDIS-HA")
            .arg("STATUS")
            .query_async(&mut c)
            .await
            .unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status());
    }
}
