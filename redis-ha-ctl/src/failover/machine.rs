//! The per-service state machine: Sentinel's master-level logic, with time and randomness as inputs.

use std::collections::{BTreeMap, BTreeSet};

use super::health::{Flip, Liveness};
use super::select::{self, Candidate};
use super::{
    Action, Command, ControllerId, Epoch, Event, ForceRefused, ForcedOutcome, Hello, Millis,
    NodeAddr, NodeInfo, Notice, NoticeKind, Params, PeerMsg, Persisted, ProbeResult,
    ReadFromMaster, ReplicaInfo, Role, Vote,
};

/// Static description of one monitored service, as seen by one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// The service (Sentinel's master name), used in notices.
    pub service: String,
    /// This controller.
    pub me: ControllerId,
    /// The other controllers monitoring this service. All of them count as voters: a leader needs
    /// a majority of `peers.len() + 1` even when some are unreachable, which is what keeps a
    /// minority partition from failing over.
    pub peers: Vec<ControllerId>,
    /// The initial master (superseded by a persisted one).
    pub master: NodeAddr,
    /// The other nodes. Every node is probed and may become master.
    pub replicas: Vec<NodeAddr>,
    pub params: Params,
}

/// A configuration that cannot work, with what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error("quorum must be at least 1")]
    ZeroQuorum,
    #[error(
        "quorum {quorum} exceeds the {controllers} controllers (this one and its peers): no failover \
         could ever happen; lower the quorum or list more peers"
    )]
    QuorumTooLarge { quorum: usize, controllers: usize },
    #[error("{field} must be greater than 0")]
    Zero { field: &'static str },
    #[error(
        "hello_interval_ms ({hello_interval_ms}) must be shorter than peer_report_validity_ms \
         ({peer_report_validity_ms}), or peer reports expire between two hellos"
    )]
    HelloTooRare {
        hello_interval_ms: Millis,
        peer_report_validity_ms: Millis,
    },
    #[error("controller {id} lists itself among its peers; remove it from the peers")]
    SelfInPeers { id: ControllerId },
    #[error("peer {id} is listed twice")]
    DuplicatePeer { id: ControllerId },
}

/// Where the failover of this service stands, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailoverPhase {
    /// No failover in progress.
    Idle,
    /// We are a candidate in `epoch`, collecting votes.
    Election { epoch: Epoch },
    /// A planned switchover in `epoch`: writes are paused on the master while `target` catches
    /// up.
    Sync { epoch: Epoch, target: NodeAddr },
    /// Elected; waiting for `promoted` to report `role:master`.
    Promotion { epoch: Epoch, promoted: NodeAddr },
    /// `promoted` is master; the other replicas are being pointed at it.
    Reconfiguration { epoch: Epoch, promoted: NodeAddr },
}

/// What we know about one Redis node.
#[derive(Clone, Debug)]
struct Node {
    liveness: Liveness,
    /// The last INFO it gave us.
    info: Option<NodeInfo>,
    /// The last INFO it gave us as a replica. A replica promoted by a leader that then died
    /// reports `role:master`; this still says how far it had replicated, so that the next leader
    /// may pick it (Sentinel keeps its stale `slave_repl_offset` the same way).
    last_replica: Option<ReplicaInfo>,
    /// When its reported role (or the master it follows) last changed.
    role_since: Millis,
    /// When we last sent it a REPLICAOF outside a failover (demotion, fix-up): rate limit.
    last_command: Option<Millis>,
}

impl Node {
    fn new(now: Millis) -> Self {
        Self {
            liveness: Liveness::new(now),
            info: None,
            last_replica: None,
            role_since: now,
            last_command: None,
        }
    }

    fn role(&self) -> Option<&Role> {
        self.info.as_ref().map(|info| &info.role)
    }

    fn reports_master(&self) -> bool {
        matches!(self.role(), Some(Role::Master { .. }))
    }
}

/// The latest of what one peer told us; each part expires (Sentinel: 5 ask periods).
#[derive(Clone, Debug, Default)]
struct PeerReport {
    hello: Option<(Hello, Millis)>,
    vote: Option<(Vote, Millis)>,
    /// The epoch of a failover the peer stands for or runs, and when we last heard so: from its
    /// vote requests and its hellos' `failover_epoch`. A switch does not clear it, as it clears
    /// the rest: it is about the peer, not about the master.
    busy: Option<(Epoch, Millis)>,
}

/// Sentinel's `failover_state` with the data each state needs (its `SELECT_SLAVE` and
/// `SEND_SLAVEOF_NOONE` states last no time here, and `UPDATE_CONFIG` is the switch itself).
#[derive(Clone, Debug, Default)]
enum Failover {
    #[default]
    Idle,
    /// `WAIT_START`: we are a candidate in `epoch`. Re-ask for votes every hello interval.
    /// `forced`: an operator asked for this failover; it needs a majority (not the quorum), and
    /// ends with an answer to the operator whichever way it goes.
    Election {
        epoch: Epoch,
        last_ask: Millis,
        forced: Option<ForceRequest>,
    },
    /// A forced failover's planned switchover: writes paused on the master, waiting for
    /// [`Event::Synced`] about `target`. Given up after twice `timeout` without a report.
    Sync {
        epoch: Epoch,
        target: NodeAddr,
        since: Millis,
        timeout: Millis,
    },
    /// `WAIT_PROMOTION`: REPLICAOF NO ONE sent to `promoted` (or to resend when `!sent`).
    Promotion {
        epoch: Epoch,
        promoted: NodeAddr,
        since: Millis,
        sent: bool,
        /// Set when an operator forced this failover.
        forced: Option<Forced>,
    },
    /// `RECONF_SLAVES`.
    Reconfiguration(Reconfiguration),
}

/// An operator's failover request while its epoch's vote is under way.
#[derive(Clone, Copy, Debug)]
struct ForceRequest {
    /// The replica asked for, if any; checked again once elected.
    to: Option<NodeAddr>,
    /// The operator's bound: of the vote, then of the catch-up and the promotion.
    timeout: Millis,
    since: Millis,
}

/// What a forced failover carries through its promotion.
#[derive(Clone, Copy, Debug)]
struct Forced {
    /// The master when it started: paused (if `paused`), demoted once the promotion is
    /// confirmed.
    old_master: NodeAddr,
    /// Writes are paused on `old_master`: the promotion must be quick, and every way out
    /// resumes them.
    paused: bool,
    /// Bound of the promotion.
    timeout: Millis,
}

#[derive(Clone, Debug)]
struct Reconfiguration {
    epoch: Epoch,
    promoted: NodeAddr,
    since: Millis,
    /// Every node but the promoted one and the old master.
    replicas: BTreeMap<NodeAddr, Reconf>,
}

/// Progress of one replica toward the new master (Sentinel's `SRI_RECONF_*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reconf {
    Pending,
    Sent {
        at: Millis,
    },
    /// It follows the new master, link not up yet.
    InProgress,
    Done,
}

/// What we asked of the data plane's write port, and what it confirmed.
#[derive(Clone, Debug, Default)]
struct Dataplane {
    /// The last [`Action::SetMaster`]; epochs only grow.
    requested: Option<(Epoch, NodeAddr)>,
    /// The highest epoch the data plane confirmed.
    applied: Option<Epoch>,
    /// The last request failed: repeat it on the next tick.
    retry: bool,
}

/// One controller's decisions about one service. See the [module docs](super) for the contract.
#[derive(Clone, Debug)]
pub struct ServiceMachine {
    /// The service name, for notices.
    name: String,
    /// Our id: what we vote for when we are the candidate.
    me: ControllerId,
    /// Every other voter; their number sets the majority, reachable or not.
    peers: Vec<ControllerId>,
    params: Params,

    // What Persisted holds.
    /// The highest epoch seen: no vote in an epoch below it.
    current_epoch: Epoch,
    /// Our vote in the highest epoch we voted in; at most one per epoch.
    vote: Option<Vote>,
    /// The master we believe in; it changes only by `+switch-master`.
    master: NodeAddr,
    /// The epoch that made `master` master; a hello with a higher one wins.
    config_epoch: Epoch,

    /// Every node we probe-track, including old masters (future replicas).
    nodes: BTreeMap<NodeAddr, Node>,
    /// The latest hello and vote of each peer, for ODOWN and the election.
    reports: BTreeMap<ControllerId, PeerReport>,
    /// Whether `+odown` was emitted for the current master (reports only flips).
    odown: bool,
    failover: Failover,
    /// Sentinel's `failover_start_time`: when we last started a failover or voted for another
    /// candidate, plus jitter. No new attempt before twice the failover timeout after it.
    failover_start: Option<Millis>,
    /// When we first could have started a failover for the current ODOWN (see
    /// [`Self::start_failover_if_needed`]: controllers with lower ids go first).
    candidacy: Option<Millis>,
    /// What the write port was told, so that epochs only move forward.
    dataplane: Dataplane,
    /// The last [`Action::SetReadPool`] (`None` before the first), so only changes are sent.
    read_pool: Option<Vec<NodeAddr>>,
    /// The master the last `+switch-master` replaced, and when: its replicas may serve reads
    /// for a while (see [`Self::compute_read_pool`]).
    replaced: Option<(NodeAddr, Millis)>,
    /// When we last broadcast our view, to pace the periodic hello.
    last_hello: Option<Millis>,
    /// The `failover_epoch` of our last hello: a change is announced at once.
    announced_failover: Option<Epoch>,
}

impl ServiceMachine {
    /// A machine for one service, resuming from `persisted` if this controller ran before.
    /// Returns the initial actions: the write port's master and the (empty) read pool.
    pub fn new(
        config: MachineConfig,
        persisted: Option<Persisted>,
        now: Millis,
    ) -> Result<(Self, Vec<Action>), SetupError> {
        validate(&config)?;
        let (current_epoch, vote, master, config_epoch) = match persisted {
            Some(p) => (p.current_epoch, p.vote, p.master, p.config_epoch),
            None => (0, None, config.master, 0),
        };
        let nodes = std::iter::once(config.master)
            .chain(config.replicas)
            .chain(std::iter::once(master))
            .map(|addr| (addr, Node::new(now)))
            .collect();
        let mut machine = Self {
            name: config.service,
            me: config.me,
            peers: config.peers,
            params: config.params,
            current_epoch,
            vote,
            master,
            config_epoch,
            nodes,
            reports: BTreeMap::new(),
            odown: false,
            failover: Failover::Idle,
            failover_start: None,
            candidacy: None,
            dataplane: Dataplane::default(),
            read_pool: None,
            replaced: None,
            last_hello: None,
            announced_failover: None,
        };
        let mut out = Vec::new();
        machine.set_master(config_epoch, master, &mut out);
        machine.publish_read_pool(now, &mut out);
        Ok((machine, out))
    }

    /// Feed one event at time `now`; `jitter` is a fresh random number (see the module docs).
    pub fn step(&mut self, event: Event, now: Millis, jitter: Millis) -> Vec<Action> {
        let jitter = jitter.checked_rem(self.params.max_desync_ms).unwrap_or(0);
        let mut out = Vec::new();
        match event {
            Event::Tick => self.on_tick(now, jitter, &mut out),
            Event::Probe { node, result } => self.on_probe(node, result, now, &mut out),
            Event::Peer { from, msg } => self.on_peer(from, msg, now, jitter, &mut out),
            Event::CommandDone { node, command, ok } => self.on_command_done(node, command, ok),
            Event::MasterApplied { epoch, node, ok } => self.on_master_applied(epoch, node, ok),
            Event::ForceFailover { to, timeout_ms } => {
                if let Err(refused) = self.force_failover(to, timeout_ms, now, jitter, &mut out) {
                    out.push(Action::Forced(ForcedOutcome::Refused(refused)));
                }
            }
            Event::Synced { target, ok } => self.on_synced(target, ok, now, &mut out),
        }
        // Peers hold back their own failovers and votes while we run one: tell them as soon as
        // that starts or ends, not a hello interval later.
        if self.failover_in_flight() != self.announced_failover {
            self.send_hello(now, &mut out);
        }
        out
    }

    /// The master we believe in (the old one until our own failover ends).
    pub fn master(&self) -> NodeAddr {
        self.master
    }

    pub fn current_epoch(&self) -> Epoch {
        self.current_epoch
    }

    pub fn config_epoch(&self) -> Epoch {
        self.config_epoch
    }

    /// What [`Action::Persist`] last carried (or would carry now). The master is the one the
    /// config epoch names: from its promotion on, a failover's reconfiguration persists the
    /// promoted node, or a controller restarted before the end would name the old master in
    /// the new epoch (found by the randomised runs).
    pub fn persisted(&self) -> Persisted {
        Persisted {
            current_epoch: self.current_epoch,
            vote: self.vote.clone(),
            master: self.advertised_master(),
            config_epoch: self.config_epoch,
        }
    }

    pub fn phase(&self) -> FailoverPhase {
        match &self.failover {
            Failover::Idle => FailoverPhase::Idle,
            Failover::Election { epoch, .. } => FailoverPhase::Election { epoch: *epoch },
            Failover::Sync { epoch, target, .. } => FailoverPhase::Sync {
                epoch: *epoch,
                target: *target,
            },
            Failover::Promotion {
                epoch, promoted, ..
            } => FailoverPhase::Promotion {
                epoch: *epoch,
                promoted: *promoted,
            },
            Failover::Reconfiguration(r) => FailoverPhase::Reconfiguration {
                epoch: r.epoch,
                promoted: r.promoted,
            },
        }
    }

    /// The highest epoch the data plane confirmed applying ([`Event::MasterApplied`]).
    pub fn applied_epoch(&self) -> Option<Epoch> {
        self.dataplane.applied
    }

    /// Every node the executor should probe: the configured ones, plus any master a peer
    /// announced that was not in our configuration.
    pub fn nodes(&self) -> impl Iterator<Item = NodeAddr> + '_ {
        self.nodes.keys().copied()
    }

    /// Whether we consider `node` SDOWN.
    pub fn is_sdown(&self, node: NodeAddr) -> bool {
        self.nodes.get(&node).is_some_and(|n| !n.liveness.is_up())
    }

    pub fn is_odown(&self) -> bool {
        self.odown
    }

    /// The read pool last sent (it is recomputed on ticks and switches).
    pub fn read_pool(&self) -> &[NodeAddr] {
        self.read_pool.as_deref().unwrap_or_default()
    }

    // ----------------------------------------------------------------------------------------
    // Events.

    /// Sentinel's timer: `sentinelHandleRedisInstance` for our master and its replicas.
    fn on_tick(&mut self, now: Millis, jitter: Millis, out: &mut Vec<Action>) {
        self.expire_reports(now);
        let addrs: Vec<NodeAddr> = self.nodes.keys().copied().collect();
        for addr in addrs {
            self.refresh_health(addr, now, out);
        }
        self.check_odown(out);
        self.start_failover_if_needed(now, jitter, out);
        self.run_failover(now, jitter, out);
        if matches!(self.failover, Failover::Idle) {
            self.fix_roles(now, out);
        }
        if self.dataplane.retry
            && let Some((epoch, node)) = self.dataplane.requested
        {
            self.dataplane.retry = false;
            out.push(Action::SetMaster { epoch, node });
        }
        if self
            .last_hello
            .is_none_or(|at| now.saturating_sub(at) >= self.params.hello_interval_ms)
        {
            self.send_hello(now, out);
        }
        // Once per tick rather than after each probe: the probes of one round arrive one by one,
        // and the data plane should see the round's outcome, not every intermediate pool.
        self.publish_read_pool(now, out);
    }

    /// Sentinel's ping and INFO reply callbacks (`sentinelRefreshInstanceInfo`).
    fn on_probe(
        &mut self,
        addr: NodeAddr,
        result: ProbeResult,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Some(node) = self.nodes.get_mut(&addr) else {
            return;
        };
        let mut rebooted = false;
        match result {
            ProbeResult::Failed => node.liveness.observe(false, now),
            ProbeResult::Ok(info) => {
                node.liveness.observe(true, now);
                let old_run_id = node.info.as_ref().and_then(|i| i.run_id.as_deref());
                rebooted =
                    matches!((old_run_id, info.run_id.as_deref()), (Some(a), Some(b)) if a != b);
                if node.role().map(Role::follows) != Some(info.role.follows()) {
                    node.role_since = now;
                }
                if let Role::Replica(r) = &info.role {
                    node.last_replica = Some(r.clone());
                }
                node.info = Some(info);
            }
        }
        if rebooted {
            self.emit(out, NoticeKind::Reboot, self.describe(addr));
        }
        self.refresh_health(addr, now, out);
        self.track_failover(addr, now, out);
    }

    fn on_peer(
        &mut self,
        from: ControllerId,
        msg: PeerMsg,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) {
        if !self.peers.contains(&from) {
            return;
        }
        match msg {
            PeerMsg::Hello(hello) => self.on_hello(from, hello, now, out),
            PeerMsg::VoteRequest { epoch, master } => {
                // Sentinel looks the master up by address: no vote about a master we do not
                // monitor (any more), e.g. from a peer that missed a switch.
                if master != self.master {
                    return;
                }
                // Unlike Sentinel, no vote while another failover is under way (ours, or one
                // a peer told us of): two failovers in different epochs at once would promote
                // two replicas, and the writes the first one takes would be lost. The reply
                // still carries our vote as it stands, which does not count for this epoch.
                let busy = self.leads_failover() || self.failover_elsewhere(now, Some(&from));
                self.reports.entry(from.clone()).or_default().busy = Some((epoch, now));
                if busy {
                    if let Some(vote) = self.vote.clone() {
                        out.push(Action::ReplyVote {
                            to: from,
                            epoch: vote.epoch,
                            leader: vote.leader,
                        });
                    }
                    return;
                }
                if let Some(vote) = self.vote_leader(epoch, &from, now, jitter, out) {
                    out.push(Action::ReplyVote {
                        to: from,
                        epoch: vote.epoch,
                        leader: vote.leader,
                    });
                }
            }
            PeerMsg::VoteReply { epoch, leader } => {
                self.reports.entry(from).or_default().vote = Some((Vote { epoch, leader }, now));
                if let Failover::Election {
                    epoch,
                    last_ask,
                    forced,
                } = self.failover
                {
                    self.failover = self.election(epoch, last_ask, forced, now, jitter, out);
                }
            }
        }
    }

    /// Sentinel's `sentinelProcessHelloMessage`: adopt a higher epoch, and a newer master.
    fn on_hello(&mut self, from: ControllerId, hello: Hello, now: Millis, out: &mut Vec<Action>) {
        if hello.current_epoch > self.current_epoch {
            self.current_epoch = hello.current_epoch;
            self.emit(out, NoticeKind::NewEpoch, self.current_epoch.to_string());
            self.persist(out);
        }
        if hello.config_epoch > self.config_epoch {
            self.config_epoch = hello.config_epoch;
            if hello.master != self.advertised_master() {
                // Our own failover's reconfiguration, if any, ends here: its promoted node was
                // the master until this newer configuration.
                if let Failover::Reconfiguration(r) = &self.failover {
                    self.master = r.promoted;
                }
                let payload = format!(
                    "sentinel {from} @ {} {} {}",
                    self.name,
                    self.master.ip(),
                    self.master.port()
                );
                self.emit(out, NoticeKind::ConfigUpdateFrom, payload);
                self.supersede_forced(hello.master, out);
                self.switch_master(hello.master, now, out);
            } else {
                self.persist(out);
            }
        } else if hello.config_epoch == self.config_epoch
            && hello.master < self.advertised_master()
            && !matches!(self.failover, Failover::Reconfiguration(_))
        {
            // Two masters in one epoch: Sentinel adopts neither, and the controllers stay
            // split for good. Every controller keeps the lower address instead, so they all
            // end on the same one; if it does not take writes, the usual ways repair it (a
            // stray master is demoted, a master that reports a replica is failed over).
            let payload = format!(
                "sentinel {from} @ {} {} {} epoch {} {} {}",
                self.name,
                self.master.ip(),
                self.master.port(),
                hello.config_epoch,
                hello.master.ip(),
                hello.master.port()
            );
            self.emit(out, NoticeKind::ConfigConflict, payload);
            self.supersede_forced(hello.master, out);
            self.switch_master(hello.master, now, out);
        }
        // A hello sent before the sender's latest vote request (datagrams may be reordered)
        // says nothing about that request's failover.
        let report = self.reports.entry(from).or_default();
        if report
            .busy
            .is_none_or(|(epoch, _)| hello.current_epoch >= epoch)
        {
            report.busy = hello.failover_epoch.map(|epoch| (epoch, now));
        }
        // Stored after a switch (which forgets every report): this one is current.
        report.hello = Some((hello, now));
    }

    fn on_command_done(&mut self, node: NodeAddr, command: Command, ok: bool) {
        if ok {
            // Sent; the effect shows in later probes.
            return;
        }
        match (command, &mut self.failover) {
            (Command::PromoteReplica, Failover::Promotion { promoted, sent, .. })
                if *promoted == node =>
            {
                *sent = false;
            }
            (Command::ReplicaOf { master }, Failover::Reconfiguration(r))
                if master == r.promoted =>
            {
                if let Some(state @ Reconf::Sent { .. }) = r.replicas.get_mut(&node) {
                    *state = Reconf::Pending;
                }
            }
            // A demotion or fix-up is simply tried again after convert_delay_ms: a node that keeps
            // refusing must not get a command every tick.
            _ => {}
        }
    }

    fn on_master_applied(&mut self, epoch: Epoch, node: NodeAddr, ok: bool) {
        if self.dataplane.requested != Some((epoch, node)) {
            return; // Superseded.
        }
        if ok {
            self.dataplane.applied = self.dataplane.applied.max(Some(epoch));
            self.dataplane.retry = false;
        } else {
            self.dataplane.retry = true;
        }
    }

    // ----------------------------------------------------------------------------------------
    // SDOWN and ODOWN.

    /// Sentinel's `sentinelCheckSubjectivelyDown` for one node.
    fn refresh_health(&mut self, addr: NodeAddr, now: Millis, out: &mut Vec<Action>) {
        let is_master = addr == self.master;
        let grace = self.params.wrong_role_grace();
        let Some(node) = self.nodes.get_mut(&addr) else {
            return;
        };
        // A master that says it is a replica is as good as down once it has said so for long
        // enough (it will not take writes).
        let wrong_role = is_master
            && matches!(node.role(), Some(Role::Replica(_)))
            && now.saturating_sub(node.role_since) > grace;
        let Some(flip) = node.liveness.evaluate(now, wrong_role, &self.params) else {
            return;
        };
        let kind = match flip {
            Flip::Down => NoticeKind::Sdown,
            Flip::Up => NoticeKind::SdownCleared,
        };
        self.emit(out, kind, self.describe(addr));
        if is_master {
            // Peers need our view to reach ODOWN; do not make them wait for the next hello.
            self.send_hello(now, out);
        }
    }

    /// Sentinel's `sentinelCheckObjectivelyDown`: our SDOWN plus fresh peer reports of SDOWN of
    /// the same master reach the quorum.
    fn check_odown(&mut self, out: &mut Vec<Action>) {
        let own = !self.nodes[&self.master].liveness.is_up();
        let agreeing = if own {
            1 + self
                .reports
                .values()
                .filter_map(|r| r.hello.as_ref())
                .filter(|(h, _)| h.master == self.master && h.sdown.contains(&self.master))
                .count()
        } else {
            0
        };
        let odown = own && agreeing >= self.params.quorum;
        if odown == self.odown {
            return;
        }
        self.odown = odown;
        if odown {
            let payload = format!(
                "{} #quorum {agreeing}/{}",
                self.describe(self.master),
                self.params.quorum
            );
            self.emit(out, NoticeKind::Odown, payload);
        } else {
            self.emit(out, NoticeKind::OdownCleared, self.describe(self.master));
        }
    }

    /// Forget peer reports too old to mean anything (Sentinel clears `SRI_MASTER_DOWN` and the
    /// peer's leader after 5 ask periods without a reply).
    fn expire_reports(&mut self, now: Millis) {
        let validity = self.params.peer_report_validity_ms;
        let fresh = |at: &Millis| now.saturating_sub(*at) <= validity;
        for report in self.reports.values_mut() {
            if report.hello.as_ref().is_some_and(|(_, at)| !fresh(at)) {
                report.hello = None;
            }
            if report.vote.as_ref().is_some_and(|(_, at)| !fresh(at)) {
                report.vote = None;
            }
            if report.busy.as_ref().is_some_and(|(_, at)| !fresh(at)) {
                report.busy = None;
            }
        }
        self.reports
            .retain(|_, r| r.hello.is_some() || r.vote.is_some() || r.busy.is_some());
    }

    // ----------------------------------------------------------------------------------------
    // Epochs and votes.

    /// Sentinel's `sentinelVoteLeader`: vote for `candidate` in `req_epoch` unless we already
    /// voted in that epoch (or a later one). Returns our vote as it stands.
    fn vote_leader(
        &mut self,
        req_epoch: Epoch,
        candidate: &ControllerId,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Option<Vote> {
        let mut changed = false;
        if req_epoch > self.current_epoch {
            self.current_epoch = req_epoch;
            self.emit(out, NoticeKind::NewEpoch, req_epoch.to_string());
            changed = true;
        }
        let voted_in = self.vote.as_ref().map_or(0, |v| v.epoch);
        if voted_in < req_epoch && self.current_epoch <= req_epoch {
            self.vote = Some(Vote {
                epoch: self.current_epoch,
                leader: candidate.clone(),
            });
            self.emit(
                out,
                NoticeKind::VoteForLeader,
                format!("{candidate} {}", self.current_epoch),
            );
            changed = true;
            if *candidate != self.me {
                // Let the candidate work: no attempt of ours before 2 × failover-timeout.
                self.failover_start = Some(now + jitter);
            }
        }
        if changed {
            // Before the reply leaves: a restarted controller must remember this vote.
            self.persist(out);
        }
        self.vote.clone()
    }

    /// Sentinel's `sentinelGetLeader`: the controller that got an absolute majority of all
    /// controllers (reachable or not), and at least `quorum` votes unless `forced`, in the
    /// current epoch. An operator's failover needs only the majority, which is what makes one
    /// leader per epoch: the quorum is about agreeing that the master is down.
    fn get_leader(
        &mut self,
        epoch: Epoch,
        forced: bool,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Option<ControllerId> {
        let voters = self.peers.len() + 1;
        let mut counts: BTreeMap<ControllerId, usize> = BTreeMap::new();
        for (vote, _) in self.reports.values().filter_map(|r| r.vote.as_ref()) {
            if vote.epoch == self.current_epoch {
                *counts.entry(vote.leader.clone()).or_default() += 1;
            }
        }
        // Our own vote: for the peers' favourite, or ourselves (a no-op if we already voted).
        let favourite = most_voted(&counts).map_or_else(|| self.me.clone(), |(id, _)| id);
        if let Some(vote) = self.vote_leader(epoch, &favourite, now, jitter, out)
            && vote.epoch == epoch
        {
            *counts.entry(vote.leader).or_default() += 1;
        }
        let (winner, votes) = most_voted(&counts)?;
        (votes >= majority(voters) && (forced || votes >= self.params.quorum)).then_some(winner)
    }

    // ----------------------------------------------------------------------------------------
    // The failover.

    /// Sentinel's `sentinelStartFailoverIfNeeded` + `sentinelStartFailover`.
    fn start_failover_if_needed(&mut self, now: Millis, jitter: Millis, out: &mut Vec<Action>) {
        // A peer's failover under way (an operator's switchover, say) would not get our vote
        // request answered anyway; it ends one way or the other within its timeout.
        if !self.odown
            || !matches!(self.failover, Failover::Idle)
            || self.failover_elsewhere(now, None)
        {
            self.candidacy = None;
            return;
        }
        let retry_after = self.params.failover_timeout_ms.saturating_mul(2);
        if self
            .failover_start
            .is_some_and(|start| now.saturating_sub(start) < retry_after)
        {
            self.candidacy = None;
            return;
        }
        // Every controller that sees the master down reaches ODOWN within a probe interval or
        // two of the others; if all of them stood at once, each would vote for itself and the
        // epoch would be lost (seen in ~4% of kill -9 trials before this rule), costing twice
        // the failover timeout. So candidates take turns by id: those that report the master
        // SDOWN and have a lower id go first, and we stand only after `rank` turns without
        // having voted for one of them (a vote sets `failover_start` and stops us above).
        let rank = self
            .reports
            .iter()
            .filter(|(id, _)| **id < self.me)
            .filter_map(|(_, r)| r.hello.as_ref())
            .filter(|(h, _)| h.master == self.master && h.sdown.contains(&self.master))
            .count() as Millis;
        let since = *self.candidacy.get_or_insert(now);
        if now.saturating_sub(since) < rank * self.params.candidate_stagger_ms() {
            return;
        }
        self.candidacy = None;
        let epoch = self.stand(out);
        self.failover_start = Some(now + jitter);
        out.push(Action::SendToPeers(PeerMsg::VoteRequest {
            epoch,
            master: self.master,
        }));
        self.failover = Failover::Election {
            epoch,
            last_ask: now,
            forced: None,
        };
    }

    /// Becomes a candidate in a new epoch: `+new-epoch`, `+try-failover`, and our own vote,
    /// persisted before anything that follows leaves the host. Returns the epoch.
    fn stand(&mut self, out: &mut Vec<Action>) -> Epoch {
        self.current_epoch += 1;
        let epoch = self.current_epoch;
        self.emit(out, NoticeKind::NewEpoch, epoch.to_string());
        self.emit(out, NoticeKind::TryFailover, self.describe(self.master));
        self.vote = Some(Vote {
            epoch,
            leader: self.me.clone(),
        });
        self.emit(
            out,
            NoticeKind::VoteForLeader,
            format!("{} {epoch}", self.me),
        );
        self.persist(out);
        epoch
    }

    /// Sentinel's `sentinelFailoverStateMachine`, on a tick.
    fn run_failover(&mut self, now: Millis, jitter: Millis, out: &mut Vec<Action>) {
        // Each arm computes the next state; nothing below reads `self.failover` meanwhile.
        self.failover = match std::mem::take(&mut self.failover) {
            Failover::Idle => Failover::Idle,
            Failover::Election {
                epoch,
                mut last_ask,
                forced,
            } => {
                // Re-ask (replies are idempotent), unless a later epoch started: ours is lost.
                if self.current_epoch == epoch
                    && now.saturating_sub(last_ask) >= self.params.hello_interval_ms
                {
                    out.push(Action::SendToPeers(PeerMsg::VoteRequest {
                        epoch,
                        master: self.master,
                    }));
                    last_ask = now;
                }
                self.election(epoch, last_ask, forced, now, jitter, out)
            }
            Failover::Sync {
                epoch,
                target,
                since,
                timeout,
            } => {
                // The executor reports within `timeout`; this only catches a lost report.
                if now.saturating_sub(since) > timeout.saturating_mul(2) {
                    self.abort_forced(epoch, NoticeKind::FailoverAbortNotSynced, None, out);
                    Failover::Idle
                } else {
                    Failover::Sync {
                        epoch,
                        target,
                        since,
                        timeout,
                    }
                }
            }
            Failover::Promotion {
                epoch,
                promoted,
                since,
                sent,
                forced,
            } => self.promotion(epoch, promoted, since, sent, forced, now, out),
            Failover::Reconfiguration(r) => self.reconfigure(r, now, out),
        };
    }

    /// `WAIT_START`: are we elected? Give up after the election timeout, or for an operator's
    /// failover as soon as it cannot be won.
    fn election(
        &mut self,
        epoch: Epoch,
        last_ask: Millis,
        forced: Option<ForceRequest>,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        let leader = self.get_leader(epoch, forced.is_some(), now, jitter, out);
        if leader.as_ref() == Some(&self.me) {
            return match forced {
                None => self.elected(epoch, now, out),
                Some(request) => self.forced_elected(epoch, request, now, out),
            };
        }
        if let Some(request) = forced {
            return match self.forced_lost(epoch, request, now) {
                Some(refused) => {
                    out.push(Action::Forced(ForcedOutcome::Refused(refused)));
                    // It never touched the master: a failover the master may need later must
                    // not wait out the retry delay of this attempt.
                    self.failover_start = None;
                    Failover::Idle
                }
                None => Failover::Election {
                    epoch,
                    last_ask,
                    forced,
                },
            };
        }
        let started = self.failover_start.unwrap_or(now);
        if now.saturating_sub(started) > self.params.effective_election_timeout() {
            self.emit(
                out,
                NoticeKind::FailoverAbortNotElected,
                self.describe(self.master),
            );
            return Failover::Idle;
        }
        Failover::Election {
            epoch,
            last_ask,
            forced,
        }
    }

    /// Why an operator's failover in `epoch`, not elected yet, can no longer be won, if so.
    fn forced_lost(
        &self,
        epoch: Epoch,
        request: ForceRequest,
        now: Millis,
    ) -> Option<ForceRefused> {
        if self.current_epoch > epoch {
            return Some(ForceRefused::LostElection {
                epoch,
                leader: None,
            });
        }
        let voters = self.peers.len() + 1;
        let needed = majority(voters);
        let mut others: BTreeMap<ControllerId, usize> = BTreeMap::new();
        let mut ours = 1;
        for (vote, _) in self.reports.values().filter_map(|r| r.vote.as_ref()) {
            if vote.epoch != epoch {
                continue;
            }
            if vote.leader == self.me {
                ours += 1;
            } else {
                *others.entry(vote.leader.clone()).or_default() += 1;
            }
        }
        let against: usize = others.values().sum();
        if against > voters - needed {
            return Some(ForceRefused::LostElection {
                epoch,
                leader: most_voted(&others).map(|(id, _)| id),
            });
        }
        if now.saturating_sub(request.since) > request.timeout {
            return Some(ForceRefused::NoMajority {
                epoch,
                votes: ours,
                needed,
            });
        }
        None
    }

    /// `SELECT_SLAVE` and `SEND_SLAVEOF_NOONE`.
    fn elected(&mut self, epoch: Epoch, now: Millis, out: &mut Vec<Action>) -> Failover {
        let master = self.describe(self.master);
        self.emit(out, NoticeKind::ElectedLeader, master.clone());
        self.emit(out, NoticeKind::FailoverStateSelectSlave, master.clone());
        let Some(promoted) = self.select_replica(now) else {
            self.emit(out, NoticeKind::FailoverAbortNoGoodSlave, master);
            return Failover::Idle;
        };
        self.emit(out, NoticeKind::SelectedSlave, self.describe(promoted));
        self.promote(epoch, promoted, None, now, out)
    }

    /// `SEND_SLAVEOF_NOONE`, then `WAIT_PROMOTION`.
    fn promote(
        &mut self,
        epoch: Epoch,
        promoted: NodeAddr,
        forced: Option<Forced>,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        let replica = self.describe(promoted);
        self.emit(
            out,
            NoticeKind::FailoverStateSendSlaveofNoone,
            replica.clone(),
        );
        out.push(Action::PromoteReplica { node: promoted });
        self.emit(out, NoticeKind::FailoverStateWaitPromotion, replica);
        Failover::Promotion {
            epoch,
            promoted,
            since: now,
            sent: true,
            forced,
        }
    }

    /// `WAIT_PROMOTION` on a tick: resend if the command failed, abort after the failover timeout.
    /// The way out is a probe reporting `role:master` ([`Self::confirm_promotion`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "the state's fields, passed by value as the other phases' are"
    )]
    fn promotion(
        &mut self,
        epoch: Epoch,
        promoted: NodeAddr,
        since: Millis,
        mut sent: bool,
        forced: Option<Forced>,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        let timeout = forced.map_or(self.params.failover_timeout_ms, |f| f.timeout);
        if now.saturating_sub(since) > timeout {
            match forced {
                Some(f) => self.abort_forced(
                    epoch,
                    NoticeKind::FailoverAbortSlaveTimeout,
                    Some((promoted, f)),
                    out,
                ),
                None => self.emit(
                    out,
                    NoticeKind::FailoverAbortSlaveTimeout,
                    self.describe(self.master),
                ),
            }
            return Failover::Idle;
        }
        if !sent && self.nodes[&promoted].liveness.is_up() {
            out.push(Action::PromoteReplica { node: promoted });
            sent = true;
        }
        Failover::Promotion {
            epoch,
            promoted,
            since,
            sent,
            forced,
        }
    }

    /// Sentinel's `sentinelSelectSlave`: the best replica among those not SDOWN, heard from
    /// recently, whose link to the old master has not been down for too long, and whose priority
    /// is not 0.
    fn select_replica(&self, now: Millis) -> Option<NodeAddr> {
        select::best(
            self.nodes
                .keys()
                .filter_map(|&addr| self.promotion_candidate(addr, now, false).ok()),
        )
    }

    /// Whether `addr` may be promoted (see [`Self::select_replica`]), or why not. For a planned
    /// switchover (`sync`) it must also be a replica of the master right now, with its link up:
    /// it has to catch up before the promotion.
    fn promotion_candidate(
        &self,
        addr: NodeAddr,
        now: Millis,
        sync: bool,
    ) -> Result<Candidate<'_>, &'static str> {
        let node = self
            .nodes
            .get(&addr)
            .ok_or("it is not a node of this service")?;
        if addr == self.master {
            return Err("it is the master");
        }
        if !node.liveness.is_up() {
            return Err("it is down (SDOWN)");
        }
        if now.saturating_sub(node.liveness.last_ok()) > self.params.reply_validity() {
            return Err("it has not answered a probe recently");
        }
        let info = node.info.as_ref().ok_or("it never answered a probe")?;
        // The master we believe in reports a replica (a replication loop, replicas only, or
        // it follows some other node): no replica can follow it, so any node of the service
        // may be promoted, whomever it follows, or none (a node that claims to be master is
        // judged by its own offset).
        let masterless = !sync
            && self.nodes[&self.master]
                .role()
                .is_some_and(|r| r.follows().is_some());
        let claimed;
        let replica = match &info.role {
            Role::Replica(r) => r,
            Role::Master { .. } if sync => return Err("it claims to be a master"),
            Role::Master { repl_offset } if masterless => {
                claimed = ReplicaInfo {
                    master: self.master,
                    link_up: false,
                    link_down_ms: 0,
                    lag_ms: 0,
                    repl_offset: *repl_offset,
                    priority: node
                        .last_replica
                        .as_ref()
                        .map_or(DEFAULT_PRIORITY, |r| r.priority),
                };
                &claimed
            }
            // Promoted by a leader that died: judge it by how far it had replicated.
            Role::Master { .. } => node
                .last_replica
                .as_ref()
                .ok_or("it claims to be a master")?,
        };
        if replica.master != self.master && !masterless {
            return Err("it does not replicate from the master");
        }
        if replica.priority == 0 {
            return Err("its replica-priority is 0");
        }
        if sync && !replica.link_up {
            return Err("its link to the master is down");
        }
        let master_down_for = self.nodes[&self.master]
            .liveness
            .down_since()
            .map_or(0, |since| now.saturating_sub(since));
        let max_link_down = master_down_for + self.params.down_after_ms.saturating_mul(10);
        if replica.link_down_ms > max_link_down {
            return Err("its link to the master has been down too long");
        }
        Ok(Candidate {
            addr,
            priority: replica.priority,
            repl_offset: replica.repl_offset,
            run_id: info.run_id.as_deref(),
        })
    }

    // ----------------------------------------------------------------------------------------
    // Forced failover (`SENTINEL FAILOVER`) and planned switchover.

    /// Sentinel's `SENTINEL FAILOVER`, but elected: stand in a new epoch and ask the peers for
    /// their votes; nothing is done to any Redis server before a majority voted for us
    /// ([`Self::forced_elected`]). Refused at once when it could not start: another failover is
    /// known to be under way, or the target cannot be promoted.
    fn force_failover(
        &mut self,
        to: Option<NodeAddr>,
        timeout: Millis,
        now: Millis,
        jitter: Millis,
        out: &mut Vec<Action>,
    ) -> Result<(), ForceRefused> {
        if !matches!(self.failover, Failover::Idle) {
            return Err(ForceRefused::InProgress);
        }
        let request = ForceRequest {
            to,
            timeout,
            since: now,
        };
        if let Some((leader, epoch)) = self.busy_peer(now, None) {
            return Err(ForceRefused::PeerInProgress { leader, epoch });
        }
        // Checked now so that a wrong request gets its answer at once, and again once elected.
        self.forced_target(to, now, self.master_looks_sane(now))?;
        let epoch = self.stand(out);
        self.failover_start = Some(now);
        out.push(Action::SendToPeers(PeerMsg::VoteRequest {
            epoch,
            master: self.master,
        }));
        // Alone (no peers), our own vote is the majority.
        self.failover = self.election(epoch, now, Some(request), now, jitter, out);
        Ok(())
    }

    /// The replica a forced failover promotes: `to`, or the best one. With `pause`, it must be
    /// able to catch up with the master first.
    fn forced_target(
        &self,
        to: Option<NodeAddr>,
        now: Millis,
        pause: bool,
    ) -> Result<NodeAddr, ForceRefused> {
        match to {
            Some(node) if node == self.master => Err(ForceRefused::AlreadyMaster(node)),
            Some(node) if !self.nodes.contains_key(&node) => Err(ForceRefused::UnknownNode(node)),
            Some(node) => self
                .promotion_candidate(node, now, pause)
                .map(|c| c.addr)
                .map_err(|why| ForceRefused::NotEligible { node, why }),
            None => select::best(
                self.nodes
                    .keys()
                    .filter_map(|&addr| self.promotion_candidate(addr, now, pause).ok()),
            )
            .ok_or(ForceRefused::NoGoodReplica),
        }
    }

    /// A majority voted for our operator's failover in `epoch`. If the master answers, pause
    /// its writes and let the target catch up first ([`Action::PauseAndSync`]); otherwise
    /// promote at once (Sentinel's forced failover of a dead master).
    fn forced_elected(
        &mut self,
        epoch: Epoch,
        request: ForceRequest,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        // Pausing needs a master that takes commands; a dead one has nothing left to lose.
        let pause = self.master_looks_sane(now);
        let target = match self.forced_target(request.to, now, pause) {
            Ok(target) => target,
            Err(refused) => {
                out.push(Action::Forced(ForcedOutcome::Refused(refused)));
                self.failover_start = None;
                return Failover::Idle;
            }
        };
        let master = self.describe(self.master);
        self.emit(out, NoticeKind::ElectedLeader, master.clone());
        self.emit(out, NoticeKind::FailoverStateSelectSlave, master);
        self.emit(out, NoticeKind::SelectedSlave, self.describe(target));
        out.push(Action::Forced(ForcedOutcome::Started {
            epoch,
            target,
            paused: pause,
        }));
        if pause {
            self.emit(
                out,
                NoticeKind::FailoverStateWaitSync,
                self.describe(target),
            );
            out.push(Action::PauseAndSync {
                master: self.master,
                target,
                pause_ms: switchover_pause_ms(request.timeout),
                timeout_ms: request.timeout,
            });
            Failover::Sync {
                epoch,
                target,
                since: now,
                timeout: request.timeout,
            }
        } else {
            let forced = Forced {
                old_master: self.master,
                paused: false,
                timeout: self.params.failover_timeout_ms,
            };
            self.promote(epoch, target, Some(forced), now, out)
        }
    }

    /// The executor paused writes and the target caught up (or not).
    fn on_synced(&mut self, target: NodeAddr, ok: bool, now: Millis, out: &mut Vec<Action>) {
        let Failover::Sync {
            epoch,
            target: waiting_for,
            timeout,
            ..
        } = self.failover
        else {
            return; // Late report of an attempt already given up.
        };
        if waiting_for != target {
            return;
        }
        if !ok {
            self.abort_forced(epoch, NoticeKind::FailoverAbortNotSynced, None, out);
            self.failover = Failover::Idle;
            return;
        }
        let forced = Forced {
            old_master: self.master,
            paused: true,
            timeout,
        };
        self.failover = self.promote(epoch, target, Some(forced), now, out);
    }

    /// Give up a forced failover before its promotion was confirmed. If writes are paused,
    /// resume them on the (unchanged) master, after telling a replica we may have promoted
    /// (`promoting`) to follow the master again, so that only one node takes writes.
    fn abort_forced(
        &mut self,
        epoch: Epoch,
        reason: NoticeKind,
        promoting: Option<(NodeAddr, Forced)>,
        out: &mut Vec<Action>,
    ) {
        self.emit(out, reason, self.describe(self.master));
        let paused = promoting.is_none_or(|(_, f)| f.paused);
        if paused {
            if let Some((promoted, f)) = promoting {
                out.push(Action::ReplicaOf {
                    node: promoted,
                    master: f.old_master,
                });
            }
            out.push(Action::ResumeWrites {
                node: self.master,
                demote_to: None,
            });
            // Nothing changed and the master serves again: a failover it may need later must
            // not wait out the retry delay of an attempt that never touched it.
            self.failover_start = None;
        }
        out.push(Action::Forced(ForcedOutcome::Aborted { epoch, reason }));
    }

    /// A peer's newer configuration makes `new_master` the master while our forced failover
    /// has not confirmed its promotion: drop it, and resume the paused writes on the old master,
    /// which follows `new_master` from now on.
    fn supersede_forced(&mut self, new_master: NodeAddr, out: &mut Vec<Action>) {
        let (epoch, paused) = match &self.failover {
            Failover::Election {
                epoch,
                forced: Some(_),
                ..
            } => {
                let refused = ForceRefused::LostElection {
                    epoch: *epoch,
                    leader: None,
                };
                out.push(Action::Forced(ForcedOutcome::Refused(refused)));
                return;
            }
            Failover::Sync { epoch, .. } => (*epoch, true),
            Failover::Promotion {
                epoch,
                forced: Some(f),
                ..
            } => (*epoch, f.paused),
            _ => return,
        };
        if paused {
            out.push(Action::ResumeWrites {
                node: self.master,
                demote_to: (self.master != new_master).then_some(new_master),
            });
        }
        out.push(Action::Forced(ForcedOutcome::Aborted {
            epoch,
            reason: NoticeKind::ConfigUpdateFrom,
        }));
    }

    /// A probe reported something the failover in progress waits for.
    fn track_failover(&mut self, addr: NodeAddr, now: Millis, out: &mut Vec<Action>) {
        let Some(role) = self.nodes.get(&addr).and_then(Node::role) else {
            return;
        };
        let (follows, link_up) = match role {
            Role::Master { .. } => (None, false),
            Role::Replica(r) => (Some(r.master), r.link_up),
        };
        match &mut self.failover {
            Failover::Promotion {
                epoch,
                promoted,
                forced,
                ..
            } if *promoted == addr && follows.is_none() => {
                let (epoch, promoted, forced) = (*epoch, *promoted, *forced);
                self.confirm_promotion(epoch, promoted, forced, now, out);
            }
            Failover::Reconfiguration(r) if follows == Some(r.promoted) => {
                let Some(state) = r.replicas.get_mut(&addr) else {
                    return;
                };
                let mut notices = Vec::new();
                if matches!(state, Reconf::Sent { .. }) {
                    *state = Reconf::InProgress;
                    notices.push(NoticeKind::SlaveReconfInprog);
                }
                if *state == Reconf::InProgress && link_up {
                    *state = Reconf::Done;
                    notices.push(NoticeKind::SlaveReconfDone);
                }
                for kind in notices {
                    self.emit(out, kind, self.describe(addr));
                }
            }
            _ => {}
        }
    }

    /// The promoted replica reports `role:master`: from now on its epoch is the configuration
    /// (Sentinel sets `config_epoch = failover_epoch` here), the write port moves to it, and the
    /// failover can no longer be aborted.
    fn confirm_promotion(
        &mut self,
        epoch: Epoch,
        promoted: NodeAddr,
        forced: Option<Forced>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        self.config_epoch = epoch;
        self.emit(out, NoticeKind::PromotedSlave, self.describe(promoted));
        self.emit(
            out,
            NoticeKind::FailoverStateReconfSlaves,
            self.describe(self.master),
        );
        let replicas = self
            .nodes
            .keys()
            .filter(|&&addr| addr != promoted && addr != self.master)
            .map(|&addr| (addr, Reconf::Pending))
            .collect();
        self.failover = Failover::Reconfiguration(Reconfiguration {
            epoch,
            promoted,
            since: now,
            replicas,
        });
        // Durable before the write port moves, with the promoted node as the epoch's master.
        self.persist(out);
        self.set_master(epoch, promoted, out);
        let paused = forced.filter(|f| f.paused);
        if let Some(f) = paused {
            // Writes are held: tell the peers (a peer owning a data plane switches on this) and
            // resume them right after the write port moved, before the read pool's update (a
            // Maglev table rewrite). New connections already go to the new master when the old
            // one closes its clients and turns replica.
            self.send_hello(now, out);
            out.push(Action::ResumeWrites {
                node: f.old_master,
                demote_to: Some(promoted),
            });
        }
        self.publish_read_pool(now, out);
        if paused.is_none() {
            // Sentinel's sentinelForceHelloUpdateForMaster: the others switch on this.
            self.send_hello(now, out);
        }
        if let Some(f) = forced {
            out.push(Action::Forced(ForcedOutcome::Switched {
                epoch,
                from: f.old_master,
                to: promoted,
            }));
        }
        if let Failover::Reconfiguration(r) = std::mem::take(&mut self.failover) {
            self.failover = self.reconfigure(r, now, out);
        }
    }

    /// `RECONF_SLAVES`: point replicas at the new master, `parallel_syncs` at a time, then end.
    fn reconfigure(
        &mut self,
        mut r: Reconfiguration,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> Failover {
        self.reconf_next(&mut r, now, out);
        if self.reconf_finished(&mut r, now, out) {
            self.switch_master(r.promoted, now, out);
            return Failover::Idle;
        }
        Failover::Reconfiguration(r)
    }

    /// Sentinel's `sentinelFailoverReconfNextSlave`.
    fn reconf_next(&mut self, r: &mut Reconfiguration, now: Millis, out: &mut Vec<Action>) {
        let timeout = self.params.replica_reconf_timeout_ms;
        let addrs: Vec<NodeAddr> = r.replicas.keys().copied().collect();
        for &addr in &addrs {
            if let Reconf::Sent { at } = r.replicas[&addr]
                && now.saturating_sub(at) > timeout
            {
                // The fix-up after the failover will catch it.
                r.replicas.insert(addr, Reconf::Done);
                self.emit(out, NoticeKind::SlaveReconfSentTimeout, self.describe(addr));
            }
        }
        let mut in_progress = r
            .replicas
            .values()
            .filter(|s| matches!(s, Reconf::Sent { .. } | Reconf::InProgress))
            .count();
        for &addr in &addrs {
            if in_progress >= self.params.parallel_syncs {
                break;
            }
            if r.replicas[&addr] != Reconf::Pending || !self.nodes[&addr].liveness.is_up() {
                continue;
            }
            out.push(Action::ReplicaOf {
                node: addr,
                master: r.promoted,
            });
            self.emit(out, NoticeKind::SlaveReconfSent, self.describe(addr));
            r.replicas.insert(addr, Reconf::Sent { at: now });
            in_progress += 1;
        }
    }

    /// Sentinel's `sentinelFailoverDetectEnd`: done when every reachable replica follows the new
    /// master, or on timeout (then best-effort REPLICAOF to the rest).
    fn reconf_finished(
        &mut self,
        r: &mut Reconfiguration,
        now: Millis,
        out: &mut Vec<Action>,
    ) -> bool {
        let timed_out = now.saturating_sub(r.since) > self.params.failover_timeout_ms;
        // Sentinel waits forever while the promoted node is SDOWN; its epoch is already the
        // configuration, so we still end on timeout and let a new failover handle it.
        if !self.nodes[&r.promoted].liveness.is_up() && !timed_out {
            return false;
        }
        let not_reconfigured = r
            .replicas
            .iter()
            .filter(|&(addr, state)| *state != Reconf::Done && self.nodes[addr].liveness.is_up())
            .count();
        if timed_out {
            self.emit(
                out,
                NoticeKind::FailoverEndForTimeout,
                self.describe(self.master),
            );
            let pending: Vec<NodeAddr> = r
                .replicas
                .iter()
                .filter(|&(addr, state)| {
                    *state == Reconf::Pending && self.nodes[addr].liveness.is_up()
                })
                .map(|(&addr, _)| addr)
                .collect();
            for addr in pending {
                out.push(Action::ReplicaOf {
                    node: addr,
                    master: r.promoted,
                });
                self.emit(out, NoticeKind::SlaveReconfSentBe, self.describe(addr));
                r.replicas.insert(addr, Reconf::Sent { at: now });
            }
        }
        if not_reconfigured == 0 || timed_out {
            self.emit(out, NoticeKind::FailoverEnd, self.describe(self.master));
            return true;
        }
        false
    }

    /// `+switch-master` (Sentinel's `sentinelResetMasterAndChangeAddress`): `new` is the master.
    /// Everything we believed about the old master's down state, and every peer report (which may
    /// predate the switch), is forgotten: none of it says anything about the new master.
    fn switch_master(&mut self, new: NodeAddr, now: Millis, out: &mut Vec<Action>) {
        let old = self.master;
        let payload = format!(
            "{} {} {} {} {}",
            self.name,
            old.ip(),
            old.port(),
            new.ip(),
            new.port()
        );
        self.emit(out, NoticeKind::SwitchMaster, payload);
        self.replaced = Some((old, now));
        self.master = new;
        self.failover = Failover::Idle;
        self.failover_start = None;
        self.odown = false;
        for report in self.reports.values_mut() {
            report.hello = None;
            report.vote = None;
        }
        self.reports.retain(|_, r| r.busy.is_some());
        let node = self.nodes.entry(new).or_insert_with(|| Node::new(now));
        node.liveness = Liveness::new(now);
        node.role_since = now;
        // The old master is now listed as a replica. A quorum found it down; if our own
        // probes are failing too, say so now rather than after the rest of down-after, or
        // Sentinel clients (redis-py's `discover_slaves`) would send reads to a dead node.
        if let Some(Flip::Down) = self
            .nodes
            .get_mut(&old)
            .and_then(|n| n.liveness.confirm_down(now, &self.params))
        {
            self.emit(out, NoticeKind::Sdown, self.describe(old));
        }
        self.persist(out);
        self.set_master(self.config_epoch, new, out);
        self.publish_read_pool(now, out);
        self.send_hello(now, out);
    }

    /// Outside a failover, with a sane master: demote nodes that claim to be master
    /// (`+convert-to-slave`) and repoint replicas that follow another master
    /// (`+fix-slave-config`), once they have been up and in that state long enough for a newer
    /// configuration to have reached us.
    ///
    /// Unlike Sentinel, only while we hear from a majority of the controllers: a controller cut
    /// off from its peers but not from Redis would otherwise demote the master that the majority
    /// just promoted, and the two sides would undo each other's work until the partition heals.
    fn fix_roles(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.master_looks_sane(now) || !self.hears_majority() {
            return;
        }
        let delay = self.params.convert_delay_ms;
        let patience = self.params.failover_timeout_ms;
        let mut todo = Vec::new();
        for (&addr, node) in &self.nodes {
            if addr == self.master
                || node
                    .last_command
                    .is_some_and(|at| now.saturating_sub(at) < delay)
            {
                continue;
            }
            let in_role_for = now.saturating_sub(node.role_since);
            match node.role() {
                Some(Role::Master { .. })
                    if in_role_for > delay && node.liveness.up_for(now, delay) =>
                {
                    todo.push((addr, NoticeKind::ConvertToSlave));
                }
                Some(Role::Replica(r))
                    if r.master != self.master
                        && in_role_for > patience
                        && node.liveness.up_for(now, patience) =>
                {
                    todo.push((addr, NoticeKind::FixSlaveConfig));
                }
                _ => {}
            }
        }
        for (addr, kind) in todo {
            out.push(Action::ReplicaOf {
                node: addr,
                master: self.master,
            });
            self.emit(out, kind, self.describe(addr));
            if let Some(node) = self.nodes.get_mut(&addr) {
                node.last_command = Some(now);
            }
        }
    }

    /// The epoch of the failover we stand for or run, until it switched or ended: what our
    /// hellos announce. An automatic candidacy counts only while its epoch is current (a later
    /// one means it is lost, and we may have voted in it).
    fn failover_in_flight(&self) -> Option<Epoch> {
        match &self.failover {
            Failover::Election {
                epoch,
                forced: Some(_),
                ..
            } => Some(*epoch),
            Failover::Election { epoch, .. } => (*epoch == self.current_epoch).then_some(*epoch),
            Failover::Sync { epoch, .. } | Failover::Promotion { epoch, .. } => Some(*epoch),
            Failover::Idle | Failover::Reconfiguration(_) => None,
        }
    }

    /// Whether we lead a failover whose promotion is not confirmed: no vote for anyone else
    /// meanwhile. An operator's candidacy counts too; an automatic one does not, so that, as
    /// in Sentinel, a candidate in an older epoch still votes in a newer one.
    fn leads_failover(&self) -> bool {
        matches!(
            self.failover,
            Failover::Election {
                forced: Some(_),
                ..
            } | Failover::Sync { .. }
                | Failover::Promotion { .. }
        )
    }

    /// A peer other than `except` that stands for or runs a failover, as far as fresh reports
    /// tell: `(peer, epoch)`.
    fn busy_peer(
        &self,
        now: Millis,
        except: Option<&ControllerId>,
    ) -> Option<(ControllerId, Epoch)> {
        let validity = self.params.peer_report_validity_ms;
        self.reports
            .iter()
            .filter(|(id, _)| Some(*id) != except)
            .find_map(|(id, r)| match r.busy {
                Some((epoch, at)) if now.saturating_sub(at) <= validity => {
                    Some((id.clone(), epoch))
                }
                _ => None,
            })
    }

    fn failover_elsewhere(&self, now: Millis, except: Option<&ControllerId>) -> bool {
        self.busy_peer(now, except).is_some()
    }

    /// Whether fresh hellos from our peers, with us, make a majority of all controllers.
    fn hears_majority(&self) -> bool {
        let heard = self.reports.values().filter(|r| r.hello.is_some()).count();
        heard + 1 >= majority(self.peers.len() + 1)
    }

    /// Sentinel's `sentinelMasterLooksSane`.
    fn master_looks_sane(&self, now: Millis) -> bool {
        let node = &self.nodes[&self.master];
        !self.odown
            && node.liveness.is_up()
            && node.reports_master()
            && now.saturating_sub(node.liveness.last_ok()) <= self.params.reply_validity()
    }

    // ----------------------------------------------------------------------------------------
    // Outputs.

    /// The master the write port should use: the promoted node once it confirmed (Sentinel's
    /// `sentinelGetCurrentMasterAddress`), else the master. What operators and Sentinel clients
    /// are told is the master (`SENTINEL get-master-addr-by-name`).
    pub fn advertised_master(&self) -> NodeAddr {
        match &self.failover {
            Failover::Reconfiguration(r) => r.promoted,
            _ => self.master,
        }
    }

    /// Ask the data plane to send writes to `node`, unless that would not move the config
    /// forward: a higher epoch, or in the same epoch the lower address (how a conflict within
    /// one epoch is resolved, see [`Self::on_hello`]).
    fn set_master(&mut self, epoch: Epoch, node: NodeAddr, out: &mut Vec<Action>) {
        if self
            .dataplane
            .requested
            .is_some_and(|(last, last_node)| epoch < last || (epoch == last && node >= last_node))
        {
            return;
        }
        self.dataplane.requested = Some((epoch, node));
        self.dataplane.retry = false;
        out.push(Action::SetMaster { epoch, node });
    }

    fn publish_read_pool(&mut self, now: Millis, out: &mut Vec<Action>) {
        let pool = self.compute_read_pool(now);
        if self.read_pool.as_ref() != Some(&pool) {
            self.read_pool = Some(pool.clone());
            out.push(Action::SetReadPool(pool));
        }
    }

    /// Replicas that are up, follow the current master, and whose data is at most
    /// `max_replica_lag_ms` old — with the link up, the time since the master last talked to
    /// them; with the link down, the time since it went down. So when the master dies, its
    /// replicas keep serving (slightly stale) reads until one of them is promoted, instead of
    /// the read port failing with the write port. The master as [`ReadFromMaster`] says. A
    /// node claiming to be master is never in it.
    ///
    /// A replica that still follows the master a failover replaced serves too, until it is
    /// repointed, while the time since the switch plus its own lag stays within
    /// `max_replica_lag_ms`: its data is the old master's, at most that much behind the new
    /// one. Without this the pool is empty from the promotion until the replicas report their
    /// new master, and new read connections are refused in between (seen in
    /// `cargo xtask bench`: 13–14 refused reads over about 40 ms of a SIGSTOP failover, where
    /// the old master is not even down yet by every controller's probes). Once the old master
    /// answers again as a master after the switch, its remaining replicas leave at once: it
    /// may be taking writes the new master never sees.
    fn compute_read_pool(&self, now: Millis) -> Vec<NodeAddr> {
        let master = self.advertised_master();
        let master_offset = match self.nodes.get(&master).and_then(|n| n.role()) {
            Some(Role::Master { repl_offset }) => Some(*repl_offset),
            _ => None,
        };
        let mut pool: Vec<NodeAddr> = self
            .nodes
            .iter()
            .filter(|&(&addr, node)| {
                addr != master
                    && node.liveness.is_up()
                    && matches!(node.role(), Some(Role::Replica(r))
                        if (r.master == master
                            && r.staleness_ms(master_offset) <= self.params.max_replica_lag_ms)
                            || self.serves_for_replaced(r, now))
            })
            .map(|(&addr, _)| addr)
            .collect();
        let master_serves = self
            .nodes
            .get(&master)
            .is_some_and(|n| n.liveness.is_up() && n.reports_master());
        let add_master = match self.params.read_from_master {
            ReadFromMaster::Never => false,
            ReadFromMaster::Fallback => pool.is_empty(),
            ReadFromMaster::Always => true,
        };
        if add_master && master_serves {
            pool.push(master);
        }
        pool.sort();
        pool
    }

    /// Whether replica `r` of the master the last failover replaced may still serve reads:
    /// see [`Self::compute_read_pool`]. During our own failover's reconfiguration the
    /// replaced master is still `self.master`, and the switch is the promotion.
    fn serves_for_replaced(&self, r: &ReplicaInfo, now: Millis) -> bool {
        let replaced = match &self.failover {
            Failover::Reconfiguration(rc) => Some((self.master, rc.since)),
            _ => self.replaced,
        };
        let Some((old, at)) = replaced else {
            return false;
        };
        let back_as_master = self
            .nodes
            .get(&old)
            .is_some_and(|n| n.reports_master() && n.liveness.last_ok() > at);
        r.master == old
            && old != self.advertised_master()
            && !back_as_master
            && now.saturating_sub(at) + r.staleness_ms(None) <= self.params.max_replica_lag_ms
    }

    fn send_hello(&mut self, now: Millis, out: &mut Vec<Action>) {
        let sdown = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.liveness.is_up())
            .map(|(&addr, _)| addr)
            .collect();
        let failover_epoch = self.failover_in_flight();
        out.push(Action::SendToPeers(PeerMsg::Hello(Hello {
            current_epoch: self.current_epoch,
            master: self.advertised_master(),
            config_epoch: self.config_epoch,
            sdown,
            failover_epoch,
        })));
        self.last_hello = Some(now);
        self.announced_failover = failover_epoch;
    }

    fn persist(&self, out: &mut Vec<Action>) {
        out.push(Action::Persist(self.persisted()));
    }

    fn emit(&self, out: &mut Vec<Action>, kind: NoticeKind, payload: String) {
        out.push(Action::Emit(Notice { kind, payload }));
    }

    /// Sentinel's `%@`: `master <name> <ip> <port>`, or for another node
    /// `slave <ip>:<port> <ip> <port> @ <name> <master-ip> <master-port>`.
    fn describe(&self, addr: NodeAddr) -> String {
        if addr == self.master {
            format!("master {} {} {}", self.name, addr.ip(), addr.port())
        } else {
            format!(
                "slave {addr} {} {} @ {} {} {}",
                addr.ip(),
                addr.port(),
                self.name,
                self.master.ip(),
                self.master.port()
            )
        }
    }
}

/// How long `CLIENT PAUSE` holds a planned switchover's writes: longer than every bound the
/// switchover can take (the catch-up, its safety net, the promotion, plus a margin for the
/// commands), so that only a controller that died mid-switchover leaves it to expire.
pub(crate) fn switchover_pause_ms(timeout: Millis) -> Millis {
    timeout.saturating_mul(3).saturating_add(2_000)
}

/// Redis's default `replica-priority`, for a node that reports `role:master` and so no priority.
const DEFAULT_PRIORITY: u32 = 100;

/// An absolute majority of `n` voters (50% + 1).
fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The controller with the most votes; ties go to the smallest id so that the outcome never
/// depends on iteration order.
fn most_voted(counts: &BTreeMap<ControllerId, usize>) -> Option<(ControllerId, usize)> {
    counts
        .iter()
        .fold(
            None,
            |best: Option<(&ControllerId, usize)>, (id, &n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((id, n)),
            },
        )
        .map(|(id, n)| (id.clone(), n))
}

fn validate(config: &MachineConfig) -> Result<(), SetupError> {
    let p = &config.params;
    let controllers = config.peers.len() + 1;
    if p.quorum == 0 {
        return Err(SetupError::ZeroQuorum);
    }
    if p.quorum > controllers {
        return Err(SetupError::QuorumTooLarge {
            quorum: p.quorum,
            controllers,
        });
    }
    let positive = [
        ("down_after_ms", p.down_after_ms),
        ("failover_timeout_ms", p.failover_timeout_ms),
        ("probe_interval_ms", p.probe_interval_ms),
        ("hello_interval_ms", p.hello_interval_ms),
        ("peer_report_validity_ms", p.peer_report_validity_ms),
        ("parallel_syncs", p.parallel_syncs as u64),
        ("fall", u64::from(p.fall)),
        ("rise", u64::from(p.rise)),
    ];
    if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(SetupError::Zero { field });
    }
    if p.hello_interval_ms >= p.peer_report_validity_ms {
        return Err(SetupError::HelloTooRare {
            hello_interval_ms: p.hello_interval_ms,
            peer_report_validity_ms: p.peer_report_validity_ms,
        });
    }
    let mut seen = BTreeSet::new();
    for id in &config.peers {
        if *id == config.me {
            return Err(SetupError::SelfInPeers { id: id.clone() });
        }
        if !seen.insert(id) {
            return Err(SetupError::DuplicatePeer { id: id.clone() });
        }
    }
    Ok(())
}
