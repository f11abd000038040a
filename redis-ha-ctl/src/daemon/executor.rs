//! The event loop: the one task that owns the machines and the data plane. It accepts inputs
//! (probe results, peer messages, command results, operator requests, ticks), steps the
//! machines and performs their actions in order, so decisions and map writes are strictly
//! ordered. Whatever waits on the network runs on other tasks and comes back as an [`Input`].

#[path = "follow.rs"]
mod follow;
#[path = "reload.rs"]
pub(super) mod reload;

use std::{collections::VecDeque, future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};
use tracing::{error, info, warn};

use super::{
    control::{ApiError, ControlRequest, EventHub},
    failpoint::Failpoint,
    floating::Floating,
    hostnames::{Lookup, Watched},
    operator::Operator,
    peers::PeerSender,
    redis_io,
    resume::Machines,
    snapshot::{self, Attached, ServiceView},
    traffic::DataplaneCounters,
    warmup::ReadPoolHold,
};
use crate::{
    config::{ControllerConfig, ServiceConfig},
    dataplane::{Dataplane, ServiceTarget, sync},
    failover::{
        self, Action, Command, ControllerId, Event, Millis, NodeAddr, NoticeKind, PeerMsg,
        Persisted, ProbeResult, ServiceMachine,
    },
    ha::{HaAction, HaEvent, HaMsg, net::AddressWorker},
    metrics::Metrics,
    persist::StateStore,
    status::{EventRecord, ReloadStatus, Status},
};
use reload::Reloading;

/// An input for the executor.
pub(super) enum Input {
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
    /// Read the config file again and apply what changed (`SIGHUP`).
    Reload,
    /// A backend name's lookup differs from the last one sent (see `hostnames`).
    Resolved { name: String, lookup: Lookup },
}

/// Sentinel's timer runs at 10 Hz; so do the failover machines' ticks.
const TICK: Duration = Duration::from_millis(100);

pub(super) fn now_ms(start: Instant) -> Millis {
    start.elapsed().as_millis() as Millis
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
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

/// Everything the executor is built from; [`super::run`] gathers it, the tests fake it.
pub(super) struct Parts<D> {
    pub(super) services: Vec<ServiceConfig>,
    pub(super) ctl: ControllerConfig,
    /// The origin of the machines' clock.
    pub(super) start: Instant,
    pub(super) store: StateStore,
    pub(super) machines: Machines,
    pub(super) dataplane: Option<D>,
    pub(super) attached: Option<Attached>,
    /// The data plane's counters, as the traffic task last read them.
    pub(super) traffic: watch::Receiver<Option<DataplaneCounters>>,
    pub(super) peers: PeerSender,
    pub(super) ha_addresses: Option<AddressWorker>,
    /// A sender of the executor's own input, for the tasks it spawns.
    pub(super) tx: mpsc::Sender<Input>,
    pub(super) status: watch::Sender<Status>,
    pub(super) events: Arc<EventHub>,
    pub(super) metrics: Arc<Metrics>,
    /// Seeds the election jitter: differs on every start.
    pub(super) seed: u64,
    /// The test hook `REDIS_HA_FAILPOINT`, if set.
    pub(super) failpoint: Failpoint,
    /// What a reload of the config needs (`None`: this executor does not reload).
    pub(super) reloading: Option<Reloading>,
    /// Where the backend names to resolve go, for the resolver task (`None`: none runs).
    pub(super) resolving: Option<watch::Sender<Vec<String>>>,
}

/// The executor's state: owned by one task.
pub(super) struct Executor<D> {
    services: Vec<ServiceConfig>,
    ctl: ControllerConfig,
    names: Vec<String>,
    start: Instant,
    store: StateStore,
    peers: PeerSender,
    dataplane: Option<D>,
    /// Where the data plane is pinned and how it is attached, for the status.
    attached: Option<Attached>,
    traffic: watch::Receiver<Option<DataplaneCounters>>,
    targets: Vec<ServiceTarget>,
    machines: Vec<ServiceMachine>,
    /// The machines' first actions, until the loop performs them.
    first: Vec<(usize, Vec<Action>)>,
    /// Per service: what the status shows beyond the machine's own accessors.
    views: Vec<ServiceView>,
    /// Per service: the operator's switchover in flight, if any.
    operators: Vec<Operator>,
    /// Read-pool changes held back just after the start.
    read_pools: ReadPoolHold,
    tx: mpsc::Sender<Input>,
    status: watch::Sender<Status>,
    events: Arc<EventHub>,
    metrics: Arc<Metrics>,
    jitter: Jitter,
    /// The floating addresses' ownership machine, and what this node does about it.
    floating: Floating,
    /// Per service: the last state whose write failed, until one succeeds. While set, what the
    /// peers could take for our vote does not leave (see [`Self::durable`]).
    undurable: Vec<Option<Persisted>>,
    failpoint: Failpoint,
    reloading: Option<Reloading>,
    /// How the last reload went, for the status.
    last_reload: Option<ReloadStatus>,
    /// The backends given by name, and the address each name has now.
    hosts: Watched,
    resolving: Option<watch::Sender<Vec<String>>>,
}

impl<D: Dataplane> Executor<D> {
    pub(super) fn new(parts: Parts<D>) -> Self {
        let Parts {
            services,
            ctl,
            start,
            store,
            machines,
            dataplane,
            attached,
            traffic,
            peers,
            ha_addresses,
            tx,
            status,
            events,
            metrics,
            seed,
            failpoint,
            reloading,
            resolving,
        } = parts;
        let Machines {
            targets,
            machines,
            first,
            ha,
            ha_tick,
        } = machines;
        Self {
            names: services.iter().map(|s| s.name.clone()).collect(),
            views: machines
                .iter()
                .map(|m| ServiceView::new(m, &ctl.peers))
                .collect(),
            operators: machines.iter().map(|_| Operator::default()).collect(),
            read_pools: ReadPoolHold::after_start(machines.len(), ctl.probe_interval_ms),
            jitter: Jitter(seed | 1),
            undurable: vec![None; services.len()],
            failpoint,
            reloading,
            last_reload: None,
            hosts: Watched::of(&services),
            resolving,
            services,
            ctl,
            start,
            store,
            peers,
            dataplane,
            attached,
            traffic,
            targets,
            machines,
            first,
            tx,
            status,
            events,
            metrics,
            floating: Floating::new(ha, ha_tick, ha_addresses),
        }
    }

    fn now(&self) -> Millis {
        now_ms(self.start)
    }

    /// Runs until `shutdown` completes, then gives up the floating addresses.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut first = std::mem::take(&mut self.first);
        let mut pending: VecDeque<Input> = VecDeque::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watchdog = super::watchdog::Watchdog::from_env();
        let mut ha_tick = tokio::time::interval(self.floating.tick);
        ha_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        // A tick of the ownership machine that did nothing changes nothing to show.
        let mut changed = true;
        loop {
            for (i, actions) in first.drain(..) {
                let fed = self.perform(i, actions).await;
                pending.extend(fed);
            }
            let input = if let Some(p) = pending.pop_front() {
                p
            } else {
                // Everything decided so far is performed: show it before waiting.
                if changed {
                    self.publish_status();
                }
                changed = true;
                tokio::select! {
                    Some(input) = rx.recv() => input,
                    _ = tick.tick() => {
                        watchdog.ping(Instant::now());
                        first = self.tick(self.now());
                        continue;
                    }
                    _ = ha_tick.tick() => {
                        let actions = self.floating.machine.step(HaEvent::Tick, self.now());
                        changed = actions.iter().any(|a| !matches!(a, HaAction::Send { .. }));
                        self.perform_ha(actions).await;
                        continue;
                    }
                    () = &mut shutdown => break,
                }
            };
            let now = self.now();
            if let Input::Ha { from, msg } = input {
                let actions = self.floating.machine.step(HaEvent::Peer { from, msg }, now);
                self.perform_ha(actions).await;
                continue;
            }
            if let Input::Reload = input {
                first.extend(self.reload());
                continue;
            }
            if let Input::Resolved { name, lookup } = &input {
                first.extend(self.resolved(name, lookup));
                continue;
            }
            if let Some((service, event)) = self.accept(input) {
                let actions = self.machines[service].step(event, now, self.jitter.next());
                if !actions.is_empty() {
                    first.push((service, actions));
                }
            }
        }
        let actions = self.floating.machine.step(HaEvent::Shutdown, self.now());
        self.perform_ha(actions).await;
        self.floating.flush().await;
    }

    /// The machines' timer; returns what to perform: the read pools held since the start,
    /// once that hold ends, then each machine's actions.
    fn tick(&mut self, now: Millis) -> Vec<(usize, Vec<Action>)> {
        // A state that could not be written is tried again (quietly: the failure was logged
        // and counted): once there is room, a restart must not go back to an older file.
        for i in 0..self.undurable.len() {
            if let Some(p) = &self.undurable[i]
                && self.store.put(&self.names[i], p).is_ok()
            {
                self.undurable[i] = None;
                info!(service = %self.names[i], state_file = %self.store.path().display(), "state file written again: votes resume");
            }
        }
        let mut out: Vec<(usize, Vec<Action>)> = self
            .read_pools
            .release(now)
            .into_iter()
            .map(|(i, pool)| (i, vec![Action::SetReadPool(pool)]))
            .collect();
        // Moves a failover held back: followed once it is over.
        out.extend(self.follow_moves());
        for (i, m) in self.machines.iter_mut().enumerate() {
            let actions = m.step(Event::Tick, now, self.jitter.next());
            if !actions.is_empty() {
                out.push((i, actions));
            }
        }
        out
    }

    /// Takes note of an input; returns the event for a machine, if it is one.
    fn accept(&mut self, input: Input) -> Option<(usize, Event)> {
        // Sent before a reload removed its service (a probe, a peer's message, a command's
        // result): nobody is left to take it.
        if let Input::Event { service, .. }
        | Input::Probe { service, .. }
        | Input::Paused { service, .. }
        | Input::Resumed { service, .. } = &input
            && *service >= self.machines.len()
        {
            return None;
        }
        match input {
            Input::Event { service, event } => {
                if let Event::Peer { from, msg } = &event {
                    self.views[service].heard(from, msg, Instant::now());
                }
                if let Event::CommandDone {
                    command: Command::PromoteReplica,
                    ok: true,
                    ..
                } = &event
                {
                    self.failpoint.hit("after-promote-command");
                }
                Some((service, event))
            }
            Input::Probe {
                service,
                node,
                result,
                latency,
            } => {
                self.views[service].probed(node, &result, latency, Instant::now());
                Some((service, Event::Probe { node, result }))
            }
            Input::Control(request) => {
                let service = match &request {
                    ControlRequest::Failover { service, .. } => service,
                };
                let Some(i) = self.names.iter().position(|n| n == service) else {
                    match request {
                        ControlRequest::Failover { reply, .. } => {
                            let _ = reply
                                .send(Err(ApiError::new("ERR", "No such master with that name")));
                        }
                    }
                    return None;
                };
                let idle = self.machines[i].phase() == failover::FailoverPhase::Idle;
                let event = self.operators[i].request(&self.names[i], idle, request)?;
                Some((i, event))
            }
            Input::Paused { service, at } => {
                self.operators[service].paused(at);
                None
            }
            // Handled by the main loop before it gets here.
            Input::Ha { .. } | Input::Reload | Input::Resolved { .. } => None,
            Input::Resumed { service, ok, at } => {
                self.operators[service].resumed(&self.names[service], ok, at);
                None
            }
        }
    }

    /// Performs the ownership machine's actions (see [`Floating::perform`]).
    async fn perform_ha(&mut self, actions: Vec<HaAction>) {
        let dataplane = self.dataplane.as_mut();
        let (store, peers, events) = (&mut self.store, &mut self.peers, &self.events);
        self.floating
            .perform(actions, store, peers, events, dataplane, self.start)
            .await;
    }

    /// Performs one machine's actions in order; returns events to feed back (data-plane acks).
    async fn perform(&mut self, service: usize, actions: Vec<Action>) -> Vec<Input> {
        let name = self.names[service].clone();
        let mut fed = Vec::new();
        // Within the batch that confirms our promotion: the failpoints' steps.
        let mut promoted = false;
        for action in actions {
            match action {
                Action::Emit(notice) if notice.kind == NoticeKind::PromotedSlave => {
                    promoted = true;
                    self.emit(service, &name, notice);
                }
                Action::Emit(notice) => self.emit(service, &name, notice),
                Action::Persist(p) => {
                    // A failed write stops only what would spread an undurable vote (below):
                    // the data plane must still follow a master the majority elected.
                    self.persist(service, &name, p);
                    if promoted {
                        self.failpoint.hit("after-promoted-persist");
                    }
                }
                Action::SendToPeers(msg @ PeerMsg::VoteRequest { .. }) => {
                    if self.durable(service, &name, "asking for votes") {
                        self.peers.send_to_all(&name, &msg).await;
                    }
                }
                Action::SendToPeers(msg) => {
                    self.peers.send_to_all(&name, &msg).await;
                    if promoted {
                        self.failpoint.hit("after-promoted-announce");
                    }
                }
                Action::ReplyVote { to, epoch, leader } => {
                    if self.durable(service, &name, "answering a vote request") {
                        let msg = PeerMsg::VoteReply { epoch, leader };
                        self.peers.send_to(&to, &name, &msg).await;
                    }
                }
                Action::PromoteReplica { node } => {
                    self.command(service, node, failover::Command::PromoteReplica);
                }
                Action::ReplicaOf { node, master } => {
                    self.command(service, node, failover::Command::ReplicaOf { master });
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
                    if promoted {
                        self.failpoint.hit("after-promoted-switch");
                    }
                }
                Action::SetReadPool(pool) => {
                    let Some(pool) = self.read_pools.offer(service, pool, self.now()) else {
                        continue;
                    };
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
                    redis_io::spawn_pause_and_sync(
                        &self.services[service],
                        service,
                        master,
                        target,
                        pause_ms,
                        timeout_ms,
                        &self.tx,
                    );
                }
                Action::ResumeWrites { node, demote_to } => {
                    self.operators[service].resuming();
                    let svc = &self.services[service];
                    redis_io::spawn_resume_writes(svc, service, node, demote_to, &self.tx);
                }
                Action::Forced(outcome) => self.operators[service].forced(&name, outcome),
            }
        }
        fed
    }

    /// Tells operators: log, metrics, pub/sub.
    fn emit(&mut self, service: usize, name: &str, mut notice: failover::Notice) {
        // The log says what the API's subscribers get (names, with announce_hostnames).
        notice.payload = self.services[service].announce_in(&notice.payload);
        info!(target: "redis_ha::event", service = %name, event = notice.kind.as_str(), "{notice}");
        match notice.kind {
            NoticeKind::SwitchMaster => {
                self.views[service].failovers += 1;
                self.metrics.failover_finished(name, "switched");
            }
            NoticeKind::SafeMode => {
                warn!(service = %name, state_file = %self.store.path().display(), "safe mode: not voting and not starting a failover until a majority of the other controllers told the current epoch");
            }
            NoticeKind::Tilt => self.views[service].tilt_since_unix_ms = Some(unix_ms()),
            NoticeKind::TiltCleared => self.views[service].tilt_since_unix_ms = None,
            kind if kind.as_str().starts_with("-failover-abort") => {
                self.metrics
                    .failover_finished(name, kind.as_str().trim_start_matches('-'));
            }
            _ => {}
        }
        self.events.publish(EventRecord {
            at_unix_ms: unix_ms(),
            service: name.to_owned(),
            name: notice.kind.as_str().to_owned(),
            payload: notice.payload,
        });
    }

    /// Writes `p`; on failure remembers it as not durable (see [`Self::durable`]).
    fn persist(&mut self, service: usize, name: &str, p: Persisted) {
        match self.store.put(name, &p) {
            Ok(()) => {
                if self.undurable[service].take().is_some() {
                    info!(service = %name, state_file = %self.store.path().display(), "state file written again: votes resume");
                }
            }
            Err(e) => {
                self.metrics.state_write_failed(name);
                error!(service = %name, "persisting state failed; no vote leaves until it is durable, everything else goes on: {e}");
                self.undurable[service] = Some(p);
            }
        }
    }

    /// Whether our state is durable, so that a vote (ours as a candidate, or our answer) may
    /// leave: a controller that restarts having forgotten a vote could vote twice in an epoch.
    /// After a failed write, writes it again first; if that fails too, the vote is withheld
    /// (we abstain), which costs at most this election.
    fn durable(&mut self, service: usize, name: &str, doing: &str) -> bool {
        let Some(p) = self.undurable[service].clone() else {
            return true;
        };
        if self.store.put(name, &p).is_ok() {
            self.undurable[service] = None;
            info!(service = %name, state_file = %self.store.path().display(), "state file written again: votes resume");
            return true;
        }
        self.metrics.state_write_failed(name);
        self.metrics.vote_withheld(name);
        warn!(service = %name, state_file = %self.store.path().display(), "not {doing}: the state holding the vote could not be written");
        false
    }

    /// Sends `command` to `node` on a task of its own; the result comes back as an input.
    fn command(&self, service: usize, node: NodeAddr, command: failover::Command) {
        redis_io::spawn_command(&self.services[service], service, node, command, &self.tx);
    }

    /// Rebuilds the snapshot and publishes it, with the data plane's counters as the traffic
    /// task last read them.
    fn publish_status(&mut self) {
        let now = Instant::now();
        let counters = self.traffic.borrow();
        let status = Status {
            controller: self.ctl.id.clone(),
            listen: Some(self.ctl.listen),
            at_unix_ms: unix_ms(),
            services: (0..self.services.len())
                .map(|i| {
                    snapshot::service_status(
                        &self.services[i],
                        &self.ctl.peers,
                        &self.machines[i],
                        &self.views[i],
                        &self.targets[i],
                        now,
                    )
                })
                .collect(),
            dataplane: self.attached.as_ref().map(|attached| {
                snapshot::dataplane_status(
                    attached,
                    counters.as_ref(),
                    &self.services,
                    &self.targets,
                )
            }),
            ha: snapshot::ha_status(
                &self.floating.machine,
                self.floating.addresses.as_ref(),
                self.floating.acquired,
                now_ms(self.start),
            ),
            reload: self.last_reload.clone(),
        };
        drop(counters);
        self.status.send_replace(status);
    }
}

/// Brings the data plane to `targets`; whether it took them (a controller without a data
/// plane has nothing to write, and its decision stands).
fn apply<D: Dataplane>(dataplane: &mut Option<D>, targets: &[ServiceTarget], name: &str) -> bool {
    let Some(dp) = dataplane else {
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
