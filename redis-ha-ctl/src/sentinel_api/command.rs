//! A request's words parsed into a typed [`Command`], as mini-redis's `cmd` module does it: the
//! verb picks the variant, the arguments are checked and typed here, and a request that does
//! not parse gets its error reply here, before anything runs. What a command does is the
//! connection's business (`connection`); the client's strings stop at this file.

use crate::{
    config::check_switchover_timeout,
    failover::NodeAddr,
    resp::{Protocol, Reply, Request},
};

/// One request, parsed.
#[derive(Debug, PartialEq)]
pub(super) enum Command {
    /// `PING [message]`.
    Ping {
        message: Option<Vec<u8>>,
    },
    /// `ECHO message`.
    Echo {
        message: Vec<u8>,
    },
    /// `QUIT`: answer, then close.
    Quit,
    /// `RESET`: leave subscribe mode and forget the client's name.
    Reset,
    /// `HELLO [2|3 [AUTH user password] [SETNAME name]]`: no version keeps the connection's
    /// protocol; another version does not parse (`NOPROTO`).
    Hello {
        proto: Option<Protocol>,
        auth: Option<(String, Vec<u8>)>,
        setname: Option<String>,
    },
    /// `AUTH [user] password`; no user is Redis's default user (`requirepass`).
    Auth {
        user: Option<String>,
        password: Vec<u8>,
    },
    Client(ClientCommand),
    /// `COMMAND ...`: an empty command table.
    ListCommands,
    /// `INFO [section]`.
    Info {
        section: Option<String>,
    },
    /// `ROLE`.
    Role,
    Sentinel(SentinelCommand),
    RedisHa(RedisHaCommand),
    /// `SUBSCRIBE` (channels) or `PSUBSCRIBE` (`pattern`), at least one name.
    Subscribe {
        names: Vec<String>,
        pattern: bool,
    },
    /// `UNSUBSCRIBE` or `PUNSUBSCRIBE` (`pattern`); no names: all of them.
    Unsubscribe {
        names: Vec<String>,
        pattern: bool,
    },
}

/// `CLIENT <subcommand>`.
#[derive(Debug, PartialEq)]
pub(super) enum ClientCommand {
    SetName(Vec<u8>),
    /// Client libraries announce themselves (redis-py 5, the redis crate): accepted, unused.
    SetInfo,
    GetName,
    Id,
}

/// `SENTINEL <subcommand>`.
#[derive(Debug, PartialEq)]
pub(super) enum SentinelCommand {
    /// Answered from the snapshot alone.
    Query(SentinelQuery),
    /// `SENTINEL FAILOVER <name>`: only the executor can do it.
    Failover { name: String },
    /// `SENTINEL HELP`.
    Help,
}

/// The `SENTINEL` subcommands that only read the snapshot.
#[derive(Debug, PartialEq)]
pub(super) enum SentinelQuery {
    Masters,
    Master {
        name: String,
    },
    /// `REPLICAS` or its old name `SLAVES`.
    Replicas {
        name: String,
    },
    Sentinels {
        name: String,
    },
    GetMasterAddrByName {
        name: String,
    },
    CkQuorum {
        name: String,
    },
    MyId,
}

/// `REDIS-HA <subcommand>`: redis-ha's own, for `redis-ha-ctl`.
#[derive(Debug, PartialEq)]
pub(super) enum RedisHaCommand {
    /// The snapshot as JSON.
    Status,
    /// The recent events as JSON.
    Events,
    /// `FAILOVER <service> [TO <ip:port>] [TIMEOUT <ms>]`, answered with the outcome.
    Failover {
        service: String,
        to: Option<NodeAddr>,
        timeout_ms: Option<u64>,
    },
}

/// A request's verb, lowercased: what selects the command, what the subscribe-mode check
/// looks at and what error messages name.
pub(super) fn verb(request: &Request) -> String {
    String::from_utf8_lossy(&request[0]).to_ascii_lowercase()
}

/// Whether `verb` may run on a subscribed connection (Redis's RESP2 rule). Checked on the verb
/// before parsing, so that a subscriber gets this refusal rather than an arity error.
pub(super) fn allowed_while_subscribed(verb: &str) -> bool {
    matches!(
        verb,
        "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit" | "reset"
    )
}

impl Command {
    /// `request` (not empty; its verb is `verb`) as a command; `Err` is the reply to send
    /// instead.
    pub(super) fn parse(verb: &str, request: &Request) -> Result<Self, Reply> {
        let args: Vec<String> = request[1..]
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Ok(match verb {
            "ping" => Self::Ping {
                message: request.get(1).cloned(),
            },
            "echo" => match request.get(1) {
                Some(message) if request.len() == 2 => Self::Echo {
                    message: message.clone(),
                },
                _ => return Err(wrong_arity("echo")),
            },
            "quit" => Self::Quit,
            "reset" => Self::Reset,
            "hello" => parse_hello(request)?,
            "auth" => match &request[1..] {
                [password] => Self::Auth {
                    user: None,
                    password: password.clone(),
                },
                [user, password] => Self::Auth {
                    user: Some(String::from_utf8_lossy(user).into_owned()),
                    password: password.clone(),
                },
                [] => return Err(wrong_arity("auth")),
                _ => return Err(Reply::err("syntax error")),
            },
            "client" => Self::Client(ClientCommand::parse(request)?),
            "command" => Self::ListCommands,
            "info" => Self::Info {
                section: args.first().cloned(),
            },
            "role" => Self::Role,
            "sentinel" => Self::Sentinel(SentinelCommand::parse(&args)?),
            "redis-ha" => Self::RedisHa(RedisHaCommand::parse(&args)?),
            "subscribe" | "psubscribe" if args.is_empty() => return Err(wrong_arity(verb)),
            "subscribe" => Self::Subscribe {
                names: args,
                pattern: false,
            },
            "psubscribe" => Self::Subscribe {
                names: args,
                pattern: true,
            },
            "unsubscribe" => Self::Unsubscribe {
                names: args,
                pattern: false,
            },
            "punsubscribe" => Self::Unsubscribe {
                names: args,
                pattern: true,
            },
            _ => {
                let shown: Vec<String> = args.iter().take(8).map(|a| format!("'{a}'")).collect();
                return Err(Reply::err(format!(
                    "unknown command '{}', with args beginning with: {}",
                    String::from_utf8_lossy(&request[0]),
                    shown.join(" ")
                )));
            }
        })
    }
}

/// Takes the whole request: a password is kept as the bytes the client sent.
fn parse_hello(request: &Request) -> Result<Command, Reply> {
    let word = |i: usize| String::from_utf8_lossy(&request[i]).into_owned();
    let proto = match request.get(1).map(|_| word(1)).as_deref() {
        None => None,
        Some("2") => Some(Protocol::Resp2),
        Some("3") => Some(Protocol::Resp3),
        Some(_) => {
            return Err(Reply::Error(
                "NOPROTO sorry, this protocol version is not supported".to_owned(),
            ));
        }
    };
    let mut auth = None;
    let mut setname = None;
    let mut i = 2;
    while i < request.len() {
        let option = word(i);
        match option.to_ascii_lowercase().as_str() {
            "auth" if i + 2 < request.len() => {
                auth = Some((word(i + 1), request[i + 2].clone()));
                i += 3;
            }
            "setname" if i + 1 < request.len() => {
                setname = Some(word(i + 1));
                i += 2;
            }
            _ => {
                return Err(Reply::err(format!(
                    "Syntax error in HELLO option '{option}'"
                )));
            }
        }
    }
    Ok(Command::Hello {
        proto,
        auth,
        setname,
    })
}

impl ClientCommand {
    /// Takes the whole request: a name is kept as the bytes the client sent.
    fn parse(request: &Request) -> Result<Self, Reply> {
        let sub = request
            .get(1)
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        match (sub.as_deref(), request.len()) {
            (Some("setname"), 3) => Ok(Self::SetName(request[2].clone())),
            (Some("setinfo"), 4) => Ok(Self::SetInfo),
            (Some("getname"), 2) => Ok(Self::GetName),
            (Some("id"), 2) => Ok(Self::Id),
            (Some(sub), _) => Err(Reply::err(format!(
                "unknown subcommand or wrong number of arguments for '{sub}'"
            ))),
            (None, _) => Err(wrong_arity("client")),
        }
    }
}

impl SentinelCommand {
    fn parse(args: &[String]) -> Result<Self, Reply> {
        let Some(sub) = args.first().map(|s| s.to_ascii_lowercase()) else {
            return Err(wrong_arity("sentinel"));
        };
        let name = || {
            args.get(1)
                .cloned()
                .ok_or_else(|| wrong_arity(&format!("sentinel|{sub}")))
        };
        let query = match sub.as_str() {
            "masters" => SentinelQuery::Masters,
            "master" => SentinelQuery::Master { name: name()? },
            "replicas" | "slaves" => SentinelQuery::Replicas { name: name()? },
            "sentinels" => SentinelQuery::Sentinels { name: name()? },
            "get-master-addr-by-name" => SentinelQuery::GetMasterAddrByName { name: name()? },
            "ckquorum" => SentinelQuery::CkQuorum { name: name()? },
            "myid" => SentinelQuery::MyId,
            "failover" => return Ok(Self::Failover { name: name()? }),
            "help" => return Ok(Self::Help),
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
            | "pending-scripts" => {
                return Err(Reply::err(format!(
                    "SENTINEL {sub} is not supported by redis-ha: services, quorum and timings \
                     come from its config file, and controllers talk their own peer protocol"
                )));
            }
            _ => {
                return Err(Reply::err(format!(
                    "unknown subcommand '{}'. Try SENTINEL HELP.",
                    args[0]
                )));
            }
        };
        Ok(Self::Query(query))
    }
}

impl RedisHaCommand {
    fn parse(args: &[String]) -> Result<Self, Reply> {
        let sub = args.first().map(|s| s.to_ascii_lowercase());
        match sub.as_deref() {
            Some("status") => Ok(Self::Status),
            Some("events") => Ok(Self::Events),
            Some("failover") => {
                let Some(service) = args.get(1) else {
                    return Err(wrong_arity("redis-ha|failover"));
                };
                let mut to = None;
                let mut timeout_ms = None;
                let mut rest = args[2..].iter();
                while let Some(option) = rest.next() {
                    let value = rest.next();
                    match (option.to_ascii_lowercase().as_str(), value) {
                        ("to", Some(v)) => match v.parse::<NodeAddr>() {
                            Ok(addr) => to = Some(addr),
                            Err(_) => return Err(Reply::err(format!("{v:?} is not an ip:port"))),
                        },
                        ("timeout", Some(v)) => match v.parse::<u64>() {
                            Ok(ms) if ms > 0 => {
                                timeout_ms = Some(check_switchover_timeout(ms).map_err(Reply::err)?)
                            }
                            _ => return Err(Reply::err(format!("{v:?} is not a timeout in ms"))),
                        },
                        _ => {
                            return Err(Reply::err(
                                "syntax error: expected TO <ip:port> or TIMEOUT <ms>",
                            ));
                        }
                    }
                }
                Ok(Self::Failover {
                    service: service.clone(),
                    to,
                    timeout_ms,
                })
            }
            _ => Err(Reply::err(
                "unknown subcommand: try REDIS-HA STATUS | EVENTS | FAILOVER",
            )),
        }
    }
}

fn wrong_arity(command: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{command}' command"))
}

/// `SENTINEL HELP`'s lines: the subcommands redis-ha implements, in Sentinel's wording.
const SENTINEL_HELP: &[&str] = &[
    "CKQUORUM <master-name>",
    "    Check if the current Sentinel configuration is able to reach the quorum",
    "    needed to failover a master and the majority needed to authorize the",
    "    failover.",
    "GET-MASTER-ADDR-BY-NAME <master-name>",
    "    Return the ip and port number of the master with that name.",
    "FAILOVER <master-name>",
    "    Manually failover a master node (redis-ha: after a vote of a majority of",
    "    the controllers; a planned switchover while the master answers).",
    "MASTER <master-name>",
    "    Show the state and info of the specified master.",
    "MASTERS",
    "    Show a list of monitored masters and their state.",
    "MYID",
    "    Return the ID of the Sentinel instance.",
    "REPLICAS <master-name>",
    "    Show a list of replicas for this master and their state.",
    "SENTINELS <master-name>",
    "    Show a list of Sentinel instances for this master and their state.",
    "SLAVES <master-name>",
    "    Old name of REPLICAS.",
];

/// Redis's `addReplyHelp`: a title, the lines, then `HELP` itself, each a status line.
pub(super) fn sentinel_help() -> Reply {
    let title = "SENTINEL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:";
    Reply::Array(
        std::iter::once(title)
            .chain(SENTINEL_HELP.iter().copied())
            .chain(["HELP", "    Print this help."])
            .map(|line| Reply::Simple(line.to_owned()))
            .collect(),
    )
}
