//! One machine, driven by hand: each rule on its own.

use std::collections::BTreeMap;

use super::sim::Sim;
use super::{
    M, R1, R2, R3, SERVICE, config, count_notices, first_notice, kinds, master_reply, params,
    replica_reply,
};
use crate::failover::{
    Action, Command, ControllerId, Event, FailoverPhase, Hello, Millis, NodeAddr, NodeInfo, Notice,
    NoticeKind, Params, PeerMsg, Persisted, ProbeResult, ReadFromMaster, Role, ServiceMachine,
    SetupError, Vote,
};

/// One machine and a world whose probe replies the test sets.
struct One {
    m: ServiceMachine,
    now: Millis,
    jitter: Millis,
    log: Vec<(Millis, Action)>,
    /// What each node answers; `None`: no valid reply.
    world: BTreeMap<NodeAddr, Option<ProbeResult>>,
    /// Hellos "received" from peers every round.
    standing_hellos: Vec<(ControllerId, Hello)>,
}

impl One {
    fn new(me: &str, peers: &[&str], params: Params) -> Self {
        let (m, initial) = ServiceMachine::new(config(me, peers, params), None, 0).unwrap();
        let world = [
            (M, Some(master_reply(1_000))),
            (R1, Some(replica_reply(M, true, 100, 100))),
            (R2, Some(replica_reply(M, true, 200, 100))),
            (R3, Some(replica_reply(M, true, 999, 0))),
        ]
        .into_iter()
        .collect();
        Self {
            m,
            now: 0,
            jitter: 0,
            log: initial.into_iter().map(|a| (0, a)).collect(),
            world,
            standing_hellos: Vec::new(),
        }
    }

    /// A controller on its own (no peers, quorum 1): it can fail over by itself.
    fn alone() -> Self {
        Self::new(
            "a",
            &[],
            Params {
                quorum: 1,
                ..params()
            },
        )
    }

    fn step(&mut self, event: Event) -> Vec<Action> {
        let actions = self.m.step(event, self.now, self.jitter);
        self.log
            .extend(actions.iter().map(|a| (self.now, a.clone())));
        actions
    }

    fn from(&mut self, peer: &str, msg: PeerMsg) -> Vec<Action> {
        self.step(Event::Peer {
            from: peer.into(),
            msg,
        })
    }

    fn set(&mut self, node: NodeAddr, reply: Option<ProbeResult>) {
        self.world.insert(node, reply);
    }

    /// Advance `ms` in 100 ms rounds: probe every node, hear the standing hellos, tick.
    fn run(&mut self, ms: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        let end = self.now + ms;
        while self.now < end {
            self.now += 100;
            let world: Vec<_> = self.world.clone().into_iter().collect();
            for (node, reply) in world {
                let result = reply.unwrap_or(ProbeResult::Failed);
                actions.extend(self.step(Event::Probe { node, result }));
            }
            for (peer, hello) in self.standing_hellos.clone() {
                actions.extend(self.step(Event::Peer {
                    from: peer,
                    msg: PeerMsg::Hello(hello),
                }));
            }
            actions.extend(self.step(Event::Tick));
        }
        actions
    }

    fn first(&self, kind: NoticeKind) -> Option<(Millis, String)> {
        first_notice(&self.log, kind)
    }
}

fn emit(kind: NoticeKind, payload: &str) -> Action {
    Action::Emit(Notice {
        kind,
        payload: payload.to_owned(),
    })
}

fn hello(master: NodeAddr, sdown: &[NodeAddr]) -> Hello {
    Hello {
        current_epoch: 0,
        master,
        config_epoch: 0,
        sdown: sdown.to_vec(),
        failover_epoch: None,
    }
}

/// The hello of a leader that promoted `master` in epoch 1.
fn promoted(master: NodeAddr, sdown: &[NodeAddr]) -> PeerMsg {
    PeerMsg::Hello(Hello {
        current_epoch: 1,
        config_epoch: 1,
        ..hello(master, sdown)
    })
}

fn position(actions: &[Action], pred: impl Fn(&Action) -> bool) -> usize {
    actions.iter().position(pred).expect("action present")
}

const MASTER: &str = "master mymaster 10.0.0.1 6379";

// ------------------------------------------------------------------------------------------------
// SDOWN and hysteresis.

#[test]
fn sdown_after_down_after_without_a_valid_reply() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    assert!(kinds(t.log.iter().map(|(_, a)| a)).is_empty());
    t.set(M, None);
    t.run(2_000);
    // Last reply at 1000; down-after is 1000 and strictly exceeded at 2100.
    let (at, text) = t.first(NoticeKind::Sdown).unwrap();
    assert_eq!(
        (at, text.as_str()),
        (2_100, "+sdown master mymaster 10.0.0.1 6379")
    );
    assert!(t.m.is_sdown(M));
    // Peers are told at once, not at the next hello period.
    let told = t.log.iter().any(|(time, a)| {
        *time == 2_100 && matches!(a, Action::SendToPeers(PeerMsg::Hello(h)) if h.sdown == vec![M])
    });
    assert!(told);
}

#[test]
fn one_slow_reply_does_not_flap() {
    // Probes every second with a one-second down-after, as in the seed stack: one probe times out.
    let run = |fall, rise| {
        let p = Params {
            fall,
            rise,
            probe_interval_ms: 1_000,
            ..params()
        };
        let mut t = One::new("a", &["b", "c"], p);
        let at = |t: &mut One, now, event| {
            t.now = now;
            t.step(event);
            t.step(Event::Tick);
        };
        let probe = |result| Event::Probe { node: M, result };
        at(&mut t, 0, probe(master_reply(1)));
        at(&mut t, 1_500, probe(ProbeResult::Failed));
        at(&mut t, 2_000, probe(master_reply(2)));
        at(&mut t, 3_000, probe(master_reply(3)));
        // (The replicas, never probed here, go SDOWN; only the master matters.)
        t.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Emit(n) if n.payload.starts_with("master") => Some(n.kind),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(2, 2), vec![], "hysteresis: no flip");
    assert_eq!(
        run(1, 1),
        vec![NoticeKind::Sdown, NoticeKind::SdownCleared],
        "without hysteresis it flaps"
    );
}

#[test]
fn coming_back_needs_rise_consecutive_replies() {
    let mut t = One::new("a", &["b", "c"], params());
    t.set(R1, None);
    t.run(1_500);
    assert!(t.m.is_sdown(R1));
    t.set(R1, Some(replica_reply(M, true, 100, 100)));
    t.run(100);
    t.set(R1, None);
    t.run(100);
    t.set(R1, Some(replica_reply(M, true, 100, 100)));
    t.run(100);
    assert!(t.m.is_sdown(R1), "reply, failure, reply: not two in a row");
    t.run(100);
    assert!(!t.m.is_sdown(R1));
    assert_eq!(count_notices(&t.log, NoticeKind::SdownCleared), 1);
}

#[test]
fn a_master_reporting_itself_a_replica_is_sdown() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    t.set(M, Some(replica_reply(R1, true, 1_000, 100)));
    t.run(3_000);
    // It replies, but as a replica since 1100: down after down-after + 2 probe periods.
    let (at, _) = t.first(NoticeKind::Sdown).unwrap();
    assert_eq!(at, 1_100 + 1_000 + 200 + 100);
    assert!(!t.m.read_pool().contains(&M));
}

#[test]
fn reboot_is_noticed() {
    let mut t = One::new("a", &["b", "c"], params());
    let with_run_id = |id: &str| {
        ProbeResult::Ok(NodeInfo {
            run_id: Some(id.to_owned()),
            role: Role::Master { repl_offset: 1 },
        })
    };
    t.set(M, Some(with_run_id("aaaa")));
    t.run(300);
    t.set(M, Some(with_run_id("bbbb")));
    t.run(100);
    assert_eq!(
        t.first(NoticeKind::Reboot).unwrap().1,
        format!("+reboot {MASTER}")
    );
    assert_eq!(count_notices(&t.log, NoticeKind::Reboot), 1);
}

// ------------------------------------------------------------------------------------------------
// ODOWN.

#[test]
fn odown_needs_quorum_of_fresh_reports_about_the_same_master() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    t.set(M, None);
    t.run(1_500);
    assert!(t.m.is_sdown(M) && !t.m.is_odown());

    // Reports that do not count: about another master, from a stranger.
    t.from("c", PeerMsg::Hello(hello(R1, &[M])));
    t.from("z", PeerMsg::Hello(hello(M, &[M])));
    t.run(100);
    assert!(!t.m.is_odown());

    t.from("b", PeerMsg::Hello(hello(M, &[M])));
    let heard_at = t.now;
    t.run(100);
    let (at, text) = t.first(NoticeKind::Odown).unwrap();
    assert_eq!(at, heard_at + 100);
    assert_eq!(text, format!("+odown {MASTER} #quorum 2/2"));

    // b's report is not refreshed: it expires, and so does ODOWN.
    t.run(1_500);
    let (at, _) = t.first(NoticeKind::OdownCleared).unwrap();
    assert_eq!(at, heard_at + 1_100);
}

// ------------------------------------------------------------------------------------------------
// Epochs and votes.

#[test]
fn one_vote_per_epoch_persisted_before_the_reply() {
    let mut t = One::new("a", &["b", "c"], params());
    let asked = |epoch| PeerMsg::VoteRequest { epoch, master: M };
    let reply = |to: &str, epoch, leader: &str| Action::ReplyVote {
        to: to.into(),
        epoch,
        leader: leader.into(),
    };
    let persisted = |epoch, leader: &str| {
        Action::Persist(Persisted {
            current_epoch: epoch,
            vote: Some(Vote {
                epoch,
                leader: leader.into(),
            }),
            master: M,
            config_epoch: 0,
        })
    };

    // First requester of a higher epoch gets the vote; it is persisted before the reply.
    let actions = t.from("b", asked(1));
    assert_eq!(
        actions,
        vec![
            emit(NoticeKind::NewEpoch, "1"),
            emit(NoticeKind::VoteForLeader, "b 1"),
            persisted(1, "b"),
            reply("b", 1, "b"),
        ]
    );
    // A second candidate in the same epoch hears who we voted for.
    assert_eq!(t.from("c", asked(1)), vec![reply("c", 1, "b")]);

    // Even after a restart from what was persisted.
    let durable = t
        .log
        .iter()
        .rev()
        .find_map(|(_, a)| match a {
            Action::Persist(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    let (mut restarted, _) =
        ServiceMachine::new(config("a", &["b", "c"], params()), Some(durable), t.now).unwrap();
    let from_c = |epoch| Event::Peer {
        from: "c".into(),
        msg: asked(epoch),
    };
    assert_eq!(
        restarted.step(from_c(1), t.now, 0),
        vec![reply("c", 1, "b")]
    );

    // A higher epoch is a new vote.
    let actions = restarted.step(from_c(2), t.now, 0);
    assert_eq!(
        actions,
        vec![
            emit(NoticeKind::NewEpoch, "2"),
            emit(NoticeKind::VoteForLeader, "c 2"),
            persisted(2, "c"),
            reply("c", 2, "c"),
        ]
    );
}

#[test]
fn no_vote_about_a_master_we_do_not_monitor() {
    let mut t = One::new("a", &["b", "c"], params());
    let actions = t.from(
        "b",
        PeerMsg::VoteRequest {
            epoch: 1,
            master: R1,
        },
    );
    assert_eq!(actions, vec![]);
    assert_eq!(t.m.current_epoch(), 0);
}

#[test]
fn a_higher_epoch_is_adopted_and_lower_requests_get_no_vote() {
    let mut t = One::new("a", &["b", "c"], params());
    let actions = t.from(
        "b",
        PeerMsg::Hello(Hello {
            current_epoch: 7,
            ..hello(M, &[])
        }),
    );
    assert_eq!(
        actions,
        vec![
            emit(NoticeKind::NewEpoch, "7"),
            Action::Persist(Persisted {
                current_epoch: 7,
                vote: None,
                master: M,
                config_epoch: 0,
            }),
        ]
    );
    assert_eq!(
        t.from(
            "c",
            PeerMsg::VoteRequest {
                epoch: 5,
                master: M
            }
        ),
        vec![]
    );

    // Our own next attempt starts above it, and the vote is durable before anyone is asked.
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.set(M, None);
    let actions = t.run(2_500);
    let (_, text) = t.first(NoticeKind::NewEpoch).unwrap();
    assert_eq!(text, "+new-epoch 7");
    assert_eq!(t.m.current_epoch(), 8);
    let persist = position(
        &actions,
        |a| matches!(a, Action::Persist(p) if p.vote == Some(Vote { epoch: 8, leader: "a".into() })),
    );
    let ask = position(&actions, |a| {
        matches!(
            a,
            Action::SendToPeers(PeerMsg::VoteRequest { epoch: 8, .. })
        )
    });
    assert!(persist < ask);
}

#[test]
fn not_elected_aborts_then_waits_twice_the_failover_timeout() {
    let mut t = One::new("a", &["b", "c"], params());
    t.jitter = 250;
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    let (tried, _) = t.first(NoticeKind::TryFailover).unwrap();
    assert_eq!(tried, 2_100);
    // b voted for itself: one vote each, no majority.
    t.from(
        "b",
        PeerMsg::VoteReply {
            epoch: 1,
            leader: "b".into(),
        },
    );
    t.run(20_000);
    assert_eq!(t.first(NoticeKind::ElectedLeader), None);
    // Election timeout min(10 s, failover-timeout 5 s), from the jittered start time.
    let (aborted, text) = t.first(NoticeKind::FailoverAbortNotElected).unwrap();
    // 2100 + 250 + 5000 = 7350, exceeded at the 7400 tick.
    assert_eq!(aborted, 7_400);
    assert_eq!(text, format!("-failover-abort-not-elected {MASTER}"));
    // Next attempt: 2 × failover-timeout after the jittered start.
    let second = t
        .log
        .iter()
        .filter(|(_, a)| matches!(a, Action::Emit(n) if n.kind == NoticeKind::TryFailover))
        .nth(1)
        .map(|(at, _)| *at);
    // 2350 + 10000 = 12350, seen by the first tick after it.
    assert_eq!(second, Some(12_400));
    assert_eq!(t.m.current_epoch(), 2);
}

#[test]
fn a_leader_needs_a_majority_of_all_controllers_and_the_quorum() {
    // Quorum 3 of 3: a majority (2) is not enough.
    let mut t = One::new(
        "a",
        &["b", "c"],
        Params {
            quorum: 3,
            ..params()
        },
    );
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.standing_hellos.push(("c".into(), hello(M, &[M])));
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    assert_eq!(t.m.phase(), FailoverPhase::Election { epoch: 1 });
    let vote_for_a = PeerMsg::VoteReply {
        epoch: 1,
        leader: "a".into(),
    };
    t.from("b", vote_for_a.clone());
    assert_eq!(
        t.m.phase(),
        FailoverPhase::Election { epoch: 1 },
        "2 votes < quorum 3"
    );
    // A vote for the same candidate in another epoch does not count.
    t.from(
        "c",
        PeerMsg::VoteReply {
            epoch: 0,
            leader: "a".into(),
        },
    );
    assert_eq!(t.m.phase(), FailoverPhase::Election { epoch: 1 });
    let actions = t.from("c", vote_for_a);
    assert!(kinds(&actions).contains(&NoticeKind::ElectedLeader));
    assert_eq!(
        t.m.phase(),
        FailoverPhase::Promotion {
            epoch: 1,
            promoted: R2
        }
    );

    // Five controllers, quorum 2: two votes reach the quorum but not the majority of five.
    let mut t = One::new("a", &["b", "c", "d", "e"], params());
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    t.from(
        "b",
        PeerMsg::VoteReply {
            epoch: 1,
            leader: "a".into(),
        },
    );
    assert_eq!(t.m.phase(), FailoverPhase::Election { epoch: 1 }, "2 of 5");
    t.from(
        "d",
        PeerMsg::VoteReply {
            epoch: 1,
            leader: "a".into(),
        },
    );
    assert!(
        matches!(t.m.phase(), FailoverPhase::Promotion { epoch: 1, .. }),
        "3 of 5"
    );
}

#[test]
fn a_candidate_that_sees_a_later_epoch_stops_asking_and_gives_up() {
    let mut t = One::new("a", &["b", "c"], params());
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    assert_eq!(t.m.phase(), FailoverPhase::Election { epoch: 1 });
    // c started epoch 2 and asks us: we vote for it, our epoch-1 candidacy is dead.
    let actions = t.from(
        "c",
        PeerMsg::VoteRequest {
            epoch: 2,
            master: M,
        },
    );
    assert!(actions.contains(&Action::ReplyVote {
        to: "c".into(),
        epoch: 2,
        leader: "c".into()
    }));
    let later = t.run(1_000);
    assert!(
        !later
            .iter()
            .any(|a| matches!(a, Action::SendToPeers(PeerMsg::VoteRequest { .. })))
    );
    // Even a late majority for epoch 1 does not elect us: votes count in the current epoch.
    t.from(
        "b",
        PeerMsg::VoteReply {
            epoch: 1,
            leader: "a".into(),
        },
    );
    assert_eq!(t.first(NoticeKind::ElectedLeader), None);
    t.run(5_000);
    assert!(t.first(NoticeKind::FailoverAbortNotElected).is_some());
}

#[test]
fn voting_for_another_candidate_delays_our_own_attempt() {
    let mut t = One::new("a", &["b", "c"], params());
    t.jitter = 400;
    t.run(1_000);
    t.from(
        "b",
        PeerMsg::VoteRequest {
            epoch: 1,
            master: M,
        },
    );
    let voted_at = t.now;
    t.standing_hellos.push(("c".into(), hello(M, &[M])));
    t.set(M, None);
    t.run(15_000);
    assert!(t.m.is_odown());
    let (tried, _) = t.first(NoticeKind::TryFailover).unwrap();
    assert_eq!(tried, voted_at + 400 + 10_000);
    assert_eq!(t.m.current_epoch(), 2);
}

// ------------------------------------------------------------------------------------------------
// The failover itself.

#[test]
fn a_lone_controller_fails_over_with_sentinels_sequence_of_events() {
    let mut sim = Sim::new(
        &["a"],
        Params {
            quorum: 1,
            ..params()
        },
    );
    sim.run_for(1_000);
    sim.kill(M);
    sim.run_for(3_000);
    let a = sim.ctl("a");
    let texts: Vec<String> = a
        .log
        .iter()
        .filter_map(|(_, act)| match act {
            Action::Emit(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    let slave = |ip: &str, master_ip: &str| {
        format!("slave {ip}:6379 {ip} 6379 @ mymaster {master_ip} 6379")
    };
    let expected = vec![
        format!("+sdown {MASTER}"),
        format!("+odown {MASTER} #quorum 1/1"),
        "+new-epoch 1".to_owned(),
        format!("+try-failover {MASTER}"),
        "+vote-for-leader a 1".to_owned(),
        format!("+elected-leader {MASTER}"),
        format!("+failover-state-select-slave {MASTER}"),
        format!("+selected-slave {}", slave("10.0.0.3", "10.0.0.1")),
        format!(
            "+failover-state-send-slaveof-noone {}",
            slave("10.0.0.3", "10.0.0.1")
        ),
        format!(
            "+failover-state-wait-promotion {}",
            slave("10.0.0.3", "10.0.0.1")
        ),
        format!("+promoted-slave {}", slave("10.0.0.3", "10.0.0.1")),
        format!("+failover-state-reconf-slaves {MASTER}"),
        format!("+slave-reconf-sent {}", slave("10.0.0.2", "10.0.0.1")),
        format!("+slave-reconf-inprog {}", slave("10.0.0.2", "10.0.0.1")),
        format!("+slave-reconf-done {}", slave("10.0.0.2", "10.0.0.1")),
        format!("+slave-reconf-sent {}", slave("10.0.0.4", "10.0.0.1")),
        format!("+slave-reconf-inprog {}", slave("10.0.0.4", "10.0.0.1")),
        format!("+slave-reconf-done {}", slave("10.0.0.4", "10.0.0.1")),
        format!("+failover-end {MASTER}"),
        "+switch-master mymaster 10.0.0.1 6379 10.0.0.3 6379".to_owned(),
    ];
    assert_eq!(texts, expected);

    // The write port moved when R2 confirmed role:master, not before, and in epoch 1.
    let confirmed = a
        .log
        .iter()
        .position(|(_, act)| matches!(act, Action::Emit(n) if n.kind == NoticeKind::PromotedSlave))
        .unwrap();
    let switched = a
        .log
        .iter()
        .position(|(_, act)| matches!(act, Action::SetMaster { epoch: 1, node } if *node == R2))
        .unwrap();
    assert!(confirmed < switched);
    // parallel-syncs 1: never two replicas being reconfigured at once.
    let sent: Vec<_> = a
        .log
        .iter()
        .filter(|(_, act)| matches!(act, Action::ReplicaOf { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(sent[0] < sent[1]);
}

#[test]
fn the_promotion_is_resent_after_a_failed_command_and_times_out() {
    let mut t = One::alone();
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    assert_eq!(
        t.m.phase(),
        FailoverPhase::Promotion {
            epoch: 1,
            promoted: R2
        }
    );
    let promotes = |t: &One| {
        t.log
            .iter()
            .filter(|(_, a)| matches!(a, Action::PromoteReplica { node } if *node == R2))
            .count()
    };
    assert_eq!(promotes(&t), 1);
    t.step(Event::CommandDone {
        node: R2,
        command: Command::PromoteReplica,
        ok: false,
    });
    t.run(100);
    assert_eq!(promotes(&t), 2, "resent on the next tick");
    // R2 never reports role:master: abort after failover-timeout, no write switch.
    let since = t.first(NoticeKind::SelectedSlave).unwrap().0;
    t.run(6_000);
    let (aborted, text) = t.first(NoticeKind::FailoverAbortSlaveTimeout).unwrap();
    assert_eq!(aborted, since + 5_000 + 100);
    assert_eq!(text, format!("-failover-abort-slave-timeout {MASTER}"));
    assert!(
        !t.log
            .iter()
            .any(|(_, a)| matches!(a, Action::SetMaster { node, .. } if *node == R2))
    );
    assert_eq!(t.m.master(), M);
}

#[test]
fn priority_zero_is_never_promoted() {
    let mut t = One::alone();
    t.set(R1, None);
    t.set(R2, None);
    t.run(2_000);
    t.set(M, None);
    t.run(2_000);
    // R3 is up with the best offset, but priority 0.
    assert!(!t.m.is_sdown(R3));
    let (_, text) = t.first(NoticeKind::FailoverAbortNoGoodSlave).unwrap();
    assert_eq!(text, format!("-failover-abort-no-good-slave {MASTER}"));
    assert!(
        !t.log
            .iter()
            .any(|(_, a)| matches!(a, Action::PromoteReplica { .. }))
    );
}

#[test]
fn selection_skips_stale_and_long_disconnected_replicas() {
    // R2 (best offset) went quiet 600 ms before the election: not SDOWN yet, but stale.
    let mut t = One::alone();
    t.run(1_000);
    t.set(M, None);
    t.run(500);
    t.set(R2, None);
    t.run(600);
    assert!(!t.m.is_sdown(R2));
    let (_, text) = t.first(NoticeKind::SelectedSlave).unwrap();
    assert!(text.contains("10.0.0.2:6379"), "{text}");

    // A replica whose link has been down for more than 10 × down-after (+ the master's SDOWN
    // time) is not trusted either; with R2 quiet, nobody is left.
    let mut t = One::alone();
    let mut long_gone = replica_reply(M, false, 100, 100);
    if let ProbeResult::Ok(NodeInfo {
        role: Role::Replica(r),
        ..
    }) = &mut long_gone
    {
        r.link_down_ms = 60_000;
    }
    t.set(R1, Some(long_gone));
    t.set(R2, None);
    t.run(1_000);
    t.set(M, None);
    t.run(1_100);
    assert!(t.first(NoticeKind::FailoverAbortNoGoodSlave).is_some());
}

// ------------------------------------------------------------------------------------------------
// Switches and the data plane.

#[test]
fn set_master_epochs_only_grow_and_failed_writes_are_retried() {
    let mut t = One::new("a", &["b", "c"], params());
    assert!(
        t.log
            .iter()
            .any(|(_, a)| *a == Action::SetMaster { epoch: 0, node: M })
    );
    let newer = Hello {
        current_epoch: 3,
        master: R2,
        config_epoch: 3,
        sdown: vec![M],
        failover_epoch: None,
    };
    let actions = t.from("b", PeerMsg::Hello(newer));
    assert!(actions.contains(&emit(
        NoticeKind::ConfigUpdateFrom,
        "sentinel b @ mymaster 10.0.0.1 6379"
    )));
    assert!(actions.contains(&emit(
        NoticeKind::SwitchMaster,
        "mymaster 10.0.0.1 6379 10.0.0.3 6379"
    )));
    assert!(actions.contains(&Action::SetMaster { epoch: 3, node: R2 }));
    assert_eq!((t.m.master(), t.m.config_epoch()), (R2, 3));

    // An older configuration changes nothing.
    let older = Hello {
        current_epoch: 3,
        master: R1,
        config_epoch: 2,
        sdown: vec![],
        failover_epoch: None,
    };
    let actions = t.from("c", PeerMsg::Hello(older));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SetMaster { .. }))
    );
    assert_eq!(t.m.master(), R2);

    // The data plane failed to apply it: asked again on the next tick, until it works.
    t.step(Event::MasterApplied {
        epoch: 3,
        node: R2,
        ok: false,
    });
    let again = t.step(Event::Tick);
    assert!(again.contains(&Action::SetMaster { epoch: 3, node: R2 }));
    t.step(Event::MasterApplied {
        epoch: 3,
        node: R2,
        ok: true,
    });
    let quiet = t.step(Event::Tick);
    assert!(!quiet.iter().any(|a| matches!(a, Action::SetMaster { .. })));
}

#[test]
fn a_switch_forgets_the_old_masters_down_state_and_peer_reports() {
    let mut t = One::new("a", &["b", "c"], params());
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.standing_hellos.push(("c".into(), hello(M, &[M])));
    t.run(1_000);
    t.set(M, None);
    t.run(1_200);
    assert!(t.m.is_odown());

    // c announces the new master (it must be from the leader's failover in epoch 1).
    t.standing_hellos.clear();
    t.from("c", promoted(R2, &[M]));
    assert_eq!(t.m.master(), R2);
    assert!(!t.m.is_odown());
    assert!(!t.m.is_sdown(R2));
    assert_eq!(t.m.phase(), FailoverPhase::Idle);

    // Stale reports keep arriving, and we lose R2 ourselves: still no ODOWN, no failover.
    t.standing_hellos.push(("b".into(), hello(M, &[M, R2])));
    t.set(R2, None);
    let epoch = t.m.current_epoch();
    t.run(3_000);
    assert!(t.m.is_sdown(R2));
    assert!(!t.m.is_odown());
    assert_eq!(t.m.current_epoch(), epoch);
}

#[test]
fn a_switch_away_from_a_master_our_probes_fail_marks_it_down_at_once() {
    // Our probes of M fail, but down-after has not passed yet when the leader's new
    // configuration arrives: the old master, now listed as a replica, is SDOWN right away.
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    t.set(M, None);
    t.run(300);
    assert!(!t.m.is_sdown(M));
    t.from("c", promoted(R2, &[M]));
    assert_eq!(t.m.master(), R2);
    assert!(t.m.is_sdown(M));
    assert_eq!(count_notices(&t.log, NoticeKind::Sdown), 1);
    assert_eq!(
        first_notice(&t.log, NoticeKind::Sdown).map(|(_, text)| text),
        Some(format!(
            "+sdown slave {M} {} {} @ {SERVICE} {} {}",
            M.ip(),
            M.port(),
            R2.ip(),
            R2.port()
        ))
    );

    // A planned switch away from a master that answers leaves it up.
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    t.from("c", promoted(R2, &[]));
    assert_eq!(t.m.master(), R2);
    assert!(!t.m.is_sdown(M));
}

#[test]
fn the_read_pool_follows_lag_links_and_read_from_master() {
    let pool_with = |mode, tweak: &dyn Fn(&mut One)| {
        let mut t = One::new(
            "a",
            &["b", "c"],
            Params {
                read_from_master: mode,
                ..params()
            },
        );
        tweak(&mut t);
        t.run(300);
        t.m.read_pool().to_vec()
    };
    let healthy = |_: &mut One| {};
    let no_replicas = |t: &mut One| {
        for r in [R1, R2, R3] {
            t.set(r, Some(replica_reply(R1, true, 1, 1))); // follow another master
        }
    };
    assert_eq!(
        pool_with(ReadFromMaster::Fallback, &healthy),
        vec![R1, R2, R3]
    );
    assert_eq!(
        pool_with(ReadFromMaster::Always, &healthy),
        vec![M, R1, R2, R3]
    );
    assert_eq!(pool_with(ReadFromMaster::Fallback, &no_replicas), vec![M]);
    assert_eq!(pool_with(ReadFromMaster::Never, &no_replicas), vec![]);
    let degraded = |t: &mut One| {
        let mut lagging = replica_reply(M, true, 100, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut lagging
        {
            r.lag_ms = 1_001;
        }
        t.set(R1, Some(lagging));
        let mut long_down = replica_reply(M, false, 200, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut long_down
        {
            r.link_down_ms = 1_001;
        }
        t.set(R2, Some(long_down));
    };
    assert_eq!(pool_with(ReadFromMaster::Never, &degraded), vec![R3]);
    // A link down for less than the allowed lag (the master just died, say) still serves:
    // its data is no staler than a lagging replica's.
    let briefly_down = |t: &mut One| {
        let mut down = replica_reply(M, false, 200, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut down
        {
            r.link_down_ms = 400;
        }
        t.set(R2, Some(down));
    };
    assert_eq!(
        pool_with(ReadFromMaster::Never, &briefly_down),
        vec![R1, R2, R3]
    );
    // An idle master pings its replicas only every repl-ping-replica-period (10 s by default):
    // a replica that has everything the master wrote is not stale, however long ago that was.
    let idle_master = |t: &mut One| {
        for (r, offset) in [(R1, 1_000), (R2, 999)] {
            let mut quiet = replica_reply(M, true, offset, 100);
            if let ProbeResult::Ok(NodeInfo {
                role: Role::Replica(info),
                ..
            }) = &mut quiet
            {
                info.lag_ms = 9_000;
            }
            t.set(r, Some(quiet));
        }
    };
    assert_eq!(pool_with(ReadFromMaster::Never, &idle_master), vec![R1, R3]);

    // Only changes are sent.
    let mut t = One::new("a", &["b", "c"], params());
    let first = t.run(300);
    let pools = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::SetReadPool(_)))
            .count()
    };
    assert_eq!(pools(&first), 1);
    assert_eq!(pools(&t.run(1_000)), 0);
}

#[test]
fn replicas_of_the_replaced_master_keep_serving_reads_for_a_bounded_time() {
    let link_down = |master, ms| {
        let mut reply = replica_reply(master, false, 900, 100);
        if let ProbeResult::Ok(NodeInfo {
            role: Role::Replica(r),
            ..
        }) = &mut reply
        {
            r.link_down_ms = ms;
        }
        reply
    };
    // M dies; 300 ms later (before our own down-after) c's failover promoted R2. R1 and R3
    // still follow M until they are repointed: they serve what M had rather than leave the
    // read port with no replica at all.
    let switched = || {
        let mut t = One::new("a", &["b", "c"], params());
        t.run(1_000);
        assert_eq!(t.m.read_pool(), [R1, R2, R3]);
        t.set(M, None);
        for r in [R1, R2, R3] {
            t.set(r, Some(link_down(M, 300)));
        }
        t.run(300);
        t.set(R2, Some(master_reply(1_000)));
        t.from("c", promoted(R2, &[M]));
        assert_eq!(t.m.master(), R2);
        t.run(100);
        assert_eq!(t.m.read_pool(), [R1, R3]);
        // Repointed, R1 stays on the usual terms.
        t.set(R1, Some(replica_reply(R2, true, 1_000, 100)));
        t
    };
    // R3 may be behind the new master by its own lag plus the time since the switch: with
    // its link down 300 ms, until 700 ms after the switch (max_replica_lag_ms 1000 here).
    let mut t = switched();
    t.run(500);
    assert_eq!(t.m.read_pool(), [R1, R3]);
    t.run(200);
    assert_eq!(t.m.read_pool(), [R1]);
    // Once the old master answers again as a master it may be taking writes R2 never sees:
    // a replica still following it is out at once.
    let mut t = switched();
    t.set(M, Some(master_reply(1_200)));
    t.run(100);
    assert_eq!(t.m.read_pool(), [R1]);
}

#[test]
fn impossible_setups_are_rejected() {
    let build = |me: &str, peers: &[&str], p: Params| {
        ServiceMachine::new(config(me, peers, p), None, 0).err()
    };
    assert_eq!(build("a", &["b", "c"], params()), None);
    assert_eq!(
        build(
            "a",
            &["b"],
            Params {
                quorum: 3,
                ..params()
            }
        ),
        Some(SetupError::QuorumTooLarge {
            quorum: 3,
            controllers: 2
        })
    );
    assert_eq!(
        build(
            "a",
            &[],
            Params {
                quorum: 0,
                ..params()
            }
        ),
        Some(SetupError::ZeroQuorum)
    );
    assert_eq!(
        build(
            "a",
            &["a"],
            Params {
                quorum: 1,
                ..params()
            }
        ),
        Some(SetupError::SelfInPeers { id: "a".into() })
    );
    assert_eq!(
        build("a", &["b", "b"], params()),
        Some(SetupError::DuplicatePeer { id: "b".into() })
    );
    assert_eq!(
        build(
            "a",
            &["b"],
            Params {
                fall: 0,
                ..params()
            }
        ),
        Some(SetupError::Zero { field: "fall" })
    );
    assert_eq!(
        build(
            "a",
            &["b"],
            Params {
                hello_interval_ms: 1_000,
                ..params()
            }
        ),
        Some(SetupError::HelloTooRare {
            hello_interval_ms: 1_000,
            peer_report_validity_ms: 1_000
        })
    );
    let message = SetupError::QuorumTooLarge {
        quorum: 3,
        controllers: 2,
    }
    .to_string();
    assert!(message.contains("lower the quorum"), "{message}");
}
