//! A reload of the config (`SIGHUP`, `systemctl reload`): the executor reads the file the
//! daemon started with, checks it as a start would, refuses it whole when it changes a key
//! that cannot change live (see [`crate::config::diff`]), and otherwise applies it between two
//! inputs, so no decision ever sees half of a config. The floating addresses, the peers and
//! the API's connections are untouched: a reload moves nothing that did not change.
//!
//! A child module of the executor: applying a reload edits its per-service state.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf, sync::Arc};

use tokio::{sync::watch, task::JoinSet};
use tracing::{error, info};

use super::{Executor, unix_ms};
use crate::{
    config::{
        Config,
        diff::{ReloadPlan, describe, diff},
    },
    daemon::{operator::Operator, redis_io, resume::service_machine, snapshot::ServiceView},
    dataplane::{Dataplane, ServiceTarget},
    failover::{Action, Params},
    sentinel_api::Catalog,
    status::ReloadStatus,
};

/// What a reload needs beyond the executor's own state.
pub(in crate::daemon) struct Reloading {
    /// The file the daemon was started with (`None`: started from a config in memory, which
    /// a reload cannot read again).
    pub(in crate::daemon) path: Option<PathBuf>,
    /// The config running now: what the next reload is compared with.
    pub(in crate::daemon) running: Config,
    /// This host's addresses: which backends of an added service are local.
    pub(in crate::daemon) local: BTreeSet<Ipv4Addr>,
    /// The probe tasks, replaced as a whole when the services change (dropping the set stops
    /// the old ones).
    pub(in crate::daemon) probes: JoinSet<()>,
    /// The services' names as the peer receiver maps datagrams to them.
    pub(in crate::daemon) names: watch::Sender<Vec<String>>,
    /// The services as the API answers for them.
    pub(in crate::daemon) catalog: watch::Sender<Arc<Catalog>>,
}

impl Reloading {
    /// The file, parsed, validated and compared with the running config; or why not, every
    /// problem with its file, line and key.
    fn read(&self) -> Result<(Config, ReloadPlan), String> {
        let Some(path) = &self.path else {
            return Err("the daemon was not started from a file: nothing to reload".to_owned());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the config: {e}", path.display()))?;
        let config = Config::parse(path, &text).map_err(|e| e.to_string())?;
        let plan = diff(&self.running, &config).map_err(|refusals| {
            refusals
                .iter()
                .map(|r| describe(path, &text, r))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok((config, plan))
    }
}

/// The catalog the API answers from, for `config`'s services.
pub(in crate::daemon) fn catalog(config: &Config) -> Catalog {
    let ctl = config.controller.as_ref();
    Catalog {
        services: config.services.clone(),
        peer_validity_ms: config
            .services
            .iter()
            .map(|s| ctl.map_or(0, |c| s.failover_params(c).peer_report_validity_ms))
            .collect(),
    }
}

/// A new service's parts, built before anything running is touched.
struct Added {
    target: ServiceTarget,
    machine: crate::failover::ServiceMachine,
    actions: Vec<Action>,
}

impl<D: Dataplane> Executor<D> {
    /// Reloads the config; returns the added services' first actions, to perform like any
    /// other. The outcome is logged, counted and shown in the status.
    pub(super) fn reload(&mut self) -> Vec<(usize, Vec<Action>)> {
        let Some(mut r) = self.reloading.take() else {
            return Vec::new();
        };
        let result = match r.read() {
            Ok((config, plan)) => self.apply_reload(&mut r, &config, &plan).map(|first| {
                r.running = config;
                (plan, first)
            }),
            Err(message) => Err(message),
        };
        let path = r
            .path
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string());
        let (applied, message, first) = match result {
            Ok((plan, first)) => {
                info!(%path, "config reloaded: {plan}");
                (true, format!("applied: {plan}"), first)
            }
            Err(message) => {
                error!(%path, "config reload refused, the running config stays: {message}");
                (false, message, Vec::new())
            }
        };
        self.metrics.reloaded(applied);
        self.last_reload = Some(ReloadStatus {
            at_unix_ms: unix_ms(),
            applied,
            message,
        });
        self.reloading = Some(r);
        first
    }

    /// Applies `plan` (which takes the running config to `config`): first builds whatever can
    /// fail (machines, parameters, probe clients), then changes the running state, so a
    /// failure leaves it as it was.
    fn apply_reload(
        &mut self,
        r: &mut Reloading,
        config: &Config,
        plan: &ReloadPlan,
    ) -> Result<Vec<(usize, Vec<Action>)>, String> {
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        // Kept services stay at the addresses they run on: a backend name that resolves
        // elsewhere now is followed as every move is (`follow`), machine and slot together.
        let mut services = config.services.clone();
        for (s, running) in services.iter_mut().zip(&self.services) {
            s.backends.clone_from(&running.backends);
        }
        let mut retuned: Vec<(usize, Params)> = Vec::new();
        for &i in &plan.retuned {
            let svc = &config.services[i];
            let params = svc.failover_params(&self.ctl);
            self.machines[i]
                .clone()
                .set_params(params.clone())
                .map_err(|e| format!("service {}: {e}", svc.name))?;
            retuned.push((i, params));
        }
        let snapshot = match &self.dataplane {
            Some(dp) if !plan.added.is_empty() => Some(
                dp.snapshot()
                    .map_err(|e| format!("reading the data plane's maps: {e}"))?,
            ),
            _ => None,
        };
        let mut added = Vec::new();
        for i in plan.added.clone() {
            let svc = &config.services[i];
            let target = match &snapshot {
                Some(snap) => ServiceTarget::resume(i as u32, svc, snap),
                None => ServiceTarget::initial(i as u32, svc),
            }
            .on_host(&r.local);
            let (machine, actions) = service_machine(svc, &self.ctl, &self.store, &target, now)
                .map_err(|e| format!("{e:#}"))?;
            added.push(Added {
                target,
                machine,
                actions,
            });
        }
        let mut probes = JoinSet::new();
        redis_io::spawn_probes(&mut probes, &services, &self.ctl, &self.tx, &self.metrics)
            .map_err(|e| format!("{e:#}"))?;

        // Nothing below fails: the running state changes as a whole.
        let kept = config.services.len().min(self.services.len());
        self.machines.truncate(kept);
        self.targets.truncate(kept);
        self.views.truncate(kept);
        self.operators.truncate(kept);
        self.undurable.truncate(kept);
        for (i, params) in retuned {
            let set = self.machines[i].set_params(params);
            debug_assert!(set.is_ok(), "checked on a copy above");
        }
        let mut first = Vec::new();
        for (i, a) in plan.added.clone().zip(added) {
            self.views
                .push(ServiceView::new(&a.machine, &self.ctl.peers));
            self.operators.push(Operator::default());
            self.undurable.push(None);
            self.machines.push(a.machine);
            self.targets.push(a.target);
            first.push((i, a.actions));
        }
        self.services = services;
        self.names = self.services.iter().map(|s| s.name.clone()).collect();
        self.read_pools.resize(self.services.len());
        r.probes = probes;
        r.names.send_replace(self.names.clone());
        let mut shown = config.clone();
        shown.services.clone_from(&self.services);
        r.catalog.send_replace(Arc::new(catalog(&shown)));
        // Added services' names are watched too; the resolver sends every name afresh.
        self.hosts = super::Watched::of(&self.services);
        if let Some(resolving) = &self.resolving {
            resolving.send_replace(self.hosts.names());
        }
        if !plan.removed.is_empty() {
            // Removed services' ports, state and slots leave the maps (`plan`'s step 6);
            // added ones arrive with their first actions.
            super::apply(&mut self.dataplane, &self.targets, "(reload)");
        }
        Ok(first)
    }
}
