//! The read pools' warm-up after a start, as a pure rule (time is an argument).
//!
//! A machine that just started knows nothing of its replicas' health: its first read pool is
//! empty, and it grows as the probes come in. The pinned maps meanwhile serve the pool the
//! previous run left. Until every node has been probed a few times, the pools the machines
//! publish are held back, the latest one per service kept; when the hold ends, that one is
//! applied. So a restart never empties a pool that is serving reads.

use crate::failover::{Millis, NodeAddr};

/// How many probe rounds the hold lasts, at least.
const PROBE_ROUNDS: Millis = 4;
/// ...and at least this long, however fast the probes.
const MIN_HOLD_MS: Millis = 500;

/// Read pools held back until `until` (on the executor's clock: ms since the start).
pub(super) struct ReadPoolHold {
    until: Millis,
    /// Per service: the latest pool its machine published while held.
    held: Vec<Option<Vec<NodeAddr>>>,
}

impl ReadPoolHold {
    /// The hold of `services` services, for a start at time 0 with probes every
    /// `probe_interval_ms`.
    pub(super) fn after_start(services: usize, probe_interval_ms: Millis) -> Self {
        Self {
            until: (probe_interval_ms * PROBE_ROUNDS).max(MIN_HOLD_MS),
            held: vec![None; services],
        }
    }

    /// A pool a machine published at `now`: returned if it may be applied now, kept (replacing
    /// any earlier one of that service) while the hold lasts.
    pub(super) fn offer(
        &mut self,
        service: usize,
        pool: Vec<NodeAddr>,
        now: Millis,
    ) -> Option<Vec<NodeAddr>> {
        if now < self.until {
            self.held[service] = Some(pool);
            return None;
        }
        Some(pool)
    }

    /// A reload changed the number of services to `services`.
    /// Node `from` of `service` moved to another address: a pool held from before must not
    /// name the address the service no longer has.
    pub(super) fn moved(&mut self, service: usize, from: NodeAddr) {
        if let Some(Some(pool)) = self.held.get_mut(service) {
            pool.retain(|a| *a != from);
        }
    }

    pub(super) fn resize(&mut self, services: usize) {
        self.held.resize(services, None);
    }

    /// Once the hold is over (`now` is past it), the pools it kept, each once, by service.
    pub(super) fn release(&mut self, now: Millis) -> Vec<(usize, Vec<NodeAddr>)> {
        if now < self.until {
            return Vec::new();
        }
        self.held
            .iter_mut()
            .enumerate()
            .filter_map(|(i, held)| held.take().map(|pool| (i, pool)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(last: u8) -> NodeAddr {
        NodeAddr::new(std::net::Ipv4Addr::new(198, 18, 1, last), 6379)
    }

    #[test]
    fn the_hold_lasts_four_probe_rounds_and_at_least_half_a_second() {
        assert_eq!(ReadPoolHold::after_start(1, 100).until, 500);
        assert_eq!(ReadPoolHold::after_start(1, 10).until, 500);
        assert_eq!(ReadPoolHold::after_start(1, 1000).until, 4000);
    }

    #[test]
    fn pools_published_during_the_hold_wait_and_only_the_latest_is_applied() {
        let mut hold = ReadPoolHold::after_start(2, 100);
        assert_eq!(hold.offer(0, vec![], 0), None);
        assert_eq!(hold.offer(0, vec![node(12)], 200), None);
        assert_eq!(hold.offer(0, vec![node(12), node(13)], 300), None);
        assert_eq!(hold.release(499), vec![]);
        assert_eq!(hold.release(500), vec![(0, vec![node(12), node(13)])]);
        // Released once; a service that published nothing has nothing to release.
        assert_eq!(hold.release(600), vec![]);
    }

    #[test]
    fn after_the_hold_pools_pass_at_once() {
        let mut hold = ReadPoolHold::after_start(1, 100);
        assert_eq!(hold.offer(0, vec![node(12)], 500), Some(vec![node(12)]));
        assert_eq!(hold.release(600), vec![]);
    }

    #[test]
    fn services_are_held_independently() {
        let mut hold = ReadPoolHold::after_start(3, 100);
        assert_eq!(hold.offer(2, vec![node(13)], 10), None);
        assert_eq!(hold.offer(0, vec![node(11)], 20), None);
        assert_eq!(
            hold.release(700),
            vec![(0, vec![node(11)]), (2, vec![node(13)])]
        );
    }
}
