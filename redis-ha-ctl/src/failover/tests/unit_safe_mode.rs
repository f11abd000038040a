//! Safe mode, driven by hand: a controller that lost its state file neither votes nor stands
//! until a majority of the other controllers told it the current epoch, and then votes only
//! in later epochs.

use super::unit::{One, emit, hello};
use super::{M, R2, params};
use crate::failover::{
    Action, Event, ForceRefused, ForcedOutcome, Hello, NoticeKind, PeerMsg, Persisted,
};

fn at_epoch(current_epoch: u64) -> PeerMsg {
    PeerMsg::Hello(Hello {
        current_epoch,
        ..hello(M, &[])
    })
}

fn replies(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::ReplyVote { .. }))
        .count()
}

#[test]
fn no_vote_no_failover_until_a_majority_of_the_others_is_heard() {
    let mut t = One::new("a", &["b", "c", "d", "e"], params());
    let entered = t.m.enter_safe_mode();
    assert!(matches!(&entered[..], [Action::Emit(n)] if n.kind == NoticeKind::SafeMode));
    assert!(t.m.in_safe_mode());

    // A vote request in an epoch we may already have voted in: no vote, though the epoch is
    // adopted (and persisted) as always.
    let actions = t.from(
        "b",
        PeerMsg::VoteRequest {
            epoch: 4,
            master: M,
        },
    );
    assert_eq!(replies(&actions), 0, "{actions:?}");
    assert_eq!(t.m.current_epoch(), 4);

    // Nor does it stand, with the master down and the others agreeing.
    let down = |sdown| Hello {
        current_epoch: 4,
        ..hello(M, sdown)
    };
    t.standing_hellos.push(("b".into(), down(&[M])));
    t.standing_hellos.push(("c".into(), down(&[M])));
    t.set(M, None);
    t.run(3_000);
    assert!(t.m.is_odown());
    assert_eq!(t.first(NoticeKind::TryFailover), None);
    assert!(
        t.m.in_safe_mode(),
        "2 of 4 others is not a majority of 5 without us"
    );
    let refused = t.step(Event::ForceFailover {
        to: Some(R2),
        timeout_ms: 1_000,
    });
    assert_eq!(
        refused,
        vec![Action::Forced(ForcedOutcome::Refused(
            ForceRefused::SafeMode
        ))]
    );

    // The third of the others: it leaves, one past every epoch it heard, and says so durably.
    let actions = t.from("d", at_epoch(6));
    assert!(!t.m.in_safe_mode());
    assert_eq!(t.m.current_epoch(), 7);
    assert!(actions.contains(&emit(NoticeKind::NewEpoch, "7")));
    assert!(
        actions.contains(&Action::Persist(Persisted {
            current_epoch: 7,
            vote: None,
            master: M,
            config_epoch: 0,
        })),
        "{actions:?}"
    );
    // Epochs it may have voted in get no vote; the next one does.
    let actions = t.from(
        "b",
        PeerMsg::VoteRequest {
            epoch: 6,
            master: M,
        },
    );
    assert_eq!(replies(&actions), 0, "{actions:?}");
    let actions = t.from(
        "b",
        PeerMsg::VoteRequest {
            epoch: 8,
            master: M,
        },
    );
    assert!(
        actions.contains(&Action::ReplyVote {
            to: "b".into(),
            epoch: 8,
            leader: "b".into()
        }),
        "{actions:?}"
    );
}

#[test]
fn in_safe_mode_a_newer_configuration_is_still_followed() {
    let mut t = One::new("a", &["b", "c"], params());
    t.m.enter_safe_mode();
    let actions = t.from("b", super::unit::promoted(R2, &[M]));
    assert!(
        actions.contains(&Action::SetMaster { epoch: 1, node: R2 }),
        "{actions:?}"
    );
    assert_eq!(t.m.master(), R2);
    assert!(
        t.m.in_safe_mode(),
        "one of two others is not a majority of three without us"
    );
    t.from("c", at_epoch(1));
    assert!(!t.m.in_safe_mode());
    assert_eq!(t.m.current_epoch(), 2);
}

#[test]
fn alone_there_is_no_safe_mode() {
    let mut t = One::alone();
    assert!(t.m.enter_safe_mode().is_empty());
    assert!(!t.m.in_safe_mode());
}
