//! What the executor feeds into [`ServiceMachine::step`](super::ServiceMachine::step).

use super::{ControllerId, Epoch, Millis, NodeAddr};

/// One input to the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed: run the timers (SDOWN by timeout, ODOWN, failover start, phase timeouts,
    /// periodic hello, demoting stray masters). Send about every 100 ms.
    Tick,
    /// The result of one probe (PING + `INFO replication`) of one node.
    Probe { node: NodeAddr, result: ProbeResult },
    /// A message from another controller monitoring this service. `from` must be authenticated
    /// by the executor: votes are counted per sender.
    Peer { from: ControllerId, msg: PeerMsg },
    /// The reply to a command we asked for ([`Action::PromoteReplica`](super::Action::PromoteReplica)
    /// or [`Action::ReplicaOf`](super::Action::ReplicaOf)). `ok == false` when it could not be sent
    /// or Redis refused it: the machine retries. Success only means "sent"; the effect is confirmed
    /// by later probes.
    CommandDone {
        node: NodeAddr,
        command: Command,
        ok: bool,
    },
    /// The data plane applied (or failed to apply) an [`Action::SetMaster`](super::Action::SetMaster).
    /// On failure the machine asks again on the next tick.
    MasterApplied {
        epoch: Epoch,
        node: NodeAddr,
        ok: bool,
    },
    /// An operator asks for a failover now (Sentinel's `SENTINEL FAILOVER`, `redis-ha-ctl
    /// failover`). Unlike Sentinel's, it takes its epoch by the votes of a majority of the
    /// controllers, as an automatic failover does, and touches no Redis server before it won
    /// them: two requests sent at once to two controllers would otherwise both promote a
    /// replica in one epoch. It is refused while any controller is known to run a failover.
    ///
    /// While the master answers, it is a planned switchover that loses no acknowledged write:
    /// writes are paused on the master and the target catches up
    /// ([`Action::PauseAndSync`](super::Action::PauseAndSync)), then it is promoted, the write
    /// port moves to it, and the old master is demoted before its writes resume
    /// ([`Action::ResumeWrites`](super::Action::ResumeWrites)). With the master down it is
    /// Sentinel's forced failover: promotion at once, nothing to pause.
    ///
    /// `to` names the replica to promote (default: the best one, as Sentinel selects);
    /// `timeout_ms` bounds the catch-up and, again, the promotion while writes are paused.
    /// Progress is reported with [`Action::Forced`](super::Action::Forced).
    ForceFailover {
        to: Option<NodeAddr>,
        timeout_ms: Millis,
    },
    /// The outcome of [`Action::PauseAndSync`](super::Action::PauseAndSync): `ok` when writes
    /// are paused on the master and `target` has processed everything the master has (equal
    /// replication offsets); `false` when it could not pause or the target did not catch up in
    /// time.
    Synced { target: NodeAddr, ok: bool },
}

/// The outcome of probing one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// The node answered PING validly (`PONG`, `-LOADING` or `-MASTERDOWN`, as Sentinel accepts)
    /// and its `INFO replication` was parsed.
    Ok(NodeInfo),
    /// No valid reply within the probe timeout: refused, timed out, `-BUSY`, unparsable INFO.
    Failed,
}

/// What a node says about itself in `INFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `run_id` from `INFO server`, if the executor fetched it. Breaks ties between replicas as in
    /// Sentinel, and a change means the process restarted (`+reboot`).
    pub run_id: Option<String>,
    /// `role:` and the fields that go with it.
    pub role: Role,
}

/// The role a node reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `role:master`.
    Master {
        /// `master_repl_offset`.
        repl_offset: u64,
    },
    /// `role:slave`.
    Replica(ReplicaInfo),
}

/// The replication fields of a node reporting `role:slave`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// `master_host:master_port`: whom it follows.
    pub master: NodeAddr,
    /// `master_link_status:up`.
    pub link_up: bool,
    /// `master_link_down_since_seconds` × 1000 (0 while the link is up).
    pub link_down_ms: Millis,
    /// `master_last_io_seconds_ago` × 1000: how stale its data may be. Replicas lagging more than
    /// [`Params::max_replica_lag_ms`](super::Params::max_replica_lag_ms) serve no reads.
    pub lag_ms: Millis,
    /// `slave_repl_offset`: how much of the master's stream it processed.
    pub repl_offset: u64,
    /// `slave_priority` (`replica-priority`): lower is preferred for promotion, 0 means never.
    pub priority: u32,
}

impl ReplicaInfo {
    /// How old its data may be. With the link down: the time since it went down. With the
    /// link up: none if it has processed everything the master had written when last probed
    /// (`master_offset`), else the master's last contact. An idle master talks to its replicas
    /// only every `repl-ping-replica-period` (10 s by default), so the last contact alone would
    /// call an up-to-date replica of an idle master stale and drop it from the read pool.
    pub fn staleness_ms(&self, master_offset: Option<u64>) -> Millis {
        if !self.link_up {
            self.link_down_ms
        } else if master_offset.is_some_and(|m| self.repl_offset >= m) {
            0
        } else {
            self.lag_ms
        }
    }
}

impl Role {
    /// The master a replica follows; `None` for a master. Two reports with different keys are a
    /// role change (Sentinel's `role_reported_time` / `slave_conf_change_time`).
    pub(crate) fn follows(&self) -> Option<NodeAddr> {
        match self {
            Role::Master { .. } => None,
            Role::Replica(r) => Some(r.master),
        }
    }
}

/// A commanded change whose outcome [`Event::CommandDone`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `REPLICAOF NO ONE`.
    PromoteReplica,
    /// `REPLICAOF <master>`.
    ReplicaOf { master: NodeAddr },
}

/// Controller-to-controller messages about one service. The executor carries them (any transport)
/// and tags received ones with the authenticated sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// Our view, broadcast every hello interval and whenever it changes (Sentinel's hello message
    /// and the down-state half of `is-master-down-by-addr`).
    Hello(Hello),
    /// "Vote for me in `epoch` to fail over `master`" (the vote half of `is-master-down-by-addr`,
    /// whose run id is always the sender's: the sender is the candidate).
    VoteRequest { epoch: Epoch, master: NodeAddr },
    /// The answer to a vote request: whom the sender voted for, in which epoch. It may be another
    /// candidate: each controller votes once per epoch.
    VoteReply { epoch: Epoch, leader: ControllerId },
}

/// A controller's view of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's current epoch; a higher one is adopted (`+new-epoch`).
    pub current_epoch: Epoch,
    /// The master it believes in...
    pub master: NodeAddr,
    /// ...and the epoch in which that master was promoted; a higher one than ours makes us switch
    /// (`+switch-master`).
    pub config_epoch: Epoch,
    /// The nodes it considers SDOWN. Only counts toward ODOWN of our master if the sender believes
    /// in the same master.
    pub sdown: Vec<NodeAddr>,
    /// The epoch of a failover the sender stands for or runs and has not yet switched or given
    /// up. While it is fresh, the receiver votes for nobody else and refuses operator
    /// failovers: one failover at a time across the controllers.
    pub failover_epoch: Option<Epoch>,
}
