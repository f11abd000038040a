//! Tests of the whole machine: `unit` drives one machine by hand, `scenarios` wires several
//! together through `sim`, an in-memory network and fake Redis nodes, with time driven explicitly;
//! `switchover` covers operator-forced failovers (planned switchovers) both ways; `chaos` draws
//! random runs with every fault at once, and `randomised` checks their invariants.

mod chaos;
mod concurrent;
mod randomised;
mod scenarios;
mod sim;
mod switchover;
mod tilt;
mod unit;
mod unit_discovery;
mod unit_moved;
mod unit_safe_mode;
mod unit_switch;

use std::net::Ipv4Addr;

use super::{
    Action, ControllerId, MachineConfig, Millis, NodeAddr, NodeInfo, NoticeKind, Params,
    ProbeResult, ReadFromMaster, ReplicaInfo, Role,
};

/// The service every test monitors.
const SERVICE: &str = "mymaster";

const fn node(last_octet: u8) -> NodeAddr {
    NodeAddr::new(Ipv4Addr::new(10, 0, 0, last_octet), 6379)
}

/// The initial master.
const M: NodeAddr = node(1);
/// Replica, offset 100.
const R1: NodeAddr = node(2);
/// Replica, offset 200: the best candidate.
const R2: NodeAddr = node(3);
/// Replica with the largest offset but priority 0: never promoted.
const R3: NodeAddr = node(4);

/// Short timings so that scenarios run in a few simulated seconds (ticks and probes every 100 ms).
fn params() -> Params {
    Params {
        quorum: 2,
        down_after_ms: 1_000,
        failover_timeout_ms: 5_000,
        parallel_syncs: 1,
        max_replica_lag_ms: 1_000,
        read_from_master: ReadFromMaster::Fallback,
        fall: 2,
        rise: 2,
        probe_interval_ms: 100,
        hello_interval_ms: 200,
        peer_report_validity_ms: 1_000,
        election_timeout_ms: 10_000,
        max_desync_ms: 1_000,
        replica_reconf_timeout_ms: 2_000,
        convert_delay_ms: 800,
    }
}

/// Where the test's `i`-th peer listens (only shown in `+sentinel`).
fn peer_addr(i: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([198, 18, 0, 10 + i as u8], 26379))
}

fn config(me: &str, peers: &[&str], params: Params) -> MachineConfig {
    MachineConfig {
        service: SERVICE.to_owned(),
        me: me.into(),
        peers: peers.iter().map(|&p| ControllerId::from(p)).collect(),
        peer_addrs: peers
            .iter()
            .enumerate()
            .map(|(i, &p)| (ControllerId::from(p), peer_addr(i)))
            .collect(),
        master: M,
        replicas: vec![R1, R2, R3],
        params,
    }
}

fn master_reply(repl_offset: u64) -> ProbeResult {
    ProbeResult::Ok(NodeInfo {
        run_id: None,
        role: Role::Master { repl_offset },
    })
}

fn replica_reply(master: NodeAddr, link_up: bool, repl_offset: u64, priority: u32) -> ProbeResult {
    ProbeResult::Ok(NodeInfo {
        run_id: None,
        role: Role::Replica(ReplicaInfo {
            master,
            link_up,
            link_down_ms: if link_up { 0 } else { 1_000 },
            lag_ms: 0,
            repl_offset,
            priority,
        }),
    })
}

/// What a simulated Redis node answers to a probe: a master (`follows` is `None`) or a replica
/// whose link is up while its master answers as a master (`master_serves`).
fn simulated_probe(
    follows: Option<NodeAddr>,
    master_serves: bool,
    offset: u64,
    lag_ms: Millis,
    priority: u32,
    run_id: String,
) -> ProbeResult {
    let role = match follows {
        None => Role::Master {
            repl_offset: offset,
        },
        Some(master) => Role::Replica(ReplicaInfo {
            master,
            link_up: master_serves,
            link_down_ms: if master_serves { 0 } else { 1_000 },
            lag_ms,
            repl_offset: offset,
            priority,
        }),
    };
    ProbeResult::Ok(NodeInfo {
        run_id: Some(run_id),
        role,
    })
}

/// The notices among `actions`, in order.
fn kinds<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Vec<NoticeKind> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Emit(n) => Some(n.kind),
            _ => None,
        })
        .collect()
}

/// The first notice of `kind` among timestamped actions, with its time and text.
fn first_notice(log: &[(Millis, Action)], kind: NoticeKind) -> Option<(Millis, String)> {
    log.iter().find_map(|(t, a)| match a {
        Action::Emit(n) if n.kind == kind => Some((*t, n.to_string())),
        _ => None,
    })
}

fn count_notices(log: &[(Millis, Action)], kind: NoticeKind) -> usize {
    kinds(log.iter().map(|(_, a)| a))
        .into_iter()
        .filter(|k| *k == kind)
        .count()
}
