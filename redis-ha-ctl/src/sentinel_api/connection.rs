//! One client connection: the loop that reads requests, answers every complete one (clients
//! pipeline) and forwards events while subscribed, and the per-connection state (id, name,
//! subscriptions) that the commands read and change.
//!
//! Each request is parsed into a [`Command`] first (`command`); [`Connection::apply`] then does
//! what it says and renders the reply. Replies built from the snapshot alone are in `sentinel`.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::{broadcast, oneshot},
    time::Instant,
};
use tracing::info;

use super::{
    Api, ApiError, ControlRequest, REDIS_VERSION,
    auth::{self, Need, User},
    command::{self, ClientCommand, Command, RedisHaCommand, SentinelCommand},
    limits::{Closed, Output},
    pubsub::Subscriptions,
    sentinel,
};
use crate::{
    failover::NodeAddr,
    resp::{Protocol, Reply, Request, RequestParser},
};

/// Unsent reply bytes past which a client's next requests wait to be read. Above any one
/// reply of a usual deployment (STATUS is a few KB), far below the output limit.
const BACKPRESSURE: usize = 64 * 1024;

/// How long the last replies of a closing connection may take to leave (`QUIT`'s `+OK`, a
/// protocol error): a client that does not read them must not hold its slot.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether to keep the connection after a reply.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// One client connection's state.
pub(super) struct Connection<'a> {
    /// `CLIENT ID`, and the client in the logs.
    id: u64,
    api: &'a Api,
    /// The client's address, in the logs.
    peer: SocketAddr,
    /// `CLIENT SETNAME` / `HELLO .. SETNAME`, for `CLIENT GETNAME`.
    name: Option<Vec<u8>>,
    /// Who the client authenticated as (`AUTH`, `HELLO .. AUTH`), if it did.
    user: Option<User>,
    subscriptions: Subscriptions,
    /// What the replies are encoded in: RESP2 until `HELLO 3`.
    proto: Protocol,
}

impl<'a> Connection<'a> {
    pub(super) fn new(id: u64, peer: SocketAddr, api: &'a Api) -> Self {
        Self {
            id,
            api,
            peer,
            name: None,
            user: None,
            subscriptions: Subscriptions::default(),
            proto: Protocol::Resp2,
        }
    }

    /// Serves the client until it leaves (`Ok(None)`), is closed for a limit it hit or a
    /// protocol error (`Ok(Some(why))`), or its socket fails. Reads, writes and events are
    /// waited for together, so a client that does not read its replies never stalls the loop:
    /// its unread output grows, and is bounded by the output buffer limits instead.
    /// `stream` is the accepted TCP connection or, on the TLS port, the TLS session over it.
    pub(super) async fn run(
        mut self,
        stream: impl AsyncRead + AsyncWrite + Unpin,
    ) -> std::io::Result<Option<Closed>> {
        let limits = &self.api.limits;
        let mut parser = RequestParser::new(limits.request());
        let mut out = Output::default();
        let mut last_active = Instant::now();
        let (mut rd, mut wr) = tokio::io::split(stream);
        loop {
            // Answer the complete requests buffered (clients pipeline), checking the output
            // limit after each. Past BACKPRESSURE unsent bytes the rest wait, and nothing more
            // is read, until the client takes its replies: a client that never reads then
            // costs its socket, not replies built ahead of it (STATUS is ~100x its request),
            // and it is closed as idle since it can neither read nor send.
            while out.pending() < BACKPRESSURE {
                let request = match parser.next_request() {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(e) => {
                        Reply::err(format!("Protocol error: {e}")).encode(self.proto, out.buf());
                        flush(&mut wr, &out).await;
                        return Ok(Some(Closed::Protocol(e)));
                    }
                };
                if request.is_empty() {
                    continue;
                }
                if self.handle(request, out.buf()).await == Flow::Close {
                    flush(&mut wr, &out).await;
                    return Ok(None);
                }
                let pubsub = self.subscriptions.is_active();
                if let Some(closed) = out.check(limits, pubsub, Instant::now()) {
                    return Ok(Some(closed));
                }
            }
            // Redis's `timeout` spares subscribers: they wait for events, legitimately silent.
            let idle_deadline = limits
                .idle_timeout()
                .filter(|_| !self.subscriptions.is_active())
                .map(|timeout| last_active + timeout);
            let soft_deadline = out.soft_deadline(limits);
            tokio::select! {
                read = rd.read_buf(parser.buffer()), if out.pending() < BACKPRESSURE => {
                    if read? == 0 {
                        flush(&mut wr, &out).await;
                        return Ok(None);
                    }
                    last_active = Instant::now();
                }
                written = wr.write(out.unsent()), if out.pending() > 0 => {
                    out.written(written?);
                    last_active = Instant::now();
                }
                event = self.subscriptions.next_event() => match event {
                    Ok(record) => {
                        self.subscriptions.deliver(&record, self.proto, out.buf());
                        if let Some(closed) = out.check(limits, true, Instant::now()) {
                            return Ok(Some(closed));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => self.api.limit_log.warn(
                        "lagged",
                        &self.id.to_string(),
                        &format!("a slow subscriber missed {missed} events"),
                    ),
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                },
                () = until(idle_deadline) => return Ok(Some(Closed::IdleTimeout)),
                () = until(soft_deadline) => {
                    let pubsub = self.subscriptions.is_active();
                    if let Some(closed) = out.check(limits, pubsub, Instant::now()) {
                        return Ok(Some(closed));
                    }
                }
            }
        }
    }

    /// Parses one request and applies it, its reply (or replies) appended to `out`.
    async fn handle(&mut self, request: Request, out: &mut Vec<u8>) -> Flow {
        let verb = command::verb(&request);
        // RESP3 tells pushes from replies, so Redis lets its subscribers run any command.
        if self.subscriptions.is_active()
            && self.proto == Protocol::Resp2
            && !command::allowed_while_subscribed(&verb)
        {
            Reply::err(format!(
                "Can't execute '{verb}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context"
            ))
            .encode(self.proto, out);
            return Flow::Continue;
        }
        // Parsed first, as Redis looks the command up and checks its arity before asking
        // for authentication: an unknown command is told so either way.
        let checked = Command::parse(&verb, &request).and_then(|command| {
            auth::check(&self.api.auth, self.user.as_ref(), &Need::of(&command))?;
            Ok(command)
        });
        match checked {
            Ok(command) => self.apply(command, out).await,
            Err(reply) => {
                reply.encode(self.proto, out);
                Flow::Continue
            }
        }
    }

    async fn apply(&mut self, command: Command, out: &mut Vec<u8>) -> Flow {
        let reply = match command {
            Command::Ping { message }
                if self.subscriptions.is_active() && self.proto == Protocol::Resp2 =>
            {
                Reply::Array(vec![
                    Reply::bulk("pong"),
                    Reply::Bulk(message.unwrap_or_default()),
                ])
            }
            Command::Ping {
                message: Some(message),
            } => Reply::Bulk(message),
            Command::Ping { message: None } => Reply::Simple("PONG".into()),
            Command::Echo { message } => Reply::Bulk(message),
            Command::Quit => {
                Reply::ok().encode(self.proto, out);
                return Flow::Close;
            }
            Command::Reset => {
                // Redis's RESET authenticates as the default user, which, with a password
                // configured, means not authenticated; it also goes back to RESP2.
                self.subscriptions.clear();
                self.proto = Protocol::Resp2;
                self.name = None;
                self.user = None;
                Reply::Simple("RESET".into())
            }
            Command::Hello {
                proto,
                auth,
                setname,
            } => {
                if let Some((user, password)) = auth
                    && let Err(refused) = self.authenticate(Some(&user), &password)
                {
                    refused
                } else if self.api.auth.required() && self.user.is_none() {
                    Reply::Error(
                        "NOAUTH HELLO must be called with the client already authenticated, \
                         otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                         authenticate the client and select the RESP protocol version at the \
                         same time"
                            .into(),
                    )
                } else {
                    if let Some(name) = setname {
                        self.name = Some(name.into_bytes());
                    }
                    // Switched only once it succeeded: a refused HELLO changes nothing.
                    if let Some(proto) = proto {
                        self.proto = proto;
                    }
                    self.hello()
                }
            }
            Command::Auth { user, password } => {
                match self.authenticate(user.as_deref(), &password) {
                    Ok(()) => Reply::ok(),
                    Err(refused) => refused,
                }
            }
            Command::Client(command) => self.client(command),
            Command::ListCommands => Reply::Array(Vec::new()),
            Command::Info { section } => Reply::bulk(sentinel::info(self.api, section.as_deref())),
            Command::Role => sentinel::role(self.api),
            Command::Sentinel(command) => self.sentinel(command).await,
            Command::RedisHa(command) => self.redis_ha(command).await,
            Command::Subscribe { names, pattern } => {
                let max = self.api.limits.client_max_subscriptions;
                let refused = self.subscriptions.subscribe(
                    &self.api.events,
                    &names,
                    pattern,
                    max,
                    self.proto,
                    out,
                );
                if refused > 0 {
                    self.api.metrics.api_subscriptions_refused(refused);
                    self.api.limit_log.warn(
                        "subscriptions",
                        &self.id.to_string(),
                        &format!(
                            "{refused} subscriptions refused past client_max_subscriptions = {max}"
                        ),
                    );
                }
                return Flow::Continue;
            }
            Command::Unsubscribe { names, pattern } => {
                self.subscriptions
                    .unsubscribe(&names, pattern, self.proto, out);
                return Flow::Continue;
            }
        };
        reply.encode(self.proto, out);
        Flow::Continue
    }

    /// `AUTH`: on success the connection is `user`'s; a failure leaves it as it was (Redis's
    /// rule), and is logged, since it is either a misconfigured client or someone guessing.
    fn authenticate(&mut self, user: Option<&str>, password: &[u8]) -> Result<(), Reply> {
        match auth::authenticate(&self.api.auth, user, password) {
            Ok(authenticated) => {
                self.user = Some(authenticated);
                Ok(())
            }
            Err(refused) => {
                // Rate-limited: someone guessing must not flood the journal.
                if self.api.auth.required() {
                    self.api.limit_log.warn(
                        "auth-failed",
                        &format!("{} ({})", self.id, self.peer),
                        &format!(
                            "authentication failed for user {}",
                            user.unwrap_or(crate::config::DEFAULT_USER)
                        ),
                    );
                }
                Err(refused)
            }
        }
    }

    /// Redis's `HELLO` map (flattened in RESP2), in the protocol just chosen.
    fn hello(&self) -> Reply {
        let field = |key: &str, value| (Reply::bulk(key), value);
        Reply::Map(vec![
            field("server", Reply::bulk("redis")),
            field("version", Reply::bulk(REDIS_VERSION)),
            field("proto", Reply::Integer(self.proto.version())),
            field("id", Reply::Integer(self.id as i64)),
            field("mode", Reply::bulk("sentinel")),
            field("role", Reply::bulk("sentinel")),
            field("modules", Reply::Array(Vec::new())),
        ])
    }

    fn client(&mut self, command: ClientCommand) -> Reply {
        match command {
            ClientCommand::SetName(name) => {
                self.name = Some(name);
                Reply::ok()
            }
            ClientCommand::SetInfo => Reply::ok(),
            ClientCommand::GetName => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            ClientCommand::Id => Reply::Integer(self.id as i64),
        }
    }

    async fn sentinel(&self, command: SentinelCommand) -> Reply {
        let status = self.api.status.borrow().clone();
        match command {
            SentinelCommand::Query(query) => sentinel::answer(self.api, &status, query),
            SentinelCommand::Failover { name } => {
                if sentinel::lookup(&status, &self.api.catalog().services, &name).is_none() {
                    return Reply::err("No such master with that name");
                }
                match self.failover(&name, None, None, false).await {
                    Ok(_) => Reply::ok(),
                    Err(e) => e.reply(),
                }
            }
            SentinelCommand::Help => command::sentinel_help(),
        }
    }

    async fn redis_ha(&self, command: RedisHaCommand) -> Reply {
        match command {
            RedisHaCommand::Status => {
                let status = self.api.status.borrow().clone();
                match serde_json::to_string(&status) {
                    Ok(json) => Reply::bulk(json),
                    Err(e) => Reply::err(format!("encoding the status: {e}")),
                }
            }
            RedisHaCommand::Events => match serde_json::to_string(&self.api.events.recent()) {
                Ok(json) => Reply::bulk(json),
                Err(e) => Reply::err(format!("encoding the events: {e}")),
            },
            RedisHaCommand::Failover {
                service,
                to,
                timeout_ms,
            } => match self.failover(&service, to, timeout_ms, true).await {
                Ok(json) => Reply::bulk(json),
                Err(e) => e.reply(),
            },
        }
    }

    /// Hands a failover to the executor and waits for its answer.
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
}

/// Sleeps until `deadline`; never wakes without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes what is left of `out` before the connection closes, for at most [`FLUSH_TIMEOUT`].
async fn flush(wr: &mut (impl AsyncWrite + Unpin), out: &Output) {
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, wr.write_all(out.unsent())).await;
}
