//! One client connection: the loop that reads requests, answers every complete one (clients
//! pipeline) and forwards events while subscribed, and the per-connection state (id, name,
//! subscriptions) that the commands read and change.
//!
//! Each request is parsed into a [`Command`] first (`command`); [`Connection::apply`] then does
//! what it says and renders the reply. Replies built from the snapshot alone are in `sentinel`.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{broadcast, oneshot},
};
use tracing::{info, warn};

use super::{
    Api, ApiError, ControlRequest, REDIS_VERSION,
    auth::{self, Need, User},
    command::{self, ClientCommand, Command, RedisHaCommand, SentinelCommand},
    pubsub::Subscriptions,
    sentinel,
};
use crate::{
    failover::NodeAddr,
    resp::{self, Reply, Request},
};

/// A connection whose unparsed input grows past this without a complete request is closed.
const MAX_PENDING_INPUT: usize = 1024 * 1024;

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
        }
    }

    pub(super) async fn run(mut self, mut stream: TcpStream) -> std::io::Result<()> {
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
                event = self.subscriptions.next_event() => match event {
                    Ok(record) => self.subscriptions.deliver(&record, &mut output),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(client = self.id, missed, "a slow subscriber missed events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    /// Parses one request and applies it, its reply (or replies) appended to `out`.
    async fn handle(&mut self, request: Request, out: &mut Vec<u8>) -> Flow {
        let verb = command::verb(&request);
        if self.subscriptions.is_active() && !command::allowed_while_subscribed(&verb) {
            Reply::err(format!(
                "Can't execute '{verb}': only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT / \
                 RESET are allowed in this context"
            ))
            .encode(out);
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
                reply.encode(out);
                Flow::Continue
            }
        }
    }

    async fn apply(&mut self, command: Command, out: &mut Vec<u8>) -> Flow {
        let reply = match command {
            Command::Ping { message } if self.subscriptions.is_active() => Reply::Array(vec![
                Reply::bulk("pong"),
                Reply::Bulk(message.unwrap_or_default()),
            ]),
            Command::Ping {
                message: Some(message),
            } => Reply::Bulk(message),
            Command::Ping { message: None } => Reply::Simple("PONG".into()),
            Command::Echo { message } => Reply::Bulk(message),
            Command::Quit => {
                Reply::ok().encode(out);
                return Flow::Close;
            }
            Command::Reset => {
                // Redis's RESET authenticates as the default user, which, with a password
                // configured, means not authenticated.
                self.subscriptions.clear();
                self.name = None;
                self.user = None;
                Reply::Simple("RESET".into())
            }
            Command::Hello { auth, setname } => {
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
                self.subscriptions
                    .subscribe(&self.api.events, &names, pattern, out);
                return Flow::Continue;
            }
            Command::Unsubscribe { names, pattern } => {
                self.subscriptions.unsubscribe(&names, pattern, out);
                return Flow::Continue;
            }
        };
        reply.encode(out);
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
                if self.api.auth.required() {
                    warn!(
                        client = self.id,
                        peer = %self.peer,
                        user = user.unwrap_or(crate::config::DEFAULT_USER),
                        "API authentication failed"
                    );
                }
                Err(refused)
            }
        }
    }

    /// Redis's `HELLO` map, flattened as RESP2 sends it.
    fn hello(&self) -> Reply {
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
                if sentinel::lookup(&status, &self.api.services, &name).is_none() {
                    return Reply::err("No such master with that name");
                }
                match self.failover(&name, None, None, false).await {
                    Ok(_) => Reply::ok(),
                    Err(e) => e.reply(),
                }
            }
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
