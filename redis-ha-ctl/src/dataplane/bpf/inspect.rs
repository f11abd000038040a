//! Reads for operators and metrics: what the program records (per-backend stats, counters,
//! the connection tables and when they began to spill) and the Maglev tables as written.
//! Nothing here writes, and nothing here feeds a planner.

use redis_ha_common::{
    BackendStats, Flow, FlowKey, MAX_BACKENDS, NatConfig, RING_SIZE, counter, map_name, ring_index,
};

use super::{BpfDataplane, BpfError, map_err};

impl BpfDataplane {
    /// Summed per-CPU counters of every slot that saw traffic.
    pub fn backend_stats(&self) -> Result<Vec<(u32, BackendStats)>, BpfError> {
        let mut out = Vec::new();
        for slot in 1..MAX_BACKENDS {
            let per_cpu = self
                .backend_stats
                .get(&slot, 0)
                .map_err(map_err(map_name::BACKEND_STATS))?;
            let mut sum = BackendStats::default();
            for s in per_cpu.iter() {
                sum.packets_in += s.packets_in;
                sum.bytes_in += s.bytes_in;
                sum.packets_out += s.packets_out;
                sum.bytes_out += s.bytes_out;
                sum.new_flows += s.new_flows;
                sum.flows_reset += s.flows_reset;
                sum.flows_closed += s.flows_closed;
            }
            if sum != BackendStats::default() {
                out.push((slot, sum));
            }
        }
        Ok(out)
    }

    /// `counter::*` values summed over CPUs.
    pub fn counters(&self) -> Result<[u64; counter::COUNT as usize], BpfError> {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err(map_name::COUNTERS))?;
            *v = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Up to `limit` connection-table entries (`FLOWS`, then `FLOWS_SPILL`), and how many
    /// there are in all.
    pub fn flows(&self, limit: usize) -> Result<(Vec<(FlowKey, Flow)>, usize), BpfError> {
        let mut out = Vec::new();
        let mut total = 0;
        for entry in self.flows.iter().chain(self.flows_spill.iter()) {
            // An entry removed between listing keys and reading it is simply skipped.
            let Ok((k, v)) = entry else { continue };
            total += 1;
            if out.len() < limit {
                out.push((k, v));
            }
        }
        Ok((out, total))
    }

    /// When (CLOCK_MONOTONIC, ns) the program first had to put a connection into
    /// `FLOWS_SPILL` because `FLOWS` was full; `None` if it never had to since load.
    pub fn spilling_since(&self) -> Result<Option<u64>, BpfError> {
        let since = self
            .flows_spilled
            .get(&0, 0)
            .map_err(map_err(map_name::FLOWS_SPILLED))?;
        Ok((since != 0).then_some(since))
    }

    /// This node's NAT settings, and how many full-NAT ports connections hold now.
    pub fn nat(&self) -> Result<(NatConfig, usize), BpfError> {
        let nat = self.nat.get(&0, 0).map_err(map_err(map_name::NAT))?;
        let taken = self.nat_ports.keys().filter(Result::is_ok).count();
        Ok((nat, taken))
    }

    /// One of a service's Maglev tables (for inspection).
    pub fn ring(&self, service_id: u32, half: u32) -> Result<Vec<u32>, BpfError> {
        (0..RING_SIZE)
            .map(|i| {
                self.ring
                    .get(&ring_index(service_id, half, i), 0)
                    .map_err(map_err(map_name::READ_RING))
            })
            .collect()
    }
}
