//! What a chaos run checks: the invariants after every event, and agreement once the faults stop;
//! and the picture of the world a failure prints.

use std::collections::BTreeSet;

use super::{NODES, Violation, World};
use crate::failover::{FailoverPhase, NodeAddr};

impl World {
    /// The invariants that hold at every instant.
    pub(super) fn check(&mut self, i: usize) -> Result<(), Violation> {
        let Some(m) = &self.ctls[i].machine else {
            return Ok(());
        };
        let (epoch, master) = (m.config_epoch(), m.advertised_master());
        if epoch > self.base_epoch {
            let first = *self.configs.entry(epoch).or_insert((master, i));
            if first.0 != master {
                return Err(self.violation(format!(
                    "two configurations in epoch {epoch}: {} (controller {}) and {master} (controller {i})",
                    first.0, first.1
                )));
            }
        }
        let leading = match m.phase() {
            FailoverPhase::Sync { epoch, .. }
            | FailoverPhase::Promotion { epoch, .. }
            | FailoverPhase::Reconfiguration { epoch, .. } => Some(epoch),
            FailoverPhase::Idle | FailoverPhase::Election { .. } => None,
        };
        if let Some(epoch) = leading {
            let first = *self.leaders.entry(epoch).or_insert(i);
            if first != i {
                return Err(self.violation(format!(
                    "two leaders in epoch {epoch}: controllers {first} and {i}"
                )));
            }
        }
        Ok(())
    }

    /// The master everybody agrees on, if they do.
    pub(super) fn converged(&self) -> Option<NodeAddr> {
        let masters: Vec<NodeAddr> = NODES
            .iter()
            .copied()
            .filter(|a| self.redis[a].follows.is_none())
            .collect();
        let [master] = masters[..] else {
            return None;
        };
        let whole = self.redis.iter().all(|(a, r)| {
            r.alive && r.paused_until <= self.now && (*a == master || r.follows == Some(master))
        });
        let mut epochs = BTreeSet::new();
        let agreed = self.ctls.iter().all(|c| {
            c.machine.as_ref().is_some_and(|m| {
                epochs.insert(m.config_epoch());
                m.master() == master
                    && m.advertised_master() == master
                    && m.phase() == FailoverPhase::Idle
                    && c.write.is_some_and(|(_, n)| n == master)
            })
        });
        (whole && agreed && epochs.len() == 1).then_some(master)
    }

    pub(super) fn picture(&self) -> String {
        let nodes: Vec<String> = self
            .redis
            .iter()
            .map(|(a, r)| {
                format!(
                    "{a} {} follows {:?}{}",
                    if r.alive { "up" } else { "down" },
                    r.follows,
                    if r.paused_until > self.now {
                        " paused"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let ctls: Vec<String> = self
            .ctls
            .iter()
            .map(|c| match &c.machine {
                Some(m) => format!(
                    "{}: master {} (advertised {}) config epoch {} current {} {:?}, data plane {:?}",
                    c.id,
                    m.master(),
                    m.advertised_master(),
                    m.config_epoch(),
                    m.current_epoch(),
                    m.phase(),
                    c.write
                ),
                None => format!("{}: down", c.id),
            })
            .collect();
        format!(
            "nodes [{}]; controllers [{}]",
            nodes.join("; "),
            ctls.join("; ")
        )
    }
}
