//! The JSON a `Status` serialises to, pinned: clients and the status page read it.

use super::*;

/// `metrics::testdata::sample()` as `/status.json` and `status --json` wrote it while every
/// field of the status was a string: the typed fields must not change a byte of it.
const SAMPLE_JSON: &str = r#"{
  "controller": "ctl-a",
  "listen": "198.18.0.1:26379",
  "at_unix_ms": 1700000000000,
  "services": [
    {
      "name": "mymaster",
      "vip": "198.18.0.100",
      "write_port": 6380,
      "read_port": 6381,
      "master": "198.18.1.11:6379",
      "config_epoch": 3,
      "current_epoch": 4,
      "quorum": 2,
      "down_after_ms": 1000,
      "failover_phase": "idle",
      "odown": false,
      "nodes": [
        {
          "addr": "198.18.1.11:6379",
          "role": "master",
          "sdown": false,
          "master": null,
          "link_up": null,
          "lag_ms": null,
          "repl_offset": 123456,
          "priority": null,
          "in_read_pool": false,
          "last_ok_ms_ago": 40,
          "probe_latency_ms": 0.31,
          "run_id": null
        },
        {
          "addr": "198.18.1.12:6379",
          "role": "replica",
          "sdown": false,
          "master": "198.18.1.11:6379",
          "link_up": true,
          "lag_ms": 250,
          "repl_offset": 123400,
          "priority": 100,
          "in_read_pool": true,
          "last_ok_ms_ago": 60,
          "probe_latency_ms": 0.42,
          "run_id": null
        },
        {
          "addr": "198.18.1.13:6379",
          "role": "replica",
          "sdown": true,
          "master": null,
          "link_up": null,
          "lag_ms": null,
          "repl_offset": null,
          "priority": null,
          "in_read_pool": false,
          "last_ok_ms_ago": null,
          "probe_latency_ms": null,
          "run_id": null
        }
      ],
      "read_pool": [
        "198.18.1.12:6379"
      ],
      "peers": [
        {
          "id": "ctl-b",
          "addr": "198.18.0.2:26379",
          "last_heard_ms_ago": 1500,
          "master": null,
          "config_epoch": null,
          "agrees": true
        },
        {
          "id": "ctl-c",
          "addr": "198.18.0.3:26379",
          "last_heard_ms_ago": null,
          "master": null,
          "config_epoch": null,
          "agrees": false
        }
      ],
      "failovers": 1,
      "safe_mode": false
    }
  ],
  "dataplane": {
    "pin_dir": "/sys/fs/bpf/redis-ha",
    "interfaces": [
      [
        "eth0",
        "native"
      ]
    ],
    "backends": [
      {
        "service": "mymaster",
        "addr": "198.18.1.11:6379",
        "slot": 1,
        "is_master": true,
        "readable": false,
        "packets_in": 10,
        "bytes_in": 1000,
        "packets_out": 9,
        "bytes_out": 900,
        "new_flows": 2,
        "flows_reset": 1,
        "flows_closed": 1
      },
      {
        "service": "mymaster",
        "addr": "198.18.1.12:6379",
        "slot": 2,
        "is_master": false,
        "readable": true,
        "packets_in": 5,
        "bytes_in": 0,
        "packets_out": 0,
        "bytes_out": 0,
        "new_flows": 0,
        "flows_reset": 0,
        "flows_closed": 0
      }
    ],
    "counters": {
      "fwd_to_backend": 15,
      "reset_stale_flow": 1
    },
    "flow_entries": 4,
    "flows_spilled": true
  },
  "ha": {
    "role": "owner",
    "owner": "ctl-a",
    "epoch": 7,
    "addresses": [],
    "priority": null,
    "preempt": false,
    "holding": true,
    "holding_since_unix_ms": null,
    "acquired": 2
  }
}"#;

/// The placeholder published before the executor's first snapshot, as it was written then.
const PLACEHOLDER_JSON: &str =
    r#"{"controller":"","listen":"","at_unix_ms":0,"services":[],"dataplane":null,"ha":null}"#;

#[test]
fn a_status_serialises_to_the_json_it_always_had() {
    let sample = crate::metrics::testdata::sample();
    assert_eq!(serde_json::to_string_pretty(&sample).unwrap(), SAMPLE_JSON);
    assert_eq!(serde_json::from_str::<Status>(SAMPLE_JSON).unwrap(), sample);
    let placeholder = Status::default();
    assert_eq!(
        serde_json::to_string(&placeholder).unwrap(),
        PLACEHOLDER_JSON
    );
    assert_eq!(
        serde_json::from_str::<Status>(PLACEHOLDER_JSON).unwrap(),
        placeholder
    );
}

#[test]
fn enums_are_written_as_the_strings_they_replaced() {
    fn check<T>(value: T, text: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + fmt::Display + PartialEq + fmt::Debug,
    {
        let json = format!("\"{text}\"");
        assert_eq!(serde_json::to_string(&value).unwrap(), json);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
        assert_eq!(value.to_string(), text);
    }
    check(NodeRole::Master, "master");
    check(NodeRole::Replica, "replica");
    check(NodeRole::Unknown, "unknown");
    check(FailoverPhase::Idle, "idle");
    check(FailoverPhase::Election, "election");
    check(FailoverPhase::Sync, "sync");
    check(FailoverPhase::Promotion, "promotion");
    check(FailoverPhase::Reconfiguration, "reconfiguration");
    check(HaRole::Owner, "owner");
    check(HaRole::Candidate, "candidate");
    check(HaRole::Backup, "backup");
    check(HaRole::Voter, "voter");
    // Table columns are padded as they were for strings.
    assert_eq!(format!("[{:<8}]", NodeRole::Replica), "[replica ]");
}
