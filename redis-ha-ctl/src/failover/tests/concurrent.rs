//! Operator failovers at once and conflicting states: one failover at a time across the
//! controllers, each elected by a majority before it touches Redis, and convergence from states
//! an older version could leave (two masters in one epoch, a replication loop).

use super::sim::Sim;
use super::{M, R1, R2, R3, config, node, params};
use crate::failover::{
    Action, Event, FailoverPhase, ForceRefused, ForcedOutcome, Hello, Millis, NodeAddr, NoticeKind,
    PeerMsg, Persisted, ServiceMachine,
};

const TIMEOUT: Millis = 2_000;

fn force(to: NodeAddr) -> Event {
    Event::ForceFailover {
        to: Some(to),
        timeout_ms: TIMEOUT,
    }
}

fn three() -> Sim {
    let mut sim = Sim::new(&["a", "b", "c"], params());
    sim.run_for(1_000);
    sim
}

/// The `Forced` outcomes controller `name` gave, in order.
fn outcomes(sim: &Sim, name: &str) -> Vec<ForcedOutcome> {
    sim.ctl(name)
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Forced(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

/// Every live controller names `master`, idle, with its write port on it.
fn all_on(sim: &Sim, master: NodeAddr) {
    for (id, c) in sim.alive_ctls() {
        assert_eq!(c.machine.master(), master, "{id}");
        assert_eq!(c.machine.phase(), FailoverPhase::Idle, "{id}");
        assert_eq!(c.write.map(|(_, n)| n), Some(master), "{id}'s write port");
    }
}

#[test]
fn opposing_switchovers_at_the_same_instant_switch_once_and_the_loser_touches_nothing() {
    let mut sim = three();
    sim.feed_at_once(vec![("a", force(R1)), ("b", force(R2))]);
    sim.run_for(3_000);

    // Both stood in epoch 1; c voted for a, whose request it got first, so b lost.
    let a = outcomes(&sim, "a");
    assert!(
        matches!(
            a[..],
            [
                ForcedOutcome::Started {
                    epoch: 1,
                    target: R1,
                    ..
                },
                ForcedOutcome::Switched {
                    epoch: 1,
                    to: R1,
                    ..
                }
            ]
        ),
        "{a:?}"
    );
    assert_eq!(
        outcomes(&sim, "b"),
        vec![ForcedOutcome::Refused(ForceRefused::LostElection {
            epoch: 1,
            leader: Some("a".into())
        })]
    );
    let touched_redis = sim.ctl("b").log.iter().any(|(_, a)| {
        matches!(
            a,
            Action::PauseAndSync { .. }
                | Action::PromoteReplica { .. }
                | Action::ResumeWrites { .. }
        )
    });
    assert!(!touched_redis, "the loser sent nothing to Redis");
    assert_eq!(sim.promotions().len(), 1);
    sim.run_for(6_000);
    all_on(&sim, R1);
    assert!(sim.redis[&R2].follows == Some(R1) && sim.redis[&M].follows == Some(R1));
}

#[test]
fn a_request_while_a_peer_runs_a_switchover_is_refused_and_says_who() {
    let mut sim = three();
    // a's switchover holds in Sync until its catch-up is reported: b is asked meanwhile.
    sim.feed("a", force(R1));
    let a_phase = sim.ctl("a").machine.phase();
    assert!(
        matches!(
            a_phase,
            FailoverPhase::Promotion { .. } | FailoverPhase::Reconfiguration { .. }
        ),
        "{a_phase:?}"
    );
    sim.feed("b", force(R2));
    let b = outcomes(&sim, "b");
    assert!(
        matches!(&b[..], [ForcedOutcome::Refused(ForceRefused::PeerInProgress { leader, epoch: 1 })] if leader.0 == "a"),
        "{b:?}"
    );
    sim.run_for(6_000);
    all_on(&sim, R1);
    assert_eq!(sim.promotions().len(), 1);
}

#[test]
fn without_a_majority_a_switchover_gives_up_at_its_timeout_having_touched_nothing() {
    let mut sim = three();
    sim.partition(&["a"], &["b", "c"]);
    sim.feed("a", force(R1));
    sim.run_for(TIMEOUT + 500);
    assert_eq!(
        outcomes(&sim, "a"),
        vec![ForcedOutcome::Refused(ForceRefused::NoMajority {
            epoch: 1,
            votes: 1,
            needed: 2
        })]
    );
    assert!(sim.promotions().is_empty());
    assert!(!sim.redis[&M].paused);
    sim.heal();
    sim.run_for(3_000);
    all_on(&sim, M);
}

#[test]
fn two_masters_in_one_epoch_resolve_to_the_lower_address_and_say_so() {
    // A state an older version could leave: a believes R2 in epoch 3, a peer R1.
    let persisted = Persisted {
        current_epoch: 3,
        vote: None,
        master: R2,
        config_epoch: 3,
    };
    let (mut m, _) =
        ServiceMachine::new(config("a", &["b", "c"], params()), Some(persisted), 0).unwrap();
    let hello = |master| Hello {
        current_epoch: 3,
        master,
        config_epoch: 3,
        sdown: Vec::new(),
        failover_epoch: None,
    };
    let from_b = |h| Event::Peer {
        from: "b".into(),
        msg: PeerMsg::Hello(h),
    };
    // A higher address in the same epoch changes nothing: the peer will come to us.
    let ignored = m.step(from_b(hello(node(9))), 100, 0);
    assert!(
        !ignored
            .iter()
            .any(|a| matches!(a, Action::SetMaster { .. })),
        "{ignored:?}"
    );
    assert_eq!(m.master(), R2);

    let adopted = m.step(from_b(hello(R1)), 200, 0);
    let notice = adopted.iter().find_map(|a| match a {
        Action::Emit(n) if n.kind == NoticeKind::ConfigConflict => Some(n.to_string()),
        _ => None,
    });
    assert_eq!(
        notice.as_deref(),
        Some("+config-conflict sentinel b @ mymaster 10.0.0.3 6379 epoch 3 10.0.0.2 6379")
    );
    assert!(adopted.contains(&Action::SetMaster { epoch: 3, node: R1 }));
    assert_eq!((m.master(), m.config_epoch()), (R1, 3));
}

#[test]
fn a_replication_loop_with_no_master_is_failed_over_without_a_human() {
    let mut sim = three();
    // The picture the issue reported: every node a replica, two of them following each other.
    for (n, follows) in [(M, R1), (R1, M), (R2, M), (R3, M)] {
        sim.redis.get_mut(&n).unwrap().follows = Some(follows);
    }
    let repaired = sim.run_until(30_000, |sim| {
        let masters: Vec<_> = sim
            .redis
            .iter()
            .filter(|(_, r)| r.follows.is_none())
            .collect();
        masters.len() == 1
            && sim.alive_ctls().all(|(_, c)| {
                c.machine.master() == *masters[0].0 && c.machine.phase() == FailoverPhase::Idle
            })
    });
    assert!(repaired, "{:?}", sim.redis);
    let master = sim.ctl("a").machine.master();
    assert_ne!(master, R3, "priority 0 is never promoted");
    sim.run_for(8_000);
    all_on(&sim, master);
    for (n, r) in &sim.redis {
        assert!(
            *n == master || r.follows == Some(master),
            "{n} follows {:?}",
            r.follows
        );
    }
}
