//! What [`ServiceMachine::step`](super::ServiceMachine::step) asks the executor to do.

use std::fmt;

use super::{ControllerId, Epoch, Millis, NodeAddr, PeerMsg};

/// One thing for the executor to do. Perform them in the order returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Tell operators (log, metrics, pub/sub), with Sentinel's event name and payload.
    Emit(Notice),
    /// Durably store this state before performing the next action: it holds our vote, and a
    /// controller that forgets its vote could vote twice in one epoch.
    Persist(Persisted),
    /// Send this message to every peer of this service.
    SendToPeers(PeerMsg),
    /// Send [`PeerMsg::VoteReply`] `{ epoch, leader }` to the peer `to` that asked for our vote.
    ReplyVote {
        to: ControllerId,
        epoch: Epoch,
        leader: ControllerId,
    },
    /// Send `REPLICAOF NO ONE` to `node` (Sentinel wraps it in MULTI, CONFIG REWRITE, CLIENT KILL,
    /// EXEC); report with [`Event::CommandDone`](super::Event::CommandDone).
    PromoteReplica { node: NodeAddr },
    /// Send `REPLICAOF <master>` to `node`: reconfiguring replicas after a promotion, demoting a
    /// node that wrongly claims to be master, fixing a replica that follows the wrong master.
    ReplicaOf { node: NodeAddr, master: NodeAddr },
    /// Point the write port at `node`. `epoch` is the config epoch that made it master; the machine
    /// never asks for a lower epoch than one it asked for before, so the data plane may also reject
    /// a write tagged with an epoch lower than the one it holds.
    SetMaster { epoch: Epoch, node: NodeAddr },
    /// The read port's backends, sorted (replicas that follow the current master with the link up
    /// and little lag; the master per [`ReadFromMaster`](super::ReadFromMaster)). Only sent when it
    /// changes.
    SetReadPool(Vec<NodeAddr>),
    /// A planned switchover begins: pause writes on `master` for `pause_ms`
    /// (`CLIENT PAUSE <pause_ms> WRITE`; the pause outlives every bound of the switchover, so it
    /// only expires by itself if this controller dies), then wait, at most `timeout_ms`, until
    /// `target`'s replication offset equals the master's. Report with
    /// [`Event::Synced`](super::Event::Synced). Writes stay paused until
    /// [`Action::ResumeWrites`].
    PauseAndSync {
        master: NodeAddr,
        target: NodeAddr,
        pause_ms: Millis,
        timeout_ms: Millis,
    },
    /// End the write pause on `node`. With `demote_to`, first make it a replica of that node and
    /// close its normal clients (`REPLICAOF`, `CLIENT KILL TYPE normal`), then unpause: a write
    /// held by the pause must fail (connection closed, or `READONLY`), never be acknowledged by
    /// a node whose data is about to be replaced. Without it (an aborted switchover), just
    /// unpause: the node is still the master.
    ResumeWrites {
        node: NodeAddr,
        demote_to: Option<NodeAddr>,
    },
    /// How a forced failover ([`Event::ForceFailover`](super::Event::ForceFailover)) stands, for
    /// whoever asked for it.
    Forced(ForcedOutcome),
}

/// The answers to an [`Event::ForceFailover`](super::Event::ForceFailover), in order: `Refused`,
/// or `Started` then `Switched` or `Aborted`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForcedOutcome {
    /// Not started; nothing changed.
    Refused(ForceRefused),
    /// Started in `epoch`; `paused` when writes are being paused (planned switchover).
    Started {
        epoch: Epoch,
        target: NodeAddr,
        paused: bool,
    },
    /// `to` is master and the write port was asked to move to it (after which, for a paused
    /// switchover, [`Action::ResumeWrites`] demotes `from`).
    Switched {
        epoch: Epoch,
        from: NodeAddr,
        to: NodeAddr,
    },
    /// Given up; the write port was not moved by this attempt. `reason` is the abort notice
    /// (`-failover-abort-not-synced`, `-failover-abort-slave-timeout`), or
    /// `+config-update-from` when another controller's newer configuration superseded it.
    Aborted { epoch: Epoch, reason: NoticeKind },
}

/// Why a forced failover was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForceRefused {
    /// Sentinel: `-INPROG Failover already in progress`.
    #[error("a failover is already in progress")]
    InProgress,
    /// Sentinel: `-NOGOODSLAVE No suitable replica to promote`.
    #[error(
        "no suitable replica to promote (one that is up, replicates from the master with its link \
         up, and has a replica-priority other than 0)"
    )]
    NoGoodReplica,
    #[error("{0} is not a node of this service")]
    UnknownNode(NodeAddr),
    /// This controller is in TILT mode: what it knows of the nodes predates its own stall.
    #[error(
        "this controller is in TILT mode (its own timer stalled); try again in {remaining_ms} ms"
    )]
    Tilt { remaining_ms: Millis },
    /// This controller lost its state file and does not vote or lead until a majority of the
    /// others told it the current epoch (safe mode).
    #[error(
        "this controller is in safe mode (its state file could not be read) until a majority of \
         the other controllers have been heard; ask another controller, or wait"
    )]
    SafeMode,
    #[error("{0} is the master already")]
    AlreadyMaster(NodeAddr),
    #[error("{node} cannot be promoted: {why}")]
    NotEligible { node: NodeAddr, why: &'static str },
    /// Another controller is standing for, or running, a failover of this service: one at a
    /// time across the controllers, or two could promote different replicas.
    #[error(
        "controller {leader} is running a failover of this service in epoch {epoch}; try again \
         once it has ended"
    )]
    PeerInProgress { leader: ControllerId, epoch: Epoch },
    /// Another controller won the epoch's vote (or a later epoch started) before we did. Nothing
    /// was changed on any Redis server.
    #[error(
        "another failover took epoch {epoch} first{}; nothing was changed",
        leader.as_ref().map(|l| format!(" (controller {l} won its vote)")).unwrap_or_default()
    )]
    LostElection {
        epoch: Epoch,
        leader: Option<ControllerId>,
    },
    /// A majority of the controllers did not vote for us within the request's timeout (they
    /// are unreachable, or voted for someone else). Nothing was changed on any Redis server.
    #[error(
        "only {votes} of the {needed} votes a failover needs (a majority of the controllers) \
         arrived in epoch {epoch} before the timeout; nothing was changed"
    )]
    NoMajority {
        epoch: Epoch,
        votes: usize,
        needed: usize,
    },
}

/// The state a controller must keep across restarts (Sentinel rewrites its config file for the
/// same reasons). Give it back to [`ServiceMachine::new`](super::ServiceMachine::new).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persisted {
    /// The highest epoch seen.
    pub current_epoch: Epoch,
    /// Our vote in the highest epoch we voted in.
    pub vote: Option<Vote>,
    /// The master we believe in, and the epoch that made it master.
    pub master: NodeAddr,
    pub config_epoch: Epoch,
}

/// A vote for a failover leader (Sentinel's `leader` / `leader_epoch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    pub epoch: Epoch,
    pub leader: ControllerId,
}

/// An event for operators, as Sentinel publishes it: `<name> <payload>`, e.g.
/// `+sdown master mymaster 10.0.0.1 6379`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// Formatted as Sentinel does: `master <name> <ip> <port>` for the master, `slave <ip>:<port>
    /// <ip> <port> @ <name> <master-ip> <master-port>` for another node, then any detail.
    pub payload: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.payload)
    }
}

/// Sentinel's event names that this machine emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// `+sdown`: a node stopped replying validly (down from our point of view).
    Sdown,
    /// `-sdown`.
    SdownCleared,
    /// `+odown`: enough controllers see the master SDOWN.
    Odown,
    /// `-odown`.
    OdownCleared,
    /// `+new-epoch`: we adopted or started a higher epoch.
    NewEpoch,
    /// `+try-failover`: we became a candidate.
    TryFailover,
    /// `+vote-for-leader`: we voted (once per epoch).
    VoteForLeader,
    /// `+elected-leader`: a majority (and quorum) voted for us.
    ElectedLeader,
    /// `-failover-abort-not-elected`.
    FailoverAbortNotElected,
    /// `+failover-state-select-slave`.
    FailoverStateSelectSlave,
    /// `+selected-slave`.
    SelectedSlave,
    /// `-failover-abort-no-good-slave`.
    FailoverAbortNoGoodSlave,
    /// `+failover-state-send-slaveof-noone`.
    FailoverStateSendSlaveofNoone,
    /// `+failover-state-wait-promotion`.
    FailoverStateWaitPromotion,
    /// `-failover-abort-slave-timeout`: the chosen replica did not become master in time.
    FailoverAbortSlaveTimeout,
    /// `+promoted-slave`: it reports `role:master`.
    PromotedSlave,
    /// `+failover-state-reconf-slaves`.
    FailoverStateReconfSlaves,
    /// `+slave-reconf-sent`.
    SlaveReconfSent,
    /// `+slave-reconf-sent-be`: best effort, after the failover timed out.
    SlaveReconfSentBe,
    /// `-slave-reconf-sent-timeout`.
    SlaveReconfSentTimeout,
    /// `+slave-reconf-inprog`: it follows the new master.
    SlaveReconfInprog,
    /// `+slave-reconf-done`: ...with the link up.
    SlaveReconfDone,
    /// `+failover-end-for-timeout`.
    FailoverEndForTimeout,
    /// `+failover-end`.
    FailoverEnd,
    /// `+switch-master <name> <oldip> <oldport> <newip> <newport>`.
    SwitchMaster,
    /// `+config-update-from`: a peer told us of a newer master.
    ConfigUpdateFrom,
    /// `+convert-to-slave`: a node that is not the master claims to be one; we demote it.
    ConvertToSlave,
    /// `+fix-slave-config`: a replica follows the wrong master.
    FixSlaveConfig,
    /// `+reboot`: the node's run id changed.
    Reboot,
    /// `+failover-state-wait-sync` (ours, no Sentinel equivalent): a planned switchover paused
    /// writes on the master and waits for the selected replica to catch up.
    FailoverStateWaitSync,
    /// `-failover-abort-not-synced` (ours): the selected replica did not catch up in time, or
    /// writes could not be paused; writes resume on the unchanged master.
    FailoverAbortNotSynced,
    /// `+config-conflict` (ours, no Sentinel equivalent): a peer announces another master in
    /// the same config epoch as ours. Every controller keeps the lower address, so they all
    /// agree again; only a state left by an older version (or a hand-edited state file) can
    /// hold such a conflict, since one epoch has one leader.
    ConfigConflict,
    /// `+tilt`: this controller's own timer stalled (a paused VM, SIGSTOP, a blocked
    /// executor); until `-tilt` it keeps probing and listening but judges and changes nothing.
    Tilt,
    /// `-tilt`.
    TiltCleared,
    /// `+safe-mode` (ours): the state file could not be read, so this controller neither votes
    /// nor starts a failover until a majority of the other controllers told it the current
    /// epoch.
    SafeMode,
    /// `-safe-mode` (ours): heard them; votes again, in later epochs only.
    SafeModeCleared,
    /// `+monitor master <name> <ip> <port> quorum <n>`: at start, for each service.
    Monitor,
    /// `+slave`: a node other than the master answered for the first time, or, after
    /// `+switch-master`, each node is listed as a replica of the new master.
    Slave,
    /// `+sentinel`: the first hello from a peer since we started.
    Sentinel,
    /// `+role-change`: a node reports a new role, the one we expect of it.
    RoleChange,
    /// `-role-change`: a node reports a new role we do not expect of it (a replica that says
    /// it is a master, a master that says it is a replica).
    RoleChangeMismatch,
    /// `+failover-detected`: a peer stands for or runs a failover of our master (its vote
    /// request or hello), once per epoch.
    FailoverDetected,
}

impl NoticeKind {
    /// Sentinel's name for the event.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Sdown => "+sdown",
            NoticeKind::SdownCleared => "-sdown",
            NoticeKind::Odown => "+odown",
            NoticeKind::OdownCleared => "-odown",
            NoticeKind::NewEpoch => "+new-epoch",
            NoticeKind::TryFailover => "+try-failover",
            NoticeKind::VoteForLeader => "+vote-for-leader",
            NoticeKind::ElectedLeader => "+elected-leader",
            NoticeKind::FailoverAbortNotElected => "-failover-abort-not-elected",
            NoticeKind::FailoverStateSelectSlave => "+failover-state-select-slave",
            NoticeKind::SelectedSlave => "+selected-slave",
            NoticeKind::FailoverAbortNoGoodSlave => "-failover-abort-no-good-slave",
            NoticeKind::FailoverStateSendSlaveofNoone => "+failover-state-send-slaveof-noone",
            NoticeKind::FailoverStateWaitPromotion => "+failover-state-wait-promotion",
            NoticeKind::FailoverAbortSlaveTimeout => "-failover-abort-slave-timeout",
            NoticeKind::PromotedSlave => "+promoted-slave",
            NoticeKind::FailoverStateReconfSlaves => "+failover-state-reconf-slaves",
            NoticeKind::SlaveReconfSent => "+slave-reconf-sent",
            NoticeKind::SlaveReconfSentBe => "+slave-reconf-sent-be",
            NoticeKind::SlaveReconfSentTimeout => "-slave-reconf-sent-timeout",
            NoticeKind::SlaveReconfInprog => "+slave-reconf-inprog",
            NoticeKind::SlaveReconfDone => "+slave-reconf-done",
            NoticeKind::FailoverEndForTimeout => "+failover-end-for-timeout",
            NoticeKind::FailoverEnd => "+failover-end",
            NoticeKind::SwitchMaster => "+switch-master",
            NoticeKind::ConfigUpdateFrom => "+config-update-from",
            NoticeKind::ConvertToSlave => "+convert-to-slave",
            NoticeKind::FixSlaveConfig => "+fix-slave-config",
            NoticeKind::Reboot => "+reboot",
            NoticeKind::FailoverStateWaitSync => "+failover-state-wait-sync",
            NoticeKind::FailoverAbortNotSynced => "-failover-abort-not-synced",
            NoticeKind::ConfigConflict => "+config-conflict",
            NoticeKind::Tilt => "+tilt",
            NoticeKind::TiltCleared => "-tilt",
            NoticeKind::SafeMode => "+safe-mode",
            NoticeKind::SafeModeCleared => "-safe-mode",
            NoticeKind::Monitor => "+monitor",
            NoticeKind::Slave => "+slave",
            NoticeKind::Sentinel => "+sentinel",
            NoticeKind::RoleChange => "+role-change",
            NoticeKind::RoleChangeMismatch => "-role-change",
            NoticeKind::FailoverDetected => "+failover-detected",
        }
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
