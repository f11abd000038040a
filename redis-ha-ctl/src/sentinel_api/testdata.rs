//! A snapshot for tests: a master, a healthy and a down replica, a heard and a silent peer, a
//! data plane with traffic. Also used by `client`'s tests.

use std::net::SocketAddrV4;

use crate::status::{
    BackendTraffic, DataplaneStatus, FailoverPhase, NodeRole, NodeStatus, PeerStatus,
    ServiceStatus, Status,
};

fn addr(text: &str) -> SocketAddrV4 {
    text.parse().unwrap()
}

pub(crate) fn status() -> Status {
    let node = |at: &str, role: NodeRole| NodeStatus {
        addr: addr(at),
        role,
        last_ok_ms_ago: Some(20),
        ..NodeStatus::default()
    };
    let replica = |at: &str| NodeStatus {
        master: Some(addr("198.18.1.11:6379")),
        link_up: Some(true),
        priority: Some(100),
        repl_offset: Some(42),
        in_read_pool: true,
        ..node(at, NodeRole::Replica)
    };
    Status {
        controller: "c1".into(),
        listen: Some("127.0.0.1:26379".parse().unwrap()),
        at_unix_ms: 1,
        services: vec![ServiceStatus {
            name: "mymaster".into(),
            vip: "198.18.0.100".parse().unwrap(),
            write_port: 6380,
            read_port: 6381,
            master: addr("198.18.1.11:6379"),
            config_epoch: 3,
            current_epoch: 3,
            quorum: 2,
            down_after_ms: 1000,
            failover_phase: FailoverPhase::Idle,
            odown: false,
            nodes: vec![
                NodeStatus {
                    run_id: Some("abc".into()),
                    ..node("198.18.1.11:6379", NodeRole::Master)
                },
                replica("198.18.1.12:6379"),
                NodeStatus {
                    sdown: true,
                    ..replica("198.18.1.13:6379")
                },
            ],
            read_pool: vec![addr("198.18.1.12:6379")],
            peers: vec![
                PeerStatus {
                    id: "c2".into(),
                    addr: "127.0.0.2:26379".parse().unwrap(),
                    last_heard_ms_ago: Some(50),
                    agrees: true,
                    ..PeerStatus::default()
                },
                PeerStatus {
                    id: "c3".into(),
                    addr: "127.0.0.3:26379".parse().unwrap(),
                    ..PeerStatus::default()
                },
            ],
            failovers: 0,
            tilt_since_unix_ms: None,
            safe_mode: false,
            unresolved: Vec::new(),
        }],
        dataplane: Some(DataplaneStatus {
            pin_dir: "/sys/fs/bpf/redis-ha".into(),
            interfaces: vec![("eth0".into(), "native".into())],
            backends: vec![BackendTraffic {
                service: "mymaster".into(),
                addr: addr("198.18.1.11:6379"),
                slot: 1,
                is_master: true,
                packets_in: 10,
                ..BackendTraffic::default()
            }],
            counters: [("fwd_to_backend".to_owned(), 15)].into_iter().collect(),
            flow_entries: 4,
            flows_spilled: false,
        }),
        ha: None,
        reload: None,
    }
}
