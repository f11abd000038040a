//! `redis-ha-ctl run`: the executor around the pure failover machines. It probes every
//! backend, carries peer messages, performs the machines' actions in order (persisting votes
//! before they leave the host) and, on data-plane nodes, writes the result into the maps.
//!
//! One task owns all machines and the data plane, so decisions and map writes are strictly
//! ordered; probes, commands, the planned switchover's Redis I/O, the peer socket and the
//! Sentinel-compatible API run in their own tasks and talk to it over a channel. After each
//! burst of steps it publishes a [`Status`] snapshot (a `watch` channel read by the API and the
//! HTTP endpoint), and every event it performs goes to the [`EventHub`] (log, pub/sub).

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use redis_ha_common::counter;
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, error, info, warn};

use crate::{
    config::{
        Config, ControllerConfig, ReadFromMaster as CfgRead, RedisAuth, ServiceConfig, backend_slot,
    },
    dataplane::{Dataplane as _, ServiceTarget, bpf::BpfDataplane, sync},
    failover::{
        self, Action, ControllerId, Event, FailoverPhase, ForceRefused, ForcedOutcome, Hello,
        MachineConfig, Millis, NodeAddr, NodeInfo, NoticeKind, Params, PeerMsg, Persisted,
        ProbeResult, Role, ServiceMachine,
    },
    ha::{
        Candidacy, HaAction, HaEvent, HaMachine, HaMsg, HaParams,
        net::{AddressWorker, Addresses, monotonic_ns},
    },
    http,
    metrics::Metrics,
    peer::{MAX_DATAGRAM, Payload, PeerCodec, Refused},
    persist::StateStore,
    probe::{self, Prober},
    sentinel_api::{self, Api, ApiError, ControlRequest, EventHub, SwitchoverReport},
    status::{
        BackendTraffic, DataplaneStatus, EventRecord, HaStatus, NodeRole, NodeStatus, PeerStatus,
        ServiceStatus, Status,
    },
};

/// How long a planned switchover may wait for its target to catch up (and, again, for the
/// promotion) while writes are paused, unless the request says otherwise.
pub const DEFAULT_SWITCHOVER_TIMEOUT_MS: u64 = 2_000;

/// The data plane's counters are read (a syscall per slot and CPU) at most this often.
const DATAPLANE_REFRESH: Duration = Duration::from_millis(500);
/// The connection table is swept and counted at most this often (a full default table is
/// 131,072 syscalls, some 100 ms of CPU).
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// An input for the executor.
enum Input {
    /// An event for the machine of service `service` (index into the config's services).
    Event { service: usize, event: Event },
    /// A probe's result, with how long a successful one took.
    Probe {
        service: usize,
        node: NodeAddr,
        result: ProbeResult,
        latency: Option<Duration>,
    },
    /// A request from the API.
    Control(ControlRequest),
    /// A planned switchover paused writes on the master (`CLIENT PAUSE` accepted) at `at`.
    Paused { service: usize, at: Instant },
    /// ...and resumed them (`CLIENT UNPAUSE` sent; `ok` if it was accepted) at `at`.
    Resumed {
        service: usize,
        ok: bool,
        at: Instant,
    },
    /// A peer's message about the floating addresses.
    Ha { from: ControllerId, msg: HaMsg },
}

/// The event name under which the floating addresses' events are published (in place of a
/// service name).
const HA_EVENTS: &str = "vip";

/// After a start, a voter waits at least this long (or the node's own `ha.down_after_ms`)
/// before voting: see [`HaParams::quiet_after_start_ms`].
const HA_QUIET_AFTER_START_MS: Millis = 1000;

/// The machine's timing, derived from the config. Sentinel's periods are tuned for
/// `down-after` of tens of seconds; ours scale with the probe interval so that a failover at
/// `down_after_ms` = 1 s completes well under 1.2 s.
pub fn params(svc: &ServiceConfig, ctl: &ControllerConfig) -> Params {
    let f = &svc.failover;
    let interval = ctl.probe_interval_ms;
    Params {
        quorum: f.quorum,
        down_after_ms: f.down_after_ms,
        failover_timeout_ms: f.failover_timeout_ms,
        parallel_syncs: f.parallel_syncs,
        max_replica_lag_ms: f.max_replica_lag_ms,
        read_from_master: match f.read_from_master {
            CfgRead::Never => failover::ReadFromMaster::Never,
            CfgRead::Fallback => failover::ReadFromMaster::Fallback,
            CfgRead::Always => failover::ReadFromMaster::Always,
        },
        probe_interval_ms: interval,
        hello_interval_ms: interval,
        peer_report_validity_ms: (5 * interval).max(f.down_after_ms),
        election_timeout_ms: f.failover_timeout_ms.min(10_000),
        max_desync_ms: (f.down_after_ms / 2).clamp(1, 1000),
        convert_delay_ms: (4 * interval).max(1000),
        ..Params::default()
    }
}

fn now_ms(start: Instant) -> Millis {
    start.elapsed().as_millis() as Millis
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Cheap non-cryptographic randomness for the election jitter (xorshift), seeded per boot.
struct Jitter(u64);
impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// How long a planned switchover's commands (pause, offsets, promotion) may take.
fn switchover_timeout(svc: &ServiceConfig) -> Duration {
    Duration::from_millis((svc.failover.down_after_ms / 2).clamp(50, 1000))
}

/// What the executor saw of one node, for the status.
#[derive(Default)]
struct NodeView {
    /// The last INFO it gave.
    info: Option<NodeInfo>,
    last_ok: Option<Instant>,
    latency: Option<Duration>,
}

/// What the executor heard from one peer, for the status.
#[derive(Default)]
struct PeerView {
    last_heard: Option<Instant>,
    hello: Option<Hello>,
}

/// An operator's forced failover, from the request to its answer.
struct Switchover {
    requested: Instant,
    /// `None` once answered (a `SENTINEL FAILOVER` is answered when it starts).
    reply: Option<oneshot::Sender<Result<String, ApiError>>>,
    /// Answer at the end rather than at the start.
    wait: bool,
    paused_at: Option<Instant>,
    resumed_at: Option<Instant>,
    /// A `ResumeWrites` is in flight: the answer waits for it (it carries the pause length).
    resuming: bool,
    /// `Switched` or `Aborted`, once the machine said so.
    outcome: Option<ForcedOutcome>,
}

/// Per service: what the status shows beyond the machine's own accessors.
#[derive(Default)]
struct View {
    nodes: BTreeMap<NodeAddr, NodeView>,
    peers: BTreeMap<String, PeerView>,
    /// `+switch-master` seen since start.
    failovers: u64,
    switchover: Option<Switchover>,
}

/// The executor's state: owned by one task.
struct Executor {
    services: Vec<ServiceConfig>,
    ctl: ControllerConfig,
    names: Vec<String>,
    start: Instant,
    store: StateStore,
    codec: PeerCodec,
    socket: Arc<UdpSocket>,
    peers: Vec<(ControllerId, SocketAddr)>,
    dataplane: Option<BpfDataplane>,
    /// (interface, attach mode) of the data plane, as attached at start.
    interfaces: Vec<(String, String)>,
    targets: Vec<ServiceTarget>,
    machines: Vec<ServiceMachine>,
    views: Vec<View>,
    tx: mpsc::Sender<Input>,
    /// Until every node has been probed a few times the machines know nothing of replica
    /// health; holding back read-pool changes until then keeps a restart from emptying the
    /// pool the pinned maps are serving.
    warm_until: Millis,
    held_pools: Vec<Option<Vec<NodeAddr>>>,
    status: watch::Sender<Status>,
    events: Arc<EventHub>,
    metrics: Arc<Metrics>,
    /// The data plane's counters, and when they were read.
    dataplane_counters: Option<(Instant, DataplaneCounters)>,
    /// Who holds the floating addresses: every controller takes part, as a voter at least.
    ha: HaMachine,
    /// This node's floating addresses, on a node configured with `[ha]`.
    ha_addresses: Option<AddressWorker>,
    /// How many times this node took them since it started.
    ha_acquired: u64,
    /// The floating addresses' ARP lease last written to the data plane (`CLOCK_MONOTONIC` ns,
    /// 0: none).
    ha_lease_written: u64,
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let ctl = cfg.controller.clone().with_context(|| {
        format!(
            "{}: no [controller] section: `run` needs one (id, listen, peers, secret)",
            config_path.display()
        )
    })?;
    let start = Instant::now();
    let boot = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);

    let store = StateStore::open(&ctl.state_file)?;
    let mut interfaces = Vec::new();
    let dataplane = match &cfg.dataplane {
        Some(dpc) => {
            let (dp, attachments) = BpfDataplane::load_and_attach(dpc)?;
            for a in &attachments {
                info!(
                    interface = %a.interface,
                    mode = a.mode,
                    new = a.newly_attached,
                    peer_redirect = a.peer_redirect,
                    "data plane attached"
                );
                interfaces.push((a.interface.clone(), a.mode.to_owned()));
            }
            Some(dp)
        }
        None => None,
    };
    let snapshot = match &dataplane {
        Some(dp) => Some(dp.snapshot()?),
        None => None,
    };
    let targets: Vec<ServiceTarget> = cfg
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| match &snapshot {
            Some(snap) => ServiceTarget::resume(i as u32, s, snap),
            None => ServiceTarget::initial(i as u32, s),
        })
        .collect();

    let peer_ids: Vec<ControllerId> = ctl
        .peers
        .iter()
        .map(|p| ControllerId(p.id.clone()))
        .collect();
    let mut machines = Vec::new();
    let mut all_params = Vec::new();
    let mut first: Vec<(usize, Vec<Action>)> = Vec::new();
    for (i, svc) in cfg.services.iter().enumerate() {
        // Resume from whichever is newer: our state file or the pinned maps (which another
        // run of this controller, or an operator, may have advanced).
        let mut persisted = store.get(&svc.name);
        let t = &targets[i];
        if let Some(master) = t.master
            && t.epoch > persisted.as_ref().map_or(0, |p| p.config_epoch)
        {
            persisted = Some(Persisted {
                current_epoch: t
                    .epoch
                    .max(persisted.as_ref().map_or(0, |p| p.current_epoch)),
                vote: persisted.and_then(|p| p.vote),
                master,
                config_epoch: t.epoch,
            });
        }
        let p = params(svc, &ctl);
        let mc = MachineConfig {
            service: svc.name.clone(),
            me: ControllerId(ctl.id.clone()),
            peers: peer_ids.clone(),
            master: svc.backends[0],
            replicas: svc.backends[1..].to_vec(),
            params: p.clone(),
        };
        let (machine, actions) = ServiceMachine::new(mc, persisted, now_ms(start))
            .with_context(|| format!("service {}", svc.name))?;
        machines.push(machine);
        all_params.push(p);
        // The current master and read pool go through the same path as every other action.
        first.push((i, actions));
    }

    let ha_params = HaParams {
        candidacy: cfg.ha.as_ref().map(|h| Candidacy {
            priority: h.priority,
            preempt: h.preempt,
        }),
        heartbeat_ms: cfg
            .ha
            .as_ref()
            .map_or(ctl.probe_interval_ms, |h| h.heartbeat_ms),
        down_after_ms: cfg.ha.as_ref().map_or(0, |h| h.down_after_ms),
        quiet_after_start_ms: cfg
            .ha
            .as_ref()
            .map_or(0, |h| h.down_after_ms)
            .max(HA_QUIET_AFTER_START_MS),
    };
    // A candidate's timers (claims, the lease, vacancy) need a fine tick; a voter only answers.
    let ha_tick = Duration::from_millis(if ha_params.candidacy.is_some() {
        (ha_params.heartbeat_ms / 5).clamp(5, 100)
    } else {
        100
    });
    let ha = HaMachine::new(
        ControllerId(ctl.id.clone()),
        peer_ids.clone(),
        ha_params,
        store.ha(),
        now_ms(start),
    );
    let mut dataplane = dataplane;
    if let Some(dp) = dataplane.as_mut() {
        // Until elected, the program drops ARP requests for the floating addresses; without
        // [ha], no entry: ARP is left alone.
        let floating: Vec<std::net::Ipv4Addr> = cfg
            .ha
            .iter()
            .flat_map(|h| h.addresses.iter().map(|a| a.address))
            .collect();
        dp.set_floating_leases(&floating, 0)
            .context("clearing the floating addresses' ARP lease")?;
    }
    let ha_addresses = match (&cfg.ha, &cfg.dataplane) {
        (Some(h), Some(_)) => {
            let addresses = Addresses::new(h.addresses.clone())
                .context("managing the floating addresses (route netlink)")?;
            // Whatever a previous run left behind is not ours until the peers agree again:
            // answering ARP for it now could make two owners.
            addresses
                .release()
                .await
                .context("removing the floating addresses at start")?;
            info!(addresses = ?h.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), priority = h.priority, "floating addresses released until this node is elected");
            Some(AddressWorker::spawn(addresses))
        }
        _ => None,
    };

    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    let socket = Arc::new(
        UdpSocket::bind(ctl.listen)
            .await
            .with_context(|| format!("binding the peer socket (UDP) {}", ctl.listen))?,
    );
    let api_listener = TcpListener::bind(ctl.listen).await.with_context(|| {
        format!(
            "binding the Sentinel-compatible API (TCP) {}: is another controller running?",
            ctl.listen
        )
    })?;
    let codec = PeerCodec::new(
        &ctl.id,
        &ctl.secret,
        ctl.peers.iter().map(|p| p.id.clone()).collect(),
        boot,
    );
    // Receiving needs its own codec state (replay windows); sealing stays in the main task.
    let rx_codec = PeerCodec::new(
        &ctl.id,
        &ctl.secret,
        ctl.peers.iter().map(|p| p.id.clone()).collect(),
        boot,
    );
    let names: Vec<String> = cfg.services.iter().map(|s| s.name.clone()).collect();
    let metrics = Arc::new(Metrics::new());
    spawn_peer_receiver(
        socket.clone(),
        rx_codec,
        names.clone(),
        tx.clone(),
        metrics.clone(),
    );
    spawn_probes(&cfg.services, &ctl, &tx, &metrics)?;

    let (status_tx, status_rx) = watch::channel(Status::default());
    let events = Arc::new(EventHub::new());
    let api = Arc::new(Api {
        services: cfg.services.clone(),
        peer_validity_ms: all_params
            .iter()
            .map(|p| p.peer_report_validity_ms)
            .collect(),
        status: status_rx.clone(),
        events: events.clone(),
        control: {
            // The API's requests join the executor's input as `Input::Control`.
            let (control_tx, mut control_rx) = mpsc::channel::<ControlRequest>(16);
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(request) = control_rx.recv().await {
                    if tx.send(Input::Control(request)).await.is_err() {
                        return;
                    }
                }
            });
            control_tx
        },
        listen: ctl.listen,
        started: start,
    });
    tokio::spawn(sentinel_api::serve(api_listener, api));
    if let Some(addr) = ctl.metrics_listen {
        let (status_rx, metrics) = (status_rx.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = http::serve(addr, status_rx, metrics).await {
                error!(%addr, "the HTTP endpoint (/metrics, status page) stopped: {e:#}");
            }
        });
    }

    let mut ex = Executor {
        peers: ctl
            .peers
            .iter()
            .map(|p| (ControllerId(p.id.clone()), p.addr))
            .collect(),
        warm_until: (ctl.probe_interval_ms * 4).max(500),
        held_pools: vec![None; machines.len()],
        views: machines
            .iter()
            .map(|m| View {
                nodes: m.nodes().map(|n| (n, NodeView::default())).collect(),
                peers: ctl
                    .peers
                    .iter()
                    .map(|p| (p.id.clone(), PeerView::default()))
                    .collect(),
                ..View::default()
            })
            .collect(),
        services: cfg.services.clone(),
        ctl,
        names,
        start,
        store,
        codec,
        socket,
        dataplane,
        interfaces,
        targets,
        machines,
        tx,
        status: status_tx,
        events,
        metrics,
        dataplane_counters: None,
        ha,
        ha_addresses,
        ha_acquired: 0,
        ha_lease_written: 0,
    };

    let mut pending: VecDeque<Input> = VecDeque::new();
    let mut jitter = Jitter(boot | 1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ha_tick = tokio::time::interval(ha_tick);
    ha_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    info!(id = %ex.ctl.id, listen = %ex.ctl.listen, services = ex.names.len(), "controller started");
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;

    // A tick of the ownership machine that did nothing changes nothing to show.
    let mut changed = true;
    loop {
        for (i, actions) in first.drain(..) {
            let fed = ex.perform(i, actions).await;
            pending.extend(fed);
        }
        let input = if let Some(p) = pending.pop_front() {
            p
        } else {
            // Everything decided so far is performed: show it before waiting.
            if changed {
                ex.publish_status();
            }
            changed = true;
            tokio::select! {
                Some(input) = rx.recv() => input,
                _ = tick.tick() => {
                    let now = now_ms(start);
                    if now >= ex.warm_until {
                        for (i, held) in ex.held_pools.iter_mut().enumerate() {
                            if let Some(pool) = held.take() {
                                first.push((i, vec![Action::SetReadPool(pool)]));
                            }
                        }
                    }
                    for (i, m) in ex.machines.iter_mut().enumerate() {
                        let actions = m.step(Event::Tick, now, jitter.next());
                        if !actions.is_empty() {
                            first.push((i, actions));
                        }
                    }
                    continue;
                }
                _ = ha_tick.tick() => {
                    let actions = ex.ha.step(HaEvent::Tick, now_ms(start));
                    changed = actions.iter().any(|a| !matches!(a, HaAction::Send { .. }));
                    ex.perform_ha(actions).await;
                    continue;
                }
                _ = &mut shutdown => break,
                _ = sigterm.recv() => break,
            }
        };
        let now = now_ms(start);
        if let Input::Ha { from, msg } = input {
            let actions = ex.ha.step(HaEvent::Peer { from, msg }, now);
            ex.perform_ha(actions).await;
            continue;
        }
        if let Some((service, event)) = ex.accept(input) {
            let actions = ex.machines[service].step(event, now, jitter.next());
            if !actions.is_empty() {
                first.push((service, actions));
            }
        }
    }
    let actions = ex.ha.step(HaEvent::Shutdown, now_ms(start));
    ex.perform_ha(actions).await;
    if let Some(worker) = &ex.ha_addresses {
        // The release must be done before the process is, or the addresses would outlive it.
        worker.flush(Duration::from_secs(2)).await;
    }
    info!("controller stopping; the data plane keeps forwarding (pinned)");
    Ok(())
}

/// Receives, authenticates and forwards peer datagrams.
fn spawn_peer_receiver(
    socket: Arc<UdpSocket>,
    mut codec: PeerCodec,
    names: Vec<String>,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            match codec.open(&buf[..n]) {
                Ok((from, _, Payload::Ha(msg))) => {
                    if tx.send(Input::Ha { from, msg }).await.is_err() {
                        return;
                    }
                }
                Ok((peer, service, Payload::Service(msg))) => {
                    if let Some(i) = names.iter().position(|s| *s == service) {
                        let input = Input::Event {
                            service: i,
                            event: Event::Peer { from: peer, msg },
                        };
                        if tx.send(input).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    metrics.peer_refused(match e {
                        Refused::BadMac => "bad-mac",
                        Refused::UnknownPeer(_) => "unknown-peer",
                        Refused::Replay(_) => "replay",
                        Refused::Short | Refused::Malformed(_) => "malformed",
                    });
                    warn!(%from, "refused peer message: {e}");
                }
            }
        }
    });
}

/// One task per node, each with its own connection, probing every probe interval.
fn spawn_probes(
    services: &[ServiceConfig],
    ctl: &ControllerConfig,
    tx: &mpsc::Sender<Input>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    for (i, svc) in services.iter().enumerate() {
        let interval = Duration::from_millis(ctl.probe_interval_ms);
        let timeout = Duration::from_millis(params(svc, ctl).probe_timeout_ms());
        for node in &svc.backends {
            let mut prober = Prober::new(*node, svc.failover.auth.as_ref(), timeout)
                .with_context(|| format!("probe client for {node}"))?;
            let tx = tx.clone();
            let metrics = metrics.clone();
            let (service_name, node_name) = (svc.name.clone(), node.to_string());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let started = Instant::now();
                    let result = prober.probe().await;
                    let latency = started.elapsed();
                    let ok = matches!(result, ProbeResult::Ok(_));
                    metrics.observe_probe(&service_name, &node_name, ok, latency);
                    let input = Input::Probe {
                        service: i,
                        node: prober.addr(),
                        result,
                        latency: ok.then_some(latency),
                    };
                    if tx.send(input).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    Ok(())
}

impl Executor {
    /// Takes note of an input; returns the event for a machine, if it is one.
    fn accept(&mut self, input: Input) -> Option<(usize, Event)> {
        match input {
            Input::Event { service, event } => {
                if let Event::Peer { from, msg } = &event
                    && let Some(peer) = self.views[service].peers.get_mut(&from.0)
                {
                    peer.last_heard = Some(Instant::now());
                    if let PeerMsg::Hello(hello) = msg {
                        peer.hello = Some(hello.clone());
                    }
                }
                Some((service, event))
            }
            Input::Probe {
                service,
                node,
                result,
                latency,
            } => {
                let view = self.views[service].nodes.entry(node).or_default();
                if let ProbeResult::Ok(info) = &result {
                    view.info = Some(info.clone());
                    view.last_ok = Some(Instant::now());
                    if latency.is_some() {
                        view.latency = latency;
                    }
                }
                Some((service, Event::Probe { node, result }))
            }
            Input::Control(ControlRequest::Failover {
                service,
                to,
                timeout_ms,
                wait,
                reply,
            }) => {
                let Some(i) = self.names.iter().position(|n| *n == service) else {
                    let _ = reply.send(Err(ApiError::new("ERR", "No such master with that name")));
                    return None;
                };
                let idle = self.machines[i].phase() == FailoverPhase::Idle;
                if self.views[i]
                    .switchover
                    .as_ref()
                    .is_some_and(|s| idle && !s.resuming && s.outcome.is_none())
                {
                    // The machine is idle and nothing is in flight, yet no outcome came: an
                    // attempt that ended without one. Do not let it block the operator forever.
                    warn!(service = %service, "dropping a forced failover that never reported its end");
                    if let Some(reply) = self.views[i].switchover.take().and_then(|s| s.reply) {
                        let _ = reply.send(Err(ApiError::new(
                            "ERR",
                            "the failover ended without an outcome",
                        )));
                    }
                }
                if self.views[i].switchover.is_some() {
                    // The machine may be idle again while the old master's writes are still
                    // being resumed: one operator failover at a time.
                    let _ =
                        reply.send(Err(ApiError::new("INPROG", "Failover already in progress")));
                    return None;
                }
                self.views[i].switchover = Some(Switchover {
                    requested: Instant::now(),
                    reply: Some(reply),
                    wait,
                    paused_at: None,
                    resumed_at: None,
                    resuming: false,
                    outcome: None,
                });
                let timeout_ms = timeout_ms.unwrap_or(DEFAULT_SWITCHOVER_TIMEOUT_MS);
                Some((i, Event::ForceFailover { to, timeout_ms }))
            }
            Input::Paused { service, at } => {
                if let Some(s) = &mut self.views[service].switchover {
                    s.paused_at = Some(at);
                }
                None
            }
            // Stepped by the main loop before it gets here.
            Input::Ha { .. } => None,
            Input::Resumed { service, ok, at } => {
                if let Some(s) = &mut self.views[service].switchover {
                    s.resuming = false;
                    s.resumed_at = Some(at);
                    if let Some(paused) = s.paused_at {
                        let ms = at.duration_since(paused).as_secs_f64() * 1000.0;
                        info!(service = %self.names[service], ok, "writes resumed after a pause of {ms:.1} ms");
                    }
                }
                self.answer_switchover(service);
                None
            }
        }
    }

    /// Performs the ownership machine's actions in order: the state file first (a vote must not
    /// leave before it is durable), then the messages, addresses and events; then hands the
    /// (possibly moved) lease to the data plane.
    async fn perform_ha(&mut self, actions: Vec<HaAction>) {
        self.perform_ha_actions(actions).await;
        self.refresh_ha_lease();
    }

    async fn perform_ha_actions(&mut self, actions: Vec<HaAction>) {
        for action in actions {
            match action {
                HaAction::Persist(p) => {
                    if let Err(e) = self.store.put_ha(&p) {
                        error!("cannot persist the floating addresses' vote, not sending it: {e}");
                        return;
                    }
                }
                HaAction::Send { to, msg } => {
                    let datagram = self.codec.seal_ha(&msg);
                    for (id, addr) in &self.peers {
                        if to.as_ref().is_none_or(|t| t == id)
                            && let Err(e) = self.socket.send_to(&datagram, addr).await
                        {
                            warn!(to = %addr, "peer send failed: {e}");
                        }
                    }
                }
                HaAction::Acquire { epoch } => {
                    if let Some(worker) = &self.ha_addresses {
                        worker.acquire(epoch);
                        self.ha_acquired += 1;
                    }
                }
                HaAction::Release { epoch, reason } => {
                    if let Some(worker) = &self.ha_addresses {
                        worker.release(epoch, reason);
                    }
                }
                HaAction::Notice { name, payload } => {
                    info!(event = name, "{payload}");
                    self.events.publish(EventRecord {
                        at_unix_ms: unix_ms(),
                        service: HA_EVENTS.to_owned(),
                        name: name.to_owned(),
                        payload,
                    });
                }
            }
        }
    }

    /// Hands the lease to the data plane, which answers ARP for the floating addresses only
    /// until it runs out: if this process dies while holding them, they fall silent within
    /// the lease even though they stay configured.
    fn refresh_ha_lease(&mut self) {
        let Some(worker) = &self.ha_addresses else {
            return;
        };
        let Some(dp) = self.dataplane.as_mut() else {
            return;
        };
        let now = now_ms(self.start);
        let until_ns = match self.ha.lease_until(now) {
            Some(until) if until > now => {
                monotonic_ns().saturating_add((until - now).saturating_mul(1_000_000))
            }
            _ => 0,
        };
        // Each acknowledgement moves the lease on by a heartbeat or so; smaller moves are
        // clock noise between the two readings.
        let moved = if until_ns == 0 {
            self.ha_lease_written != 0
        } else {
            until_ns > self.ha_lease_written + 2_000_000
        };
        if !moved {
            return;
        }
        let addresses: Vec<std::net::Ipv4Addr> =
            worker.addresses().iter().map(|a| a.address).collect();
        match dp.set_floating_leases(&addresses, until_ns) {
            Ok(()) => self.ha_lease_written = until_ns,
            Err(e) => error!("writing the floating addresses' ARP lease: {e}"),
        }
    }

    fn ha_status(&self) -> Option<HaStatus> {
        let now = now_ms(self.start);
        let owner = self.ha.owner(now).map(|(id, _)| id.0.clone());
        if self.ha_addresses.is_none() && self.ha.epoch() == 0 && owner.is_none() {
            // Nobody in the cluster uses [ha].
            return None;
        }
        let ha = self.ha_addresses.as_ref();
        let holding_since_unix_ms = self
            .ha
            .owning_since()
            .map(|since| unix_ms().saturating_sub(now.saturating_sub(since)));
        Some(HaStatus {
            role: self.ha.role().into(),
            owner,
            epoch: self.ha.epoch(),
            addresses: ha.map_or_else(Vec::new, |a| {
                a.addresses().iter().map(ToString::to_string).collect()
            }),
            priority: self.ha.candidacy().map(|c| c.priority),
            preempt: self.ha.candidacy().is_some_and(|c| c.preempt),
            holding: holding_since_unix_ms.is_some(),
            holding_since_unix_ms,
            acquired: self.ha_acquired,
        })
    }

    /// Performs one machine's actions in order; returns events to feed back (data-plane acks).
    async fn perform(&mut self, service: usize, actions: Vec<Action>) -> Vec<Input> {
        let name = self.names[service].clone();
        let mut fed = Vec::new();
        for action in actions {
            match action {
                Action::Emit(notice) => {
                    info!(target: "redis_ha::event", service = %name, event = notice.kind.as_str(), "{notice}");
                    match notice.kind {
                        NoticeKind::SwitchMaster => {
                            self.views[service].failovers += 1;
                            self.metrics.failover_finished(&name, "switched");
                        }
                        kind if kind.as_str().starts_with("-failover-abort") => {
                            self.metrics
                                .failover_finished(&name, kind.as_str().trim_start_matches('-'));
                        }
                        _ => {}
                    }
                    self.events.publish(EventRecord {
                        at_unix_ms: unix_ms(),
                        service: name.clone(),
                        name: notice.kind.as_str().to_owned(),
                        payload: notice.payload,
                    });
                }
                Action::Persist(p) => {
                    if let Err(e) = self.store.put(&name, &p) {
                        // Without durable state a vote could be cast twice after a crash: stop
                        // performing this batch (the vote or hello that follows must not leave).
                        error!(service = %name, "persisting state failed, dropping the rest of this step: {e}");
                        break;
                    }
                }
                Action::SendToPeers(msg) => {
                    for (_, addr) in &self.peers {
                        send(&self.socket, &mut self.codec, &name, &msg, *addr).await;
                    }
                }
                Action::ReplyVote { to, epoch, leader } => {
                    if let Some((_, addr)) = self.peers.iter().find(|(id, _)| *id == to) {
                        let msg = PeerMsg::VoteReply { epoch, leader };
                        send(&self.socket, &mut self.codec, &name, &msg, *addr).await;
                    }
                }
                Action::PromoteReplica { node } => {
                    self.spawn_command(service, node, failover::Command::PromoteReplica);
                }
                Action::ReplicaOf { node, master } => {
                    self.spawn_command(service, node, failover::Command::ReplicaOf { master });
                }
                Action::SetMaster { epoch, node } => {
                    let t = &mut self.targets[service];
                    let before = (t.master, t.epoch);
                    t.master = Some(node);
                    t.epoch = t.epoch.max(epoch);
                    let ok = apply(&mut self.dataplane, &self.targets, &name);
                    if !ok {
                        let t = &mut self.targets[service];
                        (t.master, t.epoch) = before;
                    }
                    fed.push(Input::Event {
                        service,
                        event: Event::MasterApplied { epoch, node, ok },
                    });
                }
                Action::SetReadPool(pool) => {
                    if now_ms(self.start) < self.warm_until {
                        self.held_pools[service] = Some(pool);
                        continue;
                    }
                    self.targets[service].read_pool = pool;
                    apply(&mut self.dataplane, &self.targets, &name);
                }
                Action::PauseAndSync {
                    master,
                    target,
                    pause_ms,
                    timeout_ms,
                } => {
                    info!(service = %name, %master, %target, pause_ms, timeout_ms, "planned switchover: pausing writes until the target caught up");
                    let svc = &self.services[service];
                    let io = SwitchoverIo::new(svc);
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let ok = io
                            .pause_and_sync(service, master, target, pause_ms, timeout_ms, &tx)
                            .await;
                        let _ = tx
                            .send(Input::Event {
                                service,
                                event: Event::Synced { target, ok },
                            })
                            .await;
                    });
                }
                Action::ResumeWrites { node, demote_to } => {
                    if let Some(s) = &mut self.views[service].switchover {
                        s.resuming = true;
                    }
                    let io = SwitchoverIo::new(&self.services[service]);
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let (ok, at) = io.resume_writes(node, demote_to).await;
                        let _ = tx.send(Input::Resumed { service, ok, at }).await;
                    });
                }
                Action::Forced(outcome) => self.on_forced(service, outcome),
            }
        }
        fed
    }

    /// Answers the operator who asked for a forced failover, as it progresses.
    fn on_forced(&mut self, service: usize, outcome: ForcedOutcome) {
        let name = &self.names[service];
        let Some(s) = &mut self.views[service].switchover else {
            // Not ours (cannot happen: only the API asks), or already answered and gone.
            return;
        };
        match outcome {
            ForcedOutcome::Refused(refused) => {
                info!(service = %name, "failover refused: {refused}");
                let code = match refused {
                    ForceRefused::InProgress
                    | ForceRefused::PeerInProgress { .. }
                    | ForceRefused::LostElection { .. } => "INPROG",
                    ForceRefused::NoMajority { .. } => "NOQUORUM",
                    ForceRefused::NoGoodReplica | ForceRefused::NotEligible { .. } => "NOGOODSLAVE",
                    ForceRefused::UnknownNode(_) | ForceRefused::AlreadyMaster(_) => "ERR",
                };
                if let Some(reply) = s.reply.take() {
                    let _ = reply.send(Err(ApiError::new(code, refused.to_string())));
                }
                self.views[service].switchover = None;
            }
            ForcedOutcome::Started {
                epoch,
                target,
                paused,
            } => {
                info!(service = %name, epoch, %target, paused, "forced failover started");
                if !s.wait
                    && let Some(reply) = s.reply.take()
                {
                    let _ = reply.send(Ok("OK".to_owned()));
                }
            }
            ForcedOutcome::Switched { .. } | ForcedOutcome::Aborted { .. } => {
                s.outcome = Some(outcome);
                self.answer_switchover(service);
            }
        }
    }

    /// Once the outcome is known and the old master's writes resumed: answer and forget.
    fn answer_switchover(&mut self, service: usize) {
        let name = self.names[service].clone();
        let Some(s) = &mut self.views[service].switchover else {
            return;
        };
        if s.resuming {
            return;
        }
        let Some(outcome) = s.outcome.take() else {
            return;
        };
        let pause_ms = match (s.paused_at, s.resumed_at) {
            (Some(p), Some(r)) => Some(r.duration_since(p).as_secs_f64() * 1000.0),
            _ => None,
        };
        let total_ms = s.requested.elapsed().as_secs_f64() * 1000.0;
        let answer = match outcome {
            ForcedOutcome::Switched { epoch, from, to } => {
                let report = SwitchoverReport {
                    service: name.clone(),
                    epoch,
                    from: from.to_string(),
                    to: to.to_string(),
                    write_pause_ms: pause_ms,
                    total_ms,
                };
                info!(service = %name, epoch, %from, %to, write_pause_ms = ?pause_ms, total_ms, "forced failover switched");
                serde_json::to_string(&report)
                    .map_err(|e| ApiError::new("ERR", format!("encoding the report: {e}")))
            }
            ForcedOutcome::Aborted { epoch, reason } => {
                let resumed = pause_ms.map_or(String::new(), |ms| {
                    format!("; writes resumed after a pause of {ms:.1} ms")
                });
                let message = format!(
                    "failover of {name} in epoch {epoch} aborted ({reason}): the write port was not \
                     moved{resumed}"
                );
                warn!(service = %name, "{message}");
                Err(ApiError::new("ABORTED", message))
            }
            // Not stored as an outcome.
            ForcedOutcome::Refused(_) | ForcedOutcome::Started { .. } => return,
        };
        if let Some(reply) = s.reply.take() {
            let _ = reply.send(answer);
        }
        self.views[service].switchover = None;
    }

    fn spawn_command(&self, service: usize, node: NodeAddr, command: failover::Command) {
        let svc = &self.services[service];
        let tx = self.tx.clone();
        let auth = svc.failover.auth.clone();
        let timeout = Duration::from_millis((svc.failover.down_after_ms).clamp(100, 2000));
        tokio::spawn(async move {
            let Ok(mut p) = Prober::new(node, auth.as_ref(), timeout) else {
                let event = Event::CommandDone {
                    node,
                    command,
                    ok: false,
                };
                let _ = tx.send(Input::Event { service, event }).await;
                return;
            };
            let ok = p.command(&command).await;
            info!(%node, ?command, ok, "command sent");
            let done = Event::CommandDone { node, command, ok };
            let _ = tx
                .send(Input::Event {
                    service,
                    event: done,
                })
                .await;
            if ok {
                // Probe at once: a promotion is confirmed by the node reporting role:master,
                // and waiting for the next periodic probe would add up to one interval.
                let result = p.probe().await;
                let _ = tx
                    .send(Input::Probe {
                        service,
                        node,
                        result,
                        latency: None,
                    })
                    .await;
            }
        });
    }

    /// Rebuilds the snapshot and publishes it (the data plane's counters at most every
    /// [`DATAPLANE_REFRESH`]).
    fn publish_status(&mut self) {
        let now = Instant::now();
        let stale = self
            .dataplane_counters
            .as_ref()
            .is_none_or(|(at, _)| now.duration_since(*at) >= DATAPLANE_REFRESH);
        if stale && let Some(dp) = &mut self.dataplane {
            let previous = self.dataplane_counters.as_ref().map(|(_, c)| c);
            match DataplaneCounters::read(dp, previous, now) {
                Ok(c) => self.dataplane_counters = Some((now, c)),
                Err(e) => warn!("reading the data plane's counters: {e}"),
            }
        }
        let status = Status {
            controller: self.ctl.id.clone(),
            listen: Some(self.ctl.listen),
            at_unix_ms: unix_ms(),
            services: (0..self.services.len())
                .map(|i| self.service_status(i, now))
                .collect(),
            dataplane: self.dataplane.as_ref().map(|dp| {
                let counters = self.dataplane_counters.as_ref().map(|(_, c)| c);
                dataplane_status(
                    dp,
                    counters,
                    &self.interfaces,
                    &self.services,
                    &self.targets,
                )
            }),
            ha: self.ha_status(),
        };
        self.status.send_replace(status);
    }

    fn service_status(&self, i: usize, now: Instant) -> ServiceStatus {
        let svc = &self.services[i];
        let m = &self.machines[i];
        let view = &self.views[i];
        let target = &self.targets[i];
        let ms_since = |t: Option<Instant>| t.map(|t| now.duration_since(t).as_millis() as u64);
        let nodes = m
            .nodes()
            .map(|addr| {
                let v = view.nodes.get(&addr);
                let info = v.and_then(|v| v.info.as_ref());
                let mut n = NodeStatus {
                    addr,
                    role: NodeRole::Unknown,
                    sdown: m.is_sdown(addr),
                    in_read_pool: target.read_pool.contains(&addr),
                    last_ok_ms_ago: ms_since(v.and_then(|v| v.last_ok)),
                    probe_latency_ms: v.and_then(|v| v.latency).map(|d| d.as_secs_f64() * 1000.0),
                    run_id: info.and_then(|i| i.run_id.clone()),
                    ..NodeStatus::default()
                };
                match info.map(|i| &i.role) {
                    Some(Role::Master { repl_offset }) => {
                        n.role = NodeRole::Master;
                        n.repl_offset = Some(*repl_offset);
                    }
                    Some(Role::Replica(r)) => {
                        n.role = NodeRole::Replica;
                        n.master = Some(r.master);
                        n.link_up = Some(r.link_up);
                        // Unknown while the link is down (the probe reports "very stale").
                        n.lag_ms = r.link_up.then_some(r.lag_ms);
                        n.repl_offset = Some(r.repl_offset);
                        n.priority = Some(r.priority);
                    }
                    None => {}
                }
                n
            })
            .collect();
        let peers = self
            .ctl
            .peers
            .iter()
            .map(|p| {
                let v = view.peers.get(&p.id);
                let hello = v.and_then(|v| v.hello.as_ref());
                let heard = v.and_then(|v| v.last_heard);
                PeerStatus {
                    id: p.id.clone(),
                    addr: p.addr,
                    last_heard_ms_ago: ms_since(heard),
                    master: hello.map(|h| h.master),
                    config_epoch: hello.map(|h| h.config_epoch),

                    agrees: hello.is_some_and(|h| {
                        h.master == m.advertised_master() && h.config_epoch == m.config_epoch()
                    }),
                }
            })
            .collect();
        ServiceStatus {
            name: svc.name.clone(),
            vip: svc.vip,
            write_port: svc.write_port,
            read_port: svc.read_port,
            // Sentinel's current master address: the promoted replica from the moment the write
            // port moved to it, before the reconfiguration of the others ends.
            master: m.advertised_master(),
            config_epoch: m.config_epoch(),
            current_epoch: m.current_epoch(),
            quorum: svc.failover.quorum,
            down_after_ms: svc.failover.down_after_ms,
            failover_phase: m.phase().into(),
            odown: m.is_odown(),
            nodes,
            read_pool: target.read_pool.clone(),
            peers,
            failovers: view.failovers,
        }
    }
}

/// What the data plane counted, as last read.
#[derive(Default)]
struct DataplaneCounters {
    /// Per backend slot.
    backends: BTreeMap<u32, redis_ha_common::BackendStats>,
    packets: BTreeMap<String, u64>,
    flow_entries: usize,
    flows_spilled: bool,
    /// When the connection table was last swept (and its entries counted).
    swept_at: Option<Instant>,
}

impl DataplaneCounters {
    /// Also sweeps the connection table (see [`crate::dataplane::sweep`]) and counts its
    /// entries, at most every [`FLOW_SWEEP_INTERVAL`]: that reads the whole table, two
    /// syscalls an entry. In between, `previous`'s count stands.
    fn read(
        dp: &mut BpfDataplane,
        previous: Option<&DataplaneCounters>,
        now: Instant,
    ) -> Result<Self, crate::dataplane::bpf::BpfError> {
        let fresh = previous.and_then(|p| {
            let at = p.swept_at?;
            (now.duration_since(at) < FLOW_SWEEP_INTERVAL).then_some((
                at,
                p.flow_entries,
                p.flows_spilled,
            ))
        });
        let (swept_at, flow_entries, flows_spilled) = match fresh {
            Some(f) => f,
            None => {
                let (entries, spilled) = Self::sweep(dp)?;
                (now, entries, spilled)
            }
        };
        Ok(Self {
            backends: dp.backend_stats()?.into_iter().collect(),
            packets: dp
                .counters()?
                .iter()
                .enumerate()
                .map(|(i, v)| (counter::NAMES[i].to_owned(), *v))
                .collect(),
            flow_entries,
            flows_spilled,
            swept_at: Some(swept_at),
        })
    }

    /// One sweep; the entries left, and whether `FLOWS` was ever full since load.
    fn sweep(dp: &mut BpfDataplane) -> Result<(usize, bool), crate::dataplane::bpf::BpfError> {
        let sweep = dp.sweep_flows(monotonic_ns())?;
        if sweep.removed > 0 {
            debug!(
                removed = sweep.removed,
                "swept ended connections from FLOWS"
            );
        }
        let spilled = dp.spilling_since()?;
        if let Some(since) = spilled {
            // Once a load: the time stays set until the data plane is loaded again.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                warn!(
                    since_s_ago = monotonic_ns().saturating_sub(since) / 1_000_000_000,
                    "the connection table FLOWS was full: new connections went to FLOWS_SPILL, \
                     which works but costs more per packet; raise [dataplane] flow_table_size"
                )
            });
        }
        Ok((sweep.entries, spilled.is_some()))
    }
}

/// The data plane's part of the status: every configured backend with its role and
/// readability as applied now, and its traffic as last read.
fn dataplane_status(
    dp: &BpfDataplane,
    counters: Option<&DataplaneCounters>,
    interfaces: &[(String, String)],
    services: &[ServiceConfig],
    targets: &[ServiceTarget],
) -> DataplaneStatus {
    let mut backends = Vec::new();
    for (i, svc) in services.iter().enumerate() {
        let t = &targets[i];
        for (j, addr) in svc.backends.iter().enumerate() {
            let slot = backend_slot(i as u32, j);
            let s = counters
                .and_then(|c| c.backends.get(&slot).copied())
                .unwrap_or_default();
            backends.push(BackendTraffic {
                service: svc.name.clone(),
                addr: *addr,
                slot,
                is_master: t.master == Some(*addr),
                readable: t.read_pool.contains(addr),
                packets_in: s.packets_in,
                bytes_in: s.bytes_in,
                packets_out: s.packets_out,
                bytes_out: s.bytes_out,
                new_flows: s.new_flows,
                flows_reset: s.flows_reset,
                flows_closed: s.flows_closed,
            });
        }
    }
    DataplaneStatus {
        pin_dir: dp.pin_dir().display().to_string(),
        interfaces: interfaces.to_vec(),
        backends,
        counters: counters.map(|c| c.packets.clone()).unwrap_or_default(),
        flow_entries: counters.map_or(0, |c| c.flow_entries),
        flows_spilled: counters.is_some_and(|c| c.flows_spilled),
    }
}

/// The Redis I/O of a planned switchover, on connections of its own (the probes' connections
/// must keep probing meanwhile).
struct SwitchoverIo {
    auth: Option<RedisAuth>,
    timeout: Duration,
}

impl SwitchoverIo {
    fn new(svc: &ServiceConfig) -> Self {
        Self {
            auth: svc.failover.auth.clone(),
            timeout: switchover_timeout(svc),
        }
    }

    fn prober(&self, node: NodeAddr) -> Option<Prober> {
        Prober::new(node, self.auth.as_ref(), self.timeout)
            .inspect_err(|e| warn!(%node, "switchover client: {e}"))
            .ok()
    }

    /// `CLIENT PAUSE <pause_ms> WRITE` on `master`, then polls both nodes until `target`'s
    /// `slave_repl_offset` equals the master's `master_repl_offset` (at most `timeout_ms`).
    /// Writes already acknowledged are in the master's offset once the pause is accepted, so
    /// equal offsets mean the target has every one of them.
    async fn pause_and_sync(
        &self,
        service: usize,
        master: NodeAddr,
        target: NodeAddr,
        pause_ms: Millis,
        timeout_ms: Millis,
        tx: &mpsc::Sender<Input>,
    ) -> bool {
        let (Some(mut m), Some(mut t)) = (self.prober(master), self.prober(target)) else {
            return false;
        };
        let mut pause = redis::cmd("CLIENT");
        pause.arg("PAUSE").arg(pause_ms).arg("WRITE");
        if let Err(e) = m.query::<()>(&pause).await {
            warn!(%master, "switchover: CLIENT PAUSE failed: {e}");
            return false;
        }
        let _ = tx
            .send(Input::Paused {
                service,
                at: Instant::now(),
            })
            .await;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut info = redis::cmd("INFO");
        info.arg("replication");
        let mut polls = 0u32;
        loop {
            let poll = async {
                let m_text: String = m.query(&info).await.ok()?;
                let t_text: String = t.query(&info).await.ok()?;
                match (probe::parse_role(&m_text)?, probe::parse_role(&t_text)?) {
                    (Role::Master { repl_offset }, Role::Replica(r)) if r.master == master => {
                        Some((repl_offset, r.repl_offset))
                    }
                    _ => None,
                }
            };
            // The bound holds even for a node that stops answering mid-way.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Ok(offsets) = tokio::time::timeout(remaining, poll).await else {
                warn!(%master, %target, timeout_ms, "switchover: no answer about the offsets in time");
                return false;
            };
            polls += 1;
            match offsets {
                Some((m_off, t_off)) if t_off >= m_off => {
                    info!(%master, %target, offset = m_off, polls, "switchover: the target caught up");
                    return true;
                }
                Some((m_off, t_off)) if Instant::now() >= deadline => {
                    warn!(%master, %target, timeout_ms, behind = m_off - t_off, "switchover: the target did not catch up in time");
                    return false;
                }
                Some(_) => {}
                None => {
                    // Roles changed under us or a node refused: no switchover.
                    warn!(%master, %target, "switchover: cannot compare replication offsets");
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Ends a switchover's write pause on `node`. With `demote_to`: `REPLICAOF` it first, then
    /// close its normal clients, then unpause, so that a write the pause held can only fail
    /// (`READONLY` or a closed connection), never be acknowledged by a node whose data the new
    /// master's is about to replace. Returns whether the unpause was accepted, and when.
    async fn resume_writes(&self, node: NodeAddr, demote_to: Option<NodeAddr>) -> (bool, Instant) {
        let Some(mut p) = self.prober(node) else {
            return (false, Instant::now());
        };
        if let Some(master) = demote_to {
            let mut replicaof = redis::cmd("REPLICAOF");
            replicaof.arg(master.ip().to_string()).arg(master.port());
            if let Err(e) = p.query::<()>(&replicaof).await {
                // Closing the clients below still keeps the held writes from being
                // acknowledged; the machine demotes it later (+convert-to-slave).
                warn!(%node, %master, "switchover: demoting the old master failed: {e}");
            }
            let mut kill = redis::cmd("CLIENT");
            kill.arg("KILL").arg("TYPE").arg("normal");
            if let Err(e) = p.query::<redis::Value>(&kill).await {
                warn!(%node, "switchover: CLIENT KILL TYPE normal failed: {e}");
            }
        }
        let ok = match p.query::<()>(redis::cmd("CLIENT").arg("UNPAUSE")).await {
            Ok(()) => true,
            Err(e) => {
                warn!(%node, "switchover: CLIENT UNPAUSE failed (the pause expires by itself): {e}");
                false
            }
        };
        let resumed = Instant::now();
        if demote_to.is_some() {
            // Only so that a restart keeps the new role (it may fail: no config file); after the
            // unpause, since it writes and syncs a file.
            let _ = p.query::<()>(redis::cmd("CONFIG").arg("REWRITE")).await;
        }
        (ok, resumed)
    }
}

fn apply(dataplane: &mut Option<BpfDataplane>, targets: &[ServiceTarget], name: &str) -> bool {
    let Some(dp) = dataplane else {
        // A controller without a data plane has nothing to write; the decision stands.
        return true;
    };
    match sync(dp, targets) {
        Ok(ops) => {
            if !ops.is_empty() {
                info!(service = %name, writes = ops.len(), "data plane updated");
            }
            true
        }
        Err(e) => {
            error!(service = %name, "data plane update failed: {e}");
            false
        }
    }
}

async fn send(
    socket: &UdpSocket,
    codec: &mut PeerCodec,
    service: &str,
    msg: &PeerMsg,
    to: SocketAddr,
) {
    let datagram = codec.seal(service, msg);
    if let Err(e) = socket.send_to(&datagram, to).await {
        warn!(%to, "peer send failed: {e}");
    }
}
