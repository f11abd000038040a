//! The ownership machine when this controller itself stalls (its clock jumps between two
//! steps): a backup waits for the claims queued meanwhile instead of starting an election; an
//! owner still lets go once its lease ran out.

use std::collections::VecDeque;

use super::machine::{Candidacy, HaAction, HaEvent, HaMachine, HaMsg, HaParams, HaPersisted};
use crate::failover::{ControllerId, Millis};

const HEARTBEAT: Millis = 100;
const DOWN_AFTER: Millis = 500;
const TICK: Millis = 20;

struct Three {
    ids: Vec<ControllerId>,
    machines: Vec<HaMachine>,
    now: Millis,
    /// A stopped controller neither ticks nor reads; what is sent to it waits, in order.
    stopped: Option<usize>,
    waiting: VecDeque<(usize, HaMsg)>,
    notices: Vec<(usize, String)>,
    holding: Vec<bool>,
}

impl Three {
    /// lb1 (priority 150), lb2 (100), c3 (votes only).
    fn new() -> Self {
        let ids: Vec<ControllerId> = ["lb1", "lb2", "c3"].map(ControllerId::from).to_vec();
        let candidacy = |priority| {
            Some(Candidacy {
                priority,
                preempt: false,
            })
        };
        let machines = [candidacy(150), candidacy(100), None]
            .into_iter()
            .enumerate()
            .map(|(i, candidacy)| {
                let params = HaParams {
                    candidacy,
                    heartbeat_ms: HEARTBEAT,
                    down_after_ms: DOWN_AFTER,
                    quiet_after_start_ms: DOWN_AFTER,
                };
                let peers = ids.iter().filter(|id| **id != ids[i]).cloned().collect();
                HaMachine::new(ids[i].clone(), peers, params, HaPersisted::default(), 0)
            })
            .collect();
        Self {
            ids,
            machines,
            now: 0,
            stopped: None,
            waiting: VecDeque::new(),
            notices: Vec::new(),
            holding: vec![false; 3],
        }
    }

    fn step(&mut self, i: usize, event: HaEvent, queue: &mut VecDeque<(usize, usize, HaMsg)>) {
        for action in self.machines[i].step(event, self.now) {
            match action {
                HaAction::Send { to, msg } => {
                    for j in (0..3).filter(|&j| j != i) {
                        if to.as_ref().is_none_or(|t| *t == self.ids[j]) {
                            queue.push_back((i, j, msg.clone()));
                        }
                    }
                }
                HaAction::Acquire { .. } => self.holding[i] = true,
                HaAction::Release { .. } => self.holding[i] = false,
                HaAction::Notice { name, payload } => {
                    self.notices.push((i, format!("{name} {payload}")));
                }
                HaAction::Persist(_) => {}
            }
        }
    }

    fn deliver(&mut self, mut queue: VecDeque<(usize, usize, HaMsg)>) {
        while let Some((from, to, msg)) = queue.pop_front() {
            if self.stopped == Some(to) {
                self.waiting.push_back((from, msg));
                continue;
            }
            let event = HaEvent::Peer {
                from: self.ids[from].clone(),
                msg,
            };
            self.step(to, event, &mut queue);
        }
    }

    fn run(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.now += TICK;
            let mut queue = VecDeque::new();
            let stopped = self.stopped;
            for i in (0..3).filter(|&i| stopped != Some(i)) {
                self.step(i, HaEvent::Tick, &mut queue);
            }
            self.deliver(queue);
        }
    }

    /// SIGCONT: its timer fires first (it is late), then it reads what waited.
    fn resume(&mut self) {
        let i = self.stopped.take().expect("a stopped controller");
        let mut queue = VecDeque::new();
        self.step(i, HaEvent::Tick, &mut queue);
        for (from, msg) in std::mem::take(&mut self.waiting) {
            queue.push_back((from, i, msg));
        }
        self.deliver(queue);
    }

    fn notices_of(&self, i: usize) -> Vec<&str> {
        self.notices
            .iter()
            .filter(|(n, _)| *n == i)
            .map(|(_, s)| s.as_str())
            .collect()
    }
}

#[test]
fn a_stalled_backup_waits_for_the_claims_that_queued_up() {
    let mut t = Three::new();
    t.run(2_000);
    assert_eq!(t.holding, [true, false, false]);
    t.notices.clear();

    t.stopped = Some(1);
    t.run(3 * DOWN_AFTER);
    t.resume();
    t.run(2_000);
    assert_eq!(t.holding, [true, false, false], "{:?}", t.notices);
    assert!(
        !t.notices_of(1).iter().any(|n| n.contains("vip-election")),
        "the stalled backup stood: {:?}",
        t.notices
    );
    assert_eq!(t.machines[1].epoch(), t.machines[0].epoch());
}

#[test]
fn a_backup_still_takes_over_from_an_owner_that_died_during_its_stall() {
    let mut t = Three::new();
    t.run(2_000);
    t.stopped = Some(1);
    t.run(3 * DOWN_AFTER);
    // lb1 dies while lb2 is stopped: c3 stands no chance (no candidacy), lb2 must take over.
    let dead = 0;
    t.machines.remove(dead);
    t.machines.insert(
        dead,
        HaMachine::new(
            t.ids[dead].clone(),
            vec![],
            HaParams {
                candidacy: None,
                heartbeat_ms: HEARTBEAT,
                down_after_ms: DOWN_AFTER,
                quiet_after_start_ms: 1_000_000,
            },
            HaPersisted::default(),
            t.now,
        ),
    );
    t.holding[dead] = false;
    t.resume();
    t.run(3 * DOWN_AFTER);
    assert!(t.holding[1], "lb2 did not take over: {:?}", t.notices);
}

#[test]
fn a_stalled_owner_still_lets_go_when_its_lease_ran_out() {
    let mut t = Three::new();
    t.run(2_000);
    assert!(t.holding[0]);
    t.stopped = Some(0);
    t.run(3 * DOWN_AFTER);
    assert!(t.holding[1], "lb2 took over while lb1 was stopped");
    t.resume();
    assert!(!t.holding[0], "two holders after the stall");
    t.run(1_000);
    assert_eq!(t.holding, [false, true, false]);
}
