//! TILT: the controller itself stalled (its clock jumps between two steps).

use super::unit::{One, hello};
use super::{M, R1, count_notices, kinds, params, replica_reply};
use crate::failover::{
    Action, Event, FailoverPhase, ForceRefused, ForcedOutcome, NoticeKind, PeerMsg, ProbeResult,
};

/// How long the controller is stopped in these tests: five times down-after (1 s).
const STALL: u64 = 5_000;

/// One round of probes, hellos and a tick, `ms` after the last, with no round in between.
fn jump(t: &mut One, ms: u64) -> Vec<Action> {
    t.now += ms - 100;
    t.run(100)
}

fn read_pools(actions: &[Action]) -> Vec<&Vec<crate::failover::NodeAddr>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetReadPool(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stall_longer_than_down_after_marks_nothing_down() {
    let mut t = One::new("a", &["b", "c"], params());
    t.standing_hellos.push(("b".into(), hello(M, &[])));
    t.run(1_000);
    let pool = t.m.read_pool().to_vec();
    assert!(!pool.is_empty());

    // Stopped for 5 s; the first thing it sees is a probe of the master that "timed out"
    // while it was stopped, then the usual round.
    t.now += STALL;
    let first = t.step(Event::Probe {
        node: M,
        result: ProbeResult::Failed,
    });
    assert_eq!(kinds(&first), vec![NoticeKind::Tilt]);
    let mut after = first;
    after.extend(t.run(3_000));
    let notices = kinds(&after);
    assert!(
        !notices.contains(&NoticeKind::Sdown) && !notices.contains(&NoticeKind::Odown),
        "{notices:?}"
    );
    assert_eq!(count_notices(&t.log, NoticeKind::TiltCleared), 1);
    let (entered, text) = t.first(NoticeKind::Tilt).unwrap();
    assert_eq!(text, "+tilt #tilt mode entered");
    let (left, text) = t.first(NoticeKind::TiltCleared).unwrap();
    assert_eq!(text, "-tilt #tilt mode exited");
    // TILT lasts max(down-after, peer report validity) of the controller's own time.
    assert_eq!(left - entered, 1_000);
    assert!(read_pools(&after).is_empty(), "the read pool changed");
    assert_eq!(t.m.read_pool(), pool);
}

#[test]
fn a_node_that_died_during_the_stall_is_judged_after_tilt() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    t.set(R1, None);
    let stalled_at = t.now + STALL;
    jump(&mut t, STALL);
    t.run(1_000);
    assert_eq!(t.first(NoticeKind::Sdown), None, "judged during TILT");
    assert!(!t.m.is_sdown(R1));
    t.run(1_000);
    let (at, text) = t.first(NoticeKind::Sdown).unwrap();
    assert!(text.starts_with("+sdown slave 10.0.0.2:6379"), "{text}");
    let (left, _) = t.first(NoticeKind::TiltCleared).unwrap();
    assert!(at >= left, "+sdown at {at}, before -tilt at {left}");
    // Its last reply came just before the stall: down-after of watched time later, not the
    // stall's length.
    assert!(at <= stalled_at + 1_500, "+sdown at {at}");
    assert_eq!(count_notices(&t.log, NoticeKind::Sdown), 1);
    assert!(!t.m.read_pool().contains(&R1));
}

#[test]
fn tilt_starts_no_failover_and_vouches_for_no_sdown() {
    let mut t = One::new("a", &["b", "c"], params());
    t.standing_hellos.push(("b".into(), hello(M, &[M])));
    t.run(1_000);
    t.set(M, None);
    let during = jump(&mut t, STALL);
    assert!(kinds(&during).contains(&NoticeKind::Tilt));
    // b says the master is down and it really is: still nothing while in TILT.
    let during: Vec<Action> = during.into_iter().chain(t.run(900)).collect();
    let notices = kinds(&during);
    assert!(
        !notices.iter().any(|k| matches!(
            k,
            NoticeKind::Sdown | NoticeKind::Odown | NoticeKind::TryFailover
        )),
        "{notices:?}"
    );
    let hellos: Vec<_> = during
        .iter()
        .filter_map(|a| match a {
            Action::SendToPeers(PeerMsg::Hello(h)) => Some(h),
            _ => None,
        })
        .collect();
    assert!(!hellos.is_empty(), "no hello in TILT");
    assert!(hellos.iter().all(|h| h.sdown.is_empty()), "{hellos:?}");
    // An operator's failover is refused with the time left.
    let refused = t.step(Event::ForceFailover {
        to: None,
        timeout_ms: 1_000,
    });
    assert!(
        refused.iter().any(|a| matches!(
            a,
            Action::Forced(ForcedOutcome::Refused(ForceRefused::Tilt { remaining_ms }))
                if *remaining_ms > 0 && *remaining_ms <= 1_000
        )),
        "{refused:?}"
    );
    // After TILT the dead master is found down and failed over as usual.
    t.run(2_000);
    assert!(t.m.is_sdown(M));
    assert!(t.first(NoticeKind::TryFailover).is_some());
    assert_ne!(t.m.phase(), FailoverPhase::Idle);
}

#[test]
fn a_second_stall_restarts_tilt() {
    let mut t = One::new("a", &["b", "c"], params());
    t.run(1_000);
    jump(&mut t, STALL);
    t.run(500);
    jump(&mut t, STALL);
    t.run(700);
    assert_eq!(count_notices(&t.log, NoticeKind::Tilt), 2);
    assert_eq!(
        count_notices(&t.log, NoticeKind::TiltCleared),
        0,
        "restarted"
    );
    t.run(400);
    assert_eq!(count_notices(&t.log, NoticeKind::TiltCleared), 1);
    assert!(!t.m.in_tilt());
}

#[test]
fn a_late_timer_below_the_trigger_is_not_a_stall() {
    // 400 ms between two rounds (a busy host): below the 500 ms trigger of a 1 s down-after.
    let mut t = One::new("a", &["b", "c"], params());
    t.set(R1, Some(replica_reply(M, true, 100, 100)));
    for _ in 0..10 {
        jump(&mut t, 400);
    }
    assert_eq!(t.first(NoticeKind::Tilt), None);
}
