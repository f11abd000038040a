//! One machine, driven by hand: each rule on its own.

use std::collections::BTreeMap;

use super::{
    M, R1, R2, R3, config, count_notices, first_notice, kinds, master_reply, params, replica_reply,
};
use crate::failover::{
    Action, ControllerId, Event, FailoverPhase, Hello, Millis, NodeAddr, NodeInfo, Notice,
    NoticeKind, Params, PeerMsg, Persisted, ProbeResult, Role, ServiceMachine, Vote,
};

/// One machine and a world whose probe replies the test sets.
pub(super) struct One {
    pub(super) m: ServiceMachine,
    pub(super) now: Millis,
    pub(super) jitter: Millis,
    pub(super) log: Vec<(Millis, Action)>,
    /// What each node answers; `None`: no valid reply.
    pub(super) world: BTreeMap<NodeAddr, Option<ProbeResult>>,
    /// Hellos "received" from peers every round.
    pub(super) standing_hellos: Vec<(ControllerId, Hello)>,
}

impl One {
    pub(super) fn new(me: &str, peers: &[&str], params: Params) -> Self {
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
    pub(super) fn alone() -> Self {
        Self::new(
            "a",
            &[],
            Params {
                quorum: 1,
                ..params()
            },
        )
    }

    pub(super) fn step(&mut self, event: Event) -> Vec<Action> {
        let actions = self.m.step(event, self.now, self.jitter);
        self.log
            .extend(actions.iter().map(|a| (self.now, a.clone())));
        actions
    }

    pub(super) fn from(&mut self, peer: &str, msg: PeerMsg) -> Vec<Action> {
        self.step(Event::Peer {
            from: peer.into(),
            msg,
        })
    }

    pub(super) fn set(&mut self, node: NodeAddr, reply: Option<ProbeResult>) {
        self.world.insert(node, reply);
    }

    /// Advance `ms` in 100 ms rounds: probe every node, hear the standing hellos, tick.
    pub(super) fn run(&mut self, ms: Millis) -> Vec<Action> {
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

    pub(super) fn first(&self, kind: NoticeKind) -> Option<(Millis, String)> {
        first_notice(&self.log, kind)
    }
}

pub(super) fn emit(kind: NoticeKind, payload: &str) -> Action {
    Action::Emit(Notice {
        kind,
        payload: payload.to_owned(),
    })
}

pub(super) fn hello(master: NodeAddr, sdown: &[NodeAddr]) -> Hello {
    Hello {
        current_epoch: 0,
        master,
        config_epoch: 0,
        sdown: sdown.to_vec(),
        failover_epoch: None,
    }
}

/// The hello of a leader that promoted `master` in epoch 1.
pub(super) fn promoted(master: NodeAddr, sdown: &[NodeAddr]) -> PeerMsg {
    PeerMsg::Hello(Hello {
        current_epoch: 1,
        config_epoch: 1,
        ..hello(master, sdown)
    })
}

pub(super) fn position(actions: &[Action], pred: impl Fn(&Action) -> bool) -> usize {
    actions.iter().position(pred).expect("action present")
}

pub(super) const MASTER: &str = "master mymaster 10.0.0.1 6379";

// ------------------------------------------------------------------------------------------------
// SDOWN and hysteresis.

#[test]
fn sdown_after_down_after_without_a_valid_reply() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    // Only what it found: the service and its replicas.
    assert!(
        kinds(t.log.iter().map(|(_, a)| a))
            .iter()
            .all(|k| matches!(k, NoticeKind::Monitor | NoticeKind::Slave))
    );
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
            // The timer runs every 100 ms whatever the probes do (a longer gap is a stall of
            // the controller itself: TILT).
            while t.now + 100 < now {
                t.now += 100;
                t.step(Event::Tick);
            }
            t.now = now;
            t.step(event);
            t.step(Event::Tick);
        };
        let probe = |result| Event::Probe { node: M, result };
        at(&mut t, 0, probe(master_reply(1)));
        at(&mut t, 1_000, probe(ProbeResult::Failed));
        at(&mut t, 2_000, probe(master_reply(2)));
        at(&mut t, 3_000, probe(master_reply(3)));
        // (The replicas, never probed here, go SDOWN; only the master matters.)
        t.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Emit(n)
                    if n.payload.starts_with("master") && n.kind != NoticeKind::Monitor =>
                {
                    Some(n.kind)
                }
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
    let detected = |epoch| {
        emit(
            NoticeKind::FailoverDetected,
            &format!("{MASTER} epoch {epoch}"),
        )
    };
    let actions = t.from("b", asked(1));
    assert_eq!(
        actions,
        vec![
            detected(1),
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
        vec![detected(1), reply("c", 1, "b")]
    );

    // A higher epoch is a new vote.
    let actions = restarted.step(from_c(2), t.now, 0);
    assert_eq!(
        actions,
        vec![
            detected(2),
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
            emit(
                NoticeKind::Sentinel,
                "sentinel b 198.18.0.10 26379 @ mymaster 10.0.0.1 6379"
            ),
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
