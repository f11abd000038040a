//! What [`ServiceMachine::step`](super::ServiceMachine::step) asks the executor to do.

use std::fmt;

use super::{ControllerId, Epoch, NodeAddr, PeerMsg};

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
        }
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
