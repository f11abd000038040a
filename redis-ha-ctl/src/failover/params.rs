//! Tuning of one service's failover, with Sentinel's defaults.

use serde::{Deserialize, Serialize};

use super::Millis;

/// Whether the read port may send clients to the master. The config's `read_from_master` key
/// is this type itself (lower-case names), so the machine and the file cannot drift apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFromMaster {
    /// Reads only ever go to replicas; with no healthy replica the read port has no backend.
    Never,
    /// Reads go to the master only while no replica is eligible (keeps reads available).
    #[default]
    Fallback,
    /// The master is always one of the read backends.
    Always,
}

/// Tuning of one service. Field names follow Sentinel's config where one exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Controllers (this one included) that must report the master SDOWN for it to be ODOWN
    /// (`sentinel monitor <name> <ip> <port> <quorum>`). Also the minimum number of votes a leader
    /// needs, on top of a majority of all controllers.
    pub quorum: usize,
    /// How long a node may go without a valid reply before it is SDOWN
    /// (`down-after-milliseconds`).
    pub down_after_ms: Millis,
    /// `failover-timeout`: bounds each failover phase, and twice it separates two attempts.
    pub failover_timeout_ms: Millis,
    /// How many replicas are pointed at the new master at the same time (`parallel-syncs`): each
    /// one stops serving reads while it resynchronises.
    pub parallel_syncs: usize,
    /// A replica whose last interaction with its master is older than this leaves the read pool.
    pub max_replica_lag_ms: Millis,
    /// Whether the master serves the read port.
    pub read_from_master: ReadFromMaster,
    /// Consecutive failed probes needed, on top of `down_after_ms`, before a node is SDOWN
    /// (pingora's hysteresis: one lost probe must not flip a node).
    pub fall: u32,
    /// Consecutive successful probes needed before an SDOWN node is up again.
    pub rise: u32,
    /// How often the executor probes each node (Sentinel's ping period). A node that has not
    /// replied within 5 of these cannot be promoted.
    pub probe_interval_ms: Millis,
    /// How often we tell our peers our view (Sentinel's hello / ask period), and re-ask for votes.
    pub hello_interval_ms: Millis,
    /// A peer's report (its view, its vote) older than this is forgotten (Sentinel: 5 ask periods).
    pub peer_report_validity_ms: Millis,
    /// A candidate not elected within min(this, failover_timeout) gives up the attempt.
    pub election_timeout_ms: Millis,
    /// Upper bound of the random delay added to the next failover attempt (`SENTINEL_MAX_DESYNC`).
    pub max_desync_ms: Millis,
    /// A replica told to follow the new master that has not started to within this is considered
    /// done (`SENTINEL_SLAVE_RECONF_TIMEOUT`); the general fix-up reconfigures it later.
    pub replica_reconf_timeout_ms: Millis,
    /// How long a node must be up, and claim to be a master, before we demote it
    /// (`+convert-to-slave`), and the minimum spacing of two REPLICAOF sent to the same node outside
    /// a failover. Gives a newer configuration time to reach us first (Sentinel: 4 hello periods).
    pub convert_delay_ms: Millis,
}

impl Default for Params {
    /// Sentinel's defaults (`src/sentinel.c`), and 2/2 pingora-style hysteresis.
    fn default() -> Self {
        Self {
            quorum: 2,
            down_after_ms: 30_000,
            failover_timeout_ms: 180_000,
            parallel_syncs: 1,
            max_replica_lag_ms: 10_000,
            read_from_master: ReadFromMaster::default(),
            fall: 2,
            rise: 2,
            probe_interval_ms: 1_000,
            hello_interval_ms: 1_000,
            peer_report_validity_ms: 5_000,
            election_timeout_ms: 10_000,
            max_desync_ms: 1_000,
            replica_reconf_timeout_ms: 10_000,
            convert_delay_ms: 8_000,
        }
    }
}

impl Params {
    /// How long a candidate waits per controller with a lower id that also sees the master
    /// down before standing itself: longer than the spread of the controllers' ODOWN times
    /// (about two probe intervals) plus one tick, so the lower id's vote request arrives first.
    pub fn candidate_stagger_ms(&self) -> Millis {
        3 * self.hello_interval_ms.max(self.probe_interval_ms).max(100)
    }

    /// The election timeout Sentinel uses: the smaller of the election and failover timeouts.
    pub(crate) fn effective_election_timeout(&self) -> Millis {
        self.election_timeout_ms.min(self.failover_timeout_ms)
    }

    /// How long a probe reply stays fresh enough to promote that node (Sentinel: 5 ping periods).
    pub(crate) fn reply_validity(&self) -> Millis {
        self.probe_interval_ms.saturating_mul(5)
    }

    /// How long one probe may take before it counts as failed. A frozen node (SIGSTOP, a hung
    /// host) answers nothing, so each probe of it takes this long, and it is SDOWN only after
    /// `fall` of them failed in a row. The first of them starts up to one interval after the
    /// last reply, so `fall` timeouts must fit in down-after minus one interval for a frozen
    /// node to be SDOWN as early as a dead one (half of down-after, the former timeout, left a
    /// frozen master SDOWN one more probe later). A slow reply is no worse off than before: a
    /// node is SDOWN only when no probe at all succeeded for down-after.
    pub fn probe_timeout_ms(&self) -> Millis {
        let budget = self.down_after_ms.saturating_sub(self.probe_interval_ms);
        (budget / Millis::from(self.fall.max(1))).clamp(50, 1000)
    }

    /// A gap between two ticks longer than this means this controller itself stalled (a paused
    /// VM, SIGSTOP, a blocked executor) and enters TILT (Sentinel: 2 s between two runs of its
    /// 100 ms timer). Half of down-after, so that a stall is caught before the time it lost
    /// alone could make a node SDOWN; never below 5 ticks, so that ordinary scheduling delays
    /// on a busy host do not tilt; never above Sentinel's 2 s.
    pub fn tilt_trigger_ms(&self) -> Millis {
        (self.down_after_ms / 2).clamp(500, 2_000)
    }

    /// How long TILT lasts (Sentinel: 30 s, its default down-after): long enough for every node
    /// to answer probes again, or to be silent for a full down-after of time this controller
    /// really watched, and for every peer report to be renewed or to expire.
    pub fn tilt_period_ms(&self) -> Millis {
        self.down_after_ms
            .max(self.peer_report_validity_ms)
            .min(30_000)
    }

    /// How long a master may report itself a replica before it is SDOWN (Sentinel adds two INFO
    /// periods to down-after; our INFO period is the probe interval).
    pub(crate) fn wrong_role_grace(&self) -> Millis {
        self.down_after_ms
            .saturating_add(self.probe_interval_ms.saturating_mul(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_node_fails_fall_probes_within_down_after() {
        for (down_after, interval) in [(1_000, 100), (250, 100), (30_000, 1_000), (5_000, 100)] {
            let p = Params {
                down_after_ms: down_after,
                probe_interval_ms: interval,
                ..Params::default()
            };
            let t = p.probe_timeout_ms();
            assert!(
                interval + Millis::from(p.fall) * t <= down_after.max(interval + 100),
                "{down_after}/{interval}: {t}"
            );
            assert!((50..=1_000).contains(&t), "{t}");
        }
        let p = Params {
            down_after_ms: 1_000,
            probe_interval_ms: 100,
            ..Params::default()
        };
        assert_eq!(p.probe_timeout_ms(), 450);
    }
}
