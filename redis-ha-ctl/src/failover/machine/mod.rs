//! The per-service state machine: Sentinel's master-level logic, with time and randomness as inputs.

use std::collections::{BTreeMap, BTreeSet};

mod discovery;
mod election;
mod events;
mod forced;
mod moved;
mod promotion;
mod read_pool;
mod safe_mode;
mod tilt;

pub use moved::MoveRefused;

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
    /// Where each peer listens: only shown to operators (`+sentinel`'s payload). A peer missing
    /// here is shown at `? 0`.
    pub peer_addrs: BTreeMap<ControllerId, std::net::SocketAddr>,
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
    /// The role it last reported, `true` for master; `None` until it reports one after a
    /// (re)start or switch, when the role we expect stands for it (Sentinel's
    /// `role_reported`): what `+role-change` / `-role-change` compare with.
    reported_master: Option<bool>,
    /// `+slave` was said for it under the current master.
    announced: bool,
}

impl Node {
    fn new(now: Millis) -> Self {
        Self {
            liveness: Liveness::new(now),
            info: None,
            last_replica: None,
            role_since: now,
            last_command: None,
            reported_master: None,
            announced: false,
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
    /// Where they listen, for `+sentinel`.
    peer_addrs: BTreeMap<ControllerId, std::net::SocketAddr>,
    /// The peers heard since we started (`+sentinel` once each).
    heard: BTreeSet<ControllerId>,
    /// The highest epoch of a peer's failover we told operators of (`+failover-detected`).
    detected: Option<Epoch>,
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
    /// Old address → new one, for every node that moved (see `moved`): peers that have not
    /// followed a move yet still name the old one.
    aliases: BTreeMap<NodeAddr, NodeAddr>,
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
    /// Our own time, less our stalls, and TILT.
    clock: tilt::Clock,
    /// In safe mode (see `safe_mode`): the current epoch each peer told us since.
    safe_mode: Option<BTreeMap<ControllerId, Epoch>>,
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
            peer_addrs: config.peer_addrs,
            heard: BTreeSet::new(),
            detected: None,
            params: config.params,
            current_epoch,
            vote,
            master,
            config_epoch,
            nodes,
            aliases: BTreeMap::new(),
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
            clock: tilt::Clock::new(now),
            safe_mode: None,
        };
        let mut out = Vec::new();
        machine.announce_monitor(&mut out);
        machine.set_master(config_epoch, master, &mut out);
        machine.publish_read_pool(now, &mut out);
        Ok((machine, out))
    }

    /// Takes new parameters (a reload of the config), checked as [`Self::new`] checks them;
    /// on an error the machine keeps its old ones. Timers already running are measured
    /// against the new values from the next step on.
    pub fn set_params(&mut self, params: Params) -> Result<(), SetupError> {
        validate(&MachineConfig {
            service: self.name.clone(),
            me: self.me.clone(),
            peers: self.peers.clone(),
            peer_addrs: self.peer_addrs.clone(),
            master: self.master,
            replicas: Vec::new(),
            params: params.clone(),
        })?;
        self.params = params;
        Ok(())
    }

    /// Feed one event at time `now`; `jitter` is a fresh random number (see the module docs).
    pub fn step(&mut self, event: Event, now: Millis, jitter: Millis) -> Vec<Action> {
        let jitter = jitter.checked_rem(self.params.max_desync_ms).unwrap_or(0);
        let mut out = Vec::new();
        let now = self.clock_step(now, matches!(event, Event::Tick), &mut out);
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
    // What the other parts ask of the master and the peers. The inputs are in `events`,
    // elections in `election`, promotion and reconfiguration in `promotion`, operator
    // failovers in `forced`, the read port in `read_pool`.

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

    fn send_hello(&mut self, now: Millis, out: &mut Vec<Action>) {
        // In TILT our view of the nodes predates our stall: we vouch for no SDOWN (Sentinel
        // answers is-master-down-by-addr with "not down" in TILT).
        let sdown = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.liveness.is_up() && !self.clock.in_tilt())
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
