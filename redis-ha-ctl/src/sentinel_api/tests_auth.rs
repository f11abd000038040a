//! The API with passwords configured, over TCP: what a client gets before and after `AUTH`,
//! byte for byte as Redis answers, and that a refused failover never reaches the executor.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc::{self, error::TryRecvError},
};

use super::{
    ControlRequest,
    testdata::status,
    tests::{CONFIG, server_with},
};

const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

/// [`CONFIG`] with an admin password, a read-only user and `extra` in `[controller]`.
fn config(extra: &str) -> String {
    CONFIG.replace(
        "\n[[service]]",
        &format!(
            "requirepass = \"admin-pass\"\n\
             users = [{{ name = \"monitor\", password = \"watch-only\", access = \"read-only\" }}]\n\
             {extra}\n[[service]]"
        ),
    )
}

/// One client connection, request by request.
struct Session(TcpStream);

impl Session {
    async fn open(addr: SocketAddr) -> Self {
        Self(TcpStream::connect(addr).await.unwrap())
    }

    /// Sends one inline request and returns the reply as sent.
    async fn ask(&mut self, request: &str) -> String {
        self.0
            .write_all(format!("{request}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), self.0.read(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out[..n]).into_owned()
    }
}

fn nothing_reached_the_executor(control: &mut mpsc::Receiver<ControlRequest>) {
    assert!(matches!(control.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn before_auth_only_auth_hello_quit_and_reset_run() {
    let (addr, _, _, mut control) = server_with(&config(""), status()).await;
    let mut s = Session::open(addr).await;
    for request in [
        "PING",
        "INFO",
        "SENTINEL get-master-addr-by-name mymaster",
        "SENTINEL FAILOVER mymaster",
        "REDIS-HA FAILOVER mymaster",
        "REDIS-HA STATUS",
        "SUBSCRIBE +switch-master",
        "CLIENT SETNAME x",
    ] {
        assert_eq!(s.ask(request).await, NOAUTH, "{request}");
    }
    // Redis looks the command up before it asks for a password.
    assert!(s.ask("FLUSHALL").await.starts_with("-ERR unknown command"));
    assert!(
        s.ask("HELLO 2")
            .await
            .starts_with("-NOAUTH HELLO must be called with the client already authenticated")
    );
    assert_eq!(s.ask("RESET").await, "+RESET\r\n");
    // A wrong password, for the default user or a named one, changes nothing.
    assert_eq!(s.ask("AUTH watch-only").await, WRONGPASS);
    assert_eq!(s.ask("AUTH monitor admin-pass").await, WRONGPASS);
    assert_eq!(s.ask("AUTH nobody admin-pass").await, WRONGPASS);
    assert_eq!(s.ask("HELLO 2 AUTH monitor nope").await, WRONGPASS);
    assert_eq!(s.ask("PING").await, NOAUTH);
    assert!(
        s.ask("AUTH")
            .await
            .starts_with("-ERR wrong number of arguments")
    );
    assert_eq!(s.ask("AUTH a b c").await, "-ERR syntax error\r\n");
    assert_eq!(s.ask("QUIT").await, "+OK\r\n");
    nothing_reached_the_executor(&mut control);
}

#[tokio::test]
async fn the_default_user_may_fail_over_and_a_read_only_user_may_not() {
    let (addr, _, _, mut control) = server_with(&config(""), status()).await;
    let mut admin = Session::open(addr).await;
    assert_eq!(admin.ask("AUTH admin-pass").await, "+OK\r\n");
    assert_eq!(admin.ask("PING").await, "+PONG\r\n");

    let mut monitor = Session::open(addr).await;
    let hello = monitor
        .ask("HELLO 2 AUTH monitor watch-only SETNAME mon")
        .await;
    assert!(hello.starts_with("*14\r\n$6\r\nserver\r\n"), "{hello}");
    assert_eq!(monitor.ask("CLIENT GETNAME").await, "$3\r\nmon\r\n");
    let master = monitor
        .ask("SENTINEL get-master-addr-by-name mymaster")
        .await;
    assert!(master.contains("198.18.1.11"), "{master}");
    assert!(monitor.ask("REDIS-HA STATUS").await.starts_with('$'));
    assert_eq!(
        monitor.ask("SENTINEL FAILOVER mymaster").await,
        "-NOPERM User monitor has no permissions to run the 'sentinel|failover' command\r\n"
    );
    assert_eq!(
        monitor.ask("REDIS-HA FAILOVER mymaster").await,
        "-NOPERM User monitor has no permissions to run the 'redis-ha|failover' command\r\n"
    );
    nothing_reached_the_executor(&mut control);
    // RESET logs the connection out, as Redis's does with a password set.
    assert_eq!(monitor.ask("RESET").await, "+RESET\r\n");
    assert_eq!(monitor.ask("PING").await, NOAUTH);

    // The admin's failover does reach the executor.
    let answer = tokio::spawn(async move { admin.ask("SENTINEL FAILOVER mymaster").await });
    let Some(ControlRequest::Failover { reply, .. }) = control.recv().await else {
        panic!("no failover request reached the executor");
    };
    reply.send(Ok("started".into())).unwrap();
    assert_eq!(answer.await.unwrap(), "+OK\r\n");
}

#[tokio::test]
async fn clients_authenticate_with_the_url_password() {
    let (addr, _, _, _) = server_with(&config(""), status()).await;
    let ask = |url: String| async move {
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query_async::<(String, String)>(&mut c)
            .await
    };
    let master = ("198.18.1.11".to_owned(), "6379".to_owned());
    assert_eq!(
        ask(format!("redis://:admin-pass@{addr}/")).await.unwrap(),
        master
    );
    assert_eq!(
        ask(format!("redis://monitor:watch-only@{addr}/"))
            .await
            .unwrap(),
        master
    );
    // The crate words a WRONGPASS its own way.
    let refused = ask(format!("redis://:wrong@{addr}/")).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{refused}"
    );
    let refused = ask(format!("redis://{addr}/")).await.unwrap_err();
    assert_eq!(refused.code(), Some("NOAUTH"), "{refused}");
}

#[tokio::test]
async fn open_reads_open_the_queries_but_never_a_failover() {
    let (addr, _, _, mut control) =
        server_with(&config("allow_unauthenticated_reads = true"), status()).await;
    let mut s = Session::open(addr).await;
    assert_eq!(s.ask("PING").await, "+PONG\r\n");
    let master = s.ask("SENTINEL get-master-addr-by-name mymaster").await;
    assert!(master.contains("198.18.1.11"), "{master}");
    assert_eq!(s.ask("SENTINEL FAILOVER mymaster").await, NOAUTH);
    assert_eq!(s.ask("REDIS-HA FAILOVER mymaster").await, NOAUTH);
    nothing_reached_the_executor(&mut control);
}
