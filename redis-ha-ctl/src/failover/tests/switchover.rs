//! Operator-forced failovers (`SENTINEL FAILOVER`, `redis-ha-ctl failover`): the planned
//! switchover that pauses writes so that no acknowledged write is lost, its ways out, and
//! Sentinel's plain forced failover when the master is down.

use std::collections::BTreeMap;

use super::sim::{Sim, switch_payload};
use super::{M, R1, R2, R3, config, kinds, master_reply, node, params, replica_reply};
use crate::failover::{
    Action, Event, FailoverPhase, ForceRefused, ForcedOutcome, Hello, Millis, NodeAddr, NoticeKind,
    Params, PeerMsg, ProbeResult, ServiceMachine,
};

/// The bound an operator gives a switchover in these tests.
const TIMEOUT: Millis = 2_000;

/// One controller of three; peer b votes for it when asked, c stays silent.
struct Solo {
    m: ServiceMachine,
    now: Millis,
    /// What each node answers; `None`: no valid reply.
    world: BTreeMap<NodeAddr, Option<ProbeResult>>,
}

impl Solo {
    fn new(params: Params) -> Self {
        Self::with_peers(&["b", "c"], params)
    }

    fn with_peers(peers: &[&str], params: Params) -> Self {
        let (m, _) = ServiceMachine::new(config("a", peers, params), None, 0).unwrap();
        let world = [
            (M, Some(master_reply(1_000))),
            (R1, Some(replica_reply(M, true, 100, 100))),
            (R2, Some(replica_reply(M, true, 200, 100))),
            (R3, Some(replica_reply(M, true, 999, 0))),
        ]
        .into_iter()
        .collect();
        let mut solo = Self { m, now: 0, world };
        solo.run(500);
        solo
    }

    fn step(&mut self, event: Event) -> Vec<Action> {
        self.m.step(event, self.now, 0)
    }

    /// An operator's request, and peer b's vote when it is asked for one (a majority of three).
    fn force(&mut self, to: Option<NodeAddr>) -> Vec<Action> {
        let mut actions = self.step(Event::ForceFailover {
            to,
            timeout_ms: TIMEOUT,
        });
        let asked = actions.iter().find_map(|a| match a {
            Action::SendToPeers(PeerMsg::VoteRequest { epoch, .. }) => Some(*epoch),
            _ => None,
        });
        if let Some(epoch) = asked {
            actions.extend(self.step(Event::Peer {
                from: "b".into(),
                msg: PeerMsg::VoteReply {
                    epoch,
                    leader: "a".into(),
                },
            }));
        }
        actions
    }

    /// Advance `ms` in 100 ms rounds: probe every node, tick.
    fn run(&mut self, ms: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        let end = self.now + ms;
        while self.now < end {
            self.now += 100;
            for (node, reply) in self.world.clone() {
                let result = reply.unwrap_or(ProbeResult::Failed);
                actions.extend(self.step(Event::Probe { node, result }));
            }
            actions.extend(self.step(Event::Tick));
        }
        actions
    }

    /// Every node follows `master`, which reports `role:master`.
    fn all_follow(&mut self, master: NodeAddr) {
        for (&addr, reply) in self.world.iter_mut() {
            let priority = if addr == R3 { 0 } else { 100 };
            *reply = Some(if addr == master {
                master_reply(1_000)
            } else {
                replica_reply(master, true, 1_000, priority)
            });
        }
    }
}

fn outcomes(actions: &[Action]) -> Vec<ForcedOutcome> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Forced(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

fn position(actions: &[Action], what: impl Fn(&Action) -> bool) -> Option<usize> {
    actions.iter().position(what)
}

fn promotes(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::PromoteReplica { .. }))
}

fn moves_write_port(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::SetMaster { .. }))
}

#[test]
fn a_planned_switchover_pauses_syncs_promotes_switches_then_demotes_and_resumes() {
    let mut s = Solo::new(params());

    let started = s.force(None);
    // R3 has the largest offset but priority 0; R2 beats R1 on offset, as Sentinel selects.
    assert_eq!(
        outcomes(&started),
        vec![ForcedOutcome::Started {
            epoch: 1,
            target: R2,
            paused: true
        }]
    );
    assert!(started.contains(&Action::PauseAndSync {
        master: M,
        target: R2,
        pause_ms: 3 * TIMEOUT + 2_000,
        timeout_ms: TIMEOUT,
    }));
    assert_eq!(
        kinds(&started),
        vec![
            NoticeKind::NewEpoch,
            NoticeKind::TryFailover,
            NoticeKind::VoteForLeader,
            NoticeKind::ElectedLeader,
            NoticeKind::FailoverStateSelectSlave,
            NoticeKind::SelectedSlave,
            NoticeKind::FailoverStateWaitSync,
        ],
        "the epoch is won by a vote before anything is selected"
    );
    let asked = position(&started, |a| {
        matches!(
            a,
            Action::SendToPeers(PeerMsg::VoteRequest { epoch: 1, .. })
        )
    });
    let paused = position(&started, |a| matches!(a, Action::PauseAndSync { .. }));
    assert!(asked < paused && asked.is_some(), "{started:?}");
    let persisted = position(
        &started,
        |a| matches!(a, Action::Persist(p) if p.current_epoch == 1 && p.vote.as_ref().is_some_and(|v| v.epoch == 1 && v.leader.0 == "a")),
    );
    assert!(
        persisted.is_some(),
        "the new epoch and our own vote are durable"
    );
    assert!(
        !promotes(&started),
        "nothing is promoted before the target caught up"
    );
    assert_eq!(
        s.m.phase(),
        FailoverPhase::Sync {
            epoch: 1,
            target: R2
        }
    );

    // Probes during the pause change nothing: the master still answers.
    assert!(!promotes(&s.run(300)));

    let synced = s.step(Event::Synced {
        target: R2,
        ok: true,
    });
    assert!(synced.contains(&Action::PromoteReplica { node: R2 }));
    assert!(!moves_write_port(&synced));
    assert!(outcomes(&synced).is_empty());

    // R2 reports role:master: the write port moves first, then the old master is demoted and
    // its writes resume.
    s.world.insert(R2, Some(master_reply(1_000)));
    let confirmed = s.step(Event::Probe {
        node: R2,
        result: master_reply(1_000),
    });
    let set = position(&confirmed, |a| {
        *a == Action::SetMaster { epoch: 1, node: R2 }
    })
    .expect("the write port moves to R2");
    let resume = position(&confirmed, |a| {
        *a == Action::ResumeWrites {
            node: M,
            demote_to: Some(R2),
        }
    })
    .expect("the old master is demoted and resumed");
    assert!(set < resume, "{confirmed:?}");
    assert_eq!(
        outcomes(&confirmed),
        vec![ForcedOutcome::Switched {
            epoch: 1,
            from: M,
            to: R2
        }]
    );
    assert!(
        confirmed.contains(&Action::ReplicaOf {
            node: R1,
            master: R2
        }),
        "the other replicas are reconfigured as after any failover"
    );

    // Everybody follows R2: the failover ends with Sentinel's +switch-master.
    s.all_follow(R2);
    let end = s.run(1_000);
    let switches: Vec<String> = end
        .iter()
        .filter_map(|a| match a {
            Action::Emit(n) if n.kind == NoticeKind::SwitchMaster => Some(n.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(switches, vec![switch_payload(R2)]);
    assert_eq!(s.m.master(), R2);
    assert_eq!(s.m.config_epoch(), 1);
    assert_eq!(s.m.phase(), FailoverPhase::Idle);
    assert!(!end.iter().any(|a| matches!(a, Action::ResumeWrites { .. })));
}

#[test]
fn an_operator_may_name_the_replica_and_is_told_why_another_will_not_do() {
    let mut s = Solo::new(params());
    let refused = |s: &mut Solo, to| match outcomes(&s.force(Some(to))).as_slice() {
        [ForcedOutcome::Refused(r)] => r.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused(&mut s, M), ForceRefused::AlreadyMaster(M));
    assert_eq!(refused(&mut s, node(9)), ForceRefused::UnknownNode(node(9)));
    assert_eq!(
        refused(&mut s, R3),
        ForceRefused::NotEligible {
            node: R3,
            why: "its replica-priority is 0"
        }
    );
    s.world.insert(R1, Some(replica_reply(M, false, 100, 100)));
    s.run(200);
    assert_eq!(
        refused(&mut s, R1),
        ForceRefused::NotEligible {
            node: R1,
            why: "its link to the master is down"
        }
    );
    // Refusals change nothing: no epoch was spent.
    assert_eq!(s.m.current_epoch(), 0);
    assert_eq!(s.m.phase(), FailoverPhase::Idle);

    s.world.insert(R1, Some(replica_reply(M, true, 100, 100)));
    s.run(200);
    let started = s.force(Some(R1));
    assert_eq!(
        outcomes(&started),
        vec![ForcedOutcome::Started {
            epoch: 1,
            target: R1,
            paused: true
        }],
        "the operator's choice wins over the larger offset"
    );
}

#[test]
fn a_second_request_during_a_switchover_is_refused() {
    let mut s = Solo::new(params());
    s.force(None);
    assert_eq!(
        outcomes(&s.force(Some(R1))),
        vec![ForcedOutcome::Refused(ForceRefused::InProgress)]
    );
    assert_eq!(s.m.current_epoch(), 1);
}

#[test]
fn a_target_that_does_not_catch_up_aborts_with_nothing_switched_and_writes_resumed() {
    // Alone (quorum 1), so that it could fail over by itself after the abort.
    let mut s = Solo::with_peers(
        &[],
        Params {
            quorum: 1,
            ..params()
        },
    );
    s.force(None);
    let aborted = s.step(Event::Synced {
        target: R2,
        ok: false,
    });
    assert!(aborted.contains(&Action::ResumeWrites {
        node: M,
        demote_to: None
    }));
    assert_eq!(kinds(&aborted), vec![NoticeKind::FailoverAbortNotSynced]);
    assert_eq!(
        outcomes(&aborted),
        vec![ForcedOutcome::Aborted {
            epoch: 1,
            reason: NoticeKind::FailoverAbortNotSynced
        }]
    );
    assert!(!promotes(&aborted) && !moves_write_port(&aborted));
    assert_eq!(s.m.phase(), FailoverPhase::Idle);
    assert_eq!(s.m.master(), M);

    // A late report of the abandoned attempt is ignored.
    assert!(
        s.step(Event::Synced {
            target: R2,
            ok: true
        })
        .is_empty()
    );

    // The aborted attempt does not hold back the failover a real failure needs (Sentinel's
    // retry delay of twice the failover timeout applies to attempts that touched the master).
    s.world.insert(M, None);
    let after = s.run(3_000);
    assert!(promotes(&after), "an automatic failover follows the crash");
}

#[test]
fn a_lost_sync_report_is_given_up_after_twice_the_timeout() {
    let mut s = Solo::new(params());
    s.force(None);
    s.run(2 * TIMEOUT - 100);
    assert!(
        matches!(s.m.phase(), FailoverPhase::Sync { .. }),
        "the executor's own bound comes first"
    );
    let later = s.run(300);
    assert!(later.contains(&Action::ResumeWrites {
        node: M,
        demote_to: None
    }));
    assert!(outcomes(&later).contains(&ForcedOutcome::Aborted {
        epoch: 1,
        reason: NoticeKind::FailoverAbortNotSynced
    }));
    assert_eq!(s.m.phase(), FailoverPhase::Idle);
}

#[test]
fn a_promotion_that_does_not_show_while_writes_are_paused_is_reverted() {
    let mut s = Solo::new(params());
    s.force(None);
    s.step(Event::Synced {
        target: R2,
        ok: true,
    });
    // R2 keeps reporting itself a replica.
    let waited = s.run(TIMEOUT + 200);
    let revert = position(&waited, |a| {
        *a == Action::ReplicaOf {
            node: R2,
            master: M,
        }
    })
    .expect("the target is told to follow the master again");
    let resume = position(&waited, |a| {
        *a == Action::ResumeWrites {
            node: M,
            demote_to: None,
        }
    })
    .expect("writes resume on the master");
    assert!(revert < resume, "{waited:?}");
    assert!(outcomes(&waited).contains(&ForcedOutcome::Aborted {
        epoch: 1,
        reason: NoticeKind::FailoverAbortSlaveTimeout
    }));
    assert!(!moves_write_port(&waited));
    assert_eq!(s.m.master(), M);
}

#[test]
fn with_the_master_down_it_is_sentinels_forced_failover_without_a_pause() {
    let mut s = Solo::new(params());
    s.world.insert(M, None);
    s.run(1_500);
    assert!(s.m.is_sdown(M));
    assert!(!s.m.is_odown(), "the silent peers never agree");

    let started = s.force(None);
    assert_eq!(
        outcomes(&started),
        vec![ForcedOutcome::Started {
            epoch: 1,
            target: R2,
            paused: false
        }]
    );
    assert!(started.contains(&Action::PromoteReplica { node: R2 }));
    assert!(
        !started
            .iter()
            .any(|a| matches!(a, Action::PauseAndSync { .. }))
    );

    s.world.insert(R2, Some(master_reply(1_000)));
    let confirmed = s.step(Event::Probe {
        node: R2,
        result: master_reply(1_000),
    });
    assert!(confirmed.contains(&Action::SetMaster { epoch: 1, node: R2 }));
    assert_eq!(
        outcomes(&confirmed),
        vec![ForcedOutcome::Switched {
            epoch: 1,
            from: M,
            to: R2
        }]
    );
    assert!(
        !confirmed
            .iter()
            .any(|a| matches!(a, Action::ResumeWrites { .. })),
        "nothing was paused"
    );
}

#[test]
fn a_newer_configuration_from_a_peer_supersedes_a_switchover_and_resumes_writes() {
    let mut s = Solo::new(params());
    s.force(None);
    let hello = Hello {
        current_epoch: 5,
        master: R1,
        config_epoch: 5,
        sdown: Vec::new(),
        failover_epoch: None,
    };
    let actions = s.step(Event::Peer {
        from: "b".into(),
        msg: PeerMsg::Hello(hello),
    });
    assert!(actions.contains(&Action::ResumeWrites {
        node: M,
        demote_to: Some(R1)
    }));
    assert!(outcomes(&actions).contains(&ForcedOutcome::Aborted {
        epoch: 1,
        reason: NoticeKind::ConfigUpdateFrom
    }));
    assert_eq!(s.m.master(), R1);
    assert_eq!(s.m.phase(), FailoverPhase::Idle);
}

#[test]
fn every_controller_follows_a_switchover_led_by_one_and_the_old_master_becomes_a_replica() {
    let mut sim = Sim::new(&["a", "b", "c"], params());
    sim.run_for(1_000);
    sim.feed(
        "b",
        Event::ForceFailover {
            to: None,
            timeout_ms: TIMEOUT,
        },
    );
    let done = sim.run_until(5_000, |sim| {
        sim.alive_ctls()
            .all(|(_, c)| c.write == Some((1, R2)) && c.machine.phase() == FailoverPhase::Idle)
    });
    assert!(done, "every data plane moved to R2 in epoch 1");
    // The leader paused M, promoted R2 and demoted M; nobody else acted.
    assert_eq!(sim.redis[&M].follows, Some(R2));
    assert!(!sim.redis[&M].paused, "writes resumed");
    assert_eq!(sim.redis[&R1].follows, Some(R2));
    let promotions = sim.promotions();
    assert_eq!(promotions.len(), 1, "{promotions:?}");
    assert_eq!(promotions[0].1.0, "b");
    assert_eq!(sim.count(NoticeKind::TryFailover), 1);
    for (id, ctl) in sim.alive_ctls() {
        let switches = ctl
            .log
            .iter()
            .filter(|(_, a)| matches!(a, Action::Emit(n) if n.kind == NoticeKind::SwitchMaster))
            .count();
        assert_eq!(switches, 1, "{id} switched once");
        assert_eq!(ctl.machine.master(), R2, "{id}");
    }

    // No second failover and no demotion fight afterwards; the old master serves reads.
    sim.run_for(5_000);
    assert_eq!(sim.promotions().len(), 1);
    assert_eq!(sim.count(NoticeKind::ConvertToSlave), 0);
    for (id, ctl) in sim.alive_ctls() {
        assert_eq!(ctl.write, Some((1, R2)), "{id}");
        assert!(ctl.reads.contains(&M), "{id}: {:?}", ctl.reads);
    }
}
