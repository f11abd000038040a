//! A node that moved to another address (its host name resolves elsewhere): same node, same
//! role, nothing trusted about the new machine before a probe there answers.

use super::unit::{One, hello};
use super::{M, R1, R2, R3, kinds, master_reply, node, replica_reply};
use crate::failover::{Action, FailoverPhase, MoveRefused, NoticeKind, PeerMsg, Persisted};

/// Where R2 (the best candidate) moves to.
const N: crate::failover::NodeAddr = node(22);

fn pools(actions: &[Action]) -> Vec<Vec<crate::failover::NodeAddr>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetReadPool(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_moved_replica_serves_reads_again_only_once_probed_at_its_new_address() {
    let mut t = One::alone();
    t.run(1_000);
    assert!(t.m.read_pool().contains(&R2));
    let now = t.now;
    let actions = t.m.move_node(R2, N, now).unwrap();
    assert_eq!(
        pools(&actions),
        vec![vec![R1, R3]],
        "out of the pool until probed"
    );
    assert_eq!(t.m.master(), M, "a replica's move changes no master");
    assert!(t.m.nodes().any(|n| n == N) && !t.m.nodes().any(|n| n == R2));
    t.world.remove(&R2);
    t.set(N, Some(replica_reply(M, true, 200, 100)));
    let later = t.run(300);
    assert!(pools(&later).iter().any(|p| p.contains(&N)), "{later:?}");
    assert!(!kinds(&later).contains(&NoticeKind::SwitchMaster));
}

#[test]
fn a_failover_promotes_a_moved_replica_only_after_probing_it_there() {
    // Not answering at its new address yet: the next best replica is promoted.
    let mut t = One::alone();
    t.run(1_000);
    let now = t.now;
    t.m.move_node(R2, N, now).unwrap();
    t.world.remove(&R2);
    t.set(N, None);
    t.set(M, None);
    t.run(1_100);
    assert!(
        matches!(t.m.phase(), FailoverPhase::Promotion { promoted, .. } if promoted == R1),
        "{:?}",
        t.m.phase()
    );

    // Answering there: it keeps its place as the best candidate, under its new address.
    let mut t = One::alone();
    t.run(1_000);
    let now = t.now;
    t.m.move_node(R2, N, now).unwrap();
    t.world.remove(&R2);
    t.set(N, Some(replica_reply(M, true, 200, 100)));
    t.run(300);
    t.set(M, None);
    t.run(1_100);
    assert!(
        matches!(t.m.phase(), FailoverPhase::Promotion { promoted, .. } if promoted == N),
        "{:?}",
        t.m.phase()
    );
    assert!(
        !t.log
            .iter()
            .any(|(_, a)| matches!(a, Action::PromoteReplica { node } if *node == R2))
    );
}

#[test]
fn a_moved_master_stays_master_and_peers_naming_the_old_address_agree() {
    let mut t = One::new("a", &["b", "c"], super::params());
    t.run(1_000);
    let now = t.now;
    let actions = t.m.move_node(M, N, now).unwrap();
    assert_eq!(t.m.master(), N);
    // The state file names the new address, in the same epoch: no failover happened.
    assert!(actions.contains(&Action::Persist(Persisted {
        current_epoch: 0,
        vote: None,
        master: N,
        config_epoch: 0,
    })));
    assert!(!kinds(&actions).contains(&NoticeKind::SwitchMaster));
    t.world.remove(&M);
    t.set(N, Some(master_reply(1_000)));
    // Peer b has not followed the move yet; peer c followed another one we have not seen: in
    // our epoch neither is a second master.
    let c_master = crate::failover::NodeAddr::new(*M.ip(), 1);
    let heard = [
        t.from("b", PeerMsg::Hello(hello(M, &[]))),
        t.from("c", PeerMsg::Hello(hello(c_master, &[]))),
    ]
    .concat();
    assert!(
        !kinds(&heard).contains(&NoticeKind::ConfigConflict),
        "{heard:?}"
    );
    assert_eq!(t.m.master(), N);
    // b's report of the old address counts toward the new one's ODOWN.
    t.standing_hellos = vec![("b".into(), hello(M, &[M]))];
    t.set(N, None);
    t.run(1_500);
    assert!(t.m.is_odown(), "b's SDOWN of {M} is about {N}");
}

#[test]
fn a_move_waits_while_a_failover_runs() {
    let mut t = One::alone();
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    assert_ne!(t.m.phase(), FailoverPhase::Idle);
    let now = t.now;
    assert_eq!(t.m.move_node(R1, N, now), Err(MoveRefused::FailoverRunning));
    assert_eq!(
        One::alone().m.move_node(N, R1, 0),
        Err(MoveRefused::UnknownNode(N))
    );
}
