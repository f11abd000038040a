//! Building the [`Status`](crate::status::Status) snapshot the API, the HTTP endpoint and the
//! metrics read: the machines' own state, plus what the executor saw of nodes and peers and
//! what the data plane counted.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use tokio::time::Instant;

use super::{executor::unix_ms, traffic::DataplaneCounters};
use crate::{
    config::{PeerConfig, ServiceConfig, backend_slot},
    dataplane::ServiceTarget,
    failover::{
        ControllerId, Hello, Millis, NodeAddr, NodeInfo, PeerMsg, ProbeResult, Role, ServiceMachine,
    },
    ha::{HaMachine, net::AddressWorker},
    status::{
        BackendTraffic, DataplaneStatus, HaStatus, NodeRole, NodeStatus, PeerStatus, ServiceStatus,
    },
};

/// What the executor saw of one node, for the status.
#[derive(Default)]
struct NodeView {
    /// The last INFO it gave.
    info: Option<NodeInfo>,
    last_ok: Option<Instant>,
    latency: Option<Duration>,
}

/// What the executor heard from one peer, for the status.
#[derive(Default)]
struct PeerView {
    last_heard: Option<Instant>,
    hello: Option<Hello>,
}

/// Per service: what the status shows beyond the machine's own accessors.
#[derive(Default)]
pub(super) struct ServiceView {
    nodes: BTreeMap<NodeAddr, NodeView>,
    peers: BTreeMap<String, PeerView>,
    /// `+switch-master` seen since start.
    pub(super) failovers: u64,
    /// When `+tilt` was emitted, until `-tilt`.
    pub(super) tilt_since_unix_ms: Option<u64>,
    /// Backend names that do not resolve now (each keeps its last address).
    pub(super) unresolved: Vec<String>,
}

impl ServiceView {
    pub(super) fn new(machine: &ServiceMachine, peers: &[PeerConfig]) -> Self {
        Self {
            nodes: machine.nodes().map(|n| (n, NodeView::default())).collect(),
            peers: peers
                .iter()
                .map(|p| (p.id.clone(), PeerView::default()))
                .collect(),
            failovers: 0,
            tilt_since_unix_ms: None,
            unresolved: Vec::new(),
        }
    }

    /// A backend moved from `from` to `to`: what was probed at `from` says nothing of `to`.
    pub(super) fn moved(&mut self, from: NodeAddr, to: NodeAddr) {
        self.nodes.remove(&from);
        self.nodes.insert(to, NodeView::default());
    }

    /// A peer's message for this service, received at `now`.
    pub(super) fn heard(&mut self, from: &ControllerId, msg: &PeerMsg, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&from.0) {
            peer.last_heard = Some(now);
            if let PeerMsg::Hello(hello) = msg {
                peer.hello = Some(hello.clone());
            }
        }
    }

    /// A probe's result, received at `now`; `latency` if it was timed.
    pub(super) fn probed(
        &mut self,
        node: NodeAddr,
        result: &ProbeResult,
        latency: Option<Duration>,
        now: Instant,
    ) {
        let view = self.nodes.entry(node).or_default();
        if let ProbeResult::Ok(info) = result {
            view.info = Some(info.clone());
            view.last_ok = Some(now);
            if latency.is_some() {
                view.latency = latency;
            }
        }
    }
}

/// How the data plane was attached at start, for the status.
pub(super) struct Attached {
    pub(super) pin_dir: PathBuf,
    /// (interface, attach mode).
    pub(super) interfaces: Vec<(String, String)>,
}

/// One service's part of the status, at `now`.
pub(super) fn service_status(
    svc: &ServiceConfig,
    peers: &[PeerConfig],
    m: &ServiceMachine,
    view: &ServiceView,
    target: &ServiceTarget,
    now: Instant,
) -> ServiceStatus {
    let ms_since = |t: Option<Instant>| t.map(|t| now.duration_since(t).as_millis() as u64);
    let nodes = m
        .nodes()
        .map(|addr| {
            let v = view.nodes.get(&addr);
            let info = v.and_then(|v| v.info.as_ref());
            let mut n = NodeStatus {
                addr,
                role: NodeRole::Unknown,
                sdown: m.is_sdown(addr),
                in_read_pool: target.read_pool.contains(&addr),
                last_ok_ms_ago: ms_since(v.and_then(|v| v.last_ok)),
                probe_latency_ms: v.and_then(|v| v.latency).map(|d| d.as_secs_f64() * 1000.0),
                run_id: info.and_then(|i| i.run_id.clone()),
                ..NodeStatus::default()
            };
            match info.map(|i| &i.role) {
                Some(Role::Master { repl_offset }) => {
                    n.role = NodeRole::Master;
                    n.repl_offset = Some(*repl_offset);
                }
                Some(Role::Replica(r)) => {
                    n.role = NodeRole::Replica;
                    n.master = Some(r.master);
                    n.link_up = Some(r.link_up);
                    // Unknown while the link is down (the probe reports "very stale").
                    n.lag_ms = r.link_up.then_some(r.lag_ms);
                    n.repl_offset = Some(r.repl_offset);
                    n.priority = Some(r.priority);
                }
                None => {}
            }
            n
        })
        .collect();
    let peers = peers
        .iter()
        .map(|p| {
            let v = view.peers.get(&p.id);
            let hello = v.and_then(|v| v.hello.as_ref());
            let heard = v.and_then(|v| v.last_heard);
            PeerStatus {
                id: p.id.clone(),
                addr: p.addr,
                last_heard_ms_ago: ms_since(heard),
                master: hello.map(|h| h.master),
                config_epoch: hello.map(|h| h.config_epoch),

                agrees: hello.is_some_and(|h| {
                    h.master == m.advertised_master() && h.config_epoch == m.config_epoch()
                }),
            }
        })
        .collect();
    ServiceStatus {
        name: svc.name.clone(),
        vip: svc.vip,
        write_port: svc.write_port,
        read_port: svc.read_port,
        // Sentinel's current master address: the promoted replica from the moment the write
        // port moved to it, before the reconfiguration of the others ends.
        master: m.advertised_master(),
        config_epoch: m.config_epoch(),
        current_epoch: m.current_epoch(),
        quorum: svc.failover.quorum,
        down_after_ms: svc.failover.down_after_ms,
        failover_phase: m.phase().into(),
        odown: m.is_odown(),
        nodes,
        read_pool: target.read_pool.clone(),
        peers,
        failovers: view.failovers,
        tilt_since_unix_ms: view.tilt_since_unix_ms,
        safe_mode: m.in_safe_mode(),
        unresolved: view.unresolved.clone(),
    }
}

/// The data plane's part of the status: every configured backend with its role and
/// readability as applied now, and its traffic as last read.
pub(super) fn dataplane_status(
    attached: &Attached,
    counters: Option<&DataplaneCounters>,
    services: &[ServiceConfig],
    targets: &[ServiceTarget],
) -> DataplaneStatus {
    let mut backends = Vec::new();
    for (i, svc) in services.iter().enumerate() {
        let t = &targets[i];
        for (j, addr) in svc.backends.iter().enumerate() {
            let slot = backend_slot(i as u32, j);
            let s = counters
                .and_then(|c| c.backends.get(&slot).copied())
                .unwrap_or_default();
            backends.push(BackendTraffic {
                service: svc.name.clone(),
                addr: *addr,
                slot,
                is_master: t.master == Some(*addr),
                readable: t.read_pool.contains(addr),
                packets_in: s.packets_in,
                bytes_in: s.bytes_in,
                packets_out: s.packets_out,
                bytes_out: s.bytes_out,
                new_flows: s.new_flows,
                flows_reset: s.flows_reset,
                flows_closed: s.flows_closed,
            });
        }
    }
    DataplaneStatus {
        pin_dir: attached.pin_dir.display().to_string(),
        interfaces: attached.interfaces.clone(),
        backends,
        counters: counters.map(|c| c.packets.clone()).unwrap_or_default(),
        flow_entries: counters.map_or(0, |c| c.flow_entries),
        flows_spilled: counters.is_some_and(|c| c.flows_spilled),
    }
}

/// The floating addresses' part of the status at `now` (the executor's clock), if anyone in
/// the cluster uses them.
pub(super) fn ha_status(
    ha: &HaMachine,
    addresses: Option<&AddressWorker>,
    acquired: u64,
    now: Millis,
) -> Option<HaStatus> {
    let owner = ha.owner(now).map(|(id, _)| id.0.clone());
    if addresses.is_none() && ha.epoch() == 0 && owner.is_none() {
        // Nobody in the cluster uses [ha].
        return None;
    }
    let holding_since_unix_ms = ha
        .owning_since()
        .map(|since| unix_ms().saturating_sub(now.saturating_sub(since)));
    Some(HaStatus {
        role: ha.role().into(),
        owner,
        epoch: ha.epoch(),
        addresses: addresses.map_or_else(Vec::new, |a| {
            a.addresses().iter().map(ToString::to_string).collect()
        }),
        priority: ha.candidacy().map(|c| c.priority),
        preempt: ha.candidacy().is_some_and(|c| c.preempt),
        holding: holding_since_unix_ms.is_some(),
        holding_since_unix_ms,
        acquired,
    })
}
