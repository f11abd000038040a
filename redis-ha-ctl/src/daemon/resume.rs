//! The machines a controller starts with: each service's failover machine resumed from
//! whichever is newer, the state file or the data plane's pinned maps (another run of this
//! controller, or an operator, may have advanced them), and the floating addresses' ownership
//! machine.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use tokio::time::Instant;

use super::executor::now_ms;
use crate::{
    config::{Config, ControllerConfig, ServiceConfig},
    dataplane::{ServiceTarget, Snapshot},
    failover::{Action, ControllerId, MachineConfig, Millis, Persisted, ServiceMachine},
    ha::HaMachine,
    persist::StateStore,
};

/// The machines a controller starts with, resumed from the state file and the data plane.
pub(super) struct Machines {
    pub(super) targets: Vec<ServiceTarget>,
    pub(super) machines: Vec<ServiceMachine>,
    /// Their first actions (the current master and read pool), performed like any other.
    pub(super) first: Vec<(usize, Vec<Action>)>,
    /// Who holds the floating addresses: every controller takes part, as a voter at least.
    pub(super) ha: HaMachine,
    pub(super) ha_tick: Duration,
}

impl Machines {
    /// `snapshot`: what the data plane serves now, if this node has one. `unreadable`: the
    /// state file could not be read, so every machine starts in safe mode.
    pub(super) fn start(
        cfg: &Config,
        ctl: &ControllerConfig,
        store: &StateStore,
        snapshot: Option<&Snapshot>,
        local: &BTreeSet<Ipv4Addr>,
        start: Instant,
        unreadable: bool,
    ) -> anyhow::Result<Self> {
        let targets: Vec<ServiceTarget> = cfg
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| match snapshot {
                Some(snap) => ServiceTarget::resume(i as u32, s, snap),
                None => ServiceTarget::initial(i as u32, s),
            })
            .map(|t| t.on_host(local))
            .collect();
        let mut machines = Vec::new();
        let mut first = Vec::new();
        for (i, svc) in cfg.services.iter().enumerate() {
            let (mut machine, mut actions) =
                service_machine(svc, ctl, store, &targets[i], now_ms(start))?;
            if unreadable {
                actions.extend(machine.enter_safe_mode());
            }
            machines.push(machine);
            // The current master and read pool go through the same path as every other action.
            first.push((i, actions));
        }

        let ha_params = ctl.ha_params(cfg.ha.as_ref());
        let peer_ids: Vec<ControllerId> = ctl
            .peers
            .iter()
            .map(|p| ControllerId(p.id.clone()))
            .collect();
        // A candidate's timers (claims, the lease, vacancy) need a fine tick; a voter only
        // answers.
        let ha_tick = Duration::from_millis(if ha_params.candidacy.is_some() {
            (ha_params.heartbeat_ms / 5).clamp(5, 100)
        } else {
            100
        });
        let ha = HaMachine::new(
            ControllerId(ctl.id.clone()),
            peer_ids,
            ha_params,
            store.ha(),
            now_ms(start),
        );
        Ok(Self {
            targets,
            machines,
            first,
            ha,
            ha_tick,
        })
    }
}

/// The failover machine of `svc` (at the start, or added by a reload) and its first actions,
/// resumed from whichever is newer: our state file or the data plane's target `t` (the pinned
/// maps, which another run of this controller, or an operator, may have advanced).
pub(super) fn service_machine(
    svc: &ServiceConfig,
    ctl: &ControllerConfig,
    store: &StateStore,
    t: &ServiceTarget,
    now: Millis,
) -> anyhow::Result<(ServiceMachine, Vec<Action>)> {
    let mut persisted = store.get(&svc.name);
    if let Some(master) = t.master
        && t.epoch > persisted.as_ref().map_or(0, |p| p.config_epoch)
    {
        persisted = Some(Persisted {
            current_epoch: t
                .epoch
                .max(persisted.as_ref().map_or(0, |p| p.current_epoch)),
            vote: persisted.and_then(|p| p.vote),
            master,
            config_epoch: t.epoch,
        });
    }
    let mc = MachineConfig {
        service: svc.name.clone(),
        me: ControllerId(ctl.id.clone()),
        peers: ctl
            .peers
            .iter()
            .map(|p| ControllerId(p.id.clone()))
            .collect(),
        peer_addrs: ctl
            .peers
            .iter()
            .map(|p| (ControllerId(p.id.clone()), p.addr))
            .collect(),
        master: svc.backends[0],
        replicas: svc.backends[1..].to_vec(),
        params: svc.failover_params(ctl),
    };
    ServiceMachine::new(mc, persisted, now).with_context(|| format!("service {}", svc.name))
}
