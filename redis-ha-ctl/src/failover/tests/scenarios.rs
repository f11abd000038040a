//! Several controllers, one network, explicit time: the failover properties end to end.

use super::sim::{Sim, switch_payload};
use super::{M, R1, R2, R3, count_notices, first_notice, params};
use crate::failover::{Action, ControllerId, FailoverPhase, NodeAddr, NoticeKind, Params, PeerMsg};

fn three() -> Sim {
    let mut sim = Sim::new(&["a", "b", "c"], params());
    sim.run_for(1_000);
    sim
}

/// Every live controller's data plane and belief point at `node`, switched in `epoch`.
fn assert_all_on(sim: &Sim, epoch: u64, node: NodeAddr) {
    for (id, ctl) in sim.alive_ctls() {
        assert_eq!(ctl.write, Some((epoch, node)), "{id}'s write port");
        assert_eq!(ctl.machine.master(), node, "{id}'s master");
        assert_eq!(ctl.machine.config_epoch(), epoch, "{id}'s config epoch");
        assert_eq!(ctl.machine.phase(), FailoverPhase::Idle, "{id}'s phase");
    }
}

fn leaders(sim: &Sim) -> Vec<ControllerId> {
    sim.ctls
        .iter()
        .filter(|(_, c)| first_notice(&c.log, NoticeKind::ElectedLeader).is_some())
        .map(|(id, _)| id.clone())
        .collect()
}

#[test]
fn steady_state_reads_from_replicas_and_writes_to_the_master() {
    let sim = three();
    for (id, ctl) in sim.alive_ctls() {
        assert_eq!(ctl.write, Some((0, M)), "{id}");
        assert_eq!(ctl.reads, vec![R1, R2, R3], "{id}");
        // Only what was found: the service, its replicas, the peers.
        let found = [NoticeKind::Monitor, NoticeKind::Slave, NoticeKind::Sentinel];
        assert!(
            !ctl.log
                .iter()
                .any(|(_, a)| matches!(a, Action::Emit(n) if !found.contains(&n.kind))),
            "{id}: no events but discoveries"
        );
        for kind in found {
            assert!(count_notices(&ctl.log, kind) > 0, "{id}: {kind}");
        }
    }
}

#[test]
fn killing_the_master_gives_exactly_one_failover_by_an_elected_leader() {
    let mut sim = three();
    sim.kill(M);
    sim.run_for(8_000);

    let promotions = sim.promotions();
    assert_eq!(promotions.len(), 1, "{promotions:?}");
    let (_, promoter, promoted) = &promotions[0];
    // R3 has the largest offset but priority 0; R2 beats R1 on offset.
    assert_eq!(*promoted, R2);
    assert_eq!(
        leaders(&sim),
        vec![promoter.clone()],
        "only the elected leader acts"
    );
    assert_eq!(sim.count(NoticeKind::ElectedLeader), 1);

    // The leader had a majority of all three controllers in epoch 1.
    let voters_for_leader = sim
        .ctls
        .values()
        .filter(|c| {
            c.durable
                .as_ref()
                .and_then(|p| p.vote.as_ref())
                .is_some_and(|v| v.epoch == 1 && v.leader == *promoter)
        })
        .count();
    assert!(voters_for_leader >= 2, "{voters_for_leader} votes");

    // Everybody switched, once, and names it as Sentinel does.
    assert_all_on(&sim, 1, R2);
    for (id, ctl) in sim.alive_ctls() {
        let switches: Vec<String> = ctl
            .log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Emit(n) if n.kind == NoticeKind::SwitchMaster => Some(n.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(switches, vec![switch_payload(R2)], "{id}");
    }
    // Non-leaders learned it from the leader's hello.
    assert_eq!(sim.count(NoticeKind::ConfigUpdateFrom), 2);

    // The other replicas follow R2, and serve reads again.
    assert_eq!(sim.redis[&R1].follows, Some(R2));
    assert_eq!(sim.redis[&R3].follows, Some(R2));
    for (id, ctl) in sim.alive_ctls() {
        assert_eq!(ctl.reads, vec![R1, R3], "{id}");
    }
}

#[test]
fn one_controller_seeing_the_master_down_is_not_enough() {
    let mut sim = three();
    sim.cut_node("a", M);
    sim.run_for(15_000);
    let a = sim.ctl("a");
    assert!(
        first_notice(&a.log, NoticeKind::Sdown).is_some(),
        "a sees it down"
    );
    assert_eq!(sim.count(NoticeKind::Odown), 0);
    assert_eq!(sim.count(NoticeKind::TryFailover), 0);
    assert!(sim.promotions().is_empty());
    assert_all_on(&sim, 0, M);
}

#[test]
fn a_minority_partition_never_fails_over() {
    // Quorum 1: the isolated controller reaches ODOWN on its own and keeps trying, but can never
    // gather a majority of the three controllers.
    let mut sim = Sim::new(
        &["a", "b", "c"],
        Params {
            quorum: 1,
            ..params()
        },
    );
    sim.run_for(1_000);
    sim.partition(&["a"], &["b", "c"]);
    sim.cut_node("a", M);
    sim.run_for(40_000);

    let a = sim.ctl("a");
    assert!(first_notice(&a.log, NoticeKind::Odown).is_some());
    let attempts = super::count_notices(&a.log, NoticeKind::TryFailover);
    assert!(attempts >= 2, "a retried ({attempts} attempts)");
    assert_eq!(
        super::count_notices(&a.log, NoticeKind::FailoverAbortNotElected),
        attempts
    );
    assert_eq!(sim.count(NoticeKind::ElectedLeader), 0);
    assert!(sim.promotions().is_empty());
    let a_epoch = a.machine.current_epoch();
    assert_eq!(a_epoch, attempts as u64);

    // Healing: the others adopt a's higher epoch, a sees the master again, nothing fails over.
    sim.heal();
    sim.run_for(3_000);
    for name in ["b", "c"] {
        let ctl = sim.ctl(name);
        assert_eq!(ctl.machine.current_epoch(), a_epoch, "{name}");
        let (_, text) = first_notice(&ctl.log, NoticeKind::NewEpoch).unwrap();
        assert_eq!(text, format!("+new-epoch {a_epoch}"));
    }
    let a = sim.ctl("a");
    assert!(first_notice(&a.log, NoticeKind::SdownCleared).is_some());
    assert!(first_notice(&a.log, NoticeKind::OdownCleared).is_some());
    assert!(sim.promotions().is_empty());
    assert_all_on(&sim, 0, M);
}

#[test]
fn the_majority_side_fails_over_while_the_minority_side_cannot() {
    // a keeps the master but is alone; b and c lose it and are a majority.
    let mut sim = three();
    sim.partition(&["a"], &["b", "c"]);
    sim.cut_node("b", M);
    sim.cut_node("c", M);
    sim.run_for(8_000);
    let promotions = sim.promotions();
    assert_eq!(promotions.len(), 1, "{promotions:?}");
    assert_ne!(promotions[0].1, ControllerId::from("a"));
    for name in ["b", "c"] {
        assert_eq!(sim.ctl(name).write, Some((1, R2)), "{name}");
    }
    let a = sim.ctl("a");
    assert_eq!(a.machine.current_epoch(), 0, "a heard nothing");
    // a still sees M as a sane master, but cut off from the other controllers it does not demote
    // what they promoted.
    assert_eq!(first_notice(&a.log, NoticeKind::ConvertToSlave), None);
    assert_eq!(sim.redis[&R2].follows, None);
    assert_eq!(sim.redis[&R1].follows, Some(R2));

    // Once healed, a learns the newer configuration and M (still a master) is demoted.
    sim.heal();
    sim.run_for(3_000);
    assert_all_on(&sim, 1, R2);
    assert_eq!(sim.redis[&M].follows, Some(R2));
    assert_eq!(sim.promotions().len(), 1);
}

#[test]
fn simultaneous_candidates_take_turns_by_id_and_one_epoch_elects_the_leader() {
    let mut sim = three();
    sim.batched = true; // everybody reaches ODOWN in the same instant.
    sim.kill(M);
    let elected = sim.run_until(30_000, |s| s.count(NoticeKind::ElectedLeader) > 0);
    assert!(elected);

    // Without turns each would vote for itself and lose the epoch (a split vote costs twice
    // the failover timeout); the lowest id stands first and the others vote for it.
    assert_eq!(sim.count(NoticeKind::TryFailover), 1);
    assert_eq!(sim.count(NoticeKind::FailoverAbortNotElected), 0);
    for ctl in sim.ctls.values() {
        let (_, text) = first_notice(&ctl.log, NoticeKind::VoteForLeader).unwrap();
        assert_eq!(text, "+vote-for-leader a 1");
    }
    assert_eq!(leaders(&sim), vec![ControllerId::from("a")]);

    sim.run_for(3_000);
    assert_eq!(sim.promotions().len(), 1);
    assert_all_on(&sim, 1, R2);
}

#[test]
fn a_candidate_stands_after_its_turn_when_lower_ids_do_not() {
    // a is cut off from b and c: its reports never reach them, so b does not wait for a and
    // stands first; c waits its turn behind b and votes for it.
    let mut sim = three();
    sim.partition(&["a"], &["b", "c"]);
    sim.kill(M);
    let elected = sim.run_until(30_000, |s| s.count(NoticeKind::ElectedLeader) > 0);
    assert!(elected);
    sim.run_for(3_000);
    assert_eq!(sim.promotions().len(), 1);
    assert_eq!(sim.promotions()[0].1, ControllerId::from("b"));
    assert_eq!(sim.count(NoticeKind::FailoverAbortNotElected), 0);
}

#[test]
fn when_the_leader_dies_mid_failover_a_later_epoch_completes_it() {
    let mut sim = three();
    sim.crash_next_promoter = true; // dies right after sending REPLICAOF NO ONE
    sim.kill(M);
    sim.run_for(3_000);
    let first = sim.promotions();
    assert_eq!(first.len(), 1);
    let (_, dead, node) = first[0].clone();
    assert!(!sim.ctls[&dead].alive);
    assert_eq!(node, R2);
    // R2 is master, but nobody alive finished the failover.
    assert!(sim.alive_ctls().all(|(_, c)| c.write == Some((0, M))));

    let done = sim.run_until(30_000, |s| {
        s.alive_ctls().all(|(_, c)| c.write == Some((2, R2)))
    });
    assert!(done, "a later epoch completed the failover");
    let promotions = sim.promotions();
    assert_eq!(promotions.len(), 2);
    let (second_at, second_leader, second_node) = promotions[1].clone();
    assert_ne!(second_leader, dead);
    // Picked the replica the dead leader had already promoted (it had replicated the most).
    assert_eq!(second_node, R2);
    // Not before the survivors' retry delay (2 × failover-timeout after they voted).
    assert!(second_at - first[0].0 >= 2 * params().failover_timeout_ms);
    sim.run_for(2_000);
    assert_all_on(&sim, 2, R2);
    assert_eq!(sim.redis[&R1].follows, Some(R2));
}

#[test]
fn stale_down_views_after_a_switch_do_not_cause_a_second_failover() {
    let mut sim = three();
    sim.kill(M);
    sim.run_for(8_000);
    assert_all_on(&sim, 1, R2);
    let switched_at = sim.now;

    // Replay to c every hello sent before the switch that reported a master down: all stale.
    let stale: Vec<_> = sim
        .hellos
        .iter()
        .filter(|(t, _, h)| *t < switched_at - 5_000 && !h.sdown.is_empty())
        .cloned()
        .collect();
    assert!(!stale.is_empty());
    for (_, from, hello) in stale {
        if from != ControllerId::from("c") {
            sim.inject(&from, "c", PeerMsg::Hello(hello));
        }
    }
    // And c alone loses the new master for a while: SDOWN for c, but nobody agrees.
    sim.cut_node("c", R2);
    sim.run_for(4_000);
    let c = sim.ctl("c");
    let (_, text) = first_notice(&c.log, NoticeKind::Sdown).unwrap();
    assert!(text.contains("master"), "c's own view: {text}");
    assert!(c.machine.is_sdown(R2));
    assert!(!c.machine.is_odown());
    assert_eq!(
        sim.count(NoticeKind::TryFailover),
        1,
        "only the first failover"
    );
    assert_eq!(sim.promotions().len(), 1);
    sim.heal();
    sim.run_for(2_000);
    assert_all_on(&sim, 1, R2);
}

#[test]
fn a_returning_old_master_is_demoted_and_never_gets_traffic_until_it_replicates() {
    let mut sim = three();
    sim.kill(M);
    sim.run_for(8_000);
    assert_all_on(&sim, 1, R2);

    // M comes back still believing it is the master.
    sim.revive(M);
    assert_eq!(sim.redis[&M].follows, None);
    let mut converted_at = None;
    for _ in 0..50 {
        sim.round();
        for (id, ctl) in sim.alive_ctls() {
            assert_eq!(ctl.write, Some((1, R2)), "{id}: writes stay on R2");
            let replicating = sim.redis[&M].follows == Some(R2);
            assert!(
                replicating || !ctl.reads.contains(&M),
                "{id} reads from a rogue master"
            );
        }
        if converted_at.is_none() && sim.redis[&M].follows == Some(R2) {
            converted_at = Some(sim.now);
        }
    }
    assert!(converted_at.is_some(), "M was demoted");
    assert!(sim.count(NoticeKind::ConvertToSlave) >= 1);
    let (_, text) = sim
        .alive_ctls()
        .find_map(|(_, c)| first_notice(&c.log, NoticeKind::ConvertToSlave))
        .unwrap();
    assert_eq!(
        text,
        "+convert-to-slave slave 10.0.0.1:6379 10.0.0.1 6379 @ mymaster 10.0.0.3 6379"
    );
    // No SetMaster ever named M after the initial one.
    for (id, ctl) in &sim.ctls {
        let named_m = ctl
            .log
            .iter()
            .filter(|(_, a)| matches!(a, Action::SetMaster { node, .. } if *node == M))
            .count();
        assert_eq!(named_m, 1, "{id}");
    }
    // Now a healthy replica of R2, it serves reads.
    for (id, ctl) in sim.alive_ctls() {
        assert_eq!(ctl.reads, vec![M, R1, R3], "{id}");
    }
}

#[test]
fn a_stopped_replica_leaves_the_read_pool_after_down_after_and_returns() {
    let mut sim = three();
    sim.kill(R1);
    sim.run_for(500);
    assert!(
        sim.alive_ctls().all(|(_, c)| c.reads.contains(&R1)),
        "not on one missed probe"
    );
    sim.run_for(1_000);
    assert!(sim.alive_ctls().all(|(_, c)| c.reads == vec![R2, R3]));
    sim.revive(R1);
    sim.round();
    assert!(
        sim.alive_ctls().all(|(_, c)| !c.reads.contains(&R1)),
        "rise needs two replies"
    );
    sim.round();
    assert!(sim.alive_ctls().all(|(_, c)| c.reads == vec![R1, R2, R3]));

    // A lagging replica serves no reads; it is not down, though.
    sim.redis.get_mut(&R2).unwrap().lag_ms = 5_000;
    sim.round();
    assert!(sim.alive_ctls().all(|(_, c)| c.reads == vec![R1, R3]));
    assert_eq!(sim.count(NoticeKind::Sdown), 3, "R1 once per controller");
    assert!(sim.promotions().is_empty());
}

#[test]
fn votes_and_vote_requests_are_durable_before_they_leave() {
    // The simulator asserts it on every ReplyVote and VoteRequest; make sure some were sent.
    let mut sim = three();
    sim.batched = true;
    sim.kill(M);
    sim.run_for(20_000);
    let replies = sim
        .ctls
        .values()
        .flat_map(|c| c.log.iter())
        .filter(|(_, a)| matches!(a, Action::ReplyVote { .. }))
        .count();
    assert!(replies >= 2, "{replies} vote replies checked");
    assert_eq!(sim.count(NoticeKind::TryFailover), 1);
}
