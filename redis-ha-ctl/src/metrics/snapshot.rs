//! The metrics collected at each scrape from the [`Status`] snapshot: the controller's view
//! (SDOWN, ODOWN, epochs, replication, peers), the floating addresses and the data plane's
//! counters. They are rebuilt from the snapshot every time rather than kept in long-lived
//! families, so that a scrape and `/status.json` cannot disagree.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::{BackendLabels, ReasonLabels, ServiceLabels};
use crate::status::{DataplaneStatus, FailoverPhase, HaStatus, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    service: String,
    backend: String,
    /// "master" or "replica", as the data plane serves it now.
    role: String,
    /// "in": client → backend; "out": the backend's replies, rewritten back to the VIP.
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    service: String,
    backend: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    service: String,
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    interface: String,
    mode: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Registers everything `status` says, in the order the exposition lists it.
pub(super) fn register(reg: &mut Registry, status: &Status) {
    register_controller_view(reg, status);
    if let Some(ha) = &status.ha {
        register_ha(reg, ha);
    }
    if let Some(dp) = &status.dataplane {
        register_dataplane(reg, dp);
    }
}

/// SDOWN, roles, replication, epochs, failover phase and peers, as this controller sees them.
fn register_controller_view(reg: &mut Registry, status: &Status) {
    let sdown = Family::<BackendLabels, Gauge>::default();
    let is_master = Family::<BackendLabels, Gauge>::default();
    let in_pool = Family::<BackendLabels, Gauge>::default();
    let lag = Family::<BackendLabels, FloatGauge>::default();
    let offset = Family::<BackendLabels, Gauge>::default();
    let odown = Family::<ServiceLabels, Gauge>::default();
    let current_epoch = Family::<ServiceLabels, Gauge>::default();
    let config_epoch = Family::<ServiceLabels, Gauge>::default();
    let in_failover = Family::<ServiceLabels, Gauge>::default();
    let safe_mode = Family::<ServiceLabels, Gauge>::default();
    let pool_size = Family::<ServiceLabels, Gauge>::default();
    let last_heard = Family::<PeerLabels, FloatGauge>::default();
    let agrees = Family::<PeerLabels, Gauge>::default();

    for svc in &status.services {
        let service = ServiceLabels {
            service: svc.name.clone(),
        };
        odown.get_or_create(&service).set(i64::from(svc.odown));
        current_epoch
            .get_or_create(&service)
            .set(saturating_i64(svc.current_epoch));
        config_epoch
            .get_or_create(&service)
            .set(saturating_i64(svc.config_epoch));
        in_failover
            .get_or_create(&service)
            .set(i64::from(svc.failover_phase != FailoverPhase::Idle));
        safe_mode
            .get_or_create(&service)
            .set(i64::from(svc.safe_mode));
        pool_size
            .get_or_create(&service)
            .set(saturating_i64(svc.read_pool.len() as u64));
        for node in &svc.nodes {
            let labels = BackendLabels {
                service: svc.name.clone(),
                backend: node.addr.to_string(),
            };
            sdown.get_or_create(&labels).set(i64::from(node.sdown));
            is_master
                .get_or_create(&labels)
                .set(i64::from(node.addr == svc.master));
            in_pool
                .get_or_create(&labels)
                .set(i64::from(node.in_read_pool));
            if let Some(ms) = node.lag_ms {
                lag.get_or_create(&labels).set(ms as f64 / 1000.0);
            }
            if let Some(o) = node.repl_offset {
                offset.get_or_create(&labels).set(saturating_i64(o));
            }
        }
        for peer in &svc.peers {
            let labels = PeerLabels {
                service: svc.name.clone(),
                peer: peer.id.clone(),
            };
            // Never heard from: +Inf, so `> N` alerts fire instead of the series missing.
            let secs = peer
                .last_heard_ms_ago
                .map_or(f64::INFINITY, |ms| ms as f64 / 1000.0);
            last_heard.get_or_create(&labels).set(secs);
            agrees.get_or_create(&labels).set(i64::from(peer.agrees));
        }
    }

    reg.register(
        "backend_sdown",
        "1 while this controller sees the backend subjectively down (SDOWN)",
        sdown,
    );
    reg.register(
        "backend_is_master",
        "1 for the backend this controller believes is the service's master",
        is_master,
    );
    reg.register(
        "backend_in_read_pool",
        "1 while the backend is in the service's read pool (read port)",
        in_pool,
    );
    reg.register_with_unit(
        "backend_replication_lag",
        "Replication lag of a replica as last probed",
        Unit::Seconds,
        lag,
    );
    reg.register_with_unit(
        "backend_replication_offset",
        "Replication offset of a backend as last probed",
        Unit::Bytes,
        offset,
    );
    reg.register(
        "service_odown",
        "1 while the service's master is objectively down (ODOWN: a quorum of controllers agrees)",
        odown,
    );
    reg.register(
        "current_epoch",
        "Highest failover epoch this controller has seen",
        current_epoch,
    );
    reg.register(
        "config_epoch",
        "Failover epoch in which the current master was promoted",
        config_epoch,
    );
    reg.register(
        "failover_in_progress",
        "1 while a failover of the service is under way (any phase but idle)",
        in_failover,
    );
    reg.register(
        "safe_mode",
        "1 while this controller, whose state file could not be read, neither votes nor starts \
         a failover (until a majority of the other controllers told it the current epoch)",
        safe_mode,
    );
    reg.register_with_unit(
        "read_pool",
        "Backends in the service's read pool, as last applied",
        Unit::Other("backends".to_owned()),
        pool_size,
    );
    reg.register_with_unit(
        "peer_last_heard",
        "Time since the last authenticated message from a peer controller (+Inf: never)",
        Unit::Seconds,
        last_heard,
    );
    reg.register(
        "peer_agrees",
        "1 while the peer controller announces the same master at the same config epoch",
        agrees,
    );
}

/// `redis_ha_vip_holder` (1 on the node holding the floating addresses: a sum over nodes other
/// than 1 is an alert), the ownership epoch and the takeovers since start.
fn register_ha(reg: &mut Registry, ha: &HaStatus) {
    let holder = Gauge::<i64>::default();
    holder.set(i64::from(ha.holding));
    reg.register(
        "vip_holder",
        "1 if this node holds the floating addresses (VIP, backend gateway) now",
        holder,
    );
    let epoch = Gauge::<i64>::default();
    epoch.set(saturating_i64(ha.epoch));
    reg.register(
        "vip_epoch",
        "Epoch of the floating addresses' ownership, as this controller knows it",
        epoch,
    );
    let acquired = Counter::<u64>::default();
    acquired.inc_by(ha.acquired);
    reg.register(
        "vip_acquired",
        "Times this node took the floating addresses since it started",
        acquired,
    );
}

fn register_dataplane(reg: &mut Registry, dp: &DataplaneStatus) {
    // Counters rebuilt from the maps' running totals at each scrape: a fresh Counter bumped
    // by the total is exactly that total, and stays monotonic because the maps' are.
    let packets = Family::<TrafficLabels, Counter>::default();
    let bytes = Family::<TrafficLabels, Counter>::default();
    let new_flows = Family::<RoleLabels, Counter>::default();
    let resets = Family::<RoleLabels, Counter>::default();
    let closed = Family::<RoleLabels, Counter>::default();
    for b in &dp.backends {
        let role = if b.is_master { "master" } else { "replica" };
        let traffic = |direction: &str| TrafficLabels {
            service: b.service.clone(),
            backend: b.addr.to_string(),
            role: role.to_owned(),
            direction: direction.to_owned(),
        };
        packets.get_or_create(&traffic("in")).inc_by(b.packets_in);
        packets.get_or_create(&traffic("out")).inc_by(b.packets_out);
        bytes.get_or_create(&traffic("in")).inc_by(b.bytes_in);
        bytes.get_or_create(&traffic("out")).inc_by(b.bytes_out);
        let labels = RoleLabels {
            service: b.service.clone(),
            backend: b.addr.to_string(),
            role: role.to_owned(),
        };
        new_flows.get_or_create(&labels).inc_by(b.new_flows);
        resets.get_or_create(&labels).inc_by(b.flows_reset);
        closed.get_or_create(&labels).inc_by(b.flows_closed);
    }
    let reasons = Family::<ReasonLabels, Counter>::default();
    for (reason, value) in &dp.counters {
        reasons
            .get_or_create(&ReasonLabels {
                reason: reason.clone(),
            })
            .inc_by(*value);
    }
    let attached = Family::<InterfaceLabels, Gauge>::default();
    for (interface, mode) in &dp.interfaces {
        attached
            .get_or_create(&InterfaceLabels {
                interface: interface.clone(),
                mode: mode.clone(),
            })
            .set(1);
    }
    let flows: Gauge = Gauge::default();
    flows.set(saturating_i64(dp.flow_entries as u64));
    let spilled: Gauge = Gauge::default();
    spilled.set(i64::from(dp.flows_spilled));

    reg.register_with_unit(
        "backend",
        "Packets the XDP data plane forwarded for a backend (direction \"in\": client to backend; \"out\": replies rewritten back to the VIP)",
        Unit::Other("packets".to_owned()),
        packets,
    );
    reg.register_with_unit(
        "backend",
        "Bytes the XDP data plane forwarded for a backend (direction \"in\": client to backend; \"out\": replies rewritten back to the VIP)",
        Unit::Bytes,
        bytes,
    );
    reg.register(
        "backend_new_flows",
        "Connections the data plane assigned to a backend",
        new_flows,
    );
    reg.register(
        "backend_flows_reset",
        "Connections reset because their backend stopped being the master or left the read pool",
        resets,
    );
    reg.register(
        "backend_flows_closed",
        "Connections that closed in order (FIN both ways, then the last ACK), whose entries the data plane removed from its connection table",
        closed,
    );
    reg.register_with_unit(
        "dataplane",
        "Packets the XDP program handled, by what it did with them and why",
        Unit::Other("packets".to_owned()),
        reasons,
    );
    reg.register(
        "dataplane_attached",
        "1 for each interface the XDP program is attached to, with its attach mode",
        attached,
    );
    reg.register_with_unit(
        "flow_table",
        "Entries in the data plane's connection table (one per connection)",
        Unit::Other("entries".to_owned()),
        flows,
    );
    reg.register(
        "flow_table_spilled",
        "1 once the connection table FLOWS was full since the data plane was loaded: new \
         connections then go to FLOWS_SPILL, which costs more per packet (raise \
         flow_table_size)",
        spilled,
    );
}

/// Epochs and offsets are u64; a gauge is i64. Real values never come near the limit.
fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
