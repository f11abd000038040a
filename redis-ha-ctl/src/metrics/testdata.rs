//! A realistic snapshot for the unit tests of this module and of `http`.

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
            tilt_since_unix_ms: None,
            safe_mode: false,
            unresolved: Vec::new(),
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
        reload: None,
    }
}
