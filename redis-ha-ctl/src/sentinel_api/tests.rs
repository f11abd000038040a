//! The API end to end over TCP (what Sentinel clients and `redis-cli` see, byte for byte where
//! it matters), and the parsing of requests into commands.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};

use super::{
    Api, ApiError, Catalog, ControlRequest, EventHub,
    command::{ClientCommand, Command, RedisHaCommand, SentinelCommand, SentinelQuery},
    serve,
    testdata::status,
};
use crate::{
    config::{ApiLimits, Config},
    metrics::Metrics,
    resp::{Protocol, Reply},
    status::{EventRecord, Status},
};

pub(super) const CONFIG: &str = r#"
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
    server_with(CONFIG, status).await
}

/// [`server`] with the config `config` (its `[controller]` and `[[service]]` sections).
pub(super) async fn server_with(
    config: &str,
    status: Status,
) -> (
    SocketAddr,
    Arc<EventHub>,
    watch::Sender<Status>,
    mpsc::Receiver<ControlRequest>,
) {
    let cfg = Config::parse(std::path::Path::new("test.toml"), config).unwrap();
    server_for(cfg, status).await
}

/// [`server`] for an already parsed config.
async fn server_for(
    cfg: Config,
    status: Status,
) -> (
    SocketAddr,
    Arc<EventHub>,
    watch::Sender<Status>,
    mpsc::Receiver<ControlRequest>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (status_tx, status_rx) = watch::channel(status);
    let (control_tx, control_rx) = mpsc::channel(8);
    let events = Arc::new(EventHub::new());
    let api = Arc::new(Api {
        catalog: watch::channel(Arc::new(Catalog {
            services: cfg.services,
            peer_validity_ms: vec![1000],
        }))
        .1,
        status: status_rx,
        events: events.clone(),
        control: control_tx,
        listen: addr,
        auth: cfg.controller.unwrap().api,
        started: Instant::now(),
        limits: ApiLimits::default(),
        metrics: Arc::new(Metrics::new()),
        limit_log: Default::default(),
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

/// With `announce_hostnames`, a Sentinel client is told the master (and the replicas) by the
/// names the backends were given; without it, by address, as before.
#[tokio::test]
async fn announce_hostnames_gives_names_to_sentinel_clients() {
    let named = CONFIG.replace(
        r#"backends = ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]"#,
        "resolve_hostnames = true\nannounce_hostnames = true\n\
         backends = [\"redis1.internal:6379\", \"redis2.internal:6379\", \"198.18.1.13:6379\"]",
    );
    let hosts = crate::config::FixedHosts(&[
        ("redis1.internal", "198.18.1.11"),
        ("redis2.internal", "198.18.1.12"),
    ]);
    let path = std::path::Path::new("test.toml");
    let cfg = Config::parse_resolving(path, &named, &hosts).unwrap();
    let (addr, _, _, _) = server_for(cfg, status()).await;
    let mut c = connect(addr).await;
    let master: (String, String) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("mymaster")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(master, ("redis1.internal".into(), "6379".into()));
    let m: Vec<String> = redis::cmd("SENTINEL")
        .arg("master")
        .arg("mymaster")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pairs(m)["ip"], "redis1.internal");
    let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("replicas")
        .arg("mymaster")
        .query_async(&mut c)
        .await
        .unwrap();
    let replicas: Vec<_> = replicas.into_iter().map(pairs).collect();
    assert_eq!(replicas[0]["name"], "redis2.internal:6379");
    assert_eq!(replicas[0]["ip"], "redis2.internal");
    assert_eq!(replicas[0]["master-host"], "redis1.internal");
    // Given by address: shown by address.
    assert_eq!(replicas[1]["ip"], "198.18.1.13");
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    assert!(info.contains("address=redis1.internal:6379"), "{info}");

    // Names given, not announced: addresses, as Sentinel without announce-hostnames.
    let quiet = named.replace("announce_hostnames = true", "announce_hostnames = false");
    let cfg = Config::parse_resolving(path, &quiet, &hosts).unwrap();
    let (addr, _, _, _) = server_for(cfg, status()).await;
    let master: (String, String) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("mymaster")
        .query_async(&mut connect(addr).await)
        .await
        .unwrap();
    assert_eq!(master, ("198.18.1.11".into(), "6379".into()));
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
    // A timeout above the cap never reaches the executor (whose answer would echo it).
    assert_eq!(
        raw(addr, b"REDIS-HA FAILOVER mymaster TIMEOUT 10001\r\n").await,
        "-ERR TIMEOUT 10001 is above the maximum of 10000 ms: writes stay paused on the \
         master for 3 x TIMEOUT + 2 s if the controller dies mid-switchover\r\n"
    );
    assert_eq!(
        raw(addr, b"REDIS-HA FAILOVER mymaster TIMEOUT 10000\r\n").await,
        "$20\r\nmymaster Some(10000)\r\n"
    );
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

#[test]
fn requests_parse_into_typed_commands() {
    let parse = |words: &[&str]| {
        let request: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        Command::parse(&super::command::verb(&request), &request)
    };
    assert_eq!(parse(&["PING"]), Ok(Command::Ping { message: None }));
    assert_eq!(
        parse(&["sentinel", "SLAVES", "mymaster"]),
        Ok(Command::Sentinel(SentinelCommand::Query(
            SentinelQuery::Replicas {
                name: "mymaster".into()
            }
        )))
    );
    assert_eq!(
        parse(&["SENTINEL", "failover", "mymaster"]),
        Ok(Command::Sentinel(SentinelCommand::Failover {
            name: "mymaster".into()
        }))
    );
    assert_eq!(
        parse(&[
            "REDIS-HA",
            "FAILOVER",
            "mymaster",
            "to",
            "198.18.1.12:6379",
            "TIMEOUT",
            "50"
        ]),
        Ok(Command::RedisHa(RedisHaCommand::Failover {
            service: "mymaster".into(),
            to: Some("198.18.1.12:6379".parse().unwrap()),
            timeout_ms: Some(50),
        }))
    );
    assert_eq!(
        parse(&["client", "setname", "x"]),
        Ok(Command::Client(ClientCommand::SetName(b"x".to_vec())))
    );
    assert_eq!(
        parse(&["PSUBSCRIBE", "+s*"]),
        Ok(Command::Subscribe {
            names: vec!["+s*".into()],
            pattern: true
        })
    );
    // Arity and syntax are settled before anything runs, with Redis's texts.
    assert_eq!(
        parse(&["SENTINEL", "master"]),
        Err(Reply::err(
            "wrong number of arguments for 'sentinel|master' command"
        ))
    );
    assert_eq!(
        parse(&["REDIS-HA", "FAILOVER", "mymaster", "TIMEOUT", "0"]),
        Err(Reply::err("\"0\" is not a timeout in ms"))
    );
    assert_eq!(
        parse(&["HELLO", "3", "SETNAME", "app"]),
        Ok(Command::Hello {
            proto: Some(Protocol::Resp3),
            auth: None,
            setname: Some("app".into()),
        })
    );
    assert_eq!(
        parse(&["HELLO"]),
        Ok(Command::Hello {
            proto: None,
            auth: None,
            setname: None,
        })
    );
    assert_eq!(
        parse(&["SENTINEL", "help"]),
        Ok(Command::Sentinel(SentinelCommand::Help))
    );
    for version in ["4", "1", "x"] {
        assert_eq!(
            parse(&["HELLO", version]),
            Err(Reply::Error(
                "NOPROTO sorry, this protocol version is not supported".into()
            ))
        );
    }
}
