//! RESP3 over TCP: `HELLO 3` switches a connection (and `HELLO 2`, `RESET` switch it back),
//! replies then use the types Sentinel's use in RESP3 (maps, `_`, push frames), byte for byte,
//! and a RESP3 client library reads them. Also `SENTINEL HELP` in Redis's format.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    testdata::status,
    tests::{CONFIG, server_with},
};
use crate::status::EventRecord;

/// One client connection, request by request.
struct Session(TcpStream);

impl Session {
    async fn open(addr: SocketAddr) -> Self {
        Self(TcpStream::connect(addr).await.unwrap())
    }

    async fn send(&mut self, request: &str) {
        self.0
            .write_all(format!("{request}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads until `want` bytes arrived (what the expected reply takes), at most 5 s.
    async fn read(&mut self, want: usize) -> String {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < want {
            let n = tokio::time::timeout(Duration::from_secs(5), self.0.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Sends one inline request and reads a reply of `expected`'s length.
    async fn ask(&mut self, request: &str, expected: &str) -> String {
        self.send(request).await;
        self.read(expected.len()).await
    }

    /// Sends one inline request and reads until nothing more comes for 200 ms (for replies
    /// whose length is not known up front).
    async fn ask_once(&mut self, request: &str) -> String {
        self.send(request).await;
        let mut got = self.read(1).await.into_bytes();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), self.0.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}

/// `HELLO`'s map for connection `id` in protocol `proto`, as Redis Sentinel 7.0 sends it.
fn hello_map(proto: u8, id: u64) -> String {
    let header = if proto == 3 { "%7" } else { "*14" };
    format!(
        "{header}\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n\
         $5\r\nproto\r\n:{proto}\r\n$2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$8\r\nsentinel\r\n\
         $4\r\nrole\r\n$8\r\nsentinel\r\n$7\r\nmodules\r\n*0\r\n"
    )
}

#[tokio::test]
async fn hello_3_switches_to_resp3_and_hello_2_switches_back() {
    let (addr, _, _, _) = server_with(CONFIG, status()).await;
    let mut s = Session::open(addr).await;
    // Before: RESP2's null array.
    let unknown = "SENTINEL get-master-addr-by-name nope";
    assert_eq!(s.ask(unknown, "*-1\r\n").await, "*-1\r\n");

    let hello = hello_map(3, 1);
    assert_eq!(s.ask("HELLO 3", &hello).await, hello);
    assert_eq!(s.ask(unknown, "_\r\n").await, "_\r\n");
    assert_eq!(s.ask("CLIENT GETNAME", "_\r\n").await, "_\r\n");
    // Unchanged types stay as they were.
    assert_eq!(
        s.ask(
            "SENTINEL get-master-addr-by-name mymaster",
            "*2\r\n$11\r\n198.18.1.11\r\n$4\r\n6379\r\n"
        )
        .await,
        "*2\r\n$11\r\n198.18.1.11\r\n$4\r\n6379\r\n"
    );
    assert_eq!(s.ask("PING", "+PONG\r\n").await, "+PONG\r\n");
    // Sentinel's instance descriptions are maps.
    let master = s.ask_once("SENTINEL master mymaster").await;
    assert!(
        master.starts_with("%20\r\n$4\r\nname\r\n$8\r\nmymaster\r\n$2\r\nip\r\n"),
        "{master}"
    );
    let masters = s.ask_once("SENTINEL masters").await;
    assert!(
        masters.starts_with("*1\r\n%20\r\n$4\r\nname\r\n"),
        "{masters}"
    );
    let replicas = s.ask_once("SENTINEL replicas mymaster").await;
    assert!(
        replicas.starts_with("*2\r\n%21\r\n$4\r\nname\r\n"),
        "{replicas}"
    );
    let sentinels = s.ask_once("SENTINEL sentinels mymaster").await;
    assert!(
        sentinels.starts_with("*2\r\n%14\r\n$4\r\nname\r\n"),
        "{sentinels}"
    );

    // HELLO with no version answers in, and keeps, the current protocol.
    assert_eq!(s.ask("HELLO", &hello).await, hello);
    let hello2 = hello_map(2, 1);
    assert_eq!(s.ask("HELLO 2", &hello2).await, hello2);
    assert_eq!(s.ask(unknown, "*-1\r\n").await, "*-1\r\n");
    let master = s.ask_once("SENTINEL master mymaster").await;
    assert!(master.starts_with("*40\r\n$4\r\nname\r\n"), "{master}");
}

#[tokio::test]
async fn an_unsupported_or_refused_hello_changes_nothing() {
    let (addr, _, _, _) = server_with(CONFIG, status()).await;
    let mut s = Session::open(addr).await;
    let noproto = "-NOPROTO sorry, this protocol version is not supported\r\n";
    assert_eq!(s.ask("HELLO 4", noproto).await, noproto);
    assert_eq!(s.ask("CLIENT GETNAME", "$-1\r\n").await, "$-1\r\n");

    let config = CONFIG.replace("\n[[service]]", "requirepass = \"admin-pass\"\n[[service]]");
    let (addr, _, _, _) = server_with(&config, status()).await;
    let mut s = Session::open(addr).await;
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    assert_eq!(
        s.ask("HELLO 3 AUTH default wrong", wrongpass).await,
        wrongpass
    );
    let hello = hello_map(3, 1);
    assert_eq!(
        s.ask("HELLO 3 AUTH default admin-pass SETNAME app", &hello)
            .await,
        hello
    );
    assert_eq!(
        s.ask("CLIENT GETNAME", "$3\r\napp\r\n").await,
        "$3\r\napp\r\n"
    );
    // RESET goes back to RESP2, as Redis's does.
    assert_eq!(s.ask("RESET", "+RESET\r\n").await, "+RESET\r\n");
    assert_eq!(s.ask("HELLO 3", "-NOAUTH").await.get(..7), Some("-NOAUTH"));
    assert_eq!(s.ask("AUTH admin-pass", "+OK\r\n").await, "+OK\r\n");
    assert_eq!(s.ask("CLIENT GETNAME", "$-1\r\n").await, "$-1\r\n");
}

#[tokio::test]
async fn resp3_subscribers_get_push_frames_and_may_run_any_command() {
    let (addr, events, _, _) = server_with(CONFIG, status()).await;
    let mut s = Session::open(addr).await;
    let hello = hello_map(3, 1);
    assert_eq!(s.ask("HELLO 3", &hello).await, hello);
    let acks = ">3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n\
                >3\r\n$10\r\npsubscribe\r\n$3\r\n+s*\r\n:2\r\n";
    s.send("SUBSCRIBE +switch-master").await;
    s.send("PSUBSCRIBE +s*").await;
    assert_eq!(s.read(acks.len()).await, acks);

    let record = EventRecord {
        at_unix_ms: 5,
        service: "mymaster".into(),
        name: "+switch-master".into(),
        payload: "mymaster 198.18.1.11 6379 198.18.1.12 6379".into(),
    };
    events.publish(record.clone());
    let expected = format!(
        ">3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$42\r\n{p}\r\n\
         >4\r\n$8\r\npmessage\r\n$3\r\n+s*\r\n$14\r\n+switch-master\r\n$42\r\n{p}\r\n",
        p = record.payload
    );
    assert_eq!(s.read(expected.len()).await, expected);

    // RESP3 tells pushes from replies: any command runs, and PING is a plain PONG.
    assert_eq!(s.ask("PING", "+PONG\r\n").await, "+PONG\r\n");
    let addr_reply = "*2\r\n$11\r\n198.18.1.11\r\n$4\r\n6379\r\n";
    assert_eq!(
        s.ask("SENTINEL get-master-addr-by-name mymaster", addr_reply)
            .await,
        addr_reply
    );
    let bye = ">3\r\n$11\r\nunsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n";
    assert_eq!(s.ask("UNSUBSCRIBE", bye).await, bye);
}

#[tokio::test]
async fn the_redis_crate_reads_resp3_maps_and_push_messages() {
    let (addr, events, _, _) = server_with(CONFIG, status()).await;
    let client = redis::Client::open(format!("redis://{addr}/?protocol=resp3")).unwrap();
    let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let master: redis::Value = redis::cmd("SENTINEL")
        .arg("master")
        .arg("mymaster")
        .query_async(&mut c)
        .await
        .unwrap();
    let redis::Value::Map(fields) = &master else {
        panic!("not a map: {master:?}");
    };
    let master: std::collections::HashMap<String, String> =
        redis::from_redis_value(&redis::Value::Map(fields.clone())).unwrap();
    assert_eq!(master["ip"], "198.18.1.11");
    assert_eq!(master["flags"], "master");

    let missing: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("nope")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(missing, None);

    c.subscribe("+switch-master").await.unwrap();
    let record = EventRecord {
        at_unix_ms: 5,
        service: "mymaster".into(),
        name: "+switch-master".into(),
        payload: "mymaster 198.18.1.11 6379 198.18.1.12 6379".into(),
    };
    events.publish(record.clone());
    let message = loop {
        let push = tokio::time::timeout(Duration::from_secs(5), pushes.recv())
            .await
            .unwrap()
            .unwrap();
        if push.kind == redis::PushKind::Message {
            break push;
        }
    };
    let (channel, payload): (String, String) =
        redis::from_redis_value(&redis::Value::Array(message.data)).unwrap();
    assert_eq!(channel, "+switch-master");
    assert_eq!(payload, record.payload);
}

#[tokio::test]
async fn sentinel_help_lists_our_subcommands_in_redis_format() {
    let (addr, _, _, _) = server_with(CONFIG, status()).await;
    let mut c = redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let help: Vec<String> = redis::cmd("SENTINEL")
        .arg("HELP")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        help.first().map(String::as_str),
        Some("SENTINEL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:")
    );
    assert_eq!(help[help.len() - 2..], ["HELP", "    Print this help."]);
    // Every subcommand we answer is listed, and only those.
    let listed: Vec<&str> = help[1..]
        .iter()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for sub in [
        "CKQUORUM",
        "GET-MASTER-ADDR-BY-NAME",
        "FAILOVER",
        "MASTER",
        "MASTERS",
        "MYID",
        "REPLICAS",
        "SENTINELS",
        "SLAVES",
        "HELP",
    ] {
        assert!(listed.contains(&sub), "{sub} missing from {listed:?}");
    }
    assert!(!listed.contains(&"MONITOR"), "{listed:?}");
    for sub in &listed {
        let reply: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
            .arg(*sub)
            .arg("mymaster")
            .query_async(&mut c)
            .await;
        if let Err(e) = reply {
            assert!(
                !e.to_string().contains("unknown subcommand")
                    && !e.to_string().contains("not supported"),
                "{sub}: {e}"
            );
        }
    }
}
