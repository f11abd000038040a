//! What a reload may change live, what it refuses, and where a refusal points.

use std::path::Path;

use super::*;

const RUNNING: &str = r#"
[dataplane]
interfaces = ["eth0"]

[controller]
id = "c1"
listen = "198.18.0.1:26379"
secret = "a-peer-secret-of-16+"
peers = [{ id = "c2", addr = "198.18.0.2:26379" }, { id = "c3", addr = "198.18.0.3:26379" }]
# Written out: its default follows the id, which the tests change.
state_file = "/var/lib/redis-ha/c1.state"

[ha]
addresses = ["198.18.0.100/24 dev eth0"]

[[service]]
name = "one"
vip = "198.18.0.100"
write_port = 6380
read_port = 6381
backends = ["198.18.1.11:6379", "198.18.1.12:6379"]

[[service]]
name = "two"
vip = "198.18.0.100"
write_port = 6390
read_port = 6391
backends = ["198.18.1.21:6379", "198.18.1.22:6379"]
"#;

const THREE: &str = r#"
[[service]]
name = "three"
vip = "198.18.0.100"
write_port = 6400
read_port = 6401
backends = ["198.18.1.31:6379"]
"#;

fn parse(text: &str) -> Config {
    Config::parse(Path::new("redis-ha.toml"), text).unwrap()
}

fn refused_keys(new: &str) -> Vec<String> {
    match diff(&parse(RUNNING), &parse(new)) {
        Err(refusals) => refusals.into_iter().map(|r| r.key).collect(),
        Ok(plan) => panic!("expected a refusal, got {plan:?}"),
    }
}

#[test]
fn the_same_config_changes_nothing_even_with_defaults_written_out() {
    let plan = diff(&parse(RUNNING), &parse(RUNNING)).unwrap();
    assert!(plan.is_empty(), "{plan:?}");
    // down_after_ms = 1000 is the default: writing it out changes nothing.
    let explicit = RUNNING.replace(
        "name = \"two\"",
        "name = \"two\"\ndown_after_ms = 1000\nquorum = 2",
    );
    assert!(diff(&parse(RUNNING), &parse(&explicit)).unwrap().is_empty());
}

#[test]
fn services_added_after_the_last_and_timers_reload_live() {
    let new = format!(
        "{}{THREE}",
        RUNNING.replace("name = \"two\"", "name = \"two\"\ndown_after_ms = 700")
    );
    let plan = diff(&parse(RUNNING), &parse(&new)).unwrap();
    assert_eq!(plan.added, 2..3);
    assert_eq!(plan.retuned, [1]);
    assert!(plan.removed.is_empty());
}

#[test]
fn every_failover_key_of_a_kept_service_reloads_live() {
    for line in [
        "quorum = 1",
        "down_after_ms = 5000",
        "failover_timeout_ms = 60000",
        "parallel_syncs = 2",
        "max_replica_lag_ms = 100",
        "read_from_master = \"always\"",
        "auth = { password = \"pw\" }",
    ] {
        let new = RUNNING.replace("name = \"one\"", &format!("name = \"one\"\n{line}"));
        let plan = diff(&parse(RUNNING), &parse(&new)).unwrap_or_else(|r| panic!("{line}: {r:?}"));
        assert_eq!(plan.retuned, [0], "{line}");
    }
}

#[test]
fn the_last_services_may_be_removed_but_not_one_before_them() {
    let only_one = RUNNING[..RUNNING.find("[[service]]\nname = \"two\"").unwrap()].to_owned();
    let plan = diff(&parse(RUNNING), &parse(&only_one)).unwrap();
    assert_eq!(plan.removed, ["two"]);
    assert!(plan.added.is_empty());

    // Removing "one" would give "two" the data-plane place of "one".
    let start = RUNNING.find("[[service]]").unwrap();
    let end = RUNNING.find("[[service]]\nname = \"two\"").unwrap();
    let only_two = format!("{}{}", &RUNNING[..start], &RUNNING[end..]);
    assert_eq!(refused_keys(&only_two), ["service[0].name"]);
}

#[test]
fn the_data_plane_layout_identity_and_peers_are_refused_by_key() {
    let cases = [
        (
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\", \"eth1\"]",
            "dataplane.interfaces",
        ),
        (
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nxdp_mode = \"skb\"",
            "dataplane.xdp_mode",
        ),
        (
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nflow_table_size = 4096",
            "dataplane.flow_table_size",
        ),
        ("id = \"c1\"", "id = \"c9\"", "controller.id"),
        (
            "secret = \"a-peer-secret-of-16+\"",
            "secret = \"another-secret-of-16\"",
            "controller.secret",
        ),
        ("198.18.0.2:26379", "198.18.0.9:26379", "controller.peers"),
        (
            "id = \"c1\"",
            "id = \"c1\"\nprobe_interval_ms = 50",
            "controller.probe_interval_ms",
        ),
        (
            "id = \"c1\"",
            "id = \"c1\"\nrequirepass = \"an-api-password-123\"",
            "controller.requirepass",
        ),
        ("dev eth0\"]", "dev eth0\"]\npriority = 10", "ha.priority"),
        (
            "write_port = 6380",
            "write_port = 6382",
            "service[0].write_port",
        ),
        (
            "\"198.18.1.22:6379\"]",
            "\"198.18.1.23:6379\"]",
            "service[1].backends",
        ),
    ];
    for (from, to, key) in cases {
        let new = RUNNING.replacen(from, to, 1);
        assert_ne!(new, RUNNING, "{key}: the case edits nothing");
        assert_eq!(refused_keys(&new), [key], "{key}");
    }
    // A section appearing or going away is refused as a whole.
    let no_ha = RUNNING.replace("[ha]\naddresses = [\"198.18.0.100/24 dev eth0\"]\n", "");
    assert_eq!(refused_keys(&no_ha), ["ha"]);
}

#[test]
fn every_refused_key_is_reported_not_only_the_first() {
    let new = RUNNING.replace("id = \"c1\"", "id = \"c9\"").replace(
        "vip = \"198.18.0.100\"\nwrite_port = 6390",
        "vip = \"198.18.0.101\"\nwrite_port = 6390",
    );
    assert_eq!(refused_keys(&new), ["controller.id", "service[1].vip"]);
}

#[test]
fn a_refusal_names_the_file_the_line_and_the_key() {
    let new = RUNNING.replace("id = \"c1\"", "id = \"c9\"");
    let refusal = &diff(&parse(RUNNING), &parse(&new)).unwrap_err()[0];
    let text = describe(Path::new("/etc/redis-ha.toml"), &new, refusal);
    assert!(
        text.starts_with("/etc/redis-ha.toml:6:1: controller.id: cannot change"),
        "{text}"
    );
    assert_eq!(locate(&new, "service[1].vip"), Some((25, 1)));
    assert_eq!(locate(&new, "dataplane.interfaces"), Some((3, 1)));
    // A key the file leaves out has no line: the message still names it.
    assert_eq!(locate(&new, "dataplane.xdp_mode"), None);
    let r = Refusal {
        key: "dataplane.xdp_mode".into(),
        reason: "r".into(),
    };
    assert_eq!(
        describe(Path::new("f.toml"), &new, &r),
        "f.toml: dataplane.xdp_mode: r"
    );
}
