//! Sentinel-style failover decisions as a pure state machine.
//!
//! One [`ServiceMachine`] per monitored service (a master and its replicas) per controller. It holds
//! what Redis Sentinel keeps per master (`sentinelRedisInstance` in `src/sentinel.c`): the health of
//! every node (SDOWN), the peers' reports (ODOWN), the epochs and votes (leader election), and the
//! failover in progress. It decides; it never acts:
//!
//! ```text
//!            probes, peer messages, command results, Tick
//!   executor ─────────────────────────────────────────────▶ ServiceMachine::step(event, now, jitter)
//!      ▲                                                              │
//!      └──────────────────────── Vec<Action> ◀───────────────────────┘
//!        Emit(+sdown ...), Persist, SendToPeers, ReplyVote, PromoteReplica, ReplicaOf, SetMaster, SetReadPool,
//!        PauseAndSync, ResumeWrites, Forced
//! ```
//!
//! Sentinel reads the clock, calls `rand()` and talks to the network inside its transitions; here
//! time (`now`, milliseconds from any monotonic origin) and randomness (`jitter`) are arguments, so
//! every scenario (elections, partitions, a leader dying mid-failover) is a deterministic unit test.
//!
//! # Contract with the executor
//! - Send [`Event::Tick`] about every 100 ms (Sentinel's timer runs at 10 Hz): SDOWN by timeout,
//!   ODOWN, starting a failover and every failover timeout are decided on ticks. Once ticked,
//!   a gap longer than [`Params::tilt_trigger_ms`] since the last tick (or `now` going back)
//!   is taken for a stall of this controller itself: TILT (`+tilt`, see `machine/tilt.rs`).
//! - Probe every node every [`Params::probe_interval_ms`] (PING + `INFO replication`) and report each
//!   probe, including every timeout, as [`Event::Probe`].
//! - Perform the actions **in order**. [`Action::Persist`] must be durable (fsync) before the
//!   following [`Action::ReplyVote`] or [`Action::SendToPeers`] leaves the host: a controller that
//!   restarts must not vote twice in one epoch.
//! - Deliver peer messages for this service as [`Event::Peer`], with an authenticated sender id.
//! - Report the outcome of commands ([`Event::CommandDone`]) and of data-plane writes
//!   ([`Event::MasterApplied`]). A promotion is confirmed by a probe reporting `role:master`, not by
//!   the command's reply, as Sentinel does.
//! - An operator's failover request is [`Event::ForceFailover`]; perform [`Action::PauseAndSync`]
//!   and report [`Event::Synced`]; perform [`Action::ResumeWrites`] after the actions before it
//!   (the write port must have moved before the old master is demoted and unpaused); answer the
//!   operator from [`Action::Forced`].
//! - Pass a fresh random `jitter` to each step (any `u64`; it is reduced modulo
//!   [`Params::max_desync_ms`]). It is used exactly where Sentinel calls `rand()`: to desynchronise
//!   the controllers' next failover attempts so that split votes do not repeat forever.

mod action;
mod event;
mod health;
mod machine;
mod params;
mod select;

#[cfg(test)]
mod tests;

use std::fmt;

pub use action::{Action, ForceRefused, ForcedOutcome, Notice, NoticeKind, Persisted, Vote};
pub use event::{Command, Event, Hello, NodeInfo, PeerMsg, ProbeResult, ReplicaInfo, Role};
pub use machine::{FailoverPhase, MachineConfig, MoveRefused, ServiceMachine, SetupError};
pub use params::{Params, ReadFromMaster};

/// Milliseconds. Only differences matter: the executor may count from boot or from any origin, as
/// long as it never goes backwards (use a monotonic clock).
pub type Millis = u64;

/// A Sentinel epoch: the "term" of an election. `current_epoch` grows with every failover attempt;
/// a master's `config_epoch` is the epoch in which it was promoted, so the highest one wins.
pub type Epoch = u64;

/// A Redis node of the service. The data plane only handles IPv4, like the config's backends.
pub type NodeAddr = std::net::SocketAddrV4;

/// The id of a controller instance (Sentinel's `myid`/run id): unique per controller, stable across
/// restarts (votes are recorded against it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ControllerId(pub String);

impl fmt::Display for ControllerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ControllerId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}
