//! Following a backend whose host name resolves to a new address (see `hostnames`): the
//! executor moves it in every place that knows it by address, in one step between two inputs.
//!
//! The backend keeps its index in the config, so its data-plane slot, and its node in the
//! failover machine, so its role. The data plane changes in two writes: first the backend
//! leaves the read pool at its old address (the Maglev table stops choosing it, READABLE is
//! cleared, its read connections are reset), then its slot takes the new address
//! (`BACKEND_ADDRS` gains the new one before the slot changes and loses the old one after).
//! A slot never points nowhere: a moved master's slot goes from the old address to the new
//! one in one write. Connections made to the old address are reset by the program on their
//! next packet, as a removed backend's are: their entry's address no longer matches the
//! slot's. The probes are started again for the new address; the read pool takes the backend
//! back once a probe there says it is a replica in sync.
//!
//! A child module of the executor: following a move edits its per-service state.

use std::sync::Arc;

use tracing::{error, warn};

use super::{Executor, apply, reload};
use crate::{
    daemon::{hostnames::Lookup, redis_io},
    dataplane::Dataplane,
    failover::Action,
};

impl<D: Dataplane> Executor<D> {
    /// A lookup of `name` from the resolver task; returns the actions of the moves followed.
    pub(super) fn resolved(&mut self, name: &str, lookup: &Lookup) -> Vec<(usize, Vec<Action>)> {
        self.hosts.resolved(name, lookup);
        for (i, view) in self.views.iter_mut().enumerate() {
            view.unresolved = self.hosts.unresolved(i);
        }
        self.follow_moves()
    }

    /// Follows every pending move the failover machines accept now; the others (a failover
    /// under way) are tried again on the next tick.
    pub(super) fn follow_moves(&mut self) -> Vec<(usize, Vec<Action>)> {
        let moves = self.hosts.moves();
        if moves.is_empty() {
            return Vec::new();
        }
        let now = self.now();
        let mut out = Vec::new();
        for m in moves {
            let (i, j) = (m.service, m.backend);
            if self.services[i].backends.contains(&m.to) {
                self.hosts.refused(
                    &m,
                    &format!("{} is already another backend of the service", m.to),
                );
                continue;
            }
            let actions = match self.machines[i].move_node(m.from, m.to, now) {
                Ok(actions) => actions,
                Err(e) => {
                    self.hosts.refused(&m, &e.to_string());
                    continue;
                }
            };
            let name = self.names[i].clone();
            // First out of the read pool at the old address, then the slot's new address.
            self.targets[i].read_pool.retain(|a| *a != m.from);
            self.read_pools.moved(i, m.from);
            apply(&mut self.dataplane, &self.targets, &name);
            let t = &mut self.targets[i];
            t.backends[j] = m.to;
            if t.master == Some(m.from) {
                t.master = Some(m.to);
            }
            let local = self.reloading.as_ref().map(|r| &r.local);
            if !t.backends.iter().any(|b| b.ip() == m.from.ip()) {
                t.local.remove(m.from.ip());
            }
            if local.is_some_and(|l| l.contains(m.to.ip())) {
                t.local.insert(*m.to.ip());
            }
            apply(&mut self.dataplane, &self.targets, &name);
            self.services[i].backends[j] = m.to;
            self.views[i].moved(m.from, m.to);
            self.hosts.followed(&m);
            out.push((i, actions));
        }
        if !out.is_empty() {
            self.restart_probes();
        }
        out
    }

    /// The probes and the API's catalog, for the backends' addresses now.
    fn restart_probes(&mut self) {
        let Some(r) = self.reloading.as_mut() else {
            warn!("this controller cannot restart its probes: the moved backends are not probed");
            return;
        };
        for (running, now) in r.running.services.iter_mut().zip(&self.services) {
            running.backends.clone_from(&now.backends);
        }
        r.catalog
            .send_replace(Arc::new(reload::catalog(&r.running)));
        let mut probes = tokio::task::JoinSet::new();
        match redis_io::spawn_probes(
            &mut probes,
            &self.services,
            &self.ctl,
            &self.tx,
            &self.metrics,
        ) {
            // Dropping the old set stops the old probes.
            Ok(()) => r.probes = probes,
            Err(e) => error!("restarting the probes for a moved backend: {e:#}"),
        }
    }
}
