//! The exposition as a scraper parses it: names, labels, values, HELP/TYPE/UNIT lines, for the
//! sample snapshot and after the daemon fed some events.

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
