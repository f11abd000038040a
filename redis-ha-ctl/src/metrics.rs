//! Prometheus metrics of the controller and its data plane.
//!
//! Two kinds of numbers end up on `/metrics`:
//! - events only the daemon sees as they happen (probes, finished failovers, refused peer
//!   messages) are counted here, in long-lived `prometheus-client` families;
//! - everything else (data-plane counters, SDOWN/ODOWN, epochs, peers) is already in the
//!   [`Status`] the daemon republishes, so it is turned into metrics at scrape time from that
//!   snapshot. Nothing is kept twice, and a scrape always agrees with `/status.json`.
//!
//! Every name starts with `redis_ha_` and carries its unit; label `backend` is a Redis
//! server's `ip:port` everywhere, so series of the controller's view and the data plane's
//! traffic join on (`service`, `backend`).

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::status::{FailoverPhase, Status};

/// Bucket bounds of the probe latency histogram, in seconds: 0.1 ms (a `PING` over loopback
/// or a quiet LAN) up to 1 s (beyond any sane `down_after_ms` / 2 probe timeout), roughly
/// 1-2.5-5 per decade so both a healthy LAN and a struggling node are resolved.
pub const PROBE_BUCKETS_SECONDS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// `Content-Type` of [`Format::Prometheus`] (text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
/// `Content-Type` of [`Format::OpenMetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The reasons [`Metrics::peer_refused`] is called with; exported at 0 from the start so that
/// `rate()` and alerts see a series before the first refusal.
pub const PEER_REFUSAL_REASONS: [&str; 4] = ["bad-mac", "unknown-peer", "replay", "malformed"];

/// Exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what `curl` users and older scrapers expect.
    Prometheus,
    /// OpenMetrics 1.0 text (with `# UNIT` and `# EOF`), which Prometheus asks for in `Accept`.
    OpenMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
}

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
struct FailoverLabels {
    service: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
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

fn probe_histogram() -> Histogram {
    Histogram::new(PROBE_BUCKETS_SECONDS)
}

/// Counters and histograms fed by the daemon; gauges are taken from a [`Status`] when encoding.
///
/// Shared as `Arc<Metrics>` between the daemon (which feeds it) and the HTTP server (which
/// encodes it); every method takes `&self` (the families lock internally).
pub struct Metrics {
    /// Latency of successful probes, per (service, backend).
    probe_latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    /// Probes that got no valid reply (timeout, refused, error reply), per (service, backend).
    probe_failures: Family<BackendLabels, Counter>,
    /// Failovers that ended, by outcome ("switched" or a Sentinel abort reason).
    failovers: Family<FailoverLabels, Counter>,
    /// Peer datagrams thrown away, by reason.
    peer_refused: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            probe_latency: Family::new_with_constructor(probe_histogram),
            probe_failures: Family::default(),
            failovers: Family::default(),
            peer_refused: Family::default(),
        };
        for reason in PEER_REFUSAL_REASONS {
            metrics.peer_refused.get_or_create_owned(&ReasonLabels {
                reason: reason.to_owned(),
            });
        }
        metrics
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One probe of `node` (`ip:port`) of `service`.
    pub fn observe_probe(&self, service: &str, node: &str, ok: bool, latency: Duration) {
        let labels = BackendLabels {
            service: service.to_owned(),
            backend: node.to_owned(),
        };
        if ok {
            self.probe_latency
                .get_or_create(&labels)
                .observe(latency.as_secs_f64());
        } else {
            // A failed probe's "latency" is mostly the timeout: counted, not observed, so the
            // histogram stays the latency of a working node.
            self.probe_failures.get_or_create(&labels).inc();
        }
    }

    /// A failover this controller led or saw ended: `outcome` is "switched" or the Sentinel
    /// abort event without its leading '-' (e.g. "failover-abort-not-elected").
    pub fn failover_finished(&self, service: &str, outcome: &str) {
        self.failovers
            .get_or_create(&FailoverLabels {
                service: service.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A peer datagram was refused (`reason`: "bad-mac", "unknown-peer", "replay", "malformed").
    pub fn peer_refused(&self, reason: &str) {
        self.peer_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition (format 0.0.4, [`PROMETHEUS_CONTENT_TYPE`]).
    pub fn encode(&self, status: &Status) -> String {
        self.encode_as(status, Format::Prometheus)
    }

    /// The exposition in `format`.
    pub fn encode_as(&self, status: &Status, format: Format) -> String {
        let registry = self.registry(status);
        let mut out = String::new();
        let written = match format {
            Format::Prometheus => prometheus_text::encode(&mut out, &registry),
            Format::OpenMetrics => text::encode(&mut out, &registry),
        };
        // Writing into a String cannot fail; an error here could only come from a label
        // encoder, and ours are derived.
        debug_assert!(written.is_ok(), "encoding metrics failed");
        out
    }

    /// A registry for one scrape: the long-lived families (shared, by `Clone`) plus gauges and
    /// counters built from `status`.
    fn registry(&self, status: &Status) -> Registry {
        let mut reg = Registry::with_prefix("redis_ha");

        // Series that should exist (at 0) as soon as a node or service is known, so that
        // `rate()` and `absent()`-style alerts work before the first failure.
        for svc in &status.services {
            for node in &svc.nodes {
                let labels = BackendLabels {
                    service: svc.name.clone(),
                    backend: node.addr.to_string(),
                };
                self.probe_failures.get_or_create_owned(&labels);
                self.probe_latency.get_or_create_owned(&labels);
            }
            self.failovers.get_or_create_owned(&FailoverLabels {
                service: svc.name.clone(),
                outcome: "switched".to_owned(),
            });
        }

        reg.register_with_unit(
            "probe_duration",
            "Latency of successful probes (PING/INFO replication) of a backend by this controller",
            Unit::Seconds,
            self.probe_latency.clone(),
        );
        reg.register(
            "probe_failures",
            "Probes of a backend that got no valid reply in time",
            self.probe_failures.clone(),
        );
        reg.register(
            "failovers",
            "Failovers this controller led or saw end, by outcome (\"switched\" or the Sentinel abort reason)",
            self.failovers.clone(),
        );
        reg.register(
            "peer_messages_refused",
            "Peer controller datagrams refused, by reason",
            self.peer_refused.clone(),
        );

        self.register_controller_view(&mut reg, status);
        if let Some(ha) = &status.ha {
            register_ha(&mut reg, ha);
        }
        if let Some(dp) = &status.dataplane {
            register_dataplane(&mut reg, dp);
        }
        reg
    }

    fn register_controller_view(&self, reg: &mut Registry, status: &Status) {
        let sdown = Family::<BackendLabels, Gauge>::default();
        let is_master = Family::<BackendLabels, Gauge>::default();
        let in_pool = Family::<BackendLabels, Gauge>::default();
        let lag = Family::<BackendLabels, FloatGauge>::default();
        let offset = Family::<BackendLabels, Gauge>::default();
        let odown = Family::<ServiceLabels, Gauge>::default();
        let current_epoch = Family::<ServiceLabels, Gauge>::default();
        let config_epoch = Family::<ServiceLabels, Gauge>::default();
        let in_failover = Family::<ServiceLabels, Gauge>::default();
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
}

fn register_dataplane(reg: &mut Registry, dp: &crate::status::DataplaneStatus) {
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

/// A realistic snapshot for the unit tests of this module and of `http`.
#[cfg(test)]
pub(crate) mod testdata {
    use std::{collections::BTreeMap, net::SocketAddrV4};

    use crate::status::{
        BackendTraffic, DataplaneStatus, FailoverPhase, HaRole, NodeRole, NodeStatus, PeerStatus,
        ServiceStatus, Status,
    };

    fn addr(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    /// A master, a healthy replica and a down one, two peers, and traffic.
    pub(crate) fn sample() -> Status {
        let node = |at: &str, role: NodeRole| NodeStatus {
            addr: addr(at),
            role,
            ..NodeStatus::default()
        };
        Status {
            controller: "ctl-a".into(),
            listen: Some("198.18.0.1:26379".parse().unwrap()),
            at_unix_ms: 1_700_000_000_000,
            services: vec![ServiceStatus {
                name: "mymaster".into(),
                vip: "198.18.0.100".parse().unwrap(),
                write_port: 6380,
                read_port: 6381,
                master: addr("198.18.1.11:6379"),
                config_epoch: 3,
                current_epoch: 4,
                quorum: 2,
                down_after_ms: 1000,
                failover_phase: FailoverPhase::Idle,
                odown: false,
                nodes: vec![
                    NodeStatus {
                        repl_offset: Some(123_456),
                        last_ok_ms_ago: Some(40),
                        probe_latency_ms: Some(0.31),
                        ..node("198.18.1.11:6379", NodeRole::Master)
                    },
                    NodeStatus {
                        master: Some(addr("198.18.1.11:6379")),
                        link_up: Some(true),
                        lag_ms: Some(250),
                        repl_offset: Some(123_400),
                        priority: Some(100),
                        in_read_pool: true,
                        last_ok_ms_ago: Some(60),
                        probe_latency_ms: Some(0.42),
                        ..node("198.18.1.12:6379", NodeRole::Replica)
                    },
                    NodeStatus {
                        sdown: true,
                        ..node("198.18.1.13:6379", NodeRole::Replica)
                    },
                ],
                read_pool: vec![addr("198.18.1.12:6379")],
                peers: vec![
                    PeerStatus {
                        id: "ctl-b".into(),
                        addr: "198.18.0.2:26379".parse().unwrap(),
                        last_heard_ms_ago: Some(1500),
                        agrees: true,
                        ..PeerStatus::default()
                    },
                    PeerStatus {
                        id: "ctl-c".into(),
                        addr: "198.18.0.3:26379".parse().unwrap(),
                        ..PeerStatus::default()
                    },
                ],
                failovers: 1,
            }],
            dataplane: Some(DataplaneStatus {
                pin_dir: "/sys/fs/bpf/redis-ha".into(),
                interfaces: vec![("eth0".into(), "native".into())],
                backends: vec![
                    BackendTraffic {
                        service: "mymaster".into(),
                        addr: addr("198.18.1.11:6379"),
                        slot: 1,
                        is_master: true,
                        readable: false,
                        packets_in: 10,
                        bytes_in: 1000,
                        packets_out: 9,
                        bytes_out: 900,
                        new_flows: 2,
                        flows_reset: 1,
                        flows_closed: 1,
                    },
                    BackendTraffic {
                        service: "mymaster".into(),
                        addr: addr("198.18.1.12:6379"),
                        slot: 2,
                        readable: true,
                        packets_in: 5,
                        ..BackendTraffic::default()
                    },
                ],
                counters: BTreeMap::from([
                    ("fwd_to_backend".into(), 15),
                    ("reset_stale_flow".into(), 1),
                ]),
                flow_entries: 4,
                flows_spilled: true,
            }),
            ha: Some(crate::status::HaStatus {
                role: HaRole::Owner,
                owner: Some("ctl-a".into()),
                epoch: 7,
                holding: true,
                acquired: 2,
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::metrics::testdata::sample;

    /// One sample line: metric name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// A small parser of the text exposition, strict enough to catch malformed output: every
    /// sample's family has a TYPE and a HELP, label values are quoted, values are numbers.
    fn parse(text: &str) -> Vec<Sample> {
        let mut typed = BTreeSet::new();
        let mut helped = BTreeSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!help.trim().is_empty(), "empty HELP for {name}");
                helped.insert(name.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("unterminated labels");
                    let mut labels = BTreeMap::new();
                    for pair in body.split("\",") {
                        let (k, v) = pair.split_once("=\"").expect("label without =\"");
                        labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                    }
                    (name.to_owned(), labels)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(&name)
                .to_owned();
            assert!(typed.contains(&family), "no TYPE for {name}");
            assert!(helped.contains(&family), "no HELP for {name}");
            assert!(name.starts_with("redis_ha_"), "unprefixed {name}");
            samples.push((name, labels, value));
        }
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let found: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{name}{want:?}: found {found:?}");
        found[0]
    }

    #[test]
    fn exports_backend_traffic_with_service_backend_role_labels() {
        let s = parse(&Metrics::new().encode(&sample()));
        let m = [
            ("service", "mymaster"),
            ("backend", "198.18.1.11:6379"),
            ("role", "master"),
        ];
        let with_dir = |d| [m[0], m[1], m[2], ("direction", d)];
        assert_eq!(
            value(&s, "redis_ha_backend_packets_total", &with_dir("in")),
            10.0
        );
        assert_eq!(
            value(&s, "redis_ha_backend_packets_total", &with_dir("out")),
            9.0
        );
        assert_eq!(
            value(&s, "redis_ha_backend_bytes_total", &with_dir("in")),
            1000.0
        );
        assert_eq!(
            value(&s, "redis_ha_backend_bytes_total", &with_dir("out")),
            900.0
        );
        assert_eq!(value(&s, "redis_ha_backend_new_flows_total", &m), 2.0);
        assert_eq!(value(&s, "redis_ha_backend_flows_reset_total", &m), 1.0);
        assert_eq!(value(&s, "redis_ha_backend_flows_closed_total", &m), 1.0);
        let replica = [
            ("service", "mymaster"),
            ("backend", "198.18.1.12:6379"),
            ("role", "replica"),
            ("direction", "in"),
        ];
        assert_eq!(value(&s, "redis_ha_backend_packets_total", &replica), 5.0);
        assert_eq!(
            value(
                &s,
                "redis_ha_dataplane_packets_total",
                &[("reason", "fwd_to_backend")]
            ),
            15.0
        );
        assert_eq!(value(&s, "redis_ha_flow_table_entries", &[]), 4.0);
        assert_eq!(value(&s, "redis_ha_flow_table_spilled", &[]), 1.0);
        assert_eq!(value(&s, "redis_ha_vip_holder", &[]), 1.0);
        assert_eq!(value(&s, "redis_ha_vip_epoch", &[]), 7.0);
        assert_eq!(value(&s, "redis_ha_vip_acquired_total", &[]), 2.0);
        assert_eq!(
            value(
                &s,
                "redis_ha_dataplane_attached",
                &[("interface", "eth0"), ("mode", "native")]
            ),
            1.0
        );
    }

    #[test]
    fn exports_controller_view_as_gauges() {
        let s = parse(&Metrics::new().encode(&sample()));
        let svc = [("service", "mymaster")];
        let node = |addr| [("service", "mymaster"), ("backend", addr)];
        assert_eq!(
            value(&s, "redis_ha_backend_sdown", &node("198.18.1.13:6379")),
            1.0
        );
        assert_eq!(
            value(&s, "redis_ha_backend_sdown", &node("198.18.1.12:6379")),
            0.0
        );
        assert_eq!(
            value(&s, "redis_ha_backend_is_master", &node("198.18.1.11:6379")),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_backend_replication_lag_seconds",
                &node("198.18.1.12:6379")
            ),
            0.25
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_backend_replication_offset_bytes",
                &node("198.18.1.11:6379")
            ),
            123_456.0
        );
        assert_eq!(value(&s, "redis_ha_service_odown", &svc), 0.0);
        assert_eq!(value(&s, "redis_ha_current_epoch", &svc), 4.0);
        assert_eq!(value(&s, "redis_ha_config_epoch", &svc), 3.0);
        assert_eq!(value(&s, "redis_ha_read_pool_backends", &svc), 1.0);
        assert_eq!(value(&s, "redis_ha_failover_in_progress", &svc), 0.0);
        let peer = |id| [("service", "mymaster"), ("peer", id)];
        assert_eq!(
            value(&s, "redis_ha_peer_last_heard_seconds", &peer("ctl-b")),
            1.5
        );
        assert_eq!(
            value(&s, "redis_ha_peer_last_heard_seconds", &peer("ctl-c")),
            f64::INFINITY
        );
        assert_eq!(value(&s, "redis_ha_peer_agrees", &peer("ctl-b")), 1.0);
        assert_eq!(value(&s, "redis_ha_peer_agrees", &peer("ctl-c")), 0.0);
    }

    #[test]
    fn counts_probes_failovers_and_refusals() {
        let m = Metrics::new();
        let before = parse(&m.encode(&sample()));
        let n = [("service", "mymaster"), ("backend", "198.18.1.11:6379")];
        // Known series start at 0 before anything happened.
        assert_eq!(value(&before, "redis_ha_probe_failures_total", &n), 0.0);
        assert_eq!(
            value(
                &before,
                "redis_ha_failovers_total",
                &[("service", "mymaster"), ("outcome", "switched")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &before,
                "redis_ha_peer_messages_refused_total",
                &[("reason", "replay")]
            ),
            0.0
        );

        for ms in [0.2, 0.3, 40.0] {
            m.observe_probe(
                "mymaster",
                "198.18.1.11:6379",
                true,
                Duration::from_secs_f64(ms / 1000.0),
            );
        }
        m.observe_probe("mymaster", "198.18.1.11:6379", false, Duration::ZERO);
        m.failover_finished("mymaster", "switched");
        m.failover_finished("mymaster", "failover-abort-not-elected");
        m.peer_refused("bad-mac");
        m.peer_refused("bad-mac");

        let s = parse(&m.encode(&sample()));
        assert_eq!(value(&s, "redis_ha_probe_failures_total", &n), 1.0);
        assert_eq!(value(&s, "redis_ha_probe_duration_seconds_count", &n), 3.0);
        let sum = value(&s, "redis_ha_probe_duration_seconds_sum", &n);
        assert!((sum - 0.0405).abs() < 1e-9, "{sum}");
        let bucket = |le| [n[0], n[1], ("le", le)];
        assert_eq!(
            value(
                &s,
                "redis_ha_probe_duration_seconds_bucket",
                &bucket("0.0001")
            ),
            0.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_probe_duration_seconds_bucket",
                &bucket("0.00025")
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_probe_duration_seconds_bucket",
                &bucket("0.0005")
            ),
            2.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_probe_duration_seconds_bucket",
                &bucket("0.05")
            ),
            3.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_probe_duration_seconds_bucket",
                &bucket("+Inf")
            ),
            3.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_failovers_total",
                &[("service", "mymaster"), ("outcome", "switched")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_failovers_total",
                &[
                    ("service", "mymaster"),
                    ("outcome", "failover-abort-not-elected")
                ]
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "redis_ha_peer_messages_refused_total",
                &[("reason", "bad-mac")]
            ),
            2.0
        );
    }

    #[test]
    fn a_controller_without_data_plane_exports_no_traffic() {
        let mut status = sample();
        status.dataplane = None;
        let text = Metrics::new().encode(&status);
        parse(&text);
        assert!(!text.contains("redis_ha_backend_packets_total"), "{text}");
        assert!(!text.contains("redis_ha_flow_table_entries"), "{text}");
        assert!(text.contains("redis_ha_backend_sdown"), "{text}");
    }

    #[test]
    fn help_texts_and_units_are_declared() {
        let text = Metrics::new().encode(&sample());
        assert!(text.contains("# HELP redis_ha_probe_duration_seconds Latency"));
        assert!(text.contains("# TYPE redis_ha_probe_duration_seconds histogram"));
        assert!(text.contains("# TYPE redis_ha_backend_packets_total counter"));
        assert!(text.contains("# TYPE redis_ha_backend_sdown gauge"));
        let om = Metrics::new().encode_as(&sample(), Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# UNIT redis_ha_backend_bytes bytes"), "{om}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut status = sample();
        status.services[0].peers[0].id = "evil\"} 1\nredis_ha_fake 1".into();
        let text = Metrics::new().encode(&status);
        assert!(
            !text.lines().any(|l| l.starts_with("redis_ha_fake")),
            "{text}"
        );
        parse(&text);
    }
}

/// `redis_ha_vip_holder` (1 on the node holding the floating addresses: a sum over nodes other
/// than 1 is an alert), the ownership epoch and the takeovers since start.
fn register_ha(reg: &mut Registry, ha: &crate::status::HaStatus) {
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
