//! Which replicas (and when, the master) serve the read port.

use super::*;

impl ServiceMachine {
    pub(super) fn publish_read_pool(&mut self, now: Millis, out: &mut Vec<Action>) {
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
    pub(super) fn compute_read_pool(&self, now: Millis) -> Vec<NodeAddr> {
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
    pub(super) fn serves_for_replaced(&self, r: &ReplicaInfo, now: Millis) -> bool {
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
}
