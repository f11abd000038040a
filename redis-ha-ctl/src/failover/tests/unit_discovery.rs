//! The events that report what a machine found (`+monitor`, `+slave`, `+sentinel`,
//! `±role-change`, `+failover-detected`), with Sentinel's payloads and only as often as
//! Sentinel publishes them.

use super::unit::{MASTER, One, promoted};
use super::{M, R1, R2, R3, master_reply, params, replica_reply};
use crate::failover::{Action, Hello, NoticeKind, PeerMsg};

/// The texts of the notices of `kind` in `t`'s log, in order.
fn texts(t: &One, kind: NoticeKind) -> Vec<String> {
    t.log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Emit(n) if n.kind == kind => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

fn slave(addr: &str, master: &str) -> String {
    format!("slave {addr}:6379 {addr} 6379 @ mymaster {master} 6379")
}

#[test]
fn monitor_at_start_and_each_replica_once_when_first_seen() {
    let mut t = One::new("a", &["b", "c"], params());
    assert_eq!(
        texts(&t, NoticeKind::Monitor),
        [format!("+monitor {MASTER} quorum 2")]
    );
    t.run(2_000);
    assert_eq!(
        texts(&t, NoticeKind::Slave),
        ["10.0.0.2", "10.0.0.3", "10.0.0.4"].map(|a| format!("+slave {}", slave(a, "10.0.0.1")))
    );
    // Roles as expected from the first report on: no role change.
    assert!(texts(&t, NoticeKind::RoleChange).is_empty());
    assert!(texts(&t, NoticeKind::RoleChangeMismatch).is_empty());
}

#[test]
fn a_replica_not_seen_yet_is_announced_when_it_first_answers() {
    let mut t = One::new("a", &["b", "c"], params());
    t.set(R2, None);
    t.run(1_000);
    assert_eq!(texts(&t, NoticeKind::Slave).len(), 2);
    t.set(R2, Some(replica_reply(M, true, 200, 100)));
    t.run(1_000);
    assert_eq!(
        texts(&t, NoticeKind::Slave).last().unwrap(),
        &format!("+slave {}", slave("10.0.0.3", "10.0.0.1"))
    );
    assert_eq!(texts(&t, NoticeKind::Slave).len(), 3);
}

#[test]
fn role_changes_are_coherent_or_not_with_the_role_we_expect() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(500);
    // A replica that says it is a master: not what we expect of it.
    t.set(R1, Some(master_reply(100)));
    t.run(300);
    assert_eq!(
        texts(&t, NoticeKind::RoleChangeMismatch),
        [format!(
            "-role-change {} new reported role is master",
            slave("10.0.0.2", "10.0.0.1")
        )]
    );
    // Back to a replica: coherent again. Each change is told once.
    t.set(R1, Some(replica_reply(M, true, 100, 100)));
    t.run(300);
    assert_eq!(
        texts(&t, NoticeKind::RoleChange),
        [format!(
            "+role-change {} new reported role is slave",
            slave("10.0.0.2", "10.0.0.1")
        )]
    );
    assert_eq!(texts(&t, NoticeKind::RoleChangeMismatch).len(), 1);
    // The master's own first report as a replica is a mismatch too.
    t.set(M, Some(replica_reply(R2, true, 100, 100)));
    t.run(200);
    assert_eq!(
        texts(&t, NoticeKind::RoleChangeMismatch).last().unwrap(),
        &format!("-role-change {MASTER} new reported role is slave")
    );
}

#[test]
fn a_peer_is_announced_once_with_its_address() {
    let mut t = One::new("a", &["b", "c"], params());
    let hello = PeerMsg::Hello(Hello {
        current_epoch: 0,
        master: M,
        config_epoch: 0,
        sdown: Vec::new(),
        failover_epoch: None,
    });
    t.from("b", hello.clone());
    t.from("b", hello.clone());
    t.from("c", hello);
    assert_eq!(
        texts(&t, NoticeKind::Sentinel),
        [
            "+sentinel sentinel b 198.18.0.10 26379 @ mymaster 10.0.0.1 6379",
            "+sentinel sentinel c 198.18.0.11 26379 @ mymaster 10.0.0.1 6379",
        ]
    );
}

#[test]
fn a_peers_failover_is_detected_once_per_epoch() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(500);
    let ask = |epoch| PeerMsg::VoteRequest { epoch, master: M };
    t.from("b", ask(1));
    t.from("b", ask(1));
    assert_eq!(
        texts(&t, NoticeKind::FailoverDetected),
        [format!("+failover-detected {MASTER} epoch 1")]
    );
    // Its hellos say so again: nothing new. A later epoch is.
    let running = |epoch| {
        PeerMsg::Hello(Hello {
            current_epoch: epoch,
            master: M,
            config_epoch: 0,
            sdown: Vec::new(),
            failover_epoch: Some(epoch),
        })
    };
    t.from("c", running(1));
    assert_eq!(texts(&t, NoticeKind::FailoverDetected).len(), 1);
    t.from("c", running(2));
    assert_eq!(
        texts(&t, NoticeKind::FailoverDetected).last().unwrap(),
        &format!("+failover-detected {MASTER} epoch 2")
    );
}

#[test]
fn after_a_switch_every_other_node_is_listed_under_the_new_master() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(500);
    let before = t.log.len();
    t.from("b", promoted(R1, &[M]));
    let after: Vec<String> = t.log[before..]
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Emit(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    let switch = after
        .iter()
        .position(|n| n.starts_with("+switch-master"))
        .unwrap();
    assert_eq!(
        after[switch + 1..switch + 4],
        ["10.0.0.1", "10.0.0.3", "10.0.0.4"].map(|a| format!("+slave {}", slave(a, "10.0.0.2")))
    );
    // R1 now reports what we expect of the master: no role change; the old master, still
    // answering as a master, is not what we expect of a replica.
    t.set(R1, Some(master_reply(100)));
    for r in [R2, R3] {
        t.set(r, Some(replica_reply(R1, true, 100, 100)));
    }
    t.run(300);
    assert!(texts(&t, NoticeKind::RoleChange).is_empty());
    assert_eq!(
        texts(&t, NoticeKind::RoleChangeMismatch),
        [format!(
            "-role-change {} new reported role is master",
            slave("10.0.0.1", "10.0.0.2")
        )]
    );
}
