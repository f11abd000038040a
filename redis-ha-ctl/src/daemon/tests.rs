//! The executor in-process: an in-memory data plane, paused time, and inputs sent as the probe,
//! peer and API tasks would send them. Nothing here talks to Redis.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
    time::{Instant, sleep},
};

use super::{
    control::{ApiError, ControlRequest, EventHub},
    executor::{Executor, Input, Parts},
    peers::PeerSender,
    resume::Machines,
};
use crate::{
    config::{Config, backend_slot},
    dataplane::{Dataplane, MapOp, MemDataplane, Snapshot},
    failover::{
        ControllerId, Event, Hello, NodeAddr, NodeInfo, PeerMsg, ProbeResult, ReplicaInfo, Role,
    },
    metrics::Metrics,
    peer::PeerCodec,
    persist::StateStore,
    status::Status,
};

#[path = "tests_follow.rs"]
mod follow;

/// One controller alone (quorum 1); `{listen}` and `{backend}` are filled in.
const SOLO: &str = r#"
[controller]
id = "c1"
listen = "{listen}"
secret = "0123456789abcdef-test"

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["{backend}.11:{port}", "{backend}.12:{port}", "{backend}.13:{port}"]
quorum = 1
"#;

/// Two controllers; the peer `c2` listens at `{peer}`.
const PAIR: &str = r#"
[controller]
id = "c1"
listen = "127.0.0.1:26379"
secret = "0123456789abcdef-test"
peers = [{ id = "c2", addr = "{peer}" }]

[[service]]
name = "mymaster"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379", "198.18.1.13:6379"]
"#;

fn solo() -> String {
    SOLO.replace("{listen}", "127.0.0.1:26379")
        .replace("{backend}", "198.18.1")
        .replace("{port}", "6379")
}

fn node(last: u8) -> NodeAddr {
    NodeAddr::new(Ipv4Addr::new(198, 18, 1, last), 6379)
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "redis-ha-daemon-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The in-memory data plane, shared so the test can look at it while the executor writes.
#[derive(Clone, Default)]
struct SharedDataplane(Arc<Mutex<MemDataplane>>);

impl SharedDataplane {
    fn master(&self) -> Option<[u8; 4]> {
        self.0.lock().unwrap().master_of(0).map(|b| b.ip)
    }

    fn epoch(&self) -> Option<u64> {
        self.0.lock().unwrap().maps.states.get(&0).map(|s| s.epoch)
    }

    /// The backend slots new read connections can land on now.
    fn readable(&self) -> BTreeSet<u32> {
        self.0.lock().unwrap().live_ring_slots(0)
    }
}

impl Dataplane for SharedDataplane {
    type Error = std::convert::Infallible;

    fn snapshot(&self) -> Result<Snapshot, Self::Error> {
        self.0.lock().unwrap().snapshot()
    }

    fn floating_leases(&self) -> Result<BTreeMap<[u8; 4], u64>, Self::Error> {
        self.0.lock().unwrap().floating_leases()
    }

    fn client_networks(&self) -> Result<BTreeSet<([u8; 4], u32)>, Self::Error> {
        self.0.lock().unwrap().client_networks()
    }

    fn peer_devices(&self) -> Result<BTreeSet<u32>, Self::Error> {
        self.0.lock().unwrap().peer_devices()
    }

    fn saved_accept_local(&self) -> Result<BTreeMap<[u8; 16], u32>, Self::Error> {
        self.0.lock().unwrap().saved_accept_local()
    }

    fn interface_macs(&self) -> Result<BTreeMap<u32, [u8; 6]>, Self::Error> {
        self.0.lock().unwrap().interface_macs()
    }

    fn interface_roles(&self) -> Result<BTreeMap<u32, u32>, Self::Error> {
        self.0.lock().unwrap().interface_roles()
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error> {
        self.0.lock().unwrap().apply(op)
    }
}

/// An executor running on its own task, and the ends of its channels.
struct Running {
    dp: SharedDataplane,
    tx: mpsc::Sender<Input>,
    status: watch::Receiver<Status>,
    events: Arc<EventHub>,
    stop: oneshot::Sender<()>,
    done: JoinHandle<()>,
    _dir: TempDir,
}

impl Running {
    /// Starts an executor for `config` on `dp`, as `run` does after loading a data plane.
    async fn start(config: &str, dp: SharedDataplane) -> Self {
        Self::start_parsed(Config::parse(Path::new("test.toml"), config).unwrap(), dp).await
    }

    /// [`Self::start`] for a config parsed already (its names resolved by the test).
    async fn start_parsed(mut cfg: Config, dp: SharedDataplane) -> Self {
        let dir = TempDir::new();
        let ctl = cfg.controller.as_mut().unwrap();
        ctl.state_file = dir.0.join("state.json");
        let ctl = ctl.clone();
        let start = Instant::now();
        let store = StateStore::open(&ctl.state_file).unwrap();
        let snapshot = dp.snapshot().unwrap();
        let machines = Machines::start(
            &cfg,
            &ctl,
            &store,
            Some(&snapshot),
            &Default::default(),
            start,
            false,
        )
        .unwrap();
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let peer_ids = ctl.peers.iter().map(|p| p.id.clone()).collect();
        let codec = PeerCodec::new(&ctl.id, &ctl.secret, peer_ids, 1);
        let (tx, rx) = mpsc::channel(1024);
        let (status_tx, status) = watch::channel(Status::default());
        let events = Arc::new(EventHub::new());
        let executor = Executor::new(Parts {
            services: cfg.services.clone(),
            peers: PeerSender::new(socket, codec, &ctl.peers),
            ctl,
            start,
            store,
            machines,
            dataplane: Some(dp.clone()),
            attached: None,
            traffic: watch::channel(None).1,
            ha_addresses: None,
            tx: tx.clone(),
            status: status_tx,
            events: events.clone(),
            metrics: Arc::new(Metrics::new()),
            seed: 1,
            failpoint: Default::default(),
            reloading: None,
            resolving: None,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(executor.run(rx, async {
            let _ = stopped.await;
        }));
        Self {
            dp,
            tx,
            status,
            events,
            stop,
            done,
            _dir: dir,
        }
    }

    /// What the API does for `SENTINEL FAILOVER` (`wait`: `REDIS-HA FAILOVER`).
    async fn failover(&self, service: &str, to: Option<NodeAddr>) -> Result<String, ApiError> {
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::Failover {
            service: service.to_owned(),
            to,
            timeout_ms: None,
            wait: true,
            reply,
        };
        self.tx.send(Input::Control(request)).await.unwrap();
        answer.await.unwrap()
    }

    async fn probe(&self, last: u8, role: Role) {
        let input = Input::Probe {
            service: 0,
            node: node(last),
            result: ProbeResult::Ok(NodeInfo { run_id: None, role }),
            latency: Some(Duration::from_millis(1)),
        };
        self.tx.send(input).await.unwrap();
    }

    fn read_pool(&self) -> Vec<String> {
        let status = self.status.borrow();
        status.services[0]
            .read_pool
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.done.await.unwrap();
    }
}

fn replica_of(last: u8, offset: u64) -> Role {
    Role::Replica(ReplicaInfo {
        master: node(last),
        link_up: true,
        link_down_ms: 0,
        lag_ms: 0,
        repl_offset: offset,
        priority: 100,
    })
}

#[tokio::test(start_paused = true)]
async fn the_start_writes_the_master_and_pool_to_the_data_plane() {
    let running = Running::start(&solo(), SharedDataplane::default()).await;
    sleep(Duration::from_millis(1)).await;
    assert_eq!(running.dp.master(), Some([198, 18, 1, 11]));
    assert_eq!(
        running.dp.readable(),
        [backend_slot(0, 1), backend_slot(0, 2)].into()
    );
    let status = running.status.borrow().clone();
    assert_eq!(status.controller, "c1");
    assert_eq!(status.services[0].master.to_string(), "198.18.1.11:6379");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_operator_request_goes_through_the_machine_and_is_answered() {
    let running = Running::start(&solo(), SharedDataplane::default()).await;
    let unknown = running.failover("nosuch", None).await.unwrap_err();
    assert_eq!(
        unknown,
        ApiError::new("ERR", "No such master with that name")
    );
    // Refused by the machine, each with Sentinel's code.
    let already = running.failover("mymaster", Some(node(11))).await;
    assert_eq!(already.unwrap_err().code, "ERR");
    // No replica was ever probed: none is fit to be promoted.
    let none_fit = running.failover("mymaster", None).await;
    assert_eq!(none_fit.unwrap_err().code, "NOGOODSLAVE");
    // A refusal leaves nothing behind: the next request is the machine's to answer again.
    let again = running.failover("mymaster", Some(node(11))).await;
    assert_eq!(again.unwrap_err().code, "ERR");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_newer_master_from_a_peer_reaches_the_data_plane() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = PAIR.replace("{peer}", &peer.local_addr().unwrap().to_string());
    let running = Running::start(&config, SharedDataplane::default()).await;
    sleep(Duration::from_millis(1)).await;
    assert_eq!(running.dp.master(), Some([198, 18, 1, 11]));

    // c2 switched to .12 in epoch 5 (a failover this controller did not see).
    let hello = Hello {
        current_epoch: 5,
        master: node(12),
        config_epoch: 5,
        sdown: Vec::new(),
        failover_epoch: None,
    };
    let input = Input::Event {
        service: 0,
        event: Event::Peer {
            from: ControllerId::from("c2"),
            msg: PeerMsg::Hello(hello),
        },
    };
    running.tx.send(input).await.unwrap();
    sleep(Duration::from_millis(1)).await;

    assert_eq!(running.dp.master(), Some([198, 18, 1, 12]));
    assert_eq!(running.dp.epoch(), Some(5));
    let status = running.status.borrow().clone();
    assert_eq!(status.services[0].master.to_string(), "198.18.1.12:6379");
    assert_eq!(status.services[0].config_epoch, 5);
    assert_eq!(
        status.services[0].peers[0]
            .master
            .map(|m| m.to_string())
            .as_deref(),
        Some("198.18.1.12:6379")
    );
    let names: Vec<String> = running
        .events
        .recent()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.iter().any(|n| n == "+switch-master"), "{names:?}");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn read_pool_changes_wait_for_the_warm_up_after_a_start() {
    let running = Running::start(&solo(), SharedDataplane::default()).await;
    // The master answers as master; .13 as its up-to-date replica; .12 is never heard from.
    running.probe(11, Role::Master { repl_offset: 100 }).await;
    running.probe(13, replica_of(11, 100)).await;

    // The machine published a pool of .13 alone at its first tick, but after a start the maps
    // keep serving the pool they had until every node was probed a few times (500 ms here).
    sleep(Duration::from_millis(450)).await;
    let both: BTreeSet<u32> = [backend_slot(0, 1), backend_slot(0, 2)].into();
    assert_eq!(running.dp.readable(), both);
    assert_eq!(
        running.read_pool(),
        ["198.18.1.12:6379", "198.18.1.13:6379"]
    );

    sleep(Duration::from_millis(100)).await;
    assert_eq!(running.dp.readable(), [backend_slot(0, 2)].into());
    assert_eq!(running.read_pool(), ["198.18.1.13:6379"]);
    running.stop().await;
}

/// A port free on loopback for TCP (and, almost surely, UDP) at the time of asking.
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_daemon_runs_in_process_until_its_shutdown_completes() {
    let dir = TempDir::new();
    let port = free_port().await;
    // Backends on loopback ports nobody listens on: the probes fail at once.
    let config = SOLO
        .replace("{listen}", &format!("127.0.0.1:{port}"))
        .replace("{backend}", "127.0.0")
        .replace("{port}", "1");
    let mut cfg = Config::parse(Path::new("test.toml"), &config).unwrap();
    cfg.controller.as_mut().unwrap().state_file = dir.0.join("state.json");
    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = tokio::spawn(super::run(cfg, None, async {
        let _ = stopped.await;
    }));

    let mut api = None;
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            api = Some(stream);
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let mut api = api.expect("the API never listened");
    api.write_all(b"PING\r\n").await.unwrap();
    let mut reply = [0u8; 7];
    api.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+PONG\r\n");

    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
    // Everything it started stopped with it: the API's port is free again.
    TcpListener::bind(("127.0.0.1", port)).await.unwrap();
}
