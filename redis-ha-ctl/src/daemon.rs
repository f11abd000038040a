//! `redis-ha-ctl run`: the executor around the pure failover machines. It probes every
//! backend, carries peer messages, performs the machines' actions in order (persisting votes
//! before they leave the host) and, on data-plane nodes, writes the result into the maps.
//!
//! One task owns all machines and the data plane, so decisions and map writes are strictly
//! ordered; probes, commands and the peer socket run in their own tasks and talk to it over a
//! channel.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{net::UdpSocket, sync::mpsc};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ControllerConfig, ReadFromMaster as CfgRead, ServiceConfig},
    dataplane::{Dataplane as _, ServiceTarget, bpf::BpfDataplane, sync},
    failover::{
        self, Action, ControllerId, Event, MachineConfig, Millis, Params, PeerMsg, Persisted,
        ServiceMachine,
    },
    peer::{MAX_DATAGRAM, PeerCodec},
    persist::StateStore,
    probe::Prober,
};

/// An input for the machine of service `service` (index into the config's services).
struct Input {
    service: usize,
    event: Event,
}

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

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let ctl = cfg.controller.clone().with_context(|| {
        format!(
            "{}: no [controller] section: `run` needs one (id, listen, peers, secret)",
            config_path.display()
        )
    })?;
    let start = Instant::now();
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);

    let mut store = StateStore::open(&ctl.state_file)?;
    let mut dataplane = match &cfg.dataplane {
        Some(dpc) => {
            let (dp, attachments) = BpfDataplane::load_and_attach(dpc)?;
            for a in &attachments {
                info!(interface = %a.interface, mode = a.mode, new = a.newly_attached, "data plane attached");
            }
            Some(dp)
        }
        None => None,
    };
    let snapshot = match &dataplane {
        Some(dp) => Some(dp.snapshot()?),
        None => None,
    };
    let mut targets: Vec<ServiceTarget> = cfg
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
    let mut pending: VecDeque<Input> = VecDeque::new();
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
        let mc = MachineConfig {
            service: svc.name.clone(),
            me: ControllerId(ctl.id.clone()),
            peers: peer_ids.clone(),
            master: svc.backends[0],
            replicas: svc.backends[1..].to_vec(),
            params: params(svc, &ctl),
        };
        let (machine, actions) = ServiceMachine::new(mc, persisted, now_ms(start))
            .with_context(|| format!("service {}", svc.name))?;
        machines.push(machine);
        // The current master and read pool go through the same path as every other action.
        first.push((i, actions));
    }

    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    let socket = Arc::new(
        UdpSocket::bind(ctl.listen)
            .await
            .with_context(|| format!("binding the peer socket (UDP) {}", ctl.listen))?,
    );
    let mut codec = PeerCodec::new(
        &ctl.id,
        &ctl.secret,
        ctl.peers.iter().map(|p| p.id.clone()).collect(),
        boot,
    );
    // Receiving needs its own codec state (replay windows); sealing stays in the main task.
    let mut rx_codec = PeerCodec::new(
        &ctl.id,
        &ctl.secret,
        ctl.peers.iter().map(|p| p.id.clone()).collect(),
        boot,
    );
    let names: Vec<String> = cfg.services.iter().map(|s| s.name.clone()).collect();
    {
        let socket = socket.clone();
        let tx = tx.clone();
        let names = names.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                match rx_codec.open(&buf[..n]) {
                    Ok((peer, service, msg)) => {
                        if let Some(i) = names.iter().position(|s| *s == service) {
                            let _ = tx
                                .send(Input {
                                    service: i,
                                    event: Event::Peer { from: peer, msg },
                                })
                                .await;
                        }
                    }
                    Err(e) => warn!(%from, "refused peer message: {e}"),
                }
            }
        });
    }

    // Probes: one task per node, each with its own connection.
    for (i, svc) in cfg.services.iter().enumerate() {
        let interval = Duration::from_millis(ctl.probe_interval_ms);
        let timeout = Duration::from_millis((svc.failover.down_after_ms / 2).clamp(50, 1000));
        for node in &svc.backends {
            let mut prober = Prober::new(*node, svc.failover.auth.as_ref(), timeout)
                .with_context(|| format!("probe client for {node}"))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let result = prober.probe().await;
                    let event = Event::Probe {
                        node: prober.addr(),
                        result,
                    };
                    if tx.send(Input { service: i, event }).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    let peers: Vec<(ControllerId, SocketAddr)> = ctl
        .peers
        .iter()
        .map(|p| (ControllerId(p.id.clone()), p.addr))
        .collect();
    let mut jitter = Jitter(boot | 1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until every node has been probed a few times the machines know nothing of replica
    // health; holding back read-pool changes until then keeps a restart from emptying the pool
    // the pinned maps are serving.
    let warm_until = (ctl.probe_interval_ms * 4).max(500);
    let mut held_pools: Vec<Option<Vec<failover::NodeAddr>>> = vec![None; machines.len()];

    info!(id = %ctl.id, listen = %ctl.listen, services = names.len(), "controller started");
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;

    loop {
        for (i, actions) in first.drain(..) {
            let fed = perform(
                i,
                actions,
                &names,
                &mut store,
                &mut codec,
                &socket,
                &peers,
                &mut dataplane,
                &mut targets,
                &cfg.services,
                &tx,
                now_ms(start) < warm_until,
                &mut held_pools,
            )
            .await;
            pending.extend(fed);
        }
        let input = if let Some(p) = pending.pop_front() {
            p
        } else {
            tokio::select! {
                Some(input) = rx.recv() => input,
                _ = tick.tick() => {
                    let now = now_ms(start);
                    if now >= warm_until {
                        for (i, held) in held_pools.iter_mut().enumerate() {
                            if let Some(pool) = held.take() {
                                first.push((i, vec![Action::SetReadPool(pool)]));
                            }
                        }
                    }
                    for (i, m) in machines.iter_mut().enumerate() {
                        let actions = m.step(Event::Tick, now, jitter.next());
                        if !actions.is_empty() {
                            first.push((i, actions));
                        }
                    }
                    continue;
                }
                _ = &mut shutdown => break,
                _ = sigterm.recv() => break,
            }
        };
        let now = now_ms(start);
        let actions = machines[input.service].step(input.event, now, jitter.next());
        if !actions.is_empty() {
            first.push((input.service, actions));
        }
    }
    info!("controller stopping; the data plane keeps forwarding (pinned)");
    Ok(())
}

/// Performs one machine's actions in order; returns events to feed back (data-plane acks).
#[expect(
    clippy::too_many_arguments,
    reason = "the executor's state, passed explicitly"
)]
async fn perform(
    service: usize,
    actions: Vec<Action>,
    names: &[String],
    store: &mut StateStore,
    codec: &mut PeerCodec,
    socket: &UdpSocket,
    peers: &[(ControllerId, SocketAddr)],
    dataplane: &mut Option<BpfDataplane>,
    targets: &mut [ServiceTarget],
    services: &[ServiceConfig],
    tx: &mpsc::Sender<Input>,
    warming_up: bool,
    held_pools: &mut [Option<Vec<failover::NodeAddr>>],
) -> Vec<Input> {
    let name = &names[service];
    let mut fed = Vec::new();
    for action in actions {
        match action {
            Action::Emit(notice) => {
                info!(target: "redis_ha::event", service = %name, event = notice.kind.as_str(), "{notice}");
            }
            Action::Persist(p) => {
                if let Err(e) = store.put(name, &p) {
                    // Without durable state a vote could be cast twice after a crash: stop
                    // performing this batch (the vote or hello that follows must not leave).
                    error!(service = %name, "persisting state failed, dropping the rest of this step: {e}");
                    break;
                }
            }
            Action::SendToPeers(msg) => {
                for (_, addr) in peers {
                    send(socket, codec, name, &msg, *addr).await;
                }
            }
            Action::ReplyVote { to, epoch, leader } => {
                if let Some((_, addr)) = peers.iter().find(|(id, _)| *id == to) {
                    send(
                        socket,
                        codec,
                        name,
                        &PeerMsg::VoteReply { epoch, leader },
                        *addr,
                    )
                    .await;
                }
            }
            Action::PromoteReplica { node } => {
                spawn_command(
                    service,
                    node,
                    failover::Command::PromoteReplica,
                    &services[service],
                    tx,
                );
            }
            Action::ReplicaOf { node, master } => {
                spawn_command(
                    service,
                    node,
                    failover::Command::ReplicaOf { master },
                    &services[service],
                    tx,
                );
            }
            Action::SetMaster { epoch, node } => {
                let t = &mut targets[service];
                let before = (t.master, t.epoch);
                t.master = Some(node);
                t.epoch = t.epoch.max(epoch);
                let ok = apply(dataplane, targets, name);
                if !ok {
                    let t = &mut targets[service];
                    (t.master, t.epoch) = before;
                }
                fed.push(Input {
                    service,
                    event: Event::MasterApplied { epoch, node, ok },
                });
            }
            Action::SetReadPool(pool) => {
                if warming_up {
                    held_pools[service] = Some(pool);
                    continue;
                }
                targets[service].read_pool = pool;
                apply(dataplane, targets, name);
            }
        }
    }
    fed
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

fn spawn_command(
    service: usize,
    node: failover::NodeAddr,
    command: failover::Command,
    svc: &ServiceConfig,
    tx: &mpsc::Sender<Input>,
) {
    let tx = tx.clone();
    let auth = svc.failover.auth.clone();
    let timeout = Duration::from_millis((svc.failover.down_after_ms).clamp(100, 2000));
    tokio::spawn(async move {
        let Ok(mut p) = Prober::new(node, auth.as_ref(), timeout) else {
            let event = Event::CommandDone {
                node,
                command,
                ok: false,
            };
            let _ = tx.send(Input { service, event }).await;
            return;
        };
        let ok = p.command(&command).await;
        info!(%node, ?command, ok, "command sent");
        let done = Event::CommandDone { node, command, ok };
        let _ = tx
            .send(Input {
                service,
                event: done,
            })
            .await;
        if ok {
            // Probe at once: a promotion is confirmed by the node reporting role:master, and
            // waiting for the next periodic probe would add up to one interval to the failover.
            let result = p.probe().await;
            let _ = tx
                .send(Input {
                    service,
                    event: Event::Probe { node, result },
                })
                .await;
        }
    });
}
