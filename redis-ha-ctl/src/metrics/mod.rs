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
//!
//! The first kind is defined and fed here ([`Metrics`], the label sets both kinds share, the
//! exposition formats); the second is collected from the snapshot in `snapshot`, at each
//! scrape.

mod snapshot;
#[cfg(test)]
pub(crate) mod testdata;
#[cfg(test)]
mod tests;

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::status::Status;

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
pub const PEER_REFUSAL_REASONS: [&str; 5] = [
    "bad-mac",
    "unknown-peer",
    "replay",
    "not-for-this-boot",
    "malformed",
];

/// Why the API closed or refused a client ([`Metrics::api_client_closed`]): a limit it hit or
/// a protocol error; exported at 0 from the start like [`PEER_REFUSAL_REASONS`].
pub const API_CLOSE_REASONS: [&str; 7] = [
    "maxclients",
    "idle-timeout",
    "output-buffer-normal",
    "output-buffer-pubsub",
    "request-too-large",
    "protocol-error",
    "tls-handshake",
];

/// Exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what `curl` users and older scrapers expect.
    Prometheus,
    /// OpenMetrics 1.0 text (with `# UNIT` and `# EOF`), which Prometheus asks for in `Accept`.
    OpenMetrics,
}

// The label sets of the long-lived families; `snapshot` labels its series of the same
// backends and reasons with the same sets, so that they join.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
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
    /// API clients closed (or refused) by the controller, by reason.
    api_closed: Family<ReasonLabels, Counter>,
    /// `SUBSCRIBE`/`PSUBSCRIBE` names refused past `client_max_subscriptions`.
    api_subscriptions_refused: Counter,
    /// API connections open now (Redis's `connected_clients`).
    api_clients: Gauge,
    /// Writes of the state file that failed, per service.
    state_write_failures: Family<ServiceLabels, Counter>,
    /// Votes (replies and our own requests) not sent because the state was not durable.
    votes_withheld: Family<ServiceLabels, Counter>,
    /// Reloads of the config (`SIGHUP`), by result: "applied" or "refused".
    reloads: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            probe_latency: Family::new_with_constructor(probe_histogram),
            probe_failures: Family::default(),
            failovers: Family::default(),
            peer_refused: Family::default(),
            state_write_failures: Family::default(),
            votes_withheld: Family::default(),
            api_closed: Family::default(),
            api_subscriptions_refused: Counter::default(),
            api_clients: Gauge::default(),
            reloads: Family::default(),
        };
        // Both results exist from the start, so a refusal is a counter going from 0 to 1.
        for result in ["applied", "refused"] {
            metrics.reloads.get_or_create_owned(&ResultLabels {
                result: result.to_owned(),
            });
        }
        for reason in PEER_REFUSAL_REASONS {
            metrics.peer_refused.get_or_create_owned(&ReasonLabels {
                reason: reason.to_owned(),
            });
        }
        for reason in API_CLOSE_REASONS {
            metrics.api_closed.get_or_create_owned(&ReasonLabels {
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

    /// A peer datagram was refused (`reason`: one of [`PEER_REFUSAL_REASONS`]).
    pub fn peer_refused(&self, reason: &str) {
        self.peer_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A reload of the config was applied (`true`) or refused.
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Writing the state file for `service` failed.
    pub fn state_write_failed(&self, service: &str) {
        self.state_write_failures
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// The API closed or refused a client (`reason`: one of [`API_CLOSE_REASONS`]).
    pub fn api_client_closed(&self, reason: &str) {
        self.api_closed
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A vote (a reply, or a request for our own) of `service` was not sent: the state holding
    /// it could not be made durable.
    pub fn vote_withheld(&self, service: &str) {
        self.votes_withheld
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// `n` subscriptions refused past `client_max_subscriptions`.
    pub fn api_subscriptions_refused(&self, n: u64) {
        self.api_subscriptions_refused.inc_by(n);
    }

    /// An API connection opened (`+1`) or ended (`-1`).
    pub fn api_clients_changed(&self, by: i64) {
        self.api_clients.inc_by(by);
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
            let service = ServiceLabels {
                service: svc.name.clone(),
            };
            self.state_write_failures.get_or_create_owned(&service);
            self.votes_withheld.get_or_create_owned(&service);
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
        reg.register(
            "state_write_failures",
            "Writes of the controller's state file that failed (full disk, I/O error, read-only)",
            self.state_write_failures.clone(),
        );
        reg.register(
            "votes_withheld",
            "Votes not sent (replies to candidates, or requests for our own candidacy) because \
             the state file holding them could not be written",
            self.votes_withheld.clone(),
        );

        reg.register(
            "config_reloads",
            "Reloads of the config (SIGHUP), by result: \"applied\" or \"refused\" (the running \
             config then stays as it was)",
            self.reloads.clone(),
        );

        reg.register(
            "api_clients_closed",
            "Clients of the Sentinel-compatible API closed or refused by the controller, by reason (a limit hit or a protocol error)",
            self.api_closed.clone(),
        );
        reg.register(
            "api_subscriptions_refused",
            "SUBSCRIBE/PSUBSCRIBE names refused past client_max_subscriptions",
            self.api_subscriptions_refused.clone(),
        );
        reg.register(
            "api_connected_clients",
            "Connections to the Sentinel-compatible API open now",
            self.api_clients.clone(),
        );

        snapshot::register(&mut reg, status);
        reg
    }
}
